"""Exact jump-chain sampling against exact moments, the cdf and the pmf.

Every statistical check uses 10^5 draws and a 4 standard-error band (two-sided
probability of a false alarm ~ 6e-5 per check; the keys are fixed, so the tests are
deterministic). Exact moments come from the dense oracles of ``helpers/oracle.py``
(``k! alpha (U R)^k 1`` for PH, a forward dynamic program for DPH), not from the
library. Kolmogorov-Smirnov tests compare the draws with ``dist.cdf`` (p > 1e-3).
"""

from __future__ import annotations

import jax
import numpy as np
import pytest
import scipy.stats

import phasejax as pj
from helpers.oracle import dph_reward_moments, graph_matrices, ph_moments, random_subintensity

N = 100_000
Z = 4.0


def _check_mean_var(x, raw, what):
    """Sample mean and variance within ``Z`` Monte-Carlo standard errors.

    ``raw``: exact raw moments ``E[Y], ..., E[Y^4]``. The standard error of the
    sample variance is ``sqrt((mu_4 - sigma^4) / N)`` (``mu_4`` central).
    """
    x = np.asarray(x, dtype=np.float64)
    m1, m2, m3, m4 = raw
    var = m2 - m1**2
    mu4 = m4 - 4 * m1 * m3 + 6 * m1**2 * m2 - 3 * m1**4
    n = x.size
    se_mean = np.sqrt(var / n)
    se_var = np.sqrt((mu4 - var**2) / n)
    assert abs(x.mean() - m1) < Z * se_mean, f"{what}: mean {x.mean()} vs {m1} (se {se_mean})"
    assert abs(x.var() - var) < Z * se_var, f"{what}: var {x.var()} vs {var} (se {se_var})"


def _cdf_wrapper(fn):
    """A numpy callable for scipy.stats.kstest from a jitted cdf."""
    return lambda x: np.asarray(fn(np.asarray(x, dtype=np.float64)))


# -- continuous: Kingman with the SFS, one program for time + 4 reward rows ------------------
@pytest.fixture(scope="module")
def kingman():
    n = 5
    graph = pj.models.kingman(n)
    model = graph.compile()
    theta = np.array([1.0])
    R = np.vstack([np.ones(graph.vertices_length()), pj.models.sfs_rewards(graph)])  # (n, V)
    draws = np.asarray(
        jax.jit(lambda th, key: model(th).sample(key, (N,), R))(theta, jax.random.key(0))
    )
    return graph, model, theta, R, draws


def test_kingman_time_and_sfs_moments(kingman):
    graph, model, theta, R, draws = kingman
    assert draws.shape == (N, R.shape[0])
    alpha, S, vs = graph_matrices(graph, theta)
    for row in range(R.shape[0]):
        _check_mean_var(draws[:, row], ph_moments(alpha, S, R[row][vs], 4), f"kingman row {row}")
    # E[xi_i] = 2 / i per unit theta / 2 (the standard coalescent at theta = 1)
    means = draws[:, 1:].mean(axis=0)
    se = draws[:, 1:].std(axis=0) / np.sqrt(N)
    assert np.all(np.abs(means - 2.0 / np.arange(1, 5)) < Z * se)
    # all rows are non-negative; the time is positive
    assert np.all(draws >= 0) and np.all(draws[:, 0] > 0)


def test_kingman_ks_against_cdf(kingman):
    graph, model, theta, R, draws = kingman
    cdf = jax.jit(lambda th, t: model(th).cdf(t))
    assert scipy.stats.kstest(draws[:, 0], _cdf_wrapper(lambda t: cdf(theta, t))).pvalue > 1e-3
    # and a slightly wrong distribution is rejected (the test has power)
    assert (
        scipy.stats.kstest(draws[:, 0], _cdf_wrapper(lambda t: cdf(theta * 1.05, t))).pvalue < 1e-3
    )


# -- continuous: random cyclic graph with a defect -------------------------------------------
@pytest.fixture(scope="module")
def random_ph():
    rng = np.random.default_rng(31)
    # a high exit fraction keeps paths short (vmapped while loops run to the longest one)
    alpha, S = random_subintensity(rng, 30, density=0.08, defect=0.15, exit_fraction=0.7)
    graph = pj.Graph.from_matrices(alpha, S)
    model = graph.compile()
    V = graph.vertices_length()
    r_pos = rng.uniform(0.2, 3.0, V)
    r_zero = np.where(rng.random(V) < 0.4, 0.0, rng.uniform(0.5, 2.0, V))
    R = np.vstack([np.ones(V), r_pos, r_zero])
    draws = np.asarray(jax.jit(lambda key: model().sample(key, (N,), R))(jax.random.key(1)))
    return graph, model, alpha, S, R, draws


def test_random_ph_with_defect(random_ph):
    graph, model, alpha, S, R, draws = random_ph
    defect = 1.0 - alpha.sum()
    zero = draws[:, 0] == 0.0
    # the defect absorbs at once: Y = 0 for every reward row exactly then
    assert abs(zero.mean() - defect) < Z * np.sqrt(defect * (1 - defect) / N)
    np.testing.assert_array_equal(draws[zero], 0.0)
    vs = graph_matrices(graph)[2]
    for row in range(3):
        _check_mean_var(draws[:, row], ph_moments(alpha, S, R[row][vs], 4), f"random row {row}")


def test_random_ph_ks(random_ph):
    graph, model, alpha, S, R, draws = random_ph
    defect = 1.0 - alpha.sum()
    # the atom at 0 breaks KS: compare the positive part with the conditional cdf
    positive = draws[draws[:, 0] > 0]
    vs = graph_matrices(graph)[2]
    lam = -S.diagonal().min()
    lam_t = max(lam * positive[:, 0].max(), (lam / R[1][vs].min()) * positive[:, 1].max())
    max_steps = int(lam_t + 40 * np.sqrt(lam_t) + 200)

    @jax.jit
    def conditional_cdfs(t):
        d = model()
        y = d.reward_scaled(R[1])
        cond = lambda c: (c - defect) / (1 - defect)
        return cond(d.cdf(t[0], max_steps=max_steps)), cond(y.cdf(t[1], max_steps=max_steps))

    # one compiled call for both columns (sorted, as kstest would)
    cols = np.sort(positive[:, :2], axis=0).T
    f_time, f_reward = (np.asarray(x) for x in conditional_cdfs(cols))
    for col, f in zip(cols, (f_time, f_reward)):
        assert scipy.stats.kstest(col, lambda x, col=col, f=f: np.interp(x, col, f)).pvalue > 1e-3


# -- continuous: one (V,) reward vector -----------------------------------------------------
def test_two_island_reward_vector_ks_and_moments():
    graph = pj.models.two_island(2, 1)
    theta = np.array([1.0, 2.0, 0.5, 0.3])
    model = graph.compile()
    r = np.random.default_rng(41).uniform(0.3, 2.5, graph.vertices_length())

    @jax.jit
    def draw(th, key):
        return model(th).sample(key, (250, 400), r)

    y = np.asarray(draw(theta, jax.random.key(2)))
    assert y.shape == (250, 400)  # shape + () for a (V,) reward vector
    y = y.ravel()
    alpha, S, vs = graph_matrices(graph, theta)
    _check_mean_var(y, ph_moments(alpha, S, r[vs], 4), "two_island reward")
    cdf = jax.jit(lambda t: model(theta).reward_scaled(r).cdf(t))
    assert scipy.stats.kstest(y, _cdf_wrapper(cdf)).pvalue > 1e-3


# -- discrete --------------------------------------------------------------------------
def test_dph_steps_rewards_and_pmf():
    rng = np.random.default_rng(51)
    # as helpers.oracle.random_subtransition, with a high exit fraction (short paths)
    a, S = random_subintensity(rng, 15, density=0.1, defect=0.1, exit_fraction=0.7)
    total = -np.diag(S)
    T = (S - np.diag(np.diag(S))) * (0.6 / total)[:, None] + 0.4 * np.eye(15)
    alpha = a
    graph = pj.Graph.from_matrices(alpha, T, discrete=True)
    model = graph.compile()
    V = graph.vertices_length()
    r = np.where(rng.random(V) < 0.3, 0.0, rng.uniform(0.5, 2.0, V))
    R = np.vstack([np.ones(V), r])
    draws = np.asarray(jax.jit(lambda key: model().sample(key, (N,), R))(jax.random.key(3)))
    vs = graph_matrices(graph)[2]
    tau = draws[:, 0]
    assert np.all(tau == np.round(tau)) and tau.min() == 0
    for row in range(2):
        _check_mean_var(
            draws[:, row], dph_reward_moments(alpha, T, R[row][vs], 4), f"dph row {row}"
        )
    # empirical frequencies of tau = k against the pmf (binomial standard errors)
    ks = np.arange(0, 30)
    pmf = np.asarray(jax.jit(lambda k: model().pmf(k))(ks))
    freq = np.array([(tau == k).mean() for k in ks])
    se = np.sqrt(pmf * (1 - pmf) / N)
    assert np.all(np.abs(freq - pmf) < Z * se + 1e-12), np.abs(freq - pmf) / se


# -- reproducibility, jit and vmap over thetas ----------------------------------------------
def test_reproducible_and_vmap_over_thetas():
    n = 4
    model = pj.models.kingman(n).compile()
    thetas = np.array([[0.5], [1.0], [2.0]])
    draw = jax.jit(lambda th, key: model(th).sample(key, (20_000,)))
    keys = jax.random.split(jax.random.key(7), 3)
    a = np.asarray(draw(thetas[0], keys[0]))
    b = np.asarray(draw(thetas[0], keys[0]))
    c = np.asarray(draw(thetas[0], keys[1]))
    assert a.shape == (20_000,)
    np.testing.assert_array_equal(a, b)  # same key, same draws
    assert np.mean(a == c) < 1e-3  # another key, other draws
    batched = np.asarray(jax.jit(jax.vmap(draw.__wrapped__))(thetas, keys))
    assert batched.shape == (3, 20_000)
    for i, th in enumerate(thetas):
        np.testing.assert_allclose(batched[i], np.asarray(draw(th, keys[i])), rtol=1e-13)
        # E[TMRCA] = 2 (1 - 1/n) / theta
        mean = 2 * (1 - 1 / n) / th[0]
        assert abs(batched[i].mean() - mean) < Z * batched[i].std() / np.sqrt(20_000)
