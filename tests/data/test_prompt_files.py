"""The "prompts" file format (text and chat prompts, passed-through columns, bad rows) and the train / held-out
splits."""

import json
import re

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from jaxrlhf.data import adapters, errors, prompts
from jaxrlhf.data.records import PromptRecord, record_from_json, record_to_json

SYSTEM = {"role": "system", "content": "Be brief."}
USER = {"role": "user", "content": "What is 2 + 3?"}
ASSISTANT = {"role": "assistant", "content": "5"}


def _jsonl(path, rows):
  adapters.write_jsonl(path, rows)
  return path


def _strip(records):
  return [(r.prompt, r.columns, r.source.split(":")[1]) for r in records]


def test_text_prompts_pass_every_other_column_through(tmp_path):
  path = _jsonl(tmp_path / "t.jsonl", [
      {"prompt": "Write a haiku.", "answer": "n/a", "tests": ["assert f(1) == 2"], "meta": {"level": 3, "x": None}},
      {"prompt": "2 + 3 =", "answer": 5, "score": 1.5, "note": None, "messages": None},
  ])
  records, report = adapters.read_prompt_records(path)
  assert records == [
      PromptRecord("Write a haiku.", {"answer": "n/a", "tests": ["assert f(1) == 2"], "meta": {"level": 3, "x": None}},
                   source="t.jsonl:1"),
      # Null values pass through as they are; a null "messages" column is just absent (parquet writes nulls).
      PromptRecord("2 + 3 =", {"answer": 5, "score": 1.5, "note": None}, source="t.jsonl:2")]
  assert (report.kept, report.skipped) == (2, 0)
  # The same through read_records with the format name, and through the JSON form the TFDS builders store.
  assert adapters.read_records(path, "prompts")[0] == records
  assert [record_from_json(record_to_json(r)) for r in records] == records


@pytest.mark.parametrize("suffix", [".jsonl", ".jsonl.gz", ".parquet"])
def test_chat_prompts_from_messages_or_a_conversational_prompt_column(tmp_path, suffix):
  messages_rows = [{"messages": [SYSTEM, USER], "answer": "5", "id": 0},
                   {"messages": [USER, ASSISTANT, {"role": "user", "content": "And 3 + 4?"}], "answer": "7", "id": 1}]
  # TRL's conversational prompt-only layout: the "prompt" column holds the messages.
  prompt_rows = [{"prompt": r["messages"], "answer": r["answer"], "id": r["id"]} for r in messages_rows]
  out = []
  for name, rows in (("m", messages_rows), ("p", prompt_rows)):
    path = tmp_path / f"{name}{suffix}"
    if suffix == ".parquet":
      pq.write_table(pa.Table.from_pylist(rows), path)
    else:
      _jsonl(path, rows)
    out.append(adapters.read_prompt_records(path)[0])
  expected = [([SYSTEM, USER], {"answer": "5", "id": 0}, "1"),
              ([USER, ASSISTANT, {"role": "user", "content": "And 3 + 4?"}], {"answer": "7", "id": 1}, "2")]
  assert _strip(out[0]) == _strip(out[1]) == expected
  assert out[0][0].source == f"m{suffix}:1"


def test_text_prompts_jsonl_gz_and_parquet_read_the_same_records(tmp_path):
  rows = [{"prompt": f"q{i}", "answer": str(i), "weight": i / 2} for i in range(4)]
  _jsonl(tmp_path / "a.jsonl.gz", rows)
  pq.write_table(pa.Table.from_pylist(rows), tmp_path / "a.parquet")
  from_gz, _ = adapters.read_prompt_records(tmp_path / "a.jsonl.gz")
  from_pq, _ = adapters.read_prompt_records(tmp_path / "a.parquet")
  assert _strip(from_gz) == _strip(from_pq) == [(f"q{i}", {"answer": str(i), "weight": i / 2}, str(i + 1))
                                                for i in range(4)]


def test_renamed_columns_and_kept_subset(tmp_path):
  path = _jsonl(tmp_path / "r.jsonl", [
      {"question": "Hi?", "messages": [USER], "gold": "5", "junk": 1},
      {"question": "Yo?", "gold": "6"},
  ])
  # Naming only the prompt column reads only it: "messages" is then an ordinary passed-through column.
  config = adapters.AdapterConfig("prompts", columns={"prompt": "question"})
  records, _ = adapters.read_prompt_records(path, config)
  assert _strip(records) == [("Hi?", {"messages": [USER], "gold": "5", "junk": 1}, "1"), ("Yo?", {"gold": "6"}, "2")]
  config = adapters.AdapterConfig("prompts", columns={"prompt": "question"}, keep_columns=["gold"])
  records, _ = adapters.read_prompt_records(path, config)
  assert [r.columns for r in records] == [{"gold": "5"}, {"gold": "6"}]
  # Naming only the messages column: rows without it are bad, "question" passes through.
  config = adapters.AdapterConfig("prompts", columns={"messages": "messages"}, strict=False)
  records, report = adapters.read_prompt_records(path, config)
  assert _strip(records) == [([USER], {"question": "Hi?", "gold": "5", "junk": 1}, "1")]
  assert report.counts == {errors.MISSING_FIELD: 1}
  assert report.examples[errors.MISSING_FIELD] == ["r.jsonl:2: column 'messages' is missing"]
  # A kept column must be in every row.
  config = adapters.AdapterConfig("prompts", columns={"prompt": "question"}, keep_columns=("junk",))
  with pytest.raises(errors.DataFileError, match=r"r\.jsonl:2: missing_field: column 'junk' is missing"):
    adapters.read_prompt_records(path, config)


def test_config_errors():
  with pytest.raises(ValueError, match="keep_columns: only the 'prompts' format"):
    adapters.AdapterConfig("pairwise", keep_columns=("a",))
  with pytest.raises(ValueError, match="keep_columns: expected a list of column names"):
    adapters.AdapterConfig("prompts", keep_columns="answer")
  with pytest.raises(ValueError, match=r"columns: unknown keys \['answer'\]"):
    adapters.AdapterConfig("prompts", columns={"answer": "gold"})
  with pytest.raises(ValueError, match="config.format must be 'prompts'"):
    adapters.read_prompt_records("x.jsonl", adapters.AdapterConfig("pairwise"))


# Each bad row, its line (1-based), reason and the detail the report and the strict error show.
_BAD = [
    ('{"prompt": "ok"', errors.MALFORMED_JSON, "Expecting ',' delimiter"),
    ('["prompt", "x"]', errors.NOT_AN_OBJECT, "expected a JSON object, got list"),
    ('{"answer": "1"}', errors.MISSING_FIELD, "column 'prompt' or 'messages' is missing"),
    ('{"prompt": null, "answer": "1"}', errors.MISSING_FIELD, "column 'prompt' or 'messages' is missing"),
    ('{"prompt": "   "}', errors.EMPTY_FIELD, "prompt is empty"),
    ('{"prompt": []}', errors.EMPTY_FIELD, "prompt has no messages"),
    ('{"prompt": 3}', errors.NON_STRING_CONTENT, "prompt must be a string, got int"),
    ('{"messages": "hi"}', errors.BAD_MESSAGES, "messages must be a list of messages, got str"),
    ('{"prompt": [{"role": "robot", "content": "x"}]}', errors.BAD_MESSAGES, "prompt[0] has role 'robot'"),
    ('{"prompt": [{"content": "x"}]}', errors.BAD_MESSAGES, "prompt[0] must be a dict with 'role' and 'content'"),
    ('{"messages": [{"role": "user", "content": 7}]}', errors.NON_STRING_CONTENT,
     "messages[0].content must be a string, got int"),
    ('{"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]}', errors.BAD_MESSAGES,
     "messages: the last message has role 'assistant'"),
    ('{"prompt": "q", "messages": [{"role": "user", "content": "q"}]}', errors.BAD_FIELD,
     "both 'prompt' and 'messages' are set"),
]


def test_bad_rows_lenient_counts_and_strict_file_line_errors(tmp_path):
  good = '{"prompt": "fine", "answer": "1"}'
  lines = [good] + [line for line, _, _ in _BAD] + ["", good]
  path = tmp_path / "bad.jsonl"
  path.write_text("\n".join(lines) + "\n")
  records, report = adapters.read_prompt_records(path, adapters.AdapterConfig("prompts", strict=False))
  assert [r.source for r in records] == ["bad.jsonl:1", f"bad.jsonl:{len(lines)}"]
  expected_counts = {}
  for _, reason, _ in _BAD:
    expected_counts[reason] = expected_counts.get(reason, 0) + 1
  assert dict(report.counts) == expected_counts and report.kept == 2
  expected_examples = {}  # The report shows the first 3 rows per reason.
  for line, (_, reason, detail) in enumerate(_BAD, start=2):
    expected_examples.setdefault(reason, []).append((f"bad.jsonl:{line}: ", detail))
  for reason, expected in expected_examples.items():
    shown = report.examples[reason]
    assert len(shown) == min(3, len(expected))
    assert all(s.startswith(where) and detail in s for s, (where, detail) in zip(shown, expected)), shown
  for line, (_, reason, detail) in enumerate(_BAD, start=2):
    # Strict mode: the first bad row stops the read with "file:line: reason: detail".
    one = tmp_path / f"one{line}.jsonl"
    one.write_text("\n".join([good] * (line - 1) + [lines[line - 1]]) + "\n")
    with pytest.raises(errors.DataFileError) as e:
      adapters.read_prompt_records(one)
    assert str(e.value).startswith(f"{one}:{line}: {reason}: ") and detail in str(e.value)


def test_parquet_values_that_are_not_json_are_bad_unless_left_out(tmp_path):
  path = tmp_path / "b.parquet"
  pq.write_table(pa.Table.from_pylist([{"prompt": "q", "blob": b"\x00\x01", "answer": "1"}]), path)
  with pytest.raises(errors.DataFileError, match=r"b\.parquet:1: bad_field: blob holds a bytes, not a JSON value"):
    adapters.read_prompt_records(path)
  (record,), _ = adapters.read_prompt_records(path, adapters.AdapterConfig("prompts", keep_columns=["answer"]))
  assert record.columns == {"answer": "1"}


_ANY = st.recursive(st.none() | st.booleans() | st.integers(-5, 5) | st.floats() | st.text(max_size=4),
                    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner, max_size=3),
                    max_leaves=5)
_MESSAGE = st.fixed_dictionaries({"role": st.sampled_from(["user", "assistant", "system", "tool", "x"]),
                                  "content": st.text(max_size=3) | _ANY})
_ROW = st.dictionaries(st.sampled_from(["prompt", "messages", "answer", "id"]),
                       st.text(max_size=4) | st.lists(_MESSAGE, max_size=3) | _ANY, max_size=4) | _ANY


@settings(max_examples=150, deadline=2000, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(rows=st.lists(_ROW, max_size=5))
def test_random_rows_are_records_or_counted_skips(tmp_path, rows):
  path = _jsonl(tmp_path / "f.jsonl", rows)
  records, report = adapters.read_prompt_records(path, adapters.AdapterConfig("prompts", strict=False))
  assert report.kept == len(records) and report.kept + report.skipped == len(rows)
  assert set(report.counts) <= set(errors.REASONS)
  for record in records:
    assert isinstance(record, PromptRecord) and record_from_json(record_to_json(record)) == record
    json.dumps(record.columns)  # Passed-through columns stay JSON values.
  try:
    adapters.read_prompt_records(path)
  except errors.DataFileError as e:
    assert report.skipped and re.match(rf"{re.escape(str(path))}:\d+: ({'|'.join(errors.REASONS)}): ", str(e))
  else:
    assert not report.skipped


# ------------------------------------------------------------------------------------------------ splits
def _records(n, name="p"):
  return [PromptRecord(f"{name}{i}", {"i": i}, source=f"{name}.jsonl:{i + 1}") for i in range(n)]


def test_split_prompts_holds_out_the_last_fraction_with_caps():
  records = _records(20)
  train, held_out = prompts.split_prompts(records, 0.25)
  assert (train, held_out) == (records[:15], records[15:])
  train, held_out = prompts.split_prompts(records, 0.25, num_train=4, num_eval=3)
  assert (train, held_out) == (records[:4], records[17:])
  train, held_out = prompts.split_prompts(records, 0.25, num_eval=3)
  assert (train, held_out) == (records[:17], records[17:])
  assert prompts.split_prompts(records, 0.0) == (records, [])
  assert prompts.split_prompts(records, 0.02) == (records, [])  # round(0.4) = 0.
  with pytest.raises(ValueError, match=r"eval_fraction must be in \[0, 1\)"):
    prompts.split_prompts(records, 1.0)


def test_read_prompt_splits_by_fraction_and_by_file(tmp_path):
  train_rows = [{"prompt": f"q{i}", "answer": str(i)} for i in range(10)] + [{"prompt": ""}]
  eval_rows = [{"prompt": "q3", "answer": "3"}, {"prompt": "new", "answer": "9"}, {"prompt": "new2"}, 7]
  train_path, eval_path = _jsonl(tmp_path / "train.jsonl", train_rows), _jsonl(tmp_path / "eval.jsonl", eval_rows)
  lenient = adapters.AdapterConfig("prompts", strict=False)
  train, held_out, report = prompts.read_prompt_splits(train_path, config=lenient, eval_fraction=0.2)
  assert [r.prompt for r in train] == [f"q{i}" for i in range(8)] and [r.prompt for r in held_out] == ["q8", "q9"]
  assert (report["kept"], report["skipped"], report["num_train"], report["num_eval"]) == (10, 1, 8, 2)
  assert report["skipped/empty_field"] == 1 and report["held_out_in_train"] == 0
  train, held_out, report = prompts.read_prompt_splits([train_path], [eval_path], lenient, num_train=6, num_eval=2)
  assert [r.prompt for r in train] == [f"q{i}" for i in range(6)] and [r.prompt for r in held_out] == ["q3", "new"]
  assert (report["kept"], report["skipped"], report["skipped/not_an_object"]) == (13, 2, 1)
  assert report["held_out_in_train"] == 1  # "q3" is a train prompt too.
  assert held_out[0].source == "eval.jsonl:1"
  with pytest.raises(errors.DataFileError, match=r"train\.jsonl:11: empty_field"):
    prompts.read_prompt_splits(train_path)
  empty = _jsonl(tmp_path / "empty.jsonl", [{"prompt": " "}])
  # A DataFileError: experiments.run prints it as one line naming the stage (a known error), not a traceback.
  with pytest.raises(errors.DataFileError, match=r"paths: no usable train prompts in .*empty\.jsonl.*empty_field=1"):
    prompts.read_prompt_splits(empty, config=lenient)


def test_the_report_line_holds_the_split(tmp_path):
  """The printed line says how many prompts are held out, so a fraction that rounds to none shows at once."""
  path = _jsonl(tmp_path / "p.jsonl", [{"prompt": f"q{i}"} for i in range(4)] + [{"prompt": ""}])
  lenient = adapters.AdapterConfig("prompts", strict=False)
  _, _, report = prompts.read_prompt_splits(path, config=lenient, eval_fraction=0.1)
  assert re.search(r"kept 4, skipped 1 \(empty_field=1; first: p\.jsonl:5: .*\); 4 train, 0 held out \(the last "
                   r"0\.1\)$", report["line"]), report["line"]
  _, _, report = prompts.read_prompt_splits(path, [path], lenient)
  assert report["line"].endswith("; 4 train, 4 held out (eval_paths)")


def test_prompts_of_a_preference_file_are_distinct_with_their_pair(tmp_path):
  """format "hh": each distinct dialogue prefix once, in file order, with its first pair's responses."""
  def hh(prompt, chosen, rejected):
    return {"chosen": f"\n\nHuman: {prompt}\n\nAssistant: {chosen}",
            "rejected": f"\n\nHuman: {prompt}\n\nAssistant: {rejected}"}
  rows = [hh("hi", "hello", "go away"), hh("2+2?", "4", "5"), hh("hi", "hey", "no"), {"chosen": "no turns"},
          hh("bye", "see you", "whatever")]
  path = _jsonl(tmp_path / "hh.jsonl", rows)
  config = adapters.AdapterConfig("hh", strict=False)
  train, held_out, report = prompts.read_prompt_splits(path, (), config, eval_fraction=0.34)
  assert [r.prompt for r in train + held_out] == ["\n\nHuman: hi\n\nAssistant:", "\n\nHuman: 2+2?\n\nAssistant:",
                                                  "\n\nHuman: bye\n\nAssistant:"]
  assert [r.prompt for r in held_out] == ["\n\nHuman: bye\n\nAssistant:"]
  assert train[0].columns == {"chosen": "hello", "rejected": "go away"}
  assert train[0].source.endswith("hh.jsonl:1") and held_out[0].source.endswith("hh.jsonl:5")
  assert (report["kept"], report["skipped"], report["note/repeated_prompt"]) == (3, 1, 1)
  assert "repeated_prompt=1" in report["line"] and "skipped 1" in report["line"]
  with pytest.raises(ValueError, match="'kway' has no prompts"):
    prompts.read_prompt_splits(path, (), adapters.AdapterConfig("kway"), eval_fraction=0.5)


def test_hh_dialogues_become_chat_messages():
  assert adapters.hh_messages("\n\nHuman: hi there \n\nAssistant: hello\n\nHuman: 2+2?\n\nAssistant:") == [
      {"role": "user", "content": "hi there"}, {"role": "assistant", "content": "hello"},
      {"role": "user", "content": "2+2?"}]
  assert adapters.hh_messages("\n\nHuman: only a question") == [{"role": "user", "content": "only a question"}]
  # Not a dialogue of alternating turns that ends with the user's: stays text (None).
  assert adapters.hh_messages("Tell me a story\n\nAssistant:") is None
  assert adapters.hh_messages("\n\nHuman: a\n\nHuman: b\n\nAssistant:") is None
  assert adapters.hh_messages("\n\nHuman: a\n\nAssistant: b") is None


def test_hh_prompts_as_chat_keep_the_raw_text(tmp_path):
  rows = [{"chosen": "\n\nHuman: hi\n\nAssistant: hello", "rejected": "\n\nHuman: hi\n\nAssistant: go away"},
          {"chosen": "\n\nHuman: a\n\nHuman: b\n\nAssistant: c",
           "rejected": "\n\nHuman: a\n\nHuman: b\n\nAssistant: d"}]
  path = _jsonl(tmp_path / "hh.jsonl", rows)
  train, _, report = prompts.read_prompt_splits(path, (), adapters.AdapterConfig("hh"), eval_fraction=0.0,
                                                hh_as_chat=True)
  assert train[0].prompt == [{"role": "user", "content": "hi"}]
  assert train[0].columns == {"chosen": "hello", "rejected": "go away", "hh_prompt": "\n\nHuman: hi\n\nAssistant:"}
  assert train[1].prompt == "\n\nHuman: a\n\nHuman: b\n\nAssistant:" and "hh_prompt" not in train[1].columns
  assert report["note/hh_prompt_not_chat"] == 1


@pytest.mark.parametrize("fmt", ["pairwise", "chat"])
def test_preference_prompts_ending_with_an_assistant_turn_are_counted_or_raise_with_the_full_path(tmp_path, fmt):
  """A pair's prompt may end with an assistant turn; a prompt to sample from may not: lenient mode skips and counts
  the pair (bad_messages), strict mode raises DataFileError with the file's full path and line."""
  def pair(prompt):
    if fmt == "pairwise":
      return {"prompt": prompt, "chosen": "yes", "rejected": "no"}
    return {"prompt": prompt, "chosen": prompt + [{"role": "assistant", "content": "yes"}],
            "rejected": prompt + [{"role": "assistant", "content": "no"}]}
  ends_with_assistant = [USER, ASSISTANT]
  rows = [pair([USER]), pair(ends_with_assistant), pair([SYSTEM, USER]), pair(ends_with_assistant)]
  path = _jsonl(tmp_path / "pairs.jsonl", rows)
  train, _, report = prompts.read_prompt_splits(path, (), adapters.AdapterConfig(fmt, strict=False),
                                                eval_fraction=0.0)
  assert [r.prompt for r in train] == [[USER], [SYSTEM, USER]]
  assert (report["kept"], report["skipped"], report["skipped/bad_messages"]) == (2, 2, 2)
  assert "pairs.jsonl:2: prompt: the last message has role 'assistant'" in report["line"]
  with pytest.raises(errors.DataFileError, match=re.escape(f"{path}:2: bad_messages: prompt: the last message has "
                                                           "role 'assistant'")):
    prompts.read_prompt_splits(path, (), adapters.AdapterConfig(fmt, strict=True), eval_fraction=0.0)
