"""Re-running into a workdir that holds results: experiments.run refuses finished stages of another config and records
each stage's commit, experiments.sweep refuses run directories of another config, experiments.tables tables only the
last sweep's runs and never pools configs or (unasked) commits; plus the command lines' config-error exits (2) and the
sweep's command-line spelling of sequence overrides.

In-process with a stage kind that trains nothing (milliseconds), except the command-line tests (a few seconds each).
"""

import csv
import dataclasses
import json
import os
import pathlib
import subprocess
import sys

import ml_collections
import pytest

REPO_ROOT = pathlib.Path(__file__).resolve().parents[2]
if str(REPO_ROOT) not in sys.path:
  sys.path.insert(0, str(REPO_ROOT))

from experiments import repro  # noqa: E402
from experiments import run as run_lib  # noqa: E402
from experiments import sweep as sweep_lib  # noqa: E402
from experiments import tables as tables_lib  # noqa: E402
from jaxrlhf.config import ConfigError, field  # noqa: E402
from jaxrlhf.stages.kinds import StageKind  # noqa: E402


@dataclasses.dataclass(frozen=True)
class ToyConfig:
  lr: float = field(0.1)
  seed: int = field(0)
  fail: bool = field(False)


CALLS: list[str] = []  # The stage directories the toy stage ran in, in order.


def _toy(cfg: ToyConfig, workdir: str, inputs: dict) -> dict:
  CALLS.append(os.path.basename(workdir))
  if cfg.fail:
    raise RuntimeError("deliberate failure")
  return {"metrics": {"lr": cfg.lr, "inputs": len(inputs)}}


KINDS = {"toy": StageKind("toy", ToyConfig, _toy)}


def _chain(a: float = 0.1, b: float = 0.1, fail_b: bool = False) -> ml_collections.ConfigDict:
  return ml_collections.ConfigDict({"stages": ["a", "b"], "a": {"kind": "toy", "lr": a},
                                    "b": {"kind": "toy", "lr": b, "fail": fail_b}})


@pytest.fixture(autouse=True)
def _clear_calls():
  CALLS.clear()


def _done(workdir: pathlib.Path, stage: str) -> dict:
  return json.loads((workdir / stage / "DONE.json").read_text())


def test_a_finished_stage_whose_config_changed_is_refused_before_anything_runs(tmp_path):
  run_lib.run(_chain(), str(tmp_path), KINDS)
  assert CALLS == ["a", "b"]
  record = _done(tmp_path, "b")["_provenance"]
  assert record["config"]["lr"] == "0.1" and set(record["inputs"]) == {"a"} and len(record["config_hash"]) == 16
  before = {p: (tmp_path / p).read_bytes() for p in ("a/DONE.json", "b/DONE.json", "results.json")}
  CALLS.clear()
  run_lib.run(_chain(), str(tmp_path), KINDS)  # The same config: both skipped.
  assert CALLS == []
  with pytest.raises(ConfigError, match=r"stage 'b' already finished under another config \(.*b/DONE\.json\): "
                     r"config\.b\.lr: 0\.1 -> 0\.5\. .*--fresh"):
    run_lib.run(_chain(b=0.5), str(tmp_path), KINDS)
  with pytest.raises(ConfigError, match=r"stage 'a' already finished under another config .*config\.a\.lr: 0\.1 -> "
                     r"0\.2"):
    run_lib.run(_chain(a=0.2), str(tmp_path), KINDS)
  assert CALLS == [] and {p: (tmp_path / p).read_bytes() for p in before} == before
  # A stage's outputs never carry the record: later stages and results.json see what the stage returned.
  assert "_provenance" not in json.loads((tmp_path / "results.json").read_text())["stages"]["b"]


def test_an_earlier_stage_rerun_under_another_config_invalidates_the_finished_later_ones(tmp_path):
  run_lib.run(_chain(), str(tmp_path), KINDS)
  (tmp_path / "a" / "DONE.json").unlink()
  CALLS.clear()
  with pytest.raises(ConfigError, match=r"stage 'b' already finished under another config .*earlier stage 'a' ran "
                     r"under another config since"):
    run_lib.run(_chain(a=0.3), str(tmp_path), KINDS)
  assert CALLS == []  # Refused before 'a' ran again.


def _at(monkeypatch, commit: str) -> None:
  monkeypatch.setattr(run_lib, "code_version", lambda: run_lib.CodeVersion(commit, False))


def test_the_same_config_at_another_commit_is_reused_and_tables_count_the_run_as_mixed(tmp_path, monkeypatch,
                                                                                       capsys):
  sweep_dir = tmp_path / "sweep"
  run_dir = sweep_dir / "seed=0"
  _at(monkeypatch, "aaa")
  with pytest.raises(RuntimeError, match="deliberate failure"):
    run_lib.run(_chain(fail_b=True), str(run_dir), KINDS)
  _at(monkeypatch, "bbb")
  capsys.readouterr()
  run_lib.run(_chain(), str(run_dir), KINDS)
  out = capsys.readouterr().out
  assert "[run] stage 'a' already finished; skipping" in out
  assert "[run] WARNING: stage 'a' was finished at commit aaa (clean), this run is at bbb (clean)" in out
  prov = json.loads((run_dir / "results.json").read_text())["provenance"]
  assert prov["commit"] == "bbb"
  assert {s: (r["commit"], r["dirty"]) for s, r in prov["stages"].items()} == {"a": ("aaa", False),
                                                                              "b": ("bbb", False)}
  (run_dir / "overrides.json").write_text(json.dumps({"seed": 0}))
  with pytest.raises(ValueError, match=r"runs come from 2 code versions \(aaa \(clean\): seed=0 \(stages a\); "
                     r"bbb \(clean\): seed=0 \(stages b\)\)"):
    tables_lib.tables(str(sweep_dir))
  md = tables_lib.tables(str(sweep_dir), allow_mixed_commits=True)
  assert "code commits: aaa (clean) (1 runs); bbb (clean) (1 runs)" in md
  with open(sweep_dir / "results_runs.csv") as f:
    assert next(csv.DictReader(f))["commit"] == "aaa (clean)+bbb (clean)"


def test_stages_finished_by_older_code_are_reused_with_a_warning(tmp_path, capsys):
  run_lib.run(_chain(), str(tmp_path), KINDS)
  for stage in ("a", "b"):  # As older code wrote them: the outputs only.
    done = _done(tmp_path, stage)
    del done["_provenance"]
    (tmp_path / stage / "DONE.json").write_text(json.dumps(done))
  capsys.readouterr()
  CALLS.clear()
  run_lib.run(_chain(b=0.5), str(tmp_path), KINDS)  # Cannot be checked: reused, as before.
  assert CALLS == []
  assert "[run] WARNING: stage 'b' was finished by older code" in capsys.readouterr().out
  prov = json.loads((tmp_path / "results.json").read_text())["provenance"]
  assert prov["stages"]["a"] == {"commit": "unknown", "dirty": None, "config_hash": None}


def test_a_key_only_one_code_version_has_is_not_a_config_change(tmp_path, capsys):
  config = ml_collections.ConfigDict({"stages": ["a"], "a": {"kind": "toy", "lr": 0.1}})
  run_lib.run(config, str(tmp_path), KINDS)
  done = _done(tmp_path, "a")  # As code without ToyConfig.fail would have written it (hash of its own keys).
  record = done["_provenance"]
  del record["config"]["fail"]
  digest = run_lib._digest  # pylint: disable=protected-access
  record["config_hash"] = digest([record["kind"], list(record["config"].items()), []])
  (tmp_path / "a" / "DONE.json").write_text(json.dumps(done))
  capsys.readouterr()
  CALLS.clear()
  run_lib.run(config, str(tmp_path), KINDS)
  assert CALLS == []
  assert ("stage 'a' was finished by code with other config keys (new here: fail; gone here: none)"
          in capsys.readouterr().out)


# Command lines: a user's stage kind and config file, as --extra_kinds and --config take them.
TOY_MODULE = """
import dataclasses
import ml_collections
from jaxrlhf.stages.kinds import StageKind

@dataclasses.dataclass(frozen=True)
class ToyConfig:
  lr: float = 0.1
  seed: int = 0

def run(cfg, workdir, inputs):
  return {"metrics": {"lr": cfg.lr, "seed": cfg.seed}}

KINDS = {"toy": StageKind("toy", ToyConfig, run)}
VARIANTS = ("default", "b")

def get_config(arg=None):
  if (arg or "default") not in VARIANTS:
    raise ValueError(f"unknown variant {arg!r}")
  c = ml_collections.ConfigDict()
  c.stages = ("a",)
  c.seed = 0
  c.a = ml_collections.ConfigDict(dict(kind="toy", lr=0.9 if arg == "b" else 0.1, seed=0))
  return c

def sweep(add):
  add(seed=0)
"""


def _env() -> dict[str, str]:
  return dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in (str(REPO_ROOT), os.environ.get("PYTHONPATH")) if p))


def _cli(module: str, *args: str) -> subprocess.CompletedProcess:
  return subprocess.run([sys.executable, "-m", module, *args], cwd=REPO_ROOT, env=_env(), capture_output=True,
                        text=True, timeout=300)


@pytest.fixture
def toy_file(tmp_path) -> str:
  path = tmp_path / "toy.py"
  path.write_text(TOY_MODULE)
  return str(path)


def test_run_cli_config_errors_exit_2_naming_the_key_stage_or_variant(tmp_path, toy_file):
  common = [f"--workdir={tmp_path / 'w'}", f"--extra_kinds={toy_file}:KINDS"]
  first = _cli("experiments.run", f"--config={toy_file}", *common)
  assert first.returncode == 0, first.stderr[-2000:]
  changed = _cli("experiments.run", f"--config={toy_file}", *common, "--config.a.lr=0.5")
  assert changed.returncode == 2, changed.stderr[-2000:]
  assert "config error: stage 'a' already finished under another config" in changed.stderr
  assert "config.a.lr: 0.1 -> 0.5" in changed.stderr and "Traceback" not in changed.stderr
  bad_value = _cli("experiments.run", f"--config={toy_file}", *common, "--config.a.lr=abc")
  assert bad_value.returncode == 2, bad_value.stderr[-2000:]
  assert "config error: config.a.lr: cannot read the value given (could not convert string to float: 'abc')" in (
      bad_value.stderr)
  variant = _cli("experiments.run", f"--config={toy_file}:bb", *common)
  assert variant.returncode == 2, variant.stderr[-2000:]
  assert f"config error: --config: '{toy_file}' has no variant 'bb'; valid variants: default, b" in variant.stderr
  assert "Traceback" not in variant.stderr
  sweep = _cli("experiments.sweep", f"--config={toy_file}:bb", f"--workdir={tmp_path / 's'}")
  assert sweep.returncode == 2 and "has no variant 'bb'; valid variants: default, b" in sweep.stderr, sweep.stderr


def test_a_sweep_of_another_variant_into_a_workdir_is_refused_naming_the_run_dirs(tmp_path, toy_file, capsys):
  workdir = tmp_path / "s"
  kinds = f"{toy_file}:KINDS"
  assert sweep_lib.sweep(toy_file, str(workdir), extra_kinds=kinds)["seed=0"]["status"] == "done"
  status = json.loads((workdir / "seed=0" / "status.json").read_text())
  assert status["config"] == toy_file and status["config_hash"] == sweep_lib.config_hash(toy_file)
  kept = (workdir / "seed=0" / "results.json").read_bytes()
  with pytest.raises(ConfigError, match=r"--workdir: 1 run directory holds a run of another config: .*seed=0 \(ran "
                     rf"'{toy_file}'.*this sweep: '{toy_file}:b'.*use a new --workdir"):
    sweep_lib.sweep(f"{toy_file}:b", str(workdir), extra_kinds=kinds)
  assert (workdir / "seed=0" / "results.json").read_bytes() == kept
  assert json.loads((workdir / "sweep.json").read_text())["config"] == toy_file  # Not rewritten either.
  capsys.readouterr()
  sweep_lib.sweep(toy_file, str(workdir), extra_kinds=kinds)  # The same config resumes as before.
  assert "[sweep] seed=0: already done; skipping" in capsys.readouterr().out


def _fake_run(workdir: pathlib.Path, name: str, seed: int, value: float, config_hash: str | None = None) -> None:
  (workdir / name).mkdir(parents=True)
  (workdir / name / "results.json").write_text(json.dumps(
      {"status": "done", "metrics": {"m": value}, "provenance": {"commit": "aaa", "dirty": False}}))
  (workdir / name / "overrides.json").write_text(json.dumps({"seed": seed}))
  if config_hash:
    (workdir / name / "status.json").write_text(json.dumps({"status": "done", "config_hash": config_hash}))


def test_tables_read_only_the_runs_of_sweep_json(tmp_path, capsys):
  for seed in range(3):
    _fake_run(tmp_path, f"seed={seed}", seed, float(seed))
  config = tmp_path / "x.py"
  config.write_text("import ml_collections\ndef get_config():\n  return ml_collections.ConfigDict()\n")
  (tmp_path / "sweep.json").write_text(json.dumps(
      {"config": str(config), "runs": [{"name": "seed=0", "overrides": {"seed": 0}, "status": "done"}]}))
  md = tables_lib.tables(str(tmp_path))
  assert md.splitlines()[2] == "| 1 | 0 ± 0 |"  # One seed, not the earlier grid's three.
  assert "[tables] 2 run directories not in" in capsys.readouterr().err
  with open(tmp_path / "results_runs.csv") as f:
    assert [r["run"] for r in csv.DictReader(f)] == ["seed=0"]


def test_tables_refuse_to_pool_runs_of_different_configs(tmp_path):
  _fake_run(tmp_path, "seed=0", 0, 1.0, config_hash="h1")
  _fake_run(tmp_path, "seed=1", 1, 2.0, config_hash="h2")
  with pytest.raises(ValueError, match=r"come from 2 configs \(status.json config_hash: h1: seed=0; h2: seed=1\)"):
    tables_lib.tables(str(tmp_path))


@pytest.mark.parametrize("value", [("sigmoid", "sft"), ("hinge",), (0.5, 2), ("a,b", "it's"), (("x", 1), "y")])
def test_sequence_overrides_round_trip_through_config_flags(tmp_path, value):
  from absl import flags  # pylint: disable=g-import-not-at-top
  from ml_collections import config_flags  # pylint: disable=g-import-not-at-top
  path = tmp_path / "seq.py"
  path.write_text("import ml_collections\ndef get_config():\n  return ml_collections.ConfigDict({'t': ('z',)})\n")
  arg = sweep_lib.command(str(path), "w", {"t": value})[-1]
  argv = ["prog", f"--config={path}", arg]
  flag_values = flags.FlagValues()
  config_flags.DEFINE_config_file("config", None, "", flag_values=flag_values, lock_config=True, sys_argv=argv)
  flag_values(argv)
  assert flag_values.config.t == value


def test_repro_saves_the_per_run_csv_and_puts_a_variant_in_its_own_directory(tmp_path, monkeypatch):
  sweep_dir = tmp_path / "sweep"
  sweep_dir.mkdir()
  for name in ("results.md", "results.csv", "results_runs.csv"):
    (sweep_dir / name).write_text(name)
  dest = pathlib.Path(repro.save_to_docs(str(sweep_dir), "paper", docs_dir=str(tmp_path / "docs")))
  assert (dest / "results_runs.csv").read_text() == "results_runs.csv"

  commands = []

  def fake_run(cmd, **kwargs):  # The sweep and tables subprocesses: record them, leave a table.
    del kwargs
    commands.append(cmd)
    out = next(a for a in cmd if a.startswith("--workdir=")).split("=", 1)[1]
    os.makedirs(out, exist_ok=True)
    pathlib.Path(out, "results.md").write_text("| table |\n")
    return subprocess.CompletedProcess(cmd, 0, "", "")

  monkeypatch.setattr(repro.subprocess, "run", fake_run)
  repro.main(["--paper", "clip_delta", "--variant", "ppo_smoke", "--workdir", str(tmp_path / "runs"), "--no-docs"])
  assert f"--workdir={tmp_path / 'runs' / 'clip_delta_ppo_smoke'}" in commands[0]
  assert "--config=configs/papers/clip_delta.py:ppo_smoke" in commands[0]


def test_the_sweep_config_hash_ignores_the_table_but_not_the_runs(tmp_path):
  """A metric added to config.tables after a sweep leaves its runs this config's; any value a run reads does not."""
  template = ("import ml_collections\n\ndef get_config():\n  c = ml_collections.ConfigDict()\n"
              "  c.stages = {{'a': {{'kind': 'toy', 'lr': {lr}}}}}\n  c.tables = dict(metrics={metrics})\n  return c\n")
  paths = {}
  for name, lr, metrics in (("base", 0.1, ("a/x",)), ("more_metrics", 0.1, ("a/x", "a/y")), ("lr", 0.2, ("a/x",))):
    paths[name] = tmp_path / f"{name}.py"
    paths[name].write_text(template.format(lr=lr, metrics=metrics))
  hashes = {name: sweep_lib.config_hash(str(p)) for name, p in paths.items()}
  assert hashes["base"] == hashes["more_metrics"]
  assert hashes["base"] != hashes["lr"]
