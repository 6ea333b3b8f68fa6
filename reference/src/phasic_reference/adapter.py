"""Turn a phasejax Graph (duck-typed) into a ReferenceGraph description.

Expected interface of ``graph``:

* ``graph.edge_arrays()`` -> ``(src, dst, base, coefficients)`` numpy arrays over
  vertex indices (vertex 0 = starting vertex); ``base`` (E,), ``coefficients``
  (E, P); rate = base + coefficients @ theta;
* ``graph.vertices_length()`` -> number of vertices including the start;
* ``graph.discrete`` -> bool.
"""

from __future__ import annotations

import numpy as np


def describe(graph, theta=None) -> dict:
    """Return ``{n_vertices, src, dst, weight, discrete}`` with weights evaluated here."""
    src, dst, base, coefficients = graph.edge_arrays()
    src = np.asarray(src, dtype=np.int64).reshape(-1)
    dst = np.asarray(dst, dtype=np.int64).reshape(-1)
    weight = np.asarray(base, dtype=np.float64).reshape(-1).copy()
    coefficients = np.asarray(coefficients, dtype=np.float64)
    if coefficients.ndim == 1:
        coefficients = coefficients.reshape(len(weight), -1)
    if theta is not None:
        theta = np.atleast_1d(np.asarray(theta, dtype=np.float64))
        if coefficients.size:
            if coefficients.shape[1] != theta.shape[0]:
                raise ValueError(
                    f"theta has length {theta.shape[0]}, graph has {coefficients.shape[1]} parameters"
                )
            weight = weight + coefficients @ theta
    elif coefficients.size and np.any(coefficients != 0):
        raise ValueError("graph is parameterized; pass theta")
    if not (len(src) == len(dst) == len(weight)):
        raise ValueError("edge arrays have different lengths")
    return {
        "n_vertices": int(graph.vertices_length()),
        "src": src,
        "dst": dst,
        "weight": weight,
        "discrete": bool(getattr(graph, "discrete", False)),
    }


def reference_graph(graph, theta=None):
    """Shortcut: ``ReferenceGraph(**describe(graph, theta))``."""
    from . import ReferenceGraph

    return ReferenceGraph(**describe(graph, theta))
