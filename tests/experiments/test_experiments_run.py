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
