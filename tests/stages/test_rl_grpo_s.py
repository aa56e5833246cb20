"""GRPO-S in the rl stage (`loss.difficulty_scaling`, DR-IRL; Cheng et al. 2025, arXiv 2503.18991): a rollout's
advantages equal the library's `grpo_s_advantages` on gaps computed independently (the world's gold of the samples
minus the gold of the prompt's demonstration), off gives today's GRPO batch bit for bit, the per-prompt
table attaches the right rows and checks its column, and config mistakes name their key."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jaxrlhf.config import ConfigError, from_config
from jaxrlhf.data import padding
from jaxrlhf.data.synthetic import World, WorldConfig
from jaxrlhf.losses import difficulty_scaling as ds
from jaxrlhf.losses import policy_gradient as pg
from jaxrlhf.models import CausalLM, ModelConfig
from jaxrlhf.stages import reward_sources as rewards_lib
from jaxrlhf.stages import rl

TINY = dict(embed_dim=16, num_layers=1, num_heads=2, num_kv_heads=2, head_dim=8, mlp_dim=32,
            max_position_embeddings=64)


def _setup(n=3, width=6, max_new_tokens=6):
  world = World(WorldConfig(num_prompts=256, max_response_len=12))
  config = ModelConfig(vocab_size=world.tokenizer.vocab_size, **TINY)
  model = rl.RLModel(CausalLM(config, rngs=nnx.Rngs(0)), CausalLM(config, rngs=nnx.Rngs(1)), {})
  records = world.sft_records(n, "train")
  ids, mask = padding.encode_prompts(world.tokenizer, [r.prompt for r in records], width)
  refs, ref_mask = padding.encode_responses(world.tokenizer, [r.response for r in records], max_new_tokens)
  prompts = {"prompt_ids": jnp.asarray(ids), "prompt_mask": jnp.asarray(mask),
             "prompt_index": jnp.arange(n, dtype=jnp.int32), "alpha_data": jnp.asarray([1.3, 0.9, 1.1]),
             "reference_tokens": jnp.asarray(refs), "reference_mask": jnp.asarray(ref_mask)}
  return world, model, prompts


def test_rollout_advantages_and_off_is_grpo_bit_for_bit():
  world, model, prompts = _setup()
  sampling = rl.SamplingConfig(max_new_tokens=6, temperature=0.9)
  sources = [rewards_lib.RewardSource("gold", 1.0, rewards_lib.gold_score(world))]
  kwargs = dict(sampling=sampling, sources=sources, eos_ids=(world.tokenizer.eos_id,), pad_id=world.tokenizer.pad_id,
                world=world)
  base = dict(num_generations=4, beta=0.3, kl_mode="loss")
  off = rl.RLLossConfig(**base)
  on = rl.RLLossConfig(**base, difficulty_scaling="grpo_s", responsiveness_tau=0.05)
  run = jax.jit(lambda loss, p: rl.rollout(model, p, jax.random.PRNGKey(0), loss=loss, **kwargs), static_argnums=0)
  b_off, _ = run(off, prompts)
  b_on, m_on = run(on, prompts)
  for key in ("tokens", "mask", "rewards", "old_logps"):
    np.testing.assert_array_equal(b_on[key], b_off[key])
  # Independent gaps: the world's gold of each sample minus the gold of its prompt's demonstration.
  gold = world.gold_reward_np(b_on["prompt_ids"], b_on["prompt_mask"], b_on["tokens"], b_on["mask"])
  demo = world.gold_reward_np(prompts["prompt_ids"], prompts["prompt_mask"], prompts["reference_tokens"],
                              prompts["reference_mask"])
  gaps = gold - np.repeat(demo, 4)
  expected, parts = ds.grpo_s_advantages(jnp.asarray(gold), 4, jnp.repeat(prompts["alpha_data"], 4),
                                         jnp.asarray(gaps), tau=0.05)
  np.testing.assert_allclose(b_on["advantages"], expected, rtol=1e-4, atol=1e-5)
  assert float(m_on["difficulty/reward_gap"]) == pytest.approx(float(np.mean(gaps)), rel=1e-4, abs=1e-5)
  assert float(np.min(parts["alpha_model"])) != float(np.max(parts["alpha_model"]))  # tau 0.05 bites somewhere
  # Off: today's GRPO advantages of the same rewards, bit for bit.
  np.testing.assert_array_equal(b_off["advantages"], pg.group_advantages(b_off["rewards"], 4))


def test_difficulty_table_attaches_rows_and_checks_columns():
  table = rl.DifficultyTable(np.array([0.2, 0.6, 1.0], np.float32), np.arange(6).reshape(3, 2),
                             np.ones((3, 2), np.int32))
  out = table.attach({"prompt_index": np.array([2, 0], np.int32)})
  np.testing.assert_allclose(out["alpha_data"], ds.data_hardness(jnp.array([0.2, 0.6, 1.0]))[np.array([2, 0])],
                             rtol=1e-6)
  np.testing.assert_array_equal(out["reference_tokens"], [[4, 5], [0, 1]])
  cfg = from_config({"loss": {"difficulty_scaling": "grpo_s", "hardness_column": "delta"}}, rl.RLConfig)
  train = rl.inputs_lib.PromptSet(np.ones((2, 3), np.int32), np.ones((2, 3), np.int32),
                                  rewards_lib.PromptTable(["a", "b"], {"references": [["x"], ["y"]],
                                                                       "delta": [0.5, 3.0]}), {})
  world = World(WorldConfig(num_prompts=256, max_response_len=12))
  with pytest.raises(ValueError, match=r"loss.hardness_column: row 1 has 3.0"):
    rl.difficulty_table(cfg, None, train, world.tokenizer, (world.tokenizer.eos_id,), world.tokenizer.pad_id)
  train = train._replace(table=rewards_lib.PromptTable(["a", "b"], {"answers": ["x", "y"]}))
  with pytest.raises(ValueError, match=r"loss.reference_column: 'references' is not a column"):
    rl.difficulty_table(cfg, None, train, world.tokenizer, (world.tokenizer.eos_id,), world.tokenizer.pad_id)


def test_config_validation_names_keys():
  with pytest.raises(ConfigError, match=r"loss.difficulty_scaling: 'grpo_s' scales GRPO"):
    from_config({"loss": {"difficulty_scaling": "grpo_s", "algorithm": "rloo"}}, rl.RLConfig)
  with pytest.raises(ConfigError, match=r"loss.dynamic_sampling"):
    from_config({"loss": {"difficulty_scaling": "grpo_s", "dynamic_sampling": True}}, rl.RLConfig)
  with pytest.raises(ConfigError, match=r"loss.responsiveness_tau: .* applies to difficulty_scaling 'grpo_s' only"):
    from_config({"loss": {"responsiveness_tau": 2.0}}, rl.RLConfig)
  with pytest.raises(ConfigError, match=r"difficulty_scaling"):
    from_config({"loss": {"difficulty_scaling": "grpo-s"}}, rl.RLConfig)
  assert rl.RLLossConfig().difficulty_scaling == "none"
