"""ImageNet-scale chip simulation and bundles: ResNet-50, MobileNet-V2, EfficientNet-B0,
VGG-19 and ConvNeXt-T (the last two not in the default set: --models vgg19,convnext_t).

    .venv/bin/python benchmarks/bench_scale.py                      # all three models
    .venv/bin/python benchmarks/bench_scale.py --models resnet50 --batch 32
    .venv/bin/python benchmarks/bench_scale.py --depthwise digital  # a mapping policy of convert
    .venv/bin/python benchmarks/bench_scale.py --models mobilenet_v2,efficientnet_b0 --depthwise packed --batch 0
    .venv/bin/python benchmarks/bench_scale.py --depthwise digital --pack-tiles --batch 0   # partly used tiles shared
    .venv/bin/python benchmarks/bench_scale.py --depthwise digital --pack-tiles --batch 0 --repeat 3   # medians
    .venv/bin/python benchmarks/bench_scale.py --models resnet50 --batch 0 --solve-dtype float64   # exact IR solve
    .venv/bin/python benchmarks/bench_scale.py --depthwise digital --pack-tiles --batch 0 --chips 3   # + chips 2, 3

Each model is converted once; then every round (--repeat, default 1) loads and prepares
the models in turn, so that over several rounds a noisy machine weighs on all of them alike,
and the summary gives medians and each of issue 10's targets the run can judge. Each
measurement runs in its own fresh subprocess (peak memory is the child's VmHWM from
/proc/self/status, which includes the interpreter and imports):
1. convert(model, hardware=pcm, 128x128 tiles): wall time, peak RSS; save_bundle; bundle size.
2. load_bundle in a fresh process: wall time (sha256 checks included), s per GB of bundle.
3. chip preparation, as `xbar eval` builds a chip: Runtime(bundle, pcm at t = 1 d, seed=0;
   IR drop solved in the preset's float32 unless --solve-dtype says otherwise):
   wall time, CPU time, peak RSS before and after; with --chips N, N - 1 more chips (seeds 1,
   2, ...) one after another in the same process, as `xbar eval` prepares one chip per seed
   and time: they show the cost per chip without the process's one-time costs (Numba's
   import and loading of its compiled code, ~1 s). Then one timed chip inference of a
   batch of random 224x224 images and one onnxruntime call on the same batch in the same
   process (the ratio of the two).
A one-thread float64 IR-drop solve of 8 tiles is timed at the start and at the end (the
"machine" lines): how fast this VM is in the minutes of the run, so that runs made on
different VMs or in different spells of one can be compared. It times the solve as it is:
from 2026-12-02 on (lowest levels compiled) the same VM reads ~1.4x lower than before.
Models are pure-torch definitions with the torchvision layer shapes (torchvision is not
installed here), seeded random weights, random BN statistics, exported by torch in a child
process to benchmarks/.cache/ (opset 17, dynamic batch).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from statistics import median
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from bench_ideal import CACHE, OPSET, _proc_status_kib, header, randomise_bn  # noqa: E402

GEN_VERSION = 1
MODELS = ("resnet50", "mobilenet_v2", "efficientnet_b0")
EXTRA = ("vgg19", "convnext_t")  # issue 10's conversion-memory and load-time cases
T_INFERENCE = 86400.0
TARGET_PREP_S = 60.0  # ResNet-50
TARGET_PREP_GB = 2.5  # ResNet-50
TARGET_LOAD_S_PER_GB = 2.0
TARGET_INFER_RATIO = 15.0  # ResNet-50, batch 32: chip inference against onnxruntime


# --------------------------------------------------------------------------- generation (torch child)


def _generate(kind: str, out: Path) -> None:
    import torch
    import torch.nn as nn

    torch.manual_seed(0)

    def cbr(cin, cout, k, stride=1, groups=1, act=nn.ReLU6):
        mods = [nn.Conv2d(cin, cout, k, stride, k // 2, groups=groups, bias=False), nn.BatchNorm2d(cout)]
        return mods + ([act()] if act is not None else [])

    class InvertedResidual(nn.Module):  # MobileNet-V2
        def __init__(self, cin, cout, stride, expand):
            super().__init__()
            hidden = cin * expand
            layers = [] if expand == 1 else cbr(cin, hidden, 1)
            layers += cbr(hidden, hidden, 3, stride, groups=hidden) + cbr(hidden, cout, 1, act=None)
            self.body = nn.Sequential(*layers)
            self.res = stride == 1 and cin == cout

        def forward(self, x):
            return x + self.body(x) if self.res else self.body(x)

    class SqueezeExcite(nn.Module):
        def __init__(self, ch, squeeze):
            super().__init__()
            self.pool = nn.AdaptiveAvgPool2d(1)
            self.fc1, self.fc2 = nn.Conv2d(ch, squeeze, 1), nn.Conv2d(squeeze, ch, 1)
            self.act, self.gate = nn.SiLU(), nn.Sigmoid()

        def forward(self, x):
            return x * self.gate(self.fc2(self.act(self.fc1(self.pool(x)))))

    class MBConv(nn.Module):  # EfficientNet-B0
        def __init__(self, cin, cout, k, stride, expand):
            super().__init__()
            hidden = cin * expand
            layers = [] if expand == 1 else cbr(cin, hidden, 1, act=nn.SiLU)
            layers += cbr(hidden, hidden, k, stride, groups=hidden, act=nn.SiLU)
            layers += [SqueezeExcite(hidden, max(1, cin // 4))] + cbr(hidden, cout, 1, act=None)
            self.body = nn.Sequential(*layers)
            self.res = stride == 1 and cin == cout

        def forward(self, x):
            return x + self.body(x) if self.res else self.body(x)

    if kind == "resnet50":
        sys.path.insert(0, str(HERE))
        import bench_ideal

        bench_ideal._generate("resnet50", out)
        return
    if kind == "mobilenet_v2":
        layers = cbr(3, 32, 3, 2)
        cin = 32
        for t, c, n, s in ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1),
                           (6, 160, 3, 2), (6, 320, 1, 1)):
            for i in range(n):
                layers.append(InvertedResidual(cin, c, s if i == 0 else 1, t))
                cin = c
        layers += cbr(cin, 1280, 1) + [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Dropout(0.2), nn.Linear(1280, 1000)]
    elif kind == "efficientnet_b0":
        layers = cbr(3, 32, 3, 2, act=nn.SiLU)
        cin = 32
        for e, k, s, c, n in ((1, 3, 1, 16, 1), (6, 3, 2, 24, 2), (6, 5, 2, 40, 2), (6, 3, 2, 80, 3),
                              (6, 5, 1, 112, 3), (6, 5, 2, 192, 4), (6, 3, 1, 320, 1)):
            for i in range(n):
                layers.append(MBConv(cin, c, k, s if i == 0 else 1, e))
                cin = c
        layers += cbr(cin, 1280, 1, act=nn.SiLU) + [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Dropout(0.2),
                                                     nn.Linear(1280, 1000)]
    elif kind == "vgg19":  # torchvision's vgg19 (config E, no BN); its AdaptiveAvgPool2d(7) is
        # the identity on a 224×224 input and is left out
        layers, cin = [], 3
        for v in (64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M", 512, 512, 512, 512, "M",
                  512, 512, 512, 512, "M"):
            if v == "M":
                layers.append(nn.MaxPool2d(2, 2))
            else:
                layers += [nn.Conv2d(cin, v, 3, padding=1), nn.ReLU()]
                cin = v
        layers += [nn.Flatten(), nn.Linear(512 * 7 * 7, 4096), nn.ReLU(), nn.Dropout(), nn.Linear(4096, 4096),
                   nn.ReLU(), nn.Dropout(), nn.Linear(4096, 1000)]
    elif kind == "convnext_t":  # torchvision's convnext_tiny: depths 3,3,9,3, widths 96..768
        class LayerNorm2d(nn.LayerNorm):  # channels-first LayerNorm, as torchvision's
            def forward(self, x):
                return super().forward(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)

        class CNBlock(nn.Module):
            def __init__(self, dim):
                super().__init__()
                self.dw = nn.Conv2d(dim, dim, 7, padding=3, groups=dim)
                self.norm = nn.LayerNorm(dim, eps=1e-6)
                self.mlp = nn.Sequential(nn.Linear(dim, 4 * dim), nn.GELU(), nn.Linear(4 * dim, dim))
                # Random layer scale (torchvision initialises 1e-6; trained values are O(0.1-1))
                self.scale = nn.Parameter(torch.rand(dim, 1, 1) * 0.5)

            def forward(self, x):
                y = self.mlp(self.norm(self.dw(x).permute(0, 2, 3, 1))).permute(0, 3, 1, 2)
                return x + self.scale * y

        dims, depths = (96, 192, 384, 768), (3, 3, 9, 3)
        layers = [nn.Conv2d(3, dims[0], 4, 4), LayerNorm2d(dims[0], eps=1e-6)]
        for i, (dim, depth) in enumerate(zip(dims, depths)):
            layers += [CNBlock(dim) for _ in range(depth)]
            if i < 3:
                layers += [LayerNorm2d(dim, eps=1e-6), nn.Conv2d(dim, dims[i + 1], 2, 2)]
        layers += [nn.AdaptiveAvgPool2d(1), LayerNorm2d(dims[-1], eps=1e-6), nn.Flatten(), nn.Linear(dims[-1], 1000)]
    else:
        raise SystemExit(f"unknown model {kind!r}")
    model = nn.Sequential(*layers)
    randomise_bn(model)
    with tempfile.TemporaryDirectory(prefix="xbar-bench-gen-") as tmp:
        path = Path(tmp) / out.name
        torch.onnx.export(model, (torch.zeros(1, 3, 224, 224),), str(path), dynamo=False, opset_version=OPSET,
                          do_constant_folding=False, input_names=["input"], output_names=["logits"],
                          dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}})
        out.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, out.with_suffix(".tmp"))
        os.replace(out.with_suffix(".tmp"), out)
    print(json.dumps({"params": sum(p.numel() for p in model.parameters())}))


def ensure(kind: str) -> Path:
    path = CACHE / (f"resnet50_v1.onnx" if kind == "resnet50" else f"{kind}_v{GEN_VERSION}.onnx")
    if not path.exists():
        print(f"  generating {path.name} with torch ...", flush=True)
        proc = subprocess.run([sys.executable, __file__, "_generate", kind, str(path)], capture_output=True, text=True)
        if proc.returncode != 0 or not path.exists():
            sys.stderr.write(proc.stdout + proc.stderr)
            raise SystemExit(f"generating {kind} failed")
    return path


# --------------------------------------------------------------------------- children


# The parent's --solve-dtype reaches the child processes through their environment.
SOLVE_DTYPE_ENV = "XBAR_BENCH_SOLVE_DTYPE"


def _spec():
    from xbar.hardware import preset

    spec = preset("pcm").override(t_inference=T_INFERENCE)
    dtype = os.environ.get(SOLVE_DTYPE_ENV)
    return spec.override({"circuit.solve_dtype": dtype}) if dtype else spec


def _child_convert(model: str, out: str, depthwise: str, pack_tiles: str = "0") -> dict:
    t0 = time.perf_counter()
    from xbar.bundle import save_bundle
    from xbar.converter import convert

    res = {"import_s": time.perf_counter() - t0, "rss_before_kib": _proc_status_kib("VmRSS")}
    kw = {} if depthwise == "default" else {"depthwise": depthwise}
    if pack_tiles == "1":
        kw["pack_tiles"] = True
    c0, t0 = time.process_time(), time.perf_counter()
    b = convert(model, crossbar=(128, 128), hardware=_spec(), **kw)
    res["convert_s"] = time.perf_counter() - t0
    res["convert_cpu_s"] = time.process_time() - c0
    res["hwm_convert_kib"] = _proc_status_kib("VmHWM")
    s = b.manifest["summary"]
    res.update(tiles=s["tiles_used"], analog_weights=s["analog_weights"], params=s["parameters"],
               analog_layers=s["analog_layers"], physical_tiles=s.get("physical_tiles", s["tiles_used"]),
               shared_tiles=s.get("shared_tiles", 0),
               passes=sum(l["tiles"]["packing"]["passes_per_vector"] for l in b.layers
                          if "packing" in (l.get("tiles") or {})))
    t0 = time.perf_counter()
    save_bundle(b, out, force=True)
    res["save_s"] = time.perf_counter() - t0
    res["bundle_bytes"] = Path(out).stat().st_size
    return res


def _child_load(bundle: str) -> dict:
    from xbar.bundle import load_bundle

    c0, t0 = time.process_time(), time.perf_counter()
    load_bundle(bundle)
    return {"load_s": time.perf_counter() - t0, "load_cpu_s": time.process_time() - c0,
            "hwm_kib": _proc_status_kib("VmHWM")}


# The machine-speed reference: tiles of 128x128 solved on one thread in float64, whatever
# the run's --solve-dtype, so that runs on differently fast (or differently busy) VMs compare.
SPEED_TILES, SPEED_REPS = 8, 5


def _child_speed() -> dict:
    import numpy as np

    import xbar.runtime.parallel as parallel
    from xbar.memory import keep_freed_memory
    from xbar.runtime.irdrop import effective_conductance

    keep_freed_memory()  # as in a chip build: freed arrays reused, not faulted in afresh
    parallel.MAX_WORKERS = 1
    g = np.random.default_rng(0).uniform(0.0, 25e-6, (SPEED_TILES, 128, 128))
    effective_conductance(g[:1], 1.0)  # builds the cached schedule
    times = []
    for _ in range(SPEED_REPS):
        t0 = time.perf_counter()
        effective_conductance(g, 1.0)
        times.append((time.perf_counter() - t0) / SPEED_TILES * 1e3)
    return {"ms": times}


def _speed_line(when: str) -> str:
    ms = _run_child("_speed")["ms"]
    return (f"machine     : {when}, one thread solves a 128x128 IR-drop tile (float64) in {median(ms):.1f} ms "
            f"(median of {SPEED_REPS} x {SPEED_TILES} tiles; {min(ms):.1f}-{max(ms):.1f}; load average "
            f"{os.getloadavg()[0]:.1f})")


def _child_prep(bundle: str, model: str, batch: int, chips: int = 1) -> dict:
    import numpy as np

    from xbar.bundle import load_bundle
    from xbar.runtime import Runtime

    b = load_bundle(bundle)
    res = {"hwm_loaded_kib": _proc_status_kib("VmHWM"), "rss_loaded_kib": _proc_status_kib("VmRSS")}
    c0, t0 = time.process_time(), time.perf_counter()
    rt = Runtime(b, _spec(), seed=0)
    res["prep_s"] = time.perf_counter() - t0
    res["prep_cpu_s"] = time.process_time() - c0
    res["hwm_prep_kib"] = _proc_status_kib("VmHWM")
    res["rss_prep_kib"] = _proc_status_kib("VmRSS")
    # Further chips in the same process, as `xbar eval` prepares one per (time, seed): they
    # no longer pay the process's one-time costs (Numba's import and loading its machine
    # code, first touches of memory).
    res["more_s"], res["more_cpu_s"] = [], []
    for seed in range(1, chips):
        del rt
        c0, t0 = time.process_time(), time.perf_counter()
        rt = Runtime(b, _spec(), seed=seed)
        res["more_s"].append(time.perf_counter() - t0)
        res["more_cpu_s"].append(time.process_time() - c0)
    res["hwm_more_kib"] = _proc_status_kib("VmHWM")
    if batch > 0:
        import onnxruntime as ort

        x = np.random.default_rng(0).standard_normal((batch, 3, 224, 224)).astype(np.float32)
        name = rt.input_names[0]
        t0 = time.perf_counter()
        y = rt.run({name: x})[rt.output_names[0]]
        res["chip_s"] = time.perf_counter() - t0
        res["hwm_infer_kib"] = _proc_status_kib("VmHWM")
        sess = ort.InferenceSession(model, providers=["CPUExecutionProvider"])
        sess.run(None, {sess.get_inputs()[0].name: x[:1]})  # warm-up
        t0 = time.perf_counter()
        ref = sess.run(None, {sess.get_inputs()[0].name: x})[0]
        res["ort_s"] = time.perf_counter() - t0
        res["top1_agree"] = float(np.mean(ref.argmax(1) == y.argmax(1)))
    return res


def _run_child(*args: str) -> dict:
    proc = subprocess.run([sys.executable, __file__, *args], capture_output=True, text=True)
    if proc.returncode != 0:
        sys.stderr.write(proc.stdout[-3000:] + proc.stderr[-3000:])
        raise SystemExit(f"child {args[0]} failed (exit {proc.returncode})")
    line = next(ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT "))
    return json.loads(line[len("RESULT "):])


def mib(kib: float | None) -> str:
    return "?" if kib is None else f"{kib / 1024:,.0f} MiB"


def _verdict(ok: bool) -> str:
    return "ok" if ok else "MISS"


def main(argv: list[str]) -> int:
    from xbar.hardware import IR_SOLVE_DTYPES

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default=",".join(MODELS), help=f"comma-separated, of {', '.join(MODELS + EXTRA)}")
    ap.add_argument("--batch", type=int, default=32, help="chip inference batch (0: skip inference)")
    ap.add_argument("--depthwise", default="default", help="convert's depthwise policy (default: convert's own)")
    ap.add_argument("--pack-tiles", action="store_true", help="convert with pack_tiles=True (--pack-tiles)")
    ap.add_argument("--no-prep", action="store_true", help="convert and load only (no chip preparation)")
    ap.add_argument("--repeat", type=int, default=1,
                    help="rounds of load + preparation (+ inference), the models alternating within each round, "
                         "so that a noisy machine weighs on all of them alike; the summary gives medians")
    ap.add_argument("--chips", type=int, default=1,
                    help="chips prepared one after another in each preparation's process (seeds 0, 1, ...), as "
                         "`xbar eval` does for several seeds and times: chips after the first show the cost per chip "
                         "without the process's one-time costs")
    ap.add_argument("--keep", default=None, help="folder to keep the bundles in (default: a temp folder)")
    ap.add_argument("--solve-dtype", choices=IR_SOLVE_DTYPES, default=None,
                    help="arithmetic of the IR-drop solve (circuit.solve_dtype; default: the pcm preset's)")
    args = ap.parse_args(argv)
    if args.repeat < 1:
        ap.error("--repeat must be at least 1")
    if args.chips < 1:
        ap.error("--chips must be at least 1")
    if args.solve_dtype:
        os.environ[SOLVE_DTYPE_ENV] = args.solve_dtype
    for line in header(["benchmarks/bench_scale.py", *argv]):
        print(line)
    print(f"hardware    : preset('pcm') at t = 1 d (IR drop on, solved in {_spec().circuit.solve_dtype}), "
          f"128x128 tiles; chip inference batch {args.batch}")
    print(_speed_line("at start"))
    t_all = time.perf_counter()
    tmp = tempfile.mkdtemp(prefix="xbar-bench-scale-", dir=args.keep)
    kinds = args.models.split(",")
    conv: dict[str, dict] = {}
    models = {kind: ensure(kind) for kind in kinds}
    runs: dict[str, list[tuple[dict, dict | None]]] = {kind: [] for kind in kinds}  # per round: (load, prep)
    try:
        for kind in kinds:
            model = models[kind]
            out = str(Path(tmp) / f"{kind}.xbar")
            c = conv[kind] = _run_child("_convert", str(model), out, args.depthwise, "1" if args.pack_tiles else "0")
            print(f"\n{kind}: {c['params'] / 1e6:.2f} M parameters, {c['analog_layers']} analog layers, "
                  f"{c['analog_weights']:,} analog weights on {c['tiles']} tiles (ONNX {model.stat().st_size / 1e6:.0f} MB)")
            if c.get("physical_tiles", c["tiles"]) != c["tiles"]:
                shared = f" ({c['shared_tiles']} pooled across layers)" if c.get("shared_tiles") else ""
                print(f"  packed       {c['physical_tiles']} physical tiles{shared}; packed layers run {c['passes']} "
                      f"passes per input vector")
            print(f"  convert      {c['convert_s']:7.1f} s (CPU {c['convert_cpu_s']:.1f} s)  peak RSS {mib(c['hwm_convert_kib'])}  (before convert "
                  f"{mib(c['rss_before_kib'])}); save {c['save_s']:.1f} s; bundle {c['bundle_bytes'] / 1e6:.1f} MB")
        for r in range(args.repeat):
            print(f"\nround {r + 1} of {args.repeat} (load average {os.getloadavg()[0]:.1f})")
            for kind in kinds:
                c, out = conv[kind], str(Path(tmp) / f"{kind}.xbar")
                ld = _run_child("_load", out)
                p = None if args.no_prep else _run_child("_prep", out, str(models[kind]), str(args.batch),
                                                         str(args.chips))
                runs[kind].append((ld, p))
                gb = c["bundle_bytes"] / 1e9
                print(f"  {kind:16s} load {ld['load_s']:.2f} s = {ld['load_s'] / gb:.2f} s/GB (CPU {ld['load_cpu_s']:.2f} s, "
                      f"peak RSS {mib(ld['hwm_kib'])})")
                if p is None:
                    continue
                print(f"  {'':16s} chip prep {p['prep_s']:.1f} s (CPU {p['prep_cpu_s']:.1f} s; per M analog weights "
                      f"{p['prep_s'] / c['analog_weights'] * 1e6:.2f} s, CPU {p['prep_cpu_s'] / c['analog_weights'] * 1e6:.2f} s); "
                      f"peak RSS {mib(p['hwm_prep_kib'])} (after load {mib(p['hwm_loaded_kib'])}); held {mib(p['rss_prep_kib'])}")
                if p["more_s"]:
                    more = median(p["more_s"])
                    print(f"  {'':16s} further chips {', '.join(f'{t:.1f}' for t in p['more_s'])} s (median {more:.1f} s; "
                          f"per M analog weights {more / c['analog_weights'] * 1e6:.2f} s, CPU "
                          f"{median(p['more_cpu_s']) / c['analog_weights'] * 1e6:.2f} s); peak RSS {mib(p['hwm_more_kib'])}")
                if "chip_s" in p:
                    print(f"  {'':16s} inference batch {args.batch}: chip {p['chip_s']:.1f} s, onnxruntime {p['ort_s']:.2f} s, "
                          f"ratio {p['chip_s'] / p['ort_s']:.1f}x; peak RSS {mib(p['hwm_infer_kib'])}; top-1 agreement "
                          f"{p['top1_agree']:.0%} (random weights/inputs: plausibility only)")
    finally:
        if args.keep is None:
            shutil.rmtree(tmp, ignore_errors=True)
    print(_speed_line("at end"))
    _summary(args, kinds, conv, runs)
    print(f"total wall time {time.perf_counter() - t_all:.0f} s")
    return 0


def _summary(args, kinds: list[str], conv: dict[str, dict], runs: dict[str, list[tuple[dict, dict | None]]]) -> None:
    """Medians over the rounds, with each of issue 10's targets the run can judge."""
    n = args.repeat
    print(f"\nsummary ({'median of ' + str(n) + ' rounds; ' if n > 1 else ''}targets of issue 10)")

    def per_weight(kind: str, key: str) -> list[float]:
        return [p[key] / conv[kind]["analog_weights"] * 1e6 for _, p in runs[kind]]

    base = "resnet50" if "resnet50" in kinds and not args.no_prep else None
    for kind in kinds:
        c = conv[kind]
        gb = c["bundle_bytes"] / 1e9
        load = [ld["load_s"] / gb for ld, _ in runs[kind]]
        met = f", {sum(v <= TARGET_LOAD_S_PER_GB for v in load)} of {n} rounds" if n > 1 else ""
        print(f"  {kind:16s} convert {c['convert_s']:6.1f} s / {mib(c['hwm_convert_kib']):>9s}; bundle "
              f"{c['bundle_bytes'] / 1e6:7.1f} MB, load {median(load):.2f} s/GB "
              f"(<= {TARGET_LOAD_S_PER_GB}: {_verdict(median(load) <= TARGET_LOAD_S_PER_GB)}{met})")
        if args.no_prep:
            continue
        preps = [p for _, p in runs[kind]]
        times = [p["prep_s"] for p in preps]
        prep, peak = median(times), max(p["hwm_prep_kib"] for p in preps)
        rounds = "; rounds " + ", ".join(f"{t:.1f}" for t in times) + " s" if n > 1 else ""
        print(f"  {'':16s} prep {prep:.1f} s (CPU {median([p['prep_cpu_s'] for p in preps]):.1f} s), peak "
              f"{mib(peak)}{rounds}")
        if kind == "resnet50":
            met = f" ({sum(t <= TARGET_PREP_S for t in times)} of {n} rounds)" if n > 1 else ""
            print(f"  {'':16s} targets: prep <= {TARGET_PREP_S:.0f} s {_verdict(prep <= TARGET_PREP_S)}{met}; "
                  f"peak <= {TARGET_PREP_GB} GB {_verdict(peak / 1024 / 1024 <= TARGET_PREP_GB)}")
            if "chip_s" in preps[0]:
                ratio = median([p["chip_s"] / p["ort_s"] for p in preps])
                print(f"  {'':16s} batch {args.batch} chip/onnxruntime {ratio:.1f}x (<= {TARGET_INFER_RATIO:.0f}x: "
                      f"{_verdict(ratio <= TARGET_INFER_RATIO)})")
        elif base is not None:
            # Per analog weight against ResNet-50 in the same round: the rounds alternate the
            # models, so each ratio compares runs made minutes apart on the same machine.
            wall = [a / b for a, b in zip(per_weight(kind, "prep_s"), per_weight(base, "prep_s"))]
            cpu = [a / b for a, b in zip(per_weight(kind, "prep_cpu_s"), per_weight(base, "prep_cpu_s"))]
            each = "; wall ratio per round " + ", ".join(f"{v:.2f}" for v in wall) if n > 1 else ""
            print(f"  {'':16s} per analog weight against resnet50: wall {median(wall):.2f}x, CPU {median(cpu):.2f}x "
                  f"(no worse, <= 1: {_verdict(median(wall) <= 1)}{each})")
            if args.chips > 1:
                def further(k: str, key: str) -> list[float]:
                    return [median(p[key]) / conv[k]["analog_weights"] * 1e6 for _, p in runs[k]]

                wall = [a / b for a, b in zip(further(kind, "more_s"), further(base, "more_s"))]
                cpu = [a / b for a, b in zip(further(kind, "more_cpu_s"), further(base, "more_cpu_s"))]
                print(f"  {'':16s} chips after the first, per analog weight against resnet50's: wall "
                      f"{median(wall):.2f}x, CPU {median(cpu):.2f}x")


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1].startswith("_"):
        cmd, rest = sys.argv[1], sys.argv[2:]
        if cmd == "_generate":
            _generate(rest[0], Path(rest[1]))
            sys.exit(0)
        fn = {"_convert": _child_convert, "_load": _child_load, "_prep": _child_prep, "_speed": _child_speed}[cmd]
        if cmd == "_prep":
            rest = [rest[0], rest[1], int(rest[2]), int(rest[3])]
        print("RESULT " + json.dumps(fn(*rest)))
        sys.exit(0)
    sys.exit(main(sys.argv[1:]))
