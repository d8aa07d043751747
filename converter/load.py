"""Read an ONNX file into a checked, shape-inferred model at a known opset."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import onnx
from onnx import shape_inference, version_converter

from xbar.converter.vocabulary import check_vocabulary
from xbar.errors import ModelError

# The runtime implements operator semantics from opset 13 on (per-axis Softmax, axes as
# inputs); older models are upgraded to this opset before anything else looks at them.
TARGET_OPSET = 17
MIN_NATIVE_OPSET = 13


def default_opset(model: onnx.ModelProto) -> int:
    for imp in model.opset_import:
        if imp.domain in ("", "ai.onnx"):
            return imp.version
    return 1


def _external_data(path: Path) -> bool:
    """Whether the model file at `path` parses and stores tensors outside itself."""
    from onnx.external_data_helper import uses_external_data

    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception:
        return False
    return any(uses_external_data(t) for t in model.graph.initializer)


def load_model(source: str | os.PathLike | onnx.ModelProto) -> tuple[onnx.ModelProto, str, int]:
    """Return (model, label, original opset). `label` names the source in error messages."""
    if isinstance(source, onnx.ModelProto):
        model, label = source, "<in-memory model>"
    else:
        path = Path(source)
        label = str(path)
        if not path.exists():
            raise ModelError(f"{path}: no such file")
        if path.is_dir():
            raise ModelError(f"{path} is a directory; give the path of an .onnx file")
        try:
            model = onnx.load(str(path))
        except Exception as exc:  # protobuf raises DecodeError, RuntimeWarning-derived or OSError
            if _external_data(path):
                raise ModelError(
                    f"{path} keeps its weights in external data files beside it, and reading them failed "
                    f"({type(exc).__name__}: {exc}). Keep those files next to the model, complete and under the "
                    "names the exporter gave them (or export again with the weights inside the .onnx)."
                ) from None
            raise ModelError(
                f"{path} is not a readable ONNX model ({type(exc).__name__}: {exc}). "
                "The file may be truncated or not an ONNX protobuf; export it again."
            ) from None
        if not model.graph.node and not model.graph.output:
            raise ModelError(f"{path} parsed as an empty ONNX model (no nodes, no outputs); the file is probably not ONNX or is truncated")
    newest = onnx.defs.onnx_opset_version()
    for imp in model.opset_import:
        if imp.domain in ("", "ai.onnx") and imp.version > newest:
            raise ModelError(
                f"{label} declares ONNX opset {imp.version}, newer than any the installed onnx "
                f"{onnx.__version__} knows (opsets 1 to {newest}); the meaning of its operators is unknown, so "
                f"xbar will not guess it. Export the model at opset {newest} or older."
            )
    opset = default_opset(model)
    if opset >= MIN_NATIVE_OPSET:
        # Before the checker, the upgrade and shape inference: a model xbar cannot run is
        # refused at once, with every unsupported op named (older models are checked after
        # their upgrade, which renames some ops).
        check_vocabulary(model, label, f"opset {opset}")
    _check_large_initializers(model, label)
    sk = skeleton(model)
    try:
        onnx.checker.check_model(_checkable(sk))
    except onnx.checker.ValidationError as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ModelError(f"{label} fails the ONNX checker: {first}. Fix or re-export the model.") from None
    opset = default_opset(model)
    if opset < 7:
        model = _per_channel_prelu_slopes(model)
    if opset < MIN_NATIVE_OPSET:
        try:
            model = version_converter.convert_version(model, TARGET_OPSET)
        except Exception as exc:
            raise ModelError(
                f"{label}: could not upgrade the model from opset {opset} to {TARGET_OPSET} "
                f"({type(exc).__name__}: {exc}); re-export it at opset {MIN_NATIVE_OPSET} or newer."
            ) from None
        check_vocabulary(model, label, f"opset {opset}, upgraded to {TARGET_OPSET}")
        sk = skeleton(model)  # the upgrade made a new model
    try:
        inferred = shape_inference.infer_shapes(sk, data_prop=True)
    except Exception as exc:
        raise ModelError(f"{label}: ONNX shape inference failed ({exc}); the model is inconsistent.") from None
    if sk is model:
        return inferred, label, opset
    # The model keeps its initializers; it takes the shapes and types inference found.
    del model.graph.value_info[:]
    model.graph.value_info.extend(inferred.graph.value_info)
    del model.graph.output[:]
    model.graph.output.extend(inferred.graph.output)
    return model, label, opset


# Initializers above this many bytes are weights, never shape data: the checker and shape
# inference see them as typed graph inputs instead. Both serialise the model they are given
# (and inference parses its answer back), so with the data in they held VGG-19's 575 MB of
# weights four times over (2.3 GB) while loading it.
SKELETON_BYTES = 1 << 16


# Element types stored two to a byte in raw_data.
_FOUR_BIT = {getattr(onnx.TensorProto, t) for t in ("INT4", "UINT4", "FLOAT4E2M1") if hasattr(onnx.TensorProto, t)}


def _check_large_initializers(model: onnx.ModelProto, label: str) -> None:
    """What the checker would say of the initializers `skeleton` keeps from it: each holds
    exactly the values its shape and type declare."""
    for init in model.graph.initializer:
        if init.ByteSize() <= SKELETON_BYTES or init.data_location == onnx.TensorProto.EXTERNAL:
            continue
        n = int(np.prod(init.dims, dtype=np.int64))
        if init.HasField("raw_data"):
            want = (n + 1) // 2 if init.data_type in _FOUR_BIT else \
                n * onnx.helper.tensor_dtype_to_np_dtype(init.data_type).itemsize
            have, unit = len(init.raw_data), "bytes"
        else:
            field = onnx.helper.tensor_dtype_to_field(init.data_type)
            have, want, unit = len(getattr(init, field)), n, "values"
            if init.data_type in (onnx.TensorProto.COMPLEX64, onnx.TensorProto.COMPLEX128):
                want *= 2
        if have != want:
            raise ModelError(f"{label} fails the ONNX checker: initializer {init.name!r} holds {have} {unit} of data, "
                             f"but its shape {list(init.dims)} and type need {want}. Fix or re-export the model.")


def skeleton(model: onnx.ModelProto) -> onnx.ModelProto:
    """The model with every large initializer turned into a graph input of the same name,
    type and shape (its data left out); the model itself if it has none."""
    big = {init.name for init in model.graph.initializer if init.ByteSize() > SKELETON_BYTES}
    if not big:
        return model
    out = onnx.ModelProto()
    for field in ("ir_version", "producer_name", "producer_version", "domain", "model_version", "doc_string"):
        setattr(out, field, getattr(model, field))
    out.opset_import.extend(model.opset_import)
    out.metadata_props.extend(model.metadata_props)
    out.functions.extend(model.functions)
    g, src = out.graph, model.graph
    g.name = src.name
    g.node.extend(src.node)
    g.initializer.extend(init for init in src.initializer if init.name not in big)
    g.sparse_initializer.extend(src.sparse_initializer)
    g.input.extend(src.input)
    declared = {vi.name for vi in src.input}
    g.input.extend(onnx.helper.make_tensor_value_info(init.name, init.data_type, list(init.dims))
                   for init in src.initializer if init.name in big and init.name not in declared)
    g.output.extend(src.output)
    g.value_info.extend(src.value_info)
    return out


def _checkable(model: onnx.ModelProto) -> onnx.ModelProto:
    """The model as the ONNX checker should see it.

    onnx deprecated GroupNormalization-18 (scale and bias per group) in favour of
    GroupNormalization-21 (per channel), and its checker now rejects every opset 18-20
    model containing it, although onnxruntime runs them and so does xbar (the runtime
    tells the two forms apart by the size of scale). The checker gets a copy in which
    such nodes are InstanceNormalization (same inputs and output), the rest unchanged.
    """
    opset = default_opset(model)
    if not 18 <= opset < 21 or not any(n.op_type == "GroupNormalization" and n.domain in ("", "ai.onnx")
                                       for n in model.graph.node):
        return model
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    for node in copy.graph.node:
        if node.op_type == "GroupNormalization" and node.domain in ("", "ai.onnx"):
            node.op_type = "InstanceNormalization"
            kept = [a for a in node.attribute if a.name == "epsilon"]
            del node.attribute[:]
            node.attribute.extend(kept)
    return copy


def _per_channel_prelu_slopes(model: onnx.ModelProto) -> onnx.ModelProto:
    """Before opset 7 a 1-D PRelu slope of length C meant one slope per channel (axis 1).

    From opset 7 on the slope broadcasts from the right, and the version converter does
    not rewrite it, so reshape such slopes to (C, 1, ..., 1) while the meaning is known.
    """
    from onnx import numpy_helper

    inferred = shape_inference.infer_shapes(model)
    ranks = {}
    for vi in list(inferred.graph.input) + list(inferred.graph.value_info):
        if vi.type.tensor_type.HasField("shape"):
            ranks[vi.name] = len(vi.type.tensor_type.shape.dim)
    inits = {init.name: init for init in model.graph.initializer}
    for node in model.graph.node:
        if node.op_type != "PRelu" or len(node.input) < 2 or node.input[1] not in inits:
            continue
        slope = numpy_helper.to_array(inits[node.input[1]])
        rank = ranks.get(node.input[0])
        if slope.ndim == 1 and slope.size > 1 and rank is not None and rank > 2:
            shape = (slope.size,) + (1,) * (rank - 2)
            inits[node.input[1]].CopyFrom(numpy_helper.from_array(slope.reshape(shape), node.input[1]))
            # Old exports also list initializers as graph inputs; keep that declaration in step.
            for vi in model.graph.input:
                if vi.name == node.input[1]:
                    dims = vi.type.tensor_type.shape.dim
                    del dims[:]
                    for d in shape:
                        dims.add().dim_value = d
    return model
