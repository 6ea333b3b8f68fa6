"""phasejax.popgen: time per expected SFS, SFS covariance and their gradients against
moments and PhaseGen (each where it applies), accuracy side by side.

Models (demes, one deme): ``size_change`` (N = 1000 then 5000 after 500 generations back,
n = 20) and ``bottleneck_growth`` (N = 10^4, bottleneck to 10^3 for 1500 generations,
then growth from 2000 to 40000 over the last 500 generations; n = 20 and 200).
PhaseGen (``phasegen`` on PyPI) runs in its own virtual environment (default
``/work/venv-phasegen``, or ``$PHASEGEN_PYTHON``) through a subprocess, timed there
warm (best of repeated calls of a new ``Coalescent`` per call, as a fit would).
Run: ``python benchmarks/bench_popgen.py [name:n ...]`` (default: every case).
"""

from __future__ import annotations

import jax

jax.config.update("jax_enable_x64", True)

import json
import os
import subprocess
import sys
import time

import demes
import equinox as eqx
import jax.numpy as jnp
import numpy as np
from _common import best_of, once

import phasejax.popgen as pg

PHASEGEN_PYTHON = os.environ.get("PHASEGEN_PYTHON", "/work/venv-phasegen/bin/python")

# PhaseGen: same size change in its units (coalescent time of N_ref = 5000 diploids,
# i.e. 2 N_ref generations: pop sizes relative, times in units of 2 N_ref): its rate is
# 1 / N, so sizes N / N_ref and times t / (2 N_ref) match ours
_PHASEGEN_SCRIPT = r"""
import json, sys, time, warnings
warnings.filterwarnings("ignore")
import numpy as np
import phasegen as pg
n, what = int(sys.argv[1]), sys.argv[2]
def build():
    return pg.Coalescent(
        n=n,
        demography=pg.Demography(pop_sizes={"pop_0": {0: 0.2, 0.05: 1.0}}),
    )
def run():
    c = build()
    return np.asarray(c.sfs.mean.data if what == "mean" else c.sfs.cov.data)
t0 = time.perf_counter(); out = run(); first = time.perf_counter() - t0
best = cpu = float("inf")
for _ in range(int(sys.argv[3])):
    t0, c0 = time.perf_counter(), time.process_time()
    run()
    best, cpu = min(best, time.perf_counter() - t0), min(cpu, time.process_time() - c0)
print(json.dumps(dict(first=first, steady=best, cpu=cpu, value=out.tolist())))
"""


def size_change():
    b = demes.Builder(time_units="generations")
    b.add_deme("A", epochs=[dict(start_size=5000, end_time=500), dict(start_size=1000)])
    return b.resolve()


def bottleneck_growth():
    b = demes.Builder(time_units="generations")
    b.add_deme(
        "A",
        epochs=[
            dict(start_size=10_000, end_time=2000),
            dict(start_size=1000, end_time=500),
            dict(start_size=2000, end_size=40_000, end_time=0),
        ],
    )
    return b.resolve()


def moments_sfs(graph, n):
    import moments

    return np.asarray(moments.Spectrum.from_demes(graph, sampled_demes=["A"], sample_sizes=[n]))


def phasegen(n: int, what: str, repeat: int) -> dict | None:
    """PhaseGen's result and times, or ``None`` when its environment is missing."""
    if not os.path.exists(PHASEGEN_PYTHON):
        return None
    out = subprocess.run(
        [PHASEGEN_PYTHON, "-c", _PHASEGEN_SCRIPT, str(n), what, str(repeat)],
        capture_output=True,
        text=True,
        timeout=1800,
    )
    if out.returncode:
        print(f"  PhaseGen failed: {out.stderr.strip().splitlines()[-1:]}")
        return None
    return json.loads(out.stdout.strip().splitlines()[-1])


def cpu_best(fn, *args, repeat: int = 3) -> float:
    """Best-of CPU time (``time.process_time``) per call, after a warm-up call."""
    jax.block_until_ready(fn(*args))
    best = float("inf")
    for _ in range(repeat):
        t0 = time.process_time()
        jax.block_until_ready(fn(*args))
        best = min(best, time.process_time() - t0)
    return best


def timings(what: str, value, gradient, model):
    """Print first-call, steady and CPU times of ``value`` and ``gradient``; the value."""
    parts, results = [], []
    for label, fn in [(what, value), ("gradient", gradient)]:
        first, out = once(fn, model)
        steady = best_of(fn, model, repeat=3)
        parts.append(
            f"{label} first {first:.2f} s, steady {steady * 1e3:.2f} ms (CPU "
            f"{cpu_best(fn, model) * 1e3:.2f} ms)"
        )
        results.append(out)
    print("  " + "; ".join(parts))
    return results[0]


def main():
    print(f"load average at start: {os.getloadavg()}")
    sfs = eqx.filter_jit(lambda d: d.expected_sfs())
    grad = eqx.filter_jit(eqx.filter_grad(lambda d: jnp.sum(jnp.log(d.expected_sfs()[1:-1]))))
    cov = eqx.filter_jit(lambda d: d.sfs_covariance())
    cov_grad = eqx.filter_jit(
        eqx.filter_grad(lambda d: jnp.sum(jnp.diagonal(d.sfs_covariance())[1:-1]))
    )
    cases = [
        ("size_change", size_change(), 20),
        ("bottleneck_growth", bottleneck_growth(), 20),
        ("bottleneck_growth", bottleneck_growth(), 200),
    ]
    # optional arguments select cases, e.g. ``bottleneck_growth:200``
    chosen = set(sys.argv[1:])
    for name, graph, n in cases:
        if chosen and f"{name}:{n}" not in chosen:
            continue
        build, model = once(lambda: pg.from_demes(graph, {"A": n}))
        print(
            f"{name} n={n}: build {build:.2f} s (chain sub-epochs {model.refine}, hazard "
            f"steps {model.hazard_steps})"
        )
        out = timings("SFS", sfs, grad, model)
        if n > 20:
            continue
        mt, ref = once(moments_sfs, graph, n)
        # moments: theta = 4 N_ref mu = 1, i.e. our branch lengths (units 2 N_ref) / 2
        rel = np.abs(ref[1:-1] / (np.asarray(out)[1:-1] / 2) - 1)
        print(
            f"  moments.Spectrum.from_demes {mt * 1e3:.1f} ms per call; max relative "
            f"difference {rel.max():.2e}"
        )
        if name != "size_change":
            # the covariance under growth runs on the refined chain (many sub-epochs of
            # n matrix exponentials each): slow, see RESULTS.md
            continue
        c = timings("SFS covariance", cov, cov_grad, model)
        for what, ours in [("mean", np.asarray(out)), ("cov", np.asarray(c))]:
            res = phasegen(n, what, repeat=3 if what == "cov" else 10)
            if res is None:
                print("  PhaseGen: not installed")
                break
            theirs = np.asarray(res["value"])
            # PhaseGen's SFS is in its time units (2 N_ref = 10^4 generations), like ours
            inner = (slice(1, -1),) * theirs.ndim
            diff = np.max(np.abs(theirs[inner] - ours[inner]) / np.abs(ours[inner]).max())
            print(
                f"  PhaseGen sfs.{what}: first {res['first']:.2f} s, steady "
                f"{res['steady'] * 1e3:.2f} ms (CPU {res['cpu'] * 1e3:.2f} ms); max difference (relative to the largest "
                f"entry) {diff:.2e}"
            )


if __name__ == "__main__":
    main()
