"""Laplace transform ``E[exp(-s Y)]`` against dense linear algebra.

Oracle: ``defect + alpha (s R - S)^{-1} s_exit`` by ``numpy.linalg.solve`` (rewards
``R = diag(r)`` may be zero on some states); derivatives at ``s = 0`` against the
moments ``E[Y] = alpha U r`` and ``E[Y^2] = 2 alpha U R U r`` (``U = (-S)^{-1}``).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import phasejax as pj
from _oracle import graph_matrices, ph_moments, random_subintensity

S_VALUES = np.array([0.0, 1e-3, 0.1, 0.5, 1.0, 3.0, 10.0, 100.0])


def _random_case():
    rng = np.random.default_rng(21)
    alpha, S = random_subintensity(rng, 40, density=0.08, defect=0.1)
    graph = pj.Graph.from_matrices(alpha, S)
    r = rng.uniform(0.1, 2.0, graph.vertices_length())
    r[rng.random(r.size) < 0.3] = 0.0  # zero rewards on about 30% of the states
    return graph, np.zeros(0), r


def _kingman_case():
    graph = pj.models.kingman(5)
    return graph, np.array([0.8]), pj.models.sfs_rewards(graph)[0]  # singletons: zeros


def _island_case():
    graph = pj.models.two_island(2, 1)
    r = pj.models.sfs_rewards(graph, n=3)[1]  # doubletons: zero at the start
    return graph, np.array([1.0, 2.0, 0.5, 0.3]), r


CASES = {
    "random40_defect": _random_case,
    "kingman_sfs": _kingman_case,
    "two_island_sfs": _island_case,
}


def laplace_reference(alpha, S, r, s_values):
    exit_ = -S.sum(axis=1)
    defect = 1.0 - alpha.sum()
    return np.array([defect + alpha @ np.linalg.solve(s * np.diag(r) - S, exit_) for s in s_values])


@pytest.fixture(scope="module")
def compiled():
    out = {}
    for name, build in CASES.items():
        graph, theta, r = build()
        model = graph.compile()

        def f(theta, r, s, model=model):
            d = model(theta)
            lt = lambda x: d.laplace(x, r)
            return {
                "with_r": d.laplace(s, r),
                "time": d.laplace(s),
                "d1": jax.grad(lt)(0.0),
                "d2": jax.grad(jax.grad(lt))(0.0),
                "mean": d.mean(r),
            }

        out[name] = (graph, theta, r, model, jax.jit(f))
    return out


@pytest.mark.parametrize("name", list(CASES))
def test_laplace_against_dense_solve(compiled, name):
    graph, theta, r, model, f = compiled[name]
    alpha, S, vs = graph_matrices(graph, theta if theta.size else None)
    rt = r[vs]
    assert np.any(rt == 0) and np.any(rt > 0)  # the zero-reward path is exercised
    got = {k: np.asarray(v) for k, v in f(theta, r, S_VALUES).items()}
    np.testing.assert_allclose(
        got["with_r"], laplace_reference(alpha, S, rt, S_VALUES), rtol=1e-12, atol=1e-15
    )
    np.testing.assert_allclose(
        got["time"],
        laplace_reference(alpha, S, np.ones(len(alpha)), S_VALUES),
        rtol=1e-12,
        atol=1e-15,
    )
    assert got["with_r"][0] == pytest.approx(1.0, abs=1e-13)
    assert got["time"][0] == pytest.approx(1.0, abs=1e-13)
    # with zero rewards some mass never accumulates anything: the limit at s -> inf is
    # P(Y = 0) >= defect; Laplace transforms are decreasing in s
    assert np.all(np.diff(got["with_r"]) <= 1e-15)
    m1, m2 = ph_moments(alpha, S, rt, 2)
    # d/ds E[exp(-sY)] at 0 = -E[Y]; second derivative = E[Y^2]
    np.testing.assert_allclose(got["d1"], -m1, rtol=1e-11)
    np.testing.assert_allclose(got["d1"], -got["mean"], rtol=1e-12)
    np.testing.assert_allclose(got["d2"], m2, rtol=1e-10)


def test_laplace_shapes_and_reward_scaled():
    graph = pj.models.two_island(2, 1)
    theta = np.array([1.0, 2.0, 0.5, 0.3])
    model = graph.compile()
    r = np.random.default_rng(5).uniform(0.3, 2.0, graph.vertices_length())
    s = np.array([[0.0, 0.2], [1.5, 7.0]])

    @jax.jit
    def f(theta, s):
        d = model(theta)
        return d.laplace(s, r), d.reward_scaled(r).laplace(s), d.laplace(2.0, r)

    grid, scaled, scalar = f(theta, s)
    assert grid.shape == (2, 2) and scalar.shape == ()
    alpha, S, vs = graph_matrices(graph, theta)
    np.testing.assert_allclose(
        np.asarray(grid).ravel(), laplace_reference(alpha, S, r[vs], s.ravel()), rtol=1e-12
    )
    # Y = int r dt has the distribution of reward_scaled(r): same transform
    np.testing.assert_allclose(np.asarray(scaled), np.asarray(grid), rtol=1e-12)
    np.testing.assert_allclose(
        float(scalar), laplace_reference(alpha, S, r[vs], [2.0])[0], rtol=1e-12
    )


def test_laplace_gradient_in_theta_finite_differences(compiled):
    graph, theta, r, model, _ = compiled["two_island_sfs"]
    s = np.array([0.3, 2.0])
    w = np.array([1.0, -0.7])
    f = jax.jit(lambda th: jnp.sum(w * model(th).laplace(s, r)))
    g = np.asarray(jax.jit(jax.grad(f.__wrapped__))(theta))
    fd = np.zeros_like(theta)
    for j in range(theta.size):
        e = np.eye(theta.size)[j] * 1e-5 * theta[j]
        fd[j] = (float(f(theta + e)) - float(f(theta - e))) / (2e-5 * theta[j])
    np.testing.assert_allclose(g, fd, rtol=1e-6, atol=1e-9)


@pytest.mark.parametrize("bad", [-0.5, np.nan])
def test_negative_or_nan_s_raises(compiled, bad):
    graph, theta, r, model, _ = compiled["kingman_sfs"]
    d = model(theta)
    with pytest.raises(Exception, match="s >= 0"):
        d.laplace(np.array([0.0, bad, 1.0]))
    with pytest.raises(Exception, match="s >= 0"):
        jax.jit(lambda s: d.laplace(s, r))(np.array([bad]))
