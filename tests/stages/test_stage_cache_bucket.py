"""Every sampling stage's `cache_bucket` and `tokens_per_iteration` reach `sampling.generate`: best_of_n's pools,
evaluate_policy's policy and base samples, value_train's rollouts, self_rewarding's candidates and density_ratio's
gold samples decode in the configured phases and blocks of steps (`generate` is called with the keys' values), and
their samples are the ones of reading the whole cache one step per loop iteration (the rl and vas_decode stages have
their own tests)."""

import jax
import numpy as np
import pytest
from flax import nnx

from jaxrlhf.config import ConfigError, from_config
from jaxrlhf.data.synthetic import World, WorldConfig
from jaxrlhf.models import CausalLM, ModelConfig
from jaxrlhf.sampling.generate import generate as real_generate
from jaxrlhf.sampling.best_of_n import gold_scorer
from jaxrlhf.stages import best_of_n, density_ratio, evaluate_policy, inputs, self_rewarding, value_train

TINY = dict(embed_dim=16, num_layers=1, num_heads=2, num_kv_heads=1, head_dim=8, mlp_dim=32,
            max_position_embeddings=64)
NEW_TOKENS = 7  # prompts of <= 8 tokens + 7 new: buckets of 2 give three or more phases


@pytest.fixture(scope="module")
def world():
  return World(WorldConfig(seed=0, num_prompts=64))


@pytest.fixture(scope="module")
def policy(world):
  return CausalLM(ModelConfig(vocab_size=world.tokenizer.vocab_size, **TINY), rngs=nnx.Rngs(0))


@pytest.fixture(scope="module")
def prompts(world):
  """Four left-padded test prompts (ids, mask) of the world."""
  ids, mask = world.prompt_arrays(4, "test")
  return np.asarray(ids), np.asarray(mask)


@pytest.fixture
def recorded(monkeypatch):
  """(cache_bucket, tokens_per_iteration) of every `generate` call the stage modules make (the real `generate` still
  runs)."""
  calls = []

  def recording_generate(*args, **kwargs):
    calls.append((kwargs.get("cache_bucket", "missing"), kwargs.get("tokens_per_iteration", "missing")))
    return real_generate(*args, **kwargs)

  for module in (best_of_n, density_ratio, evaluate_policy, self_rewarding, value_train):
    monkeypatch.setattr(module, "generate", recording_generate)
  return calls


def _sample_best_of_n(policy, world, prompts, bucket, tpi):
  cfg = best_of_n.BestOfNConfig(pool_size=2, batch_size=2, max_new_tokens=NEW_TOKENS, cache_bucket=bucket,
                                tokens_per_iteration=tpi)
  pools = best_of_n.generate_pools(policy, inputs.PromptSet(*prompts, table=None, report={}), cfg,
                                   (world.tokenizer.eos_id,), world.tokenizer.pad_id, jax.jit(world.gold_reward))
  return pools["tokens"], pools["gold"]


def _sample_evaluate_policy(policy, world, prompts, bucket, tpi):
  result = evaluate_policy.evaluate_policy(
      policy, policy, *prompts, gold_fn=gold_scorer(world), rng=jax.random.PRNGKey(3), max_new_tokens=NEW_TOKENS,
      num_samples=2, eos_ids=(world.tokenizer.eos_id,), pad_id=world.tokenizer.pad_id, cache_bucket=bucket,
      tokens_per_iteration=tpi)
  return result.per_prompt["gold"], result.per_prompt["length"]


def _sample_value_train(policy, world, prompts, bucket, tpi):
  cfg = value_train.ValueTrainConfig(samples_per_prompt=2, max_new_tokens=NEW_TOKENS, cache_bucket=bucket,
                                     tokens_per_iteration=tpi)
  batch = value_train._samples(policy, *prompts, cfg, jax.random.PRNGKey(5), (world.tokenizer.eos_id,),
                               world.tokenizer.pad_id, gold_scorer(world))
  return batch["tokens"], batch["reward"]


def _sample_self_rewarding(policy, world, prompts, bucket, tpi):
  cfg = self_rewarding.SelfRewardingConfig(max_new_tokens=NEW_TOKENS, sample_batch_size=3, cache_bucket=bucket,
                                           tokens_per_iteration=tpi)
  return self_rewarding._sample(policy, *prompts, jax.random.PRNGKey(7), cfg, (world.tokenizer.eos_id,),
                                world.tokenizer.pad_id, 2)


def _sample_density_ratio(policy, world, prompts, bucket, tpi):
  del prompts
  cfg = density_ratio.DensityRatioConfig(batch_size=3, max_new_tokens=NEW_TOKENS, cache_bucket=bucket,
                                         tokens_per_iteration=tpi)
  return (density_ratio.sample_gold(policy, world, world.prompts(4, "test"), cfg),)


SAMPLERS = {"best_of_n": _sample_best_of_n, "evaluate_policy": _sample_evaluate_policy,
            "value_train": _sample_value_train, "self_rewarding": _sample_self_rewarding,
            "density_ratio": _sample_density_ratio}


@pytest.mark.parametrize("stage", sorted(SAMPLERS))
def test_the_stage_decodes_in_its_configured_phases_and_blocks(stage, policy, world, prompts, recorded):
  sample = SAMPLERS[stage]
  phased = sample(policy, world, prompts, 2, 1)
  assert recorded and set(recorded) == {(2, 1)}, recorded
  recorded.clear()
  whole = sample(policy, world, prompts, 0, 1)
  assert recorded and set(recorded) == {(0, 1)}, recorded
  recorded.clear()
  blocks = sample(policy, world, prompts, 0, 3)  # 6 fed-back steps: two blocks of 3
  assert recorded and set(recorded) == {(0, 3)}, recorded
  for a, b, c in zip(phased, whole, blocks):
    np.testing.assert_allclose(np.asarray(a, np.float64), np.asarray(b, np.float64), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(np.asarray(c, np.float64), np.asarray(b, np.float64), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("config", [best_of_n.BestOfNConfig, evaluate_policy.EvaluatePolicyConfig,
                                    value_train.ValueTrainConfig, self_rewarding.SelfRewardingConfig,
                                    density_ratio.DensityRatioConfig])
def test_a_negative_bucket_names_the_key(config):
  with pytest.raises(ConfigError, match="cache_bucket"):
    from_config({"cache_bucket": -1}, config)


@pytest.mark.parametrize("config", [best_of_n.BestOfNConfig, evaluate_policy.EvaluatePolicyConfig,
                                    value_train.ValueTrainConfig, self_rewarding.SelfRewardingConfig,
                                    density_ratio.DensityRatioConfig])
def test_tokens_per_iteration_below_one_names_the_key(config):
  assert config.__dataclass_fields__["tokens_per_iteration"].default == 1
  with pytest.raises(ConfigError, match="tokens_per_iteration"):
    from_config({"tokens_per_iteration": 0}, config)
