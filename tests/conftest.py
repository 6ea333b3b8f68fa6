import sys
from pathlib import Path

import jax

jax.config.update("jax_enable_x64", True)
# tests/ on sys.path for every test directory, so `helpers` (shared oracles) imports alike
sys.path.insert(0, str(Path(__file__).parent))
