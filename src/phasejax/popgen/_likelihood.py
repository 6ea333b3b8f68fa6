"""Log-likelihoods of an observed (joint) SFS and their standard errors.

The log-likelihoods are differentiable (any order) in the expected spectrum, hence in the
demographic parameters through [`phasejax.popgen.Demography.expected_sfs`][].

Standard errors at an estimate ``theta_hat`` (a maximum of ``l = sum_b l_b``):

- ``"hessian"``: the observed information ``H = -hessian(l)``, ``Cov = H^-1``; right
  when sites are independent.
- ``"godambe"``: for linked sites, the sandwich ``Cov = H^-1 J H^-1`` with
  ``J = sum_b s_b s_b^T`` from the scores ``s_b = grad l_b`` of blocks of sites
  (e.g. chromosome segments long against linkage) taken as independent of each other;
  ``l`` is then a composite likelihood and ``H^-1`` alone is too small.
- ``"bootstrap"``: resample blocks with replacement, refit each resample
  (``l* = sum_b c_b l_b``, ``c`` the multiplicities) and take the sd of the refits.
"""

from __future__ import annotations

from collections.abc import Callable

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jax.scipy.special import gammaln, xlogy
from jaxtyping import Array, ArrayLike, Float

from .. import _linalg


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


def _profiled(observed, expected, mask):
    return jnp.sum(jnp.where(mask, observed, 0.0)) / jnp.sum(jnp.where(mask, expected, 0.0))


def profiled_mutation_rate(
    observed: ArrayLike, expected: Float[Array, "*shape"], *, folded: bool = False
) -> Float[Array, ""]:
    """The maximum-likelihood mutation rate of the Poisson random field,
    ``sum x / sum expected`` over the polymorphic entries (Watterson's estimator at
    constant size)."""
    observed, mask = _checked(observed, expected, folded)
    return _profiled(observed, expected, mask)


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
        mutation_rate = _profiled(observed, expected, mask)
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


def _flat(params) -> Array:
    params = jnp.asarray(params)
    if not jnp.issubdtype(params.dtype, jnp.floating):
        params = params.astype(jnp.result_type(float))
    if params.ndim != 1:
        raise ValueError(f"params must be a vector, got shape {params.shape}")
    return params


def _total(loglik):
    return lambda p: jnp.sum(loglik(p))


def _blocks(loglik, params) -> int:
    return _block_count(jax.eval_shape(loglik, params).shape)


def _block_count(shape: tuple[int, ...]) -> int:
    if len(shape) != 1:
        raise ValueError(
            f"godambe and bootstrap need loglik to return per-block log-likelihoods of "
            f"shape (B,), got shape {shape}"
        )
    return shape[0]


def godambe_covariance(loglik: Callable[[Array], Array], params: ArrayLike) -> Float[Array, "p p"]:
    """The sandwich ``H^-1 J H^-1``: ``H = -hessian(sum_b l_b)``, ``J = sum_b s_b s_b^T``
    with the per-block scores ``s_b = grad l_b`` at ``params`` (``loglik`` returns the
    ``(B,)`` per-block log-likelihoods ``l_b``)."""
    params = _flat(params)
    scores = jax.jacrev(loglik)(params)  # (B, p)
    _block_count(scores.shape[:-1])
    info = -jax.hessian(_total(loglik))(params)
    bread = _linalg.inv(info)
    return bread @ (scores.T @ scores) @ bread


class BlockBootstrap(eqx.Module):
    """Refits of block-resampled data: ``estimates`` ``(R, p)``, ``counts`` ``(R, B)`` (how
    often each block was drawn), ``decrement`` ``(R,)`` (the final Newton decrement
    ``g^T (-H)^-1 g`` of each refit: about 0 when it converged, with ``-H`` shifted to be
    positive definite where it is not); ``se`` the sd of the refits (``ddof=1``)."""

    estimates: Float[Array, "R p"]
    counts: Float[Array, "R B"]
    decrement: Float[Array, " R"]

    @property
    def se(self) -> Float[Array, " p"]:
        return jnp.std(self.estimates, axis=0, ddof=1)


# Newton step lengths tried per iteration: the longest that does not lower the objective
# (beyond rounding) is taken, else none. Not the best of them: near the optimum their
# values differ only by rounding, and picking by value would stall there.
_STEP_LENGTHS = (1.0, 0.5, 0.25, 0.125)


def _newton(f, x0: Array, steps: int) -> tuple[Array, Array]:
    """Maximise ``f`` from ``x0`` by ``steps`` damped Newton iterations; ``(x, decrement)``."""
    lengths = jnp.asarray(_STEP_LENGTHS, x0.dtype)

    def direction(x):
        # the Hessian as the Jacobian of the gradient; the value and gradient kept from
        # that pass
        h, (value, g) = jax.jacfwd(
            lambda y: (lambda vg: (vg[1], vg))(jax.value_and_grad(f)(y)), has_aux=True
        )(x)
        # where -H is not positive definite (away from a maximum) shift its spectrum
        # (Levenberg-Marquardt), so that d is still an ascent direction
        eig = _linalg.eigvalsh(-h)
        shift = jnp.where(eig[0] > 0, 0.0, 1e-3 * jnp.max(jnp.abs(eig)) - eig[0])
        d = _linalg.solve(-h + shift * jnp.eye(x.shape[0], dtype=x.dtype), g)
        return d, g @ d, value

    def body(x, _):
        d, _, now = direction(x)
        values = jax.vmap(lambda a: f(x + a * d))(lengths)
        ok = jnp.isfinite(values) & (values >= now - 1e-12 * jnp.abs(now))
        # where no step is acceptable (or the direction is not finite) x stays put
        step = jnp.where(jnp.any(ok), lengths[jnp.argmax(ok)] * d, 0.0)
        return x + step, None

    x, _ = jax.lax.scan(body, x0, None, length=steps)
    return x, direction(x)[1]


def block_bootstrap(
    loglik: Callable[[Array], Array],
    params: ArrayLike,
    key: Array,
    n_resamples: int = 200,
    *,
    steps: int = 10,
) -> BlockBootstrap:
    """Block bootstrap of an estimate: draw ``B`` blocks with replacement ``n_resamples``
    times (``jax.random.randint`` from ``key``: the same key gives the same resamples) and
    refit ``l*(theta) = sum_b c_b l_b(theta)`` from ``params`` (the estimate) by ``steps``
    damped Newton iterations (check ``decrement``).

    Args:
        loglik: ``params -> (B,)`` per-block log-likelihoods.
        params: the estimate, shape ``(p,)``; refits run in these coordinates (pass log
            parameters for a refit on the log scale).
        key: a JAX PRNG key.
        n_resamples: number of resamples ``R``.
        steps: Newton iterations per refit.
    """
    params = _flat(params)
    n_blocks = _blocks(loglik, params)
    draws = jax.random.randint(key, (int(n_resamples), n_blocks), 0, n_blocks)
    counts = jax.vmap(lambda d: jnp.bincount(d, length=n_blocks))(draws).astype(params.dtype)

    @jax.jit
    def refit(counts):
        return jax.vmap(lambda c: _newton(lambda p: c @ loglik(p), params, int(steps)))(counts)

    estimates, decrement = refit(counts)
    return BlockBootstrap(estimates=estimates, counts=counts, decrement=decrement)


def standard_errors(
    loglik: Callable[[Array], Array],
    params: ArrayLike,
    *,
    method: str = "hessian",
    key: Array | None = None,
    n_resamples: int = 200,
) -> Float[Array, " p"]:
    """Standard errors of the estimate ``params`` (a maximum of the log-likelihood).

    Args:
        loglik: ``params -> `` the log-likelihood, or its ``(B,)`` per-block terms (blocks
            of linked sites, independent of each other) whose sum is the log-likelihood;
            ``"godambe"`` and ``"bootstrap"`` need the blocks.
        params: the estimate, shape ``(p,)``.
        method: ``"hessian"``: ``sqrt(diag(H^-1))`` from the observed information
            ``H = -hessian(sum_b l_b)`` (independent sites); ``"godambe"``: the sandwich
            ([`godambe_covariance`][phasejax.popgen.godambe_covariance]);
            ``"bootstrap"``: the sd of block-bootstrap refits
            ([`block_bootstrap`][phasejax.popgen.block_bootstrap], needs ``key``).
        key: PRNG key of the bootstrap.
        n_resamples: bootstrap resamples.
    """
    params = _flat(params)
    if method == "hessian":
        info = -jax.hessian(_total(loglik))(params)
        return jnp.sqrt(jnp.diag(_linalg.inv(info)))
    if method == "godambe":
        return jnp.sqrt(jnp.diag(godambe_covariance(loglik, params)))
    if method == "bootstrap":
        if key is None:
            raise ValueError("method='bootstrap' needs key= (a JAX PRNG key)")
        return block_bootstrap(loglik, params, key, n_resamples).se
    raise ValueError(f"method must be 'hessian', 'godambe' or 'bootstrap', got {method!r}")
