"""Equivalence tests: phasejax against the C library of phasic 0.32.1.

The reference values come from ``phasic_reference`` (pybind11 over phasic's C library,
built from ``reference/``); the ``phasic`` Python package is never imported. Without
``phasic_reference`` every test module of this directory is reported as skipped, with
the reason below, and none of them is imported.
"""

import pytest

try:
    import phasic_reference  # noqa: F401
except ImportError as error:  # pragma: no cover - depends on the environment
    _SKIP_REASON = (
        "equivalence tests need `phasic_reference` (the pybind11 module over phasic 0.32.1's "
        "C library): `pip install --no-deps phasic==0.32.1 && pip install --no-build-isolation "
        f"./reference` ({error})"
    )

    class _SkippedModule(pytest.Module):
        def collect(self):
            pytest.skip(_SKIP_REASON, allow_module_level=True)

    def pytest_pycollect_makemodule(module_path, parent):
        return _SkippedModule.from_parent(parent, path=module_path)


import jax

jax.config.update("jax_enable_x64", True)
