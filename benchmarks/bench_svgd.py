"""SVGD posterior of the Kingman coalescent rate from 1,000 TMRCAs: phasejax vs phasic 0.32.1.

Model: ``pj.models.kingman(10)`` (every pair coalesces at rate theta); data: 1,000
absorption times drawn from it at theta = 1 (``dist.sample``, the same draw as
``bench_likelihood.py``'s n = 10 data). Both sides run the same
SVGD problem: prior log theta ~ Normal(0, 1), softplus transform (particles in
z = softplus^-1(theta), log Jacobian added), the same initial particles
(theta = exp(0.3 N(0, 1)), one draw per particle), 100 iterations of Adam (beta 0.9 /
0.999, eps 1e-8) with phasic's ``ExpStepSize`` learning rate
``0.1 e^(-t/30) + 0.001 (1 - e^(-t/30))`` at Adam step t = 1, 2, ... (the same numbers
on both sides), 20 and 100 particles. Each side keeps its own kernel (RBF, median
bandwidth heuristic) and its own likelihood: phasejax ``fit_svgd`` (exact gradients,
uniformization, ``max_steps=2048``); phasic ``Graph.svgd`` (its default model
``pmf_and_moments_from_graph``, default preconditioner).

Reference: the exact posterior on a fine theta grid, from phasejax's exact log-likelihood
(``Posterior.log_density_theta``, uniformization to 1e-12), 2,001 points on
[0.8, 1.3]. Reported per run: posterior mean and sd of the particles, their distance to
the grid posterior (bias in grid sds, sd ratio) and whether the particles' 2.5%..97.5%
range covers the truth.

phasic runs in a subprocess per particle count, in its own virtual environment (its
import sets JAX_ENABLE_X64 and OMP_NUM_THREADS and writes caches under $HOME; the
subprocess gets a fresh temporary HOME, so its first call is cold):

    python3 -m venv /work/phasic-venv && /work/phasic-venv/bin/pip install phasic==0.32.1
    /work/venv/bin/python benchmarks/bench_svgd.py                    # ~14 min on 2 quiet cores
    /work/venv/bin/python benchmarks/bench_svgd.py --particles 20     # ~3 min
    /work/venv/bin/python benchmarks/bench_svgd.py --flipped          # + phasejax with phasic's kernel sign

``--phasic-python`` (or ``$PHASIC_PYTHON``; default ``/work/phasic-venv/bin/python``)
names the interpreter; if it is missing or phasic fails to import, its rows say "not
available" and why. Each phasic subprocess is killed after ``--phasic-timeout`` seconds.
"First call" is the first ``fit_svgd`` / ``Graph.svgd`` call in the process for that
particle count (tracing and compilation included; the model is built before); "steady" is
a second identical call.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

import jax

jax.config.update("jax_enable_x64", True)
import jax.numpy as jnp
import numpy as np
import optax
from _common import fmt_time, load, machine, table

import phasejax as pj
from phasejax import infer

N_SAMPLES = 10
N_OBS = 1000
THETA_TRUE = 1.0
STEPS = 100
PRIOR_LOC, PRIOR_SCALE = 0.0, 1.0
LR_FIRST, LR_LAST, LR_TAU = 0.1, 0.001, 30.0
INIT_SD = 0.3
MAX_STEPS = 2048
GRID = (0.8, 1.3, 2001)
DEFAULT_PHASIC = "/work/phasic-venv/bin/python"


def learning_rate(t):
    """phasic's ``ExpStepSize(first, last, tau)`` at Adam step ``t`` (1-based there)."""
    decay = jnp.exp(-t / LR_TAU)
    return LR_FIRST * decay + LR_LAST * (1.0 - decay)


# one instance: the optimizer is static configuration of the compiled SVGD program
OPTIMIZER = optax.adam(lambda count: learning_rate(count + 1))


def initial_theta(n_particles: int) -> np.ndarray:
    return np.exp(INIT_SD * np.random.default_rng(n_particles).standard_normal((n_particles, 1)))


class FlippedRBF(infer.RBF):
    """phasic's kernel term: ``sum_j grad_{x_i} k(x_i, x_j)``, i.e. the repulsion with the
    wrong sign (an attraction)."""

    def __call__(self, x):
        k, repulsion = super().__call__(x)
        return k, -repulsion


# ------------------------------------------------------------------------- exact posterior


def grid_posterior(post):
    grid = jnp.linspace(*GRID)
    logp = jax.jit(lambda g: jax.lax.map(lambda t: post.log_density_theta(t[None]), g))(grid)
    w = np.asarray(jnp.exp(logp - jnp.max(logp)))
    w = w / w.sum()
    g = np.asarray(grid)
    mean = float(np.sum(w * g))
    sd = float(np.sqrt(np.sum(w * (g - mean) ** 2)))
    cdf = np.cumsum(w)
    lo, hi = np.interp([0.025, 0.975], cdf, g)
    return {
        "mean": mean,
        "sd": sd,
        "lo": float(lo),
        "hi": float(hi),
        "edge_mass": float(w[0] + w[-1]),
    }


def summarize(theta: np.ndarray, exact: dict) -> dict:
    theta = np.asarray(theta, dtype=float).ravel()
    mean, sd = float(theta.mean()), float(theta.std(ddof=1))
    lo, hi = np.quantile(theta, [0.025, 0.975])
    return {
        "mean": mean,
        "sd": sd,
        "bias": (mean - exact["mean"]) / exact["sd"],
        "sd_ratio": sd / exact["sd"],
        "covers": bool(lo <= THETA_TRUE <= hi),
        "range": (float(theta.min()), float(theta.max())),
    }


# ------------------------------------------------------------------------- phasejax


def run_phasejax(model, data, n_particles: int, repeats: int, kernel=None) -> dict:
    init = jnp.asarray(initial_theta(n_particles))
    times, fit = [], None
    for _ in range(repeats):
        t0 = time.perf_counter()
        target = infer.Posterior(
            infer.Likelihood(model, logpdf_kwargs={"max_steps": MAX_STEPS}),
            data,
            prior=infer.LogNormal(PRIOR_LOC, PRIOR_SCALE),
            transform="softplus",
        )
        fit = infer.fit_svgd(
            target,
            n_particles=n_particles,
            steps=STEPS,
            init=init,
            optimizer=OPTIMIZER,
            kernel=kernel,
            progress=False,
        )
        jax.block_until_ready(fit.particles)
        times.append(time.perf_counter() - t0)
    return {"times": times, "particles": np.asarray(fit.particles).ravel().tolist()}


# ------------------------------------------------------------------------- phasic (subprocess)

PHASIC_CHILD = r'''
import json, sys, time, traceback
cfg = json.load(open(sys.argv[1]))
out = {"runs": []}

def dump():
    json.dump(out, open(cfg["out"], "w"))

t0 = time.perf_counter()
import numpy as np
import phasic
from phasic import Graph
from phasic.svgd import Adam, ExpStepSize, LogGaussPrior
import jax, jax.numpy as jnp
out["import_s"] = time.perf_counter() - t0
out["version"] = importlib.metadata.version("phasic")
out["jax"] = jax.__version__
out["x64"] = bool(jax.config.jax_enable_x64)
N = cfg["n"]

def kingman(state):
    """Block-counting Kingman coalescent, as pj.models.kingman: pair rate theta."""
    counts = state.tolist()
    if sum(counts) <= 1:
        return []
    out = []
    present = [i for i in range(N) if counts[i] > 0]
    for a, i in enumerate(present):
        for j in present[a:]:
            pairs = counts[i] * (counts[i] - 1) // 2 if i == j else counts[i] * counts[j]
            if pairs:
                new = list(counts)
                new[i] -= 1
                new[j] -= 1
                new[i + j + 1] += 1
                out.append((np.array(new), 0.0, [float(pairs)]))
    return out

t0 = time.perf_counter()
g = Graph(kingman, ipv=[[[N] + [0] * (N - 1), 1.0]], graph_cache=False)
g.update_weights([1.0])
out["build_s"] = time.perf_counter() - t0
out["vertices"] = int(g.vertices_length())
out["mean_at_1"] = float(g.expectation())
data = np.load(cfg["data"])
z0 = jnp.asarray(np.load(cfg["z0"]))
dump()
for rep in range(cfg["repeats"]):
    t0 = time.perf_counter()
    try:
        fit = g.svgd(
            data, prior=LogGaussPrior(mean=cfg["prior_loc"], std=cfg["prior_scale"]),
            n_particles=int(z0.shape[0]), n_iterations=cfg["steps"], theta_init=z0,
            optimizer=Adam(learning_rate=ExpStepSize(cfg["lr_first"], cfg["lr_last"], cfg["lr_tau"])),
            positive_params=True, seed=0, progress=False, verbose=False,
        )
        res = fit.get_results()
        particles = np.asarray(res["particles"], dtype=float).ravel()
        out["runs"].append({"time": time.perf_counter() - t0, "particles": particles.tolist()})
    except Exception as err:
        out["runs"].append({"time": time.perf_counter() - t0,
                            "error": f"{type(err).__name__}: {err}"[:400],
                            "traceback": traceback.format_exc()[-2000:]})
    dump()
'''


def run_phasic(
    python: str, workdir: Path, data: np.ndarray, n_particles: int, repeats: int, timeout: float
) -> dict:
    """One subprocess per particle count; returns the child's JSON (possibly partial) and
    an ``error`` string when it did not finish."""
    if not (os.path.isfile(python) and os.access(python, os.X_OK)):
        return {
            "error": f"not available: {python} not found (set --phasic-python or $PHASIC_PYTHON)"
        }
    child = workdir / "phasic_child.py"
    child.write_text(PHASIC_CHILD)
    np.save(workdir / "data.npy", data)
    theta0 = initial_theta(n_particles)
    np.save(workdir / f"z0_{n_particles}.npy", theta0 + np.log(-np.expm1(-theta0)))  # softplus^-1
    out_path = workdir / f"phasic_{n_particles}.json"
    cfg = {
        "n": N_SAMPLES,
        "data": str(workdir / "data.npy"),
        "z0": str(workdir / f"z0_{n_particles}.npy"),
        "steps": STEPS,
        "repeats": repeats,
        "prior_loc": PRIOR_LOC,
        "prior_scale": PRIOR_SCALE,
        "lr_first": LR_FIRST,
        "lr_last": LR_LAST,
        "lr_tau": LR_TAU,
        "out": str(out_path),
    }
    cfg_path = workdir / f"cfg_{n_particles}.json"
    cfg_path.write_text(json.dumps(cfg))
    home = (
        workdir / f"home_{n_particles}"
    )  # phasic writes ~/.phasic_cache: keep it fresh and out of $HOME
    home.mkdir(exist_ok=True)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("JAX_", "XLA_", "PYTHONPATH"))}
    env.update(HOME=str(home), JAX_PLATFORMS="cpu")
    proc = subprocess.Popen(
        [python, str(child), str(cfg_path)],
        cwd=workdir,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    error = None
    try:
        log, _ = proc.communicate(timeout=timeout)
        if proc.returncode != 0:
            tail = [line for line in log.strip().splitlines() if line.strip()][-1:] or ["no output"]
            error = f"exit code {proc.returncode}: {tail[0][:300]}"
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)  # the child's own process group (start_new_session)
        log, _ = proc.communicate()
        error = f"timed out after {timeout:.0f} s"
    (workdir / f"phasic_{n_particles}.log").write_text(log or "")
    result = json.loads(out_path.read_text()) if out_path.exists() else {}
    if error and not result.get("runs"):
        result["error"] = ("not available: " if "version" not in result else "") + error
    elif error:
        result["error"] = error
    return result


# ------------------------------------------------------------------------- report


def rows_for(
    name: str, n_particles: int, times: list, particles, exact: dict, status: str = "ok"
) -> list:
    first = fmt_time(times[0]) if times else "-"
    steady = fmt_time(min(times[1:])) if len(times) > 1 else "-"
    if particles is None:
        return [name, n_particles, first, steady, "-", "-", "-", "-", "-", "-", status]
    s = summarize(particles, exact)
    return [
        name,
        n_particles,
        first,
        steady,
        f"{s['mean']:.4f}",
        f"{s['sd']:.4f}",
        f"{s['mean'] - THETA_TRUE:+.4f}",
        f"{s['bias']:+.2f}",
        f"{s['sd_ratio']:.2f}",
        "yes" if s["covers"] else "no",
        status,
    ]


def phasic_rows(res: dict, n_particles: int, exact: dict) -> list:
    name = "phasic " + res.get("version", "0.32.1") + " `Graph.svgd`"
    runs = res.get("runs", [])
    if not runs:
        return [rows_for(name, n_particles, [], None, exact, res.get("error", "no result"))]
    times = [r["time"] for r in runs if "error" not in r]
    good = [r for r in runs if "error" not in r]
    errors = [r["error"] for r in runs if "error" in r]
    status = "; ".join(dict.fromkeys(errors)) or "ok"
    if "error" in res:
        status = (status + "; " if status != "ok" else "") + res["error"]
    particles = good[-1]["particles"] if good else None
    if particles is not None and not np.all(np.isfinite(particles)):
        status = ("" if status == "ok" else status + "; ") + "non-finite particles"
        particles = None
    return [rows_for(name, n_particles, times, particles, exact, status)]


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--particles", type=int, nargs="+", default=[20, 100])
    p.add_argument("--phasic-python", default=os.environ.get("PHASIC_PYTHON", DEFAULT_PHASIC))
    p.add_argument(
        "--phasic-timeout", type=float, default=2400.0, help="seconds per phasic subprocess"
    )
    p.add_argument(
        "--no-steady", action="store_true", help="first calls only (about half the time)"
    )
    p.add_argument("--no-phasic", action="store_true")
    p.add_argument(
        "--flipped",
        action="store_true",
        help="also run phasejax with phasic's kernel sign (attraction), first call only",
    )
    args = p.parse_args()
    repeats = 1 if args.no_steady else 2
    t_start = time.perf_counter()
    print(machine())
    print(
        f"date {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC; command: {' '.join([Path(sys.executable).name] + sys.argv)}"
    )

    model = pj.models.kingman(N_SAMPLES).compile()
    data = model(jnp.array([THETA_TRUE])).sample(
        jax.random.key(N_SAMPLES), (N_OBS,)
    )  # bench_likelihood's
    post = infer.Posterior(
        infer.Likelihood(model, logpdf_kwargs={"max_steps": MAX_STEPS}),
        data,
        prior=infer.LogNormal(PRIOR_LOC, PRIOR_SCALE),
    )
    t0 = time.perf_counter()
    exact = grid_posterior(post)
    exact_s = time.perf_counter() - t0
    print(
        f"exact grid posterior ({GRID[2]} points on [{GRID[0]}, {GRID[1]}], {exact_s:.1f} s): "
        f"mean {exact['mean']:.5f}, sd {exact['sd']:.5f}, 95% [{exact['lo']:.4f}, {exact['hi']:.4f}], "
        f"mass at the grid ends {exact['edge_mass']:.1e}",
        flush=True,
    )

    rows = []
    for n_particles in args.particles:
        print(f"phasejax, {n_particles} particles ... ({load()})", file=sys.stderr, flush=True)
        res = run_phasejax(model, data, n_particles, repeats)
        rows.append(
            rows_for("phasejax `fit_svgd`", n_particles, res["times"], res["particles"], exact)
        )
        if args.flipped:
            res = run_phasejax(model, data, n_particles, 1, kernel=FlippedRBF())
            rows.append(
                rows_for(
                    "phasejax, kernel sign flipped as phasic's",
                    n_particles,
                    res["times"],
                    res["particles"],
                    exact,
                )
            )
    phasic_info = {}
    if not args.no_phasic:
        with tempfile.TemporaryDirectory(prefix="bench_svgd_") as tmp:
            for n_particles in args.particles:
                print(
                    f"phasic, {n_particles} particles ... ({load()})", file=sys.stderr, flush=True
                )
                res = run_phasic(
                    args.phasic_python,
                    Path(tmp),
                    np.asarray(data),
                    n_particles,
                    repeats,
                    args.phasic_timeout,
                )
                phasic_info = {
                    k: res[k]
                    for k in (
                        "version",
                        "jax",
                        "x64",
                        "import_s",
                        "build_s",
                        "vertices",
                        "mean_at_1",
                    )
                    if k in res
                } or phasic_info
                rows.extend(phasic_rows(res, n_particles, exact))
                for r in res.get("runs", []):
                    if "traceback" in r:
                        print(
                            f"phasic traceback ({n_particles} particles):\n{r['traceback']}",
                            file=sys.stderr,
                        )
    order = {n: i for i, n in enumerate(args.particles)}
    rows.sort(key=lambda r: order[r[1]])
    rows.insert(
        0,
        [
            f"exact posterior ({GRID[2]}-point grid)",
            "-",
            fmt_time(exact_s),
            "-",
            f"{exact['mean']:.4f}",
            f"{exact['sd']:.4f}",
            f"{exact['mean'] - THETA_TRUE:+.4f}",
            "0",
            "1",
            "yes" if exact["lo"] <= THETA_TRUE <= exact["hi"] else "no",
            f"95% interval [{exact['lo']:.4f}, {exact['hi']:.4f}]",
        ],
    )
    print()
    print(
        f"Kingman n={N_SAMPLES}, {N_OBS} TMRCAs at theta = {THETA_TRUE}; {STEPS} SVGD iterations; "
        f"prior log theta ~ N({PRIOR_LOC}, {PRIOR_SCALE}); truth {THETA_TRUE}"
    )
    print(
        table(
            [
                "run",
                "particles",
                "first call (incl. compile)",
                "steady",
                "posterior mean",
                "posterior sd",
                "mean - truth",
                "(mean - exact) / exact sd",
                "sd / exact sd",
                "2.5-97.5% covers truth",
                "status",
            ],
            rows,
        )
    )
    if phasic_info:
        print(f"\nphasic: {phasic_info}")
    print(f"\n(total wall time {time.perf_counter() - t_start:.0f} s; at the end: {load()})")


if __name__ == "__main__":
    main()
