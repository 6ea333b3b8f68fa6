"""Piecewise-constant (epoch) models: rates change at given times.

Epoch ``j`` runs on ``[tau_j, tau_{j+1})`` (``tau_0 = 0``, the last epoch is open) with
sub-intensity ``S_j`` of one shared structure. The state distribution entering epoch
``j + 1`` is ``pi_{j+1} = map_j(pi_j exp(S_j h_j))`` (``h_j = tau_{j+1} - tau_j``;
``map_j`` an optional static relabelling of states, e.g. merging demes at a split).
Within an epoch every quantity is the homogeneous one started from ``pi_j`` (a
sub-probability vector, its defect being the mass absorbed earlier), so the pdf, cdf
and state probabilities reuse uniformization, and

    E[Y]   = sum_{j<m} int_0^{h_j} pi_j e^{S_j u} r du  +  pi_m U_m r,
    E[T^k] = k sum_j sum_a C(k-1, a) tau_j^{k-1-a} int_0^{h_j} u^a pi_j e^{S_j u} 1 du + (last epoch),

with ``int_0^h u^a Pois(n; L u) du = Gamma(n+a+1) / (n! L^{a+1}) P(a+n+1, L h)``.
Differentiable in the rates and in the epoch times.
"""

from __future__ import annotations

from math import comb

import equinox as eqx
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, ArrayLike, Float

from . import _sparse
from ._distribution import DEFAULT_MAX_STEPS, DEFAULT_TOL, PhaseType


class EpochPhaseType(eqx.Module):
    """A continuous phase-type process whose rates are piecewise constant in time.

    **Arguments:**

    - `dists`: one [`PhaseType`][phasejax.PhaseType] per epoch, all of one structure (the initial
      vector of the first is used).
    - `breaks`: the ``m`` epoch boundaries ``tau_1 < ... < tau_m`` (traced).
    - `maps`: optional per boundary: ``None`` or a tuple of ints giving, for each
      transient state, the transient state it becomes (static, hashable).
    """

    dists: tuple[PhaseType, ...]
    breaks: Float[Array, " m"]
    maps: tuple = eqx.field(static=True, default=())

    def __check_init__(self):
        if len(self.dists) != self.breaks.shape[0] + 1:
            raise ValueError(
                f"{len(self.dists)} epochs need {len(self.dists) - 1} breaks, got {self.breaks.shape[0]}"
            )

    def _breaks(self):
        b = jnp.asarray(self.breaks)
        return eqx.error_if(
            b,
            jnp.any(jnp.diff(b) <= 0) | jnp.any(b <= 0),
            "epoch breaks must be positive and increasing",
        )

    def _map(self, j, pi):
        if j >= len(self.maps) or self.maps[j] is None:
            return pi
        return _sparse.segment_sum(pi, jnp.asarray(np.asarray(self.maps[j])), pi.shape[0])

    def entry_distributions(
        self, *, tol: float = DEFAULT_TOL, max_steps: int | None = DEFAULT_MAX_STEPS
    ) -> list[PhaseType]:
        """Each epoch's distribution started from its entry vector ``pi_j``."""
        breaks = self._breaks()
        starts = jnp.concatenate([jnp.zeros(1, breaks.dtype), breaks])
        pi = self.dists[0].alpha
        out = []
        for j, dist in enumerate(self.dists):
            local = eqx.tree_at(lambda d: d.alpha, dist, pi)
            out.append(local)
            if j < len(self.dists) - 1:
                h = (starts[j + 1] - starts[j])[None]
                pi = self._map(j, local.transient_probability(h, tol=tol, max_steps=max_steps)[0])
        return out

    def _piecewise(self, t, fn, tol, max_steps) -> Array:
        breaks = self._breaks()
        t = jnp.asarray(t, breaks.dtype)
        starts = jnp.concatenate([jnp.zeros(1, breaks.dtype), breaks])
        ends = jnp.concatenate([breaks, jnp.full(1, jnp.inf, breaks.dtype)])
        epoch = jnp.searchsorted(breaks, t, side="right")
        out = None
        for j, local in enumerate(self.entry_distributions(tol=tol, max_steps=max_steps)):
            u = jnp.clip(t - starts[j], 0.0, ends[j] - starts[j])
            value = fn(local, u)
            inside = (epoch == j).reshape(t.shape + (1,) * (value.ndim - t.ndim))
            out = value if out is None else jnp.where(inside, value, out)
        assert out is not None  # there is at least one epoch
        return out

    def pdf(
        self, t: ArrayLike, *, tol: float = DEFAULT_TOL, max_steps: int | None = DEFAULT_MAX_STEPS
    ) -> Array:
        """Density of the absorption time."""
        return self._piecewise(
            t, lambda d, u: d.pdf(u, tol=tol, max_steps=max_steps), tol, max_steps
        )

    def logpdf(
        self, t: ArrayLike, *, tol: float = DEFAULT_TOL, max_steps: int | None = DEFAULT_MAX_STEPS
    ) -> Array:
        return self._piecewise(
            t, lambda d, u: d.logpdf(u, tol=tol, max_steps=max_steps), tol, max_steps
        )

    def sf(
        self, t: ArrayLike, *, tol: float = DEFAULT_TOL, max_steps: int | None = DEFAULT_MAX_STEPS
    ) -> Array:
        return self._piecewise(
            t, lambda d, u: d.sf(u, tol=tol, max_steps=max_steps), tol, max_steps
        )

    def cdf(
        self, t: ArrayLike, *, tol: float = DEFAULT_TOL, max_steps: int | None = DEFAULT_MAX_STEPS
    ) -> Array:
        return self._piecewise(
            t, lambda d, u: d.cdf(u, tol=tol, max_steps=max_steps), tol, max_steps
        )

    def state_probability(
        self, t: ArrayLike, *, tol: float = DEFAULT_TOL, max_steps: int | None = DEFAULT_MAX_STEPS
    ) -> Array:
        """``P(X_t = i)`` per vertex, shape ``t.shape + (V,)``."""
        return self._piecewise(
            t, lambda d, u: d.state_probability(u, tol=tol, max_steps=max_steps), tol, max_steps
        )

    def mean(
        self,
        rewards: ArrayLike | None = None,
        *,
        tol: float = DEFAULT_TOL,
        max_steps: int | None = DEFAULT_MAX_STEPS,
    ) -> Array:
        """``E[Y]`` across epochs (``Y = int r(X_t) dt``; ``rewards=None``: the absorption time)."""
        breaks = self._breaks()
        starts = jnp.concatenate([jnp.zeros(1, breaks.dtype), breaks])
        locals_ = self.entry_distributions(tol=tol, max_steps=max_steps)
        r = locals_[0]._rewards(rewards)
        total = locals_[-1].mean(rewards)
        for j, local in enumerate(locals_[:-1]):
            h = (starts[j + 1] - starts[j])[None]
            occupancy = local.accumulated_occupancy(h, tol=tol, max_steps=max_steps)[0]
            total = total + occupancy[local.structure.transient_vertices] @ r
        return total

    def moments(
        self, k: int, *, tol: float = DEFAULT_TOL, max_steps: int | None = DEFAULT_MAX_STEPS
    ) -> Array:
        """``E[T], ..., E[T^k]`` of the absorption time across epochs."""
        k = int(k)
        breaks = self._breaks()
        starts = jnp.concatenate([jnp.zeros(1, breaks.dtype), breaks])
        locals_ = self.entry_distributions(tol=tol, max_steps=max_steps)
        integrals = []  # integrals[j][a] = int_0^{h_j} u^a pi_j e^{S_j u} 1 du
        for j, local in enumerate(locals_[:-1]):
            h = (starts[j + 1] - starts[j])[None]
            integrals.append(
                [local._transient(h, "integral", tol, max_steps, order=a)[0] for a in range(k)]
            )
        last = locals_[-1].moments(k)  # E[T_local^{a+1}; alive at tau_m]
        out = []
        for order in range(1, k + 1):
            value = 0.0
            for a in range(order):
                c = comb(order - 1, a)
                for j, row in enumerate(integrals):
                    value = value + c * starts[j] ** (order - 1 - a) * row[a]
                value = value + c * starts[-1] ** (order - 1 - a) * last[a] / (a + 1)
            out.append(order * value)
        return jnp.stack(out)


def epochs(
    model, thetas: Float[Array, "m+1 p"], breaks: Float[Array, " m"], maps=()
) -> EpochPhaseType:
    """An [`EpochPhaseType`][phasejax.EpochPhaseType] from one compiled model, one theta per epoch."""
    thetas = jnp.asarray(thetas)
    breaks = jnp.asarray(breaks, thetas.dtype)
    if thetas.ndim != 2 or thetas.shape[0] != breaks.shape[0] + 1:
        raise ValueError(
            f"thetas must have shape (len(breaks) + 1, n_params), got {thetas.shape} with {breaks.shape[0]} breaks"
        )
    last = thetas.shape[0] - 1
    dists = tuple(model(theta, require_exit=(j == last)) for j, theta in enumerate(thetas))
    maps = tuple(None if m is None else tuple(int(i) for i in np.asarray(m)) for m in maps)
    return EpochPhaseType(dists, breaks, maps)
