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


# Torch's intra-op threads for the training loops: torch's own default (one per core)
# unless XBAR_TORCH_THREADS says otherwise. On the 2-core machines here two threads made
# `calibrate --method sgd` 1.5x faster when the machine was quiet (23 s against 35 s), but
# 2.5-7x slower when other jobs held the cores (they spin-wait at every small op):
# benchmarks/RESULTS.md, "Training side". A shared machine wants XBAR_TORCH_THREADS=1.
THREADS_ENV = "XBAR_TORCH_THREADS"


class training_threads:
    """Context manager: torch.set_num_threads for the loop (from XBAR_TORCH_THREADS, if
    set), restored afterwards."""

    def __enter__(self):
        import os

        torch = require_torch()
        self._saved = torch.get_num_threads()
        raw = os.environ.get(THREADS_ENV)
        if raw is None:
            return self._saved
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
