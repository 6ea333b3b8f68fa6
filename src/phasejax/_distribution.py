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
import jax.numpy as jnp
from jaxtyping import Array, ArrayLike, Float

from ._compile import Model
from ._solve import System, solve


class AbstractPhaseType(eqx.Module):
    """Shared machinery of :class:`PhaseType` and :class:`DiscretePhaseType`.

    Rewards are given per vertex in ``graph.states()`` order (the starting vertex
    first); the starting and absorbing vertices accumulate nothing, so their entries
    are ignored. ``rewards=None`` means 1 in every state (the absorption time).
    """

    model: Model
    rate: Float[Array, " e"]
    diag: Float[Array, " n"]
    alpha: Float[Array, " n"]

    @property
    def system(self) -> System:
        return System(self.model.src, self.model.dst, self.rate, self.diag)

    def _solver(self, system: System | None = None):
        """``solve(rhs, transpose=False)`` for ``system`` (default: this model's ``M``)."""
        system = self.system if system is None else system
        state = self.model.solver.prepare(system)
        return lambda rhs, transpose=False: solve(self.model.solver, system, state, rhs, transpose)

    def _rewards(self, rewards: ArrayLike | None) -> Float[Array, " n ..."]:
        if rewards is None:
            return jnp.ones_like(self.diag)
        rewards = jnp.asarray(rewards, self.diag.dtype)
        return self.model.from_vertices(jnp.moveaxis(rewards, -1, 0), self.diag.dtype)

    def defect(self) -> Float[Array, ""]:
        """Probability of absorption at time 0 (``1 - sum(alpha)``)."""
        return 1.0 - jnp.sum(self.alpha)

    def expected_waiting_time(self, rewards: ArrayLike | None = None) -> Float[Array, " V"]:
        """Expected reward accumulated until absorption from each vertex: ``U r``.

        Entry 0 (the starting vertex) holds ``E[Y] = alpha . U r``; absorbing vertices 0.
        """
        x = self._solver()(self._rewards(rewards))
        return self.model.to_vertices(x, start=self.alpha @ x)

    def mean(self, rewards: ArrayLike | None = None) -> Float[Array, ""]:
        """``E[Y] = alpha U r``."""
        return self.alpha @ self._solver()(self._rewards(rewards))

    def expected_sojourn(self) -> Float[Array, " V"]:
        """Expected time in (continuous) or number of visits to (discrete) each vertex: ``alpha U``."""
        return self.model.to_vertices(self._solver()(self.alpha, transpose=True))

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

    def moments(self, k: int, rewards: ArrayLike | None = None) -> Float[Array, " k"]:
        """Raw moments ``E[Y], E[Y^2], ..., E[Y^k]`` (``k`` solves)."""
        if int(k) < 1:
            raise ValueError(f"k must be >= 1, got {k}")
        return jnp.stack([self.alpha @ m for m in self._moment_vectors(int(k), rewards)])

    def var(self, rewards: ArrayLike | None = None) -> Float[Array, ""]:
        """``Var[Y] = E[Y^2] - E[Y]^2``."""
        m1, m2 = self.moments(2, rewards)
        return m2 - m1**2

    def covariance_matrix(self, rewards: ArrayLike) -> Float[Array, "m m"]:
        """Covariance matrix of ``Y_a`` for a reward matrix of shape (m, V) (e.g. the SFS).

        ``m + 1`` solves: ``X = U R^T`` and ``z = U^T alpha``.
        """
        r = self._rewards(rewards)  # (n, m)
        solve_ = self._solver()
        x = solve_(r)
        z = solve_(self.alpha, transpose=True)
        cross = (z[:, None] * r).T @ x
        second = cross + cross.T - self._visit_correction(z, r)
        means = self.alpha @ x
        return second - jnp.outer(means, means)

    def _visit_correction(self, z, r):
        return 0.0

    def cov(self, rewards1: ArrayLike, rewards2: ArrayLike) -> Float[Array, ""]:
        """``Cov[Y_1, Y_2]`` for two reward vectors."""
        return self.covariance_matrix(jnp.stack([jnp.asarray(rewards1), jnp.asarray(rewards2)]))[0, 1]


class PhaseType(AbstractPhaseType):
    """Continuous phase-type distribution ``PH(alpha, S)`` with traced rates."""

    def _moment_rhs(self, r, ms, rhss, k):
        return k * r * ms[k - 1]


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

    def expected_visits(self) -> Float[Array, " V"]:
        """Expected number of visits to each vertex (``alpha U``)."""
        return self.expected_sojourn()
