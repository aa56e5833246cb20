"""Text rewards scored on the host before the RL step (`rl.host_scored_rollouts`): the step program then holds no
host callback, so XLA's persistent cache can keep it, and it computes exactly what the step with the rewards'
`jax.pure_callback`s computes (same state, same key: same samples, rewards, metrics and updated parameters)."""

import os
import sys

import jax
import numpy as np
import pytest

from jaxrlhf.data.synthetic import World, WorldConfig
from jaxrlhf.stages import reward_sources as rewards_lib
from jaxrlhf.stages import rl
from jaxrlhf.train import optim

sys.path.insert(0, os.path.dirname(__file__))
from rl_step_setup import rl_config, setup_step  # noqa: E402  pylint: disable=g-import-not-at-top

TINY = dict(embed_dim=16, num_layers=1, num_heads=2, num_kv_heads=2, head_dim=8, mlp_dim=32,
            max_position_embeddings=64)
CALLBACK = "python_cpu_callback"  # the custom call jax.pure_callback lowers to on the CPU


@pytest.fixture(scope="module")
def world():
  return World(WorldConfig(num_prompts=256, max_response_len=12))


def _sources(world, sources):
  """The gold source plus a text reward that depends on every sample (its word count / 4, unscorable (None) without
  words), and the list of its calls' row counts."""
  table = rewards_lib.PromptTable(prompts=[f"prompt {i}" for i in range(2)])
  calls = []

  def words_over_four(prompts, completions):
    calls.append(len(completions))
    return [len(c.split()) / 4 if c.split() else None for c in completions]

  score, host = rewards_lib.text_score(words_over_four, world.tokenizer, table, "words")
  words = rewards_lib.RewardSource("words", 0.5, score, True, host={rewards_lib.host_score_key("words"): host})
  return [*sources, words], calls


LOSSES = {
    "grpo_dapo": {"algorithm": "grpo", "num_generations": 4, "kl_mode": "loss", "kl_estimator": "k3",
                  "dynamic_sampling": True, "oversample": 2},
    "ppo": {"algorithm": "ppo", "num_generations": 4, "kl_mode": "reward", "kl_estimator": "k1"},
    "online_dpo": {"algorithm": "online_dpo", "num_generations": 2, "kl_mode": "loss", "kl_estimator": "k3"},
}


@pytest.mark.parametrize("name", sorted(LOSSES))
def test_host_scored_step_equals_the_step_with_callbacks_and_holds_none(world, name):
  cfg = rl_config(TINY, LOSSES[name])
  setup, state, prompts, sources = setup_step(world, cfg, TINY)
  if cfg.prompts_per_rollout > 2:  # DAPO oversamples: the prompt batch is prompts_per_rollout prompts
    prompts = {k: np.concatenate([np.asarray(v)] * (cfg.prompts_per_rollout // 2)) for k, v in prompts.items()}
    prompts["prompt_index"] = np.arange(cfg.prompts_per_rollout) % 2
  sources, calls = _sources(world, sources)
  make = {"ppo": rl.make_ppo_step, "online_dpo": rl.make_online_dpo_step}.get(cfg.loss.algorithm, rl.make_rl_step)
  kw = dict(eos_ids=(world.tokenizer.eos_id,), pad_id=world.tokenizer.pad_id)
  step = jax.jit(make(setup.graphdef, cfg, optim.make_optimizer(cfg.optimizer), sources, world=world, **kw))
  prepare = rl.host_scored_rollouts(setup.graphdef, cfg, rewards_lib.host_functions(sources), None, **kw)

  batch = prepare(state, prompts)
  rows = cfg.prompts_per_rollout * cfg.loss.num_generations
  assert calls == [rows]  # the text reward ran once, here, on every sampled row
  assert CALLBACK in step.lower(state, prompts).as_text()  # the plain step calls back to the host ...
  assert CALLBACK not in step.lower(state, batch).as_text()  # ... the step on the prepared batch does not

  calls.clear()
  with_callbacks, metrics_a = step(state, prompts)
  assert calls == [rows]
  calls.clear()
  host_scored, metrics_b = step(state, batch)
  assert not calls
  flat_a, flat_b = jax.tree_util.tree_leaves_with_path(metrics_a), jax.tree_util.tree_leaves_with_path(metrics_b)
  assert [p for p, _ in flat_a] == [p for p, _ in flat_b]
  assert "reward/words" in metrics_a
  for (path, a), (_, b) in zip(flat_a, flat_b):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b), err_msg=jax.tree_util.keystr(path))
  for a, b in zip(jax.tree.leaves(with_callbacks.params), jax.tree.leaves(host_scored.params)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  # The update moved the policy, so the equality above is not two untouched copies.
  assert any(not np.array_equal(np.asarray(a), np.asarray(b))
             for a, b in zip(jax.tree.leaves(state.params), jax.tree.leaves(host_scored.params)))
  # The step reads the completions it is given (it does not sample them again).
  _, forced = step(state, {**batch, rl.SAMPLED_LENGTHS: np.full((rows,), 1, np.int32)})
  assert float(forced["completion_length"]) == 1.0 != float(metrics_b["completion_length"])


def test_grpo_s_demonstrations_are_host_scored_too(world):
  cfg = rl_config(TINY, {"algorithm": "grpo", "num_generations": 4, "difficulty_scaling": "grpo_s"})
  setup, state, prompts, sources = setup_step(world, cfg, TINY)
  sources, calls = _sources(world, sources)
  demos = np.tile(np.arange(4, 10, dtype=np.int32), (2, 1))  # two 6-token demonstrations
  prompts = {**prompts, "reference_tokens": demos.astype(np.int32), "reference_mask": np.ones(demos.shape, np.int32),
             "alpha_data": np.full((2,), 0.5, np.float32)}
  kw = dict(eos_ids=(world.tokenizer.eos_id,), pad_id=world.tokenizer.pad_id)
  step = jax.jit(rl.make_rl_step(setup.graphdef, cfg, optim.make_optimizer(cfg.optimizer), sources, world=world,
                                 **kw))
  batch = rl.host_scored_rollouts(setup.graphdef, cfg, rewards_lib.host_functions(sources), None, **kw)(state,
                                                                                                         prompts)
  assert calls == [8, 2]  # the 8 sampled rows, then the 2 demonstrations
  assert CALLBACK not in step.lower(state, batch).as_text()
  _, metrics_a = step(state, prompts)
  _, metrics_b = step(state, batch)
  for key in ("loss", "difficulty/alpha_model_min", "difficulty/alpha_model_max", "reward/words"):
    np.testing.assert_array_equal(np.asarray(jax.tree.leaves(metrics_a[key])),
                                  np.asarray(jax.tree.leaves(metrics_b[key])), err_msg=key)


def test_a_reward_functions_error_is_raised_as_it_is(world):
  cfg = rl_config(TINY, LOSSES["ppo"])
  setup, state, prompts, _ = setup_step(world, cfg, TINY)
  table = rewards_lib.PromptTable(prompts=["a", "b"])

  def broken(prompts, completions):
    raise KeyError("no such column")

  errors = rewards_lib.CallbackErrors()
  _, host = rewards_lib.text_score(broken, world.tokenizer, table, "broken", errors)
  prepare = rl.host_scored_rollouts(setup.graphdef, cfg, {rewards_lib.host_score_key("broken"): host}, None,
                                    eos_ids=(world.tokenizer.eos_id,), pad_id=world.tokenizer.pad_id)
  with pytest.raises(Exception) as raised:
    prepare(state, prompts)
  assert "no such column" in str(raised.value)
  errors.reraise_from(raised.value)  # the error the host raised itself: nothing to unwrap, nothing raised
  assert errors.error is not None
