"""Distributions of coalescence times under a demography: TMRCA and total branch length."""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, ArrayLike, Float

from ._chain import PiecewiseChain, extrapolate


class CoalescenceTime(eqx.Module):
    """``Y = int_0^TMRCA r(X_t) dt`` on a lineage-counting chain under a demography.

    ``r = 1`` gives the time to the most recent common ancestor (``tmrca``), ``r`` the
    number of lineages the total branch length (``total_length``). Times are in the
    demography's ``time_units``. Every method is differentiable in the demographic
    parameters (any order).

    Attributes:
        chains: the piecewise chain, or a coarse and a fine one whose results are
            extrapolated (see `phasejax.popgen._chain.extrapolate`).
        rewards: ``(V,)`` reward per state.
        is_time: whether ``Y`` is the absorption time itself (then pdf/cdf/quantile exist).
    """

    chains: tuple[PiecewiseChain, ...]
    rewards: Float[Array, " V"]
    is_time: bool = eqx.field(static=True)

    def moments(self, k: int) -> Float[Array, " k"]:
        """``E[Y], ..., E[Y^k]``."""
        return extrapolate(self.chains, lambda c: c.reward_moments(self.rewards, int(k)))

    def mean(self) -> Float[Array, ""]:
        return self.moments(1)[0]

    def var(self) -> Float[Array, ""]:
        m = self.moments(2)
        return m[1] - m[0] ** 2

    def laplace(self, s: ArrayLike) -> Array:
        """``E[exp(-s Y)]`` for ``s >= 0``."""
        return extrapolate(self.chains, lambda c: c.laplace(s, self.rewards))

    def _time_only(self, what: str):
        if not self.is_time:
            raise NotImplementedError(
                f"{what} is available for the TMRCA only: the total branch length under "
                f"time-dependent rates is not a phase-type variable of this chain (use "
                f"moments, var or laplace)"
            )

    def sf(self, t: ArrayLike) -> Array:
        """``P(Y > t)``."""
        self._time_only("sf")
        return extrapolate(self.chains, lambda c: c.sf(t))

    def cdf(self, t: ArrayLike) -> Array:
        self._time_only("cdf")
        return 1.0 - self.sf(t)

    def pdf(self, t: ArrayLike) -> Array:
        self._time_only("pdf")
        return extrapolate(self.chains, lambda c: c.pdf(t))

    def quantile(self, q: ArrayLike, *, iterations: int = 80) -> Array:
        """The ``q``-quantile by bisection on the cdf (``iterations`` halvings of a bracket
        that starts at ``[0, mean + 40 sd]`` and doubles until it holds ``q``)."""
        self._time_only("quantile")
        q = jnp.asarray(q, self.rewards.dtype)
        m = self.moments(2)
        hi0 = m[0] + 40.0 * jnp.sqrt(jnp.maximum(m[1] - m[0] ** 2, 0.0))

        def one(qi):
            hi = jax.lax.while_loop(lambda h: self.cdf(h) < qi, lambda h: 2.0 * h, hi0)

            def halve(_, bracket):
                lo, hi = bracket
                mid = 0.5 * (lo + hi)
                below = self.cdf(mid) < qi
                return jnp.where(below, mid, lo), jnp.where(below, hi, mid)

            lo, hi = jax.lax.fori_loop(0, iterations, halve, (jnp.zeros_like(hi), hi))
            return 0.5 * (lo + hi)

        return jax.vmap(one)(q.ravel()).reshape(q.shape)
