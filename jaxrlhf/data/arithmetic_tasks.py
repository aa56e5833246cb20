"""A generated reasoning task with paraphrases, for Co-Reward (`jaxrlhf.rewards.voting`): one-step arithmetic word
problems with a numeric answer, each written in two surface forms, the "original" and its analogical "rephrased"
form (same numbers, same answer, different story), as Co-Reward pairs a question with its rephrasing.

A problem is (operation, a, b, name, item): "add" (a, b in 1..9) or "sub" (a in 2..18, b in 1..9, b < a), one of
NAMES and ITEMS. TEMPLATES holds the two forms of each operation; both name every part of the problem, so no two
problems share a text. Problems go to three DISJOINT splits by a SHA-256
hash of (seed, problem): "sft" (to teach a small policy the format and part of the arithmetic), "train" (the RL
prompts) and "eval" (held out); within a split the problems come in hash order, so rows are a pure function of
(seed, split) and the first n rows do not depend on n. Arithmetic facts (a, b) recur across splits with other names
and items; the problems do not.

Prompt files ("prompts" format), two rows per problem, the original then the rephrasing:

    {"prompt": "<question>\\nAnswer:", "answer": "12", "pair_id": "train-3", "view": "original",
     "id": "train-3-original"}

The SFT file ("pairwise" format, both forms of each problem): {"prompt", "chosen": " 12", "rejected": " 13"} (the
sft stage trains on "chosen"). Regenerate data/tasks/coreward/ with `write_arithmetic_files` (see its docstring).
"""

from __future__ import annotations

import os
from typing import Any

from jaxrlhf.data import adapters
from jaxrlhf.data.generated import stable_hash

SPLITS = ("sft", "train", "eval")
SPLIT_SHARES = {"eval": 0.15, "train": 0.35, "sft": 0.5}  # of the problem space; sft takes the rest
NAMES = ("Mia", "Omar", "Lena", "Ravi", "Zoe", "Tom", "Ana", "Kofi")
ITEMS = ("apples", "pencils", "stickers", "marbles", "cookies", "stamps")
TEMPLATES = {
    "add": ("{name} has {a} {item}. {name} gets {b} more {item}. How many {item} does {name} have now?",
            ("There are {a} {item} in {name}'s box. Someone puts {b} more {item} into the box. How many {item} are in "
             "the box?")),
    "sub": ("{name} has {a} {item}. {name} gives {b} {item} away. How many {item} does {name} have left?",
            ("{name}'s box holds {a} {item}. {b} {item} are taken out of the box. How many {item} are still in the "
             "box?")),
}
VIEWS = ("original", "rephrased")
SUFFIX = "\nAnswer:"


def problems() -> list[tuple[str, int, int, str, str]]:
  """Every problem (operation, a, b, name, item), in a fixed order."""
  facts = [("add", a, b) for a in range(1, 10) for b in range(1, 10)]
  facts += [("sub", a, b) for a in range(2, 19) for b in range(1, 10) if b < a]
  return [(op, a, b, name, item) for op, a, b in facts for name in NAMES for item in ITEMS]


def answer(problem: tuple[str, int, int, str, str]) -> int:
  op, a, b = problem[:3]
  return a + b if op == "add" else a - b


def question(problem: tuple[str, int, int, str, str], view: str) -> str:
  """The problem's text in form `view` ("original" or "rephrased"), ending with the answer cue SUFFIX."""
  op, a, b, name, item = problem
  return TEMPLATES[op][VIEWS.index(view)].format(name=name, a=a, b=b, item=item) + SUFFIX


def split_of(seed: int, problem: tuple) -> str:
  """The split a problem belongs to (module docstring)."""
  u = stable_hash("split", seed, *problem) / 2.0**64
  return "eval" if u < SPLIT_SHARES["eval"] else "train" if u < SPLIT_SHARES["eval"] + SPLIT_SHARES["train"] else "sft"


def split_problems(seed: int, split: str) -> list[tuple]:
  """The problems of `split`, in hash order."""
  if split not in SPLITS:
    raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
  return sorted((p for p in problems() if split_of(seed, p) == split), key=lambda p: stable_hash("order", seed, *p))


def prompt_rows(seed: int, n: int, split: str = "train") -> list[dict[str, Any]]:
  """Rows of the "prompts" file format for the first `n` problems of `split`: 2 n rows, each problem's original
  then its rephrasing, sharing the pair id."""
  problems_n = split_problems(seed, split)
  if not 0 <= n <= len(problems_n):
    raise ValueError(f"n must be in [0, {len(problems_n)}] for split {split!r}, got {n}")
  rows = []
  for i, p in enumerate(problems_n[:n]):
    for view in VIEWS:
      rows.append({"prompt": question(p, view), "answer": str(answer(p)), "pair_id": f"{split}-{i}", "view": view,
                   "id": f"{split}-{i}-{view}"})
  return rows


def sft_rows(seed: int, n: int) -> list[dict[str, Any]]:
  """Rows of the "pairwise" format for the first `n` problems of the "sft" split (both forms): chosen = the answer,
  rejected = the answer + 1 (unused by the sft stage)."""
  return [{"prompt": r["prompt"], "chosen": f" {r['answer']}", "rejected": f" {int(r['answer']) + 1}"}
          for r in prompt_rows(seed, n, "sft")]


def write_arithmetic_files(folder: str | os.PathLike, seed: int, num_sft: int, num_train: int, num_eval: int
                           ) -> tuple[str, str, str]:
  """Writes `folder`/sft.jsonl, train.jsonl and eval.jsonl (problem counts; two rows per problem); returns their
  paths. The shipped files: write_arithmetic_files("data/tasks/coreward", 0, 1200, 256, 128)."""
  os.makedirs(folder, exist_ok=True)
  paths = [os.path.join(os.fspath(folder), f"{name}.jsonl") for name in ("sft", "train", "eval")]
  adapters.write_jsonl(paths[0], sft_rows(seed, num_sft))
  adapters.write_jsonl(paths[1], prompt_rows(seed, num_train, "train"))
  adapters.write_jsonl(paths[2], prompt_rows(seed, num_eval, "eval"))
  return paths[0], paths[1], paths[2]
