"""configs/papers/preference_strength.py: the chain validates (curation and margins read the ensemble), the
sweep grid is 5 seeds (1 for smoke), and the smoke sweep runs end to end: table columns exist and are sane,
the curation counts reach the stage outputs, and the bucket table aggregates over the sweep."""

import json
import os

import pytest
from paper_tables import smoke_table_means

from configs.papers import preference_strength as paper
from experiments import run as run_lib
from experiments import sweep as sweep_lib
from jaxrlhf.config import ConfigError
from experiments.analysis import preference_strength as strength_analysis

SPEC = os.path.join(os.path.dirname(__file__), "..", "..", "configs", "papers", "preference_strength.py")


@pytest.mark.parametrize("variant", paper.VARIANTS)
def test_every_variant_validates(variant):
  by_name = {name: cfg for name, _, cfg in run_lib.plan(paper.get_config(variant))}
  assert list(by_name)[:2] == ["ensemble", "strength"]
  assert by_name["ensemble"].num_members == (10 if variant == "default" else 3)
  assert by_name["ensemble"].data.world["flip_rate"] == paper.FLIP_RATE
  assert by_name["strength"].reward_model == "stage:ensemble"
  assert by_name["rm_flip"].data.curate == "flip" and by_name["rm_flip"].data.reward_model == "stage:ensemble"
  if variant == "default":
    assert set(paper.RM_SETTINGS) <= set(by_name)
    assert by_name["rm_drop"].data.curate == "drop"
    assert by_name["rm_margin"].loss.margin == "adaptive" and by_name["rm_margin"].data.margin_from == "reward_model"
    assert by_name["rm_smooth"].loss.label_smoothing == paper.LABEL_SMOOTHING
    # Every reward model reads the same noisy pairs as the ensemble.
    assert all(by_name[s].data.world == by_name["ensemble"].data.world for s in paper.RM_SETTINGS)


def test_sweep_grid_bad_variant_and_bad_curation():
  assert [r["seed"] for r in sweep_lib.collect(SPEC)] == [0, 1, 2, 3, 4]
  assert [r["seed"] for r in sweep_lib.collect(SPEC + ":smoke")] == [0]
  with pytest.raises(ValueError, match="variant"):
    paper.get_config("nope")
  config = paper.get_config("smoke")
  config.rm_flip.data.reward_model = ""
  with pytest.raises(ConfigError, match=r"rm_flip\.data\.reward_model"):
    run_lib.plan(config)
  config = paper.get_config("smoke")
  config.strength.data.margin_from = "score"
  with pytest.raises(ConfigError, match=r"strength\.data\.margin_from: must be 'none'"):
    run_lib.plan(config)



def test_verdicts_parse_and_name_table_metrics():
  from experiments.analysis import verdicts  # pylint: disable=g-import-not-at-top
  rules = verdicts.rules_of(SPEC)
  metrics = set(paper.get_config().tables.metrics)
  assert [r.value.split("/")[0] for r in rules] == ["strength", "strength", "rm_flip", "rm_drop", "rm_margin",
                                                   "rm_smooth"]
  for r in rules:
    assert r.sweep == "preference_strength" and r.direction == 1
    assert {r.value, r.baseline} - {0.5} <= metrics, r.claim


@pytest.mark.slow
def test_smoke_sweep_end_to_end(paper_smoke, tmp_path):
  workdir = str(paper_smoke("preference_strength"))  # the smoke sweep, shared with the notebook test
  config = paper.get_config("smoke")
  means = smoke_table_means(workdir, config)
  for metric in config.tables.metrics:
    assert 0.0 <= means[metric] <= 1.0, (metric, means[metric])
  run_dir = os.path.join(workdir, "seed=0")
  with open(os.path.join(run_dir, "results.json")) as f:
    results = json.load(f)
  n = config.rm_flip.data.num_train
  curation = results["stages"]["rm_flip"]["data_report"]["curation"]
  assert curation == {"total_in": n, "flipped": int(paper.CURATE_FRACTION * n), "dropped": 0, "total_out": n,
                      "mode": "flip", "fraction": paper.CURATE_FRACTION, "threshold": curation["threshold"]}
  metrics = results["metrics"]
  assert sum(metrics[f"strength/bucket{b}/strength_mean"] <= metrics[f"strength/bucket{b + 1}/strength_mean"]
             for b in range(19)) == 19  # 20 buckets (the paper's Fig. 2), sorted by strength
  assert os.path.exists(os.path.join(run_dir, "strength", "strength_buckets.png"))
  strength_analysis.main(["--workdir", workdir])
  with open(os.path.join(workdir, "buckets.md")) as f:
    assert len(f.read().splitlines()) == 2 + paper.NUM_BUCKETS
  assert os.path.exists(os.path.join(workdir, "plots", "strength_buckets.png"))
