"""The shared loop on the toy algorithm (tests/toy_config.py): sharding invariance, resume, NaN guard, outputs."""

import json
import os
import pathlib
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from regression_data import RegressionBatches, squared_error_loss

REPO_ROOT = pathlib.Path(__file__).resolve().parents[2]
if str(REPO_ROOT) not in sys.path:
  sys.path.insert(0, str(REPO_ROOT))

from experiments import run as run_lib  # noqa: E402
from jaxrlhf import config as config_lib  # noqa: E402
from jaxrlhf.train import checkpoint as checkpoint_lib  # noqa: E402
from jaxrlhf.train import loop as loop_lib  # noqa: E402
from jaxrlhf.train import metrics as metrics_lib  # noqa: E402
from jaxrlhf.train import optim  # noqa: E402
from jaxrlhf.train import state as state_lib  # noqa: E402
NonFiniteError = loop_lib.NonFiniteError

TOY = str(REPO_ROOT / "tests" / "toy_config.py")
TOY_KINDS = run_lib.load_kinds(f"{TOY}:KINDS")


def toy_stage(variant="smoke", **dotted):
  """(kind, validated ToyConfig) for the toy config with `a.b=value` overrides."""
  config = config_lib.load_config(f"{TOY}:{variant}")
  for key, value in dotted.items():
    *parents, leaf = key.split("__")
    node = config
    for p in parents:
      node = node[p]
    node[leaf] = value
  [(_, kind, cfg)] = run_lib.plan(config, TOY_KINDS)
  return kind, cfg


def train_losses(workdir):
  return [(l["step"], l["train/loss"]) for l in metrics_lib.read_jsonl(os.path.join(workdir, "metrics.jsonl"))
          if "train/loss" in l]


def test_one_and_eight_devices_give_equal_losses(tmp_path):
  kind, one = toy_stage(num_devices=1, loop__tensorboard=False, optimizer__grad_accum_steps=2)
  _, eight = toy_stage(mesh__data=2, mesh__fsdp=2, mesh__tensor=2, loop__tensorboard=False,
                       optimizer__grad_accum_steps=2)
  r1 = kind.run(one, str(tmp_path / "one"), {})
  r8 = kind.run(eight, str(tmp_path / "eight"), {})
  l1, l8 = train_losses(tmp_path / "one"), train_losses(tmp_path / "eight")
  assert [s for s, _ in l1] == [2, 4, 6, 8, 10, 12]
  np.testing.assert_allclose([v for _, v in l8], [v for _, v in l1], rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(r8["metrics"]["eval/loss"], r1["metrics"]["eval/loss"], rtol=1e-5, atol=1e-5)
  assert l1[-1][1] < 0.5 * l1[0][1]  # It learns.


def test_resume_continues_exactly(tmp_path):
  kind, full = toy_stage(loop__tensorboard=False)
  _, first = toy_stage(loop__num_steps=8, loop__tensorboard=False)
  ref = kind.run(full, str(tmp_path / "ref"), {})
  kind.run(first, str(tmp_path / "split"), {})
  # A stale line after the last checkpoint (as a killed run leaves) must be dropped on resume.
  with open(tmp_path / "split" / "metrics.jsonl", "a") as f:
    f.write(json.dumps({"step": 9, "train/loss": 123.0}) + "\n")
  resumed = kind.run(full, str(tmp_path / "split"), {})
  assert train_losses(tmp_path / "split") == train_losses(tmp_path / "ref")
  assert resumed["metrics"] == ref["metrics"]
  results = json.loads((tmp_path / "split" / "results.json").read_text())
  assert results["status"] == "done" and results["step"] == 12
  # Killed after the final checkpoint but before results.json: a re-run reports the logged metrics.
  os.remove(tmp_path / "split" / "results.json")
  again = kind.run(full, str(tmp_path / "split"), {})
  assert again["metrics"] == ref["metrics"]


def test_a_workdir_past_num_steps_is_refused_not_reported_as_done(tmp_path):
  kind, full = toy_stage(loop__tensorboard=False)
  _, shorter = toy_stage(loop__num_steps=8, loop__tensorboard=False)
  kind.run(full, str(tmp_path), {})
  os.remove(tmp_path / "results.json")
  with pytest.raises(config_lib.ConfigError, match=r"loop\.num_steps: .*newest checkpoint is step 12, past "
                     r"num_steps=8; raise num_steps to at least 12 to resume, or use a fresh workdir"):
    kind.run(shorter, str(tmp_path), {})
  assert not (tmp_path / "results.json").exists()
  kind.run(full, str(tmp_path), {})  # At num_steps it is a finished run, reported as done.
  results = json.loads((tmp_path / "results.json").read_text())
  assert results["status"] == "done" and results["step"] == 12


def test_nan_guard_stops_and_keeps_last_finite_checkpoint(tmp_path):
  kind, cfg = toy_stage("nan", loop__tensorboard=False)  # The batch of update 5 is NaN.
  with pytest.raises(NonFiniteError) as e:
    kind.run(cfg, str(tmp_path), {})
  msg = str(e.value)
  assert "'loss' = nan at step 5" in msg and "last finite checkpoint is step 4" in msg
  ckpt = checkpoint_lib.Checkpointer(str(tmp_path / "checkpoints"))
  assert ckpt.all_steps() == [4]
  ckpt.close()
  assert not (tmp_path / "results.json").exists()
  assert max(l["step"] for l in metrics_lib.read_jsonl(str(tmp_path / "metrics.jsonl"))) == 4


def test_iterator_without_state_is_rejected(tmp_path):
  with pytest.raises(ValueError, match=r"data_iter: generator lacks \['get_state', 'set_state'\]"):
    loop_lib.train(config=loop_lib.LoopConfig(), workdir=str(tmp_path), setup=None, step_fn=None,
                   data_iter=(x for x in []))


def test_outputs_eval_cadence_best_and_throughput(tmp_path):
  kind, cfg = toy_stage()
  out = kind.run(cfg, str(tmp_path), {})
  lines = metrics_lib.read_jsonl(str(tmp_path / "metrics.jsonl"))
  assert [l["step"] for l in lines if "eval/loss" in l] == [4, 8, 12]
  train = [l for l in lines if "train/loss" in l]
  assert all(l["train/tokens"] == 32.0 and l["perf/tokens_per_sec"] > 0 for l in train)
  assert all(l["perf/steps_per_sec"] > 0 for l in train)
  evals = {l["step"]: l["eval/loss"] for l in lines if "eval/loss" in l}
  results = json.loads((tmp_path / "results.json").read_text())
  assert results["best_step"] == min(evals, key=evals.get)
  assert results["metrics"]["eval/loss"] == evals[12]
  assert out["checkpoint_dir"] == str(tmp_path / "checkpoints")
  assert os.listdir(tmp_path / "tensorboard")


# ---------------------------------------------------------------------------------------------------------
# The loop with a mean that is empty in some steps, and the best-checkpoint cadence check.


class _Lin(nnx.Module):

  def __init__(self, rngs):
    self.l = nnx.Linear(8, 1, rngs=rngs)

  def __call__(self, x):
    return self.l(x)[:, 0]


class _SubsetBatches(RegressionBatches):
  """Regression batches whose rows are in a subset ("in_subset" 1) on odd updates only (1-based)."""

  def __next__(self):
    batch = super().__next__()
    return {**batch, "in_subset": np.full((16,), float(self.index % 2), np.float32)}


def _subset_loss(model, batch, rng):
  total, weight, _ = squared_error_loss(model, batch, rng)
  err = jnp.abs(model(batch["x"]) - batch["y"])
  return total, weight, {"subset_err": metrics_lib.Avg(jnp.sum(batch["in_subset"] * err), jnp.sum(batch["in_subset"]))}


def _run_subset(workdir, log_every):
  opt = optim.make_optimizer(optim.OptimizerConfig(name="sgd", learning_rate=0.05))
  setup = state_lib.init_train_state(lambda key: _Lin(nnx.Rngs(key)), opt, seed=0)
  config = loop_lib.LoopConfig(num_steps=4, log_every=log_every, checkpoint_every=4, progress=False,
                               tensorboard=False, async_checkpoints=False)
  out = loop_lib.train(config=config, workdir=str(workdir), setup=setup, data_iter=_SubsetBatches(),
                       step_fn=state_lib.make_train_step(setup.graphdef, _subset_loss, opt))
  return out, metrics_lib.read_jsonl(os.path.join(workdir, "metrics.jsonl"))


def test_a_mean_empty_in_a_step_is_not_a_non_finite_metric(tmp_path):
  """The subset mean has count 0 on even updates: it used to read as NaN and stop the run with NonFiniteError
  ("non-finite train metric 'subset_err' = nan at step 2"). It is left out of that step, and a window pools the
  steps that have it."""
  out, per_step = _run_subset(tmp_path / "every", 1)
  assert [("train/subset_err" in l) for l in per_step] == [True, False, True, False]
  assert all(np.isfinite(v) for l in per_step for v in l.values())
  _, windows = _run_subset(tmp_path / "pairs", 2)
  assert [l["train/subset_err"] for l in windows] == [per_step[0]["train/subset_err"],
                                                      per_step[2]["train/subset_err"]]
  assert out["metrics"]["train/loss"] == per_step[-1]["train/loss"]


@pytest.mark.parametrize("eval_every, checkpoint_every, ok", [(3, 4, False), (0, 4, False), (2, 4, True),
                                                               (8, 4, True)])
def test_best_eval_metric_needs_evals_at_checkpoint_steps(eval_every, checkpoint_every, ok):
  """A checkpoint is ranked by its own step's evals; with evals off the checkpoint cadence (3 vs 4) no checkpoint
  but the final one ever had the metric, so "best" was silently the last."""
  cfg = loop_lib.LoopConfig(num_steps=12, log_every=1, checkpoint_every=checkpoint_every, eval_every=eval_every,
                            best_metric="eval/loss")
  if ok:
    cfg.validate()
  else:
    with pytest.raises(config_lib.ConfigError, match=r"config.loop.best_metric: 'eval/loss' ranks checkpoints"):
      cfg.validate()
  loop_lib.LoopConfig(log_every=2, checkpoint_every=4, eval_every=3, best_metric="train/loss").validate()


class _Dropout(nnx.Module):
  """A model whose forward pass advances an nnx.Rngs stream: a typed PRNG key (key<fry>) and a counter in
  `TrainState.extra`."""

  def __init__(self, rngs):
    self.l1 = nnx.Linear(8, 16, rngs=rngs)
    self.drop = nnx.Dropout(0.3, rngs=rngs)
    self.l2 = nnx.Linear(16, 1, rngs=rngs)

  def __call__(self, x):
    return self.l2(self.drop(jnp.tanh(self.l1(x))))[:, 0]


def _run_dropout(workdir, num_steps):
  ocfg = optim.OptimizerConfig(name="adamw", learning_rate=0.05, schedule="cosine", warmup_steps=2, decay_steps=8,
                               weight_decay=0.1, clip_norm=1.0, grad_accum_steps=2)
  opt = optim.make_optimizer(ocfg)
  setup = state_lib.init_train_state(lambda key: _Dropout(nnx.Rngs(key)), opt, seed=0)
  step = state_lib.make_train_step(setup.graphdef, squared_error_loss, opt, grad_accum_steps=2,
                                   schedule=optim.make_schedule(ocfg))
  config = loop_lib.LoopConfig(num_steps=num_steps, log_every=2, checkpoint_every=2, progress=False,
                               tensorboard=False)
  loop_lib.train(config=config, workdir=str(workdir), setup=setup, step_fn=step, data_iter=RegressionBatches())
  ckpt = checkpoint_lib.Checkpointer(str(workdir / "checkpoints"))
  state, _ = ckpt.restore(setup.abstract)
  ckpt.close()
  lines = [{k: v for k, v in l.items() if not k.startswith("perf/")}
           for l in metrics_lib.read_jsonl(str(workdir / "metrics.jsonl"))]
  return state, lines


def test_resume_with_an_rng_stream_in_the_state_is_exact(tmp_path):
  """Saving a state with an nnx.Rngs stream used to fail in the checkpoint's layout record ("TypeError: Cannot
  interpret 'key<fry>' as a data type"). Resumed mid-way (dropout masks, accumulation, lr schedule, weight decay),
  the run ends bit-identical to an uninterrupted one."""
  ref_state, ref_lines = _run_dropout(tmp_path / "ref", 8)
  _run_dropout(tmp_path / "split", 4)
  state, lines = _run_dropout(tmp_path / "split", 8)
  assert lines == ref_lines and [l["step"] for l in lines] == [2, 4, 6, 8]
  raw = lambda x: np.asarray(jax.random.key_data(x) if jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key) else x)
  keys = [x for x in jax.tree.leaves(state) if jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key)]
  assert keys  # The stream is in the checkpoint.
  for a, b in zip(jax.tree.leaves(ref_state), jax.tree.leaves(state)):
    np.testing.assert_array_equal(raw(a), raw(b))
  record = json.loads((tmp_path / "split" / "checkpoints" / "8" / checkpoint_lib.RUN_RECORD_NAME).read_text())
  assert any(v.startswith("key<") for v in record["layout"].values())


def _dropout_loop(workdir, num_steps, checkpoint_every):
  ocfg = optim.OptimizerConfig(name="adamw", learning_rate=0.05, grad_accum_steps=1)
  opt = optim.make_optimizer(ocfg)
  setup = state_lib.init_train_state(lambda key: _Dropout(nnx.Rngs(key)), opt, seed=0)
  step = state_lib.make_train_step(setup.graphdef, squared_error_loss, opt)
  config = loop_lib.LoopConfig(num_steps=num_steps, log_every=2, checkpoint_every=checkpoint_every, progress=False,
                               tensorboard=False)
  out = loop_lib.train(config=config, workdir=str(workdir), setup=setup, step_fn=step, data_iter=RegressionBatches())
  ckpt = checkpoint_lib.Checkpointer(str(workdir / "checkpoints"))
  restored, _ = ckpt.restore(setup.abstract)
  ckpt.close()
  return out, restored


@pytest.mark.parametrize("resumed", [False, True])
def test_the_returned_state_is_the_last_checkpoints(tmp_path, resumed):
  """train() hands back the trained state, so a stage needs no read-back: it is bit-equal to the
  last checkpoint, also when num_steps is not a multiple of checkpoint_every and when a re-run has nothing left to
  train (its state is the restored one); results.json does not hold it."""
  out, restored = _dropout_loop(tmp_path, 5, 2)
  if resumed:
    out, restored = _dropout_loop(tmp_path, 5, 2)  # Everything done: zero steps run, the state comes from disk.
  assert out["step"] == out["last_checkpoint_step"] == 5
  raw = lambda x: np.asarray(jax.random.key_data(x) if jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key) else x)
  leaves, restored_leaves = jax.tree.leaves(out["state"]), jax.tree.leaves(restored)
  assert len(leaves) == len(restored_leaves) > 0
  for a, b in zip(leaves, restored_leaves):
    np.testing.assert_array_equal(raw(a), raw(b))
  assert "state" not in json.loads((tmp_path / "results.json").read_text())
