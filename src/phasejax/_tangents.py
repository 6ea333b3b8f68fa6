"""Log-densities whose theta-gradient comes from the forward series itself.

For rates linear in ``theta`` (`LinearRates`: ``S(theta)``, exit rates ``s(theta)``) the
derivative of ``f(t) = alpha e^{St} s`` along ``theta_i`` follows from Van Loan's block
identity, with ``D_i = dS / dtheta_i``:

    exp(t [[S, D], [0, S]]) = [[e^{St}, int_0^t e^{S(t-u)} D e^{Su} du], [0, e^{St}]],

    df/dtheta_i = alpha (int_0^t e^{S(t-u)} D_i e^{Su} du) s + alpha e^{St} ds_i.

Split ``D_i = D_i+ - D_i-`` and ``ds_i = ds_i+ - ds_i-`` into non-negative parts. On
``1 + 2p`` copies of the states the matrix

    A = [[S, D_1+, D_1-, ...], [0, S, 0, ...], [0, 0, S, ...], ...]

has the diagonal of ``S`` and non-negative entries off it, so ``P = I + A / Lambda`` is
non-negative for the same ``Lambda`` and the uniformization engine
(`phasejax._uniformization.mix`) runs it as it runs any chain: one series from
``[alpha, 0, ...]`` with the ``1 + 2p`` non-negative projections

    [s; 0; ...],   [ds_i+; ..., s (copy 1 + 2i), ...],   [ds_i-; ..., s (copy 2 + 2i), ...]

gives ``f`` and ``df/dtheta_i`` as the difference of the last two, each mixed in log space
like any projection (far tails keep their relative accuracy). The truncation is the same
as for ``f`` (same ``Lambda t``, same windows).

A likelihood's gradient then costs one forward series of the larger chain: no
checkpoints, no replay, no adjoint pass, and it compiles as one program (the reverse pass
multiplies the cotangents by the saved Jacobian) instead of two, which is what a first
call waits for. It serves calls outside any ``jit`` or ``vmap`` where only ``theta`` is
differentiated (the usual likelihood gradient) and ``theta`` has at most
`FORWARD_PARAMS` entries (the chain grows by ``2p`` copies). Elsewhere the engine's
adjoint runs (through the same ``custom_vjp``): inside a ``jit`` it is about 10 % faster
per call once compiled, under ``vmap`` it mixes one column per member instead of
``1 + 2p`` (Kingman n = 10, 100 thetas: 24 against 35 ms), and it serves derivatives in
the initial vector, the rate scale or the times.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float

from . import _sparse
from . import _uniformization as _unif
from ._solve import LinearRates
from ._structure import is_traced

FORWARD_PARAMS = 2  # at most this many parameters: the augmented chain has 1 + 2p copies


def applies(dist) -> bool:
    """Whether `log_density` serves ``dist`` (static: a continuous model with linear rates
    and at most `FORWARD_PARAMS` parameters)."""
    linear = dist.linear
    return (
        linear is not None
        and not dist.structure.discrete
        and linear.theta.shape[-1] <= FORWARD_PARAMS
    )


def _augmented(linear: LinearRates, alpha, src, dst):
    """Rates, total out-rates, projections, initial vector and edges of ``A`` (module doc)."""
    n, p = alpha.shape[0], linear.theta.shape[0]
    copies = 1 + 2 * p
    size = copies * n
    rate, diag = linear.rates(), linear.totals()
    internal = dst < n

    def into(offsets):  # (e, k): each edge's target in the copies at ``offsets``
        return jnp.where(internal[:, None], dst[:, None] + offsets[None], size)  # (absorbed)

    # the copies of S, copy by copy
    offsets = np.arange(copies) * n
    copy_src = (src[None] + offsets[:, None]).ravel()
    copy_dst = into(offsets).T.ravel()
    # D_i: off the diagonal the edge coefficients, on it minus the totals' coefficients;
    # columns ordered (D_1+, D_1-, D_2+, ...), each into its own copy
    d_edges = linear.scale * linear.coefficients  # (e, p)
    d_diag = -linear.scale * linear.state_coefficients  # (n, p)

    def split(x):  # (m, p) -> (m, 2p): positive and negative parts, interleaved
        return jnp.stack([jnp.maximum(x, 0.0), jnp.maximum(-x, 0.0)], axis=2).reshape(
            x.shape[0], 2 * p
        )

    targets = np.arange(1, copies) * n  # the first state of each tangent copy
    states = jnp.arange(n, dtype=src.dtype)
    cross_src = jnp.concatenate([jnp.repeat(src, 2 * p), jnp.repeat(states, 2 * p)])
    cross_dst = jnp.concatenate(
        [
            into(targets).ravel(),
            (states[:, None] + targets[None]).ravel(),
        ]
    )
    cross_rate = jnp.concatenate(
        [jnp.where(internal[:, None], split(d_edges), 0.0).ravel(), split(d_diag).ravel()]
    )
    exit_rates = _sparse.absorption_sums(rate, src, dst, n)
    # projections: [s; 0...] and, per tangent column c, ds_c on copy 0 and s on copy c
    top = jnp.concatenate(
        [exit_rates[:, None], split(_sparse.absorption_sums(d_edges, src, dst, n))], axis=1
    )
    unit = np.eye(copies, dtype=exit_rates.dtype)[1:, None, :]  # (theta's dtype: float32 too)
    lower = exit_rates[None, :, None] * unit  # (2p, n, 1 + 2p)
    proj = jnp.concatenate([top, lower.reshape(2 * p * n, copies)], axis=0)
    return (
        jnp.concatenate([jnp.tile(rate, copies), cross_rate]),
        jnp.tile(diag, copies),
        proj,
        jnp.concatenate([alpha, jnp.zeros(size - n, alpha.dtype)]),
        jnp.concatenate([copy_src, cross_src]),
        jnp.concatenate([copy_dst, cross_dst]),
    )


def log_density_jacobian(
    dist, lam, mu, lo, hi, key, presorted: bool
) -> tuple[Float[Array, " t"], Float[Array, "t p"]]:
    """``log f(t_i)`` and ``d log f(t_i) / d theta`` (0 where ``f = 0``) of ``dist`` (linear
    rates: `applies`) by one series of its augmented chain (module doc); the window
    arguments as for `phasejax._uniformization.mix`. Run as a top-level program
    (`log_density`)."""
    m = dist.structure
    rate, diag, proj, alpha_aug, src_aug, dst_aug = _augmented(
        dist.linear, dist.alpha, m.src, m.dst
    )
    cfg = _unif.make_stream(diag.shape[0], proj.shape[1], mu.shape[0], poisson=True)
    args = (rate, diag, proj, alpha_aug, src_aug, dst_aug, lam, mu, lo, hi)
    out = _unif.mix(cfg, *args, key=key, presorted=presorted)
    log_f = out[:, 0]
    finite = jnp.isfinite(log_f)[:, None]
    base = jnp.where(finite, log_f[:, None], 0.0)
    # d log f / d theta_i = (df_i+ - df_i-) / f
    jacobian = jnp.exp(out[:, 1::2] - base) - jnp.exp(out[:, 2::2] - base)
    return log_f, jnp.where(finite, jacobian, 0.0)


def log_density(dist, t: Array, inverse: Array | None, kernel: Callable[..., Any]) -> Array:
    """``kernel(dist, t, inverse, "logpdf")`` (``log f`` at ``t``: the value program
    unchanged) as a ``custom_vjp``. Called outside any ``jit`` or ``vmap`` (a top-level
    program, where the first answer waits for compilation), its derivative in
    ``dist.linear.theta`` comes from ``kernel(..., "dlogpdf")``: the value and the
    Jacobian in one program (`log_density_jacobian`), the reverse pass the product of the
    cotangents with the Jacobian (``kernel`` compiles a top-level program of a small chain
    for a fast first answer, `phasejax._distribution.LATENCY_OPTIONS`).

    Inside a ``jit`` or ``vmap`` the engine's adjoint serves instead (per call about 10 %
    faster, and under ``vmap`` up to 1.5x: its batch mixes one column per member, the
    augmented chain ``1 + 2p``), as it does where anything but ``theta`` carries a
    derivative (the initial vector, the rate scale, ``t``). The forward rule needs
    ``dist.diag`` to be the rates' totals at ``theta`` (as ``model(theta)`` builds it), so
    that its derivative is part of theta's; it checks this on the host (`_is_totals`) and
    takes the adjoint for a distribution edited otherwise.
    """
    theta, diag = dist.linear.theta, dist.diag
    hollow = eqx.tree_at(lambda d: (d.diag, d.linear.theta), dist, (None, None))
    dynamic, static = eqx.partition(hollow, eqx.is_array)

    def rebuild(theta, diag, dynamic):
        full = eqx.combine(dynamic, static)
        return eqx.tree_at(
            lambda d: (d.diag, d.linear.theta), full, (diag, theta), is_leaf=lambda x: x is None
        )

    # (every array an argument: a closure over one traced by an outer jit would leak)
    def evaluate(theta, diag, dynamic, t, inverse):
        return kernel(rebuild(theta, diag, dynamic), t, inverse, "logpdf")

    def forward(*primals):
        values = jax.tree.map(lambda x: x.value, primals)
        # the arguments that carry a derivative (theta, and diag with it, at least)
        active = [any(x.perturbed for x in jax.tree.leaves(arg)) for arg in primals]
        # a top-level program: no tracer (not inside a jit, a vmap or an outer derivative)
        top_level = not any(is_traced(x) for x in jax.tree.leaves(values))
        # theta and diag (its totals, as model(theta) builds it) carry the derivative alone
        forward_mode = top_level and active[:2] == [True, True] and not any(active[2:])
        concrete = rebuild(*values[:3]) if forward_mode else None
        if concrete is None or not _is_totals(concrete):
            # the adjoint, in the active arguments only (a derivative in t would cost the
            # forward pass a column per projection)
            def of_active(*args):
                it = iter(args)
                return evaluate(*(next(it) if a else v for a, v in zip(active, values)))

            log_f, pullback = jax.vjp(of_active, *(v for a, v in zip(active, values) if a))
            # which arguments got cotangents, as the residuals' structure
            return log_f, (log_f, pullback, tuple(() if a else None for a in active))
        log_f, jacobian = kernel(concrete, *values[3:], "dlogpdf")
        return log_f, (log_f, jacobian, None)

    def backward(residuals, g):
        log_f, pullback_or_jacobian, active = residuals
        if isinstance(g, jax.custom_derivatives.SymbolicZero):
            g = jnp.zeros_like(log_f)
        if active is None:  # the saved Jacobian
            return jnp.tensordot(g, pullback_or_jacobian, axes=g.ndim), None, None, None, None
        it = iter(pullback_or_jacobian(g))
        return tuple(None if a is None else next(it) for a in active)

    value = jax.custom_vjp(evaluate)
    value.defvjp(forward, backward, symbolic_zeros=True)
    return value(theta, diag, dynamic, t, inverse)


def _is_totals(dist) -> bool:
    """Whether ``dist.diag`` is its rates' totals at its theta (on the host, concrete
    values), as ``model(theta)`` builds it: the forward rule's derivative in theta then
    stands for diag's too (a distribution edited by hand takes the adjoint)."""
    totals = jax.tree.map(np.asarray, dist.linear).totals()  # (evaluated by numpy)
    rtol = 1e3 * np.finfo(totals.dtype).eps
    return bool(np.allclose(np.asarray(dist.diag), totals, rtol=rtol, atol=0.0))
