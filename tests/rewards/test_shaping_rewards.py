"""jaxrlhf.rewards.shaping: the regular-expression format reward (modes, flags, partial credit) and the length
penalty (units, target, two-sided), against hand-computed values."""

import numpy as np
import pytest

from jaxrlhf.rewards import shaping
from jaxrlhf.rewards.calling import call_reward_function

THINK = r"<think>.*?</think>\s*<answer>.*?</answer>"


def score(fn, completions, **columns):
  return fn(prompts=["p"] * len(completions), completions=completions, **columns)


def test_regex_modes():
  texts = ["<think>a</think> <answer>4</answer>", "intro <think>a</think><answer>4</answer>",
           "<think>a</think><answer>4</answer> trailing", "<think>a\nb</think><answer>4</answer>", "no tags"]
  assert score(shaping.regex_format(THINK), texts) == [1.0, 1.0, 1.0, 0.0, 0.0]  # search; "." stops at newlines
  assert score(shaping.regex_format(THINK, match="match"), texts) == [1.0, 0.0, 1.0, 0.0, 0.0]
  assert score(shaping.regex_format(THINK, match="fullmatch"), texts) == [1.0, 0.0, 0.0, 0.0, 0.0]
  assert score(shaping.regex_format(THINK, match="fullmatch", flags="s"), texts) == [1.0, 0.0, 0.0, 1.0, 0.0]


def test_regex_flags_strip_and_partial_credit():
  assert score(shaping.regex_format("^answer:", flags="im"), ["x\nAnswer: 4", "answer"]) == [1.0, 0.0]
  assert score(shaping.regex_format(r"\d+", match="fullmatch"), ["42\n", " 42"]) == [0.0, 0.0]
  assert score(shaping.regex_format(r"\d+", match="fullmatch", strip=True), ["42\n", " 42"]) == [1.0, 1.0]
  patterns = [r"<think>", r"</think>", r"<answer>\d+</answer>"]
  texts = ["<think></think><answer>4</answer>", "<think></think><answer>four</answer>", "<think>", "none"]
  assert score(shaping.regex_format(patterns), texts) == [1.0, 0.0, 0.0, 0.0]  # all must match
  assert score(shaping.regex_format(patterns, partial_credit=True), texts) == [1.0, 2 / 3, 1 / 3, 0.0]
  # Conversational completions (TRL's form) are read from their last message.
  assert score(shaping.regex_format(r"^ok$"), [[{"role": "assistant", "content": "ok"}]]) == [1.0]


def test_regex_errors():
  with pytest.raises(ValueError, match=r"regex_format.pattern: '\(' is not a valid regular expression"):
    shaping.regex_format("(")
  with pytest.raises(ValueError, match=r"regex_format.match: expected one of \('search', 'match', 'fullmatch'\)"):
    shaping.regex_format("a", match="full")
  with pytest.raises(ValueError, match=r"unknown flag 'x' in 'ix'"):
    shaping.regex_format("a", flags="ix")
  with pytest.raises(ValueError, match="non-empty list"):
    shaping.regex_format([])


def test_length_penalty_chars_and_words():
  texts = ["abcde", "abcdefgh", "", "one two  three\nfour"]
  # -alpha * max(0, L - T): chars 5, 8, 0, 19 with T = 6.
  assert score(shaping.length_penalty(target=6, alpha=0.5), texts) == [0.0, -1.0, 0.0, -6.5]
  assert score(shaping.length_penalty(target=6, alpha=0.5, two_sided=True), texts) == [-0.5, -1.0, -3.0, -6.5]
  # words 1, 1, 0, 4 with T = 2.
  assert score(shaping.length_penalty(target=2, unit="words"), texts) == [0.0, 0.0, 0.0, -2.0]
  assert score(shaping.length_penalty(target=2, alpha=2.0, unit="words", two_sided=True), texts) == [
      -2.0, -2.0, -4.0, -4.0]


def test_length_penalty_tokens_read_completion_ids():
  fn = shaping.length_penalty(target=3, alpha=0.25, unit="tokens")
  ids = [[1, 2], [1, 2, 3, 4, 5], [7] * 3]
  np.testing.assert_allclose(call_reward_function(fn, ["p"] * 3, ["a", "b", "c"], {"completion_ids": ids}),
                             [0.0, -0.5, 0.0])
  with pytest.raises(Exception, match="unit 'tokens' needs the column 'completion_ids'"):
    call_reward_function(fn, ["p"], ["a"], name="length_penalty")


def test_length_penalty_errors():
  with pytest.raises(ValueError, match="length_penalty.unit"):
    shaping.length_penalty(target=3, unit="bytes")
  with pytest.raises(ValueError, match="length_penalty.target: expected an integer length >= 0, got -1"):
    shaping.length_penalty(target=-1)
  with pytest.raises(ValueError, match="length_penalty.target"):
    shaping.length_penalty(target=2.5)
  with pytest.raises(ValueError, match="length_penalty.alpha"):
    shaping.length_penalty(target=3, alpha=-0.1)
