"""check_output and the hardened save/load paths of xbar.bundle, through the Python API."""

from __future__ import annotations

import errno
import json
import os
import re
import zipfile

import numpy as np
import pytest

import xbar.bundle as bundle_mod
from xbar.bundle import check_output, load_bundle, save_bundle
from xbar.converter import convert
from xbar.errors import BundleError


@pytest.fixture(scope="module")
def bundle(models_dir):
    return convert(models_dir / "cnn_bn.onnx")


@pytest.fixture(scope="module")
def saved(bundle, tmp_path_factory):
    return save_bundle(bundle, tmp_path_factory.mktemp("saved") / "good.xbar")


def _error(match, fn, *args, **kwargs) -> str:
    with pytest.raises(BundleError, match=match) as info:
        fn(*args, **kwargs)
    return str(info.value)


# ---- check_output -------------------------------------------------------------------------


def test_check_output_accepts_a_new_file_and_leaves_nothing(tmp_path):
    assert check_output(tmp_path / "new.xbar", force=False) == tmp_path / "new.xbar"
    assert list(tmp_path.iterdir()) == []


def test_check_output_existing_file_needs_force(tmp_path):
    out = tmp_path / "out.xbar"
    out.write_bytes(b"keep")
    assert str(out) in _error("already exists; pass --force", check_output, out, False)
    assert check_output(out, True) == out
    assert out.read_bytes() == b"keep"


def test_check_output_names_the_option_that_gave_the_path(tmp_path):
    """The fix names the option the path came from: -o, or finetune's --export-onnx."""
    src = tmp_path / "data.npz"
    src.write_bytes(b"data")
    assert "(--export-onnx)" in _error("destroy the input", check_output, src, True, [src], "--export-onnx")
    assert "(-o)" in _error("does not exist", check_output, tmp_path / "no" / "m.xbar", False)


def test_check_output_refuses_directories_and_special_files(tmp_path):
    _error("is a directory", check_output, tmp_path, True)
    _error("not a regular file", check_output, "/dev/null", True)


def test_check_output_refuses_an_input_even_with_force(tmp_path):
    src = tmp_path / "model.onnx"
    src.write_bytes(b"model")
    link = tmp_path / "link.xbar"
    link.symlink_to(src)
    hard = tmp_path / "hard.xbar"
    os.link(src, hard)
    for out in (src, link, hard, tmp_path / "sub" / ".." / "model.onnx"):
        (tmp_path / "sub").mkdir(exist_ok=True)
        assert "model.onnx" in _error("is the input", check_output, out, True, inputs=[src, tmp_path / "other"])


def test_check_output_parent_problems(tmp_path):
    (tmp_path / "file").write_bytes(b"")
    assert str(tmp_path / "missing") in _error("does not exist", check_output, tmp_path / "missing" / "o.xbar", False)
    _error("is not a directory", check_output, tmp_path / "file" / "o.xbar", False)
    _error("not writable", check_output, "/proc/o.xbar", False)
    _error("cannot write", check_output, tmp_path / ("x" * 300 + ".xbar"), False)


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes through permission bits (the /proc case covers root)")
def test_check_output_unwritable_directory(tmp_path):
    ro = tmp_path / "ro"
    ro.mkdir(mode=0o555)
    try:
        _error("not writable", check_output, ro / "o.xbar", False)
    finally:
        ro.chmod(0o755)


# ---- save_bundle --------------------------------------------------------------------------


def test_save_bundle_checks_the_output(bundle, tmp_path):
    _error("does not exist", save_bundle, bundle, tmp_path / "missing" / "o.xbar")
    _error("not writable", save_bundle, bundle, "/proc/o.xbar")


def test_a_failed_write_is_a_bundle_error_and_leaves_nothing(bundle, tmp_path, monkeypatch):
    out = tmp_path / "out.xbar"
    out.write_bytes(b"previous")

    def full(fd):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(bundle_mod.os, "fsync", full)
    message = _error("could not write", save_bundle, bundle, out, force=True)
    assert str(out) in message and "No space left on device" in message
    assert [p.name for p in tmp_path.iterdir()] == ["out.xbar"] and out.read_bytes() == b"previous"


def test_a_long_output_name_still_gets_a_temporary_file(bundle, tmp_path):
    out = tmp_path / ("n" * 240 + ".xbar")
    save_bundle(bundle, out)
    assert [p.name for p in tmp_path.iterdir()] == [out.name]


# ---- load_bundle --------------------------------------------------------------------------


def _rewrite(src, dst, edit):
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w") as zout:
        for item in zin.infolist():
            zout.writestr(item.filename, edit(item.filename, zin.read(item.filename)))
    return dst


def test_manifest_over_the_size_cap_is_not_read(saved, monkeypatch):
    monkeypatch.setattr(bundle_mod, "MAX_MANIFEST_BYTES", 1000)
    assert "manifest.json" in _error("at most", load_bundle, saved)


def test_undersized_member_is_refused_before_reading(saved, tmp_path):
    key = "layers/000/tiles"

    def shrink(name, data):
        if name == f"arrays/{key}.npy":
            return data[:200]
        return data

    message = _error("declares 200 bytes", load_bundle, _rewrite(saved, tmp_path / "small.xbar", shrink))
    assert "65,536 bytes" in message


def test_a_fifo_is_not_opened(tmp_path):
    fifo = tmp_path / "pipe.xbar"
    os.mkfifo(fifo)
    _error("not a regular file", load_bundle, fifo)  # would block forever if opened


@pytest.mark.parametrize("edit, match", [
    (lambda m: m.update(arrays=[]), "manifest.arrays should be an object, found an array"),
    (lambda m: m["mapping"].update(rows=True), "manifest.mapping.rows should be an integer, found true"),
    # paths through arrays and free-key objects, and a missing key, are named in full
    (lambda m: m["layers"][0]["affine"].update(eps="1e-5"),
     re.escape("manifest.layers[0].affine.eps should be an integer or a number, found a string")),
    (lambda m: m["arrays"]["layers/000/beta"].update(shape=[2, "3"]),
     re.escape("manifest.arrays['layers/000/beta'].shape[1] should be an integer, found a string")),
    (lambda m: m["graph"]["nodes"][1].pop("attrs"), re.escape("manifest.graph.nodes[1].attrs is missing")),
    (lambda m: m["mapping"].update(encoding="zigzag"), "manifest.mapping is invalid"),
    (lambda m: m["layers"][0].update(placement="cloud"), "placement 'cloud'"),
    (lambda m: m["layers"][0].update(N=0), "N = 0"),
    (lambda m: m["layers"][0]["params"].update(strides=[0, 1]), "stride"),
    (lambda m: m["graph"]["nodes"][0]["attrs"].update(layer=99), "refers to layer 99"),
    (lambda m: m["graph"]["outputs"][0].update(name="nowhere"), "'nowhere', which no node produces"),
    (lambda m: m["graph"]["inputs"][0].update(dtype="object"), "dtype 'object'"),
    (lambda m: m.update(hardware={"adc": {"bits": 99}}), "manifest.hardware is not a valid hardware"),
    (lambda m: m["arrays"]["layers/000/beta"].update(dtype="O"), "dtype 'O'"),
    (lambda m: m["arrays"]["layers/000/beta"].update(member="manifest.json"), "expected 'arrays/layers/000/beta.npy'"),
])
def test_manifest_structure_problems_name_the_field(saved, tmp_path, edit, match):
    def change(name, data):
        if name != "manifest.json":
            return data
        m = json.loads(data)
        edit(m)
        return json.dumps(m).encode()

    message = _error(match, load_bundle, _rewrite(saved, tmp_path / "edited.xbar", change))
    assert "edited.xbar" in message


def test_valid_bundles_still_round_trip(saved, bundle):
    back = load_bundle(saved)
    for key, arr in bundle.arrays.items():
        np.testing.assert_array_equal(back.arrays[key], arr)
