"""Executes the notebooks end to end (at smoke size) with a real Jupyter kernel."""

import os
import pathlib

import nbformat
import pytest
from nbclient import NotebookClient

NOTEBOOKS = pathlib.Path(__file__).resolve().parents[2] / "notebooks"


@pytest.mark.slow
@pytest.mark.parametrize("name", ["quickstart.ipynb"])
def test_notebook_executes(name, tmp_path, monkeypatch):
  monkeypatch.setenv("QUICKSTART_VARIANT", "smoke")
  monkeypatch.setenv("QUICKSTART_WORKDIR", str(tmp_path / "run"))
  monkeypatch.setenv("XLA_FLAGS", "")  # the kernel is a fresh process: one CPU device is enough
  notebook = nbformat.read(NOTEBOOKS / name, as_version=4)
  NotebookClient(notebook, timeout=900, kernel_name="python3",
                 resources={"metadata": {"path": str(NOTEBOOKS)}}).execute()
  outputs = [o for cell in notebook.cells if cell.cell_type == "code" for o in cell.get("outputs", [])]
  assert not [o for o in outputs if o.get("output_type") == "error"]
  assert any("image/png" in o.get("data", {}) for o in outputs)  # the summary plot was drawn
  assert (tmp_path / "run" / "summary.md").exists()
