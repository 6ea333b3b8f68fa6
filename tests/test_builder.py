"""The vectorised graph builder: batched callbacks, the exact state index, runaway
protection, and the input errors of issue 12 (each naming the offending state)."""

from __future__ import annotations

import numpy as np
import pytest

import phasejax as pj
import phasejax._graph as graph_module


# -- reference per-state callbacks (the zoo's former builders) ----------------------------
def _coalesce(counts, n, offset, n_params, param):
    present = [i for i in range(n) if counts[offset + i] > 0]
    for a, i in enumerate(present):
        for j in present[a:]:
            ci, cj = counts[offset + i], counts[offset + j]
            pairs = ci * (ci - 1) // 2 if i == j else ci * cj
            if pairs:
                new = list(counts)
                new[offset + i] -= 1
                new[offset + j] -= 1
                new[offset + i + j + 1] += 1
                coefficients = [0.0] * n_params
                coefficients[param] = float(pairs)
                yield tuple(new), coefficients


def _kingman_per_state(n):
    def transitions(state):
        counts = state.tolist()
        return [] if sum(counts) <= 1 else list(_coalesce(counts, n, 0, 1, 0))

    return pj.Graph.from_callback(transitions, (n,) + (0,) * (n - 1), n_params=1)


def _two_deme_per_state(k, start):
    def transitions(state):
        counts = state.tolist()
        if sum(counts) <= 1:
            return []
        out = []
        for deme in range(2):
            out.extend(_coalesce(counts, k, deme * k, 4, deme))
            for i in range(k):
                if counts[deme * k + i]:
                    new = list(counts)
                    new[deme * k + i] -= 1
                    new[(1 - deme) * k + i] += 1
                    coefficients = [0.0] * 4
                    coefficients[2 + deme] = float(counts[deme * k + i])
                    out.append((tuple(new), coefficients))
        return out

    return pj.Graph.from_callback(transitions, start, n_params=4)


def _settle(ab, a, b):
    if ab + a == 1:
        ab, a, b = 0, 0, b + ab
    if ab + b == 1:
        ab, b, a = 0, 0, a + ab
    return ab, a, b


def _two_locus_per_state(n):
    merged = {(0, 0): 0, (0, 1): 0, (0, 2): 0, (1, 1): 1, (1, 2): 0, (2, 2): 2}

    def transitions(state):
        counts = [int(x) for x in state]
        if counts[0] + counts[1] <= 1 and counts[0] + counts[2] <= 1:
            return []
        out = []
        for (x, y), z in merged.items():
            pairs = counts[x] * (counts[x] - 1) // 2 if x == y else counts[x] * counts[y]
            if pairs:
                new = list(counts)
                new[x] -= 1
                new[y] -= 1
                new[z] += 1
                out.append((_settle(*new), [float(pairs), 0.0]))
        if counts[0]:
            ab, a, b = counts
            out.append((_settle(ab - 1, a + 1, b + 1), [0.0, 0.5 * ab]))
        return out

    return pj.Graph.from_callback(transitions, (n, 0, 0), n_params=2)


def _assert_same_graph(g, h):
    """Same vertices in the same order and the same edges in the same order."""
    np.testing.assert_array_equal(g.states(), h.states())
    for a, b in zip(g.edge_arrays(), h.edge_arrays(), strict=True):
        np.testing.assert_array_equal(a, b)
    assert (g.n_params, g.discrete) == (h.n_params, h.discrete)


@pytest.mark.parametrize("n", [2, 3, 6, 11])
def test_kingman_batched_matches_per_state(n):
    _assert_same_graph(pj.models.kingman(n), _kingman_per_state(n))


@pytest.mark.parametrize(
    "n1, n2, joint", [(2, 0, False), (3, 2, False), (2, 2, True), (3, 1, True)]
)
def test_two_island_batched_matches_per_state(n1, n2, joint):
    graph = pj.models.two_island(n1, n2, joint=joint)
    start = tuple(graph.starting_vertex().edges()[0][0].state())
    _assert_same_graph(graph, _two_deme_per_state(len(start) // 2, start))


@pytest.mark.parametrize("n", [2, 4, 9])
def test_two_locus_batched_matches_per_state(n):
    _assert_same_graph(pj.models.two_locus(n), _two_locus_per_state(n))


@pytest.mark.parametrize("batch_size", [1, 3, 4096])
def test_batch_size_does_not_change_the_graph(batch_size):
    def transitions(states):
        parent, children, pairs = pj.models._coalescent._coalescences(states, 0, 8)
        return parent, children, pairs.astype(float)

    graph = pj.Graph.from_batched_callback(transitions, (8,) + (0,) * 7, batch_size=batch_size)
    reference = _kingman_per_state(8)
    np.testing.assert_array_equal(graph.states(), reference.states())
    src, dst, base, _ = graph.edge_arrays()
    ref_src, ref_dst, _, ref_coefficients = reference.edge_arrays()
    np.testing.assert_array_equal(src, ref_src)
    np.testing.assert_array_equal(dst, ref_dst)
    # constant rates (a 3-tuple with (K,) rates): all the weight is in base
    np.testing.assert_array_equal(base, np.r_[1.0, ref_coefficients[1:, 0]])
    assert graph.n_params is None and graph.edge_arrays()[3].shape == (graph.edges_length(), 0)


def test_batched_affine_rates_and_several_initial_states():
    """4-tuple form ``(parent, children, base, coefficients)``; vertex order is breadth first."""

    def transitions(states):
        k = states[:, 0]
        parent = np.flatnonzero(k > 0)
        base = 0.5 * k[parent]
        coefficients = np.stack([k[parent], np.ones(parent.size)], axis=1).astype(float)
        return parent, states[parent] - 1, base, coefficients

    graph = pj.Graph.from_batched_callback(transitions, [((3,), 0.25), ((5,), 0.75)])
    # frontiers {3, 5} -> {2, 4} -> {1} (4 -> 3 exists) -> {0}
    np.testing.assert_array_equal(graph.states()[:, 0], [0, 3, 5, 2, 4, 1, 0])
    theta = np.array([2.0, 1.0])
    dist = graph.compile()(theta)
    # from k the chain steps down at rate 0.5 k + 2 k + 1
    mean = lambda k: sum(1.0 / (2.5 * i + 1.0) for i in range(1, k + 1))
    np.testing.assert_allclose(float(dist.mean()), 0.25 * mean(3) + 0.75 * mean(5), rtol=1e-14)


# -- the state index ---------------------------------------------------------------------------
def test_find_vertices_bulk_and_states_read_only():
    graph = pj.models.kingman(6)
    states = graph.states()
    order = np.array([5, 1, 5, 3])
    np.testing.assert_array_equal(graph.find_vertices(states[order]), order)
    with pytest.raises(KeyError, match=r"no vertex with state \(9, 0, 0, 0, 0, 0\)"):
        graph.find_vertices([[6, 0, 0, 0, 0, 0], [9, 0, 0, 0, 0, 0]])
    with pytest.raises(ValueError, match="read-only"):
        states[1, 0] = 7


@pytest.mark.parametrize("buckets", [1, 3])
def test_hash_collisions_are_resolved(monkeypatch, buckets):
    """With a hash that maps every state to one of a few values, the index still finds
    each state exactly (collisions within a batch and within the index)."""
    monkeypatch.setattr(
        graph_module, "_hash_rows", lambda rows, m: (rows.sum(axis=1) % buckets).astype(np.uint64)
    )
    _assert_same_graph(pj.models.kingman(7), _kingman_per_state(7))
    g = pj.Graph(2)
    vertices = [g.find_or_create_vertex((i, j)) for i in range(4) for j in range(3)]
    assert [v.index for v in vertices] == list(range(1, 13))
    assert all(g.find_vertex(v.state()) == v for v in vertices)
    assert g.find_or_create_vertex((2, 1)) == vertices[7]
    assert not g.vertex_exists((4, 0))


def test_many_single_inserts_and_edges_after_a_build():
    """Single inserts merge into the sorted index; a built graph can still grow."""
    g = pj.Graph(1)
    for i in range(3000):
        assert g.find_or_create_vertex([i * 7]).index == i + 1
    assert g.find_vertex([7 * 2999]).index == 3000
    graph = pj.models.kingman(4)
    v = graph.find_vertex([4, 0, 0, 0])
    w = graph.find_or_create_vertex([9, 9, 9, 9])
    before = len(v.edges())
    v.add_edge_parameterized(w, 1.0, [2.0])
    assert len(v.edges()) == before + 1 and v.edges()[-1][0] == w
    assert graph.find_or_create_vertex([8, 8, 8, 8]).edges() == []  # a vertex added after


# -- runaway protection and progress -------------------------------------------------------
def test_max_states_names_the_count_and_the_last_states():
    with pytest.raises(ValueError, match=r"exceeds max_states=20: \d+ states reached; the last"):
        pj.models.kingman(10, max_states=20)

    def runaway(state):  # an unbounded counter
        return [((int(state[0]) + 1,), 1.0)]

    with pytest.raises(ValueError, match=r"max_states=500: 501 states reached.*\(500,\)"):
        pj.Graph.from_callback(runaway, (0,), max_states=500)
    assert pj.models.kingman(10, max_states=42).vertices_length() == 43  # 42 partitions of 10


def test_progress_bar(capsys):
    pj.models.kingman(6, progress=True)
    assert "building graph" in capsys.readouterr().err
    pj.models.kingman(6)  # a short build shows nothing
    assert capsys.readouterr().err == ""


# -- bad states, rates and callback results -------------------------------------------------------
@pytest.mark.parametrize("bad", [(1.5,), (1.9,), (np.inf,), (np.nan,)])
def test_non_integer_or_non_finite_states_rejected(bad):
    def transitions(state):
        return [(bad, 1.0)] if state[0] == 0 else []

    with pytest.raises(ValueError, match=r"not a vector of finite integers.*from state \(0,\)"):
        pj.Graph.from_callback(transitions, (0,))
    with pytest.raises(ValueError, match="not a vector of finite integers"):
        pj.Graph.from_callback(lambda s: [], bad)
    with pytest.raises(ValueError, match="not a vector of finite integers"):
        pj.Graph(1).find_or_create_vertex(bad)


def test_integral_float_states_accepted():
    g = pj.Graph.from_callback(lambda s: [((2.0,), 1.0)] if s[0] == 1 else [], (1.0,))
    np.testing.assert_array_equal(g.states(), [[0], [1], [2]])
    assert g.states().dtype == np.int64


def test_rates_must_be_numbers():
    def string_rate(state):
        return [((1,), "1.5")] if state[0] == 0 else []

    with pytest.raises(ValueError, match=r"rate '1.5' of a transition from state \(0,\)"):
        pj.Graph.from_callback(string_rate, (0,))

    def string_coefficients(state):
        return [((1,), 0.0, ["1.0", "2.0"])] if state[0] == 0 else []

    with pytest.raises(ValueError, match=r"coefficients .* from state \(0,\)"):
        pj.Graph.from_callback(string_coefficients, (0,))
    g = pj.Graph(1)
    v, w = g.find_or_create_vertex([1]), g.find_or_create_vertex([2])
    with pytest.raises(ValueError, match="must be real numbers"):
        v.add_edge(w, "1.5")
    with pytest.raises(ValueError, match="must be real numbers"):
        pj.Graph.from_callback(lambda s: [] if s[0] else [((1,), 1.0)], [((0,), "1")])


def test_ragged_coefficients_name_the_state():
    def ragged(state):
        return [((1,), [1.0]), ((2,), [1.0, 2.0])] if state[0] == 0 else []

    with pytest.raises(ValueError, match=r"\[1.0, 2.0\] of a transition from state \(0,\)"):
        pj.Graph.from_callback(ragged, (0,))


def test_callback_returning_none_names_the_state():
    def forgetful(state):
        if state[0] < 2:
            return [((state[0] + 1,), 1.0)]

    with pytest.raises(ValueError, match=r"returned None for state \(2,\)"):
        pj.Graph.from_callback(forgetful, (0,))


def test_batched_callback_bad_results():
    start = (1,)
    with pytest.raises(ValueError, match="must return .parent, children, rates."):
        pj.Graph.from_batched_callback(lambda s: None, start)
    with pytest.raises(ValueError, match="of length 2"):
        pj.Graph.from_batched_callback(lambda s: ([0], s), start)
    with pytest.raises(ValueError, match=r"rows in \[0, 1\)"):
        pj.Graph.from_batched_callback(lambda s: (np.array([1]), s + 1, np.ones(1)), start)
    with pytest.raises(ValueError, match="1 parents but rates/base of shape .2,."):
        pj.Graph.from_batched_callback(lambda s: (np.array([0]), s + 1, np.ones(2)), start)
    with pytest.raises(ValueError, match="1 parents but 2 children"):
        pj.Graph.from_batched_callback(
            lambda s: (np.array([0]), np.array([[2], [3]]), np.ones(1)), start
        )
    with pytest.raises(ValueError, match=r"state \(2, 2\) has length 2.*from state \(1,\)"):
        pj.Graph.from_batched_callback(
            lambda s: (np.array([0]), np.array([[2, 2]]), np.ones(1)), start
        )
    with pytest.raises(ValueError, match=r"self-loop"):
        pj.Graph.from_batched_callback(lambda s: (np.array([0]), s, np.ones(1)), start)
    with pytest.raises(ValueError, match=r"edge \(1,\) -> \(2,\): weight -1.0 is negative"):
        pj.Graph.from_batched_callback(lambda s: (np.array([0]), s + 1, -np.ones(1)), start)


# -- from_matrices / as_matrices (issue 12) ----------------------------------------------------
def test_from_matrices_state_never_left():
    S = np.array([[-1.0, 1.0], [0.0, 0.0]])  # state 2 is never left: not absorbing
    with pytest.raises(ValueError, match=r"state \(2,\) \(row 1\) can never be left"):
        pj.Graph.from_matrices(np.array([1.0, 0.0]), S)
    T = np.array([[0.5, 0.5], [0.0, 1.0]])
    with pytest.raises(ValueError, match=r"can never be left \(T\[i, i\] = 1\)"):
        pj.Graph.from_matrices(np.array([1.0, 0.0]), T, discrete=True)


@pytest.mark.parametrize(
    "bad, word", [(np.inf, "infinite"), (-np.inf, "infinite"), (np.nan, "NaN")]
)
def test_from_matrices_non_finite_entries(bad, word):
    S = np.array([[-2.0, 1.0], [0.5, -1.0]])
    S[0, 1] = bad
    with pytest.raises(ValueError, match=rf"matrix entry \(0, 1\) is .*\({word}\)"):
        pj.Graph.from_matrices(np.array([1.0, 0.0]), S)
    with pytest.raises(ValueError, match=r"alpha\[1\] is nan"):
        pj.Graph.from_matrices(np.array([0.5, np.nan]), np.array([[-2.0, 1.0], [0.5, -1.0]]))


def test_as_matrices_needs_theta_for_a_parameterised_graph():
    graph = pj.models.erlang(3)
    with pytest.raises(ValueError, match=r"1 parameter\(s\): as_matrices\(theta\) needs theta"):
        graph.as_matrices()
    with pytest.raises(ValueError, match=r"theta has shape \(2,\), expected \(1,\)"):
        graph.as_matrices(np.array([1.0, 2.0]))
    np.testing.assert_allclose(
        graph.as_matrices(np.array([2.0])).matrix, np.diag([-2.0] * 3) + np.diag([2.0] * 2, 1)
    )


def test_as_matrices_uses_the_transient_states_of_compilation():
    """An unreachable vertex with out-edges is not transient (as in compile_graph); a state
    whose out-rates are all zero at theta keeps its (zero) row."""
    g = pj.Graph(1, n_params=1)
    a, b, end, lost = (g.find_or_create_vertex([i]) for i in (1, 2, 3, 4))
    g.add_edge(0, a.index, 1.0)
    a.add_edge(b, 2.0)
    b.add_edge_parameterized(end, 0.0, [1.0])
    lost.add_edge(end, 5.0)  # unreachable from the start
    mats = g.as_matrices(np.array([0.0]))
    np.testing.assert_array_equal(mats.vertices, [1, 2])
    np.testing.assert_array_equal(np.asarray(g.compile().transient_vertices), mats.vertices)
    np.testing.assert_array_equal(mats.matrix, [[-2.0, 2.0], [0.0, 0.0]])
