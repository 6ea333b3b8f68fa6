"""The static structure every distribution needs: transient states, edges, solver.

A [`Structure`][phasejax.Structure] holds only integer arrays whose *shapes* depend on the graph
(edge sources and targets over transient states, each state's out-edges, the vertex of
each state) and the solver chosen from them. It sits below the distributions and
above the host-side graph algorithms (`phasejax._topology`) and solvers, so that
distributions, reward transforms and models all build on it without import cycles.
"""

from __future__ import annotations

import functools

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jax.core import Tracer
from jaxtyping import Array, ArrayLike, Float, Int

from ._solve import (
    AbstractSolver,
    DenseLU,
    LevelSweep,
    block_schedule,
    gmres_preconditioner,
    level_schedule,
)
from ._topology import out_edge_table, strong_components

DENSE_LIMIT = 500
BLOCK_LIMIT = 2000


class Structure(eqx.Module):
    """The static part of a phase-type distribution: transient states and their edges.

    ``src``/``dst`` index transient states ``0..n-1`` (``dst == n``: absorption);
    ``out_edges[i]`` lists the edges leaving state ``i`` (padded with ``E``);
    ``transient_vertices[i]`` is the graph vertex of state ``i``; ``solver`` solves
    with ``M = diag(d) - A``. Shared by every theta (and by reward transforms).
    """

    src: Int[Array, " e"]
    dst: Int[Array, " e"]
    out_edges: Int[Array, "n d"]
    transient_vertices: Int[Array, " n"]
    solver: AbstractSolver
    n_vertices: int = eqx.field(static=True)
    discrete: bool = eqx.field(static=True)

    @property
    def n_transient(self) -> int:
        return self.transient_vertices.shape[0]

    def to_vertices(
        self, x: Float[Array, " n ..."], start: Array | float = 0.0
    ) -> Float[Array, " V ..."]:
        """Scatter a per-transient-state array into vertex order (states sharing a vertex
        add up); row 0 (start) is ``start``."""
        out = (
            jnp.zeros((self.n_vertices,) + x.shape[1:], x.dtype).at[self.transient_vertices].add(x)
        )
        return out.at[0].set(start)

    def from_vertices(
        self, rewards: ArrayLike, dtype, checked: bool = False
    ) -> Float[Array, " n ..."]:
        """Per-vertex rewards (axis 0 over vertices) restricted to transient states
        (checked by `check_rewards` unless ``checked``)."""
        rewards = jnp.asarray(rewards, dtype)
        if rewards.shape[0] != self.n_vertices:
            raise ValueError(
                f"rewards have {rewards.shape[0]} entries along axis 0, expected one per vertex "
                f"({self.n_vertices}, the starting vertex included)"
            )
        if not checked:
            rewards = check_rewards(rewards)
        return rewards[self.transient_vertices]


class CheckedRewards(eqx.Module):
    """Rewards that `check_rewards` passed on the host before tracing: a compiled
    method that receives them skips the traced check, so its program carries no error
    callback (and JAX's persistent compilation cache can keep it)."""

    values: Array


def is_traced(x) -> bool:
    """Whether ``x`` is a tracer (inside ``jit``/``grad``/``vmap``) rather than concrete data."""
    return isinstance(x, Tracer)


def check_rewards(rewards):
    """``rewards`` unchanged if finite and non-negative, else a clear error.

    Concrete rewards raise ``ValueError`` naming the first bad entry; traced ones are
    checked with ``eqx.error_if``. (An infinite reward would give an infinite or NaN
    accumulated reward, so it is rejected rather than propagated.)
    """
    if is_traced(rewards):
        return eqx.error_if(
            rewards,
            jnp.any(~jnp.isfinite(rewards) | (rewards < 0)),
            "rewards must be finite and non-negative (a reward is negative, NaN or infinite)",
        )
    values = np.asarray(rewards)
    bad = np.argwhere(~np.isfinite(values) | (values < 0))
    if bad.size:
        where = tuple(int(i) for i in bad[0])
        raise ValueError(
            f"rewards must be finite and non-negative, but the entry at index {where} is "
            f"{values[where]}"
        )
    return rewards


def at_trace_time(fn):
    """Run ``fn`` (a host-side builder of static arrays) eagerly even while tracing, so
    the structure it builds is concrete data (e.g. a reward plan made inside ``jit``)."""

    @functools.wraps(fn)
    def eager(*args, **kwargs):
        with jax.ensure_compile_time_eval():
            return fn(*args, **kwargs)

    return eager


def _choose_solver(n: int, src: np.ndarray, dst: np.ndarray, solver: str) -> AbstractSolver:
    names = ("auto", "sweep", "blocks", "dense", "gmres")
    if solver not in names:
        raise ValueError(f"unknown solver {solver!r}: use one of {', '.join(map(repr, names))}")
    schedules = level_schedule(n, src, dst) if solver in ("auto", "sweep") else None
    if solver == "sweep" and schedules is None:
        raise ValueError("solver='sweep' needs an acyclic graph, but this graph has cycles")
    if schedules is not None:
        return LevelSweep(*(jnp.asarray(blocks) for blocks in schedules))
    if solver == "dense" or (solver == "auto" and n <= DENSE_LIMIT):
        return DenseLU()
    components = strong_components(n, src, dst)
    if solver == "auto":
        solver = "blocks" if np.bincount(components[0]).max() <= BLOCK_LIMIT else "gmres"
    if solver == "blocks":
        return block_schedule(n, src, dst, components=components)
    return gmres_preconditioner(n, src, dst, components[0])


@at_trace_time
def make_structure(
    n_vertices: int,
    transient: np.ndarray,
    src: np.ndarray,
    dst: np.ndarray,
    discrete: bool,
    solver: str | AbstractSolver = "auto",
) -> Structure:
    """Build a [`Structure`][phasejax.Structure] from numpy edge arrays over transient states.

    ``solver``: ``"auto"`` (level sweep if acyclic, else dense LU up to 500 transient
    states, else the block sweep over strongly connected components when none has more
    than 2,000 states, else GMRES preconditioned by block sweeps), ``"sweep"``, ``"blocks"``, ``"dense"``, ``"gmres"``,
    or an instance.
    The arrays are concrete even when this runs while tracing (e.g. a reward
    transformation built inside ``jit``): structure is data known at trace time.
    """
    n = transient.size
    if isinstance(solver, str):
        solver = _choose_solver(n, src, dst, solver)
    return Structure(
        src=jnp.asarray(src, jnp.int32),
        dst=jnp.asarray(dst, jnp.int32),
        out_edges=jnp.asarray(out_edge_table(n, src)),
        transient_vertices=jnp.asarray(transient, jnp.int32),
        solver=solver,
        n_vertices=n_vertices,
        discrete=discrete,
    )
