"""Model-level fitting: SVGD posteriors and MAP estimates for phase-type models."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import equinox as eqx
import jax
import jax.numpy as jnp
import optax
from jaxtyping import Array, ArrayLike, Float

from .._compile import Model
from ._kernels import AbstractKernel
from ._posterior import PosteriorLogDensity
from ._svgd import SVGDState, svgd_init, svgd_run

DEFAULT_QUANTILES = (0.025, 0.25, 0.5, 0.75, 0.975)


def _as_model(model) -> Model:
    if isinstance(model, Model):
        return model
    if hasattr(model, "compile"):
        return model.compile()
    raise TypeError(f"expected a phasejax Model (or Graph), got {type(model).__name__}")


class FitResult(eqx.Module):
    """Posterior particles in parameter space and their summaries.

    ``particles`` ``(P, p)`` (theta), ``unconstrained`` ``(P, p)`` (z), ``history``
    ``(K, P, p)`` (theta, every ``thin`` steps), ``trace`` (mean log density per step),
    ``mean``, ``sd`` ``(p,)``, ``quantiles`` ``(Q, p)`` at ``quantile_levels``, and
    ``state`` (pass as ``resume=`` to continue).
    """

    particles: Float[Array, "P p"]
    unconstrained: Float[Array, "P p"]
    history: Float[Array, "K P p"]
    trace: Float[Array, " S"]
    mean: Float[Array, " p"]
    sd: Float[Array, " p"]
    quantiles: Float[Array, "Q p"]
    state: SVGDState
    quantile_levels: tuple[float, ...] = eqx.field(static=True)

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


def summarize(particles: Float[Array, "P p"], quantiles: Sequence[float] = DEFAULT_QUANTILES):
    """``(mean, sd, quantiles)`` over the particle axis (``sd`` with ``ddof=1``)."""
    particles = jnp.asarray(particles)
    q = jnp.quantile(particles, jnp.asarray(quantiles, particles.dtype), axis=0)
    return jnp.mean(particles, axis=0), jnp.std(particles, axis=0, ddof=1), q


def _initial_particles(target: PosteriorLogDensity, init, n_particles: int, key, init_scale: float):
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


def fit_svgd(
    model,
    data: ArrayLike,
    *,
    prior,
    transform="softplus",
    n_particles: int = 64,
    steps: int = 1000,
    discrete: bool | None = None,
    rewards: ArrayLike | None = None,
    moment_regularization=None,
    init: ArrayLike | None = None,
    init_scale: float = 0.5,
    key: Array | None = None,
    optimizer: optax.GradientTransformation | None = None,
    kernel: AbstractKernel | None = None,
    thin: int | None = 10,
    progress_every: int | None = None,
    quantiles: Sequence[float] = DEFAULT_QUANTILES,
    shard: bool | None = None,
    logpdf_kwargs: dict | None = None,
    out_of_range: str = "raise",
    resume: FitResult | SVGDState | None = None,
) -> FitResult:
    """Posterior of a phase-type model's parameters by SVGD.

    Particles live in unconstrained space ``z``; ``theta = transform(z)`` with the log
    Jacobian added, so the particles represent the posterior of ``theta``.

    **Arguments:**

    - `model`: a compiled :class:`phasejax.Model` (or a ``Graph``, compiled here).
    - `data`: i.i.d. observations (absorption times; step counts for a discrete model;
      accumulated rewards when `rewards` is given).
    - `prior`: ``Normal``, ``LogNormal``, ``HalfCauchy``, ``Gamma`` (parameters
      broadcast over theta), a sequence of priors (one per parameter), a function
      ``theta -> log density``, or ``None`` (flat, improper).
    - `transform`: ``'softplus'`` (default), ``'exp'``, or a transform object.
    - `discrete`: ``None`` follows the model; ``True``/``False`` must agree with it
      (``logpmf`` vs ``logpdf``).
    - `rewards`: per-vertex rewards; the data are accumulated rewards. Continuous:
      strictly positive rewards, data drawn from ``model(theta).reward_scaled(rewards)``.
      Discrete: non-negative integer rewards, data drawn from
      ``reward_transform(model(theta), rewards)`` (``Y = sum_k r(X_k)``).
    - `moment_regularization`: ``None``, a strength ``lambda`` (number or schedule
      ``step -> lambda``; two moments), or a :class:`MomentRegularization`.
    - `init`: ``None`` (prior draws, squashed into their 5%..95% range in z), theta
      of shape ``(p,)`` (particles ``z = inverse(theta) + init_scale * N(0, 1)``), or
      ``(n_particles, p)`` theta particles.
    - `optimizer`, `kernel`, `thin`, `progress_every`, `shard`: as in :func:`svgd`.
    - `logpdf_kwargs`: passed to ``logpdf``/``logpmf`` (e.g. ``{"max_steps": 1024}``).
    - `out_of_range`: ``"raise"`` (default) when a particle's density would need more
      than ``max_steps`` series terms, or ``"-inf"`` (that particle's log likelihood).
    - `resume`: a previous result (or its ``state``) to continue from; `init` is then
      ignored and `optimizer` must match the earlier run's. To checkpoint, write
      ``save_state(path, fit.state)``; to read it back, build the template with a
      zero-step fit of the same settings: ``load_state(path, fit_svgd(..., steps=0).state)``.

    Returns a :class:`FitResult`.
    """
    model = _as_model(model)
    target = PosteriorLogDensity(
        model,
        data,
        prior=prior,
        transform=transform,
        rewards=rewards,
        discrete=discrete,
        moment_regularization=moment_regularization,
        logpdf_kwargs=logpdf_kwargs,
        out_of_range=out_of_range,
    )
    key = jax.random.PRNGKey(0) if key is None else key
    if resume is not None:
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
    else:
        z0 = _initial_particles(target, init, int(n_particles), key, init_scale)
        state = svgd_init(
            target, z0, optimizer=optimizer, kernel=kernel, pass_step=True, shard=shard
        )
    out = svgd_run(state, steps, thin=thin, progress_every=progress_every)
    return _finish(target, out, tuple(float(q) for q in quantiles))


@eqx.filter_jit
def _theta(target, z):
    return (
        jax.vmap(jax.vmap(target.transform.forward))(z)
        if z.ndim == 3
        else jax.vmap(target.transform.forward)(z)
    )


def _finish(target: PosteriorLogDensity, out, quantiles) -> FitResult:
    theta = _theta(target, out.particles)
    history = _theta(target, out.history) if out.history.shape[0] else out.history
    mean, sd, q = summarize(theta, quantiles)
    return FitResult(
        particles=theta,
        unconstrained=out.particles,
        history=history,
        trace=out.trace,
        mean=mean,
        sd=sd,
        quantiles=q,
        state=out.state,
        quantile_levels=quantiles,
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
def _optimize(fn: Callable, x0: Array, optimizer, steps: int):
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
        return (optax.apply_updates(x, updates), opt_state, step + 1), -value

    (x, _, step), trace = jax.lax.scan(
        body, (x0, optimizer.init(x0), jnp.zeros((), jnp.int32)), None, length=steps
    )
    return x, fn(x, step), trace


def map_estimate(
    target,
    init: ArrayLike,
    *,
    data: ArrayLike | None = None,
    optimizer: optax.GradientTransformation | None = None,
    steps: int = 1000,
    prior=None,
    transform="softplus",
    discrete: bool | None = None,
    rewards: ArrayLike | None = None,
    moment_regularization=None,
    jacobian: bool = False,
    logpdf_kwargs: dict | None = None,
    out_of_range: str = "raise",
) -> MAPResult:
    """Maximise a log density with optax (one jitted ``lax.scan``).

    ``target`` is either a log density ``x -> scalar`` (``init`` is its argument) or a
    phase-type :class:`Model` with ``data`` (``init`` is theta; ``prior=None`` gives the
    maximum-likelihood estimate). For a model the optimisation runs in ``z`` with
    ``theta = transform(z)`` and, by default, *no* Jacobian term, so the result is the
    mode in theta (``jacobian=True``: the mode in z).

    Default optimizer: Adam with a cosine-decayed learning rate from 0.05 over
    ``steps``. Optimizers taking extra arguments (``optax.lbfgs``) receive ``value``,
    ``grad`` and ``value_fn``.
    """
    steps = int(steps)
    if optimizer is None:
        optimizer = optax.adam(optax.cosine_decay_schedule(5e-2, max(steps, 1), alpha=1e-3))
    if isinstance(target, Model) or hasattr(target, "compile"):
        if data is None:
            raise ValueError("map_estimate(model, init, data=...) needs data")
        post = PosteriorLogDensity(
            _as_model(target),
            data,
            prior=prior,
            transform=transform,
            rewards=rewards,
            discrete=discrete,
            moment_regularization=moment_regularization,
            jacobian=jacobian,
            logpdf_kwargs=logpdf_kwargs,
            out_of_range=out_of_range,
        )
        theta0 = jnp.asarray(init, jnp.result_type(float))
        if theta0.shape != (post.n_params,):
            raise ValueError(f"init must be theta of shape ({post.n_params},), got {theta0.shape}")
        z, value, trace = _optimize(post, post.transform.inverse(theta0), optimizer, steps)
        return MAPResult(
            params=post.transform.forward(z), unconstrained=z, log_density=value, trace=trace
        )
    if not callable(target):
        raise TypeError("target must be a log density function or a phasejax Model")
    x0 = jnp.asarray(init)
    if not jnp.issubdtype(x0.dtype, jnp.floating):
        x0 = x0.astype(jnp.result_type(float))
    fn = _IgnoreStep(target)
    x, value, trace = _optimize(fn, x0, optimizer, steps)
    return MAPResult(params=x, unconstrained=x, log_density=value, trace=trace)


class _IgnoreStep(eqx.Module):
    fn: Callable

    def __call__(self, x, step):
        return self.fn(x)
