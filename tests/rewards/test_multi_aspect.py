"""Beyond Monolithic Rewards' multi-aspect rewards (our stated definitions, `jaxrlhf.rewards.multi_aspect`): each
instruction-adherence aspect on hand-made texts, the mean / all aggregates and "no constraint" rows, and the
generalized length penalty against hand-computed values, its reduction to `shaping.length_penalty`, per-row bounds
from columns, and both kinds by name in a weighted sum."""

import math

import pytest

from jaxrlhf.config import ConfigError
from jaxrlhf.rewards import kinds, multi_aspect, shaping
from jaxrlhf.rewards.calling import call_reward_function

TEXT = "The river was calm. A stone bridge crossed it! Was it old?"  # 12 words, 3 sentences.


@pytest.mark.parametrize("aspect, value, expected", [
    ("min_words", 12, True), ("min_words", 13, False), ("max_words", 12, True), ("max_words", 11, False),
    ("min_sentences", 3, True), ("max_sentences", 2, False), ("max_sentences", 3, True),
    ("keywords", ["RIVER", "bridge"], True), ("keywords", ["river", "brid"], False),  # whole words only
    ("forbidden_words", ["boat"], True), ("forbidden_words", ["Stone"], False),
    ("case", "lower", False), ("case", "upper", False),
    ("end_phrase", "Was it old?", True), ("end_phrase", "old.", False),
    ("json", True, False),
])
def test_each_aspect_on_a_hand_made_text(aspect, value, expected):
  assert multi_aspect.aspect_satisfied(aspect, TEXT, value) is expected


def test_form_aspects():
  bullets = "intro\n- one\n  * two\n-three\n- four"  # "-three" has no space after the dash: not a bullet.
  assert multi_aspect.aspect_satisfied("num_bullets", bullets, 3)
  assert not multi_aspect.aspect_satisfied("num_bullets", bullets, 4)
  assert multi_aspect.aspect_satisfied("case", "all lower, 42!", "lower")
  assert multi_aspect.aspect_satisfied("case", "ALL UPPER, 42!", "upper")
  assert multi_aspect.aspect_satisfied("json", ' {"a": [1, 2]}\n', True)
  assert multi_aspect.count_sentences("No end mark") == 1 and multi_aspect.count_sentences("...") == 0


def test_adherence_mean_all_and_unscorable_rows():
  fn = kinds.make_reward("instruction_adherence", {})
  strict = kinds.make_reward("instruction_adherence", {"aggregate": "all"})
  columns = {"min_words": [5, None, None], "max_words": [8, None, None], "keywords": [["river"], None, []],
             "case": ["lower", None, "lower"]}
  texts = ["the river is wide and cold today", "anything", "Not Lower"]
  # Row 0: 7 words in [5, 8] (2 aspects met), "river" present, all lowercase -> 4 / 4.
  # Row 1: no constraint -> None (NaN). Row 2: only "case" (empty keyword list = absent), violated -> 0.
  out = call_reward_function(fn, ["p"] * 3, texts, columns)
  assert out[0] == 1.0 and math.isnan(out[1]) and out[2] == 0.0
  out = call_reward_function(fn, ["p"], ["The river is wide"], {k: v[:1] for k, v in columns.items()})
  assert out[0] == pytest.approx(2 / 4)  # 4 words: min 5 missed, max 8 met; keyword met; uppercase "T" missed.
  out = call_reward_function(strict, ["p"] * 3, ["the river runs fast and far", "x", "y"], columns)
  assert out[0] == 1.0 and math.isnan(out[1]) and out[2] == 1.0
  only_case = kinds.make_reward("instruction_adherence", {"aspects": ["case"]})
  assert call_reward_function(only_case, ["p"], ["The river"], {k: v[:1] for k, v in columns.items()})[0] == 0.0


@pytest.mark.parametrize("options, length, expected", [
    # Inside the band: 0.
    (dict(min_length=4, max_length=8), 6, 0.0),
    # Relative (default): 12 words over max 8 -> d = 4 / 8 = 0.5; alpha 2 -> -1.0.
    (dict(min_length=4, max_length=8, alpha=2.0), 12, -1.0),
    # Short side: 1 word under min 4 -> d = 3 / 4; power 2 -> -(0.75 ** 2) = -0.5625.
    (dict(min_length=4, max_length=8, power=2.0), 1, -0.5625),
    # Cap: d = (40 - 8) / 8 = 4 -> capped at 1.5.
    (dict(min_length=4, max_length=8, cap=1.5), 40, -1.5),
    # Absolute units: 12 - 8 = 4 words, alpha 0.25 -> -1.0.
    (dict(min_length=4, max_length=8, alpha=0.25, relative=False), 12, -1.0),
])
def test_generalized_length_penalty_hand_computed(options, length, expected):
  fn = kinds.make_reward("generalized_length_penalty", options)
  assert fn(["p"], [" ".join(["w"] * length)])[0] == pytest.approx(expected)


def test_generalized_length_penalty_reduces_to_length_penalty_and_reads_columns():
  texts = ["a" * n for n in (0, 5, 9, 30)]
  general = multi_aspect.generalized_length_penalty(max_length=9, alpha=0.5, relative=False, unit="chars")
  assert general(["p"] * 4, texts) == shaping.length_penalty(9, alpha=0.5)(["p"] * 4, texts)
  per_row = multi_aspect.generalized_length_penalty(min_length=1, max_length=100, min_column="min_words",
                                                    max_column="max_words")
  columns = {"min_words": [None, 4, 2], "max_words": [None, 6, 2]}
  texts = ["one two three", "one two", "one two three"]
  # Row 0: defaults [1, 100] -> 0. Row 1: 2 < 4 -> d = 2/4. Row 2: 3 > 2 -> d = 1/2.
  assert call_reward_function(per_row, ["p"] * 3, texts, columns).tolist() == [0.0, -0.5, -0.5]
  tokens = multi_aspect.generalized_length_penalty(max_length=2, unit="tokens")
  assert tokens(["p"], ["ignored"], completion_ids=[[5, 6, 7, 8]]) == [-1.0]


def test_kinds_compose_in_a_weighted_sum():
  fn = kinds.make_reward("weighted_sum", {"terms": [
      {"kind": "instruction_adherence", "weight": 2.0},
      {"kind": "generalized_length_penalty", "options": {"max_length": 2}, "weight": 0.5}]})
  # Adherence 1.0 (keyword met); length 4 words over 2 -> d = 1 -> -1. Total 2 * 1 + 0.5 * -1 = 1.5.
  assert call_reward_function(fn, ["p"], ["a river runs here"], {"keywords": [["river"]]})[0] == 1.5


def test_bad_options_and_columns_name_the_key():
  with pytest.raises(ConfigError, match=r"reward.options: instruction_adherence.aspects"):
    kinds.make_reward("instruction_adherence", {"aspects": ["colour"]})
  with pytest.raises(ConfigError, match="aggregate"):
    kinds.make_reward("instruction_adherence", {"aggregate": "median"})
  with pytest.raises(ConfigError, match="min_length 5 > max_length 2"):
    kinds.make_reward("generalized_length_penalty", {"min_length": 5, "max_length": 2})
  with pytest.raises(ConfigError, match="power"):
    kinds.make_reward("generalized_length_penalty", {"power": 0})
  with pytest.raises(ValueError, match="column 'case' must be one of"):
    multi_aspect.instruction_adherence()(["p"], ["x"], case=["title"])
