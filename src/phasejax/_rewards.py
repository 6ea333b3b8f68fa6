"""Reward transformation: ``Y = int r(X_t) dt`` as a phase-type distribution of its own.

Split the transient states into ``P`` (reward > 0) and ``Z`` (reward 0). Time in ``Z``
accumulates nothing, so a visit to ``Z`` is folded into its neighbours: with
``B = (-S_ZZ)^{-1} [S_ZP, s_Z]`` (where a path entering ``Z`` leaves it),

    S' = R_P^{-1} (S_PP + S_PZ B_P),     s' = R_P^{-1} (s_P + S_PZ B_abs),
    alpha' = alpha_P + alpha_Z B_P,      defect' = 1 - sum(alpha').

The *pattern* (which states are zero, which new edges appear) is static and fixed when
the [`RewardTransform`][phasejax.RewardTransform] is built on the host; rates and reward values stay traced,
so the transformed distribution is differentiable in theta and in the positive rewards.
The fold solves a dense ``|Z| x |Z|`` system (O(|Z|^3)): meant for zero sets of up to a
few thousand states.
"""

from __future__ import annotations

import equinox as eqx
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, ArrayLike, Bool, Int

from . import _linalg, _sparse
from ._distribution import AbstractPhaseType, DiscretePhaseType, PhaseType
from ._structure import Structure, at_trace_time, check_rewards, make_structure


def _dense(rows, cols, values, shape):
    return jnp.zeros(shape, values.dtype).at[rows, cols].add(values)


class RewardTransform(eqx.Module):
    """The static plan of a reward transformation for one [`Structure`][phasejax.Structure].

    Build it once (host side) with [`build`][phasejax.RewardTransform.build]; apply it to any distribution of
    that structure with [`__call__`][phasejax.RewardTransform.__call__].
    """

    structure: Structure  # of the transformed distribution (states P)
    positive: Int[Array, " p"]  # original transient index of each P state
    zero: Int[Array, " z"]  # original transient index of each Z state
    local: Int[Array, " n+1"]  # original index -> position in P (or Z); n -> absorption
    edge_pair: Int[Array, " e"]  # original edge -> new edge id (or E' if not a P-source edge)
    new_src: Int[Array, " e2"]
    new_dst: Int[Array, " e2"]  # in P-local indices; p_count = absorption
    src_kind: Int[Array, " e"]  # 0: from P, 1: from Z
    dst_kind: Int[Array, " e"]  # 0: to P, 1: to Z, 2: absorption

    @classmethod
    @at_trace_time
    def build(
        cls, structure: Structure, positive_vertices: Bool[np.ndarray, " V"], solver="auto"
    ) -> RewardTransform:
        """Plan the fold for rewards that are positive exactly on ``positive_vertices`` (per vertex)."""
        src = np.asarray(structure.src)
        dst = np.asarray(structure.dst)
        n = structure.n_transient
        transient = np.asarray(structure.transient_vertices)
        mask = np.asarray(positive_vertices, dtype=bool)
        if mask.shape != (structure.n_vertices,):
            raise ValueError(
                f"the positive-reward mask needs one entry per vertex ({structure.n_vertices})"
            )
        is_pos = mask[transient]
        pos, zer = np.flatnonzero(is_pos), np.flatnonzero(~is_pos)
        if pos.size == 0:
            raise ValueError(
                "rewards are zero on every transient state: the accumulated reward is 0 on every path"
            )
        p_count, z_count = pos.size, zer.size
        local = np.full(n + 1, -1, dtype=np.int64)
        local[pos], local[zer], local[n] = np.arange(p_count), np.arange(z_count), -1
        src_kind = np.where(is_pos[src], 0, 1)
        dst_kind = np.where(dst == n, 2, np.where(is_pos[np.minimum(dst, n - 1)], 0, 1))
        # Structural pattern of B (Z -> P or absorption), via unit rates: every term of
        # (I - P_ZZ)^{-1} is a sum of positive path weights, so a structural nonzero
        # cannot cancel and the pattern holds for every theta.
        target_p = np.where(dst_kind == 2, p_count, local[dst])
        if z_count:
            m_zz = np.zeros((z_count, z_count))
            zz = (src_kind == 1) & (dst_kind == 1)
            np.add.at(m_zz, (local[src[zz]], local[dst[zz]]), -1.0)
            zout = src_kind == 1
            np.add.at(m_zz, (local[src[zout]], local[src[zout]]), 1.0)
            rhs = np.zeros((z_count, p_count + 1))
            zx = (src_kind == 1) & (dst_kind != 1)
            np.add.at(rhs, (local[src[zx]], target_p[zx]), 1.0)
            b_pattern = np.linalg.solve(m_zz, rhs) > 0
        else:
            b_pattern = np.zeros((0, p_count + 1), dtype=bool)
        # new edges: direct P -> (P or absorption), and P -> Z -> ... -> (P or absorption)
        pairs = set()
        direct = (src_kind == 0) & (dst_kind != 1)
        pairs.update(zip(local[src[direct]].tolist(), target_p[direct].tolist()))
        into_z = (src_kind == 0) & (dst_kind == 1)
        for p, z in zip(local[src[into_z]].tolist(), local[dst[into_z]].tolist()):
            pairs.update((p, q) for q in np.flatnonzero(b_pattern[z]).tolist() if q != p)
        pairs = sorted(pairs)
        new_src = np.array([p for p, _ in pairs], dtype=np.int64)
        new_dst = np.array([q for _, q in pairs], dtype=np.int64)
        # Each original P-source edge adds its rate to one new edge (a segment sum at call
        # time); edges from or into Z reach the new edges only through the dense fold.
        pair_id = {pq: i for i, pq in enumerate(pairs)}
        edge_pair = np.full(src.size, len(pairs), dtype=np.int64)
        for e in np.flatnonzero(direct):
            edge_pair[e] = pair_id[(local[src[e]], target_p[e])]
        new_structure = make_structure(
            structure.n_vertices, transient[pos], new_src, new_dst, False, solver
        )
        return cls(
            structure=new_structure,
            positive=jnp.asarray(pos),
            zero=jnp.asarray(zer),
            local=jnp.asarray(np.where(local < 0, 0, local)),
            edge_pair=jnp.asarray(edge_pair),
            new_src=jnp.asarray(new_src),
            new_dst=jnp.asarray(new_dst),
            src_kind=jnp.asarray(src_kind),
            dst_kind=jnp.asarray(dst_kind),
        )

    def fold(self, dist: AbstractPhaseType):
        """Eliminate the zero-reward states: ``(rate, diag, alpha)`` over the states ``P``.

        The same fold serves both kinds: ``M = -S`` or ``I - T`` has one form.
        """
        src, dst = dist.structure.src, dist.structure.dst
        p_count, z_count = self.positive.shape[0], self.zero.shape[0]
        rate = dist.rate
        loc_src, loc_dst = (
            self.local[src],
            self.local[jnp.minimum(dst, dist.structure.n_transient - 1)],
        )
        target_p = jnp.where(self.dst_kind == 2, p_count, loc_dst)
        from_z, to_z = self.src_kind == 1, self.dst_kind == 1
        new_rate = _sparse.segment_sum(rate, self.edge_pair, self.new_src.shape[0])
        alpha_p = dist.alpha[self.positive]
        if z_count:
            inner = from_z & to_z
            m_zz = (
                jnp.diag(dist.diag[self.zero])
                - _dense(
                    jnp.where(inner, loc_src, z_count),
                    jnp.where(inner, loc_dst, 0),
                    jnp.where(inner, rate, 0.0),
                    (z_count + 1, z_count),
                )[:z_count]
            )
            leave = from_z & ~to_z
            rhs = _dense(
                jnp.where(leave, loc_src, z_count),
                jnp.where(leave, target_p, 0),
                jnp.where(leave, rate, 0.0),
                (z_count + 1, p_count + 1),
            )[:z_count]
            b = _linalg.solve(m_zz, rhs)  # (Z, P + 1)
            enter = ~from_z & to_z
            a_pz = _dense(
                jnp.where(enter, loc_src, p_count),
                jnp.where(enter, loc_dst, 0),
                jnp.where(enter, rate, 0.0),
                (p_count + 1, z_count),
            )[:p_count]
            new_rate = new_rate + (a_pz @ b)[self.new_src, self.new_dst]
            alpha_p = alpha_p + dist.alpha[self.zero] @ b[:, :p_count]
        new_diag = _sparse.segment_sum(new_rate, self.new_src, p_count)
        alpha_p = eqx.error_if(
            alpha_p, jnp.sum(alpha_p) <= 0, "the reward is zero on every path from the start"
        )
        return new_rate, new_diag, alpha_p

    def __call__(self, dist: PhaseType, rewards: ArrayLike) -> PhaseType:
        """The [`PhaseType`][phasejax.PhaseType] of ``Y = int r(X_t) dt`` (``rewards`` per vertex, traced)."""
        if dist.structure.discrete:
            raise ValueError(
                "use DiscreteRewardTransform (integer rewards) for a discrete distribution"
            )
        r = dist._rewards(rewards)
        r_pos = eqx.error_if(
            r[self.positive],
            jnp.any(r[self.positive] <= 0),
            "a reward expected positive (by the plan's mask) is zero",
        )
        new_rate, new_diag, alpha_p = self.fold(dist)
        return PhaseType(self.structure, new_rate / r_pos[self.new_src], new_diag / r_pos, alpha_p)


class DiscreteRewardTransform(eqx.Module):
    """``Y = sum_k r(X_k)`` of a DPH with non-negative integer rewards, as a DPH.

    Zero-reward states are folded away as in [`RewardTransform`][phasejax.RewardTransform]; a state with
    reward ``r >= 2`` becomes a chain of ``r`` sub-states (each step of the chain
    counts 1), the last carrying the state's transitions and, as an edge back to the
    first, its probability of staying. The rewards are static (they set the
    structure); the probabilities stay traced. Per-vertex outputs of the result add
    up a state's sub-states.
    """

    plan: RewardTransform
    structure: Structure
    first: Int[Array, " p"]  # first sub-state of each P state
    last: Int[Array, " p"]
    chain_src: Int[Array, " c"]  # sub-state -> next sub-state edges (probability 1)
    repeat: Int[Array, " q"]  # P states with r >= 2 (edge last -> first: staying)

    @classmethod
    @at_trace_time
    def build(
        cls, structure: Structure, rewards: np.ndarray, solver="auto"
    ) -> DiscreteRewardTransform:
        rewards = np.asarray(rewards)
        if rewards.shape != (structure.n_vertices,):
            raise ValueError(f"rewards need one entry per vertex ({structure.n_vertices})")
        if np.any(np.isnan(rewards)) or np.any(rewards < 0) or np.any(rewards != np.round(rewards)):
            raise ValueError("discrete reward transformation needs non-negative integer rewards")
        plan = RewardTransform.build(structure, rewards > 0, solver)
        transient = np.asarray(structure.transient_vertices)
        pos = np.asarray(plan.positive)
        counts = rewards[transient[pos]].astype(np.int64)
        first = np.concatenate([[0], np.cumsum(counts)[:-1]])
        last = first + counts - 1
        total = int(counts.sum())
        chain_src = np.concatenate(
            [np.arange(f, l) for f, l in zip(first, last)] + [np.zeros(0, np.int64)]
        )
        repeat = np.flatnonzero(counts >= 2)
        p_count = pos.size
        new_src, new_dst = np.asarray(plan.new_src), np.asarray(plan.new_dst)
        src = np.concatenate([last[new_src], chain_src, last[repeat]])
        dst = np.concatenate(
            [
                np.where(new_dst == p_count, total, first[np.minimum(new_dst, p_count - 1)]),
                chain_src + 1,
                first[repeat],
            ]
        )
        vertices = np.repeat(transient[pos], counts)
        expanded = make_structure(structure.n_vertices, vertices, src, dst, True, solver)
        return cls(
            plan,
            expanded,
            jnp.asarray(first),
            jnp.asarray(last),
            jnp.asarray(chain_src),
            jnp.asarray(repeat),
        )

    def __call__(self, dist: DiscretePhaseType) -> DiscretePhaseType:
        if not dist.structure.discrete:
            raise ValueError("DiscreteRewardTransform applies to discrete distributions")
        new_rate, new_diag, alpha_p = self.plan.fold(dist)
        dtype = new_rate.dtype
        stay = 1.0 - new_diag[self.repeat]
        rate = jnp.concatenate([new_rate, jnp.ones(self.chain_src.shape[0], dtype), stay])
        n = self.structure.n_transient
        diag = jnp.ones(n, dtype).at[self.last].set(new_diag).at[self.last[self.repeat]].set(1.0)
        alpha = jnp.zeros(n, dtype).at[self.first].set(alpha_p)
        return DiscretePhaseType(self.structure, rate, diag, alpha)


def reward_transform(
    dist: AbstractPhaseType,
    rewards: ArrayLike,
    positive: Bool[np.ndarray, " V"] | None = None,
    solver="auto",
):
    """``Y = int r(X_t) dt`` as a [`PhaseType`][phasejax.PhaseType] (zero rewards allowed); for a
    discrete distribution ``Y = sum_k r(X_k)`` as a [`DiscretePhaseType`][phasejax.DiscretePhaseType]
    (non-negative integer rewards, concrete).

    ``positive`` (per vertex, static) says where rewards are positive; by default it is
    read from ``rewards``, which must then be concrete (not traced). Under ``jit``,
    build a [`RewardTransform`][phasejax.RewardTransform] once and call it, or pass ``positive``.
    """
    if positive is None:
        try:
            values = np.asarray(rewards, dtype=np.float64)
        except Exception as err:  # a tracer
            raise ValueError(
                "reward_transform needs the zero pattern of the rewards: pass `positive=` (a boolean mask "
                "per vertex) when the rewards are traced"
            ) from err
        check_rewards(values)
        positive = values > 0
        if isinstance(dist, DiscretePhaseType):
            return DiscreteRewardTransform.build(dist.structure, values, solver)(dist)
    if not isinstance(dist, PhaseType):
        raise ValueError(
            "discrete reward transformation needs concrete integer rewards (they set the structure)"
        )
    return RewardTransform.build(dist.structure, positive, solver)(dist, rewards)
