"""Run a bundle in torch: the NumPy runtime's graph walk, with torch ops and TorchLayers.

`TorchRuntime(bundle, hardware, seed)` builds the NumPy `Runtime` first (so the graph
decoding, the input checks and - on a chip - the sampled chip instance are the NumPy
runtime's own) and then gives every step a torch form. Float32, CPU.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable, Mapping

import numpy as np

from xbar.training import require_torch

torch = require_torch()
from torch import nn  # noqa: E402

from xbar.affine import FIELDS, Affine  # noqa: E402
from xbar.bundle import Bundle  # noqa: E402
from xbar.errors import DataError, UnsupportedOpError, XbarError  # noqa: E402
from xbar.ops import LAYER_OP  # noqa: E402
from xbar.runtime.executor import Runtime  # noqa: E402
from xbar.training.torch_layer import TorchLayer  # noqa: E402
from xbar.training.torch_ops import TORCH_OPS, is_tensor, missing_ops, to_numpy  # noqa: E402

if TYPE_CHECKING:
    from xbar.hardware import HardwareSpec


def layer_affine(entry: dict[str, Any], bundle: Bundle) -> Affine:
    """A layer's per-output affine as the bundle stores it (as Layer.__init__ reads it)."""
    return Affine(*(bundle.array(entry["arrays"][name]) for name in FIELDS), entry["affine"]["eps"])


def noise_generator(seed: int, layer: int) -> torch.Generator:
    """The read-noise stream of one layer: seeded from (seed, layer), independent per layer."""
    state = np.random.SeedSequence([seed, 2, layer]).generate_state(1, np.uint64)[0]
    return torch.Generator().manual_seed(int(state) & 0x7FFF_FFFF_FFFF_FFFF)


class TorchRuntime(nn.Module):
    """A bundle as a differentiable torch module. `hardware` None: exact (ideal) products;
    otherwise the NumPy runtime's chip instance for `seed`, read through torch.

    `train_weights` (exact hardware only) makes every analog layer's K×N weight, in
    normalised units, a parameter; `perturb(layer_name, weight) -> weight`, if given, is
    applied to it at every forward (noise injection for fine-tuning)."""

    def __init__(self, bundle: Bundle, hardware: "HardwareSpec | None" = None, seed: int = 0,
                 train_weights: bool = False,
                 perturb: Callable[[str, torch.Tensor], torch.Tensor] | None = None, progress=None):
        super().__init__()
        missing = missing_ops(bundle)
        if missing:
            listed = "; ".join(f"{op} (node{'s' if len(nodes) > 1 else ''} {', '.join(repr(n) for n in nodes[:5])}"
                               f"{', ...' if len(nodes) > 5 else ''})" for op, nodes in sorted(missing.items()))
            raise UnsupportedOpError(
                f"the torch executor (training side) has no torch form for {listed}. Inference, "
                "evaluation and the closed-form calibration methods (stats, affine) run this bundle in "
                "the NumPy runtime; training through it needs these ops in xbar/training/torch_ops.py.")
        self.bundle = bundle
        self.reference = Runtime(bundle, hardware, seed, progress=progress)
        self.input_names, self.output_names = self.reference.input_names, self.reference.output_names
        self.fixed_batch = self.reference.fixed_batch
        used = {node["attrs"]["layer"] for node in bundle.graph["nodes"] if node["op"] == LAYER_OP}
        self.layers = nn.ModuleDict()
        for i in sorted(used):
            layer = self.reference.layers[i]
            hook = None if perturb is None else (lambda w, name=layer.name: perturb(name, w))
            self.layers[str(i)] = TorchLayer(layer, layer_affine(bundle.layers[i], bundle),
                                             noise_generator(seed, i), train_weights, hook)
        self.steps: list[tuple[str, Any, list[str], list[str], dict[str, Any], Any]] = []
        for node, (name, fn, ins, outs, attrs) in zip(bundle.graph["nodes"], self.reference.steps):
            if node["op"] == LAYER_OP:
                self.steps.append((name, self.layers[str(node["attrs"]["layer"])], ins, outs, attrs, None))
            else:
                self.steps.append((name, TORCH_OPS[node["op"]], ins, outs, attrs, fn))

    def torch_layers(self) -> list[TorchLayer]:
        return list(self.layers.values())

    def affines(self) -> dict[str, Affine]:
        """Each layer's (trained) per-output affine, by layer name."""
        return {layer.name: layer.affine() for layer in self.layers.values()}

    def forward(self, feeds: Mapping[str, Any]) -> dict[str, Any]:
        """Named inputs (tensors or arrays) → named outputs; float values are tensors."""
        # The NumPy runtime's checks (names, shapes, batch multiple), on detached views.
        checked = self.reference._check_inputs({k: to_numpy(v) for k, v in feeds.items()})
        env: dict[str, Any] = dict(self.reference.constants)
        for name, array in checked.items():
            given = feeds[name]
            if array.dtype.kind == "f":
                dtype = torch.from_numpy(np.empty(0, array.dtype)).dtype
                env[name] = given.to(dtype) if is_tensor(given) else torch.from_numpy(array.copy())
            else:
                env[name] = array
        batch = max((np.shape(v)[0] for v in checked.values() if np.ndim(v)), default=1)
        size = self.fixed_batch
        if size is None or batch <= size:
            self._run(env)
            return {name: env[name] for name in self.output_names}
        # A graph that fixes its batch size runs chunk by chunk of it, whole (layers included:
        # their rows are independent); outputs join as the NumPy runtime joins them.
        fed = set(self.input_names)
        envs = [{k: (v[j:j + size] if k in fed else v) for k, v in env.items()} for j in range(0, batch, size)]
        for e in envs:
            self._run(e)
        out = {}
        for name, spec in zip(self.output_names, self.reference.outputs):
            parts = [e[name] for e in envs]
            declared = spec.get("shape")
            whole = parts[0].ndim and declared and declared[0] == size and all(p.shape[0] == size for p in parts)
            if is_tensor(parts[0]):
                out[name] = torch.cat(parts) if whole else torch.stack(parts)
            else:
                out[name] = np.concatenate(parts) if whole else np.stack(parts)
        return out

    def _run(self, env: dict[str, Any]) -> None:
        for name, fn, ins, outs, attrs, numpy_fn in self.steps:
            args = [env[i] if i else None for i in ins]
            try:
                if numpy_fn is None:  # a layer
                    x = args[0] if is_tensor(args[0]) else torch.from_numpy(np.array(args[0], np.float32))
                    results = [fn(x)]
                elif not any(is_tensor(a) for a in args):
                    results = numpy_fn(args, attrs)  # nothing to differentiate: the NumPy op itself
                else:
                    results = fn(args, attrs)
            except XbarError:
                raise
            except (ValueError, IndexError, RuntimeError) as exc:
                raise DataError(f"node {name!r} failed on inputs of shape "
                                f"{[None if a is None else list(np.shape(a)) for a in args]}: {exc}") from None
            for o, r in zip(outs, results):
                if o:
                    # Tensors carry float activations only; anything else is plain data.
                    env[o] = r.detach().numpy() if is_tensor(r) and not r.is_floating_point() else r


__all__ = ["TorchRuntime", "layer_affine", "noise_generator"]
