"""The density-ratio reproduction's sweep figure (configs/papers/density_ratio.py): accuracy against the
strong-weak gap with std error bars over seeds, from `experiments.tables`' results.csv:

    python -m experiments.analysis.density_ratio RESULTS_CSV OUT_PNG
"""

from __future__ import annotations

import csv
import sys
from typing import Sequence

from configs.papers import density_ratio as paper
from jaxrlhf.evaluation import density_ratio as ratio_lib


def plot_from_table(results_csv: str, path: str, names: Sequence[str]) -> None:
  """The sweep-level figure from `experiments.tables`' results.csv (one row; columns "<m> mean" / "<m> std"
  with m = "density_ratio/<name>/<metric>"): accuracy against gap with std error bars over seeds."""
  with open(results_csv) as f:
    row = next(csv.DictReader(f))

  def col(name: str, metric: str, stat: str) -> float:
    key = f"density_ratio/{name}/{metric} {stat}"
    if key not in row:
      raise ValueError(f"results_csv: no column {key!r}")
    return float(row[key])

  ratio_lib.plot_gap_accuracy(path, names, [col(n, "gap", "mean") for n in names],
                              [col(n, "acc_gold", "mean") for n in names], [col(n, "acc_label", "mean") for n in names],
                              gap_err=[col(n, "gap", "std") for n in names],
                              acc_err=[col(n, "acc_gold", "std") for n in names])


if __name__ == "__main__":
  plot_from_table(sys.argv[1], sys.argv[2], [r[0] for r in paper.RATIOS])
