"""Occupancies of one panmictic lineage pool by an exact change of time.

When every lineage always shares one deme, every state space of the sample (lineage or
block counting) has generator ``c(t) Q_j`` in epoch ``j``: ``Q_j`` its coalescent with
pair rate 1 in the deme that holds the lineages, ``c(t)`` that deme's pair coalescence
rate. In the hazard ``lambda = int_0^t c`` the chain is homogeneous, so with
``w(lambda) = dt / dlambda = 1 / c(t(lambda))`` the occupancy over an epoch of total
hazard ``H`` is ``int_0^H pi e^{Q lambda} w(lambda) dlambda``. Constant sizes (``w``
constant) need ``e^{Q H}`` and ``Psi_0(H) = int_0^H e^{Q v} dv`` only: exact. Growing or
shrinking sizes are cut into ``K`` sub-intervals of one hazard ``delta = H / K``, which
share their blocks ``E = e^{Q delta}`` and
``Psi_p = int_0^delta e^{Q v} (delta - v)^p / p! dv``, and ``w`` is replaced by its
Taylor polynomial of order ``P`` about each sub-interval's end:
``sum_p (-1)^p w^(p)(lambda_end) pi Psi_p``. The chain itself is integrated exactly; the
only error is the Taylor remainder of the positive weight, so every occupancy (and every
positive combination: E[T_k], SFS entries) has relative error at most ``x^(P+1) / (1 - x)``
with ``x`` the largest change of ``log N`` (linear sizes) or of ``N`` relative to its
smaller value (exponential) over one sub-interval: an a priori bound.

The blocks come from a Taylor series at ``delta / 2^s`` (norm at most 1/2) and ``s``
doublings, ``E(2d) = E(d)^2`` and ``Psi_p(2d) = sum_{q <= p} d^(p-q) / (p-q)! Psi_q(d)
+ E(d) Psi_p(d)`` (sums of non-negative matrices: no cancellation). Their derivative in
``delta`` is closed: ``E' = Q E``, ``Psi_0' = E``, ``Psi_p' = Psi_(p-1)`` (a custom JVP,
so gradients cost one matrix product per epoch).
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float

from .. import _linalg
from .._piecewise import open_epoch_transient

ORDER = 4  # Taylor order P of the weight in growing or shrinking epochs
_TERMS = 16  # Taylor terms of the blocks at norm <= 1/2 (0.5^17 / 17! ~ 2e-20)


def steps_for(span: float, tol: float) -> int:
    """Sub-intervals ``K`` so that ``x = span / K`` meets ``x^(P+1) / (1 - x) <= tol``."""
    if span == 0.0:
        return 1
    x = min(0.5, (tol / 2.0) ** (1.0 / (ORDER + 1)))
    return max(1, math.ceil(span / x))


def blocks(q: np.ndarray, order: int):
    """``delta -> (E, Psi_0, ..., Psi_order)`` for the constant generator ``q``, stacked
    ``(order + 2, V, V)``, differentiable in ``delta`` (see the module docstring)."""
    size = q.shape[0]
    norm = float(np.max(np.sum(np.abs(q), axis=0))) or 1.0
    fact = np.array([math.factorial(p) for p in range(order + 1)], np.float64)

    def taylor(d):
        # E = sum_k (Q d)^k / k!, Psi_p = sum_k Q^k d^(k+p+1) / (k+p+1)!
        powers = [jnp.eye(size, dtype=d.dtype)]
        for _ in range(_TERMS):
            powers.append(powers[-1] @ q)
        # entry i: E (i = 0) or Psi_(i-1), whose k-th term is Q^k d^(k+i) / (k+i)!
        return jnp.stack(
            [
                sum(
                    powers[k] * (d ** (k + i) / float(math.factorial(k + i)))
                    for k in range(_TERMS + 1)
                )
                for i in range(order + 2)
            ]
        )

    def double(_, carry):
        stack, d = carry
        e, psi = stack[0], stack[1:]
        new = [e @ e]
        for p in range(order + 1):
            lower = sum(d ** (p - q_) / fact[p - q_] * psi[q_] for q_ in range(p + 1))
            new.append(lower + e @ psi[p])
        return jnp.stack(new), 2.0 * d

    # q enters as a numpy constant at each use: a closed-over array would leak out of the
    # trace that first created it
    @jax.custom_jvp
    def at(delta):
        s = jnp.maximum(0, jnp.ceil(jnp.log2(jnp.maximum(norm * delta, 1e-300) / 0.5)))
        s = s.astype(jnp.int32)
        small = delta / 2.0**s
        stack, _ = jax.lax.fori_loop(0, s, double, (taylor(small), small))
        return stack

    @at.defjvp
    def _(primals, tangents):
        (delta,), (dot,) = primals, tangents
        stack = at(delta)
        deriv = jnp.concatenate([(q @ stack[0])[None], stack[:-1]])
        return stack, deriv * dot

    return at


def weights(kind: str, size0, growth, hazard, steps: int, order: int, scale: float) -> Array:
    """``(steps, order + 1)``: ``(-1)^p w^(p)`` at the ends ``lambda_i = i H / K`` of the
    sub-intervals, for a deme of size ``size0`` at the epoch's young end, ``growth`` in
    demes' units (per generation) and ``scale`` generations per time unit; ``w = 1 / c``
    with ``c = scale / (2 N)``.

    Exponential ``N = size0 e^{g t}`` (``g = growth scale``): ``w = 1 / (c0 - g lambda)``,
    ``w^(p) = p! g^p w^(p+1)``. Linear ``N = size0 + a t``: ``w = w0 e^{b lambda}`` with
    ``b = 2 growth``, ``w^(p) = b^p w``.
    """
    lam = hazard * jnp.arange(1, steps + 1) / steps
    p = np.arange(order + 1)
    sign = (-1.0) ** p
    if kind == "exponential":
        g = growth * scale
        w = 1.0 / (scale / (2.0 * size0) - g * lam)
        fact = np.array([math.factorial(int(i)) for i in p], np.float64)
        return sign * fact * g**p * w[:, None] ** (p + 1)
    if kind == "linear":
        b = 2.0 * growth
        w = 2.0 * size0 / scale * jnp.exp(b * lam)
        return sign * b**p * w[:, None]
    w = jnp.full(steps, 2.0 * size0 / scale)
    return jnp.where(p == 0, w[:, None], 0.0)


def occupancy(
    generators: list[np.ndarray],
    hazards: list[Array],
    weight_tables: list[Array],
    maps: list,
    initial: Float[Array, " V"],
    transient: np.ndarray,
    last_weight,
) -> Float[Array, " V"]:
    """Expected time in each state: closed epochs ``j`` with unit generators
    ``generators[j]``, total hazards ``hazards[j]``, weight tables ``(K_j, P_j + 1)``
    (from `weights`) and maps at their old ends (``None``: none); then the open last
    epoch with ``generators[-1]`` and the constant ``w = last_weight``."""
    pi = initial
    occ = jnp.zeros_like(initial)
    for q, hazard, table, m in zip(generators, hazards, weight_tables, maps):
        steps, order = table.shape[0], table.shape[1] - 1
        stack = blocks(q, order)(hazard / steps)
        flat = jnp.concatenate(list(stack), axis=1)  # (V, (order + 2) V)

        def step(carry, row, flat=flat, order=order):
            pi, occ = carry
            out = (pi @ flat).reshape(order + 2, -1)
            return (out[0], occ + row @ out[1:]), None

        (pi, occ), _ = jax.lax.scan(step, (pi, occ), table)
        if m is not None:
            pi = pi @ m
    q = open_epoch_transient(np.asarray(generators[-1])[np.ix_(transient, transient)])
    last = _linalg.solve(-q.T, pi[transient]) * last_weight
    return occ.at[transient].add(last)
