"""Graph -> Model: the structure compiled once into static arrays.

A [`Model`][phasejax.Model] keeps only arrays whose *shapes* depend on the graph: edge sources
and targets over transient states, base weights and the coefficient matrix, the
initial edges, and the solver (with its level schedule). Calling ``model(theta)``
evaluates the rates as traced arrays, so one compilation serves every theta, under
``jit``, ``grad`` and ``vmap``.

This is the top of the core: it imports the graph, the structure and the
distributions; nothing below imports it.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, ArrayLike, Bool, Float, Int

from . import _sparse
from ._distribution import DiscretePhaseType, PhaseType
from ._graph import Graph
from ._lumping import Lumping
from ._solve import AbstractSolver, LevelSweep, LinearRates
from ._structure import Structure, is_traced, make_structure
from ._topology import group_sums, reachable, transient_vertices

_TOL = 1e-12

# The admissibility checks of ``model(theta)``, in the order of ``_problems``.
_PROBLEMS = (
    "an edge rate is NaN",
    "an edge rate is infinite",
    "an edge rate is negative",
    "a transient state can never be left: its out-rates are all zero",
    "initial probabilities sum to more than 1",
    "out-probabilities of a state sum to more than 1",
    "a closed class of states: they are left, but never towards absorption (moments infinite)",
)
_JIT_HINT = (
    " (under jit the edge cannot be named: call model(theta) eagerly to name it, or use "
    "model.guarded(theta), the batch-safe path)"
)


def _raise_for_batch(problems: np.ndarray, dtype) -> np.ndarray:
    """Host side of `_report_batch`: raise naming the problem and, under ``vmap``, the
    first bad batch element (the flags arrive with the batch axes in front)."""
    problems = np.asarray(problems)
    bad = problems.any(axis=-1)
    if bad.any():
        first = tuple(int(i) for i in np.argwhere(bad)[0])
        message = _PROBLEMS[int(np.argmax(problems[first]))] + " at this theta"
        if first:
            where = first[0] if len(first) == 1 else first
            message += f" (batch element {where}; {int(bad.sum())} of {bad.size} are bad)"
        raise ValueError(message + _JIT_HINT)
    return np.zeros(problems.shape[:-1], dtype)


def _report_batch(problems: Bool[Array, "*batch k"], dtype) -> Float[Array, "*batch"]:
    """Zero, or an error (under ``jit``) naming the problem and the bad batch element.

    A host callback that sees the whole batch at once (``vmap_method="expand_dims"``), so
    the error can say which element failed; the caller adds ``0 *`` its result to the
    output so the callback is kept. It runs only when a flag is set (under ``vmap`` the
    condition becomes a select and it sees the batch), so a good ``theta`` costs no host
    round trip. ``stop_gradient``: the flags carry no derivative.
    """
    problems = jax.lax.stop_gradient(problems)
    shape = jax.ShapeDtypeStruct(problems.shape[:-1], dtype)
    host = functools.partial(_raise_for_batch, dtype=np.dtype(dtype))
    return jax.lax.cond(
        jnp.any(problems),
        lambda p: jax.pure_callback(host, shape, p, vmap_method="expand_dims"),
        lambda p: jnp.zeros(shape.shape, dtype),
        problems,
    )


class _HostArray:
    """A numpy array kept out of tracing (a static field), read only eagerly (for error
    messages). Equal by shape and dtype, so models of one size still share compilations
    and no per-call transfer carries it."""

    __slots__ = ("array",)

    def __init__(self, array: np.ndarray):
        self.array = array

    def __eq__(self, other) -> bool:
        return isinstance(other, _HostArray) and (
            (self.array.shape, self.array.dtype) == (other.array.shape, other.array.dtype)
        )

    def __hash__(self) -> int:
        return hash((self.array.shape, str(self.array.dtype)))


def linear_rates(
    theta: Float[Array, " p"], coefficients: Float[Array, "e p"]
) -> Float[Array, " e"]:
    """The default rate function: ``coefficients @ theta``."""
    return coefficients @ theta


class LinearPlan(eqx.Module):
    """Host-built constants of the default rate function ``base + coefficients @ theta``:
    the per-state sums of the transient edges' base weights and coefficients (total
    out-rates, as `LinearRates.totals`), and the distinct rows of ``(base, coefficients)``
    over every edge, on which the rate checks run (equal rows give bitwise equal rates;
    ``-0.0`` is kept apart from ``0.0``). ``constant_alpha``: the starting vertex's edges
    do not depend on ``theta`` (the initial vector is built from ``base`` alone, so it
    carries no derivative: `phasejax._tangents` then gives a likelihood's gradient)."""

    state_base: Float[np.ndarray, " n"]
    state_coefficients: Float[np.ndarray, "n p"]
    distinct_base: Float[np.ndarray, " U"]
    distinct_coefficients: Float[np.ndarray, "U p"]
    constant_alpha: bool = eqx.field(static=True)

    @classmethod
    def build(cls, base, coef, inner, src, n, init) -> LinearPlan:
        """``inner``: the transient edges; ``src``: their source states (``0..n-1``);
        ``init``: the starting vertex's edges."""
        weights = np.column_stack([base, coef])
        totals = group_sums(src, weights[inner], n)
        rows = np.unique(weights.view(np.int64), axis=0).view(np.float64)
        constant = not np.any(coef[init])
        return cls(totals[:, 0], totals[:, 1:], rows[:, 0], rows[:, 1:], constant)


def _out_degree(structure: Structure, dtype) -> Float[Array, " n"]:
    """Each transient state's number of out-edges (absorption included)."""
    src = structure.src
    return _sparse.segment_sum(jnp.ones_like(src, dtype), src, structure.n_transient)


def _stand_in_where(ok, constants, out_degree) -> tuple[Array, Array, Array, Array]:
    """The rate constants ``(base, coefficients, state_base, state_coefficients)`` of
    ``constants`` (a `LinearRates` or a `Lumping`) where ``ok``, else the stand-in's:
    every edge at rate 1 (base 1, coefficients 0; each state's total its out-degree)."""
    dtype = out_degree.dtype
    return (
        jnp.where(ok, jnp.asarray(constants.base, dtype), 1.0),
        jnp.where(ok, jnp.asarray(constants.coefficients, dtype), 0.0),
        jnp.where(ok, jnp.asarray(constants.state_base, dtype), out_degree),
        jnp.where(ok, jnp.asarray(constants.state_coefficients, dtype), 0.0),
    )


class Model(eqx.Module):
    """A compiled phase-type model: static structure, parameters supplied per call.

    ``model(theta)`` returns a [`PhaseType`][phasejax.PhaseType] (continuous) or
    [`DiscretePhaseType`][phasejax.DiscretePhaseType] whose rates are ``base + rate_fn(theta, coefficients)``.
    Its quantities follow the dtype of ``theta``.

    Vertex convention (as ``graph.states()``): index 0 is the starting vertex; rewards
    and per-vertex results have one entry per vertex. Only *transient* vertices
    (reachable, with out-edges) carry state; absorbing and unreachable vertices read 0.
    """

    structure: Structure
    edge_index: Int[Array, " e"]
    init_dst: Int[Array, " e0"]
    init_index: Int[Array, " e0"]
    base: Float[np.ndarray, " E"]
    coefficients: Float[np.ndarray, "E p"]
    initial: Float[np.ndarray, " n"] | None
    rate_fn: Callable = eqx.field(static=True)
    # (start, stop) when edge_index is that contiguous range (the usual case: the start's
    # edges come first), so the transient rates are a slice, not a gather
    edge_range: tuple[int, int] | None = eqx.field(static=True)
    # graph vertices of each edge (E, 2), for error messages only
    edge_vertices: _HostArray = eqx.field(static=True)
    # constants of the default (linear) rate function, None for any other
    linear_plan: LinearPlan | None = None
    # the exact lumping of a continuous model with linear rates, None where nothing lumps
    lumping: Lumping | None = None

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

    def rates(self, theta: ArrayLike | None = None) -> Float[Array, " E"]:
        """All edge rates (graph edge order) at ``theta``: ``base + rate_fn(theta,
        coefficients)``, unchecked."""
        dtype = jnp.result_type(float) if theta is None else jnp.result_type(theta, float)
        theta = jnp.zeros((0,), dtype) if theta is None else jnp.asarray(theta, dtype)
        if theta.shape != (self.n_params,):
            raise ValueError(
                f"theta has shape {theta.shape}, but this model has {self.n_params} parameters "
                f"(expected shape ({self.n_params},); use jax.vmap for a batch)"
            )
        coefficients = jnp.asarray(self.coefficients, dtype)
        return jnp.asarray(self.base, dtype) + self.rate_fn(theta, coefficients)

    def _parts(self, rates: Float[Array, " E"]):
        """Transient edge rates, total out-rates and the initial vector from all edge rates."""
        rate = self._transient_rates(rates)
        diag = _sparse.segment_sum(rate, self.structure.src, self.n_transient)
        return rate, diag, self._alpha(rates)

    def _alpha(self, rates: Float[Array, " E"]) -> Float[Array, " n"]:
        """The initial vector (the starting vertex's edges, or ``initial``)."""
        if self.initial is None:
            return _sparse.segment_sum(rates[self.init_index], self.init_dst, self.n_transient)
        return jnp.asarray(self.initial, rates.dtype)

    def _linear(self, plan: LinearPlan, theta: Float[Array, " p"]) -> LinearRates:
        """The transient edges' rates as `LinearRates`, so that a batch of thetas need not
        hold an (edges x batch) array of rates."""
        dtype = theta.dtype
        return LinearRates(
            self._transient_rates(jnp.asarray(self.base, dtype)),
            self._transient_rates(jnp.asarray(self.coefficients, dtype)),
            jnp.asarray(plan.state_base, dtype),
            jnp.asarray(plan.state_coefficients, dtype),
            theta,
            jnp.ones((), dtype),
        )

    def _transient_rates(self, rates: Float[Array, " E"]) -> Float[Array, " e"]:
        """The rates of the transient edges (``rates[edge_index]``)."""
        if self.edge_range is None:
            return rates[self.edge_index]
        return rates[self.edge_range[0] : self.edge_range[1]]

    def _reaches_absorption(self, rate: Float[Array, " e"]) -> Bool[Array, " n"]:
        """Which states reach absorption along edges of positive rate at this theta.

        A fixed point of ``ok_i = any(rate_e > 0 and ok[dst_e])`` over the edges from
        ``i`` (absorption counts as ok), reached in at most ``n`` sweeps (the longest
        path); each sweep is one segment-max over the edges.
        """
        src, dst, n = self.structure.src, self.structure.dst, self.n_transient
        live = rate > 0

        def sweep(ok):
            ok_dst = jnp.concatenate([ok, jnp.ones((1,), bool)])[dst]
            hit = (live & ok_dst).astype(jnp.int32)
            return ok | (jnp.zeros(n, jnp.int32).at[src].max(hit) > 0)

        def body(carry):
            ok, _ = carry
            new = sweep(ok)
            return new, jnp.any(new != ok)

        ok, _ = jax.lax.while_loop(lambda c: c[1], body, (sweep(jnp.zeros(n, bool)), True))
        return ok

    def _problems(self, rates, checked, diag, alpha, require_exit: bool) -> Bool[Array, " 7"]:
        """One flag per entry of ``_PROBLEMS``: the single definition of admissibility
        (``checked``: the rates, or as many values holding every distinct one).

        A closed class can only form where the graph has cycles (an acyclic chain whose
        states are all left reaches absorption), so the fixed point runs only then.
        """
        false = jnp.zeros((), bool)
        cyclic = not isinstance(self.structure.solver, LevelSweep)
        if require_exit and cyclic:
            closed = ~jnp.all(self._reaches_absorption(self._transient_rates(rates)))
        else:
            closed = false
        return jnp.stack(
            [
                jnp.any(jnp.isnan(checked)),
                jnp.any(jnp.isinf(checked)),
                jnp.any(checked < 0),
                jnp.any(diag <= 0) if require_exit else false,
                jnp.sum(alpha) > 1 + _TOL,
                jnp.any(diag > 1 + _TOL) if self.discrete else false,
                closed,
            ]
        )

    @eqx.filter_jit
    def _evaluate(self, theta, require_exit: bool):
        """Rates, their parts and the problem flags in one compiled call (no host
        callbacks, so the executable is cacheable)."""
        rates = self.rates(theta)
        plan = self.linear_plan
        if plan is None:
            rate, diag, alpha = self._parts(rates)
            checked = rates
        else:  # the rates are formed where needed (a reduction, a sweep's blocks)
            rate = self._linear(plan, jnp.asarray(theta, rates.dtype))
            constant = jnp.asarray(self.base, rates.dtype) if plan.constant_alpha else rates
            diag, alpha = rate.totals(), self._alpha(constant)
            # equal rows of (base, coefficients) give bitwise equal rates
            checked = plan.distinct_base + plan.distinct_coefficients @ rate.theta
        return rates, rate, diag, alpha, self._problems(rates, checked, diag, alpha, require_exit)

    def _name_problem(self, kind: int, theta, rates: np.ndarray, diag: np.ndarray) -> str:
        """The message of problem ``kind`` naming the first offending edge or state."""
        message = _PROBLEMS[kind]
        theta = np.zeros(0) if theta is None else np.ravel(np.asarray(theta))
        if kind <= 2:
            bad = [np.isnan(rates), np.isinf(rates), rates < 0][kind]
            cause = ""
            if kind <= 1 and not np.all(np.isfinite(theta)):
                # name an edge that the non-finite parameter feeds, not one it poisons
                # through 0 * inf
                j = int(np.flatnonzero(~np.isfinite(theta))[0])
                fed = ~np.isfinite(rates) & (np.asarray(self.coefficients)[:, j] != 0)
                bad = fed if np.any(fed) else bad
                cause = f" because theta[{j}] = {theta[j]}"
            if not np.any(bad):  # flagged on the distinct rows, by a rounding apart
                return message + cause + " at this theta"
            e = int(np.flatnonzero(bad)[0])
            kind = 0 if np.isnan(rates[e]) else 1 if np.isinf(rates[e]) else kind
            message = _PROBLEMS[kind] + cause
            src, dst = self.edge_vertices.array[e]
            message += f": edge {e} (vertex {src} -> vertex {dst}) has rate {rates[e]}"
        elif kind == 6:
            reach = self._reaches_absorption(self._transient_rates(jnp.asarray(rates)))
            stuck = np.flatnonzero(~np.asarray(reach))
            vertices = np.asarray(self.structure.transient_vertices)[stuck[:5]]
            message += f": vertices {vertices.tolist()}" + (" ..." if stuck.size > 5 else "")
        elif kind in (3, 5):
            i = int(np.flatnonzero(diag <= 0 if kind == 3 else diag > 1 + _TOL)[0])
            vertex = int(self.structure.transient_vertices[i])
            message += f": vertex {vertex} (total out-rate {diag[i]})"
        return message + " at this theta"

    def __call__(
        self, theta: ArrayLike | None = None, *, require_exit: bool = True
    ) -> PhaseType | DiscretePhaseType:
        """The distribution at ``theta``.

        Raises ``ValueError`` for an inadmissible ``theta`` (a rate NaN, infinite or
        negative, a state that can never be left, initial or discrete probabilities
        over 1), naming the edge or state when ``theta`` is concrete; under ``jit`` the
        same checks raise through ``eqx.error_if``. ``require_exit=False`` allows
        states whose out-rates are all zero (only meaningful for a finite epoch of an
        [`EpochPhaseType`][phasejax.EpochPhaseType], where the chain may simply stay; solves and moments
        need every state to be left).
        """
        rates, rate, diag, alpha, problems = self._evaluate(theta, require_exit)
        if is_traced(problems):
            bad = jnp.any(problems)
            kind = jnp.argmax(problems)
            messages = tuple(p + " at this theta" + _JIT_HINT for p in _PROBLEMS)
            diag = diag + jnp.zeros_like(diag) * _report_batch(problems, diag.dtype)
            # the backstop where the value above is unused (reverse mode drops it)
            diag = eqx.branched_error_if(diag, bad, kind, messages)
        elif np.any(problems):
            kind = int(np.argmax(np.asarray(problems)))
            # (values: under an eager grad or jacfwd theta and the rates carry tangents)
            theta, rates, diag = jax.lax.stop_gradient((theta, rates, diag))
            raise ValueError(self._name_problem(kind, theta, np.asarray(rates), np.asarray(diag)))
        return self._build(rate, diag, alpha)

    def _build(self, rate, diag, alpha) -> PhaseType | DiscretePhaseType:
        """The distribution; ``rate`` is the transient rates or their `LinearRates`."""
        kind = DiscretePhaseType if self.discrete else PhaseType
        if isinstance(rate, LinearRates):
            return kind(self.structure, None, diag, alpha, rate, self.lumping)
        return kind(self.structure, rate, diag, alpha)

    def guarded(self, theta: ArrayLike) -> tuple[PhaseType | DiscretePhaseType, Bool[Array, ""]]:
        """``(distribution, admissible)`` without raising for a bad ``theta``: the
        batch-safe path (e.g. under ``vmap`` over many thetas, or for MCMC proposals).

        ``admissible`` is False where ``model(theta)`` would raise; the distribution is
        then built on stand-in rates that are always valid (rate 1 per edge; discrete:
        ``1 / (out-degree + 1)``; initial mass spread evenly), so evaluating it cannot
        fail or hang and the caller masks the result (e.g. a log density of ``-inf``).
        """
        rates, rate, _, alpha, problems = self._evaluate(theta, True)
        ok = ~jnp.any(problems)
        stand_in = jnp.ones_like(rates)
        src = self.structure.src
        out_degree = _out_degree(self.structure, rates.dtype)
        if self.discrete:
            stand_in = stand_in.at[self.edge_index].set(1.0 / (out_degree[src] + 1.0))
        stand_in = stand_in.at[self.init_index].set(1.0 / max(self.init_index.shape[0], 1))
        if self.discrete or not isinstance(rate, LinearRates):
            return self._build(*self._parts(jnp.where(ok, rates, stand_in))), ok
        # rates kept as data (and the lumping with them): each constant is chosen between
        # the model's and the stand-in's (base 1, coefficients 0), so a bad theta adds no
        # gradient and the lumped chain stays evaluable
        # (theta too: a stand-in coefficient 0 times a NaN theta would be NaN)
        theta = jnp.where(ok, rate.theta, 0.0)
        linear = LinearRates(*_stand_in_where(ok, rate, out_degree), theta, rate.scale)
        alpha = jnp.where(ok, alpha, self._alpha(stand_in))
        lumping = self.lumping
        if lumping is not None:
            lumping = eqx.tree_at(
                lambda x: (x.base, x.coefficients, x.state_base, x.state_coefficients),
                lumping,
                _stand_in_where(ok, lumping, _out_degree(lumping.structure, rates.dtype)),
            )
        return PhaseType(self.structure, None, linear.totals(), alpha, linear, lumping), ok


def compile_graph(
    graph: Graph,
    *,
    solver: str | AbstractSolver = "auto",
    rate_fn: Callable | None = None,
    initial: ArrayLike | None = None,
    lump: bool = True,
) -> Model:
    """Compile a [`phasejax.Graph`][] into a [`phasejax.Model`][] (``graph.compile(...)``).

    **Arguments:**

    - `solver`: ``"auto"`` (level sweep if acyclic; else dense LU up to 500 transient
      states; else the block sweep over strongly connected components when none has more
      than 2,000 states; else GMRES), ``"sweep"``, ``"blocks"``, ``"dense"``, ``"gmres"``,
      or an instance of [`phasejax.AbstractSolver`][].
    - `rate_fn`: ``rate_fn(theta, coefficients) -> (E,)`` added to the base weights;
      any differentiable JAX function (default ``coefficients @ theta``).
    - `initial`: an explicit initial distribution, one probability per vertex, in place
      of the starting vertex's edges.
    - `lump`: find the coarsest exact lumping of a continuous model with the default
      rate function (states with equal total rates, as functions of ``theta``, into
      every other class; `phasejax._lumping`), on which densities, ``cdf``, ``sf`` and
      likelihoods of the absorption time are then computed: the same values, at the
      cost of the smaller chain (Kingman n=40: 37,337 states lump to 39). ``False``
      keeps the full chain.

    Raises ``ValueError`` when the graph has no absorbing state, when a reachable state
    cannot reach absorption, or when constant discrete probabilities exceed 1.
    """
    src, dst, base, coef = graph.edge_arrays()
    v = graph.vertices_length()
    states = graph.states()
    has_out = np.zeros(v, dtype=bool)
    has_out[src] = True
    if not np.any(~has_out[1:]):
        raise ValueError("the graph has no absorbing state (every state has out-edges)")
    from_start = src == 0
    if initial is not None:
        initial = np.asarray(initial, dtype=np.float64)
        if (
            initial.shape != (v,)
            or not np.all(np.isfinite(initial))
            or np.any(initial < 0)
            or initial.sum() > 1 + _TOL
        ):
            raise ValueError(
                f"`initial` must be {v} finite non-negative probabilities summing to at most 1"
            )
    elif not np.any(from_start):
        raise ValueError("the starting vertex has no edges and no `initial` distribution was given")
    seeds = dst[from_start] if initial is None else np.flatnonzero(initial > 0)
    is_reachable = reachable(v, src, dst, seeds)
    transient = transient_vertices(v, src, dst, reach=is_reachable)
    if transient.size == 0:
        raise ValueError(
            "the graph has no transient state: the process is absorbed at once "
            "(no state reachable from the start has out-edges)"
        )
    absorbing = ~has_out
    absorbing[0] = False
    reaches_absorption = reachable(v, dst, src, np.flatnonzero(absorbing))
    trapped = np.flatnonzero(is_reachable & ~reaches_absorption)
    if trapped.size:
        examples = ", ".join(str(tuple(states[i].tolist())) for i in trapped[:5])
        raise ValueError(
            f"{trapped.size} reachable state(s) can never reach an absorbing state, e.g. {examples}"
        )
    start_sum = base[from_start].sum()
    if initial is None and start_sum > 1 + _TOL and not np.any(coef[from_start]):
        raise ValueError(
            f"initial probabilities (the starting vertex's edges) sum to {start_sum:.6g} > 1"
        )
    if graph.discrete:
        out = np.bincount(src, weights=base, minlength=v)
        bad = np.flatnonzero(out > 1 + _TOL)
        if bad.size:
            raise ValueError(
                f"out-probabilities of state {tuple(states[bad[0]].tolist())} sum to {out[bad[0]]:.6g} > 1"
            )
    # Renumber transient vertices 0..n-1; every other vertex (absorbing, the start) maps
    # to n, so all absorbing targets share one index and the solvers' padded row n
    # (rate 0) absorbs them without per-edge branching.
    n = transient.size
    position = np.full(v, n, dtype=np.int64)
    position[transient] = np.arange(n)
    # Edges out of reachable states are the chain; the start's edges only build alpha.
    inner = np.flatnonzero((src > 0) & is_reachable[src])
    init = np.flatnonzero(from_start)
    structure = make_structure(
        v, transient, position[src[inner]], position[dst[inner]], graph.discrete, solver
    )
    linear = rate_fn is None and coef.shape[1] > 0
    return Model(
        structure=structure,
        edge_index=jnp.asarray(inner, jnp.int32),
        edge_range=(int(inner[0]), int(inner[-1]) + 1)
        if inner.size and np.array_equal(inner, np.arange(inner[0], inner[-1] + 1))
        else None,
        init_dst=jnp.asarray(position[dst[init]], jnp.int32),
        init_index=jnp.asarray(init, jnp.int32),
        base=base,
        coefficients=coef,
        initial=None if initial is None else initial[transient],
        edge_vertices=_HostArray(np.stack([src, dst], axis=1)),
        rate_fn=linear_rates if rate_fn is None else rate_fn,
        linear_plan=LinearPlan.build(base, coef, inner, position[src[inner]], n, init)
        if linear
        else None,
        lumping=Lumping.build(structure, base[inner], coef[inner])
        if linear and lump and not graph.discrete
        else None,
    )
