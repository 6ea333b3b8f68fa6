"""Sparse kernels over the compiled edge list.

The transient part of a phase-type model is stored as an edge list over the ``n``
transient states: ``src[e]`` is the source state of edge ``e`` and ``dst[e]`` its
target, where the extra index ``n`` stands for "absorbed". With edge rates ``rate``
and diagonal ``diag`` (the total out-rate of each state, edges to absorption
included), the operator

    M = diag(diag) - A,      A[i, j] = sum of rate[e] over edges e: i -> j (j < n)

is ``-S`` for a continuous model (S the sub-intensity matrix) and ``I - T`` for a
discrete one (T the sub-transition matrix). Every kernel here is a gather plus a
segment sum: O(edges) work, static shapes, vmap-able over the rates.
"""

from __future__ import annotations

import jax.numpy as jnp
from jaxtyping import Array, Float, Int


def pad_zero(x: Float[Array, "n ..."]) -> Float[Array, "n+1 ..."]:
    """Append one zero row: index ``n`` (absorption) then reads as 0."""
    return jnp.concatenate([x, jnp.zeros((1,) + x.shape[1:], x.dtype)], axis=0)


def _bcast(w: Float[Array, "e ..."], x: Array) -> Array:
    """Reshape per-edge values (``(e,)``, or ``(e, m)`` for ``m`` members side by side on
    the minor axis) so they broadcast against ``x`` of shape ``(e, ...)``."""
    return w.reshape(w.shape + (1,) * (x.ndim - w.ndim))


def segment_sum(values: Array, segment_ids: Int[Array, " e"], n: int) -> Array:
    """Sum ``values`` (shape (e, ...)) into ``n`` segments by ``segment_ids``.

    Ids equal to or above ``n`` are dropped.
    """
    out = jnp.zeros((n + 1,) + values.shape[1:], values.dtype)
    return out.at[jnp.minimum(segment_ids, n)].add(values)[:n]


def absorption_sums(values: Array, src: Int[Array, " e"], dst: Int[Array, " e"], n: int) -> Array:
    """Per-state sums of ``values`` (shape (e, ...)) over the edges into absorption
    (``dst == n``): the exit rates, for ``values`` the rates."""
    into = _bcast(dst == n, values)
    return segment_sum(jnp.where(into, values, 0.0), src, n)


def offdiag_matvec(
    src: Int[Array, " e"], dst: Int[Array, " e"], rate: Float[Array, " e"], x: Array
) -> Array:
    """``A @ x``: sum over edges i -> j of rate * x[j] into row i (x of shape (n, ...))."""
    n = x.shape[0]
    gathered = pad_zero(x)[dst]
    return segment_sum(_bcast(rate, gathered) * gathered, src, n)


def offdiag_rmatvec(
    src: Int[Array, " e"], dst: Int[Array, " e"], rate: Float[Array, " e"], y: Array
) -> Array:
    """``A.T @ y``: sum over edges i -> j (j < n) of rate * y[i] into row j."""
    n = y.shape[0]
    gathered = y[src]
    return segment_sum(_bcast(rate, gathered) * gathered, dst, n)


def matvec(src, dst, rate, diag, x):
    """``M @ x`` with ``M = diag(diag) - A``."""
    return _bcast(diag, x) * x - offdiag_matvec(src, dst, rate, x)


def rmatvec(src, dst, rate, diag, y):
    """``M.T @ y`` with ``M = diag(diag) - A``."""
    return _bcast(diag, y) * y - offdiag_rmatvec(src, dst, rate, y)


def dense_matrix(src, dst, rate, diag) -> Float[Array, "n n"]:
    """The dense ``M = diag(diag) - A`` (for small models and tests)."""
    n = diag.shape[0]
    m = jnp.zeros((n + 1, n + 1), rate.dtype).at[src, dst].add(-rate)[:n, :n]
    return m + jnp.diag(diag)
