"""configs/papers/clip_delta.py end to end at smoke size: the sweep, the table, and sane values."""

import csv
import json
import math
import pathlib
import sys

import pytest

REPO_ROOT = pathlib.Path(__file__).resolve().parents[2]
if str(REPO_ROOT) not in sys.path:
  sys.path.insert(0, str(REPO_ROOT))

from experiments import sweep as sweep_lib  # noqa: E402
from experiments import tables as tables_lib  # noqa: E402

SPEC = f"{REPO_ROOT / 'configs' / 'papers' / 'clip_delta.py'}:smoke"


def test_default_config_has_every_setting_and_five_seeds():
  from jaxrlhf import config as config_lib  # pylint: disable=g-import-not-at-top
  config = config_lib.load_config(str(REPO_ROOT / "configs" / "papers" / "clip_delta.py"))
  assert [s for s in config.stages] == ["sft", "rl_outcome", "rl_none", "rl_clip", "rl_delta"]
  kinds = {s: [(r["kind"], r.get("refinement", "")) for r in config[s].rewards] for s in config.stages[1:]}
  assert kinds["rl_outcome"] == [("gold", ""), ("process", "none")]
  assert kinds["rl_clip"][1] == ("process", "clip") and kinds["rl_delta"][1] == ("process", "delta")
  assert len(sweep_lib.collect(str(REPO_ROOT / "configs" / "papers" / "clip_delta.py"))) >= 5


@pytest.mark.slow
def test_smoke_sweep_and_table(paper_smoke):
  tmp_path = paper_smoke("clip_delta")  # the smoke sweep, shared with the notebook test
  results = sorted(p.name for p in tmp_path.iterdir() if (p / "status.json").exists())
  md = tables_lib.tables(str(tmp_path))
  with open(tmp_path / "results.csv") as f:
    row = next(csv.DictReader(f))
  for setting in ("delta",):
    for metric in ("eval/gold", "eval/reward/prm_raw", "eval/completion_length", "eval/repeat_rate", "eval/kl"):
      col = f"rl_{setting}/{metric}"
      assert col in md
      assert math.isfinite(float(row[f"{col} mean"])), col
    assert 1 <= float(row[f"rl_{setting}/eval/completion_length mean"]) <= 13  # max_new_tokens 12 + <eos>
    assert 0 <= float(row[f"rl_{setting}/eval/repeat_rate mean"]) <= 1
    assert float(row[f"rl_{setting}/eval/reward/prm_raw mean"]) > 0  # every step scores in (0, 1)
  (run,) = results
  metrics = json.loads((tmp_path / run / "results.json").read_text())["metrics"]
  # Delta's return telescopes to the first step's score, in (0, 1); the raw sum is larger for any 2+ steps.
  assert 0 < metrics["rl_delta/eval/reward/prm"] < 1
  assert metrics["rl_delta/eval/reward/prm_raw"] > metrics["rl_delta/eval/reward/prm"]
  assert metrics["rl_delta/eval/reward/total"] == pytest.approx(
      metrics["rl_delta/eval/reward/outcome"] + metrics["rl_delta/eval/reward/prm"], rel=1e-4, abs=1e-4)
