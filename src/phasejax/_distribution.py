"""Phase-type distributions with traced rates: every quantity as pure JAX.

Notation: ``n`` transient states, initial vector ``alpha``, ``M = -S`` (continuous)
or ``M = I - T`` (discrete), ``U = M^{-1}``, rewards ``r >= 0`` per state,
``R = diag(r)``. A continuous reward is accumulated per unit of time
(``Y = int r(X_t) dt``), a discrete one per visit (``Y = sum_k r(X_k)``).

- Expected accumulated reward from each state: ``x = U r``; ``E[Y] = alpha . x``.
- Expected time in (visits to) each state: ``z = U^T alpha`` (one transposed solve).
- Continuous moments: ``m_0 = 1``, ``m_k = k U (r * m_{k-1})``, ``E[Y^k] = alpha . m_k``.
- Discrete moments (first-step analysis ``Y = r_i + Y'``):
  ``M m_k = r^k + sum_{j=1}^{k-1} C(k, j) r^{k-j} * (T m_j)``.
- Cross moments: ``E[Y_a Y_b] = (z * r_a) . U r_b + (z * r_b) . U r_a``, minus
  ``z . (r_a * r_b)`` in the discrete case (a visit counted in both sums).

Every method is differentiable in the rates (implicit differentiation of the solves)
and follows the dtype of the rates.
"""

from __future__ import annotations

import abc
from math import comb, factorial

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, ArrayLike, Float

from . import _sparse
from . import _uniformization as _unif
from ._sample import sample_paths
from ._solve import System, solve
from ._structure import Structure

DEFAULT_TOL = 1e-12
DEFAULT_MAX_STEPS = 4096


class AbstractPhaseType(eqx.Module):
    """Shared machinery of :class:`PhaseType` and :class:`DiscretePhaseType`.

    Rewards are given per vertex in ``graph.states()`` order (the starting vertex
    first); the starting and absorbing vertices accumulate nothing, so their entries
    are ignored. ``rewards=None`` means 1 in every state (the absorption time).
    """

    structure: Structure
    rate: Float[Array, " e"]
    diag: Float[Array, " n"]
    alpha: Float[Array, " n"]

    @property
    def system(self) -> System:
        return System(self.structure.src, self.structure.dst, self.rate, self.diag)

    def _solver(self, system: System | None = None):
        """``solve(rhs, transpose=False)`` for ``system`` (default: this model's ``M``)."""
        system = self.system if system is None else system
        state = self.structure.solver.prepare(system)
        return lambda rhs, transpose=False: solve(
            self.structure.solver, system, state, rhs, transpose
        )

    def _rewards(self, rewards: ArrayLike | None) -> Float[Array, " n ..."]:
        if rewards is None:
            return jnp.ones_like(self.diag)
        rewards = jnp.asarray(rewards, self.diag.dtype)
        return self.structure.from_vertices(jnp.moveaxis(rewards, -1, 0), self.diag.dtype)

    @property
    def exit(self) -> Float[Array, " n"]:
        """Exit rate (continuous) or exit probability (discrete) of each transient state."""
        to_absorption = jnp.where(self.structure.dst == self.structure.n_transient, self.rate, 0.0)
        return _sparse.segment_sum(to_absorption, self.structure.src, self.structure.n_transient)

    def _series(self, proj, n_steps, max_steps: int, lam=1.0):
        """Rows ``(alpha P^k) @ proj``, ``k = 0..max_steps`` (zero past ``n_steps``)."""
        m = self.structure
        lam = jax.lax.stop_gradient(jnp.asarray(lam, self.diag.dtype))
        return _unif.series(
            self.rate, self.diag, proj, self.alpha, m.src, m.dst, lam, n_steps, max_steps
        )

    @eqx.filter_jit
    def sample(
        self,
        key,
        shape: tuple[int, ...] = (),
        rewards: ArrayLike | None = None,
        *,
        max_jumps: int = 1_000_000,
    ) -> Array:
        """Draw absorption times (``rewards=None``), accumulated rewards (``(V,)``), or
        a multivariate reward vector per draw (``(m, V)`` -> output ``shape + (m,)``).

        Exact simulation of the jump chain (see :func:`phasejax._sample.sample_paths`).
        """
        r = self._rewards(rewards)
        out = sample_paths(
            key,
            tuple(shape),
            self.structure.out_edges,
            self.structure.dst,
            self.rate,
            self.diag,
            self.alpha,
            r.reshape(r.shape[0], -1),
            self.structure.discrete,
            max_jumps,
        )
        return out[..., 0] if r.ndim == 1 else out

    def reward_transform(self, rewards: ArrayLike, positive=None) -> AbstractPhaseType:
        """The distribution of the accumulated reward as a phase-type distribution.

        Continuous: ``Y = int r(X_t) dt`` (zero rewards allowed; ``positive``, a static
        boolean mask per vertex, is needed when ``rewards`` are traced). Discrete:
        ``Y = sum_k r(X_k)`` for concrete non-negative integer rewards. Zero-reward
        states are eliminated and their transitions folded into their neighbours
        (see :mod:`phasejax._rewards`).
        """
        from ._rewards import reward_transform  # upward convenience: _rewards builds on this module

        return reward_transform(self, rewards, positive)

    def defect(self) -> Float[Array, ""]:
        """Probability of absorption at time 0 (``1 - sum(alpha)``)."""
        return 1.0 - jnp.sum(self.alpha)

    @eqx.filter_jit
    def expected_waiting_time(self, rewards: ArrayLike | None = None) -> Float[Array, " V"]:
        """Expected reward accumulated until absorption from each vertex: ``U r``.

        Entry 0 (the starting vertex) holds ``E[Y] = alpha . U r``; absorbing vertices 0.
        """
        x = self._solver()(self._rewards(rewards))
        return self.structure.to_vertices(x, start=self.alpha @ x)

    @eqx.filter_jit
    def mean(self, rewards: ArrayLike | None = None) -> Float[Array, ""]:
        """``E[Y] = alpha U r``."""
        return self.alpha @ self._solver()(self._rewards(rewards))

    @eqx.filter_jit
    def expected_sojourn(self) -> Float[Array, " V"]:
        """Expected time in (continuous) or number of visits to (discrete) each vertex: ``alpha U``."""
        return self.structure.to_vertices(self._solver()(self.alpha, transpose=True))

    @abc.abstractmethod
    def _moment_rhs(self, r, ms, rhss, k):
        """Right-hand side of ``M m_k = ...`` given lower ``m_j`` and their right-hand sides."""

    def _moment_vectors(self, k: int, rewards):
        r = self._rewards(rewards)
        solve_ = self._solver()
        ms, rhss = [jnp.ones_like(r)], [None]
        for order in range(1, k + 1):
            rhs = self._moment_rhs(r, ms, rhss, order)
            ms.append(solve_(rhs))
            rhss.append(rhs)
        return ms[1:]

    @abc.abstractmethod
    def _time_scale(self) -> Float[Array, ""]:
        """A rate scale ``c`` (1 for discrete): moments are computed for the chain with
        rates ``/ c`` and rescaled by ``c^-k`` at the end, so a moment beyond float range
        comes out ``inf`` (never ``inf - inf = NaN``); exact, hence under ``stop_gradient``."""

    def _rescaled(self) -> tuple[AbstractPhaseType, Float[Array, ""]]:
        c = jax.lax.stop_gradient(self._time_scale())
        return type(self)(self.structure, self.rate / c, self.diag / c, self.alpha), c

    @staticmethod
    def _unscale(x: Array, c: Array, power: int) -> Array:
        """``x / c^power``, with ``0`` kept exact when ``c^power`` underflows."""
        return jnp.where(x == 0, 0.0, x / c**power)

    @eqx.filter_jit
    def moments(self, k: int, rewards: ArrayLike | None = None) -> Float[Array, " k"]:
        """Raw moments ``E[Y], E[Y^2], ..., E[Y^k]`` (``k`` solves)."""
        if int(k) < 1:
            raise ValueError(f"k must be >= 1, got {k}")
        scaled, c = self._rescaled()
        ms = scaled._moment_vectors(int(k), rewards)
        return jnp.stack([self._unscale(self.alpha @ m, c, j + 1) for j, m in enumerate(ms)])

    @eqx.filter_jit
    def var(self, rewards: ArrayLike | None = None) -> Float[Array, ""]:
        """``Var[Y] = E[Y^2] - E[Y]^2``."""
        scaled, c = self._rescaled()
        m1, m2 = (self.alpha @ m for m in scaled._moment_vectors(2, rewards))
        return self._unscale(m2 - m1**2, c, 2)

    @eqx.filter_jit
    def covariance_matrix(self, rewards: ArrayLike) -> Float[Array, "m m"]:
        """Covariance matrix of ``Y_a`` for a reward matrix of shape (m, V) (e.g. the SFS).

        ``m + 1`` solves: ``X = U R^T`` and ``z = U^T alpha``.
        """
        scaled, c = self._rescaled()
        r = scaled._rewards(rewards)  # (n, m)
        solve_ = scaled._solver()
        x = solve_(r)
        z = solve_(self.alpha, transpose=True)
        cross = (z[:, None] * r).T @ x
        second = cross + cross.T - scaled._visit_correction(z, r)
        means = self.alpha @ x
        return self._unscale(second - jnp.outer(means, means), c, 2)

    @abc.abstractmethod
    def _visit_correction(self, z, r):
        """Second-moment term of a visit counted in both sums (discrete only; else 0)."""

    @eqx.filter_jit
    def cov(self, rewards1: ArrayLike, rewards2: ArrayLike) -> Float[Array, ""]:
        """``Cov[Y_1, Y_2]`` for two reward vectors."""
        return self.covariance_matrix(jnp.stack([jnp.asarray(rewards1), jnp.asarray(rewards2)]))[
            0, 1
        ]


class PhaseType(AbstractPhaseType):
    """Continuous phase-type distribution ``PH(alpha, S)`` with traced rates."""

    def _moment_rhs(self, r, ms, rhss, k):
        return k * r * ms[k - 1]

    def _visit_correction(self, z, r):
        return 0.0

    def _time_scale(self):
        top = jnp.max(self.diag)
        return jnp.where(top > 0, top, 1.0)

    def reward_scaled(self, rewards: ArrayLike) -> PhaseType:
        """The distribution of ``Y = int r(X_t) dt`` for strictly positive rewards.

        Time runs at speed ``1 / r_i`` in state ``i``: rates of state ``i`` are divided
        by ``r_i`` (``S' = R^{-1} S``). Zero rewards need ``reward_transform``.
        """
        r = self._rewards(rewards)
        r = eqx.error_if(
            r, jnp.any(r <= 0), "reward_scaled needs strictly positive rewards on transient states"
        )
        return PhaseType(
            self.structure, self.rate / r[self.structure.src], self.diag / r, self.alpha
        )

    def _uniformized(self, t, proj, tol: float, max_steps: int):
        """Series over the uniformized chain for times ``t`` (flattened)."""
        t = _unif.check_times(jnp.ravel(jnp.asarray(t, self.diag.dtype)))
        lam = jax.lax.stop_gradient(jnp.max(self.diag))
        mu = lam * t
        n_steps = _unif.steps_needed(jnp.max(mu, initial=0.0), tol, max_steps)
        return self._series(proj, n_steps, max_steps, lam), mu, lam

    def _log_mixture(self, t, proj, tol, max_steps):
        coeffs, mu, _ = self._uniformized(t, proj, tol, max_steps)
        return _unif.poisson_mix_log(coeffs, mu, tol).reshape(jnp.shape(t) + (proj.shape[1],))

    @eqx.filter_jit
    def logpdf(
        self, t: ArrayLike, *, tol: float = DEFAULT_TOL, max_steps: int = DEFAULT_MAX_STEPS
    ) -> Array:
        """``log f(t)``, ``f(t) = alpha exp(S t) s``, by uniformization (log space throughout).

        Absolute truncation error of ``f`` at most ``tol * max(s)``; raises if more than
        ``max_steps`` terms would be needed.
        """
        return self._log_mixture(t, self.exit[:, None], tol, max_steps)[..., 0]

    def pdf(
        self, t: ArrayLike, *, tol: float = DEFAULT_TOL, max_steps: int = DEFAULT_MAX_STEPS
    ) -> Array:
        """Density ``f(t) = alpha exp(S t) s`` (see :meth:`logpdf`)."""
        return jnp.exp(self.logpdf(t, tol=tol, max_steps=max_steps))

    @eqx.filter_jit
    def sf(
        self, t: ArrayLike, *, tol: float = DEFAULT_TOL, max_steps: int = DEFAULT_MAX_STEPS
    ) -> Array:
        """Survival ``P(T > t) = alpha exp(S t) 1`` (absolute error at most ``tol``)."""
        ones = jnp.ones_like(self.diag)[:, None]
        return jnp.exp(self._log_mixture(t, ones, tol, max_steps)[..., 0])

    @eqx.filter_jit
    def cdf(
        self, t: ArrayLike, *, tol: float = DEFAULT_TOL, max_steps: int = DEFAULT_MAX_STEPS
    ) -> Array:
        """``P(T <= t)``: defect plus ``sum_k Pois(k; Lambda t) P(absorbed within k jumps)``.

        Computed from the cumulative exit (not ``1 - sf``) so small values keep their
        relative precision.
        """
        coeffs, mu, lam = self._uniformized(t, self.exit[:, None], tol, max_steps)
        absorbed = (
            self.defect()
            + jnp.concatenate([jnp.zeros((1, 1), coeffs.dtype), jnp.cumsum(coeffs, 0)[:-1]]) / lam
        )
        log_mix = _unif.poisson_mix_log(absorbed, mu, tol)
        return jnp.exp(log_mix[:, 0]).reshape(jnp.shape(t))

    @eqx.filter_jit
    def state_probability(
        self, t: ArrayLike, *, tol: float = DEFAULT_TOL, max_steps: int = DEFAULT_MAX_STEPS
    ) -> Array:
        """``P(X_t = i)`` for each vertex, shape ``t.shape + (V,)``: ``alpha exp(S t)``.

        Memory ``max_steps x n`` (the whole series is kept): meant for modest models.
        """
        probs = self.transient_probability(jnp.ravel(jnp.asarray(t)), tol=tol, max_steps=max_steps)
        return jax.vmap(self.structure.to_vertices)(probs).reshape(jnp.shape(t) + (-1,))

    @eqx.filter_jit
    def transient_probability(
        self, t: Array, *, tol: float = DEFAULT_TOL, max_steps: int = DEFAULT_MAX_STEPS
    ) -> Array:
        """``alpha exp(S t)`` over transient states (not vertices), shape ``(len(t), n)``."""
        coeffs, mu, _ = self._uniformized(
            t, jnp.eye(self.structure.n_transient, dtype=self.diag.dtype), tol, max_steps
        )
        return jnp.exp(_unif.poisson_mix_log(coeffs, mu, tol))

    @eqx.filter_jit
    def accumulated_occupancy(
        self, t: ArrayLike, *, tol: float = DEFAULT_TOL, max_steps: int = DEFAULT_MAX_STEPS
    ) -> Array:
        """Expected time spent in each vertex up to ``t``: ``int_0^t alpha exp(S u) du``.

        Uses ``int_0^t Pois(k; Lambda u) du = P(N_{Lambda t} > k) / Lambda``.
        """
        coeffs, mu, lam = self._uniformized(
            t, jnp.eye(self.structure.n_transient, dtype=self.diag.dtype), tol, max_steps
        )
        occupancy = _unif.poisson_tail_mix(coeffs, mu) / lam
        return jax.vmap(self.structure.to_vertices)(occupancy).reshape(jnp.shape(t) + (-1,))

    @eqx.filter_jit
    def laplace(self, s: ArrayLike, rewards: ArrayLike | None = None) -> Array:
        """``E[exp(-s Y)] = defect + alpha (s R - S)^{-1} s_exit`` for ``s >= 0`` (one solve each)."""
        r = self._rewards(rewards)

        def one(si):
            si = eqx.error_if(si, (si < 0) | jnp.isnan(si), "laplace needs s >= 0")
            solve_ = self._solver(self.system.with_diag(self.diag + si * r))
            return self.defect() + self.alpha @ solve_(self.exit)

        s = jnp.asarray(s, self.diag.dtype)
        return jax.vmap(one)(s.ravel()).reshape(s.shape)


class DiscretePhaseType(AbstractPhaseType):
    """Discrete phase-type distribution ``DPH(alpha, T)``; ``tau >= 1`` counts steps."""

    def _moment_rhs(self, r, ms, rhss, k):
        rhs = r**k
        for j in range(1, k):
            t_mj = ms[j] - rhss[j]  # T m_j = m_j - M m_j
            rhs = rhs + comb(k, j) * r ** (k - j) * t_mj
        return rhs

    def _visit_correction(self, z, r):
        return (z[:, None] * r).T @ r

    def _time_scale(self):
        return jnp.ones((), self.diag.dtype)

    @eqx.filter_jit
    def factorial_moments(self, k: int) -> Float[Array, " k"]:
        """``E[tau (tau-1) ... (tau-j+1)] = j! alpha T^{j-1} U^j 1`` for j = 1..k.

        Uses ``T U = U - I``: the j-th vector is ``(U - I)^{j-1} U 1``.
        """
        solve_ = self._solver()
        v = solve_(jnp.ones_like(self.diag))
        out = [self.alpha @ v]
        for j in range(2, int(k) + 1):
            v = solve_(v) - v
            out.append(factorial(j) * (self.alpha @ v))
        return jnp.stack(out)

    def _steps(self, k, proj, max_steps: int):
        k = jnp.asarray(k)
        k = eqx.error_if(k, jnp.any(k < 0), "step counts must be non-negative integers")
        n_steps = eqx.error_if(
            jnp.max(k, initial=0),
            jnp.max(k, initial=0) > max_steps,
            "step count exceeds max_steps: raise max_steps",
        )
        return self._series(proj, n_steps.astype(jnp.int32), max_steps), k

    @eqx.filter_jit
    def pmf(self, k: ArrayLike, *, max_steps: int = DEFAULT_MAX_STEPS) -> Array:
        """``P(tau = k) = alpha T^{k-1} t`` for ``k >= 1``; ``P(tau = 0)`` is the defect."""
        coeffs, k = self._steps(k, self.exit[:, None], max_steps)
        return jnp.where(k == 0, self.defect(), coeffs[jnp.maximum(k - 1, 0), 0])

    @eqx.filter_jit
    def logpmf(self, k: ArrayLike, *, max_steps: int = DEFAULT_MAX_STEPS) -> Array:
        """``log P(tau = k)``."""
        return jnp.log(self.pmf(k, max_steps=max_steps))

    @eqx.filter_jit
    def sf(self, k: ArrayLike, *, max_steps: int = DEFAULT_MAX_STEPS) -> Array:
        """``P(tau > k) = alpha T^k 1``."""
        coeffs, k = self._steps(k, jnp.ones_like(self.diag)[:, None], max_steps)
        return coeffs[k, 0]

    @eqx.filter_jit
    def cdf(self, k: ArrayLike, *, max_steps: int = DEFAULT_MAX_STEPS) -> Array:
        """``P(tau <= k)`` = defect + cumulative pmf (keeps relative precision when small)."""
        coeffs, k = self._steps(k, self.exit[:, None], max_steps)
        cumulative = jnp.concatenate([jnp.zeros(1, coeffs.dtype), jnp.cumsum(coeffs[:, 0])])
        return self.defect() + cumulative[k]

    @eqx.filter_jit
    def state_probability(self, k: ArrayLike, *, max_steps: int = DEFAULT_MAX_STEPS) -> Array:
        """``P(X_k = i)`` per vertex (``alpha T^k``), shape ``k.shape + (V,)``."""
        coeffs, k = self._steps(
            k, jnp.eye(self.structure.n_transient, dtype=self.diag.dtype), max_steps
        )
        return jax.vmap(self.structure.to_vertices)(coeffs[k.ravel()]).reshape(k.shape + (-1,))

    @eqx.filter_jit
    def expected_visits_until(self, k: ArrayLike, *, max_steps: int = DEFAULT_MAX_STEPS) -> Array:
        """Expected visits to each vertex during steps ``0..k-1``: ``sum_{j<k} alpha T^j``."""
        coeffs, k = self._steps(
            k, jnp.eye(self.structure.n_transient, dtype=self.diag.dtype), max_steps
        )
        cumulative = jnp.concatenate(
            [jnp.zeros((1,) + coeffs.shape[1:], coeffs.dtype), jnp.cumsum(coeffs, 0)]
        )
        return jax.vmap(self.structure.to_vertices)(cumulative[k.ravel()]).reshape(k.shape + (-1,))
