"""Misuse through the real command line, in a subprocess: every bad input must give a clear
one-paragraph error naming the culprit, a non-zero exit status and no traceback, and must
lose nothing: no output file left behind, no input file changed.

Each case builds its files in the test's own directory (the subprocess's cwd, so paths and
needles are short relative names) and returns the command line and the text the error must
contain. The whole directory tree is hashed before and after the run.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import subprocess
import sys
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from xbar.bundle import save_bundle
from xbar.converter import convert

ROOT = Path(__file__).resolve().parent.parent
MODEL = ROOT / "models" / "cnn_bn.onnx"
TEST_DATA = ROOT / "models" / "digits_test.npz"
TIMEOUT = 120  # s per command; a hang is a failure, not a stuck CI job


# --------------------------------------------------------------------------------------------
# Running the CLI and checking that nothing was lost
# --------------------------------------------------------------------------------------------


def _run(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.upper().startswith("XBAR")}
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    return subprocess.run([sys.executable, "-m", "xbar.cli", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=TIMEOUT)


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _snapshot(root: Path) -> dict[str, str]:
    """Every entry under `root` (nothing ignored): a file's sha256, or what else it is."""
    out = {}
    for p in sorted(root.rglob("*")):
        rel = str(p.relative_to(root))
        if p.is_symlink():
            out[rel] = "symlink -> " + os.readlink(p)
        elif p.is_dir():
            out[rel] = f"dir {p.stat().st_mode & 0o777:o}"
        else:
            out[rel] = _sha256(p)
    return out


# --------------------------------------------------------------------------------------------
# Shared, valid ingredients (built once per module)
# --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def valid_bundle(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("valid") / "valid.xbar"
    save_bundle(convert(MODEL), path)
    return path


@pytest.fixture(scope="module")
def samples() -> tuple[np.ndarray, np.ndarray]:
    with np.load(TEST_DATA) as d:
        return d["x"][:20].copy(), d["y"][:20].copy()  # x: (20, 1, 16, 16) float32, y: int64


@dataclass
class Kit:
    """What a case builder gets: its directory and the valid ingredients to spoil."""

    dir: Path
    bundle_src: Path
    x: np.ndarray
    y: np.ndarray

    def bundle(self, name: str = "b.xbar") -> str:
        shutil.copyfile(self.bundle_src, self.dir / name)
        return name

    def model(self, name: str = "m.onnx") -> str:
        shutil.copyfile(MODEL, self.dir / name)
        return name

    def data(self, name: str = "d.npz", **arrays: np.ndarray) -> str:
        np.savez(self.dir / name, **(arrays or {"x": self.x, "y": self.y}))
        return name

    def write(self, name: str, data: bytes) -> str:
        (self.dir / name).write_bytes(data)
        return name

    def rewrite_bundle(self, name: str, edit: Callable[[str, bytes], bytes | None],
                       extra: dict[str, bytes] | None = None) -> str:
        """A copy of the valid bundle with members passed through `edit` (None drops one)."""
        with zipfile.ZipFile(self.bundle_src) as zin, zipfile.ZipFile(self.dir / name, "w") as zout:
            for info in zin.infolist():
                data = edit(info.filename, zin.read(info))
                if data is not None:
                    zout.writestr(info.filename, data)
            for member, data in (extra or {}).items():
                zout.writestr(member, data)
        return name

    def edit_manifest(self, name: str, change: Callable[[dict], object]) -> str:
        """A copy of the valid bundle whose manifest `change` edited in place."""

        def edit(member: str, data: bytes) -> bytes:
            if member != "manifest.json":
                return data
            m = json.loads(data)
            change(m)
            return json.dumps(m).encode()

        return self.rewrite_bundle(name, edit)

    def manifest(self) -> dict:
        with zipfile.ZipFile(self.bundle_src) as zf:
            return json.loads(zf.read("manifest.json"))


@pytest.fixture()
def kit(tmp_path, valid_bundle, samples) -> Kit:
    return Kit(tmp_path, valid_bundle, *samples)


# --------------------------------------------------------------------------------------------
# The cases: id -> builder(kit) returning (argv, needles)
# --------------------------------------------------------------------------------------------

Case = tuple[list[str], tuple[str, ...]]
CASES: list = []


def case(case_id: str, *marks):
    def register(build: Callable[[Kit], Case]) -> Callable[[Kit], Case]:
        CASES.append(pytest.param(build, id=case_id, marks=marks))
        return build

    return register


# ---- ONNX models (convert) ----------------------------------------------------------------


@case("onnx-truncated")
def _(k: Kit) -> Case:
    data = MODEL.read_bytes()
    return ["convert", k.write("trunc.onnx", data[: len(data) // 3]), "-o", "out.xbar"], ("trunc.onnx", "ONNX")


@case("onnx-garbage")
def _(k: Kit) -> Case:
    junk = np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes()
    return ["convert", k.write("garbage.onnx", junk)], ("garbage.onnx",)  # default output garbage.xbar


@case("onnx-empty")
def _(k: Kit) -> Case:
    return ["convert", k.write("empty.onnx", b""), "-o", "out.xbar"], ("empty.onnx",)


@case("onnx-directory")
def _(k: Kit) -> Case:
    (k.dir / "dir.onnx").mkdir()
    return ["convert", "dir.onnx", "-o", "out.xbar"], ("dir.onnx", "directory")


@case("onnx-missing")
def _(k: Kit) -> Case:
    return ["convert", "missing.onnx", "-o", "out.xbar"], ("missing.onnx",)


@case("onnx-short-weight")
def _(k: Kit) -> Case:
    # A weight large enough that the checker and shape inference see only its shape
    # (converter/load.py::skeleton): its data is checked by xbar itself.
    w = numpy_helper.from_array(np.ones((300, 300), np.float32), "big_w")
    w.raw_data = w.raw_data[:100000]
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 300])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 300])
    graph = helper.make_graph([helper.make_node("MatMul", ["x", "big_w"], ["y"])], "g", [x], [y], [w])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(k.dir / "w.onnx"))
    return ["convert", "w.onnx", "-o", "out.xbar"], ("w.onnx", "big_w", "[300, 300]", "checker")


@case("onnx-unsupported-op")
def _(k: Kit) -> Case:
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4])
    node = helper.make_node("Hardmax", ["x"], ["y"], name="odd_node")
    m = helper.make_model(helper.make_graph([node], "g", [x], [y]), opset_imports=[helper.make_opsetid("", 17)])
    onnx.save(m, str(k.dir / "h.onnx"))
    return ["convert", "h.onnx", "-o", "out.xbar"], ("h.onnx", "odd_node", "Hardmax")


@case("onnx-several-unsupported-ops")
def _(k: Kit) -> Case:
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4])
    nodes = [helper.make_node("Hardmax", [f"h{i}"], [f"h{i + 1}"], name=f"hm{i}") for i in range(4)]
    nodes[0].input[0] = "x"
    nodes += [helper.make_node("Softsign", ["h4"], ["s"], name="fine"), helper.make_node("Det", ["s"], ["y"], name="odd_det")]
    m = helper.make_model(helper.make_graph(nodes, "g", [x], [y]), opset_imports=[helper.make_opsetid("", 17)])
    onnx.save(m, str(k.dir / "h.onnx"))
    return ["convert", "h.onnx", "-o", "out.xbar"], ("h.onnx", "opset 17", "'Hardmax' (4 nodes: 'hm0', 'hm1', 'hm2', ...)",
                                                    "'Det' (1 node: 'odd_det')", "xbar ops")


@case("onnx-crossbar-single-number")
def _(k: Kit) -> Case:
    return ["convert", k.model(), "-o", "out.xbar", "--crossbar", "128"], ("'128x128'",)


# ---- Bundles (info and eval) ----------------------------------------------------------------


# A float32 array of 64 KiB, shape (1, 128, 128): the first layer's (allocated) tile conductances.
CONDUCTANCE = "layers/000/tiles"


def _bundle_truncated(k: Kit):
    return k.write("trunc.xbar", k.bundle_src.read_bytes()[: k.bundle_src.stat().st_size // 2]), ("trunc.xbar",)


def _bundle_garbage(k: Kit):
    junk = np.random.default_rng(1).integers(0, 256, 4096, dtype=np.uint8).tobytes()
    return k.write("garbage.xbar", junk), ("garbage.xbar", "not a valid xbar bundle")


def _bundle_empty(k: Kit):
    return k.write("empty.xbar", b""), ("empty.xbar",)


def _bundle_no_manifest(k: Kit):
    return k.rewrite_bundle("nomanifest.xbar", lambda n, d: None if n == "manifest.json" else d), \
        ("nomanifest.xbar", "manifest.json")


def _bundle_zip_slip(k: Kit):
    return k.rewrite_bundle("slip.xbar", lambda n, d: d, extra={"../evil.npy": b"x"}), ("slip.xbar", "../evil.npy")


def _bundle_oversized(k: Kit):
    """A member that inflates to 64 MiB where the manifest expects a few hundred bytes."""
    key = CONDUCTANCE
    member = f"arrays/{key}.npy"
    k.rewrite_bundle("bomb.xbar", lambda n, d: None if n == member else d)
    with zipfile.ZipFile(k.dir / "bomb.xbar", "a", compression=zipfile.ZIP_DEFLATED) as zf:
        with zf.open(member, "w") as fh:
            chunk = bytes(1 << 20)
            for _ in range(64):
                fh.write(chunk)
    return "bomb.xbar", ("bomb.xbar", member, "67,108,864 bytes")


def _bundle_pickled(k: Kit):
    """An object array (pickle inside) of about the right size, with a matching checksum."""
    m = k.manifest()
    key = CONDUCTANCE
    nbytes = int(np.prod(m["arrays"][key]["shape"])) * 4
    buf = io.BytesIO()
    np.save(buf, np.array([b"\0" * (nbytes - 100)], dtype=object), allow_pickle=True)
    evil = buf.getvalue()
    member = f"arrays/{key}.npy"

    def edit(name: str, data: bytes) -> bytes:
        if name == "manifest.json":
            man = json.loads(data)
            man["arrays"][key]["sha256"] = hashlib.sha256(evil).hexdigest()
            return json.dumps(man).encode()
        return evil if name == member else data

    return k.rewrite_bundle("pickled.xbar", edit), ("pickled.xbar", member, "pickle")


def _bundle_checksum(k: Kit):
    key = CONDUCTANCE
    member = f"arrays/{key}.npy"

    def flip(name: str, data: bytes) -> bytes:
        return data[:-1] + bytes([data[-1] ^ 0x40]) if name == member else data

    return k.rewrite_bundle("flipped.xbar", flip), ("flipped.xbar", member, "checksum mismatch")


def _bundle_future_version(k: Kit):
    return k.edit_manifest("future.xbar", lambda m: m.update(format_version=99)), ("future.xbar", "version 99")


def _bundle_manifest_list(k: Kit):
    listed = json.dumps([k.manifest()]).encode()
    name = k.rewrite_bundle("list.xbar", lambda n, d: listed if n == "manifest.json" else d)
    return name, ("list.xbar", "manifest.json", "not an object")


def _bundle_manifest_missing_layers(k: Kit):
    return k.edit_manifest("nolayers.xbar", lambda m: m.pop("layers")), ("nolayers.xbar", "manifest.layers")


def _bundle_manifest_wrong_type(k: Kit):
    def change(m):
        m["graph"]["nodes"][0]["inputs"] = "input"

    return k.edit_manifest("wrongtype.xbar", change), ("wrongtype.xbar", "manifest.graph.nodes[0].inputs")


def _bundle_shape_inconsistent(k: Kit):
    """The manifest's conductance shape is transposed: same size, so it fails the layer check."""
    def change(m):
        m["arrays"][CONDUCTANCE]["shape"] = m["arrays"][CONDUCTANCE]["shape"][::-1]

    return k.edit_manifest("shape.xbar", change), ("shape.xbar", "manifest.layers[0]", "'tiles' has shape")


def _bundle_dtype_mismatch(k: Kit):
    """The manifest says float64 where the member holds int64: same size, matching checksum."""
    key = "layers/000/position_output"

    def change(m):
        assert m["arrays"][key]["dtype"] == "int64"
        m["arrays"][key]["dtype"] = "float64"

    return k.edit_manifest("dtype.xbar", change), ("dtype.xbar", f"arrays/{key}.npy", "dtype float64")


def _bundle_node_reads_nothing(k: Kit):
    def change(m):
        m["graph"]["nodes"][1]["inputs"] = ["ghost"]

    return k.edit_manifest("ghost.xbar", change), ("ghost.xbar", "manifest.graph.nodes[1]", "'ghost'")


def _bundle_duplicate_member(k: Kit):
    def edit(name, data):
        return data

    name = k.rewrite_bundle("dup.xbar", edit)
    with pytest.warns(UserWarning, match="Duplicate name"):
        with zipfile.ZipFile(k.dir / name, "a") as zf:
            zf.writestr("manifest.json", b"{}")
    return name, ("dup.xbar", "more than once")


def _bundle_bzip2(k: Kit):
    with zipfile.ZipFile(k.bundle_src) as zin, zipfile.ZipFile(k.dir / "bz.xbar", "w", zipfile.ZIP_BZIP2) as zout:
        for info in zin.infolist():
            zout.writestr(info.filename, zin.read(info))
    return "bz.xbar", ("bz.xbar", "compression method 12")


def _bundle_dangling_array(k: Kit):
    def change(m):
        m["layers"][0]["arrays"]["tiles"] = "nowhere"

    return k.edit_manifest("dangling.xbar", change), ("dangling.xbar", "'nowhere'")


def _bundle_bad_info_fields(k: Kit):
    """Fields only `info` reads, edited to the wrong types: refused on load like the rest."""
    def change(m):
        m["layers"][0]["time_steps"] = 12

    return k.edit_manifest("infofields.xbar", change), ("infofields.xbar", "manifest.layers[0].time_steps")


def _bundle_bad_dim_names(k: Kit):
    def change(m):
        m["layers"][0]["output_dim_names"] = [5, None, None, None]

    return k.edit_manifest("dimnames.xbar", change), ("dimnames.xbar", "output_dim_names holds [5")


def _bundle_bad_time_major(k: Kit):
    def change(m):
        m["batch"]["time_major"] = {"nodes": ["rec"], "inputs": "x", "outputs": {}}

    return k.edit_manifest("timemajor.xbar", change), ("timemajor.xbar", "manifest.batch.time_major.inputs")


def _bundle_directory(k: Kit):
    (k.dir / "dir.xbar").mkdir()
    return "dir.xbar", ("dir.xbar", "directory")


BUNDLE_CASES = {
    "truncated": _bundle_truncated, "garbage": _bundle_garbage, "empty": _bundle_empty,
    "no-manifest": _bundle_no_manifest, "zip-slip": _bundle_zip_slip, "oversized-member": _bundle_oversized,
    "pickled-array": _bundle_pickled, "checksum-mismatch": _bundle_checksum,
    "future-format-version": _bundle_future_version, "manifest-is-list": _bundle_manifest_list,
    "manifest-missing-layers": _bundle_manifest_missing_layers, "manifest-wrong-type": _bundle_manifest_wrong_type,
    "shape-inconsistent": _bundle_shape_inconsistent, "dtype-mismatch": _bundle_dtype_mismatch,
    "node-reads-unknown-tensor": _bundle_node_reads_nothing, "duplicate-member": _bundle_duplicate_member,
    "bzip2-members": _bundle_bzip2, "dangling-array-ref": _bundle_dangling_array, "directory": _bundle_directory,
    "bad-info-fields": _bundle_bad_info_fields, "bad-time-major": _bundle_bad_time_major,
    "bad-dim-names": _bundle_bad_dim_names,
}

for _name, _spoil in BUNDLE_CASES.items():
    def _info(k: Kit, spoil=_spoil) -> Case:
        name, needles = spoil(k)
        return ["info", name], needles

    def _eval(k: Kit, spoil=_spoil) -> Case:
        name, needles = spoil(k)
        return ["eval", name, "--data", k.data()], needles

    case(f"info-bundle-{_name}")(_info)
    case(f"eval-bundle-{_name}")(_eval)


# ---- Data (.npz for eval --data and calibrate --data) -------------------------------------------


def _data_nan(k: Kit):
    x = k.x.copy()
    x[3, 0, 2, 2] = np.nan
    return k.data("nan.npz", x=x, y=k.y), ("nan.npz", "NaN")


def _data_wrong_shape(k: Kit):
    return k.data("flat.npz", x=k.x.reshape(len(k.x), -1), y=k.y), ("flat.npz", "(20, 256)", "(N, 1, 16, 16)")


def _data_missing_x(k: Kit):
    return k.data("nox.npz", inputs=k.x, y=k.y), ("nox.npz", "no array 'x'")


def _data_pickled(k: Kit):
    np.savez(k.dir / "pickled.npz", x=np.array([{"a": 1}] * 20, dtype=object), y=k.y)
    return "pickled.npz", ("pickled.npz", "pickle")


def _data_short_y(k: Kit):
    return k.data("shorty.npz", x=k.x, y=k.y[:-3]), ("shorty.npz", "y has shape [17]")


def _data_float_y(k: Kit):
    return k.data("floaty.npz", x=k.x, y=k.y.astype(np.float32)), ("floaty.npz", "y has dtype float32")


def _data_not_zip(k: Kit):
    return k.write("notzip.npz", b"x,y\n1,2\n"), ("notzip.npz", "not an .npz")


def _data_beyond_float32(k: Kit):
    # float64 values that the model's float32 input would read as inf (then NaN outputs)
    return k.data("huge.npz", x=k.x.astype(np.float64) * 1e300, y=k.y), ("huge.npz", "beyond", "float32", "±inf")


def _data_complex(k: Kit):
    return k.data("complex.npz", x=k.x + 1j * k.x, y=k.y), ("complex.npz", "complex numbers")


def _data_scalar(k: Kit):
    return k.data("scalar.npz", x=np.float32(1.0)), ("scalar.npz", "single number")


DATA_CASES = {
    "nan-in-x": _data_nan, "x-wrong-shape": _data_wrong_shape, "missing-x": _data_missing_x,
    "pickled-x": _data_pickled, "y-wrong-length": _data_short_y, "float-y": _data_float_y,
    "not-a-zip": _data_not_zip, "x-beyond-float32": _data_beyond_float32, "complex-x": _data_complex,
    "scalar-x": _data_scalar,
}

for _name, _spoil in DATA_CASES.items():
    def _eval(k: Kit, spoil=_spoil) -> Case:
        name, needles = spoil(k)
        return ["eval", k.bundle(), "--data", name], needles

    def _calibrate(k: Kit, spoil=_spoil) -> Case:
        name, needles = spoil(k)
        return ["calibrate", "--drift", "1d", "--hardware", "pcm", k.bundle(), "--data", name, "-o", "cal.xbar"], needles

    case(f"eval-data-{_name}")(_eval)
    case(f"calibrate-data-{_name}")(_calibrate)


@case("calibrate-data-too-few-samples")
def _(k: Kit) -> Case:
    name = k.data("few.npz", x=k.x[:15], y=k.y[:15])
    return (["calibrate", "--drift", "1d", "--hardware", "pcm", k.bundle(), "--data", name, "-o", "cal.xbar"],
            ("few.npz", "15 samples", "at least 16"))


# ---- Outputs (convert -o, calibrate -o) -------------------------------------------------------


@case("convert-output-exists")
def _(k: Kit) -> Case:
    k.write("out.xbar", b"precious")  # the snapshot proves these bytes survive
    return ["convert", k.model(), "-o", "out.xbar"], ("out.xbar", "already exists", "--force")


@case("calibrate-output-exists")
def _(k: Kit) -> Case:
    k.write("cal.xbar", b"precious")
    return ["calibrate", "--drift", "1d", k.bundle(), "--data", k.data(), "-o", "cal.xbar"], ("cal.xbar", "already exists")


def _external(k: Kit, keep: int | None) -> str:
    """The model saved with its weights in 'w.bin' beside it, cut to `keep` bytes (None: removed)."""
    m = onnx.load(str(MODEL))
    onnx.save(m, str(k.dir / "ext.onnx"), save_as_external_data=True, location="w.bin", size_threshold=0)
    if keep is None:
        (k.dir / "w.bin").unlink()
    else:
        (k.dir / "w.bin").write_bytes((k.dir / "w.bin").read_bytes()[:keep])
    return "ext.onnx"


@case("convert-external-data-missing")
def _(k: Kit) -> Case:
    return ["convert", _external(k, None), "-o", "e.xbar"], ("ext.onnx", "external data", "w.bin")


@case("convert-external-data-truncated")
def _(k: Kit) -> Case:
    return ["convert", _external(k, 100), "-o", "e.xbar"], ("ext.onnx", "external data", "complete")


@case("convert-output-is-input-model")
def _(k: Kit) -> Case:
    return ["convert", k.model(), "-o", "m.onnx", "--force"], ("m.onnx", "input")


@case("convert-output-is-directory")
def _(k: Kit) -> Case:
    (k.dir / "outdir").mkdir()
    return ["convert", k.model(), "-o", "outdir"], ("outdir", "directory")


@case("convert-output-is-calib-data")
def _(k: Kit) -> Case:
    data = k.data()
    return ["convert", k.model(), "--calib-data", data, "-o", data, "--force"], ("d.npz", "input")


@case("calibrate-output-is-input-bundle")
def _(k: Kit) -> Case:
    name = k.bundle()
    return ["calibrate", "--drift", "1d", name, "--data", k.data(), "-o", name, "--force"], ("b.xbar", "input")


@case("calibrate-output-is-data")
def _(k: Kit) -> Case:
    data = k.data()
    return ["calibrate", "--drift", "1d", k.bundle(), "--data", data, "-o", data, "--force"], ("d.npz", "input")


@case("convert-parent-is-a-file")
def _(k: Kit) -> Case:
    k.write("plain.txt", b"not a directory")
    return ["convert", k.model(), "-o", "plain.txt/out.xbar"], ("plain.txt", "not a directory")


@case("calibrate-parent-is-a-file")
def _(k: Kit) -> Case:
    k.write("plain.txt", b"not a directory")
    return ["calibrate", "--drift", "1d", k.bundle(), "--data", k.data(), "-o", "plain.txt/cal.xbar"], ("plain.txt", "not a directory")


@case("convert-parent-missing")
def _(k: Kit) -> Case:
    return ["convert", k.model(), "-o", "nodir/out.xbar"], ("nodir", "does not exist")


@case("calibrate-parent-missing")
def _(k: Kit) -> Case:
    return ["calibrate", "--drift", "1d", k.bundle(), "--data", k.data(), "-o", "nodir/cal.xbar"], ("nodir", "does not exist")


ROOT_SKIP = pytest.mark.skipif(hasattr(os, "geteuid") and os.geteuid() == 0,
                               reason="root writes through permission bits; the read-only /proc cases cover root")


@case("convert-parent-unwritable", ROOT_SKIP)
def _(k: Kit) -> Case:
    (k.dir / "ro").mkdir(mode=0o555)
    return ["convert", k.model(), "-o", "ro/out.xbar"], ("ro", "not writable")


@case("calibrate-parent-unwritable", ROOT_SKIP)
def _(k: Kit) -> Case:
    (k.dir / "ro").mkdir(mode=0o555)
    return ["calibrate", "--drift", "1d", k.bundle(), "--data", k.data(), "-o", "ro/cal.xbar"], ("ro", "not writable")


@case("convert-output-under-proc")
def _(k: Kit) -> Case:
    return ["convert", k.model(), "-o", "/proc/xbar-test.xbar"], ("/proc", "not writable")


@case("calibrate-output-under-proc")
def _(k: Kit) -> Case:
    return ["calibrate", "--drift", "1d", k.bundle(), "--data", k.data(), "-o", "/proc/xbar-test.xbar"], ("/proc", "not writable")


# The output is checked before any work: with both a bad output and bad data, the output is
# what the error names (today the data is read first and its error wins).


@case("convert-output-checked-before-work")
def _(k: Kit) -> Case:
    return (["convert", k.model(), "--calib-data", k.write("junk.npz", b"junk"), "-o", "/proc/xbar-test.xbar"],
            ("/proc/xbar-test.xbar", "not writable"))


@case("calibrate-output-checked-before-work")
def _(k: Kit) -> Case:
    return (["calibrate", "--drift", "1d", k.bundle(), "--data", k.write("junk.npz", b"junk"), "-o", "nodir/cal.xbar"],
            ("nodir", "does not exist"))


# ---- Silent wrong results and contradictions, refused ------------------------------------------


def _spoiled_model(k: Kit, name: str, change: Callable[[onnx.ModelProto], None]) -> str:
    m = onnx.load(str(MODEL))
    change(m)
    onnx.save(m, str(k.dir / name))
    return name


def _first_weight(value: float) -> Callable[[onnx.ModelProto], None]:
    def change(m: onnx.ModelProto) -> None:
        init = next(i for i in m.graph.initializer if len(i.dims) == 4)
        a = numpy_helper.to_array(init).copy()
        a.flat[1] = value
        init.CopyFrom(numpy_helper.from_array(a, init.name))
    return change


@case("onnx-nan-weight")
def _(k: Kit) -> Case:
    return ["convert", _spoiled_model(k, "nan.onnx", _first_weight(np.nan)), "-o", "out.xbar"], ("nan.onnx", "NaN", "Conv")


@case("onnx-inf-weight")
def _(k: Kit) -> Case:
    return ["convert", _spoiled_model(k, "inf.onnx", _first_weight(-np.inf)), "-o", "out.xbar"], ("inf.onnx", "-Inf")


@case("onnx-opset-from-the-future")
def _(k: Kit) -> Case:
    def change(m: onnx.ModelProto) -> None:
        for imp in m.opset_import:
            imp.version = 99
    return ["convert", _spoiled_model(k, "future.onnx", change), "-o", "out.xbar"], ("future.onnx", "opset 99")


@case("eval-labels-out-of-range")
def _(k: Kit) -> Case:
    y = k.y.copy()
    y[:2] = [10, -3]
    return ["eval", k.bundle(), "--data", k.data(x=k.x, y=y)], ("d.npz", "-3, 10", "0 to 9")


@case("calibrate-labels-out-of-range")
def _(k: Kit) -> Case:
    y = k.y.copy()
    y[0] = 42
    return (["calibrate", "--drift", "1d", k.bundle(), "--data", k.data(x=k.x, y=y), "--hardware", "pcm",
             "-o", "cal.xbar"], ("d.npz", "42"))


@case("eval-reference-of-another-shape")
def _(k: Kit) -> Case:
    x = helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 3, 32, 32])
    y = helper.make_tensor_value_info("out", TensorProto.FLOAT, ["N", 3, 32, 32])
    m = helper.make_model(helper.make_graph([helper.make_node("Relu", ["input"], ["out"])], "g", [x], [y]),
                          opset_imports=[helper.make_opsetid("", 17)])
    onnx.save(m, str(k.dir / "other.onnx"))
    return (["eval", k.bundle(), "--data", k.data(), "--reference", "other.onnx"],
            ("other.onnx", "(20, 1, 16, 16)", "N, 3, 32, 32"))


@case("eval-hardware-binary-file")
def _(k: Kit) -> Case:
    return ["eval", k.bundle(), "--data", k.data(), "--hardware", k.data("hw.npz")], ("hw.npz", "not a text file")


@case("eval-ablation-leaves-nothing")
def _(k: Kit) -> Case:
    return (["eval", k.bundle(), "--data", k.data(), "--hardware", "pcm", "--only", "adc", "--without", "adc"],
            ("leaves no non-ideality",))


@case("eval-ablation-on-ideal-hardware")
def _(k: Kit) -> Case:
    return (["eval", k.bundle(), "--data", k.data(), "--only", "drift"],
            ("--only drift: the hardware is ideal", "--hardware"))


@case("calibrate-several-times")
def _(k: Kit) -> Case:
    return (["calibrate", k.bundle(), "--data", k.data(), "--hardware", "pcm", "--drift", "1d,1y", "-o", "c.xbar"],
            ("'1d,1y' is a list", "one time"))


@case("eval-chip-options-on-ideal-hardware")
def _(k: Kit) -> Case:
    return ["eval", k.bundle(), "--data", k.data(), "--seeds", "0-3"], ("b.xbar", "ideal hardware", "--hardware")


@case("calibrate-without-drift")
def _(k: Kit) -> Case:
    return ["calibrate", k.bundle(), "--data", k.data(), "--hardware", "pcm", "-o", "cal.xbar"], ("--drift",)


@case("calibrate-on-ideal-hardware")
def _(k: Kit) -> Case:
    return ["calibrate", "--drift", "1d", k.bundle(), "--data", k.data(), "-o", "cal.xbar"], ("b.xbar", "ideal")


@case("convert-afp-with-bit-slices")
def _(k: Kit) -> Case:
    return (["convert", k.model(), "-o", "out.xbar", "--afp-exponents", "2", "--bit-slices", "2", "--bits-per-cell", "4"],
            ("--afp-exponents", "--bit-slices", "cannot combine"))


@case("convert-rearrange-without-circuit")
def _(k: Kit) -> Case:
    return ["convert", k.model(), "-o", "out.xbar", "--rearrange-columns", "ir-drop"], ("--rearrange-columns ir-drop",)


@case("convert-slices-too-wide")
def _(k: Kit) -> Case:
    return (["convert", k.model(), "-o", "out.xbar", "--bit-slices", "4", "--bits-per-cell", "5"],
            ("--bit-slices 4 --bits-per-cell 5",))


# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("build", CASES)
def test_misuse_is_a_clean_error_and_loses_nothing(build, kit):
    argv, needles = build(kit)
    shipped = {p: _sha256(p) for p in (MODEL, TEST_DATA, kit.bundle_src)}
    before = _snapshot(kit.dir)
    try:
        r = _run(argv, kit.dir)
        after = _snapshot(kit.dir)
    finally:
        for p in kit.dir.rglob("*"):  # let pytest clean up a read-only directory
            if p.is_dir() and not p.stat().st_mode & 0o200:
                p.chmod(0o755)
    text = r.stdout + r.stderr
    assert r.returncode != 0, f"xbar {' '.join(argv)} succeeded:\n{text}"
    assert "Traceback" not in text, text
    assert "Error" in r.stderr, text
    for needle in needles:
        assert needle in text, f"{needle!r} not in the message:\n{text}"
    assert after == before, "files were created, removed or changed"
    assert {p: _sha256(p) for p in shipped} == shipped
