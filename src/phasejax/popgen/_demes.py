"""demes models as traced epoch parameters, and their coalescent state spaces.

Time runs backwards from the present (``t = 0``). The event times of a demes model
(deme start times, size-epoch ends, migration starts and ends, pulses) cut it into
epochs ``[tau_j, tau_{j+1})``; within an epoch every deme has a size function and
every ordered pair of demes a backward migration rate, and at a break lineages move
between demes with given probabilities:

- a deme that starts at ``tau`` sends each of its lineages to ancestor ``i`` with
  probability ``proportions[i]`` (split, branch, merger, admixture);
- a pulse at ``tau`` from sources ``s_i`` into ``dest`` sends each lineage of
  ``dest`` to ``s_i`` with probability ``proportions[i]`` (it stays with the rest);
- a forward migration ``source -> dest`` at rate ``m`` per generation moves a
  lineage of ``dest`` to ``source`` at rate ``m`` backwards.

Two lineages in a deme of ``N`` diploid individuals coalesce at rate ``1 / (2 N)``
per generation. Exponential or linear size changes are handled two ways:

- **One panmictic sample** (its lineages always share a deme): the occupancies behind
  the expected SFS and ``E[T_k]`` come from an exact change of time to coalescent hazard
  (`phasejax.popgen._hazard`), with ``K`` equal-hazard sub-intervals per epoch chosen a
  priori so that every occupancy has relative error at most ``tol``.
- **The piecewise chains** (TMRCA, total length, SFS covariance, several demes): sizes are
  cut into ``K`` sub-epochs of constant rate equal to the *mean* coalescence rate over
  each (so the cumulative hazard is exact at the sub-epoch ends). This rule is symmetric
  in time, so its error expands in even powers of the sub-epoch width; results are
  Richardson-extrapolated from ``K`` and ``2 K`` sub-epochs (error ``O(width^4)``). ``K``
  follows from the log-size change per sub-epoch (``0.125 (tol / 1e-6)^(1/4)``) and,
  with ``check=True``, the width is halved until the extrapolated expected SFS (one
  panmictic sample, from the chain's lineage times) or else the expected occupancy of
  every lineage-counting state changes by at most ``tol`` (relative); the finer level is
  kept. Every SFS entry, E[T_k] and mean coalescence time is a positive combination of
  these occupancies, so the same relative estimate carries to them. This is an a
  posteriori estimate at the build-time parameters, not a bound valid for every
  parameter value. States occupied only briefly at the start of a growth epoch (many
  lineages, fast coalescence) see the rate at the sub-epoch start rather than its mean,
  a first-order error: at large ``n`` (hundreds) the per-state check needs many
  sub-epochs.
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float

from . import _hazard, _sfs, _statespace
from ._chain import PiecewiseChain, extrapolate
from ._times import CoalescenceTime

_KINDS = ("constant", "exponential", "linear")


def _demes_module():
    try:
        import demes
    except ImportError as e:  # pragma: no cover - the extra is installed in tests
        raise ImportError(
            "phasejax.popgen needs the `demes` package: pip install phasejax[popgen]"
        ) from e
    return demes


def _mean_inverse(kind: str, size0, growth, start, width):
    """Mean of ``1 / N(t)`` over ``[start, start + width]`` (offsets from the epoch's
    young end, where ``N = size0``).

    Exponential ``N(t) = size0 exp(g t)``: ``exp(-g a) expm1(-g w) / (-g w) / size0``.
    Linear ``N(t) = size0 + g t``: ``log1p(x) / x / N(a)`` with ``x = g w / N(a)``.
    """
    if kind == "constant":
        return jnp.zeros_like(start) + 1.0 / size0
    if kind == "exponential":
        x = -growth * width
        small = jnp.abs(x) < 1e-8
        safe = jnp.where(small, 1.0, x)
        ratio = jnp.where(small, 1.0 + x / 2, jnp.expm1(safe) / safe)
        return jnp.exp(-growth * start) * ratio / size0
    size_a = size0 + growth * start
    x = growth * width / size_a
    small = jnp.abs(x) < 1e-8
    safe = jnp.where(small, 1.0, x)
    ratio = jnp.where(small, 1.0 - x / 2, jnp.log1p(safe) / safe)
    return ratio / size_a


class Demography(eqx.Module):
    """A demes model cut into epochs, with traced demographic parameters.

    Built by [`phasejax.popgen.from_demes`][]. The array fields are the parameters (in
    demes' units: generations, diploid individuals, rates per generation) and can be
    replaced (``eqx.tree_at``), traced, differentiated and vmapped; the rest is static.
    Epoch ``j`` is ``[tau_j, tau_{j+1})`` with ``tau_0 = 0`` and ``tau = breaks``.

    Attributes:
        breaks: ``(m,)`` epoch boundaries in generations.
        sizes: ``(m + 1, D)`` size of each deme at the young end of each epoch.
        growth: ``(m + 1, D)`` exponential: backward log-size growth rate ``g``
            (``N(t) = N exp(g (t - tau_j))``); linear: backward slope; else 0.
        migration: ``(m + 1, D, D)`` backward rates: ``[a, b]`` moves a lineage from
            deme ``a`` to ``b`` (demes' forward migration ``b -> a``).
        transfers: ``(m, D, D)`` probabilities that a lineage of ``a`` is in ``b`` just
            past the break (splits, admixture, pulses; identity rows where nothing moves).
        demes: names of the ``D`` demes.
        samples: ``(name, n)`` haploid samples at time 0, in the order of the SFS axes.
        time_units: ``"coalescent"`` (units of ``2 N_ref`` generations) or ``"generations"``.
        N_ref: reference size of the coalescent unit.
        refine: sub-epochs per epoch of the piecewise chains.
        hazard_steps: equal-hazard sub-intervals per epoch of the change-of-time route.
    """

    breaks: Float[Array, " m"]
    sizes: Float[Array, "m1 D"]
    growth: Float[Array, "m1 D"]
    migration: Float[Array, "m1 D D"]
    transfers: Float[Array, "m D D"]
    demes: tuple = eqx.field(static=True)
    samples: tuple = eqx.field(static=True)
    time_units: str = eqx.field(static=True)
    N_ref: float = eqx.field(static=True)
    kinds: tuple = eqx.field(static=True)
    alive: tuple = eqx.field(static=True)
    patterns: tuple = eqx.field(static=True)
    migration_pairs: tuple = eqx.field(static=True)
    refine: tuple = eqx.field(static=True)
    hazard_steps: tuple = eqx.field(static=True)
    lineage_space: _statespace.StateSpace = eqx.field(static=True)

    @property
    def scale(self) -> float:
        """Generations per time unit."""
        return 2.0 * self.N_ref if self.time_units == "coalescent" else 1.0

    def chains(self, space: _statespace.StateSpace) -> tuple[PiecewiseChain, ...]:
        """The chain of ``space`` (see `phasejax.popgen._chain.extrapolate`): one chain when
        no size changes within an epoch, else the chains with ``refine`` and twice as
        many sub-epochs, for Richardson extrapolation."""
        if all(k == 1 for k in self.refine):
            return (self.chain(space),)
        return (self.chain(space), self.chain(space, 2))

    def chain(self, space: _statespace.StateSpace, factor: int = 1) -> PiecewiseChain:
        """The piecewise chain of ``space`` (started in its state 0) in ``time_units``,
        with ``factor * refine[j]`` sub-epochs in epoch ``j``."""
        breaks = jnp.asarray(self.breaks) / self.scale
        n_epochs = len(self.kinds)
        edges = jnp.concatenate([jnp.zeros(1, breaks.dtype), breaks])
        gens, lengths, maps = [], [], []
        for j in range(n_epochs):
            k = self.refine[j] * factor if j < n_epochs - 1 else 1
            alive = np.asarray(self.alive[j])
            if j < n_epochs - 1:
                width = (edges[j + 1] - edges[j]) / k
                offsets = width * jnp.arange(k)
                lengths.append(jnp.full(k, width))
            else:
                width, offsets = jnp.ones(()), jnp.zeros(1)
            coal = jnp.stack(
                [
                    self.scale
                    / 2.0
                    * _mean_inverse(
                        self.kinds[j][d],
                        self.sizes[j, d],
                        self.growth[j, d] * self.scale,
                        offsets,
                        width,
                    )
                    if alive[d]
                    else jnp.zeros(offsets.shape[0])
                    for d in range(len(self.demes))
                ],
                axis=1,
            )
            mig = self.migration[j] * self.scale
            gens.append(jax.vmap(lambda c, mig=mig: _generator(space, c, mig))(coal))
            if j < n_epochs - 1:
                pattern = self.patterns[j]
                maps.append(None if not pattern else _transfer(space, pattern, self.transfers[j]))
        initial = jnp.zeros(space.n_states).at[0].set(1.0)
        absorbing = tuple(int(i) for i in np.flatnonzero(space.absorbing))
        return PiecewiseChain(tuple(gens), tuple(lengths), tuple(maps), initial, absorbing)

    def tmrca(self) -> CoalescenceTime:
        """Time to the most recent common ancestor of the samples (lineage counting)."""
        space = self.lineage_space
        rewards = jnp.asarray((~space.absorbing).astype(np.float64))
        return CoalescenceTime(self.chains(space), rewards, True)

    def total_length(self) -> CoalescenceTime:
        """Total branch length of the genealogy (lineage counting)."""
        space = self.lineage_space
        rewards = jnp.asarray(np.where(space.absorbing, 0, space.lineages().sum(axis=1)), float)
        return CoalescenceTime(self.chains(space), rewards, False)

    def lineage_times(self) -> Float[Array, " n1"]:
        """``E[T_k]``, ``k = 0..n``: expected time with exactly ``k`` lineages (in all demes)."""
        space = self.lineage_space
        n = int(space.states[0].sum())
        return _sfs.lineage_times(self.occupancy(space), space, n)

    def occupancy(self, space: _statespace.StateSpace) -> Float[Array, " V"]:
        """Expected time in each state of ``space``: by the exact change of time of
        `phasejax.popgen._hazard` when one sample's lineages always share a deme, else from
        the (extrapolated) piecewise chains."""
        pool = self._pool_demes()
        if pool is None:
            return extrapolate(self.chains(space), PiecewiseChain.occupancy)
        breaks = jnp.asarray(self.breaks) / self.scale
        edges = jnp.concatenate([jnp.zeros(1, breaks.dtype), breaks])
        gens, hazards, tables, maps = [], [], [], []
        for j, d in enumerate(pool):
            gens.append(_unit_generator(space, d))
            if j == len(pool) - 1:
                break
            kind, size0, growth = self.kinds[j][d], self.sizes[j, d], self.growth[j, d]
            width = edges[j + 1] - edges[j]
            mean = _mean_inverse(kind, size0, growth * self.scale, jnp.zeros(()), width)
            hazard = width * self.scale / 2.0 * mean
            steps = self.hazard_steps[j]
            tables.append(
                _hazard.weights(
                    kind,
                    size0,
                    growth,
                    hazard,
                    steps,
                    0 if kind == "constant" else _hazard.ORDER,
                    self.scale,
                )
            )
            hazards.append(hazard)
            pattern = self.patterns[j]
            maps.append(None if not pattern else _transfer(space, pattern, self.transfers[j]))
        last = 2.0 * self.sizes[-1, pool[-1]] / self.scale
        initial = jnp.zeros(space.n_states).at[0].set(1.0)
        transient = np.flatnonzero(~space.absorbing)
        return _hazard.occupancy(gens, hazards, tables, maps, initial, transient, last)

    def _pool_demes(self) -> tuple[int, ...] | None:
        """The deme holding one sample's lineages in each epoch, when they always share
        one (moved whole at splits); else ``None``."""
        if len(self.samples) != 1 or not _sfs.is_panmictic(self.lineage_space):
            return None
        deme = self.demes.index(self.samples[0][0])
        out = [deme]
        for pattern in self.patterns:
            targets = [b for a, b in pattern if a == deme]
            deme = targets[0] if targets else deme
            out.append(deme)
        return tuple(out)

    def sfs_space(self, max_states: int = 2000) -> _statespace.StateSpace:
        """The block-counting state space of the joint SFS (lineages typed by their
        descendants in each sampled deme); [`StateBudgetError`][phasejax.popgen.StateBudgetError] beyond ``max_states``."""
        sizes = tuple(n for _, n in self.samples)
        types = _sfs.typed_types(sizes)
        demes = [self.demes.index(name) for name, _ in self.samples]
        start = _sfs.typed_start(len(self.demes), demes, sizes, types)
        return _statespace.build(
            len(self.demes), types, start, set(self.migration_pairs), self.patterns, max_states
        )

    def expected_sfs(
        self, folded: bool = False, *, method: str = "auto", max_states: int = 2000
    ) -> Array:
        """Expected (joint) site frequency spectrum of branch lengths.

        Entry ``a = (a_1, ..., a_S)`` (axes in the order of ``samples``) is the expected
        total length, in ``time_units``, of branches subtending exactly ``a_s`` sampled
        lineages of deme ``s``; multiply by the mutation rate per unit time for expected
        site counts (``theta / 2`` in coalescent units: ``E[xi_i] = theta / i`` at constant
        size). The corners (``0`` and ``n``) are zero.

        Args:
            folded: fold (see [`phasejax.popgen.fold`][]).
            method: ``"polanski_kimmel"`` (one sample whose lineages always share a deme;
                any ``n``, ``O(n^2)``), ``"block"`` (block counting with typed lineages,
                small samples) or ``"auto"`` (the first where it applies).
            max_states: state budget of the block-counting route.
        """
        sizes = tuple(n for _, n in self.samples)
        if self._route(method) == "polanski_kimmel":
            out = jnp.asarray(_sfs.polanski_kimmel(sizes[0])) @ self.lineage_times()
        else:
            space = self.sfs_space(max_states)
            out = _sfs.from_typed_occupancy(self.occupancy(space), space, sizes)
        return _sfs.fold(out) if folded else out

    def _route(self, method: str) -> str:
        """``"polanski_kimmel"`` or ``"block"`` for ``method`` (see `expected_sfs`)."""
        if method not in ("auto", "polanski_kimmel", "block"):
            raise ValueError(f"unknown method {method!r}")
        panmictic = self._pool_demes() is not None
        if method == "polanski_kimmel" and not panmictic:
            raise ValueError(
                "the Polanski-Kimmel route needs one sampled deme whose lineages always "
                "share a deme (no migration or pulse splits them); use method='block'"
            )
        return "polanski_kimmel" if method == "auto" and panmictic else method

    def sfs_covariance(
        self,
        folded: bool = False,
        *,
        mutation_rate: float | Array | None = None,
        method: str = "auto",
        max_states: int = 2000,
    ) -> Array:
        """Covariance matrix of the (joint) site frequency spectrum, exact.

        Without ``mutation_rate``: ``Cov[L_a, L_b]`` of the branch lengths ``L_a`` whose
        means [`expected_sfs`][phasejax.popgen.Demography.expected_sfs] gives (in
        ``time_units`` squared). With it (``mu`` per lineage per time unit; ``theta / 2``
        in coalescent units): the covariance of the site counts ``xi_a`` of the infinite-
        sites model, ``mu^2 Cov[L_a, L_b] + [a = b] mu E[L_a]`` (Fu 1995 at constant size).
        Shape ``shape + shape`` with ``shape = (n_1 + 1, ..., n_S + 1)``: ``(n + 1, n + 1)``
        for one deme; rows and columns of the corners are zero.

        Routes (``method`` as in ``expected_sfs``): one panmictic sample factorises,
        ``E[L_i L_j] = sum_{k,l} E[T_k T_l] E[b_i(k) b_j(l)]``, with ``E[T_k T_l]`` from
        the lineage-counting chain (`reward_cross_moments`, ``n`` matrix exponentials of size
        ``3 n`` per sub-epoch) and the topology term in closed form (memory
        ``8 (n + 1)^4`` bytes: ``n <= 60``); otherwise the typed block-counting chain gives
        ``E[L_a L_b]`` directly (one matrix exponential of three times its states per
        sub-epoch and SFS entry: small samples only).

        Args:
            folded: the covariance of the folded spectrum.
            mutation_rate: see above; ``None`` for branch lengths.
            method: ``"auto"``, ``"polanski_kimmel"`` or ``"block"``.
            max_states: state budget of the block-counting route.
        """
        sizes = tuple(n for _, n in self.samples)
        shape = tuple(s + 1 for s in sizes)
        if self._route(method) == "polanski_kimmel":
            n = sizes[0]
            if n > 60:
                raise ValueError(
                    f"the SFS covariance of one deme is limited to n <= 60 samples (its "
                    f"topology tensor takes 8 (n + 1)^4 bytes), got n = {n}"
                )
            space = self.lineage_space
            totals = space.lineages().sum(axis=1)
            # T_k for k = 2..n: the time with k lineages
            onehot = (totals[None, :] == np.arange(2, n + 1)[:, None]).astype(np.float64)
            means, second = extrapolate(
                self.chains(space), lambda c: c.reward_cross_moments(jnp.asarray(onehot))
            )
            topology = _sfs.topology_moments(n)[2:, 2:].reshape(n - 1, n - 1, -1)
            cross = jnp.einsum("kl,klm->m", second, topology).reshape(n + 1, n + 1)
            mean = jnp.asarray(_sfs.polanski_kimmel(n)[:, 2:]) @ means
        else:
            space = self.sfs_space(max_states)
            counts = jnp.asarray(_sfs.typed_counts(space).T)
            type_means, type_cross = extrapolate(
                self.chains(space), lambda c: c.reward_cross_moments(counts)
            )
            size = math.prod(shape)
            # type 0 (no descendants) is not a lineage type; the all-samples type is the
            # MRCA, absorbing, so its reward is already zero
            mean = jnp.zeros(size).at[1:].set(type_means)
            cross = jnp.zeros((size, size)).at[1:, 1:].set(type_cross)
        cov = cross - jnp.outer(mean, mean)
        if mutation_rate is not None:
            cov = mutation_rate**2 * cov + jnp.diag(mutation_rate * mean)
        cov = cov.reshape(shape + shape)
        return _sfs.fold_covariance(cov, shape) if folded else cov


def _generator(space: _statespace.StateSpace, coal, mig) -> Float[Array, "V V"]:
    src, dst, deme, mult = space.coal
    msrc, mdst, a, b, mmult = space.mig
    q = jnp.zeros((space.n_states, space.n_states), coal.dtype)
    q = q.at[src, dst].add(mult * coal[deme]).at[msrc, mdst].add(mmult * mig[a, b])
    return q - jnp.diag(jnp.sum(q, axis=1))


def _unit_generator(space: _statespace.StateSpace, deme: int) -> np.ndarray:
    """The (static) generator of ``space`` with pair rate 1 in ``deme`` and no other rate."""
    src, dst, where, mult = space.coal
    keep = where == deme
    q = np.zeros((space.n_states, space.n_states))
    np.add.at(q, (src[keep], dst[keep]), mult[keep])
    return q - np.diag(q.sum(axis=1))


def _transfer(space: _statespace.StateSpace, pattern: tuple, probabilities) -> Array:
    src, dst, coefficient, exponents = space.transfers[pattern]
    p = jnp.stack([probabilities[a, b] for a, b in pattern])
    # p ** e with 0 ** 0 = 1 and a finite derivative at p = 0
    used = exponents > 0
    base = jnp.where(used, p[None, :], 1.0)
    weight = coefficient * jnp.prod(jnp.where(used, base**exponents, 1.0), axis=1)
    return jnp.zeros((space.n_states, space.n_states), p.dtype).at[src, dst].add(weight)


def load(model):
    """A resolved ``demes.Graph`` from a graph or a path to a YAML file."""
    demes = _demes_module()
    if isinstance(model, demes.Graph):
        return model
    if isinstance(model, (str, Path)):
        return demes.load(model)
    raise TypeError(f"model must be a demes.Graph or a path to a demes YAML file, got {model!r}")


def _size_at(epoch, t: float) -> float:
    if epoch.size_function == "constant" or epoch.start_size == epoch.end_size:
        return float(epoch.start_size)
    x = (t - epoch.end_time) / (epoch.start_time - epoch.end_time)
    if epoch.size_function == "exponential":
        return float(epoch.end_size * (epoch.start_size / epoch.end_size) ** x)
    if epoch.size_function == "linear":
        return float(epoch.end_size + (epoch.start_size - epoch.end_size) * x)
    raise ValueError(f"size function {epoch.size_function!r} is not supported ({_KINDS})")


def parse(
    graph, samples: dict, time_units: str, N_ref: float | None, max_states: int
) -> tuple[dict[str, Any], dict[str, Any], _statespace.StateSpace]:
    """Epoch arrays of a resolved demes graph (in generations) and the lineage space."""
    if time_units not in ("coalescent", "generations"):
        raise ValueError(f"time_units must be 'coalescent' or 'generations', got {time_units!r}")
    names = [d.name for d in graph.demes]
    for name, n in samples.items():
        if name not in names:
            raise ValueError(f"sampled deme {name!r} is not in the model (demes: {names})")
        if int(n) != n or n < 0:
            raise ValueError(f"sample size of {name!r} must be a non-negative integer, got {n}")
        if graph[name].end_time != 0:
            raise ValueError(
                f"deme {name!r} ends at time {graph[name].end_time}: only samples at time 0 "
                f"are supported"
            )
    if sum(samples.values()) < 2:
        raise ValueError(f"need at least 2 sampled lineages, got {dict(samples)}")
    for d in graph.demes:
        for e in d.epochs:
            if e.selfing_rate or e.cloning_rate:
                raise ValueError(f"deme {d.name!r}: selfing and cloning are not supported")
    gen = 1.0 if graph.time_units == "generations" else float(graph.generation_time)
    times = set()
    for d in graph.demes:
        times.add(d.start_time)
        times.update(e.end_time for e in d.epochs)
    for m in graph.migrations:
        times.update((m.start_time, m.end_time))
    times.update(p.time for p in graph.pulses)
    breaks = sorted(t for t in times if 0 < t < math.inf)
    edges = [0.0] + breaks + [math.inf]
    n_demes = len(names)
    index = {name: i for i, name in enumerate(names)}
    sizes, growth, kinds, alive, migration = [], [], [], [], []
    for j in range(len(edges) - 1):
        lo, hi = edges[j], edges[j + 1]
        row_size, row_growth, row_kind, row_alive = [], [], [], []
        for d in graph.demes:
            live = d.end_time <= lo and hi <= d.start_time
            row_alive.append(live)
            epoch = next((e for e in d.epochs if e.end_time <= lo < e.start_time), None)
            if not live or epoch is None:
                row_size.append(1.0)
                row_growth.append(0.0)
                row_kind.append("constant")
                continue
            young, old = _size_at(epoch, lo), _size_at(epoch, hi) if hi < math.inf else None
            kind = epoch.size_function if old is not None and old != young else "constant"
            row_size.append(young)
            row_kind.append(kind)
            if kind == "exponential":
                assert old is not None
                row_growth.append(math.log(old / young) / ((hi - lo) / gen))
            elif kind == "linear":
                assert old is not None
                row_growth.append((old - young) / ((hi - lo) / gen))
            else:
                row_growth.append(0.0)
        sizes.append(row_size)
        growth.append(row_growth)
        kinds.append(tuple(row_kind))
        alive.append(tuple(row_alive))
        mig = np.zeros((n_demes, n_demes))
        for m in graph.migrations:
            if m.end_time <= lo and hi <= m.start_time:
                mig[index[m.dest], index[m.source]] += m.rate
        migration.append(mig)
    transfers, patterns = [], []
    for tau in breaks:
        total = np.eye(n_demes)
        for p in reversed([p for p in graph.pulses if p.time == tau]):
            step = np.eye(n_demes)
            dest = index[p.dest]
            step[dest, dest] = 1.0 - sum(p.proportions)
            for s, prop in zip(p.sources, p.proportions):
                step[dest, index[s]] += prop
            total = total @ step
        for d in graph.demes:
            if d.start_time == tau and d.ancestors:
                step = np.eye(n_demes)
                step[index[d.name], index[d.name]] = 0.0
                for a, prop in zip(d.ancestors, d.proportions):
                    step[index[d.name], index[a]] += prop
                total = total @ step
        transfers.append(total)
        moved = [a for a in range(n_demes) if not np.array_equal(total[a], np.eye(n_demes)[a])]
        patterns.append(tuple((a, b) for a in moved for b in range(n_demes) if total[a, b] != 0))
    last_alive = [i for i, live in enumerate(alive[-1]) if live]
    if len(last_alive) > 1 and not _connected(migration[-1], last_alive):
        raise ValueError(
            f"demes {[names[i] for i in last_alive]} coexist forever without migration "
            f"connecting them: the TMRCA is infinite"
        )
    if N_ref is None:
        root = next(d for d in graph.demes if d.start_time == math.inf)
        N_ref = float(root.epochs[0].start_size)
    mig_pairs = tuple(sorted({(int(a), int(b)) for m in migration for a, b in zip(*np.nonzero(m))}))
    start = np.array([int(samples.get(name, 0)) for name in names], np.int64)
    space = _statespace.build(
        n_demes, np.ones((1, 1), np.int64), start, mig_pairs, patterns, max_states
    )
    arrays = dict(
        breaks=np.array(breaks) / gen,
        sizes=np.array(sizes),
        growth=np.array(growth),
        migration=np.array(migration),
        transfers=np.array(transfers).reshape(len(breaks), n_demes, n_demes),
    )
    static = dict(
        demes=tuple(names),
        samples=tuple((name, int(n)) for name, n in samples.items()),
        time_units=time_units,
        N_ref=float(N_ref),
        kinds=tuple(kinds),
        alive=tuple(alive),
        patterns=tuple(patterns),
        migration_pairs=mig_pairs,
    )
    return arrays, static, space


def _connected(mig: np.ndarray, demes: list) -> bool:
    """Whether every deme of ``demes`` reaches every other through nonzero rates."""
    sub = mig[np.ix_(demes, demes)] > 0
    reach = np.eye(len(demes), dtype=bool) | sub
    for _ in range(len(demes)):
        reach = reach | (reach.astype(int) @ reach.astype(int) > 0)
    return bool(reach.all())


def _log_span(kind: str, size, growth, width: float) -> float:
    """``|log(N_old / N_young)|`` of one deme over one epoch (build-time values)."""
    if kind == "exponential":
        return abs(growth * width)
    if kind == "linear":
        return abs(math.log1p(growth * width / size))
    return 0.0


def _closed_spans(arrays: dict, kinds: tuple) -> list[list[float]]:
    """Per closed epoch, each deme's change of log-size across it (`_log_span`)."""
    edges = np.concatenate([[0.0], arrays["breaks"]])
    return [
        [
            _log_span(kind, arrays["sizes"][j, d], arrays["growth"][j, d], edges[j + 1] - edges[j])
            for d, kind in enumerate(row)
        ]
        for j, row in enumerate(kinds[:-1])
    ]


def _refinement(arrays: dict, kinds: tuple, step: float) -> tuple[int, ...]:
    """Sub-epochs per epoch so that no deme's log-size changes by more than ``step``."""
    spans = _closed_spans(arrays, kinds)
    return tuple(max(1, math.ceil(max(row) / step)) for row in spans) + (1,)


def _hazard_steps(arrays: dict, kinds: tuple, tol: float) -> tuple[int, ...]:
    """Sub-intervals per epoch of the change-of-time route (`phasejax.popgen._hazard`):
    its bound uses the change of ``log N`` (linear) or of ``N`` relative to its smaller
    value (exponential) per sub-interval; the largest over the demes."""
    out = []
    for spans, row in zip(_closed_spans(arrays, kinds), kinds):
        spans = [math.expm1(x) if k == "exponential" else x for x, k in zip(spans, row)]
        out.append(_hazard.steps_for(max(spans), tol))
    return tuple(out) + (1,)


@eqx.filter_jit
def _reference_sfs(demography: Demography) -> Array:
    return demography.expected_sfs()[1:-1]


@eqx.filter_jit
def _checked_quantity(demography: Demography) -> Array:
    """What the refinement check of the chains compares: for one panmictic sample the
    expected SFS their lineage times give, else the occupancy of every lineage-counting
    state."""
    space = demography.lineage_space
    occupancy = extrapolate(demography.chains(space), PiecewiseChain.occupancy)
    if demography._pool_demes() is None:
        return occupancy
    n = demography.samples[0][1]
    weights = jnp.asarray(_sfs.polanski_kimmel(n))
    return (weights @ _sfs.lineage_times(occupancy, space, n))[1:-1]


def from_demes(
    model: Any,
    samples: dict,
    *,
    time_units: str = "coalescent",
    N_ref: float | None = None,
    tol: float = 1e-6,
    check: bool = True,
    max_states: int = 20_000,
) -> Demography:
    """A [`phasejax.popgen.Demography`][] from a demes model.

    Args:
        model: a ``demes.Graph`` or the path of a demes YAML file.
        samples: deme name -> number of haploid lineages sampled at time 0; the order
            is the order of the SFS axes.
        time_units: ``"coalescent"`` (units of ``2 N_ref`` generations: a pair coalesces
            at rate ``N_ref / N``) or ``"generations"``.
        N_ref: the reference size; default the size of the first root deme.
        tol: relative error target of the refinement of growing or shrinking sizes.
        check: verify ``tol`` at the build-time parameters: halve the sub-epoch width
            until every entry of the expected SFS (one panmictic sample), else the
            occupancy of every lineage-counting state, changes by at most ``tol`` relative, and keep the finer level (whose error is then about
            ``tol / 16``); without it, the a priori width alone (faster to build).
        max_states: state budget of the lineage-counting space.
    """
    graph = load(model)
    arrays, static, space = parse(graph, dict(samples), time_units, N_ref, max_states)
    jarrays = {k: jnp.asarray(v, float) for k, v in arrays.items()}
    # a priori: Richardson's error is O(step^4); 0.125 per unit of log-size meets 1e-6 on
    # bottlenecks and 100-fold growth; then halve until two levels agree to tol
    step, previous = 0.125 * (tol / 1e-6) ** 0.25, None
    hazard_steps = _hazard_steps(arrays, static["kinds"], tol)
    while True:
        refine = _refinement(arrays, static["kinds"], step)
        demography = Demography(
            **jarrays, **static, refine=refine, hazard_steps=hazard_steps, lineage_space=space
        )
        if all(k == 1 for k in refine) or not check:
            return demography
        if previous is None and demography._pool_demes() is not None:
            # one panmictic sample: the change-of-time SFS at tol / 100 is a reference
            # (a priori bound), so one chain level usually settles the check
            tight = _hazard_steps(arrays, static["kinds"], tol / 100)
            previous = np.asarray(
                _reference_sfs(dataclasses.replace(demography, hazard_steps=tight))
            )
        occupancy = np.asarray(_checked_quantity(demography))
        if previous is not None:
            floor = 1e-12 * occupancy.sum()
            change = np.abs(occupancy - previous) / np.maximum(np.abs(occupancy), floor)
            if change.max() <= tol:
                return demography
            if max(refine) > 4096:
                raise ValueError(
                    f"size-change refinement did not reach tol={tol} (relative change "
                    f"{change.max():.2e} with {max(refine)} sub-epochs)"
                )
        step, previous = step / 2, occupancy
