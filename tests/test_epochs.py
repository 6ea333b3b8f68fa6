"""Epoch (piecewise-constant) models against piecewise matrix exponentials and closed forms."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.integrate as si
import scipy.linalg as sl

import phasejax as pj


def piecewise_state_oracle(graph, thetas, breaks):
    """``t -> (alpha e^{S_1 (t_1 - t_0)} ... e^{S_j (t - t_{j-1})}, S_j)``: the state
    distribution at ``t`` by piecewise ``scipy`` ``expm`` (matrices built once: quadrature
    calls it hundreds of times)."""
    mats = [graph.as_matrices(np.asarray(th))[1] for th in thetas]
    alpha = graph.as_matrices(np.asarray(thetas[0]))[0]
    edges = [0.0, *breaks, np.inf]

    def at(t):
        v = alpha
        for j, s in enumerate(mats):
            if t < edges[j + 1]:
                return v @ sl.expm(s * (t - edges[j])), s
            v = v @ sl.expm(s * (edges[j + 1] - edges[j]))

    return at


def test_two_epoch_kingman_closed_form():
    lam1, lam2, tau = 1.0, 0.3, 0.8
    pk = pj.models.PiecewiseKingman(2)
    e = pk(jnp.array([lam1, lam2]), jnp.array([tau]))
    exact = (1 - np.exp(-lam1 * tau)) / lam1 + np.exp(-lam1 * tau) / lam2
    np.testing.assert_allclose(e.mean(), exact, rtol=1e-12)
    # d/dtau of the closed form
    g = jax.grad(lambda b: pk(jnp.array([lam1, lam2]), b).mean())(jnp.array([tau]))
    np.testing.assert_allclose(g[0], np.exp(-lam1 * tau) * (1 - lam1 / lam2), rtol=1e-8)


def test_epochs_against_piecewise_expm():
    graph = pj.models.kingman(5)
    thetas = [[1.0], [0.2], [2.0]]
    breaks = [0.3, 1.1]
    e = pj.epochs(graph.compile(), jnp.asarray(thetas), jnp.asarray(breaks))
    ts = np.array([0.1, 0.5, 1.5, 3.0])
    state_at = piecewise_state_oracle(graph, thetas, breaks)
    sf, pdf, probs = [], [], []
    for t in ts:
        v, s = state_at(t)
        sf.append(v.sum())
        pdf.append(v @ (-s.sum(1)))
        probs.append(v)
    np.testing.assert_allclose(e.sf(ts), sf, rtol=1e-10)
    np.testing.assert_allclose(e.cdf(ts), 1 - np.array(sf), rtol=1e-10)
    np.testing.assert_allclose(e.pdf(ts), pdf, rtol=1e-10)
    transient = np.asarray(graph.compile().transient_vertices)
    np.testing.assert_allclose(e.state_probability(ts)[:, transient], np.array(probs), atol=1e-12)
    oracle_sf = lambda t: state_at(t)[0].sum()
    moments = [
        si.quad(lambda t: k * t ** (k - 1) * oracle_sf(t), 0, 200, limit=200, points=breaks)[0]
        for k in (1, 2, 3)
    ]
    np.testing.assert_allclose(e.moments(3), moments, rtol=1e-8)
    # mean with rewards (singletons): sum of occupancies, against numerical integration
    reward = pj.models.sfs_rewards(graph)[0]
    r = reward[transient]
    oracle = si.quad(
        lambda t: state_at(t)[0] @ r,
        0,
        200,
        limit=200,
        points=breaks,
    )[0]
    np.testing.assert_allclose(e.mean(reward), oracle, rtol=1e-8)


def test_epoch_gradients_against_finite_differences():
    model = pj.models.kingman(4).compile()

    def f(rates, breaks):
        e = pj.epochs(model, rates[:, None], breaks)
        return e.moments(2)[1] + e.logpdf(jnp.array([0.2, 0.9, 2.0])).sum()

    # one program for the gradient and the differences' values (eagerly: compiled op by op)
    value_and_grad = jax.jit(jax.value_and_grad(f, argnums=(0, 1)))
    f = lambda rates, breaks: value_and_grad(rates, breaks)[0]
    rates, breaks = jnp.array([1.0, 0.4, 1.5]), jnp.array([0.5, 1.2])
    g_rates, g_breaks = value_and_grad(rates, breaks)[1]
    eps = 1e-6
    for i in range(3):
        fd = (f(rates.at[i].add(eps), breaks) - f(rates.at[i].add(-eps), breaks)) / (2 * eps)
        np.testing.assert_allclose(g_rates[i], fd, rtol=1e-6)
    for i in range(2):
        fd = (f(rates, breaks.at[i].add(eps)) - f(rates, breaks.at[i].add(-eps))) / (2 * eps)
        np.testing.assert_allclose(g_breaks[i], fd, rtol=1e-6)


def test_epoch_errors():
    model = pj.models.kingman(3).compile()
    with pytest.raises(ValueError, match="thetas must have shape"):
        pj.epochs(model, jnp.ones((3, 1)), jnp.array([1.0]))
    with pytest.raises(Exception, match="increasing"):
        pj.epochs(model, jnp.ones((3, 1)), jnp.array([1.0, 0.5])).mean()


def test_isolation_with_migration():
    im = pj.models.IsolationWithMigration(pj.models.two_island(1, 1))
    # no migration: the two lineages can only meet after the split, then at rate 2
    for split in (0.3, 2.0):
        np.testing.assert_allclose(
            im(1.0, 1.0, 0.0, 0.0, 2.0, split).mean(), split + 0.5, rtol=1e-10
        )
    # with migration: against piecewise expm with the merge at the split
    graph = pj.models.two_island(2, 1)
    im = pj.models.IsolationWithMigration(graph)
    e = im(1.0, 0.5, 0.3, 0.6, 2.0, 0.7)
    first = graph.as_matrices(np.array([1.0, 0.5, 0.3, 0.6]))
    second = graph.as_matrices(np.array([2.0, 2.0, 0.0, 1.0]))
    merge = np.zeros((len(first.alpha), len(first.alpha)))
    merge[np.arange(len(im.merge)), im.merge] = 1.0
    t = 1.5
    v = first.alpha @ sl.expm(first.matrix * 0.7) @ merge @ sl.expm(second.matrix * (t - 0.7))
    np.testing.assert_allclose(e.sf(np.array([t]))[0], v.sum(), rtol=1e-10)
    g = jax.grad(lambda s: im(1.0, 0.5, 0.3, 0.6, 2.0, s).mean())(0.7)
    fd = (
        im(1.0, 0.5, 0.3, 0.6, 2.0, 0.7 + 1e-6).mean()
        - im(1.0, 0.5, 0.3, 0.6, 2.0, 0.7 - 1e-6).mean()
    ) / 2e-6
    np.testing.assert_allclose(g, fd, rtol=1e-6)


# --- the dense engine: rewards, Laplace, quantiles, reward distributions, Hessians ---


def ode_oracle(graph, thetas, breaks, rewards, k=2, s=None, maps=(), tail=400.0):
    """``E[Y], ..., E[Y^k]`` (or, given ``s``, ``E[exp(-s Y)]``) by integrating the forward
    equations ``m_c' = m_c Q + c m_{c-1} R`` (resp. ``w' = w (Q - s R)``) with DOP853:
    independent of matrix exponentials."""
    from scipy.integrate import solve_ivp

    transient = np.asarray(graph.compile().transient_vertices)
    alpha = graph.as_matrices(np.asarray(thetas[0], float)).alpha
    n = alpha.size
    r = np.append(np.asarray(rewards, float)[transient], 0.0)
    gens = []
    for th in thetas:
        sub = graph.as_matrices(np.asarray(th, float)).matrix
        q = np.zeros((n + 1, n + 1))
        q[:n, :n], q[:n, n] = sub, -sub.sum(1)
        gens.append(q)
    order = 0 if s is not None else k
    y = np.zeros((order + 1, n + 1))
    y[0, :n], y[0, n] = alpha, 1 - alpha.sum()
    edges = [0.0, *breaks, breaks[-1] + tail if len(breaks) else tail]
    for j, q in enumerate(gens):

        def rhs(_, flat, q=q):
            m = flat.reshape(order + 1, n + 1)
            if s is not None:
                return (m @ (q - s * np.diag(r))).ravel()
            out = m @ q
            out[1:] += np.arange(1, order + 1)[:, None] * (m[:-1] * r)
            return out.ravel()

        sol = solve_ivp(rhs, (edges[j], edges[j + 1]), y.ravel(), "DOP853", rtol=1e-13, atol=1e-15)
        y = sol.y[:, -1].reshape(order + 1, n + 1)
        if j < len(maps) and maps[j] is not None:
            merge = np.zeros((n + 1, n + 1))
            merge[np.arange(n), maps[j]], merge[n, n] = 1.0, 1.0
            y = y @ merge
    return y[0, n] if s is not None else y[1:].sum(1)


def test_epoch_rewards_against_ode_oracle():
    graph = pj.models.kingman(5)
    thetas, breaks = [[1.0], [0.2], [2.0]], [0.3, 1.1]
    e = pj.epochs(graph.compile(), jnp.asarray(thetas), jnp.asarray(breaks))
    assert e.is_dense
    sfs = np.asarray(pj.models.sfs_rewards(graph))
    moments = ode_oracle(graph, thetas, breaks, sfs[1], k=3)
    np.testing.assert_allclose(e.moments(3, sfs[1]), moments, rtol=1e-9)
    np.testing.assert_allclose(e.var(sfs[1]), moments[1] - moments[0] ** 2, rtol=1e-9)
    # covariances by polarisation of the oracle's second moments
    second = np.array([[ode_oracle(graph, thetas, breaks, a + b)[1] for b in sfs] for a in sfs])
    diag = np.diag(second) / 4
    means = np.array([ode_oracle(graph, thetas, breaks, a, k=1)[0] for a in sfs])
    cov = (second - diag[:, None] - diag[None, :]) / 2 - np.outer(means, means)
    np.testing.assert_allclose(e.covariance_matrix(sfs), cov, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(e.cov(sfs[0], sfs[2]), cov[0, 2], rtol=1e-9)
    s = np.array([0.0, 0.4, 3.0])
    laplace = [ode_oracle(graph, thetas, breaks, sfs[0], s=si) for si in s]
    np.testing.assert_allclose(e.laplace(s, sfs[0]), laplace, rtol=1e-10)
    with pytest.raises(Exception, match="s >= 0"):
        e.laplace(-1.0)


def test_epoch_maps_against_ode_oracle():
    graph = pj.models.two_island(2, 1)
    im = pj.models.IsolationWithMigration(graph)
    e = im(1.0, 0.5, 0.3, 0.6, 2.0, 0.7)
    thetas = [[1.0, 0.5, 0.3, 0.6], [2.0, 2.0, 0.0, 1.0]]
    r = np.asarray(pj.models.sfs_rewards(graph))[0]
    moments = ode_oracle(graph, thetas, [0.7], r, k=2, maps=(np.asarray(im.merge),))
    np.testing.assert_allclose(e.moments(2, r), moments, rtol=1e-9)
    np.testing.assert_allclose(e.var(r), moments[1] - moments[0] ** 2, rtol=1e-9)


def test_one_epoch_equals_phase_type():
    graph = pj.models.kingman(4)
    model = graph.compile()
    sfs = pj.models.sfs_rewards(graph)
    length = np.asarray(sfs).sum(0)  # total branch length
    t = jnp.array([0.0, 0.3, 1.0, 4.0, jnp.inf])
    s = jnp.array([0.0, 0.5, 7.0])
    q = jnp.array([0.0, 0.05, 0.5, 0.99, 1.0])
    ys = jnp.array([0.0, 0.2, 1.0, 3.0, 8.0])

    @jax.jit  # one program for every quantity of both (one compilation, not one per call)
    def quantities(theta):
        d = model(theta)
        e = pj.epochs(model, theta[None], jnp.zeros(0))
        out = {}
        for tag, dist in (("e", e), ("d", d)):
            out[tag] = {name: getattr(dist, name)(t) for name in ("pdf", "cdf", "sf")}
            out[tag]["state_probability"] = dist.state_probability(t)
            out[tag]["moments"] = dist.moments(3, sfs[0])
            out[tag]["var"] = dist.var(sfs[1])
            out[tag]["covariance_matrix"] = dist.covariance_matrix(sfs)
            out[tag]["cov"] = dist.cov(sfs[0], sfs[1])
            out[tag]["laplace"] = dist.laplace(s, sfs[0])
            # the distribution of Y against the one-epoch reward transform
            y = dist.reward_transform(length)
            out[tag]["y_moments"] = y.moments(3)
            out[tag]["y_cdf"] = y.cdf(ys)
            out[tag]["y_pdf"] = y.pdf(ys[1:])
        x = e.quantile(q)
        out["x"], out["cdf_at_x"] = x, d.cdf(x[1:-1])
        y_quantile = e.reward_transform(length).quantile(jnp.array([0.3, 0.8]))
        out["y_cdf_at_quantile"] = d.reward_transform(length).cdf(y_quantile)
        return out

    out = quantities(jnp.array([1.3]))
    e, d = out["e"], out["d"]
    for name in ("pdf", "cdf", "sf", "state_probability"):
        np.testing.assert_allclose(e[name], d[name], rtol=1e-10, atol=1e-14, err_msg=name)
    for name in ("moments", "var", "covariance_matrix", "cov", "laplace", "y_moments"):
        np.testing.assert_allclose(e[name], d[name], rtol=1e-10, err_msg=name)
    np.testing.assert_allclose(out["cdf_at_x"], q[1:-1], rtol=1e-12)
    assert out["x"][0] == 0 and np.isinf(out["x"][-1])
    np.testing.assert_allclose(e["y_cdf"], d["y_cdf"], atol=1e-10)
    np.testing.assert_allclose(e["y_pdf"], d["y_pdf"], atol=1e-10)
    np.testing.assert_allclose(out["y_cdf_at_quantile"], [0.3, 0.8], atol=1e-10)


def test_two_epoch_total_length_distribution():
    """Kingman n = 3, coalescence rate lam1 before tau and lam2 after: L = 3 T3 + 2 T2, with
    the cdf and pdf of L as one-dimensional integrals over T3 (closed-form hazards)."""
    lam1, lam2, tau = 1.0, 0.25, 0.4
    graph = pj.models.kingman(3)
    e = pj.epochs(graph.compile(), jnp.array([[lam1], [lam2]]), jnp.array([tau]))
    length = e.reward_transform(np.asarray(pj.models.sfs_rewards(graph)).sum(0))

    def hazard(a, b):  # int_a^b lambda(u) du
        return lam1 * (min(b, tau) - min(a, tau)) + lam2 * (max(b, tau) - max(a, tau))

    def rate(u):
        return lam1 if u < tau else lam2

    def f3(t):
        return 3 * rate(t) * np.exp(-3 * hazard(0, t))

    def cdf(y):
        inner = lambda t: f3(t) * (1 - np.exp(-hazard(t, t + (y - 3 * t) / 2)))
        return si.quad(inner, 0, y / 3, points=[tau], epsabs=1e-14, epsrel=1e-13, limit=200)[0]

    def pdf(y):
        inner = lambda t: (
            f3(t) * rate(t + (y - 3 * t) / 2) * np.exp(-hazard(t, t + (y - 3 * t) / 2)) / 2
        )
        kink = y - 2 * tau  # where t + (y - 3 t) / 2 = tau
        pts = [p for p in (tau, kink) if 0 < p < y / 3]
        return si.quad(inner, 0, y / 3, points=pts or None, epsabs=1e-14, epsrel=1e-13, limit=200)[
            0
        ]

    ys = np.array([0.3, 1.0, 2.5, 6.0, 15.0])
    np.testing.assert_allclose(length.cdf(ys), [cdf(y) for y in ys], atol=1e-9)
    # the density converges more slowly near its kinks (y = 2 tau, 3 tau): 2e-7 at y = 1
    np.testing.assert_allclose(length.pdf(ys), [pdf(y) for y in ys], atol=5e-7)
    mean = si.quad(lambda y: 1 - cdf(y), 0, 400, limit=400, epsabs=1e-12)[0]
    np.testing.assert_allclose(length.mean(), mean, rtol=1e-8)


def test_two_epoch_kingman_quantile_closed_form():
    lam1, lam2, tau = 1.0, 0.3, 0.8
    pk = pj.models.PiecewiseKingman(2)
    q = jnp.array([0.1, 0.5, 0.9])

    def exact(q, lam1, lam2, tau):
        h = -np.log1p(-np.asarray(q))
        return np.where(h <= lam1 * tau, h / lam1, tau + (h - lam1 * tau) / lam2)

    quantile = lambda x, q: pk(x[:2], x[2:]).quantile(q)
    # derivatives of the quantile (implicit, through the Newton steps) in the rates and
    # the break, against the closed form's: q = 0.9 lies in the second epoch (one program)
    values, g = jax.jit(lambda x: (quantile(x, q), jax.grad(lambda x: quantile(x, q[2]))(x)))(
        jnp.array([lam1, lam2, tau])
    )
    np.testing.assert_allclose(values, exact(q, lam1, lam2, tau), rtol=1e-12)
    h = -np.log1p(-0.9)
    np.testing.assert_allclose(g, [-tau / lam2, -(h - lam1 * tau) / lam2**2, 1 - lam1 / lam2])


def test_sparse_engine_limits():
    model = pj.models.kingman(4).compile()
    e = pj.epochs(model, jnp.array([[1.0], [0.5]]), jnp.array([0.7]), dense=False)
    assert not e.is_dense
    with pytest.raises(NotImplementedError, match="dense engine"):
        e.var()

    def sparse_mean(x):
        return pj.epochs(model, x[:2, None], x[2:], dense=False).mean()

    with pytest.raises(NotImplementedError, match="second derivatives"):
        jax.hessian(sparse_mean)(jnp.array([1.0, 0.5, 0.7]))
    dense = pj.epochs(model, jnp.array([[1.0], [0.5]]), jnp.array([0.7]))
    with pytest.raises(Exception, match=r"q in \[0, 1\]"):
        dense.quantile(1.5)


@pytest.mark.slow
def test_epoch_hessians_against_finite_differences():
    """Second derivatives of the epoch quantities in (rate 1, rate 2, break), one per
    engine piece (occupancy, Phi, Van Loan moments, Laplace, state distribution at t,
    quantile, inverted reward cdf): jax.hessian against central differences of
    jax.jacrev, at two points; jacfwd(grad) and grad(grad) of the mean agree with it."""
    graph = pj.models.kingman(4)
    model = graph.compile()
    sfs = jnp.asarray(pj.models.sfs_rewards(graph))
    length = sfs.sum(0)

    pieces = (
        lambda e: e.mean(sfs[1]),
        lambda e: e.cov(sfs[0], sfs[1]),
        lambda e: e.moments(3, sfs[1])[2],
        lambda e: e.laplace(0.7, sfs[0]),
        lambda e: e.cdf(1.3),
        lambda e: e.quantile(0.6),
        lambda e: e.reward_transform(length).cdf(2.0),
    )
    eps = 1e-5
    for piece in pieces:  # a program each: one for all seven compiles twice as long

        def jacrev_twice(x, piece=piece):
            jac = jax.jacrev(lambda x: piece(pj.epochs(model, x[:2, None], x[2:])))(x)
            return jac, jac

        # jax.hessian is jacfwd(jacrev): with the jacobian as jacfwd's aux output, one
        # program gives both the hessian and the jacobian the differences are taken of
        hessian_and_jacobian = jax.jit(jax.jacfwd(jacrev_twice, has_aux=True))
        for x in (jnp.array([1.0, 0.3, 0.8]), jnp.array([0.5, 2.0, 0.3])):
            h, _ = hessian_and_jacobian(x)
            np.testing.assert_allclose(h, h.T, rtol=1e-9, atol=1e-12)
            fd = jnp.stack(
                [
                    (
                        hessian_and_jacobian(x.at[i].add(eps))[1]
                        - hessian_and_jacobian(x.at[i].add(-eps))[1]
                    )
                    / (2 * eps)
                    for i in range(3)
                ],
                axis=-1,
            )
            np.testing.assert_allclose(h, fd, rtol=1e-6, atol=1e-8)
    # the forms that failed on the uniformization engine: jacfwd(grad) and grad(grad),
    # against jax.hessian (one program for the three)
    mean = lambda x: pj.epochs(model, x[:2, None], x[2:]).mean()

    @jax.jit
    def second_derivatives(x):
        along_break = jax.grad(jax.grad(lambda b: mean(x.at[2].set(b))))(x[2])
        return jax.hessian(mean)(x), jax.jacfwd(jax.grad(mean))(x), along_break

    reference, fwd_of_grad, along_break = second_derivatives(x)
    np.testing.assert_allclose(fwd_of_grad, reference, rtol=1e-10)
    np.testing.assert_allclose(along_break, reference[2, 2], rtol=1e-10)


def test_dense_expm_accuracy_and_range():
    """The dense engine's exponential against scipy, and a clear error (not NaN) where it
    would need more than its 24 squarings."""
    import equinox as eqx

    from phasejax._piecewise import expm

    rng = np.random.default_rng(3)
    q = rng.uniform(0, 1, (5, 5))
    q -= np.diag(q.sum(1) + 0.5)
    for scale in (0.1, 30.0, 1e4):
        np.testing.assert_allclose(expm(jnp.asarray(q * scale)), sl.expm(q * scale), atol=1e-12)
    with pytest.raises(eqx.EquinoxRuntimeError, match="more than 24 squarings"):
        expm(jnp.asarray(q * 1e9)).block_until_ready()
