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


def test_verdicts_parse_and_name_table_metrics():
  from experiments.analysis import verdicts  # pylint: disable=g-import-not-at-top
  from jaxrlhf import config as config_lib  # pylint: disable=g-import-not-at-top
  path = str(REPO_ROOT / "configs" / "papers" / "clip_delta.py")
  claims = verdicts.rules_of(path)
  variants = {"clip_delta": "default", "clip_delta_ppo": "ppo", "clip_delta_bias": "bias",
              "clip_delta_ppo_bias": "ppo_bias"}
  assert sorted({c.sweep for c in claims}) == sorted(variants)
  for sweep, variant in variants.items():
    mine = [c for c in claims if c.sweep == sweep]
    metrics = set(config_lib.load_config(f"{path}:{variant}").tables.metrics)
    for c in mine:
      assert c.value in metrics and c.baseline in metrics, (sweep, c.claim)
    # The hack's row first; per arm a gold-vs-unrefined row (and, for the length hack, a gold-vs-outcome row; for
    # the word bias, the share-vs-outcome row that the fix needs to stay unreproduced).
    assert mine[0].claim.startswith("unrefined PRM is hacked" if "bias" not in sweep else "the PRM's word bias")
    assert mine[0].direction == (1 if "bias" in sweep else -1)
    second = ("rl_{}/eval/reward/the_share", "rl_outcome/eval/reward/the_share") if "bias" in sweep else (
        "rl_{}/eval/gold", "rl_outcome/eval/gold")
    for arm in ("clip", "delta"):
      pairs = {(c.value, c.baseline) for c in mine if c.direction == 1}
      assert (f"rl_{arm}/eval/gold", "rl_none/eval/gold") in pairs
      assert (second[0].format(arm), second[1]) in pairs
    assert len(mine) == 5


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
