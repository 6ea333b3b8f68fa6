"""jit, vmap and grad: every quantity differentiated against central finite differences
of the dense numpy oracle, for every solver; batching against Python loops of the
oracle; compiled models reused across thetas without recompiling."""

from __future__ import annotations

import functools

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import phasejax as pj
from helpers.oracle import (
    graph_matrices,
    library_quantities,
    oracle_bundle,
    oracle_bundle_from,
    ph_cov_matrix,
    ph_moments,
    restrict,
)

# keys compared in the derivative tests (every quantity of the bundle)
KEYS = [
    "mean",
    "mean_r",
    "moments_r",
    "moments_1",
    "var_r",
    "cov",
    "cov01",
    "wait_r",
    "wait_1",
    "sojourn",
]
DKEYS = KEYS + ["factorial"]


def _positive_rewards(V, seed, m=3):
    # strictly positive (zero rewards are covered in test_moments.py / test_models.py)
    return np.random.default_rng(seed).uniform(0.2, 2.0, (m, V))


def _flat(d, keys):
    return jnp.concatenate([jnp.ravel(d[k]) for k in keys])


def _flat_np(d, keys):
    return np.concatenate([np.ravel(np.asarray(d[k], dtype=np.float64)) for k in keys])


def _central_fd(f, theta, rel=1e-5):
    theta = np.asarray(theta, dtype=np.float64)
    cols = []
    for j in range(theta.size):
        h = rel * max(abs(theta[j]), 1e-2)
        tp, tm = theta.copy(), theta.copy()
        tp[j] += h
        tm[j] -= h
        cols.append((f(tp) - f(tm)) / (2 * h))
    return np.stack(cols, axis=-1)


def _check_jacobian(jac, fd, sizes, keys, rtol=1e-6):
    """Per quantity: |J - FD| <= rtol * (|FD| + max |FD| of that quantity)."""
    start = 0
    for key, size in zip(keys, sizes):
        j, f = jac[start : start + size], fd[start : start + size]
        scale = max(np.abs(f).max(), 1e-300)
        np.testing.assert_allclose(j, f, rtol=rtol, atol=rtol * scale, err_msg=key)
        start += size


# -- cases: (graph builder, thetas, solvers) -------------------------------------------------
def _small_dph(acyclic=False):
    """A small DPH (cyclic unless ``acyclic``) with parameterised probabilities and a
    parameterised defect."""
    g = pj.Graph(1, discrete=True, n_params=2)
    v = [g.find_or_create_vertex([i]).index for i in range(1, 6)]
    end = g.find_or_create_vertex([0]).index
    g.add_edge(0, v[0], 0.5)
    g.add_edge(0, v[2], 0.1, [0.2, 0.0])
    g.add_edge(0, end, 0.0, [0.0, 0.1])  # parameterised start -> absorption
    edges = [
        (0, 1, 0.2, [0.1, 0.0]),
        (1, 2, 0.3, None),
        (2, 0, 0.1, [0.0, 0.2]),
        (2, 3, 0.2, None),
        (3, 4, 0.1, [0.1, 0.1]),
        (4, 1, 0.3, None),
        (3, 1, 0.05, None),
    ]
    for a, b, base, coef in edges:
        if not (acyclic and b < a):
            g.add_edge(v[a], v[b], base, coef)
    for a, base, coef in [
        (1, 0.1, [0.05, 0.0]),
        (3, 0.2, None),
        (4, 0.1, [0.0, 0.1]),
        (0, 0.05, None),
    ]:
        g.add_edge(v[a], end, base, coef)
    return g


GRAD_CASES = {
    "coxian": (lambda: pj.models.coxian(3), [[0.5, 1.2, 0.3, 0.9, 1.4], [2.0, 0.4, 1.1, 0.2, 0.7]]),
    "kingman": (lambda: pj.models.kingman(5), [[1.0], [0.3]]),
    "two_island": (
        lambda: pj.models.two_island(2, 1),
        [[1.0, 0.5, 0.3, 0.7], [0.4, 2.0, 1.5, 0.2]],
    ),
    "rabbits": (lambda: pj.models.rabbit_flooding(3), [[2.0, 3.0], [0.5, 1.5]]),
    "dph": (_small_dph, [[0.5, 1.0], [1.0, 0.2], [0.1, 0.7]]),
    "dph_acyclic": (lambda: _small_dph(acyclic=True), [[0.5, 1.0], [0.1, 0.7]]),
}
# GMRES solves compile slowly (each is a GMRES loop, and reverse mode adds the
# transposed ones): its cases use the quantities that exercise distinct solves only.
LITE = ["moments_r", "sojourn"]
GRAD_SOLVERS = [
    ("coxian", "sweep", KEYS),
    ("dph_acyclic", "sweep", DKEYS),
    ("two_island", "dense", KEYS),
    ("dph", "dense", DKEYS),
    ("rabbits", "gmres", LITE),
    ("dph", "gmres", ["factorial", "cov"]),
]


@functools.cache
def _graph(name):
    return GRAD_CASES[name][0]()


@pytest.mark.parametrize(
    "name, solver, keys", GRAD_SOLVERS, ids=[f"{c[0]}-{c[1]}" for c in GRAD_SOLVERS]
)
def test_jacobian_of_every_quantity_against_finite_differences(name, solver, keys):
    graph = _graph(name)
    model = graph.compile(solver=solver)
    V = graph.vertices_length()
    R = _positive_rewards(V, seed=7)
    Rj = jnp.asarray(R)

    def lib(theta):
        return _flat(library_quantities(model, theta, Rj, lite=solver == "gmres", keys=keys), keys)

    jac_rev = jax.jit(jax.jacrev(lib))

    def ref(theta):
        alpha, M, vs = graph_matrices(graph, theta)
        return _flat_np(oracle_bundle_from(alpha, M, vs, V, graph.discrete, R), keys)

    sizes = [np.size(v) for v in (oracle_bundle(graph, GRAD_CASES[name][1][0], R)[k] for k in keys)]
    for theta in GRAD_CASES[name][1]:
        fd = _central_fd(ref, theta)
        jac = np.asarray(jac_rev(jnp.asarray(theta, dtype=jnp.float64)))
        assert jac.shape == fd.shape
        _check_jacobian(jac, fd, sizes, keys)


def test_forward_mode_matches_reverse_mode():
    graph = _graph("two_island")
    model = graph.compile(solver="dense")
    R = jnp.asarray(_positive_rewards(graph.vertices_length(), seed=3))

    def lib(theta):
        return _flat(library_quantities(model, theta, R, keys=LITE), LITE)

    theta = jnp.array([1.0, 0.5, 0.3, 0.7])
    fwd = jax.jit(jax.jacfwd(lib))(theta)
    rev = jax.jit(jax.jacrev(lib))(theta)
    np.testing.assert_allclose(np.asarray(fwd), np.asarray(rev), rtol=1e-10, atol=1e-12)


def test_grad_kingman_mean_closed_form_vmapped():
    """d E[T] / d theta = -2 (1 - 1/n) / theta^2, under jit(vmap(grad))."""
    n = 8
    model = pj.models.kingman(n).compile()
    thetas = jnp.linspace(0.2, 3.0, 7)[:, None]
    g = jax.jit(jax.vmap(jax.grad(lambda t: model(t).mean())))(thetas)
    np.testing.assert_allclose(
        np.asarray(g)[:, 0], -2 * (1 - 1 / n) / np.asarray(thetas[:, 0]) ** 2, rtol=1e-12
    )


def test_custom_rate_fn_chain_rule():
    """rate_fn = C @ exp(theta) (log-parameterisation): grad = exp(theta) * grad in rates."""
    graph = pj.models.two_island(2, 1)
    linear = graph.compile(solver="dense")
    logged = graph.compile(solver="dense", rate_fn=lambda th, c: c @ jnp.exp(th))
    log_theta = jnp.log(jnp.array([1.0, 0.5, 0.3, 0.7]))
    v_lin, g_lin = jax.jit(jax.value_and_grad(lambda t: linear(t).var()))(jnp.exp(log_theta))
    v_log, g_log = jax.jit(jax.value_and_grad(lambda t: logged(t).var()))(log_theta)
    np.testing.assert_allclose(float(v_log), float(v_lin), rtol=1e-13)
    np.testing.assert_allclose(
        np.asarray(g_log), np.asarray(g_lin) * np.exp(np.asarray(log_theta)), rtol=1e-11
    )
    alpha, S, vs = graph_matrices(graph, np.exp(np.asarray(log_theta)))
    m1, m2 = ph_moments(alpha, S, np.ones(len(alpha)), 2)
    np.testing.assert_allclose(float(v_log), m2 - m1**2, rtol=1e-12)


# -- vmap ------------------------------------------------------------------------------------------------------
def _thetas_two_island(k):
    rng = np.random.default_rng(0)
    return rng.uniform(0.2, 2.0, (k, 4))


@pytest.mark.parametrize("solver", ["dense", "gmres"])
def test_vmap_over_100_thetas(solver):
    graph = pj.models.two_island(2, 1)
    model = graph.compile(solver=solver)
    sfs = pj.models.sfs_rewards(graph, n=3)
    sfs_j = jnp.asarray(sfs)
    thetas = _thetas_two_island(100)

    @jax.jit
    @jax.vmap
    def f(theta):
        d = model(theta)
        if solver == "gmres":  # fewer solves to compile
            return d.moments(2), d.expected_sojourn()
        return d.moments(2), d.covariance_matrix(sfs_j), d.expected_sojourn()

    out = [np.asarray(x) for x in f(jnp.asarray(thetas))]
    moments, soj, cov = out[0], out[-1], (out[1] if len(out) == 3 else None)
    assert moments.shape == (100, 2) and soj.shape == (100, graph.vertices_length())
    tol = 1e-9 if solver == "gmres" else 1e-10
    for i, theta in enumerate(thetas):
        alpha, S, vs = graph_matrices(graph, theta)
        m1, m2 = ph_moments(alpha, S, np.ones(len(alpha)), 2)
        np.testing.assert_allclose(moments[i], [m1, m2], rtol=tol)
        if cov is not None:
            np.testing.assert_allclose(
                cov[i], ph_cov_matrix(alpha, S, restrict(sfs, vs)), rtol=tol, atol=tol
            )
        np.testing.assert_allclose(soj[i][vs], alpha @ np.linalg.inv(-S), rtol=tol, atol=tol)


def test_vmap_sweep_and_dph_over_100_thetas():
    kingman = pj.models.kingman(6).compile()
    thetas = jnp.linspace(0.1, 5.0, 100)[:, None]
    means, moments = jax.jit(jax.vmap(lambda t: (kingman(t).mean(), kingman(t).moments(3))))(thetas)
    graph = pj.models.kingman(6)
    for i, theta in enumerate(np.asarray(thetas)):
        alpha, S, vs = graph_matrices(graph, theta)
        np.testing.assert_allclose(
            np.asarray(moments[i]), ph_moments(alpha, S, np.ones(len(alpha)), 3), rtol=1e-10
        )
    np.testing.assert_allclose(
        np.asarray(means), 2 * (1 - 1 / 6) / np.asarray(thetas[:, 0]), rtol=1e-12
    )

    dph = _graph("dph")
    model = dph.compile(solver="dense")
    rng = np.random.default_rng(1)
    th = rng.uniform(0.0, 1.0, (100, 2))
    fact = jax.jit(jax.vmap(lambda t: model(t).factorial_moments(2)))(jnp.asarray(th))
    for i, theta in enumerate(th):
        alpha, T, _ = graph_matrices(dph, theta)
        U = np.linalg.inv(np.eye(len(T)) - T)
        # E[tau] = alpha U 1, E[tau (tau-1)] = 2 alpha T U^2 1
        want = [alpha @ U @ np.ones(len(T)), 2 * alpha @ T @ U @ U @ np.ones(len(T))]
        np.testing.assert_allclose(np.asarray(fact[i]), want, rtol=1e-10)


def test_vmap_over_rewards_and_thetas_nested():
    graph = pj.models.kingman(5)
    model = graph.compile()
    sfs = jnp.asarray(pj.models.sfs_rewards(graph))
    thetas = jnp.array([[0.5], [1.0], [2.0]])
    out = jax.jit(jax.vmap(lambda t: jax.vmap(model(t).mean)(sfs)))(thetas)
    want = (2 / np.arange(1, 5))[None, :] / np.asarray(thetas)
    np.testing.assert_allclose(np.asarray(out), want, rtol=1e-12)


# -- jit and reuse ------------------------------------------------------------------------------------------------
def test_jit_matches_eager():
    graph = pj.models.rabbit_flooding(3)
    model = graph.compile(solver="dense")
    theta = jnp.array([1.5, 0.5])
    R = jnp.asarray(_positive_rewards(graph.vertices_length(), 2))
    eager = model(theta).mean(R[0])
    jitted = jax.jit(lambda t: model(t).mean(R[0]))(theta)
    np.testing.assert_allclose(float(eager), float(jitted), rtol=1e-13)


@pytest.mark.parametrize("solver", ["sweep", "dense"])
def test_compiled_model_reused_without_recompiling(solver):
    graph = pj.models.erlang(3)
    model = graph.compile(solver=solver)
    traces = []

    @jax.jit
    def f(theta):
        traces.append(1)  # Python side effect: runs once per trace
        return model(theta).mean()

    for lam in (0.5, 1.0, 2.0, 3.0, 7.0):
        np.testing.assert_allclose(float(f(jnp.array([lam]))), 3 / lam, rtol=1e-10)
    # one trace means one compilation (jit compiles only what it traces); JAX's private
    # `_cache_size()` is not used: its fast-path cache can be evicted in a long test session
    assert len(traces) == 1

    # the model as an argument (a pytree): still one trace for new thetas
    traced_with_model = []

    @eqx.filter_jit
    def g(m, theta):
        traced_with_model.append(1)
        return m(theta).var()

    for lam in (0.5, 2.0, 4.0):
        np.testing.assert_allclose(float(g(model, jnp.array([lam]))), 3 / lam**2, rtol=1e-10)
    assert len(traced_with_model) == 1


def test_grad_reuse_without_recompiling():
    model = pj.models.two_island(2, 1).compile()
    traces = []

    @jax.jit
    def dvar(theta):
        traces.append(1)
        return jax.grad(lambda t: model(t).var())(theta)

    for theta in _thetas_two_island(4):
        dvar(jnp.asarray(theta))
    assert len(traces) == 1


def test_float32_follows_theta_dtype():
    """Quantities follow the dtype of theta (x64 enabled globally here)."""
    model = pj.models.erlang(3).compile()
    m32 = jax.jit(lambda t: model(t).mean())(jnp.array([2.0], dtype=jnp.float32))
    m64 = jax.jit(lambda t: model(t).mean())(jnp.array([2.0], dtype=jnp.float64))
    assert m32.dtype == jnp.float32 and m64.dtype == jnp.float64
    np.testing.assert_allclose(float(m32), 1.5, rtol=1e-6)
