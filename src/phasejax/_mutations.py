"""Mutation counts on reward-weighted branches: one class ([`mutation_counts`][phasejax.mutation_counts], a
discrete phase-type distribution) or the joint law of several classes
([`joint_mutation_pmf`][phasejax.joint_mutation_pmf], e.g. small SFS configurations).

A continuous phase-type chain with transient jump rates ``A`` (``i -> j``), exit rates
``s``, total out-rates ``lambda`` (so ``M = diag(lambda) - A = -S``) and initial vector
``alpha`` carries ``C`` reward vectors ``r_c``. While the chain sits in state ``i``,
mutations of class ``c`` arrive as a Poisson process of rate ``mu_c r_c(i)``;
``K_c`` counts them until absorption. (For the SFS rewards of a coalescent, ``K_c``
is the number of segregating sites carried by ``c`` samples, given a mutation rate
``mu`` per unit branch length.)

**Embedded chain on events.** With ``R_i = sum_c mu_c r_c(i)``, the next event in
state ``i`` is a jump (``Q_ij = A_ij / (lambda_i + R_i)``), a mutation of class ``c``
(``(M_c)_ii = mu_c r_c(i) / (lambda_i + R_i)``) or absorption
(``e_i = s_i / (lambda_i + R_i)``). The expected number of event epochs spent in
state ``i`` having accumulated the count vector ``k`` obeys

    w(k) = [delta_{k=0} alpha + sum_c w(k - e_c) M_c] (I - Q)^{-1},
    P(K = k) = w(k) . e  (+ the defect 1 - sum(alpha) when k = 0).

**In the library's operators.** ``I - Q = D^{-1} N`` with ``D = diag(lambda + R)``
and ``N = M + diag(R)`` (the operator with its diagonal shifted, as for a Laplace
transform), so ``v(k) = w(k) D^{-1}`` (the expected *time* spent in ``i`` with
counts ``k``) solves one transposed system per count vector,

    N^T v(k) = delta_{k=0} alpha + sum_c mu_c r_c * v(k - e_c),
    P(K = k) = v(k) . s.

Zero rewards need no special treatment (``R_i = 0`` leaves row ``i`` of ``N`` as in
``M``); ``N`` keeps the sparsity and the solver of the model (level sweep, LU or
GMRES), and its diagonal dominance only improves. The count grid
``[0..K_1] x ... x [0..K_C]`` is processed level by level in ``|k| = sum_c k_c``: every
``k - e_c`` lies one level below ``k``, so one ``lax.scan`` step does one batched
transposed solve (all configurations of a level as columns) and carries only that
level. Work: ``sum_c K_c`` solves with at most ``max level size`` columns each.
Gradients (in the rates, the rewards and the mutation rates) come from the implicit
differentiation of the solves.
"""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, ArrayLike, Float, Int

from . import _linalg, _sparse
from ._distribution import DiscretePhaseType, PhaseType
from ._rewards import reward_transform
from ._solve import solve
from ._structure import is_traced, make_structure


def mutation_counts(
    dist: PhaseType, mutation_rate: ArrayLike, rewards: ArrayLike | None = None, positive=None
):
    """Number of mutations ``K`` falling on the branches counted by ``rewards``.

    Mutations arrive at rate ``mutation_rate`` per unit of accumulated reward
    ``Y = int r(X_t) dt`` (e.g. total branch length subtending ``i`` samples for the
    SFS reward ``i``), so ``K | Y ~ Poisson(mutation_rate * Y)``. With
    ``Y ~ PH(alpha, S)`` (zero rewards folded away first),
    ``T = (I - S / mutation_rate)^{-1}`` and ``t = 1 - T 1`` give
    ``P(K = k) = alpha T^k t`` (Hobolth, Siri-Jegousse & Bladt 2019): ``K`` is returned
    as a [`DiscretePhaseType`][phasejax.DiscretePhaseType] with initial vector ``alpha T`` and defect
    ``P(K = 0)``. ``T`` is dense: ``O(n^2)`` edges for ``n`` positive-reward states.
    Differentiable in the rates, the rewards and ``mutation_rate``.
    """
    if rewards is not None or positive is not None:
        ones = np.ones(dist.structure.n_vertices)
        transformed = reward_transform(dist, ones if rewards is None else rewards, positive)
        assert isinstance(transformed, PhaseType)
        dist = transformed
    structure = dist.structure
    n = structure.n_transient
    rows, cols = np.nonzero(~np.eye(n, dtype=bool))
    src = np.concatenate([rows, np.arange(n)])
    dst = np.concatenate([cols, np.full(n, n)])
    counts = make_structure(
        structure.n_vertices, np.asarray(structure.transient_vertices), src, dst, True, "auto"
    )
    mu = jnp.asarray(mutation_rate, dist.rate.dtype)
    mu = eqx.error_if(mu, (mu <= 0) | jnp.isnan(mu), "mutation_rate must be positive")
    m = _sparse.dense_matrix(structure.src, structure.dst, dist.rate, dist.diag)  # -S
    t_matrix = _linalg.inv(jnp.eye(n, dtype=m.dtype) + m / mu)
    exit_prob = 1.0 - t_matrix.sum(axis=1)
    rate = jnp.concatenate([t_matrix[rows, cols], exit_prob])
    diag = 1.0 - jnp.diag(t_matrix)
    return DiscretePhaseType(counts, rate, diag, dist.alpha @ t_matrix)


def _concrete(x) -> np.ndarray | None:
    """``x`` as a numpy array, or ``None`` when it is traced."""
    if is_traced(x):
        return None
    return np.asarray(x)


def _count_grid(bounds: tuple[int, ...]):
    """Static level schedule of the grid ``prod_c [0..bounds_c]``.

    Returns ``strides`` (C,), ``level`` and ``position`` of every grid point (flat
    row-major index -> its level ``|k|`` and its slot within that level), and
    ``pred`` of shape (L, B, C): for slot ``b`` of level ``l + 1`` the slot of
    ``k - e_c`` in level ``l``, or ``B`` (a zero row) when ``k_c = 0`` or the slot is
    padding. ``L = sum(bounds)``, ``B`` the largest level size.
    """
    shape = tuple(b + 1 for b in bounds)
    points = np.indices(shape).reshape(len(shape), -1).T  # (G, C), row-major order
    level = points.sum(axis=1)
    n_levels = int(sum(bounds)) + 1
    sizes = np.bincount(level, minlength=n_levels)
    width = int(sizes.max())
    order = np.argsort(level, kind="stable")
    position = np.empty(level.size, dtype=np.int64)
    position[order] = np.arange(level.size) - np.repeat(np.cumsum(sizes) - sizes, sizes)
    strides = np.array([int(np.prod(shape[c + 1 :])) for c in range(len(shape))], dtype=np.int64)
    pred = np.full((n_levels, width, len(shape)), width, dtype=np.int64)
    for c, stride in enumerate(strides):
        has = points[:, c] > 0
        pred[level[has], position[has], c] = position[np.flatnonzero(has) - stride]
    return strides, level, position, pred[1:]


def _check_counts(counts, n_classes: int, max_counts):
    """Validate the count vectors; return them (integer) and the static grid bounds."""
    values = _concrete(counts)
    if values is not None:
        if values.ndim == 0 or values.shape[-1] != n_classes:
            raise ValueError(
                f"counts must have shape (..., {n_classes}) (one count per reward class), got {values.shape}"
            )
        if (
            values.dtype == bool
            or not np.issubdtype(values.dtype, np.number)
            or np.iscomplexobj(values)
        ):
            raise ValueError("counts must be non-negative integers")
        if np.any(np.isnan(values)) or np.any(values < 0) or np.any(values != np.round(values)):
            raise ValueError("counts must be non-negative integers")
        values = values.astype(np.int64)
        observed = values.reshape(-1, n_classes).max(axis=0, initial=0)
        if max_counts is None:
            return jnp.asarray(values), tuple(int(b) for b in observed)
    if max_counts is None:
        raise ValueError(
            "traced counts need `max_counts=` (static per-class bounds of the count grid)"
        )
    bounds = np.asarray(max_counts)
    if bounds.shape != (n_classes,) or np.any(bounds < 0) or np.any(bounds != np.round(bounds)):
        raise ValueError(
            f"max_counts must be {n_classes} non-negative integers, got {max_counts!r}"
        )
    bounds = tuple(int(b) for b in bounds)
    if values is not None:
        if np.any(values > np.array(bounds)):
            raise ValueError(f"counts exceed max_counts={bounds}")
        return jnp.asarray(values), bounds
    counts = jnp.asarray(counts)
    if counts.ndim == 0 or counts.shape[-1] != n_classes:
        raise ValueError(
            f"counts must have shape (..., {n_classes}) (one count per reward class), got {counts.shape}"
        )
    if not jnp.issubdtype(counts.dtype, jnp.integer):
        counts = eqx.error_if(
            counts, jnp.any(counts != jnp.round(counts)), "counts must be non-negative integers"
        )
    counts = eqx.error_if(counts, jnp.any(counts < 0), "counts must be non-negative integers")
    counts = eqx.error_if(counts, jnp.any(counts > jnp.asarray(bounds)), "counts exceed max_counts")
    return counts.astype(jnp.int32), bounds


def _check_rewards(dist: PhaseType, rewards) -> Float[Array, "n c"]:
    """Per-class rewards (C, V) -> per-transient-state (n, C); bad values rejected."""
    shape = jnp.shape(rewards)
    if len(shape) != 2 or shape[1] != dist.structure.n_vertices:
        raise ValueError(
            f"rewards must have shape (C, {dist.structure.n_vertices}) (one row per class, one entry per "
            f"vertex, the starting vertex included), got {shape}"
        )
    if shape[0] < 1:
        raise ValueError("rewards need at least one class (row)")
    return dist._rewards(rewards)  # checked there (concrete: named; traced: eqx.error_if)


def joint_mutation_pmf(
    dist: PhaseType,
    mutation_rate: ArrayLike,
    rewards: ArrayLike,
    counts: ArrayLike,
    *,
    max_counts: tuple[int, ...] | None = None,
) -> Float[Array, ...]:
    """Joint probabilities ``P(K_1 = k_1, ..., K_C = k_C)`` of mutation counts on ``C``
    reward classes of branches (e.g. the SFS classes of [`phasejax.models.sfs_rewards`][phasejax.models.sfs_rewards]).

    Given the path of the chain, mutations of class ``c`` fall as a Poisson process of
    rate ``mutation_rate * r_c(X_t)``, so ``K_c | Y_c ~ Poisson(mutation_rate * Y_c)``
    with ``Y_c = int r_c(X_t) dt``, the classes conditionally independent;
    [`phasejax.mutation_counts`][phasejax.mutation_counts] is the marginal of one class. The counts are
    computed exactly by the recursion over the count grid described in
    `phasejax._mutations` (one batched transposed solve with ``M + diag(R)`` per
    level ``|k|``), with no dense inverse.

    **Arguments:**

    - `dist`: a continuous [`PhaseType`][phasejax.PhaseType] (a defect counts as ``K = 0``).
    - `mutation_rate`: positive scalar, or one rate per class (shape ``(C,)``).
    - `rewards`: shape ``(C, V)``, non-negative, one row per class, one entry per vertex
      (zero rewards allowed: no mutation falls there). May be traced.
    - `counts`: integer count vectors, shape ``(..., C)``.
    - `max_counts`: static per-class bounds of the count grid; needed when ``counts``
      are traced (e.g. under ``jit`` with counts as an argument), else read from
      ``counts``. Work and memory grow with ``prod_c (max_counts_c + 1)``.

    **Returns:** the probabilities, shape ``counts.shape[:-1]``. Differentiable in the
    rates (theta), the rewards and ``mutation_rate``.
    """
    if dist.structure.discrete:
        raise ValueError(
            "joint_mutation_pmf needs a continuous PhaseType (mutations fall per unit of time)"
        )
    r = _check_rewards(dist, rewards)  # (n, C)
    n_classes = r.shape[1]
    counts, bounds = _check_counts(counts, n_classes, max_counts)
    dtype = dist.diag.dtype
    mu = jnp.asarray(mutation_rate, dtype)
    if mu.shape not in ((), (n_classes,)):
        raise ValueError(
            f"mutation_rate must be a scalar or one rate per class ({n_classes},), got shape {mu.shape}"
        )
    mu = eqx.error_if(mu, jnp.any((mu <= 0) | jnp.isnan(mu)), "mutation_rate must be positive")
    mu_r: Float[Array, "c n"] = (r * mu).T  # mutation rate of each class in each state

    strides, level, position, pred = _count_grid(bounds)
    width = pred.shape[1]
    system = dist.system.with_diag(dist.diag + mu_r.sum(axis=0))
    solver = dist.structure.solver
    state = solver.prepare(system)
    exit_rate = dist.exit

    def solve_t(rhs):
        return solve(solver, system, state, rhs, transpose=True)

    v0 = solve_t(dist.alpha)  # expected time in each state with no mutation yet
    first = jnp.zeros(width, dtype).at[0].set(v0 @ exit_rate + dist.defect())

    def step(previous: Float[Array, "b n"], pred_level: Int[Array, "b c"]):
        padded = jnp.concatenate([previous, jnp.zeros((1,) + previous.shape[1:], dtype)])
        rhs = jnp.einsum(
            "bcn,cn->nb", padded[pred_level], mu_r
        )  # (n, B): one column per configuration
        v = solve_t(rhs).T
        return v, v @ exit_rate

    init = jnp.zeros((width, v0.shape[0]), dtype).at[0].set(v0)
    _, rest = jax.lax.scan(step, init, jnp.asarray(pred, jnp.int32))
    probs = jnp.concatenate([first[None], rest])  # (levels, B)
    flat = jnp.sum(counts * jnp.asarray(strides, counts.dtype), axis=-1)
    return probs[jnp.asarray(level)[flat], jnp.asarray(position)[flat]]
