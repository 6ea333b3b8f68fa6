"""The Poisson random field as a numpyro distribution over SFS counts:

    def numpyro_model(observed):
        size = numpyro.sample("size", dist.LogNormal(jnp.log(1e4), 1.0))
        demography = eqx.tree_at(lambda d: d.sizes, template, jnp.full((1, 1), size))
        numpyro.sample("sfs", SFSDistribution(demography.expected_sfs(), rate), obs=observed)

(for the multinomial likelihood, free of the rate:
``numpyro.factor("sfs", multinomial_loglik(observed, expected))``).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from .._optional import numpyro_distributions
from ._likelihood import poisson_loglik, sfs_mask

_dist = numpyro_distributions("phasejax.popgen.SFSDistribution")
_constraints = _dist.constraints


class SFSDistribution(_dist.Distribution):
    """Site counts of a (joint) SFS: independent Poisson with means
    ``mutation_rate * expected_a`` on the polymorphic entries (folded: ``|a| <= |n|/2``),
    zero elsewhere. The event is the whole spectrum (``event_shape = expected.shape``).

    Args:
        expected: expected branch-length (j)SFS (e.g. ``Demography.expected_sfs()``).
        mutation_rate: mutation rate per unit of ``expected``'s time over the sequence
            (``u * Demography.scale`` for ``u`` per generation).
        folded: ``expected`` (and the counts) are folded.
    """

    arg_constraints = {"mutation_rate": _constraints.positive}
    pytree_data_fields = ("expected", "mutation_rate")
    pytree_aux_fields = ("folded",)

    def __init__(self, expected, mutation_rate, *, folded: bool = False, validate_args=None):
        self.expected = jnp.asarray(expected)
        self.mutation_rate = jnp.asarray(mutation_rate, self.expected.dtype)
        self.folded = bool(folded)
        super().__init__(
            batch_shape=(), event_shape=self.expected.shape, validate_args=validate_args
        )

    @property
    def support(self):
        return _constraints.independent(_constraints.nonnegative_integer, self.expected.ndim)

    def log_prob(self, value):
        return poisson_loglik(value, self.expected, self.mutation_rate, folded=self.folded)

    def sample(self, key, sample_shape=()):
        if key is None:
            raise ValueError("sample needs a PRNG key")
        rate = self.mean
        return jax.random.poisson(key, rate, tuple(sample_shape) + rate.shape).astype(rate.dtype)

    @property
    def mean(self):
        mask = jnp.asarray(sfs_mask(self.expected.shape, self.folded))
        return jnp.where(mask, self.mutation_rate * self.expected, 0.0)

    @property
    def variance(self):
        return self.mean
