"""Dense numpy oracles for phase-type quantities, written independently of phasejax.

Nothing here calls into phasejax except :func:`graph_matrices` (``Graph.as_matrices``,
a plain-numpy code path separate from the compiled solvers, which is itself checked
against hand-built matrices in ``test_graph.py``).

Continuous PH(alpha, S): ``U = (-S)^{-1}``; ``E[Y^k] = k! alpha (U R)^k 1`` (from the
Laplace transform ``alpha (s R - S)^{-1} t``); ``E[Y_a Y_b] = alpha U R_a U R_b 1 +
alpha U R_b U R_a 1``; sojourn ``alpha U``; waiting time ``U r``.

Discrete DPH(alpha, T): moments of ``Y = sum_k r(X_k)`` by an exact forward dynamic
program over steps (no closed-form moment formula used): ``mu_p(i) = E[S_k^p; X_k = i]``,
``S_k`` the reward accumulated over the first ``k`` visits; each step adds the
absorbed contribution ``mu_p . t``. The factorial moments of ``tau`` come from the
probability mass function ``P(tau = k) = alpha T^{k-1} t`` summed term by term.
"""

from __future__ import annotations

from math import comb, factorial

import numpy as np


# -- matrices -------------------------------------------------------------------
def graph_matrices(graph, theta=None):
    """``(alpha, S or T, vertices)`` of a graph at ``theta`` (dense, transient states)."""
    mats = graph.as_matrices(None if theta is None else np.asarray(theta, dtype=np.float64))
    return mats.alpha, mats.matrix, mats.vertices


def restrict(rewards, vertices):
    """Per-vertex rewards (..., V) -> per-transient-state rewards (..., n)."""
    return np.asarray(rewards, dtype=np.float64)[..., vertices]


def scatter(x, vertices, n_vertices, start=0.0):
    """Per-transient-state vector -> per-vertex vector (entry 0 = ``start``)."""
    out = np.zeros(n_vertices)
    out[vertices] = x
    out[0] = start
    return out


def green(matrix, discrete=False):
    """``U = (-S)^{-1}`` or ``(I - T)^{-1}``."""
    m = np.asarray(matrix, dtype=np.float64)
    return np.linalg.inv(np.eye(len(m)) - m if discrete else -m)


# -- continuous ---------------------------------------------------------------------
def ph_moments(alpha, S, r, k):
    """``E[Y^j] = j! alpha (U R)^j 1`` for j = 1..k."""
    U = green(S)
    v = np.ones(len(alpha))
    out = []
    for j in range(1, k + 1):
        v = U @ (r * v)
        out.append(factorial(j) * alpha @ v)
    return np.array(out)


def ph_cov_matrix(alpha, S, R):
    """Covariance matrix of ``Y_a`` for rewards ``R`` of shape (m, n)."""
    U = green(S)
    R = np.atleast_2d(R)
    m = R.shape[0]
    means = np.array([alpha @ U @ R[a] for a in range(m)])
    second = np.empty((m, m))
    one = np.ones(len(alpha))
    for a in range(m):
        for b in range(m):
            ab = alpha @ U @ np.diag(R[a]) @ U @ np.diag(R[b]) @ one
            ba = alpha @ U @ np.diag(R[b]) @ U @ np.diag(R[a]) @ one
            second[a, b] = ab + ba
    return second - np.outer(means, means)


def ph_sojourn(alpha, S):
    return alpha @ green(S)


def ph_waiting(S, r):
    return green(S) @ r


# -- discrete -----------------------------------------------------------------------
def dph_reward_moments(alpha, T, r, k, tol=1e-24, max_steps=200_000):
    """``E[Y^j]``, j = 1..k, ``Y = sum_visits r(X)``, by an exact forward recursion.

    ``mu[p, i] = E[S^p; X = i]`` after each visit; a step to ``j`` adds ``r_j``:
    ``mu'[p, j] = sum_q C(p, q) r_j^(p-q) (mu[q] T)_j``. Stops once the mass left in the
    transient states is below ``tol``.
    """
    alpha = np.asarray(alpha, dtype=np.float64)
    T = np.asarray(T, dtype=np.float64)
    r = np.asarray(r, dtype=np.float64)
    t = 1.0 - T.sum(axis=1)
    p = np.arange(k + 1)
    W = np.zeros((k + 1, k + 1, r.size))  # W[p, q, j] = C(p, q) r_j^(p-q), q <= p
    for a in range(k + 1):
        for q in range(a + 1):
            W[a, q] = comb(a, q) * r ** (a - q)
    mu = alpha[None, :] * r[None, :] ** p[:, None]  # after the first visit
    out = np.zeros(k + 1)
    for step in range(max_steps):
        out += mu @ t
        mu = np.einsum("pqj,qj->pj", W, mu @ T)
        if step % 16 == 0 and mu[0].sum() < tol:
            return out[1:]
    raise RuntimeError("dph_reward_moments did not converge")  # pragma: no cover


def dph_cov_matrix(alpha, T, R):
    """Covariance matrix by polarisation of variances from :func:`dph_reward_moments`."""
    R = np.atleast_2d(R)
    m = R.shape[0]

    def var(r):
        m1, m2 = dph_reward_moments(alpha, T, r, 2)
        return m2 - m1**2

    v = np.array([var(R[a]) for a in range(m)])
    out = np.diag(v)
    for a in range(m):
        for b in range(a + 1, m):
            out[a, b] = out[b, a] = 0.5 * (var(R[a] + R[b]) - v[a] - v[b])
    return out


def dph_factorial_moments(alpha, T, k, tol=1e-24, max_steps=200_000):
    """``E[tau (tau-1) ... (tau-j+1)]``, j = 1..k, from the pmf ``alpha T^{s-1} t``."""
    T = np.asarray(T, dtype=np.float64)
    t = 1.0 - T.sum(axis=1)
    w = np.asarray(alpha, dtype=np.float64).copy()
    out = np.zeros(k)
    j = np.arange(k)
    for s in range(1, max_steps):
        falling = np.cumprod(s - j.astype(np.float64))  # s, s(s-1), ...
        out += falling * (w @ t)
        w = w @ T
        if w.sum() < tol:
            return out
    raise RuntimeError("dph_factorial_moments did not converge")  # pragma: no cover


def dph_visits(alpha, T):
    """Expected visits: ``sum_k alpha T^{k-1}`` summed term by term."""
    T = np.asarray(T, dtype=np.float64)
    w = np.asarray(alpha, dtype=np.float64).copy()
    out = np.zeros_like(w)
    while w.sum() > 1e-24:
        out += w
        w = w @ T
    return out


# -- random matrices ------------------------------------------------------------------
def cycle_with_exits(rng, n, density, exit_fraction):
    """Off-diagonal rates of a random graph with a Hamiltonian cycle (so cyclic) plus random
    edges, and exit rates on some states (at least one), so every state reaches absorption."""
    S = np.zeros((n, n))
    perm = rng.permutation(n)
    S[perm, np.roll(perm, 1)] = rng.uniform(0.5, 2.0, n)
    mask = rng.random((n, n)) < density
    np.fill_diagonal(mask, False)
    S[mask] += rng.uniform(0.1, 3.0, mask.sum())
    exit_ = np.where(rng.random(n) < exit_fraction, rng.uniform(0.5, 2.0, n), 0.0)
    exit_[rng.integers(n)] = 1.0
    return S, exit_


def random_subintensity(rng, n, density=0.05, defect=0.0, exit_fraction=0.3):
    """A random sparse sub-intensity matrix with cycles (:func:`cycle_with_exits`), and ``alpha``."""
    S, exit_ = cycle_with_exits(rng, n, density, exit_fraction)
    np.fill_diagonal(S, -(S.sum(axis=1) + exit_))
    alpha = np.zeros(n)
    support = rng.choice(n, size=max(1, n // 10), replace=False)
    alpha[support] = rng.random(support.size)
    alpha *= (1.0 - defect) / alpha.sum()
    return alpha, S


def random_subtransition(rng, n, density=0.05, defect=0.0, stay=0.3):
    """A random sparse cyclic sub-transition matrix (row sums < 1 somewhere) and ``alpha``."""
    alpha, S = random_subintensity(rng, n, density, defect)
    off = S - np.diag(np.diag(S))
    total = -np.diag(S)  # out-rate incl. exit
    scale = (1.0 - stay) / total
    T = off * scale[:, None] + stay * np.eye(n)
    return alpha, T


# -- bundles: every quantity at once (one jit compilation per model) -------------------
def reachable_states(alpha, matrix):
    """Boolean mask of transient states reachable from the support of ``alpha``."""
    n = len(alpha)
    adj = (np.asarray(matrix) != 0) & ~np.eye(n, dtype=bool)
    seen = np.asarray(alpha) > 0
    frontier = seen.copy()
    while frontier.any():
        nxt = adj[frontier].any(axis=0) & ~seen
        seen |= nxt
        frontier = nxt
    return seen


def oracle_bundle(graph, theta, R, k=3):
    """Dense reference values of every quantity, keyed like :func:`library_bundle`.

    ``R``: per-vertex rewards (m >= 2, V); moments use ``R[0]``, var ``R[1]``.
    """
    alpha, M, vs = graph_matrices(graph, theta)
    return oracle_bundle_from(alpha, M, vs, graph.vertices_length(), graph.discrete, R, k)


def oracle_bundle_from(alpha, M, vs, V, discrete, R, k=3):
    """:func:`oracle_bundle` from explicit matrices over transient states ``vs``."""
    U = green(M, discrete)
    reach = reachable_states(alpha, M)
    Rt = restrict(R, vs)
    ones = np.ones(len(alpha))
    out = {"defect": 1.0 - alpha.sum()}
    if discrete:
        mom = lambda r, j: dph_reward_moments(alpha, M, r, j)
        out["cov"] = dph_cov_matrix(alpha, M, Rt)
        out["factorial"] = dph_factorial_moments(alpha, M, k)
        out["sojourn"] = scatter(dph_visits(alpha, M), vs, V)
    else:
        mom = lambda r, j: ph_moments(alpha, M, r, j)
        out["cov"] = ph_cov_matrix(alpha, M, Rt)
        out["sojourn"] = scatter(alpha @ U, vs, V)
    out["moments_r"] = mom(Rt[0], k)
    out["moments_1"] = mom(ones, k)
    out["mean"] = out["moments_1"][0]
    out["mean_r"] = out["moments_r"][0]
    m1, m2 = mom(Rt[1], 2)
    out["var_r"] = m2 - m1**2
    out["cov01"] = out["cov"][0, 1]
    x = np.where(reach, U @ Rt[0], 0.0)
    out["wait_r"] = scatter(x, vs, V, start=alpha @ x)
    x1 = np.where(reach, U @ ones, 0.0)
    out["wait_1"] = scatter(x1, vs, V, start=alpha @ x1)
    return out


def random_rewards(n_vertices, seed, m=3, zero_fraction=0.3):
    """(m, V) non-negative rewards with some exact zeros."""
    rng = np.random.default_rng(seed)
    R = rng.uniform(0.0, 2.0, (m, n_vertices))
    R[rng.random(R.shape) < zero_fraction] = 0.0
    return R


def library_quantities(model, theta, R, k=3, lite=False, keys=None):
    """Every quantity of ``model(theta)`` as a dict (not jitted; see :func:`library_bundle`).

    ``lite``: only the quantities that exercise distinct solves (each GMRES solve is a
    separate compiled loop; the thin wrappers are covered by the other solvers).
    ``keys``: only these quantities.
    """
    if lite:
        keys = ["defect", "moments_r", "cov", "sojourn"] + (["factorial"] if model.discrete else [])
    d = model(theta)
    if keys is not None:
        every = {
            "defect": d.defect,
            "mean": d.mean,
            "mean_r": lambda: d.mean(R[0]),
            "moments_r": lambda: d.moments(k, R[0]),
            "moments_1": lambda: d.moments(k),
            "var_r": lambda: d.var(R[1]),
            "cov": lambda: d.covariance_matrix(R),
            "cov01": lambda: d.cov(R[0], R[1]),
            "wait_r": lambda: d.expected_waiting_time(R[0]),
            "wait_1": d.expected_waiting_time,
            "sojourn": d.expected_sojourn,
            "factorial": lambda: d.factorial_moments(k),
            "visits": lambda: d.expected_sojourn(),
        }
        return {key: every[key]() for key in keys}
    out = {
        "defect": d.defect(),
        "mean": d.mean(),
        "mean_r": d.mean(R[0]),
        "moments_r": d.moments(k, R[0]),
        "moments_1": d.moments(k),
        "var_r": d.var(R[1]),
        "cov": d.covariance_matrix(R),
        "cov01": d.cov(R[0], R[1]),
        "wait_r": d.expected_waiting_time(R[0]),
        "wait_1": d.expected_waiting_time(),
        "sojourn": d.expected_sojourn(),
    }
    if model.discrete:
        out["factorial"] = d.factorial_moments(k)
        out["visits"] = d.expected_sojourn()
    return out


def library_bundle(model, k=3, lite=False):
    """A jitted ``f(theta, R) -> dict`` of :func:`library_quantities`."""
    import jax

    return jax.jit(lambda theta, R: library_quantities(model, theta, R, k, lite))


def assert_bundle_close(got, ref, rtol):
    """Compare every key of ``ref`` (relative error ``rtol`` against the entry scale)."""
    got = {key: np.asarray(val) for key, val in got.items()}
    if "visits" in got:
        np.testing.assert_allclose(got["visits"], got["sojourn"], rtol=1e-14, atol=0)
    for key, want in ref.items():
        if key not in got:  # a lite bundle
            continue
        want = np.asarray(want, dtype=np.float64)
        if key == "cov":
            scale = np.sqrt(np.outer(np.diag(want), np.diag(want))).max()
        elif key == "cov01":
            scale = np.sqrt(abs(ref["cov"][0, 0] * ref["cov"][1, 1]))
        elif key == "defect":
            scale = 1.0
        else:
            scale = np.abs(want).max()
        assert got[key].shape == want.shape, (key, got[key].shape, want.shape)
        np.testing.assert_allclose(got[key], want, rtol=rtol, atol=rtol * scale, err_msg=key)


# -- rewards ---------------------------------------------------------------------------
def dense_reward_transform(alpha, s, r):
    """Independent dense fold of zero-reward states: (alpha', S') over positive states."""
    pos, zer = r > 0, r == 0
    spp, spz, szp, szz = (
        s[np.ix_(pos, pos)],
        s[np.ix_(pos, zer)],
        s[np.ix_(zer, pos)],
        s[np.ix_(zer, zer)],
    )
    fold = np.linalg.solve(-szz, szp) if zer.any() else np.zeros((0, pos.sum()))
    s_new = np.diag(1 / r[pos]) @ (spp + spz @ fold)
    a_new = alpha[pos] + alpha[zer] @ fold
    return a_new, s_new


def reward_moments(alpha, s, r, k):
    u = np.linalg.inv(-s)
    out, v = [], np.ones(len(alpha))
    fact = 1
    for j in range(1, k + 1):
        v = u @ (r * v)
        fact *= j
        out.append(fact * alpha @ v)
    return np.array(out)


# -- distribution functions (dense matrix exponential / matrix powers) ----------------------------
def ph_pdf_cdf_sf(alpha, S, t):
    """``(pdf, cdf, sf)`` at times ``t``: ``alpha e^{St} s``, ``1 - alpha e^{St} 1``,
    ``alpha e^{St} 1`` (``scipy.linalg.expm``; the defect is an atom at 0)."""
    from scipy.linalg import expm

    alpha, S = np.asarray(alpha, dtype=np.float64), np.asarray(S, dtype=np.float64)
    exit_ = -S.sum(axis=1)
    states = np.array([alpha @ expm(S * ti) for ti in np.ravel(t)]).reshape(len(np.ravel(t)), -1)
    sf = states.sum(axis=1)
    return states @ exit_, 1.0 - sf, sf


def hypoexponential_log_pdf(rates, t):
    """``log f(t)`` and ``d/dt log f(t)`` of a sum of exponentials with distinct ``rates``
    (``f(t) = sum_i c_i l_i e^{-l_i t}``, ``c_i = prod_{j != i} l_j / (l_j - l_i)``),
    factored by the slowest rate: exact in log space at any ``t``."""
    rates, t = np.asarray(rates, dtype=np.float64), np.asarray(t, dtype=np.float64)
    slow = rates.min()
    coef = np.array([np.prod([lj / (lj - li) for lj in rates if lj != li]) for li in rates])
    decay = np.exp(-np.multiply.outer(t, rates - slow))
    terms = decay @ (coef * rates)
    return -slow * t + np.log(terms), -(decay @ (coef * rates**2)) / terms


def ph_laplace(alpha, S, r, s):
    """``E[exp(-s Y)] = defect + alpha (s R - S)^{-1} exit`` for each ``s >= 0``."""
    alpha, S = np.asarray(alpha, dtype=np.float64), np.asarray(S, dtype=np.float64)
    exit_ = -S.sum(axis=1)
    defect = 1.0 - alpha.sum()
    return np.array(
        [defect + alpha @ np.linalg.solve(si * np.diag(r) - S, exit_) for si in np.ravel(s)]
    )


def dph_pmf_cdf_sf(alpha, T, k):
    """``(pmf, cdf, sf)`` at step counts ``k``: ``alpha T^{k-1} t`` (``P(tau = 0)`` is the
    defect), the cumulative sum of the pmf and ``alpha T^k 1``, by matrix powers."""
    alpha, T = np.asarray(alpha, dtype=np.float64), np.asarray(T, dtype=np.float64)
    exit_ = 1.0 - T.sum(axis=1)
    defect = 1.0 - alpha.sum()
    pmf_at = lambda j: defect if j == 0 else alpha @ np.linalg.matrix_power(T, j - 1) @ exit_
    k = [int(j) for j in np.ravel(k)]
    pmf = np.array([pmf_at(j) for j in k])
    cdf = np.array([sum(pmf_at(i) for i in range(j + 1)) for j in k])
    sf = np.array([alpha @ np.linalg.matrix_power(T, j).sum(axis=1) for j in k])
    return pmf, cdf, sf
