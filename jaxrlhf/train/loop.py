"""The training loop shared by every algorithm: resume, NaN guard, eval cadence, metrics, checkpoints.

Contract with an algorithm:
  step_fn(state: TrainState, batch) -> (state, metrics)   pure; the loop jits it with explicit in/out
      shardings and donates the state. metrics values: scalars, `metrics.Avg`, `metrics.Sum` (see metrics.py).
  data_iter: an iterator of numpy batch pytrees with get_state() -> JSON-able and set_state(state) (e.g. a
      grain DatasetIterator); its state is checkpointed with the train state for an exact resume.
  eval_fn(state) -> dict[str, float]  (optional), reported under "eval/".

Files in `workdir`: checkpoints/ (orbax), metrics.jsonl, tensorboard/, results.json.

Multi-process runs: every process runs the same loop on the same global arrays. Batches become global arrays
with `pipeline.global_batch` (an iterator with `process_local = True` yields only this process's rows of each
global batch; otherwise every process holds the whole global batch), all processes save and restore the orbax
checkpoints together, and only process 0 writes metrics.jsonl, TensorBoard events and results.json and shows
the progress bar.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from typing import Any, Callable, Mapping, Protocol

import jax
from jax.sharding import Mesh
import tqdm

from jaxrlhf.config import ConfigError, field
from jaxrlhf.data import pipeline as pipeline_lib
from jaxrlhf.parallel import distributed
from jaxrlhf.parallel.sharding import batch_sharding
from jaxrlhf.train import checkpoint as checkpoint_lib
from jaxrlhf.train import metrics as metrics_lib
from jaxrlhf.train import state as state_lib


@dataclasses.dataclass(frozen=True)
class LoopConfig:
  """Loop cadence. Steps count optimizer updates; `checkpoint_every` must be a multiple of `log_every` so a
  resumed run's logging windows line up with an uninterrupted run's."""
  num_steps: int = field(100, min=1)
  log_every: int = field(10, min=1)
  checkpoint_every: int = field(50, min=1)
  eval_every: int = field(0, min=0)  # 0: evaluate only at the end.
  keep_checkpoints: int = field(2, min=1)
  best_metric: str = field("")  # e.g. "eval/loss"; "" keeps no best checkpoint.
  best_mode: str = field("min", choices=("min", "max"))
  async_checkpoints: bool = field(True)
  progress: bool = field(True)
  tensorboard: bool = field(True)
  tokens_key: str = field("tokens")  # A `metrics.Sum` metric counted for tokens/s.

  def validate(self, path: str = "config.loop") -> None:
    if self.checkpoint_every % self.log_every:
      raise ConfigError(f"{path}.checkpoint_every: {self.checkpoint_every} must be a multiple of "
                        f"{path}.log_every={self.log_every}")
    # A checkpoint is ranked by the eval metrics of its own step only: checkpoints between evals never count as
    # best, so with evals off the checkpoint cadence the best checkpoint would silently be the final one.
    if self.best_metric.startswith("eval/") and (
        self.eval_every == 0 or (self.checkpoint_every % self.eval_every and self.eval_every % self.checkpoint_every)):
      raise ConfigError(f"{path}.best_metric: {self.best_metric!r} ranks checkpoints by evals at their own step, "
                        f"but {path}.eval_every={self.eval_every} never or rarely lands on {path}.checkpoint_every="
                        f"{self.checkpoint_every}: make one a multiple of the other (eval_every > 0)")


class NonFiniteError(FloatingPointError):
  """A step produced a NaN/inf metric; the message names the step, metric and last finite checkpoint."""


class DataIterator(Protocol):

  def __next__(self) -> Any: ...

  def get_state(self) -> Any: ...

  def set_state(self, state: Any) -> None: ...


def _global_batch(batch: Any, sharding: Any, process_local: bool) -> Any:
  """Single process: the numpy batch as is (jit places it). Multi-process: global arrays assembled from each
  process's rows (`process_local`) or from the whole global batch every process holds."""
  if jax.process_count() == 1:
    return batch
  if sharding is None:
    raise ValueError("batch_shardings: multi-process training needs a mesh or explicit batch shardings")
  return pipeline_lib.global_batch(batch, sharding, process_local=process_local)


def _is_due(step: int, every: int, last: int) -> bool:
  return step == last or (every > 0 and step % every == 0)


def train(*, config: LoopConfig, workdir: str, setup: state_lib.StateSetup,
          step_fn: Callable[[state_lib.TrainState, Any], tuple[state_lib.TrainState, dict[str, Any]]],
          data_iter: DataIterator, mesh: Mesh | None = None, batch_shardings: Any = None,
          eval_fn: Callable[[state_lib.TrainState], dict[str, float]] | None = None,
          run_config: Mapping[str, Any] | None = None,
          prepare_fn: Callable[[state_lib.TrainState, Any], Any] | None = None) -> dict[str, Any]:
  """Runs (or resumes) training to `config.num_steps` updates and writes `workdir/results.json`.

  Args:
    config: the loop cadence.
    workdir: the run directory; if it holds checkpoints the run resumes from the newest intact one (train state
      and data-iterator state; see `Checkpointer.restore_newest_intact`), and metrics.jsonl lines after that
      step are dropped and re-logged.
    setup: from `state.init_train_state` (abstract sharded target, shardings, init).
    step_fn: the algorithm's pure step.
    data_iter: batches (numpy pytrees with a leading batch axis) with get_state/set_state.
    mesh: the device mesh; batches are sharded over its batch axes (`parallel.batch_sharding`) unless
      `batch_shardings` is given.
    batch_shardings: a sharding (prefix) pytree for the batch argument.
    eval_fn: state -> metrics, run every `eval_every` updates and at the end.
    run_config: the stage's settings (a JSON-able dict), recorded with each checkpoint: resuming under changed
      settings warns with what changed (`Checkpointer`); a changed train-state layout is reported as a config
      change whether or not this is given.
    prepare_fn: (state, batch) -> the batch the step gets, run on the host before each step with the state the
      step gets (placed batch in, placed batch out): work that must not sit inside the step program, such as the
      RL stage's text rewards (`stages.rl.host_scored_rollouts`).

  Returns:
    The results dict also written to results.json: final step, last train window and eval metrics,
    best checkpoint step, wall time; and, not in the file, "state": the trained TrainState (the state of the last
    checkpoint, which the loop always writes at num_steps: a caller needs no read-back).

  Raises:
    NonFiniteError: a train or eval metric is NaN/inf; nothing from that step on is saved.
    ConfigError (a ValueError) naming loop.num_steps: the workdir's newest checkpoint is past it.
    checkpoint.CheckpointError: the workdir's checkpoints hold no intact step (or only steps written for another
      train state: the message says what differs), or a checkpoint write failed.
  """
  missing = [m for m in ("__next__", "get_state", "set_state") if not hasattr(data_iter, m)]
  if missing:
    raise ValueError(f"data_iter: {type(data_iter).__name__} lacks {missing}; the loop needs an iterator with "
                     "get_state()/set_state() to checkpoint and resume its position")
  os.makedirs(workdir, exist_ok=True)
  start_time = time.time()
  ckpt = checkpoint_lib.Checkpointer(
      os.path.join(workdir, "checkpoints"), max_to_keep=config.keep_checkpoints,
      best_metric=config.best_metric or None, best_mode=config.best_mode,
      async_save=config.async_checkpoints, run_config=run_config)
  writer = metrics_lib.MetricsWriter(workdir, tensorboard=config.tensorboard)
  try:
    start = ckpt.latest_step()
    if start is None:
      start = 0
      state = setup.init()
      writer.reset()  # A fresh run: drop metrics of a run that never checkpointed.
    else:
      # The newest step that passes its integrity check; damaged newer ones are moved aside with a warning.
      start, state, data_state = ckpt.restore_newest_intact(setup.abstract)
      if start > config.num_steps:
        # Nothing to run, and results.json would report a step and metrics past the run that was asked for.
        raise ConfigError(f"loop.num_steps: {workdir}: its newest checkpoint is step {start}, past "
                          f"num_steps={config.num_steps}; raise num_steps to at least {start} to resume, or use a "
                          f"fresh workdir to train {config.num_steps} steps")
      if distributed.is_primary():
        print(f"[train] resuming from step {start} ({ckpt.directory})", flush=True)
      if data_state:
        data_iter.set_state(data_state)
      writer.truncate_after(start)  # Process 0 only; the others wait so they read the truncated file.
      distributed.barrier(f"loop:resume:{workdir}")
    if batch_shardings is None:
      batch_shardings = batch_sharding(mesh)  # The leading (example) axis over the mesh's batch axes.
    jit_step = jax.jit(step_fn, in_shardings=(setup.shardings, batch_shardings),
                       out_shardings=(setup.shardings, None), donate_argnums=0)
    all_finite = jax.jit(state_lib.tree_all_finite)
    process_local = bool(getattr(data_iter, "process_local", False))
    return _run(config, workdir, state, start, jit_step, all_finite, data_iter, eval_fn, ckpt, writer,
                start_time, batch_shardings, process_local, prepare_fn)
  finally:
    writer.close()
    ckpt.close()


def _run(config, workdir, state, start, jit_step, all_finite, data_iter, eval_fn, ckpt, writer,
         start_time, batch_shardings, process_local, prepare_fn=None) -> dict[str, Any]:
  """The step loop proper (see `train`)."""
  last = config.num_steps
  window = metrics_lib.Window()
  # A resumed run reports what was logged before the restart until it logs again (e.g. a run killed
  # after its final checkpoint but before results.json).
  train_values = _last_logged(writer.path, "train/")
  eval_values = _last_logged(writer.path, "eval/")
  window_start, window_tokens, window_paused = time.time(), 0.0, 0.0
  bar = tqdm.tqdm(total=last, initial=start, disable=not (config.progress and distributed.is_primary()),
                  dynamic_ncols=True,
                  desc=os.path.basename(os.path.normpath(workdir)))
  compiled_for: set = set()
  for step in range(start + 1, last + 1):
    batch = _global_batch(next(data_iter), batch_shardings, process_local)
    if prepare_fn is not None:
      batch = prepare_fn(state, batch)
    if jax.process_count() > 1:
      _compile_together(jit_step, state, batch, compiled_for)
    state, step_metrics = jit_step(state, batch)
    host = jax.device_get(step_metrics)
    # Empty means (count 0 this step) are left out: they are not a divergence (the loss and gradients are checked).
    values = metrics_lib.compute(host, drop_empty=True)
    bad = metrics_lib.first_non_finite(values)
    if bad is not None:
      _fail_non_finite(ckpt, step, bad, values[bad], "train")
    window.add(host)
    window_tokens += values.get(config.tokens_key, 0.0)
    if _is_due(step, config.log_every, last):
      # Throughput of training alone: eval and checkpoint time inside the window is left out.
      elapsed = max(time.time() - window_start - window_paused, 1e-9)
      perf = {"perf/steps_per_sec": window.steps / elapsed, "perf/tokens_per_sec": window_tokens / elapsed}
      train_values = {f"train/{k}": v for k, v in window.result().items()}
      writer.write(step, {**train_values, **perf})
      bar.set_postfix({"loss": f"{train_values.get('train/loss', float('nan')):.4g}",
                       "steps/s": f"{perf['perf/steps_per_sec']:.3g}",
                       "tok/s": f"{perf['perf/tokens_per_sec']:.4g}"})
      window.reset()
      window_start, window_tokens, window_paused = time.time(), 0.0, 0.0
    paused_from = time.time()
    step_eval = {}
    if eval_fn is not None and _is_due(step, config.eval_every, last):
      step_eval = {k if k.startswith("eval/") else f"eval/{k}": float(v) for k, v in eval_fn(state).items()}
      bad = metrics_lib.first_non_finite(step_eval)
      if bad is not None:
        _fail_non_finite(ckpt, step, bad, step_eval[bad], "eval")
      writer.write(step, step_eval)
      eval_values = step_eval
    if _is_due(step, config.checkpoint_every, last):
      if not bool(all_finite(state)):
        _fail_non_finite(ckpt, step, "train state", float("nan"), "state")
      ckpt.save(step, state, data_state=data_iter.get_state(), metrics={**train_values, **step_eval})
    window_paused += time.time() - paused_from
    bar.update(1)
  bar.close()
  ckpt.wait()
  results = {
      "status": "done",
      "step": int(jax.device_get(state.step)),
      "metrics": {**train_values, **eval_values},
      "best_step": ckpt.best_step(),
      "checkpoint_dir": ckpt.directory,
      "last_checkpoint_step": ckpt.latest_step(),
      "wall_s": time.time() - start_time,
  }
  if distributed.is_primary():
    with open(os.path.join(workdir, "results.json"), "w") as f:
      json.dump(results, f, indent=2)
  return {**results, "state": state}


def _compile_together(jit_step: Any, state: Any, batch: Any, compiled_for: set) -> None:
  """Multi-process: compiles the step for a new batch signature ahead of time (jit reuses that executable),
  then waits for every process, so no process enters the step's collectives while another still compiles
  (CPU collectives time out connecting to a late peer)."""
  signature = tuple((tuple(x.shape), str(x.dtype)) for x in jax.tree.leaves(batch))
  if signature in compiled_for:
    return
  jit_step.lower(state, batch).compile()
  distributed.barrier("loop:compiled")
  compiled_for.add(signature)


def _last_logged(path: str, prefix: str) -> dict[str, float]:
  """The `prefix` metrics of the last metrics.jsonl line that has any ({} without such a line)."""
  if not os.path.exists(path):
    return {}
  for line in reversed(metrics_lib.read_jsonl(path)):
    values = {k: v for k, v in line.items() if k.startswith(prefix)}
    if values:
      return values
  return {}


def _fail_non_finite(ckpt: checkpoint_lib.Checkpointer, step: int, name: str, value: float,
                     where: str) -> None:
  ckpt.wait()
  last = ckpt.latest_step()
  kept = f"the last finite checkpoint is step {last} in {ckpt.directory}" if last is not None else \
      "no checkpoint was saved"
  raise NonFiniteError(f"non-finite {where} metric {name!r} = {value} at step {step}; stopping without "
                       f"saving it; {kept}")
