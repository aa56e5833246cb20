"""The generated tool-calling prompt files: a pure function of (seed, split, index), gold calls that follow the tool
signatures and the request text, disjoint train / held-out calls, a gold answer that scores ToolRL's maximum, and
shipped files that regenerate byte for byte."""

import hashlib
import json
import os
import pathlib

import pytest

from jaxrlhf.data import prompts, tool_tasks
from jaxrlhf.rewards import toolrl


def test_rows_are_a_pure_function_of_seed_split_and_index():
  rows = tool_tasks.tool_rows(3, 60)
  assert rows == tool_tasks.tool_rows(3, 60)
  assert tool_tasks.tool_rows(3, 25) == rows[:25]  # Row i does not depend on n.
  assert tool_tasks.tool_rows(4, 60) != rows and tool_tasks.tool_rows(3, 60, "eval") != rows
  # Pinned: a change of wording, hashing or tools shows here (a demo's numbers depend on this file).
  digest = hashlib.sha256(json.dumps(tool_tasks.tool_rows(0, 200)).encode()).hexdigest()
  assert digest[:16] == "699934bc7fdffb79"
  assert rows[0]["prompt"][0] == {"role": "system", "content": tool_tasks.SYSTEM_PROMPT}


def test_gold_calls_follow_the_signatures_and_the_request():
  signatures = {t["name"]: t["parameters"] for t in tool_tasks.TOOLS}
  counts = {0: 0, 1: 0, 2: 0}
  for split in tool_tasks.SPLITS:
    for row in tool_tasks.tool_rows(1, 400, split):
      system, user = row["prompt"]
      assert system["role"] == "system" and user["role"] == "user"
      calls = json.loads(row["tool_calls"])
      counts[len(calls)] += 1
      for call in calls:
        params = signatures[call["name"]]
        assert set(call["parameters"]) == set(params)
        for key, value in call["parameters"].items():
          spec = params[key]
          assert isinstance(value, {"string": str, "number": int}[spec["type"]])
          if "enum" in spec:
            assert value in spec["enum"]
          text = user["content"].lower()
          if key in ("city", "title", "a", "b", "value", "time"):
            assert str(value).lower() in text, (key, value, text)  # Every value is stated in the request.
        if call["name"] == "convert_units":
          assert call["parameters"]["from_unit"] != call["parameters"]["to_unit"]
  assert counts[0] > 40 and counts[2] > 60 and counts[1] > 500  # Small talk, two-call and one-call requests.


def test_train_and_eval_calls_are_disjoint():
  train = {r["tool_calls"] for r in tool_tasks.tool_rows(0, 1500, "train") if r["tool_calls"] != "[]"}
  held_out = {r["tool_calls"] for r in tool_tasks.tool_rows(0, 300, "eval") if r["tool_calls"] != "[]"}
  assert train and held_out and not train & held_out


def test_the_gold_answer_scores_the_maximum_and_files_read_back(tmp_path):
  train_path, eval_path = tool_tasks.write_tool_files(tmp_path / "tools", 0, num_train=30, num_eval=10)
  train, held_out, report = prompts.read_prompt_splits(train_path, eval_path)
  assert (len(train), len(held_out), report["skipped"]) == (30, 10, 0)
  assert train[0].prompt == tool_tasks.tool_rows(0, 1)[0]["prompt"]
  reward = toolrl.toolrl_reward()
  golds = [r.columns["tool_calls"] for r in train]
  perfect = []
  for gold in golds:
    calls = json.loads(gold)
    body = ("<tool_call>\n" + "\n".join(json.dumps(c) for c in calls) + "\n</tool_call>" if calls
            else "<response>Hi!</response>")
    perfect.append(f"<think>ok</think>\n{body}")
  expected = [4.0 if json.loads(g) else 1.0 for g in golds]  # 1 + 3 with calls; 1 + 0 for small talk.
  assert reward(prompts=[r.prompt for r in train], completions=perfect, tool_calls=golds) == expected


def test_bad_arguments():
  with pytest.raises(ValueError, match="split must be one of"):
    tool_tasks.tool_rows(0, 3, "test")
  with pytest.raises(ValueError, match="n must be >= 0"):
    tool_tasks.tool_rows(0, -1)


def test_shipped_toolcall_files_regenerate_byte_identically(tmp_path):
  # data/tasks/toolcall/ (configs/papers/toolrl.py's prompts) is exactly what its documented command writes.
  shipped = pathlib.Path(__file__).resolve().parents[2] / "data" / "tasks" / "toolcall"
  for path in tool_tasks.write_tool_files(tmp_path, 0, 1024, 128):
    assert pathlib.Path(path).read_bytes() == (shipped / os.path.basename(path)).read_bytes(), path
