"""Priors on the model parameters ``theta`` (log densities summed over parameters).

Each prior's parameters broadcast against ``theta`` (shape ``(n_params,)``), so one
prior can cover every parameter (``Gamma(2.0, 1.0)``) or give one value per
parameter (``Gamma([2.0, 1.0], [1.0, 0.5])``). A sequence of priors applies one per
parameter ([`Independent`][phasejax.infer.Independent]); any callable ``theta -> log density`` works too.
"""

from __future__ import annotations

import abc
import math
from collections.abc import Callable, Sequence

import equinox as eqx
import jax
import jax.numpy as jnp
from jax.scipy import stats
from jaxtyping import Array, ArrayLike, Float


class AbstractPrior(eqx.Module):
    """``log_prob(theta)`` (summed over parameters) and, where possible, ``sample``."""

    @abc.abstractmethod
    def log_prob(self, theta: Float[Array, " p"]) -> Float[Array, ""]: ...

    def sample(
        self, key, shape: tuple[int, ...], n_params: int, dtype=None
    ) -> Float[Array, "... p"]:
        raise NotImplementedError(
            f"{type(self).__name__} cannot draw samples: give `init` explicitly"
        )

    def __call__(self, theta):
        return self.log_prob(theta)


def _f(x, dtype):
    return jnp.asarray(x, dtype)


def _dtype(dtype):
    return jnp.result_type(float) if dtype is None else dtype


class Normal(AbstractPrior):
    """``theta ~ Normal(loc, scale)`` (on a positive parameter: truncated at 0, unnormalised)."""

    loc: ArrayLike = 0.0
    scale: ArrayLike = 1.0

    def log_prob(self, theta):
        return jnp.sum(
            stats.norm.logpdf(theta, _f(self.loc, theta.dtype), _f(self.scale, theta.dtype))
        )

    def sample(self, key, shape, n_params, dtype=None):
        dtype = _dtype(dtype)
        z = jax.random.normal(key, tuple(shape) + (n_params,), dtype)
        return _f(self.loc, dtype) + _f(self.scale, dtype) * z


class LogNormal(AbstractPrior):
    """``log theta ~ Normal(loc, scale)``."""

    loc: ArrayLike = 0.0
    scale: ArrayLike = 1.0

    def log_prob(self, theta):
        log_t = jnp.log(theta)
        return jnp.sum(
            stats.norm.logpdf(log_t, _f(self.loc, theta.dtype), _f(self.scale, theta.dtype)) - log_t
        )

    def sample(self, key, shape, n_params, dtype=None):
        dtype = _dtype(dtype)
        z = jax.random.normal(key, tuple(shape) + (n_params,), dtype)
        return jnp.exp(_f(self.loc, dtype) + _f(self.scale, dtype) * z)


class HalfCauchy(AbstractPrior):
    """``theta ~ HalfCauchy(scale)``: density ``2 / (pi s (1 + (theta / s)^2))``, ``theta >= 0``."""

    scale: ArrayLike = 1.0

    def log_prob(self, theta):
        s = _f(self.scale, theta.dtype)
        return jnp.sum(math.log(2.0 / math.pi) - jnp.log(s) - jnp.log1p((theta / s) ** 2))

    def sample(self, key, shape, n_params, dtype=None):
        dtype = _dtype(dtype)
        return _f(self.scale, dtype) * jnp.abs(
            jax.random.cauchy(key, tuple(shape) + (n_params,), dtype)
        )


class Gamma(AbstractPrior):
    """``theta ~ Gamma(concentration, rate)`` (mean ``concentration / rate``)."""

    concentration: ArrayLike = 1.0
    rate: ArrayLike = 1.0

    def log_prob(self, theta):
        a, b = _f(self.concentration, theta.dtype), _f(self.rate, theta.dtype)
        return jnp.sum(stats.gamma.logpdf(theta, a, scale=1.0 / b))

    def sample(self, key, shape, n_params, dtype=None):
        dtype = _dtype(dtype)
        shape = tuple(shape) + (n_params,)
        a = jnp.broadcast_to(_f(self.concentration, dtype), shape)
        return jax.random.gamma(key, a, shape, dtype) / _f(self.rate, dtype)


class Flat(AbstractPrior):
    """Improper flat prior (log density 0): maximum likelihood with [`map_estimate`][phasejax.infer.map_estimate]."""

    def log_prob(self, theta):
        return jnp.zeros((), theta.dtype)


class Independent(AbstractPrior):
    """One prior per parameter: ``Independent([Gamma(2, 1), HalfCauchy(1)])``."""

    priors: tuple[AbstractPrior, ...]

    def __init__(self, priors: Sequence[AbstractPrior | Callable]):
        self.priors = tuple(as_prior(p) for p in priors)

    def log_prob(self, theta):
        if theta.shape[-1] != len(self.priors):
            raise ValueError(f"{len(self.priors)} priors for {theta.shape[-1]} parameters")
        return sum(p.log_prob(theta[i : i + 1]) for i, p in enumerate(self.priors))

    def sample(self, key, shape, n_params, dtype=None):
        if n_params != len(self.priors):
            raise ValueError(f"{len(self.priors)} priors for {n_params} parameters")
        keys = jax.random.split(key, n_params)
        return jnp.concatenate(
            [p.sample(k, shape, 1, dtype) for p, k in zip(self.priors, keys)], axis=-1
        )


class FunctionPrior(AbstractPrior):
    """A user function ``theta -> log density`` (no sampler: give ``init``)."""

    fn: Callable

    def log_prob(self, theta):
        return jnp.asarray(self.fn(theta), theta.dtype).sum()


def as_prior(prior) -> AbstractPrior:
    """``None`` -> [`Flat`][phasejax.infer.Flat]; a prior -> itself; a sequence -> [`Independent`][phasejax.infer.Independent];
    a callable -> [`FunctionPrior`][phasejax.infer.FunctionPrior]."""
    if prior is None:
        return Flat()
    if isinstance(prior, AbstractPrior):
        return prior
    if isinstance(prior, (list, tuple)):
        return Independent(prior)
    if callable(prior):
        return FunctionPrior(prior)
    raise TypeError(
        f"cannot use {prior!r} as a prior: give a prior object, a sequence of them, or a function"
    )
