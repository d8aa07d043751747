"""A bundle's network as a float ONNX model: what the bundle computes on ideal hardware.

Digital nodes are re-emitted as they are stored (tensor-valued attributes as tensors,
graph constants as initializers). Every crossbar layer (and every layer kept digital)
becomes the ONNX op it came from with its effective float weights, the programmed
weights as the ideal runtime multiplies them (`Layer.matrix` times the column scale,
i.e. after quantisation, clipping and encoding), brought back from the K×N weight order
to the ONNX layout. The per-output affine y = gain·z + shift is folded into them: gain
scales output column j of the weight, shift becomes the bias (Conv B, Gemm C, an Add
after MatMul, the recurrent B). That is the same map in exact arithmetic, and it is the
product the ideal runtime itself computes for convolutions (`Layer.fused`); the rounding
it changes is float32 rounding of the weights. Recurrent nodes are re-emitted as
LSTM/GRU/RNN from their W, R (and R_h) layers.

The model keeps the source model's interface, so that it can replace it: inputs, outputs,
their dimension names and the opset are the bundle's, in the source's axis order. A
time-major input that the bundle takes batch-first (converter/time_major.py; the
manifest's `batch.time_major`) is declared time-major again and the Transpose that the
converter put behind it is dropped; an output that the bundle gives batch-first gets its
batch back on the axis it came from. onnxruntime users of the source model can feed it as
they fed the source, and `eval --reference` feeds it as it feeds the source. The metadata
entry `xbar.io_layout` = `source` says so (exports without it, from xbar before it was
written, are batch-first as the bundle is, and xbar/reference.py feeds them so).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from xbar.bundle import Bundle, check_output, write_atomically
from xbar.errors import BundleError
from xbar.ops import LAYER_OP, RECURRENT_OP

#: metadata_props entry of every export: its inputs and outputs are in the source model's layout.
IO_LAYOUT_KEY, IO_LAYOUT_SOURCE = "xbar.io_layout", "source"


def to_onnx(bundle: Bundle) -> onnx.ModelProto:
    """The bundle's network as an ONNX model (checked with onnx.checker)."""
    from xbar.runtime.executor import Runtime

    rt = Runtime(bundle)  # ideal: its layers hold the effective weights and affines
    graph = bundle.graph
    opset = int(bundle.manifest["model"]["opset"])
    inits: list[TensorProto] = [numpy_helper.from_array(np.asarray(bundle.array(key)), name)
                                for name, key in graph["constants"].items()]
    nodes: list[onnx.NodeProto] = []
    for node in graph["nodes"]:
        if node["op"] == LAYER_OP:
            nodes += _layer_nodes(rt.layers[node["attrs"]["layer"]], node, inits)
        elif node["op"] == RECURRENT_OP:
            nodes.append(_recurrent_node(rt.layers, node, bundle, inits))
        else:
            attrs = {k: _attr(v, bundle) for k, v in node["attrs"].items()}
            nodes.append(helper.make_node(node["op"], node["inputs"], node["outputs"], name=node["name"],
                                          **{k: v for k, v in attrs.items() if v is not None}))
    moved = (bundle.manifest.get("batch") or {}).get("time_major") or {}
    inputs, outputs = [dict(i) for i in graph["inputs"]], [dict(o) for o in graph["outputs"]]
    nodes = _source_layout(nodes, inputs, outputs, moved, {i.name for i in inits})
    g = helper.make_graph(nodes, _graph_name(bundle), [_value_info(i) for i in inputs],
                          [_value_info(o) for o in outputs], inits)
    opsets = [helper.make_opsetid("", opset)]
    model = helper.make_model(g, opset_imports=opsets, producer_name="xbar",
                              producer_version=str(bundle.manifest.get("xbar_version", "")))
    # The oldest IR that can carry this opset: readable by the widest range of runtimes.
    model.ir_version = helper.find_min_ir_version_for(opsets)
    helper.set_model_props(model, {IO_LAYOUT_KEY: IO_LAYOUT_SOURCE})
    try:
        onnx.checker.check_model(model, full_check=True)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as exc:
        raise BundleError(f"the bundle's network does not form a valid ONNX model ({str(exc).splitlines()[0]}); "
                          "the bundle is corrupt or was edited by hand") from None
    return model


def export_onnx(bundle: Bundle, path: str | os.PathLike, force: bool = False) -> Path:
    """Write `to_onnx(bundle)` to `path` atomically; refuse to replace a file unless `force`."""
    path = check_output(path, force)
    data = to_onnx(bundle).SerializeToString()
    write_atomically(path, lambda fh: fh.write(data))
    return path


def _swap_perm(rank: int) -> list[int]:
    return [1, 0] + list(range(2, max(rank, 2)))


def _permuted(io: dict[str, Any], perm: list[int]) -> None:
    """Declare `io` (a bundle graph input or output, in place) with its axes in the order
    `perm`, as a Transpose with it makes them."""
    for key in ("shape", "dim_names"):
        dims = io.get(key)
        if dims is not None and len(dims) == len(perm):
            io[key] = [dims[k] for k in perm]


def _source_layout(nodes: list[onnx.NodeProto], inputs: list[dict[str, Any]], outputs: list[dict[str, Any]],
                   moved: dict[str, Any], constants: set[str]) -> list[onnx.NodeProto]:
    """`nodes` with the bundle's time-major inputs and outputs (`moved`, the manifest's
    `batch.time_major`) in the source model's layout again, and `inputs`/`outputs` declared
    so (in place).

    The converter put a Transpose (axes 0 and 1 swapped) behind each such input and one
    that brings the batch to the front before each such output. Where it is there as the
    converter left it, it is dropped and the values are renamed, which gives back the
    source's graph; otherwise the inverse Transpose is added at the boundary, which computes
    the same."""
    swapped, out_axes = set(moved.get("inputs") or []), dict(moved.get("outputs") or {})
    if not swapped and not out_axes:
        return nodes
    nodes = list(nodes)
    boundary = {io["name"] for io in inputs + outputs} | constants
    taken = boundary | {n for node in nodes for n in list(node.input) + list(node.output)}

    def unique(name: str) -> str:
        while name in taken:
            name += "_"
        taken.add(name)
        return name

    def rename(old: str, new: str, outputs_too: bool) -> None:
        for node in nodes:
            node.input[:] = [new if v == old else v for v in node.input]
            if outputs_too:
                node.output[:] = [new if v == old else v for v in node.output]

    front, back = [], []
    for io in inputs:
        if io["name"] not in swapped:
            continue
        name = io["name"]
        users = [n for n in nodes if name in n.input]
        t = users[0] if len(users) == 1 and users[0].op_type == "Transpose" else None
        if io.get("shape") is not None:
            perm = _swap_perm(len(io["shape"]))
        elif t is not None and (p := _perm(t)) and p == _swap_perm(len(p)):  # rank undeclared: the converter's
            perm = p
        else:
            raise BundleError(f"the bundle takes input {name!r} batch-first, but neither its shape nor the graph "
                              "says its rank; the bundle is corrupt or was edited by hand")
        if (t is not None and list(t.input) == [name] and len(t.output) == 1
                and _perm(t) == perm and t.output[0] not in boundary):
            nodes.remove(t)
            rename(t.output[0], name, outputs_too=False)
        else:  # the batch-first value the bundle's nodes read, from the time-major input
            inner = unique(f"{name}.batch_first")
            rename(name, inner, outputs_too=False)
            front.append(helper.make_node("Transpose", [name], [inner], name=unique(f"{name}.to_batch_first"),
                                          perm=perm))
        _permuted(io, perm)
    for io in outputs:
        axis = out_axes.get(io["name"])
        if not axis:
            continue
        name = io["name"]
        rank = len(io["shape"]) if io.get("shape") is not None else None
        if rank is None or not 0 < axis < rank:
            raise BundleError(f"the bundle records output {name!r}'s batch as from axis {axis}, which it does not "
                              "have; the bundle is corrupt or was edited by hand")
        perm = [axis] + [k for k in range(rank) if k != axis]  # the converter's: batch to the front
        inverse = [int(k) for k in np.argsort(perm)]
        t = next((n for n in nodes if name in n.output), None)
        if (t is not None and t.op_type == "Transpose" and len(t.input) == 1 and _perm(t) == perm
                and t.input[0] not in boundary and any(t.input[0] in n.output for n in nodes)):
            nodes.remove(t)
            rename(t.input[0], name, outputs_too=True)
        else:  # the bundle's batch-first output, put back in the source's order
            inner = unique(f"{name}.batch_first")
            rename(name, inner, outputs_too=True)
            back.append(helper.make_node("Transpose", [inner], [name], name=unique(f"{name}.to_source_layout"),
                                         perm=inverse))
        _permuted(io, inverse)
    return front + nodes + back


def _perm(node: onnx.NodeProto) -> list[int] | None:
    return next((list(a.ints) for a in node.attribute if a.name == "perm"), None)


def _graph_name(bundle: Bundle) -> str:
    return str(bundle.manifest.get("model", {}).get("source", "xbar")) or "xbar"


def _value_info(io: dict[str, Any]) -> onnx.ValueInfoProto:
    dtype = helper.np_dtype_to_tensor_dtype(np.dtype(io["dtype"]))
    shape = io.get("shape")
    if shape is None:
        return helper.make_tensor_value_info(io["name"], dtype, None)
    names = io.get("dim_names") or [None] * len(shape)
    dims = [d if d is not None else (n or None) for d, n in zip(shape, names)]
    return helper.make_tensor_value_info(io["name"], dtype, dims)


def _attr(value: Any, bundle: Bundle) -> Any:
    if isinstance(value, dict) and "$array" in value:
        return numpy_helper.from_array(np.asarray(bundle.array(value["$array"])))
    if isinstance(value, list):
        return [_attr(v, bundle) for v in value]
    return value


def _const(inits: list[TensorProto], name: str, value: np.ndarray) -> str:
    inits.append(numpy_helper.from_array(np.ascontiguousarray(value), name))
    return name


def effective(layer: Any) -> tuple[np.ndarray, np.ndarray]:
    """(K×N float32 weight with the affine gain folded into its columns, (N,) float32 shift)."""
    w = layer.depthwise if layer.depthwise is not None else layer.matrix
    return (w.astype(np.float64) * layer.gain.astype(np.float64)).astype(np.float32), layer.shift.astype(np.float32)


def _layer_nodes(layer: Any, node: dict[str, Any], inits: list[TensorProto]) -> list[onnx.NodeProto]:
    name, (x,), (y,) = node["name"], node["inputs"], node["outputs"]
    w, b = effective(layer)
    p = layer.params
    if layer.kind == "conv":
        weight = _conv_kernel(w, p, layer.n, layer.depthwise is not None)
        attrs: dict[str, Any] = {"kernel_shape": p["kernel_shape"], "strides": p["strides"],
                                 "dilations": p["dilations"], "group": int(p.get("group", 1))}
        if p.get("auto_pad", "NOTSET") == "NOTSET":
            attrs["pads"] = p["pads"]
        else:
            attrs["auto_pad"] = p["auto_pad"]
        return [helper.make_node("Conv", [x, _const(inits, f"{name}/W", weight), _const(inits, f"{name}/B", b)],
                                 [y], name=name, **attrs)]
    if layer.kind == "gemm":
        return [helper.make_node("Gemm", [x, _const(inits, f"{name}/W", w), _const(inits, f"{name}/B", b)], [y],
                                 name=name, transA=int(p.get("transA", 0)))]
    if layer.kind == "matmul":
        left = p["side"] == "left"
        wname = _const(inits, f"{name}/W", w.T if left else w)
        z = f"{y}/xbar_product"
        bname = _const(inits, f"{name}/B", b.reshape(-1, 1) if left else b)
        return [helper.make_node("MatMul", [wname, x] if left else [x, wname], [z], name=name),
                helper.make_node("Add", [z, bname], [y], name=f"{name}/bias")]
    raise BundleError(f"layer {name!r} is of kind {layer.kind!r}, which has no ONNX form here")


def _conv_kernel(w: np.ndarray, p: dict[str, Any], n: int, depthwise: bool) -> np.ndarray:
    """K×N (rows: kernel offset, then input channel; see converter/layers.py) or a digital
    depthwise (∏k, N) kernel → the ONNX (M, C/group, *k) weight."""
    k = list(p["kernel_shape"])
    kk = int(np.prod(k))
    if depthwise:
        return np.ascontiguousarray(w.T.reshape(n, 1, *k))
    c, group = int(p["in_channels"]), int(p.get("group", 1))
    cg, mg = c // group, n // group
    full = w.reshape(kk, c, n)
    out = np.empty((n, cg, kk), dtype=w.dtype)
    for g in range(group):
        out[g * mg:(g + 1) * mg] = full[:, g * cg:(g + 1) * cg, g * mg:(g + 1) * mg].transpose(2, 1, 0)
    return out.reshape(n, cg, *k)


def _recurrent_node(layers: list[Any], node: dict[str, Any], bundle: Bundle,
                    inits: list[TensorProto]) -> onnx.NodeProto:
    a = node["attrs"]
    name, cell = node["name"], a["cell"]
    ws, rs, bs = [], [], []
    for w_i, r_i, rh_i in a["layers"]:
        w, wb = effective(layers[w_i])
        r, rb = effective(layers[r_i])
        if rh_i >= 0:  # GRU, linear_before_reset 0: R_h is its own layer, its columns follow R's
            rh, rhb = effective(layers[rh_i])
            r, rb = np.concatenate([r, rh], axis=1), np.concatenate([rb, rhb])
        ws.append(w.T)
        rs.append(r.T)
        bs.append(np.concatenate([wb, rb]))
    x, seq, h0, c0 = (list(node["inputs"]) + [""] * 4)[:4]
    inputs = [x, _const(inits, f"{name}/W", np.stack(ws)), _const(inits, f"{name}/R", np.stack(rs)),
              _const(inits, f"{name}/B", np.stack(bs)), seq, h0]
    attrs: dict[str, Any] = {"hidden_size": int(a["hidden_size"]), "direction": a["direction"],
                             "activations": list(a["activations"])}
    if cell == "LSTM":
        peep = a.get("peepholes")
        inputs += [c0, _const(inits, f"{name}/P", np.asarray(bundle.array(peep["$array"]), np.float32))
                   if isinstance(peep, dict) else ""]
        attrs["input_forget"] = int(a.get("input_forget", 0))
    if cell == "GRU":
        attrs["linear_before_reset"] = int(a["linear_before_reset"])
    if "clip" in a:
        attrs["clip"] = float(a["clip"])
    if int(a.get("layout", 0)):
        attrs["layout"] = int(a["layout"])
    while inputs and not inputs[-1]:  # optional trailing inputs are omitted, not empty
        inputs.pop()
    return helper.make_node(cell, inputs, node["outputs"], name=name, **attrs)
