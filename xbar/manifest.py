"""What a well-formed bundle manifest is: a declarative schema and a few consistency checks.

`load_bundle` runs `manifest_problem` on every manifest it reads, so that the CLI and the
runtime only ever see the structure they expect (the keys they read, of the types they
read them as; arrays that exist in the shapes K, N and the tiles imply; a graph whose
nodes read only what earlier nodes produce; valid mapping and hardware specifications).
"""

from __future__ import annotations

from typing import Any, Iterator

import numpy as np

from xbar.affine import FIELDS as AFFINE_FIELDS
from xbar.config import MappingConfig
from xbar.errors import ConfigError
from xbar.hardware import HardwareSpec
from xbar.ops import LAYER_OP, RECURRENT_OP

#: dtype kinds a bundle may hold (bool, ints, floats, complex, byte/unicode strings); never
#: object (pickle) or structured/void.
ARRAY_KINDS = "biufcSU"


ARRAYS_DIR = "arrays/"  # the archive folder holding every array member


def member_name(key: str) -> str:
    """The archive member that holds array `key`."""
    return f"{ARRAYS_DIR}{key}.npy"


class _Map:
    """Schema of a JSON object with free keys whose values all match `value`."""

    def __init__(self, value: Any) -> None:
        self.value = value


class _Optional:
    """Marks a key of a schema dict that may be absent."""

    def __init__(self, schema: Any) -> None:
        self.schema = schema


# The manifest as the CLI and the runtime read it. A schema is a type or tuple of types
# (isinstance; bool never counts as a number), a dict of keys that must be present (more are
# allowed; _Optional marks one that may be absent), a one-item list for a JSON array of such
# items, or _Map(schema) for an object with free keys.
_NUMBER = (int, float)
_NONE = type(None)
_SHAPE = (list, _NONE)
_IO = {"name": str, "shape": _SHAPE, "dtype": str}
_NODE = {"name": str, "op": str, "inputs": [str], "outputs": [str], "attrs": dict}
_TILES = {"n_row_blocks": int, "n_col_blocks": int, "tiles_used": int, "utilisation": _NUMBER,
          "adc_per_vector": _Optional(int), "vectors_per_sample": _Optional((int, _NONE))}
# Dimension names: a list of names (None for a number or an unnamed one), or None.
_DIM_NAMES = _Optional((list, _NONE))
_RANGES = {"input": _NUMBER, "adc": str, "adc_absmax": str}
_LAYER = {"name": str, "kind": str, "placement": str, "input": str, "output": str, "K": int, "N": int,
          "weights": int, "params": dict, "affine": {"source": str, "eps": _NUMBER}, "arrays": _Map(str),
          "input_shape": _SHAPE, "output_shape": _SHAPE, "tiles": _Optional(_TILES), "ranges": _Optional(_RANGES),
          "input_dim_names": _DIM_NAMES, "output_dim_names": _DIM_NAMES,
          "time_steps": _Optional({"size": (int, _NONE), "name": (str, _NONE)})}
_ARRAY = {"member": str, "sha256": str, "shape": [int], "dtype": str}
_CALIBRATION = {"method": str, "samples": int, "seed": int, "t_inference": _NUMBER, "date": str,
                "hardware": {"device": {"model": str}}, "agreement_with_ideal_before": _NUMBER,
                "agreement_with_ideal_after": _NUMBER}
_MANIFEST_SCHEMA = {
    "format": str,
    "format_version": int,
    "xbar_version": str,
    "model": {"source": str, "sha256": str, "opset": int, "original_opset": int},
    "mapping": {"rows": int, "cols": int, "encoding": str, "g_min": _NUMBER, "g_max": _NUMBER},
    "graph": {"inputs": [_IO], "outputs": [_IO], "constants": _Map(str), "nodes": [_NODE]},
    "layers": [_LAYER],
    "summary": {"analog_layers": int, "digital_layers": int, "tiles_used": int, "analog_weights": int,
                "parameters": int},
    "arrays": _Map(_ARRAY),
    "hardware": _Optional(dict),
    "batch": _Optional({"mode": str, "time_major": _Optional({"nodes": [str], "inputs": [str], "outputs": _Map(int)})}),
    "calibration": _Optional([_CALIBRATION]),
    "pool": _Optional({"tiles": str, "physical_tiles": int}),
}

#: The arrays each placement of layer needs (besides the ranges a calibration adds), and the
#: params each kind of layer needs.
_LAYER_ARRAYS = {"analog": AFFINE_FIELDS + ("col_scale", "tile_used"),
                 "digital": AFFINE_FIELDS + ("weight",)}
#: Where an analog layer's conductances are, by format version: versions 1 and 2 store the
#: whole tile grid (row blocks, column blocks, R, C); version 3 only the allocated tiles
#: (T, R, C), in row-major order of tile_used.
#: Version 4 as 3, or a packed layer's physical tiles and pack map (xbar.packing); 5 as 4,
#: the pack map with a fifth column (stacked rows); 6 as 5, or a sixth column (shared) and
#: the manifest's `pool` of tiles layers share.
_TILE_ARRAY = {1: "conductance", 2: "conductance", 3: "tiles", 4: "tiles", 5: "tiles", 6: "tiles"}
_PACKED_ARRAYS = ("packed_tiles", "pack_map")
#: The column map's arrays, by format version (see READABLE_VERSIONS).
_MAP_ARRAYS = {1: ("column_order",), 2: ("position_output", "position_gain"), 3: ("position_output", "position_gain"),
               4: ("position_output", "position_gain"), 5: ("position_output", "position_gain"),
               6: ("position_output", "position_gain")}
_LAYER_PARAMS = {"conv": {"kernel_shape": [int], "in_channels": int, "group": int, "strides": [int],
                          "dilations": [int], "pads": [int], "auto_pad": str},
                 "gemm": {"transA": int},
                 "matmul": {"side": str},
                 "recurrent": {"node": str, "cell": str, "direction": str, "matrix": str}}


def type_name(value: Any) -> str:
    names = {dict: "an object", list: "an array", str: "a string", bool: "true/false", type(None): "null",
             int: "an integer", float: "a number"}
    return names.get(type(value), type(value).__name__)


def _schema_problem(value: Any, schema: Any, where: str) -> str | None:
    """The first place where `value` does not match `schema`, as a sentence; None if it matches."""
    found = _mismatch(value, schema)
    if found is None:
        return None
    path, text = found
    return f"{where}{''.join(reversed(path))} {text}"


def _mismatch(value: Any, schema: Any) -> tuple[list[str], str] | None:
    """(path below `value`, innermost part last-first; what is wrong there) or None. The path is
    only built on the way back from a mismatch: a bundle's manifest has thousands of values, and
    naming each one before knowing it is wrong was most of the check's time."""
    if isinstance(schema, dict):
        if not isinstance(value, dict):
            return [], f"should be an object, found {type_name(value)}"
        for key, sub in schema.items():
            optional = isinstance(sub, _Optional)
            if key not in value:
                if optional:
                    continue
                return [f".{key}"], "is missing"
            sub = sub.schema if optional else sub
            if _plainly(value[key], sub):
                continue
            found = _mismatch(value[key], sub)
            if found:
                found[0].append(f".{key}")
                return found
        return None
    if isinstance(schema, list):
        if not isinstance(value, list):
            return [], f"should be an array, found {type_name(value)}"
        return _first_mismatch(enumerate(value), schema[0], "[{}]")
    if isinstance(schema, _Map):
        if not isinstance(value, dict):
            return [], f"should be an object, found {type_name(value)}"
        return _first_mismatch(value.items(), schema.value, "[{!r}]")
    types = schema if isinstance(schema, tuple) else (schema,)
    if isinstance(value, bool) and bool not in types or not isinstance(value, types):
        expected = " or ".join(type_name(t()) for t in types)
        return [], f"should be {expected}, found {type_name(value)}"
    return None


def _plainly(value: Any, schema: Any) -> bool:
    """True if `value`'s exact type is the scalar type or one of the types `schema` names:
    the common case, decided without a call of _mismatch per value (a manifest has
    thousands). False means only that the full check must decide."""
    kind = type(value)
    return kind is schema or (type(schema) is tuple and kind in schema)


def _first_mismatch(items, schema: Any, label: str) -> tuple[list[str], str] | None:
    """The first of (key, value) items that does not match `schema`, its key (formatted by
    `label`) on the path."""
    for key, v in items:
        if _plainly(v, schema):
            continue
        found = _mismatch(v, schema)
        if found:
            found[0].append(label.format(key))
            return found
    return None


def _plain_dtype(text: str) -> np.dtype | None:
    """The dtype named by `text` if a bundle may hold it (no objects, no records), else None."""
    try:
        dtype = np.dtype(text)
    except (TypeError, ValueError, SyntaxError):
        return None
    return dtype if dtype.kind in ARRAY_KINDS and dtype.fields is None else None


def _array_refs(manifest: dict[str, Any]) -> Iterator[tuple[str, str]]:
    """(where, key) for every array the graph and layers refer to."""
    for name, key in manifest["graph"]["constants"].items():
        yield f"graph.constants[{name!r}]", key
    for i, layer in enumerate(manifest["layers"]):
        for name, key in layer["arrays"].items():
            yield f"layers[{i}].arrays[{name!r}]", key
        for name in ("adc", "adc_absmax") if "ranges" in layer else ():
            yield f"layers[{i}].ranges.{name}", layer["ranges"][name]
    if isinstance(manifest.get("pool"), dict):
        yield "pool.tiles", manifest["pool"]["tiles"]

    def walk(value: Any, where: str) -> Iterator[tuple[str, str]]:
        if isinstance(value, dict):
            if isinstance(value.get("$array"), str):
                yield where, value["$array"]
            for k, v in value.items():
                yield from walk(v, f"{where}.{k}")
        elif isinstance(value, list):
            for i, v in enumerate(value):
                yield from walk(v, f"{where}[{i}]")

    for i, node in enumerate(manifest["graph"]["nodes"]):
        yield from walk(node["attrs"], f"graph.nodes[{i}].attrs")


# Each check below assumes the schema holds and returns the first problem as a sentence.


def _arrays_problem(m: dict[str, Any]) -> str | None:
    for key, entry in m["arrays"].items():
        where = f"manifest.arrays[{key!r}]"
        if entry["member"] != member_name(key):
            return f"{where}.member is {entry['member']!r}, expected {member_name(key)!r}"
        if len(entry["shape"]) > 64 or any(d < 0 for d in entry["shape"]):
            return f"{where}.shape {entry['shape']} is not an array shape"
        if _plain_dtype(entry["dtype"]) is None:
            return f"{where}.dtype {entry['dtype']!r} is not a bool, numeric or string dtype"
    return next((f"manifest.{where} refers to array {key!r}, which the bundle does not list"
                 for where, key in _array_refs(m) if key not in m["arrays"]), None)


def _layers_problem(m: dict[str, Any]) -> str | None:
    """Each layer has the arrays its placement needs, in the shapes its K x N and the tiles imply."""
    rows, cols = m["mapping"]["rows"], m["mapping"]["cols"]
    weight_cols = MappingConfig.from_dict(m["mapping"]).weight_cols_per_tile
    for i, layer in enumerate(m["layers"]):
        where = f"manifest.layers[{i}] ({layer['name']!r})"
        k, n, placement, kind, params = layer["K"], layer["N"], layer["placement"], layer["kind"], layer["params"]
        if placement not in _LAYER_ARRAYS:
            return f"{where}: placement {placement!r} is neither 'analog' nor 'digital'"
        if kind not in _LAYER_PARAMS:
            return f"{where}: kind {kind!r} is not one of {', '.join(_LAYER_PARAMS)}"
        problem = _schema_problem(params, _LAYER_PARAMS[kind], f"manifest.layers[{i}].params")
        if problem:
            return problem
        if kind == "conv":
            sizes = params["kernel_shape"] + params["strides"] + params["dilations"]
            if min(sizes + [params["group"], params["in_channels"]]) < 1 or min(params["pads"], default=0) < 0:
                return (f"{where}: conv kernel_shape, strides, dilations, group and in_channels must be >= 1 "
                        f"and pads >= 0; got {params}")
        if k < 1 or n < 1:
            return f"{where}: K = {k}, N = {n}; both must be at least 1"
        for key in ("input_dim_names", "output_dim_names"):
            names = layer.get(key)
            if names is not None and not all(v is None or isinstance(v, str) for v in names):
                return f"{where}: {key} holds {names!r}; names are strings or null"
        version = m["format_version"]
        packed = placement == "analog" and version >= 4 and "pack_map" in layer["arrays"]
        tile_arrays = _PACKED_ARRAYS if packed else (_TILE_ARRAY[version],)
        needed = _LAYER_ARRAYS[placement] + (tile_arrays + _MAP_ARRAYS[version] if placement == "analog" else ())
        depthwise = placement == "digital" and "weight_depthwise" in layer["arrays"]
        if depthwise:  # a digital depthwise convolution stores its kernels, not the K×N matrix
            if kind != "conv" or not 1 < params["group"] == params["in_channels"] or k % params["in_channels"]:
                return f"{where}: a 'weight_depthwise' array needs a depthwise convolution (group = in_channels > 1)"
            needed = AFFINE_FIELDS + ("weight_depthwise",)
        missing = [a for a in needed if a not in layer["arrays"]]
        if missing:
            return f"{where} lists no {missing[0]!r} array"
        shape = {a: tuple(m["arrays"][layer["arrays"][a]]["shape"]) for a in needed}
        want = {a: (n,) for a in AFFINE_FIELDS}
        if depthwise:
            want["weight_depthwise"] = (k // params["in_channels"], n)
        elif placement == "digital":
            want["weight"] = (k, n)
        else:
            if packed:
                g, m_, blocks = shape["packed_tiles"], shape["pack_map"], shape["tile_used"]
                if len(g) != 3 or g[1:] != (rows, cols) or len(blocks) != 2 or len(m_) != 2:
                    return (f"{where}: array 'packed_tiles' has shape {list(g)}, expected [physical tiles, {rows}, "
                            f"{cols}], with a 2-D tile_used and pack_map")
                table = layer.get("tiles") or {}
                logical = table.get("tiles_used", m_[0])
                width = 6 if version >= 6 and m_[1:] == (6,) else 5 if version >= 5 and m_[1:] == (5,) else 4
                if m_ != (logical, width) or logical > blocks[0] * blocks[1]:
                    return (f"{where}: array 'pack_map' has shape {list(m_)}; expected [{logical}, 4] (5 columns "
                            f"from format 5 on, 6 from 6 on), one row (physical, offset, lo, hi[, row[, shared]]) per "
                            f"allocated tile of the {list(blocks)} grid")
                if width == 6 and "pool" not in m:
                    return f"{where}: a 6-column pack_map places passes on shared tiles, but the manifest has no pool"
                if m["mapping"].get("encoding") != "differential":
                    return f"{where}: packed tiles need the differential encoding, not {m['mapping'].get('encoding')!r}"
                packing = table.get("packing")
                physical = packing.get("physical_tiles", g[0]) if isinstance(packing, dict) else packing
                if physical != g[0]:
                    return f"{where}: array 'packed_tiles' holds {g[0]} tiles, but its tile table says {physical!r}"
                want.update(packed_tiles=g, pack_map=m_)
            elif version >= 3:
                g, blocks = shape["tiles"], shape["tile_used"]
                if len(g) != 3 or g[1:] != (rows, cols) or len(blocks) != 2 or g[0] > blocks[0] * blocks[1]:
                    return (f"{where}: array 'tiles' has shape {list(g)} for a tile grid {list(blocks)}; expected "
                            f"[allocated tiles, {rows}, {cols}] with at most one tile per grid cell")
                table_tiles = layer.get("tiles", {}).get("tiles_used", g[0])
                if table_tiles != g[0]:
                    return f"{where}: array 'tiles' holds {g[0]} tiles, but its tile table says {table_tiles!r}"
            else:
                g = shape["conductance"]
                if len(g) != 4 or g[2:] != (rows, cols):
                    return (f"{where}: array 'conductance' has shape {list(g)}, "
                            f"expected [row blocks, column blocks, {rows}, {cols}]")
                blocks = g[:2]
            positions = layer.get("tiles", {}).get("positions", n)
            if type(positions) is not int or positions < n:
                return f"{where}: tiles.positions is {positions!r}; it must be an integer >= N = {n}"
            want.update({} if packed else {_TILE_ARRAY[version]: g}, tile_used=blocks, col_scale=(n,),
                        **{a: (positions,) for a in _MAP_ARRAYS[version]})
            if "row_order" in layer["arrays"]:  # optional: the converter's row placement
                shape["row_order"] = tuple(m["arrays"][layer["arrays"]["row_order"]]["shape"])
                want["row_order"] = (k,)
            if blocks[0] * rows < k or blocks[1] * weight_cols < positions:
                return (f"{where}: {blocks[0]} x {blocks[1]} tiles of {rows}x{cols} cannot hold its {k} rows "
                        f"and {positions} weight positions")
        bad = next((a for a in want if shape[a] != want[a]), None)
        if bad:
            return f"{where}: array {bad!r} has shape {list(shape[bad])}, expected {list(want[bad])}"
    return None


def _pool_problem(m: dict[str, Any]) -> str | None:
    """The tiles layers share (format 6): a stack of R × C tiles the tile table counts."""
    pool = m.get("pool")
    if pool is None:
        return None
    if m["format_version"] < 6:
        return f"manifest.pool needs format version 6, not {m['format_version']}"
    g = tuple(m["arrays"][pool["tiles"]]["shape"])
    rows, cols = m["mapping"]["rows"], m["mapping"]["cols"]
    if len(g) != 3 or g[1:] != (rows, cols) or g[0] != pool["physical_tiles"] or g[0] < 1:
        return (f"manifest.pool: array {pool['tiles']!r} has shape {list(g)}, expected "
                f"[{pool['physical_tiles']}, {rows}, {cols}] (pool.physical_tiles shared tiles)")
    return None


def _graph_problem(m: dict[str, Any]) -> str | None:
    """Nodes run in order: each reads only graph inputs, constants and earlier nodes' outputs."""
    graph, n_layers = m["graph"], len(m["layers"])
    for kind in ("inputs", "outputs"):
        for i, io in enumerate(graph[kind]):
            if _plain_dtype(io["dtype"]) is None:
                return f"manifest.graph.{kind}[{i}] ({io['name']!r}) has dtype {io['dtype']!r}, which is not a dtype"
    known = {io["name"] for io in graph["inputs"]} | set(graph["constants"])
    for i, node in enumerate(graph["nodes"]):
        where = f"manifest.graph.nodes[{i}] ({node['name']!r})"
        index = node["attrs"].get("layer")
        if node["op"] == LAYER_OP and (type(index) is not int or not 0 <= index < n_layers):
            return f"{where} refers to layer {index!r}, which does not exist"
        if node["op"] == RECURRENT_OP:
            refs = node["attrs"].get("layers")
            flat = [i for d in refs for i in d] if isinstance(refs, list) and all(isinstance(d, list) for d in refs) else None
            if not flat or any(type(i) is not int or not -1 <= i < n_layers for i in flat):
                return f"{where} refers to layers {refs!r}, which do not all exist"
        unknown = next((name for name in node["inputs"] if name and name not in known), None)
        if unknown is not None:
            return f"{where} reads {unknown!r}, which no graph input, constant or earlier node provides"
        known.update(node["outputs"])
    return next((f"manifest.graph.outputs names {o['name']!r}, which no node produces"
                 for o in graph["outputs"] if o["name"] not in known), None)


def _specs_problem(m: dict[str, Any]) -> str | None:
    """The mapping and every hardware specification (target, calibrated chips) are valid."""
    try:
        MappingConfig.from_dict(m["mapping"])
    except (ConfigError, TypeError) as exc:
        return f"manifest.mapping is invalid ({exc})"
    specs = [("manifest.hardware", m["hardware"])] if "hardware" in m else []
    specs += [(f"manifest.calibration[{i}].hardware", r["hardware"]) for i, r in enumerate(m.get("calibration", []))]
    for where, spec in specs:
        try:
            HardwareSpec.from_dict(spec)
        except ConfigError as exc:
            return f"{where} is not a valid hardware specification ({exc})"
    return None


def _batch_problem(m: dict[str, Any]) -> str | None:
    """How the model batches: a known mode; a fixed one names its positive declared size."""
    b = m.get("batch")
    if b is None:
        return None
    if b["mode"] not in ("symbolic", "relaxed", "fixed"):
        return f"manifest.batch.mode is {b['mode']!r}, expected 'symbolic', 'relaxed' or 'fixed'"
    size = b.get("size")
    if b["mode"] == "fixed" and (not isinstance(size, int) or isinstance(size, bool) or size < 1):
        return f"manifest.batch.size is {size!r}; a fixed batch needs a positive integer size"
    return None


def manifest_problem(manifest: Any) -> str | None:
    """What is structurally wrong with a parsed manifest of the current format version, or None."""
    problem = _schema_problem(manifest, _MANIFEST_SCHEMA, "manifest")
    checks = (_specs_problem, _arrays_problem, _layers_problem, _pool_problem, _graph_problem, _batch_problem)
    return problem or next((p for check in checks if (p := check(manifest))), None)
