"""experiments.sweep + experiments.tables on the toy config: a failing member, resume, mean ± std tables."""

import csv
import json
import os
import pathlib
import statistics
import subprocess
import sys

import pytest

REPO_ROOT = pathlib.Path(__file__).resolve().parents[2]
if str(REPO_ROOT) not in sys.path:
  sys.path.insert(0, str(REPO_ROOT))

from experiments import sweep as sweep_lib  # noqa: E402
from experiments import tables as tables_lib  # noqa: E402

SPEC = "tests/toy_config.py:fail"  # seeds 0, 1 at lr 0.03, plus a member that raises.
GOOD = ["optimizer.learning_rate=0.03,seed=0", "optimizer.learning_rate=0.03,seed=1"]
BAD = "fail=deliberate_failure,optimizer.learning_rate=0.1,seed=0"


@pytest.fixture(scope="module")
def swept(tmp_path_factory):
  workdir = tmp_path_factory.mktemp("sweep")
  proc = subprocess.run([sys.executable, "-m", "experiments.sweep", f"--config={SPEC}", f"--workdir={workdir}",
                         "--workers=2", "--extra_kinds=tests/toy_config.py:KINDS"],
                        cwd=REPO_ROOT, env=dict(os.environ, PYTHONPATH=str(REPO_ROOT)), capture_output=True,
                        text=True, timeout=600)
  return workdir, proc


def test_run_names_are_stable_and_readable(tmp_path):
  assert sweep_lib.run_name({"seed": 1, "optimizer.learning_rate": 0.03}) == "optimizer.learning_rate=0.03,seed=1"
  # Shell-safe: no slashes, spaces or parentheses.
  assert sweep_lib.run_name({"a": "x/y z", "t": (1, 2)}) == "a=x_y_z,t=_1,2_"
  assert sweep_lib.collect(SPEC)[-1] == {"seed": 0, "optimizer.learning_rate": 0.1, "fail": "deliberate failure"}
  no_sweep = tmp_path / "no_sweep.py"
  no_sweep.write_text("import ml_collections\ndef get_config(arg=None):\n  return ml_collections.ConfigDict()\n")
  with pytest.raises(sweep_lib.config_lib.ConfigError, match="defines no sweep"):
    sweep_lib.collect(str(no_sweep))


@pytest.mark.slow
def test_failing_member_is_recorded_and_others_finish(swept):
  workdir, proc = swept
  assert proc.returncode == 1, proc.stderr[-3000:]
  assert f"2/3 runs done; failed: {BAD}" in proc.stdout
  for name in GOOD:
    assert json.loads((workdir / name / "status.json").read_text())["status"] == "done"
    assert json.loads((workdir / name / "results.json").read_text())["status"] == "done"
  status = json.loads((workdir / BAD / "status.json").read_text())
  assert status["status"] == "failed" and status["returncode"] != 0
  assert "RuntimeError: deliberate failure" in status["error"]
  assert "Traceback" in (workdir / BAD / "error.txt").read_text()
  summary = json.loads((workdir / "sweep.json").read_text())
  assert {r["name"]: r["status"] for r in summary["runs"]} == {GOOD[0]: "done", GOOD[1]: "done", BAD: "failed"}


@pytest.mark.slow
def test_tables_mean_std_over_seeds_and_plots(swept):
  workdir, _ = swept
  md = tables_lib.tables(str(workdir))
  values = {m: [json.loads((workdir / n / "results.json").read_text())["metrics"][m] for n in GOOD]
            for m in ("train/loss", "eval/loss")}
  cell = lambda m: f"{statistics.mean(values[m]):.4g} ± {statistics.stdev(values[m]):.4g}"
  row = f"| 0.03 | 2 | {cell('train/loss')} | {cell('eval/loss')} |"
  assert md.splitlines()[0] == "| optimizer.learning_rate | seeds | train/loss | eval/loss |"
  assert row in md.splitlines()
  assert (workdir / "results.md").read_text() == md
  with open(workdir / "results.csv") as f:
    [rec] = list(csv.DictReader(f))
  assert float(rec["eval/loss mean"]) == pytest.approx(statistics.mean(values["eval/loss"]), rel=1e-12)
  assert float(rec["eval/loss std"]) == pytest.approx(statistics.stdev(values["eval/loss"]), rel=1e-12)
  assert rec["seeds"] == "2"
  png = (workdir / "plots" / "lr_vs_loss.png").read_bytes()
  assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 1000


@pytest.mark.slow
def test_resume_skips_finished_runs(swept, capsys):
  workdir, _ = swept
  mtimes = {n: (workdir / n / "results.json").stat().st_mtime_ns for n in GOOD}
  results = sweep_lib.sweep(SPEC, str(workdir), workers=1, extra_kinds="tests/toy_config.py:KINDS")
  out = capsys.readouterr().out
  for name in GOOD:
    assert f"[sweep] {name}: already done; skipping" in out
    assert (workdir / name / "results.json").stat().st_mtime_ns == mtimes[name]
  assert results[BAD]["status"] == "failed"  # Re-attempted, fails again, still recorded.


@pytest.mark.slow
def test_results_record_provenance_and_tables_keep_per_run_values(swept):
  workdir, _ = swept
  prov = json.loads((workdir / GOOD[0] / "results.json").read_text())["provenance"]
  head = subprocess.run(["git", "-C", str(REPO_ROOT), "rev-parse", "HEAD"], capture_output=True, text=True).stdout
  assert prov["commit"] == head.strip() and prov["dirty"] in (True, False) and len(prov["config_hash"]) == 16
  other = json.loads((workdir / GOOD[1] / "results.json").read_text())["provenance"]
  assert other["config_hash"] != prov["config_hash"]  # seed 0 vs seed 1: different expanded configs
  md = tables_lib.tables(str(workdir))
  assert md.rstrip().splitlines()[-1] == (f"code commit: {prov['commit']} "
                                          f"({'dirty' if prov['dirty'] else 'clean'}) (2 runs)")
  with open(workdir / "results_runs.csv") as f:
    rows = {r["run"]: r for r in csv.DictReader(f)}
  for name in GOOD:
    want = json.loads((workdir / name / "results.json").read_text())["metrics"]["eval/loss"]
    assert float(rows[name]["eval/loss"]) == pytest.approx(want, rel=1e-12)


def test_tables_refuse_to_pool_runs_from_different_commits(tmp_path):
  for name, commit in (("seed=0", "aaa"), ("seed=1", "bbb")):
    (tmp_path / name).mkdir()
    (tmp_path / name / "results.json").write_text(json.dumps(
        {"status": "done", "metrics": {"m": 1.0}, "provenance": {"commit": commit, "dirty": False}}))
    (tmp_path / name / "overrides.json").write_text(json.dumps({"seed": int(name[-1])}))
  with pytest.raises(ValueError, match=r"runs come from 2 code versions \(aaa \(clean\): seed=0; bbb \(clean\): "
                     r"seed=1\).*--allow_mixed_commits"):
    tables_lib.tables(str(tmp_path))
  md = tables_lib.tables(str(tmp_path), allow_mixed_commits=True)
  assert "code commits: aaa (clean) (1 runs); bbb (clean) (1 runs)" in md
