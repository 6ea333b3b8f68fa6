"""phasejax.plot: each function draws what it should (Agg backend)."""

import io
import subprocess
import sys
import types

import jax.numpy as jnp
import numpy as np
import pytest
from scipy.linalg import expm
from scipy.special import comb

import phasejax as pj
from phasejax import infer

mpl = pytest.importorskip("matplotlib")
mpl.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.container import BarContainer  # noqa: E402
from matplotlib.patches import FancyArrowPatch  # noqa: E402

from phasejax import plot  # noqa: E402


def _by_gid(artists, gid):
    return [a for a in artists if a.get_gid() == gid]


def _bars(ax):
    return [c for c in ax.containers if isinstance(c, BarContainer)]


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    plt.close("all")


# -- graph ------------------------------------------------------------------------


def test_graph_draws_every_vertex_and_edge_in_bfs_columns():
    g = pj.models.kingman(4)
    fig, ax = plot.graph(g, engine="matplotlib")
    vertices = _by_gid(ax.texts, "vertex")
    edges = _by_gid(ax.patches, "edge")
    labels = _by_gid(ax.texts, "edge-label")
    assert len(vertices) == g.vertices_length() == 6
    assert len(edges) == len(labels) == g.edges_length() == 6
    assert all(isinstance(e, FancyArrowPatch) for e in edges)
    where = {t.get_text(): t.get_position() for t in vertices}
    # columns are breadth-first depths from the starting vertex
    assert where["start"][0] == 0
    assert where["(4,0,0,0)"][0] == 1
    assert where["(2,1,0,0)"][0] == 2
    assert where["(1,0,1,0)"][0] == where["(0,2,0,0)"][0] == 3
    assert where["(0,0,0,1)"][0] == 4
    # labels are the rate expressions, in edge order: 1 (start), 6θ, 2θ, 1θ, 1θ, 1θ
    assert [t.get_text() for t in labels] == ["1", "6θ", "θ", "2θ", "θ", "θ"]
    fig.canvas.draw()  # arrows clip against the vertex boxes at draw time


def test_graph_labels_rates_at_theta_and_curves_opposite_edges():
    g = pj.models.rabbit_flooding(2)
    theta = np.array([2.0, 3.0])
    fig, ax = plot.graph(g, theta=theta, engine="matplotlib")
    _, _, base, coef = g.edge_arrays()
    labels = [t.get_text() for t in _by_gid(ax.texts, "edge-label")]
    assert [float(x) for x in labels] == pytest.approx(base + coef @ theta)
    # (1,0) <-> (0,1): opposite edges must not be drawn straight over each other
    src, dst, _, _ = g.edge_arrays()
    pairs = set(zip(src.tolist(), dst.tolist()))
    edges = _by_gid(ax.patches, "edge")
    for e, (s, d) in enumerate(zip(src.tolist(), dst.tolist())):
        if (d, s) in pairs:
            assert edges[e].get_connectionstyle().rad != 0
    fig.canvas.draw()


def test_graph_nonlinear_rate_fn_names_and_no_labels():
    g = pj.models.mm1_capacity(2)
    fig, ax = plot.graph(g, param_names=["λ", "μ"], engine="matplotlib")
    assert sorted({t.get_text() for t in _by_gid(ax.texts, "edge-label")}) == ["1", "λ", "μ"]
    fig, ax = plot.graph(
        g, theta=[0.0, np.log(2.0)], rate_fn=lambda th, c: c @ np.exp(th), engine="matplotlib"
    )
    assert sorted({t.get_text() for t in _by_gid(ax.texts, "edge-label")}) == ["1", "2"]
    fig, ax = plot.graph(g, labels=False, engine="matplotlib")
    assert (
        not _by_gid(ax.texts, "edge-label") and len(_by_gid(ax.patches, "edge")) == g.edges_length()
    )
    with pytest.raises(ValueError, match="parameter names"):
        plot.graph(g, param_names=["only one"], engine="matplotlib")


def test_graph_into_given_axes_and_size_limit():
    fig, ax0 = plt.subplots()
    g = pj.models.erlang(3)
    fig2, ax = plot.graph(g, ax=ax0, engine="matplotlib")
    assert fig2 is fig and ax is ax0
    assert len(_by_gid(ax0.texts, "vertex")) == g.vertices_length()
    with pytest.raises(ValueError, match="max_vertices"):
        plot.graph(pj.models.kingman(8), max_vertices=20)


def test_graph_unreachable_vertices_get_a_last_column():
    g = pj.Graph(1)
    a, b, c = (g.find_or_create_vertex([i]) for i in (1, 2, 3))
    g.starting_vertex().add_edge(a, 1.0)
    a.add_edge(b, 2.0)
    fig, ax = plot.graph(g, engine="matplotlib")  # vertex (3,) has no in-edges
    where = {t.get_text(): t.get_position() for t in _by_gid(ax.texts, "vertex")}
    assert where["3"][0] == 3 and where["2"][0] == 2


def test_to_dot_has_one_line_per_vertex_and_edge():
    g = pj.models.two_island(1, 1)
    dot = plot.to_dot(g)
    lines = dot.splitlines()
    assert sum("->" in line for line in lines) == g.edges_length()
    assert (
        sum(line.strip().startswith("v") and "->" not in line for line in lines)
        == g.vertices_length()
    )
    assert 'label="θ₂"' in dot or 'label="θ₃"' in dot  # migration edges


def test_graph_uses_graphviz_when_available(monkeypatch):
    buf = io.BytesIO()
    plt.imsave(buf, np.zeros((4, 6, 3)), format="png")
    calls = []

    class Source:
        def __init__(self, source):
            calls.append(source)

        def pipe(self, format):
            assert format == "png"
            return buf.getvalue()

    monkeypatch.setitem(sys.modules, "graphviz", types.SimpleNamespace(Source=Source))
    monkeypatch.setattr(
        plot.shutil, "which", lambda name: "/usr/bin/dot" if name == "dot" else None
    )
    g = pj.models.kingman(3)
    fig, ax = plot.graph(g)
    assert len(ax.images) == 1 and ax.images[0].get_array().shape[:2] == (4, 6)
    assert calls == [plot.to_dot(g)]
    monkeypatch.setattr(plot.shutil, "which", lambda name: None)
    fig, ax = plot.graph(g)  # no dot program: matplotlib
    assert not ax.images and len(_by_gid(ax.texts, "vertex")) == g.vertices_length()
    with pytest.raises(ImportError, match="graphviz"):
        plot.graph(g, engine="graphviz")


# -- distributions ---------------------------------------------------------------
# Reference values from dense matrix exponentials and closed forms (independent of the
# uniformization the plots call).


def _dense_pdf_cdf(graph, theta, times):
    alpha, s, _, _ = graph.as_matrices(theta)
    exit_ = -s.sum(axis=1)
    probs = np.array([alpha @ expm(s * t) for t in times])
    return probs @ exit_, 1.0 - probs.sum(axis=1)


@pytest.fixture(scope="module")
def kingman5():
    return pj.models.kingman(5).compile()(jnp.array([1.0]))


def test_pdf_curves_equal_the_distribution(kingman5):
    data = np.random.default_rng(0).gamma(4.0, 0.4, size=200)
    fig, axes = plot.pdf(kingman5, data=data, bins=12)
    assert len(axes) == 2
    t = axes[0].lines[0].get_xdata()
    k = np.arange(2, 6)
    mean, var = np.sum(2 / (k * (k - 1))), np.sum((2 / (k * (k - 1))) ** 2)
    assert t[0] == 0 and t[-1] == pytest.approx(max(mean + 4 * np.sqrt(var), data.max()))
    pdf, cdf = _dense_pdf_cdf(pj.models.kingman(5), [1.0], t)
    np.testing.assert_allclose(axes[0].lines[0].get_ydata(), pdf, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(axes[1].lines[0].get_xdata(), t)
    np.testing.assert_allclose(axes[1].lines[0].get_ydata(), cdf, rtol=1e-9, atol=1e-12)
    assert len(axes[0].patches) == 12  # the histogram
    heights = np.array([p.get_height() for p in axes[0].patches])
    widths = np.array([p.get_width() for p in axes[0].patches])
    assert np.sum(heights * widths) == pytest.approx(1.0)  # density-normalised
    ecdf = axes[1].lines[1]
    assert ecdf.get_ydata()[-1] == pytest.approx(1.0) and len(ecdf.get_xdata()) == data.size


def test_pdf_given_times_and_one_axes(kingman5):
    fig, ax = plt.subplots()
    times = np.array([0.1, 0.5, 2.0])
    fig2, axes = plot.pdf(kingman5, times, ax=ax)
    assert fig2 is fig and len(axes) == 1 and len(ax.lines) == 1
    np.testing.assert_allclose(ax.lines[0].get_xdata(), times)
    np.testing.assert_allclose(
        ax.lines[0].get_ydata(), _dense_pdf_cdf(pj.models.kingman(5), [1.0], times)[0], rtol=1e-9
    )
    fig, axes = plot.pdf(kingman5, times, cdf=False)
    assert len(axes) == 1


def test_pdf_of_an_epoch_model():
    rates, tau = np.array([1.0, 0.2]), 0.5
    dist = pj.models.PiecewiseKingman(3)(jnp.asarray(rates), jnp.array([tau]))
    fig, axes = plot.pdf(dist, np.linspace(0.0, 4.0, 25), cdf=False)
    t = axes[0].lines[0].get_xdata()
    assert len(axes) == 1 and len(t) == 25
    g = pj.models.kingman(3)
    alpha, s1, _, _ = g.as_matrices([rates[0]])
    _, s2, _, _ = g.as_matrices([rates[1]])
    entry = alpha @ expm(s1 * tau)
    expected = [
        alpha @ expm(s1 * u) @ -s1.sum(1) if u < tau else entry @ expm(s2 * (u - tau)) @ -s2.sum(1)
        for u in t
    ]
    np.testing.assert_allclose(axes[0].lines[0].get_ydata(), expected, rtol=1e-9, atol=1e-12)


def _segregating_sites_pmf(n, theta, k):
    """Tavare (1984): P(S = k) under the standard coalescent, mutation rate theta / 2."""
    i = np.arange(2, n + 1)[:, None]
    terms = (
        (-1.0) ** i
        * comb(n - 1, i - 1)
        * (i - 1)
        / (theta + i - 1)
        * (theta / (theta + i - 1)) ** k
    )
    return terms.sum(axis=0)


def test_pmf_bars_and_data_frequencies(kingman5):
    g = pj.models.kingman(5)
    mu = 1.5  # mutations per unit of branch length: theta = 2 mu
    counts = pj.mutation_counts(kingman5, mu, rewards=pj.models.sfs_rewards(g).sum(axis=0))
    data = np.random.default_rng(1).poisson(4.0, size=300)
    fig, ax = plot.pmf(counts, data=data)
    model_bars, data_bars = _bars(ax)
    ks = np.round([b.get_x() + b.get_width() for b in model_bars]).astype(int)  # bars sit left of k
    np.testing.assert_array_equal(ks, np.arange(ks.size))  # P(K = 0) > 0: starts at 0
    assert len(model_bars) == len(data_bars) == ks.size >= data.max() + 1
    np.testing.assert_allclose(
        [b.get_height() for b in model_bars], _segregating_sites_pmf(5, 2 * mu, ks), rtol=1e-9
    )
    np.testing.assert_allclose(
        [b.get_height() for b in data_bars], [np.mean(data == k) for k in ks]
    )


def test_pmf_of_a_dph_without_defect_starts_at_one():
    # geometric number of steps: stay with probability 0.6
    dist = pj.Graph.from_matrices(np.array([1.0]), np.array([[0.6]]), discrete=True).compile()()
    fig, ax = plot.pmf(dist)
    (bars,) = _bars(ax)
    assert bars[0].get_x() + bars[0].get_width() / 2 == 1
    heights = np.array([b.get_height() for b in bars])
    np.testing.assert_allclose(heights, 0.4 * 0.6 ** np.arange(len(heights)), rtol=1e-12)
    fig, ax = plot.pmf(dist, ks=[0, 1, 2])
    np.testing.assert_allclose([b.get_height() for b in _bars(ax)[0]], [0.0, 0.4, 0.24], atol=1e-15)


def test_sfs_bars():
    n = 5
    expected = jnp.asarray(2 / np.arange(1, n))
    fig, ax = plot.sfs(expected)
    (bars,) = _bars(ax)
    assert len(bars) == n - 1
    np.testing.assert_allclose([b.get_height() for b in bars], 2 / np.arange(1, n), rtol=1e-12)
    sd = np.array([1.0, 0.5, 0.4, 0.3])
    observed = np.array([2.2, 0.9, 0.7, 0.4])
    fig, ax = plot.sfs(expected, observed, sd=sd)
    e, o = _bars(ax)
    assert len(e) == len(o) == n - 1 and e.errorbar is not None
    np.testing.assert_allclose([b.get_height() for b in o], observed)
    assert list(ax.get_xticks()) == [1, 2, 3, 4]
    with pytest.raises(ValueError, match="observed"):
        plot.sfs(expected, observed[:3])


# -- layering, optional dependency ---------------------------------------------------


def test_model_plots_do_not_import_inference():
    """phasejax.plot sits below phasejax.infer: importing it loads no inference module,
    and the fit diagnostics have one public name each, in phasejax.infer.plot."""
    code = (
        "import sys, phasejax.plot as p; "
        "assert not [m for m in sys.modules if m.startswith('phasejax.infer')], sys.modules; "
        "assert not hasattr(p, 'trace') and not hasattr(p, 'plot_trace')"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
    assert not hasattr(infer.plot, "plot_trace")
    fig, axes = infer.plot.marginals(np.random.default_rng(0).normal(size=(20, 2)), bins=5)
    assert [len(ax.patches) for ax in axes] == [5, 5]


def test_clear_error_without_matplotlib(monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib.pyplot", None)
    with pytest.raises(ImportError, match=r"phasejax\.plot needs matplotlib.*phasejax\[plot\]"):
        plot.sfs([1.0, 0.5])


def test_import_does_not_load_matplotlib():
    code = "import sys, phasejax.plot; assert 'matplotlib' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)
