"""experiments.analysis.verdicts: the paired rule of ARCHITECTURE.md section 7 on hand-computed cases, its exact
sign-flip test, and the report from fake sweeps (results.json + overrides.json, as experiments.sweep leaves them)."""

import json
import math
import pathlib

import pytest

from experiments.analysis import verdicts


def _sweep(root: pathlib.Path, name: str, rows: list[dict], commit: str = "abc123", beta=None):
  for seed, metrics in enumerate(rows):
    overrides = {"seed": seed} | ({"dpo.loss.beta": beta} if beta is not None else {})
    run = root / name / ",".join(f"{k}={v}" for k, v in sorted(overrides.items()))
    run.mkdir(parents=True)
    (run / "overrides.json").write_text(json.dumps(overrides))
    (run / "results.json").write_text(json.dumps({"status": "done", "metrics": metrics,
                                                  "provenance": {"commit": commit, "dirty": False}}))


def test_t_interval_and_sign_flip_hand_computed():
  # d = 1..5: mean 3, sample sd sqrt(2.5), t_{0.975, 4} = 2.776445 -> half width 1.963243.
  mean, lo, hi = verdicts.t_interval([1, 2, 3, 4, 5])
  assert mean == 3 and lo == pytest.approx(3 - 1.963243, abs=1e-5) and hi == pytest.approx(3 + 1.963243, abs=1e-5)
  # All five positive: only the all-plus and all-minus patterns reach |mean| 3 -> p = 2 / 32.
  assert verdicts.sign_flip_p([1, 2, 3, 4, 5]) == pytest.approx(2 / 32)
  # 1, 2, 3, 4, -1: observed sum 9. With absolute values {1, 2, 3, 4, 1} a pattern's sum is 11 - 2 * (the negated
  # values); |sum| >= 9 needs negated values summing to <= 1: none, or either 1 -> 3 patterns, and their 3 mirrors.
  assert verdicts.sign_flip_p([1, 2, 3, 4, -1]) == pytest.approx(6 / 32)
  assert math.isnan(verdicts.t_interval([2.0])[1])


@pytest.mark.parametrize("deltas,direction,outcome", [
    ([0.5, 0.6, 0.4, 0.55, 0.45], 1, "reproduced"),
    ([0.5, 0.6, 0.4, 0.55, 0.45], -1, "against"),
    ([-0.5, -0.6, -0.4, -0.55, -0.45], -1, "reproduced"),
    ([0.5, -0.6, 0.4, -0.55, 0.45], 1, "inconclusive"),
    ([0.5, 0.6, 0.4], 1, "too few seeds"),
])
def test_outcomes_follow_the_rule(tmp_path, deltas, direction, outcome):
  _sweep(tmp_path, "s", [{"a/gold": 1.0 + d, "b/gold": 1.0} for d in deltas])
  claim = verdicts.Claim(sweep="s", claim="a beats b", value="a/gold", baseline="b/gold", direction=direction)
  r = verdicts.evaluate(claim, verdicts.tables_lib.load_runs(str(tmp_path / "s")))
  assert r.outcome == outcome and r.seeds == tuple(range(len(deltas)))
  assert r.diffs == pytest.approx(deltas) and r.mean == pytest.approx(sum(deltas) / len(deltas))
  assert r.on_side == sum(1 for d in deltas if d * direction > 0)


def test_a_seed_with_an_undefined_metric_counts_for_nothing(tmp_path):
  """Five seeds, one metric NaN (json keeps it): four finite differences are too few for a verdict, the interval
  is theirs, and the sign-flip p is undefined (a comparison with NaN would count no pattern and print p = 0)."""
  deltas = [1.0, 1.1, math.nan, 1.3, 1.4]
  _sweep(tmp_path, "s", [{"a/gold": 1.0 + d, "b/gold": 1.0} for d in deltas])
  claim = verdicts.Claim(sweep="s", claim="a beats b", value="a/gold", baseline="b/gold")
  r = verdicts.evaluate(claim, verdicts.tables_lib.load_runs(str(tmp_path / "s")))
  assert r.outcome == "too few seeds" and r.seeds == (0, 1, 2, 3, 4) and math.isnan(r.diffs[2])
  assert r.mean == pytest.approx(1.2) and r.on_side == 4 and math.isnan(r.p_value)
  assert math.isnan(verdicts.sign_flip_p([0.1, 0.2, math.nan, 0.3, 0.4]))


def test_where_selects_runs_and_a_number_is_a_baseline(tmp_path):
  _sweep(tmp_path, "s", [{"x": 0.1 * (i + 1)} for i in range(5)], beta=0.1)
  _sweep(tmp_path, "s", [{"x": -1.0} for _ in range(5)], beta=0.01)
  runs = verdicts.tables_lib.load_runs(str(tmp_path / "s"))
  r = verdicts.evaluate(verdicts.Claim(sweep="s", claim="x > 0.05", value="x", baseline=0.05,
                                       where={"dpo.loss.beta": 0.1}), runs)
  assert r.diffs == pytest.approx([0.05, 0.15, 0.25, 0.35, 0.45]) and r.outcome == "reproduced"
  with pytest.raises(ValueError, match="seed 0 appears in two runs"):
    verdicts.evaluate(verdicts.Claim(sweep="s", claim="c", value="x"), runs)
  with pytest.raises(ValueError, match="no finished run matches"):
    verdicts.evaluate(verdicts.Claim(sweep="s", claim="c", value="x", where={"dpo.loss.beta": 9}), runs)


def test_missing_metric_and_mixed_commits_are_refused(tmp_path):
  _sweep(tmp_path, "s", [{"x": 1.0}] * 5)
  runs = verdicts.tables_lib.load_runs(str(tmp_path / "s"))
  with pytest.raises(ValueError, match=r"s/seed=0: no metric 'y'"):
    verdicts.evaluate(verdicts.Claim(sweep="s", claim="c", value="y"), runs)
  runs[0]["commit"] = "other"
  with pytest.raises(ValueError, match="code versions"):
    verdicts.evaluate(verdicts.Claim(sweep="s", claim="c", value="x"), runs)


@pytest.mark.parametrize("rule,match", [
    ({"sweep": "s", "claim": "c"}, r"VERDICTS\[0\].value: required"),
    ({"sweep": "s", "claim": "c", "value": "x", "direction": 2}, r"VERDICTS\[0\].direction: \+1 or -1"),
    ({"sweep": "s", "claim": "c", "value": "x", "baselin": "y"}, r"VERDICTS\[0\].baselin: unknown key"),
])
def test_bad_rules_name_the_key(rule, match):
  with pytest.raises(ValueError, match=match):
    verdicts.Claim.from_dict(rule, "configs/x.py:VERDICTS[0]")


def test_report_from_a_config_module(tmp_path):
  _sweep(tmp_path / "runs", "s", [{"a": 2.0 + 0.1 * i, "b": 1.0} for i in range(5)])
  config = tmp_path / "paper.py"
  config.write_text("def get_config(arg=None):\n  return None\n\n"
                    "VERDICTS = (dict(sweep='s', claim='a beats b', value='a', baseline='b'),\n"
                    "            dict(sweep='missing', claim='never run', value='a'))\n")
  results, problems = verdicts.verdicts(str(tmp_path / "runs"), [str(config)])
  assert [r.outcome for r in results] == ["reproduced"] and len(problems) == 1 and "missing" in problems[0]
  text = verdicts.report(results)
  assert "| s | a beats b | `a` > `b` | +1.2 [" in text and "5/5" in text and "**reproduced**" in text
  assert "s: code commit: abc123 (clean) (5 runs)" in text


# --- Gaps found by a mutation audit of experiments/analysis/verdicts.py. ---


@pytest.mark.parametrize("seed", range(4))
def test_t_interval_and_sign_flip_p_match_scipy(seed):
  """Independent references: scipy's one-sample t interval, and scipy's exact sign-flip permutation test (a single
  sample with permutation_type='samples' flips signs; n_resamples=inf enumerates all 2^n patterns; the sign-flip
  null is symmetric, so scipy's 2 * min(one-sided) equals the share of patterns with |mean| >= |observed|)."""
  import numpy as np  # pylint: disable=g-import-not-at-top
  import scipy.stats  # pylint: disable=g-import-not-at-top
  d = np.random.default_rng(seed).normal(0.3, 1.0, size=6 + seed)
  mean, lo, hi = verdicts.t_interval(d)
  ref = scipy.stats.ttest_1samp(d, 0.0).confidence_interval(0.95)
  assert mean == pytest.approx(d.mean()) and (lo, hi) == pytest.approx((ref.low, ref.high), rel=1e-9)
  perm = scipy.stats.permutation_test((d,), np.mean, permutation_type="samples", n_resamples=np.inf,
                                      alternative="two-sided", vectorized=False)
  assert verdicts.sign_flip_p(d) == pytest.approx(perm.pvalue, abs=1e-12)


def test_t_interval_drops_nans_and_sign_flip_needs_1_to_20_values():
  assert verdicts.t_interval([1, math.nan, 2, 3, 4, 5]) == pytest.approx(verdicts.t_interval([1, 2, 3, 4, 5]))
  for bad in ([], [0.1] * 21):
    with pytest.raises(ValueError, match="1-20 values"):
      verdicts.sign_flip_p(bad)
  assert verdicts.sign_flip_p([0.5]) == 1.0  # One value: both patterns reach |mean| 0.5.


def test_a_zero_difference_is_on_neither_side(tmp_path):
  """`on_side` counts seeds whose d_s has the claimed sign; d_s = 0 has none, for either direction (the report
  writes the claimed side as `<` for direction -1)."""
  deltas = [0.0, 0.5, 0.6, 0.4, 0.55]
  _sweep(tmp_path, "s", [{"a": d, "b": 0.0} for d in deltas])
  runs = verdicts.tables_lib.load_runs(str(tmp_path / "s"))
  up = verdicts.evaluate(verdicts.Claim(sweep="s", claim="c", value="a", baseline="b", direction=1), runs)
  down = verdicts.evaluate(verdicts.Claim(sweep="s", claim="c", value="a", baseline="b", direction=-1), runs)
  assert (up.on_side, down.on_side) == (4, 0)
  assert "| s | c | `a` < `b` | " in verdicts.report([down]) and "| 0/5 |" in verdicts.report([down])


def test_an_infinite_difference_counts_for_nothing_like_nan(tmp_path):
  """Six seeds, one value infinite: the interval and the verdict come from the five finite differences (an inf in
  the mean would make every bound inf/nan), and the exact test, which needs every difference, is undefined."""
  deltas = [math.inf, 0.5, 0.6, 0.4, 0.55, 0.45]
  _sweep(tmp_path, "s", [{"a": 1.0 + d, "b": 1.0} for d in deltas])
  r = verdicts.evaluate(verdicts.Claim(sweep="s", claim="c", value="a", baseline="b"),
                        verdicts.tables_lib.load_runs(str(tmp_path / "s")))
  assert r.outcome == "reproduced" and r.mean == pytest.approx(0.5) and r.on_side == 5
  assert (r.lower, r.upper) == pytest.approx(verdicts.t_interval(deltas[1:])[1:])
  assert math.isnan(r.p_value) and math.isinf(r.diffs[0])


def test_seeds_are_ordered_by_number_not_by_run_name(tmp_path):
  """Run directories sort as text (seed=10 before seed=2); the differences are kept in seed order."""
  deltas = [0.1 * (i + 1) for i in range(12)]
  _sweep(tmp_path, "s", [{"a": d} for d in deltas])
  runs = verdicts.tables_lib.load_runs(str(tmp_path / "s"))
  assert [r["name"] for r in runs][:3] == ["seed=0", "seed=1", "seed=10"]
  r = verdicts.evaluate(verdicts.Claim(sweep="s", claim="c", value="a"), runs)
  assert r.seeds == tuple(range(12)) and r.diffs == pytest.approx(deltas)
  assert "| 0: +0.1, 1: +0.2, 2: +0.3, " in verdicts.report([r])


def test_where_needs_every_key_and_the_commit_is_the_chosen_runs(tmp_path):
  """Runs must match every key of `where`; the commit (and its run count) is that of the runs the claim reads: an
  arm of the sweep the claim does not read, re-run at another commit, neither refuses nor joins it."""
  root = tmp_path / "s"
  for beta, loss, commit, value in ((0.1, "a", "c1", 1.0), (0.1, "b", "c2", -1.0), (0.2, "a", "c3", -2.0)):
    for seed in range(5):
      overrides = {"seed": seed, "beta": beta, "loss": loss}
      run = root / f"beta={beta},loss={loss},seed={seed}"
      run.mkdir(parents=True)
      (run / "overrides.json").write_text(json.dumps(overrides))
      (run / "results.json").write_text(json.dumps({"status": "done", "metrics": {"x": value + 0.01 * seed},
                                                    "provenance": {"commit": commit, "dirty": False}}))
  runs = verdicts.tables_lib.load_runs(str(root))
  r = verdicts.evaluate(verdicts.Claim(sweep="s", claim="c", value="x", where={"beta": 0.1, "loss": "a"}), runs)
  assert r.diffs == pytest.approx([1.0 + 0.01 * s for s in range(5)]) and r.outcome == "reproduced"
  assert r.commit == "code commit: c1 (clean) (5 runs)"
  with pytest.raises(ValueError, match="code versions"):  # Both losses at beta 0.1: two commits in one claim.
    verdicts.evaluate(verdicts.Claim(sweep="s", claim="c", value="x", where={"beta": 0.1, "seed": 0}), runs)


@pytest.mark.parametrize("rule,match", [
    ({"sweep": "s", "value": "x"}, r"VERDICTS\[0\].claim: required"),
    ({"sweep": "s", "claim": "c", "value": "x", "direction": 0}, r"VERDICTS\[0\].direction: \+1 or -1"),
    ({"sweep": "s", "claim": "c", "value": "x", "baseline": True}, r"VERDICTS\[0\].baseline: a metric name or a num"),
])
def test_more_bad_rules_name_the_key(rule, match):
  with pytest.raises(ValueError, match=match):
    verdicts.Claim.from_dict(rule, "configs/x.py:VERDICTS[0]")


def test_cli_exits_1_only_when_no_rule_could_be_evaluated(tmp_path):
  import subprocess  # pylint: disable=g-import-not-at-top
  import sys  # pylint: disable=g-import-not-at-top
  repo = pathlib.Path(__file__).resolve().parents[2]
  _sweep(tmp_path / "runs", "s", [{"a": 1.0 + 0.1 * i} for i in range(5)])
  ok, bad = tmp_path / "ok.py", tmp_path / "bad.py"
  head = "def get_config(arg=None):\n  return None\n\n"
  ok.write_text(head + "VERDICTS = (dict(sweep='s', claim='a > 0', value='a'), dict(sweep='gone', claim='g', "
                "value='a'))\n")
  bad.write_text(head + "VERDICTS = (dict(sweep='gone', claim='g', value='a'),)\n")
  run = lambda config: subprocess.run(
      [sys.executable, "-m", "experiments.analysis.verdicts", f"--runs={tmp_path / 'runs'}", f"--config={config}",
       f"--out={tmp_path / 'out.md'}"], cwd=repo, capture_output=True, text=True, timeout=120,
      env=dict(__import__("os").environ, PYTHONPATH=str(repo)))
  proc = run(ok)
  assert proc.returncode == 0, proc.stderr[-2000:]
  assert "**reproduced**" in proc.stdout and "Not evaluated:" in proc.stdout and "gone" in proc.stdout
  assert (tmp_path / "out.md").read_text().startswith(verdicts.HEADER)
  assert run(bad).returncode == 1
