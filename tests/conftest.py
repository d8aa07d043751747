import os
from pathlib import Path

import numpy as np
import pytest

# Under pytest-xdist every core already runs a test process: torch's training loops at one
# intra-op thread each, as xbar.training advises for a busy machine. Two threads per
# process spin-wait against the other process (the training tests took 133 against 84 s
# with `-n 2` on 2 cores, under load; 65 against 62 s quieter). A test may still set it.
if os.environ.get("PYTEST_XDIST_WORKER"):
    os.environ.setdefault("XBAR_TORCH_THREADS", "1")

ROOT = Path(__file__).resolve().parent.parent
MODELS = ROOT / "models"


@pytest.fixture(scope="session")
def models_dir() -> Path:
    return MODELS


@pytest.fixture(scope="session")
def test_data():
    d = np.load(MODELS / "digits_test.npz")
    return d["x"], d["y"]


def close(out: np.ndarray, ref: np.ndarray, tol: float = 1e-4) -> bool:
    """The conformance criterion: |diff| <= tol·(1 + |ref|) elementwise (float32 arithmetic)."""
    return bool(np.all(np.abs(out.astype(np.float64) - ref) <= tol * (1 + np.abs(ref))))


def export_small(net, path, input_shape: tuple[int, ...]) -> Path:
    """A small torch test network as ONNX (legacy exporter, opset 17, dynamic batch, input
    'x', output 'y'), its batch-norm running statistics first moved off 0/1 (means in
    ±0.2, variances in [0.5, 2]) so that folding them is exercised."""
    import torch
    import torch.nn as nn

    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.2, 0.2)
                m.running_var.uniform_(0.5, 2.0)
    net.eval()
    torch.onnx.export(net, (torch.zeros(*input_shape),), str(path), dynamo=False, opset_version=17,
                      input_names=["x"], output_names=["y"], dynamic_axes={"x": {0: "b"}, "y": {0: "b"}})
    return Path(path)
