"""What the plotting modules share: matplotlib, imported on first use.

[`phasejax.plot`][] (model plots) and [`phasejax.infer.plot`][] (fit diagnostics) both
sit on this module, so neither imports the other and the core never imports inference.
"""

from __future__ import annotations


def pyplot(module: str):
    """``matplotlib.pyplot``, or an ImportError naming ``module`` and the ``plot`` extra."""
    try:
        import matplotlib.pyplot as plt
    except ImportError as err:
        raise ImportError(
            f"{module} needs matplotlib: pip install matplotlib (or install phasejax with "
            "the 'plot' extra: pip install 'phasejax[plot]')"
        ) from err
    return plt
