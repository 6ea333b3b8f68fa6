"""Coalescent models in block-counting form."""

from __future__ import annotations

import equinox as eqx
import jax.numpy as jnp
import numpy as np

from .._compile import Model
from .._epochs import EpochPhaseType, epochs
from .._graph import Graph


def _merge(counts: list[int], i: int, j: int, offset: int = 0) -> tuple[int, ...]:
    """Coalesce one lineage of class ``i`` with one of class ``j`` (classes are sizes - 1)."""
    new = list(counts)
    new[offset + i] -= 1
    new[offset + j] -= 1
    new[offset + i + j + 1] += 1
    return tuple(new)


def _coalescences(counts: list[int], n: int, offset: int, n_params: int, param: int):
    """All pair coalescences within one deme: ``(next_state, coefficients)``."""
    present = [i for i in range(n) if counts[offset + i] > 0]
    for a, i in enumerate(present):
        for j in present[a:]:
            pairs = counts[offset + i] * (counts[offset + i] - 1) // 2 if i == j else counts[offset + i] * counts[offset + j]
            if pairs:
                coefficients = [0.0] * n_params
                coefficients[param] = float(pairs)
                yield _merge(counts, i, j, offset), coefficients


def kingman(n: int) -> Graph:
    """Kingman's coalescent for ``n`` samples, block-counting states.

    State (length ``n``): entry ``i`` counts the lineages ancestral to ``i + 1``
    samples. Starts at ``(n, 0, ..., 0)``; absorbs when one lineage is left. One
    parameter ``theta``: every pair coalesces at rate ``theta`` (theta = 1 is the
    standard coalescent in units of 2N generations, ``E[TMRCA] = 2 (1 - 1/n)``).
    """
    if n < 2:
        raise ValueError(f"kingman needs n >= 2 samples, got {n}")

    def transitions(state):
        counts = state.tolist()
        if sum(counts) <= 1:
            return ()
        return _coalescences(counts, n, 0, 1, 0)

    start = (n,) + (0,) * (n - 1)
    return Graph.from_callback(transitions, start, n_params=1)


def sfs_rewards(graph: Graph, n: int | None = None) -> np.ndarray:
    """Site-frequency-spectrum rewards, shape (n - 1, vertices).

    Row ``i - 1`` counts the lineages ancestral to ``i`` samples (summed over demes for
    structured block-counting states of length ``k * n``), so that the reward-weighted
    time is the total branch length subtending ``i`` samples: ``E[xi_i] = 2 / i`` under
    the standard coalescent (per unit mutation rate ``theta / 2``).
    """
    states = graph.states()
    n = states.shape[1] if n is None else n
    per_class = states.reshape(states.shape[0], -1, n).sum(axis=1)
    return per_class[:, : n - 1].T.astype(np.float64)


def two_island(n1: int, n2: int = 0) -> Graph:
    """Structured coalescent with two demes and migration (cyclic).

    State (length ``2 n``, ``n = n1 + n2``): entries ``d * n + i`` count lineages in
    deme ``d`` ancestral to ``i + 1`` samples. Parameters
    ``theta = (coal_1, coal_2, mig_12, mig_21)``: pairs in deme ``d`` coalesce at rate
    ``coal_d``; each lineage in deme 1 moves to deme 2 at rate ``mig_12`` and back at
    ``mig_21``. Absorbs when one lineage is left.
    """
    n = n1 + n2
    if n < 2:
        raise ValueError(f"two_island needs at least 2 samples, got {n}")

    def transitions(state):
        counts = state.tolist()
        if sum(counts) <= 1:
            return []
        out = []
        for deme in range(2):
            out.extend(_coalescences(counts, n, deme * n, 4, deme))
            for i in range(n):
                k = counts[deme * n + i]
                if k:
                    new = list(counts)
                    new[deme * n + i] -= 1
                    new[(1 - deme) * n + i] += 1
                    coefficients = [0.0] * 4
                    coefficients[2 + deme] = float(k)
                    out.append((tuple(new), coefficients))
        return out

    start = [0] * (2 * n)
    start[0], start[n] = n1, n2
    return Graph.from_callback(transitions, tuple(start), n_params=4)


class PiecewiseKingman(eqx.Module):
    """Kingman's coalescent with a piecewise-constant population size.

    Build once (host side) with ``PiecewiseKingman(n)``; calling it with
    ``coalescence_rates`` (``1 / N_j`` in coalescent units, one per epoch) and the
    increasing epoch ``breaks`` returns an :class:`phasejax.EpochPhaseType` whose rates
    and breaks are traced (jit-, grad- and vmap-able).
    """

    model: Model

    def __init__(self, n: int):
        self.model = kingman(n).compile()

    def __call__(self, coalescence_rates, breaks) -> EpochPhaseType:
        rates = jnp.asarray(coalescence_rates, float)
        return epochs(self.model, rates.reshape(-1, 1), breaks)


class IsolationWithMigration(eqx.Module):
    """Isolation with migration on a :func:`two_island` graph.

    Two populations exchange migrants (rates ``mig_12``, ``mig_21``; coalescence
    ``coal_1``, ``coal_2``) until ``split_time`` back in time, when every lineage moves
    into one ancestral population (deme 1) with coalescence rate ``coal_ancestral``.
    Build once with ``IsolationWithMigration(graph)``; calling it returns an
    :class:`phasejax.EpochPhaseType` (traced parameters). Rewards such as
    :func:`sfs_rewards` of the graph apply to it.
    """

    model: Model
    merge: tuple = eqx.field(static=True)

    def __init__(self, graph: Graph):
        self.model = graph.compile()
        states = graph.states()
        n = states.shape[1] // 2
        transient = np.asarray(self.model.transient_vertices)
        position = {int(v): i for i, v in enumerate(transient)}
        merged = np.concatenate([states[:, :n] + states[:, n:], np.zeros_like(states[:, n:])], axis=1)
        self.merge = tuple(position[graph.find_vertex(merged[v]).index] for v in transient)

    def __call__(self, coal_1, coal_2, mig_12, mig_21, coal_ancestral, split_time) -> EpochPhaseType:
        coal_1, coal_2, mig_12, mig_21, coal_ancestral = (
            jnp.asarray(x, float) for x in (coal_1, coal_2, mig_12, mig_21, coal_ancestral)
        )
        thetas = jnp.stack([
            jnp.stack([coal_1, coal_2, mig_12, mig_21]),
            # after the split no mass is left in deme 2; its states still need a way out
            jnp.stack([coal_ancestral, coal_ancestral, jnp.zeros_like(mig_12), jnp.ones_like(mig_21)]),
        ])
        return epochs(self.model, thetas, jnp.reshape(split_time, (1,)), maps=(self.merge,))
