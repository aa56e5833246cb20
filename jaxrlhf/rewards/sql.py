"""Reasoning-SQL's partial rewards for text-to-SQL (Pourreza et al. 2025, "Reasoning-SQL: Reinforcement Learning with
SQL Tailored Partial Rewards for Reasoning-Enhanced Text-to-SQL", arXiv 2503.23157: execution accuracy, LLM-judge,
syntax check, schema linking, n-gram similarity and format rewards under GRPO), executed with the standard library's
sqlite3 against in-memory databases built from the prompt file's schema + data. Provenance: the reward set is the
paper's abstract's; the weights (3 for execution accuracy, 2 for the judge, 1 for the others) and the plain sum match
public reimplementations of the paper; the paper's own reward section could not be read where this was written, so
check the weights and whether partial terms are also paid on correct queries against it before a reproduction.

The completion is expected in the paper's R1-style format, `<reasoning> ... </reasoning> <answer> ... </answer>`,
the SQL query inside the answer (a ```sql fence inside the answer is allowed). `extract_sql` takes the answer's
fenced block, else the whole answer; without an answer tag, the LAST ```sql fenced block of the completion; else
there is no query (every SQL term is 0 for that completion, not "not scorable").

Terms, each in [0, 1] for one completion with predicted query P and gold query G on database D:

  execution       r_EX  = 1 if P and G both execute on D and set(rows(P)) == set(rows(G)), else 0.
                  BIRD's comparison (bird-bench evaluation.py: `set(predicted_res) == set(ground_truth_res)`): rows
                  are compared as SETS of tuples, so row order and duplicate rows do not matter, while column order
                  and values do (a tuple (1, 'a') differs from ('a', 1)); two empty results are equal.
  syntax          r_syn = 1 if P executes on D without an error (within the limits below), else 0.
  schema_linking  r_SL  = |S(P) & S(G)| / |S(P) | S(G)|, Jaccard similarity of the schema items (tables and
                  columns) the two queries use (`schema_items`); 0 when both sets are empty or P is missing.
  ngram           r_NG  = |N(P) & N(G)| / |N(P) | N(G)|, Jaccard similarity of the SETS of token n-grams
                  (n = 2, bigrams, as in the paper) of the two queries (`sql_tokens`); 0 when both are empty.
  format          r_F   = 1 if the whole completion is `<reasoning>...</reasoning>` then `<answer>...</answer>`
                  (whitespace around and between allowed, non-empty answer), else 0.
  (LLM-as-judge)  the paper's AI-feedback reward (a Gemini judge of P against G, in [0, 1]) needs a model call and
                  is OUT OF SCOPE here; `reasoning_sql` leaves it out.

The paper's combination (`reasoning_sql`), a plain sum of the weighted terms:

    r = 3 r_EX + 1 r_syn + 1 r_SL + 1 r_NG + 1 r_F        (+ 2 r_judge in the paper, omitted)

WEIGHTS holds these. Every term is also a reward kind on its own ("sql_execution", "sql_syntax",
"sql_schema_linking", "sql_ngram", "sql_format"), each in [0, 1] unweighted.

Execution limits: each predicted query runs with a wall-clock limit (`timeout_s`, default 1 s; sqlite3's progress
handler interrupts the virtual machine every 1,000 instructions once it is spent), a row limit (`max_rows`, default
10,000 fetched rows) and a result-size limit (MAX_RESULT_BYTES, 64 MiB of fetched text and blob values); a gold
query gets GOLD_TIMEOUT_FACTOR (10) times the time limit, since its result is cached for every later completion and
its failure ends the run. A query past the time limit is "interrupted" and scored as NOT executable (syntax 0,
execution 0). A query past the row or size limit did execute (syntax 1) but its result is cut, so it never matches
(execution 0). One string or blob value may hold at most MAX_VALUE_BYTES (1,000,000 bytes, sqlite3's
SQLITE_LIMIT_LENGTH): one expression such as `length(zeroblob(3e8))` runs in a single virtual-machine step that the
progress handler cannot interrupt, so it fails at once ("string or blob too big": not executable) instead.

Model-generated SQL is untrusted. Only one statement runs (sqlite3 refuses a second one: not executable), and after
the database is built an authorizer (`_read_only_authorizer`) lets a statement do only what a read-only query needs
(SQLITE_SELECT, SQLITE_READ, SQLITE_FUNCTION, SQLITE_RECURSIVE): every write (DROP, DELETE, CREATE, ...), PRAGMA
(`PRAGMA query_only = OFF` would lift the read-only mode for every later completion on the cached connection),
ATTACH / DETACH and VACUUM (ATTACH and VACUUM INTO create files on the host), transactions, ANALYZE and the like
fail to prepare ("not authorized": not executable), and SQLITE_LIMIT_ATTACHED is 0 as a second guard. `PRAGMA
query_only` stays on as a third. The cost: table-valued functions (json_each, pragma_table_info) are refused too,
as their first use touches the schema table or a pragma; plain SELECTs with joins, subqueries, CTEs (recursive
too), window functions and scalar / aggregate functions run. A value stored in the database larger than
MAX_VALUE_BYTES cannot be read.

Databases and columns (one value per row): `gold_column` (default "gold_sql") is the gold query; `db_column`
(default "db_id") names the database: with `databases` (the path of a JSON file {db_id: SQL script of CREATE TABLE
and INSERT statements}, e.g. data/tasks/sql/databases.json) it is a key of that file, without it the column holds
the SQL script itself. A missing gold query or database (None, NaN, blank) makes the row not scorable (None). An
unknown db_id, a database script that fails, or a gold query that does not execute raises ValueError naming the
column and the value (the calling layer adds the row and its prompt): these are data errors, not policy errors.

Every SQL reward but "sql_format" counts its scored rows' cases (`rewards.outcomes`, OUTCOME_CASES): a completion
with no query, and (where the query runs) one that failed, was interrupted by the time limit, was refused as not
read-only, or whose result the limits cut; the stages print and store the totals.
"""

from __future__ import annotations

import collections
import dataclasses
import hashlib
import json
import math
import os
import re
import sqlite3
import threading
import time
from typing import Any, Callable, Mapping, Sequence

from jaxrlhf.rewards.calling import completion_text
from jaxrlhf.rewards.outcomes import Outcomes

# Reasoning-SQL's weights (module docstring); "judge" (2 in the paper) is omitted.
WEIGHTS = {"execution": 3.0, "syntax": 1.0, "schema_linking": 1.0, "ngram": 1.0, "format": 1.0}
TERMS = tuple(WEIGHTS)
DB_TERMS = frozenset(("execution", "syntax", "schema_linking"))  # The terms that run queries on the database.
DEFAULT_TIMEOUT_S = 1.0
DEFAULT_MAX_ROWS = 10_000
GOLD_TIMEOUT_FACTOR = 10.0  # A gold query's time limit is this many times `timeout_s` (module docstring).
MAX_VALUE_BYTES = 1_000_000  # SQLITE_LIMIT_LENGTH: the longest string or blob value, so one expression stays fast.
MAX_RESULT_BYTES = 64 << 20  # Text and blob bytes fetched per query: 10,000 rows of 1 MB values would be 10 GB.
# The authorizer action codes a read-only query needs (module docstring); every other action is denied.
_READ_ONLY_ACTIONS = frozenset((sqlite3.SQLITE_SELECT, sqlite3.SQLITE_READ, sqlite3.SQLITE_FUNCTION,
                                sqlite3.SQLITE_RECURSIVE))
_PROGRESS_STEPS = 1000  # sqlite3 VM instructions between two checks of the clock.

_ANSWER = re.compile(r"<answer>(.*?)(?:</answer>|\Z)", re.DOTALL | re.IGNORECASE)
_FENCE = re.compile(r"```[ \t]*(?:sql|sqlite)?[ \t]*\n?(.*?)```", re.DOTALL | re.IGNORECASE)
_FORMAT = re.compile(r"\s*<reasoning>.*?</reasoning>\s*<answer>(.*?)</answer>\s*", re.DOTALL)


# ------------------------------------------------------------------------------------------------ extraction, format
def extract_sql(text: str) -> str | None:
  """The predicted query of a completion (module docstring): the last <answer>'s ```sql block or whole text, else
  the last ```sql block of the completion; stripped; None when there is none (or it is blank)."""
  answers = _ANSWER.findall(text)
  if answers:
    span = answers[-1]
    fences = _FENCE.findall(span)
    sql = fences[-1] if fences else span
  else:
    fences = _FENCE.findall(text)
    if not fences:
      return None
    sql = fences[-1]
  sql = sql.strip()
  return sql or None


def format_score(text: str) -> float:
  """r_F: 1.0 if the whole text is <reasoning>...</reasoning> <answer>...</answer> with a non-blank answer."""
  m = _FORMAT.fullmatch(text)
  return float(m is not None and bool(m.group(1).strip()))


# ------------------------------------------------------------------------------------------------ execution
@dataclasses.dataclass(frozen=True)
class Execution:
  """The outcome of one query. ok: it ran to completion (or to the row or size limit) without an error; rows: the
  fetched rows (at most max_rows); truncated: the row or size limit cut the result; error: the sqlite3 message
  ("interrupted" for the time limit, "not authorized" for a statement that is not a read-only query) when not ok."""
  ok: bool
  rows: tuple[tuple[Any, ...], ...] = ()
  truncated: bool = False
  error: str = ""


def _read_only_authorizer(action: int, *args: Any) -> int:
  """sqlite3's authorizer: SQLITE_OK for the actions of a read-only query, SQLITE_DENY (the statement fails to
  prepare with "not authorized") for everything else, PRAGMA and ATTACH included (module docstring)."""
  del args
  return sqlite3.SQLITE_OK if action in _READ_ONLY_ACTIONS else sqlite3.SQLITE_DENY


def build_database(script: str) -> sqlite3.Connection:
  """A read-only in-memory sqlite3 database from a SQL script (CREATE TABLE + INSERT statements): the script runs
  first, then the connection is locked down for untrusted queries (`PRAGMA query_only`, no attached databases, values
  of at most MAX_VALUE_BYTES, and `_read_only_authorizer`; module docstring).

  Raises sqlite3.Error when the script fails. check_same_thread=False: rewards run on JAX's callback threads; the
  caller serializes use of one connection (`_Databases` holds a lock)."""
  conn = sqlite3.connect(":memory:", check_same_thread=False)
  try:
    conn.executescript(script)
    conn.execute("PRAGMA query_only = ON")
  except sqlite3.Error:
    conn.close()
    raise
  conn.setlimit(sqlite3.SQLITE_LIMIT_ATTACHED, 0)
  conn.setlimit(sqlite3.SQLITE_LIMIT_LENGTH, MAX_VALUE_BYTES)
  # Last: from here on the connection cannot write, PRAGMA or ATTACH, whoever calls it.
  conn.set_authorizer(_read_only_authorizer)
  return conn


def execute_sql(conn: sqlite3.Connection, sql: str, timeout_s: float = DEFAULT_TIMEOUT_S,
                max_rows: int = DEFAULT_MAX_ROWS) -> Execution:
  """Runs one statement with a wall-clock limit (the progress handler interrupts it), a row limit and a result-size
  limit (MAX_RESULT_BYTES); on a `build_database` connection a statement that is not a read-only query fails."""
  deadline = time.perf_counter() + timeout_s
  conn.set_progress_handler(lambda: int(time.perf_counter() > deadline), _PROGRESS_STEPS)
  rows, size, truncated = [], 0, False
  try:
    cursor = conn.execute(sql)
    # Row by row, so that the size limit is passed by at most one row before the fetch stops.
    for row in cursor:
      if len(rows) == max_rows:
        truncated = True
        break
      rows.append(tuple(row))
      size += sum(len(v) for v in row if isinstance(v, (str, bytes)))
      if size > MAX_RESULT_BYTES:
        truncated = True
        break
    cursor.close()
  except (sqlite3.Error, sqlite3.Warning, ValueError, OverflowError) as e:
    # sqlite3.Warning / ProgrammingError: several statements; ValueError: a NUL character in the text.
    return Execution(False, error=f"{type(e).__name__}: {e}")
  finally:
    conn.set_progress_handler(None, 0)
  return Execution(True, tuple(rows), truncated)


# The cases a SQL reward counts (rewards.outcomes): "no_query" for every term, the others where the query runs.
OUTCOME_CASES = {
    "no_query": "no SQL query found in the completion",
    "not_executable": "the query failed with an error",
    "interrupted": "the time limit stopped the query",
    "not_authorized": "the query was not a read-only query",
    "truncated": "the row or size limit cut the result",
}


def execution_case(result: Execution) -> str:
  """The OUTCOME_CASES name of a predicted query's execution ("ok" when it ran to completion, uncut)."""
  if result.ok:
    return "truncated" if result.truncated else "ok"
  if result.error.endswith(": interrupted"):
    return "interrupted"
  if "not authorized" in result.error:
    return "not_authorized"
  return "not_executable"


def results_match(predicted: Execution, gold: Execution) -> bool:
  """r_EX's test: both ran, neither was cut by the row limit, and their rows are equal as sets (BIRD)."""
  if not (predicted.ok and gold.ok) or predicted.truncated or gold.truncated:
    return False
  return set(predicted.rows) == set(gold.rows)


def database_schema(conn: sqlite3.Connection) -> dict[str, tuple[str, ...]]:
  """{table: its column names}, all lower-cased, from sqlite_master and the columns of `SELECT * ... LIMIT 0` (plain
  SELECTs, which `_read_only_authorizer` allows; PRAGMA table_info it refuses)."""
  tables = [r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type IN ('table', 'view') "
                                       "AND name NOT LIKE 'sqlite_%' ORDER BY name")]
  out = {}
  for t in tables:
    quoted = '"' + t.replace('"', '""') + '"'
    out[t.lower()] = tuple(d[0].lower() for d in conn.execute(f"SELECT * FROM {quoted} LIMIT 0").description)
  return out


# ------------------------------------------------------------------------------------------------ tokens, n-grams
_TOKEN = re.compile(r"""
    (?P<string>'(?:[^']|'')*'?)                                   # 'text', '' escapes a quote
  | (?P<quoted>"(?:[^"]|"")*"?|`[^`]*`?|\[[^\]]*\]?)              # "name", `name`, [name]
  | (?P<number>(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?)
  | (?P<word>[A-Za-z_][A-Za-z0-9_$]*)
  | (?P<op><=|>=|<>|!=|==|\|\||<<|>>|[^\s\w])
""", re.VERBOSE)


def sql_tokens(sql: str) -> list[str]:
  """SQL tokens: string literals kept as written ('Paris'), quoted identifiers unquoted and lower-cased, words
  (keywords, names) lower-cased, numbers as written, and operators (<=, >=, <>, !=, ||, single punctuation).
  Comments are not removed (a generated query rarely has them)."""
  out = []
  for m in _TOKEN.finditer(sql):
    kind, text = m.lastgroup, m.group()
    if kind == "quoted":
      out.append(text[1:-1].lower() if len(text) > 1 and text[-1] in "\"`]" else text[1:].lower())
    elif kind == "word":
      out.append(text.lower())
    else:
      out.append(text)
  return out


def jaccard(a: set, b: set) -> float:
  """|a & b| / |a | b|; 0.0 when both are empty (nothing to match earns nothing)."""
  union = a | b
  return len(a & b) / len(union) if union else 0.0


def ngrams(tokens: Sequence[str], n: int) -> set[tuple[str, ...]]:
  """The SET of n-grams of a token list (empty when it has fewer than n tokens)."""
  return {tuple(tokens[i:i + n]) for i in range(len(tokens) - n + 1)}


def ngram_similarity(predicted: str | None, gold: str, n: int = 2) -> float:
  """r_NG: Jaccard similarity of the token n-gram sets of the two queries; 0.0 without a predicted query."""
  if predicted is None:
    return 0.0
  return jaccard(ngrams(sql_tokens(predicted), n), ngrams(sql_tokens(gold), n))


# ------------------------------------------------------------------------------------------------ schema linking
# Words after which an identifier is NOT a table alias.
_KEYWORDS = frozenset("""
  abort action add after all alter always analyze and as asc attach autoincrement before begin between by cascade
  case cast check collate column commit conflict constraint create cross current current_date current_time
  current_timestamp database default deferrable deferred delete desc detach distinct do drop each else end escape
  except exclude exclusive exists explain fail filter first following for foreign from full generated glob group
  groups having if ignore immediate in index indexed initially inner insert instead intersect into is isnull join
  key last left like limit match materialized natural no not nothing notnull null nulls of offset on or order
  others outer over partition plan pragma preceding primary query raise range recursive references regexp reindex
  release rename replace restrict returning right rollback row rows savepoint select set table temp temporary then
  ties to transaction trigger unbounded union unique update using vacuum values view virtual when where window
  with without
""".split())
_TABLE_INTRODUCERS = frozenset(("from", "join", "update", "into"))


def schema_items(sql: str, schema: Mapping[str, Sequence[str]]) -> set[str]:
  """The schema items a query uses: "table" for each table it reads and "table.column" for each column it names.

  A small tokenizer pass (`sql_tokens`), no full parser:
    tables: identifiers naming a table of `schema` anywhere outside string literals (FROM / JOIN lists, subqueries,
      qualified names); an identifier right after a table (after an optional AS) that is not a keyword is that
      table's ALIAS (FROM orders AS o, FROM orders o).
    qualified columns q.c: q resolved through the aliases, else as a table name -> "table.c" when c is a column of
      that table (q.* adds nothing).
    unqualified columns c: "t.c" for every table t the query uses that has a column c (an ambiguous name in a join
      counts for each table that has it; SQLite itself rejects most such queries).
  Everything is compared lower-cased; names not in the schema (output aliases such as AS total, function names,
  misspelt columns) are not items. Limits: a CTE or subquery alias that shadows a real table name is read as that
  table; a column alias named like a real column of a used table counts as that column; identifiers inside string
  literals never count.
  """
  schema = {t.lower(): {c.lower() for c in cols} for t, cols in schema.items()}
  tokens = sql_tokens(sql)
  aliases: dict[str, str] = {}
  tables: set[str] = set()
  for i, tok in enumerate(tokens):
    if tok not in schema or (i + 1 < len(tokens) and tokens[i + 1] == "(") or (i > 0 and tokens[i - 1] == "."):
      continue
    if i + 1 < len(tokens) and tokens[i + 1] == ".":
      tables.add(tok)  # A qualified column of a table read under its own name.
      continue
    tables.add(tok)
    j = i + 1 + (i + 1 < len(tokens) and tokens[i + 1] == "as")
    if j < len(tokens) and re.fullmatch(r"[a-z_][a-z0-9_$]*", tokens[j]) and tokens[j] not in _KEYWORDS:
      aliases[tokens[j]] = tok
  items = set(tables)
  for i, tok in enumerate(tokens):
    if i + 2 < len(tokens) and tokens[i + 1] == "." and (i == 0 or tokens[i - 1] != "."):
      table = aliases.get(tok, tok)
      if table in schema and tokens[i + 2] in schema[table]:
        items.add(f"{table}.{tokens[i + 2]}")
      continue
    if (i > 0 and tokens[i - 1] == ".") or tok in _KEYWORDS or (i + 1 < len(tokens) and tokens[i + 1] == "("):
      continue
    for table in tables:
      if tok in schema[table]:
        items.add(f"{table}.{tok}")
  return items


def schema_linking(predicted: str | None, gold: str, schema: Mapping[str, Sequence[str]]) -> float:
  """r_SL: Jaccard similarity of `schema_items` of the two queries; 0.0 without a predicted query."""
  if predicted is None:
    return 0.0
  return jaccard(schema_items(predicted, schema), schema_items(gold, schema))


# ------------------------------------------------------------------------------------------------ rows -> scores
def _missing(value: Any) -> bool:
  return value is None or (isinstance(value, float) and math.isnan(value)) or (isinstance(value, str)
                                                                              and not value.strip())


class _Databases:
  """Built databases (connection, schema) by script, and gold results by (script, gold), for one reward factory."""

  def __init__(self, databases: str, timeout_s: float, max_rows: int, cache_size: int = 64):
    self.scripts: dict[str, str] | None = None
    if databases:
      try:
        with open(os.fspath(databases)) as f:
          scripts = json.load(f)
      except (OSError, json.JSONDecodeError) as e:
        raise ValueError(f"databases: cannot read {databases!r} as a JSON object {{db_id: SQL script}}: "
                         f"{type(e).__name__}: {e}") from e
      if not isinstance(scripts, dict) or not all(isinstance(v, str) for v in scripts.values()):
        raise ValueError(f"databases: {databases!r} must hold a JSON object {{db_id: SQL script}}")
      self.scripts = scripts
    self.databases_path = databases
    self.timeout_s, self.max_rows, self.cache_size = timeout_s, max_rows, cache_size
    self.conns: collections.OrderedDict[str, tuple[sqlite3.Connection, dict]] = collections.OrderedDict()
    self.gold: dict[tuple[str, str], Execution] = {}
    self.lock = threading.Lock()

  def script(self, db_column: str, value: Any) -> str:
    if self.scripts is None:
      if not isinstance(value, str):
        raise ValueError(f"column {db_column!r}: expected a SQL script (CREATE TABLE / INSERT statements), got "
                         f"{type(value).__name__} {value!r}")
      return value
    if str(value) not in self.scripts:
      raise ValueError(f"column {db_column!r}: unknown database {value!r}, not a key of {self.databases_path!r} "
                       f"(its databases: {sorted(self.scripts)})")
    return self.scripts[str(value)]

  def connection(self, db_column: str, value: Any, script: str) -> tuple[sqlite3.Connection, dict]:
    key = hashlib.sha256(script.encode()).hexdigest()
    if key in self.conns:
      self.conns.move_to_end(key)
      return self.conns[key]
    try:
      conn = build_database(script)
    except sqlite3.Error as e:
      raise ValueError(f"column {db_column!r}: the database {str(value)[:60]!r} does not build: "
                       f"{type(e).__name__}: {e}") from e
    self.conns[key] = (conn, database_schema(conn))
    if len(self.conns) > self.cache_size:
      self.conns.popitem(last=False)[1][0].close()
    return self.conns[key]

  def score_rows(self, completions: Sequence[Any], columns: Mapping[str, Sequence[Any]], gold_column: str,
                 db_column: str, terms: Sequence[str], name: str, outcomes: Outcomes | None = None
                 ) -> list[dict[str, float] | None]:
    """{term: value} per row (None where the gold query or the database is missing); the scored rows' cases
    (OUTCOME_CASES) are added to `outcomes`."""
    needs_db = bool(DB_TERMS & set(terms))
    for column in (gold_column, db_column) if needs_db else (gold_column,):
      if column not in columns:
        raise ValueError(f"{name}: column {column!r} not among the prompt file's columns {sorted(columns)}")
    out, counts = [], collections.Counter()
    with self.lock:
      dbs = columns[db_column] if needs_db else [None] * len(completions)
      for completion, gold, db in zip(completions, columns[gold_column], dbs):
        if _missing(gold) or (needs_db and _missing(db)):
          out.append(None)
          continue
        gold = str(gold)
        text = completion_text(completion)
        sql = extract_sql(text)
        values = {}
        counts["no_query"] += not sql
        if needs_db:
          script = self.script(db_column, db)
          conn, schema = self.connection(db_column, db, script)
          predicted = execute_sql(conn, sql, self.timeout_s, self.max_rows) if sql else Execution(False, error="none")
          if sql:
            counts[execution_case(predicted)] += 1
          if "execution" in terms:
            values["execution"] = float(results_match(predicted, self._gold(conn, script, gold, gold_column)))
          if "syntax" in terms:
            values["syntax"] = float(predicted.ok)
          if "schema_linking" in terms:
            values["schema_linking"] = schema_linking(sql, gold, schema)
        if "ngram" in terms:
          values["ngram"] = ngram_similarity(sql, gold)
        if "format" in terms:
          values["format"] = format_score(text)
        out.append(values)
    if outcomes is not None:
      outcomes.add(sum(v is not None for v in out), {k: n for k, n in counts.items() if k != "ok"})
    return out

  def _gold(self, conn: sqlite3.Connection, script: str, gold: str, gold_column: str) -> Execution:
    key = (hashlib.sha256(script.encode()).hexdigest(), gold)
    if key not in self.gold:
      timeout_s = self.timeout_s * GOLD_TIMEOUT_FACTOR
      result = execute_sql(conn, gold, timeout_s, self.max_rows)
      if not result.ok:
        raise ValueError(f"column {gold_column!r}: the gold query {gold[:80]!r} does not execute (time limit "
                         f"{timeout_s:g} s): {result.error}")
      if result.truncated:  # A cut gold result matches nothing: every completion of the row would score 0.
        raise ValueError(f"column {gold_column!r}: the gold query {gold[:80]!r} returns more than max_rows="
                         f"{self.max_rows} rows or {MAX_RESULT_BYTES} bytes, so no prediction could match it; raise "
                         f"max_rows or fix the gold query")
      if len(self.gold) >= 4096:
        self.gold.clear()
      self.gold[key] = result
    return self.gold[key]


def _check_limits(timeout_s: float, max_rows: int) -> None:
  if isinstance(timeout_s, bool) or not isinstance(timeout_s, (int, float)) or not timeout_s > 0:
    raise ValueError(f"timeout_s: expected a number of seconds > 0, got {timeout_s!r}")
  if isinstance(max_rows, bool) or not isinstance(max_rows, int) or max_rows < 1:
    raise ValueError(f"max_rows: expected an integer >= 1, got {max_rows!r}")


def _factory(terms: Sequence[str], weights: Mapping[str, float], name: str, gold_column: str, db_column: str,
             databases: str, timeout_s: float, max_rows: int) -> Callable[..., list[float | None]]:
  _check_limits(timeout_s, max_rows)
  dbs = _Databases(databases, timeout_s, max_rows)

  needs_db = bool(DB_TERMS & set(terms))
  outcomes = Outcomes(OUTCOME_CASES if needs_db else {"no_query": OUTCOME_CASES["no_query"]})

  def reward(prompts: Sequence[Any], completions: Sequence[Any], **columns) -> list[float | None]:
    del prompts
    rows = dbs.score_rows(completions, columns, gold_column, db_column, terms, name, outcomes)
    return [None if v is None else float(sum(weights[t] * v[t] for t in terms)) for v in rows]

  reward.__name__ = reward.__qualname__ = name
  reward.outcomes = outcomes
  return reward


def _single(term: str, name: str, doc: str):
  def factory(gold_column: str = "gold_sql", db_column: str = "db_id", databases: str = "",
              timeout_s: float = DEFAULT_TIMEOUT_S, max_rows: int = DEFAULT_MAX_ROWS):
    return _factory((term,), {term: 1.0}, name, gold_column, db_column, databases, timeout_s, max_rows)
  factory.__name__ = factory.__qualname__ = name
  factory.__doc__ = (f"Reward function: {doc} in [0, 1] (module docstring). Options: gold_column, db_column, "
                     "databases (a JSON file {db_id: SQL script}, or '' when db_column holds the script), "
                     "timeout_s and max_rows (execution limits).")
  return factory


sql_execution = _single("execution", "sql_execution", "Reasoning-SQL's execution accuracy r_EX (BIRD's set "
                        "comparison of result rows)")
sql_syntax = _single("syntax", "sql_syntax", "Reasoning-SQL's syntax check r_syn (the query executes)")
sql_schema_linking = _single("schema_linking", "sql_schema_linking", "Reasoning-SQL's schema-linking reward r_SL "
                             "(Jaccard of the tables and columns used)")
sql_ngram = _single("ngram", "sql_ngram", "Reasoning-SQL's n-gram similarity r_NG (Jaccard of token bigrams)")


def sql_format():
  """Reward function: Reasoning-SQL's format reward r_F in {0, 1}: the completion is exactly
  <reasoning>...</reasoning> <answer>...</answer> (module docstring)."""

  def reward(prompts: Sequence[Any], completions: Sequence[Any], **columns) -> list[float]:
    del prompts, columns
    return [format_score(completion_text(c)) for c in completions]

  reward.__name__ = reward.__qualname__ = "sql_format"
  return reward


def reasoning_sql(gold_column: str = "gold_sql", db_column: str = "db_id", databases: str = "",
                  weights: Mapping[str, float] | None = None, timeout_s: float = DEFAULT_TIMEOUT_S,
                  max_rows: int = DEFAULT_MAX_ROWS):
  """Reward function: Reasoning-SQL's combined reward r = sum_k w_k r_k over the terms of WEIGHTS (execution 3,
  syntax 1, schema_linking 1, ngram 1, format 1; the paper's LLM-judge term, weight 2, is omitted), in [0, 7].

  Args:
    gold_column, db_column, databases: where the gold query and the database come from (module docstring).
    weights: overrides of WEIGHTS by term name (a term with weight 0 is still computed).
    timeout_s, max_rows: the execution limits of each query.
  """
  merged = dict(WEIGHTS)
  for term, w in dict(weights or {}).items():
    if term not in WEIGHTS:
      raise ValueError(f"weights: unknown term {term!r}; the terms are {list(WEIGHTS)} (the paper's LLM-judge "
                       "term is not implemented)")
    if isinstance(w, bool) or not isinstance(w, (int, float)) or not math.isfinite(w):
      raise ValueError(f"weights[{term!r}]: expected a finite number, got {w!r}")
    merged[term] = float(w)
  return _factory(TERMS, merged, "reasoning_sql", gold_column, db_column, databases, timeout_s, max_rows)
