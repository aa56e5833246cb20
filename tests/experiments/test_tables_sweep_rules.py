"""The sweep / tables / run / summary / repro rules a mutation audit found unchecked, on fake run directories (as
experiments.sweep leaves them) and stage kinds that train nothing: which runs a table pools and in which order, the
sweep grid's refusals before anything runs, the run's error-file and --fresh bookkeeping, the summary's rows and the
best-of-N curves' pooling. In-process; milliseconds each."""

import csv
import dataclasses
import json
import math
import os
import pathlib
import statistics
import subprocess
import sys

import ml_collections
import pytest

REPO_ROOT = pathlib.Path(__file__).resolve().parents[2]
if str(REPO_ROOT) not in sys.path:
  sys.path.insert(0, str(REPO_ROOT))

from experiments import repro  # noqa: E402
from experiments import run as run_lib  # noqa: E402
from experiments import summary  # noqa: E402
from experiments import sweep as sweep_lib  # noqa: E402
from experiments import tables as tables_lib  # noqa: E402
from jaxrlhf.config import ConfigError, field  # noqa: E402
from jaxrlhf.stages.kinds import StageKind  # noqa: E402
from jaxrlhf.train import workdir_lock  # noqa: E402


def _run(root: pathlib.Path, name: str, overrides: dict, metrics: dict, status: str = "done") -> None:
  (root / name).mkdir(parents=True)
  (root / name / "overrides.json").write_text(json.dumps(overrides))
  (root / name / "results.json").write_text(json.dumps(
      {"status": status, "metrics": metrics, "provenance": {"commit": "aaa", "dirty": False}}))


# --- experiments.tables ---


def test_tables_pool_finished_seeds_per_setting_sorted_by_value(tmp_path):
  """Rows: one per swept setting (seed pooled), ordered by the swept value as a number (0.5 < 2 < 10, not as text);
  mean and sample std (statistics.stdev) over the finished runs that have the metric; a run whose results.json is
  not "done" is not a seed; a metric no run of a row has is NaN (not 0)."""
  values = {}
  for lr in (10, 2, 0.5):
    for seed in range(2 if lr == 10 else 3):
      m = {"m": lr * 10 + seed ** 2}
      if lr == 2 and seed < 2:
        m["some"] = float(seed + 1)  # Two of lr=2's three seeds have it.
      values.setdefault(lr, []).append(m)
      _run(tmp_path, f"lr={lr},seed={seed}", {"lr": lr, "seed": seed}, m)
  _run(tmp_path, "lr=0.5,seed=3", {"lr": 0.5, "seed": 3}, {"m": 1e6}, status="failed")
  md = tables_lib.tables(str(tmp_path))
  lines = md.splitlines()
  assert lines[0] == "| lr | seeds | m | some |"
  assert [line.split(" | ")[0] for line in lines[2:5]] == ["| 0.5", "| 2", "| 10"]
  for line, lr in zip(lines[2:5], (0.5, 2, 10)):
    ms = [v["m"] for v in values[lr]]
    assert line.startswith(f"| {lr} | {len(ms)} | {statistics.mean(ms):.4g} ± {statistics.stdev(ms):.4g} |")
  assert lines[3].endswith(f"| {statistics.mean([1.0, 2.0]):.4g} ± {statistics.stdev([1.0, 2.0]):.4g} |")
  assert lines[2].endswith("| nan ± 0 |")
  with open(tmp_path / "results.csv") as f:
    rows = list(csv.DictReader(f))
  assert [r["lr"] for r in rows] == ["0.5", "2", "10"] and [r["seeds"] for r in rows] == ["3", "3", "2"]
  assert float(rows[1]["some mean"]) == 1.5 and float(rows[1]["some std"]) == pytest.approx(math.sqrt(0.5))
  with open(tmp_path / "results_runs.csv") as f:
    assert "lr=0.5,seed=3" not in {r["run"] for r in csv.DictReader(f)}


def test_config_tables_metrics_choose_the_columns_and_a_missing_one_is_named(tmp_path):
  runs = tmp_path / "runs"
  for seed in range(2):
    _run(runs, f"seed={seed}", {"seed": seed}, {"a/x": 1.0 + seed, "b/y": 5.0, "c/z": 7.0})
  config = tmp_path / "c.py"
  config.write_text("import ml_collections\ndef get_config(arg=None):\n  c = ml_collections.ConfigDict()\n"
                    "  c.tables = dict(metrics=('c/z', 'a/x') if arg is None else ('a/x', 'nope'))\n  return c\n")
  md = tables_lib.tables(str(runs), str(config))
  assert md.splitlines()[0] == "| seeds | c/z | a/x |"  # In the config's order, b/y left out.
  with pytest.raises(ValueError, match=r"config.tables.metrics: \['nope'\] not found in results; available: "
                     r"\['a/x', 'b/y', 'c/z'\]"):
    tables_lib.tables(str(runs), f"{config}:other")


# --- experiments.sweep: the grid is refused before anything runs ---

SWEEPS = """
import ml_collections
VARIANTS = ("default", "dupe", "typo", "empty", "renamed")

def get_config(arg=None):
  if (arg or "default") not in VARIANTS:
    raise ValueError(f"unknown variant {arg!r}")
  return ml_collections.ConfigDict({"kind": "toy", "name": "x", "seed": 0})

def sweep(add, arg=None):
  if arg == "dupe":
    add(seed=0, name="x")
    add(name="x", seed=0)
  elif arg == "typo":
    add(seed=0, nmae="x")
  elif arg == "renamed":
    add(seed=0, name="x_y")
  elif arg != "empty":
    add(seed=0, name="x/y")
"""


@pytest.fixture
def sweeps_file(tmp_path) -> str:
  path = tmp_path / "sweeps.py"
  path.write_text(SWEEPS)
  return str(path)


@pytest.mark.parametrize("variant,match", [
    ("dupe", r"sweep\(add\): runs with identical overrides: \['name=x,seed=0'\]"),
    ("typo", r"config.nmae: unknown key \(did you mean 'name'\?\)"),
    ("empty", r"sweep\(add\) added no runs"),
])
def test_a_bad_grid_is_refused_before_anything_runs(tmp_path, sweeps_file, variant, match):
  with pytest.raises(ConfigError, match=match):
    sweep_lib.sweep(f"{sweeps_file}:{variant}", str(tmp_path / "w"))
  assert not (tmp_path / "w").exists()


def test_a_run_dir_of_other_overrides_with_the_same_name_is_refused(tmp_path, sweeps_file):
  """name='x/y' and name='x_y' share the directory name=x_y,seed=0 (sanitized): a finished run of one is not the
  other's, even under the same config (the same config hash)."""
  workdir = tmp_path / "w"
  run_dir = workdir / "name=x_y,seed=0"
  run_dir.mkdir(parents=True)
  (run_dir / "status.json").write_text(json.dumps(
      {"status": "done", "config": sweeps_file, "config_hash": sweep_lib.config_hash(sweeps_file)}))
  (run_dir / "overrides.json").write_text(json.dumps({"seed": 0, "name": "x/y"}))
  assert sweep_lib.run_name({"seed": 0, "name": "x/y"}) == sweep_lib.run_name({"seed": 0, "name": "x_y"})
  with pytest.raises(ConfigError, match=r"1 run directory holds a run of another config: .*name=x_y,seed=0 \(ran "
                     r"other overrides"):
    sweep_lib.sweep(f"{sweeps_file}:renamed", str(workdir))
  # Its own overrides: done, skipped (nothing to run, no subprocess).
  assert sweep_lib.sweep(sweeps_file, str(workdir))["name=x_y,seed=0"]["status"] == "done"
  assert json.loads((workdir / "sweep.json").read_text())["runs"] == [
      {"name": "name=x_y,seed=0", "overrides": {"seed": 0, "name": "x/y"}, "status": "done"}]


RUNNABLE = """
import dataclasses
import ml_collections
from jaxrlhf.stages.kinds import StageKind

@dataclasses.dataclass(frozen=True)
class C:
  seed: int = 0
  fail: bool = False

def run(cfg, workdir, inputs):
  if cfg.fail:
    raise RuntimeError("deliberate failure")
  return {"metrics": {"seed": cfg.seed}}

KINDS = {"toy": StageKind("toy", C, run)}

def get_config(arg=None):
  return ml_collections.ConfigDict(dict(kind="toy", seed=0, fail=False))

def sweep(add):
  add(seed=0)
  add(seed=1, fail=True)
"""


def test_a_failed_run_is_rerun_and_a_failing_one_is_recorded_failed(tmp_path):
  """Resume skips only runs whose status is "done": a run left "failed" by an earlier sweep runs again; a member
  whose experiments.run exits non-zero (1 here: an uncaught error) is "failed", with its traceback, and the sweep
  exits 1."""
  spec = tmp_path / "runnable.py"
  spec.write_text(RUNNABLE)
  workdir = tmp_path / "w"
  (workdir / "seed=0").mkdir(parents=True)
  (workdir / "seed=0" / "status.json").write_text(json.dumps(
      {"status": "failed", "returncode": 1, "config": str(spec), "config_hash": sweep_lib.config_hash(str(spec))}))
  proc = subprocess.run([sys.executable, "-m", "experiments.sweep", f"--config={spec}", f"--workdir={workdir}",
                         "--workers=2", f"--extra_kinds={spec}:KINDS"], cwd=REPO_ROOT, capture_output=True, text=True,
                        timeout=300, env=dict(os.environ, PYTHONPATH=str(REPO_ROOT)))
  assert proc.returncode == 1, proc.stderr[-3000:]  # A member failed.
  assert "[sweep] 1/2 runs done; failed: fail=True,seed=1" in proc.stdout
  status = lambda name: json.loads((workdir / name / "status.json").read_text())
  assert status("seed=0")["status"] == "done" and status("seed=0")["returncode"] == 0
  assert json.loads((workdir / "seed=0" / "results.json").read_text())["metrics"] == {"seed": 0}
  failed = status("fail=True,seed=1")
  assert failed["status"] == "failed" and failed["returncode"] == 1
  assert "RuntimeError: deliberate failure" in failed["error"]
  assert {r["name"]: r["status"] for r in json.loads((workdir / "sweep.json").read_text())["runs"]} == {
      "seed=0": "done", "fail=True,seed=1": "failed"}


def test_a_one_item_sequence_keeps_its_comma_in_the_run_name():
  """Run names of existing sweeps depend on the spelling: a 1-tuple is written as Python writes it, `(hinge,)`."""
  assert sweep_lib.run_name({"loss.names": ("hinge",), "seed": 0}) == "loss.names=_hinge,_,seed=0"
  assert sweep_lib.run_name({"loss.names": ("hinge", "sft")}) == "loss.names=_hinge,sft_"


def test_a_one_item_sequence_of_a_sequence_round_trips_through_config_flags(tmp_path):
  """`((x, 1),)` must reach the run as a 1-tuple: spelled `(('x', 1))` without its comma, config_flags reads the
  inner pair (`('x', 1)`) instead."""
  from absl import flags  # pylint: disable=g-import-not-at-top
  from ml_collections import config_flags  # pylint: disable=g-import-not-at-top
  path = tmp_path / "seq.py"
  path.write_text("import ml_collections\ndef get_config():\n  return ml_collections.ConfigDict({'t': ('z',)})\n")
  value = (("x", 1),)
  arg = sweep_lib.command(str(path), "w", {"t": value})[-1]
  assert arg == "--config.t=(('x',1),)"
  argv = ["prog", f"--config={path}", arg]
  flag_values = flags.FlagValues()
  config_flags.DEFINE_config_file("config", None, "", flag_values=flag_values, lock_config=True, sys_argv=argv)
  flag_values(argv)
  assert flag_values.config.t == value


# --- experiments.run: error files, --fresh, --extra_kinds ---


@dataclasses.dataclass(frozen=True)
class _Cfg:
  fail: bool = field(False)


def _stage(cfg: _Cfg, workdir: str, inputs: dict) -> dict:
  if cfg.fail:
    raise RuntimeError("deliberate failure")
  return {"metrics": {"inputs": sorted(inputs)}}


KINDS = {**run_lib.KINDS, "toy": StageKind("toy", _Cfg, _stage)}


def _chain(fail: bool) -> ml_collections.ConfigDict:
  return ml_collections.ConfigDict({"stages": ["a", "b"], "a": {"kind": "toy"}, "b": {"kind": "toy", "fail": fail}})


def test_a_successful_rerun_removes_the_failures_error_file_and_stages_get_earlier_outputs(tmp_path, capsys):
  with pytest.raises(RuntimeError, match="deliberate failure"):
    run_lib.run_and_report(_chain(fail=True), str(tmp_path), KINDS)
  assert "deliberate failure" in (tmp_path / "error.txt").read_text()
  assert "deliberate failure" in (tmp_path / "b" / "error.txt").read_text()
  capsys.readouterr()
  run_lib.run_and_report(_chain(fail=False), str(tmp_path), KINDS)
  out = capsys.readouterr().out
  # Stage a resumes under its own config at the same commit: skipped without any warning.
  assert "[run] stage 'a' already finished; skipping" in out and "WARNING" not in out
  assert not (tmp_path / "error.txt").exists()  # A finished run leaves no stale failure for a sweep to report.
  metrics = json.loads((tmp_path / "results.json").read_text())["metrics"]
  assert metrics == {"a/inputs": [], "b/inputs": ["a"]}  # Each stage is handed every earlier stage's outputs.


@dataclasses.dataclass(frozen=True)
class _Seeded:
  seed: int = field(0)


SEEDED = {"toy": StageKind("toy", _Cfg, _stage), "seeded": StageKind("seeded", _Seeded, _stage)}


def test_a_chain_seed_reseeds_only_stages_that_have_a_seed():
  """config.seed replaces the seed of every stage that has one; a stage kind without a seed field is planned as it
  is (not refused for an unknown key `seed`)."""
  config = ml_collections.ConfigDict({"stages": ["a", "b"], "seed": 7, "a": {"kind": "toy"},
                                      "b": {"kind": "seeded", "seed": 1}})
  a, b = run_lib.plan(config, SEEDED)
  assert a.config == _Cfg() and b.config == _Seeded(seed=7)


def test_fresh_clears_everything_but_the_lock_this_run_holds(tmp_path):
  for name in ("a/DONE.json", "a/checkpoints/1/x", "results.json", "error.txt", workdir_lock.LOCK_NAME):
    (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
    (tmp_path / name).write_text("x")
  run_lib.clear_workdir(str(tmp_path))
  assert os.listdir(tmp_path) == [workdir_lock.LOCK_NAME]


def test_extra_kinds_default_to_kinds_and_may_not_redefine_a_built_in(tmp_path):
  path = tmp_path / "kinds.py"
  path.write_text("import dataclasses\nfrom jaxrlhf.stages.kinds import StageKind\n"
                  "@dataclasses.dataclass(frozen=True)\nclass C:\n  x: int = 0\n"
                  "KINDS = {'mine': StageKind('mine', C, lambda c, w, i: {})}\n"
                  "CLASH = {'reward': StageKind('reward', C, lambda c, w, i: {})}\n")
  kinds = run_lib.load_kinds(str(path))  # "file.py" alone: its KINDS.
  assert "mine" in kinds and set(run_lib.KINDS) <= set(kinds)
  with pytest.raises(ConfigError, match=r"redefines built-in stage kinds \['reward'\]"):
    run_lib.load_kinds(f"{path}:CLASH")


# --- experiments.summary ---


def test_summary_has_one_base_row_and_reads_only_eval_metrics_of_reward_stages(tmp_path):
  policy = lambda p, b: type("C", (), {"policy": p, "base": b})()
  stages = [("sft", "sft", None), ("rm", "reward", None),
            ("ev_dpo", "evaluate_policy", policy("stage:dpo", "stage:sft")),
            ("ev_ppo", "evaluate_policy", policy("stage:ppo", "stage:sft"))]
  outputs = {"sft": {"metrics": {"gold/policy": 9.0}},
             "rm": {"metrics": {"eval/accuracy": 0.75, "train/loss": 0.3}},
             "ev_dpo": {"metrics": {"gold/policy": 1.0, "gold/base": 0.5, "kl": 2.0}},
             "ev_ppo": {"metrics": {"gold/policy": 1.5, "gold/base": 0.5, "kl": 4.0}}}
  md = summary.write_summary(str(tmp_path), stages, outputs)
  assert md.splitlines() == ["| reward model | eval/accuracy |", "|---|---|", "| rm | 0.750 |", "",
                             "| policy | gold | KL to base (nats) |", "|---|---|---|", "| sft (base) | 0.500 | 0.000 |",
                             "| dpo | 1.000 | 2.000 |", "| ppo | 1.500 | 4.000 |"]
  assert (tmp_path / "summary.md").read_text() == md


# --- experiments.repro ---


def test_paper_names_skip_private_modules(tmp_path, monkeypatch):
  for name in ("b.py", "a.py", "_shared.py", "notes.txt"):
    (tmp_path / name).write_text("")
  monkeypatch.setattr(repro, "PAPERS_DIR", str(tmp_path))
  assert repro.paper_names() == ["a", "b"]


def test_curves_pool_the_listed_runs_over_their_common_length(tmp_path):
  """Only sweep.json's runs count (as in experiments.tables); seeds whose curves have different lengths are pooled
  over the shortest (n = 1, 2), the mean and sample std taken per n by hand."""
  def write(name, seed, gold):
    run = tmp_path / name / "bon"
    run.mkdir(parents=True)
    (tmp_path / name / "overrides.json").write_text(json.dumps({"seed": seed}))
    curve = {"n": [1, 2, 4][:len(gold)], "kl": [0.0, 0.19, 0.64][:len(gold)], "gold": gold, "proxy": gold}
    (run / "results.json").write_text(json.dumps({"curves": {"rm": curve}}))
  write("seed=0", 0, [1.0, 2.0, 3.0])
  write("seed=1", 1, [3.0, 6.0])
  write("seed=2", 2, [100.0, 100.0, 100.0])  # An earlier grid's run: not in sweep.json.
  (tmp_path / "sweep.json").write_text(json.dumps({"runs": [{"name": "seed=0"}, {"name": "seed=1"}]}))
  c = repro.collect_curves(str(tmp_path))["bon/rm"]
  assert c["seeds"] == 2 and c["n"] == [1, 2] and c["kl"] == [0.0, 0.19]
  assert c["gold_mean"] == [2.0, 4.0] and c["gold_std"] == pytest.approx([math.sqrt(2.0), math.sqrt(8.0)])
