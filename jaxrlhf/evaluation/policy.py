"""Confidence intervals for policy evaluation: means over prompts (the unit of sampling) with a 95% interval,
and the paired win credit. The "evaluate_policy" stage (jaxrlhf.stages.evaluate_policy) samples and scores; these
are its statistics.

"normal": mean +- z * s / sqrt(n) with the sample standard deviation (ddof 1) and the normal quantile z;
"bootstrap": the percentile interval of the mean over `num_resamples` resamples of the prompts (seeded).
"""

from __future__ import annotations

import dataclasses
import math
import statistics

import numpy as np

CI_METHODS = ("normal", "bootstrap")


@dataclasses.dataclass(frozen=True)
class Estimate:
  """A mean with its confidence interval [lower, upper] at `level`, over n units (prompts)."""
  mean: float
  lower: float
  upper: float
  n: int
  level: float = 0.95

  def __str__(self) -> str:
    return f"{self.mean:.4g} [{self.lower:.4g}, {self.upper:.4g}]"


def confidence_interval(values, method: str = "normal", level: float = 0.95, num_resamples: int = 2000,
                        seed: int = 0) -> Estimate:
  """Mean of `values` (one per unit) with a `level` confidence interval (see the module docstring).

  A single unit says nothing about the spread: its interval is (-inf, inf) under either method (resampling one
  value would give [mean, mean], a certainty the data do not have).
  """
  values = np.asarray(values, np.float64).reshape(-1)
  if values.size == 0 or not np.isfinite(values).all():
    raise ValueError(f"values must be a non-empty array of finite numbers, got {values.size} values")
  if method not in CI_METHODS:
    raise ValueError(f"method must be one of {CI_METHODS}, got {method!r}")
  if not 0 < level < 1:
    raise ValueError(f"level must be in (0, 1), got {level}")
  n, mean = values.size, float(values.mean())
  if n == 1:
    return Estimate(mean, -math.inf, math.inf, n, level)
  if method == "normal":
    half = statistics.NormalDist().inv_cdf(0.5 + level / 2) * float(values.std(ddof=1)) / math.sqrt(n)
    return Estimate(mean, mean - half, mean + half, n, level)
  if num_resamples < 1:
    raise ValueError(f"num_resamples must be >= 1, got {num_resamples}")
  rng = np.random.default_rng(seed)
  means = values[rng.integers(0, n, size=(num_resamples, n))].mean(axis=1)
  lower, upper = np.quantile(means, [(1 - level) / 2, (1 + level) / 2])
  return Estimate(mean, float(lower), float(upper), n, level)


def win_credit(a, b) -> np.ndarray:
  """1 where a > b, 1/2 where a == b, 0 where a < b (elementwise)."""
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  return np.where(a > b, 1.0, np.where(a == b, 0.5, 0.0))
