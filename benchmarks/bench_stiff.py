"""Stiff models: the dense scaling-and-squaring path against the uniformization it replaces.

A random cyclic model of ``n`` states (about 3 out-edges each, rates log-uniform in
[1e-4, 1e4], so ``Lambda ~ 1e4``) evaluated at ``T`` times up to ``t_max``. Reports CPU
time (``time.process_time``) of the first call (trace + compile) and of a second call,
for ``method="expm"``; for uniformization, the steady CPU time per series term measured
at ``Lambda t ~ 2e5`` and the resulting estimate at the stiff ``Lambda t`` (running it
would take minutes to hours).

Usage: ``python benchmarks/bench_stiff.py [--n 6 50 200] [--times 1 100] [--t-max 1e4]``.
"""

from __future__ import annotations

import argparse
import os
import time

import jax

jax.config.update("jax_enable_x64", True)
import numpy as np

import phasejax as pj
from phasejax._uniformization import right_point


def stiff_model(n: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    s = np.zeros((n, n))
    for i in range(n):
        targets = rng.choice(np.delete(np.arange(n), i), size=min(3, n - 1), replace=False)
        s[i, targets] = 10 ** rng.uniform(-4, 4, size=targets.size)
    exit_rates = np.where(rng.random(n) < 0.3, 10 ** rng.uniform(-4, 4, size=n), 0.0)
    exit_rates[-1] = 1e-4
    s -= np.diag(s.sum(1) + exit_rates)
    alpha = np.zeros(n)
    alpha[0] = 1.0
    return pj.Graph.from_matrices(alpha, s).compile()(), float(np.max(-np.diag(s)))


def cpu(f):
    start = time.process_time()
    jax.block_until_ready(f())
    return time.process_time() - start


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int, nargs="+", default=[6, 50, 200])
    parser.add_argument("--times", type=int, nargs="+", default=[1, 100])
    parser.add_argument("--t-max", type=float, default=1e4)
    args = parser.parse_args()
    print(f"load {os.getloadavg()[0]:.1f}; CPU seconds (process_time)\n")
    print(
        "| n | edges | T | Lambda t_max | expm first | expm second | uniformization ns/term "
        "| uniformization estimate |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for n in args.n:
        dist, lam = stiff_model(n)
        edges = dist.structure.src.shape[0]
        probe = np.array([2e5 / lam])
        terms = float(right_point(lam * probe[0], 1e-12, np))
        cpu(lambda: dist.logpdf(probe, method="uniformization"))  # compile
        per_term = cpu(lambda: dist.logpdf(probe, method="uniformization")) / terms
        for count in args.times:
            t = np.geomspace(1e-3, args.t_max, count)
            first = cpu(lambda: dist.logpdf(t, method="expm"))
            second = cpu(lambda: dist.logpdf(t, method="expm"))
            estimate = per_term * lam * args.t_max
            print(
                f"| {n} | {edges} | {count} | {lam * args.t_max:.1e} | {first:.2f} s "
                f"| {1e3 * second:.1f} ms | {1e9 * per_term:.0f} | {estimate:.0f} s |"
            )


if __name__ == "__main__":
    main()
