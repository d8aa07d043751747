"""Recurrent models on a chip: onnxruntime vs xbar ideal vs xbar pcm chip, and where a
chip's time goes per time step (issue 10).

    .venv/bin/python benchmarks/bench_recurrent.py                 # LSTM and GRU, defaults below
    .venv/bin/python benchmarks/bench_recurrent.py --cells lstm --repeats 5

Model: torch nn.LSTM / nn.GRU (2 layers, hidden 256, input 64) over a sequence of 50 steps,
batch 32, then a Linear(256, 10) on the last step's output; seeded random weights, exported by
torch in a child process (opset 17, time-major input (T, B, I)) to benchmarks/.cache/.
Converted with 128×128 tiles for the pcm preset; the chip is pcm at t = 1 d with IR drop
(preset('pcm') as bench_scale.py uses it), seed 0. Every path runs on the same input in one
process, `--repeats` times each (first call of each path is a warm-up and not counted);
wall and CPU time per call are reported (median), and the ratios of the medians.

Per-step breakdown (one further chip call, instrumented): time inside the recurrent (R)
layers' calls, split into the crossbar product (analog.tiled_product: the per-row-block
products, read-noise draws, ADC), the DAC and everything else of a layer call (chunking,
noise-stream spawn, column combine, affine); the input (W) layers' one call per sequence;
and the digital gate arithmetic of the loop (the rest of Recurrent.__call__).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from bench_ideal import CACHE, OPSET, header  # noqa: E402

GEN_VERSION = 1
T_INFERENCE = 86400.0
SHAPE = {"layers": 2, "hidden": 256, "input": 64, "steps": 50, "batch": 32, "classes": 10}


def _generate(cell: str, out: Path) -> None:
    import torch
    import torch.nn as nn

    torch.manual_seed(0)
    s = SHAPE
    rnn_cls = {"lstm": nn.LSTM, "gru": nn.GRU}[cell]

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.rnn = rnn_cls(s["input"], s["hidden"], num_layers=s["layers"])
            self.head = nn.Linear(s["hidden"], s["classes"])

        def forward(self, x):  # (T, B, I)
            y, _ = self.rnn(x)
            return self.head(y[-1])

    net = Net().eval()
    with tempfile.TemporaryDirectory(prefix="xbar-bench-gen-") as tmp:
        path = Path(tmp) / out.name
        torch.onnx.export(net, (torch.zeros(s["steps"], 1, s["input"]),), str(path), dynamo=False,
                          opset_version=OPSET, input_names=["x"], output_names=["y"],
                          dynamic_axes={"x": {1: "batch"}, "y": {0: "batch"}})
        out.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, out.with_suffix(".tmp"))
        os.replace(out.with_suffix(".tmp"), out)


def ensure(cell: str) -> Path:
    s = SHAPE
    path = CACHE / f"{cell}_{s['layers']}x{s['hidden']}_t{s['steps']}_v{GEN_VERSION}.onnx"
    if not path.exists():
        proc = subprocess.run([sys.executable, __file__, "_generate", cell, str(path)], capture_output=True, text=True)
        if proc.returncode != 0 or not path.exists():
            sys.stderr.write(proc.stdout + proc.stderr)
            raise SystemExit(f"generating {cell} failed")
    return path


def _timed(fn, repeats: int) -> tuple[list[float], list[float], object]:
    out = fn()  # warm-up (thread pool, BLAS, first-call allocations)
    wall, cpu = [], []
    for _ in range(repeats):
        c0, t0 = time.process_time(), time.perf_counter()
        out = fn()
        wall.append(time.perf_counter() - t0)
        cpu.append(time.process_time() - c0)
    return wall, cpu, out


def _breakdown(rt, run) -> dict[str, float]:
    """Wall time of one chip call split by where it is spent (see the module docstring)."""
    from xbar.runtime import analog, layer as layer_mod, recurrent as rec_mod

    acc = {k: 0.0 for k in ("tiled_product", "dac", "R_calls", "W_calls", "recurrent_nodes", "total")}
    acc.update({k + "_cpu": 0.0 for k in list(acc)})
    acc["R_call_count"] = 0
    clock = time.process_time  # the whole process's CPU (BLAS threads included)

    def add(key: str, t0: float, c0: float) -> None:
        acc[key] += time.perf_counter() - t0
        acc[key + "_cpu"] += clock() - c0
    r_layers = set()
    inside = [""]  # "R" while a recurrent layer's call runs: only those products are split out
    orig_tp, orig_dac = layer_mod.tiled_product, layer_mod.Layer._dac
    orig_call, orig_rec = layer_mod.Layer.__call__, rec_mod.Recurrent.__call__

    def tp(*a, **k):
        t0, c0 = time.perf_counter(), clock()
        try:
            return orig_tp(*a, **k)
        finally:
            if inside[0] == "R":
                add("tiled_product", t0, c0)

    def dac(self, *a, **k):
        t0, c0 = time.perf_counter(), clock()
        try:
            return orig_dac(self, *a, **k)
        finally:
            if inside[0] == "R":
                add("dac", t0, c0)

    def call(self, *a, **k):
        key = "R_calls" if id(self) in r_layers else "W_calls"
        inside[0] = key[0]
        t0, c0 = time.perf_counter(), clock()
        try:
            return orig_call(self, *a, **k)
        finally:
            inside[0] = ""
            add(key, t0, c0)
            acc["R_call_count"] += id(self) in r_layers

    def rec(self, *a, **k):
        for w, r, r_h in self.layers:
            r_layers.update(id(x) for x in (r, r_h) if x is not None)
        t0, c0 = time.perf_counter(), clock()
        try:
            return orig_rec(self, *a, **k)
        finally:
            add("recurrent_nodes", t0, c0)

    layer_mod.tiled_product, layer_mod.Layer._dac = tp, dac
    layer_mod.Layer.__call__, rec_mod.Recurrent.__call__ = call, rec
    try:
        t0, c0 = time.perf_counter(), clock()
        run()
        add("total", t0, c0)
    finally:
        layer_mod.tiled_product, layer_mod.Layer._dac = orig_tp, orig_dac
        layer_mod.Layer.__call__, rec_mod.Recurrent.__call__ = orig_call, orig_rec
    return acc


def _child(model: str, repeats: int) -> dict:
    import numpy as np
    import onnxruntime as ort

    from xbar.converter import convert
    from xbar.hardware import preset
    from xbar.runtime import Runtime

    s = SHAPE
    spec = preset("pcm").override(t_inference=T_INFERENCE)
    t0 = time.perf_counter()
    bundle = convert(model, crossbar=(128, 128), hardware=spec)
    res = {"convert_s": time.perf_counter() - t0, "tiles": bundle.manifest["summary"]["tiles_used"],
           "analog_weights": bundle.manifest["summary"]["analog_weights"]}
    x = np.random.default_rng(0).standard_normal((s["steps"], s["batch"], s["input"])).astype(np.float32)
    sess = ort.InferenceSession(model, providers=["CPUExecutionProvider"])
    iname = sess.get_inputs()[0].name
    ideal = Runtime(bundle)
    c0, t0 = time.process_time(), time.perf_counter()
    chip = Runtime(bundle, spec, seed=0)
    res["prep_s"], res["prep_cpu_s"] = time.perf_counter() - t0, time.process_time() - c0
    name = chip.input_names[0]
    for key, fn in (("ort", lambda: sess.run(None, {iname: x})[0]),
                    ("ideal", lambda: ideal.run({name: x})[ideal.output_names[0]]),
                    ("chip", lambda: chip.run({name: x})[chip.output_names[0]])):
        wall, cpu, out = _timed(fn, repeats)
        res[key] = {"wall": wall, "cpu": cpu}
        res[key + "_out"] = out
    res["ideal_vs_ort_maxabs"] = float(np.abs(res["ideal_out"] - res["ort_out"]).max())
    res["chip_vs_ideal_rel"] = float(np.linalg.norm(res["chip_out"] - res["ideal_out"])
                                     / np.linalg.norm(res["ideal_out"]))
    for key in ("ort_out", "ideal_out", "chip_out"):
        del res[key]
    res["breakdown"] = _breakdown(chip, lambda: chip.run({name: x}))
    return res


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cells", default="lstm,gru")
    ap.add_argument("--repeats", type=int, default=5, help="timed calls per path (after one warm-up)")
    args = ap.parse_args(argv)
    for line in header(["benchmarks/bench_recurrent.py", *argv]):
        print(line)
    s = SHAPE
    print(f"model       : {s['layers']} layers, hidden {s['hidden']}, input {s['input']}, {s['steps']} steps, "
          f"batch {s['batch']}; pcm preset at t = 1 d (IR drop on), 128x128 tiles, seed 0")
    for cell in args.cells.split(","):
        model = ensure(cell)
        proc = subprocess.run([sys.executable, __file__, "_child", str(model), str(args.repeats)],
                              capture_output=True, text=True)
        if proc.returncode != 0:
            sys.stderr.write(proc.stdout[-3000:] + proc.stderr[-3000:])
            raise SystemExit(f"{cell} failed")
        r = json.loads(next(ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT "))[7:])
        med = {k: statistics.median(r[k]["wall"]) for k in ("ort", "ideal", "chip")}
        cpu = {k: statistics.median(r[k]["cpu"]) for k in ("ort", "ideal", "chip")}
        print(f"\n{cell.upper()}: {r['analog_weights']:,} analog weights on {r['tiles']} tiles; convert "
              f"{r['convert_s']:.1f} s, chip preparation {r['prep_s']:.1f} s (CPU {r['prep_cpu_s']:.1f} s)")
        for k in ("ort", "ideal", "chip"):
            print(f"  {k:6s} per call: median {med[k] * 1e3:8.1f} ms (CPU {cpu[k] * 1e3:8.1f} ms); all: "
                  + ", ".join(f"{w * 1e3:.1f}" for w in r[k]["wall"]) + " ms")
        print(f"  ratios (median wall): ideal/ort {med['ideal'] / med['ort']:.1f}x, chip/ort "
              f"{med['chip'] / med['ort']:.1f}x, chip/ideal {med['chip'] / med['ideal']:.1f}x; "
              f"ideal vs ort max |diff| {r['ideal_vs_ort_maxabs']:.1e}, chip vs ideal rel. error "
              f"{r['chip_vs_ideal_rel']:.3f}")
        b = r["breakdown"]
        steps = b["R_call_count"]

        def part(key: str) -> str:  # per step and layer: wall (CPU) in µs
            if key == "rest":
                w = b["R_calls"] - b["tiled_product"] - b["dac"]
                c = b["R_calls_cpu"] - b["tiled_product_cpu"] - b["dac_cpu"]
            elif key == "gates":
                w = b["recurrent_nodes"] - b["R_calls"] - b["W_calls"]
                c = b["recurrent_nodes_cpu"] - b["R_calls_cpu"] - b["W_calls_cpu"]
            else:
                w, c = b[key], b[key + "_cpu"]
            return f"{w / steps * 1e6:.0f} ({c / steps * 1e6:.0f})"

        print(f"  one instrumented chip call: {b['total'] * 1e3:.1f} ms (CPU {b['total_cpu'] * 1e3:.1f} ms), {steps} "
              f"recurrent-layer calls (layers x steps). Per step and layer, wall (CPU) us: R layer call "
              f"{part('R_calls')} = tiled_product {part('tiled_product')} + DAC {part('dac')} + rest of the call "
              f"{part('rest')}; gate arithmetic and loop {part('gates')}. W layers, once per sequence and layer: "
              f"{b['W_calls'] * 1e3:.1f} ms (CPU {b['W_calls_cpu'] * 1e3:.1f}) in all; outside the recurrent "
              f"nodes {(b['total'] - b['recurrent_nodes']) * 1e3:.1f} ms")
    return 0


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "_generate":
        _generate(sys.argv[2], Path(sys.argv[3]))
        sys.exit(0)
    if len(sys.argv) > 1 and sys.argv[1] == "_child":
        print("RESULT " + json.dumps(_child(sys.argv[2], int(sys.argv[3]))))
        sys.exit(0)
    sys.exit(main(sys.argv[1:]))
