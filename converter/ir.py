"""The converter's working graph: ONNX nodes as plain records in a networkx DiGraph."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import networkx as nx
import numpy as np


# Ops whose outputs after the first few are optional (ONNX: an omitted output is "" or
# absent), by how many come first: those nobody reads are dropped, so that the runtime does
# not compute, or refuse, what no one uses.
_OPTIONAL_AFTER = {"MaxPool": 1, "Dropout": 1, "LayerNormalization": 1}


@dataclass
class Node:
    name: str
    op: str
    inputs: list[str]
    outputs: list[str]
    attrs: dict[str, Any] = field(default_factory=dict)
    domain: str = ""


@dataclass
class TensorInfo:
    shape: list[int | None] | None  # None: rank unknown; a None dim: symbolic (e.g. batch)
    dtype: np.dtype | None
    names: list[str | None] | None = None  # symbolic dims by name (dim_param), None where unnamed


@dataclass
class Graph:
    """Nodes in topological order, constants, and what shape inference knows of each tensor."""

    nodes: list[Node]
    inputs: list[str]
    outputs: list[str]
    constants: dict[str, np.ndarray]
    info: dict[str, TensorInfo]
    opset: int

    def producers(self) -> dict[str, Node]:
        return {o: n for n in self.nodes for o in n.outputs if o}

    def consumers(self) -> dict[str, list[Node]]:
        out: dict[str, list[Node]] = {}
        for n in self.nodes:
            for i in n.inputs:
                if i:
                    out.setdefault(i, []).append(n)
        return out

    def to_networkx(self) -> nx.DiGraph:
        g = nx.DiGraph()
        prod = self.producers()
        for n in self.nodes:
            g.add_node(n.name, node=n)
        for n in self.nodes:
            for i in n.inputs:
                if i in prod:
                    g.add_edge(prod[i].name, n.name, tensor=i)
        return g

    def sort(self) -> None:
        """Re-establish topological order (stable w.r.t. the current order)."""
        g = self.to_networkx()
        order = {n.name: k for k, n in enumerate(self.nodes)}
        names = list(nx.lexicographical_topological_sort(g, key=lambda name: order[name]))
        by_name = {n.name: n for n in self.nodes}
        self.nodes = [by_name[name] for name in names]

    def prune(self) -> None:
        """Drop nodes whose outputs nothing needs, optional outputs nobody reads (e.g. a
        MaxPool's Indices, which xbar does not compute), and constants nobody reads."""
        needed = set(self.outputs)
        kept: list[Node] = []
        for n in reversed(self.nodes):
            if any(o in needed for o in n.outputs):
                if n.op in _OPTIONAL_AFTER and not n.domain:
                    last = max(k for k, o in enumerate(n.outputs) if o in needed)
                    n.outputs = [o if o in needed or k < _OPTIONAL_AFTER[n.op] else ""
                                 for k, o in enumerate(n.outputs[:max(last + 1, _OPTIONAL_AFTER[n.op])])]
                kept.append(n)
                needed.update(i for i in n.inputs if i)
        self.nodes = kept[::-1]
        self.constants = {k: v for k, v in self.constants.items() if k in needed}
