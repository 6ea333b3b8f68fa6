"""Discrete phase-type (DPH): phasejax vs phasic's C library, and the known differences.

Agreement (1e-10 relative): pmf and cdf (``ptd_dph_probability_distribution_step``),
expected waiting times (visits), the mean, reward-weighted variance (phasic's reward
branch is right), and the reward-transformed mean (``ptd_graph_dph_reward_transform``,
integer rewards).

Known differences (phasic 0.32.1 is wrong, phasejax is right; the dense truth decides):

* ``variance()`` without rewards returns ``m2 - 2 m1 = E[T(T-1)]``, the second
  factorial moment, not ``Var[T]``;
* ``covariance(r1, r2)`` computes ``alpha U R2 U R1 1 + alpha U R1 R2 1 - E1 E2``:
  one cross term missing, the diagonal term with the wrong sign, so it is not even
  symmetric;
* ``moments(k)`` are not raw moments: ``moments(2)[1] = 2 alpha U^2 1 = E[T(T+1)]``.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from _equiv_helpers import assert_rel, dense, green, random_discrete
from phasic_reference.adapter import reference_graph

GRAPHS = [
    ("dph-5", lambda: random_discrete(np.random.default_rng(10), 5)),
    ("dph-12-defect", lambda: random_discrete(np.random.default_rng(11), 12, defect=0.1)),
    ("dph-40-lowstay", lambda: random_discrete(np.random.default_rng(12), 40, stay=0.05)),
]
KS = np.arange(0, 200)


def _truth(graph):
    alpha, T, vs = dense(graph)
    U = green(T, discrete=True)
    one = np.ones(len(alpha))
    mean = alpha @ U @ one
    second = alpha @ (2 * U @ U - U) @ one  # E[T^2]
    return alpha, T, vs, U, mean, second


@pytest.mark.parametrize("case", GRAPHS, ids=[g[0] for g in GRAPHS])
def test_dph_matches_c(case):
    graph = case[1]()
    model = graph.compile()
    c = reference_graph(graph)
    rng = np.random.default_rng(0)
    v = graph.vertices_length()
    r_int = rng.integers(0, 4, v).astype(np.float64)  # integer rewards with zeros
    r_int[0] = 0.0
    r_int[1 + rng.integers(v - 2)] = 2.0

    @jax.jit
    def ours(r):
        d = model(None)
        return {
            "pmf": d.pmf(jnp.asarray(KS), max_steps=int(KS.max()) + 1),
            "cdf": d.cdf(jnp.asarray(KS), max_steps=int(KS.max()) + 1),
            "wait": d.expected_waiting_time(),
            "mean": d.mean(),
            "mean_r": d.mean(r),
            "var_r": d.var(r),
            "moments": d.moments(2),
        }

    o = jax.tree.map(np.asarray, ours(jnp.asarray(r_int)))
    c_pmf = c.pmf(KS)
    # pmf elementwise relative (values decay over 200 steps; compare where above 1e-280)
    big = c_pmf > 1e-280
    np.testing.assert_allclose(o["pmf"][big], c_pmf[big], rtol=1e-10, atol=0, err_msg="pmf")
    assert_rel(o["cdf"], c.dph_cdf(KS), what="cdf", scale=1.0)
    assert_rel(o["pmf"][0], c.pmf([0])[0], what="pmf(0) = defect", scale=1.0)
    tv = np.asarray(model.transient_vertices)
    assert_rel(o["wait"][tv], c.expected_waiting_time()[tv], what="expected_waiting_time")
    assert_rel(o["mean"], c.expectation(), what="mean")
    assert_rel(o["mean_r"], c.expectation(r_int), what="mean(r)")
    assert_rel(
        o["mean_r"], c.reward_transform_expectation(r_int), what="mean(r) vs dph_reward_transform"
    )
    assert_rel(o["var_r"], c.variance(r_int), what="var(r) (phasic's reward branch is right)")
    # C's "second moment" is E[T(T+1)] = E[T^2] + E[T]
    assert_rel(
        o["moments"][1] + o["moments"][0], c.moments(2)[1], what="C moments(2)[1] = E[T^2] + E[T]"
    )


def test_known_difference_dph_variance_and_covariance():
    graph = random_discrete(np.random.default_rng(20), 6)
    alpha, T, vs, U, mean, second = _truth(graph)
    true_var = second - mean**2
    c = reference_graph(graph)
    model = graph.compile()
    v = graph.vertices_length()
    r1 = np.zeros(v)
    r2 = np.zeros(v)
    r1[vs[0]] = 1.0  # indicator rewards of two transient states
    r2[vs[1]] = 1.0
    R1, R2 = np.diag(r1[vs]), np.diag(r2[vs])
    one = np.ones(len(alpha))
    e1, e2 = alpha @ U @ R1 @ one, alpha @ U @ R2 @ one
    true_cov = (
        alpha @ U @ R1 @ U @ R2 @ one
        + alpha @ U @ R2 @ U @ R1 @ one
        - alpha @ U @ R1 @ R2 @ one
        - e1 * e2
    )

    @jax.jit
    def ours(r1, r2):
        d = model(None)
        return d.var(), d.cov(r1, r2), d.cov(r2, r1), d.factorial_moments(2)

    o_var, o_c12, o_c21, o_fact = map(np.asarray, ours(jnp.asarray(r1), jnp.asarray(r2)))
    c_var, c_c12, c_c21 = c.variance(), c.covariance(r1, r2), c.covariance(r2, r1)
    print(
        f"\nDPH Var[T]:      C {c_var:.10g}   phasejax {float(o_var):.10g}   dense truth {true_var:.10g}"
    )
    print(
        f"DPH Cov[Y1,Y2]:  C {c_c12:.10g} (swapped: {c_c21:.10g})   phasejax {float(o_c12):.10g}   "
        f"dense truth {true_cov:.10g}"
    )

    assert_rel(o_var, true_var, what="ours var == truth")
    assert abs(c_var - true_var) > 1e-3 * abs(true_var), (
        "C's DPH variance() is now right: update this test"
    )
    # what C returns instead: the second factorial moment E[T(T-1)]
    assert_rel(c_var, second - mean, what="C variance() == E[T(T-1)]")
    assert_rel(c_var, o_fact[1], what="C variance() == our factorial_moments(2)[1]")

    scale = np.sqrt(abs(true_var))
    assert_rel(o_c12, true_cov, what="ours cov == truth", scale=abs(true_cov))
    assert_rel(o_c21, true_cov, what="ours cov symmetric", scale=abs(true_cov))
    assert abs(c_c12 - true_cov) > 1e-3 * abs(true_cov), (
        "C's DPH covariance is now right: update this test"
    )
    assert abs(c_c12 - c_c21) > 1e-3 * scale, (
        "C's DPH covariance is now symmetric: update this test"
    )
    # C's formula, exactly
    assert_rel(
        c_c12,
        alpha @ U @ R2 @ U @ R1 @ one + alpha @ U @ R1 @ R2 @ one - e1 * e2,
        what="C covariance formula",
        scale=abs(true_cov),
    )
