"""Diagnostic plots for SVGD fits (matplotlib, imported on first use; extra ``plot``).

- [`trace`][phasejax.infer.plot.trace]: mean log density per step and particle paths.
- [`marginals`][phasejax.infer.plot.marginals]: a histogram per parameter.
- [`pairs`][phasejax.infer.plot.pairs]: a pair plot.

Each function takes a [`FitResult`][phasejax.infer.FitResult], an
[`SVGDResult`][phasejax.infer.SVGDResult], or plain arrays, draws into a new figure (or the
given ``axes``), and returns ``(fig, axes)``.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from .._optional import pyplot


def _plt():
    return pyplot("phasejax.infer.plot")


def _particles(result) -> np.ndarray:
    x = np.asarray(getattr(result, "particles", result))
    if x.ndim == 1:
        x = x[:, None]
    if x.ndim != 2:
        raise ValueError(f"expected particles of shape (n_particles, n_params), got {x.shape}")
    return x


def _names(names, p):
    if names is None:
        return [f"theta[{i}]" for i in range(p)]
    names = list(names)
    if len(names) != p:
        raise ValueError(f"{len(names)} names for {p} parameters")
    return names


def _truth(truth, p):
    if truth is None:
        return None
    t = np.atleast_1d(np.asarray(truth, dtype=float))
    if t.shape != (p,):
        raise ValueError(f"truth must have {p} entries, got shape {t.shape}")
    return t


def trace(
    result,
    *,
    names: Sequence[str] | None = None,
    max_particles: int = 50,
    thin: int | None = None,
    axes=None,
):
    """Mean log density per step, and each parameter's particle paths over ``history``.

    ``result``: a fit/SVGD result, or a 1-D trace array (one panel). Panel 0 holds one
    line (the trace); panel ``i + 1`` holds ``min(P, max_particles)`` particle paths
    and their mean (one more line). ``thin``: steps between snapshots, read from the
    result's length when not given.
    """
    plt = _plt()
    if hasattr(result, "trace") and hasattr(result, "history"):
        values, history = np.asarray(result.trace), np.asarray(result.history)
        if history.shape[0] == 0:
            history = None
    else:
        values, history = np.asarray(result), None
    p = 0 if history is None else history.shape[2]
    names = _names(names, p) if p else []
    if axes is None:
        fig, axes = plt.subplots(1 + p, 1, figsize=(7, 2.2 * (1 + p)), sharex=True, squeeze=False)
        axes = axes[:, 0]
    else:
        axes = np.atleast_1d(axes)
        fig = axes[0].figure
    ax = axes[0]
    ax.plot(np.arange(1, values.shape[0] + 1), values, color="C0", lw=1)
    ax.set_ylabel("mean log density")
    if history is not None:
        if thin is None:
            thin = max(values.shape[0] // history.shape[0], 1)
        steps = thin * np.arange(1, history.shape[0] + 1)
        k = min(history.shape[1], int(max_particles))
        for i in range(p):
            axi = axes[i + 1]
            axi.plot(steps, history[:, :k, i], color="C0", alpha=0.3, lw=0.7)
            axi.plot(steps, history[:, :, i].mean(axis=1), color="C3", lw=1.5)
            axi.set_ylabel(names[i])
    axes[-1].set_xlabel("step")
    return fig, axes


def marginals(result, *, names: Sequence[str] | None = None, bins: int = 30, truth=None, axes=None):
    """A histogram per parameter (``bins`` bars), a line at the particle mean and, if
    given, one at ``truth``."""
    plt = _plt()
    x = _particles(result)
    p = x.shape[1]
    names, truth = _names(names, p), _truth(truth, p)
    if axes is None:
        fig, axes = plt.subplots(1, p, figsize=(3.2 * p, 2.8), squeeze=False)
        axes = axes[0]
    else:
        axes = np.atleast_1d(axes)
        fig = axes[0].figure
    for i in range(p):
        ax = axes[i]
        ax.hist(x[:, i], bins=bins, density=True, color="C0", alpha=0.6)
        ax.axvline(x[:, i].mean(), color="C3", lw=1.5, label="mean")
        if truth is not None:
            ax.axvline(truth[i], color="k", ls="--", lw=1.2, label="truth")
        ax.set_xlabel(names[i])
    return fig, axes


def pairs(result, *, names: Sequence[str] | None = None, bins: int = 30, truth=None, axes=None):
    """Pair plot: histograms on the diagonal, scatter plots below it, empty above.

    Diagonal panels hold ``bins`` bars (plus a ``truth`` line); each lower panel one
    scatter collection (plus a ``truth`` marker).
    """
    plt = _plt()
    x = _particles(result)
    p = x.shape[1]
    names, truth = _names(names, p), _truth(truth, p)
    if axes is None:
        fig, axes = plt.subplots(p, p, figsize=(2.6 * p, 2.6 * p), squeeze=False)
    else:
        axes = np.asarray(axes).reshape(p, p)
        fig = axes[0, 0].figure
    for r in range(p):
        for c in range(p):
            ax = axes[r, c]
            if r == c:
                ax.hist(x[:, c], bins=bins, density=True, color="C0", alpha=0.6)
                if truth is not None:
                    ax.axvline(truth[c], color="k", ls="--", lw=1.2)
            elif r > c:
                ax.scatter(x[:, c], x[:, r], s=6, color="C0", alpha=0.6)
                if truth is not None:
                    ax.plot([truth[c]], [truth[r]], marker="x", color="k", ms=8, ls="none")
            else:
                ax.axis("off")
            if r == p - 1:
                ax.set_xlabel(names[c])
            if c == 0 and r > 0:
                ax.set_ylabel(names[r])
    return fig, axes
