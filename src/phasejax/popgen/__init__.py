"""Population genetics front door: demes models in; coalescence times and (joint) site
frequency spectra out, exact and differentiable in the demographic parameters."""

from ._chain import PiecewiseChain
from ._demes import Demography, from_demes
from ._likelihood import multinomial_loglik, poisson_loglik, sfs_mask, standard_errors
from ._sfs import fold, polanski_kimmel
from ._statespace import StateBudgetError
from ._times import CoalescenceTime

__all__ = [
    "CoalescenceTime",
    "Demography",
    "PiecewiseChain",
    "StateBudgetError",
    "fold",
    "from_demes",
    "multinomial_loglik",
    "poisson_loglik",
    "polanski_kimmel",
    "sfs_mask",
    "standard_errors",
]
