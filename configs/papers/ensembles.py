"""Reward-model ensembles against overoptimization (Coste et al. 2023, "Reward Model Ensembles Help Mitigate
Overoptimization"; Eisenstein et al. 2023, "Helping or Herding? Reward Model Ensembles Mitigate but do not
Eliminate Reward Hacking") in the synthetic gold-reward world.

Per seed, one chain (variant "default", best-of-N):

  sft           the base policy (SFT on the world's reference distribution)
  rm_pretrain   K = 5 Bradley-Terry reward models on the world's noisy labels (BT draws of gold, temperature
                0.35, 5% flips), each with its OWN backbone init and data order: the "pretrain-seed" ensemble
  rm_finetune   K = 5 members that all start from ONE backbone init (member 0's) and differ only in head init and
                data order (`shared_backbone=True`): the "finetune-seed" ensemble
  bon_pretrain  best-of-n, n = 1..256, from ONE pool of N = 256 SFT samples per test prompt (unbiased estimator):
                gold and proxy reward and the selected response's length against KL = log n - (n-1)/n, selected
                by a single RM ("rm_single": the average of the 5 single-member curves), by the mean, median,
                min (worst case), mean - lam * var (UWO) and mean - lam * std aggregations, and by gold (oracle)
  bon_finetune  the same pools (pool_from) scored by the finetune-seed ensemble

Mapping of the papers' terms: the world has no separate pretraining, so a reward model's "pretraining" is its
backbone initialization; both ensembles are trained from scratch on the same pairs with the same budget, and differ
only in whether the backbone init is shared. (Fine-tuning all members from the SFT policy's weights
(`model.init_from="stage:sft"`) is the other finetune-seed construction `reward` supports; it also changes the
backbone's quality, so it is not the controlled comparison.)

Variant "grpo": sft -> rm_single (K = 1; identical to member 0 of rm_pretrain: same init key and data order) ->
rm_pretrain -> GRPO against the single RM, the pretrain ensemble under each aggregation of raw member scores, and
the min and mean - LAM * std of members standardized over the reference responses (GRPO_REWARDS), for beta in
BETAS (KL as a k3 loss term); eval gold / proxy / KL / length of each policy. Variants "smoke" and "grpo_smoke": seconds.

    python -m experiments.sweep --config configs/papers/ensembles.py --workdir runs/papers/ensembles --workers 1
    python -m experiments.tables --workdir runs/papers/ensembles
    python -m configs.papers.ensembles runs/papers/ensembles docs/reproductions/ensembles --standardized
        # headline plot (plots/headline_bon.png), per-selector table (curves.md), post-hoc standardized.md
    python -m experiments.sweep --config configs/papers/ensembles.py:grpo --workdir runs/papers/ensembles_grpo \
        --workers 1
    python -m experiments.tables --workdir runs/papers/ensembles_grpo
    python -m configs.papers.ensembles runs/papers/ensembles_grpo docs/reproductions/ensembles --grpo
"""

from __future__ import annotations

import json
import os
import sys

from configs import _sections as S
from jaxrlhf.evaluation import best_of_n_stage
from jaxrlhf.train import reward, rl, sft

VARIANTS = ("default", "smoke", "grpo", "grpo_smoke")
SEEDS = (0, 1, 2)
NUM_MEMBERS = 5
LAM = 1.0  # The uncertainty penalty of mean - lam * var / std (not tuned).
AGGREGATIONS = ("mean", "median", "min", "mean_minus_var", "mean_minus_std")
ENSEMBLES = ("pretrain", "finetune")
SELECTORS = ("gold", "rm_single", *(f"rm_{a}" for a in AGGREGATIONS))
BETAS = (0.01, 0.05, 0.2)
# GRPO rewards: a single RM, the pretrain ensemble under every aggregation of raw member scores, and min and
# mean - LAM * std over standardized members.
GRPO_REWARDS = ("single", "mean", "median", "min", "meanvar", "meanstd", "zmin", "zmeanstd")
GRPO_LABELS = {"single": "single RM", "mean": "ensemble mean", "median": "ensemble median",
               "min": "ensemble min (raw members)", "meanvar": "ensemble mean - var (raw)",
               "meanstd": "ensemble mean - std (raw)", "zmin": "ensemble min (standardized)",
               "zmeanstd": "ensemble mean - std (standardized)"}
_GRPO_AGGREGATIONS = {"mean": "mean", "median": "median", "min": "min", "meanvar": "mean_minus_var",
                      "meanstd": "mean_minus_std", "zmin": "min", "zmeanstd": "mean_minus_std"}
GOLD_OPTIMUM_LENGTH = 16
# Label noise of the reward models' training pairs: Coste et al. (2023) train their proxy RMs with 25% label
# noise (the world's default is 5% flips on top of the Bradley-Terry draw).
FLIP_RATE = 0.25  # L* of the world's gold length term.


def _sizes(smoke: bool) -> dict:
  """Stage sizes: smoke (seconds) or the full per-seed run (budget: 3 seeds in <= 10 quiet CPU minutes)."""
  if smoke:
    return dict(model=S.SMOKE_MODEL,
                sft=dict(data=S.SMOKE_DATA, loop=S.SMOKE_LOOP, optimizer=dict(learning_rate=3e-3)),
                rm=dict(data=S.SMOKE_DATA, loop=S.SMOKE_LOOP, optimizer=dict(learning_rate=3e-3)),
                bon=dict(num_prompts=4, pool_size=16, batch_size=4, max_new_tokens=12),
                rl=dict(num_prompts=64, prompts_per_step=4, eval_prompts=8, num_devices=1,
                        sampling=dict(max_new_tokens=12), loop=S.SMOKE_LOOP, optimizer=dict(learning_rate=1e-3)))
  return dict(
      model=S.SMOKE_MODEL,
      sft=dict(data=dict(num_train=2048, num_eval=64, batch_size=32, max_length=40),
               optimizer=dict(learning_rate=3e-3, clip_norm=1.0),
               loop=dict(S.SMOKE_LOOP, num_steps=120, log_every=20, checkpoint_every=120)),
      rm=dict(data=dict(num_train=2048, num_eval=256, batch_size=32, max_length=40, world=dict(flip_rate=FLIP_RATE)),
              optimizer=dict(learning_rate=3e-3, clip_norm=1.0),
              loop=dict(S.SMOKE_LOOP, num_steps=120, log_every=20, checkpoint_every=120)),
      bon=dict(num_prompts=64, pool_size=256, batch_size=16, max_new_tokens=32),
      rl=dict(num_prompts=512, prompts_per_step=8, eval_prompts=128, num_devices=1,
              sampling=dict(max_new_tokens=32), optimizer=dict(learning_rate=1e-3, clip_norm=1.0),
              loop=dict(S.SMOKE_LOOP, num_steps=60, log_every=10, checkpoint_every=60, eval_every=60)))


def _bon_chain(sizes: dict) -> dict:
  model = dict(config=sizes["model"])
  bon = dict(sizes["bon"], aggregations=AGGREGATIONS, lam=LAM, member_curves=True, plots=False)
  return {
      "sft": S.stage("sft", sft.SFTConfig, model=model, **sizes["sft"]),
      "rm_pretrain": S.stage("reward", reward.RewardConfig, model=model, num_members=NUM_MEMBERS, **sizes["rm"]),
      "rm_finetune": S.stage("reward", reward.RewardConfig, model=model, num_members=NUM_MEMBERS,
                             shared_backbone=True, **sizes["rm"]),
      "bon_pretrain": S.stage("best_of_n", best_of_n_stage.BestOfNConfig, policy="stage:sft",
                              reward_model="stage:rm_pretrain", **bon),
      "bon_finetune": S.stage("best_of_n", best_of_n_stage.BestOfNConfig, policy="stage:sft",
                              reward_model="stage:rm_finetune", pool_from="stage:bon_pretrain", **bon),
  }


def rl_stage_name(rm: str, beta: float) -> str:
  return f"grpo_{rm}_b{beta:g}".replace(".", "p")


def _grpo_chain(sizes: dict) -> dict:
  model = dict(config=sizes["model"])
  stages = {
      "sft": S.stage("sft", sft.SFTConfig, model=model, **sizes["sft"]),
      "rm_single": S.stage("reward", reward.RewardConfig, model=model, num_members=1, **sizes["rm"]),
      "rm_pretrain": S.stage("reward", reward.RewardConfig, model=model, num_members=NUM_MEMBERS, **sizes["rm"]),
  }
  sources = {"single": dict(kind="reward_model", reward_model="stage:rm_single", name="rm")}
  for name, aggregation in _GRPO_AGGREGATIONS.items():
    # The standardized rewards (z*) were added in session 3, after the raw min had failed, as the best-of-N
    # diagnostic suggested: members standardized over the reference responses (RewardSourceSpec.standardize).
    sources[name] = dict(kind="reward_model", reward_model="stage:rm_pretrain", aggregation=aggregation, lam=LAM,
                         standardize=name.startswith("z"), name="rm")
  for rm_name, source in sources.items():
    for beta in BETAS:
      stages[rl_stage_name(rm_name, beta)] = S.stage(
          "rl", rl.RLConfig, model=dict(init_from="stage:sft"), rewards=(source,),
          loss=dict(algorithm="grpo", num_generations=4, beta=beta, kl_mode="loss", kl_estimator="k3"),
          **sizes["rl"])
  return stages


def get_config(arg=None):
  variant = arg or "default"
  if variant not in VARIANTS:
    raise ValueError(f"configs/papers/ensembles.py: unknown variant {variant!r}; valid: {', '.join(VARIANTS)}")
  sizes = _sizes(variant.endswith("smoke"))
  if variant.startswith("grpo"):
    config = S.chain(_grpo_chain(sizes), seed=0)
    config.tables = dict(metrics=tuple(f"{rl_stage_name(rm, b)}/eval/{m}" for rm in GRPO_REWARDS
                                       for b in BETAS for m in ("gold", "reward/rm", "kl", "completion_length")))
    return config
  config = S.chain(_bon_chain(sizes), seed=0)
  config.tables = dict(metrics=(
      "bon_pretrain/gold/gold_peak",
      *(f"bon_{e}/{s}/gold@N" for e in ENSEMBLES for s in ("rm_single", "rm_mean", "rm_min", "rm_mean_minus_std")),
      *(f"bon_{e}/{s}/gold_drop" for e in ENSEMBLES for s in ("rm_single", "rm_mean", "rm_min")),
      "bon_pretrain/rm_single/length@N", "bon_pretrain/rm_mean/length@N", "bon_finetune/rm_mean/length@N",
      "rm_pretrain/eval/gold_agreement", "rm_finetune/eval/gold_agreement"))
  return config


def sweep(add, arg=None):
  """3 seeds of the chosen variant; the smoke variants run one seed."""
  seeds = SEEDS[:1] if (arg or "default").endswith("smoke") else SEEDS
  for seed in seeds:
    add(seed=seed)


# ---------------------------------------------------------------------------------------- headline figure
def _load_bon_curves(sweep_dir: str) -> dict:
  """{ensemble: {selector: [curves dict of one seed, ...]}} from every finished run of a best-of-N sweep."""
  out: dict = {}
  for name in sorted(os.listdir(sweep_dir)):
    for ensemble in ENSEMBLES:
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
  import numpy as np  # pylint: disable=g-import-not-at-top
  x = np.asarray([r[key] for r in runs], np.float64)
  return x.mean(0), (x.std(0, ddof=1) if len(runs) > 1 else np.zeros(x.shape[1:]))


def summary_table(sweep_dir: str) -> str:
  """Markdown: one row per (ensemble, selector), mean ± std over seeds of gold@1, peak gold (and its KL), gold@N,
  the drop from the peak, the proxy gain in pool std and the selected response's length at n = N."""
  import numpy as np  # pylint: disable=g-import-not-at-top
  data = _load_bon_curves(sweep_dir)
  cols = ("gold@1", "gold_peak", "gold_peak_kl", "gold@N", "gold_drop", "proxy_gain_std", "length@N")
  lines = ["| ensemble | selector | seeds | " + " | ".join(cols) + " |", "|" + "---|" * (len(cols) + 3)]
  for ensemble, selectors in data.items():
    for selector in SELECTORS:
      runs = selectors.get(selector)
      if not runs or (ensemble != ENSEMBLES[0] and selector == "gold"):
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
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  data = _load_bon_curves(sweep_dir)
  fig, axes = plt.subplots(1, 3, figsize=(16, 4.6))
  colors = dict(zip(SELECTORS, plt.rcParams["axes.prop_cycle"].by_key()["color"]))
  for ensemble, style in zip(ENSEMBLES, ("-", "--")):
    for selector in SELECTORS:
      runs = data.get(ensemble, {}).get(selector)
      if not runs or (selector == "gold" and ensemble != ENSEMBLES[0]):
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
  axes[2].axhline(GOLD_OPTIMUM_LENGTH, color="k", lw=0.8, label="gold optimum L* = 16")
  titles = ("gold reward of best-of-n", "proxy reward gain (pool std units)", "length of the selected response")
  for ax, title in zip(axes, titles):
    ax.set_xlabel("KL_bon = log n - (n-1)/n [nats]")
    ax.set_title(title)
    ax.grid(alpha=0.3)
  axes[0].legend(fontsize=7, ncol=2)
  n_max = int(round(np.asarray(runs[0]["n"])[-1]))
  fig.suptitle(f"Best-of-n (n <= {n_max}), {NUM_MEMBERS}-member reward-model ensembles, "
               f"mean over {len(runs)} seeds (bands: ±1 std)")
  fig.tight_layout()
  os.makedirs(os.path.dirname(os.path.abspath(out_path)), exist_ok=True)
  fig.savefig(out_path, dpi=110)
  plt.close(fig)
  return out_path


def grpo_plot(sweep_dir: str, out_path: str) -> str:
  """GRPO variant: eval gold reward and completion length against eval KL, one point per beta (mean ± std over
  seeds), one line per reward of GRPO_REWARDS; the dotted line is the gold optimum L* in the length panel."""
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  runs = []
  for name in sorted(os.listdir(sweep_dir)):
    path = os.path.join(sweep_dir, name, "results.json")
    if os.path.exists(path):
      with open(path) as f:
        runs.append(json.load(f)["metrics"])
  if not runs:
    raise FileNotFoundError(f"sweep_dir: no <run>/results.json under {sweep_dir!r}")
  fig, axes = plt.subplots(1, 2, figsize=(12, 5))
  for rm, label in GRPO_LABELS.items():
    if not all(f"{rl_stage_name(rm, b)}/eval/gold" in r for r in runs for b in BETAS):
      continue  # a sweep from before this reward was added
    stats = {}
    for metric in ("gold", "kl", "completion_length"):
      x = np.asarray([[r[f"{rl_stage_name(rm, b)}/eval/{metric}"] for b in BETAS] for r in runs])
      stats[metric] = (x.mean(0), x.std(0, ddof=1) if len(runs) > 1 else np.zeros(len(BETAS)))
    for ax, metric in zip(axes, ("gold", "completion_length")):
      ax.errorbar(stats["kl"][0], stats[metric][0], xerr=stats["kl"][1], yerr=stats[metric][1], marker="o",
                  capsize=3, label=label)
      if rm == "single":  # one curve's labels suffice: beta falls from left to right on every curve
        for b, x, y in zip(BETAS, stats["kl"][0], stats[metric][0]):
          ax.annotate(f"beta={b:g}", (x, y), fontsize=7, xytext=(3, 3), textcoords="offset points")
  axes[1].axhline(GOLD_OPTIMUM_LENGTH, color="k", lw=0.8, ls=":", label="gold optimum L* = 16")
  for ax, title in zip(axes, ("eval gold reward", "eval completion length")):
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


def standardized_table(sweep_dir: str) -> str:
  """Post-hoc diagnostic on the saved pools and reward models of a finished best-of-N sweep (no new samples):
  per ensemble, the spread of the members' mean rewards and scales over the pool, and gold@N of each
  aggregation on raw member scores vs on members standardized over the pool (`best_of_n_stage.standardize_members`),
  mean ± std over seeds."""
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  from jaxrlhf.losses.aggregation import aggregate  # pylint: disable=g-import-not-at-top
  from jaxrlhf.sampling.best_of_n import best_of_n_curves  # pylint: disable=g-import-not-at-top
  from jaxrlhf.train import builders  # pylint: disable=g-import-not-at-top
  rows: dict = {}
  for name in sorted(os.listdir(sweep_dir)):
    pool_path = os.path.join(sweep_dir, name, "bon_pretrain", "pool.npz")
    if not os.path.exists(pool_path):
      continue
    pools = dict(np.load(pool_path))
    for ensemble in ENSEMBLES:
      rm = builders.load_reward_model(os.path.join(sweep_dir, name, f"rm_{ensemble}", "rm"))
      raw = best_of_n_stage.score_pools(rm, pools, 16)
      stats = {"member offset spread": raw.mean((0, 1)).std(),
               "member scale max/min": raw.std((0, 1)).max() / raw.std((0, 1)).min()}
      for label, scores in (("raw", raw), ("standardized", best_of_n_stage.standardize_members(raw))):
        for agg in AGGREGATIONS:
          proxy = np.asarray(aggregate(jnp.asarray(scores, jnp.float32), agg, LAM), np.float64)
          stats[f"{label} {agg}"] = best_of_n_curves(proxy, pools["gold"])["gold"][-1]
      for key, value in stats.items():
        rows.setdefault(ensemble, {}).setdefault(key, []).append(float(value))
  if not rows:
    raise FileNotFoundError(f"sweep_dir: no bon_pretrain/pool.npz under {sweep_dir!r}")
  keys = list(next(iter(rows.values())))
  lines = ["| ensemble | seeds | " + " | ".join(keys) + " |", "|" + "---|" * (len(keys) + 2)]
  for ensemble, stats in rows.items():
    cells = [f"{np.mean(v):.3g} ± {np.std(v, ddof=1) if len(v) > 1 else 0.0:.2g}" for v in stats.values()]
    lines.append(f"| {ensemble} | {len(stats[keys[0]])} | " + " | ".join(cells) + " |")
  return "\n".join(lines) + "\n"


def main(argv: list[str]) -> None:
  """python -m configs.papers.ensembles SWEEP_DIR OUT_DIR [--standardized | --grpo]: for a best-of-N sweep,
  OUT_DIR/plots/headline_bon.png and OUT_DIR/curves.md (+ OUT_DIR/standardized.md, the post-hoc
  member-standardization diagnostic); for the "grpo" sweep (--grpo), OUT_DIR/plots/grpo_gold_vs_kl.png."""
  flag = argv[3] if len(argv) == 4 else ""
  if len(argv) not in (3, 4) or flag not in ("", "--standardized", "--grpo"):
    raise SystemExit("usage: python -m configs.papers.ensembles SWEEP_DIR OUT_DIR [--standardized | --grpo]")
  sweep_dir, out_dir = argv[1], argv[2]
  if flag == "--grpo":
    print(grpo_plot(sweep_dir, os.path.join(out_dir, "plots", "grpo_gold_vs_kl.png")))
    return
  print(headline_plot(sweep_dir, os.path.join(out_dir, "plots", "headline_bon.png")))
  outputs = {"curves.md": summary_table}
  if flag == "--standardized":
    outputs["standardized.md"] = standardized_table
  for filename, fn in outputs.items():
    table = fn(sweep_dir)
    with open(os.path.join(out_dir, filename), "w") as f:
      f.write(table)
    print(table, end="")


if __name__ == "__main__":
  main(sys.argv)
