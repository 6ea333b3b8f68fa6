"""phasejax.popgen: time per expected SFS (and its gradient) against moments.

Models (demes, one deme): ``size_change`` (N = 1000 then 5000 after 500 generations back,
n = 20) and ``bottleneck_growth`` (N = 10^4, bottleneck to 10^3 for 1500 generations,
then growth from 2000 to 40000 over the last 500 generations; n = 20 and 200).
Run: ``python benchmarks/bench_popgen.py``.
"""

from __future__ import annotations

import jax

jax.config.update("jax_enable_x64", True)

import demes
import equinox as eqx
import jax.numpy as jnp
import numpy as np
from _common import best_of, once

import phasejax.popgen as pg


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


def main():
    sfs = eqx.filter_jit(lambda d: d.expected_sfs())
    grad = eqx.filter_jit(eqx.filter_grad(lambda d: jnp.sum(jnp.log(d.expected_sfs()[1:-1]))))
    for name, graph, n in [
        ("size_change", size_change(), 20),
        ("bottleneck_growth", bottleneck_growth(), 20),
        ("bottleneck_growth", bottleneck_growth(), 200),
    ]:
        build, model = once(lambda: pg.from_demes(graph, {"A": n}))
        first, out = once(sfs, model)
        steady = best_of(sfs, model, repeat=5)
        gfirst, _ = once(grad, model)
        gsteady = best_of(grad, model, repeat=3)
        print(
            f"{name} n={n}: build {build:.2f} s (sub-epochs {model.refine}), SFS first "
            f"{first:.2f} s, steady {steady * 1e3:.2f} ms; gradient first {gfirst:.2f} s, "
            f"steady {gsteady * 1e3:.2f} ms"
        )
        if n <= 20:
            mt, ref = once(moments_sfs, graph, n)
            # moments: theta = 4 N_ref mu = 1, i.e. our branch lengths (units 2 N_ref) / 2
            rel = np.abs(ref[1:-1] / (np.asarray(out)[1:-1] / 2) - 1)
            print(
                f"  moments.Spectrum.from_demes {mt * 1e3:.1f} ms per call; max relative "
                f"difference {rel.max():.2e}"
            )


if __name__ == "__main__":
    main()
