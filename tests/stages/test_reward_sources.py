"""The hackable process reward of the synthetic world and its Clip / Delta returns (train.rewards), against a
per-token Python reimplementation and hand-computed returns (Gao et al. 2024, §4)."""

import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxrlhf.config import ConfigError
from jaxrlhf.data.synthetic import World, WorldConfig
from jaxrlhf.models.config import ModelConfig, RopeScaling
from jaxrlhf.stages import artifacts
from jaxrlhf.stages import reward_sources as rewards


@pytest.fixture(scope="module")
def world():
  return World(WorldConfig(seed=3))


def _sigmoid(x):
  return 1.0 / (1.0 + math.exp(-x))


def _reference_prm(world, prompt, response):
  """Per-step PRM scores of one unpadded response, token by token (independent of the vectorized code)."""
  spec = world.spec
  topics = [int(spec.topic_V[t]) for t in prompt if spec.topic_V[t] >= 0]
  topic = -1 if not topics else min(set(topics), key=lambda k: (-topics.count(k), k))
  out = []
  for t, tok in enumerate(response):
    if tok == spec.eos_id:
      break
    rel = 0.0 if spec.topic_V[tok] < 0 or topic < 0 else (1.0 if spec.topic_V[tok] == topic else -1.0)
    coh = float(spec.bigram_VxV[response[t - 1], tok]) if t > 0 else 0.0
    out.append(_sigmoid(spec.quality_weight * float(spec.quality_V[tok]) + spec.relevance_weight * rel + coh))
  return out


def _batch(world, prompts, responses, width=8):
  p_ids = np.zeros((len(prompts), max(len(p) for p in prompts)), np.int32)
  p_mask = np.zeros_like(p_ids)
  for i, p in enumerate(prompts):  # left padded
    p_ids[i, p_ids.shape[1] - len(p):] = p
    p_mask[i, p_ids.shape[1] - len(p):] = 1
  r_ids = np.full((len(responses), width), world.tokenizer.pad_id, np.int32)
  r_mask = np.zeros_like(r_ids)
  for i, r in enumerate(responses):
    r_ids[i, :len(r)] = r
    r_mask[i, :len(r)] = 1
  return dict(prompt_ids=jnp.asarray(p_ids), prompt_mask=jnp.asarray(p_mask), tokens=jnp.asarray(r_ids),
              mask=jnp.asarray(r_mask), prompt_index=jnp.zeros(len(prompts), jnp.int32))


def _rows(world):
  tok = world.tokenizer
  topic0, topic1 = list(tok.topic_ids[0]), list(tok.topic_ids[1])
  fn = list(tok.function_ids)
  prompts = [[tok.encode("explain")[0], topic0[0], topic0[1]], [tok.encode("list")[0], topic1[2]],
             [tok.encode("define")[0], topic0[3]]]
  responses = [[topic0[2], fn[0], topic0[4], topic1[1], tok.eos_id],
               [topic1[3], topic1[3], topic1[3], fn[1], topic1[3], tok.eos_id, topic1[0]],  # repeats; after eos
               [tok.eos_id]]
  return prompts, responses


def test_prm_step_scores_match_per_token_reference(world):
  prompts, responses = _rows(world)
  b = _batch(world, prompts, responses)
  scores, steps = jax.jit(rewards.prm_step_scores, static_argnums=0)(world.spec, b["prompt_ids"],
                                                                     b["prompt_mask"], b["tokens"], b["mask"])
  for i, (p, r) in enumerate(zip(prompts, responses)):
    ref = _reference_prm(world, p, r)
    np.testing.assert_array_equal(np.asarray(steps[i]), np.arange(8) < len(ref))
    np.testing.assert_allclose(np.asarray(scores[i, :len(ref)]), ref, rtol=1e-5)
    assert np.all(np.asarray(scores[i, len(ref):]) == 0)


@pytest.mark.parametrize("refinement,expected", [
    ("none", 0.3 + 0.9 + 0.2),
    ("clip", (0.3 - 0.5) + 0.0 + (0.2 - 0.5)),  # min(r - eta, 0), eta = 0.5
    ("delta", 0.3),  # (0.3 - 0.9) + (0.9 - 0.2) + 0.2 telescopes to the first step
])
def test_refined_process_return_hand_computed(refinement, expected):
  scores = jnp.asarray([[0.3, 0.9, 0.2, 0.0], [0.7, 0.0, 0.0, 0.0]])
  steps = jnp.asarray([[1, 1, 1, 0], [1, 0, 0, 0]]) > 0
  out = np.asarray(rewards.refined_process_return(scores, steps, refinement, eta=0.5))
  np.testing.assert_allclose(out[0], expected, rtol=1e-6)
  single = {"none": 0.7, "clip": 0.0, "delta": 0.7}[refinement]
  np.testing.assert_allclose(out[1], single, rtol=1e-6)


def test_refinements_bound_the_return_of_longer_responses():
  """The hack the paper describes: appending good steps raises the summed return; Clip and Delta do not."""
  rng = np.random.default_rng(0)
  base = rng.uniform(0.6, 0.95, size=(1, 4))
  longer = np.concatenate([base, np.full((1, 12), 0.9)], axis=1)
  pad = lambda x: jnp.asarray(np.pad(x, ((0, 0), (0, 16 - x.shape[1]))), jnp.float32)  # noqa: E731
  steps_short = jnp.arange(16)[None] < 4
  steps_long = jnp.arange(16)[None] < 16
  ret = lambda s, m, how: float(rewards.refined_process_return(pad(s), m, how, eta=0.5)[0])  # noqa: E731
  assert ret(longer, steps_long, "none") > ret(base, steps_short, "none") + 5
  assert ret(longer, steps_long, "clip") <= ret(base, steps_short, "clip") <= 0
  assert ret(longer, steps_long, "delta") == pytest.approx(ret(base, steps_short, "delta"))


def test_unknown_refinement_raises():
  with pytest.raises(ValueError, match="refinement"):
    rewards.refined_process_return(jnp.zeros((1, 2)), jnp.ones((1, 2), bool), "median")


def test_process_source_in_combined_rewards(world):
  prompts, responses = _rows(world)
  b = _batch(world, prompts, responses)
  specs = [rewards.RewardSourceSpec(kind="gold", name="outcome"),
           rewards.RewardSourceSpec(kind="process", name="prm", refinement="delta"),
           rewards.RewardSourceSpec(kind="process", name="raw", weight=0.0)]
  sources = rewards.build_sources(specs, world=world)
  total, per = jax.jit(lambda r: rewards.combined_rewards(sources, {}, r))(b)
  ref_first = [(_reference_prm(world, p, r) or [0.0])[0] for p, r in zip(prompts, responses)]
  ref_sum = [sum(_reference_prm(world, p, r)) for p, r in zip(prompts, responses)]
  np.testing.assert_allclose(np.asarray(per["prm"]), ref_first, rtol=1e-5)
  np.testing.assert_allclose(np.asarray(per["raw"]), ref_sum, rtol=1e-5)
  gold = world.gold_reward(b["prompt_ids"], b["prompt_mask"], b["tokens"], b["mask"])
  np.testing.assert_allclose(np.asarray(total), np.asarray(gold) + np.asarray(ref_first), rtol=1e-5)


def test_step_bias_raises_the_biased_words_steps_only(world):
  """The PRM flaw of `options.step_bias`: a step that is the word gets the bonus on its logit, hand-computed from
  the unbiased reference; other steps, and the sources' returns built from them, follow."""
  prompts, responses = _rows(world)
  tok = world.tokenizer
  word = "the"
  responses = [r[:1] + [tok.ids[word]] + r[1:] for r in responses[:2]] + responses[2:]
  b = _batch(world, prompts, responses, width=9)
  bias = rewards.process_step_bias({"step_bias": {word: 2.0}}, tok, "rewards[0].options")
  assert bias == ((tok.ids[word], 2.0),)
  scores, _ = rewards.prm_step_scores(world.spec, b["prompt_ids"], b["prompt_mask"], b["tokens"], b["mask"], bias)
  logit = lambda s: math.log(s / (1.0 - s))  # noqa: E731
  for i, (p, r) in enumerate(zip(prompts, responses)):
    ref = [_sigmoid(logit(s) + (2.0 if r[t] == tok.ids[word] else 0.0))
           for t, s in enumerate(_reference_prm(world, p, r))]
    np.testing.assert_allclose(np.asarray(scores[i, :len(ref)]), ref, rtol=1e-5)
  assert float(scores[0, 1]) > 0.85  # the inserted word is now a step the PRM is confident in
  specs = [rewards.RewardSourceSpec(kind="process", name="biased", options={"step_bias": {word: 2.0}}),
           rewards.RewardSourceSpec(kind="process", name="plain")]
  _, per = rewards.combined_rewards(rewards.build_sources(specs, world=world), {}, b)
  ref_sum = [sum(_sigmoid(logit(s) + (2.0 if r[t] == tok.ids[word] else 0.0))
                 for t, s in enumerate(_reference_prm(world, p, r))) for p, r in zip(prompts, responses)]
  np.testing.assert_allclose(np.asarray(per["biased"]), ref_sum, rtol=1e-5)
  assert np.all(np.asarray(per["biased"])[:2] > np.asarray(per["plain"])[:2])


@pytest.mark.parametrize("options,match", [
    ({"step_bias": {"the": float("inf")}}, "options.step_bias: expected"),
    ({"step_bias": [["the", 1.0]]}, "options.step_bias: expected"),
    ({"bias": {"the": 1.0}}, "options.bias: unknown option of kind 'process'"),
])
def test_step_bias_bad_options_name_the_key(options, match):
  from jaxrlhf.config import ConfigError  # pylint: disable=g-import-not-at-top
  with pytest.raises(ConfigError, match=match):
    rewards.RewardSourceSpec(kind="process", options=options).validate("rl.rewards[1]")


def test_step_bias_word_outside_the_vocabulary_is_refused(world):
  from jaxrlhf.config import ConfigError  # pylint: disable=g-import-not-at-top
  with pytest.raises(ConfigError, match=r"rewards\[0\].options.step_bias: 'zebra' is not a token"):
    rewards.build_sources([rewards.RewardSourceSpec(kind="process", options={"step_bias": {"zebra": 1.0}})],
                          world=world)


def test_word_share_counts_the_word_among_scored_tokens(world):
  """Hand-counted: "the" inserted once into rows 0 and 1 (5 and 6 scored tokens before the first end token; row 0
  already holds it as its function word, fn[0]; the token after row 1's end is not scored), none in the empty row."""
  prompts, responses = _rows(world)
  the = world.tokenizer.ids["the"]
  assert world.tokenizer.function_ids[0] == the and the not in responses[1]
  responses = [r[:1] + [the] + r[1:] for r in responses[:2]] + responses[2:]
  responses[1] = responses[1] + [the]  # after the end token: not a scored token
  b = _batch(world, prompts, responses, width=9)
  spec = rewards.RewardSourceSpec(kind="word_share", name="the_share", options={"word": "the"}, weight=0.0)
  _, per = rewards.combined_rewards(rewards.build_sources([spec], world=world), {}, b)
  np.testing.assert_allclose(np.asarray(per["the_share"]), [2 / 5, 1 / 6, 0.0], rtol=1e-6)


def test_word_share_options_name_the_key(world):
  from jaxrlhf.config import ConfigError  # pylint: disable=g-import-not-at-top
  with pytest.raises(ConfigError, match=r"rl.rewards\[2\].options: kind 'word_share' takes exactly the option"):
    rewards.RewardSourceSpec(kind="word_share", options={"words": "the"}).validate("rl.rewards[2]")
  with pytest.raises(ConfigError, match=r"rewards\[0\].options.word: 'zebra' is not a token"):
    rewards.build_sources([rewards.RewardSourceSpec(kind="word_share", options={"word": "zebra"})], world=world)


def test_world_sources_refuse_options():
  from jaxrlhf.config import ConfigError  # pylint: disable=g-import-not-at-top
  with pytest.raises(ConfigError, match=r"rl.rewards\[0\].options: kind 'gold' takes no options"):
    rewards.RewardSourceSpec(kind="gold", options={"x": 1}).validate("rl.rewards[0]")


def test_process_source_needs_the_world():
  with pytest.raises(ValueError, match="process"):
    rewards.build_sources([rewards.RewardSourceSpec(kind="process")])


def test_repetition_rate_counts_repeated_content_tokens(world):
  prompts, responses = _rows(world)
  b = _batch(world, prompts[1:2], responses[1:2])
  # a a a f a <eos> b: a at t = 1, 2 and 4 has an `a` among the previous 3 scored tokens; f is a function word
  # (exempt); b comes after <eos> (unscored) -> 3 repeats out of 5 scored tokens.
  assert float(rewards.repetition_rate(world, b)) == pytest.approx(3 / 5)


def test_model_config_from_dict_round_trips():
  config = ModelConfig(vocab_size=50, embed_dim=16, num_layers=1, num_heads=2, num_kv_heads=1, head_dim=8,
                       mlp_dim=32, rope_scaling=RopeScaling(rope_type="linear", factor=2.0), eos_token_id=(1, 2))
  d = dataclasses.asdict(config)
  d["eos_token_id"] = list(d["eos_token_id"])  # as json writes it
  assert artifacts.model_config_from_dict(d) == config


# ------------------------------------------------------------------------------------------------ per-kind fields
@pytest.mark.parametrize("kind,key,value", [
    ("gold", "aggregation", "min"), ("gold", "lam", 3.0), ("process", "aggregation", "min"),
    ("exact_match", "lam", 0.5), ("gold", "refinement", "clip"), ("gold", "eta", 0.9),
    ("reward_model", "refinement", "delta"), ("reward_model", "eta", 0.1), ("bleuberi", "smoothing", "add1"),
    ("reward_model", "smoothing", "none"), ("exact_match", "function", "m:f"), ("reward_model", "function", "m:f")])
def test_fields_of_another_kind_are_refused(kind, key, value):
  # A field the kind never reads would change nothing: refused naming the key, the kind and the kinds that read it.
  base = {"reward_model": "stage:rm"} if kind in rewards.RM_KINDS else {}
  base.update({"options": {"column": "answer"}} if kind == "exact_match" else {})
  base.update({"options": {"column": "references"}} if kind == "bleuberi" else {})
  rewards.RewardSourceSpec(kind=kind, **base).validate("config.rl.rewards[1]")  # valid without it
  spec = rewards.RewardSourceSpec(kind=kind, **base, **{key: value})
  with pytest.raises(ConfigError, match=rf"^config\.rl\.rewards\[1\]\.{key}: .* not used by kind '{kind}'"):
    spec.validate("config.rl.rewards[1]")


@pytest.mark.parametrize("kind,fields", [
    ("reward_model", {"aggregation": "mean_minus_std", "lam": 0.5, "reward_model": "stage:rm"}),
    ("process", {"refinement": "clip", "eta": 0.3}),
    ("bleu", {"smoothing": "add1"}),
    ("python", {"function": "math:fsum"})])
def test_fields_of_their_own_kind_are_accepted(kind, fields):
  rewards.RewardSourceSpec(kind=kind, **fields).validate("config.rl.rewards[0]")
