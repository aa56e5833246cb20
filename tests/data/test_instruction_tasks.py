"""The generated instruction-following task: rows are a pure function of the seed, train / held-out topics are
disjoint, every constraint in the prompt text is in its column (and only those), the shipped files regenerate byte
for byte and read back as prompts with their columns, and hand-written compliant answers score 1.0."""

import os
import pathlib

import pytest

from jaxrlhf.data import adapters, instruction_tasks
from jaxrlhf.rewards import kinds
from jaxrlhf.rewards.calling import call_reward_function
from jaxrlhf.rewards.multi_aspect import ASPECTS

SHIPPED = pathlib.Path(__file__).resolve().parents[2] / "data" / "tasks" / "instruct"
# Family -> (its columns, a phrase its instruction sentence holds).
FAMILY_COLUMNS = {"length": (("min_words", "max_words"), "words."), "sentences": (("max_sentences",), "at most"),
                  "keywords": (("keywords",), "Include the words"), "forbidden": (("forbidden_words",), "Do not use"),
                  "case": (("case",), "lowercase"), "bullets": (("num_bullets",), "bullet points"),
                  "end": (("end_phrase",), "End your answer"), "json": (("json",), "JSON object")}


def test_rows_are_pure_disjoint_and_columns_match_the_text():
  rows = instruction_tasks.instruction_rows(0, 200)
  assert rows == instruction_tasks.instruction_rows(0, 200) and instruction_tasks.instruction_rows(0, 20) == rows[:20]
  assert instruction_tasks.instruction_rows(1, 200) != rows
  topic = lambda r: r["prompt"][0]["content"].split(".")[0]  # noqa: E731
  held_out = instruction_tasks.instruction_rows(0, 100, "eval")
  assert not {topic(r) for r in rows} & {topic(r) for r in held_out}
  for row in rows:
    assert set(ASPECTS) <= set(row) and 2 <= len(row["families"]) <= 3
    present = {a for a in ASPECTS if row[a] is not None}
    assert present == {c for f in row["families"] for c in FAMILY_COLUMNS[f][0]}, row
    for family in row["families"]:
      assert FAMILY_COLUMNS[family][1] in row["prompt"][0]["content"], (family, row)
  with pytest.raises(ValueError, match="split must be one of"):
    instruction_tasks.instruction_rows(0, 3, "test")


def test_an_empty_split_is_a_clear_error():
  with pytest.raises(ValueError, match=r"split 'eval': no topics in it for seed 0 and eval_share 1e-09"):
    instruction_tasks.instruction_rows(0, 3, "eval", eval_share=1e-9)
  with pytest.raises(ValueError, match=r"split 'train': no topics in it"):
    instruction_tasks.instruction_rows(0, 3, "train", eval_share=1 - 1e-9)


def test_shipped_files_regenerate_and_read_back(tmp_path):
  for path in instruction_tasks.write_instruction_files(tmp_path, 0, 512, 128):
    assert pathlib.Path(path).read_bytes() == (SHIPPED / os.path.basename(path)).read_bytes(), path
  records, report = adapters.read_prompt_records(str(SHIPPED / "instruct_eval.jsonl"))
  assert (len(records) == 128 and not report.skipped and
          records[0].columns["keywords"] == instruction_tasks.instruction_rows(0, 1, "eval")[0]["keywords"])


def test_compliant_answers_score_one():
  rows = instruction_tasks.instruction_rows(0, 2)
  # Row 0: keywords flour / oven, not cake / sugar, exactly 4 bullets. Row 1: 25-40 words, not ball / win, ends with
  # "That is all." -- written by hand from the prompts (the rows are fixed by the seed).
  assert rows[0]["families"] == ["keywords", "forbidden", "bullets"]
  assert rows[1]["families"] == ["length", "forbidden", "end"] and rows[1]["end_phrase"] == "That is all."
  assert (rows[1]["min_words"], rows[1]["max_words"]) == (25, 40)
  answers = ["- knead the flour\n- heat the oven\n- shape the loaf\n- let it rise",
             " ".join(["the crowd sang loudly"] * 6) + ". That is all."]  # 24 + 3 = 27 words.
  fn = kinds.make_reward("instruction_adherence", {})
  columns = {a: [r[a] for r in rows] for a in ASPECTS}
  assert call_reward_function(fn, ["p", "p"], answers, columns).tolist() == [1.0, 1.0]
  # Too short (min 25 missed, max 40 met), uses "win", ends right: 2 of 4 aspects.
  answers[1] = "we lost, but it was fun to win a corner. That is all."
  assert call_reward_function(fn, ["p", "p"], answers, columns).tolist() == [1.0, 0.5]
