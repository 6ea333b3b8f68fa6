"""Bayesian inference for phase-type models: SVGD, MAP, and a numpyro distribution.

Everything is one jitted JAX program: particles are ``vmap``-ed, gradients exact, the
loop a ``lax.scan`` (no host callbacks but an optional progress print), particles
sharded across devices when several exist.

- :func:`svgd`, :func:`svgd_init`, :func:`svgd_run`: Stein variational gradient
  descent on any log density, resumable from an :class:`SVGDState`.
- :func:`fit_svgd`: posterior of a model's parameters from i.i.d. data, with priors,
  a positivity transform and optional moment regularization.
- :func:`map_estimate`: posterior mode (or maximum likelihood) with optax.
- :class:`PhaseTypeDistribution`: a numpyro distribution (needs numpyro; imported
  on first use) for NUTS and friends.
- :mod:`phasejax.infer.plot`: trace, marginal and pair plots (matplotlib).

Requires ``optax``; ``PhaseTypeDistribution`` needs ``numpyro`` (it is left out of
``__all__`` so that ``from phasejax.infer import *`` works without it) and
:mod:`~phasejax.infer.plot` needs ``matplotlib``, both imported on first use.

Example::

    import jax, jax.numpy as jnp
    jax.config.update("jax_enable_x64", True)
    import phasejax as pj
    from phasejax import infer

    model = pj.models.kingman(5).compile()
    data = model(jnp.array([1.5])).sample(jax.random.PRNGKey(0), (200,))
    fit = infer.fit_svgd(model, data, prior=infer.LogNormal(0.0, 1.0), n_particles=64, steps=500)
    print(fit.summary())                        # posterior mean, sd, quantiles of theta
    mle = infer.map_estimate(model, jnp.array([1.0]), data=data)   # prior=None: the MLE
    more = infer.fit_svgd(model, data, prior=infer.LogNormal(0.0, 1.0), steps=500, resume=fit)
    infer.plot.plot_pairs(fit)
"""

from . import plot
from ._distributed import evaluate_batch
from ._fit import DEFAULT_QUANTILES, FitResult, MAPResult, fit_svgd, map_estimate, summarize
from ._kernels import RBF, AbstractKernel, median_bandwidth, stein_direction
from ._posterior import MomentRegularization, PosteriorLogDensity, log_likelihood, series_fits
from ._priors import (
    AbstractPrior,
    Flat,
    FunctionPrior,
    Gamma,
    HalfCauchy,
    Independent,
    LogNormal,
    Normal,
    as_prior,
)
from ._svgd import SVGDResult, SVGDState, load_state, save_state, svgd, svgd_init, svgd_run
from ._transforms import AbstractTransform, Exp, Identity, Softplus, as_transform


def __getattr__(name):
    if name == "PhaseTypeDistribution":
        from ._numpyro import PhaseTypeDistribution

        return PhaseTypeDistribution
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "DEFAULT_QUANTILES",
    "RBF",
    "AbstractKernel",
    "AbstractPrior",
    "AbstractTransform",
    "Exp",
    "FitResult",
    "Flat",
    "FunctionPrior",
    "Gamma",
    "HalfCauchy",
    "Identity",
    "Independent",
    "LogNormal",
    "MAPResult",
    "MomentRegularization",
    "Normal",
    "PosteriorLogDensity",
    "SVGDResult",
    "SVGDState",
    "Softplus",
    "as_prior",
    "as_transform",
    "evaluate_batch",
    "fit_svgd",
    "load_state",
    "log_likelihood",
    "map_estimate",
    "median_bandwidth",
    "plot",
    "save_state",
    "series_fits",
    "stein_direction",
    "summarize",
    "svgd",
    "svgd_init",
    "svgd_run",
]
