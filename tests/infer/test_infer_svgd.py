"""SVGD core: kernel, Stein direction, Gaussian recovery, resume, tracing, sharding."""

import os
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from phasejax import infer
from phasejax.infer._kernels import _kth_smallest, _median_nonnegative

MU = jnp.array([1.0, -2.0])
COV = jnp.array([[1.0, 0.6], [0.6, 2.0]])
PREC = jnp.linalg.inv(COV)


def gaussian_logp(x):
    d = x - MU
    return -0.5 * d @ PREC @ d


def start(n=200, seed=1):
    return jax.random.normal(jax.random.PRNGKey(seed), (n, 2)) * 0.5 + 3.0


class FlippedRBF(infer.RBF):
    """phasic's bug: the repulsive term with the wrong sign (attraction)."""

    def __call__(self, x):
        k, repulsion = super().__call__(x)
        return k, -repulsion


def test_rbf_repulsion_is_gradient_of_kernel_in_first_argument():
    x = jax.random.normal(jax.random.PRNGKey(0), (7, 3))
    h = 0.8
    k, rep = infer.RBF(bandwidth=h)(x)

    def kern(a, b):
        return jnp.exp(-jnp.sum((a - b) ** 2) / h)

    gram = jax.vmap(lambda a: jax.vmap(lambda b: kern(a, b))(x))(x)
    np.testing.assert_allclose(k, gram, rtol=1e-14)
    # rep[i] = sum_j grad_{x_j} k(x_j, x_i)
    grad_first = jax.vmap(
        lambda xi: jnp.sum(jax.vmap(lambda xj: jax.grad(kern)(xj, xi))(x), axis=0)
    )(x)
    np.testing.assert_allclose(rep, grad_first, rtol=1e-12, atol=1e-14)
    # it repels: for two particles, particle 0's term points away from particle 1
    two = jnp.array([[0.0, 0.0], [1.0, 0.0]])
    _, rep2 = infer.RBF(bandwidth=1.0)(two)
    assert rep2[0, 0] < 0 < rep2[1, 0]


def test_stein_direction_formula():
    x = jax.random.normal(jax.random.PRNGKey(2), (5, 2))
    grads = jax.vmap(jax.grad(gaussian_logp))(x)
    kernel = infer.RBF(bandwidth=1.3)
    phi = infer.stein_direction(x, grads, kernel)

    def kern(a, b):
        return jnp.exp(-jnp.sum((a - b) ** 2) / 1.3)

    manual = jnp.stack(
        [
            sum(kern(x[j], x[i]) * grads[j] + jax.grad(kern)(x[j], x[i]) for j in range(5)) / 5
            for i in range(5)
        ]
    )
    np.testing.assert_allclose(phi, manual, rtol=1e-12)


def test_median_without_sort():
    n = 7
    x = jax.random.normal(jax.random.PRNGKey(n), (n, 2))
    sq = jnp.sum((x[:, None] - x[None]) ** 2, -1).ravel()
    ks = jnp.arange(sq.size)
    assert jnp.array_equal(jax.jit(jax.vmap(lambda k: _kth_smallest(sq, k)))(ks), jnp.sort(sq))
    assert _median_nonnegative(sq) == jnp.median(sq)
    assert _median_nonnegative(sq[1:]) == jnp.median(sq[1:])
    h = infer.median_bandwidth(sq.reshape(n, n))
    np.testing.assert_allclose(h, jnp.median(sq) / np.log(n + 1), rtol=1e-15)
    for v in ([0.0, 0.0, 1.0, 1.0, 1.0, 3.0], [0.0, 0.0, 1.0, 3.0], [2.0, 2.0], [5.0]):
        assert _median_nonnegative(jnp.array(v)) == np.median(v)


def _moments(p):
    return p.mean(0), jnp.cov(p.T)


def test_gaussian_target_recovers_mean_and_covariance_and_sign_matters():
    res = infer.svgd(gaussian_logp, start(100), steps=2000)
    mean, cov = _moments(res.particles)
    sd, sd_true = jnp.sqrt(jnp.diag(cov)), jnp.sqrt(jnp.diag(COV))
    np.testing.assert_allclose(mean, MU, atol=0.05)
    np.testing.assert_allclose(sd, sd_true, rtol=0.10)
    corr = cov[0, 1] / (sd[0] * sd[1])
    assert abs(corr - 0.6 / np.sqrt(2.0)) < 0.05
    assert res.history.shape == (200, 100, 2) and res.trace.shape == (2000,)
    assert res.trace[-1] > res.trace[0]
    # the wrong repulsion sign (attraction) collapses the particles: sd far too small
    bad = infer.svgd(gaussian_logp, start(100), steps=2000, kernel=FlippedRBF())
    bad_sd = jnp.sqrt(jnp.diag(jnp.cov(bad.particles.T)))
    assert not np.allclose(bad_sd, sd_true, rtol=0.10)
    assert jnp.all(bad_sd < 0.5 * sd_true)


def test_resume_and_checkpoint_identical(tmp_path):
    opt = optax.adam(3e-2)
    state = infer.svgd_init(gaussian_logp, start(40), optimizer=opt)
    full = infer.svgd_run(state, 500, thin=10)
    part = infer.svgd_run(state, 300, thin=10)
    path = tmp_path / "svgd.eqx"
    infer.save_state(path, part.state)
    template = infer.svgd_init(gaussian_logp, jnp.zeros((40, 2)), optimizer=opt)
    loaded = infer.load_state(path, template)
    assert int(loaded.step) == 300
    rest = infer.svgd_run(loaded, 200, thin=10)
    assert jnp.array_equal(rest.particles, full.particles)
    assert jnp.array_equal(jnp.concatenate([part.history, rest.history]), full.history)
    assert jnp.array_equal(jnp.concatenate([part.trace, rest.trace]), full.trace)
    assert jnp.array_equal(rest.state.opt_state[0].mu, full.state.opt_state[0].mu)


def test_compiles_once_not_per_step():
    count = {"n": 0}

    def logp(x):
        count["n"] += 1  # runs only while tracing
        return gaussian_logp(x)

    state = infer.svgd_init(logp, start(16))
    r1 = infer.svgd_run(state, 100, thin=10)
    first = count["n"]
    assert 1 <= first <= 2
    infer.svgd_run(r1.state, 100, thin=10)  # same shapes: cached program
    assert count["n"] == first
    # any number of steps runs in chunks of one compiled program: no new trace
    infer.svgd_run(r1.state, 1000, thin=10)
    infer.svgd_run(r1.state, 7, thin=3)
    assert count["n"] == first


def test_progress_bar(capsys):
    pytest.importorskip("tqdm")
    infer.svgd(gaussian_logp, start(8), steps=30, chunk=10, progress=True)
    err = capsys.readouterr().err
    assert "svgd" in err and "30/30" in err and "mean_log_density" in err
    infer.svgd(gaussian_logp, start(8), steps=30, chunk=10, progress=False)
    assert capsys.readouterr().err == ""


def test_interrupt_returns_state_so_far_and_resumes_bitwise(monkeypatch, tmp_path):
    """Ctrl-C (KeyboardInterrupt) in the third chunk: the run stops cleanly with the two
    finished chunks (and writes the checkpoint); resuming from the returned state, or from
    the file, finishes bitwise like the uninterrupted run."""
    from phasejax.infer import _svgd

    opt = optax.adam(3e-2)
    state = infer.svgd_init(gaussian_logp, start(20), optimizer=opt)
    full = infer.svgd_run(state, 100, thin=5, chunk=20)
    assert not full.interrupted
    real, calls = _svgd._run_chunk, {"n": 0}

    def interrupted_chunk(*args):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        return real(*args)

    monkeypatch.setattr(_svgd, "_run_chunk", interrupted_chunk)
    path = tmp_path / "ckpt.eqx"
    part = infer.svgd_run(state, 100, thin=5, chunk=20, checkpoint=path)
    monkeypatch.setattr(_svgd, "_run_chunk", real)
    assert part.interrupted and int(part.state.step) == 40
    assert part.trace.shape == (40,) and part.history.shape == (8, 20, 2)
    rest = infer.svgd_run(part.state, 60, thin=5, chunk=20)
    assert jnp.array_equal(rest.particles, full.particles)
    assert jnp.array_equal(jnp.concatenate([part.trace, rest.trace]), full.trace)
    assert jnp.array_equal(jnp.concatenate([part.history, rest.history]), full.history)
    loaded = infer.load_state(path, state)
    assert int(loaded.step) == 40
    again = infer.svgd_run(loaded, 60, thin=5, chunk=20)
    assert jnp.array_equal(again.particles, full.particles)


def test_checkpoint_every_n_steps(tmp_path):
    """The file holds the state at the last multiple of ``checkpoint_every`` reached (chunks
    are cut there), and resuming from it matches the uninterrupted run bitwise."""
    opt = optax.adam(3e-2)
    state = infer.svgd_init(gaussian_logp, start(20), optimizer=opt)
    full = infer.svgd_run(state, 90, thin=None, chunk=32)
    path = tmp_path / "ckpt.eqx"
    seen = []
    real_save = infer._svgd.save_state

    def spy(p, s):
        seen.append(int(s.step))
        real_save(p, s)

    infer._svgd.save_state = spy
    try:
        infer.svgd_run(state, 90, thin=None, chunk=32, checkpoint=path, checkpoint_every=25)
    finally:
        infer._svgd.save_state = real_save
    assert seen == [25, 50, 75, 90]
    resumed = infer.svgd_run(infer.load_state(path, state), 0)
    assert jnp.array_equal(resumed.particles, full.particles)
    with pytest.raises(ValueError, match="needs checkpoint"):
        infer.svgd_run(state, 5, checkpoint_every=2)


def test_nonfinite_log_density_raises_naming_the_particle():
    def logp(x):  # -inf left of x0 = 0: particles that start there have no density
        return jnp.where(x[0] > 0, gaussian_logp(x), -jnp.inf)

    x0 = start(6).at[4, 0].set(-1.0)
    with pytest.raises(ValueError, match="not finite at step 0: particle 4 has log density -inf"):
        infer.svgd(logp, x0, steps=10)


def test_step_and_key_are_passed():
    def logp(x, step, key):
        # annealed target; the key only perturbs nothing (checks it arrives as a key)
        noise = 0.0 * jax.random.normal(key)
        beta = jnp.minimum(1.0, (step + 1) / 50.0)
        return beta * gaussian_logp(x) + noise

    res = infer.svgd(
        logp,
        start(50),
        steps=400,
        optimizer=optax.adam(5e-2),
        pass_step=True,
        key=jax.random.PRNGKey(3),
        thin=None,
    )
    assert res.history.shape == (0, 50, 2)
    assert int(res.state.step) == 400
    np.testing.assert_allclose(res.particles.mean(0), MU, atol=0.15)


def test_bad_particles_shape():
    with pytest.raises(ValueError, match="n_particles, dim"):
        infer.svgd(gaussian_logp, jnp.zeros(5), steps=1)


def test_map_estimate_plain_function():
    res = infer.map_estimate(gaussian_logp, jnp.zeros(2), steps=500)
    np.testing.assert_allclose(res.params, MU, atol=1e-4)
    np.testing.assert_allclose(res.log_density, 0.0, atol=1e-8)
    lb = infer.map_estimate(gaussian_logp, jnp.zeros(2), steps=20, optimizer=optax.lbfgs())
    np.testing.assert_allclose(lb.params, MU, atol=1e-8)


MULTI = textwrap.dedent(
    """
    import jax, jax.numpy as jnp, numpy as np
    jax.config.update("jax_enable_x64", True)
    assert jax.device_count() == 4, jax.devices()
    import phasejax as pj
    from phasejax import infer

    MU = jnp.array([1.0, -2.0])
    def logp(x):
        return -0.5 * jnp.sum((x - MU) ** 2 / jnp.array([1.0, 2.0]))
    x0 = jax.random.normal(jax.random.PRNGKey(1), (16, 2)) + 3.0
    sharded = infer.svgd(logp, x0, steps=200)
    single = infer.svgd(logp, x0, steps=200, shard=False)
    assert len(sharded.particles.sharding.device_set) == 4, sharded.particles.sharding
    assert len(single.particles.sharding.device_set) == 1
    np.testing.assert_allclose(sharded.particles, single.particles, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(sharded.trace, single.trace, rtol=1e-12)
    assert len(sharded.state.opt_state[0].mu.sharding.device_set) == 4

    model = pj.models.erlang(1).compile()
    data = model(jnp.array([2.0])).sample(jax.random.PRNGKey(0), (20,))
    lik = infer.Likelihood(model)
    target = infer.Posterior(lik, data, prior=infer.Gamma(2.0, 1.0))
    a = infer.fit_svgd(target, n_particles=8, steps=30)
    b = infer.fit_svgd(target, shard=False, n_particles=8, steps=30)
    assert len(a.unconstrained.sharding.device_set) == 4
    np.testing.assert_allclose(a.particles, b.particles, rtol=1e-12)
    np.save(OUT, np.asarray(single.particles))
    print("OK")
    """
)


def test_sharded_over_four_devices_equals_single_device(tmp_path):
    out = tmp_path / "single.npy"
    # four host devices, on top of the suite's compiler settings (conftest.py)
    flags = os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=4"
    env = dict(os.environ, XLA_FLAGS=flags.strip(), JAX_PLATFORMS="cpu")
    proc = subprocess.run(
        [sys.executable, "-c", f"OUT = {str(out)!r}\n" + MULTI],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert "OK" in proc.stdout
    # and the same as this (single-device) process computes
    x0 = jax.random.normal(jax.random.PRNGKey(1), (16, 2)) + 3.0
    here = infer.svgd(
        lambda x: -0.5 * jnp.sum((x - MU) ** 2 / jnp.array([1.0, 2.0])), x0, steps=200
    )
    np.testing.assert_allclose(np.load(out), here.particles, rtol=1e-12, atol=1e-12)
