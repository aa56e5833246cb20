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


def _precheck_error(*overrides: str) -> str:
  with pytest.raises(ConfigError) as info:
    run_lib.precheck_argv(["--config", "configs/reward.py:smoke", *overrides])
  return str(info.value)


def test_an_override_inside_a_dict_valued_field_says_to_set_the_whole_dict():
  """`world` and `columns` are dicts (empty in the config), not sections: absl cannot add a key to them one at a
  time, so the error shows the whole-dict override that works, and for `world` the WorldConfig keys."""
  message = _precheck_error("--config.data.world.seed=3")
  assert message.startswith("config.data.world.seed: config.data.world is a dict-valued field whose keys cannot be "
                            "set one at a time (the config holds no keys); set the whole dict instead, e.g. "
                            "--config.data.world=\"{'seed': 3}\"; valid keys: "), message
  assert "num_prompts, " in message and ", seed, " in message
  message = _precheck_error("--config.data.columns.prompt=question")
  assert message.startswith("config.data.columns.prompt: config.data.columns is a dict-valued field"), message
  assert message.endswith("e.g. --config.data.columns=\"{'prompt': 'question'}\""), message
  assert _precheck_error("--config.data.world.sed=3").startswith(
      "config.data.world.sed: unknown key (did you mean 'seed'?); valid keys of the dict config.data.world: ")
  # A section keeps its own message.
  assert _precheck_error("--config.data.max_lenght=3").startswith(
      "config.data.max_lenght: unknown key (did you mean 'max_length'?); valid keys in config.data: ")


def test_the_whole_dict_override_the_message_suggests_is_what_absl_reads():
  from absl import flags  # pylint: disable=g-import-not-at-top
  from ml_collections import config_flags  # pylint: disable=g-import-not-at-top
  argv = ["prog", "--config", "configs/reward.py:smoke", "--config.data.world={'seed': 3}",
          "--config.data.columns={'prompt': 'question'}"]
  run_lib.precheck_argv(argv[1:])
  flag_values = flags.FlagValues()
  config_flags.DEFINE_config_file("config", None, "", flag_values=flag_values, lock_config=True, sys_argv=argv)
  flag_values(argv)
  stages = run_lib.plan(flag_values.config)
  assert stages[0].config.data.world == {"seed": 3} and stages[0].config.data.columns == {"prompt": "question"}
