"""Reasoning-SQL's rewards (jaxrlhf.rewards.sql) against hand-computed cases of the paper's definitions (Pourreza et
al. 2025, arXiv 2503.23157): execution accuracy as BIRD's set comparison, syntax check, schema-linking and bigram
Jaccard similarities, the format reward, the weighted sum 3 EX + syntax + schema + ngram + format, the execution
limits, and errors that name the column and row."""

import json
import math
import time

import pytest

from jaxrlhf.config import ConfigError
from jaxrlhf.rewards import kinds, sql
from jaxrlhf.rewards.calling import RewardFunctionError, call_reward_function

SCRIPT = """CREATE TABLE customers (id INTEGER PRIMARY KEY, name TEXT, city TEXT);
CREATE TABLE orders (id INTEGER PRIMARY KEY, customer_id INTEGER, amount REAL);
INSERT INTO customers VALUES (1, 'Ann', 'Paris'), (2, 'Bob', 'Rome'), (3, 'Cid', 'Paris');
INSERT INTO orders VALUES (1, 1, 10.0), (2, 1, 5.0), (3, 2, 7.5);"""
SCHEMA = {"customers": ("id", "name", "city"), "orders": ("id", "customer_id", "amount")}
PARIS = "SELECT name FROM customers WHERE city = 'Paris'"
JOIN = ("SELECT c.name, SUM(o.amount) FROM customers AS c JOIN orders AS o ON o.customer_id = c.id "
        "GROUP BY c.name")


def wrap(query, reasoning="The customers table has the city."):
  return f"<reasoning>{reasoning}</reasoning>\n<answer>\n{query}\n</answer>"


def score(kind, completions, gold, options=None, db=SCRIPT):
  return score_with(kinds.make_reward(kind, dict(options or {})), completions, gold, db)


def score_with(fn, completions, gold, db=SCRIPT):
  """Scores through an existing reward function, which keeps its database connections between calls."""
  columns = {"gold_sql": [gold] * len(completions), "db_id": [db] * len(completions)}
  return list(call_reward_function(fn, ["q"] * len(completions), completions, columns))


def test_execution_compares_rows_as_sets_like_bird():
  same_rows_other_aliases_and_order = ("SELECT customers.name, SUM(orders.amount) FROM orders JOIN customers "
                                       "ON orders.customer_id = customers.id GROUP BY customers.name "
                                       "ORDER BY customers.name DESC")
  swapped_columns = ("SELECT SUM(o.amount), c.name FROM customers c JOIN orders o ON o.customer_id = c.id "
                     "GROUP BY c.name")
  wrong_filter = ("SELECT c.name, SUM(o.amount) FROM customers c JOIN orders o ON o.customer_id = c.id "
                  "WHERE o.amount > 6 GROUP BY c.name")
  completions = [wrap(same_rows_other_aliases_and_order), wrap(swapped_columns), wrap(wrong_filter)]
  assert score("sql_execution", completions, JOIN) == [1.0, 0.0, 0.0]  # Column order counts: BIRD compares tuples.
  # Duplicate rows do not count: set(('Ann',), ('Ann',), ('Bob',)) == set(('Ann',), ('Bob',)).
  duplicates = wrap("SELECT c.name FROM customers c JOIN orders o ON o.customer_id = c.id")
  assert score("sql_execution", [duplicates], "SELECT name FROM customers WHERE id IN (1, 2)") == [1.0]
  # Two empty results are equal (BIRD), a syntax error is never correct.
  assert score("sql_execution", [wrap("SELECT name FROM customers WHERE city = 'Oslo'"), wrap("SELEC name")],
               "SELECT name FROM customers WHERE id > 99") == [1.0, 0.0]


def test_syntax_check_executes_the_query_read_only():
  fn = kinds.make_reward("sql_syntax", {})
  completions = [wrap(PARIS.replace("Paris", "Rome")), wrap("SELEC name FROM customers"),
                 wrap("SELECT nme FROM customers"),
                 wrap("DROP TABLE orders"), wrap("SELECT 1; SELECT 2"), "no query at all", wrap(PARIS)]
  assert score_with(fn, completions, PARIS) == [1.0, 0.0, 0.0, 0.0, 0.0, 0.0, 1.0]
  # The DROP did not happen: the same function (the same cached connection) still reads the orders table.
  assert score_with(fn, [wrap("SELECT COUNT(*) FROM orders")], PARIS) == [1.0]


def test_untrusted_sql_cannot_lift_the_read_only_mode_or_change_later_scores():
  # Before the authorizer, `PRAGMA query_only = OFF` executed and switched the protection off on the cached
  # connection, so the DELETE after it emptied the table and every later completion was scored against that.
  fn = kinds.make_reward("sql_execution", {})
  count = "SELECT COUNT(*) FROM orders"
  attack = [wrap("PRAGMA query_only = OFF"), wrap("DELETE FROM orders"), wrap("PRAGMA writable_schema = ON"),
            wrap("CREATE TEMP TABLE t AS SELECT 1"), wrap("BEGIN"), wrap(count)]
  assert score_with(fn, attack, count) == [0.0] * 5 + [1.0]
  assert score_with(fn, [wrap(count), wrap("SELECT 0")], "SELECT 3") == [1.0, 0.0]  # The 3 orders are all there.
  conn = sql.build_database(SCRIPT)
  for statement in ("PRAGMA query_only = OFF", "DELETE FROM orders", "DROP TABLE orders", "PRAGMA table_info(orders)"):
    result = sql.execute_sql(conn, statement)
    assert not result.ok and "not authorized" in result.error, (statement, result)
  assert sql.execute_sql(conn, count).rows == ((3,),)


def test_attach_and_vacuum_into_create_no_file(tmp_path):
  fn = kinds.make_reward("reasoning_sql", {})
  attach, vacuum = tmp_path / "attached.db", tmp_path / "vacuumed.db"
  completions = [wrap(f"ATTACH DATABASE '{attach}' AS e"), wrap(f"VACUUM INTO '{vacuum}'"), wrap("VACUUM"),
                 wrap("DETACH DATABASE main")]
  values = score_with(fn, completions, PARIS)
  assert not list(tmp_path.iterdir())  # Before the fix, ATTACH created attached.db even in query_only mode.
  # Not executable: execution 0, syntax 0, schema 0 (no table), ngram 0 (no shared bigram), format 1.
  assert values == [1.0] * 4
  assert score_with(fn, [wrap(PARIS)], PARIS) == [7.0]  # The connection still answers.


def test_read_only_queries_of_every_shape_still_run():
  conn = sql.build_database(SCRIPT)
  queries = {
      "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c WHERE x < 4) SELECT SUM(x) FROM c": ((10,),),
      "WITH paris AS (SELECT id FROM customers WHERE city = 'Paris') SELECT COUNT(*) FROM paris": ((2,),),
      "SELECT name, RANK() OVER (PARTITION BY city ORDER BY id DESC) FROM customers WHERE city = 'Paris' "
      "ORDER BY name": (("Ann", 2), ("Cid", 1)),
      "SELECT name FROM customers WHERE id IN (SELECT customer_id FROM orders GROUP BY customer_id "
      "HAVING SUM(amount) > 8) UNION SELECT 'x' ORDER BY 1": (("Ann",), ("x",)),
      JOIN + " ORDER BY 1": (("Ann", 15.0), ("Bob", 7.5)),
      "SELECT CASE WHEN EXISTS (SELECT 1 FROM orders o WHERE o.customer_id = c.id) THEN upper(name) END, "
      "round(length(city) / 2.0, 1) FROM customers c ORDER BY c.id": (("ANN", 2.5), ("BOB", 2.0), (None, 2.5)),
      "SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name": (("customers",), ("orders",)),
  }
  for query, rows in queries.items():
    assert sql.execute_sql(conn, query) == sql.Execution(True, rows), query
  assert sql.database_schema(conn) == {"customers": SCHEMA["customers"], "orders": SCHEMA["orders"]}
  # The documented cost: table-valued functions touch the schema table or a pragma, which the authorizer refuses.
  assert not sql.execute_sql(conn, "SELECT * FROM json_each('[1, 2]')").ok


def test_one_huge_value_fails_fast_instead_of_running_past_the_time_limit():
  # One expression is one virtual-machine step that the progress handler cannot interrupt: without the length limit
  # this query ran ~1 s and took ~900 MB at a 0.05 s time limit.
  huge = "SELECT length(zeroblob(3e8)), length(hex(zeroblob(1.5e8)))"
  conn = sql.build_database(SCRIPT)
  start = time.perf_counter()
  result = sql.execute_sql(conn, huge, timeout_s=0.05)
  assert time.perf_counter() - start < 0.5
  assert not result.ok and "too big" in result.error
  assert sql.execute_sql(conn, f"SELECT length(zeroblob({sql.MAX_VALUE_BYTES}))").rows == ((sql.MAX_VALUE_BYTES,),)
  assert score("sql_syntax", [wrap(huge)], PARIS, {"timeout_s": 0.05}) == [0.0]


def test_result_size_limit_cuts_the_result(monkeypatch):
  monkeypatch.setattr(sql, "MAX_RESULT_BYTES", 7)  # "Ann" + "Paris" = 8 bytes: over the limit after one row.
  result = sql.execute_sql(sql.build_database(SCRIPT), "SELECT name, city FROM customers ORDER BY id")
  assert result == sql.Execution(True, (("Ann", "Paris"),), truncated=True)
  both = "SELECT name, city FROM customers"
  assert score("sql_syntax", [wrap(both)], "SELECT 1") == [1.0]  # Executed, but cut:
  assert score("sql_execution", [wrap(both)], "SELECT 1") == [0.0]  # it never matches.
  with pytest.raises(RewardFunctionError, match=r"gold query 'SELECT name, city FROM customers' returns more than "
                                                r"max_rows=10000 rows or 7 bytes"):
    score("sql_execution", [wrap(both)], both)  # A cut gold result could match nothing.


def test_gold_queries_get_a_larger_time_limit(monkeypatch):
  limits = []

  def recording(conn, query, timeout_s, max_rows):
    limits.append((query, timeout_s))
    return execute(conn, query, timeout_s, max_rows)

  execute = sql.execute_sql
  monkeypatch.setattr(sql, "execute_sql", recording)
  assert score("sql_execution", [wrap("SELECT 1")], PARIS, {"timeout_s": 0.25}) == [0.0]
  assert limits == [("SELECT 1", 0.25), (PARIS, 0.25 * sql.GOLD_TIMEOUT_FACTOR)] and sql.GOLD_TIMEOUT_FACTOR == 10


def test_schema_items_resolve_aliases_and_qualified_names():
  items = {"customers", "orders", "customers.name", "customers.id", "orders.amount", "orders.customer_id"}
  assert sql.schema_items(JOIN, SCHEMA) == items
  assert sql.schema_items("SELECT x.name, SUM(y.amount) FROM customers x JOIN orders y ON y.customer_id = x.id "
                          "GROUP BY x.name", SCHEMA) == items
  assert sql.schema_items("SELECT name AS who FROM customers WHERE city = 'orders'", SCHEMA) == {
      "customers", "customers.name", "customers.city"}  # A string literal and an output alias are no items.
  assert sql.schema_items("SELECT COUNT(*) FROM orders, customers", SCHEMA) == {"orders", "customers"}


def test_schema_linking_jaccard_by_hand():
  # Gold PARIS uses {customers, customers.name, customers.city}.
  completions = [wrap("SELECT name, id FROM customers"),  # {customers, .name, .id}: 2 / 4
                 wrap("SELECT id FROM orders"),  # {orders, orders.id}: 0 / 5
                 wrap("SELEC name FROM customers"),  # Unparsable, still read by tokens: {customers, .name}: 2 / 3
                 wrap("SELECT name FROM customers WHERE city = 'Rome'"), "no query"]
  assert score("sql_schema_linking", completions, PARIS) == pytest.approx([0.5, 0.0, 2 / 3, 1.0, 0.0])
  # Gold JOIN uses 6 items; "SELECT name FROM customers" has 2 of them.
  assert score("sql_schema_linking", [wrap("SELECT name FROM customers")], JOIN) == pytest.approx([1 / 3])


def test_ngram_bigram_jaccard_by_hand():
  # PARIS tokens: select name from customers where city = 'Paris' -> 7 bigrams.
  # "SELECT name, city FROM customers": select name , city from customers -> 5 bigrams; shared: (select name),
  # (from customers) -> 2 / (7 + 5 - 2) = 0.2. The Rome query shares 6 of 7 + 7 bigrams -> 6 / 8.
  completions = [wrap("SELECT name, city FROM customers"), wrap("select NAME from Customers where city='Paris'"),
                 wrap(PARIS.replace("Paris", "Rome")), wrap("SELECT"), "no query"]
  assert score("sql_ngram", completions, PARIS) == pytest.approx([0.2, 1.0, 0.75, 0.0, 0.0])
  assert sql.sql_tokens("SELECT \"Name\" FROM t WHERE a<>'It''s' AND b>=1.5") == [
      "select", "name", "from", "t", "where", "a", "<>", "'It''s'", "and", "b", ">=", "1.5"]


@pytest.mark.parametrize("text, expected", [
    ("<reasoning>a</reasoning><answer>SELECT 1</answer>", 1.0),
    ("  <reasoning>\nstep 1\n</reasoning>\n\n<answer>\n```sql\nSELECT 1\n```\n</answer>\n", 1.0),
    ("<answer>SELECT 1</answer>", 0.0),  # No reasoning.
    ("<reasoning>a</reasoning><answer>SELECT 1</answer> trailing words", 0.0),
    ("<reasoning>a</reasoning><answer>  </answer>", 0.0),  # Blank answer.
    ("<answer>SELECT 1</answer><reasoning>a</reasoning>", 0.0),  # Wrong order.
    ("<reasoning>a<answer>SELECT 1</answer>", 0.0),  # Unclosed reasoning.
])
def test_format_reward(text, expected):
  assert score("sql_format", [text], PARIS) == [expected]


def test_extract_sql():
  assert sql.extract_sql(wrap(PARIS)) == PARIS
  assert sql.extract_sql("<answer>```sql\nSELECT 1;\n```</answer>") == "SELECT 1;"
  assert sql.extract_sql("Use ```sql\nSELECT 1\n``` or rather ```sql\nSELECT 2\n```") == "SELECT 2"
  assert sql.extract_sql("<answer>SELECT 3") == "SELECT 3"  # Cut off before </answer>.
  assert sql.extract_sql("SELECT 4 without tags") is None and sql.extract_sql("<answer> </answer>") is None


def test_reasoning_sql_is_the_papers_weighted_sum():
  completions = [wrap(PARIS),  # 3 + 1 + 1 + 1 + 1
                 wrap(PARIS.replace("Paris", "Rome")),  # 0 + 1 + 1 + 0.75 + 1
                 PARIS.replace("Paris", "Rome"),  # No tags: no query at all -> 0
                 "```sql\n" + PARIS + "\n```",  # Right query without the format: 3 + 1 + 1 + 1 + 0
                 # 0 + 0 + 2/3 + 2/8 (shares "name from", "from customers" of 3 + 7 bigrams) + 1
                 wrap("SELEC name FROM customers")]
  assert score("reasoning_sql", completions, PARIS) == pytest.approx([7.0, 3.75, 0.0, 6.0, 2 / 3 + 0.25 + 1])
  weighted = score("reasoning_sql", completions[:2], PARIS, {"weights": {"execution": 1.0, "format": 0.0}})
  assert weighted == pytest.approx([4.0, 2.75])
  assert sql.WEIGHTS == {"execution": 3.0, "syntax": 1.0, "schema_linking": 1.0, "ngram": 1.0, "format": 1.0}


def test_a_slow_query_is_interrupted_and_scored_as_not_executable():
  # An endless recursive CTE: without the progress handler this never returns.
  endless = "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c) SELECT COUNT(*) FROM c"
  start = time.perf_counter()
  values = score("reasoning_sql", [wrap(endless)], PARIS, {"timeout_s": 0.2})
  assert time.perf_counter() - start < 10.0
  # Not executable: execution 0, syntax 0; schema 0 (no table), ngram 0, format 1.
  assert values == [1.0]
  result = sql.execute_sql(sql.build_database(SCRIPT), endless, timeout_s=0.2)
  assert not result.ok and "interrupted" in result.error


def test_row_limit_cuts_the_result_which_then_never_matches():
  conn = sql.build_database(SCRIPT)
  result = sql.execute_sql(conn, "SELECT * FROM orders", max_rows=2)
  assert result.ok and result.truncated and len(result.rows) == 2
  assert score("sql_syntax", [wrap("SELECT * FROM orders")], "SELECT 1", {"max_rows": 2}) == [1.0]
  assert score("sql_execution", [wrap("SELECT * FROM orders")], "SELECT 1", {"max_rows": 2}) == [0.0]
  # A gold query cut by the limit would match no prediction (every completion of its row 0): an error instead.
  with pytest.raises(RewardFunctionError, match=r"gold query 'SELECT \* FROM orders' returns more than max_rows=2"):
    score("sql_execution", [wrap("SELECT * FROM orders")], "SELECT * FROM orders", {"max_rows": 2})


def test_databases_file_missing_values_and_errors_name_column_and_row(tmp_path):
  path = tmp_path / "databases.json"
  path.write_text(json.dumps({"shop": SCRIPT}))
  fn = kinds.make_reward("reasoning_sql", {"databases": str(path)})
  prompts = ["q0", "q1", "q2"]
  values = call_reward_function(fn, prompts, [wrap(PARIS)] * 3, {"gold_sql": [PARIS, None, PARIS],
                                                                  "db_id": ["shop", "shop", None]})
  assert values[0] == 7.0 and math.isnan(values[1]) and math.isnan(values[2])  # Missing gold / db: not scorable.
  with pytest.raises(RewardFunctionError, match=r"row 1 .*column 'db_id': unknown database 'shp'.*\['shop'\]"):
    call_reward_function(fn, prompts, [wrap(PARIS)] * 3, {"gold_sql": [PARIS] * 3, "db_id": ["shop", "shp", "shop"]})
  with pytest.raises(RewardFunctionError, match=r"row 2 .*column 'gold_sql': the gold query 'SELECT nme.*does not "
                                                r"execute.*no such column"):
    call_reward_function(fn, prompts, [wrap(PARIS)] * 3, {"gold_sql": [PARIS, PARIS, "SELECT nme FROM customers"],
                                                          "db_id": ["shop"] * 3})
  with pytest.raises(RewardFunctionError, match=r"column 'gold_sql' not among the prompt file's columns \['db_id'\]"):
    call_reward_function(fn, prompts, [wrap(PARIS)] * 3, {"db_id": ["shop"] * 3})
  with pytest.raises(RewardFunctionError, match=r"column 'db_id': the database 'CREATE TABL.*does not build"):
    score("sql_syntax", [wrap(PARIS)], PARIS, db="CREATE TABL x (a);")
  with pytest.raises(ConfigError, match=r"databases: cannot read .*nope.json"):
    kinds.make_reward("sql_execution", {"databases": str(tmp_path / "nope.json")})


def test_make_reward_options_are_checked():
  assert kinds.make_reward("sql_ngram", {}).__name__ == "sql_ngram"
  # The n-gram and format terms need no database column.
  assert call_reward_function(kinds.make_reward("sql_ngram", {"gold_column": "sql"}), ["q"], [wrap(PARIS)],
                              {"sql": [PARIS]})[0] == 1.0
  with pytest.raises(ConfigError, match=r"weights: unknown term 'judge'.*LLM-judge"):
    kinds.make_reward("reasoning_sql", {"weights": {"judge": 2.0}})
  with pytest.raises(ConfigError, match=r"timeout_s: expected a number of seconds > 0"):
    kinds.make_reward("sql_execution", {"timeout_s": 0})
  with pytest.raises(ConfigError, match=r"unknown option\(s\) \['column'\] for kind 'sql_syntax'"):
    kinds.make_reward("sql_syntax", {"column": "x"})
