#!/usr/bin/env python
"""Chip (non-ideal) benchmark: full noise stack vs onnxruntime, chip preparation, IR-drop solve.

    python benchmarks/bench_chip.py [--quick] [--reps N] [--settle S] [--prep-runs N]
                                    [--profile-reps N] [--skip-prep]

Hardware for every section: preset('pcm') at t_inference = 1 d, i.e. PCM devices with
programming noise, drift (1 d after programming, global 'tile' drift compensation) and 1/f
read noise, 8-bit DAC (abs-max range per input vector), 8-bit ADC (99.99th percentile full
scale), IR drop on (r_wire = 1 ohm/segment, exact solve per tile), no faults; 128x128 tiles,
differential encoding. The spec's describe() is printed.

Measures, in one run, on the same machine:

a. Inference time of one chip instance, Runtime(bundle, spec, seed=0), divided by
   onnxruntime's, on the ResNet-20-shaped CIFAR model of bench_ideal.py (random weights, BN
   kept) at batch 128, AFTER chip preparation: the runtime is constructed once (programming,
   drift, IR drop all happen there) and only rt(x) is timed. Ranges (DAC/ADC full scales)
   come from find_ranges on 256 random inputs first. The ideal xbar runtime, Runtime(bundle),
   runs in the same interleaved loop for reference. Target <= 2x. Engines are warmed up,
   then timed in interleaved repetitions (the order rotates every round) with --settle
   seconds of idle time after every call (see bench_ideal.py: spinning OpenBLAS threads
   otherwise slow the next engine). Reported: medians, ratio of medians, ratio of minima.
   Then a short profile of the chip call on one worker thread: where the time goes (DAC,
   signal GEMM, read-noise GEMM + sampling, ADC, ...), from an instrumented copy of
   xbar.runtime.analog.tiled_product whose output is checked to be bit-identical to the real
   one on the same noise stream.
b. Chip preparation time, Runtime(bundle, spec, seed=0) - programming, drift, faults, exact
   IR drop of every tile (twice per tile with drift compensation on: the compensation probe
   reads the array as programmed and at time t) - for a ResNet-18-sized model (ImageNet
   shape 3x224x224, basic blocks [2,2,2,2], 11.69 M parameters, random weights, BN kept) on
   128x128 tiles, with the number of tiles. Each run is a fresh subprocess (peak memory =
   VmHWM of the child). Target <= 60 s on 2 cores. Ranges are not needed for preparation
   and are not computed for this model (the ADC full scale falls back to the physical one).
c. Exact IR-drop time per tile (xbar.runtime.irdrop.effective_conductance) for 64x64,
   128x128 and 256x256 tiles, on stacks of random PCM-like tiles (the stack sizes of
   benchmarks/bench_irdrop.py), with the spec's resistances.

The ResNet-18 model is exported by torch in a separate process (like bench_ideal.py's models)
and cached as benchmarks/.cache/resnet18_v1.onnx; the ResNet-20 model is bench_ideal.py's.
Exit code 0 unless something fails outright; missed targets are reported, not errors.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from collections import defaultdict
from pathlib import Path

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))

import bench_ideal  # noqa: E402  (same folder: header, ForeignLoad, ensure_model, cache layout)
from bench_ideal import CACHE, OPSET, ROOT, ForeignLoad, ensure_model  # noqa: E402

BATCH = 128
TARGET_RATIO = 2.0
TARGET_PREP_S = 60.0
T_INFERENCE = 86400.0  # 1 day
CALIB_SAMPLES = 256
def chip_spec():
    from xbar.hardware import preset

    spec = preset("pcm").override(t_inference=T_INFERENCE)
    d = spec.device
    assert d.model == "pcm" and d.prog_noise and d.drift and d.read_noise, spec.describe()
    assert spec.dac.bits == 8 and spec.adc.bits == 8 and spec.circuit.ir_drop, spec.describe()
    return spec


# --------------------------------------------------------------------------- a. inference


def _fmt_ms(s: float) -> str:
    return f"{s * 1e3:9.1f}"


def bench_inference(model: Path, x, calib, spec, reps: int, warmup: int, settle: float) -> dict:
    import numpy as np
    import onnxruntime as ort

    from xbar.converter import convert
    from xbar.runtime import Runtime
    from xbar.runtime.ranges import find_ranges

    t0 = time.perf_counter()
    bundle = convert(str(model), crossbar=(128, 128))
    t_conv = time.perf_counter() - t0
    t0 = time.perf_counter()
    find_ranges(bundle, calib, spec)
    t_ranges = time.perf_counter() - t0
    t0 = time.perf_counter()
    chip = Runtime(bundle, spec, seed=0)
    t_prep = time.perf_counter() - t0
    ideal = Runtime(bundle)
    so = ort.SessionOptions()
    sess = ort.InferenceSession(str(model), so, providers=["CPUExecutionProvider"])
    feed = sess.get_inputs()[0].name
    engines = {
        "chip": lambda: chip(x),
        "ideal": lambda: ideal(x),
        "ort": lambda: sess.run(None, {feed: x})[0],
    }
    y_c, y_i, y_o = engines["chip"](), engines["ideal"](), engines["ort"]()
    ideal_err = float(np.max(np.abs(y_i.astype(np.float64) - y_o)) / (np.max(np.abs(y_o)) or 1.0))
    rel_rms = float(np.sqrt(np.mean((y_c.astype(np.float64) - y_o) ** 2)) / (np.sqrt(np.mean(y_o.astype(np.float64) ** 2)) or 1.0))
    agree = float(np.mean(y_c.argmax(1) == y_o.argmax(1)))
    for _ in range(warmup):
        for fn in engines.values():
            fn()
            time.sleep(settle)
    times: dict[str, list[float]] = {k: [] for k in engines}
    names = list(engines)
    with ForeignLoad() as load:
        for i in range(reps):
            order = names[i % 3:] + names[:i % 3]
            if (i // 3) % 2:
                order = order[::-1]
            for name in order:
                t = time.perf_counter()
                engines[name]()
                times[name].append(time.perf_counter() - t)
                time.sleep(settle)
    med = {k: statistics.median(v) for k, v in times.items()}
    mn = {k: min(v) for k, v in times.items()}
    s = bundle.manifest["summary"]
    return {
        "chip": chip, "bundle": bundle, "x": x, "times": times, "med": med, "min": mn,
        "ratio": med["chip"] / med["ort"], "ratio_min": mn["chip"] / mn["ort"],
        "chip_vs_ideal": med["chip"] / med["ideal"], "ideal_vs_ort": med["ideal"] / med["ort"],
        "convert_s": t_conv, "ranges_s": t_ranges, "prep_s": t_prep, "tiles": s["tiles_used"],
        "analog_layers": s["analog_layers"], "weights": s["analog_weights"],
        "ideal_rel_err": ideal_err, "chip_rel_rms": rel_rms, "chip_agree": agree,
        "foreign": load.text(), "reps": reps, "warmup": warmup,
    }


# --------------------------------------------------------------------------- a'. profile


class _Timers:
    def __init__(self) -> None:
        self.t: dict[str, float] = defaultdict(float)

    def add(self, key: str, t0: float) -> float:
        now = time.perf_counter()
        self.t[key] += now - t0
        return now


def _instrumented_tiled_product(timers: _Timers):
    """A timed copy of xbar.runtime.analog.tiled_product (same operations, same RNG draws).

    Checked bit-identical against the real function by the caller; if xbar changes the
    function, the check fails and the profile says so.
    """
    import numpy as np

    from xbar.runtime.analog import adc_levels, per_block
    from xbar.runtime.gauss import standard_normal

    def tiled_product(v, st, spec, i_fs, rng, use_adc=True, unit=1.0):
        t = time.perf_counter()
        y = per_block(v, st.d, st.k)
        t = timers.add("tile: signal GEMM (v @ G_eff)", t)
        if st.var is not None:
            v2 = np.square(v)
            std = per_block(v2, st.var, st.k)
            np.sqrt(std, out=std)
            t = timers.add("tile: read-noise sigma (v^2, v^2 @ var GEMM, sqrt)", t)
            z = standard_normal(rng, y.shape)
            t = timers.add("tile: read-noise sampling (Box-Muller normals)", t)
            z *= std
            y += z
            t = timers.add("tile: read-noise add (y += sigma*z)", t)
            if st.ref_var is not None:
                ref_std = np.sqrt(per_block(v2, st.ref_var, st.k))
                noise = ref_std * standard_normal(rng, ref_std.shape)
                y -= noise[:, :, st.block_of]
                t = timers.add("tile: reference-column noise (offset encoding)", t)
        fs = i_fs / np.float32(unit)
        if spec.adc.noise > 0:
            z = standard_normal(rng, y.shape)
            z *= (np.float32(spec.adc.noise) * fs)[:, None, :]
            y += z
            t = timers.add("tile: ADC output noise", t)
        scale = st.comp * np.float32(unit)
        if use_adc and spec.adc.bits is not None:
            scale = scale * adc_levels(y, fs, spec.adc.bits)
            t = timers.add("tile: ADC (to levels, round, clip)", t)
        y *= scale[:, None, :]
        t = timers.add("tile: back to currents, drift compensation", t)
        out = y.sum(axis=0) if y.shape[0] > 1 else y[0]
        timers.add("tile: sum of row-block partial sums", t)
        return out

    return tiled_product


def profile_chip(res: dict, reps: int) -> dict:
    """Time per category of the chip call, median over reps, on ONE thread (an instrumented
    copy of tiled_product; the categories add up to CPU time, which the worker threads share)."""
    import numpy as np

    import xbar.runtime.analog as analog
    import xbar.runtime.layer as layer_mod
    import xbar.runtime.parallel as parallel

    chip, x = res["chip"], res["x"]
    rngs = [layer.chip.rng for layer in chip.layers if getattr(layer, "chip", None) is not None]
    states = [g.bit_generator.state for g in rngs]
    ref = chip(x)
    orig = {"tiled_product": layer_mod.tiled_product, "dac_codes": layer_mod.dac_codes,
            "_crossbar": layer_mod.Layer._crossbar, "workers": parallel.MAX_WORKERS}
    timers = _Timers()
    dac_key = "DAC (patch copy, scale to levels, round)"

    def dac_codes(*a, **k):
        t = time.perf_counter()
        out = orig["dac_codes"](*a, **k)
        timers.add(dac_key, t)
        return out

    def crossbar(self, *a, **k):
        t = time.perf_counter()
        out = orig["_crossbar"](self, *a, **k)
        timers.add("_crossbar total", t)
        return out

    layer_mod.tiled_product = _instrumented_tiled_product(timers)
    layer_mod.dac_codes = dac_codes
    layer_mod.Layer._crossbar = crossbar
    parallel.MAX_WORKERS = 1
    runs = []
    try:
        with parallel._blas_controller().limit(limits=1, user_api="blas"):
            for g, s in zip(rngs, states):
                g.bit_generator.state = s
            t0 = time.perf_counter()
            out = chip(x)
            total = time.perf_counter() - t0
            identical = bool(np.array_equal(out, ref))
            runs.append((total, dict(timers.t)))
            for _ in range(reps - 1):
                timers.t.clear()
                t0 = time.perf_counter()
                chip(x)
                runs.append((time.perf_counter() - t0, dict(timers.t)))
            timers.t.clear()
    finally:
        layer_mod.tiled_product = orig["tiled_product"]
        layer_mod.dac_codes = orig["dac_codes"]
        layer_mod.Layer._crossbar = orig["_crossbar"]
        parallel.MAX_WORKERS = orig["workers"]
    cats: dict[str, list[float]] = defaultdict(list)
    for total, t in runs:
        tile = sum(v for k, v in t.items() if k.startswith("tile:"))
        xbar_total = t.get("_crossbar total", tile)
        for k, v in t.items():
            if k != "_crossbar total":
                cats[k].append(v)
        cats["layer glue: column reorder, y *= x_max"].append(max(xbar_total - tile, 0.0))
        cats["outside DAC and crossbar: patch abs-max, affine, digital ops"].append(
            max(total - xbar_total - t.get(dac_key, 0.0), 0.0))
        cats["TOTAL"].append(total)
    med = {k: statistics.median(v) for k, v in cats.items()}
    return {"median": med, "identical": identical, "reps": reps}


def layer_shapes(chip) -> list[tuple]:
    """Per analog layer: K, N, row blocks x rows x padded columns (the GEMM the tiles run), and
    the output positions per image (conv: H*W of the output; gemm: 1)."""
    rows = []
    for layer in chip.layers:
        c = getattr(layer, "chip", None)
        if c is None:
            continue
        nrb, r, npad = c.tiles.d.shape
        shape = layer.entry.get("output_shape") or []
        spatial = 1
        if layer.kind == "conv":
            for d in shape[2:]:
                spatial = spatial * d if isinstance(d, int) and spatial else 0
        rows.append((layer.name, layer.k, layer.n, nrb, r, npad, spatial))
    return rows


# --------------------------------------------------------------------------- b. preparation child


def _prep_child(model: str) -> None:
    t_start = time.perf_counter()
    import numpy as np  # noqa: F401

    import xbar.runtime.devices as devices
    import xbar.runtime.irdrop as irdrop
    from xbar.converter import convert
    from xbar.runtime import Runtime

    res: dict = {"import_s": time.perf_counter() - t_start}
    spec = chip_spec()
    t0 = time.perf_counter()
    bundle = convert(model, crossbar=(128, 128))
    res["convert_s"] = time.perf_counter() - t0
    s = bundle.manifest["summary"]
    res.update(tiles=s["tiles_used"], analog_layers=s["analog_layers"], weights=s["analog_weights"],
               params=s["parameters"])
    res["hwm_before_kib"] = bench_ideal._proc_status_kib("VmHWM")
    stats: dict[str, list[float]] = defaultdict(lambda: [0, 0.0, 0])  # calls, seconds, tiles

    def timed(mod, name, key, count_tiles=False):
        fn = getattr(mod, name, None)
        if fn is None:
            return

        def wrapper(*a, **k):
            t = time.perf_counter()
            out = fn(*a, **k)
            st = stats[key]
            st[0] += 1
            st[1] += time.perf_counter() - t
            if count_tiles:
                g = a[0]
                st[2] += int(np.prod(g.shape[:-2])) if g.ndim > 2 else 1
            return out
        setattr(mod, name, wrapper)

    timed(irdrop, "effective_conductance", "exact IR drop (effective_conductance)", count_tiles=True)
    timed(devices, "program_devices", "programming noise + drift exponents + faults (program_devices)")
    timed(devices, "drift", "drift G(t) (devices.drift)")
    timed(devices, "read_sigma", "read-noise sigma (devices.read_sigma)")
    timed(devices, "apply_faults", "stuck-at overwrite (devices.apply_faults)")
    c0, t0 = time.process_time(), time.perf_counter()
    rt = Runtime(bundle, spec, seed=0)
    res["prep_s"] = time.perf_counter() - t0
    res["prep_cpu_s"] = time.process_time() - c0
    res["hwm_kib"] = bench_ideal._proc_status_kib("VmHWM")
    res["parts"] = {k: {"calls": v[0], "s": v[1], "tiles": v[2]} for k, v in stats.items()}
    res["layers_on_chip"] = sum(1 for layer in rt.layers if getattr(layer, "chip", None) is not None)
    print("RESULT " + json.dumps(res))


def bench_prep(model: Path, runs: int) -> list[dict]:
    out = []
    for _ in range(runs):
        proc = subprocess.run([sys.executable, __file__, "_prep", str(model)], capture_output=True, text=True)
        if proc.returncode != 0:
            sys.stderr.write(proc.stdout + proc.stderr)
            raise SystemExit(f"preparation subprocess failed (exit {proc.returncode})")
        line = next(ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT "))
        out.append(json.loads(line[len("RESULT "):]))
    return out


# --------------------------------------------------------------------------- c. IR drop per tile


def bench_irdrop(spec, reps: int) -> list[dict]:
    import numpy as np

    import xbar.runtime.irdrop as irdrop
    import xbar.runtime.parallel as parallel
    from bench_irdrop import CASES

    c, g_max = spec.circuit, spec.device.g_max
    rng = np.random.default_rng(0)
    rows = []
    for n, count in CASES:
        g = rng.uniform(0.0, g_max, (count, n, n))
        irdrop.effective_conductance(g, c.r_wire, c.r_driver, c.r_sense)  # warm-up (caches the schedule)
        walls, cpus = [], []
        for _ in range(reps):
            c0, t0 = time.process_time(), time.perf_counter()
            irdrop.effective_conductance(g, c.r_wire, c.r_driver, c.r_sense)
            walls.append(time.perf_counter() - t0)
            cpus.append(time.process_time() - c0)
        row = {"n": n, "stack": count, "best": min(walls) / count, "median": statistics.median(walls) / count,
               "cpu_median": statistics.median(cpus) / count}
        # The same stack on one worker thread: how much the default thread count buys.
        saved = parallel.MAX_WORKERS
        parallel.MAX_WORKERS = 1
        try:
            one = []
            for _ in range(max(1, reps // 2)):
                t0 = time.perf_counter()
                irdrop.effective_conductance(g, c.r_wire, c.r_driver, c.r_sense)
                one.append(time.perf_counter() - t0)
        finally:
            parallel.MAX_WORKERS = saved
        row["one_worker"] = statistics.median(one) / count
        rows.append(row)
    return rows


# --------------------------------------------------------------------------- main


def main(argv: list[str]) -> int:
    if len(argv) > 1 and argv[1] == "_prep":
        _prep_child(argv[2])
        return 0

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="few repetitions, one preparation run (smoke test)")
    ap.add_argument("--reps", type=int, help="timed repetitions per engine in (a) (default 10; 2 with --quick)")
    ap.add_argument("--settle", type=float, default=0.25, help="idle seconds after every timed call (default 0.25)")
    ap.add_argument("--prep-runs", type=int, help="ResNet-18 preparation runs, each in a fresh subprocess (default 2; 1 with --quick)")
    ap.add_argument("--profile-reps", type=int, help="instrumented chip calls in the profile (default 3; 1 with --quick)")
    ap.add_argument("--irdrop-reps", type=int, help="timed repetitions per tile size in (c) (default 5; 2 with --quick)")
    ap.add_argument("--skip-prep", action="store_true", help="skip (b), the ResNet-18 preparation")
    args = ap.parse_args(argv[1:])
    reps = args.reps or (2 if args.quick else 10)
    warmup = 1 if args.quick else 2
    prep_runs = args.prep_runs or (1 if args.quick else 2)
    prof_reps = args.profile_reps or (1 if args.quick else 3)
    ir_reps = args.irdrop_reps or (2 if args.quick else 5)

    t_all = time.perf_counter()
    lines = bench_ideal.header(argv)
    lines[0] = "xbar chip (non-ideal) benchmark"
    for line in lines:
        print(line)
    print(f"mode        : {'quick' if args.quick else 'full'}; (a) warm-up {warmup}, timed reps {reps} per engine "
          f"(interleaved, order rotating, {args.settle:g} s idle after each call); profile reps {prof_reps}; "
          f"(b) preparation runs {0 if args.skip_prep else prep_runs}; (c) reps {ir_reps}")
    spec = chip_spec()
    print("hardware    : preset('pcm').override(t_inference=86400.0) on 128x128 tiles, differential:")
    for line in spec.describe().splitlines():
        print("              " + line)
    import xbar.runtime.irdrop as irdrop
    import xbar.runtime.parallel as parallel

    print(f"IR drop     : exact solve, {parallel.workers()} worker thread(s) over chunks of tiles, BLAS held to 1 thread meanwhile")
    print(flush=True)

    import numpy as np

    print("preparing models")
    r20, g20 = ensure_model("resnet20")
    r18, g18 = (None, None) if args.skip_prep else ensure_model("resnet18")
    for name, path, g in (("resnet20", r20, g20), ("resnet18", r18, g18)):
        if path is not None:
            note = f"generated in {g:.1f} s" if g is not None else "cached"
            print(f"  {name}: {path.relative_to(ROOT)} ({path.stat().st_size / 2**20:.1f} MiB, {note})")
    print(flush=True)

    x = np.random.default_rng(0).standard_normal((BATCH, 3, 32, 32)).astype(np.float32)
    calib = np.random.default_rng(1).standard_normal((CALIB_SAMPLES, 3, 32, 32)).astype(np.float32)

    # ---- a
    print(f"a. inference, full noise stack, ResNet-20 (CIFAR, random weights), batch {BATCH}, after chip preparation",
          flush=True)
    a = bench_inference(r20, x, calib, spec, reps, warmup, args.settle)
    print(f"  bundle: {a['analog_layers']} analog layers on {a['tiles']} tiles, {a['weights']:,} weights; "
          f"convert {a['convert_s']:.2f} s, find_ranges on {CALIB_SAMPLES} random inputs {a['ranges_s']:.1f} s, "
          f"chip preparation Runtime(bundle, spec, seed=0) {a['prep_s']:.2f} s")
    print(f"  {'engine':<44} {'median ms':>10} {'min ms':>9}")
    labels = {"chip": "xbar chip instance, rt(x)  (full noise stack)", "ideal": "xbar ideal, Runtime(bundle)(x)",
              "ort": "onnxruntime"}
    for k in ("chip", "ideal", "ort"):
        print(f"  {labels[k]:<44} {_fmt_ms(a['med'][k]):>10} {_fmt_ms(a['min'][k]):>9}")
    status_a = "ok" if a["ratio"] <= TARGET_RATIO else "MISS"
    print(f"  chip / onnxruntime = {a['ratio']:.1f}x (ratio of medians; target <= {TARGET_RATIO:g}x: {status_a}); "
          f"ratio of minima {a['ratio_min']:.1f}x")
    print(f"  chip / xbar ideal = {a['chip_vs_ideal']:.1f}x;  xbar ideal / onnxruntime = {a['ideal_vs_ort']:.1f}x")
    print(f"  other load during the timed loop: {a['foreign']} of all cores")
    print(f"  sanity: xbar ideal vs onnxruntime max |dy|/max|y| = {a['ideal_rel_err']:.1e}; chip vs onnxruntime: "
          f"relative RMS logit error {a['chip_rel_rms']:.3f}, top-1 agreement {100 * a['chip_agree']:.1f}% "
          "(random weights and inputs: only a plausibility check)")
    print(flush=True)

    print(f"a'. profile of the chip call on ONE thread (instrumented copy of tiled_product, {prof_reps} call(s), "
          "median ms per category)",
          flush=True)
    p = profile_chip(a, prof_reps)
    med = p["median"]
    total = med.pop("TOTAL")
    for k, v in sorted(med.items(), key=lambda kv: -kv[1]):
        print(f"  {k:<62} {v * 1e3:9.1f}  {100 * v / total:5.1f}%")
    print(f"  {'total (instrumented call)':<62} {total * 1e3:9.1f}")
    print("  instrumented output bit-identical to the real call on the same noise stream: "
          f"{'yes' if p['identical'] else 'NO - xbar.runtime.analog changed; the breakdown is only indicative'}")
    shapes = layer_shapes(a["chip"])
    if all(sp for *_, sp in shapes):
        need = sum(sp * n for _, _, n, _, _, _, sp in shapes)
        sampled = sum(sp * nrb * npad for _, _, _, nrb, _, npad, sp in shapes)
        print(f"  per image: {sampled:,} tile outputs sampled, ADC-quantised and compensated for {need:,} layer "
              f"outputs ({sampled / need:.1f}x: one per row block of K); both GEMMs use only live rows and columns")
    print(flush=True)

    # ---- b
    prep = None
    if not args.skip_prep:
        print(f"b. chip preparation, ResNet-18-shaped model ({r18.relative_to(ROOT)}), 128x128 tiles, "
              f"{prep_runs} run(s), each in a fresh subprocess", flush=True)
        with ForeignLoad() as prep_load:
            prep = bench_prep(r18, prep_runs)
        p0 = prep[0]
        prep_s = statistics.median(r["prep_s"] for r in prep)
        status_b = "ok" if prep_s <= TARGET_PREP_S else "MISS"
        print(f"  parameters {p0['params'] / 1e6:.2f} M; {p0['analog_layers']} analog layers on {p0['tiles']} tiles "
              f"of 128x128 ({p0['weights']:,} analog weights); convert {statistics.median(r['convert_s'] for r in prep):.1f} s")
        print(f"  Runtime(bundle, spec, seed=0) wall time, median: {prep_s:.1f} s (target <= {TARGET_PREP_S:.0f} s: "
              f"{status_b}); runs: " + ", ".join(f"{r['prep_s']:.1f}" for r in prep)
              + f"; CPU time {statistics.median(r['prep_cpu_s'] for r in prep):.1f} s")
        print(f"  per tile: {prep_s / p0['tiles'] * 1e3:.1f} ms;  peak RSS (VmHWM) of the child "
              f"{statistics.median(r['hwm_kib'] for r in prep) / 2**10:.0f} MiB "
              f"({statistics.median(r['hwm_before_kib'] for r in prep) / 2**10:.0f} MiB after convert, before preparation)")
        print("  breakdown (run 1; inclusive wall time of the wrapped functions):")
        for k, v in sorted(p0["parts"].items(), key=lambda kv: -kv[1]["s"]):
            extra = f", {v['tiles']} tile solves ({v['s'] / max(v['tiles'], 1) * 1e3:.1f} ms each)" if v["tiles"] else ""
            print(f"    {k:<66} {v['s']:7.1f} s  {v['calls']:>4} calls{extra}")
        rest = p0["prep_s"] - sum(v["s"] for v in p0["parts"].values())
        print(f"    {'everything else (retarget, pair difference, stacking, Layer setup)':<66} {rest:7.1f} s")
        print(f"  other load during the preparation runs: {prep_load.text()} of all cores", flush=True)
        print()

    # ---- c
    print(f"c. exact IR drop per tile, effective_conductance, r_wire = {spec.circuit.r_wire:g} Ω, "
          f"r_driver = {spec.circuit.r_driver:g} Ω, r_sense = {spec.circuit.r_sense:g} Ω, G ~ U[0, 25 µS], "
          f"{ir_reps} reps", flush=True)
    with ForeignLoad() as ir_load:
        ir = bench_irdrop(spec, ir_reps)
    print(f"  {'tile':>9} {'stack':>5} {'median ms/tile':>15} {'best':>8} {'CPU ms/tile':>12} {'1 worker, median':>17}")
    for r in ir:
        print(f"  {r['n']:>4}x{r['n']:<4} {r['stack']:>5} {r['median'] * 1e3:>15.1f} {r['best'] * 1e3:>8.1f} "
              f"{r['cpu_median'] * 1e3:>12.1f} {r['one_worker'] * 1e3:>17.1f}")
    print(f"  default = {parallel.workers()} worker thread(s); CPU ms/tile counts all threads (CPU > wall means the "
          "workers overlapped)")
    print(f"  other load: {ir_load.text()} of all cores")
    print()

    print("summary")
    print(f"  a. ResNet-20 batch 128, full noise stack / onnxruntime : {a['ratio']:.1f}x "
          f"(target <= {TARGET_RATIO:g}x) {status_a}   [{a['med']['chip'] * 1e3:.0f} ms vs {a['med']['ort'] * 1e3:.1f} ms]")
    if prep is not None:
        print(f"  b. ResNet-18 chip preparation ({p0['tiles']} tiles)       : {prep_s:.1f} s "
              f"(target <= {TARGET_PREP_S:.0f} s) {status_b}")
    print("  c. exact IR drop per tile (median)                      : "
          + ", ".join(f"{r['n']}x{r['n']} {r['median'] * 1e3:.1f} ms" for r in ir))
    print(f"  total benchmark wall time                               : {time.perf_counter() - t_all:.0f} s"
          f"   (loadavg at end: {', '.join(f'{v:.2f}' for v in os.getloadavg())})")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
