"""Two-locus ancestral recombination graph (coalescent with recombination)."""

from __future__ import annotations

from typing import Any

import numpy as np
from jaxtyping import Int

from .._graph import Graph, merge_transitions


def _settle(states: Int[np.ndarray, "K 3"]) -> Int[np.ndarray, "K 3"]:
    """Drop material whose locus has found its MRCA (one lineage left carrying it)."""
    ab, a, b = states.T
    done = ab + a == 1  # locus A done: its last carrier no longer matters for A
    ab, a, b = np.where(done, 0, ab), np.where(done, 0, a), np.where(done, b + ab, b)
    done = ab + b == 1
    ab, a, b = np.where(done, 0, ab), np.where(done, a + ab, a), np.where(done, 0, b)
    return np.stack([ab, a, b], axis=1)


# pairs of lineage kinds (0 = ab, 1 = a, 2 = b) in the order of the transitions, and the
# kind of the lineage their coalescence leaves
_PAIRS = ((0, 0, 0), (0, 1, 0), (0, 2, 0), (1, 1, 1), (1, 2, 0), (2, 2, 2))


def two_locus(n: int, **build: Any) -> Graph:
    """Two loci A and B on ``n`` sampled chromosomes, with recombination between them.

    State ``(k_ab, k_a, k_b)``: lineages carrying ancestral material at both loci, at A
    only, at B only. Material at a locus that has found its MRCA is dropped, so the
    process absorbs when both loci have. Parameters ``theta = (coal, rho)``: every pair
    of lineages coalesces at rate ``coal``; each ``ab`` lineage splits into an ``a`` and
    a ``b`` lineage at rate ``rho / 2`` (``rho = 4 N r``). Rewards from
    [`tmrca_rewards`][phasejax.models.tmrca_rewards] give the TMRCA at each locus: ``E = 2 (1 - 1/n)`` each, and
    for ``n = 2`` the correlation ``(rho + 18) / (rho^2 + 13 rho + 18)``.
    ``build``: keyword arguments of [`phasejax.Graph.from_batched_callback`][].
    """
    if n < 2:
        raise ValueError(f"two_locus needs n >= 2, got {n}")

    def transitions(states):
        alive = (states[:, 0] + states[:, 1] > 1) | (states[:, 0] + states[:, 2] > 1)
        groups = []
        for x, y, merged in _PAIRS:
            kx, ky = states[:, x], states[:, y]
            pairs = kx * (kx - 1) // 2 if x == y else kx * ky
            parent = np.flatnonzero(alive & (pairs > 0))
            children = states[parent]
            children[:, x] -= 1
            children[:, y] -= 1
            children[:, merged] += 1
            rates = np.stack([pairs[parent], np.zeros(parent.size)], axis=1)
            groups.append((parent, _settle(children), rates))
        parent = np.flatnonzero(alive & (states[:, 0] > 0))  # recombination of an ab lineage
        children = states[parent] + np.array([-1, 1, 1])
        rates = np.stack([np.zeros(parent.size), 0.5 * states[parent, 0]], axis=1)
        groups.append((parent, _settle(children), rates))
        return merge_transitions(*groups)

    return Graph.from_batched_callback(transitions, (n, 0, 0), n_params=2, **build)


def tmrca_rewards(graph: Graph) -> np.ndarray:
    """Rewards (2, vertices) for a [`two_locus`][phasejax.models.two_locus] graph: 1 while locus A (row 0) or B (row 1)
    has more than one ancestral lineage."""
    s = graph.states()
    rewards = np.stack([(s[:, 0] + s[:, 1] >= 2), (s[:, 0] + s[:, 2] >= 2)]).astype(np.float64)
    rewards[:, 0] = 0.0
    return rewards
