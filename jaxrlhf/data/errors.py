"""Bad-input accounting shared by the adapters, builders and pipeline.

Two modes: strict (the default for small hand-made files) raises `ValueError("file:line: reason: detail")` at the
first bad row; lenient skips the row and counts its reason in a `SkipReport`, which the caller logs
(`format_skip_report`) and puts into the run summary (`SkipReport.as_dict`). Nothing is dropped silently: every
skipped row is counted under exactly one reason.
"""

import collections
import dataclasses

# Reasons a row can be rejected for; the keys of `SkipReport.counts`.
MALFORMED_JSON = "malformed_json"
NOT_AN_OBJECT = "not_an_object"
MISSING_FIELD = "missing_field"
EMPTY_FIELD = "empty_field"
NON_STRING_CONTENT = "non_string_content"
BAD_MESSAGES = "bad_messages"
IDENTICAL_RESPONSES = "identical_responses"
NON_FINITE_SCORE = "non_finite_score"
BAD_SCORE = "bad_score"
NO_PREFERENCE = "no_preference"
BAD_FIELD = "bad_field"
REASONS = (MALFORMED_JSON, NOT_AN_OBJECT, MISSING_FIELD, EMPTY_FIELD, NON_STRING_CONTENT, BAD_MESSAGES,
           IDENTICAL_RESPONSES, NON_FINITE_SCORE, BAD_SCORE, NO_PREFERENCE, BAD_FIELD)

_MAX_EXAMPLES_PER_REASON = 3


class DataFileError(ValueError):
  """A bad row of an input file in strict mode: the message is "file:line: reason: detail"."""


class RecordError(ValueError):
  """A bad row: `reason` is one of `REASONS`, `detail` says what was found and what was expected."""

  def __init__(self, reason: str, detail: str):
    if reason not in REASONS:
      raise ValueError(f"reason must be one of {REASONS}, got {reason!r}")
    super().__init__(f"{reason}: {detail}")
    self.reason = reason
    self.detail = detail


@dataclasses.dataclass
class SkipReport:
  """Counts of skipped rows per reason, plus counts of kept rows that needed a documented fallback.

  Attributes:
    counts: reason -> number of rows skipped for it.
    notes: note -> number of rows kept after a documented fallback (e.g. "hh_diverging_dialogue").
    examples: reason -> the first few "file:line: detail" strings, for the log.
    kept: number of records produced.
  """

  counts: collections.Counter = dataclasses.field(default_factory=collections.Counter)
  notes: collections.Counter = dataclasses.field(default_factory=collections.Counter)
  examples: dict = dataclasses.field(default_factory=dict)
  kept: int = 0

  def skip(self, error: RecordError, where: str) -> None:
    """Counts one skipped row."""
    self.counts[error.reason] += 1
    shown = self.examples.setdefault(error.reason, [])
    if len(shown) < _MAX_EXAMPLES_PER_REASON:
      shown.append(f"{where}: {error.detail}")

  def note(self, name: str) -> None:
    """Counts one kept row that took a documented fallback path."""
    self.notes[name] += 1

  @property
  def skipped(self) -> int:
    return sum(self.counts.values())

  def merge(self, other: "SkipReport") -> "SkipReport":
    """Adds `other`'s counts into this report (in place) and returns self."""
    self.counts.update(other.counts)
    self.notes.update(other.notes)
    self.kept += other.kept
    for reason, shown in other.examples.items():
      mine = self.examples.setdefault(reason, [])
      mine.extend(shown[:_MAX_EXAMPLES_PER_REASON - len(mine)])
    return self

  def as_dict(self) -> dict:
    """A JSON-friendly summary: {"kept", "skipped", "skipped/<reason>", "note/<name>"} (for the run summary)."""
    out = {"kept": self.kept, "skipped": self.skipped}
    out.update({f"skipped/{r}": n for r, n in sorted(self.counts.items())})
    out.update({f"note/{r}": n for r, n in sorted(self.notes.items())})
    return out


def format_skip_report(report: SkipReport, name: str = "data") -> str:
  """One log line, e.g. `data: kept 98, skipped 2 (malformed_json=1, empty_field=1; first: a.jsonl:3: ...)`."""
  line = f"{name}: kept {report.kept}, skipped {report.skipped}"
  if report.counts:
    parts = ", ".join(f"{r}={n}" for r, n in sorted(report.counts.items()))
    first = "; ".join(report.examples[r][0] for r in sorted(report.counts) if report.examples.get(r))
    line += f" ({parts}; first: {first})"
  if report.notes:
    line += "; notes: " + ", ".join(f"{r}={n}" for r, n in sorted(report.notes.items()))
  return line
