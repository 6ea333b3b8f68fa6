"""Theta-gradients of log-densities from the forward series (`phasejax._tangents`): against
Van Loan's block exponential (``scipy.linalg.expm``) and central differences on random
chains whose coefficients have both signs, with the reverse-mode fallback (initial vector
or times differentiated) checked the same way; the likelihood's gradient runs no adjoint
pass, and a second derivative raises."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy.linalg import expm

import phasejax as pj
from helpers.oracle import graph_matrices, hypoexponential_log_pdf
from phasejax import _uniformization

TIMES = np.array([0.02, 0.3, 1.0, 2.5, 6.0, 40.0])  # 40: a far tail (log f ~ -50)


def random_linear_graph(rng, n: int = 6, p: int = 2, start_coefficients: bool = False):
    """A random cyclic chain with rates ``base + c . theta`` where the coefficients take
    both signs (every rate stays positive for theta in [0.5, 1.5]^p); every state exits."""
    graph = pj.Graph(1)
    for v in range(1, n + 2):
        graph.find_or_create_vertex([v])
    absorbing = n + 1

    def weights():
        return rng.uniform(1.6, 3.0), rng.uniform(-0.5, 0.5, p)

    for i in range(1, n + 1):
        graph.add_edge(i, absorbing, *weights())
        for j in range(1, n + 1):
            if i != j and rng.random() < 0.5:
                graph.add_edge(i, j, *weights())
    for v in (1, 2):  # initial mass <= 1 for theta <= 1.5
        graph.add_edge(0, v, 0.2, rng.uniform(0.0, 0.1, p) if start_coefficients else np.zeros(p))
    return graph


def van_loan_log_pdf_gradient(graph, theta, t):
    """``(log f(t), d log f / d theta, d log f / dt)`` from dense matrices: the derivative
    of ``alpha e^{St} s`` along ``theta_i`` by the block exponential
    ``exp(t [[S, dS], [0, S]])`` (rates are affine in theta: ``dS = S(theta + e_i) - S(theta)``)."""
    alpha, S, _ = graph_matrices(graph, theta)
    n = S.shape[0]
    exit_ = -S.sum(axis=1)
    f = np.array([alpha @ expm(S * ti) @ exit_ for ti in t])
    grads = []
    for i in range(len(theta)):
        alpha_i, S_i, _ = graph_matrices(graph, theta + np.eye(len(theta))[i])
        dS, d_alpha = S_i - S, alpha_i - alpha
        block = np.block([[S, dS], [np.zeros_like(S), S]])
        df = []
        for ti in t:
            E = expm(block * ti)
            df.append(
                alpha @ E[:n, n:] @ exit_
                + alpha @ E[:n, :n] @ (-dS.sum(axis=1))
                + d_alpha @ E[:n, :n] @ exit_
            )
        grads.append(np.array(df) / f)
    dt = np.array([alpha @ expm(S * ti) @ S @ exit_ for ti in t]) / f
    return np.log(f), np.stack(grads, axis=1), dt


@pytest.mark.parametrize("seed, lump", [(0, False), (1, True)])
def test_gradient_against_van_loan_and_differences(seed, lump):
    rng = np.random.default_rng(seed)
    graph = random_linear_graph(rng)
    model = graph.compile(lump=lump)
    for theta in (np.array([0.6, 1.4]), np.array([1.3, 0.7])):
        log_f, grad, _ = van_loan_log_pdf_gradient(graph, theta, TIMES)
        per_point = jax.jacrev(lambda th: model(th).logpdf(TIMES))(jnp.asarray(theta))
        np.testing.assert_allclose(model(jnp.asarray(theta)).logpdf(TIMES), log_f, rtol=1e-11)
        np.testing.assert_allclose(per_point, grad, rtol=1e-9, atol=1e-11)
        # central differences of the library's own log-likelihood
        loglik = jax.jit(lambda th: jnp.sum(model(th).logpdf(TIMES)))
        h = 1e-5
        fd = [(loglik(theta + h * e) - loglik(theta - h * e)) / (2 * h) for e in np.eye(theta.size)]
        np.testing.assert_allclose(jax.grad(loglik)(jnp.asarray(theta)), fd, rtol=1e-7)
    # a batch of thetas (one uniformization rate shared) gives each theta's gradient
    thetas = jnp.array([[0.6, 1.4], [1.3, 0.7], [1.0, 1.0]])
    batched = jax.vmap(jax.grad(lambda th: jnp.sum(model(th).logpdf(TIMES))))(thetas)
    for theta, row in zip(np.asarray(thetas), np.asarray(batched)):
        np.testing.assert_allclose(
            row, van_loan_log_pdf_gradient(graph, theta, TIMES)[1].sum(axis=0), rtol=1e-9
        )


def test_reverse_mode_where_more_than_theta_is_differentiated():
    """A theta-dependent initial vector, and the times: the engine's adjoint serves them."""
    graph = random_linear_graph(np.random.default_rng(3), start_coefficients=True)
    model = graph.compile()
    theta = np.array([0.8, 1.2])
    _, grad, dt = van_loan_log_pdf_gradient(graph, theta, TIMES)
    per_point = jax.jacrev(lambda th: model(th).logpdf(TIMES))(jnp.asarray(theta))
    np.testing.assert_allclose(per_point, grad, rtol=1e-9, atol=1e-11)
    dist = model(jnp.asarray(theta))
    d_dt = jax.vmap(jax.grad(lambda t: dist.logpdf(t)))(jnp.asarray(TIMES))
    np.testing.assert_allclose(d_dt, dt, rtol=1e-9)


def test_likelihood_gradient_runs_no_adjoint(monkeypatch):
    """Kingman's log-likelihood gradient in theta comes from the forward series alone
    (the engine's backward kernel is never built), exact against the closed form."""

    def no_adjoint(cfg):
        raise AssertionError("the adjoint pass ran")

    jax.clear_caches()
    monkeypatch.setattr(_uniformization, "_backward_kernel", no_adjoint)
    n, theta = 8, 1.7
    model = pj.models.kingman(n).compile()
    t = np.asarray(model(jnp.array([1.0])).sample(jax.random.key(0), (200,)))
    value, grad = jax.value_and_grad(lambda th: jnp.sum(model(th).logpdf(t)))(jnp.array([theta]))
    k = np.arange(2, n + 1)
    log_f, dlog_f_dt = hypoexponential_log_pdf(theta * k * (k - 1) / 2, t)
    # all rates scale with theta: f_theta(t) = theta f_1(theta t)
    np.testing.assert_allclose(value, log_f.sum(), rtol=1e-12)
    np.testing.assert_allclose(grad[0], np.sum(1 / theta + t / theta * dlog_f_dt), rtol=1e-10)


def test_second_derivative_raises():
    model = pj.models.kingman(5).compile()
    loglik = lambda th: jnp.sum(model(th).logpdf(jnp.array([0.5, 1.0])))
    with pytest.raises(NotImplementedError, match="second derivatives"):
        jax.hessian(loglik)(jnp.array([1.0]))


def test_eager_gradient_compiles_for_latency(monkeypatch):
    """Outside any jit the kernels of a small chain (the Jacobian, values such as the
    log-density and cdf) are the programs compiled for latency (`LATENCY_OPTIONS`); under
    jit or vmap, or for a chain over ``DENSE_STATES`` states, they are not. Both give the
    same numbers."""
    from phasejax._distribution import PhaseType

    calls = []
    latency_kernel = PhaseType._transient_kernel_latency

    def counted(self, t, kind, *rest):
        calls.append(kind)
        return latency_kernel(self, t, kind, *rest)

    monkeypatch.setattr(PhaseType, "_transient_kernel_latency", counted)
    model = pj.models.kingman(6).compile()
    t = np.asarray(model(jnp.array([1.0])).sample(jax.random.key(1), (50,)))
    loglik = lambda th: jnp.sum(model(th).logpdf(t))
    theta = jnp.array([1.4])
    eager = jax.value_and_grad(loglik)(theta)
    assert calls == ["dlogpdf"]
    jitted = jax.jit(jax.value_and_grad(loglik))(theta)
    batched = jax.vmap(jax.value_and_grad(loglik))(theta[None])
    assert calls == ["dlogpdf"]
    value = loglik(theta)
    cdf = model(theta).cdf(t)
    assert calls == ["dlogpdf", "logpdf", "cdf"]
    pj.models.kingman(10).compile(lump=False)(theta).cdf(t)  # 41 states
    assert calls == ["dlogpdf", "logpdf", "cdf"]
    for other in (jitted, (batched[0][0], batched[1][0])):
        np.testing.assert_allclose(eager[0], other[0], rtol=1e-13)
        np.testing.assert_allclose(eager[1], other[1], rtol=1e-12)
    np.testing.assert_allclose(value, eager[0], rtol=1e-13)
    np.testing.assert_allclose(cdf, jax.jit(lambda th: model(th).cdf(t))(theta), rtol=1e-13)


@pytest.mark.parametrize("times", [[0.0, 1.0], [np.inf, 1.0], [1e-8, 1.0]])
def test_special_times_match_the_adjoint(times):
    """f(0) = 0 (log f = -inf) and t = inf contribute no derivative, a tiny t its exact one
    (Kingman n = 5 near 0: f ~ t^3 prod(rates), d log f / d theta = 4 / theta): the forward
    mode (eager) and the adjoint (jit) agree."""
    model = pj.models.kingman(5).compile()
    t = np.array(times)
    per_point = lambda th: model(th).logpdf(t)
    theta = jnp.array([1.2])
    eager, jitted = jax.jacrev(per_point)(theta), jax.jit(jax.jacrev(per_point))(theta)
    np.testing.assert_allclose(eager, jitted, rtol=1e-11)
    if times[0] == 1e-8:
        np.testing.assert_allclose(eager[0, 0], 4 / 1.2, rtol=1e-6)
    else:
        assert eager[0, 0] == 0.0


def test_float32_theta_and_hand_edited_distributions():
    """A float32 theta under x64 keeps float32 throughout (the projections too); a
    distribution whose diag is not its rates' totals (edited by hand) takes the adjoint:
    its gradient equals the jitted one."""
    import equinox as eqx

    model = pj.models.rabbit_flooding(3).compile()
    t = jnp.array([0.7, 2.0])
    theta32 = jnp.array([0.7, 1.9], jnp.float32)
    with pytest.warns(UserWarning, match="float32"):
        g32 = jax.grad(lambda x: model(x).logpdf(t).sum())(theta32)
    g64 = jax.jit(jax.grad(lambda x: model(x).logpdf(t).sum()))(theta32.astype(jnp.float64))
    assert g32.dtype == jnp.float32
    np.testing.assert_allclose(g32, g64, rtol=1e-4)
    dist = model(jnp.array([0.7, 1.9]))
    scaled_diag = lambda s: eqx.tree_at(lambda d: d.diag, dist, dist.diag * s).logpdf(t).sum()
    stale_diag = lambda x: eqx.tree_at(lambda d: d.linear.theta, dist, x).logpdf(t).sum()
    for f, x in ((scaled_diag, 1.0), (stale_diag, jnp.array([0.9, 1.5]))):
        eager, jitted = jax.value_and_grad(f)(x), jax.jit(jax.value_and_grad(f))(x)
        np.testing.assert_allclose(eager[0], jitted[0], rtol=1e-12)
        np.testing.assert_allclose(eager[1], jitted[1], rtol=1e-10)
