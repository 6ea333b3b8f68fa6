"""Dense solves without batched LAPACK calls (`phasejax._linalg`).

jaxlib 0.10's batched CPU LAPACK kernels block XLA's intra-op pool threads while their
pieces wait in the same pool, so a program with independent batched solves can never
complete (5 of 5 fresh processes below, with ``jnp.linalg.solve``). The library's solves
map over a batch one matrix at a time: the values and derivatives are those of
``numpy.linalg.solve``, and no LAPACK call in a compiled program carries a batch axis.
"""

import re
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import phasejax as pj
from phasejax import _linalg


def _matrix(seed: int, n: int = 5) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.normal(size=(n, n)) + n * np.eye(n)


def test_solve_and_inverse_against_numpy_with_derivatives():
    a, b = _matrix(0), np.random.default_rng(1).normal(size=(5, 3))
    np.testing.assert_allclose(_linalg.solve(a, b), np.linalg.solve(a, b), rtol=1e-13)
    np.testing.assert_allclose(_linalg.solve(a, b[:, 0]), np.linalg.solve(a, b[:, 0]), rtol=1e-13)
    np.testing.assert_allclose(_linalg.inv(a), np.linalg.inv(a), rtol=1e-13)
    # complex right-hand side (the Laplace transform at complex s): common dtype
    z = a + 0.3j * np.eye(5)
    np.testing.assert_allclose(_linalg.solve(z, b), np.linalg.solve(z, b), rtol=1e-13)

    def f(scale):
        return jnp.sum(_linalg.solve(a * scale + jnp.diag(jnp.arange(5.0)) * scale**2, b) ** 2)

    def f_numpy(scale):
        return np.sum(np.linalg.solve(a * scale + np.diag(np.arange(5.0)) * scale**2, b) ** 2)

    for s in (0.7, 1.3):
        h = 1e-5
        fd1 = (f_numpy(s + h) - f_numpy(s - h)) / (2 * h)
        fd2 = (f_numpy(s + h) - 2 * f_numpy(s) + f_numpy(s - h)) / h**2
        np.testing.assert_allclose(jax.grad(f)(s), fd1, rtol=1e-8)
        np.testing.assert_allclose(jax.jacfwd(f)(s), fd1, rtol=1e-8)
        np.testing.assert_allclose(jax.hessian(f)(s), fd2, rtol=1e-5)


def test_vmap_maps_one_matrix_at_a_time():
    a = np.stack([_matrix(s) for s in range(4)])
    b = np.random.default_rng(9).normal(size=(4, 5))
    want = np.stack([np.linalg.solve(a[i], b[i]) for i in range(4)])
    np.testing.assert_allclose(jax.vmap(_linalg.solve)(a, b), want, rtol=1e-13)
    # only the matrix batched, or only the right-hand side
    np.testing.assert_allclose(
        jax.vmap(_linalg.solve, (0, None))(a, b[0]),
        np.stack([np.linalg.solve(a[i], b[0]) for i in range(4)]),
        rtol=1e-13,
    )
    np.testing.assert_allclose(
        jax.vmap(_linalg.solve, (None, 0))(a[0], b),
        np.stack([np.linalg.solve(a[0], b[i]) for i in range(4)]),
        rtol=1e-13,
    )
    grads = jax.vmap(jax.grad(lambda m, v: jnp.sum(_linalg.solve(m, v))))(a, b)
    for i in range(4):  # d/dA sum(A^-1 b) = -A^-T 1 (A^-1 b)^T
        x = np.linalg.solve(a[i], b[i])
        np.testing.assert_allclose(
            grads[i], -np.outer(np.linalg.solve(a[i].T, np.ones(5)), x), rtol=1e-12
        )


def test_eigvalsh_and_its_derivatives_against_jnp():
    rng = np.random.default_rng(4)
    h = rng.normal(size=(4, 4))
    hs = np.stack([h + h.T, 2 * (h + h.T) + np.eye(4), h @ h.T])

    def f(eig, m):
        w = eig(m)
        return 2 * w[0] + w[3] ** 2

    for m in hs:
        np.testing.assert_allclose(_linalg.eigvalsh(m), np.linalg.eigvalsh(m), atol=1e-13)
        step = 1e-6 * (h + h.T)
        fd = (f(np.linalg.eigvalsh, m + step) - f(np.linalg.eigvalsh, m - step)) / 2e-6
        grad = jax.grad(lambda x: f(_linalg.eigvalsh, x))(m)
        np.testing.assert_allclose(np.sum(grad * (h + h.T)), fd, rtol=1e-7)
        np.testing.assert_allclose(
            jax.jacfwd(_linalg.eigvalsh)(m), jax.jacfwd(jnp.linalg.eigvalsh)(m), atol=1e-12
        )
    np.testing.assert_allclose(
        jax.vmap(jax.grad(lambda x: f(_linalg.eigvalsh, x)))(hs),
        jax.vmap(jax.grad(lambda x: f(jnp.linalg.eigvalsh, x)))(hs),
        atol=1e-12,
    )


def _lapack_operand_ranks(hlo: str) -> list[int]:
    ranks = []
    for line in hlo.splitlines():
        if "lapack_" in line and "custom_call" in line:
            signature = line.split(":")[-1]
            ranks += [t.count("x") for t in re.findall(r"tensor<([^>]*)>", signature)]
    return ranks


def test_no_batched_lapack_call_in_vmapped_programs():
    """The structure the deadlock needs is absent: under vmap (thetas, tangents, and times
    inside the epoch engine) every LAPACK call gets one matrix (rank 2 operands at most)."""
    epochs = pj.models.PiecewiseKingman(4)
    times = jnp.linspace(0.1, 3.0, 7)

    def epoch_pdf_cdf(rates):
        dist = epochs(rates, jnp.array([0.5]))
        return dist.pdf(times), dist.cdf(times), dist.mean()

    graph = pj.models.two_island(2, 1)
    dense, gmres = graph.compile(solver="dense"), graph.compile(solver="gmres")
    thetas = jnp.array([[1.0, 0.5, 0.3, 0.2], [2.0, 0.1, 1.0, 0.7]])

    def moments(model):
        return lambda theta: (model(theta).mean(), model(theta).var())

    for fn, batch in (
        (jax.vmap(epoch_pdf_cdf), jnp.array([[1.0, 0.2], [0.7, 1.5], [2.0, 0.4]])),
        (jax.vmap(moments(dense)), thetas),
        (jax.vmap(moments(gmres)), thetas),  # lineax's GMRES: QR of its Hessenberg matrix
        (jax.jacfwd(lambda th: gmres(th).mean()), thetas[0]),  # tangents batched
        (jax.vmap(jax.jacfwd(lambda m: _linalg.eigvalsh(m + m.T))), thetas.reshape(2, 2, 2)),
    ):
        ranks = _lapack_operand_ranks(jax.jit(fn).lower(batch).as_text())
        assert ranks and max(ranks) <= 2, ranks


HANG = """
import sys
import jax
jax.config.update("jax_enable_x64", True)
import jax.numpy as jnp
from phasejax import _linalg

solve = _linalg.solve if sys.argv[1] == "library" else jnp.linalg.solve

@jax.jit
def f(a, b):  # six independent batched solves: the thunk executor runs them concurrently
    return [jax.vmap(solve)(a[j], b[j]) for j in range(6)]

k = jax.random.split(jax.random.key(0), 2)
a = jax.random.normal(k[0], (6, 64, 40, 40)) + 5 * jnp.eye(40)
b = jax.random.normal(k[1], (6, 64, 40))
for _ in range(300):
    jax.block_until_ready(f(a, b))
print("done")
"""


def test_independent_batched_solves_complete():
    """The deadlock itself: ``jnp.linalg.solve`` hung this program in 5 of 5 fresh
    processes on the 2-core CI machine (jaxlib 0.10.2); the library's solve completes."""
    out = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(HANG), "library"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0 and "done" in out.stdout, out.stderr[-2000:]


@pytest.mark.parametrize("seed", [0, 1])
def test_dense_lu_solver_matches_numpy(seed):
    """`DenseLU` (cyclic graphs) through `_linalg`: mean and its gradient against the dense
    formula ``alpha M^-1 1`` with numpy."""
    graph = pj.models.two_island(2, 1)
    model = graph.compile(solver="dense")
    theta = np.array([1.0, 0.3 + seed, 0.4, 0.6])

    def dense_mean(th):
        alpha, s, _, _ = graph.as_matrices(th)
        return alpha @ np.linalg.solve(-s, np.ones(s.shape[0]))

    np.testing.assert_allclose(model(jnp.asarray(theta)).mean(), dense_mean(theta), rtol=1e-12)
    grad = jax.grad(lambda th: model(th).mean())(jnp.asarray(theta))
    h = 1e-6
    fd = [(dense_mean(theta + h * e) - dense_mean(theta - h * e)) / (2 * h) for e in np.eye(4)]
    np.testing.assert_allclose(grad, fd, rtol=1e-7)
