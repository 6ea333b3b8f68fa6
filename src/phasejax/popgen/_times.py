"""Distributions of coalescence times under a demography: TMRCA and total branch length."""

from __future__ import annotations

import equinox as eqx
from jaxtyping import Array, ArrayLike, Float

from .._epochs import invert_cdf, quantile_bracket, reward_distribution
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
        is_time: whether ``Y`` is the absorption time itself (its pdf/cdf come from the
            chain directly; otherwise by transform inversion).
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

    def sf(self, t: ArrayLike) -> Array:
        """``P(Y > t)``."""
        if self.is_time:
            return extrapolate(self.chains, lambda c: c.sf(t))
        return 1.0 - self.cdf(t)

    def cdf(self, t: ArrayLike) -> Array:
        """``P(Y <= t)``: for the TMRCA the chain's absorbed mass; for another reward (the
        total length, not phase-type under time-dependent rates) its Laplace transform
        inverted numerically, as for [`EpochReward`][phasejax.EpochReward]."""
        if self.is_time:
            return extrapolate(self.chains, lambda c: c.cdf(t))
        return extrapolate(self.chains, lambda c: reward_distribution(c, self.rewards, t)[0])

    def pdf(self, t: ArrayLike) -> Array:
        """Density of ``Y`` (see [`cdf`][phasejax.popgen.CoalescenceTime.cdf])."""
        if self.is_time:
            return extrapolate(self.chains, lambda c: c.pdf(t))
        return extrapolate(self.chains, lambda c: reward_distribution(c, self.rewards, t)[1])

    def _cdf_pdf(self, t: ArrayLike) -> tuple[Array, Array]:
        if self.is_time:  # one pass over each chain's epochs
            sf, pdf = extrapolate(self.chains, lambda c: c.distribution(t)[::2])
            return 1.0 - sf, pdf
        return extrapolate(self.chains, lambda c: reward_distribution(c, self.rewards, t))

    def quantile(self, q: ArrayLike) -> Array:
        """The ``q``-quantile ``inf {t : P(Y <= t) >= q}`` for each ``q`` in ``[0, 1]``:
        bisection on the gradient-stopped distribution, then Newton steps that carry the
        implicit derivative ``-dF/f`` (see `phasejax._epochs.invert_cdf`)."""
        m1, m2 = self.moments(2)
        return invert_cdf(
            lambda d, t: d.cdf(t), lambda d, t: d._cdf_pdf(t), self, q, quantile_bracket(m1, m2)
        )
