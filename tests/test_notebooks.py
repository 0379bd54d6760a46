"""Every notebook runs top to bottom (slow), and the committed notebooks carry no outputs (fast).

The slow tests need `data/shapes` (`make test` generates it first) and the shipped checkpoint
`data/checkpoints/detr_tiny.pt`. Kernels run in `notebooks/`, as in JupyterLab, and import this
checkout's `tutorial` package (PYTHONPATH), installed or not.
"""
from __future__ import annotations

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))


def test_there_are_notebooks():
    assert NOTEBOOKS, f"no notebooks found in {ROOT / 'notebooks'}"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_committed_notebook_has_no_outputs(path):
    import nbformat

    nb = nbformat.read(path, as_version=4)
    nbformat.validate(nb)
    dirty = [i for i, cell in enumerate(nb.cells)
             if cell.cell_type == "code" and (cell.outputs or cell.execution_count is not None)]
    assert not dirty, f"{path.name}: cells {dirty} have outputs or execution counts; clear them before committing"


@pytest.mark.slow
@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_runs(path, monkeypatch):
    import nbformat
    from nbclient import NotebookClient

    for needed in (ROOT / "data" / "shapes" / "val" / "instances.json", ROOT / "data" / "checkpoints" / "detr_tiny.pt"):
        if not needed.exists():
            pytest.fail(f"{needed} is missing: run `make data` (the shapes set) / check out the shipped checkpoint")
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))
    nb = nbformat.read(path, as_version=4)
    client = NotebookClient(nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(path.parent)}})
    client.execute()  # raises CellExecutionError, with the failing cell and its traceback
