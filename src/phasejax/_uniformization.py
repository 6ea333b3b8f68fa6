"""Uniformization: transient distributions by one forward series.

With ``Lambda >= max_i d_i`` the uniformized chain ``P = I - M / Lambda`` (``M = -S``)
gives ``exp(S t) = sum_k Pois(k; Lambda t) P^k``. One forward series
``v_0 = alpha``, ``v_{k+1} = v_k P`` and its projections ``c_k = v_k @ proj`` serve
every time point:

    f(t)    = sum_k Pois(k; Lambda t) (v_k . s)          (density; s = exit rates)
    P(T>t)  = sum_k Pois(k; Lambda t) (v_k . 1)          (survival)

A discrete model is the case ``Lambda = 1`` with no Poisson mixing (``P = T``).

Truncation. For ``mu = Lambda t`` the Poisson tails obey (Bernstein)
``P(N >= mu + x) <= exp(-x^2 / (2 (mu + x / 3)))`` and ``P(N <= mu - x) <= exp(-x^2 / (2 mu))``.
With ``L = log(2 / tol)`` each observation sums only the window
``[mu - sqrt(2 L mu), mu + L/3 + sqrt(L^2/9 + 2 L mu)]`` (observations sorted and batched
so that a batch shares one loop over its windows): the dropped Poisson mass is at
most ``tol``, so the absolute error is at most ``tol * max_k c_k`` (``tol`` for
probabilities, ``tol * max exit rate`` for densities). The series runs until the
largest right end; past ``max_steps`` it raises through ``eqx.error_if``.

Gradients. The series is a ``custom_vjp``: the backward pass runs the adjoint
recursion ``w_k = proj g_k + P w_{k+1}`` backwards, recomputing the forward vectors
block by block from checkpoints stored every ``B = ceil(sqrt(max_steps + 1))`` steps.
Memory: ``O((max_steps / B + B) * n) = O(sqrt(max_steps) * n)``, never steps x states.
``Lambda`` is held under ``stop_gradient``: the exact sum does not depend on it.
"""

from __future__ import annotations

import functools
import math
from functools import partial

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jax.scipy.special import gammaln
from jaxtyping import Array, Float, Int

from . import _sparse


def _float0(x):
    return np.zeros(np.shape(x), dtype=jax.dtypes.float0)


def _step(rate, diag, src, dst, lam, v):
    """One step of the uniformized chain on row vectors: ``v P = v - (M^T v) / Lambda``."""
    return v - _sparse.rmatvec(src, dst, rate, diag, v) / lam


UNROLL = 8  # series steps per loop iteration (amortises the per-iteration overhead)


def _block(max_steps: int) -> int:
    """Checkpoint spacing: about sqrt(max_steps), a multiple of ``UNROLL``."""
    return UNROLL * max(1, -(-(math.isqrt(max_steps) + 1) // UNROLL))


def _forward(rate, diag, proj, alpha, src, dst, lam, n_steps, max_steps):
    block = _block(max_steps)
    n, q = proj.shape
    coeffs = jnp.zeros((max_steps + 1 + UNROLL, q), proj.dtype)
    ckpt = jnp.zeros((max_steps // block + 1, n), alpha.dtype)

    def body(carry):
        k, v, coeffs, ckpt = carry
        slot = k // block
        ckpt = ckpt.at[slot].set(jnp.where(k % block == 0, v, ckpt[slot]))
        rows = []
        for u in range(UNROLL):
            rows.append(jnp.where(k + u <= n_steps, v @ proj, 0.0))
            v = _step(rate, diag, src, dst, lam, v)
        coeffs = jax.lax.dynamic_update_slice_in_dim(coeffs, jnp.stack(rows), k, axis=0)
        return k + UNROLL, v, coeffs, ckpt

    init = (jnp.asarray(0, n_steps.dtype), alpha, coeffs, ckpt)
    _, _, coeffs, ckpt = jax.lax.while_loop(lambda c: c[0] <= n_steps, body, init)
    return coeffs[: max_steps + 1], ckpt


@partial(jax.custom_vjp, nondiff_argnums=(8,))
def series(
    rate: Float[Array, " e"],
    diag: Float[Array, " n"],
    proj: Float[Array, "n q"],
    alpha: Float[Array, " n"],
    src: Int[Array, " e"],
    dst: Int[Array, " e"],
    lam: Float[Array, ""],
    n_steps: Int[Array, ""],
    max_steps: int,
) -> Float[Array, "K q"]:
    """Projections ``c_k = (alpha P^k) @ proj`` for ``k = 0..n_steps`` (rows past it are 0).

    ``P = I - M / lam`` with ``M = diag(diag) - A``; output shape ``(max_steps + 1, q)``.
    Differentiable in ``rate``, ``diag``, ``proj`` and ``alpha`` (adjoint pass with
    checkpoints); ``lam`` and ``n_steps`` are treated as constants.
    """
    return _forward(rate, diag, proj, alpha, src, dst, lam, n_steps, max_steps)[0]


def _series_fwd(rate, diag, proj, alpha, src, dst, lam, n_steps, max_steps):
    coeffs, ckpt = _forward(rate, diag, proj, alpha, src, dst, lam, n_steps, max_steps)
    return coeffs, (rate, diag, proj, alpha, src, dst, lam, n_steps, ckpt)


def _backward(rate, diag, proj, alpha, src, dst, lam, n_steps, ckpt, g, max_steps):
    """The adjoint recursion ``w_k = proj g_k + P w_{k+1}``, backwards from the last
    step, recomputing the forward vectors block by block from the checkpoints; returns
    the cotangents of ``rate``, ``diag``, ``proj`` and ``alpha`` (``= w_0``)."""
    block = _block(max_steps)
    step = partial(_step, src=src, dst=dst, lam=lam)

    def one_block(carry):
        b, w, d_rate, d_diag, d_proj = carry

        def recompute(v, _):
            return step(rate, diag, v=v), v

        _, vs = jax.lax.scan(recompute, ckpt[b], None, length=block, unroll=UNROLL)

        def back(carry, j):
            w_next, d_rate, d_diag, d_proj = carry
            k = b * block + j
            v = vs[j]
            _, vjp = jax.vjp(lambda r, d, x: step(r, d, v=x), rate, diag, v)
            dr, dd, dv = vjp(w_next)
            has_next = k < n_steps
            active = k <= n_steps
            g_k = g[jnp.minimum(k, max_steps)]
            w = proj @ g_k + jnp.where(has_next, dv, 0.0)
            return (
                jnp.where(active, w, w_next),
                d_rate + jnp.where(has_next, dr, 0.0),
                d_diag + jnp.where(has_next, dd, 0.0),
                d_proj + jnp.where(active, jnp.outer(v, g_k), 0.0),
            ), None

        (w, d_rate, d_diag, d_proj), _ = jax.lax.scan(
            back, (w, d_rate, d_diag, d_proj), jnp.arange(block), reverse=True, unroll=UNROLL
        )
        return b - 1, w, d_rate, d_diag, d_proj

    init = (
        n_steps // block,
        jnp.zeros_like(alpha),
        jnp.zeros_like(rate),
        jnp.zeros_like(diag),
        jnp.zeros_like(proj),
    )
    _, w0, d_rate, d_diag, d_proj = jax.lax.while_loop(lambda c: c[0] >= 0, one_block, init)
    return d_rate, d_diag, d_proj, w0


@functools.cache
def _batchable_backward(max_steps: int):
    """:func:`_backward` with a vmap rule: on CPU a batch (e.g. of parameter vectors)
    runs one chain after another (``lax.map``), which there is about twice as fast as
    vmapping the loop's gathers and scatters; on other platforms (GPU, TPU) it is
    vmapped."""

    @jax.custom_batching.custom_vmap
    def backward(*args):
        return _backward(*args, max_steps)

    @backward.def_vmap
    def rule(axis_size, in_batched, *args):
        def merge(batched_values):
            values = iter(batched_values)
            return [next(values) if b else a for a, b in zip(args, in_batched)]

        batched_args = [a for a, b in zip(args, in_batched) if b]

        def sequential(*xs):
            return jax.lax.map(lambda x: _backward(*merge(x), max_steps), list(xs))

        def vectorized(*xs):
            return jax.vmap(lambda *x: _backward(*merge(x), max_steps))(*xs)

        out = jax.lax.platform_dependent(*batched_args, cpu=sequential, default=vectorized)
        return out, (True,) * len(out)

    return backward


def _series_bwd(max_steps, residuals, g):
    rate, diag, proj, alpha, src, dst, lam, n_steps, ckpt = residuals
    d_rate, d_diag, d_proj, w0 = _batchable_backward(max_steps)(
        rate, diag, proj, alpha, src, dst, lam, n_steps, ckpt, g
    )
    return (
        d_rate,
        d_diag,
        d_proj,
        w0,
        _float0(src),
        _float0(dst),
        jnp.zeros_like(lam),
        _float0(n_steps),
    )


series.defvjp(_series_fwd, _series_bwd)


def truncation_points(mu: Array, tol: float, xnp=jnp) -> tuple[Array, Array]:
    """Left and right Poisson truncation points with each dropped tail at most ``tol / 2``.

    ``xnp`` is ``jax.numpy`` (traced ``mu``) or ``numpy`` (static sizes).
    """
    log_inv = math.log(2.0 / tol)
    left = xnp.floor(mu - xnp.sqrt(2.0 * log_inv * mu))
    right = xnp.ceil(mu + log_inv / 3.0 + xnp.sqrt(log_inv**2 / 9.0 + 2.0 * log_inv * mu))
    return xnp.maximum(left, 0.0).astype(xnp.int32), right.astype(xnp.int32)


def steps_needed(mu_max: Array, tol: float, max_steps: int) -> Int[Array, ""]:
    """Series length for the largest ``mu``; raises if it exceeds ``max_steps``."""
    _, right = truncation_points(mu_max, tol)
    return eqx.error_if(
        right,
        right > max_steps,
        "uniformization needs more than max_steps terms for these times: raise max_steps",
    )


def _safe_log(x):
    positive = x > 0
    return jnp.where(positive, jnp.log(jnp.where(positive, x, 1.0)), -jnp.inf)


CHUNK = 32  # Poisson terms handled per loop step
BATCH = 256  # observations per batch (sorted by mu, so a batch shares one window)


def _windows(log_ct, log_factorial, mu, start, stop):
    """Per-observation windows ``k = start_i .. stop_i`` (inclusive), walked in chunks.

    ``log_ct`` is ``log c`` transposed, shape ``(q, K)`` (gathers along the last axis
    are several times faster than gathering rows). Returns the number of chunks (enough
    for the widest window of the batch; 0 when every window is empty) and
    ``terms(j, shift)``: for the ``j``-th chunk of ``CHUNK`` terms of each observation's
    own window, the indices ``k`` ``(batch, CHUNK)``, a mask, the log Poisson weights,
    and ``log Pois(k; mu_i) + log c_{k+shift}`` of shape ``(q, batch, CHUNK)`` (``-inf``
    outside the window). Each observation walks only its own window, so a batch costs
    ``BATCH x max_i width_i`` terms, not the union of its windows.
    """
    max_steps = log_ct.shape[1] - 1
    width = jnp.max(stop - start + 1, initial=0)
    n_chunks = (width + CHUNK - 1) // CHUNK
    log_mu = _safe_log(mu)[:, None]

    def terms(j, shift=0):
        ks = start[:, None] + j * CHUNK + jnp.arange(CHUNK)
        kc = jnp.minimum(ks, max_steps)
        log_w = jnp.where(mu[:, None] > 0, ks * log_mu, jnp.where(ks == 0, 0.0, -jnp.inf))
        log_w = log_w - mu[:, None] - log_factorial[kc]
        inside = (ks <= stop[:, None]) & (ks <= max_steps)
        log_coeff = jnp.take(log_ct, jnp.minimum(kc + shift, max_steps), axis=1, mode="clip")
        return kc, inside, log_w, jnp.where(inside, log_w + log_coeff, -jnp.inf)

    return n_chunks, terms


def _stream_logsumexp(n_chunks, term_fn, shape, dtype):
    """``logsumexp`` over the last axis of all chunks, with a running maximum."""

    def body(j, carry):
        m, acc = carry
        t = term_fn(j)
        new_m = jnp.maximum(m, jnp.max(t, axis=-1))
        safe_m = jnp.where(jnp.isfinite(new_m), new_m, 0.0)
        acc = acc * jnp.exp(jnp.where(jnp.isfinite(m), m - safe_m, -jnp.inf)) + jnp.sum(
            jnp.exp(t - safe_m[..., None]), axis=-1
        )
        return new_m, acc

    init = (jnp.full(shape, -jnp.inf, dtype), jnp.zeros(shape, dtype))
    m, acc = jax.lax.fori_loop(0, n_chunks, body, init)
    return jnp.where(acc > 0, jnp.where(jnp.isfinite(m), m, 0.0) + _safe_log(acc), -jnp.inf)


def _to_batches(x, order, fill):
    """Sort per-observation ``x`` by ``order`` and cut it into batches of ``BATCH``,
    padding with ``fill`` (an array of x's trailing shape, or a scalar)."""
    pad = (-x.shape[0]) % BATCH
    sorted_x = x[order]
    padding = jnp.broadcast_to(fill, (pad,) + x.shape[1:]).astype(x.dtype)
    return jnp.concatenate([sorted_x, padding]).reshape((-1, BATCH) + x.shape[1:])


def _batched(mu):
    """Sort ``mu`` and cut it into batches (padding repeats the largest ``mu``)."""
    order = jnp.argsort(mu)
    return order, _to_batches(mu, order, jnp.max(mu))


def _unbatch(values, order, n):
    """Undo :func:`_batched` for per-observation ``values`` of shape (batches, BATCH, ...)."""
    flat = values.reshape((-1,) + values.shape[2:])[:n]
    return jnp.zeros_like(flat).at[order].set(flat)


def _log_factorials(max_steps, dtype):
    return gammaln(jnp.arange(max_steps + 1, dtype=dtype) + 1.0)


def _relative_left(log_ct, log_f, mu, left, tol):
    """Left truncation points that also bound the dropped terms *relative* to the result.

    The terms left of ``L`` add at most ``P(N < L) max_k c_k`` (Bernstein:
    ``P(N < mu - x) <= exp(-x^2 / (2 mu))``); where that could exceed ``tol * f`` (far
    tails, where ``f`` is tiny but the early ``c_k`` are not) the window is widened.
    ``log_f`` has shape ``(q, batch)``.
    """
    log_max = jnp.max(log_ct, axis=1)[:, None]  # (q, 1)
    gap = jnp.max(jnp.where(jnp.isfinite(log_max), log_max - log_f, -jnp.inf), axis=0)
    x = jnp.sqrt(2.0 * mu * jnp.maximum(gap + math.log(2.0 / tol), 0.0))
    wide = jnp.where(jnp.isfinite(x), jnp.maximum(jnp.floor(mu - x), 0.0), 0.0).astype(left.dtype)
    return jnp.minimum(left, wide)


def _log_coeffs(coeffs, dtype):
    """``log c`` transposed to ``(q, K)``, and ``log k!`` for ``k = 0..K-1``."""
    return _safe_log(coeffs).T, _log_factorials(coeffs.shape[0] - 1, dtype)


def _mix_forward(coeffs, mu, tol):
    """Results per observation, and what the backward pass reuses: the sort order, the
    batches of ``mu`` and the windows ``[left, right]`` used (``None`` without data)."""
    if mu.shape[0] == 0:
        return jnp.zeros((0, coeffs.shape[1]), coeffs.dtype), None
    log_ct, log_factorial = _log_coeffs(coeffs, mu.dtype)
    order, batches = _batched(mu)
    shape = (coeffs.shape[1], BATCH)

    def mix(mu_b, start, stop):
        n_chunks, terms = _windows(log_ct, log_factorial, mu_b, start, stop)
        return _stream_logsumexp(n_chunks, lambda j: terms(j)[3], shape, coeffs.dtype)

    def one_batch(mu_b):
        left, right = truncation_points(mu_b, tol)
        first = mix(mu_b, left, right)
        wide = _relative_left(log_ct, first, mu_b, left, tol)
        # the widened part [wide, left) only: no chunks at all where nothing widened
        # (no lax.cond, which vmap would turn into evaluating both branches)
        out = jnp.logaddexp(first, mix(mu_b, wide, left - 1))
        return out.T, (wide, right)

    out, windows = jax.lax.map(one_batch, batches)
    return _unbatch(out, order, mu.shape[0]), (order, batches, windows)


@partial(jax.custom_vjp, nondiff_argnums=(2,))
def poisson_mix_log(
    coeffs: Float[Array, "K q"], mu: Float[Array, " t"], tol: float
) -> Float[Array, "t q"]:
    """``log sum_k Pois(k; mu_i) c_k`` for every observation, summing only its Poisson window.

    Observations are sorted by ``mu`` and processed in batches of 256 whose loop walks
    each observation's own window, so the cost is about ``sum_i width(mu_i)``
    with ``width(mu) ~ 2 sqrt(2 log(2/tol) mu)`` — never a dense times x steps matrix.
    Where the default window could drop terms that matter relative to the result (far
    tails), the window is widened to the left (:func:`_relative_left`), so small values
    keep their relative accuracy. ``coeffs`` must be non-negative. Reverse mode (a
    custom VJP over the same windows) is exact in ``coeffs`` and in ``mu``
    (``d/dmu = sum_k Pois(k; mu)(c_{k+1} - c_k)``).
    """
    return _mix_forward(coeffs, mu, tol)[0]


def _mix_fwd(coeffs, mu, tol):
    out, reuse = _mix_forward(coeffs, mu, tol)
    return out, (coeffs, mu, out, reuse)


def _mix_bwd(tol, residuals, g):
    coeffs, mu, log_f, reuse = residuals
    if reuse is None:  # no observations
        return jnp.zeros_like(coeffs), jnp.zeros_like(mu)
    order, batches, windows = reuse
    log_ct, log_factorial = _log_coeffs(coeffs, mu.dtype)
    finite = jnp.isfinite(log_f)
    # cotangent per observation scaled by 1 / f (0 where f = 0)
    scale = jnp.where(finite, g * jnp.exp(-jnp.where(finite, log_f, 0.0)), 0.0)
    batched = [_to_batches(x, order, 0.0) for x in (scale, g, log_f)]

    def one_batch(d_ct, batch):
        mu_b, scale_i, g_i, log_f_i, (start, stop) = batch
        n_chunks, terms = _windows(log_ct, log_factorial, mu_b, start, stop)

        def body(j, d_ct):
            kc, inside, log_w, _ = terms(j)
            w = jnp.where(inside, jnp.exp(log_w), 0.0)  # (BATCH, CHUNK)
            return d_ct.at[:, kc].add(w[None] * scale_i.T[:, :, None], mode="promise_in_bounds")

        d_ct = jax.lax.fori_loop(0, n_chunks, body, d_ct)
        log_shifted = _stream_logsumexp(
            n_chunks, lambda j: terms(j, shift=1)[3], log_f_i.T.shape, log_f_i.dtype
        ).T
        finite_i = jnp.isfinite(log_f_i)
        ratio = jnp.exp(log_shifted - jnp.where(finite_i, log_f_i, 0.0))
        d_mu = jnp.sum(jnp.where(finite_i, g_i * (ratio - 1.0), 0.0), axis=-1)
        return d_ct, d_mu

    d_ct, d_mu = jax.lax.scan(one_batch, jnp.zeros_like(coeffs.T), (batches, *batched, windows))
    return d_ct.T, _unbatch(d_mu, order, mu.shape[0])


poisson_mix_log.defvjp(_mix_fwd, _mix_bwd)


def poisson_tail_mix(coeffs: Float[Array, "K q"], mu: Float[Array, " t"]) -> Float[Array, "t q"]:
    """``sum_k P(N > k; mu) c_k`` (occupancy integrals); dense over all ``k``."""
    ks = jnp.arange(coeffs.shape[0], dtype=mu.dtype)
    tails = jax.scipy.special.gammainc(ks[None, :] + 1.0, mu[:, None])
    return tails @ coeffs


def check_times(t: Array, name: str = "times") -> Array:
    """Error (under jit too) for negative or NaN times."""
    return eqx.error_if(
        t, jnp.any(jnp.isnan(t) | (t < 0)), f"{name} must be non-negative and not NaN"
    )
