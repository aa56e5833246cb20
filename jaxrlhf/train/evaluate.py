"""The "evaluate_policy" stage: a policy's samples on held-out synthetic-world prompts, scored by the gold
reward (and optionally a proxy reward model), against a base policy that is also the KL reference.

It runs `jaxrlhf.evaluation.policy.evaluate_policy` over the prompts in batches and reports each metric as a mean
over prompts with a 95% confidence interval (`<name>_lower` / `<name>_upper`):
  gold/policy, gold/base, gold/gain (paired per prompt), gold/win_rate (ties count half),
  kl (sampled KL(policy || base) in nats per response), length/policy, and proxy/policy with a reward model.
A goal-conditioned policy (reward-augmented DPO) samples on the top-score goal prompt; the base, the KL and the
rewards see the plain prompt.
"""

from __future__ import annotations

import dataclasses
import json
import os

import jax
import numpy as np

from jaxrlhf.config import ConfigError, field
from jaxrlhf.data import tokenize as tokenize_lib
from jaxrlhf.train import builders

# evaluate_policy's metric names -> this stage's (kept stable for configs' tables).
_METRIC_NAMES = {"gold": "gold/policy", "base_gold": "gold/base", "gold_gain": "gold/gain",
                 "win_rate": "gold/win_rate", "kl": "kl", "length": "length/policy", "proxy": "proxy/policy"}


@dataclasses.dataclass(frozen=True)
class EvaluatePolicyConfig:
  """policy / base: "stage:<name>" or a HF folder. goal_conditioned: sample with the top-score goal prompt
  (what a reward-augmented policy is trained for); applies to the policy only."""
  seed: int = field(0)
  policy: str = field("")
  base: str = field("")
  reward_model: str = field("")
  aggregation: str = field("mean", choices=("mean", "median", "min", "mean_minus_std", "mean_minus_var"))
  lam: float = field(1.0)
  goal_conditioned: bool = field(False)
  top_score: float = field(10.0)
  world: dict = field(default_factory=dict)
  num_prompts: int = field(256, min=1)
  batch_size: int = field(64, min=1)
  max_new_tokens: int = field(32, min=1)
  temperature: float = field(1.0, min=1e-3)

  def validate(self, path: str) -> None:
    for key in ("policy", "base"):
      if not getattr(self, key):
        raise ConfigError(f"{path}.{key}: required ('stage:<name>' or a HF folder; base is the KL reference)")
    for key in ("policy", "base", "reward_model"):
      value = getattr(self, key)
      if value and not value.startswith(builders.STAGE_PREFIX) and not os.path.exists(value):
        raise ConfigError(f"{path}.{key}: {value!r} does not exist")
    builders.DataSpec(world=self.world).validate(f"{path}")


def run_evaluate_policy(cfg: EvaluatePolicyConfig, workdir: str, inputs: dict) -> dict:
  from jaxrlhf.data.transforms import inference_prompt  # pylint: disable=g-import-not-at-top
  from jaxrlhf.evaluation.policy import confidence_interval, evaluate_policy  # pylint: disable=g-import-not-at-top
  from jaxrlhf.models import from_pretrained  # pylint: disable=g-import-not-at-top
  from jaxrlhf.sampling.best_of_n import gold_scorer, reward_model_scorer  # pylint: disable=g-import-not-at-top
  from jaxrlhf.sampling.generate import pad_prompts  # pylint: disable=g-import-not-at-top

  world = builders.make_world(builders.DataSpec(world=cfg.world))
  tok = world.tokenizer
  policy, _ = from_pretrained(builders.resolve_path(cfg.policy, inputs))
  base, _ = from_pretrained(builders.resolve_path(cfg.base, inputs))
  proxy_fn = None
  if cfg.reward_model:
    rm_dir = builders.resolve_path(cfg.reward_model, inputs, key="rm_dir")
    proxy_fn = reward_model_scorer(builders.load_reward_model(rm_dir))
  texts = world.prompts(cfg.num_prompts, "test")
  per_prompt: dict[str, list[np.ndarray]] = {}
  for start in range(0, len(texts), cfg.batch_size):
    chunk = texts[start:start + cfg.batch_size]
    plain_rows = [tokenize_lib.encode_prompt(tok, t) for t in chunk]
    policy_rows = ([tokenize_lib.encode_prompt(tok, inference_prompt(t, cfg.top_score)) for t in chunk]
                   if cfg.goal_conditioned else plain_rows)
    ids, mask = pad_prompts(policy_rows, tok.pad_id)
    ref_ids, ref_mask = pad_prompts(plain_rows, tok.pad_id)
    result = evaluate_policy(
        policy, base, ids, mask, gold_fn=gold_scorer(world), proxy_fn=proxy_fn, aggregation=cfg.aggregation,
        lam=cfg.lam, rng=jax.random.PRNGKey(cfg.seed + start), max_new_tokens=cfg.max_new_tokens,
        temperature=cfg.temperature, eos_ids=(tok.eos_id,), pad_id=tok.pad_id,
        reference_prompt_ids_BxP=ref_ids, reference_prompt_mask_BxP=ref_mask)
    for name, values in result.per_prompt.items():
      per_prompt.setdefault(name, []).append(values)
  metrics = {}
  for name, chunks in per_prompt.items():
    estimate = confidence_interval(np.concatenate(chunks))
    key = _METRIC_NAMES[name]
    metrics.update({key: estimate.mean, f"{key}_lower": estimate.lower, f"{key}_upper": estimate.upper})
  from jaxrlhf.parallel import distributed  # pylint: disable=g-import-not-at-top
  if distributed.is_primary():
    os.makedirs(workdir, exist_ok=True)
    with open(os.path.join(workdir, "results.json"), "w") as f:
      json.dump({"status": "done", "metrics": metrics}, f, indent=2)
  print("[evaluate_policy] " + ", ".join(f"{k}={v:.4g}" for k, v in metrics.items() if "_lower" not in k
                                         and "_upper" not in k), flush=True)
  return {"metrics": metrics}
