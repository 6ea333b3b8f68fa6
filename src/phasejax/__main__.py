"""``python -m phasejax demo``: build, compute, check, fit — the main job end to end."""

from __future__ import annotations

import argparse
import sys
import time


def demo(n: int = 10) -> int:
    import jax

    jax.config.update("jax_enable_x64", True)
    import jax.numpy as jnp
    import numpy as np

    import phasejax as pj

    t0 = time.perf_counter()
    graph = pj.models.kingman(n)
    model = graph.compile()
    print(
        f"Kingman coalescent n={n}: {graph} built and compiled in {time.perf_counter() - t0:.3f} s"
    )
    dist = model(jnp.array([1.0]))
    moments = dist.moments(4)
    sfs_rewards = pj.models.sfs_rewards(graph)
    sfs = jax.vmap(dist.mean)(jnp.asarray(sfs_rewards))
    i = np.arange(1, n)
    k = np.arange(2, n + 1)
    expected = {
        "E[TMRCA]": (float(dist.mean()), 2 * (1 - 1 / n)),
        "Var[TMRCA]": (float(dist.var()), float(np.sum(1 / (k * (k - 1) / 2) ** 2))),
    }
    ok = True
    for name, (ours, exact) in expected.items():
        good = abs(ours - exact) <= 1e-10 * abs(exact)
        ok &= good
        print(
            f"  {name:<11} = {ours:.12f}   closed form {exact:.12f}   {'ok' if good else 'MISMATCH'}"
        )
    print("  moments E[T^k], k=1..4:", np.array2string(np.asarray(moments), precision=8))
    sfs_ok = np.allclose(np.asarray(sfs), 2 / i, rtol=1e-10)
    ok &= sfs_ok
    print(
        "  expected SFS:",
        np.array2string(np.asarray(sfs), precision=6),
        f"(2/i: {'ok' if sfs_ok else 'MISMATCH'})",
    )
    grad = jax.grad(lambda th: model(th).mean())(jnp.array([1.0]))
    grad_ok = abs(float(grad[0]) + 2 * (1 - 1 / n)) < 1e-10
    ok &= grad_ok
    print(
        f"  d E[TMRCA] / d theta at theta=1: {float(grad[0]):.12f} (exact {-2 * (1 - 1 / n):.12f})"
    )
    thetas = jnp.linspace(0.5, 2.0, 100)[:, None]
    means = jax.jit(jax.vmap(lambda th: model(th).mean()))(thetas)
    vmap_ok = np.allclose(np.asarray(means), 2 * (1 - 1 / n) / np.asarray(thetas[:, 0]), rtol=1e-10)
    ok &= vmap_ok
    print(f"  vmap over 100 thetas: {'ok' if vmap_ok else 'MISMATCH'}")
    fit_ok = fit_demo(model)
    ok &= fit_ok
    print("demo", "passed" if ok else "FAILED")
    return 0 if ok else 1


def fit_demo(model, theta_true: float = 1.7, n_obs: int = 1000) -> bool:
    """Simulate TMRCAs at ``theta_true``, fit theta by maximum likelihood (exact gradients)."""
    import jax
    import jax.numpy as jnp
    import numpy as np

    data = model(jnp.array([theta_true])).sample(jax.random.key(2024), (n_obs,))
    loglik = jax.jit(lambda log_theta: model(jnp.exp(log_theta)).logpdf(data).sum())
    score = jax.jit(jax.grad(loglik))
    x = jnp.array([0.0])
    for _ in range(30):  # Newton on log(theta); curvature from a difference of exact scores
        g = score(x)
        h = (score(x + 1e-4) - score(x - 1e-4)) / 2e-4
        x = x - jnp.clip(g / jnp.minimum(h, -1e-8), -1.0, 1.0)
        if abs(float(g[0])) < 1e-8:
            break
    theta_hat = float(jnp.exp(x[0]))
    # observed information on the theta scale gives the standard error
    se = float(1.0 / np.sqrt(-float(h[0]))) * theta_hat
    good = abs(theta_hat - theta_true) < 4 * se
    print(
        f"  fit to {n_obs} simulated TMRCAs (theta={theta_true}): MLE theta = {theta_hat:.4f} +- {se:.4f}, "
        f"log-likelihood {float(loglik(x)):.3f}  {'ok' if good else 'MISMATCH'}"
    )
    return good


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="phasejax")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser(
        "demo", help="build a Kingman coalescent, compute its quantities and check them"
    )
    p.add_argument("-n", type=int, default=10, help="sample size (default 10)")
    args = parser.parse_args(argv)
    return demo(args.n)


if __name__ == "__main__":
    sys.exit(main())
