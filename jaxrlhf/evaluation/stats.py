"""Statistics shared by the evaluation modules: correlations, ranks and AUROC (scipy underneath), each with the
library's conventions for degenerate inputs (NaN instead of warnings or errors when a statistic is undefined).
"""

from __future__ import annotations

import math
import warnings
from typing import Any

import numpy as np


def _scipy_stats():
  # Imported on first use: scipy.stats costs every process that imports the library (each CLI start) ~0.4 s.
  import scipy.stats  # pylint: disable=g-import-not-at-top
  return scipy.stats


def _pair(name: str, x: Any, y: Any) -> tuple[np.ndarray, np.ndarray]:
  x = np.asarray(x, np.float64).reshape(-1)
  y = np.asarray(y, np.float64).reshape(-1)
  if x.shape != y.shape:
    raise ValueError(f"{name}: x has {x.size} values, y has {y.size}")
  return x, y


def rankdata(x: Any) -> np.ndarray:
  """float64 1-based ranks of a 1-D array; ties get the average of their ranks."""
  return _scipy_stats().rankdata(np.asarray(x, np.float64).reshape(-1), method="average").astype(np.float64)


def pearson(x: Any, y: Any, min_size: int = 2) -> float:
  """Pearson correlation of two equal-length 1-D arrays; NaN with fewer than `min_size` values or when either
  side is constant (the correlation is undefined)."""
  x, y = _pair("pearson", x, y)
  if x.size < max(min_size, 2) or np.ptp(x) == 0 or np.ptp(y) == 0:
    return math.nan
  with warnings.catch_warnings():
    warnings.simplefilter("ignore")  # Near-constant inputs warn about precision; the value is still defined.
    return float(_scipy_stats().pearsonr(x, y).statistic)


def spearman(x: Any, y: Any, min_size: int = 2) -> float:
  """Spearman rank correlation (Pearson of average ranks); NaN like `pearson`."""
  x, y = _pair("spearman", x, y)
  if x.size < max(min_size, 2) or np.ptp(x) == 0 or np.ptp(y) == 0:
    return math.nan
  return float(_scipy_stats().spearmanr(x, y).statistic)


def auroc(scores_N: Any, positive_N: Any) -> float:
  """P(score of a random positive > score of a random negative), ties counting 1/2: the area under the ROC curve
  of `scores_N` as a detector of `positive_N` (Mann-Whitney U / (n_positive * n_negative)); NaN when one class is
  empty.

  Args:
    scores_N: float (N,) finite detector scores (higher = more likely positive).
    positive_N: bool (N,) labels.
  """
  scores = np.asarray(scores_N, np.float64).reshape(-1)
  positive = np.asarray(positive_N).reshape(-1).astype(bool)
  if scores.shape != positive.shape:
    raise ValueError(f"auroc: {scores.size} scores for {positive.size} labels")
  if not np.isfinite(scores).all():
    raise ValueError("auroc: scores must be finite")
  n_pos, n_neg = int(positive.sum()), int((~positive).sum())
  if not n_pos or not n_neg:
    return math.nan
  u = _scipy_stats().mannwhitneyu(scores[positive], scores[~positive], alternative="two-sided").statistic
  return float(u / (n_pos * n_neg))
