"""Chat messages with keys beyond role, content and the tool-use keys of their role: a key that holds something is
refused, never silently dropped; the null / empty fields a parquet struct column gives every message are accepted."""

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from jaxrlhf.data import adapters, errors

USER = {"role": "user", "content": "Weather in Paris?"}
CALL = {"role": "assistant", "content": "", "tool_calls": [
    {"type": "function", "function": {"name": "get_weather", "arguments": {"city": "Paris"}}}]}
ANSWER = {"role": "assistant", "content": "Sunny, 21 C."}


def _read(tmp_path, rows, fmt, strict=True):
  path = tmp_path / "rows.jsonl"
  adapters.write_jsonl(path, rows)
  return adapters.read_records(path, adapters.AdapterConfig(fmt, strict=strict))


@pytest.mark.parametrize("fmt, row, detail", [
    # Tool calls are read on the assistant's turns only (tests/data/test_tool_calls.py); on a user turn no template
    # would render them.
    ("chat", {"chosen": [{**USER, "tool_calls": CALL["tool_calls"]}, ANSWER],
              "rejected": [{**USER, "tool_calls": CALL["tool_calls"]}, {"role": "assistant", "content": "No."}]},
     "chosen[0] (role 'user') has key(s) ['tool_calls']"),
    # A reasoning trace is the assistant's (tests/data/test_reasoning_content.py); on a user turn no template shows it.
    ("sft", {"prompt": [{**USER, "reasoning_content": "Look it up."}], "completion": [ANSWER]},
     "prompt[0] (role 'user') has key(s) ['reasoning_content']"),
    # OpenAI fine-tuning's weight 0 means "do not train on this turn": dropping it would train on it.
    ("sft", {"messages": [USER, {**ANSWER, "weight": 0}]}, "messages[1] (role 'assistant') has key(s) ['weight']"),
    ("prompts", {"prompt": [{**USER, "name": "alice", "tool_call_id": "c1"}]},
     "prompt[0] (role 'user') has key(s) ['name', 'tool_call_id']"),
    ("kway", {"prompt": "Q", "completions": [[ANSWER], [{**ANSWER, "name": "bot"}]], "best_index": 0},
     "completions[1][0] (role 'assistant') has key(s) ['name']"),
])
def test_a_message_key_that_holds_something_is_refused(tmp_path, fmt, row, detail):
  with pytest.raises(errors.DataFileError) as e:
    _read(tmp_path, [row], fmt)
  assert str(e.value).startswith(f"{tmp_path / 'rows.jsonl'}:1: bad_messages: {detail}")
  assert "so they would be lost" in str(e.value)
  # Lenient mode counts the row under bad_messages; nothing is kept.
  records, report = _read(tmp_path, [row], fmt, strict=False)
  assert (records, report.kept, dict(report.counts)) == ([], 0, {"bad_messages": 1})


def test_null_and_empty_extra_fields_carry_nothing_and_are_accepted(tmp_path):
  # What a parquet file of an OpenAI-style dataset looks like: every message has every field, mostly null.
  def full(m):
    return {"role": m["role"], "content": m["content"], "tool_calls": None, "name": None, "tool_call_id": None}
  rows = [{"chosen": [full(USER), full(ANSWER)],
           "rejected": [full(USER), {**full(ANSWER), "content": "Rainy.", "tool_calls": []}]}]
  path = tmp_path / "rows.parquet"
  pq.write_table(pa.Table.from_pylist(rows), path)
  (record,), report = adapters.read_records(path, "chat")
  assert record.prompt == [USER]
  assert (record.chosen, record.rejected) == ([ANSWER], [{"role": "assistant", "content": "Rainy."}])
  assert report.kept == 1 and not report.counts


def test_a_message_without_role_or_content_still_names_both(tmp_path):
  for message in ({"content": "x"}, {"role": "user"}):
    with pytest.raises(errors.DataFileError, match=r"prompt\[0\] must be a dict with 'role' and 'content'"):
      _read(tmp_path, [{"prompt": [message]}], "prompts")
