"""Bit-identity of two checkouts: bundle arrays (manifest sha256) and chip outputs.

Run `dump` with each checkout's own interpreter (from its folder, so `xbar` is that
checkout's), then `compare` the two files:

    cd /work/main && .venv/bin/python /path/to/benchmarks/compare_checkouts.py dump /tmp/main.npz
    cd /work/wt-x && .venv/bin/python benchmarks/compare_checkouts.py dump /tmp/x.npz
    .venv/bin/python benchmarks/compare_checkouts.py compare /tmp/main.npz /tmp/x.npz

`dump` converts two small depthwise models (64→64 3×3 and 128→128 5×5 stride 2; 40→80 3×3
with channel multiplier 2) and a group-2 convolution under differential, offset, row+column
placement, `--depthwise digital` and `packed`, analog floating point, bit slicing, 6-bit
weights with a percentile clip and 2 replicas, on 16×16 and 32×24 tiles, records every array's sha256 from each
bundle's manifest, and runs each bundle ideal and on pcm chips (plain, IR drop + 1 d drift,
frozen read noise, ADC noise, calibrated DAC; seeds 0, 1). `--models a,b` adds the
bench_scale.py models (their cached ONNX; arrays only, both depthwise policies).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import zipfile
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent


def _small_models(folder: Path) -> dict[str, Path]:
    import torch
    import torch.nn as nn

    def export(net, name):
        p = folder / f"{name}.onnx"
        net.eval()
        torch.onnx.export(net, (torch.zeros(1, 3, 8, 8),), str(p), dynamo=False, opset_version=17,
                          input_names=["x"], output_names=["y"], dynamic_axes={"x": {0: "b"}, "y": {0: "b"}})
        return p

    torch.manual_seed(3)
    dw = nn.Sequential(nn.Conv2d(3, 64, 3, padding=1), nn.ReLU(), nn.Conv2d(64, 64, 3, padding=1, groups=64), nn.ReLU(),
                       nn.Conv2d(64, 128, 1), nn.ReLU(), nn.Conv2d(128, 128, 5, padding=2, stride=2, groups=128),
                       nn.ReLU(), nn.Flatten(), nn.Linear(128 * 16, 10))
    mult = nn.Sequential(nn.Conv2d(3, 40, 3, padding=1), nn.ReLU(), nn.Conv2d(40, 80, 3, padding=1, groups=40),
                         nn.ReLU(), nn.Flatten(), nn.Linear(80 * 64, 10))
    grouped = nn.Sequential(nn.Conv2d(3, 32, 3, padding=1), nn.ReLU(), nn.Conv2d(32, 48, 3, padding=1, groups=2),
                            nn.ReLU(), nn.Flatten(), nn.Linear(48 * 64, 10))
    return {"dw": export(dw, "dw"), "dwmult": export(mult, "dwmult"), "group2": export(grouped, "group2")}


def _hashes(bundle, folder: Path) -> dict[str, str]:
    from xbar.bundle import save_bundle

    path = folder / "b.xbar"
    save_bundle(bundle, path, force=True)
    manifest = json.loads(zipfile.ZipFile(path).read("manifest.json"))
    path.unlink()
    return {key: a["sha256"] for key, a in manifest["arrays"].items()}


def dump(out: str, models: list[str]) -> None:
    from xbar.converter import convert
    from xbar.hardware import preset
    from xbar.runtime import Runtime

    outputs: dict[str, np.ndarray] = {}
    hashes: dict[str, dict[str, str]] = {}
    x = np.random.default_rng(0).standard_normal((5, 3, 8, 8)).astype(np.float32)
    specs = {"pcm": {}, "ir": {"circuit.ir_drop": True, "circuit.r_wire": 1.0, "t_inference": 86400.0},
             "frozen": {"device.read_noise_mode": "frozen"}, "adcnoise": {"adc.noise": 0.01},
             "cal": {"dac.range": "calibrated"}}
    options = {"diff": {}, "offset": {"encoding": "offset"},
               "rearr": {"rearrange": "ir-drop", "rearrange_rows": "ir-drop", "hardware": preset("pcm")},
               "digital": {"depthwise": "digital"}, "packed": {"depthwise": "packed"},
               "afp": {"afp_exponents": 3, "afp_step": 2, "hardware": preset("pcm")},
               "slices": {"bit_slices": 2, "bits_per_cell": 3}, "w6clip": {"weight_bits": 6, "weight_clip_percentile": 99.0},
               "rep2": {"replicas": 2}}
    with tempfile.TemporaryDirectory(prefix="xbar-compare-") as tmp:
        folder = Path(tmp)
        for mname, model in _small_models(folder).items():
            for oname, opts in options.items():
                for tiles in ((16, 16), (32, 24)):
                    tag = f"{mname}/{oname}/{tiles[0]}x{tiles[1]}"
                    b = convert(model, crossbar=tiles, **opts)
                    hashes[tag] = _hashes(b, folder)
                    outputs[f"{tag}/ideal"] = Runtime(b)(x)
                    for sname, s in specs.items():
                        spec = preset("pcm").override(s) if s else preset("pcm")
                        for seed in (0, 1):
                            outputs[f"{tag}/{sname}/{seed}"] = Runtime(b, spec, seed=seed)(x)
        for m in models:
            for dw in ("tiles", "digital", "packed"):
                b = convert(str(HERE / ".cache" / f"{m}_v1.onnx"), crossbar=(128, 128),
                            hardware=preset("pcm").override(t_inference=86400.0), depthwise=dw)
                hashes[f"{m}/{dw}"] = _hashes(b, folder)
    np.savez(out, **outputs)
    Path(out + ".json").write_text(json.dumps(hashes))
    print(f"{len(hashes)} bundles, {sum(len(h) for h in hashes.values())} arrays, {len(outputs)} outputs -> {out}")


def compare(a: str, b: str) -> int:
    ha, hb = json.loads(Path(a + ".json").read_text()), json.loads(Path(b + ".json").read_text())
    oa, ob = np.load(a), np.load(b)
    bad = [k for k in ha if k not in hb or ha[k] != hb[k]]
    bad += [k for k in oa.files if k not in ob.files or not np.array_equal(oa[k], ob[k])]
    print(f"{len(ha)} bundles ({sum(len(h) for h in ha.values())} arrays), {len(oa.files)} outputs compared; "
          f"differ: {bad or 'none'}")
    return 1 if bad or set(ha) != set(hb) or set(oa.files) != set(ob.files) else 0


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    d = sub.add_parser("dump")
    d.add_argument("out")
    d.add_argument("--models", default="", help="bench_scale.py models to add (arrays only)")
    c = sub.add_parser("compare")
    c.add_argument("a")
    c.add_argument("b")
    args = ap.parse_args()
    if args.cmd == "dump":
        dump(args.out, [m for m in args.models.split(",") if m])
        sys.exit(0)
    sys.exit(compare(args.a, args.b))
