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
import time
import zipfile
import zlib
from collections import Counter
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable

import numpy as np

from xbar import __version__
from xbar.errors import BundleError
from xbar.manifest import ARRAY_KINDS, ARRAYS_DIR, manifest_problem, member_name, type_name
from xbar.memory import keep_freed_memory

FORMAT_NAME = "xbar-bundle"
FORMAT_VERSION = 6
#: Versions this xbar reads. 2 added the column map (position_output, position_gain per
#: analog layer) for encodings with several positions per output; a version-1 bundle's
#: column_order is the same map with one position per output and unit gains. 3 stores only
#: the allocated tiles of an analog layer (`tiles`, (T, R, C), row-major in `tile_used`
#: order) instead of the whole grid (`conductance`, (row blocks, column blocks, R, C)):
#: a depthwise layer's block-diagonal grid is almost all unallocated. `layer_tiles` reads
#: either. 4 stores a layer's tiles packed (`--depthwise packed`, xbar.packing):
#: `packed_tiles` (physical tiles) and `pack_map` instead of `tiles`; it is written only
#: when a layer is packed, every other bundle is still written as 3. 5 adds a fifth column,
#: row, to pack_map (`--pack-tiles`: logical tiles stacked by rows on a physical tile). 6
#: adds tiles that layers share (`pool/tiles`, manifest `pool`) and a sixth pack_map column,
#: shared, saying which tiles a pass sits on (`--pack-tiles` packs across layers).
READABLE_VERSIONS = (1, 2, 3, 4, 5, 6)
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


def checked_conductances(values: np.ndarray, where: str) -> np.ndarray:
    """`values` (siemens) if every one is finite and >= 0, else BundleError naming `where`
    and the first bad tile: a NaN ran the ideal path to chance accuracy without a word, and
    failed a chip deep in the IR-drop solve."""
    if values.size and not ((values >= 0).all() and np.isfinite(values.max())):
        bad = ~((values >= 0) & np.isfinite(values))
        t = int(np.argmax(bad.reshape(len(values), -1).any(axis=1))) if values.ndim > 1 else int(np.argmax(bad))
        raise BundleError(f"{where}: conductances must be finite and >= 0, but tile {t} holds "
                          f"{float(values[t][bad[t]].ravel()[0])!r}; the bundle is corrupt or was edited by hand "
                          "(convert the model again)")
    return values


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
        tiles = unpack(*packed, bundle.manifest["mapping"]["g_min"], heights, shared_tiles(bundle))
    elif "tiles" in keys:
        tiles = bundle.array(keys["tiles"])
        if tiles.shape[0] != int(used.sum()):
            raise BundleError(f"layer {entry['name']!r}: {tiles.shape[0]} tiles stored but tile_used marks "
                              f"{int(used.sum())}; the bundle is corrupt or was edited by hand")
    else:
        tiles = bundle.array(keys["conductance"])[used]
    return checked_conductances(tiles, f"layer {entry['name']!r}"), used


def layer_packing(bundle: Bundle, entry: dict[str, Any]) -> tuple[np.ndarray, np.ndarray] | None:
    """A packed layer's physical tiles (T_phys, R, C) siemens and its checked pack_map (T, 5)
    int64 (xbar.packing; a 4-column map gets row 0), or None if the layer is not packed. The
    chip samples these; every other consumer reads the logical tiles from `layer_tiles`."""
    keys = entry["arrays"]
    if "pack_map" not in keys:
        return None
    from xbar.config import MappingConfig
    from xbar.packing import check_map, pass_heights

    physical = checked_conductances(bundle.array(keys["packed_tiles"]), f"layer {entry['name']!r}: packed_tiles")
    used = bundle.array(keys["tile_used"]).astype(bool)
    cw = MappingConfig.from_dict(bundle.manifest["mapping"]).weight_cols_per_tile
    r = physical.shape[1]
    pool = shared_tiles(bundle)
    return physical, check_map(bundle.array(keys["pack_map"]), physical.shape[0], int(used.sum()), cw, entry["name"],
                               pass_heights(used, entry["K"], r), r, 0 if pool is None else len(pool))


def shared_tiles(bundle: Bundle) -> np.ndarray | None:
    """The tiles layers share (T_pool, R, C) siemens (`--pack-tiles`, format 6; xbar.packing),
    or None. Which layer's passes sit where is in their pack maps (`shared_passes`)."""
    pool = bundle.manifest.get("pool")
    return None if pool is None else bundle.array(pool["tiles"])


def shared_passes(bundle: Bundle) -> list[tuple[int, np.ndarray, np.ndarray]]:
    """(layer index, checked (T, 6) pack_map, pass heights) of every layer with a pass on a
    shared tile, after checking that no two passes overlap and no shared tile is idle."""
    from xbar.packing import check_pool, pass_heights

    pool = shared_tiles(bundle)
    if pool is None:
        return []
    out = []
    for i, entry in enumerate(bundle.layers):
        pack = layer_packing(bundle, entry) if entry["placement"] == "analog" else None
        if pack is not None and (pack[1][:, 5] == 1).any():
            used = bundle.array(entry["arrays"]["tile_used"]).astype(bool)
            out.append((i, pack[1], pass_heights(used, entry["K"], pool.shape[1])))
    check_pool([(bundle.layers[i]["name"], m, h) for i, m, h in out], pool.shape)
    checked_conductances(pool, "the shared tiles (pool/tiles)")
    return out


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


def same_file(a: Path, b: Path) -> bool:
    try:
        if a.exists() and b.exists():
            return os.path.samefile(a, b)  # also catches hard links
    except OSError:
        pass
    return a.resolve() == b.resolve()


def check_output(path: str | os.PathLike, force: bool, inputs: Iterable[str | os.PathLike] = (),
                 option: str = "-o") -> Path:
    """Refuse an output path that cannot or must not be written, before any expensive work.

    Raises BundleError naming the path and the fix if it is a directory or another
    non-regular file, one of `inputs`, an existing file without `force`, or if its parent
    directory is missing, not a directory or not writable. Writability is probed by creating
    and deleting a temporary file there: permission bits do not stop root, but a read-only
    file system (/proc, /sys, a read-only mount) still does. `option` is the one that named
    the path, for the fix the messages suggest.
    """
    path = Path(path)
    try:
        if path.is_dir():
            raise BundleError(f"{path} is a directory; give a file name for the output bundle, "
                              f"e.g. {path / ('model' + SUFFIX)}")
        for source in inputs:
            if same_file(path, Path(source)):
                raise BundleError(f"output {path} is the input {source}; writing it would destroy the input, "
                                  f"so choose another output path ({option})")
        if path.exists() or path.is_symlink():
            if not path.is_file():
                raise BundleError(f"{path} exists and is not a regular file; choose another output path ({option})")
            if not force:
                raise BundleError(f"{path} already exists; pass --force to overwrite it")
        parent = path.parent
        if not parent.exists():
            raise BundleError(f"cannot write {path}: directory {parent} does not exist; create it first "
                              f"or choose another output path ({option})")
        if not parent.is_dir():
            raise BundleError(f"cannot write {path}: {parent} is not a directory; choose another output path ({option})")
    except OSError as exc:  # e.g. a parent that cannot be searched, a name that is too long
        raise BundleError(f"cannot write {path}: {exc.strerror or exc}; choose another output path ({option})") from None
    except ValueError as exc:  # e.g. a NUL byte in the name
        raise BundleError(f"cannot write {path!r}: {exc}; choose another output path ({option})") from None
    try:
        fd, probe = tempfile.mkstemp(prefix=".xbar-write-test-", dir=parent)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise BundleError(f"cannot write {path}: directory {parent} is not writable ({exc.strerror or exc}); "
                          f"choose a writable directory for the output ({option})") from None
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
    # keep reading it: 4 for a packed layer, 5 for one with stacked rows (a 5-column pack_map),
    # 6 for one whose layers share tiles.
    maps = [bundle.arrays[layer["arrays"]["pack_map"]] for layer in manifest.get("layers", [])
            if "pack_map" in layer.get("arrays", {})]
    need = 6 if "pool" in manifest else 5 if any(np.shape(m)[1:] == (5,) for m in maps) else 4 if maps else 3
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
    def write(fh) -> None:
        # Arrays are mostly float32 noise-like data that deflate poorly; storing them
        # uncompressed keeps save/load fast.
        with zipfile.ZipFile(fh, "w", compression=zipfile.ZIP_STORED) as zf:
            zf.writestr(MANIFEST, manifest_bytes, compress_type=zipfile.ZIP_DEFLATED)
            for member, data in payloads.items():
                zf.writestr(_aligned_member(member, fh.tell(), len(data)), data)

    write_atomically(path, write)
    bundle.manifest = manifest
    return path


#: Array data starts on a 64-byte boundary in the file, so that the loader can use the arrays
#: where it read them (np.save pads its .npy header to a multiple of 64 bytes, so aligning
#: a member's content aligns its data). The padding is a zip extra field with the id
#: zipalign (Android) uses for the same purpose; zip readers skip extra fields they do not
#: know, so older xbar releases read these bundles unchanged.
DATA_ALIGN = 64
_ALIGN_EXTRA = struct.Struct("<3H")  # header id, data size, alignment; zero padding follows
_ALIGN_EXTRA_ID = 0xD935


def _aligned_member(name: str, offset: int, size: int) -> zipfile.ZipInfo:
    """The ZipInfo writestr would make for `name`, with an extra field that puts its
    content, whose local header starts at `offset`, on a DATA_ALIGN boundary."""
    info = zipfile.ZipInfo(name, date_time=time.localtime(time.time())[:6])
    info.compress_type = zipfile.ZIP_STORED
    info.external_attr = 0o600 << 16  # what writestr gives a file member
    # zipfile adds a 20-byte zip64 field after ours to a member it deems large (this test).
    zip64 = 20 if size * 1.05 > zipfile.ZIP64_LIMIT else 0
    used = offset + _LOCAL_HEADER.size + len(name.encode()) + _ALIGN_EXTRA.size + zip64
    pad = -used % DATA_ALIGN
    info.extra = _ALIGN_EXTRA.pack(_ALIGN_EXTRA_ID, 2 + pad, DATA_ALIGN) + bytes(pad)
    return info


def write_atomically(path: Path, write: Callable[[Any], None]) -> None:
    """Write a file through `write(fh)` into a temporary file beside `path`, then rename it
    over `path`: readers see the old file or the whole new one, and an error (or Ctrl-C)
    leaves nothing behind. The file gets the mode a plain open() would give it (0666 less
    the umask), not the temporary file's private 0600."""
    tmp = None
    try:
        # A short prefix: the temporary name must fit NAME_MAX even for a long output name.
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name[:64]}.", suffix=".tmp", dir=path.parent)
        with os.fdopen(fd, "wb") as fh:
            write(fh)
            fh.flush()
            os.fchmod(fh.fileno(), 0o666 & ~_umask())
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except OSError as exc:
        _remove(tmp)
        raise BundleError(f"could not write {path}: {exc.strerror or exc}; nothing was written "
                          "(free some disk space or choose another output path)") from None
    except BaseException:
        _remove(tmp)
        raise


def _umask() -> int:
    # Linux reports it without changing it; elsewhere it can only be read by setting it.
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


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
        why = str(exc) or ("it ends early" if isinstance(exc, EOFError) else type(exc).__name__)
        raise BundleError(f"{path}: member {info.filename} is corrupt ({why}); re-create the bundle "
                          "with `xbar convert`") from None


_LOCAL_HEADER = struct.Struct("<4s5H3L2H")  # zip local file header, 30 bytes
_NPY_PREFIX = 10  # magic (6), version (2), header length (2 in version 1.0)


def _member_content(image: np.ndarray, info: zipfile.ZipInfo, end: int) -> int | None:
    """Where `info`'s content starts in `image` (the file's bytes), from its local header;
    None unless that header is there and names the member (as zipfile demands on opening
    one) and the content ends by `end` (the next member's header): a crafted directory
    whose entries share or nest in one member's bytes then has each byte hashed once."""
    start = info.header_offset
    if start < 0 or start + _LOCAL_HEADER.size > end:
        return None
    fields = _LOCAL_HEADER.unpack_from(image, start)
    name_start = start + _LOCAL_HEADER.size
    start = name_start + fields[-2] + fields[-1]  # file name, extra field
    if fields[0] != b"PK\x03\x04" or start + info.file_size > end:
        return None
    try:
        name = image[name_start:name_start + fields[-2]].tobytes().decode("utf-8" if fields[2] & 0x800 else "cp437")
    except UnicodeDecodeError:
        return None
    return start if name == info.orig_filename else None


def _stored_npy_data(image: np.ndarray, start: int, info: zipfile.ZipInfo, shape: tuple[int, ...],
                     dtype: np.dtype) -> int | None:
    """Fast path for a stored (uncompressed) .npy member, content at `start` of `image`, of
    the plain layout save_bundle writes: where its array data starts, to be used in place.
    None for anything else (another .npy version, Fortran order, a header that disagrees
    with the manifest), which the general path then reads and judges."""
    prefix = image[start:start + _NPY_PREFIX].tobytes()
    if len(prefix) != _NPY_PREFIX or prefix[:8] != b"\x93NUMPY\x01\x00":
        return None
    hlen = int.from_bytes(prefix[8:10], "little")
    data = start + _NPY_PREFIX + hlen
    if data + math.prod(shape) * dtype.itemsize != start + info.file_size:
        return None
    header = image[start + _NPY_PREFIX:data].tobytes()
    if prefix + header != _npy_header(shape, dtype):
        # Not the header np.save writes for this shape and dtype: parse it (slower).
        import ast

        try:
            meta = ast.literal_eval(header.decode("latin1"))
            if (not isinstance(meta, dict) or meta.get("fortran_order") is not False
                    or tuple(meta.get("shape", ())) != shape or np.dtype(meta.get("descr")) != dtype):
                return None
        except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
            return None
    return data


def _read_and_hash(fd: int, image: np.ndarray, lo: int, hi: int,
                   members: list[tuple[zipfile.ZipInfo, int]]) -> list[tuple[int, str] | None]:
    """Read bytes [lo, hi) of the open file `fd` into the same bytes of `image`, then give
    each of `members` (info, where the next member's header starts; their local headers lie
    in [lo, hi)) as its content start and sha256; None for a member not held whole before
    that limit (see _member_content), or for all of them if the file ends early or cannot
    be read (the general path then reads and judges them). Positioned reads leave the
    descriptor's offset to zipfile, and read the very file zipfile opened (not whatever the
    path names by now); file reads and hashlib release the GIL."""
    view = memoryview(image)[lo:hi]
    got = 0
    try:
        while got < len(view):
            n = os.preadv(fd, [view[got:]], lo + got)
            if n <= 0:
                return [None] * len(members)
            got += n
    except OSError:
        return [None] * len(members)
    out: list[tuple[int, str] | None] = []
    for info, limit in members:
        start = _member_content(image, info, min(limit, hi))
        out.append(None if start is None else
                   (start, hashlib.sha256(image[start:start + info.file_size]).hexdigest()))
    return out


@functools.lru_cache(maxsize=1024)  # many members share a shape (per-layer vectors, tiles)
def _npy_header(shape: tuple[int, ...], dtype: np.dtype) -> bytes:
    """The version-1.0 .npy header np.save writes for a C-ordered array of this shape and
    dtype: comparing bytes spares parsing the header of every member with ast."""
    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(buf, {"descr": np.lib.format.dtype_to_descr(dtype),
                                               "fortran_order": False, "shape": shape})
    return buf.getvalue()


# Bytes of the archive read and hashed per hand-off to a worker thread.
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


def _data_aligned(fd: int, infos: list[zipfile.ZipInfo]) -> bool:
    """Whether the array data of the first few of `infos` starts on DATA_ALIGN boundaries of
    the file, read from their headers: false for bundles written before save_bundle padded
    them (and for most other zip tools' output)."""
    try:
        for info in infos[:3]:
            head = os.pread(fd, _LOCAL_HEADER.size, info.header_offset)
            fields = _LOCAL_HEADER.unpack(head)
            start = info.header_offset + _LOCAL_HEADER.size + fields[-2] + fields[-1]
            prefix = os.pread(fd, _NPY_PREFIX, start)
            if (len(prefix) != _NPY_PREFIX
                    or (start + _NPY_PREFIX + int.from_bytes(prefix[8:10], "little")) % DATA_ALIGN):
                return False
    except (OSError, struct.error, OverflowError, ValueError):
        return False
    return True


def _start_reading(zf: zipfile.ZipFile, pool: ThreadPoolExecutor
                   ) -> tuple[np.ndarray | None, list[tuple[list[str], Future]]]:
    """Read the archive into one buffer and hash its stored array members on `pool`, while
    the caller parses and checks the manifest: neither needs the other until the arrays
    are made. Returns the buffer and the pieces read, each as (names of the members in it,
    future of their _read_and_hash results).

    save_bundle puts every array's data on a 64-byte boundary of the file (_aligned_member),
    so in this buffer, itself 64-byte aligned, the arrays are used where they were read: one
    allocation for all of them instead of hundreds (each fresh 4 KiB page costs a fault on
    first touch, about half of loading a 50 MB bundle on a VM), and no second copy.

    No buffer (every member then goes the general path, through zipfile) where that does not
    hold: a bundle written before the padding (its arrays would need a second copy, twice the
    memory), an archive that is mostly not stored arrays (a tampered one padded with junk is
    not read whole into memory), or a system without positioned reads (Windows)."""
    infos = sorted(zf.infolist(), key=lambda info: info.header_offset)
    wanted = [info.compress_type == zipfile.ZIP_STORED and info.filename.startswith(ARRAYS_DIR) for info in infos]
    size = os.fstat(zf.fp.fileno()).st_size
    fd = zf.fp.fileno()
    if (not hasattr(os, "preadv") or not any(wanted)
            or size > 2 * sum(i.compress_size for i, w in zip(infos, wanted) if w) + (1 << 20)
            or not _data_aligned(fd, [i for i, w in zip(infos, wanted) if w])):
        return None, []
    try:
        raw = np.empty(size + DATA_ALIGN, dtype=np.uint8)
    except MemoryError:  # the general path holds one member at a time
        return None, []
    skip = -raw.ctypes.data % DATA_ALIGN
    image = raw[skip:skip + size]
    # Offsets come from the archive's directory, clipped to the file: a lying one reads
    # nothing, or less, and its members then fail their own checks on the general path. No
    # member's content may reach past the next one's header.
    starts = [min(max(info.header_offset, 0), size) for info in infos] + [size]
    # Pieces of at least _BATCH_BYTES (a large member is a piece of its own) that start and
    # end on members' local headers: hundreds of per-layer vectors do not cost a hand-off
    # each, and a piece is hashed right after it is read. The largest go first, so that no
    # thread is left with a large one at the end.
    pieces: list[tuple[int, int, list[tuple[zipfile.ZipInfo, int]]]] = []
    first = 0
    while first < len(infos):
        last = first + 1
        while last < len(infos) and starts[last] - starts[first] < _BATCH_BYTES:
            last += 1
        part = [(infos[i], starts[i + 1]) for i in range(first, last) if wanted[i]]
        pieces.append((starts[first], starts[last], part))
        first = last
    pieces.sort(key=lambda piece: piece[0] - piece[1])
    return image, [([info.filename for info, _ in part], pool.submit(_read_and_hash, fd, image, lo, hi, part))
                   for lo, hi, part in pieces]


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
    keep_freed_memory()  # before this loader's threads take malloc arenas of their own
    pool = ThreadPoolExecutor(max_workers=max(1, min(4, os.cpu_count() or 1)))
    try:
        image, batches = _start_reading(zf, pool)
        manifest = _checked_manifest(zf, path)
        return Bundle(manifest=manifest, arrays=_arrays(zf, path, manifest, image, batches))
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def _checked_manifest(zf: zipfile.ZipFile, path: Path) -> dict:
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
    return manifest


def _arrays(zf: zipfile.ZipFile, path: Path, manifest: dict, image: np.ndarray | None,
            batches: list[tuple[list[str], Future]]) -> dict[str, np.ndarray]:
    """The manifest's arrays: stored members as views of `image` where _start_reading
    hashed them, anything else through the general path, all checked against the manifest."""
    members = []  # every member's declared size is checked before any member is used
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
    hashed: dict[str, tuple[int, str] | None] = {}
    for names, batch in batches:
        hashed.update(zip(names, batch.result()))
    arrays: dict[str, np.ndarray] = {}
    in_image: list[str] = []
    in_place = True  # every array's data on a DATA_ALIGN boundary of the image
    # In the manifest's order, so that the first bad member is the one named.
    for key, sha256, shape, dtype, member, info in members:
        got = hashed.get(member) if info.compress_type == zipfile.ZIP_STORED else None
        if got is not None and got[1] != sha256:
            raise BundleError(f"{path}: checksum mismatch for {member}; the bundle is corrupt or was modified")
        data = None if got is None else _stored_npy_data(image, got[0], info, shape, dtype)
        if data is None:  # not hashed in the image, or declined by the fast path
            arrays[key] = _read_general_npy(zf, info, path, member, sha256, shape, dtype)
            continue
        nbytes = math.prod(shape) * dtype.itemsize
        if not nbytes:  # nothing to view (and a zero-size dtype such as S0 has no view at all)
            arrays[key] = np.empty(shape, dtype)
            continue
        arrays[key] = image[data:data + nbytes].view(dtype).reshape(shape)
        in_image.append(key)
        in_place &= data % DATA_ALIGN == 0
    if not in_place:
        # Unaligned data past the members _data_aligned looked at (another writer's archive):
        # the arrays are copied out, all of them, so that the image is freed rather than
        # held by the few that are aligned.
        for key in in_image:
            arrays[key] = arrays[key].copy()
    return arrays
