"""The deployment bundle: one zip file holding a JSON manifest and `.npy` arrays.

The bundle is the only thing the converter hands to the runtime. Loading it never
unpickles, verifies every array against the checksum in the manifest and refuses
members whose names could escape the archive; writing it is atomic.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import tempfile
import zipfile
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np

from xbar import __version__
from xbar.errors import BundleError

FORMAT_NAME = "xbar-bundle"
FORMAT_VERSION = 1
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


def save_bundle(bundle: Bundle, path: str | os.PathLike, force: bool = False) -> Path:
    """Write `bundle` to `path` atomically; refuse to replace an existing file unless `force`."""
    path = Path(path)
    if path.exists() and not force:
        raise BundleError(f"{path} already exists; pass --force (force=True) to overwrite it")
    if path.is_dir():
        raise BundleError(f"{path} is a directory; give a file name ending in {SUFFIX}")
    if not path.parent.exists():
        raise BundleError(f"{path}: directory {path.parent} does not exist")
    manifest = dict(bundle.manifest)
    manifest["format"] = FORMAT_NAME
    manifest["format_version"] = FORMAT_VERSION
    manifest["xbar_version"] = __version__
    payloads: dict[str, bytes] = {}
    index: dict[str, Any] = {}
    for key in sorted(bundle.arrays):
        arr = np.asarray(bundle.arrays[key])
        if arr.dtype == object:
            raise BundleError(f"array {key!r} has dtype object, which cannot be stored without pickle")
        data = _npy_bytes(arr)
        member = _member_name(key)
        payloads[member] = data
        index[key] = {"member": member, "sha256": _sha256(data), "shape": list(arr.shape), "dtype": str(arr.dtype)}
    manifest["arrays"] = index
    manifest_bytes = json.dumps(manifest, indent=1, sort_keys=False).encode()
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
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
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    bundle.manifest = manifest
    return path


def load_bundle(path: str | os.PathLike) -> Bundle:
    """Read and verify a bundle written by `save_bundle`."""
    path = Path(path)
    if not path.exists():
        raise BundleError(f"{path}: no such bundle file")
    if path.is_dir():
        raise BundleError(f"{path} is a directory, not a {SUFFIX} bundle file")
    try:
        zf = zipfile.ZipFile(path)
    except zipfile.BadZipFile:
        raise BundleError(
            f"{path} is not a valid xbar bundle (not a zip archive, or truncated); "
            "re-create it with `xbar convert`"
        ) from None
    with zf:
        names = zf.namelist()
        for name in names:
            _check_member_path(name, path)
        if MANIFEST not in names:
            raise BundleError(f"{path} has no {MANIFEST}; it is not an xbar bundle")
        try:
            manifest = json.loads(zf.read(MANIFEST))
        except (json.JSONDecodeError, UnicodeDecodeError, zipfile.BadZipFile) as exc:
            raise BundleError(f"{path}: {MANIFEST} is unreadable ({exc})") from None
        if manifest.get("format") != FORMAT_NAME:
            raise BundleError(f"{path}: manifest format is {manifest.get('format')!r}, expected {FORMAT_NAME!r}")
        version = manifest.get("format_version")
        if version != FORMAT_VERSION:
            raise BundleError(
                f"{path}: bundle format version {version} is not supported by xbar {__version__} "
                f"(reads version {FORMAT_VERSION}); convert the model again with this xbar"
            )
        arrays: dict[str, np.ndarray] = {}
        for key, entry in manifest.get("arrays", {}).items():
            member = entry["member"]
            _check_member_path(member, path)
            try:
                data = zf.read(member)
            except KeyError:
                raise BundleError(f"{path}: array member {member} listed in the manifest is missing") from None
            except (zipfile.BadZipFile, OSError) as exc:
                raise BundleError(f"{path}: array member {member} is corrupt ({exc})") from None
            if _sha256(data) != entry["sha256"]:
                raise BundleError(
                    f"{path}: checksum mismatch for {member}; the bundle is corrupt or was modified"
                )
            try:
                arrays[key] = np.load(io.BytesIO(data), allow_pickle=False)
            except ValueError as exc:
                raise BundleError(f"{path}: array member {member} cannot be read without pickle ({exc})") from None
    return Bundle(manifest=manifest, arrays=arrays)


def check_output(path: str | os.PathLike, force: bool, inputs=()) -> Path:  # interim; replaced by the hardened one
    path = Path(path)
    if path.exists() and not force:
        raise BundleError(f"{path} already exists; pass --force to overwrite it")
    for i in inputs:
        if Path(i).exists() and path.resolve() == Path(i).resolve():
            raise BundleError(f"output {path} is the input {i}; choose another -o")
    return path
