"""phasejax.popgen: demes models -> coalescence times and (joint) SFS, against closed forms
and the independent block-counting / epoch engines of phasejax.models."""

import dataclasses
import math

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import phasejax as pj

demes = pytest.importorskip("demes")
pg = pytest.importorskip("phasejax.popgen")

N0 = 1000.0


def _graph(*epochs, time_units="generations"):
    """One deme with epochs (start_size, end_time[, end_size]) from the oldest."""
    b = demes.Builder(time_units=time_units)
    b.add_deme(
        "A",
        epochs=[
            dict(start_size=e[0], end_time=e[1], **({"end_size": e[2]} if len(e) > 2 else {}))
            for e in epochs
        ],
    )
    return b.resolve()


def _im(n1, n2):
    b = demes.Builder(time_units="generations")
    b.add_deme("anc", epochs=[dict(start_size=N0, end_time=400)])
    b.add_deme("A", ancestors=["anc"], epochs=[dict(start_size=500)])
    b.add_deme("B", ancestors=["anc"], epochs=[dict(start_size=2000)])
    b.add_migration(source="A", dest="B", rate=2e-4)
    b.add_migration(source="B", dest="A", rate=5e-4)
    return pg.from_demes(b.resolve(), {"A": n1, "B": n2})


@eqx.filter_jit
def _summaries(m):
    t, length = m.tmrca(), m.total_length()
    return dict(
        t=t.moments(2),
        length=length.moments(2),
        sfs=m.expected_sfs(),
        folded=m.expected_sfs(folded=True),
    )


def test_constant_size_closed_forms():
    n = 10
    m = pg.from_demes(_graph((N0, 0)), {"A": n})
    k = np.arange(2, n + 1)
    out = _summaries(m)
    t_mean, t_var = out["t"][0], out["t"][1] - out["t"][0] ** 2
    assert np.isclose(t_mean, 2 * (1 - 1 / n), rtol=1e-12)
    assert np.isclose(t_var, np.sum((2 / (k * (k - 1))) ** 2), rtol=1e-12)
    l_mean, l_var = out["length"][0], out["length"][1] - out["length"][0] ** 2
    assert np.isclose(l_mean, 2 * np.sum(1 / (k - 1)), rtol=1e-12)
    assert np.isclose(l_var, 4 * np.sum(1 / (k - 1) ** 2), rtol=1e-12)
    i = np.arange(1, n)
    expected = np.concatenate([[0.0], 2 / i, [0.0]])
    np.testing.assert_allclose(out["sfs"], expected, rtol=1e-12, atol=1e-15)
    block = eqx.filter_jit(lambda d: d.expected_sfs(method="block"))(m)
    np.testing.assert_allclose(block, expected, rtol=1e-12, atol=1e-15)
    folded = out["folded"]
    np.testing.assert_allclose(folded[1:5], 2 / i[:4] + 2 / (n - i[:4]), rtol=1e-12)
    assert folded[5] == pytest.approx(2 / 5) and np.all(folded[6:] == 0)
    # generations: every time scales by 2 N_ref
    g = pg.from_demes(_graph((N0, 0)), {"A": n}, time_units="generations")
    assert np.isclose(_summaries(g)["t"][0], 2 * N0 * 2 * (1 - 1 / n), rtol=1e-12)


def test_polanski_kimmel_large_n_constant_size():
    n = 1000
    m = pg.from_demes(_graph((N0, 0)), {"A": n})
    sfs = np.asarray(m.expected_sfs())
    i = np.arange(1, n)
    np.testing.assert_allclose(sfs[1:-1], 2 / i, rtol=1e-10)
    assert sfs[0] == 0 and sfs[-1] == 0


def test_tmrca_distribution_against_piecewise_kingman():
    """Size change: pdf, cdf, moments against phasejax's block-counting epoch model."""
    n = 5
    m = pg.from_demes(_graph((4 * N0, 500), (N0, 0)), {"A": n})
    # coalescent units of 2 N_ref = 2 * 4000 generations: rates N_ref / N
    ref = pj.models.PiecewiseKingman(n)(jnp.array([4.0, 1.0]), jnp.array([500 / 8000]))
    t = jnp.array([0.01, 0.05, 0.3, 1.2])
    levels = jnp.array([0.1, 0.5, 0.9])

    @eqx.filter_jit
    def quantities(m):
        tm = m.tmrca()
        q = tm.quantile(levels)
        slope = jax.grad(lambda s: tm.laplace(s))(0.0)  # -E[T]
        return tm.cdf(t), tm.pdf(t), tm.moments(3), slope, q, tm.cdf(q)

    # total length: the same inversion on the lineage-counting chain as the epoch model's
    # reward distribution on the block-counting one (lineage count = sum of block counts)
    lineages = pj.models.sfs_rewards(pj.models.kingman(n)).sum(0)
    y = jnp.array([0.1, 0.8, 2.5])

    @eqx.filter_jit
    def lengths(m, ref):
        length, ref_length = m.total_length(), ref.reward_transform(lineages)
        median = length.quantile(0.5)
        return (
            length.cdf(y),
            ref_length.cdf(y),
            length.pdf(y),
            ref_length.pdf(y),
            length.cdf(median),
        )

    cdf, pdf, moments, slope, q, at_q = quantities(m)
    ref_cdf, ref_pdf, ref_moments = eqx.filter_jit(
        lambda ref: (ref.cdf(t), ref.pdf(t), ref.moments(3))
    )(ref)
    np.testing.assert_allclose(cdf, ref_cdf, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(pdf, ref_pdf, rtol=1e-9)
    np.testing.assert_allclose(moments, ref_moments, rtol=1e-9)
    assert np.isclose(slope, -moments[0], rtol=1e-9)
    np.testing.assert_allclose(at_q, levels, atol=1e-10)
    length_cdf, ref_length_cdf, length_pdf, ref_length_pdf, at_median = lengths(m, ref)
    np.testing.assert_allclose(length_cdf, ref_length_cdf, rtol=1e-8)
    np.testing.assert_allclose(length_pdf, ref_length_pdf, rtol=1e-7)
    np.testing.assert_allclose(at_median, 0.5, atol=1e-10)
    # the quantile's implicit derivative -dF/f
    _fd_check(eqx.filter_jit(lambda d: d.tmrca().quantile(0.3)), m, (lambda d: d.sizes, (0, 0)))


def test_piecewise_sfs_routes_agree_with_epoch_engine():
    """Bottleneck: Polanski-Kimmel vs block counting vs phasejax.epochs (n = 12)."""
    n = 12
    m = pg.from_demes(_graph((N0, 300), (100.0, 200), (N0, 0)), {"A": n})
    pk, block = eqx.filter_jit(lambda d: (d.expected_sfs(), d.expected_sfs(method="block")))(m)
    np.testing.assert_allclose(pk, block, rtol=1e-10, atol=1e-14)
    graph = pj.models.kingman(n)
    ref = pj.epochs(
        graph.compile(), jnp.array([[1.0], [10.0], [1.0]]), jnp.array([200.0, 300.0]) / 2000
    ).mean(pj.models.sfs_rewards(graph), tol=1e-13)
    np.testing.assert_allclose(pk[1:-1], ref, rtol=1e-8)


def test_im_joint_sfs_against_isolation_with_migration():
    m = _im(3, 2)
    js, total, folded = eqx.filter_jit(
        lambda d: (d.expected_sfs(), d.total_length().mean(), d.expected_sfs(folded=True))
    )(m)
    assert js.shape == (4, 3) and js[0, 0] == 0 and js[3, 2] == 0
    # zoo parameters in units of 2 N_ref = 2000 generations (backward rates)
    im = pj.models.IsolationWithMigration.joint_sfs(3, 2)
    ref = im.expected_jsfs(2.0, 0.5, 5e-4 * 2000, 2e-4 * 2000, 1.0, 400 / 2000, tol=1e-13)
    np.testing.assert_allclose(js, ref, rtol=1e-9, atol=1e-14)
    # marginal over deme B: pooled block counting of the same model
    assert np.isclose(jnp.sum(js), total, rtol=1e-12)
    assert np.isclose(jnp.sum(folded), jnp.sum(js), rtol=1e-12)


def test_state_budget_error():
    m = _im(6, 6)
    with pytest.raises(pg.StateBudgetError, match="max_states=50"):
        m.expected_sfs(max_states=50)
    with pytest.raises(ValueError, match="Polanski-Kimmel"):
        m.expected_sfs(method="polanski_kimmel")


def test_bad_models():
    with pytest.raises(ValueError, match="not in the model"):
        pg.from_demes(_graph((N0, 0)), {"B": 3})
    b = demes.Builder(time_units="generations")
    b.add_deme("A", epochs=[dict(start_size=N0)])
    b.add_deme("B", epochs=[dict(start_size=N0)])
    with pytest.raises(ValueError, match="TMRCA is infinite"):
        pg.from_demes(b.resolve(), {"A": 2, "B": 2})


def test_growth_refinement_meets_target():
    """Exponential growth: the SFS by the change of time at the default tol against a
    tight one (a priori bound 1e-6); the chains' refinement (TMRCA moments) against a 4x
    finer one; tiny growth against the constant-size closed form."""
    g = _graph((N0, 300), (200.0, 0, 5000.0))
    m = pg.from_demes(g, {"A": 8})
    tight = pg.from_demes(g, {"A": 8}, tol=1e-12, check=False)
    assert tight.hazard_steps[0] > 10 * m.hazard_steps[0]
    fine = dataclasses.replace(m, refine=tuple(4 * k for k in m.refine))
    sfs = eqx.filter_jit(lambda d: d.expected_sfs())
    a, b = np.asarray(sfs(m)), np.asarray(sfs(tight))
    assert np.max(np.abs(a - b)[1:-1] / b[1:-1]) < 1e-6
    moments = eqx.filter_jit(lambda d: d.tmrca().moments(2))
    np.testing.assert_allclose(moments(m), moments(fine), rtol=1e-6)
    flat = pg.from_demes(_graph((N0, 300), (N0, 0, N0 * (1 + 1e-9))), {"A": 8})
    np.testing.assert_allclose(sfs(flat)[1:-1], 2 / np.arange(1, 8), rtol=1e-8)


def test_lineage_times_under_growth_against_tavare():
    """Exponential growth then a constant size (n = 8): E[T_k] by the change of time at the
    default and a tight tol against Tavare's formula integrated by mpmath quadrature."""
    import mpmath as mp

    n, tau = 8, 300 / 2000
    a = 2000 * math.log(25.0) / 300  # N = 5000 exp(-a t) in units of 2 N_ref = 2000

    def hazard(t):
        return 0.2 * mp.expm1(a * t) / a

    ref = _tavare_lineage_times(n, tau, hazard, 1.0, dps=30)
    g = _graph((N0, 300), (200.0, 0, 5000.0))
    times = eqx.filter_jit(lambda d: d.lineage_times())
    default = np.asarray(times(pg.from_demes(g, {"A": n}, check=False)))
    tight = np.asarray(times(pg.from_demes(g, {"A": n}, tol=1e-12, check=False)))
    np.testing.assert_allclose(default[2:], ref[2:], rtol=1e-6)
    np.testing.assert_allclose(tight[2:], ref[2:], rtol=1e-11)


def _fd_check(fn, model, *checks, rel=1e-5):
    """The gradient of ``fn`` (one backward pass) against central differences, at each
    ``(leaf, index)`` of ``checks``."""
    grads = eqx.filter_grad(fn)(model)
    for leaf, index in checks:
        g = np.asarray(leaf(grads))[index]
        x = float(np.asarray(leaf(model))[index])
        h = rel * max(abs(x), 1e-3)

        def at(v, leaf=leaf, index=index):
            arr = jnp.asarray(leaf(model)).at[index].set(v)
            return float(fn(eqx.tree_at(leaf, model, arr)))

        fd = (at(x + h) - at(x - h)) / (2 * h)
        assert np.isclose(g, fd, rtol=1e-5, atol=1e-9 * max(1.0, abs(fd))), (g, fd)


def test_gradients_against_finite_differences():
    m = _im(2, 1)
    fn = eqx.filter_jit(lambda d: d.expected_sfs()[1, 0] + 0.3 * d.tmrca().var())
    _fd_check(
        fn,
        m,
        (lambda d: d.sizes, (1, 1)),
        (lambda d: d.sizes, (0, 2)),
        (lambda d: d.breaks, (0,)),
        (lambda d: d.migration, (0, 1, 2)),
    )
    growth = pg.from_demes(_graph((N0, 300), (200.0, 0, 5000.0)), {"A": 6}, check=False)
    fg = eqx.filter_jit(lambda d: d.expected_sfs()[1])
    _fd_check(fg, growth, (lambda d: d.growth, (0, 0)), (lambda d: d.breaks, (0,)))


def _tavare_lineage_times(n, tau, c1, c2, dps=80):
    """E[T_k] (k = 0..n) for one deme, pair rate c1 on [0, tau), c2 after, from Tavare's
    (1984) alternating-sum formula for P(K_t = k) in mpmath at ``dps`` digits. ``c1`` may
    instead be the cumulative pair hazard ``Lambda(t)`` on [0, tau] (a callable), whose
    terms are then integrated by quadrature."""
    import mpmath as mp

    mp.mp.dps = dps

    def coef(i, k):  # P(K_t = k) = sum_i coef(i, k) exp(-i (i - 1) Lambda(t) / 2)
        rising = mp.rf(k, i - 1)  # k (k + 1) ... (k + i - 2)
        num = (2 * i - 1) * (-1) ** (i - k) * rising * mp.ff(n, i)
        return num / (mp.factorial(k) * mp.factorial(i - k) * mp.rf(n, i))

    def integral(rate):  # int_0^tau exp(-rate Lambda(t)) dt
        if rate == 0:
            return mp.mpf(tau)
        if callable(c1):
            return mp.quad(lambda t: mp.exp(-rate * c1(t)), [0, tau])
        return (1 - mp.exp(-rate * c1 * tau)) / (rate * c1)

    total = c1(mp.mpf(tau)) if callable(c1) else c1 * tau
    coefs = {(i, k): coef(i, k) for k in range(1, n + 1) for i in range(k, n + 1)}
    occupancy, at_tau = [mp.mpf(0)] * (n + 1), [mp.mpf(0)] * (n + 1)
    for (i, k), a in coefs.items():
        rate = mp.mpf(i * (i - 1)) / 2
        at_tau[k] += a * mp.exp(-rate * total)
        occupancy[k] += a * integral(rate)
    out = np.zeros(n + 1)
    for k in range(2, n + 1):
        after = sum(at_tau[j] for j in range(k, n + 1)) * 2 / (c2 * k * (k - 1))
        out[k] = float(occupancy[k] + after)
    return out


def test_lineage_times_large_n_against_tavare():
    """n = 200, size change: E[T_k] from the chain (expm) against the exact formula in
    high precision, and the Polanski-Kimmel SFS built from them."""
    n = 200
    m = pg.from_demes(_graph((N0, 100), (250.0, 0)), {"A": n})
    times = np.asarray(eqx.filter_jit(lambda d: d.lineage_times())(m))
    ref = _tavare_lineage_times(n, 100 / 2000, 4.0, 1.0)
    np.testing.assert_allclose(times[2:], ref[2:], rtol=1e-10)
    sfs = eqx.filter_jit(lambda d: d.expected_sfs())(m)
    np.testing.assert_allclose(sfs, pg.polanski_kimmel(n) @ ref, rtol=1e-10, atol=1e-300)


@pytest.mark.slow
def test_polanski_kimmel_against_block_counting_n20():
    """Bottleneck + growth, n = 20 (627 block-counting states): both routes to 1e-10."""
    g = _graph((N0, 300), (100.0, 200), (300.0, 0, 3000.0))
    m = pg.from_demes(g, {"A": 20})
    pk, block = eqx.filter_jit(lambda d: (d.expected_sfs(), d.expected_sfs(method="block")))(m)
    np.testing.assert_allclose(pk, block, rtol=1e-10, atol=1e-300)


def test_vmap_over_parameters():
    m = pg.from_demes(_graph((N0, 300), (100.0, 0)), {"A": 6})
    sizes = jnp.stack([m.sizes.at[0, 0].set(v) for v in [100.0, 200.0, 400.0]])
    f = eqx.filter_jit(lambda s: eqx.tree_at(lambda d: d.sizes, m, s).expected_sfs())
    batched = jax.vmap(f)(sizes)
    np.testing.assert_allclose(batched, jnp.stack([f(s) for s in sizes]), rtol=1e-13)
    assert not np.allclose(batched[0], batched[2])


def _fu_covariance(n, theta):
    """Fu (1995) closed forms: Cov[xi_i, xi_j] of site counts at constant size."""
    a = np.concatenate([[0.0, 0.0], np.cumsum(1 / np.arange(1, n + 1))])  # a[i] = sum_{k<i} 1/k

    def beta(i):
        return 2 * n / ((n - i + 1) * (n - i)) * (a[n + 1] - a[i]) - 2 / (n - i)

    sigma = np.zeros((n + 1, n + 1))
    for i in range(1, n):
        if 2 * i < n:
            sigma[i, i] = beta(i + 1)
        elif 2 * i == n:
            sigma[i, i] = 2 * (a[n] - a[i]) / (n - i) - 1 / i**2
        else:
            sigma[i, i] = beta(i) - 1 / i**2
        for j in range(1, i):
            if i + j < n:
                s = (beta(i + 1) - beta(i)) / 2
            elif i + j == n:
                s = (a[n] - a[i]) / (n - i) + (a[n] - a[j]) / (n - j)
                s -= (beta(i) + beta(j + 1)) / 2 + 1 / (i * j)
            else:
                s = (beta(j) - beta(j + 1)) / 2 - 1 / (i * j)
            sigma[i, j] = sigma[j, i] = s
    i = np.arange(n + 1)
    return theta**2 * sigma + np.diag(np.where((i > 0) & (i < n), theta / np.maximum(i, 1), 0.0))


def test_sfs_covariance_constant_size():
    """Against the block-counting PhaseType covariance and Fu's (1995) closed forms."""
    n = 7
    m = pg.from_demes(_graph((N0, 0)), {"A": n})
    cov, block, folded, sites = eqx.filter_jit(
        lambda d: (
            d.sfs_covariance(),
            d.sfs_covariance(method="block"),
            d.sfs_covariance(folded=True),
            d.sfs_covariance(mutation_rate=1.5),
        )
    )(m)
    graph = pj.models.kingman(n)
    rewards = pj.models.sfs_rewards(graph)
    dist = graph.compile()(jnp.array([1.0]))
    ref = np.zeros((n + 1, n + 1))
    ref[1:-1, 1:-1] = dist.covariance_matrix(rewards)
    np.testing.assert_allclose(cov, ref, rtol=1e-11, atol=1e-14)
    np.testing.assert_allclose(block, ref, rtol=1e-11, atol=1e-14)
    # theta / 2 = mutation rate per unit time (units of 2 N_ref)
    np.testing.assert_allclose(sites, _fu_covariance(n, 3.0), rtol=1e-11, atol=1e-14)
    fold = np.zeros((n + 1, n + 1))
    for i in range(1, n):
        fold[min(i, n - i), i] = 1.0
    ref_folded = np.asarray(dist.covariance_matrix(fold[:, 1:-1] @ rewards))
    np.testing.assert_allclose(folded, ref_folded, rtol=1e-11, atol=1e-14)


def test_topology_moments_identities():
    """sum_i b_i(k) = k and sum_i i b_i(k) = n: the tensor's sums are E[b_j(l)] scaled."""
    n = 9
    p = pg._sfs.topology_moments(n)
    w = pg.polanski_kimmel(n)
    i = np.arange(n + 1)
    for k in range(2, n + 1):
        for l in range(2, n + 1):
            np.testing.assert_allclose(p[k, l].sum(axis=0), k * w[:, l], rtol=1e-12, atol=1e-14)
            np.testing.assert_allclose(i @ p[k, l], n * w[:, l], rtol=1e-12, atol=1e-14)
            np.testing.assert_allclose(p[k, l], p[l, k].T, rtol=0, atol=0)


def test_sfs_covariance_under_size_changes():
    """Bottleneck + growth: factorised route vs the block-counting chain; the sum of all
    entries is Var[total length] (lineage-counting reward moments); IM jSFS likewise."""
    n = 6
    g = _graph((N0, 300), (100.0, 200), (300.0, 0, 3000.0))
    m = pg.from_demes(g, {"A": n}, check=False)
    fact, block, var_length = eqx.filter_jit(
        lambda d: (
            d.sfs_covariance(),
            d.sfs_covariance(method="block"),
            d.total_length().var(),
        )
    )(m)
    np.testing.assert_allclose(fact, block, rtol=1e-11, atol=1e-14)
    assert np.isclose(jnp.sum(fact), var_length, rtol=1e-11)
    joint, sites, jvar, jsfs = eqx.filter_jit(
        lambda d: (
            d.sfs_covariance(),
            d.sfs_covariance(mutation_rate=0.7),
            d.total_length().var(),
            d.expected_sfs(),
        )
    )(_im(2, 2))
    assert joint.shape == (3, 3, 3, 3)
    assert np.isclose(jnp.sum(joint), jvar, rtol=1e-11)
    np.testing.assert_allclose(
        jnp.einsum("abab->ab", sites - 0.49 * joint), 0.7 * jsfs, rtol=1e-11, atol=1e-14
    )
    with pytest.raises(ValueError, match="n <= 60"):
        pg.from_demes(_graph((N0, 0)), {"A": 61}).sfs_covariance()


def test_sfs_covariance_gradient():
    m = pg.from_demes(_graph((4 * N0, 500), (N0, 0)), {"A": 5})
    fn = eqx.filter_jit(lambda d: d.sfs_covariance()[1, 2] + 0.2 * d.sfs_covariance()[3, 3])
    _fd_check(fn, m, (lambda d: d.sizes, (0, 0)), (lambda d: d.breaks, (0,)))
