"""Hardware-aware fine-tuning of a bundle's weights: `noise` and `hessian`.

Both train the analog layers' weights (and every layer's per-output affine) on exact
hardware in torch, with the target chip's device noise injected at every step:

- noise: each step draws what one chip would make of the current weights
  (xbar/training/device_noise.py: the converter's encoding, the runtime's device model at
  the target time), runs the forward pass with those weights, and applies the gradient to
  the clean weights (the perturbation is a constant of the step: d(w + δ)/dw = 1).
- hessian (our design, after Hessian-aware training): the same, plus a penalty
  λ · Σ hᵢ σᵢ², where hᵢ is a Hutchinson estimate of the diagonal of the loss Hessian,
  E[z ⊙ Hz] with Rademacher z, refreshed every `hessian_every` epochs, and σᵢ² is the device
  model's variance of weight i at its current value (converter/encodings.position_variance,
  programming and read noise, in weight units). By second-order Taylor, ½ Σ hᵢ σᵢ² is the
  expected loss increase the noise causes, so the default λ = ½ makes the penalty that
  estimate; its gradient moves each weight towards values the devices hold more precisely,
  the more so the more the loss curves along it. Negative curvature estimates count as 0.

Same data passes and optimizer for both methods: the Hessian estimate is extra compute
(two backward passes per probe), reported in the record.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Callable, Iterable

import numpy as np

from xbar.training import require_torch, training_threads

torch = require_torch()

from xbar.bundle import Bundle  # noqa: E402
from xbar.config import MappingConfig  # noqa: E402
from xbar.converter.encodings import position_variance  # noqa: E402
from xbar.converter.layers import conv_structure  # noqa: E402
from xbar.data import one_array  # noqa: E402
from xbar.errors import DataError  # noqa: E402
from xbar.hardware import HardwareSpec  # noqa: E402
from xbar.source_affines import source_network  # noqa: E402
from xbar.training.device_noise import sample_weights  # noqa: E402
from xbar.training.sgd import _loss_fn, _param_groups, check_scored_output, run_epoch  # noqa: E402
from xbar.training.torch_executor import TorchRuntime  # noqa: E402

METHODS = ("noise", "hessian")
MIN_SAMPLES = 32  # fewer give no usable gradient estimate of a whole network's weights


@dataclass(frozen=True)
class FinetuneOptions:
    method: str = "noise"
    epochs: int = 5
    lr: float = 1e-3  # Adam step on weights in normalised units (fraction of the column's largest weight)
    batch_size: int = 64
    loss: str = "ce"
    hessian_every: int = 2  # epochs between refreshes of the curvature estimate
    hessian_probes: int = 4  # Rademacher vectors per refresh (each on a fresh batch)
    penalty: float = 0.5  # λ of the hessian penalty (½: the Taylor estimate of the loss increase)


def _variance_slope(u: np.ndarray, cfg: MappingConfig, spec: HardwareSpec) -> np.ndarray:
    """d σ²(u)/du of the per-position variance in normalised units, by central differences
    (the variance model is piecewise smooth in |u|; a step of 1e-4 resolves it)."""
    h = 1e-4
    var = lambda m: position_variance(m, cfg.encoding, spec.device, spec.t_inference)  # noqa: E731
    return (var(np.clip(u + h, -1, 1)) - var(np.clip(u - h, -1, 1))) / (2 * h)


def hessian_diagonal(loss_fn: Callable[[], Any], params: list[Any], probes: int, generator: Any) -> list[Any]:
    """Hutchinson's estimate of diag(H), H the Hessian of `loss_fn()` in `params`: the mean
    over `probes` Rademacher vectors z of z ⊙ (H z), each Hz one extra backward pass through
    the gradient; `loss_fn` is called once per probe (e.g. on a fresh batch)."""
    sums = [torch.zeros_like(p) for p in params]
    for _ in range(probes):
        grads = torch.autograd.grad(loss_fn(), params, create_graph=True)
        zs = [torch.randint(0, 2, p.shape, generator=generator).to(p.dtype) * 2 - 1 for p in params]
        hz = torch.autograd.grad(grads, params, grad_outputs=zs)
        for s, z, h in zip(sums, zs, hz):
            s += z * h.detach()
    return [s / probes for s in sums]


def finetune(bundle: Bundle, x: np.ndarray, y: np.ndarray | None, spec: HardwareSpec, options: FinetuneOptions,
             seed: int = 0, progress: Callable[[Iterable[int]], Iterable[int]] | None = None
             ) -> tuple[dict[str, np.ndarray], dict[str, Any], dict[str, Any]]:
    """Train; return the effective float weights {layer: K×N} of the analog layers, the
    per-output affines {layer: Affine} of every layer, and a record of the run.

    A calibrated bundle is trained as converted: its calibration fitted the affines to one
    chip, and training from those would carry that chip's corrections into every chip."""
    bundle = source_network(bundle)
    if options.method not in METHODS:
        raise DataError(f"unknown fine-tuning method {options.method!r}; choose one of {', '.join(METHODS)}")
    x = one_array(x, "the training side (finetune)")
    check_scored_output(bundle, "finetune")
    if len(x) < MIN_SAMPLES:
        raise DataError(f"{len(x)} training samples; fine-tuning a network's weights needs at least {MIN_SAMPLES} "
                        "(the shipped models/digits_train.npz has 835)")
    if options.loss == "ce" and y is None:
        raise DataError("the training data has no labels ('y'): --loss ce trains on them. Give labelled data, or "
                        "--loss distill to match the bundle's own ideal-hardware outputs")
    cfg = MappingConfig.from_dict(bundle.manifest["mapping"])
    rng = np.random.default_rng([seed, 4])
    noise_on = {"value": False}
    deltas: dict[str, torch.Tensor] = {}

    def perturb(name: str, w: torch.Tensor) -> torch.Tensor:
        return w + deltas[name] if noise_on["value"] and name in deltas else w

    trt = TorchRuntime(bundle, None, seed, train_weights=True, perturb=perturb)
    layers = [layer for layer in trt.torch_layers() if layer.analog]
    # Grouped convolutions: only their real weights are on the chip, draw device noise and
    # are trained. The torch layer multiplies by the whole block-diagonal K×N matrix, so its
    # structural zeros do get gradients (and a curvature penalty): those are masked before
    # every step, or the zeros would move off the diagonal blocks and the weights could not
    # be written back.
    entries = {e["name"]: e for e in bundle.layers}
    valid = {layer.name: conv_structure(entries[layer.name]["params"], layer.n) if layer.kind == "conv" else None
             for layer in layers}
    masks = {name: torch.from_numpy(v.astype(np.float32)) for name, v in valid.items() if v is not None}
    name_in, name_out = trt.input_names[0], trt.output_names[0]
    xt = torch.from_numpy(np.ascontiguousarray(x))
    if options.loss == "distill":
        with torch.no_grad():
            target = trt.forward({name_in: xt})[name_out].detach()
    else:
        target = torch.from_numpy(np.asarray(y, dtype=np.int64))
    loss_of = _loss_fn(options.loss)
    bs = min(options.batch_size, len(x))
    groups = _param_groups(trt, xt[:bs], options.lr)  # the affines, with their relative steps
    for layer in trt.torch_layers():
        layer.gain.requires_grad_(True)
        layer.shift.requires_grad_(True)
    groups.append({"params": [layer.weight for layer in layers], "lr": options.lr})
    opt = torch.optim.Adam(groups)
    order = torch.Generator().manual_seed(int(np.random.SeedSequence([seed, 5]).generate_state(1)[0]))

    def draw() -> None:
        for layer in layers:
            w = (layer.weight.detach().double() * layer.col_scale).numpy()
            noisy = sample_weights(w, valid[layer.name], cfg, spec, rng)
            deltas[layer.name] = torch.from_numpy((noisy / layer.col_scale.numpy() - layer.weight.detach().double()
                                                   .numpy()).astype(np.float32))

    curvature: dict[str, np.ndarray] = {}
    hessian_seconds = 0.0

    def estimate_curvature() -> None:
        nonlocal hessian_seconds
        t0 = time.perf_counter()
        noise_on["value"] = False

        def batch_loss():
            idx = torch.randperm(len(x), generator=order)[:bs]
            return loss_of(trt.forward({name_in: xt[idx]})[name_out], target[idx])

        ws = [layer.weight for layer in layers]
        for layer, h in zip(layers, hessian_diagonal(batch_loss, ws, options.hessian_probes, order)):
            curvature[layer.name] = np.maximum(h.numpy().astype(np.float64), 0.0)
        hessian_seconds += time.perf_counter() - t0

    def noisy() -> None:
        draw()
        noise_on["value"] = True

    def after_backward() -> None:
        noise_on["value"] = False
        if options.method == "hessian":
            for layer in layers:
                slope = _variance_slope(layer.weight.detach().double().numpy(), cfg, spec)
                layer.weight.grad += torch.from_numpy((options.penalty * curvature[layer.name] * slope)
                                                      .astype(np.float32))
        for layer in layers:
            if layer.name in masks:
                layer.weight.grad.mul_(masks[layer.name])

    losses: list[float] = []
    steps = 0
    epochs = range(options.epochs)
    t_start = time.perf_counter()
    with training_threads():
        for epoch in (progress(epochs) if progress else epochs):
            if options.method == "hessian" and epoch % options.hessian_every == 0:
                estimate_curvature()
            steps += run_epoch(trt, opt, loss_of, xt, target, len(x), bs, order, name_in, name_out, losses,
                               before=noisy, after_backward=after_backward)
    weights = {layer.name: (layer.weight.detach().double() * layer.col_scale).numpy() for layer in layers}
    affines = {layer.name: layer.affine() for layer in trt.torch_layers()}
    record = {"method": options.method, "epochs": options.epochs, "lr": options.lr, "loss": options.loss,
              "batch_size": bs, "steps": steps, "samples": int(len(x)), "seed": int(seed),
              "t_inference": spec.t_inference, "hardware": spec.to_dict(),
              "loss_per_epoch": [round(v, 6) for v in losses],
              "training_seconds": round(time.perf_counter() - t_start, 2)}  # the training loop only
    if options.method == "hessian":
        record.update(hessian_every=options.hessian_every, hessian_probes=options.hessian_probes,
                      penalty=options.penalty, hessian_seconds=round(hessian_seconds, 2))
    return weights, affines, record
