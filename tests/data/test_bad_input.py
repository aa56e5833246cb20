"""Planted bad lines: strict mode raises file:line + reason; lenient mode skips and counts each reason."""

import collections
import json
import logging
import math

import pytest

from jaxrlhf.data import adapters, errors

GOOD = {"prompt": "p", "chosen": "yes", "rejected": "no"}

# (line text, expected reason or None for a good line). Line numbers are positions in this list, from 1.
PLANTED = [
    (json.dumps(GOOD), None),
    ('{"prompt": "p", "chosen": "yes", "rejected": ', errors.MALFORMED_JSON),
    (json.dumps(["not", "an", "object"]), errors.NOT_AN_OBJECT),
    (json.dumps({"prompt": "p", "chosen": "yes"}), errors.MISSING_FIELD),
    (json.dumps({"prompt": "p", "chosen": None, "rejected": "no"}), errors.MISSING_FIELD),
    (json.dumps({"prompt": "   ", "chosen": "yes", "rejected": "no"}), errors.EMPTY_FIELD),
    (json.dumps({"prompt": "p", "chosen": 7, "rejected": "no"}), errors.NON_STRING_CONTENT),
    (json.dumps({"prompt": "p", "chosen": "same", "rejected": "same"}), errors.IDENTICAL_RESPONSES),
    ('{"prompt": "p", "chosen": "yes", "rejected": "no", "chosen_score": NaN}', errors.NON_FINITE_SCORE),
    ('{"prompt": "p", "chosen": "yes", "rejected": "no", "margin": Infinity}', errors.NON_FINITE_SCORE),
    (json.dumps({**GOOD, "rejected_score": "high"}), errors.BAD_SCORE),
    (json.dumps({**GOOD, "chosen_attributes": [1, 2], "rejected_attributes": [1]}), errors.BAD_FIELD),
    ("", None),  # A blank line is not a row.
    (json.dumps({**GOOD, "prompt": [{"role": "user", "content": ["x"]}]}), errors.NON_STRING_CONTENT),
    (json.dumps({**GOOD, "prompt": [{"role": "robot", "content": "x"}]}), errors.BAD_MESSAGES),
    ('{"prompt": "p", "chosen": "cut emoji \\ud83d", "rejected": "no"}', errors.BAD_FIELD),  # a lone surrogate
    (json.dumps({**GOOD, "chosen_score": 3, "rejected_score": 1}), None),
]


@pytest.fixture
def planted_file(tmp_path):
  path = tmp_path / "planted.jsonl"
  path.write_text("\n".join(line for line, _ in PLANTED) + "\n")
  return path


def test_lenient_counts_every_planted_reason_exactly(planted_file, caplog):
  with caplog.at_level(logging.WARNING):
    records, report = adapters.read_records(planted_file, adapters.AdapterConfig("pairwise", strict=False))
  logged = [r.getMessage() for r in caplog.records]
  assert logged == [errors.format_skip_report(report, f"pairwise {[str(planted_file)]}")]
  expected = collections.Counter(reason for _, reason in PLANTED if reason)
  assert report.counts == expected
  assert report.kept == len(records) == 2
  assert [r.source for r in records] == ["planted.jsonl:1", f"planted.jsonl:{len(PLANTED)}"]
  # Nothing is dropped silently: every non-blank line is kept or counted.
  assert report.kept + report.skipped == sum(1 for line, _ in PLANTED if line.strip())
  summary = report.as_dict()
  assert summary["skipped"] == 14 and summary["skipped/non_finite_score"] == 2
  line = errors.format_skip_report(report, "train")
  assert line.startswith("train: kept 2, skipped 14 (")
  assert "malformed_json=1" in line and "planted.jsonl:2:" in line


def test_strict_raises_with_file_line_and_reason_for_each_planted_line(tmp_path):
  for line_no, (line, reason) in enumerate(PLANTED, start=1):
    if reason is None:
      continue
    path = tmp_path / f"one_{line_no}.jsonl"
    path.write_text(json.dumps(GOOD) + "\n" + line + "\n")
    with pytest.raises(ValueError) as info:
      adapters.read_records(path, "pairwise")
    assert str(info.value).startswith(f"{path}:2: {reason}: "), str(info.value)


def test_strict_stops_at_the_first_bad_line(planted_file):
  with pytest.raises(ValueError, match=r"planted.jsonl:2: malformed_json: "):
    adapters.read_records(planted_file, "pairwise")


def test_format_specific_bad_rows(tmp_path):
  rows = [
      {"chosen": "\n\nHuman: hi", "rejected": "\n\nHuman: hi\n\nAssistant: x"},  # No assistant turn in chosen.
      {"chosen": "\n\nHuman: hi\n\nAssistant: x", "rejected": "\n\nHuman: hi\n\nAssistant: x"},
      {"chosen": "\n\nHuman: hi\n\nAssistant: x", "rejected": "\n\nHuman: hi\n\nAssistant: y"},
  ]
  path = tmp_path / "hh.jsonl"
  adapters.write_jsonl(path, rows)
  records, report = adapters.read_records(path, adapters.AdapterConfig("hh", strict=False))
  assert len(records) == 1
  assert report.counts == collections.Counter({errors.BAD_FIELD: 1, errors.IDENTICAL_RESPONSES: 1})
  chat = [
      {"chosen": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}],
       "rejected": [{"role": "user", "content": "q"}, {"role": "user", "content": "b"}]},  # Response by user.
      {"chosen": [{"role": "assistant", "content": "a"}], "rejected": [{"role": "assistant", "content": "b"}]},
      {"chosen": [], "rejected": [{"role": "assistant", "content": "b"}]},
      {"chosen": "text", "rejected": [{"role": "assistant", "content": "b"}]},
  ]
  path = tmp_path / "chat.jsonl"
  adapters.write_jsonl(path, chat)
  _, report = adapters.read_records(path, adapters.AdapterConfig("chat", strict=False))
  assert report.counts == collections.Counter({errors.BAD_MESSAGES: 2, errors.MISSING_FIELD: 1,
                                               errors.EMPTY_FIELD: 1})


def test_records_reject_non_finite_scores_directly():
  from jaxrlhf.data.records import PreferenceRecord
  with pytest.raises(ValueError, match="chosen_score must be finite"):
    PreferenceRecord(prompt="p", chosen="a", rejected="b", chosen_score=math.inf)
