from pathlib import Path

import numpy as np
import pytest

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
