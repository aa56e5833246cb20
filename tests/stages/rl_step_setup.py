"""Shared set-up of the rl stage's step tests (tests/stages/test_rl_ppo.py, test_rl_old_logps.py): a tiny policy on
the synthetic world whose frozen reference differs from it (so every KL term is non-zero), two prompts and the gold
reward source."""

from __future__ import annotations

from typing import Any

import jax.numpy as jnp
from flax import nnx

from jaxrlhf.config import from_config
from jaxrlhf.data import padding
from jaxrlhf.models import CausalLM, ModelConfig
from jaxrlhf.stages import common
from jaxrlhf.stages import reward_sources as rewards_lib
from jaxrlhf.stages import rl
from jaxrlhf.train import optim


def rl_config(tiny: dict, loss: dict, sampling: dict | None = None, optimizer: dict | None = None) -> rl.RLConfig:
  """The step tests' RLConfig: seed 3, a `tiny` model, 2 prompts of up to 6 tokens, no eval prompts, the gold
  reward, 6 new tokens (plus `sampling`), learning rate 1e-2 (plus `optimizer`), beta 0.1 and `loss`."""
  return from_config({
      "seed": 3, "model": {"config": tiny}, "prompts_per_step": 2, "max_prompt_length": 6, "eval_prompts": 0,
      "rewards": ({"kind": "gold"},), "sampling": {"max_new_tokens": 6, **(sampling or {})},
      "optimizer": {"learning_rate": 1e-2, **(optimizer or {})}, "loss": {"beta": 0.1, **loss}}, rl.RLConfig)


def setup_step(world: Any, cfg: rl.RLConfig, tiny: dict, critic: Any = None) -> tuple[Any, Any, dict, list]:
  """(rl_setup of `cfg` with a `tiny` ModelConfig, its initial state with a reference re-drawn from seed 7 unless
  kl_mode is "none", 2 train prompts of 6 tokens, [the gold reward source])."""
  config = ModelConfig(vocab_size=world.tokenizer.vocab_size, **tiny)
  setup = rl.rl_setup(cfg, config, None, {}, optim.make_optimizer(cfg.optimizer), None, critic)
  state = setup.init()
  other = nnx.to_pure_dict(nnx.state(CausalLM(config, rngs=nnx.Rngs(7)), nnx.Param))
  if cfg.loss.kl_mode != "none":
    state = state.replace(extra=common.overwrite(state.extra, other, ("reference",)))
  ids, mask = padding.encode_prompts(world.tokenizer, world.prompts(2, "train"), 6)
  prompts = {"prompt_ids": jnp.asarray(ids), "prompt_mask": jnp.asarray(mask), "prompt_index": jnp.arange(2)}
  sources = [rewards_lib.RewardSource("gold", 1.0, rewards_lib.gold_score(world))]
  return setup, state, prompts, sources


def metric_value(metric: Any) -> float:
  """A step metric (Avg or array) as a float."""
  return float(metric.total / metric.count) if hasattr(metric, "count") else float(metric)
