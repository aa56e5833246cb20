"""Checkpoints resumed under a changed config: intact steps of another train-state layout (model shape, optimizer)
are reported as a config change naming what differs, not as damaged, and left in place; a change that keeps the
layout (a run_config setting, a dtype orbax casts) resumes with a warning naming it."""

import json
import os
import re

import jax.numpy as jnp
import optax
import pytest
from flax import nnx
from regression_data import RegressionBatches, squared_error_loss

from jaxrlhf.train import checkpoint as checkpoint_lib
from jaxrlhf.train import loop as loop_lib
from jaxrlhf.train import state as state_lib

CheckpointError = checkpoint_lib.CheckpointError
# Orbax abandons a failed read's other in-flight reads (their coroutines never awaited, their callbacks reported as
# unraisable): its noise, not a failure of these tests.
pytestmark = [pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning"),
              pytest.mark.filterwarnings("ignore:coroutine .* was never awaited:RuntimeWarning")]


class _MLP(nnx.Module):

  def __init__(self, hidden, rngs, dtype=jnp.float32):
    self.l1 = nnx.Linear(8, hidden, param_dtype=dtype, rngs=rngs)
    self.l2 = nnx.Linear(hidden, 1, param_dtype=dtype, rngs=rngs)

  def __call__(self, x_BxD):
    return self.l2(jnp.tanh(self.l1(x_BxD)))[:, 0]


def _setup(hidden=16, optimizer=None, dtype=jnp.float32):
  return state_lib.init_train_state(lambda key: _MLP(hidden, nnx.Rngs(key), dtype), optimizer or optax.adam(1e-2),
                                    seed=0)


def _write_steps(directory, setup, run_config=None):
  """Steps 1 and 2 of `setup`'s initial state, written synchronously."""
  ckpt = checkpoint_lib.Checkpointer(str(directory), max_to_keep=3, async_save=False, run_config=run_config)
  for step in (1, 2):
    ckpt.save(step, setup.init(), data_state={"index": step})
  ckpt.close()


@pytest.mark.parametrize("changed, expected", [
    # The hidden width: every l1/l2 array and its Adam moments change shape.
    (lambda: _setup(hidden=32),
     r"train state: \.params\['l1'\]\['bias'\]\.value: float32\[16\] -> float32\[32\]; .*and \d+ more changed"),
    # Adam -> SGD: Adam's count and moments are gone from the optimizer state.
    (lambda: _setup(optimizer=optax.sgd(1e-2)),
     r"train state: 9 gone, e.g. \.opt_state\[0\]\.count \(int32\[\]\)"),
    # Adam -> clip + Adam: the same arrays under another tree path.
    (lambda: _setup(optimizer=optax.chain(optax.clip_by_global_norm(1.0), optax.adam(1e-2))),
     r"9 gone, e.g. \.opt_state\[0\]\.count \(int32\[\]\); 9 new, e.g. \.opt_state\[1\]\[0\]\.count \(int32\[\]\)"),
])
def test_changed_layout_is_reported_as_a_config_change(tmp_path, changed, expected):
  _write_steps(tmp_path, _setup())
  ckpt = checkpoint_lib.Checkpointer(str(tmp_path), max_to_keep=3, async_save=False)
  abstract = changed().abstract
  with pytest.raises(CheckpointError) as e:
    ckpt.restore_newest_intact(abstract)
  msg = str(e.value)
  assert msg.startswith(f"the stage's config changed since the checkpoints in {tmp_path} were written (")
  assert "Re-run with the config they were written with" in msg and "is intact" not in msg
  assert "step 2: restoring it failed" in msg and "step 1: restoring it failed" in msg
  assert re.search(expected, msg), msg
  with pytest.raises(CheckpointError, match=r"checkpoint step 2 .* was written for another train state than this "
                                            r"run's \(train state: "):
    ckpt.restore(abstract, 2)
  assert sorted(os.listdir(tmp_path)) == ["1", "2"]  # Intact steps of another config are not moved aside.
  ckpt.close()


def test_record_is_written_with_each_step_and_covered_by_the_manifest(tmp_path):
  setup = _setup()
  _write_steps(tmp_path, setup, run_config={"optimizer": {"lr": 0.01}, "betas": (0.9, 0.99)})
  for step in (1, 2):
    record = json.loads((tmp_path / str(step) / checkpoint_lib.RUN_RECORD_NAME).read_text())
    assert record["run_config"] == {"optimizer": {"lr": 0.01}, "betas": [0.9, 0.99]}
    assert record["layout"][".params['l1']['kernel'].value"] == "float32[8, 16]"
    assert record["layout"][".opt_state[0].mu['l2']['bias'].value"] == "float32[1]"
    assert record["layout"][".rng"] == "uint32[2]" and len(record["layout"]) == 15
    manifest = json.loads((tmp_path / str(step) / checkpoint_lib.MANIFEST_NAME).read_text())
    assert checkpoint_lib.RUN_RECORD_NAME in manifest["files"]


def test_same_layout_other_run_config_resumes_with_a_warning(tmp_path, capsys):
  setup = _setup()
  _write_steps(tmp_path, setup, run_config={"optimizer": {"lr": 0.01}, "seed": 0})
  ckpt = checkpoint_lib.Checkpointer(str(tmp_path), async_save=False,
                                     run_config={"optimizer": {"lr": 0.001}, "seed": 0})
  step, _, data_state = ckpt.restore_newest_intact(setup.abstract)
  assert (step, data_state) == (2, {"index": 2})
  [line] = [l for l in capsys.readouterr().out.splitlines() if "WARNING" in l]
  assert "the stage's config changed since checkpoint step 2 was written (run_config: optimizer.lr: 0.01 -> " \
         "0.001); resuming from it with this run's config" in line
  ckpt.close()
  # The same config: no warning.
  ckpt = checkpoint_lib.Checkpointer(str(tmp_path), async_save=False,
                                     run_config={"optimizer": {"lr": 0.01}, "seed": 0})
  assert ckpt.restore_newest_intact(setup.abstract)[0] == 2
  assert "WARNING" not in capsys.readouterr().out
  ckpt.close()


def test_cast_dtype_resumes_with_a_warning(tmp_path, capsys):
  """Orbax casts a float32 checkpoint into a bfloat16 target: it resumes, and says the layout changed."""
  _write_steps(tmp_path, _setup())
  ckpt = checkpoint_lib.Checkpointer(str(tmp_path), async_save=False)
  step, state, _ = ckpt.restore_newest_intact(_setup(dtype=jnp.bfloat16).abstract)
  assert step == 2 and state.params["l1"]["kernel"][...].dtype == jnp.bfloat16
  out = capsys.readouterr().out
  assert "(train state: .params['l1']['bias'].value: float32[16] -> bfloat16[16];" in out
  ckpt.close()


def test_steps_without_a_record_keep_the_damaged_message(tmp_path):
  """Steps written before run records existed: nothing to compare, so the message stays the integrity one."""
  _write_steps(tmp_path, _setup())
  for step in (1, 2):
    os.remove(tmp_path / str(step) / checkpoint_lib.RUN_RECORD_NAME)
    os.remove(tmp_path / str(step) / checkpoint_lib.MANIFEST_NAME)  # its listing names the record
  ckpt = checkpoint_lib.Checkpointer(str(tmp_path), async_save=False)
  with pytest.raises(CheckpointError, match=r"no checkpoint in .* is intact and restorable"):
    ckpt.restore_newest_intact(_setup(hidden=32).abstract)
  ckpt.close()


def test_loop_records_run_config_and_names_a_changed_model(tmp_path, capsys):
  def train(num_steps, hidden, lr):
    optimizer = optax.adam(lr)
    setup = _setup(hidden, optimizer)
    config = loop_lib.LoopConfig(num_steps=num_steps, log_every=2, checkpoint_every=2, progress=False,
                                 tensorboard=False)
    return loop_lib.train(config=config, workdir=str(tmp_path), setup=setup, data_iter=RegressionBatches(),
                          step_fn=state_lib.make_train_step(setup.graphdef, squared_error_loss, optimizer),
                          run_config={"hidden": hidden, "lr": lr})

  train(2, 16, 0.01)
  assert train(4, 16, 0.001)["step"] == 4
  assert "(run_config: lr: 0.01 -> 0.001); resuming from it" in capsys.readouterr().out
  with pytest.raises(CheckpointError, match=r"the stage's config changed since the checkpoints in .*checkpoints "
                                            r"were written \(train state: \.params\['l1'\]\['bias'\]\.value: "
                                            r"float32\[16\] -> float32\[8\]"):
    train(6, 8, 0.001)
