"""The deployment bundle: one zip file holding a JSON manifest and `.npy` arrays.

The bundle is the only thing the converter hands to the runtime. Loading it never
unpickles; it checks the manifest's structure, refuses members whose names could escape
the archive or whose declared size disagrees with the manifest (before decompressing
them), and verifies every array against the checksum, shape and dtype in the manifest.
Any problem is a BundleError naming the file. Writing is atomic and checks the output
path first (`check_output`).
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import os
import struct
import tempfile
import zipfile
import zlib
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any, Iterable, Iterator

import numpy as np

from xbar import __version__
from xbar.affine import FIELDS as AFFINE_FIELDS
from xbar.config import MappingConfig
from xbar.errors import BundleError, ConfigError
from xbar.hardware import HardwareSpec
from xbar.ops import LAYER_OP

FORMAT_NAME = "xbar-bundle"
FORMAT_VERSION = 2
#: Versions this xbar reads. 2 added the column map (position_output, position_gain per
#: analog layer) for encodings with several positions per output; a version-1 bundle's
#: column_order is the same map with one position per output and unit gains.
READABLE_VERSIONS = (1, 2)
MANIFEST = "manifest.json"
SUFFIX = ".xbar"


@dataclass
class Bundle:
    """A converted model: `manifest` is plain JSON data, `arrays` maps keys to arrays."""

    manifest: dict[str, Any]
    arrays: dict[str, np.ndarray] = field(default_factory=dict)

    def array(self, key: str) -> np.ndarray:
        try:
            return self.arrays[key]
        except KeyError:
            raise BundleError(f"bundle has no array {key!r}; it is incomplete or was edited by hand") from None

    @property
    def layers(self) -> list[dict[str, Any]]:
        return self.manifest["layers"]

    @property
    def graph(self) -> dict[str, Any]:
        return self.manifest["graph"]


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _npy_bytes(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    # np.save keeps 0-d arrays 0-d (ascontiguousarray would make them 1-d).
    np.save(buf, np.asarray(arr), allow_pickle=False)
    return buf.getvalue()


def _member_name(key: str) -> str:
    return f"arrays/{key}.npy"


def _check_member_path(name: str, path: Path) -> None:
    p = PurePosixPath(name)
    if p.is_absolute() or ".." in p.parts or "\\" in name or name.startswith("/"):
        raise BundleError(f"{path}: archive member {name!r} points outside the bundle; refusing to read it")


# --------------------------------------------------------------------------------------------
# Writing
# --------------------------------------------------------------------------------------------


def _same_file(a: Path, b: Path) -> bool:
    try:
        if a.exists() and b.exists():
            return os.path.samefile(a, b)  # also catches hard links
    except OSError:
        pass
    return a.resolve() == b.resolve()


def check_output(path: str | os.PathLike, force: bool, inputs: Iterable[str | os.PathLike] = ()) -> Path:
    """Refuse an output path that cannot or must not be written, before any expensive work.

    Raises BundleError naming the path and the fix if it is a directory or another
    non-regular file, one of `inputs`, an existing file without `force`, or if its parent
    directory is missing, not a directory or not writable. Writability is probed by creating
    and deleting a temporary file there: permission bits do not stop root, but a read-only
    file system (/proc, /sys, a read-only mount) still does.
    """
    path = Path(path)
    try:
        if path.is_dir():
            raise BundleError(f"{path} is a directory; give a file name for the output bundle, "
                              f"e.g. {path / ('model' + SUFFIX)}")
        for source in inputs:
            if _same_file(path, Path(source)):
                raise BundleError(f"output {path} is the input {source}; writing it would destroy the input, "
                                  "so choose another output path (-o)")
        if path.exists() or path.is_symlink():
            if not path.is_file():
                raise BundleError(f"{path} exists and is not a regular file; choose another output path (-o)")
            if not force:
                raise BundleError(f"{path} already exists; pass --force to overwrite it")
        parent = path.parent
        if not parent.exists():
            raise BundleError(f"cannot write {path}: directory {parent} does not exist; create it first "
                              "or choose another output path (-o)")
        if not parent.is_dir():
            raise BundleError(f"cannot write {path}: {parent} is not a directory; choose another output path (-o)")
    except OSError as exc:  # e.g. a parent that cannot be searched, a name that is too long
        raise BundleError(f"cannot write {path}: {exc.strerror or exc}; choose another output path (-o)") from None
    except ValueError as exc:  # e.g. a NUL byte in the name
        raise BundleError(f"cannot write {path!r}: {exc}; choose another output path (-o)") from None
    try:
        fd, probe = tempfile.mkstemp(prefix=".xbar-write-test-", dir=parent)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise BundleError(f"cannot write {path}: directory {parent} is not writable ({exc.strerror or exc}); "
                          "choose a writable directory for the output (-o)") from None
    return path


def save_bundle(bundle: Bundle, path: str | os.PathLike, force: bool = False) -> Path:
    """Write `bundle` to `path` atomically; refuse to replace an existing file unless `force`.

    Nothing is left behind on failure: the archive is written to a temporary file in the same
    directory and renamed over `path` only when complete.
    """
    path = check_output(path, force)
    manifest = dict(bundle.manifest)
    manifest["format"] = FORMAT_NAME
    manifest["format_version"] = FORMAT_VERSION
    manifest["xbar_version"] = __version__
    payloads: dict[str, bytes] = {}
    index: dict[str, Any] = {}
    for key in sorted(bundle.arrays):
        arr = np.asarray(bundle.arrays[key])
        if arr.dtype.kind not in _ARRAY_KINDS:
            raise BundleError(f"array {key!r} has dtype {arr.dtype}; a bundle holds only bool, numeric and string "
                              "arrays, which load without pickle")
        data = _npy_bytes(arr)
        member = _member_name(key)
        payloads[member] = data
        index[key] = {"member": member, "sha256": _sha256(data), "shape": list(arr.shape), "dtype": str(arr.dtype)}
    manifest["arrays"] = index
    manifest_bytes = json.dumps(manifest, indent=1, sort_keys=False).encode()
    tmp = None
    try:
        # A short prefix: the temporary name must fit NAME_MAX even for a long output name.
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name[:64]}.", suffix=".tmp", dir=path.parent)
        with os.fdopen(fd, "wb") as fh:
            # Arrays are mostly float32 noise-like data that deflate poorly; storing them
            # uncompressed keeps save/load fast.
            with zipfile.ZipFile(fh, "w", compression=zipfile.ZIP_STORED) as zf:
                zf.writestr(MANIFEST, manifest_bytes, compress_type=zipfile.ZIP_DEFLATED)
                for member, data in payloads.items():
                    zf.writestr(member, data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except OSError as exc:
        _remove(tmp)
        raise BundleError(f"could not write {path}: {exc.strerror or exc}; nothing was written "
                          "(free some disk space or choose another output path)") from None
    except BaseException:
        _remove(tmp)
        raise
    bundle.manifest = manifest
    return path


def _remove(tmp: str | None) -> None:
    if tmp is not None and os.path.lexists(tmp):
        os.unlink(tmp)


# --------------------------------------------------------------------------------------------
# Reading
# --------------------------------------------------------------------------------------------

#: The manifest is parsed whole into Python objects (several times its size in memory). Real
#: manifests are KiBs to a few MiB (one entry per node and layer); a bigger one is corrupt or
#: hostile, and refusing it before decompression keeps a small file from exhausting memory.
MAX_MANIFEST_BYTES = 256 << 20

#: An .npy member is its header plus shape x itemsize bytes of data. The header is a magic
#: string, a length and a padded Python dict literal: at least 10 bytes, and well under 4 KiB
#: even for 64-dimensional arrays.
NPY_HEADER_MIN, NPY_HEADER_SLACK = 10, 4096

#: dtype kinds a bundle may hold (bool, ints, floats, complex, byte/unicode strings); never
#: object (pickle) or structured/void.
_ARRAY_KINDS = "biufcSU"

#: What zipfile, zlib, json and numpy raise on damaged or crafted input.
_READ_ERRORS = (zipfile.BadZipFile, zipfile.LargeZipFile, zlib.error, struct.error, OSError, EOFError,
                ValueError, RuntimeError, IndexError, OverflowError, RecursionError)


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
_SHAPE = (list, type(None))
_IO = {"name": str, "shape": _SHAPE, "dtype": str}
_NODE = {"name": str, "op": str, "inputs": [str], "outputs": [str], "attrs": dict}
_TILES = {"n_row_blocks": int, "n_col_blocks": int, "tiles_used": int, "utilisation": _NUMBER}
_RANGES = {"input": _NUMBER, "adc": str, "adc_absmax": str}
_LAYER = {"name": str, "kind": str, "placement": str, "input": str, "output": str, "K": int, "N": int,
          "weights": int, "params": dict, "affine": {"source": str, "eps": _NUMBER}, "arrays": _Map(str),
          "input_shape": _SHAPE, "output_shape": _SHAPE, "tiles": _Optional(_TILES), "ranges": _Optional(_RANGES)}
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
    "calibration": _Optional([_CALIBRATION]),
}

#: The arrays each placement of layer needs (besides the ranges a calibration adds), and the
#: params each kind of layer needs.
_LAYER_ARRAYS = {"analog": AFFINE_FIELDS + ("conductance", "col_scale", "tile_used"),
                 "digital": AFFINE_FIELDS + ("weight",)}
#: The column map's arrays, by format version (see READABLE_VERSIONS).
_MAP_ARRAYS = {1: ("column_order",), 2: ("position_output", "position_gain")}
_LAYER_PARAMS = {"conv": {"kernel_shape": [int], "in_channels": int, "group": int, "strides": [int],
                          "dilations": [int], "pads": [int], "auto_pad": str},
                 "gemm": {"transA": int},
                 "matmul": {"side": str}}


def _type_name(value: Any) -> str:
    names = {dict: "an object", list: "an array", str: "a string", bool: "true/false", type(None): "null",
             int: "an integer", float: "a number"}
    return names.get(type(value), type(value).__name__)


def _schema_problem(value: Any, schema: Any, where: str) -> str | None:
    """The first place where `value` does not match `schema`, as a sentence; None if it matches."""
    if isinstance(schema, dict):
        if not isinstance(value, dict):
            return f"{where} should be an object, found {_type_name(value)}"
        for key, sub in schema.items():
            optional = isinstance(sub, _Optional)
            if key not in value:
                if optional:
                    continue
                return f"{where}.{key} is missing"
            problem = _schema_problem(value[key], sub.schema if optional else sub, f"{where}.{key}")
            if problem:
                return problem
        return None
    if isinstance(schema, list):
        if not isinstance(value, list):
            return f"{where} should be an array, found {_type_name(value)}"
        return next((p for i, v in enumerate(value) if (p := _schema_problem(v, schema[0], f"{where}[{i}]"))), None)
    if isinstance(schema, _Map):
        if not isinstance(value, dict):
            return f"{where} should be an object, found {_type_name(value)}"
        return next((p for k, v in value.items() if (p := _schema_problem(v, schema.value, f"{where}[{k!r}]"))), None)
    types = schema if isinstance(schema, tuple) else (schema,)
    if isinstance(value, bool) and bool not in types or not isinstance(value, types):
        expected = " or ".join(_type_name(t()) for t in types)
        return f"{where} should be {expected}, found {_type_name(value)}"
    return None


def _plain_dtype(text: str) -> np.dtype | None:
    """The dtype named by `text` if a bundle may hold it (no objects, no records), else None."""
    try:
        dtype = np.dtype(text)
    except (TypeError, ValueError, SyntaxError):
        return None
    return dtype if dtype.kind in _ARRAY_KINDS and dtype.fields is None else None


def _array_refs(manifest: dict[str, Any]) -> Iterator[tuple[str, str]]:
    """(where, key) for every array the graph and layers refer to."""
    for name, key in manifest["graph"]["constants"].items():
        yield f"graph.constants[{name!r}]", key
    for i, layer in enumerate(manifest["layers"]):
        for name, key in layer["arrays"].items():
            yield f"layers[{i}].arrays[{name!r}]", key
        for name in ("adc", "adc_absmax") if "ranges" in layer else ():
            yield f"layers[{i}].ranges.{name}", layer["ranges"][name]

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
        if entry["member"] != _member_name(key):
            return f"{where}.member is {entry['member']!r}, expected {_member_name(key)!r}"
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
        needed = _LAYER_ARRAYS[placement] + (_MAP_ARRAYS[m["format_version"]] if placement == "analog" else ())
        missing = [a for a in needed if a not in layer["arrays"]]
        if missing:
            return f"{where} lists no {missing[0]!r} array"
        shape = {a: tuple(m["arrays"][layer["arrays"][a]]["shape"]) for a in needed}
        want = {a: (n,) for a in AFFINE_FIELDS}
        if placement == "digital":
            want["weight"] = (k, n)
        else:
            g = shape["conductance"]
            if len(g) != 4 or g[2:] != (rows, cols):
                return (f"{where}: array 'conductance' has shape {list(g)}, "
                        f"expected [row blocks, column blocks, {rows}, {cols}]")
            blocks = g[:2]
            positions = layer.get("tiles", {}).get("positions", n)
            if type(positions) is not int or positions < n:
                return f"{where}: tiles.positions is {positions!r}; it must be an integer >= N = {n}"
            want.update(conductance=g, tile_used=blocks, col_scale=(n,),
                        **{a: (positions,) for a in _MAP_ARRAYS[m["format_version"]]})
            if blocks[0] * rows < k or blocks[1] * weight_cols < positions:
                return (f"{where}: {blocks[0]} x {blocks[1]} tiles of {rows}x{cols} cannot hold its {k} rows "
                        f"and {positions} weight positions")
        bad = next((a for a in want if shape[a] != want[a]), None)
        if bad:
            return f"{where}: array {bad!r} has shape {list(shape[bad])}, expected {list(want[bad])}"
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


def _manifest_problem(manifest: Any) -> str | None:
    """What is structurally wrong with a parsed manifest of the current format version, or None."""
    problem = _schema_problem(manifest, _MANIFEST_SCHEMA, "manifest")
    checks = (_specs_problem, _arrays_problem, _layers_problem, _graph_problem)
    return problem or next((p for check in checks if (p := check(manifest))), None)


def _member_info(zf: zipfile.ZipFile, member: str, path: Path, low: int, high: int, expected: str) -> zipfile.ZipInfo:
    """The ZipInfo of `member`, refused unless it is stored or deflated, unencrypted, and its
    declared uncompressed size lies in [low, high] (checked before anything is decompressed;
    zipfile never inflates a member past its declared size)."""
    try:
        info = zf.getinfo(member)
    except KeyError:
        raise BundleError(f"{path}: member {member} listed in the manifest is missing; the bundle is incomplete "
                          "(re-create it with `xbar convert`)") from None
    if info.compress_type not in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED):
        raise BundleError(f"{path}: member {member} uses zip compression method {info.compress_type}; xbar bundles "
                          "use only stored or deflate (re-create it with `xbar convert`)")
    if info.flag_bits & 0x1:
        raise BundleError(f"{path}: member {member} is encrypted; xbar bundles are never encrypted")
    if not low <= info.file_size <= high:
        raise BundleError(f"{path}: member {member} declares {info.file_size:,} bytes uncompressed, but {expected}; "
                          "the bundle is corrupt or was tampered with, so it is not read")
    return info


def _read(zf: zipfile.ZipFile, info: zipfile.ZipInfo, path: Path) -> bytes:
    try:
        return zf.read(info)
    except _READ_ERRORS as exc:
        raise BundleError(f"{path}: member {info.filename} is corrupt ({exc}); re-create the bundle "
                          "with `xbar convert`") from None


def load_bundle(path: str | os.PathLike) -> Bundle:
    """Read and verify a bundle written by `save_bundle`.

    Every problem with the file (not a zip, truncated, unsafe or duplicate member names,
    members larger or smaller than the manifest says, a manifest of the wrong structure,
    checksum, shape or dtype mismatches, pickled arrays) raises BundleError naming the file.
    """
    path = Path(path)
    try:
        if not path.exists():
            raise BundleError(f"{path}: no such bundle file")
        if path.is_dir():
            raise BundleError(f"{path} is a directory, not a {SUFFIX} bundle file")
        if not path.is_file():
            raise BundleError(f"{path} is not a regular file, so not a {SUFFIX} bundle")
        zf = zipfile.ZipFile(path)
    except _READ_ERRORS as exc:
        if isinstance(exc, OSError) and exc.strerror:  # permission, I/O error, name too long
            raise BundleError(f"cannot read {path}: {exc.strerror}") from None
        raise BundleError(
            f"{path} is not a valid xbar bundle (not a zip archive, or truncated); "
            "re-create it with `xbar convert`"
        ) from None
    with zf:
        return _load(zf, path)


def _load(zf: zipfile.ZipFile, path: Path) -> Bundle:
    names = zf.namelist()
    for name in names:
        _check_member_path(name, path)
    duplicates = sorted(name for name, n in Counter(names).items() if n > 1)
    if duplicates:
        raise BundleError(f"{path}: archive member {duplicates[0]!r} appears more than once; the bundle was "
                          "tampered with, so it is not read")
    if MANIFEST not in names:
        raise BundleError(f"{path} has no {MANIFEST}; it is not an xbar bundle")
    info = _member_info(zf, MANIFEST, path, 0, MAX_MANIFEST_BYTES,
                        f"a manifest is at most {MAX_MANIFEST_BYTES >> 20} MiB")
    try:
        manifest = json.loads(_read(zf, info, path))
    except (ValueError, RecursionError) as exc:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        raise BundleError(f"{path}: {MANIFEST} is not valid JSON ({exc})") from None
    if not isinstance(manifest, dict):
        raise BundleError(f"{path}: {MANIFEST} holds {_type_name(manifest)}, not an object; "
                          "it is not an xbar bundle manifest")
    if manifest.get("format") != FORMAT_NAME:
        raise BundleError(f"{path}: manifest format is {manifest.get('format')!r}, expected {FORMAT_NAME!r}")
    version = manifest.get("format_version")
    if version not in READABLE_VERSIONS or isinstance(version, bool):
        raise BundleError(
            f"{path}: bundle format version {version!r} is not supported by xbar {__version__} "
            f"(reads versions {', '.join(map(str, READABLE_VERSIONS))}); convert the model again with this xbar"
        )
    try:
        problem = _manifest_problem(manifest)
    except RecursionError:
        problem = "the manifest is nested too deeply"
    if problem:
        raise BundleError(f"{path}: {problem}; the bundle is corrupt or was edited by hand "
                          "(re-create it with `xbar convert`)")
    arrays: dict[str, np.ndarray] = {}
    for key, entry in manifest["arrays"].items():
        shape, dtype, member = tuple(entry["shape"]), np.dtype(entry["dtype"]), entry["member"]
        nbytes = math.prod(shape) * dtype.itemsize
        info = _member_info(zf, member, path, nbytes + NPY_HEADER_MIN, nbytes + NPY_HEADER_SLACK,
                            f"its manifest shape {shape} and dtype {dtype} imply {nbytes:,} bytes of data "
                            f"plus an .npy header of {NPY_HEADER_MIN} to {NPY_HEADER_SLACK} bytes")
        data = _read(zf, info, path)
        if _sha256(data) != entry["sha256"]:
            raise BundleError(
                f"{path}: checksum mismatch for {member}; the bundle is corrupt or was modified"
            )
        try:
            arr = np.load(io.BytesIO(data), allow_pickle=False)
        except ValueError as exc:
            if "pickle" in str(exc):
                raise BundleError(f"{path}: array member {member} holds pickled Python objects and cannot be read "
                                  "without pickle, which xbar never uses (it could run arbitrary code)") from None
            raise BundleError(f"{path}: array member {member} is not a valid .npy array ({exc})") from None
        except _READ_ERRORS as exc:
            raise BundleError(f"{path}: array member {member} is not a valid .npy array ({exc})") from None
        if not isinstance(arr, np.ndarray) or arr.shape != shape or arr.dtype != dtype:
            found = f"shape {arr.shape}, dtype {arr.dtype}" if isinstance(arr, np.ndarray) else "not an array"
            raise BundleError(f"{path}: array member {member} holds {found}, but the manifest says shape {shape}, "
                              f"dtype {dtype}; the bundle is corrupt or was edited by hand")
        arrays[key] = arr
    return Bundle(manifest=manifest, arrays=arrays)

