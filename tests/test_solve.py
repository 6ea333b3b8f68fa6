"""The block-triangular solver over strongly connected components (``BlockSweep``) against
dense numpy solves, closed forms, finite differences, the dense LU and Python loops."""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import phasejax as pj
from helpers.oracle import (
    assert_bundle_close,
    cycle_with_exits,
    library_bundle,
    oracle_bundle_from,
    random_rewards,
)
from phasejax._solve import System, block_schedule, gmres_preconditioner
from phasejax._topology import strong_components

# component sizes of the random graphs (shuffled over the states)
SHAPES = {
    "one_component": [45],
    "many_small": [1, 2, 3, 4] * 6,
    "mixed": [1, 5, 17, 2, 33, 3, 9, 1, 1, 24, 6],
    "mostly_acyclic": [1] * 30 + [7],
}


def blocky(rng, sizes, discrete, density=0.12):
    """``(alpha, S or T)`` with the given strongly connected components: each a random
    cycle through its states plus random edges, edges between components only towards a
    lower component, an exit from at least one state of each component."""
    n = sum(sizes)
    comp = rng.permutation(np.repeat(np.arange(len(sizes)), sizes))
    off, exit_ = cycle_with_exits(rng, n, density, exit_fraction=0.2)
    off = np.where(comp[None, :] < comp[:, None], off, 0.0)  # across: downwards only
    for c in range(len(sizes)):
        members = rng.permutation(np.flatnonzero(comp == c))
        if members.size > 1:
            off[members, np.roll(members, 1)] += rng.uniform(0.5, 2.0, members.size)
            inside = np.ix_(members, members)
            extra = (rng.random((members.size,) * 2) < 2 * density) * rng.uniform(0.1, 3.0)
            off[inside] += extra * (1 - np.eye(members.size))
        exit_[members[0]] += rng.uniform(0.2, 1.0)
    alpha = rng.random(n) * (rng.random(n) < 0.3)
    alpha[0] += 0.1
    alpha *= 0.9 / alpha.sum()
    if discrete:  # with self-loops
        stay = rng.uniform(0.0, 0.5, n)
        total = off.sum(1) + exit_
        return alpha, off * ((1 - stay) / total)[:, None] + np.diag(stay)
    return alpha, off - np.diag(off.sum(1) + exit_)


def system_of(M, discrete):
    """Edge arrays (absorption = index n) and the :class:`System` of ``-S`` or ``I - T``."""
    n = len(M)
    off = M.copy()
    if not discrete:
        np.fill_diagonal(off, 0.0)
    exit_ = (1.0 - M.sum(1)) if discrete else -M.sum(1)
    src, dst = np.nonzero(off)
    rate = off[src, dst]
    has_exit = np.flatnonzero(exit_ > 1e-15)
    src = np.concatenate([src, has_exit])
    dst = np.concatenate([dst, np.full(has_exit.size, n)])
    rate = np.concatenate([rate, exit_[has_exit]])
    diag = np.bincount(src, weights=rate, minlength=n)
    system = System(*map(jnp.asarray, (src, dst, rate, diag)))
    return src, dst, system


@pytest.mark.parametrize("discrete", [False, True], ids=["ph", "dph"])
@pytest.mark.parametrize("shape", list(SHAPES))
def test_raw_solves_against_numpy(shape, discrete):
    """``M x = b`` and ``M^T x = b`` for one and several right-hand sides, with one step per
    level and with every level cut into many steps."""
    rng = np.random.default_rng(len(shape) + discrete)
    _, M = blocky(rng, SHAPES[shape], discrete)
    src, dst, system = system_of(M, discrete)
    dense = np.eye(len(M)) - M if discrete else -M
    b = rng.normal(size=(len(M), 3))

    @eqx.filter_jit
    def solves(solver, system, b):
        state = solver.prepare(system)
        return [
            solver.raw_solve(system, state, rhs, t) for t in (False, True) for rhs in (b, b[:, 0])
        ]

    for step_cost in (0, 10**9):
        solver = block_schedule(len(M), src, dst, step_cost=step_cost)
        got = solves(solver, system, jnp.asarray(b))
        for transpose in (False, True):
            want = np.linalg.solve(dense.T if transpose else dense, b)
            for rhs, ref in zip(got[2 * transpose : 2 * transpose + 2], (want, want[:, 0])):
                np.testing.assert_allclose(rhs, ref, rtol=1e-12, atol=1e-12 * np.abs(ref).max())
    components = [np.asarray(m).shape[1] for m in solver.members]
    assert max(components) >= max(SHAPES[shape])  # buckets hold the largest component


@pytest.mark.parametrize("discrete", [False, True], ids=["ph", "dph"])
def test_every_quantity_against_dense_oracle(discrete):
    rng = np.random.default_rng(7 + discrete)
    alpha, M = blocky(rng, SHAPES["mixed"], discrete)
    graph = pj.Graph.from_matrices(alpha, M, discrete=discrete)
    model = graph.compile(solver="blocks")
    assert isinstance(model.solver, pj.BlockSweep)
    V = graph.vertices_length()
    R = random_rewards(V, seed=3)
    ref = oracle_bundle_from(alpha, M, np.arange(1, len(alpha) + 1), V, discrete, R)
    assert_bundle_close(library_bundle(model)(None, jnp.asarray(R)), ref, 1e-12)


NEAR_REDUCIBLE = (1e8, 1.5e-8, 0.7e-8)  # swap rate, exit of a, exit of b


def near_reducible_graph():
    """Two states swapping at rate ``swap``; the exit of ``a`` is the parameter."""
    swap, _, exit_b = NEAR_REDUCIBLE
    graph = pj.Graph(1)
    a, b, end = (graph.find_or_create_vertex([k]) for k in (1, 2, 3))
    graph.starting_vertex().add_edge_parameterized(a, 1.0, [0.0])
    a.add_edge(b, swap)
    b.add_edge(a, swap)
    a.add_edge_parameterized(end, 0.0, [1.0])  # exit_a = theta
    b.add_edge(end, exit_b)
    return graph


def test_near_reducible_cycle_is_exact():
    """Two states swapping at rate 1e8 with exits of order 1e-8: the exit is below the
    rounding of the diagonal, so LU on ``-S`` loses every digit; the block inverse takes the
    exits from the edges and is exact to rounding, and so is the derivative in an exit."""
    swap, exit_a, exit_b = NEAR_REDUCIBLE
    graph = near_reducible_graph()
    det = swap * (exit_a + exit_b) + exit_a * exit_b  # no cancellation
    x = np.array([2 * swap + exit_b, 2 * swap + exit_a]) / det  # (-S)^{-1} 1
    second = 2 * np.array(
        [(swap + exit_b) * x[0] + swap * x[1], swap * x[0] + (swap + exit_a) * x[1]]
    )
    want = np.array([x[0], second[0] / det])
    d_mean = -(2 * swap + exit_b) * (swap + exit_b) / det**2
    model = graph.compile(solver="blocks")
    theta = jnp.array([exit_a])
    got, grad = jax.jit(lambda t: (model(t).moments(2), jax.grad(lambda u: model(u).mean())(t)))(
        theta
    )
    np.testing.assert_allclose(got, want, rtol=1e-14)
    np.testing.assert_allclose(grad, [d_mean], rtol=1e-14)
    dense = graph.compile(solver="dense")(theta).moments(2)
    assert abs(dense[0] / want[0] - 1) > 1e-4  # the case has power


def test_gradients_against_finite_differences_and_dense():
    graph = pj.models.two_island(3, 2)
    blocks, dense = graph.compile(solver="blocks"), graph.compile(solver="dense")
    assert isinstance(blocks.solver, pj.BlockSweep)
    sfs = jnp.asarray(pj.models.sfs_rewards(graph, n=5))

    def f(model, theta):
        d = model(theta)
        return jnp.concatenate(
            [d.moments(2), d.covariance_matrix(sfs).ravel(), d.expected_sojourn()]
        )

    jac = jax.jit(jax.jacrev(lambda t: f(blocks, t)))
    jac_dense = jax.jit(jax.jacrev(lambda t: f(dense, t)))
    value = jax.jit(lambda t: f(blocks, t))
    h = 1e-6
    for theta in ([1.0, 0.5, 0.3, 0.7], [2.0, 1.0, 1.5, 0.1], [0.4, 3.0, 0.05, 2.0]):
        theta = jnp.asarray(theta)
        got = jac(theta)
        np.testing.assert_allclose(got, jac_dense(theta), rtol=1e-10, atol=1e-12)
        fd = jnp.stack(
            [(value(theta + h * e) - value(theta - h * e)) / (2 * h) for e in jnp.eye(4)], axis=1
        )
        assert np.abs(fd).max() > 1e-2
        np.testing.assert_allclose(got, fd, rtol=1e-6, atol=1e-7 * np.abs(fd).max())


def test_vmap_matches_loop():
    """A batch of thetas (trailing-axis batching of the sweep and batched block inverses),
    and a batch of right-hand sides, against Python loops."""
    graph = pj.models.rabbit_flooding(4)
    model = graph.compile(solver="blocks")
    rewards = jnp.asarray(random_rewards(graph.vertices_length(), 0))

    def f(theta):
        d = model(theta)
        return jnp.concatenate([d.moments(3, rewards[0]), d.expected_sojourn()])

    thetas = jnp.asarray([[2.0, 3.0], [0.5, 1.5], [1.0, 1.0], [4.0, 0.2]])
    batched = jax.jit(jax.vmap(f))(thetas)
    one = jax.jit(f)
    np.testing.assert_allclose(batched, np.stack([one(t) for t in thetas]), rtol=1e-13)
    d = model(thetas[0])
    by_rewards = jax.jit(jax.vmap(d.mean))(rewards)
    np.testing.assert_allclose(by_rewards, [d.mean(r) for r in rewards], rtol=1e-13)
    grad = jax.grad(lambda t: f(t).sum())
    one_grad = jax.jit(grad)
    np.testing.assert_allclose(
        jax.jit(jax.vmap(grad))(thetas), np.stack([one_grad(t) for t in thetas]), rtol=1e-12
    )


def test_laplace_with_an_extra_diagonal():
    """The Laplace transform solves with ``diag + s r`` (an extra diagonal term beyond the
    out-rates), which the block inverses must keep."""
    graph = pj.models.two_island(3, 2)
    theta = jnp.asarray([1.0, 0.5, 0.3, 0.7])
    r = jnp.asarray(random_rewards(graph.vertices_length(), 1)[0])
    s = jnp.asarray([0.0, 0.3, 2.0])
    got = graph.compile(solver="blocks")(theta).laplace(s, r)
    want = graph.compile(solver="dense")(theta).laplace(s, r)
    np.testing.assert_allclose(got, want, rtol=1e-13)


def test_isolation_with_migration_jsfs_against_dense():
    im = pj.models.IsolationWithMigration.joint_sfs(3, 2)
    structure = im.model.structure
    n = structure.n_transient
    blocks = block_schedule(n, np.asarray(structure.src), np.asarray(structure.dst))
    params = (1.0, 0.4, 0.6, 1.5, 2.0, 0.8)
    got, want = (
        eqx.filter_jit(lambda m: m.expected_jsfs(*params))(
            eqx.tree_at(lambda m: m.model.structure.solver, im, solver)
        )
        for solver in (blocks, pj.DenseLU())
    )
    np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-14)


def test_auto_choice():
    """Small cyclic graphs: dense LU; large ones with small components: the block sweep;
    one component beyond the block limit: GMRES."""
    rng = np.random.default_rng(0)
    alpha, S = blocky(rng, [3, 8, 12] * 25, discrete=False, density=0.01)
    assert isinstance(pj.Graph.from_matrices(alpha, S).compile().solver, pj.BlockSweep)
    assert isinstance(pj.models.mm1_capacity(8).compile().solver, pj.DenseLU)
    assert isinstance(pj.models.mm1_capacity(2100).compile().solver, pj.GMRES)
    with pytest.raises(ValueError, match="unknown solver"):
        pj.models.mm1_capacity(8).compile(solver="block")


def test_gmres_block_preconditioner():
    """GMRES keeps the block sweep as its preconditioner: exact across small components,
    block Jacobi over chunks of a large one. Against dense solves (values and gradients)
    on a graph whose large component is cut into chunks of 8, and exact on the
    near-reducible cycle where Jacobi-preconditioned GMRES breaks down."""
    rng = np.random.default_rng(11)
    alpha, S = blocky(rng, [45, 3, 1, 7, 2], discrete=False)
    graph = pj.Graph.from_matrices(alpha, S)
    dense = graph.compile(solver="dense")
    structure = graph.compile(solver="blocks").structure
    src, dst = np.asarray(structure.src), np.asarray(structure.dst)
    n = structure.n_transient
    label = strong_components(n, src, dst)[0]
    solver = gmres_preconditioner(n, src, dst, label, chunk=8)
    assert int(solver.coupling.shape[0]) > 0  # the large component is really cut
    model = eqx.tree_at(lambda m: m.structure.solver, dense, solver)
    R = jnp.asarray(random_rewards(graph.vertices_length(), 5))

    def f(m, scale):
        d = m(None)
        d = type(d)(d.structure, d.rate * scale, d.diag * scale, d.alpha)
        return jnp.concatenate([d.moments(2, R[0]), d.expected_sojourn()])

    got, want = (jax.jit(lambda s, m=m: f(m, s))(1.3) for m in (model, dense))
    np.testing.assert_allclose(got, want, rtol=1e-10)
    grads = [jax.jit(jax.jacfwd(lambda s, m=m: f(m, s)))(1.3) for m in (model, dense)]
    np.testing.assert_allclose(grads[0], grads[1], rtol=1e-9)

    swap, exit_a, exit_b = NEAR_REDUCIBLE
    want = (2 * swap + exit_b) / (swap * (exit_a + exit_b) + exit_a * exit_b)
    model = near_reducible_graph().compile(solver="gmres")
    assert model.solver.preconditioner is not None
    np.testing.assert_allclose(model(jnp.array([exit_a])).mean(), want, rtol=1e-14)
    jacobi = eqx.tree_at(lambda m: m.structure.solver, model, pj.GMRES())
    with pytest.raises(Exception, match="breakdown|stagnation"):  # the case has power
        jacobi(jnp.array([exit_a])).mean()
