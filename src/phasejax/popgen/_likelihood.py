"""Log-likelihoods of an observed (joint) SFS and standard errors from the observed
information. All functions are differentiable (any order) in the expected spectrum,
hence in the demographic parameters through [`phasejax.popgen.Demography.expected_sfs`][].
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from jax.scipy.special import gammaln, xlogy
from jaxtyping import Array, ArrayLike, Float


def sfs_mask(shape: tuple[int, ...], folded: bool = False) -> np.ndarray:
    """Entries that carry data: all but the corners ``0`` and ``n`` (monomorphic);
    folded, only ``|a| <= |n| / 2``."""
    mask = np.ones(shape, bool)
    mask[(0,) * len(shape)] = False
    mask[tuple(s - 1 for s in shape)] = False
    if folded:
        total = sum(np.meshgrid(*[np.arange(s) for s in shape], indexing="ij"))
        mask &= total <= sum(s - 1 for s in shape) / 2
    return mask


def _checked(observed, expected, folded):
    observed = jnp.asarray(observed, jnp.result_type(float))
    if observed.shape != expected.shape:
        raise ValueError(f"observed SFS has shape {observed.shape}, expected {expected.shape}")
    return observed, jnp.asarray(sfs_mask(expected.shape, folded))


def poisson_loglik(
    observed: ArrayLike,
    expected: Float[Array, "*shape"],
    mutation_rate: ArrayLike | None = None,
    *,
    folded: bool = False,
) -> Float[Array, ""]:
    """Poisson random field log-likelihood ``sum_a x_a log(l_a) - l_a - log(x_a!)`` with
    ``l_a = mutation_rate * expected_a`` (independent sites).

    Args:
        observed: SFS counts, the shape of ``expected``.
        expected: expected branch-length (j)SFS (e.g. ``Demography.expected_sfs()``).
        mutation_rate: total mutation rate per unit of ``expected``'s time over the
            sequence (``theta / 2`` in coalescent units); ``None``: profiled out at its
            maximum ``sum x / sum expected``.
        folded: ``observed`` and ``expected`` are folded (only ``|a| <= |n|/2`` used).
    """
    observed, mask = _checked(observed, expected, folded)
    if mutation_rate is None:
        mutation_rate = jnp.sum(jnp.where(mask, observed, 0.0)) / jnp.sum(
            jnp.where(mask, expected, 0.0)
        )
    rate = jnp.where(mask, mutation_rate * expected, 1.0)
    terms = xlogy(observed, rate) - rate - gammaln(observed + 1.0)
    return jnp.sum(jnp.where(mask, terms, 0.0))


def multinomial_loglik(
    observed: ArrayLike, expected: Float[Array, "*shape"], *, folded: bool = False
) -> Float[Array, ""]:
    """Multinomial log-likelihood of the SFS given its total: cell probabilities
    ``expected_a / sum expected`` (free of the mutation rate), with the multinomial
    coefficient."""
    observed, mask = _checked(observed, expected, folded)
    x = jnp.where(mask, observed, 0.0)
    p = jnp.where(mask, expected, 1.0) / jnp.sum(jnp.where(mask, expected, 0.0))
    terms = jnp.where(mask, xlogy(x, p) - gammaln(x + 1.0), 0.0)
    return gammaln(jnp.sum(x) + 1.0) + jnp.sum(terms)


def standard_errors(loglik, params: Float[Array, " p"]) -> Float[Array, " p"]:
    """Standard errors ``sqrt(diag(I^-1))`` from the observed information
    ``I = -hessian(loglik)(params)`` at ``params`` (an MLE), by ``jax.hessian``."""
    info = -jax.hessian(loglik)(jnp.asarray(params))
    return jnp.sqrt(jnp.diag(jnp.linalg.inv(info)))
