"""Graph rewrites that let more of a model go onto crossbars."""

from __future__ import annotations

import numpy as np

from xbar.converter.ir import Graph


def _implicit_output(terms: list[str]) -> str:
    """The output of an implicit-mode equation: "..." first, then the labels used once, sorted."""
    letters = "".join(t.replace("...", "") for t in terms)
    ellipsis = "..." if any("..." in t for t in terms) else ""
    return ellipsis + "".join(sorted(c for c in set(letters) if letters.count(c) == 1))


def _matmul_weight(equation: str, x_term: str, w_term: str, out: str, w: np.ndarray) -> np.ndarray | None:
    """The K×N matrix that makes x_term,w_term->out a plain x @ W, or None if it is not one.

    That is: W has two distinct labels c and e; c is the activation's last label, appears
    nowhere else and is summed over; e replaces it in the output, which otherwise keeps the
    activation's labels in order (batch dimensions, "...", no diagonals)."""
    if w.ndim != 2 or len(w_term) != 2 or w_term[0] == w_term[1] or "." in w_term:
        return None
    if not x_term or x_term[-1] in ".":
        return None
    c = x_term[-1]
    if c not in w_term:
        return None
    e = w_term[1] if w_term[0] == c else w_term[0]
    head = x_term[:-1]
    labels = head.replace("...", "")
    if len(set(labels)) != len(labels) or c in labels or e in labels or out != head + e:
        return None
    return w if w_term[0] == c else w.T


def einsum_to_matmul(graph: Graph) -> list[str]:
    """Rewrite each Einsum that is a product with a constant 2-D weight into a MatMul.

    A MatMul with a constant operand becomes an analog layer; a general Einsum stays a
    digital op (numpy.einsum). Returns the names of the rewritten nodes (they keep their
    names, so `--digital NAME` and `xbar info` use the Einsum's ONNX node name)."""
    rewritten = []
    for node in graph.nodes:
        if node.op != "Einsum" or len(node.inputs) != 2 or not all(node.inputs):
            continue
        eq = str(node.attrs.get("equation", "")).replace(" ", "")
        lhs, _, out = eq.partition("->")
        terms = lhs.split(",")
        if len(terms) != 2:
            continue
        if "->" not in eq:
            out = _implicit_output(terms)
        consts = [i in graph.constants for i in node.inputs]
        if consts.count(True) != 1:
            continue
        k = consts.index(True)
        w = np.asarray(graph.constants[node.inputs[k]])
        matrix = _matmul_weight(eq, terms[1 - k], terms[k], out, w)
        if matrix is None:
            continue
        name = f"{node.name}__matmul_weight"
        graph.constants[name] = np.ascontiguousarray(matrix)
        node.op, node.inputs, node.attrs = "MatMul", [node.inputs[1 - k], name], {}
        rewritten.append(node.name)
    return rewritten
