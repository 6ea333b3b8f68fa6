"""A dense Markov chain whose generator is piecewise constant in time (traced).

Epoch ``j`` runs on ``[tau_j, tau_{j+1})`` and is cut into ``K_j`` sub-epochs of
lengths ``h`` with generators ``Q`` (full generators over all states, absorbing rows
zero); at ``tau_{j+1}`` the state distribution is multiplied by a stochastic matrix
``M_j`` (splits, pulses, admixture). The last epoch is open. Everything rests on
matrix exponentials (`expm`: scaling and squaring, so stiff
coalescence rates are harmless):

- state distribution: ``pi <- pi exp(Q h)``;
- occupancy ``int_0^h pi exp(Q u) du``: the top-right block of
  ``exp([[0, h pi], [0, Q h]])`` (Van Loan);
- reward moments: with ``Y_t = int_0^t r(X_u) du`` and ``F_c(h)`` the blocks of
  ``exp(h (Q + z R)) = sum_c z^c F_c(h)`` (the first block row of the exponential of
  the block-bidiagonal ``[[Q, R], [0, Q, R], ...]``), the vectors
  ``v_a = E[Y_t^a / a!; X_t]`` advance as ``v_a <- sum_b v_b F_{a - b}``; in the open
  last epoch ``E[Y_rest^c / c!] = ((-Q_T)^{-1} R_T)^c 1`` on transient states;
- cross moments: splitting ``E[Y_a Y_b] = int int E[r_a(X_s) r_b(X_t)] ds dt`` at
  ``s < t`` and ``t < s`` gives ``E[Y_a Y_b] = r_b . Phi_a + r_a . Phi_b`` with
  ``Phi_a = int_0^inf E[Y_a(t); X_t] dt``; the row ``(pi, E[Y_a(t); X_t], int E[Y_a; X])``
  moves by ``exp(h [[Q, R_a, 0], [0, Q, I], [0, 0, 0]])``, and the open epoch adds
  ``(pi_T U R_T + phi_T) U`` with ``U = (-Q_T)^{-1}``;
- Laplace transform ``E[exp(-s Y)]``: ``exp(h (Q - s R))`` per sub-epoch and
  ``(s R_T - Q_T)^{-1} q`` (``q`` the absorption rates) in the last epoch.

No while loops and no custom derivative rules: differentiable forward and reverse, to
any order, in the rates, lengths and maps. Dense ``O(V^3)`` work per sub-epoch: meant
for chains of up to a few hundred states.
"""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, ArrayLike, Float

from . import _linalg

# numerator coefficients of the [13/13] Pade approximant of exp (Higham 2005)
_PADE13 = (
    64764752532480000.0,
    32382376266240000.0,
    7771770303897600.0,
    1187353796428800.0,
    129060195264000.0,
    10559470521600.0,
    670442572800.0,
    33522128640.0,
    1323241920.0,
    40840800.0,
    960960.0,
    16380.0,
    182.0,
    1.0,
)
_THETA13 = 5.371920351148152  # the 1-norm up to which [13/13] is exact to double rounding
_MAX_SQUARINGS = 24  # 1-norms up to 9e7 (beyond: NaN, as in jax.scipy.linalg.expm)


def expm(a: Array) -> Array:
    """``exp(a)`` of a square matrix by scaling and squaring (Higham 2005).

    ``a / 2^s`` with ``s`` the least power that brings the 1-norm under ``theta_13``
    (held constant under differentiation: the result is smooth in ``a``), the [13/13]
    Pade approximant, then ``s`` squarings (an error where more than 24 would be needed). One
    branch only (unlike `jax.scipy.linalg.expm`, which picks among five Pade orders):
    under ``vmap`` and nested derivatives nothing is computed five times (a Hessian of a
    6 x 6 exponential compiled in half the time). Under ``vmap`` every squaring runs.
    """
    norm = jnp.max(jnp.sum(jnp.abs(a), axis=0))
    s = jnp.maximum(jnp.ceil(jnp.log2(norm / _THETA13)), 0)
    s = jax.lax.stop_gradient(jnp.where(norm > 0, s, 0.0))
    a = eqx.error_if(
        a,
        s > _MAX_SQUARINGS,
        "dense matrix exponential: rate x time exceeds ~9e7 (more than 24 squarings); "
        "rescale time or use the sparse (uniformization) path",
    )
    a = a / 2.0**s
    b = _PADE13
    eye = jnp.eye(a.shape[0], dtype=a.dtype)
    a2 = a @ a
    a4 = a2 @ a2
    a6 = a4 @ a2
    u = a @ (
        a6 @ (b[13] * a6 + b[11] * a4 + b[9] * a2) + b[7] * a6 + b[5] * a4 + b[3] * a2 + b[1] * eye
    )
    v = a6 @ (b[12] * a6 + b[10] * a4 + b[8] * a2) + b[6] * a6 + b[4] * a4 + b[2] * a2 + b[0] * eye
    r = _linalg.solve(v - u, v + u)

    def square(r, i):
        return jax.lax.cond(i < s, lambda m: m @ m, lambda m: m, r), None

    return jax.lax.scan(square, r, jnp.arange(_MAX_SQUARINGS, dtype=s.dtype))[0]


def open_epoch_transient(q: ArrayLike) -> Array:
    """An open epoch's transient generator ``Q_T`` made invertible: states no rate leaves
    there are never occupied (their lineages sit in demes that no longer exist), so they get
    a unit exit rate."""
    q = jnp.asarray(q)
    return q - jnp.diag(jnp.where(jnp.diag(q) == 0, 1.0, 0.0))


class PiecewiseChain(eqx.Module):
    """Dense piecewise-constant chain (see the module docstring).

    Attributes:
        generators: per epoch, ``(K_j, V, V)`` sub-epoch generators (last: ``K = 1``).
        lengths: per epoch but the last, ``(K_j,)`` sub-epoch lengths.
        maps: per break, a ``(V, V)`` row-stochastic matrix or ``None``.
        initial: ``(V,)`` initial distribution.
        absorbing_states: static, the indices of the absorbing states.
    """

    generators: tuple
    lengths: tuple
    maps: tuple
    initial: Float[Array, " V"]
    absorbing_states: tuple = eqx.field(static=True)

    @property
    def absorbing(self) -> np.ndarray:
        mask = np.zeros(self.initial.shape[0], bool)
        mask[list(self.absorbing_states)] = True
        return mask

    @property
    def _transient(self):
        return np.flatnonzero(~self.absorbing)

    def _last_transient(self):
        """``Q_T`` of the open epoch (see `open_epoch_transient`)."""
        return open_epoch_transient(
            self.generators[-1][0][np.ix_(self._transient, self._transient)]
        )

    def _epochs(self, step, carry, apply_map=lambda carry, m: carry @ m):
        """Run ``step(carry, (Q, h)) -> (carry, out)`` over every closed sub-epoch and
        ``apply_map(carry, M_j)`` at the breaks; returns the carry entering the last
        epoch and the outputs per epoch."""
        outs = []
        for j, lengths in enumerate(self.lengths):
            carry, out = jax.lax.scan(step, carry, (self.generators[j], lengths))
            outs.append(out)
            if self.maps[j] is not None:
                carry = apply_map(carry, self.maps[j])
        return carry, outs

    def _reward(self, rewards: Float[Array, " V"]) -> Float[Array, " V"]:
        return jnp.where(jnp.asarray(self.absorbing), 0.0, rewards)

    def occupancy(self) -> Float[Array, " V"]:
        """Expected total time spent in each state (zero for absorbing states)."""
        n = self.initial.shape[0]

        def step(carry, qh):
            pi, acc = carry
            q, h = qh
            aug = jnp.zeros((n + 1, n + 1), q.dtype)
            aug = aug.at[0, 1:].set(h * pi).at[1:, 1:].set(q * h)
            e = expm(aug)
            return (pi @ e[1:, 1:], acc + e[0, 1:]), None

        # occupancy is per state *before* a map: only the distribution moves
        (pi, acc), _ = self._epochs(
            step, (self.initial, jnp.zeros_like(self.initial)), lambda c, m: (c[0] @ m, c[1])
        )
        tr = self._transient
        last = _linalg.solve(-self._last_transient().T, pi[tr])
        return (acc.at[tr].add(last)).at[np.flatnonzero(self.absorbing)].set(0.0)

    def reward_moments(self, rewards: Float[Array, " V"], k: int) -> Float[Array, " k"]:
        """``E[Y], ..., E[Y^k]`` of ``Y = int_0^inf r(X_t) dt`` (``r = 0`` on absorbing states)."""
        n = self.initial.shape[0]
        r = self._reward(rewards)

        def step(v, qh):
            q, h = qh
            b = jnp.kron(jnp.eye(k + 1), q) + jnp.kron(jnp.eye(k + 1, k=1), jnp.diag(r))
            f = expm(b * h)[:n].reshape(n, k + 1, n).transpose(1, 0, 2)
            new = jnp.stack([sum(v[b_] @ f[a - b_] for b_ in range(a + 1)) for a in range(k + 1)])
            return new, None

        v0 = jnp.zeros((k + 1, n), self.initial.dtype).at[0].set(self.initial)
        v, _ = self._epochs(step, v0)
        tr = self._transient
        qt = -self._last_transient()
        g = [jnp.ones(n, v.dtype)]
        for _ in range(k):
            g.append(jnp.zeros(n, v.dtype).at[tr].set(_linalg.solve(qt, (r * g[-1])[tr])))
        fact = np.cumprod(np.arange(1, k + 1, dtype=np.float64))
        return jnp.stack(
            [fact[a - 1] * sum(v[b] @ g[a - b] for b in range(a + 1)) for a in range(1, k + 1)]
        )

    def reward_integral(self, rewards: Float[Array, " V"]) -> Float[Array, " V"]:
        """``Phi = int_0^inf E[Y_t; X_t] dt`` per state (``Y_t = int_0^t r(X_u) du``), so
        that ``E[Y_a Y_b] = r_b . Phi_a + r_a . Phi_b``; zero on absorbing states."""
        n = self.initial.shape[0]
        r = self._reward(rewards)

        def step(row, qh):
            q, h = qh
            zero = jnp.zeros_like(q)
            b = jnp.block(
                [[q, jnp.diag(r), zero], [zero, q, jnp.eye(n, dtype=q.dtype)], [zero, zero, zero]]
            )
            return row @ expm(b * h), None

        def apply_map(row, m):  # the time integral stays with the states it was spent in
            return jnp.concatenate([row[:n] @ m, row[n : 2 * n] @ m, row[2 * n :]])

        row = jnp.zeros(3 * n, self.initial.dtype).at[:n].set(self.initial)
        row, _ = self._epochs(step, row, apply_map)
        tr = self._transient
        m_t = -self._last_transient()
        pi_u = _linalg.solve(m_t.T, row[:n][tr])
        tail = _linalg.solve(m_t.T, pi_u * r[tr] + row[n : 2 * n][tr])
        return (row[2 * n :].at[tr].add(tail)).at[np.flatnonzero(self.absorbing)].set(0.0)

    def reward_cross_moments(
        self, rewards: Float[Array, "m V"]
    ) -> tuple[Float[Array, " m"], Float[Array, "m m"]]:
        """``E[Y_a]`` and ``E[Y_a Y_b]`` of ``Y_a = int_0^inf r_a(X_t) dt`` for the rows
        ``r_a`` (one `reward_integral` per row)."""
        r = jax.vmap(self._reward)(rewards)
        # one reward at a time: under vmap the squarings' conditionals would all run
        phi = jax.lax.map(self.reward_integral, r)
        second = r @ phi.T
        return r @ self.occupancy(), second + second.T

    def reward_covariance(self, rewards: Float[Array, "m V"]) -> Float[Array, "m m"]:
        """Covariance matrix of ``Y_a = int_0^inf r_a(X_t) dt`` for the rows ``r_a``."""
        means, second = self.reward_cross_moments(rewards)
        return second - jnp.outer(means, means)

    def laplace(self, s, rewards: Float[Array, " V"]) -> Array:
        """``E[exp(-s Y)]`` for each ``s >= 0`` in ``s``."""
        r = self._reward(rewards)
        tr = self._transient
        qt = self._last_transient()
        exit_rates = -jnp.sum(qt, axis=1)

        def one(si):
            def step(w, qh):
                q, h = qh
                return w @ expm(h * (q - si * jnp.diag(r))), None

            w, _ = self._epochs(step, self.initial.astype(jnp.result_type(si, r)))
            rest = _linalg.solve(si * jnp.diag(r[tr]) - qt, exit_rates)
            return jnp.sum(jnp.where(jnp.asarray(self.absorbing), w, 0.0)) + w[tr] @ rest

        s = jnp.asarray(s, jnp.result_type(s, self.initial.dtype))
        return jax.vmap(one)(s.ravel()).reshape(s.shape)

    def zero_reward_probability(self, rewards: Float[Array, " V"]) -> Float[Array, ""]:
        """``P(Y = 0)``: absorption before any state of positive reward is entered (those
        states made traps, their rows zero, and the absorbed mass followed to the end)."""
        r = self._reward(rewards)
        trap = r > 0

        def step(w, qh):
            q, h = qh
            return w @ expm(h * jnp.where(trap[:, None], 0.0, q)), None

        w, _ = self._epochs(step, self.initial)
        tr = self._transient
        qt = self._last_transient()
        kept = ~trap[tr]
        # a trap row becomes the identity with no exit: it holds its mass, absorbing none
        m_t = jnp.where(kept[:, None], -qt, jnp.eye(tr.size, dtype=qt.dtype))
        exit_rates = jnp.where(kept, -jnp.sum(qt, axis=1), 0.0)
        absorbed = jnp.sum(jnp.where(jnp.asarray(self.absorbing), w, 0.0))
        return absorbed + w[tr] @ _linalg.solve(m_t, exit_rates)

    def _at(self, t):
        """State distribution at the times ``t`` and the generator acting there."""

        def step(pi, qh):
            q, h = qh
            return pi @ expm(q * h), pi

        pi_last, entries = self._epochs(step, self.initial)
        entries = jnp.concatenate(entries + [pi_last[None]])
        gens = jnp.concatenate([g for g in self.generators])
        lengths = jnp.concatenate(list(self.lengths)) if self.lengths else jnp.zeros(0)
        starts = jnp.concatenate([jnp.zeros(1, entries.dtype), jnp.cumsum(lengths)])

        def one(ti):
            idx = jnp.clip(jnp.searchsorted(starts, ti, side="right") - 1, 0, starts.shape[0] - 1)
            u = jnp.maximum(ti - starts[idx], 0.0)
            return entries[idx] @ expm(gens[idx] * u), gens[idx]

        t = jnp.asarray(t, entries.dtype)
        p, q = jax.vmap(one)(t.ravel())
        return p, q, t.shape

    def state_probability(self, t: ArrayLike) -> Float[Array, "... V"]:
        """``P(X_t = i)`` per state, shape ``t.shape + (V,)`` (finite ``t``)."""
        p, _, shape = self._at(t)
        return p.reshape(shape + (-1,))

    def distribution(self, t: ArrayLike) -> tuple[Array, Array, Array]:
        """``(P(T > t), P(T <= t), f(t))`` of the absorption time ``T`` from one pass over
        the epochs: the survival, the absorbed mass (not ``1 - sf``, so small values keep
        their relative precision) and the density (the flow into absorption)."""
        p, q, shape = self._at(t)
        absorbing = np.flatnonzero(self.absorbing)
        into = jnp.sum(q[:, :, absorbing], axis=2)
        return (
            jnp.sum(p[:, self._transient], axis=1).reshape(shape),
            jnp.sum(p[:, absorbing], axis=1).reshape(shape),
            jnp.sum(p * into, axis=1).reshape(shape),
        )

    def sf(self, t) -> Array:
        """``P(T > t)`` for the absorption time ``T``."""
        return self.distribution(t)[0]

    def cdf(self, t: ArrayLike) -> Array:
        """``P(T <= t)`` (see `distribution`)."""
        return self.distribution(t)[1]

    def pdf(self, t) -> Array:
        """Density of the absorption time ``T``."""
        return self.distribution(t)[2]
