"""The loop's cadence and guards on a run whose length is not a multiple of the cadences: the final step is always
logged, evaluated and checkpointed; eval_every=0 evaluates at the end only; keep/best settings reach the
checkpointer; throughput counts each window's own tokens; NaN/inf in any train metric, an eval metric or the train
state stops the run before it is saved; a fresh run drops an old metrics.jsonl."""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from regression_data import RegressionBatches, ScalarLinear, squared_error_loss

from jaxrlhf.train import checkpoint as checkpoint_lib
from jaxrlhf.train import loop as loop_lib
from jaxrlhf.train import metrics as metrics_lib
from jaxrlhf.train import optim
from jaxrlhf.train import state as state_lib


def _tokens_loss(model, batch, rng):
  total, weight, _ = squared_error_loss(model, batch, rng)
  return total, weight, {"tokens": metrics_lib.Sum(jnp.asarray(16.0))}


def _train(workdir, *, loss_fn=squared_error_loss, data_iter=None, eval_fn=None, wrap=None, lr=0.05, **loop):
  opt = optim.make_optimizer(optim.OptimizerConfig(name="sgd", learning_rate=lr))
  setup = state_lib.init_train_state(lambda key: ScalarLinear(8, nnx.Rngs(key)), opt, seed=0)
  step = state_lib.make_train_step(setup.graphdef, loss_fn, opt)
  if wrap is not None:
    step = wrap(step)
  config = loop_lib.LoopConfig(**{"progress": False, "tensorboard": False, "async_checkpoints": False, **loop})
  return loop_lib.train(config=config, workdir=str(workdir), setup=setup, step_fn=step, eval_fn=eval_fn,
                        data_iter=data_iter or RegressionBatches())


def _lines(workdir):
  return metrics_lib.read_jsonl(os.path.join(workdir, "metrics.jsonl"))


def _steps(workdir):
  ckpt = checkpoint_lib.Checkpointer(os.path.join(workdir, "checkpoints"))
  steps = ckpt.all_steps()
  ckpt.close()
  return steps


def test_final_step_is_logged_evaluated_and_checkpointed(tmp_path):
  """num_steps=5 with every cadence 2: logs at 2, 4 and 5; eval_every=0 evaluates once, at 5; keep_checkpoints=2
  keeps 4 and 5; eval keys get one "eval/" prefix."""
  evaluated = []

  def eval_fn(state):
    evaluated.append(int(state.step))
    return {"eval/acc": 1.0, "loss": 2.0}

  out = _train(tmp_path, eval_fn=eval_fn, num_steps=5, log_every=2, checkpoint_every=2, eval_every=0,
               keep_checkpoints=2)
  lines = _lines(tmp_path)
  assert [l["step"] for l in lines if "train/loss" in l] == [2, 4, 5]
  assert [l for l in lines if "eval/loss" in l] == [{"step": 5, "eval/acc": 1.0, "eval/loss": 2.0}]
  assert evaluated == [5]
  assert _steps(tmp_path) == [4, 5]
  results = json.loads((tmp_path / "results.json").read_text())
  assert results["step"] == 5 and results["last_checkpoint_step"] == 5 and out["step"] == 5
  assert results["metrics"]["eval/acc"] == 1.0 and results["metrics"]["train/loss"] == lines[-2]["train/loss"]


def test_resume_before_the_end_stops_at_num_steps(tmp_path):
  """A run of 3 steps saves its last step (3, off the checkpoint cadence of 2); extended to 5 it resumes from 3, not
  from the cadence's 2, and reports the state's update count."""
  _train(tmp_path, num_steps=3, log_every=1, checkpoint_every=2)
  assert _steps(tmp_path) == [2, 3]
  out = _train(tmp_path, num_steps=5, log_every=1, checkpoint_every=2)
  assert out["step"] == 5 and [l["step"] for l in _lines(tmp_path)] == [1, 2, 3, 4, 5]


def test_throughput_counts_each_window_s_tokens(tmp_path):
  """tokens/s and steps/s share a window's elapsed time, so their ratio is the tokens per step (16 here), window
  after window (a window that kept earlier windows' tokens would show 32, 48, ...)."""
  _train(tmp_path, loss_fn=_tokens_loss, num_steps=6, log_every=2, checkpoint_every=6)
  lines = _lines(tmp_path)
  assert [l["train/tokens"] for l in lines] == [32.0, 32.0, 32.0]
  for l in lines:
    assert l["perf/tokens_per_sec"] / l["perf/steps_per_sec"] == pytest.approx(16.0, rel=1e-6)


def test_best_mode_max_reaches_the_checkpointer(tmp_path):
  """best_mode "max" keeps the checkpoint with the highest train/loss (the first: the loss falls) beside the latest."""
  out = _train(tmp_path, num_steps=6, log_every=2, checkpoint_every=2, keep_checkpoints=1,
               best_metric="train/loss", best_mode="max")
  losses = {l["step"]: l["train/loss"] for l in _lines(tmp_path)}
  assert losses[2] > losses[4] > losses[6]
  assert out["best_step"] == 2 and _steps(tmp_path) == [2, 6]


def test_non_finite_eval_metric_stops_before_saving(tmp_path):
  with pytest.raises(loop_lib.NonFiniteError, match=r"non-finite eval metric 'eval/loss' = nan at step 4; .*"
                                                    r"last finite checkpoint is step 2"):
    _train(tmp_path, eval_fn=lambda s: {"loss": float("nan") if int(s.step) == 4 else 1.0}, num_steps=6,
           log_every=2, checkpoint_every=2, eval_every=2)
  assert _steps(tmp_path) == [2]


class _FlaggedBatches(RegressionBatches):
  """Regression batches with a "scale" column that is 0 in the 3rd batch."""

  def __next__(self):
    batch = super().__next__()
    return {**batch, "scale": np.full((16,), 0.0 if self.index == 3 else 1.0, np.float32)}


def _ratio_loss(model, batch, rng):
  total, weight, _ = squared_error_loss(model, batch, rng)
  return total, weight, {"ratio": jnp.sum(batch["y"] ** 2) / jnp.sum(batch["scale"])}


def test_any_non_finite_train_metric_stops_the_run(tmp_path):
  """Not only the loss: a metric that is inf (here 1 / 0 in update 3) stops the run before update 3 is saved."""
  with pytest.raises(loop_lib.NonFiniteError, match=r"non-finite train metric 'ratio' = inf at step 3; .*"
                                                    r"last finite checkpoint is step 2"):
    _train(tmp_path, loss_fn=_ratio_loss, data_iter=_FlaggedBatches(), num_steps=4, log_every=1,
           checkpoint_every=1)
  assert _steps(tmp_path) == [1, 2]


def _nan_params_from_step_3(step_fn):
  """The step, except that from update 3 on its new parameters are NaN (its metrics, of the old ones, stay finite)."""

  def wrapped(state, batch):
    new, metrics = step_fn(state, batch)
    bad = new.step >= 3
    return new.replace(params=jax.tree.map(lambda p: jnp.where(bad, jnp.nan, p), new.params)), metrics

  return wrapped


def test_non_finite_state_with_finite_metrics_is_not_saved(tmp_path):
  with pytest.raises(loop_lib.NonFiniteError, match=r"non-finite state metric 'train state' = nan at step 3; .*"
                                                    r"last finite checkpoint is step 2"):
    _train(tmp_path, wrap=_nan_params_from_step_3, num_steps=3, log_every=1, checkpoint_every=1)
  assert _steps(tmp_path) == [1, 2]


def test_fresh_run_drops_an_old_metrics_file(tmp_path):
  """A workdir without checkpoints starts at step 0: the lines of an earlier run that never checkpointed go."""
  (tmp_path / "metrics.jsonl").write_text(json.dumps({"step": 7, "train/loss": 9.0}) + "\n")
  _train(tmp_path, num_steps=2, log_every=1, checkpoint_every=2)
  assert [l["step"] for l in _lines(tmp_path)] == [1, 2]
