"""A numpyro distribution wrapping a phase-type model, so NUTS (or any numpyro
inference) can sample its parameters:

    def numpyro_model(data):
        theta = numpyro.sample("theta", dist.Gamma(2.0, 1.0).expand([1]).to_event(1))
        numpyro.sample("obs", PhaseTypeDistribution(model, theta), obs=data)
"""

from __future__ import annotations

try:
    import numpyro.distributions as _dist
    from numpyro.distributions import constraints as _constraints
except ImportError as err:  # pragma: no cover - exercised only without numpyro
    raise ImportError(
        "phasejax.infer.PhaseTypeDistribution needs numpyro: pip install numpyro "
        "(or install phasejax with the 'numpyro' extra)"
    ) from err

import math

import jax
import jax.numpy as jnp
import numpy as np

from .._compile import Model
from .._rewards import DiscreteRewardTransform
from ._posterior import log_likelihood


class PhaseTypeDistribution(_dist.Distribution):
    """``model(theta)`` as a numpyro distribution over absorption times (step counts
    for a discrete model), or over accumulated rewards with ``rewards`` (continuous:
    strictly positive, ``reward_scaled``; discrete: non-negative integers, concrete,
    ``reward_transform``).

    ``theta`` has shape ``batch_shape + (n_params,)``; ``log_prob`` is
    ``logpdf``/``logpmf`` (exact gradients in ``theta``), ``sample`` draws by
    simulating the jump chain. ``logpdf_kwargs`` go to ``logpdf``/``logpmf``.
    Where ``theta`` is not admissible (a rate negative, infinite or NaN, a state that
    can never be left; see :meth:`phasejax.Model.guarded`) or the density would need
    more than ``max_steps`` series terms (a proposal far out in parameter space)
    ``log_prob`` is ``-inf``, so the proposal is rejected; ``out_of_range="raise"``
    raises instead.
    """

    pytree_data_fields = ("model", "theta", "rewards", "reward_plan")
    pytree_aux_fields = ("discrete", "logpdf_kwargs", "out_of_range")

    def __init__(
        self,
        model,
        theta,
        *,
        rewards=None,
        logpdf_kwargs=None,
        out_of_range="-inf",
        validate_args=None,
    ):
        if not isinstance(model, Model):
            if hasattr(model, "compile"):
                model = model.compile()
            else:
                raise TypeError(f"expected a phasejax Model (or Graph), got {type(model).__name__}")
        theta = jnp.asarray(theta)
        if not jnp.issubdtype(theta.dtype, jnp.floating):
            theta = theta.astype(jnp.result_type(float))
        if theta.ndim < 1 or theta.shape[-1] != model.n_params:
            raise ValueError(
                f"theta must have shape batch_shape + ({model.n_params},), got {theta.shape}"
            )
        self.model = model
        self.theta = theta
        self.rewards = None if rewards is None else jnp.asarray(rewards, theta.dtype)
        # discrete: integer rewards fix the transformed structure, planned once here
        self.reward_plan = (
            DiscreteRewardTransform.build(model.structure, np.asarray(rewards))
            if rewards is not None and model.discrete
            else None
        )
        self.discrete = model.discrete
        self.logpdf_kwargs = tuple(sorted((logpdf_kwargs or {}).items()))
        if out_of_range not in ("raise", "-inf"):
            raise ValueError(f"out_of_range must be 'raise' or '-inf', got {out_of_range!r}")
        self.out_of_range = out_of_range
        super().__init__(batch_shape=theta.shape[:-1], event_shape=(), validate_args=validate_args)

    @property
    def support(self):
        return _constraints.nonnegative_integer if self.discrete else _constraints.positive

    def _accumulated(self, dist):
        """The distribution of the accumulated reward (the absorption time without rewards)."""
        if self.rewards is None:
            return dist
        return (
            dist.reward_scaled(self.rewards) if self.reward_plan is None else self.reward_plan(dist)
        )

    def _dist(self, theta):
        return self._accumulated(self.model(theta))

    def _log_prob_flat(self, theta, values):
        if self.out_of_range == "raise":
            return log_likelihood(
                self._dist(theta), values, self.discrete, dict(self.logpdf_kwargs), "raise"
            )
        dist, admissible = self.model.guarded(theta)  # a bad proposal (rate 0, inf, NaN): -inf
        log_p = log_likelihood(
            self._accumulated(dist), values, self.discrete, dict(self.logpdf_kwargs), "-inf"
        )
        return jnp.where(admissible, log_p, -jnp.inf)

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
