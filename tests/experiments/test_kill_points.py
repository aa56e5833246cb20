"""Fault injection (issue 20, "kills at any point"): SIGKILL a real chain and a sweep at a fixed set of points,
re-run until done, and check that nothing was lost: the final results equal an uninterrupted run's to the bit.

The chain (tests/experiments/kill_chain_config.py) runs every built-in stage kind of a smoke chain: sft, reward,
preference (dpo), rl (grpo), best_of_n and evaluate_policy. Each process is killed at the next point of
KILL_POINTS; the last one runs to the end. A poller kills from outside (`kill -9`) at points that last long enough
to hit every time (a progress file appears and the stage has work left); tests/experiments/kill_run.py makes the
process SIGKILL itself at points that last milliseconds (while a checkpoint is being written, between finalizing a
checkpoint and writing its manifest, between the last DONE.json and results.json). A second chain
(tests/experiments/kill_paper_chain_config.py) does the same for the paper stage kinds: reward_heads mid-training,
the others (reward_eval, preference_strength, token_credit, density_ratio, logp_shift, probe, pal, value_train,
vas_decode) while each runs, and last self_rewarding while an ASYNCHRONOUS checkpoint is being written (in orbax's
background thread). Together the two chains kill every kind of jaxrlhf/stages/kinds.py (a test checks it).

Besides the named points, seeded random kill times: a point made by `_random` kills its stage at a fraction of the
stage's running window (drawn once from random.Random(RANDOM_SEED), so the set of kill points is fixed) after the
stage starts in the killed process, the window being estimated from that stage's wall time in the uninterrupted run
alongside (WINDOW_SCALE). Where
such a kill lands (the stage's checkpoints on disk, the process's last log line) is printed, and a kill that came
only after its stage had finished is reported as a warning (the rest of the test still holds).
"""

import dataclasses
import json
import os
import pathlib
import random
import signal
import subprocess
import sys
import time
import warnings
from typing import Callable

import pytest

REPO_ROOT = pathlib.Path(__file__).resolve().parents[2]
if str(REPO_ROOT) not in sys.path:
  sys.path.insert(0, str(REPO_ROOT))

from experiments import run as run_lib  # noqa: E402
from experiments import sweep as sweep_lib  # noqa: E402
from jaxrlhf import config as config_lib  # noqa: E402
from jaxrlhf.stages import kinds as kinds_lib  # noqa: E402

CHAIN = "tests/experiments/kill_chain_config.py"
KILL_RUN = "tests/experiments/kill_run.py"
TOY = "tests/toy_config.py"
SWEEP = "tests/experiments/kill_sweep_config.py"
TMP_SUFFIX = ".orbax-checkpoint-tmp"  # orbax's folder of a step being written: "<step>.orbax-checkpoint-tmp-<n>".
TIMEOUT_S = 300
RANDOM_SEED = 20  # The seeded random kill times (`_random`): fixed, so CI kills at the same set of points.
# A killed chain's stage runs several times faster than the same stage of the uninterrupted run alongside (measured:
# 3x, as it reads the programs that run compiled from the persistent compilation cache), so a random point's
# fraction applies to WINDOW_SCALE x the uninterrupted run's window: earlier, never later, than that fraction of it.
WINDOW_SCALE = 0.3
_RNG = random.Random(RANDOM_SEED)

pytestmark = pytest.mark.slow


def _env(**extra) -> dict:
  return dict(os.environ, PYTHONPATH=str(REPO_ROOT), **extra)


def _lines(path: pathlib.Path) -> int:
  return len(path.read_text().splitlines()) if path.exists() else 0


@dataclasses.dataclass(frozen=True)
class KillPoint:
  """Where one process of the chain is killed and what the kill must have left.

  Exactly one of `when` (a poller outside the process sends SIGKILL once it is true of the workdir), `inject`
  (kill_run.py's "<point>:<path relative to the workdir>"; the process SIGKILLs itself there) and `at` (a seeded
  random time: the poller kills at this fraction of `stage`'s running window after the stage starts) is set. `left`
  checks the workdir right after the kill (that the kill landed where it was meant to); `resumes` is the training
  stage the next process must resume from a checkpoint ("" if the kill left no training stage half done).
  """
  name: str
  stage: str
  when: Callable[[pathlib.Path], bool] | None = None
  inject: str = ""
  left: Callable[[pathlib.Path], None] = lambda w: None
  resumes: str = ""
  at: float | None = None


def _random(stage: str) -> KillPoint:
  """A kill at a seeded random time within `stage`'s running window: a fraction in [0.05, 0.8) of the window (not
  later, so that a re-run a little faster than the uninterrupted run is still killed inside the stage)."""
  at = round(_RNG.uniform(0.05, 0.8), 3)
  return KillPoint(f"{stage}: random, {at:.3f} of its window", stage, at=at)


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
    # best_of_n (sampling and scoring its pools) and evaluate_policy (sampling policy and base), each at a seeded
    # random time while it runs.
    _random("best_of_n"),
    _random("evaluate"),
    # Every stage is done (DONE.json written), the chain's results.json is not.
    KillPoint("results.json: before writing", "", inject="write:results.json",
              left=lambda w: _assert((w / "evaluate/DONE.json").exists() and not (w / "results.json").exists(),
                                     "expected every stage done and no results.json")),
)
STAGES = ("sft", "reward", "dpo", "grpo", "best_of_n", "evaluate")

# The paper stage kinds (tests/experiments/kill_paper_chain_config.py): reward_heads mid-training (after its
# checkpoint 2; its cached features are reused), self_rewarding while an async checkpoint is being written, and
# each other kind at a seeded random time while it runs.
PAPER_CHAIN = "tests/experiments/kill_paper_chain_config.py"
PAPER_STAGES = ("sft", "ensemble", "heads", "heads_eval", "strength", "dpo", "credit", "ratio", "shift", "probe",
                "pal", "value", "vas", "self_rewarding")


def _left_self_rewarding(w):
  """Iteration 1's step 2 (written asynchronously) finalized, its step 4 still in orbax's temporary folder."""
  checkpoints = w / "self_rewarding/iter1/checkpoints"
  assert not (w / "self_rewarding/iter1/model").exists()
  assert (checkpoints / "2/jaxrlhf_manifest.json").exists() and not (checkpoints / "4").exists()
  assert _tmp_steps(checkpoints) and _tmp_steps(checkpoints)[0].startswith("4" + TMP_SUFFIX)


PAPER_KILL_POINTS = (
    KillPoint("heads (reward_heads): after checkpoint 2", "heads",
              when=lambda w: (w / "heads/checkpoints/2/jaxrlhf_manifest.json").exists(), left=_not_done("heads"),
              resumes="heads"),
    _random("heads_eval"),  # reward_eval
    _random("strength"),  # preference_strength
    _random("credit"),  # token_credit
    _random("ratio"),  # density_ratio
    _random("shift"),  # logp_shift
    _random("probe"),
    _random("pal"),
    _random("value"),  # value_train
    _random("vas"),  # vas_decode
    # self_rewarding (async checkpoints): the final checkpoint (step 4) of its iteration is being written in orbax's
    # background thread; the re-run resumes the iteration from its async-written step 2.
    KillPoint("self_rewarding: async checkpoint 4 being written", "self_rewarding",
              inject="rename:self_rewarding/iter1/checkpoints/4", left=_left_self_rewarding,
              resumes="self_rewarding/iter1"),
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


class _RandomTime:
  """`when` of a seeded random kill point: true once `point.at` of the stage's running window has passed since the
  stage started in the killed process (its "[run] stage" line in `log`), the window being WINDOW_SCALE x the stage's
  wall time in the uninterrupted run (`ref_dir`: from the previous stage's DONE.json to its own). Also true once the
  stage has finished in the killed process (the kill then lands after it: a miss, reported)."""

  def __init__(self, point: KillPoint, work: pathlib.Path, ref_dir: pathlib.Path, log: pathlib.Path,
               stages: tuple[str, ...]):
    self.point, self.work, self.ref_dir, self.log = point, work, ref_dir, log
    self.previous = stages[stages.index(point.stage) - 1]
    self.started: float | None = None
    self.window: float | None = None

  def __call__(self) -> bool:
    stage = self.point.stage
    if (self.work / stage / "DONE.json").exists():
      return True
    if self.started is None:
      if f"[run] stage {stage!r} (" not in self.log.read_text():
        return False
      self.started = time.time()
    if self.window is None:
      done = [self.ref_dir / s / "DONE.json" for s in (self.previous, stage)]
      if not done[1].exists():
        return False  # The uninterrupted run has not finished the stage yet: its window is not known.
      self.window = WINDOW_SCALE * (done[1].stat().st_mtime_ns - done[0].stat().st_mtime_ns) / 1e9
    return time.time() >= self.started + self.point.at * self.window


def _landed(point: KillPoint, work: pathlib.Path, log: pathlib.Path, when: Callable[[], bool] | None) -> str:
  """One line: where the kill of `point` landed (for random points: the time into the stage, its checkpoints and
  model folders on disk, the process's last log line)."""
  lines = [l for l in log.read_text().splitlines() if l.strip()]
  where = f"{point.name}: last log line {lines[-1][:150]!r}" if lines else f"{point.name}: no output"
  if isinstance(when, _RandomTime):
    stage_dir = work / point.stage
    saved = sorted(str(p.relative_to(stage_dir)) for p in stage_dir.glob("**/*")
                   if p.parent.name == "checkpoints" or p.name in ("model", "value", "iteration.json", "results.json"))
    into = time.time() - when.started if when.started is not None else float("nan")
    where += f"; {into:.2f} s into the stage (window {when.window or float('nan'):.2f} s); on disk: {saved}"
  return where


def _kill_and_resume(tmp_path: pathlib.Path, chain: str, points: tuple[KillPoint, ...], stages: tuple[str, ...]
                     ) -> tuple[pathlib.Path, pathlib.Path, list[str]]:
  """Runs `chain` once uninterrupted (alongside) and once killed at every point of `points`, then to the end;
  checks every re-run took over the stale lock, skipped the finished stages and resumed the half-done one.
  Returns (reference workdir, killed workdir, the killed workdir's logs)."""
  ref_dir, work = tmp_path / "ref", tmp_path / "killed"
  args = lambda w: [f"--config={chain}", f"--workdir={w}"]  # noqa: E731
  # The uninterrupted reference runs alongside (one core each on a 2-core machine).
  ref = _start(args(ref_dir), tmp_path / "ref.log")
  logs, landed, missed = [], [], set()
  for i, point in enumerate(points):
    log = tmp_path / f"run{i}.log"
    # A random point's process runs under kill_run.py's "write:results.json" too: should the stage finish before
    # the kill time (a miss, reported), the process still dies before the chain's end.
    proc = _start(args(work), log, point.inject or ("write:results.json" if point.at is not None else ""), work)
    when = (_RandomTime(point, work, ref_dir, log, stages) if point.at is not None
            else (lambda p=point: p.when(work)) if point.when else None)
    rc = _wait(proc, log, when)
    assert rc == -signal.SIGKILL, f"{point.name}: the run was not killed (rc {rc}): {log.read_text()[-3000:]}"
    landed.append(_landed(point, work, log, when))
    if point.at is not None and (work / point.stage / "DONE.json").exists():
      missed.add(point.name)
      warnings.warn(f"random kill point {point.name!r} landed after its stage finished: {landed[-1]}")
    point.left(work)
    assert not (work / "results.json").exists()
    logs.append(log.read_text())
  print(f"\n[kill points] {chain}:\n  " + "\n  ".join(landed), flush=True)
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
    if point.stage and point.name not in missed:
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
      metrics = lambda d: json.dumps(  # noqa: E731
          _without_timings(json.loads((d / stage / "results.json").read_text())["metrics"]), sort_keys=True)
      assert metrics(work) == metrics(ref_dir), stage
  # self_rewarding was killed in orbax's background (async) checkpoint thread, not the main thread; the re-run
  # resumed its iteration from the async-written step 2, with the same training curve and weights.
  i = [p.stage for p in PAPER_KILL_POINTS].index("self_rewarding")
  assert "[kill_run] SIGKILL while renaming" in logs[i] and "(thread 'MainThread')" not in logs[i], logs[i][-2000:]
  assert _metric_lines(work, "self_rewarding/iter1") == _metric_lines(ref_dir, "self_rewarding/iter1")
  assert [l["step"] for l in _metric_lines(work, "self_rewarding/iter1")] == [2, 4]
  assert ((work / "self_rewarding/iter1/model/model.safetensors").read_bytes()
          == (ref_dir / "self_rewarding/iter1/model/model.safetensors").read_bytes())


def test_kill_chains_cover_every_stage_kind():
  """Every stage kind of jaxrlhf/stages/kinds.py runs in a kill chain, and a kill point lands in a stage of it."""
  killed = {}
  for chain, points in ((CHAIN, KILL_POINTS), (PAPER_CHAIN, PAPER_KILL_POINTS)):
    kind_of = {name: kind.name for name, kind, _ in run_lib.plan(config_lib.load_config(str(REPO_ROOT / chain)))}
    killed.update({kind_of[p.stage]: p.name for p in points if p.stage})
  assert sorted(set(kinds_lib.KINDS) - set(killed)) == []


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
