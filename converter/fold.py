"""ONNX model → working Graph, with constants folded away.

Everything that does not depend on the network input is computed once here (with the
ONNX reference evaluator, so folding uses the standard's own semantics): Constant nodes,
shape arithmetic on static dimensions (Shape → Gather chains), Identity and Dropout.
"""

from __future__ import annotations

import warnings

import numpy as np
import onnx
from onnx import helper, numpy_helper, shape_inference
from onnx.reference import ReferenceEvaluator

from xbar.converter.checks import refuse_nonfinite
from xbar.converter.ir import Graph, Node, TensorInfo
from xbar.errors import ModelError, UnsupportedOpError, XbarError

# Ops whose output changes from call to call must never be folded.
_NONDETERMINISTIC = {"RandomNormal", "RandomUniform", "RandomNormalLike", "RandomUniformLike", "Multinomial", "Bernoulli"}
_ALIASES = {"Identity", "Dropout"}


def _tensor_info(vi: onnx.ValueInfoProto) -> TensorInfo:
    t = vi.type.tensor_type
    dtype = helper.tensor_dtype_to_np_dtype(t.elem_type) if t.elem_type else None
    if not t.HasField("shape"):
        return TensorInfo(None, dtype)
    dims = [d.dim_value if d.HasField("dim_value") else None for d in t.shape.dim]
    names = [None if d.HasField("dim_value") else (d.dim_param or None) for d in t.shape.dim]
    return TensorInfo(dims, dtype, names)


def _attr_value(attr: onnx.AttributeProto):
    value = helper.get_attribute_value(attr)
    if isinstance(value, bytes):
        return value.decode()
    if isinstance(value, onnx.TensorProto):
        return numpy_helper.to_array(value)
    if isinstance(value, list):
        return [v.decode() if isinstance(v, bytes) else v for v in value]
    return value


def _constant_value(node: onnx.NodeProto) -> np.ndarray:
    (attr,) = node.attribute
    value = _attr_value(attr)
    if attr.name in ("value_float", "value_int"):
        return np.array(value, dtype=np.float32 if attr.name == "value_float" else np.int64)
    if attr.name in ("value_floats", "value_ints"):
        return np.array(value, dtype=np.float32 if attr.name == "value_floats" else np.int64)
    if isinstance(value, np.ndarray):
        return value
    raise UnsupportedOpError(f"Constant node {node.name!r}: attribute {attr.name!r} is not supported")


def _evaluate(proto: onnx.NodeProto, args: list[np.ndarray | None], opset: int) -> list[np.ndarray]:
    names = [f"in{k}" if a is not None else "" for k, a in enumerate(args)]
    node = onnx.NodeProto()
    node.CopyFrom(proto)
    del node.input[:]
    node.input.extend(names)
    inputs = [
        helper.make_tensor_value_info(n, helper.np_dtype_to_tensor_dtype(a.dtype), a.shape)
        for n, a in zip(names, args)
        if a is not None
    ]
    outputs = [helper.make_tensor_value_info(o, onnx.TensorProto.UNDEFINED, None) for o in node.output if o]
    model = helper.make_model(
        helper.make_graph([node], "fold", inputs, outputs), opset_imports=[helper.make_opsetid("", opset)]
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        results = ReferenceEvaluator(model).run(None, {n: a for n, a in zip(names, args) if a is not None})
    return [np.asarray(r) for r in results]


def _to_model(graph: Graph, model: onnx.ModelProto) -> onnx.ModelProto:
    """The folded graph as an ONNX model again (same inputs, outputs and opsets)."""
    nodes = []
    for n in graph.nodes:
        attrs = {k: numpy_helper.from_array(np.asarray(v)) if isinstance(v, np.ndarray) else v for k, v in n.attrs.items()}
        nodes.append(helper.make_node(n.op, n.inputs, n.outputs, name=n.name, domain=n.domain or None, **attrs))
    inits = [numpy_helper.from_array(np.asarray(v), k) for k, v in graph.constants.items()]
    g = helper.make_graph(nodes, model.graph.name, [vi for vi in model.graph.input if vi.name in graph.inputs],
                          list(model.graph.output), initializer=inits)
    out = helper.make_model(g, opset_imports=list(model.opset_import), ir_version=model.ir_version)
    return out


def build_graph(model: onnx.ModelProto, label: str, opset: int, _second_pass: bool = False) -> Graph:
    """Fold `model` into a Graph.

    An If whose condition depends on a shape that shape inference could not resolve in
    the raw model (torch guards LRN on the input's rank behind Pads with computed pads)
    gets a second chance: the folded graph is shape-inferred again and folded once more.
    """
    graph = _build_graph(model, label, opset)
    if not _second_pass and any(n.op == "If" for n in graph.nodes):
        try:
            again = shape_inference.infer_shapes(_to_model(graph, model), data_prop=True)
            return build_graph(again, label, opset, _second_pass=True)
        except XbarError:
            raise
        except Exception:  # best effort: the If is then reported as unsupported
            return graph
    return graph


def _build_graph(model: onnx.ModelProto, label: str, opset: int) -> Graph:
    g = model.graph
    constants: dict[str, np.ndarray] = {init.name: numpy_helper.to_array(init) for init in g.initializer}
    info: dict[str, TensorInfo] = {}
    for vi in list(g.input) + list(g.value_info) + list(g.output):
        info[vi.name] = _tensor_info(vi)
    inputs = [vi.name for vi in g.input if vi.name not in constants]
    for idx, node in enumerate(g.node):
        for name in node.input:
            if name in constants:
                refuse_nonfinite(constants[name], name, node.name or f"{node.op_type}_{idx}", node.op_type, label,
                                 "constant", allow_inf=True)
    outputs = [vi.name for vi in g.output]

    alias: dict[str, str] = {}
    # Shape outputs whose dims are partly symbolic (batch): dims we know, None where not.
    partial_shapes: dict[str, list[int | None]] = {}
    nodes: list[Node] = []
    used_names: set[str] = set()

    def resolve(name: str) -> str:
        while name in alias:
            name = alias[name]
        return name

    # A worklist rather than a plain loop: an If whose condition folds to a constant is
    # replaced by the nodes of the branch it takes (see below).
    pending = list(g.node)[::-1]
    idx = -1
    while pending:
        proto = pending.pop()
        idx += 1
        name = proto.name or f"{proto.op_type}_{idx}"
        while name in used_names:
            name = f"{name}_{idx}"
        used_names.add(name)
        if proto.domain not in ("", "ai.onnx"):
            raise UnsupportedOpError(
                f"{label}: node {name!r} uses op {proto.op_type!r} from domain {proto.domain!r}; "
                "xbar supports only standard ONNX ops. Re-export without custom ops."
            )
        ins = [resolve(i) if i else "" for i in proto.input]
        outs = list(proto.output)
        attrs = {a.name: _attr_value(a) for a in proto.attribute}
        op = proto.op_type

        if op == "Constant":
            constants[outs[0]] = _constant_value(proto)
            continue
        if op == "If" and ins[0] in constants:
            # Exporters guard shape-dependent code with an If (torch's LRN: "is the input
            # 3-D?"); with static shapes the condition is known now, so the branch taken is
            # spliced in. Node and tensor names are unique across subgraphs (SSA), and a
            # branch may read outer tensors by name, so its nodes run unchanged here.
            branch = attrs["then_branch" if bool(np.asarray(constants[ins[0]]).reshape(-1)[0]) else "else_branch"]
            splice = list(branch.node)
            for init in branch.initializer:
                constants[init.name] = numpy_helper.to_array(init)
            for vi in branch.value_info:
                info.setdefault(vi.name, _tensor_info(vi))
            for out, bout in zip(outs, branch.output):
                splice.append(helper.make_node("Identity", [bout.name], [out], name=f"{name}__{out}"))
            pending.extend(splice[::-1])
            continue
        if op in _ALIASES and ins and ins[0] and not (len(outs) > 1 and outs[1]):
            alias[outs[0]] = ins[0]
            continue
        if op == "Shape":
            src = info.get(ins[0])
            if src is not None and src.shape is not None:
                dims = src.shape
                if ins[0] in constants:
                    dims = list(constants[ins[0]].shape)
                start = attrs.get("start", 0)
                end = attrs.get("end", len(dims))
                dims = dims[slice(start, end)]
                if all(d is not None for d in dims):
                    constants[outs[0]] = np.array(dims, dtype=np.int64)
                    continue
                partial_shapes[outs[0]] = dims
        if op == "Gather" and ins[0] in partial_shapes and ins[1] in constants and attrs.get("axis", 0) == 0:
            dims = partial_shapes[ins[0]]
            picked = np.asarray(constants[ins[1]])
            values = [dims[int(i)] for i in picked.reshape(-1)]
            if all(v is not None for v in values):
                constants[outs[0]] = np.array(values, dtype=np.int64).reshape(picked.shape)
                continue
        present = [i for i in ins if i]
        if present and all(i in constants for i in present) and op not in _NONDETERMINISTIC:
            try:
                results = _evaluate(proto, [constants[i] if i else None for i in ins], opset)
            except Exception as exc:
                raise ModelError(
                    f"{label}: node {name!r} ({op}) has only constant inputs but could not be evaluated "
                    f"({type(exc).__name__}: {exc})"
                ) from None
            for o, r in zip(outs, results):
                if o:
                    constants[o] = r
            continue
        nodes.append(Node(name=name, op=op, inputs=ins, outputs=outs, attrs=attrs, domain=proto.domain))

    # A graph output that was an alias keeps its name through an explicit Identity.
    for out in outputs:
        if out in alias:
            nodes.append(Node(name=f"{out}__identity", op="Identity", inputs=[resolve(out)], outputs=[out]))
    graph = Graph(nodes=nodes, inputs=inputs, outputs=outputs, constants=constants, info=info, opset=opset)
    graph.prune()
    return graph
