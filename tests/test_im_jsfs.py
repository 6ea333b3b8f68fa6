"""Joint site-frequency spectrum of isolation with migration, against independent oracles:
the panmictic closed form (split at time ~0), Kingman's SFS of a subsample, the
lineage-count IM model, a numpy simulation of the structured coalescent, and finite
differences."""

from math import comb

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import phasejax as pj

jax.config.update("jax_enable_x64", True)

# (coal_1, coal_2, mig_12, mig_21, coal_ancestral, split_time); asymmetric on purpose
PARAMS = (1.0, 0.4, 0.6, 1.5, 2.0, 0.8)


def panmictic_jsfs(n1, n2, c):
    """E[xi_{a,b}] in one population (pair rate c): a branch subtending i of the n labelled
    samples has expected total length 2 / (c i), and given i its descendants are a uniform
    i-subset, so (a, b) is hypergeometric."""
    out = np.zeros((n1 + 1, n2 + 1))
    for a in range(n1 + 1):
        for b in range(n2 + 1):
            i = a + b
            if 0 < i < n1 + n2:
                out[a, b] = 2 / (c * i) * comb(n1, a) * comb(n2, b) / comb(n1 + n2, i)
    return out


def simulate_im(n1, n2, params, reps, seed):
    """Branch lengths per (a, b) and TMRCA from a lineage-by-lineage simulation of the
    structured coalescent (back in time): pairs in deme d merge at rate coal_d, a lineage
    in deme 1 (2) moves to deme 2 (1) at rate mig_12 (mig_21); at split_time every
    lineage enters the ancestral population (pair rate coal_ancestral, no migration)."""
    coal_1, coal_2, mig_12, mig_21, coal_anc, split = params
    rng = np.random.default_rng(seed)
    n = n1 + n2
    a = np.tile(np.r_[np.ones(n1, int), np.zeros(n2, int)], (reps, 1))
    b = 1 - a
    deme = b.copy()
    alive = np.ones((reps, n), bool)
    t = np.zeros(reps)
    lengths = np.zeros((reps, n1 + 1, n2 + 1))
    pairs = [(i, j) for i in range(n) for j in range(i + 1, n)]
    pi, pj_ = np.array([p[0] for p in pairs]), np.array([p[1] for p in pairs])
    rows = np.arange(reps)
    active = alive.sum(1) > 1
    while active.any():
        r = rows[active]
        before = t[r] < split
        al, dm = alive[r], deme[r]
        coal_rate = np.where(before[:, None], np.where(dm == 0, coal_1, coal_2), coal_anc)
        same = al[:, pi] & al[:, pj_] & (dm[:, pi] == dm[:, pj_])
        rates = np.concatenate(
            [same * coal_rate[:, pi], al * before[:, None] * np.where(dm == 0, mig_12, mig_21)],
            axis=1,
        )
        total = rates.sum(1)
        with np.errstate(divide="ignore"):
            dt = rng.exponential(1.0, r.size) / total
        cross = before & (t[r] + dt > split)
        dt = np.where(cross, split - t[r], dt)
        for k in range(n):  # every live lineage adds dt to its (a, b) class
            live = al[:, k]
            np.add.at(lengths, (r[live], a[r[live], k], b[r[live], k]), dt[live])
        t[r] += dt
        deme[r[cross]] = 0
        # events for those that did not cross the split
        go = ~cross
        u = rng.random(r.size) * total
        event = np.argmax(np.cumsum(rates, 1) > u[:, None], axis=1)
        rg, ev = r[go], event[go]
        merge = ev < len(pairs)
        i, j = pi[ev[merge]], pj_[ev[merge]]
        rm = rg[merge]
        a[rm, i] += a[rm, j]
        b[rm, i] += b[rm, j]
        alive[rm, j] = False
        mv, k = rg[~merge], ev[~merge] - len(pairs)
        deme[mv, k] = 1 - deme[mv, k]
        active = alive.sum(1) > 1
    return lengths, t


def _compiled(n1, n2):
    """The JSFS model and one jitted function of the parameters: (E[xi], E[T], E[T^2])."""
    im = pj.models.IsolationWithMigration.joint_sfs(n1, n2)
    return im, jax.jit(lambda *p: (im.expected_jsfs(*p), im(*p).moments(2)))


@pytest.fixture(scope="module")
def im32():
    return _compiled(3, 2)


@pytest.fixture(scope="module")
def im22():
    return _compiled(2, 2)


def test_state_convention_and_rewards():
    n1, n2 = 3, 2
    graph = pj.models.two_island(n1, n2, joint=True)
    R = pj.models.jsfs_rewards(graph, n1, n2)
    k = (n1 + 1) * (n2 + 1) - 1
    states = graph.states()
    assert graph.state_length == 2 * k and R.shape == (n1 + 1, n2 + 1, graph.vertices_length())
    # initial state: 3 lineages (1, 0) in deme 1 (class 1*(n2+1)+0-1), 2 lineages (0, 1) in deme 2
    first = graph.starting_vertex().edges()[0][0].state()
    assert first[n2] == n1 and first[k] == n2 and first.sum() == n1 + n2
    # every state conserves the samples of each population
    a, b = np.divmod(np.arange(1, k + 1), n2 + 1)
    per_class = states[1:, :k] + states[1:, k:]
    np.testing.assert_array_equal(per_class @ a, n1)
    np.testing.assert_array_equal(per_class @ b, n2)
    # reward [a, b] = lineages of class (a, b) over both demes; zero at (0, 0) and (n1, n2)
    for aa in range(n1 + 1):
        for bb in range(n2 + 1):
            c = aa * (n2 + 1) + bb - 1
            want = 0 if aa + bb in (0, n1 + n2) else states[:, c] + states[:, k + c]
            np.testing.assert_array_equal(R[aa, bb], want)
    # n2 = 0: the joint layout is the block-counting one
    np.testing.assert_array_equal(
        pj.models.two_island(4, joint=True).states(), pj.models.two_island(4).states()
    )
    with pytest.raises(ValueError, match="joint=True"):
        pj.models.jsfs_rewards(pj.models.two_island(2, 3, joint=True), 3, 2)
    with pytest.raises(ValueError, match="no rewards"):
        pj.models.IsolationWithMigration(graph).expected_jsfs(*PARAMS)


def test_split_at_zero_is_panmictic(im32):
    """Split at ~0: every lineage starts in the ancestral population (epoch-1 rates and
    migration are irrelevant), so the JSFS is the labelled-sample Kingman JSFS."""
    c = 1.7
    jsfs, (mean_t, _) = im32[1](0.7, 1.9, 0.5, 0.8, c, 1e-12)
    np.testing.assert_allclose(jsfs, panmictic_jsfs(3, 2, c), rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(mean_t, 2 / c * (1 - 1 / 5), rtol=1e-9)


def test_marginals_are_subsample_sfs(im32):
    """The genealogy of the deme-1 samples is the structured coalescent of those samples
    alone, so sum_b E[xi_{a,b}] (0 < a < n1) is the SFS of IM(n1, 0); with no migration
    and coal_1 = coal_ancestral that is Kingman's 2 / (coal_1 a) whatever the split."""
    n1 = 3
    c = 1.3
    kingman = im32[1](c, 0.4, 0.0, 0.0, c, 0.8)[0]
    np.testing.assert_allclose(kingman.sum(1)[1:n1], 2 / (c * np.arange(1, n1)), rtol=1e-10)
    # the same for deme 2 needs coal_2 = coal_ancestral: here it is not, and it differs
    assert abs(kingman.sum(0)[1] - 2 / 0.4) > 1.0
    alone_graph = pj.models.two_island(n1, 0)
    alone = pj.models.IsolationWithMigration(alone_graph)
    sfs1 = jnp.asarray(pj.models.sfs_rewards(alone_graph, n=n1))
    with_migration = im32[1](*PARAMS)[0]
    np.testing.assert_allclose(
        with_migration.sum(1)[1:n1], jax.jit(lambda *p: alone(*p).mean(sfs1))(*PARAMS), rtol=1e-10
    )
    # and with migration it is not Kingman (the check has power)
    assert np.abs(with_migration.sum(1)[1:n1] - 2 / (PARAMS[0] * np.arange(1, n1))).max() > 0.05


def test_consistent_with_lineage_count_model(im32):
    """Pooling (a, b) by a + b = i gives the pooled SFS of the block-counting IM; total tree
    length and TMRCA moments agree."""
    n1, n2 = 3, 2
    graph = pj.models.two_island(n1, n2)
    pooled = pj.models.IsolationWithMigration(graph)
    sfs = jnp.asarray(pj.models.sfs_rewards(graph, n=n1 + n2))
    want, mom_pooled = jax.jit(lambda *p: (pooled(*p).mean(sfs), pooled(*p).moments(2)))(*PARAMS)
    jsfs, mom = im32[1](*PARAMS)
    a, b = np.indices(jsfs.shape)
    by_size = np.array([jsfs[a + b == i].sum() for i in range(1, n1 + n2)])
    np.testing.assert_allclose(by_size, want, rtol=1e-10)
    np.testing.assert_allclose(jsfs.sum(), want.sum(), rtol=1e-10)
    np.testing.assert_allclose(mom, mom_pooled, rtol=1e-10)


def test_against_simulation(im22):
    reps = 200_000
    lengths, tmrca = simulate_im(2, 2, PARAMS, reps, seed=1)
    mc, se = lengths.mean(0), lengths.std(0) / np.sqrt(reps)
    got, (mean_t, _) = im22[1](*PARAMS)
    classes = se > 0
    assert classes.sum() == 7
    z = np.abs(np.asarray(got) - mc)[classes] / se[classes]
    assert z.max() < 4.5, (got, mc, se)
    assert abs(mean_t - tmrca.mean()) < 4.5 * tmrca.std() / np.sqrt(reps)
    # power: swapping the migration directions is visible to this simulation
    swapped = np.asarray(im22[1](*PARAMS[:2], PARAMS[3], PARAMS[2], *PARAMS[4:])[0])
    assert (np.abs(swapped - mc)[classes] / se[classes]).max() > 10


def test_gradients_against_finite_differences(im22):
    im, compiled = im22

    def f(mig_12, split):
        return compiled(1.0, 0.4, mig_12, 1.5, 2.0, split)[0]

    jac = jax.jit(
        jax.jacrev(lambda m, s: im.expected_jsfs(1.0, 0.4, m, 1.5, 2.0, s), argnums=(0, 1))
    )(0.6, 0.8)
    h = 1e-5
    for arg, (lo, hi) in enumerate(
        [((0.6 - h, 0.8), (0.6 + h, 0.8)), ((0.6, 0.8 - h), (0.6, 0.8 + h))]
    ):
        fd = (f(*hi) - f(*lo)) / (2 * h)
        assert np.abs(fd).max() > 1e-3
        np.testing.assert_allclose(jac[arg], fd, rtol=1e-6, atol=1e-9)


def dense_jsfs(im, params):
    """The expected JSFS from dense matrices: ``int_0^tau pi e^{S_1 u} du`` as the top-right
    block of ``expm([[S_1, I], [0, 0]] tau)`` (valid for a singular ``S_1``), then
    ``pi_tau P (-S_2)^{-1} R`` with numpy's solve."""
    from scipy.linalg import expm

    thetas = np.asarray(im._thetas(*params[:5]))
    tau = params[5]
    src, dst = np.asarray(im.model.structure.src), np.asarray(im.model.structure.dst)
    ms = []
    for j, theta in enumerate(thetas):
        d = im.model(jnp.asarray(theta), require_exit=j == 1)
        rate, diag = np.asarray(d.rate), np.asarray(d.diag)
        n = diag.size
        m = np.diag(diag)
        inner = dst < n
        np.add.at(m, (src[inner], dst[inner]), -rate[inner])
        ms.append(m)
    alpha = np.asarray(im.model(jnp.asarray(thetas[0]), require_exit=False).alpha)
    n = alpha.size
    block = np.zeros((2 * n, 2 * n))
    block[:n, :n], block[:n, n:] = -ms[0] * tau, np.eye(n) * tau
    e = expm(block)
    occupancy, pi_tau = alpha @ e[:n, n:], alpha @ e[:n, :n]
    entry = np.bincount(np.asarray(im.merge), weights=pi_tau, minlength=n)
    sojourn = occupancy + np.linalg.solve(ms[1].T, entry)
    return (sojourn @ im.transient_rewards).reshape(im.rewards.shape[:-1])


@pytest.mark.parametrize(
    "params",
    [PARAMS, (0.7, 2.5, 0.05, 3.0, 0.3, 2.5), (1.2, 0.9, 0.0, 0.0, 1.5, 0.7)],
    ids=["asymmetric", "weak-migration", "no-migration"],
)
def test_expected_jsfs_against_dense_expm(im32, params):
    """The closed form (pi - pi_tau)(-S_1)^{-1} (and the series where S_1 is singular: no
    migration) against dense matrix exponentials."""
    got = im32[1](*params)[0]
    np.testing.assert_allclose(got, dense_jsfs(im32[0], params), rtol=1e-12, atol=1e-13)


def test_no_migration_gradient_is_finite_under_vmap(im22):
    """Under vmap both branches of the closed form / series choice run: the singular S_1
    (no migration) must not leak a NaN into the gradient."""
    im = im22[0]

    def f(mig):
        return im.expected_jsfs(1.0, 0.4, mig, mig, 2.0, 0.8).sum()

    grads = jax.jit(jax.vmap(jax.grad(f)))(jnp.array([0.0, 0.5]))
    assert np.all(np.isfinite(grads))
    h = 1e-6
    f = jax.jit(f)  # one program for both differences (eagerly: compiled op by op)
    fd = (f(0.5 + h) - f(0.5 - h)) / (2 * h)
    np.testing.assert_allclose(grads[1], fd, rtol=1e-6)
