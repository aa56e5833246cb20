"""jaxrlhf.rewards.kinds and combine: every built-in by name with its options, config errors naming the key, and
the weighted sum's NaN rules (TRL's nansum with all-NaN rows unscorable, or propagate)."""

import math

import numpy as np
import pytest

from jaxrlhf.config import ConfigError
from jaxrlhf.rewards import kinds
from jaxrlhf.rewards.calling import RewardFunctionError, call_reward_function
from jaxrlhf.rewards.combine import weighted_sum

PROMPTS = ["q1", "q2", "q3"]
COMPLETIONS = ["Answer: 4", "Answer: 5 and more words here", "the cat"]
COLUMNS = {"answer": ["4", "4", None], "references": [None, None, ["the cat sat on the mat"]]}


def word_count(prompts, completions):
  """A user function for the "python" kind."""
  return [float(len(c.split())) for c in completions]


def nan_on_first(prompts, completions, **kwargs):
  return [None] + [1.0] * (len(completions) - 1)


def call(fn):
  return call_reward_function(fn, PROMPTS, COMPLETIONS, COLUMNS)


def test_every_kind_by_name():
  assert set(kinds.REWARDS) == {"exact_match", "regex_format", "length_penalty", "bleu", "bleuberi", "weighted_sum",
                                "python", "sql_execution", "sql_syntax", "sql_schema_linking", "sql_ngram",
                                "sql_format", "reasoning_sql",  # tests/rewards/test_sql_rewards.py
                                "toolrl",  # tests/rewards/test_toolrl.py
                                "bmas",  # tests/rewards/test_bmas.py
                                "instruction_adherence", "generalized_length_penalty",  # test_multi_aspect.py
                                "self_consistency", "co_reward", "vote_unanimity",  # tests/rewards/test_voting.py
                                "relevance", "r3_relevance", "sql_semantic"}  # tests/rewards/test_semantic_rewards.py
  np.testing.assert_array_equal(call(kinds.make_reward("exact_match", {"column": "answer"}))[:2], [1.0, 0.0])
  assert np.isnan(call(kinds.make_reward("exact_match"))[2])
  np.testing.assert_array_equal(call(kinds.make_reward("regex_format", {"pattern": r"^Answer: \d+$"})), [1, 0, 0])
  np.testing.assert_array_equal(call(kinds.make_reward("length_penalty", {"target": 3, "unit": "words"})),
                                [0.0, -3.0, 0.0])  # 2, 6, 2 words
  bleu = call(kinds.make_reward("bleu"))
  assert np.isnan(bleu[:2]).all() and bleu[2] == pytest.approx(math.exp(-2.0))
  bleuberi = call(kinds.make_reward("bleuberi", {"column": "references"}))
  assert bleuberi[2] == pytest.approx(math.exp(-2.0))
  np.testing.assert_array_equal(call(kinds.make_reward("python", {"function": f"{__name__}:word_count"})), [2, 6, 2])


def test_weighted_sum_from_config_and_nan_rules():
  terms = [{"kind": "exact_match", "weight": 2.0},
           {"kind": "length_penalty", "options": {"target": 3, "unit": "words"}, "weight": 0.5},
           {"kind": "python", "options": {"function": f"{__name__}:word_count"}}]  # weight 1 by default
  # Row 2 has no answer: "skip" leaves that term out (TRL's nansum); "propagate" makes the row not scorable.
  skip = call(kinds.make_reward("weighted_sum", {"terms": terms}))
  np.testing.assert_allclose(skip, [2 * 1 + 0 + 2, 2 * 0 + 0.5 * -3 + 6, 0 + 0 + 2])
  propagate = call(kinds.make_reward("weighted_sum", {"terms": terms, "nan": "propagate"}))
  np.testing.assert_allclose(propagate[:2], skip[:2])
  assert np.isnan(propagate[2])
  # A row where every term is NaN stays NaN under "skip" too (TRL: unscorable).
  both = weighted_sum([(nan_on_first, 1.0), (kinds.make_reward("exact_match"), 3.0)])
  out = call(both)
  assert out[0] == 3.0  # exact_match scores row 0
  out = call_reward_function(weighted_sum([(nan_on_first, 1.0), (nan_on_first, 2.0)]), PROMPTS, COMPLETIONS)
  assert np.isnan(out[0]) and list(out[1:]) == [3.0, 3.0]
  # Weights are not renormalized when a term is skipped.
  half = weighted_sum([(nan_on_first, 0.5), (lambda prompts, completions: [4.0] * 3, 0.5)])
  np.testing.assert_allclose(call(half), [2.0, 2.5, 2.5])


def test_weighted_sum_errors_name_the_term():
  def broken(prompts, completions):
    raise RuntimeError("boom")

  fn = weighted_sum([(word_count, 1.0), (broken, 1.0)])
  with pytest.raises(RewardFunctionError, match=r"^reward function 'weighted_sum\[1\]:broken' raised RuntimeError: "
                                                r"boom \(on every row\)$"):
    call(fn)
  with pytest.raises(ValueError, match="weighted_sum.nan"):
    weighted_sum([(word_count, 1.0)], nan="zero")
  with pytest.raises(ValueError, match="at least one"):
    weighted_sum([])
  with pytest.raises(ValueError, match=r"terms\[0\]: the weight must be a finite number, got nan"):
    weighted_sum([(word_count, float("nan"))])
  with pytest.raises(ValueError, match=r"terms\[0\]: expected a \(function, weight\) pair"):
    weighted_sum([word_count])


@pytest.mark.parametrize("kind, options, expected", [
    ("exact", None, r"reward.kind: unknown reward kind 'exact' \(did you mean 'exact_match'\?\); expected one of "),
    ("exact_match", {"colum": "answer"}, r"reward.options: unknown option\(s\) \['colum'\] for kind 'exact_match'; "
                                         r"its options are \['column', 'extract', 'rel_tol'\]"),
    ("length_penalty", {}, r"reward.options: kind 'length_penalty' needs option\(s\) \['target'\]"),
    ("length_penalty", {"target": 3, "unit": "bytes"}, r"reward.options: length_penalty.unit: expected one of"),
    ("regex_format", {"pattern": "("}, r"reward.options: regex_format.pattern: '\(' is not a valid"),
    ("exact_match", {"rel_tol": "x"}, r"reward.options: "),
    ("python", {"function": "math.sqrt"}, r"reward.options.function: expected 'package.module:function'"),
    ("python", {"function": "no_such_module_q:f"}, r"reward.options.function: cannot import module"),
    ("weighted_sum", {"terms": [{"kind": "nope"}]}, r"reward.options.terms\[0\].kind: unknown reward kind 'nope'"),
    ("weighted_sum", {"terms": [{"kind": "bleu", "wieght": 1}]}, r"reward.options: terms\[0\]: expected keys"),
    ("weighted_sum", {"terms": [{"kind": "bleu", "options": {"variant": "x"}}]},
     r"reward.options.terms\[0\].options: bleu.variant"),
    ("weighted_sum", {"terms": "bleu"}, r"reward.options: terms: expected a list"),
])
def test_config_errors_name_the_key(kind, options, expected):
  with pytest.raises(ConfigError, match=expected):
    kinds.make_reward(kind, options)


def test_options_of():
  assert kinds.options_of("length_penalty") == {"target": kinds.inspect.Parameter.empty, "alpha": 1.0,
                                                "unit": "chars", "two_sided": False}
