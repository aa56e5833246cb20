"""The end-of-run summary table and plot for world (gold) and prompt-file (reward source) evaluations."""

import os
import types

from experiments import summary


def _stage(policy, base):
  return types.SimpleNamespace(policy=policy, base=base)


def test_reward_source_columns_base_row_and_plot_without_gold(tmp_path):
  metrics = {"reward/correct/policy": 0.5, "reward/correct/policy_lower": 0.4, "reward/correct/policy_upper": 0.6,
             "reward/correct/base": 0.25, "reward/correct/gain": 0.25, "reward/correct/win_rate": 0.6,
             "reward/correct/prompts": 256.0, "kl": 1.5, "length/policy": 9.0, "length/base": 12.0}
  stages = [("grpo", "rl", None), ("evaluate", "evaluate_policy", _stage("stage:grpo", "/m/base.gguf"))]
  md = summary.write_summary(str(tmp_path), stages, {"evaluate": {"metrics": metrics}})
  lines = md.strip().splitlines()
  assert lines[0] == ("| policy | correct | correct gain | correct win rate | KL to base (nats) | length |")
  assert lines[2] == "| base.gguf (base) | 0.250 | - | - | 0.000 | 12.000 |"
  assert lines[3] == "| grpo | 0.500 [0.400, 0.600] | 0.250 | 0.600 | 1.500 | 9.000 |"
  assert os.path.getsize(tmp_path / "gold_vs_kl.png") > 0


def test_gold_rows_keep_their_columns(tmp_path):
  metrics = {"gold/policy": 1.0, "gold/base": 0.5, "gold/gain": 0.5, "gold/win_rate": 0.7, "kl": 2.0}
  stages = [("evaluate", "evaluate_policy", _stage("stage:dpo", "stage:sft"))]
  rows = summary.policy_rows(stages, {"evaluate": {"metrics": metrics}})
  assert rows[0] == ("sft (base)", {"gold/policy": 0.5, "kl": 0.0})
  assert [h for _, h in summary.policy_columns(rows)] == ["gold", "gold gain", "win rate", "KL to base (nats)"]


def test_no_score_means_no_plot(tmp_path):
  stages = [("evaluate", "evaluate_policy", _stage("stage:p", "stage:b"))]
  summary.write_summary(str(tmp_path), stages, {"evaluate": {"metrics": {"kl": 0.1, "length/policy": 3.0}}})
  assert not (tmp_path / "gold_vs_kl.png").exists()


def test_a_one_prompt_interval_says_so(tmp_path):
  """evaluation.policy.confidence_interval gives (-inf, inf) for one prompt (normal method): the summary says there
  is no interval instead of printing [-inf, inf], and the plot still draws the point."""
  import math  # pylint: disable=g-import-not-at-top
  metrics = {"gold/policy": 1.25, "gold/policy_lower": -math.inf, "gold/policy_upper": math.inf, "gold/base": 0.5,
             "gold/gain": 0.75, "gold/gain_lower": 0.5, "gold/gain_upper": 1.0, "kl": 2.0,
             "kl_lower": -math.inf, "kl_upper": math.inf}
  stages = [("evaluate", "evaluate_policy", _stage("stage:dpo", "stage:sft"))]
  summary.write_summary(str(tmp_path), stages, {"evaluate": {"metrics": metrics}})
  text = (tmp_path / "summary.md").read_text()
  assert "| 1.250 [no interval: one prompt] | 0.750 [0.500, 1.000] |" in text and "inf" not in text
  assert (tmp_path / "gold_vs_kl.png").exists()
