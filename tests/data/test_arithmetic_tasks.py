"""The Co-Reward arithmetic task (jaxrlhf/data/arithmetic_tasks.py): every answer recomputed from the text alone
(the story's verb says the operation), both forms of a problem agree, and the SFT pairs carry the right answer.
(tests/experiments/test_co_reward_config.py checks the pairing, disjoint splits and the shipped files.)"""

import re

import pytest

from jaxrlhf.data import arithmetic_tasks

# The words of each template that say whether items come in or go out.
_ADD = re.compile(r"gets \d+ more|puts \d+ more")
_SUB = re.compile(r"gives \d+ \w+ away|\d+ \w+ are taken out")


def _answer_from_text(text: str) -> int:
  a, b = (int(x) for x in re.findall(r"\d+", text)[:2])
  add, sub = bool(_ADD.search(text)), bool(_SUB.search(text))
  assert add != sub, text  # Exactly one of the two stories.
  return a + b if add else a - b


@pytest.mark.parametrize("split", arithmetic_tasks.SPLITS)
def test_every_answer_follows_from_its_text(split):
  problems = arithmetic_tasks.split_problems(0, split)
  rows = arithmetic_tasks.prompt_rows(0, len(problems), split)
  assert len(rows) == 2 * len(problems)
  for row in rows:
    expected = _answer_from_text(row["prompt"])
    assert row["answer"] == str(expected) and expected >= 1, row  # b < a for differences: never 0 or negative.


def test_sft_pairs_choose_the_right_answer():
  for row in arithmetic_tasks.sft_rows(3, 200):
    expected = _answer_from_text(row["prompt"])
    assert (row["chosen"], row["rejected"]) == (f" {expected}", f" {expected + 1}")


def test_split_shares_and_bounds():
  sizes = {s: len(arithmetic_tasks.split_problems(0, s)) for s in arithmetic_tasks.SPLITS}
  total = len(arithmetic_tasks.problems())
  assert sum(sizes.values()) == total == (81 + 117) * 8 * 6  # 9x9 sums, 117 differences with b < a <= 18.
  for split, share in arithmetic_tasks.SPLIT_SHARES.items():
    assert abs(sizes[split] / total - share) < 0.03, (split, sizes)
  with pytest.raises(ValueError, match=r"n must be in \[0, "):
    arithmetic_tasks.prompt_rows(0, sizes["eval"] + 1, "eval")
  with pytest.raises(ValueError, match="split must be one of"):
    arithmetic_tasks.split_problems(0, "test")
