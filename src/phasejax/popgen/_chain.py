"""A dense Markov chain whose generator is piecewise constant in time (traced).

Epoch ``j`` runs on ``[tau_j, tau_{j+1})`` and is cut into ``K_j`` sub-epochs of
lengths ``h`` with generators ``Q`` (full generators over all states, absorbing rows
zero); at ``tau_{j+1}`` the state distribution is multiplied by a stochastic matrix
``M_j`` (splits, pulses, admixture). The last epoch is open. Everything rests on
matrix exponentials (scaling and squaring, so stiff coalescence rates are harmless):

- state distribution: ``pi <- pi exp(Q h)``;
- occupancy ``int_0^h pi exp(Q u) du``: the top-right block of
  ``exp([[0, h pi], [0, Q h]])`` (Van Loan);
- reward moments: with ``Y_t = int_0^t r(X_u) du`` and ``F_c(h)`` the blocks of
  ``exp(h (Q + z R)) = sum_c z^c F_c(h)`` (the first block row of the exponential of
  the block-bidiagonal ``[[Q, R], [0, Q, R], ...]``), the vectors
  ``v_a = E[Y_t^a / a!; X_t]`` advance as ``v_a <- sum_b v_b F_{a - b}``; in the open
  last epoch ``E[Y_rest^c / c!] = ((-Q_T)^{-1} R_T)^c 1`` on transient states;
- Laplace transform ``E[exp(-s Y)]``: ``exp(h (Q - s R))`` per sub-epoch and
  ``(s R_T - Q_T)^{-1} q`` (``q`` the absorption rates) in the last epoch.

Differentiable (forward and reverse, any order) in the rates, lengths and maps.
"""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jax.scipy.linalg import expm
from jaxtyping import Array, Float


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
        """``Q_T`` of the open epoch; states no rate leaves (never occupied there: their
        lineages sit in demes that no longer exist) get a unit exit so it is invertible."""
        q = self.generators[-1][0][np.ix_(self._transient, self._transient)]
        return q - jnp.diag(jnp.where(jnp.diag(q) == 0, 1.0, 0.0))

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
        last = jnp.linalg.solve(-self._last_transient().T, pi[tr])
        return (acc.at[tr].add(last)).at[np.flatnonzero(self.absorbing)].set(0.0)

    def reward_moments(self, rewards: Float[Array, " V"], k: int) -> Float[Array, " k"]:
        """``E[Y], ..., E[Y^k]`` of ``Y = int_0^inf r(X_t) dt`` (``r = 0`` on absorbing states)."""
        n = self.initial.shape[0]
        r = jnp.where(jnp.asarray(self.absorbing), 0.0, rewards)

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
            g.append(jnp.zeros(n, v.dtype).at[tr].set(jnp.linalg.solve(qt, (r * g[-1])[tr])))
        fact = np.cumprod(np.arange(1, k + 1, dtype=np.float64))
        return jnp.stack(
            [fact[a - 1] * sum(v[b] @ g[a - b] for b in range(a + 1)) for a in range(1, k + 1)]
        )

    def laplace(self, s, rewards: Float[Array, " V"]) -> Array:
        """``E[exp(-s Y)]`` for each ``s >= 0`` in ``s``."""
        r = jnp.where(jnp.asarray(self.absorbing), 0.0, rewards)
        tr = self._transient
        qt = self._last_transient()
        exit_rates = -jnp.sum(qt, axis=1)

        def one(si):
            def step(w, qh):
                q, h = qh
                return w @ expm(h * (q - si * jnp.diag(r))), None

            w, _ = self._epochs(step, self.initial)
            rest = jnp.linalg.solve(si * jnp.diag(r[tr]) - qt, exit_rates)
            return jnp.sum(jnp.where(jnp.asarray(self.absorbing), w, 0.0)) + w[tr] @ rest

        s = jnp.asarray(s, self.initial.dtype)
        return jax.vmap(one)(s.ravel()).reshape(s.shape)

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

    def sf(self, t) -> Array:
        """``P(T > t)`` for the absorption time ``T``."""
        p, _, shape = self._at(t)
        return jnp.sum(p[:, self._transient], axis=1).reshape(shape)

    def pdf(self, t) -> Array:
        """Density of the absorption time ``T``."""
        p, q, shape = self._at(t)
        into = jnp.sum(q[:, :, np.flatnonzero(self.absorbing)], axis=2)
        return jnp.sum(p * into, axis=1).reshape(shape)


def extrapolate(chains: tuple[PiecewiseChain, ...], fn):
    """``fn`` of one chain, or Richardson's ``(4 fn(fine) - fn(coarse)) / 3`` of a coarse
    and a fine chain (twice the sub-epochs): the sub-epoch rule (the mean generator over
    each sub-epoch) is symmetric in time, so its error expands in even powers of the
    sub-epoch width and the combination cancels the leading ``O(width^2)`` term."""
    if len(chains) == 1:
        return fn(chains[0])
    coarse, fine = (fn(c) for c in chains)
    return jax.tree.map(lambda f, c: (4.0 * f - c) / 3.0, fine, coarse)
