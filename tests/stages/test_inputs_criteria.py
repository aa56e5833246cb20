"""DataSpec.criteria: the world's criterion pairs added to training and held out, with the criterion shown or
hidden (context-aware preference modeling, Pitis et al. 2024, arXiv:2407.14916), and its config validation."""

import pytest

from jaxrlhf.config import ConfigError
from jaxrlhf.stages import inputs

CRITERIA = [["concise", [1.0, 1.0, 1.0, 1.0, -1.0]], ["topical", [0.2, 4.0, 0.2, 0.2, 0.2]]]  # as JSON gives them
WORLD = dict(criteria=CRITERIA)


def test_default_data_is_unchanged_by_configured_criteria():
  world = inputs.make_world(WORLD)
  plain = inputs.make_world({})
  assert world.config.criteria == (("concise", (1.0, 1.0, 1.0, 1.0, -1.0)), ("topical", (0.2, 4.0, 0.2, 0.2, 0.2)))
  data = inputs.DataSpec(world=WORLD, num_train=12, num_eval=5)
  assert inputs.preference_records(data, world) == inputs.preference_records(inputs.DataSpec(num_train=12, num_eval=5),
                                                                             plain)


@pytest.mark.parametrize("rendering", ["shown", "hidden"])
def test_criteria_add_training_pairs_and_hold_out_criterion_pairs(rendering):
  world = inputs.make_world(WORLD)
  shown = rendering == "shown"
  data = inputs.DataSpec(world=WORLD, num_train=12, num_eval=5, criteria=rendering, num_criteria_train=7)
  train, held_out, report = inputs.preference_records(data, world)
  assert train == world.preference_records(12, "train") + world.criterion_records(7, "train", shown=shown)
  assert held_out == world.criterion_records(5, "validation", shown=shown)
  assert all(r.prompt.startswith("<system>") == shown for r in train[12:] + held_out)
  assert report["criteria"] == {"rendering": rendering, "train_pairs": 7, "held_out_labels": "sampled"}
  oracle = inputs.DataSpec(world=WORLD, num_eval=5, criteria=rendering, criteria_labels="oracle")
  assert inputs.preference_records(oracle, world)[1] == world.criterion_records(5, "validation", shown=shown,
                                                                                labels="oracle")


def test_bad_criteria_options_name_the_key():
  with pytest.raises(ConfigError, match=r"data\.criteria: 'shown' needs source='world' with data\.world\.criteria"):
    inputs.DataSpec(criteria="shown").validate("data")
  with pytest.raises(ConfigError, match=r"data\.num_criteria_train: only used with data\.criteria"):
    inputs.DataSpec(world=WORLD, num_criteria_train=3).validate("data")
  with pytest.raises(ConfigError, match=r"data\.criteria_labels: only used with"):
    inputs.DataSpec(world=WORLD, criteria_labels="oracle").validate("data")
  inputs.DataSpec(world=WORLD, criteria="hidden", num_criteria_train=3, criteria_labels="oracle").validate("data")
