"""Shared pieces of the equivalence tests (phasejax vs phasic 0.32.1's C library).

The dense "truth" here is built straight from ``graph.edge_arrays()`` with numpy/scipy,
independently of phasejax's compiled solvers and of ``Graph.as_matrices``.
"""

from __future__ import annotations

import numpy as np

import phasejax as pj
from helpers.oracle import cycle_with_exits, green, ph_pdf_cdf_sf  # noqa: F401 (re-exported)

RTOL = 1e-10


def dense(graph, theta=None):
    """``(alpha, M, transient)``: initial vector, sub-intensity S (or sub-transition T)
    over the vertices with out-edges, and those vertex indices."""
    src, dst, base, coef = graph.edge_arrays()
    w = base.copy()
    if coef.shape[1]:
        w = w + coef @ np.asarray(theta, dtype=np.float64)
    v = graph.vertices_length()
    has_out = np.zeros(v, dtype=bool)
    has_out[src[src > 0]] = True
    transient = np.flatnonzero(has_out)
    pos = np.full(v, -1)
    pos[transient] = np.arange(transient.size)
    n = transient.size
    alpha = np.zeros(n)
    M = np.zeros((n, n))
    out = np.zeros(n)
    for s, d, x in zip(src, dst, w):
        if s == 0:
            if pos[d] >= 0:
                alpha[pos[d]] += x
            continue
        out[pos[s]] += x
        if pos[d] >= 0:
            M[pos[s], pos[d]] += x
    M += np.diag(1.0 - out) if graph.discrete else -np.diag(out)
    return alpha, M, transient


def assert_rel(got, want, rtol=RTOL, what="", scale=None):
    """``|got - want| <= rtol * scale`` elementwise, ``scale`` = max |want| by default."""
    got = np.asarray(got, dtype=np.float64)
    want = np.asarray(want, dtype=np.float64)
    assert got.shape == want.shape, (what, got.shape, want.shape)
    scale = np.max(np.abs(want)) if scale is None else scale
    err = np.max(np.abs(got - want), initial=0.0)
    assert err <= rtol * scale, f"{what}: max abs error {err:.3e} > {rtol:g} * {scale:.3e}"


# -- random graphs -------------------------------------------------------------------
def random_acyclic(rng, n, defect=0.0, density=0.3):
    """Random acyclic PH: strictly upper-triangular moves, every state exits somewhere."""
    S = np.triu(rng.uniform(0.2, 3.0, (n, n)) * (rng.random((n, n)) < density), k=1)
    exit_ = rng.uniform(0.1, 2.0, n) * (rng.random(n) < 0.5)
    exit_[-1] = rng.uniform(0.5, 2.0)
    # a row with no move and no exit would be a state never left (from_matrices rejects it)
    exit_ = np.where(S.sum(axis=1) + exit_ > 0, exit_, 1.0)
    np.fill_diagonal(S, -(S.sum(axis=1) + exit_))
    alpha = rng.random(n) * (rng.random(n) < 0.5)
    alpha[0] = 1.0
    alpha *= (1.0 - defect) / alpha.sum()
    return pj.Graph.from_matrices(alpha, S)


def random_cyclic(rng, n, defect=0.0, density=0.1):
    """Random cyclic PH: a Hamiltonian cycle plus random edges, exits on some states."""
    S, exit_ = cycle_with_exits(rng, n, density, 0.3)
    np.fill_diagonal(S, -(S.sum(axis=1) + exit_))
    alpha = np.zeros(n)
    support = rng.choice(n, size=max(1, n // 5), replace=False)
    alpha[support] = rng.random(support.size) + 0.1
    alpha *= (1.0 - defect) / alpha.sum()
    return pj.Graph.from_matrices(alpha, S)


def random_discrete(rng, n, defect=0.0, stay=0.3, density=0.15):
    """Random cyclic DPH: rows of T sum to below 1 (exit + implicit stay)."""
    S, exit_ = cycle_with_exits(rng, n, density, 0.4)
    total = S.sum(axis=1) + exit_
    T = S * ((1.0 - stay) / total)[:, None] + stay * np.eye(n)
    alpha = rng.random(n) + 0.05
    alpha *= (1.0 - defect) / alpha.sum()
    return pj.Graph.from_matrices(alpha, T, discrete=True)
