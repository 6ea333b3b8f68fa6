"""Exact lumping of a chain's transient states (ordinary lumpability), found on the host.

A partition of the transient states into blocks is *ordinarily lumpable* when every
state of a block ``B`` has the same total rate into each other block ``C`` (absorption
is a block of its own). With the collector ``V`` (``V_iB = 1`` when ``i`` is in ``B``)
that is ``S V = V S_bar``, hence ``exp(S t) V = V exp(S_bar t)``, and everything that
depends on the states only through the absorption time (or a reward constant on each
block) is that of the ``m``-state chain ``S_bar`` started from ``alpha_bar = alpha V``:

    alpha exp(S t) s = alpha_bar exp(S_bar t) s_bar,     s_bar_B = s_i (any i in B).

``S_bar``'s rate ``B -> C`` is the total rate of any state of ``B`` into ``C``. With rates
linear in ``theta`` (``base + coefficients . theta``) the totals are compared as vectors
``(base, coefficients)``, bit for bit, so the lumping is exact at every ``theta``: never a
tolerance (equal totals summed in different orders may round apart, and then the states
simply stay in different blocks).

The coarsest lumpable refinement of a starting partition comes from Moore's refinement:
split blocks by each state's signature (its totals into the other blocks) until nothing
splits. An acyclic graph starts from its heights (longest path to absorption), where a
coalescent's lineage-count classes are already stable (one round); a cyclic one from a
single block.
"""

from __future__ import annotations

import equinox as eqx
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float, Int

from ._solve import LinearRates
from ._structure import Structure, make_structure
from ._topology import group, group_sums, heights

# Moore rounds before giving up (no lumping: always exact, only slower): at most 256, and
# at most about 2^25 edge visits in all (a long cycle splits one state per round)
MAX_ROUNDS, MAX_WORK = 256, 2**25


def _relabel(labels: np.ndarray) -> tuple[np.ndarray, int]:
    """Labels as ``0..m-1`` (in order of first appearance), and ``m``."""
    _, first, inverse = np.unique(labels, axis=0, return_index=True, return_inverse=True)
    order = np.argsort(np.argsort(first, kind="stable"), kind="stable")
    return order[np.ravel(inverse)], first.size


def _totals(src, dst, weights, block, m):
    """Each state's total weight into each other block: ``(state, target, totals)`` rows
    sorted by state then target (``target = m``: absorption; totals that are all zero
    are no flow and dropped; flows into the state's own block do not count)."""
    target = np.append(block, m)[dst]
    own = target == block[src]
    key = src.astype(np.int64) * (m + 1) + target
    keys, inverse = np.unique(key[~own], return_inverse=True)
    totals = group_sums(inverse, weights[~own], keys.size)
    flow = np.any(totals != 0, axis=1)
    keys, totals = keys[flow], totals[flow] + 0.0  # -0.0 -> 0.0: one bit pattern per value
    return keys // (m + 1), keys % (m + 1), totals


def coarsest_lumping(
    n: int, src: np.ndarray, dst: np.ndarray, weights: np.ndarray
) -> np.ndarray | None:
    """The block of each transient state (``0..m-1``) in the coarsest lumpable partition
    refining the starting one (module doc), or ``None`` when it has ``n`` blocks (nothing
    lumps) or does not settle within ``MAX_ROUNDS`` rounds or ``MAX_WORK`` edge visits.

    ``src``/``dst``: edges over states ``0..n-1`` (``dst == n``: absorption); ``weights``
    ``(e, k)``: each edge's rate as a vector (e.g. base weight and coefficients).
    """
    height = heights(n, src, dst)
    block, m = _relabel(np.zeros(n, np.int64) if height is None else height)
    for _ in range(min(MAX_ROUNDS, max(16, MAX_WORK // max(src.size, 1)))):
        state, target, totals = _totals(src, dst, weights, block, m)
        # one id per distinct (target, totals) row; a state's signature is its old block
        # and the ids of its rows in target order (padded to the longest)
        rows = np.column_stack([target, totals.view(np.int64)])
        _, row_id = np.unique(rows, axis=0, return_inverse=True)
        order, ptr = group(state, n)
        count = np.diff(ptr)
        signature = np.full((n, int(count.max(initial=0)) + 1), -1, np.int64)
        signature[:, 0] = block
        position = np.arange(state.size) - np.repeat(ptr[:-1], count)
        signature[state[order], 1 + position] = np.ravel(row_id)[order]
        block, m_new = _relabel(signature)
        if m_new == m:
            return None if m == n else block
        m = m_new
    return None


def first_states(block: np.ndarray) -> np.ndarray:
    """The first state of each block."""
    first = np.zeros(int(block.max()) + 1, np.int64)
    first[block[::-1]] = np.arange(block.size)[::-1]
    return first


def lumped_chain(src: np.ndarray, dst: np.ndarray, weights: np.ndarray, block: np.ndarray):
    """The lumped chain of a lumpable ``block`` labelling: edges ``(src, dst, weights)``
    over blocks ``0..m-1`` (``dst == m``: absorption), each block's rates those of its
    first state into the other blocks (equal for all its states)."""
    m = int(block.max()) + 1
    state, target, totals = _totals(src, dst, weights, block, m)
    keep = first_states(block)[block[state]] == state
    return block[state[keep]], target[keep], totals[keep]


class Lumping(eqx.Module):
    """A model's exact lumping (module doc) with its rates linear in ``theta``:
    ``block[i]`` is the block of transient state ``i``; ``structure`` the lumped chain's
    edges over the ``m`` blocks; ``base``/``coefficients`` its edge rates and
    ``state_base``/``state_coefficients`` each block's total out-rate, as in
    [`LinearRates`][phasejax._solve.LinearRates] (the same ``theta`` and scale apply)."""

    block: Int[Array, " n"]
    structure: Structure
    base: Float[np.ndarray, " e"]
    coefficients: Float[np.ndarray, "e p"]
    state_base: Float[np.ndarray, " m"]
    state_coefficients: Float[np.ndarray, "m p"]

    @property
    def n_blocks(self) -> int:
        return self.structure.n_transient

    def rates(
        self,
        theta: Float[Array, " p"] | Float[np.ndarray, " p"],
        scale: Float[Array, ""] | Float[np.ndarray, ""],
        xnp=jnp,
    ) -> LinearRates:
        """The lumped chain's rates at ``theta`` and ``scale`` (those of the full chain's
        `LinearRates`), in ``theta``'s dtype; ``xnp=np`` evaluates on the host."""
        dtype = theta.dtype
        return LinearRates(
            xnp.asarray(self.base, dtype),
            xnp.asarray(self.coefficients, dtype),
            xnp.asarray(self.state_base, dtype),
            xnp.asarray(self.state_coefficients, dtype),
            xnp.asarray(theta),
            xnp.asarray(scale, dtype),
        )

    @classmethod
    def build(cls, structure: Structure, base: np.ndarray, coef: np.ndarray) -> Lumping | None:
        """The lumping of a continuous chain (``structure``) whose transient edges have
        rates ``base + coef . theta``, or ``None`` where nothing lumps."""
        n = structure.n_transient
        src, dst = np.asarray(structure.src), np.asarray(structure.dst)
        weights = np.column_stack([base, coef])
        block = coarsest_lumping(n, src, dst, weights)
        if block is None:
            return None
        l_src, l_dst, totals = lumped_chain(src, dst, weights, block)
        m = int(block.max()) + 1
        state_totals = group_sums(l_src, totals, m)
        # each block reports the vertex of its first state
        vertices = np.asarray(structure.transient_vertices)[first_states(block)]
        return cls(
            jnp.asarray(block, jnp.int32),
            make_structure(structure.n_vertices, vertices, l_src, l_dst, False),
            totals[:, 0],
            totals[:, 1:],
            state_totals[:, 0],
            state_totals[:, 1:],
        )
