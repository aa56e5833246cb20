"""A generated text-to-SQL task for Reasoning-SQL's rewards (`jaxrlhf.rewards.sql`): three small SQLite databases
(shop, school, library) with fixed rows, and questions from templates with their gold queries.

A database is a SQL script (CREATE TABLE + INSERT statements, `database_script`), stored as text in
databases.json ({db_id: script}); no binary .sqlite file. Entity tables (customers, products, students, ...) are
literal; the link tables (orders, enrollments, loans) are drawn from SHA-256 hashes of fixed strings, so every
database is the same on every machine and Python version.

A question template is (question text, gold SQL, parameter) over one database: selection, filter, join,
aggregate, group-by and order/limit queries; the parameter takes each value of a column of the data (a city, a
category, a name) or of a fixed list (a threshold, a count). A problem is (db_id, template, value); only problems
whose gold query returns at least one non-NULL value are kept (an aggregate over no rows, e.g. the SUM of a
customer's orders when there are none, returns one all-NULL row, which any query that finds nothing would match).
The "train" and "eval" splits draw from DISJOINT problems (a problem is held out when its hash with the seed falls
below `eval_share`), with replacement, and row i does not depend on n. A row is

    {"prompt": [{"role": "user", "content": <schema DDL> <question> <instruction>}], "gold_sql": "SELECT ...",
     "db_id": "shop", "id": "train-0"}

The instruction asks for the paper's output format: reasoning inside <reasoning>...</reasoning>, then one SQLite
query inside <answer>...</answer>. The prompt shows the CREATE TABLE statements only, not the rows.
"""

from __future__ import annotations

import json
import os
import sqlite3
from typing import Any

from jaxrlhf.data import generated
from jaxrlhf.data.generated import stable_hash

SPLITS = ("train", "eval")
INSTRUCTION = ("First think step by step inside <reasoning> </reasoning> tags, then give one SQLite query that "
               "answers the question inside <answer> </answer> tags.")


# db_id -> [(table, "column TYPE, ...", rows)]; link-table rows are filled in by `_link_rows`.
_CITIES = ("Paris", "Rome", "Berlin", "Madrid")
_TABLES: dict[str, list[tuple[str, str, list[tuple]]]] = {
    "shop": [
        ("customers", "id INTEGER PRIMARY KEY, name TEXT, city TEXT",
         [(i + 1, name, _CITIES[i % 4]) for i, name in enumerate(
             ("Alice", "Bruno", "Chen", "Dara", "Emil", "Fatou", "Gwen", "Hiro", "Ines", "Jonas"))]),
        ("products", "id INTEGER PRIMARY KEY, name TEXT, category TEXT, price REAL",
         [(1, "kettle", "kitchen", 24.5), (2, "toaster", "kitchen", 31.0), (3, "blender", "kitchen", 55.25),
          (4, "lamp", "home", 18.75), (5, "rug", "home", 89.0), (6, "mirror", "home", 42.0),
          (7, "headphones", "audio", 64.99), (8, "speaker", "audio", 120.0), (9, "radio", "audio", 35.5)]),
        ("orders", "id INTEGER PRIMARY KEY, customer_id INTEGER, product_id INTEGER, quantity INTEGER", []),
    ],
    "school": [
        ("students", "id INTEGER PRIMARY KEY, name TEXT, year INTEGER, city TEXT",
         [(i + 1, name, 1 + i % 3, _CITIES[(i * 3) % 4]) for i, name in enumerate(
             ("Ana", "Ben", "Cleo", "Dev", "Eli", "Fay", "Gus", "Hana", "Ivo", "Jade", "Kai", "Lea"))]),
        ("courses", "id INTEGER PRIMARY KEY, title TEXT, department TEXT, credits INTEGER",
         [(1, "Algebra", "math", 5), (2, "Geometry", "math", 4), (3, "Statistics", "math", 3),
          (4, "Poetry", "literature", 2), (5, "Novels", "literature", 3), (6, "Mechanics", "physics", 6),
          (7, "Optics", "physics", 4)]),
        ("enrollments", "id INTEGER PRIMARY KEY, student_id INTEGER, course_id INTEGER, score INTEGER", []),
    ],
    "library": [
        ("authors", "id INTEGER PRIMARY KEY, name TEXT, country TEXT",
         [(1, "Achebe", "Nigeria"), (2, "Borges", "Argentina"), (3, "Calvino", "Italy"), (4, "Duras", "France"),
          (5, "Eco", "Italy"), (6, "Ferrante", "Italy"), (7, "Gordimer", "South Africa")]),
        ("books", "id INTEGER PRIMARY KEY, title TEXT, author_id INTEGER, year INTEGER, pages INTEGER",
         [(1, "Arrow of God", 1, 1964, 287), (2, "Ficciones", 2, 1944, 174), (3, "The Aleph", 2, 1949, 210),
          (4, "Invisible Cities", 3, 1972, 165), (5, "The Baron in the Trees", 3, 1957, 217),
          (6, "The Lover", 4, 1984, 117), (7, "The Name of the Rose", 5, 1980, 536),
          (8, "Foucault's Pendulum", 5, 1988, 641), (9, "My Brilliant Friend", 6, 2011, 331),
          (10, "July's People", 7, 1981, 160), (11, "Things Fall Apart", 1, 1958, 209)]),
        ("loans", "id INTEGER PRIMARY KEY, book_id INTEGER, member TEXT, days INTEGER", []),
    ],
}
_MEMBERS = ("Nora", "Omar", "Pia", "Quinn", "Rosa")


def _link_rows(db_id: str) -> list[tuple]:
  """The link table's rows: 24 orders / 30 enrollments / 20 loans drawn from fixed hashes."""
  if db_id == "shop":
    return [(i + 1, 1 + stable_hash("order.customer", i) % 10, 1 + stable_hash("order.product", i) % 9,
             1 + stable_hash("order.quantity", i) % 5) for i in range(24)]
  if db_id == "school":
    return [(i + 1, 1 + stable_hash("enroll.student", i) % 12, 1 + stable_hash("enroll.course", i) % 7,
             40 + stable_hash("enroll.score", i) % 61) for i in range(30)]
  return [(i + 1, 1 + stable_hash("loan.book", i) % 11, _MEMBERS[stable_hash("loan.member", i) % 5],
           1 + stable_hash("loan.days", i) % 28) for i in range(20)]


def _literal(value: Any) -> str:
  return "'" + value.replace("'", "''") + "'" if isinstance(value, str) else repr(value)


def database_script(db_id: str, with_rows: bool = True) -> str:
  """The database's SQL script: one CREATE TABLE per table (the schema the prompt shows) and, with rows, one INSERT
  per table."""
  if db_id not in _TABLES:
    raise ValueError(f"db_id must be one of {sorted(_TABLES)}, got {db_id!r}")
  lines = []
  for table, columns, rows in _TABLES[db_id]:
    lines.append(f"CREATE TABLE {table} ({columns});")
  if with_rows:
    for table, _, rows in _TABLES[db_id]:
      rows = rows or _link_rows(db_id)
      lines.append(f"INSERT INTO {table} VALUES " + ", ".join("(" + ", ".join(map(_literal, r)) + ")" for r in rows)
                   + ";")
  return "\n".join(lines)


def databases() -> dict[str, str]:
  """{db_id: SQL script} of every database."""
  return {db_id: database_script(db_id) for db_id in sorted(_TABLES)}


# (question, gold SQL, parameter): the parameter is "table.column" (each distinct value in the data), a tuple of
# fixed values, or None. {v} in both texts is the value (quoted as a SQL string in the SQL when it is a string).
_TEMPLATES: dict[str, tuple[tuple[str, str, Any], ...]] = {
    "shop": (
        ("List the names of the customers who live in {v}.", "SELECT name FROM customers WHERE city = {v}",
         "customers.city"),
        ("How many products are in the {v} category?", "SELECT COUNT(*) FROM products WHERE category = {v}",
         "products.category"),
        ("What are the names of the products that cost more than {v}?", "SELECT name FROM products WHERE price > {v}",
         (20, 40, 60, 100)),
        ("What is the name and price of the most expensive product?",
         "SELECT name, price FROM products ORDER BY price DESC LIMIT 1", None),
        ("List the names of the {v} cheapest products.", "SELECT name FROM products ORDER BY price ASC LIMIT {v}",
         (2, 3, 4)),
        ("What is the average price of the products in the {v} category?",
         "SELECT AVG(price) FROM products WHERE category = {v}", "products.category"),
        ("For each city, how many customers live there?", "SELECT city, COUNT(*) FROM customers GROUP BY city", None),
        ("What is the total quantity of items ordered by the customer named {v}?",
         "SELECT SUM(o.quantity) FROM orders AS o JOIN customers AS c ON o.customer_id = c.id WHERE c.name = {v}",
         "customers.name"),
        ("Which customers ordered the product {v}? Give their names.",
         "SELECT DISTINCT c.name FROM customers AS c JOIN orders AS o ON o.customer_id = c.id JOIN products AS p "
         "ON o.product_id = p.id WHERE p.name = {v}", "products.name"),
        ("For each product category, what is the total quantity ordered?",
         "SELECT p.category, SUM(o.quantity) FROM orders AS o JOIN products AS p ON o.product_id = p.id "
         "GROUP BY p.category", None),
    ),
    "school": (
        ("List the names of the students in year {v}.", "SELECT name FROM students WHERE year = {v}", (1, 2, 3)),
        ("How many students come from {v}?", "SELECT COUNT(*) FROM students WHERE city = {v}", "students.city"),
        ("What are the titles of the courses of the {v} department?",
         "SELECT title FROM courses WHERE department = {v}", "courses.department"),
        ("Which course has the most credits? Give its title.",
         "SELECT title FROM courses ORDER BY credits DESC LIMIT 1", None),
        ("What is the highest score in the course {v}?",
         "SELECT MAX(e.score) FROM enrollments AS e JOIN courses AS c ON e.course_id = c.id WHERE c.title = {v}",
         "courses.title"),
        ("List the titles of the courses that the student {v} is enrolled in.",
         "SELECT DISTINCT c.title FROM courses AS c JOIN enrollments AS e ON e.course_id = c.id JOIN students AS s "
         "ON e.student_id = s.id WHERE s.name = {v}", "students.name"),
        ("For each department, how many courses does it offer?",
         "SELECT department, COUNT(*) FROM courses GROUP BY department", None),
        ("What is the average score of each student year?",
         "SELECT s.year, AVG(e.score) FROM enrollments AS e JOIN students AS s ON e.student_id = s.id "
         "GROUP BY s.year", None),
        ("List the names of the students who scored at least {v} in some course.",
         "SELECT DISTINCT s.name FROM students AS s JOIN enrollments AS e ON e.student_id = s.id WHERE e.score >= {v}",
         (60, 75, 90)),
    ),
    "library": (
        ("What are the titles of the books published after {v}?", "SELECT title FROM books WHERE year > {v}",
         (1950, 1970, 1980)),
        ("List the names of the authors from {v}.", "SELECT name FROM authors WHERE country = {v}",
         "authors.country"),
        ("What is the title of the longest book?", "SELECT title FROM books ORDER BY pages DESC LIMIT 1", None),
        ("How many books did the author {v} write?",
         "SELECT COUNT(*) FROM books AS b JOIN authors AS a ON b.author_id = a.id WHERE a.name = {v}",
         "authors.name"),
        ("What are the titles of the books written by authors from {v}?",
         "SELECT b.title FROM books AS b JOIN authors AS a ON b.author_id = a.id WHERE a.country = {v}",
         "authors.country"),
        ("For each country, how many authors come from it?",
         "SELECT country, COUNT(*) FROM authors GROUP BY country", None),
        ("How many days in total has the member {v} kept borrowed books?",
         "SELECT SUM(days) FROM loans WHERE member = {v}", "loans.member"),
        ("Which books has the member {v} borrowed? Give their titles.",
         "SELECT DISTINCT b.title FROM books AS b JOIN loans AS l ON l.book_id = b.id WHERE l.member = {v}",
         "loans.member"),
        ("List the titles of the {v} oldest books.", "SELECT title FROM books ORDER BY year ASC LIMIT {v}", (2, 3)),
    ),
}


def _values(conn: sqlite3.Connection, parameter: Any) -> list[Any]:
  if parameter is None:
    return [None]
  if isinstance(parameter, tuple):
    return list(parameter)
  table, column = parameter.split(".")
  return [r[0] for r in conn.execute(f"SELECT DISTINCT {column} FROM {table} ORDER BY {column}")]


def problems() -> list[dict[str, Any]]:
  """Every problem (db_id, question, gold SQL) whose gold query returns a non-NULL value, in a fixed order."""
  out = []
  for db_id, templates in _TEMPLATES.items():
    conn = sqlite3.connect(":memory:")
    conn.executescript(database_script(db_id))
    for t, (question, sql, parameter) in enumerate(templates):
      for value in _values(conn, parameter):
        gold = sql.format(v=_literal(value))
        if any(v is not None for row in conn.execute(gold).fetchall() for v in row):
          out.append({"db_id": db_id, "template": t, "question": question.format(v=value), "gold_sql": gold})
    conn.close()
  return out


def prompt_text(db_id: str, question: str, instruction: str = INSTRUCTION) -> str:
  """The user message: the schema's CREATE TABLE statements, the question and the instruction."""
  return f"Database schema (SQLite):\n{database_script(db_id, with_rows=False)}\n\nQuestion: {question}\n{instruction}"


def sql_rows(seed: int, n: int, split: str = "train", eval_share: float = 0.2) -> list[dict[str, Any]]:
  """`n` rows of the "prompts" file format (module docstring) for `split` ("train" or "eval")."""
  generated.check_split_request(split, SPLITS, n, eval_share)
  pool = [p for p in problems()
          if (stable_hash("split", seed, p["db_id"], p["gold_sql"]) < eval_share * 2.0**64) == (split == "eval")]
  if not pool:
    raise ValueError(f"split {split!r}: no problems in it for seed {seed} and eval_share {eval_share} (raise "
                     "eval_share for an empty 'eval' split, lower it for an empty 'train' split)")
  rows = []
  for i in range(n):
    p = pool[stable_hash("problem", seed, split, i) % len(pool)]
    rows.append({"prompt": [{"role": "user", "content": prompt_text(p["db_id"], p["question"])}],
                 "gold_sql": p["gold_sql"], "db_id": p["db_id"], "id": f"{split}-{i}"})
  return rows


def write_sql_files(folder: str | os.PathLike, seed: int, num_train: int, num_eval: int) -> tuple[str, str, str]:
  """Writes `folder`/sql_train.jsonl, sql_eval.jsonl (disjoint problems) and databases.json; returns their paths."""
  paths = generated.write_split_files(folder, "sql_{split}.jsonl", lambda split, n: sql_rows(seed, n, split),
                                      (("train", num_train), ("eval", num_eval)))
  db_path = os.path.join(os.fspath(folder), "databases.json")
  with open(db_path, "w") as f:
    json.dump(databases(), f, indent=1, sort_keys=True)
    f.write("\n")
  return paths[0], paths[1], db_path
