"""Queueing and population models (birth-death chains, cyclic)."""

from __future__ import annotations

from .._graph import Graph


def mm1_capacity(capacity: int) -> Graph:
    """M/M/1 queue observed until it first overflows its capacity.

    State ``(k,)``: customers present, ``k = 0..capacity``, starting empty. Parameters
    ``theta = (arrival, service)``. Absorbs at ``capacity + 1`` (the first overflow):
    the phase-type variable is the time to overflow.
    """
    if capacity < 1:
        raise ValueError(f"capacity must be >= 1, got {capacity}")

    def transitions(state):
        k = int(state[0])
        if k > capacity:
            return []
        out = [((k + 1,), [1.0, 0.0])]
        if k > 0:
            out.append(((k - 1,), [0.0, 1.0]))
        return out

    return Graph.from_callback(transitions, (0,), n_params=2)


def birth_death(max_size: int, initial: int = 1) -> Graph:
    """Linear birth-death process until extinction, population capped at ``max_size``.

    State ``(i,)``: population size. Parameters ``theta = (birth, death)``: births at
    rate ``birth * i`` (none at ``max_size``), deaths at ``death * i``; absorbs at 0.
    """
    if not 1 <= initial <= max_size:
        raise ValueError(
            f"need 1 <= initial <= max_size, got initial={initial}, max_size={max_size}"
        )

    def transitions(state):
        i = int(state[0])
        if i == 0:
            return []
        out = [((i - 1,), [0.0, float(i)])]
        if i < max_size:
            out.append(((i + 1,), [float(i), 0.0]))
        return out

    return Graph.from_callback(transitions, (initial,), n_params=2)
