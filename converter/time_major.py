"""Time-major inputs taken batch-first, so that data files can be cut into batches.

ONNX recurrent nodes read [seq, batch, features] by default (layout 0; torch's
batch_first=False), and a graph input that feeds one, directly or through ops such as an
embedding's Gather, then holds time on axis 0; so does the input of a time-major
transformer (torch's attention with batch_first=False). Data files hold one sample per
index of axis 0, and eval, calibrate and --calib-data cut them into batches along it, which
would cut the sequences apart. Where the batch can be followed to axis 1 of the graph
input, the bundle takes such an input batch-first instead: a Transpose at the start of the
graph swaps the first two axes back for the nodes that read it, and an output that carries
the batch on another axis is transposed to lead with it. The network computes exactly what
it did; only the layout of those inputs and outputs at the bundle's boundary changes, and
the manifest's batch record says which.

The axes are followed by the names of their dimensions through shape inference. Where a
graph input's first two axes have no names (dynamic axes exported without names, or fixed
sizes, where a 5 is any 5), they get provisional names for that inference only. The batch
is then axis 1 where a recurrent node's layout says so, where the first output leads
with axis 1 and axis 0 is gone from it (pooled over time), or where the input's own names
call axis 1 the batch and axis 0 something else ([seq, batch, d]); otherwise a batch-first
input whose output is time-major keeps both and is left alone.

A path that turns the axes into numbers (a Reshape to a constant shape, as torch leaves in
a graph exported with fixed sizes) cannot be followed. In a graph whose inputs all have
fixed sizes, for sequence-shaped ones ([seq, batch] ids, [seq, batch, d] features; images
are not time-major) onnxruntime is asked instead (`_independent_axes`): new values in one
index of axis 0 that change every output beyond one index of an axis of that size say axis
0 mixes samples; if new values in one index of axis 1 change only that index of one axis
per output, and that axis has the size of the other inputs' batch (axis 0), axis 1 is the
batch. Inputs whose axis 0 keeps its samples apart are left as they are.
"""
from __future__ import annotations

from typing import Any

import numpy as np
import onnx
from onnx import helper, shape_inference

from xbar.converter.batch import example_input, graph_inputs, value_dims, value_shapes
from xbar.converter.load import skeleton
from xbar.ops import RECURRENT_OPS


def _time_major_nodes(model: onnx.ModelProto) -> list[onnx.NodeProto]:
    """The recurrent nodes that read [seq, batch, features] (layout 0, the default)."""
    return [node for node in model.graph.node
            if node.op_type in RECURRENT_OPS and node.domain in ("", "ai.onnx")
            and not any(a.name == "layout" and a.i for a in node.attribute)]


def _shapes(model: onnx.ModelProto) -> dict[str, Any]:
    """Every value's dimensions, with the graph inputs' first two axes given names of their
    own where they have none (on a weightless copy, inferred again) so that they can be
    followed."""
    shapes = value_shapes(model)
    unnamed = [(vi.name, k) for vi in graph_inputs(model)
               for k, d in enumerate((value_dims(vi) or [])[:2]) if not isinstance(d, str)]
    if not unnamed:
        return shapes
    sk = onnx.ModelProto()
    sk.CopyFrom(skeleton(model))
    used = {d.dim_param for vi in list(sk.graph.input) + list(sk.graph.output) + list(sk.graph.value_info)
            for d in vi.type.tensor_type.shape.dim if d.dim_param}
    declared = {vi.name: vi for vi in sk.graph.input}
    for name, k in unnamed:
        dim = declared[name].type.tensor_type.shape.dim[k]
        dim.Clear()
        dim.dim_param = _unique(f"{name}.axis{k}", used)
    del sk.graph.value_info[:]
    for vo in sk.graph.output:  # as loaded they hold inference's own names (unk__…) for these axes
        vo.type.tensor_type.ClearField("shape")
    try:
        return value_shapes(shape_inference.infer_shapes(sk, data_prop=True))
    except Exception:  # inference already passed on the model as loaded; without names, as before
        return shapes


def _time_and_batch(nodes: list[onnx.NodeProto], shapes: dict[str, Any]) -> list[tuple[str, str, str]]:
    """(node, time dim name, batch dim name) of every one of `nodes` whose input shape names
    both axes."""
    found = []
    for node in nodes:
        dims = shapes.get(node.input[0]) or []
        if len(dims) == 3 and all(isinstance(d, str) for d in dims[:2]) and dims[0] != dims[1]:
            found.append((node.name, dims[0], dims[1]))
    return found


def _names_a_batch(dim: Any) -> bool:
    """Whether a declared dimension's name says it is the batch ("batch", "batch_size", an
    exporter's Dim("batch")), as opposed to a sequence or an unnamed one."""
    return isinstance(dim, str) and "batch" in dim.lower()


def _batch_on_axis_1(model: onnx.ModelProto, shapes: dict[str, Any]) -> set[tuple[str, str]]:
    """(axis-0 name, axis-1 name) of graph inputs that hold their batch on axis 1 without a
    recurrent node to say so: a time-major transformer (torch's batch_first=False attention)
    whose first output leads with the input's axis 1 and has lost its axis 0 (pooled over
    time), or whose input names only axis 1 as dynamic (axis 0 a fixed sequence length) and
    carries that name into the first output, or whose input calls axis 1, and not axis 0,
    the batch by name (torch's Dim("batch"), say). Otherwise an output that leads with axis 1
    but keeps axis 0 too may as well be a batch-first model's time-major output: left
    alone."""
    if not model.graph.output:
        return set()
    first = shapes.get(model.graph.output[0].name) or []
    declared = {vi.name: value_dims(vi) or [] for vi in graph_inputs(model)}
    found = set()
    for name, own in declared.items():
        d = shapes.get(name) or []
        if len(d) < 2 or not isinstance(d[0], str) or not isinstance(d[1], str) or d[0] == d[1]:
            continue
        # A declared batch of 1 squeezed out of the output ([1, seq] -> [seq, vocab]) looks
        # the same, and that 1 is the batch: a fixed 1 on axis 0 is not time.
        batch_1 = own[:1] == [1]
        leads = bool(first) and first[0] == d[1] and d[0] not in first and not batch_1
        named_only_there = (len(own) >= 2 and isinstance(own[0], int) and isinstance(own[1], str)
                            and own[1] in first and not batch_1)
        named_batch = len(own) >= 2 and _names_a_batch(own[1]) and not _names_a_batch(own[0])
        if leads or named_only_there or named_batch:
            found.add((d[0], d[1]))
    return found


def _probe_candidates(model: onnx.ModelProto, shapes: dict[str, Any], taken: set[str]) -> list[str]:
    """Graph inputs whose batch names cannot place: every size fixed, sequence-shaped (rank 2
    or 3), axis 0 not a fixed 1 (that 1 is the batch), and not placed already."""
    out = []
    for vi in graph_inputs(model):
        dims = value_dims(vi) or []
        if vi.name not in taken and len(dims) in (2, 3) and all(isinstance(d, int) and d > 0 for d in dims) \
                and dims[0] != 1 and dims[1] > 1:
            out.append(vi.name)
    return out


def _independent_axes(model: onnx.ModelProto, candidates: list[str]) -> tuple[list[str], dict[str, int]]:
    """Of `candidates`, the inputs onnxruntime shows to hold their batch on axis 1 (see the
    module docstring), and per output the axis that carries it; ([], {}) where it cannot
    tell (a graph it cannot run, outputs that mix samples on both axes)."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.log_severity_level = 4  # a graph it cannot run is simply not probed
    rng = np.random.default_rng(0)
    # Every input has fixed sizes here: the examples the relaxed batch is checked with, at those sizes.
    feeds = {vi.name: example_input(vi, rng, (value_dims(vi) or [1])[0]) for vi in graph_inputs(model)}
    try:
        sess = ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])
        outs = sess.get_outputs()
        base = [np.asarray(o) for o in sess.run(None, feeds)]
    except Exception:
        return [], {}

    def confined(name: str, axis: int) -> dict[str, int] | None:
        """Per output that changes, the one axis of this size whose last index alone changed
        when that index of the input's `axis` got new values; None if any changed beyond."""
        x = feeds[name]
        size, idx = x.shape[axis], [slice(None)] * x.ndim
        idx[axis] = size - 1
        other = x.copy()
        other[tuple(idx)] = rng.standard_normal(other[tuple(idx)].shape) if np.issubdtype(x.dtype, np.floating) else 1
        try:
            got = sess.run(None, {**feeds, name: other})
        except Exception:
            return None
        axes = {}
        for o, a, b in zip(outs, base, got):
            b = np.asarray(b)
            if a.shape != b.shape or not np.issubdtype(a.dtype, np.number):
                return None
            a64, b64 = a.astype(np.float64), b.astype(np.float64)
            tol = 1e-6 * max(float(np.max(np.abs(a64), initial=0.0, where=np.isfinite(a64))), 1e-30)
            moved = ~((np.abs(a64 - b64) <= tol) | (np.isnan(a64) & np.isnan(b64)))
            if not moved.any():
                continue
            where = np.nonzero(moved)
            at = next((k for k in range(a.ndim) if a.shape[k] == size and np.all(where[k] == size - 1)), None)
            if at is None:
                return None
            axes[o.name] = at
        return axes or None

    # Axis 0 is the batch of every other input, and of a candidate whose axis 0 keeps its
    # samples apart; a batch found on axis 1 must have their size. (A weight fed as an input,
    # [K, N], also keeps its columns apart: its N is no batch.)
    batches = {vi.name: feeds[vi.name].shape[0] for vi in graph_inputs(model)
               if vi.name not in candidates and feeds[vi.name].ndim}
    pending = []
    for name in candidates:
        if confined(name, 0) is not None:
            batches[name] = feeds[name].shape[0]
        else:
            pending.append(name)
    found, out_axes = [], {}
    for name in pending:
        size = feeds[name].shape[1]
        axes = confined(name, 1)
        if axes is None or any(b != size for b in batches.values()) or any(out_axes.get(o, k) != k
                                                                          for o, k in axes.items()):
            continue
        found.append(name)
        batches[name] = size
        out_axes.update(axes)
    return found, out_axes


def _permute(vi: onnx.ValueInfoProto, perm: list[int]) -> None:
    """Declare `vi` with its dimensions in the order `perm` (as a Transpose with it makes them)."""
    dims = vi.type.tensor_type.shape.dim
    old = [onnx.TensorShapeProto.Dimension() for _ in dims]
    for copy, dim in zip(old, dims):
        copy.CopyFrom(dim)
    for dim, k in zip(dims, perm):
        dim.CopyFrom(old[k])


def _unique(name: str, taken: set[str]) -> str:
    while name in taken:
        name += "_"
    taken.add(name)
    return name


def batch_first(model: onnx.ModelProto) -> tuple[onnx.ModelProto, dict[str, Any] | None]:
    """The model with its time-major inputs (and outputs) batch-first, and a record of what
    moved: {"nodes": recurrent nodes (none where the batch's place came from the outputs),
    "inputs": inputs whose axes 0 and 1 were swapped,
    "outputs": {output: the axis its batch came from}}; the model itself and None if
    nothing is."""
    shapes = _shapes(model)
    recurrent = _time_and_batch(_time_major_nodes(model), shapes)
    pairs = {(t, b) for _, t, b in recurrent} | _batch_on_axis_1(model, shapes)
    moved_in = [vi.name for vi in graph_inputs(model)
                if len(d := shapes.get(vi.name) or []) >= 2 and (d[0], d[1]) in pairs]
    probed, probed_out = [], {}
    fixed = all(all(isinstance(d, int) for d in value_dims(vi) or [None]) for vi in graph_inputs(model))
    if fixed and not recurrent and (candidates := _probe_candidates(model, shapes, set(moved_in))):
        probed, probed_out = _independent_axes(model, candidates)
        moved_in += probed
    if not moved_in:
        return model, None
    batch_names = {b for t, b in pairs}
    m = onnx.ModelProto()
    m.CopyFrom(model)
    g = m.graph
    taken = {n for node in g.node for n in list(node.input) + list(node.output)} | {vi.name for vi in g.input}
    front, moved_out = [], {}
    for vi in g.input:
        if vi.name not in moved_in:
            continue
        rank = len(vi.type.tensor_type.shape.dim)
        inner = _unique(f"{vi.name}.time_major", taken)
        for node in g.node:
            node.input[:] = [inner if i == vi.name else i for i in node.input]
        perm = [1, 0] + list(range(2, rank))
        front.append(helper.make_node("Transpose", [vi.name], [inner], name=_unique(f"{vi.name}.to_time_major", taken),
                                      perm=perm))
        _permute(vi, perm)
    back = []
    for vo in g.output:
        d = shapes.get(vo.name) or value_dims(vo) or []
        axis = next((k for k, x in enumerate(d) if x in batch_names), probed_out.get(vo.name))
        if not axis:  # None (no batch named) or 0 (already leading)
            continue
        inner = _unique(f"{vo.name}.time_major", taken)
        for node in g.node:
            node.input[:] = [inner if i == vo.name else i for i in node.input]
            node.output[:] = [inner if o == vo.name else o for o in node.output]
        perm = [axis] + [k for k in range(len(d)) if k != axis]
        back.append(helper.make_node("Transpose", [inner], [vo.name], name=_unique(f"{vo.name}.to_batch_first", taken),
                                     perm=perm))
        _permute(vo, perm)
        moved_out[vo.name] = axis
    nodes = front + list(g.node) + back
    del g.node[:]
    g.node.extend(nodes)
    del g.value_info[:]  # stale where names moved; the caller infers shapes again
    return m, {"nodes": sorted({n for n, _, _ in recurrent}), "inputs": moved_in, "outputs": moved_out}
