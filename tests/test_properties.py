"""Property tests (hypothesis): the parsers users type into and the bundle loader.

Generated valid inputs must parse to what they say; arbitrary or corrupted inputs must either
parse to something well-formed or raise the project's user error (ConfigError, BundleError),
never any other exception. derandomize=True: the same examples on every run, so CI is
reproducible; deadline=None: a slow CI machine is not a failure.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import HealthCheck, assume, example, given, settings
from hypothesis import strategies as st
from onnx import TensorProto, helper, numpy_helper

from xbar.bundle import load_bundle, save_bundle
from xbar.config import MAX_CROSSBAR_SIDE, parse_crossbar
from xbar.converter import convert
from xbar.errors import BundleError, ConfigError
from xbar.hardware import HardwareSpec, parse_assignment, preset
from xbar.units import MAX_SEEDS, TIME_UNITS, format_time, parse_seeds, parse_time

SETTINGS = settings(deadline=None, derandomize=True, max_examples=150,
                    suppress_health_check=[HealthCheck.too_slow])

# Text that often lands near the grammar of times, seeds, sizes and assignments, mixed with
# anything at all.
_NEAR = "0123456789 .,-+eExX×µμnsumhdwyinS=._'\"[]{}\t"
any_text = st.one_of(st.text(), st.text(alphabet=_NEAR, max_size=30))


# --------------------------------------------------------------------------------------------
# Times
# --------------------------------------------------------------------------------------------

number_text = st.from_regex(r"\A\+?(?:[0-9]{1,6}(?:\.[0-9]{0,4})?|\.[0-9]{1,4})(?:[eE][+-]?[0-9]{1,2})?\Z")
unit_text = st.sampled_from(sorted(TIME_UNITS)).flatmap(
    lambda u: st.just(u) if u in ("µs", "μs") else st.sampled_from([u, u.upper(), u.capitalize()]))
space = st.sampled_from(["", " ", "  ", "\t"])


@SETTINGS
@given(number=number_text, unit=st.one_of(st.none(), unit_text), gap=space, pad=space)
def test_parse_time_value_is_number_times_unit(number, unit, gap, pad):
    text = pad + number + (gap + unit if unit else "") + pad
    factor = TIME_UNITS[unit if unit in ("µs", "μs") else unit.lower()] if unit else 1.0
    assert parse_time(text) == float(number) * factor


# Up to 1e300 s: format_time of the very largest floats rounds up past the float range
# ('5.697e+300 y' for 1.8e308 s), which parse_time then rightly calls not finite.
@SETTINGS
@given(st.floats(min_value=0, max_value=1e300, allow_nan=False, allow_subnormal=False))
@example(0.0)
@example(31557600.0)
@example(0.99999999999 * 3600)
def test_format_time_round_trips_to_four_digits(x):
    back = parse_time(format_time(x))
    assert math.isclose(back, x, rel_tol=5.0001e-4, abs_tol=0.0), (x, format_time(x), back)


@SETTINGS
@given(any_text)
@example("1e999 s")
@example("-0")
@example("1 m")
@example("٣ s")
def test_parse_time_never_fails_unexpectedly(text):
    try:
        value = parse_time(text)
    except ConfigError:
        return
    assert isinstance(value, float) and math.isfinite(value) and value >= 0


# --------------------------------------------------------------------------------------------
# Seeds
# --------------------------------------------------------------------------------------------


@st.composite
def seed_lists(draw):
    """Comma-separated single seeds and ascending ranges that never overlap, in any order."""
    items, expected, start = [], [], 0
    for _ in range(draw(st.integers(1, 8))):
        lo = start + draw(st.integers(0, 1000))
        hi = lo + draw(st.integers(0, 40))
        items.append((f"{lo}-{hi}" if hi > lo or draw(st.booleans()) else f"{lo}", list(range(lo, hi + 1))))
        start = hi + 1
    items = draw(st.permutations(items))
    text = ",".join(draw(space) + item + draw(space) for item, _ in items)
    return text, [s for _, seeds in items for s in seeds]


@SETTINGS
@given(seed_lists())
def test_parse_seeds_round_trips(case):
    text, expected = case
    assert parse_seeds(text) == expected


@SETTINGS
@given(st.lists(st.integers(0, 10**9), min_size=1, max_size=20, unique=True))
def test_parse_seeds_plain_lists(seeds):
    assert parse_seeds(",".join(map(str, seeds))) == seeds


@SETTINGS
@given(any_text)
@example("0-99999999999")
@example("3,3")
@example("5-1")
def test_parse_seeds_never_fails_unexpectedly(text):
    try:
        seeds = parse_seeds(text)
    except ConfigError:
        return
    assert seeds and len(seeds) <= MAX_SEEDS and len(set(seeds)) == len(seeds)
    assert all(type(s) is int and s >= 0 for s in seeds)


# --------------------------------------------------------------------------------------------
# Crossbar sizes
# --------------------------------------------------------------------------------------------


@SETTINGS
@given(rows=st.integers(1, MAX_CROSSBAR_SIDE), cols=st.integers(1, MAX_CROSSBAR_SIDE),
       sep=st.sampled_from(["x", "X", "×"]), a=space, b=space, pad=space)
def test_parse_crossbar_accepts_every_separator(rows, cols, sep, a, b, pad):
    assert parse_crossbar(f"{pad}{rows}{a}{sep}{b}{cols}{pad}") == (rows, cols)


@SETTINGS
@given(any_text)
@example("128")
@example("0x0")
@example("9" * 5000 + "x1")
def test_parse_crossbar_never_fails_unexpectedly(text):
    try:
        rows, cols = parse_crossbar(text)
    except ConfigError:
        return
    assert type(rows) is int and type(cols) is int and rows >= 1 and cols >= 1


# --------------------------------------------------------------------------------------------
# Hardware overrides (--set KEY=VALUE)
# --------------------------------------------------------------------------------------------

PCM = preset("pcm")
_KEYS = ["adc.bits", "dac.bits", "adc.range", "adc.noise", "circuit.r_wire", "circuit.ir_drop", "device.r_on",
         "device.r_off", "device.g_max", "faults.p_stuck_at_gmin", "t_inference", "drift_compensation", "preset",
         "adc", "nope.bits", "adc.bits.x", ""]
_VALUES = ["6", "0", "17", "-1", "none", "off", "1e-6", "2.5", "nan", "inf", "-inf", "true", "\"1d\"", "1d",
           "[1]", "{bits=6}", "1979-05-27", "physical", "'x'", "1e400", "99999999999999999999", ""]
assignment_text = st.one_of(
    any_text,
    st.builds(lambda k, v, a, b: f"{k}{a}={b}{v}", st.sampled_from(_KEYS), st.sampled_from(_VALUES), space, space),
    st.builds(lambda k, v: f"{k}={v}", st.sampled_from(_KEYS), any_text),
)


def _override(text: str) -> HardwareSpec:
    return PCM.override(dict([parse_assignment(text)]))


@SETTINGS
@given(assignment_text)
@example("device.r_on=1e-320")
@example("device.r_off=inf")
@example("adc={bits=6}")
def test_override_from_text_never_fails_unexpectedly(text):
    try:
        spec = _override(text)
    except ConfigError:
        return
    assert isinstance(spec, HardwareSpec)


def _flat(d: dict, prefix: str = "") -> dict[str, object]:
    out: dict[str, object] = {}
    for key, value in d.items():
        out.update(_flat(value, f"{prefix}{key}.") if isinstance(value, dict) else {prefix + key: value})
    return out


def _changed(spec: HardwareSpec) -> dict[str, object]:
    """The dotted fields in which `spec` differs from the pcm preset."""
    new, old = _flat(spec.to_dict()), _flat(PCM.to_dict())
    return {k: v for k, v in new.items() if v != old[k]}


@SETTINGS
@given(st.integers(1, 16).filter(lambda n: n != PCM.adc.bits))
def test_override_adc_bits(n):
    assert _changed(_override(f"adc.bits={n}")) == {"adc.bits": n}


@SETTINGS
@given(st.floats(min_value=0, max_value=1e6, allow_nan=False).filter(lambda r: r != PCM.circuit.r_wire),
       st.booleans())
def test_override_r_wire(r, as_int):
    text = str(int(r)) if as_int and r.is_integer() else repr(r)
    assume(float(text) != PCM.circuit.r_wire)
    assert _changed(_override(f"circuit.r_wire = {text}")) == {"circuit.r_wire": float(text)}


@SETTINGS
@given(number=number_text, unit=unit_text, gap=space)
def test_override_t_inference_from_time_text(number, unit, gap):
    text = number + gap + unit
    try:
        expected = parse_time(text)
    except ConfigError:  # e.g. too large to be finite
        with pytest.raises(ConfigError, match="t_inference"):
            _override(f"t_inference={text}")
        return
    assume(expected != PCM.t_inference)
    assert _changed(_override(f"t_inference={text}")) == {"t_inference": expected}


# --------------------------------------------------------------------------------------------
# Corrupted bundles
# --------------------------------------------------------------------------------------------


def _tiny_model():
    """Gemm 4 -> 3 with a bias, then Relu: a bundle of a few KiB, so corruption hits every part."""
    rng = np.random.default_rng(0)
    w = numpy_helper.from_array(rng.normal(size=(3, 4)).astype(np.float32), "w")
    b = numpy_helper.from_array(rng.normal(size=3).astype(np.float32), "b")
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 3])
    nodes = [helper.make_node("Gemm", ["x", "w", "b"], ["h"], name="fc", transB=1),
             helper.make_node("Relu", ["h"], ["y"], name="relu")]
    graph = helper.make_graph(nodes, "tiny", [x], [y], initializer=[w, b])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


@pytest.fixture(scope="module")
def tiny_bundle(tmp_path_factory):
    path = tmp_path_factory.mktemp("tiny") / "tiny.xbar"
    save_bundle(convert(_tiny_model(), crossbar=(8, 8)), path)
    return path, path.read_bytes(), load_bundle(path)


@st.composite
def corruptions(draw, size: int):
    """A truncation, or 1-4 byte flips / overwrites / insertions / deletions."""
    if draw(st.integers(0, 4)) == 0:
        return [("truncate", draw(st.integers(0, size - 1)), b"")]
    edits = []
    for _ in range(draw(st.integers(1, 4))):
        kind = draw(st.sampled_from(["flip", "overwrite", "insert", "delete"]))
        edits.append((kind, draw(st.integers(0, size - 1)), draw(st.binary(min_size=1, max_size=8))))
    return edits


def _apply(data: bytes, edits) -> bytes:
    buf = bytearray(data)
    for kind, pos, payload in edits:
        pos = min(pos, max(len(buf) - 1, 0))
        if kind == "truncate":
            del buf[pos:]
        elif kind == "flip":
            buf[pos] ^= payload[0] or 0x01
        elif kind == "overwrite":
            buf[pos:pos + len(payload)] = payload
        elif kind == "insert":
            buf[pos:pos] = payload
        else:
            del buf[pos:pos + len(payload)]
    return bytes(buf)


@settings(deadline=None, derandomize=True, max_examples=300,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_corrupted_bundle_loads_identically_or_raises_bundle_error(tiny_bundle, data):
    path, original, good = tiny_bundle
    spoilt = _apply(original, data.draw(corruptions(len(original)), label="edits"))
    target = path.with_name("spoilt.xbar")
    target.write_bytes(spoilt)
    try:
        back = load_bundle(target)
    except BundleError as exc:
        assert str(target) in str(exc)
        return
    assert back.manifest == good.manifest
    assert set(back.arrays) == set(good.arrays)
    for key, arr in good.arrays.items():
        assert back.arrays[key].dtype == arr.dtype
        np.testing.assert_array_equal(back.arrays[key], arr)


def test_tiny_bundle_is_small_enough_to_hit_everything(tiny_bundle):
    path, original, good = tiny_bundle
    assert len(original) < 16_384 and b"manifest.json" in original


def test_absurdly_long_seed_is_a_config_error():
    import pytest

    from xbar.errors import ConfigError
    from xbar.units import parse_seeds

    with pytest.raises(ConfigError, match="too large"):
        parse_seeds("9" * 5000)
