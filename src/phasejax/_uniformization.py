"""Uniformization: transient distributions by one forward series, streamed in segments.

With ``Lambda >= max_i d_i`` the uniformized chain ``P = I - M / Lambda`` (``M = -S``)
gives ``exp(S t) = sum_k Pois(k; Lambda t) P^k``. One forward series
``v_0 = alpha``, ``v_{k+1} = v_k P`` and its projections ``c_k = v_k @ proj`` serve
every time point:

    f(t)    = sum_k Pois(k; Lambda t) (v_k . s)          (density; s = exit rates)
    P(T>t)  = sum_k Pois(k; Lambda t) (v_k . 1)          (survival)

A discrete model is the case ``Lambda = 1`` with indicator weights instead of Poisson
ones (``P = T``; ``P(tau = k) = c_{k-1}``).

**Streaming.** The series length is data: it runs until the largest right truncation
point of the observations (of each parameter vector in a batch), in segments of a
fixed number ``B`` of steps inside a ``while_loop``. Each segment's coefficients are
mixed into per-observation running log-sum-exp accumulators at once and dropped, so
memory is ``O(B n + observations x q + checkpoints x n)`` whatever ``Lambda t`` is,
and one executable serves every ``t``. Observations are sorted by their window (by
``t``, shared by every parameter vector) and cut into batches of at most 64; a segment
visits only the batches whose windows it meets. Within a (batch, segment) block the
Poisson weights factorise by sub-blocks of 32 steps ``k = k_m + r``:
``Pois(k; mu_i) = Pois(k_m; mu_i) (mu_i / rho)^r rho^r k_m! / k!``, so a block is one
Horner evaluation in ``mu_i / rho`` per (observation, sub-block) of coefficients
scaled per sub-block, and a log-sum-exp over the sub-blocks: about one multiply-add and
a sixteenth of a transcendental per term (windows rounded out to whole sub-blocks).
With many columns (``MATMUL_COLUMNS``, float64), a block is instead one matrix product of
the observations' Poisson weights (scaled per observation: one exp per observation and
step, shared by every column) with the coefficients (scaled per column),
`_poisson_product` (its transpose, `_poisson_product_grad`, gives the coefficients'
cotangents). Small chains (at most ``DENSE_STATES`` states) of one member step
with the dense ``P``.

**Batches.** Under ``vmap`` over parameter vectors the members share ``Lambda`` (the
batch's largest, `uniformization_rate`), hence the observations' ``mu``, windows and
Poisson weights: the kernels' vmap rule makes the batch a members' axis, each member
runs its own series (the members step together by their edges, on the minor axis,
`_members_minor`; the adjoint's steps likewise) and their coefficients are mixed side by
side as ``M q`` columns of one block product. Other batches (e.g. over time sets) share
the loop control (the union of their windows' bounds), so loops stay loops and offsets
stay slices; the members run in lockstep, vectorised, each selecting its own terms.

**Truncation.** For ``mu = Lambda t`` the Poisson right tail obeys (Bernstein)
``P(N >= mu + x) <= exp(-x^2 / (2 (mu + x / 3)))``; with ``L = log(2 / tol)`` each
observation sums ``k = 0 .. mu + L/3 + sqrt(L^2/9 + 2 L mu)``, dropping at most
``tol / 2`` of Poisson mass (absolute error ``<= tol max_k c_k``). Nothing is dropped
on the left, so far tails (where early ``c_k`` dominate tiny results) keep their
relative accuracy.

**Cumulative coefficients.** Optionally the mixed coefficients are
``c'_j = offset + Lambda^{-(a+1)} sum_{n <= j-a-1} (n+1)...(n+a) c_n`` (static order
``a``): with ``a = 0`` the cdf (``offset`` = defect; ``int_0^t f = sum_j Pois(j)
sum_{n<j} c_n / Lambda``) and the accumulated occupancy; with ``a >= 1`` the
truncated moments ``int_0^h u^a alpha e^{S u} proj du`` of epoch models.

**Gradients.** One ``custom_vjp`` over the whole stream. The backward pass walks the
segments in reverse, recomputing each segment's vectors from checkpoints (two levels:
`_checkpoint_count` vectors stored by the forward pass at a stride that grows with the
number of segments, and ``CHECKPOINTS`` per interval in the backward pass; while every
segment's start is stored, one replay per segment suffices, else about two), and runs
the adjoint recursion ``w_k = proj g_k + P w_{k+1}``. Memory does not grow with the
number of steps; recomputation costs at most a few forward passes. The coefficients'
cotangents are the transposed block products; those of ``mu`` (hence ``t``) come from
the forward pass, which then also mixes ``k c'_k`` (``d Pois(k; mu) / d mu =
Pois(k; mu) (k / mu - 1)``). Exact for the truncated sums, in the rates, ``proj``,
``alpha``, ``offset`` and ``mu``; ``Lambda`` is held under ``stop_gradient``: the exact
sum does not depend on it. (Called outside any ``jit``, a log-likelihood's gradient in
``theta`` for linear rates with at most two parameters comes instead from the forward
series of an augmented chain, `phasejax._tangents`: one program to compile.)
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from functools import partial
from typing import Any, NamedTuple, TypeVar

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, ArrayLike, Float, Int

from . import _sparse
from ._structure import is_traced

# steps per sub-block of the Poisson mixture (float64, float32), and the log-width of a
# group of observations sharing one centre rho: (mu_i / rho)^r, r < SUB, stays in range
# for |log(mu_i / rho)| <= SPAN / 2 (e^620 < e^709 in float64, e^60 < e^88 in float32)
SUB = {8: 32, 4: 4}
SPAN = {8: 40.0, 4: 40.0}
DENSE_STATES = 32  # chains of at most this many states step with a dense matrix
MATMUL_COLUMNS = 8  # mixed columns from which a block is one matrix product, not Horner
CHECKPOINTS = 64  # fewest stored vectors per level of checkpointing
# the forward pass's checkpoints (all members of a batch together) use at most this much
# (float64), below glibc's largest mmap threshold (32 MiB): a larger buffer would be mapped
# and page-faulted afresh on every call
CHECKPOINT_BYTES = 2**24


def _float0(x):
    return np.zeros(np.shape(x), dtype=jax.dtypes.float0)


def safe_log(x):
    positive = x > 0
    return jnp.where(positive, jnp.log(jnp.where(positive, x, 1.0)), -jnp.inf)


class _Sparse(NamedTuple):
    """The uniformized chain ``P = I - M`` by its edges (rates and total out-rates already
    divided by ``Lambda``; the edge list is shared, passed beside it)."""

    rate: Array
    diag: Array


class _Dense(NamedTuple):
    """The uniformized chain as the matrix ``P`` (chains of at most ``DENSE_STATES``
    states, e.g. lumped ones: one small matrix product per step instead of a gather and a
    scatter, and the rates' cotangent one product per segment)."""

    P: Array


def _operator(rate, diag, src, dst, members: bool = False) -> _Sparse | _Dense:
    """``P`` of the stream: dense for small chains of one member, else its edges (with
    ``members``, ``rate`` and ``diag`` carry a leading members' axis: they step side by
    side on the minor axis, `_run_segment`)."""
    n = diag.shape[-1]
    if members or n > DENSE_STATES:
        return _Sparse(rate, diag)
    P = jnp.eye(n, dtype=diag.dtype) - jnp.diag(diag)
    return _Dense(P.at[src, dst].add(rate, mode="drop"))  # (absorption, dst = n, dropped)


def _step(op: _Sparse | _Dense, src, dst, v):
    """One step of the uniformized chain on row vectors: ``v P = v - M^T v``."""
    if isinstance(op, _Dense):
        return v @ op.P
    return v - _sparse.rmatvec(src, dst, op.rate, op.diag, v)


def _rate_cotangents(d_op: _Sparse | _Dense, src, dst):
    """The cotangents of the rates and total out-rates from those of the operator."""
    if isinstance(d_op, _Sparse):
        return d_op.rate, d_op.diag
    n = d_op.P.shape[0]
    d_rate = jnp.where(dst < n, d_op.P[src, jnp.minimum(dst, n - 1)], 0.0)
    return d_rate, -jnp.diagonal(d_op.P)


class Stream(NamedTuple):
    """Static description of a stream (hashable: a ``custom_vjp`` non-differentiable argument).

    - `segment`: steps per segment ``B``; `batch`: observations per batch.
    - `poisson`: Poisson weights ``Pois(k; mu)`` (else weight 1 inside the window).
    - `cumulative`: mix the cumulative coefficients ``c'`` of order `order` (module doc).
    - `identity`: ``proj`` is the identity (``c_k = v_k``; no ``n x n`` matrix built).
    """

    segment: int
    batch: int
    poisson: bool
    cumulative: bool
    order: int
    identity: bool


def make_stream(
    n: int, q: int, t: int, *, poisson: bool, cumulative=False, order=0, identity=False
):
    """Segment and batch sizes for ``n`` states, ``q`` projections and ``t`` observations:
    a segment has 128 steps (vectors are rescaled once per segment: a series must not
    decay by more than the float range within one) and its vectors (``B x n``) stay
    under 8 MB where they can (a segment holds whole sub-blocks of the Poisson mixture, at
    least 32 steps), a (batch x segment x q) block under 2 MB, and a batch is no larger
    than the observations need (a power of two, at most 64: the windows of a small batch
    are close, so its blocks hold few steps outside them)."""
    segment = 128
    while segment > max(SUB.values()) and segment * max(n, q) > 2**20:
        segment //= 2
    batch = min(64, 1 << max(0, t - 1).bit_length())
    while batch > 1 and batch * segment * q > 2**18:
        batch //= 2
    return Stream(segment, batch, poisson, cumulative, order, identity)


def _checkpoint_count(cfg: Stream, n: int, q: int, members: int) -> int:
    """Checkpoints stored by the forward pass: as many as fit in ``CHECKPOINT_BYTES`` for
    all ``members`` (at least ``CHECKPOINTS``, at most 4096). While they hold every
    segment's start the backward pass replays each segment once, else about twice."""
    row = 8 * members * (n + q * (cfg.order + 1) + 1)  # a checkpoint: the vector and carry
    return int(np.clip(CHECKPOINT_BYTES // row, CHECKPOINTS, 4096))


_STIRLING_TABLE = np.array(
    [
        math.lgamma(n + 1.0) - (n + 0.5) * math.log(n) + n - 0.5 * math.log(2 * math.pi)
        for n in range(1, 16)
    ]
)


def _stirling_error(k):
    """``log k! - log(sqrt(2 pi k) (k/e)^k)`` for ``k >= 1`` (exact table to 15, then the
    asymptotic series), without the cancellation of ``lgamma`` against ``k log k``."""
    table = jnp.asarray(_STIRLING_TABLE, k.dtype)[jnp.clip(k.astype(jnp.int32) - 1, 0, 14)]
    inv = 1.0 / jnp.maximum(k, 1.0)
    inv2 = inv * inv
    series = inv * (1 / 12 - inv2 * (1 / 360 - inv2 * (1 / 1260 - inv2 * (1 / 1680 - inv2 / 1188))))
    return jnp.where(k <= 15, table, series)


def _bd0(x, m):
    """``x log(x / m) + m - x`` (Loader's deviance term), accurate to rounding near ``x = m``
    through its series in ``v = (x - m) / (x + m)``."""
    diff = x - m
    near = jnp.abs(diff) < 0.5 * (x + m)
    v = diff / jnp.where(near, x + m, 1.0)
    v2 = v * v
    series = jnp.zeros_like(v)
    for j in range(30, 0, -1):  # 2 x sum_j v^(2j+1) / (2j+1), Horner in v^2 (|v| < 1/2)
        series = v2 * (1.0 / (2 * j + 1) + series)
    near_value = diff * v + 2.0 * x * v * series
    safe_m = jnp.where(m > 0, m, 1.0)
    far_value = jnp.where(m > 0, x * jnp.log(jnp.where(near, 1.0, x / safe_m)) + m - x, jnp.inf)
    return jnp.where(near, near_value, far_value)


def _log_pois(j, mu):
    """``log Pois(j; mu)`` (broadcasting; ``Pois(0; 0) = 1``), with ``log j!`` by Stirling's
    series (`_stirling_error`: a few fused kernels to compile, where ``lgamma`` expands
    to a dozen).

    Below float64, ``log Pois(j; mu) = -stirling(j) - bd0(j, mu) - log(2 pi j) / 2``
    (Loader): accurate to a few ulps of the result rather than of ``j log mu``; in float64
    the direct form ``j log mu - mu - log j!`` (a few flops per term) is accurate enough."""
    jp = jnp.maximum(j, 1.0)
    log_root = 0.5 * jnp.log(2 * math.pi * jp)
    if mu.dtype == jnp.float64:  # its rounding is far below 1e-10
        log_fact = jp * jnp.log(jp) - jp + log_root + _stirling_error(jp)
        log_w = j * safe_log(mu) - mu - jnp.where(j == 0, 0.0, log_fact)
        return jnp.where(mu > 0, log_w, jnp.where(j == 0, 0.0, -jnp.inf))
    log_w = -_stirling_error(jp) - _bd0(jp, mu) - log_root
    return jnp.where(j == 0, -mu, log_w)


def _indicator(ks, lo, hi, dtype):
    """Log weights ``(batch, B)`` of a discrete stream: 0 inside each window, else ``-inf``."""
    inside = (ks[None] >= lo[:, None]) & (ks[None] <= hi[:, None])
    return jnp.where(inside, 0.0, -jnp.inf).astype(dtype)


class _Blocks(NamedTuple):
    """Poisson weights of one segment for a batch of observations, factorised by sub-blocks
    of ``SUB`` steps ``k = k_m + r``: ``Pois(k; mu_i) = exp(log_w_im) x_ir exp(log_ratio_mr)``
    with ``x_ir = (mu_i / rho)^r`` (``rho``: the centre of the observations' scale group,
    see `_by_scale`; ``x = 0`` outside the group).

    A sub-block counts for an observation when it meets its window (windows are widened
    to whole sub-blocks: a few more Poisson terms, never fewer).
    """

    log_w: Array  # (batch, M): log Pois(k_m; mu_i), -inf where sub-block m misses the window
    x: Array  # (batch,)
    log_ratio: Array  # (M, SUB): r log rho - sum_{j=1..r} log(k_m + j)


def _meets(starts, lo, hi, sub: int):
    """Whether the sub-block of ``sub`` steps from each of ``starts`` meets each window
    ``[lo_i, hi_i]`` (``(batch, len(starts))``): windows widen to whole sub-blocks."""
    return (starts[None] <= hi[:, None]) & (starts[None] + sub - 1 >= lo[:, None])


def _poisson_blocks(ks, mu, lo, hi, member, log_rho) -> _Blocks:
    dtype = mu.dtype
    sub = SUB[dtype.itemsize]
    starts = ks[::sub]
    inside = _meets(starts, lo, hi, sub) & member[:, None]
    log_w = jnp.where(inside, _log_pois(starts.astype(dtype)[None], mu[:, None]), -jnp.inf)
    x = jnp.where(member, jnp.exp(safe_log(mu) - log_rho), 0.0)  # 0 where mu = 0
    r = jnp.arange(sub)
    steps = (starts[:, None] + r[None]).astype(dtype)
    falling = jnp.cumsum(jnp.where(r > 0, jnp.log(jnp.maximum(steps, 1.0)), 0.0), axis=1)
    return _Blocks(log_w, x, r * log_rho - falling)


def _by_scale(ks, mu, lo, hi, fn, init, combine):
    """``combine`` of ``fn(blocks)`` over the batch's scale groups: ``log mu`` cut into
    spans of ``SPAN`` from the smallest, each with its own centre ``rho`` (the middle of
    its members' range), so that the powers ``(mu_i / rho)^r`` stay in range however far
    apart the batch's times are (one group unless they span more than ``e^SPAN``)."""
    span = SPAN[mu.dtype.itemsize]
    log_mu = safe_log(mu)
    finite = jnp.isfinite(log_mu)

    def bounds(mask):
        """Smallest and largest finite ``log mu`` over ``mask`` (0 and 0 where there is
        none), as one reduction (each compiles to a kernel or two)."""
        ends = jnp.max(jnp.where(mask & finite, jnp.stack([-log_mu, log_mu]), -jnp.inf), axis=1)
        ends = jnp.where(jnp.isfinite(ends), ends, 0.0)
        return -ends[0], ends[1]

    low, high = bounds(True)
    count = jnp.maximum(jnp.ceil((high - low) / span), 1.0).astype(jnp.int32)
    scaled = jnp.floor((jnp.where(finite, log_mu, low) - low) / span)
    group = jnp.clip(scaled, 0, count - 1).astype(jnp.int32)

    def body(g, acc):
        member = group == g
        # the centre of the members' range (the batch's when there is one group)
        g_low, g_high = bounds(member)
        log_rho = (g_low + g_high) / 2
        return combine(acc, fn(_poisson_blocks(ks, mu, lo, hi, member, log_rho)))

    return jax.lax.fori_loop(0, count, body, init)


def _powers(blocks: _Blocks) -> Array:
    """``x_i^r`` for ``r < SUB`` (``(batch, SUB)``), as a running product (one kernel; a
    chain of products compiles to one each)."""
    r = jnp.arange(blocks.log_ratio.shape[1])
    return jnp.cumprod(jnp.where(r[None] > 0, blocks.x[:, None], 1.0), axis=1)


def _poisson_mix(blocks: _Blocks, coeff):
    """``log sum_k Pois(k; mu_i) coeff_kq`` over the segment (``(batch, q)``) for a few
    columns: each sub-block's coefficients scaled to max 1, Horner in ``x_i`` (one fused
    chain of multiply-adds, a few transcendentals per ``SUB`` terms) and a log-sum-exp
    over the sub-blocks."""
    n_sub, sub = blocks.log_ratio.shape
    log_c = safe_log(coeff).reshape(n_sub, sub, -1) + blocks.log_ratio[:, :, None]
    top = jnp.max(log_c, axis=1)
    top = jnp.where(jnp.isfinite(top), top, 0.0)
    unit = jnp.exp(log_c - top[:, None])
    # sub-blocks on the minor axis (XLA CPU reduces over it fastest)
    x = blocks.x[:, None, None]
    unit = jnp.transpose(unit, (1, 2, 0))  # (SUB, q, M)
    sums = jnp.broadcast_to(unit[-1], (x.shape[0],) + unit.shape[1:])
    for r in range(sub - 2, -1, -1):
        sums = sums * x + unit[r]
    return _log_sum(blocks.log_w, top, sums)


class _Columns(NamedTuple):
    """A segment's coefficients for `_poisson_product`: each column scaled to max 1
    (``unit``, ``(B, q)``), ``log`` of its scale (with the column's own ``log_scale``), and
    `_log_falling` of the steps."""

    unit: Array
    log_scale: Array
    cum: Array


def _log_falling(ks, dtype):
    """``cum_k = sum_{j=k_0+1}^{k} log j`` over a segment's steps ``k`` (from its first,
    ``k_0``): ``log Pois(k; mu) = log Pois(k_0; mu) + (k - k_0) log mu - cum_k``."""
    logs = jnp.log(jnp.maximum(ks, 1).astype(dtype))
    return jnp.cumsum(jnp.where(ks > ks[0], logs, 0.0))


def _columns(ks, coeff, log_scale: ArrayLike = 0.0) -> _Columns:
    """Once per segment (every batch of observations visiting it shares it)."""
    col_max = jnp.max(jnp.abs(coeff), axis=0)
    unit = coeff / jnp.where(col_max > 0, col_max, 1.0)
    return _Columns(unit, safe_log(col_max) + log_scale, _log_falling(ks, coeff.dtype))


def _scaled_weights(ks, cum, mu, lo, hi):
    """The Poisson weights of a segment, scaled per observation: ``exponent_ik = log
    Pois(k; mu_i) - peak_i`` (``<= 0``; ``-inf`` outside the window, widened to whole
    sub-blocks as in `_poisson_blocks`), ``peak_i`` (``(batch,)``) and whether the window
    meets the segment (``(batch,)``)."""
    dtype = cum.dtype
    r = (ks - ks[0]).astype(dtype)
    exponent = jnp.where(r[None] > 0, r[None] * safe_log(mu)[:, None], 0.0) - cum[None]
    sub = SUB[jnp.dtype(dtype).itemsize]
    inside = _meets(ks - ks % sub, lo, hi, sub)
    exponent = jnp.where(inside, exponent, -jnp.inf)
    top = jnp.max(exponent, axis=1)
    top = jnp.where(jnp.isfinite(top), top, 0.0)
    peak = _log_pois(ks[0].astype(dtype), mu) + top
    return exponent - top[:, None], peak, jnp.any(inside, axis=1)


def _by_product(cfg: Stream, coeff) -> bool:
    """Whether a segment's coefficients (``(B, q)``) mix by `_poisson_product`: Poisson
    weights, many columns, float64. (In float32 its weights, ``exp((k - k_0) log mu -
    cum_k)`` with terms up to about ``127 log mu``, would lose 1e-4 to rounding for large
    ``mu``: Horner's sub-blocks keep float32's 1e-5.)"""
    return cfg.poisson and coeff.shape[1] >= MATMUL_COLUMNS and coeff.dtype.itemsize == 8


def _poisson_product(ks, mu, lo, hi, cols: _Columns):
    """``log sum_k Pois(k; mu_i) coeff_kq`` over the segment (``(batch, q)``) for many
    columns (the members of a batch side by side): one matrix product ``A @ unit`` with
    ``A_ik = Pois(k; mu_i) / max_k Pois(k; mu_i)`` (`_scaled_weights`: one exp per
    observation and step, shared by every column).

    Both factors are at most 1, so a product lost to underflow is below the float
    range's floor; where a live sum then falls below ``tiny^0.8`` (the Poisson weights
    and the coefficients peak far apart within the segment), it is recomputed by a
    log-sum-exp (exact)."""
    exponent, peak, meets = _scaled_weights(ks, cols.cum, mu, lo, hi)
    linear = jnp.exp(exponent) @ cols.unit
    live = meets[:, None] & jnp.isfinite(cols.log_scale)[None]
    floor = jnp.finfo(linear.dtype).tiny ** 0.8
    log_sum = jax.lax.cond(
        jnp.any(live & (linear < floor)),
        lambda: jax.nn.logsumexp(exponent[:, :, None] + safe_log(cols.unit)[None], axis=1),
        lambda: safe_log(linear),
    )
    return log_sum + peak[:, None] + cols.log_scale[None]


def _poisson_product_grad(ks, cum, mu, lo, hi, log_r, g):
    """Cotangent of the coefficients (``(B, q)``) of `_poisson_product`: ``sum_i g_iq
    Pois(k; mu_i) / f_iq`` with ``log_r = log(1 / f)`` (``(batch, q)``), as the transposed
    product of the scaled weights with ``g`` scaled per column by its largest ``peak_i /
    f_iq``. Each observation's ``peak_i / f_iq`` is capped at ``e^300`` (as in
    `_poisson_mix_grad`: beyond it the series has died out)."""
    exponent, peak, _ = _scaled_weights(ks, cum, mu, lo, hi)
    log_z = jnp.minimum(peak[:, None] + log_r, 300.0)
    top = jnp.max(log_z, axis=0)
    top = jnp.where(jnp.isfinite(top), top, 0.0)
    z = g * jnp.exp(log_z - top[None])
    return (jnp.exp(exponent).T @ z) * jnp.exp(top)[None]


def _log_sum(log_w, top, sums):
    """``log sum_m exp(log_w_im + top_mq) sums_iqm`` by a log-sum-exp."""
    return jax.nn.logsumexp(log_w[:, None] + top.T[None] + safe_log(sums), axis=-1)


def _poisson_mix_grad(blocks: _Blocks, log_r, g):
    """Cotangent of the coefficients (``(B, q)``) of `_poisson_mix`: ``sum_i g_iq
    Pois(k; mu_i) / f_iq``, with ``log_r = log(1 / f)`` (``(batch, q)``), as the transposed
    product, each sub-block's rows scaled by their largest ``Pois(k_m; mu_i) / f_iq``.

    The combined factor is capped at ``e^300``: ``Pois(k) / f`` beyond it means the
    rescaled ``c'_k`` is below ``e^-300`` relative to ``f`` (every term is ``<= f``), i.e.
    the series has died out (e.g. a nilpotent chain: exact zeros); the cap keeps
    ``inf * 0`` out of the adjoint without changing any representable contribution."""
    log_z = blocks.log_w[:, None] + log_r[:, :, None]  # (batch, q, M)
    top = jnp.max(log_z, axis=0)
    top = jnp.where(jnp.isfinite(top), top, 0.0)
    z = g[:, :, None] * jnp.exp(log_z - top[None])
    sums = jnp.einsum("ir,iqm->mrq", _powers(blocks), z)
    scale = jnp.exp(jnp.minimum(blocks.log_ratio[:, :, None] + top.T[:, None], 300.0))
    return (sums * scale).reshape(-1, g.shape[1])


def _members_minor(run: Callable[..., Any], shared: int):
    """``run`` with a vmap rule for kernels that step by edges (`phasejax._sparse`: they
    broadcast over trailing axes): a batch of members runs as one call with the members
    on the last axis of every leaf of the arguments after the first ``shared`` (the edges,
    unbatched) and of the outputs. Each step is then one gather and one segment sum over
    rows of ``M`` contiguous values, where a vmapped step gathers and scatters per member:
    2-4x faster per step at 10-20 states and 100 members (plain vmap where the edges
    themselves are batched)."""
    fn = jax.custom_batching.custom_vmap(run)

    @fn.def_vmap
    def rule(axis_size, in_batched, *args):
        in_batched = tuple(in_batched)
        if any(jax.tree.leaves(in_batched[:shared])):
            axes = tuple(jax.tree.map(lambda b: 0 if b else None, b) for b in in_batched)
            out = jax.vmap(run, in_axes=axes)(*args)
        else:

            def minor(x, batched):
                x = x if batched else jnp.broadcast_to(x, (axis_size,) + x.shape)
                return jnp.moveaxis(x, 0, -1)

            moved = jax.tree.map(minor, args[shared:], in_batched[shared:])
            out = jax.tree.map(lambda y: jnp.moveaxis(y, -1, 0), run(*args[:shared], *moved))
        return out, jax.tree.map(lambda _: True, out)

    return fn


def _forward_steps(length: int, src, dst, op, v):
    """``v_0 .. v_{length-1}`` from ``v_0 = v``, and ``v_length``."""

    def body(v, _):
        return _step(op, src, dst, v), v

    v_end, vs = jax.lax.scan(body, v, None, length=length)
    return vs, v_end


@functools.cache
def _sparse_segment(length: int):
    return _members_minor(partial(_forward_steps, length), shared=2)


def _run_segment(cfg: Stream, op, src, dst, v):
    """The ``B`` vectors ``v_0 .. v_{B-1}`` of a segment from its first vector, and ``v_B``
    (members stepping by edges side by side: `_members_minor`)."""
    if isinstance(op, _Dense):
        return _forward_steps(cfg.segment, src, dst, op, v)
    return _sparse_segment(cfg.segment)(src, dst, op, v)


def _adjoint_steps(src, dst, op: _Sparse, vs, inject, w, d_rate):
    """The adjoint ``w_k = inject_k + P w_{k+1}`` backwards over a segment by edges, from
    ``w = w_B``: ``w_0``, the rates' cotangent ``d rate_e += v_k[src_e] w_{k+1}[dst_e]`` (0
    into absorption; the gather of ``w_{k+1}`` is shared with ``M w_{k+1}``) and the
    ``w_{k+1}`` (for the diagonal's cotangent)."""

    def back(state, step):
        w_next, d_rate = state
        inject_k, v_k = step
        w_dst = _sparse.pad_zero(w_next)[dst]
        m_w = op.diag * w_next - _sparse.segment_sum(op.rate * w_dst, src, w_next.shape[0])
        return (w_next - m_w + inject_k, d_rate + v_k[src] * w_dst), w_next

    (w, d_rate), ws = jax.lax.scan(back, (w, d_rate), (inject, vs), reverse=True)
    return w, d_rate, ws


_sparse_adjoint = _members_minor(_adjoint_steps, shared=2)


def _rising(cfg: Stream, ks, dtype):
    """``(k+1)(k+2)...(k+a)`` for the cumulative order ``a`` (1 when ``a = 0``)."""
    out = jnp.ones(ks.shape, dtype)
    for i in range(1, cfg.order + 1):
        out = out * (ks.astype(dtype) + i)
    return out


def _segment(cfg: Stream, op, src, dst, proj, lam, offset, s, v, carry):
    """Segment ``s`` from its first vector ``v``: its (rescaled) vectors, the first vector of
    the next segment, ``c'`` of its steps divided by ``exp(log_scale)``, the carry into the
    next segment, and ``log_scale``.

    ``carry = (ell, prefix, hist)``: the vectors are stored divided by ``exp(ell)`` (each
    segment starts rescaled to max 1, so that long series do not underflow); ``prefix``
    is the running sum ``sum_{n<k} d_n`` and ``hist`` the last ``a`` exclusive prefixes
    (the delay of order ``a``) of the cumulative form, both at true scale.
    """
    ell, prefix, hist = carry
    sigma = jnp.max(jnp.abs(v))
    sigma = jnp.where(sigma > 0, sigma, 1.0)
    v, ell = v / sigma, ell + jnp.log(sigma)
    vs, v_next = _run_segment(cfg, op, src, dst, v)
    c = vs if cfg.identity else vs @ proj
    if not cfg.cumulative:
        return vs, v_next, c, (ell, prefix, hist), ell
    ks = s * cfg.segment + jnp.arange(cfg.segment)
    d = c * jnp.exp(ell) * _rising(cfg, ks, c.dtype)[:, None]
    inclusive = jnp.cumsum(d, axis=0)
    exclusive = prefix + jnp.concatenate([jnp.zeros_like(d[:1]), inclusive[:-1]])
    delayed = jnp.concatenate([hist, exclusive])
    scale = lam ** -(cfg.order + 1)
    coeff = offset + delayed[: cfg.segment] * scale
    carry = (ell, prefix + inclusive[-1], delayed[cfg.segment :])
    return vs, v_next, coeff, carry, jnp.zeros_like(ell)


def _batch_range(cfg: Stream, s, lo_min, hi_max):
    """Batches whose windows meet segment ``s``: ``[b0, b1)``."""
    first = s * cfg.segment
    last = first + cfg.segment - 1
    index = jnp.arange(lo_min.shape[0])
    b0 = jnp.min(jnp.where(hi_max >= first, index, lo_min.shape[0]))
    b1 = jnp.max(jnp.where(lo_min <= last, index, -1)) + 1
    return b0, b1


def _slice(x, b, size):
    return jax.lax.dynamic_slice_in_dim(x, b * size, size, axis=0)


def _update(x, value, b, size):
    return jax.lax.dynamic_update_slice_in_dim(x, value, b * size, axis=0)


class _Data(NamedTuple):
    """Observations sorted by window and padded to whole batches."""

    mu: Array
    lo: Array
    hi: Array
    lo_min: Array  # per batch
    hi_max: Array  # per batch


def _n_segments(cfg: Stream, data: _Data):
    return (jnp.max(data.hi_max) + cfg.segment) // cfg.segment  # 0 if every window is empty


def _init_carry(cfg: Stream, q, dtype):
    return (jnp.zeros((), dtype), jnp.zeros((q,), dtype), jnp.zeros((cfg.order, q), dtype))


def _rows(coeff):
    """``coeff`` (``B x q``) as ``log`` of its row maxima and rows scaled to max 1."""
    row_max = jnp.max(jnp.abs(coeff), axis=1)
    return safe_log(row_max), coeff / jnp.where(row_max > 0, row_max, 1.0)[:, None]


def _lead(w, log_row):
    """``P_ik = exp(w_ik + log_row_k - M_i)`` with ``M_i`` the largest exponent of row ``i``
    (every entry <= 1, the leading one 1), and ``M_i`` (0 where a row is empty)."""
    lead = w + log_row[None]
    top = jnp.max(lead, axis=1)
    top = jnp.where(jnp.isfinite(top), top, 0.0)
    return jnp.exp(lead - top[:, None]), top


def _stride(count: int, n: Array) -> Array:
    """Steps between two of ``count`` checkpoints over ``n`` steps (the forward and
    backward passes must agree on it)."""
    return jnp.maximum(1, -(-n // count))


def _checkpoint_buffer(count: int, value, axis: int = 0):
    """Zeros for ``count`` copies of the pytree ``value``, stacked along ``axis`` (1:
    after the members' axis of a member-batched kernel)."""
    return jax.tree.map(
        lambda x: jnp.zeros(x.shape[:axis] + (count,) + x.shape[axis:], x.dtype), value
    )


def _load(buffer, slot, axis: int = 0):
    """Slot ``slot`` of a checkpoint buffer (see `_checkpoint_buffer`)."""
    return jax.tree.map(lambda x: jax.lax.dynamic_index_in_dim(x, slot, axis, False), buffer)


def _save(buffer, i: Array | int, stride: Array, value, when: Array | bool = True, axis: int = 0):
    """``buffer`` (a pytree of arrays with ``count`` slots along ``axis``) with ``value``
    stored at slot ``i // stride`` when ``i`` is a multiple of ``stride`` (and ``when``)."""
    slot = jnp.minimum(i // stride, jax.tree.leaves(buffer)[0].shape[axis] - 1)
    keep = (i % stride != 0) | ~jnp.asarray(when)
    # one row rewritten (with itself unless ``i`` is a multiple), not the whole buffer
    return jax.tree.map(
        lambda buf, x, old: jax.lax.dynamic_update_index_in_dim(
            buf, jnp.where(keep, old, x), slot, axis
        ),
        buffer,
        value,
        _load(buffer, slot, axis),
    )


def _fold(x: Array) -> Array:
    """Members' columns side by side: ``(M, R, q) -> (R, M q)`` (member-major)."""
    return jnp.transpose(x, (1, 0, 2)).reshape(x.shape[1], -1)


def _unfold(x: Array, size: int) -> Array:
    """The inverse of `_fold`: ``(R, M q) -> (M, R, q)``."""
    return jnp.transpose(x.reshape(x.shape[0], size, -1), (1, 0, 2))


def _advance(cfg: Stream, op, src, dst, proj, lam, offset, members: bool):
    """``advance(s, v, carry)``: `_segment` ``s`` of the stream, of every member at once
    when ``members`` (the member-dependent arrays then carry a leading members' axis)."""

    def one(op, proj, offset, s, v, carry):
        return _segment(cfg, op, src, dst, proj, lam, offset, s, v, carry)

    return partial(_each(one, members, (0, 0, 0, None, 0, 0)), op, proj, offset)


def _each(fn, members: bool, in_axes: int | tuple[int | None, ...] = 0) -> Callable[..., Any]:
    """``fn`` per member (``in_axes`` as for ``jax.vmap``) when ``members``."""
    return jax.vmap(fn, in_axes=in_axes) if members else fn


def _forward(
    cfg: Stream, rate, diag, src, dst, proj, alpha, offset, lam, data: _Data, shift, members
):
    """``log f`` per observation (``(total, q)``) and the checkpoints; with ``shift``, also
    ``log sum_k Pois(k - 1; mu_i) c'_k`` (the ``mu`` cotangent of the backward pass), as
    ``q`` more columns: ``Pois(k - 1; mu) = Pois(k; mu) k / mu`` shares the weights, so it
    costs one more column of the matrix product (``mu = 0``: the limit ``c'_1``).

    ``members``: ``rate``, ``diag``, ``proj``, ``alpha`` and ``offset`` carry a leading
    axis of ``M`` members (e.g. parameter vectors) sharing the observations: each runs
    its own series, and their coefficients are mixed side by side as ``M q`` columns of
    one block product (the Poisson weights are computed once). The outputs then carry
    the members' axis first."""
    n = alpha.shape[-1]
    size = alpha.shape[0] if members else 1
    q = n if cfg.identity else proj.shape[-1]
    cols = size * q  # the mixed columns
    dtype = alpha.dtype
    total = data.mu.shape[0]
    n_seg = _n_segments(cfg, data)
    count = _checkpoint_count(cfg, n, q, size)
    stride = _stride(count, n_seg)
    ks0 = jnp.arange(cfg.segment)
    width = 2 * cols if shift else cols
    op = _operator(rate, diag, src, dst, members)
    advance = _advance(cfg, op, src, dst, proj, lam, offset, members)

    def mix(s, coeff, log_scale, m, acc):
        """Add segment ``s`` to the running ``log``-sums, per batch: `_poisson_mix`, or for
        indicator weights one matrix product of the scaled weights with the scaled
        coefficients (``sum_k w_ik c_k`` = ``exp(M_i + log_scale) (P @ unit)_i``, see
        `_lead`)."""
        ks = s * cfg.segment + ks0
        if shift:
            # mu = 0: Pois(k - 1; 0) is 1 at k = 1 only (segment 0)
            at_zero = jnp.where(s == 0, safe_log(coeff[1]), -jnp.inf) + log_scale
            coeff = jnp.concatenate([coeff, ks.astype(dtype)[:, None] * coeff], axis=1)
            # each column's scale, for the shifted columns too
            log_scale = jnp.tile(jnp.broadcast_to(log_scale, (cols,)), 2)
        if not cfg.poisson:
            log_row, unit = _rows(coeff)
        many = _by_product(cfg, coeff)
        if many:
            columns = _columns(ks, coeff, log_scale)

        def one(b, state):
            m, acc = state
            mu_b, lo_b, hi_b = (_slice(x, b, cfg.batch) for x in data[:3])
            if many:
                part = _poisson_product(ks, mu_b, lo_b, hi_b, columns)
            elif cfg.poisson:
                part = _by_scale(
                    ks,
                    mu_b,
                    lo_b,
                    hi_b,
                    lambda blocks: _poisson_mix(blocks, coeff),
                    jnp.full((mu_b.shape[0], coeff.shape[1]), -jnp.inf, dtype),
                    jnp.logaddexp,
                )
                part = part + log_scale
            else:
                lead, top = _lead(_indicator(ks, lo_b, hi_b, dtype), log_row)
                part = safe_log(lead @ unit) + top[:, None] + log_scale
            if shift:
                zero = mu_b == 0
                shifted = part[:, cols:] - safe_log(jnp.where(zero, 1.0, mu_b))[:, None]
                shifted = jnp.where(zero[:, None], at_zero, shifted)
                part = jnp.concatenate([part[:, :cols], shifted], axis=1)
            m_b, acc_b = _slice(m, b, cfg.batch), _slice(acc, b, cfg.batch)
            new_m = jnp.maximum(m_b, part)
            safe = jnp.where(jnp.isfinite(new_m), new_m, 0.0)
            acc_b = acc_b * jnp.exp(jnp.where(jnp.isfinite(m_b), m_b - safe, -jnp.inf)) + jnp.exp(
                jnp.where(jnp.isfinite(part), part - safe, -jnp.inf)
            )
            return _update(m, new_m, b, cfg.batch), _update(acc, acc_b, b, cfg.batch)

        b0, b1 = _batch_range(cfg, s, data.lo_min, data.hi_max)
        return jax.lax.fori_loop(b0, b1, one, (m, acc))

    def body(state):
        s, v, carry, m, acc, ckpt = state
        ckpt = _save(ckpt, s, stride, (v, carry), axis=int(members))
        _, v_next, coeff, carry, log_scale = advance(s, v, carry)
        if members:  # side by side; each member's scale repeated over its columns
            coeff, log_scale = _fold(coeff), jnp.repeat(log_scale, q)
        m, acc = mix(s, coeff, log_scale, m, acc)
        return s + 1, v_next, carry, m, acc, ckpt

    carry0 = _init_carry(cfg, q, dtype)
    if members:
        carry0 = jax.tree.map(lambda x: jnp.broadcast_to(x, (size,) + x.shape), carry0)
    ckpt = _checkpoint_buffer(count, (alpha, carry0), axis=int(members))
    init = (
        jnp.asarray(0, n_seg.dtype),
        alpha,
        carry0,
        jnp.full((total, width), -jnp.inf, dtype),
        jnp.zeros((total, width), dtype),
        ckpt,
    )
    _, _, _, m, acc, ckpt = jax.lax.while_loop(lambda st: st[0] < n_seg, body, init)
    log_f = jnp.where(acc > 0, jnp.where(jnp.isfinite(m), m, 0.0) + safe_log(acc), -jnp.inf)
    if members:  # (total, [M q | M q]) -> (M, total, [q | q])
        halves = jnp.split(log_f, 2 if shift else 1, axis=1)
        log_f = jnp.concatenate([_unfold(h, size) for h in halves], axis=2)
    return log_f, ckpt


# among the kernels' arguments: the member-dependent ones (rates, diag, proj, alpha,
# offset; the backward kernel's log f, checkpoints and cotangents), those shared by every
# member of a batch (edges, Lambda and the observations), mu and the window bounds
_MEMBER = (0, 1, 2, 3, 4, 13, 14, 15)
_SHARED = (5, 6, 7, 8, 9, 10, 11, 12)
_MU, _LO_MIN, _HI_MAX = 8, 11, 12


def _shared_control(kernel, members: bool):
    """``kernel(members)(*arrays)`` (a forward or backward kernel) with a vmap rule.

    Where the batch shares the observations (the usual batch over parameter vectors:
    one ``Lambda`` by `uniformization_rate`, hence one ``mu``), the batch becomes the
    members' axis of the member-batched kernel (merged with its own when ``members``):
    each member runs its series and their coefficients are mixed as side-by-side
    columns with the Poisson weights computed once. Otherwise (e.g. a batch of time
    sets) the kernel is vectorised with its loops unbatched: the members share the
    per-batch window bounds (their union), so trip counts and offsets stay scalars, and
    run in lockstep, each selecting its own terms (a member's series whose windows end
    early runs on, unread)."""
    fn = kernel(members)

    @jax.custom_batching.custom_vmap
    def wrapped(*args):
        return fn(*args)

    @wrapped.def_vmap
    def rule(axis_size, in_batched, *args):
        args, in_batched = list(args), list(in_batched)
        if not any(in_batched[i] for i in _SHARED):
            merged = []
            for i, (x, batched) in enumerate(zip(args, in_batched)):
                if i in _MEMBER:  # (batch, [M,] ...) -> (batch [x M], ...); a pytree
                    x = jax.tree.map(
                        lambda a, b: a if b else jnp.broadcast_to(a, (axis_size,) + a.shape),
                        x,
                        batched,
                    )
                    if members:  # (explicit sizes: a leaf may be empty)
                        x = jax.tree.map(
                            lambda a: a.reshape((a.shape[0] * a.shape[1],) + a.shape[2:]), x
                        )
                merged.append(x)
            out = _shared_control(kernel, True)(*merged)
            if members:
                out = jax.tree.map(
                    lambda a: a.reshape((axis_size, a.shape[0] // axis_size) + a.shape[1:]), out
                )
            return out, jax.tree.map(lambda _: True, out)
        for i, reduce in ((_LO_MIN, jnp.min), (_HI_MAX, jnp.max)):
            if in_batched[i]:
                args[i], in_batched[i] = reduce(args[i], axis=0), False
        # flags and arguments leaf by leaf: an argument may be a pytree (the checkpoints)
        # whose flag is a pytree of bools, not one bool
        flat_args, tree = jax.tree.flatten(args)
        flat_batched = jax.tree.leaves(in_batched)
        axes = jax.tree.unflatten(tree, [0 if b else None for b in flat_batched])
        out = jax.vmap(fn, in_axes=tuple(axes))(*args)
        return out, jax.tree.map(lambda _: True, out)

    return wrapped


@functools.cache
def _forward_kernel(cfg: Stream, shift: bool = False):
    def kernel(members):
        def forward(rate, diag, proj, alpha, offset, src, dst, lam, mu, lo, hi, lo_min, hi_max):
            data = _Data(mu, lo, hi, lo_min, hi_max)
            return _forward(
                cfg, rate, diag, src, dst, proj, alpha, offset, lam, data, shift, members
            )

        return forward

    return _shared_control(kernel, False)


@functools.cache
def _backward_kernel(cfg: Stream):
    return _shared_control(lambda members: partial(_backward, cfg, members), False)


@partial(jax.custom_vjp, nondiff_argnums=(0,))
def _stream(cfg, *args):
    return _forward_kernel(cfg)(*args)[0]


@jax.custom_jvp
def _first_order_only(x):
    """Identity whose derivative raises: the stream's adjoint is not itself differentiable
    (its while loops and saved log-weights are first-order only), so a second derivative
    through it would be silently wrong rather than merely unavailable."""
    return x


@_first_order_only.defjvp
def _first_order_only_jvp(primals, tangents):
    raise NotImplementedError(
        "second derivatives (jax.hessian, jacfwd or grad of a gradient) do not pass through "
        "the uniformization engine, whose adjoint is first-order; use method='expm' for "
        "densities, epochs(..., dense=True) for epoch models, or moments (linear solves)"
    )


def _stream_fwd(cfg, *primals):
    # the shifted sums (the cotangent of ``mu``, q more columns to mix) only when ``mu``
    # is differentiated (e.g. in ``t``; not for a likelihood's gradient in theta)
    shift = cfg.poisson and primals[_MU].perturbed
    args = tuple(x.value for x in primals)
    # under an outer derivative of this gradient the inputs carry tangents: raise there
    args = tuple(_first_order_only(x) if eqx.is_inexact_array(x) else x for x in args)
    out, ckpt = _forward_kernel(cfg, shift)(*args)
    q = out.shape[1] // 2 if shift else out.shape[1]
    log_f = out[:, :q]
    return log_f, (args, log_f, out[:, q:] if shift else None, ckpt)


def _stream_bwd(cfg, residuals, g):
    args, log_f, log_shifted, ckpt = residuals
    rate, diag, proj, alpha, offset, src, dst, lam, *data = args
    if isinstance(g, jax.custom_derivatives.SymbolicZero):
        g = jnp.zeros(jnp.shape(log_f), log_f.dtype)  # the cotangent of log_f
    d_rate, d_diag, d_proj, w0, d_offset = _backward_kernel(cfg)(*args, log_f, ckpt, g)
    if log_shifted is not None:
        # d/dmu sum_k Pois(k; mu) c'_k = sum_k (Pois(k - 1; mu) - Pois(k; mu)) c'_k
        finite = jnp.isfinite(log_f)
        ratio = jnp.exp(log_shifted - jnp.where(finite, log_f, 0.0))
        d_mu = jnp.sum(jnp.where(finite, g * (ratio - 1.0), 0.0), axis=1)
    else:
        d_mu = jnp.zeros_like(data[0])
    return (
        d_rate,
        d_diag,
        d_proj,
        w0,
        d_offset,
        _float0(src),
        _float0(dst),
        jnp.zeros_like(lam),
        d_mu,
        *(_float0(x) for x in data[1:]),
    )


def _backward(cfg, members, rate, diag, proj, alpha, offset, src, dst, lam, *rest):
    """The adjoint pass (module doc): cotangents of the rates, ``proj``, ``alpha`` (``w_0``)
    and ``offset``, given those ``g`` of ``log f`` (``mu``'s comes from the forward pass's
    shifted sums, `_stream_bwd`). ``members``: as in `_forward` (the coefficients'
    cotangents of all members come from one transposed block product)."""
    *data, log_f, ckpt, g = rest
    data = _Data(*data)
    finite = jnp.isfinite(log_f)
    g = jnp.where(finite, g, 0.0)
    log_f = jnp.where(finite, log_f, 0.0)
    n, q, dtype = alpha.shape[-1], g.shape[-1], alpha.dtype
    size = alpha.shape[0] if members else 1
    lead = alpha.shape[:-1]  # (M,) or ()
    if members:
        g, log_f = _fold(g), _fold(log_f)
    n_seg = _n_segments(cfg, data)
    stride = _stride(jax.tree.leaves(ckpt)[0].shape[int(members)], n_seg)  # as stored
    inner_stride = _stride(CHECKPOINTS, stride)
    ks0 = jnp.arange(cfg.segment)
    op = _operator(rate, diag, src, dst, members)
    advance = _advance(cfg, op, src, dst, proj, lam, offset, members)

    def mix_grad(s, coeff, log_scale):
        """``g'_kq = sum_i g_iq w_ik exp(log_scale) / f_iq``, the cotangent of ``coeff`` over
        the segment. Term by term (not factorised as in the forward pass): the cotangent
        of a coefficient does not depend on its value, and a zero coefficient (a dead
        row) can still carry one."""
        ks = s * cfg.segment + ks0
        if members:  # side by side, as in the forward pass
            coeff, log_scale = _fold(coeff), jnp.repeat(log_scale, q)
        many = _by_product(cfg, coeff)
        cum = _log_falling(ks, coeff.dtype) if many else None

        def one(b, g_c):
            mu_b, lo_b, hi_b = (_slice(x, b, cfg.batch) for x in data[:3])
            g_b, lf_b = _slice(g, b, cfg.batch), _slice(log_f, b, cfg.batch)
            if many:
                return g_c + _poisson_product_grad(ks, cum, mu_b, lo_b, hi_b, log_scale - lf_b, g_b)
            if cfg.poisson:
                return _by_scale(
                    ks,
                    mu_b,
                    lo_b,
                    hi_b,
                    lambda blocks: _poisson_mix_grad(blocks, log_scale - lf_b, g_b),
                    g_c,
                    jnp.add,
                )
            # capped as in `_poisson_mix_grad`
            w = _indicator(ks, lo_b, hi_b, g_b.dtype)
            ratio = jnp.exp(jnp.minimum(w[:, :, None] + log_scale - lf_b[:, None], 300.0))
            return g_c + jnp.einsum("ikq,iq->kq", ratio, g_b)

        b0, b1 = _batch_range(cfg, s, data.lo_min, data.hi_max)
        g_c = jax.lax.fori_loop(b0, b1, one, jnp.zeros_like(coeff))
        return _unfold(g_c, size) if members else g_c

    def coeff_grad(ks, ell, g_cp, carry_bar):
        """Cotangents of the rescaled coefficients from those of ``c'``."""
        if not cfg.cumulative:
            return g_cp, carry_bar, 0.0
        prefix_bar, hist_bar = carry_bar
        scale = lam ** -(cfg.order + 1)
        g_delayed = jnp.concatenate([g_cp * scale, hist_bar])
        hist_prev_bar, g_exclusive = g_delayed[: cfg.order], g_delayed[cfg.order :]
        after = jnp.cumsum(g_exclusive[::-1], axis=0)[::-1] - g_exclusive  # sum over k > n
        g_d = prefix_bar + after
        g_c = g_d * _rising(cfg, ks, g_d.dtype)[:, None] * jnp.exp(ell)
        carry_prev_bar = (prefix_bar + jnp.sum(g_exclusive, axis=0), hist_prev_bar)
        return g_c, carry_prev_bar, jnp.sum(g_cp)

    def adjoint(op, proj, vs, g_c, w, d_op, d_proj):
        """``w_k = proj g_k + P w_{k+1}`` backwards over the segment, and the cotangents of
        the operator and ``proj``. With ``w_{k+1}`` the adjoint of ``v_{k+1} = v_k P``:
        ``d P += v_k^T w_{k+1}`` (dense: one product per segment); by edges (``P w = w -
        M w``) `_adjoint_steps`, and ``d diag_i -= v_k[i] w_{k+1}[i]`` (summed over the
        segment at once)."""

        inject = g_c if cfg.identity else g_c @ proj.T  # (B, n): one product per segment
        if isinstance(op, _Dense):

            def back_dense(w_next, inject_k):
                return op.P @ w_next + inject_k, w_next

            w, ws = jax.lax.scan(back_dense, w, inject, reverse=True)
            d_op = _Dense(d_op.P + vs.T @ ws)
        else:
            w, d_rate, ws = _sparse_adjoint(src, dst, op, vs, inject, w, d_op.rate)
            d_op = _Sparse(d_rate, d_op.diag - jnp.sum(vs * ws, axis=0))
        if not cfg.identity:
            d_proj = d_proj + vs.T @ g_c
        return w, d_op, d_proj

    def interval(state):
        c, w, carry_bar, d_op, d_proj, d_offset = state
        first = c * stride
        count = jnp.minimum(stride, n_seg - first)
        v0, carry0 = _load(ckpt, c, axis=int(members))
        inner = _checkpoint_buffer(CHECKPOINTS, (v0, carry0))
        inner = _save(inner, 0, inner_stride, (v0, carry0))  # checkpoint ``c`` itself

        def segment(i, st):
            inner, (w, ell_w), carry_bar, d_op, d_proj, d_offset = st
            j = count - 1 - i
            s = first + j
            # the last segment replays the interval from its checkpoint, storing the inner
            # checkpoints on its way; the others replay from their nearest inner checkpoint
            # (storing identical values again). One replay loop: the segment is traced
            # (compiled) once in the backward pass.
            base = jnp.where(i == 0, 0, (j // inner_stride) * inner_stride)
            start = jax.tree.map(lambda x: x[base // inner_stride], inner)

            def replay(r, st):
                v, carry, inner, _ = st
                vs, v, coeff, carry, log_scale = advance(first + base + r, v, carry)
                # (the end of the interval is the next interval's checkpoint: not stored)
                index = base + r + 1
                inner = _save(inner, index, inner_stride, (v, carry), index < count)
                return v, carry, inner, (vs, coeff, carry[0], log_scale)

            # the replayed segment: its vectors, coefficients, ``ell`` and ``log_scale``
            out = (
                jnp.zeros(lead + (cfg.segment, n), dtype),
                jnp.zeros(lead + (cfg.segment, q), dtype),
            )
            out = (*out, jnp.zeros(lead, dtype), jnp.zeros(lead, dtype))
            _, _, inner, (vs, coeff, ell, log_scale) = jax.lax.fori_loop(
                0, j - base + 1, replay, (*start, inner, out)
            )
            g_cp = mix_grad(s, coeff, log_scale)
            ks = s * cfg.segment + ks0
            g_c, carry_bar, d_off = _each(coeff_grad, members, (None, 0, 0, 0))(
                ks, ell, g_cp, carry_bar
            )
            # the adjoint of the next segment's first vector, rescaled to this segment
            w = w * jnp.where(jnp.isnan(ell_w), 1.0, jnp.exp(ell - ell_w))[..., None]
            w, d_op, d_proj = _each(adjoint, members)(op, proj, vs, g_c, w, d_op, d_proj)
            return inner, (w, ell), carry_bar, d_op, d_proj, d_offset + d_off

        st = (inner, w, carry_bar, d_op, d_proj, d_offset)
        _, *st = jax.lax.fori_loop(0, count, segment, st)
        return (c - 1, *st)

    init = (
        (n_seg + stride - 1) // stride - 1,
        (jnp.zeros_like(alpha), jnp.full(lead, jnp.nan, alpha.dtype)),
        jax.tree.map(lambda x: jnp.broadcast_to(x, lead + x.shape), _init_carry(cfg, q, dtype)[1:]),
        jax.tree.map(jnp.zeros_like, op),
        jnp.zeros_like(proj),
        jnp.zeros_like(offset),
    )
    _, (w0, ell0), _, d_op, d_proj, d_offset = jax.lax.while_loop(
        lambda st: st[0] >= 0, interval, init
    )
    d_rate, d_diag = _each(_rate_cotangents, members, (0, None, None))(d_op, src, dst)
    w0 = w0 * jnp.where(jnp.isnan(ell0), 1.0, jnp.exp(-ell0))[..., None]
    return d_rate, d_diag, d_proj, w0, jnp.asarray(d_offset, offset.dtype)


_stream.defvjp(_stream_fwd, _stream_bwd, symbolic_zeros=True)


def mix(
    cfg: Stream,
    rate: Float[Array, " e"],
    diag: Float[Array, " n"],
    proj: Float[Array, "n q"] | None,
    alpha: Float[Array, " n"],
    src: Int[Array, " e"],
    dst: Int[Array, " e"],
    lam: Float[Array, ""],
    mu: Float[Array, " t"],
    lo: Int[Array, " t"],
    hi: Int[Array, " t"],
    offset: Float[Array, ""] | float = 0.0,
    key: Array | None = None,
    presorted: bool = False,
) -> Float[Array, "t q"]:
    """``log sum_{k=lo_i}^{hi_i} w_ik c'_k`` for every observation ``i`` (module doc).

    ``w_ik = Pois(k; mu_i)`` (``cfg.poisson``) or 1; ``c'`` the projections
    ``(alpha P^k) @ proj`` (``proj=None``: the vectors themselves) or their cumulative
    form; an empty window (``hi < lo``) gives ``-inf``. ``P = I - M / lam``.

    Observations are batched in the order of ``key`` (default ``hi``). Any order is
    correct; one that sorts the windows (``lo`` and ``hi`` non-decreasing) does the
    least work, and a key that does not depend on a vmapped parameter (e.g. the times,
    when ``mu = lam t``) is sorted once for the whole batch. ``presorted=True``: the
    observations already come in such an order (``lo`` and ``hi`` non-decreasing, e.g.
    concrete times sorted on the host before tracing), so the executable carries no sort,
    no unsort, and takes each batch's window bounds from its first and last member.
    """
    n = alpha.shape[0]
    proj = jnp.zeros((n, 0), alpha.dtype) if proj is None else proj  # unused when identity
    q = n if cfg.identity else proj.shape[1]
    total = mu.shape[0]
    if total == 0:
        return jnp.zeros((0, q), alpha.dtype)
    order = None
    if not presorted:
        # the barrier keeps XLA from constant-folding the sort of constant data (slowly)
        order = jnp.argsort(jax.lax.optimization_barrier(hi if key is None else key), stable=True)
    pad = (-total) % cfg.batch
    big = jnp.iinfo(hi.dtype).max

    def prepare(x, fill):
        x = x if order is None else x[order]
        return jnp.concatenate([x, jnp.full((pad,), fill, x.dtype)])

    mu_s, lo_s, hi_s = prepare(mu, 0.0), prepare(lo, big), prepare(hi, -1)
    if presorted:  # one gather, not two reductions (XLA splits each into two kernels)
        first = np.arange(0, total, cfg.batch)
        lo_min, hi_max = lo[first], hi[np.minimum(first + cfg.batch, total) - 1]
    else:
        lo_min = lo_s.reshape(-1, cfg.batch).min(1)
        hi_max = hi_s.reshape(-1, cfg.batch).max(1)
    log_scale = jnp.zeros((q,), alpha.dtype)
    if not (cfg.identity or cfg.cumulative):
        # columns of proj scaled to max 1 (a constant factor of the homogeneous result):
        # Pois(k) / f and the adjoint then stay at the scale of the rescaled vectors
        scale = jax.lax.stop_gradient(jnp.max(jnp.abs(proj), axis=0))
        scale = jnp.where(scale > 0, scale, 1.0)
        proj, log_scale = proj / scale, jnp.log(scale)
    proj_arg = jnp.zeros((0,), alpha.dtype) if cfg.identity else proj
    offset = jnp.asarray(offset, alpha.dtype)
    # the stream steps with the rates relative to Lambda: its adjoint then stays O(1) even
    # for tiny rates (the division's own derivative is taken here, by JAX)
    rate, diag = rate / lam, diag / lam
    out = jnp.asarray(
        _stream(
            cfg,
            rate,
            diag,
            proj_arg,
            alpha,
            offset,
            src,
            dst,
            lam,
            mu_s,
            lo_s,
            hi_s,
            lo_min,
            hi_max,
        )
    )
    out = out[:total] if order is None else out[jnp.argsort(order)]  # padding dropped
    return out + log_scale


@jax.custom_batching.custom_vmap
def _batch_max(x):
    return x


@_batch_max.def_vmap
def _batch_max_rule(axis_size, in_batched, x):
    (batched,) = in_batched
    return (jnp.max(x, axis=0) if batched else x), False


def uniformization_rate(diag: Float[Array, " n"], shared: bool = True) -> Float[Array, ""]:
    """``Lambda = max_i d_i`` under ``stop_gradient`` (the exact sum does not depend on
    it). With ``shared``, under ``vmap`` the members share the batch's largest ``Lambda``
    (an unbatched value; any ``Lambda >= max_i d_i`` is exact): the lockstep members run
    the series of the largest anyway, and with one ``Lambda`` they share ``mu = Lambda
    t``, hence their windows and Poisson weights, so a batch mixes its members as extra
    columns of one block product instead of each weighting its own. (Not shared where a
    step cap applies: each member's series length is then its own.)"""
    lam = jax.lax.stop_gradient(jnp.max(diag))
    return jax.lax.stop_gradient(_batch_max(lam)) if shared else lam


def right_point(mu: ArrayLike, tol: float, xnp=jnp) -> Array:
    """Right Poisson truncation point: ``P(N > right) <= tol / 2`` (``xnp``: jnp or numpy)."""
    log_inv = math.log(2.0 / tol)
    right = xnp.ceil(mu + log_inv / 3.0 + xnp.sqrt(log_inv**2 / 9.0 + 2.0 * log_inv * mu))
    return xnp.minimum(right, 2.0**31 - 2).astype(xnp.int32)


def check_tol(tol) -> float:
    """``tol`` as a float in ``(0, 1)``, else a ValueError (checked in Python, never traced)."""
    try:
        value = float(tol)
    except (TypeError, ValueError):
        raise TypeError(f"tol must be a number in (0, 1), got {tol!r}") from None
    if not 0.0 < value < 1.0:
        raise ValueError(f"tol must lie in (0, 1) (a truncation probability), got {tol!r}")
    return value


def first_bad(values: np.ndarray, bad: np.ndarray):
    """The first entry where ``bad`` holds, and its index as a tuple of ints (for messages)."""
    i = np.unravel_index(np.flatnonzero(bad)[0], values.shape)
    return values[i], tuple(int(x) for x in i)


def is_concrete(*xs) -> bool:
    """Whether every array in ``xs`` is a concrete value (not traced): checks then run in
    Python before tracing, so compiled executables carry no host callbacks."""
    return not any(is_traced(x) for x in jax.tree.leaves(xs))


ArrayT = TypeVar("ArrayT", Array, np.ndarray)


def check_times(t: ArrayT, name: str = "times") -> ArrayT:
    """Error for negative or NaN times: in Python (naming the first bad entry) when ``t``
    is concrete, else through ``eqx.error_if``."""
    if is_concrete(t):
        values = np.asarray(t)
        bad = np.isnan(values) | (values < 0)
        if bad.any():
            value, i = first_bad(values, bad)
            raise ValueError(f"{name} must be non-negative and not NaN; got {value} at index {i}")
        return t
    return eqx.error_if(
        t, jnp.any(jnp.isnan(t) | (t < 0)), f"{name} must be non-negative and not NaN"
    )


def check_cap(last: ArrayLike, max_steps: int | None, what: ArrayLike, label: str) -> ArrayLike:
    """Check the last series index each observation needs (``last``) against a user cap
    ``max_steps`` (``None``: no cap). Concrete ``last``: a ValueError naming the first
    offending ``what`` (a time or step count), its index and the count needed; traced:
    an ``eqx.error_if`` on ``last``. Returns ``last``."""
    if max_steps is None:
        return last
    if is_concrete(last):
        values = np.asarray(last)
        bad = values > max_steps
        if bad.any():
            last_i, i = first_bad(values, bad)
            raise ValueError(
                f"{label} {np.asarray(what)[i]} (index {i}) needs "
                f"{int(last_i) + 1} series terms, more than max_steps={max_steps}: "
                "raise max_steps or pass max_steps=None (no cap)"
            )
        return last
    last = jnp.asarray(last)
    return eqx.error_if(
        last,
        jnp.any(last > max_steps),
        f"more than max_steps={max_steps} series terms are needed: raise max_steps or pass "
        "max_steps=None (no cap)",
    )
