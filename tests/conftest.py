import sys
from pathlib import Path

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
