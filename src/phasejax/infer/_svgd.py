"""Stein variational gradient descent (Liu & Wang, 2016) as one jitted program.

Each step evaluates ``log p`` and its exact gradient at every particle (``vmap`` of
``value_and_grad``), forms the Stein direction

    phi(x_i) = (1/P) sum_j [ k(x_j, x_i) grad log p(x_j) + grad_{x_j} k(x_j, x_i) ]

and moves ``x <- x + eps * phi``, through an optax optimizer fed ``-phi`` as the
gradient (plain SGD with learning rate ``eps`` is the textbook update). Steps run in
``lax.scan``; snapshots every ``thin`` steps come out of an outer scan.

All run-time state (particles, optimizer state, step counter, key) lives in the
:class:`SVGDState` pytree, together with the log density, optimizer and kernel, so a
run can be stopped, serialised (``equinox.tree_serialise_leaves``) and resumed with
nothing lost: ``svgd_run(svgd_run(s, 300).state, 200)`` gives the same particles as
``svgd_run(s, 500)``.
"""

from __future__ import annotations

from collections.abc import Callable

import equinox as eqx
import jax
import jax.numpy as jnp
import optax
from jaxtyping import Array, Float, Int

from . import _sharding
from ._kernels import RBF, AbstractKernel, stein_direction

_DEFAULT_OPTIMIZER = optax.adam(1e-2)


def default_optimizer() -> optax.GradientTransformation:
    """``optax.adam(1e-2)``, one shared instance: it is part of the compiled program's
    static configuration, so every run with the default reuses the same compilation."""
    return _DEFAULT_OPTIMIZER


class SVGDState(eqx.Module):
    """Everything an SVGD run needs to continue: a pytree.

    Array leaves (``particles``, ``opt_state``, ``step``, ``key``, and any arrays held
    by ``logdensity`` or ``kernel``) are what ``eqx.tree_serialise_leaves`` writes; build
    the template for ``tree_deserialise_leaves`` with :func:`svgd_init` and the same
    arguments.
    """

    particles: Float[Array, "P D"]
    opt_state: optax.OptState
    step: Int[Array, ""]
    key: Array
    logdensity: Callable
    kernel: AbstractKernel
    optimizer: optax.GradientTransformation = eqx.field(static=True)
    pass_step: bool = eqx.field(static=True, default=False)
    pass_key: bool = eqx.field(static=True, default=False)
    shard: bool | None = eqx.field(static=True, default=None)

    @property
    def n_particles(self) -> int:
        return self.particles.shape[0]

    def log_density(self, x: Float[Array, " D"], step=None, key=None) -> Float[Array, ""]:
        """The log density at one particle, called as configured (``step=``/``key=``)."""
        kwargs = {}
        if self.pass_step:
            kwargs["step"] = self.step if step is None else step
        if self.pass_key:
            kwargs["key"] = (
                jax.random.fold_in(self.key, self.step if step is None else step)
                if key is None
                else key
            )
        return self.logdensity(x, **kwargs)


class SVGDResult(eqx.Module):
    """``particles`` (final, ``(P, D)``), ``history`` (every ``thin``-th step,
    ``(steps // thin, P, D)``), ``trace`` (mean log density over particles at each
    step, before its update, ``(steps,)``) and ``state`` (to resume)."""

    particles: Float[Array, "P D"]
    history: Float[Array, "K P D"]
    trace: Float[Array, " S"]
    state: SVGDState


def svgd_init(
    logdensity: Callable,
    particles: Float[Array, "P D"],
    *,
    optimizer: optax.GradientTransformation | None = None,
    kernel: AbstractKernel | None = None,
    key: Array | None = None,
    pass_step: bool = False,
    shard: bool | None = None,
) -> SVGDState:
    """Initial :class:`SVGDState`.

    **Arguments:**

    - `logdensity`: ``x (D,) -> scalar`` log density (unnormalised), differentiable.
      With ``pass_step=True`` it is called ``logdensity(x, step=step)`` (a traced int,
      e.g. for annealing); with a `key`, ``logdensity(x, key=k)`` where
      ``k = fold_in(key, step)`` is shared by all particles of a step (minibatches).
      A callable ``equinox.Module`` keeps its arrays as traced inputs, so refitting
      new data of the same shape reuses the compiled program.
    - `particles`: ``(P, D)`` initial particles.
    - `optimizer`: optax transformation (default ``optax.adam(1e-2)``).
    - `kernel`: default :class:`RBF` with the median-heuristic bandwidth.
    - `shard`: spread particles over devices (``None``: when more than one device
      exists and ``P`` is a multiple of the device count).
    """
    particles = jnp.asarray(particles)
    if particles.ndim != 2:
        raise ValueError(f"particles must have shape (n_particles, dim), got {particles.shape}")
    if not jnp.issubdtype(particles.dtype, jnp.floating):
        particles = particles.astype(jnp.result_type(float))
    if particles.shape[0] < 2:
        raise ValueError("SVGD needs at least 2 particles")
    optimizer = default_optimizer() if optimizer is None else optimizer
    kernel = RBF() if kernel is None else kernel
    pass_key = key is not None
    if key is None:
        key = jax.random.PRNGKey(0)
    elif jnp.issubdtype(key.dtype, jax.dtypes.prng_key):
        key = jax.random.key_data(key)
    _sharding.particle_sharding(particles.shape[0], shard)  # validate early
    return SVGDState(
        particles=particles,
        opt_state=optimizer.init(particles),
        step=jnp.zeros((), jnp.int32),
        key=key,
        logdensity=logdensity,
        kernel=kernel,
        optimizer=optimizer,
        pass_step=pass_step,
        pass_key=pass_key,
        shard=shard,
    )


def _report(step, value):
    print(f"svgd step {int(step):>7d}  mean log density {float(value): .6g}", flush=True)


def _one_step(state: SVGDState, carry, sharding, progress_every: int | None):
    x, opt_state, step = carry
    n = x.shape[0]
    key = jax.random.fold_in(state.key, step)
    logp, grads = jax.vmap(
        jax.value_and_grad(lambda xi: state.log_density(xi, step=step, key=key))
    )(x)
    phi = stein_direction(x, grads, state.kernel)
    updates, opt_state = state.optimizer.update(-phi, opt_state, x)
    x = optax.apply_updates(x, updates)
    x, opt_state = _sharding.constrain((x, opt_state), n, sharding)
    mean_logp = jnp.mean(logp)
    if progress_every:
        jax.lax.cond(
            (step + 1) % progress_every == 0,
            lambda: jax.debug.callback(_report, step + 1, mean_logp),
            lambda: None,
        )
    return (x, opt_state, step + 1), mean_logp


@eqx.filter_jit
def _run(state: SVGDState, steps: int, thin: int, progress_every: int | None):
    n = state.n_particles
    sharding = _sharding.particle_sharding(n, state.shard)
    carry = _sharding.constrain((state.particles, state.opt_state, state.step), n, sharding)

    def step_fn(carry, _):
        return _one_step(state, carry, sharding, progress_every)

    n_keep = steps // thin if thin else 0
    chunk = thin if thin else 0

    def chunk_fn(carry, _):
        carry, trace = jax.lax.scan(step_fn, carry, None, length=chunk)
        return carry, (carry[0], trace)

    if n_keep:
        carry, (history, traces) = jax.lax.scan(chunk_fn, carry, None, length=n_keep)
        trace = traces.reshape(-1)
    else:
        history = jnp.zeros((0,) + state.particles.shape, state.particles.dtype)
        trace = jnp.zeros((0,), state.particles.dtype)
    rest = steps - n_keep * chunk
    if rest:
        carry, trace_rest = jax.lax.scan(step_fn, carry, None, length=rest)
        trace = jnp.concatenate([trace, trace_rest])
    x, opt_state, step = carry
    new_state = eqx.tree_at(
        lambda s: (s.particles, s.opt_state, s.step), state, (x, opt_state, step)
    )
    return SVGDResult(particles=x, history=history, trace=trace, state=new_state)


def svgd_run(
    state: SVGDState, steps: int, *, thin: int | None = 10, progress_every: int | None = None
) -> SVGDResult:
    """Run ``steps`` SVGD iterations from ``state`` (one compiled program per shape).

    ``thin``: keep the particles after every ``thin``-th step in ``history`` (``None``
    or 0: none). ``progress_every``: print the mean log density every that many steps
    (through ``jax.debug.callback``; quiet when ``None``). Resume with
    ``svgd_run(result.state, more_steps)``.
    """
    steps = int(steps)
    if steps < 0:
        raise ValueError(f"steps must be >= 0, got {steps}")
    thin = int(thin) if thin else 0
    progress_every = int(progress_every) if progress_every else None
    sharding = _sharding.particle_sharding(state.n_particles, state.shard)
    if sharding is not None:
        n = state.n_particles
        state = eqx.tree_at(
            lambda s: (s.particles, s.opt_state, s.step, s.key),
            state,
            _sharding.place((state.particles, state.opt_state, state.step, state.key), n, sharding),
        )
    return _run(state, steps, thin, progress_every)


def svgd(
    logdensity: Callable,
    particles: Float[Array, "P D"],
    *,
    steps: int,
    optimizer: optax.GradientTransformation | None = None,
    kernel: AbstractKernel | None = None,
    thin: int | None = 10,
    progress_every: int | None = None,
    key: Array | None = None,
    pass_step: bool = False,
    shard: bool | None = None,
) -> SVGDResult:
    """Stein variational gradient descent on ``logdensity`` from ``particles``.

    Equivalent to ``svgd_run(svgd_init(logdensity, particles, ...), steps, ...)``; see
    :func:`svgd_init` for the arguments and :func:`svgd_run` for ``thin`` and
    ``progress_every``. Returns an :class:`SVGDResult`.
    """
    state = svgd_init(
        logdensity,
        particles,
        optimizer=optimizer,
        kernel=kernel,
        key=key,
        pass_step=pass_step,
        shard=shard,
    )
    return svgd_run(state, steps, thin=thin, progress_every=progress_every)


def save_state(path, state: SVGDState) -> None:
    """Write the array leaves of ``state`` (``equinox.tree_serialise_leaves``)."""
    eqx.tree_serialise_leaves(path, state)


def load_state(path, template: SVGDState) -> SVGDState:
    """Read a state written by :func:`save_state` into ``template`` (from :func:`svgd_init`
    with the same log density, optimizer, kernel and particle shape)."""
    return eqx.tree_deserialise_leaves(path, template)
