"""The streamed transient engine: no step cap by default, limits at t = inf, long series
(many segments, two checkpoint levels, rescaled vectors) exact in value and gradient,
clear errors for bad ``tol``, step counts and user caps (eager, under jit, under vmap)."""

from __future__ import annotations

from math import comb

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.linalg

import phasejax as pj
from helpers.oracle import hypoexponential_log_pdf


@pytest.fixture(scope="module")
def kingman10():
    graph = pj.models.kingman(10)
    return graph, graph.compile()


def test_kingman10_far_tail_with_defaults(kingman10):
    """Past the old 4096-term cap (Lambda = 45: t >= 85), against the closed form."""
    graph, model = kingman10
    rates = np.array([comb(k, 2) for k in range(2, 11)], float)
    t = np.array([1.0, 85.0, 120.0, 400.0])
    want = hypoexponential_log_pdf(rates, t)[0]
    dist = model(jnp.array([1.0]))
    np.testing.assert_allclose(dist.logpdf(t), want, rtol=1e-11)
    # survival against expm where it is representable
    alpha, s, _, _ = graph.as_matrices(np.array([1.0]))
    sf = [alpha @ scipy.linalg.expm(s * x) @ np.ones(len(alpha)) for x in t[:2]]
    np.testing.assert_allclose(dist.sf(t[:2]), sf, rtol=1e-10)


def test_long_series_value_and_gradient_closed_form():
    """Erlang(3) at Lambda t = 2e4: ~160 segments (two checkpoint levels in the backward
    pass), a density of e^-20000 (rescaled vectors); value and d/dtheta, d/dt exact."""
    model = pj.models.erlang(3).compile()
    theta, t = 2.0, jnp.array([0.5, 3.0, 1e4])

    def loglik(th, t):
        return model(th).logpdf(t)

    want = np.log(theta**3 * np.asarray(t) ** 2 / 2) - theta * np.asarray(t)
    np.testing.assert_allclose(loglik(jnp.array([theta]), t), want, rtol=1e-12)
    grad = jax.grad(lambda th: loglik(th, t).sum())(jnp.array([theta]))
    np.testing.assert_allclose(grad[0], 3 * 3 / theta - float(t.sum()), rtol=1e-10)
    grad_t = jax.grad(lambda t: loglik(jnp.array([theta]), t).sum())(t)
    np.testing.assert_allclose(grad_t, 2 / np.asarray(t) - theta, rtol=1e-9)


def test_infinite_time_limits(kingman10):
    _, model = kingman10
    dist = model(jnp.array([1.3]))
    t = np.array([0.4, np.inf])
    assert dist.cdf(t)[1] == 1.0 and dist.sf(t)[1] == 0.0 and dist.pdf(t)[1] == 0.0
    assert dist.logpdf(t)[1] == -np.inf
    np.testing.assert_array_equal(dist.state_probability(t)[1], 0.0)
    np.testing.assert_allclose(
        dist.accumulated_occupancy(t)[1], dist.expected_sojourn(), rtol=1e-12
    )
    cdf = jax.jit(lambda th, t: model(th).cdf(t))
    assert cdf(jnp.array([1.3]), t)[1] == 1.0
    grad = jax.grad(lambda th: model(th).cdf(t).sum())(jnp.array([1.3]))
    assert np.all(np.isfinite(grad))


def test_concrete_times_sorted_on_host_match_traced_times(kingman10):
    """Concrete times are sorted on the host, traced ones in the kernel: unsorted 2-D times
    with ties, 0 and inf give the same values (in the caller's order and shape) and the
    same theta-gradient both ways; a scalar keeps its shape."""
    graph, model = kingman10
    t = np.array([[2.5, 0.1, np.inf], [0.0, 7.0, 0.1]])
    theta = jnp.array([1.3])
    alpha, s, _, _ = graph.as_matrices(np.array([1.3]))
    exit_ = -s.sum(1)
    want = [np.log(alpha @ scipy.linalg.expm(s * x) @ exit_) for x in (2.5, 0.1, 7.0)]
    many = np.random.default_rng(0).exponential(2.0, (3, 100))  # several batches
    many[1, 7] = np.inf
    for kind, times in [("logpdf", t), ("cdf", t), ("state_probability", t), ("logpdf", many)]:
        host = getattr(model(theta), kind)(times)
        traced = jax.jit(lambda t, kind=kind: getattr(model(theta), kind)(t))(times)
        assert host.shape == traced.shape and host.shape[:2] == times.shape
        # (rounding apart: the identity projection's many columns are summed linearly)
        np.testing.assert_allclose(host, traced, rtol=1e-12, atol=1e-300)
    host = model(theta).logpdf(t)
    np.testing.assert_allclose([host[0, 0], host[0, 1], host[1, 1]], want, rtol=1e-11)
    assert host[1, 2] == host[0, 1] and host[0, 2] == -np.inf
    finite = many[np.isfinite(many)]
    grad_host = jax.grad(lambda th: model(th).logpdf(finite).sum())(theta)
    grad_traced = jax.grad(lambda th: jax.jit(lambda t: model(th).logpdf(t))(finite).sum())(theta)
    np.testing.assert_allclose(grad_host, grad_traced, rtol=1e-12)
    assert model(theta).logpdf(np.float64(2.5)).shape == ()
    np.testing.assert_allclose(model(theta).logpdf(np.float64(2.5)), want[0], rtol=1e-11)


def test_state_probability_at_requested_times_only():
    """All states at a few times (memory O(times x n), not steps x n): against expm."""
    graph = pj.models.kingman(15)
    alpha, s, _, _ = graph.as_matrices(np.array([1.0]))
    dist = graph.compile()(jnp.array([1.0]))
    probs = dist.transient_probability(jnp.array([0.1, 1.0]))
    want = np.stack([alpha @ scipy.linalg.expm(s * t) for t in (0.1, 1.0)])
    np.testing.assert_allclose(probs, want, atol=1e-13, rtol=0)


def test_vmap_batch_with_a_far_theta_does_not_abort(kingman10):
    _, model = kingman10
    t = jnp.array([0.3, 2.0, 9.0])
    thetas = jnp.array([[0.5], [1.0], [300.0]])  # Lambda t = 45 * 300 * 9: 1.2e5 terms
    batched = jax.vmap(lambda th: model(th).logpdf(t))(thetas)
    looped = jnp.stack([model(th).logpdf(t) for th in thetas])
    # the batch shares the largest Lambda (600x that of theta = 0.5: a longer series,
    # the same sum up to rounding)
    np.testing.assert_allclose(batched, looped, rtol=1e-10)
    assert np.all(np.isfinite(batched))


@pytest.mark.parametrize("tol", [0.0, -1e-3, 1.0, float("nan")])
def test_bad_tol_is_a_value_error(kingman10, tol):
    _, model = kingman10
    dist = model(jnp.array([1.0]))
    for method in (dist.pdf, dist.logpdf, dist.cdf, dist.sf, dist.state_probability):
        with pytest.raises(ValueError, match="tol must lie in"):
            method(np.array([1.0]), tol=tol)
    with pytest.raises(ValueError, match="tol must lie in"):
        jax.jit(lambda th: model(th).logpdf(jnp.array([1.0]), tol=tol))(jnp.array([1.0]))


def test_user_cap_names_time_index_and_count(kingman10):
    _, model = kingman10
    dist = model(jnp.array([1.0]))
    with pytest.raises(ValueError, match=r"time 30.0 \(index \(2,\)\) needs \d+ series terms"):
        dist.cdf(np.array([0.1, 1.0, 30.0]), max_steps=500)
    with pytest.raises(Exception, match="max_steps=500"):
        jax.block_until_ready(
            jax.jit(lambda th: model(th).logpdf(jnp.array([30.0]), max_steps=500))(jnp.array([1.0]))
        )


def _geometric():
    return pj.Graph.from_matrices(np.array([1.0]), np.array([[0.999]]), discrete=True).compile()


def test_discrete_large_k_and_integral_float_k():
    model = _geometric()
    dist = model()
    k = np.array([1, 3, 20_000])
    want = 0.999 ** (k - 1) * 0.001
    np.testing.assert_allclose(dist.pmf(k), want, rtol=1e-11)
    np.testing.assert_allclose(dist.sf(k), 0.999**k, rtol=1e-11)
    np.testing.assert_allclose(dist.cdf(k), 1 - 0.999**k, rtol=1e-11)
    np.testing.assert_allclose(dist.pmf(np.array([3.0])), dist.pmf(np.array([3])), rtol=0)
    np.testing.assert_allclose(
        jax.jit(lambda k: dist.pmf(k))(jnp.array([3.0])), want[1], rtol=1e-12
    )
    np.testing.assert_allclose(
        jax.vmap(lambda k: dist.pmf(k))(jnp.array([3.0, 1.0])), want[[1, 0]], rtol=1e-12
    )
    with pytest.raises(ValueError, match=r"non-negative integers; got 3.5 at index \(0,\)"):
        dist.pmf(np.array([3.5]))
    with pytest.raises(Exception, match="non-negative integers"):
        jax.block_until_ready(jax.jit(lambda k: dist.pmf(k))(jnp.array([3.5])))
    with pytest.raises(ValueError, match=r"step count 60 \(index \(1,\)\) needs 60 series terms"):
        dist.pmf(np.array([3, 60]), max_steps=50)


def test_tiny_theta_gradient_is_finite():
    """log f = log(theta) + ... stays differentiable for theta far below 1e-45."""
    model = pj.models.erlang(2).compile()
    t = jnp.array([0.5, 2.0])
    for theta in (1e-45, 1e-100, 1e-300):
        value, grad = jax.value_and_grad(lambda th: model(th).logpdf(t).sum())(jnp.array([theta]))
        assert np.isfinite(value)
        np.testing.assert_allclose(grad[0], 4 / theta - float(t.sum()), rtol=1e-10)


def test_float32_probabilities_are_sound():
    """float32: cdf and sf stay in [0, 1] and are accurate to float32 rounding."""
    graph = pj.models.kingman(10)
    dist = graph.compile()(jnp.array([1.0], jnp.float32))
    assert dist.diag.dtype == jnp.float32
    t = np.linspace(0.0, 12.0, 200).astype(np.float32)
    cdf, sf = np.asarray(dist.cdf(t)), np.asarray(dist.sf(t))
    assert cdf.dtype == np.float32
    assert np.all((cdf >= 0) & (cdf <= 1) & (sf >= 0) & (sf <= 1))
    alpha, s, _, _ = graph.as_matrices(np.array([1.0]))
    exact = np.array([1 - alpha @ scipy.linalg.expm(s * x) @ np.ones(len(alpha)) for x in t])
    assert np.max(np.abs(cdf - exact)) < 1e-5
    assert np.max(np.abs(cdf + sf - 1.0)) < 1e-5


def test_vmap_value_and_gradient_match_the_loop(kingman10):
    """A theta batch runs in lockstep (shared trip counts, each member's own windows): value
    and gradient agree with one theta at a time."""
    _, model = kingman10
    t = jnp.array([0.05, 0.3, 2.0, 9.0, 25.0])

    def loglik(th):
        return model(th).logpdf(t).sum()

    thetas = jnp.array([[0.5], [1.3], [4.0]])
    values, grads = jax.vmap(jax.value_and_grad(loglik))(thetas)
    for th, value, grad in zip(thetas, values, grads):
        want_value, want_grad = jax.value_and_grad(loglik)(th)
        np.testing.assert_allclose(value, want_value, rtol=1e-12)
        np.testing.assert_allclose(grad, want_grad, rtol=1e-10)


def test_times_far_apart_in_one_batch_and_gradient_at_zero():
    """Observations whose Lambda t differ by 1e9 share a batch (powers (mu / rho)^r around
    the batch's centre); d/dt at t = 0 takes the limit of the shifted sum."""
    model = pj.models.erlang(3).compile()
    theta = 2.0
    t = jnp.array([1e-6, 1e-3, 1.0, 30.0, 300.0])
    want = np.log(theta**3 * np.asarray(t) ** 2 / 2) - theta * np.asarray(t)
    np.testing.assert_allclose(model(jnp.array([theta])).logpdf(t), want, rtol=1e-11)
    # exit rate 2 from both states: f(t) = 2 e^{-2t}, and at t = 0 the series moves
    # (c_1 != c_0, so the limit term is needed)
    two_states = pj.Graph.from_matrices(np.array([1.0, 0.0]), np.array([[-3.0, 1.0], [0.0, -2.0]]))
    model2 = two_states.compile()
    grad_t = jax.grad(lambda t: model2().logpdf(t).sum())
    np.testing.assert_allclose(grad_t(jnp.array([0.0, 0.5])), [-2.0, -2.0], rtol=1e-12)


def test_cdf_time_derivative_is_the_pdf(kingman10):
    """The mu cotangent of the cumulative stream (forward pass's shifted column) against
    the density: d/dt cdf(t) = pdf(t)."""
    _, model = kingman10
    dist = model(jnp.array([1.3]))
    t = jnp.array([0.0, 0.2, 1.5, 6.0])
    grad = jax.grad(lambda t: dist.cdf(t).sum())(t)
    # the shifted sums cancel against the cdf's (about 1 at t = 6): absolute accuracy at
    # the cdf's scale, not relative to the small derivative
    np.testing.assert_allclose(grad, dist.pdf(t), rtol=1e-10, atol=1e-12)


def test_second_derivatives_raise_through_the_series_and_work_by_expm():
    """The series' adjoint is first-order: jax.hessian, jacfwd(grad) and grad(grad) raise a
    clear error (they were silently wrong); the dense method's Hessian equals central
    differences of its gradient."""
    model = pj.models.kingman(5).compile()
    t = jnp.array([0.7, 1.5])
    x = jnp.array([1.3])

    def series(theta):
        return model(theta).logpdf(t).sum()

    def dense(theta):
        return model(theta).logpdf(t, method="expm").sum()

    for second in (
        jax.hessian,
        lambda f: jax.jacfwd(jax.grad(f)),
        lambda f: jax.grad(lambda y: jax.grad(f)(y).sum()),
    ):
        with pytest.raises(NotImplementedError, match="second derivatives"):
            second(series)(x)
    eps = 1e-5
    fd = (jax.grad(dense)(x + eps) - jax.grad(dense)(x - eps)) / (2 * eps)
    np.testing.assert_allclose(jax.hessian(dense)(x)[0], fd, rtol=1e-7)
    np.testing.assert_allclose(jax.grad(dense)(x), jax.grad(series)(x), rtol=1e-9)


def test_batch_spanning_hundreds_of_orders_of_magnitude():
    """Times from 1e-200 to 50 in one batch of observations (found by hypothesis: the
    mixing's powers (mu/rho)^r left their range and cdf(1) was 1e-5 off): values against
    the closed form, and value and gradient equal to one observation at a time."""
    model = pj.models.kingman(6).compile()
    t = jnp.array([0.0, 1e-200, 3.7e-96, 1e-40, 0.3, 1.0, 5.0])
    x = jnp.array([1.3])
    exp1 = pj.Graph.from_matrices(np.eye(3)[0], -np.eye(3)).compile()(None)
    np.testing.assert_allclose(exp1.cdf(t), -np.expm1(-np.asarray(t)), rtol=1e-13, atol=0)

    def loglik(theta, times):
        return model(theta).logpdf(times).sum()

    alone = [jax.grad(loglik)(x, t[i : i + 1]) for i in range(1, t.size)]
    together = jax.grad(loglik)(x, t[1:])
    np.testing.assert_allclose(together, sum(alone), rtol=1e-12)
    values = model(x).logpdf(t[1:])
    np.testing.assert_allclose(
        values, [model(x).logpdf(t[i : i + 1])[0] for i in range(1, t.size)], rtol=1e-13
    )
