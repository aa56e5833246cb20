"""TEST FIXTURE config (not an experiment): a two-run sweep of tests/toy_config.py's toy stage for the sweep
kill test (tests/experiments/test_kill_points.py). Each update sleeps 0.1 s, so a run lasts long enough (12
updates, checkpoints at 4, 8 and 12) for the test to kill the sweep while its second run trains.

    python -m experiments.sweep --config tests/experiments/kill_sweep_config.py --workdir DIR \
        --extra_kinds tests/toy_config.py:KINDS
"""

import pathlib

from jaxrlhf import config as config_lib

_TOY = config_lib.load_config_module(str(pathlib.Path(__file__).resolve().parents[1] / "toy_config.py"))


def get_config(arg=None):
  del arg
  config = _TOY.get_config("smoke")
  config.sleep_per_step = 0.1
  config.loop.tensorboard = False
  return config


def sweep(add):
  for lr in (0.01, 0.03):
    add(**{"optimizer.learning_rate": lr})
