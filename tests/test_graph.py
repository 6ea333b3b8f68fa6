"""Host-side graph construction: matrices round trips, callbacks, vertex look-up, sizes."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest

import phasejax as pj
from helpers.oracle import random_subintensity, random_subtransition


# -- from_matrices / as_matrices --------------------------------------------------------
@pytest.mark.parametrize("discrete", [False, True])
@pytest.mark.parametrize("defect", [0.0, 0.25])
def test_matrices_round_trip(discrete, defect):
    rng = np.random.default_rng(1 + int(discrete) + int(4 * defect))
    make = random_subtransition if discrete else random_subintensity
    alpha, M = make(rng, 40, density=0.1, defect=defect)
    graph = pj.Graph.from_matrices(alpha, M, discrete=discrete)
    assert graph.discrete is discrete
    # 40 states + the start + one absorbing vertex with state (-1,)
    assert graph.vertices_length() == 42
    assert graph.find_vertex([-1]).index == 41
    assert graph.vertex_at(41).edges() == []
    mats = graph.as_matrices()
    np.testing.assert_array_equal(mats.alpha, alpha)
    np.testing.assert_allclose(mats.matrix, M, rtol=1e-13, atol=1e-14)
    np.testing.assert_array_equal(mats.states, np.arange(1, 41)[:, None])
    np.testing.assert_array_equal(mats.vertices, np.arange(1, 41))
    # exit rates / probabilities land on the absorbing vertex
    src, dst, base, _ = graph.edge_arrays()
    exits = np.zeros(40)
    np.add.at(exits, src[dst == 41] - 1, base[dst == 41])
    want = (1.0 - M.sum(axis=1)) if discrete else -M.sum(axis=1)
    # (rows that should have no exit may get a rounding-level one: -sum(row) ~ 1e-15)
    np.testing.assert_allclose(exits, want, rtol=1e-12, atol=1e-13)
    dist = graph.compile(solver="dense")()
    np.testing.assert_allclose(float(dist.defect()), defect, atol=1e-14)


def test_from_matrices_custom_states_round_trip():
    alpha = np.array([0.2, 0.8, 0.0])
    S = np.array([[-3.0, 1.0, 1.0], [0.5, -2.0, 0.0], [0.0, 2.0, -4.0]])
    states = np.array([[0, 1], [5, 7], [2, 2]])
    graph = pj.Graph.from_matrices(alpha, S, states=states)
    assert graph.state_length == 2
    for i, s in enumerate(states):
        assert graph.find_vertex(s).index == i + 1
    mats = graph.as_matrices()
    np.testing.assert_array_equal(mats.states, states)
    np.testing.assert_allclose(mats.matrix, S, rtol=1e-15)
    np.testing.assert_array_equal(mats.alpha, alpha)
    # alpha[2] = 0: no start edge to it; (0, 1) is an ordinary state, not the start
    assert sorted(v.index for v, _, _ in graph.starting_vertex().edges()) == [1, 2]


def test_as_matrices_by_hand():
    """Parallel edges add up, parameterised rates follow theta, start->absorbing is defect."""
    g = pj.Graph(1, n_params=2)
    a, b, c, dead = (g.find_or_create_vertex([i]) for i in (1, 2, 3, 9))
    g.add_edge(0, a.index, 0.5)
    g.add_edge(0, b.index, 0.0, [0.1, 0.0])
    g.add_edge(0, dead.index, 0.2)  # straight to absorption: defect
    a.add_edge(b, 1.0)
    a.add_edge(b, 2.0)  # parallel edge
    a.add_edge_parameterized(c, 0.5, [1.0, 2.0])
    b.add_edge_parameterized(a, 0.0, [0.0, 3.0])
    b.add_edge(dead, 1.5)
    c.add_edge(dead, 4.0)
    theta = np.array([0.7, 0.3])
    mats = g.as_matrices(theta)
    r_ac = 0.5 + 0.7 + 0.6
    S = np.array(
        [
            [-(3.0 + r_ac), 3.0, r_ac],
            [0.9, -(0.9 + 1.5), 0.0],
            [0.0, 0.0, -4.0],
        ]
    )
    np.testing.assert_allclose(mats.matrix, S, rtol=1e-15)
    np.testing.assert_allclose(mats.alpha, [0.5, 0.07, 0.0], rtol=1e-15)
    np.testing.assert_array_equal(mats.vertices, [1, 2, 3])
    dist = g.compile(solver="dense")(theta)
    np.testing.assert_allclose(float(dist.defect()), 1 - 0.57, rtol=1e-14)


def test_discrete_as_matrices_stay_probability():
    g = pj.Graph(1, discrete=True)
    a, b, end = (g.find_or_create_vertex([i]) for i in (1, 2, 3))
    g.add_edge(0, a.index, 1.0)
    a.add_edge(b, 0.25)
    a.add_edge(end, 0.25)
    b.add_edge(a, 0.1)
    b.add_edge(end, 0.6)
    T = g.as_matrices().matrix
    np.testing.assert_allclose(T, [[0.5, 0.25], [0.1, 0.3]], rtol=1e-15)


# -- edge arrays / vertex API --------------------------------------------------------------
def test_edge_arrays_and_n_params_inference():
    g = pj.Graph(2)
    assert g.n_params is None
    v1 = g.find_or_create_vertex((1, 0))
    v2 = g.find_or_create_vertex((0, 1))
    g.add_edge(0, v1.index, 1.0)
    v1.add_edge(v2, 2.0)
    v1.add_edge_parameterized(v2, 0.5, [1.0, 0.0, 3.0])
    assert g.n_params == 3
    src, dst, base, coef = g.edge_arrays()
    np.testing.assert_array_equal(src, [0, 1, 1])
    np.testing.assert_array_equal(dst, [1, 2, 2])
    np.testing.assert_array_equal(base, [1.0, 2.0, 0.5])
    np.testing.assert_array_equal(coef, [[0, 0, 0], [0, 0, 0], [1, 0, 3]])
    assert g.edges_length() == 3
    assert repr(g) == "Graph(continuous, vertices=3, edges=3, n_params=3)"
    edges = v1.edges()
    assert [e[0] for e in edges] == [v2, v2]
    assert [e[1] for e in edges] == [2.0, 0.5]
    np.testing.assert_array_equal(edges[1][2], [1, 0, 3])
    np.testing.assert_array_equal(edges[0][2], [0, 0, 0])


def test_find_vertex_and_find_or_create():
    g = pj.Graph(3)
    assert g.vertices_length() == 1
    np.testing.assert_array_equal(g.starting_vertex().state(), [0, 0, 0])
    assert not g.vertex_exists([0, 0, 0])  # the start is not in the hash map
    zero = g.find_or_create_vertex([0, 0, 0])
    assert zero.index == 1 and zero != g.starting_vertex()
    v = g.find_or_create_vertex(np.array([1, 2, 3]))
    assert v.index == 2
    assert g.find_or_create_vertex((1, 2, 3)) == v  # no duplicate
    assert g.vertices_length() == 3
    assert g.find_vertex([1, 2, 3]) == v
    assert g.vertex_exists([1, 2, 3])
    assert g.vertex_at(2) == v and hash(g.vertex_at(2)) == hash(v)
    np.testing.assert_array_equal(v.state(), [1, 2, 3])
    assert v.state().dtype == np.int64
    with pytest.raises(KeyError, match="no vertex"):
        g.find_vertex([3, 2, 1])
    with pytest.raises(IndexError, match="out of range"):
        g.vertex_at(3)
    assert [u.index for u in g.vertices()] == [0, 1, 2]
    np.testing.assert_array_equal(g.states(), [[0, 0, 0], [0, 0, 0], [1, 2, 3]])
    other = pj.Graph(3)
    assert other.find_or_create_vertex([1, 2, 3]) != v  # different graphs


# -- from_callback ------------------------------------------------------------------------------
def _callback_graph():
    """A -> B at 2.0 (constant), A -> C at theta . (1, 0), B -> C at 0.5 + theta . (0, 2),
    C -> D at theta . (1, 1); D absorbing. Exercises all three transition forms."""

    def transitions(state, scale):
        s = int(state[0])
        if s == 0:
            return [((1,), 2.0 * scale), ((2,), [1.0, 0.0])]
        if s == 1:
            return [((2,), 0.5, [0.0, 2.0])]
        if s == 2:
            return [(np.array([3]), (1.0, 1.0))]
        return []

    return pj.Graph.from_callback(transitions, (0,), scale=1.0)


def test_from_callback_transition_forms():
    g = _callback_graph()
    assert g.n_params == 2
    assert g.vertices_length() == 5
    np.testing.assert_array_equal(g.states()[:, 0], [0, 0, 1, 2, 3])  # BFS order
    src, dst, base, coef = g.edge_arrays()
    got = sorted(zip(src.tolist(), dst.tolist(), base.tolist(), map(tuple, coef.tolist())))
    want = sorted(
        [
            (0, 1, 1.0, (0.0, 0.0)),
            (1, 2, 2.0, (0.0, 0.0)),
            (1, 3, 0.0, (1.0, 0.0)),
            (2, 3, 0.5, (0.0, 2.0)),
            (3, 4, 0.0, (1.0, 1.0)),
        ]
    )
    assert got == want
    theta = np.array([0.3, 0.4])
    S = np.array([[-2.3, 2.0, 0.3], [0.0, -1.3, 1.3], [0.0, 0.0, -0.7]])
    mats = g.as_matrices(theta)
    np.testing.assert_allclose(mats.matrix, S, rtol=1e-15)
    np.testing.assert_array_equal(mats.alpha, [1.0, 0.0, 0.0])


def test_from_callback_kwargs_and_discrete():
    def transitions(state, p):
        k = int(state[0])
        return [((k + 1,), p)] if k < 3 else []

    g = pj.Graph.from_callback(transitions, [0], discrete=True, p=0.25)
    assert g.discrete and g.vertices_length() == 5
    T = g.as_matrices().matrix
    np.testing.assert_allclose(T, np.diag([0.75] * 3) + np.diag([0.25] * 2, 1))


def test_from_callback_several_initial_states():
    def transitions(state):
        k = int(state[0])
        return [((k - 1, 0), 1.0)] if k > 0 else []

    g = pj.Graph.from_callback(transitions, [((2, 0), 0.25), ((1, 0), 0.5)])
    mats = g.as_matrices()
    by_state = {tuple(s): a for s, a in zip(mats.states.tolist(), mats.alpha)}
    assert by_state == {(2, 0): 0.25, (1, 0): 0.5}
    dist = g.compile(solver="dense")()
    np.testing.assert_allclose(float(dist.defect()), 0.25)
    np.testing.assert_allclose(float(dist.mean()), 0.25 * 2 + 0.5 * 1)


# -- model sizes -----------------------------------------------------------------------------
def _partitions(n, largest=None):
    largest = n if largest is None else largest
    if n == 0:
        yield ()
        return
    for first in range(min(n, largest), 0, -1):
        for rest in _partitions(n - first, first):
            yield (first,) + rest


def _kingman_counts(n):
    """States and transitions of the block-counting coalescent from integer partitions."""
    states = list(_partitions(n))
    edges = 0
    for p in states:
        mult = Counter(p)
        sizes = sorted(mult)
        for a_i, a in enumerate(sizes):
            for b in sizes[a_i:]:
                if a != b or mult[a] >= 2:
                    edges += 1
    return len(states), edges


@pytest.mark.parametrize("n", [2, 3, 4, 7, 12])
def test_kingman_sizes_small(n):
    g = pj.models.kingman(n)
    n_states, n_edges = _kingman_counts(n)
    assert g.vertices_length() == n_states + 1
    src, _, _, _ = g.edge_arrays()
    assert int(np.sum(src > 0)) == n_edges
    assert int(np.sum(src == 0)) == 1


def test_kingman_30_sizes():
    g = pj.models.kingman(30)
    assert _kingman_counts(30) == (5604, 48297)
    assert g.vertices_length() == 5605
    src, dst, _, coef = g.edge_arrays()
    assert int(np.sum(src > 0)) == 48297
    assert g.edges_length() == 48298  # + the single start edge
    assert g.n_params == 1 and coef.shape == (48298, 1)
    # every state's block sizes add up to n
    states = g.states()[1:]
    np.testing.assert_array_equal(states @ np.arange(1, 31), 30)
    # exactly one absorbing state: one lineage ancestral to all 30
    has_out = np.zeros(g.vertices_length(), dtype=bool)
    has_out[src] = True
    absorbing = np.flatnonzero(~has_out)
    assert absorbing.tolist() == [g.find_vertex([0] * 29 + [1]).index]


def test_from_matrices_rejects_duplicate_states():
    alpha = np.array([0.5, 0.5])
    S = np.array([[-1.0, 0.0], [0.0, -2.0]])
    with pytest.raises(ValueError, match="(?i)(distinct|duplicate|unique)"):
        pj.Graph.from_matrices(alpha, S, states=np.array([[3], [3]]))
