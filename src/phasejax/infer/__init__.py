"""Bayesian inference for phase-type models: SVGD, MAP, and a numpyro distribution.

One target, built once (an [`AbstractTarget`][phasejax.infer.AbstractTarget]; for an
observed site frequency spectrum, [`phasejax.popgen.SFSPosterior`][]): a
[`Posterior`][phasejax.infer.Posterior] holds the model's
[`Likelihood`][phasejax.infer.Likelihood] (model, rewards, series options), the data,
the prior, the positivity transform and an optional moment penalty, all checked on the
concrete data before anything is compiled. It is what the fits take:

- [`fit_svgd`][phasejax.infer.fit_svgd]: posterior particles by Stein variational
  gradient descent, in jitted chunks (progress bar, Ctrl-C, checkpoints, bitwise
  resume), with stationarity diagnostics.
- [`map_estimate`][phasejax.infer.map_estimate]: posterior mode (or maximum likelihood,
  ``prior=None``) with optax.
- ``PhaseTypeDistribution``: a numpyro distribution of a likelihood at ``theta``
  (needs numpyro; imported on first use and left out of ``__all__`` so that
  ``from phasejax.infer import *`` works without it) for NUTS and friends.
- [`svgd`][phasejax.infer.svgd], [`svgd_init`][phasejax.infer.svgd_init],
  [`svgd_run`][phasejax.infer.svgd_run]: SVGD on any log density, resumable from an
  [`SVGDState`][phasejax.infer.SVGDState].
- [`phasejax.infer.plot`][]: trace, marginal and pair plots (needs matplotlib).

**Example:**

    import jax, jax.numpy as jnp
    jax.config.update("jax_enable_x64", True)
    import phasejax as pj
    from phasejax import infer

    model = pj.models.kingman(5).compile()
    data = model(jnp.array([1.5])).sample(jax.random.PRNGKey(0), (200,))
    target = infer.Posterior(model, data, prior=infer.LogNormal(0.0, 1.0))
    fit = infer.fit_svgd(target, n_particles=64, steps=500)
    print(fit.summary())                        # posterior mean, sd, quantiles of theta
    more = infer.fit_svgd(target, steps=500, resume=fit)   # bitwise as one 1000-step run
    mle = infer.map_estimate(infer.Posterior(model, data, prior=None), jnp.array([1.0]))
    infer.plot.pairs(fit)
"""

from . import plot
from ._distributed import evaluate_batch
from ._fit import FitResult, MAPResult, fit_svgd, map_estimate, summarize
from ._kernels import RBF, AbstractKernel, median_bandwidth, stein_direction
from ._posterior import Likelihood, MomentRegularization, Posterior
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
from ._svgd import (
    SVGDResult,
    SVGDState,
    load_state,
    save_state,
    stein_residual,
    svgd,
    svgd_init,
    svgd_run,
)
from ._target import AbstractTarget
from ._transforms import AbstractTransform, Exp, Identity, Softplus, as_transform


def __getattr__(name):
    if name == "PhaseTypeDistribution":
        from ._numpyro import PhaseTypeDistribution

        return PhaseTypeDistribution
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "RBF",
    "AbstractKernel",
    "AbstractPrior",
    "AbstractTarget",
    "AbstractTransform",
    "Exp",
    "FitResult",
    "Flat",
    "FunctionPrior",
    "Gamma",
    "HalfCauchy",
    "Identity",
    "Independent",
    "Likelihood",
    "LogNormal",
    "MAPResult",
    "MomentRegularization",
    "Normal",
    "Posterior",
    "SVGDResult",
    "SVGDState",
    "Softplus",
    "as_prior",
    "as_transform",
    "evaluate_batch",
    "fit_svgd",
    "load_state",
    "map_estimate",
    "median_bandwidth",
    "plot",
    "save_state",
    "stein_direction",
    "stein_residual",
    "summarize",
    "svgd",
    "svgd_init",
    "svgd_run",
]
