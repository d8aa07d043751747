"""Find the layers that go onto crossbars and express each as y = affine(x · W).

An analog layer is a Conv, a Gemm or a MatMul with a constant weight operand. Its weights
become a K×N matrix (K inputs, N outputs; grouped convolutions become block-diagonal).
A BatchNormalization that directly follows it is absorbed as the layer's per-output affine
and stays unfolded, so calibration can re-fit it; without BN the affine is the identity
and carries the bias.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from xbar.affine import Affine
from xbar.converter.checks import refuse_nonfinite
from xbar.converter.ir import Graph, Node
from xbar.errors import ModelError
from xbar.ops import ANALOG_OPS



@dataclass
class LayerSpec:
    name: str  # the ONNX node name of the Conv/Gemm/MatMul
    kind: str  # conv | gemm | matmul
    input: str
    output: str
    weight: Any  # K×N float64 ndarray; a grouped convolution's is a scipy CSR matrix of its groups' cells
    affine: Affine
    affine_source: str  # "batchnorm" or "bias"
    weight_name: str
    params: dict[str, Any] = field(default_factory=dict)
    structure: Any = None  # K×N bool (ndarray, or CSR with a CSR weight): which cells carry a real weight
    bn_node: str | None = None  # the BatchNormalization absorbed as the affine, if any


def _const(graph: Graph, node: Node, idx: int, what: str, label: str) -> np.ndarray:
    name = node.inputs[idx] if idx < len(node.inputs) else ""
    if not name:
        raise ModelError(f"{label}: node {node.name!r} ({node.op}) has no {what} input")
    if name not in graph.constants:
        raise ModelError(
            f"{label}: node {node.name!r} ({node.op}) takes its {what} from tensor {name!r}, which is computed "
            "at run time, not a constant. xbar programs weights into crossbars once, at conversion, so "
            "they must be initializers; re-export the model with its weights as constants "
            "(torch: export_params=True)."
        )
    value = np.asarray(graph.constants[name], dtype=np.float64)
    refuse_nonfinite(value, name, node.name, node.op, label, what)
    if what.startswith("weight") and value.size == 0:
        raise ModelError(
            f"{label}: node {node.name!r} ({node.op}) has an empty constant weight {name!r} of shape "
            f"{list(value.shape)}: there is nothing to program onto crossbars (the layer's output is its bias "
            "alone, or empty). Remove the layer from the model, or export it with its real weights."
        )
    return value


def _conv_weight(w: np.ndarray, group: int) -> tuple[np.ndarray, np.ndarray | None]:
    """(M, C/g, *k) kernel → (∏k·C)×M matrix, rows ordered (kernel offset, input channel).

    Kernel-offset-major rows let the runtime cut patches out of a channels-last activation
    as runs of C contiguous values. Groups occupy disjoint (channel, output) blocks; the
    rest of the matrix is a structural zero, recorded in the returned mask (None for one
    group: every cell is a weight).
    """
    m, cg = w.shape[:2]
    kk = int(np.prod(w.shape[2:]))
    mg = m // group
    c = cg * group
    full = np.zeros((kk, c, m))
    mask = np.zeros((kk, c, m), dtype=bool) if group > 1 else None
    for g in range(group):
        wg = w[g * mg:(g + 1) * mg].reshape(mg, cg, kk).transpose(2, 1, 0)  # (kk, cg, mg)
        full[:, g * cg:(g + 1) * cg, g * mg:(g + 1) * mg] = wg
        if mask is not None:
            mask[:, g * cg:(g + 1) * cg, g * mg:(g + 1) * mg] = True
    return full.reshape(kk * c, m), None if mask is None else mask.reshape(kk * c, m)


def _grouped_conv_weight(w: np.ndarray, group: int):
    """What `_conv_weight` returns, as scipy CSR matrices holding only the groups' cells:
    a grouped (e.g. depthwise) convolution's K×N matrix is 1/group full, and its dense
    form is what dominated converting such models (a 28,800 × 1,152 float64 block
    diagonal in EfficientNet-B0)."""
    from scipy import sparse

    m, cg = w.shape[:2]
    kk = int(np.prod(w.shape[2:]))
    mg = m // group
    c = cg * group
    # Cell (offset o, channel g·cg + i, output g·mg + j) holds w[g·mg + j, i, o].
    o, g, i, j = np.meshgrid(np.arange(kk), np.arange(group), np.arange(cg), np.arange(mg), indexing="ij")
    rows = (o * c + g * cg + i).ravel()
    cols = (g * mg + j).ravel()
    vals = w.reshape(m, cg, kk)[cols, i.ravel(), o.ravel()].astype(np.float64)
    shape = (kk * c, m)
    weight = sparse.csr_matrix((vals, (rows, cols)), shape=shape)
    mask = sparse.csr_matrix((np.ones(len(rows), dtype=bool), (rows, cols)), shape=shape)
    weight.sort_indices()
    mask.sort_indices()
    return weight, mask


def conv_structure(params: dict[str, Any], n: int) -> np.ndarray | None:
    """The K×N mask of a grouped convolution's real weights (None: dense), from its params."""
    group = int(params.get("group", 1))
    if group == 1:
        return None
    kernel = np.ones((n, params["in_channels"] // group, *params["kernel_shape"]))
    return _conv_weight(kernel, group)[1]


def _bias_vector(c: np.ndarray, n: int, node: Node, label: str) -> np.ndarray | None:
    c = np.asarray(c, dtype=np.float64)
    if c.size == 1:
        return np.full(n, float(c.reshape(())))
    if c.ndim >= 1 and c.shape[-1] == n and c.size == n:
        return c.reshape(n)
    return None


def extract_layer(graph: Graph, node: Node, label: str) -> LayerSpec | None:
    """Return the analog form of `node`, or None if it is an ordinary digital op."""
    if node.op not in ANALOG_OPS:
        return None
    a, b = node.inputs[0], node.inputs[1]
    if node.op == "Conv":
        if a in graph.constants:
            raise ModelError(f"{label}: Conv node {node.name!r} has a constant input and a computed weight; not supported")
        w = _const(graph, node, 1, "weight", label)
        group = int(node.attrs.get("group", 1))
        if w.ndim < 3:
            raise ModelError(f"{label}: Conv node {node.name!r} has a weight of rank {w.ndim}; expected (M, C/group, k...)")
        if w.shape[0] % group:
            raise ModelError(f"{label}: Conv node {node.name!r}: {w.shape[0]} output channels not divisible by group={group}")
        matrix, mask = _grouped_conv_weight(w, group) if group > 1 else _conv_weight(w, 1)
        n = w.shape[0]
        bias = _const(graph, node, 2, "bias", label).reshape(n) if len(node.inputs) > 2 and node.inputs[2] else np.zeros(n)
        k = list(w.shape[2:])
        ks = node.attrs.get("kernel_shape", k)
        if list(ks) != k:
            raise ModelError(f"{label}: Conv node {node.name!r}: kernel_shape {ks} disagrees with weight shape {list(w.shape)}")
        spatial = len(k)
        params = {
            "kernel_shape": k,
            "in_channels": int(w.shape[1] * group),
            "group": group,
            "strides": list(node.attrs.get("strides", [1] * spatial)),
            "dilations": list(node.attrs.get("dilations", [1] * spatial)),
            "pads": list(node.attrs.get("pads", [0] * (2 * spatial))),
            "auto_pad": node.attrs.get("auto_pad", "NOTSET"),
            # Rows of K: kernel offsets (row-major) outer, input channels inner.
            "row_order": "kernel,channel",
        }
        structure = mask if group > 1 else None
        return LayerSpec(node.name, "conv", a, node.outputs[0], matrix, Affine.identity(bias), "bias", b, params, structure)

    if node.op == "Gemm":
        if b not in graph.constants:
            if a in graph.constants:
                raise ModelError(
                    f"{label}: Gemm node {node.name!r} has a constant A and a computed B; only constant B "
                    "(the weight) is supported. Re-export with the weight as the second operand."
                )
            _const(graph, node, 1, "weight (B)", label)
        w = _const(graph, node, 1, "weight (B)", label)
        if w.ndim != 2:
            raise ModelError(f"{label}: Gemm node {node.name!r} weight has shape {list(w.shape)}; expected 2-D")
        if node.attrs.get("transB", 0):
            w = w.T
        alpha = float(node.attrs.get("alpha", 1.0))
        if alpha != 1.0:  # w · 1 is w, bit for bit: no K×N float64 copy for the usual Gemm
            w = w * alpha
        n = w.shape[1]
        bias = np.zeros(n)
        if len(node.inputs) > 2 and node.inputs[2]:
            c = _const(graph, node, 2, "bias (C)", label) * float(node.attrs.get("beta", 1.0))
            vec = _bias_vector(c, n, node, label)
            if vec is None:
                raise ModelError(
                    f"{label}: Gemm node {node.name!r} bias C has shape {list(c.shape)}, which is not per output "
                    f"(expected a scalar or {n} values)"
                )
            bias = vec
        params = {"transA": int(node.attrs.get("transA", 0))}
        return LayerSpec(node.name, "gemm", a, node.outputs[0], w, Affine.identity(bias), "bias", b, params)

    # MatMul: one operand constant (and 2-D), the other computed.
    if b in graph.constants and a not in graph.constants:
        w = _const(graph, node, 1, "weight", label)
        side, inp, wname = "right", a, b
    elif a in graph.constants and b not in graph.constants:
        w = _const(graph, node, 0, "weight", label).T
        side, inp, wname = "left", b, a
    else:
        return None  # both computed: a digital MatMul (e.g. attention scores)
    if w.ndim != 2:
        raise ModelError(
            f"{label}: MatMul node {node.name!r} has a constant operand of shape {list(w.shape)}; "
            "only a 2-D constant weight can be mapped onto crossbars"
        )
    return LayerSpec(node.name, "matmul", inp, node.outputs[0], w, Affine.identity(np.zeros(w.shape[1])), "bias", wname, {"side": side})


def absorb_following(graph: Graph, layer: LayerSpec, consumers: dict[str, list[Node]], label: str) -> list[Node]:
    """Absorb a directly following BatchNormalization (or bias Add) into the layer's affine.

    Returns the nodes absorbed (to be removed from the graph).
    """
    absorbed: list[Node] = []
    n = layer.weight.shape[1]
    out_rank = None
    info = graph.info.get(layer.output)
    if info is not None and info.shape is not None:
        out_rank = len(info.shape)
    users = consumers.get(layer.output, [])
    if layer.output in graph.outputs or len(users) != 1:
        return absorbed
    user = users[0]
    # A bias Add after MatMul (torch's Linear on >2-D inputs) belongs to the layer.
    if user.op == "Add" and layer.kind == "matmul" and layer.params["side"] == "right" and not layer.affine.bias.any():
        other = user.inputs[1] if user.inputs[0] == layer.output else user.inputs[0]
        if other in graph.constants:
            c = np.asarray(graph.constants[other], dtype=np.float64)
            refuse_nonfinite(c, other, user.name, user.op, label, "bias")
            if c.size == n and c.shape[-1] == n and (out_rank is None or c.ndim <= out_rank):
                layer.affine.bias = c.reshape(n)
                layer.output = user.outputs[0]
                absorbed.append(user)
                if layer.output in graph.outputs:
                    return absorbed
                users = consumers.get(layer.output, [])
                if len(users) != 1:
                    return absorbed
                user = users[0]
    channel_axis_is_output = layer.kind == "conv" or out_rank == 2 or (layer.kind == "gemm")
    if layer.kind == "matmul" and layer.params["side"] == "left":
        channel_axis_is_output = False
    if user.op == "BatchNormalization" and channel_axis_is_output and user.inputs[0] == layer.output:
        if len(user.outputs) > 1 and any(user.outputs[1:]):
            return absorbed  # training-mode BN with running-stat outputs: leave it digital
        if int(user.attrs.get("training_mode", 0)):
            return absorbed
        names = user.inputs[1:5]
        if not all(x in graph.constants for x in names):
            return absorbed
        for what, x in zip(("scale", "bias", "mean", "variance"), names):
            refuse_nonfinite(graph.constants[x], x, user.name, user.op, label, f"batch-norm {what}")
        gamma, beta, mean, var = (np.asarray(graph.constants[x], dtype=np.float64).reshape(-1) for x in names)
        if np.any(var + float(user.attrs.get("epsilon", 1e-5)) <= 0):
            raise ModelError(f"{label}: BatchNormalization {user.name!r} has a variance + epsilon <= 0 in tensor "
                             f"{names[3]!r}; its normalisation is undefined. Fix the model and export it again.")
        if gamma.size != n:
            raise ModelError(
                f"{label}: BatchNormalization {user.name!r} has {gamma.size} channels but follows "
                f"{layer.name!r} with {n} outputs"
            )
        layer.affine = Affine(layer.affine.bias, gamma, beta, mean, var, float(user.attrs.get("epsilon", 1e-5)))
        layer.affine_source, layer.bn_node = "batchnorm", user.name
        layer.output = user.outputs[0]
        absorbed.append(user)
    return absorbed
