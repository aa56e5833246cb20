"""The rl stage's `sampling.cache_bucket` and `sampling.tokens_per_iteration` reach the rollout's decode: its phases
read the configured slots, its loop decodes the configured blocks of steps, and the rollout batch (tokens, log-probs,
rewards, advantages) is the one of reading the whole cache one step per iteration."""

import jax
import numpy as np
import pytest
from flax import nnx
from jaxpr_walk import all_eqns, attention_slots_per_loop
from rl_step_setup import rl_config, setup_step

from jaxrlhf.data.synthetic import World, WorldConfig
from jaxrlhf.stages import rl

TINY = dict(embed_dim=16, num_layers=1, num_heads=2, num_kv_heads=1, head_dim=8, mlp_dim=32,
            max_position_embeddings=64)


@pytest.fixture(scope="module")
def world():
  return World(WorldConfig(seed=0))


def _rollout(world, sampling):
  """The rl stage's rollout of a tiny model under `sampling`: (its batch, the rollout's jaxpr)."""
  cfg = rl_config(TINY, {"num_generations": 2, "kl_mode": "loss"}, sampling={"temperature": 0.9, **sampling})
  setup, state, prompts, sources = setup_step(world, cfg, TINY)
  model = nnx.merge(setup.graphdef, state.params, state.extra)
  run = lambda p: rl.rollout(  # noqa: E731
      model, p, jax.random.PRNGKey(0), loss=cfg.loss, sampling=cfg.sampling, sources=sources,
      eos_ids=(world.tokenizer.eos_id,), pad_id=world.tokenizer.pad_id)
  batch, _ = jax.jit(run)(prompts)
  return batch, jax.make_jaxpr(run)(prompts).jaxpr


def test_rollout_decodes_in_the_configured_cache_phases(world):
  batches, lengths = {}, {}
  for bucket in (0, 2):
    batches[bucket], jaxpr = _rollout(world, {"max_new_tokens": 6, "cache_bucket": bucket})
    lengths[bucket] = attention_slots_per_loop(jaxpr)  # the cache slots each decode loop's attention reads
  # Prompts of 6 tokens + 6 new: 11 slots; buckets of 2 give phases of 8, 10 and 11 slots.
  assert lengths == {0: [11], 2: [8, 10, 11]}
  for key in ("tokens", "mask", "ref_logps", "old_logps", "rewards", "advantages"):
    np.testing.assert_allclose(np.asarray(batches[2][key]), np.asarray(batches[0][key]), atol=1e-5, err_msg=key)


def test_rollout_decodes_the_configured_tokens_per_iteration(world):
  batches, blocks = {}, {}
  for k in (1, 4):
    batches[k], jaxpr = _rollout(world, {"max_new_tokens": 7, "tokens_per_iteration": k})
    # generate's block of k steps is a fori_loop of static length k: a scan of that length in the program.
    blocks[k] = sorted(e.params["length"] for e in all_eqns(jaxpr)
                       if e.primitive.name == "scan" and e.params["length"] == 4)
  assert blocks == {1: [], 4: [4]}
  for key in ("tokens", "mask", "ref_logps", "old_logps", "rewards", "advantages"):
    np.testing.assert_allclose(np.asarray(batches[4][key]), np.asarray(batches[1][key]), atol=1e-6, err_msg=key)
