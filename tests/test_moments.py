"""Moments, rewards, covariances, sojourns: closed forms and dense oracles.

Closed forms: exponential, Erlang, Kingman (E/Var of the TMRCA, expected SFS), Coxian,
geometric and negative-binomial DPH. Dense oracles (tests/_oracle.py): random cyclic
and acyclic graphs of a few hundred states, built from matrices and edge by edge
(defect, parallel edges, parameterised edges, several absorbing and unreachable
vertices), continuous and discrete, for every applicable solver.
"""

from __future__ import annotations

import functools
from math import factorial

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import phasejax as pj
from helpers.oracle import (
    assert_bundle_close,
    dph_factorial_moments,
    dph_reward_moments,
    dph_visits,
    graph_matrices,
    library_bundle,
    oracle_bundle,
    oracle_bundle_from,
    ph_moments,
    random_rewards,
    random_subintensity,
    random_subtransition,
    restrict,
)

SOLVERS = ["sweep", "dense", "gmres"]
# GMRES (GMRES) stops on a residual criterion (rtol=1e-12), not on the forward error,
# and the moment recursion chains up to k solves: allow 1e-9 instead of 1e-10.
RTOL = {"sweep": 1e-10, "dense": 1e-10, "gmres": 1e-9}


def _jit_quantities(model, k=4):
    """One jitted function returning (moments(k), var, mean) of the absorption time."""

    @jax.jit
    def f(theta):
        d = model(theta)
        return d.moments(k), d.var(), d.mean()

    return f


# -- closed forms ------------------------------------------------------------------------------
@functools.cache
def _erlang_fn(k, solver):
    return _jit_quantities(pj.models.erlang(k).compile(solver=solver))


@pytest.mark.parametrize("solver", SOLVERS)
@pytest.mark.parametrize("lam", [0.3, 1.0, 4.5])
def test_exponential_closed_form(solver, lam):
    moments, var, mean = _erlang_fn(1, solver)(jnp.array([lam]))
    want = np.array([factorial(k) / lam**k for k in range(1, 5)])
    np.testing.assert_allclose(np.asarray(moments), want, rtol=RTOL[solver])
    np.testing.assert_allclose(float(var), 1 / lam**2, rtol=RTOL[solver])
    np.testing.assert_allclose(float(mean), 1 / lam, rtol=RTOL[solver])


@pytest.mark.parametrize(
    "solver, k, lam",
    [(s, k, lam) for s in ("sweep", "dense") for k, lam in [(2, 1.0), (4, 0.7), (9, 3.0)]]
    + [("gmres", 4, 0.7), ("gmres", 4, 2.0)],
)
def test_erlang_closed_form(solver, k, lam):
    moments, var, mean = _erlang_fn(k, solver)(jnp.array([lam]))
    # E[X^j] = k (k+1) ... (k+j-1) / lam^j
    want = np.array([np.prod(np.arange(k, k + j, dtype=float)) / lam**j for j in range(1, 5)])
    np.testing.assert_allclose(np.asarray(moments), want, rtol=RTOL[solver])
    np.testing.assert_allclose(float(mean), k / lam, rtol=RTOL[solver])
    np.testing.assert_allclose(float(var), k / lam**2, rtol=RTOL[solver])


@pytest.mark.parametrize("n", [2, 5, 10, 20, 30])
def test_kingman_closed_forms(n):
    graph = pj.models.kingman(n)
    model = graph.compile()  # auto: level sweep (acyclic)
    assert isinstance(model.solver, pj.LevelSweep)
    sfs = jnp.asarray(pj.models.sfs_rewards(graph))

    @jax.jit
    def f(theta):
        d = model(theta)
        return d.mean(), d.var(), d.mean(sfs), jax.vmap(d.mean)(sfs)

    k = np.arange(2, n + 1)
    i = np.arange(1, n)
    for theta in (1.0, 0.4):
        mean, var, sfs_mean, sfs_vmap = f(jnp.array([theta]))
        np.testing.assert_allclose(float(mean), 2 * (1 - 1 / n) / theta, rtol=1e-12)
        np.testing.assert_allclose(float(var), np.sum(1 / comb_arr(k) ** 2) / theta**2, rtol=1e-12)
        np.testing.assert_allclose(np.asarray(sfs_mean), 2 / i / theta, rtol=1e-12)
        np.testing.assert_allclose(np.asarray(sfs_vmap), 2 / i / theta, rtol=1e-12)


def comb_arr(k):
    return k * (k - 1) / 2


def test_batched_sweep_runs_its_fine_schedule():
    """A batch of ``BATCH_FINE`` or more thetas sweeps on the finer schedule (narrower
    blocks): values, the transposed sweep and gradients against closed forms and the
    one-theta (coarse) sweep."""
    from phasejax._solve import BATCH_FINE

    n = 14
    model = pj.models.kingman(n).compile()
    assert model.solver.fine.shape[2] < model.solver.blocks.shape[2]  # a different schedule

    def f(theta):
        d = model(theta)
        return jnp.concatenate([jnp.stack([d.mean(), d.var()]), d.expected_sojourn()])

    thetas = jnp.linspace(0.3, 3.0, BATCH_FINE + 3)[:, None]
    batched = jax.jit(jax.vmap(f))(thetas)
    one = jax.jit(f)
    np.testing.assert_allclose(batched, np.stack([one(t) for t in thetas]), rtol=1e-13)
    k = np.arange(2, n + 1)
    theta = np.asarray(thetas[:, 0])
    np.testing.assert_allclose(batched[:, 0], 2 * (1 - 1 / n) / theta, rtol=1e-13)
    np.testing.assert_allclose(batched[:, 1], np.sum(1 / comb_arr(k) ** 2) / theta**2, rtol=1e-13)
    # total expected sojourn over the states = E[T]
    np.testing.assert_allclose(batched[:, 2:].sum(1), batched[:, 0], rtol=1e-13)
    grad = jax.jit(jax.vmap(jax.grad(lambda t: model(t).var())))(thetas)
    want = -2 * np.sum(1 / comb_arr(k) ** 2) / theta**3  # d/dtheta of Var = c / theta^2
    np.testing.assert_allclose(grad[:, 0], want, rtol=1e-12)


@pytest.mark.parametrize("solver", ["dense", "gmres"])
def test_kingman_closed_forms_other_solvers(solver):
    n = 7
    graph = pj.models.kingman(n)
    f = _jit_quantities(graph.compile(solver=solver), k=2)
    moments, var, mean = f(jnp.array([1.0]))
    k = np.arange(2, n + 1)
    np.testing.assert_allclose(float(mean), 2 * (1 - 1 / n), rtol=RTOL[solver])
    np.testing.assert_allclose(float(var), np.sum(1 / comb_arr(k) ** 2), rtol=RTOL[solver])


def test_kingman_sfs_covariance_against_dense():
    """Covariance matrix of the SFS against the dense oracle; symmetric and PSD."""
    graph = pj.models.kingman(6)
    sfs = pj.models.sfs_rewards(graph)
    model = graph.compile()
    cov = jax.jit(lambda t: model(t).covariance_matrix(jnp.asarray(sfs)))(jnp.array([1.0]))
    ref = oracle_bundle(graph, [1.0], sfs)["cov"]
    np.testing.assert_allclose(np.asarray(cov), ref, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(np.asarray(cov), np.asarray(cov).T, rtol=0, atol=1e-15)
    assert np.linalg.eigvalsh(np.asarray(cov)).min() > -1e-12


def _coxian_matrices(a, b):
    k = len(b)
    S = np.zeros((k, k))
    for i in range(k):
        S[i, i] = -(b[i] + (a[i] if i < k - 1 else 0.0))
        if i < k - 1:
            S[i, i + 1] = a[i]
    alpha = np.zeros(k)
    alpha[0] = 1.0
    return alpha, S


@pytest.mark.parametrize("solver", ["sweep", "dense"])
def test_coxian_via_matrices(solver):
    a = np.array([0.5, 1.2, 2.0])
    b = np.array([0.3, 0.9, 1.4, 2.2])
    alpha, S = _coxian_matrices(a, b)
    want = ph_moments(alpha, S, np.ones(4), 4)
    # by hand: E[X] = sum_i P(reach i) / q_i
    q = -np.diag(S)
    reach = np.concatenate([[1.0], np.cumprod(a / q[:-1])])
    np.testing.assert_allclose(want[0], np.sum(reach / q), rtol=1e-14)
    f_matrix = _jit_quantities(pj.Graph.from_matrices(alpha, S).compile(solver=solver))
    f_model = _jit_quantities(pj.models.coxian(4).compile(solver=solver))
    for f, theta in ((f_matrix, None), (f_model, jnp.asarray(np.concatenate([a, b])))):
        moments, var, mean = f(theta)
        np.testing.assert_allclose(np.asarray(moments), want, rtol=RTOL[solver])
        np.testing.assert_allclose(float(var), want[1] - want[0] ** 2, rtol=RTOL[solver])


# -- discrete closed forms ------------------------------------------------------------------------
def _geometric_graph():
    g = pj.Graph(1, discrete=True, n_params=1)
    v = g.find_or_create_vertex([1])
    end = g.find_or_create_vertex([2])
    g.add_edge(0, v.index, 1.0)
    g.add_edge(v.index, end.index, 0.0, [1.0])  # exit probability p = theta
    return g


@functools.cache
def _geometric_fn(solver):
    graph = _geometric_graph()
    model = graph.compile(solver=solver)

    @jax.jit
    def f(theta, r):
        d = model(theta)
        return (
            d.mean(),
            d.var(),
            d.factorial_moments(3),
            d.moments(3),
            d.mean(r),
            d.var(r),
            d.expected_sojourn(),
        )

    return f


@pytest.mark.parametrize("solver", ["sweep", "dense"])
@pytest.mark.parametrize("p", [0.9, 0.35, 0.02])
def test_geometric_dph(solver, p):
    r = 2.5
    rewards = jnp.array([7.0, r, 11.0])  # start and absorbing entries are ignored
    mean, var, fact, moments, mean_r, var_r, visits = _geometric_fn(solver)(jnp.array([p]), rewards)
    tol = RTOL[solver]
    np.testing.assert_allclose(float(mean), 1 / p, rtol=tol)
    np.testing.assert_allclose(float(var), (1 - p) / p**2, rtol=tol)
    # E[tau (tau-1) ... (tau-j+1)] = j! (1-p)^(j-1) / p^j
    want_fact = np.array([factorial(j) * (1 - p) ** (j - 1) / p**j for j in (1, 2, 3)])
    np.testing.assert_allclose(np.asarray(fact), want_fact, rtol=tol)
    # raw moments from factorial moments (Stirling numbers of the second kind)
    raw = np.array(
        [want_fact[0], want_fact[1] + want_fact[0], want_fact[2] + 3 * want_fact[1] + want_fact[0]]
    )
    np.testing.assert_allclose(np.asarray(moments), raw, rtol=tol)
    # a reward per visit scales tau
    np.testing.assert_allclose(float(mean_r), r / p, rtol=tol)
    np.testing.assert_allclose(float(var_r), r**2 * (1 - p) / p**2, rtol=tol)
    np.testing.assert_allclose(np.asarray(visits), [0.0, 1 / p, 0.0], rtol=tol)


@pytest.mark.parametrize("solver", ["sweep", "dense"])
def test_negative_binomial_dph(solver):
    """k geometric stages in series: mean k/p, var k(1-p)/p^2."""
    k, p = 4, 0.3

    def transitions(state):
        i = int(state[0])
        return [((i + 1,), p)] if i < k else []

    graph = pj.Graph.from_callback(transitions, (0,), discrete=True)
    f = _jit_quantities(graph.compile(solver=solver), k=2)
    moments, var, mean = f(None)
    np.testing.assert_allclose(float(mean), k / p, rtol=RTOL[solver])
    np.testing.assert_allclose(float(var), k * (1 - p) / p**2, rtol=RTOL[solver])


# -- the DPH oracle against brute-force enumeration ------------------------------------------------------
def test_dph_oracle_against_path_enumeration():
    """Sum over the paths of up to 39 steps of a tiny DPH (mass left < 0.3^39 ~ 4e-21);
    paths that share the reward so far and the last state are merged (same future)."""
    alpha = np.array([0.5, 0.3, 0.0])
    T = np.array([[0.05, 0.15, 0.1], [0.1, 0.0, 0.15], [0.05, 0.05, 0.1]])
    t = 1 - T.sum(axis=1)
    r = np.array([1.5, 0.0, 2.0])
    moments = np.zeros(3)
    factorial2 = 0.0
    weights = {(i,): alpha[i] for i in range(3) if alpha[i] > 0}
    for length in range(1, 40):
        new = {}
        for path, w in weights.items():
            y = r[list(path)].sum()
            p_end = w * t[path[-1]]
            moments += p_end * y ** np.arange(1, 4)
            factorial2 += p_end * length * (length - 1)
            for j in range(3):
                if T[path[-1], j] > 0:
                    new[path + (j,)] = w * T[path[-1], j]
        # merge paths that agree on (reward so far, last state): same future
        merged = {}
        for path, w in new.items():
            key = (round(r[list(path)].sum(), 12), path[-1])
            if key in merged:
                merged[key] = (merged[key][0], merged[key][1] + w)
            else:
                merged[key] = (path, w)
        weights = dict(merged.values())
    np.testing.assert_allclose(dph_reward_moments(alpha, T, r, 3), moments, rtol=1e-12)
    np.testing.assert_allclose(dph_factorial_moments(alpha, T, 2)[1], factorial2, rtol=1e-12)
    # and the closed form E[Y^2] = 2 (z * r) . U r - z . r^2, z = alpha U (textbook formula)
    U = np.linalg.inv(np.eye(3) - T)
    z = alpha @ U
    np.testing.assert_allclose(2 * (z * r) @ U @ r - z @ r**2, moments[1], rtol=1e-12)
    np.testing.assert_allclose(dph_visits(alpha, T), z, rtol=1e-12)


def test_ph_oracle_against_quadrature():
    """E[Y^k] = k! alpha (U R)^k 1 checked against integration over the density of a
    2-state PH with one zero reward (Y = time spent in state 0)."""
    from scipy.integrate import quad
    from scipy.linalg import expm

    alpha = np.array([0.6, 0.4])
    S = np.array([[-2.0, 1.0], [0.5, -1.5]])
    # Y = time in state 0: its reward-transformed distribution is PH on state 0 alone,
    # with atom P(Y=0) = P(absorbed from state 1 before entering 0)
    p_enter = alpha[0] + alpha[1] * 0.5 / 1.5
    rate_back = 1.0 * 0.5 / 1.5  # from 0 to 1 and back to 0
    exit0 = 2.0 - rate_back
    want = [
        quad(lambda y: y**k * p_enter * exit0 * np.exp(-exit0 * y), 0, np.inf)[0] for k in (1, 2, 3)
    ]
    np.testing.assert_allclose(ph_moments(alpha, S, np.array([1.0, 0.0]), 3), want, rtol=1e-10)
    # the absorption time against the matrix-exponential density
    dens = lambda x: alpha @ expm(S * x) @ (-S.sum(axis=1))
    want_t = [quad(lambda x: x**k * dens(x), 0, 60)[0] for k in (1, 2)]
    np.testing.assert_allclose(ph_moments(alpha, S, np.ones(2), 2), want_t, rtol=1e-9)


# -- random graphs built from matrices ------------------------------------------------------------------
def _random_cases():
    yield pytest.param("cyclic", False, "dense", id="cyclic-ph-dense")
    yield pytest.param("cyclic", False, "gmres", id="cyclic-ph-gmres")
    yield pytest.param("cyclic", True, "dense", id="cyclic-dph-dense")
    yield pytest.param("acyclic", False, "sweep", id="acyclic-ph-sweep")
    yield pytest.param("acyclic", True, "sweep", id="acyclic-dph-sweep")


def _random_matrices(kind, discrete, seed):
    rng = np.random.default_rng(seed)
    n = 300 if not discrete else 150
    make = random_subtransition if discrete else random_subintensity
    alpha, M = make(rng, n, density=0.03, defect=0.1)
    if kind == "acyclic":  # keep only edges i -> j with perm[i] < perm[j]
        perm = rng.permutation(n)
        keep = perm[:, None] < perm[None, :]
        diag = np.diag(M).copy()
        M = np.where(keep, M, 0.0)
        M[np.diag_indices(n)] = diag  # rows lose mass: more exit
    return alpha, M


@pytest.mark.parametrize("kind, discrete, solver", list(_random_cases()))
def test_random_graph_from_matrices(kind, discrete, solver):
    alpha, M = _random_matrices(kind, discrete, seed=11 + discrete)
    graph = pj.Graph.from_matrices(alpha, M, discrete=discrete)
    model = graph.compile(solver=solver)
    if kind == "acyclic":
        assert isinstance(
            pj.Graph.from_matrices(alpha, M, discrete=discrete).compile().solver, pj.LevelSweep
        )
    V = graph.vertices_length()
    R = random_rewards(V, seed=5)
    vs = np.arange(1, len(alpha) + 1)
    ref = oracle_bundle_from(alpha, M, vs, V, discrete, R)
    got = library_bundle(model, lite=solver == "gmres")(None, jnp.asarray(R))
    assert_bundle_close(got, ref, RTOL[solver])


# -- a random graph built edge by edge -------------------------------------------------------------------
class _EdgeByEdge:
    """A random graph built with Graph/add_edge, and its matrices built independently.

    Two-component states; ``n`` reachable transient states (a random cycle through all
    plus random extra edges, some of them duplicated, some parameterised with two
    parameters), two absorbing vertices, a start edge straight to absorption (defect)
    and three unreachable vertices with edges among themselves.
    """

    def __init__(self, n, discrete, seed):
        rng = np.random.default_rng(seed)
        self.discrete = discrete
        g = pj.Graph(2, discrete=discrete, n_params=2)
        states = [(int(i), int(rng.integers(0, 5))) for i in range(n)]
        self.vertices = [g.find_or_create_vertex(s).index for s in states]
        ends = [g.find_or_create_vertex((-1, 0)).index, g.find_or_create_vertex((-2, 7)).index]
        ghosts = [g.find_or_create_vertex((1000 + j, 0)).index for j in range(3)]
        perm = rng.permutation(n)
        pairs = [(perm[i], perm[(i + 1) % n]) for i in range(n)]
        pairs += [(int(a), int(b)) for a, b in rng.integers(0, n, (3 * n, 2)) if a != b]
        pairs += pairs[: n // 4]  # parallel edges
        exits = [(int(i), int(rng.integers(0, 2))) for i in rng.choice(n, n // 3, replace=False)]
        degree = np.bincount([a for a, _ in pairs] + [a for a, _ in exits], minlength=n)
        self.edges = []  # (src_state or -1 for start, dst_state or "end", base, coef)
        scale = 1.0 / degree if discrete else np.ones(n)
        for a, b in pairs + [(a, ("end", e)) for a, e in exits]:
            base = rng.uniform(0.0, 0.5) * scale[a]
            coef = rng.uniform(0.0, 0.2, 2) * scale[a] if rng.random() < 0.4 else None
            if coef is None and base < 0.05 * scale[a]:
                base += 0.05 * scale[a]
            dst = ends[b[1]] if isinstance(b, tuple) else self.vertices[b]
            g.add_edge(self.vertices[a], dst, base, coef)
            self.edges.append((a, b, base, np.zeros(2) if coef is None else coef))
        # initial distribution: a few states, and 0.1 straight to absorption (defect)
        support = rng.choice(n, 5, replace=False)
        probs = rng.dirichlet(np.ones(5)) * 0.8
        for i, p in zip(support, probs):
            g.add_edge(0, self.vertices[i], float(p))
        g.add_edge(0, ends[1], 0.05)
        g.add_edge(0, ends[0], 0.0, [0.0, 0.05])  # parameterised defect
        self.alpha0 = np.zeros(n)
        self.alpha0[support] = probs
        # unreachable: ghosts cycle among themselves, one exits
        g.add_edge(ghosts[0], ghosts[1], 1.0)
        g.add_edge(ghosts[1], ghosts[2], 0.5)
        g.add_edge(ghosts[2], ghosts[0], 0.5)
        g.add_edge(ghosts[2], ends[0], 0.25)
        self.graph = g
        self.n = n

    def matrices(self, theta):
        theta = np.asarray(theta, dtype=np.float64)
        A = np.zeros((self.n, self.n))
        out = np.zeros(self.n)
        for a, b, base, coef in self.edges:
            rate = base + coef @ theta
            out[a] += rate
            if not isinstance(b, tuple):
                A[a, b] += rate
        M = A + np.diag(1.0 - out) if self.discrete else A - np.diag(out)
        return self.alpha0.copy(), M


@functools.cache
def _edge_by_edge(discrete):
    return _EdgeByEdge(250 if not discrete else 120, discrete, seed=3 + discrete)


@pytest.mark.parametrize(
    "discrete, solver",
    [
        pytest.param(False, "dense", id="ph-dense"),
        pytest.param(True, "dense", id="dph-dense"),
        pytest.param(True, "gmres", id="dph-gmres"),
    ],
)
def test_random_graph_edge_by_edge(discrete, solver):
    case = _edge_by_edge(discrete)
    graph = case.graph
    V = graph.vertices_length()
    model = graph.compile(solver=solver)
    assert model.n_transient == case.n  # unreachable vertices are not states
    f = library_bundle(model, lite=solver == "gmres")
    for i, theta in enumerate([[0.5, 1.0], [1.0, 0.1]]):
        alpha, M = case.matrices(theta)
        R = random_rewards(V, seed=20 + i)
        ref = oracle_bundle_from(alpha, M, np.asarray(case.vertices), V, discrete, R)
        np.testing.assert_allclose(ref["defect"], 0.2, rtol=1e-12)
        assert_bundle_close(f(jnp.asarray(theta), jnp.asarray(R)), ref, RTOL[solver])


def test_edge_by_edge_as_matrices_agrees():
    """Graph.as_matrices (used as the oracle for the model zoo) against hand-built matrices."""
    for discrete in (False, True):
        case = _edge_by_edge(discrete)
        theta = [0.3, 0.9]
        alpha, M = case.matrices(theta)
        a2, M2, vs = graph_matrices(case.graph, theta)
        pos = [int(np.flatnonzero(vs == v)[0]) for v in case.vertices]
        np.testing.assert_allclose(a2[pos], alpha, rtol=1e-15)
        np.testing.assert_allclose(M2[np.ix_(pos, pos)], M, rtol=1e-13, atol=1e-15)
        assert len(vs) == case.n  # as_matrices drops the unreachable ghosts (as compilation does)


# -- `initial`, unreachable vertices, reward conventions ---------------------------------------------------
def test_explicit_initial_distribution():
    graph = pj.models.erlang(4)  # states (0,), (1,), ..., (4,) absorbing; start edge -> (0,)
    V = graph.vertices_length()
    initial = np.zeros(V)
    initial[graph.find_vertex([2]).index] = 0.5
    initial[graph.find_vertex([0]).index] = 0.25
    initial[graph.find_vertex([4]).index] = 0.1  # on the absorbing state: defect
    model = graph.compile(solver="dense", initial=initial)
    d = jax.jit(lambda t: (model(t).mean(), model(t).defect(), model(t).expected_sojourn()))
    mean, defect, sojourn = d(jnp.array([2.0]))
    np.testing.assert_allclose(float(mean), 0.5 * 2 / 2.0 + 0.25 * 4 / 2.0, rtol=1e-13)
    np.testing.assert_allclose(float(defect), 0.25, rtol=1e-13)
    np.testing.assert_allclose(
        np.asarray(sojourn)[1:], [0.125, 0.125, 0.375, 0.375, 0.0], rtol=1e-13
    )


def test_reward_entries_of_start_and_absorbing_are_ignored():
    graph = pj.models.kingman(4)
    model = graph.compile()
    r = np.arange(graph.vertices_length(), dtype=float) + 1.0
    r2 = r.copy()
    r2[0] = 1e6
    r2[graph.find_vertex([0, 0, 0, 1]).index] = 1e6
    f = jax.jit(lambda t, r: (model(t).moments(2, r), model(t).expected_waiting_time(r)))
    a, wa = f(jnp.array([1.0]), jnp.asarray(r))
    b, wb = f(jnp.array([1.0]), jnp.asarray(r2))
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-15)
    np.testing.assert_allclose(np.asarray(wa), np.asarray(wb), rtol=1e-15)
    assert float(wa[graph.find_vertex([0, 0, 0, 1]).index]) == 0.0


def test_expected_waiting_time_entry_zero_is_mean():
    graph = pj.models.rabbit_flooding(3)
    model = graph.compile()
    r = jnp.asarray(random_rewards(graph.vertices_length(), 2)[0])
    w, m = jax.jit(lambda t: (model(t).expected_waiting_time(r), model(t).mean(r)))(
        jnp.array([1.0, 2.0])
    )
    np.testing.assert_allclose(float(w[0]), float(m), rtol=1e-14)
    alpha, S, vs = graph_matrices(graph, [1.0, 2.0])
    np.testing.assert_allclose(np.asarray(w)[vs], np.linalg.solve(-S, restrict(r, vs)), rtol=1e-12)


def test_batched_rewards():
    """A (m, V) reward matrix gives m means at once (the README's SFS usage)."""
    graph = pj.models.kingman(5)
    sfs = jnp.asarray(pj.models.sfs_rewards(graph))
    model = graph.compile()
    means, moments = jax.jit(lambda t: (model(t).mean(sfs), model(t).moments(2, sfs)))(
        jnp.array([1.0])
    )
    np.testing.assert_allclose(np.asarray(means), 2 / np.arange(1, 5), rtol=1e-12)
    alpha, S, vs = graph_matrices(graph, [1.0])
    for a in range(4):
        np.testing.assert_allclose(
            np.asarray(moments)[:, a], ph_moments(alpha, S, restrict(sfs[a], vs), 2), rtol=1e-12
        )


# -- GMRES regressions -------------------------------------------------------------------------------------
# GMRES with lineax's elementwise stopping test (|r_i| <= atol + rtol |b_i|, atol=1e-14
# absolute) used to raise "stagnation" / "breakdown" on these well-posed systems
# (right-hand sides with zero or tiny entries next to large ones); fixed in 0fc47d2 by
# scaling b to unit max-norm with atol = rtol (a normwise tolerance).


def test_gmres_mm1_sojourn():
    graph = pj.models.mm1_capacity(8)
    model = graph.compile(solver="gmres")
    got = jax.jit(lambda t: model(t).expected_sojourn())(jnp.array([1.0, 1.5]))
    alpha, S, vs = graph_matrices(graph, [1.0, 1.5])
    np.testing.assert_allclose(np.asarray(got)[vs], alpha @ np.linalg.inv(-S), rtol=1e-9)


def test_gmres_birth_death_third_moment():
    graph = pj.models.birth_death(10, 3)
    model = graph.compile(solver="gmres")
    r = np.random.default_rng(0).random(graph.vertices_length())
    got = jax.jit(lambda t: model(t).moments(3, r))(jnp.array([1.5, 1.0]))
    alpha, S, vs = graph_matrices(graph, [1.5, 1.0])
    np.testing.assert_allclose(np.asarray(got), ph_moments(alpha, S, restrict(r, vs), 3), rtol=1e-9)


def test_gmres_kingman_zero_rewards():
    graph = pj.models.kingman(6)
    model = graph.compile(solver="gmres")
    r = random_rewards(graph.vertices_length(), 1)[0]
    got = jax.jit(lambda t: model(t).moments(3, r))(jnp.array([0.37]))
    alpha, S, vs = graph_matrices(graph, [0.37])
    np.testing.assert_allclose(np.asarray(got), ph_moments(alpha, S, restrict(r, vs), 3), rtol=1e-9)


def test_gmres_on_acyclic_graphs():
    """Regression: BiCGStab broke down on nilpotent (acyclic) operators (NaN or wrong)."""
    for k in (3,):
        model = pj.models.erlang(k).compile(solver="gmres")
        mean, sojourn = jax.jit(lambda t: (model(t).mean(), model(t).expected_sojourn()))(
            jnp.array([1.0])
        )
        np.testing.assert_allclose(float(mean), k, rtol=1e-10)
        np.testing.assert_allclose(np.asarray(sojourn)[1 : k + 1], np.ones(k), rtol=1e-10)


# -- Laplace transform ``E[exp(-s Y)]`` against dense linear algebra. ----------


S_VALUES = np.array([0.0, 1e-3, 0.1, 0.5, 1.0, 3.0, 10.0, 100.0])


def _random_case():
    rng = np.random.default_rng(21)
    alpha, S = random_subintensity(rng, 40, density=0.08, defect=0.1)
    graph = pj.Graph.from_matrices(alpha, S)
    r = rng.uniform(0.1, 2.0, graph.vertices_length())
    r[rng.random(r.size) < 0.3] = 0.0  # zero rewards on about 30% of the states
    return graph, np.zeros(0), r


def _kingman_case():
    graph = pj.models.kingman(5)
    return graph, np.array([0.8]), pj.models.sfs_rewards(graph)[0]  # singletons: zeros


def _island_case():
    graph = pj.models.two_island(2, 1)
    r = pj.models.sfs_rewards(graph, n=3)[1]  # doubletons: zero at the start
    return graph, np.array([1.0, 2.0, 0.5, 0.3]), r


CASES = {
    "random40_defect": _random_case,
    "kingman_sfs": _kingman_case,
    "two_island_sfs": _island_case,
}


def laplace_reference(alpha, S, r, s_values):
    exit_ = -S.sum(axis=1)
    defect = 1.0 - alpha.sum()
    return np.array([defect + alpha @ np.linalg.solve(s * np.diag(r) - S, exit_) for s in s_values])


@pytest.fixture(scope="module")
def compiled():
    out = {}
    for name, build in CASES.items():
        graph, theta, r = build()
        model = graph.compile()

        def f(theta, r, s, model=model):
            d = model(theta)
            lt = lambda x: d.laplace(x, r)
            return {
                "with_r": d.laplace(s, r),
                "time": d.laplace(s),
                "d1": jax.grad(lt)(0.0),
                "d2": jax.grad(jax.grad(lt))(0.0),
                "mean": d.mean(r),
            }

        out[name] = (graph, theta, r, model, jax.jit(f))
    return out


@pytest.mark.parametrize("name", list(CASES))
def test_laplace_against_dense_solve(compiled, name):
    graph, theta, r, model, f = compiled[name]
    alpha, S, vs = graph_matrices(graph, theta if theta.size else None)
    rt = r[vs]
    assert np.any(rt == 0) and np.any(rt > 0)  # the zero-reward path is exercised
    got = {k: np.asarray(v) for k, v in f(theta, r, S_VALUES).items()}
    np.testing.assert_allclose(
        got["with_r"], laplace_reference(alpha, S, rt, S_VALUES), rtol=1e-12, atol=1e-15
    )
    np.testing.assert_allclose(
        got["time"],
        laplace_reference(alpha, S, np.ones(len(alpha)), S_VALUES),
        rtol=1e-12,
        atol=1e-15,
    )
    assert got["with_r"][0] == pytest.approx(1.0, abs=1e-13)
    assert got["time"][0] == pytest.approx(1.0, abs=1e-13)
    # with zero rewards some mass never accumulates anything: the limit at s -> inf is
    # P(Y = 0) >= defect; Laplace transforms are decreasing in s
    assert np.all(np.diff(got["with_r"]) <= 1e-15)
    m1, m2 = ph_moments(alpha, S, rt, 2)
    # d/ds E[exp(-sY)] at 0 = -E[Y]; second derivative = E[Y^2]
    np.testing.assert_allclose(got["d1"], -m1, rtol=1e-11)
    np.testing.assert_allclose(got["d1"], -got["mean"], rtol=1e-12)
    np.testing.assert_allclose(got["d2"], m2, rtol=1e-10)


def test_laplace_shapes_and_reward_scaled():
    graph = pj.models.two_island(2, 1)
    theta = np.array([1.0, 2.0, 0.5, 0.3])
    model = graph.compile()
    r = np.random.default_rng(5).uniform(0.3, 2.0, graph.vertices_length())
    s = np.array([[0.0, 0.2], [1.5, 7.0]])

    @jax.jit
    def f(theta, s):
        d = model(theta)
        return d.laplace(s, r), d.reward_scaled(r).laplace(s), d.laplace(2.0, r)

    grid, scaled, scalar = f(theta, s)
    assert grid.shape == (2, 2) and scalar.shape == ()
    alpha, S, vs = graph_matrices(graph, theta)
    np.testing.assert_allclose(
        np.asarray(grid).ravel(), laplace_reference(alpha, S, r[vs], s.ravel()), rtol=1e-12
    )
    # Y = int r dt has the distribution of reward_scaled(r): same transform
    np.testing.assert_allclose(np.asarray(scaled), np.asarray(grid), rtol=1e-12)
    np.testing.assert_allclose(
        float(scalar), laplace_reference(alpha, S, r[vs], [2.0])[0], rtol=1e-12
    )


def test_laplace_gradient_in_theta_finite_differences(compiled):
    graph, theta, r, model, _ = compiled["two_island_sfs"]
    s = np.array([0.3, 2.0])
    w = np.array([1.0, -0.7])
    f = jax.jit(lambda th: jnp.sum(w * model(th).laplace(s, r)))
    g = np.asarray(jax.jit(jax.grad(f.__wrapped__))(theta))
    fd = np.zeros_like(theta)
    for j in range(theta.size):
        e = np.eye(theta.size)[j] * 1e-5 * theta[j]
        fd[j] = (float(f(theta + e)) - float(f(theta - e))) / (2e-5 * theta[j])
    np.testing.assert_allclose(g, fd, rtol=1e-6, atol=1e-9)


@pytest.mark.parametrize("bad", [-0.5, np.nan])
def test_negative_or_nan_s_raises(compiled, bad):
    graph, theta, r, model, _ = compiled["kingman_sfs"]
    d = model(theta)
    with pytest.raises(Exception, match="s >= 0"):
        d.laplace(np.array([0.0, bad, 1.0]))
    with pytest.raises(Exception, match="s >= 0"):
        jax.jit(lambda s: d.laplace(s, r))(np.array([bad]))


def _affine_chain():
    """An acyclic graph whose rates mix constants and two parameters: ``base + c . theta``
    (states 1..5 fall towards 0, skipping one level at a time)."""

    def step(state):
        (k,) = state
        if k == 0:
            return []
        out = [((k - 1,), 0.5 * k, [1.0, 0.2 * k])]
        if k >= 2:
            out.append(((k - 2,), 0.1, [0.0, 1.0]))
        return out

    return pj.Graph.from_callback(step, (5,))


def test_linear_rates_match_explicit_rates_and_the_dense_oracle():
    """``model(theta)`` hands the level sweep its rates as ``base + coefficients . theta``
    (`LinearRates`, formed block by block under vmap); moments, covariances and gradients
    equal those of the same distribution given explicit rates, and the dense oracle."""
    graph = _affine_chain()
    model = graph.compile()
    R = jnp.asarray(random_rewards(graph.vertices_length(), 2))
    thetas = jnp.array([[0.7, 1.3], [2.0, 0.4], [1.1, 1.1]])

    def quantities(dist):
        return jnp.concatenate(
            [dist.moments(3), dist.moments(2, R[0]), dist.covariance_matrix(R).ravel()]
        )

    def explicit(theta):
        d = model(theta)
        assert d.linear is not None
        return type(d)(d.structure, d.rate, d.diag, d.alpha)

    got = jax.jit(jax.vmap(lambda th: quantities(model(th))))(thetas)
    want = jax.jit(jax.vmap(lambda th: quantities(explicit(th))))(thetas)
    np.testing.assert_allclose(got, want, rtol=1e-13)
    for theta, row in zip(thetas, got):
        alpha, S, _ = graph_matrices(graph, np.asarray(theta))
        np.testing.assert_allclose(
            row[:3], ph_moments(alpha, S, np.ones(S.shape[0]), 3), rtol=1e-12
        )
    grads = jax.jit(jax.vmap(jax.jacrev(lambda th: quantities(model(th)))))(thetas)
    grads_explicit = jax.jit(jax.vmap(jax.jacrev(lambda th: quantities(explicit(th)))))(thetas)
    np.testing.assert_allclose(grads, grads_explicit, rtol=1e-12, atol=1e-14)
    # one source for the rates: they cannot be replaced behind the recipe's back
    dist = model(thetas[0])
    with pytest.raises((ValueError, TypeError, AttributeError)):
        eqx.tree_at(lambda d: d.rate, dist, dist.rate * 2)
    with pytest.raises(ValueError, match="exactly one"):
        type(dist)(dist.structure, dist.rate, dist.diag, dist.alpha, dist.linear)


def test_theta_batch_holds_no_edges_by_batch_array():
    """Under vmap over 100 thetas the level sweep forms its rates per block: the program's
    temporaries stay below one (edges x thetas) array (Kingman n = 30, 48,297 edges: 39 MB;
    with the rates as one array they were 64 MB)."""
    model = pj.models.kingman(30).compile()
    thetas = jnp.linspace(0.5, 2.0, 100)[:, None]
    program = jax.jit(jax.vmap(lambda th: jnp.stack([model(th).mean(), model(th).var()])))
    temp = program.lower(thetas).compile().memory_analysis().temp_size_in_bytes
    edges = model.structure.src.shape[0]
    assert temp < edges * 100 * 8, (temp, edges * 100 * 8)
    k = np.arange(2, 31)
    np.testing.assert_allclose(
        program(thetas)[:, 1], np.sum(1 / comb_arr(k) ** 2) / thetas[:, 0] ** 2, rtol=1e-13
    )


def test_rate_checks_on_distinct_rows_match_every_edge():
    """With the default rate function the NaN / infinite / negative checks run over the
    distinct rows of (base, coefficients): admissibility equals that of every edge's rate
    (numpy), for thetas that make some rates negative, NaN or infinite, under vmap."""
    graph = _affine_chain()
    model = graph.compile()
    plan = model.linear_plan
    assert plan is not None and plan.distinct_base.size < graph.edges_length()
    src, _, base, coef = graph.edge_arrays()
    thetas = np.array(
        [[1.0, 2.0], [-1.0, 1.0], [1.0, -0.5], [np.nan, 1.0], [np.inf, 1.0], [1.0, 1e308]]
    )
    with np.errstate(invalid="ignore", over="ignore"):
        rates = base + thetas @ coef.T  # (thetas, edges)
        out = np.stack([np.bincount(src, weights=r, minlength=7)[1:6] for r in rates])
    want = np.all(np.isfinite(rates) & (rates >= 0), axis=1) & np.all(out > 0, axis=1)
    _, ok = jax.jit(jax.vmap(model.guarded))(jnp.asarray(thetas))
    np.testing.assert_array_equal(np.asarray(ok), want)
    assert want.tolist() == [True, False, False, False, False, True]
