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
