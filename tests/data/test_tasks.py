"""The generated arithmetic prompt files: a pure function of (seed, split, knobs), answers that are right, disjoint
train / held-out problems, and files that the "prompts" adapter reads back."""

import hashlib
import json
import os
import pathlib
import re

import pytest

from jaxrlhf.data import adapters, prompts, tasks

_QUESTION = re.compile(r"(\d+)\D+?(\d+)")


def test_rows_are_a_pure_function_of_seed_split_and_index():
  rows = tasks.arithmetic_rows(3, 50)
  assert rows == tasks.arithmetic_rows(3, 50)
  assert tasks.arithmetic_rows(3, 20) == rows[:20]  # Row i does not depend on n.
  assert tasks.arithmetic_rows(4, 50) != rows
  assert tasks.arithmetic_rows(3, 50, "eval") != rows
  # Pinned: a change of wording, hashing or defaults shows here (the demo's numbers depend on this file).
  digest = hashlib.sha256(json.dumps(tasks.arithmetic_rows(0, 200)).encode()).hexdigest()
  assert digest[:16] == "c1e7aae2b0ecd1a3"
  question = ("Zoe had 12 pencils and found 10 more pencils. How many pencils does Zoe have in total? "
              "Answer with just the number.")
  assert rows[0]["prompt"] == [{"role": "user", "content": question}]
  assert rows[0]["answer"] == "22"


@pytest.mark.parametrize("task", [tasks.ArithmeticTask(), tasks.ArithmeticTask(0, 99, ("-",), word_problems=False),
                                  tasks.ArithmeticTask(5, 9, ("+",), instruction="End with 'Answer: N'.")])
def test_answers_are_right_and_the_numbers_are_in_the_text(task):
  for split in tasks.SPLITS:
    for row in tasks.arithmetic_rows(1, 300, split, task):
      (message,) = row["prompt"]
      assert message["role"] == "user" and message["content"].endswith(" " + task.instruction)
      a, b = (int(x) for x in _QUESTION.search(message["content"]).groups())  # The text says a, then b.
      assert (a, b) == (row["a"], row["b"]) and task.min_operand <= min(a, b) <= max(a, b) <= task.max_operand
      expected = {"+": a + b, "-": a - b}[row["operation"]]
      assert row["operation"] in task.operations and row["answer"] == str(expected) and expected >= 0
      if not task.word_problems:
        assert message["content"] == f"What is {a} {row['operation']} {b}? {task.instruction}"


def test_train_and_eval_problems_are_disjoint_and_both_operations_appear():
  problem = lambda r: (r["a"], r["operation"], r["b"])
  train = {problem(r) for r in tasks.arithmetic_rows(0, 2000, "train")}
  held_out = {problem(r) for r in tasks.arithmetic_rows(0, 2000, "eval")}
  assert not train & held_out
  # 20 * 20 sums + 210 differences with a >= b: about 20% held out, and (nearly) all of each drawn.
  assert 0.15 < len(held_out) / (len(train) + len(held_out)) < 0.25 and len(train) + len(held_out) > 550
  assert {p[1] for p in train} == {p[1] for p in held_out} == {"+", "-"}


def test_files_read_back_as_chat_prompts_with_an_answer_column(tmp_path):
  train_path, eval_path = tasks.write_arithmetic_files(tmp_path / "arith", 0, num_train=40, num_eval=10)
  train, held_out, report = prompts.read_prompt_splits(train_path, eval_path)
  assert (len(train), len(held_out), report["skipped"], report["held_out_in_train"]) == (40, 10, 0, 0)
  assert train[0].prompt == tasks.arithmetic_rows(0, 1)[0]["prompt"]
  assert held_out[9].columns == {k: v for k, v in tasks.arithmetic_rows(0, 10, "eval")[9].items() if k != "prompt"}
  assert adapters.read_prompt_records(train_path)[0] == train


def test_bad_knobs():
  with pytest.raises(ValueError, match="min_operand <= max_operand"):
    tasks.ArithmeticTask(min_operand=5, max_operand=4)
  with pytest.raises(ValueError, match="operations must be a non-empty subset"):
    tasks.ArithmeticTask(operations=("*",))
  with pytest.raises(ValueError, match="eval_share must be in"):
    tasks.ArithmeticTask(eval_share=1.0)
  with pytest.raises(ValueError, match="split must be one of"):
    tasks.arithmetic_rows(0, 3, "test")
  with pytest.raises(ValueError, match="split 'eval': no problems"):
    tasks.arithmetic_rows(0, 3, "eval", tasks.ArithmeticTask(2, 2, ("+",), eval_share=0.01))


def test_shipped_arithmetic_files_regenerate_byte_identically(tmp_path):
  # data/tasks/arithmetic/ (configs/smollm2_grpo.py's prompts) is exactly what its documented command writes.
  shipped = pathlib.Path(__file__).resolve().parents[2] / "data" / "tasks" / "arithmetic"
  train, held_out = tasks.write_arithmetic_files(tmp_path, 0, 2048, 256, tasks.ArithmeticTask(word_problems=False))
  for path in (train, held_out):
    assert pathlib.Path(path).read_bytes() == (shipped / os.path.basename(path)).read_bytes(), path
