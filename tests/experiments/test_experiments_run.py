"""experiments.run: config errors before compute, stage chaining, and exact resume after kill -9."""

import json
import os
import pathlib
import signal
import subprocess
import sys
import time

import pytest

REPO_ROOT = pathlib.Path(__file__).resolve().parents[2]
if str(REPO_ROOT) not in sys.path:
  sys.path.insert(0, str(REPO_ROOT))

from experiments import run as run_lib  # noqa: E402
from jaxrlhf import config as config_lib  # noqa: E402
from jaxrlhf.train import metrics as metrics_lib  # noqa: E402

TOY = "tests/toy_config.py"
TOY_KINDS = run_lib.load_kinds(f"{REPO_ROOT / TOY}:KINDS")  # The built-in kinds plus "toy_regression".


def _env():
  return dict(os.environ, PYTHONPATH=str(REPO_ROOT))


def _run_cli(*args, timeout=300):
  return subprocess.run([sys.executable, "-m", "experiments.run", f"--extra_kinds={TOY}:KINDS", *args],
                        cwd=REPO_ROOT, env=_env(), capture_output=True, text=True, timeout=timeout)


def _load(variant="smoke", **dotted):
  config = config_lib.load_config(f"{REPO_ROOT / TOY}:{variant}")
  for key, value in dotted.items():
    *parents, leaf = key.split("__")
    node = config
    for p in parents:
      node = node[p]
    node[leaf] = value
  return config


def test_cli_typo_fails_before_compute_naming_key(tmp_path):
  proc = _run_cli(f"--config={TOY}", f"--workdir={tmp_path / 'w'}", "--config.optimizer.lerning_rate=1")
  assert proc.returncode == 2, proc.stderr[-2000:]
  assert "config.optimizer.lerning_rate: unknown key (did you mean 'learning_rate'?)" in proc.stderr
  assert "valid keys in config.optimizer:" in proc.stderr and "learning_rate" in proc.stderr
  assert not (tmp_path / "w").exists()


def test_cli_bad_choice_fails_before_compute_naming_choices(tmp_path):
  proc = _run_cli(f"--config={TOY}:smoke", f"--workdir={tmp_path / 'w'}", "--config.optimizer.name=adamx")
  assert proc.returncode == 2, proc.stderr[-2000:]
  assert ("config.optimizer.name: 'adamx' is not a valid choice (did you mean 'adamw'?); valid choices: "
          "'adamw', 'sgd', 'adafactor'") in proc.stderr
  assert not (tmp_path / "w" / "checkpoints").exists()


def test_missing_files_fail_with_clear_messages():
  with pytest.raises(config_lib.ConfigError, match=r"--config: config file not found: 'configs/nope\.py'"):
    run_lib.precheck_argv(["--config=configs/nope.py", "--workdir=/tmp/x"])
  with pytest.raises(config_lib.ConfigError, match=r"config\.init_from: file not found: '/no/such/ckpt'"):
    run_lib.plan(_load(init_from="/no/such/ckpt"), TOY_KINDS)
  with pytest.raises(config_lib.ConfigError,
                     match=r"config\.finetune\.kind: 'nope' is not a stage kind; "
                     r"valid choices: .*'toy_regression'"):
    run_lib.plan(_load("staged", finetune__kind="nope"), TOY_KINDS)
  with pytest.raises(config_lib.ConfigError,
                     match=r"config\.finetune\.optimizer\.schedule: 'cosin' is not a valid"):
    run_lib.plan(_load("staged", finetune__optimizer__schedule="cosin"), TOY_KINDS)


def test_stages_chain_skip_finished_and_survive_a_failing_stage(tmp_path, capsys):
  with pytest.raises(RuntimeError, match="boom"):
    run_lib.run(_load("staged", finetune__fail="boom", pretrain__loop__tensorboard=False), str(tmp_path), TOY_KINDS)
  done = tmp_path / "pretrain" / "DONE.json"
  assert done.exists() and not (tmp_path / "finetune" / "DONE.json").exists()
  assert not (tmp_path / "results.json").exists()
  mtime = done.stat().st_mtime_ns
  capsys.readouterr()
  outputs = run_lib.run(_load("staged", pretrain__loop__tensorboard=False), str(tmp_path), TOY_KINDS)
  assert "stage 'pretrain' already finished; skipping" in capsys.readouterr().out
  assert done.stat().st_mtime_ns == mtime
  results = json.loads((tmp_path / "results.json").read_text())
  assert set(results["stages"]) == {"pretrain", "finetune"} and outputs["finetune"]["metrics"]
  assert "pretrain/eval/loss" in results["metrics"] and "finetune/eval/loss" in results["metrics"]
  # finetune starts from pretrain's weights: same seed and data, so a fresh start would repeat pretrain's
  # first logged loss exactly; from the trained weights it is far lower.
  first = lambda d: metrics_lib.read_jsonl(str(tmp_path / d / "metrics.jsonl"))[0]["train/loss"]
  assert first("finetune") < 0.5 * first("pretrain")


def _latest_step(ckpt_dir: pathlib.Path) -> int:
  if not ckpt_dir.exists():
    return -1
  steps = [int(p.name) for p in ckpt_dir.iterdir() if p.name.isdigit()]
  return max(steps, default=-1)


@pytest.mark.slow
def test_kill_9_then_rerun_resumes_and_matches_uninterrupted(tmp_path):
  overrides = dict(loop__num_steps=32, loop__checkpoint_every=4, loop__tensorboard=False,
                   optimizer__decay_steps=32)
  args = [f"--config={TOY}", f"--workdir={tmp_path / 'killed'}", "--config.sleep_per_step=0.15",
          *[f"--config.{k.replace('__', '.')}={v}" for k, v in overrides.items()]]
  proc = subprocess.Popen([sys.executable, "-m", "experiments.run", f"--extra_kinds={TOY}:KINDS", *args],
                          cwd=REPO_ROOT, env=_env(),
                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
  deadline = time.time() + 240
  try:
    while _latest_step(tmp_path / "killed" / "checkpoints") < 8:
      assert proc.poll() is None, "the run ended before it could be killed"
      assert time.time() < deadline, "no checkpoint at step >= 8 within the deadline"
      time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
  finally:
    proc.wait()
  assert proc.returncode == -signal.SIGKILL
  assert not (tmp_path / "killed" / "results.json").exists()
  killed_at = _latest_step(tmp_path / "killed" / "checkpoints")
  assert 8 <= killed_at < 32

  rerun = _run_cli(*args)
  assert rerun.returncode == 0, rerun.stderr[-3000:]
  assert "[train] resuming from step" in rerun.stdout

  [(_, kind, cfg)] = run_lib.plan(_load(**overrides), TOY_KINDS)
  ref = kind.run(cfg, str(tmp_path / "ref"), {})
  got = json.loads((tmp_path / "killed" / "results.json").read_text())
  assert got["metrics"] == ref["metrics"]
  losses = lambda d: [(l["step"], l.get("train/loss"), l.get("eval/loss"))
                      for l in metrics_lib.read_jsonl(str(tmp_path / d / "metrics.jsonl"))]
  assert losses("killed") == losses("ref")


def test_chain_seed_reseeds_every_stage():
  # quickstart's stages hold literal seeds (no references to a top-level key, unlike tests/toy_config.py:staged).
  quick = config_lib.load_config(f"{REPO_ROOT / 'configs/quickstart.py'}:smoke")
  quick.sft.seed = 7
  seeds = {name: cfg.seed for name, _, cfg in run_lib.plan(quick) if hasattr(cfg, "seed")}
  assert seeds["sft"] == 7 and seeds["reward"] == 0  # Without a chain-level seed, each stage keeps its own.
  with quick.unlocked():
    quick.seed = 5
  seeds = {name: cfg.seed for name, _, cfg in run_lib.plan(quick) if hasattr(cfg, "seed")}
  assert len(seeds) >= 4 and set(seeds.values()) == {5}


def _quickstart():
  return config_lib.load_config(f"{REPO_ROOT / 'configs/quickstart.py'}:smoke")


def test_a_stage_reference_typo_fails_when_the_chain_is_planned():
  config = _quickstart()
  config.dpo.model.init_from = "stage:sfft"
  with pytest.raises(config_lib.ConfigError,
                     match=r"config\.dpo\.model\.init_from: 'stage:sfft' names no earlier stage \(did you mean "
                     r"'stage:sft'\?\); earlier stages: sft, reward"):
    run_lib.plan(config)
  config = _quickstart()
  config.dpo.model.init_from = "stage:ra_dpo"  # A later stage: not yet run when dpo starts.
  with pytest.raises(config_lib.ConfigError, match=r"'stage:ra_dpo' names no earlier stage"):
    run_lib.plan(config)


def test_a_reference_to_a_stage_without_that_output_fails_naming_what_it_produces():
  config = _quickstart()
  config.eval_dpo.reward_model = "stage:sft"
  with pytest.raises(config_lib.ConfigError,
                     match=r"config\.eval_dpo\.reward_model: stage 'sft' is a 'sft' stage, which produces no "
                     r"'rm_dir' \(it produces: checkpoint_dir, model_dir\); earlier stages that produce one: reward"):
    run_lib.plan(config)


def test_cli_typo_in_a_stage_reference_fails_before_any_compute(tmp_path):
  proc = subprocess.run([sys.executable, "-m", "experiments.run", "--config=configs/quickstart.py:smoke",
                         f"--workdir={tmp_path / 'w'}", "--config.dpo.model.init_from=stage:sfft"],
                        cwd=REPO_ROOT, env=_env(), capture_output=True, text=True, timeout=300)
  assert proc.returncode == 2 and "config.dpo.model.init_from: 'stage:sfft' names no earlier stage" in proc.stderr
  assert not (tmp_path / "w").exists()


def test_show_config_prints_every_key_of_every_stage_and_runs_nothing(tmp_path):
  proc = subprocess.run([sys.executable, "-m", "experiments.run", "--config=configs/quickstart.py:smoke",
                         "--show_config", "--config.dpo.loss.beta=0.25"],
                        cwd=REPO_ROOT, env=_env(), capture_output=True, text=True, timeout=300)
  assert proc.returncode == 0, proc.stderr[-2000:]
  lines = proc.stdout.splitlines()
  assert "# dpo: kind 'preference' (jaxrlhf.stages.preference.PreferenceConfig)" in lines
  assert "dpo.loss.beta = 0.25" in lines and "dpo.model.init_from = 'stage:sft'" in lines
  # Defaults the config file never sets are shown too (the expanded schema).
  assert "dpo.loss.rpo_alpha = 0.0" in lines and "reward.head.kind = 'linear'" in lines
  assert "eval_dpo.aggregation = 'mean'" in lines


@pytest.mark.slow
def test_a_second_run_on_a_held_workdir_fails_naming_the_holder_and_a_dead_holder_is_taken_over(tmp_path):
  workdir = tmp_path / "w"
  args = [f"--config={TOY}", f"--workdir={workdir}", "--config.sleep_per_step=1.0", "--config.loop.tensorboard=False"]
  first = subprocess.Popen([sys.executable, "-m", "experiments.run", f"--extra_kinds={TOY}:KINDS", *args],
                           cwd=REPO_ROOT, env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
  try:
    deadline = time.time() + 120
    lock = workdir / ".jaxrlhf.lock"
    while not (lock.exists() and f'"pid": {first.pid},' in lock.read_text()):  # Created, and its holder written.
      assert first.poll() is None and time.time() < deadline, "the first run never took the lock"
      time.sleep(0.1)
    lock_before = lock.read_bytes()
    second = _run_cli(*args)
    assert second.returncode == 3, second.stderr[-2000:]
    assert f"pid {first.pid}" in second.stderr and ".jaxrlhf.lock" in second.stderr
    # The refused run wrote nothing: it started no stage, left no error file, and the lock is still the first's.
    assert "[run] stage" not in second.stdout and first.poll() is None
    assert not (workdir / "error.txt").exists()
    assert lock.read_bytes() == lock_before
    os.kill(first.pid, signal.SIGKILL)
  finally:
    first.wait()
  third = _run_cli(f"--config={TOY}", f"--workdir={workdir}", "--config.loop.tensorboard=False")
  assert third.returncode == 0, third.stderr[-2000:]
  assert json.loads((workdir / "results.json").read_text())["status"] == "done"


def test_known_errors_print_one_line_naming_the_stage_and_keep_the_traceback_in_error_txt(tmp_path):
  workdir = tmp_path / "w"
  proc = _run_cli(f"--config={TOY}:staged", f"--workdir={workdir}", "--config.finetune.nan_at_step=2",
                  "--config.pretrain.loop.tensorboard=False", "--config.finetune.loop.tensorboard=False")
  assert proc.returncode == 1
  assert "Traceback" not in proc.stderr
  assert ("[run] stage 'finetune' failed: NonFiniteError: non-finite train metric 'loss' = nan at step 2"
          in proc.stderr)
  assert "Traceback" in (workdir / "finetune" / "error.txt").read_text()
  assert "NonFiniteError" in (workdir / "error.txt").read_text()
  fresh = _run_cli(f"--config={TOY}:staged", f"--workdir={workdir}", "--fresh",
                   "--config.pretrain.loop.tensorboard=False", "--config.finetune.loop.tensorboard=False")
  assert fresh.returncode == 0, fresh.stderr[-2000:]
  assert "[run] --fresh: cleared" in fresh.stdout and not (workdir / "error.txt").exists()
