"""Simulation of absorption times and accumulated rewards by the jump chain.

From state ``i`` the chain stays ``Exp(d_i)`` time (continuous) or ``Geometric(d_i)``
steps (discrete, ``d_i = 1 - T_ii``), accumulating ``r_i`` per unit of time (per step),
then leaves along edge ``e`` with probability ``rate_e / d_i``. Each path is a
``lax.while_loop``; paths are ``vmap``-ed, so one compiled program draws any number.
A jump uses two uniforms, drawn from the path's key folded with the jump count: the
holding time by inversion (``-log(1 - u) / d_i``, or its geometric floor), the edge by
inverting the cumulative out-rates. Few random calls keep the program small (each
threefry call site is a large kernel to compile) and the loop short.
Reproducible from the key; jit- and vmap-able over the rates.
"""

from __future__ import annotations

import math

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, Float, Int, PRNGKeyArray


def sample_paths(
    key: PRNGKeyArray,
    shape: tuple[int, ...],
    out_edges: Int[Array, "n d"],
    dst: Int[Array, " e"],
    rate: Float[Array, " e"],
    diag: Float[Array, " n"],
    alpha: Float[Array, " n"],
    rewards: Float[Array, "n m"],
    discrete: bool,
    max_jumps: int | None,
) -> Float[Array, "*shape m"]:
    """Accumulated rewards ``(m,)`` of independent paths, for each of ``prod(shape)`` keys.

    ``out_edges[i]`` lists the edges leaving state ``i`` (padded with ``e``, rate 0);
    ``max_jumps`` (optional) bounds each path with an error past it; without it the
    program has no host callback (cacheable).
    ``dst == n`` is absorption; the defect ``1 - sum(alpha)`` absorbs at once (reward 0).
    """
    n, u_dtype = diag.shape[0], rate.dtype
    rate_pad = jnp.concatenate([rate, jnp.zeros(1, rate.dtype)])
    dst_pad = jnp.concatenate([dst, jnp.full(1, n, dst.dtype)])
    defect = jnp.maximum(1.0 - jnp.sum(alpha), 0.0)
    start_cdf = jnp.cumsum(jnp.concatenate([alpha, defect[None]]))

    def pick(cdf, u):
        """The index ``j`` with ``cdf[j-1] <= u cdf[-1] < cdf[j]`` (inverse cdf: items of
        weight 0 are never picked), at most the last index (against rounding)."""
        return jnp.minimum(jnp.sum(cdf <= u * cdf[-1]), cdf.shape[0] - 1).astype(dst.dtype)

    def one(key):
        k_start, k_path = jax.random.split(key)
        state = pick(start_cdf, jax.random.uniform(k_start, (), u_dtype))

        def body(carry):
            i, y, jumps = carry
            # two uniforms per jump, from the path's key and the jump count
            u = jax.random.uniform(jax.random.fold_in(k_path, jumps), (2,), u_dtype)
            if discrete:  # Geometric(d_i) on {1, 2, ...}
                hold = jnp.floor(jnp.log1p(-u[0]) / jnp.log1p(-diag[i])) + 1.0
            else:
                hold = -jnp.log1p(-u[0]) / diag[i]
            edges = out_edges[i]
            j = pick(jnp.cumsum(rate_pad[edges]), u[1])
            return dst_pad[edges[j]], y + rewards[i] * hold, jumps + 1

        init = (state, jnp.zeros(rewards.shape[1], rewards.dtype), 0)
        if max_jumps is None:  # paths absorb with probability 1 (checked at compile time)
            return jax.lax.while_loop(lambda c: c[0] < n, body, init)[1]
        cap: int = max_jumps
        _, y, jumps = jax.lax.while_loop(lambda c: (c[0] < n) & (c[2] < cap), body, init)
        return eqx.error_if(
            y, jumps >= max_jumps, "a sampled path exceeded max_jumps jumps without absorbing"
        )

    keys = jax.random.split(key, math.prod(shape))
    return jax.vmap(one)(keys).reshape(tuple(shape) + (rewards.shape[1],))
