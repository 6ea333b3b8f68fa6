"""numpyro: PhaseTypeDistribution under NUTS against the conjugate posterior."""

import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import phasejax as pj
from phasejax import infer


def test_optional_imports_are_lazy_and_explained():
    code = textwrap.dedent(
        """
        import sys
        sys.modules["numpyro"] = None  # as if not installed
        import phasejax.infer as infer
        from phasejax.infer import *  # noqa: F403
        assert "matplotlib" not in sys.modules
        try:
            infer.PhaseTypeDistribution
        except ImportError as err:
            assert "pip install numpyro" in str(err), err
            print("OK")
        """
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and "OK" in proc.stdout, proc.stderr[-3000:]


@pytest.fixture
def numpyro():
    return pytest.importorskip("numpyro")


def test_distribution_log_prob_and_sample(numpyro):
    model = pj.models.kingman(4).compile()
    theta = jnp.array([1.3])
    x = jnp.array([0.4, 1.0, 2.2])

    @jax.jit
    def log_probs(theta, x):
        d = infer.PhaseTypeDistribution(model, theta)
        far = infer.PhaseTypeDistribution(model, jnp.array([1e6]))
        far_ref = model(jnp.array([1e6])).logpdf(x)
        return (
            d.log_prob(x),
            model(theta).logpdf(x),
            d.mean,
            model(theta).mean(),
            far.log_prob(x),
            far_ref,
        )

    lp, ref, mean, ref_mean, far, far_ref = log_probs(theta, x)
    np.testing.assert_allclose(lp, ref, rtol=1e-12)
    np.testing.assert_allclose(mean, ref_mean, rtol=1e-12)
    # no step cap: a proposal far out gets its exact (very negative) log density
    assert np.all(np.asarray(far) < -1e5)
    np.testing.assert_allclose(far, far_ref, rtol=1e-10)
    draws = infer.PhaseTypeDistribution(model, theta).sample(jax.random.PRNGKey(0), (1000,))
    assert draws.shape == (1000,)
    np.testing.assert_allclose(draws.mean(), ref_mean, rtol=0.1)
    # batched theta: batch_shape (2,), values broadcast against it
    thetas = jnp.array([[1.0], [2.0]])
    values = jnp.array([[0.5, 0.5], [1.5, 1.5]])
    db = infer.PhaseTypeDistribution(model, thetas)
    assert db.batch_shape == (2,)
    lp = jax.jit(lambda th, v: infer.PhaseTypeDistribution(model, th).log_prob(v))(thetas, values)
    assert lp.shape == (2, 2)
    for i in range(2):
        for j in range(2):
            np.testing.assert_allclose(
                lp[i, j], model(thetas[j]).logpdf(values[i, j : j + 1])[0], rtol=1e-12
            )
    assert db.sample(jax.random.PRNGKey(1), (5,)).shape == (5, 2)
    with pytest.raises(ValueError, match="theta must have shape"):
        infer.PhaseTypeDistribution(model, jnp.array([1.0, 2.0]))


def test_log_prob_of_inadmissible_theta_is_minus_inf(numpyro):
    """NUTS's step-size search proposes theta = 0, inf, NaN: -inf (rejected), a zero
    gradient, no error; admissible thetas (also under vmap beside bad ones) unchanged."""
    model = pj.models.kingman(4).compile()
    x = jnp.array([0.4, 1.0, 2.2])
    log_prob = jax.jit(
        jax.vmap(lambda th: infer.PhaseTypeDistribution(model, th).log_prob(x).sum())
    )
    thetas = jnp.array([[0.0], [jnp.inf], [jnp.nan], [-1.0], [1.3]])
    lp = log_prob(thetas)
    assert np.all(np.asarray(lp[:4]) == -np.inf)
    np.testing.assert_allclose(lp[4], model(jnp.array([1.3])).logpdf(x).sum(), rtol=1e-12)
    grads = jax.jit(
        jax.vmap(jax.grad(lambda th: infer.PhaseTypeDistribution(model, th).log_prob(x).sum()))
    )(thetas)
    assert np.all(np.asarray(grads[:4]) == 0.0)
    h = 1e-6
    fd = (
        model(jnp.array([1.3 + h])).logpdf(x).sum() - model(jnp.array([1.3 - h])).logpdf(x).sum()
    ) / (2 * h)
    np.testing.assert_allclose(grads[4, 0], fd, rtol=1e-6)
    # with out_of_range="raise" the bad theta is an error, as for model(theta)
    with pytest.raises(Exception, match="an edge rate is (negative|NaN)"):
        jax.block_until_ready(
            infer.PhaseTypeDistribution(
                infer.Likelihood(model, out_of_range="raise"), jnp.array([jnp.nan])
            ).log_prob(x)
        )


def test_nuts_exponential_matches_conjugate(numpyro):
    import numpyro.distributions as dist
    from numpyro.infer import MCMC, NUTS

    model = pj.models.erlang(1).compile()
    a, b = 3.0, 1.5
    data = model(jnp.array([2.0])).sample(jax.random.PRNGKey(0), (40,))
    likelihood = infer.Likelihood(model, logpdf_kwargs={"max_steps": 128}, out_of_range="-inf")

    def numpyro_model(obs):
        rate = numpyro.sample("rate", dist.Gamma(a, b))
        numpyro.sample(
            "obs",
            infer.PhaseTypeDistribution(likelihood, rate[None]),
            obs=obs,
        )

    mcmc = MCMC(NUTS(numpyro_model), num_warmup=300, num_samples=600, progress_bar=False)
    mcmc.run(jax.random.PRNGKey(1), data)
    rate = mcmc.get_samples()["rate"]
    post_a, post_b = a + data.size, b + float(data.sum())
    np.testing.assert_allclose(rate.mean(), post_a / post_b, rtol=0.05)
    np.testing.assert_allclose(rate.std(), np.sqrt(post_a) / post_b, rtol=0.2)


def test_discrete_rewards(numpyro):
    """Geometric chain (leave w.p. p each step) earning 2 per step: Y = 2 T,
    P(Y = 2k) = (1 - p)^(k - 1) p, odd values impossible; E[Y] = 2 / p."""
    model = pj.Graph.from_callback(
        lambda s: [((1,), [1.0])] if s[0] == 0 else [], (0,), n_params=1, discrete=True
    ).compile()
    rewards = np.array([0.0, 2.0, 0.0])
    p = 0.3
    values = jnp.array([2, 4, 6, 3])
    likelihood = infer.Likelihood(model, rewards=rewards, out_of_range="-inf")
    lp = jax.jit(lambda th: infer.PhaseTypeDistribution(likelihood, th).log_prob(values))(
        jnp.array([p])
    )
    expected = [np.log((1 - p) ** (k - 1) * p) for k in (1, 2, 3)] + [-np.inf]
    np.testing.assert_allclose(lp, expected, rtol=1e-12)
    draws = infer.PhaseTypeDistribution(likelihood, jnp.array([p])).sample(
        jax.random.PRNGKey(0), (4000,)
    )
    assert np.all(np.asarray(draws) % 2 == 0)
    np.testing.assert_allclose(np.mean(draws), 2 / p, rtol=0.06)  # sd of the mean ~ 1.3%


@pytest.mark.parametrize("discrete", [False, True])
def test_validate_args_flags_values_outside_the_support(numpyro, discrete):
    """NaN, negative (and, discrete, non-integer) values: with validate_args=True numpyro's
    out-of-support warning (eagerly) and log_prob -inf, as numpyro's own distributions do;
    under jit and vmap (no warning can be raised there) still -inf. Valid values unchanged."""
    if discrete:
        model = pj.Graph.from_callback(
            lambda s: [((1,), [1.0])] if s[0] == 0 else [], (0,), n_params=1, discrete=True
        ).compile()
        good, bad = jnp.array([1.0, 3.0]), jnp.array([jnp.nan, -1.0, 2.5])
        theta = jnp.array([0.4])
        ref = model(theta).logpmf(good.astype(int))
    else:
        model = pj.models.erlang(2).compile()
        good, bad = jnp.array([0.5, 1.5]), jnp.array([jnp.nan, -1.0])
        theta = jnp.array([1.3])
        ref = model(theta).logpdf(good)
    d = infer.PhaseTypeDistribution(model, theta, validate_args=True)
    with pytest.warns(UserWarning, match="Out-of-support"):
        lp = d.log_prob(bad)
    assert np.all(np.asarray(lp) == -np.inf)
    np.testing.assert_allclose(d.log_prob(good), ref, rtol=1e-12)

    def f(th, v):
        return infer.PhaseTypeDistribution(model, th, validate_args=True).log_prob(v)

    assert np.all(np.asarray(jax.jit(f)(theta, bad)) == -np.inf)
    batch = jax.vmap(f, in_axes=(None, 0))(theta, jnp.stack([bad[:2], good]))
    assert np.all(np.asarray(batch[0]) == -np.inf)
    np.testing.assert_allclose(batch[1], ref, rtol=1e-12)


def test_accepts_a_posterior_target(numpyro):
    model = pj.models.erlang(1).compile()
    data = jnp.array([0.5, 1.0])
    target = infer.Posterior(
        infer.Likelihood(model, logpdf_kwargs={"max_steps": 128}), data, prior=None
    )
    d = infer.PhaseTypeDistribution(target, jnp.array([2.0]))
    assert d.likelihood is target.likelihood
    np.testing.assert_allclose(d.log_prob(data), model(jnp.array([2.0])).logpdf(data))
