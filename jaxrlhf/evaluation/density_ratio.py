"""Density-ratio rewards of a strong-over-weak policy pair (Xu et al. 2024, "CDR: Customizable Density Ratios of
Strong-over-weak LLMs for Preference Annotation", arXiv:2411.02481; v3 titled "Dr. SoW"):

    r(x, y) = log pi_strong(y | x_strong) - log pi_weak(y | x_weak)

summed over the response tokens (the end token included). The paper's finding: the larger the performance gap
between the strong and the weak model, the better the density ratio ranks responses (221 model pairs, Figure 1).
The "density_ratio" stage (jaxrlhf.stages.density_ratio) computes the log-probs; this module scores the ratios:
pairwise accuracy against the gold ordering and against the labels, and the length bias.
"""

from __future__ import annotations

import os
from typing import Any, Sequence

import numpy as np

from jaxrlhf.evaluation import pairwise


def density_ratio(strong_logps_B: Any, weak_logps_B: Any) -> np.ndarray:
  """float64 (B,): log pi_strong(y|x) - log pi_weak(y|x) from per-response summed log-probs (nats)."""
  strong = np.asarray(strong_logps_B, np.float64)
  weak = np.asarray(weak_logps_B, np.float64)
  if strong.ndim != 1 or strong.shape != weak.shape:
    raise ValueError(f"strong_logps_B and weak_logps_B must be equal (B,) arrays; got {strong.shape} and "
                     f"{weak.shape}")
  return strong - weak


def gold_oriented(reward_a: Any, reward_b: Any, gold_a: Any, gold_b: Any) -> tuple[np.ndarray, np.ndarray]:
  """(reward of the gold-better response, reward of the gold-worse one) for pairs whose gold differs."""
  reward_a, reward_b = np.asarray(reward_a, np.float64), np.asarray(reward_b, np.float64)
  gold_a, gold_b = np.asarray(gold_a, np.float64), np.asarray(gold_b, np.float64)
  if not reward_a.shape == reward_b.shape == gold_a.shape == gold_b.shape or reward_a.ndim != 1:
    raise ValueError(f"rewards and golds must be equal (B,) arrays; got {reward_a.shape}, {reward_b.shape}, "
                     f"{gold_a.shape}, {gold_b.shape}")
  keep = gold_a != gold_b
  a_better = gold_a > gold_b
  better = np.where(a_better, reward_a, reward_b)[keep]
  worse = np.where(a_better, reward_b, reward_a)[keep]
  return better, worse


def ratio_metrics(ratio_a: np.ndarray, ratio_b: np.ndarray, gold_a: np.ndarray, gold_b: np.ndarray,
                  a_is_chosen: np.ndarray, length_a: np.ndarray, length_b: np.ndarray) -> dict[str, float]:
  """acc_gold, acc_label, length_corr of one reward on pairs (a, b) with their golds and labels."""
  better, worse = gold_oriented(ratio_a, ratio_b, gold_a, gold_b)
  chosen = np.where(a_is_chosen, ratio_a, ratio_b)
  rejected = np.where(a_is_chosen, ratio_b, ratio_a)
  corr = pairwise.length_correlation(np.concatenate([ratio_a, ratio_b]), np.concatenate([length_a, length_b]))
  return {"acc_gold": pairwise.pairwise_accuracy(better, worse),
          "acc_label": pairwise.pairwise_accuracy(chosen, rejected),
          "length_corr": corr["spearman"]}


def plot_gap_accuracy(path: str, names: Sequence[str], gaps: Sequence[float], acc_gold: Sequence[float],
                      acc_label: Sequence[float], gap_err: Sequence[float] | None = None,
                      acc_err: Sequence[float] | None = None) -> None:
  """Accuracy (against gold and labels) against the strong-weak gold gap, one labeled point per ratio."""
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  fig, ax = plt.subplots(figsize=(5.5, 4))
  ax.errorbar(gaps, acc_gold, xerr=gap_err, yerr=acc_err, fmt="o", capsize=3, label="vs gold ordering")
  ax.plot(gaps, acc_label, "s", mfc="none", label="vs labels")
  for name, x, y in zip(names, gaps, acc_gold):
    ax.annotate(name, (x, y), fontsize=7, xytext=(3, 3), textcoords="offset points")
  ax.axhline(0.5, color="gray", lw=0.5)
  ax.set_xlabel("gold(strong samples) - gold(weak samples)")
  ax.set_ylabel("pairwise accuracy of log pi_s - log pi_w")
  ax.legend(fontsize=8)
  fig.tight_layout()
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  fig.savefig(path, dpi=100)
  plt.close(fig)
