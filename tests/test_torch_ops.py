"""Every digital-op case of tests/test_digital_ops.py, run through the torch forms.

The cases there build one-node ONNX models and compare an op against onnxruntime (the
independent reference) at 1e-5·(1 + |ref|). Here the same cases run with `get_op` replaced
by the op's torch form (xbar.training.torch_ops), every float input handed over as a torch
tensor, as activations are in the torch executor; integer and boolean inputs stay NumPy
arrays. A case with no float input runs the NumPy op itself, as the executor does.
Backward passes run too: the gradient of the sum of the finite float outputs with respect
to every float input must be finite whenever all forward values are.
"""

from __future__ import annotations

import os
import sys

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("onnxruntime")

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import test_digital_ops as cases  # noqa: E402
from test_digital_ops import *  # noqa: E402,F401,F403  (re-collects every case in this module)

from xbar.runtime.ops import REGISTRY  # noqa: E402
from xbar.training.torch_ops import TORCH_OPS, is_tensor  # noqa: E402


def _torch_form(op_type: str):
    numpy_fn = REGISTRY.get(op_type)
    fn = TORCH_OPS.get(op_type)
    if fn is None:
        return None

    def run(inputs, attrs):
        tensors = [torch.from_numpy(np.array(x)).requires_grad_() if isinstance(x, np.ndarray) and x.dtype.kind == "f"
                   else x for x in inputs]
        if not any(is_tensor(t) for t in tensors):
            return numpy_fn(inputs, attrs)
        outs = fn(tensors, attrs)
        floats = [o for o in outs if is_tensor(o) and o.is_floating_point() and o.requires_grad]
        if floats:
            total = sum(o[torch.isfinite(o)].double().sum() for o in floats)
            grads = torch.autograd.grad(total, [t for t in tensors if is_tensor(t)], allow_unused=True)
            for g in grads:
                assert g is None or torch.isfinite(g).all() or not all(torch.isfinite(o).all() for o in floats), (
                    f"{op_type}: non-finite gradient")
        return [o.detach().numpy() if is_tensor(o) else o for o in outs]

    return run


@pytest.fixture(autouse=True)
def _through_torch(monkeypatch):
    monkeypatch.setattr(cases, "get_op", _torch_form)


# About the NumPy registry itself, not about any op's semantics: not re-run here.
del test_registry_surface  # noqa: F821
