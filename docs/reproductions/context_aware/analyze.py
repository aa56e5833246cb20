"""The verdict numbers of docs/reproductions/context_aware/rules.md from a finished sweep of
configs/papers/context_aware.py: per-seed values, paired differences with Student-t 95 % intervals over seeds, and
the per-criterion oracle agreement (from each evaluation's scores.jsonl).

    PYTHONPATH=. python docs/reproductions/context_aware/analyze.py runs/papers/context_aware
"""

import json
import os
import sys

import numpy as np
from scipy import stats

from configs.papers import context_aware as paper
from jaxrlhf.stages import inputs


def t_interval(x):
  x = np.asarray(x, np.float64)
  half = stats.t.ppf(0.975, len(x) - 1) * x.std(ddof=1) / np.sqrt(len(x))
  return x.mean(), x.mean() - half, x.mean() + half


def main(workdir: str) -> None:
  runs = sorted(d for d in os.listdir(workdir) if d.startswith("seed="))
  metric = {}
  for run in runs:
    for name in os.listdir(os.path.join(workdir, run)):
      path = os.path.join(workdir, run, name, "results.json")
      if name.startswith("eval_") and os.path.exists(path):
        with open(path) as f:
          metric[run, name] = json.load(f)["metrics"]

  def col(name, key="accuracy"):
    return np.asarray([metric[r, name][key] for r in runs])

  e = paper.eval_name
  values = {f"{m}_{r[0].upper()}_{lab}": col(e(m, r, lab)) for m in paper.MODELS for r in paper.RENDERINGS
            for lab in paper.LABELS}
  print("seeds:", runs)
  print("\n| score | " + " | ".join(runs) + " | mean [95% t interval] |\n|---|" + "---|" * (len(runs) + 1))

  def row(label, x):
    m, lo, hi = t_interval(x)
    print(f"| {label} | " + " | ".join(f"{v:.3f}" for v in x) + f" | {m:.3f} [{lo:.3f}, {hi:.3f}] |")

  for key, x in values.items():
    row(key, x)
  for m in paper.MODELS:
    for r in paper.RENDERINGS:
      row(f"{m}_{r[0].upper()} reversal subset (oracle)", col(e(m, r, "oracle"), "subset/reversal/accuracy"))
  gen_s, gen_h = values["general_S_oracle"], values["general_H_oracle"]
  ctx_s, ctx_h, hid_h = values["context_S_oracle"], values["context_H_oracle"], values["hidden_H_oracle"]
  print("\n| paired difference | " + " | ".join(runs) + " | mean [95% t interval] |\n|---|" + "---|" * (len(runs) + 1))
  row("d1 = ctx_S - ctx_H", ctx_s - ctx_h)
  row("gen_S - gen_H", gen_s - gen_h)
  row("d2 = ctx_S - gen_S", ctx_s - gen_s)
  row("f = (ctx_S - gen_S) / (1 - gen_S)", (ctx_s - gen_s) / (1 - gen_s))
  row("d3 = ctx_S - hid_H", ctx_s - hid_h)
  row("hid_S - hid_H", values["hidden_S_oracle"] - hid_h)

  # Per criterion: the held-out pairs are world.criterion_records(num_eval, "validation"); index -> criterion.
  world = inputs.make_world(dict(criteria=paper.CRITERIA))
  n = int(metric[runs[0], e("general", "shown", "oracle")]["n"])
  crit = np.asarray([r.annotator for r in world.criterion_records(n, "validation", labels="oracle")])
  reversal = np.asarray([r.subset == "reversal" for r in world.criterion_records(n, "validation", labels="oracle")])
  names = [c for c, _ in paper.CRITERIA]
  print("\nper criterion (oracle agreement, mean over seeds; reversal pairs in brackets); share of reversals: "
        + ", ".join(f"{c} {reversal[crit == c].mean():.2f}" for c in names))
  print("| model, rendering | " + " | ".join(names) + " |\n|---|" + "---|" * len(names))
  for m in paper.MODELS:
    for r in paper.RENDERINGS:
      acc = {c: [] for c in names}
      rev = {c: [] for c in names}
      for run in runs:
        with open(os.path.join(workdir, run, e(m, r, "oracle"), "scores.jsonl")) as f:
          lines = [json.loads(line) for line in f]
        ok = np.zeros(n)
        for line in lines:
          ok[line["index"]] = line["correct"]
        for c in names:
          acc[c].append(ok[crit == c].mean())
          rev[c].append(ok[(crit == c) & reversal].mean())
      print(f"| {m}, {r} | " + " | ".join(f"{np.mean(acc[c]):.3f} ({np.mean(rev[c]):.3f})" for c in names) + " |")
  context_blind = np.mean(~reversal)
  print(f"\ncontext-blind oracle (r*, ties as agreement) agreement with the criterion oracle: {context_blind:.3f}")


if __name__ == "__main__":
  main(sys.argv[1])
