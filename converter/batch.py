"""The batch dimension of a model: symbolic, relaxed from a fixed 1, or fixed.

Many published graphs declare batch 1 (input shape [1, 3, 224, 224]). A graph that never
mixes samples and never hard-codes that 1 runs unchanged on any batch once the leading
dimension is made symbolic ("relaxed"). Whether it does is checked, not assumed:

1. the leading 1 of every input becomes the symbolic dimension `batch`; a Reshape whose
   constant target shape starts with 1 while its input's leading dimension is the batch
   is rewritten to 0 (copy that dimension), which at batch 1 is the same shape;
2. strict ONNX shape inference must accept the result, and every output that declared a
   leading 1 must now lead with `batch`;
3. onnxruntime runs the relaxed graph on a batch of two random samples and the original
   graph on each sample alone; the outputs must agree.

Anything else (a fixed batch other than 1, or a failed check) keeps the declared shapes and
the runtime runs the model in batches of its declared size ("fixed"). The outcome, and the
reason for a fallback, is recorded in the bundle manifest under "batch".
"""

from __future__ import annotations

import copy
from typing import Any

import numpy as np
import onnx
from onnx import helper, numpy_helper, shape_inference

from xbar.converter.load import skeleton
from xbar.errors import brief

BATCH = "batch"


def value_dims(vi: onnx.ValueInfoProto) -> list[Any] | None:
    t = vi.type.tensor_type
    if not t.HasField("shape"):
        return None
    return [d.dim_value if d.HasField("dim_value") else (d.dim_param or None) for d in t.shape.dim]


def graph_inputs(model: onnx.ModelProto) -> list[onnx.ValueInfoProto]:
    inits = {i.name for i in model.graph.initializer}
    return [vi for vi in model.graph.input if vi.name not in inits]


def batch_of(model: onnx.ModelProto) -> dict[str, Any]:
    """What the model declares: symbolic leading dims, or one fixed leading size for all inputs."""
    sizes = set()
    names = set()
    for vi in graph_inputs(model):
        dims = value_dims(vi)
        if not dims:
            return {"mode": "symbolic", "size": None, "dim": None}
        if isinstance(dims[0], int):
            sizes.add(dims[0])
        else:
            names.add(dims[0])
    if len(sizes) == 1 and not names:
        return {"mode": "fixed", "size": sizes.pop(), "dim": None}
    return {"mode": "symbolic", "size": None, "dim": names.pop() if len(names) == 1 and not sizes else None}


def _set_leading(vi: onnx.ValueInfoProto, name: str) -> None:
    d = vi.type.tensor_type.shape.dim[0]
    d.Clear()
    d.dim_param = name


def _constant_arrays(model: onnx.ModelProto) -> dict[str, np.ndarray]:
    out = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    for node in model.graph.node:
        if node.op_type == "Constant" and len(node.attribute) == 1 and node.attribute[0].name == "value":
            out[node.output[0]] = numpy_helper.to_array(node.attribute[0].t)
    return out


def value_shapes(model: onnx.ModelProto) -> dict[str, list[Any] | None]:
    g = model.graph
    return {vi.name: value_dims(vi) for vi in list(g.input) + list(g.value_info) + list(g.output)}


def relax(model: onnx.ModelProto) -> tuple[onnx.ModelProto | None, list[str], str | None]:
    """(relaxed model, rewritten Reshape nodes, None) or (None, [], why not) for a batch-1 model."""
    m = copy.deepcopy(model)
    g = m.graph
    used = {d.dim_param for vi in list(g.input) + list(g.output) + list(g.value_info)
            for d in vi.type.tensor_type.shape.dim if d.dim_param}
    name = BATCH
    while name in used:
        name += "_"
    for vi in graph_inputs(m):
        _set_leading(vi, name)
    leading_one = [vi.name for vi in g.output if (value_dims(vi) or [None])[0] == 1]
    # An output declared without a batch axis ([10] of a [1, 3, H, W] input) cannot follow a
    # batch: relaxed, a flattened batch of 2 would come out as [20], which the comparison
    # below cannot tell from two samples stacked. Such a graph runs at its fixed batch.
    for vi in g.output:
        dims = value_dims(vi)
        if dims is not None and (not dims or isinstance(dims[0], int) and dims[0] != 1):
            return None, [], (f"not relaxed: output {vi.name!r} is declared {list(dims)}, without a leading "
                              "batch dimension")
    for vi in g.output:
        if vi.name in leading_one:
            _set_leading(vi, name)
    del g.value_info[:]
    rewritten: list[str] = []
    constants = _constant_arrays(m)
    for _ in range(sum(n.op_type == "Reshape" for n in g.node) + 1):
        try:
            inferred = shape_inference.infer_shapes(m, data_prop=True)
        except Exception as exc:
            return None, [], f"not relaxed: shape inference fails with a symbolic batch ({brief(exc)})"
        shapes = value_shapes(inferred)
        changed = False
        for k, node in enumerate(g.node):
            if node.op_type != "Reshape" or len(node.input) < 2 or node.input[1] not in constants:
                continue
            if any(a.name == "allowzero" and a.i for a in node.attribute):
                continue
            target = np.asarray(constants[node.input[1]])
            src = shapes.get(node.input[0])
            if target.ndim != 1 or target.size == 0 or int(target[0]) != 1 or not src or src[0] != name:
                continue
            new = target.copy()
            new[0] = 0
            key = f"{node.input[1]}__{name}_{k}"
            g.initializer.append(numpy_helper.from_array(new.astype(np.int64), key))
            constants[key] = new
            node.input[1] = key
            rewritten.append(node.name or f"Reshape_{k}")
            changed = True
        if not changed:
            break
    try:
        inferred = shape_inference.infer_shapes(m, check_type=True, strict_mode=True, data_prop=True)
    except Exception as exc:
        return None, [], f"not relaxed: strict shape inference rejects a symbolic batch ({brief(exc)})"
    for vi in inferred.graph.output:
        dims = value_dims(vi)
        if vi.name in leading_one and (not dims or dims[0] != name):
            return None, [], (f"not relaxed: output {vi.name!r} keeps leading dimension {dims[0] if dims else '?'} "
                              "with a symbolic input batch, so the graph hard-codes batch 1")
    problem = _compare(model, inferred)
    if problem:
        return None, [], problem
    return inferred, rewritten, None


def example_input(vi: onnx.ValueInfoProto, rng: np.random.Generator, n: int) -> np.ndarray:
    """A valid input of `n` samples for graph input `vi`: normal floats; zeros otherwise (an
    index 0 is valid wherever a table is indexed, False masks nothing)."""
    dtype = helper.tensor_dtype_to_np_dtype(vi.type.tensor_type.elem_type)
    dims = value_dims(vi) or []
    shape = [n] + [d if isinstance(d, int) and d > 0 else 1 for d in dims[1:]]
    if np.issubdtype(dtype, np.floating):
        return rng.standard_normal(shape).astype(dtype)
    return np.zeros(shape, dtype=dtype)  # indices: 0 is valid wherever a table is indexed


def _compare(original: onnx.ModelProto, relaxed: onnx.ModelProto) -> str | None:
    """Run the relaxed graph on 2 samples and the original on each alone; None if they agree."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.log_severity_level = 4  # its failures are caught and reported as the reason; not logged in red too
    try:
        before = ort.InferenceSession(original.SerializeToString(), opts, providers=["CPUExecutionProvider"])
        after = ort.InferenceSession(relaxed.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    except Exception as exc:
        return f"not relaxed: onnxruntime cannot load the graph to check a symbolic batch ({brief(exc)})"
    rng = np.random.default_rng(0)
    feeds = {vi.name: example_input(vi, rng, 2) for vi in graph_inputs(original)}
    try:
        together = after.run(None, feeds)
        alone = [before.run(None, {k: v[i:i + 1] for k, v in feeds.items()}) for i in range(2)]
    except Exception as exc:
        return f"not relaxed: the graph fails on a batch of 2 with a symbolic batch ({brief(exc)})"
    for j, out in enumerate(together):
        want = np.concatenate([np.asarray(a[j]) for a in alone], axis=0) if np.ndim(alone[0][j]) else None
        got = np.asarray(out)
        if want is None or got.shape != want.shape:
            return (f"not relaxed: output {after.get_outputs()[j].name!r} has shape {list(got.shape)} for a batch of 2, not "
                    f"{None if want is None else list(want.shape)}: the graph fixes the batch")
        peak = float(np.max(np.abs(want))) if want.size else 0.0
        if not np.allclose(got, want, rtol=1e-4, atol=1e-5 * max(peak, 1e-30)):
            return (f"not relaxed: output {after.get_outputs()[j].name!r} of a batch of 2 differs from the samples run "
                    "one at a time: the graph mixes samples")
    return None


def resolve_batch(model: onnx.ModelProto) -> tuple[onnx.ModelProto, dict[str, Any]]:
    """The model to convert and the manifest's "batch" record (see the module docstring)."""
    declared = batch_of(model)
    if declared["mode"] == "symbolic":
        return model, declared
    size = declared["size"]
    if size != 1:
        return model, dict(declared, reason=f"the graph declares batch {size}; only a declared 1 is relaxed")
    relaxed, rewritten, why = relax(model)
    if relaxed is None:
        return model, dict(declared, reason=why)
    return relaxed, {"mode": "relaxed", "size": None, "dim": value_dims(graph_inputs(relaxed)[0])[0],
                     "declared": 1, "rewritten": rewritten}


def describe(batch: dict[str, Any] | None) -> str:
    """One line on how the model batches, for `xbar convert` and `xbar info`."""
    b = batch or {"mode": "symbolic"}
    return _describe_mode(b) + _describe_time_major(b.get("time_major"))


def _describe_time_major(moved: dict[str, Any] | None) -> str:
    if not moved:
        return ""
    names = ", ".join(repr(n) for n in moved["inputs"])
    outs = ", ".join(repr(n) for n in moved["outputs"])
    nodes = moved["nodes"]
    back = (f"transposed back for recurrent node{'s' if len(nodes) > 1 else ''} {', '.join(repr(n) for n in nodes)}"
            if nodes else "its batch was on axis 1; transposed back at the start of the graph")
    return (f"; time-major input{'s' if len(moved['inputs']) > 1 else ''} {names} taken batch-first "
            f"(axes 0 and 1 swapped; {back})"
            + (f", output{'s' if len(moved['outputs']) > 1 else ''} {outs} given batch-first" if outs else ""))


def _describe_mode(b: dict[str, Any]) -> str:
    if b["mode"] == "relaxed":
        fix = (f"; rewrote Reshape {', '.join(b['rewritten'][:3])}{' …' if len(b['rewritten']) > 3 else ''} "
               "from leading 1 to 0") if b.get("rewritten") else ""
        return (f"relaxed: declared batch 1 made symbolic ({b.get('dim') or 'batch'}), any batch size runs; "
                f"checked by shape inference and onnxruntime{fix}")
    if b["mode"] == "fixed":
        return (f"fixed: runs in batches of the declared {b['size']} sample{'s' if b['size'] != 1 else ''} "
                f"(analog layers still see whole batches){'; ' + b['reason'] if b.get('reason') else ''}")
    return "symbolic: " + (f"leading dimension {b['dim']!r}, " if b.get("dim") else "") + (
        b["reason"] if b.get("reason") else "any batch size runs")


def vectors_at_fixed_batch(model: onnx.ModelProto, tensors: dict[str, int]) -> dict[str, int]:
    """Vectors per sample of tensors (name → values per vector) whose shape stays symbolic
    with a symbolic batch: an exporter's computed Reshape names dimensions `unk__7`, which
    may hold the batch times windows or tokens. Shape inference runs with every input's
    symbolic leading dimension set to 1 and then to 2; a tensor counts where both shapes are
    all numbers and the second holds exactly twice the vectors of the first. The others
    stay unknown (no entry)."""
    base = skeleton(model)
    rows = []
    for size in (1, 2):
        m = onnx.ModelProto()
        m.CopyFrom(base)
        for vi in graph_inputs(m):
            dims = vi.type.tensor_type.shape.dim
            if dims and not dims[0].HasField("dim_value"):
                dims[0].Clear()
                dims[0].dim_value = size
        del m.graph.value_info[:]
        try:
            shapes = value_shapes(shape_inference.infer_shapes(m, data_prop=True))
        except Exception:  # inference at a fixed batch is a refinement; without it the count stays unknown
            return {}
        rows.append({t: int(np.prod(s, dtype=np.int64)) // n for t, n in tensors.items()
                     if (s := shapes.get(t)) is not None and all(isinstance(d, int) for d in s)})
    one, two = rows
    return {t: r for t, r in one.items() if r > 0 and two.get(t) == 2 * r}
