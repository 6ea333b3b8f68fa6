"""The inference target: built once, checked on concrete data before anything is compiled;
no silent wrong answers from fits (zero-probability observations, every observation out of
range, a run that has not converged)."""

import warnings

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import phasejax as pj
from phasejax import infer


@pytest.fixture(scope="module")
def erlang2():
    return pj.models.erlang(2).compile()  # density 0 at t = 0 (two phases to pass)


@pytest.fixture(scope="module")
def geometric():
    return pj.Graph.from_callback(
        lambda s: [((1,), [1.0])] if s[0] == 0 else [], (0,), n_params=1, discrete=True
    ).compile()


@pytest.mark.parametrize(
    "data, message",
    [
        ([0.5, 1.0, np.nan, 2.0], r"data\[2\] = nan is not a finite number"),
        ([0.5, np.inf], r"data\[1\] = inf is not a finite number"),
        ([0.5, -0.25, -1.0], r"data\[1\] = -0.25 is negative: data are absorption times"),
        ([], "no data"),
    ],
)
def test_bad_continuous_data_rejected_at_build(erlang2, data, message):
    with pytest.raises(ValueError, match=message):
        infer.Posterior(erlang2, jnp.asarray(data, float), prior=None)


def test_bad_discrete_data_rejected_at_build(geometric):
    with pytest.raises(ValueError, match=r"data\[1\] = 2.5 is not a whole number"):
        infer.Posterior(geometric, [1.0, 2.5, 3.0], prior=None)
    with pytest.raises(ValueError, match=r"data\[0\] = -1 is negative: data are step counts"):
        infer.Posterior(geometric, [-1, 2], prior=None)
    rewarded = infer.Likelihood(geometric, rewards=np.array([0.0, 2.0, 0.0]))
    with pytest.raises(ValueError, match=r"data\[2\] = nan .* accumulated rewards"):
        infer.Posterior(rewarded, [2.0, 4.0, np.nan], prior=None)
    post = infer.Posterior(geometric, jnp.array([1.0, 3.0]), prior=None)  # sample() floats
    assert jnp.issubdtype(post.data.dtype, jnp.integer)


def test_traced_data_checked_under_jit_and_vmap(erlang2):
    theta = jnp.array([1.3])

    def loglik(data):
        return infer.Posterior(erlang2, data, prior=None).log_likelihood(theta)

    good = jnp.array([[0.5, 1.0], [2.0, 0.1]])
    np.testing.assert_allclose(
        jax.jit(jax.vmap(loglik))(good), [loglik(good[0]), loglik(good[1])], rtol=1e-12
    )
    for bad in (jnp.array([0.5, jnp.nan]), jnp.array([-1.0, 0.5])):
        with pytest.raises(Exception, match="must be finite and >= 0"):
            jax.block_until_ready(jax.jit(loglik)(bad))
    with pytest.raises(Exception, match="must be finite and >= 0"):
        jax.block_until_ready(jax.vmap(loglik)(good.at[1, 1].set(jnp.nan)))


def test_likelihood_coercion_is_one_function(erlang2):
    lik = infer.Likelihood(pj.models.erlang(2))  # a Graph is compiled here
    assert isinstance(lik.model, pj.Model)
    post = infer.Posterior(lik, [1.0], prior=None)
    assert post.likelihood is lik
    with pytest.raises(TypeError, match="expected a phasejax Model"):
        infer.Likelihood("not a model")
    with pytest.raises(ValueError, match="out_of_range"):
        infer.Likelihood(erlang2, out_of_range="nan")


def test_zero_probability_observation_raises_naming_it(erlang2, geometric):
    """t = 0 for a model that cannot be absorbed at once: the posterior is zero everywhere.
    fit_svgd and map_estimate raise, naming the observation, instead of fitting the rest."""
    data = jnp.array([0.7, 1.2, 0.0, 2.0])
    target = infer.Posterior(erlang2, data, prior=infer.Gamma(2.0, 1.0))
    # the value itself is right (-inf for that observation only), eagerly, under jit and vmap
    per_obs = jax.jit(jax.vmap(lambda th: target.likelihood.log_prob(th, data)))(
        jnp.array([[0.5], [1.0]])
    )
    assert np.all(np.isinf(np.asarray(per_obs[:, 2]))) and np.all(
        np.isfinite(per_obs[:, [0, 1, 3]])
    )
    assert target.likelihood.log_prob(jnp.array([1.0]), data)[2] == -jnp.inf
    with pytest.raises(
        ValueError, match=r"observation 2 \(data\[2\] = 0\.0\) has log probability -inf"
    ):
        infer.fit_svgd(target, n_particles=4, steps=3)
    with pytest.raises(ValueError, match=r"observation 2 .* outside the model's support"):
        infer.map_estimate(target, jnp.array([1.0]), steps=3)
    # discrete: rewards 2 per step make odd accumulated rewards impossible
    rewarded = infer.Likelihood(geometric, rewards=np.array([0.0, 2.0, 0.0]))
    dtarget = infer.Posterior(rewarded, [2, 4, 3, 6], prior=None, transform="identity")
    with pytest.raises(ValueError, match=r"observation 2 \(data\[2\] = 3\)"):
        infer.fit_svgd(dtarget, init=jnp.array([0.4]), init_scale=0.01, n_particles=4, steps=3)


def test_every_observation_out_of_range_raises_instead_of_returning_the_prior():
    """out_of_range='-inf' where every particle's series is too long: the likelihood is -inf
    (with zero gradient) everywhere; the fit must not come back as prior draws."""
    model = pj.models.erlang(1).compile()
    lik = infer.Likelihood(model, logpdf_kwargs={"max_steps": 64}, out_of_range="-inf")
    target = infer.Posterior(lik, jnp.full(5, 300.0), prior=infer.Gamma(2.0, 1.0))
    with pytest.raises(ValueError, match="out_of_range='-inf'.*max_steps"):
        infer.fit_svgd(target, n_particles=4, steps=3)
    with pytest.raises(ValueError, match="out_of_range='-inf'"):
        infer.map_estimate(target, jnp.array([1.0]), steps=3)
    # per particle under vmap: in range the plain value, out of range -inf
    both = jax.vmap(lambda th: target.log_likelihood(th))(jnp.array([[0.01], [1.0]]))
    assert np.isfinite(both[0]) and both[1] == -jnp.inf
    # in range the guarded likelihood is the plain one
    lp = eqx.filter_jit(lambda t, th: t.log_likelihood(th))(target, jnp.array([0.01]))
    np.testing.assert_allclose(
        lp, model(jnp.array([0.01])).logpdf(jnp.full(5, 300.0), max_steps=64).sum(), rtol=1e-12
    )


def test_convergence_diagnostics_and_warning():
    """A run with a tiny learning rate is far from the fixed point (residual) though it
    barely moves (drift): it warns; the default settings converge and do not."""
    model = pj.models.erlang(1).compile()
    data = model(jnp.array([2.0])).sample(jax.random.PRNGKey(0), (40,))
    lik = infer.Likelihood(model)
    target = infer.Posterior(lik, data, prior=infer.Gamma(3.0, 1.5))
    with pytest.warns(RuntimeWarning, match="has not converged"):
        slow = infer.fit_svgd(target, n_particles=16, steps=100, optimizer=optax.adam(1e-4))
    assert not slow.converged and float(slow.residual[-1]) > 1.0
    assert float(jnp.max(slow.drift)) < 0.1  # drift alone would not have told
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        fit = infer.fit_svgd(target, n_particles=16)
    assert fit.converged and float(fit.residual[-1]) < 0.1 and float(fit.drift[0]) < 0.1
    assert fit.residual.shape == fit.trace.shape == (1000,)
    post_a, post_b = 3.0 + data.size, 1.5 + float(data.sum())
    np.testing.assert_allclose(fit.mean[0], post_a / post_b, rtol=0.02)
    np.testing.assert_allclose(fit.sd[0], np.sqrt(post_a) / post_b, rtol=0.1)


@pytest.mark.slow
def test_defaults_converge_on_kingman5():
    """The case from issue 12: Kingman n = 5, 200 observations, prior draws as initial
    particles, every fit setting at its default: sd within 10% of the exact posterior's
    (a constant Adam 1e-2 for 500 steps gave 2.7x)."""
    model = pj.models.kingman(5).compile()
    data = model(jnp.array([1.5])).sample(jax.random.PRNGKey(0), (200,))
    target = infer.Posterior(model, data, prior=infer.LogNormal(0.0, 1.0))
    grid = jnp.linspace(0.5, 3.5, 3001)
    lp = jax.jit(jax.vmap(lambda th: target.log_density_theta(th[None])))(grid)
    w = np.exp(np.asarray(lp - lp.max()))
    w /= w.sum()
    mean = float((w * grid).sum())
    sd = float(np.sqrt((w * (grid - mean) ** 2).sum()))
    fit = infer.fit_svgd(target)
    print(f"defaults on Kingman n=5: sd ratio {float(fit.sd[0]) / sd:.4f}")
    assert fit.converged
    assert abs(float(fit.mean[0]) - mean) < 0.1 * sd
    assert 0.9 < float(fit.sd[0]) / sd < 1.1
