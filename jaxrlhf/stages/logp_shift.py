"""The "logp_shift" stage: how far preference optimization moved the log-probability of held-out responses (the
"unlearning" of Zhang et al. 2024, "Reward-Augmented Data Enhances Direct Preference Alignment of LLMs"; the
metrics and their buckets are `jaxrlhf.evaluation.unlearning`).

    shift(y) = log pi(y | x') - log pi_ref(y | x')        (sequence log-prob, nats; end token included)

with x' the prompt under a conditioning (`goal`): the plain prompt, or the prompt with a goal score rendered
exactly as the reward-augmented transform renders it (`jaxrlhf.data.transforms.goal_conditioned_prompt`).
Policy and reference see the same x', so a shift is what training changed, not a prompt-format effect. With
goal "top", the goal-margin metrics ask whether a reward-conditioned policy learned to read its goal.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Callable

import numpy as np

from jaxrlhf.config import ConfigError, field, stage_ref
from jaxrlhf.data import tokenize as tokenize_lib
from jaxrlhf.data.transforms import goal_conditioned_prompt
from jaxrlhf.evaluation import unlearning
from jaxrlhf.models import from_pretrained
from jaxrlhf.stages import common
from jaxrlhf.stages import inputs as inputs_lib
from jaxrlhf.train import scoring

GOALS = ("none", "top")


@dataclasses.dataclass(frozen=True)
class LogpShiftConfig:
  """The "logp_shift" stage. policy / base: "stage:<name>" or a HF folder (base = the reference the shifts are
  measured from, e.g. the SFT policy). goal: "none" (plain prompts) or "top" (both models see the prompt with
  the goal `top_score`, rendered as the reward-augmented transform renders it); with "top" the goal-margin
  metrics compare the goals `top_score` and `contrast_score`."""
  seed: int = field(0)  # Unused (the measurement is deterministic); present so a chain's seed applies uniformly.
  policy: str = stage_ref("model_dir")
  base: str = stage_ref("model_dir")
  world: dict = field(default_factory=dict)
  split: str = field("validation", choices=("train", "validation", "test"))
  num_pairs: int = field(512, min=1)
  batch_size: int = field(128, min=1)
  goal: str = field("none", choices=GOALS)
  top_score: float = field(10.0)
  contrast_score: float = field(3.0)
  high_score: float = field(7.0)
  low_score: float = field(4.0)

  def validate(self, path: str) -> None:
    for key in ("policy", "base"):
      value = getattr(self, key)
      if not value:
        raise ConfigError(f"{path}.{key}: required ('stage:<name>' or a HF folder)")
    if self.low_score >= self.high_score:
      raise ConfigError(f"{path}.low_score: {self.low_score} must be < {path}.high_score={self.high_score}")
    inputs_lib.check_world(self.world, path)


def _prompt_fn(goal: float | None, supports_system_role: bool) -> Callable[[str], Any]:
  if goal is None:
    return lambda text: text
  return lambda text: goal_conditioned_prompt(text, goal, supports_system_role=supports_system_role)


def run(cfg: LogpShiftConfig, workdir: str, inputs: dict) -> dict:
  """The shift metrics of the module docstring on `num_pairs` held-out world pairs; writes results.json."""
  world = inputs_lib.make_world(cfg.world)
  tok = world.tokenizer
  policy, _ = from_pretrained(common.resolve_path(cfg.policy, inputs))
  base, _ = from_pretrained(common.resolve_path(cfg.base, inputs))
  records = world.preference_records(cfg.num_pairs, cfg.split)
  chosen = [tokenize_lib.encode_response(tok, r.chosen) for r in records]
  rejected = [tokenize_lib.encode_response(tok, r.rejected) for r in records]
  score_c = np.asarray([r.chosen_score for r in records], np.float64)
  score_r = np.asarray([r.rejected_score for r in records], np.float64)

  def logps(model, goal, responses):
    fn = _prompt_fn(goal, tok.supports_system_role)
    prompts = [tokenize_lib.encode_prompt(tok, fn(r.prompt)) for r in records]
    return scoring.sequence_logps(model, prompts, responses, tok.pad_id, cfg.batch_size)

  goal = cfg.top_score if cfg.goal == "top" else None
  values = {m: {side: logps(m_model, goal, rows) for side, rows in (("c", chosen), ("r", rejected))}
            for m, m_model in (("policy", policy), ("base", base))}
  metrics = unlearning.shift_metrics(values["policy"]["c"], values["policy"]["r"], values["base"]["c"],
                                     values["base"]["r"], score_c, score_r, high_score=cfg.high_score,
                                     low_score=cfg.low_score)
  metrics["goal"] = float("nan") if goal is None else float(goal)
  if cfg.goal == "top":
    scores = np.concatenate([score_c, score_r])
    for name, model, top in (("goal_margin", policy, values["policy"]), ("goal_margin_ref", base, values["base"])):
      contrast = np.concatenate([logps(model, cfg.contrast_score, chosen), logps(model, cfg.contrast_score,
                                                                                 rejected)])
      m = unlearning.goal_margin_metrics(np.concatenate([top["c"], top["r"]]), contrast, scores,
                                         high_score=cfg.high_score, low_score=cfg.low_score)
      metrics.update({f"{name}/{k}": v for k, v in m.items()})
  metrics = {k: v for k, v in metrics.items() if k != "goal" or not math.isnan(v)}
  common.write_results(workdir, metrics)
  print("[logp_shift] " + ", ".join(f"{k}={v:.4g}" for k, v in metrics.items()), flush=True)
  return {"metrics": metrics}
