"""The stage kinds `experiments.run` dispatches on: kind name -> (config dataclass, run function, outputs).

A literal table (no registration by import side effects): adding a stage kind means adding its module and one
row here. A user's own kinds are passed to the runner explicitly (`experiments.run --extra_kinds module:TABLE`).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

from jaxrlhf.stages import best_of_n
from jaxrlhf.stages import density_ratio
from jaxrlhf.stages import evaluate_policy
from jaxrlhf.stages import logp_shift
from jaxrlhf.stages import pal
from jaxrlhf.stages import preference
from jaxrlhf.stages import preference_strength
from jaxrlhf.stages import probe
from jaxrlhf.stages import reward
from jaxrlhf.stages import reward_eval
from jaxrlhf.stages import reward_heads
from jaxrlhf.stages import rl
from jaxrlhf.stages import self_rewarding
from jaxrlhf.stages import sft
from jaxrlhf.stages import token_credit
from jaxrlhf.stages import value_train
from jaxrlhf.stages import vas_decode

StageFn = Callable[[Any, str, dict[str, dict[str, Any]]], dict[str, Any]]


@dataclasses.dataclass(frozen=True)
class StageKind:
  """A stage kind: its name (a config's `kind`), config dataclass and run function, and the output keys it returns
  that later stages can reference (a `config.stage_ref(output)` field set to "stage:<name>" resolves to the
  named stage's outputs[output])."""
  name: str
  config_type: type
  run: StageFn
  outputs: tuple[str, ...] = ()


def table(*kinds: StageKind) -> dict[str, StageKind]:
  """{kind.name: kind}; ValueError on a repeated name."""
  out = {}
  for kind in kinds:
    if kind.name in out:
      raise ValueError(f"stage kind {kind.name!r} is defined twice")
    if not dataclasses.is_dataclass(kind.config_type):
      raise ValueError(f"stage kind {kind.name!r}: config_type must be a dataclass, got {kind.config_type!r}")
    out[kind.name] = kind
  return out


KINDS: dict[str, StageKind] = table(
    StageKind("sft", sft.SFTConfig, sft.run, ("checkpoint_dir", "model_dir")),
    StageKind("reward", reward.RewardConfig, reward.run, ("checkpoint_dir", "rm_dir")),
    StageKind("reward_heads", reward_heads.RewardHeadsConfig, reward_heads.run,
              ("checkpoint_dir", "rm_dir", "features")),
    StageKind("reward_eval", reward_eval.RewardEvalConfig, reward_eval.run, ("results", "scores")),
    StageKind("preference", preference.PreferenceConfig, preference.run, ("checkpoint_dir", "model_dir")),
    StageKind("rl", rl.RLConfig, rl.run, ("checkpoint_dir", "model_dir")),
    StageKind("evaluate_policy", evaluate_policy.EvaluatePolicyConfig, evaluate_policy.run),
    StageKind("best_of_n", best_of_n.BestOfNConfig, best_of_n.run, ("pool", "results")),
    StageKind("preference_strength", preference_strength.PreferenceStrengthConfig, preference_strength.run,
              ("strengths",)),
    StageKind("token_credit", token_credit.TokenCreditConfig, token_credit.run),
    StageKind("density_ratio", density_ratio.DensityRatioConfig, density_ratio.run),
    StageKind("logp_shift", logp_shift.LogpShiftConfig, logp_shift.run),
    StageKind("probe", probe.ProbeConfig, probe.run),
    StageKind("pal", pal.PALConfig, pal.run, ("results",)),
    StageKind("self_rewarding", self_rewarding.SelfRewardingConfig, self_rewarding.run, ("model_dir",)),
    StageKind("value_train", value_train.ValueTrainConfig, value_train.run, ("value_dir",)),
    StageKind("vas_decode", vas_decode.VASDecodeConfig, vas_decode.run),
)
