"""Linear solves with ``M = diag(d) - A`` (``-S`` or ``I - T``) and its transpose.

Every quantity of the library reduces to ``M x = b`` (expected accumulated reward from
each state) or ``M^T z = b`` (expected time spent in each state). Three solvers share
one interface and are chosen at compile time from the static structure:

- :class:`LevelSweep` (acyclic graphs): states are ordered by *height* (the longest
  path to absorption), so ``x_i = (b_i + sum_j a_ij x_j) / d_i`` can be evaluated
  height by height. Edges are grouped by the height of their source into blocks of a
  static width; one ``lax.scan`` step handles one block. Exact, O(edges) work.
- :class:`DenseLU`: the dense matrix factorised by lineax's LU (small cyclic graphs).
- :class:`GMRES`: restarted GMRES (lineax) on the Jacobi-preconditioned sparse operator
  ``I - D^{-1} A`` (large cyclic graphs); never forms a matrix.

Gradients never go through the solver's iterations: :func:`solve` wraps every solver
in ``jax.lax.custom_linear_solve``, which differentiates implicitly
(``dx = M^{-1}(db - dM x)``), the transpose solve serving reverse mode.
"""

from __future__ import annotations

import abc
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import lineax as lx
import numpy as np
from jaxtyping import Array, Float, Int

from . import _sparse, _topology


class System(eqx.Module):
    """The traced operator ``M = diag(diag) - A`` over ``n`` transient states.

    ``src``/``dst`` are the static edge list (``dst == n`` means absorption),
    ``rate`` the edge rates and ``diag`` the total out-rate of each state.
    """

    src: Int[Array, " e"]
    dst: Int[Array, " e"]
    rate: Float[Array, " e"]
    diag: Float[Array, " n"]

    @property
    def n(self) -> int:
        return self.diag.shape[0]

    def matvec(self, x: Array) -> Array:
        return _sparse.matvec(self.src, self.dst, self.rate, self.diag, x)

    def rmatvec(self, y: Array) -> Array:
        return _sparse.rmatvec(self.src, self.dst, self.rate, self.diag, y)

    def with_diag(self, diag: Float[Array, " n"]) -> System:
        """The same edges with another diagonal (e.g. ``diag + s * r`` for a Laplace transform)."""
        return System(self.src, self.dst, self.rate, diag)


class AbstractSolver(eqx.Module):
    """Solves ``M x = b`` and ``M^T x = b``; ``b`` of shape (n,) or (n, m)."""

    @abc.abstractmethod
    def prepare(self, system: System) -> Any:
        """Work shared by every solve with one operator (e.g. a factorisation), or ``None``."""

    @abc.abstractmethod
    def raw_solve(self, system: System, state: Any, rhs: Array, transpose: bool) -> Array:
        """Solve without derivative rules (use :func:`solve`)."""


def _sweep_kernel(gather, scatter, edge, inv, rate, base, reverse):
    """``acc[s] += (base[g] + acc[g]) inv[g] rate[e]`` block by block; returns ``(base + acc) inv``.

    ``inv`` (n+1, ...), ``rate`` (E+1, ...) and ``base`` (n+1, ...) broadcast against each
    other in their trailing axes (columns of right-hand sides, or a batch of thetas).
    """

    def body(acc, block):
        g, s, e = block
        weight = inv[g] * rate[e]
        weight = weight.reshape(weight.shape + (1,) * (base.ndim - weight.ndim))
        return acc.at[s].add((base[g] + acc[g]) * weight), None

    init = jnp.zeros(
        jnp.broadcast_shapes(base.shape, inv.shape + (1,) * (base.ndim - inv.ndim)), base.dtype
    )
    acc, _ = jax.lax.scan(body, init, (gather, scatter, edge), reverse=reverse)
    return (base + acc) * inv.reshape(inv.shape + (1,) * (base.ndim - inv.ndim))


def _batchable_sweep(reverse: bool):
    """The sweep kernel with a vmap rule: a batch of thetas becomes a trailing axis, so
    each scatter updates one contiguous row (vectorises on CPU) instead of a strided column."""

    @jax.custom_batching.custom_vmap
    def sweep(gather, scatter, edge, inv, rate, base):
        return _sweep_kernel(gather, scatter, edge, inv, rate, base, reverse)

    @sweep.def_vmap
    def sweep_batched(axis_size, in_batched, gather, scatter, edge, inv, rate, base):
        if any(in_batched[:3]):
            raise NotImplementedError("the level schedule cannot be batched")
        extra = base.ndim - 1 - int(in_batched[5])  # right-hand-side columns, if any

        def trailing(x, batched):
            x = jnp.moveaxis(x, 0, -1) if batched else x[..., None]
            return x.reshape(x.shape[:1] + (1,) * extra + x.shape[-1:])

        base_t = jnp.moveaxis(base, 0, -1) if in_batched[5] else base[..., None]
        out = _sweep_kernel(
            gather,
            scatter,
            edge,
            trailing(inv, in_batched[3]),
            trailing(rate, in_batched[4]),
            base_t,
            reverse,
        )
        out = jnp.broadcast_to(out, out.shape[:-1] + (axis_size,))
        return jnp.moveaxis(out, -1, 0), True

    return sweep


_SWEEPS = {False: _batchable_sweep(False), True: _batchable_sweep(True)}


class LevelSweep(AbstractSolver):
    """Exact sweep over an acyclic graph, block by block in order of source height.

    ``blocks`` holds (3, B, W) int32: source, target and edge index of each slot;
    padding slots point at the absorbing index ``n`` and at edge ``E`` (rate 0).
    Under ``vmap`` over the rates the batch runs as trailing columns of one sweep.
    """

    blocks: Int[Array, "3 b w"]

    def prepare(self, system):
        return None

    def raw_solve(self, system, state, rhs, transpose):
        src, dst, edge = self.blocks[0], self.blocks[1], self.blocks[2]
        # M x = b: x_i = (b_i + sum_e rate_e x_dst) / d_i, sinks first;
        # M^T z = b: z_j = (b_j + sum_e rate_e z_src) / d_j, sources first.
        gather, scatter = (src, dst) if transpose else (dst, src)
        inv = _sparse.pad_zero(1.0 / system.diag)
        rate = _sparse.pad_zero(system.rate)
        out = _SWEEPS[transpose](gather, scatter, edge, inv, rate, _sparse.pad_zero(rhs))
        return out[: system.n]


def _columnwise(fn, rhs: Array) -> Array:
    """Apply a vector solve to each column of a (n, m) right-hand side."""
    return fn(rhs) if rhs.ndim == 1 else jax.vmap(fn, in_axes=1, out_axes=1)(rhs)


class DenseLU(AbstractSolver):
    """Dense LU factorisation (lineax), computed once per operator."""

    def prepare(self, system):
        matrix = _sparse.dense_matrix(system.src, system.dst, system.rate, system.diag)
        return lx.LU().init(lx.MatrixLinearOperator(matrix), {})

    def raw_solve(self, system, state, rhs, transpose):
        if transpose:
            state, _ = lx.LU().transpose(state, {})
        return _columnwise(lambda b: lx.LU().compute(state, b, {})[0], rhs)


class GMRES(AbstractSolver):
    """Restarted GMRES on the Jacobi-preconditioned operator, matrix-free.

    (GMRES rather than BiCGStab: on acyclic graphs the operator ``D^{-1} A`` is
    nilpotent and BiCGStab breaks down; GMRES converges in at most height steps.)

    ``M x = b`` is solved as ``(I - D^{-1} A) x = D^{-1} b``; ``M^T y = b`` as
    ``(I - A^T D^{-1}) u = b`` with ``y = D^{-1} u``. The residual is controlled
    relative to ``max |b|`` (``rtol``); a solve that does not get there within
    ``max_steps`` raises an error.
    """

    rtol: float = 1e-12
    max_steps: int = 20_000
    restart: int = 50

    def prepare(self, system):
        return None

    def raw_solve(self, system, state, rhs, transpose):
        src, dst, rate, diag = system.src, system.dst, system.rate, system.diag
        if transpose:

            def operator(u):
                return u - _sparse.offdiag_rmatvec(src, dst, rate, u / diag)
        else:

            def operator(x):
                return x - _sparse.offdiag_matvec(src, dst, rate, x) / diag

        structure = jax.ShapeDtypeStruct((system.n,), rhs.dtype)
        op = lx.FunctionLinearOperator(operator, structure)
        # lineax's test is elementwise (|r_i| <= atol + rtol |b_i|): scale b to unit
        # max-norm and use atol = rtol, a normwise relative tolerance.
        method = lx.GMRES(
            rtol=self.rtol, atol=self.rtol, max_steps=self.max_steps, restart=self.restart
        )

        def one(b):
            b = b if transpose else b / diag
            scale = jnp.max(jnp.abs(b))
            safe = jnp.where(scale > 0, scale, 1.0)
            u = lx.linear_solve(op, b / safe, method, throw=True).value * safe
            return u / diag if transpose else u

        return _columnwise(one, rhs)


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
    n: int, src: np.ndarray, dst: np.ndarray, step_cost: int = 1024
) -> np.ndarray | None:
    """Block schedule of an acyclic graph for :class:`LevelSweep`, or ``None`` if cyclic.

    Heights come from :func:`phasejax._topology.heights`. Edges
    are sorted by source height and cut into blocks of width ``W`` chosen to minimise
    ``sum_h ceil(E_h / W) * (W + step_cost)`` (padding against per-step overhead).
    """
    height = _topology.heights(n, src, dst)
    if height is None:
        return None
    h = int(height.max(initial=-1)) + 1
    edge_height = height[src]
    order = np.argsort(edge_height, kind="stable")
    counts = np.bincount(edge_height, minlength=h)
    counts = counts[counts > 0]
    widths = sorted({int(min(2**k, counts.max())) for k in range(int(np.log2(counts.max())) + 2)})
    width = min(widths, key=lambda w: int(np.sum(-(-counts // w))) * (w + step_cost))
    n_blocks_per_level = -(-counts // width)
    slots = np.full((3, int(n_blocks_per_level.sum()) * width), 0, dtype=np.int64)
    slots[0], slots[1], slots[2] = n, n, src.size
    level_start = np.concatenate([[0], np.cumsum(counts)])
    block_start = np.concatenate([[0], np.cumsum(n_blocks_per_level)]) * width
    for level, count in enumerate(counts):
        edges = order[level_start[level] : level_start[level] + count]
        where = slice(block_start[level], block_start[level] + count)
        slots[0, where], slots[1, where], slots[2, where] = src[edges], dst[edges], edges
    return slots.reshape(3, -1, width).astype(np.int32)
