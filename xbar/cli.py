"""The `xbar` command line: convert, info, eval."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import click

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
    xbar eval model.xbar --data test.npz --reference model.onnx
                                   accuracy on the simulated chip vs onnxruntime
    """


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
@click.option("--force", is_flag=True, help="Overwrite an existing output bundle.")
def convert(model: Path, output: Path | None, crossbar: str, encoding: str, weight_bits: int | None,
            weight_clip: float | None, digital: tuple[str, ...], force: bool) -> None:
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
    bundle = do_convert(model, crossbar=parse_crossbar(crossbar), encoding=encoding, weight_bits=weight_bits,
                        digital=digital, weight_clip_percentile=weight_clip)
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
    for rec in m.get("calibration", []):
        click.echo(f"calibration: {json.dumps(rec)}")


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


@cli.command(name="eval")
@click.argument("bundle", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--data", required=True, type=click.Path(dir_okay=False, path_type=Path),
              help=".npz with 'x' (inputs, model input shape) and optional 'y' (integer labels).")
@click.option("--reference", type=click.Path(dir_okay=False, path_type=Path),
              help="Source ONNX model: also run it in onnxruntime and report agreement and max |diff|.")
@click.option("--batch-size", type=click.IntRange(min=1), default=128, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object instead of text.")
def evaluate(bundle: Path, data: Path, reference: Path | None, batch_size: int, as_json: bool) -> None:
    """Evaluate a bundle on a data set on the simulated chip."""
    from xbar.bundle import load_bundle
    from xbar.data import load_dataset
    from xbar.reference import file_sha256, onnxruntime_fn
    from xbar.runtime import Runtime
    from xbar.runtime.evaluate import predict, summarise

    b = load_bundle(bundle)
    rt = Runtime(b)
    ds = load_dataset(data, b.graph["inputs"][0])
    show = not as_json and sys.stderr.isatty()
    out = predict(rt, ds.x, batch_size, _progress("xbar", show))
    ref = None
    warning = None
    if reference is not None:
        if file_sha256(reference) != b.manifest["model"]["sha256"]:
            warning = f"{reference} is not the model this bundle was converted from (sha256 differs)"
            click.echo(f"warning: {warning}", err=True)
        ref = predict(onnxruntime_fn(reference), ds.x, batch_size, _progress("onnxruntime", show))
    result: dict[str, Any] = {"bundle": str(bundle), "data": str(data), "hardware": "ideal", **summarise(out, ds, ref)}
    if warning:
        result["warning"] = warning
    if as_json:
        click.echo(json.dumps(result))
        return
    click.echo(f"{bundle} on {data}: {ds.x.shape[0]} samples, ideal hardware")
    if "accuracy" in result:
        click.echo(f"  accuracy (xbar)         {100 * result['accuracy']:.2f}%")
    if ref is not None:
        if "reference_accuracy" in result:
            click.echo(f"  accuracy (onnxruntime)  {100 * result['reference_accuracy']:.2f}%")
        click.echo(f"  top-1 agreement         {100 * result['agreement']:.2f}%")
        click.echo(f"  max |xbar - onnxrt|     {result['max_abs_diff']:.3g}")
    if "accuracy" not in result and ref is None:
        click.echo("  (no labels 'y' in the data and no --reference: nothing to score)")


def main() -> None:
    cli(prog_name="xbar")


if __name__ == "__main__":
    main()
