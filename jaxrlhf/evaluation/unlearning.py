"""Unlearning under preference optimization: how far training moved the log-probability of held-out responses.

Zhang et al. 2024 ("Reward-Augmented Data Enhances Direct Preference Alignment of LLMs") argue that DPO
lowers the likelihood of every rejected response, even one the judge scored highly (a 9 that lost to a 10),
and that DPO on reward-augmented (goal-conditioned) pairs unlearns such responses less. This module measures
it on held-out scored pairs (x, y_w, y_l, s_w, s_l):

    shift(y) = log pi(y | x') - log pi_ref(y | x')        (sequence log-prob, nats; end token included)

with x' the prompt under a conditioning (`goal`): the plain prompt, or the prompt with a goal score rendered
exactly as the reward-augmented transform renders it (`jaxrlhf.data.transforms.goal_conditioned_prompt`).
Policy and reference see the same x', so a shift is what training changed, not a prompt-format effect.
Reported means (each over the pairs of its bucket):
  chosen, rejected            all held-out chosen / rejected responses;
  rejected_high               rejected responses with judge score >= high_score (the "unlearning" bucket);
  rejected_low                rejected responses with judge score <= low_score;
  chosen_high                 chosen responses with judge score >= high_score;
  n/rejected_high, n/rejected_low   bucket sizes.
Goal sensitivity (did a reward-conditioned policy learn to read its goal?), over all held-out responses:
  goal_margin/high, goal_margin/low   mean log pi(y | x, goal=top) - log pi(y | x, goal=contrast) over responses
                                      scored >= high_score / <= low_score;
  goal_margin/gap                     high - low (> 0: the top goal favors high-score responses);
  goal_margin_ref/gap                 the same gap under the reference (near 0 for a goal-blind reference).
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from typing import Any, Callable, Sequence

import numpy as np

from jaxrlhf.config import ConfigError, field
from jaxrlhf.data.synthetic.world import pad_rows

GOALS = ("none", "top")


def bucket_mean(values_N: Any, include_N: Any) -> float:
  """Mean of `values_N` over the rows where `include_N` is true; NaN for an empty bucket.

  Args:
    values_N: float (N,) values (e.g. per-response log-prob shifts, nats).
    include_N: bool (N,) bucket membership.
  """
  values_N = np.asarray(values_N, np.float64)
  include_N = np.asarray(include_N, bool)
  if values_N.ndim != 1 or include_N.shape != values_N.shape:
    raise ValueError(f"values_N and include_N must be (N,) arrays of one shape, got {values_N.shape} and "
                     f"{include_N.shape}")
  if not include_N.any():
    return math.nan
  return float(values_N[include_N].mean())


def shift_metrics(policy_chosen_N, policy_rejected_N, ref_chosen_N, ref_rejected_N, chosen_score_N,
                  rejected_score_N, *, high_score: float = 7.0, low_score: float = 4.0) -> dict[str, float]:
  """Mean log-prob shifts (policy - reference, nats) of chosen / rejected responses by judge-score bucket.

  Args:
    policy_chosen_N, policy_rejected_N: (N,) sequence log-probs of each pair's responses under the policy.
    ref_chosen_N, ref_rejected_N: (N,) the same under the reference.
    chosen_score_N, rejected_score_N: (N,) judge scores of the responses.
    high_score, low_score: bucket thresholds (>= high_score is "high", <= low_score is "low").

  Returns:
    {"chosen", "rejected", "rejected_high", "rejected_low", "chosen_high", "n/rejected_high", "n/rejected_low"}.
  """
  arrays = [np.asarray(a, np.float64) for a in (policy_chosen_N, policy_rejected_N, ref_chosen_N, ref_rejected_N,
                                                 chosen_score_N, rejected_score_N)]
  n = arrays[0].shape
  names = ("policy_chosen_N", "policy_rejected_N", "ref_chosen_N", "ref_rejected_N", "chosen_score_N",
           "rejected_score_N")
  for name, a in zip(names, arrays):
    if a.ndim != 1 or a.shape != n:
      raise ValueError(f"{name}: expected shape {n} like policy_chosen_N, got {a.shape}")
    if not np.isfinite(a).all():
      raise ValueError(f"{name}: expected finite values")
  if low_score >= high_score:
    raise ValueError(f"low_score ({low_score}) must be < high_score ({high_score})")
  pc, pr, rc, rr, sc, sr = arrays
  shift_c, shift_r = pc - rc, pr - rr
  everyone = np.ones(n, bool)
  return {
      "chosen": bucket_mean(shift_c, everyone),
      "rejected": bucket_mean(shift_r, everyone),
      "rejected_high": bucket_mean(shift_r, sr >= high_score),
      "rejected_low": bucket_mean(shift_r, sr <= low_score),
      "chosen_high": bucket_mean(shift_c, sc >= high_score),
      "n/rejected_high": float(np.sum(sr >= high_score)),
      "n/rejected_low": float(np.sum(sr <= low_score)),
  }


def goal_margin_metrics(top_logps_N, contrast_logps_N, scores_N, *, high_score: float = 7.0,
                        low_score: float = 4.0) -> dict[str, float]:
  """Goal sensitivity: mean log pi(y | top goal) - log pi(y | contrast goal) over high / low-score responses.

  Args:
    top_logps_N, contrast_logps_N: (N,) sequence log-probs of N responses under the two goal prompts.
    scores_N: (N,) the responses' judge scores.

  Returns:
    {"high", "low", "gap" = high - low}.
  """
  top, contrast, scores = (np.asarray(a, np.float64) for a in (top_logps_N, contrast_logps_N, scores_N))
  if top.ndim != 1 or contrast.shape != top.shape or scores.shape != top.shape:
    raise ValueError(f"top_logps_N, contrast_logps_N, scores_N must be (N,) of one shape, got {top.shape}, "
                     f"{contrast.shape}, {scores.shape}")
  margin = top - contrast
  high = bucket_mean(margin, scores >= high_score)
  low = bucket_mean(margin, scores <= low_score)
  return {"high": high, "low": low, "gap": high - low}


def sequence_logps(model: Any, prompt_rows: Sequence[Sequence[int]], response_rows: Sequence[Sequence[int]],
                   pad_id: int, batch_size: int = 128) -> np.ndarray:
  """float64 (N,) log p(response | prompt) under `model` (temperature 1), summed over the response tokens.

  Prompts are left-padded and responses right-padded to one width per call (`response_logps`, one forward).
  """
  from jaxrlhf.sampling.generate import pad_prompts, response_logps  # pylint: disable=g-import-not-at-top
  if len(prompt_rows) != len(response_rows):
    raise ValueError(f"prompt_rows and response_rows: {len(prompt_rows)} prompts for {len(response_rows)} "
                     "responses")
  if any(not r for r in response_rows):
    raise ValueError("response_rows: every response needs at least one token")
  out = []
  p_width = max(len(p) for p in prompt_rows)
  r_width = max(len(r) for r in response_rows)
  for start in range(0, len(prompt_rows), batch_size):
    prompts = list(prompt_rows[start:start + batch_size])
    responses = list(response_rows[start:start + batch_size])
    fill = batch_size - len(prompts)  # One compiled shape: pad the last batch with copies of its first row.
    prompts += [prompts[0]] * fill
    responses += [responses[0]] * fill
    ids, mask = pad_prompts(prompts, pad_id, width=p_width)
    r_ids, r_mask = pad_rows(responses, r_width, pad_id)
    token_logps = np.asarray(response_logps(model, ids, mask, r_ids, r_mask), np.float64)
    out.append(token_logps.sum(axis=1)[:batch_size - fill])
  return np.concatenate(out)


# ------------------------------------------------------------------------------------------------ the stage
@dataclasses.dataclass(frozen=True)
class LogpShiftConfig:
  """The "logp_shift" stage. policy / base: "stage:<name>" or a HF folder (base = the reference the shifts are
  measured from, e.g. the SFT policy). goal: "none" (plain prompts) or "top" (both models see the prompt with
  the goal `top_score`, rendered as the reward-augmented transform renders it); with "top" the goal-margin
  metrics compare the goals `top_score` and `contrast_score`."""
  seed: int = field(0)  # Unused (the measurement is deterministic); present so a chain's seed applies uniformly.
  policy: str = field("")
  base: str = field("")
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
      if not value.startswith("stage:") and not os.path.exists(value):
        raise ConfigError(f"{path}.{key}: {value!r} does not exist")
    if self.low_score >= self.high_score:
      raise ConfigError(f"{path}.low_score: {self.low_score} must be < {path}.high_score={self.high_score}")
    from jaxrlhf.train import builders  # pylint: disable=g-import-not-at-top
    builders.DataSpec(world=self.world).validate(path)


def _prompt_fn(goal: float | None, supports_system_role: bool) -> Callable[[str], Any]:
  from jaxrlhf.data.transforms import goal_conditioned_prompt  # pylint: disable=g-import-not-at-top
  if goal is None:
    return lambda text: text
  return lambda text: goal_conditioned_prompt(text, goal, supports_system_role=supports_system_role)


def run_logp_shift(cfg: LogpShiftConfig, workdir: str, inputs: dict) -> dict:
  """The "logp_shift" stage: the shift metrics of the module docstring on `num_pairs` held-out world pairs."""
  from jaxrlhf.data import tokenize as tokenize_lib  # pylint: disable=g-import-not-at-top
  from jaxrlhf.models import from_pretrained  # pylint: disable=g-import-not-at-top
  from jaxrlhf.train import builders  # pylint: disable=g-import-not-at-top

  world = builders.make_world(builders.DataSpec(world=cfg.world))
  tok = world.tokenizer
  policy, _ = from_pretrained(builders.resolve_path(cfg.policy, inputs))
  base, _ = from_pretrained(builders.resolve_path(cfg.base, inputs))
  records = world.preference_records(cfg.num_pairs, cfg.split)
  chosen = [tokenize_lib.encode_response(tok, r.chosen) for r in records]
  rejected = [tokenize_lib.encode_response(tok, r.rejected) for r in records]
  score_c = np.asarray([r.chosen_score for r in records], np.float64)
  score_r = np.asarray([r.rejected_score for r in records], np.float64)

  def logps(model, goal, responses):
    fn = _prompt_fn(goal, tok.supports_system_role)
    prompts = [tokenize_lib.encode_prompt(tok, fn(r.prompt)) for r in records]
    return sequence_logps(model, prompts, responses, tok.pad_id, cfg.batch_size)

  goal = cfg.top_score if cfg.goal == "top" else None
  values = {m: {side: logps(m_model, goal, rows) for side, rows in (("c", chosen), ("r", rejected))}
            for m, m_model in (("policy", policy), ("base", base))}
  metrics = shift_metrics(values["policy"]["c"], values["policy"]["r"], values["base"]["c"], values["base"]["r"],
                          score_c, score_r, high_score=cfg.high_score, low_score=cfg.low_score)
  metrics["goal"] = float("nan") if goal is None else float(goal)
  if cfg.goal == "top":
    scores = np.concatenate([score_c, score_r])
    for name, model, top in (("goal_margin", policy, values["policy"]), ("goal_margin_ref", base, values["base"])):
      contrast = np.concatenate([logps(model, cfg.contrast_score, chosen), logps(model, cfg.contrast_score,
                                                                                 rejected)])
      m = goal_margin_metrics(np.concatenate([top["c"], top["r"]]), contrast, scores, high_score=cfg.high_score,
                              low_score=cfg.low_score)
      metrics.update({f"{name}/{k}": v for k, v in m.items()})
  metrics = {k: v for k, v in metrics.items() if k != "goal" or not math.isnan(v)}
  os.makedirs(workdir, exist_ok=True)
  with open(os.path.join(workdir, "results.json"), "w") as f:
    json.dump({"status": "done", "metrics": metrics}, f, indent=2)
  print("[logp_shift] " + ", ".join(f"{k}={v:.4g}" for k, v in metrics.items()), flush=True)
  return {"metrics": metrics}
