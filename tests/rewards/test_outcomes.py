"""Outcome counts of reward functions (jaxrlhf.rewards.outcomes): the SQL rewards count completions without a query
and queries that failed, were interrupted, were refused or were cut; exact_match counts completions without an
answer; a weighted sum shows its terms' counts; the stages' report prints and returns them. Every expected count is
read off the hand-written completions."""

import io

import pytest

from jaxrlhf.rewards import kinds, outcomes, sql
from jaxrlhf.rewards.calling import call_reward_function
from jaxrlhf.stages import reward_sources

SCRIPT = """CREATE TABLE t (id INTEGER, name TEXT);
INSERT INTO t VALUES (1, 'a'), (2, 'b'), (3, 'c');"""
ENDLESS = "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c) SELECT COUNT(*) FROM c"


def wrap(query):
  return f"<reasoning>r</reasoning>\n<answer>\n{query}\n</answer>"


def call(fn, completions, golds, db=SCRIPT):
  columns = {"gold_sql": golds, "db_id": [db] * len(completions)}
  return list(call_reward_function(fn, ["q"] * len(completions), completions, columns))


def test_sql_rewards_count_each_case_of_the_predicted_query():
  fn = kinds.make_reward("sql_execution", {"timeout_s": 0.2, "max_rows": 2})
  completions = [
      wrap("SELECT name FROM t WHERE id = 1"),  # runs, right rows
      "no query here",                          # no_query
      wrap("SELEC name FROM t"),                # not_executable (syntax error)
      wrap(ENDLESS),                            # interrupted
      wrap("DELETE FROM t"),                    # not_authorized
      wrap("SELECT name FROM t"),               # truncated (3 rows, max_rows 2)
      wrap("SELECT 1"),                         # gold missing: not scored, not counted
  ]
  golds = ["SELECT name FROM t WHERE id = 1"] * 6 + [None]
  values = call(fn, completions, golds)
  assert values[:6] == [1.0, 0.0, 0.0, 0.0, 0.0, 0.0] and values[6] != values[6]  # NaN: not scorable
  assert fn.outcomes.totals() == {"rows": 6, "no_query": 1, "not_executable": 1, "interrupted": 1,
                                  "not_authorized": 1, "truncated": 1}
  call(fn, completions[:2], golds[:2])  # cumulative over calls
  assert fn.outcomes.totals()["rows"] == 8 and fn.outcomes.totals()["no_query"] == 2


def test_text_only_sql_terms_count_only_missing_queries():
  fn = kinds.make_reward("sql_ngram", {})
  call(fn, [wrap("SELECT 1"), "nothing", wrap(ENDLESS)], ["SELECT 1"] * 3)
  assert fn.outcomes.totals() == {"rows": 3, "no_query": 1}  # nothing executes: no execution cases
  assert sql.execution_case(sql.Execution(True, ((1,),))) == "ok"


def test_exact_match_counts_completions_without_an_answer():
  fn = kinds.make_reward("exact_match", {"column": "answer", "extract": "boxed"})
  values = call_reward_function(fn, ["q"] * 4, ["\\boxed{3}", "3", "\\boxed{4}", "\\boxed{3}"],
                                {"answer": ["3", "3", "3", None]})
  assert list(values[:3]) == [1.0, 0.0, 0.0]
  # Row 1 has no boxed answer; row 3 has no reference, so it is not scored and not counted.
  assert fn.outcomes.totals() == {"rows": 3, "no_answer": 1}


def test_weighted_sum_reports_its_terms_cases_under_their_labels():
  fn = kinds.make_reward("weighted_sum", {"terms": [
      {"kind": "exact_match", "options": {"column": "answer"}},
      {"kind": "regex_format", "options": {"pattern": ".*"}},
      {"kind": "sql_ngram", "options": {"gold_column": "answer"}}]})
  call_reward_function(fn, ["q"] * 2, ["the answer is 7", "none"], {"answer": ["7", "7"]})
  assert fn.outcomes.totals() == {"rows": 2, "weighted_sum[0]:exact_match/no_answer": 1,
                                  "weighted_sum[2]:sql_ngram/no_query": 2}


def test_report_prints_nonzero_cases_and_returns_every_count():
  counter = outcomes.Outcomes({"no_query": "no SQL query found", "interrupted": "the time limit stopped it"})
  counter.add(10, {"no_query": 3})
  stream = io.StringIO()
  totals = outcomes.report({"sql": counter, "other": None}, where="train", stream=stream)
  assert totals == {"sql": {"rows": 10, "no_query": 3, "interrupted": 0}}
  assert stream.getvalue() == "[reward] train sql: 10 rows scored; no_query 3 (no SQL query found)\n"
  with pytest.raises(ValueError, match=r"unknown case\(s\) \['interupted'\]"):
    counter.add(1, {"interupted": 1})


def test_build_sources_carries_the_counters_to_the_stage_report(capsys):
  specs = [reward_sources.RewardSourceSpec(kind="exact_match", name="acc", options={"column": "answer"}),
           reward_sources.RewardSourceSpec(kind="regex_format", name="fmt", options={"pattern": "x"})]
  table = reward_sources.PromptTable(["p"], {"answer": ["1"]})
  train = reward_sources.build_sources(specs, tokenizer=None, table=table)
  held_out = reward_sources.build_sources(specs, tokenizer=None, table=table)
  assert set(train[0].outcomes) == {"acc"} and train[1].outcomes == {}  # regex_format counts nothing
  train[0].outcomes["acc"].add(4, {"no_answer": 2})
  report = reward_sources.report_outcomes({"train": train, "eval": held_out})
  assert report == {"train": {"acc": {"rows": 4, "no_answer": 2}}, "eval": {"acc": {"rows": 0, "no_answer": 0}}}
  assert "[reward] train acc: 4 rows scored; no_answer 2" in capsys.readouterr().out


def test_toolrl_counts_missing_and_unparsable_calls_and_bad_format():
  fn = kinds.make_reward("toolrl", {})
  call = '{"name": "f", "parameters": {"x": 1}}'
  completions = [
      f"<think>t</think>\n<tool_call>\n{call}\n</tool_call>",  # right format, parsed
      "<think>t</think>\nno call at all",                     # no block, bad format
      "<think>t</think>\n<tool_call>\nnot json\n</tool_call>",  # unparsable, right format
      "<think>t</think>\n<response>hi</response>",            # no call expected: a response row, right format
  ]
  golds = [f"[{call}]"] * 3 + ["[]"]
  values = call_reward_function(fn, ["q"] * 4, completions, {"tool_calls": golds})
  assert list(values) == [4.0, -3.0, -2.0, 1.0]  # R_format + R_correct (0 for the row without gold calls)
  assert fn.outcomes.totals() == {"rows": 4, "bad_format": 1, "no_tool_call": 1, "unparsable_tool_call": 1}
  assert kinds.make_reward("toolrl", {"terms": ["format"]}).outcomes.cases.keys() == {"bad_format"}
