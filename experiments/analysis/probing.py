"""The probing reproduction's verdict numbers (configs/papers/probing.py) from a finished sweep:

    python -m experiments.analysis.probing SWEEP_DIR OUT_DIR

Writes OUT_DIR/verdict.md: per reward-model quality, mean ± std over seeds of the probe scores, the RM's gold
accuracy, best-of-N gold and the confidence AUROCs; per-component probe accuracies; per seed, the Spearman
correlation of level_mean (and pair_mean, rm_gold_acc) with bon gold over the seed's RMs and the mean AUROCs; the
claims' statistics as the rules in docs/reproductions.md (the MRMBench section) define them (95% normal intervals over
seeds, pooled Spearman with a within-seed permutation p).
"""

from __future__ import annotations

import json
import os
import sys

import numpy as np

from configs.papers import probing as paper
from jaxrlhf.evaluation import probing, stats
from jaxrlhf.evaluation.policy import confidence_interval
from jaxrlhf.stages.probe import COMPONENTS


def load(sweep_dir: str) -> dict[int, dict[str, float]]:
  """{seed: probe stage metrics} of every finished run."""
  out = {}
  for name in sorted(os.listdir(sweep_dir)):
    path = os.path.join(sweep_dir, name, "probe", "results.json")
    overrides = os.path.join(sweep_dir, name, "overrides.json")
    if os.path.exists(path) and os.path.exists(overrides):
      with open(overrides) as f:
        seed = int(json.load(f)["seed"])
      with open(path) as f:
        out[seed] = json.load(f)["metrics"]
  return out


def _ms(values) -> str:
  v = np.asarray(values, np.float64)
  return f"{v.mean():.3f} ± {v.std(ddof=1) if v.size > 1 else 0.0:.3f}"


def verdict(runs: dict[int, dict[str, float]]) -> str:
  seeds = sorted(runs)
  qualities = [q for q in paper.QUALITIES if f"{q}/level_mean" in runs[seeds[0]]]
  cols = ("level_mean", "pair_mean", "rm_gold_acc", "bon_gold", "conf_auroc", "margin_auroc", "conf_acc_q0",
          "conf_acc_q3")
  lines = [f"seeds: {seeds}", "", "| RM | " + " | ".join(cols) + " |", "|---" * (len(cols) + 1) + "|"]
  for q in qualities:
    lines.append(f"| {q} | " + " | ".join(_ms([runs[s][f"{q}/{c}"] for s in seeds]) for c in cols) + " |")
  lines += ["", "Per-component held-out probe accuracy (level / pairwise), mean over seeds:", "",
            "| RM | " + " | ".join(COMPONENTS) + " |", "|---" * (len(COMPONENTS) + 1) + "|"]
  for q in qualities:
    lines.append(f"| {q} | " + " | ".join(
        f"{np.mean([runs[s][f'{q}/level/{c}'] for s in seeds]):.3f} / "
        f"{np.mean([runs[s][f'{q}/pair/{c}'] for s in seeds]):.3f}" for c in COMPONENTS) + " |")
  per_seed = {key: [] for key in ("level", "pair", "rmacc", "conf", "margin")}
  lines += ["", "| seed | spearman(level_mean, bon) | spearman(pair_mean, bon) | spearman(rm_gold_acc, bon) | "
            "mean conf_auroc | mean margin_auroc |", "|---|---|---|---|---|---|"]
  for s in seeds:
    m = runs[s]
    bon = [m[f"{q}/bon_gold"] for q in qualities]
    row = {"level": stats.spearman([m[f"{q}/level_mean"] for q in qualities], bon),
           "pair": stats.spearman([m[f"{q}/pair_mean"] for q in qualities], bon),
           "rmacc": stats.spearman([m[f"{q}/rm_gold_acc"] for q in qualities], bon),
           "conf": float(np.mean([m[f"{q}/conf_auroc"] for q in qualities])),
           "margin": float(np.mean([m[f"{q}/margin_auroc"] for q in qualities]))}
    for k, v in row.items():
      per_seed[k].append(v)
    lines.append(f"| {s} | " + " | ".join(f"{row[k]:.3f}" for k in per_seed) + " |")
  lines += ["", "Claims (95% normal intervals over seeds; pooled = all (seed, RM) points, permutation within seed, "
            "10000 permutations, one-sided):", ""]
  for key, label in (("level", "level_mean"), ("pair", "pair_mean"), ("rmacc", "rm_gold_acc")):
    finite = [v for v in per_seed[key] if np.isfinite(v)]
    x = [runs[s][f"{q}/{label}"] for s in seeds for q in qualities]
    y = [runs[s][f"{q}/bon_gold"] for s in seeds for q in qualities]
    g = [s for s in seeds for _ in qualities]
    rho, p = probing.within_group_permutation_p(x, y, g)
    lines.append(f"- spearman({label}, bon gold): per-seed mean {confidence_interval(finite)} "
                 f"({len(finite)} seeds); pooled {rho:.3f}, permutation p = {p:.4f}")
  lines.append(f"- probe-confidence AUROC (mean over RMs): {confidence_interval(per_seed['conf'])}")
  lines.append(f"- RM |margin| AUROC (mean over RMs): {confidence_interval(per_seed['margin'])}")
  diff = np.asarray(per_seed["conf"]) - np.asarray(per_seed["margin"])
  lines.append(f"- paired difference probe-confidence minus margin AUROC: {confidence_interval(diff)}")
  return "\n".join(lines) + "\n"


def main(argv: list[str]) -> None:
  if len(argv) != 3:
    raise SystemExit("usage: python -m experiments.analysis.probing SWEEP_DIR OUT_DIR")
  runs = load(argv[1])
  if not runs:
    raise SystemExit(f"{argv[1]}: no finished run with a probe stage")
  text = verdict(runs)
  os.makedirs(argv[2], exist_ok=True)
  with open(os.path.join(argv[2], "verdict.md"), "w") as f:
    f.write(text)
  print(text)


if __name__ == "__main__":
  main(sys.argv)
