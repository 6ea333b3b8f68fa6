"""Input validation: every documented error, with its message, at build, compile and
call time (eagerly, under jit and under vmap).

Runtime checks use ``equinox.error_if``: eagerly they raise ``EquinoxRuntimeError``
(a ``RuntimeError``), under ``jax.jit`` a ``JaxRuntimeError`` (a ``RuntimeError``) and
under ``jit(vmap(...))`` the callback failure surfaces as a ``ValueError``; the message
carries the text of the check in every case.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import phasejax as pj

RUNTIME_ERRORS = (RuntimeError, ValueError)


def _chain(discrete=False, n_params=1, weight=None, coef=(1.0,)):
    """start -> a -> b -> end, with a -> b parameterised (weight + coef . theta)."""
    g = pj.Graph(1, discrete=discrete, n_params=n_params)
    a, b, end = (g.find_or_create_vertex([i]) for i in (1, 2, 3))
    g.add_edge(0, a.index, 1.0)
    g.add_edge(a.index, b.index, 0.0 if weight is None else weight, list(coef))
    g.add_edge(b.index, end.index, 0.5)
    return g


@pytest.fixture(scope="module")
def chain_model():
    return _chain().compile(solver="dense")


# -- graph building --------------------------------------------------------------------------------
@pytest.mark.parametrize("weight", [-1.0, -1e-300])
def test_add_edge_negative_weight(weight):
    g = pj.Graph(1)
    v = g.find_or_create_vertex([1])
    with pytest.raises(ValueError, match="negative"):
        g.add_edge(0, v.index, weight)
    w = g.find_or_create_vertex([2])
    with pytest.raises(ValueError, match="negative"):
        v.add_edge(w, weight)
    assert g.edges_length() == 0


@pytest.mark.parametrize("weight", [np.nan, np.inf, -np.inf])
def test_add_edge_nan_or_infinite_weight(weight):
    g = pj.Graph(1)
    v, w = g.find_or_create_vertex([1]), g.find_or_create_vertex([2])
    with pytest.raises(ValueError, match="NaN or infinite"):
        v.add_edge(w, weight)
    with pytest.raises(ValueError, match="NaN or infinite"):
        v.add_edge_parameterized(w, weight, [1.0])


@pytest.mark.parametrize("coef", [[np.nan, 1.0], [1.0, np.inf]])
def test_add_edge_nan_coefficients(coef):
    g = pj.Graph(1)
    v, w = g.find_or_create_vertex([1]), g.find_or_create_vertex([2])
    with pytest.raises(ValueError, match="NaN or infinity"):
        v.add_edge_parameterized(w, 0.0, coef)
    assert g.edges_length() == 0


def test_coefficient_count_mismatch():
    g = pj.Graph(1, n_params=2)
    v, w = g.find_or_create_vertex([1]), g.find_or_create_vertex([2])
    with pytest.raises(ValueError, match="3 coefficients, but the graph has 2 parameters"):
        v.add_edge_parameterized(w, 0.0, [1.0, 2.0, 3.0])
    g2 = pj.Graph(1)
    v2, w2 = g2.find_or_create_vertex([1]), g2.find_or_create_vertex([2])
    v2.add_edge_parameterized(w2, 0.0, [1.0])  # infers n_params = 1
    with pytest.raises(ValueError, match="2 coefficients, but the graph has 1 parameters"):
        w2.add_edge_parameterized(v2, 0.0, [1.0, 1.0])


def test_self_loop():
    g = pj.Graph(1)
    v = g.find_or_create_vertex([1])
    with pytest.raises(ValueError, match="self-loop"):
        v.add_edge(v, 1.0)
    gd = pj.Graph(1, discrete=True)
    vd = gd.find_or_create_vertex([1])
    with pytest.raises(ValueError, match="self-loop"):
        gd.add_edge(vd.index, vd.index, 0.5)


def test_edge_index_out_of_range():
    g = pj.Graph(1)
    v = g.find_or_create_vertex([1])
    with pytest.raises(ValueError, match="out of range"):
        g.add_edge(v.index, 5, 1.0)
    with pytest.raises(ValueError, match="out of range"):
        g.add_edge(v.index, 0, 1.0)  # the start is not a state: no edges into it


def test_state_of_wrong_length():
    g = pj.Graph(3)
    with pytest.raises(ValueError, match=r"has length 2, but this graph has state_length 3"):
        g.find_or_create_vertex([1, 2])
    with pytest.raises(ValueError, match="has length 4"):
        g.find_vertex([1, 2, 3, 4])
    with pytest.raises(ValueError, match="has length"):
        g.vertex_exists([1])
    with pytest.raises(ValueError, match="state_length must be >= 1"):
        pj.Graph(0)


def test_from_callback_validation():
    def wrong_length(state):
        return [((1, 2), 1.0)] if state[0] == 0 else []

    with pytest.raises(ValueError, match="has length"):
        pj.Graph.from_callback(wrong_length, (0,))

    def negative(state):
        return [((1,), -2.0)] if state[0] == 0 else []

    with pytest.raises(ValueError, match="negative"):
        pj.Graph.from_callback(negative, (0,))

    def nan_rate(state):
        return [((1,), float("nan"))] if state[0] == 0 else []

    with pytest.raises(ValueError, match="NaN"):
        pj.Graph.from_callback(nan_rate, (0,))

    def nan_coefficients(state):
        return [((1,), [1.0, float("nan")])] if state[0] == 0 else []

    with pytest.raises(ValueError, match="(NaN|finite)"):
        pj.Graph.from_callback(nan_coefficients, (0,))

    def self_loop(state):
        return [((0,), 1.0)]

    with pytest.raises(ValueError, match="self-loop"):
        pj.Graph.from_callback(self_loop, (0,))


def test_from_matrices_validation():
    S = np.array([[-2.0, 1.0], [0.5, -1.0]])
    with pytest.raises(ValueError, match="matrix has shape"):
        pj.Graph.from_matrices(np.array([1.0]), S)
    with pytest.raises(ValueError, match="alpha must be non-negative and sum to at most 1"):
        pj.Graph.from_matrices(np.array([0.7, 0.6]), S)
    with pytest.raises(ValueError, match="alpha must be non-negative"):
        pj.Graph.from_matrices(np.array([1.2, -0.2]), S)
    with pytest.raises(ValueError, match="S must have non-negative off-diagonal"):
        pj.Graph.from_matrices(np.array([1.0, 0.0]), np.array([[-2.0, -1.0], [0.5, -1.0]]))
    with pytest.raises(ValueError, match="non-positive row sums"):
        pj.Graph.from_matrices(np.array([1.0, 0.0]), np.array([[-1.0, 2.0], [0.5, -1.0]]))
    with pytest.raises(ValueError, match="T must be non-negative with row sums at most 1"):
        pj.Graph.from_matrices(
            np.array([1.0, 0.0]), np.array([[0.5, 0.6], [0.1, 0.1]]), discrete=True
        )
    with pytest.raises(ValueError, match="T must be non-negative"):
        pj.Graph.from_matrices(
            np.array([1.0, 0.0]), np.array([[0.5, -0.1], [0.1, 0.1]]), discrete=True
        )


# -- compile time --------------------------------------------------------------------------------------
def test_no_absorbing_state():
    g = pj.Graph(1)
    a, b = g.find_or_create_vertex([1]), g.find_or_create_vertex([2])
    g.add_edge(0, a.index, 1.0)
    a.add_edge(b, 1.0)
    b.add_edge(a, 1.0)
    with pytest.raises(ValueError, match="no absorbing state"):
        g.compile()


def test_reachable_state_that_can_never_reach_absorption():
    g = pj.Graph(1)
    a, b, c, end = (g.find_or_create_vertex([i]) for i in (1, 2, 3, 4))
    g.add_edge(0, a.index, 1.0)
    a.add_edge(end, 1.0)
    a.add_edge(b, 1.0)  # b <-> c is a closed class reachable from a
    b.add_edge(c, 1.0)
    c.add_edge(b, 2.0)
    with pytest.raises(
        ValueError, match=r"2 reachable state\(s\) can never reach an absorbing state"
    ):
        g.compile()


def test_unreachable_trap_is_fine():
    """A closed class that cannot be reached is not an error (it is not a state)."""
    g = pj.Graph(1)
    a, b, c, end = (g.find_or_create_vertex([i]) for i in (1, 2, 3, 4))
    g.add_edge(0, a.index, 1.0)
    a.add_edge(end, 2.0)
    b.add_edge(c, 1.0)
    c.add_edge(b, 1.0)
    model = g.compile(solver="dense")
    assert model.n_transient == 1
    np.testing.assert_allclose(float(jax.jit(lambda: model().mean())()), 0.5, rtol=1e-14)


def test_starting_vertex_without_edges():
    g = pj.Graph(1)
    a, end = g.find_or_create_vertex([1]), g.find_or_create_vertex([2])
    a.add_edge(end, 1.0)
    with pytest.raises(ValueError, match="starting vertex has no edges"):
        g.compile()


def test_discrete_constant_probabilities_above_one_at_compile():
    g = pj.Graph(1, discrete=True)
    a, b, end = (g.find_or_create_vertex([i]) for i in (1, 2, 3))
    g.add_edge(0, a.index, 1.0)
    a.add_edge(b, 0.7)
    a.add_edge(end, 0.6)
    b.add_edge(end, 1.0)
    with pytest.raises(ValueError, match=r"out-probabilities of state \(1,\) sum to 1.3 > 1"):
        g.compile()


def test_discrete_initial_probabilities_above_one_at_compile():
    g = pj.Graph(1, discrete=True)
    a, b = g.find_or_create_vertex([1]), g.find_or_create_vertex([2])
    g.add_edge(0, a.index, 0.8)
    g.add_edge(0, b.index, 0.4)
    a.add_edge(b, 0.5)
    with pytest.raises(ValueError, match="sum to 1.2 > 1"):
        g.compile()


def test_sweep_on_cyclic_graph():
    with pytest.raises(ValueError, match="solver='sweep' needs an acyclic graph"):
        pj.models.mm1_capacity(3).compile(solver="sweep")
    with pytest.raises(ValueError, match="needs an acyclic graph"):
        pj.models.two_island(2, 0).compile(solver="sweep")


def test_unknown_solver():
    with pytest.raises(ValueError, match="unknown solver 'lu'"):
        pj.models.mm1_capacity(3).compile(solver="lu")


def test_invalid_explicit_initial():
    graph = pj.models.erlang(2)
    V = graph.vertices_length()
    with pytest.raises(ValueError, match="`initial` must be"):
        graph.compile(initial=np.full(V, 0.5))
    with pytest.raises(ValueError, match="`initial` must be"):
        graph.compile(initial=np.ones(V - 1) / V)
    bad = np.zeros(V)
    bad[1], bad[2] = 1.2, -0.2
    with pytest.raises(ValueError, match="`initial` must be"):
        graph.compile(initial=bad)


def test_continuous_initial_probabilities_above_one():
    g = pj.Graph(1)
    a, b, end = (g.find_or_create_vertex([i]) for i in (1, 2, 3))
    g.add_edge(0, a.index, 0.8)
    g.add_edge(0, b.index, 0.7)
    a.add_edge(end, 1.0)
    b.add_edge(end, 1.0)
    with pytest.raises(RUNTIME_ERRORS, match="sum"):
        float(g.compile(solver="dense")().defect())


# -- call time: theta ------------------------------------------------------------------------------------
def test_theta_of_wrong_shape(chain_model):
    with pytest.raises(
        ValueError, match=r"theta has shape \(2,\), but this model has 1 parameters"
    ):
        chain_model(jnp.array([1.0, 2.0]))
    with pytest.raises(ValueError, match=r"theta has shape \(0,\)"):
        chain_model()  # theta omitted on a parameterised model
    with pytest.raises(ValueError, match=r"theta has shape \(3, 1\).*jax.vmap"):
        chain_model(jnp.ones((3, 1)))
    with pytest.raises(ValueError, match="theta has shape"):
        jax.jit(lambda t: chain_model(t).mean())(jnp.array([1.0, 2.0]))
    with pytest.raises(ValueError, match=r"theta has shape \(\)"):
        chain_model(jnp.array(1.0))


@pytest.mark.parametrize(
    "theta, problem", [(-1.0, "negative"), (np.nan, "NaN"), (np.inf, "(NaN|infinite)")]
)
def test_bad_rate_at_theta_is_named(chain_model, theta, problem):
    # eagerly the edge is named (graph vertices and its rate); under jit the kind of problem
    named = rf"an edge rate is {problem}.*: edge \d+ \(vertex \d+ -> vertex \d+\)"
    with pytest.raises(ValueError, match=named):
        chain_model(jnp.array([theta]))
    with pytest.raises(RUNTIME_ERRORS, match=f"an edge rate is {problem} at this theta"):
        jax.jit(lambda t: chain_model(t).mean())(jnp.array([theta]))
    mean, ok = jax.jit(lambda t: (lambda d, ok: (d.mean(), ok))(*chain_model.guarded(t)))(
        jnp.array([theta])
    )
    assert not bool(ok) and np.isfinite(float(mean))


def test_negative_rate_under_vmap(chain_model):
    f = jax.jit(jax.vmap(lambda t: chain_model(t).mean()))
    np.testing.assert_allclose(
        np.asarray(f(jnp.array([[1.0], [2.0]]))), [1 + 2, 0.5 + 2], rtol=1e-14
    )
    with pytest.raises(RUNTIME_ERRORS, match=r"negative at this theta \(batch element 1; 1 of 2"):
        f(jnp.array([[1.0], [-0.5]]))
    # nested batches name the element by its indices; gradients still raise
    g = jax.jit(jax.vmap(jax.vmap(lambda t: chain_model(t).mean())))
    with pytest.raises(RUNTIME_ERRORS, match=r"batch element \(1, 0\)"):
        g(jnp.array([[[1.0], [2.0]], [[-1.0], [2.0]]]))
    with pytest.raises(RUNTIME_ERRORS, match="negative at this theta"):
        jax.jit(jax.vmap(jax.grad(lambda t: chain_model(t).mean())))(jnp.array([[1.0], [-0.5]]))
    # the batch-safe path names the bad element
    _, ok = jax.vmap(chain_model.guarded)(jnp.array([[1.0], [-0.5], [2.0]]))
    np.testing.assert_array_equal(np.asarray(ok), [True, False, True])


def test_rate_fn_producing_negative_rates():
    model = _chain().compile(solver="dense", rate_fn=lambda th, c: c @ jnp.sin(th))
    np.testing.assert_allclose(
        float(jax.jit(lambda t: model(t).mean())(jnp.array([np.pi / 2]))), 3.0
    )
    with pytest.raises(RUNTIME_ERRORS, match="an edge rate is negative"):
        jax.jit(lambda t: model(t).mean())(jnp.array([-np.pi / 2]))


def test_state_that_can_never_be_left_at_theta(chain_model):
    msg = "a transient state can never be left: its out-rates are all zero: vertex 1 "
    with pytest.raises(RUNTIME_ERRORS, match=msg):
        chain_model(jnp.array([0.0]))
    with pytest.raises(RUNTIME_ERRORS, match="can never be left"):
        jax.jit(lambda t: chain_model(t).var())(jnp.array([0.0]))
    # a constant zero-weight edge is the same at every theta
    g = pj.Graph(1)
    a, end = g.find_or_create_vertex([1]), g.find_or_create_vertex([2])
    g.add_edge(0, a.index, 1.0)
    a.add_edge(end, 0.0)
    with pytest.raises(RUNTIME_ERRORS, match="can never be left"):
        g.compile(solver="dense")()


def test_discrete_parameterised_probabilities_above_one_at_call():
    model = _chain(discrete=True, weight=0.5).compile(solver="dense")
    np.testing.assert_allclose(
        float(jax.jit(lambda t: model(t).mean())(jnp.array([0.25]))), 1 / 0.75 + 2
    )
    with pytest.raises(RUNTIME_ERRORS, match="out-probabilities of a state sum to more than 1"):
        model(jnp.array([0.6]))
    with pytest.raises(RUNTIME_ERRORS, match="out-probabilities of a state sum to more than 1"):
        jax.jit(lambda t: model(t).mean())(jnp.array([0.6]))


def test_discrete_parameterised_initial_above_one_at_call():
    g = pj.Graph(1, discrete=True, n_params=1)
    a, end = g.find_or_create_vertex([1]), g.find_or_create_vertex([2])
    g.add_edge(0, a.index, 0.5, [1.0])
    a.add_edge(end, 0.5)
    model = g.compile(solver="dense")
    np.testing.assert_allclose(float(jax.jit(lambda t: model(t).defect())(jnp.array([0.25]))), 0.25)
    with pytest.raises(RUNTIME_ERRORS, match="initial probabilities sum to more than 1"):
        jax.jit(lambda t: model(t).mean())(jnp.array([0.75]))


# -- call time: rewards and arguments --------------------------------------------------------------------------
def test_rewards_of_wrong_length(chain_model):
    d = chain_model(jnp.array([1.0]))
    V = 4
    with pytest.raises(
        ValueError, match=r"rewards have 3 entries along axis 0, expected one per vertex \(4"
    ):
        d.mean(jnp.ones(V - 1))
    with pytest.raises(ValueError, match="expected one per vertex"):
        d.moments(2, jnp.ones(V + 1))
    with pytest.raises(ValueError, match="expected one per vertex"):
        d.covariance_matrix(jnp.ones((2, V + 1)))
    with pytest.raises(ValueError, match="expected one per vertex"):
        d.expected_waiting_time(jnp.ones(V - 1))


@pytest.mark.parametrize("bad", [-1.0, np.nan, np.inf])
def test_negative_nan_or_infinite_rewards(chain_model, bad):
    r = jnp.array([0.0, 1.0, bad, 0.0])
    with pytest.raises(ValueError, match=r"rewards must be finite and non-negative.*index \(2,\)"):
        chain_model(jnp.array([1.0])).reward_transform(r)
    with pytest.raises(RUNTIME_ERRORS, match="rewards must be finite and non-negative"):
        chain_model(jnp.array([1.0])).mean(r)
    with pytest.raises(RUNTIME_ERRORS, match="rewards must be finite and non-negative"):
        jax.jit(lambda t, r: chain_model(t).var(r))(jnp.array([1.0]), r)
    R = jnp.stack([jnp.ones(4), r])
    with pytest.raises(RUNTIME_ERRORS, match="rewards must be finite and non-negative"):
        jax.jit(lambda t: chain_model(t).covariance_matrix(R))(jnp.array([1.0]))


def test_concrete_rewards_are_checked_before_tracing():
    """Concrete rewards are checked in Python (the error names the entry), so the compiled
    solve carries no error callback and JAX's persistent cache can keep it; traced rewards
    keep the check inside. Both give the expected SFS 2/i (Kingman)."""
    graph = pj.models.kingman(5)
    d = graph.compile()(jnp.array([1.0]))
    sfs = pj.models.sfs_rewards(graph)
    concrete = jax.jit(lambda d: d.mean(sfs))
    traced = jax.jit(lambda d, r: d.mean(r))
    assert "callback" not in concrete.lower(d).as_text()
    assert "callback" in traced.lower(d, sfs).as_text()
    want = 2 / np.arange(1, 5)
    np.testing.assert_allclose(concrete(d), want, rtol=1e-14)
    np.testing.assert_allclose(traced(d, sfs), want, rtol=1e-14)
    bad = sfs.copy()
    bad[1, 3] = np.nan
    with pytest.raises(ValueError, match=r"finite and non-negative.*index \(1, 3\)"):
        d.covariance_matrix(bad)


def test_moments_order_must_be_positive(chain_model):
    with pytest.raises(ValueError, match="k must be >= 1, got 0"):
        chain_model(jnp.array([1.0])).moments(0)


def test_guarded_flags_inadmissible_theta_without_raising():
    """``Model.guarded``: admissible thetas give ``model(theta)`` itself; bad ones (NaN,
    negative or zero rates, discrete probabilities over 1) are flagged, with valid
    stand-in rates so that evaluation cannot fail."""
    model = pj.models.kingman(4).compile()
    dist, ok = model.guarded(jnp.array([1.3]))
    assert bool(ok)
    np.testing.assert_allclose(dist.mean(), model(jnp.array([1.3])).mean(), rtol=1e-14)
    for bad in (0.0, -1.0, np.nan, np.inf):
        dist, ok = jax.jit(lambda th: model.guarded(th))(jnp.array([bad]))
        assert not bool(ok)
        assert np.isfinite(float(dist.mean()))
    g = pj.Graph(1, discrete=True)
    a = g.find_or_create_vertex((1,))
    b = g.find_or_create_vertex((2,))
    g.starting_vertex().add_edge(a, 1.0)
    a.add_edge_parameterized(b, 0.0, [1.0])
    a.add_edge_parameterized(g.find_or_create_vertex((0,)), 0.0, [1.0])
    dph = g.compile()
    assert bool(dph.guarded(jnp.array([0.3]))[1])
    dist, ok = dph.guarded(jnp.array([0.7]))  # 2 x 0.7 > 1
    assert not bool(ok)
    np.testing.assert_allclose(
        float(dist.mean()), 1.5, rtol=1e-12
    )  # stand-in 1/3 per edge: leaves w.p. 2/3


def test_closed_class_at_theta_is_named():
    """a <-> b with the exit a -> end at rate theta[2]: at theta[2] = 0 both states are
    left, but never towards absorption (E[T] = inf): an error, not NaN moments."""
    g = pj.Graph(1, n_params=3)
    a, b, end = (g.find_or_create_vertex([i]) for i in (1, 2, 3))
    g.add_edge(0, a.index, 1.0)
    g.add_edge(a.index, b.index, 0.0, [1.0, 0.0, 0.0])
    g.add_edge(b.index, a.index, 0.0, [0.0, 1.0, 0.0])
    g.add_edge(a.index, end.index, 0.0, [0.0, 0.0, 1.0])
    model = g.compile(solver="dense")
    np.testing.assert_allclose(float(model(jnp.array([1.0, 1.0, 2.0])).mean()), 1.0)
    with pytest.raises(ValueError, match=r"closed class.*vertices \[1, 2\]"):
        model(jnp.array([1.0, 1.0, 0.0]))
    with pytest.raises(RUNTIME_ERRORS, match="closed class"):
        jax.jit(lambda t: model(t).mean())(jnp.array([1.0, 1.0, 0.0]))
    _, ok = jax.vmap(model.guarded)(jnp.array([[1.0, 1.0, 2.0], [1.0, 1.0, 0.0]]))
    np.testing.assert_array_equal(np.asarray(ok), [True, False])


def test_infinite_theta_names_an_edge_that_depends_on_it():
    g = pj.Graph(1, n_params=2)
    a, end = g.find_or_create_vertex([1]), g.find_or_create_vertex([2])
    g.add_edge(0, a.index, 1.0)
    g.add_edge(a.index, end.index, 0.0, [0.0, 1.0])
    with pytest.raises(
        ValueError, match=r"infinite because theta\[1\] = inf: edge 1 \(vertex 1 -> vertex 2\)"
    ):
        g.compile()(jnp.array([1.0, np.inf]))


def test_bad_theta_under_an_eager_gradient_names_the_edge():
    """theta carries a tangent (eager grad, jacfwd), the problem flags do not: the message
    still names the edge (not a tracer conversion error)."""
    model = pj.models.kingman(5).compile()
    loglik = lambda th: jnp.sum(model(th).logpdf(np.array([1.0])))
    for transform in (jax.grad, jax.jacfwd):
        with pytest.raises(ValueError, match=r"edge rate is negative: edge \d+ .* rate -10.0"):
            transform(loglik)(jnp.array([-1.0]))
