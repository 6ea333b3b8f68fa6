"""Reward transformation (continuous and discrete) against dense and dynamic-programming oracles."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.linalg as sl

import phasejax as pj
from helpers.oracle import dense_reward_transform, reward_moments

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
    model = graph.compile()
    ts = np.array([0.05, 0.4, 1.0, 2.5])

    @jax.jit  # one program (eagerly every quantity compiled op by op)
    def quantities(theta):
        dist = model(theta)
        transformed = dist.reward_transform(rewards)
        return {
            "moments4": transformed.moments(4),
            "reward_moments4": dist.moments(4, rewards),
            "pdf": transformed.pdf(ts),
            "sf": transformed.sf(ts),
            "defect": transformed.defect(),
        }

    got = quantities(jnp.asarray(theta))
    # moments of the transformed PH == reward moments of the original
    np.testing.assert_allclose(got["moments4"], got["reward_moments4"], rtol=1e-10)
    alpha, s, _, vertices = graph.as_matrices(np.asarray(theta))
    r = rewards[vertices]
    np.testing.assert_allclose(
        got["reward_moments4"][:3], reward_moments(alpha, s, r, 3), rtol=1e-10
    )
    a_new, s_new = dense_reward_transform(alpha, s, r)
    exit_new = -s_new.sum(1)
    pdf = np.array([a_new @ sl.expm(s_new * t) @ exit_new for t in ts])
    sf = np.array([a_new @ sl.expm(s_new * t) @ np.ones(len(a_new)) for t in ts])
    np.testing.assert_allclose(got["pdf"], pdf, rtol=1e-10)
    np.testing.assert_allclose(got["sf"], sf, rtol=1e-10)
    np.testing.assert_allclose(got["defect"], 1 - a_new.sum(), atol=1e-13)


def test_reward_transform_gradients_and_jit():
    graph = pj.models.rabbit_flooding(3)
    model = graph.compile()
    rewards = np.where(np.arange(graph.vertices_length()) % 2 == 0, 0.0, 1.5)
    positive = rewards > 0
    plan = pj.RewardTransform.build(model.structure, positive)

    def f(theta, r):
        return plan(model(theta), r).var() + plan(model(theta), r).pdf(jnp.array([0.7]))[0]

    # the differences from the jitted function too (eagerly each call is many small programs)
    f = jax.jit(f)
    grad = jax.jit(jax.grad(f, argnums=(0, 1)))
    for theta in ([0.7, 1.2], [2.0, 0.4]):
        theta = jnp.asarray(theta)
        g_theta, g_r = grad(theta, jnp.asarray(rewards))
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
