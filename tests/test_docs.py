"""The documentation site builds with ``mkdocs build --strict`` and no warnings.

Needs the ``docs`` extra (mkdocs-material, mkdocstrings[python], mkdocs-jupyter);
skipped when mkdocs is not installed. Two builds:

- the repository as it is (notebooks, ``phasejax.plot`` and all, whatever exists);
- a copy of ``mkdocs.yml``, ``docs/`` and ``src/`` with a synthetic notebook, so that
  the notebook pages (and links between notebooks) are checked even before the real
  notebooks exist.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("mkdocs") is None,
    reason="mkdocs is not installed (pip install -e '.[docs]' to build and test the docs)",
)


def _build(root: Path, site: Path) -> str:
    """Run ``mkdocs build --strict`` in ``root``; fail on any warning or error."""
    env = dict(os.environ, NO_MKDOCS_2_WARNING="1", PYTHONWARNINGS="ignore::DeprecationWarning")
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "mkdocs",
            "build",
            "--strict",
            "--config-file",
            str(root / "mkdocs.yml"),
            "--site-dir",
            str(site),
        ],
        cwd=root,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    output = proc.stdout + proc.stderr
    warnings = [line for line in output.splitlines() if line.startswith(("WARNING", "ERROR"))]
    assert proc.returncode == 0 and not warnings, f"mkdocs build --strict failed:\n{output}"
    return output


def _page(site: Path, *parts: str) -> str:
    path = site.joinpath(*parts, "index.html")
    assert path.is_file(), f"missing page {path.relative_to(site)}"
    return path.read_text(encoding="utf-8")


def test_docs_build_strict(tmp_path):
    site = tmp_path / "site"
    _build(ROOT, site)
    for page in [
        (),
        ("getting-started",),
        ("maths",),
        ("migration",),
        ("notebooks",),
        ("architecture",),
    ]:
        _page(site, *page)
    api = _page(site, "api", "phasejax")
    for name in (
        "phasejax.Graph",
        "phasejax.PhaseType.logpdf",
        "phasejax.DiscretePhaseType.pmf",
        "phasejax.internal.compile_graph",
    ):
        assert f'id="{name}"' in api, f"{name} missing from the API reference"
    assert 'id="phasejax.models.kingman"' in _page(site, "api", "models")
    assert 'id="phasejax.infer.fit_svgd"' in _page(site, "api", "infer")
    if (ROOT / "src" / "phasejax" / "plot.py").is_file():
        assert 'id="phasejax.plot"' in _page(site, "api", "plot")
    for notebook in sorted((ROOT / "notebooks").glob("*.ipynb")):
        _page(site, "notebooks", notebook.stem)


def _notebook(title: str, link: str) -> dict:
    return {
        "cells": [
            {
                "cell_type": "markdown",
                "metadata": {},
                "source": [f"# {title}\n", "\n", f"See [the next one]({link}).\n"],
            },
            {
                "cell_type": "code",
                "execution_count": 1,
                "metadata": {},
                "outputs": [{"name": "stdout", "output_type": "stream", "text": ["3\n"]}],
                "source": ["print(1 + 2)"],
            },
        ],
        "metadata": {
            "kernelspec": {"display_name": "Python 3", "language": "python", "name": "python3"}
        },
        "nbformat": 4,
        "nbformat_minor": 4,
    }


def test_docs_build_with_notebooks(tmp_path):
    root = tmp_path / "repo"
    root.mkdir()
    shutil.copy(ROOT / "mkdocs.yml", root / "mkdocs.yml")
    shutil.copytree(ROOT / "docs", root / "docs")
    shutil.copytree(ROOT / "src", root / "src", ignore=shutil.ignore_patterns("__pycache__"))
    notebooks = root / "notebooks"
    notebooks.mkdir()
    (notebooks / "01_first.ipynb").write_text(
        json.dumps(_notebook("A first notebook", "02_second.ipynb#top"))
    )
    (notebooks / "02_second.ipynb").write_text(
        json.dumps(_notebook("A second notebook", "01_first.ipynb"))
    )
    site = tmp_path / "site"
    _build(root, site)
    first = _page(site, "notebooks", "01_first")
    assert "A first notebook" in first and "print" in first
    assert 'href="../02_second/#top"' in first  # notebook-to-notebook link rewritten
    listing = _page(site, "notebooks")
    assert 'href="01_first/"' in listing and "A second notebook" in listing
