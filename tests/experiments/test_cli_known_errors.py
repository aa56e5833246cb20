"""experiments.run's report of a failed stage (issue 20, "the command line"): every known error type (config, data,
model file, checkpoint, non-finite, reward function) prints ONE line naming the stage and the error, whose message
carries the remedy, and exits 1, the traceback going to the stage's error.txt; an unknown error keeps its traceback.
(The lock error exits 3 before any stage runs: tests/experiments/test_experiments_run.py.)

In-process, with a one-stage chain whose stage raises the error: no training, milliseconds.
"""

import dataclasses
import pathlib
import sys

import ml_collections
import pytest

REPO_ROOT = pathlib.Path(__file__).resolve().parents[2]
if str(REPO_ROOT) not in sys.path:
  sys.path.insert(0, str(REPO_ROOT))

from experiments import run as run_lib  # noqa: E402
from jaxrlhf.config import ConfigError, field  # noqa: E402
from jaxrlhf.data.errors import DataFileError  # noqa: E402
from jaxrlhf.models.errors import ModelFileError  # noqa: E402
from jaxrlhf.rewards.calling import RewardFunctionError  # noqa: E402
from jaxrlhf.stages.kinds import StageKind  # noqa: E402
from jaxrlhf.train.checkpoint import CheckpointError  # noqa: E402
from jaxrlhf.train.loop import NonFiniteError  # noqa: E402

ERRORS = {
    "config": ConfigError("config.train.data.path: /no/such/file.jsonl does not exist"),
    "data": DataFileError("pairs.jsonl:3: malformed_json: Expecting value (set data.strict=False to skip such rows)"),
    "model": ModelFileError("model.safetensors", "truncated: the header says 4096 bytes, the file has 100"),
    "checkpoint": CheckpointError("no intact checkpoint in /w/train/checkpoints (step 4: sha256 mismatch); delete "
                                  "the directory or re-run with --fresh"),
    "nonfinite": NonFiniteError("non-finite train metric 'loss' = nan at step 2 (last finite checkpoint: none)"),
    "reward": RewardFunctionError("rewards[0] my_reward: returned 3 values for 4 completions"),
    "unknown": KeyError("a bug"),
}


@dataclasses.dataclass(frozen=True)
class RaiseConfig:
  error: str = field("unknown", choices=tuple(ERRORS))


def _raise(cfg: RaiseConfig, workdir: str, inputs: dict) -> dict:
  del workdir, inputs
  raise ERRORS[cfg.error]


KINDS = {"raise": StageKind("raise", RaiseConfig, _raise)}


def _config(error: str) -> ml_collections.ConfigDict:
  return ml_collections.ConfigDict({"stages": ["train"], "train": {"kind": "raise", "error": error}})


@pytest.mark.parametrize("error", [e for e in ERRORS if e != "unknown"])
def test_a_known_error_prints_one_line_naming_the_stage_and_exits_1(tmp_path, capsys, error):
  with pytest.raises(SystemExit) as exit_info:
    run_lib.run_and_report(_config(error), str(tmp_path), KINDS)
  assert exit_info.value.code == 1
  err = capsys.readouterr().err
  exception = ERRORS[error]
  assert (f"[run] stage 'train' failed: {type(exception).__name__}: {exception}\n"
          f"[run] traceback: {tmp_path / 'train' / 'error.txt'}\n") in err and "Traceback" not in err
  for path in (tmp_path / "error.txt", tmp_path / "train" / "error.txt"):
    assert "Traceback (most recent call last)" in path.read_text() and str(exception) in path.read_text()


def test_an_unknown_error_keeps_its_traceback(tmp_path, capsys):
  with pytest.raises(KeyError, match="a bug"):
    run_lib.run_and_report(_config("unknown"), str(tmp_path), KINDS)
  assert "[run] stage" not in capsys.readouterr().err
  assert "KeyError: 'a bug'" in (tmp_path / "train" / "error.txt").read_text()
