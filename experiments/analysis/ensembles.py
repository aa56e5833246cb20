"""Post-hoc figures and tables of the ensembles reproduction (configs/papers/ensembles.py) from a finished sweep:

    python -m experiments.analysis.ensembles SWEEP_DIR OUT_DIR [--standardized | --grpo]

best-of-N sweep: OUT_DIR/plots/headline_bon.png (gold, proxy gain and length against KL per selector) and
OUT_DIR/curves.md (one row per ensemble and selector, mean ± std over seeds); --standardized adds
OUT_DIR/standardized.md (members standardized over the pool, recomputed from the saved pools and reward models) and
OUT_DIR/standardized_seeds.md (its per-seed values and the paired differences to the single RM; post hoc).
"grpo" sweep (--grpo): OUT_DIR/plots/grpo_gold_vs_kl.png.
"""

from __future__ import annotations

import json
import os
import sys

import jax.numpy as jnp
import matplotlib
import numpy as np

from configs.papers import ensembles as paper
from experiments.analysis.verdicts import sign_flip_p
from experiments.analysis.verdicts import t_interval
from jaxrlhf.evaluation.best_of_n import standardize_members
from jaxrlhf.losses.aggregation import aggregate
from jaxrlhf.sampling.best_of_n import best_of_n_curves
from jaxrlhf.stages import artifacts
from jaxrlhf.stages import best_of_n as best_of_n_stage

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  pylint: disable=g-import-not-at-top,wrong-import-position


def _load_bon_curves(sweep_dir: str) -> dict:
  """{ensemble: {selector: [curves dict of one seed, ...]}} from every finished run of a best-of-N sweep."""
  out: dict = {}
  for name in sorted(os.listdir(sweep_dir)):
    for ensemble in paper.ENSEMBLES:
      path = os.path.join(sweep_dir, name, f"bon_{ensemble}", "results.json")
      if not os.path.exists(path):
        continue
      with open(path) as f:
        curves = json.load(f)["curves"]
      for selector, c in curves.items():
        out.setdefault(ensemble, {}).setdefault(selector, []).append(c)
  if not out:
    raise FileNotFoundError(f"sweep_dir: no bon_*/results.json under {sweep_dir!r}")
  return out


def _mean_std(runs: list, key: str):
  x = np.asarray([r[key] for r in runs], np.float64)
  return x.mean(0), (x.std(0, ddof=1) if len(runs) > 1 else np.zeros(x.shape[1:]))


def summary_table(sweep_dir: str) -> str:
  """Markdown: one row per (ensemble, selector), mean ± std over seeds of gold@1, peak gold (and its KL), gold@N,
  the drop from the peak, the proxy gain in pool std and the selected response's length at n = N."""
  data = _load_bon_curves(sweep_dir)
  cols = ("gold@1", "gold_peak", "gold_peak_kl", "gold@N", "gold_drop", "proxy_gain_std", "length@N")
  lines = ["| ensemble | selector | seeds | " + " | ".join(cols) + " |", "|" + "---|" * (len(cols) + 3)]
  for ensemble, selectors in data.items():
    for selector in paper.SELECTORS:
      runs = selectors.get(selector)
      if not runs or (ensemble != paper.ENSEMBLES[0] and selector == "gold"):
        continue
      rows = []
      for c in runs:
        g, p = np.asarray(c["gold"]), np.asarray(c["proxy"])
        peak = int(np.argmax(g))
        rows.append([g[0], g[peak], c["kl"][peak], g[-1], g[peak] - g[-1], (p[-1] - p[0]) / c["proxy_std"],
                     c["length"][-1]])
      rows = np.asarray(rows)
      std = rows.std(0, ddof=1) if len(rows) > 1 else np.zeros(rows.shape[1])
      cells = [f"{m:.3g} ± {s:.2g}" for m, s in zip(rows.mean(0), std)]
      label = "(oracle)" if selector == "gold" else ensemble
      lines.append(f"| {label} | {selector} | {len(rows)} | " + " | ".join(cells) + " |")
  return "\n".join(lines) + "\n"


def headline_plot(sweep_dir: str, out_path: str) -> str:
  """Gold reward, proxy gain (in units of the selector's pool std) and selected length against KL_bon, one line per
  reward model / aggregation (solid: pretrain-seed ensemble, dashed: finetune-seed), averaged over seeds."""
  data = _load_bon_curves(sweep_dir)
  fig, axes = plt.subplots(1, 3, figsize=(16, 4.6))
  colors = dict(zip(paper.SELECTORS, plt.rcParams["axes.prop_cycle"].by_key()["color"]))
  for ensemble, style in zip(paper.ENSEMBLES, ("-", "--")):
    for selector in paper.SELECTORS:
      runs = data.get(ensemble, {}).get(selector)
      if not runs or (selector == "gold" and ensemble != paper.ENSEMBLES[0]):
        continue
      kl = np.asarray(runs[0]["kl"])
      label = "gold (oracle)" if selector == "gold" else f"{selector[3:]} ({ensemble})"
      kw = dict(color="gray" if selector == "gold" else colors[selector], ls=":" if selector == "gold" else style)
      gold, gold_std = _mean_std(runs, "gold")
      axes[0].plot(kl, gold, label=label, **kw)
      axes[0].fill_between(kl, gold - gold_std, gold + gold_std, color=kw["color"], alpha=0.08)
      if selector != "gold":
        gain = np.mean([(np.asarray(r["proxy"]) - r["proxy"][0]) / r["proxy_std"] for r in runs], axis=0)
        axes[1].plot(kl, gain, label=label, **kw)
      axes[2].plot(kl, _mean_std(runs, "length")[0], label=label, **kw)
  axes[2].axhline(paper.GOLD_OPTIMUM_LENGTH, color="k", lw=0.8, label="gold optimum L* = 16")
  titles = ("gold reward of best-of-n", "proxy reward gain (pool std units)", "length of the selected response")
  for ax, title in zip(axes, titles):
    ax.set_xlabel("KL_bon = log n - (n-1)/n [nats]")
    ax.set_title(title)
    ax.grid(alpha=0.3)
  axes[0].legend(fontsize=7, ncol=2)
  n_max = int(round(np.asarray(runs[0]["n"])[-1]))
  fig.suptitle(f"Best-of-n (n <= {n_max}), {paper.NUM_MEMBERS}-member reward-model ensembles, "
               f"mean over {len(runs)} seeds (bands: ±1 std)")
  fig.tight_layout()
  os.makedirs(os.path.dirname(os.path.abspath(out_path)), exist_ok=True)
  fig.savefig(out_path, dpi=110)
  plt.close(fig)
  return out_path


def grpo_plot(sweep_dir: str, out_path: str) -> str:
  """GRPO variant: eval gold reward and length (tokens before the end token, comparable with L*) against eval KL,
  one point per beta (mean ± std over seeds), one line per reward of GRPO_REWARDS; the dotted line is the gold
  optimum L* in the length panel, the dashed one the SFT policy's gold (stage sft_eval) where the sweep has it."""
  runs = []
  for name in sorted(os.listdir(sweep_dir)):
    path = os.path.join(sweep_dir, name, "results.json")
    if os.path.exists(path):
      with open(path) as f:
        runs.append(json.load(f)["metrics"])
  if not runs:
    raise FileNotFoundError(f"sweep_dir: no <run>/results.json under {sweep_dir!r}")
  fig, axes = plt.subplots(1, 2, figsize=(12, 5))
  for rm, label in paper.GRPO_LABELS.items():
    if not all(f"{paper.rl_stage_name(rm, b)}/eval/gold" in r for r in runs for b in paper.BETAS):
      continue  # a sweep from before this reward was added
    stats = {}
    for metric in ("gold", "kl", "length"):
      x = np.asarray([[r[f"{paper.rl_stage_name(rm, b)}/eval/{metric}"] for b in paper.BETAS] for r in runs])
      stats[metric] = (x.mean(0), x.std(0, ddof=1) if len(runs) > 1 else np.zeros(len(paper.BETAS)))
    for ax, metric in zip(axes, ("gold", "length")):
      ax.errorbar(stats["kl"][0], stats[metric][0], xerr=stats["kl"][1], yerr=stats[metric][1], marker="o",
                  capsize=3, label=label)
      if rm == "single":  # one curve's labels suffice: beta falls from left to right on every curve
        for b, x, y in zip(paper.BETAS, stats["kl"][0], stats[metric][0]):
          ax.annotate(f"beta={b:g}", (x, y), fontsize=7, xytext=(3, 3), textcoords="offset points")
  if all("sft_eval/eval/gold" in r for r in runs):  # the SFT policy, evaluated like every GRPO policy
    axes[0].axhline(np.mean([r["sft_eval/eval/gold"] for r in runs]), color="k", lw=0.8, ls="--",
                    label="SFT policy (sft_eval)")
  axes[1].axhline(paper.GOLD_OPTIMUM_LENGTH, color="k", lw=0.8, ls=":", label="gold optimum L* = 16")
  for ax, title in zip(axes, ("eval gold reward", "eval length (tokens before the end token)")):
    ax.set_xlabel("eval KL to the SFT policy [nats]")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
  fig.suptitle(f"GRPO against a proxy reward, mean ± std over {len(runs)} seeds")
  fig.tight_layout()
  os.makedirs(os.path.dirname(os.path.abspath(out_path)), exist_ok=True)
  fig.savefig(out_path, dpi=110)
  plt.close(fig)
  return out_path


def _standardized_stats(sweep_dir: str) -> tuple[dict, dict]:
  """(rows, seeds): rows {ensemble: {quantity: [one value per seed]}} of the post-hoc diagnostic (member offset
  spread and scale ratio over the pool, gold@N of each aggregation on raw and on standardized members), and seeds
  {ensemble: {quantity: [...]}} with the run names, the bon stage's own single-RM gold@N and the members' mean
  pairwise correlation over the pool, for the per-seed table."""
  rows: dict = {}
  seeds: dict = {}
  for name in sorted(os.listdir(sweep_dir)):
    pool_path = os.path.join(sweep_dir, name, "bon_pretrain", "pool.npz")
    if not os.path.exists(pool_path):
      continue
    pools = dict(np.load(pool_path))
    for ensemble in paper.ENSEMBLES:
      rm = artifacts.load_reward_model(os.path.join(sweep_dir, name, f"rm_{ensemble}", "rm"))
      raw = best_of_n_stage.score_pools(rm, pools, 16)
      stats = {"member offset spread": raw.mean((0, 1)).std(),
               "member scale max/min": raw.std((0, 1)).max() / raw.std((0, 1)).min()}
      for label, scores in (("raw", raw), ("standardized", standardize_members(raw))):
        for agg in paper.AGGREGATIONS:
          proxy = np.asarray(aggregate(jnp.asarray(scores, jnp.float32), agg, paper.LAM), np.float64)
          stats[f"{label} {agg}"] = best_of_n_curves(proxy, pools["gold"])["gold"][-1]
      for key, value in stats.items():
        rows.setdefault(ensemble, {}).setdefault(key, []).append(float(value))
      with open(os.path.join(sweep_dir, name, f"bon_{ensemble}", "results.json")) as f:
        single = json.load(f)["metrics"]["rm_single/gold@N"]
      corr = np.corrcoef(raw.reshape(-1, raw.shape[-1]).T)[np.triu_indices(raw.shape[-1], 1)].mean()
      per_seed = seeds.setdefault(ensemble, {})
      for key, value in (("run", name), ("single RM", single), ("member correlation", corr)):
        per_seed.setdefault(key, []).append(value if key == "run" else float(value))
  if not rows:
    raise FileNotFoundError(f"sweep_dir: no bon_pretrain/pool.npz under {sweep_dir!r}")
  return rows, seeds


def standardized_table(sweep_dir: str, stats: tuple[dict, dict] | None = None) -> str:
  """Post-hoc diagnostic on the saved pools and reward models of a finished best-of-N sweep (no new samples):
  per ensemble, the spread of the members' mean rewards and scales over the pool, and gold@N of each
  aggregation on raw member scores vs on members standardized over the pool
  (`evaluation.best_of_n.standardize_members`),
  mean ± std over seeds. `stats`: `_standardized_stats(sweep_dir)` when already computed."""
  rows, _ = stats or _standardized_stats(sweep_dir)
  keys = list(next(iter(rows.values())))
  lines = ["| ensemble | seeds | " + " | ".join(keys) + " |", "|" + "---|" * (len(keys) + 2)]
  for ensemble, stats_ in rows.items():
    cells = [f"{np.mean(v):.3g} ± {np.std(v, ddof=1) if len(v) > 1 else 0.0:.2g}" for v in stats_.values()]
    lines.append(f"| {ensemble} | {len(stats_[keys[0]])} | " + " | ".join(cells) + " |")
  return "\n".join(lines) + "\n"


STANDARDIZED_PAIRED = ("standardized min", "standardized mean_minus_var", "standardized mean_minus_std")


def standardized_seeds_table(sweep_dir: str, stats: tuple[dict, dict] | None = None) -> str:
  """Post hoc, per seed: gold@N of the single RM (the bon stage's member-average curve), of the raw and the
  standardized conservative aggregations, the members' mean pairwise correlation over the pool, and per ensemble the
  paired difference (standardized - single RM) over seeds: mean with its 95% t interval and the exact sign-flip p."""
  rows, seeds = stats or _standardized_stats(sweep_dir)
  cols = ("single RM", "raw min", "raw mean_minus_var", *STANDARDIZED_PAIRED, "member correlation")
  lines = ["| ensemble | run | " + " | ".join(cols) + " |", "|" + "---|" * (len(cols) + 2)]
  for ensemble, stats_ in rows.items():
    values = {**stats_, **seeds[ensemble]}
    for i, run in enumerate(values["run"]):
      lines.append(f"| {ensemble} | {run} | " + " | ".join(f"{values[c][i]:.3f}" for c in cols) + " |")
  lines += ["", "| ensemble | paired difference | mean [95% t] | seeds > 0 | sign-flip p |", "|---|---|---|---|---|"]
  for ensemble, stats_ in rows.items():
    for col in STANDARDIZED_PAIRED:
      d = np.asarray(stats_[col]) - np.asarray(seeds[ensemble]["single RM"])
      mean, lower, upper = t_interval(d)
      lines.append(f"| {ensemble} | {col} - single RM | {mean:+.3f} [{lower:+.3f}, {upper:+.3f}] | "
                   f"{int((d > 0).sum())}/{d.size} | {sign_flip_p(d):.3g} |")
  return "\n".join(lines) + "\n"


def main(argv: list[str]) -> None:
  """python -m experiments.analysis.ensembles SWEEP_DIR OUT_DIR [--standardized | --grpo]: for a best-of-N sweep,
  OUT_DIR/plots/headline_bon.png and OUT_DIR/curves.md (+ OUT_DIR/standardized.md and standardized_seeds.md, the
  post-hoc member-standardization diagnostic); for the "grpo" sweep (--grpo), OUT_DIR/plots/grpo_gold_vs_kl.png."""
  flag = argv[3] if len(argv) == 4 else ""
  if len(argv) not in (3, 4) or flag not in ("", "--standardized", "--grpo"):
    raise SystemExit("usage: python -m experiments.analysis.ensembles SWEEP_DIR OUT_DIR [--standardized | --grpo]")
  sweep_dir, out_dir = argv[1], argv[2]
  if flag == "--grpo":
    print(grpo_plot(sweep_dir, os.path.join(out_dir, "plots", "grpo_gold_vs_kl.png")))
    return
  print(headline_plot(sweep_dir, os.path.join(out_dir, "plots", "headline_bon.png")))
  outputs = {"curves.md": summary_table}
  if flag == "--standardized":
    stats = _standardized_stats(sweep_dir)  # rescoring every pool once for both tables
    outputs["standardized.md"] = lambda d: standardized_table(d, stats)
    outputs["standardized_seeds.md"] = lambda d: standardized_seeds_table(d, stats)
  for filename, fn in outputs.items():
    table = fn(sweep_dir)
    with open(os.path.join(out_dir, filename), "w") as f:
      f.write(table)
    print(table, end="")


if __name__ == "__main__":
  main(sys.argv)
