"""jaxrlhf.rewards.answers: the number normalization table, answer extraction, and the exact-match reward (hand-made
cases from the rules in the module docstring), with None for a missing reference."""

import time
from fractions import Fraction

import numpy as np
import pytest

from jaxrlhf.rewards import answers, voting
from jaxrlhf.rewards.calling import call_reward_function


@pytest.mark.parametrize("text, value", [
    ("1000", Fraction(1000)),
    ("1,000", Fraction(1000)),
    ("1,000,000", Fraction(10**6)),
    ("1000.0", Fraction(1000)),
    ("1000.", Fraction(1000)),  # a sentence-final period
    ("+5", Fraction(5)),
    ("-0", Fraction(0)),
    ("-0.0", Fraction(0)),
    ("-12.5", Fraction(-25, 2)),
    (".5", Fraction(1, 2)),
    ("1e3", Fraction(1000)),
    ("2.5E-1", Fraction(1, 4)),
    ("3/4", Fraction(3, 4)),
    ("-3/4", Fraction(-3, 4)),
    ("6/8", Fraction(3, 4)),
    ("\\frac{3}{4}", Fraction(3, 4)),
    ("\\dfrac{3}{4}", Fraction(3, 4)),
    ("-\\frac{1}{2}", Fraction(-1, 2)),
    ("\\frac{-1}{2}", Fraction(-1, 2)),
    ("$1,000$", Fraction(1000)),
    ("\\$1,000", Fraction(1000)),
    ("1{,}000", Fraction(1000)),
    ("50%", Fraction(50)),  # the percent sign is dropped, not read as 1/100
    ("50\\%", Fraction(50)),
    ("\\text{42}", Fraction(42)),
    ("{42}", Fraction(42)),
    (" 7 ", Fraction(7)),
    ("0.1", Fraction(1, 10)),  # exact decimal, not the float 0.1
    ("12,34", None),  # commas only in groups of three
    ("1,0000", None),
    ("1/0", None),
    ("1 1/2", None),  # mixed numbers are not supported
    ("1 000", None),  # nor space-separated thousands
    ("five", None),
    ("", None),
    ("5 apples", None),
    ("x2", None),
])
def test_parse_number_table(text, value):
  assert answers.parse_number(text) == value


@pytest.mark.parametrize("completion, extract, span", [
    ("so 3 + 4 = 7 and \\boxed{7} done", "auto", "7"),
    ("\\boxed{1} then \\boxed{\\frac{3}{4}} at last", "auto", "\\frac{3}{4}"),  # the last box, braces balanced
    ("\\boxed{a{b}c}", "boxed", "a{b}c"),
    ("\\boxed{unclosed", "boxed", None),
    ("no box 5", "boxed", None),
    ("We get 12.\nAnswer: 15 apples\nCheck: 3", "auto", "15 apples"),  # the marker's line, not the last number
    ("The answer is 42.", "auto", "42."),
    ("**Answer:** 1,000", "auto", "1,000"),
    ("answer = -3", "auto", "-3"),
    ("work...\n#### 18", "auto", "18"),
    ("Answer: 1\nFinal answer: 2", "answer", "2"),
    ("Let me answer this carefully: 2 + 2 = 4", "auto", "4"),  # "answer" without ':' / 'is' / '=' is no marker
    ("no marker 5", "answer", None),
    ("3 - 2 = 1", "last_number", "1"),
    ("it is x=-5", "last_number", "-5"),
    ("dates 2024-05-01", "last_number", "01"),  # hyphens after digits are not signs
    ("costs $1,234.50 total", "last_number", "1,234.50"),
    ("version 2 of H2O", "last_number", "2"),  # digits glued to letters are not numbers
    ("nothing here", "auto", None),
    ("  whole text \n", "whole", "whole text"),
])
def test_extract_answer(completion, extract, span):
  assert answers.extract_answer(completion, extract) == span


@pytest.mark.parametrize("completion, reference, expected", [
    ("The answer is 1000", "1,000", 1.0),
    ("Answer: 1,000", "1000", 1.0),
    ("\\boxed{1000.0}", 1000, 1.0),
    ("\\boxed{+5}", "5", 1.0),
    ("\\boxed{-0}", "0", 1.0),
    ("\\boxed{\\frac{3}{4}}", "0.75", 1.0),
    ("Answer: 3/4", 0.75, 1.0),
    ("Answer: 0.75", "3/4", 1.0),
    ("Answer: 1/3", "0.3333", 0.0),  # exact rational comparison
    ("Answer: 5 apples (2 + 3)", "5", 1.0),  # the first number of the answer span
    ("Answer: 6 apples", "5", 0.0),
    ("2 + 3 = 5", "5", 1.0),  # last number
    ("5 = 2 + 3", "5", 0.0),  # last number is 3
    ("The result is 72.", "Natalia sold 48 + 24 = 72 clips.\n#### 72", 1.0),  # GSM8K reference
    ("\\boxed{Paris}", "paris", 1.0),  # non-numeric: normalized strings
    ("Answer: **Paris.**", "Paris", 1.0),
    ("Answer: Paris, France", "Paris", 0.0),
    ("Answer: no number", "5", 0.0),
    ("", "5", 0.0),
    ("Answer: 0.75", np.float64(0.75), 1.0),  # numpy scalars from parquet columns
    ("Answer: 12", np.int64(12), 1.0),
    ("Answer: 5", None, None),  # no reference: not scorable
    ("Answer: 5", float("nan"), None),
    ("Answer: 5", "  ", None),
])
def test_answer_matches(completion, reference, expected):
  assert answers.answer_matches(completion, reference) == expected


def test_relative_tolerance_and_extract_modes():
  assert answers.answer_matches("Answer: 0.3333", "1/3", rel_tol=1e-3) == 1.0
  assert answers.answer_matches("Answer: 0.33", "1/3", rel_tol=1e-3) == 0.0
  assert answers.answer_matches("Answer: 0.0001", "0", rel_tol=0.1) == 0.0  # 0 only matches 0
  assert answers.answer_matches("\\boxed{4} but 5", "5", extract="last_number") == 1.0
  assert answers.answer_matches("\\boxed{4} but 5", "5", extract="boxed") == 0.0
  assert answers.answer_matches("5", "5", extract="boxed") == 0.0
  assert answers.answer_matches(" Paris ", "paris", extract="whole") == 1.0


def test_exact_match_reward_function():
  fn = answers.exact_match(column="solution")
  completions = ["\\boxed{72}", "I think 71", "Answer: 3/4", [{"role": "assistant", "content": "Answer: 9"}]]
  columns = {"solution": ["#### 72", "72", "0.75", None], "other": [1, 2, 3, 4]}
  assert fn(prompts=["p"] * 4, completions=completions, **columns) == [1.0, 0.0, 1.0, None]
  out = call_reward_function(fn, ["p"] * 4, completions, columns)
  np.testing.assert_array_equal(out[:3], [1.0, 0.0, 1.0])
  assert np.isnan(out[3])
  # As TRL's GRPOTrainer calls it (extra keywords it passes are ignored).
  assert fn(prompts=["p"], completions=["5"], completion_ids=[[1]], solution=["5"], trainer_state=None,
            log_extra=None, log_metric=None) == [1.0]


def test_exact_match_errors():
  with pytest.raises(ValueError, match=r"exact_match.extract: expected one of \('auto'"):
    answers.exact_match(extract="first")
  with pytest.raises(ValueError, match="exact_match.rel_tol"):
    answers.exact_match(rel_tol=-1.0)
  fn = answers.exact_match()
  with pytest.raises(ValueError, match=r"reference column 'answer' not among the columns \['solution'\]"):
    fn(prompts=["p"], completions=["5"], solution=["5"])


def test_numbers_past_the_size_bound_are_not_numbers_and_parse_fast():
  # At the bound a number is exact; past it (exponent 1001, 1001 mantissa characters) it is not a number.
  assert answers.parse_number("1e1000") == Fraction(10**1000)
  assert answers.parse_number("1e-1000") == Fraction(1, 10**1000)
  assert answers.parse_number("1e0000000000003") == Fraction(1000)  # Leading zeros of the exponent do not count.
  assert answers.parse_number("1e1001") is None and answers.parse_number("1e-1001") is None
  assert answers.parse_number("1" * 1000) == int("1" * 1000)
  assert answers.parse_number("1" * 1001) is None and answers.parse_number("1/" + "1" * 1001) is None
  # Exact Fractions of these would take minutes ("1e99999999") or raise ValueError (int() of > 4300 digits).
  huge = ["1e99999999", "1e-99999999", "1e" + "9" * 5000, "7" * 5000, "3/" + "7" * 5000, "7" * 5000 + ".5"]
  start = time.perf_counter()
  for text in huge:
    assert answers.parse_number(text) is None
    assert answers.answer_matches(f"Answer: {text}", "72") == 0.0
    assert voting.answer_key(f"Answer: {text}") == ("text", text)
  assert time.perf_counter() - start < 1.0
  # A huge number is skipped as a candidate: the span's next number is read, as for any non-number.
  assert answers.answer_matches("Answer: 1e99999999 or rather 72", "72") == 1.0
  # A reference past the bound is compared as text.
  assert answers.answer_matches("Answer: 1e5000", "1e5000") == 1.0 and answers.answer_matches("1e5001", "1e5000") == 0.0
