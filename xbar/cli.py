"""The `xbar` command line: convert, info, eval."""

from __future__ import annotations

import functools
import json
import re
import sys
import textwrap
from pathlib import Path
from typing import Any

import click

from xbar import __version__
from xbar.config import WEIGHT_BITS, WEIGHT_CLIP_PERCENTILE
from xbar.dims import per_sample
from xbar.errors import XbarError


class _Group(click.Group):
    """Turns user errors into one-paragraph messages instead of tracebacks."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except XbarError as exc:
            raise click.ClickException(str(exc)) from None
        except MemoryError:
            raise click.ClickException(_out_of_memory(self, ctx)) from None


def _out_of_memory(group: click.Group, ctx: click.Context) -> str:
    """What to try when a command ran out of memory: what that command lets one make smaller."""
    name = ctx.invoked_subcommand or ""
    command = group.get_command(ctx, name) if name else None
    options = {p.name for p in (command.params if command else [])}
    if "batch_size" in options:
        hint = "try a smaller --batch-size"
    elif name == "convert":
        hint = ("the tiles of --crossbar R×C are built whole, R·C cells each: try smaller tiles (and, for depthwise "
                "convolutions, --depthwise digital or packed)")
    else:
        hint = "free memory or use a machine with more"
    return f"out of memory{f' in xbar {name}' if name else ''}; {hint}"


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
    xbar sweep study.toml -o results/
                                   a design-space study on Dask; `xbar plot results/` summarises it
    xbar ops                       the ONNX operators xbar supports
    """


def _names(values: tuple[str, ...]) -> list[str]:
    """--only/--without values: repeated options and comma lists alike ('drift,read')."""
    return [part.strip() for v in values for part in v.split(",") if part.strip()]


def _resolve_hardware(base: dict[str, Any] | None, hardware: str | None, sets: tuple[str, ...] = (),
                      only: tuple[str, ...] = (), without: tuple[str, ...] = ()):
    """Bundle's target (or ideal) ← --hardware preset/TOML ← --set KEY=VALUE ← --only/--without.

    A value that is wrong by itself (unknown preset, key or non-ideality, malformed
    assignment) is a usage error (exit 2); a TOML file's content is the file's error (exit 1).
    """
    from xbar.errors import ConfigError
    from xbar.hardware import PRESETS, HardwareSpec, ablate, parse_assignment, preset

    spec = HardwareSpec.from_dict(base) if base else preset("ideal")
    if hardware:
        if hardware in PRESETS:
            spec = preset(hardware)
        elif Path(hardware).exists():
            spec = HardwareSpec.from_toml(hardware)
        elif Path(hardware).suffix == ".toml":
            raise ConfigError(f"--hardware {hardware}: no such TOML file")
        else:
            raise click.BadParameter(f"{hardware!r} is neither a preset ({', '.join(PRESETS)}) nor an existing "
                                     "TOML file", param_hint="'--hardware'")
    assigned: dict[str, Any] = {}
    if sets:
        try:
            assigned = dict(parse_assignment(item) for item in sets)
            spec = spec.override(assigned)
        except ConfigError as exc:
            raise click.BadParameter(str(exc), param_hint="'--set'") from None
    if only or without:
        try:
            ablated = ablate(spec, _names(only) or None, _names(without) or None, set_keys=assigned)
        except ConfigError as exc:
            raise click.BadParameter(str(exc), param_hint="'--only' / '--without'") from None
        asked = " ".join(f"{flag} {','.join(_names(v))}" for flag, v in (("--only", only), ("--without", without))
                         if _names(v))
        if spec.is_ideal:
            raise ConfigError(f"{asked}: the hardware is ideal, so there is no "
                              "non-ideality to switch; give --hardware (e.g. --hardware pcm) to pick a chip")
        if ablated.is_ideal:
            raise ConfigError(f"{asked} leaves no non-ideality switched on (this hardware has: "
                              f"{', '.join(spec.active_nonidealities())}); nothing would be simulated. Keep at least "
                              "one of them.")
        spec = ablated
    return spec


def _parsed(parse):
    """A click callback running an xbar parser: its ConfigError becomes a usage error (exit 2)."""
    from xbar.errors import ConfigError

    def callback(ctx, param, value):
        if value is None:
            return None
        try:
            return parse(value)
        except ConfigError as exc:
            raise click.BadParameter(str(exc)) from None

    return callback


def _parse_crossbar(text: str):
    from xbar.config import parse_crossbar

    return parse_crossbar(text)


def _parse_seeds(text: str):
    from xbar.units import parse_seeds

    return parse_seeds(text)


def _parse_time(text: str):
    from xbar.units import parse_time

    return parse_time(text)


def _parse_times(text: str):
    from xbar.units import parse_time_list

    return parse_time_list(text)


_HARDWARE_HELP = "Target chip: a preset (ideal, pcm, rram) or a TOML file."
_SET_HELP = "Override one hardware field, e.g. adc.bits=6 or circuit.r_wire=2.5; repeatable."
_NAMES = "programming, drift, read, ir-drop, faults, dac, adc, output-noise"
_ONLY_HELP = f"Keep only these non-idealities ({_NAMES}); repeat the option or give a comma list."
_WITHOUT_HELP = "Switch these non-idealities off (same names); repeat the option or give a comma list."


def _recurrent_on_tiles(layers: list[dict[str, Any]]) -> int:
    return sum(l.get("kind") == "recurrent" and l.get("placement") == "analog" for l in layers)


def _policy_notes(bundle: Any) -> list[str]:
    """Mapping policies the user asked for that had nothing, or not everything, to act on."""
    s, notes = bundle.manifest["summary"], []
    rec = _recurrent_on_tiles(bundle.layers)
    if s.get("pack_tiles") and rec:
        notes.append(f"--pack-tiles packs no recurrent layer: the {rec} recurrent matrices (W, R) keep tiles of "
                     "their own")
    if s.get("depthwise", "tiles") != "tiles" and s.get("depthwise_layers") == 0:
        notes.append(f"--depthwise {s['depthwise']}: the model has no depthwise convolution, so it changes nothing")
    return notes


def _digital_weight_notes(bundle: Any) -> list[str]:
    """Einsums that multiply by a constant weight but stay digital ops, off the chip: only a
    product over one activation axis becomes a MatMul (converter/rewrite.py) and so an
    analog layer."""
    constants = bundle.graph["constants"]
    found = [(n["name"], n["attrs"].get("equation")) for n in bundle.graph["nodes"]
             if n["op"] == "Einsum" and any(i in constants for i in n["inputs"])]
    if not found:
        return []
    listed = ", ".join(f"{name!r} ({eq!r})" for name, eq in found[:3]) + (" …" if len(found) > 3 else "")
    return [f"{len(found)} Einsum node{'s' if len(found) > 1 else ''} with a constant weight "
            f"run{'' if len(found) > 1 else 's'} digitally, not on the chip: {listed}. Only a product that "
            "sums one activation axis against the weight (e.g. 'bchw,oc->bohw', without '...' where axes "
            "move) becomes an analog layer; re-export it in that form (or as a MatMul or Conv) to map it."]


def _shown_name(name: str | None) -> str | None:
    """A dimension's name as worth showing: None for ONNX shape inference's own `unk__7`,
    which names nothing the user wrote."""
    return None if name is None or re.fullmatch(r"unk__\d+", name) else name


def _shape(shape: list[int | None] | None, names: list[str | None] | None = None) -> str:
    """batch×3×224×224: symbolic dims by their names; an unnamed one is N if leading, else ?."""
    if shape is None:
        return "?"
    if not shape:
        return "scalar"
    names = names or [None] * len(shape)
    return "×".join(str(d) if d is not None else (n or ("N" if k == 0 else "?"))
                    for k, (d, n) in enumerate(zip(shape, names)))


def _io_shape(value: dict[str, Any]) -> str:
    """A graph input's or output's shape, without shape inference's own names: there the
    batch is the leading axis, N, and the rest as the model declares them. (A layer's
    whole shape keeps them: there an unk__ may hold the batch times something else.)"""
    names = [_shown_name(n) for n in value.get("dim_names") or []] or None
    return _shape(value["shape"], names)


@cli.command()
@click.argument("model", type=click.Path(dir_okay=False, path_type=Path))
@click.option("-o", "--output", type=click.Path(dir_okay=False, path_type=Path),
              help="Bundle to write [default: MODEL with suffix .xbar].")
@click.option("--crossbar", default="128x128", show_default=True, metavar="RxC", callback=_parsed(_parse_crossbar),
              help="Physical tile size: rows (inputs) x columns (bit lines), e.g. 256x128.")
@click.option("--encoding", type=click.Choice(["differential", "offset"]), default="differential", show_default=True,
              help="differential: G+/G- column pair per weight; offset: one column around G_mid plus one reference column per tile.")
@click.option("--weight-bits", type=click.IntRange(*WEIGHT_BITS), default=None, metavar="N",
              help="Quantise normalised weights to N-bit signed levels [default: unquantised].")
@click.option("--weight-clip", type=click.FloatRange(*WEIGHT_CLIP_PERCENTILE), default=None, metavar="PERCENTILE",
              help="Scale each column by this percentile of |W| instead of its maximum; larger weights clip.")
@click.option("--afp-exponents", type=click.IntRange(min=1), default=1, show_default=True, metavar="E",
              help="Analog floating point: each weight gets one of E exponents, its own column group per output "
                   "with digital gain 2^(-k·e); 1 = fixed point.")
@click.option("--afp-step", type=click.IntRange(min=1), default=None, metavar="k",
              help="Exponent step k of analog floating point (gains 1, 2^-k, 2^-2k, ...) [default: 2]; needs "
                   "--afp-exponents 2 or more.")
@click.option("--bit-slices", type=click.IntRange(min=1), default=1, show_default=True, metavar="S",
              help="Bit slicing: the weight magnitude as S digits of --bits-per-cell bits, one column group each.")
@click.option("--bits-per-cell", type=click.IntRange(min=1), default=None, metavar="b",
              help="Bits one cell holds in bit slicing.")
@click.option("--replicas", type=click.IntRange(min=1), default=1, show_default=True, metavar="R",
              help="Program every weight on R column pairs and average them digitally (fixed point only).")
@click.option("--rearrange-columns", "rearrange", type=click.Choice(["none", "ir-drop", "balance"]), default="none",
              show_default=True, help="Where weight columns sit on the tiles: ir-drop places the columns drawing the "
                                      "most current where wire resistance costs least; balance spreads current "
                                      "over column blocks. Needs a --hardware target with IR drop.")
@click.option("--rearrange-rows", "rearrange_rows", type=click.Choice(["none", "ir-drop"]), default="none",
              show_default=True, help="ir-drop: in every tile, the rows feeding the most current nearest the sense "
                                      "amplifiers (differential encoding; undone when a chip is built, free at "
                                      "inference). Needs a --hardware target with IR drop.")
@click.option("--depthwise", type=click.Choice(["tiles", "digital", "packed"]), default="tiles", show_default=True,
              help="Depthwise convolutions: tiles maps their block-diagonal matrix onto crossbars (most of its "
                   "tiles stay unallocated); digital keeps them digital, run as depthwise convolutions; packed "
                   "lays their rows channel-major and packs the tiles' live columns onto shared physical tiles, "
                   "run one pass per packed tile (differential encoding).")
@click.option("--pack-tiles", is_flag=True,
              help="Let the partly used tiles of all Conv/Gemm/MatMul layers share physical tiles, stacked by "
                   "rows and side by side by columns (e.g. last row blocks using 16 of 128 rows, of any layers), "
                   "each run as its own pass: fewer tiles, more passes (differential encoding).")
@click.option("--digital", multiple=True, metavar="NAME",
              help="Keep this layer (ONNX node name of a Conv/Gemm/MatMul) digital; repeatable.")
@click.option("--hardware", metavar="PRESET|FILE", help=_HARDWARE_HELP + " Stored as the deployment target; "
              "its conductance window is used for the mapping.")
@click.option("--set", "sets", multiple=True, metavar="KEY=VALUE", help=_SET_HELP)
@click.option("--calib-data", type=click.Path(dir_okay=False, path_type=Path),
              help=".npz with inputs 'x': find DAC input ranges and ADC full scales from them.")
@click.option("--force", is_flag=True, help="Overwrite an existing output bundle.")
def convert(model: Path, output: Path | None, crossbar: tuple[int, int], encoding: str, weight_bits: int | None,
            weight_clip: float | None, afp_exponents: int, afp_step: int | None, bit_slices: int,
            bits_per_cell: int | None,
            replicas: int, rearrange: str, rearrange_rows: str, depthwise: str, pack_tiles: bool,
            digital: tuple[str, ...], hardware: str | None, sets: tuple[str, ...], calib_data: Path | None,
            force: bool) -> None:
    """Convert an ONNX MODEL into a crossbar deployment bundle (.xbar)."""
    from xbar.bundle import check_output, save_bundle
    from xbar.converter import convert as do_convert
    from xbar.runtime.ranges import effective_spec

    if afp_step is not None and afp_exponents == 1:
        raise click.UsageError("--afp-step sets the exponent step of analog floating point; it needs "
                               "--afp-exponents 2 or more (with one exponent, fixed point, there is no step)")
    output = output or model.with_suffix(".xbar")
    check_output(output, force, inputs=[model] + ([calib_data] if calib_data else []))
    spec = _resolve_hardware(None, hardware, sets)
    bundle = do_convert(model, crossbar=crossbar, encoding=encoding, weight_bits=weight_bits,
                        digital=digital, weight_clip_percentile=weight_clip, afp_exponents=afp_exponents,
                        afp_step=2 if afp_step is None else afp_step, bit_slices=bit_slices,
                        bits_per_cell=bits_per_cell, replicas=replicas,
                        rearrange=rearrange, rearrange_rows=rearrange_rows, depthwise=depthwise,
                        pack_tiles=pack_tiles, hardware=spec, progress=_progress("convert", sys.stderr.isatty(), minimum=LONG_LIST))
    bundle.manifest["hardware"] = spec.to_dict()
    if calib_data is not None:
        from xbar.data import check_sample_axis, load_dataset
        from xbar.runtime.ranges import find_ranges

        check_sample_axis(bundle.graph, str(model))
        ds = load_dataset(calib_data, bundle.graph["inputs"], batch=bundle.manifest.get("batch"))
        find_ranges(bundle, ds.x, spec, progress=_progress("ranges", sys.stderr.isatty()))
        click.echo(f"ranges: DAC and ADC full scales from {len(ds)} samples of {calib_data} "
                   f"({spec.dac.percentile:g}th / {spec.adc.percentile:g}th percentile)")
    for note in effective_spec(bundle, spec)[1] + _digital_weight_notes(bundle) + _policy_notes(bundle):
        click.echo(f"note: {note}", err=True)
    save_bundle(bundle, output, force=force)
    s = bundle.manifest["summary"]
    click.echo(f"wrote {output}: {s['analog_layers']} analog layers on {_tiles_text(s)} of "
               f"{crossbar[0]}x{crossbar[1]}, {s['digital_layers']} digital layers, {s['analog_weights']:,} analog weights")
    from xbar.converter.batch import describe as describe_batch

    click.echo(f"batch: {describe_batch(bundle.manifest.get('batch'))}")


INFO_WIDTH = 100  # the text output fits a terminal this wide, when it is not a terminal
INFO_WIDTHS = (80, 120)  # on a terminal, its width held to these bounds
AUTO_TABLE_LAYERS = 30  # up to this many layers the per-layer table follows the summary by default


def _info_width() -> int:
    """Columns `info` fills: the terminal's width within INFO_WIDTHS, or INFO_WIDTH when
    the output is not a terminal (a pipe, a file: the same text whatever the window)."""
    import os
    import shutil

    if not os.isatty(1):
        return INFO_WIDTH
    return max(INFO_WIDTHS[0], min(INFO_WIDTHS[1], shutil.get_terminal_size((INFO_WIDTH, 24)).columns))


@cli.command()
@click.argument("bundle", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--layers/--no-layers", "layers", default=None,
              help=f"Print the per-layer table after the summary [default: only for models of up to "
                   f"{AUTO_TABLE_LAYERS} layers].")
@click.option("--json", "as_json", is_flag=True, help="Print the manifest summary as JSON (always every layer).")
def info(bundle: Path, layers: bool | None, as_json: bool) -> None:
    """Show a bundle's summary (model, batch, target, totals), then its layers, shapes, tiles and utilisation."""
    from xbar.bundle import load_bundle
    from xbar.converter.batch import describe as describe_batch
    from xbar.units import format_time

    b = load_bundle(bundle)
    m = b.manifest
    _check_packing(b)
    default_hardware, eval_seed, source = _eval_defaults(m)
    target, notes = _target(b, default_hardware)
    size = bundle.stat().st_size
    if as_json:
        keep = {k: m.get(k) for k in ("format_version", "xbar_version", "model", "mapping", "summary", "pool")}
        keep["calibration"] = m.get("calibration", [])
        keep["hardware"] = None if target.is_ideal else target.to_dict()
        keep["hardware_notes"] = notes
        keep["eval_defaults"] = None if target.is_ideal else {
            "seed": eval_seed, "t_inference": target.t_inference, "from": source}
        keep["layers"] = [{k: v for k, v in layer.items() if k not in ("arrays", "source_affine")}
                          for layer in m["layers"]]
        keep["batch"] = m.get("batch") or {"mode": "symbolic", "size": None, "dim": None}
        keep["io"] = {kind: m["graph"][kind] for kind in ("inputs", "outputs")}
        keep["bundle_bytes"] = size
        click.echo(json.dumps(keep, indent=1))
        return
    mp = m["mapping"]
    s = m["summary"]
    src = m["model"]
    _line("bundle", f"{bundle}  ({_bytes(size)}; format {m['format_version']}, written by xbar {m['xbar_version']})")
    _line("model", f"{src['source']}  sha256 {src['sha256'][:16]}…  opset {src['opset']}"
          + (f" (upgraded from {src['original_opset']})" if src["original_opset"] != src["opset"] else ""))
    ins = ", ".join(f"{i['name']} {_io_shape(i)}" for i in m["graph"]["inputs"])
    outs = ", ".join(f"{o['name']} {_io_shape(o)}" for o in m["graph"]["outputs"])
    _line("io", f"{ins} -> {outs}")
    _line("batch", describe_batch(m.get("batch")))
    bits = f"{mp['weight_bits']}-bit weights" if mp["weight_bits"] else "unquantised weights"
    if mp.get("afp_exponents", 1) > 1:
        bits += f", analog floating point ({mp['afp_exponents']} exponents, gains 2^-{mp['afp_step']}e)"
    if mp.get("bit_slices", 1) > 1:
        bits = f"bit-sliced: {mp['bit_slices']} slices of {mp['bits_per_cell']} bits (+ sign)"
    if mp.get("replicas", 1) > 1:
        bits += f", {mp['replicas']} replicas per weight"
    if mp.get("weight_clip_percentile") is not None:
        bits += f", columns scaled to the {mp['weight_clip_percentile']:g}th percentile of |w| (larger weights clip)"
    if mp.get("rearrange", "none") != "none":
        bits += f", columns placed for {mp['rearrange']}"
    if mp.get("rearrange_rows", "none") != "none":
        bits += f", rows placed for {mp['rearrange_rows']}"
    _line("mapping", f"{mp['rows']}x{mp['cols']} tiles, {mp['encoding']} encoding, {bits}, "
          f"G {mp['g_min'] * 1e6:g}–{mp['g_max'] * 1e6:g} µS"
          + _depthwise_text(m["summary"]) + _pack_tiles_text(m))
    if target.is_ideal:
        _line("target", "ideal hardware (converted without --hardware; `xbar eval --hardware` picks a chip)")
    else:
        lines = target.describe().splitlines()
        # The time is eval's default only (--drift and calibrate choose their own); the drift
        # compensation is the chip's, whatever the time.
        at = format_time(target.t_inference)
        when = {"calibration": f"eval at {at} on chip seed {eval_seed} (the last calibration's) unless --drift, "
                               "--seeds",
                "finetune": f"eval at {at} (the time the weights were fine-tuned for) unless --drift"
                }.get(source, f"eval at {at} unless --drift")
        lines[-1] = f"{'time':<8} {when}; drift compensation {target.drift_compensation}"
        stored = m.get("hardware")
        if source != "target" and _without_time(default_hardware) != _without_time(stored):
            converted = stored["device"]["model"] if stored else "ideal hardware"
            whose = ("the last calibration's hardware" if source == "calibration" else
                     "the hardware the weights were fine-tuned for (calibrate starts from it too)")
            notes = [f"{whose}, which eval uses by default; the bundle was converted for {converted}, set "
                     "otherwise (`xbar eval --hardware` chooses)"] + notes
        _line("target", lines[0])
        for line in lines[1:]:
            _line("", line)
        for note in notes:
            _line("", f"note: {note}")
    n_layers = len(m["layers"])
    _line("totals", f"{n_layers} layers: {s['analog_layers']} analog on {_tiles_text(s)}, "
          f"{s['digital_layers']} digital")
    _line("", f"{s['analog_weights']:,} analog weights, {s['parameters']:,} parameters in all")
    if "physical_columns" in s:
        _line("", f"{s['physical_columns']:,} physical columns, {_adc_total_text(m)}")
    tuned = m.get("finetune")
    if tuned and tuned.get("hardware"):
        epochs = f"{tuned['epochs']} epoch{'s' if tuned['epochs'] != 1 else ''}"
        _line("tuned", f"weights fine-tuned with '{tuned['method']}' ({tuned['loss']} loss) for {epochs} on "
              f"{tuned['samples']} samples of {tuned.get('data', 'the training data')}, seed {tuned['seed']}, "
              f"for t = {format_time(tuned['t_inference'])} on {tuned['hardware']['device']['model']} devices"
              + (f"; {tuned['calibration_dropped']} calibration(s) of the old weights dropped"
                           if tuned.get("calibration_dropped") else ""))
    for rec in m.get("calibration", []):
        acc = (f"; accuracy on calibration data {100 * rec['accuracy_before']:.2f}% -> {100 * rec['accuracy_after']:.2f}%"
               if "accuracy_before" in rec else "")
        _line("calib", f"calibration '{rec['method']}' on {rec['samples']} samples, chip seed {rec['seed']}, "
              f"t = {format_time(rec['t_inference'])}, {rec['hardware']['device']['model']} device{acc}; "
              f"agreement with ideal {100 * rec['agreement_with_ideal_before']:.2f}% -> "
              f"{100 * rec['agreement_with_ideal_after']:.2f}% ({rec['date']})")
    if layers is None:
        layers = n_layers <= AUTO_TABLE_LAYERS
    if not layers:
        click.echo()
        click.echo(textwrap.fill(f"{n_layers} layers: the per-layer table with `xbar info --layers`, every field "
                                 "with `--json`.", _info_width(), break_long_words=False, break_on_hyphens=False))
        return
    click.echo()
    click.echo(_layer_table(m, b))


def _tiles_text(summary: dict[str, Any]) -> str:
    """The chip's tiles; with packed layers, the physical tiles and the logical tiles they run."""
    phys = summary.get("physical_tiles", summary["tiles_used"])
    if phys == summary["tiles_used"]:
        return f"{phys:,} tiles"
    shared = f"; {summary['shared_tiles']:,} of them pooled across layers" if summary.get("shared_tiles") else ""
    return f"{phys:,} physical tiles ({summary['tiles_used']:,} logical tiles, packed ones run as passes{shared})"


def _check_packing(b: Any) -> None:
    """The pack maps (and shared tiles) as eval would read them: info shows their counts,
    so a map eval refuses must not be shown as if it were fine."""
    from xbar.bundle import layer_packing, shared_passes

    for entry in b.layers:
        if entry.get("placement") == "analog" and "pack_map" in entry.get("arrays", {}):
            layer_packing(b, entry)
    shared_passes(b)


def _pack_tiles_text(m: dict[str, Any]) -> str:
    """--pack-tiles, as the bundle packed: across layers (format 6) or within each (5)."""
    if not m["summary"].get("pack_tiles"):
        return ""
    rec = "; recurrent layers keep their own" if _recurrent_on_tiles(m["layers"]) else ""
    pool = m.get("pool")
    if pool:
        several = pool.get("multi_layer_tiles")
        several = "" if several is None else f", {several:,} of them holding passes of several layers"
        return (f"; partly used tiles of {pool['layers']} layers packed together on {pool['physical_tiles']:,} "
                f"tiles{several} (--pack-tiles{rec})")
    if any("shared_tiles" not in (l.get("tiles") or {}).get("packing", {"shared_tiles": 0}) for l in m["layers"]):
        return f"; partly used tiles packed within each layer (--pack-tiles, format 5{rec})"
    return f"; no partly used tiles to share (--pack-tiles{rec})"


def _depthwise_text(summary: dict[str, Any]) -> str:
    """The depthwise policy, when the model has depthwise convolutions it applied to."""
    if "depthwise" not in summary or summary.get("depthwise_layers", 1) == 0:
        return ""
    n = summary.get("depthwise_layers")
    how = {"tiles": "on block-diagonal tiles", "digital": "kept digital", "packed": "packed densely onto shared tiles"}
    count = "" if n is None else f"{n} "
    return (f"; {count}depthwise convolution{'' if n == 1 else 's'} {how.get(summary['depthwise'], summary['depthwise'])}"
            f" (--depthwise {summary['depthwise']})")


def _line(label: str, text: str, indent: str = "") -> None:
    """One summary field, `label` in a 9-wide margin, wrapped to the width between clauses."""
    width = _info_width()
    first, rest = indent + (f"{label:<8} " if label else " " * 9), indent + " " * 11
    lines, current, filled = [], first, False
    for clause in _clauses(text):
        if filled and len(current) + len(clause) > width:
            lines.append(current.rstrip())
            current = rest + clause.lstrip()
        else:
            current += clause
        filled = True
    lines.append(current.rstrip())
    for line in lines:
        if len(line) <= width:
            click.echo(line)
        else:  # one clause longer than the line: break it between words
            click.echo(textwrap.fill(line.strip(), width, initial_indent=line[:len(line) - len(line.lstrip())],
                                     subsequent_indent=rest, break_long_words=False, break_on_hyphens=False))


def _hardware_block(described: str, notes: list[str]) -> None:
    """`eval`'s and `calibrate`'s hardware paragraph: the spec's lines, each wrapped like
    `info`'s, then the notes."""
    click.echo("\nhardware")
    for line in described.splitlines():
        label, _, text = line.partition(" ")
        _line(label, text.lstrip(), indent="  ")
    for note in notes:
        _line("note:", note, indent="  ")


def _clauses(text: str) -> list[str]:
    """`text` cut after every ', ' and '; ' outside parentheses (each piece keeps its separator)."""
    out, depth, start = [], 0, 0
    for i, ch in enumerate(text):
        depth += {"(": 1, ")": -1}.get(ch, 0)
        if ch in ",;" and depth <= 0 and text[i + 1:i + 2] == " ":
            out.append(text[start:i + 2])
            start = i + 2
    out.append(text[start:])
    return [c for c in out if c]


def _bytes(n: int) -> str:
    for unit, size in (("GB", 1 << 30), ("MB", 1 << 20), ("kB", 1 << 10)):
        if n >= size:
            return f"{n / size:.1f} {unit}"
    return f"{n} B"


def _ellipsis(text: str, width: int) -> str:
    """`text` shortened in the middle to `width` characters (start and end name a layer best)."""
    if len(text) <= width:
        return text
    head = (width - 1) // 2
    return text[:head] + "…" + text[len(text) - (width - 1 - head):]


# Columns of the layer table left out, in this order, while it does not fit the width.
_NARROW_DROPS = ("columns", "affine")
_NAME_WIDTHS = (16, 48)  # the layer name column: at least, at most


def _layer_table(m: dict[str, Any], b: Any) -> str:
    """Per-layer rows fitted to the width: shapes per sample, the layer name gets what is
    left; on a narrow terminal the physical columns and the affine's source are left out."""
    from xbar.table import render

    batch = _batch_record(m)
    rows = []
    for layer in m["layers"]:
        t = layer.get("tiles")
        cols = t.get("physical_columns", 2 * t["weight_cols_per_block"][0]) if t else None
        adc, steps = _adc_per_sample(t), _steps_text(layer)
        rows.append([
            layer["name"], layer["kind"], f"{layer['K']}×{layer['N']}",
            f"{steps}×{layer['N']}" if steps else _per_sample(layer, batch),
            _layer_tiles_text(t) if t else "digital",
            f"{cols:,}" if t else "-",
            f"{adc:,}" if adc is not None else f"{t['adc_per_vector']:,}×{steps}" if t and steps else "-",
            f"{100 * _utilisation(t):.1f}%" if t else "-",
            _affine_text(layer, b),
        ])
    if not rows:
        return "no layers"
    headers = ["layer", "kind", "K×N", "out/sample", "tiles", "columns", "ADC/sample", "util", "affine"]
    numeric = [False, False, True, False, True, True, True, True, False]
    width, dropped = _info_width(), []

    def others() -> int:
        return sum(max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(headers) if i) + 2 * (len(headers) - 1)

    for column in _NARROW_DROPS:
        if _NAME_WIDTHS[0] + others() <= width:
            break
        i = headers.index(column)
        for seq in (headers, numeric, *rows):
            del seq[i]
        dropped.append(column)
    name_width = max(_NAME_WIDTHS[0], min(_NAME_WIDTHS[1], width - others()))
    for r in rows:
        r[0] = _ellipsis(r[0], name_width)
    notes = "; digital: runs off the crossbars" if any(r[4] == "digital" for r in rows) else ""
    if any(r[3].endswith(_WHOLE_SHAPE) for r in rows):
        notes += f"; {_WHOLE_SHAPE}: the whole output shape, as no shape inference tells where in it the batch is"
    if dropped:
        notes += f"; {' and '.join(dropped)} left out at this width (a wider terminal or --json has them)"
    if any(layer["kind"] == "recurrent" for layer in m["layers"]):
        notes += "; recurrent: one input and one output vector per time step"
        if _unnamed_steps(m):
            notes += " (T: their number, unnamed in the model)"
    packings = [layer["tiles"]["packing"] for layer in m["layers"] if "packing" in (layer.get("tiles") or {})]
    if any("shared_tiles" not in pk for pk in packings):
        notes += ("; tiles 'P/L×n': L logical tiles packed on P physical tiles, up to n passes of one tile per "
                  "input vector; util of the physical tiles")
    if any("shared_tiles" in pk for pk in packings):
        notes += ("; tiles 'a+bs/L×n': L logical tiles on a tiles of the layer's own and b of the tiles pooled "
                  "across layers, up to n passes of one tile per input vector; util of those tiles, pooled ones "
                  "counted whole")
    note = textwrap.fill(f"(out/sample: output shape without the batch dimension{notes})", width)
    return render(headers, rows, numeric=numeric) + "\n" + note


def _utilisation(t: dict[str, Any]) -> float:
    """Cells used over the cells of the tiles on the chip (a packed layer's physical tiles;
    bundles written before packing recorded it have it computed here)."""
    pk = t.get("packing")
    if not pk or "cells_used" not in t:
        return t["utilisation"]
    return pk.get("utilisation", t["cells_used"] / max(1, pk["physical_tiles"] * t["rows"] * t["cols"]))


def _layer_tiles_text(t: dict[str, Any]) -> str:
    pk = t.get("packing")
    if not pk:
        return f"{t['tiles_used']:,}"
    cell = _tiles_cell(pk["physical_tiles"], pk.get("shared_tiles", 0), t["tiles_used"])
    return f"{cell}×{pk['max_passes_per_tile']}"


def _tiles_cell(own: int, shared: int, logical: int) -> str:
    """A packed layer's tiles 'P/L' (P physical for L logical tiles), or 'a+bs/L' with b of
    them pooled across layers: the one form info and eval --per-layer write."""
    return f"{own:,}" + (f"+{shared:,}s" if shared else "") + f"/{logical:,}"


def _per_layer_tiles(e: dict[str, Any]) -> str:
    """eval --per-layer's tiles column, as info writes it (without the passes)."""
    shared = e.get("shared_tiles", 0)
    if e["physical_tiles"] == e["tiles"] and not shared:
        return f"{e['tiles']:,}"
    return _tiles_cell(e["physical_tiles"] - shared, shared, e["tiles"])


def _batch_record(m: dict[str, Any]) -> dict[str, Any]:
    """The manifest's batch record; for a bundle written before it had one, what the first
    graph input's leading dimension says."""
    if m.get("batch"):
        return m["batch"]
    ins = m["graph"]["inputs"]
    if not ins or not ins[0]["shape"]:
        return {"mode": "symbolic", "size": None, "dim": None}
    value, name = ins[0]["shape"][0], (ins[0].get("dim_names") or [None])[0]
    return {"mode": "symbolic", "size": None, "dim": name} if value is None else {"mode": "fixed", "size": value}


_WHOLE_SHAPE = "*"  # marks an out/sample that is the whole shape, the batch somewhere inside


def _affine_text(layer: dict[str, Any], b: Any) -> str:
    """What a layer's per-output affine holds: BN, cal(ibrated), a bias, or nothing (-). A
    layer the last calibration fitted without folding (--no-fold) keeps its form: cal. BN."""
    source = layer["affine"]["source"]
    last = (b.manifest.get("calibration") or [{}])[-1]
    if source != "calibrated" and layer["name"] in last.get("layers", []):
        return "cal. BN" if source == "batchnorm" else "cal."
    if source in ("batchnorm", "calibrated"):
        return {"batchnorm": "BN", "calibrated": "cal."}[source]
    import numpy as np

    return "bias" if np.any(b.array(layer["arrays"]["bias"])) else "-"


def _per_sample(layer: dict[str, Any], batch: dict[str, Any]) -> str:
    """A layer's output shape without the batch, wherever it is; where the shape hides it
    (an exporter's unk__ dimension) but its vectors per sample are known, as vectors × N;
    else the whole shape."""
    shape, names = layer["output_shape"], layer.get("output_dim_names")
    rest = per_sample(shape, names, batch)
    if rest is not None:  # no batch left in it: a free dimension by its name, else ? (not N)
        return _shape(rest[0], _free_names(rest[1], len(rest[0]))) if rest[0] else "1"
    vectors = (layer.get("tiles") or {}).get("vectors_per_sample")
    return f"{vectors}×{layer['N']}" if vectors else _shape(shape, _free_names(names, len(shape))) + _WHOLE_SHAPE


def _free_names(names: list[str | None] | None, rank: int) -> list[str]:
    """Names for `_shape` where no dimension is the batch: the model's, else ? (never N)."""
    return [_shown_name(n) or "?" for n in (names or [None] * rank)]


def _steps_text(layer: dict[str, Any]) -> str | None:
    """A recurrent layer's time steps per sample: the size, else the symbolic dimension's
    name, else T; None for other layers."""
    if layer["kind"] != "recurrent":
        return None
    steps = layer.get("time_steps") or {}
    size = steps.get("size") or (layer.get("tiles") or {}).get("vectors_per_sample")
    return str(size) if size else _shown_name(steps.get("name")) or "T"


def _unnamed_steps(m: dict[str, Any]) -> bool:
    """Whether some recurrent layer's time steps show as T for want of a size or a name."""
    return any(_steps_text(layer) == "T" and not _shown_name(((layer.get("time_steps") or {}).get("name")))
               for layer in m["layers"] if layer["kind"] == "recurrent")


def _adc_total_text(m: dict[str, Any]) -> str:
    """ADC conversions per sample over the analog layers; where only recurrent layers' time
    steps are symbolic, as a sum with a term per step dimension (e.g. 120 + 2,048×seq)."""
    total = m["summary"].get("adc_per_sample")
    if total is not None:
        return f"{total:,} ADC conversions per sample"
    known, per_step = 0, {}
    for layer in m["layers"]:
        t = layer.get("tiles") if layer["placement"] == "analog" else None
        if not t:
            continue
        adc, steps = _adc_per_sample(t), _steps_text(layer)
        if adc is not None:
            known += adc
        elif steps:
            per_step[steps] = per_step.get(steps, 0) + t["adc_per_vector"]
        else:
            return "ADC conversions per sample unknown (symbolic shapes)"
    terms = ([f"{known:,}"] if known else []) + [f"{n:,}×{name}" for name, n in per_step.items()]
    unnamed = " (T: the number of time steps, unnamed in the model)" if _unnamed_steps(m) else ""
    return " + ".join(terms) + " ADC conversions per sample" + unnamed


def _adc_per_sample(t: dict[str, Any] | None) -> int | None:
    """ADC conversions one sample costs a layer: per input vector one per position and row block."""
    if not t or t.get("vectors_per_sample") is None:
        return None
    return t["adc_per_vector"] * t["vectors_per_sample"]


def _without_time(hardware: dict[str, Any] | None) -> dict[str, Any] | None:
    return None if hardware is None else {k: v for k, v in hardware.items() if k != "t_inference"}


def _network_target(manifest: dict[str, Any]) -> dict[str, Any] | None:
    """The hardware a bundle's weights are meant for, which calibrate and finetune start
    from: a fine-tune's (the chip and time its weights were trained against), else the
    target it was converted for (None: ideal)."""
    tuned = manifest.get("finetune")
    return tuned["hardware"] if tuned and tuned.get("hardware") else manifest.get("hardware")


def _eval_defaults(manifest: dict[str, Any]) -> tuple[dict[str, Any] | None, int, str]:
    """What a plain `xbar eval` runs a bundle on: (hardware, chip seed, where they come from).
    A calibrated bundle on its last calibration's chip (hardware, seed, and its time in the
    hardware's t_inference); else the hardware its weights are meant for, chip 0."""
    record = (manifest.get("calibration") or [None])[-1]
    if record:
        return dict(record["hardware"], t_inference=record["t_inference"]), record["seed"], "calibration"
    tuned = manifest.get("finetune")
    return _network_target(manifest), 0, "finetune" if tuned and tuned.get("hardware") else "target"


def _target(b, hardware: dict[str, Any] | None):
    """`hardware` (what `eval` runs the bundle on by default, _eval_defaults) as the runtime
    would apply it to bundle `b`, and what differs from it."""
    from xbar.hardware import HardwareSpec, preset
    from xbar.runtime.ranges import effective_spec

    return effective_spec(b, HardwareSpec.from_dict(hardware) if hardware else preset("ideal"))


LONG_LIST = 30  # preparations over fewer steps than this (nodes, layers) finish without a bar


def _progress(label: str, enabled: bool, minimum: int = 3):
    """A progress bar on stderr over a list of steps, if `enabled` (a TTY) and there are `minimum` or more."""
    def wrap(items):
        items = list(items)
        if not enabled or len(items) < minimum:
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
@click.option("--drift", metavar="TIME", callback=_parsed(_parse_time),
              help="Required: the time after programming at which to calibrate, e.g. 1d. The chip keeps drifting, "
                   "so a fit is only right near the time it was made for.")
@click.option("--method", type=click.Choice(["stats", "affine", "sgd"]), default="affine", show_default=True,
              help="stats: re-estimate BN mean/variance from noisy activations; affine: per-channel least squares "
                   "to the ideal-hardware activations (both closed form, layer by layer, label-free); sgd: all "
                   "per-output gains and shifts trained end to end through the chip (needs torch).")
@click.option("--epochs", type=click.IntRange(min=1), default=None,
              help="sgd only: passes over the calibration data [default: 20].")
@click.option("--lr", type=click.FloatRange(min=0, min_open=True), default=None,
              help="sgd only: Adam step, relative to each layer's gain and output size [default: 0.01].")
@click.option("--loss", type=click.Choice(["distill", "ce"]), default=None,
              help="sgd only: distill (label-free: match the ideal-hardware outputs) or ce (cross-entropy on the "
                   "labels 'y') [default: distill].")
@click.option("--hardware", metavar="PRESET|FILE",
              help=_HARDWARE_HELP + " [default: the bundle's target, or the hardware a fine-tuned bundle was "
                                    "trained for]")
@click.option("--set", "sets", multiple=True, metavar="KEY=VALUE", help=_SET_HELP)
@click.option("--seed", type=click.IntRange(min=0), default=0, show_default=True, help="The chip instance to calibrate.")
@click.option("--only", multiple=True, metavar="NAMES", help=_ONLY_HELP)
@click.option("--without", multiple=True, metavar="NAMES", help=_WITHOUT_HELP)
@click.option("--no-fold", is_flag=True, help="Keep BN statistics unfolded instead of the periphery's gain/shift form.")
@click.option("-o", "--output", type=click.Path(dir_okay=False, path_type=Path),
              help="Calibrated bundle [default: BUNDLE with suffix .calibrated.xbar].")
@click.option("--batch-size", type=click.IntRange(min=1), default=128, show_default=True)
@click.option("--force", is_flag=True, help="Overwrite an existing output bundle.")
def calibrate(bundle: Path, data: Path, drift: float | None, method: str, epochs: int | None, lr: float | None,
              loss: str | None, hardware: str | None, sets: tuple[str, ...],
              seed: int, only: tuple[str, ...], without: tuple[str, ...], no_fold: bool,
              output: Path | None, batch_size: int, force: bool) -> None:
    """Re-fit every analog layer's per-output affine (batch-norm) on one chip instance, then fold it.

    The input bundle is never modified; the output records the calibration (method, samples,
    chip seed, drift time, effective hardware, before/after on the calibration data).
    """
    import time

    from xbar.bundle import check_output, load_bundle, save_bundle
    from xbar.data import check_labels, check_sample_axis, load_dataset, n_samples, scored_shape, take
    from xbar.errors import ConfigError
    from xbar.runtime.calibrate import MIN_SAMPLES, calibrate as do_calibrate
    from xbar.units import format_time

    if drift is None:
        raise click.UsageError("give --drift TIME, the time after programming to calibrate for (e.g. --drift 1d): "
                               "a chip calibrated at one time can be worse than uncalibrated at another, so xbar "
                               "does not pick one for you")
    sgd = None
    given = [f"--{n}" for n, v in (("epochs", epochs), ("lr", lr), ("loss", loss)) if v is not None]
    if method == "sgd":
        from xbar.training.sgd import SGDOptions

        defaults = SGDOptions()
        sgd = SGDOptions(epochs=epochs or defaults.epochs, lr=lr or defaults.lr, loss=loss or defaults.loss,
                         batch_size=min(batch_size, defaults.batch_size))
    elif given:
        raise click.UsageError(f"{', '.join(given)} set{'s' if len(given) == 1 else ''} how --method sgd trains; "
                               f"method {method!r} is closed form and has no such setting")
    output = output or bundle.with_name(bundle.stem + ".calibrated.xbar")
    check_output(output, force, inputs=[bundle, data])
    b = load_bundle(bundle)
    spec = _resolve_hardware(_network_target(b.manifest), hardware, sets, only, without)
    if spec.is_ideal:
        raise ConfigError(f"{bundle} targets ideal hardware (converted without --hardware) and no --hardware was "
                          "given: there is no chip error to calibrate. Pass --hardware pcm (or a TOML file).")
    spec = spec.override(t_inference=drift)
    check_sample_axis(b.graph, str(bundle))
    ds = load_dataset(data, b.graph["inputs"], min_samples=MIN_SAMPLES, batch=b.manifest.get("batch"))
    check_labels(ds, scored_shape(b.graph["outputs"][0], b.manifest.get("batch")))
    t0 = time.perf_counter()
    show = sys.stderr.isatty()
    out, rec = do_calibrate(b, ds.x, spec, seed, method, y=ds.y, fold=not no_fold, batch_size=batch_size,
                            progress=(lambda items: _iter_bar(list(items), "epochs" if sgd else "layers"))
                            if show else None,
                            ranges_progress=_progress("ranges", show), sgd=sgd)
    took = time.perf_counter() - t0
    save_bundle(out, output, force=force)
    ran = _spec_of(rec["hardware"])
    click.echo(f"calibrated {len(rec['layers'])} layers of {bundle} with '{method}' on {rec['samples']} samples, "
               f"chip seed {seed}, t = {format_time(ran.t_inference)} -> {output}")
    click.echo(f"  took {took:.1f} s wall-clock on this machine (ranges, before/after passes and the fit; "
               "not loading or saving)")
    if "sgd" in rec:
        r = rec["sgd"]
        losses = r["loss_per_epoch"]
        click.echo(f"  sgd: {r['epochs']} epochs, {r['steps']} steps of {r['batch_size']} samples, lr {r['lr']:g}, "
                   f"loss {r['loss']} {losses[0]:.4g} (epoch 1) -> {losses[-1]:.4g} (epoch {len(losses)})")
    _hardware_block(ran.describe(), rec.get("notes", []))
    if rec.get("ranges_from_calibration_data"):
        click.echo(f"  {bundle} had no measured DAC/ADC ranges: they were measured on these {rec['samples']} "
                   "samples first and are stored in the output, so 'before' below already runs with them, "
                   "not with the input bundle's physical ranges")
    if "accuracy_before" in rec:
        click.echo(f"\n  accuracy on the calibration data: {100 * rec['accuracy_before']:.2f}% before, "
                   f"{100 * rec['accuracy_after']:.2f}% after (ideal hardware {100 * rec['accuracy_ideal']:.2f}%)")
    click.echo(f"  top-1 agreement with ideal hardware: {100 * rec['agreement_with_ideal_before']:.2f}% before, "
               f"{100 * rec['agreement_with_ideal_after']:.2f}% after")


def _spec_of(d: dict[str, Any]):
    from xbar.hardware import HardwareSpec

    return HardwareSpec.from_dict(d)


@cli.command(name="eval")
@click.argument("bundle", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--data", required=True, type=click.Path(dir_okay=False, path_type=Path),
              help=".npz with 'x' (inputs, model input shape) and optional 'y' (integer labels).")
@click.option("--reference", type=click.Path(dir_okay=False, path_type=Path),
              help="Source ONNX model: also run it in onnxruntime and report agreement and max |diff| (ideal hardware).")
@click.option("--hardware", metavar="PRESET|FILE", help=_HARDWARE_HELP + " [default: the bundle's target; a "
              "calibrated bundle's last calibration's, a fine-tuned one's training hardware (`xbar info` shows it)]")
@click.option("--set", "sets", multiple=True, metavar="KEY=VALUE", help=_SET_HELP)
@click.option("--seeds", default=None, metavar="LIST", callback=_parsed(_parse_seeds),
              help="Chip instances to sample, e.g. 0-9 or 0,3,7. One seed is one chip, bit for bit. "
                   "[default: 0, or the chip a calibrated bundle was calibrated on]")
@click.option("--drift", metavar="TIMES", callback=_parsed(_parse_times),
              help="Times after programming, e.g. 1s,1h,1d,1y [default: the spec's t_inference, or the time a "
                   "calibrated bundle was calibrated (a fine-tuned one trained) for].")
@click.option("--only", multiple=True, metavar="NAMES", help=_ONLY_HELP)
@click.option("--without", multiple=True, metavar="NAMES", help=_WITHOUT_HELP)
@click.option("--per-layer", is_flag=True, help="Per analog layer: SNR against ideal hardware, the SNR a per-channel "
              "affine re-fit would leave, clipping, dominant error; on the first seed at the last drift time.")
@click.option("--batch-size", type=click.IntRange(min=1), default=128, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object instead of text (schema: README).")
def evaluate(bundle: Path, data: Path, reference: Path | None, hardware: str | None, sets: tuple[str, ...],
             seeds: list[int] | None, drift: list[float] | None, only: tuple[str, ...], without: tuple[str, ...],
             per_layer: bool, batch_size: int, as_json: bool) -> None:
    """Evaluate a bundle on a data set: ideal hardware, and chip instances of the target hardware."""
    from xbar.bundle import load_bundle
    from xbar.data import check_labels, check_sample_axis, load_dataset, n_samples, scored_shape, take
    from xbar.errors import ConfigError
    from xbar.reference import file_sha256, onnxruntime_fn
    from xbar.runtime import Runtime
    from xbar.source_affines import has_source_affines, source_network
    from xbar.dims import fixed_batch
    from xbar.runtime.evaluate import aligned, predict, summarise
    from xbar.runtime.ranges import effective_spec

    b = load_bundle(bundle)
    record = (b.manifest.get("calibration") or [None])[-1]
    # A calibrated bundle is evaluated on the chip it was calibrated for, a fine-tuned one on
    # the hardware it was trained for, unless told otherwise.
    base, default_seed, _ = _eval_defaults(b.manifest)
    spec = _resolve_hardware(base, hardware, sets, only, without)
    if spec.is_ideal and (seeds is not None or drift is not None or per_layer):
        given = "--hardware selects ideal hardware" if hardware else f"{bundle} targets ideal hardware"
        raise ConfigError(f"--seeds, --drift and --per-layer are about chip instances, but {given}; pass "
                          "--hardware pcm (or a TOML file) to sample chips")
    seed_list = seeds if seeds is not None else [default_seed]
    # The default's time (a calibration's, a fine-tune's, the target's), or the one --set gives.
    times = drift if drift is not None else [spec.t_inference]
    spec, notes = effective_spec(b, spec)
    check_sample_axis(b.graph, str(bundle))
    ds = load_dataset(data, b.graph["inputs"], batch=b.manifest.get("batch"))
    per_sample = scored_shape(b.graph["outputs"][0], b.manifest.get("batch"))
    check_labels(ds, per_sample)
    ref_fn = (onnxruntime_fn(reference, ds.x, str(data), (b.manifest.get("batch") or {}).get("time_major"))
              if reference is not None else None)
    show = not as_json and sys.stderr.isatty()
    warnings = []
    # A model fixed at batch B runs in whole batches of B; read noise is drawn per batch, so
    # the size that ran is the one reported (--json), and a size the user gave is not
    # changed without a word.
    fixed = fixed_batch(b.manifest.get("batch"))
    ran = aligned(batch_size, fixed)
    if ran != batch_size and (click.get_current_context().get_parameter_source("batch_size")
                              is not click.core.ParameterSource.DEFAULT):
        warnings.append(f"--batch-size {batch_size} runs as {ran}, the next multiple of the batch of {fixed} "
                        "this model fixes")
    batch_size = ran
    # "Ideal" is the network as converted, also for a calibrated bundle: its chip-fitted
    # affines on exact hardware would be a correction applied where nothing needs one.
    exact = has_source_affines(b)
    if not exact:
        warnings.append("this calibrated bundle predates stored source affines: 'ideal' below runs its "
                        "chip-calibrated affines on exact hardware, not the converted network")
    ideal = predict(Runtime(source_network(b)), ds.x, batch_size, _progress("ideal", show))
    if per_sample is None or not all(isinstance(d, int) for d in per_sample):  # free dimensions: as it ran
        check_labels(ds, None if ideal.ndim == 1 and ideal.dtype.kind in "iu" else list(ideal.shape[1:]))
    if sum(d != 1 for d in ideal.shape[1:]) > 1:
        warnings.append(f"the first output has {'×'.join(map(str, ideal.shape[1:]))} values per sample (several "
                        "positions): top-1 agreement below compares each sample's single largest value, not each "
                        "position's class; per-position agreement needs the Python API")
    ref = None
    same_model = None
    if ref_fn is not None:
        same_model = file_sha256(reference) == b.manifest["model"]["sha256"]
        if b.manifest.get("finetune") and _is_export_of(reference, b):
            pass  # this bundle's own float model (finetune --export-onnx): nothing to warn about
        elif b.manifest.get("finetune"):  # its weights are no longer its source's
            warnings.append(
                (f"{reference} is the model this bundle was converted from, but the bundle was fine-tuned since: "
                 "its weights differ, and so do its outputs" if same_model else
                 f"{reference} is not the model this bundle was converted from, and the bundle was fine-tuned")
                + "; the float model that `xbar finetune --export-onnx` writes computes what the bundle does")
        elif not same_model:
            warnings.append(f"{reference} is not the model this bundle was converted from (sha256 differs)")
        ref = predict(ref_fn, ds.x, batch_size, _progress("onnxruntime", show))
    for w in warnings:
        click.echo(f"warning: {w}", err=True)
    scored = summarise(ideal, ds, ref)
    result: dict[str, Any] = {
        "xbar_version": __version__, "bundle": str(bundle), "data": str(data), "n": len(ds), "batch_size": batch_size,
        "labels": ds.y is not None,
        "ideal_network": "source" if exact else "calibrated",
        "ideal_accuracy": scored.get("accuracy"),
        "reference": None if ref is None else {
            "model": str(reference), "same_model": same_model, "accuracy": scored.get("reference_accuracy"),
            "agreement": scored["agreement"], "max_abs_diff": scored["max_abs_diff"],
            "max_rel_diff": scored["max_rel_diff"]},
        "calibration": None if record is None else {
            k: record[k] for k in ("method", "seed", "t_inference", "samples", "date")},
        "hardware": None if spec.is_ideal else {k: v for k, v in spec.to_dict().items() if k != "t_inference"},
        "hardware_notes": notes,
        "seeds": None, "rows": [], "per_layer": None, "warnings": warnings,
    }
    rows = []
    if not spec.is_ideal:
        from xbar.runtime.sweep import sweep

        def bar(jobs):
            jobs = list(jobs)
            return _iter_bar(jobs, "chips") if show else jobs

        rows = sweep(b, spec, ds, seed_list, times, batch_size, ideal_out=ideal, progress=bar,
                     chip_progress=_progress("building chip", show, minimum=LONG_LIST))
        result["seeds"] = seed_list
        result["rows"] = [r.to_dict() for r in rows]
    if per_layer and not spec.is_ideal:
        from xbar.runtime.diagnose import diagnose

        step = fixed or 1  # up to 256 samples, in whole batches of a fixed-batch model
        x = take(ds.x, slice(0, min(len(ds), max(256 // step, 1) * step)))
        result["per_layer"] = {"seed": seed_list[0], "t": times[-1], "samples": n_samples(x),
                               "layers": diagnose(b, spec.override(t_inference=times[-1]), x, seed_list[0])}
    if as_json:
        click.echo(json.dumps(result))
        return
    _print_eval(dict(result, asked_ideal=hardware is not None), spec, times, rows)


def _is_export_of(path: Path, b) -> bool:
    """Whether `path` holds, byte for byte, the float model `finetune --export-onnx` (to_onnx)
    writes for bundle `b`."""
    from xbar.converter.export import to_onnx

    return to_onnx(b).SerializeToString() == path.read_bytes()


def _pct(v: float | None) -> str:
    return "-" if v is None else f"{100 * v:.2f}%"


def _print_eval(result: dict[str, Any], spec, times: list[float], rows) -> None:
    from xbar.table import render
    from xbar.units import format_seeds, format_time

    click.echo(f"{result['bundle']} on {result['data']}: {result['n']} samples"
               + ("" if result["labels"] else " (no labels 'y': agreement only)"))
    cal = result["calibration"]
    if cal:
        ideal = ("the network as converted" if result["ideal_network"] == "source"
                 else "this bundle's calibrated affines on exact hardware")
        click.echo(f"  calibrated with '{cal['method']}' on chip seed {cal['seed']} at t = "
                   f"{format_time(cal['t_inference'])}; 'ideal' below is {ideal}")
    pairs = []
    if result["labels"]:
        pairs.append(("accuracy, ideal hardware", _pct(result["ideal_accuracy"])))
    ref = result["reference"]
    if ref:
        if ref["accuracy"] is not None:
            pairs.append(("accuracy, onnxruntime", _pct(ref["accuracy"])))
        pairs.append(("top-1 agreement, ideal vs onnxruntime", _pct(ref["agreement"])))
        pairs.append(("max |ideal - onnxruntime|", f"{ref['max_abs_diff']:.3g} "
                      f"({ref['max_rel_diff']:.3g} of the largest |onnxruntime output|)"))
    width = max((len(k) for k, _ in pairs), default=0)
    for k, v in pairs:
        click.echo(f"  {k:<{width}}  {v}")
    if spec.is_ideal:
        click.echo("\nhardware: ideal" + ("" if result["asked_ideal"] else
                                           " (the bundle has no hardware target; --hardware pcm samples chip instances)"))
        return
    _hardware_block(spec.describe(times), result["hardware_notes"])
    seeds = result["seeds"]
    n = len(seeds)
    what = "accuracy" if result["labels"] else "top-1 agreement with ideal hardware"
    table = []
    for r in result["rows"]:
        a, g = r["accuracy"], r["agreement_with_ideal"]
        main = a if a is not None else g
        ci = f"[{100 * main['ci95'][0]:.2f}, {100 * main['ci95'][1]:.2f}]" if n > 1 else "-"
        spread = f" ± {100 * main['std']:.2f}" if n > 1 else ""
        table.append([r["time"], f"{100 * main['mean']:.2f}{spread}%", ci,
                      _pct(main["min"]), _pct(main["max"]), _pct(g["mean"])])
    if n > 1:
        click.echo("\n" + textwrap.fill(f"{what} over {n} chip instances (seeds {format_seeds(seeds)}): mean ± "
                                        "sample std, 95% confidence interval of the mean, worst and best chip",
                                        _info_width(), break_long_words=False))
    else:
        click.echo(f"\n{what} of one chip instance (seed {seeds[0]})")
    click.echo(render(["time", what.split()[0] if result["labels"] else "agreement", "95% CI", "worst chip",
                       "best chip", "agrees w/ ideal"], table, numeric=[False, True, True, True, True, True]))
    if 1 < n < 10:
        click.echo(f"  ({n} chips: too few for a reliable spread; use --seeds 0-39 where the tail matters)")
    d = result["per_layer"]
    if d:
        click.echo(f"\nper layer, chip seed {d['seed']} at t = {format_time(d['t'])}, first {d['samples']} samples "
                   "(worst first; SNR of the layer's output against ideal hardware on the same input):")
        calibrated = bool(result["calibration"])
        drows = [[e["layer"], f"{e['snr_db']:.1f}"] + ([f"{e['snr_own_affine_db']:.1f}"] if calibrated else [])
                 + [f"{e['snr_after_affine_db']:.1f}", f"{100 * e['dac_clip']:.2f}%", f"{100 * e['adc_clip']:.2f}%",
                    _per_layer_tiles(e),
                    e["dominant"]] for e in d["layers"]]
        click.echo(render(["layer", "SNR dB"] + (["calibrated"] if calibrated else [])
                          + ["after affine", "DAC clip", "ADC clip", "tiles", "dominant error"], drows,
                          numeric=[False, True] + ([True] if calibrated else []) + [True, True, True, True, False]))
        notes = (["calibrated: the SNR after this bundle's calibrated per-channel scale and shift; they were "
                  "fitted to the ideal network, so they also absorb earlier layers' errors, which can lower a "
                  "layer's own figure."] if calibrated else [])
        notes.append("after affine: the SNR left once each output channel's scale and shift are re-fitted (least "
                     "squares), the most that affine calibration could reach on that layer alone.")
        for note in notes:
            click.echo(textwrap.fill(note, _info_width(), initial_indent="  ", subsequent_indent="    "))


@cli.command(name="ops")
@click.option("--json", "as_json", is_flag=True, help="Print the vocabulary as one JSON object.")
def ops_command(as_json: bool) -> None:
    """List the ONNX operators xbar converts: analog layers and digital ops."""
    import onnx

    from xbar.converter.load import MIN_NATIVE_OPSET, TARGET_OPSET
    from xbar.converter.vocabulary import CONVERSION_OPS
    from xbar.ops import ANALOG_OPS, DIGITAL_OPS, RECURRENT_OPS

    newest = onnx.defs.onnx_opset_version()
    if as_json:
        click.echo(json.dumps({"analog": sorted(ANALOG_OPS), "recurrent": sorted(RECURRENT_OPS), "digital": sorted(DIGITAL_OPS),
                               "conversion_time": sorted(CONVERSION_OPS),
                               "opsets": {"native": [MIN_NATIVE_OPSET, newest], "upgraded_to": TARGET_OPSET}}))
        return
    wrap = functools.partial(textwrap.fill, width=100, initial_indent="  ", subsequent_indent="  ")
    click.echo(f"analog (on crossbars): {', '.join(sorted(ANALOG_OPS))} with a constant weight operand; "
               "an Einsum that is a product with a constant 2-D matrix over one activation axis (e.g. "
               "'btd,de->bte', 'bchw,oc->bohw') is rewritten to MatMul (with Transposes where axes move); "
               "other Einsums stay digital")
    click.echo(f"recurrent (W and R on crossbars, gates and state digital): {', '.join(sorted(RECURRENT_OPS))}")
    click.echo(f"digital (NumPy, {len(DIGITAL_OPS)} ops):")
    click.echo(wrap(", ".join(sorted(DIGITAL_OPS))))
    click.echo(f"folded at conversion: {', '.join(sorted(CONVERSION_OPS))} (If only with a condition known then); "
               "any op whose inputs are all constants")
    click.echo(f"opsets {MIN_NATIVE_OPSET}-{newest} (older models are upgraded to {TARGET_OPSET}); "
               "only the standard ONNX domain")



def main() -> None:
    cli(prog_name="xbar")


def _register_commands() -> None:
    # Kept in their own modules (they import this one's helpers); torch and Dask load only when they run.
    from xbar.cli_finetune import finetune
    from xbar.cli_sweep import plot, sweep

    cli.add_command(finetune)
    cli.add_command(sweep)
    cli.add_command(plot)


if __name__ == "__main__":
    # `python -m xbar.cli`: run the package's module (which registers every command) rather
    # than this copy, so that xbar.cli_finetune's import of xbar.cli is not a second, cyclic one.
    from xbar.cli import main as _package_main

    _package_main()
elif __name__ == "xbar.cli":
    # Not as "__mp_main__", the copy of `python -m xbar.cli` that a spawned process (a
    # sweep's local Dask worker) imports: that copy needs no commands, and registering them
    # there is the same cyclic import.
    _register_commands()
