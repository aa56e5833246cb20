"""TEST HELPER (not a test): `experiments.run` that SIGKILLs itself at one exact point, for the kill points a
poller outside the process cannot hit reliably (windows of milliseconds).

    JAXRLHF_KILL_AT=<point>:<absolute path> python tests/experiments/kill_run.py <experiments.run flags>

Points (the process sends itself SIGKILL, so it dies as under `kill -9`, with no cleanup of any kind):
  rename:<step dir>    orbax has written every file of checkpoint <step dir> into its temporary folder and is about
                       to rename it into place: the kill lands while that checkpoint is being written (for an
                       asynchronous save, in orbax's background thread; the line printed first names the thread).
  manifest:<step dir>  orbax has finalized <step dir> (renamed into place) and jaxrlhf is about to write its
                       integrity manifest (docs/reliability.md: a step without a manifest is checked by restoring).
  write:<json file>    experiments.run is about to write <json file> (e.g. the chain's results.json, after the
                       last stage's DONE.json).
"""

import os
import pathlib
import signal
import sys
import threading

REPO_ROOT = pathlib.Path(__file__).resolve().parents[2]
if str(REPO_ROOT) not in sys.path:
  sys.path.insert(0, str(REPO_ROOT))

from orbax.checkpoint._src.path import atomicity  # noqa: E402

from experiments import run as run_lib  # noqa: E402
from jaxrlhf.train import checkpoint as checkpoint_lib  # noqa: E402

POINTS = ("rename", "manifest", "write")


def _die() -> None:
  sys.stdout.flush()
  os.kill(os.getpid(), signal.SIGKILL)


def install(spec: str) -> None:
  """Patches the code path of `spec` ("<point>:<absolute path>") to SIGKILL this process when it reaches the path."""
  point, _, target = spec.partition(":")
  if point not in POINTS or not os.path.isabs(target):
    raise ValueError(f"JAXRLHF_KILL_AT: expected <point>:<absolute path> with point in {POINTS}, got {spec!r}")
  target = os.path.normpath(target)
  if point == "rename":
    for cls in (atomicity.AtomicRenameTemporaryPath, atomicity.CommitFileTemporaryPath):
      original = cls.finalize

      async def finalize(self, *args, _original=original, **kwargs):
        if os.path.normpath(os.fspath(self.get_final())) == target:
          print(f"[kill_run] SIGKILL while renaming {target} into place (thread "
                f"{threading.current_thread().name!r})", flush=True)
          _die()
        return await _original(self, *args, **kwargs)

      cls.finalize = finalize
  elif point == "manifest":
    original_manifest = checkpoint_lib.write_manifest

    def write_manifest(step_dir):
      if os.path.normpath(step_dir) == target:
        _die()
      return original_manifest(step_dir)

    checkpoint_lib.write_manifest = write_manifest  # The manager looks it up in the module at each step.
  else:
    original_write = run_lib._write_json  # pylint: disable=protected-access

    def write_json(path, obj):
      if os.path.normpath(path) == target:
        _die()
      return original_write(path, obj)

    run_lib._write_json = write_json  # pylint: disable=protected-access


if __name__ == "__main__":
  if os.environ.get("JAXRLHF_KILL_AT"):
    install(os.environ["JAXRLHF_KILL_AT"])
  run_lib.cli()
