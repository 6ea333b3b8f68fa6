"""pdf/cdf: phasic's C library is a first-order (forward-Euler) approximation.

phasic 0.32.1 steps the distribution with ``ptd_probability_distribution_step`` at
granularity ``g`` (time step ``1/g``; default ``max(1024, ~2 x largest exit rate)``),
so its error falls like ``1/g``: quadrupling ``g`` divides the error by about 4.
phasejax uses uniformization with a truncation bound and agrees with
``scipy.linalg.expm`` to 1e-10. Times are multiples of 1/16, on every C time grid,
so only the integration error (not the grid rounding) is measured.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from _equiv_helpers import assert_rel, dense, ph_pdf_cdf, random_cyclic
from phasic_reference.adapter import reference_graph

import phasejax as pj

TIMES = np.arange(1, 65) / 16.0  # (0, 4]

CASES = [
    ("erlang-3", lambda: pj.models.erlang(3), [2.0]),
    ("kingman-5", lambda: pj.models.kingman(5), [1.0]),
    ("random-cyclic-8", lambda: random_cyclic(np.random.default_rng(3), 8), None),
]


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_c_density_is_first_order_ours_exact(case):
    _, build, theta = case
    graph = build()
    c = reference_graph(graph, theta)
    alpha, S, _ = dense(graph, theta)
    pdf, cdf = ph_pdf_cdf(alpha, S, TIMES)

    # C: error ~ 1/g over three granularities
    grans = [1024, 4096, 16384]
    pdf_err = [np.abs(c.pdf(TIMES, g) - pdf).max() for g in grans]
    cdf_err = [np.abs(c.cdf(TIMES, g) - cdf).max() for g in grans]
    for errs in (pdf_err, cdf_err):
        for coarse, fine in zip(errs, errs[1:]):
            assert 3.0 < coarse / fine < 5.0, errs

    # C at its default granularity: a visible approximation
    g0 = c.default_granularity()
    default_pdf_err = np.abs(c.pdf(TIMES) - pdf).max()
    default_cdf_err = np.abs(c.cdf(TIMES) - cdf).max()
    print(
        f"\n{case[0]}: C default granularity {g0}: max |pdf error| {default_pdf_err:.3e} "
        f"(relative to max pdf {default_pdf_err / pdf.max():.3e}), max |cdf error| {default_cdf_err:.3e}; "
        f"pdf errors at g = {grans}: {', '.join(f'{e:.3e}' for e in pdf_err)}"
    )
    assert default_pdf_err > 1e-6
    assert default_cdf_err > 1e-6

    # ours: exact to 1e-10 (relative to the largest value)
    model = graph.compile()
    f = jax.jit(lambda th, t: (model(th).pdf(t), model(th).cdf(t)))
    ours_pdf, ours_cdf = map(
        np.asarray, f(None if theta is None else jnp.asarray(theta), jnp.asarray(TIMES))
    )
    assert_rel(ours_pdf, pdf, what="pdf vs expm")
    assert_rel(ours_cdf, cdf, what="cdf vs expm")
    print(
        f"   ours: max |pdf error| {np.abs(ours_pdf - pdf).max():.3e}, max |cdf error| {np.abs(ours_cdf - cdf).max():.3e}"
    )
