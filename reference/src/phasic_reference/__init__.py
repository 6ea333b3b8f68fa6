"""Reference values from phasic 0.32.1's C library (liblibphasic.so).

Never imports the ``phasic`` Python package (it flips JAX flags); only the C
library is used, through the ``_core`` pybind11 extension.

Graph description (shared with :func:`phasic_reference.adapter.describe`):

* ``n_vertices`` -- number of vertices including the starting vertex 0;
* ``src``, ``dst`` -- edge endpoints (vertex indices);
* ``weight`` -- edge weights (rates; probabilities for discrete graphs);
  the out-edges of vertex 0 are the initial distribution;
* ``discrete`` -- discrete phase-type (DPH) graph.
"""

from __future__ import annotations

import numpy as np

from . import _core

__all__ = ["ReferenceGraph", "from_description"]


def _opt(r):
    return None if r is None else np.ascontiguousarray(r, dtype=np.float64)


def _add_defect_edge(n_vertices, src, dst, weight, extra=None):
    """Append an explicit edge 0 -> absorbing vertex carrying 1 - sum(IPV).

    The C library treats the starting vertex like any other vertex in
    ptd_expected_waiting_time / ptd_random_sample: its out-weights are
    normalised to jump probabilities, so an initial distribution summing to
    < 1 is silently *renormalised* there (E[T | no defect]), while the pdf/cdf
    and pmf contexts use the raw weights (cdf(inf) = 1 - defect). An explicit
    edge to an absorbing vertex makes both agree (T = 0 with prob. defect).
    """
    src = np.asarray(src, dtype=np.int64)
    dst = np.asarray(dst, dtype=np.int64)
    weight = np.asarray(weight, dtype=np.float64)
    start = src == 0
    defect = 1.0 - float(weight[start].sum())
    if defect <= 1e-12:
        return src, dst, weight, extra, 0.0
    has_out = np.zeros(int(n_vertices), dtype=bool)
    has_out[src] = True
    absorbing = np.flatnonzero(~has_out[1:]) + 1
    if absorbing.size == 0:
        raise ValueError("initial distribution sums to < 1 but the graph has no absorbing vertex")
    src = np.r_[src, 0]
    dst = np.r_[dst, absorbing[0]]
    weight = np.r_[weight, defect]
    if extra is not None:
        extra = np.vstack([extra, np.zeros((1, extra.shape[1]))])
    return src, dst, weight, extra, defect


class ReferenceGraph:
    """A C ``ptd_graph`` built from edge arrays; freed when this object dies.

    ``explicit_defect`` (default True): if the out-weights of vertex 0 sum to
    less than 1, add an edge 0 -> (first absorbing vertex) with the missing
    mass, so that moments, samples and the pdf/pmf all describe the same
    defective distribution. With False the C library sees the raw graph
    (moments and samples are then conditional on no defect; see README).
    """

    def __init__(self, n_vertices, src, dst, weight, discrete=False, explicit_defect=True):
        src = np.ascontiguousarray(src, dtype=np.int64)
        dst = np.ascontiguousarray(dst, dtype=np.int64)
        weight = np.ascontiguousarray(weight, dtype=np.float64)
        self.input_defect = 0.0
        if explicit_defect:
            src, dst, weight, _, self.input_defect = _add_defect_edge(n_vertices, src, dst, weight)
        self._g = _core._Graph(
            int(n_vertices),
            np.ascontiguousarray(src),
            np.ascontiguousarray(dst),
            np.ascontiguousarray(weight),
            bool(discrete),
        )

    @classmethod
    def parameterized(
        cls, n_vertices, src, dst, coefficients, weight=None, discrete=False, explicit_defect=True
    ):
        """Parameterized C graph: edge weight = coefficients[e] @ theta (no constant term).

        Edges out of the starting vertex 0 are initial-distribution (IPV) edges
        with the fixed weight ``weight[e]`` (``weight`` is (E,), only its entries
        at ``src == 0`` are used; default 1.0). Set theta with
        :meth:`update_weights` before computing anything.
        """
        src = np.ascontiguousarray(src, dtype=np.int64)
        coefficients = np.ascontiguousarray(coefficients, dtype=np.float64)
        if coefficients.ndim != 2:
            raise ValueError("coefficients must have shape (E, P)")
        dst = np.ascontiguousarray(dst, dtype=np.int64)
        if weight is None:
            weight = np.ones(len(src))
        weight = np.asarray(weight, dtype=np.float64).copy()
        weight[src != 0] = 0.0  # only IPV weights matter
        self = cls.__new__(cls)
        self.input_defect = 0.0
        if explicit_defect:
            src, dst, weight, coefficients, self.input_defect = _add_defect_edge(
                n_vertices, src, dst, weight, coefficients
            )
        self._g = _core._Graph(
            int(n_vertices),
            np.ascontiguousarray(src),
            np.ascontiguousarray(dst),
            np.ascontiguousarray(coefficients),
            np.ascontiguousarray(weight),
            bool(discrete),
            True,
        )
        return self

    # -- properties ---------------------------------------------------------
    @property
    def n_vertices(self) -> int:
        return self._g.n_vertices

    @property
    def discrete(self) -> bool:
        return self._g.discrete

    @property
    def is_parameterized(self) -> bool:
        return self._g.is_parameterized

    # -- parameterized ------------------------------------------------------
    def update_weights(self, theta) -> None:
        """``ptd_graph_update_weights(graph, theta, P, use_log=false)``."""
        self._g.update_weights(np.ascontiguousarray(theta, dtype=np.float64))

    # -- moments --------------------------------------------------------------
    def expected_waiting_time(self, rewards=None) -> np.ndarray:
        """``ptd_expected_waiting_time(graph, rewards)``: one value per vertex (0 = start)."""
        return self._g.expected_waiting_time(_opt(rewards))

    def moments(self, k: int, rewards=None) -> np.ndarray:
        """[m_1..m_k] with m_i = i! * (iterated expected waiting time)[0], as phasic does.

        Continuous: m_i = E[T^i]. Discrete: NOT raw moments (see README).
        """
        return self._g.moments(int(k), _opt(rewards))

    def expectation(self, rewards=None) -> float:
        return float(self.moments(1, rewards)[0])

    def variance(self, rewards=None) -> float:
        """phasic's formula. Continuous: correct. Discrete: phasic's (wrong) DPH formula."""
        return self._g.variance(_opt(rewards))

    def covariance(self, rewards1, rewards2) -> float:
        """phasic's formula. Continuous: correct. Discrete: phasic's (wrong, asymmetric) DPH formula."""
        return self._g.covariance(_opt(rewards1), _opt(rewards2))

    def reward_transform_expectation(self, rewards) -> float:
        """``ptd_graph_reward_transform`` (discrete: ``ptd_graph_dph_reward_transform``,
        integer rewards), then ``ptd_expected_waiting_time(transformed, NULL)[0]``."""
        return self._g.reward_transform_expectation(_opt(rewards))

    # -- distribution -------------------------------------------------------
    def pdf(self, times, granularity: int = 0) -> np.ndarray:
        t = np.asarray(times, dtype=np.float64)
        return self._g.pdf_cdf(t.ravel(), int(granularity))[0].reshape(t.shape)

    def cdf(self, times, granularity: int = 0) -> np.ndarray:
        t = np.asarray(times, dtype=np.float64)
        return self._g.pdf_cdf(t.ravel(), int(granularity))[1].reshape(t.shape)

    def default_granularity(self) -> int:
        """The granularity the C library picks for ``granularity=0``."""
        return self._g.default_granularity()

    def pmf(self, ks) -> np.ndarray:
        k = np.asarray(ks, dtype=np.int64)
        return self._g.pmf_cdf(k.ravel())[0].reshape(k.shape)

    def dph_cdf(self, ks) -> np.ndarray:
        k = np.asarray(ks, dtype=np.int64)
        return self._g.pmf_cdf(k.ravel())[1].reshape(k.shape)

    def defect(self) -> float:
        """Not available: phasic 0.32.1's ``ptd_defect`` is a stub that always returns 0.0.

        Use ``1 - cdf(large t)`` / ``1 - dph_cdf(large k)`` for the library's
        view of the defect, or ``input_defect`` for the mass given on input.
        ``c_defect_stub()`` calls the stub.
        """
        raise NotImplementedError(
            "phasic 0.32.1's ptd_defect() is a stub returning 0.0; see README"
        )

    def c_defect_stub(self) -> float:
        """``ptd_defect(graph)`` as shipped (always 0.0)."""
        return self._g.defect()

    def sample(self, n: int, rewards=None, seed: int = 0) -> np.ndarray:
        """``srand(seed)`` then n x ``ptd_random_sample`` (discrete: ``ptd_dph_random_sample``)."""
        return self._g.sample(int(n), _opt(rewards), int(seed) & 0xFFFFFFFF)

    # -- introspection --------------------------------------------------------
    def edge_weights(self) -> np.ndarray:
        """Current C edge weights, in vertex order then edge order."""
        return self._g.edge_weights()

    def cache_info(self) -> dict:
        """Which cached elimination structures the C graph holds right now."""
        return self._g.cache_info()


def from_description(desc: dict) -> ReferenceGraph:
    """Build a ReferenceGraph from the dict returned by ``adapter.describe``."""
    return ReferenceGraph(
        desc["n_vertices"],
        desc["src"],
        desc["dst"],
        desc["weight"],
        discrete=desc.get("discrete", False),
    )
