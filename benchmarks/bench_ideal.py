#!/usr/bin/env python
"""Ideal-mode performance benchmark: xbar runtime vs onnxruntime, and converter cost.

    python benchmarks/bench_ideal.py [--quick] [--reps N] [--settle S] [--conv-runs N]

Measures, in one run, on the same data and the same machine:

1. Inference time of the xbar runtime (ideal chip, NumPy) divided by onnxruntime's,
   batch 128, on
     (a) the shipped models/resnet_bn.onnx (digits test split, first 128 images), and
     (b) a ResNet-20-shaped CIFAR model (3x32x32, 16/32/64 channels, 3 stages x 3
         basic blocks, BN kept, random weights; fixed random input).
   Both engines are warmed up, then timed in interleaved repetitions (the order
   alternates every pair, and every call is followed by --settle seconds of idle time,
   because OpenBLAS worker threads keep spinning for tens of ms after numpy returns and,
   on a 2-core machine, measurably slow an onnxruntime call started right after - back to
   back, onnxruntime looked 2-3x slower on the shipped model). The table gives the median
   of each, the ratio of medians (target <= 1.5x) and, for reference, the ratio of minima.
2. Conversion of a ResNet-50-shaped model (~25.6 M parameters, bottleneck [3,4,6,3],
   3x224x224 input, 1000 classes, random weights): wall time of ``convert(path)`` (target
   <= 20 s), peak resident memory of the converting process, bundle size, save and
   load time. Each conversion runs in a fresh subprocess. Peak memory is the child's
   VmHWM from /proc/self/status read right after ``convert`` returns (so it covers
   interpreter + imports + conversion, not the save), plus, from one extra run, the
   tracemalloc peak of ``convert`` alone. getrusage's ru_maxrss is not used: on Linux a
   child's ru_maxrss (and RUSAGE_CHILDREN) inherits the parent's high-water mark across
   fork/exec, which here would report the benchmark process's own ~300 MiB.

Generated models are exported by torch in a *separate* process (so torch's thread
pools are never loaded into the timing process) and cached in benchmarks/.cache/;
delete that folder to regenerate them. Exit code 0 unless something fails outright
(including xbar and onnxruntime disagreeing on the outputs); a missed target is
reported, not an error.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import platform
import resource
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
CACHE = HERE / ".cache"
SHIPPED = ROOT / "models" / "resnet_bn.onnx"
SHIPPED_DATA = ROOT / "models" / "digits_test.npz"

BATCH = 128
TARGET_RATIO = 1.5
TARGET_CONVERT_S = 20.0
OPSET = 17
# Bump when the generator code changes so stale cache files are not reused.
GEN_VERSION = 1
GENERATED = {
    "resnet20": f"resnet20_cifar_v{GEN_VERSION}.onnx",
    "resnet50": f"resnet50_v{GEN_VERSION}.onnx",
    "resnet18": f"resnet18_v{GEN_VERSION}.onnx",  # used by bench_chip.py
}


# --------------------------------------------------------------------------- generation
# Runs only in the `_generate` child process (torch is imported there, never here).


def _generate(kind: str, out: Path) -> None:
    import torch
    import torch.nn as nn

    torch.manual_seed(0)

    def conv_bn(cin: int, cout: int, k: int, stride: int = 1) -> list[nn.Module]:
        return [nn.Conv2d(cin, cout, k, stride, padding=k // 2, bias=False), nn.BatchNorm2d(cout)]

    class Basic(nn.Module):
        def __init__(self, cin: int, cout: int, stride: int):
            super().__init__()
            self.body = nn.Sequential(*conv_bn(cin, cout, 3, stride), nn.ReLU(), *conv_bn(cout, cout, 3))
            self.short = nn.Sequential(*conv_bn(cin, cout, 1, stride)) if stride != 1 or cin != cout else nn.Identity()
            self.relu = nn.ReLU()

        def forward(self, x):
            return self.relu(self.body(x) + self.short(x))

    class Bottleneck(nn.Module):
        def __init__(self, cin: int, planes: int, stride: int):
            super().__init__()
            cout = planes * 4
            self.body = nn.Sequential(
                *conv_bn(cin, planes, 1), nn.ReLU(),
                *conv_bn(planes, planes, 3, stride), nn.ReLU(),  # torchvision v1.5: stride on the 3x3
                *conv_bn(planes, cout, 1),
            )
            self.short = nn.Sequential(*conv_bn(cin, cout, 1, stride)) if stride != 1 or cin != cout else nn.Identity()
            self.relu = nn.ReLU()

        def forward(self, x):
            return self.relu(self.body(x) + self.short(x))

    if kind == "resnet20":
        layers: list[nn.Module] = [*conv_bn(3, 16, 3), nn.ReLU()]
        cin = 16
        for i, width in enumerate((16, 32, 64)):
            for j in range(3):
                layers.append(Basic(cin, width, 2 if (i > 0 and j == 0) else 1))
                cin = width
        layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(64, 10)]
        shape = (1, 3, 32, 32)
    elif kind == "resnet18":  # torchvision ResNet-18 shape: basic blocks [2, 2, 2, 2]
        layers = [*conv_bn(3, 64, 7, 2), nn.ReLU(), nn.MaxPool2d(3, 2, 1)]
        cin = 64
        for i, width in enumerate((64, 128, 256, 512)):
            for j in range(2):
                layers.append(Basic(cin, width, 2 if (i > 0 and j == 0) else 1))
                cin = width
        layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(512, 1000)]
        shape = (1, 3, 224, 224)
    elif kind == "resnet50":
        layers = [*conv_bn(3, 64, 7, 2), nn.ReLU(), nn.MaxPool2d(3, 2, 1)]
        cin = 64
        for i, (planes, blocks) in enumerate(zip((64, 128, 256, 512), (3, 4, 6, 3))):
            for j in range(blocks):
                layers.append(Bottleneck(cin, planes, 2 if (i > 0 and j == 0) else 1))
                cin = planes * 4
        layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(2048, 1000)]
        shape = (1, 3, 224, 224)
    else:
        raise SystemExit(f"unknown model kind {kind!r}")
    model = nn.Sequential(*layers)
    randomise_bn(model)
    n_params = sum(p.numel() for p in model.parameters())
    with tempfile.TemporaryDirectory(prefix="xbar-bench-gen-") as tmp:
        path = Path(tmp) / out.name
        torch.onnx.export(
            model, (torch.zeros(*shape),), str(path),
            dynamo=False, opset_version=OPSET, do_constant_folding=False,
            input_names=["input"], output_names=["logits"],
            dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}},
        )
        out.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, out.with_suffix(".tmp"))
        os.replace(out.with_suffix(".tmp"), out)
    print(json.dumps({"params": n_params}))


def randomise_bn(model) -> None:
    """Random BN statistics and affine (in place, torch's seeded generator), so that the kept
    BN nodes actually do something; then eval mode for export."""
    import torch
    import torch.nn as nn

    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.2, 0.2)
                m.running_mean.uniform_(-0.2, 0.2)
                m.running_var.uniform_(0.5, 2.0)
    model.eval()


def ensure_model(kind: str) -> tuple[Path, float | None]:
    """Path of the cached generated model; (re)generates it if missing. Returns generation time."""
    path = CACHE / GENERATED[kind]
    if path.exists():
        return path, None
    CACHE.mkdir(parents=True, exist_ok=True)
    print(f"  generating {path.relative_to(ROOT)} with torch (cached for later runs) ...", flush=True)
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, __file__, "_generate", kind, str(path)], capture_output=True, text=True)
    if proc.returncode != 0 or not path.exists():
        sys.stderr.write(proc.stdout + proc.stderr)
        raise SystemExit(f"generating {kind} failed (exit {proc.returncode})")
    return path, time.perf_counter() - t0


# --------------------------------------------------------------------------- conversion child


def _proc_status_kib(field: str) -> int | None:
    """VmHWM / VmRSS of this process in KiB from /proc/self/status (Linux), else None."""
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


def _convert_child(model: str, out_dir: str, mode: str) -> None:
    t_start = time.perf_counter()
    from xbar.bundle import load_bundle, save_bundle
    from xbar.converter import convert

    res: dict = {"import_s": time.perf_counter() - t_start}
    if mode == "tracemalloc":
        import tracemalloc

        tracemalloc.start()
        t0 = time.perf_counter()
        convert(model)
        res["convert_traced_s"] = time.perf_counter() - t0
        res["traced_peak_bytes"] = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        print("RESULT " + json.dumps(res))
        return
    res["rss_before_kib"] = _proc_status_kib("VmRSS")
    res["ru_maxrss_before_kib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    t0 = time.perf_counter()
    bundle = convert(model)
    res["convert_s"] = time.perf_counter() - t0
    res["hwm_convert_kib"] = _proc_status_kib("VmHWM")
    res["ru_maxrss_convert_kib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    res["params"] = bundle.manifest["summary"]["parameters"]
    res["analog_layers"] = bundle.manifest["summary"]["analog_layers"]
    res["tiles"] = bundle.manifest["summary"]["tiles_used"]
    path = Path(out_dir) / "model.xbar"
    t0 = time.perf_counter()
    save_bundle(bundle, path)
    res["save_s"] = time.perf_counter() - t0
    res["bundle_bytes"] = path.stat().st_size
    del bundle
    t0 = time.perf_counter()
    load_bundle(path)
    res["load_s"] = time.perf_counter() - t0
    res["hwm_end_kib"] = _proc_status_kib("VmHWM")
    print("RESULT " + json.dumps(res))


def bench_conversion(model: Path, runs: int, mode: str = "timed") -> list[dict]:
    results = []
    for _ in range(runs):
        with tempfile.TemporaryDirectory(prefix="xbar-bench-conv-") as tmp:
            t0 = time.perf_counter()
            proc = subprocess.Popen([sys.executable, __file__, "_convert", str(model), tmp, mode],
                                    stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            out, err = proc.communicate()
            wall = time.perf_counter() - t0
            if proc.returncode != 0:
                sys.stderr.write(out + err)
                raise SystemExit(f"conversion subprocess failed (exit {proc.returncode})")
            line = next(ln for ln in out.splitlines() if ln.startswith("RESULT "))
            res = json.loads(line[len("RESULT "):])
            res["process_s"] = wall
            results.append(res)
    return results


# --------------------------------------------------------------------------- machine noise


class ForeignLoad:
    """CPU time used by *other* processes while a section ran, from /proc/stat (Linux only).

    foreign = (all busy CPU time) - (this process + its waited-for children); reported as
    a fraction of the machine's capacity (wall time x CPUs). None where /proc/stat is absent.
    """

    def __enter__(self):
        self.start = self._snap()
        return self

    def __exit__(self, *exc):
        end = self._snap()
        self.value = None
        if self.start and end:
            busy = end[0] - self.start[0]
            total = end[1] - self.start[1]
            own = end[2] - self.start[2]
            if total > 0:
                self.value = max(0.0, (busy - own) / total)
        return False

    @staticmethod
    def _snap():
        try:
            with open("/proc/stat") as fh:
                f = [int(v) for v in fh.readline().split()[1:]]
        except (OSError, ValueError):
            return None
        hz = os.sysconf("SC_CLK_TCK")
        idle = f[3] + (f[4] if len(f) > 4 else 0)
        busy = sum(f[:8]) - idle
        me = resource.getrusage(resource.RUSAGE_SELF)
        ch = resource.getrusage(resource.RUSAGE_CHILDREN)
        own = me.ru_utime + me.ru_stime + ch.ru_utime + ch.ru_stime
        return busy / hz, (busy + idle) / hz, own

    def text(self) -> str:
        return "n/a" if self.value is None else f"{self.value:.0%}"


# --------------------------------------------------------------------------- inference


def _fmt_ms(s: float) -> str:
    return f"{s * 1e3:9.1f}"


def bench_inference(label: str, model: Path, x, reps: int, warmup: int, settle: float) -> dict:
    import numpy as np
    import onnxruntime as ort

    from xbar.converter import convert
    from xbar.runtime import Runtime

    t0 = time.perf_counter()
    rt = Runtime(convert(str(model)))
    t_conv = time.perf_counter() - t0
    so = ort.SessionOptions()  # defaults: ORT_ENABLE_ALL graph optimisations, intra_op_num_threads=0
    sess = ort.InferenceSession(str(model), so, providers=["CPUExecutionProvider"])
    feed_name = sess.get_inputs()[0].name
    run_x = lambda: rt.run({rt.input_names[0]: x})[rt.output_names[0]]  # noqa: E731
    run_o = lambda: sess.run(None, {feed_name: x})[0]  # noqa: E731

    y_x, y_o = run_x(), run_o()
    err = float(np.max(np.abs(y_x.astype(np.float64) - y_o)))
    scale = float(np.max(np.abs(y_o))) or 1.0
    for _ in range(warmup):
        run_x()
        run_o()
    tx, to = [], []
    with ForeignLoad() as load:
        for i in range(reps):
            order = ((run_x, tx), (run_o, to)) if i % 2 == 0 else ((run_o, to), (run_x, tx))
            for fn, acc in order:
                t = time.perf_counter()
                fn()
                acc.append(time.perf_counter() - t)
                # Let the other engine's worker threads go idle first: OpenBLAS threads keep
                # spinning for tens of ms after a call and would steal a core from the next one.
                time.sleep(settle)
    mx, mo = statistics.median(tx), statistics.median(to)
    return {
        "label": label, "model": model, "shape": list(x.shape), "reps": reps, "warmup": warmup,
        "xbar_med": mx, "ort_med": mo, "xbar_min": min(tx), "ort_min": min(to),
        "ratio": mx / mo, "ratio_min": min(tx) / min(to),
        "max_abs_err": err, "rel_err": err / scale, "convert_s": t_conv,
        "layers": len(rt.layers), "steps": len(rt.steps),
        "ort_threads": so.intra_op_num_threads, "foreign": load.text(),
    }


# --------------------------------------------------------------------------- header


def source_fingerprint() -> str:
    """sha256 over xbar's own .py sources (they change while others work), newest mtime."""
    import hashlib

    h = hashlib.sha256()
    files = sorted(p for d in ("xbar", "converter", "runtime") for p in (ROOT / d).rglob("*.py"))
    for p in files:
        h.update(str(p.relative_to(ROOT)).encode())
        h.update(p.read_bytes())
    newest = max((p.stat().st_mtime for p in files), default=0)
    stamp = _dt.datetime.fromtimestamp(newest).astimezone().isoformat(timespec="seconds")
    return f"{h.hexdigest()[:12]} over {len(files)} .py files (newest modified {stamp})"


def header(argv: list[str]) -> list[str]:
    import numpy as np
    import onnx
    import onnxruntime as ort

    try:
        nproc = subprocess.run(["nproc"], capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        nproc = str(len(os.sched_getaffinity(0)))
    try:
        from importlib.metadata import version

        torch_v = version("torch")
    except Exception:  # noqa: BLE001
        torch_v = "not installed"
    lines = [
        "xbar ideal-mode benchmark",
        f"command     : {shlex.join([Path(sys.executable).name] + [os.path.relpath(argv[0], os.getcwd())] + argv[1:])}",
        f"cwd         : {os.getcwd()}",
        f"date        : {_dt.datetime.now().astimezone().isoformat(timespec='seconds')}",
        f"host        : {platform.node()}  {platform.platform()}  {platform.processor() or platform.machine()}",
        f"nproc       : {nproc}   (os.cpu_count={os.cpu_count()}, loadavg at start={', '.join(f'{v:.2f}' for v in os.getloadavg())})",
        f"python      : {platform.python_version()}   numpy {np.__version__}   onnxruntime {ort.__version__}   "
        f"onnx {onnx.__version__}   torch {torch_v} (model generation only)",
        f"xbar source : {source_fingerprint()}",
        "ort threads : SessionOptions defaults (intra_op_num_threads=0 -> ORT picks one per physical core; "
        "graph_optimization_level=ORT_ENABLE_ALL)",
    ]
    env = {k: os.environ[k] for k in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS") if k in os.environ}
    try:
        from threadpoolctl import threadpool_info

        pools = [f"{p.get('internal_api')} {p.get('version')} num_threads={p.get('num_threads')}"
                 f"{' (' + p['threading_layer'] + ')' if p.get('threading_layer') not in (None, 'unknown') else ''}"
                 for p in threadpool_info()]
        lines.append(f"numpy BLAS  : {'; '.join(pools) or 'none found'}   (threadpoolctl)")
    except ImportError:
        lines.append("numpy BLAS  : threadpoolctl not installed; thread count not reported")
    if env:
        lines.append(f"thread env  : {env}")
    return lines


# --------------------------------------------------------------------------- main


def prepare_models() -> tuple[Path, Path]:
    """The ResNet-20 and ResNet-50 benchmark models (generated once, then cached), reported."""
    print("preparing models")
    paths = []
    for name in ("resnet20", "resnet50"):
        path, g = ensure_model(name)
        note = f"generated in {g:.1f} s" if g is not None else "cached"
        print(f"  {name}: {path.relative_to(ROOT)} ({path.stat().st_size / 2**20:.1f} MiB, {note})")
        paths.append(path)
    print(flush=True)
    return paths[0], paths[1]


def main(argv: list[str]) -> int:
    if len(argv) > 1 and argv[1] == "_generate":
        _generate(argv[2], Path(argv[3]))
        return 0
    if len(argv) > 1 and argv[1] == "_convert":
        _convert_child(argv[2], argv[3], argv[4])
        return 0

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="few repetitions, one conversion run (smoke test)")
    ap.add_argument("--reps", type=int, help="timed repetitions per engine and model (default: 60 shipped / 30 ResNet-20; 3 with --quick)")
    ap.add_argument("--settle", type=float, default=0.25,
                    help="idle seconds after every timed call, so one engine's spinning worker threads do not "
                         "slow the next call of the other (default 0.25; 0 = back-to-back)")
    ap.add_argument("--conv-runs", type=int, help="ResNet-50 conversion runs (default: 3, 1 with --quick)")
    args = ap.parse_args(argv[1:])
    reps = args.reps or (3 if args.quick else 60)
    reps_r20 = args.reps or (3 if args.quick else 30)  # ~10x the work per call of the shipped model
    warmup = 1 if args.quick else 5
    conv_runs = args.conv_runs or (1 if args.quick else 3)

    t_all = time.perf_counter()
    for line in header(argv):
        print(line)
    print(f"mode        : {'quick' if args.quick else 'full'}; warm-up {warmup}, timed reps {reps} (shipped) / {reps_r20} (ResNet-20) per engine "
          f"(interleaved, order alternating, {args.settle:g} s idle after each call), conversion runs {conv_runs}")
    print(flush=True)

    import numpy as np

    r20, r50 = prepare_models()

    x_digits = np.ascontiguousarray(np.load(SHIPPED_DATA)["x"][:BATCH].astype(np.float32))
    if x_digits.shape[0] != BATCH:
        raise SystemExit(f"{SHIPPED_DATA} has only {x_digits.shape[0]} samples; need {BATCH}")
    x_cifar = np.random.default_rng(0).standard_normal((BATCH, 3, 32, 32)).astype(np.float32)

    print("1. inference, ideal mode, batch 128 (times in ms)", flush=True)
    inf = [
        bench_inference("resnet_bn (shipped)", SHIPPED, x_digits, reps, warmup, args.settle),
        bench_inference("resnet20 (CIFAR, random)", r20, x_cifar, reps_r20, warmup, args.settle),
    ]
    hdr = (f"  {'model':<26} {'input':<16} {'reps':>4} {'xbar med':>9} {'ort med':>9} {'ratio':>6} {'target':>7} "
           f"{'status':<6} {'min-ratio':>9} {'max|dy|':>9} {'other load':>10}")
    print(hdr)
    print("  " + "-" * (len(hdr) - 2))
    bad = False
    for r in inf:
        status = "ok" if r["ratio"] <= TARGET_RATIO else "MISS"
        print(f"  {r['label']:<26} {'x'.join(map(str, r['shape'])):<16} {r['reps']:>4} {_fmt_ms(r['xbar_med'])} "
              f"{_fmt_ms(r['ort_med'])} {r['ratio']:5.2f}x {'<=' + format(TARGET_RATIO, '.1f') + 'x':>7} {status:<6} "
              f"{r['ratio_min']:8.2f}x {r['max_abs_err']:9.1e} {r['foreign']:>10}")
        if r["rel_err"] > 1e-3:
            bad = True
            print(f"  !! xbar and onnxruntime disagree on {r['label']}: max |dy| = {r['max_abs_err']:.3e} "
                  f"({r['rel_err']:.1e} of max |y|)")
    print("  ratio = median(xbar) / median(ort); min-ratio = min(xbar) / min(ort), less sensitive to machine noise.")
    print("  max|dy| = largest absolute difference between the xbar and onnxruntime outputs on this batch.")
    print("  other load = CPU time used by other processes during the timed loop, share of all cores (/proc/stat).")
    print(flush=True)

    print(f"2. conversion, ResNet-50-shaped model ({r50.relative_to(ROOT)}), {conv_runs} run(s), each in a fresh "
          f"subprocess", flush=True)
    with ForeignLoad() as conv_load:
        conv = bench_conversion(r50, conv_runs)
    traced = bench_conversion(r50, 1, "tracemalloc")[0]
    c0 = conv[0]

    def med(key: str) -> float | None:
        vals = [c[key] for c in conv if c.get(key) is not None]
        return statistics.median(vals) if vals else None

    def mib(kib: float | None) -> str:
        return "n/a" if kib is None else f"{kib / 2**10:.0f} MiB"

    convert_s = med("convert_s")
    status = "ok" if convert_s <= TARGET_CONVERT_S else "MISS"
    hwm, before = med("hwm_convert_kib"), med("rss_before_kib")
    rows = [
        ("parameters (bundle summary)", f"{c0['params'] / 1e6:.2f} M", ""),
        ("analog layers / tiles used", f"{c0['analog_layers']} / {c0['tiles']}", "128x128 tiles, differential"),
        ("ONNX file size", f"{r50.stat().st_size / 2**20:.1f} MiB", ""),
        ("convert(path) wall time, median", f"{convert_s:.2f} s",
         f"target <= {TARGET_CONVERT_S:.0f} s: {status}; runs: " + ", ".join(f"{c['convert_s']:.2f}" for c in conv)),
        ("peak RSS of converting process", mib(hwm), f"VmHWM after convert; {mib(before)} RSS before convert "
         "(interpreter + imports)"),
        ("peak RSS increase during convert", mib(None if hwm is None or before is None else hwm - before), ""),
        ("tracemalloc peak during convert", f"{traced['traced_peak_bytes'] / 2**20:.0f} MiB",
         f"separate run; traced convert took {traced['convert_traced_s']:.2f} s"),
        ("bundle size", f"{c0['bundle_bytes'] / 2**20:.1f} MiB", "zip, arrays stored uncompressed"),
        ("save_bundle time, median", f"{med('save_s'):.2f} s", "includes fsync"),
        ("load_bundle time, median", f"{med('load_s'):.2f} s", "includes sha256 verification"),
        ("peak RSS incl. save + load", mib(med("hwm_end_kib")), "VmHWM at the end of the child"),
        ("import xbar in child", f"{med('import_s'):.2f} s", "not part of convert time"),
    ]
    for name, value, note in rows:
        print(f"  {name:<40} {value:>12}   {note}")
    print("  peak RSS = VmHWM from /proc/self/status inside the conversion subprocess. getrusage ru_maxrss is NOT")
    print("  used: on Linux it inherits the parent's high-water mark across fork/exec (it reads "
          f"{mib(med('ru_maxrss_convert_kib'))} here, {mib(med('ru_maxrss_before_kib'))} already before convert).")
    print(f"  other load during the conversion runs: {conv_load.text()} of all cores.")
    print(flush=True)

    print("summary")
    for r in inf:
        print(f"  inference {r['label']:<26}: xbar/ort = {r['ratio']:.2f}x (target <= {TARGET_RATIO}x) "
              f"{'ok' if r['ratio'] <= TARGET_RATIO else 'MISS'}")
    print(f"  convert ResNet-50 (25.6M)           : {convert_s:.2f} s (target <= {TARGET_CONVERT_S:.0f} s) {status}")
    print(f"  total benchmark wall time           : {time.perf_counter() - t_all:.1f} s"
          f"   (loadavg at end: {', '.join(f'{v:.2f}' for v in os.getloadavg())})")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
