"""SFS likelihoods and observed-information standard errors (phasejax.popgen)."""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from scipy import stats
from scipy.special import gammaln

from phasejax import infer

demes = pytest.importorskip("demes")
pg = pytest.importorskip("phasejax.popgen")


def _two_epoch():
    b = demes.Builder(time_units="generations")
    b.add_deme("A", epochs=[dict(start_size=1000, end_time=400), dict(start_size=250)])
    return pg.from_demes(b.resolve(), {"A": 8})


def test_logliks_against_scipy():
    expected = np.asarray(eqx.filter_jit(lambda d: d.expected_sfs())(_two_epoch()))
    rng = np.random.default_rng(1)
    observed = rng.poisson(50 * expected).astype(float)
    inner = slice(1, -1)
    ref = stats.poisson.logpmf(observed[inner], 50 * expected[inner]).sum()
    assert np.isclose(pg.poisson_loglik(observed, jnp.asarray(expected), 50.0), ref, rtol=1e-12)
    p = expected[inner] / expected[inner].sum()
    ref = stats.multinomial.logpmf(observed[inner], observed[inner].sum(), p)
    assert np.isclose(pg.multinomial_loglik(observed, jnp.asarray(expected)), ref, rtol=1e-12)
    # profiled mutation rate: the Poisson likelihood at mu_hat = sum x / sum E
    mu = observed[inner].sum() / expected[inner].sum()
    assert np.isclose(
        pg.poisson_loglik(observed, jnp.asarray(expected)),
        pg.poisson_loglik(observed, jnp.asarray(expected), mu),
        rtol=1e-12,
    )
    # folded: the upper half is ignored
    folded = pg.fold(jnp.asarray(expected))
    obs_folded = np.asarray(pg.fold(jnp.asarray(observed)))
    mask = pg.sfs_mask(expected.shape, folded=True)
    ref = stats.poisson.logpmf(obs_folded[mask], 50 * np.asarray(folded)[mask]).sum()
    assert np.isclose(pg.poisson_loglik(obs_folded, folded, 50.0, folded=True), ref, rtol=1e-12)
    with pytest.raises(ValueError, match="shape"):
        pg.poisson_loglik(observed[:-1], jnp.asarray(expected))


@pytest.mark.slow
def test_standard_errors_and_hessian():
    """Mutation rate alone: I = sum x / mu^2 at the MLE, SE = sqrt(mu_hat / sum E). A size
    and the mutation rate: the Hessian by jax.hessian equals central differences of the
    gradient (symmetric)."""
    model = _two_epoch()
    expected = eqx.filter_jit(lambda d: d.expected_sfs())(model)
    observed = np.round(80 * np.asarray(expected))
    total_e = float(jnp.sum(expected))
    mu_hat = observed.sum() / total_e
    se = pg.standard_errors(lambda p: pg.poisson_loglik(observed, expected, p[0]), [mu_hat])
    assert np.isclose(se[0], np.sqrt(mu_hat / total_e), rtol=1e-10)

    def loglik(p):
        d = eqx.tree_at(lambda m: m.sizes, model, model.sizes.at[0, 0].set(p[0]))
        return pg.poisson_loglik(observed, d.expected_sfs(), p[1])

    def grad_twice(x):
        g = jax.grad(loglik)(x)
        return g, g

    @jax.jit  # one program: jax.hessian's jacfwd(grad) with the gradient as its aux output
    def derivatives(x):
        hess, grad = jax.jacfwd(grad_twice, has_aux=True)(x)
        return hess, grad, pg.standard_errors(loglik, x)

    x = jnp.array([250.0, 80.0])
    hess, _, se = derivatives(x)
    steps = np.array([1e-3, 1e-4]) * np.asarray(x)
    grad = lambda x: derivatives(x)[1]
    fd = np.stack(
        [
            (grad(x.at[i].add(steps[i])) - grad(x.at[i].add(-steps[i]))) / (2 * steps[i])
            for i in range(2)
        ]
    )
    np.testing.assert_allclose(hess, fd, rtol=1e-5)
    np.testing.assert_allclose(hess, hess.T, rtol=1e-10)
    assert np.all(np.isfinite(se))


# ---------------------------------------------------------------- standard errors, closed forms


def _rate_only_blocks(rng, n_blocks=40, overdispersion=None):
    """Blocks of a fixed expected SFS with the mutation rate ``mu`` as the only parameter:
    ``l_b(mu) = sum_a x_ba log(w_b mu E_a) - w_b mu E_a``. Optionally gamma-mixed block
    rates (linked sites: counts overdispersed within a block)."""
    expected = jnp.asarray(2.0 / np.arange(1, 9))
    expected = jnp.concatenate([jnp.zeros(1), expected, jnp.zeros(1)])
    weights = rng.uniform(0.5, 1.5, n_blocks)
    weights /= weights.sum()
    mu = 300.0
    scale = (
        np.ones(n_blocks)
        if overdispersion is None
        else rng.gamma(overdispersion, 1 / overdispersion, n_blocks)
    )
    observed = rng.poisson(mu * (weights * scale)[:, None] * np.asarray(expected)[None, :])
    observed = jnp.asarray(observed, float)

    def loglik(p):
        return jax.vmap(lambda x, w: pg.poisson_loglik(x, expected, w * p[0]))(
            observed, jnp.asarray(weights)
        )

    return loglik, observed, expected, weights


def test_godambe_closed_form():
    """One parameter: H = S / mu^2, J = sum_b (S_b / mu - w_b sum E)^2 at the MLE
    mu_hat = S / sum E, so the sandwich variance is J / H^2."""
    loglik, observed, expected, weights = _rate_only_blocks(np.random.default_rng(2), 30, 2.0)
    s_b = np.asarray(observed.sum(axis=1))
    total_e = float(expected.sum())
    mu_hat = s_b.sum() / total_e
    h = s_b.sum() / mu_hat**2
    j = np.sum((s_b / mu_hat - weights * total_e) ** 2)
    cov = pg.godambe_covariance(loglik, [mu_hat])
    np.testing.assert_allclose(cov, [[j / h**2]], rtol=1e-10)
    se = pg.standard_errors(loglik, [mu_hat], method="godambe")
    np.testing.assert_allclose(se, [np.sqrt(j) / h], rtol=1e-10)
    np.testing.assert_allclose(
        pg.standard_errors(loglik, [mu_hat]), [np.sqrt(mu_hat / total_e)], rtol=1e-10
    )
    # overdispersed blocks (linked sites): the sandwich is wider than the Hessian's
    assert se[0] > 1.5 * np.sqrt(mu_hat / total_e)
    with pytest.raises(ValueError, match=r"per-block log-likelihoods of shape \(B,\)"):
        pg.godambe_covariance(lambda p: jnp.sum(loglik(p)), [mu_hat])
    with pytest.raises(ValueError, match="method must be"):
        pg.standard_errors(loglik, [mu_hat], method="sandwich")
    with pytest.raises(ValueError, match="needs key"):
        pg.standard_errors(loglik, [mu_hat], method="bootstrap")


def test_block_bootstrap_closed_form_and_reproducible():
    """Each refit of the rate-only model has the closed form
    mu* = sum_b c_b S_b / (sum E sum_b c_b w_b); the same key gives the same resamples."""
    loglik, observed, expected, weights = _rate_only_blocks(np.random.default_rng(5), 25)
    s_b = np.asarray(observed.sum(axis=1))
    mu_hat = s_b.sum() / float(expected.sum())
    key = jax.random.PRNGKey(7)
    boot = pg.block_bootstrap(loglik, [mu_hat], key, 50)
    counts = np.asarray(boot.counts)
    assert counts.shape == (50, 25) and np.all(counts.sum(axis=1) == 25)
    exact = counts @ s_b / (float(expected.sum()) * (counts @ weights))
    np.testing.assert_allclose(boot.estimates[:, 0], exact, rtol=1e-10)
    assert float(jnp.max(boot.decrement)) < 1e-12
    again = pg.block_bootstrap(loglik, [mu_hat], key, 50)
    np.testing.assert_array_equal(again.estimates, boot.estimates)
    other = pg.block_bootstrap(loglik, [mu_hat], jax.random.PRNGKey(8), 50)
    assert not np.array_equal(np.asarray(other.counts), counts)
    np.testing.assert_allclose(
        pg.standard_errors(loglik, [mu_hat], method="bootstrap", key=key, n_resamples=50),
        [np.std(exact, ddof=1)],
        rtol=1e-10,
    )


# ---------------------------------------------------------------- SFSPosterior


def _constant(n, size=2000.0):
    b = demes.Builder(time_units="generations")
    b.add_deme("A", epochs=[dict(start_size=size)])
    return pg.from_demes(b.resolve(), {"A": n})


_LBFGS = optax.lbfgs()  # one instance: part of the compiled program's static configuration


def _lbfgs_mle(target, init, steps=60):
    return infer.map_estimate(target, jnp.asarray(init), optimizer=_LBFGS, steps=steps)


def test_constant_size_mle_is_watterson():
    """Constant size N: E[xi_i] = theta / i with theta = 4 N u, so the MLE of u (N known)
    is Watterson's S / (4 N a_n), that of N (u known) S / (4 u a_n); the profiled rate
    is S / sum E."""
    n, size = 10, 2000.0
    demo = _constant(n, size)
    rng = np.random.default_rng(3)
    observed = np.zeros(n + 1)
    observed[1:n] = rng.poisson(40.0 / np.arange(1, n))
    s, a_n = observed.sum(), np.sum(1.0 / np.arange(1, n))
    u_hat = s / (4 * size * a_n)
    rate_only = pg.SFSPosterior(demo, observed, params={}, mutation_rate="free", prior=None)
    assert rate_only.names == ("mutation_rate",)
    fit = _lbfgs_mle(rate_only, [1e-3])
    np.testing.assert_allclose(fit.params, [u_hat], rtol=1e-8)
    # observed information of u: S / u^2
    np.testing.assert_allclose(
        rate_only.standard_errors(fit.params), [u_hat / np.sqrt(s)], rtol=1e-6
    )
    size_only = pg.SFSPosterior(
        demo, observed, params={"N": ("sizes", (0, "A"))}, mutation_rate=1e-3, prior=None
    )
    fit = _lbfgs_mle(size_only, [500.0])
    np.testing.assert_allclose(fit.params, [s / (4e-3 * a_n)], rtol=1e-8)
    np.testing.assert_allclose(
        pg.profiled_mutation_rate(observed, demo.expected_sfs()) / demo.scale, u_hat, rtol=1e-12
    )


@pytest.fixture(scope="module")
def size_change():
    b = demes.Builder(time_units="generations")
    b.add_deme("A", epochs=[dict(start_size=4000, end_time=500), dict(start_size=1000)])
    demo = pg.from_demes(b.resolve(), {"A": 8})
    params = {"N_recent": ("sizes", (0, "A")), "N_anc": ("sizes", (1, "A")), "T": ("breaks", 0)}
    return demo, params


def test_map_recovers_truth_from_expected_sfs(size_change):
    """The expected SFS as data: the likelihood peaks at the truth (all three demographic
    parameters identifiable with a known mutation rate)."""
    demo, params = size_change
    u = 2e-3
    truth = pg.DemographyParameters(demo, params).initial()
    np.testing.assert_array_equal(truth, [1000.0, 4000.0, 500.0])
    data = np.asarray(demo.expected_sfs()) * u * demo.scale * 50
    target = pg.SFSPosterior(demo, data, params=params, mutation_rate=50 * u, prior=None)
    fit = _lbfgs_mle(target, [2000.0, 2000.0, 1000.0], steps=100)
    np.testing.assert_allclose(fit.params, truth, rtol=1e-7)
    # multinomial (u-free): the shape of the spectrum alone fixes the ratios N_anc / N_recent
    # and T / N_recent, not the scale; with N_anc known the rest follows
    multi = pg.SFSPosterior(
        demo,
        data,
        params={"N_recent": params["N_recent"], "T": params["T"]},
        likelihood="multinomial",
        prior=None,
    )
    fit = _lbfgs_mle(multi, [2000.0, 1000.0], steps=100)
    np.testing.assert_allclose(fit.params, [1000.0, 500.0], rtol=1e-6)


def test_svgd_matches_the_conjugate_posterior():
    """u free, N known, flat prior on u: the posterior of u is Gamma(S + 1, rate 4 N a_n)
    (Poisson likelihood u^S exp(-u 4 N a_n)); fit_svgd takes the SFS target as it takes
    an infer.Posterior."""
    n, size = 8, 2000.0
    demo = _constant(n, size)
    observed = np.zeros(n + 1)
    observed[1:n] = np.random.default_rng(4).poisson(60.0 / np.arange(1, n))
    s, rate = observed.sum(), 4 * size * np.sum(1.0 / np.arange(1, n))
    target = pg.SFSPosterior(demo, observed, params={}, mutation_rate="free", prior=None)
    fit = infer.fit_svgd(
        target, n_particles=64, steps=400, init=jnp.array([s / rate]), progress=False
    )
    np.testing.assert_allclose(fit.mean, [(s + 1) / rate], rtol=0.02)
    np.testing.assert_allclose(fit.sd, [np.sqrt(s + 1) / rate], rtol=0.1)


def test_loglik_gradients_and_hessian_against_finite_differences(size_change):
    """All four parameters (sizes, time, mutation rate), Poisson and multinomial, away
    from the optimum: grad by central differences, the Hessian by central differences of
    the gradient (and symmetric)."""
    demo, params = size_change
    data = np.round(np.asarray(demo.expected_sfs()) * 40 * demo.scale * 1e-3 * 1.3)
    poisson = pg.SFSPosterior(demo, data, params=params, mutation_rate="free", prior=None)
    multi = pg.SFSPosterior(demo, data, params=params, likelihood="multinomial", prior=None)
    x = jnp.array([1300.0, 3500.0, 620.0, 0.04])

    @jax.jit
    def grads(x):
        return jax.grad(poisson.log_likelihood)(x), jax.grad(multi.log_likelihood)(x[:3])

    hess = jax.jit(jax.hessian(poisson.log_likelihood))(x)
    lik = jax.jit(lambda x: (poisson.log_likelihood(x), multi.log_likelihood(x[:3])))
    g_p, g_m = grads(x)
    for i in range(4):
        h = 1e-4 * x[i]
        up, down = x.at[i].add(h), x.at[i].add(-h)
        fd = (lik(up)[0] - lik(down)[0]) / (2 * h)
        np.testing.assert_allclose(g_p[i], fd, rtol=1e-6, atol=1e-9)
        if i < 3:
            fd = (lik(up)[1] - lik(down)[1]) / (2 * h)
            np.testing.assert_allclose(g_m[i], fd, rtol=1e-6, atol=1e-9)
        fd = (grads(up)[0] - grads(down)[0]) / (2 * h)
        np.testing.assert_allclose(hess[i], fd, rtol=1e-5, atol=1e-12)
    np.testing.assert_allclose(hess, hess.T, rtol=1e-10)


@pytest.mark.slow
def test_godambe_and_bootstrap_agree_with_hessian_for_independent_blocks(size_change):
    """Blocks simulated independently (Poisson) from a known size change: at the MLE the
    sandwich and block-bootstrap standard errors estimate the same as the observed
    information, within their Monte-Carlo error (sandwich: about 1/sqrt(2 B) = 7%
    relative for B = 100 blocks; bootstrap with 100 resamples: about 10%)."""
    demo, params = size_change
    free = {"N_recent": params["N_recent"], "N_anc": params["N_anc"]}  # T known
    u, n_blocks = 0.2, 100
    mean = np.asarray(demo.expected_sfs()) * u * demo.scale / n_blocks
    blocks = np.random.default_rng(11).poisson(mean, (n_blocks, mean.size)).astype(float)
    target = pg.SFSPosterior(demo, blocks, params=free, mutation_rate=u, prior=None)
    fit = _lbfgs_mle(target, [1000.0, 4000.0], steps=100)
    grad, hessian, godambe = jax.jit(  # one program (eagerly: compiled op by op)
        lambda p: (
            jax.grad(target.log_likelihood)(p),
            target.standard_errors(p),
            target.standard_errors(p, method="godambe"),
        )
    )(fit.params)
    assert float(jnp.max(jnp.abs(grad * fit.params))) < 1e-6
    boot = target.bootstrap(fit.params, jax.random.PRNGKey(0), 100)
    assert float(jnp.max(boot.decrement)) < 1e-8
    np.testing.assert_allclose(godambe / hessian, 1.0, atol=0.25)
    np.testing.assert_allclose(boot.se / hessian, 1.0, atol=0.3)
    # and the estimate is within a few standard errors of the truth
    assert np.all(np.abs(np.asarray(fit.params) - [1000.0, 4000.0]) < 4 * np.asarray(hessian))


def test_sfs_target_errors(size_change):
    demo, params = size_change
    data = np.ones(9)
    with pytest.raises(ValueError, match=r"observed SFS has shape \(8,\)"):
        pg.SFSPosterior(demo, data[:-1], params=params, prior=None)
    with pytest.raises(ValueError, match=r"entry \(0, 3\) = -1.0 is negative"):
        pg.SFSPosterior(
            demo,
            np.where(np.arange(9) == 3, -1.0, 1.0),
            params=params,
            prior=None,
        )
    with pytest.raises(ValueError, match="free of the mutation rate"):
        pg.SFSPosterior(
            demo, data, params=params, likelihood="multinomial", mutation_rate=1.0, prior=None
        )
    with pytest.raises(ValueError, match="mutation_rate must be a positive number"):
        pg.SFSPosterior(demo, data, params=params, mutation_rate=-1.0, prior=None)
    with pytest.raises(ValueError, match="no deme 'B'"):
        pg.DemographyParameters(demo, {"N": ("sizes", (0, "B"))})
    with pytest.raises(ValueError, match=r"index \(5, 'A'\) is outside sizes\(2, 1\)"):
        pg.DemographyParameters(demo, {"N": ("sizes", (5, "A"))})
    with pytest.raises(ValueError, match="ties entries of sizes with different values"):
        pg.DemographyParameters(demo, {"N": ("sizes", [(0, 0), (1, 0)])})
    with pytest.raises(ValueError, match="give \\(field, index\\)"):
        pg.DemographyParameters(demo, {"N": ("size", 0)})
    with pytest.raises(ValueError, match="no free parameters"):
        pg.SFSPosterior(demo, data, params={}, prior=None)
    with pytest.raises(ValueError, match="block_weights must be 2 positive"):
        pg.SFSPosterior(demo, np.ones((2, 9)), params=params, block_weights=[1.0, 0.0], prior=None)
    with pytest.raises(TypeError, match="expected an infer.Posterior"):
        infer.fit_svgd(demo, steps=1)
    # a function theta -> Demography works like DemographyParameters
    setter = pg.DemographyParameters(demo, params)
    by_function = pg.SFSPosterior(lambda th: setter(th), data, params=list(params), prior=None)
    theta = jnp.array([900.0, 3000.0, 400.0])
    np.testing.assert_allclose(
        by_function.log_likelihood(theta),
        pg.SFSPosterior(demo, data, params=params, prior=None).log_likelihood(theta),
        rtol=1e-13,
    )


def test_blocks_sum_to_the_whole(size_change):
    """Poisson block log-likelihoods sum to that of the summed spectrum up to a constant
    (``sum x_b log w_b`` and the factorials), also with the mutation rate profiled."""
    demo, params = size_change
    rng = np.random.default_rng(9)
    blocks = rng.poisson(3.0, (3, 9)).astype(float)
    blocks[:, [0, 8]] = 0
    w = np.array([0.2, 0.3, 0.5])
    theta = jnp.array([900.0, 3000.0, 400.0])
    kw = dict(params=params, mutation_rate=0.01, prior=None)
    split = pg.SFSPosterior(demo, blocks, block_weights=w, **kw).log_likelihood(theta)
    whole = pg.SFSPosterior(demo, blocks.sum(0), **kw).log_likelihood(theta)
    inner = blocks[:, 1:-1]
    constant = (
        np.sum(inner.sum(1) * np.log(w))
        - gammaln(inner + 1).sum()
        + gammaln(inner.sum(0) + 1).sum()
    )
    np.testing.assert_allclose(split - whole, constant, rtol=1e-10)
    profiled = pg.SFSPosterior(demo, blocks, block_weights=w, params=params, prior=None)
    np.testing.assert_allclose(
        profiled.log_likelihood(theta) - constant,
        pg.poisson_loglik(
            blocks.sum(0), pg.DemographyParameters(demo, params)(theta).expected_sfs(), None
        ),
        rtol=1e-10,
    )


def test_numpyro_sfs_distribution():
    numpyro = pytest.importorskip("numpyro")
    dist = numpyro.distributions
    expected = _constant(6).expected_sfs()
    d = pg.SFSDistribution(expected, 30.0)
    x = np.array([0.0, 50, 30, 17, 16, 9, 0])
    ref = stats.poisson.logpmf(x[1:-1], 30.0 * np.asarray(expected)[1:-1]).sum()
    np.testing.assert_allclose(d.log_prob(x), ref, rtol=1e-12)
    draws = d.sample(jax.random.PRNGKey(0), (4000,))
    assert draws.shape == (4000, 7) and np.all(np.asarray(draws)[:, [0, 6]] == 0)
    np.testing.assert_allclose(draws.mean(0)[1:-1], d.mean[1:-1], rtol=0.05)

    # NUTS on the rate with a Gamma(2, 0.01) prior: the posterior is Gamma(2 + S, 0.01 + sum E)
    def model(obs):
        rate = numpyro.sample("rate", dist.Gamma(2.0, 0.01))
        numpyro.sample("sfs", pg.SFSDistribution(expected, rate), obs=obs)

    mcmc = numpyro.infer.MCMC(
        numpyro.infer.NUTS(model), num_warmup=300, num_samples=2000, progress_bar=False
    )
    mcmc.run(jax.random.PRNGKey(1), jnp.asarray(x))
    rate = np.asarray(mcmc.get_samples()["rate"])
    a, b = 2 + x.sum(), 0.01 + float(jnp.sum(expected))
    np.testing.assert_allclose(rate.mean(), a / b, rtol=0.03)
    np.testing.assert_allclose(rate.std(), np.sqrt(a) / b, rtol=0.1)
