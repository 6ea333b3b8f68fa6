"""The model zoo: structure against the documented specification, and every quantity
of every model, for every solver, against dense numpy oracles (tests/helpers/oracle.py)."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import phasejax as pj
from helpers.oracle import assert_bundle_close, library_bundle, oracle_bundle, random_rewards

# -- the documented transition rules, written out independently -----------------------------


def _spec_erlang(k):
    def rates(s, th):
        return {} if s[0] == k else {(s[0] + 1,): th[0]}

    return rates


def _spec_coxian(k):
    def rates(s, th):
        i = s[0]
        if i == k:
            return {}
        out = {(k,): th[k - 1 + i]}
        if i < k - 1:
            out[(i + 1,)] = th[i]
        return out

    return rates


def _spec_mm1(c):
    def rates(s, th):
        k = s[0]
        if k == c + 1:
            return {}
        out = {(k + 1,): th[0]}
        if k > 0:
            out[(k - 1,)] = th[1]
        return out

    return rates


def _spec_birth_death(m):
    def rates(s, th):
        i = s[0]
        if i == 0:
            return {}
        out = {(i - 1,): th[1] * i}
        if i < m:
            out[(i + 1,)] = th[0] * i
        return out

    return rates


def _spec_rabbits(n):
    def rates(s, th):
        left, right = s
        out = {}

        def add(t, r):
            out[t] = out.get(t, 0.0) + r

        if left:
            add((left - 1, right + 1), float(left))
            add((0, right), th[0])
        if right:
            add((left + 1, right - 1), float(right))
            add((left, 0), th[1])
        return out

    return rates


def _spec_kingman(n):
    """Block counting: every pair of lineages merges at rate theta."""

    def rates(s, th):
        if sum(s) <= 1:
            return {}
        out = {}
        blocks = [size for size in range(1, n + 1) for _ in range(s[size - 1])]
        for a in range(len(blocks)):
            for b in range(a + 1, len(blocks)):
                new = list(s)
                new[blocks[a] - 1] -= 1
                new[blocks[b] - 1] -= 1
                new[blocks[a] + blocks[b] - 1] += 1
                out[tuple(new)] = out.get(tuple(new), 0.0) + th[0]
        return out

    return rates


def _spec_two_island(n):
    def rates(s, th):
        if sum(s) <= 1:
            return {}
        out = {}
        for deme in range(2):
            off = deme * n
            blocks = [size for size in range(1, n + 1) for _ in range(s[off + size - 1])]
            for a in range(len(blocks)):
                for b in range(a + 1, len(blocks)):
                    new = list(s)
                    new[off + blocks[a] - 1] -= 1
                    new[off + blocks[b] - 1] -= 1
                    new[off + blocks[a] + blocks[b] - 1] += 1
                    out[tuple(new)] = out.get(tuple(new), 0.0) + th[deme]
            for size in range(1, n + 1):
                for _ in range(s[off + size - 1]):
                    new = list(s)
                    new[off + size - 1] -= 1
                    new[(1 - deme) * n + size - 1] += 1
                    out[tuple(new)] = out.get(tuple(new), 0.0) + th[2 + deme]
        return out

    return rates


def _spec_matrices(start, rates, theta):
    """(alpha, S, states) by breadth-first search over the specification."""
    order, index, queue = [], {}, [tuple(start)]
    index[tuple(start)] = 0
    order.append(tuple(start))
    while queue:
        s = queue.pop(0)
        for t in rates(s, theta):
            if t not in index:
                index[t] = len(order)
                order.append(t)
                queue.append(t)
    transient = [s for s in order if rates(s, theta)]
    pos = {s: i for i, s in enumerate(transient)}
    S = np.zeros((len(transient), len(transient)))
    for s in transient:
        for t, r in rates(s, theta).items():
            S[pos[s], pos[s]] -= r
            if t in pos:
                S[pos[s], pos[t]] += r
    alpha = np.zeros(len(transient))
    alpha[pos[tuple(start)]] = 1.0
    return alpha, S, transient, len(order)


SPEC_CASES = [
    ("erlang", lambda: pj.models.erlang(4), (0,), _spec_erlang(4), [1.7]),
    ("coxian", lambda: pj.models.coxian(3), (0,), _spec_coxian(3), [0.5, 0.7, 1.1, 1.3, 1.9]),
    ("mm1", lambda: pj.models.mm1_capacity(5), (0,), _spec_mm1(5), [1.2, 0.8]),
    ("birth_death", lambda: pj.models.birth_death(6, 2), (2,), _spec_birth_death(6), [0.9, 1.4]),
    ("rabbits", lambda: pj.models.rabbit_flooding(3), (3, 0), _spec_rabbits(3), [2.0, 4.0]),
    ("kingman", lambda: pj.models.kingman(6), (6, 0, 0, 0, 0, 0), _spec_kingman(6), [1.3]),
    (
        "two_island",
        lambda: pj.models.two_island(2, 1),
        (2, 0, 0, 1, 0, 0),
        _spec_two_island(3),
        [1.0, 2.0, 0.3, 0.6],
    ),
]


@pytest.mark.parametrize(
    "name, build, start, spec, theta", SPEC_CASES, ids=[c[0] for c in SPEC_CASES]
)
def test_model_matrices_match_specification(name, build, start, spec, theta):
    graph = build()
    theta = np.asarray(theta)
    alpha, S, states, n_states = _spec_matrices(start, spec, theta)
    assert graph.vertices_length() == n_states + 1
    mats = graph.as_matrices(theta)
    got = {tuple(s): i for i, s in enumerate(mats.states.tolist())}
    assert set(got) == set(states)
    perm = np.array([got[s] for s in states])
    np.testing.assert_allclose(mats.matrix[np.ix_(perm, perm)], S, rtol=1e-14, atol=1e-14)
    np.testing.assert_array_equal(mats.alpha[perm], alpha)
    assert graph.n_params == theta.size


def test_kingman_total_out_rate():
    graph = pj.models.kingman(9)
    mats = graph.as_matrices(np.array([0.7]))
    k = mats.states.sum(axis=1)
    np.testing.assert_allclose(-np.diag(mats.matrix), 0.7 * k * (k - 1) / 2, rtol=1e-15)


def test_two_island_total_out_rate():
    graph = pj.models.two_island(3, 2)
    theta = np.array([1.1, 0.4, 0.3, 0.9])
    mats = graph.as_matrices(theta)
    k1, k2 = mats.states[:, :5].sum(axis=1), mats.states[:, 5:].sum(axis=1)
    want = (
        theta[0] * k1 * (k1 - 1) / 2 + theta[1] * k2 * (k2 - 1) / 2 + theta[2] * k1 + theta[3] * k2
    )
    np.testing.assert_allclose(-np.diag(mats.matrix), want, rtol=1e-14)


def test_sfs_rewards():
    graph = pj.models.kingman(5)
    R = pj.models.sfs_rewards(graph)
    assert R.shape == (4, graph.vertices_length()) and R.dtype == np.float64
    np.testing.assert_array_equal(R, graph.states()[:, :4].T)
    structured = pj.models.two_island(2, 2)
    Rs = pj.models.sfs_rewards(structured, n=4)
    states = structured.states()
    np.testing.assert_array_equal(Rs, (states[:, :3] + states[:, 4:7]).T)


@pytest.mark.parametrize(
    "build, arg",
    [
        (pj.models.kingman, 1),
        (pj.models.erlang, 0),
        (pj.models.coxian, 0),
        (pj.models.mm1_capacity, 0),
        (pj.models.rabbit_flooding, 0),
    ],
)
def test_model_argument_checks(build, arg):
    with pytest.raises(ValueError):
        build(arg)


def test_model_argument_checks_two_args():
    with pytest.raises(ValueError, match="at least 2"):
        pj.models.two_island(1, 0)
    with pytest.raises(ValueError, match="initial"):
        pj.models.birth_death(3, 4)


# -- every quantity of every model, every solver, against the dense oracle ------------------
MODELS = {
    "kingman": (lambda: pj.models.kingman(6), [[1.0], [0.37], [2.5]], True),
    "erlang": (lambda: pj.models.erlang(5), [[1.3], [0.2]], True),
    "coxian": (
        lambda: pj.models.coxian(4),
        [[0.5, 1.2, 2.0, 0.3, 0.9, 1.4, 2.2], [2.0, 0.1, 0.7, 1.0, 0.05, 0.3, 3.0]],
        True,
    ),
    "two_island": (
        lambda: pj.models.two_island(3, 2),
        [[1.0, 0.5, 0.3, 0.7], [2.0, 1.0, 1.5, 0.1]],
        False,
    ),
    "rabbit_flooding": (lambda: pj.models.rabbit_flooding(4), [[2.0, 3.0], [0.5, 1.5]], False),
    "mm1_capacity": (lambda: pj.models.mm1_capacity(8), [[1.0, 1.5], [2.0, 0.7]], False),
    "birth_death": (lambda: pj.models.birth_death(10, 3), [[0.8, 1.0], [1.5, 1.0]], False),
}


def _cases():
    for name, (_, _, acyclic) in MODELS.items():
        yield pytest.param(name, "dense", id=f"{name}-dense")
        if acyclic:
            yield pytest.param(name, "sweep", id=f"{name}-sweep")
        # GMRES compiles slowly: on the cyclic models and one acyclic one (Kingman);
        # test_moments.py checks it on Erlang / exponential closed forms
        if not acyclic or name == "kingman":
            yield pytest.param(name, "gmres", id=f"{name}-gmres")


@functools.cache
def _graph(name):
    return MODELS[name][0]()


@functools.cache
def _bundle(name, solver):
    return library_bundle(_graph(name).compile(solver=solver), lite=solver == "gmres")


@pytest.mark.parametrize("name, solver", list(_cases()))
def test_model_against_dense_oracle(name, solver):
    graph = _graph(name)
    model = graph.compile(solver=solver)
    expected_solver = {"dense": pj.DenseLU, "sweep": pj.LevelSweep, "gmres": pj.GMRES}[solver]
    assert isinstance(model.solver, expected_solver)
    f = _bundle(name, solver)
    # GMRES stops on a residual of rtol=1e-12 (not a forward error); with the moment
    # recursion compounding k solves the forward error can exceed 1e-10, so 1e-9.
    rtol = 1e-9 if solver == "gmres" else 1e-10
    for i, theta in enumerate(MODELS[name][1]):
        R = random_rewards(graph.vertices_length(), i)
        got = f(jnp.asarray(theta, dtype=jnp.float64), jnp.asarray(R))
        assert_bundle_close(got, oracle_bundle(graph, theta, R), rtol)


@pytest.mark.parametrize("name", list(MODELS))
def test_auto_solver_choice(name):
    graph = _graph(name)
    model = graph.compile()
    acyclic = MODELS[name][2]
    assert isinstance(model.solver, pj.LevelSweep if acyclic else pj.DenseLU)


def test_two_island_sfs_total_branch_length_symmetry():
    """With both samples in one deme and symmetric demes, swapping the deme labels of
    the sample and the parameters leaves every quantity unchanged."""
    g12 = pj.models.two_island(3, 0)
    g21 = pj.models.two_island(0, 3)
    th = jnp.array([1.0, 0.4, 0.3, 0.8])
    th_swapped = jnp.array([0.4, 1.0, 0.8, 0.3])
    m12, m21 = g12.compile(solver="dense"), g21.compile(solver="dense")
    s12 = jax.jit(lambda t: m12(t).mean(jnp.asarray(pj.models.sfs_rewards(g12, n=3))))(th)
    s21 = jax.jit(lambda t: m21(t).mean(jnp.asarray(pj.models.sfs_rewards(g21, n=3))))(th_swapped)
    np.testing.assert_allclose(np.asarray(s12), np.asarray(s21), rtol=1e-13)
    assert s12.shape == (2,)


def test_mm1_time_to_overflow_closed_form():
    """E[time to overflow] from empty, capacity c: first-step analysis solved by hand.

    With h_k the expected time to go from k to k+1: h_0 = 1/lam,
    h_k = 1/lam + (mu/lam) h_{k-1}; E = sum_{k=0}^{c} h_k."""
    lam, mu, c = 1.3, 0.7, 6
    h, total = 0.0, 0.0
    for k in range(c + 1):
        h = 1 / lam + (mu / lam) * h if k else 1 / lam
        total += h
    model = pj.models.mm1_capacity(c).compile()
    mean = jax.jit(lambda t: model(t).mean())(jnp.array([lam, mu]))
    np.testing.assert_allclose(float(mean), total, rtol=1e-12)


def test_birth_death_pure_death_closed_form():
    """No births: from i, the time to extinction is a sum of Exp(mu j), j = 1..i."""
    mu, i0 = 0.8, 5
    model = pj.models.birth_death(7, i0).compile()
    mean, var = jax.jit(lambda t: (model(t).mean(), model(t).var()))(jnp.array([0.0, mu]))
    rates = mu * np.arange(1, i0 + 1)
    np.testing.assert_allclose(float(mean), np.sum(1 / rates), rtol=1e-12)
    np.testing.assert_allclose(float(var), np.sum(1 / rates**2), rtol=1e-12)


def test_coxian_closed_form_mean():
    """Coxian mean: sum_i P(reach phase i) / (a_i + b_i)."""
    k = 4
    a = np.array([0.5, 1.2, 2.0])
    b = np.array([0.3, 0.9, 1.4, 2.2])
    reach, mean = 1.0, 0.0
    for i in range(k):
        out = b[i] + (a[i] if i < k - 1 else 0.0)
        mean += reach / out
        if i < k - 1:
            reach *= a[i] / out
    model = pj.models.coxian(k).compile()
    got = jax.jit(lambda t: model(t).mean())(jnp.asarray(np.concatenate([a, b])))
    np.testing.assert_allclose(float(got), mean, rtol=1e-13)


def test_sfs_rewards_sample_size_from_initial_state():
    """Structured graphs: the default sample size is the initial number of lineages
    (n1 + n2), not the state length (2 n)."""
    graph = pj.models.two_island(2, 1)
    default = pj.models.sfs_rewards(graph)
    assert default.shape[0] == 2
    np.testing.assert_array_equal(default, pj.models.sfs_rewards(graph, n=3))
    with pytest.raises(ValueError, match="blocks of 4"):
        pj.models.sfs_rewards(graph, n=4)


# -- two-locus model ------------------------------------------------------------------
@pytest.mark.parametrize("rho", [0.0, 1.0, 10.0])
def test_two_locus_correlation_closed_form(rho):
    graph = pj.models.two_locus(2)
    dist = graph.compile()(jnp.array([1.0, rho]))
    rewards = pj.models.tmrca_rewards(graph)
    cov = dist.covariance_matrix(rewards)
    np.testing.assert_allclose(dist.mean(rewards[0]), 1.0, rtol=1e-12)
    np.testing.assert_allclose(
        cov[0, 1] / np.sqrt(cov[0, 0] * cov[1, 1]),
        (rho + 18) / (rho**2 + 13 * rho + 18),
        rtol=1e-10,
    )


def test_two_locus_larger_sample_against_dense():
    graph = pj.models.two_locus(5)
    theta = np.array([1.0, 2.5])
    dist = graph.compile()(jnp.asarray(theta))
    rewards = pj.models.tmrca_rewards(graph)
    np.testing.assert_allclose(dist.mean(rewards[0]), 2 * (1 - 1 / 5), rtol=1e-12)
    alpha, s, _, vertices = graph.as_matrices(theta)
    u = np.linalg.inv(-s)
    ra, rb = rewards[0][vertices], rewards[1][vertices]
    cross = alpha @ u @ np.diag(ra) @ u @ rb + alpha @ u @ np.diag(rb) @ u @ ra
    np.testing.assert_allclose(
        dist.cov(rewards[0], rewards[1]), cross - (alpha @ u @ ra) * (alpha @ u @ rb), rtol=1e-10
    )
