"""Fitting a target ([`Posterior`][phasejax.infer.Posterior] or any
[`AbstractTarget`][phasejax.infer.AbstractTarget]): SVGD particles and MAP estimates."""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable, Sequence

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jaxtyping import Array, ArrayLike, Float

from ._kernels import AbstractKernel
from ._svgd import DEFAULT_CHUNK, SVGDState, load_state, svgd_init, svgd_run
from ._target import AbstractTarget

_QUANTILES = (0.025, 0.25, 0.5, 0.75, 0.975)
DEFAULT_STEPS = 1000
# A fit counts as converged when the particles sit within this many posterior sds of an
# SVGD fixed point (the Stein residual) and, between three quarters of the run and its
# end, no parameter's particle mean or sd moved by more than this fraction of its sd.
_STATIONARY = 0.1


class FitResult(eqx.Module):
    """Posterior particles in parameter space and their summaries.

    ``particles`` ``(P, p)`` (theta), ``unconstrained`` ``(P, p)`` (z), ``history``
    ``(K, P, p)`` (theta, every ``thin`` steps), ``trace`` (mean log density per step),
    ``mean``, ``sd`` ``(p,)``, ``quantiles`` ``(Q, p)`` at ``quantile_levels``,
    ``state`` (pass as ``resume=`` to continue), ``interrupted`` (Ctrl-C stopped the
    run: the arrays cover the steps done), and two stationarity diagnostics:

    - ``residual`` ``(S,)``: per step, how far the particles were from an SVGD fixed
      point, in posterior sds (see [`stein_residual`][phasejax.infer.stein_residual]);
    - ``drift`` ``(p,)``: per parameter (in theta), ``max(|mean_end - mean_3/4|,
      |sd_end - sd_3/4|) / sd_end`` between the particles three quarters into the run
      and at its end (NaN when ``history`` holds fewer than 4 snapshots).

    ``converged``: both at most 0.1 (``fit_svgd`` warns when not).
    """

    particles: Float[Array, "P p"]
    unconstrained: Float[Array, "P p"]
    history: Float[Array, "K P p"]
    trace: Float[Array, " S"]
    residual: Float[Array, " S"]
    mean: Float[Array, " p"]
    sd: Float[Array, " p"]
    quantiles: Float[Array, "Q p"]
    drift: Float[Array, " p"]
    state: SVGDState
    quantile_levels: tuple[float, ...] = eqx.field(static=True)
    interrupted: bool = eqx.field(static=True, default=False)

    @property
    def converged(self) -> bool:
        """Whether the particles had come to rest: final ``residual`` and ``max(drift)``
        (where available) at most 0.1. ``False`` after no steps."""
        if self.residual.shape[0] == 0 or not float(self.residual[-1]) <= _STATIONARY:
            return False
        drift = float(jnp.max(self.drift))
        return bool(np.isnan(drift) or drift <= _STATIONARY)

    def summary(self, names: Sequence[str] | None = None) -> str:
        """A text table: mean, sd and quantiles per parameter."""
        p = self.mean.shape[0]
        names = [f"theta[{i}]" for i in range(p)] if names is None else list(names)
        head = f"{'':>12s} {'mean':>11s} {'sd':>11s} " + " ".join(
            f"{100 * q:>10.1f}%" for q in self.quantile_levels
        )
        rows = [head]
        for i in range(p):
            qs = " ".join(f"{float(v):>11.5g}" for v in self.quantiles[:, i])
            rows.append(
                f"{names[i]:>12s} {float(self.mean[i]):>11.5g} {float(self.sd[i]):>11.5g} {qs}"
            )
        return "\n".join(rows)


def summarize(particles: Float[Array, "P p"], quantiles: Sequence[float] = _QUANTILES):
    """``(mean, sd, quantiles)`` over the particle axis (``sd`` with ``ddof=1``)."""
    particles = jnp.asarray(particles)
    q = jnp.quantile(particles, jnp.asarray(quantiles, particles.dtype), axis=0)
    return jnp.mean(particles, axis=0), jnp.std(particles, axis=0, ddof=1), q


def _initial_particles(target: AbstractTarget, init, n_particles: int, key, init_scale: float):
    p = target.n_params
    dtype = jnp.result_type(float)
    tf = target.transform
    if init is None:
        try:
            theta = target.prior.sample(key, (n_particles,), p, dtype)
        except NotImplementedError:
            raise ValueError(
                f"the prior ({type(target.prior).__name__}) cannot be sampled: give `init` "
                "(theta of shape (n_params,) or (n_particles, n_params))"
            ) from None
        z = tf.inverse(theta)  # NaN for draws outside the transform's range (Normal < 0)
        # tame heavy-tailed prior draws (half-Cauchy): squash z smoothly into the draws'
        # 5%..95% range. Strictly monotone, so no two particles coincide (coincident
        # particles never separate under SVGD: their mutual repulsion is zero).
        lo, hi = jnp.nanquantile(z, 0.05, axis=0), jnp.nanquantile(z, 0.95, axis=0)
        centre, half = 0.5 * (lo + hi), jnp.maximum(0.5 * (hi - lo), 1e-3)
        spread = centre + 0.5 * half * jax.random.normal(jax.random.fold_in(key, 1), z.shape, dtype)
        z = jnp.where(jnp.isfinite(z), z, spread)
        z = centre + half * jnp.tanh((z - centre) / half)
    else:
        theta = jnp.asarray(init, dtype)
        if theta.shape == (p,):
            z0 = tf.inverse(theta)
            z = z0 + init_scale * jax.random.normal(key, (n_particles, p), dtype)
        elif theta.shape == (n_particles, p):
            z = tf.inverse(theta)
        else:
            raise ValueError(
                f"init must have shape ({p},) or ({n_particles}, {p}), got {theta.shape}"
            )
    if not bool(jnp.all(jnp.isfinite(z))):
        raise ValueError(
            "initial particles are outside the transform's domain (theta must be positive)"
        )
    return z


def _check_target(target) -> AbstractTarget:
    """The one gate of the fits: any [`AbstractTarget`][phasejax.infer.AbstractTarget]."""
    if not isinstance(target, AbstractTarget):
        raise TypeError(
            "expected an infer.Posterior (build it once: Posterior(model, data, prior=...)) or "
            f"another infer.AbstractTarget (popgen.SFSPosterior), got {type(target).__name__}"
        )
    return target


def fit_svgd(
    target: AbstractTarget,
    *,
    n_particles: int = 64,
    steps: int = DEFAULT_STEPS,
    init: ArrayLike | None = None,
    init_scale: float = 0.5,
    key: Array | None = None,
    optimizer: optax.GradientTransformation | None = None,
    kernel: AbstractKernel | None = None,
    thin: int | None = 10,
    quantiles: Sequence[float] = _QUANTILES,
    shard: bool | None = None,
    resume: FitResult | SVGDState | str | os.PathLike | None = None,
    progress: bool | None = None,
    chunk: int = DEFAULT_CHUNK,
    checkpoint: str | os.PathLike | None = None,
    checkpoint_every: int | None = None,
) -> FitResult:
    """The posterior of a model's parameters by SVGD.

    Particles live in unconstrained space ``z``; ``theta = transform(z)`` with the log
    Jacobian added, so the particles represent the posterior of ``theta``.

    **Arguments:**

    - `target`: a [`Posterior`][phasejax.infer.Posterior] (model, data, prior,
      transform, rewards, regularization: built and checked once), or any other
      [`AbstractTarget`][phasejax.infer.AbstractTarget] (e.g.
      [`phasejax.popgen.SFSPosterior`][]).
    - `n_particles`, `steps`: the default 1000 steps of the default optimizer (Adam,
      learning rate 0.1 halving every 100 steps to a floor of 1e-3) converge on small
      problems; check ``fit.converged`` (a warning says when the particles were still
      moving) and resume for more.
    - `init`: ``None`` (prior draws, squashed into their 5%..95% range in z), theta
      of shape ``(p,)`` (particles ``z = inverse(theta) + init_scale * N(0, 1)``), or
      ``(n_particles, p)`` theta particles.
    - `optimizer`, `kernel`, `shard`: as in [`svgd_init`][phasejax.infer.svgd_init];
      `thin`, `progress`, `chunk`, `checkpoint`, `checkpoint_every`: as in
      [`svgd_run`][phasejax.infer.svgd_run] (a progress bar per chunk of steps; Ctrl-C
      returns the fit so far with ``interrupted=True``; the state written to
      ``checkpoint`` every ``checkpoint_every`` steps).
    - `resume`: a previous result, its ``state``, or a checkpoint file, to continue
      from; `init` is then ignored and `optimizer`/`kernel` must match the earlier
      run's. Any split of a run gives bitwise the same particles as one run.

    Returns a [`FitResult`][phasejax.infer.FitResult].
    """
    target = _check_target(target)
    key = jax.random.PRNGKey(0) if key is None else key
    if resume is None:
        z0 = _initial_particles(target, init, int(n_particles), key, init_scale)
        state = svgd_init(
            target, z0, optimizer=optimizer, kernel=kernel, pass_step=True, shard=shard
        )
    else:
        if isinstance(resume, (str, os.PathLike)):
            shape = (int(n_particles), target.n_params)
            template = svgd_init(
                target,
                jnp.zeros(shape, jnp.result_type(float)),
                optimizer=optimizer,
                kernel=kernel,
                pass_step=True,
                shard=shard,
            )
            previous = load_state(resume, template)
        else:
            previous = resume.state if isinstance(resume, FitResult) else resume
        state = svgd_init(
            target,
            previous.particles,
            optimizer=optimizer,
            kernel=kernel,
            pass_step=True,
            shard=shard,
        )
        if jax.tree.structure(state.opt_state) != jax.tree.structure(previous.opt_state):
            raise ValueError("resume: the optimizer differs from the earlier run's")
        state = eqx.tree_at(
            lambda s: (s.opt_state, s.step), state, (previous.opt_state, previous.step)
        )
    out = svgd_run(
        state,
        steps,
        thin=thin,
        progress=progress,
        chunk=chunk,
        checkpoint=checkpoint,
        checkpoint_every=checkpoint_every,
    )
    fit = _finish(target, out, tuple(float(q) for q in quantiles))
    if not fit.interrupted and int(steps) > 0 and not fit.converged:
        warnings.warn(
            "fit_svgd has not converged: at the end the particles were "
            f"{float(fit.residual[-1]):.3g} posterior sds from an SVGD fixed point and "
            f"drifted {float(jnp.max(fit.drift)):.3g} sds over the last quarter of the run "
            f"(tolerance {_STATIONARY} each); continue with fit_svgd(target, resume=fit)",
            RuntimeWarning,
            stacklevel=2,
        )
    return fit


@eqx.filter_jit
def _theta(target, z):
    return (
        jax.vmap(jax.vmap(target.transform.forward))(z)
        if z.ndim == 3
        else jax.vmap(target.transform.forward)(z)
    )


def _drift(history: Array, mean: Array, sd: Array) -> Array:
    """Per parameter, ``max(|d mean|, |d sd|) / sd`` from three quarters of the run to its
    end (``mean``, ``sd``: the particles' at the end)."""
    k = history.shape[0]
    if k < 4:
        return jnp.full(sd.shape, jnp.nan, sd.dtype)
    mid = history[(3 * k) // 4 - 1]
    d_mean = jnp.abs(mean - jnp.mean(mid, axis=0))
    d_sd = jnp.abs(sd - jnp.std(mid, axis=0, ddof=1))
    return jnp.maximum(d_mean, d_sd) / sd


def _finish(target: AbstractTarget, out, quantiles) -> FitResult:
    theta = _theta(target, out.particles)
    history = _theta(target, out.history) if out.history.shape[0] else out.history
    mean, sd, q = summarize(theta, quantiles)
    return FitResult(
        particles=theta,
        unconstrained=out.particles,
        history=history,
        trace=out.trace,
        residual=out.residual,
        mean=mean,
        sd=sd,
        quantiles=q,
        drift=_drift(history, mean, sd),
        state=out.state,
        quantile_levels=quantiles,
        interrupted=out.interrupted,
    )


class MAPResult(eqx.Module):
    """``params`` (theta for a model, else the argument of the log density),
    ``unconstrained`` (z; equal to ``params`` for a plain log density),
    ``log_density`` at the optimum, and ``trace`` (log density per step)."""

    params: Array
    unconstrained: Array
    log_density: Float[Array, ""]
    trace: Float[Array, " S"]


@eqx.filter_jit
def _optimize(fn: Callable, x0: Array, optimizer, steps: int) -> tuple[Array, Array, Array]:
    def loss(x, step):
        return -fn(x, step)

    extra = isinstance(optimizer, optax.GradientTransformationExtraArgs)

    def body(carry, _):
        x, opt_state, step = carry
        value, grad = jax.value_and_grad(loss)(x, step)
        if extra:
            updates, opt_state = optimizer.update(
                grad, opt_state, x, value=value, grad=grad, value_fn=lambda y: loss(y, step)
            )
        else:
            updates, opt_state = optimizer.update(grad, opt_state, x)
        x = jnp.asarray(optax.apply_updates(x, updates))
        return (x, opt_state, step + 1), -value

    (x, _, step), trace = jax.lax.scan(
        body, (x0, optimizer.init(x0), jnp.zeros((), jnp.int32)), None, length=steps
    )
    return x, fn(x, step), trace


def map_estimate(
    target: AbstractTarget | Callable,
    init: ArrayLike,
    *,
    optimizer: optax.GradientTransformation | None = None,
    steps: int = 1000,
    jacobian: bool = False,
) -> MAPResult:
    """Maximise a log density with optax (one jitted ``lax.scan``).

    ``target`` is a [`Posterior`][phasejax.infer.Posterior] or another
    [`AbstractTarget`][phasejax.infer.AbstractTarget] (``init`` is theta; a
    target built with ``prior=None`` gives the maximum-likelihood estimate) or any
    log density ``x -> scalar`` (``init`` is its argument). For a posterior the
    optimisation runs in ``z`` with ``theta = transform(z)`` and, by default, *no*
    Jacobian term, so the result is the mode in theta (``jacobian=True``: the mode in z).

    Default optimizer: Adam with a cosine-decayed learning rate from 0.05 over
    ``steps``. Optimizers taking extra arguments (``optax.lbfgs``) receive ``value``,
    ``grad`` and ``value_fn``. A log density that is not finite at the start or the
    optimum raises, naming the observation for a posterior.
    """
    steps = int(steps)
    if optimizer is None:
        optimizer = optax.adam(optax.cosine_decay_schedule(5e-2, max(steps, 1), alpha=1e-3))
    if isinstance(target, AbstractTarget):
        theta0 = jnp.asarray(init, jnp.result_type(float))
        if theta0.shape != (target.n_params,):
            raise ValueError(
                f"init must be theta of shape ({target.n_params},), got {theta0.shape}"
            )
        fn = _Unconstrained(target, bool(jacobian))
        z, value, trace = _optimize(fn, target.transform.inverse(theta0), optimizer, steps)
        if not (np.all(np.isfinite(np.asarray(trace))) and np.isfinite(float(value))):
            # explain at the start when the run began out of the support, else where it ended
            start_ok = trace.shape[0] > 0 and np.isfinite(float(trace[0]))
            at = z if start_ok else target.transform.inverse(theta0)
            raise ValueError(f"map_estimate: the log density is not finite: {target.explain(at)}")
        return MAPResult(
            params=target.transform.forward(z), unconstrained=z, log_density=value, trace=trace
        )
    if not callable(target):
        raise TypeError(
            "target must be an inference target (infer.Posterior, popgen.SFSPosterior) or a "
            "log density function"
        )
    x0 = jnp.asarray(init)
    if not jnp.issubdtype(x0.dtype, jnp.floating):
        x0 = x0.astype(jnp.result_type(float))
    x, value, trace = _optimize(_IgnoreStep(target), x0, optimizer, steps)
    return MAPResult(params=x, unconstrained=x, log_density=value, trace=trace)


class _Unconstrained(eqx.Module):
    """A posterior's log density in ``z``, with or without the Jacobian term."""

    target: AbstractTarget
    jacobian: bool = eqx.field(static=True)

    def __call__(self, z, step):
        if self.jacobian:
            return self.target(z, step)
        return self.target.log_density_theta(self.target.transform.forward(z), step)


class _IgnoreStep(eqx.Module):
    fn: Callable

    def __call__(self, x, step):
        return self.fn(x)
