"""ONNX LSTM / GRU / RNN nodes → analog matrices plus a digital time loop.

Design. Each direction of a recurrent node gets two (GRU with linear_before_reset=0:
three) ordinary analog layers, each a K×N matrix mapped onto its own tiles with the
normal mapping (every encoding, tile size and placement option applies):

- ``W``: the input matrix, K = input size, N = gates·hidden; its per-output affine shift
  is the input bias Wb.
- ``R``: the recurrent matrix, K = hidden, N = gates·hidden, shift Rb. For a GRU with
  linear_before_reset=0 the candidate gate multiplies R_h by r ⊙ h, not by h, so R is
  split into ``R`` (update and reset gates, on h) and ``R_h`` (candidate, on r ⊙ h).

Every time step is one product of R (and, for that GRU, R_h) through DAC, tiles, read
noise and ADC; gate non-linearities, the cell state, sequence lengths and the time loop
are digital (runtime/recurrent.py).

Why not stack [W; R] into one (input + hidden) × gates·hidden matrix fed [x_t, h_{t-1}]
(one product per step, as some accelerators do)? (1) It is not exact for the GRU: its
candidate gate needs x·W_h and (r ⊙ h)·R_h (or r ⊙ (h·R_h + Rb_h)) separately, so the
stacked column sums cannot be used there. (2) x and h have very different ranges (an LSTM's
or tanh GRU's h lies in [−1, 1], x is whatever the previous layer produces); a layer has one DAC
range, so stacking would quantise the smaller of the two with a range set by the larger.
Separate layers get their own DAC and ADC ranges from calibration data. (3) The input
x_t of every step is known before the loop starts, so W's T products run as one batch
and only R sits on the sequential path. Each input vector still goes through the chip
one by one, exactly as the stacked design would send it (fresh read noise per vector),
so the analog error model is the same. The cost is ADC conversions: x and h fill their
own row blocks (⌈I/R⌉ + ⌈H/R⌉ per step instead of ⌈(I+H)/R⌉), which `xbar info` counts.

Biases are the per-output affine shifts (Wb on W, Rb on R), so they are exact for every
cell, including Rb_h of a GRU with linear_before_reset=1, which must be added before the
multiplication by r.

Peepholes (LSTM input P: element-wise products with the cell state), ``clip`` and
``input_forget`` are digital and exact. Refused with an error naming node and attribute
(never approximated): activation_alpha/beta and activations outside ACTIVATIONS.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from xbar.affine import Affine
from xbar.converter.checks import refuse_nonfinite
from xbar.converter.ir import Graph, Node
from xbar.converter.layers import LayerSpec
from xbar.errors import ModelError, UnsupportedOpError
from xbar.ops import RECURRENT_OPS

GATES = {"LSTM": 4, "GRU": 3, "RNN": 1}
DEFAULT_ACTIVATIONS = {"LSTM": ["Sigmoid", "Tanh", "Tanh"], "GRU": ["Sigmoid", "Tanh"], "RNN": ["Tanh"]}
# Activations the runtime implements with their ONNX default parameters (runtime/recurrent.py).
ACTIVATIONS = ("Sigmoid", "Tanh", "Relu", "HardSigmoid", "LeakyRelu", "Elu", "Softsign", "Softplus")
# ThresholdedRelu is not among them: with its default parameter the ONNX specification
# (alpha = 1, "x if x >= alpha") and onnxruntime (which keeps every positive value) disagree,
# and activation_alpha is not supported, so a model using it has no one meaning to be exact to.
_AMBIGUOUS = {"thresholdedrelu": "ThresholdedRelu"}
DIRECTIONS = ("forward", "reverse")


def _refuse(label: str, node: Node, what: str) -> UnsupportedOpError:
    return UnsupportedOpError(
        f"{label}: {node.op} node {node.name!r} uses {what}, which xbar's recurrent layers do not "
        "implement (refused rather than approximated). Supported: directions forward, reverse, bidirectional; "
        "layout 0 and 1; initial states; sequence_lens; peepholes; clip; input_forget; activations "
        f"{', '.join(ACTIVATIONS)} with their default parameters; GRU linear_before_reset 0 and 1. "
        "Export the model without it."
    )


def _weight(graph: Graph, node: Node, idx: int, what: str, label: str) -> np.ndarray:
    name = node.inputs[idx]
    if name not in graph.constants:
        raise ModelError(
            f"{label}: {node.op} node {node.name!r} takes its {what} from tensor {name!r}, which is computed at "
            "run time, not a constant. xbar programs weights into crossbars once, at conversion, so they must "
            "be initializers; re-export the model with its weights as constants."
        )
    value = np.asarray(graph.constants[name], dtype=np.float64)
    refuse_nonfinite(value, name, node.name, node.op, label, what)
    return value


def _input(node: Node, idx: int) -> str:
    return node.inputs[idx] if idx < len(node.inputs) else ""


def extract_recurrent(graph: Graph, node: Node, label: str) -> tuple[list[LayerSpec], dict[str, Any]] | None:
    """The analog layers of a recurrent node (by direction: W, R[, R_h]) and the attributes
    of the digital loop that runs them; None if `node` is not recurrent."""
    if node.op not in RECURRENT_OPS:
        return None
    cell, a = node.op, node.attrs
    for attr in ("activation_alpha", "activation_beta"):
        if attr in a:
            raise _refuse(label, node, f"attribute {attr}={list(a[attr])!r} (activation parameters)")
    clip = float(a["clip"]) if "clip" in a else None
    if clip is not None and not clip > 0:
        raise ModelError(f"{label}: {cell} node {node.name!r}: clip={clip}; the threshold must be positive")
    direction = a.get("direction", "forward")
    if isinstance(direction, bytes):
        direction = direction.decode()
    if direction not in ("forward", "reverse", "bidirectional"):
        raise _refuse(label, node, f"attribute direction={direction!r}")
    dirs = ["forward", "reverse"] if direction == "bidirectional" else [direction]
    layout = int(a.get("layout", 0))
    if layout not in (0, 1):
        raise _refuse(label, node, f"attribute layout={layout}")
    lbr = int(a.get("linear_before_reset", 0)) if cell == "GRU" else 0

    gates = GATES[cell]
    w = _weight(graph, node, 1, "input weight W", label)
    r = _weight(graph, node, 2, "recurrent weight R", label)
    if w.ndim != 3 or w.shape[0] != len(dirs) or w.shape[1] % gates:
        raise ModelError(f"{label}: {cell} node {node.name!r}: W has shape {list(w.shape)}, expected "
                         f"[{len(dirs)}, {gates}·hidden, input]")
    hidden = w.shape[1] // gates
    if "hidden_size" in a and int(a["hidden_size"]) != hidden:
        raise ModelError(f"{label}: {cell} node {node.name!r}: hidden_size={a['hidden_size']} but W has "
                         f"{w.shape[1]} rows for {gates} gates")
    if r.shape != (len(dirs), gates * hidden, hidden):
        raise ModelError(f"{label}: {cell} node {node.name!r}: R has shape {list(r.shape)}, expected "
                         f"{[len(dirs), gates * hidden, hidden]}")
    if _input(node, 3):
        b = _weight(graph, node, 3, "bias B", label)
        if b.shape != (len(dirs), 2 * gates * hidden):
            raise ModelError(f"{label}: {cell} node {node.name!r}: B has shape {list(b.shape)}, expected "
                             f"{[len(dirs), 2 * gates * hidden]}")
    else:
        b = np.zeros((len(dirs), 2 * gates * hidden))

    acts = a.get("activations")
    per_dir = len(DEFAULT_ACTIVATIONS[cell])
    acts = [x.decode() if isinstance(x, bytes) else str(x) for x in acts] if acts is not None else \
        DEFAULT_ACTIVATIONS[cell] * len(dirs)
    if len(acts) != per_dir * len(dirs):
        raise ModelError(f"{label}: {cell} node {node.name!r} lists {len(acts)} activations; a {direction} "
                         f"{cell} needs {per_dir * len(dirs)}")
    # ONNX activation names are case-sensitive but exporters vary; match case-insensitively.
    canon = {x.lower(): x for x in ACTIVATIONS}
    for x in acts:
        if x.lower() in _AMBIGUOUS:
            raise UnsupportedOpError(
                f"{label}: {cell} node {node.name!r} uses activation {x!r} with its default threshold, on which "
                "the ONNX specification (alpha = 1: x if x >= 1, else 0) and onnxruntime (every positive value "
                "kept) disagree; xbar refuses it rather than pick one. Export the cell with Relu if onnxruntime's "
                "behaviour is what the model was trained with.")
        if x.lower() not in canon:
            raise _refuse(label, node, f"activation {x!r}")
    acts = [canon[x.lower()] for x in acts]

    specs: list[LayerSpec] = []
    indices: list[list[int]] = []  # per direction: positions in `specs` of W, R, R_h (-1: none)
    for d, dname in enumerate(dirs):
        wd, rd = w[d].T, r[d].T  # (input, G·H), (H, G·H): rows are inputs, columns gate outputs
        wb, rb = b[d, :gates * hidden], b[d, gates * hidden:]
        parts = [("W", wd, wb)]
        if cell == "GRU" and not lbr:
            parts += [("R", rd[:, :2 * hidden], rb[:2 * hidden]), ("R_h", rd[:, 2 * hidden:], rb[2 * hidden:])]
        else:
            parts.append(("R", rd, rb))
        idx: dict[str, int] = {}
        for matrix, m, bias in parts:
            params = {"node": node.name, "cell": cell, "direction": dname, "matrix": matrix}
            name = f"{node.name}/{dname}/{matrix}"
            src = node.inputs[0] if matrix == "W" else f"{node.name}/{dname}/h"
            wname = node.inputs[1] if matrix == "W" else node.inputs[2]
            idx[matrix] = len(specs)
            specs.append(LayerSpec(name, "recurrent", src, f"{name}:out", np.ascontiguousarray(m),
                                   Affine.identity(bias.copy()), "bias", wname, params))
        indices.append([idx["W"], idx["R"], idx.get("R_h", -1)])
    attrs = {"cell": cell, "direction": direction, "hidden_size": hidden, "layout": layout,
             "linear_before_reset": lbr, "activations": acts, "layers": indices,
             "input_forget": int(a.get("input_forget", 0)) if cell == "LSTM" else 0}
    if clip is not None:
        attrs["clip"] = clip
    if cell == "LSTM" and _input(node, 7):  # peepholes: element-wise products with c, digital
        p = _weight(graph, node, 7, "peephole weight P", label)
        if p.shape != (len(dirs), 3 * hidden):
            raise ModelError(f"{label}: LSTM node {node.name!r}: P has shape {list(p.shape)}, expected "
                             f"{[len(dirs), 3 * hidden]}")
        attrs["peepholes"] = p.astype(np.float32)
    return specs, attrs
