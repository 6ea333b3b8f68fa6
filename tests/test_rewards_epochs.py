"""Reward transformation, mutation counts and epoch models against independent oracles."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.integrate as si
import scipy.linalg as sl
from scipy.stats import poisson

import phasejax as pj


def dense_reward_transform(alpha, s, r):
    """Independent dense fold of zero-reward states: (alpha', S') over positive states."""
    pos, zer = r > 0, r == 0
    spp, spz, szp, szz = (
        s[np.ix_(pos, pos)],
        s[np.ix_(pos, zer)],
        s[np.ix_(zer, pos)],
        s[np.ix_(zer, zer)],
    )
    fold = np.linalg.solve(-szz, szp) if zer.any() else np.zeros((0, pos.sum()))
    s_new = np.diag(1 / r[pos]) @ (spp + spz @ fold)
    a_new = alpha[pos] + alpha[zer] @ fold
    return a_new, s_new


def reward_moments(alpha, s, r, k):
    u = np.linalg.inv(-s)
    out, v = [], np.ones(len(alpha))
    fact = 1
    for j in range(1, k + 1):
        v = u @ (r * v)
        fact *= j
        out.append(fact * alpha @ v)
    return np.array(out)


CASES = [
    (
        "kingman6-singletons",
        lambda: pj.models.kingman(6),
        [1.3],
        lambda g: pj.models.sfs_rewards(g)[0],
    ),
    (
        "kingman6-tripletons",
        lambda: pj.models.kingman(6),
        [0.7],
        lambda g: pj.models.sfs_rewards(g)[2],
    ),
    (
        "rabbits-alternating",
        lambda: pj.models.rabbit_flooding(3),
        [0.7, 1.2],
        lambda g: np.where(np.arange(g.vertices_length()) % 2 == 0, 0.0, 1.5),
    ),
    (
        "island-deme1",
        lambda: pj.models.two_island(2, 1),
        [1.0, 2.0, 0.5, 0.3],
        lambda g: (g.states()[:, :3].sum(1) > 0).astype(float) * 2.0,
    ),
]


@pytest.mark.parametrize("name, build, theta, rewards_of", CASES, ids=[c[0] for c in CASES])
def test_reward_transform_matches_dense_and_direct(name, build, theta, rewards_of):
    graph = build()
    rewards = np.asarray(rewards_of(graph), float)
    dist = graph.compile()(jnp.asarray(theta))
    transformed = dist.reward_transform(rewards)
    # moments of the transformed PH == reward moments of the original
    np.testing.assert_allclose(transformed.moments(4), dist.moments(4, rewards), rtol=1e-10)
    alpha, s, _, vertices = graph.as_matrices(np.asarray(theta))
    r = rewards[vertices]
    np.testing.assert_allclose(dist.moments(3, rewards), reward_moments(alpha, s, r, 3), rtol=1e-10)
    a_new, s_new = dense_reward_transform(alpha, s, r)
    ts = np.array([0.05, 0.4, 1.0, 2.5])
    exit_new = -s_new.sum(1)
    pdf = np.array([a_new @ sl.expm(s_new * t) @ exit_new for t in ts])
    sf = np.array([a_new @ sl.expm(s_new * t) @ np.ones(len(a_new)) for t in ts])
    np.testing.assert_allclose(transformed.pdf(ts), pdf, rtol=1e-10)
    np.testing.assert_allclose(transformed.sf(ts), sf, rtol=1e-10)
    np.testing.assert_allclose(transformed.defect(), 1 - a_new.sum(), atol=1e-13)


def test_reward_transform_gradients_and_jit():
    graph = pj.models.rabbit_flooding(3)
    model = graph.compile()
    rewards = np.where(np.arange(graph.vertices_length()) % 2 == 0, 0.0, 1.5)
    positive = rewards > 0
    plan = pj.RewardTransform.build(model.structure, positive)

    def f(theta, r):
        return plan(model(theta), r).var() + plan(model(theta), r).pdf(jnp.array([0.7]))[0]

    f_jit = jax.jit(f)
    for theta in ([0.7, 1.2], [2.0, 0.4]):
        theta = jnp.asarray(theta)
        g_theta, g_r = jax.grad(f_jit, argnums=(0, 1))(theta, jnp.asarray(rewards))
        eps = 1e-6
        for i in range(2):
            fd = (f(theta.at[i].add(eps), rewards) - f(theta.at[i].add(-eps), rewards)) / (2 * eps)
            np.testing.assert_allclose(g_theta[i], fd, rtol=1e-6)
        v = int(np.flatnonzero(positive)[1])
        bump = np.zeros_like(rewards)
        bump[v] = eps
        fd = (f(theta, rewards + bump) - f(theta, rewards - bump)) / (2 * eps)
        np.testing.assert_allclose(g_r[v], fd, rtol=1e-6)


def test_reward_transform_errors():
    graph = pj.models.kingman(4)
    dist = graph.compile()(jnp.array([1.0]))
    zeros = np.zeros(graph.vertices_length())
    with pytest.raises(ValueError, match="zero on every"):
        dist.reward_transform(zeros)
    bad = zeros.copy()
    bad[1] = -1.0
    with pytest.raises(ValueError, match="non-negative"):
        dist.reward_transform(bad)
    bad[1] = np.nan
    with pytest.raises(ValueError, match="non-negative"):
        dist.reward_transform(bad)
    with pytest.raises(ValueError, match="positive="):
        jax.jit(lambda r: dist.reward_transform(r).mean())(jnp.ones(graph.vertices_length()))


def test_mutation_counts_closed_forms():
    theta = 1.7
    graph = pj.models.kingman(2)
    dist = graph.compile()(jnp.array([1.0]))
    total = pj.models.sfs_rewards(graph).sum(0)
    k = np.arange(8)
    # n = 2: S ~ Geometric with P(S = k) = (theta / (1 + theta))^k / (1 + theta)
    np.testing.assert_allclose(
        pj.mutation_counts(dist, theta / 2, total).pmf(k),
        (theta / (1 + theta)) ** k / (1 + theta),
        rtol=1e-12,
    )
    for n in (4, 7):
        graph = pj.models.kingman(n)
        dist = graph.compile()(jnp.array([1.0]))
        sfs = pj.models.sfs_rewards(graph)
        counts = pj.mutation_counts(dist, theta / 2, sfs.sum(0))
        np.testing.assert_allclose(
            counts.mean(), theta * np.sum(1 / np.arange(1, n)), rtol=1e-12
        )  # Watterson
        for i in range(1, n):
            np.testing.assert_allclose(
                pj.mutation_counts(dist, theta / 2, sfs[i - 1]).mean(), theta / i, rtol=1e-10
            )


def test_mutation_counts_against_mixture_oracle():
    """P(K = k) = int Pois(k; mu y) f_Y(y) dy, with f_Y from the dense reward-transformed matrix."""
    graph = pj.models.kingman(4)
    theta = np.array([1.2])
    dist = graph.compile()(jnp.asarray(theta))
    reward = pj.models.sfs_rewards(graph)[1]
    alpha, s, _, vertices = graph.as_matrices(theta)
    a_new, s_new = dense_reward_transform(alpha, s, reward[vertices])
    exit_new = -s_new.sum(1)
    mu = 0.9
    counts = pj.mutation_counts(dist, mu, reward)
    for k in range(4):
        density = lambda y: poisson.pmf(k, mu * y) * (a_new @ sl.expm(s_new * y) @ exit_new)
        oracle = si.quad(density, 0, 80, limit=200)[0] + (1 - a_new.sum()) * (k == 0)
        np.testing.assert_allclose(counts.pmf(np.array([k]))[0], oracle, rtol=1e-8)
    f = lambda m: pj.mutation_counts(dist, m, reward).pmf(np.array([2]))[0]
    np.testing.assert_allclose(jax.grad(f)(mu), (f(mu + 1e-6) - f(mu - 1e-6)) / 2e-6, rtol=1e-6)


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


@pytest.mark.parametrize("rho", [0.0, 1.0, 10.0])
def test_two_locus_correlation_closed_form(rho):
    graph = pj.models.two_locus(2)
    dist = graph.compile()(jnp.array([1.0, rho]))
    rewards = pj.models.tmrca_rewards(graph)
    cov = dist.covariance_matrix(rewards)
    np.testing.assert_allclose(dist.mean(rewards[0]), 1.0, rtol=1e-12)
    np.testing.assert_allclose(
        cov[0, 1] / np.sqrt(cov[0, 0] * cov[1, 1]),
        (rho + 18) / (rho**2 + 13 * rho + 18),
        rtol=1e-10,
    )


def test_two_locus_larger_sample_against_dense():
    graph = pj.models.two_locus(5)
    theta = np.array([1.0, 2.5])
    dist = graph.compile()(jnp.asarray(theta))
    rewards = pj.models.tmrca_rewards(graph)
    np.testing.assert_allclose(dist.mean(rewards[0]), 2 * (1 - 1 / 5), rtol=1e-12)
    alpha, s, _, vertices = graph.as_matrices(theta)
    u = np.linalg.inv(-s)
    ra, rb = rewards[0][vertices], rewards[1][vertices]
    cross = alpha @ u @ np.diag(ra) @ u @ rb + alpha @ u @ np.diag(rb) @ u @ ra
    np.testing.assert_allclose(
        dist.cov(rewards[0], rewards[1]), cross - (alpha @ u @ ra) * (alpha @ u @ rb), rtol=1e-10
    )


def dph_reward_pmf_oracle(alpha, t_matrix, r, size):
    """P(Y = y), Y = sum_k r(X_k), by dynamic programming over (state, accumulated reward)."""
    n = len(alpha)
    exit_prob = 1 - t_matrix.sum(1)
    p_y = np.zeros(size + 50)
    p_y[0] += 1 - alpha.sum()
    f = np.zeros((n, size + 50))
    f[:, 0] = alpha
    for _ in range(2000):
        nxt = np.zeros_like(f)
        for i in range(n):
            shifted = np.zeros_like(f[i])
            shifted[r[i] :] = f[i][: f.shape[1] - r[i]]
            p_y += exit_prob[i] * shifted
            nxt += np.outer(t_matrix[i], shifted)
        f = nxt
        if f.sum() < 1e-18:
            break
    return p_y[:size]


@pytest.mark.parametrize("seed", [1, 2])
def test_discrete_reward_transform_against_dynamic_programming(seed):
    rng = np.random.default_rng(seed)
    n = 6
    t_matrix = rng.random((n, n)) * (rng.random((n, n)) < 0.6)
    t_matrix = t_matrix / (
        t_matrix.sum(1, keepdims=True) + rng.random((n, 1)) + 0.3
    )  # diagonal: staying
    alpha = rng.random(n)
    alpha = alpha / alpha.sum() * 0.95
    graph = pj.Graph.from_matrices(alpha, t_matrix, discrete=True)
    dist = graph.compile()()
    rewards = np.zeros(graph.vertices_length())
    rewards[1 : n + 1] = [0, 2, 1, 3, 0, 1]
    transformed = dist.reward_transform(rewards)
    np.testing.assert_allclose(transformed.moments(3), dist.moments(3, rewards), rtol=1e-10)
    oracle = dph_reward_pmf_oracle(alpha, t_matrix, rewards[1 : n + 1].astype(int), 40)
    np.testing.assert_allclose(transformed.pmf(np.arange(40)), oracle, atol=1e-14)
    bad = rewards.copy()
    bad[2] = 1.5
    with pytest.raises(ValueError, match="integer"):
        dist.reward_transform(bad)


def test_mutation_counts_with_rewards_inside_jit():
    """The reward transformation inside ``mutation_counts`` builds its structure while
    tracing; n = 2: K | L ~ Poisson(mu L), L = 2 T ~ Exp(c / 2) gives a geometric law."""
    graph = pj.models.kingman(2)
    model = graph.compile()
    rewards = pj.models.sfs_rewards(graph)[0]
    c, mu = 1.3, 0.4
    k = jnp.arange(5)
    pmf = jax.jit(lambda th: pj.mutation_counts(model(th), mu, rewards).pmf(k))(jnp.array([c]))
    expected = c / (c + 2 * mu) * (2 * mu / (c + 2 * mu)) ** np.arange(5)
    np.testing.assert_allclose(pmf, expected, rtol=1e-12)
