"""Checks phasic_reference (phasic 0.32.1's C library) against dense numpy formulas.

Never imports the phasic Python package.
"""

import gc
import math
import os
import sys

import numpy as np
import pytest
from phasic_reference import ReferenceGraph, from_description
from phasic_reference.adapter import describe, reference_graph


# ---------------------------------------------------------------- helpers ---
def dense(n_vertices, src, dst, weight, discrete=False):
    n, w = n_vertices, weight
    """(alpha, S or P, transient vertex ids) over transient vertices 1..n-1."""
    src, dst, w = map(np.asarray, (src, dst, w))
    has_out = np.zeros(n, bool)
    has_out[src[src != 0]] = True
    trans = [v for v in range(1, n) if has_out[v]]
    pos = {v: i for i, v in enumerate(trans)}
    m = len(trans)
    alpha = np.zeros(m)
    M = np.zeros((m, m))
    for s, d, x in zip(src, dst, w):
        if s == 0:
            if d in pos:
                alpha[pos[d]] += x
            continue
        i = pos[s]
        if d in pos:
            M[i, pos[d]] += x
        if not discrete:
            M[i, i] -= x
    if discrete:
        for i in range(m):
            M[i, i] += 1.0 - (w[src == trans[i]].sum())  # remainder = stay
    return alpha, M, trans


def green(alpha, M, discrete):
    m = len(alpha)
    return np.linalg.inv(np.eye(m) - M) if discrete else np.linalg.inv(-M)


def restrict(r, trans):
    return np.asarray(r, float)[trans]


CYC = dict(
    n_vertices=5,
    src=[0, 0, 1, 1, 2, 2, 3, 3],
    dst=[1, 2, 2, 4, 1, 3, 1, 4],
    weight=[0.6, 0.4, 1.5, 0.5, 0.7, 2.0, 1.0, 3.0],
)


# ---------------------------------------------------------- continuous ---
def test_no_phasic_import():
    assert "phasic" not in sys.modules
    assert os.environ.get("JAX_ENABLE_X64") is None or "phasic" not in sys.modules


def test_exponential():
    g = ReferenceGraph(3, [0, 1], [1, 2], [1.0, 4.0])
    assert g.expectation() == pytest.approx(0.25, rel=1e-14)
    assert g.variance() == pytest.approx(1 / 16, rel=1e-12)
    np.testing.assert_allclose(g.moments(3), [0.25, 2 / 16, 6 / 64], rtol=1e-12)
    np.testing.assert_allclose(g.expected_waiting_time(), [0.25, 0.25, 0.0])


def test_erlang():
    g = ReferenceGraph(5, [0, 1, 2, 3], [1, 2, 3, 4], [1.0, 2.0, 2.0, 2.0])
    assert g.expectation() == pytest.approx(1.5, rel=1e-14)
    np.testing.assert_allclose(g.moments(3), [1.5, 3.0, 7.5], rtol=1e-12)
    assert g.variance() == pytest.approx(0.75, rel=1e-12)
    t = np.array([0.1, 0.5, 1.0, 1.5, 2.0, 4.0])
    exact = 2**3 * t**2 * np.exp(-2 * t) / 2
    assert g.default_granularity() == 1024
    np.testing.assert_allclose(g.pdf(t), exact, atol=1e-2)
    cexact = 1 - np.exp(-2 * t) * (1 + 2 * t + 2 * t**2)
    np.testing.assert_allclose(g.cdf(t), cexact, atol=1e-2)
    # finer explicit granularity -> smaller (O(1/g)) error
    err_default = np.abs(g.pdf(t) - exact).max()
    err_fine = np.abs(g.pdf(t, granularity=16384) - exact).max()
    assert err_fine < err_default / 8


def test_granularity_below_max_rate_is_refused():
    g = ReferenceGraph(3, [0, 1], [1, 2], [1.0, 50.0])
    with pytest.raises(RuntimeError, match="granularity"):
        g.pdf([1.0], granularity=10)


def test_cyclic_vs_numpy():
    g = ReferenceGraph(**CYC)
    alpha, S, trans = dense(**CYC)
    U = green(alpha, S, False)
    one = np.ones(len(alpha))
    E = alpha @ U @ one
    E2 = 2 * alpha @ U @ U @ one
    E3 = 6 * alpha @ U @ U @ U @ one
    assert g.expectation() == pytest.approx(E, rel=1e-12)
    np.testing.assert_allclose(g.moments(3), [E, E2, E3], rtol=1e-12)
    assert g.variance() == pytest.approx(E2 - E**2, rel=1e-12)
    np.testing.assert_allclose(g.expected_waiting_time()[trans], U @ one, rtol=1e-12)

    r1 = np.array([0.0, 1.0, 2.0, 0.5, 0.0])
    r2 = np.array([0.0, 0.3, 0.0, 4.0, 0.0])
    R1, R2 = np.diag(restrict(r1, trans)), np.diag(restrict(r2, trans))
    e1, e2 = alpha @ U @ R1 @ one, alpha @ U @ R2 @ one
    assert g.expectation(r1) == pytest.approx(e1, rel=1e-12)
    var1 = 2 * alpha @ U @ R1 @ U @ R1 @ one - e1**2
    assert g.variance(r1) == pytest.approx(var1, rel=1e-12)
    cov = alpha @ U @ R1 @ U @ R2 @ one + alpha @ U @ R2 @ U @ R1 @ one - e1 * e2
    assert g.covariance(r1, r2) == pytest.approx(cov, rel=1e-12)
    assert g.covariance(r2, r1) == pytest.approx(cov, rel=1e-12)
    assert g.covariance(r1, r1) == pytest.approx(var1, rel=1e-12)
    # reward transformation (zero rewards eliminated) keeps the expectation
    assert g.reward_transform_expectation(r1) == pytest.approx(e1, rel=1e-12)
    assert g.reward_transform_expectation(r2) == pytest.approx(e2, rel=1e-12)

    # pdf vs expm
    lam, V = np.linalg.eig(S)
    Vi = np.linalg.inv(V)
    s0 = -S @ one
    t = np.array([0.2, 0.7, 1.5, 3.0])
    exact = [np.real(alpha @ V @ np.diag(np.exp(lam * x)) @ Vi @ s0) for x in t]
    np.testing.assert_allclose(g.pdf(t), exact, atol=1e-2)


def test_sample_mean():
    g = ReferenceGraph(**CYC)
    n = 20000
    s = g.sample(n, seed=7)
    sd = math.sqrt(g.variance())
    assert abs(s.mean() - g.expectation()) < 5 * sd / math.sqrt(n)
    np.testing.assert_array_equal(s[:50], g.sample(50, seed=7))  # srand(seed) -> reproducible
    r = np.array([0.0, 1.0, 2.0, 0.5, 0.0])
    sr = g.sample(n, rewards=r, seed=3)
    assert abs(sr.mean() - g.expectation(r)) < 5 * math.sqrt(g.variance(r)) / math.sqrt(n)


def test_defect_handling():
    # IPV sums to 0.8; vertex 3 absorbing
    src, dst, w = [0, 0, 1, 2], [1, 2, 3, 3], [0.5, 0.3, 2.0, 50.0]
    exact = 0.5 / 2 + 0.3 / 50
    g = ReferenceGraph(4, src, dst, w)  # explicit_defect=True adds 0->3 with 0.2
    assert g.input_defect == pytest.approx(0.2)
    assert g.expectation() == pytest.approx(exact, rel=1e-12)
    assert g.cdf([30.0])[0] == pytest.approx(1.0, abs=1e-9)  # mass 0.2 sits at t=0
    raw = ReferenceGraph(4, src, dst, w, explicit_defect=False)
    # C library renormalises the start vertex in moments: E[T | no defect]
    assert raw.expectation() == pytest.approx(exact / 0.8, rel=1e-12)
    assert raw.cdf([30.0])[0] == pytest.approx(0.8, abs=1e-9)  # but not in the cdf
    # ptd_defect is a stub
    assert raw.c_defect_stub() == 0.0 and g.c_defect_stub() == 0.0
    with pytest.raises(NotImplementedError):
        g.defect()


# ------------------------------------------------------------ discrete ---
DPH = dict(
    n_vertices=4,
    src=[0, 0, 1, 1, 2],
    dst=[1, 2, 2, 3, 1],
    weight=[0.6, 0.4, 0.5, 0.2, 0.3],
    discrete=True,
)


def test_dph_pmf_vs_matrix_powers():
    g = ReferenceGraph(**DPH)
    alpha, P, trans = dense(**DPH)
    t = 1 - P.sum(1)
    ks = np.arange(0, 30)
    exact = [0.0] + [alpha @ np.linalg.matrix_power(P, k - 1) @ t for k in ks[1:]]
    np.testing.assert_allclose(g.pmf(ks), exact, rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(g.dph_cdf(ks), np.cumsum(exact), rtol=1e-12, atol=1e-15)


def test_dph_geometric_self_loop():
    # out-probability 0.3 from vertex 1; remainder 0.7 is "stay" (implicit self-loop)
    g = ReferenceGraph(3, [0, 1], [1, 2], [1.0, 0.3], discrete=True)
    np.testing.assert_allclose(g.pmf([1, 2, 3]), [0.3, 0.21, 0.147], rtol=1e-12)
    assert g.expectation() == pytest.approx(1 / 0.3, rel=1e-12)
    s = g.sample(20000, seed=5)
    assert np.all(s == np.round(s)) and s.min() >= 1
    assert abs(s.mean() - 1 / 0.3) < 5 * math.sqrt(0.7 / 0.09) / math.sqrt(20000)


def test_dph_known_wrong_variance_and_covariance():
    g = ReferenceGraph(**DPH)
    alpha, P, trans = dense(**DPH)
    U = green(alpha, P, True)
    one = np.ones(len(alpha))
    E = alpha @ U @ one
    ET2 = alpha @ (2 * U @ U - U) @ one  # E[T^2]
    true_var = ET2 - E**2
    assert g.expectation() == pytest.approx(E, rel=1e-12)
    # moments(2)[1] is 2 alpha U^2 1 = E[T(T+1)], not E[T^2]
    assert g.moments(2)[1] == pytest.approx(ET2 + E, rel=1e-12)
    # variance() (phasic's formula m2 - 2 m1) = second factorial moment E[T(T-1)]
    assert g.variance() == pytest.approx(ET2 - E, rel=1e-12)
    assert g.variance() != pytest.approx(true_var, rel=1e-3)
    # ... while the reward branch happens to be right, so variance(ones) != variance()
    ones = np.ones(4)
    assert g.variance(ones) == pytest.approx(true_var, rel=1e-12)

    r1 = np.array([0.0, 1.0, 0.0, 0.0])
    r2 = np.array([0.0, 0.0, 1.0, 0.0])
    R1, R2 = np.diag(restrict(r1, trans)), np.diag(restrict(r2, trans))
    e1, e2 = alpha @ U @ R1 @ one, alpha @ U @ R2 @ one
    true_cov = (
        alpha @ U @ R1 @ U @ R2 @ one
        + alpha @ U @ R2 @ U @ R1 @ one
        - alpha @ U @ R1 @ R2 @ one
        - e1 * e2
    )
    c12, c21 = g.covariance(r1, r2), g.covariance(r2, r1)
    # phasic: alpha U R2 U R1 1 + alpha U R1 R2 1 - e1 e2 (one cross term, wrong sign)
    assert c12 == pytest.approx(
        alpha @ U @ R2 @ U @ R1 @ one + alpha @ U @ R1 @ R2 @ one - e1 * e2, rel=1e-12
    )
    assert c12 != pytest.approx(c21, rel=1e-3)  # asymmetric
    assert c12 != pytest.approx(true_cov, rel=1e-3)


def test_dph_reward_transform():
    g = ReferenceGraph(**DPH)
    r = np.array([0, 2, 1, 0])
    assert g.reward_transform_expectation(r) == pytest.approx(
        g.expectation(r.astype(float)), rel=1e-12
    )


# ------------------------------------------------------ parameterized ---
def test_parameterized_matches_constant_and_caches():
    src, dst = CYC["src"], CYC["dst"]
    C = np.array([[0, 0], [0, 0], [1.5, 0], [0, 0.5], [0.7, 0], [0, 2], [1, 0], [0, 3]])
    ipv = np.array([0.6, 0.4, 0, 0, 0, 0, 0, 0])
    g = ReferenceGraph.parameterized(5, src, dst, C, weight=ipv)
    assert g.cache_info()["edge_mode"] == 2
    ptrs = set()
    for theta in ([1.0, 1.0], [2.0, 0.5], [0.3, 4.0]):
        g.update_weights(theta)
        w = C @ np.array(theta)
        w[:2] = ipv[:2]
        h = ReferenceGraph(5, src, dst, w)
        assert g.expectation() == pytest.approx(h.expectation(), rel=1e-12)
        assert g.variance() == pytest.approx(h.variance(), rel=1e-12)
        info = g.cache_info()
        assert info["parameterized_reward_compute_graph"]
        ptrs.add(info["parameterized_reward_compute_graph_ptr"])
    assert len(ptrs) == 1  # symbolic elimination built once and replayed


def test_parameterized_discrete_renormalises():
    # was_dph graphs: ptd_graph_update_weights rescales out-weights to sum 1,
    # so the implicit "stay" remainder disappears.
    g = ReferenceGraph.parameterized(3, [0, 1], [1, 2], [[0.0], [1.0]], discrete=True)
    g.update_weights([0.3])
    assert g.edge_weights()[1] == pytest.approx(1.0)
    assert g.expectation() == pytest.approx(1.0)


# ------------------------------------------------------------ adapter ---
class FakeGraph:
    discrete = False

    def edge_arrays(self):
        src = np.array([0, 1, 2])
        dst = np.array([1, 2, 3])
        base = np.array([1.0, 0.5, 0.0])
        coef = np.array([[0.0, 0.0], [1.0, 0.0], [0.0, 2.0]])
        return src, dst, base, coef

    def vertices_length(self):
        return 4


def test_adapter():
    d = describe(FakeGraph(), theta=[1.5, 0.25])
    assert d["n_vertices"] == 4 and d["discrete"] is False
    np.testing.assert_allclose(d["weight"], [1.0, 2.0, 0.5])
    g = from_description(d)
    assert g.expectation() == pytest.approx(1 / 2.0 + 1 / 0.5, rel=1e-14)
    assert reference_graph(FakeGraph(), np.array([1.5, 0.25])).expectation() == pytest.approx(2.5)
    with pytest.raises(ValueError):
        describe(FakeGraph())  # parameterized graph needs theta
    with pytest.raises(ValueError):
        describe(FakeGraph(), theta=[1.0])


# ------------------------------------------------------------- memory ---
def _rss_mb():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def test_no_leak():
    n = 40
    src, dst = [0], [1]
    for i in range(1, n + 1):
        src += [i, i]
        dst += [i % n + 1, n + 1]
    rng = np.random.default_rng(0)
    w = np.r_[1.0, rng.uniform(0.5, 2, len(src) - 1)]
    wd = np.r_[1.0, rng.uniform(0.1, 0.4, len(src) - 1)]
    C = np.c_[w, 2 * w]
    r = rng.uniform(0, 2, n + 2)
    N = n + 2

    def work():
        g = ReferenceGraph(N, src, dst, w)
        g.expected_waiting_time()
        g.moments(3, r)
        g.variance(r)
        g.covariance(r, r[::-1].copy())
        g.reward_transform_expectation(r)
        g.sample(5, seed=1)
        d = ReferenceGraph(N, src, dst, wd, discrete=True)
        d.pmf([1, 5, 10])
        d.variance()
        p = ReferenceGraph.parameterized(N, src, dst, C)
        p.update_weights([1.0, 2.0])
        p.expectation()
        p.update_weights([2.0, 1.0])
        p.variance()

    def pdf_work():
        ReferenceGraph(3, [0, 1], [1, 2], [1.0, 2.0]).pdf([0.5, 1.0])

    for _ in range(200):
        work()
        pdf_work()
    gc.collect()
    before = _rss_mb()
    for _ in range(5000):
        work()
        pdf_work()
    gc.collect()
    grown = _rss_mb() - before
    assert grown < 3.0, f"RSS grew {grown:.2f} MB over 5000 iterations"
