"""The "evaluate_policy" stage: gold reward of a policy's samples on held-out synthetic-world prompts, against
a base policy (same prompts, same sampling settings).

Metrics: gold/policy and gold/base (mean r* of one sample per prompt), gold/gain (policy - base),
gold/win_rate (fraction of prompts where the policy's sample beats the base's; ties count half),
length/policy and length/base (mean response tokens, end token included).
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any

import jax
import numpy as np

from jaxrlhf.config import ConfigError, field
from jaxrlhf.data import tokenize as tokenize_lib
from jaxrlhf.train import builders


@dataclasses.dataclass(frozen=True)
class EvaluatePolicyConfig:
  """policy / base: "stage:<name>" or a HF folder. goal_conditioned: sample with the top-score goal prompt
  (what a reward-augmented policy is trained for); applies to the policy only."""
  seed: int = field(0)
  policy: str = field("")
  base: str = field("")
  goal_conditioned: bool = field(False)
  top_score: float = field(10.0)
  world: dict = field(default_factory=dict)
  num_prompts: int = field(256, min=1)
  batch_size: int = field(64, min=1)
  max_new_tokens: int = field(32, min=1)
  temperature: float = field(1.0, min=1e-3)

  def validate(self, path: str) -> None:
    if not self.policy:
      raise ConfigError(f"{path}.policy: required ('stage:<name>' or a HF folder)")
    for key in ("policy", "base"):
      value = getattr(self, key)
      if value and not value.startswith(builders.STAGE_PREFIX) and not os.path.exists(value):
        raise ConfigError(f"{path}.{key}: {value!r} does not exist")
    builders.DataSpec(world=self.world).validate(f"{path}")


def sample_gold(model: Any, world: Any, prompts: list, tokenizer: Any, *, seed: int, batch_size: int,
                max_new_tokens: int, temperature: float) -> tuple[np.ndarray, np.ndarray]:
  """(gold r* (N,), response lengths (N,)) of one sample per prompt; gold is scored on the plain prompt."""
  from jaxrlhf.sampling.generate import generate, pad_prompts  # pylint: disable=g-import-not-at-top
  golds, lengths = [], []
  for start in range(0, len(prompts), batch_size):
    chunk = prompts[start:start + batch_size]
    rows = [tokenize_lib.encode_prompt(tokenizer, p) for p, _ in chunk]
    ids, mask = pad_prompts(rows, tokenizer.pad_id)
    out = generate(model, ids, mask, max_new_tokens=max_new_tokens, rng=jax.random.PRNGKey(seed + start),
                   temperature=temperature, eos_ids=tokenizer.eos_id, pad_id=tokenizer.pad_id)
    tokens, lens = np.asarray(out.tokens), np.asarray(out.lengths)
    responses = [[t for t in row[:n] if t != tokenizer.eos_id] for row, n in zip(tokens, lens)]
    plain = [tokenizer.encode(text) for _, text in chunk]
    golds.append(world.gold_of_ids(plain, [r if r else [tokenizer.eos_id] for r in responses]))
    lengths.append(lens)
  return np.concatenate(golds), np.concatenate(lengths)


def run_evaluate_policy(cfg: EvaluatePolicyConfig, workdir: str, inputs: dict) -> dict:
  from jaxrlhf.data.transforms import inference_prompt  # pylint: disable=g-import-not-at-top
  from jaxrlhf.models import from_pretrained  # pylint: disable=g-import-not-at-top
  world = builders.make_world(builders.DataSpec(world=cfg.world))
  tok = world.tokenizer
  texts = world.prompts(cfg.num_prompts, "test")
  kwargs = dict(seed=cfg.seed, batch_size=cfg.batch_size, max_new_tokens=cfg.max_new_tokens,
                temperature=cfg.temperature)
  metrics = {}
  results = {}
  for name, spec, goal in (("policy", cfg.policy, cfg.goal_conditioned), ("base", cfg.base, False)):
    if not spec:
      continue
    model, _ = from_pretrained(builders.resolve_path(spec, inputs))
    prompts = [(inference_prompt(t, cfg.top_score) if goal else t, t) for t in texts]
    results[name] = sample_gold(model, world, prompts, tok, **kwargs)
    metrics[f"gold/{name}"] = float(np.mean(results[name][0]))
    metrics[f"length/{name}"] = float(np.mean(results[name][1]))
  if "base" in results:
    g_p, g_b = results["policy"][0], results["base"][0]
    metrics["gold/gain"] = metrics["gold/policy"] - metrics["gold/base"]
    metrics["gold/win_rate"] = float(np.mean((g_p > g_b) + 0.5 * (g_p == g_b)))
  os.makedirs(workdir, exist_ok=True)
  with open(os.path.join(workdir, "results.json"), "w") as f:
    json.dump({"status": "done", "metrics": metrics}, f, indent=2)
  print(f"[evaluate_policy] {metrics}", flush=True)
  return {"metrics": metrics}
