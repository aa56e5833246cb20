"""The "value_train" stage: the value function of Value Augmented Sampling (VAS; Han, Shenfeld, Srivastava, Kim,
Agrawal 2024, "Value Augmented Sampling for Language Model Alignment and Personalization", arXiv:2405.06639), fitted
on samples of the FROZEN base policy.

Each step samples `prompts_per_step` x `samples_per_prompt` responses of the base policy on the world's train
prompts, scores them with one reward (the gold r*, one gold component, or a saved reward model), computes the
TD(lambda) targets of the states s_0..s_n of every response with the current value model
(`losses.value.td_lambda_returns`; gamma 1, lambda 0.95 as the paper's code) and takes `epochs` Adam steps on the
0.5 * squared error (`losses.value.value_regression_loss`; the paper's code: 2 epochs per batch). The policy is never
updated, so the data distribution is fixed: no actor-critic co-training (the paper's point).

The value model is a causal LM with a scalar head read at every position (a `RewardModel` with a "linear" head,
applied by `train.scoring.state_values`); it starts from the base policy's weights (`init_from_policy`, the paper
initializes it from a pretrained LM) or from a random init of `value_config` (a smaller value model).
Saved as a one-member reward-model folder (`value_dir`; `artifacts.load_reward_model(dir).member(0)`).

Metrics: train/value_loss (last step), and on `eval_prompts` held-out (validation) prompts of the world:
eval/mse_final (V(s_n) vs the reward), eval/corr_final, eval/corr_mid (V at the middle state vs the reward: the value
predicts the outcome from a partial response), eval/reward_mean / eval/reward_std of the base samples.
"""

from __future__ import annotations

import dataclasses
import os
import time

import jax
import numpy as np
import optax
from flax import nnx

from jaxrlhf.config import ConfigError, field, stage_ref
from jaxrlhf.data import padding
from jaxrlhf.losses.value import state_mask, td_lambda_returns, value_regression_loss
from jaxrlhf.models import CausalLM, RewardModel, RewardEnsemble, from_pretrained
from jaxrlhf.models.heads import HeadConfig
from jaxrlhf.sampling.best_of_n import WORLD_REWARDS, reduce_scores, reward_model_scorer, world_scorer
from jaxrlhf.sampling.generate import generate
from jaxrlhf.stages import artifacts
from jaxrlhf.stages import common
from jaxrlhf.stages import inputs as inputs_lib
from jaxrlhf.train import scoring

REWARDS = WORLD_REWARDS + ("reward_model",)


@dataclasses.dataclass(frozen=True)
class ValueTrainConfig:
  """policy: the frozen base policy ("stage:<name>" or a HF folder). reward: "gold", a world component, or
  "reward_model" (`reward_model`: a saved reward model, members averaged). value_config: ModelConfig fields of a
  randomly initialized value model (used when init_from_policy is False; vocab_size = the policy's)."""
  seed: int = field(0)
  policy: str = stage_ref("model_dir")
  reward: str = field("gold", choices=REWARDS)
  reward_model: str = stage_ref("rm_dir")
  world: dict = field(default_factory=dict)
  init_from_policy: bool = field(True)
  value_config: dict = field(default_factory=dict)
  num_steps: int = field(100, min=1)
  prompts_per_step: int = field(32, min=1)
  samples_per_prompt: int = field(2, min=1)
  num_prompts: int = field(2048, min=1)  # The train prompts cycled through.
  epochs: int = field(2, min=1)
  gamma: float = field(1.0, min=0.0, max=1.0)
  lam: float = field(0.95, min=0.0, max=1.0)
  learning_rate: float = field(1e-3, min=0.0)
  clip_norm: float = field(1.0, min=0.0)
  max_prompt_length: int = field(8, min=1)
  max_new_tokens: int = field(32, min=1)
  temperature: float = field(1.0, min=1e-3)
  cache_bucket: int | None = field(None, min=0)  # decode phases (`sampling.generate`); None: the backend's rule
  tokens_per_iteration: int = field(1, min=1)  # decode steps per loop iteration (`sampling.generate`)
  eval_prompts: int = field(128, min=0)
  log_every: int = field(25, min=1)

  def validate(self, path: str) -> None:
    if not self.policy:
      raise ConfigError(f"{path}.policy: required (the frozen base policy: 'stage:<name>' or a HF folder)")
    if (self.reward == "reward_model") != bool(self.reward_model):
      raise ConfigError(f"{path}.reward_model: give a reward model exactly when {path}.reward is 'reward_model' "
                        f"(reward={self.reward!r}, reward_model={self.reward_model!r})")
    if not self.init_from_policy and not self.value_config:
      raise ConfigError(f"{path}.value_config: required when {path}.init_from_policy is False (ModelConfig fields)")
    inputs_lib.check_world(self.world, path)


def reward_fn(cfg: ValueTrainConfig, world, inputs: dict):
  """(prompt_ids, prompt_mask, tokens, mask) -> float32 (R,) rewards of the configured source."""
  if cfg.reward != "reward_model":
    return world_scorer(world, cfg.reward)
  rm_dir = artifacts.check_reward_tokenizer(common.resolve_path(cfg.reward_model, inputs, "rm_dir"), world.tokenizer,
                                            "reward_model")
  scorer = reward_model_scorer(artifacts.load_reward_model_any(rm_dir))
  return lambda *arrays: reduce_scores(scorer(*arrays), "mean")


def initial_value_model(cfg: ValueTrainConfig, policy_path: str, vocab_size: int) -> RewardModel:
  """The value model before training: the policy's backbone (or a random `value_config` one) + a linear head."""
  if cfg.init_from_policy:
    lm, _ = from_pretrained(policy_path)
  else:
    config = common.model_config(common.ModelSpec(config=dict(cfg.value_config)), vocab_size=vocab_size)
    lm = CausalLM(config, rngs=nnx.Rngs(cfg.seed))
  return RewardModel.from_causal_lm(lm, HeadConfig(kind="linear"), seed=cfg.seed)


def _train_step(graphdef, rest, optimizer):
  def loss_fn(params, batch):
    model = nnx.merge(graphdef, params, rest)
    values = scoring.state_values(model, batch["prompt_ids"], batch["prompt_mask"], batch["tokens"], batch["mask"])
    return value_regression_loss(values, batch["targets"], batch["state_mask"])

  @jax.jit
  def step(params, opt_state, batch):
    (_, metrics), grads = jax.value_and_grad(loss_fn, has_aux=True)(params, batch)
    updates, opt_state = optimizer.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, metrics

  @jax.jit
  def values(params, batch):
    model = nnx.merge(graphdef, params, rest)
    return scoring.state_values(model, batch["prompt_ids"], batch["prompt_mask"], batch["tokens"], batch["mask"])

  return step, values


def _samples(policy, ids, mask, cfg: ValueTrainConfig, key, eos_ids, pad_id, score) -> dict:
  """Base-policy rollouts of the prompts (samples_per_prompt each) with their rewards, as numpy arrays."""
  s = cfg.samples_per_prompt
  gen = generate(policy, ids, mask, max_new_tokens=cfg.max_new_tokens, temperature=cfg.temperature, rng=key,
                 eos_ids=eos_ids, pad_id=pad_id, num_samples=s, cache_bucket=cfg.cache_bucket,
                 tokens_per_iteration=cfg.tokens_per_iteration)
  batch = {"prompt_ids": np.repeat(ids, s, axis=0), "prompt_mask": np.repeat(mask, s, axis=0),
           "tokens": np.asarray(gen.tokens), "mask": np.asarray(gen.mask), "lengths": np.asarray(gen.lengths)}
  batch["reward"] = np.asarray(score(batch["prompt_ids"], batch["prompt_mask"], batch["tokens"], batch["mask"]),
                               np.float32)
  batch["state_mask"] = np.asarray(state_mask(batch["lengths"], cfg.max_new_tokens + 1))
  return batch


def run(cfg: ValueTrainConfig, workdir: str, inputs: dict) -> dict:
  """Trains the value model on base-policy samples; writes `workdir/value` and results.json; returns
  {"value_dir", "metrics"}."""
  policy_path = common.resolve_path(cfg.policy, inputs)
  world = inputs_lib.make_world(cfg.world)
  tok = world.tokenizer
  policy, policy_config = from_pretrained(policy_path)
  eos_ids = inputs_lib.end_ids(tok, policy_config, world)
  score = reward_fn(cfg, world, inputs)
  model = initial_value_model(cfg, policy_path, policy_config.vocab_size)
  graphdef, params, rest = nnx.split(model, nnx.Param, ...)
  optimizer = optax.chain(optax.clip_by_global_norm(cfg.clip_norm) if cfg.clip_norm else optax.identity(),
                          optax.adam(cfg.learning_rate))
  opt_state = optimizer.init(params)
  step, values_fn = _train_step(graphdef, rest, optimizer)

  texts = world.prompts(cfg.num_prompts, "train")
  ids_all, mask_all = padding.encode_prompts(tok, texts, cfg.max_prompt_length)
  order = np.random.default_rng(cfg.seed).permutation(len(texts))
  key = jax.random.PRNGKey(cfg.seed)
  metrics, t0 = {}, time.time()
  for i in range(cfg.num_steps):
    pick = np.take(order, np.arange(i * cfg.prompts_per_step, (i + 1) * cfg.prompts_per_step), mode="wrap")
    batch = _samples(policy, ids_all[pick], mask_all[pick], cfg, jax.random.fold_in(key, i), eos_ids, tok.pad_id,
                     score)
    # Targets from the current value model, fixed for the `epochs` passes (the official code's order).
    current = values_fn(params, batch)
    batch["targets"] = np.asarray(td_lambda_returns(current, batch["reward"], batch["lengths"], gamma=cfg.gamma,
                                                    lam=cfg.lam))
    for _ in range(cfg.epochs):
      params, opt_state, step_metrics = step(params, opt_state, batch)
    if (i + 1) % cfg.log_every == 0 or i + 1 == cfg.num_steps:
      metrics = {f"train/{k.split('/')[-1]}": float(v) for k, v in step_metrics.items()}
      metrics["train/reward_mean"] = float(batch["reward"].mean())
      print(f"[value_train] step {i + 1}/{cfg.num_steps} loss={metrics['train/loss']:.4f} "
            f"({time.time() - t0:.0f}s)", flush=True)

  if cfg.eval_prompts:
    texts = world.prompts(cfg.eval_prompts, "validation")
    ids, mask = padding.encode_prompts(tok, texts, cfg.max_prompt_length)
    batch = _samples(policy, ids, mask, cfg, jax.random.fold_in(key, 2**31 - 1), eos_ids, tok.pad_id, score)
    v = np.asarray(values_fn(params, batch), np.float64)
    r, n = batch["reward"].astype(np.float64), batch["lengths"]
    rows = np.arange(len(r))
    final, mid = v[rows, n], v[rows, n // 2]
    metrics.update({"eval/mse_final": float(np.mean((final - r) ** 2)),
                    "eval/corr_final": float(np.corrcoef(final, r)[0, 1]),
                    "eval/corr_mid": float(np.corrcoef(mid, r)[0, 1]),
                    "eval/reward_mean": float(r.mean()), "eval/reward_std": float(r.std())})

  model = nnx.merge(graphdef, params, rest)
  value_dir = os.path.join(workdir, "value")
  ensemble = RewardEnsemble.stack([model])
  artifacts.save_reward_model(value_dir, model.config, model.head.config, 1, nnx.state(ensemble))
  common.write_results(workdir, metrics, reward=cfg.reward)
  print("[value_train] " + ", ".join(f"{k}={v:.4g}" for k, v in metrics.items()), flush=True)
  return {"value_dir": value_dir, "metrics": metrics}
