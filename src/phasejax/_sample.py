"""Simulation of absorption times and accumulated rewards by the jump chain.

From state ``i`` the chain stays ``Exp(d_i)`` time (continuous) or ``Geometric(d_i)``
steps (discrete, ``d_i = 1 - T_ii``), accumulating ``r_i`` per unit of time (per step),
then leaves along edge ``e`` with probability ``rate_e / d_i``. Each path is a
``lax.while_loop``; paths are ``vmap``-ed, so one compiled program draws any number.
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
    n = diag.shape[0]
    rate_pad = jnp.concatenate([rate, jnp.zeros(1, rate.dtype)])
    dst_pad = jnp.concatenate([dst, jnp.full(1, n, dst.dtype)])
    start_probs = jnp.concatenate([alpha, jnp.maximum(1.0 - jnp.sum(alpha), 0.0)[None]])
    log_start = jnp.log(start_probs)

    def one(key):
        key, first = jax.random.split(key)
        state = jax.random.categorical(first, log_start).astype(dst.dtype)

        def body(carry):
            key, i, y, jumps = carry
            key, k_hold, k_move = jax.random.split(key, 3)
            if discrete:
                hold = jax.random.geometric(k_hold, diag[i], dtype=jnp.int32).astype(y.dtype)
            else:
                hold = jax.random.exponential(k_hold, dtype=y.dtype) / diag[i]
            edges = out_edges[i]
            j = jax.random.categorical(k_move, jnp.log(rate_pad[edges]))
            return key, dst_pad[edges[j]], y + rewards[i] * hold, jumps + 1

        init = (key, state, jnp.zeros(rewards.shape[1], rewards.dtype), 0)
        if max_jumps is None:  # paths absorb with probability 1 (checked at compile time)
            return jax.lax.while_loop(lambda c: c[1] < n, body, init)[2]
        cap: int = max_jumps
        _, _, y, jumps = jax.lax.while_loop(lambda c: (c[1] < n) & (c[3] < cap), body, init)
        return eqx.error_if(
            y, jumps >= max_jumps, "a sampled path exceeded max_jumps jumps without absorbing"
        )

    keys = jax.random.split(key, math.prod(shape))
    return jax.vmap(one)(keys).reshape(tuple(shape) + (rewards.shape[1],))
