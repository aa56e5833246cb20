"""jaxrlhf.data.transforms.goal_format_records: random-goal SFT prompts rendered exactly like reward-augmented
pairs, a pure function of the seed (`data.goal_fraction` of the sft stage, configs/papers/reward_augmented_dpo.py)."""

import collections

import numpy as np
import pytest

from jaxrlhf.data import transforms
from jaxrlhf.data.synthetic import SFTRecord, WorldTokenizer


def _records(n):
  return [SFTRecord(prompt=f"explain bala {i % 3}", response="the bala", source=f"s{i}") for i in range(n)]


def test_fraction_goals_and_rendering():
  recs = _records(4000)
  out = transforms.goal_format_records(recs, 0.5, seed=3)
  assert [r.response for r in out] == [r.response for r in recs]
  assert [r.source for r in out] == [r.source for r in recs]
  with_goal = [(r, o) for r, o in zip(recs, out) if not isinstance(o.prompt, str)]
  assert abs(len(with_goal) / len(recs) - 0.5) < 0.03  # Binomial(4000, 0.5): 4 sigma = 0.032.
  goals = collections.Counter()
  for r, o in with_goal:
    # Rendered by the same function as the reward-augmented pairs' prompts.
    score = float(o.prompt[0]["content"].split()[-1])
    assert o.prompt == transforms.goal_conditioned_prompt(r.prompt, score)
    goals[score] += 1
  assert set(goals) == set(float(s) for s in range(1, 11))
  assert max(goals.values()) / min(goals.values()) < 1.5  # Uniform over 1..10 (~200 each).
  unchanged = [(r, o) for r, o in zip(recs, out) if isinstance(o.prompt, str)]
  assert all(r == o for r, o in unchanged)


def test_goal_is_independent_of_the_response_and_deterministic():
  recs = [SFTRecord(prompt="explain bala", response="the" if i % 2 else "bala", source=None) for i in range(3000)]
  out = transforms.goal_format_records(recs, 1.0, seed=0)
  mean_goal = {resp: np.mean([float(o.prompt[0]["content"].split()[-1]) for o in out if o.response == resp])
               for resp in ("the", "bala")}
  assert abs(mean_goal["the"] - mean_goal["bala"]) < 0.35  # Both ~5.5 (std of a mean of 1500 draws ~0.07).
  assert transforms.goal_format_records(recs, 1.0, seed=0) == out
  assert transforms.goal_format_records(recs, 1.0, seed=1) != out
  assert transforms.goal_format_records(recs, 0.0, seed=0) == recs


def test_world_tokenizer_spells_the_goal_prompt_and_bad_input_raises():
  tok = WorldTokenizer()
  out = transforms.goal_format_records(_records(1), 1.0, seed=0, scores=(7,))
  text = tok.apply_chat_template(out[0].prompt, add_generation_prompt=True)
  assert text == "<system> score: 7 <user> explain bala 0 <assistant>"
  with pytest.raises(ValueError, match="fraction"):
    transforms.goal_format_records(_records(2), 1.5, seed=0)
  with pytest.raises(ValueError, match="scores"):
    transforms.goal_format_records(_records(2), 0.5, seed=0, scores=())


def test_sft_data_option_goal_fraction():
  """inputs.sft_records with data.goal_fraction: the world's SFT records, goal-formatted with the stage seed
  (held-out with seed + 1); 0 leaves them plain."""
  from jaxrlhf.stages import inputs
  data = inputs.DataSpec(num_train=64, num_eval=16, goal_fraction=0.5)
  world = inputs.make_world(data.world)
  train, held_out, _ = inputs.sft_records(data, world, world.tokenizer, seed=7)
  plain_train, plain_eval, _ = inputs.sft_records(inputs.DataSpec(num_train=64, num_eval=16), world)
  assert all(isinstance(r.prompt, str) for r in plain_train + plain_eval)
  assert train == transforms.goal_format_records(plain_train, 0.5, 7, supports_system_role=True)
  assert held_out == transforms.goal_format_records(plain_eval, 0.5, 8, supports_system_role=True)
  assert 0 < sum(not isinstance(r.prompt, str) for r in train) < 64


def test_score_ties_report_and_config_rule():
  """The stage's data report counts the tied pairs a transform kept or dropped; ties without a transform fail."""
  from jaxrlhf.config import ConfigError, from_config
  from jaxrlhf.stages import inputs as inputs_lib
  from jaxrlhf.data.synthetic import World, WorldConfig

  world = World(WorldConfig(seed=0))
  records = world.preference_records(64, "train")
  tied = sum(r.chosen_score == r.rejected_score for r in records)
  assert 0 < tied < 64
  for transform, ties, rows in (("reward_augmented", "keep", 128), ("reward_augmented", "drop", 2 * (64 - tied)),
                                ("score_ordered", "keep", 64), ("score_ordered", "drop", 64 - tied)):
    data = from_config(dict(transform=transform, score_ties=ties), inputs_lib.DataSpec, path="config.data")
    out = inputs_lib.transform_pairs(records, data, world.tokenizer)
    report = inputs_lib.transform_report(records, out, data, "train")
    assert (len(out), report["tied"], report["rows_out"], report["ties"]) == (rows, tied, rows, ties)
    if transform == "score_ordered":
      assert all(r.chosen_score >= r.rejected_score for r in out)
  with pytest.raises(ConfigError, match=r"config.data.score_ties: 'drop' applies to a transform"):
    from_config(dict(score_ties="drop"), inputs_lib.DataSpec, path="config.data")
