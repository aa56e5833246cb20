"""Executes the notebooks end to end (at smoke size) with a real Jupyter kernel."""

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
def test_reproductions_notebook_on_smoke_results(paper_smoke, monkeypatch):
  """Every configs/papers/*.py smoke sweep (shared with the papers' own tests), then the notebook draws them."""
  from experiments import repro  # pylint: disable=g-import-not-at-top
  papers = repro.paper_names()
  assert papers, "configs/papers/ holds no paper config"
  smoke_root = {workdir.parent for workdir in paper_smoke.many(papers).values()}.pop()
  monkeypatch.setenv("REPRO_SMOKE", str(smoke_root))
  monkeypatch.setenv("XLA_FLAGS", "")
  notebook = nbformat.read(NOTEBOOKS / "reproductions.ipynb", as_version=4)
  NotebookClient(notebook, timeout=900, kernel_name="python3",
                 resources={"metadata": {"path": str(NOTEBOOKS)}}).execute()
  outputs = [o for cell in notebook.cells if cell.cell_type == "code" for o in cell.get("outputs", [])]
  assert not [o for o in outputs if o.get("output_type") == "error"]
  text = "".join(o.get("text", "") for o in outputs)
  assert "no saved results yet" not in text, text
  images = sum("image/png" in o.get("data", {}) for o in outputs)
  assert images >= len(papers) + 1  # one figure per paper's table, plus the best-of-N headline
