"""Random JSON rows through every adapter: lenient mode gives a record or a counted, explained skip for each row,
strict mode raises "file:line: reason: detail" at the first bad row, and nothing else is ever raised."""

import json
import re

from hypothesis import HealthCheck, example, given, settings, strategies as st

from jaxrlhf.data import adapters, errors
from jaxrlhf.data.records import KWayRecord, PreferenceRecord, record_from_json, record_to_json

FUZZ = settings(max_examples=150, deadline=2000, suppress_health_check=[HealthCheck.function_scoped_fixture])

_SCALARS = (st.none() | st.booleans() | st.integers(-2**70, 2**70) | st.floats(allow_nan=True, allow_infinity=True)
            | st.text(max_size=6) | st.sampled_from(["", " ", "user", "assistant", "system", "\n\nAssistant:",
                                                      "\n\nHuman: hi\n\nAssistant: x"]))
_JSON = st.recursive(_SCALARS, lambda inner: st.lists(inner, max_size=3)
                     | st.dictionaries(st.text(max_size=5), inner, max_size=3), max_leaves=6)
_MESSAGE = st.fixed_dictionaries({"role": st.sampled_from(["user", "assistant", "system", "robot", 3]),
                                  "content": st.text(max_size=4) | _SCALARS})
_MESSAGES = st.lists(_MESSAGE | _JSON, max_size=4)
_HH = st.lists(st.sampled_from(["\n\nHuman:", "\n\nAssistant:", " hi", " x", " ", ""]), max_size=6).map("".join)
_COMPLETION = st.fixed_dictionaries({"response": st.text(max_size=4) | _SCALARS,
                                     "overall_score": _SCALARS | st.integers(0, 10)})
_COMPLETIONS = st.lists(_COMPLETION | st.text(max_size=4) | _MESSAGES | _JSON, max_size=4)
# Plausible values per column: the shapes an adapter expects, near misses, and anything JSON.
_COLUMN_VALUES = {
    "prompt": st.text(max_size=4) | _MESSAGES, "instruction": st.text(max_size=4),
    "chosen": st.text(max_size=4) | _MESSAGES | _HH, "rejected": st.text(max_size=4) | _MESSAGES | _HH,
    "chosen_score": _SCALARS, "rejected_score": _SCALARS, "margin": _SCALARS,
    "chosen_attributes": st.lists(_SCALARS, max_size=3), "rejected_attributes": st.lists(_SCALARS, max_size=3),
    "annotator": _SCALARS, "subset": _SCALARS, "completions": _COMPLETIONS,
    "scores": st.lists(_SCALARS | st.integers(0, 10), max_size=4), "best_index": _SCALARS | st.integers(-1, 4),
}


_USER, _A, _B = ({"role": "user", "content": "q"}, {"role": "assistant", "content": "a"},
                 {"role": "assistant", "content": "b"})
_EXTRAS = {"chosen_score": 1.0, "rejected_score": 0.5, "margin": 0.5, "chosen_attributes": [1, 2],
           "rejected_attributes": [0, 1.5], "annotator": 7, "subset": "s"}
# A valid row per format (every optional column set): mutating a few of its columns reaches the deep checks.
_VALID = {
    "pairwise": {"prompt": "p", "chosen": "a", "rejected": "b", **_EXTRAS},
    "chat": {"chosen": [_USER, _A], "rejected": [_USER, _B], **_EXTRAS},
    "hh": {"chosen": "\n\nHuman: hi\n\nAssistant: a", "rejected": "\n\nHuman: hi\n\nAssistant: b", "subset": "s"},
    "ultrafeedback": {"instruction": "q", "subset": "s", "completions": [
        {"response": "a", "overall_score": 5}, {"response": "b", "overall_score": 3},
        {"response": "c", "overall_score": 1}]},
    "kway": {"prompt": [_USER], "completions": ["a", [_A], "c"], "scores": [1, 2.5, 3], "subset": "s"},
}
_DELETE = object()


def _mutated(base):
  keys = sorted(set(base) | {"prompt", "scores", "best_index"})
  changes = st.lists(st.sampled_from(keys), unique=True, max_size=3).flatmap(lambda ks: st.fixed_dictionaries(
      {k: st.just(_DELETE) | _COLUMN_VALUES.get(k, _JSON) | _JSON for k in ks}))
  return changes.map(lambda ch: {k: v for k, v in {**base, **ch}.items() if v is not _DELETE})


def _row(fmt):
  columns = sorted(set(adapters.DEFAULT_COLUMNS[fmt].values()) & set(_COLUMN_VALUES))
  present = st.lists(st.sampled_from(columns), unique=True, min_size=0, max_size=len(columns))
  random_rows = present.flatmap(lambda cols: st.fixed_dictionaries({c: _COLUMN_VALUES[c] | _JSON for c in cols}))
  return _mutated(_VALID[fmt]) | random_rows | _JSON  # The last: rows that are not objects at all.


def _check(tmp_path, fmt, rows):
  path = tmp_path / f"{fmt}.jsonl"
  adapters.write_jsonl(path, rows)
  records, report = adapters.read_records(path, adapters.AdapterConfig(fmt, strict=False, seed=1))
  # Every row is kept or counted under one reason with an explanation naming file:line.
  assert report.kept == len(records) and report.kept + report.skipped == len(rows)
  assert set(report.counts) <= set(errors.REASONS)
  for reason, shown in report.examples.items():
    assert all(re.match(rf"{fmt}\.jsonl:\d+: \S", s) for s in shown), (reason, shown)
  kind = KWayRecord if fmt == "kway" else PreferenceRecord
  for record in records:
    assert isinstance(record, kind) and record_from_json(record_to_json(record)) == record
  bad_lines = [i for i, row in enumerate(rows, start=1) if not _parses(row, fmt)]
  try:
    strict = adapters.read_records(path, adapters.AdapterConfig(fmt, strict=True, seed=1))[0]
  except ValueError as e:
    message = str(e)
    match = re.match(rf"{re.escape(str(path))}:(\d+): ({'|'.join(errors.REASONS)}): \S", message)
    assert match, message
    assert bad_lines and int(match.group(1)) == bad_lines[0]
  else:
    assert not bad_lines and strict == records


def _parses(row, fmt):
  try:
    adapters.parse_row(json.loads(json.dumps(row)), adapters.AdapterConfig(fmt, seed=1), "x")
  except errors.RecordError:
    return False
  return True


@FUZZ
@given(rows=st.lists(_row("pairwise"), max_size=5))
def test_pairwise_rows(tmp_path, rows):
  _check(tmp_path, "pairwise", rows)


@FUZZ
@given(rows=st.lists(_row("chat"), max_size=5))
def test_chat_rows(tmp_path, rows):
  _check(tmp_path, "chat", rows)


@FUZZ
@given(rows=st.lists(_row("hh"), max_size=5))
def test_hh_rows(tmp_path, rows):
  _check(tmp_path, "hh", rows)


@FUZZ
@example(rows=[{"instruction": "q", "completions": [{"response": "a", "overall_score": 2**70},
                                                    {"response": "b", "overall_score": 1}]}])
@given(rows=st.lists(_row("ultrafeedback"), max_size=5))
def test_ultrafeedback_rows(tmp_path, rows):
  _check(tmp_path, "ultrafeedback", rows)


@FUZZ
@given(rows=st.lists(_row("kway"), max_size=5))
def test_kway_rows(tmp_path, rows):
  _check(tmp_path, "kway", rows)


@settings(max_examples=100, deadline=2000, suppress_health_check=[HealthCheck.function_scoped_fixture])
@example(lines=[b'{"prompt": ' + b"[" * 3000 + b"]}"])  # Nesting past the JSON parser's recursion limit.
@example(lines=[b'{"prompt": "p", "chosen": "a", "rejected": "b", "margin": ' + b"9" * 5000 + b"}"])
@example(lines=[b'{"prompt": "\xff\xfe", "chosen": "a", "rejected": "b"}'])  # Not UTF-8.
@given(lines=st.lists(st.binary(max_size=40) | _JSON.map(lambda v: json.dumps(v).encode()), max_size=5))
def test_raw_lines_of_any_bytes(tmp_path, lines):
  """Whatever bytes a line holds, it is a record or a counted skip (malformed_json with its line number)."""
  path = tmp_path / "raw.jsonl"
  lines = [line.replace(b"\n", b" ").replace(b"\r", b" ") for line in lines]
  path.write_bytes(b"".join(line + b"\n" for line in lines))
  for fmt in adapters.FORMATS:
    records, report = adapters.read_records(path, adapters.AdapterConfig(fmt, strict=False))
    assert report.kept + report.skipped == sum(1 for line in lines
                                               if line.decode("utf-8", "surrogateescape").strip())
    try:
      adapters.read_records(path, adapters.AdapterConfig(fmt, strict=True))
    except ValueError as e:
      assert re.match(rf"{re.escape(str(path))}:\d+: ({'|'.join(errors.REASONS)}): ", str(e)), str(e)


def test_undecodable_deep_and_huge_lines_are_malformed_json_rows(tmp_path):
  good = json.dumps({"prompt": "p", "chosen": "a", "rejected": "b"}).encode()
  bad = [b'{"prompt": "\xff\xfe", "chosen": "a", "rejected": "b"}', b'{"prompt": ' + b"[" * 3000 + b"]}",
         b'{"prompt": "p", "chosen": "a", "rejected": "b", "margin": ' + b"9" * 5000 + b"}"]
  path = tmp_path / "bad.jsonl"
  path.write_bytes(b"\n".join([good, *bad, good]) + b"\n")
  records, report = adapters.read_records(path, adapters.AdapterConfig("pairwise", strict=False))
  assert len(records) == 2 and report.counts == {errors.MALFORMED_JSON: 3}
  assert report.examples[errors.MALFORMED_JSON][0] == "bad.jsonl:2: not UTF-8: byte 0xff at character 12"
  try:
    adapters.read_records(path, "pairwise")
  except ValueError as e:
    assert str(e).startswith(f"{path}:2: malformed_json: not UTF-8")
  else:
    raise AssertionError("strict mode accepted an undecodable line")
