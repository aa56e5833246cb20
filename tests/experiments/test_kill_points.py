"""Fault injection (issue 20, "kills at any point"): SIGKILL a real chain and a sweep at a fixed set of points,
re-run until done, and check that nothing was lost: the final results equal an uninterrupted run's to the bit.

The chain (tests/experiments/kill_chain_config.py) runs every built-in stage kind of a smoke chain: sft, reward,
preference (dpo), rl (grpo), best_of_n and evaluate_policy. Each process is killed at the next point of
KILL_POINTS; the last one runs to the end. A poller kills from outside (`kill -9`) at points that last long enough
to hit every time (a progress file appears and the stage has work left); tests/experiments/kill_run.py makes the
process SIGKILL itself at points that last milliseconds (while a checkpoint is being written, between finalizing a
checkpoint and writing its manifest, between the last DONE.json and results.json). A second chain
(tests/experiments/kill_paper_chain_config.py) does the same for the paper stage kinds: reward_heads mid-training,
then reward_eval, preference_strength, token_credit, density_ratio and logp_shift while each runs.
"""

import dataclasses
import json
import os
import pathlib
import signal
import subprocess
import sys
import time
from typing import Callable

import pytest

REPO_ROOT = pathlib.Path(__file__).resolve().parents[2]
if str(REPO_ROOT) not in sys.path:
  sys.path.insert(0, str(REPO_ROOT))

from experiments import sweep as sweep_lib  # noqa: E402
CHAIN = "tests/experiments/kill_chain_config.py"
KILL_RUN = "tests/experiments/kill_run.py"
TOY = "tests/toy_config.py"
SWEEP = "tests/experiments/kill_sweep_config.py"
TMP_SUFFIX = ".orbax-checkpoint-tmp"  # orbax's folder of a step being written: "<step>.orbax-checkpoint-tmp-<n>".
TIMEOUT_S = 300

pytestmark = pytest.mark.slow


def _env(**extra) -> dict:
  return dict(os.environ, PYTHONPATH=str(REPO_ROOT), **extra)


def _lines(path: pathlib.Path) -> int:
  return len(path.read_text().splitlines()) if path.exists() else 0


@dataclasses.dataclass(frozen=True)
class KillPoint:
  """Where one process of the chain is killed and what the kill must have left.

  Exactly one of `when` (a poller outside the process sends SIGKILL once it is true of the workdir) and `inject`
  (kill_run.py's "<point>:<path relative to the workdir>"; the process SIGKILLs itself there) is set. `left` checks
  the workdir right after the kill (that the kill landed where it was meant to); `resumes` is the training stage the
  next process must resume from a checkpoint ("" if the kill left no training stage half done).
  """
  name: str
  stage: str
  when: Callable[[pathlib.Path], bool] | None = None
  inject: str = ""
  left: Callable[[pathlib.Path], None] = lambda w: None
  resumes: str = ""


def _tmp_steps(checkpoints: pathlib.Path) -> list[str]:
  return sorted(p.name for p in checkpoints.iterdir() if TMP_SUFFIX in p.name) if checkpoints.exists() else []


def _left_sft(w):
  assert _tmp_steps(w / "sft/checkpoints") and _tmp_steps(w / "sft/checkpoints")[0].startswith("4" + TMP_SUFFIX)
  assert (w / "sft/checkpoints/2/jaxrlhf_manifest.json").exists() and not (w / "sft/checkpoints/4").exists()


def _left_dpo(w):
  assert (w / "dpo/checkpoints/2/state").is_dir() and not (w / "dpo/checkpoints/2/jaxrlhf_manifest.json").exists()


def _not_done(stage):
  return lambda w: _assert(not (w / stage / "DONE.json").exists(), f"{stage} finished before the kill")


def _assert(cond, message):
  assert cond, message


KILL_POINTS = (
    # While sft's final checkpoint (step 4) is being written: every file is in its temporary folder, not yet renamed.
    KillPoint("sft: writing checkpoint 4", "sft", inject="rename:sft/checkpoints/4", left=_left_sft, resumes="sft"),
    # Mid-training: reward's first checkpoint is complete, steps 3-4, the final checkpoint and the model are not.
    KillPoint("reward: after checkpoint 2", "reward",
              when=lambda w: (w / "reward/checkpoints/2/jaxrlhf_manifest.json").exists(), left=_not_done("reward"),
              resumes="reward"),
    # dpo's checkpoint 2 is finalized (renamed into place) but its integrity manifest is not written yet.
    KillPoint("dpo: checkpoint 2 without manifest", "dpo", inject="manifest:dpo/checkpoints/2", left=_left_dpo,
              resumes="dpo"),
    # rl: its first metrics line (step 2) is logged and its first checkpoint complete; steps 3-4 are not done.
    KillPoint("grpo: after metrics line 1 and checkpoint 2", "grpo",
              when=lambda w: _lines(w / "grpo/metrics.jsonl") >= 1
              and (w / "grpo/checkpoints/2/jaxrlhf_manifest.json").exists(), left=_not_done("grpo"), resumes="grpo"),
    # Between stages: grpo's DONE.json is written, best_of_n (sampling its pools) is not done.
    KillPoint("best_of_n: started", "best_of_n", when=lambda w: (w / "grpo/DONE.json").exists(),
              left=_not_done("best_of_n")),
    # evaluate_policy: best_of_n is done, the evaluation (sampling policy and base) is not.
    KillPoint("evaluate: started", "evaluate", when=lambda w: (w / "best_of_n/DONE.json").exists(),
              left=_not_done("evaluate")),
    # Every stage is done (DONE.json written), the chain's results.json is not.
    KillPoint("results.json: before writing", "", inject="write:results.json",
              left=lambda w: _assert((w / "evaluate/DONE.json").exists() and not (w / "results.json").exists(),
                                     "expected every stage done and no results.json")),
)
STAGES = ("sft", "reward", "dpo", "grpo", "best_of_n", "evaluate")

# The paper stage kinds (tests/experiments/kill_paper_chain_config.py): reward_heads mid-training (after its
# checkpoint 2; its cached features are reused), then each evaluation-only kind while it runs.
PAPER_CHAIN = "tests/experiments/kill_paper_chain_config.py"
PAPER_STAGES = ("sft", "ensemble", "heads", "heads_eval", "strength", "dpo", "credit", "ratio", "shift")


def _started(stage: str, previous: str) -> KillPoint:
  """Kill while `stage` (an evaluation-only kind) runs: `previous` is done, `stage` is not."""
  return KillPoint(f"{stage}: started", stage, when=lambda w: (w / previous / "DONE.json").exists(),
                   left=_not_done(stage))


PAPER_KILL_POINTS = (
    KillPoint("heads (reward_heads): after checkpoint 2", "heads",
              when=lambda w: (w / "heads/checkpoints/2/jaxrlhf_manifest.json").exists(), left=_not_done("heads"),
              resumes="heads"),
    _started("heads_eval", "heads"),  # reward_eval
    _started("strength", "heads_eval"),  # preference_strength
    _started("credit", "dpo"),  # token_credit
    _started("ratio", "credit"),  # density_ratio
    _started("shift", "ratio"),  # logp_shift
)


def _start(args: list[str], log: pathlib.Path, inject: str = "", workdir: pathlib.Path | None = None
           ) -> subprocess.Popen:
  """`experiments.run <args>`, or kill_run.py with the kill point `inject` (its path relative to `workdir`)."""
  if inject:
    point, _, relative = inject.partition(":")
    command, env = [sys.executable, KILL_RUN], _env(JAXRLHF_KILL_AT=f"{point}:{workdir / relative}")
  else:
    command, env = [sys.executable, "-m", "experiments.run"], _env()
  with open(log, "w") as stream:
    return subprocess.Popen([*command, *args], cwd=REPO_ROOT, env=env, stdout=stream, stderr=subprocess.STDOUT)


def _wait(proc: subprocess.Popen, log: pathlib.Path, when: Callable[[], bool] | None = None) -> int:
  """Waits for `proc` to exit, SIGKILLing it as soon as `when()` holds; its return code."""
  deadline = time.time() + TIMEOUT_S
  try:
    while proc.poll() is None:
      if when is not None and when():
        os.kill(proc.pid, signal.SIGKILL)
        break
      assert time.time() < deadline, f"timed out: {log.read_text()[-3000:]}"
      time.sleep(0.01)
  finally:
    if proc.poll() is None and when is None:
      proc.kill()
    proc.wait()
  return proc.returncode


def _metric_lines(workdir: pathlib.Path, stage: str) -> list[dict]:
  """A stage's metrics.jsonl without its wall-clock throughput (perf/*)."""
  path = workdir / stage / "metrics.jsonl"
  return [{k: v for k, v in json.loads(l).items() if not k.startswith("perf/")}
          for l in path.read_text().splitlines()] if path.exists() else []


def _results(workdir: pathlib.Path) -> dict:
  return json.loads((workdir / "results.json").read_text().replace(str(workdir), "<workdir>"))


def _kill_and_resume(tmp_path: pathlib.Path, chain: str, points: tuple[KillPoint, ...], stages: tuple[str, ...]
                     ) -> tuple[pathlib.Path, pathlib.Path, list[str]]:
  """Runs `chain` once uninterrupted (alongside) and once killed at every point of `points`, then to the end;
  checks every re-run took over the stale lock, skipped the finished stages and resumed the half-done one.
  Returns (reference workdir, killed workdir, the killed workdir's logs)."""
  ref_dir, work = tmp_path / "ref", tmp_path / "killed"
  args = lambda w: [f"--config={chain}", f"--workdir={w}"]  # noqa: E731
  # The uninterrupted reference runs alongside (one core each on a 2-core machine).
  ref = _start(args(ref_dir), tmp_path / "ref.log")
  logs = []
  for i, point in enumerate(points):
    log = tmp_path / f"run{i}.log"
    proc = _start(args(work), log, point.inject, work)
    rc = _wait(proc, log, (lambda p=point: p.when(work)) if point.when else None)
    assert rc == -signal.SIGKILL, f"{point.name}: the run was not killed (rc {rc}): {log.read_text()[-3000:]}"
    point.left(work)
    assert not (work / "results.json").exists()
    logs.append(log.read_text())
  log = tmp_path / "final.log"
  rc = _wait(_start(args(work), log), log)
  assert rc == 0, log.read_text()[-3000:]
  logs.append(log.read_text())
  assert _wait(ref, tmp_path / "ref.log") == 0, (tmp_path / "ref.log").read_text()[-3000:]

  # Every re-run took over the killed process's lock, skipped the finished stages and resumed the half-done one.
  for i, point in enumerate(points):
    rerun = logs[i + 1]
    assert f"[lock] taking over the stale lock {work / '.jaxrlhf.lock'}" in rerun, (point.name, rerun[-2000:])
    done_before = stages[:stages.index(point.stage)] if point.stage else stages
    for stage in done_before:
      assert f"[run] stage {stage!r} already finished; skipping" in rerun, (point.name, stage)
    if point.stage:
      assert f"[run] stage {point.stage!r} already finished" not in rerun
    if point.resumes:  # From step 2 (a poller that lags may kill after checkpoint 4: then from step 4).
      resumed = [l for l in rerun.splitlines() if l.startswith("[train] resuming from step ")]
      assert len(resumed) == 1 and resumed[0].endswith(f"({work / point.resumes / 'checkpoints'})"), rerun
      if point.inject:
        assert resumed[0].startswith("[train] resuming from step 2 ")
  return ref_dir, work, logs


def test_chain_killed_at_every_stage_kind_resumes_to_identical_results(tmp_path):
  ref_dir, work, _ = _kill_and_resume(tmp_path, CHAIN, KILL_POINTS, STAGES)
  assert not _tmp_steps(work / "sft/checkpoints")  # The half-written checkpoint's temporary folder is removed.

  # Nothing was lost: the same results, to the last bit, and the same training curves, line by line.
  assert _results(work) == _results(ref_dir)
  for stage in ("sft", "reward", "dpo", "grpo"):
    assert _metric_lines(work, stage) == _metric_lines(ref_dir, stage), stage
    assert [l["step"] for l in _metric_lines(work, stage)] == [2, 4, 4]  # Train at 2 and 4, eval at 4: each once.
  assert (work / "grpo/model/model.safetensors").read_bytes() == (ref_dir / "grpo/model/model.safetensors").read_bytes()


def _without_timings(x):
  """`x` without wall-clock entries (time/*, *seconds) and the feature cache's `reused` flag, for comparison."""
  if isinstance(x, dict):
    return {k: _without_timings(v) for k, v in x.items()
            if not (k.startswith("time/") or k.endswith("seconds") or k.endswith("_s") or k == "reused")}
  return x


def test_paper_stage_kinds_killed_resume_to_identical_results(tmp_path):
  ref_dir, work, logs = _kill_and_resume(tmp_path, PAPER_CHAIN, PAPER_KILL_POINTS, PAPER_STAGES)
  # reward_heads resumed its head training from the cached features, not a new feature pass.
  assert "[reward_heads] reusing the features cached in" in logs[1], logs[1][-2000:]
  # Nothing was lost: the same results to the last bit (every paper kind's metrics; NaN compares equal through
  # JSON) and the same head training; only wall-clock timings differ.
  killed, ref = _results(work), _results(ref_dir)
  assert killed["stages"]["heads"]["data_report"]["features"]["reused"] is True
  assert json.dumps(_without_timings(killed), sort_keys=True) == json.dumps(_without_timings(ref), sort_keys=True)
  assert _metric_lines(work, "heads") == _metric_lines(ref_dir, "heads")
  for stage in PAPER_STAGES[3:]:
    if (ref_dir / stage / "results.json").exists():
      assert json.loads((work / stage / "results.json").read_text())["metrics"] == json.loads(
          (ref_dir / stage / "results.json").read_text())["metrics"], stage


def _start_sweep(workdir: pathlib.Path, log: pathlib.Path) -> subprocess.Popen:
  """experiments.sweep in its own process group (session), so one killpg reaches the sweep and its worker."""
  with open(log, "w") as stream:
    return subprocess.Popen([sys.executable, "-m", "experiments.sweep", f"--config={SWEEP}", f"--workdir={workdir}",
                             f"--extra_kinds={TOY}:KINDS"], cwd=REPO_ROOT, env=_env(), stdout=stream,
                            stderr=subprocess.STDOUT, start_new_session=True)


def _sweep_run_names() -> list[str]:
  return [sweep_lib.run_name(o) for o in sweep_lib.collect(str(REPO_ROOT / SWEEP))]


def test_sweep_killed_while_its_second_run_trains_completes_only_what_is_missing(tmp_path):
  ref_dir, work = tmp_path / "ref", tmp_path / "killed"
  first, second = _sweep_run_names()
  ref = _start_sweep(ref_dir, tmp_path / "ref.log")
  proc = _start_sweep(work, tmp_path / "killed.log")
  # The first run is done (status.json written) and the second has checkpointed step 4 of 12.
  when = lambda: ((work / first / "status.json").exists()  # noqa: E731
                  and (work / second / "checkpoints/4/jaxrlhf_manifest.json").exists())
  deadline = time.time() + TIMEOUT_S
  try:
    while proc.poll() is None and not when():
      assert time.time() < deadline, (tmp_path / "killed.log").read_text()[-3000:]
      time.sleep(0.01)
    os.killpg(proc.pid, signal.SIGKILL)  # The sweep and its worker (experiments.run of the second run).
  finally:
    proc.wait()
  assert proc.returncode == -signal.SIGKILL, (tmp_path / "killed.log").read_text()[-3000:]
  assert not (work / second / "status.json").exists() and not (work / second / "results.json").exists()
  assert (work / second / ".jaxrlhf.lock").exists()  # Left by the killed worker.
  kept = {name: (work / first / name).stat().st_mtime_ns for name in ("status.json", "results.json", "log.txt")}

  rerun = subprocess.run([sys.executable, "-m", "experiments.sweep", f"--config={SWEEP}", f"--workdir={work}",
                          f"--extra_kinds={TOY}:KINDS"], cwd=REPO_ROOT, env=_env(), capture_output=True, text=True,
                         timeout=TIMEOUT_S)
  assert rerun.returncode == 0, rerun.stdout[-3000:] + rerun.stderr[-3000:]
  assert _wait(ref, tmp_path / "ref.log") == 0, (tmp_path / "ref.log").read_text()[-3000:]
  # Only what was missing ran again: the first run was skipped (its files untouched), the second resumed.
  assert f"[sweep] {first}: already done; skipping" in rerun.stdout
  assert f"[sweep] {second}: done" in rerun.stdout and "2/2 runs done" in rerun.stdout
  assert {name: (work / first / name).stat().st_mtime_ns for name in kept} == kept
  log = (work / second / "log.txt").read_text()
  assert f"[lock] taking over the stale lock {work / second / '.jaxrlhf.lock'}" in log, log[-2000:]
  assert "[train] resuming from step " in log, log[-2000:]
  # The same results as the uninterrupted sweep, to the bit.
  for name in (first, second):
    assert _results(work / name)["metrics"] == _results(ref_dir / name)["metrics"], name
    assert _metric_lines(work, name) == _metric_lines(ref_dir, name), name
  runs = lambda d: json.loads((d / "sweep.json").read_text())["runs"]  # noqa: E731
  assert [(r["name"], r["status"]) for r in runs(work)] == [(first, "done"), (second, "done")]
  assert runs(work) == runs(ref_dir)
