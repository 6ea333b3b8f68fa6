"""Host-side state spaces of the structured coalescent: lineages counted per (deme, type).

A state is a vector of counts, one entry per *group* ``g = deme * n_types + type``. Two
lineages of one deme coalesce into one lineage of type ``combine(t1, t2)``; a lineage
migrates between demes keeping its type; at an epoch boundary every lineage of deme
``a`` independently moves to deme ``b`` with probability ``P[a, b]`` (splits, pulses,
admixture). Lineage counting has one type; block counting types a lineage by the
number of sampled descendants it has in each sampled deme.

Everything here is static (numpy); the traced rates and probabilities enter through
the index arrays that `StateSpace` holds.
"""

from __future__ import annotations

import itertools
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from math import factorial

import numpy as np


class StateBudgetError(ValueError):
    """The requested state space has more states than the budget allows."""


@dataclass(frozen=True, eq=False)
class StateSpace:
    """Static description of a structured-coalescent state space.

    Attributes:
        states: ``(V, D * n_types)`` counts per group.
        types: ``(n_types, S)`` descendant counts per sampled deme of each type.
        n_demes: ``D``.
        absorbing: ``(V,)`` bool, one lineage left (the MRCA).
        coal: ``(src, dst, deme, multiplicity)`` of every coalescence.
        mig: ``(src, dst, from_deme, to_deme, multiplicity)`` of every migration.
        transfers: per pattern of possible moves (a tuple of ``(a, b)`` pairs), the
            ``(src, dst, coefficient, exponents)`` arrays of the multinomial map,
            ``exponents[e, p]`` the number of lineages taking move ``pairs[p]``.
    """

    states: np.ndarray
    types: np.ndarray
    n_demes: int
    absorbing: np.ndarray
    coal: tuple[np.ndarray, ...]
    mig: tuple[np.ndarray, ...]
    transfers: dict

    @property
    def n_states(self) -> int:
        return self.states.shape[0]

    def lineages(self) -> np.ndarray:
        """``(V, D)`` number of lineages per deme."""
        return self.states.reshape(self.n_states, self.n_demes, -1).sum(axis=2)


def _compositions(total: int, parts: int):
    """All ways to write ``total`` as an ordered sum of ``parts`` non-negative integers."""
    for cuts in itertools.combinations(range(total + parts - 1), parts - 1):
        yield np.diff(np.array((-1,) + cuts + (total + parts - 1,))) - 1


def build(
    n_demes: int,
    types: np.ndarray,
    start: np.ndarray,
    migration_pairs: Collection,
    transfer_patterns: Sequence,
    max_states: int,
) -> StateSpace:
    """Enumerate the states reachable from ``start`` and index every transition.

    Args:
        n_demes: number of demes ``D``.
        types: ``(n_types, S)`` integer descendant vectors; a coalescence adds them.
        start: ``(D * n_types,)`` initial counts.
        migration_pairs: ``(a, b)`` pairs with a (backward) migration rate in some epoch.
        transfer_patterns: per epoch boundary, a sorted tuple of the ``(a, b)`` moves
            possible there (``(a, a)``: the lineages of ``a`` may stay).
        max_states: raise [`StateBudgetError`][phasejax.popgen.StateBudgetError] beyond this many states.
    """
    n_types = types.shape[0]
    type_index = {tuple(int(x) for x in t): i for i, t in enumerate(types)}

    def combine(t1, t2):
        if n_types == 1:
            return 0
        return type_index[tuple(int(x) for x in types[t1] + types[t2])]

    index = {tuple(int(x) for x in start): 0}
    states = [tuple(int(x) for x in start)]
    coal, mig, moves = [], [], {p: [] for p in set(transfer_patterns)}

    def find(state):
        key = tuple(state)
        if key not in index:
            if len(states) >= max_states:
                raise StateBudgetError(
                    f"the state space exceeds the budget of max_states={max_states} states "
                    f"(sample sizes too large for this quantity; raise max_states or use "
                    f"fewer samples)"
                )
            index[key] = len(states)
            states.append(key)
        return index[key]

    i = 0
    while i < len(states):
        state = np.array(states[i])
        i += 1
        groups = state.reshape(n_demes, n_types)
        # an absorbed state (the MRCA) has no rates but still moves at the breaks
        for d in range(n_demes if state.sum() > 1 else 0):
            present = np.flatnonzero(groups[d])
            for a, t1 in enumerate(present):
                for t2 in present[a:]:
                    pairs = (
                        groups[d, t1] * (groups[d, t1] - 1) // 2
                        if t1 == t2
                        else groups[d, t1] * groups[d, t2]
                    )
                    if not pairs:
                        continue
                    new = groups.copy()
                    new[d, t1] -= 1
                    new[d, t2] -= 1
                    new[d, combine(t1, t2)] += 1
                    coal.append((i - 1, find(new.ravel()), d, pairs))
        for a, b in migration_pairs if state.sum() > 1 else ():
            for t in np.flatnonzero(groups[a]):
                new = groups.copy()
                new[a, t] -= 1
                new[b, t] += 1
                mig.append((i - 1, find(new.ravel()), a, b, groups[a, t]))
        for pattern in moves:
            for dst, coefficient, exponents in _transfer_outcomes(groups, pattern):
                moves[pattern].append((i - 1, find(dst.ravel()), coefficient, exponents))
    state_rows = np.array(states, dtype=np.int64)
    absorbing = state_rows.sum(axis=1) == 1
    coal = _columns(coal, 4)
    mig = _columns(mig, 5)
    transfers = {}
    for pattern, rows in moves.items():
        n_pairs = len(pattern)
        transfers[pattern] = (
            np.array([r[0] for r in rows], np.int64),
            np.array([r[1] for r in rows], np.int64),
            np.array([r[2] for r in rows], np.float64),
            np.array([r[3] for r in rows], np.int64).reshape(len(rows), n_pairs),
        )
    return StateSpace(state_rows, np.asarray(types), n_demes, absorbing, coal, mig, transfers)


def _columns(rows, width):
    if not rows:
        return tuple(np.zeros(0, np.int64) for _ in range(width))
    arr = np.array(rows, dtype=np.int64)
    return tuple(arr[:, c] for c in range(width))


def _transfer_outcomes(groups: np.ndarray, pairs: tuple):
    """Every outcome of moving each lineage of deme ``a`` along one of its moves.

    Yields ``(new_groups, multinomial coefficient, exponents per pair)``. A deme that is
    the source of no pair keeps its lineages; one that is keeps them only through an
    explicit pair ``(a, a)`` (probability ``P[a, a]``).
    """
    n_demes, n_types = groups.shape
    per_group = []  # for each (deme, type) with lineages: the list of (dest counts, coef, exps)
    for a in range(n_demes):
        options = [p for p, (src, _) in enumerate(pairs) if src == a]
        for t in np.flatnonzero(groups[a]):
            count = int(groups[a, t])
            if not options:
                per_group.append([(a, t, {}, 1.0)])
                continue
            outcomes = []
            for split in _compositions(count, len(options)):
                coef = factorial(count)
                for s in split:
                    coef //= factorial(int(s))
                outcomes.append(
                    (a, t, {options[k]: int(s) for k, s in enumerate(split)}, float(coef))
                )
            per_group.append(outcomes)
    for combo in itertools.product(*per_group):
        new = groups.copy()
        exponents = np.zeros(len(pairs), np.int64)
        coefficient = 1.0
        for a, t, moved, coef in combo:
            coefficient *= coef
            for p, s in moved.items():
                new[a, t] -= s
                new[pairs[p][1], t] += s
                exponents[p] += s
        yield new, coefficient, exponents
