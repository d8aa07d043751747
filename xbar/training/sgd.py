"""Calibration by gradient descent: every analog layer's per-output gain and shift trained
end to end through one chip instance, with fresh read noise at every step.

The closed-form methods (runtime/calibrate.py: stats, affine) fit one layer at a time to
that layer's ideal activations. Here all affines move together to reduce one loss at the
network's output, so one layer may absorb another's error:

- `distill` (label-free): mean squared error between the chip's outputs and the
  ideal-hardware outputs of the same samples, divided by the ideal outputs' mean square so
  that the loss reads as a relative error whatever the output scale (logit matching, as in
  Ba & Caruana, "Do Deep Nets Really Need to be Deep?", NeurIPS 2014).
- `ce`: cross-entropy of the first output (logits) against the labels.

Step sizes are relative: Adam moves every parameter by about `lr` per step, so each
layer's gains get their own group with lr · rms(gain) and its shifts lr · rms(layer output),
which makes one `lr` mean the same for a layer whose batch-norm scale is 0.01 and for one
whose scale is 10.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Iterable

import numpy as np

from xbar.training import require_torch, training_threads

torch = require_torch()

from xbar.affine import Affine  # noqa: E402
from xbar.data import one_array  # noqa: E402
from xbar.errors import DataError  # noqa: E402
from xbar.training.torch_executor import TorchRuntime  # noqa: E402

LOSSES = ("distill", "ce")


@dataclass(frozen=True)
class SGDOptions:
    epochs: int = 20
    lr: float = 0.01  # relative step (see module docstring)
    loss: str = "distill"
    batch_size: int = 64


def _loss_fn(kind: str) -> Callable[[Any, Any], Any]:
    if kind == "distill":
        def distill(out, target):
            return torch.mean((out - target) ** 2) / torch.clamp(torch.mean(target ** 2), min=1e-30)
        return distill
    if kind == "ce":
        def ce(out, target):
            return torch.nn.functional.cross_entropy(out.reshape(out.shape[0], -1), target)
        return ce
    raise DataError(f"unknown loss {kind!r}; choose one of {', '.join(LOSSES)}")


def _param_groups(trt: TorchRuntime, x0: Any, lr: float) -> list[dict[str, Any]]:
    """One Adam group per trained tensor, its learning rate scaled to the tensor's own size."""
    rms: dict[str, float] = {}
    hooks = []
    for layer in trt.torch_layers():
        if layer.analog:
            hooks.append(layer.register_forward_hook(
                lambda mod, _inp, out: rms.__setitem__(mod.name, float(torch.sqrt(torch.mean(out.detach() ** 2))))))
    try:
        with torch.no_grad():
            trt.forward({trt.input_names[0]: x0})
    finally:
        for h in hooks:
            h.remove()
    groups = []
    for layer in trt.torch_layers():
        if not layer.analog:
            continue
        g = float(torch.sqrt(torch.mean(layer.gain.detach() ** 2)))
        groups.append({"params": [layer.gain], "lr": lr * (g if g > 0 else 1.0)})
        s = rms.get(layer.name, 0.0)
        groups.append({"params": [layer.shift], "lr": lr * (s if s > 0 else 1.0)})
    return groups


def run_epoch(trt, opt, loss_of, xt, yt, n: int, bs: int, order_rng, name: str, out_name: str,
              losses: list[float], before: Callable[[], None] | None = None,
              after_backward: Callable[[], None] | None = None) -> int:
    """One pass over the data in a fresh random order; appends its mean loss, returns steps.
    `before` runs before each forward (e.g. a noise draw), `after_backward` between the
    backward pass and the step (e.g. a penalty's gradient)."""
    perm = torch.randperm(n, generator=order_rng)
    total, steps = 0.0, 0
    # A last batch smaller than the rest is dropped: its gradient would be mostly noise.
    for lo in range(0, n - bs + 1, bs):
        idx = perm[lo:lo + bs]
        if before is not None:
            before()
        opt.zero_grad(set_to_none=True)
        loss = loss_of(trt.forward({name: xt[idx]})[out_name], yt[idx])
        loss.backward()
        if after_backward is not None:
            after_backward()
        opt.step()
        total += float(loss.detach()) * len(idx)
        steps += 1
    losses.append(total / max(steps * bs, 1))
    return steps


def check_scored_output(bundle: Any, what: str) -> None:
    """The training side fits the first output's scores: refuse a model whose first output
    is not floating point (an ArgMax's class indices have no gradient)."""
    out = bundle.graph["outputs"][0]
    if np.dtype(out["dtype"]).kind != "f":
        raise DataError(f"{what} trains on the model's first output, and {out['name']!r} is {out['dtype']} (class "
                        "indices, e.g. an ArgMax), which has no gradient. Export the model with its scores (logits) "
                        "as the first output.")


def fit_affines(trt: TorchRuntime, x: np.ndarray, target: np.ndarray, options: SGDOptions, seed: int,
                progress: Callable[[Iterable[int]], Iterable[int]] | None = None
                ) -> tuple[dict[str, Affine], dict[str, Any]]:
    """Train the analog layers' affines of `trt` (a chip) on (x, target); return the trained
    affines by layer name and a record of the run (losses per epoch, steps).

    `target` is the ideal-hardware first output for `distill`, integer labels for `ce`."""
    x = one_array(x, "the training side (calibrate --method sgd)")
    check_scored_output(trt.bundle, "calibrate --method sgd")
    loss_of = _loss_fn(options.loss)
    for p in trt.parameters():
        p.requires_grad_(False)
    trained = [layer for layer in trt.torch_layers() if layer.analog]
    for layer in trained:
        layer.gain.requires_grad_(True)
        layer.shift.requires_grad_(True)
    name = trt.input_names[0]
    out_name = trt.output_names[0]
    n = len(x)
    bs = min(options.batch_size, n)
    xt = torch.from_numpy(np.ascontiguousarray(x))
    yt = torch.from_numpy(np.ascontiguousarray(target if options.loss == "distill" else target.astype(np.int64)))
    opt = torch.optim.Adam(_param_groups(trt, xt[:bs], options.lr))
    order_rng = torch.Generator().manual_seed(int(np.random.SeedSequence([seed, 3]).generate_state(1)[0]))
    losses: list[float] = []
    steps = 0
    epochs = range(options.epochs)
    with training_threads():
        for _ in (progress(epochs) if progress else epochs):
            steps += run_epoch(trt, opt, loss_of, xt, yt, n, bs, order_rng, name, out_name, losses)
    for layer in trained:
        layer.gain.requires_grad_(False)
        layer.shift.requires_grad_(False)
    affines = {layer.name: layer.affine() for layer in trained}
    record = {"epochs": options.epochs, "lr": options.lr, "loss": options.loss, "batch_size": bs,
              "steps": steps, "loss_per_epoch": [round(v, 6) for v in losses]}
    return affines, record
