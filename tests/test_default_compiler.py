"""The suite compiles with test-only XLA settings (`conftest.py`); here moments, a density
and a likelihood gradient run in a fresh process with the user's own settings, against
closed forms."""

import os
import subprocess
import sys

SCRIPT = r"""
import jax, numpy as np
jax.config.update("jax_enable_x64", True)
import jax.numpy as jnp
import phasejax as pj
# Kingman n=6: T is hypoexponential with rates k(k-1)/2, k = 2..6
lam = np.array([k * (k - 1) / 2 for k in range(2, 7)])
t = np.linspace(0.05, 8.0, 50)
coef = [np.prod([lam[j] / (lam[j] - lam[i]) for j in range(len(lam)) if j != i]) for i in range(len(lam))]
exact = sum(c * l * np.exp(-l * t) for c, l in zip(coef, lam))
graph = pj.models.kingman(6)
model = graph.compile()
dist = model(jnp.array([1.0]))
assert np.isclose(float(dist.mean()), np.sum(1 / lam), rtol=1e-12)
assert np.isclose(float(dist.var()), np.sum(1 / lam**2), rtol=1e-12)
sfs = jax.vmap(dist.mean)(jnp.asarray(pj.models.sfs_rewards(graph)))
assert np.allclose(np.asarray(sfs), 2 / np.arange(1, 6), rtol=1e-12)
assert np.allclose(np.asarray(dist.pdf(jnp.asarray(t))), exact, rtol=1e-10, atol=1e-14)
g = jax.grad(lambda th: model(th).logpdf(jnp.asarray(t)).sum())(jnp.array([1.0]))
# d/dtheta sum log f(t; theta) = sum (1/theta + t f'(t)/f(t)) at theta = 1 (time scaled by theta)
slope = sum(c * l * (-l) * np.exp(-l * t) for c, l in zip(coef, lam))
assert np.isclose(float(g[0]), np.sum(1.0 + t * slope / exact), rtol=1e-9)
print("default compiler ok")
"""


def test_default_compiler_closed_forms():
    env = dict(os.environ, XLA_FLAGS=os.environ.get("PHASEJAX_USER_XLA_FLAGS", ""))
    proc = subprocess.run(
        [sys.executable, "-c", SCRIPT], env=env, capture_output=True, text=True, timeout=600
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "default compiler ok" in proc.stdout
