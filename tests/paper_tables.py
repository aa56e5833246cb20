"""Shared check of a paper's smoke sweep tables (importable from any test module, like random_models.py)."""

import csv
import json
import math
import os
import pathlib

from experiments import tables as tables_lib


def smoke_table_means(workdir: str, config) -> dict[str, float]:
  """Writes the sweep's tables, checks every `config.tables.metrics` entry is a column of the markdown table with a
  finite mean, and returns {metric: mean} of the first (only) row of results.csv for every "<metric> mean" column."""
  header = tables_lib.tables(workdir).splitlines()[0]
  with open(os.path.join(workdir, "results.csv")) as f:
    row = next(csv.DictReader(f))
  means = {col[:-len(" mean")]: float(v) for col, v in row.items() if col.endswith(" mean")}
  for metric in config.tables.metrics:
    assert metric in header, metric
    assert math.isfinite(means[metric]), (metric, means[metric])
  return means


def smoke_run(workdir) -> tuple[pathlib.Path, dict]:
  """The one run of a paper's smoke sweep (conftest's `paper_smoke`): (its folder, {stage: outputs}) with the
  outputs `experiments.run` returned, as its results.json keeps them."""
  runs = sorted(path.parent for path in pathlib.Path(workdir).glob("*/results.json"))
  assert len(runs) == 1, runs
  results = json.loads((runs[0] / "results.json").read_text())
  assert results["status"] == "done", results.get("error")
  return runs[0], results["stages"]
