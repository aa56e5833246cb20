"""The "vas_decode" stage: Value Augmented Sampling (VAS; Han, Shenfeld, Srivastava, Kim, Agrawal 2024, "Value
Augmented Sampling for Language Model Alignment and Personalization", arXiv:2405.06639) from a frozen base policy
with value models of `value_train`, against best-of-N from the same base on the same held-out prompts, with the
inference cost of each, and (optionally) the composition of two value models with weights chosen at decoding time.

On the world's first `num_prompts` test prompts (the prompts `evaluate_policy` and `best_of_n` use):

  vas/beta=<b>/...   VAS with values[0] at each beta of `betas` (`sampling.vas_generate`, top_k candidates): gold
                     (r*), reward/<name> (values[0]'s reward), kl (exact per-step KL to the base summed over the
                     response, nats), length (response tokens before the end token), forwards (token forwards per
                     response: base n + value (k + 1) n), generated (tokens generated per response = n, the end token
                     included);
  bon/n=<n>/...      best-of-n of base samples (temperature 1, one pool of max(bon_ns) per prompt, the unbiased
                     estimator `sampling.best_of_n_curves`) selected by values[0]'s reward: gold, reward/<name>, kl
                     (log n - (n-1)/n), length, forwards = generated = n * the pool's mean length (the world's rewards
                     cost no model pass; a reward model would add n response passes);
  matched/<stage>/...  for each `baselines` stage (an evaluate_policy stage of a policy trained on the same reward, e.g.
                     DPO or GRPO): its kl and gold, VAS's gold at the same KL (linear interpolation of the beta curve
                     over KL; in_range = 0 when the baseline's KL lies outside the curve, where the end value is used)
                     and gain = vas_gold - gold;
  compose/w=<w>/...  with two value models: Q = w Q_0 + (1 - w) Q_1 at `compose_beta` for each w of
                     `compose_weights`: reward/<name> of both, gold, kl, length; compose/spearman_<name> is the rank
                     correlation of w with each reward's mean over the grid (a smooth trade-off: +1 and -1).

The same key draws every setting's samples of a prompt batch (common random numbers across betas and weights).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import numpy as np
from flax import nnx

from jaxrlhf.config import ConfigError, field, stage_ref
from jaxrlhf.data import padding
from jaxrlhf.evaluation.stats import spearman
from jaxrlhf.models import from_pretrained
from jaxrlhf.sampling.best_of_n import WORLD_REWARDS, best_of_n_curves, world_scorer
from jaxrlhf.sampling.generate import content_lengths, generate
from jaxrlhf.sampling.vas import vas_cost, vas_generate
from jaxrlhf.stages import artifacts
from jaxrlhf.stages import common
from jaxrlhf.stages import inputs as inputs_lib


@dataclasses.dataclass(frozen=True)
class ValueSpec:
  """One value model: `value_model` ("stage:<value_train stage>" or its saved folder) and the world reward it was
  trained on (`reward`: "gold" or a component; the reward VAS is reported on and best-of-n selects by)."""
  value_model: str = stage_ref("value_dir")
  reward: str = field("gold", choices=WORLD_REWARDS)


@dataclasses.dataclass(frozen=True)
class VASDecodeConfig:
  """policy: the frozen base ("stage:<name>" or a HF folder). values: one value model (betas, best-of-n, baselines)
  or two (also the composition grid). baselines: names of earlier evaluate_policy stages compared at matched KL."""
  seed: int = field(0)
  policy: str = stage_ref("model_dir")
  values: tuple[ValueSpec, ...] = field(())
  world: dict = field(default_factory=dict)
  num_prompts: int = field(64, min=1)
  batch_size: int = field(32, min=1)
  max_prompt_length: int = field(8, min=1)
  max_new_tokens: int = field(32, min=1)
  top_k: int = field(20, min=1)
  cache_bucket: int | None = field(None, min=0)  # decode phases (`sampling.generate`); None: the backend's rule
  tokens_per_iteration: int = field(1, min=1)  # decode steps per loop iteration (VAS and the best-of-n pools)
  restrict: bool = field(False)  # False: the official LogitsProcessor (other tokens keep base logits; KL 0 at beta 0)
  betas: tuple[float, ...] = field((0.0, 1.0, 2.0, 4.0, 8.0))
  bon_ns: tuple[int, ...] = field((1, 2, 4, 8, 16, 32))
  baselines: tuple[str, ...] = field(())
  compose_beta: float = field(4.0)
  compose_weights: tuple[float, ...] = field((0.0, 0.25, 0.5, 0.75, 1.0))

  def validate(self, path: str) -> None:
    if not self.policy:
      raise ConfigError(f"{path}.policy: required (the frozen base policy: 'stage:<name>' or a HF folder)")
    if len(self.values) not in (1, 2):
      raise ConfigError(f"{path}.values: one or two value models expected, got {len(self.values)}")
    for i, v in enumerate(self.values):
      if not v.value_model:
        raise ConfigError(f"{path}.values[{i}].value_model: required ('stage:<value_train stage>' or a folder)")
    composes = len(self.values) == 2 and bool(self.compose_weights)
    if (not self.betas and not composes) or any(b < 0 for b in self.betas):
      raise ConfigError(f"{path}.betas: every beta >= 0 expected, and at least one unless two values are composed; "
                        f"got {self.betas}")
    if self.baselines and not self.betas:
      raise ConfigError(f"{path}.baselines: matched-KL comparisons need the VAS curve over {path}.betas (empty)")
    if any(n < 1 for n in self.bon_ns):
      raise ConfigError(f"{path}.bon_ns: every n >= 1 expected, got {self.bon_ns}")
    if any(not 0.0 <= w <= 1.0 for w in self.compose_weights):
      raise ConfigError(f"{path}.compose_weights: weights in [0, 1] expected, got {self.compose_weights}")
    inputs_lib.check_world(self.world, path)


def gold_at_kl(kl: np.ndarray, gold: np.ndarray, target: float) -> tuple[float, bool]:
  """(gold of the curve (kl, gold) at KL `target` by linear interpolation over KL, whether target is inside the
  curve's KL range (outside, the nearest end's gold is returned))."""
  order = np.argsort(kl)
  kl, gold = np.asarray(kl, np.float64)[order], np.asarray(gold, np.float64)[order]
  return float(np.interp(target, kl, gold)), bool(kl[0] <= target <= kl[-1])


def _num_params(model: Any) -> int:
  return sum(int(np.size(x)) for x in jax.tree.leaves(nnx.state(model, nnx.Param)))


def run(cfg: VASDecodeConfig, workdir: str, inputs: dict) -> dict:
  """VAS at every beta (and composition weight) and best-of-n on held-out prompts; writes results.json; returns
  {"metrics"}."""
  world = inputs_lib.make_world(cfg.world)
  tok = world.tokenizer
  values = [artifacts.load_reward_model(artifacts.check_reward_tokenizer(
      common.resolve_path(v.value_model, inputs, "value_dir"), tok, f"values[{i}].value_model")).member(0)
            for i, v in enumerate(cfg.values)]
  policy, policy_config = from_pretrained(common.resolve_path(cfg.policy, inputs))
  eos_ids = inputs_lib.end_ids(tok, policy_config, world)
  rewards = [v.reward for v in cfg.values]
  scorers = {name: world_scorer(world, name) for name in dict.fromkeys(["gold", *rewards])}
  texts = world.prompts(cfg.num_prompts, "test")
  ids_all, mask_all = padding.encode_prompts(tok, texts, cfg.max_prompt_length)
  ratio = _num_params(values[0]) / _num_params(policy)  # value-model FLOPs per token in base-forward units
  key = jax.random.PRNGKey(cfg.seed)
  metrics: dict[str, float] = {"value_params_ratio": float(ratio)}

  def decode(models, weights, beta) -> dict[str, np.ndarray]:
    out: dict[str, list] = {}
    for start in range(0, len(texts), cfg.batch_size):
      ids, mask = ids_all[start:start + cfg.batch_size], mask_all[start:start + cfg.batch_size]
      gen = vas_generate(policy, models, ids, mask, beta=beta, weights=weights, top_k=cfg.top_k,
                         max_new_tokens=cfg.max_new_tokens, rng=jax.random.fold_in(key, start),
                         restrict=cfg.restrict, eos_ids=eos_ids, pad_id=tok.pad_id, cache_bucket=cfg.cache_bucket,
                         tokens_per_iteration=cfg.tokens_per_iteration)
      for name, fn in scorers.items():  # "reward/<name>": a world component may be called "length"
        out.setdefault(f"reward/{name}", []).append(np.asarray(fn(ids, mask, gen.tokens, gen.mask), np.float64))
      out.setdefault("kl", []).append(np.asarray(gen.kl, np.float64))
      out.setdefault("num_tokens", []).append(np.asarray(gen.lengths, np.float64))  # forwards: the end token too
      out.setdefault("length", []).append(np.asarray(content_lengths(gen.tokens, gen.mask, eos_ids), np.float64))
    return {k: np.concatenate(v) for k, v in out.items()}

  def report(prefix: str, result: dict[str, np.ndarray], num_models: int) -> None:
    metrics[f"{prefix}/gold"] = float(result["reward/gold"].mean())
    for name in rewards[:num_models]:
      metrics[f"{prefix}/reward/{name}"] = float(result[f"reward/{name}"].mean())
    metrics[f"{prefix}/kl"] = float(result["kl"].mean())
    metrics[f"{prefix}/length"] = float(result["length"].mean())
    cost = vas_cost(result["num_tokens"], top_k=cfg.top_k, num_value_models=num_models, value_params_ratio=ratio)
    metrics[f"{prefix}/forwards"] = float(np.mean(cost["base"] + cost["value"]))
    metrics[f"{prefix}/flops"] = float(np.mean(cost["flops"]))
    metrics[f"{prefix}/generated"] = float(result["num_tokens"].mean())

  curve_kl, curve_gold = [], []
  for beta in cfg.betas:
    result = decode(values[:1], (1.0,), beta)
    report(f"vas/beta={beta:g}", result, 1)
    curve_kl.append(metrics[f"vas/beta={beta:g}/kl"])
    curve_gold.append(metrics[f"vas/beta={beta:g}/gold"])
    print(f"[vas_decode] beta={beta:g}: gold={curve_gold[-1]:.3f} kl={curve_kl[-1]:.3f}", flush=True)

  if cfg.bon_ns:
    n_max = max(cfg.bon_ns)
    pools: dict[str, list] = {}
    for start in range(0, len(texts), cfg.batch_size):
      ids, mask = ids_all[start:start + cfg.batch_size], mask_all[start:start + cfg.batch_size]
      gen = generate(policy, ids, mask, max_new_tokens=cfg.max_new_tokens, rng=jax.random.fold_in(key, start),
                     eos_ids=eos_ids, pad_id=tok.pad_id, num_samples=n_max, cache_bucket=cfg.cache_bucket,
                     tokens_per_iteration=cfg.tokens_per_iteration)
      rep_ids, rep_mask = np.repeat(ids, n_max, axis=0), np.repeat(mask, n_max, axis=0)
      b = ids.shape[0]
      for name, fn in scorers.items():
        pools.setdefault(f"reward/{name}", []).append(
            np.asarray(fn(rep_ids, rep_mask, gen.tokens, gen.mask), np.float64).reshape(b, n_max))
      pools.setdefault("num_tokens", []).append(np.asarray(gen.lengths, np.float64).reshape(b, n_max))
      pools.setdefault("length", []).append(
          np.asarray(content_lengths(gen.tokens, gen.mask, eos_ids), np.float64).reshape(b, n_max))
    pool = {k: np.concatenate(v) for k, v in pools.items()}
    ns = sorted(set(cfg.bon_ns))
    by_reward = best_of_n_curves(pool[f"reward/{rewards[0]}"], pool["reward/gold"], ns, lengths_BxN=pool["length"])
    by_self = best_of_n_curves(pool[f"reward/{rewards[0]}"], pool[f"reward/{rewards[0]}"], ns)
    mean_length = float(pool["num_tokens"].mean())
    for j, n in enumerate(ns):
      p = f"bon/n={n}"
      metrics.update({f"{p}/gold": float(by_reward["gold"][j]), f"{p}/reward/{rewards[0]}": float(by_self["gold"][j]),
                      f"{p}/kl": float(by_reward["kl"][j]), f"{p}/length": float(by_reward["length"][j]),
                      f"{p}/forwards": n * mean_length, f"{p}/flops": n * mean_length,
                      f"{p}/generated": n * mean_length})

  for name in cfg.baselines:
    if name not in inputs or "gold/policy" not in inputs[name].get("metrics", {}):
      raise ValueError(f"vas_decode.baselines: {name!r} is not a finished evaluate_policy stage of this chain "
                       f"(finished: {sorted(inputs)})")
    m = inputs[name]["metrics"]
    vas_gold, inside = gold_at_kl(np.asarray(curve_kl), np.asarray(curve_gold), m["kl"])
    metrics.update({f"matched/{name}/kl": float(m["kl"]), f"matched/{name}/gold": float(m["gold/policy"]),
                    f"matched/{name}/vas_gold": vas_gold, f"matched/{name}/gain": vas_gold - float(m["gold/policy"]),
                    f"matched/{name}/in_range": float(inside)})

  if len(values) == 2 and cfg.compose_weights:
    grid: dict[str, list] = {}
    for w in cfg.compose_weights:
      result = decode(values, (w, 1.0 - w), cfg.compose_beta)
      report(f"compose/w={w:g}", result, 2)
      for name in rewards:
        grid.setdefault(name, []).append(result[f"reward/{name}"].mean())
      print(f"[vas_decode] compose w={w:g}: " + ", ".join(f"{n}={result[f'reward/{n}'].mean():.3f}" for n in rewards),
            flush=True)
    if len(cfg.compose_weights) > 2:
      for name in rewards:
        metrics[f"compose/spearman_{name}"] = float(spearman(np.asarray(cfg.compose_weights), np.asarray(grid[name])))
  common.write_results(workdir, metrics)
  return {"metrics": metrics}
