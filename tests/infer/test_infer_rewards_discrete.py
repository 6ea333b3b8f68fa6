"""Fits of accumulated rewards: discrete (reward_transform, integer rewards) and continuous
(reward_scaled), through Posterior, fit_svgd and map_estimate."""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import scipy.optimize

import phasejax as pj
from phasejax import infer


def _dph_transitions(state):
    """A -> B w.p. theta / 2 (else stay); B -> C 0.4, absorb 0.3; C -> A 0.1, absorb 0.5."""
    i = state[0]
    if i == 1:
        return [((2,), [0.5])]
    if i == 2:
        return [((3,), 0.4), ((4,), 0.3)]
    if i == 3:
        return [((1,), 0.1), ((4,), 0.5)]
    return []


# per vertex (start, A, B, C, absorbing): B earns nothing (folded away), C earns 2 per visit
DPH_REWARDS = np.array([0.0, 1.0, 0.0, 2.0, 0.0])
DPH_TRUTH = 0.6
PRIOR = infer.Gamma(2.0, 2.0)
STEPS = 300


def _dph_reward_pmf(alpha, T, r, y_max):
    """Dense oracle: ``P(Y = y)``, ``y = 0..y_max``, ``Y = sum_visits r(X)``, level by level.

    ``f[y]``: mass entering states with ``y`` accumulated (the entered state's reward
    included); moves into zero-reward states stay on the level (closed by
    ``(I - T_Z)^{-1}``), absorption ends at the level, other moves go up by ``r_j``.
    """
    t = 1.0 - T.sum(axis=1)
    closure = np.linalg.inv(np.eye(len(r)) - T * (r == 0)[None, :])
    f = np.zeros((y_max + 1, len(r)))
    pmf = np.zeros(y_max + 1)
    pmf[0] = 1.0 - alpha.sum()
    f[r.astype(int), np.arange(len(r))] += alpha
    for y in range(y_max + 1):
        h = f[y] @ closure
        pmf[y] += h @ t
        up = (h @ T) * (r > 0)
        for j in np.flatnonzero(up):
            if y + r[j] <= y_max:
                f[y + int(r[j]), j] += up[j]
    return pmf


def _grid_posterior(post, grid):
    """Mean, sd and mode of the posterior of theta (log likelihood + log prior) on a grid."""
    lp = jax.jit(jax.vmap(lambda t: post.log_density_theta(t[None])))(grid)
    w = jnp.exp(lp - lp.max())
    w = w / w.sum()
    mean = jnp.sum(w * grid)
    assert w[0] < 1e-8 and w[-1] < 1e-8  # the grid holds the whole posterior
    return float(mean), float(jnp.sqrt(jnp.sum(w * (grid - mean) ** 2)))


def _mode(post, lo, hi):
    nlp = jax.jit(lambda t: -post.log_density_theta(jnp.array([t])))
    return scipy.optimize.minimize_scalar(
        lambda t: float(nlp(t)), bounds=(lo, hi), method="bounded", options={"xatol": 1e-10}
    ).x


@pytest.fixture(scope="module")
def dph():
    graph = pj.Graph.from_callback(_dph_transitions, (1,), discrete=True, n_params=1)
    model = graph.compile()
    # accumulated rewards simulated on the original chain (independent of reward_transform)
    draw = jax.jit(lambda key: model(jnp.array([DPH_TRUTH])).sample(key, (400,), DPH_REWARDS))
    return graph, model, draw(jax.random.PRNGKey(0))


def test_discrete_reward_log_density_is_the_reward_transformed_pmf(dph):
    graph, model, data = dph
    assert not jnp.issubdtype(data.dtype, jnp.integer) and bool(
        jnp.all(data == jnp.round(data))
    )  # sample(): floats
    post = infer.Posterior(infer.Likelihood(model, rewards=DPH_REWARDS), data, prior=PRIOR)
    theta = jnp.array([0.7])
    z = post.transform.inverse(theta)
    mats = graph.as_matrices(np.asarray(theta))
    pmf = _dph_reward_pmf(mats.alpha, mats.matrix, DPH_REWARDS[mats.vertices], int(data.max()))
    expected = (
        np.log(pmf[np.asarray(data, dtype=int)]).sum()
        + PRIOR.log_prob(theta)
        + post.transform.log_det(z)
    )
    np.testing.assert_allclose(eqx.filter_jit(post)(z), expected, rtol=1e-12)
    with pytest.raises(ValueError, match="integer"):
        infer.Likelihood(model, rewards=DPH_REWARDS * 0.5)
    with pytest.raises(ValueError, match=r"data\[0\] = .* is not a whole number"):
        infer.Posterior(post.likelihood, data + 0.5, prior=None)


def test_discrete_reward_svgd_and_map_recover_truth(dph):
    _, model, data = dph
    likelihood = infer.Likelihood(model, rewards=DPH_REWARDS)
    post = infer.Posterior(likelihood, data, prior=PRIOR)
    mean, sd = _grid_posterior(post, jnp.linspace(0.3, 1.0, 281))
    # theta must stay below 2 (probabilities): start the particles near 1
    fit = infer.fit_svgd(
        post,
        init=jnp.array([1.0]),
        init_scale=0.3,
        n_particles=32,
        steps=STEPS,
        optimizer=optax.adam(optax.cosine_decay_schedule(0.05, STEPS, 0.02)),
    )
    assert fit.quantiles[0, 0] < DPH_TRUTH < fit.quantiles[-1, 0], fit.summary()
    assert abs(float(fit.mean[0]) - mean) < 0.25 * sd, (fit.summary(), mean, sd)
    assert 0.8 < float(fit.sd[0]) / sd < 1.2, (fit.summary(), mean, sd)
    res = infer.map_estimate(post, jnp.array([1.0]), steps=300)
    np.testing.assert_allclose(res.params[0], _mode(post, 0.3, 1.0), rtol=1e-4)


def test_continuous_reward_svgd_covers_truth():
    graph = pj.models.kingman(5)
    model = graph.compile()
    lineages = graph.states().sum(axis=1).astype(float)  # reward: total branch length
    truth = 1.5
    data = jax.jit(lambda key: model(jnp.array([truth])).sample(key, (200,), lineages))(
        jax.random.PRNGKey(3)
    )
    likelihood = infer.Likelihood(model, rewards=lineages)
    post = infer.Posterior(likelihood, data, prior=infer.LogNormal(0.0, 1.0))
    mean, sd = _grid_posterior(post, jnp.linspace(0.5, 3.0, 501))
    fit = infer.fit_svgd(
        post,
        init=jnp.array([1.0]),
        init_scale=0.3,
        n_particles=32,
        steps=STEPS,
        optimizer=optax.adam(optax.cosine_decay_schedule(0.05, STEPS, 0.02)),
    )
    assert fit.quantiles[0, 0] < truth < fit.quantiles[-1, 0], fit.summary()
    assert abs(float(fit.mean[0]) - mean) < 0.25 * sd, (fit.summary(), mean, sd)
    assert 0.8 < float(fit.sd[0]) / sd < 1.2, (fit.summary(), mean, sd)
