#!/usr/bin/env python
"""Evidence for a bias in the runtime's per-tile drift compensation, found by the encodings study.

    python benchmarks/tile_compensation_check.py [--seeds 8]

`drift_compensation = "tile"` (xbar.runtime.chip.build_tiles) reads a probe with every row of
the tile driven and sums every physical column, as programmed and at time t, and stores the
ratio. The sum covers the whole 128x128 tile, also the rows beyond the layer's K and the
columns beyond its positions, which inference never drives or reads. Those cells target
G_min = 0 S; programming noise clamped at 0 leaves them at ~0.1 µS on average (half-normal),
where the PCM drift exponent is largest (ν ≈ 0.1 against 0.049 for programmed devices), so in
a sparsely used tile they pull the ratio up: the layer is over-compensated.

Per layer (resnet_bn, pcm preset, 128x128 tiles, chips = seeds 0..S-1, first 128 test
samples) this prints the tile factor as the runtime computes it under drift + programming
noise, the factor of the same chip's drift draws without programming noise (then unused
cells are exactly 0 S and only programmed devices count), and the layer's product SNR with
the runtime's factor and with the latter swapped in (everything else — devices, drift,
read noise, IR drop, DAC, ADC — unchanged). Nothing in the runtime is changed.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
MODEL = ROOT / "models" / "resnet_bn.onnx"


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seeds", type=int, default=8)
    args = ap.parse_args(argv[1:])
    from threadpoolctl import threadpool_limits

    threadpool_limits(1, user_api="blas")
    from xbar.bundle import grid_conductance
    from xbar.converter import convert
    from xbar.data import load_dataset
    from xbar.hardware import ablate, preset
    from xbar.runtime import Runtime
    from xbar.runtime.layer import Layer
    from xbar.runtime.ranges import find_ranges
    from xbar.units import parse_time

    t_start = time.perf_counter()
    print(f"command: {' '.join(['python'] + argv)}; {args.seeds} chips; layers stem (K=9), shortcut (K=16), fc (K=32)")
    print(f"{'time':<4} {'encoding':<8} {'layer':<12} {'cells programmed':>17} {'tile factor':>12} {'w/o unused':>11} "
          f"{'SNR dB':>7} {'→ fixed':>8}")
    for tl in ("1d", "1y"):
        pcm = preset("pcm").override(t_inference=parse_time(tl))
        for name, kw in (("fixed", {}), ("AFP E=2", {"afp_exponents": 2}), ("AFP E=3", {"afp_exponents": 3})):
            b = convert(str(MODEL), crossbar=(128, 128), hardware=pcm, **kw)
            calib = load_dataset(ROOT / "models" / "digits_calib.npz", b.graph["inputs"][0])
            test = load_dataset(ROOT / "models" / "digits_test.npz", b.graph["inputs"][0])
            find_ranges(b, calib.x, pcm)
            for idx in (0, 5, 8):
                entry = b.layers[idx]
                rt, seen = Runtime(b), []
                rt.layers[idx].probe = lambda lyr, c, y: seen.append(c.copy())
                rt(test.x[:128])
                cols = np.concatenate(seen)
                ideal = cols.astype(np.float64) @ rt.layers[idx].matrix
                p_sig = float(np.sum(ideal ** 2))
                err, err_fixed, f_rt, f_ref = [], [], [], []
                for s in range(args.seeds):
                    def layer(spec):
                        return Layer(entry, b, spec, np.random.default_rng([s, 0, idx]), np.random.default_rng([s, 1, idx]))

                    chip = layer(pcm)
                    err.append(np.sum((chip.product(cols).astype(np.float64) - ideal) ** 2))
                    ref = layer(ablate(pcm, only=["drift"])).chip.tiles.comp
                    chip = layer(pcm)
                    f_rt.append(chip.chip.tiles.comp.mean())
                    f_ref.append(ref.mean())
                    chip.chip.tiles.comp[...] = ref
                    err_fixed.append(np.sum((chip.product(cols).astype(np.float64) - ideal) ** 2))
                cond = grid_conductance(b, entry)
                used = f"{int((cond > 0).sum()):,} of {cond.size:,}"
                print(f"{tl:<4} {name:<8} {entry['name'].split('/')[-2]:<12} {used:>17} {np.mean(f_rt):12.3f} "
                      f"{np.mean(f_ref):11.3f} {10 * np.log10(p_sig / np.mean(err)):7.1f} "
                      f"{10 * np.log10(p_sig / np.mean(err_fixed)):8.1f}", flush=True)
    print("tile factor: mean of the runtime's compensation factor; w/o unused: the same chips' factor when unused cells "
          "hold exactly 0 S (drift draws without programming noise); SNR dB: the layer's product SNR on the full preset; "
          "→ fixed: with that factor swapped in.")
    print(f"wall time {time.perf_counter() - t_start:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
