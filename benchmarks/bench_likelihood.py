"""Kingman coalescent log-likelihood of 1,000 observed TMRCAs: phasejax vs phasic's C library.

Data: 1,000 absorption times drawn from the model itself (``dist.sample``, theta = 1).
phasejax: ``sum(model(theta).logpdf(times))`` with default arguments (no step cap: the
series runs as far as the data need) by uniformization, its exact gradient by
``jax.grad``, for one theta and for 100 thetas under ``jax.vmap``. phasic:
``ReferenceGraph.parameterized`` + ``update_weights(theta)`` + ``pdf(times)`` at its
default granularity (forward Euler, step 1/g), looped over thetas; its gradient is a
central finite difference (2 extra evaluations per parameter).

Both are compared with the exact log-likelihood from ``scipy.linalg.expm`` (dense
oracle): the TMRCA of Kingman's block-counting chain is the absorption time of its
lineage-count chain (n-1 states, rates theta k(k-1)/2), so the oracle exponentiates
that lumped generator (fast) and cross-checks a few times against ``expm`` of the full
block-counting generator. The oracle gradient is a central difference of the oracle.

Where the time goes: the work table gives, per theta, the series length (steps of the
uniformized chain up to the largest right Poisson point), the Poisson terms the
observations' windows hold (``sum_i (hi_i + 1)``), and the steady time per term.

    python benchmarks/bench_likelihood.py          # n = 10, 20  (< 3 min)
    python benchmarks/bench_likelihood.py --sizes 40 --no-c --one  # n = 40, phasejax, 1 theta
    python benchmarks/bench_likelihood.py --no-lump  # the full chains (no exact lumping)

phasejax lumps Kingman's block-counting chain to its lineage counts by default (exact;
``graph.compile(lump=True)``), which is where most of the single-theta speed comes from;
``--no-lump`` measures the transient engine on the full chain.

To stay under 3 minutes, for n=20 C's 100-theta loops are timed on 10 of the 100
thetas and scaled by 10 (marked *; the loop is linear in its length); ``--full`` times
all 100 (several more minutes). phasejax's vmap always runs all 100 (a batch's cost is
not linear in its size). The phasic Python package is never imported.
"""

from __future__ import annotations

import argparse
import sys
import time

import jax

jax.config.update("jax_enable_x64", True)
import jax.numpy as jnp
import numpy as np
import scipy.linalg
from _common import best_of, fmt_time, load, machine, once, ratio, table

import phasejax as pj

N_OBS = 1000
THETA_TRUE = 1.0
THETA = 1.3
THETAS = np.linspace(0.5, 2.0, 100)
FD_STEP = 1e-6


# ----------------------------------------------------------------------------- oracle
def lumped_generator(n: int, theta: float) -> np.ndarray:
    """Lineage-count chain k = n..2 (absorbing at k = 1): S over n - 1 states."""
    k = np.arange(n, 1, -1)
    rates = theta * k * (k - 1) / 2.0
    S = np.diag(-rates) + np.diag(rates[:-1], 1)
    return S


def exact_logpdf(S: np.ndarray, alpha: np.ndarray, times: np.ndarray) -> np.ndarray:
    """log(alpha expm(S t) s) at every time, stepping v <- v expm(S dt) over sorted times."""
    order = np.argsort(times)
    s = -S.sum(axis=1)
    out = np.empty(times.size)
    v, last = alpha.copy(), 0.0
    for i in order:
        v = v @ scipy.linalg.expm(S * (times[i] - last))
        last = times[i]
        out[i] = np.log(v @ s)
    return out


def oracle_loglik(n: int, theta: float, times: np.ndarray) -> float:
    S = lumped_generator(n, theta)
    alpha = np.zeros(len(S))
    alpha[0] = 1.0
    return float(exact_logpdf(S, alpha, times).sum())


def oracle_grad(n: int, theta: float, times: np.ndarray, h: float = 1e-5) -> float:
    return (oracle_loglik(n, theta + h, times) - oracle_loglik(n, theta - h, times)) / (2 * h)


def check_lumping(graph, n: int, theta: float, times: np.ndarray) -> float:
    """Max |log f| difference between the full and the lumped generator at 5 times."""
    mats = graph.as_matrices(np.array([theta]))
    few = np.quantile(times, [0.01, 0.25, 0.5, 0.75, 0.99])
    full = exact_logpdf(mats.matrix, mats.alpha, few)
    S = lumped_generator(n, theta)
    alpha = np.zeros(len(S))
    alpha[0] = 1.0
    return float(np.max(np.abs(full - exact_logpdf(S, alpha, few))))


# ----------------------------------------------------------------------------- phasejax
def work(model, times, theta: float, tol: float = 1e-12) -> tuple[int, int]:
    """Series steps and Poisson terms (``sum_i (hi_i + 1)``) of one theta's log-likelihood."""
    from phasejax._uniformization import right_point

    lam = float(np.max(np.asarray(model(jnp.array([theta])).diag)))
    hi = right_point(lam * np.asarray(times), tol, np).astype(np.int64)
    return int(hi.max()) + 1, int(np.sum(hi + 1))


def subset(thetas, k: int | None):
    return thetas if k is None else thetas[:: len(thetas) // k][:k]


def bench_ours(model, times, batch: bool = True):
    def loglik_(theta):
        return jnp.sum(model(theta).logpdf(times))

    loglik = jax.jit(loglik_)
    grad_one = jax.jit(jax.value_and_grad(loglik_))
    many = jax.jit(jax.vmap(loglik_))
    grad_many = jax.jit(jax.vmap(jax.value_and_grad(loglik_)))
    theta = jnp.array([THETA])
    thetas = jnp.asarray(THETAS)[:, None]  # all 100: a batch's cost is not linear in its size
    r = {"work": work(model, times, THETA)}
    r["one_first"], r["ll"] = once(loglik, theta)
    r["one"] = best_of(loglik, theta, repeat=5, warm=False)
    r["grad_first"], (_, g) = once(grad_one, theta)
    r["grad"] = best_of(grad_one, theta, repeat=5, warm=False)
    r["g"] = float(g[0])
    r["lls"] = {THETA: float(r["ll"])}
    if not batch:
        return r
    r["many_first"], lls = once(many, thetas)
    r["many"] = best_of(many, thetas, repeat=5, number=1, warm=False)
    r["grad_many_first"], _ = once(grad_many, thetas)
    r["grad_many"] = best_of(grad_many, thetas, repeat=3, number=1, warm=False)
    r["lls"] = dict(zip(np.asarray(thetas[:, 0]).tolist(), np.asarray(lls).tolist()))
    r["terms_many"] = sum(work(model, times, float(th))[1] for th in THETAS)
    return r


# ----------------------------------------------------------------------------- phasic C
def bench_c(graph, times, n_loop: int | None, batch: bool = True):
    from phasic_reference import ReferenceGraph

    src, dst, base, coef = graph.edge_arrays()
    c = ReferenceGraph.parameterized(graph.vertices_length(), src, dst, coef, weight=base)

    def loglik(theta):
        c.update_weights([theta])
        return float(np.sum(np.log(c.pdf(times))))

    def with_fd(theta):
        h = FD_STEP * theta
        return loglik(theta), (loglik(theta + h) - loglik(theta - h)) / (2 * h)

    r = {}
    r["one_first"], r["ll"] = once(loglik, THETA)
    c.update_weights([THETA])
    r["granularity"] = c.default_granularity()
    r["one"] = best_of(loglik, THETA, repeat=3, warm=False)  # ~1 s of calls in all
    r["grad"] = best_of(with_fd, THETA, repeat=2, budget=0.5, warm=False)
    r["g"] = (loglik(THETA * (1 + FD_STEP)) - loglik(THETA * (1 - FD_STEP))) / (2 * FD_STEP * THETA)
    r["lls"], r["scaled"], r["many"], r["grad_many"] = {THETA: r["ll"]}, False, None, None
    if not batch:
        return r
    thetas = subset(THETAS, n_loop)
    scale = len(THETAS) / len(thetas)
    t0 = time.perf_counter()
    lls = [loglik(th) for th in thetas]
    r["many"] = (time.perf_counter() - t0) * scale
    t0 = time.perf_counter()
    for th in thetas:
        with_fd(th)
    r["grad_many"] = (time.perf_counter() - t0) * scale
    r["lls"] = dict(zip(thetas.tolist(), lls))
    r["scaled"] = scale != 1
    return r


def _nan_row(keys):
    return dict.fromkeys(keys) | {"lls": {}, "scaled": False}


def run(sizes, subsets, c: bool = True, batch: bool = True, lump: bool = True):
    print(machine())
    print(
        f"{N_OBS} TMRCAs sampled from the model at theta = {THETA_TRUE}; one theta = {THETA}; "
        f"100 thetas = linspace(0.5, 2, 100); log-likelihood = sum of log densities\n"
    )
    rows, acc, works, notes = [], [], [], False
    for n in sizes:
        graph = pj.models.kingman(n)
        model = graph.compile(lump=lump)
        times = np.asarray(model(jnp.array([THETA_TRUE])).sample(jax.random.key(n), (N_OBS,)))
        # the full generator is dense in the cross-check: only for small graphs
        small = graph.vertices_length() < 3000
        lump_err = check_lumping(graph, n, THETA, times) if small else float("nan")
        exact = oracle_loglik(n, THETA, times)
        exact_g = oracle_grad(n, THETA, times)
        ours = bench_ours(model, times, batch)
        keys = ("one_first", "one", "grad", "many", "grad_many", "ll", "g", "granularity")
        theirs = bench_c(graph, times, subsets.get(n), batch) if c else _nan_row(keys)
        exact_many = {
            th: oracle_loglik(n, th, times) for th in set(ours["lls"]) | set(theirs["lls"])
        }

        def max_err(lls):
            return max((abs(v - exact_many[th]) for th, v in lls.items()), default=float("nan"))

        def err(value, exact):
            return "-" if value is None else f"{abs(value - exact) / abs(exact):.1e}"

        mark = "*" if theirs["scaled"] else ""
        notes |= bool(mark)
        label = f"n={n} ({graph.vertices_length() - 1:,} states)"
        ops = [("log-lik, 1 theta", "one", ""), ("log-lik + gradient, 1 theta", "grad", "")]
        if batch:
            ops += [
                ("log-lik, 100 thetas", "many", mark),
                ("log-lik + gradient, 100 thetas", "grad_many", mark),
            ]
        for i, (name, key, m) in enumerate(ops):
            first = ours.get(f"{key}_first", ours["one_first"] if key == "one" else None)
            rows.append(
                [
                    label if i == 0 else "",
                    name,
                    fmt_time(first),
                    fmt_time(ours[key]),
                    fmt_time(theirs["one_first"]) if key == "one" else "-",
                    fmt_time(theirs[key]) + (m if theirs[key] is not None else ""),
                    ratio(ours[key], theirs[key]),
                ]
            )
        steps, terms = ours["work"]
        works.append(
            [
                f"n={n}",
                f"{steps:,}",
                f"{terms:,}",
                f"{ours['one'] / terms * 1e9:.2f} ns",
                f"{ours['grad'] / terms * 1e9:.2f} ns",
                f"{ours['terms_many']:,.0f}" if batch else "-",
                f"{ours['many'] / ours['terms_many'] * 1e9:.2f} ns" if batch else "-",
                f"{ours['grad_many'] / ours['terms_many'] * 1e9:.2f} ns" if batch else "-",
                f"{ours['many'] / ours['one']:.1f}x" if batch else "-",
                f"{ours['grad_many'] / ours['grad']:.1f}x" if batch else "-",
            ]
        )
        acc.append(
            [
                f"n={n}",
                f"{exact:.6f}",
                f"{abs(float(ours['ll']) - exact):.1e}",
                "-" if theirs["ll"] is None else f"{abs(theirs['ll'] - exact):.1e}",
                f"{max_err(ours['lls']):.1e}",
                f"{max_err(theirs['lls']):.1e}",
                str(len(exact_many)),
                err(ours["g"], exact_g),
                err(theirs["g"], exact_g),
                str(theirs["granularity"]),
                f"{lump_err:.0e}",
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
                "C steady (default granularity)",
                "C / phasejax (steady)",
            ],
            rows,
        )
    )
    print(
        "\nphasejax 100 thetas: one jax.vmap call. C 100 thetas: a Python loop; C gradient = value + "
        "central FD (3 pdf passes per theta)."
    )
    if notes:
        print(
            "* C: the loop over 10 of the 100 thetas, scaled by 10 (the loop is linear in its "
            "length; `--full` runs all 100). phasejax always runs all 100 in one vmap."
        )
    print()
    print(
        table(
            [
                "model",
                "series steps (theta=1.3)",
                "Poisson terms, 1 theta",
                "log-lik per term",
                "log-lik + grad per term",
                "Poisson terms, 100 thetas",
                "log-lik per term (100)",
                "log-lik + grad per term (100)",
                "log-lik: 100 thetas / 1",
                "log-lik + grad: 100 thetas / 1",
            ],
            works,
        )
    )
    print()
    print(
        table(
            [
                "model",
                "exact log-lik (theta=1.3)",
                "phasejax abs. error",
                "C abs. error",
                "phasejax max abs. error over thetas",
                "C max abs. error over thetas",
                "thetas checked",
                "phasejax rel. error d/dtheta",
                "C rel. error d/dtheta (FD)",
                "C granularity",
                "oracle lumping check",
            ],
            acc,
        )
    )


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sizes", type=int, nargs="*", default=[10, 20])
    p.add_argument(
        "--full",
        action="store_true",
        help="no subsets: C loops and the batched gradient over all 100 thetas for every n (slow)",
    )
    p.add_argument("--no-c", action="store_true", help="phasejax only (no C library)")
    p.add_argument("--one", action="store_true", help="one theta only (no 100-theta rows)")
    p.add_argument(
        "--no-lump",
        action="store_true",
        help="the full chain (compile(lump=False)): the engine alone",
    )
    args = p.parse_args()
    t0 = time.perf_counter()
    subsets = {} if args.full else {20: 10}
    run(args.sizes, subsets, c=not args.no_c, batch=not args.one, lump=not args.no_lump)
    print(f"\n(total wall time {time.perf_counter() - t0:.0f} s; at the end: {load()})")


if __name__ == "__main__":
    main()
