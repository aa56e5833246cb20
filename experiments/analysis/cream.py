"""The CREAM reproduction's docs tables (configs/papers/cream.py) from a finished sweep: per-iteration gold, KL,
consistency and label agreement by arm (mean ± std over seeds), the per-seed gold trajectories, and the paired
statistics of the verdict rule (CREAM - SRLM at the last iteration; last - first iteration per arm), each a mean
over seeds with a 95% t-interval.

    python -m experiments.analysis.cream SWEEP_DIR
"""

from __future__ import annotations

import glob
import json
import os
import sys

import numpy as np

from configs.papers import cream as paper
from experiments.analysis.verdicts import t_interval


def _runs(sweep_dir: str) -> list[tuple[int, dict]]:
  runs = []
  for run_dir in sorted(glob.glob(os.path.join(sweep_dir, "*seed=*"))):
    path = os.path.join(run_dir, "results.json")
    if os.path.exists(path):
      with open(path) as f, open(os.path.join(run_dir, "overrides.json")) as g:
        runs.append((int(json.load(g)["seed"]), json.load(f)["metrics"]))
  if not runs:
    raise FileNotFoundError(f"sweep_dir: no finished runs under {sweep_dir!r}")
  return sorted(runs, key=lambda r: r[0])


def report(sweep_dir: str) -> str:
  runs = _runs(sweep_dir)
  iterations = sorted({int(k.split("/")[1][4:]) for _, m in runs for k in m if k.startswith("cream/iter")})
  last = iterations[-1]

  def col(arm, t, name):
    return [m[f"{arm}/iter{t}/{name}"] for _, m in runs if f"{arm}/iter{t}/{name}" in m]

  def cell(values):
    v = np.asarray(values, np.float64)
    return f"{v.mean():.3f} ± {v.std(ddof=1) if v.size > 1 else 0.0:.3f}" if v.size else "-"

  out = [f"{len(runs)} seeds: {[s for s, _ in runs]}\n",
         "| arm | iteration | gold | KL to M1 (nats) | length | consistency C | label agreement with gold |"
         " implicit reward vs gold tau_b |", "|" + "---|" * 8]
  for arm in paper.ARMS:
    for t in iterations:
      names = ("gold", "kl", "length", "consistency", "label_agreement", "reward_gold_tau")
      out.append(f"| {arm} | {t} | " + " | ".join(cell(col(arm, t, n)) for n in names) + " |")
  out += ["", "Per-seed gold by iteration (" + ", ".join(f"t={t}" for t in iterations) + "):", ""]
  for arm in paper.ARMS:
    for seed, m in runs:
      out.append(f"- {arm} seed {seed}: " + " / ".join(f"{m[f'{arm}/iter{t}/gold']:.3f}" for t in iterations))
  out += ["", "Paired statistics over seeds (mean [95% t-interval]):", ""]
  final = [m[f"cream/iter{last}/gold"] - m[f"srlm/iter{last}/gold"] for _, m in runs]
  out.append(f"- final gold CREAM - SRLM (t={last}): {t_interval(final)[0]:.3f} "
             f"[{t_interval(final)[1]:.3f}, {t_interval(final)[2]:.3f}]; per seed "
             + ", ".join(f"{x:.3f}" for x in final))
  for arm in paper.ARMS:
    gain = [m[f"{arm}/iter{last}/gold"] - m[f"{arm}/iter0/gold"] for _, m in runs]
    mean, lo, hi = t_interval(gain)
    out.append(f"- {arm} gold t={last} - t=0: {mean:.3f} [{lo:.3f}, {hi:.3f}]; per seed "
               + ", ".join(f"{x:.3f}" for x in gain))
  for t in iterations[1:]:
    diff = [m[f"cream/iter{t}/gold"] - m[f"srlm/iter{t}/gold"] for _, m in runs]
    mean, lo, hi = t_interval(diff)
    out.append(f"- gold CREAM - SRLM at t={t}: {mean:.3f} [{lo:.3f}, {hi:.3f}]")
  return "\n".join(out) + "\n"


if __name__ == "__main__":
  print(report(sys.argv[1]))
