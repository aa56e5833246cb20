"""The "best_of_n" stage: best-of-n curves of a policy on held-out synthetic-world prompts, selected by the gold
reward and by proxies (one reward model, or each aggregation of an ensemble), from ONE pool per prompt.

For `num_prompts` test prompts the policy draws a pool of `pool_size` samples each; every sample is scored by
the gold reward r* and by the reward model (members (R, K), reduced by each aggregation). The unbiased
estimator (`sampling.best_of_n_curves`) then gives, for every n <= N, the expected gold and proxy reward of
best-of-n, next to the analytic KL log n - (n-1)/n and the pool's sampled KL estimate.

Outputs (workdir): results.json {"metrics", "curves": {selector: {n, gold, proxy, gold_oracle, kl,
kl_estimate}}} and best_of_n_<selector>.png. Metrics per selector s (n_max = pool_size):
  s/gold@1, s/gold@N, s/proxy@1, s/proxy@N   expected rewards at n = 1 and n = N;
  s/gold_gain_std, s/proxy_gain_std          gain from n = 1 to N in units of that reward's pool std (the two
                                             rewards live on different scales; the std makes gains comparable);
  s/gold_slope_std, s/proxy_slope_std        gain over the last doubling (N/2 -> N), same units;
  s/gap_std                                  proxy_gain_std - gold_gain_std (> 0: overoptimization);
  s/gold_monotone                            1 if the gold curve never decreases in n.
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxrlhf.config import ConfigError, field
from jaxrlhf.losses.aggregation import aggregate
from jaxrlhf.train import builders

AGGREGATIONS = ("mean", "median", "min", "mean_minus_std", "mean_minus_var")


@dataclasses.dataclass(frozen=True)
class BestOfNConfig:
  """policy: "stage:<name>" or a HF folder. reward_model: "stage:<name>" or a saved RM folder ("" : gold only);
  its K members are reduced by each of `aggregations` (one selector each, named "rm_<aggregation>")."""
  seed: int = field(0)
  policy: str = field("")
  reward_model: str = field("")
  aggregations: tuple[str, ...] = field(("mean",))
  lam: float = field(1.0, min=0.0)
  world: dict = field(default_factory=dict)
  num_prompts: int = field(64, min=1)
  pool_size: int = field(64, min=2)
  batch_size: int = field(8, min=1)  # Prompts per generate call (R = batch_size * pool_size rows).
  max_prompt_length: int = field(8, min=1)
  max_new_tokens: int = field(32, min=1)
  temperature: float = field(1.0, min=1e-3)
  plots: bool = field(True)

  def validate(self, path: str) -> None:
    if not self.policy:
      raise ConfigError(f"{path}.policy: required ('stage:<name>' or a HF folder)")
    for key in ("policy", "reward_model"):
      value = getattr(self, key)
      if value and not value.startswith(builders.STAGE_PREFIX) and not os.path.exists(value):
        raise ConfigError(f"{path}.{key}: {value!r} does not exist")
    bad = [a for a in self.aggregations if a not in AGGREGATIONS]
    if bad or not self.aggregations:
      raise ConfigError(f"{path}.aggregations: {bad or '()'} invalid; valid choices: {', '.join(AGGREGATIONS)}")
    builders.DataSpec(world=self.world).validate(path)


def sample_pools(model: Any, world: Any, rm: Any, cfg: BestOfNConfig) -> tuple[np.ndarray, np.ndarray | None,
                                                                                  np.ndarray]:
  """(gold (B, N), reward-model scores (B, N, K) or None, lengths (B, N)) of pools of N samples per prompt."""
  from jaxrlhf.sampling.best_of_n import reward_model_scorer  # pylint: disable=g-import-not-at-top
  from jaxrlhf.sampling.generate import generate  # pylint: disable=g-import-not-at-top
  from jaxrlhf.train.rl import encode_prompts  # pylint: disable=g-import-not-at-top
  tok = world.tokenizer
  ids, mask = encode_prompts(tok, world.prompts(cfg.num_prompts, "test"), cfg.max_prompt_length)
  n = cfg.pool_size
  gold_fn = jax.jit(world.gold_reward)
  rm_fn = reward_model_scorer(rm) if rm is not None else None
  golds, rms, lengths = [], [], []
  for start in range(0, ids.shape[0], cfg.batch_size):
    p_ids, p_mask = ids[start:start + cfg.batch_size], mask[start:start + cfg.batch_size]
    gen = generate(model, p_ids, p_mask, max_new_tokens=cfg.max_new_tokens, temperature=cfg.temperature,
                   rng=jax.random.fold_in(jax.random.PRNGKey(cfg.seed), start), eos_ids=tok.eos_id,
                   pad_id=tok.pad_id, num_samples=n)
    rep_ids, rep_mask = np.repeat(p_ids, n, axis=0), np.repeat(p_mask, n, axis=0)
    b = p_ids.shape[0]
    golds.append(np.asarray(gold_fn(rep_ids, rep_mask, gen.tokens, gen.mask)).reshape(b, n))
    lengths.append(np.asarray(gen.lengths).reshape(b, n))
    if rm_fn is not None:
      r = np.asarray(rm_fn(rep_ids, rep_mask, gen.tokens, gen.mask), np.float64)
      rms.append(r.reshape(b, n, -1))
  return np.concatenate(golds), (np.concatenate(rms) if rms else None), np.concatenate(lengths)


def curve_metrics(curves: dict[str, np.ndarray], gold_std: float, proxy_std: float) -> dict[str, float]:
  """The summary metrics of one selector's curves (see the module docstring)."""
  g, p = np.asarray(curves["gold"]), np.asarray(curves["proxy"])
  ns = np.asarray(curves["n"])
  half = int(np.argmin(np.abs(ns - ns[-1] / 2)))
  out = {"gold@1": g[0], "gold@N": g[-1], "proxy@1": p[0], "proxy@N": p[-1],
         "gold_gain_std": (g[-1] - g[0]) / gold_std, "proxy_gain_std": (p[-1] - p[0]) / proxy_std,
         "gold_slope_std": (g[-1] - g[half]) / gold_std, "proxy_slope_std": (p[-1] - p[half]) / proxy_std,
         "gold_monotone": float(np.all(np.diff(g) >= -1e-9))}
  out["gap_std"] = out["proxy_gain_std"] - out["gold_gain_std"]
  return {k: float(v) for k, v in out.items()}


def run_best_of_n(cfg: BestOfNConfig, workdir: str, inputs: dict) -> dict:
  from jaxrlhf.evaluation.plots import plot_best_of_n  # pylint: disable=g-import-not-at-top
  from jaxrlhf.models import from_pretrained  # pylint: disable=g-import-not-at-top
  from jaxrlhf.sampling.best_of_n import best_of_n_curves  # pylint: disable=g-import-not-at-top
  world = builders.make_world(builders.DataSpec(world=cfg.world))
  model, _ = from_pretrained(builders.resolve_path(cfg.policy, inputs))
  rm = builders.load_reward_model(builders.resolve_path(cfg.reward_model, inputs, "rm_dir")) if cfg.reward_model \
      else None
  gold, rm_scores, lengths = sample_pools(model, world, rm, cfg)
  proxies = {"gold": gold}
  if rm_scores is not None:
    for agg in cfg.aggregations:
      proxies[f"rm_{agg}"] = np.asarray(aggregate(jnp.asarray(rm_scores, jnp.float32), agg, cfg.lam), np.float64)
  os.makedirs(workdir, exist_ok=True)
  metrics = {"gold_std": float(np.std(gold)), "length/mean": float(np.mean(lengths))}
  curves_out = {}
  for name, proxy in proxies.items():
    curves = best_of_n_curves(proxy, gold)
    metrics.update({f"{name}/{k}": v for k, v in curve_metrics(curves, np.std(gold), np.std(proxy)).items()})
    curves_out[name] = {k: np.asarray(v).tolist() for k, v in curves.items()}
    if cfg.plots:
      plot_best_of_n(os.path.join(workdir, f"best_of_n_{name}.png"), curves,
                     title=f"best-of-n selected by {name} (N = {cfg.pool_size}, {cfg.num_prompts} prompts)")
  with open(os.path.join(workdir, "results.json"), "w") as f:
    json.dump({"status": "done", "metrics": metrics, "curves": curves_out}, f, indent=2)
  print(f"[best_of_n] " + ", ".join(f"{k}={v:.3f}" for k, v in metrics.items() if k.endswith(
      ("gain_std", "gap_std", "monotone"))), flush=True)
  return {"metrics": metrics, "results": os.path.join(workdir, "results.json")}
