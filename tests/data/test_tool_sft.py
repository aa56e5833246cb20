"""The tool-calling SFT file (a format warm start for configs/papers/toolrl.py): gold answers that ToolRL's own
reward scores at its maximum, small talk answered without a tool, prompts that are the train file's first rows, and a
shipped file that regenerates byte for byte."""

import json
import pathlib

import pytest

from jaxrlhf.data import tool_tasks
from jaxrlhf.rewards import toolrl

SHIPPED = pathlib.Path(__file__).resolve().parents[2] / "data" / "tasks" / "toolcall"
NUM_SFT = 256  # write_sft_file("data/tasks/toolcall", 0, 256), the shipped file.


def _request_and_calls(row):
  return row["prompt"][-1]["content"], json.loads(row["tool_calls"])


def test_gold_completions_score_the_maximum_under_the_toolrl_reward():
  train = tool_tasks.tool_rows(0, NUM_SFT, "train")
  sft = tool_tasks.sft_rows(0, NUM_SFT)
  kinds = {0: 0, 1: 0, 2: 0}
  for row, sft_row in zip(train, sft, strict=True):
    request, gold = _request_and_calls(row)
    completion = sft_row["completion"]
    assert completion == tool_tasks.gold_completion(request, gold)
    kinds[len(gold)] += 1
    # R_format = 1 for the kind the gold calls expect (and 0 for the other kind: the check is not vacuous).
    assert toolrl.format_reward(completion, tool_calls=bool(gold), response=not gold) == 1.0, completion
    assert toolrl.format_reward(completion, tool_calls=not gold, response=bool(gold)) == 0.0, completion
    if gold:
      assert toolrl.correctness_reward(completion, gold) == 3.0, completion
      assert toolrl.parse_tool_calls(completion) == gold
      assert "<response>" not in completion
      for call in gold:
        assert call["name"] in completion.split("</think>")[0]  # The reasoning names each tool.
    else:  # Small talk: a fixed reply in <response>, and no tool call.
      assert "<tool_call>" not in completion and "</tool_call>" not in completion
      reply = tool_tasks.SMALL_TALK_REPLIES[request]
      assert completion.endswith(f"<response> {reply} </response>")
      assert "no tool is needed" in completion
  assert kinds == {0: 25, 1: 200, 2: 31}, kinds  # All three kinds are checked above.
  # The reward the stages use gives the same: 1 + 3 with calls, 1 + 0 for small talk.
  reward = toolrl.toolrl_reward()
  scores = reward(prompts=[r["prompt"] for r in sft], completions=[r["completion"] for r in sft],
                  tool_calls=[r["tool_calls"] for r in train])
  assert scores == [4.0 if r["tool_calls"] != "[]" else 1.0 for r in train]


def test_every_small_talk_request_has_a_reply():
  rows = tool_tasks.tool_rows(0, 1024, "train") + tool_tasks.tool_rows(0, 128, "eval")
  small_talk = {r["prompt"][-1]["content"] for r in rows if r["tool_calls"] == "[]"}
  assert small_talk == set(tool_tasks.SMALL_TALK_REPLIES)  # All 8, each with a reply and no stray key.
  for request, reply in tool_tasks.SMALL_TALK_REPLIES.items():
    assert reply.strip() and "<" not in reply and ">" not in reply, reply  # A tag would break the format.
    completion = tool_tasks.gold_completion(request, [])
    assert toolrl.format_reward(completion, tool_calls=False, response=True) == 1.0, completion


def test_sft_prompts_are_the_train_files_first_rows():
  sft = tool_tasks.sft_rows(0, NUM_SFT)
  with open(SHIPPED / "toolcall_train.jsonl", encoding="utf-8") as f:
    train = [json.loads(line) for line in f]
  assert len(sft) == NUM_SFT and all(set(r) == {"prompt", "completion"} for r in sft)
  assert [r["prompt"] for r in sft] == [r["prompt"] for r in train[:NUM_SFT]]
  assert tool_tasks.sft_rows(0, 10) == sft[:10]  # Row i does not depend on n.
  # Train split only: no SFT answer is a held-out request's gold calls.
  with open(SHIPPED / "toolcall_eval.jsonl", encoding="utf-8") as f:
    held_out = {r["tool_calls"] for r in map(json.loads, f) if r["tool_calls"] != "[]"}
  taught = {json.dumps(toolrl.parse_tool_calls(r["completion"])) for r in sft if "<tool_call>" in r["completion"]}
  assert taught and not taught & held_out


def test_shipped_sft_file_regenerates_byte_identically(tmp_path):
  # data/tasks/toolcall/toolcall_sft.jsonl is exactly what tool_tasks' documented command writes.
  path = tool_tasks.write_sft_file(tmp_path / "tools", 0, NUM_SFT)
  assert pathlib.Path(path) == tmp_path / "tools" / "toolcall_sft.jsonl"
  assert pathlib.Path(path).read_bytes() == (SHIPPED / "toolcall_sft.jsonl").read_bytes()


def test_a_request_without_calls_must_be_small_talk():
  with pytest.raises(ValueError, match="no fixed reply for the request 'Book me a flight.'"):
    tool_tasks.gold_completion("Book me a flight.", [])
  # With gold calls any request has an answer.
  call = {"name": "calculate", "parameters": {"a": 2, "b": 3, "operation": "add"}}
  assert tool_tasks.gold_completion("Book me a flight.", [call]) == (
      '<think> Use calculate. </think>\n<tool_call>\n{"name": "calculate", "parameters": {"a": 2, "b": 3, '
      '"operation": "add"}}\n</tool_call>')
