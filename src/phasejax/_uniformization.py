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
``[mu - sqrt(2 L mu), mu + L/3 + sqrt(L^2/9 + 2 L mu)]``: the dropped Poisson mass is at
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

import math
from functools import partial

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jax.scipy.special import gammaln, xlogy
from jaxtyping import Array, Float, Int

from . import _sparse


def _float0(x):
    return np.zeros(np.shape(x), dtype=jax.dtypes.float0)


def _step(rate, diag, src, dst, lam, v):
    """One step of the uniformized chain on row vectors: ``v P = v - (M^T v) / Lambda``."""
    return v - _sparse.rmatvec(src, dst, rate, diag, v) / lam


def _block(max_steps: int) -> int:
    return max(1, math.isqrt(max_steps) + 1)


def _forward(rate, diag, proj, alpha, src, dst, lam, n_steps, max_steps):
    block = _block(max_steps)
    n, q = proj.shape
    coeffs = jnp.zeros((max_steps + 1, q), proj.dtype)
    ckpt = jnp.zeros((max_steps // block + 1, n), alpha.dtype)

    def body(carry):
        k, v, coeffs, ckpt = carry
        coeffs = coeffs.at[k].set(v @ proj)
        slot = k // block
        ckpt = ckpt.at[slot].set(jnp.where(k % block == 0, v, ckpt[slot]))
        return k + 1, _step(rate, diag, src, dst, lam, v), coeffs, ckpt

    init = (jnp.asarray(0, n_steps.dtype), alpha, coeffs, ckpt)
    _, _, coeffs, ckpt = jax.lax.while_loop(lambda c: c[0] <= n_steps, body, init)
    return coeffs, ckpt


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


def _series_bwd(max_steps, residuals, g):
    rate, diag, proj, alpha, src, dst, lam, n_steps, ckpt = residuals
    block = _block(max_steps)
    step = partial(_step, src=src, dst=dst, lam=lam)

    def one_block(carry):
        b, w, d_rate, d_diag, d_proj = carry

        def recompute(v, _):
            return step(rate, diag, v=v), v

        _, vs = jax.lax.scan(recompute, ckpt[b], None, length=block)

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
            back, (w, d_rate, d_diag, d_proj), jnp.arange(block), reverse=True
        )
        return b - 1, w, d_rate, d_diag, d_proj

    init = (n_steps // block, jnp.zeros_like(alpha), jnp.zeros_like(rate), jnp.zeros_like(diag), jnp.zeros_like(proj))
    _, w0, d_rate, d_diag, d_proj = jax.lax.while_loop(lambda c: c[0] >= 0, one_block, init)
    return d_rate, d_diag, d_proj, w0, _float0(src), _float0(dst), jnp.zeros_like(lam), _float0(n_steps)


series.defvjp(_series_fwd, _series_bwd)


def log_poisson(k: Array, mu: Array) -> Array:
    """``log Pois(k; mu)``, with ``Pois(0; 0) = 1``."""
    return xlogy(k, mu) - mu - gammaln(k + 1.0)


def truncation_points(mu: Array, tol: float, xnp=jnp) -> tuple[Array, Array]:
    """Left and right Poisson truncation points with each dropped tail at most ``tol / 2``.

    ``xnp`` is ``jax.numpy`` (traced ``mu``) or ``numpy`` (static sizes).
    """
    log_inv = math.log(2.0 / tol)
    left = xnp.floor(mu - xnp.sqrt(2.0 * log_inv * mu))
    right = xnp.ceil(mu + log_inv / 3.0 + xnp.sqrt(log_inv**2 / 9.0 + 2.0 * log_inv * mu))
    return xnp.maximum(left, 0.0).astype(xnp.int32), right.astype(xnp.int32)


def window_width(max_steps: int, tol: float) -> int:
    """Static window width covering ``[left, right]`` for every ``mu <= max_steps``."""
    left, right = truncation_points(np.float64(max_steps), tol, np)
    return int(min(max_steps + 1, int(right) - int(left) + 1))


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


def poisson_mix_log(
    coeffs: Float[Array, "K q"], mu: Float[Array, " t"], tol: float, batch_size: int = 4096
) -> Float[Array, "t q"]:
    """``log sum_k Pois(k; mu) c_k`` per observation, summing only its Poisson window.

    ``coeffs`` must be non-negative. Observations are processed in batches of
    ``batch_size`` (memory ``batch_size x window``), each batch rematerialised in
    the backward pass.
    """
    max_steps = coeffs.shape[0] - 1
    width = window_width(max_steps, tol)
    log_c = _safe_log(coeffs)
    log_factorial = gammaln(jnp.arange(max_steps + 1, dtype=mu.dtype) + 1.0)

    @jax.checkpoint
    def one(m):
        left, right = truncation_points(m, tol)
        ks = jnp.minimum(left + jnp.arange(width), max_steps)
        log_w = xlogy(ks.astype(m.dtype), m) - m - log_factorial[ks]
        terms = jnp.where((ks <= right)[:, None], log_w[:, None] + log_c[ks], -jnp.inf)
        return jax.nn.logsumexp(terms, axis=0)

    return jax.lax.map(one, mu, batch_size=min(batch_size, mu.shape[0]) or None)


def poisson_tail_mix(coeffs: Float[Array, "K q"], mu: Float[Array, " t"]) -> Float[Array, "t q"]:
    """``sum_k P(N > k; mu) c_k`` (occupancy integrals); dense over all ``k``."""
    ks = jnp.arange(coeffs.shape[0], dtype=mu.dtype)
    tails = jax.scipy.special.gammainc(ks[None, :] + 1.0, mu[:, None])
    return tails @ coeffs


def check_times(t: Array, name: str = "times") -> Array:
    """Error (under jit too) for negative or NaN times."""
    return eqx.error_if(t, jnp.any(jnp.isnan(t) | (t < 0)), f"{name} must be non-negative and not NaN")
