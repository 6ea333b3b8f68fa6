"""Shared test helpers: dense numpy oracles (`oracle`) and the equivalence-test pieces
for phasic's C library (`equivalence`). Importable as `helpers.*` from every test
directory (tests/conftest.py puts tests/ on sys.path)."""
