"""Kingman coalescent E[T] and Var[T]: phasejax vs the C library of phasic 0.32.1.

Both sides work on the same graph (``pj.models.kingman(n)``): phasejax compiles it once
and evaluates ``model(theta).mean()`` / ``.var()`` under ``jax.jit`` (one theta),
``jax.vmap`` (100 thetas) and ``jax.grad``; the C side is
``phasic_reference.ReferenceGraph.parameterized`` (phasic's ``ptd_graph_add_edge`` with
coefficient vectors) followed, per theta, by ``update_weights(theta)`` +
``expectation()`` + ``variance()``: the replay of the elimination that phasic records
on the first call. C has no derivatives; its gradient is a central finite difference
(2 extra evaluations per parameter). Every number is checked against the closed forms
``E = 2 (1 - 1/n) / theta``, ``Var = sum_k (theta k (k-1) / 2)^-2``.

    python benchmarks/bench_moments.py            # n = 10, 20, 30   (< 3 min)
    python benchmarks/bench_moments.py --big      # also n = 50 (204,226 states), slow

The phasic Python package is never imported (only its C library, via phasic_reference).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time

import jax

jax.config.update("jax_enable_x64", True)
import jax.numpy as jnp
import numpy as np
from _common import best_of, fmt_time, load, machine, once, peak_rss_mb, ratio, table

import phasejax as pj

THETA = 1.3
THETAS = np.linspace(0.5, 2.0, 100)
FD_STEP = 1e-6


def closed_form(n: int, theta):
    k = np.arange(2, n + 1)
    theta = np.asarray(theta, dtype=np.float64)
    mean = 2.0 * (1.0 - 1.0 / n) / theta
    var = np.sum(1.0 / (k * (k - 1) / 2.0) ** 2) / theta**2
    return mean, var  # d/dtheta: -mean/theta, -2 var/theta


def size(graph) -> tuple[int, int]:
    """States (absorbing included, starting vertex not) and edges between states."""
    src = graph.edge_arrays()[0]
    return graph.vertices_length() - 1, int(np.sum(src > 0))


def rel(a, b) -> float:
    return float(np.max(np.abs(np.asarray(a) - np.asarray(b)) / np.abs(np.asarray(b))))


# ----------------------------------------------------------------------------- phasejax
def bench_ours(graph, n):
    t0 = time.perf_counter()
    model = graph.compile()
    t_compile = time.perf_counter() - t0

    def e_var(theta):
        d = model(theta)
        return d.mean(), d.var()

    def with_grad(theta):
        (e, ge) = jax.value_and_grad(lambda t: e_var(t)[0])(theta)
        (v, gv) = jax.value_and_grad(lambda t: e_var(t)[1])(theta)
        return e, v, ge[0], gv[0]

    one = jax.jit(e_var)
    many = jax.jit(jax.vmap(e_var))
    grad_one = jax.jit(with_grad)
    grad_many = jax.jit(jax.vmap(with_grad))
    theta = jnp.array([THETA])
    thetas = jnp.asarray(THETAS)[:, None]

    res = {"compile": t_compile}
    res["one_first"], (e, v) = once(one, theta)
    res["one"] = best_of(one, theta)
    res["many_first"], (es, vs) = once(many, thetas)
    res["many"] = best_of(many, thetas)
    res["grad_first"], (_, _, ge, gv) = once(grad_one, theta)
    res["grad"] = best_of(grad_one, theta)
    res["grad_many_first"], (_, _, ges, gvs) = once(grad_many, thetas)
    res["grad_many"] = best_of(grad_many, thetas)

    me, mv = closed_form(n, THETA)
    mes, mvs = closed_form(n, THETAS)
    res["err_value"] = max(rel(e, me), rel(v, mv), rel(es, mes), rel(vs, mvs))
    res["err_grad"] = max(
        rel(ge, -me / THETA),
        rel(gv, -2 * mv / THETA),
        rel(ges, -mes / THETAS),
        rel(gvs, -2 * mvs / THETAS),
    )
    res["solver"] = type(model.solver).__name__
    return res


# ----------------------------------------------------------------------------- phasic C
def bench_c(graph, n):
    from phasic_reference import ReferenceGraph

    src, dst, base, coef = graph.edge_arrays()
    t0 = time.perf_counter()
    c = ReferenceGraph.parameterized(graph.vertices_length(), src, dst, coef, weight=base)
    t_construct = time.perf_counter() - t0

    def e_var(theta):
        c.update_weights([theta])
        return c.expectation(), c.variance()

    def with_fd(theta):  # value + central finite difference: 2 extra evaluations / parameter
        e, v = e_var(theta)
        h = FD_STEP * theta
        ep, vp = e_var(theta + h)
        em, vm = e_var(theta - h)
        return e, v, (ep - em) / (2 * h), (vp - vm) / (2 * h)

    res = {"compile": t_construct}
    res["one_first"], (e, v) = once(e_var, THETA)  # symbolic elimination recorded here
    alternate = iter(np.tile([THETA, THETA * 1.01], 10**6))
    res["one"] = best_of(lambda: e_var(next(alternate)))  # alternate thetas: no stale cache

    def loop(fn):
        return [fn(th) for th in THETAS]

    res["many"] = best_of(loop, e_var, repeat=5)
    res["grad"] = best_of(lambda: with_fd(next(alternate)))
    res["grad_many"] = best_of(loop, with_fd, repeat=3)
    values = np.array(loop(e_var))
    fd = np.array(loop(with_fd))
    me, mv = closed_form(n, THETA)
    mes, mvs = closed_form(n, THETAS)
    res["err_value"] = max(rel(e, me), rel(v, mv), rel(values[:, 0], mes), rel(values[:, 1], mvs))
    res["err_grad"] = max(rel(fd[:, 2], -mes / THETAS), rel(fd[:, 3], -2 * mvs / THETAS))
    return res


# ----------------------------------------------------------------------------- main table
def run(sizes):
    print(machine())
    if not sizes:
        return
    print(
        f"theta = {THETA} for one theta; 100 thetas = linspace(0.5, 2, 100); "
        f"steady = best of 7 (C loops: best of 3-5); C gradient = central FD, h = {FD_STEP:g} theta\n"
    )
    rows, acc_rows = [], []
    for n in sizes:
        t0 = time.perf_counter()
        graph = pj.models.kingman(n)
        t_build = time.perf_counter() - t0
        states, edges = size(graph)
        ours = bench_ours(graph, n)
        theirs = bench_c(graph, n)
        label = f"n={n} ({states:,} states, {edges:,} edges)"
        rows.append(
            [
                label,
                "build graph (shared, Python)",
                fmt_time(t_build),
                "",
                fmt_time(t_build),
                "",
                "",
            ]
        )
        rows.append(
            [
                "",
                "compile / C construct",
                fmt_time(ours["compile"]),
                "",
                fmt_time(theirs["compile"]),
                "",
                "",
            ]
        )
        for key, name in [
            ("one", "E + Var, 1 theta"),
            ("many", "E + Var, 100 thetas"),
            ("grad", "E + Var + d/dtheta, 1 theta"),
            ("grad_many", "E + Var + d/dtheta, 100 thetas"),
        ]:
            first = ours.get(f"{key}_first")
            c_first = theirs.get(f"{key}_first")
            rows.append(
                [
                    "",
                    name,
                    fmt_time(first),
                    fmt_time(ours[key]),
                    fmt_time(c_first),
                    fmt_time(theirs[key]),
                    ratio(ours[key], theirs[key]),
                ]
            )
        acc_rows.append(
            [
                f"n={n}",
                ours["solver"],
                f"{ours['err_value']:.1e}",
                f"{theirs['err_value']:.1e}",
                f"{ours['err_grad']:.1e}",
                f"{theirs['err_grad']:.1e}",
            ]
        )
        print(f"  done n={n}", file=sys.stderr)
    print(
        table(
            [
                "model",
                "operation",
                "phasejax first call (incl. jit)",
                "phasejax steady",
                "C first call",
                "C steady",
                "C / phasejax (steady)",
            ],
            rows,
        )
    )
    print(
        "\n'C first call' of E + Var includes phasic's symbolic elimination (recorded once, then "
        "replayed per theta). C's 100-theta rows are a Python loop over update_weights + "
        "expectation + variance (per-call overhead of the pybind layer included).\n"
    )
    print(
        table(
            [
                "model",
                "phasejax solver",
                "phasejax max rel. error E/Var",
                "C max rel. error E/Var",
                "phasejax max rel. error gradient (exact, jax.grad)",
                "C max rel. error gradient (central FD)",
            ],
            acc_rows,
        )
    )


def big_worker(side: str, n: int) -> dict:
    """One side of the big run, in its own process (so peak RSS is that side's)."""
    out = {"side": side, "rss_start_mb": peak_rss_mb()}
    t0 = time.perf_counter()
    graph = pj.models.kingman(n)
    out["build"] = time.perf_counter() - t0
    out["states"], out["edges"] = size(graph)
    out["rss_build_mb"] = peak_rss_mb()
    me, mv = closed_form(n, THETA)
    if side == "ours":
        t0 = time.perf_counter()
        model = graph.compile()
        out["compile"] = time.perf_counter() - t0
        out["solver"] = type(model.solver).__name__
        del graph

        def e_var(theta):
            d = model(theta)
            return d.mean(), d.var()

        f = jax.jit(e_var)
        theta = jnp.array([THETA])
        out["first"], (e, v) = once(f, theta)
        out["steady"] = best_of(f, theta, repeat=3, number=1)
        g = jax.jit(lambda th: jax.grad(lambda t: e_var(t)[1])(th))
        out["grad_first"], _ = once(g, theta)
        out["grad_steady"] = best_of(g, theta, repeat=3, number=1)
    else:
        from phasic_reference import ReferenceGraph

        src, dst, base, coef = graph.edge_arrays()
        nv = graph.vertices_length()
        del graph
        t0 = time.perf_counter()
        c = ReferenceGraph.parameterized(nv, src, dst, coef, weight=base)
        out["compile"] = time.perf_counter() - t0

        def e_var(theta):
            c.update_weights([theta])
            return c.expectation(), c.variance()

        out["first"], (e, v) = once(e_var, THETA)
        alternate = iter(np.tile([THETA, THETA * 1.01], 100))
        out["steady"] = best_of(lambda: e_var(next(alternate)), repeat=3, number=1)
        e, v = e_var(THETA)
    out["err"] = max(rel(e, me), rel(v, mv))
    out["peak_rss_mb"] = peak_rss_mb()
    return out


def run_big(n: int = 50, timeout: float = 3600):
    print(
        f"\n## Big graph: Kingman n={n} (E and Var, theta={THETA}); each side in its own process\n"
    )
    rows = []
    for side in ("ours", "c"):
        cmd = [sys.executable, __file__, "--big-worker", side, "-n", str(n)]
        t0 = time.perf_counter()
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
        except subprocess.TimeoutExpired:
            rows.append([side, f"timed out after {timeout:.0f} s", "", "", "", "", "", "", ""])
            continue
        if proc.returncode != 0:
            tail = proc.stderr.strip().splitlines()[-1:] or ["?"]
            rows.append(
                [
                    side,
                    f"failed (rc {proc.returncode}): {tail[0][:120]}",
                    "",
                    "",
                    "",
                    "",
                    "",
                    "",
                    "",
                ]
            )
            continue
        r = json.loads(proc.stdout.strip().splitlines()[-1])
        name = f"phasejax ({r['solver']})" if side == "ours" else "phasic C"
        grad = (
            f"{fmt_time(r['grad_first'])} / {fmt_time(r['grad_steady'])}"
            if side == "ours"
            else "- (FD: 2 x steady)"
        )
        rows.append(
            [
                name,
                f"{r['states']:,} / {r['edges']:,}",
                fmt_time(r["build"]),
                fmt_time(r["compile"]),
                fmt_time(r["first"]),
                fmt_time(r["steady"]),
                grad,
                f"{r['rss_build_mb']:.0f} MB / {r['peak_rss_mb']:.0f} MB",
                f"{r['err']:.1e}",
            ]
        )
        print(f"  {side} done in {time.perf_counter() - t0:.0f} s", file=sys.stderr)
    print(
        table(
            [
                "side",
                "states / edges",
                "build graph",
                "compile / C construct",
                "E + Var first call",
                "E + Var steady",
                "d Var/d theta first / steady",
                "peak RSS after build / at the end",
                "max rel. error",
            ],
            rows,
        )
    )
    print(
        "\nPeak RSS is getrusage(RUSAGE_SELF).ru_maxrss of each side's process; the graph build "
        "(Python, shared by both sides) is included. C's gradient would be a finite difference."
    )


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sizes", type=int, nargs="*", default=[10, 20, 30])
    p.add_argument("--big", action="store_true", help="also Kingman n=50 (204,226 states; slow)")
    p.add_argument("--big-n", type=int, default=50)
    p.add_argument("--big-worker", choices=["ours", "c"], help=argparse.SUPPRESS)
    p.add_argument("-n", type=int, default=50, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.big_worker:
        print(json.dumps(big_worker(args.big_worker, args.n)))
        return
    t0 = time.perf_counter()
    run(args.sizes)
    if args.big:
        run_big(args.big_n)
    print(f"\n(total wall time {time.perf_counter() - t0:.0f} s; at the end: {load()})")


if __name__ == "__main__":
    main()
