"""Plots draw the expected artists (Agg backend)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from phasejax import infer

mpl = pytest.importorskip("matplotlib")
mpl.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.collections import PathCollection  # noqa: E402


@pytest.fixture(scope="module")
def result():
    x0 = jax.random.normal(jax.random.PRNGKey(0), (12, 2))
    return infer.svgd(lambda x: -0.5 * jnp.sum(x**2), x0, steps=40, thin=10)


def test_trace_plot(result):
    fig, axes = infer.plot.trace(result, names=["a", "b"], max_particles=5)
    assert len(axes) == 3
    assert len(axes[0].lines) == 1
    assert all(len(ax.lines) == 5 + 1 for ax in axes[1:])
    np.testing.assert_allclose(axes[1].lines[-1].get_xdata(), [10, 20, 30, 40])
    plt.close(fig)
    fig, axes = infer.plot.trace(np.asarray(result.trace))
    assert len(axes) == 1 and len(axes[0].lines) == 1
    plt.close(fig)


def test_marginals_plot(result):
    fig, axes = infer.plot.marginals(result, bins=7, truth=[0.0, 0.0])
    assert len(axes) == 2
    for ax in axes:
        assert len(ax.patches) == 7
        assert len(ax.lines) == 2  # mean and truth
    plt.close(fig)


def test_pairs_plot(result):
    x = np.concatenate([np.asarray(result.particles), np.ones((12, 1))], axis=1)
    fig, axes = infer.plot.pairs(x, bins=5, truth=[0.0, 0.0, 1.0], names=["a", "b", "c"])
    assert axes.shape == (3, 3)
    for r in range(3):
        for c in range(3):
            ax = axes[r, c]
            if r == c:
                assert len(ax.patches) == 5 and len(ax.lines) == 1
            elif r > c:
                assert sum(isinstance(a, PathCollection) for a in ax.collections) == 1
                assert len(ax.lines) == 1
            else:
                assert not ax.axison
    plt.close(fig)


def test_plot_accepts_fit_result_like_objects(result):
    fig, axes = infer.plot.marginals(result.particles[:, 0], bins=4)
    assert len(axes) == 1 and len(axes[0].patches) == 4
    plt.close(fig)
    with pytest.raises(ValueError, match="names"):
        infer.plot.marginals(result, names=["only one"])


def test_clear_error_without_matplotlib(monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "matplotlib.pyplot", None)
    with pytest.raises(ImportError, match=r"phasejax\.infer\.plot needs matplotlib"):
        infer.plot.trace(np.zeros(3))
