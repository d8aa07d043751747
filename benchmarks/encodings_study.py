#!/usr/bin/env python
"""Encodings study: fixed point, analog floating point, replicas, bit slicing and column placement.

    python benchmarks/encodings_study.py [--seeds 0-9] [--blocks main,folded,slicing,irdrop]
                                         [--quick] [--blas-threads 1] [--no-cache] [--batch-size 128]
                                         [--merge] [--replot] [--no-plot] [--out DIR]

What the encodings of issue 9 buy on the shipped models under the `pcm` preset, and what
they cost. Every point is an encoding (a `convert()` recipe) under a hardware condition;
for every chip instance (seed) of a point the script measures, on the test split
(models/digits_test.npz, 450 samples):

    before   the uncalibrated chip, Runtime(bundle, spec, seed): test accuracy and the
             per-layer output SNR
    after    calibrate(bundle, x_calib, spec, seed, 'affine') on the calibration split
             (models/digits_calib.npz, 512 samples) at the evaluation time, then the same
             chip (same seed, same spec): test accuracy and per-layer SNR

Per-layer SNR is the definition of `xbar eval --per-layer` (xbar.runtime.diagnose): each
analog layer's product (before its per-output affine) against the ideal product of the very
inputs it received on that chip, 10·log10(Σ ideal² / Σ error²) over all of a layer's output
values, here over the whole test split. Calibration changes the affine, not the product, so
it barely moves this SNR (inputs differ a little once earlier layers are calibrated). What it
can reach per layer is shown as `fit`: the SNR left after the best per-output gain and offset
(least squares, each layer in isolation, on the uncalibrated chip), the most an `affine`
calibration could make of that layer. `xbar.runtime.diagnose` itself runs on seed 0 of the
main and slicing points (first 256 test samples, as `eval --per-layer` does) for its dominant
non-ideality per layer; a startup self-check confirms that this script's SNR equals
diagnose's on the same inputs.

Every bundle is converted with `hardware=` the condition's spec (analog floating point weighs
its device noise at its time; placement sees its circuit) and gets DAC/ADC ranges from the
calibration split (find_ranges, as `convert --calib-data`). Identical bundles (same
conductances and column map, e.g. 'balance' where a layer has one column block) are converted
and ranged once; a point whose bundle and condition equal an earlier point's reuses its chips
and says so.

Encodings (128×128 tiles, differential pairs, unquantised weights unless stated):

    fixed    fixed point, one position per output
    rep2/3   fixed point on 2/3 averaged replicas (gain 1/R): the equal-cell baseline
    afp2/3   analog floating point, E = 2/3 exponents, step k = 2 (gains 1, 1/4, 1/16)
    w9       fixed point quantised to 9 signed bits (255 magnitude levels)
    bs2x4    bit slicing, 2 slices × 4 bits per cell (8 magnitude bits + sign = w9's levels)
    bs4x2    bit slicing, 4 slices × 2 bits per cell (same levels)

Conditions (from preset('pcm'); 10 chips = seeds 0-9 unless deterministic):

    pr_1d       programming + read noise alone at 1 d (ablate only=[programming, read]:
                no drift, IR drop, DAC, ADC)
    full_1d     the full pcm preset at 1 d (programming, drift with tile compensation, read
                noise, IR drop r_wire = 1 Ω, 8-bit DAC abs-max and ADC 99.99th percentile)
    full_1y     the same at 1 y
    full_1d_r5  the full preset at 1 d with r_wire = 5 Ω
    ir_r1/r5    IR drop alone (ablate only=[ir-drop]), r_wire 1 / 5 Ω: nothing random, so one
                chip (seed 0) is exact; a startup self-check confirms seeds 0 and 1 give
                bit-identical logits

Blocks:

    main     resnet_bn (BN kept): fixed, rep2, afp2, rep3, afp3 × pr_1d, full_1d, full_1y
    folded   resnet_folded (BN folded at export): fixed, afp2, afp3 × full_1d
    slicing  resnet_bn: w9, bs2x4 × pr_1d, full_1d; bs4x2 × full_1d
    theory   the converter's closed-form weight-noise power per encoding (no chips), beside the
             measured SNR gains
    irdrop   resnet_bn: fixed, afp2 × placement none / ir-drop / balance / ir-drop+rows
             (--rearrange-rows ir-drop as well) × 64×64, 128×128, 256×256 tiles × ir_r1,
             ir_r5 (one exact chip each); and fixed, afp2 × none / ir-drop / ir-drop+rows ×
             full_1d (r_wire 1 Ω) and full_1d_r5 on 128×128 (10 chips)

Speed-ups that change no number: chip construction is memoised (calibration_study.TileCache,
with its startup self-check), BLAS is held to --blas-threads threads (default 1).

--merge adds or replaces the selected blocks in an existing JSON; --replot rewrites the
tables (the marked part of encodings_study.md) and the PNG from the JSON alone.

Writes benchmarks/figures/encodings_study.json (every per-chip number, incrementally),
the generated tables into benchmarks/figures/encodings_study.md (between the
`<!-- tables -->` markers; the prose around them is kept) and, if matplotlib is importable,
benchmarks/figures/encodings_study.png.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import hashlib
import json
import math
import os
import platform
import shlex
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from study_io import finish, rel_path, source_commit
from typing import Any

import numpy as np

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
MODELS = {"resnet_bn": ROOT / "models" / "resnet_bn.onnx", "resnet_folded": ROOT / "models" / "resnet_folded.onnx"}
TEST = ROOT / "models" / "digits_test.npz"
CALIB = ROOT / "models" / "digits_calib.npz"
FIGURES = HERE / "figures"
DAY = 86400.0
BLOCKS = ("main", "folded", "slicing", "irdrop", "theory")
# Column placement policies, plus "ir-drop+rows": ir-drop columns and --rearrange-rows ir-drop together.
PLACEMENTS = ("none", "ir-drop", "balance", "ir-drop+rows")


def placement_options(name: str) -> dict[str, str]:
    """convert() keyword arguments of a study placement name."""
    columns, _, rows = name.partition("+")
    return {"rearrange": columns, "rearrange_rows": "ir-drop" if rows == "rows" else "none"}
UNBOUNDED = (-math.inf, math.inf)
MARK_BEGIN, MARK_END = "<!-- tables: generated by benchmarks/encodings_study.py -->", "<!-- /tables -->"

# --------------------------------------------------------------------------- encodings and conditions

VARIANTS: dict[str, tuple[str, dict[str, Any]]] = {
    "fixed": ("fixed point", {}),
    "rep2": ("fixed, 2 replicas", {"replicas": 2}),
    "afp2": ("AFP E=2", {"afp_exponents": 2}),
    "rep3": ("fixed, 3 replicas", {"replicas": 3}),
    "afp3": ("AFP E=3", {"afp_exponents": 3}),
    "w9": ("fixed, 9-bit weights", {"weight_bits": 9}),
    "bs2x4": ("bit slicing 2×4 b", {"bit_slices": 2, "bits_per_cell": 4}),
    "bs4x2": ("bit slicing 4×2 b", {"bit_slices": 4, "bits_per_cell": 2}),
}


def year() -> float:
    from xbar.units import parse_time

    return parse_time("1y")


def conditions() -> dict[str, tuple[str, Any]]:
    from xbar.hardware import ablate, preset

    pcm = preset("pcm")
    return {
        "pr_1d": ("prog. + read noise, 1 d", ablate(pcm, only=["programming", "read"]).override(t_inference=DAY)),
        "full_1d": ("full pcm, 1 d", pcm.override(t_inference=DAY)),
        "full_1y": ("full pcm, 1 y", pcm.override(t_inference=year())),
        "full_1d_r5": ("full pcm, 1 d, r_wire 5 Ω", pcm.override({"t_inference": DAY, "circuit.r_wire": 5.0})),
        "ir_r1": ("IR drop alone, r_wire 1 Ω", ablate(pcm, only=["ir-drop"])),
        "ir_r5": ("IR drop alone, r_wire 5 Ω", ablate(pcm, only=["ir-drop"]).override({"circuit.r_wire": 5.0})),
    }


@dataclass(frozen=True)
class Point:
    block: str
    model: str
    variant: str
    cond: str
    crossbar: int = 128
    rearrange: str = "none"

    @property
    def key(self) -> str:
        return f"{self.model}/{self.variant}/{self.crossbar}/{self.rearrange}/{self.cond}"


def points(blocks: list[str]) -> list[Point]:
    out: list[Point] = []
    enc5 = ("fixed", "rep2", "afp2", "rep3", "afp3")
    if "main" in blocks:
        out += [Point("main", "resnet_bn", v, c) for c in ("pr_1d", "full_1d", "full_1y") for v in enc5]
    if "folded" in blocks:
        out += [Point("folded", "resnet_folded", v, "full_1d") for v in ("fixed", "afp2", "afp3")]
    if "slicing" in blocks:
        out += [Point("slicing", "resnet_bn", v, c) for c in ("pr_1d", "full_1d") for v in ("w9", "bs2x4")]
        out += [Point("slicing", "resnet_bn", "bs4x2", "full_1d")]
    if "irdrop" in blocks:
        out += [Point("irdrop", "resnet_bn", v, c, size, r) for c in ("ir_r1", "ir_r5") for size in (64, 128, 256)
                for v in ("fixed", "afp2") for r in PLACEMENTS]
        out += [Point("irdrop", "resnet_bn", v, c, 128, r) for c in ("full_1d", "full_1d_r5") for v in ("fixed", "afp2")
                for r in ("none", "ir-drop", "ir-drop+rows")]
    return out


def is_deterministic(spec) -> bool:
    d = spec.device
    random_device = d.model != "ideal" and (d.prog_noise or d.drift or d.read_noise)
    faults = spec.faults.p_stuck_at_gmin > 0 or spec.faults.p_stuck_at_gmax > 0
    return not (random_device or faults or spec.adc.noise > 0)


# --------------------------------------------------------------------------- measuring one chip


def layer_snr(y: np.ndarray, ideal: np.ndarray) -> tuple[float, float]:
    """(SNR dB of the product, SNR dB left after the best per-output gain and offset)."""
    y, ideal = y.astype(np.float64), ideal.astype(np.float64)
    p_sig = float(np.sum(ideal ** 2))
    p_err = float(np.sum((y - ideal) ** 2))
    yc, ic = y - y.mean(0), ideal - ideal.mean(0)
    var = (yc ** 2).mean(0)
    a = np.where(var > 0, (yc * ic).mean(0) / np.where(var > 0, var, 1), 1.0)
    b = ideal.mean(0) - a * y.mean(0)
    p_res = float(np.sum((a * y + b - ideal) ** 2))

    def db(p: float) -> float:
        return float("inf") if p == 0 else 10 * math.log10(max(p_sig, 1e-300) / p)

    return db(p_err), db(p_res)


def run_with_snr(bundle, spec, seed: int, x: np.ndarray, batch_size: int) -> tuple[np.ndarray, list[dict]]:
    """Logits of chip `seed` on x and, per analog layer, its output SNR (and after a per-output fit)."""
    from xbar.runtime import Runtime
    from xbar.runtime.evaluate import predict

    rt = Runtime(bundle, spec, seed)
    seen: dict[int, list[tuple[np.ndarray, np.ndarray]]] = {}
    for i, layer in enumerate(rt.layers):
        if layer.chip is not None:
            layer.probe = (lambda idx: lambda lyr, cols, y: seen.setdefault(idx, []).append(
                (y.copy(), cols @ lyr.matrix)))(i)
    out = predict(rt, x, batch_size)
    layers = []
    for i, parts in seen.items():
        snr, fit = layer_snr(np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts]))
        layers.append({"layer": rt.layers[i].name, "snr_db": snr, "fit_db": fit})
    return out, layers


def finite_mean(values: list[float]) -> float:
    v = [x for x in values if math.isfinite(x)]
    return float(np.mean(v)) if v else float("inf")


class Chips:
    def __init__(self, calib, test, batch_size: int):
        self.calib, self.test, self.bs = calib, test, batch_size

    def accuracy(self, out: np.ndarray) -> float:
        from xbar.runtime.evaluate import accuracy

        return accuracy(out, self.test.y)

    def one(self, bundle, spec, seed: int, clean_out: np.ndarray) -> dict:
        from xbar.runtime.calibrate import calibrate

        t0 = time.perf_counter()
        out, layers = run_with_snr(bundle, spec, seed, self.test.x, self.bs)
        tc = time.perf_counter()
        cb, rec = calibrate(bundle, self.calib.x, spec, seed, "affine", y=self.calib.y, batch_size=self.bs)
        cal_s = time.perf_counter() - tc
        out_c, layers_c = run_with_snr(cb, spec, seed, self.test.x, self.bs)
        top = clean_out.argmax(1)
        return {
            "seed": seed,
            "before": self.accuracy(out), "after": self.accuracy(out_c),
            "agreement_before": float((out.argmax(1) == top).mean()),
            "agreement_after": float((out_c.argmax(1) == top).mean()),
            "calib_accuracy_before": rec.get("accuracy_before"), "calib_accuracy_after": rec.get("accuracy_after"),
            "snr_db": finite_mean([l["snr_db"] for l in layers]),
            "snr_worst_db": min(l["snr_db"] for l in layers),
            "fit_db": finite_mean([l["fit_db"] for l in layers]),
            "snr_after_db": finite_mean([l["snr_db"] for l in layers_c]),
            "layers": [{**l, "snr_after_db": lc["snr_db"]} for l, lc in zip(layers, layers_c)],
            "calibrate_seconds": cal_s, "seconds": time.perf_counter() - t0,
        }


# --------------------------------------------------------------------------- bundles


def bundle_digest(bundle) -> str:
    h = hashlib.sha1()
    for entry in bundle.layers:
        for name in ("conductance", "tiles", "position_output", "position_gain", "tile_used", "weight"):
            key = entry["arrays"].get(name)
            if key is not None:
                a = np.ascontiguousarray(bundle.array(key))
                h.update(name.encode() + str(a.shape).encode() + a.tobytes())
    return h.hexdigest()[:16]


def cost(bundle) -> dict:
    s = bundle.manifest["summary"]
    analog = [l for l in bundle.layers if l["placement"] == "analog"]
    gains: dict[str, int] = {}
    for l in analog:
        for g in np.asarray(bundle.array(l["arrays"]["position_gain"])):
            gains[f"{float(g):g}"] = gains.get(f"{float(g):g}", 0) + 1
    return {"tiles": s["tiles_used"], "physical_columns": s["physical_columns"], "adc_per_sample": s["adc_per_sample"],
            "positions": sum(l["tiles"]["positions"] for l in analog),
            "outputs": sum(l["N"] for l in analog), "positions_by_gain": gains}


class Bundles:
    """convert() + find_ranges once per distinct bundle."""

    def __init__(self, calib_x: dict[str, np.ndarray], batch_size: int):
        self.calib_x, self.bs = calib_x, batch_size
        self.by_recipe: dict[tuple, tuple[str, Any]] = {}
        self.by_digest: dict[str, Any] = {}
        self.clean: dict[str, np.ndarray] = {}
        self.seconds: dict[str, float] = {}

    def get(self, p: Point, spec) -> tuple[str, Any]:
        from xbar.converter import convert
        from xbar.runtime.ranges import find_ranges

        recipe = (p.model, p.variant, p.crossbar, p.rearrange, repr(spec))
        if recipe in self.by_recipe:
            return self.by_recipe[recipe]
        t0 = time.perf_counter()
        b = convert(str(MODELS[p.model]), crossbar=(p.crossbar, p.crossbar), hardware=spec, **placement_options(p.rearrange),
                    **VARIANTS[p.variant][1])
        d = f"{p.model}:{bundle_digest(b)}"
        if d not in self.by_digest:
            find_ranges(b, self.calib_x[p.model], spec, self.bs)
            self.by_digest[d] = b
            self.seconds[d] = time.perf_counter() - t0
        self.by_recipe[recipe] = (d, self.by_digest[d])
        return self.by_recipe[recipe]

    def clean_out(self, digest: str, x: np.ndarray) -> np.ndarray:
        from xbar.runtime import Runtime
        from xbar.runtime.evaluate import predict

        if digest not in self.clean:
            self.clean[digest] = predict(Runtime(self.by_digest[digest]), x, self.bs)
        return self.clean[digest]


# --------------------------------------------------------------------------- closed form


def closed_form() -> dict:
    """Weight-noise power of each encoding relative to fixed point, predicted by the converter's own
    closed form (xbar.converter.encodings.position_variance: programming + read noise, pr_1d's device
    at 1 d), over every weight of resnet_bn with all inputs equal. Per position: gain²·σ²(v), rest
    devices included; the AFP exponent rule minimises exactly this sum."""
    from xbar.config import MappingConfig
    from xbar.converter import convert
    from xbar.converter.encodings import encode, position_variance
    from xbar.bundle import grid_conductance
    from xbar.runtime.chip import normalised_tiles

    spec = conditions()["pr_1d"][1]
    dev, t = spec.device, spec.t_inference
    b = convert(str(MODELS["resnet_bn"]), crossbar=(128, 128), hardware=spec)
    cfgs = {"fixed": MappingConfig(), "rep2": MappingConfig(replicas=2), "afp2": MappingConfig(afp_exponents=2),
            "rep3": MappingConfig(replicas=3), "afp3": MappingConfig(afp_exponents=3)}
    total = {k: 0.0 for k in cfgs}
    layers = []
    for entry in b.layers:
        tiles = normalised_tiles(grid_conductance(b, entry), b.manifest["mapping"])
        nrb, ncb, r, cw = tiles.shape
        u = tiles.transpose(0, 2, 1, 3).reshape(nrb * r, ncb * cw)[:entry["K"], :entry["N"]].astype(np.float64)
        noise = {}
        for k, cfg in cfgs.items():
            e = encode(u, np.ones(u.shape, dtype=bool), cfg, dev, t)
            noise[k] = float((position_variance(e.v, cfg.encoding, dev, t) * e.gain.astype(np.float64) ** 2).sum())
            total[k] += noise[k]
        layers.append({"layer": entry["name"], "small_weights": float(np.mean(np.abs(u) < 0.25)),
                       "gain_db": {k: 10 * math.log10(noise["fixed"] / v) for k, v in noise.items()}})
    rest = float(position_variance(np.zeros(1), "differential", dev, t)[0])
    full = float(position_variance(np.ones(1), "differential", dev, t)[0])
    return {"condition": "pr_1d", "gain_db": {k: 10 * math.log10(total["fixed"] / v) for k, v in total.items()},
            "layers": layers, "sigma2_rest": rest, "sigma2_full": full}


# --------------------------------------------------------------------------- summaries and tables


def summarise(rows: list[dict]) -> dict:
    from xbar.stats import summary

    out = {k: summary([r[k] for r in rows]) for k in ("before", "after")}
    for k in ("snr_db", "snr_worst_db", "fit_db", "snr_after_db"):
        out[k] = summary([r[k] for r in rows], bounds=UNBOUNDED)
    return out


def pct_cell(s: dict | None, worst: bool = True) -> str:
    if s is None:
        return "–"
    if s["n"] == 1:
        return f"{100 * s['mean']:.2f} (1 chip, exact)"
    lo, hi = s["ci95"]
    text = f"{100 * s['mean']:.2f} ± {100 * s['std']:.2f} [{100 * lo:.2f}, {100 * hi:.2f}]"
    return text + (f" ({100 * s['min']:.1f})" if worst else "")


def db_cell(s: dict | None) -> str:
    if s is None:
        return "–"
    if not math.isfinite(s["mean"]):
        return "∞"
    if s["n"] == 1:
        return f"{s['mean']:.1f}"
    return f"{s['mean']:.1f} ± {s['std']:.1f}"


def short(layer: str) -> str:
    """'/layer2/conv1/Conv' -> 'layer2/conv1'."""
    parts = layer.strip("/").split("/")
    return "/".join(parts[:-1]) if len(parts) > 1 else parts[0]


def find(result: dict, **kw) -> dict | None:
    for r in result["points"]:
        if all(r["point"].get(k) == v for k, v in kw.items()):
            return r
    return None


def encoding_table(result: dict, block: str, model: str, conds: list[str], variants: list[str]) -> list[str]:
    """One row per condition and encoding; a variant 'main:KEY' is taken from the main block (a reference row)."""
    lines = ["| condition | encoding | tiles | phys. columns | ADC conv./sample | clean | accuracy before cal. | "
             "accuracy after `affine` | SNR dB | worst layer dB | fit dB |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for c in conds:
        for v in variants:
            blk, v = v.split(":") if ":" in v else (block, v)
            r = find(result, block=blk, model=model, variant=v, cond=c, crossbar=128, rearrange="none")
            if r is None:
                continue
            k = r["cost"]
            lines.append(f"| {r['cond_label']} | {VARIANTS[v][0]} | {k['tiles']} | {k['physical_columns']} | "
                         f"{k['adc_per_sample']:,} | {100 * r['clean']:.2f} | {pct_cell(r['summary']['before'])} | "
                         f"{pct_cell(r['summary']['after'])} | {db_cell(r['summary']['snr_db'])} | "
                         f"{db_cell(r['summary']['snr_worst_db'])} | {db_cell(r['summary']['fit_db'])} |")
    return lines


def layer_table(result: dict, block: str, model: str, cond: str, variants: list[str]) -> list[str]:
    rows = {v: find(result, block=block, model=model, variant=v, cond=cond, crossbar=128, rearrange="none") for v in variants}
    rows = {v: r for v, r in rows.items() if r is not None}
    if not rows:
        return []
    names = [l["layer"] for l in next(iter(rows.values()))["chips"][0]["layers"]]
    lines = ["| layer | " + " | ".join(VARIANTS[v][0] for v in rows) + " |", "|---|" + "---|" * len(rows)]
    for j, name in enumerate(names):
        cells = []
        for v, r in rows.items():
            vals = [c["layers"][j]["snr_db"] for c in r["chips"]]
            dom = (r.get("diagnose") or {}).get(name, "")
            cells.append(f"{np.mean(vals):.1f} ± {np.std(vals, ddof=1) if len(vals) > 1 else 0:.1f}"
                         + (f" ({dom})" if dom else ""))
        lines.append(f"| {short(name)} | " + " | ".join(cells) + " |")
    return lines


def irdrop_tables(result: dict) -> list[str]:
    lines = ["IR drop alone (`ablate(pcm, only=['ir-drop'])`, nothing random: one chip, exact). SNR = mean over the",
             "9 layers of each layer's product SNR; fit = after the best per-output gain and offset; accuracy before / "
             "after `affine` calibration.", "",
             "| tiles | r_wire | encoding | placement | SNR dB | fit dB | accuracy before | accuracy after |",
             "|---|---|---|---|---|---|---|---|"]
    for c in ("ir_r1", "ir_r5"):
        for size in (64, 128, 256):
            for v in ("fixed", "afp2"):
                for pol in PLACEMENTS:
                    r = find(result, block="irdrop", variant=v, cond=c, crossbar=size, rearrange=pol)
                    if r is None:
                        continue
                    s = r["summary"]
                    same = f" (= {r['identical_to'].split('/')[3]})" if r.get("identical_to") else ""
                    lines.append(f"| {size}×{size} | {c[-1]} Ω | {VARIANTS[v][0]} | {pol}{same} | "
                                 f"{db_cell(s['snr_db'])} | {db_cell(s['fit_db'])} | {100 * s['before']['mean']:.2f} | "
                                 f"{100 * s['after']['mean']:.2f} |")
    lines += ["", "Full pcm preset at 1 d on 128×128 tiles (10 chips; mean ± std [95 % CI] (worst chip)):", "",
              "| r_wire | encoding | placement | accuracy before | accuracy after `affine` | SNR dB | fit dB |",
              "|---|---|---|---|---|---|---|"]
    for c in ("full_1d", "full_1d_r5"):
        for v in ("fixed", "afp2"):
            for pol in ("none", "ir-drop", "ir-drop+rows"):
                r = find(result, block="irdrop", variant=v, cond=c, crossbar=128, rearrange=pol)
                if r is None:
                    continue
                s = r["summary"]
                lines.append(f"| {'5' if c.endswith('r5') else '1'} Ω | {VARIANTS[v][0]} | {pol} | {pct_cell(s['before'])} | "
                             f"{pct_cell(s['after'])} | {db_cell(s['snr_db'])} | {db_cell(s['fit_db'])} |")
    return lines


def tables(result: dict) -> list[str]:
    runs = result.get("merged_from", []) + [{k: result.get(k) for k in ("command", "date", "git_commit", "wall_seconds",
                                                                         "blocks", "blocks_run")}]
    out = ["Generated from `benchmarks/figures/encodings_study.json`, written by "
           + "; then ".join(f"`{m['command']}` ({m['date']}, {m.get('wall_seconds') or 0:.0f} s wall, git "
                            f"{m.get('git_commit')}, blocks {', '.join(m.get('blocks_run') or m.get('blocks') or [])})" for m in runs)
           + ".", "",
           "Accuracy in % on the 450 test samples: mean ± sample std [95 % CI of the mean] (worst chip) over the "
           f"{len(result['seeds'])} chips (seeds {result['seeds'][0]}–{result['seeds'][-1]}). SNR: each chip's mean over the "
           "9 analog layers of the layer's product SNR (as `eval --per-layer`, over the whole test split), then mean ± "
           "std over chips; worst layer: each chip's lowest layer SNR; fit: SNR left after the best per-output gain and "
           "offset (what `affine` calibration can reach per layer). Clean: the bundle on ideal hardware. "
           "Costs are per inference of one sample (ADC conversions) or for the whole model.", ""]
    blocks = {p["point"]["block"] for p in result["points"]}
    if "main" in blocks:
        out += ["### resnet_bn: fixed point, replicas and analog floating point", ""]
        out += encoding_table(result, "main", "resnet_bn", ["pr_1d", "full_1d", "full_1y"],
                              ["fixed", "rep2", "afp2", "rep3", "afp3"]) + [""]
        lt = layer_table(result, "main", "resnet_bn", "full_1d", ["fixed", "rep2", "afp2", "rep3", "afp3"])
        if lt:
            out += ["Per-layer SNR (dB), full pcm at 1 d, mean ± std over chips (dominant non-ideality of the layer on "
                    "chip seed 0 from `xbar.runtime.diagnose`, first 256 test samples):", ""] + lt + [""]
        lt = layer_table(result, "main", "resnet_bn", "pr_1d", ["fixed", "rep2", "afp2", "rep3", "afp3"])
        if lt:
            out += ["Per-layer SNR (dB), programming + read noise alone at 1 d:", ""] + lt + [""]
    cf = result.get("closed_form")
    if cf and "main" in blocks:
        fixed = find(result, block="main", variant="fixed", cond="pr_1d")
        out += ["Programming + read noise alone at 1 d: SNR gain over fixed point, measured (mean layer SNR over chips) "
                "against the converter's closed form (`position_variance`, the noise model the AFP exponent rule uses; "
                "weight-noise power summed over every weight, all inputs equal):", "",
                "| encoding | closed form dB | measured dB |", "|---|---|---|"]
        for v in ("rep2", "afp2", "rep3", "afp3"):
            r = find(result, block="main", variant=v, cond="pr_1d")
            meas = f"{r['summary']['snr_db']['mean'] - fixed['summary']['snr_db']['mean']:+.2f}" if r and fixed else "–"
            out.append(f"| {VARIANTS[v][0]} | {cf['gain_db'][v]:+.2f} | {meas} |")
        out += ["", f"Share of weights below 1/4 of their column's maximum (the ones AFP E=2 moves to gain 1/4), per layer: "
                + ", ".join(f"{short(l['layer'])} {100 * l['small_weights']:.0f} %" for l in cf["layers"]) + ".", ""]
    if "folded" in blocks:
        out += ["### resnet_folded (BN folded into the weights), full pcm at 1 d", ""]
        out += encoding_table(result, "folded", "resnet_folded", ["full_1d"], ["fixed", "afp2", "afp3"]) + [""]
    if "slicing" in blocks:
        out += ["### resnet_bn: bit slicing against a single cell at equal weight bits (8 magnitude bits + sign)", ""]
        out += encoding_table(result, "slicing", "resnet_bn", ["pr_1d", "full_1d"],
                              ["main:fixed", "w9", "bs2x4", "bs4x2", "main:rep2"]) + [""]
        out += ["(fixed point and 2 replicas, unquantised, repeated from the first table for reference.)", ""]
    if "irdrop" in blocks:
        out += ["### Column placement against IR drop (resnet_bn)", ""] + irdrop_tables(result) + [""]
    return out


def write_md(result: dict, path: Path) -> str:
    generated = "\n".join([MARK_BEGIN, ""] + tables(result) + [MARK_END])
    if path.exists():
        text = path.read_text()
        if MARK_BEGIN in text and MARK_END in text:
            head, rest = text.split(MARK_BEGIN, 1)
            tail = rest.split(MARK_END, 1)[1]
            path.write_text(head + generated + tail)
            return f"updated the tables in {rel_path(path)}"
    path.write_text("# Encodings study\n\n" + generated + "\n")
    return f"wrote {rel_path(path)}"


# --------------------------------------------------------------------------- plot


def plot(result: dict, path: Path) -> str:
    try:
        import matplotlib
    except ImportError:
        return "matplotlib is not importable: plot skipped"
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 2, figsize=(15, 9.5), dpi=110)
    groups = [("main", "resnet_bn", "pr_1d", "resnet_bn\nprog.+read, 1 d"), ("main", "resnet_bn", "full_1d", "resnet_bn\nfull pcm, 1 d"),
              ("main", "resnet_bn", "full_1y", "resnet_bn\nfull pcm, 1 y"),
              ("folded", "resnet_folded", "full_1d", "resnet_folded\nfull pcm, 1 d")]
    variants = ["fixed", "rep2", "afp2", "rep3", "afp3"]
    colors = {"fixed": "0.45", "rep2": "C0", "afp2": "C3", "rep3": "C9", "afp3": "C1", "w9": "0.3", "bs2x4": "C2",
              "bs4x2": "C4"}
    w = 0.16

    def bars(ax, key: str, scale: float, groups, variants, ylabel: str, title: str, worst: bool) -> None:
        """Grouped bars: in each group the encodings it has, centred; whiskers = 95 % CI of the mean."""
        seen: set[str] = set()
        for i, (blk, model, cond, _) in enumerate(groups):
            present = [(v, r) for v in variants
                       if (r := find(result, block=blk, model=model, variant=v, cond=cond, crossbar=128,
                                     rearrange="none")) is not None]
            for j, (v, r) in enumerate(present):
                s = r["summary"][key]
                x = i + (j - (len(present) - 1) / 2) * w
                ax.bar([x], [scale * s["mean"]], w, yerr=[[scale * (s["mean"] - s["ci95"][0])],
                                                          [scale * (s["ci95"][1] - s["mean"])]],
                       capsize=2, color=colors[v], label=None if v in seen else VARIANTS[v][0], error_kw={"lw": 0.8})
                if worst:
                    ax.plot([x], [scale * s["min"]], "kx", ms=4, label=None if "worst" in seen else "worst chip")
                    seen.add("worst")
                seen.add(v)
        ax.set_xticks(range(len(groups)))
        ax.set_xticklabels([g[3] for g in groups], fontsize=8)
        ax.set_ylabel(ylabel)
        ax.set_title(title, fontsize=9.5)
        ax.grid(True, axis="y", alpha=0.3)

    n = len(result["seeds"])
    for ax, key, title, lim in ((axes[0][0], "before", "uncalibrated chip", (65, 100.5)),
                                (axes[0][1], "after", "after `affine` calibration (same chip)", (96, 100))):
        bars(ax, key, 100, groups, variants, "test accuracy (%)",
             f"test accuracy, {title}: mean, 95 % CI ({n} chips), worst chip ×", True)
        ax.set_ylim(*lim)
    axes[0][0].legend(fontsize=7.5, ncol=3, loc="lower left")
    sgroups = groups + [("slicing", "resnet_bn", "pr_1d", "9-bit weights\nprog.+read, 1 d"),
                        ("slicing", "resnet_bn", "full_1d", "9-bit weights\nfull pcm, 1 d")]
    bars(axes[1][0], "snr_db", 1, sgroups, variants + ["w9", "bs2x4", "bs4x2"], "mean layer SNR (dB)",
         "per-layer output SNR (mean over the 9 layers; 95 % CI over chips); last two groups: single cell vs bit slicing", False)
    h, lab = axes[1][0].get_legend_handles_labels()
    keep = [k for k, l in enumerate(lab) if l in {VARIANTS[v][0] for v in ("w9", "bs2x4", "bs4x2")}]
    axes[1][0].legend([h[k] for k in keep], [lab[k] for k in keep], fontsize=7.5, loc="upper right")
    lo_snr = [r["summary"]["snr_db"]["mean"] for r in result["points"] if r["point"]["block"] in ("main", "folded", "slicing")]
    if lo_snr:
        axes[1][0].set_ylim(max(0, 5 * math.floor(min(lo_snr) / 5) - 5), 5 * math.ceil(max(lo_snr) / 5) + 3)
    # IR drop alone: SNR by placement
    ax = axes[1][1]
    labels, vals = [], {}
    for c in ("ir_r1", "ir_r5"):
        for size in (64, 128, 256):
            labels.append(f"{size}², {c[-1]} Ω")
            for v in ("fixed", "afp2"):
                for pol in PLACEMENTS:
                    r = find(result, block="irdrop", variant=v, cond=c, crossbar=size, rearrange=pol)
                    vals.setdefault((v, pol), []).append(r["summary"]["snr_db"]["mean"] if r else np.nan)
    if labels:
        x = np.arange(len(labels))
        ww = 0.1
        pcol = {"none": 1.0, "ir-drop": 0.7, "balance": 0.45, "ir-drop+rows": 0.2}  # share of the encoding's colour (rest white)
        for j, (v, pol) in enumerate(vals):
            base = matplotlib.colors.to_rgb(colors[v])
            col = tuple(c * pcol[pol] + (1 - pcol[pol]) for c in base)
            ax.bar(x + (j - (len(vals) - 1) / 2) * ww, vals[(v, pol)], ww, color=col, edgecolor=colors[v], lw=0.6,
                   label=f"{VARIANTS[v][0]}, {pol}")
        finite = [v for vs in vals.values() for v in vs if np.isfinite(v)]
        if finite:
            ax.set_ylim(math.floor(min(finite)) - 1, math.ceil(max(finite)) + 1)
        ax.set_xticks(x)
        ax.set_xticklabels(labels, fontsize=8)
        ax.set_ylabel("mean layer SNR (dB)")
        ax.set_title("IR drop alone (one exact chip): per-layer SNR by tile size, wire resistance and placement", fontsize=9.5)
        ax.legend(fontsize=7, ncol=2)
        ax.grid(True, axis="y", alpha=0.3)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return f"wrote {rel_path(path)} (matplotlib {matplotlib.__version__})"


# --------------------------------------------------------------------------- self-checks


def self_checks(bundles: Bundles, chips: Chips, batch_size: int) -> list[str]:
    """This script's SNR equals diagnose's; probes leave the logits unchanged; IR drop alone is deterministic."""
    from xbar.runtime import Runtime
    from xbar.runtime.diagnose import diagnose
    from xbar.runtime.evaluate import predict

    cond = conditions()
    spec = cond["full_1d"][1]
    _, b = bundles.get(Point("check", "resnet_bn", "afp2", "full_1d"), spec)
    x = chips.test.x[:64]
    out, mine = run_with_snr(b, spec, 0, x, batch_size)
    plain = predict(Runtime(b, spec, 0), x, batch_size)
    if not np.array_equal(out, plain):
        raise SystemExit("self-check FAILED: probing the layers changed the logits")
    theirs = {r["layer"]: r["snr_db"] for r in diagnose(b, spec, x, 0)}
    gap = max(abs(l["snr_db"] - theirs[l["layer"]]) for l in mine)
    if gap > 1e-6:
        raise SystemExit(f"self-check FAILED: layer SNR differs from xbar.runtime.diagnose by {gap:.3g} dB")
    ir = cond["ir_r5"][1]
    _, bf = bundles.get(Point("check", "resnet_bn", "fixed", "ir_r5"), ir)
    a0, a1 = predict(Runtime(bf, ir, 0), x, batch_size), predict(Runtime(bf, ir, 1), x, batch_size)
    if not np.array_equal(a0, a1):
        raise SystemExit("self-check FAILED: IR drop alone gives different chips for seeds 0 and 1")
    return ["self-check: layer SNR = xbar.runtime.diagnose's to 1e-6 dB (AFP E=2, full pcm 1 d, seed 0, 64 samples); "
            "probes leave the logits bit-identical; IR drop alone: seeds 0 and 1 give bit-identical logits"]


# --------------------------------------------------------------------------- main


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seeds", default="0-9", help="chip instances (default 0-9)")
    ap.add_argument("--blocks", default=",".join(BLOCKS), help=f"comma-separated, of {', '.join(BLOCKS)}")
    ap.add_argument("--quick", action="store_true", help="seeds 0-1, a few points, temporary output folder")
    ap.add_argument("--blas-threads", type=int, default=1, help="BLAS threads (default 1; 0 = library default)")
    ap.add_argument("--no-cache", action="store_true", help="do not memoise chip construction")
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--no-diagnose", action="store_true", help="skip diagnose() (dominant non-ideality per layer)")
    ap.add_argument("--merge", action="store_true", help="replace the selected blocks in an existing JSON")
    ap.add_argument("--replot", action="store_true", help="rewrite the md tables and the PNG from the JSON only")
    ap.add_argument("--no-plot", action="store_true")
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args(argv[1:])
    if args.out is None:
        import tempfile

        args.out = Path(tempfile.gettempdir()) / "xbar_encodings_quick" if args.quick else FIGURES
    out_json, out_md, out_png = (args.out / f"encodings_study.{e}" for e in ("json", "md", "png"))
    if args.replot:
        result = json.loads(out_json.read_text())
        print(write_md(result, out_md))
        print("plot skipped (--no-plot)" if args.no_plot else plot(result, out_png))
        return 0

    sys.path.insert(0, str(HERE))
    from calibration_study import TileCache, self_check_cache
    from xbar.data import load_dataset
    from xbar.units import parse_seeds

    blas = None
    if args.blas_threads > 0:
        from threadpoolctl import threadpool_limits

        blas = threadpool_limits(limits=args.blas_threads, user_api="blas")
    seeds = parse_seeds("0-1" if args.quick else args.seeds)
    blocks = [b for b in args.blocks.split(",") if b]
    if set(blocks) - set(BLOCKS):
        ap.error(f"unknown block(s) {sorted(set(blocks) - set(BLOCKS))}; known: {', '.join(BLOCKS)}")
    todo = points(blocks)
    if args.quick:
        todo = [p for p in todo if p.cond in ("full_1d", "ir_r5") and p.crossbar == 128 and p.variant in ("fixed", "afp2")]

    t_start = time.perf_counter()
    started = _dt.datetime.now().astimezone().isoformat(timespec="seconds")
    command = shlex.join([Path(sys.executable).name, os.path.relpath(argv[0], os.getcwd())] + argv[1:])
    from bench_ideal import source_fingerprint

    fp = source_fingerprint()
    commit = source_commit() or "unknown"
    header = ["xbar encodings study", f"command     : {command}", f"date        : {started}",
              f"host        : {platform.node()}  nproc {os.cpu_count()}  loadavg at start "
              f"{', '.join(f'{v:.2f}' for v in os.getloadavg())}",
              f"python      : {platform.python_version()}   numpy {np.__version__}   (--blas-threads {args.blas_threads})",
              f"xbar source : git {commit}; {fp}"]
    for line in header:
        print(line, flush=True)

    cache = None
    if not args.no_cache:
        cache = TileCache()
        cache.install()
    from xbar.converter import convert

    inputs = {m: convert(str(path), crossbar=(128, 128)).graph["inputs"][0] for m, path in MODELS.items()}
    calib = load_dataset(CALIB, inputs["resnet_bn"])
    test = load_dataset(TEST, inputs["resnet_bn"])
    calib_x = {m: load_dataset(CALIB, inp).x for m, inp in inputs.items()}
    bundles = Bundles(calib_x, args.batch_size)
    chips = Chips(calib, test, args.batch_size)
    cond = conditions()
    pcts = {(s.dac.percentile, s.adc.percentile) for _, s in cond.values()}
    if len(pcts) != 1:
        raise SystemExit(f"conditions use different range percentiles {pcts}")
    checks = self_checks(bundles, chips, args.batch_size)
    if cache is not None:
        checks.append(self_check_cache(cache, bundles.by_digest[next(iter(bundles.by_digest))], calib.x, cond["full_1d"][1]))
    for line in checks:
        print(line, flush=True)
    n_chips = sum(1 if is_deterministic(cond[p.cond][1]) else len(seeds) for p in todo)
    print(f"points      : {len(todo)} ({n_chips} chips) in blocks {', '.join(blocks)}; seeds {seeds[0]}-{seeds[-1]}",
          flush=True)

    args.out.mkdir(parents=True, exist_ok=True)
    result: dict[str, Any] = {
        "command": command, "date": started, "host": platform.node(), "nproc": os.cpu_count(),
        "loadavg_start": os.getloadavg(), "python": platform.python_version(), "numpy": np.__version__,
        "blas_threads": args.blas_threads, "git_commit": commit, "xbar_source": fp, "seeds": seeds, "blocks": blocks,
        "test_data": rel_path(TEST), "calibration_data": rel_path(CALIB), "n_test": len(test), "n_calib": len(calib),
        "self_checks": checks, "points": [],
        "notes": "Per chip: accuracy on the test split before and after affine calibration (fitted on the calibration "
                 "split at the evaluation time, same chip); per-layer SNR as eval --per-layer over the whole test split. "
                 "Deterministic conditions (IR drop alone) ran one chip (seed 0), exact.",
    }
    if args.merge and out_json.exists():
        prev = json.loads(out_json.read_text())
        if prev.get("seeds") != seeds:
            raise SystemExit(f"--merge: {rel_path(out_json)} has seeds {prev.get('seeds')}, this run {seeds}")
        result["points"] = [r for r in prev["points"] if r["point"]["block"] not in blocks]
        if "closed_form" in prev and "theory" not in blocks:
            result["closed_form"] = prev["closed_form"]
        result["merged_from"] = prev.get("merged_from", []) + [
            {k: prev.get(k) for k in ("command", "date", "git_commit", "xbar_source", "wall_seconds", "blocks",
                                      "blocks_run", "loadavg_start", "loadavg_end", "chip_cache_stats")}]
        result["blocks_run"] = blocks
        result["blocks"] = sorted(set(prev.get("blocks", [])) | set(blocks), key=BLOCKS.index)

    def save() -> None:
        result["wall_seconds"] = time.perf_counter() - t_start
        result["loadavg_end"] = os.getloadavg()
        if cache is not None:
            result["chip_cache_stats"] = {"hits": cache.hits, "misses": cache.misses,
                                          "build_seconds_saved": cache.seconds_saved}
        out_json.write_text(json.dumps(result, indent=1) + "\n")

    if "theory" in blocks:
        t0 = time.perf_counter()
        result["closed_form"] = closed_form()
        print(f"closed form : SNR gain over fixed point (prog. + read noise, 1 d): "
              + ", ".join(f"{k} {v:+.2f} dB" for k, v in result["closed_form"]["gain_db"].items() if k != "fixed")
              + f" ({time.perf_counter() - t0:.1f} s)", flush=True)
        save()
    done_by: dict[tuple[str, str], dict] = {}
    done = 0
    for p in todo:
        label, spec = cond[p.cond]
        t0 = time.perf_counter()
        digest, b = bundles.get(p, spec)
        clean_out = bundles.clean_out(digest, test.x)
        det = is_deterministic(spec)
        entry: dict[str, Any] = {"point": {"block": p.block, "model": p.model, "variant": p.variant, "cond": p.cond,
                                           "crossbar": p.crossbar, "rearrange": p.rearrange},
                                 "key": p.key, "variant_label": VARIANTS[p.variant][0], "cond_label": label,
                                 "convert_kwargs": VARIANTS[p.variant][1], "hardware": spec.to_dict(),
                                 "deterministic": det, "bundle": digest, "cost": cost(b),
                                 "clean": chips.accuracy(clean_out)}
        same = done_by.get((digest, p.cond))
        if same is not None:
            entry.update(chips=same["chips"], identical_to=same["key"])
        else:
            rows = []
            for s in (seeds[:1] if det else seeds):
                rows.append(chips.one(b, spec, s, clean_out))
                done += 1
                el = time.perf_counter() - t_start
                sys.stderr.write(f"  [{done:>3}/{n_chips}] {p.key:<44} seed {s}  before {100 * rows[-1]['before']:6.2f}  "
                                 f"after {100 * rows[-1]['after']:6.2f}  SNR {rows[-1]['snr_db']:5.1f} dB  "
                                 f"({rows[-1]['seconds']:.1f} s; elapsed {el:.0f} s)\n")
                sys.stderr.flush()
            entry["chips"] = rows
            if p.block in ("main", "slicing") and not args.no_diagnose:
                from xbar.runtime.diagnose import diagnose

                rep = diagnose(b, spec, test.x[:256], seeds[0])
                entry["diagnose"] = {r["layer"]: r["dominant"] for r in rep}
                entry["diagnose_report"] = rep
            done_by[(digest, p.cond)] = entry
        entry["summary"] = summarise(entry["chips"])
        entry["seconds"] = time.perf_counter() - t0
        result["points"].append(entry)
        s = entry["summary"]
        print(f"  {p.key:<44} tiles {entry['cost']['tiles']:>3} cols {entry['cost']['physical_columns']:>5}  "
              f"before {pct_cell(s['before'], False):<34} after {pct_cell(s['after'], False):<34} "
              f"SNR {db_cell(s['snr_db'])}  fit {db_cell(s['fit_db'])}"
              f"{'  (= ' + entry['identical_to'] + ')' if 'identical_to' in entry else ''}  ({entry['seconds']:.0f} s)",
              flush=True)
        save()

    save()
    print(write_md(result, out_md))
    print("plot skipped (--no-plot)" if args.no_plot else plot(result, out_png))
    finish(t_start, cache, blas)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
