"""value_train / vas_decode plumbing that needs no model run: matched-KL interpolation, the world rewards the value
models train on (gold = the sum of the five components), and config errors that name the key."""

import numpy as np
import pytest

from configs import _sections as S
from configs.papers import vas as paper
from experiments import run as run_lib
from jaxrlhf.config import ConfigError
from jaxrlhf.data.padding import encode_prompts
from jaxrlhf.data.synthetic import World, WorldConfig
from jaxrlhf.sampling.best_of_n import WORLD_REWARDS, world_scorer
from jaxrlhf.stages import value_train, vas_decode
from jaxrlhf.stages.vas_decode import gold_at_kl


def test_gold_at_kl_interpolates_over_kl():
  kl, gold = np.array([0.0, 4.0, 1.0]), np.array([1.0, 3.0, 2.0])  # unsorted betas: sorted by KL inside
  assert gold_at_kl(kl, gold, 2.5) == (2.5, True)
  assert gold_at_kl(kl, gold, 0.5) == (1.5, True)
  assert gold_at_kl(kl, gold, 9.0) == (3.0, False)  # beyond the curve: the end value, flagged


def test_world_scorers_are_the_gold_components():
  world = World(WorldConfig(seed=0))
  rng = np.random.default_rng(0)
  p_ids, p_mask = encode_prompts(world.tokenizer, world.prompts(6, "test"), 8)
  tokens = rng.integers(4, world.tokenizer.vocab_size, size=(6, 10)).astype(np.int32)
  mask = (np.arange(10)[None] < rng.integers(1, 11, size=(6, 1))).astype(np.int32)
  comps = world.gold_components_np(np.asarray(p_ids), np.asarray(p_mask), tokens, mask)
  parts = [np.asarray(world_scorer(world, name)(p_ids, p_mask, tokens, mask)) for name in WORLD_REWARDS]
  np.testing.assert_allclose(np.stack(parts[1:], axis=1), comps, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(parts[0], comps.sum(1), rtol=1e-5, atol=1e-5)
  with pytest.raises(ValueError, match="reward must be one of"):
    world_scorer(world, "verbosity")


def _plan_with(stage_name: str, **overrides):
  config = paper.get_config("smoke")
  for key, value in overrides.items():
    config[stage_name][key] = value
  return run_lib.plan(config)


def test_bad_configs_name_the_key():
  with pytest.raises(ConfigError, match=r"config\.value_gold\.reward_model"):
    _plan_with("value_gold", reward="reward_model")
  with pytest.raises(ConfigError, match=r"config\.vas\.betas"):
    _plan_with("vas", betas=(-1.0,))
  with pytest.raises(ConfigError, match=r"config\.compose\.compose_weights"):
    _plan_with("compose", compose_weights=(0.0, 1.5))
  section = S.stage("vas_decode", vas_decode.VASDecodeConfig, policy="stage:sft")
  config = paper.get_config("smoke")
  config.vas = section  # no value model at all
  with pytest.raises(ConfigError, match=r"config\.vas\.values"):
    run_lib.plan(config)
  section = S.stage("value_train", value_train.ValueTrainConfig, policy="stage:sft", init_from_policy=False)
  config = paper.get_config("smoke")
  config.value_gold = section
  with pytest.raises(ConfigError, match=r"config\.value_gold\.value_config"):
    run_lib.plan(config)
