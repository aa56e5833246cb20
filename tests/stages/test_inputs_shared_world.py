"""make_world: one read-only World per WorldConfig per process, equal in everything to a freshly built one."""

import numpy as np
import pytest

from jaxrlhf.data.synthetic import World, WorldConfig
from jaxrlhf.stages import inputs

CRITERIA_JSON = [["concise", [1.0, 1.0, 1.0, 1.0, -1.0]]]  # lists, as a config file or JSON gives them


def test_equal_configs_share_one_world_and_others_do_not():
  world = inputs.make_world({"seed": 3, "criteria": CRITERIA_JSON})
  # The same config spelled with tuples (as WorldConfig holds it) is the same world.
  assert inputs.make_world({"seed": 3, "criteria": (("concise", (1.0, 1.0, 1.0, 1.0, -1.0)),)}) is world
  assert inputs.make_world({"seed": 4, "criteria": CRITERIA_JSON}) is not world
  assert inputs.make_world({"seed": 3}) is not world


def test_the_shared_world_equals_a_freshly_built_one():
  shared = inputs.make_world({"seed": 5})
  fresh = World(WorldConfig(seed=5))
  assert shared.prompt_pool == tuple(fresh.prompt_pool) and shared.prompt_topics == tuple(fresh.prompt_topics)
  assert shared.preference_records(6, "train") == fresh.preference_records(6, "train")
  assert shared.sft_records(4, "validation") == fresh.sft_records(4, "validation")
  rng_a, rng_b = np.random.default_rng(0), np.random.default_rng(0)
  topics, lengths = np.array([0, 1, 2]), np.array([3, 5, 2])
  np.testing.assert_array_equal(shared.sample_responses(rng_a, topics, lengths, "better"),
                                fresh.sample_responses(rng_b, topics, lengths, "better"))


def test_a_stage_cannot_change_the_shared_world():
  world = inputs.make_world({"seed": 7})
  world.sample_responses(np.random.default_rng(0), np.array([0]), np.array([2]))  # fills a sampling cache
  tables = [world.spec.quality_V, world.spec.bigram_VxV, world.response_ids, world.tokenizer.topic_ids,
            world.split_prompts["train"], *world._cdf.values()]  # pylint: disable=protected-access
  for table in tables:
    with pytest.raises(ValueError, match="read-only"):
      table[..., 0] = 0
  with pytest.raises(AttributeError):
    world.prompt_pool.append((1, 2))
