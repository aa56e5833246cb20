"""configs/papers/density_ratio.py end to end at smoke size: the sweep, the table, and sane values."""

import csv
import math
import pathlib
import sys

import numpy as np
import pytest

REPO_ROOT = pathlib.Path(__file__).resolve().parents[2]
if str(REPO_ROOT) not in sys.path:
  sys.path.insert(0, str(REPO_ROOT))

from experiments import sweep as sweep_lib  # noqa: E402
from experiments import tables as tables_lib  # noqa: E402

CONFIG = REPO_ROOT / "configs" / "papers" / "density_ratio.py"


def test_default_config_scores_every_ratio_and_sweeps_three_seeds():
  from jaxrlhf import config as config_lib  # pylint: disable=g-import-not-at-top
  config = config_lib.load_config(str(CONFIG))
  assert list(config.stages) == ["sft", "sft_early", "dpo", "density_ratio"]
  names = [r["name"] for r in config.density_ratio.ratios]
  assert len(names) == len(set(names)) >= 5
  assert config.sft.data.contrastive_sft  # the <better>/<worse> contexts need a contrastive SFT policy
  assert len(sweep_lib.collect(str(CONFIG))) >= 3


def test_exact_permutation_p_hand_computed():
  from experiments.analysis import density_ratio as analysis  # pylint: disable=g-import-not-at-top
  from jaxrlhf.evaluation import stats  # pylint: disable=g-import-not-at-top
  x = [1.0, 2.0, 3.0, 4.0]
  # A perfect ordering: only the identity of the 4! = 24 orderings reaches r = 1.
  assert analysis.exact_permutation_p(x, x, stats.pearson) == pytest.approx(1 / 24)
  # One adjacent swap: rho = 1 - 6 * 2 / (4 * 15) = 0.8; the identity (1.0) and the 3 adjacent swaps (0.8) reach it.
  assert analysis.exact_permutation_p(x, [1.0, 2.0, 4.0, 3.0], stats.spearman) == pytest.approx(4 / 24)
  # A constant y: r is undefined, and so is p (every comparison with NaN fails: it was 0 / 24).
  assert np.isnan(analysis.exact_permutation_p(x, [2.0, 2.0, 2.0, 2.0], stats.pearson))
  # The rule's points: every ratio but the mirrored early_sft.
  assert "early_sft" not in analysis.INDEPENDENT and len(analysis.INDEPENDENT) == 6


@pytest.mark.slow
def test_smoke_sweep_and_table(paper_smoke):
  tmp_path = paper_smoke("density_ratio")  # the smoke sweep, shared with the notebook test
  md = tables_lib.tables(str(tmp_path))
  with open(tmp_path / "results.csv") as f:
    row = next(csv.DictReader(f))
  from configs.papers import density_ratio as cfg  # pylint: disable=g-import-not-at-top
  for name, *_ in cfg.SMOKE_RATIOS:
    for metric in ("acc_gold", "acc_label"):
      value = float(row[f"density_ratio/{name}/{metric} mean"])
      assert 0 <= value <= 1, (name, metric)
    gap = float(row[f"density_ratio/{name}/gap mean"])
    assert math.isfinite(gap) and abs(gap) < 20  # gold of samples lives within about [-10, 5]
    assert f"density_ratio/{name}/acc_gold" in md
  assert 0.5 < float(row["density_ratio/label_vs_gold mean"]) <= 1
  assert (tmp_path / "seed=0" / "density_ratio" / "density_ratio.png").exists()
