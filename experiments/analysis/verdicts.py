"""Verdicts of the paper reproductions, computed from finished sweeps by the rules their configs state.

A paper config (configs/papers/<paper>.py, or any config module) states its rules before the run as data:

    VERDICTS = (
        dict(sweep="clip_delta_bias", claim="the PRM's word bias is hacked",
             value="rl_none/eval/reward/the_share", baseline="rl_outcome/eval/reward/the_share", direction=+1),
        ...)

Each rule is a paired comparison over seeds (ARCHITECTURE.md section 7): per seed s, d_s = value_s - baseline_s
(`baseline` a metric of the same run, or a number), optionally restricted to the runs whose swept keys match
`where` ({"dpo.loss.beta": 0.01}). The claim holds ("reproduced") when the two-sided 95% Student-t interval of
mean(d) excludes 0 on the side of `direction` (+1: value above baseline, -1: below) over at least MIN_SEEDS seeds;
"against" when it excludes 0 on the other side; "inconclusive" otherwise; "too few seeds" below MIN_SEEDS. Beside
the interval the report keeps every seed's d_s, the number of seeds on the claimed side and the exact two-sided
sign-flip permutation p of mean(d) (all 2^n sign patterns), and the sweep's single code commit (runs from several
commits are refused, as experiments.tables refuses them).

    python -m experiments.analysis.verdicts --runs runs/papers --config configs/papers/clip_delta.py
    python -m experiments.analysis.verdicts --runs runs/papers --all [--out docs/reproductions/verdicts.md]
"""

from __future__ import annotations

import dataclasses
import glob
import itertools
import math
import os
import sys
from typing import Any, Mapping, Sequence

from absl import app
from absl import flags
import numpy as np
import scipy.stats

from experiments import tables as tables_lib
from jaxrlhf import config as config_lib

MIN_SEEDS = 5
HEADER = """# Every paired verdict rule, computed from the sweeps

Written by `python -m experiments.analysis.verdicts --runs runs/papers --all --out <this file>` (the rules are each
config's `VERDICTS`). "reproduced": the paired 95% Student-t interval of d excludes 0 on the claimed side (>= 5
seeds); "against": on the other side; "inconclusive": it includes 0. A few rows are conditions of a larger rule (a
fix that needs a share *not* to rise): their sections in docs/reproductions.md say how each row enters the verdict.
The last lines name each sweep's code commit.

"""
RULE_KEYS = ("sweep", "claim", "value", "baseline", "direction", "where", "note")


@dataclasses.dataclass(frozen=True)
class Claim:
  """One rule: the paired difference value - baseline over seeds should have the sign of `direction`."""
  sweep: str  # The sweep's directory name under --runs.
  claim: str  # What the paper claims, in a few words.
  value: str  # A metric of each run ("<stage>/<metric>").
  baseline: str | float = 0.0  # A metric of the same run, or a number.
  direction: int = 1  # +1: value > baseline is the claim; -1: value < baseline.
  where: Mapping[str, Any] = dataclasses.field(default_factory=dict)  # Swept keys (not seed) the runs must have.
  note: str = ""

  @classmethod
  def from_dict(cls, rule: Mapping[str, Any], path: str) -> "Claim":
    """A Claim from a config's rule dict; a missing or unknown key, or a bad direction, is a ValueError naming
    `path`."""
    unknown = sorted(set(rule) - set(RULE_KEYS))
    if unknown:
      raise ValueError(f"{path}.{unknown[0]}: unknown key of a verdict rule; valid: {RULE_KEYS}")
    for key in ("sweep", "claim", "value"):
      if not isinstance(rule.get(key), str) or not rule[key]:
        raise ValueError(f"{path}.{key}: required, a non-empty string (got {rule.get(key)!r})")
    if rule.get("direction", 1) not in (1, -1):
      raise ValueError(f"{path}.direction: +1 or -1, got {rule['direction']!r}")
    baseline = rule.get("baseline", 0.0)
    if not isinstance(baseline, (str, int, float)) or isinstance(baseline, bool):
      raise ValueError(f"{path}.baseline: a metric name or a number, got {baseline!r}")
    return cls(sweep=rule["sweep"], claim=rule["claim"], value=rule["value"],
               baseline=baseline if isinstance(baseline, str) else float(baseline),
               direction=int(rule.get("direction", 1)), where=dict(rule.get("where", {})), note=rule.get("note", ""))


@dataclasses.dataclass(frozen=True)
class Result:
  """The statistics of one claim over the paired seeds."""
  claim: Claim
  seeds: tuple[int, ...]
  diffs: tuple[float, ...]  # d_s in seed order.
  mean: float
  lower: float  # 95% Student-t interval of mean(d).
  upper: float
  on_side: int  # Seeds whose d_s has the claimed sign.
  p_value: float  # Exact two-sided sign-flip permutation p.
  outcome: str  # "reproduced" / "against" / "inconclusive" / "too few seeds".
  commit: str


def t_interval(values: Sequence[float], level: float = 0.95) -> tuple[float, float, float]:
  """(mean, lower, upper): the mean of `values` (NaNs dropped) with its two-sided Student-t interval (n - 1 dof);
  NaN bounds for fewer than 2 values."""
  v = np.asarray(values, np.float64)
  v = v[~np.isnan(v)]
  if v.size == 0:
    return math.nan, math.nan, math.nan
  if v.size < 2:
    return float(v.mean()), math.nan, math.nan
  half = scipy.stats.t.ppf(0.5 + level / 2, v.size - 1) * v.std(ddof=1) / math.sqrt(v.size)
  return float(v.mean()), float(v.mean() - half), float(v.mean() + half)


def sign_flip_p(diffs: Sequence[float]) -> float:
  """Exact two-sided p of a paired sign-flip permutation test: the share of the 2^n sign patterns whose |mean| is
  at least the observed |mean| (n <= 20); NaN when a difference is not finite (the statistic is undefined, and a
  comparison with NaN would count no pattern: p = 0)."""
  d = np.asarray(diffs, np.float64)
  if d.size == 0 or d.size > 20:
    raise ValueError(f"diffs: 1-20 values for the exact test, got {d.size}")
  if not np.isfinite(d).all():
    return math.nan
  observed = abs(d.mean())
  signs = np.array(list(itertools.product((1.0, -1.0), repeat=d.size)))
  return float(np.mean(np.abs((signs * d).mean(axis=1)) >= observed - 1e-12))


def _matches(overrides: Mapping[str, Any], where: Mapping[str, Any]) -> bool:
  return all(str(overrides.get(k)) == str(v) for k, v in where.items())


def evaluate(claim: Claim, runs: Sequence[Mapping[str, Any]]) -> Result:
  """The claim's statistics over `runs` (experiments.tables.load_runs of its sweep).

  Raises:
    ValueError: no run matches `where`; a seed appears twice; a run lacks a metric (naming run and metric); the runs
      come from several commits.
  """
  chosen = [r for r in runs if _matches(r["overrides"], claim.where)]
  if not chosen:
    raise ValueError(f"{claim.sweep}: no finished run matches where={dict(claim.where)} for {claim.claim!r}")
  commit = tables_lib.check_commits(chosen)
  by_seed: dict[int, float] = {}
  for r in chosen:
    seed = int(r["overrides"].get("seed", 0))
    if seed in by_seed:
      raise ValueError(f"{claim.sweep}: seed {seed} appears in two runs matching where={dict(claim.where)}; add the "
                       "swept keys that tell them apart to `where`")
    values = []
    for metric in (claim.value, claim.baseline):
      if isinstance(metric, float):
        values.append(metric)
      elif metric in r["metrics"]:
        values.append(float(r["metrics"][metric]))
      else:
        raise ValueError(f"{claim.sweep}/{r['name']}: no metric {metric!r} in results.json (claim {claim.claim!r})")
    by_seed[seed] = values[0] - values[1]
  seeds = tuple(sorted(by_seed))
  diffs = tuple(by_seed[s] for s in seeds)
  # A seed whose metric is undefined (NaN) keeps its row but counts for nothing: the interval is over the finite
  # differences, the test needs them all, and fewer than MIN_SEEDS finite ones is "too few seeds".
  finite = tuple(d for d in diffs if math.isfinite(d))
  mean, lower, upper = t_interval(finite)
  on_side = sum(1 for d in finite if d * claim.direction > 0)
  claimed_side, other_side = (lower > 0, upper < 0) if claim.direction > 0 else (upper < 0, lower > 0)
  if len(finite) < MIN_SEEDS:
    outcome = "too few seeds"
  elif claimed_side:
    outcome = "reproduced"
  elif other_side:
    outcome = "against"
  else:
    outcome = "inconclusive"
  return Result(claim, seeds, diffs, mean, lower, upper, on_side, sign_flip_p(diffs), outcome, commit)


def rules_of(config_path: str) -> list[Claim]:
  """The Claims of a config module's VERDICTS (empty when it states none)."""
  module = config_lib.load_config_module(config_path)
  rules = getattr(module, "VERDICTS", ())
  return [Claim.from_dict(rule, f"{config_path}:VERDICTS[{i}]") for i, rule in enumerate(rules)]


def report(results: Sequence[Result]) -> str:
  """A markdown table: one row per claim with its interval, per-seed differences, p and outcome, then the commits."""
  lines = ["| sweep | claim | d = value - baseline | mean d [95% CI] | seeds on the claimed side | per seed | "
           "sign-flip p | outcome |", "|---|---|---|---|---|---|---|---|"]
  for r in results:
    c = r.claim
    base = c.baseline if isinstance(c.baseline, str) else f"{c.baseline:g}"
    where = "".join(f", {k}={v}" for k, v in c.where.items())
    side = ">" if c.direction > 0 else "<"
    lines.append(f"| {c.sweep}{where} | {c.claim} | `{c.value}` {side} `{base}` | {r.mean:+.4g} "
                 f"[{r.lower:+.4g}, {r.upper:+.4g}] | {r.on_side}/{len(r.diffs)} | "
                 f"{', '.join(f'{s}: {d:+.3g}' for s, d in zip(r.seeds, r.diffs))} | {r.p_value:.3g} | "
                 f"**{r.outcome}** |")
  lines.append("")
  lines.extend(f"{r_sweep}: {c}" for r_sweep, c in sorted({(r.claim.sweep, r.commit) for r in results}))
  return "\n".join(lines) + "\n"


def verdicts(runs_root: str, config_paths: Sequence[str]) -> tuple[list[Result], list[str]]:
  """(results, problems): every rule of the configs evaluated on runs_root/<sweep>; a sweep that is missing or
  unfinished, or a rule that cannot be evaluated, is listed in `problems` (with the reason), not dropped."""
  results, problems = [], []
  for path in config_paths:
    for claim in rules_of(path):
      sweep_dir = os.path.join(runs_root, claim.sweep)
      runs = tables_lib.load_runs(sweep_dir) if os.path.isdir(sweep_dir) else []
      if not runs:
        problems.append(f"{path}: {claim.sweep}: no finished runs under {sweep_dir} ({claim.claim})")
        continue
      try:
        results.append(evaluate(claim, runs))
      except ValueError as e:
        problems.append(f"{path}: {e}")
  return results, problems


_RUNS = flags.DEFINE_string("runs", None, "Directory holding the sweeps (runs/papers).")
_CONFIG = flags.DEFINE_multi_string("config", [], "A config module with VERDICTS (repeatable).")
_ALL = flags.DEFINE_bool("all", False, "Every configs/papers/*.py and configs/*.py that states VERDICTS.")
_OUT = flags.DEFINE_string("out", "", "Also write the markdown report here.")


def main(argv: Sequence[str]) -> None:
  del argv
  if not _RUNS.value:
    raise app.UsageError("--runs is required")
  paths = list(_CONFIG.value)
  if _ALL.value:
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    paths += sorted(p for p in glob.glob(os.path.join(root, "configs", "papers", "*.py"))
                    + glob.glob(os.path.join(root, "configs", "*.py")) if not os.path.basename(p).startswith("_"))
  paths = [p for p in paths if p.endswith(".py")]
  if not paths:
    raise app.UsageError("give --config configs/papers/<paper>.py (repeatable) or --all")
  results, problems = verdicts(_RUNS.value, paths)
  text = report(results)
  if problems:
    text += "\nNot evaluated:\n" + "".join(f"- {p}\n" for p in problems)
  print(text)
  if _OUT.value:
    with open(_OUT.value, "w") as f:
      f.write(HEADER + text)
  if problems and not results:
    sys.exit(1)


if __name__ == "__main__":
  app.run(main)
