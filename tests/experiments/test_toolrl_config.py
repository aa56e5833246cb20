"""configs/papers/toolrl.py: both variants validate, and the smoke variant runs GRPO with the ToolRL reward on the
generated tool-calling files end to end through experiments.run (in-process), then evaluates the policy."""

import pathlib
import sys

import pytest
from paper_tables import smoke_run

REPO_ROOT = pathlib.Path(__file__).resolve().parents[2]
if str(REPO_ROOT) not in sys.path:
  sys.path.insert(0, str(REPO_ROOT))

from experiments import run as run_lib  # noqa: E402
from jaxrlhf import config as config_lib  # noqa: E402

CONFIG = REPO_ROOT / "configs" / "papers" / "toolrl.py"


def _load(variant):
  return config_lib.load_config(f"{CONFIG}:{variant}")


@pytest.mark.parametrize("variant", ["default", "smoke"])
def test_variants_validate(variant, smollm2_gguf):
  config = _load(variant)
  assert config.model_path == str(smollm2_gguf)
  plan = run_lib.plan(config)
  assert [kind.name for _, kind, _ in plan] == ["rl", "evaluate_policy"]
  sources = {s.label: s for s in plan[0][2].rewards}
  assert set(sources) == {"toolrl", "format", "correct"} and sources["toolrl"].kind == "toolrl"
  assert (sources["toolrl"].weight, sources["format"].weight, sources["correct"].weight) == (1.0, 0.0, 0.0)


def test_bad_variant_and_bad_reward_option_fail_before_compute(smollm2_gguf):
  with pytest.raises(ValueError, match="unknown variant 'smok'; valid: default, smoke"):
    _load("smok")
  config = _load("smoke")
  config.rewards = (dict(kind="toolrl", options=dict(granularity="medium")),)
  with pytest.raises(config_lib.ConfigError, match=r"config\.grpo\.rewards.*granularity: expected one of"):
    run_lib.plan(config)


# ~60 s on 2 cores: loads the 135M GGUF three times, compiles rollout + update + evaluation. The paper's smoke sweep,
# run once for this test and the reproductions notebook test.
@pytest.mark.slow
def test_toolrl_smoke_runs(paper_smoke, smollm2_gguf):
  tmp_path, outputs = smoke_run(paper_smoke("toolrl"))
  files = outputs["grpo"]["prompts"]["files"]
  assert files["kept"] == 1024 + 128 and files["skipped"] == 0
  metrics = outputs["evaluate"]["metrics"]
  assert metrics["reward/toolrl/prompts"] == 2
  # 4 new tokens cannot hold a tool call: R_format = 0 and R_correct = -3 (or 0 for small talk) for every sample.
  for who in ("policy", "base"):
    assert -3.0 <= metrics[f"reward/toolrl/{who}"] <= 1.0
    assert metrics[f"reward/format/{who}"] == 0.0
    assert metrics[f"reward/toolrl/{who}"] == pytest.approx(metrics[f"reward/correct/{who}"])
  assert "| grpo |" in (tmp_path / "summary.md").read_text()


@pytest.mark.parametrize("variant", ["pools", "pools_smoke"])
def test_pools_variants_plan_one_best_of_n_stage_with_fine_and_coarse_selectors(variant, smollm2_gguf):
  plan = run_lib.plan(_load(variant))
  assert [kind.name for _, kind, _ in plan] == ["best_of_n"]
  cfg = plan[0][2]
  options = {s.label: s.options for s in cfg.rewards}
  assert list(options) == ["toolrl", "correct", "coarse", "exact", "format"]
  assert options["exact"]["granularity"] == "coarse" and tuple(options["exact"]["terms"]) == ("correctness",)
  assert "granularity" not in options["toolrl"] and all(s.weight == 1.0 for s in cfg.rewards)
  assert (cfg.num_prompts, cfg.pool_size) == ((2, 2) if variant == "pools_smoke" else (40, 8))


@pytest.mark.parametrize("variant", ["warm_pools", "warm_pools_smoke"])
def test_warm_pools_variants_sample_the_pools_from_the_sft_stage(variant, smollm2_gguf):
  plan = run_lib.plan(_load(variant))
  assert [kind.name for _, kind, _ in plan] == ["sft", "best_of_n"]
  warm, pools = plan[0][2], plan[1][2]
  assert warm.data.format == "sft" and warm.data.paths[0].endswith("toolcall_sft.jsonl")
  assert warm.model.init_from == str(smollm2_gguf) and pools.policy == "stage:sft"
  assert [s.label for s in pools.rewards] == ["toolrl", "correct", "coarse", "exact", "format"]
  if variant == "warm_pools":  # One epoch over the 240 training answers; no prompt or answer truncated.
    assert warm.loop.num_steps * warm.data.batch_size == 256 - warm.data.num_eval
    assert warm.data.max_prompt_length >= 404 and warm.data.max_length >= 404 + 92
    assert (pools.num_prompts, pools.pool_size, pools.max_new_tokens) == (40, 8, 96)
