"""The dense piecewise-constant chain of the popgen models and Richardson extrapolation
over sub-epoch refinements.

The chain itself lives in the core (`phasejax._piecewise`, shared with
[`EpochPhaseType`][phasejax.EpochPhaseType]); it is re-exported here as
``phasejax.popgen.PiecewiseChain``.
"""

from __future__ import annotations

import jax

from .._piecewise import PiecewiseChain

__all__ = ["PiecewiseChain", "extrapolate"]


def extrapolate(chains: tuple[PiecewiseChain, ...], fn):
    """``fn`` of one chain, or Richardson's ``(4 fn(fine) - fn(coarse)) / 3`` of a coarse
    and a fine chain (twice the sub-epochs): the sub-epoch rule (the mean generator over
    each sub-epoch) is symmetric in time, so its error expands in even powers of the
    sub-epoch width and the combination cancels the leading ``O(width^2)`` term."""
    if len(chains) == 1:
        return fn(chains[0])
    coarse, fine = (fn(c) for c in chains)
    return jax.tree.map(lambda f, c: (4.0 * f - c) / 3.0, fine, coarse)
