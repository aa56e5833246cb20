"""Hand-computed goldens that pin reward rules the reference comparisons leave open (found by a mutation audit:
each test below fails under a plausible one-line bug that the rest of tests/rewards/ let pass)."""

import pytest

from jaxrlhf.rewards import answers, multi_aspect, shaping, sql, toolrl, voting
from jaxrlhf.rewards import bleu as bleu_lib


def test_rel_tol_is_relative_to_the_larger_magnitude():
  # |100 - 90| = 10 <= 0.1 * max(100, 90) = 10, but > 0.1 * 90 = 9: the rule is max(|a|, |r|), symmetric in a, r.
  assert answers.answer_matches("Answer: 100", "90", rel_tol=0.1) == 1.0
  assert answers.answer_matches("Answer: 90", "100", rel_tol=0.1) == 1.0
  assert answers.answer_matches("Answer: 89", "100", rel_tol=0.1) == 0.0  # 11 > 10


def test_numbers_compare_as_exact_rationals_not_floats():
  # 2**53 + 1 and 2**53 are the same float64 but different integers; 0.1 + 0.2 style rounding must not matter.
  big = 2 ** 53
  assert float(big + 1) == float(big)
  assert answers.answer_matches(f"Answer: {big + 1}", str(big)) == 0.0
  assert answers.answer_matches(f"Answer: {big + 1}", str(big + 1)) == 1.0
  assert answers.answer_matches("Answer: 0.30000000000000001", "0.3") == 0.0  # equal as floats, not as rationals


def test_bleuberi_answer_span_is_after_the_first_answer_tag():
  # The documented rule (bleu module docstring, `_answer_span`): the text between the FIRST "<answer>" and the
  # "</answer>" after it; a later <answer> block is ignored (reading the last one instead would score "dog").
  fn = bleu_lib.bleuberi_reward(column="refs")
  text = "<answer>the cat sat</answer> then <answer>dog</answer>"
  out = fn(prompts=["p"], completions=[text], refs=[["the cat sat"]])[0]
  assert out == pytest.approx(1.0)
  later = fn(prompts=["p"], completions=[text], refs=[["dog"]])[0]
  assert later < 0.5


def test_unanimity_needs_answers_a_group_without_any_is_not_unanimous():
  # "All rollouts give the same answer (none missing)": a group whose rollouts all lack an answer agrees on nothing.
  fn = voting.vote_unanimity(extract="last_number")
  got = fn(prompts=["q", "q", "r", "r"], completions=["none", "nothing", "7", "7"])
  assert got == [0.0, 0.0, 1.0, 1.0]


def test_jaccard_of_two_empty_sets_earns_nothing():
  # sql.jaccard's documented rule: 0.0 when both sets are empty; queries that touch no table or column (SELECT 1)
  # share no schema item, and two one-token queries share no bigram.
  assert sql.jaccard(set(), set()) == 0.0
  assert sql.schema_linking("SELECT 1", "SELECT 1", {"t": ("a",)}) == 0.0
  assert sql.ngram_similarity("x", "x", n=2) == 0.0
  assert sql.jaccard({"t"}, {"t", "t.a"}) == 0.5


def test_end_phrase_must_end_the_text_not_only_appear_in_it():
  assert multi_aspect.aspect_satisfied("end_phrase", "Any questions?\n", " Any questions?") is True
  assert multi_aspect.aspect_satisfied("end_phrase", "Any questions? Then ask.", "Any questions?") is False


def test_reference_is_cut_after_its_last_hash_marker():
  # GSM8K-style references: the answer follows the LAST "####" (module docstring).
  assert answers.reference_answer("work #### 3 then more #### 72") == "72"
  assert answers.answer_matches("Answer: 72", "work #### 3 then more #### 72") == 1.0
  assert answers.answer_matches("Answer: 3", "work #### 3 then more #### 72") == 0.0


def test_execution_match_needs_both_queries_complete_and_successful():
  conn = sql.build_database("CREATE TABLE t (x INTEGER); INSERT INTO t VALUES (1), (2), (3);")
  cut = sql.execute_sql(conn, "SELECT x FROM t ORDER BY x", max_rows=2)
  assert cut.ok and cut.truncated and cut.rows == ((1,), (2,))
  # Equal first rows of two results cut at the row limit say nothing about the full results: no match.
  assert sql.results_match(cut, cut) is False
  # A gold query that fails matches nothing, not even a prediction with no rows (its rows are () as well).
  failed_gold = sql.execute_sql(conn, "SELECT nope FROM t")
  empty = sql.execute_sql(conn, "SELECT x FROM t WHERE x > 5")
  assert not failed_gold.ok and empty.ok and empty.rows == ()
  assert sql.results_match(empty, failed_gold) is False
  assert sql.results_match(empty, empty) is True


def test_a_false_constraint_is_absent_not_checked():
  # multi_aspect._absent: None, False, "", [] and NaN mean "no such constraint on this row".
  assert multi_aspect.adherence_scores("not json", {"json": False, "max_words": 5}) == {"max_words": 1.0}
  fn = multi_aspect.instruction_adherence(aspects=("json",))
  assert fn(prompts=["p", "p"], completions=["not json", "not json"], json=[False, True]) == [None, 0.0]


def test_self_consistency_gives_nothing_to_a_group_without_answers():
  # No answer in the group -> no label -> 0.0 for every row (a missing answer never "agrees" with a missing label).
  fn = voting.self_consistency(extract="last_number")
  got = fn(prompts=["q", "q", "r", "r", "r"], completions=["none", "nothing", "4", "4", "no idea"])
  assert got == [0.0, 0.0, 1.0, 1.0, 0.0]


def test_token_length_counts_every_completion_id():
  # unit "tokens" is len(completion_ids): the caller passes the completion without padding, so an id 0 is a token.
  fn = shaping.length_penalty(target=2, alpha=0.5, unit="tokens")
  assert fn(prompts=["p"], completions=["x"], completion_ids=[[0, 5, 0]]) == [-0.5]


def test_tool_calls_are_read_from_the_first_block():
  gold = [{"name": "get_weather", "parameters": {"city": "Paris"}}]
  first = '<tool_call>\n{"name": "get_weather", "parameters": {"city": "Paris"}}\n</tool_call>'
  second = '<tool_call>\n{"name": "get_time", "parameters": {}}\n</tool_call>'
  assert toolrl.parse_tool_calls(first + "\n" + second) == gold
  assert toolrl.correctness_reward(first + "\n" + second, gold) == 3.0
