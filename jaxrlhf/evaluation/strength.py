"""Preference strength of training pairs under a reward ensemble, and how well it finds mislabeled pairs.

Wang et al. 2024, "Secrets of RLHF in Large Language Models Part II: Reward Modeling", §2: M reward models
score every pair; d_m = r_m(x, y_chosen) - r_m(x, y_rejected); the pair's preference strength is the member
mean of d_m (and its std the disagreement). Pairs with the lowest strength are the likely mislabeled ones
(the paper's Fig. 2: pairs sorted by mean strength into 10 buckets; the lowest buckets have mean < 0).

The "preference_strength" stage scores the TRAINING pairs of `data` (the same records the ensemble trained on)
with the saved ensemble `reward_model` and, in the synthetic world, compares against the world's own record of
which labels were flipped (`World.preference_pairs(...)["flipped"]`, matched to records by their `source`
index) and against the gold preference r*(chosen) > r*(rejected).

Metrics (results.json; `f` = a fraction in `fractions`, printed as a percentage, e.g. lowest10):
  flip_rate                        fraction of training labels flipped by the world (the base rate);
  auroc                            P(strength of a flipped pair < strength of an unflipped pair) (ties 1/2);
  lowest<f>/precision, /recall     of the lowest-strength floor(f N) pairs as a detector of flipped labels;
  lowest<f>/gold_disagreement      fraction of that bucket whose label disagrees with gold;
  bucket<b>/strength_mean, /strength_std, /flip_rate, /gold_agreement   per bucket b = 0 (weakest) .. B-1,
                                   B = `num_buckets` equal-count buckets by mean strength (Fig. 2);
  strength_mean, strength_std      over all pairs.
Files (workdir): strengths.npz (mean_N, std_N, margins_NxM, flipped_N, gold_agree_N), buckets.md,
strength_buckets.png.

`python -m jaxrlhf.evaluation.strength --workdir <sweep dir> [--stage strength]` aggregates the bucket table
over a sweep's runs (mean ± std over seeds) into <sweep dir>/buckets.md and plots/strength_buckets.png.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import re
from typing import Any, Sequence

import numpy as np

from jaxrlhf.config import ConfigError, field
from jaxrlhf.losses.reward import preference_strength
from jaxrlhf.train import builders

_SOURCE_INDEX = re.compile(r":(\d+)$")


@dataclasses.dataclass(frozen=True)
class PreferenceStrengthConfig:
  """The "preference_strength" stage.

  reward_model: "stage:<name>" or a saved reward-model folder (an ensemble; M = its members).
  data: the pairs to score (its TRAINING split, `data.num_train` pairs: the ensemble's own training data).
  fractions: the lowest-strength buckets scored as flip detectors (precision / recall).
  num_buckets: equal-count buckets by mean strength for the bucket table (the paper uses 10).
  """
  reward_model: str = field("")
  data: builders.DataSpec = field(default_factory=builders.DataSpec)
  fractions: tuple[float, ...] = field((0.1, 0.2, 0.3))
  num_buckets: int = field(10, min=2)
  plots: bool = field(True)

  def validate(self, path: str) -> None:
    if not self.reward_model:
      raise ConfigError(f"{path}.reward_model: required ('{builders.STAGE_PREFIX}<ensemble stage>' or a saved "
                        "reward-model folder)")
    if not self.reward_model.startswith(builders.STAGE_PREFIX) and not os.path.exists(self.reward_model):
      raise ConfigError(f"{path}.reward_model: {self.reward_model!r} does not exist")
    if not self.fractions or any(not 0.0 < f < 1.0 for f in self.fractions):
      raise ConfigError(f"{path}.fractions: {self.fractions} must be non-empty, each in (0, 1)")
    for key in ("transform", "curate", "margin_from"):
      if getattr(self.data, key) != "none":
        raise ConfigError(f"{path}.data.{key}: must be 'none' (the stage scores the pairs as read, as the "
                          f"ensemble trained on them), got {getattr(self.data, key)!r}")
    if self.data.num_train < self.num_buckets:
      raise ConfigError(f"{path}.data.num_train: {self.data.num_train} pairs cannot fill "
                        f"{path}.num_buckets={self.num_buckets} buckets")


# ------------------------------------------------------------------------------------------------ pure metrics
def _flags(name: str, x: Any, n: int | None = None) -> np.ndarray:
  x = np.asarray(x)
  if x.ndim != 1 or (n is not None and x.shape[0] != n):
    raise ValueError(f"{name} must have shape ({n if n is not None else 'N'},), got {x.shape}")
  return x.astype(bool)


def _strengths(name: str, x: Any) -> np.ndarray:
  x = np.asarray(x, np.float64)
  if x.ndim != 1 or not x.size:
    raise ValueError(f"{name} must be a non-empty 1-D array, got shape {x.shape}")
  if not np.isfinite(x).all():
    raise ValueError(f"{name} must be finite")
  return x


def lowest_bucket(strength_N: Any, fraction: float) -> np.ndarray:
  """(N,) bool: the floor(fraction * N) lowest-strength pairs, ties broken by position (a stable sort) —
  exactly the pairs `jaxrlhf.data.transforms.curate_by_strength` flips or drops at that fraction."""
  s = _strengths("strength_N", strength_N)
  if not 0.0 <= fraction <= 1.0:
    raise ValueError(f"fraction must be in [0, 1], got {fraction}")
  k = int(math.floor(fraction * s.size + 1e-9))
  mask = np.zeros(s.size, bool)
  mask[np.argsort(s, kind="stable")[:k]] = True
  return mask


def detection_scores(strength_N: Any, flipped_N: Any, fraction: float) -> dict[str, float]:
  """Precision and recall of "the lowest-strength `fraction` of pairs" as a detector of flipped labels.

  precision = |bucket ∩ flipped| / |bucket| (NaN for an empty bucket); recall = |bucket ∩ flipped| / |flipped|
  (NaN without flips); size = |bucket|.
  """
  s = _strengths("strength_N", strength_N)
  flipped = _flags("flipped_N", flipped_N, s.size)
  bucket = lowest_bucket(s, fraction)
  hits = float(np.sum(bucket & flipped))
  return {"precision": hits / bucket.sum() if bucket.any() else math.nan,
          "recall": hits / flipped.sum() if flipped.any() else math.nan,
          "size": float(bucket.sum())}


def auroc(strength_N: Any, flipped_N: Any) -> float:
  """P(strength of a random flipped pair < strength of a random unflipped pair), ties counting 1/2: the area
  under the ROC curve of -strength as a flip detector (Mann-Whitney U / (n_flipped * n_clean)); NaN when one
  class is empty."""
  s = _strengths("strength_N", strength_N)
  flipped = _flags("flipped_N", flipped_N, s.size)
  n_pos, n_neg = int(flipped.sum()), int((~flipped).sum())
  if not n_pos or not n_neg:
    return math.nan
  # Average ranks of -strength (ties share their mean rank); U of the flipped class.
  order = np.argsort(-s, kind="stable")
  ranks = np.empty(s.size, np.float64)
  sorted_vals = -s[order]
  starts = np.r_[0, np.flatnonzero(np.diff(sorted_vals)) + 1]
  ends = np.r_[starts[1:], s.size]
  for a, b in zip(starts, ends):
    ranks[order[a:b]] = (a + b + 1) / 2.0  # 1-based mean rank of positions a..b-1
  u = ranks[flipped].sum() - n_pos * (n_pos + 1) / 2.0
  return float(u / (n_pos * n_neg))


def bucket_table(mean_N: Any, std_N: Any, flipped_N: Any = None, gold_agree_N: Any = None,
                 num_buckets: int = 10) -> list[dict[str, float]]:
  """Rows of the paper's Fig. 2: pairs sorted by mean strength (stable) into `num_buckets` equal-count buckets
  (sizes differ by at most one; bucket 0 = weakest). Each row: bucket, count, strength_mean (mean of mean_N),
  strength_std (mean of std_N), and where given flip_rate (mean of flipped_N) and gold_agreement (mean of
  gold_agree_N: 1 where the label agrees with the gold preference)."""
  mean = _strengths("mean_N", mean_N)
  std = _strengths("std_N", std_N)
  if std.shape != mean.shape:
    raise ValueError(f"std_N must have shape {mean.shape}, got {std.shape}")
  if not isinstance(num_buckets, int) or not 1 <= num_buckets <= mean.size:
    raise ValueError(f"num_buckets must be an int in [1, {mean.size}], got {num_buckets!r}")
  extra = {}
  if flipped_N is not None:
    extra["flip_rate"] = _flags("flipped_N", flipped_N, mean.size)
  if gold_agree_N is not None:
    extra["gold_agreement"] = _flags("gold_agree_N", gold_agree_N, mean.size)
  rows = []
  for b, idx in enumerate(np.array_split(np.argsort(mean, kind="stable"), num_buckets)):
    row = {"bucket": b, "count": int(idx.size), "strength_mean": float(mean[idx].mean()),
           "strength_std": float(std[idx].mean())}
    row.update({k: float(v[idx].mean()) for k, v in extra.items()})
    rows.append(row)
  return rows


def fraction_name(fraction: float) -> str:
  """0.1 -> "lowest10", 0.125 -> "lowest12.5"."""
  return "lowest" + np.format_float_positional(100.0 * fraction, trim="-", precision=6)


def strength_metrics(mean_N: Any, std_N: Any, flipped_N: Any = None, gold_agree_N: Any = None,
                     fractions: Sequence[float] = (0.1, 0.2, 0.3), num_buckets: int = 10) -> dict[str, float]:
  """The stage's flat metrics dict (see the module docstring) from per-pair strengths and truths."""
  mean = _strengths("mean_N", mean_N)
  out = {"strength_mean": float(mean.mean()), "strength_std": float(np.asarray(std_N, np.float64).mean())}
  if flipped_N is not None:
    flipped = _flags("flipped_N", flipped_N, mean.size)
    out["flip_rate"] = float(flipped.mean())
    out["auroc"] = auroc(mean, flipped)
    for f in fractions:
      scores = detection_scores(mean, flipped, f)
      out[f"{fraction_name(f)}/precision"] = scores["precision"]
      out[f"{fraction_name(f)}/recall"] = scores["recall"]
  if gold_agree_N is not None:
    agree = _flags("gold_agree_N", gold_agree_N, mean.size)
    out["label_gold_agreement"] = float(agree.mean())
    for f in fractions:
      bucket = lowest_bucket(mean, f)
      out[f"{fraction_name(f)}/gold_disagreement"] = float(np.mean(~agree[bucket])) if bucket.any() else math.nan
  for row in bucket_table(mean, std_N, flipped_N, gold_agree_N, num_buckets):
    for k, v in row.items():
      if k not in ("bucket", "count"):
        out[f"bucket{row['bucket']}/{k}"] = v
  return out


def bucket_markdown(rows: Sequence[dict[str, Any]]) -> str:
  """The bucket table as markdown (values may be floats or preformatted strings)."""
  keys = list(rows[0])
  lines = ["| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
  for r in rows:
    lines.append("| " + " | ".join(v if isinstance(v, str) else f"{v:.4g}" for v in r.values()) + " |")
  return "\n".join(lines) + "\n"


def plot_buckets(path: str, rows: Sequence[dict[str, float]], errors: Sequence[dict[str, float]] | None = None
                 ) -> None:
  """Fig. 2 style PNG: mean strength ± mean member std per bucket (bars), flip rate per bucket (line)."""
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  b = [r["bucket"] for r in rows]
  fig, ax = plt.subplots(figsize=(6, 3.5))
  ax.bar(b, [r["strength_mean"] for r in rows], yerr=[r["strength_std"] for r in rows], capsize=3,
         color="tab:blue", alpha=0.7, label="mean strength ± member std")
  ax.axhline(0.0, color="k", lw=0.5)
  ax.set_xlabel("bucket (sorted by mean preference strength)")
  ax.set_ylabel("preference strength")
  if "flip_rate" in rows[0]:
    ax2 = ax.twinx()
    yerr = [e["flip_rate"] for e in errors] if errors else None
    ax2.errorbar(b, [r["flip_rate"] for r in rows], yerr=yerr, color="tab:red", marker="o", capsize=3,
                 label="flipped labels")
    if "gold_agreement" in rows[0]:
      ax2.plot(b, [1.0 - r["gold_agreement"] for r in rows], color="tab:orange", marker="s", ls="--",
               label="labels disagreeing with gold")
    ax2.set_ylim(0.0, 1.0)
    ax2.set_ylabel("fraction of bucket")
    ax2.legend(loc="upper right", fontsize=8)
  ax.legend(loc="upper left", fontsize=8)
  fig.tight_layout()
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  fig.savefig(path, dpi=100)
  plt.close(fig)


# ------------------------------------------------------------------------------------------------ scoring
def world_truths(world: Any, records: list, split: str = "train") -> tuple[np.ndarray, np.ndarray]:
  """(flipped_N, gold_agree_N) of synthetic-world records, matched by the index at the end of `source`.

  gold_agree: the record's label agrees with r*: chosen is the response with the higher gold reward.
  """
  indices = []
  for i, r in enumerate(records):
    m = _SOURCE_INDEX.search(r.source or "")
    if not m or f":{split}:" not in r.source:
      raise ValueError(f"records[{i}].source: {r.source!r} is not a synthetic-world {split} pair "
                       f"('synthetic:seed=<s>:{split}:<index>')")
    indices.append(int(m.group(1)))
  idx = np.asarray(indices)
  pairs = world.preference_pairs(int(idx.max()) + 1, split)
  a_better = pairs["gold_a"][idx] > pairs["gold_b"][idx]
  return pairs["flipped"][idx].astype(bool), pairs["a_wins"][idx] == a_better


# ------------------------------------------------------------------------------------------------ the stage
def run_preference_strength(cfg: PreferenceStrengthConfig, workdir: str, inputs: dict) -> dict:
  """Scores the training pairs with the ensemble; writes strengths.npz, buckets.md and the plot."""
  data = cfg.data
  world = builders.make_world(data) if data.source == "world" else None
  tokenizer = builders.make_tokenizer(data, world, "")
  records, _, report = builders.preference_records(data, world)
  rm = builders.load_reward_model(builders.resolve_path(cfg.reward_model, inputs, "rm_dir"))
  margins_NxM = builders.member_margins(rm, records, tokenizer, data)
  mean_N, std_N = (np.asarray(x, np.float64) for x in preference_strength(margins_NxM, np.zeros_like(margins_NxM)))
  flipped = gold_agree = None
  if world is not None:
    flipped, gold_agree = world_truths(world, records, "train")
  metrics = strength_metrics(mean_N, std_N, flipped, gold_agree, cfg.fractions, cfg.num_buckets)
  metrics["num_members"] = float(margins_NxM.shape[1])
  os.makedirs(workdir, exist_ok=True)
  np.savez(os.path.join(workdir, "strengths.npz"), mean_N=mean_N, std_N=std_N, margins_NxM=margins_NxM,
           **({"flipped_N": flipped, "gold_agree_N": gold_agree} if world is not None else {}))
  rows = bucket_table(mean_N, std_N, flipped, gold_agree, cfg.num_buckets)
  with open(os.path.join(workdir, "buckets.md"), "w") as f:
    f.write(bucket_markdown(rows))
  print(bucket_markdown(rows), flush=True)
  if cfg.plots:
    plot_buckets(os.path.join(workdir, "strength_buckets.png"), rows)
  return {"metrics": metrics, "strengths": os.path.join(workdir, "strengths.npz"), "data_report": report}


# ------------------------------------------------------------------------------------------------ sweep summary
def sweep_buckets(workdir: str, stage: str = "strength") -> tuple[list[dict[str, str]], list[dict], list[dict]]:
  """Aggregates `<stage>/bucket<b>/*` metrics over a sweep's finished runs.

  Returns (markdown rows "mean ± std", mean rows, std rows) per bucket (sample std over runs, ddof=1).
  """
  per_run = []
  for name in sorted(os.listdir(workdir)):
    path = os.path.join(workdir, name, "results.json")
    if os.path.exists(path):
      with open(path) as f:
        results = json.load(f)
      if results.get("status") == "done":
        per_run.append(results["metrics"])
  prefix = f"{stage}/bucket"
  keys = sorted({k for m in per_run for k in m if k.startswith(prefix)})
  if not keys:
    raise ValueError(f"--workdir: no finished run under {workdir!r} has {prefix}<b>/* metrics")
  buckets = sorted({int(k[len(prefix):].split("/")[0]) for k in keys})
  fields = sorted({k.split("/", 2)[2] for k in keys}, key=["strength_mean", "strength_std", "flip_rate",
                                                           "gold_agreement"].index)
  md, means, stds = [], [], []
  for b in buckets:
    mean_row, std_row, md_row = {"bucket": b}, {"bucket": b}, {"bucket": str(b)}
    for fld in fields:
      v = np.asarray([m[f"{prefix}{b}/{fld}"] for m in per_run if f"{prefix}{b}/{fld}" in m], np.float64)
      mean_row[fld] = float(v.mean())
      std_row[fld] = float(v.std(ddof=1)) if v.size > 1 else 0.0
      md_row[fld] = f"{mean_row[fld]:.3g} ± {std_row[fld]:.2g}"
    md.append(md_row)
    means.append(mean_row)
    stds.append(std_row)
  return md, means, stds


def main(argv: Sequence[str] | None = None) -> None:
  parser = argparse.ArgumentParser(description="Bucket table (Fig. 2) of a preference-strength sweep.")
  parser.add_argument("--workdir", required=True)
  parser.add_argument("--stage", default="strength")
  args = parser.parse_args(argv)
  md, means, stds = sweep_buckets(args.workdir, args.stage)
  text = bucket_markdown(md)
  with open(os.path.join(args.workdir, "buckets.md"), "w") as f:
    f.write(text)
  plot_buckets(os.path.join(args.workdir, "plots", "strength_buckets.png"), means, stds)
  print(text, end="")


if __name__ == "__main__":
  main()
