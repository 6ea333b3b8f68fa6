"""Plots for phase-type models (matplotlib, imported on first use; extra ``plot``).

- [`graph`][phasejax.plot.graph]: the state-space graph of a small model (graphviz when the ``graphviz``
  package and the ``dot`` program are both there, else a layered matplotlib drawing).
- [`pdf`][phasejax.plot.pdf]: density and distribution function of a continuous distribution, with
  an optional data histogram (density-normalised) and empirical cdf.
- [`pmf`][phasejax.plot.pmf]: probability mass function of a discrete distribution, with optional
  data frequencies.
- [`sfs`][phasejax.plot.sfs]: an expected site frequency spectrum, optionally beside an observed one.

Diagnostics of inference fits (trace, marginals, pairs) are in
[`phasejax.infer.plot`][]: the model layer does not depend on inference.

Every function returns ``(fig, axes)`` and draws into ``ax=`` when given.

**Example:**

    import phasejax as pj
    from phasejax import plot

    g = pj.models.kingman(4)
    plot.graph(g)                              # edges labelled 6θ, 3θ, ...
    dist = g.compile()(jnp.array([1.0]))
    plot.pdf(dist, data=dist.sample(jax.random.key(0), (500,)))
"""

from __future__ import annotations

import io
import shutil
from collections import deque
from collections.abc import Callable, Sequence

import equinox as eqx
import numpy as np

from ._optional import pyplot

__all__ = ["graph", "pdf", "pmf", "sfs", "to_dot"]

_SUBSCRIPTS = str.maketrans("0123456789", "₀₁₂₃₄₅₆₇₈₉")
_FILL = {"start": "#dddddd", "transient": "#cfe2f3", "absorbing": "#f4c7c3"}


def _plt():
    return pyplot("phasejax.plot")


def _new_axes(ax, n_panels: int, figsize):
    """``(fig, axes)``: the given axes (flattened) or a new row of ``n_panels``."""
    plt = _plt()
    if ax is None:
        fig, axes = plt.subplots(1, n_panels, figsize=figsize, squeeze=False, layout="constrained")
        return fig, axes[0]
    axes = np.atleast_1d(np.asarray(ax, dtype=object)).ravel()
    return axes[0].figure, axes


# -- the state-space graph -----------------------------------------------------


def _param_names(graph, names):
    p = graph.n_params or 0
    if names is None:
        return ["θ"] if p == 1 else [f"θ{i}".translate(_SUBSCRIPTS) for i in range(p)]
    names = list(names)
    if len(names) != p:
        raise ValueError(f"{len(names)} parameter names for a graph with {p} parameters")
    return names


def _number(x: float) -> str:
    return f"{x:.4g}"


def _expression(base: float, coefficients: np.ndarray, names: Sequence[str]) -> str:
    """``base + c_1 name_1 + ...`` with zero terms left out (``'0'`` if all are zero)."""
    terms = [(base, "")] if base != 0 else []
    terms += [(c, name) for c, name in zip(coefficients, names) if c != 0]
    if not terms:
        return "0"
    out = ""
    for k, (c, name) in enumerate(terms):
        sign = "−" if c < 0 else "+"
        mag = abs(c)
        text = name if (name and mag == 1) else _number(mag) + name
        out += (("-" if sign == "−" else "") + text) if k == 0 else f" {sign} {text}"
    return out


def _edge_labels(graph, theta, rate_fn, names) -> list[str]:
    _, _, base, coef = graph.edge_arrays()
    if theta is None:
        names = _param_names(graph, names)
        return [_expression(b, c, names) for b, c in zip(base, coef)]
    theta = np.asarray(theta, dtype=np.float64)
    if rate_fn is None:
        if theta.shape != (coef.shape[1],):
            raise ValueError(
                f"theta has shape {theta.shape}, but the graph has {coef.shape[1]} parameters"
            )
        rates = base + coef @ theta
    else:
        rates = base + np.asarray(rate_fn(theta, coef), dtype=np.float64)
    return [_number(r) for r in rates]


def _state_label(graph, state_label: Callable | None, v: int) -> str:
    if v == 0:
        return "start"
    state = graph.states()[v]
    if state_label is not None:
        return str(state_label(state))
    return (
        str(int(state[0])) if state.size == 1 else "(" + ",".join(str(int(s)) for s in state) + ")"
    )


def _kinds(graph) -> list[str]:
    src = graph.edge_arrays()[0]
    has_out = np.zeros(graph.vertices_length(), dtype=bool)
    has_out[src] = True
    return [
        "start" if v == 0 else ("transient" if has_out[v] else "absorbing")
        for v in range(graph.vertices_length())
    ]


def _layers(graph) -> list[list[int]]:
    """Vertices by breadth-first depth from the starting vertex; unreachable ones last.

    Within a layer, vertices are ordered by the mean position of their predecessors in
    earlier layers (one barycentre sweep), ties by discovery order.
    """
    src, dst, _, _ = graph.edge_arrays()
    n = graph.vertices_length()
    succ: list[list[int]] = [[] for _ in range(n)]
    pred: list[list[int]] = [[] for _ in range(n)]
    for s, d in zip(src.tolist(), dst.tolist()):
        succ[s].append(d)
        pred[d].append(s)
    depth = np.full(n, -1)
    depth[0] = 0
    order = [0]
    queue = deque([0])
    while queue:
        v = queue.popleft()
        for w in succ[v]:
            if depth[w] < 0:
                depth[w] = depth[v] + 1
                order.append(w)
                queue.append(w)
    unreached = [v for v in range(n) if depth[v] < 0]
    depth[unreached] = depth.max() + 1
    order += unreached
    rank = {v: i for i, v in enumerate(order)}
    layers: list[list[int]] = [[] for _ in range(int(depth.max()) + 1)]
    for v in order:
        layers[depth[v]].append(v)
    position: dict[int, float] = {0: 0.0}
    for layer in layers[1:]:

        def key(v):
            placed = [position[u] for u in pred[v] if u in position]
            return (np.mean(placed) if placed else np.inf, rank[v])

        layer.sort(key=key)
        for i, v in enumerate(layer):
            position[v] = i - (len(layer) - 1) / 2
    return layers


def to_dot(
    g,
    *,
    theta=None,
    rate_fn: Callable | None = None,
    param_names: Sequence[str] | None = None,
    labels: bool = True,
    state_label: Callable | None = None,
) -> str:
    """The graph in graphviz DOT: one node per vertex (``v0`` is the start), one edge
    per graph edge, labelled as in [`graph`][phasejax.plot.graph], laid out left to right."""
    edge_labels = _edge_labels(g, theta, rate_fn, param_names) if labels else None
    kinds = _kinds(g)
    lines = [
        "digraph phasejax {",
        "  rankdir=LR;",
        '  node [style=filled, fontsize=10, fontname="Helvetica"];',
        '  edge [fontsize=9, fontname="Helvetica"];',
    ]
    shapes = {"start": "box", "transient": "ellipse", "absorbing": "doublecircle"}
    for v, kind in enumerate(kinds):
        text = _state_label(g, state_label, v).replace('"', r"\"")
        lines.append(f'  v{v} [label="{text}", shape={shapes[kind]}, fillcolor="{_FILL[kind]}"];')
    src, dst, _, _ = g.edge_arrays()
    for e, (s, d) in enumerate(zip(src.tolist(), dst.tolist())):
        attr = f' [label="{edge_labels[e]}"]' if edge_labels is not None else ""
        lines.append(f"  v{s} -> v{d}{attr};")
    lines.append("}")
    return "\n".join(lines)


def _graphviz_available() -> bool:
    try:
        import graphviz  # noqa: F401  # pyright: ignore[reportMissingImports]
    except ImportError:
        return False
    return shutil.which("dot") is not None


def graph(
    g,
    *,
    theta=None,
    rate_fn: Callable | None = None,
    param_names: Sequence[str] | None = None,
    labels: bool = True,
    state_label: Callable | None = None,
    engine: str = "auto",
    max_vertices: int = 60,
    ax=None,
    figsize=None,
):
    """Draw the state-space graph of a small [`Graph`][phasejax.Graph].

    **Arguments:**

    - `g`: the graph (the starting vertex is drawn as ``start``, absorbing vertices in red).
    - `theta`: label edges with their rates ``base + coefficients @ theta`` (or
      ``base + rate_fn(theta, coefficients)``); without it, with the expressions
      themselves (``6θ``, ``1 + 2θ₁``; names from `param_names`).
    - `labels`: ``False`` leaves the edges unlabelled.
    - `state_label`: ``state -> str`` for vertex labels (default: the state vector).
    - `engine`: ``"auto"`` (graphviz when the ``graphviz`` package and the ``dot``
      program are both available, else matplotlib), ``"graphviz"`` or ``"matplotlib"``.
      Graphviz renders a PNG shown with ``imshow``.
    - `max_vertices`: refuse larger graphs (a drawing of hundreds of states is unreadable).

    The matplotlib drawing puts vertices in columns by breadth-first depth from the
    starting vertex: each vertex is a text with ``gid="vertex"``, each edge a
    `FancyArrowPatch` with ``gid="edge"`` (parallel and
    opposite edges curve apart) and each edge label a text with ``gid="edge-label"``.

    Returns ``(fig, ax)``.
    """
    n = g.vertices_length()
    if n > max_vertices:
        raise ValueError(
            f"the graph has {n} vertices (max_vertices={max_vertices}); graph() is meant for small models"
        )
    if engine not in ("auto", "graphviz", "matplotlib"):
        raise ValueError(f"engine must be 'auto', 'graphviz' or 'matplotlib', got {engine!r}")
    if engine == "graphviz" and not _graphviz_available():
        raise ImportError(
            "engine='graphviz' needs the graphviz package (pip install graphviz) and the dot program"
        )
    use_graphviz = engine == "graphviz" or (engine == "auto" and _graphviz_available())
    layers = _layers(g)
    if figsize is None:
        figsize = (min(1.9 * len(layers) + 0.6, 18), min(0.75 * max(map(len, layers)) + 0.8, 14))
    fig, axes = _new_axes(ax, 1, figsize)
    ax = axes[0]
    ax.set_axis_off()
    if use_graphviz:
        import graphviz  # pyright: ignore[reportMissingImports]  (optional)

        source = to_dot(
            g,
            theta=theta,
            rate_fn=rate_fn,
            param_names=param_names,
            labels=labels,
            state_label=state_label,
        )
        png = graphviz.Source(source).pipe(format="png")
        ax.imshow(_plt().imread(io.BytesIO(png), format="png"))
        return fig, ax
    _draw_layered(ax, g, layers, theta, rate_fn, param_names, labels, state_label)
    return fig, ax


def _draw_layered(ax, g, layers, theta, rate_fn, param_names, labels, state_label):
    from matplotlib.patches import FancyArrowPatch

    pos = {}
    for x, layer in enumerate(layers):
        for i, v in enumerate(layer):
            pos[v] = (float(x), (len(layer) - 1) / 2 - i)
    kinds = _kinds(g)
    boxes = {}
    for v, (x, y) in pos.items():
        text = ax.text(
            x,
            y,
            _state_label(g, state_label, v),
            ha="center",
            va="center",
            fontsize=8,
            zorder=3,
            gid="vertex",
            bbox=dict(boxstyle="round,pad=0.3", facecolor=_FILL[kinds[v]], edgecolor="0.3", lw=0.8),
        )
        boxes[v] = text.get_bbox_patch()
    edge_labels = _edge_labels(g, theta, rate_fn, param_names) if labels else None
    src, dst, _, _ = g.edge_arrays()
    pairs_ = set(zip(src.tolist(), dst.tolist()))
    seen: dict[tuple[int, int], int] = {}
    for e, (s, d) in enumerate(zip(src.tolist(), dst.tolist())):
        k = seen.get((s, d), 0)
        seen[(s, d)] = k + 1
        (x1, y1), (x2, y2) = pos[s], pos[d]
        if k == 0 and x2 == x1 + 1 and (d, s) not in pairs_:
            rad = 0.0  # a lone edge to the next column: straight
        else:
            rad = (0.35 if x1 == x2 and abs(y1 - y2) > 1 else 0.12) + 0.18 * k
        # arrows above the vertex boxes: the boxes are drawn (and placed) first, so the
        # arrows clip against their current outlines
        arrow = FancyArrowPatch(
            (x1, y1),
            (x2, y2),
            arrowstyle="-|>",
            mutation_scale=9,
            lw=0.8,
            color="0.25",
            connectionstyle=f"arc3,rad={rad}",
            patchA=boxes[s],
            patchB=boxes[d],
            zorder=4,
            gid="edge",
        )
        ax.add_patch(arrow)
        if edge_labels is not None:
            # midpoint of the quadratic Bezier curve of arc3 (in data coordinates)
            mx, my = (x1 + x2) / 2 + 0.5 * rad * (y2 - y1), (y1 + y2) / 2 - 0.5 * rad * (x2 - x1)
            ax.text(
                mx,
                my,
                edge_labels[e],
                ha="center",
                va="center",
                fontsize=7,
                zorder=5,
                gid="edge-label",
                bbox=dict(boxstyle="round,pad=0.1", facecolor="white", edgecolor="none", alpha=0.8),
            )
    height = max(map(len, layers))
    ax.set_xlim(-0.6, len(layers) - 0.4)
    ax.set_ylim(-(height - 1) / 2 - 0.6, (height - 1) / 2 + 0.6)


# -- distributions --------------------------------------------------------------


@eqx.filter_jit
def _call(dist, method: str, *args):
    """``dist.method(*args)``, compiled once per model structure, method and argument
    shapes (op-by-op evaluation of a density compiles its series at every call)."""
    return getattr(dist, method)(*args)


def _mean_sd(dist) -> tuple[float, float]:
    m1, m2 = (float(m) for m in np.asarray(_call(dist, "moments", 2)))
    return m1, float(np.sqrt(max(m2 - m1**2, 0.0)))


def pdf(
    dist,
    times=None,
    data=None,
    *,
    cdf: bool = True,
    bins: int = 30,
    n_points: int = 200,
    label: str = "model",
    color: str = "C0",
    ax=None,
    figsize=(9.0, 3.2),
):
    """Density (and distribution function) of a continuous distribution.

    **Arguments:**

    - `dist`: a [`PhaseType`][phasejax.PhaseType] or [`EpochPhaseType`][phasejax.EpochPhaseType]
      (anything with ``pdf``, ``cdf`` and ``moments``).
    - `times`: where to evaluate (default ``n_points`` from 0 to ``mean + 4 sd``, or
      to the largest observation if beyond).
    - `data`: observations, drawn as a density-normalised histogram of ``bins`` bars on
      the pdf panel and an empirical cdf (a step line) on the cdf panel.
    - `cdf`: draw the cdf panel (when making a new figure).
    - `ax`: one axes (the pdf only) or two (pdf, cdf).

    The first line of the pdf panel is the pdf at ``times``, of the cdf panel the cdf.
    Returns ``(fig, axes)``, ``axes`` an array of the panels.
    """
    data = None if data is None else np.ravel(np.asarray(data, dtype=np.float64))
    if times is None:
        mean, sd = _mean_sd(dist)
        upper = mean + 4 * sd
        if data is not None and data.size:
            upper = max(upper, float(data.max()))
        times = np.linspace(0.0, upper, int(n_points))
    times = np.asarray(times, dtype=np.float64)
    fig, axes = _new_axes(ax, 2 if cdf else 1, figsize)
    values = [_call(dist, method, times) for method in ("pdf", "cdf")[: len(axes)]]
    axes[0].plot(times, np.asarray(values[0]), color=color, lw=1.8, label=label)
    if data is not None:
        axes[0].hist(data, bins=bins, density=True, color="0.6", alpha=0.5, label="data")
    axes[0].set_xlabel("t")
    axes[0].set_ylabel("density")
    if len(axes) > 1:
        axes[1].plot(times, np.asarray(values[1]), color=color, lw=1.8, label=label)
        if data is not None:
            x = np.sort(data)
            axes[1].step(
                x, np.arange(1, x.size + 1) / x.size, where="post", color="0.4", lw=1, label="data"
            )
        axes[1].set_xlabel("t")
        axes[1].set_ylabel("P(T ≤ t)")
    if data is not None:
        for a in axes:
            a.legend(frameon=False)
    return fig, axes


def _grouped_bars(ax, x, first, second, width, labels, first_kwargs=None):
    """One bar per entry of ``first`` (centred at ``x``), or two side by side with ``second``."""
    first_kwargs = first_kwargs or {}
    if second is None:
        return ax.bar(x, first, width=width, color="C0", label=labels[0], **first_kwargs), None
    w = width / 2
    a = ax.bar(x - w / 2, first, width=w, color="C0", label=labels[0], **first_kwargs)
    b = ax.bar(x + w / 2, second, width=w, color="C1", label=labels[1])
    ax.legend(frameon=False)
    return a, b


def pmf(
    dist,
    ks=None,
    data=None,
    *,
    width: float = 0.8,
    labels=("pmf", "data"),
    ax=None,
    figsize=(6.0, 3.2),
):
    """Probability mass function of a [`DiscretePhaseType`][phasejax.DiscretePhaseType] as bars.

    `ks`: the counts to show (default ``0..ceil(mean + 4 sd)``, starting at 1 when the
    defect ``P(tau = 0)`` is zero and the data hold no zeros; extended to the largest
    observation). `data`: observed counts, whose relative frequencies (over all
    observations) are drawn as a second bar beside each pmf bar.

    One bar per entry of ``ks`` (plus one per entry for the data). Returns ``(fig, ax)``.
    """
    data = None if data is None else np.ravel(np.asarray(data))
    if ks is None:
        mean, sd = _mean_sd(dist)
        upper = int(np.ceil(mean + 4 * sd))
        if data is not None and data.size:
            upper = max(upper, int(data.max()))
        zero = float(dist.defect()) > 0 or (data is not None and np.any(data == 0))
        ks = np.arange(0 if zero else 1, upper + 1)
    ks = np.asarray(ks, dtype=np.int64)
    fig, axes = _new_axes(ax, 1, figsize)
    ax = axes[0]
    freq = None
    if data is not None:
        freq = np.array([np.count_nonzero(data == k) for k in ks]) / max(data.size, 1)
    _grouped_bars(ax, ks.astype(float), np.asarray(_call(dist, "pmf", ks)), freq, width, labels)
    ax.set_xlabel("k")
    ax.set_ylabel("P(K = k)")
    return fig, ax


def sfs(
    expected,
    observed=None,
    *,
    sd=None,
    width: float = 0.8,
    labels=("expected", "observed"),
    ax=None,
    figsize=(6.0, 3.2),
):
    """Site frequency spectrum ``ξ_1..ξ_{n-1}`` as bars.

    `expected`: ``n - 1`` values (e.g. ``jax.vmap(dist.mean)(sfs_rewards)``);
    `observed`: ``n - 1`` values drawn as a second bar beside each; `sd`: standard
    deviations of the expected values, drawn as error bars (``±sd``).

    One bar per entry (``n - 1``; twice that with `observed`). Returns ``(fig, ax)``.
    """
    expected = np.ravel(np.asarray(expected, dtype=np.float64))
    m = expected.size
    if observed is not None:
        observed = np.ravel(np.asarray(observed, dtype=np.float64))
        if observed.size != m:
            raise ValueError(f"observed has {observed.size} entries, expected has {m}")
    extra = {}
    if sd is not None:
        sd = np.ravel(np.asarray(sd, dtype=np.float64))
        if sd.size != m:
            raise ValueError(f"sd has {sd.size} entries, expected has {m}")
        extra = {"yerr": sd, "capsize": 2, "error_kw": {"lw": 0.8}}
    fig, axes = _new_axes(ax, 1, figsize)
    ax = axes[0]
    i = np.arange(1, m + 1)
    _grouped_bars(ax, i.astype(float), expected, observed, width, labels, extra)
    ax.set_xticks(i)
    ax.set_xlabel("i (number of samples subtended)")
    ax.set_ylabel(r"$\xi_i$")
    return fig, ax
