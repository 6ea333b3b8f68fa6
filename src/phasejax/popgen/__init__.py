"""Population genetics front door: demes models in; coalescence times and (joint) site
frequency spectra out, exact and differentiable in the demographic parameters; fits of
demographies to an observed SFS ([`SFSPosterior`][phasejax.popgen.SFSPosterior] for
``infer.map_estimate``/``infer.fit_svgd``; ``SFSDistribution``, a numpyro distribution of
SFS counts, imported on first use and left out of ``__all__``)."""

from ._chain import PiecewiseChain
from ._demes import Demography, from_demes
from ._likelihood import (
    BlockBootstrap,
    block_bootstrap,
    godambe_covariance,
    multinomial_loglik,
    poisson_loglik,
    profiled_mutation_rate,
    sfs_mask,
    standard_errors,
)
from ._sfs import fold, polanski_kimmel
from ._statespace import StateBudgetError
from ._target import DemographyParameters, SFSPosterior
from ._times import CoalescenceTime


def __getattr__(name):
    if name == "SFSDistribution":  # needs numpyro: imported on first use
        from ._numpyro import SFSDistribution

        return SFSDistribution
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "BlockBootstrap",
    "CoalescenceTime",
    "Demography",
    "DemographyParameters",
    "PiecewiseChain",
    "SFSPosterior",
    "StateBudgetError",
    "block_bootstrap",
    "fold",
    "from_demes",
    "godambe_covariance",
    "multinomial_loglik",
    "poisson_loglik",
    "polanski_kimmel",
    "profiled_mutation_rate",
    "sfs_mask",
    "standard_errors",
]
