"""Graph rewrites that let more of a model go onto crossbars."""

from __future__ import annotations

import numpy as np

from xbar.converter.ir import Graph, Node, TensorInfo


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


def _permuted_product(x_term: str, w_term: str, out: str, w: np.ndarray
                      ) -> tuple[list[int], np.ndarray, list[int]] | None:
    """For an equation that is a product with the 2-D weight once axes are moved (a 1×1
    convolution written bchw,oc->bohw, say): the permutation that puts the activation's
    summed label last, the K×N matrix, and the permutation from (other labels, weight's
    output label) to the output's order; None otherwise (no "...", no repeated labels)."""
    if w.ndim != 2 or len(w_term) != 2 or w_term[0] == w_term[1] or "." in x_term + w_term + out:
        return None
    if len(set(x_term)) != len(x_term) or len(set(out)) != len(out):
        return None
    shared = [label for label in w_term if label in x_term]
    if len(shared) != 1:
        return None
    c = shared[0]
    e = w_term[1] if w_term[0] == c else w_term[0]
    head = [label for label in x_term if label != c]
    if sorted(out) != sorted(head + [e]):
        return None
    mid = head + [e]
    return ([x_term.index(label) for label in head] + [x_term.index(c)], w if w_term[0] == c else w.T,
            [mid.index(label) for label in out])


def _permuted_info(info: TensorInfo | None, perm: list[int]) -> TensorInfo | None:
    if info is None or info.shape is None or len(info.shape) != len(perm):
        return None
    names = None if info.names is None else [info.names[k] for k in perm]
    return TensorInfo([info.shape[k] for k in perm], info.dtype, names)


def _set_info(graph: Graph, name: str, info: TensorInfo | None) -> None:
    if info is not None:
        graph.info[name] = info


def _unique_name(graph: Graph, name: str) -> str:
    taken = set(graph.info) | set(graph.constants) | {o for n in graph.nodes for o in n.outputs}
    while name in taken:
        name += "_"
    return name


def einsum_to_matmul(graph: Graph) -> list[str]:
    """Rewrite each Einsum that is a product with a constant 2-D weight into a MatMul, with
    Transposes before and after where the summed axis is not last or the output's axes
    come in another order.

    A MatMul with a constant operand becomes an analog layer; a general Einsum stays a
    digital op (numpy.einsum). Returns the names of the rewritten nodes (they keep their
    names, so `--digital NAME` and `xbar info` use the Einsum's ONNX node name)."""
    rewritten = []
    nodes: list[Node] = []
    for node in graph.nodes:
        nodes.append(node)
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
        perm_in = perm_out = None
        if matrix is None:
            moved = _permuted_product(terms[1 - k], terms[k], out, w)
            if moved is None:
                continue
            perm_in, matrix, perm_out = moved
        name = f"{node.name}__matmul_weight"
        graph.constants[name] = np.ascontiguousarray(matrix)
        x, y = node.inputs[1 - k], node.outputs[0]
        # Transposes around the product where the summed axis is not last or the output's
        # axes come in another order: digital, exact, and the product goes onto crossbars.
        if perm_in is not None and perm_in != sorted(perm_in):
            moved_x = _unique_name(graph, f"{x}__{node.name}__summed_last")
            nodes.insert(len(nodes) - 1, Node(f"{node.name}__summed_last", "Transpose", [x], [moved_x],
                                              {"perm": perm_in}))
            _set_info(graph, moved_x, _permuted_info(graph.info.get(x), perm_in))
            x = moved_x
        if perm_out is not None and perm_out != sorted(perm_out):
            product = _unique_name(graph, f"{y}__{node.name}__product")
            inverse = [perm_out.index(k) for k in range(len(perm_out))]
            _set_info(graph, product, _permuted_info(graph.info.get(y), inverse))
            nodes.append(Node(f"{node.name}__to_output_order", "Transpose", [product], [y], {"perm": perm_out}))
            node.outputs = [product]
        node.op, node.inputs, node.attrs = "MatMul", [x, name], {}
        rewritten.append(node.name)
    graph.nodes[:] = nodes
    return rewritten
