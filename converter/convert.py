"""ONNX model → bundle: load, fold, find analog layers, map them onto tiles, write a manifest."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterable

import numpy as np
import onnx

from xbar import __version__
from xbar.affine import FIELDS as AFFINE_FIELDS
from xbar.bundle import Bundle
from xbar.config import MappingConfig
from xbar.converter.batch import resolve_batch, vectors_at_fixed_batch
from xbar.converter.fold import build_graph
from xbar.converter.ir import Node
from xbar.converter.layers import LayerSpec, absorb_following, extract_layer
from xbar.converter.load import default_opset, load_model, skeleton
from xbar.converter.mapping import map_weights
from xbar.converter.recurrent import extract_recurrent
from xbar.converter.rewrite import einsum_to_matmul
from xbar.converter.time_major import batch_first
from xbar.converter.vocabulary import check_attributes, unsupported_message
from xbar.dims import vectors_per_sample
from xbar.errors import ConfigError, UnsupportedOpError
from xbar.ops import ANALOG_OPS, DIGITAL_OPS, LAYER_OP, RECURRENT_OP, RECURRENT_OPS

if TYPE_CHECKING:  # pragma: no cover
    from xbar.hardware import HardwareSpec


def _json_shape(shape: list[int | None] | None) -> list[int | None] | None:
    return None if shape is None else [None if d is None else int(d) for d in shape]


def _dim_names(info: Any) -> list[str | None] | None:
    """Symbolic dimensions by name (e.g. batch, seq), None where a dim is a number or unnamed."""
    names = getattr(info, "names", None) if info is not None and info.shape is not None else None
    return None if names is None or not any(names) else list(names)


def _jsonable(value: Any, key: str, arrays: dict[str, np.ndarray]) -> Any:
    if isinstance(value, np.ndarray):
        arrays[key] = value
        return {"$array": key}
    if isinstance(value, (np.integer,)):
        return int(value)
    if isinstance(value, (np.floating,)):
        return float(value)
    if isinstance(value, (list, tuple)):
        return [_jsonable(v, f"{key}_{i}", arrays) for i, v in enumerate(value)]
    if isinstance(value, (int, float, str)) or value is None:
        return value
    raise UnsupportedOpError(f"attribute value of type {type(value).__name__} ({key}) is not supported")


def _source_digest(source: str | os.PathLike | onnx.ModelProto) -> str:
    if isinstance(source, onnx.ModelProto):
        return hashlib.sha256(source.SerializeToString()).hexdigest()
    h = hashlib.sha256()
    with open(source, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _layer_arrays(idx: int, spec: LayerSpec, placement: str, cfg: MappingConfig, arrays: dict[str, np.ndarray],
                  hardware: "HardwareSpec | None" = None, packed: bool = False, owned: bool = False,
                  stack: bool = False, pending: dict[int, np.ndarray] | None = None) -> dict[str, Any]:
    """The layer's bundle arrays into `arrays`, and its manifest entry's arrays/tiles.
    `packed`: --depthwise packed (xbar.packing). `owned`: spec.weight is this layer's own
    array, read by nothing after this call, so mapping may overwrite it (its K×N float64
    then serves as the normalised weights). `stack` (format 5's --pack-tiles): the layer's allocated
    tiles share physical tiles by rows and position ranges (xbar.packing.shelf_fit) when
    that takes fewer tiles (a format-5 bundle's per-layer packing, which `remap` keeps).
    `pending` (--pack-tiles): the layer keeps its logical tiles as plain `tiles` and its live
    position ranges go to pending[idx], for `xbar.packing.pool_layers` to share its partly
    used tiles with other layers' once every layer is mapped."""
    prefix = f"layers/{idx:03d}"
    keys: dict[str, str] = {}

    def put(name: str, value: np.ndarray) -> None:
        keys[name] = f"{prefix}/{name}"
        arrays[keys[name]] = value

    aff = spec.affine
    for name in AFFINE_FIELDS:
        put(name, np.asarray(getattr(aff, name), dtype=np.float32))
    entry: dict[str, Any] = {}
    if placement == "analog":
        target = (hardware.device, hardware.t_inference, hardware.circuit) if hardware else (None, 0.0, None)
        mapped = map_weights(spec.weight, cfg, spec.structure, *target,
                             rows_first=channel_major(spec) if packed else None, overwrite=owned)
        pack_map = heights = None
        if pending is not None:
            pending[idx] = mapped.live
        elif packed or stack:  # xbar.packing: the allocated tiles' live ranges share physical tiles
            from xbar import packing

            if stack:
                heights = packing.pass_heights(mapped.tile_used, spec.weight.shape[0], cfg.rows)
                pack_map, n_phys = packing.shelf_fit(mapped.live, heights, cfg.weight_cols_per_tile, cfg.rows)
                if n_phys >= len(pack_map) and not packed:
                    pack_map = None  # nothing shares a tile: plain tiles, no passes
            else:
                pack_map, n_phys = packing.first_fit(mapped.live, cfg.weight_cols_per_tile)
        if pack_map is not None:
            put("packed_tiles", packing.pack(mapped.tiles, pack_map, n_phys, cfg.g_min, heights))
            put("pack_map", pack_map)
            passes = np.bincount(pack_map[:, 0], minlength=n_phys)
            mapped.table["packing"] = {"physical_tiles": n_phys, "passes_per_vector": len(pack_map),
                                       "max_passes_per_tile": int(passes.max(initial=0)),
                                       "positions_converted": int((pack_map[:, 3] - pack_map[:, 2]).sum()),
                                       # of the physical tiles; the table's own "utilisation" is of the logical ones
                                       "utilisation": mapped.table["cells_used"] / max(1, n_phys * cfg.rows * cfg.cols)}
        else:
            put("tiles", mapped.tiles)
        put("col_scale", mapped.col_scale)
        put("position_output", mapped.position_output)
        put("position_gain", mapped.position_gain)
        put("tile_used", mapped.tile_used)
        if mapped.row_order is not None:
            put("row_order", mapped.row_order)
        entry["tiles"] = mapped.table
    elif depthwise_kernel(spec) is not None:
        # A digital depthwise layer keeps its kernel, (∏k, N), not the block-diagonal K×N
        # matrix (Cin times larger, almost all structural zeros).
        put("weight_depthwise", depthwise_kernel(spec))
    else:
        w = spec.weight
        put("weight", (w if isinstance(w, np.ndarray) else w.toarray()).astype(np.float32))
    entry["arrays"] = keys
    return entry


DEPTHWISE_POLICIES = ("tiles", "digital", "packed")


def is_depthwise(spec: LayerSpec) -> bool:
    """A convolution with one input channel per group (group = in_channels > 1)."""
    p = spec.params
    return spec.kind == "conv" and p.get("group", 1) > 1 and p["group"] == p["in_channels"]


def channel_major(spec: LayerSpec) -> np.ndarray:
    """(K,) row order of a depthwise layer by channel, then kernel offset: physical row q holds
    weight row order[q]. Its rows are (offset, channel), so a row block of R rows reaches
    R/∏k channels' positions in this order (~14 of 64 at 128x128, 3x3), against R in
    (offset, channel) order, where every allocated tile's live positions fill its column
    block and nothing packs."""
    k, cin = spec.weight.shape[0], spec.params["in_channels"]
    rows = np.arange(k)
    return np.lexsort((rows // cin, rows % cin)).astype(np.int64)


def depthwise_kernel(spec: LayerSpec) -> np.ndarray | None:
    """(∏k, N) float32: output n's kernel, from rows (offset, channel n // multiplier) of the
    K×N matrix, for a depthwise layer; None for any other."""
    if not is_depthwise(spec):
        return None
    k, n = spec.weight.shape
    cin = spec.params["in_channels"]
    kk, mult = k // cin, n // cin
    rows = np.arange(kk)[:, None] * cin + (np.arange(n) // mult)[None, :]
    cols = np.broadcast_to(np.arange(n)[None, :], rows.shape)
    if isinstance(spec.weight, np.ndarray):
        return spec.weight[rows, cols].astype(np.float32)
    return np.asarray(spec.weight[rows.ravel(), cols.ravel()]).reshape(rows.shape).astype(np.float32)


def _time_steps(graph: Any, node: Node, layout: int) -> dict[str, Any]:
    """A recurrent node's time steps per sample (one input vector each for W and R): the
    size if known, else the name of the symbolic dimension if it has one."""
    info = graph.info.get(node.inputs[0])
    if info is None or info.shape is None or len(info.shape) != 3:
        return {"size": None, "name": None}
    axis = 1 if layout else 0
    t = info.shape[axis]
    name = (_dim_names(info) or [None] * 3)[axis]
    return {"size": None if t is None else int(t), "name": None if t is not None else name}


def _entry(spec: LayerSpec, idx: int, digital: list[str], graph: Any, cfg: MappingConfig,
           arrays: dict[str, np.ndarray], hardware: "HardwareSpec | None",
           time_steps: dict[str, Any] | None = None, keep_digital: bool = False, packed: bool = False,
           pending: dict[int, np.ndarray] | None = None, batch: dict[str, Any] | None = None) -> dict[str, Any]:
    """The manifest entry of one analog layer (its arrays go to `arrays`). `time_steps`: for
    a recurrent layer, its input vectors per sample (`_time_steps`); None for other layers.
    `batch`: the manifest's batch record, to find the batch in the output shape.
    `keep_digital`: a mapping policy (e.g. --depthwise digital) keeps it off the crossbars;
    `packed` (--depthwise packed) packs its allocated tiles onto physical tiles (xbar.packing);
    `pending` (--pack-tiles) collects its live ranges for the network's shared tiles."""
    placement = "digital" if spec.name in digital or keep_digital else "analog"
    k, n = spec.weight.shape
    steps = 0 if time_steps is None else time_steps["size"]
    in_info = graph.info.get(spec.input)
    out_info = graph.info.get(spec.output)
    if spec.kind == "recurrent":  # one vector per sample and time step, in and out
        in_info = out_info = None
    entry: dict[str, Any] = {
        "name": spec.name,
        "kind": spec.kind,
        "placement": placement,
        "input": spec.input,
        "output": spec.output,
        "input_shape": _json_shape(in_info.shape) if in_info else [None, int(k)] if steps != 0 else None,
        "output_shape": _json_shape(out_info.shape) if out_info else [None, int(n)] if steps != 0 else None,
        "input_dim_names": _dim_names(in_info),
        "output_dim_names": _dim_names(out_info),
        "K": int(k),
        "N": int(n),
        "weight_name": spec.weight_name,
        "weights": int(spec.structure.sum()) if spec.structure is not None else int(k * n),
        "params": spec.params,
        "affine": {"source": spec.affine_source, "bn_node": spec.bn_node, "eps": spec.affine.eps},
    }
    if time_steps is not None:
        entry["time_steps"] = dict(time_steps)
    # A Conv/Gemm/MatMul weight is a float64 array extract_layer made for this layer alone,
    # unless it is (a view of) a float64 constant of the graph itself: then it is kept.
    # Recurrent layers cut W/R into several specs and are left alone.
    owned = spec.kind != "recurrent" and isinstance(spec.weight, np.ndarray) and not any(
        isinstance(c, np.ndarray) and np.may_share_memory(spec.weight, c) for c in graph.constants.values())
    entry.update(_layer_arrays(idx, spec, placement, cfg, arrays, hardware, packed and placement == "analog", owned,
                               pending=pending if placement == "analog" else None))
    if placement == "analog":
        t = entry["tiles"]
        out_shape = entry["output_shape"]
        # One ADC conversion per position and row block for every input vector; a
        # sample brings one vector per output position (conv: per output pixel).
        t["adc_per_vector"] = adc_per_vector(t)
        t["vectors_per_sample"] = (vectors_per_sample(out_shape, entry["output_dim_names"], batch, n)
                                   if time_steps is None else steps)
    return entry


def _count_symbolic_vectors(layers: list[dict[str, Any]], model: onnx.ModelProto | None) -> None:
    """Vectors per sample of the analog layers whose output shape names the batch in no
    way `vectors_per_sample` can read, by shape inference at fixed batches."""
    todo = {l["output"]: l for l in layers if l["placement"] == "analog" and "time_steps" not in l
            and l["tiles"]["vectors_per_sample"] is None}
    if not todo or model is None:
        return
    for tensor, count in vectors_at_fixed_batch(model, {t: l["N"] for t, l in todo.items()}).items():
        todo[tensor]["tiles"]["vectors_per_sample"] = count


def adc_per_vector(table: dict[str, Any]) -> int:
    """ADC conversions per input vector of an analog layer: one per position and row block,
    or for a packed layer every pass's own live positions, one pass per logical tile."""
    if "packing" in table:
        return table["packing"]["positions_converted"]
    return table["n_row_blocks"] * table["positions"]


def share_tiles(layers: list[dict[str, Any]], arrays: dict[str, np.ndarray], live: dict[int, np.ndarray],
                routed: set[int], cfg: MappingConfig) -> dict[str, Any] | None:
    """--pack-tiles: the layers' partly used tiles onto the network's shared tiles
    (xbar.packing.pool_layers); a layer that got passes converts its live positions only."""
    from xbar import packing

    pool = packing.pool_layers(layers, arrays, live, cfg.rows, cfg.weight_cols_per_tile, cfg.g_min, routed)
    for i in live:
        t = layers[i]["tiles"]
        if "packing" in t:
            t["adc_per_vector"] = adc_per_vector(t)
    return pool


def tile_totals(analog: list[dict[str, Any]], pool: dict[str, Any] | None = None) -> dict[str, Any]:
    """The manifest summary's tile counts over the analog layers' entries (and the shared tiles)."""
    return {
        "tiles_used": sum(l["tiles"]["tiles_used"] for l in analog),
        # Tiles on the chip: a packed layer's own physical tiles, every other layer's allocated
        # ones, and the tiles layers share (--pack-tiles).
        "physical_tiles": sum(l["tiles"]["packing"]["physical_tiles"] if "packing" in l["tiles"]
                              else l["tiles"]["tiles_used"] for l in analog) + (pool or {}).get("physical_tiles", 0),
        **({"shared_tiles": pool["physical_tiles"]} if pool else {}),
        "physical_columns": sum(l["tiles"]["physical_columns"] for l in analog),
        "adc_per_sample": (sum(l["tiles"]["adc_per_vector"] * l["tiles"]["vectors_per_sample"] for l in analog)
                           if all(l["tiles"]["vectors_per_sample"] is not None for l in analog) else None),
    }


def _affine_parameters(layer: dict[str, Any], arrays: dict[str, np.ndarray]) -> int:
    """Trainable per-output parameters, counted as the source framework would: BN γ, β; a bias."""
    n = layer["N"]
    has_bias = bool(np.any(arrays[layer["arrays"]["bias"]]))
    return (2 * n if layer["affine"]["source"] == "batchnorm" else 0) + (n if has_bias else 0)


def convert(
    model: str | os.PathLike | onnx.ModelProto,
    *,
    crossbar: tuple[int, int] = (128, 128),
    encoding: str = "differential",
    weight_bits: int | None = None,
    digital: Iterable[str] = (),
    g_min: float | None = None,
    g_max: float | None = None,
    weight_clip_percentile: float | None = None,
    afp_exponents: int = 1,
    afp_step: int = 2,
    bit_slices: int = 1,
    bits_per_cell: int | None = None,
    replicas: int = 1,
    rearrange: str = "none",
    rearrange_rows: str = "none",
    hardware: "HardwareSpec | None" = None,
    progress: "Callable[[list[Node]], Iterable[Node]] | None" = None,
    depthwise: str = "tiles",
    pack_tiles: bool = False,
) -> Bundle:
    """Convert an ONNX model (path or ModelProto) into an in-memory bundle.

    `hardware`, the deployment target, supplies the conductance window (unless g_min/g_max
    are given), the device noise analog floating point weighs and the circuit column
    placement needs. `progress` wraps the walk over the graph's nodes (e.g. a progress bar).
    `depthwise` is the mapping policy for depthwise convolutions: 'tiles'
    maps their block-diagonal matrix onto crossbars like any layer (most of its tiles stay
    unallocated, and each allocated one holds ~R/∏k channels on its diagonal); 'digital' keeps
    them digital, computed as a depthwise convolution from their kernels; 'packed' maps them
    with channel-major rows, then packs the live position ranges of their allocated tiles
    onto shared physical tiles, one pass per logical tile (xbar.packing; differential only).
    `pack_tiles` packs the partly used allocated tiles of every analog layer onto physical
    tiles that all layers share, by rows as well as position ranges (a last row block using
    16 of 128 rows shares its tile with others, of its own layer or another), one pass per
    logical tile; differential only."""
    if depthwise not in DEPTHWISE_POLICIES:
        raise ConfigError(f"--depthwise must be one of {', '.join(DEPTHWISE_POLICIES)}; got {depthwise!r}")
    kwargs: dict[str, Any] = {}
    if hardware is not None:
        kwargs.update(g_min=hardware.device.g_min, g_max=hardware.device.g_max)
    if g_min is not None:
        kwargs["g_min"] = g_min
    if g_max is not None:
        kwargs["g_max"] = g_max
    if pack_tiles and encoding != "differential":
        raise ConfigError(f"--pack-tiles needs the differential encoding (got --encoding {encoding}): an offset "
                          "tile's single reference column would be shared by passes of different rows. Use "
                          "--encoding differential, or leave the tiles unpacked.")
    if depthwise == "packed" and encoding != "differential":
        raise ConfigError(f"--depthwise packed needs the differential encoding (got --encoding {encoding}): an "
                          "offset tile's single reference column would be shared by passes of row blocks of "
                          "different heights. Use --encoding differential, or --depthwise tiles or digital.")
    cfg = MappingConfig(
        rows=int(crossbar[0]), cols=int(crossbar[1]), encoding=encoding, weight_bits=weight_bits,
        weight_clip_percentile=weight_clip_percentile, afp_exponents=afp_exponents, afp_step=afp_step,
        bit_slices=bit_slices, bits_per_cell=bits_per_cell, replicas=replicas, rearrange=rearrange,
        rearrange_rows=rearrange_rows, **kwargs,
    )
    circuit = hardware.circuit if hardware is not None and not hardware.is_ideal else None
    for option, policy in (("--rearrange-columns", rearrange), ("--rearrange-rows", rearrange_rows)):
        if policy != "none":
            from xbar.converter.placement import check_circuit

            check_circuit(policy, circuit, option)
    proto, label, original_opset = load_model(model)
    proto, time_major = batch_first(proto)
    if time_major is not None:  # new nodes and shapes: checked and inferred again
        proto = load_model(proto)[0]
    proto, batch = resolve_batch(proto)
    if time_major is not None:
        batch["time_major"] = time_major
    graph = build_graph(proto, label, default_opset(proto))
    # Kept (without its weights) only to count layers' vectors per sample at a fixed batch.
    shapes_only = skeleton(proto) if batch["mode"] != "fixed" else None
    producer = f"{proto.producer_name} {proto.producer_version}".strip()
    # The graph holds every constant as an array of its own: the protobuf's copy of the
    # weights would only double them at the mapping peak (575 MB for VGG-19).
    del proto
    einsum_to_matmul(graph)
    digital = list(digital)

    arrays: dict[str, np.ndarray] = {}
    consumers = graph.consumers()
    layers: list[dict[str, Any]] = []
    new_nodes: list[Node] = []
    absorbed: set[str] = set()
    found_names: list[str] = []
    n_depthwise = 0
    pending: dict[int, np.ndarray] | None = {} if pack_tiles else None  # --pack-tiles: live ranges per layer
    routed: set[int] = set()  # --depthwise packed layers: inputs routed to channel-major rows
    # What survives folding must be runnable; load_model refused unknown ops already, so
    # this only catches ops the vocabulary allows at conversion time (an If whose
    # condition did not fold), all of them in one message.
    leftover: dict[str, list[str]] = {}
    for node in graph.nodes:
        if node.op not in DIGITAL_OPS and node.op not in ANALOG_OPS and node.op not in RECURRENT_OPS:
            leftover.setdefault(node.op, []).append(node.name)
    opset_text = f"opset {original_opset}" + (f", upgraded to {graph.opset}" if original_opset != graph.opset else "")
    if leftover:
        raise UnsupportedOpError(unsupported_message(leftover, label, opset_text).replace(
            "Nothing was converted.", "They remain after constant folding (an If needs a condition known at "
            "conversion). Nothing was converted."))
    check_attributes(graph.nodes, label, opset_text)
    for node in (progress(list(graph.nodes)) if progress else graph.nodes):
        if node.name in absorbed:
            continue
        rec = extract_recurrent(graph, node, label)
        if rec is not None:
            specs, attrs = rec
            base = len(layers)
            steps = _time_steps(graph, node, attrs["layout"])
            for spec in specs:
                found_names.append(spec.name)
                layers.append(_entry(spec, len(layers), digital, graph, cfg, arrays, hardware, steps, batch=batch))
            attrs["layers"] = [[base + i if i >= 0 else -1 for i in idx] for idx in attrs["layers"]]
            ins = [node.inputs[i] if i < len(node.inputs) else "" for i in (0, 4, 5, 6)]
            new_nodes.append(Node(name=node.name, op=RECURRENT_OP, inputs=ins, outputs=list(node.outputs), attrs=attrs))
            continue
        spec = extract_layer(graph, node, label)
        if spec is None:
            new_nodes.append(node)
            continue
        found_names.append(spec.name)
        for user in absorb_following(graph, spec, consumers, label):
            absorbed.add(user.name)
        if [u.name for u in consumers.get(spec.weight_name, [])] == [node.name]:
            # Extracted as the layer's own float64 matrix and read by no other node: pruning
            # would drop it after the loop; dropping it now keeps it out of the mapping peak.
            graph.constants.pop(spec.weight_name, None)
        idx = len(layers)
        n_depthwise += is_depthwise(spec)
        if depthwise == "packed" and is_depthwise(spec):
            routed.add(idx)
        layers.append(_entry(spec, idx, digital, graph, cfg, arrays, hardware,
                             keep_digital=depthwise == "digital" and is_depthwise(spec),
                             packed=idx in routed, pending=pending, batch=batch))
        new_nodes.append(Node(name=spec.name, op=LAYER_OP, inputs=[spec.input], outputs=[spec.output], attrs={"layer": idx}))

    unknown = [d for d in digital if d not in found_names]
    if unknown:
        raise ConfigError(
            f"--digital {', '.join(unknown)}: no analog layer of that name in {label}. "
            f"Analog layers are: {', '.join(found_names) or '(none)'}"
        )
    graph.nodes = new_nodes
    graph.prune()
    for node in graph.nodes:
        if node.op == "MaxPool" and len(node.outputs) > 1 and node.outputs[1]:
            raise UnsupportedOpError(
                f"{label}: MaxPool node {node.name!r}: its Indices output {node.outputs[1]!r} is read by the "
                "model, and xbar's MaxPool computes the pooled values only. Export the model without using the "
                "indices (e.g. return_indices=False in torch).")
    _count_symbolic_vectors(layers, shapes_only)
    pool = share_tiles(layers, arrays, pending, routed, cfg) if pending else None

    nodes_json = []
    for i, node in enumerate(graph.nodes):
        attrs = {k: _jsonable(v, f"attrs/{i:04d}_{k}", arrays) for k, v in node.attrs.items()}
        nodes_json.append({"name": node.name, "op": node.op, "inputs": node.inputs, "outputs": node.outputs, "attrs": attrs})
    const_keys = {}
    for j, (name, value) in enumerate(sorted(graph.constants.items())):
        key = f"constants/{j:04d}"
        arrays[key] = np.asarray(value)
        const_keys[name] = key

    def io(names: list[str]) -> list[dict[str, Any]]:
        out = []
        for name in names:
            info = graph.info.get(name)
            dtype = str(np.dtype(info.dtype)) if info and info.dtype is not None else "float32"
            out.append({"name": name, "shape": _json_shape(info.shape) if info else None, "dtype": dtype,
                        "dim_names": _dim_names(info)})
        return out

    n_analog = [l for l in layers if l["placement"] == "analog"]
    manifest: dict[str, Any] = {
        "xbar_version": __version__,
        "model": {
            "source": Path(label).name if not isinstance(model, onnx.ModelProto) else label,
            "sha256": _source_digest(model),
            "opset": graph.opset,
            "original_opset": original_opset,
            "producer": producer,
        },
        "mapping": cfg.to_dict(),
        "batch": batch,
        "graph": {"inputs": io(graph.inputs), "outputs": io(graph.outputs), "constants": const_keys, "nodes": nodes_json},
        "layers": layers,
        "summary": {
            "analog_layers": len(n_analog),
            "digital_layers": len(layers) - len(n_analog),
            **tile_totals(n_analog, pool),
            "analog_weights": sum(l["weights"] for l in n_analog),
            "depthwise": depthwise,
            "depthwise_layers": n_depthwise,
            "pack_tiles": bool(pack_tiles),
            "parameters": int(sum(l["weights"] + _affine_parameters(l, arrays) for l in layers)
                              + sum(int(np.asarray(v).size) for v in graph.constants.values()
                                    if np.issubdtype(np.asarray(v).dtype, np.floating))),
        },
        "calibration": [],
    }
    if pool is not None:
        manifest["pool"] = pool
    from xbar.data import time_major_input

    time_major = time_major_input(manifest["graph"])
    if time_major is not None:  # axis 0 is time: whatever its name, it is not the batch
        batch.update(dim=None, reason=f"axis 0 of input {time_major[1]!r} is time for recurrent node "
                     f"{time_major[0]!r} (layout 0), so data files cannot be batched along it")
    return Bundle(manifest=manifest, arrays=arrays)
