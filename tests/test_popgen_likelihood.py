"""SFS likelihoods and observed-information standard errors (phasejax.popgen)."""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

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

    x = jnp.array([250.0, 80.0])
    hess = jax.jit(jax.hessian(loglik))(x)
    grad = jax.jit(jax.grad(loglik))
    steps = np.array([1e-3, 1e-4]) * np.asarray(x)
    fd = np.stack(
        [
            (grad(x.at[i].add(steps[i])) - grad(x.at[i].add(-steps[i]))) / (2 * steps[i])
            for i in range(2)
        ]
    )
    np.testing.assert_allclose(hess, fd, rtol=1e-5)
    np.testing.assert_allclose(hess, hess.T, rtol=1e-10)
    assert np.all(np.isfinite(pg.standard_errors(loglik, x)))
