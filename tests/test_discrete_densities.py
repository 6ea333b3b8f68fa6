"""Discrete phase-type distributions (DPH) against dense matrix powers.

``P(tau = k) = alpha T^{k-1} t`` (k >= 1), ``P(tau = 0) = defect``,
``P(tau > k) = alpha T^k 1``, ``P(X_k = i) = (alpha T^k)_i``, expected visits during
steps ``0..k-1`` = ``sum_{j<k} alpha T^j``; all from ``numpy.linalg.matrix_power``
(no shared code with the library's forward series). DPH sums have no truncation, so
the only error is rounding: relative 1e-11 wherever a value is above 1e-12 of its
maximum.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import phasejax as pj
from helpers.oracle import graph_matrices, random_subtransition

KS = np.arange(0, 61)
SNAP = np.array([0, 1, 2, 7, 25, 60])


def _param_graph():
    """A cyclic two-parameter DPH: phase i advances w.p. theta0, is absorbed w.p. theta1;
    the last phase is absorbed w.p. 0.5 theta0 + theta1 or returns to phase 0 w.p. 0.1."""

    def transitions(state):
        i = int(state[0])
        if i == 3:
            return []
        if i < 2:
            return [((i + 1,), [1.0, 0.0]), ((3,), [0.0, 1.0])]
        return [((3,), 0.0, [0.5, 1.0]), ((0,), 0.1)]

    return pj.Graph.from_callback(transitions, (0,), discrete=True, n_params=2)


def _random_graph(seed, n, defect):
    alpha, T = random_subtransition(
        np.random.default_rng(seed), n, density=0.1, defect=defect, stay=0.3
    )
    return pj.Graph.from_matrices(alpha, T, discrete=True)


CASES = {
    "random30_defect": (lambda: _random_graph(11, 30, 0.15), [[]]),
    "random60": (lambda: _random_graph(12, 60, 0.0), [[]]),
    "param_cyclic": (_param_graph, [[0.3, 0.2], [0.5, 0.1]]),
}


def matrix_power_reference(alpha, T, ks):
    n = len(alpha)
    t = 1.0 - T.sum(axis=1)
    defect = 1.0 - alpha.sum()
    powers = [np.linalg.matrix_power(T, k) for k in range(int(max(ks)) + 1)]
    pmf = np.array([defect if k == 0 else alpha @ powers[k - 1] @ t for k in ks])
    sf = np.array([alpha @ powers[k] @ np.ones(n) for k in ks])
    cdf = np.array([defect + sum(alpha @ powers[j - 1] @ t for j in range(1, k + 1)) for k in ks])
    state = np.array([alpha @ powers[k] for k in ks])
    visits = np.array([sum((alpha @ powers[j] for j in range(k)), np.zeros(n)) for k in ks])
    return {"pmf": pmf, "sf": sf, "cdf": cdf, "state": state, "visits": visits}


def _assert_rel(got, want, rtol=1e-11, floor=1e-12, what=""):
    got, want = np.asarray(got), np.asarray(want)
    assert got.shape == want.shape, (what, got.shape, want.shape)
    mask = np.abs(want) > floor * np.abs(want).max()
    np.testing.assert_allclose(got[mask], want[mask], rtol=rtol, err_msg=what)
    np.testing.assert_allclose(
        got[~mask], want[~mask], rtol=0, atol=floor * np.abs(want).max() * 10, err_msg=what
    )


@pytest.fixture(scope="module")
def compiled():
    out = {}
    for name, (build, thetas) in CASES.items():
        graph = build()
        model = graph.compile()

        def one(theta, k, snap, model=model):
            d = model(theta)
            return {
                "pmf": d.pmf(k),
                "logpmf": d.logpmf(k),
                "cdf": d.cdf(k),
                "sf": d.sf(k),
                "state": d.state_probability(snap),
                "visits": d.expected_visits_until(snap),
                "defect": d.defect(),
            }

        out[name] = (
            graph,
            model,
            np.asarray(thetas, dtype=np.float64),
            jax.jit(jax.vmap(one, in_axes=(0, None, None))),
        )
    return out


@pytest.mark.parametrize("name", list(CASES))
def test_against_matrix_powers(compiled, name):
    graph, model, thetas, bundle = compiled[name]
    got = {k: np.asarray(v) for k, v in bundle(thetas, KS, SNAP).items()}
    V = graph.vertices_length()
    for i, theta in enumerate(thetas):
        alpha, T, vs = graph_matrices(graph, theta if theta.size else None)
        ref = matrix_power_reference(alpha, T, KS)
        snap_ref = matrix_power_reference(alpha, T, SNAP)
        tag = f"{name} {theta}"
        assert got["pmf"][i][0] == pytest.approx(1.0 - alpha.sum(), abs=1e-15)  # pmf(0) = defect
        assert got["defect"][i] == pytest.approx(1.0 - alpha.sum(), abs=1e-15)
        for key in ("pmf", "cdf", "sf"):
            _assert_rel(got[key][i], ref[key], what=f"{tag} {key}")
        with np.errstate(divide="ignore"):
            np.testing.assert_allclose(got["logpmf"][i], np.log(got["pmf"][i]), rtol=1e-14)
        np.testing.assert_allclose(got["cdf"][i] + got["sf"][i], 1.0, rtol=0, atol=1e-13)
        # the pmf over 0..K plus the tail P(tau > K) is a probability distribution
        assert got["pmf"][i].sum() + got["sf"][i][-1] == pytest.approx(1.0, abs=1e-13)
        others = np.setdiff1d(np.arange(V), vs)
        assert 0 in others
        for key in ("state", "visits"):
            block = got[key][i]
            assert block.shape == (len(SNAP), V)
            np.testing.assert_array_equal(block[:, others], 0.0)
            for row, want in zip(block[:, vs], snap_ref[key]):
                if np.any(want):
                    _assert_rel(row, want, what=f"{tag} {key}")
                else:
                    np.testing.assert_array_equal(row, 0.0)
        np.testing.assert_allclose(got["state"][i].sum(axis=1), snap_ref["sf"], rtol=1e-12)


def test_two_dimensional_step_counts(compiled):
    graph, model, _, _ = compiled["random30_defect"]
    f = jax.jit(
        lambda k: (lambda d: (d.pmf(k), d.cdf(k), d.sf(k), d.expected_visits_until(k)))(model())
    )
    k2 = np.array([[0, 1, 2], [5, 9, 3]])
    pmf, cdf, sf, visits = (np.asarray(x) for x in f(k2))
    assert pmf.shape == cdf.shape == sf.shape == (2, 3)
    assert visits.shape == (2, 3, graph.vertices_length())
    alpha, T, vs = graph_matrices(graph)
    ref = matrix_power_reference(alpha, T, k2.ravel())
    for key, got in (("pmf", pmf), ("cdf", cdf), ("sf", sf)):
        np.testing.assert_allclose(got.ravel(), ref[key], rtol=1e-12, atol=1e-16, err_msg=key)
    np.testing.assert_allclose(visits.reshape(6, -1)[:, vs], ref["visits"], rtol=1e-12, atol=1e-16)


# -- gradients -------------------------------------------------------------------------
DATA = np.array([1, 1, 2, 3, 3, 4, 5, 7, 9, 12, 15, 20])


def test_logpmf_gradient_finite_differences(compiled):
    _, model, _, _ = compiled["param_cyclic"]

    def loglik(th):
        return jnp.sum(model(th).logpmf(DATA))

    value_and_grad = jax.jit(jax.value_and_grad(loglik))
    for theta in np.array([[0.3, 0.2], [0.5, 0.1], [0.2, 0.4]]):
        fd = np.zeros(2)
        for j in range(2):
            h = 1e-6 * theta[j]
            e = np.eye(2)[j] * h
            fd[j] = (float(value_and_grad(theta + e)[0]) - float(value_and_grad(theta - e)[0])) / (
                2 * h
            )
        np.testing.assert_allclose(
            np.asarray(value_and_grad(theta)[1]), fd, rtol=1e-6, err_msg=str(theta)
        )
    # vmap over thetas equals a loop
    thetas = np.stack([np.linspace(0.1, 0.5, 10), np.linspace(0.4, 0.1, 10)], axis=1)
    batched = jax.jit(jax.vmap(value_and_grad.__wrapped__))(thetas)
    looped = [value_and_grad(th) for th in thetas]
    np.testing.assert_allclose(np.asarray(batched[0]), [float(v) for v, _ in looped], rtol=1e-13)
    np.testing.assert_allclose(
        np.asarray(batched[1]), np.stack([np.asarray(g) for _, g in looped]), rtol=1e-12, atol=1e-14
    )


# -- error paths ---------------------------------------------------------------------------
def test_negative_step_counts_raise(compiled):
    _, model, _, _ = compiled["random30_defect"]
    d = model()
    k = np.array([3, -1, 2])
    for method in (d.pmf, d.logpmf, d.cdf, d.sf, d.state_probability, d.expected_visits_until):
        with pytest.raises(Exception, match="non-negative"):
            method(k)
    with pytest.raises(Exception, match="non-negative"):
        jax.jit(lambda k: d.pmf(k))(k)


def test_step_count_beyond_max_steps_raises(compiled):
    graph, model, _, _ = compiled["random30_defect"]
    d = model()
    with pytest.raises(Exception, match="max_steps"):
        d.pmf(np.array([3, 100]), max_steps=50)
    with pytest.raises(Exception, match="max_steps"):
        jax.jit(lambda k: d.sf(k, max_steps=50))(np.array([51]))
    # exactly max_steps is allowed
    alpha, T, _ = graph_matrices(graph)
    want = alpha @ np.linalg.matrix_power(T, 50) @ np.ones(len(alpha))
    np.testing.assert_allclose(
        float(jax.jit(lambda k: d.sf(k, max_steps=50))(np.array(50))), want, rtol=1e-11
    )
