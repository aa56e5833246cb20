"""The reward-augmented DPO reproduction's docs table (configs/papers/reward_augmented_dpo.py) from a finished sweep:

    python -m experiments.analysis.reward_augmented_dpo SWEEP_DIR
"""

from __future__ import annotations

import glob
import json
import os
import sys

import numpy as np

from configs.papers import reward_augmented_dpo as paper


def by_method_table(sweep_dir: str) -> str:
  """The sweep as one markdown row per (method, beta), mean ± std over seeds, from each run's results.json
  (the docs table; `experiments.tables` gives one wide row per beta)."""
  runs = []
  for run_dir in sorted(glob.glob(os.path.join(sweep_dir, "*seed=*"))):
    path = os.path.join(run_dir, "results.json")
    if os.path.exists(path):
      with open(path) as f, open(os.path.join(run_dir, "overrides.json")) as g:
        runs.append((json.load(g), json.load(f)["metrics"]))
  if not runs:
    raise FileNotFoundError(f"sweep_dir: no finished runs under {sweep_dir!r}")

  def cell(values):
    v = np.asarray(values, np.float64)
    return f"{v.mean():.2f} ± {v.std(ddof=1) if v.size > 1 else 0.0:.2f}" if v.size else "-"

  cols = (("gold gain", "eval_{m}/gold/gain"), ("win rate", "eval_{m}/gold/win_rate"), ("KL", "eval_{m}/kl"),
          ("length", "eval_{m}/length/policy"), ("shift chosen", "shift_{m}/chosen"),
          ("shift rejected (score>=7)", "shift_{m}/rejected_high"),
          ("shift rejected (score<=4)", "shift_{m}/rejected_low"), ("goal gap (nats)", "shift_{m}/goal_margin/gap"))
  lines = ["| method | beta | seeds | " + " | ".join(c for c, _ in cols) + " |", "|" + "---|" * (3 + len(cols))]
  for m in (*paper.METHODS, "ra_dpo_plain"):
    for beta in paper.BETAS:
      sel = [x for o, x in runs if o.get("dpo.loss.beta") == beta]
      cells = [cell([x[k.format(m=m)] for x in sel if k.format(m=m) in x]) for _, k in cols]
      if sel and any(c != "-" for c in cells):
        lines.append(f"| {m} | {beta} | {len(sel)} | " + " | ".join(cells) + " |")
  sft = [x["eval_sft_goal/gold/gain"] for _, x in runs if "eval_sft_goal/gold/gain" in x]
  lines.append(f"\nSFT sampled with the top-score goal (eval_sft_goal): gold gain {cell(sft)} ({len(sft)} runs)")
  return "\n".join(lines) + "\n"


if __name__ == "__main__":
  print(by_method_table(sys.argv[1]), end="")
