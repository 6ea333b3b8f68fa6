"""Host-side state-space graphs (plain Python and numpy).

A [`Graph`][phasejax.Graph] holds vertices (integer state vectors, found by a hash map) and
weighted edges. Vertex 0 is the *starting vertex*: it is not a state of the process,
its out-edges give the initial distribution (ptdalgorithms convention), and it is
not in the hash map (so a user state of all zeros is an ordinary state). Every edge
has a rate ``base + coefficients · theta`` (or ``base + rate_fn(theta, coefficients)``
after [`phasejax.Graph.compile`][]); a constant edge has zero coefficients.

Continuous graphs (phase-type, PH): weights are rates, a vertex with no out-edges is
absorbing. Discrete graphs (DPH): weights are probabilities per step; what is left of
``1 - sum(out-probabilities)`` at a vertex is the probability of staying there.

Storage is columnar so that million-state graphs stay small and fast to build: states
are rows of one growing ``int64`` array, edges are growing arrays (``int32`` vertex
indices, ``float64`` weights and a dense ``(E, n_params)`` coefficient block), and the
state -> vertex map is a sorted array of 64-bit state hashes, every hit verified
against the stored state (so hash collisions cost time, never correctness). Graphs
are grown frontier by frontier by [`phasejax.Graph.from_batched_callback`][], which
hashes and inserts a whole batch of states at once.
"""

from __future__ import annotations

import numbers
from collections.abc import Callable, Iterable, Sequence
from typing import Any, NamedTuple

import numpy as np
from jaxtyping import Float, Int
from tqdm import tqdm

from ._topology import csr, transient_vertices

DEFAULT_MAX_STATES = 10_000_000
"""Default cap on the number of states a callback build may create (runaway protection)."""

DEFAULT_BATCH_SIZE = 4096
"""Parent states per call of a batched callback (bounds the memory of one call)."""

_PROGRESS_DELAY = 2.0  # seconds before a build shows a progress bar


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


class _Buffer:
    """A growing numpy array (amortised O(1) appends along axis 0)."""

    __slots__ = ("data", "size")

    def __init__(self, dtype, width: tuple[int, ...] = ()):
        self.data = np.empty((16,) + width, dtype)
        self.size = 0

    def extend(self, rows: np.ndarray) -> None:
        need = self.size + len(rows)
        if need > len(self.data):
            shape = (max(need, 2 * len(self.data)),) + self.data.shape[1:]
            grown = np.empty(shape, self.data.dtype)
            grown[: self.size] = self.data[: self.size]
            self.data = grown
        self.data[self.size : need] = rows
        self.size = need

    def view(self) -> np.ndarray:
        """The filled part, read-only (rows never change once appended)."""
        out = self.data[: self.size]
        out.flags.writeable = False
        return out

    def trim(self) -> None:
        """Release the spare capacity (after a bulk build) when it is worth a copy."""
        if len(self.data) > 1.25 * self.size + 16:
            self.data = self.data[: self.size].copy()


def _hash_rows(rows: Int[np.ndarray, "K L"], multipliers: np.ndarray) -> np.ndarray:
    """64-bit hashes of int64 rows: ``sum_j rows[:, j] * multipliers[j]`` modulo 2^64.

    A random linear hash: one matrix-vector product over the rows as they lie in memory
    (several times faster than mixing column by column). Its collisions are resolved by
    comparing states, so its quality only affects speed.
    """
    return np.ascontiguousarray(rows).view(np.uint64) @ multipliers


class _StateIndex:
    """Exact map from state rows to vertex indices, without a Python object per state.

    Hashes live in two sorted arrays: a large ``main`` run and a small ``recent`` run
    that takes inserts and is merged into ``main`` once it grows past an eighth of it,
    so single inserts stay cheap. A hit is verified against the stored state row.
    """

    def __init__(self, length: int):
        rng = np.random.default_rng(0x9E3779B9)
        self.multipliers = rng.integers(1, 2**63, size=length, dtype=np.uint64) | np.uint64(1)
        empty = (np.empty(0, np.uint64), np.empty(0, np.int64))
        self.main, self.recent = empty, empty

    @staticmethod
    def _search(run, h, rows, states) -> np.ndarray:
        keys, vertices = run
        found = np.full(h.size, -1, np.int64)
        if keys.size == 0:
            return found
        lo = np.searchsorted(keys, h)
        hit = keys[np.minimum(lo, keys.size - 1)] == h
        after = np.minimum(lo + 1, keys.size - 1)
        shared = hit & (lo + 1 < keys.size) & (keys[after] == h)  # colliding hashes
        one = np.flatnonzero(hit & ~shared)
        candidate = vertices[lo[one]]
        match = np.all(states[candidate] == rows[one], axis=1)
        found[one[match]] = candidate[match]
        for q in np.flatnonzero(shared):  # rare: scan the run of equal hashes
            for at in range(lo[q], np.searchsorted(keys, h[q], "right")):
                if np.array_equal(states[vertices[at]], rows[q]):
                    found[q] = vertices[at]
        return found

    def lookup(self, rows: np.ndarray, h: np.ndarray, states: np.ndarray) -> np.ndarray:
        """Vertex index of each row, ``-1`` where absent."""
        found = self._search(self.main, h, rows, states)
        if self.recent[0].size:
            miss = np.flatnonzero(found < 0)
            found[miss] = self._search(self.recent, h[miss], rows[miss], states)
        return found

    @staticmethod
    def _merge(run, h, vertices):
        order = np.argsort(h, kind="stable")
        at = np.searchsorted(run[0], h[order])
        return np.insert(run[0], at, h[order]), np.insert(run[1], at, vertices[order])

    def insert(self, h: np.ndarray, vertices: np.ndarray) -> None:
        self.recent = self._merge(self.recent, h, vertices)
        if self.recent[0].size > max(1024, self.main[0].size // 8):
            self.main = self._merge(self.main, *self.recent)
            self.recent = (np.empty(0, np.uint64), np.empty(0, np.int64))


def _describe(state: np.ndarray) -> str:
    return str(tuple(int(x) for x in state))


class Vertex:
    """A handle on one vertex of a [`Graph`][phasejax.Graph] (cheap; compare by index)."""

    __slots__ = ("graph", "index")

    def __init__(self, graph: Graph, index: int):
        self.graph = graph
        self.index = index

    def state(self) -> np.ndarray:
        """The integer state vector of this vertex (zeros for the starting vertex)."""
        return self.graph._states.view()[self.index].copy()

    def add_edge(self, to: Vertex, weight: float) -> None:
        """Add a constant edge ``self -> to`` with the given rate/probability."""
        self.graph.add_edge(self.index, to.index, weight)

    def add_edge_parameterized(
        self, to: Vertex, weight: float, coefficients: Sequence[float]
    ) -> None:
        """Add an edge with rate ``weight + coefficients · theta``."""
        self.graph.add_edge(self.index, to.index, weight, coefficients)

    def edges(self) -> list[tuple[Vertex, float, np.ndarray]]:
        """Out-edges as ``(target, base, coefficients)``, in the order they were added."""
        g = self.graph
        dst, base, coef = g._dst.view(), g._base.view(), g._coef.view()
        order, ptr = g._out_edges()
        return [
            (Vertex(g, int(dst[e])), float(base[e]), coef[e].copy())
            for e in order[ptr[self.index] : ptr[self.index + 1]]
        ]

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Vertex) and other.graph is self.graph and other.index == self.index

    def __hash__(self) -> int:
        return hash((id(self.graph), self.index))

    def __repr__(self) -> str:
        return f"Vertex({self.index}, state={_describe(self.state())})"


BatchedCallback = Callable[..., tuple]
"""``fn(states, **kwargs)``: see [`phasejax.Graph.from_batched_callback`][]."""


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
        self._states = _Buffer(np.int64, (self.state_length,))
        self._states.extend(np.zeros((1, self.state_length), np.int64))
        self._index = _StateIndex(self.state_length)
        self._src = _Buffer(np.int32)
        self._dst = _Buffer(np.int32)
        self._base = _Buffer(np.float64)
        self._coef = _Buffer(np.float64, (n_params or 0,))
        self._out_cache: tuple[tuple[int, int], np.ndarray, np.ndarray] | None = None

    # -- vertices -------------------------------------------------------------
    def starting_vertex(self) -> Vertex:
        """The starting vertex (index 0); its out-edges are the initial distribution."""
        return Vertex(self, 0)

    def _as_states(
        self, rows: Any, parents: Callable[[int], np.ndarray] | None = None
    ) -> np.ndarray:
        """``rows`` as an (K, state_length) int64 array, or an error naming the bad state.

        States must be integer vectors: floats are accepted only when finite and
        integral (never truncated). ``parents(k)``: the state row ``k`` was reached from,
        for the message.
        """
        try:
            array = np.asarray(rows)
        except ValueError:
            array = np.asarray(rows, dtype=object)
        if array.ndim == 1 and array.dtype != object:
            array = array[None]
        if array.ndim != 2 or array.shape[1] != self.state_length:
            for k, row in enumerate(array if array.ndim else [array]):
                if np.ndim(row) != 1 or len(row) != self.state_length:
                    state = tuple(np.atleast_1d(row).tolist())
                    raise ValueError(
                        f"state {state} has length {len(state)}, but this graph has "
                        f"state_length {self.state_length}{_reached(parents, k)}"
                    )
        kind = array.dtype.kind
        if kind in "iu":
            return array.astype(np.int64, copy=False)
        if kind == "f":
            bad = ~np.all(np.isfinite(array) & (array == np.round(array)), axis=1)
        else:
            bad = np.ones(len(array), bool)
        if np.any(bad):
            k = int(np.flatnonzero(bad)[0])
            raise ValueError(
                f"state {tuple(array[k].tolist())} is not a vector of finite integers"
                f"{_reached(parents, k)}; states must hold integers (they are never rounded)"
            )
        return array.astype(np.int64)

    def _locate(self, rows: np.ndarray) -> tuple[np.ndarray, ...]:
        """Look up the distinct rows of an int64 state array in one pass.

        Returns ``(hashes, first, group, found)``: ``rows[first]`` are the distinct rows
        (``rows == rows[first][group]``), ``hashes`` theirs, ``found`` their vertex
        indices (``-1`` where absent). Deduplicating first makes the look-ups sorted and
        few (a frontier reaches each child state from many parents).
        """
        h = _hash_rows(rows, self._index.multipliers)
        hashes, first, group = np.unique(h, return_index=True, return_inverse=True)
        if not np.array_equal(rows[first[group]], rows):  # two states in the batch share a hash
            _, first, group = np.unique(rows, axis=0, return_index=True, return_inverse=True)
            hashes = h[first]
        group = group.ravel()
        return hashes, first, group, self._index.lookup(rows[first], hashes, self._states.view())

    def _find_or_create(
        self, rows: np.ndarray, max_states: int | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Vertex indices of int64 state ``rows``, creating the missing ones in order of
        first occurrence. Returns ``(indices, new)``, ``new`` the created indices."""
        hashes, first, group, found = self._locate(rows)
        miss = np.flatnonzero(found < 0)
        miss = miss[np.argsort(first[miss])]
        start = self._states.size
        if max_states is not None and start - 1 + miss.size > max_states:
            last = "; ".join(_describe(s) for s in rows[first[miss[-3:]]])
            raise ValueError(
                f"the state space exceeds max_states={max_states:,}: {start - 1 + miss.size:,} "
                f"states reached; the last created: {last}. Pass a larger max_states if this is "
                "intended, or check the callback for a runaway (an unbounded count?)"
            )
        new = np.arange(start, start + miss.size)
        found[miss] = new
        self._states.extend(rows[first[miss]])
        self._index.insert(hashes[miss], new)
        return found[group], new

    def find_or_create_vertex(self, state: Iterable[int]) -> Vertex:
        """The vertex of ``state``, created (with no edges) if new."""
        return Vertex(self, int(self._find_or_create(self._as_states([state]))[0][0]))

    def find_vertices(self, states: Any) -> Int[np.ndarray, " k"]:
        """Vertex indices of the rows of ``states`` (shape ``(k, state_length)``) in one
        vectorised look-up; ``KeyError`` naming the first state that has no vertex."""
        rows = self._as_states(states)
        _, first, group, found = self._locate(rows)
        if np.any(found < 0):
            raise KeyError(f"no vertex with state {_describe(rows[first[np.argmin(found)]])}")
        return found[group]

    def find_vertex(self, state: Iterable[int]) -> Vertex:
        """The vertex of ``state``; ``KeyError`` if there is none."""
        return Vertex(self, int(self.find_vertices([state])[0]))

    def vertex_exists(self, state: Iterable[int]) -> bool:
        return bool(self._locate(self._as_states([state]))[3][0] >= 0)

    def vertex_at(self, index: int) -> Vertex:
        if not 0 <= index < self._states.size:
            raise IndexError(f"vertex index {index} out of range [0, {self._states.size})")
        return Vertex(self, index)

    def vertices(self) -> list[Vertex]:
        """All vertices, the starting vertex first, then in creation order."""
        return [Vertex(self, i) for i in range(self._states.size)]

    def vertices_length(self) -> int:
        """Number of vertices, the starting vertex included."""
        return self._states.size

    def states(self) -> Int[np.ndarray, "V L"]:
        """State vectors of all vertices, shape (vertices_length, state_length), int64,
        read-only; row 0 is the start."""
        return self._states.view()

    # -- edges ------------------------------------------------------------------
    def add_edge(
        self,
        src: int,
        dst: int,
        weight: float = 0.0,
        coefficients: Sequence[float] | np.ndarray | None = None,
    ) -> None:
        """Add edge ``src -> dst`` (vertex indices) with rate ``weight + coefficients · theta``."""
        coef = None
        if coefficients is not None:
            coef = _real_array(coefficients, f"edge {src} -> {dst}: coefficients").reshape(1, -1)
        self._append_edges(np.array([src]), np.array([dst]), [weight], coef)

    def _append_edges(
        self,
        src: np.ndarray,
        dst: np.ndarray,
        base: Any,
        coefficients: np.ndarray | None,
    ) -> None:
        """Append edges ``src -> dst`` with rates ``base + coefficients · theta``, after one
        vectorised check of them all (the single way edges enter a graph)."""
        n = self._states.size
        base = _real_array(base, "edge weights").reshape(-1)
        bad = ~((src >= 0) & (src < n) & (dst > 0) & (dst < n))
        if np.any(bad):
            e = int(np.flatnonzero(bad)[0])
            raise ValueError(
                f"edge {src[e]} -> {dst[e]}: vertex index out of range "
                f"(targets must be states 1..{n - 1})"
            )
        states = self._states.view()

        def what(e):
            return f"edge {_describe(states[src[e]])} -> {_describe(states[dst[e]])}"

        loops = np.flatnonzero(src == dst)
        if loops.size:
            e = int(loops[0])
            raise ValueError(
                f"edge {src[e]} -> {dst[e]} (state {_describe(states[src[e]])}) is a self-loop: "
                "not allowed (continuous: meaningless; discrete: the probability of staying is "
                "1 - sum of out-probabilities)"
            )
        bad = np.flatnonzero(~np.isfinite(base) | (base < 0))
        if bad.size:
            e = int(bad[0])
            problem = "is NaN or infinite" if not np.isfinite(base[e]) else "is negative"
            raise ValueError(
                f"{what(e)}: weight {float(base[e])!r} {problem}; rates and probabilities must be "
                "finite and >= 0"
            )
        if coefficients is not None:
            p = coefficients.shape[1]
            if self.n_params is None:
                self.n_params = p
            if p != self.n_params:
                raise ValueError(
                    f"{what(0)}: {p} coefficients, but the graph has {self.n_params} parameters"
                )
            bad = np.flatnonzero(~np.all(np.isfinite(coefficients), axis=1))
            if bad.size:
                e = int(bad[0])
                raise ValueError(
                    f"{what(e)}: coefficients {coefficients[e]} contain NaN or infinity"
                )
            if self._coef.data.shape[1] != p:  # first parameterised edge: widen the block
                self._coef = _Buffer(np.float64, (p,))
                self._coef.extend(np.zeros((self._src.size, p)))
        else:
            coefficients = np.zeros((src.size, self._coef.data.shape[1]))
        self._src.extend(src)
        self._dst.extend(dst)
        self._base.extend(base)
        self._coef.extend(coefficients)

    def _out_edges(self) -> tuple[np.ndarray, np.ndarray]:
        """Edges grouped by source, in insertion order: ``order[ptr[v]:ptr[v + 1]]``."""
        sizes = (self._src.size, self._states.size)
        if self._out_cache is None or self._out_cache[0] != sizes:
            src = self._src.view()
            order, ptr = csr(self._states.size, src, np.arange(src.size))
            self._out_cache = (sizes, order, ptr)
        return self._out_cache[1], self._out_cache[2]

    def edges_length(self) -> int:
        return self._src.size

    def edge_arrays(
        self,
    ) -> tuple[
        Int[np.ndarray, " E"],
        Int[np.ndarray, " E"],
        Float[np.ndarray, " E"],
        Float[np.ndarray, "E P"],
    ]:
        """All edges as arrays ``(src, dst, base, coefficients)``.

        ``src``, ``dst``: int64 vertex indices (0 = start), shape (E,); ``base``: constant
        weights (E,); ``coefficients``: (E, n_params), so that rate = base + coefficients @ theta.
        ``base`` and ``coefficients`` are read-only views of the graph's storage.
        """
        return (
            self._src.view().astype(np.int64),
            self._dst.view().astype(np.int64),
            self._base.view(),
            self._coef.view(),
        )

    # -- construction helpers -------------------------------------------------
    @classmethod
    def from_batched_callback(
        cls,
        fn: BatchedCallback,
        initial: Any,
        *,
        discrete: bool = False,
        n_params: int | None = None,
        max_states: int = DEFAULT_MAX_STATES,
        batch_size: int = DEFAULT_BATCH_SIZE,
        progress: bool | None = None,
        **kwargs: Any,
    ) -> Graph:
        """Build a graph breadth-first, one batch of states per callback call.

        The state space is explored frontier by frontier: the states first reached in
        one round are expanded together in the next, in batches of at most `batch_size`.
        New states are numbered in order of first appearance (parents in vertex order,
        each parent's transitions in the order returned), so the vertex order is the
        breadth-first order of [`phasejax.Graph.from_callback`][].

        **Arguments:**

        - `fn`: ``fn(states, **kwargs)`` with ``states`` an int64 array of shape
          ``(B, state_length)``; returns the transitions of the whole batch as
          ``(parent, children, rates)`` or ``(parent, children, base, coefficients)``:

            - `parent`: int array ``(K,)``, the row of ``states`` each transition leaves;
            - `children`: int array ``(K, state_length)``, the state it enters (floats are
              accepted only when integral);
            - `rates`: ``(K,)`` constant rates, or ``(K, n_params)`` coefficients of a
              parameterized rate ``coefficients · theta``;
            - `base`, `coefficients`: ``(K,)`` and ``(K, n_params)``, the rate
              ``base + coefficients · theta``.

          A state with no transitions is absorbing.
        - `initial`: one starting state (entered with probability 1), or a list of
          ``(state, probability)`` pairs.
        - `discrete`, `n_params`: as for [`phasejax.Graph`][].
        - `max_states`: raise once more states than this are created (runaway protection).
        - `batch_size`: the most parent states per call of `fn`.
        - `progress`: show a progress bar (tqdm) — ``None``: only once the build has run
          for 2 s; ``False``: never; ``True``: at once.
        """
        starts, probabilities = _initial_states(initial)
        graph = cls(len(starts[0]), discrete=discrete, n_params=n_params)
        rows = graph._as_states(starts)
        first, frontier = graph._find_or_create(rows, max_states)
        graph._append_edges(np.zeros(len(first), np.int64), first, probabilities, None)
        bar = _progress_bar(progress)
        try:
            while frontier.size:
                grown = []
                for lo in range(0, frontier.size, batch_size):
                    parents = frontier[lo : lo + batch_size]
                    grown.append(graph._expand(fn, parents, max_states, kwargs))
                    bar.update(grown[-1].size)
                frontier = np.concatenate(grown)
        finally:
            bar.close()
        for buffer in (graph._states, graph._src, graph._dst, graph._base, graph._coef):
            buffer.trim()
        return graph

    def _expand(
        self, fn: BatchedCallback, parents: np.ndarray, max_states: int, kwargs
    ) -> np.ndarray:
        """Call ``fn`` on the states of ``parents``, add its transitions; the new vertices."""
        states = self._states.view()[parents]
        out = fn(states, **kwargs)
        if not isinstance(out, tuple) or len(out) not in (3, 4):
            raise ValueError(
                "a batched callback must return (parent, children, rates) or "
                f"(parent, children, base, coefficients), got {type(out).__name__}"
                f"{'' if not isinstance(out, tuple) else f' of length {len(out)}'}"
            )
        parent = np.asarray(out[0])
        k = parent.shape[0] if parent.ndim == 1 else -1
        if (
            k < 0
            or parent.dtype.kind not in "iu"
            or np.any((parent < 0) | (parent >= len(parents)))
        ):
            raise ValueError(
                f"parent must be a 1-d integer array of rows in [0, {len(parents)}) of the batch"
            )
        if len(out) == 3:
            rates = _real_array(out[2], "rates")
            base, coef = (rates, None) if rates.ndim == 1 else (np.zeros(k), rates)
        else:
            base, coef = _real_array(out[2], "base"), _real_array(out[3], "coefficients")
        if base.shape != (k,) or (coef is not None and (coef.ndim != 2 or coef.shape[0] != k)):
            raise ValueError(
                f"a batched callback returned {k} parents but rates/base of shape {base.shape}"
                f"{'' if coef is None else f' and coefficients of shape {coef.shape}'}"
            )
        children = (
            self._as_states(out[1], lambda i: states[parent[i]])
            if k
            else np.empty((0, states.shape[1]), np.int64)
        )
        if children.shape[0] != k:
            raise ValueError(
                f"a batched callback returned {k} parents but {len(children)} children"
            )
        dst, new = self._find_or_create(children, max_states)
        self._append_edges(parents[parent], dst, base, coef)
        return new

    @classmethod
    def from_callback(
        cls,
        callback: Callable[..., Iterable[tuple]],
        initial: Any,
        *,
        discrete: bool = False,
        n_params: int | None = None,
        max_states: int = DEFAULT_MAX_STATES,
        progress: bool | None = None,
        **kwargs: Any,
    ) -> Graph:
        """Build a graph breadth-first from a per-state transition callback.

        **Arguments:**

        - `callback`: ``callback(state, **kwargs)`` returns an iterable of transitions
          ``(next_state, rate)`` where ``rate`` is a number (a constant edge) or a
          sequence of coefficients (a parameterized edge ``coefficients · theta``), or
          ``(next_state, base, coefficients)``. A state with no transitions is absorbing.
        - `initial`: one starting state (entered with probability 1), or a list of
          ``(state, probability)`` pairs.
        - `discrete`, `n_params`: as for [`phasejax.Graph`][].
        - `max_states`, `progress`: as for [`phasejax.Graph.from_batched_callback`][],
          which this runs on (one Python call per state; for large state spaces write
          the batched form).
        """

        def batched(states: np.ndarray):
            parent, children, base, coef = [], [], [], []
            for b, state in enumerate(states):
                transitions = callback(state, **kwargs)
                if transitions is None:
                    raise ValueError(
                        f"the callback returned None for state {_describe(state)}: return an "
                        "iterable of transitions (empty for an absorbing state)"
                    )
                for t in transitions:
                    if len(t) == 3:
                        nxt, rate, c = t
                    elif np.ndim(t[1]) == 0:
                        (nxt, rate), c = t, None
                    else:
                        (nxt, c), rate = t, 0.0
                    parent.append(b)
                    children.append(nxt)
                    base.append(rate)
                    coef.append(c)
            parent = np.asarray(parent, np.int64)
            rates = _numbers(base, "rate", lambda k: states[parent[k]])
            rows = [k for k, c in enumerate(coef) if c is not None]
            if not rows:
                return parent, children, rates
            dense = _numbers(
                [coef[k] for k in rows], "coefficients", lambda k: states[parent[rows[k]]]
            )
            coefficients = np.zeros((parent.size, dense.shape[1]))
            coefficients[rows] = dense
            return parent, children, rates, coefficients

        return cls.from_batched_callback(
            batched,
            initial,
            discrete=discrete,
            n_params=n_params,
            max_states=max_states,
            progress=progress,
        )

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
        probabilities ``1 - T @ 1``). ``1 - sum(alpha)`` is the defect. Every row must
        be a state that can be left: a zero row of S (or ``T[i, i] = 1``) is rejected,
        since such a state is not absorbing (absorption is the exit) and its moments
        are infinite.
        """
        alpha = _real_array(alpha, "alpha").reshape(-1)
        m = _real_array(matrix, "matrix")
        n = alpha.size
        if m.shape != (n, n):
            raise ValueError(f"matrix has shape {m.shape}, expected ({n}, {n}) to match alpha")
        if not np.all(np.isfinite(alpha)):
            i = int(np.flatnonzero(~np.isfinite(alpha))[0])
            raise ValueError(f"alpha[{i}] is {alpha[i]}: initial probabilities must be finite")
        if not np.all(np.isfinite(m)):
            i, j = np.argwhere(~np.isfinite(m))[0]
            raise ValueError(
                f"matrix entry ({i}, {j}) is {m[i, j]}: entries must be finite "
                f"({'NaN' if np.isnan(m[i, j]) else 'infinite'})"
            )
        if np.any(alpha < 0) or alpha.sum() > 1 + 1e-12:
            raise ValueError(
                f"alpha must be non-negative and sum to at most 1, got sum {alpha.sum()}"
            )
        if states is None:
            states = np.arange(1, n + 1)[:, None]
        states = np.asarray(states).reshape(n, -1)
        absorbing_state = np.full((1, states.shape[1]), -1)
        rows = np.concatenate([states, absorbing_state])
        if len(np.unique(rows, axis=0)) != n + 1:
            raise ValueError(
                f"states must be distinct and differ from the absorbing state "
                f"{_describe(absorbing_state[0])}"
            )
        offdiag = m - np.diag(np.diag(m))
        if discrete:
            exit_ = 1.0 - m.sum(axis=1)
            if np.any(m < 0) or np.any(exit_ < -1e-12):
                raise ValueError("T must be non-negative with row sums at most 1")
            stuck = np.flatnonzero(np.diag(m) == 1.0)
        else:
            exit_ = -m.sum(axis=1)
            if np.any(offdiag < 0) or np.any(exit_ < -1e-12 * np.abs(np.diag(m))):
                raise ValueError(
                    "S must have non-negative off-diagonal entries and non-positive row sums"
                )
            stuck = np.flatnonzero(np.diag(m) == 0.0)
        if stuck.size:
            i = int(stuck[0])
            raise ValueError(
                f"state {_describe(states[i])} (row {i}) can never be left "
                f"({'T[i, i] = 1' if discrete else 'its row of S is zero'}): it is not absorbing "
                "(absorption is the exit), and its moments would be infinite; give it an exit "
                "or remove it"
            )
        graph = cls(states.shape[1], discrete=discrete)
        vertex = graph._find_or_create(graph._as_states(rows))[0]
        i, j = np.nonzero(offdiag)
        exits = np.flatnonzero(exit_ > 0)
        src = np.concatenate([i, exits])
        dst = np.concatenate([j, np.full(exits.size, n)])
        weight = np.concatenate([offdiag[i, j], exit_[exits]])
        order = np.argsort(src, kind="stable")  # each row's edges together, exit last
        start = np.flatnonzero(alpha > 0)
        graph._append_edges(np.zeros(start.size, np.int64), vertex[start], alpha[start], None)
        graph._append_edges(vertex[src[order]], vertex[dst[order]], weight[order], None)
        return graph

    def as_matrices(self, theta: np.ndarray | None = None) -> Matrices:
        """The matrix form over transient states, rates at ``theta``.

        The transient states are those of compilation
        ([`phasejax.internal.compile_graph`][]): reachable from the start and with
        out-edges. A state whose out-rates are all zero at ``theta`` keeps its (zero) row.
        """
        src, dst, base, coef = self.edge_arrays()
        p = coef.shape[1]
        if p:
            if theta is None:
                raise ValueError(
                    f"this graph has {p} parameter(s): as_matrices(theta) needs theta, shape ({p},)"
                )
            theta = _real_array(theta, "theta")
            if theta.shape != (p,):
                raise ValueError(f"theta has shape {theta.shape}, expected ({p},)")
        rate = base if p == 0 else base + coef @ theta
        v = self._states.size
        transient = transient_vertices(v, src, dst)
        pos = np.full(v, -1)
        pos[transient] = np.arange(transient.size)
        n = transient.size
        alpha = np.zeros(n)
        start = (src == 0) & (pos[dst] >= 0)
        np.add.at(alpha, pos[dst[start]], rate[start])
        mat = np.zeros((n, n))
        inner = (pos[src] >= 0) & (pos[dst] >= 0)
        np.add.at(mat, (pos[src[inner]], pos[dst[inner]]), rate[inner])
        out = np.zeros(n)
        leaving = pos[src] >= 0
        np.add.at(out, pos[src[leaving]], rate[leaving])
        mat += np.diag(1.0 - out) if self.discrete else -np.diag(out)
        return Matrices(alpha, mat, self.states()[transient], transient)

    def compile(self, **kwargs: Any):
        """Compile into a [`phasejax.Model`][]: structure -> static arrays, once.

        Keyword arguments: `solver`, `rate_fn`, `initial`, `lump`; see
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


def _real_array(values: Any, what: str) -> np.ndarray:
    """``values`` as a float64 array; strings, objects and other non-numbers are rejected
    (``float("1.5")`` would silently accept a string)."""
    try:
        array = np.asarray(values)
    except ValueError as err:  # ragged
        raise ValueError(f"{what} must be numbers of one shape: {err}") from None
    if array.dtype.kind not in "iuf":
        raise ValueError(f"{what} must be real numbers, got {values!r:.200}")
    return array.astype(np.float64, copy=False)


def _numbers(values: list, what: str, parents: Callable[[int], np.ndarray]) -> np.ndarray:
    """The per-transition ``values`` as one float64 array, or an error naming the state
    whose transition gave a value that is not a (vector of) real number(s)."""
    try:
        return _real_array(values, what)
    except ValueError:
        expected = "a real number" if what == "rate" else "a vector of real numbers"
        for k, value in enumerate(values):
            if np.asarray(value).dtype.kind not in "iuf" or np.shape(value) != np.shape(values[0]):
                raise ValueError(
                    f"{what} {value!r} of a transition from state {_describe(parents(k))} is not "
                    f"{expected} (of the shape of the others)"
                ) from None
        raise


def _reached(parents: Callable[[int], np.ndarray] | None, k: int) -> str:
    return "" if parents is None else f" (a transition from state {_describe(parents(k))})"


def _initial_states(initial: Any) -> tuple[list, list[float]]:
    """``initial`` as (states, probabilities): one state, or ``(state, probability)`` pairs."""
    if isinstance(initial[0], numbers.Number):
        return [initial], [1.0]
    return [s for s, _ in initial], [p for _, p in initial]


def _progress_bar(progress: bool | None) -> tqdm:
    return tqdm(
        unit=" states",
        desc="building graph",
        delay=0.0 if progress else _PROGRESS_DELAY,
        disable=progress is False,
        leave=False,
    )


def merge_transitions(
    *groups: tuple[np.ndarray, np.ndarray, np.ndarray],
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Stack groups of batched transitions ``(parent, children, rates)`` parent by parent.

    Each group lists its transitions in parent order; the result keeps, for every
    parent, the transitions of the first group, then of the second, and so on (a stable
    sort by parent), which is the order a per-state callback producing the groups one
    after another would give.
    """
    parent = np.concatenate([g[0] for g in groups])
    order = np.argsort(parent, kind="stable")
    return (
        parent[order],
        np.concatenate([g[1] for g in groups])[order],
        np.concatenate([g[2] for g in groups])[order],
    )
