"""Internals of the streamed series (`phasejax._uniformization`): the checkpoint schedule of
the adjoint and the Poisson weights, against closed forms."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.stats

import phasejax as pj
from helpers.oracle import hypoexponential_log_pdf
from phasejax import _uniformization as unif


@pytest.mark.parametrize(
    ("checkpoints", "t_max", "extra", "budget"),
    [(2, 50.0, 0, 0), (4, 1223.3, 1, 0), (2, 3333.3, 2, 0), (4, 3333.3, 3, None)],
)
def test_two_level_replay_value_and_gradient(monkeypatch, checkpoints, t_max, extra, budget):
    """Kingman n=4 (coalescence rates 6, 3, 1: Lambda = 6, a series that never dies out)
    over 4, 63 and 165 segments with 2 or 4 checkpoints per level (no byte budget):
    intervals of 2, 16 and 83 segments, inner checkpoints 1, 4 and 42 segments apart (the
    backward pass replays an interval from its checkpoint, storing the inner level, then
    each segment from its nearest inner checkpoint; in the first two the interval's end
    falls on an inner slot past the last, which must not be stored); and with the default
    budget, whose 4096 first-level checkpoints hold all 165 segment starts (one replay per
    segment). Value and gradients in theta and t against the closed form
    (``f_theta(t) = theta f_1(theta t)``). The full chain (4 states, not lumped) with
    sparse steps (128-step segments)."""
    monkeypatch.setattr(unif, "CHECKPOINTS", checkpoints)
    monkeypatch.setattr(unif, "DENSE_STATES", 0)
    if budget is not None:
        monkeypatch.setattr(unif, "CHECKPOINT_BYTES", budget)
    n_seg = (int(unif.right_point(np.array(6 * t_max), 1e-12, np)) + 128) // 128
    first = unif._checkpoint_count(unif.make_stream(4, 1, 4 + extra, poisson=True), 4, 1, 1)
    stride = -(-n_seg // first)
    assert (n_seg, stride, -(-stride // checkpoints)) == {
        (50.0, 0): (4, 2, 1),
        (1223.3, 0): (63, 16, 4),
        (3333.3, 0): (165, 83, 42),
        (3333.3, None): (165, 1, 1),
    }[t_max, budget]
    model = pj.models.kingman(4).compile(lump=False)
    # a shape of its own per case: the kernel is traced with the patched schedule here
    t = jnp.array([0.5, 3.0, 20.0, 7.0, 9.0, 11.0][: 3 + extra] + [t_max])
    tn = np.asarray(t)
    log_f, d_log_f = hypoexponential_log_pdf(np.array([6.0, 3.0, 1.0]), tn)
    value, grad = jax.value_and_grad(lambda th, t: model(th).logpdf(t).sum(), (0, 1))(
        jnp.array([1.0]), t
    )
    np.testing.assert_allclose(value, log_f.sum(), rtol=1e-12)
    np.testing.assert_allclose(grad[1], d_log_f, rtol=1e-9)
    np.testing.assert_allclose(grad[0][0], np.sum(1.0 + tn * d_log_f), rtol=1e-9)


def test_log_poisson_weights_against_scipy():
    """`_log_pois` (Stirling's series for ``log k!``) at sub-block starts from 0 to 1e7 and
    means from 0 to 1e7, against scipy (float64) to 1e-13 relative or 1e-9 absolute (the
    rounding of ``k log mu`` at ``k = 1e7``)."""
    k = np.array([0, 1, 2, 15, 16, 17, 32, 100, 1024, 4096, 123456, 10**7], float)
    mu = np.array([0.0, 1e-300, 1e-3, 0.7, 16.0, 1e3, 1.2e5, 1e7])
    got = np.asarray(unif._log_pois(jnp.asarray(k)[:, None], jnp.asarray(mu)[None]))
    want = scipy.stats.poisson.logpmf(k[:, None], mu[None])
    want[:, 0] = np.where(k == 0, 0.0, -np.inf)  # Pois(0; 0) = 1
    finite = np.isfinite(want)
    assert np.array_equal(finite, np.isfinite(got))
    tol = 1e-9 + 1e-13 * np.abs(want[finite])
    assert np.all(np.abs(got[finite] - want[finite]) <= tol)
    assert math.isclose(float(unif._log_pois(jnp.array(0.0), jnp.array(0.0))), 0.0)


@pytest.mark.parametrize(("first", "apart"), [(0, 0.0), (128, 0.0), (0, 600.0)])
def test_poisson_product_against_log_sum_exp(first, apart):
    """`_poisson_product` (many columns: one matrix product of the Poisson weights scaled
    per observation with the coefficients scaled per column) and its transpose for the
    coefficients' cotangent, against scipy's log pmf and a log-sum-exp over each window
    widened to whole sub-blocks: means from 0 to 1e5,
    windows ending inside the segment, empty, or not reaching it, a zero column. Where
    the coefficients decay by ``e^-apart`` across the segment while the weights grow,
    the scaled products underflow and it must fall back to the log-sum-exp rather than
    return -inf."""
    rng = np.random.default_rng(1)
    ks = np.arange(first, first + 128)
    mu = np.array([0.0, 1e-4, 3.0, 40.0, 150.0, 1e3, 1e5, 60.0, 80.0])
    hi = np.array([40, 40, 100, 140, 300, 2000, 10**6, -1, 20])
    lo = np.zeros_like(hi)
    decay = -apart * np.linspace(0.0, 1.0, 128)[:, None]
    log_c = rng.normal(0.0, 2.0, (128, 9)) + decay
    log_c[:, 4] = -np.inf
    coeff = np.exp(log_c)
    cols = unif._columns(jnp.asarray(ks), jnp.asarray(coeff))
    got = np.asarray(
        unif._poisson_product(
            jnp.asarray(ks), jnp.asarray(mu), jnp.asarray(lo), jnp.asarray(hi), cols
        )
    )
    sub = unif.SUB[8]
    widened = (ks - ks % sub)[None] <= hi[:, None]
    log_w = np.where(widened, scipy.stats.poisson.logpmf(ks[None], mu[:, None]), -np.inf)
    log_w[0] = np.where(ks == 0, 0.0, -np.inf)  # Pois(0; 0) = 1
    want = scipy.special.logsumexp(log_w[:, :, None] + log_c[None], axis=1)
    assert np.array_equal(np.isfinite(got), np.isfinite(want))
    finite = np.isfinite(want)
    np.testing.assert_allclose(got[finite], want[finite], rtol=1e-13, atol=1e-11)
    # the coefficients' cotangent, sum_i g_iq Pois(k; mu_i) / f_iq, against the terms
    g = rng.normal(size=got.shape)
    log_r = -np.where(finite, want, 0.0)
    g_c = unif._poisson_product_grad(
        jnp.asarray(ks),
        cols.cum,
        jnp.asarray(mu),
        jnp.asarray(lo),
        jnp.asarray(hi),
        jnp.asarray(log_r),
        jnp.asarray(np.where(finite, g, 0.0)),
    )
    # (each observation's largest Pois(k; mu_i) / f_iq capped at e^300: the far-apart case)
    peak = np.max(log_w, axis=1)[:, None, None]
    peak = np.where(np.isfinite(peak), peak, 0.0)
    log_ratio = np.minimum(log_r[:, None] + peak, 300.0) - peak
    ratio = np.exp(np.where(np.isfinite(log_w[:, :, None]), log_w[:, :, None] + log_ratio, -np.inf))
    assert np.any(log_r[:, None] + peak > 300.0) == (apart > 0)
    want_g = np.einsum("ikq,iq->kq", ratio, np.where(finite, g, 0.0))
    np.testing.assert_allclose(np.asarray(g_c), want_g, rtol=1e-10, atol=1e-300)
    # the scaled products underflow (the fallback ran) exactly in the far-apart case
    top = np.max(log_w, axis=1, keepdims=True)
    lead = np.exp(log_w - np.where(np.isfinite(top), top, 0.0))
    naive = lead @ (coeff / np.maximum(coeff.max(axis=0), 1e-300))
    assert np.any((naive < 1e-250) & finite) == (apart > 0)


def test_fast_decay_within_a_segment_keeps_far_tails():
    """A small (dense) chain whose series decays by 0.2 per step (e^-206 per 128-step
    segment): vectors are rescaled once per segment, so a segment must not span more
    decay than the float range (512-step segments lost these far tails). Values and
    gradients (the adjoint) against closed forms: a mixture of two exponentials, and a
    geometric law for the discrete case."""
    alpha, S = np.array([0.5, 0.5]), np.diag([-1.0, -0.8])
    dist = pj.Graph.from_matrices(alpha, S).compile()()
    t = np.array([500.0, 2000.0, 2500.0])
    want = np.logaddexp(np.log(0.5) - t, np.log(0.4) - 0.8 * t)
    np.testing.assert_allclose(
        np.asarray(dist.logpdf(t, method="uniformization")), want, rtol=1e-13
    )
    # gradients through the adjoint, whose steps carry the rescaling factors: two states
    # exiting at theta_0 and theta_1 (f = sum_i theta_i e^{-theta_i t} / 2)
    graph = pj.Graph(1)
    a, b, end = (graph.find_or_create_vertex([i]) for i in (1, 2, 3))
    graph.starting_vertex().add_edge(a, 0.5)
    graph.starting_vertex().add_edge(b, 0.5)
    a.add_edge_parameterized(end, 0.0, [1.0, 0.0])
    b.add_edge_parameterized(end, 0.0, [0.0, 1.0])
    model = graph.compile()
    theta = np.array([1.0, 0.8])
    value, grad = jax.value_and_grad(lambda th: model(th).logpdf(t).sum())(jnp.asarray(theta))
    log_terms = np.log(0.5 * theta)[None] - np.outer(t, theta)  # (t, i)
    log_f = np.logaddexp(log_terms[:, 0], log_terms[:, 1])
    share = np.exp(log_terms - log_f[:, None])  # each term's share of f
    want_grad = np.sum(share * (1 / theta[None] - t[:, None]), axis=0)
    np.testing.assert_allclose(float(value), log_f.sum(), rtol=1e-13)
    np.testing.assert_allclose(np.asarray(grad), want_grad, rtol=1e-11)
    geometric = pj.Graph.from_matrices(np.array([1.0]), np.array([[0.1]]), discrete=True)
    k = np.array([100, 300, 400])
    want = (k - 1) * np.log(0.1) + np.log(0.9)
    np.testing.assert_allclose(np.asarray(geometric.compile()().logpmf(k)), want, rtol=1e-13)


@pytest.mark.filterwarnings("ignore:float32 transient quantities")
@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_batch_of_thetas_matches_each_theta(dtype):
    """A vmap over 12 thetas (members side by side: the minor-axis steps, and in float64
    the one-product mixing of `_poisson_product`; Horner in float32) gives each theta's
    own log-density, from t = 0 and 1e-5 to the far tail: to rounding in float64, to
    float32's documented 1e-5."""
    model = pj.models.kingman(8).compile()
    t = jnp.asarray([0.0, 1e-5, 0.01, 0.3, 1.0, 3.0, 10.0, 40.0], dtype)
    thetas = jnp.asarray(np.linspace(0.5, 2.0, 12)[:, None], dtype)
    batch = np.asarray(jax.vmap(lambda th: model(th).logpdf(t))(thetas), np.float64)
    rtol = 1e-12 if dtype == "float64" else 1e-5
    for i in (0, 5, 11):
        own = np.asarray(model(thetas[i]).logpdf(t), np.float64)
        assert np.array_equal(np.isfinite(own), np.isfinite(batch[i]))
        finite = np.isfinite(own)
        np.testing.assert_allclose(batch[i][finite], own[finite], rtol=rtol)
