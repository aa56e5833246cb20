"""The density-ratio reproduction's sweep figure and verdict statistic (configs/papers/density_ratio.py).

The figure: accuracy against the strong-weak gap with std error bars over seeds, from `experiments.tables`'
results.csv. The verdict (docs/reproductions.md, CDR section, "Rule"): the Pearson correlation of gap and accuracy
vs gold over the INDEPENDENT strong/weak pairs' seed-mean points, with an exact one-sided permutation p (all n!
orderings of the accuracies); Spearman's likewise, and the same correlations per seed. Not a paired seed difference,
so it is computed here, not by experiments.analysis.verdicts.

    python -m experiments.analysis.density_ratio RESULTS_CSV OUT_PNG [RESULTS_RUNS_CSV OUT_MD]
"""

from __future__ import annotations

import csv
import itertools
import math
import sys
from typing import Callable, Sequence

import numpy as np

from configs.papers import density_ratio as paper
from jaxrlhf.evaluation import density_ratio as ratio_lib
from jaxrlhf.evaluation import stats

# early_sft is sft_early with strong and weak swapped: its gap and accuracy are sft_early's reflected (-gap, 1 - acc),
# so it is not an independent point and the rule excludes it.
MIRRORED = ("early_sft",)
INDEPENDENT = tuple(r[0] for r in paper.RATIOS if r[0] not in MIRRORED)


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


def exact_permutation_p(x: Sequence[float], y: Sequence[float], statistic: Callable[..., float]) -> float:
  """One-sided exact permutation p of a positive association: the share of all n! orderings of `y` (the observed one
  included) whose statistic(x, y_permuted) is at least the observed statistic(x, y) (n <= 9); NaN when the observed
  statistic is undefined (e.g. a constant vector)."""
  x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
  if x.shape != y.shape or not 2 <= x.size <= 9:
    raise ValueError(f"x {x.shape}, y {y.shape}: two equal-length vectors of 2-9 values for the exact test")
  observed = statistic(x, y)
  if not math.isfinite(observed):
    return math.nan
  hits = sum(statistic(x, y[list(order)]) >= observed - 1e-12 for order in itertools.permutations(range(y.size)))
  return hits / math.factorial(y.size)


def _read(path: str) -> list[dict[str, str]]:
  with open(path) as f:
    return list(csv.DictReader(f))


def _value(row: dict[str, str], name: str, metric: str, stat: str = "") -> float:
  key = f"density_ratio/{name}/{metric}" + (f" {stat}" if stat else "")
  if key not in row:
    raise ValueError(f"results csv: no column {key!r}")
  return float(row[key])


def correlation_report(results_csv: str, results_runs_csv: str, names: Sequence[str] = INDEPENDENT) -> str:
  """Markdown: per seed and on the seed means, Pearson and Spearman of gap vs gold accuracy over `names`, with the
  exact one-sided permutation p on the seed means (the rule's test) and the per-seed points themselves."""
  mean_row = _read(results_csv)[0]
  gap = [_value(mean_row, n, "gap", "mean") for n in names]
  acc = [_value(mean_row, n, "acc_gold", "mean") for n in names]
  runs = sorted(_read(results_runs_csv), key=lambda r: int(r["seed"]))
  commits = {r["commit"] for r in runs}
  lines = [f"Gap vs accuracy (gold) over the {len(names)} independent pairs ({', '.join(names)}; "
           f"mirrored pairs left out: {', '.join(MIRRORED)}); {len(runs)} seeds; "
           f"commit(s) {', '.join(sorted(commits))}.",
           "", "| seed | " + " | ".join(f"{n} gap / acc" for n in names) + " | Pearson r | Spearman rho |",
           "|---" * (len(names) + 3) + "|"]
  for r in runs:
    g = [_value(r, n, "gap") for n in names]
    a = [_value(r, n, "acc_gold") for n in names]
    lines.append(f"| {r['seed']} | " + " | ".join(f"{gi:+.3f} / {ai:.3f}" for gi, ai in zip(g, a))
                 + f" | {stats.pearson(g, a):+.3f} | {stats.spearman(g, a):+.3f} |")
  lines.append("| mean | " + " | ".join(f"{gi:+.3f} / {ai:.3f}" for gi, ai in zip(gap, acc))
               + f" | {stats.pearson(gap, acc):+.3f} | {stats.spearman(gap, acc):+.3f} |")
  n_perm = math.factorial(len(names))
  p_pearson = exact_permutation_p(gap, acc, stats.pearson)
  p_spearman = exact_permutation_p(gap, acc, stats.spearman)
  lines += ["", f"On the seed means: Pearson r = {stats.pearson(gap, acc):.3f}, exact one-sided permutation "
            f"p = {round(p_pearson * n_perm)}/{n_perm} = {p_pearson:.3f}; "
            f"Spearman rho = {stats.spearman(gap, acc):.3f}, "
            f"p = {round(p_spearman * n_perm)}/{n_perm} = {p_spearman:.3f}.",
            f"Rule: reproduced if the Pearson p < 0.05 (positive correlation): "
            f"**{'reproduced' if p_pearson < 0.05 and stats.pearson(gap, acc) > 0 else 'not significant'}**."]
  return "\n".join(lines) + "\n"


if __name__ == "__main__":
  plot_from_table(sys.argv[1], sys.argv[2], [r[0] for r in paper.RATIOS])
  if len(sys.argv) > 4:
    text = correlation_report(sys.argv[1], sys.argv[3])
    print(text)
    with open(sys.argv[4], "w") as f:
      f.write(text)
