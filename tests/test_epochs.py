"""Epoch (piecewise-constant) models against piecewise matrix exponentials and closed forms."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.integrate as si
import scipy.linalg as sl

import phasejax as pj


def piecewise_sf_oracle(graph, thetas, breaks, t):
    mats = [graph.as_matrices(np.asarray(th))[1] for th in thetas]
    v = graph.as_matrices(np.asarray(thetas[0]))[0]
    edges = [0.0, *breaks, np.inf]
    for j, s in enumerate(mats):
        if t < edges[j + 1]:
            return v @ sl.expm(s * (t - edges[j])), s
        v = v @ sl.expm(s * (edges[j + 1] - edges[j]))


def test_two_epoch_kingman_closed_form():
    lam1, lam2, tau = 1.0, 0.3, 0.8
    pk = pj.models.PiecewiseKingman(2)
    e = pk(jnp.array([lam1, lam2]), jnp.array([tau]))
    exact = (1 - np.exp(-lam1 * tau)) / lam1 + np.exp(-lam1 * tau) / lam2
    np.testing.assert_allclose(e.mean(), exact, rtol=1e-12)
    # d/dtau of the closed form
    g = jax.grad(lambda b: pk(jnp.array([lam1, lam2]), b).mean())(jnp.array([tau]))
    np.testing.assert_allclose(g[0], np.exp(-lam1 * tau) * (1 - lam1 / lam2), rtol=1e-8)


def test_epochs_against_piecewise_expm():
    graph = pj.models.kingman(5)
    thetas = [[1.0], [0.2], [2.0]]
    breaks = [0.3, 1.1]
    e = pj.epochs(graph.compile(), jnp.asarray(thetas), jnp.asarray(breaks))
    ts = np.array([0.1, 0.5, 1.5, 3.0])
    sf, pdf, probs = [], [], []
    for t in ts:
        v, s = piecewise_sf_oracle(graph, thetas, breaks, t)
        sf.append(v.sum())
        pdf.append(v @ (-s.sum(1)))
        probs.append(v)
    np.testing.assert_allclose(e.sf(ts), sf, rtol=1e-10)
    np.testing.assert_allclose(e.cdf(ts), 1 - np.array(sf), rtol=1e-10)
    np.testing.assert_allclose(e.pdf(ts), pdf, rtol=1e-10)
    transient = np.asarray(graph.compile().transient_vertices)
    np.testing.assert_allclose(e.state_probability(ts)[:, transient], np.array(probs), atol=1e-12)
    oracle_sf = lambda t: piecewise_sf_oracle(graph, thetas, breaks, t)[0].sum()
    moments = [
        si.quad(lambda t: k * t ** (k - 1) * oracle_sf(t), 0, 200, limit=200, points=breaks)[0]
        for k in (1, 2, 3)
    ]
    np.testing.assert_allclose(e.moments(3), moments, rtol=1e-8)
    # mean with rewards (singletons): sum of occupancies, against numerical integration
    reward = pj.models.sfs_rewards(graph)[0]
    r = reward[transient]
    oracle = si.quad(
        lambda t: piecewise_sf_oracle(graph, thetas, breaks, t)[0] @ r,
        0,
        200,
        limit=200,
        points=breaks,
    )[0]
    np.testing.assert_allclose(e.mean(reward), oracle, rtol=1e-8)


def test_epoch_gradients_against_finite_differences():
    model = pj.models.kingman(4).compile()

    def f(rates, breaks):
        e = pj.epochs(model, rates[:, None], breaks)
        return e.moments(2)[1] + e.logpdf(jnp.array([0.2, 0.9, 2.0])).sum()

    rates, breaks = jnp.array([1.0, 0.4, 1.5]), jnp.array([0.5, 1.2])
    g_rates, g_breaks = jax.grad(f, argnums=(0, 1))(rates, breaks)
    eps = 1e-6
    for i in range(3):
        fd = (f(rates.at[i].add(eps), breaks) - f(rates.at[i].add(-eps), breaks)) / (2 * eps)
        np.testing.assert_allclose(g_rates[i], fd, rtol=1e-6)
    for i in range(2):
        fd = (f(rates, breaks.at[i].add(eps)) - f(rates, breaks.at[i].add(-eps))) / (2 * eps)
        np.testing.assert_allclose(g_breaks[i], fd, rtol=1e-6)


def test_epoch_errors():
    model = pj.models.kingman(3).compile()
    with pytest.raises(ValueError, match="thetas must have shape"):
        pj.epochs(model, jnp.ones((3, 1)), jnp.array([1.0]))
    with pytest.raises(Exception, match="increasing"):
        pj.epochs(model, jnp.ones((3, 1)), jnp.array([1.0, 0.5])).mean()


def test_isolation_with_migration():
    im = pj.models.IsolationWithMigration(pj.models.two_island(1, 1))
    # no migration: the two lineages can only meet after the split, then at rate 2
    for split in (0.3, 2.0):
        np.testing.assert_allclose(
            im(1.0, 1.0, 0.0, 0.0, 2.0, split).mean(), split + 0.5, rtol=1e-10
        )
    # with migration: against piecewise expm with the merge at the split
    graph = pj.models.two_island(2, 1)
    im = pj.models.IsolationWithMigration(graph)
    e = im(1.0, 0.5, 0.3, 0.6, 2.0, 0.7)
    first = graph.as_matrices(np.array([1.0, 0.5, 0.3, 0.6]))
    second = graph.as_matrices(np.array([2.0, 2.0, 0.0, 1.0]))
    merge = np.zeros((len(first.alpha), len(first.alpha)))
    merge[np.arange(len(im.merge)), im.merge] = 1.0
    t = 1.5
    v = first.alpha @ sl.expm(first.matrix * 0.7) @ merge @ sl.expm(second.matrix * (t - 0.7))
    np.testing.assert_allclose(e.sf(np.array([t]))[0], v.sum(), rtol=1e-10)
    g = jax.grad(lambda s: im(1.0, 0.5, 0.3, 0.6, 2.0, s).mean())(0.7)
    fd = (
        im(1.0, 0.5, 0.3, 0.6, 2.0, 0.7 + 1e-6).mean()
        - im(1.0, 0.5, 0.3, 0.6, 2.0, 0.7 - 1e-6).mean()
    ) / 2e-6
    np.testing.assert_allclose(g, fd, rtol=1e-6)
