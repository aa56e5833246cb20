"""The "preference_strength" stage: the preference strength of training pairs under a saved reward ensemble and
how well it finds mislabeled pairs (Wang et al. 2024, "Secrets of RLHF in Large Language Models Part II: Reward
Modeling", §2; the metrics are `jaxrlhf.evaluation.strength.strength_metrics`).

The stage scores the TRAINING pairs of `data` (the same records the ensemble trained on) with the ensemble
`reward_model` (strength = the member mean of r_m(chosen) - r_m(rejected), disagreement = their std) and, in the
synthetic world, compares against the world's own record of which labels were flipped
(`World.preference_pairs(...)["flipped"]`, matched to records by their `source` index) and against the gold
preference r*(chosen) > r*(rejected).

Files (workdir): strengths.npz (mean_N, std_N, margins_NxM, flipped_N, gold_agree_N), buckets.md,
strength_buckets.png. `python -m experiments.analysis.preference_strength --workdir <sweep dir>` aggregates the
bucket table over a sweep's seeds.
"""

from __future__ import annotations

import dataclasses
import os
import re
from typing import Any

import numpy as np

from jaxrlhf.config import ConfigError, field, stage_ref
from jaxrlhf.evaluation import strength
from jaxrlhf.losses.reward import preference_strength
from jaxrlhf.parallel import distributed
from jaxrlhf.stages import artifacts
from jaxrlhf.stages import common
from jaxrlhf.stages import inputs as inputs_lib


@dataclasses.dataclass(frozen=True)
class PreferenceStrengthConfig:
  """The "preference_strength" stage.

  reward_model: "stage:<name>" or a saved reward-model folder (an ensemble; M = its members).
  data: the pairs to score (its TRAINING split, `data.num_train` pairs: the ensemble's own training data).
  fractions: the lowest-strength buckets scored as flip detectors (precision / recall).
  num_buckets: equal-count buckets by mean strength for the bucket table (the paper's Fig. 2 uses 20).
  """
  reward_model: str = stage_ref("rm_dir")
  data: inputs_lib.DataSpec = field(default_factory=inputs_lib.DataSpec)
  fractions: tuple[float, ...] = field((0.1, 0.2, 0.3))
  num_buckets: int = field(20, min=2)
  plots: bool = field(True)

  def validate(self, path: str) -> None:
    if not self.reward_model:
      raise ConfigError(f"{path}.reward_model: required ('stage:<ensemble stage>' or a saved reward-model folder)")
    if not self.fractions or any(not 0.0 < f < 1.0 for f in self.fractions):
      raise ConfigError(f"{path}.fractions: {self.fractions} must be non-empty, each in (0, 1)")
    for key in ("transform", "curate", "margin_from"):
      if getattr(self.data, key) != "none":
        raise ConfigError(f"{path}.data.{key}: must be 'none' (the stage scores the pairs as read, as the "
                          f"ensemble trained on them), got {getattr(self.data, key)!r}")
    if self.data.criteria != "none":
      # Criterion pairs come from their own random stream (`World.criterion_pairs`) and their label answers the
      # criterion, not r*: the general pairs' flips and gold agreement do not describe them.
      raise ConfigError(f"{path}.data.criteria: must be 'none' (the flip and gold-agreement truths are the world's "
                        f"general preference pairs'; criterion-labelled pairs have none here), got "
                        f"{self.data.criteria!r}")
    if self.data.num_train < self.num_buckets:
      raise ConfigError(f"{path}.data.num_train: {self.data.num_train} pairs cannot fill "
                        f"{path}.num_buckets={self.num_buckets} buckets")


def world_truths(world: Any, records: list, split: str = "train") -> tuple[np.ndarray, np.ndarray]:
  """(flipped_N, gold_agree_N) of synthetic-world records, matched by the index at the end of `source`.

  Only `World.preference_records` pairs of this world and `split` are accepted (source exactly
  'synthetic:seed=<world seed>:<split>:<index>'): any other record, e.g. a criterion pair
  ('...:<split>:criterion:<index>', from another random stream), is a ValueError rather than a lookup of the
  general pair that shares its index.
  gold_agree: the record's label agrees with r*: chosen is the response with the higher gold reward.
  """
  pattern = re.compile(rf"synthetic:seed={re.escape(str(world.config.seed))}:{re.escape(split)}:(\d+)")
  indices = []
  for i, r in enumerate(records):
    m = pattern.fullmatch(r.source or "")
    if not m:
      raise ValueError(f"records[{i}].source: {r.source!r} is not a general preference pair of this synthetic "
                       f"world's {split} split ('synthetic:seed={world.config.seed}:{split}:<index>')")
    indices.append(int(m.group(1)))
  idx = np.asarray(indices)
  pairs = world.preference_pairs(int(idx.max()) + 1, split)
  a_better = pairs["gold_a"][idx] > pairs["gold_b"][idx]
  return pairs["flipped"][idx].astype(bool), pairs["a_wins"][idx] == a_better


def run(cfg: PreferenceStrengthConfig, workdir: str, inputs: dict) -> dict:
  """Scores the training pairs with the ensemble; writes strengths.npz, buckets.md and the plot."""
  data = cfg.data
  world = inputs_lib.make_world(data.world) if data.source == "world" else None
  rm_dir = common.resolve_path(cfg.reward_model, inputs, "rm_dir")
  # File data defaults to the reward model's own tokenizer (and chat template), as it was trained.
  tokenizer = inputs_lib.make_tokenizer(data, world, artifacts.saved_tokenizer(rm_dir))
  records, _, report = inputs_lib.preference_records(data, world)
  rm = artifacts.load_reward_model(artifacts.check_reward_tokenizer(rm_dir, tokenizer, "reward_model"))
  margins_NxM = inputs_lib.member_margins(rm, records, tokenizer, data)
  mean_N, std_N = (np.asarray(x, np.float64) for x in preference_strength(margins_NxM, np.zeros_like(margins_NxM)))
  flipped = gold_agree = None
  if world is not None:
    flipped, gold_agree = world_truths(world, records, "train")
  metrics = strength.strength_metrics(mean_N, std_N, flipped, gold_agree, cfg.fractions, cfg.num_buckets)
  metrics["num_members"] = float(margins_NxM.shape[1])
  rows = strength.bucket_table(mean_N, std_N, flipped, gold_agree, cfg.num_buckets)
  print(strength.bucket_markdown(rows), flush=True)
  # Every process computed the same values; process 0 alone writes them (concurrent writers on a shared file
  # system can leave a torn file), and the barrier holds the others until the files exist for the next stage.
  if distributed.is_primary():
    os.makedirs(workdir, exist_ok=True)
    np.savez(os.path.join(workdir, "strengths.npz"), mean_N=mean_N, std_N=std_N, margins_NxM=margins_NxM,
             **({"flipped_N": flipped, "gold_agree_N": gold_agree} if world is not None else {}))
    with open(os.path.join(workdir, "buckets.md"), "w") as f:
      f.write(strength.bucket_markdown(rows))
    if cfg.plots:
      strength.plot_buckets(os.path.join(workdir, "strength_buckets.png"), rows)
  distributed.barrier(f"preference_strength:{workdir}")
  return {"metrics": metrics, "strengths": os.path.join(workdir, "strengths.npz"), "data_report": report}
