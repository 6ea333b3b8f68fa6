import os
import sys
from pathlib import Path

# The suite is mostly XLA compilation. Test-only compiler settings, made before JAX starts
# its backend and inherited by the xdist workers and subprocesses: XLA CPU's older fusion
# code generator without LLVM optimisation compiles 3-4x faster (its executables run 1.5-3x
# slower: right for a suite of small programs, wrong for users; the library sets no flags,
# and `test_default_compiler.py` checks closed forms with the user's own settings).
if "PHASEJAX_USER_XLA_FLAGS" not in os.environ:
    os.environ["PHASEJAX_USER_XLA_FLAGS"] = os.environ.get("XLA_FLAGS", "")
    os.environ["XLA_FLAGS"] = " ".join(
        [
            os.environ["PHASEJAX_USER_XLA_FLAGS"],
            "--xla_cpu_use_fusion_emitters=false --xla_backend_optimization_level=0",
        ]
    ).strip()

import jax
import pytest

jax.config.update("jax_enable_x64", True)
# tests/ on sys.path for every test directory, so `helpers` (shared oracles) imports alike
sys.path.insert(0, str(Path(__file__).parent))


@pytest.fixture(autouse=True, scope="module")
def _fresh_compilation_caches():
    """Clear JAX's in-memory caches after each test module: a long-lived xdist worker would
    otherwise hold every executable of the run (its memory grew past 7 GB)."""
    yield
    jax.clear_caches()
