"""The synthetic world's criteria (context-aware preference modeling, Pitis et al. 2024, arXiv:2407.14916):
defaults unchanged, labels that follow the stated criterion's weights, and the same pairs with the context shown
or hidden."""

import hashlib
import json
import math

import numpy as np
import pytest

from jaxrlhf.data.synthetic import World, WorldConfig, WorldTokenizer

CRITERIA = (("concise", (1.0, 1.0, 1.0, 1.0, -1.0)), ("topical", (0.2, 4.0, 0.2, 0.2, 0.2)))
# sha256 of outputs computed with the code BEFORE criteria existed (commit a668565): any change to the default
# world's vocabulary, pairs, SFT samples, k-way records or prompts changes them. The k-way part was redrawn when
# kway_records became prefix-stable (it drew num * k responses, so record i depended on num): these are the digests
# the code before that fix gives with kway_records(1024, "train", k=3)[:20] (a whole chunk, as drawn now) as the
# k-way part; with kway_records(20, ...) it gave the digests of a668565 (7b34e068..., 46a05ee2...).
DEFAULT_DIGEST = "dfbf65013ceebd5febcd314e68cfb2df5ba934f76f2e3f6f8440dda179d03dd3"
GROUPS_DIGEST = "e46a732a352ea301100c2cba461a77093ba50ae143b9084ba1038b9335c947a3"
GROUPS = dict(seed=3, num_topics=5, annotators=(("a", (1.0, 0.0, 2.0, 1.0, -1.0)), ("b", (1.0,) * 5)))


def _repr(record) -> str:
  # Records gained `tools` and `chat_template_kwargs` fields after the digests were taken; the world sets neither.
  return repr(record).replace(", tools=None", "").replace(", chat_template_kwargs=None", "")


def _digest(world: World, vocab: bool = True) -> str:
  h = hashlib.sha256()
  if vocab:
    h.update(json.dumps(world.tokenizer.vocab).encode())
  for r in world.preference_records(1100, "train") + world.preference_records(50, "test"):
    h.update(_repr(r).encode())
  for r in world.sft_records(40, "validation", contrastive=True):
    h.update(_repr(r).encode())
  for r in world.kway_records(20, "train", k=3):
    h.update(_repr(r).encode())
  h.update(np.asarray(world.prompt_arrays(30, "train")[0]).tobytes())
  return h.hexdigest()


@pytest.fixture(scope="module")
def world():
  return World(WorldConfig(criteria=CRITERIA))


def test_defaults_leave_every_output_and_the_vocabulary_unchanged():
  assert WorldConfig().criteria == ()
  assert World(WorldConfig()).tokenizer.vocab_size == 105 and WorldTokenizer().extra_ids.size == 0
  assert _digest(World(WorldConfig())) == DEFAULT_DIGEST
  assert _digest(World(WorldConfig(**GROUPS))) == GROUPS_DIGEST


def test_criteria_only_append_their_names_and_keep_the_general_world(world):
  plain = World(WorldConfig())
  assert world.tokenizer.vocab == plain.tokenizer.vocab + ("concise", "topical")
  assert world.tokenizer.extra_ids.tolist() == [105, 106]
  # Same reference distribution, gold and general pairs: the criterion words draw nothing from the world's tables.
  assert _digest(world, vocab=False) == _digest(plain, vocab=False)
  assert np.isinf(world._logits[..., world.tokenizer.extra_ids]).all()  # never emitted
  g = world.gold_of_texts(["explain bala", "<system> concise <user> explain bala"], ["bala the bela"] * 2)
  assert g[0] == g[1]  # the gold reward ignores the stated criterion


def test_labels_follow_the_stated_criterion():
  one_hot = (("quality_only", (1.0, 0.0, 0.0, 0.0, 0.0)), ("length_only", (0.0, 0.0, 0.0, 0.0, 1.0)))
  world = World(WorldConfig(seed=2, criteria=one_hot, temperature=1e-6, flip_rate=0.0))
  recs = world.criterion_records(400, "train")
  assert {r.annotator for r in recs} == {"quality_only", "length_only"}
  for r in recs:
    k = 0 if r.annotator == "quality_only" else 4
    assert r.chosen_attributes[k] >= r.rejected_attributes[k] - 1e-6


def test_bradley_terry_rate_under_the_criterion(world):
  """P(label = criterion's gold preference) = E[sigmoid(|w_c . d| / T)] (1 - f) + (1 - E[...]) f, with the
  expectation computed here from the components and the criteria's weights (not the world's utility_diff)."""
  c = world.config
  pairs = world.criterion_pairs(6000, "train")
  weights = np.asarray([w for _, w in CRITERIA])[pairs["criterion"]]
  u = ((pairs["comps_a"] - pairs["comps_b"]) * weights).sum(1)
  p_agree = np.mean(1.0 / (1.0 + np.exp(-np.abs(u) / c.temperature)))
  expected = p_agree * (1 - c.flip_rate) + (1 - p_agree) * c.flip_rate
  observed = np.mean(pairs["a_wins"] == (u > 0))
  assert abs(observed - expected) < 4 * math.sqrt(expected * (1 - expected) / len(u))
  assert abs(np.mean(pairs["criterion"] == 0) - 0.5) < 0.03  # criteria drawn uniformly


def test_records_carry_the_criterion_and_reversals(world):
  for labels in ("sampled", "oracle"):
    recs = world.criterion_records(500, "validation", labels=labels)
    weights = dict(CRITERIA)
    d = [np.subtract(r.chosen_attributes, r.rejected_attributes) for r in recs]
    u = np.asarray([np.dot(weights[r.annotator], di) for r, di in zip(recs, d)])
    gold = np.asarray([di.sum() for di in d])
    assert [r.subset for r in recs] == ["reversal" if x < 0 else "agreement" for x in u * gold]
    if labels == "oracle":
      assert (u >= 0).all()  # chosen is the criterion's gold preference
    else:
      assert 0.6 < np.mean(u > 0) < 0.95
    assert all(r.chosen_score is None and r.prompt.startswith(f"<system> {r.annotator} <user> ") for r in recs)
  assert 0.2 < np.mean([r.subset == "reversal" for r in recs]) < 0.5


def test_shown_and_hidden_are_the_same_pairs(world):
  shown = world.criterion_records(300, "train", shown=True)
  hidden = world.criterion_records(300, "train", shown=False)
  tok = world.tokenizer
  for s, h in zip(shown, hidden):
    assert (s.chosen, s.rejected, s.annotator, s.subset) == (h.chosen, h.rejected, h.annotator, h.subset)
    assert s.prompt == f"<system> {s.annotator} <user> {h.prompt}"
    messages = [{"role": "system", "content": s.annotator}, {"role": "user", "content": h.prompt}]
    assert s.prompt == tok.apply_chat_template(messages)  # the chat template's system turn
    assert world.gold_of_record(s) == world.gold_of_record(h)
  assert not any(w in r.prompt.split() for r in hidden for w in ("concise", "topical", "<system>"))
  # Prefix-stable and a stream of its own.
  assert world.criterion_records(100, "train") == shown[:100]
  assert world.criterion_records(1500, "train")[:300] == shown


def test_bad_criteria_and_missing_criteria_fail():
  for bad in ((("the", (1.0,) * 5),), (("<system>", (1.0,) * 5),), (("two words", (1.0,) * 5),),
              (("a1", (1.0,) * 4),), (("x", (1.0,) * 5), ("x", (0.0,) * 5)), (("x", (float("nan"),) * 5),)):
    with pytest.raises(ValueError, match="WorldConfig.criteria"):
      WorldConfig(criteria=bad)
  with pytest.raises(ValueError, match="WorldConfig.criteria is empty"):
    World(WorldConfig()).criterion_pairs(4, "train")
  world = World(WorldConfig(criteria=CRITERIA))
  with pytest.raises(ValueError, match="criterion must be one of"):
    world.criterion_prompt_text(0, "the")
  with pytest.raises(ValueError, match="labels must be one of"):
    world.criterion_records(4, "train", labels="gold")
  with pytest.raises(ValueError, match="shown must be a bool"):
    world.criterion_records(4, "train", shown="hidden")  # once truthy: shown
  with pytest.raises(ValueError, match="extra_words"):
    WorldTokenizer(extra_words=("bala",))
