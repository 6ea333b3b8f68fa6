"""Stiff models and large ``Lambda t``: the dense scaling-and-squaring path (`_expm`).

The oracle is mpmath's ``expm`` at 40 digits: on stiff cyclic models
``scipy.linalg.expm`` itself is off by ~1e-9 at ``Lambda t ~ 1e8`` (slow modes lost in
the squarings), and uniformization would need ~1e7 terms here (it is good to ~2e-10
relative on this model at ``Lambda t`` = 1.7e5 and 1.7e6: slow exits hide in the
diagonal ``1 - d_i / Lambda`` of the uniformized chain)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import mpmath as mp
import numpy as np
import pytest

import phasejax as pj
from phasejax import _expm

TIMES = np.array([1e-3, 1.0, 1e2, 1e4])


def _stiff_rates(n=6, seed=3):
    """Off-diagonal and exit rates, log-uniform in [1e-4, 1e4], cycles included."""
    rng = np.random.default_rng(seed)
    off = np.zeros((n, n))
    exit_rates = np.zeros(n)
    for i in range(n):
        for j in range(n):
            if i != j and rng.random() < 0.5:
                off[i, j] = 10 ** rng.uniform(-4, 4)
        if rng.random() < 0.4 or i == n - 1:
            exit_rates[i] = 10 ** rng.uniform(-4, 4)
    return off, exit_rates


def _group(rates, theta):
    """theta[0] scales the rates >= 1, theta[1] the others."""
    return np.where(rates >= 1, theta[0], theta[1]) * rates


def _graph(off, exit_rates, alpha):
    """The graph of the model, with theta = (scale of rates >= 1, scale of rates < 1)."""
    n = len(alpha)
    graph = pj.Graph(1)
    states = [graph.find_or_create_vertex([i + 1]) for i in range(n)]
    absorbing = graph.find_or_create_vertex([0])
    for i in np.flatnonzero(alpha):
        graph.starting_vertex().add_edge(states[i], alpha[i])
    for i in range(n):
        targets = [(states[j], off[i, j]) for j in np.flatnonzero(off[i])]
        if exit_rates[i] > 0:
            targets.append((absorbing, exit_rates[i]))
        for target, rate in targets:
            states[i].add_edge_parameterized(target, 0.0, _group(np.array([rate]), np.eye(2)))
    return graph


@pytest.fixture(scope="module")
def stiff():
    off, exit_rates = _stiff_rates()
    alpha = np.zeros(len(exit_rates))
    alpha[0] = 1.0
    return (off, exit_rates), alpha, _graph(off, exit_rates, alpha).compile()


def _exact(rates, alpha, t, theta=(1.0, 1.0), occupancy=False):
    """``(log pdf, sf, cdf, alpha e^{St}[, int_0^t alpha e^{Su} du])`` by mpmath (40
    digits; the diagonal summed there); occupancy from the Van Loan block
    ``[[S, I], [0, 0]]``."""
    off, exit_rates = (_group(x, theta) for x in rates)
    n = len(alpha)
    with mp.workdps(40):
        m = 2 * n if occupancy else n
        block = mp.zeros(m, m)
        for i in range(n):
            for j in range(n):
                block[i, j] = off[i, j]
            block[i, i] = -mp.fsum(list(off[i]) + [exit_rates[i]])
            if occupancy:
                block[i, n + i] = 1
        e = mp.expm(block * t)
        a = mp.matrix([list(alpha)])
        state = a * e[:n, :n]
        pdf = mp.fsum(state[i] * exit_rates[i] for i in range(n))
        sf = mp.fsum(state)
        out = (float(mp.log(pdf)), float(sf), float(1 - sf), np.array([float(x) for x in state]))
        return out + (np.array([float(x) for x in a * e[:n, n:]]),) if occupancy else out


def test_stiff_model_against_mpmath(stiff):
    """Lambda = 1.7e3, Lambda t up to 1.7e7 (terms >> 1e6): every quantity to 1e-10
    relative; "auto" chooses the dense method here."""
    rates, alpha, model = stiff
    dist = model(jnp.array([1.0, 1.0]))
    lam = float(np.max(rates[0].sum(1) + rates[1]))
    assert lam * TIMES[-1] > 1e7
    n, edges = len(alpha), model.structure.src.shape[0]
    assert _expm.choose("auto", "logpdf", n, edges, lam * TIMES, 1e-12) == "expm"
    want = [_exact(rates, alpha, t, occupancy=True) for t in TIMES]
    logpdf, sf, cdf, state, occupancy = (np.array(x) for x in zip(*want))
    np.testing.assert_allclose(dist.logpdf(TIMES), logpdf, rtol=1e-12)  # |log f| > 1: tight
    np.testing.assert_allclose(dist.sf(TIMES), sf, rtol=1e-10)
    np.testing.assert_allclose(dist.cdf(TIMES), cdf, rtol=1e-10)  # small cdf: relative
    probs = dist.transient_probability(TIMES)
    np.testing.assert_allclose(probs, state[:, : probs.shape[1]], rtol=1e-10)
    occ = dist.accumulated_occupancy(TIMES)
    np.testing.assert_allclose(occ[:, 1 : n + 1], occupancy, rtol=1e-10)
    # the explicit method gives the same executable's answer
    np.testing.assert_array_equal(dist.logpdf(TIMES, method="expm"), dist.logpdf(TIMES))


def test_far_tail_keeps_relative_accuracy(stiff):
    """log f(t) near -700 (f ~ 1e-300) and beyond (Lambda t ~ 1.7e10), and Erlang(3) at
    f = e^-20000 by the dense method, against mpmath and the closed form."""
    rates, alpha, model = stiff
    dist = model(jnp.array([1.0, 1.0]))
    t = np.array([2.8e6, 1e7])
    want = [_exact(rates, alpha, x)[0] for x in t]
    assert want[0] < -600
    np.testing.assert_allclose(dist.logpdf(t), want, rtol=1e-12)  # absolute ~1e-10 in log f
    erlang = pj.models.erlang(3).compile()
    theta, t = 2.0, np.array([0.5, 3.0, 1e4])
    exact = np.log(theta**3 * t**2 / 2) - theta * t
    got = erlang(jnp.array([theta])).logpdf(t, method="expm")
    np.testing.assert_allclose(got, exact, rtol=1e-12)


def test_auto_rule_and_method_errors():
    """Kingman n=10 (1,000 observations, Lambda t <= 900): uniformization; stiff and
    traced choices; bad method names and kinds."""
    n, edges = 45, 90  # Kingman n=10's transient states and edges, roughly
    mu = 45.0 * np.linspace(0.01, 20.0, 1000)
    assert _expm.choose("auto", "logpdf", n, edges, mu, 1e-12) == "uniformization"
    assert _expm.choose("auto", "logpdf", 6, 20, np.array([1e8]), 1e-12) == "expm"
    assert _expm.choose("auto", "logpdf", 6, 20, None, 1e-12) == "uniformization"  # traced
    assert _expm.choose("auto", "integral", 6, 20, np.array([1e8]), 1e-12) == "uniformization"
    big = _expm.EXPM_LIMIT + 1
    assert _expm.choose("auto", "sf", big, 4 * big, np.array([1e9]), 1e-12) == "uniformization"
    with pytest.raises(ValueError, match="method must be one of"):
        _expm.choose("pade", "logpdf", 6, 20, None, 1e-12)
    with pytest.raises(ValueError, match="does not compute 'integral'"):
        _expm.choose("expm", "integral", 6, 20, None, 1e-12)
    dist = pj.models.erlang(2).compile()(jnp.array([1.0]))
    with pytest.raises(ValueError, match="method must be one of"):
        dist.pdf(np.array([1.0]), method="dense")


def test_gradients_against_finite_differences(stiff):
    """d log f / d theta and d log f / dt at Lambda t = 1.7e3 and 1.7e7, against central
    differences of the mpmath oracle."""
    rates, alpha, model = stiff
    theta = jnp.array([1.0, 1.0])

    def logpdf(th, t):
        return model(th).logpdf(t, method="expm")

    times = TIMES[1::2]
    d_theta, d_t = jax.jacobian(logpdf, argnums=(0, 1))(theta, jnp.asarray(times))
    for i, x in enumerate(times):
        for k in range(2):
            h = np.eye(2)[k] * 1e-6
            fd = (_exact(rates, alpha, x, 1 + h)[0] - _exact(rates, alpha, x, 1 - h)[0]) / 2e-6
            np.testing.assert_allclose(d_theta[i, k], fd, rtol=1e-7)
        h = 1e-6 * x
        fd = (_exact(rates, alpha, x + h)[0] - _exact(rates, alpha, x - h)[0]) / (2 * h)
        np.testing.assert_allclose(d_t[i, i], fd, rtol=1e-7)


def test_gradients_match_uniformization(stiff):
    """Where both methods run (Lambda t <= 900): the cdf and its gradient agree."""
    _, _, model = stiff
    theta = jnp.array([0.7, 1.5])
    t = jnp.array([1e-3, 0.05, 0.5])

    def both(method):
        return jax.value_and_grad(lambda th: model(th).cdf(t, method=method).sum())(theta)

    (v_u, g_u), (v_e, g_e) = both("uniformization"), both("expm")
    np.testing.assert_allclose(v_e, v_u, rtol=1e-11)
    np.testing.assert_allclose(g_e, g_u, rtol=1e-9)


def test_traced_auto_stays_uniformization(stiff, monkeypatch):
    """Under tracing "auto" never builds the dense kernel (traced only, nothing compiled)."""
    _, _, model = stiff

    def refuse(*args):
        raise AssertionError("dense kernel traced")

    monkeypatch.setattr(_expm, "transient", refuse)
    theta, t = jnp.array([1.0, 1.0]), jnp.asarray(TIMES)
    jax.make_jaxpr(lambda th: model(th).sf(t))(theta)
    jax.make_jaxpr(lambda t: model(theta).sf(t))(t)
    with pytest.raises(AssertionError, match="dense kernel traced"):
        jax.make_jaxpr(lambda th: model(th).sf(t, method="expm"))(theta)


def test_jit_vmap_and_limits(stiff):
    """method="expm" under jit and vmap equals the eager loop; t = inf takes its limits;
    Lambda t past 2^64 raises under jit."""
    _, _, model = stiff
    thetas = jnp.array([[1.0, 1.0], [0.5, 2.0], [3.0, 0.3]])
    t = jnp.asarray(TIMES)
    batched = jax.vmap(lambda th: model(th).logpdf(t, method="expm"))(thetas)
    looped = np.stack([model(th).logpdf(TIMES) for th in thetas])
    np.testing.assert_allclose(batched, looped, rtol=1e-13)
    jitted = jax.jit(lambda th, t: model(th).logpdf(t, method="expm"))
    np.testing.assert_allclose(jitted(thetas[1], t), looped[1], rtol=1e-13)
    dist = model(thetas[0])
    inf = np.array([1e-3, 1.0, 1e2, np.inf])  # the shapes and plans of the tests above
    assert dist.cdf(inf, method="expm")[3] == 1.0 and dist.sf(inf, method="expm")[3] == 0.0
    assert dist.logpdf(inf, method="expm")[3] == -np.inf
    np.testing.assert_allclose(
        dist.accumulated_occupancy(inf, method="expm")[3], dist.expected_sojourn(), rtol=1e-10
    )
    with pytest.raises(Exception, match="Lambda t up to 2"):
        jax.block_until_ready(jitted(thetas[0], jnp.array([1e18])))


def test_times_in_chunks(stiff):
    """Times not filling whole chunks (padded, then cut) give the unchunked answer."""
    _, _, model = stiff
    dist = model(jnp.array([1.0, 1.0]))
    plan = _expm.make_plan("logpdf", 6, len(TIMES), float(np.max(dist.diag)) * TIMES[-1])
    args = (dist.rate, dist.diag, dist.alpha, dist.exit, model.structure.src)
    args += (model.structure.dst, jnp.max(dist.diag), jnp.asarray(TIMES))
    chunked = _expm.transient(plan._replace(chunk=3), *args)[:, 0]
    np.testing.assert_allclose(chunked, dist.logpdf(TIMES), rtol=1e-14)
