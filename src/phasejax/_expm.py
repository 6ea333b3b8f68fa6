"""Transient quantities by nonnegative scaling and squaring: stiff models, large ``Lambda t``.

Uniformization costs ``Lambda t`` sparse steps, ``Lambda`` the largest exit rate; with
rates spanning many orders of magnitude and long times that is ``10^6 .. 10^10`` steps.
Here ``E(t) = exp(S t)`` is built densely in ``O(n^3 (K + log2(Lambda t)))`` per time:

1. ``h = t / 2^s`` with ``s = ceil(log2(Lambda t))``, so ``x = Lambda h <= 1``, and
   ``E(h) = sum_{k<=K} Pois(k; x) P^k`` with ``P = I - M / Lambda >= 0`` (``K = 18``
   drops less than ``1 / 19!``), evaluated by Horner's rule.
2. ``s`` squarings ``E(2h) = E(h)^2``.

Every term is nonnegative, so no step cancels and tiny entries (far tails) keep their
relative accuracy; ``E`` is stored divided by ``exp(c)`` (max entry 1), so nothing
underflows. Squaring alone would still lose the slow modes: a state left at rate
``1e-4`` beside one left at ``1e4`` has ``E_ii(h) = 1 - 1e-8`` at the first step, held
to ``eps`` *absolutely*, and ``s`` squarings multiply that error by ``2^s ~ Lambda t``
(``scipy.linalg.expm``, Padé with scaling and squaring, loses ``1e-9`` this way on
stiff cyclic models; ``jax.scipy.linalg.expm`` stops at 16 squarings and returns NaN).
So the absorption probabilities by time ``h``, ``r(h) = 1 - E(h) 1 = int_0^h E(u) s du``,
are carried separately, from nonnegative terms only:

    r(h)   = sum_k P(N_x > k) / Lambda  P^k s,        r(2h) = r(h) + E(h) r(h),

and each row of ``E`` whose ``r_i < 1/2`` (so ``1 - r_i`` is exact to rounding) is
rescaled to sum to ``1 - r_i``: the slow modes are then held through their absorption
probabilities, not through ``1 - E_ii``. Measured against mpmath (40 digits) on random
stiff cyclic models (rates 1e-4 .. 1e4, ``Lambda t`` up to 1e9): relative error
``<= 2e-13`` in densities, survival, cdf and state probabilities.

The accumulated occupancy ``Q(t) = int_0^t E(u) du`` doubles the same way,
``Q(2h) = Q(h) + E(h) Q(h)`` (the Van Loan block of ``[[S, I], [0, 0]]`` without forming
it), from ``Q(h) = sum_k P(N_x > k) / Lambda P^k``.

Results per time: ``log alpha E s`` (density), ``alpha E 1`` (survival),
``defect + alpha r`` (cdf), ``alpha E`` (state probabilities), ``alpha Q`` (occupancy).
Gradients by automatic differentiation through the fixed number of steps (``Lambda``
under ``stop_gradient``, as for uniformization: the exact result does not depend on it).

**Cost.** Per time ``(K + s) n^3`` multiply-adds (occupancy: twice), memory ``n^2`` per
time in flight (times are processed in chunks); reverse mode keeps the ``n^2`` matrix of
every squaring step. Dense: meant for ``n <= EXPM_LIMIT``; beyond, uniformization (its
memory is bounded; a Taylor action in the style of Al-Mohy and Higham would also cost
``~ ||S|| t`` matrix-vector products on a stiff model, so nothing would be gained).
"""

from __future__ import annotations

from typing import NamedTuple

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float, Int

from . import _sparse
from ._uniformization import _log_pois, right_point, safe_log

TERMS = 18  # Horner terms of E(h): Pois(k; x <= 1) summed to k = 18 (tail < 1 / 19!)
EXPM_LIMIT = 1024  # largest n for the dense method (n^2 memory per time in flight)
MAX_SQUARINGS = 64  # under tracing (unknown Lambda t): Lambda t up to 2^64
# "auto" considers the dense method from ~1e6 series terms on: there the series' rounding
# error (measured growing with Lambda t: 2e-11 at 4.5e4 terms on Kingman n=10, 2e-10 at
# 1.7e5 on a stiff cyclic model) nears 1e-10, and its run time the compile time of a kernel
AUTO_TERMS = 2**20
KINDS = ("logpdf", "sf", "cdf", "state", "occupancy")
METHODS = ("auto", "uniformization", "expm")


class Plan(NamedTuple):
    """Static description of a dense evaluation (hashable).

    - `kind`: one of `KINDS`.
    - `squarings`: squarings per time (a multiple of 16; all run, and a time needing fewer
      keeps its own result by a mask).
    - `chunk`: times evaluated together (bounds memory at ``chunk x n^2`` per matrix).
    - `checked`: planned from concrete ``Lambda t`` (else the kernel checks the bound).
    """

    kind: str
    squarings: int
    chunk: int
    checked: bool


def make_plan(kind: str, n: int, n_times: int, mu_max: float | None) -> Plan:
    """The plan for ``n`` states and ``n_times`` times with largest ``Lambda t = mu_max``
    (``None`` when traced: `MAX_SQUARINGS`). Squarings come in multiples of 16 so that
    few executables serve every time range."""
    if mu_max is None:
        squarings = MAX_SQUARINGS
    else:
        needed = int(squarings_needed(np.asarray(mu_max)))
        squarings = min(MAX_SQUARINGS, 16 * max(1, -(-needed // 16)))
    chunk = max(1, min(n_times, 2**20 // (n * n)))
    return Plan(kind, squarings, chunk, mu_max is not None)


def squarings_needed(mu, xnp=np):
    """``s = ceil(log2(Lambda t))`` (0 for ``Lambda t <= 1``); ``xnp``: numpy on the
    host, ``jax.numpy`` in a kernel."""
    return xnp.ceil(xnp.log2(xnp.maximum(mu, 1.0)))


def choose(method: str, kind: str, n: int, edges: int, mu: np.ndarray | None, tol: float) -> str:
    """The method for a transient quantity: ``"uniformization"`` or ``"expm"``.

    ``"auto"`` picks ``"expm"`` only with concrete ``Lambda t`` values ``mu`` (eager
    calls; ``None`` when ``t`` or the rates are traced) for which `prefer` holds. Under
    tracing it keeps uniformization: ``Lambda t`` is unknown there, and choosing at run
    time (``lax.cond``) would compile both kernels, and under ``vmap`` run both. Pass
    ``method="expm"`` explicitly for stiff models under ``jit``, ``grad`` or ``vmap``.
    """
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    if method == "expm" and kind not in KINDS:
        raise ValueError(f"method='expm' does not compute {kind!r}; use 'uniformization'")
    if method != "auto":
        return method
    dense = mu is not None and kind in KINDS and prefer(n, edges, mu, tol)
    return "expm" if dense else "uniformization"


def prefer(n: int, edges: int, mu: np.ndarray, tol: float) -> bool:
    """The ``"auto"`` rule on concrete ``Lambda t`` values ``mu``: the dense method when
    the series would need at least `AUTO_TERMS` terms and its estimated cost is lower.

    Estimates (measured on a 2-core CPU in float64, `benchmarks/bench_stiff.py`):
    uniformization ``max(100, 5 (edges + n))`` ns per term of the longest series; the
    dense method ``20 us`` per time plus ``0.1 ns`` per multiply-add,
    ``(TERMS + s_max) n^3`` per time."""
    if n > EXPM_LIMIT or mu.size == 0:
        return False
    mu_max = float(np.max(mu))
    terms = float(right_point(mu_max, tol, np))
    if terms < AUTO_TERMS:
        return False
    series = max(100.0, 5.0 * (edges + n)) * terms
    per_time = 2e4 + 0.1 * (TERMS + float(squarings_needed(mu_max))) * n**3
    return mu.size * per_time < series


def _poisson_weights(x: Float[Array, ""], count: int) -> Float[Array, " count"]:
    """``Pois(j; x)`` for ``j = 0 .. count - 1`` (``x`` in ``[0, 1]``)."""
    j = jnp.arange(count, dtype=x.dtype)
    # j = 0 apart: its weight e^{-x} keeps its derivative at x = 0
    return jnp.where(j == 0, jnp.exp(-x), jnp.exp(_log_pois(j, x)))


def _horner(coeffs: Float[Array, " k"], p: Float[Array, "n n"], base: Array) -> Array:
    """``sum_k coeffs[k] P^k base`` by Horner's rule (``base``: the identity or a vector)."""

    def body(acc, c):
        return p @ acc + c * base, None

    acc, _ = jax.lax.scan(body, coeffs[-1] * base, coeffs[:-1][::-1])
    return acc


def _fix_rows(e: Array, log_scale: Array, r: Array) -> Array:
    """Rows of ``E = exp(log_scale) e`` with ``r_i < 1/2`` rescaled to sum to ``1 - r_i``."""
    rows = jnp.sum(e, axis=1) * jnp.exp(log_scale)
    fix = (r < 0.5) & (rows > 0)
    return e * jnp.where(fix, (1.0 - r) / jnp.where(fix, rows, 1.0), 1.0)[:, None]


def _normalise(e: Array, log_scale: Array) -> tuple[Array, Array]:
    top = jnp.max(e)
    top = jnp.where(top > 0, top, 1.0)
    return e / top, log_scale + jnp.log(top)


def _one_time(plan: Plan, p, exit_, alpha, defect, lam, t):
    """``log`` of the requested quantity (shape ``(q,)``) at one time ``t``."""
    n = p.shape[0]
    dtype = p.dtype
    mu = lam * t
    s = squarings_needed(jax.lax.stop_gradient(mu), jnp)
    x = mu * jnp.exp2(-s)
    extra = TERMS + 16  # P(N_x > k) for k <= TERMS from the weights beyond it
    w = _poisson_weights(x, extra)
    tails = (jnp.cumsum(w[::-1])[::-1])[1 : TERMS + 2] / lam  # P(N_x > k) / Lambda
    eye = jnp.eye(n, dtype=dtype)
    r = _horner(tails, p, exit_)
    e, log_scale = _normalise(_horner(w[: TERMS + 1], p, eye), jnp.zeros((), dtype))
    e = _fix_rows(e, log_scale, r)
    occupancy = plan.kind == "occupancy"
    q = _horner(tails, p, eye) if occupancy else None

    def square(state, i):
        e, log_scale, r, q = state
        grow = jnp.exp(log_scale)
        r2 = r + grow * (e @ r)
        q2 = q + grow * (e @ q) if occupancy else None
        e2, log2 = _normalise(e @ e, 2.0 * log_scale)
        e2 = _fix_rows(e2, log2, r2)
        new = (e2, log2, r2, q2)
        return jax.tree.map(lambda a, b: jnp.where(i < s, a, b), new, state), None

    (e, log_scale, r, q), _ = jax.lax.scan(
        square, (e, log_scale, r, q), jnp.arange(plan.squarings, dtype=dtype)
    )
    if plan.kind == "logpdf":
        return (safe_log(alpha @ e @ exit_) + log_scale)[None]
    if plan.kind == "sf":
        return (safe_log(jnp.sum(alpha @ e)) + log_scale)[None]
    if plan.kind == "cdf":
        return safe_log(defect + alpha @ r)[None]
    if plan.kind == "state":
        return safe_log(alpha @ e) + log_scale
    return safe_log(alpha @ q)


def transient(
    plan: Plan,
    rate: Float[Array, " e"],
    diag: Float[Array, " n"],
    alpha: Float[Array, " n"],
    exit_: Float[Array, " n"],
    src: Int[Array, " e"],
    dst: Int[Array, " e"],
    lam: Float[Array, ""],
    t: Float[Array, " t"],
) -> Float[Array, "t q"]:
    """``log`` of ``plan.kind`` at each (finite) time in ``t``, shape ``(t, q)`` like
    `phasejax._uniformization.mix`: ``q = 1`` for densities and probabilities, ``n`` for
    state probabilities and occupancies (module doc). ``lam >= max(diag)``.

    Unless planned from the concrete ``Lambda t``, ``Lambda t`` above
    ``2^plan.squarings`` raises through ``eqx.error_if``."""
    n = diag.shape[0]
    p = jnp.eye(n, dtype=diag.dtype) - _sparse.dense_matrix(src, dst, rate, diag) / lam
    defect = 1.0 - jnp.sum(alpha)
    if not plan.checked:
        t = eqx.error_if(
            t,
            jnp.any(lam * t > 2.0**plan.squarings),
            f"method='expm' handles Lambda t up to 2^{plan.squarings}",
        )

    def one(ti):
        return _one_time(plan, p, exit_, alpha, defect, lam, ti)

    count = t.shape[0]
    # whole chunks only: a remainder would be a second copy of the kernel to compile
    padded = jnp.concatenate([t, jnp.zeros(((-count) % plan.chunk,), t.dtype)])
    return jax.lax.map(one, padded, batch_size=plan.chunk)[:count]
