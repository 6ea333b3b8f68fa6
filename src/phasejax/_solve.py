"""Linear solves with ``M = diag(d) - A`` (``-S`` or ``I - T``) and its transpose.

Every quantity of the library reduces to ``M x = b`` (expected accumulated reward from
each state) or ``M^T z = b`` (expected time spent in each state). Four solvers share
one interface and are chosen at compile time from the static structure:

- [`LevelSweep`][phasejax.LevelSweep] (acyclic graphs): states are ordered by *height* (the longest
  path to absorption), so ``x_i = (b_i + sum_j a_ij x_j) / d_i`` can be evaluated
  height by height. Edges are grouped by the height of their source into blocks of a
  static width; one ``lax.scan`` step handles one block. Exact, O(edges) work.
- [`BlockSweep`][phasejax.BlockSweep] (cyclic graphs whose strongly connected components are small):
  the same sweep over the condensation, each component's block inverted densely
  (GTH-style, batched by size). Exact, also for near-reducible cycles.
- [`DenseLU`][phasejax.DenseLU]: the dense matrix LU-factorised (small cyclic graphs).
- [`GMRES`][phasejax.GMRES]: restarted GMRES (lineax) on the Jacobi-preconditioned sparse operator
  ``I - D^{-1} A`` (graphs with a component too large to invert); never forms a matrix.

Under ``vmap`` both sweeps carry the batch as a trailing axis (`_trailing_batch`).

Gradients never go through the solver's iterations: `solve` wraps every solver
in ``jax.lax.custom_linear_solve``, which differentiates implicitly
(``dx = M^{-1}(db - dM x)``), the transpose solve serving reverse mode.
"""

from __future__ import annotations

import abc
import functools
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import lineax as lx
import numpy as np
from jaxtyping import Array, Float, Int

from . import _linalg, _sparse, _topology


class LinearRates(eqx.Module):
    """Edge rates given as data: ``rate_e = scale (base_e + coefficients_e . theta)``.

    Built by ``model(theta)`` for the default linear rate function. The level sweep forms
    each block's rates inside its loop from these (a few constants per slot and the
    small ``theta``), so a batch of thetas never materialises an (edges x batch) array:
    at Kingman n = 30 and 100 thetas that array is 39 MB, beyond what glibc keeps in its
    heap, and each call would map and page-fault it afresh. ``state_base`` and
    ``state_coefficients`` are the sums over each state's out-edges (its total out-rate).
    """

    base: Float[Array, " e"]
    coefficients: Float[Array, "e p"]
    state_base: Float[Array, " n"]
    state_coefficients: Float[Array, "n p"]
    theta: Float[Array, " p"]
    scale: Float[Array, ""]

    def rates(self) -> Float[Array, " e"]:
        return self.scale * (self.base + self.coefficients @ self.theta)

    def totals(self) -> Float[Array, " n"]:
        """Each state's total out-rate."""
        return self.scale * (self.state_base + self.state_coefficients @ self.theta)

    def scaled(self, factor: Float[Array, ""]) -> LinearRates:
        return eqx.tree_at(lambda x: x.scale, self, self.scale * factor)


class System(eqx.Module):
    """The traced operator ``M = diag(diag) - A`` over ``n`` transient states.

    ``src``/``dst`` are the static edge list (``dst == n`` means absorption),
    ``rate`` the edge rates and ``diag`` the total out-rate of each state; ``linear``
    (optional) the same rates as `LinearRates`.
    """

    src: Int[Array, " e"]
    dst: Int[Array, " e"]
    rate: Float[Array, " e"]
    diag: Float[Array, " n"]
    linear: LinearRates | None = None

    @property
    def n(self) -> int:
        return self.diag.shape[0]

    def matvec(self, x: Array) -> Array:
        return _sparse.matvec(self.src, self.dst, self.rate, self.diag, x)

    def rmatvec(self, y: Array) -> Array:
        return _sparse.rmatvec(self.src, self.dst, self.rate, self.diag, y)

    def with_diag(self, diag: Float[Array, " n"]) -> System:
        """The same edges with another diagonal (e.g. ``diag + s * r`` for a Laplace transform)."""
        return System(self.src, self.dst, self.rate, diag, self.linear)


class AbstractSolver(eqx.Module):
    """Solves ``M x = b`` and ``M^T x = b``; ``b`` of shape (n,) or (n, m)."""

    @abc.abstractmethod
    def prepare(self, system: System) -> Any:
        """Work shared by every solve with one operator (e.g. a factorisation), or ``None``."""

    @abc.abstractmethod
    def raw_solve(self, system: System, state: Any, rhs: Array, transpose: bool) -> Array:
        """Solve without derivative rules (use `solve`)."""


def _expand(w: Array, ndim: int) -> Array:
    """Trailing unit axes so that ``w`` broadcasts against an array of ``ndim`` axes."""
    return w.reshape(w.shape + (1,) * (ndim - w.ndim))


def _trailing_batch(kernel, choose=None):
    """``kernel(tables, coefs, base)`` with a vmap rule that carries the batch as a trailing axis.

    ``tables`` are integer schedules (never batched), ``coefs`` arrays whose axes are all
    structural (per state, per edge, per block), ``base`` the (n+1, *columns) right-hand
    side. Under ``vmap`` (a batch of thetas, or of right-hand sides) every batched array
    gets the batch as its last axis (coefficients with unit axes for the columns in
    between), so each gather or scatter of the kernel moves one contiguous row per state
    (vectorises on CPU) instead of a strided column. ``choose(tables, batch_size)``
    (optional) picks the schedule for a batch size (1 when unbatched), e.g. finer blocks
    for a large batch: padding costs a whole row of thetas per slot, while a step's
    overhead does not grow with the batch.
    """
    choose = (lambda tables, _: tables) if choose is None else choose

    @jax.custom_batching.custom_vmap
    def batchable(tables, coefs, base):
        return kernel(choose(tables, 1), coefs, base)

    @batchable.def_vmap
    def batched(axis_size, in_batched, tables, coefs, base):
        tables_batched, coefs_batched, base_batched = in_batched
        if any(jax.tree.leaves(tables_batched)):
            raise NotImplementedError("a solver's schedule cannot be batched")
        columns = base.ndim - 1 - int(base_batched)

        def trailing(x, is_batched):
            if not is_batched:
                return x
            x = jnp.moveaxis(x, 0, -1)
            return x.reshape(x.shape[:-1] + (1,) * columns + x.shape[-1:])

        base = jnp.moveaxis(base, 0, -1) if base_batched else base[..., None]
        out = kernel(choose(tables, axis_size), jax.tree.map(trailing, coefs, coefs_batched), base)
        out = jnp.broadcast_to(out, out.shape[:-1] + (axis_size,))
        return jnp.moveaxis(out, -1, 0), True

    return batchable


def _level_kernel(tables, coefs, base, reverse):
    """``y[s] += y[g] inv[g] rate[e]`` block by block from ``y = base``; returns ``y inv``.

    ``tables`` = (gather, scatter, edge) slots, ``coefs`` = (inv (n+1, ...), rate (E+1, ...)).
    The weight of every slot is formed once, in slot order, before the sweep, so each step
    streams its weights and makes one gather and one scatter (under ``vmap`` each moves
    one contiguous row of thetas per slot).
    """
    gather, scatter, edge = tables
    inv, rate = (_expand(c, base.ndim) for c in coefs)
    weight = inv[gather] * rate[edge]

    def body(y, block):
        g, s, w = block
        return y.at[s].add(y[g] * w), None

    y = jnp.broadcast_to(base, jnp.broadcast_shapes(base.shape, inv.shape, rate.shape[1:]))
    y, _ = jax.lax.scan(body, y, (gather, scatter, weight), reverse=reverse)
    return y * inv


BATCH_FINE = 16  # from this batch size on, the level sweep runs on its fine schedule


def _coarse_or_fine(tables, batch_size):
    """Of ``(coarse, fine)`` schedules, the fine one for batches of ``BATCH_FINE`` or more."""
    return tables[1] if batch_size >= BATCH_FINE else tables[0]


def _linear_level_kernel(tables, coefs, base, reverse):
    """`_level_kernel` with the rates as `LinearRates` parts: ``coefs`` = (inv (n+1, ...),
    base (E+1,), coefficients (E+1, p), theta (p, ...), scale (...)); each step forms its
    slots' weights ``inv[g] scale (base[e] + coefficients[e] . theta)`` (padding slots:
    edge E, all zero). Unbatched, the rates are formed once and `_level_kernel` runs."""
    inv, edge_base, edge_coefficients, theta, scale = coefs
    if theta.ndim == 1:  # one theta: its rates are one small array, weights streamed
        rate = scale * (edge_base + edge_coefficients @ theta)
        return _level_kernel(tables, (inv, rate), base, reverse)
    gather, scatter, edge = tables
    inv = _expand(inv, base.ndim)

    def body(y, block):
        g, s, e = block
        products = jnp.tensordot(edge_coefficients[e], theta, axes=1)  # (slots, ...)
        rate = _expand(edge_base[e], products.ndim) + products
        return y.at[s].add(y[g] * (inv[g] * scale * _expand(rate, base.ndim))), None

    shape = jnp.broadcast_shapes(
        base.shape, inv.shape, (1,) + theta.shape[1:], (1,) + jnp.shape(scale)
    )
    y = jnp.broadcast_to(base, shape)
    y, _ = jax.lax.scan(body, y, (gather, scatter, edge), reverse=reverse)
    return y * inv


_SWEEPS = {
    (linear, r): _trailing_batch(
        functools.partial(_linear_level_kernel if linear else _level_kernel, reverse=r),
        _coarse_or_fine,
    )
    for linear in (False, True)
    for r in (False, True)
}


class LevelSweep(AbstractSolver):
    """Exact sweep over an acyclic graph, block by block in order of source height.

    ``blocks`` holds (3, B, W) int32: source, target and edge index of each slot;
    padding slots point at the absorbing index ``n`` and at edge ``E`` (rate 0).
    ``fine`` is the same sweep cut into narrower blocks (less padding, more steps), used
    under ``vmap`` over a batch of ``BATCH_FINE`` or more, where the batch runs as
    trailing columns of one sweep.
    """

    blocks: Int[Array, "3 b w"]
    fine: Int[Array, "3 f v"]

    def prepare(self, system):
        return None

    def raw_solve(self, system, state, rhs, transpose):
        # M x = b: x_i = (b_i + sum_e rate_e x_dst) / d_i, sinks first;
        # M^T z = b: z_j = (b_j + sum_e rate_e z_src) / d_j, sources first.
        def tables(blocks):
            src, dst, edge = blocks[0], blocks[1], blocks[2]
            return ((src, dst) if transpose else (dst, src)) + (edge,)

        inv = _sparse.pad_zero(1.0 / system.diag)
        linear = system.linear
        if linear is None:
            coefs = (inv, _sparse.pad_zero(system.rate))
        else:
            edges = (_sparse.pad_zero(linear.base), _sparse.pad_zero(linear.coefficients))
            coefs = (inv, *edges, linear.theta, linear.scale)
        out = _SWEEPS[linear is not None, transpose](
            (tables(self.blocks), tables(self.fine)), coefs, _sparse.pad_zero(rhs)
        )
        return out[: system.n]


def _gth_inverse(offdiag: Float[Array, "k s s"], exits: Float[Array, "k s"]) -> Array:
    """Inverses of a batch of blocks ``M = diag(exits + offdiag 1) - offdiag``.

    ``offdiag >= 0`` (zero diagonal) holds the rates between the states of a block and
    ``exits`` each state's rate out of the block. Gauss-Jordan elimination without
    pivoting in the manner of Grassmann, Taksar and Heyman: each pivot is recomputed as
    the exit plus the remaining off-diagonal magnitudes of its row, the exits of the
    rows below being updated as ``exit_j + |m_jp| exit_p / pivot``. Every update adds
    numbers of one sign, so the pivots and the inverse (``>= 0``) are accurate to
    rounding even when an exit lies far below the rounding of the diagonal
    (near-reducible cycles), where plain LU loses every digit.
    """
    _, s, _ = offdiag.shape
    index = jnp.arange(s)

    # In place (one (k, s, s) array): after pivot p, column m holds the eliminated
    # magnitudes |M_jm| for m > p and column m of the inverse for m <= p (the columns
    # of the inverse beyond p are still unit vectors, those of the eliminated matrix up
    # to p unit vectors, so neither is stored). Diagonal entries past the pivot are
    # never read: each pivot comes from the exit and the remaining row.
    def eliminate(p, carry):
        w, exit_ = carry
        row = w[:, p, :]
        pivot = exit_[:, p] + jnp.where(index > p, row, 0.0).sum(-1)
        # the pivot row of [eliminated | inverse] (inverse entry p was 1), normalised
        row = jnp.where(index == p, 1.0, row) / pivot[:, None]
        column = jnp.where(index != p, w[:, :, p], 0.0)  # |M_jp| of every other row
        exit_ = exit_ + jnp.where(index > p, column, 0.0) * (exit_[:, p] / pivot)[:, None]
        w = w.at[:, :, p].set(0.0) + column[:, :, None] * row[:, None, :]
        return w.at[:, p, :].set(row), exit_

    return jax.lax.fori_loop(0, s, eliminate, (offdiag, exits))[0]


def _block_kernel(tables, coefs, base, transpose):
    """Sweep of [`BlockSweep`][phasejax.BlockSweep]: per step, add the cross-component terms into the rows
    of the step's blocks, then replace each block's rows by its inverse times them."""
    (gather, scatter, edge), steps, members = tables
    rate, inverses = coefs
    spec = "kji...,kj...->ki..." if transpose else "kij...,kj...->ki..."

    def body(x, step):
        (g, s, e), blocks = step
        x = x.at[s].add(x[g] * _expand(rate[e], x.ndim))
        for rows_of, inverse, k in zip(members, inverses, blocks):
            rows = rows_of[k]
            x = x.at[rows].set(jnp.einsum(spec, inverse[k], x[rows]))
        return x, None

    batch = [rate.shape[1:]] + [inverse.shape[3:] for inverse in inverses]
    x = jnp.broadcast_to(base, base.shape[:1] + jnp.broadcast_shapes(base.shape[1:], *batch))
    x, _ = jax.lax.scan(body, x, ((gather, scatter, edge), steps), reverse=transpose)
    return x


_BLOCK_SWEEPS = {
    t: _trailing_batch(functools.partial(_block_kernel, transpose=t)) for t in (False, True)
}


class BlockSweep(AbstractSolver):
    """Exact block-triangular solve over the strongly connected components (SCCs).

    Ordered by their height in the condensation, the components make ``M`` block
    triangular: for ``M x = b``, ``x_C = M_CC^{-1} (b_C + A_{C,out} x_out)`` with every
    ``x_out`` in lower components, swept sinks first (``M^T z = b``: sources first, with
    ``M_CC^{-T}``). The diagonal blocks are inverted once per operator (`prepare`),
    batched by size: blocks are padded to a few bucket widths (`_bucket_widths`),
    the padding rows being identity. Each step of the sweep handles up to ``K_b`` blocks of
    every bucket ``b`` of one level and the cross-component edges feeding them.

    Inversion uses GTH-style elimination (`_gth_inverse`) with the exit rate of each
    state computed from its edges that leave its component: exact to rounding even for
    near-reducible cycles where the diagonal cannot resolve an exit. The diagonal
    ``d`` enters only through ``d - sum of out-rates`` (an extra term, e.g. ``s r`` of a
    Laplace transform), read as zero when within the rounding of that sum.

    Build with `block_schedule`.
    """

    members: tuple[Int[Array, "k s"], ...]
    steps: tuple[Int[Array, "t k"], ...]
    internal: tuple[Int[Array, "2 i"], ...]
    down: Int[Array, "3 t w"]
    up: Int[Array, "3 t w"]
    leaving: Int[Array, " x"]
    degree: Int[Array, " n"]

    def prepare(self, system):
        system = jax.lax.stop_gradient(system)
        rate, src, n = system.rate, system.src, system.n
        extra = system.diag - _sparse.segment_sum(rate, src, n)
        rounding = 2 * jnp.finfo(rate.dtype).eps * self.degree * jnp.abs(system.diag)
        extra = jnp.where(jnp.abs(extra) <= rounding, 0.0, extra)
        exits = _sparse.segment_sum(rate[self.leaving], src[self.leaving], n) + extra
        exits = jnp.concatenate([exits, jnp.ones((1,), exits.dtype)])  # padding rows: identity
        inverses = []
        for rows, (edge, flat) in zip(self.members, self.internal):
            k, s = rows.shape
            offdiag = jnp.zeros(k * s * s, rate.dtype).at[flat].add(rate[edge])
            inverses.append(_gth_inverse(offdiag.reshape(k, s, s), exits[rows]))
        return tuple(inverses)

    def raw_solve(self, system, state, rhs, transpose):
        tables = (self.up if transpose else self.down, self.steps, self.members)
        coefs = (_sparse.pad_zero(system.rate), state)
        out = _BLOCK_SWEEPS[transpose](tables, coefs, _sparse.pad_zero(rhs))
        return out[: system.n]


class DenseLU(AbstractSolver):
    """Dense LU factorisation (LAPACK ``getrf``, one matrix per call: `_linalg`),
    computed once per operator."""

    def prepare(self, system):
        system = jax.lax.stop_gradient(system)
        return _linalg.lu_factor(
            _sparse.dense_matrix(system.src, system.dst, system.rate, system.diag)
        )

    def raw_solve(self, system, state, rhs, transpose):
        return _linalg.lu_solve(state, rhs, transpose)


class GMRES(AbstractSolver):
    """Restarted GMRES (lineax), matrix-free, with a block preconditioner ``P``.

    (GMRES rather than BiCGStab: on acyclic graphs the operator ``D^{-1} A`` is
    nilpotent and BiCGStab breaks down.)

    ``M x = b`` is solved as ``(I - P^{-1} N) x = P^{-1} b`` (``M = P - N``); ``M^T y = b`` as
    ``(I - N^T P^{-T}) u = b`` with ``y = P^{-T} u``. ``preconditioner`` (built by
    `gmres_preconditioner`) is a [`BlockSweep`][phasejax.BlockSweep] of ``M`` without the edges
    between the chunks of each large strongly connected component: the exact
    block-triangular solve across components, block Jacobi (GTH-inverted chunks) within
    the large ones, so near-reducible cycles inside a chunk cost nothing; ``coupling``
    lists the edges of ``N``. ``None``: Jacobi (``P = diag(d)``, ``N = A``). The residual is controlled relative to ``max |b|`` of the
    preconditioned system (``rtol``); a solve that does not get there within
    ``max_steps`` raises an error.
    """

    rtol: float = 1e-12
    max_steps: int = 20_000
    restart: int = 50
    preconditioner: BlockSweep | None = None
    coupling: Int[Array, " c"] | None = None

    def prepare(self, system):
        return None if self.preconditioner is None else self.preconditioner.prepare(system)

    def raw_solve(self, system, state, rhs, transpose):
        # one member of a batch (thetas, tangents) at a time and (`_solve`) one column at a
        # time: lineax's GMRES solves its small least-squares problems by LAPACK QR, which
        # must not be batched (`_linalg`); the solver's own arrays are arguments too
        arrays, static = eqx.partition(self, eqx.is_array)

        def one_solve(arrays, system, state, rhs):
            return eqx.combine(arrays, static)._solve(system, state, rhs, transpose)

        return _linalg.sequential_vmap(one_solve)(arrays, system, state, rhs)

    def _solve(self, system, state, rhs, transpose):
        def precondition(v):
            if self.preconditioner is None:
                return v / system.diag
            return self.preconditioner.raw_solve(system, state, v, transpose)

        # M = P - N with N the edges P leaves out (Jacobi: every edge); the operators
        # I - P^{-1} N and I - N^T P^{-T} never form d x - A x, whose cancellation would
        # hide the residual of a near-reducible cycle
        edges = slice(None) if self.coupling is None else self.coupling
        src, dst, rate = system.src[edges], system.dst[edges], system.rate[edges]
        if transpose:
            operator = lambda u: u - _sparse.offdiag_rmatvec(src, dst, rate, precondition(u))
        else:
            operator = lambda x: x - precondition(_sparse.offdiag_matvec(src, dst, rate, x))
        structure = jax.ShapeDtypeStruct((system.n,), rhs.dtype)
        op = lx.FunctionLinearOperator(operator, structure)
        # lineax's test is elementwise (|r_i| <= atol + rtol |b_i|): scale b to unit
        # max-norm and use atol = rtol, a normwise relative tolerance.
        method = lx.GMRES(
            rtol=self.rtol, atol=self.rtol, max_steps=self.max_steps, restart=self.restart
        )

        def one(b):
            b = b if transpose else precondition(b)
            scale = jnp.max(jnp.abs(b))
            safe = jnp.where(scale > 0, scale, 1.0)
            u = lx.linear_solve(op, b / safe, method, throw=True).value * safe
            return precondition(u) if transpose else u

        return one(rhs) if rhs.ndim == 1 else jax.lax.map(one, rhs.T).T


def solve(
    solver: AbstractSolver, system: System, state: Any, rhs: Array, transpose: bool = False
) -> Array:
    """``M^{-1} rhs`` (or ``M^{-T} rhs``) with implicit-function derivatives.

    Differentiable in ``rhs`` and in ``system.rate``/``system.diag``; reverse mode runs
    the transposed solve. ``rhs`` has shape (n,) or (n, m).
    """
    state = jax.lax.stop_gradient(state)
    forward = system.rmatvec if transpose else system.matvec

    def solve_fn(_, b):
        return solver.raw_solve(system, state, b, transpose)

    def transpose_fn(_, b):
        return solver.raw_solve(system, state, b, not transpose)

    return jax.lax.custom_linear_solve(forward, rhs, solve_fn, transpose_fn)


def level_schedule(
    n: int, src: np.ndarray, dst: np.ndarray, step_costs: tuple[int, ...] = (1024, 16)
) -> tuple[np.ndarray, ...] | None:
    """Block schedules of an acyclic graph for [`LevelSweep`][phasejax.LevelSweep] (one
    per step cost), or ``None`` if cyclic.

    Heights come from `phasejax._topology.heights`. Edges are sorted by source height
    and cut into blocks of width ``W`` chosen to minimise ``sum_h ceil(E_h / W) * (W +
    step_cost)`` (padding against per-step overhead, in slots). The default costs give
    the schedule of one right-hand side and the finer one of a large batch, whose slots
    cost a row of the batch each.
    """
    height = _topology.heights(n, src, dst)
    if height is None:
        return None
    order, level_ptr = _topology.group(height[src], int(height.max(initial=-1)) + 1)
    counts = np.diff(level_ptr)
    counts = counts[counts > 0]
    level_start = np.concatenate([[0], np.cumsum(counts)])
    widths = sorted({int(min(2**k, counts.max())) for k in range(int(np.log2(counts.max())) + 2)})

    def cut(step_cost: int) -> np.ndarray:
        width = min(widths, key=lambda w: int(np.sum(-(-counts // w))) * (w + step_cost))
        n_blocks_per_level = -(-counts // width)
        slots = np.full((3, int(n_blocks_per_level.sum()) * width), 0, dtype=np.int64)
        slots[0], slots[1], slots[2] = n, n, src.size
        block_start = np.concatenate([[0], np.cumsum(n_blocks_per_level)]) * width
        for level, count in enumerate(counts):
            edges = order[level_start[level] : level_start[level] + count]
            where = slice(block_start[level], block_start[level] + count)
            slots[0, where], slots[1, where], slots[2, where] = src[edges], dst[edges], edges
        return slots.reshape(3, -1, width).astype(np.int32)

    return tuple(cut(cost) for cost in step_costs)


def _bucket_widths(size: np.ndarray, columns: int = 64, bucket_cost: float = 1e7) -> np.ndarray:
    """Padded widths for blocks of the given sizes: the sorted distinct sizes are grouped
    into buckets (each padded to its largest) minimising ``sum_b count_b (w_b^3 + columns
    w_b^2) + bucket_cost * buckets`` (inversion, sweep, and per-bucket compile and
    dispatch), by dynamic programming over the sorted sizes. Returns each block's width.
    """
    distinct, count = np.unique(size, return_counts=True)
    work = distinct.astype(np.float64) ** 3 + columns * distinct.astype(np.float64) ** 2
    before = np.concatenate([[0], np.cumsum(count)])
    best = np.zeros(distinct.size + 1)
    cut = np.zeros(distinct.size + 1, np.int64)
    for j in range(1, distinct.size + 1):  # best[j]: sizes distinct[:j] grouped
        options = best[:j] + (before[j] - before[:j]) * work[j - 1] + bucket_cost
        cut[j] = int(np.argmin(options))
        best[j] = options[cut[j]]
    width = np.empty(distinct.size, np.int64)
    j = distinct.size
    while j > 0:
        width[cut[j] : j] = distinct[j - 1]
        j = cut[j]
    return width[np.searchsorted(distinct, size)]


def _capacities(counts: np.ndarray, cost: np.ndarray, step_cost: float) -> np.ndarray:
    """Blocks of each bucket per step, ``K``: minimises ``sum_levels steps * (step_cost +
    K . cost)`` where a level with ``c_b`` blocks of bucket ``b`` takes ``max_b ceil(c_b /
    K_b)`` steps (coordinate descent over powers of two)."""
    most = np.maximum(counts.max(0), 1)
    capacity = most.copy()

    def total(cap):
        steps = np.maximum((-(-counts // cap)).max(1), 1)
        return steps.sum() * (step_cost + cap @ cost)

    for _ in range(3):
        for b in range(cost.size):
            options = np.unique(np.minimum(2 ** np.arange(int(np.log2(most[b])) + 2), most[b]))
            trial = capacity.copy()
            scores = []
            for option in options:
                trial[b] = option
                scores.append(total(trial))
            capacity[b] = options[int(np.argmin(scores))]
    return capacity


def block_schedule(
    n: int,
    src: np.ndarray,
    dst: np.ndarray,
    step_cost: int = 8192,
    components: tuple[np.ndarray, np.ndarray] | None = None,
) -> BlockSweep:
    """The [`BlockSweep`][phasejax.BlockSweep] of a graph (``dst == n``: absorption), from its SCCs.

    Components (`phasejax._topology.strong_components`) are grouped by size into
    buckets (`_bucket_widths`); level by level (condensation heights) their blocks are cut into steps of
    ``K_b`` blocks per bucket, ``K`` chosen by `_capacities` (``step_cost``: the
    per-step overhead in units of one block entry). ``components``: the result of
    `strong_components` when the caller already has it.
    """
    label, height = components or _topology.strong_components(n, src, dst)
    size = np.bincount(label, minlength=height.size)
    widths, bucket = np.unique(_bucket_widths(size), return_inverse=True)
    local = _topology.rank(label, height.size)  # position of each state in its component
    # components ordered by (bucket, height): a component's block index within its bucket
    position = np.empty(height.size, np.int64)
    position[np.lexsort((height, bucket))] = np.arange(height.size)
    n_blocks = np.bincount(bucket, minlength=widths.size)
    block = position - (np.cumsum(n_blocks) - n_blocks)[bucket]
    counts = np.zeros((int(height.max()) + 1, widths.size), np.int64)
    np.add.at(counts, (height, bucket), 1)
    capacity = _capacities(counts, widths.astype(np.float64) ** 2, step_cost)
    per_level = np.maximum((-(-counts // capacity)).max(1), 1)
    level_start = np.cumsum(per_level) - per_level
    # rank of a component among those of its (bucket, level), hence its step and slot
    group_start = np.cumsum(counts.T.ravel()) - counts.T.ravel()
    rank = position - group_start[bucket * counts.shape[0] + height]
    step = level_start[height] + rank // capacity[bucket]
    n_steps = int(per_level.sum())

    members, steps, internal = [], [], []
    inner = dst < n
    same = inner & (label[src] == label[np.minimum(dst, n - 1)])
    own = same & (src != dst)
    for b, width in enumerate(widths):
        mine = bucket == b
        table = np.full((n_steps, capacity[b]), n_blocks[b], np.int64)
        table[step[mine], rank[mine] % capacity[b]] = block[mine]
        rows = np.full((n_blocks[b] + 1, width), n, np.int64)
        states = np.flatnonzero(mine[label])
        rows[block[label[states]], local[states]] = states
        edges = np.flatnonzero(own & mine[label[src]])
        flat = (block[label[src[edges]]] * width + local[src[edges]]) * width + local[dst[edges]]
        members.append(rows)
        steps.append(table)
        internal.append(np.stack([edges, flat]))
    across = np.flatnonzero(inner & ~same)
    edge_columns = np.stack([src[across], dst[across], across])
    fill = np.array([n, n, src.size])
    down = _topology.pack(step[label[src[across]]], n_steps, edge_columns[[1, 0, 2]], fill)
    up = _topology.pack(step[label[dst[across]]], n_steps, edge_columns, fill)

    def i32(x):
        return jnp.asarray(x, jnp.int32)

    return BlockSweep(
        members=tuple(map(i32, members)),
        steps=tuple(map(i32, steps)),
        internal=tuple(map(i32, internal)),
        down=i32(down),
        up=i32(up),
        leaving=i32(np.flatnonzero(~same)),
        degree=i32(np.bincount(src, minlength=n)),
    )


def gmres_preconditioner(
    n: int, src: np.ndarray, dst: np.ndarray, label: np.ndarray, chunk: int = 256
) -> GMRES:
    """The [`BlockSweep`][phasejax.BlockSweep] preconditioner of [`GMRES`][phasejax.GMRES].

    ``label``: the strongly connected component of each state. Each component is cut
    into chunks of at most ``chunk`` states (consecutive in state order, which follows
    the builder's exploration); edges between two chunks of one component are sent to
    absorption, so they still count in each state's exit (the chunk blocks of ``M`` keep
    their diagonal) but are left out of the sweep. What remains is block triangular.
    Returns the [`GMRES`][phasejax.GMRES] solver with that preconditioner and the cut edges.
    """
    rank = _topology.rank(label, int(label.max(initial=-1)) + 1)
    piece = label * (n // chunk + 1) + rank // chunk
    inner = dst < n
    to = np.minimum(dst, n - 1)
    cut = inner & (label[src] == label[to]) & (piece[src] != piece[to])
    preconditioner = block_schedule(n, src, np.where(cut, n, dst))
    return GMRES(
        preconditioner=preconditioner, coupling=jnp.asarray(np.flatnonzero(cut), jnp.int32)
    )
