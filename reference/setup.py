"""Build phasic_reference._core against the installed phasic==0.32.1 wheel.

The phasic package is located with importlib.util.find_spec, which does not
execute phasic/__init__.py (importing phasic would flip JAX flags).
"""

import importlib.util
import os
import sys

from pybind11.setup_helpers import Pybind11Extension, build_ext
from setuptools import setup


def _phasic_paths():
    spec = importlib.util.find_spec("phasic")
    if spec is None or spec.origin is None:
        sys.exit(
            "phasic_reference: the phasic package is not installed in this environment.\n"
            "Run `pip install --no-deps phasic==0.32.1` first, then build with\n"
            "`pip install --no-build-isolation ./reference`."
        )
    assert "phasic" not in sys.modules, "find_spec must not import phasic"
    pkg_dir = os.path.dirname(spec.origin)
    site = os.path.dirname(pkg_dir)
    inc = os.path.join(pkg_dir, "include", "c")
    lib = os.path.join(site, "lib64")
    for path, what in (
        (os.path.join(inc, "phasic.h"), "header"),
        (os.path.join(lib, "liblibphasic.so"), "library"),
    ):
        if not os.path.exists(path):
            sys.exit(f"phasic_reference: phasic {what} not found at {path}")
    return inc, lib


inc, lib = _phasic_paths()

ext = Pybind11Extension(
    "phasic_reference._core",
    ["src/phasic_reference/_core.cpp"],
    include_dirs=[inc],
    library_dirs=[lib],
    libraries=["libphasic", "m"],
    runtime_library_dirs=[lib],  # absolute rpath to <site-packages>/lib64
    cxx_std=17,
    extra_compile_args=["-O2"],
)

setup(ext_modules=[ext], cmdclass={"build_ext": build_ext})
