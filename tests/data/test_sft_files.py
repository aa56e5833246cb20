"""The "sft" file format: TRL's two SFT layouts (prompt + completion; a messages conversation) -> SFTRecord, every
bad row named by file:line in strict mode and counted by reason in lenient mode, and records that survive the
JSON round trip of the TFDS builders."""

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from jaxrlhf.data import adapters
from jaxrlhf.data.errors import DataFileError
from jaxrlhf.data.records import SFTRecord, record_from_json, record_to_json

SYSTEM = {"role": "system", "content": "Be brief."}
USER = {"role": "user", "content": "2+2?"}
ANSWER = {"role": "assistant", "content": "4"}


def _read(tmp_path, rows, strict=True, **kwargs):
  path = tmp_path / "sft.jsonl"
  adapters.write_jsonl(path, rows)
  return adapters.read_records(path, adapters.AdapterConfig("sft", strict=strict, **kwargs))


def test_both_layouts_give_prompt_and_response(tmp_path):
  later = {"role": "user", "content": "and 3+3?"}
  records, report = _read(tmp_path, [
      {"prompt": "Q: 2+2?\nA:", "completion": " 4"},
      {"prompt": [SYSTEM, USER], "completion": [ANSWER]},
      {"prompt": [USER], "completion": "4"},
      {"messages": [SYSTEM, USER, ANSWER]},
      {"messages": [USER, ANSWER, later, {"role": "assistant", "content": "6"}]},
      {"text": "Plain text to model."},
  ])
  assert records == [
      SFTRecord("Q: 2+2?\nA:", " 4", "sft.jsonl:1"),
      SFTRecord([SYSTEM, USER], [ANSWER], "sft.jsonl:2"),
      SFTRecord([USER], "4", "sft.jsonl:3"),
      SFTRecord([SYSTEM, USER], [ANSWER], "sft.jsonl:4"),
      # Only the last assistant turn is the response; the earlier one is context (and counted).
      SFTRecord([USER, ANSWER, later], [{"role": "assistant", "content": "6"}], "sft.jsonl:5"),
      SFTRecord("", "Plain text to model.", "sft.jsonl:6"),  # language modeling: an empty prompt
  ]
  assert report.kept == 6 and report.skipped == 0
  assert report.notes == {"sft_earlier_assistant_turns": 1}


def test_renamed_columns_read_only_the_named_layout(tmp_path):
  rows = [{"question": "2+2?", "answer": "4", "messages": [USER, ANSWER]}]
  records, _ = _read(tmp_path, rows, columns={"prompt": "question", "completion": "answer"})
  assert records == [SFTRecord("2+2?", "4", "sft.jsonl:1")]
  records, _ = _read(tmp_path, [{"chat": [USER, ANSWER], "prompt": "ignored"}], columns={"messages": "chat"})
  assert records == [SFTRecord([USER], [ANSWER], "sft.jsonl:1")]


@pytest.mark.parametrize("row, reason, detail", [
    ({"prompt": "x"}, "missing_field", "column 'completion' is missing"),
    ({"completion": "x"}, "missing_field", "column 'prompt' is missing"),
    ({"body": "x"}, "missing_field", "need column 'prompt' + 'completion' or 'messages' or 'text'"),
    ({"prompt": "x", "messages": [USER, ANSWER]}, "bad_field", "'prompt' + 'completion' and 'messages' are all set"),
    ({"messages": [USER, ANSWER], "text": "x"}, "bad_field", "'messages' and 'text' are all set"),
    ({"text": ""}, "empty_field", "text is empty"),
    ({"text": ["a"]}, "non_string_content", "text must be a string"),
    ({"prompt": "x", "completion": ""}, "empty_field", "completion is empty"),
    ({"prompt": "x", "completion": 4}, "non_string_content", "completion must be a string"),
    ({"prompt": "x", "completion": [ANSWER, USER]}, "bad_messages", "roles ['assistant', 'user']; expected one"),
    ({"prompt": [USER, ANSWER], "completion": "x"}, "bad_messages", "prompt: the last message has role 'assistant'"),
    ({"messages": [USER]}, "bad_messages", "messages: the last message has role 'user'; expected 'assistant'"),
    ({"messages": [ANSWER]}, "bad_messages", "only an assistant message"),
    ({"messages": [SYSTEM, ANSWER]}, "bad_messages", "messages[:-1]: the last message has role 'system'"),
    ({"messages": [{"role": "robot", "content": "x"}, ANSWER]}, "bad_messages", "has role 'robot'"),
    ([1, 2], "not_an_object", "expected a JSON object"),
])
def test_bad_rows_are_named_in_strict_mode_and_counted_in_lenient_mode(tmp_path, row, reason, detail):
  good = {"prompt": "2+2?", "completion": "4"}
  with pytest.raises(DataFileError) as e:
    _read(tmp_path, [good, row])
  assert str(e.value).startswith(f"{tmp_path / 'sft.jsonl'}:2: {reason}: ")
  assert detail in str(e.value)
  records, report = _read(tmp_path, [good, row, good], strict=False)
  assert [r.source for r in records] == ["sft.jsonl:1", "sft.jsonl:3"]
  assert report.kept == 2 and report.skipped == 1 and dict(report.counts) == {reason: 1}


def test_parquet_and_json_round_trip(tmp_path):
  path = tmp_path / "sft.parquet"
  pq.write_table(pa.Table.from_pylist([{"messages": [USER, ANSWER]}, {"messages": [SYSTEM, USER, ANSWER]}]), path)
  records, report = adapters.read_records(path, "sft")
  assert records == [SFTRecord([USER], [ANSWER], "sft.parquet:1"), SFTRecord([SYSTEM, USER], [ANSWER],
                                                                             "sft.parquet:2")]
  for record in records + [SFTRecord("p", "r", None)]:
    assert record_from_json(record_to_json(record)) == record


def test_the_record_checks_its_own_fields():
  with pytest.raises(ValueError, match="x.jsonl:3: response: expected text or one assistant message"):
    SFTRecord("p", [USER], "x.jsonl:3")
  with pytest.raises(ValueError, match="prompt: the last message has role 'assistant'"):
    SFTRecord([USER, ANSWER], "r")
  with pytest.raises(ValueError, match=r"response: expected text or one assistant message, got roles "
                                       r"\['assistant', 'assistant'\]"):
    SFTRecord("p", [ANSWER, ANSWER])  # two turns in one response: refused, not only the wrong role
  with pytest.raises(ValueError, match="prompt: message 0 has role 'robot'"):
    SFTRecord([{"role": "robot", "content": "x"}, USER], "r")  # every prompt message is checked, not only the last


def test_every_assistant_turn_makes_one_example_per_answerable_turn():
  from jaxrlhf.data.transforms import every_assistant_turn
  u1, a1, u2, a2 = USER, ANSWER, {"role": "user", "content": "and 3+3?"}, {"role": "assistant", "content": "6"}
  tool = {"role": "tool", "content": "42"}
  conversation = SFTRecord([SYSTEM, u1, a1, u2, a2, tool], [{"role": "assistant", "content": "it is 42"}], "f:1")
  opening = SFTRecord([SYSTEM, {"role": "assistant", "content": "Hello!"}, u1], [ANSWER], "f:2")  # greets first
  plain = SFTRecord("text prompt", "text answer", "f:3")
  examples, counts = every_assistant_turn([conversation, opening, plain])
  assert examples == [SFTRecord([SYSTEM, u1], [a1], "f:1#turn2"), SFTRecord([SYSTEM, u1, a1, u2], [a2], "f:1#turn4"),
                      conversation, opening, plain]
  # The greeting after the system message answers nothing: context only, and counted.
  assert counts == {"conversations": 3, "examples": 5, "unanswerable_turns": 1}


CALL = {"role": "assistant", "content": "<tool_call>get_weather Paris</tool_call>"}
TOOL = {"role": "tool", "content": "22 C"}
SAID = {"role": "assistant", "content": "It is 22 C in Paris.\n"}


def test_a_column_named_alone_selects_its_layout_and_a_null_column_is_absent(tmp_path):
  # Naming only the completion column still reads the prompt + completion layout, and that one alone.
  records, _ = _read(tmp_path, [{"prompt": "2+2?", "answer": "4", "messages": [USER, ANSWER]}],
                     columns={"completion": "answer"})
  assert records == [SFTRecord("2+2?", "4", "sft.jsonl:1")]
  # A parquet file mixing the layouts stores each row's other columns as nulls: they are not "set".
  path = tmp_path / "mixed.parquet"
  pq.write_table(pa.Table.from_pylist([
      {"prompt": None, "completion": None, "messages": [USER, ANSWER], "text": None},
      {"prompt": "2+2?", "completion": "4", "messages": None, "text": None},
      {"prompt": None, "completion": None, "messages": None, "text": "Plain."}]), path)
  records, report = adapters.read_records(path, "sft")
  assert records == [SFTRecord([USER], [ANSWER], "mixed.parquet:1"), SFTRecord("2+2?", "4", "mixed.parquet:2"),
                     SFTRecord("", "Plain.", "mixed.parquet:3")]
  assert report.skipped == 0


def test_a_prompt_may_end_with_a_tool_result(tmp_path):
  # The assistant's answer to a tool result: the prompt ends with the tool turn, in both chat layouts.
  records, _ = _read(tmp_path, [{"prompt": [USER, CALL, TOOL], "completion": [SAID]},
                                {"messages": [SYSTEM, USER, CALL, TOOL, SAID]}])
  assert records == [SFTRecord([USER, CALL, TOOL], [SAID], "sft.jsonl:1"),
                     SFTRecord([SYSTEM, USER, CALL, TOOL], [SAID], "sft.jsonl:2")]  # contents verbatim


def test_earlier_assistant_turns_are_counted_in_every_chat_layout(tmp_path):
  greeting = {"role": "assistant", "content": "Hi! Ask me anything."}
  _, report = _read(tmp_path, [
      {"prompt": [greeting, USER], "completion": "4"},  # prompt + completion; the assistant speaks first
      {"prompt": [USER, ANSWER, USER], "completion": [ANSWER]},
      {"messages": [greeting, USER, ANSWER]},
      {"prompt": [SYSTEM, USER], "completion": "4"},  # no earlier assistant turn
      {"prompt": "Assistant: hi\nUser: 2+2?", "completion": "4"},  # text: not a conversation
  ])
  assert report.kept == 5 and report.notes == {"sft_earlier_assistant_turns": 3}


def test_every_assistant_turn_answers_tool_results_and_keeps_record_order():
  from jaxrlhf.data.transforms import every_assistant_turn
  later = {"role": "user", "content": "And tomorrow?"}
  agent = SFTRecord([USER, CALL, TOOL, SAID, later], [CALL])  # no source
  greeting = {"role": "assistant", "content": "Hi!"}  # the first message: it answers nothing
  six = {"role": "assistant", "content": "6"}
  opener = SFTRecord([greeting, USER, ANSWER, later], [six], "f:2")
  examples, counts = every_assistant_turn([agent, opener])
  assert examples == [SFTRecord([USER], [CALL]), SFTRecord([USER, CALL, TOOL], [SAID]), agent,
                      SFTRecord([greeting, USER], [ANSWER], "f:2#turn2"), opener]
  assert counts == {"conversations": 2, "examples": 5, "unanswerable_turns": 1}
