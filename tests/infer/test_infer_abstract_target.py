"""Any infer.AbstractTarget is a target of map_estimate and fit_svgd (one gate for both):
a Gaussian log density written as a target, checked against its closed-form mode, mean
and sd, and the unconstrained log density (Jacobian included) defined by the base."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from phasejax import infer


class Gaussian(infer.AbstractTarget):
    loc: jax.Array
    scale: jax.Array
    prior: infer.AbstractPrior
    transform: infer.AbstractTransform

    @property
    def n_params(self) -> int:
        return self.loc.shape[0]

    def log_density_theta(self, theta, step=0):
        log_lik = jnp.sum(jax.scipy.stats.norm.logpdf(theta, self.loc, self.scale))
        return log_lik + self.prior.log_prob(theta)


def test_custom_target_in_map_and_svgd():
    loc, scale = jnp.array([2.0, 5.0]), jnp.array([0.3, 0.5])
    target = Gaussian(loc=loc, scale=scale, prior=infer.Flat(), transform=infer.Exp())
    z = jnp.log(jnp.array([1.5, 4.0]))
    # the base class adds the log Jacobian of theta = exp(z)
    np.testing.assert_allclose(
        target(z), target.log_density_theta(jnp.exp(z)) + jnp.sum(z), rtol=1e-14
    )
    fit = infer.map_estimate(target, jnp.array([1.0, 1.0]), steps=2000)
    np.testing.assert_allclose(fit.params, loc, rtol=1e-4)
    post = infer.fit_svgd(
        Gaussian(loc=loc, scale=scale, prior=infer.Flat(), transform=infer.Identity()),
        init=loc,
        n_particles=100,
        steps=600,
        progress=False,
    )
    np.testing.assert_allclose(post.mean, loc, atol=0.05)
    np.testing.assert_allclose(post.sd, scale, rtol=0.15)
    wall = infer.FunctionPrior(lambda th: jnp.where(th[0] > 3, 0.0, -jnp.inf))
    bad = Gaussian(loc=loc, scale=scale, prior=wall, transform=infer.Exp())
    with pytest.raises(ValueError, match="the log prior is -inf"):
        infer.map_estimate(bad, jnp.array([1.0, 1.0]), steps=5)
