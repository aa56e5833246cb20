"""jaxrlhf.rewards.voting: Co-Reward's cross-referenced majority votes and plain self-consistency, against votes and
rewards computed by hand from the paper's definition and the official code's rules (empty answers do not vote, a
tie goes to the first answer in rollout order, an empty label matches nothing)."""

import numpy as np
import pytest

from jaxrlhf.config import ConfigError
from jaxrlhf.rewards import kinds, voting
from jaxrlhf.rewards.calling import call_reward_function

# One batch: question A (3 rollouts) and its rephrasing A' (3), question B (3) and its rephrasing B' (3).
PROMPTS = ["A"] * 3 + ["A'"] * 3 + ["B"] * 3 + ["B'"] * 3
PAIRS = ["a"] * 6 + ["b"] * 6
COMPLETIONS = [
    "Answer: 5", "5", "so 7",            # A: votes 5, 5, 7 -> majority 5
    "7", "Answer: 7.0", "I think 5",     # A': 7, 7, 5 -> majority 7 ("7.0" == "7" by value)
    "no idea", "3", "4",                 # B: -, 3, 4 -> tie 3 / 4: the first (3) wins
    "none", "nothing", "Answer: 1,000",  # B': -, -, 1000 -> majority 1000
]


def rewards(kind, **options):
  fn = kinds.make_reward(kind, options)
  return call_reward_function(fn, PROMPTS, COMPLETIONS, {"pair_id": PAIRS})


def test_majority_vote_ignores_missing_answers_and_breaks_ties_by_first_occurrence():
  assert voting.majority_vote(["x", "y", "y", None]) == "y"
  assert voting.majority_vote([None, "4", "3", "3", "4"]) == "4"  # tie: "4" appears first
  assert voting.majority_vote([None, None]) is None and voting.majority_vote([]) is None


def test_self_consistency_by_hand():
  # A: maj 5 -> [1, 1, 0]; A': maj 7 -> [1, 1, 0]; B: maj 3 (tie, first) -> [0, 1, 0]; B': maj 1000 -> [0, 0, 1].
  np.testing.assert_array_equal(rewards("self_consistency", extract="last_number"),
                                [1, 1, 0, 1, 1, 0, 0, 1, 0, 0, 0, 1])


def test_co_reward_cross_references_the_rephrasing_by_hand():
  # A rollouts vs maj(A') = 7 -> [0, 0, 1]; A' vs maj(A) = 5 -> [0, 0, 1];
  # B vs maj(B') = 1000 -> [0, 0, 0]; B' vs maj(B) = 3 -> [0, 0, 0].
  np.testing.assert_array_equal(rewards("co_reward", extract="last_number"), [0, 0, 1, 0, 0, 1, 0, 0, 0, 0, 0, 0])


def test_co_reward_normalization_and_raw_strings():
  # normalize=False compares raw spans like the official code: "7.0" is its own answer, so A''s vote is a tie between
  # "7" and "7.0" won by the first ("7"), and A' rollout 2 ("7.0") no longer matches anything.
  raw = rewards("co_reward", extract="last_number", normalize=False)
  np.testing.assert_array_equal(raw[:6], [0, 0, 1, 0, 0, 1])
  self_raw = rewards("self_consistency", extract="last_number", normalize=False)
  np.testing.assert_array_equal(self_raw[3:6], [1, 0, 0])
  # B' voted "1,000": normalized it equals "1000", raw it does not.
  fn = kinds.make_reward("co_reward", {"extract": "last_number"})
  got = call_reward_function(fn, ["q", "q'"], ["1000", "1,000"], {"pair_id": [1, 1]})
  np.testing.assert_array_equal(got, [1, 1])


def test_empty_label_matches_nothing_and_missing_partner_is_unscored():
  fn = kinds.make_reward("co_reward", {"extract": "answer"})
  # q' has no answer at all: q's label is empty, so q's rollouts get 0 even without answers; q gets q''s 0 too.
  got = call_reward_function(fn, ["q", "q", "q'", "q'", "r"], ["Answer: 2", "x", "x", "y", "Answer: 2"],
                             {"pair_id": [0, 0, 0, 0, 9]})
  np.testing.assert_array_equal(got[:4], [0, 0, 0, 0])
  assert np.isnan(got[4])  # r's rephrasing is not in the batch: not scorable.
  # The same text under two pair ids is two groups: each pair's votes stay its own.
  got = call_reward_function(fn, ["q", "q'", "q", "s"], ["Answer: 1", "Answer: 1", "Answer: 2", "Answer: 2"],
                             {"pair_id": [0, 0, 1, 1]})
  np.testing.assert_array_equal(got, [1, 1, 1, 1])


def test_unanimity_monitor_and_errors():
  got = rewards("vote_unanimity", extract="last_number")
  np.testing.assert_array_equal(got, [0] * 12)
  fn = kinds.make_reward("vote_unanimity", {"extract": "last_number"})
  got = call_reward_function(fn, ["q", "q", "r", "r"], ["4", "Answer: 4.0", "4", "none"], {})
  np.testing.assert_array_equal(got, [1, 1, 0, 0])  # r has a rollout without an answer
  with pytest.raises(ValueError, match="shared by 3 different prompts"):
    voting.co_reward_rewards(["1", "1", "1"], ["p", "q", "r"], ["a", "a", "a"])
  with pytest.raises(ConfigError, match=r"co_reward.extract"):
    kinds.make_reward("co_reward", {"extract": "first"})
  with pytest.raises(Exception, match="pair column 'pair_id' not among the columns"):
    call_reward_function(kinds.make_reward("co_reward"), ["q"], ["1"], {})
