"""The VAS reproduction's verdict statistics (configs/papers/vas.py; the VAS section of docs/reproductions.md) from a
finished sweep: per-seed values and paired 95% t-intervals over seeds of

  * equal-cost gain: gold of VAS at each beta minus the gold of best-of-n at the same token-forward cost per response
    (the best-of-n curve interpolated linearly in log n; NaN where VAS costs more than the largest n),
  * matched-KL gains over DPO and GRPO (vas_decode's matched/<stage>/gain),
  * the composition's end-to-end change (w = 1 minus w = 0) of each composed reward and its rank correlation with w.

    python -m experiments.analysis.vas RUNS_DIR [OUT_MD [VARIANT]]

and, for the exploratory variant `value_x5` (the value model trained 5x longer; same seeds, hence the same base
policies), its VAS curve against the default sweep's best-of-n, DPO and GRPO of the same seeds:

    python -m experiments.analysis.vas --value_x5 X5_RUNS_DIR DEFAULT_RUNS_DIR [OUT_MD]
"""

from __future__ import annotations

import math
import sys

import numpy as np

from configs.papers import vas as paper
from experiments import tables as tables_lib
from experiments.analysis.verdicts import t_interval


def bon_gold_at_cost(metrics: dict, ns, cost: float) -> float:
  """Best-of-n gold at `cost` token forwards per response (linear in log n between the grid's n; NaN beyond)."""
  costs = np.array([metrics[f"vas/bon/n={n}/forwards"] for n in ns])  # metrics of one run: "<stage>/<metric>"
  golds = np.array([metrics[f"vas/bon/n={n}/gold"] for n in ns])
  if cost > costs[-1]:
    return math.nan
  return float(np.interp(np.log(cost), np.log(costs), golds))


def analyse(runs_dir: str, variant: str = "default") -> str:
  """The markdown table of the module docstring's statistics for the sweep in `runs_dir`."""
  runs = tables_lib.load_runs(runs_dir)
  config = paper.get_config(variant)
  betas, ns = config.vas.betas, config.vas.bon_ns
  weights, composed = config.compose.compose_weights, paper.COMPOSED
  rows = []

  def line(name: str, per_seed) -> None:
    mean, lo, hi = t_interval(np.asarray(per_seed))
    seeds = ", ".join(f"{v:.3f}" for v in per_seed)
    rows.append(f"| {name} | {mean:.3f} [{lo:.3f}, {hi:.3f}] | {seeds} |")

  m = [r["metrics"] for r in runs]
  rows.append(f"runs: {', '.join(r['name'] for r in runs)}\n")
  rows.append("| quantity | mean [95% t-interval] | per seed |")
  rows.append("|---|---|---|")
  for b in betas:
    p = f"vas/vas/beta={b:g}"
    line(f"VAS beta={b:g} gold", [x[f"{p}/gold"] for x in m])
    line(f"VAS beta={b:g} KL", [x[f"{p}/kl"] for x in m])
    line(f"VAS beta={b:g} forwards / response", [x[f"{p}/forwards"] for x in m])
    line(f"VAS beta={b:g} gold - BoN gold at equal cost",
         [x[f"{p}/gold"] - bon_gold_at_cost(x, ns, x[f"{p}/forwards"]) for x in m])
  for n in ns:
    line(f"BoN n={n} gold", [x[f"vas/bon/n={n}/gold"] for x in m])
    line(f"BoN n={n} forwards / response", [x[f"vas/bon/n={n}/forwards"] for x in m])
  for base in ("dpo", "grpo"):
    p = f"vas/matched/eval_{base}"
    line(f"{base.upper()} KL", [x[f"{p}/kl"] for x in m])
    line(f"{base.upper()} gold", [x[f"{p}/gold"] for x in m])
    line(f"VAS gold at {base.upper()}'s KL", [x[f"{p}/vas_gold"] for x in m])
    line(f"VAS - {base.upper()} at matched KL", [x[f"{p}/gain"] for x in m])
    line(f"{base.upper()} KL inside VAS's curve (1 = yes)", [x[f"{p}/in_range"] for x in m])
  for r in composed:
    for w in weights:
      line(f"compose w={w:g}: {r}", [x[f"compose/compose/w={w:g}/reward/{r}"] for x in m])
    line(f"compose {r}: w=1 minus w=0",
         [x[f"compose/compose/w=1/reward/{r}"] - x[f"compose/compose/w=0/reward/{r}"] for x in m])
    line(f"compose {r}: Spearman(w, {r})", [x[f"compose/compose/spearman_{r}"] for x in m])
  for w in weights:
    line(f"compose w={w:g}: gold", [x[f"compose/compose/w={w:g}/gold"] for x in m])
    line(f"compose w={w:g}: KL", [x[f"compose/compose/w={w:g}/kl"] for x in m])
  return "\n".join(rows) + "\n"


def analyse_value_x5(x5_dir: str, default_dir: str) -> str:
  """Per-seed VAS gold / KL of the value_x5 runs, and their equal-cost and matched-KL gains against the default
  sweep's best-of-n, DPO and GRPO of the same seed (post-hoc: such a comparison cannot turn a verdict)."""
  from jaxrlhf.stages.vas_decode import gold_at_kl  # pylint: disable=g-import-not-at-top
  default = {r["name"]: r["metrics"] for r in tables_lib.load_runs(default_dir)}
  runs = [r for r in tables_lib.load_runs(x5_dir) if r["name"] in default]
  betas, ns = paper.BETAS, paper.BON_NS
  rows = [f"runs: {', '.join(r['name'] for r in runs)}\n", "| quantity | mean [95% t-interval] | per seed |",
          "|---|---|---|"]

  def line(name: str, per_seed) -> None:
    mean, lo, hi = t_interval(np.asarray(per_seed))
    rows.append(f"| {name} | {mean:.3f} [{lo:.3f}, {hi:.3f}] | {', '.join(f'{v:.3f}' for v in per_seed)} |")

  line("value_gold corr(V(s_n), r)", [r["metrics"]["value_gold/eval/corr_final"] for r in runs])
  for b in betas:
    p = f"vas/vas/beta={b:g}"
    line(f"VAS beta={b:g} gold", [r["metrics"][f"{p}/gold"] for r in runs])
    line(f"VAS beta={b:g} KL", [r["metrics"][f"{p}/kl"] for r in runs])
    line(f"VAS beta={b:g} gold - BoN gold at equal cost", [
        r["metrics"][f"{p}/gold"] - bon_gold_at_cost(default[r["name"]], ns, r["metrics"][f"{p}/forwards"])
        for r in runs])
  for base in ("dpo", "grpo"):
    gains = []
    for r in runs:
      kl = np.array([r["metrics"][f"vas/vas/beta={b:g}/kl"] for b in betas])
      gold = np.array([r["metrics"][f"vas/vas/beta={b:g}/gold"] for b in betas])
      d = default[r["name"]]
      gains.append(gold_at_kl(kl, gold, d[f"eval_{base}/kl"])[0] - d[f"eval_{base}/gold/policy"])
    line(f"VAS (value_x5) - {base.upper()} at matched KL", gains)
  return "\n".join(rows) + "\n"


if __name__ == "__main__":
  if sys.argv[1] == "--value_x5":
    text = analyse_value_x5(sys.argv[2], sys.argv[3])
    out = sys.argv[4] if len(sys.argv) > 4 else None
  else:
    text = analyse(sys.argv[1], sys.argv[3] if len(sys.argv) > 3 else "default")
    out = sys.argv[2] if len(sys.argv) > 2 else None
  print(text)
  if out:
    with open(out, "w") as f:
      f.write(text)
