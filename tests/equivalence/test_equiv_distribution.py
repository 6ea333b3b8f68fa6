"""pdf/cdf: phasic's C library is a first-order (forward-Euler) approximation.

phasic 0.32.1 steps the distribution with ``ptd_probability_distribution_step`` at
granularity ``g`` (time step ``1/g``; default ``max(1024, ~2 x largest exit rate)``),
so its error falls like ``1/g``: quadrupling ``g`` divides the error by about 4.
phasejax uses uniformization with a truncation bound and agrees with
``scipy.linalg.expm`` to 1e-10. Times are multiples of 1/16, on every C time grid,
so only the integration error (not the grid rounding) is measured.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.stats
from phasic_reference.adapter import reference_graph

import phasejax as pj
from helpers.equivalence import (
    assert_rel,
    dense,
    green,
    ph_pdf_cdf_sf,
    random_cyclic,
    random_discrete,
)

TIMES = np.arange(1, 65) / 16.0  # (0, 4]

CASES = [
    ("erlang-3", lambda: pj.models.erlang(3), [2.0]),
    ("kingman-5", lambda: pj.models.kingman(5), [1.0]),
    ("random-cyclic-8", lambda: random_cyclic(np.random.default_rng(3), 8), None),
]


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_c_density_is_first_order_ours_exact(case):
    _, build, theta = case
    graph = build()
    c = reference_graph(graph, theta)
    alpha, S, _ = dense(graph, theta)
    pdf, cdf, _ = ph_pdf_cdf_sf(alpha, S, TIMES)

    # C: error ~ 1/g over three granularities
    grans = [1024, 4096, 16384]
    pdf_err = [np.abs(c.pdf(TIMES, g) - pdf).max() for g in grans]
    cdf_err = [np.abs(c.cdf(TIMES, g) - cdf).max() for g in grans]
    for errs in (pdf_err, cdf_err):
        for coarse, fine in zip(errs, errs[1:]):
            assert 3.0 < coarse / fine < 5.0, errs

    # C at its default granularity: a visible approximation
    g0 = c.default_granularity()
    default_pdf_err = np.abs(c.pdf(TIMES) - pdf).max()
    default_cdf_err = np.abs(c.cdf(TIMES) - cdf).max()
    print(
        f"\n{case[0]}: C default granularity {g0}: max |pdf error| {default_pdf_err:.3e} "
        f"(relative to max pdf {default_pdf_err / pdf.max():.3e}), max |cdf error| {default_cdf_err:.3e}; "
        f"pdf errors at g = {grans}: {', '.join(f'{e:.3e}' for e in pdf_err)}"
    )
    assert default_pdf_err > 1e-6
    assert default_cdf_err > 1e-6

    # ours: exact to 1e-10 (relative to the largest value)
    model = graph.compile()
    f = jax.jit(lambda th, t: (model(th).pdf(t), model(th).cdf(t)))
    ours_pdf, ours_cdf = map(
        np.asarray, f(None if theta is None else jnp.asarray(theta), jnp.asarray(TIMES))
    )
    assert_rel(ours_pdf, pdf, what="pdf vs expm")
    assert_rel(ours_cdf, cdf, what="cdf vs expm")
    print(
        f"   ours: max |pdf error| {np.abs(ours_pdf - pdf).max():.3e}, max |cdf error| {np.abs(ours_cdf - cdf).max():.3e}"
    )


# -- Discrete phase-type (DPH): phasejax vs phasic's C library, and the known differences. ----------


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


# -- Sampling: phasejax's ``dist.sample`` and phasic's ``ptd_random_sample`` draw from ----------


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
