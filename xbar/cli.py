"""The `xbar` command line: convert, info, eval."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import click
import numpy as np

from xbar import __version__
from xbar.errors import XbarError


class _Group(click.Group):
    """Turns user errors into one-paragraph messages instead of tracebacks."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except XbarError as exc:
            raise click.ClickException(str(exc)) from None
        except MemoryError:
            raise click.ClickException("out of memory; try a smaller --batch-size") from None


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="xbar")
def cli() -> None:
    """Simulate ONNX networks on analog in-memory-computing crossbars.

    \b
    xbar convert model.onnx        map the weights onto crossbar tiles -> model.xbar
    xbar info model.xbar           layers, shapes, tiles, utilisation
    xbar eval model.xbar --data test.npz --hardware pcm --seeds 0-9 --drift 1h,1d,1y
                                   accuracy on simulated chips over time
    xbar calibrate model.xbar --data calib.npz --drift 1d
                                   re-fit batch-norm on one chip -> model.calibrated.xbar
    """


def _resolve_hardware(base: dict[str, Any] | None, hardware: str | None, sets: tuple[str, ...] = (),
                      only: tuple[str, ...] = (), without: tuple[str, ...] = ()):
    """Bundle's target (or ideal) ← --hardware preset/TOML ← --set KEY=VALUE ← --only/--without."""
    from xbar.errors import ConfigError
    from xbar.hardware import PRESETS, HardwareSpec, ablate, parse_assignment, preset

    spec = HardwareSpec.from_dict(base) if base else preset("ideal")
    if hardware:
        if hardware in PRESETS:
            spec = preset(hardware)
        elif Path(hardware).suffix == ".toml" or Path(hardware).exists():
            if not Path(hardware).exists():
                raise ConfigError(f"--hardware {hardware}: no such TOML file")
            spec = HardwareSpec.from_toml(hardware)
        else:
            raise ConfigError(f"--hardware {hardware!r} is neither a preset ({', '.join(PRESETS)}) nor a .toml file")
    if sets:
        spec = spec.override(dict(parse_assignment(item) for item in sets))
    if only or without:
        spec = ablate(spec, list(only) or None, list(without) or None)
    return spec


_HARDWARE_HELP = "Target chip: a preset (ideal, pcm, rram) or a TOML file."
_SET_HELP = "Override one hardware field, e.g. adc.bits=6 or circuit.r_wire=2.5; repeatable."


def _shape(shape: list[int | None] | None) -> str:
    if shape is None:
        return "?"
    return "(" + ",".join("N" if d is None else str(d) for d in shape) + ")"


@cli.command()
@click.argument("model", type=click.Path(dir_okay=False, path_type=Path))
@click.option("-o", "--output", type=click.Path(dir_okay=False, path_type=Path),
              help="Bundle to write [default: MODEL with suffix .xbar].")
@click.option("--crossbar", default="128x128", show_default=True, metavar="RxC",
              help="Physical tile size: rows (inputs) x columns (bit lines).")
@click.option("--encoding", type=click.Choice(["differential", "offset"]), default="differential", show_default=True,
              help="differential: G+/G- column pair per weight; offset: one column around G_mid plus one reference column per tile.")
@click.option("--weight-bits", type=int, default=None, metavar="N",
              help="Quantise normalised weights to N-bit signed levels [default: unquantised].")
@click.option("--weight-clip", type=float, default=None, metavar="PERCENTILE",
              help="Scale each column by this percentile of |W| instead of its maximum; larger weights clip.")
@click.option("--digital", multiple=True, metavar="NAME",
              help="Keep this layer (ONNX node name of a Conv/Gemm/MatMul) digital; repeatable.")
@click.option("--hardware", metavar="PRESET|FILE", help=_HARDWARE_HELP + " Stored as the deployment target; "
              "its conductance window is used for the mapping.")
@click.option("--set", "sets", multiple=True, metavar="KEY=VALUE", help=_SET_HELP)
@click.option("--calib-data", type=click.Path(dir_okay=False, path_type=Path),
              help=".npz with inputs 'x': find DAC input ranges and ADC full scales from them.")
@click.option("--force", is_flag=True, help="Overwrite an existing output bundle.")
def convert(model: Path, output: Path | None, crossbar: str, encoding: str, weight_bits: int | None,
            weight_clip: float | None, digital: tuple[str, ...], hardware: str | None, sets: tuple[str, ...],
            calib_data: Path | None, force: bool) -> None:
    """Convert an ONNX MODEL into a crossbar deployment bundle (.xbar)."""
    from xbar.bundle import save_bundle
    from xbar.config import parse_crossbar
    from xbar.converter import convert as do_convert
    from xbar.errors import BundleError

    output = output or model.with_suffix(".xbar")
    if output.exists() and not force:
        raise BundleError(f"{output} already exists; pass --force to overwrite it")
    if output.resolve() == model.resolve():
        raise BundleError(f"output {output} is the input model; choose another -o")
    spec = _resolve_hardware(None, hardware, sets)
    bundle = do_convert(model, crossbar=parse_crossbar(crossbar), encoding=encoding, weight_bits=weight_bits,
                        digital=digital, weight_clip_percentile=weight_clip,
                        g_min=spec.device.g_min, g_max=spec.device.g_max)
    bundle.manifest["hardware"] = spec.to_dict()
    if calib_data is not None:
        from xbar.data import load_dataset
        from xbar.runtime.ranges import find_ranges

        ds = load_dataset(calib_data, bundle.graph["inputs"][0])
        find_ranges(bundle, ds.x, spec, progress=_progress("ranges", sys.stderr.isatty()))
        click.echo(f"ranges: DAC and ADC full scales from {len(ds)} samples of {calib_data} "
                   f"({spec.dac.percentile:g}th / {spec.adc.percentile:g}th percentile)")
    elif not spec.is_ideal:
        click.echo("warning: no --calib-data: ADC full scales will be the physical maximum column current and "
                   "the DAC scales every input vector by its own max |x|", err=True)
    save_bundle(bundle, output, force=force)
    s = bundle.manifest["summary"]
    click.echo(f"wrote {output}: {s['analog_layers']} analog layers on {s['tiles_used']} tiles of {crossbar}, "
               f"{s['digital_layers']} digital layers, {s['analog_weights']:,} analog weights")


@cli.command()
@click.argument("bundle", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Print the manifest summary as JSON.")
def info(bundle: Path, as_json: bool) -> None:
    """Show a bundle's layers, shapes, tiles and utilisation."""
    from xbar.bundle import load_bundle
    from xbar.table import render

    b = load_bundle(bundle)
    m = b.manifest
    if as_json:
        keep = {k: m[k] for k in ("format_version", "xbar_version", "model", "mapping", "summary", "calibration")}
        keep["layers"] = [{k: v for k, v in layer.items() if k != "arrays"} for layer in m["layers"]]
        click.echo(json.dumps(keep, indent=1))
        return
    mp = m["mapping"]
    click.echo(f"bundle   {bundle}  (format {m['format_version']}, written by xbar {m['xbar_version']})")
    src = m["model"]
    click.echo(f"model    {src['source']}  sha256 {src['sha256'][:16]}…  opset {src['opset']}"
               + (f" (upgraded from {src['original_opset']})" if src["original_opset"] != src["opset"] else ""))
    bits = f"{mp['weight_bits']}-bit weights" if mp["weight_bits"] else "unquantised weights"
    click.echo(f"mapping  {mp['rows']}x{mp['cols']} tiles, {mp['encoding']} encoding, {bits}, "
               f"G {mp['g_min'] * 1e6:g}–{mp['g_max'] * 1e6:g} µS")
    ins = ", ".join(f"{i['name']} {_shape(i['shape'])}" for i in m["graph"]["inputs"])
    outs = ", ".join(f"{o['name']} {_shape(o['shape'])}" for o in m["graph"]["outputs"])
    click.echo(f"io       {ins} -> {outs}\n")
    rows = []
    for layer in m["layers"]:
        t = layer.get("tiles")
        rows.append([
            layer["name"], layer["kind"], layer["placement"], f"{layer['K']}×{layer['N']}",
            _shape(layer["input_shape"]), _shape(layer["output_shape"]),
            f"{t['n_row_blocks']}×{t['n_col_blocks']}" if t else "-",
            t["tiles_used"] if t else "-",
            f"{100 * t['utilisation']:.1f}%" if t else "-",
            f"{layer['weights']:,}",
            "BN" if layer["affine"]["source"] == "batchnorm" else "bias",
        ])
    click.echo(render(["layer", "kind", "where", "K×N", "input", "output", "blocks", "tiles", "util", "weights", "affine"],
                      rows, numeric=[False, False, False, True, False, False, True, True, True, True, False]))
    s = m["summary"]
    click.echo(f"\n{s['analog_layers']} analog layers on {s['tiles_used']} tiles, {s['digital_layers']} digital; "
               f"{s['analog_weights']:,} analog weights, {s['parameters']:,} parameters in all")
    from xbar.units import format_time

    for rec in m.get("calibration", []):
        acc = (f"; accuracy on calibration data {100 * rec['accuracy_before']:.2f}% -> {100 * rec['accuracy_after']:.2f}%"
               if "accuracy_before" in rec else "")
        click.echo(f"calibration: '{rec['method']}' on {rec['samples']} samples, chip seed {rec['seed']}, "
                   f"t = {format_time(rec['t_inference'])}, {rec['hardware']['device']['model']} device{acc}; "
                   f"agreement with ideal {100 * rec['agreement_with_ideal_before']:.2f}% -> "
                   f"{100 * rec['agreement_with_ideal_after']:.2f}% ({rec['date']})")


def _progress(label: str, enabled: bool):
    def wrap(items):
        items = list(items)
        if not enabled or len(items) < 3:
            return items
        return _iter_bar(items, label)

    return wrap


def _iter_bar(items, label):
    with click.progressbar(items, label=label, file=sys.stderr, show_pos=True) as bar:
        yield from bar


@cli.command()
@click.argument("bundle", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--data", required=True, type=click.Path(dir_okay=False, path_type=Path),
              help="Calibration .npz: 'x' inputs (a few hundred samples), optional 'y' labels (only to report accuracy).")
@click.option("--method", type=click.Choice(["stats", "affine"]), default="affine", show_default=True,
              help="stats: re-estimate BN mean/variance from noisy activations; affine: per-channel least squares "
                   "to the ideal-hardware activations. Both label-free.")
@click.option("--hardware", metavar="PRESET|FILE", help=_HARDWARE_HELP + " [default: the bundle's target]")
@click.option("--set", "sets", multiple=True, metavar="KEY=VALUE", help=_SET_HELP)
@click.option("--seed", type=click.IntRange(min=0), default=0, show_default=True, help="The chip instance to calibrate.")
@click.option("--drift", metavar="TIME", help="Time after programming at which to calibrate, e.g. 1h [default: the spec's].")
@click.option("--only", multiple=True, metavar="NAME", help="Keep only these non-idealities (as for eval).")
@click.option("--without", multiple=True, metavar="NAME", help="Switch these non-idealities off (as for eval).")
@click.option("--no-fold", is_flag=True, help="Keep BN statistics unfolded instead of the periphery's gain/shift form.")
@click.option("-o", "--output", type=click.Path(dir_okay=False, path_type=Path),
              help="Calibrated bundle [default: BUNDLE with suffix .calibrated.xbar].")
@click.option("--batch-size", type=click.IntRange(min=1), default=128, show_default=True)
@click.option("--force", is_flag=True, help="Overwrite an existing output bundle.")
def calibrate(bundle: Path, data: Path, method: str, hardware: str | None, sets: tuple[str, ...], seed: int,
              drift: str | None, only: tuple[str, ...], without: tuple[str, ...], no_fold: bool,
              output: Path | None, batch_size: int, force: bool) -> None:
    """Re-fit every analog layer's per-output affine (batch-norm) on one chip instance, then fold it.

    The input bundle is never modified; the output records the calibration (method, samples,
    chip seed, drift time, hardware, before/after on the calibration data).
    """
    from xbar.bundle import load_bundle, save_bundle
    from xbar.data import load_dataset
    from xbar.errors import BundleError
    from xbar.runtime.calibrate import MIN_SAMPLES, calibrate as do_calibrate
    from xbar.units import format_time, parse_time

    output = output or bundle.with_name(bundle.stem + ".calibrated.xbar")
    if output.exists() and not force:
        raise BundleError(f"{output} already exists; pass --force to overwrite it")
    if output.resolve() == bundle.resolve():
        raise BundleError("the output would overwrite the input bundle; choose another -o")
    b = load_bundle(bundle)
    spec = _resolve_hardware(b.manifest.get("hardware"), hardware, sets, only, without)
    if drift:
        spec = spec.override(t_inference=parse_time(drift))
    ds = load_dataset(data, b.graph["inputs"][0], min_samples=MIN_SAMPLES)
    t0 = __import__("time").perf_counter()
    show = sys.stderr.isatty()
    out, rec = do_calibrate(b, ds.x, spec, seed, method, y=ds.y, fold=not no_fold, batch_size=batch_size,
                            progress=(lambda items: _iter_bar(list(items), "layers")) if show else None)
    save_bundle(out, output, force=force)
    took = __import__("time").perf_counter() - t0
    click.echo(f"calibrated {len(rec['layers'])} layers of {bundle} with '{method}' on {rec['samples']} samples, "
               f"chip seed {seed}, t = {format_time(spec.t_inference)} ({took:.1f} s) -> {output}")
    if "accuracy_before" in rec:
        click.echo(f"  accuracy on the calibration data: {100 * rec['accuracy_before']:.2f}% before, "
                   f"{100 * rec['accuracy_after']:.2f}% after (ideal hardware {100 * rec['accuracy_ideal']:.2f}%)")
    click.echo(f"  top-1 agreement with ideal hardware: {100 * rec['agreement_with_ideal_before']:.2f}% before, "
               f"{100 * rec['agreement_with_ideal_after']:.2f}% after")


@cli.command(name="eval")
@click.argument("bundle", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--data", required=True, type=click.Path(dir_okay=False, path_type=Path),
              help=".npz with 'x' (inputs, model input shape) and optional 'y' (integer labels).")
@click.option("--reference", type=click.Path(dir_okay=False, path_type=Path),
              help="Source ONNX model: also run it in onnxruntime and report agreement and max |diff| (ideal hardware).")
@click.option("--hardware", metavar="PRESET|FILE", help=_HARDWARE_HELP + " [default: the bundle's target]")
@click.option("--set", "sets", multiple=True, metavar="KEY=VALUE", help=_SET_HELP)
@click.option("--seeds", default=None, metavar="LIST",
              help="Chip instances to sample, e.g. 0-9 or 0,3,7. One seed is one chip, bit for bit. "
                   "[default: 0, or the chip a calibrated bundle was calibrated on]")
@click.option("--drift", metavar="TIMES", help="Times after programming, e.g. 1s,1h,1d,1y [default: the spec's t_inference].")
@click.option("--only", multiple=True, metavar="NAME",
              help="Keep only these non-idealities: programming, drift, read, ir-drop, faults, dac, adc, output-noise.")
@click.option("--without", multiple=True, metavar="NAME", help="Switch these non-idealities off (same names).")
@click.option("--per-layer", is_flag=True, help="Per analog layer: SNR against ideal hardware, clipping, dominant error.")
@click.option("--batch-size", type=click.IntRange(min=1), default=128, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object instead of text.")
def evaluate(bundle: Path, data: Path, reference: Path | None, hardware: str | None, sets: tuple[str, ...],
             seeds: str, drift: str | None, only: tuple[str, ...], without: tuple[str, ...], per_layer: bool,
             batch_size: int, as_json: bool) -> None:
    """Evaluate a bundle on a data set: ideal hardware, and chip instances of the target hardware."""
    from xbar.bundle import load_bundle
    from xbar.data import load_dataset
    from xbar.reference import file_sha256, onnxruntime_fn
    from xbar.runtime import Runtime
    from xbar.runtime.evaluate import predict, summarise
    from xbar.units import format_time, parse_seeds, parse_time_list

    b = load_bundle(bundle)
    record = (b.manifest.get("calibration") or [None])[-1]
    # A calibrated bundle is evaluated on the chip it was calibrated for, unless told otherwise.
    base = record["hardware"] if record else b.manifest.get("hardware")
    spec = _resolve_hardware(base, hardware, sets, only, without)
    if seeds is None:
        seeds = str(record["seed"]) if record else "0"
    seed_list = parse_seeds(seeds)
    if drift is None and record and hardware is None:
        times = [record["t_inference"]]
    else:
        times = parse_time_list(drift) if drift else [spec.t_inference]
    ds = load_dataset(data, b.graph["inputs"][0])
    show = not as_json and sys.stderr.isatty()
    ideal = predict(Runtime(b), ds.x, batch_size, _progress("ideal", show))
    ref = None
    warning = None
    if reference is not None:
        if file_sha256(reference) != b.manifest["model"]["sha256"]:
            warning = f"{reference} is not the model this bundle was converted from (sha256 differs)"
            click.echo(f"warning: {warning}", err=True)
        ref = predict(onnxruntime_fn(reference), ds.x, batch_size, _progress("onnxruntime", show))
    result: dict[str, Any] = {"bundle": str(bundle), "data": str(data), **summarise(ideal, ds, ref)}
    if "accuracy" in result:
        result["ideal_accuracy"] = result["accuracy"]
    if warning:
        result["warning"] = warning
    result["hardware"] = spec.to_dict()
    result["calibrated"] = record is not None
    rows = []
    if not spec.is_ideal:
        if any("ranges" not in layer for layer in b.layers if layer["placement"] == "analog"):
            if spec.adc.range == "percentile" and spec.adc.bits is not None:
                click.echo("warning: the bundle has no calibrated ranges (convert with --calib-data): "
                           "ADC full scales are the physical maximum column currents", err=True)
        from xbar.runtime.sweep import sweep

        def bar(jobs):
            jobs = list(jobs)
            if not show:
                return jobs
            return _iter_bar(jobs, "chips")

        rows = sweep(b, spec, ds, seed_list, times, batch_size, ideal_out=ideal, progress=bar)
        result["seeds"] = seed_list
        result["rows"] = [r.to_dict() for r in rows]
        if len(rows) == 1 and rows[0].accuracies:
            result["accuracy"] = rows[0].mean
        elif len(rows) == 1:
            result.pop("accuracy", None)
    diagnostics = None
    if per_layer:
        from xbar.runtime.diagnose import diagnose

        diagnostics = diagnose(b, spec.override(t_inference=times[-1]), ds.x[: min(len(ds), 256)], seed_list[0])
        result["per_layer"] = diagnostics
    if as_json:
        click.echo(json.dumps(result))
        return
    _print_eval(bundle, data, ds, spec, result, rows, seed_list, diagnostics, format_time)


def _print_eval(bundle, data, ds, spec, result, rows, seed_list, diagnostics, format_time) -> None:
    from xbar.table import render

    click.echo(f"{bundle} on {data}: {len(ds)} samples")
    if "ideal_accuracy" in result:
        # A calibrated bundle's affines are fitted to one chip, so on exact hardware it is
        # that chip's correction applied where nothing needs correcting: say so.
        which = " (with this bundle's chip-calibrated affines)" if result.get("calibrated") else ""
        click.echo(f"  accuracy, ideal hardware{which}   {100 * result['ideal_accuracy']:.2f}%")
    if "agreement" in result:
        if "reference_accuracy" in result:
            click.echo(f"  accuracy, onnxruntime      {100 * result['reference_accuracy']:.2f}%")
        click.echo(f"  top-1 agreement (ideal vs onnxruntime)  {100 * result['agreement']:.2f}%")
        click.echo(f"  max |xbar ideal - onnxruntime|          {result['max_abs_diff']:.3g}")
    if spec.is_ideal:
        if "accuracy" not in result and "agreement" not in result:
            click.echo("  (no labels 'y' in the data and no --reference: nothing to score)")
    else:
        click.echo("\nhardware\n" + "\n".join("  " + line for line in spec.describe().splitlines()))
        n = len(seed_list)
        label = "accuracy" if rows and rows[0].accuracies else "top-1 agreement with ideal"
        table = []
        for r in rows:
            if r.accuracies:
                table.append([format_time(r.t), f"{100 * r.mean:.2f} ± {100 * r.std:.2f}%",
                              f"{100 * min(r.accuracies):.2f}%", f"{100 * max(r.accuracies):.2f}%",
                              f"{100 * float(np.mean(r.agreements)):.2f}%"])
            else:
                table.append([format_time(r.t), "-", "-", "-", f"{100 * float(np.mean(r.agreements)):.2f}%"])
        click.echo(f"\n{label} over {n} chip instance{'s' if n > 1 else ''} (seeds {_seed_text(seed_list)}), "
                   f"mean ± sample std:")
        click.echo(render(["time", "accuracy", "worst chip", "best chip", "agrees w/ ideal"], table,
                          numeric=[False, True, True, True, True]))
    if diagnostics:
        click.echo("\nper layer (worst first; SNR of the layer's output against ideal hardware on the same input):")
        drows = [[d["layer"], f"{d['snr_db']:.1f}", f"{100 * d['dac_clip']:.2f}%", f"{100 * d['adc_clip']:.2f}%",
                  d["tiles"], d["dominant"]] for d in diagnostics]
        click.echo(render(["layer", "SNR dB", "DAC clip", "ADC clip", "tiles", "dominant error"], drows,
                          numeric=[False, True, True, True, True, False]))


def _seed_text(seeds: list[int]) -> str:
    if len(seeds) > 2 and seeds == list(range(seeds[0], seeds[-1] + 1)):
        return f"{seeds[0]}-{seeds[-1]}"
    return ",".join(map(str, seeds))


def main() -> None:
    cli(prog_name="xbar")


if __name__ == "__main__":
    main()
