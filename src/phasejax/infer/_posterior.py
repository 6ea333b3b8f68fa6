"""The inference target: a likelihood family and the posterior it gives with data and a prior.

[`Likelihood`][phasejax.infer.Likelihood] is the density family ``theta -> f(. | theta)``:
``model(theta).logpdf`` (continuous), ``.logpmf`` (discrete), or, with rewards, the
density of the accumulated reward: ``model(theta).reward_scaled(rewards)`` (continuous,
strictly positive rewards) or the pmf of ``reward_transform(model(theta), rewards)``
(discrete, non-negative integer rewards: ``Y = sum_k r(X_k)``).

[`Posterior`][phasejax.infer.Posterior] adds i.i.d. data, a prior, a positivity
transform and an optional moment penalty; in unconstrained coordinates ``z``

``log p(z) = sum_i log f(x_i | theta) + log prior(theta) + log |d theta / d z|
             - lambda(step) sum_k w_k (E[T^k | theta] - m_k)^2``,  ``theta = transform(z)``,

with ``m_k`` the sample's raw moments and ``w_k = 1 / m_k^2`` by default (each term a
squared relative error). Everything the fit needs is checked when the target is built,
on the concrete data, before anything is compiled.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, ArrayLike, Float

from .._compile import Model
from .._distribution import DEFAULT_MAX_STEPS, DEFAULT_TOL
from .._rewards import DiscreteRewardTransform
from .._structure import is_traced
from .._uniformization import right_point
from ._priors import AbstractPrior, as_prior
from ._target import AbstractTarget
from ._transforms import AbstractTransform, as_transform

_OUT_OF_RANGE = ("raise", "-inf")


class MomentRegularization(eqx.Module):
    """Penalty ``lambda(step) * sum_k w_k (E[T^k | theta] - m_k)^2`` for ``k = 1..n_moments``.

    - `strength`: ``lambda``, a number or a schedule ``step -> lambda`` (a JAX function
      of the traced step counter, e.g. an optax schedule).
    - `n_moments`: how many raw moments to match.
    - `weights`: ``w_k`` (``n_moments`` numbers); default ``1 / m_k^2`` (scale-aware:
      each term is a squared relative error). The log likelihood grows with the number
      of observations while this penalty does not, so scale ``lambda`` accordingly.
    """

    strength: float | Callable = 1.0
    n_moments: int = eqx.field(static=True, default=2)
    weights: ArrayLike | None = None

    def __check_init__(self):
        if self.n_moments < 1:
            raise ValueError(f"n_moments must be >= 1, got {self.n_moments}")

    def lam(self, step) -> Float[Array, ""]:
        return self.strength(step) if callable(self.strength) else jnp.asarray(self.strength)

    def sample_moments(self, data: Array) -> Float[Array, " k"]:
        x = jnp.ravel(jnp.asarray(data)).astype(jnp.result_type(float))
        return jnp.stack([jnp.mean(x**k) for k in range(1, self.n_moments + 1)])

    def resolved_weights(self, sample_moments: Array) -> Float[Array, " k"]:
        if self.weights is None:
            return 1.0 / sample_moments**2
        w = jnp.asarray(self.weights, sample_moments.dtype)
        if w.shape != (self.n_moments,):
            raise ValueError(f"weights must have shape ({self.n_moments},), got {w.shape}")
        return w

    def penalty(self, dist, sample_moments: Array, weights: Array, step) -> Float[Array, ""]:
        moments = dist.moments(self.n_moments)
        return self.lam(step) * jnp.sum(weights * (moments - sample_moments) ** 2)


def _as_regularization(reg) -> MomentRegularization | None:
    """``None``; a number or schedule (two moments); or a [`MomentRegularization`][phasejax.infer.MomentRegularization]."""
    if reg is None or isinstance(reg, MomentRegularization):
        return reg
    if callable(reg) or isinstance(reg, (int, float)) or hasattr(reg, "shape"):
        return MomentRegularization(strength=reg)
    raise TypeError(f"cannot use {reg!r} as moment regularization")


def _series_fits(dist, data: Array, discrete: bool, kwargs: dict) -> Array:
    """Whether ``logpdf``/``logpmf`` of ``data`` stays within ``max_steps`` series terms.

    The library's own check (its right Poisson truncation point of ``max(diag) *
    max(t)`` on the chain the densities run on, lumped where the model lumps, clipped so
    huge rates cannot overflow, or the largest step count). ``False`` where the library
    would raise.
    """
    max_steps = kwargs.get("max_steps", DEFAULT_MAX_STEPS)
    if max_steps is None:  # no cap: every observation fits
        return jnp.asarray(True)
    if discrete:
        return jnp.max(data) <= max_steps
    # the chain the densities run on: the lumped one where the model lumps
    diag = dist.diag if dist.lumping is None else dist._lumped().diag
    mu = jax.lax.stop_gradient(jnp.max(diag) * jnp.max(data)).astype(diag.dtype)
    return right_point(mu, kwargs.get("tol", DEFAULT_TOL)) <= max_steps


class Likelihood(eqx.Module):
    """The density family ``theta -> f(. | theta)`` of a phase-type model's observations.

    **Arguments:**

    - `model`: a compiled [`phasejax.Model`][] (a ``Graph`` is compiled here).
    - `rewards`: per-vertex rewards; observations are then accumulated rewards.
      Continuous: strictly positive rewards (``model(theta).reward_scaled(rewards)``).
      Discrete: non-negative integer rewards, concrete (the
      [`phasejax.DiscreteRewardTransform`][] is planned once, here).
    - `logpdf_kwargs`: passed to ``logpdf``/``logpmf`` (e.g. ``{"max_steps": 1024}``).
    - `out_of_range`: ``"raise"`` (default): an inadmissible ``theta`` or a density that
      would need more than ``max_steps`` series terms raises; ``"-inf"``: it gets log
      density ``-inf`` (every observation), for samplers that reject such proposals.

    Its arrays are pytree leaves, so they are traced inputs of a compiled fit.
    """

    model: Model
    rewards: Array | None
    reward_plan: DiscreteRewardTransform | None
    logpdf_kwargs: tuple = eqx.field(static=True)
    out_of_range: str = eqx.field(static=True)

    def __init__(
        self,
        model,
        *,
        rewards: ArrayLike | None = None,
        logpdf_kwargs: dict | None = None,
        out_of_range: str = "raise",
    ):
        if not isinstance(model, Model):
            if not hasattr(model, "compile"):
                raise TypeError(f"expected a phasejax Model (or Graph), got {type(model).__name__}")
            model = model.compile()
        self.model = model
        self.reward_plan = None
        if rewards is not None:
            rewards = jnp.asarray(rewards, jnp.result_type(float))
            if model.discrete:
                self.reward_plan = DiscreteRewardTransform.build(
                    model.structure, np.asarray(rewards)
                )
        self.rewards = rewards
        self.logpdf_kwargs = tuple(sorted((logpdf_kwargs or {}).items()))
        if out_of_range not in _OUT_OF_RANGE:
            raise ValueError(f"out_of_range must be 'raise' or '-inf', got {out_of_range!r}")
        self.out_of_range = out_of_range

    @property
    def discrete(self) -> bool:
        return self.model.discrete

    @property
    def n_params(self) -> int:
        return self.model.n_params

    def _accumulated(self, dist):
        """The distribution of the accumulated reward (the absorption time without rewards)."""
        if self.rewards is None:
            return dist
        return (
            dist.reward_scaled(self.rewards) if self.reward_plan is None else self.reward_plan(dist)
        )

    def distribution(self, theta: Float[Array, " p"]):
        """The distribution of one observation at ``theta``."""
        return self._accumulated(self.model(theta))

    def guarded_distribution(self, theta: Float[Array, " p"]) -> tuple[Any, Array]:
        """``(distribution, admissible)``: with ``out_of_range="-inf"`` through
        [`phasejax.Model.guarded`][] (a stand-in where ``theta`` is inadmissible), else
        plain (``admissible`` is ``True``; a bad ``theta`` raises)."""
        if self.out_of_range == "raise":
            return self.distribution(theta), jnp.asarray(True)
        raw, admissible = self.model.guarded(theta)
        return self._accumulated(raw), admissible

    def log_prob(self, theta: Float[Array, " p"], data: Array) -> Array:
        """Per-observation ``logpdf`` (``logpmf``) of ``data`` at ``theta``.

        With ``out_of_range="-inf"`` an inadmissible ``theta`` (a rate negative, infinite
        or NaN; see [`phasejax.Model.guarded`][]) or a series longer than ``max_steps``
        gives ``-inf`` for every observation.
        """
        return self._log_prob(*self.guarded_distribution(theta), data)

    def _log_prob(self, dist, admissible, data: Array) -> Array:
        kwargs = dict(self.logpdf_kwargs)
        evaluate = dist.logpmf if self.discrete else dist.logpdf
        if self.out_of_range == "raise":
            return evaluate(data, **kwargs)
        ok = admissible & _series_fits(dist, data, self.discrete, kwargs)
        safe = jnp.where(ok, data, jnp.ones_like(data) if self.discrete else jnp.zeros_like(data))
        return jnp.where(ok, evaluate(safe, **kwargs), -jnp.inf)

    def check_data(self, data: ArrayLike) -> Array:
        """``data`` as a flat array of the right dtype, checked for the support.

        Concrete data are checked here, in numpy, so that a bad value is reported before
        anything is compiled; the first offending index and value are named. Traced data
        are checked under ``jit`` with ``equinox.error_if``.
        """
        data = jnp.ravel(jnp.asarray(data))
        if data.size == 0:
            raise ValueError("no data")
        what = (
            "accumulated rewards"
            if self.rewards is not None
            else ("step counts" if self.discrete else "absorption times")
        )
        if is_traced(data):
            bad = ~jnp.isfinite(data) | (data < 0)
            if self.discrete:
                bad = bad | (data != jnp.round(data))
            data = jnp.asarray(
                eqx.error_if(data, jnp.any(bad), f"data ({what}) must be finite and >= 0")
            )
        else:
            x = np.asarray(data)
            for bad, why in (
                (~np.isfinite(x), "is not a finite number"),
                (x < 0, "is negative"),
                (
                    (x != np.round(x)) if self.discrete else np.zeros(x.shape, bool),
                    "is not a whole number (a discrete model's data are step counts or "
                    "integer rewards)",
                ),
            ):
                if bad.any():
                    i = int(np.argmax(bad))
                    raise ValueError(
                        f"data[{i}] = {x[i].item()!r} {why}: data are {what} "
                        f"({bad.sum()} of {x.size} observations are bad)"
                    )
        if self.discrete and not jnp.issubdtype(data.dtype, jnp.integer):
            data = data.astype(jnp.result_type(int))
        return data


def as_likelihood(target) -> Likelihood:
    """The [`Likelihood`][phasejax.infer.Likelihood] of ``target``: itself, a
    [`Posterior`][phasejax.infer.Posterior]'s, or a plain one of a ``Model``/``Graph``."""
    if isinstance(target, Likelihood):
        return target
    if isinstance(target, Posterior):
        return target.likelihood
    return Likelihood(target)


class Posterior(AbstractTarget):
    """The posterior of a model's parameters given i.i.d. data: the one inference target.

    Built once, validated here (data finite, non-negative, whole numbers for a discrete
    model, in numpy before anything is traced), then passed to
    [`fit_svgd`][phasejax.infer.fit_svgd] or [`map_estimate`][phasejax.infer.map_estimate].
    Called as ``posterior(z, step=0)`` it is the log density of the unconstrained
    parameters ``z`` (Jacobian included); ``log_density_theta`` is the log posterior of
    ``theta`` itself.

    **Arguments:**

    - `likelihood`: a [`Likelihood`][phasejax.infer.Likelihood] (for rewards,
      ``logpdf_kwargs`` or ``out_of_range``), or a ``Model``/``Graph`` (plain likelihood).
    - `data`: i.i.d. observations (absorption times; step counts for a discrete model;
      accumulated rewards with rewards).
    - `prior`: ``Normal``, ``LogNormal``, ``HalfCauchy``, ``Gamma`` (parameters
      broadcast over theta), a sequence of priors (one per parameter), a function
      ``theta -> log density``, or ``None`` (flat, improper; with
      [`map_estimate`][phasejax.infer.map_estimate], the maximum-likelihood estimate).
    - `transform`: ``'softplus'`` (default), ``'exp'``, ``'identity'`` or a transform.
    - `moment_regularization`: ``None``, a strength ``lambda`` (number or schedule
      ``step -> lambda``; two moments), or a [`MomentRegularization`][phasejax.infer.MomentRegularization].

    Its arrays (data, model, rewards) are pytree leaves: refitting new data of the same
    shape reuses the compiled program.
    """

    likelihood: Likelihood
    data: Array
    prior: AbstractPrior
    transform: AbstractTransform
    regularization: MomentRegularization | None
    sample_moments: Array | None
    moment_weights: Array | None

    def __init__(
        self,
        likelihood,
        data: ArrayLike,
        *,
        prior,
        transform="softplus",
        moment_regularization=None,
    ):
        self.likelihood = as_likelihood(likelihood)
        self.data = data = self.likelihood.check_data(data)
        self.prior = as_prior(prior)
        self.transform = as_transform(transform)
        reg = _as_regularization(moment_regularization)
        self.regularization = reg
        if reg is not None:
            self.sample_moments = reg.sample_moments(data)
            self.moment_weights = reg.resolved_weights(self.sample_moments)
        else:
            self.sample_moments = self.moment_weights = None

    @property
    def n_params(self) -> int:
        return self.likelihood.n_params

    @property
    def discrete(self) -> bool:
        return self.likelihood.discrete

    def distribution(self, theta: Float[Array, " p"]):
        return self.likelihood.distribution(theta)

    def log_likelihood(self, theta: Float[Array, " p"]) -> Float[Array, ""]:
        return jnp.sum(self.likelihood.log_prob(theta, self.data))

    def penalty(self, theta: Float[Array, " p"], step=0, dist=None) -> Float[Array, ""]:
        if self.regularization is None:
            return jnp.zeros((), theta.dtype)
        dist = self.distribution(theta) if dist is None else dist
        assert self.sample_moments is not None and self.moment_weights is not None
        return self.regularization.penalty(dist, self.sample_moments, self.moment_weights, step)

    def log_density_theta(self, theta: Float[Array, " p"], step=0) -> Float[Array, ""]:
        """Log likelihood + log prior - penalty at ``theta`` (no Jacobian)."""
        dist, admissible = self.likelihood.guarded_distribution(theta)
        log_lik = jnp.sum(self.likelihood._log_prob(dist, admissible, self.data))
        return log_lik + self.prior.log_prob(theta) - self.penalty(theta, step, dist)

    def explain(self, z: Float[Array, " p"]) -> str:
        """Why the log density at ``z`` is not finite (run eagerly on the failure path)."""
        z = jnp.asarray(z)
        theta = self.transform.forward(z)
        where = f"at theta = {np.asarray(theta).tolist()}"
        try:
            per_obs = np.asarray(self.likelihood.log_prob(theta, self.data))
        except Exception as err:  # the model itself rejects theta: say so
            return f"{where} the likelihood raised: {err}"
        bad = ~np.isfinite(per_obs)
        if bad.any():
            i = int(np.argmax(bad))
            why = (
                "the density is zero there: is the value outside the model's support "
                "(e.g. t = 0 for a model that cannot be absorbed at once)?"
                if per_obs[i] == -np.inf
                else "the density is not a number"
            )
            if self.likelihood.out_of_range == "-inf" and bad.all():
                why += (
                    " (with out_of_range='-inf' every observation is -inf where theta is "
                    "inadmissible or the series would need more than max_steps terms)"
                )
            return (
                f"{where} observation {i} (data[{i}] = {np.asarray(self.data)[i].item()!r}) has log "
                f"probability {per_obs[i]} ({bad.sum()} of {bad.size} observations); {why}"
            )
        penalty = None if self.regularization is None else float(self.penalty(theta))
        if penalty is not None and not np.isfinite(penalty):
            return f"{where} the moment penalty is {penalty}"
        return super().explain(z)
