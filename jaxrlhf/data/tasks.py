"""A verifiable prompt file for the real-model demos: one-step arithmetic word problems with checkable answers.

A problem is two whole numbers a, b in [min_operand, max_operand] (default [1, 20]) and an operation, "+" (a + b)
or "-" (a - b with a >= b, so no answer is negative), told as a one-step word problem ("Mia has 7 apples. She gets
5 more apples. How many apples does Mia have now?") or, with `word_problems=False`, as a bare question ("What is
7 + 5?"), followed by a space and the instruction (default INSTRUCTION, "Answer with just the number."). A row is

    {"prompt": [{"role": "user", "content": <question> + " " + <instruction>}], "answer": "12",
     "a": 7, "b": 5, "operation": "+", "id": "train-0"}

(a chat prompt in TRL's conversational "prompt" column); `answer` is the result as a decimal string, for an
exact-match reward on the completion's final number.

Everything is a pure function of (seed, split, row index, knobs) through SHA-256, with no random-number stream
whose algorithm could change between Python or NumPy versions: row i is the same whatever n is, and the "train" and
"eval" splits draw from DISJOINT sets of (a, operation, b) problems (a problem is held out when its hash falls below
`eval_share`), so held-out accuracy never measures memorization of a training problem. Within a split, problems are
drawn with replacement (a problem may come back with other words).
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any

from jaxrlhf.data import generated
from jaxrlhf.data.generated import stable_hash

INSTRUCTION = "Answer with just the number."
OPERATIONS = ("+", "-")
SPLITS = ("train", "eval")

_NAMES = (("Mia", "She"), ("Tom", "He"), ("Ava", "She"), ("Leo", "He"), ("Zoe", "She"), ("Sam", "He"),
          ("Lily", "She"), ("Ben", "He"))
_ITEMS = (("apple", "apples"), ("book", "books"), ("marble", "marbles"), ("pencil", "pencils"),
          ("sticker", "stickers"), ("coin", "coins"), ("shell", "shells"), ("card", "cards"))
# {a} / {b} are the numbers with their nouns ("1 apple", "7 apples"); {b_more} is "5 more apples"; {items} is the
# plural noun.
_TEMPLATES = {
    "+": ("{name} has {a}. {pronoun} gets {b_more}. How many {items} does {name} have now?",
          "There are {a} in a box. {name} puts in {b}. How many {items} are in the box now?",
          "{name} had {a} and found {b_more}. How many {items} does {name} have in total?"),
    "-": ("{name} has {a}. {pronoun} gives {b} away. How many {items} does {name} have left?",
          "There are {a} in a box. {name} takes out {b}. How many {items} are left in the box?",
          "{name} had {a} and lost {b}. How many {items} does {name} have now?"),
}


@dataclasses.dataclass(frozen=True)
class ArithmeticTask:
  """The difficulty knobs.

  Attributes:
    min_operand, max_operand: the numbers' range (inclusive, 0 <= min <= max).
    operations: a non-empty subset of OPERATIONS.
    word_problems: a word problem (True) or a bare "What is a + b?" question.
    instruction: appended to every question after a space.
    eval_share: the share of (a, operation, b) problems reserved for the "eval" split, in (0, 1).
  """

  min_operand: int = 1
  max_operand: int = 20
  operations: tuple[str, ...] = OPERATIONS
  word_problems: bool = True
  instruction: str = INSTRUCTION
  eval_share: float = 0.2

  def __post_init__(self):
    object.__setattr__(self, "operations", tuple(self.operations))
    if not 0 <= self.min_operand <= self.max_operand:
      raise ValueError(f"need 0 <= min_operand <= max_operand, got {self.min_operand}, {self.max_operand}")
    if not self.operations or not set(self.operations) <= set(OPERATIONS):
      raise ValueError(f"operations must be a non-empty subset of {OPERATIONS}, got {self.operations!r}")
    if not 0.0 < self.eval_share < 1.0:
      raise ValueError(f"eval_share must be in (0, 1), got {self.eval_share}")


def _problems(seed: int, task: ArithmeticTask, split: str) -> list[tuple[int, str, int]]:
  """The split's (a, operation, b) problems, in a fixed order."""
  lo, hi = task.min_operand, task.max_operand
  problems = [(a, op, b) for op in task.operations for a in range(lo, hi + 1) for b in range(lo, hi + 1)
              if op == "+" or a >= b]
  held_out = [stable_hash("split", seed, a, op, b) < task.eval_share * 2.0**64 for a, op, b in problems]
  out = [p for p, h in zip(problems, held_out) if h == (split == "eval")]
  if not out:
    raise ValueError(f"split {split!r}: no problems in it for {task} (widen the operand range or change "
                     "eval_share)")
  return out


def _count(n: int, nouns: tuple[str, str]) -> str:
  return f"{n} {nouns[0] if n == 1 else nouns[1]}"


def arithmetic_rows(seed: int, n: int, split: str = "train", task: ArithmeticTask = ArithmeticTask()
                    ) -> list[dict[str, Any]]:
  """`n` rows of the "prompts" file format (module docstring) for `split` ("train" or "eval")."""
  if split not in SPLITS:
    raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
  if n < 0:
    raise ValueError(f"n must be >= 0, got {n}")
  problems = _problems(seed, task, split)
  rows = []
  for i in range(n):
    a, op, b = problems[stable_hash("problem", seed, split, i) % len(problems)]
    if task.word_problems:
      name, pronoun = _NAMES[stable_hash("name", seed, split, i) % len(_NAMES)]
      nouns = _ITEMS[stable_hash("item", seed, split, i) % len(_ITEMS)]
      template = _TEMPLATES[op][stable_hash("template", seed, split, i) % len(_TEMPLATES[op])]
      question = template.format(name=name, pronoun=pronoun, a=_count(a, nouns), b=_count(b, nouns),
                                 b_more=f"{b} more {nouns[0] if b == 1 else nouns[1]}", items=nouns[1])
    else:
      question = f"What is {a} {op} {b}?"
    answer = a + b if op == "+" else a - b
    rows.append({"prompt": [{"role": "user", "content": f"{question} {task.instruction}"}], "answer": str(answer),
                 "a": a, "b": b, "operation": op, "id": f"{split}-{i}"})
  return rows


def write_arithmetic_files(folder: str | os.PathLike, seed: int, num_train: int, num_eval: int,
                           task: ArithmeticTask = ArithmeticTask()) -> tuple[str, str]:
  """Writes `folder`/arithmetic_train.jsonl and arithmetic_eval.jsonl (disjoint problems); returns their paths."""
  paths = generated.write_split_files(folder, "arithmetic_{split}.jsonl",
                                      lambda split, n: arithmetic_rows(seed, n, split, task),
                                      (("train", num_train), ("eval", num_eval)))
  return paths[0], paths[1]
