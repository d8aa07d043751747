"""The deployment bundle: one zip file holding a JSON manifest and `.npy` arrays.

The bundle is the only thing the converter hands to the runtime. Loading it never
unpickles; it checks the manifest's structure, refuses members whose names could escape
the archive or whose declared size disagrees with the manifest (before decompressing
them), and verifies every array against the checksum, shape and dtype in the manifest.
Any problem is a BundleError naming the file. Writing is atomic and checks the output
path first (`check_output`).
"""

from __future__ import annotations

import functools
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
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO, Callable, Iterable

import numpy as np

from xbar import __version__
from xbar.errors import BundleError
from xbar.manifest import ARRAY_KINDS, manifest_problem, member_name, type_name
from xbar.memory import keep_freed_memory

FORMAT_NAME = "xbar-bundle"
FORMAT_VERSION = 5
#: Versions this xbar reads. 2 added the column map (position_output, position_gain per
#: analog layer) for encodings with several positions per output; a version-1 bundle's
#: column_order is the same map with one position per output and unit gains. 3 stores only
#: the allocated tiles of an analog layer (`tiles`, (T, R, C), row-major in `tile_used`
#: order) instead of the whole grid (`conductance`, (row blocks, column blocks, R, C)):
#: a depthwise layer's block-diagonal grid is almost all unallocated. `layer_tiles` reads
#: either. 4 stores a layer's tiles packed (`--depthwise packed`, xbar.packing):
#: `packed_tiles` (physical tiles) and `pack_map` instead of `tiles`; it is written only
#: when a layer is packed, every other bundle is still written as 3. 5 adds a fifth column,
#: row, to pack_map (`--pack-tiles`: logical tiles stacked by rows on a physical tile).
READABLE_VERSIONS = (1, 2, 3, 4, 5)
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


def layer_tiles(bundle: Bundle, entry: dict[str, Any]) -> tuple[np.ndarray, np.ndarray]:
    """An analog layer's allocated (logical) tiles (T, R, C) siemens and its tile_used
    (nrb, ncb) bool, from any storage (format 3: `tiles`; 1 and 2: the grid `conductance`;
    4 packed: unpacked from the physical tiles, bit for bit the tiles policy's tiles)."""
    keys = entry["arrays"]
    used = bundle.array(keys["tile_used"]).astype(bool)
    packed = layer_packing(bundle, entry)
    if packed is not None:
        from xbar.packing import pass_heights, unpack

        heights = pass_heights(used, entry["K"], packed[0].shape[1])
        return unpack(*packed, bundle.manifest["mapping"]["g_min"], heights), used
    if "tiles" in keys:
        tiles = bundle.array(keys["tiles"])
        if tiles.shape[0] != int(used.sum()):
            raise BundleError(f"layer {entry['name']!r}: {tiles.shape[0]} tiles stored but tile_used marks "
                              f"{int(used.sum())}; the bundle is corrupt or was edited by hand")
        return tiles, used
    return bundle.array(keys["conductance"])[used], used


def layer_packing(bundle: Bundle, entry: dict[str, Any]) -> tuple[np.ndarray, np.ndarray] | None:
    """A packed layer's physical tiles (T_phys, R, C) siemens and its checked pack_map (T, 5)
    int64 (xbar.packing; a 4-column map gets row 0), or None if the layer is not packed. The
    chip samples these; every other consumer reads the logical tiles from `layer_tiles`."""
    keys = entry["arrays"]
    if "pack_map" not in keys:
        return None
    from xbar.config import MappingConfig
    from xbar.packing import check_map, pass_heights

    physical = bundle.array(keys["packed_tiles"])
    used = bundle.array(keys["tile_used"]).astype(bool)
    cw = MappingConfig.from_dict(bundle.manifest["mapping"]).weight_cols_per_tile
    r = physical.shape[1]
    return physical, check_map(bundle.array(keys["pack_map"]), physical.shape[0], int(used.sum()), cw, entry["name"],
                               pass_heights(used, entry["K"], r), r)


def grid_conductance(bundle: Bundle, entry: dict[str, Any]) -> np.ndarray:
    """An analog layer's whole tile grid (nrb, ncb, R, C), unallocated tiles at G_min (they
    read as zero weights), whichever way the bundle stores it."""
    keys = entry["arrays"]
    if "conductance" in keys:
        return bundle.array(keys["conductance"])
    tiles, used = layer_tiles(bundle, entry)
    out = np.full((*used.shape, *tiles.shape[1:]), bundle.manifest["mapping"]["g_min"], dtype=tiles.dtype)
    out[used] = tiles
    return out


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _npy_bytes(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    # np.save keeps 0-d arrays 0-d (ascontiguousarray would make them 1-d).
    np.save(buf, np.asarray(arr), allow_pickle=False)
    return buf.getvalue()


def _check_member_path(name: str, path: Path) -> None:
    if name.startswith("/") or "\\" in name or ".." in name.split("/"):
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
    # The lowest version that holds the bundle, so that xbar releases reading older versions
    # keep reading it: 4 for a packed layer, 5 for one with stacked rows (a 5-column pack_map).
    maps = [bundle.arrays[layer["arrays"]["pack_map"]] for layer in manifest.get("layers", [])
            if "pack_map" in layer.get("arrays", {})]
    need = 5 if any(np.shape(m)[1:] == (5,) for m in maps) else 4 if maps else 3
    manifest["format_version"] = min(FORMAT_VERSION, need)
    manifest["xbar_version"] = __version__
    payloads: dict[str, bytes] = {}
    index: dict[str, Any] = {}
    for key in sorted(bundle.arrays):
        arr = np.asarray(bundle.arrays[key])
        if arr.dtype.kind not in ARRAY_KINDS:
            raise BundleError(f"array {key!r} has dtype {arr.dtype}; a bundle holds only bool, numeric and string "
                              "arrays, which load without pickle")
        data = _npy_bytes(arr)
        member = member_name(key)
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

#: What zipfile, zlib, json and numpy raise on damaged or crafted input.
_READ_ERRORS = (zipfile.BadZipFile, zipfile.LargeZipFile, zlib.error, struct.error, OSError, EOFError,
                ValueError, RuntimeError, IndexError, OverflowError, RecursionError)


def _member_info(zf: zipfile.ZipFile, member: str, path: Path, low: int, high: int,
                 expected: str | Callable[[], str]) -> zipfile.ZipInfo:
    """The ZipInfo of `member`, refused unless it is stored or deflated, unencrypted, and its
    declared uncompressed size lies in [low, high] (checked before anything is decompressed;
    zipfile never inflates a member past its declared size). `expected` says what the size
    should be; a callable is only called to word a refusal (hundreds of members pass)."""
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
        expected = expected() if callable(expected) else expected
        raise BundleError(f"{path}: member {member} declares {info.file_size:,} bytes uncompressed, but {expected}; "
                          "the bundle is corrupt or was tampered with, so it is not read")
    return info


def _read(zf: zipfile.ZipFile, info: zipfile.ZipInfo, path: Path) -> bytes:
    try:
        return zf.read(info)
    except _READ_ERRORS as exc:
        raise BundleError(f"{path}: member {info.filename} is corrupt ({exc}); re-create the bundle "
                          "with `xbar convert`") from None


_LOCAL_HEADER = struct.Struct("<4s5H3L2H")  # zip local file header, 30 bytes
_NPY_PREFIX = 10  # magic (6), version (2), header length (2 in version 1.0)


def _stored_npy_data(fp: BinaryIO, info: zipfile.ZipInfo, shape: tuple[int, ...], dtype: np.dtype) -> bytes | None:
    """Fast path for an uncompressed (stored) .npy member of the plain layout save_bundle
    writes: its .npy header bytes (hashed with the data), with `fp` left at the start of its
    array data, to be read straight into the array's memory (one copy, no zip CRC pass, no
    second copy through np.load) and checked against the manifest sha256. Returns None for
    anything else (another .npy version, Fortran order, a header that disagrees with the
    manifest), which the general path then reads and judges."""
    try:
        fp.seek(info.header_offset)
        head = fp.read(_LOCAL_HEADER.size)
        if len(head) != _LOCAL_HEADER.size or head[:4] != b"PK\x03\x04":
            return None
        fields = _LOCAL_HEADER.unpack(head)
        fp.seek(fields[-2] + fields[-1], os.SEEK_CUR)  # file name, extra field
        prefix = fp.read(_NPY_PREFIX)
        if len(prefix) != _NPY_PREFIX or prefix[:8] != b"\x93NUMPY\x01\x00":
            return None
        hlen = struct.unpack("<H", prefix[8:10])[0]
        header = fp.read(hlen)
        if _NPY_PREFIX + hlen + math.prod(shape) * dtype.itemsize != info.file_size:
            return None
        if prefix + header != _npy_header(shape, dtype):
            # Not the header np.save writes for this shape and dtype: parse it (slower).
            import ast

            meta = ast.literal_eval(header.decode("latin1"))
            if (not isinstance(meta, dict) or meta.get("fortran_order") is not False
                    or tuple(meta.get("shape", ())) != shape or np.dtype(meta.get("descr")) != dtype):
                return None
        return prefix + header
    except (OSError, ValueError, SyntaxError, TypeError, struct.error, MemoryError, RecursionError):
        return None


def _fill(path: Path, tasks: list[tuple[zipfile.ZipInfo, np.ndarray]]) -> list[str | None]:
    """Read stored members of `path` straight into their arrays (see _stored_npy_data) and
    return the sha256 of each one's header + data, or None where the fast path declines or
    cannot read (the file ended early, or cannot be opened again), for the general path to
    read and judge. Runs on worker threads (file reads and hashlib release the GIL), each
    with a file object of its own."""
    try:
        f = open(path, "rb")
    except OSError:  # gone or unreadable since it was opened: the general path reads what it can
        return [None] * len(tasks)
    digests: list[str | None] = []
    with f:
        for info, arr in tasks:
            header = _stored_npy_data(f, info, arr.shape, arr.dtype)
            buf = memoryview(arr.reshape(-1).view(np.uint8))
            got = 0 if header is not None else -1
            try:
                while 0 <= got < len(buf):
                    n = f.readinto(buf[got:])
                    if not n:
                        break
                    got += n
            except OSError:
                got = -1
            if got < len(buf):
                digests.append(None)
                continue
            h = hashlib.sha256(header)
            h.update(buf)  # hashlib releases the GIL on large buffers
            digests.append(h.hexdigest())
    return digests


@functools.lru_cache(maxsize=1024)  # many members share a shape (per-layer vectors, tiles)
def _npy_header(shape: tuple[int, ...], dtype: np.dtype) -> bytes:
    """The version-1.0 .npy header np.save writes for a C-ordered array of this shape and
    dtype: comparing bytes spares parsing the header of every member with ast."""
    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(buf, {"descr": np.lib.format.dtype_to_descr(dtype),
                                               "fortran_order": False, "shape": shape})
    return buf.getvalue()


# Bytes of fast-path members hashed per hand-off to a worker thread.
_BATCH_BYTES = 1 << 20


def _read_general_npy(zf: zipfile.ZipFile, info: zipfile.ZipInfo, path: Path, member: str, sha256: str,
                      shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray:
    """Any member the fast path declines (deflated, another .npy layout): read whole, checked
    against its sha256, parsed without pickle and compared with the manifest."""
    data = _read(zf, info, path)
    if _sha256(data) != sha256:
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
    return arr


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


_ARENA_ALIGN = 64  # bytes: every array starts on a cache line


def _arena(sizes: list[int], limit: int) -> tuple[np.ndarray | None, list[int]]:
    """One uint8 buffer for arrays of `sizes` bytes and each one's offset in it, or None if
    they add up to more than `limit` (the archive's size: stored data cannot exceed it, so
    only a corrupt archive asks for more, and its members then fail their own checks).

    Read into arrays of their own, a bundle's hundreds of per-layer arrays each take fresh
    4 KiB pages from the kernel, one page fault apiece (about half of loading a 50 MB bundle
    on a VM). One buffer of the total size is a single allocation, which NumPy asks the
    kernel to back with 2 MiB pages. The arrays are views of it, so it lives as long as any
    of them does."""
    offsets, total = [], 0
    for nbytes in sizes:
        offsets.append(total)
        total += -(-nbytes // _ARENA_ALIGN) * _ARENA_ALIGN
    if total > limit:
        return None, offsets
    raw = np.empty(total + _ARENA_ALIGN, dtype=np.uint8)
    skip = -raw.ctypes.data % _ARENA_ALIGN
    return raw[skip:skip + total], offsets


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
        raise BundleError(f"{path}: {MANIFEST} holds {type_name(manifest)}, not an object; "
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
        problem = manifest_problem(manifest)
    except RecursionError:
        problem = "the manifest is nested too deeply"
    if problem:
        raise BundleError(f"{path}: {problem}; the bundle is corrupt or was edited by hand "
                          "(re-create it with `xbar convert`)")
    members = []  # every member's declared size is checked before any memory is taken
    dtypes: dict[str, np.dtype] = {}  # a few dtypes name hundreds of arrays
    for key, entry in manifest["arrays"].items():
        shape, member = tuple(entry["shape"]), entry["member"]
        dtype = dtypes.get(entry["dtype"]) or dtypes.setdefault(entry["dtype"], np.dtype(entry["dtype"]))
        nbytes = math.prod(shape) * dtype.itemsize
        info = _member_info(zf, member, path, nbytes + NPY_HEADER_MIN, nbytes + NPY_HEADER_SLACK,
                            lambda shape=shape, dtype=dtype, nbytes=nbytes:
                                f"its manifest shape {shape} and dtype {dtype} imply {nbytes:,} bytes of data "
                                f"plus an .npy header of {NPY_HEADER_MIN} to {NPY_HEADER_SLACK} bytes")
        members.append((key, entry["sha256"], shape, dtype, member, info))
    keep_freed_memory()  # before this loader's threads take malloc arenas of their own
    # Only stored members can be read in place; a deflated one has a slot of 0 bytes.
    slots = [math.prod(m[2]) * m[3].itemsize if m[5].compress_type == zipfile.ZIP_STORED else 0 for m in members]
    arena, offsets = _arena(slots, os.fstat(zf.fp.fileno()).st_size)
    arrays: dict[str, np.ndarray] = {}
    stored: list[tuple[str, zipfile.ZipInfo, np.ndarray]] = []  # (key, member info, its array)
    for (key, sha256, shape, dtype, member, info), start, size in zip(members, offsets, slots):
        if info.compress_type != zipfile.ZIP_STORED:
            arrays[key] = _read_general_npy(zf, info, path, member, sha256, shape, dtype)
            continue
        arr = (np.empty(shape, dtype) if arena is None or not size
               else arena[start:start + size].view(dtype).reshape(shape))
        arrays[key] = arr
        stored.append((key, info, arr))
    # Stored members are read and hashed on worker threads, one per core: the largest first,
    # so that no thread is left with a large one at the end, and the small ones in batches of
    # >= _BATCH_BYTES so that hundreds of per-layer vectors do not cost a hand-off each.
    stored.sort(key=lambda item: -item[2].nbytes)
    batches: list[tuple[list[str], Future]] = []  # (keys, future of their digests)
    with ThreadPoolExecutor(max_workers=max(1, min(4, os.cpu_count() or 1))) as pool:
        first = 0
        while first < len(stored):
            last, size = first, 0
            while last < len(stored) and size < _BATCH_BYTES:
                size += stored[last][2].nbytes
                last += 1
            part = stored[first:last]
            batches.append(([key for key, _, _ in part], pool.submit(_fill, path, [(i, a) for _, i, a in part])))
            first = last
        digests = {key: d for keys, future in batches for key, d in zip(keys, future.result())}
    # Checksums are compared once all is read, in the manifest's order (the first bad member
    # is the one named, whatever order the threads read them in).
    for key, sha256, shape, dtype, member, info in members:
        if key not in digests:  # read by the general path above
            continue
        if digests[key] is None:  # declined by the fast path, or the file ended early
            arrays[key] = _read_general_npy(zf, info, path, member, sha256, shape, dtype)
        elif digests[key] != sha256:
            raise BundleError(f"{path}: checksum mismatch for {member}; the bundle is corrupt or was modified")
    return Bundle(manifest=manifest, arrays=arrays)

