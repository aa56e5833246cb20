"""configs/smollm2_rm_hh.py's FLR variants: both validate (FLR on the held-out HH pairs with SmolLM2, then best-of-n on
the held-out HH prompts selected by FLR), and the smoke variant runs both end to end through experiments.run
(in-process)."""

import pathlib
import sys

import numpy as np
import pytest
from paper_tables import smoke_run

REPO_ROOT = pathlib.Path(__file__).resolve().parents[2]
if str(REPO_ROOT) not in sys.path:
  sys.path.insert(0, str(REPO_ROOT))

from experiments import run as run_lib  # noqa: E402
from jaxrlhf import config as config_lib  # noqa: E402

CONFIG = REPO_ROOT / "configs" / "smollm2_rm_hh.py"


def _load(variant):
  return config_lib.load_config(f"{CONFIG}:{variant}")


@pytest.mark.parametrize("variant", ["flr", "flr_smoke"])
def test_variants_validate(variant, smollm2_gguf, hh_rlhf_file):
  config = _load(variant)
  config.data.paths = (str(hh_rlhf_file),)
  assert config.model_path == str(smollm2_gguf)
  plan = run_lib.plan(config)
  assert [(name, kind.name) for name, kind, _ in plan] == [("eval_flr", "reward_eval"), ("bon_flr", "best_of_n")]
  cfg, bon = plan[0][2], plan[1][2]
  assert cfg.scorer == "follow_up_likelihood" and cfg.split == "held_out" and cfg.data.tokenizer == str(smollm2_gguf)
  assert cfg.data.eval_fraction == 0.2
  assert bon.policy == str(smollm2_gguf) and not bon.reward_model
  assert [(s.kind, s.label) for s in bon.rewards] == [("follow_up_likelihood", "flr")]
  assert bon.prompts.paths == (str(hh_rlhf_file),) and bon.prompts.eval_fraction == 0.2


@pytest.mark.parametrize("variant,same", [("default", "flr"), ("smoke", "flr_smoke")])
def test_papers_entry_is_the_same_chain(variant, same):
  # configs/papers/flr.py adds no copy of the chain: each variant is the smollm2_rm_hh.py variant, key for key.
  paper = config_lib.load_config(f"{REPO_ROOT / 'configs' / 'papers' / 'flr.py'}:{variant}")
  assert paper.to_dict() == _load(same).to_dict()


def test_a_bad_follow_up_option_fails_before_compute(smollm2_gguf, hh_rlhf_file):
  config = _load("flr_smoke")
  config.data.paths = (str(hh_rlhf_file),)
  config.eval_flr.follow_up = {"positive": "Thanks!"}
  with pytest.raises(config_lib.ConfigError, match=r"config\.eval_flr\.follow_up\.positive: expected a non-empty list"):
    run_lib.plan(config)


# ~40 s on 2 cores: parses the 135M GGUF, 8 rows of [dialogue | 40 follow-ups], then samples. configs/papers/flr.py's
# smoke sweep (the same chain: test_papers_entry_is_the_same_chain), run once for this test and the notebook test.
@pytest.mark.slow
def test_flr_smoke_runs(paper_smoke, smollm2_gguf, hh_rlhf_file):
  tmp_path, outputs = smoke_run(paper_smoke("flr"))
  metrics = outputs["eval_flr"]["metrics"]
  assert metrics["n"] == 4 and metrics["pairs/dropped_too_long"] == 0
  assert metrics["accuracy_lower"] <= metrics["accuracy"] <= metrics["accuracy_upper"]
  assert np.isfinite(metrics["accuracy"])
  scores = np.load(pathlib.Path(tmp_path) / "bon_flr" / "scores.npz")["flr"]
  assert scores.shape == (2, 2) and np.all(np.isfinite(scores))
  assert outputs["bon_flr"]["metrics"]["flr/proxy@N"] == pytest.approx(scores.max(axis=1).mean(), rel=1e-6)
