"""Piecewise-constant (epoch) models: rates change at given times.

Epoch ``j`` runs on ``[tau_j, tau_{j+1})`` (``tau_0 = 0``, the last epoch is open) with
sub-intensity ``S_j`` of one shared structure. The state distribution entering epoch
``j + 1`` is ``pi_{j+1} = map_j(pi_j exp(S_j h_j))`` (``h_j = tau_{j+1} - tau_j``;
``map_j`` an optional static relabelling of states, e.g. merging demes at a split).

Two engines:

- **dense** (default up to ``DENSE_MAX_STATES = 256`` transient
  states): the chain over the transient states plus one absorbing state as a
  `phasejax._piecewise.PiecewiseChain`: matrix exponentials (scaling and squaring, Van Loan
  blocks), exact to rounding, stiff-safe, and differentiable to any order (Hessians of
  every quantity in the rates and the breaks).
- **sparse** (above it): every quantity within an epoch is the homogeneous one started from
  ``pi_j`` (a sub-probability vector, its defect being the mass absorbed earlier), by
  uniformization, and

      E[Y]   = sum_{j<m} int_0^{h_j} pi_j e^{S_j u} r du  +  pi_m U_m r,
      E[T^k] = k sum_j sum_a C(k-1, a) tau_j^{k-1-a} int_0^{h_j} u^a pi_j e^{S_j u} 1 du + (last epoch),

  with ``int_0^h u^a Pois(n; L u) du = Gamma(n+a+1) / (n! L^{a+1}) P(a+n+1, L h)``. It
  gives the pdf, cdf, state probabilities, ``mean(rewards)`` and the moments of ``T``, with
  first-order gradients only (the uniformization kernel is a custom VJP over while
  loops; a second derivative through it raises); the other quantities and higher derivatives need the dense engine
  (``dense=True`` forces it at any size).
"""

from __future__ import annotations

from math import comb

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, ArrayLike, Float

from . import _sparse
from . import _uniformization as _unif
from ._distribution import DEFAULT_MAX_STEPS, DEFAULT_TOL, PhaseType
from ._piecewise import PiecewiseChain

DENSE_MAX_STATES = 256
"""Largest transient state count for which [`EpochPhaseType`][phasejax.EpochPhaseType] uses
the dense engine by default (one ``(k + 1)(n + 1)``-square matrix exponential per epoch for
``k``-th moments: about 0.1 s at the threshold for ``k = 2``)."""


class EpochPhaseType(eqx.Module):
    """A continuous phase-type process whose rates are piecewise constant in time.

    Offers what [`PhaseType`][phasejax.PhaseType] offers, with the same signatures: pdf,
    logpdf, cdf, sf, state probabilities, quantile; mean, var, moments, cov,
    covariance matrix and Laplace transform of accumulated rewards ``Y = int r(X_t) dt``
    (rewards per vertex, ``None`` meaning the absorption time); and the distribution of
    ``Y`` itself ([`reward_transform`][phasejax.EpochPhaseType.reward_transform]).
    Everything is differentiable in the per-epoch rates and the breaks; with the dense
    engine (see `phasejax._epochs`) to any order.

    **Arguments:**

    - `dists`: one [`PhaseType`][phasejax.PhaseType] per epoch, all of one structure (the initial
      vector of the first is used).
    - `breaks`: the ``m`` epoch boundaries ``tau_1 < ... < tau_m`` (traced).
    - `maps`: optional per boundary: ``None`` or a tuple of ints giving, for each
      transient state, the transient state it becomes (static, hashable).
    - `dense`: ``None`` (dense engine up to ``DENSE_MAX_STATES`` transient states, sparse
      uniformization above), ``True`` or ``False`` to force one (static).

    The keywords ``tol`` and ``max_steps`` set the uniformization series of the sparse
    engine; the dense engine, exact to rounding, ignores them.
    """

    dists: tuple[PhaseType, ...]
    breaks: Float[Array, " m"]
    maps: tuple = eqx.field(static=True, default=())
    dense: bool | None = eqx.field(static=True, default=None)

    def __check_init__(self):
        if len(self.dists) != self.breaks.shape[0] + 1:
            raise ValueError(
                f"{len(self.dists)} epochs need {len(self.dists) - 1} breaks, got {self.breaks.shape[0]}"
            )

    @property
    def n_transient(self) -> int:
        return self.dists[0].structure.n_transient

    @property
    def is_dense(self) -> bool:
        """Whether the dense engine runs (see the class docstring)."""
        return self.n_transient <= DENSE_MAX_STATES if self.dense is None else bool(self.dense)

    def _needs_dense(self, what: str):
        if not self.is_dense:
            raise NotImplementedError(
                f"EpochPhaseType.{what} needs the dense engine: this model has "
                f"{self.n_transient} transient states (the default threshold is "
                f"DENSE_MAX_STATES = {DENSE_MAX_STATES}); pass dense=True to phasejax.epochs "
                f"to use it anyway (O(n^3) work per epoch)"
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

    def chain(self) -> PiecewiseChain:
        """The dense chain: transient states ``0..n-1`` then one absorbing state ``n``."""
        n = self.n_transient
        breaks = self._breaks()
        lengths = jnp.diff(jnp.concatenate([jnp.zeros(1, breaks.dtype), breaks]))
        dtype = lengths.dtype

        def generator(d: PhaseType):
            q = jnp.zeros((n + 1, n + 1), dtype).at[d.structure.src, d.structure.dst].add(d.rate)
            return q.at[np.arange(n), np.arange(n)].add(-d.diag)

        def map_matrix(j):
            if j >= len(self.maps) or self.maps[j] is None:
                return None
            m = np.zeros((n + 1, n + 1))
            m[np.arange(n), np.asarray(self.maps[j])] = 1.0
            m[n, n] = 1.0
            return jnp.asarray(m, dtype)

        alpha = self.dists[0].alpha
        return PiecewiseChain(
            generators=tuple(generator(d)[None] for d in self.dists),
            lengths=tuple(lengths[j : j + 1] for j in range(lengths.shape[0])),
            maps=tuple(map_matrix(j) for j in range(lengths.shape[0])),
            initial=jnp.concatenate([alpha, (1.0 - jnp.sum(alpha))[None]]),
            absorbing_states=(n,),
        )

    def _chain_rewards(self, rewards: ArrayLike | None) -> Array:
        """Per-vertex rewards (``(V,)`` or ``(m, V)``) as chain rewards (``(n + 1,)`` or
        ``(m, n + 1)``, zero on the absorbing state)."""
        r = self.dists[0]._rewards(rewards)
        return jnp.concatenate([r, jnp.zeros((1,) + r.shape[1:], r.dtype)]).T

    def _dense_at(self, t, fn, at_infinity):
        """``fn(chain, t)`` at finite times; ``at_infinity`` (its limit) where ``t = inf``."""
        t = _unif.check_times(jnp.asarray(t, self.breaks.dtype))
        infinite = jnp.isinf(t)
        value = fn(self.chain(), jnp.where(infinite, 0.0, t))
        infinite = infinite.reshape(t.shape + (1,) * (value.ndim - t.ndim))
        return jnp.where(infinite, at_infinity, value)

    def entry_distributions(
        self, *, tol: float = DEFAULT_TOL, max_steps: int | None = DEFAULT_MAX_STEPS
    ) -> list[PhaseType]:
        """Each epoch's distribution started from its entry vector ``pi_j`` (sparse engine)."""
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

    @eqx.filter_jit
    def pdf(
        self, t: ArrayLike, *, tol: float = DEFAULT_TOL, max_steps: int | None = DEFAULT_MAX_STEPS
    ) -> Array:
        """Density of the absorption time."""
        if self.is_dense:
            return self._dense_at(t, PiecewiseChain.pdf, 0.0)
        return self._piecewise(
            t, lambda d, u: d.pdf(u, tol=tol, max_steps=max_steps), tol, max_steps
        )

    @eqx.filter_jit
    def logpdf(
        self, t: ArrayLike, *, tol: float = DEFAULT_TOL, max_steps: int | None = DEFAULT_MAX_STEPS
    ) -> Array:
        """``log`` of the density."""
        if self.is_dense:
            return jnp.log(self.pdf(t))
        return self._piecewise(
            t, lambda d, u: d.logpdf(u, tol=tol, max_steps=max_steps), tol, max_steps
        )

    @eqx.filter_jit
    def sf(
        self, t: ArrayLike, *, tol: float = DEFAULT_TOL, max_steps: int | None = DEFAULT_MAX_STEPS
    ) -> Array:
        """``P(T > t)``."""
        if self.is_dense:
            return self._dense_at(t, PiecewiseChain.sf, 0.0)
        return self._piecewise(
            t, lambda d, u: d.sf(u, tol=tol, max_steps=max_steps), tol, max_steps
        )

    @eqx.filter_jit
    def cdf(
        self, t: ArrayLike, *, tol: float = DEFAULT_TOL, max_steps: int | None = DEFAULT_MAX_STEPS
    ) -> Array:
        """``P(T <= t)`` (the defect included)."""
        if self.is_dense:
            return self._dense_at(t, PiecewiseChain.cdf, 1.0)
        return self._piecewise(
            t, lambda d, u: d.cdf(u, tol=tol, max_steps=max_steps), tol, max_steps
        )

    @eqx.filter_jit
    def state_probability(
        self, t: ArrayLike, *, tol: float = DEFAULT_TOL, max_steps: int | None = DEFAULT_MAX_STEPS
    ) -> Array:
        """``P(X_t = i)`` per vertex, shape ``t.shape + (V,)``."""
        if self.is_dense:
            to_vertices = self.dists[0].structure.to_vertices
            n = self.n_transient

            def fn(chain, u):
                p = chain.state_probability(jnp.ravel(u))[:, :n]
                return jax.vmap(to_vertices)(p).reshape(u.shape + (-1,))

            return self._dense_at(t, fn, 0.0)
        return self._piecewise(
            t, lambda d, u: d.state_probability(u, tol=tol, max_steps=max_steps), tol, max_steps
        )

    @eqx.filter_jit
    def quantile(
        self,
        q: ArrayLike,
        *,
        tol: float = DEFAULT_TOL,
        max_steps: int | None = DEFAULT_MAX_STEPS,
    ) -> Array:
        """The ``q``-quantile ``inf {t : P(T <= t) >= q}`` of the absorption time, for each
        ``q`` in ``[0, 1]`` (see `phasejax._epochs.invert_cdf`)."""
        if self.is_dense:  # one chain for the whole search, one pass per Newton step
            dist, cdf = self.chain(), PiecewiseChain.cdf
            cdf_pdf = lambda d, t: d.distribution(t)[1:]
            m1, m2 = dist.reward_moments(self._chain_rewards(None), 2)
        else:
            dist = self
            cdf = lambda d, t: d.cdf(t, tol=tol, max_steps=max_steps)
            cdf_pdf = lambda d, t: (cdf(d, t), d.pdf(t, tol=tol, max_steps=max_steps))
            m1, m2 = self.moments(2, tol=tol, max_steps=max_steps)
        return invert_cdf(cdf, cdf_pdf, dist, q, quantile_bracket(m1, m2))

    @eqx.filter_jit
    def mean(
        self,
        rewards: ArrayLike | None = None,
        *,
        tol: float = DEFAULT_TOL,
        max_steps: int | None = DEFAULT_MAX_STEPS,
    ) -> Array:
        """``E[Y]`` across epochs (``Y = int r(X_t) dt``; ``rewards=None``: the absorption
        time; ``(V,)`` or ``(k, V)`` rewards)."""
        if self.is_dense:
            return self._chain_rewards(rewards) @ self.chain().occupancy()
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

    @eqx.filter_jit
    def moments(
        self,
        k: int,
        rewards: ArrayLike | None = None,
        *,
        tol: float = DEFAULT_TOL,
        max_steps: int | None = DEFAULT_MAX_STEPS,
    ) -> Array:
        """Raw moments ``E[Y], ..., E[Y^k]`` across epochs (the sparse engine: of ``T`` only)."""
        k = int(k)
        if k < 1:
            raise ValueError(f"k must be >= 1, got {k}")
        if self.is_dense:
            return self.chain().reward_moments(self._chain_rewards(rewards), k)
        if rewards is not None:
            self._needs_dense("moments with rewards")
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

    @eqx.filter_jit
    def var(self, rewards: ArrayLike | None = None) -> Array:
        """``Var[Y] = E[Y^2] - E[Y]^2``."""
        self._needs_dense("var")
        m1, m2 = self.moments(2, rewards)
        return m2 - m1**2

    @eqx.filter_jit
    def covariance_matrix(self, rewards: ArrayLike) -> Float[Array, "m m"]:
        """Covariance matrix of ``Y_a`` for a reward matrix of shape ``(m, V)`` (e.g. the
        SFS): ``E[Y_a Y_b] = r_b . Phi_a + r_a . Phi_b`` with
        ``Phi_a = int_0^inf E[Y_a(t); X_t] dt`` (see `phasejax._piecewise`)."""
        self._needs_dense("covariance_matrix")
        rewards = jnp.asarray(rewards)
        if rewards.ndim != 2:
            raise ValueError(f"rewards must have shape (m, V), got {rewards.shape}")
        return self.chain().reward_covariance(self._chain_rewards(rewards))

    @eqx.filter_jit
    def cov(self, rewards1: ArrayLike, rewards2: ArrayLike) -> Float[Array, ""]:
        """``Cov[Y_1, Y_2]`` for two reward vectors."""
        rewards = jnp.stack([jnp.asarray(rewards1), jnp.asarray(rewards2)])
        return self.covariance_matrix(rewards)[0, 1]

    @eqx.filter_jit
    def laplace(self, s: ArrayLike, rewards: ArrayLike | None = None) -> Array:
        """``E[exp(-s Y)]`` for ``s >= 0`` (one matrix exponential per epoch and ``s``)."""
        self._needs_dense("laplace")
        s = jnp.asarray(s, self.breaks.dtype)
        s = eqx.error_if(s, jnp.any((s < 0) | jnp.isnan(s)), "laplace needs s >= 0")
        return self.chain().laplace(s, self._chain_rewards(rewards))

    def reward_transform(self, rewards: ArrayLike) -> EpochReward:
        """The distribution of ``Y = int r(X_t) dt`` under the epochs (e.g. the total branch
        length), as an [`EpochReward`][phasejax.EpochReward]."""
        self._needs_dense("reward_transform")
        return EpochReward(self, jnp.asarray(rewards, self.breaks.dtype))


class EpochReward(eqx.Module):
    """The distribution of ``Y = int r(X_t) dt`` under an [`EpochPhaseType`][phasejax.EpochPhaseType]
    (e.g. the total branch length under a demography), from
    [`EpochPhaseType.reward_transform`][phasejax.EpochPhaseType.reward_transform].

    Unlike the one-epoch case, ``Y`` is not phase-type in general (the breaks sit in
    real time, not in ``Y``): the moments and the Laplace transform are exact (dense
    engine); the cdf and the pdf are the transform inverted numerically (Abate and
    Whitt's Fourier series with Euler summation, 1,021 transform evaluations per point),
    so each point costs about a thousand matrix exponentials per epoch. Measured against
    quadrature (two-epoch Kingman total length): cdf absolute error below ``1e-9``; pdf
    ``1e-10`` away from the kinks that the breaks put into the density and up to ``2e-7``
    close to them (the series of a kinked function converges slowly).

    **Arguments:**

    - `epochs`: the [`EpochPhaseType`][phasejax.EpochPhaseType].
    - `rewards`: ``(V,)`` non-negative reward per vertex.
    """

    epochs: EpochPhaseType
    rewards: Float[Array, " V"]

    def _chain(self) -> tuple[PiecewiseChain, Array]:
        return self.epochs.chain(), self.epochs._chain_rewards(self.rewards)

    @eqx.filter_jit
    def moments(self, k: int) -> Float[Array, " k"]:
        """``E[Y], ..., E[Y^k]``."""
        return self.epochs.moments(k, self.rewards)

    @eqx.filter_jit
    def mean(self) -> Float[Array, ""]:
        return self.epochs.mean(self.rewards)

    @eqx.filter_jit
    def var(self) -> Float[Array, ""]:
        return self.epochs.var(self.rewards)

    @eqx.filter_jit
    def laplace(self, s: ArrayLike) -> Array:
        """``E[exp(-s Y)]`` for ``s >= 0``."""
        return self.epochs.laplace(s, self.rewards)

    @eqx.filter_jit
    def cdf(self, y: ArrayLike) -> Array:
        """``P(Y <= y)``; ``y = 0`` gives the atom ``P(Y = 0)`` exactly."""
        return reward_distribution(*self._chain(), y)[0]

    @eqx.filter_jit
    def sf(self, y: ArrayLike) -> Array:
        """``P(Y > y) = 1 - P(Y <= y)``."""
        return 1.0 - self.cdf(y)

    @eqx.filter_jit
    def pdf(self, y: ArrayLike) -> Array:
        """Density of ``Y`` at ``y > 0`` (the transform of ``Y`` less its atom, inverted)."""
        return reward_distribution(*self._chain(), y)[1]

    @eqx.filter_jit
    def quantile(self, q: ArrayLike) -> Array:
        """The ``q``-quantile of ``Y`` for each ``q`` in ``[0, 1]`` (see `invert_cdf`)."""
        chain, r = self._chain()  # one chain for the whole search
        m1, m2 = chain.reward_moments(r, 2)
        return invert_cdf(
            lambda d, y: reward_distribution(d[0], d[1], y)[0],
            lambda d, y: reward_distribution(d[0], d[1], y),
            (chain, r),
            q,
            quantile_bracket(m1, m2),
        )


def _euler_weights(a: float, n: int, m: int):
    """Nodes, weights and shift of the Fourier-series (Euler) inversion of Abate and Whitt
    (1992): ``f(y) ~ e^(a/2) / y * sum_k w_k Re F((a + 2 pi i k) / (2 y))``, the series
    of the function damped by ``e^-a`` (aliasing error about ``e^-a``), ``n`` terms summed,
    then the alternating tail by binomial averaging of ``m`` more. Returned nodes are
    ``a + 2 pi i k`` (to be divided by ``2 y``)."""
    k = np.arange(n + m + 1)
    tail = np.array([sum(comb(m, j) for j in range(i, m + 1)) for i in range(m + 1)]) / 2.0**m
    weights = (-1.0) ** k * np.concatenate([np.ones(n), tail])
    weights[0] /= 2
    return a + 2j * np.pi * k, weights, a / 2


# a = 25, 1000 terms: absolute error about 1e-10 also near the kinks of a density
# (measured on two-epoch Kingman n = 3 total lengths; a few hundred terms leave 1e-8 there)
_EULER_NODES, _EULER_WEIGHTS, _EULER_SHIFT = _euler_weights(25.0, 1000, 20)
_EULER_BLOCK = 64


def reward_distribution(chain: PiecewiseChain, r: Array, y: ArrayLike) -> tuple[Array, Array]:
    """The cdf and the density of ``Y = int r(X_t) dt`` at ``y``, from one inversion of the
    transform at ``y > 0``; at ``y = 0`` the cdf is ``P(Y = 0)`` (the density 0), at
    ``y = inf`` the limits."""
    y = _unif.check_times(jnp.asarray(y, r.dtype), "reward levels y")
    flat = jnp.ravel(y)
    finite = (flat > 0) & jnp.isfinite(flat)
    at = jnp.where(finite, flat, 1.0)
    atom = chain.zero_reward_probability(r)
    s = _EULER_NODES[None, :] / (2.0 * at[:, None])  # (points, terms), complex
    # the nodes in blocks: one vmapped block of exponentials at a time bounds memory
    blocks = jnp.pad(s.ravel(), (0, -s.size % _EULER_BLOCK), constant_values=1.0)
    values = jax.lax.map(lambda b: chain.laplace(b, r), blocks.reshape(-1, _EULER_BLOCK))
    values = values.ravel()[: s.size].reshape(s.shape)
    damping = jnp.exp(_EULER_SHIFT) / at
    cdf = damping * (jnp.real(values / s) @ _EULER_WEIGHTS)
    pdf = damping * (jnp.real(values - atom) @ _EULER_WEIGHTS)
    cdf = jnp.where(finite, cdf, jnp.where(flat == 0, atom, 1.0))
    return cdf.reshape(y.shape), jnp.where(finite, pdf, 0.0).reshape(y.shape)


def quantile_bracket(m1: Array, m2: Array) -> Array:
    """A first upper bracket for a quantile search: mean plus ten standard deviations."""
    return m1 + 10.0 * jnp.sqrt(jnp.maximum(m2 - m1**2, 0.0))


def invert_cdf(cdf, cdf_pdf, dist, q: ArrayLike, scale: Array, bisections: int = 48) -> Array:
    """``inf {t : cdf(dist, t) >= q}`` for each ``q`` in ``[0, 1]`` (``q = 1``: ``inf``);
    ``cdf_pdf(dist, t)`` gives the cdf and the density together (for the Newton steps).

    The search runs on ``stop_gradient(dist)``: an upper bracket doubles from ``scale``
    until it holds every ``q``, then ``bisections`` halvings of ``[0, hi]`` (all ``q`` at
    once, one ``cdf`` call per halving). Two Newton steps on ``cdf(dist, t) = q`` from the
    bisection point then carry the derivatives in ``dist`` and ``q``: the implicit
    function's, exact to third order (the error of one step is the square of the last).
    """
    q = jnp.asarray(q, scale.dtype)
    q = eqx.error_if(q, jnp.any(jnp.isnan(q) | (q < 0) | (q > 1)), "quantiles need q in [0, 1]")
    flat = jnp.ravel(q)
    frozen = jax.lax.stop_gradient(dist)
    target = jax.lax.stop_gradient(jnp.where(flat < 1, flat, 0.5))
    top = jnp.max(target)
    hi, _ = jax.lax.while_loop(
        lambda c: (cdf(frozen, c[0]) < top) & (c[1] < 64),
        lambda c: (2.0 * c[0], c[1] + 1),
        (jax.lax.stop_gradient(scale), 0),
    )

    def halve(_, bracket):
        lo, hi = bracket
        mid = 0.5 * (lo + hi)
        below = cdf(frozen, mid) < target
        return jnp.where(below, mid, lo), jnp.where(below, hi, mid)

    zeros = jnp.zeros_like(target)
    lo, hi = jax.lax.fori_loop(0, bisections, halve, (zeros, zeros + hi))
    x = 0.5 * (lo + hi)
    flat_q = jnp.where(flat < 1, flat, 0.5)
    for _ in range(2):
        value, density = cdf_pdf(dist, x)
        ok = density > 0
        x = jnp.where(ok, x - (value - flat_q) / jnp.where(ok, density, 1.0), x)
    atom = cdf(frozen, zeros) >= target  # an atom at 0 holds these levels
    x = jnp.where(atom, 0.0, x)
    return jnp.where(flat < 1, x, jnp.inf).reshape(jnp.shape(q))


def epochs(
    model,
    thetas: Float[Array, "m+1 p"],
    breaks: Float[Array, " m"],
    maps=(),
    dense: bool | None = None,
) -> EpochPhaseType:
    """An [`EpochPhaseType`][phasejax.EpochPhaseType] from one compiled model, one theta per epoch.

    ``maps``: per break, ``None`` or the transient state each transient state becomes;
    ``dense``: the engine (``None``: dense up to ``DENSE_MAX_STATES`` transient states).
    """
    thetas = jnp.asarray(thetas)
    breaks = jnp.asarray(breaks, thetas.dtype)
    if thetas.ndim != 2 or thetas.shape[0] != breaks.shape[0] + 1:
        raise ValueError(
            f"thetas must have shape (len(breaks) + 1, n_params), got {thetas.shape} with {breaks.shape[0]} breaks"
        )
    last = thetas.shape[0] - 1
    dists = tuple(model(theta, require_exit=(j == last)) for j, theta in enumerate(thetas))
    maps = tuple(None if m is None else tuple(int(i) for i in np.asarray(m)) for m in maps)
    return EpochPhaseType(dists, breaks, maps, dense)
