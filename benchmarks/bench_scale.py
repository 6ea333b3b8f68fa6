"""Scale: build, compile, first call, steady call and peak RSS for large models.

Kingman coalescent (block counting; E[T] and Var[T] at theta = 1, checked against
``E = 2 (1 - 1/n)``) for n = 30..60, and the isolation-with-migration joint SFS
(``IsolationWithMigration.joint_sfs(n, n)``, expected jSFS) for 4+4 .. 7+7. Each case
runs in its own subprocess, so that its peak RSS (``getrusage``) is its own.

Columns: *build* (``pj.models.kingman(n)`` / ``two_island(n, n, joint=True)``: wall and
CPU seconds of the process; CPU time is the steadier figure on a loaded box, though XLA
compilation may use more than one core), *compile*
(``graph.compile()`` / ``IsolationWithMigration(graph, rewards)``), *first* (first call,
tracing and XLA compilation included), *steady* (best of 3), *peak RSS*. The C library
(phasic 0.32.1 through ``phasic_reference``) has the same Kingman graph: its column is
construction from our edge arrays plus the first ``expectation()`` + ``variance()`` (its
symbolic elimination), for n up to ``--c-max``.

    python benchmarks/bench_scale.py                 # Kingman 30, 40, 50; IM 4+4, 5+5
    python benchmarks/bench_scale.py --big           # also Kingman 60 (~1M states), IM 6+6, 7+7
    python benchmarks/bench_scale.py --im-solve-max 5   # IM above 5+5: build only

The IM rows also give *total*: build + compile + first call (the CPU seconds of the
whole case up to its first result), the figure of issue 15's 35 s target for 7+7.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time


def _timed(fn):
    w, c = time.perf_counter(), time.process_time()
    out = fn()
    return out, time.perf_counter() - w, time.process_time() - c


def case_kingman(n: int, with_c: bool) -> dict:
    import jax

    jax.config.update("jax_enable_x64", True)
    import jax.numpy as jnp
    from _common import best_of, peak_rss_mb

    import phasejax as pj

    graph, build, build_cpu = _timed(lambda: pj.models.kingman(n, progress=False))
    res = {"states": graph.vertices_length() - 1, "edges": graph.edges_length() - 1}
    res["build"], res["build_cpu"] = build, build_cpu
    res["graph_mb"] = graph_megabytes(graph)
    model, res["compile"], res["compile_cpu"] = _timed(graph.compile)
    res["solver"] = type(model.solver).__name__

    @jax.jit
    def e_var(theta):
        d = model(theta)
        return d.mean(), d.var()

    theta = jnp.array([1.0])
    (mean, _), res["first"], res["first_cpu"] = _timed(lambda: jax.block_until_ready(e_var(theta)))
    res["steady"] = best_of(e_var, theta, repeat=3, number=1, warm=False)
    res["err"] = abs(float(mean) - 2 * (1 - 1 / n)) / (2 * (1 - 1 / n))
    res["rss_mb"] = peak_rss_mb()
    if with_c:
        from phasic_reference import ReferenceGraph

        src, dst, base, coef = graph.edge_arrays()
        del model

        def c_first():
            c = ReferenceGraph.parameterized(graph.vertices_length(), src, dst, coef, weight=base)
            c.update_weights([1.0])
            return c.expectation(), c.variance()

        (c_mean, _), res["c_first"], _ = _timed(c_first)
        res["c_err"] = abs(c_mean - 2 * (1 - 1 / n)) / (2 * (1 - 1 / n))
    return res


def case_im(n: int, solve: bool) -> dict:
    import jax

    jax.config.update("jax_enable_x64", True)
    import equinox as eqx
    from _common import best_of, peak_rss_mb

    import phasejax as pj
    from phasejax.models import IsolationWithMigration, jsfs_rewards, two_island

    graph, build, build_cpu = _timed(lambda: two_island(n, n, joint=True, progress=False))
    res = {"states": graph.vertices_length() - 1, "edges": graph.edges_length() - 1}
    res["build"], res["build_cpu"] = build, build_cpu
    res["graph_mb"] = graph_megabytes(graph)
    if solve:
        im, res["compile"], res["compile_cpu"] = _timed(
            lambda: IsolationWithMigration(graph, jsfs_rewards(graph, n, n))
        )
        res["solver"] = type(im.model.solver).__name__
        args = (1.0, 1.5, 0.5, 0.25, 0.8, 0.6)
        fn = eqx.filter_jit(lambda m, *a: m.expected_jsfs(*a))
        _, res["first"], res["first_cpu"] = _timed(lambda: jax.block_until_ready(fn(im, *args)))
        res["steady"] = best_of(fn, im, *args, repeat=3, number=1, warm=False)
    res["rss_mb"] = peak_rss_mb()
    del pj
    return res


def graph_megabytes(graph) -> float:
    """Bytes held by the graph's arrays (states, edges, state index)."""
    arrays = [graph.states(), *graph._index.main, *graph._index.recent]
    arrays += [b.data for b in (graph._src, graph._dst, graph._base, graph._coef)]
    return sum(a.nbytes for a in arrays) / 1e6


def with_cpu(res: dict, key: str) -> str:
    """Wall time with the process's CPU time (a steadier figure on a loaded box)."""
    from _common import fmt_time

    if key not in res:
        return "-"
    return f"{fmt_time(res[key])} ({res[key + '_cpu']:.2f} s CPU)"


def run_case(kind: str, n: int, flag: bool) -> dict:
    cmd = [sys.executable, __file__, "--case", kind, str(n), str(int(flag))]
    out = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if out.returncode:
        return {"error": (out.stderr.strip().splitlines() or ["?"])[-1][:120]}
    return json.loads(out.stdout.strip().splitlines()[-1])


def main():
    from _common import fmt_time, load, machine, table

    parser = argparse.ArgumentParser()
    parser.add_argument("--big", action="store_true")
    parser.add_argument("--c-max", type=int, default=40)
    parser.add_argument("--im-solve-max", type=int, default=7)
    parser.add_argument("--only", choices=["kingman", "im"], help="run one family")
    parser.add_argument("--case", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.case:
        kind, n, flag = args.case[0], int(args.case[1]), bool(int(args.case[2]))
        res = (case_kingman if kind == "kingman" else case_im)(n, flag)
        print(json.dumps(res))
        return
    import jax

    jax.config.update("jax_enable_x64", True)  # as in every case's subprocess
    print(machine())
    kingman = [30, 40, 50] + ([60] if args.big else [])
    im = [4, 5] + ([6, 7] if args.big else [])
    rows = []
    for kind, sizes in (("kingman", kingman), ("im", im)):
        if args.only not in (None, kind):
            continue
        for n in sizes:
            flag = n <= args.c_max if kind == "kingman" else n <= args.im_solve_max
            t0 = time.perf_counter()
            r = run_case(kind, n, flag)
            label = f"Kingman n={n}" if kind == "kingman" else f"IM jSFS {n}+{n}"
            if "error" in r:
                rows.append([label, "", "", "", "", "", "", "", r["error"]])
                continue
            size = f"{r['states']:,} / {r['edges']:,}"
            c = fmt_time(r.get("c_first")) if kind == "kingman" else "-"
            note = r.get("solver", "solve skipped (--im-solve-max)")
            if "err" in r:
                note += f"; E rel. err {r['err']:.1e}"
            if kind == "im" and "first" in r:
                total = sum(r[k] for k in ("build", "compile", "first"))
                total_cpu = sum(r[k + "_cpu"] for k in ("build", "compile", "first"))
                note += f"; total {total:.1f} s ({total_cpu:.1f} s CPU)"
            rows.append(
                [
                    label,
                    size,
                    with_cpu(r, "build"),
                    f"{r['graph_mb']:.0f} MB",
                    with_cpu(r, "compile"),
                    with_cpu(r, "first"),
                    fmt_time(r.get("steady")),
                    f"{r['rss_mb'] / 1024:.2f} GB",
                    c,
                    note,
                ]
            )
            print(f"  {label}: {time.perf_counter() - t0:.0f} s", file=sys.stderr)
    header = ["model", "states / edges", "build", "graph", "compile", "first call", "steady"]
    header += ["peak RSS", "C: construct + first E,Var", "notes"]
    print(table(header, rows))
    print(load())


if __name__ == "__main__":
    main()
