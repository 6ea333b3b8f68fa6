"""Graph -> Model: the structure compiled once into static arrays.

A :class:`Model` keeps only arrays whose *shapes* depend on the graph: edge sources
and targets over transient states, base weights and the coefficient matrix, the
initial edges, and the solver (with its level schedule). Calling ``model(theta)``
evaluates the rates as traced arrays, so one compilation serves every theta, under
``jit``, ``grad`` and ``vmap``.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, ArrayLike, Float, Int

from . import _sparse
from ._graph import Graph
from ._solve import AbstractSolver, DenseLU, Krylov, LevelSweep, level_schedule

DENSE_LIMIT = 2000


def linear_rates(
    theta: Float[Array, " p"], coefficients: Float[Array, "e p"]
) -> Float[Array, " e"]:
    """The default rate function: ``coefficients @ theta``."""
    return coefficients @ theta


def _reach(n_vertices: int, frm: np.ndarray, to: np.ndarray, seeds: np.ndarray) -> np.ndarray:
    """Vertices reachable from ``seeds`` along edges ``frm -> to`` (vectorised BFS)."""
    order = np.argsort(frm, kind="stable")
    targets, ptr = to[order], np.searchsorted(frm[order], np.arange(n_vertices + 1))
    seen = np.zeros(n_vertices, dtype=bool)
    seen[seeds] = True
    frontier = np.unique(seeds)
    while frontier.size:
        lengths = ptr[frontier + 1] - ptr[frontier]
        starts = np.repeat(ptr[frontier] - np.cumsum(lengths) + lengths, lengths)
        nxt = np.unique(targets[starts + np.arange(lengths.sum())])
        frontier = nxt[~seen[nxt]]
        seen[frontier] = True
    return seen


def _out_edge_table(n: int, src: np.ndarray) -> np.ndarray:
    """(n, max out-degree) table of each state's out-edges, padded with ``len(src)``."""
    order = np.argsort(src, kind="stable")
    degree = np.bincount(src, minlength=n)
    table = np.full((n, max(int(degree.max(initial=0)), 1)), src.size, dtype=np.int32)
    slot = np.arange(src.size) - np.repeat(np.cumsum(degree) - degree, degree)
    table[src[order], slot] = order
    return table


class Structure(eqx.Module):
    """The static part of a phase-type distribution: transient states and their edges.

    ``src``/``dst`` index transient states ``0..n-1`` (``dst == n``: absorption);
    ``out_edges[i]`` lists the edges leaving state ``i`` (padded with ``E``);
    ``transient_vertices[i]`` is the graph vertex of state ``i``; ``solver`` solves
    with ``M = diag(d) - A``. Shared by every theta (and by reward transforms).
    """

    src: Int[Array, " e"]
    dst: Int[Array, " e"]
    out_edges: Int[Array, "n d"]
    transient_vertices: Int[Array, " n"]
    solver: AbstractSolver
    n_vertices: int = eqx.field(static=True)
    discrete: bool = eqx.field(static=True)

    @property
    def n_transient(self) -> int:
        return self.transient_vertices.shape[0]

    def to_vertices(
        self, x: Float[Array, " n ..."], start: Array | float = 0.0
    ) -> Float[Array, " V ..."]:
        """Scatter a per-transient-state array into vertex order (states sharing a vertex add up);
        row 0 (start) is ``start``."""
        out = (
            jnp.zeros((self.n_vertices,) + x.shape[1:], x.dtype).at[self.transient_vertices].add(x)
        )
        return out.at[0].set(start)

    def from_vertices(self, rewards: ArrayLike, dtype) -> Float[Array, " n ..."]:
        """Per-vertex rewards (axis 0 over vertices) restricted to transient states."""
        rewards = jnp.asarray(rewards, dtype)
        if rewards.shape[0] != self.n_vertices:
            raise ValueError(
                f"rewards have {rewards.shape[0]} entries along axis 0, expected one per vertex "
                f"({self.n_vertices}, the starting vertex included)"
            )
        rewards = eqx.error_if(
            rewards,
            jnp.any(jnp.isnan(rewards) | (rewards < 0)),
            "rewards must be non-negative and not NaN",
        )
        return rewards[self.transient_vertices]


def at_trace_time(fn):
    """Run ``fn`` (a host-side builder of static arrays) eagerly even while tracing, so
    the structure it builds is concrete data (e.g. a reward plan made inside ``jit``)."""

    @functools.wraps(fn)
    def eager(*args, **kwargs):
        with jax.ensure_compile_time_eval():
            return fn(*args, **kwargs)

    return eager


@at_trace_time
def make_structure(
    n_vertices: int,
    transient: np.ndarray,
    src: np.ndarray,
    dst: np.ndarray,
    discrete: bool,
    solver: str | AbstractSolver = "auto",
) -> Structure:
    """Build a :class:`Structure` from numpy edge arrays over transient states, choosing the solver.

    ``solver``: ``"auto"`` (level sweep if acyclic, dense LU up to 2,000 transient
    states, Krylov above), ``"sweep"``, ``"dense"``, ``"krylov"``, or an instance.
    The arrays are concrete even when this runs while tracing (e.g. a reward
    transformation built inside ``jit``): structure is data known at trace time.
    """
    n = transient.size
    if isinstance(solver, str):
        blocks = level_schedule(n, src, dst) if solver in ("auto", "sweep") else None
        if solver == "sweep" and blocks is None:
            raise ValueError("solver='sweep' needs an acyclic graph, but this graph has cycles")
        if blocks is not None:
            solver = LevelSweep(jnp.asarray(blocks))
        elif solver == "dense" or (solver == "auto" and n <= DENSE_LIMIT):
            solver = DenseLU()
        elif solver in ("krylov", "auto"):
            solver = Krylov()
        else:
            raise ValueError(f"unknown solver {solver!r}: use 'auto', 'sweep', 'dense' or 'krylov'")
    return Structure(
        src=jnp.asarray(src, jnp.int32),
        dst=jnp.asarray(dst, jnp.int32),
        out_edges=jnp.asarray(_out_edge_table(n, src)),
        transient_vertices=jnp.asarray(transient, jnp.int32),
        solver=solver,
        n_vertices=n_vertices,
        discrete=discrete,
    )


class Model(eqx.Module):
    """A compiled phase-type model: static structure, parameters supplied per call.

    ``model(theta)`` returns a :class:`PhaseType` (continuous) or
    :class:`DiscretePhaseType` whose rates are ``base + rate_fn(theta, coefficients)``.
    Its quantities follow the dtype of ``theta``.

    Vertex convention (as ``graph.states()``): index 0 is the starting vertex; rewards
    and per-vertex results have one entry per vertex. Only *transient* vertices
    (reachable, with out-edges) carry state; absorbing and unreachable vertices read 0.
    """

    structure: Structure
    edge_index: Int[Array, " e"]
    init_dst: Int[Array, " e0"]
    init_index: Int[Array, " e0"]
    base: Float[Array, " E"]
    coefficients: Float[Array, "E p"]
    initial: Float[Array, " n"] | None
    rate_fn: Callable = eqx.field(static=True)

    @property
    def n_transient(self) -> int:
        return self.structure.n_transient

    @property
    def n_params(self) -> int:
        return self.coefficients.shape[1]

    @property
    def n_vertices(self) -> int:
        return self.structure.n_vertices

    @property
    def discrete(self) -> bool:
        return self.structure.discrete

    @property
    def solver(self) -> AbstractSolver:
        return self.structure.solver

    @property
    def transient_vertices(self) -> Int[Array, " n"]:
        return self.structure.transient_vertices

    def _raw_rates(self, theta: ArrayLike | None) -> Float[Array, " E"]:
        """``base + rate_fn(theta, coefficients)``, unchecked."""
        dtype = jnp.result_type(float) if theta is None else jnp.result_type(theta, float)
        theta = jnp.zeros((0,), dtype) if theta is None else jnp.asarray(theta, dtype)
        if theta.shape != (self.n_params,):
            raise ValueError(
                f"theta has shape {theta.shape}, but this model has {self.n_params} parameters "
                f"(expected shape ({self.n_params},); use jax.vmap for a batch)"
            )
        return jnp.asarray(self.base, dtype) + self.rate_fn(
            theta, jnp.asarray(self.coefficients, dtype)
        )

    def rates(self, theta: ArrayLike | None = None) -> Float[Array, " E"]:
        """All edge rates (graph edge order) at ``theta``, checked non-negative and finite."""
        rates = self._raw_rates(theta)
        return eqx.error_if(
            rates,
            jnp.any(jnp.isnan(rates) | (rates < 0)),
            "an edge rate is negative or NaN at this theta",
        )

    def _parts(self, rates):
        """Transient edge rates, total out-rates and the initial vector from all edge rates."""
        n = self.n_transient
        rate = rates[self.edge_index]
        diag = _sparse.segment_sum(rate, self.structure.src, n)
        if self.initial is None:
            alpha = _sparse.segment_sum(rates[self.init_index], self.init_dst, n)
        else:
            alpha = jnp.asarray(self.initial, rates.dtype)
        return rate, diag, alpha

    def _build(self, rate, diag, alpha):
        from ._distribution import DiscretePhaseType, PhaseType

        return (DiscretePhaseType if self.discrete else PhaseType)(
            self.structure, rate, diag, alpha
        )

    def __call__(self, theta: ArrayLike | None = None, *, require_exit: bool = True):
        """The distribution at ``theta``.

        ``require_exit=False`` allows states whose out-rates are all zero at this theta
        (only meaningful for a finite epoch of an :class:`EpochPhaseType`, where the
        chain may simply stay; solves and moments need every state to be left).
        """
        rate, diag, alpha = self._parts(self.rates(theta))
        if require_exit:
            diag = eqx.error_if(
                diag,
                jnp.any(diag <= 0),
                "a transient state can never be left: its out-rates are all zero at this theta",
            )
        alpha = eqx.error_if(
            alpha, jnp.sum(alpha) > 1 + 1e-12, "initial probabilities sum to more than 1"
        )
        if self.discrete:
            diag = eqx.error_if(
                diag, jnp.any(diag > 1 + 1e-12), "out-probabilities of a state sum to more than 1"
            )
        return self._build(rate, diag, alpha)

    def guarded(self, theta: ArrayLike) -> tuple:
        """``(distribution, admissible)`` without raising for a bad ``theta``.

        ``admissible`` is False where ``model(theta)`` would raise (a rate negative,
        NaN or infinite, a state that can never be left, initial or discrete
        probabilities over 1); the distribution is then built on stand-in rates that
        are always valid (rate 1 per edge; discrete: ``1 / (out-degree + 1)``; initial
        mass spread evenly), so evaluating it cannot fail or hang and the caller masks
        the result (e.g. a log density of ``-inf`` for an MCMC proposal far out).
        """
        rates = self._raw_rates(theta)
        rate, diag, alpha = self._parts(rates)
        ok = (
            jnp.all(jnp.isfinite(rates) & (rates >= 0))
            & jnp.all(diag > 0)
            & (jnp.sum(alpha) <= 1 + 1e-12)
        )
        if self.discrete:
            ok = ok & jnp.all(diag <= 1 + 1e-12)
        stand_in = jnp.ones_like(rates)
        if self.discrete:
            src = self.structure.src
            out_degree = _sparse.segment_sum(jnp.ones_like(rate), src, self.n_transient)
            stand_in = stand_in.at[self.edge_index].set(1.0 / (out_degree[src] + 1.0))
        stand_in = stand_in.at[self.init_index].set(1.0 / max(self.init_index.shape[0], 1))
        return self._build(*self._parts(jnp.where(ok, rates, stand_in))), ok


def compile_graph(
    graph: Graph,
    *,
    solver: str | AbstractSolver = "auto",
    rate_fn: Callable | None = None,
    initial: ArrayLike | None = None,
) -> Model:
    """Compile a :class:`Graph` into a :class:`Model`.

    **Arguments:**

    - `solver`: see :func:`make_structure`.
    - `rate_fn`: ``rate_fn(theta, coefficients) -> (E,)`` added to the base weights;
      any differentiable JAX function (default ``coefficients @ theta``).
    - `initial`: an explicit initial distribution, one probability per vertex, in place
      of the starting vertex's edges.

    Raises ``ValueError`` when the graph has no absorbing state, when a reachable state
    cannot reach absorption, or when constant discrete probabilities exceed 1.
    """
    src, dst, base, coef = graph.edge_arrays()
    v = graph.vertices_length()
    has_out = np.zeros(v, dtype=bool)
    has_out[src] = True
    if not np.any(~has_out[1:]):
        raise ValueError("the graph has no absorbing state (every state has out-edges)")
    from_start = src == 0
    if initial is None and not np.any(from_start):
        raise ValueError("the starting vertex has no edges and no `initial` distribution was given")
    seeds = dst[from_start] if initial is None else np.flatnonzero(np.asarray(initial) > 0)
    reachable = _reach(v, src, dst, seeds)
    absorbing = ~has_out
    absorbing[0] = False
    reaches_absorption = _reach(v, dst, src, np.flatnonzero(absorbing))
    trapped = np.flatnonzero(reachable & ~reaches_absorption)
    if trapped.size:
        examples = ", ".join(str(graph._states[i]) for i in trapped[:5])
        raise ValueError(
            f"{trapped.size} reachable state(s) can never reach an absorbing state, e.g. {examples}"
        )
    start_sum = base[from_start].sum()
    if initial is None and start_sum > 1 + 1e-12 and not np.any(coef[from_start]):
        raise ValueError(
            f"initial probabilities (the starting vertex's edges) sum to {start_sum:.6g} > 1"
        )
    if graph.discrete:
        out = np.bincount(src, weights=base, minlength=v)
        bad = np.flatnonzero(out > 1 + 1e-12)
        if bad.size:
            raise ValueError(
                f"out-probabilities of state {graph._states[bad[0]]} sum to {out[bad[0]]:.6g} > 1"
            )
    transient = np.flatnonzero(reachable & has_out)
    transient = transient[transient > 0]
    n = transient.size
    position = np.full(v, n, dtype=np.int64)
    position[transient] = np.arange(n)
    inner = np.flatnonzero((src > 0) & reachable[src])
    t_src, t_dst = position[src[inner]], position[dst[inner]]
    init = np.flatnonzero(from_start)
    if initial is not None:
        initial = np.asarray(initial, dtype=np.float64)
        if initial.shape != (v,) or np.any(initial < 0) or initial.sum() > 1 + 1e-12:
            raise ValueError(
                f"`initial` must be {v} non-negative probabilities summing to at most 1"
            )
        initial = initial[transient]
    return Model(
        structure=make_structure(v, transient, t_src, t_dst, graph.discrete, solver),
        edge_index=jnp.asarray(inner, jnp.int32),
        init_dst=jnp.asarray(position[dst[init]], jnp.int32),
        init_index=jnp.asarray(init, jnp.int32),
        base=base,
        coefficients=coef,
        initial=initial,
        rate_fn=linear_rates if rate_fn is None else rate_fn,
    )
