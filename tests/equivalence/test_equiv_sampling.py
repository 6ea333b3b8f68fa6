"""Sampling: phasejax's ``dist.sample`` and phasic's ``ptd_random_sample`` draw from
the same distribution (two-sample Kolmogorov-Smirnov test, p > 1e-3, fixed seeds).

Two models, each for the absorption time and for one accumulated reward (one compiled
sampler serves both: the rewards are an argument).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.stats
from _equiv_helpers import random_cyclic
from phasic_reference.adapter import reference_graph

import phasejax as pj

N = 4000


def _kingman():
    graph = pj.models.kingman(6)
    return graph, [1.0], pj.models.sfs_rewards(graph)[0]  # xi_1: singleton branch length


def _random_cyclic_defect():
    graph = random_cyclic(np.random.default_rng(7), 10, defect=0.2)
    rewards = np.random.default_rng(8).uniform(0.0, 2.0, graph.vertices_length())
    rewards[rewards < 0.6] = 0.0
    return graph, None, rewards


CASES = [("kingman-6", _kingman), ("random-cyclic-10-defect", _random_cyclic_defect)]


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_samples_same_distribution(case):
    name, build = case
    graph, theta, rewards = build()
    model = graph.compile()
    dist = model(None if theta is None else jnp.asarray(theta))
    if not hasattr(dist, "sample"):
        pytest.skip("phasejax's dist.sample(key, shape, rewards=None) does not exist yet")
    c = reference_graph(graph, theta)
    sampler = jax.jit(lambda key, r: dist.sample(key, (N,), rewards=r))
    ones = np.ones(graph.vertices_length())
    for label, r, c_rewards, seed in [
        ("time", ones, None, 12345),
        ("reward", rewards, rewards, 777),
    ]:
        theirs = c.sample(N, rewards=c_rewards, seed=seed)
        ours = np.asarray(sampler(jax.random.key(seed), jnp.asarray(r)))
        assert ours.shape == (N,)
        result = scipy.stats.ks_2samp(ours, theirs)
        print(
            f"\n{name} {label}: KS statistic {result.statistic:.4f}, p = {result.pvalue:.3g}; "
            f"sample means C {theirs.mean():.4f}, ours {ours.mean():.4f}, exact {float(dist.mean(r)):.4f}"
        )
        assert result.pvalue > 1e-3, (label, result)
