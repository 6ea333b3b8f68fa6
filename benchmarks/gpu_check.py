"""GPU correctness and timing check (run on a machine with a GPU; prints a markdown table).

PYTHONPATH=src python benchmarks/gpu_check.py
"""

import time

import jax

jax.config.update("jax_enable_x64", True)
import jax.numpy as jnp
import numpy as np

import phasejax as pj


def timed(f, *args, repeat=5):
    t0 = time.perf_counter()
    out = jax.block_until_ready(f(*args))
    first = time.perf_counter() - t0
    best = np.inf
    for _ in range(repeat):
        t0 = time.perf_counter()
        jax.block_until_ready(f(*args))
        best = min(best, time.perf_counter() - t0)
    return out, first, best


print("device:", jax.devices())
rows = []
for n in (10, 30):
    model = pj.models.kingman(n).compile()
    mv = jax.jit(lambda th: (lambda d: jnp.stack([d.mean(), d.var()]))(model(th)))
    out, first, best = timed(mv, jnp.array([1.0]))
    k = np.arange(2, n + 1)
    exact = np.array([2 * (1 - 1 / n), np.sum(1 / (k * (k - 1) / 2) ** 2)])
    assert np.allclose(np.asarray(out), exact, rtol=1e-10), (out, exact)
    rows.append((f"Kingman n={n}: E, Var, 1 theta", first, best))
    thetas = jnp.linspace(0.5, 2.0, 100)[:, None]
    out, first, best = timed(jax.jit(jax.vmap(mv)), thetas)
    assert np.allclose(np.asarray(out[:, 0]), exact[0] / np.asarray(thetas[:, 0]), rtol=1e-10)
    rows.append((f"Kingman n={n}: E, Var, 100 thetas (vmap)", first, best))
    g = jax.jit(jax.vmap(jax.grad(lambda th: model(th).mean() + model(th).var())))
    out, first, best = timed(g, thetas)
    rows.append((f"Kingman n={n}: grad(E+Var), 100 thetas", first, best))

for n, max_steps in ((10, 4096), (20, 16384)):
    model = pj.models.kingman(n).compile()
    data = model(jnp.array([1.0])).sample(jax.random.key(0), (1000,))
    loglik = lambda th: model(th).logpdf(data, max_steps=max_steps).sum()
    out, first, best = timed(jax.jit(jax.value_and_grad(loglik)), jnp.array([1.0]))
    eps = 1e-6
    fd = (loglik(jnp.array([1.0 + eps])) - loglik(jnp.array([1.0 - eps]))) / (2 * eps)
    assert abs(float(out[1][0]) - float(fd)) < 1e-5 * abs(float(fd)), (out, fd)
    rows.append((f"Kingman n={n}: loglik+grad, 1000 obs, 1 theta", first, best))
    thetas = jnp.linspace(0.5, 2.0, 100)[:, None]
    out, first, best = timed(jax.jit(jax.vmap(jax.value_and_grad(loglik))), thetas)
    rows.append((f"Kingman n={n}: loglik+grad, 1000 obs, 100 thetas (vmap)", first, best))

print("| quantity | first call (s, incl. compile) | steady (s) |")
print("|---|---|---|")
for name, first, best in rows:
    print(f"| {name} | {first:.3f} | {best:.5f} |")
print("GPU CHECK PASSED")
