"""A numpyro distribution wrapping a phase-type likelihood, so NUTS (or any numpyro
inference) can sample its parameters:

    def numpyro_model(data):
        theta = numpyro.sample("theta", dist.Gamma(2.0, 1.0).expand([1]).to_event(1))
        numpyro.sample("obs", PhaseTypeDistribution(model, theta), obs=data)
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

from .._optional import numpyro_distributions
from ._posterior import Likelihood, Posterior, as_likelihood

_dist = numpyro_distributions("phasejax.infer.PhaseTypeDistribution")
_constraints = _dist.constraints
from numpyro.distributions.util import validate_sample as _validate_sample  # noqa: E402


class PhaseTypeDistribution(_dist.Distribution):
    """A phase-type likelihood at ``theta`` as a numpyro distribution over absorption
    times (step counts for a discrete model, accumulated rewards with rewards).

    ``likelihood`` is a [`Likelihood`][phasejax.infer.Likelihood] (rewards,
    ``logpdf_kwargs``, ``out_of_range``), the likelihood of a
    [`Posterior`][phasejax.infer.Posterior], or a ``Model``/``Graph``: then a plain
    likelihood with ``out_of_range="-inf"``, so that a proposal where ``theta`` is not
    admissible (a rate negative, infinite or NaN; see [`phasejax.Model.guarded`][]) or
    the density would need more than ``max_steps`` series terms gets ``log_prob`` ``-inf``
    and is rejected.

    ``theta`` has shape ``batch_shape + (n_params,)``; ``log_prob`` is
    ``logpdf``/``logpmf`` (exact gradients in ``theta``), ``sample`` draws by simulating
    the jump chain. With ``validate_args=True`` values outside the support (NaN,
    negative, non-integer for a discrete model) are flagged as numpyro flags them (a
    warning, eagerly) and get ``log_prob`` ``-inf``.
    """

    pytree_data_fields = ("likelihood", "theta")

    def __init__(self, likelihood, theta, *, validate_args=None):
        if not isinstance(likelihood, (Likelihood, Posterior)):
            likelihood = Likelihood(likelihood, out_of_range="-inf")
        self.likelihood = as_likelihood(likelihood)
        n_params = self.likelihood.n_params
        theta = jnp.asarray(theta)
        if not jnp.issubdtype(theta.dtype, jnp.floating):
            theta = theta.astype(jnp.result_type(float))
        if theta.ndim < 1 or theta.shape[-1] != n_params:
            raise ValueError(
                f"theta must have shape batch_shape + ({n_params},), got {theta.shape}"
            )
        self.theta = theta
        super().__init__(batch_shape=theta.shape[:-1], event_shape=(), validate_args=validate_args)

    @property
    def discrete(self) -> bool:
        return self.likelihood.discrete

    @property
    def support(self):
        return _constraints.nonnegative_integer if self.discrete else _constraints.nonnegative

    def _dist(self, theta):
        return self.likelihood.distribution(theta)

    def _log_prob_flat(self, theta, values):
        # values outside the support (NaN or negative; discrete: not whole numbers) have
        # probability zero: evaluated at a stand-in and masked, so no input check raises
        # on them (numpyro's validate_args warns about them separately)
        inside = values >= 0
        if self.discrete and not jnp.issubdtype(values.dtype, jnp.integer):
            inside = inside & (values == jnp.round(values))
        safe = jnp.where(inside, values, 1)
        if self.discrete:
            safe = safe.astype(jnp.result_type(int))
        return jnp.where(inside, self.likelihood.log_prob(theta, safe), -jnp.inf)

    @_validate_sample
    def log_prob(self, value):
        value = jnp.asarray(value)
        batch = self.batch_shape
        if not batch:
            return self._log_prob_flat(self.theta, value)
        shape = jnp.broadcast_shapes(value.shape, batch)
        value = jnp.broadcast_to(value, shape)
        lead = shape[: len(shape) - len(batch)]
        n_batch = math.prod(batch)
        thetas = self.theta.reshape(n_batch, -1)
        cols = value.reshape((-1, n_batch))
        out = jax.vmap(self._log_prob_flat, in_axes=(0, 1), out_axes=1)(thetas, cols)
        return out.reshape(lead + batch)

    def sample(self, key, sample_shape=()):
        if key is None:
            raise ValueError("sample needs a PRNG key")
        sample_shape = tuple(sample_shape)
        batch = self.batch_shape
        if not batch:
            return self._dist(self.theta).sample(key, sample_shape)
        n_batch = math.prod(batch)
        keys = jax.random.split(key, n_batch)
        draws = jax.vmap(lambda k, th: self._dist(th).sample(k, sample_shape))(
            keys, self.theta.reshape(n_batch, -1)
        )
        return jnp.moveaxis(draws, 0, -1).reshape(sample_shape + batch)

    @property
    def mean(self):
        if not self.batch_shape:
            return self._dist(self.theta).mean()
        flat = self.theta.reshape(-1, self.theta.shape[-1])
        return jax.vmap(lambda th: self._dist(th).mean())(flat).reshape(self.batch_shape)

    @property
    def variance(self):
        if not self.batch_shape:
            return self._dist(self.theta).var()
        flat = self.theta.reshape(-1, self.theta.shape[-1])
        return jax.vmap(lambda th: self._dist(th).var())(flat).reshape(self.batch_shape)
