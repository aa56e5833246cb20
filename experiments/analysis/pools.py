"""Statistics of saved best-of-n pools (a `best_of_n` stage's scores.npz / pool.npz), shared by the pool analyses of
the Reasoning-SQL, ToolRL and Mixed-R1 reproductions (docs/reproductions/<paper>/analyze_pools.py).

A pool holds N samples for each of P prompts and every selector's (P, N) scores. A prompt's group is *constant* under
a reward when all N of its scores are equal (zero GRPO advantage). Intervals are percentile bootstraps over prompts
(10,000 resamples, seed 0) of a per-prompt paired difference; pooled over seeds, the per-prompt difference is first
averaged over the seeds (every seed must have sampled the same prompts, so a prompt's seeds are resampled together).
Best-of-n values use the unbiased estimator (`jaxrlhf.sampling.best_of_n.unbiased_best_of_n`: ties in the selector
share the selection).
"""

from __future__ import annotations

import json
import pathlib
from typing import Sequence

import numpy as np

from jaxrlhf.sampling.best_of_n import unbiased_best_of_n

Interval = tuple[float, float, float]  # (mean, lower, upper)


def bootstrap(values_P: np.ndarray, resamples: int = 10_000, seed: int = 0) -> Interval:
  """(mean, lo, hi): the mean of per-prompt values (P,) and its 95% percentile-bootstrap interval over prompts."""
  values_P = np.asarray(values_P, np.float64)
  idx = np.random.default_rng(seed).integers(0, len(values_P), size=(resamples, len(values_P)))
  means = values_P[idx].mean(1)
  return float(values_P.mean()), float(np.quantile(means, 0.025)), float(np.quantile(means, 0.975))


def constant_P(scores_PxN: np.ndarray) -> np.ndarray:
  """float64 (P,): 1 where all N scores of a prompt's group are equal, else 0."""
  return np.all(scores_PxN == scores_PxN[:, :1], axis=1).astype(np.float64)


def bon(selector_PxN: np.ndarray, value_PxN: np.ndarray, n: int) -> np.ndarray:
  """(P,) expected value of the best-of-n sample chosen by `selector` (n = 1: the pool mean)."""
  return unbiased_best_of_n(selector_PxN, value_PxN, np.asarray([n]))[:, 0]


def fmt(t: Interval) -> str:
  return f"{t[0]:.3f} [{t[1]:.3f}, {t[2]:.3f}]"


def pooled_constant_difference(runs: Sequence[pathlib.Path], a: str, b: str) -> tuple[int, Interval]:
  """(seeds, bootstrap) of constant(a) - constant(b) per prompt, averaged over the seeds' pools `runs` (each a
  seed=<k>/pools dir with scores.npz and pool.npz); ValueError if a seed sampled other prompts than the first."""
  diffs, prompt_ids = [], None
  for run in runs:
    with np.load(run / "scores.npz") as f:
      diffs.append(constant_P(f[a]) - constant_P(f[b]))
    with np.load(run / "pool.npz") as f:
      ids = f["prompt_ids"]
    if prompt_ids is not None and not np.array_equal(ids, prompt_ids):
      raise ValueError(f"{run}: its prompts differ from the first seed's; the pooled bootstrap pairs prompts")
    prompt_ids = ids
  if not diffs:
    raise ValueError("no pools given: expected seed=<k>/pools folders holding scores.npz and pool.npz")
  return len(diffs), bootstrap(np.mean(diffs, axis=0))


def write_pooled(result: dict, runs: Sequence[pathlib.Path], out_path: pathlib.Path, a: str, b: str,
                 a_name: str = "", also: Sequence[tuple[str, str]] = ()) -> None:
  """Adds the pooled constant(a) - constant(b) over the seeds' pools `runs` to `result["pooled"]` (key
  "constant_<a_name or a>_minus_<b>"), then likewise each further pair (a', b') of `also` (key
  "constant_<a'>_minus_<b'>"), prints them and writes `result` to out_path as JSON."""
  result["pooled"] = {}
  for name, x, y in [(a_name or a, a, b)] + [(x, x, y) for x, y in also]:
    seeds, pooled = pooled_constant_difference(runs, x, y)
    result["pooled"].update({"seeds": seeds, f"constant_{name}_minus_{y}": pooled})
    print(f"pooled over {seeds} seeds: constant({name}) - constant({y}): {fmt(pooled)}")
  with open(out_path, "w") as f:
    json.dump(result, f, indent=1)


def seed_pools(sweep: pathlib.Path) -> list[pathlib.Path]:
  """The seed=<k>/pools folders of a sweep that hold a scores.npz, in seed order."""
  def seed(run: pathlib.Path) -> tuple[int, str]:  # seed=10 after seed=9 (as text it sorts before seed=2)
    value = run.parent.name.partition("=")[2]
    return (int(value), "") if value.isdigit() else (1 << 62, value)
  return [run for run in sorted(sweep.glob("seed=*/pools"), key=seed) if (run / "scores.npz").exists()]
