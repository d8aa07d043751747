"""The training side: runs a bundle in torch so that gradients flow through the chip."""

from __future__ import annotations

from xbar.errors import XbarError


class TorchMissingError(XbarError):
    """torch, needed by the training-side commands only, is not installed."""


# The training extra's pin (pyproject.toml, `train`): the CPU build these machines carry.
TORCH_REQUIREMENT = "torch==2.13.0"


def require_torch():
    """The torch module, or a TorchMissingError saying which commands need it and how to get it."""
    try:
        import torch
    except ImportError:
        raise TorchMissingError(
            "torch is not installed. Only the training-side commands need it (`xbar calibrate "
            "--method sgd` and `xbar finetune`, which run the bundle in torch so that gradients flow "
            "through the simulated chip); conversion, inference, evaluation and the other calibration "
            "methods run without it. Install it with: pip install 'xbar[train]' (or pip install "
            f"'{TORCH_REQUIREMENT}')."
        ) from None
    return torch


# Torch's intra-op threads for the training loops: one, unless XBAR_TORCH_THREADS says
# otherwise. Its default (one per core) spin-waits at every small op of these networks; on
# the shared 2-core machines here it made the chip forward 2.5-7x slower than one thread
# (benchmarks/RESULTS.md, "Torch executor"), and the NumPy chip path already uses the cores.
THREADS_ENV = "XBAR_TORCH_THREADS"


class training_threads:
    """Context manager: torch.set_num_threads for the loop, restored afterwards."""

    def __enter__(self):
        import os

        torch = require_torch()
        self._saved = torch.get_num_threads()
        raw = os.environ.get(THREADS_ENV, "1")
        try:
            n = int(raw)
        except ValueError:
            n = 0
        if n < 1:
            raise XbarError(f"{THREADS_ENV}={raw!r}: give a whole number of threads, 1 or more")
        torch.set_num_threads(n)
        return n

    def __exit__(self, *exc):
        require_torch().set_num_threads(self._saved)
        return False
