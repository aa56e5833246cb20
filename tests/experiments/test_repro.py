"""experiments.repro: reading the tables' CSV and averaging best-of-N curves over seeds (hand-computed goldens)."""

import json
import math

import pytest

from experiments import repro


def _write_run(root, name, overrides, curves):
  run = root / name / "bon"
  run.mkdir(parents=True)
  (root / name / "overrides.json").write_text(json.dumps(overrides))
  (run / "results.json").write_text(json.dumps({"status": "done", "metrics": {}, "curves": curves}))


def test_collect_curves_means_and_stds_over_seeds_and_keeps_settings_apart(tmp_path):
  curve = lambda g, p: {"n": [1, 2], "kl": [0.0, 0.193], "gold": g, "proxy": p}
  _write_run(tmp_path, "seed=0", {"seed": 0}, {"rm_mean": curve([1.0, 2.0], [0.0, 4.0])})
  _write_run(tmp_path, "seed=1", {"seed": 1}, {"rm_mean": curve([3.0, 2.0], [2.0, 8.0])})
  _write_run(tmp_path, "k=5,seed=0", {"seed": 0, "k": 5}, {"rm_min": curve([7.0, 7.0], [1.0, 1.0])})
  # A run on prompt files (no gold reward) has proxy curves only: left out, not a KeyError.
  _write_run(tmp_path, "files,seed=0", {"seed": 0, "files": 1}, {"flr": {"n": [1, 2], "kl": [0, 0.1], "proxy": [0, 1]}})
  out = repro.collect_curves(str(tmp_path))
  assert set(out) == {"bon/rm_mean", "k=5/bon/rm_min"}
  c = out["bon/rm_mean"]
  assert c["seeds"] == 2 and c["n"] == [1, 2]
  assert c["gold_mean"] == [2.0, 2.0] and c["proxy_mean"] == [1.0, 6.0]
  assert c["gold_std"] == pytest.approx([math.sqrt(2.0), 0.0])  # sample std (ddof=1) of (1, 3) and (2, 2)
  assert c["proxy_std"] == pytest.approx([math.sqrt(2.0), math.sqrt(8.0)])
  assert out["k=5/bon/rm_min"]["gold_std"] == [0.0, 0.0]  # one seed
  assert json.loads((tmp_path / "curves.json").read_text()) == out


def test_read_table_parses_tables_csv_and_names_bad_lines(tmp_path):
  (tmp_path / "results.csv").write_text(
      "loss.beta,seeds,gold/gain mean,gold/gain std\n0.01,3,0.5,0.1\n0.1,3,-0.25,0.05\n")
  keys, metrics, rows = repro.read_table(str(tmp_path))
  assert keys == ["loss.beta"] and metrics == ["gold/gain"]
  assert rows[1] == {"key": {"loss.beta": "0.1"}, "seeds": 3, "mean": {"gold/gain": -0.25},
                     "std": {"gold/gain": 0.05}}
  (tmp_path / "results.csv").write_text("a,seeds,m mean,m std\n1,3,0.5\n")
  with pytest.raises(ValueError, match=r"results.csv:2: expected 4 cells, got 3"):
    repro.read_table(str(tmp_path))
  with pytest.raises(FileNotFoundError, match="experiments.tables"):
    repro.read_table(str(tmp_path / "nope"))


def test_run_sweep_rejects_unknown_paper(tmp_path):
  with pytest.raises(ValueError, match="not a config in configs/papers/"):
    repro.run_sweep("no_such_paper", str(tmp_path))
