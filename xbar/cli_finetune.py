"""`xbar finetune`: hardware-aware fine-tuning of a bundle's weights (the training side's command)."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from xbar.cli import (_HARDWARE_HELP, _SET_HELP, _hardware_block, _iter_bar, _network_target, _parse_time, _parsed,
                      _resolve_hardware)


@click.command()
@click.argument("bundle", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--data", required=True, type=click.Path(dir_okay=False, path_type=Path),
              help="Training .npz: 'x' inputs and 'y' labels (e.g. models/digits_train.npz).")
@click.option("--method", type=click.Choice(["noise", "hessian"]), default="noise", show_default=True,
              help="noise: device noise of the target injected into the weights at every step; hessian: the same "
                   "plus a penalty on the noise variance, weighted by the loss curvature of each weight.")
@click.option("--hardware", metavar="PRESET|FILE",
              help=_HARDWARE_HELP + " [default: the bundle's target, or the hardware a fine-tuned bundle was "
                                    "trained for]")
@click.option("--set", "sets", multiple=True, metavar="KEY=VALUE", help=_SET_HELP)
@click.option("--drift", metavar="TIME", callback=_parsed(_parse_time),
              help="Required: the time after programming whose drift and read noise to train against, e.g. 1y.")
@click.option("--epochs", type=click.IntRange(min=1), default=5, show_default=True)
@click.option("--lr", type=click.FloatRange(min=0, min_open=True), default=1e-3, show_default=True,
              help="Adam step on the weights, as a fraction of each column's largest weight.")
@click.option("--loss", type=click.Choice(["ce", "distill"]), default="ce", show_default=True,
              help="ce: cross-entropy on the labels; distill: match the bundle's own ideal-hardware outputs.")
@click.option("--seed", type=click.IntRange(min=0), default=0, show_default=True,
              help="Seeds the noise draws and the sample order.")
@click.option("--calib-data", type=click.Path(dir_okay=False, path_type=Path),
              help="Samples to measure the DAC/ADC ranges again on, if the bundle has ranges [default: --data].")
@click.option("-o", "--output", type=click.Path(dir_okay=False, path_type=Path),
              help="Fine-tuned bundle [default: BUNDLE with suffix .finetuned.xbar].")
@click.option("--export-onnx", type=click.Path(dir_okay=False, path_type=Path),
              help="Also write the fine-tuned network as a float ONNX model.")
@click.option("--force", is_flag=True, help="Overwrite existing outputs.")
def finetune(bundle: Path, data: Path, method: str, hardware: str | None, sets: tuple[str, ...],
             drift: float | None, epochs: int, lr: float, loss: str, seed: int, calib_data: Path | None,
             output: Path | None, export_onnx: Path | None, force: bool) -> None:
    """Fine-tune a bundle's weights under its target chip's device noise; write a bundle mapped like the input.

    The output has the input's tiles, encoding and mapping options; its ranges are measured
    again if the input had them, and earlier calibrations (of the old weights) are dropped.
    Needs torch (pip install 'xbar[train]').
    """
    import time

    from xbar.bundle import check_output, load_bundle, same_file, save_bundle
    from xbar.data import check_labels, check_sample_axis, load_dataset, scored_shape
    from xbar.errors import ConfigError
    from xbar.training import require_torch
    from xbar.units import format_time

    require_torch()
    from xbar.converter.export import export_onnx as write_onnx
    from xbar.converter.remap import remap
    from xbar.runtime import Runtime
    from xbar.source_affines import source_network
    from xbar.runtime.evaluate import accuracy, predict
    from xbar.training.finetune import MIN_SAMPLES, FinetuneOptions, finetune as run

    if drift is None:
        raise click.UsageError("give --drift TIME, the time after programming to train for (e.g. --drift 1y): the "
                               "noise a weight sees grows with time, so xbar does not pick one for you")
    output = output or bundle.with_name(bundle.stem + ".finetuned.xbar")
    inputs = [bundle, data] + ([calib_data] if calib_data else [])
    check_output(output, force, inputs=inputs)
    if export_onnx is not None:
        if same_file(Path(export_onnx), Path(output)):
            raise click.UsageError(f"-o and --export-onnx both name {output}; the bundle and the ONNX model need two "
                                   "files")
        check_output(export_onnx, force, inputs=inputs, option="--export-onnx")
    b = load_bundle(bundle)
    spec = _resolve_hardware(_network_target(b.manifest), hardware, sets)
    if spec.is_ideal:
        raise ConfigError(f"{bundle} targets ideal hardware and no --hardware was given: there is no device noise "
                          "to train against. Pass --hardware pcm (or a TOML file).")
    spec = spec.override(t_inference=drift)
    check_sample_axis(b.graph, str(bundle))
    batch = b.manifest.get("batch")
    ds = load_dataset(data, b.graph["inputs"], min_samples=MIN_SAMPLES, batch=batch)
    check_labels(ds, scored_shape(b.graph["outputs"][0], batch))
    ranged = any("ranges" in e for e in b.layers)
    calib_x = None
    if ranged:
        calib_x = load_dataset(calib_data, b.graph["inputs"], batch=batch).x if calib_data else ds.x
    options = FinetuneOptions(method=method, epochs=epochs, lr=lr, loss=loss)
    show = sys.stderr.isatty()
    t0 = time.perf_counter()
    weights, affines, rec = run(b, ds.x, ds.y, spec, options, seed,
                                progress=(lambda items: _iter_bar(list(items), "epochs")) if show else None)
    rec["data"] = str(data)
    out = remap(b, weights, affines, calib_x=calib_x, record=rec)
    took = time.perf_counter() - t0
    save_bundle(out, output, force=force)
    if export_onnx is not None:
        write_onnx(out, export_onnx, force=force)
    losses = rec["loss_per_epoch"]
    click.echo(f"fine-tuned {len(weights)} analog layers of {bundle} with '{method}' for {epochs} epochs "
               f"({rec['steps']} steps of {rec['batch_size']} samples from {data}), target t = "
               f"{format_time(spec.t_inference)} -> {output}")
    trend = f"{losses[0]:.4g}" if len(losses) == 1 else f"{losses[0]:.4g} (epoch 1) -> {losses[-1]:.4g}"
    click.echo(f"  loss {loss} {trend} (epoch {len(losses)}); took {took:.1f} s wall-clock: training "
               f"{rec['training_seconds']:.1f} s (the record's training_seconds), then mapping"
               + (" and ranges" if ranged else "")
               + (f", of which {rec['hessian_seconds']:.1f} s curvature estimates" if method == "hessian" else ""))
    if ranged:
        click.echo(f"  DAC/ADC ranges measured again on {len(calib_x)} samples of {calib_data or data}")
    if b.manifest.get("calibration"):
        click.echo(f"  trained the network as converted, not its calibrated affines, and dropped "
                   f"{len(b.manifest['calibration'])} calibration record(s) of the old weights; calibrate the "
                   "fine-tuned bundle again on its chip")
    if ds.y is not None:
        before = accuracy(predict(Runtime(source_network(b)), ds.x, 256), ds.y)
        after = accuracy(predict(Runtime(out), ds.x, 256), ds.y)
        click.echo(f"  ideal-hardware accuracy on the training data: {100 * before:.2f}% before, {100 * after:.2f}% "
                   "after (what the fine-tune costs digitally; evaluate chips with `xbar eval`)")
    if export_onnx is not None:
        click.echo(f"  fine-tuned float model (ONNX) -> {export_onnx}")
    _hardware_block(spec.describe(), [
        "trained against its devices (programming noise, drift to t, stuck cells, read noise); IR drop and the "
        "DAC/ADC act on currents and were not part of the training draw",
        "eval and calibrate start from this hardware and time on the fine-tuned bundle (`xbar info` shows it)"])
