"""The wiring of a PCN: which maps feed which states (docs/method.md §1, §4).

A network is a set of *nodes* — the states ``h_0 = x, h_1, …, h_L`` — and *edges* — the maps
between them. Layer k's chain map (``net.layers[k-1]``) is the edge ``k−1 → k``; a skip map is an
edge ``src → dst``. A node's pre-activation is the sum of its incoming edges (then a 2×2 max-pool
where the node pools), its state the activation of that:

    a_k = pool_k( Σ_{e: dst(e) = k} e(h_src(e)) ),        h_k = act_k(a_k)

Everything that walks the network — the free phase, the drives, the top-down terms
``Δ_j = Σ_{e: src(e) = j} J_e(h_j)ᵀ g_dst(e)`` and the parameter gradients — reads this one
description. Each edge names its parameters by a prefix (``layers.3``, ``skips.0``), so that
gradients are keyed by the names of ``net.named_parameters()``.
"""
from __future__ import annotations

from dataclasses import dataclass

from torch import nn

__all__ = ["ACTIVATIONS", "Edge", "Node", "Wiring"]

ACTIVATIONS = ("relu", "identity")


@dataclass(frozen=True, eq=False)
class Edge:
    """A map from state ``src`` into the pre-activation of state ``dst``; its parameters are
    ``<prefix>.<name>`` in the network. ``linear``: a built-in conv / dense / skip layer, whose
    linear algebra (``W d``, ``Wᵀ g``, ``g ⊗ h``) the engine writes in closed form; otherwise a
    general block, differentiated by autograd. ``chain``: layer ``dst``'s own map (else a
    skip)."""
    src: int
    dst: int
    module: nn.Module
    prefix: str
    linear: bool
    chain: bool


@dataclass(frozen=True)
class Node:
    """State ``h_k``: ``activation`` (``relu`` | ``identity``), ``pool`` (a 2×2 max-pool of the
    summed edges, built-in conv layers only), and the indices of the edges into it and out of
    it, in the order their outputs are summed (the chain edge first, then skips by index)."""
    activation: str
    pool: bool
    into: tuple[int, ...]
    out: tuple[int, ...]

    @property
    def relu(self) -> bool:
        return self.activation == "relu"


@dataclass(frozen=True)
class Wiring:
    """``edges`` (chain edges ``1..L`` first, then skips) and ``nodes[k]`` for ``k = 0..L``
    (node 0, the input, has no activation: ``identity``, no edge into it)."""
    edges: tuple[Edge, ...]
    nodes: tuple[Node, ...]

    @property
    def L(self) -> int:
        return len(self.nodes) - 1

    @property
    def linear(self) -> bool:
        """Is every edge a built-in linear layer (the closed-form, fast-precision path)?"""
        return all(e.linear for e in self.edges)

    @classmethod
    def build(cls, layers, skips, activations, pools, linear) -> "Wiring":
        """From the chain maps ``layers`` (layer k = ``layers[k-1]``), ``skips`` (modules with
        ``src`` / ``dst``), per-layer ``activations`` and ``pools``, and a predicate
        ``linear(module)``."""
        L = len(layers)
        edges = [Edge(k - 1, k, m, f"layers.{k - 1}", linear(m), True)
                 for k, m in enumerate(layers, start=1)]
        edges += [Edge(s.src, s.dst, s, f"skips.{i}", linear(s), False)
                  for i, s in enumerate(skips)]
        into = [[] for _ in range(L + 1)]
        out = [[] for _ in range(L + 1)]
        for i, e in enumerate(edges):
            into[e.dst].append(i)
            out[e.src].append(i)
        nodes = [Node("identity", False, (), tuple(out[0]))]
        nodes += [Node(activations[k - 1], bool(pools[k - 1]), tuple(into[k]), tuple(out[k]))
                  for k in range(1, L + 1)]
        return cls(tuple(edges), tuple(nodes))
