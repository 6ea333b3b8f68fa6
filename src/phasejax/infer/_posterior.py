"""The log posterior of a phase-type model in unconstrained coordinates.

``log p(z) = sum_i log f(x_i | theta) + log prior(theta) + log |d theta / d z|
             - lambda(step) sum_k w_k (E[T^k | theta] - m_k)^2``,  ``theta = transform(z)``,

with ``m_k`` the sample's raw moments and ``w_k = 1 / m_k^2`` by default (each term a
squared relative error). ``f`` is ``model(theta).logpdf`` (continuous),
``.logpmf`` (discrete), or, with rewards, the density of the accumulated reward:
``model(theta).reward_scaled(rewards)`` (continuous, strictly positive rewards) or the
pmf of ``reward_transform(model(theta), rewards)`` (discrete, non-negative integer
rewards: ``Y = sum_k r(X_k)``).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, ArrayLike, Float

from .._compile import Model
from .._distribution import DEFAULT_MAX_STEPS, DEFAULT_TOL
from .._rewards import DiscreteRewardTransform
from ._priors import AbstractPrior, as_prior
from ._transforms import AbstractTransform, as_transform


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


def as_regularization(reg) -> MomentRegularization | None:
    """``None``; a number or schedule (two moments); or a :class:`MomentRegularization`."""
    if reg is None or isinstance(reg, MomentRegularization):
        return reg
    if callable(reg) or isinstance(reg, (int, float)) or hasattr(reg, "shape"):
        return MomentRegularization(strength=reg)
    raise TypeError(f"cannot use {reg!r} as moment regularization")


def series_fits(dist, data: Array, discrete: bool, kwargs: dict) -> Array:
    """Whether ``logpdf``/``logpmf`` of ``data`` stays within ``max_steps`` series terms.

    Mirrors the library's check (right Poisson truncation point of ``max(diag) *
    max(t)``, or the largest step count), in floating point so that huge rates cannot
    overflow it. ``False`` where the library would raise.
    """
    max_steps = kwargs.get("max_steps", DEFAULT_MAX_STEPS)
    if max_steps is None:  # no cap: every observation fits
        return jnp.asarray(True)
    if discrete:
        return jnp.max(data) <= max_steps
    log_inv = math.log(2.0 / kwargs.get("tol", DEFAULT_TOL))
    mu = jax.lax.stop_gradient(jnp.max(dist.diag) * jnp.max(data)).astype(dist.diag.dtype)
    right = mu + log_inv / 3.0 + jnp.sqrt(log_inv**2 / 9.0 + 2.0 * log_inv * mu)
    return right <= max_steps


def log_likelihood(
    dist, data: Array, discrete: bool, kwargs: dict, out_of_range: str = "raise"
) -> Array:
    """Per-observation ``logpdf`` (``logpmf``) of ``data``.

    ``out_of_range="-inf"``: where the series would need more than ``max_steps`` terms
    (a parameter far out, e.g. an MCMC proposal), return ``-inf`` for every observation
    instead of raising, so that the proposal is rejected.
    """
    if out_of_range not in ("raise", "-inf"):
        raise ValueError(f"out_of_range must be 'raise' or '-inf', got {out_of_range!r}")
    evaluate = dist.logpmf if discrete else dist.logpdf
    if out_of_range == "raise":
        return evaluate(data, **kwargs)
    ok = series_fits(dist, data, discrete, kwargs)
    safe = jnp.where(ok, data, jnp.ones_like(data) if discrete else jnp.zeros_like(data))
    return jnp.where(ok, evaluate(safe, **kwargs), -jnp.inf)


class PosteriorLogDensity(eqx.Module):
    """Callable ``z -> log p(z)`` (``step=`` for scheduled regularization).

    Its arrays (data, model, rewards) are pytree leaves, so they are traced inputs of
    the compiled fit, not constants baked into it. Discrete data are step counts (or
    accumulated integer rewards) and are stored as integers; with rewards on a discrete
    model the :class:`~phasejax.DiscreteRewardTransform` is planned once, here (the
    integer rewards fix its structure).
    """

    model: Model
    data: Array
    prior: AbstractPrior
    transform: AbstractTransform
    rewards: Array | None
    reward_plan: DiscreteRewardTransform | None
    regularization: MomentRegularization | None
    sample_moments: Array | None
    moment_weights: Array | None
    discrete: bool = eqx.field(static=True)
    jacobian: bool = eqx.field(static=True, default=True)
    logpdf_kwargs: tuple = eqx.field(static=True, default=())
    out_of_range: str = eqx.field(static=True, default="raise")

    def __init__(
        self,
        model: Model,
        data: ArrayLike,
        *,
        prior=None,
        transform="softplus",
        rewards: ArrayLike | None = None,
        discrete: bool | None = None,
        moment_regularization=None,
        jacobian: bool = True,
        logpdf_kwargs: dict | None = None,
        out_of_range: str = "raise",
    ):
        if hasattr(model, "compile") and not isinstance(model, Model):
            model = model.compile()
        self.model = model
        is_discrete = model.discrete
        if discrete is not None and bool(discrete) != is_discrete:
            kind = "discrete" if is_discrete else "continuous"
            raise ValueError(f"discrete={discrete} but the model is {kind}")
        self.discrete = is_discrete
        data = jnp.ravel(jnp.asarray(data))
        if data.size == 0:
            raise ValueError("no data")
        if is_discrete and not jnp.issubdtype(data.dtype, jnp.integer):  # e.g. sample() output
            if not bool(jnp.all(data == jnp.round(data))):
                raise ValueError(
                    "data of a discrete model must be whole numbers (step counts or integer rewards)"
                )
            data = data.astype(jnp.result_type(int))
        self.data = data
        self.reward_plan = None
        if rewards is not None:
            rewards = jnp.asarray(rewards, jnp.result_type(float))
            if is_discrete:
                self.reward_plan = DiscreteRewardTransform.build(
                    model.structure, np.asarray(rewards)
                )
        self.rewards = rewards
        self.prior = as_prior(prior)
        self.transform = as_transform(transform)
        reg = as_regularization(moment_regularization)
        self.regularization = reg
        if reg is not None:
            self.sample_moments = reg.sample_moments(data)
            self.moment_weights = reg.resolved_weights(self.sample_moments)
        else:
            self.sample_moments = self.moment_weights = None
        self.jacobian = bool(jacobian)
        self.logpdf_kwargs = tuple(sorted((logpdf_kwargs or {}).items()))
        if out_of_range not in ("raise", "-inf"):
            raise ValueError(f"out_of_range must be 'raise' or '-inf', got {out_of_range!r}")
        self.out_of_range = out_of_range

    @property
    def n_params(self) -> int:
        return self.model.n_params

    def distribution(self, theta: Float[Array, " p"]):
        dist = self.model(theta)
        if self.rewards is None:
            return dist
        return (
            dist.reward_scaled(self.rewards) if self.reward_plan is None else self.reward_plan(dist)
        )

    def log_likelihood(self, theta: Float[Array, " p"], dist=None) -> Float[Array, ""]:
        dist = self.distribution(theta) if dist is None else dist
        kwargs = dict(self.logpdf_kwargs)
        return jnp.sum(log_likelihood(dist, self.data, self.discrete, kwargs, self.out_of_range))

    def penalty(self, theta: Float[Array, " p"], step=0, dist=None) -> Float[Array, ""]:
        if self.regularization is None:
            return jnp.zeros((), theta.dtype)
        dist = self.distribution(theta) if dist is None else dist
        return self.regularization.penalty(dist, self.sample_moments, self.moment_weights, step)

    def log_density_theta(self, theta: Float[Array, " p"], step=0) -> Float[Array, ""]:
        """Log likelihood + log prior - penalty at ``theta`` (no Jacobian)."""
        dist = self.distribution(theta)
        return (
            self.log_likelihood(theta, dist)
            + self.prior.log_prob(theta)
            - self.penalty(theta, step, dist)
        )

    def __call__(self, z: Float[Array, " p"], step=0) -> Float[Array, ""]:
        theta = self.transform.forward(z)
        out = self.log_density_theta(theta, step)
        if self.jacobian:
            out = out + self.transform.log_det(z)
        return out
