"""configs/papers/density_ratio.py end to end at smoke size: the sweep, the table, and sane values."""

import csv
import math
import pathlib
import sys

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
