"""Chip preparation streamed over row blocks and restricted to allocated tiles
(xbar.runtime.chip.build_tiles) against the exact whole-layer reference it replaced
(tests/_chip_reference.py): the same seed must give the same chip, bit for bit."""

import numpy as np
import pytest

from _chip_reference import reference_build_tiles
from xbar.config import MappingConfig
from xbar.converter.mapping import map_weights
from xbar.hardware import preset
from xbar.runtime import chip
from xbar.runtime.chip import build_tiles


def _grouped(rng, groups=6, k_group=9, encoding="differential"):
    """A depthwise-like block-diagonal layer: most tiles of the grid are never allocated."""
    k, n = groups * k_group, groups * 2
    structure = np.zeros((k, n), dtype=bool)
    for g in range(groups):
        structure[g * k_group:(g + 1) * k_group, g * 2:(g + 1) * 2] = True
    w = rng.normal(size=(k, n)) * structure
    cols = 8 if encoding == "differential" else 5
    cfg = MappingConfig(rows=16, cols=cols, encoding=encoding)
    return map_weights(w, cfg, structure), cfg, k, n


SPECS = {
    "pcm": {},
    "frozen": {"device.read_noise_mode": "frozen"},
    "column comp": {"drift_compensation": "column"},
    "faults": {"faults.p_stuck_at_gmin": 0.02, "faults.p_stuck_at_gmax": 0.01},
    "no ir drop": {"circuit.ir_drop": False},
    "rram": None,
}


@pytest.mark.parametrize("name", list(SPECS))
@pytest.mark.parametrize("encoding", ["differential", "offset"])
@pytest.mark.parametrize("chunk,solver", [(1, "exact"), (1 << 22, "exact"), (1 << 22, "iterative")])
def test_streamed_chip_equals_the_whole_layer_reference(name, encoding, chunk, solver, monkeypatch):
    """Bit for bit with the exact probe solve; with the iterative one (the default) the
    compensation factors agree to the solver's bound (node voltages within 1e-12)."""
    monkeypatch.setattr(chip, "CHUNK_CELLS", chunk)  # 1: one row block at a time
    monkeypatch.setattr(chip, "PROBE_SOLVER", solver)
    rng = np.random.default_rng(3)
    m, cfg, k, n = _grouped(rng, encoding=encoding)
    assert not m.tile_used.all() and m.tile_used.any()
    spec = preset("rram") if SPECS[name] is None else preset("pcm").override({"t_inference": 86400.0, **SPECS[name]})
    for seed in (0, 1):
        chip._PROBE_CACHE.clear()
        new = build_tiles(m.conductance, m.tile_used, cfg.to_dict(), spec, np.random.default_rng(seed), k, n)
        ref = reference_build_tiles(m.conductance, m.tile_used, cfg.to_dict(), spec, np.random.default_rng(seed),
                                    k, n)
        np.testing.assert_array_equal(new.d, ref.d)
        np.testing.assert_array_equal(new.i_max, ref.i_max)
        for field in ("var", "ref_var"):
            a, b = getattr(new, field), getattr(ref, field)
            assert (a is None) == (b is None)
            if a is not None:
                np.testing.assert_array_equal(a, b)
        # The compensation factor of allocated tiles is the reference's; an unallocated
        # tile (no ADC, outputs exactly 0) gets 1 instead of a factor of devices nobody reads.
        live = np.repeat(m.tile_used, m.table["weight_cols_per_tile"], axis=1)[:, :n]
        if solver == "exact":
            np.testing.assert_array_equal(new.comp[live], ref.comp[live])
        else:
            # The reference probes with the chip's own solve: in float32 (the pcm and rram
            # presets), whose column currents are exact to ~1e-5 (xbar.runtime.irdrop).
            rtol = 1e-7 if spec.circuit.solve_dtype == "float64" else 1e-5
            np.testing.assert_allclose(new.comp[live], ref.comp[live], rtol=rtol, atol=0)
        assert np.all(new.comp[~live] == 1)


def test_dense_layer_with_row_placement_is_bit_identical(monkeypatch):
    monkeypatch.setattr(chip, "CHUNK_CELLS", 1)
    monkeypatch.setattr(chip, "PROBE_SOLVER", "exact")
    rng = np.random.default_rng(5)
    w = rng.normal(size=(40, 20))
    cfg = MappingConfig(rows=16, cols=16, rearrange_rows="ir-drop")
    spec = preset("pcm").override(t_inference=3600.0)
    m = map_weights(w, cfg, circuit=spec.circuit)
    new = build_tiles(m.conductance, m.tile_used, cfg.to_dict(), spec, np.random.default_rng(2), 40, 20, m.row_order)
    ref = reference_build_tiles(m.conductance, m.tile_used, cfg.to_dict(), spec, np.random.default_rng(2), 40, 20,
                                m.row_order)
    for field in ("d", "var", "comp", "i_max"):
        np.testing.assert_array_equal(getattr(new, field), getattr(ref, field))


@pytest.mark.parametrize("rows,cols,r_wire,r_driver,r_sense,g_max", [
    (128, 128, 1.0, 0.0, 0.0, 25e-6), (64, 64, 1.0, 0.0, 0.0, 100e-6), (16, 12, 2.0, 5.0, 3.0, 25e-6),
    (1, 5, 1.0, 0.0, 0.0, 25e-6), (7, 1, 1.0, 2.0, 0.0, 25e-6), (32, 32, 10.0, 0.0, 0.0, 25e-6)])
def test_iterative_probe_currents_match_the_exact_solve(rows, cols, r_wire, r_driver, r_sense, g_max):
    from xbar.runtime.irdrop import effective_conductance
    from xbar.runtime.irdrop_probe import probe_currents

    rng = np.random.default_rng(rows * cols)
    g = rng.uniform(0, g_max, size=(6, rows, cols))
    v = (rng.uniform(size=(6, rows)) < 0.8).astype(float)
    exact = np.einsum("trc,tr->tc", effective_conductance(g, r_wire, r_driver, r_sense), v)
    got = probe_currents(g, v, r_wire, r_driver, r_sense)
    assert got is not None
    np.testing.assert_allclose(got, exact, rtol=0, atol=1e-10 * np.abs(exact).max())


def test_iterative_probe_declines_what_it_cannot_bound():
    from xbar.runtime.irdrop_probe import probe_currents

    g = np.full((1, 8, 8), 25e-6)
    assert probe_currents(g, np.ones((1, 8)), 0.0, 0.0, 0.0) is None  # shorted wires: exact path
    assert probe_currents(g, np.ones((1, 8)), 1.0, 0.0, 0.0, max_sweeps=1) is None


@pytest.mark.parametrize("name", ["pcm", "frozen", "faults", "rram"])
def test_a_layer_sampled_in_parts_is_the_reference_bit_for_bit(name, monkeypatch):
    """A layer too big to be built beside others is sampled in parts of one probe group
    each, taken by whichever worker is free (chip.sample_parts). With groups of 2 tiles and
    two workers, every layer here is cut, and must still be the whole-layer reference, bit
    for bit, whichever worker ran which part."""
    from xbar.runtime import parallel

    monkeypatch.setattr(chip, "PROBE_SOLVER", "exact")
    monkeypatch.setattr(chip, "PROBE_TILES", 2)
    monkeypatch.setattr(parallel, "MAX_WORKERS", 2)
    cut = []
    stack = chip.sample_stack
    monkeypatch.setattr(chip, "sample_stack", lambda stored, *a: cut.append(len(stored)) or stack(stored, *a))
    rng = np.random.default_rng(4)
    m, cfg, k, n = _grouped(rng, groups=9)
    spec = preset("rram") if SPECS[name] is None else preset("pcm").override({"t_inference": 86400.0, **SPECS[name]})
    chip._PROBE_CACHE.clear()
    new = build_tiles(m.conductance, m.tile_used, cfg.to_dict(), spec, np.random.default_rng(0), k, n)
    used = int(m.tile_used.sum())
    # Groups of 2, every tile once (the parts may finish in any order; all but the last are whole).
    assert sorted(cut, reverse=True) == [2] * (used // 2) + [1] * (used % 2) and used > 2, cut
    ref = reference_build_tiles(m.conductance, m.tile_used, cfg.to_dict(), spec, np.random.default_rng(0), k, n)
    for field in ("d", "var", "ref_var", "i_max"):
        a, b = getattr(new, field), getattr(ref, field)
        assert (a is None) == (b is None), field
        if a is not None:
            np.testing.assert_array_equal(a, b, err_msg=field)
    live = np.repeat(m.tile_used, m.table["weight_cols_per_tile"], axis=1)[:, :n]  # as above: allocated tiles
    np.testing.assert_array_equal(new.comp[live], ref.comp[live])


def test_parts_keep_the_iterative_probe_groups(monkeypatch):
    """The iterative probe stops when its whole group of PROBE_TILES tiles has converged, so
    parts start on group boundaries: the same currents as one call, bit for bit; and a part
    whose cells all read without noise (here: no programming noise, conductance 0) gets zero
    variance beside the others' rather than none."""
    from xbar.hardware import ablate
    from xbar.runtime import parallel

    monkeypatch.setattr(chip, "PROBE_TILES", 2)
    monkeypatch.setattr(parallel, "MAX_WORKERS", 2)
    rng = np.random.default_rng(6)
    t, r, c = 7, 16, 8
    cfg = MappingConfig(rows=r, cols=c).to_dict()
    stored = rng.uniform(cfg["g_min"], cfg["g_max"], (t, r, c))
    stored[4:] = cfg["g_min"]  # the last two parts (tiles 4-6): nothing programmed, G = 0
    rows = np.ones((t, r), dtype=bool)
    quiet = ablate(preset("pcm"), only="read,drift,ir-drop").override(t_inference=3600.0)
    for spec in (preset("pcm").override(t_inference=3600.0), quiet):
        draws = chip.draws_of(spec, np.random.default_rng(1))((t, r, c))
        circuit = chip.circuit_of(spec)
        chip._PROBE_CACHE.clear()
        one = chip.sample_stack(stored, list(draws), rows, cfg, spec, circuit, True)
        chip._PROBE_CACHE.clear()
        parts = chip.sample_parts(stored, list(draws), rows, cfg, spec, circuit, True)
        for field in ("w", "s2", "before", "after"):
            np.testing.assert_array_equal(getattr(parts, field), getattr(one, field), err_msg=field)
    # The quiet chip's tiles 4-6 on their own read without noise: s2 None there.
    part = chip.sample_stack(stored[4:], [None if a is None else a[4:] for a in draws], rows[4:], cfg, quiet,
                             circuit, True)
    assert part.s2 is None and one.s2 is not None and not one.s2[4:].any()


def _loader_threads():
    import threading

    return [t for t in threading.enumerate() if t.name == "xbar-load-code"]


def test_circuit_code_loads_once_per_shape_on_its_own_thread(monkeypatch):
    """chip.load_circuit_code starts one thread per process and tile shape when IR drop is
    on (none without it); a failure there is left for the chip's own first solve to report,
    the key dropped so that a later chip tries again, and nothing escapes the thread."""
    import threading

    from xbar.hardware import ablate
    from xbar.runtime import irdrop

    escaped = []
    monkeypatch.setattr(threading, "excepthook", lambda a: escaped.append(a))
    spec = preset("pcm")
    shape = (24, 40)  # a shape no other test loads
    key = shape + (spec.circuit.solve_dtype,)
    monkeypatch.setattr(chip, "_LOADING", set())
    chip.load_circuit_code(ablate(spec, without="ir-drop"), *shape)
    assert chip._LOADING == set() and not _loader_threads()

    def fail(*a):
        raise RuntimeError("no compiler here")

    with monkeypatch.context() as m:
        m.setattr(irdrop, "load_compiled", fail)
        chip.load_circuit_code(spec, *shape)
        for t in _loader_threads():
            t.join()
    assert key not in chip._LOADING and not escaped

    calls = []
    real = irdrop.load_compiled
    monkeypatch.setattr(irdrop, "load_compiled", lambda *a: calls.append(a) or real(*a))
    chip.load_circuit_code(spec, *shape)
    chip.load_circuit_code(spec, *shape)  # already loading or loaded: no second thread
    for t in _loader_threads():
        t.join()
    assert calls == [shape + (spec.circuit.solve_dtype,)] and key in chip._LOADING and not escaped
