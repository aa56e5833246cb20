"""The density_ratio stage end to end on tiny random policies: every metric of results.json against an independent
recomputation (one unpadded forward per example, numpy log-softmax) of Xu et al. 2024's
r = log pi_strong(y | x_strong) - log pi_weak(y | x_weak)."""

import json
import os

import numpy as np
import pytest
from random_models import save_strong_and_weak, unpadded_response_logps
from scipy import stats as sp_stats

from jaxrlhf.config import from_config
from jaxrlhf.data import records as records_lib
from jaxrlhf.data.synthetic import World, WorldConfig
from jaxrlhf.stages import density_ratio as dr_stage

WORLD = {"num_prompts": 256, "max_response_len": 12}
PAIRS = 8


@pytest.fixture(scope="module")
def models(tmp_path_factory):
  world = World(WorldConfig(**WORLD))
  return {"world": world, **save_strong_and_weak(tmp_path_factory.mktemp("ratio_models"), world.tokenizer.vocab_size)}


_logps = unpadded_response_logps


def test_density_ratio_stage_metrics_against_unpadded_recomputation(models, tmp_path):
  world, tok = models["world"], models["world"].tokenizer
  (strong_dir, strong), (weak_dir, weak) = models["strong"], models["weak"]
  cfg = from_config({"world": WORLD, "num_pairs": PAIRS, "num_prompts": 2, "batch_size": 8, "max_new_tokens": 3,
                     "ratios": ({"name": "r", "strong": strong_dir, "weak": weak_dir, "strong_context": "better",
                                 "weak_context": ""},)}, dr_stage.DensityRatioConfig)
  metrics = dr_stage.run(cfg, str(tmp_path / "dr"), {})["metrics"]
  with open(tmp_path / "dr" / "results.json") as f:
    assert json.load(f)["metrics"] == pytest.approx(metrics, nan_ok=True)
  records = world.preference_records(PAIRS, "test")
  ratios, lengths, golds = {}, {}, {}
  for side in ("chosen", "rejected"):
    texts = [records_lib.response_text(getattr(r, side)) for r in records]
    resp = [tok.encode(t) + [tok.eos_id] for t in texts]  # the end token is part of the response
    ratios[side] = (_logps(strong, [tok.encode(f"<better> {r.prompt}") for r in records], resp)
                    - _logps(weak, [tok.encode(r.prompt) for r in records], resp))
    lengths[side] = np.asarray([len(y) for y in resp], np.float64)
    golds[side] = np.asarray(world.gold_of_texts([r.prompt for r in records], texts), np.float64)
  gold_differs = golds["chosen"] != golds["rejected"]
  assert gold_differs.sum() >= 3
  better = np.where(golds["chosen"] > golds["rejected"], ratios["chosen"], ratios["rejected"])[gold_differs]
  worse = np.where(golds["chosen"] > golds["rejected"], ratios["rejected"], ratios["chosen"])[gold_differs]
  assert metrics["r/acc_gold"] == pytest.approx(np.mean(better > worse))
  assert metrics["r/acc_label"] == pytest.approx(np.mean(ratios["chosen"] > ratios["rejected"]))
  want_corr = sp_stats.spearmanr(np.concatenate([ratios["chosen"], ratios["rejected"]]),
                                 np.concatenate([lengths["chosen"], lengths["rejected"]])).statistic
  assert metrics["r/length_corr"] == pytest.approx(want_corr, abs=1e-6)
  assert metrics["label_vs_gold"] == pytest.approx(np.mean(golds["chosen"] > golds["rejected"]))
  # The gap is strong minus weak: the strong side samples with its context, the weak side on the plain prompt.
  assert metrics["r/gap"] == pytest.approx(metrics["r/gold_strong"] - metrics["r/gold_weak"])
  assert metrics["r/gold_strong"] != pytest.approx(metrics["r/gold_weak"])
  assert np.isnan(metrics["corr_gap_acc_gold"])  # one ratio: no correlation
  assert os.path.getsize(tmp_path / "dr" / "density_ratio.png") > 0
