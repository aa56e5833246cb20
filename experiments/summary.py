"""The end-of-run summary of a chain: a table of every evaluated policy and reward model, and a plot.

After `experiments.run` finishes a chain, every "evaluate_policy" stage becomes a row of the policy table (gold
reward, gain over the base policy, win rate, each reward source's mean / gain / win rate, KL to the base, length,
proxy reward; each mean with its 95% confidence interval over prompts) and every "reward" stage a row of the
reward-model table (its held-out metrics).
The markdown goes to DIR/summary.md (and stdout), the reward-vs-KL plot (gold, else the first reward
source) to DIR/gold_vs_kl.png.
"""

from __future__ import annotations

import math
import os
from typing import Any, Sequence

POLICY_COLUMNS = (("gold/policy", "gold"), ("gold/gain", "gold gain"), ("gold/win_rate", "win rate"),
                  ("kl", "KL to base (nats)"), ("length/policy", "length"), ("proxy/policy", "proxy"))


def _cell(metrics: dict[str, float], key: str) -> str:
  if key not in metrics:
    return "-"
  lower, upper = metrics.get(f"{key}_lower"), metrics.get(f"{key}_upper")
  if lower is None or upper is None:
    return f"{metrics[key]:.3f}"
  if not (math.isfinite(lower) and math.isfinite(upper)):  # The normal interval of a single prompt: (-inf, inf).
    return f"{metrics[key]:.3f} [no interval: one prompt]"
  return f"{metrics[key]:.3f} [{lower:.3f}, {upper:.3f}]"


def reward_labels(policies: list[tuple[str, dict]]) -> list[str]:
  """The labels of the reward sources an evaluate_policy stage scored (its "reward/<label>/policy" metrics), in
  first-seen order."""
  labels = []
  for _, metrics in policies:
    for key in metrics:
      if key.startswith("reward/") and key.endswith("/policy"):
        label = key[len("reward/"):-len("/policy")]
        if label not in labels:
          labels.append(label)
  return labels


def policy_columns(policies: list[tuple[str, dict]]) -> list[tuple[str, str]]:
  """(metric key, column header) of the policy table: the gold columns, then every reward source's mean, gain and
  win rate, then KL, length and proxy; only columns some policy has."""
  columns = list(POLICY_COLUMNS[:3])
  for label in reward_labels(policies):
    columns += [(f"reward/{label}/policy", label), (f"reward/{label}/gain", f"{label} gain"),
                (f"reward/{label}/win_rate", f"{label} win rate")]
  columns += POLICY_COLUMNS[3:]
  return [(k, header) for k, header in columns if any(k in m for _, m in policies)]


def policy_rows(stages: Sequence[tuple[str, str, Any]], outputs: dict[str, dict]) -> list[tuple[str, dict]]:
  """[(policy name, metrics)] from the evaluate_policy stages, with the first stage's base policy first (its
  gold and reward-source means; KL 0 by definition)."""
  rows = []
  for name, kind, cfg in stages:
    if kind != "evaluate_policy" or name not in outputs:
      continue
    metrics = outputs[name].get("metrics", {})
    if not rows:
      base_metrics = {key[:-len("/base")] + "/policy": value for key, value in metrics.items()
                      if key in ("gold/base", "length/base") or (key.startswith("reward/") and key.endswith("/base"))}
      if base_metrics:
        base = cfg.base.removeprefix("stage:")
        rows.append((f"{os.path.basename(base.rstrip('/')) or base} (base)", {**base_metrics, "kl": 0.0}))
    rows.append((cfg.policy.removeprefix("stage:"), metrics))
  return rows


def reward_rows(stages: Sequence[tuple[str, str, Any]], outputs: dict[str, dict]) -> list[tuple[str, dict]]:
  """[(stage name, held-out metrics)] of the reward stages."""
  return [(name, {k: v for k, v in outputs[name].get("metrics", {}).items() if k.startswith("eval/")})
          for name, kind, _ in stages if kind == "reward" and name in outputs]


def markdown(policies: list[tuple[str, dict]], rewards: list[tuple[str, dict]]) -> str:
  parts = []
  if rewards:
    keys = sorted({k for _, m in rewards for k in m})
    parts.append("| reward model | " + " | ".join(keys) + " |\n|" + "---|" * (len(keys) + 1))
    parts += ["| " + name + " | " + " | ".join(_cell(m, k) for k in keys) + " |" for name, m in rewards]
    parts.append("")
  if policies:
    columns = policy_columns(policies)
    parts.append("| policy | " + " | ".join(label for _, label in columns) + " |\n|" + "---|" * (len(columns) + 1))
    parts += ["| " + name + " | " + " | ".join(_cell(m, k) for k, _ in columns) + " |" for name, m in policies]
  return "\n".join(parts) + "\n" if parts else ""


def plot_reward_vs_kl(path: str, policies: list[tuple[str, dict]]) -> bool:
  """Gold reward (or, without gold, the first reward source) against KL to the base, one point with 95% intervals
  per policy that has it; returns False (and writes nothing) when no policy has a score to plot."""
  labels = reward_labels(policies)
  key = "gold/policy" if any("gold/policy" in m for _, m in policies) else (
      f"reward/{labels[0]}/policy" if labels else None)
  points = [(name, m) for name, m in policies if key is not None and key in m]
  if not points:
    return False
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  fig, ax = plt.subplots(figsize=(5, 3.5))
  for name, m in points:
    x, y = m.get("kl", 0.0), m[key]
    xerr = [[x - m.get("kl_lower", x)], [m.get("kl_upper", x) - x]]
    yerr = [[y - m.get(f"{key}_lower", y)], [m.get(f"{key}_upper", y) - y]]
    ax.errorbar([x], [y], xerr=xerr, yerr=yerr, marker="o", capsize=3, label=name)
  ax.set_xlabel("KL(policy || base), nats per response")
  ax.set_ylabel("gold reward" if key == "gold/policy" else f"reward: {labels[0]}")
  ax.legend(fontsize=8)
  fig.tight_layout()
  fig.savefig(path, dpi=100)
  plt.close(fig)
  return True


def write_summary(workdir: str, stages: Sequence[tuple[str, str, Any]], outputs: dict[str, dict]) -> str:
  """Writes DIR/summary.md (+ DIR/gold_vs_kl.png when evaluated policies have a gold or reward-source score);
  returns the markdown."""
  policies, rewards = policy_rows(stages, outputs), reward_rows(stages, outputs)
  md = markdown(policies, rewards)
  if md:
    with open(os.path.join(workdir, "summary.md"), "w") as f:
      f.write(md)
  if policies:
    plot_reward_vs_kl(os.path.join(workdir, "gold_vs_kl.png"), policies)
  return md
