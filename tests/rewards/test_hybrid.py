"""Beyond Monolithic Rewards' hybrid reward (our stated rule, `jaxrlhf.rewards.hybrid`): the confidence mix against
hand-computed values and its limits (confidence 1 overrides the model, 0 ignores the rule, rows no rule applies to
keep the model), numpy = jitted jax.numpy, the rules' checks, and a "hybrid" reward source inside a jitted
combined reward with a model and text rules on decoded world completions."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxrlhf.config import ConfigError
from jaxrlhf.data.synthetic import World, WorldConfig
from jaxrlhf.rewards import hybrid
from jaxrlhf.stages import reward_sources as rewards

NAN = float("nan")


def test_confidence_mix_hand_computed():
  model = np.array([2.0, 2.0, 2.0, -1.0])
  rules = np.array([[1.0, NAN, 0.0, 1.0],     # c = 0.5
                    [-1.0, -1.0, NAN, NAN]])  # c = 0.25
  c = np.array([0.5, 0.25])
  # Row 0: both apply: (1 - 0.75) 2 + 0.5 * 1 + 0.25 * -1 = 0.75. Row 1: rule 1 only: 0.75 * 2 - 0.25 = 1.25.
  # Row 2: rule 0 only: 0.5 * 2 + 0.5 * 0 = 1.0. Row 3: rule 0 only: 0.5 * -1 + 0.5 * 1 = 0.0.
  expected = [0.75, 1.25, 1.0, 0.0]
  np.testing.assert_allclose(hybrid.confidence_mix(model, rules, c), expected)
  mixed = jax.jit(lambda m, r: hybrid.confidence_mix(m, r, jnp.asarray(c, jnp.float32), xp=jnp))(
      jnp.asarray(model, jnp.float32), jnp.asarray(rules, jnp.float32))
  np.testing.assert_allclose(np.asarray(mixed), expected, rtol=1e-6)


def test_confidence_limits():
  model, rule = np.array([3.0, 3.0]), np.array([[0.0, NAN]])
  np.testing.assert_allclose(hybrid.confidence_mix(model, rule, np.array([1.0])), [0.0, 3.0])  # Override / keep.
  np.testing.assert_allclose(hybrid.confidence_mix(model, rule, np.array([0.0])), [3.0, 3.0])  # Ignored.


def test_check_rules_names_the_bad_key():
  ok = hybrid.check_rules([{"kind": "regex_format", "options": {"pattern": "x"}, "confidence": 1}])
  assert ok == [{"kind": "regex_format", "options": {"pattern": "x"}, "confidence": 1.0}]
  with pytest.raises(ValueError, match=r"rules\[1\].confidence: expected a number in \[0, 1\]"):
    hybrid.check_rules([{"kind": "a", "confidence": 0.5}, {"kind": "b", "confidence": 1.5}])
  with pytest.raises(ValueError, match="sum to 1.2 > 1"):
    hybrid.check_rules([{"kind": "a", "confidence": 0.6}, {"kind": "b", "confidence": 0.6}])
  with pytest.raises(ValueError, match=r"rules\[0\]: expected keys"):
    hybrid.check_rules([{"kind": "a", "weight": 0.5}])
  with pytest.raises(ValueError, match="non-empty list"):
    hybrid.check_rules({"kind": "a", "confidence": 0.5})


def test_hybrid_spec_validation():
  spec = rewards.RewardSourceSpec(kind="hybrid", reward_model="rm", options={"rules": [
      {"kind": "generalized_length_penalty", "options": {"max_length": 3}, "confidence": 0.5},
      {"kind": "instruction_adherence", "options": {"aspects": ["color"]}, "confidence": 0.2}]})
  with pytest.raises(ConfigError, match=r"rewards\[0\].options.rules\[1\].options: instruction_adherence.aspects"):
    spec.validate("rewards[0]")
  with pytest.raises(ConfigError, match=r"rewards\[0\].reward_model: required for kind 'hybrid'"):
    rewards.RewardSourceSpec(kind="hybrid", options={"rules": []}).validate("rewards[0]")
  with pytest.raises(ConfigError, match="takes exactly the option 'rules'"):
    rewards.RewardSourceSpec(kind="hybrid", reward_model="rm", options={"rule": []}).validate("rewards[0]")


def test_hybrid_source_in_the_jitted_combined_reward():
  world = World(WorldConfig(seed=3))
  tok = world.tokenizer
  content = list(tok.topic_ids[0])[:6]
  words = [tok.decode([t]).strip() for t in content]
  responses = [content[:2], content[:5], content[:4]]  # 2, 5 and 4 words before the end token.
  width = 6
  r_ids = np.full((3, width), tok.pad_id, np.int32)
  r_mask = np.zeros_like(r_ids)
  for i, r in enumerate(responses):
    r_ids[i, :len(r) + 1] = r + [tok.eos_id]
    r_mask[i, :len(r) + 1] = 1
  rollout = dict(prompt_ids=jnp.ones((3, 2), jnp.int32), prompt_mask=jnp.ones((3, 2), jnp.int32),
                 tokens=jnp.asarray(r_ids), mask=jnp.asarray(r_mask), prompt_index=jnp.asarray([0, 1, 2], jnp.int32))
  table = rewards.PromptTable(["a", "b", "c"], {"keywords": [[words[4]], None, [words[3]]]})
  specs = [rewards.RewardSourceSpec(kind="hybrid", name="hybrid", reward_model="rm", weight=2.0, options={"rules": [
      {"kind": "generalized_length_penalty", "options": {"max_length": 4, "relative": False}, "confidence": 0.5},
      {"kind": "instruction_adherence", "options": {"aspects": ["keywords"]}, "confidence": 0.25}]}),
           rewards.RewardSourceSpec(kind="reward_model", name="model", reward_model="rm", weight=0.0)]
  sources = rewards.build_sources(specs, tokenizer=tok, table=table)
  # A stand-in reward model: 0.5 per unpadded token of [prompt | response] (2 prompt tokens + response + end).
  models = {"rm_0": lambda ids, mask: 0.5 * jnp.sum(mask, axis=1).astype(jnp.float32), "rm_1": None}
  models["rm_1"] = models["rm_0"]
  total, per = jax.jit(lambda r: rewards.combined_rewards(sources, models, r))(rollout)
  model = np.array([2.5, 4.0, 3.5])
  # Length rule (always applies): 0, -(5 - 4) = -1, 0. Keyword rule: row 0 lacks the word -> 0; row 1 no constraint
  # (does not apply); row 2 has it -> 1.
  expected = [0.25 * 2.5 + 0.5 * 0 + 0.25 * 0, 0.5 * 4.0 + 0.5 * -1, 0.25 * 3.5 + 0.5 * 0 + 0.25 * 1]
  np.testing.assert_allclose(np.asarray(per["model"]), model)
  np.testing.assert_allclose(np.asarray(per["hybrid"]), expected, rtol=1e-6)
  np.testing.assert_allclose(np.asarray(total), 2.0 * np.asarray(expected), rtol=1e-6)
  assert math.isclose(expected[1], 1.5)
