"""Mutation counts: ``mutation_counts`` (one class) and ``joint_mutation_pmf`` (several)
against independent oracles.

Oracles: an explicit product chain over (state, count vector) solved densely with
numpy; closed forms for Kingman n = 2 (geometric) and n = 3 (exact rationals); marginals against the
univariate ``mutation_counts`` (a dense-inverse code path); central finite differences.
"""

import itertools
from fractions import Fraction
from math import comb

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.integrate as si
import scipy.linalg as sl
from scipy.stats import poisson

import phasejax as pj
from helpers.oracle import dense_reward_transform

jax.config.update("jax_enable_x64", True)


def product_chain_pmf(alpha, s, r, mu, bounds):
    """P(K = k) on the grid prod [0..bounds_c] from the chain on (state, k), dense.

    A mutation that would leave the grid sends the path to an unrecorded absorbing
    state; absorption of the original chain in (i, k) records k.
    """
    n, n_classes = len(alpha), len(bounds)
    grid = list(itertools.product(*[range(b + 1) for b in bounds]))
    index = {k: g for g, k in enumerate(grid)}
    size = n * len(grid)
    big = np.zeros((size, size))
    record = np.zeros((size, len(grid)))
    exit_rates = -s.sum(axis=1)
    states = np.arange(n)
    for k, g in index.items():
        block = g * n + states
        big[np.ix_(block, block)] += s
        record[block, g] = exit_rates
        for c in range(n_classes):
            rate = mu[c] * r[c]
            big[block, block] -= rate
            up = list(k)
            up[c] += 1
            if tuple(up) in index:
                big[block, index[tuple(up)] * n + states] += rate
    start = np.zeros(size)
    start[:n] = alpha
    probs = start @ np.linalg.solve(-big, record)
    probs[0] += 1.0 - alpha.sum()
    return np.array(grid), probs


def random_cyclic_graph(seed, n=6, defect=0.2):
    rng = np.random.default_rng(seed)
    a = rng.random((n, n)) * (rng.random((n, n)) < 0.5)
    np.fill_diagonal(a, 0.0)
    exit_rates = rng.random(n) * (rng.random(n) < 0.5)
    exit_rates[-1] += 0.5
    s = a - np.diag(a.sum(1) + exit_rates)
    alpha = rng.random(n)
    alpha = alpha / alpha.sum() * (1 - defect)
    return pj.Graph.from_matrices(alpha, s)


def _random_rewards(graph, seed, n_classes=2):
    rng = np.random.default_rng(seed)
    r = rng.random((n_classes, graph.vertices_length())) * 2
    r[:, 1::3] = 0.0  # zero-reward states, some shared by every class
    r[0, 2] = 0.0
    return r


CASES = [
    # name, graph, solver, theta, rewards_of, mu, bounds
    (
        "kingman4-sfs3",
        lambda: pj.models.kingman(4),
        "auto",
        [1.0],
        lambda g: pj.models.sfs_rewards(g),
        0.6,
        (3, 2, 2),
    ),
    (
        "island-cyclic-dense",
        lambda: pj.models.two_island(2, 1),
        "auto",
        [1.0, 2.0, 0.5, 0.3],
        lambda g: pj.models.sfs_rewards(g, 3),
        0.4,
        (2, 2),
    ),
    (
        "rabbits-zero-rewards",
        lambda: pj.models.rabbit_flooding(3),
        "auto",
        [0.7, 1.2],
        lambda g: np.stack(
            [
                np.where(np.arange(g.vertices_length()) % 2 == 0, 0.0, 1.5),
                np.where(np.arange(g.vertices_length()) % 3 == 0, 0.7, 0.0),
            ]
        ),
        np.array([0.8, 0.3]),
        (2, 3),
    ),
    (
        "random-defect-dense",
        lambda: random_cyclic_graph(0),
        "dense",
        None,
        lambda g: _random_rewards(g, 1),
        0.7,
        (2, 3),
    ),
    (
        "random-defect-gmres",
        lambda: random_cyclic_graph(0),
        "gmres",
        None,
        lambda g: _random_rewards(g, 1),
        0.7,
        (1, 2),
    ),
]


@pytest.mark.parametrize(
    "name, build, solver, theta, rewards_of, mu, bounds", CASES, ids=[c[0] for c in CASES]
)
def test_against_product_chain(name, build, solver, theta, rewards_of, mu, bounds):
    graph = build()
    rewards = np.asarray(rewards_of(graph), float)
    model = graph.compile(solver=solver)
    dist = model(None if theta is None else jnp.asarray(theta))
    alpha, s, _, vertices = graph.as_matrices(None if theta is None else np.asarray(theta))
    mu_c = np.broadcast_to(mu, (len(bounds),))
    grid, oracle = product_chain_pmf(alpha, s, rewards[:, vertices], mu_c, bounds)
    probs = pj.joint_mutation_pmf(dist, mu, rewards, grid)
    assert oracle.min() > 1e-6 or name.startswith("random")  # non-trivial configurations
    np.testing.assert_allclose(probs, oracle, rtol=1e-9 if solver == "gmres" else 1e-11, atol=1e-15)


@pytest.mark.parametrize("c, mu", [(1.0, 0.85), (2.5, 0.3)])
def test_kingman2_geometric(c, mu):
    """n = 2, one class (total length 2T, T ~ Exp(c)): P(S = k) = c/(c+2mu) (2mu/(c+2mu))^k."""
    graph = pj.models.kingman(2)
    dist = graph.compile()(jnp.array([c]))
    k = np.arange(12)
    probs = pj.joint_mutation_pmf(dist, mu, pj.models.sfs_rewards(graph), k[:, None])
    np.testing.assert_allclose(probs, c / (c + 2 * mu) * (2 * mu / (c + 2 * mu)) ** k, rtol=1e-13)
    theta = 2 * mu / c  # the population-scaled rate: geometric (1/(1+theta)) (theta/(1+theta))^k
    np.testing.assert_allclose(probs, (theta / (1 + theta)) ** k / (1 + theta), rtol=1e-13)


def kingman3_exact(c, mu, k1, k2):
    """Exact P(xi_1 = k1, xi_2 = k2) for Kingman n = 3 (pair rate c, mutation rate mu).

    Three lineages for T3 ~ Exp(3c): singletons only, at total rate 3 mu; then one
    singleton and one doubleton lineage for T2 ~ Exp(c), mutations at rate mu each.
    """
    c, mu = Fraction(c), Fraction(mu)
    q = mu / (c + 2 * mu)
    total = Fraction(0)
    for a in range(k1 + 1):
        first = c / (c + mu) * (mu / (c + mu)) ** a
        b = k1 - a
        total += first * comb(b + k2, k2) * q ** (b + k2) * c / (c + 2 * mu)
    return total


def test_kingman3_exact_rational():
    c, mu = Fraction(13, 10), Fraction(7, 10)
    graph = pj.models.kingman(3)
    dist = graph.compile()(jnp.array([float(c)]))
    grid = np.array(list(itertools.product(range(6), range(5))))
    probs = pj.joint_mutation_pmf(dist, float(mu), pj.models.sfs_rewards(graph), grid)
    exact = np.array([float(kingman3_exact(c, mu, int(a), int(b))) for a, b in grid])
    np.testing.assert_allclose(probs, exact, rtol=1e-13)


def test_marginals_match_mutation_counts():
    graph = pj.models.kingman(4)
    model = graph.compile()
    sfs = pj.models.sfs_rewards(graph)
    mu, bound = 0.15, 14
    shape = (bound + 1,) * 3
    grid = np.indices(shape).reshape(3, -1).T
    k = np.arange(8)
    # marginal of each class, and the total number of segregating sites (reward: the sum),
    # against the univariate DPH (zero rewards folded, dense inverse, uniformized pmf)
    rewards = [sfs[0], sfs[2], sfs.sum(0)]

    @jax.jit  # one program (eagerly each reward's chain compiled op by op)
    def pmfs(theta):
        dist = model(theta)
        joint = pj.joint_mutation_pmf(dist, mu, sfs, grid)
        univariate = [pj.mutation_counts(dist, mu, r).pmf(k, max_steps=16) for r in rewards]
        return joint, jnp.stack(univariate)

    joint, univariate = (np.asarray(x) for x in pmfs(jnp.array([1.1])))
    joint = joint.reshape(shape)
    assert 0 <= 1 - joint.sum() < 1e-9  # the grid holds all but a tiny tail
    for row, c in enumerate((0, 2)):
        marginal = joint.sum(axis=tuple(a for a in range(3) if a != c))[: len(k)]
        np.testing.assert_allclose(marginal, univariate[row], rtol=1e-11, atol=1e-10)
    level = np.indices(shape).sum(0)
    np.testing.assert_allclose([joint[level == s].sum() for s in k], univariate[2], rtol=1e-12)
    assert univariate[0, 1] > 0.1 and univariate[2, 2] > 0.05


GRAD_CASES = [
    (
        "kingman4",
        lambda: pj.models.kingman(4),
        lambda g: pj.models.sfs_rewards(g),
        [[1.0], [0.4]],
        [0.5, 1.3],
        np.array([[0, 0, 0], [2, 1, 0], [1, 1, 1], [3, 0, 2]]),
    ),
    (
        "island",
        lambda: pj.models.two_island(2, 1),
        lambda g: pj.models.sfs_rewards(g, 3),
        [[1.0, 2.0, 0.5, 0.3], [0.6, 1.1, 1.4, 0.2]],
        [0.4, 0.9],
        np.array([[0, 0], [2, 1], [1, 2]]),
    ),
]


@pytest.mark.parametrize(
    "name, build, rewards_of, thetas, mus, counts", GRAD_CASES, ids=[c[0] for c in GRAD_CASES]
)
def test_gradients_against_finite_differences(name, build, rewards_of, thetas, mus, counts):
    graph = build()
    model = graph.compile()
    rewards = rewards_of(graph)

    @jax.jit
    def f(theta, mu):
        return jnp.sum(jnp.log(pj.joint_mutation_pmf(model(theta), mu, rewards, counts)))

    grad = jax.jit(jax.grad(f, argnums=(0, 1)))
    eps = 1e-6
    for theta, mu in zip(thetas, mus):
        theta, mu = jnp.asarray(theta), jnp.asarray(mu)
        g_theta, g_mu = grad(theta, mu)
        for i in range(theta.shape[0]):
            fd = (f(theta.at[i].add(eps), mu) - f(theta.at[i].add(-eps), mu)) / (2 * eps)
            np.testing.assert_allclose(g_theta[i], fd, rtol=1e-6, atol=1e-8)
        fd = (f(theta, mu + eps) - f(theta, mu - eps)) / (2 * eps)
        np.testing.assert_allclose(g_mu, fd, rtol=1e-6)
        assert abs(g_mu) > 1e-3


def test_gradients_closed_form_and_rewards():
    """n = 3: derivatives of the exact rational closed form (central differences in
    exact arithmetic, error O(h^2)); per-class mutation rates; traced rewards."""
    graph = pj.models.kingman(3)
    model = graph.compile()
    sfs = jnp.asarray(pj.models.sfs_rewards(graph))
    k = np.array([[2, 1]])

    @jax.jit
    def f(c, mu, r):
        return pj.joint_mutation_pmf(model(jnp.atleast_1d(c)), mu, r, k)[0]

    c, mu = Fraction(13, 10), Fraction(7, 10)
    h = Fraction(1, 10**7)
    exact_c = (kingman3_exact(c + h, mu, 2, 1) - kingman3_exact(c - h, mu, 2, 1)) / (2 * h)
    exact_mu = (kingman3_exact(c, mu + h, 2, 1) - kingman3_exact(c, mu - h, 2, 1)) / (2 * h)
    # per-class rates: d/dmu of the scalar rate is the sum of the per-class derivatives
    mus = jnp.array([float(mu), float(mu)])
    g_c, g_mu, g_r = jax.grad(f, argnums=(0, 1, 2))(float(c), mus, sfs)
    np.testing.assert_allclose([g_c, g_mu.sum()], [float(exact_c), float(exact_mu)], rtol=1e-10)
    eps = 1e-6
    fd = (f(float(c), mus.at[1].add(eps), sfs) - f(float(c), mus.at[1].add(-eps), sfs)) / (2 * eps)
    np.testing.assert_allclose(g_mu[1], fd, rtol=1e-7)
    assert abs(g_mu[0] - g_mu[1]) > 1e-3
    # rewards are differentiable (here: the doubleton reward of state (1, 1, 0))
    v = int(np.flatnonzero(sfs[1] > 0)[0])
    fd = (f(float(c), mus, sfs.at[1, v].add(eps)) - f(float(c), mus, sfs.at[1, v].add(-eps))) / (
        2 * eps
    )
    np.testing.assert_allclose(g_r[1, v], fd, rtol=1e-7)


def test_jit_vmap_and_traced_counts():
    graph = pj.models.kingman(4)
    model = graph.compile()
    sfs = pj.models.sfs_rewards(graph)
    alpha, s, _, vertices = graph.as_matrices(np.array([2.0]))
    grid, oracle = product_chain_pmf(alpha, s, sfs[:, vertices], [0.6] * 3, (2, 3, 1))
    thetas = jnp.array([[0.5], [1.0], [2.0]])
    # traced counts of any batch shape, on a static grid larger than needed
    traced = jax.jit(
        lambda t, k: pj.joint_mutation_pmf(model(t), 0.6, sfs, k, max_counts=(3, 3, 2))
    )
    picks = [len(grid) - 1, 0, 7, 1, 5, 20]
    np.testing.assert_allclose(
        traced(thetas[2], jnp.asarray(grid[picks]).reshape(2, 3, 3)),
        oracle[picks].reshape(2, 3),
        rtol=1e-11,
    )
    batched = jax.vmap(traced, in_axes=(0, None))(thetas, jnp.asarray(grid))
    for theta, row in zip(thetas, batched):
        np.testing.assert_allclose(row, traced(theta, jnp.asarray(grid)), rtol=1e-12)
    np.testing.assert_allclose(batched[2], oracle, rtol=1e-11)


def test_errors():
    graph = pj.models.kingman(3)
    dist = graph.compile()(jnp.array([1.0]))
    sfs = pj.models.sfs_rewards(graph)
    counts = np.array([[1, 0]])
    with pytest.raises(ValueError, match=r"shape \(C, "):
        pj.joint_mutation_pmf(dist, 0.5, sfs[0], np.array([1]))
    with pytest.raises(ValueError, match=r"shape \(C, "):
        pj.joint_mutation_pmf(dist, 0.5, sfs[:, :-1], counts)
    for bad_value in (-1.0, np.nan):
        bad = sfs.copy()
        bad[1, 1] = bad_value
        with pytest.raises(ValueError, match="non-negative"):
            pj.joint_mutation_pmf(dist, 0.5, bad, counts)
        with pytest.raises(Exception, match="non-negative"):
            jax.jit(lambda r: pj.joint_mutation_pmf(dist, 0.5, r, counts))(jnp.asarray(bad))
    for bad_mu in (-0.5, 0.0, np.nan):
        with pytest.raises(Exception, match="mutation_rate must be positive"):
            pj.joint_mutation_pmf(dist, bad_mu, sfs, counts)
        with pytest.raises(Exception, match="mutation_rate must be positive"):
            jax.jit(lambda m: pj.joint_mutation_pmf(dist, m, sfs, counts))(bad_mu)
    with pytest.raises(ValueError, match="one rate per class"):
        pj.joint_mutation_pmf(dist, jnp.array([0.5, 0.5, 0.5]), sfs, counts)
    with pytest.raises(ValueError, match=r"counts must have shape \(\.\.\., 2\)"):
        pj.joint_mutation_pmf(dist, 0.5, sfs, np.array([[1, 0, 0]]))
    with pytest.raises(ValueError, match=r"counts must have shape \(\.\.\., 2\)"):
        pj.joint_mutation_pmf(dist, 0.5, sfs, np.array(1))
    for bad_counts in ([[1, -1]], [[1.5, 0]], [[np.nan, 0]]):
        with pytest.raises(ValueError, match="non-negative integers"):
            pj.joint_mutation_pmf(dist, 0.5, sfs, np.array(bad_counts))
    with pytest.raises(ValueError, match="max_counts"):
        jax.jit(lambda k: pj.joint_mutation_pmf(dist, 0.5, sfs, k))(jnp.asarray(counts))
    with pytest.raises(ValueError, match="exceed max_counts"):
        pj.joint_mutation_pmf(dist, 0.5, sfs, np.array([[3, 0]]), max_counts=(2, 2))
    with pytest.raises(ValueError, match="max_counts must be 2"):
        pj.joint_mutation_pmf(dist, 0.5, sfs, counts, max_counts=(2,))
    traced = jax.jit(lambda k: pj.joint_mutation_pmf(dist, 0.5, sfs, k, max_counts=(2, 2)))
    with pytest.raises(Exception, match="exceed max_counts"):
        traced(jnp.array([[3, 0]]))
    with pytest.raises(Exception, match="non-negative integers"):
        traced(jnp.array([[-1, 0]]))
    with pytest.raises(Exception, match="non-negative integers"):
        traced(jnp.array([[0.5, 0.0]]))
    discrete = pj.Graph.from_matrices(np.array([1.0]), np.array([[0.5]]), discrete=True).compile()()
    with pytest.raises(ValueError, match="continuous"):
        pj.joint_mutation_pmf(
            discrete, 0.5, np.ones((1, discrete.structure.n_vertices)), np.array([[0]])
        )


# -- one class: mutation_counts ---------------------------------------------------
def test_mutation_counts_closed_forms():
    theta = 1.7
    graph = pj.models.kingman(2)
    dist = graph.compile()(jnp.array([1.0]))
    total = pj.models.sfs_rewards(graph).sum(0)
    k = np.arange(8)
    # n = 2: S ~ Geometric with P(S = k) = (theta / (1 + theta))^k / (1 + theta)
    np.testing.assert_allclose(
        pj.mutation_counts(dist, theta / 2, total).pmf(k),
        (theta / (1 + theta)) ** k / (1 + theta),
        rtol=1e-12,
    )
    for n in (4, 7):
        graph = pj.models.kingman(n)
        model = graph.compile()
        sfs = pj.models.sfs_rewards(graph)

        @jax.jit  # one program per n (eagerly every reward's chain compiled op by op)
        def means(th, model=model, sfs=sfs):
            dist = model(th)
            total = pj.mutation_counts(dist, theta / 2, sfs.sum(0)).mean()
            return total, [pj.mutation_counts(dist, theta / 2, r).mean() for r in sfs]

        total, per_class = means(jnp.array([1.0]))
        np.testing.assert_allclose(
            total, theta * np.sum(1 / np.arange(1, n)), rtol=1e-12
        )  # Watterson
        for i in range(1, n):
            np.testing.assert_allclose(per_class[i - 1], theta / i, rtol=1e-10)


def test_mutation_counts_against_mixture_oracle():
    """P(K = k) = int Pois(k; mu y) f_Y(y) dy, with f_Y from the dense reward-transformed matrix."""
    graph = pj.models.kingman(4)
    theta = np.array([1.2])
    dist = graph.compile()(jnp.asarray(theta))
    reward = pj.models.sfs_rewards(graph)[1]
    alpha, s, _, vertices = graph.as_matrices(theta)
    a_new, s_new = dense_reward_transform(alpha, s, reward[vertices])
    exit_new = -s_new.sum(1)
    mu = 0.9
    counts = pj.mutation_counts(dist, mu, reward)
    for k in range(4):
        density = lambda y: poisson.pmf(k, mu * y) * (a_new @ sl.expm(s_new * y) @ exit_new)
        oracle = si.quad(density, 0, 80, limit=200)[0] + (1 - a_new.sum()) * (k == 0)
        np.testing.assert_allclose(counts.pmf(np.array([k]))[0], oracle, rtol=1e-8)
    f = lambda m: pj.mutation_counts(dist, m, reward).pmf(np.array([2]))[0]
    np.testing.assert_allclose(jax.grad(f)(mu), (f(mu + 1e-6) - f(mu - 1e-6)) / 2e-6, rtol=1e-6)


def test_mutation_counts_with_rewards_inside_jit():
    """The reward transformation inside ``mutation_counts`` builds its structure while
    tracing; n = 2: K | L ~ Poisson(mu L), L = 2 T ~ Exp(c / 2) gives a geometric law."""
    graph = pj.models.kingman(2)
    model = graph.compile()
    rewards = pj.models.sfs_rewards(graph)[0]
    c, mu = 1.3, 0.4
    k = jnp.arange(5)
    pmf = jax.jit(lambda th: pj.mutation_counts(model(th), mu, rewards).pmf(k))(jnp.array([c]))
    expected = c / (c + 2 * mu) * (2 * mu / (c + 2 * mu)) ** np.arange(5)
    np.testing.assert_allclose(pmf, expected, rtol=1e-12)
