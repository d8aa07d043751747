"""Refuse a model with operators xbar cannot run: all of them in one message, early.

The check runs on the raw ONNX graph, before the checker's upgrade, shape inference and
constant folding, so a model that cannot convert fails in milliseconds and names every
offending op at once instead of one per attempt. The attribute values the runtime refuses
(check_attributes) are checked after folding, on the nodes that will run, before mapping.
"""

from __future__ import annotations

from collections.abc import Iterable

import onnx

from xbar.converter.ir import Node
from xbar.errors import UnsupportedOpError
from xbar.ops import ANALOG_OPS, DIGITAL_OPS, RECURRENT_OPS
from xbar.runtime.ops import attribute_problem

# Resolved at conversion time and never reach the runtime: Constant nodes are folded, an
# If whose condition folds to a constant is replaced by the branch it takes (else it is
# reported after folding).
CONVERSION_OPS = frozenset({"Constant", "If"})
_NONDETERMINISTIC = {"RandomNormal", "RandomUniform", "RandomNormalLike", "RandomUniformLike", "Multinomial", "Bernoulli"}
SHOWN_NODES = 3


def supported(op: str, domain: str = "") -> bool:
    return domain in ("", "ai.onnx") and (op in DIGITAL_OPS or op in ANALOG_OPS or op in RECURRENT_OPS
                                             or op in CONVERSION_OPS)


def _qualified(op: str, domain: str) -> str:
    return op if domain in ("", "ai.onnx") else f"{domain}.{op}"


def unsupported_message(found: dict[str, list[str]], label: str, opset_text: str) -> str:
    """One paragraph: each unsupported op with its node count and first node names."""
    parts = []
    for op, nodes in sorted(found.items(), key=lambda kv: (-len(kv[1]), kv[0])):
        shown = ", ".join(repr(n) for n in nodes[:SHOWN_NODES]) + (", ..." if len(nodes) > SHOWN_NODES else "")
        parts.append(f"{op!r} ({len(nodes)} node{'s' if len(nodes) != 1 else ''}: {shown})")
    n = len(found)
    return (
        f"{label} ({opset_text}) uses {n} op{'s' if n != 1 else ''} that xbar does not support: "
        f"{'; '.join(parts)}. Nothing was converted. `xbar ops` lists the supported vocabulary "
        f"(Conv, Gemm and MatMul with a constant weight, LSTM, GRU and RNN go onto crossbars; "
        f"{len(DIGITAL_OPS)} ops run "
        "digitally); re-export the model without these ops or replace them in the network."
    )


def check_attributes(nodes: Iterable[Node], label: str, opset_text: str) -> None:
    """Raise UnsupportedOpError listing every attribute value of the digital nodes that the
    runtime refuses whatever the data (a float16 stash_type, Resize's antialias): at
    conversion, where it would otherwise convert and fail at its first run."""
    found: dict[str, list[str]] = {}
    for node in nodes:
        problem = attribute_problem(node.op, node.attrs)
        if problem:
            found.setdefault(problem, []).append(node.name)
    if not found:
        return
    parts = []
    for problem, names in found.items():
        shown = ", ".join(repr(n) for n in names[:SHOWN_NODES]) + (", ..." if len(names) > SHOWN_NODES else "")
        parts.append(f"{problem} ({len(names)} node{'s' if len(names) != 1 else ''}: {shown})")
    raise UnsupportedOpError(
        f"{label} ({opset_text}) uses attribute values that xbar does not implement: {'; '.join(parts)}. "
        "Nothing was converted, and nothing is approximated; re-export the model without them.")


def check_vocabulary(model: onnx.ModelProto, label: str, opset_text: str) -> None:
    """Raise UnsupportedOpError listing every op of the main graph xbar cannot run.

    Nodes computed from constants only are exempt: folding evaluates them with the ONNX
    reference implementation, whatever their op (e.g. a Trilu building a causal mask)."""
    constant = {init.name for init in model.graph.initializer}
    found: dict[str, list[str]] = {}
    for idx, node in enumerate(model.graph.node):
        name = node.name or f"{node.op_type}_{idx}"
        present = [i for i in node.input if i]
        if node.op_type == "Constant" or (
            present and all(i in constant for i in present) and node.op_type not in _NONDETERMINISTIC
            and node.domain in ("", "ai.onnx")
        ):
            constant.update(o for o in node.output if o)
            continue
        if not supported(node.op_type, node.domain):
            found.setdefault(_qualified(node.op_type, node.domain), []).append(name)
    if found:
        raise UnsupportedOpError(unsupported_message(found, label, opset_text))
