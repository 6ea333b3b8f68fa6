"""Property-based tests (hypothesis) over random graphs and random bad input.

Random graphs (acyclic and cyclic, with defects, continuous and discrete) are checked
against the dense oracles of ``tests/_oracle.py`` (``numpy`` inverses, ``scipy``'s
``expm``, matrix powers), and random bad input must raise a clear error, never give a
NaN silently.

Compilation is per shape, so most graphs share a few fixed *patterns*: every edge of
the pattern is present and parameterised (``rate = theta[e]``), and hypothesis draws
``theta`` with exact zeros, so one compilation per pattern serves every example while
the effective graph (which edges have a positive rate, which states are reachable)
varies. A smaller family built with ``Graph.from_matrices`` varies the structure
itself (2-8 states), evaluated eagerly. Examples are derandomized (reproducible) and
few, to keep the file fast.
"""

from __future__ import annotations

import functools

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import phasejax as pj
from _oracle import (
    dph_cov_matrix,
    dph_factorial_moments,
    dph_pmf_cdf_sf,
    dph_reward_moments,
    dph_visits,
    green,
    ph_cov_matrix,
    ph_laplace,
    ph_moments,
    ph_pdf_cdf_sf,
)

RUNTIME_ERRORS = (RuntimeError, ValueError)  # as in test_validation.py
RTOL = 1e-9
DENSITY_ATOL = 1e-10


def _settings(n):
    return settings(
        max_examples=n,
        deadline=None,
        derandomize=True,
        database=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )


# -- patterns: fixed structure, random rates -----------------------------------------------------
# name -> (n states, acyclic, discrete); one compilation per (pattern, solver)
PATTERNS = {
    "cyclic-ph": (5, False, False),
    "acyclic-ph": (6, True, False),
    "cyclic-dph": (4, False, True),
    "acyclic-dph": (5, True, True),
}


def _pairs(n, acyclic):
    return [(i, j) for i in range(n) for j in range(n) if i != j and (j > i or not acyclic)]


@functools.cache
def _pattern_graph(name):
    """Start -> every state, every pair (``i < j`` if acyclic), every state -> end; each
    edge parameterised by its own entry of theta. Vertices: start, states 1..n, end."""
    n, acyclic, discrete = PATTERNS[name]
    g = pj.Graph(1, discrete=discrete)
    states = [g.find_or_create_vertex([i + 1]).index for i in range(n)]
    end = g.find_or_create_vertex([n + 1]).index
    edges = (
        [(0, s) for s in states]
        + [(states[i], states[j]) for i, j in _pairs(n, acyclic)]
        + [(s, end) for s in states]
    )
    for e, (a, b) in enumerate(edges):
        g.add_edge(a, b, 0.0, np.eye(len(edges))[e])
    return g


@functools.cache
def _pattern_model(name, solver):
    return _pattern_graph(name).compile(solver=solver)


def _reaches_absorption(inner, exit_):
    """States with a path of positive rates to absorption."""
    ok = exit_ > 0
    while True:
        new = ok | (inner[:, ok] > 0).any(axis=1)
        if (new == ok).all():
            return ok
        ok = new


_rate = st.one_of(st.just(0.0), st.floats(0.05, 4.0))


@st.composite
def pattern_cases(draw, name):
    """``(theta, alpha, M)`` of pattern ``name``: ``M`` is ``S`` or ``T`` (dense, states
    1..n). Rates (or discrete weights) have exact zeros; states that could not reach
    absorption get an exit, so the chain is admissible. Initial mass may be < 1."""
    n, acyclic, discrete = PATTERNS[name]
    pairs = _pairs(n, acyclic)
    vec = lambda m, elem=_rate: np.array(draw(st.lists(elem, min_size=m, max_size=m)))
    a = vec(n, st.one_of(st.just(0.0), st.floats(0.05, 1.0)))
    if a.sum() == 0:
        a[draw(st.integers(0, n - 1))] = 1.0
    defect = draw(st.one_of(st.just(0.0), st.floats(0.01, 0.6)))
    alpha = a / a.sum() * (1.0 - defect)
    inner = np.zeros((n, n))
    inner[tuple(np.array(pairs).T)] = vec(len(pairs))
    exit_ = vec(n)
    stuck = ~_reaches_absorption(inner, exit_)
    exit_[stuck] = vec(n, st.floats(0.05, 4.0))[stuck]
    if discrete:  # weights -> probabilities, with a drawn weight of staying put
        total = inner.sum(axis=1) + exit_ + vec(n)
        inner, exit_ = inner / total[:, None], exit_ / total
        M = inner + np.diag(np.maximum(1.0 - inner.sum(axis=1) - exit_, 0.0))  # no -1e-17
    else:
        M = inner - np.diag(inner.sum(axis=1) + exit_)
    theta = np.concatenate([alpha, inner[tuple(np.array(pairs).T)], exit_])
    return theta, alpha, M


def _rewards(n_vertices, m=3):
    """(m, V) non-negative rewards with exact zeros (all-zero rows allowed)."""
    elem = st.one_of(st.just(0.0), st.floats(0.1, 3.0))
    row = st.lists(elem, min_size=n_vertices, max_size=n_vertices)
    return st.lists(row, min_size=m, max_size=m).map(np.array)


def _close(got, want, rtol=RTOL, scale=None, what=""):
    got, want = np.asarray(got), np.asarray(want, dtype=np.float64)
    assert got.shape == want.shape, (what, got.shape, want.shape)
    scale = np.abs(want).max(initial=0.0) if scale is None else scale
    np.testing.assert_allclose(got, want, rtol=rtol, atol=rtol * scale, err_msg=what)


# -- moments ---------------------------------------------------------------------------------------
@eqx.filter_jit
def _moments(model, theta, R, s):
    d = model(theta)
    out = {
        "mean": d.mean(),
        "mean_r": d.mean(R[0]),
        "var_r": d.var(R[1]),
        "moments_r": d.moments(3, R[0]),
        "moments_1": d.moments(3),
        "cov": d.covariance_matrix(R),
        "sojourn": d.expected_sojourn(),
        "defect": d.defect(),
    }
    if model.discrete:
        out["factorial"] = d.factorial_moments(3)
    else:
        out["laplace_r"] = d.laplace(s, R[0])
    return out


def _moment_oracle(alpha, M, R, s, discrete):
    n = len(alpha)
    Rt = R[:, 1 : n + 1]  # per-state rewards (start and end vertices accumulate nothing)
    mom = dph_reward_moments if discrete else ph_moments
    m1, m2 = mom(alpha, M, Rt[1], 2)
    out = {
        "mean": mom(alpha, M, np.ones(n), 1)[0],
        "mean_r": mom(alpha, M, Rt[0], 1)[0],
        "var_r": m2 - m1**2,
        "moments_r": mom(alpha, M, Rt[0], 3),
        "moments_1": mom(alpha, M, np.ones(n), 3),
        "cov": (dph_cov_matrix if discrete else ph_cov_matrix)(alpha, M, Rt),
        "sojourn": np.concatenate(
            [[0.0], dph_visits(alpha, M) if discrete else alpha @ green(M), [0.0]]
        ),
        "defect": 1.0 - alpha.sum(),
        "_m2": np.array([mom(alpha, M, r, 2)[1] for r in Rt]),
    }
    if discrete:
        out["factorial"] = dph_factorial_moments(alpha, M, 3)
    else:
        out["laplace_r"] = ph_laplace(alpha, M, Rt[0], s)
    return out


def _check_moments(got, ref):
    for key, want in ref.items():
        if key.startswith("_"):
            continue
        # a variance or covariance may cancel to ~0: measure it against second moments
        scale = {"cov": ref["_m2"].max(initial=0.0), "var_r": ref["_m2"][1]}.get(key)
        _close(got[key], want, scale=scale, what=key)


_SOLVER_CASES = [
    ("cyclic-ph", "auto"),  # auto picks dense LU for a cyclic graph
    ("acyclic-ph", "auto"),  # level sweep
    ("acyclic-ph", "dense"),
    ("cyclic-dph", "auto"),
    ("acyclic-dph", "auto"),
]


@pytest.mark.parametrize("name, solver", _SOLVER_CASES)
def test_moments_match_dense_oracle(name, solver):
    n, _, discrete = PATTERNS[name]
    model = _pattern_model(name, solver)
    times = st.lists(st.floats(0.0, 5.0), min_size=3, max_size=3).map(np.array)

    @_settings(20)
    @given(case=pattern_cases(name), R=_rewards(n + 2), s=times)
    def check(case, R, s):
        theta, alpha, M = case
        got = _moments(model, jnp.asarray(theta), jnp.asarray(R), jnp.asarray(s))
        _check_moments(got, _moment_oracle(alpha, M, R, s, discrete))

    check()


# -- densities ---------------------------------------------------------------------------------------
@eqx.filter_jit
def _densities(model, theta, t):
    d = model(theta)
    first = d.pmf(t) if model.discrete else d.pdf(t)
    return first, d.cdf(t), d.sf(t)


def _times(discrete):
    elem = st.integers(0, 25) if discrete else st.one_of(st.just(0.0), st.floats(0.0, 6.0))
    return st.lists(elem, min_size=4, max_size=4).map(np.array)


@pytest.mark.parametrize("name", list(PATTERNS))
def test_densities_match_dense_oracle(name):
    """pdf/cdf/sf against ``expm`` (DPH: pmf/cdf/sf against matrix powers); cdf + sf = 1;
    values in range; the cdf does not decrease."""
    discrete = PATTERNS[name][2]
    model = _pattern_model(name, "auto")

    @_settings(20)
    @given(case=pattern_cases(name), t=_times(discrete))
    def check(case, t):
        theta, alpha, M = case
        t = np.sort(t)
        got = [np.asarray(x) for x in _densities(model, jnp.asarray(theta), jnp.asarray(t))]
        want = (dph_pmf_cdf_sf if discrete else ph_pdf_cdf_sf)(alpha, M, t)
        for what, g, w in zip(("pmf/pdf", "cdf", "sf"), got, want):
            np.testing.assert_allclose(g, w, rtol=0, atol=DENSITY_ATOL, err_msg=what)
        first, cdf, sf = got
        np.testing.assert_allclose(cdf + sf, 1.0, rtol=0, atol=DENSITY_ATOL)
        assert np.all(first >= 0) and np.all((cdf >= 0) & (cdf <= 1)) and np.all(sf >= 0)
        assert np.all(np.diff(cdf) >= -DENSITY_ATOL), cdf

    check()


# -- scale invariance over extreme rate scales ---------------------------------------------------
@_settings(15)
@given(case=pattern_cases("cyclic-ph"), R=_rewards(7), log_c=st.floats(-100.0, 100.0))
def test_scaled_rates(case, R, log_c):
    """Multiplying every rate by ``c`` (10^-100 .. 10^100) divides the reward moments by
    ``c^k`` and turns ``pdf(t)`` into ``c pdf(c t)``: no overflow, underflow or NaN."""
    theta, alpha, M = case
    c = 10.0**log_c
    scaled = np.concatenate([alpha, theta[len(alpha) :] * c])
    model = _pattern_model("cyclic-ph", "auto")
    s = np.array([0.0, 1.0, 2.5])
    base = _moments(model, jnp.asarray(theta), jnp.asarray(R), jnp.asarray(s))
    got = _moments(model, jnp.asarray(scaled), jnp.asarray(R), jnp.asarray(s * c))
    powers = {"mean": 1, "mean_r": 1, "var_r": 2, "cov": 2, "sojourn": 1}
    for key, k in powers.items():
        _close(np.asarray(got[key]) * c**k, base[key], rtol=1e-12, what=key)
    for key in ("moments_r", "moments_1"):
        _close(np.asarray(got[key]) * c ** np.arange(1, 4), base[key], rtol=1e-12, what=key)
    _close(got["laplace_r"], base["laplace_r"], rtol=1e-12, what="laplace_r")
    t = np.array([0.0, 0.3, 1.0, 4.0])
    f, F, S = _densities(model, jnp.asarray(theta), jnp.asarray(t))
    fc, Fc, Sc = _densities(model, jnp.asarray(scaled), jnp.asarray(t / c))
    np.testing.assert_allclose(np.asarray(fc) / c, f, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(Fc, F, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(Sc, S, rtol=1e-9, atol=1e-12)


# -- random structure: Graph.from_matrices, 2-8 states ----------------------------------------------
@st.composite
def matrix_cases(draw, discrete):
    """``(alpha, M)`` with a random sparsity pattern (cyclic or acyclic) and a defect."""
    n = draw(st.integers(2, 8))
    acyclic = draw(st.booleans())
    density = draw(st.floats(0.0, 1.0))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    inner = np.where(rng.random((n, n)) < density, rng.uniform(0.05, 4.0, (n, n)), 0.0)
    np.fill_diagonal(inner, 0.0)
    if acyclic:
        inner = np.triu(inner)
    exit_ = np.where(rng.random(n) < 0.4, rng.uniform(0.05, 4.0, n), 0.0)
    stuck = ~_reaches_absorption(inner, exit_)
    exit_[stuck] = rng.uniform(0.05, 4.0, n)[stuck]
    alpha = np.where(rng.random(n) < 0.5, rng.random(n), 0.0)
    alpha[rng.integers(n)] = 0.5
    alpha *= (1.0 - draw(st.one_of(st.just(0.0), st.floats(0.01, 0.6)))) / alpha.sum()
    if discrete:
        total = inner.sum(axis=1) + exit_ + np.where(rng.random(n) < 0.5, rng.random(n), 0.0)
        inner, exit_ = inner / total[:, None], exit_ / total
        return alpha, inner + np.diag(np.maximum(1.0 - inner.sum(axis=1) - exit_, 0.0))
    return alpha, inner - np.diag(inner.sum(axis=1) + exit_)


@eqx.filter_jit
def _few_moments(d, R):
    return d.mean(), d.moments(3, R[0]), d.var(R[1]), d.covariance_matrix(R)


@pytest.mark.parametrize("discrete", [False, True], ids=["ph", "dph"])
def test_from_matrices_moments(discrete):
    """Moments of graphs of random structure (``solver="auto"``) against the oracle (one
    compilation per example: few examples)."""

    @_settings(8)
    @given(case=matrix_cases(discrete), data=st.data())
    def check(case, data):
        alpha, M = case
        n = len(alpha)
        R = data.draw(_rewards(n + 2, m=2))
        d = pj.Graph.from_matrices(alpha, M, discrete=discrete).compile()(None)
        mean, moments, var, cov = _few_moments(d, jnp.asarray(R))
        mom = dph_reward_moments if discrete else ph_moments
        Rt = R[:, 1 : n + 1]
        m1, m2 = mom(alpha, M, Rt[1], 2)
        _close(mean, mom(alpha, M, np.ones(n), 1)[0], what="mean")
        _close(moments, mom(alpha, M, Rt[0], 3), what="moments")
        _close(var, m2 - m1**2, scale=m2, what="var")
        want = (dph_cov_matrix if discrete else ph_cov_matrix)(alpha, M, Rt)
        second = max(mom(alpha, M, r, 2)[1] for r in Rt)
        _close(cov, want, scale=second, what="cov")

    check()


# -- reward transformation ------------------------------------------------------------------------------
@eqx.filter_jit
def _moments_of(d, r=None):
    return d.moments(3, r), d.var(r), d.defect()


@_settings(10)
@given(case=pattern_cases("cyclic-ph"), R=_rewards(7, m=1))
def test_reward_transform_keeps_reward_moments(case, R):
    """``Y = int r(X_t) dt`` (zero rewards folded away): the transformed distribution's
    absorption-time moments are the reward moments, its defect is ``P(Y = 0)``."""
    theta, alpha, M = case
    d = _pattern_model("cyclic-ph", "auto")(jnp.asarray(theta))
    r = R[0]
    if not np.any(r[1:-1] > 0):
        r[1] = 1.0  # no positive reward at all: Y = 0, nothing to transform into
    moments, var, defect = _moments_of(d.reward_transform(r))  # one compilation per zero pattern
    want_moments, want_var, _ = _moments_of(d, jnp.asarray(r))
    _close(moments, want_moments, what="moments")
    _close(var, want_var, scale=want_moments[1], what="var")
    _close(moments, ph_moments(alpha, M, r[1:-1], 3), what="moments vs oracle")
    # P(Y = 0): absorbed (or never started) before visiting a positive-reward state
    zero = np.flatnonzero(r[1:-1] == 0)
    p0 = 1.0 - alpha.sum()
    if zero.size:
        p0 += alpha[zero] @ green(M[np.ix_(zero, zero)]) @ (-M.sum(axis=1))[zero]
    _close(defect, p0, scale=1.0, what="P(Y = 0)")


@_settings(8)
@given(case=pattern_cases("cyclic-dph"), r=st.lists(st.integers(0, 2), min_size=4, max_size=4))
def test_discrete_reward_transform_keeps_reward_moments(case, r):
    """``Y = sum_k r(X_k)`` with integer rewards (zeros allowed): moments kept."""
    theta, alpha, T = case
    d = _pattern_model("cyclic-dph", "auto")(jnp.asarray(theta))
    r = np.array([0, *r, 0], dtype=np.float64)
    if not np.any(r > 0):
        r[1] = 1.0
    moments, var, _ = _moments_of(d.reward_transform(r))
    want_moments, want_var, _ = _moments_of(d, jnp.asarray(r))
    _close(moments, want_moments, what="moments")
    _close(var, want_var, scale=want_moments[1], what="var")
    _close(moments, dph_reward_moments(alpha, T, r[1:-1], 3), what="moments vs oracle")
