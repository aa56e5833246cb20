"""configs/papers/mixed_r1.py: both variants hold one best_of_n stage whose selectors are BMAS (under the policy's
own embeddings), exact match and BLEU against the HH chosen turn; the smoke variant runs end to end through
experiments.run on the HH file with a tiny random chat model standing in for SmolLM2 (the same stage and rewards)."""

import pathlib
import sys

import numpy as np
import pytest

REPO_ROOT = pathlib.Path(__file__).resolve().parents[2]
if str(REPO_ROOT) not in sys.path:
  sys.path.insert(0, str(REPO_ROOT))
sys.path.insert(0, str(REPO_ROOT / "tests" / "stages"))

import tiny_chat_model  # noqa: E402  pylint: disable=g-import-not-at-top
from experiments import run as run_lib  # noqa: E402
from jaxrlhf import config as config_lib  # noqa: E402

CONFIG = REPO_ROOT / "configs" / "papers" / "mixed_r1.py"


def _load(variant):
  return config_lib.load_config(f"{CONFIG}:{variant}")


@pytest.mark.parametrize("variant", ["default", "smoke"])
def test_variants_hold_bmas_exact_match_and_bleu_selectors(variant, smollm2_gguf, hh_rlhf_file):
  # The config as written (planning it would load the GGUF's embedding table: the smoke run below plans one).
  config = _load(variant)
  assert list(config.stages) == ["pools"] and config.pools.kind == "best_of_n"
  assert config.pools.policy == str(smollm2_gguf) and tuple(config.pools.prompts.paths) == (str(hh_rlhf_file),)
  sources = {r["name"]: r for r in config.pools.rewards}
  assert [r["kind"] for r in sources.values()] == ["bmas", "exact_match", "bleu"] and list(sources) == [
      "bmas", "exact_match", "bleu"]
  assert all(r["options"]["column"] == "chosen" for r in sources.values())
  assert sources["bmas"]["options"]["model"] == str(smollm2_gguf)  # The policy's own embedding table.
  assert (config.pools.num_prompts, config.pools.pool_size) == ((2, 2) if variant == "smoke" else (32, 8))


def test_bad_variant_names_the_valid_ones():
  with pytest.raises(ValueError, match="unknown variant 'pool'; valid: default, smoke"):
    _load("pool")


def test_smoke_runs_end_to_end_with_a_tiny_model(tmp_path, hh_rlhf_file):
  model = tiny_chat_model.write_model(tmp_path / "model")
  config = _load("smoke")
  config.pools.policy = model
  config.pools.rewards = tuple(dict(r, options=dict(r["options"], model=model)) if r["kind"] == "bmas" else dict(r)
                               for r in config.pools.rewards)
  outputs = run_lib.run(config, str(tmp_path / "run"))
  metrics = outputs["pools"]["metrics"]
  for name in ("bmas", "exact_match", "bleu"):
    assert 0.0 <= metrics[f"{name}/constant_pools"] <= 1.0
  # Four new tokens cannot reproduce a chosen turn of 15+ characters: exact match is constant on every pool.
  assert metrics["exact_match/constant_pools"] == 1.0
  with np.load(tmp_path / "run" / "pools" / "scores.npz") as f:
    bmas_PxN = f["bmas"]
  assert bmas_PxN.shape == (2, 2) and np.all((bmas_PxN >= -1.0) & (bmas_PxN <= 1.0))
