"""Every notebook in notebooks/ runs from top to bottom (its asserts check closed forms).

Notebooks are executed with nbclient in a kernel started from this interpreter
(``sys.executable``), in the notebooks folder, with a per-cell timeout. They are stored
without outputs; a fast test checks that.
"""

import json
import re
import sys
from pathlib import Path

import pytest

NOTEBOOKS = Path(__file__).resolve().parent.parent / "notebooks"
PATHS = sorted(NOTEBOOKS.glob("*.ipynb"))
# notebooks that take more than about 30 s on a 2-core machine
SLOW = {"02_population_genetics", "03_inference", "05_performance", "06_demes_inference"}
CELL_TIMEOUT = 300  # seconds per cell


def _plain(err) -> str:
    return re.sub(r"\x1b\[[0-9;]*m", "", str(err))  # drop the traceback's colour codes


def _params():
    return [
        pytest.param(p, id=p.stem, marks=[pytest.mark.slow] if p.stem in SLOW else [])
        for p in PATHS
    ]


def test_notebooks_exist_and_are_clean():
    assert [p.stem for p in PATHS] == [
        "01_quickstart",
        "02_population_genetics",
        "03_inference",
        "04_custom_models",
        "05_performance",
        "06_demes_inference",
    ]
    for path in PATHS:
        nb = json.loads(path.read_text())
        code = [c for c in nb["cells"] if c["cell_type"] == "code"]
        assert all(not c.get("outputs") and c.get("execution_count") is None for c in code), (
            f"{path.name} has outputs"
        )
        assert 'jax.config.update("jax_enable_x64", True)' in "".join(code[0]["source"]), path.name
        assert nb["cells"][0]["cell_type"] == "markdown", path.name


@pytest.fixture(scope="module")
def kernel_spec_dir(tmp_path_factory):
    """A kernel spec running ipykernel under this interpreter (not whatever ``python3``
    kernel the machine has registered)."""
    pytest.importorskip("ipykernel")
    root = tmp_path_factory.mktemp("kernels")
    spec = root / "phasejax-test"
    spec.mkdir()
    (spec / "kernel.json").write_text(
        json.dumps(
            {
                "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
                "display_name": "phasejax tests",
                "language": "python",
            }
        )
    )
    return root


@pytest.mark.parametrize("path", _params())
def test_notebook_runs(path, kernel_spec_dir):
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    from jupyter_client.kernelspec import KernelSpecManager
    from jupyter_client.manager import KernelManager

    nb = nbformat.read(path, as_version=4)
    km = KernelManager(
        kernel_name="phasejax-test",
        kernel_spec_manager=KernelSpecManager(
            kernel_dirs=[str(kernel_spec_dir)], ensure_native_kernel=False
        ),
    )
    client = nbclient.NotebookClient(
        nb, km=km, timeout=CELL_TIMEOUT, resources={"metadata": {"path": str(NOTEBOOKS)}}
    )
    try:
        client.execute()
    except nbclient.exceptions.CellTimeoutError as err:
        pytest.fail(
            f"{path.name}: a cell ran longer than {CELL_TIMEOUT} s\n{_plain(err)}", pytrace=False
        )
    except nbclient.exceptions.CellExecutionError as err:
        pytest.fail(f"{path.name}: a cell failed\n{_plain(err)}", pytrace=False)
