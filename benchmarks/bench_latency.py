"""First-answer latency: a new user's first workload in a fresh process.

Kingman n=10 (theta = 1): build and compile the graph, then the first call of each
quantity — mean, variance, expected SFS, SFS covariance, pdf and cdf of 1,000 points,
log-likelihood + gradient of 1,000 observations, 1,000 samples. Each run is a fresh
Python process (nothing compiled yet); ``cold`` runs without JAX's persistent
compilation cache, ``cache`` runs twice against one fresh cache directory and reports
the second process (the executables written by the first are reused).

``--state N``: instead, the time and peak memory (max RSS) of the first
``state_probability(0.1)`` of Kingman ``N`` in a fresh process (all states at one time).

Usage: ``python benchmarks/bench_latency.py [--n 10] [--state 40]`` (prints a markdown table).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile

WORKLOAD = r"""
import json, sys, time
t_start = time.perf_counter()
import jax
jax.config.update("jax_enable_x64", True)
cache = sys.argv[2]
if cache:
    jax.config.update("jax_compilation_cache_dir", cache)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
import jax.numpy as jnp
import numpy as np
import phasejax as pj

n = int(sys.argv[1])
out = {"import": time.perf_counter() - t_start}

def timed(name, fn):
    t0 = time.perf_counter()
    value = jax.block_until_ready(fn())
    out[name] = time.perf_counter() - t0
    return value

graph = timed("build", lambda: pj.models.kingman(n))
model = timed("compile", lambda: graph.compile())
theta = jnp.array([1.0])
dist = timed("model(theta)", lambda: model(theta))
sfs = jnp.asarray(pj.models.sfs_rewards(graph))
timed("mean", lambda: dist.mean())
timed("var", lambda: dist.var())
timed("expected SFS", lambda: dist.mean(sfs))
timed("SFS covariance", lambda: dist.covariance_matrix(sfs))
times = jnp.linspace(0.01, 6.0, 1000)
timed("pdf (1,000 t)", lambda: dist.pdf(times))
timed("cdf (1,000 t)", lambda: dist.cdf(times))
data = timed("sample (1,000)", lambda: dist.sample(jax.random.key(0), (1000,)))
loglik = lambda th: jnp.sum(model(th).logpdf(data))
timed("loglik + grad (1,000 obs)", lambda: jax.value_and_grad(loglik)(theta))
out["total"] = time.perf_counter() - t_start
print("RESULT" + json.dumps(out))
"""


STATE = r"""
import json, resource, sys, time
import jax
jax.config.update("jax_enable_x64", True)
import jax.numpy as jnp
import phasejax as pj

model = pj.models.kingman(int(sys.argv[1])).compile()
dist = model(jnp.array([1.0]))
t0 = time.perf_counter()
probs = jax.block_until_ready(dist.state_probability(jnp.array([0.1])))
out = {"states": int(dist.diag.shape[0]), "seconds": time.perf_counter() - t0,
       "max_rss_GB": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,
       "total": float(probs.sum())}
print("RESULT" + json.dumps(out))
"""


def run(n: int, cache: str, script: str = WORKLOAD) -> dict:
    env = dict(os.environ)
    proc = subprocess.run(
        [sys.executable, "-c", script, str(n), cache],
        capture_output=True,
        text=True,
        env=env,
        check=True,
    )
    line = next(x for x in proc.stdout.splitlines() if x.startswith("RESULT"))
    return json.loads(line[len("RESULT") :])


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=10)
    parser.add_argument("--state", type=int, default=None)
    args = parser.parse_args()
    if args.state is not None:
        print(run(args.state, "", STATE))
        return
    cold = run(args.n, "")
    with tempfile.TemporaryDirectory() as cache:
        run(args.n, cache)  # fills the cache
        warm = run(args.n, cache)
    print(f"| step (Kingman n={args.n}) | fresh process | second process, persistent cache |")
    print("|---|---|---|")
    for key in cold:
        print(f"| {key} | {cold[key]:.2f} s | {warm[key]:.2f} s |")


if __name__ == "__main__":
    main()
