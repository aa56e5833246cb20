"""Optimizers and learning-rate schedules from a frozen `OptimizerConfig`.

Gradient accumulation is NOT done here with `optax.MultiSteps`: it is micro-batching inside the step
(`jaxrlhf.train.state.make_train_step` scans over `grad_accum_steps` micro-batches, sums gradients and
divides once by the total weight). So one loop step is one optimizer update, the optimizer state holds no
extra gradient buffer, and an accumulated step equals the full-batch step up to float summation order.
"""

from __future__ import annotations

import dataclasses

import optax

from jaxrlhf.config import ConfigError, field


@dataclasses.dataclass(frozen=True)
class OptimizerConfig:
  """Optimizer, schedule and clipping. Steps count optimizer updates (not micro-batches)."""
  name: str = field("adamw", choices=("adamw", "sgd", "adafactor"))
  learning_rate: float = field(1e-3, min=0.0)
  schedule: str = field("constant", choices=("constant", "linear", "cosine"))
  warmup_steps: int = field(0, min=0)
  # Decay horizon (warmup included) for "linear"/"cosine"; the lr stays at its final value afterwards.
  decay_steps: int = field(1000, min=1)
  # Final lr = learning_rate * end_lr_factor for the decaying schedules.
  end_lr_factor: float = field(0.0, min=0.0, max=1.0)
  b1: float = field(0.9, min=0.0, max=1.0)
  b2: float = field(0.999, min=0.0, max=1.0)
  eps: float = field(1e-8, min=0.0)
  weight_decay: float = field(0.0, min=0.0)
  momentum: float = field(0.0, min=0.0, max=1.0)  # SGD only.
  clip_norm: float = field(0.0, min=0.0)  # Global-norm clipping; 0 disables it.
  grad_accum_steps: int = field(1, min=1)  # Micro-batches per update (see module docstring).

  def validate(self, path: str = "config.optimizer") -> None:
    if self.schedule != "constant" and self.warmup_steps > self.decay_steps:
      raise ConfigError(f"{path}.warmup_steps: {self.warmup_steps} exceeds {path}.decay_steps="
                        f"{self.decay_steps}")


def make_schedule(cfg: OptimizerConfig) -> optax.Schedule:
  """Learning rate (float) as a function of the update count: linear warmup from 0, then constant/decay."""
  peak = cfg.learning_rate
  end = peak * cfg.end_lr_factor
  if cfg.schedule == "constant":
    if cfg.warmup_steps == 0:
      return optax.constant_schedule(peak)
    return optax.join_schedules(
        [optax.linear_schedule(0.0, peak, cfg.warmup_steps), optax.constant_schedule(peak)],
        [cfg.warmup_steps])
  if cfg.schedule == "cosine":
    return optax.warmup_cosine_decay_schedule(0.0, peak, cfg.warmup_steps, cfg.decay_steps, end)
  decay = optax.linear_schedule(peak, end, cfg.decay_steps - cfg.warmup_steps)
  if cfg.warmup_steps == 0:
    return decay
  return optax.join_schedules([optax.linear_schedule(0.0, peak, cfg.warmup_steps), decay],
                              [cfg.warmup_steps])


def make_optimizer(cfg: OptimizerConfig) -> optax.GradientTransformation:
  """The optax chain: optional global-norm clipping, then AdamW / SGD / Adafactor on the schedule."""
  lr = make_schedule(cfg)
  if cfg.name == "adamw":
    opt = optax.adamw(lr, b1=cfg.b1, b2=cfg.b2, eps=cfg.eps, weight_decay=cfg.weight_decay)
  elif cfg.name == "sgd":
    opt = optax.sgd(lr, momentum=cfg.momentum or None)
    if cfg.weight_decay:
      opt = optax.chain(optax.add_decayed_weights(cfg.weight_decay), opt)
  elif cfg.name == "adafactor":
    opt = optax.adafactor(lr, weight_decay_rate=cfg.weight_decay or None)
  else:
    raise ValueError(f"OptimizerConfig.name: unknown optimizer {cfg.name!r}")
  if cfg.clip_norm > 0:
    opt = optax.chain(optax.clip_by_global_norm(cfg.clip_norm), opt)
  return opt
