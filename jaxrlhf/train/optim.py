"""Optimizers and learning-rate schedules from a frozen `OptimizerConfig`.

Gradient accumulation is NOT done here with `optax.MultiSteps`: it is micro-batching inside the step
(`jaxrlhf.train.state.make_train_step` scans over `grad_accum_steps` micro-batches, sums gradients and
divides once by the total weight). So one loop step is one optimizer update, the optimizer state holds no
extra gradient buffer, and an accumulated step equals the full-batch step up to float summation order.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
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
  # Decoupled weight decay: each update subtracts lr * weight_decay * param (AdamW's, and transformers' Adafactor's
  # rule; SGD adds it to the gradient, the same step without momentum), on the parameters `decay_mask` selects.
  weight_decay: float = field(0.0, min=0.0)
  # "all": every parameter (optax.adamw's default, and this library's so far: the published runs used it);
  # "transformers": not biases nor norm scales (`decays_weight`), as transformers' Trainer and so TRL's trainers do.
  decay_mask: str = field("all", choices=("all", "transformers"))
  momentum: float = field(0.0, min=0.0, max=1.0)  # SGD only.
  clip_norm: float = field(0.0, min=0.0)  # Global-norm clipping; 0 disables it.
  grad_accum_steps: int = field(1, min=1)  # Micro-batches per update (see module docstring).

  def validate(self, path: str = "config.optimizer") -> None:
    # The decay runs over decay_steps - warmup_steps updates; with none left, optax's linear schedule would stay
    # at the peak forever and its cosine one refuses to build.
    if self.schedule != "constant" and self.warmup_steps >= self.decay_steps:
      raise ConfigError(f"{path}.warmup_steps: {self.warmup_steps} must be less than {path}.decay_steps="
                        f"{self.decay_steps} (the decay horizon includes the warmup)")


def make_schedule(cfg: OptimizerConfig) -> optax.Schedule:
  """Learning rate (float) as a function of the update count: linear warmup from 0, then constant/decay.

  Raises:
    ConfigError: `cfg` fails `OptimizerConfig.validate` (e.g. warmup_steps >= decay_steps for a decay).
  """
  cfg.validate()
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


def _param_name(path: tuple) -> str:
  """The dotted, lower-cased name of a parameter from its pytree path (nnx Variables' `.value` left out)."""
  parts = []
  for k in path:
    if isinstance(k, jax.tree_util.DictKey):
      parts.append(str(k.key))
    elif isinstance(k, jax.tree_util.GetAttrKey) and k.name != "value":
      parts.append(k.name)
    elif isinstance(k, jax.tree_util.SequenceKey):
      parts.append(str(k.idx))
  return ".".join(parts).lower()


def decays_weight(name: str) -> bool:
  """Whether weight decay applies to the parameter called `name` (dotted path): not to biases (`bias`,
  `hidden_bias`, ...) nor to normalization scales (`attn_norm_scale`, `final_norm_scale`, an nnx LayerNorm /
  RMSNorm `scale`), as transformers' Trainer excludes "bias" and "norm" parameters; kernels and embeddings decay."""
  last = name.rsplit(".", 1)[-1]
  return not ("bias" in name or "norm" in name or last == "scale")


def weight_decay_mask(params: Any, decay_mask: str = "transformers") -> Any:
  """A pytree of bools like `params`: True where weight decay applies (every parameter for decay_mask "all",
  `decays_weight` for "transformers")."""
  if decay_mask == "all":
    return jax.tree.map(lambda _: True, params)
  if decay_mask != "transformers":
    raise ValueError(f"decay_mask: expected 'all' or 'transformers', got {decay_mask!r}")
  return jax.tree_util.tree_map_with_path(lambda path, _: decays_weight(_param_name(path)), params)


def _decayed_weights(rate: float, decay_mask: str, schedule: optax.Schedule | None = None
                     ) -> optax.GradientTransformation:
  """Weight decay on the parameters `weight_decay_mask(params, decay_mask)` selects.

  Without `schedule`: adds rate * param to the updates (optax.add_decayed_weights, before the lr scaling), with its
  state (optax.EmptyState) in place of optax's masked wrapper's, so checkpoints of the unmasked chain still restore.
  With `schedule`: adds -schedule(count) * rate * param to the final, sign-flipped updates (Adafactor's).
  """

  def init(params):
    del params
    if schedule is None:
      return optax.EmptyState()
    return optax.ScaleByScheduleState(count=jnp.zeros([], jnp.int32))

  def update(updates, state, params=None):
    if params is None:
      raise ValueError("weight decay needs the params: call update(grads, state, params)")
    if schedule is None:
      scale, new_state = rate, state
    else:
      scale = -schedule(state.count) * rate
      new_state = optax.ScaleByScheduleState(count=optax.safe_int32_increment(state.count))
    if not rate:
      return updates, new_state
    updates = jax.tree.map(lambda u, p, m: (u + scale * p).astype(u.dtype) if m else u,
                           updates, params, weight_decay_mask(params, decay_mask))
    return updates, new_state

  return optax.GradientTransformation(init, update)


def make_optimizer(cfg: OptimizerConfig) -> optax.GradientTransformation:
  """The optax chain: optional global-norm clipping, then AdamW / SGD / Adafactor on the schedule, with weight
  decay lr * weight_decay * param on the parameters `cfg.decay_mask` selects (`weight_decay_mask`)."""
  lr = make_schedule(cfg)
  if cfg.name == "adamw":
    # optax.adamw's chain, its decay masked.
    opt = optax.chain(optax.scale_by_adam(b1=cfg.b1, b2=cfg.b2, eps=cfg.eps),
                      _decayed_weights(cfg.weight_decay, cfg.decay_mask), optax.scale_by_learning_rate(lr))
  elif cfg.name == "sgd":
    opt = optax.sgd(lr, momentum=cfg.momentum or None)
    if cfg.weight_decay:
      opt = optax.chain(_decayed_weights(cfg.weight_decay, cfg.decay_mask), opt)
  elif cfg.name == "adafactor":
    # optax's `weight_decay_rate` is not multiplied by the lr (a rate of 0.01 shrinks every weight by 1% per step,
    # 1 / lr times AdamW's decay at the same setting); transformers' Adafactor multiplies it, as done here.
    opt = optax.adafactor(lr)
    if cfg.weight_decay:
      opt = optax.chain(opt, _decayed_weights(cfg.weight_decay, cfg.decay_mask, lr))
  else:
    raise ValueError(f"OptimizerConfig.name: unknown optimizer {cfg.name!r}")
  if cfg.clip_norm > 0:
    opt = optax.chain(optax.clip_by_global_norm(cfg.clip_norm), opt)
  return opt
