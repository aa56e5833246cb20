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


@pytest.mark.slow
def test_reproductions_notebook_on_smoke_results(tmp_path, monkeypatch):
  """Runs every configs/papers/*.py smoke sweep (inside the notebook) and draws every paper's figures."""
  from experiments import repro  # pylint: disable=g-import-not-at-top
  monkeypatch.setenv("REPRO_SMOKE", str(tmp_path / "smoke"))
  monkeypatch.setenv("XLA_FLAGS", "")
  notebook = nbformat.read(NOTEBOOKS / "reproductions.ipynb", as_version=4)
  NotebookClient(notebook, timeout=1500, kernel_name="python3",
                 resources={"metadata": {"path": str(NOTEBOOKS)}}).execute()
  outputs = [o for cell in notebook.cells if cell.cell_type == "code" for o in cell.get("outputs", [])]
  assert not [o for o in outputs if o.get("output_type") == "error"]
  papers = repro.paper_names()
  assert papers, "configs/papers/ holds no paper config"
  for paper in papers:
    assert (tmp_path / "smoke" / paper / "results.csv").exists(), paper
  images = sum("image/png" in o.get("data", {}) for o in outputs)
  assert images >= len(papers)  # one figure per paper's table (plus the headline when its curves exist)
