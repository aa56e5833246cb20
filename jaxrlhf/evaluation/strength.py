"""Preference strength metrics: how well a reward ensemble's strength of training pairs finds mislabeled pairs.

Wang et al. 2024, "Secrets of RLHF in Large Language Models Part II: Reward Modeling", §2: M reward models
score every pair; d_m = r_m(x, y_chosen) - r_m(x, y_rejected); the pair's preference strength is the member
mean of d_m (and its std the disagreement). Pairs with the lowest strength are the likely mislabeled ones
(the paper's Fig. 2: pairs sorted by mean strength into buckets; the lowest buckets have mean < 0).

`strength_metrics` (the "preference_strength" stage's results; `f` = a fraction, printed as a percentage, e.g.
lowest10):
  flip_rate                        fraction of labels flipped (the base rate), where the truth is known;
  auroc                            P(strength of a flipped pair < strength of an unflipped pair) (ties 1/2);
  lowest<f>/precision, /recall     of the lowest-strength floor(f N) pairs as a detector of flipped labels;
  lowest<f>/gold_disagreement      fraction of that bucket whose label disagrees with gold;
  bucket<b>/strength_mean, /strength_std, /flip_rate, /gold_agreement   per bucket b = 0 (weakest) .. B-1,
                                   B = `num_buckets` equal-count buckets by mean strength (Fig. 2);
  strength_mean, strength_std      over all pairs.
"""

from __future__ import annotations

import math
import os
from typing import Any, Sequence

import numpy as np

from jaxrlhf.evaluation import stats


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
  under the ROC curve of -strength as a flip detector; NaN when one class is empty."""
  s = _strengths("strength_N", strength_N)
  return stats.auroc(-s, _flags("flipped_N", flipped_N, s.size))


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
