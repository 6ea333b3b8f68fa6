"""Exact lumping (`phasejax._lumping`): the partition found is lumpable at every theta
(checked on the dense generator), the absorption time's densities, probabilities and
gradients on the lumped chain equal the full chain's and independent oracles (dense
``expm``, the hypoexponential closed form of Kingman's TMRCA), and nothing lumps that
is equal at one theta only."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import mpmath
import numpy as np
import pytest

import phasejax as pj
from helpers.oracle import graph_matrices, hypoexponential_log_pdf, ph_pdf_cdf_sf
from phasejax._lumping import coarsest_lumping


def lumpable_graph(rng, blocks: int, p: int = 2) -> tuple[pj.Graph, np.ndarray]:
    """A random cyclic chain built lumpable: a quotient chain over ``blocks`` classes with
    integer coefficient vectors, each class ``1..3`` states whose edges into another
    class split that class's vector into random integer parts (so the totals agree bit
    for bit), plus arbitrary moves inside a class. Returns the graph and each transient
    vertex's class."""
    sizes = rng.integers(1, 4, blocks)
    first = np.concatenate([[1], 1 + np.cumsum(sizes)])  # vertex 0 starts, last absorbs
    absorbing = int(first[-1])
    graph = pj.Graph(1)
    for v in range(1, absorbing + 1):
        graph.find_or_create_vertex([v])
    members = [np.arange(first[b], first[b + 1]) for b in range(blocks)]
    targets = {
        b: [c for c in range(blocks) if c != b and rng.random() < 0.4] for b in range(blocks)
    }
    for b in range(blocks):
        targets[b].append(blocks)  # every class exits (some with a zero base only)
        for c in targets[b]:
            total = rng.integers(1, 5, p + 1).astype(float)  # (base, coefficients)
            into = [absorbing] if c == blocks else list(members[c])
            for i in members[b]:
                parts = rng.multinomial(1, np.ones(len(into)) / len(into), size=int(total.sum()))
                for j, target in enumerate(into):
                    # each state's parts of ``total`` over the class's states: integers
                    share = np.zeros(p + 1)
                    np.add.at(share, np.repeat(np.arange(p + 1), total.astype(int)), parts[:, j])
                    if share.any():
                        graph.add_edge(int(i), int(target), share[0], share[1:])
        for i in members[b]:  # moves inside the class: any rates
            for j in members[b]:
                if i != j and rng.random() < 0.5:
                    graph.add_edge(int(i), int(j), rng.uniform(0.1, 2.0), rng.uniform(0, 1, p))
    weights = rng.random(sum(sizes)) + 0.1
    for v, w in zip(range(1, absorbing), weights / weights.sum() * 0.9):
        graph.add_edge(0, v, w)
    return graph, np.repeat(np.arange(blocks), sizes)


def assert_lumpable(S: np.ndarray, block: np.ndarray):
    """Every state of a class has the same total rate into each other class."""
    collector = np.eye(block.max() + 1)[block]
    into = S @ collector
    for b in range(block.max() + 1):
        rows = into[block == b]
        other = np.arange(into.shape[1]) != b
        np.testing.assert_allclose(rows[:, other], rows[:1, other].repeat(len(rows), 0), rtol=1e-13)
        exits = -S[block == b].sum(axis=1)
        np.testing.assert_allclose(exits, exits[0], rtol=1e-13)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_random_lumpable_chain_against_expm(seed):
    rng = np.random.default_rng(seed)
    graph, classes = lumpable_graph(rng, 6)
    model = graph.compile()
    lumping = model.lumping
    assert lumping is not None
    block = np.asarray(lumping.block)
    # at most the built classes, and a refinement-free check on the dense generator at two
    # thetas (lumpable at every theta, not just one)
    assert lumping.n_blocks <= classes.max() + 1 < model.n_transient
    for theta in (np.array([0.7, 1.9]), np.array([2.5, 0.3])):
        _, S, _ = graph_matrices(graph, theta)
        assert_lumpable(S, block)
    theta = np.array([0.8, 1.3])
    alpha, S, _ = graph_matrices(graph, theta)
    t = np.array([0.0, 0.05, 0.4, 1.1, 3.0, 9.0])
    pdf, cdf, sf = ph_pdf_cdf_sf(alpha, S, t)
    dist = model(jnp.asarray(theta))
    np.testing.assert_allclose(np.asarray(dist.pdf(t)), pdf, rtol=1e-10, atol=1e-14)
    np.testing.assert_allclose(np.asarray(dist.cdf(t)), cdf, rtol=1e-10, atol=1e-14)
    np.testing.assert_allclose(np.asarray(dist.sf(t)), sf, rtol=1e-10, atol=1e-14)
    np.testing.assert_allclose(np.asarray(dist.pdf(t, method="expm")), pdf, rtol=1e-10, atol=1e-14)


def test_kingman_lumps_to_lineage_counts():
    graph = pj.models.kingman(12)
    model = graph.compile()
    block = np.asarray(model.lumping.block)
    lineages = graph.states()[np.asarray(model.transient_vertices)].sum(axis=1)
    # one class per lineage count 2..12, and each class is exactly those states
    assert model.lumping.n_blocks == 11
    for b in range(11):
        assert np.unique(lineages[block == b]).size == 1
    assert np.unique(lineages).size == 11


def test_kingman40_loglik_and_gradient_against_closed_form():
    """37,337 block-counting states lump to 39: the TMRCA is hypoexponential with rates
    theta k(k-1)/2, k = 2..40 (closed form, log space; its alternating sum cancels below
    t ~ 0.2, where mpmath's expm of the lineage-count chain serves), and d/dtheta log f(t)
    = 1/theta + (t/theta) d/dt log f(t) (f(t; theta) = theta g(theta t))."""
    model = pj.models.kingman(40).compile()
    assert model.lumping.n_blocks == 39
    t = np.array([0.3, 1.0, 2.5, 6.0])
    theta = 1.3
    k = np.arange(2, 41)
    log_f, dlog_f_dt = hypoexponential_log_pdf(theta * k * (k - 1) / 2, t)
    loglik = jax.jit(jax.value_and_grad(lambda th: jnp.sum(model(th).logpdf(t))))
    value, grad = loglik(jnp.array([theta]))
    np.testing.assert_allclose(float(value), log_f.sum(), rtol=1e-12)
    np.testing.assert_allclose(
        float(grad[0]), np.sum(1 / theta + t / theta * dlog_f_dt), rtol=1e-10
    )
    mpmath.mp.dps = 40
    rates = [mpmath.mpf(theta) * int(j) * (int(j) - 1) / 2 for j in range(40, 1, -1)]
    generator = mpmath.diag([-r for r in rates])
    for i in range(38):
        generator[i, i + 1] = rates[i]
    early = mpmath.expm(generator * mpmath.mpf("0.05"))[0, 38] * rates[-1]  # alpha e^{St} s
    np.testing.assert_allclose(
        float(model(jnp.array([theta])).logpdf(0.05)), float(mpmath.log(early)), rtol=1e-11
    )


@pytest.mark.parametrize(
    "graph",
    [pj.models.kingman(7), pj.models.two_island(3, 2), pj.models.two_locus(3)],
    ids=["kingman7", "two_island", "two_locus"],
)
def test_lumped_equals_full_chain_with_gradients(graph):
    """Values and gradients (vmapped over thetas) with and without lumping, and the
    gradient against central differences of the full chain."""
    lumped, full = graph.compile(), graph.compile(lump=False)
    assert lumped.lumping is not None and full.lumping is None
    p = lumped.n_params
    thetas = jnp.asarray(np.random.default_rng(p).uniform(0.5, 2.0, (3, p)))
    t = np.array([0.02, 0.3, 0.9, 2.0, 5.0])

    def loglik(model):
        return jax.jit(jax.vmap(jax.value_and_grad(lambda th: jnp.sum(model(th).logpdf(t)))))

    (v_l, g_l), (v_f, g_f) = loglik(lumped)(thetas), loglik(full)(thetas)
    np.testing.assert_allclose(np.asarray(v_l), np.asarray(v_f), rtol=1e-11)
    np.testing.assert_allclose(np.asarray(g_l), np.asarray(g_f), rtol=1e-9, atol=1e-12)
    h = 1e-6
    value = jax.jit(lambda th: jnp.sum(full(th).logpdf(t)))
    for j in range(p):
        step = jnp.zeros(p).at[j].set(h)
        fd = (value(thetas[0] + step) - value(thetas[0] - step)) / (2 * h)
        np.testing.assert_allclose(float(g_l[0, j]), float(fd), rtol=1e-6, atol=1e-8)
    for kind in ("cdf", "sf"):
        got = getattr(lumped(thetas[1]), kind)(t)
        want = getattr(full(thetas[1]), kind)(t)
        np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-11, atol=1e-15)


def test_equal_at_one_theta_only_does_not_lump():
    """Two states exiting at theta_0 and theta_1: equal at theta = (1, 1), yet not
    lumpable (the densities differ elsewhere); a third state with the same vector as the
    first lumps with it."""
    graph = pj.Graph(1)
    a, b, c, end = (graph.find_or_create_vertex([i]) for i in (1, 2, 3, 4))
    start = graph.starting_vertex()
    for v, w in ((a, 0.3), (b, 0.3), (c, 0.4)):
        start.add_edge(v, w)
    a.add_edge_parameterized(end, 0.0, [1.0, 0.0])
    b.add_edge_parameterized(end, 0.0, [0.0, 1.0])
    c.add_edge_parameterized(end, 0.0, [1.0, 0.0])
    model = graph.compile()
    block = np.asarray(model.lumping.block)
    assert block[0] == block[2] != block[1]
    t = np.array([0.1, 1.0, 3.0])
    for theta in ([1.0, 1.0], [0.5, 2.0]):
        alpha, S, _ = graph_matrices(graph, np.array(theta))
        pdf, _, _ = ph_pdf_cdf_sf(alpha, S, t)
        np.testing.assert_allclose(np.asarray(model(jnp.array(theta)).pdf(t)), pdf, rtol=1e-12)


def test_nothing_lumps_discrete_or_custom_rates():
    """No lumping where it would not be exact at every theta or is not implemented: a
    chain with no symmetry, discrete models, a custom rate function."""
    assert pj.models.erlang(4).compile().lumping is None
    assert pj.models.kingman(5).compile(rate_fn=lambda th, c: c @ th**2).lumping is None
    assert coarsest_lumping(3, np.array([0, 1, 2]), np.array([1, 2, 3]), np.ones((3, 1))) is None


def test_admissibility_checks_survive_the_lumped_chain_under_jit():
    """model(theta)'s checks hang on ``diag`` under jit; the lumped chain is built from the
    rates as data, so it must carry ``diag`` along or a bad theta would come back as
    silent -inf."""
    model = pj.models.kingman(4).compile()
    assert model.lumping is not None
    t = np.array([0.5, 1.0])
    loglik = jax.jit(lambda th: model(th).logpdf(t))
    for bad, problem in ((-1.0, "negative"), (np.nan, "NaN")):
        with pytest.raises(Exception, match=problem):
            jax.block_until_ready(loglik(jnp.array([bad])))


def test_jacobian_of_a_vmapped_likelihood():
    """jacrev over a vmapped logpdf: the cotangents' vmap runs over the members' kernel
    (nested batching, empty carries of order 0), against per-theta gradients."""
    model = pj.models.kingman(4).compile()
    t = np.array([0.5, 1.0])
    thetas = jnp.array([[1.0], [1.5], [2.0]])
    jac = jax.jacrev(lambda ths: jax.vmap(lambda th: model(th).logpdf(t))(ths))(thetas)
    for i in range(3):
        want = jax.jacrev(lambda th: model(th).logpdf(t))(thetas[i])
        np.testing.assert_allclose(np.asarray(jac[i, :, i]), np.asarray(want), rtol=1e-11)
        others = np.delete(np.asarray(jac[i]), i, axis=1)
        assert np.all(others == 0.0)


def test_guarded_batches_keep_the_lumped_chain():
    """model.guarded (the batch-safe path of the inference code) keeps the rates as data
    and the lumping: admissible thetas give model(theta)'s values and gradients, and
    inadmissible ones (negative, NaN) stand-in values that are masked, with zero gradient
    and without poisoning the batch's shared uniformization rate."""
    model = pj.models.kingman(10).compile()
    t = np.array([0.3, 1.0, 2.5])
    dist, ok = model.guarded(jnp.array([1.3]))
    assert bool(ok) and dist.lumping is not None

    def masked(theta):
        dist, ok = model.guarded(theta)
        return jnp.where(ok, dist.logpdf(t).sum(), -jnp.inf)

    thetas = jnp.array([[1.3], [-1.0], [np.nan], [0.7]])
    value, grad = jax.jit(jax.vmap(jax.value_and_grad(masked)))(thetas)
    for i in (0, 3):
        want, want_grad = jax.value_and_grad(lambda th: model(th).logpdf(t).sum())(thetas[i])
        np.testing.assert_allclose(float(value[i]), float(want), rtol=1e-12)
        np.testing.assert_allclose(np.asarray(grad[i]), np.asarray(want_grad), rtol=1e-10)
    assert np.all(np.asarray(value[1:3]) == -np.inf)
    assert np.all(np.asarray(grad[1:3]) == 0.0)


def test_out_of_range_guard_follows_the_lumped_chain():
    """Two states swapping at rate 100 and both exiting at theta lump to one (Exp(theta)):
    its densities need about 40 series terms at t = 5, not the full chain's ~600, so a
    Likelihood capped at 64 terms with out_of_range='-inf' gives the value, as logpdf
    itself does, not -inf."""
    from phasejax import infer

    graph = pj.Graph(1)
    a, b, end = (graph.find_or_create_vertex([i]) for i in (1, 2, 3))
    graph.starting_vertex().add_edge(a, 0.5)
    graph.starting_vertex().add_edge(b, 0.5)
    a.add_edge(b, 100.0)
    b.add_edge(a, 100.0)
    a.add_edge_parameterized(end, 0.0, [1.0])
    b.add_edge_parameterized(end, 0.0, [1.0])
    model = graph.compile()
    assert model.lumping is not None and model.lumping.n_blocks == 1
    data = jnp.array([0.5, 2.0, 5.0])
    lik = infer.Likelihood(model, logpdf_kwargs={"max_steps": 64}, out_of_range="-inf")
    target = infer.Posterior(lik, data, prior=infer.Gamma(2.0, 1.0))
    theta = 1.0
    want = np.sum(np.log(theta) - theta * np.asarray(data))  # Exp(theta)
    np.testing.assert_allclose(float(target.log_likelihood(jnp.array([theta]))), want, rtol=1e-12)
    np.testing.assert_allclose(
        float(model(jnp.array([theta])).logpdf(data, max_steps=64).sum()), want, rtol=1e-12
    )
