"""Two-locus ancestral recombination graph (coalescent with recombination)."""

from __future__ import annotations

import numpy as np

from .._graph import Graph


def _settle(ab: int, a: int, b: int) -> tuple[int, int, int]:
    """Drop material whose locus has found its MRCA (one lineage left carrying it)."""
    if ab + a == 1:  # locus A done: its last carrier no longer matters for A
        ab, a, b = 0, 0, b + ab
    if ab + b == 1:
        ab, b, a = 0, 0, a + ab
    return ab, a, b


def two_locus(n: int) -> Graph:
    """Two loci A and B on ``n`` sampled chromosomes, with recombination between them.

    State ``(k_ab, k_a, k_b)``: lineages carrying ancestral material at both loci, at A
    only, at B only. Material at a locus that has found its MRCA is dropped, so the
    process absorbs when both loci have. Parameters ``theta = (coal, rho)``: every pair
    of lineages coalesces at rate ``coal``; each ``ab`` lineage splits into an ``a`` and
    a ``b`` lineage at rate ``rho / 2`` (``rho = 4 N r``). Rewards from
    :func:`tmrca_rewards` give the TMRCA at each locus: ``E = 2 (1 - 1/n)`` each, and
    for ``n = 2`` the correlation ``(rho + 18) / (rho^2 + 13 rho + 18)``.
    """
    if n < 2:
        raise ValueError(f"two_locus needs n >= 2, got {n}")

    def transitions(state):
        ab, a, b = (int(x) for x in state)
        if ab + a <= 1 and ab + b <= 1:
            return []
        out = []
        counts = {"ab": ab, "a": a, "b": b}
        kinds = ["ab", "a", "b"]
        merged = {
            ("ab", "ab"): "ab",
            ("ab", "a"): "ab",
            ("ab", "b"): "ab",
            ("a", "a"): "a",
            ("b", "b"): "b",
            ("a", "b"): "ab",
        }
        for i, x in enumerate(kinds):
            for y in kinds[i:]:
                pairs = counts[x] * (counts[x] - 1) // 2 if x == y else counts[x] * counts[y]
                if pairs:
                    new = dict(counts)
                    new[x] -= 1
                    new[y] -= 1
                    new[merged[(x, y)]] += 1
                    out.append((_settle(new["ab"], new["a"], new["b"]), [float(pairs), 0.0]))
        if ab:
            out.append((_settle(ab - 1, a + 1, b + 1), [0.0, 0.5 * ab]))
        return out

    return Graph.from_callback(transitions, (n, 0, 0), n_params=2)


def tmrca_rewards(graph: Graph) -> np.ndarray:
    """Rewards (2, vertices) for a :func:`two_locus` graph: 1 while locus A (row 0) or B (row 1)
    has more than one ancestral lineage."""
    s = graph.states()
    rewards = np.stack([(s[:, 0] + s[:, 1] >= 2), (s[:, 0] + s[:, 2] >= 2)]).astype(np.float64)
    rewards[:, 0] = 0.0
    return rewards
