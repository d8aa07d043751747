"""The bundle file: round trip, checksums, no pickle, no path escape, atomic and no clobbering."""

import io
import json
import re
import zipfile

import numpy as np
import pytest

from xbar.bundle import FORMAT_VERSION, Bundle, load_bundle, save_bundle
from xbar.converter import convert
from xbar.errors import BundleError


@pytest.fixture(scope="module")
def bundle(models_dir):
    return convert(models_dir / "cnn_bn.onnx")


def _member_bytes(path, member):
    with zipfile.ZipFile(path) as zf:
        return zf.read(member)


def _rewrite(src, dst, edit):
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w") as zout:
        for item in zin.infolist():
            data = edit(item.filename, zin.read(item.filename))
            if data is not None:
                zout.writestr(item.filename, data)


def test_roundtrip_is_exact(bundle, tmp_path):
    path = save_bundle(bundle, tmp_path / "a.xbar")
    back = load_bundle(path)
    assert back.manifest["format_version"] == 3  # 4 (FORMAT_VERSION) only with packed layers: tests/test_packed.py
    assert set(back.arrays) == set(bundle.arrays)
    for k, v in bundle.arrays.items():
        np.testing.assert_array_equal(back.arrays[k], v)
        assert back.arrays[k].dtype == v.dtype
    assert back.manifest["model"]["sha256"] == bundle.manifest["model"]["sha256"]


def test_no_overwrite_without_force(bundle, tmp_path):
    path = tmp_path / "a.xbar"
    path.write_bytes(b"precious")
    with pytest.raises(BundleError, match="already exists"):
        save_bundle(bundle, path)
    assert path.read_bytes() == b"precious"
    save_bundle(bundle, path, force=True)
    load_bundle(path)


@pytest.mark.parametrize("umask", [0o022, 0o077, 0o002])
def test_outputs_get_the_mode_the_umask_gives(bundle, tmp_path, umask):
    """Written through a private temporary file, a bundle or exported ONNX file still gets
    0666 less the umask, as any file the user creates; replacing one with force too."""
    import os
    import stat

    from xbar.converter.export import export_onnx

    old = os.umask(umask)
    try:
        paths = [save_bundle(bundle, tmp_path / "a.xbar"), export_onnx(bundle, tmp_path / "a.onnx")]
        for p in paths:
            assert stat.S_IMODE(os.stat(p).st_mode) == 0o666 & ~umask, p
        os.chmod(paths[0], 0o600)
        save_bundle(bundle, paths[0], force=True)
        assert stat.S_IMODE(os.stat(paths[0]).st_mode) == 0o666 & ~umask
    finally:
        os.umask(old)


def test_failed_write_leaves_nothing(tmp_path):
    bad = Bundle(manifest={"graph": {}, "layers": []}, arrays={"x": np.array([object()], dtype=object)})
    with pytest.raises(BundleError, match="pickle"):
        save_bundle(bad, tmp_path / "b.xbar")
    assert list(tmp_path.iterdir()) == []


def test_checksum_mismatch_is_detected(bundle, tmp_path):
    good = save_bundle(bundle, tmp_path / "a.xbar")
    key = next(k for k in bundle.arrays if k.endswith("/tiles"))
    member = f"arrays/{key}.npy"

    def flip(name, data):
        if name == member:
            arr = np.load(io.BytesIO(data))
            arr.flat[0] += 1e-6
            buf = io.BytesIO()
            np.save(buf, arr)
            return buf.getvalue()
        return data

    _rewrite(good, tmp_path / "t.xbar", flip)
    with pytest.raises(BundleError, match="checksum mismatch"):
        load_bundle(tmp_path / "t.xbar")


def test_checksum_mismatch_names_the_first_bad_member_in_manifest_order(bundle, tmp_path):
    """Members are read largest first on worker threads; the error still names the first
    corrupt member in the manifest's order, so the same bundle always gives the same message."""
    good = save_bundle(bundle, tmp_path / "a.xbar")
    order = [e["member"] for e in bundle.manifest["arrays"].values()]
    small = next(m for m in order if np.load(io.BytesIO(_member_bytes(good, m))).size == 1)
    large = max(order, key=lambda m: np.load(io.BytesIO(_member_bytes(good, m))).size)
    assert order.index(small) != order.index(large)
    first = min(small, large, key=order.index)

    def flip(name, data):  # the last bit of the array data: still a valid .npy member
        return data[:-1] + bytes([data[-1] ^ 1]) if name in (small, large) else data

    _rewrite(good, tmp_path / "t.xbar", flip)
    with pytest.raises(BundleError, match=f"checksum mismatch for {re.escape(first)};"):
        load_bundle(tmp_path / "t.xbar")


def test_pickled_member_is_refused(bundle, tmp_path):
    good = save_bundle(bundle, tmp_path / "a.xbar")
    key = next(iter(bundle.arrays))
    member = f"arrays/{key}.npy"
    buf = io.BytesIO()
    np.save(buf, np.array([{"a": 1}], dtype=object), allow_pickle=True)
    evil = buf.getvalue()

    def swap(name, data):
        if name == "manifest.json":
            m = json.loads(data)
            import hashlib
            m["arrays"][key]["sha256"] = hashlib.sha256(evil).hexdigest()
            return json.dumps(m).encode()
        return evil if name == member else data

    _rewrite(good, tmp_path / "p.xbar", swap)
    with pytest.raises(BundleError, match="without pickle"):
        load_bundle(tmp_path / "p.xbar")


def test_path_escape_is_refused(bundle, tmp_path):
    good = save_bundle(bundle, tmp_path / "a.xbar")
    with zipfile.ZipFile(good, "a") as zf:
        zf.writestr("../evil.npy", b"x")
    with pytest.raises(BundleError, match="outside the bundle"):
        load_bundle(good)


def test_wrong_version_and_garbage(bundle, tmp_path):
    good = save_bundle(bundle, tmp_path / "a.xbar")

    def bump(name, data):
        if name == "manifest.json":
            m = json.loads(data)
            m["format_version"] = FORMAT_VERSION + 1
            return json.dumps(m).encode()
        return data

    _rewrite(good, tmp_path / "v.xbar", bump)
    with pytest.raises(BundleError, match="format version"):
        load_bundle(tmp_path / "v.xbar")
    (tmp_path / "g.xbar").write_bytes(good.read_bytes()[:1000])
    with pytest.raises(BundleError, match="not a valid xbar bundle"):
        load_bundle(tmp_path / "g.xbar")
    with pytest.raises(BundleError, match="no such"):
        load_bundle(tmp_path / "missing.xbar")


def test_format_1_bundles_still_load_and_run(models_dir, test_data, tmp_path, monkeypatch):
    """A version-1 bundle stored column_order instead of the column map; it reads as that map."""
    import xbar.bundle as bundle_module
    from xbar.bundle import grid_conductance, load_bundle, save_bundle
    from xbar.converter import convert
    from xbar.runtime import Runtime

    x, _ = test_data
    b = convert(models_dir / "resnet_bn.onnx")
    want = Runtime(b)(x[:16])
    for i, layer in enumerate(b.layers):
        keys = layer["arrays"]
        grid = grid_conductance(b, layer)  # versions 1, 2 store the whole tile grid
        b.arrays.pop(keys.pop("tiles"))
        keys["conductance"] = f"layers/{i:03d}/conductance"
        b.arrays[keys["conductance"]] = grid
        keys["column_order"] = f"layers/{i:03d}/column_order"
        b.arrays[keys["column_order"]] = b.arrays.pop(keys.pop("position_output"))
        b.arrays.pop(keys.pop("position_gain"))
        del layer["tiles"]["positions"]
    monkeypatch.setattr(bundle_module, "FORMAT_VERSION", 1)
    save_bundle(b, tmp_path / "v1.xbar")
    monkeypatch.undo()
    old = load_bundle(tmp_path / "v1.xbar")
    assert old.manifest["format_version"] == 1
    np.testing.assert_array_equal(Runtime(old)(x[:16]), want)


def _depthwise_onnx(path):
    """A small depthwise-separable net: on 16x16 tiles the depthwise layer's grid is mostly
    unallocated tiles."""
    import torch
    import torch.nn as nn

    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 40, 3, padding=1), nn.ReLU(), nn.Conv2d(40, 40, 3, padding=1, groups=40),
                        nn.ReLU(), nn.Conv2d(40, 8, 1), nn.Flatten(), nn.Linear(8 * 6 * 6, 5)).eval()
    torch.onnx.export(net, (torch.zeros(1, 3, 6, 6),), str(path), dynamo=False, opset_version=17,
                      input_names=["x"], output_names=["y"], dynamic_axes={"x": {0: "b"}, "y": {0: "b"}})
    return path


def test_format_2_grid_bundles_still_load_and_give_the_same_chip(tmp_path, monkeypatch):
    """Format 3 stores only allocated tiles; a format-2 bundle (the whole grid) of the same
    conversion must load and run identically, ideal and on a sampled chip, and be larger."""
    import xbar.bundle as bundle_module
    from xbar.bundle import grid_conductance
    from xbar.converter import convert
    from xbar.hardware import preset
    from xbar.runtime import Runtime

    model = _depthwise_onnx(tmp_path / "dw.onnx")
    b = convert(model, crossbar=(16, 16))
    dw = b.layers[1]
    assert dw["tiles"]["tiles_used"] < dw["tiles"]["n_row_blocks"] * dw["tiles"]["n_col_blocks"] / 2
    save_bundle(b, tmp_path / "v3.xbar")
    for i, layer in enumerate(b.layers):
        keys = layer["arrays"]
        if layer["placement"] != "analog":
            continue
        grid = grid_conductance(b, layer)
        b.arrays.pop(keys.pop("tiles"))
        keys["conductance"] = f"layers/{i:03d}/conductance"
        b.arrays[keys["conductance"]] = grid
    monkeypatch.setattr(bundle_module, "FORMAT_VERSION", 2)
    save_bundle(b, tmp_path / "v2.xbar")
    monkeypatch.undo()
    v2, v3 = load_bundle(tmp_path / "v2.xbar"), load_bundle(tmp_path / "v3.xbar")
    assert (v2.manifest["format_version"], v3.manifest["format_version"]) == (2, 3)
    assert (tmp_path / "v3.xbar").stat().st_size < 0.6 * (tmp_path / "v2.xbar").stat().st_size
    x = np.random.default_rng(0).standard_normal((4, 3, 6, 6)).astype(np.float32)
    np.testing.assert_array_equal(Runtime(v2)(x), Runtime(v3)(x))
    spec = preset("pcm").override(t_inference=86400.0)
    np.testing.assert_array_equal(Runtime(v2, spec, seed=3)(x), Runtime(v3, spec, seed=3)(x))


def test_stored_tiles_must_match_tile_used(tmp_path):
    from xbar.converter import convert
    from xbar.runtime import Runtime

    b = convert(_depthwise_onnx(tmp_path / "dw.onnx"), crossbar=(16, 16))
    key = b.layers[1]["arrays"]["tile_used"]
    used = b.arrays[key].copy()
    used[np.nonzero(~used)[0][0], np.nonzero(~used)[1][0]] = True  # one more tile than stored
    b.arrays[key] = used
    with pytest.raises(BundleError, match="tiles stored but tile_used marks"):
        Runtime(b)


def test_fast_stored_member_path_reads_what_np_load_reads(bundle, tmp_path, monkeypatch):
    """Stored .npy members are read straight into their arrays; the result must equal the
    general zip-read + np.load path, array by array (values, dtype, shape, writeable)."""
    import xbar.bundle as bundle_module

    path = save_bundle(bundle, tmp_path / "a.xbar")
    calls = []
    real = bundle_module._stored_npy_data
    monkeypatch.setattr(bundle_module, "_stored_npy_data", lambda *a: calls.append(1) or real(*a))
    fast = load_bundle(path)
    assert len(calls) == len(fast.arrays)
    monkeypatch.setattr(bundle_module, "_stored_npy_data", lambda *a: None)
    general = load_bundle(path)
    for key, arr in general.arrays.items():
        got = fast.arrays[key]
        assert got.dtype == arr.dtype and got.shape == arr.shape and got.flags.writeable
        assert got.flags.c_contiguous and got.flags.aligned
        np.testing.assert_array_equal(got, arr)
    # The fast path's arrays are views of one buffer: each on its own cache line, none overlapping.
    spans = sorted((a.ctypes.data, a.nbytes) for a in fast.arrays.values() if a.nbytes)
    assert all(start % 64 == 0 for start, _ in spans)
    assert all(s0 + n0 <= s1 for (s0, n0), (s1, _) in zip(spans, spans[1:]))
    bases = {id(a.base if a.base is not None else a) for a in fast.arrays.values() if a.nbytes}
    assert len(bases) < len(spans)


def test_stored_member_with_an_unusual_header_is_parsed_and_checked(bundle, tmp_path):
    """The fast path compares a member's .npy header with the bytes np.save writes; a valid
    header written differently (keys reordered, other padding) is parsed instead and still
    read, and one that disagrees with the manifest's shape still falls back and is refused."""
    import hashlib
    import json

    good = save_bundle(bundle, tmp_path / "a.xbar")
    key = next(k for k in bundle.arrays if k.endswith("/tiles"))
    member = f"arrays/{key}.npy"
    arr = bundle.arrays[key]

    def header(shape):
        text = "{'shape': %r, 'fortran_order': False, 'descr': '%s', }" % (shape, arr.dtype.str)
        text += " " * (64 - (10 + len(text) + 1) % 64) + "\n"
        return b"\x93NUMPY\x01\x00" + len(text).to_bytes(2, "little") + text.encode("latin1")

    for shape, ok in ((tuple(arr.shape), True), ((arr.size,), False)):
        data = header(shape) + np.ascontiguousarray(arr).tobytes()

        def edit(name, raw):
            if name == member:
                return data
            if name == "manifest.json":
                m = json.loads(raw)
                m["arrays"][key]["sha256"] = hashlib.sha256(data).hexdigest()
                return json.dumps(m).encode()
            return raw

        out = tmp_path / f"h{ok}.xbar"
        _rewrite(good, out, edit)
        if ok:
            np.testing.assert_array_equal(load_bundle(out).arrays[key], arr)
        else:
            with pytest.raises(BundleError, match="shape"):
                load_bundle(out)


def _data_offsets(path):
    """Each array member's data offset in the file, read with the zip spec's local header
    layout (30 bytes; name and extra lengths at 26 and 28) and numpy's own header reader,
    and checked against what zipfile reads for the member."""
    import struct

    raw = path.read_bytes()
    offsets = {}
    with zipfile.ZipFile(path) as zf:
        for info in zf.infolist():
            if not info.filename.startswith("arrays/"):
                continue
            name_len, extra_len = struct.unpack_from("<HH", raw, info.header_offset + 26)
            start = info.header_offset + 30 + name_len + extra_len
            content = zf.read(info)
            assert raw[start:start + len(content)] == content
            fp = io.BytesIO(content)
            np.lib.format.read_magic(fp)
            np.lib.format.read_array_header_1_0(fp)
            offsets[info.filename] = start + fp.tell()
    return offsets


def test_saved_array_data_starts_on_64_byte_boundaries_and_loads_in_place(bundle, tmp_path):
    """save_bundle pads each member's local header so that its array data is 64-byte
    aligned in the file; the archive stays a plain zip (zipfile reads every member, CRCs
    included) and the loaded arrays are views of one buffer at those same offsets."""
    path = save_bundle(bundle, tmp_path / "a.xbar")
    offsets = _data_offsets(path)
    assert len(offsets) == len(bundle.arrays) and all(off % 64 == 0 for off in offsets.values())
    with zipfile.ZipFile(path) as zf:
        assert zf.testzip() is None
    back = load_bundle(path)
    # In memory the arrays lie as in the file: same distances apart, each 64-byte aligned.
    placed = {f"arrays/{key}.npy": arr.ctypes.data for key, arr in back.arrays.items() if arr.nbytes}
    first = min(placed, key=placed.get)
    assert all(addr % 64 == 0 for addr in placed.values())
    assert all(addr - placed[first] == offsets[m] - offsets[first] for m, addr in placed.items())
    for key, arr in bundle.arrays.items():
        np.testing.assert_array_equal(back.arrays[key], arr)


def test_unaligned_bundle_is_read_through_zipfile(bundle, tmp_path, monkeypatch):
    """A bundle whose array data is not aligned (written before the padding, or by any zip
    tool) loads equal through zipfile, member by member: using it in place would need a
    second copy of every array, twice the memory."""
    good = save_bundle(bundle, tmp_path / "a.xbar")
    plain = tmp_path / "plain.xbar"
    _rewrite(good, plain, lambda name, raw: raw)  # zipfile's writestr: no padding
    assert any(off % 64 for off in _data_offsets(plain).values())
    _loads_through_zipfile_only(plain, bundle, monkeypatch)


def test_unaligned_data_past_the_first_members_is_copied_out(bundle, tmp_path, monkeypatch):
    """Only the first members' alignment is looked at before reading; where a later one
    turns out unaligned, every array is copied out of the buffer (so that it is freed),
    each on aligned memory of its own, and equal."""
    import xbar.bundle as bundle_module

    plain = tmp_path / "plain.xbar"
    _rewrite(save_bundle(bundle, tmp_path / "a.xbar"), plain, lambda name, raw: raw)
    monkeypatch.setattr(bundle_module, "_data_aligned", lambda fd, infos: True)
    back = load_bundle(plain)
    for key, arr in bundle.arrays.items():
        got = back.arrays[key]
        np.testing.assert_array_equal(got, arr)
        assert got.dtype == arr.dtype and got.flags.aligned and got.flags.writeable
        assert got.base is None or got.nbytes == 0


def _loads_through_zipfile_only(path, bundle, monkeypatch):
    """`path` loads equal to `bundle` with every array read by the general path (zipfile)."""
    import xbar.bundle as bundle_module

    general = []
    real = bundle_module._read_general_npy
    monkeypatch.setattr(bundle_module, "_read_general_npy", lambda *a: general.append(1) or real(*a))
    back = load_bundle(path)
    assert len(general) == len(bundle.arrays)
    for key, arr in bundle.arrays.items():
        np.testing.assert_array_equal(back.arrays[key], arr)


def test_archive_mostly_not_arrays_is_not_read_whole(bundle, tmp_path, monkeypatch):
    """An archive padded with junk far beyond its members (here 3 MB prepended, which
    zipfile accepts) is not read into memory whole: every member goes the general path,
    and still loads equal."""
    good = save_bundle(bundle, tmp_path / "a.xbar")
    padded = tmp_path / "padded.xbar"
    padded.write_bytes(bytes(3 << 20) + good.read_bytes())
    _loads_through_zipfile_only(padded, bundle, monkeypatch)


def test_failed_reads_fall_back_to_the_general_path(bundle, tmp_path, monkeypatch):
    """If the worker threads cannot read the file (an I/O error, or it ends early), every
    array is read and checked through zipfile instead; nothing is lost or half-read."""
    import xbar.bundle as bundle_module

    def failing(*a, **k):
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(bundle_module.os, "preadv", failing)
    _loads_through_zipfile_only(save_bundle(bundle, tmp_path / "a.xbar"), bundle, monkeypatch)


def test_no_positioned_reads_means_zipfile(bundle, tmp_path, monkeypatch):
    """Where the system has no os.preadv (Windows), bundles load through zipfile."""
    import xbar.bundle as bundle_module

    monkeypatch.delattr(bundle_module.os, "preadv")
    _loads_through_zipfile_only(save_bundle(bundle, tmp_path / "a.xbar"), bundle, monkeypatch)


def test_directory_entries_sharing_a_member_are_not_hashed_again(bundle, tmp_path, monkeypatch):
    """Extra directory entries that all point at the largest member's bytes (names of their
    own, so zipfile itself never opens them) are not hashed again and again: every byte of
    the file is hashed at most once, and the bundle still loads equal."""
    import hashlib
    import struct

    import xbar.bundle as bundle_module

    path = save_bundle(bundle, tmp_path / "a.xbar")
    decoys = [f"arrays/decoy{k}.npy" for k in range(8)]
    with zipfile.ZipFile(path, "a") as zf:
        for name in decoys:
            zf.writestr(name, b"x")
        target = max(zf.infolist(), key=lambda info: info.file_size)
    raw = bytearray(path.read_bytes())
    pos = raw.find(b"PK\x01\x02")
    while pos != -1:  # central directory records: sizes at 20, name length at 28, offset at 42
        n, e, c = struct.unpack_from("<3H", raw, pos + 28)
        if raw[pos + 46:pos + 46 + n].decode() in decoys:
            struct.pack_into("<2L", raw, pos + 20, target.compress_size, target.file_size)
            struct.pack_into("<L", raw, pos + 42, target.header_offset)
        pos = raw.find(b"PK\x01\x02", pos + 46 + n + e + c)
    path.write_bytes(raw)
    hashed = []

    class Counting:
        @staticmethod
        def sha256(data=b""):
            hashed.append(memoryview(data).nbytes)
            return hashlib.sha256(data)

    monkeypatch.setattr(bundle_module, "hashlib", Counting)
    back = load_bundle(path)
    assert sum(hashed) <= len(raw), (sum(hashed), len(raw))
    for key, arr in bundle.arrays.items():
        np.testing.assert_array_equal(back.arrays[key], arr)


def test_alignment_holds_where_zipfile_adds_zip64_fields(bundle, tmp_path, monkeypatch):
    """zipfile adds a zip64 field to the local header of a member it deems large, after the
    padding; _aligned_member allows for it by zipfile's own rule. With the limit lowered so
    that the larger members get it, every array's data is still 64-byte aligned."""
    monkeypatch.setattr(zipfile, "ZIP64_LIMIT", 3000)
    path = save_bundle(bundle, tmp_path / "a.xbar")
    with zipfile.ZipFile(path) as zf:
        assert any(info.file_size * 1.05 > 3000 for info in zf.infolist())
    assert all(off % 64 == 0 for off in _data_offsets(path).values())
    back = load_bundle(path)
    for key, arr in bundle.arrays.items():
        np.testing.assert_array_equal(back.arrays[key], arr)


def test_non_ascii_array_names_are_read_in_place(bundle, tmp_path, monkeypatch):
    """zipfile marks a non-ASCII member name as UTF-8 (flag bit 11); the fast path decodes
    the local header's name by that flag, so such a member is used in place like any other."""
    import xbar.bundle as bundle_module

    b = Bundle(manifest=dict(bundle.manifest), arrays=dict(bundle.arrays))
    b.arrays["größe/ü"] = np.arange(6, dtype=np.float32).reshape(2, 3)
    path = save_bundle(b, tmp_path / "a.xbar")
    general = []
    real = bundle_module._read_general_npy
    monkeypatch.setattr(bundle_module, "_read_general_npy", lambda *a: general.append(a[3]) or real(*a))
    back = load_bundle(path)
    assert general == []
    np.testing.assert_array_equal(back.arrays["größe/ü"], b.arrays["größe/ü"])
