"""Small textbook models: Erlang, Coxian, and the rabbit-flooding example."""

from __future__ import annotations

from .._graph import Graph


def erlang(k: int) -> Graph:
    """Erlang(k): ``k`` phases in series, each left at rate ``theta[0]``."""
    if k < 1:
        raise ValueError(f"erlang needs k >= 1 phases, got {k}")
    return Graph.from_callback(
        lambda s: [((int(s[0]) + 1,), [1.0])] if s[0] < k else [], (0,), n_params=1
    )


def coxian(k: int) -> Graph:
    """Coxian distribution with ``k`` phases.

    Parameters ``theta = (a_1..a_{k-1}, b_1..b_k)``: phase ``i`` moves on to phase
    ``i + 1`` at rate ``a_i`` and is absorbed at rate ``b_i``. State ``(i,)``, phase
    ``i`` in ``0..k-1``; the absorbing state is ``(k,)``.
    """
    if k < 1:
        raise ValueError(f"coxian needs k >= 1 phases, got {k}")
    p = 2 * k - 1

    def unit(index):
        c = [0.0] * p
        c[index] = 1.0
        return c

    def transitions(state):
        i = int(state[0])
        if i == k:
            return []
        out = [((k,), unit(k - 1 + i))]
        if i < k - 1:
            out.append(((i + 1,), unit(i)))
        return out

    return Graph.from_callback(transitions, (0,), n_params=p)


def rabbit_flooding(n_rabbits: int) -> Graph:
    """Rabbits hopping between two islands that flood (the ptdalgorithms example).

    State ``(left, right)``: rabbits on each island, starting ``(n, 0)``. Each rabbit
    hops to the other island at rate 1; the left island floods at rate ``theta[0]``,
    the right at ``theta[1]``, drowning every rabbit on it. Absorbs when none are left.
    """
    if n_rabbits < 1:
        raise ValueError(f"need at least one rabbit, got {n_rabbits}")

    def transitions(state):
        left, right = int(state[0]), int(state[1])
        out = []
        if left:
            out.append(((left - 1, right + 1), float(left), [0.0, 0.0]))
            out.append(((0, right), 0.0, [1.0, 0.0]))
        if right:
            out.append(((left + 1, right - 1), float(right), [0.0, 0.0]))
            out.append(((left, 0), 0.0, [0.0, 1.0]))
        return out

    return Graph.from_callback(transitions, (n_rabbits, 0), n_params=2)
