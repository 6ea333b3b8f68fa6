"""Distributions of coalescence times under a demography: TMRCA and total branch length,
and the joint second moments of several rewards of a piecewise chain."""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, ArrayLike, Float

from .._epochs import invert_cdf, quantile_bracket, reward_distribution
from .._piecewise import expm, open_epoch_transient
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
            return 1.0 - self.sf(t)
        return extrapolate(
            self.chains, lambda c: reward_distribution(c, self.rewards, t, density=False)
        )

    def pdf(self, t: ArrayLike) -> Array:
        """Density of ``Y`` (see [`cdf`][phasejax.popgen.CoalescenceTime.cdf])."""
        if self.is_time:
            return extrapolate(self.chains, lambda c: c.pdf(t))
        return extrapolate(
            self.chains, lambda c: reward_distribution(c, self.rewards, t, density=True)
        )

    def quantile(self, q: ArrayLike) -> Array:
        """The ``q``-quantile ``inf {t : P(Y <= t) >= q}`` for each ``q`` in ``[0, 1]``:
        bisection on the gradient-stopped distribution, then Newton steps that carry the
        implicit derivative ``-dF/f`` (see `phasejax._epochs.invert_cdf`)."""
        m1, m2 = self.moments(2)
        return invert_cdf(
            lambda d, t: d.cdf(t), lambda d, t: d.pdf(t), self, q, quantile_bracket(m1, m2)
        )


def cross_moments(
    chain: PiecewiseChain, rewards: Float[Array, "S V"]
) -> tuple[Float[Array, " S"], Float[Array, "S S"]]:
    """``E[Y_a]`` and ``E[Y_a Y_b]`` of ``Y_a = int_0^inf r_a(X_t) dt`` for every row ``r_a``
    of ``rewards`` (``r = 0`` on absorbing states).

    ``E[Y_a Y_b] = n_a . r_b + n_b . r_a`` with the two-point occupancy
    ``n_a(v) = E[int_{s < t} r_a(X_s) 1{X_t = v} ds dt]``. It is carried through the epochs
    with ``pi(t)`` and ``c_a(w) = E[int_0^t r_a(X_s) ds; X_t = w]``: over a sub-epoch of
    generator ``Q`` and length ``h``, the blocks of ``exp(h [[Q, R_a, 0], [0, Q, I],
    [0, 0, 0]])`` (Van Loan) are ``E = exp(Q h)``, ``F_a = int_0^h e^{Qs} R_a e^{Q(h-s)} ds``,
    ``G_a = int_0^h F_a(t) dt`` and ``I_1 = int_0^h e^{Qt} dt``, and
    ``c_a <- c_a E + pi F_a``, ``n_a <- n_a + c_a I_1 + pi G_a``, ``pi <- pi E``; at a
    break ``pi`` and ``c_a`` are mapped. In the open last epoch, with
    ``U = (-Q_T)^{-1}``, ``n_a += c_a U + ((pi U) r_a) U`` on the transient states.
    Cost per sub-epoch: one ``3 V`` matrix exponential per reward.
    """
    size = chain.initial.shape[0]
    absorbing = jnp.asarray(chain.absorbing)
    r = jnp.where(absorbing[None, :], 0.0, jnp.asarray(rewards, chain.initial.dtype))
    eye, zero = jnp.eye(size), jnp.zeros((size, size))

    def step(carry, qhm):
        pi, c, n2 = carry
        q, h, which = qhm

        def blocks(ra):
            big = jnp.block([[q, jnp.diag(ra), zero], [zero, q, eye], [zero, zero, zero]])
            e = expm(big * h)
            return (
                e[:size, :size],
                e[:size, size : 2 * size],
                e[:size, 2 * size :],
                e[size : 2 * size, 2 * size :],
            )

        e, f, g, i1 = jax.vmap(blocks)(r)
        n2 = n2 + c @ i1[0] + jnp.einsum("v,avw->aw", pi, g)
        c = c @ e[0] + jnp.einsum("v,avw->aw", pi, f)
        m = maps[which]
        return (pi @ e[0] @ m, c @ m, n2), None

    # one scan over every closed sub-epoch (one compilation of its body); the map of a
    # break (identity elsewhere) is applied after the last sub-epoch of its epoch
    maps = jnp.stack([eye] + [m for m in chain.maps if m is not None])
    which, k = [], 1
    for lengths, m in zip(chain.lengths, chain.maps):
        which += [0] * (lengths.shape[0] - 1) + [k if m is not None else 0]
        k += m is not None
    carry = (chain.initial, jnp.zeros_like(r), jnp.zeros_like(r))
    if chain.lengths:
        steps = (
            jnp.concatenate(chain.generators[:-1]),
            jnp.concatenate(chain.lengths),
            jnp.asarray(which, int),
        )
        carry, _ = jax.lax.scan(step, carry, steps)
    pi, c, n2 = carry
    tr = np.flatnonzero(~chain.absorbing)
    minus_q = -open_epoch_transient(chain.generators[-1][0][np.ix_(tr, tr)])
    after = jnp.linalg.solve(minus_q.T, pi[tr])  # pi U
    n2 = n2.at[:, tr].add(jnp.linalg.solve(minus_q.T, (c[:, tr] + after * r[:, tr]).T).T)
    means = jnp.sum(c, axis=1) + r[:, tr] @ after
    cross = n2 @ r.T
    return means, cross + cross.T
