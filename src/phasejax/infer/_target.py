"""What the fits take: a log density of unconstrained parameters, built once.

[`AbstractTarget`][phasejax.infer.AbstractTarget] is the contract between a target and
[`fit_svgd`][phasejax.infer.fit_svgd] / [`map_estimate`][phasejax.infer.map_estimate]:
a prior, a positivity transform, the number of parameters and the log density of
``theta``; the log density of the unconstrained ``z`` (``theta = transform(z)``, Jacobian
included) follows here, once, for every target. [`Posterior`][phasejax.infer.Posterior]
(i.i.d. phase-type data) and [`phasejax.popgen.SFSPosterior`][] (an observed site
frequency spectrum) implement it.
"""

from __future__ import annotations

import abc

import equinox as eqx
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float

from ._priors import AbstractPrior
from ._transforms import AbstractTransform


class AbstractTarget(eqx.Module):
    """A log density of a model's parameters ``theta``, with the prior and positivity
    transform the fits need.

    Subclasses give `prior`, `transform`, `n_params` and
    [`log_density_theta`][phasejax.infer.AbstractTarget.log_density_theta] (and may
    refine [`explain`][phasejax.infer.AbstractTarget.explain]). Called as
    ``target(z, step=0)`` it is the log density of the unconstrained ``z``:

    ``log p(z) = log_density_theta(transform(z), step) + log |d theta / d z|``.
    """

    prior: eqx.AbstractVar[AbstractPrior]
    transform: eqx.AbstractVar[AbstractTransform]

    @property
    @abc.abstractmethod
    def n_params(self) -> int:
        """Length of ``theta``."""

    @abc.abstractmethod
    def log_density_theta(self, theta: Float[Array, " p"], step=0) -> Float[Array, ""]:
        """Log likelihood + log prior (- any penalty) at ``theta`` (no Jacobian).
        ``step`` is the fit's traced step counter (for annealed penalties)."""

    def __call__(self, z: Float[Array, " p"], step=0) -> Float[Array, ""]:
        theta = self.transform.forward(z)
        return self.log_density_theta(theta, step) + self.transform.log_det(z)

    def explain(self, z: Float[Array, " p"]) -> str:
        """Why the log density at ``z`` is not finite (run eagerly on the failure path)."""
        z = jnp.asarray(z)
        theta = self.transform.forward(z)
        where = f"at theta = {np.asarray(theta).tolist()}"
        parts = {
            "log prior": self.prior.log_prob(theta),
            "log |Jacobian|": self.transform.log_det(z),
            "log density of theta": self.log_density_theta(theta),
        }
        for name, value in parts.items():
            if not np.isfinite(float(value)):
                return f"{where} the {name} is {float(value)}"
        return f"{where} the log density is not finite"
