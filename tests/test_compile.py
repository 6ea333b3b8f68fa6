"""Non-linear rate functions and dtype following."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import phasejax as pj


def exp_rates(theta, coefficients):
    """rate = sum_j c_j exp(theta_j): log-scale parameters."""
    return coefficients @ jnp.exp(theta)


@pytest.fixture(scope="module")
def model():
    return pj.models.rabbit_flooding(3).compile(rate_fn=exp_rates)


def dense_mean_var(graph, theta_linear):
    alpha, s, _, _ = graph.as_matrices(theta_linear)
    u = np.linalg.inv(-s)
    m1 = alpha @ u @ np.ones(len(alpha))
    m2 = 2 * alpha @ u @ u @ np.ones(len(alpha))
    return m1, m2 - m1**2


@pytest.mark.parametrize("theta", [[0.0, 0.0], [-1.0, 0.5], [0.7, -0.3]])
def test_nonlinear_rate_fn_matches_dense(model, theta):
    graph = pj.models.rabbit_flooding(3)
    m1, var = dense_mean_var(graph, np.exp(theta))
    dist = model(jnp.asarray(theta))
    np.testing.assert_allclose(dist.mean(), m1, rtol=1e-12)
    np.testing.assert_allclose(dist.var(), var, rtol=1e-12)


@pytest.mark.parametrize("theta", [[0.0, 0.0], [-1.0, 0.5]])
def test_nonlinear_rate_fn_gradient(model, theta):
    theta = jnp.asarray(theta)
    f = lambda th: model(th).var()
    grad = jax.grad(f)(theta)
    eps = 1e-6
    fd = [(f(theta.at[i].add(eps)) - f(theta.at[i].add(-eps))) / (2 * eps) for i in range(2)]
    np.testing.assert_allclose(grad, fd, rtol=1e-6)


def test_dtype_follows_theta():
    model = pj.models.kingman(5).compile()
    d32 = model(jnp.array([1.0], jnp.float32))
    assert d32.mean().dtype == jnp.float32
    np.testing.assert_allclose(d32.mean(), 1.6, rtol=1e-5)
    assert model(jnp.array([1.0], jnp.float64)).mean().dtype == jnp.float64
