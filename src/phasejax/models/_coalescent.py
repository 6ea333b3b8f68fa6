"""Coalescent models in block-counting form."""

from __future__ import annotations

from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float, Int

from .._compile import Model
from .._distribution import DEFAULT_MAX_STEPS, DEFAULT_TOL
from .._epochs import EpochPhaseType, epochs
from .._graph import Graph, merge_transitions
from .._solve import System
from .._structure import check_rewards


def _coalescences(
    states: Int[np.ndarray, "B L"], offset: int, n_classes: int
) -> tuple[Int[np.ndarray, " K"], Int[np.ndarray, "K L"], Int[np.ndarray, " K"]]:
    """All pair coalescences within one block of lineage classes, for a batch of states.

    The block is ``states[:, offset:offset + n_classes]``; classes are sizes - 1, so a
    class-``i`` lineage merging with a class-``j`` one gives class ``i + j + 1``.
    Returns ``(parent, children, pairs)``: the batch row, the state after the merge and
    the number of such pairs; per parent, ordered by ``(i, j)`` with ``i <= j``.
    """
    block = states[:, offset : offset + n_classes]
    present = block > 0
    n_present = present.sum(axis=1)
    width = int(n_present.max(initial=0))
    # each row's present classes, ascending, padded with -1
    classes = np.full((len(states), width), -1)
    rows, cols = np.nonzero(present)
    classes[rows, np.arange(rows.size) - np.repeat(np.cumsum(n_present) - n_present, n_present)] = (
        cols
    )
    a, b = np.triu_indices(width)
    i, j = classes[:, a], classes[:, b]
    count_i = np.take_along_axis(block, np.maximum(i, 0), axis=1)
    count_j = np.take_along_axis(block, np.maximum(j, 0), axis=1)
    pairs = np.where(i == j, count_i * (count_i - 1) // 2, count_i * count_j)
    parent, slot = np.nonzero((j >= 0) & (pairs > 0))
    i, j = i[parent, slot], j[parent, slot]
    children = states[parent]
    k = np.arange(parent.size)
    children[k, offset + i] -= 1
    children[k, offset + j] -= 1
    children[k, offset + i + j + 1] += 1
    return parent, children, pairs[parent, slot]


def _unit_coefficients(values: np.ndarray, n_params: int, param: int) -> np.ndarray:
    """Coefficient rows with ``values`` in column ``param`` and zeros elsewhere."""
    out = np.zeros((values.size, n_params))
    out[:, param] = values
    return out


def kingman(n: int, **build: Any) -> Graph:
    """Kingman's coalescent for ``n`` samples, block-counting states.

    State (length ``n``): entry ``i`` counts the lineages ancestral to ``i + 1``
    samples. Starts at ``(n, 0, ..., 0)``; absorbs when one lineage is left. One
    parameter ``theta``: every pair coalesces at rate ``theta`` (theta = 1 is the
    standard coalescent in units of 2N generations, ``E[TMRCA] = 2 (1 - 1/n)``).
    Built by [`phasejax.Graph.from_batched_callback`][] (``build``: its keyword
    arguments, e.g. ``progress``, ``max_states``): ``n = 50`` has 204,226 states.
    """
    if n < 2:
        raise ValueError(f"kingman needs n >= 2 samples, got {n}")

    def transitions(states):
        parent, children, pairs = _coalescences(states, 0, n)
        return parent, children, pairs[:, None].astype(np.float64)

    start = (n,) + (0,) * (n - 1)
    return Graph.from_batched_callback(transitions, start, n_params=1, **build)


def sfs_rewards(graph: Graph, n: int | None = None) -> np.ndarray:
    """Site-frequency-spectrum rewards, shape (n - 1, vertices).

    Row ``i - 1`` counts the lineages ancestral to ``i`` samples (summed over demes for
    structured block-counting states of length ``k * n``), so that the reward-weighted
    time is the total branch length subtending ``i`` samples: ``E[xi_i] = 2 / i`` under
    the standard coalescent (per unit mutation rate ``theta / 2``). The sample size
    ``n`` defaults to the number of lineages in the initial state (all singletons).
    """
    states = graph.states()
    if n is None:
        n = int(np.sum(graph.starting_vertex().edges()[0][0].state()))
    if states.shape[1] % n:
        raise ValueError(
            f"states of length {states.shape[1]} are not blocks of {n} lineage classes"
        )
    per_class = states.reshape(states.shape[0], -1, n).sum(axis=1)
    return per_class[:, : n - 1].T.astype(np.float64)


def _two_deme(n_classes: int, start: tuple[int, ...], **build: Any) -> Graph:
    """Two-deme structured coalescent over ``n_classes`` lineage classes per deme.

    State (length ``2 n_classes``): entry ``d * n_classes + k`` counts lineages of class
    ``k`` in deme ``d``; classes add like block sizes (``k1 + k2 + 1``, see
    `_coalescences`). Parameters ``(coal_1, coal_2, mig_12, mig_21)``; absorbs
    when one lineage is left. Per state, the transitions are deme 1's coalescences and
    migrations, then deme 2's.
    """

    def transitions(states):
        alive = states.sum(axis=1) > 1
        groups = []
        for deme in range(2):
            offset = deme * n_classes
            parent, children, pairs = _coalescences(states, offset, n_classes)
            groups.append((parent, children, _unit_coefficients(pairs, 4, deme)))
            # migration of one class-i lineage to the other deme, at rate count * mig
            block = states[:, offset : offset + n_classes]
            parent, i = np.nonzero((block > 0) & alive[:, None])
            children = states[parent]
            k = np.arange(parent.size)
            children[k, offset + i] -= 1
            children[k, (1 - deme) * n_classes + i] += 1
            groups.append((parent, children, _unit_coefficients(block[parent, i], 4, 2 + deme)))
        return merge_transitions(*groups)

    return Graph.from_batched_callback(transitions, start, n_params=4, **build)


def _joint_classes(n1: int, n2: int) -> int:
    """Number of joint lineage classes ``(a, b) != (0, 0)``: ``(n1 + 1)(n2 + 1) - 1``."""
    return (n1 + 1) * (n2 + 1) - 1


def _two_island_start(n1: int, n2: int, joint: bool) -> tuple[int, ...]:
    """Initial state: ``n1`` singletons in deme 1, ``n2`` in deme 2 (see [`two_island`][phasejax.models.two_island])."""
    k = _joint_classes(n1, n2) if joint else n1 + n2
    start = [0] * (2 * k)
    # joint: class (a, b) sits at a (n2 + 1) + b - 1, so (1, 0) at n2 and (0, 1) at 0
    start[n2 if joint else 0] += n1
    start[k] += n2
    return tuple(start)


def two_island(n1: int, n2: int = 0, *, joint: bool = False, **build: Any) -> Graph:
    """Structured coalescent with two demes and migration (cyclic).

    Parameters ``theta = (coal_1, coal_2, mig_12, mig_21)``: pairs in deme ``d``
    coalesce at rate ``coal_d``; each lineage in deme 1 moves to deme 2 at rate
    ``mig_12`` and back at ``mig_21``. Absorbs when one lineage is left. States have
    one block of ``K`` lineage classes per deme: entry ``d * K + k`` counts lineages of
    class ``k`` in deme ``d`` (``d = 0`` is deme 1).

    - ``joint=False`` (block counting, ``K = n = n1 + n2``): class ``k`` holds the
      lineages ancestral to ``k + 1`` samples. Rewards: [`sfs_rewards`][phasejax.models.sfs_rewards] (pooled SFS).
    - ``joint=True`` (``K = (n1 + 1)(n2 + 1) - 1``): class ``k = a (n2 + 1) + b - 1``
      holds the lineages ancestral to ``a`` samples of deme 1 and ``b`` of deme 2
      (``(a, b) != (0, 0)``). A coalescence of ``(a, b)`` with ``(a', b')`` gives
      ``(a + a', b + b')``, i.e. class ``k + k' + 1`` since ``b + b' <= n2`` never
      carries. Starts with ``n1`` lineages ``(1, 0)`` in deme 1 and ``n2`` lineages
      ``(0, 1)`` in deme 2. Rewards: [`jsfs_rewards`][phasejax.models.jsfs_rewards] (joint SFS). With ``n2 = 0``
      both layouts coincide.

    ``build``: keyword arguments of [`phasejax.Graph.from_batched_callback`][].
    """
    n = n1 + n2
    if n < 2:
        raise ValueError(f"two_island needs at least 2 samples, got {n}")
    start = _two_island_start(n1, n2, joint)
    return _two_deme(len(start) // 2, start, **build)


def jsfs_rewards(graph: Graph, n1: int, n2: int) -> Float[np.ndarray, "n1+1 n2+1 V"]:
    """Joint-site-frequency-spectrum rewards of a ``two_island(n1, n2, joint=True)`` graph.

    Entry ``[a, b, v]`` is the number of lineages in vertex ``v`` (either deme) ancestral
    to ``a`` deme-1 and ``b`` deme-2 samples, for ``0 < a + b < n1 + n2``; the entries
    ``[0, 0]`` and ``[n1, n2]`` are zero. The reward-weighted time of ``[a, b]`` is the
    total length of branches subtending exactly ``a`` deme-1 and ``b`` deme-2 samples,
    so its mean is the expected JSFS entry ``E[xi_{a,b}]`` in coalescent time (per unit
    ``theta / 2``); with one panmictic population of pair coalescence rate ``c``,
    ``E[xi_{a,b}] = 2 / (c (a + b)) * C(n1, a) C(n2, b) / C(n1 + n2, a + b)``.
    Summed over ``a + b = i`` it is row ``i - 1`` of [`sfs_rewards`][phasejax.models.sfs_rewards] of the
    block-counting graph.
    """
    k = _joint_classes(n1, n2)
    first = graph.starting_vertex().edges()[0][0].state()  # the initial state
    if graph.state_length != 2 * k or tuple(first) != _two_island_start(n1, n2, True):
        raise ValueError(f"graph is not two_island({n1}, {n2}, joint=True)")
    # classes 0..k-2 are (a, b) = (0, 1)..(n1, n2 - 1) in row-major order; pad (0, 0), (n1, n2)
    inner = sfs_rewards(graph, n=k)
    pad = np.zeros((1, inner.shape[1]))
    return np.concatenate([pad, inner, pad]).reshape(n1 + 1, n2 + 1, -1)


class PiecewiseKingman(eqx.Module):
    """Kingman's coalescent with a piecewise-constant population size.

    Build once (host side) with ``PiecewiseKingman(n)``; calling it with
    ``coalescence_rates`` (``1 / N_j`` in coalescent units, one per epoch) and the
    increasing epoch ``breaks`` returns an [`phasejax.EpochPhaseType`][phasejax.EpochPhaseType] whose rates
    and breaks are traced (jit-, grad- and vmap-able).
    """

    model: Model

    def __init__(self, n: int):
        self.model = kingman(n).compile()

    def __call__(self, coalescence_rates, breaks) -> EpochPhaseType:
        rates = jnp.asarray(coalescence_rates, float)
        return epochs(self.model, rates.reshape(-1, 1), breaks)


class IsolationWithMigration(eqx.Module):
    """Isolation with migration on a [`two_island`][phasejax.models.two_island] graph.

    Two populations exchange migrants (rates ``mig_12``, ``mig_21``; coalescence
    ``coal_1``, ``coal_2``) until ``split_time`` back in time, when every lineage moves
    into one ancestral population (deme 1) with coalescence rate ``coal_ancestral``.
    Build once with ``IsolationWithMigration(graph)``; calling it returns an
    [`phasejax.EpochPhaseType`][phasejax.EpochPhaseType] (traced parameters).

    Both epochs run on the one graph: at the split the static ``merge`` map sends the
    state ``(x_1, x_2)`` (deme blocks) to ``(x_1 + x_2, 0)``, which keeps every
    lineage's class. Per-vertex rewards that count lineages of a class over both demes
    ([`sfs_rewards`][phasejax.models.sfs_rewards], [`jsfs_rewards`][phasejax.models.jsfs_rewards]) therefore mean the same in both epochs
    and apply to the epoch model as they are: ``im(...).mean(rewards)``, with ``rewards``
    of shape ``(V,)`` or ``(k, V)``.

    Joint SFS: ``IsolationWithMigration.joint_sfs(n1, n2)`` builds it on
    ``two_island(n1, n2, joint=True)`` (lineages typed by their ``(a, b)`` deme-1 and
    deme-2 descendants, see [`two_island`][phasejax.models.two_island]) and keeps ``rewards =
    jsfs_rewards(graph, n1, n2)``, shape ``(n1 + 1, n2 + 1, V)``;
    [`expected_jsfs`][phasejax.models.IsolationWithMigration.expected_jsfs] gives ``E[xi_{a,b}]``, shape ``(n1 + 1, n2 + 1)``.
    ``transient_rewards`` holds the rewards checked and restricted to the transient states,
    one column per class (built once, on the host).
    """

    model: Model
    merge: tuple = eqx.field(static=True)
    rewards: Float[np.ndarray, "*classes V"] | None = None
    transient_rewards: Float[np.ndarray, "n k"] | None = None

    def __init__(self, graph: Graph, rewards: Float[np.ndarray, "*classes V"] | None = None):
        self.model = graph.compile()
        states = graph.states()
        n = states.shape[1] // 2
        transient = np.asarray(self.model.transient_vertices)
        position = {int(v): i for i, v in enumerate(transient)}
        merged = np.concatenate(
            [states[:, :n] + states[:, n:], np.zeros_like(states[:, n:])], axis=1
        )
        self.merge = tuple(position[v] for v in graph.find_vertices(merged[transient]).tolist())
        if rewards is None:
            self.rewards = self.transient_rewards = None
        else:
            # checked and restricted to transient states here, on the host: inside a jit that
            # closes over the module, XLA would otherwise constant-fold the check and the
            # gather over every (state, class) pair at each compilation
            self.rewards = np.asarray(check_rewards(np.asarray(rewards, np.float64)))
            by_class = self.rewards.reshape(-1, self.rewards.shape[-1])
            self.transient_rewards = np.ascontiguousarray(by_class[:, transient].T)

    @classmethod
    def joint_sfs(cls, n1: int, n2: int) -> IsolationWithMigration:
        """The model on ``two_island(n1, n2, joint=True)`` with its [`jsfs_rewards`][phasejax.models.jsfs_rewards]."""
        graph = two_island(n1, n2, joint=True)
        return cls(graph, jsfs_rewards(graph, n1, n2))

    @staticmethod
    def _thetas(coal_1, coal_2, mig_12, mig_21, coal_ancestral) -> Float[Array, "2 4"]:
        """The graph's parameters before and after the split."""
        coal_1, coal_2, mig_12, mig_21, coal_ancestral = (
            jnp.asarray(x, float) for x in (coal_1, coal_2, mig_12, mig_21, coal_ancestral)
        )
        return jnp.stack(
            [
                jnp.stack([coal_1, coal_2, mig_12, mig_21]),
                # after the split no mass is left in deme 2; its states still need a way out
                jnp.stack(
                    [coal_ancestral, coal_ancestral, jnp.zeros_like(mig_12), jnp.ones_like(mig_21)]
                ),
            ]
        )

    def __call__(
        self, coal_1, coal_2, mig_12, mig_21, coal_ancestral, split_time
    ) -> EpochPhaseType:
        thetas = self._thetas(coal_1, coal_2, mig_12, mig_21, coal_ancestral)
        return epochs(self.model, thetas, jnp.reshape(split_time, (1,)), maps=(self.merge,))

    def expected_jsfs(
        self,
        coal_1,
        coal_2,
        mig_12,
        mig_21,
        coal_ancestral,
        split_time,
        *,
        tol: float = DEFAULT_TOL,
        max_steps: int | None = DEFAULT_MAX_STEPS,
    ) -> Float[Array, "*classes"]:
        """``E[int r_c(X_t) dt]`` for every class ``c`` of ``rewards`` (built by
        [`joint_sfs`][phasejax.models.IsolationWithMigration.joint_sfs]: the expected JSFS ``E[xi_{a,b}]``, shape ``(n1 + 1, n2 + 1)``,
        in coalescent time units; multiply by ``theta / 2`` for expected site counts).

        With ``pi`` the initial vector, ``S_1``, ``S_2`` the sub-intensities before and
        after the split ``tau`` and ``P`` the merge map,

            E[Y] = int_0^tau pi e^{S_1 u} du r + pi_tau P (-S_2)^{-1} r
                 = (pi - pi_tau) (-S_1)^{-1} r + pi_tau P (-S_2)^{-1} r,

        ``pi_tau = pi e^{S_1 tau}``: one uniformization vector and two transposed solves
        (exact block sweeps) for all classes at once. The first form is used when
        ``S_1`` is singular (no way to coalescence before the split: no migration into
        a deme with coalescence), the second otherwise; its truncation error is at most
        ``tol`` times the longest expected epoch-1 absorption time.
        Under ``jit``, close over the module or use ``eqx.filter_jit`` (it is not hashable).
        """
        if self.transient_rewards is None or self.rewards is None:
            raise ValueError(
                "no rewards: build with IsolationWithMigration.joint_sfs(n1, n2) or pass rewards="
            )
        dist = self(coal_1, coal_2, mig_12, mig_21, coal_ancestral, split_time)
        before, after = dist.dists
        split = eqx.error_if(dist.breaks, ~(dist.breaks > 0), "split_time must be positive")
        pi_tau = before.transient_probability(split, tol=tol, max_steps=max_steps)[0]
        c1, c2, m12, m21 = (jnp.asarray(x) for x in (coal_1, coal_2, mig_12, mig_21))
        invertible = ((m12 > 0) & (c2 > 0)) | ((m21 > 0) & (c1 > 0))

        def closed(_):
            # under vmap both branches run: a singular S_1 is swapped for S_2 (finite,
            # unused) so that neither the value nor the gradient meets its inverse
            rate = jnp.where(invertible, before.rate, after.rate)
            diag = jnp.where(invertible, before.diag, after.diag)
            system = System(before.structure.src, before.structure.dst, rate, diag)
            return before._solver(system)(before.alpha - pi_tau, transpose=True)

        def series(_):
            occupancy = before.accumulated_occupancy(split, tol=tol, max_steps=max_steps)
            return occupancy[0][before.structure.transient_vertices]

        entry = dist._map(0, pi_tau)  # the merge at the split
        sojourn = jax.lax.cond(invertible, closed, series, None)
        sojourn = sojourn + after._solver()(entry, transpose=True)
        r = self.transient_rewards
        return (sojourn @ r.astype(sojourn.dtype)).reshape(self.rewards.shape[:-1])
