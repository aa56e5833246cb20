"""experiments/analysis/pools.py (the pool statistics of the Reasoning-SQL, ToolRL and Mixed-R1 reproductions) against
hand computations, and the committed analysis.json of Reasoning-SQL and ToolRL regenerated from the committed pools."""

import importlib.util
import json
import pathlib

import numpy as np
import pytest

from experiments.analysis import pools

ROOT = pathlib.Path(__file__).resolve().parents[2]
REPRO = ROOT / "docs" / "reproductions"


def test_bootstrap_constant_groups_and_best_of_n_by_hand():
  assert pools.bootstrap(np.full(7, 0.25)) == (0.25, 0.25, 0.25)
  mean, lo, hi = pools.bootstrap(np.r_[np.zeros(50), np.ones(50)])
  # The mean of 100 Bernoulli(0.5) draws: standard error 0.05, so the 95% interval is about 0.5 +- 0.098.
  assert mean == 0.5 and lo == pytest.approx(0.4, abs=0.02) and hi == pytest.approx(0.6, abs=0.02)
  assert pools.bootstrap(np.arange(10.0)) == pools.bootstrap(np.arange(10.0))  # seeded
  scores = np.array([[1.0, 1.0, 1.0], [0.0, 2.0, 0.0], [-3.0, -3.0, -3.0]])
  np.testing.assert_array_equal(pools.constant_P(scores), [1.0, 0.0, 1.0])
  selector = np.array([[0.1, 0.9, 0.5], [2.0, 2.0, 2.0]])
  value = np.array([[10.0, 20.0, 30.0], [1.0, 2.0, 6.0]])
  np.testing.assert_allclose(pools.bon(selector, value, 1), [20.0, 3.0])  # n = 1: the pool mean
  # n = 3 of 3: row 0 always picks the selector's best (20); row 1's tied selector shares the pick (the mean, 3).
  np.testing.assert_allclose(pools.bon(selector, value, 3), [20.0, 3.0])
  # n = 2 of 3, row 0: pairs {0,1} -> 20, {0,2} -> 30, {1,2} -> 20: 70 / 3.
  assert pools.bon(selector, value, 2)[0] == pytest.approx(70 / 3)
  assert pools.fmt((0.1234, -0.5, 1.0)) == "0.123 [-0.500, 1.000]"


def _seed(tmp, k, a, b, prompt_ids):
  run = tmp / f"seed={k}" / "pools"
  run.mkdir(parents=True)
  np.savez(run / "scores.npz", a=np.asarray(a, float), b=np.asarray(b, float))
  np.savez(run / "pool.npz", prompt_ids=np.asarray(prompt_ids))
  return run


def test_pooled_difference_averages_seeds_per_prompt(tmp_path):
  # Seed 0: constant(a) = [1, 1], constant(b) = [0, 1] -> diff [1, 0]; seed 1: [1, 0] - [0, 0] -> [1, 0].
  r0 = _seed(tmp_path, 0, [[1, 1], [2, 2]], [[0, 1], [5, 5]], [3, 4])
  r1 = _seed(tmp_path, 1, [[1, 1], [2, 3]], [[0, 1], [5, 6]], [3, 4])
  assert pools.seed_pools(tmp_path) == [r0, r1]
  seeds, interval = pools.pooled_constant_difference([r0, r1], "a", "b")
  assert seeds == 2 and interval == pools.bootstrap(np.array([1.0, 0.0]))
  out = tmp_path / "analysis.json"
  result = {"seed=0": {}}
  pools.write_pooled(result, [r0, r1], out, "a", "b", a_name="alpha")
  assert json.loads(out.read_text())["pooled"] == {"seeds": 2, "constant_alpha_minus_b": list(interval)}
  r2 = _seed(tmp_path, 2, [[1, 1], [2, 2]], [[0, 1], [5, 5]], [3, 9])
  with pytest.raises(ValueError, match="prompts differ"):
    pools.pooled_constant_difference([r0, r2], "a", "b")
  with pytest.raises(ValueError, match="no pools"):
    pools.pooled_constant_difference([], "a", "b")


def _script(paper):
  spec = importlib.util.spec_from_file_location(f"{paper}_analyze_pools", REPRO / paper / "analyze_pools.py")
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def _json(x):
  return json.loads(json.dumps(x))


def test_reasoning_sql_analysis_regenerates_from_its_pools():
  script, committed = _script("reasoning_sql"), json.loads((REPRO / "reasoning_sql" / "analysis.json").read_text())
  runs = pools.seed_pools(REPRO / "reasoning_sql" / "reasoning_sql_pools")
  assert [r.parent.name for r in runs] == ["seed=0", "seed=1", "seed=2"]
  for run in runs:
    assert _json(script.seed_analysis(run)) == committed[run.parent.name]
  seeds, pooled = pools.pooled_constant_difference(runs, "execution_accuracy", "reasoning_sql")
  assert committed["pooled"] == _json({"seeds": seeds, "constant_execution_minus_reasoning_sql": pooled})


def test_toolrl_tables_regenerate_from_its_pools():
  script, committed = _script("toolrl"), json.loads((REPRO / "toolrl" / "analysis.json").read_text())
  runs = pools.seed_pools(REPRO / "toolrl" / "toolrl_pools")
  assert len(runs) == 3
  for run in runs:
    expected = {k: v for k, v in committed[run.parent.name].items() if k not in ("proxy", "contents")}
    assert _json(script.toolrl(run)) == expected


def test_toolrl_warm_start_tables_regenerate_from_its_pools():
  script = _script("toolrl")
  committed = json.loads((REPRO / "toolrl" / "analysis_warm.json").read_text())
  runs = pools.seed_pools(REPRO / "toolrl" / "toolrl_warm_pools")
  assert [r.parent.name for r in runs] == ["seed=0", "seed=1", "seed=2"]
  for run in runs:
    expected = {k: v for k, v in committed[run.parent.name].items() if k not in ("proxy", "contents")}
    assert _json(script.toolrl(run)) == expected
  for a, b in script.POOLED:
    seeds, pooled = pools.pooled_constant_difference(runs, a, b)
    assert committed["pooled"]["seeds"] == seeds == 3
    assert committed["pooled"][f"constant_{a}_minus_{b}"] == _json(pooled)


def test_mixed_r1_analysis_regenerates_from_its_pools(smollm2_gguf, hh_rlhf_file):
  """The Mixed-R1 section's numbers: rules (A)-(C), check (D) and BMAS recomputed from the decoded samples (equal to
  the run's scores) from the committed pools, SmolLM2's tokenizer and the HH file the config reads."""
  del smollm2_gguf, hh_rlhf_file  # the config's assets: present (or the test skips, and fails in CI)
  committed = json.loads((REPRO / "mixed_r1" / "analysis.json").read_text())
  got = _json(_script("mixed_r1").mixed_r1(REPRO / "mixed_r1" / "pools"))
  assert got == committed and got["recomputed_bmas_max_abs_diff"] == 0.0


def test_seed_pools_are_in_numeric_seed_order(tmp_path):
  runs = {k: _seed(tmp_path, k, [[1, 1]], [[0, 1]], [3]) for k in (10, 2, 0)}
  (tmp_path / "seed=5" / "pools").mkdir(parents=True)  # No scores.npz: not a pool.
  assert pools.seed_pools(tmp_path) == [runs[0], runs[2], runs[10]]
