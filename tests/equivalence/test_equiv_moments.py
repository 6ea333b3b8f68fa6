"""Moments, waiting times, covariances and reward transforms: phasejax == phasic's C library.

Every model of ``pj.models`` at two sizes and several parameter values, plus random
acyclic and cyclic graphs (some with a defect), are compared to 1e-10 relative.
The C side is ``phasic_reference.adapter.reference_graph(graph, theta)``: a constant
C graph with the rates evaluated at ``theta`` (``explicit_defect=True``, so both
sides describe the same defective distribution).

Vertex conventions: both sides return one expected waiting time per vertex, vertex 0
holding ``E[Y] = alpha . U r`` and absorbing vertices 0. Vertices that are unreachable
from the start read 0 in phasejax but carry ``(U r)_i`` in C, so per-vertex values are
compared on ``model.transient_vertices`` (and vertex 0 separately).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from phasic_reference.adapter import reference_graph

import phasejax as pj
from helpers.equivalence import assert_rel, dense, green, random_acyclic, random_cyclic


def _random_rewards(graph, m, seed):
    """(m, V) non-negative rewards, about a third of them zero; start and absorbing 0."""
    rng = np.random.default_rng(seed)
    v = graph.vertices_length()
    r = rng.uniform(0.1, 3.0, (m, v)) * (rng.random((m, v)) > 0.35)
    src = graph.edge_arrays()[0]
    transient = np.unique(src[src > 0])
    keep = np.zeros(v, dtype=bool)
    keep[transient] = True
    r[:, ~keep] = 0.0
    r[:, transient[rng.integers(transient.size)]] = 1.5  # never all zero
    return r


def _coxian_thetas(k, seed=0):
    rng = np.random.default_rng(seed)
    return [list(rng.uniform(0.2, 3.0, 2 * k - 1)) for _ in range(3)]


# (id, graph builder, thetas, rewards: "sfs" or "random")
CASES = [
    ("kingman-4", lambda: pj.models.kingman(4), [[1.0], [0.37], [2.5]], "sfs"),
    ("kingman-9", lambda: pj.models.kingman(9), [[1.0], [0.37], [2.5]], "sfs"),
    (
        "two_island-2-1",
        lambda: pj.models.two_island(2, 1),
        [[1.0, 1.0, 0.5, 0.5], [2.0, 0.5, 1.0, 0.1], [0.3, 1.7, 0.05, 2.0]],
        "sfs",
    ),
    (
        "two_island-2-2",
        lambda: pj.models.two_island(2, 2),
        [[1.0, 1.0, 0.5, 0.5], [2.0, 0.5, 1.0, 0.1], [0.3, 1.7, 0.05, 2.0]],
        "sfs",
    ),
    (
        "rabbit_flooding-2",
        lambda: pj.models.rabbit_flooding(2),
        [[1.0, 1.0], [0.5, 2.0], [3.0, 0.2]],
        "random",
    ),
    (
        "rabbit_flooding-5",
        lambda: pj.models.rabbit_flooding(5),
        [[1.0, 1.0], [0.5, 2.0], [3.0, 0.2]],
        "random",
    ),
    (
        "mm1_capacity-3",
        lambda: pj.models.mm1_capacity(3),
        [[1.0, 2.0], [2.0, 1.0], [0.5, 0.5]],
        "random",
    ),
    (
        "mm1_capacity-12",
        lambda: pj.models.mm1_capacity(12),
        [[1.0, 2.0], [2.0, 1.0], [0.5, 0.5]],
        "random",
    ),
    (
        "birth_death-5",
        lambda: pj.models.birth_death(5, 2),
        [[0.5, 1.0], [1.0, 2.0], [1.5, 1.0]],
        "random",
    ),
    (
        "birth_death-20",
        lambda: pj.models.birth_death(20, 3),
        [[0.5, 1.0], [1.0, 2.0], [1.5, 1.0]],
        "random",
    ),
    ("erlang-2", lambda: pj.models.erlang(2), [[1.0], [0.3], [4.0]], "random"),
    ("erlang-12", lambda: pj.models.erlang(12), [[1.0], [0.3], [4.0]], "random"),
    ("coxian-2", lambda: pj.models.coxian(2), _coxian_thetas(2), "random"),
    ("coxian-6", lambda: pj.models.coxian(6), _coxian_thetas(6), "random"),
    ("random-acyclic-6", lambda: random_acyclic(np.random.default_rng(1), 6), [None], "random"),
    (
        "random-acyclic-40-defect",
        lambda: random_acyclic(np.random.default_rng(2), 40, defect=0.2),
        [None],
        "random",
    ),
    ("random-cyclic-8", lambda: random_cyclic(np.random.default_rng(3), 8), [None], "random"),
    (
        "random-cyclic-60-defect",
        lambda: random_cyclic(np.random.default_rng(4), 60, defect=0.15),
        [None],
        "random",
    ),
]


def _bundle(model):
    def f(theta, R):
        d = model(theta)
        return {
            "wait_1": d.expected_waiting_time(),
            "wait_r": d.expected_waiting_time(R[0]),
            "moments_1": d.moments(4),
            "var_1": d.var(),
            "moments_r": d.moments(4, R[0]),
            "var_r": d.var(R[-1]),
            "means": jax.vmap(d.mean)(R),
            "cov": d.covariance_matrix(R),
        }

    return jax.jit(f)


def _check_case(graph, model, theta, R, bundle=None):
    """Compare one (graph, theta) against the C library and the dense truth."""
    bundle = _bundle(model) if bundle is None else bundle
    ours = jax.tree.map(
        np.asarray, bundle(None if theta is None else jnp.asarray(theta), jnp.asarray(R))
    )
    c = reference_graph(graph, theta)
    tv = np.asarray(model.transient_vertices)
    m = R.shape[0]

    c_wait_1 = c.expected_waiting_time()
    c_wait_r = c.expected_waiting_time(R[0])
    assert_rel(
        ours["wait_1"][tv], c_wait_1[tv], what="expected_waiting_time() on transient vertices"
    )
    assert_rel(
        ours["wait_r"][tv], c_wait_r[tv], what="expected_waiting_time(r) on transient vertices"
    )
    # vertex 0 = E[Y] on both sides (C: with the explicit defect edge)
    assert_rel(ours["wait_1"][0], c_wait_1[0], what="expected_waiting_time()[0]")
    assert_rel(ours["wait_r"][0], c_wait_r[0], what="expected_waiting_time(r)[0]")

    c_m1, c_mr = c.moments(4), c.moments(4, R[0])
    for k in range(4):  # each moment relative to itself
        assert_rel(ours["moments_1"][k], c_m1[k], what=f"E[T^{k + 1}]")
        assert_rel(ours["moments_r"][k], c_mr[k], what=f"E[Y^{k + 1}]")
    assert_rel(ours["var_1"], c.variance(), what="var()")
    assert_rel(ours["var_r"], c.variance(R[-1]), what="var(r)")

    # reward-transformed means (ptd_graph_reward_transform; zero rewards eliminate states)
    c_means = np.array([c.reward_transform_expectation(R[i]) for i in range(m)])
    for i in range(m):
        assert_rel(
            ours["means"][i], c_means[i], what=f"mean(R[{i}]) vs reward_transform_expectation"
        )

    c_cov = np.array([[c.covariance(R[i], R[j]) for j in range(m)] for i in range(m)])
    # entries relative to the largest variance (off-diagonal covariances may be ~0)
    scale = np.max(np.abs(np.diag(c_cov)))
    assert_rel(ours["cov"], c_cov, what="covariance_matrix vs C covariance(r_i, r_j)", scale=scale)

    # and both against the dense truth (guards against a shared mistake)
    alpha, S, vs = dense(graph, theta)
    U = green(S)
    one = np.ones(len(alpha))
    assert_rel(ours["moments_1"][0], alpha @ U @ one, what="E[T] vs dense")
    assert_rel(ours["moments_1"][1], 2 * alpha @ U @ U @ one, what="E[T^2] vs dense")


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_moments_match_c(case):
    _, build, thetas, reward_kind = case
    graph = build()
    model = graph.compile()
    R = (
        pj.models.sfs_rewards(graph)
        if reward_kind == "sfs"
        else _random_rewards(graph, 3, seed=len(thetas))
    )
    bundle = _bundle(model)  # one compilation serves every theta
    for theta in thetas:
        _check_case(graph, model, theta, R, bundle)


@functools.cache
def _gmres_setup():
    """A 150-state random cyclic graph, compiled with matrix-free GMRES (forced), and one
    jitted evaluation shared by the GMRES tests (the rewards are its argument)."""
    graph = random_cyclic(np.random.default_rng(5), 150, density=0.03)
    model = graph.compile(solver="gmres")
    assert type(model.solver).__name__ == "GMRES"

    @jax.jit
    def ours(R):
        d = model(None)
        return d.expected_waiting_time(R[0]), d.moments(3, R[0]), d.covariance_matrix(R)

    return graph, model, ours


def _gmres_check(rewards):
    graph, model, ours = _gmres_setup()
    R = rewards(graph)
    wait, moments, cov = map(np.asarray, ours(jnp.asarray(R)))
    c = reference_graph(graph)
    tv = np.asarray(model.transient_vertices)
    assert_rel(wait[tv], c.expected_waiting_time(R[0])[tv], what="gmres expected_waiting_time(r)")
    for k in range(3):
        assert_rel(moments[k], c.moments(3, R[0])[k], what=f"gmres E[Y^{k + 1}]")
    c_cov = np.array([[c.covariance(a, b) for b in R] for a in R])
    assert_rel(cov, c_cov, what="gmres covariance_matrix")


def test_gmres_solver_matches_c():
    """A cyclic graph solved matrix-free (GMRES) agrees with C's elimination."""
    _gmres_check(lambda g: np.random.default_rng(0).uniform(0.5, 2.0, (2, g.vertices_length())))


def test_gmres_rewards_with_zeros_match_c():
    """Regression: zero rewards make zero entries in the moment right-hand sides; with
    lineax's elementwise tolerance (|r_i| <= atol + rtol |b_i|) GMRES then reported a
    spurious 'stagnation' (fixed in 0fc47d2 by a normwise tolerance)."""
    _gmres_check(lambda g: _random_rewards(g, 2, seed=0))


def test_sfs_means_kingman_closed_form():
    """E[xi_i] = 2 / i (theta = 1) on both sides."""
    graph = pj.models.kingman(7)
    R = pj.models.sfs_rewards(graph)
    c = reference_graph(graph, [1.0])
    model = graph.compile()
    ours = jax.jit(lambda th, R: jax.vmap(model(th).mean)(R))(jnp.array([1.0]), jnp.asarray(R))
    i = np.arange(1, 7)
    assert_rel(np.asarray(ours), 2.0 / i, what="ours SFS")
    assert_rel(np.array([c.expectation(r) for r in R]), 2.0 / i, what="C SFS")


def test_parameterized_c_graph_matches():
    """The C path of the benchmarks: ``ReferenceGraph.parameterized`` + ``update_weights``
    (phasic's recorded elimination, replayed per theta) gives our E, Var and SFS means."""
    from phasic_reference import ReferenceGraph

    graph = pj.models.kingman(8)
    src, dst, base, coef = graph.edge_arrays()
    assert np.all(base[src > 0] == 0)  # C parameterized edges have no constant term
    c = ReferenceGraph.parameterized(graph.vertices_length(), src, dst, coef, weight=base)
    model = graph.compile()
    R = jnp.asarray(pj.models.sfs_rewards(graph))
    f = jax.jit(lambda th: (model(th).mean(), model(th).var(), jax.vmap(model(th).mean)(R)))
    for theta in (1.0, 0.4, 3.3):
        c.update_weights([theta])
        e, v, sfs = map(np.asarray, f(jnp.array([theta])))
        assert_rel(e, c.expectation(), what="E (parameterized C)")
        assert_rel(v, c.variance(), what="Var (parameterized C)")
        assert_rel(
            sfs, np.array([c.expectation(r) for r in np.asarray(R)]), what="SFS (parameterized C)"
        )
