"""Outcome counts: how many rows a reward function scored under each named case it cannot show in its value.

A reward of 0 says nothing about why: a SQL query that ran and returned the wrong rows, one the time limit stopped,
and a completion with no query in it all score 0. A reward function may therefore carry an `Outcomes` counter as
its attribute `outcomes`; it adds the rows of each call to `rows` and a row to each case it met (one row may count
in several cases, or in none: the cases are not a partition). The stages that call reward functions report the
totals (`report`: one printed line per function and a dict in the stage's results), so that a case such as
"interrupted by the time limit" is counted, not hidden in the reward's mean.

The counter is cumulative and host-side: the rows a function scored in this process, since the stage started or
resumed (a resumed run reports the rows after the resume). Built-in kinds with counters: the SQL rewards
("no_query", "not_executable", "interrupted", "not_authorized", "truncated"), "exact_match" ("no_answer"), "toolrl"
("bad_format", "no_tool_call", "unparsable_tool_call"), and "weighted_sum" (its terms' cases, each named
"<term label>/<case>").
"""

from __future__ import annotations

import sys
import threading
from typing import Any, Iterable, Mapping


class Outcomes:
  """A thread-safe count of rows per named case (reward functions run on JAX's callback threads).

  Args:
    cases: the case names this function may count, {name: what it means} (for the report's wording and to catch a
      misspelt case at the first `add`).
  """

  def __init__(self, cases: Mapping[str, str]):
    if not cases:
      raise ValueError("Outcomes: expected at least one case")
    self.cases = dict(cases)
    self._lock = threading.Lock()
    self._rows = 0
    self._counts = {name: 0 for name in self.cases}

  def add(self, rows: int, counts: Mapping[str, int]) -> None:
    """Adds one call: `rows` rows scored, `counts[case]` of them in each case (cases not named count 0)."""
    unknown = sorted(set(counts) - set(self.cases))
    if unknown:
      raise ValueError(f"Outcomes.add: unknown case(s) {unknown}; this function's cases are {sorted(self.cases)}")
    with self._lock:
      self._rows += int(rows)
      for name, n in counts.items():
        self._counts[name] += int(n)

  def totals(self) -> dict[str, int]:
    """{"rows": rows scored, case: rows in that case} since construction."""
    with self._lock:
      return {"rows": self._rows, **self._counts}

  def describe(self, case: str) -> str:
    return self.cases[case]


class CombinedOutcomes:
  """The cases of several functions' counters as one view (a weighted sum's terms): case "<label>/<case>"."""

  def __init__(self, parts: Iterable[tuple[str, Outcomes]]):
    self.parts = list(parts)
    self.cases = {f"{label}/{name}": text for label, o in self.parts for name, text in o.cases.items()}

  def totals(self) -> dict[str, int]:
    """{"rows": the largest of the parts' row counts (each term scores every row once), "<label>/<case>": n}."""
    out = {"rows": 0}
    for label, o in self.parts:
      t = o.totals()
      out["rows"] = max(out["rows"], t.pop("rows"))
      out.update({f"{label}/{name}": n for name, n in t.items()})
    return out

  def describe(self, case: str) -> str:
    return self.cases[case]


def outcomes_of(fn: Any) -> Outcomes | CombinedOutcomes | None:
  """The counter a reward function carries (`fn.outcomes`), or None."""
  o = getattr(fn, "outcomes", None)
  return o if isinstance(o, (Outcomes, CombinedOutcomes)) else None


def report(counters: Mapping[str, Any], where: str = "", stream: Any = None) -> dict[str, dict[str, int]]:
  """{name: totals} of the counters (None entries skipped), printing one line per counter that scored rows, e.g.
  "[reward] train sql: 4096 rows scored; interrupted 12 (the time limit stopped the query); no_query 310 (...)"
  (`where` = "train"). Cases with a zero count are kept in the dict and left out of the line."""
  stream = stream or sys.stdout
  out = {}
  for label, counter in counters.items():
    if counter is None:
      continue
    totals = counter.totals()
    out[label] = totals
    if not totals["rows"]:
      continue
    seen = [f"{name} {n} ({counter.describe(name)})" for name, n in totals.items() if name != "rows" and n]
    print(f"[reward] {where + ' ' if where else ''}{label}: {totals['rows']} rows scored; " + ("; ".join(seen) if seen else "no case counted"),
          file=stream, flush=True)
  return out
