"""Optional dependencies, imported on first use, with an ImportError naming the extra.

[`phasejax.plot`][] (model plots) and [`phasejax.infer.plot`][] (fit diagnostics) take
matplotlib from here, so neither imports the other and the core never imports inference;
the numpyro distributions of `phasejax.infer` and `phasejax.popgen` take numpyro.
"""

from __future__ import annotations


def _missing(module: str, package: str, extra: str) -> ImportError:
    return ImportError(
        f"{module} needs {package}: pip install {package} (or install phasejax with "
        f"the '{extra}' extra: pip install 'phasejax[{extra}]')"
    )


def pyplot(module: str):
    """``matplotlib.pyplot``, or an ImportError naming ``module`` and the ``plot`` extra."""
    try:
        import matplotlib.pyplot as plt
    except ImportError as err:
        raise _missing(module, "matplotlib", "plot") from err
    return plt


def numpyro_distributions(module: str):
    """``numpyro.distributions``, or an ImportError naming ``module`` and the ``numpyro``
    extra."""
    try:
        import numpyro.distributions as dist
    except ImportError as err:
        raise _missing(module, "numpyro", "numpyro") from err
    return dist
