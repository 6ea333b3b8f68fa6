"""Far tails keep relative accuracy: the Poisson window widens where the result is tiny."""

import jax
import jax.numpy as jnp
import numpy as np
import scipy.linalg as sl

import phasejax as pj


def test_exponential_far_tail_logpdf_and_gradient():
    model = pj.models.erlang(1).compile()
    t = jnp.array([1.0, 60.0, 300.0])
    theta = 1.3
    np.testing.assert_allclose(
        model(jnp.array([theta])).logpdf(t), np.log(theta) - theta * np.asarray(t), rtol=1e-12
    )
    np.testing.assert_allclose(
        model(jnp.array([theta])).sf(jnp.array([60.0])), np.exp(-theta * 60.0), rtol=1e-10
    )
    grad = jax.grad(lambda th: model(th).logpdf(t).sum())(jnp.array([theta]))
    np.testing.assert_allclose(grad[0], 3 / theta - float(t.sum()), rtol=1e-10)


def test_erlang_and_kingman_far_tail_against_expm():
    model = pj.models.erlang(3).compile()
    np.testing.assert_allclose(
        model(jnp.array([2.0])).logpdf(jnp.array([100.0]))[0],
        np.log(8 * 100.0**2 / 2) - 200.0,
        rtol=1e-12,
    )
    graph = pj.models.kingman(6)
    theta = np.array([1.3])
    alpha, s, _, _ = graph.as_matrices(theta)
    exit_rates = -s.sum(1)
    ts = np.array([0.5, 5.0, 20.0, 40.0])
    expected = [np.log(alpha @ sl.expm(s * t) @ exit_rates) for t in ts]
    np.testing.assert_allclose(graph.compile()(jnp.asarray(theta)).logpdf(ts), expected, rtol=1e-12)
