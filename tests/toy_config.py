"""TEST FIXTURE config (not an experiment): a tiny NNX MLP regression that exercises the generic train loop,
the config boundary, stage chaining, sweeps and tables in seconds on a CPU.

It defines its own stage kind, "toy_regression", in the table `KINDS` (so the train-loop tests do not depend on
the real stages); runs pass it explicitly: `python -m experiments.run --config tests/toy_config.py
--extra_kinds tests.toy_config:KINDS --workdir ...` (the same flag for experiments.sweep).

Variants (`tests/toy_config.py:<variant>`):
  smoke   (default) one stage, 12 updates.
  staged  two stages: "pretrain" -> "finetune" (finetune starts from pretrain's final checkpoint).
  nan     one stage whose batch at update 5 is NaN (the NaN-guard test).
  fail    as smoke, but its sweep adds a member that raises (the failing-sweep-member test).
"""

from __future__ import annotations

import dataclasses
import time

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import nnx

from jaxrlhf.config import ConfigError, field
from jaxrlhf.parallel import MeshConfig, make_mesh
from jaxrlhf.train import loop as loop_lib
from jaxrlhf.train import metrics as metrics_lib
from jaxrlhf.train import optim
from jaxrlhf.stages.kinds import StageKind
from jaxrlhf.train import checkpoint as checkpoint_lib
from jaxrlhf.train import state as state_lib

# ---------------------------------------------------------------------------------------------------------
# The toy algorithm (fixture code).


@dataclasses.dataclass(frozen=True)
class ToyConfig:
  seed: int = field(0)
  dim: int = field(8, min=1)
  hidden: int = field(16, min=1)
  num_examples: int = field(256, min=1)
  batch_size: int = field(16, min=1)
  noise: float = field(0.05, min=0.0)
  nan_at_step: int = field(0, min=0)  # >0: the batch of this update (1-based) is NaN.
  fail: str = field("")  # Non-empty: the stage raises RuntimeError(fail) before training.
  init_from: str = field("", must_exist=True)  # A checkpoint dir to start from; or a previous stage's.
  optimizer: optim.OptimizerConfig = field(default_factory=optim.OptimizerConfig)
  loop: loop_lib.LoopConfig = field(default_factory=loop_lib.LoopConfig)
  mesh: MeshConfig = field(default_factory=MeshConfig)
  num_devices: int = field(0, min=0)  # 0: all devices.
  sleep_per_step: float = field(0.0, min=0.0)  # Seconds per batch, so a test can kill a run mid-way.

  def validate(self, path: str) -> None:
    if self.batch_size % self.optimizer.grad_accum_steps:
      raise ConfigError(f"{path}.batch_size: {self.batch_size} is not divisible by "
                        f"{path}.optimizer.grad_accum_steps={self.optimizer.grad_accum_steps}")


class ToyMLP(nnx.Module):
  """x (B, D) -> y (B,): Linear -> tanh -> Linear, kernels annotated with logical axes."""

  def __init__(self, dim: int, hidden: int, rngs: nnx.Rngs):
    init = nnx.initializers.lecun_normal()
    self.l1 = nnx.Linear(dim, hidden, kernel_init=nnx.with_partitioning(init, ("embed", "mlp")), rngs=rngs)
    self.l2 = nnx.Linear(hidden, 1, kernel_init=nnx.with_partitioning(init, ("mlp", None)), rngs=rngs)

  def __call__(self, x_BxD: jax.Array) -> jax.Array:
    return self.l2(jnp.tanh(self.l1(x_BxD)))[:, 0]


def _dataset(cfg: ToyConfig, seed_offset: int, n: int) -> tuple[np.ndarray, np.ndarray]:
  """(x (n, D), y (n,)): y = sin(x @ w) + noise, w fixed by cfg.seed."""
  w = np.random.default_rng(cfg.seed).normal(size=(cfg.dim,)) / np.sqrt(cfg.dim)
  rng = np.random.default_rng([cfg.seed, seed_offset])
  x = rng.normal(size=(n, cfg.dim)).astype(np.float32)
  y = (np.sin(x @ w) + cfg.noise * rng.normal(size=(n,))).astype(np.float32)
  return x, y


class ToyIterator:
  """Epoch-shuffled minibatches; the state is the number of batches served (exact resume)."""

  def __init__(self, cfg: ToyConfig):
    self.cfg = cfg
    self.x, self.y = _dataset(cfg, 1, cfg.num_examples)
    self.index = 0

  def __iter__(self):
    return self

  def __next__(self) -> dict[str, np.ndarray]:
    per_epoch = self.cfg.num_examples // self.cfg.batch_size
    epoch, i = divmod(self.index, per_epoch)
    order = np.random.default_rng([self.cfg.seed, 2, epoch]).permutation(self.cfg.num_examples)
    idx = order[i * self.cfg.batch_size:(i + 1) * self.cfg.batch_size]
    self.index += 1
    if self.cfg.sleep_per_step:
      time.sleep(self.cfg.sleep_per_step)
    x = self.x[idx].copy()
    if self.cfg.nan_at_step == self.index:
      x[:] = np.nan
    return {"x": x, "y": self.y[idx]}

  def get_state(self) -> dict[str, int]:
    return {"index": self.index}

  def set_state(self, state: dict[str, int]) -> None:
    self.index = int(state["index"])


def _loss_fn(model: ToyMLP, batch: dict[str, jax.Array], rng: jax.Array):
  del rng
  err_B = model(batch["x"]) - batch["y"]
  n = jnp.asarray(err_B.shape[0], jnp.float32)
  return jnp.sum(err_B**2), n, {"mae": metrics_lib.Avg(jnp.sum(jnp.abs(err_B)), n),
                                "tokens": metrics_lib.Sum(n)}


def run_toy(cfg: ToyConfig, workdir: str, inputs: dict) -> dict:
  """The toy stage: trains ToyMLP with the shared loop; starts from the previous stage's checkpoint if any."""
  if cfg.fail:
    raise RuntimeError(cfg.fail)
  devices = jax.devices()[:cfg.num_devices] if cfg.num_devices else jax.devices()
  mesh = make_mesh(cfg.mesh, devices)
  optimizer = optim.make_optimizer(cfg.optimizer)
  setup = state_lib.init_train_state(lambda key: ToyMLP(cfg.dim, cfg.hidden, nnx.Rngs(key)), optimizer,
                                     cfg.seed, mesh=mesh, shardings=state_lib.logical_shardings(mesh))
  init_from = cfg.init_from or next((o["checkpoint_dir"] for o in inputs.values() if "checkpoint_dir" in o), "")
  if init_from:
    src = checkpoint_lib.Checkpointer(init_from, async_save=False)
    prev, _ = src.restore(setup.abstract)
    src.close()
    fresh_init = setup.init
    setup = setup._replace(init=lambda: fresh_init().replace(params=prev.params))
  step_fn = state_lib.make_train_step(setup.graphdef, _loss_fn, optimizer,
                                      grad_accum_steps=cfg.optimizer.grad_accum_steps,
                                      schedule=optim.make_schedule(cfg.optimizer))
  x_eval, y_eval = _dataset(cfg, 3, 64)

  @jax.jit
  def eval_loss(state):
    model = nnx.merge(setup.graphdef, state.params, state.extra)
    return jnp.mean((model(x_eval) - y_eval) ** 2)

  results = loop_lib.train(config=cfg.loop, workdir=workdir, setup=setup, step_fn=step_fn,
                           data_iter=ToyIterator(cfg), mesh=mesh,
                           eval_fn=lambda s: {"loss": float(eval_loss(s))})
  return {"checkpoint_dir": results["checkpoint_dir"], "metrics": results["metrics"]}


KINDS = {"toy_regression": StageKind("toy_regression", ToyConfig, run_toy, ("checkpoint_dir",))}

# ---------------------------------------------------------------------------------------------------------
# The config proper.


def _toy_section(**overrides) -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.kind = "toy_regression"
  c.seed = 0
  c.dim = 8
  c.hidden = 16
  c.num_examples = 128
  c.batch_size = 16
  c.noise = 0.05
  c.nan_at_step = 0
  c.fail = ""
  c.init_from = ""
  c.num_devices = 0
  c.sleep_per_step = 0.0
  c.optimizer = ml_collections.ConfigDict(dict(
      name="adamw", learning_rate=0.03, schedule="cosine", warmup_steps=2, decay_steps=12,
      end_lr_factor=0.1, b1=0.9, b2=0.999, eps=1e-8, weight_decay=0.0, momentum=0.0, clip_norm=1.0,
      grad_accum_steps=1))
  c.loop = ml_collections.ConfigDict(dict(
      num_steps=12, log_every=2, checkpoint_every=4, eval_every=4, keep_checkpoints=2,
      best_metric="eval/loss", best_mode="min", async_checkpoints=True, progress=False, tensorboard=True,
      tokens_key="tokens"))
  c.mesh = ml_collections.ConfigDict(dict(data=-1, fsdp=1, tensor=1))
  for k, v in overrides.items():
    c[k] = v
  return c


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  variant = arg or "smoke"
  if variant in ("smoke", "fail"):  # "fail" only changes sweep(): one member raises.
    config = _toy_section()
  elif variant == "nan":
    config = _toy_section(nan_at_step=5)
  elif variant == "staged":
    config = ml_collections.ConfigDict()
    config.seed = 0
    config.stages = ("pretrain", "finetune")
    config.pretrain = _toy_section()
    config.finetune = _toy_section()
    config.pretrain.seed = config.get_ref("seed")
    config.finetune.seed = config.get_ref("seed")
    config.finetune.loop.num_steps = 8
  else:
    raise ValueError(f"tests/toy_config.py: unknown variant {variant!r}; valid: smoke, nan, staged, fail")
  config.tables = ml_collections.ConfigDict(dict(metrics=("train/loss", "eval/loss")))
  config.plots = [ml_collections.ConfigDict(dict(name="lr_vs_loss", x="optimizer.learning_rate",
                                                 y="eval/loss", group_by=""))]
  return config


def sweep(add, arg: str | None = None) -> None:
  """2 learning rates x 2 seeds; variant "fail": 2 seeds at one learning rate plus a member that raises."""
  if arg == "fail":
    for seed in (0, 1):
      add(seed=seed, **{"optimizer.learning_rate": 0.03})
    add(seed=0, **{"optimizer.learning_rate": 0.1, "fail": "deliberate failure"})
    return
  for lr in (0.01, 0.03):
    for seed in (0, 1):
      add(seed=seed, **{"optimizer.learning_rate": lr})
