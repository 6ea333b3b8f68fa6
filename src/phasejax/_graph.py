"""Host-side state-space graphs (plain Python and numpy).

A :class:`Graph` holds vertices (integer state vectors, found by a hash map) and
weighted edges. Vertex 0 is the *starting vertex*: it is not a state of the process,
its out-edges give the initial distribution (ptdalgorithms convention), and it is
not in the hash map (so a user state of all zeros is an ordinary state). Every edge
has a rate ``base + coefficients · theta`` (or ``base + rate_fn(theta, coefficients)``
after :meth:`Graph.compile`); a constant edge has zero coefficients.

Continuous graphs (phase-type, PH): weights are rates, a vertex with no out-edges is
absorbing. Discrete graphs (DPH): weights are probabilities per step; what is left of
``1 - sum(out-probabilities)`` at a vertex is the probability of staying there.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Any, NamedTuple

import numpy as np


class Matrices(NamedTuple):
    """Matrix form of a graph over its transient states.

    ``alpha``: initial probabilities; ``matrix``: sub-intensity S (continuous) or
    sub-transition T (discrete); ``states``: the state vector of each row;
    ``vertices``: the vertex index of each row in the graph.
    """

    alpha: np.ndarray
    matrix: np.ndarray
    states: np.ndarray
    vertices: np.ndarray


class Vertex:
    """A handle on one vertex of a :class:`Graph` (cheap; compare by index)."""

    __slots__ = ("graph", "index")

    def __init__(self, graph: Graph, index: int):
        self.graph = graph
        self.index = index

    def state(self) -> np.ndarray:
        """The integer state vector of this vertex (zeros for the starting vertex)."""
        return np.asarray(self.graph._states[self.index], dtype=np.int64)

    def add_edge(self, to: Vertex, weight: float) -> None:
        """Add a constant edge ``self -> to`` with the given rate/probability."""
        self.graph.add_edge(self.index, to.index, weight)

    def add_edge_parameterized(
        self, to: Vertex, weight: float, coefficients: Sequence[float]
    ) -> None:
        """Add an edge with rate ``weight + coefficients · theta``."""
        self.graph.add_edge(self.index, to.index, weight, coefficients)

    def edges(self) -> list[tuple[Vertex, float, np.ndarray]]:
        """Out-edges as ``(target, base, coefficients)``."""
        g = self.graph
        return [
            (Vertex(g, g._dst[e]), g._base[e], g._coefficient_row(e)) for e in g._out[self.index]
        ]

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Vertex) and other.graph is self.graph and other.index == self.index

    def __hash__(self) -> int:
        return hash((id(self.graph), self.index))

    def __repr__(self) -> str:
        return f"Vertex({self.index}, state={self.graph._states[self.index]})"


def _check_weight(weight: float, what: str) -> float:
    w = float(weight)
    if not np.isfinite(w):
        raise ValueError(f"{what}: weight {weight!r} is NaN or infinite")
    if w < 0:
        raise ValueError(
            f"{what}: weight {weight!r} is negative; rates and probabilities must be >= 0"
        )
    return w


class Graph:
    """A mutable state-space graph, built once on the host.

    **Arguments:**

    - `state_length`: length of every state vector.
    - `discrete`: `True` for a discrete phase-type (DPH) graph whose weights are
      per-step probabilities.
    - `n_params`: number of parameters of parameterized edges; inferred from the first
      parameterized edge when not given.
    """

    def __init__(self, state_length: int, *, discrete: bool = False, n_params: int | None = None):
        if int(state_length) < 1:
            raise ValueError(f"state_length must be >= 1, got {state_length}")
        self.state_length = int(state_length)
        self.discrete = bool(discrete)
        self.n_params = n_params
        self._index: dict[tuple[int, ...], int] = {}
        self._states: list[tuple[int, ...]] = [(0,) * self.state_length]
        self._out: list[list[int]] = [[]]
        self._src: list[int] = []
        self._dst: list[int] = []
        self._base: list[float] = []
        self._coef: dict[int, np.ndarray] = {}

    # -- vertices -------------------------------------------------------------
    def starting_vertex(self) -> Vertex:
        """The starting vertex (index 0); its out-edges are the initial distribution."""
        return Vertex(self, 0)

    def _key(self, state: Iterable[int]) -> tuple[int, ...]:
        key = tuple(int(s) for s in state)
        if len(key) != self.state_length:
            raise ValueError(
                f"state {key} has length {len(key)}, but this graph has state_length {self.state_length}"
            )
        return key

    def _find_or_create_index(self, key: tuple[int, ...]) -> int:
        index = self._index.get(key)
        if index is None:
            index = len(self._states)
            self._index[key] = index
            self._states.append(key)
            self._out.append([])
        return index

    def find_or_create_vertex(self, state: Iterable[int]) -> Vertex:
        """The vertex of ``state``, created (with no edges) if new."""
        return Vertex(self, self._find_or_create_index(self._key(state)))

    def find_vertex(self, state: Iterable[int]) -> Vertex:
        """The vertex of ``state``; ``KeyError`` if there is none."""
        key = self._key(state)
        if key not in self._index:
            raise KeyError(f"no vertex with state {key}")
        return Vertex(self, self._index[key])

    def vertex_exists(self, state: Iterable[int]) -> bool:
        return self._key(state) in self._index

    def vertex_at(self, index: int) -> Vertex:
        if not 0 <= index < len(self._states):
            raise IndexError(f"vertex index {index} out of range [0, {len(self._states)})")
        return Vertex(self, index)

    def vertices(self) -> list[Vertex]:
        """All vertices, the starting vertex first, then in creation order."""
        return [Vertex(self, i) for i in range(len(self._states))]

    def vertices_length(self) -> int:
        """Number of vertices, the starting vertex included."""
        return len(self._states)

    def states(self) -> np.ndarray:
        """State vectors of all vertices, shape (vertices_length, state_length); row 0 is the start."""
        return np.asarray(self._states, dtype=np.int64)

    # -- edges ------------------------------------------------------------------
    def add_edge(
        self,
        src: int,
        dst: int,
        weight: float = 0.0,
        coefficients: Sequence[float] | np.ndarray | None = None,
    ) -> None:
        """Add edge ``src -> dst`` (vertex indices) with rate ``weight + coefficients · theta``."""
        n = len(self._states)
        if not (0 <= src < n and 0 < dst < n):
            raise ValueError(
                f"edge {src} -> {dst}: vertex index out of range (targets must be states 1..{n - 1})"
            )
        if src == dst:
            raise ValueError(
                f"edge {src} -> {dst} is a self-loop: not allowed (continuous: meaningless; "
                "discrete: the probability of staying is 1 - sum of out-probabilities)"
            )
        what = f"edge {self._states[src]} -> {self._states[dst]}"
        w = _check_weight(weight, what)
        e = len(self._src)
        if coefficients is not None:
            row = np.asarray(coefficients, dtype=np.float64).ravel()
            self._check_coefficients(row, what)
            self._coef[e] = row
        self._src.append(src)
        self._dst.append(dst)
        self._base.append(w)
        self._out[src].append(e)

    def _check_coefficients(self, row: np.ndarray, what: str) -> None:
        if self.n_params is None:
            self.n_params = row.size
        if row.size != self.n_params:
            raise ValueError(
                f"{what}: {row.size} coefficients, but the graph has {self.n_params} parameters"
            )
        if not np.all(np.isfinite(row)):
            raise ValueError(f"{what}: coefficients {row} contain NaN or infinity")

    def _coefficient_row(self, e: int) -> np.ndarray:
        return self._coef.get(e, np.zeros(self.n_params or 0))

    def edges_length(self) -> int:
        return len(self._src)

    def edge_arrays(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """All edges as arrays ``(src, dst, base, coefficients)``.

        ``src``, ``dst``: vertex indices (0 = start), shape (E,); ``base``: constant
        weights (E,); ``coefficients``: (E, n_params), so that rate = base + coefficients @ theta.
        """
        src = np.asarray(self._src, dtype=np.int64)
        dst = np.asarray(self._dst, dtype=np.int64)
        base = np.asarray(self._base, dtype=np.float64)
        coef = np.zeros((src.size, self.n_params or 0))
        if self._coef:
            coef[np.fromiter(self._coef, np.int64)] = np.stack(list(self._coef.values()))
        return src, dst, base, coef

    # -- construction helpers -------------------------------------------------
    @classmethod
    def from_callback(
        cls,
        callback: Callable[..., Iterable[tuple]],
        initial: Sequence[int] | Sequence[tuple[Sequence[int], float]],
        *,
        discrete: bool = False,
        n_params: int | None = None,
        **kwargs: Any,
    ) -> Graph:
        """Build a graph breadth-first from a transition callback.

        **Arguments:**

        - `callback`: ``callback(state, **kwargs)`` returns an iterable of transitions
          ``(next_state, rate)`` where ``rate`` is a number (a constant edge) or a
          sequence of coefficients (a parameterized edge ``coefficients · theta``), or
          ``(next_state, base, coefficients)``. A state with no transitions is absorbing.
        - `initial`: one starting state (entered with probability 1), or a list of
          ``(state, probability)`` pairs.
        - `discrete`, `n_params`: as for :class:`Graph`.
        """
        if isinstance(initial[0], (int, np.integer)):
            starts = [(tuple(initial), 1.0)]
        else:
            starts = [(tuple(s), float(p)) for s, p in initial]
        graph = cls(len(starts[0][0]), discrete=discrete, n_params=n_params)
        for state, prob in starts:
            graph.add_edge(0, graph._find_or_create_index(graph._key(state)), prob)
        queue = [graph._index[graph._key(s)] for s, _ in starts]
        seen = set(queue)
        head = 0
        states, find, key = graph._states, graph._find_or_create_index, graph._key
        src, dst, base_weights, out, coefs = (
            graph._src,
            graph._dst,
            graph._base,
            graph._out,
            graph._coef,
        )
        while head < len(queue):
            i = queue[head]
            head += 1
            for transition in callback(np.asarray(states[i]), **kwargs):
                if len(transition) == 3:
                    nxt, base, coef = transition
                elif np.ndim(transition[1]) == 0:
                    (nxt, base), coef = transition, None
                else:
                    (nxt, coef), base = transition, 0.0
                j = find(key(nxt))
                if j not in seen:
                    seen.add(j)
                    queue.append(j)
                if i == j:
                    graph.add_edge(i, j, base)  # raises the self-loop error
                e = len(src)
                if coef is not None:
                    coefs[e] = coef
                src.append(i)
                dst.append(j)
                base_weights.append(base)
                out[i].append(e)
        graph._validate_edges()
        return graph

    def _validate_edges(self) -> None:
        """Vectorised checks of edges added without per-edge checks (``from_callback``)."""
        base = np.asarray(self._base, dtype=np.float64)
        bad = np.flatnonzero(~np.isfinite(base) | (base < 0))
        if bad.size:
            e = bad[0]
            raise ValueError(
                f"edge {self._states[self._src[e]]} -> {self._states[self._dst[e]]}: weight {float(base[e])} "
                "is negative, NaN or infinite; rates and probabilities must be >= 0"
            )
        self._base = base.tolist()
        if not self._coef:
            return
        try:
            rows = np.asarray(list(self._coef.values()), dtype=np.float64)
        except ValueError as err:
            raise ValueError(
                "parameterized edges have coefficient vectors of different lengths"
            ) from err
        if rows.ndim != 2:
            raise ValueError("coefficients must be flat sequences of numbers")
        self._check_coefficients(rows[0], "parameterized edges")
        if rows.shape[1] != self.n_params or not np.all(np.isfinite(rows)):
            raise ValueError(
                f"coefficients must be finite vectors of length n_params={self.n_params}, got shape {rows.shape}"
            )
        self._coef = dict(zip(self._coef, rows))

    @classmethod
    def from_matrices(
        cls,
        alpha: np.ndarray,
        matrix: np.ndarray,
        *,
        discrete: bool = False,
        states: np.ndarray | None = None,
    ) -> Graph:
        """Build a graph from ``(alpha, S)`` (continuous) or ``(alpha, T)`` (discrete).

        Row ``i`` becomes a vertex with state ``states[i]`` (default ``[i + 1]``); one
        absorbing vertex (state of ``-1``s) receives the exit rates ``-S @ 1`` (or exit
        probabilities ``1 - T @ 1``). ``1 - sum(alpha)`` is the defect.
        """
        alpha = np.asarray(alpha, dtype=np.float64)
        m = np.asarray(matrix, dtype=np.float64)
        n = alpha.size
        if m.shape != (n, n):
            raise ValueError(f"matrix has shape {m.shape}, expected ({n}, {n}) to match alpha")
        if np.any(alpha < 0) or alpha.sum() > 1 + 1e-12:
            raise ValueError(
                f"alpha must be non-negative and sum to at most 1, got sum {alpha.sum()}"
            )
        if states is None:
            states = np.arange(1, n + 1)[:, None]
        states = np.asarray(states, dtype=np.int64).reshape(n, -1)
        absorbing_state = (-1,) * states.shape[1]
        keys = {tuple(s) for s in states.tolist()}
        if len(keys) != n or absorbing_state in keys:
            raise ValueError(
                f"states must be distinct and differ from the absorbing state {absorbing_state}"
            )
        graph = cls(states.shape[1], discrete=discrete)
        vs = [graph._find_or_create_index(graph._key(s)) for s in states]
        absorbing = graph._find_or_create_index(absorbing_state)
        offdiag = m - np.diag(np.diag(m))
        if discrete:
            exit_ = 1.0 - m.sum(axis=1)
            if np.any(m < 0) or np.any(exit_ < -1e-12):
                raise ValueError("T must be non-negative with row sums at most 1")
        else:
            exit_ = -m.sum(axis=1)
            if np.any(offdiag < 0) or np.any(exit_ < -1e-12 * np.abs(np.diag(m))):
                raise ValueError(
                    "S must have non-negative off-diagonal entries and non-positive row sums"
                )
        for i in range(n):
            if alpha[i] > 0:
                graph.add_edge(0, vs[i], alpha[i])
            for j in np.flatnonzero(offdiag[i]):
                graph.add_edge(vs[i], vs[j], offdiag[i, j])
            if exit_[i] > 0:
                graph.add_edge(vs[i], absorbing, exit_[i])
        return graph

    def as_matrices(self, theta: np.ndarray | None = None) -> Matrices:
        """The matrix form over transient vertices (those with out-edges), rates at ``theta``."""
        src, dst, base, coef = self.edge_arrays()
        rate = base if coef.shape[1] == 0 else base + coef @ np.asarray(theta, dtype=np.float64)
        transient = np.asarray(
            [i for i in range(1, len(self._states)) if self._out[i]], dtype=np.int64
        )
        pos = np.full(len(self._states), -1)
        pos[transient] = np.arange(transient.size)
        n = transient.size
        alpha = np.zeros(n)
        start = (src == 0) & (pos[dst] >= 0)
        np.add.at(alpha, pos[dst[start]], rate[start])
        mat = np.zeros((n, n))
        inner = (src > 0) & (pos[dst] >= 0)
        np.add.at(mat, (pos[src[inner]], pos[dst[inner]]), rate[inner])
        out = np.zeros(n)
        np.add.at(out, pos[src[src > 0]], rate[src > 0])
        mat += np.diag(1.0 - out) if self.discrete else -np.diag(out)
        return Matrices(alpha, mat, self.states()[transient], transient)

    def compile(self, **kwargs: Any):
        """Compile into a [`phasejax.Model`][]: structure -> static arrays, once.

        Keyword arguments: `solver`, `rate_fn`, `initial`; see
        [`phasejax.internal.compile_graph`][].
        """
        from ._compile import compile_graph  # upward convenience: _compile builds on Graph

        return compile_graph(self, **kwargs)

    def __repr__(self) -> str:
        kind = "discrete" if self.discrete else "continuous"
        return (
            f"Graph({kind}, vertices={self.vertices_length()}, edges={self.edges_length()}, "
            f"n_params={self.n_params or 0})"
        )
