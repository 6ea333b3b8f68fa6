"""Expected site frequency spectra from occupancies of coalescent state spaces.

Two exact routes:

- **Block counting** (any number of demes, small samples): lineages are typed by their
  number of sampled descendants in each sampled deme, ``a = (a_1, ..., a_S)``; the
  expected total length of branches subtending exactly ``a`` is the expected time-
  integral of the number of lineages of type ``a``, i.e. occupancy times counts.
- **Polanski-Kimmel** (one panmictic lineage pool, any sample size): when all lineages
  always share a deme, the coalescent is exchangeable and, given ``k`` lineages, each
  subtends ``i`` of the ``n`` samples with probability
  ``C(n - i - 1, k - 2) / C(n - 1, k - 1)``, so
  ``E[xi_i] = sum_k k E[T_k] C(n - i - 1, k - 2) / C(n - 1, k - 1)``, ``E[T_k]`` the
  expected time with exactly ``k`` lineages. Every term is positive (no cancellation);
  the weights come from a running product of ratios, relative error ``O(n eps)``.

Second moments of one panmictic sample factorise the same way: the ranked genealogy's
topology is independent of its coalescence times under any size history, so
``E[L_i L_j] = sum_{k,l} E[T_k T_l] E[b_i(k) b_j(l)]`` with ``b_i(k)`` the number of the
``k`` lineages that subtend ``i`` samples ([`topology_moments`][]).
"""

from __future__ import annotations

import functools
import itertools
import math

import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float

from . import _statespace


def polanski_kimmel(n: int) -> Float[np.ndarray, "n1 n1"]:
    """``W[i, k] = k C(n - i - 1, k - 2) / C(n - 1, k - 1)`` for ``1 <= i < n``, ``2 <= k <= n``.

    Row 0 and row ``n`` are zero, so ``W @ E[T_k]`` is the expected SFS of shape ``(n + 1,)``.
    """
    w = np.zeros((n + 1, n + 1))
    i = np.arange(1, n)[:, None]
    k = np.arange(2, n + 1)[None, :]
    # ratio_k = C(n-i-1, k-2) / C(n-1, k-1): ratio_2 = 1 / (n - 1), then
    # ratio_{k+1} / ratio_k = (n - i - k + 1) / (k - 1) * k / (n - k)
    step = np.maximum(n - i - k[:, :-1] + 1, 0) / (k[:, :-1] - 1) * k[:, :-1] / (n - k[:, :-1])
    ratio = np.concatenate(
        [np.full((n - 1, 1), 1.0 / (n - 1)), np.cumprod(step, axis=1) / (n - 1)], axis=1
    )
    w[1:n, 2:] = k * ratio
    return w


def is_panmictic(space: _statespace.StateSpace) -> bool:
    """Whether every state keeps all its lineages in one deme."""
    return bool(np.all((space.lineages() > 0).sum(axis=1) <= 1))


def typed_types(sizes: tuple[int, ...]) -> np.ndarray:
    """All descendant vectors ``0 <= a <= sizes``, ``a != 0``, in row-major order."""
    grid = np.array(list(itertools.product(*[range(s + 1) for s in sizes])), np.int64)
    return grid[1:]


def typed_start(n_demes: int, deme_of_sample: list[int], sizes: tuple[int, ...], types):
    """Initial counts: ``n_s`` lineages of type ``e_s`` in the deme of sample ``s``."""
    n_types = types.shape[0]
    start = np.zeros(n_demes * n_types, np.int64)
    for s, (deme, n) in enumerate(zip(deme_of_sample, sizes)):
        unit = np.zeros(len(sizes), np.int64)
        unit[s] = 1
        t = int(np.flatnonzero((types == unit).all(axis=1))[0])
        start[deme * n_types + t] += n
    return start


def typed_counts(space: _statespace.StateSpace) -> np.ndarray:
    """``(V, n_types)`` lineages of each type, over all demes."""
    n_types = space.types.shape[0]
    return space.states.reshape(space.n_states, -1, n_types).sum(axis=1).astype(np.float64)


def from_typed_occupancy(
    occupancy: Float[Array, " V"], space: _statespace.StateSpace, sizes: tuple[int, ...]
) -> Array:
    """Expected joint SFS, shape ``(n_1 + 1, ..., n_S + 1)``, corners zero."""
    per_type = occupancy @ jnp.asarray(typed_counts(space))
    full = jnp.concatenate([jnp.zeros(1, per_type.dtype), per_type])
    out = full.reshape(tuple(s + 1 for s in sizes))
    return out.at[tuple(sizes)].set(0.0)


def lineage_times(
    occupancy: Float[Array, " V"], space: _statespace.StateSpace, n: int
) -> Float[Array, " n1"]:
    """``E[T_k]`` for ``k = 0..n``: occupancy summed over states with ``k`` lineages."""
    totals = space.lineages().sum(axis=1)
    onehot = (totals[:, None] == np.arange(n + 1)[None, :]).astype(np.float64)
    return occupancy @ jnp.asarray(onehot)


def fold(sfs: Array) -> Array:
    """Folded (minor-allele) spectrum: entry ``a`` with ``|a| < |n| / 2`` holds
    ``xi_a + xi_{n - a}``; with ``|a| = |n| / 2`` both ``a`` and ``n - a`` hold half of
    that sum (for one deme: ``xi_{n/2}``); entries with ``|a| > |n| / 2`` are zero."""
    both = sfs + jnp.flip(sfs)
    grids = np.meshgrid(*[np.arange(s) for s in sfs.shape], indexing="ij")
    total = sum(grids)
    half = (sum(s - 1 for s in sfs.shape)) / 2
    return jnp.where(total < half, both, jnp.where(total == half, both / 2, 0.0))


def _compositions_table(n: int) -> np.ndarray:
    """``c[N, K]``: the number of compositions of ``N`` into ``K`` positive parts,
    ``C(N - 1, K - 1)`` (``c[0, 0] = 1``), for ``0 <= N, K <= n``; float64."""
    c = np.zeros((n + 1, n + 1))
    c[0, 0] = 1.0
    for big in range(1, n + 1):
        c[big, 1:] = [math.comb(big - 1, k - 1) for k in range(1, n + 1)]
    return c


@functools.lru_cache(maxsize=2)  # up to 8 (n + 1)^4 bytes each
def topology_moments(n: int) -> Float[np.ndarray, "n1 n1 n1 n1"]:
    """``P[k, l, i, j] = E[b_i(k) b_j(l)]`` under Kingman's ranked topology (any size
    history), ``b_i(k)`` the number of the ``k`` lineages subtending ``i`` of ``n`` samples.

    Two facts of the exchangeable coalescent give closed forms: with ``k`` lineages their
    sizes, in random order, are uniform over the ``c(n, k) = C(n - 1, k - 1)``
    compositions of ``n``; and how those ``k`` lineages merge into ``l < k`` is a Kingman
    coalescent of ``k`` independent of their sizes. So, tagging one of the ``l``
    lineages, which holds ``m`` of the ``k`` with probability ``c(k - m, l - 1) / c(k, l)``,

    ``P[k, l, i, j] = l / (c(k, l) c(n, k)) sum_m c(k - m, l - 1) [m c(j - i, m - 1)
    c(n - j, k - m) + (k - m) c(j, m) c(n - j - i, k - m - 1)]`` (the ``k``-lineage of
    size ``i`` inside the tagged one, or outside it), and
    ``P[k, k, i, j] = [i = j] k c(n - i, k - 1) / c(n, k) + k (k - 1) c(n - i - j, k - 2)
    / c(n, k)``; ``P[k, l] = P[l, k]^T``. Zero outside ``2 <= k, l <= n``, ``1 <= i, j < n``.
    Memory ``8 (n + 1)^4`` bytes.
    """
    c = _compositions_table(n)

    def comp(big, parts):
        big, parts = np.broadcast_arrays(big, parts)
        ok = (big >= 0) & (parts >= 0)
        return np.where(ok, c[np.where(ok, big, 0), np.where(ok, parts, 0)], 0.0)

    out = np.zeros((n + 1, n + 1, n + 1, n + 1))
    i = np.arange(1, n)[:, None]
    j = np.arange(1, n)[None, :]
    for k in range(2, n + 1):
        out[k, k, 1:n, 1:n] = (
            np.where(i == j, k * comp(n - i, k - 1), 0.0) + k * (k - 1) * comp(n - i - j, k - 2)
        ) / c[n, k]
        for l in range(2, k):
            m = np.arange(1, k - l + 2)[:, None, None]
            inside = m * comp(j - i, m - 1) * comp(n - j, k - m)
            outside = (k - m) * comp(j, m) * comp(n - j - i, k - m - 1)
            total = np.sum(comp(k - m, l - 1) * (inside + outside), axis=0)
            out[k, l, 1:n, 1:n] = l * total / (c[k, l] * c[n, k])
            out[l, k] = out[k, l].T
    return out


def fold_covariance(cov: Array, shape: tuple[int, ...]) -> Array:
    """The covariance of the folded spectrum (see [`fold`][phasejax.popgen.fold]) from that
    of the unfolded one, shape ``shape + shape``: folding is linear, applied on both sides."""
    size = math.prod(shape)
    rows = jax.vmap(fold)(cov.reshape((size,) + shape)).reshape(size, size)
    both = jax.vmap(fold)(rows.T.reshape((size,) + shape)).reshape(size, size)
    return both.reshape(shape + shape)
