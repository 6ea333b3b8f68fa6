"""Continuous phase-type densities (uniformization) against independent oracles.

Oracles: ``scipy.linalg.expm`` (dense matrix exponential) on every model of
``pj.models`` and on random cyclic graphs; mpmath at 50 digits for stiff chains;
closed forms (exponential, Erlang = gamma, Kingman TMRCA = hypoexponential); central
finite differences for gradients.

Tolerances. The truncation bound of the library is *absolute*: the dropped Poisson
mass is at most ``tol``, so ``|pdf error| <= tol * max exit rate`` and
``|cdf/sf error| <= tol``. A relative error of 1e-10 therefore only follows from the
contract where the value is not too small compared with that bound. For the
relative checks we pass ``tol=TIGHT=1e-22`` (the window grows only like
``sqrt(log(1/tol))``), so the truncation error is ``<= 1e-22 * max(s)``, below
``1e-10 * 1e-8 * max f`` for every model here (``max(s) / max f < 1e3``, asserted),
and compare only where the value is above ``1e-8`` times its maximum: what remains is
rounding. The default ``tol`` is checked separately against its absolute bound.
"""

from __future__ import annotations

from math import comb

import jax
import jax.numpy as jnp
import mpmath
import numpy as np
import pytest
import scipy.linalg
import scipy.stats

import phasejax as pj
from helpers.oracle import graph_matrices, hypoexponential_log_pdf, random_subintensity

TIGHT = 1e-22
REL = 1e-10
FLOOR = 1e-8  # compare relative errors only where value > FLOOR * max(value)
FRACTIONS = np.array([0.0, 0.01, 0.1, 0.3, 0.7, 1.0, 1.5, 2.5, 4.0, 6.0, 10.0])  # times / mean
SNAP = np.array([0, 2, 5, 8])  # indices of the times used for per-state quantities (t = 0 first)


# -- dense oracles -----------------------------------------------------------------------
def _van_loan(S, B, t):
    """``int_0^t exp(S u) du @ B`` as the top-right block of ``expm([[S, B], [0, 0]] t)``.

    Equal to ``S^{-1} (e^{St} - I) B`` but without its cancellation at small ``t``
    (the block matrix is a generator-like Metzler matrix: no subtraction of near-equal
    terms), so it is accurate to a few ulps componentwise.
    """
    n, k = S.shape[0], B.shape[1]
    A = np.zeros((n + k, n + k))
    A[:n, :n] = S
    A[:n, n:] = B
    return scipy.linalg.expm(A * t)[:n, n:]


def expm_reference(alpha, S, ts):
    """Dense reference of every transient quantity of PH(alpha, S) at times ``ts``."""
    n = len(alpha)
    s = -S.sum(axis=1)
    defect = 1.0 - alpha.sum()
    out = {k: [] for k in ("pdf", "cdf", "sf", "state", "occupancy", "occupancy_formula")}
    for t in ts:
        E = scipy.linalg.expm(S * t)
        out["pdf"].append(alpha @ E @ s)
        out["sf"].append(alpha @ E.sum(axis=1))
        # P(T <= t) = defect + alpha int_0^t e^{Su} du s (no 1 - sf cancellation)
        out["cdf"].append(defect + alpha @ _van_loan(S, s[:, None], t)[:, 0])
        out["state"].append(alpha @ E)
        out["occupancy"].append(alpha @ _van_loan(S, np.eye(n), t))
        # the textbook formula alpha S^{-1} (e^{St} - I), as a looser cross-check
        out["occupancy_formula"].append(np.linalg.solve(S.T, alpha @ (E - np.eye(n))))
    return {k: np.asarray(v) for k, v in out.items()}


def _assert_rel(got, want, rtol=REL, floor=FLOOR, atol=0.0, axis=None, what=""):
    """Relative error ``< rtol`` where ``|want| > floor * max|want|`` (max along ``axis``)."""
    got, want = np.asarray(got), np.asarray(want)
    assert got.shape == want.shape, (what, got.shape, want.shape)
    scale = np.max(np.abs(want), axis=axis, keepdims=axis is not None)
    mask = np.abs(want) > floor * scale
    err = np.abs(got - want)
    bad = mask & (err > rtol * np.abs(want) + atol)
    assert not bad.any(), (
        f"{what}: max relative error {np.max(err[mask] / np.abs(want[mask])):.3e} "
        f"at {np.argwhere(bad)[:5].tolist()}, got {got[bad][:5]}, want {want[bad][:5]}"
    )
    assert np.all(np.isfinite(got)), what


# -- model zoo: one compiled bundle per model, shared by the tests of this module ------------
def _random_graph(seed, n, defect):
    alpha, S = random_subintensity(np.random.default_rng(seed), n, density=0.08, defect=defect)
    return pj.Graph.from_matrices(alpha, S)


CASES = {
    "erlang": (lambda: pj.models.erlang(4), [[2.0], [0.7]]),
    "kingman": (lambda: pj.models.kingman(5), [[1.0], [0.3]]),
    "two_island": (
        lambda: pj.models.two_island(2, 1),
        [[1.0, 2.0, 0.5, 0.3], [0.5, 1.0, 2.0, 1.0]],
    ),
    "rabbit_flooding": (lambda: pj.models.rabbit_flooding(3), [[2.0, 4.0], [0.5, 1.5]]),
    "mm1_capacity": (lambda: pj.models.mm1_capacity(4), [[1.0, 2.0], [2.0, 0.7]]),
    "birth_death": (lambda: pj.models.birth_death(5, 2), [[1.0, 1.5], [0.4, 2.0]]),
    "coxian": (lambda: pj.models.coxian(3), [[1.0, 2.0, 0.5, 0.3, 1.5], [3.0, 0.5, 0.2, 1.0, 2.0]]),
    "random30_defect": (lambda: _random_graph(1, 30, 0.1), [[]]),
    "random80_defect": (lambda: _random_graph(2, 80, 0.05), [[]]),
}

# the default tol is checked against its absolute bound on a few models (largest
# max(s) / max f ratio: mm1_capacity; cyclic: two_island, random30_defect)
DEFAULT_TOL_CASES = {"mm1_capacity", "two_island", "random30_defect"}


class Case:
    """A compiled model, its thetas, reference matrices and one jitted bundle."""

    def __init__(self, name):
        build, thetas = CASES[name]
        self.name = name
        self.graph = build()
        self.model = self.graph.compile()
        self.thetas = np.asarray(thetas, dtype=np.float64)
        self.mats = [graph_matrices(self.graph, th if th.size else None) for th in self.thetas]
        self.times = np.stack([self.mean(i) * FRACTIONS for i in range(len(self.thetas))])
        lam_t = max(-np.diag(S).min() for _, S, _ in self.mats) * self.times.max()
        self.max_steps = int(1.2 * lam_t + 30 * np.sqrt(lam_t) + 100)
        model, ms = self.model, self.max_steps

        default_tol = name in DEFAULT_TOL_CASES

        def one(theta, t):
            d = model(theta)
            snap = t[SNAP]
            out = {
                "pdf": d.pdf(t, tol=TIGHT, max_steps=ms),
                "cdf": d.cdf(t, tol=TIGHT, max_steps=ms),
                "sf": d.sf(t, tol=TIGHT, max_steps=ms),
                "state": d.state_probability(snap, tol=TIGHT, max_steps=ms),
                "occupancy": d.accumulated_occupancy(snap, tol=TIGHT, max_steps=ms),
            }
            if default_tol:
                out["pdf_default"] = d.pdf(t, max_steps=ms)
                out["cdf_default"] = d.cdf(t, max_steps=ms)
            return out

        # one compiled program per model, called once per theta (theta and t are arguments)
        self.bundle = jax.jit(one)

    def mean(self, i):
        alpha, S, _ = self.mats[i]
        return float(alpha @ np.linalg.solve(-S, np.ones(len(alpha))))

    def evaluate(self, times=None):
        times = self.times if times is None else np.asarray(times, dtype=np.float64)
        outs = [self.bundle(th, t) for th, t in zip(self.thetas, times)]
        return {k: np.stack([np.asarray(o[k]) for o in outs]) for k in outs[0]}


_CACHE: dict[str, Case] = {}


def get_case(name) -> Case:
    if name not in _CACHE:
        _CACHE[name] = Case(name)
    return _CACHE[name]


@pytest.fixture(scope="module", autouse=True)
def _clear_cache():
    yield
    _CACHE.clear()


# -- against scipy.linalg.expm ------------------------------------------------------------
@pytest.mark.parametrize("name", list(CASES))
def test_against_expm(name):
    case = get_case(name)
    got = case.evaluate()
    V = case.graph.vertices_length()
    for i, (alpha, S, vs) in enumerate(case.mats):
        t = case.times[i]
        ref = expm_reference(alpha, S, t)
        s = -S.sum(axis=1)
        assert s.max() / ref["pdf"].max() < 1e3  # TIGHT's absolute bound is negligible (module doc)
        tag = f"{name} theta={case.thetas[i]}"
        for key in ("pdf", "cdf", "sf"):
            _assert_rel(got[key][i], ref[key], what=f"{tag} {key}")
        if "pdf_default" in got:
            # default tol: the documented absolute bounds, at every time (tails included);
            # 1e-13 of slack for rounding
            np.testing.assert_array_less(
                np.abs(got["pdf_default"][i] - ref["pdf"]),
                1e-12 * s.max() + 1e-13 * ref["pdf"].max(),
            )
            np.testing.assert_array_less(np.abs(got["cdf_default"][i] - ref["cdf"]), 1e-12 + 1e-13)
        # per-vertex quantities: transient vertices against the oracle, the start vertex
        # (column 0) and absorbing/unreachable vertices exactly 0
        others = np.setdiff1d(np.arange(V), vs)
        assert 0 in others
        for key, refkey in (("state", "state"), ("occupancy", "occupancy")):
            block = got[key][i]
            assert block.shape == (len(SNAP), V), (key, block.shape)
            np.testing.assert_array_equal(block[:, others], 0.0)
            _assert_rel(block[:, vs], ref[refkey][SNAP], axis=1, what=f"{tag} {key}")
        _assert_rel(
            got["occupancy"][i][:, vs],
            ref["occupancy_formula"][SNAP],
            rtol=1e-8,
            floor=1e-6,
            axis=1,
            what=f"{tag} occupancy vs alpha S^-1 (e^St - I)",
        )
        # state probabilities sum to the survival function
        np.testing.assert_allclose(
            got["state"][i].sum(axis=1), ref["sf"][SNAP], rtol=1e-12, atol=1e-15
        )
        # at t = 0: P(X_0 = i) = alpha_i and nothing has accumulated yet
        assert case.times[i][SNAP[0]] == 0.0
        np.testing.assert_allclose(got["state"][i][0, vs], alpha, rtol=1e-14, atol=0)
        np.testing.assert_array_equal(got["occupancy"][i][0], 0.0)


# -- mpmath at 50 digits: stiff chains -----------------------------------------------------
STIFF = {
    # fast entry (1e4) into a slow state (1e-3) that feeds a fast-returning one
    "fast_to_slow": (
        [1.0, 0.0, 0.0],
        [[-(1e4 + 1.0), 1e4, 0.0], [0.0, -(1e-3 + 0.5), 1e-3], [0.0, 1e2, -(1e2 + 1e-3)]],
        [1e-5, 1e-4, 1e-3, 1e-2, 0.1, 1.0, 2.5],
    ),
    # four states, a cycle through rates 1e-3 .. 1e4, spread alpha with defect 0.2
    "cyclic_defect": (
        [0.5, 0.0, 0.2, 0.1],
        [
            [-(1e4 + 2e-3), 1e4, 0.0, 2e-3],
            [3.0, -(3.0 + 1e-3 + 20.0), 20.0, 0.0],
            [0.0, 0.0, -(5e3 + 0.05), 5e3],
            [1e-3, 0.0, 0.1, -(1e-3 + 0.1 + 1e-3)],
        ],
        [1e-4, 1e-3, 0.01, 0.1, 0.5, 1.0, 3.0],
    ),
    # rates 1e-3 .. 1e4 around a three-cycle
    "three_cycle": (
        [0.9, 0.0, 0.0],
        [[-1e-3 - 1e4, 1e4, 0.0], [0.0, -1e-2 - 1e3, 1e3], [1e-1, 0.0, -(1e-1 + 1e-3)]],
        [1e-4, 1e-3, 1e-2, 0.5, 2.0, 4.0],
    ),
}


def _mp_reference(alpha, S, ts):
    """pdf = alpha e^{St} s and cdf = defect + P(absorbed by t) from the full generator."""
    with mpmath.workdps(50):
        n = len(alpha)
        A = mpmath.zeros(n + 1, n + 1)
        for i in range(n):
            for j in range(n):
                A[i, j] = mpmath.mpf(S[i][j])
            A[i, n] = -sum(mpmath.mpf(S[i][j]) for j in range(n))
        a = [mpmath.mpf(x) for x in alpha]
        defect = 1 - sum(a)
        pdf, cdf = [], []
        for t in ts:
            E = mpmath.expm(A * mpmath.mpf(t))
            pdf.append(sum(a[i] * E[i, j] * A[j, n] for i in range(n) for j in range(n)))
            cdf.append(defect + sum(a[i] * E[i, n] for i in range(n)))
        return np.array([float(x) for x in pdf]), np.array([float(x) for x in cdf])


@pytest.mark.parametrize("name", list(STIFF))
def test_stiff_against_mpmath(name):
    alpha, S, ts = (np.asarray(x, dtype=np.float64) for x in STIFF[name])
    pdf_ref, cdf_ref = _mp_reference(STIFF[name][0], STIFF[name][1], STIFF[name][2])
    model = pj.Graph.from_matrices(alpha, S).compile()
    lam_t = -S.diagonal().min() * ts.max()
    max_steps = int(lam_t + 30 * np.sqrt(lam_t) + 100)  # above the default 4096
    kw = dict(tol=TIGHT, max_steps=max_steps)
    pdf, cdf = jax.jit(lambda t: (model().pdf(t, **kw), model().cdf(t, **kw)))(ts)
    # TIGHT's absolute bound (1e-22 * 1e4 for the pdf, 1e-22 for the cdf) is far below
    # 1e-10 of the smallest value compared (all are >= 1e-6): what remains is rounding
    # over up to ~4e4 steps of the uniformized chain.
    assert min(pdf_ref.min(), cdf_ref.min()) > 1e-6
    np.testing.assert_allclose(np.asarray(pdf), pdf_ref, rtol=1e-10, atol=0)
    np.testing.assert_allclose(np.asarray(cdf), cdf_ref, rtol=1e-10, atol=0)


# -- closed forms -------------------------------------------------------------------------
def test_exponential_closed_form():
    model = pj.models.erlang(1).compile()
    f = jax.jit(
        jax.vmap(lambda th, t: (lambda d: (d.pdf(t), d.logpdf(t), d.cdf(t), d.sf(t)))(model(th)))
    )
    rates = np.array([1.7, 0.2])
    t = (
        np.array([0.0, 1e-9, 1e-6, 1e-3, 0.1, 0.5, 1.0, 2.0, 5.0, 10.0, 20.0])[None, :]
        / rates[:, None]
    )
    pdf, logpdf, cdf, sf = (np.asarray(x) for x in f(rates[:, None], t))
    lam, rt = rates[:, None], rates[:, None] * t
    # values >= e^-20 ~ 2e-9 of the max: the default absolute bound 1e-12 * lam is still
    # far below; the actual truncation error is orders below its bound
    np.testing.assert_allclose(pdf, lam * np.exp(-rt), rtol=1e-11)
    np.testing.assert_allclose(logpdf, np.log(lam) - rt, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(sf, np.exp(-rt), rtol=1e-11)
    # the cdf keeps relative precision at small t (down to 1e-9 / lam): against -expm1
    np.testing.assert_allclose(cdf, -np.expm1(-rt), rtol=1e-11, atol=0)


def test_erlang_is_gamma():
    case = get_case("erlang")
    got = case.evaluate()
    for i, lam in enumerate(case.thetas[:, 0]):
        dist = scipy.stats.gamma(a=4, scale=1.0 / lam)
        t = case.times[i]
        _assert_rel(got["pdf"][i], dist.pdf(t), rtol=1e-11, what="erlang pdf")
        _assert_rel(got["cdf"][i], dist.cdf(t), rtol=1e-11, what="erlang cdf")
        _assert_rel(got["sf"][i], dist.sf(t), rtol=1e-11, what="erlang sf")


def _hypoexponential(rates, ts):
    """Closed-form hypoexponential pdf/sf for distinct rates (mpmath: no cancellation).

    ``f(t) = sum_i l_i e^{-l_i t} prod_{j != i} l_j / (l_j - l_i)``,
    ``P(T > t) = sum_i e^{-l_i t} prod_{j != i} l_j / (l_j - l_i)``.
    """
    with mpmath.workdps(60):
        ls = [mpmath.mpf(x) for x in rates]
        coef = []
        for i, li in enumerate(ls):
            c = mpmath.mpf(1)
            for j, lj in enumerate(ls):
                if j != i:
                    c *= lj / (lj - li)
            coef.append(c)
        pdf = [
            sum(c * li * mpmath.exp(-li * t) for c, li in zip(coef, ls))
            for t in map(mpmath.mpf, ts)
        ]
        sf = [sum(c * mpmath.exp(-li * t) for c, li in zip(coef, ls)) for t in map(mpmath.mpf, ts)]
        return (
            np.array([float(x) for x in pdf]),
            np.array([float(x) for x in sf]),
            np.array([float(1 - x) for x in sf]),
        )


def test_kingman_tmrca_is_hypoexponential():
    case = get_case("kingman")
    got = case.evaluate()
    n = 5
    for i, theta in enumerate(case.thetas[:, 0]):
        rates = [comb(k, 2) * theta for k in range(2, n + 1)]
        pdf, sf, cdf = _hypoexponential(rates, case.times[i])
        _assert_rel(got["pdf"][i], pdf, rtol=1e-11, what="kingman pdf")
        _assert_rel(got["sf"][i], sf, rtol=1e-11, what="kingman sf")
        _assert_rel(got["cdf"][i], cdf, rtol=1e-11, what="kingman cdf")
        # E[TMRCA] = 2 (1 - 1/n) / theta
        assert case.mean(i) == pytest.approx(2 * (1 - 1 / n) / theta, rel=1e-13)


# -- reward-scaled distributions ------------------------------------------------------------
def _reward_cases():
    kingman = pj.models.kingman(5)
    # total branch length: reward = number of lineages (0 at the start vertex: ignored)
    total_length = kingman.states().sum(axis=1).astype(np.float64)
    island = pj.models.two_island(2, 1)
    r_island = np.random.default_rng(7).uniform(0.2, 3.0, island.vertices_length())
    return {
        "kingman_total_length": (kingman, np.array([0.7]), total_length),
        "two_island_random": (island, np.array([1.0, 2.0, 0.5, 0.3]), r_island),
    }


REWARD_CASES = _reward_cases()


@pytest.mark.parametrize("name", list(REWARD_CASES))
def test_reward_scaled_against_expm(name):
    graph, theta, r = REWARD_CASES[name]
    model = graph.compile()
    alpha, S, vs = graph_matrices(graph, theta)
    rt = r[vs]
    assert np.all(rt > 0)
    Sr = S / rt[:, None]  # R^{-1} S
    mean_ref = alpha @ np.linalg.solve(-S, rt)
    ts = mean_ref * FRACTIONS[:9]
    ref = expm_reference(alpha, Sr, ts)

    @jax.jit
    def f(theta, r, t):
        d = model(theta)
        y = d.reward_scaled(r)
        return (
            y.pdf(t, tol=TIGHT),
            y.cdf(t, tol=TIGHT),
            y.sf(t, tol=TIGHT),
            y.mean(),
            d.mean(r),
            y.var(),
            d.var(r),
        )

    pdf, cdf, sf, mean_y, mean_r, var_y, var_r = (np.asarray(x) for x in f(theta, r, ts))
    _assert_rel(pdf, ref["pdf"], what="reward_scaled pdf")
    _assert_rel(cdf, ref["cdf"], what="reward_scaled cdf")
    _assert_rel(sf, ref["sf"], what="reward_scaled sf")
    np.testing.assert_allclose(mean_y, mean_ref, rtol=1e-12)
    np.testing.assert_allclose(mean_r, mean_ref, rtol=1e-12)
    np.testing.assert_allclose(var_y, var_r, rtol=1e-11)


def test_reward_scaled_zero_reward_raises():
    graph = pj.models.kingman(4)
    d = graph.compile()(np.array([1.0]))
    # singleton-branch reward (SFS row 0) is zero in states without singletons
    r = pj.models.sfs_rewards(graph)[0]
    with pytest.raises(Exception, match="strictly positive"):
        d.reward_scaled(r)
    with pytest.raises(Exception, match="strictly positive"):
        jax.jit(lambda r: d.reward_scaled(r).mean())(r)


# -- gradients -------------------------------------------------------------------------
def _mixture_with_defect():
    """Parameterized initial distribution and defect: ``theta = (p, lam)``.

    start -> A w.p. ``p``, start -> B w.p. 0.3 (defect ``0.7 - p``); A -> exit at ``lam``,
    A -> B at 1; B -> exit at 2, B -> A at 0.5 (cyclic).
    """
    g = pj.Graph(1, n_params=2)
    a, b, z = (g.find_or_create_vertex([i]) for i in (1, 2, 3))
    g.starting_vertex().add_edge_parameterized(a, 0.0, [1.0, 0.0])
    g.starting_vertex().add_edge(b, 0.3)
    a.add_edge_parameterized(z, 0.0, [0.0, 1.0])
    a.add_edge(b, 1.0)
    b.add_edge(z, 2.0)
    b.add_edge(a, 0.5)
    return g


GRAD_CASES = {
    "kingman": (lambda: pj.models.kingman(5), [[1.0], [0.4], [2.5]]),
    "rabbit_flooding": (lambda: pj.models.rabbit_flooding(3), [[2.0, 4.0], [0.5, 1.5], [1.2, 0.8]]),
    "mixture_with_defect": (_mixture_with_defect, [[0.4, 1.2], [0.2, 0.7], [0.65, 3.0]]),
}
DATA = np.concatenate([np.linspace(0.02, 3.0, 30), [4.5, 6.0]])


def _central_difference(f, theta, rel_step=1e-5):
    grad = np.zeros_like(theta)
    for j in range(theta.size):
        h = rel_step * theta[j]
        up, down = theta.copy(), theta.copy()
        up[j] += h
        down[j] -= h
        grad[j] = (float(f(up)) - float(f(down))) / (2 * h)
    return grad


@pytest.fixture(scope="module")
def grad_models():
    out = {}
    for name, (build, thetas) in GRAD_CASES.items():
        model = build().compile()

        def loglik(th, model=model):
            return jnp.sum(model(th).logpdf(DATA))

        out[name] = (model, np.asarray(thetas), loglik, jax.jit(jax.value_and_grad(loglik)))
    return out


@pytest.mark.parametrize("name", list(GRAD_CASES))
def test_loglik_gradient_finite_differences(grad_models, name):
    model, thetas, _, value_and_grad = grad_models[name]
    for theta in thetas:
        g = np.asarray(value_and_grad(theta)[1])
        fd = _central_difference(lambda th: value_and_grad(th)[0], theta)
        np.testing.assert_allclose(
            g, fd, rtol=1e-6, atol=1e-6 * np.abs(fd).max(), err_msg=f"{name} {theta}"
        )


def test_cdf_sf_gradients():
    """Gradients of cdf and sf in theta (finite differences) and in t (= +-pdf), one program.

    The model's initial distribution and defect depend on theta (alpha and defect paths).
    """
    model = _mixture_with_defect().compile()
    theta = np.array([0.45, 1.2])
    t = np.array([0.05, 0.3, 1.0, 2.0])
    w1 = np.array([0.3, -1.1, 0.7, 2.0])
    w2 = np.array([1.3, 0.4, -0.8, 0.5])

    def objective(th, t):
        d = model(th)
        return jnp.sum(w1 * d.cdf(t)) + jnp.sum(w2 * d.sf(t))

    # one program: the objective (for the differences), its gradient and the pdf
    f = jax.jit(lambda th: (jax.value_and_grad(objective, argnums=(0, 1))(th, t), model(th).pdf(t)))
    (_, (g_theta, g_t)), pdf = f(theta)
    fd = _central_difference(lambda th: f(th)[0][0], theta)
    np.testing.assert_allclose(np.asarray(g_theta), fd, rtol=1e-6)
    # d/dt cdf = pdf, d/dt sf = -pdf (Lambda is held constant: the exact series does not
    # depend on it)
    pdf = np.asarray(pdf)
    np.testing.assert_allclose(np.asarray(g_t), (w1 - w2) * pdf, rtol=1e-10)


def test_cdf_gradient_exponential_and_erlang_closed_form():
    t = np.array([0.3, 1.0, 2.5])
    for k, theta in ((1, 1.7), (4, 2.0)):
        model = pj.models.erlang(k).compile()
        grad = jax.jit(jax.grad(lambda th: jnp.sum(model(th).cdf(t))))(np.array([theta]))
        # d/dtheta P(Gamma(k, rate theta) <= t) = (t / theta) * pdf(t)
        want = np.sum(t / theta * scipy.stats.gamma(a=k, scale=1.0 / theta).pdf(t))
        np.testing.assert_allclose(float(grad[0]), want, rtol=1e-10, err_msg=f"erlang({k})")


def test_vmap_over_100_thetas_equals_loop(grad_models):
    model, _, loglik, value_and_grad = grad_models["kingman"]
    thetas = np.linspace(0.2, 3.0, 100)[:, None]
    batched = np.asarray(jax.jit(jax.vmap(loglik))(thetas))
    looped = [value_and_grad(th) for th in thetas]
    np.testing.assert_allclose(batched, [float(v) for v, _ in looped], rtol=1e-13)
    # gradients under vmap take the series' own batching rule (sequential on CPU)
    _, grads = jax.jit(jax.vmap(value_and_grad))(thetas[::10])
    np.testing.assert_allclose(
        np.asarray(grads), np.array([np.asarray(g) for _, g in looped[::10]]), rtol=1e-12
    )


# -- large data: 100,000 observations ------------------------------------------------------
def test_loglik_100k_observations_equals_chunked_sum():
    model = pj.models.kingman(5).compile()
    theta = np.array([1.3])
    data = np.random.default_rng(3).gamma(2.0, 0.8, size=100_000)
    # max_steps=512 covers Lambda t <= 13 * 20 here and keeps the Poisson window small
    loglik = jax.jit(lambda th, x: jnp.sum(model(th).logpdf(x, max_steps=512)))
    total = float(loglik(theta, data))
    chunks = sum(float(loglik(theta, c)) for c in np.split(data, 10))
    assert np.isfinite(total)
    np.testing.assert_allclose(total, chunks, rtol=1e-12)
    # and the value itself against the closed-form hypoexponential density
    rates = np.array([comb(k, 2) * theta[0] for k in range(2, 6)])
    np.testing.assert_allclose(total, hypoexponential_log_pdf(rates, data)[0].sum(), rtol=1e-10)


# -- error paths ---------------------------------------------------------------------------
@pytest.fixture(scope="module")
def kingman_dist():
    return pj.models.kingman(4).compile()(np.array([1.0]))


def test_max_steps_too_small_raises(kingman_dist):
    d = kingman_dist
    t = np.array([0.5, 50.0])  # Lambda = 6: needs ~ 400 terms
    for method in (d.pdf, d.cdf, d.sf, d.state_probability, d.accumulated_occupancy):
        with pytest.raises(Exception, match="max_steps"):
            method(t, max_steps=64)
    f = jax.jit(lambda t: d.logpdf(t, max_steps=64))
    with pytest.raises(Exception, match="max_steps"):
        f(t)
    # the same program with times that fit: no error
    assert np.all(np.isfinite(np.asarray(f(np.array([0.5, 1.0])))))
    # eagerly the error names the time, its index and the count needed
    with pytest.raises(ValueError, match=r"time 50.0 \(index \(1,\)\) needs \d+ series terms"):
        d.logpdf(t, max_steps=64)
    # no cap by default: Lambda t = 6 * 1000 (past the old 4096 cap), the TMRCA's exact tail
    # (rates 1, 3, 6: the slowest exponential dominates)
    rates = np.array([1.0, 3.0, 6.0])
    coef = np.array([np.prod([lj / (lj - li) for lj in rates if lj != li]) for li in rates])
    want = -1000.0 + np.log((coef * rates * np.exp(-1000.0 * (rates - 1.0))).sum())
    np.testing.assert_allclose(d.logpdf(np.array([1000.0]))[0], want, rtol=1e-12)


@pytest.mark.parametrize("bad", [-1e-3, np.nan])
def test_negative_or_nan_times_raise(kingman_dist, bad):
    d = kingman_dist
    t = np.array([0.5, bad, 1.0])
    for method in (d.pdf, d.logpdf, d.cdf, d.sf, d.state_probability, d.accumulated_occupancy):
        with pytest.raises(Exception, match="non-negative"):
            method(t)
    with pytest.raises(Exception, match="non-negative"):
        jax.jit(lambda t: d.cdf(t))(t)


def test_float32_states_its_accuracy_and_stays_in_range():
    """float32 densities warn about their accuracy; cdf and sf stay in [0, 1]."""
    dist = pj.models.kingman(5).compile()(jnp.array([1.0], jnp.float32))
    t = jnp.linspace(0.0, 10.0, 50, dtype=jnp.float32)
    with pytest.warns(UserWarning, match="float32 transient quantities"):
        cdf = np.asarray(dist.cdf(t))
    sf = np.asarray(dist.sf(t))
    assert cdf.dtype == np.float32 and np.all((cdf >= 0) & (cdf <= 1) & (sf >= 0) & (sf <= 1))
    exact = np.asarray(pj.models.kingman(5).compile()(jnp.array([1.0])).cdf(np.asarray(t, float)))
    np.testing.assert_allclose(cdf, exact, rtol=0, atol=1e-5)
