"""The generated text-to-SQL task: every gold query executes and returns rows, disjoint train / held-out problems,
files that regenerate byte for byte and read back as chat prompts, and the gold query scoring the full Reasoning-SQL
reward on the shipped databases."""

import json
import os
import pathlib
import sqlite3

import pytest

from jaxrlhf.data import prompts, sql_tasks
from jaxrlhf.rewards import kinds
from jaxrlhf.rewards.calling import call_reward_function

SHIPPED = pathlib.Path(__file__).resolve().parents[2] / "data" / "tasks" / "sql"


def test_every_gold_query_executes_and_returns_a_value():
  problems = sql_tasks.problems()
  assert len(problems) > 90 and {p["db_id"] for p in problems} == {"shop", "school", "library"}
  for db_id, script in sql_tasks.databases().items():
    conn = sqlite3.connect(":memory:")
    conn.executescript(script)
    golds = [p["gold_sql"] for p in problems if p["db_id"] == db_id]
    if db_id == "shop":  # Of the 10 customers only Hiro has no orders: his total is NULL, not a problem.
      totals = [g for g in golds if g.startswith("SELECT SUM(o.quantity)")]
      assert len(totals) == 9 and not any("'Hiro'" in g for g in totals)
    for gold in golds:
      # Not only rows: an all-NULL result (an aggregate over nothing) would credit any query that finds nothing.
      assert any(v is not None for row in conn.execute(gold).fetchall() for v in row), gold
    # The families the task promises: filter, join, aggregate, group-by, order/limit.
    for marker in ("WHERE", "JOIN", "COUNT(", "GROUP BY", "LIMIT"):
      assert any(marker in g for g in golds), (db_id, marker)


def test_rows_are_a_pure_function_and_splits_are_disjoint():
  rows = sql_tasks.sql_rows(0, 300)
  assert rows == sql_tasks.sql_rows(0, 300) and sql_tasks.sql_rows(0, 50) == rows[:50]
  assert sql_tasks.sql_rows(1, 300) != rows
  held_out = sql_tasks.sql_rows(0, 300, "eval")
  assert not {r["gold_sql"] for r in rows} & {r["gold_sql"] for r in held_out}
  (message,) = rows[0]["prompt"]
  assert message["role"] == "user" and "CREATE TABLE" in message["content"] and "INSERT" not in message["content"]
  assert message["content"].endswith(sql_tasks.INSTRUCTION) and "<reasoning>" in message["content"]
  with pytest.raises(ValueError, match="split must be one of"):
    sql_tasks.sql_rows(0, 3, "test")


def test_an_empty_split_is_a_clear_error():
  # eval_share so small that no problem is held out (or so large that none is left to train on).
  with pytest.raises(ValueError, match=r"split 'eval': no problems in it for seed 0 and eval_share 1e-09"):
    sql_tasks.sql_rows(0, 3, "eval", eval_share=1e-9)
  with pytest.raises(ValueError, match=r"split 'train': no problems in it"):
    sql_tasks.sql_rows(0, 3, "train", eval_share=1 - 1e-9)


def test_shipped_files_regenerate_byte_identically(tmp_path):
  # data/tasks/sql/ (configs/papers/reasoning_sql.py's prompts) is exactly what write_sql_files(.., 0, 512, 128) writes.
  for path in sql_tasks.write_sql_files(tmp_path, 0, 512, 128):
    assert pathlib.Path(path).read_bytes() == (SHIPPED / os.path.basename(path)).read_bytes(), path


def test_gold_completions_score_the_full_reward_on_the_shipped_files():
  train, held_out, report = prompts.read_prompt_splits(str(SHIPPED / "sql_train.jsonl"),
                                                       str(SHIPPED / "sql_eval.jsonl"))
  assert (len(train), len(held_out), report["skipped"]) == (512, 128, 0)
  fn = kinds.make_reward("reasoning_sql", {"databases": str(SHIPPED / "databases.json")})
  rows = held_out[:40]
  columns = {k: [r.columns[k] for r in rows] for k in ("gold_sql", "db_id")}
  gold = [f"<reasoning>Read the schema.</reasoning>\n<answer>{g}</answer>" for g in columns["gold_sql"]]
  assert list(call_reward_function(fn, [r.prompt for r in rows], gold, columns)) == [7.0] * len(rows)
  assert json.loads((SHIPPED / "databases.json").read_text()) == sql_tasks.databases()
