"""The train state pytree, its abstract-first sharded initialization, and a generic train step.

`TrainState` holds the NNX model state split into trainable `params` (`nnx.Param`) and everything else
(`extra`: RNG streams, counters; not differentiated, but carried when the forward pass updates them),
the optax state, the update count and a base RNG key. The
graphdef stays outside the pytree. `init_train_state` evaluates the init abstractly (`jax.eval_shape`),
resolves shardings from the abstract tree, and returns a jitted init with `out_shardings`, so no full model
is ever materialized on one device and a checkpoint can be restored straight into the sharded target.
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple

import flax.struct
import jax
import jax.numpy as jnp
import optax
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from jaxrlhf.parallel import sharding as sharding_lib
from jaxrlhf.parallel.sharding import auto_axes
from jaxrlhf.train import metrics as metrics_lib


@flax.struct.dataclass
class TrainState:
  """step: int32 scalar (optimizer updates done); rng: uint32[2] base key (step keys = fold_in(rng, step))."""
  step: jax.Array
  params: nnx.State
  extra: nnx.State
  opt_state: optax.OptState
  rng: jax.Array


# A shardings argument: a pytree of jax.sharding.Sharding matching TrainState, or a function
# abstract_state -> that pytree (e.g. built from logical axes), or None (replicated over the mesh).
Shardings = Any


class StateSetup(NamedTuple):
  """graphdef: the model's nnx.GraphDef; abstract: TrainState of ShapeDtypeStruct carrying shardings;
  shardings: the TrainState-shaped sharding pytree; init: () -> TrainState materialized with them."""
  graphdef: nnx.GraphDef
  abstract: TrainState
  shardings: Any
  init: Callable[[], TrainState]


def resolve_shardings(abstract: Any, shardings: Shardings, mesh: Mesh | None) -> Any:
  """A sharding pytree for `abstract` from a pytree, a function of the abstract tree, or None."""
  if callable(shardings) and not isinstance(shardings, jax.sharding.Sharding):
    shardings = shardings(abstract)
  if shardings is None:
    if mesh is None:
      mesh = Mesh(jax.devices()[:1], ("data",))
    replicated = NamedSharding(mesh, P())
    return jax.tree.map(lambda _: replicated, abstract)
  if isinstance(shardings, jax.sharding.Sharding):
    return jax.tree.map(lambda _: shardings, abstract)
  return shardings


def logical_shardings(mesh: Mesh, rules: Any = None) -> Callable[[Any], Any]:
  """A `Shardings` function: nnx Variables (params, and the optimizer moments that mirror them) by their
  logical-axis metadata via `jaxrlhf.parallel.state_shardings`; every other leaf (step, rng, counts)
  replicated."""

  mesh = auto_axes(mesh)
  replicated = NamedSharding(mesh, P())
  rules = sharding_lib.LOGICAL_RULES if rules is None else rules

  def fn(abstract: Any) -> Any:
    def one(x):
      if isinstance(x, nnx.Variable):
        return sharding_lib.state_shardings(x, mesh, rules)
      return replicated
    return jax.tree.map(one, abstract, is_leaf=lambda x: isinstance(x, nnx.Variable))

  return fn


def with_shardings(abstract: Any, shardings: Any) -> Any:
  """ShapeDtypeStructs of `abstract` with `.sharding` set: the target for a sharded restore."""
  return jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), abstract, shardings)


def init_train_state(model_fn: Callable[[jax.Array], nnx.Module], optimizer: optax.GradientTransformation,
                     seed: int, *, mesh: Mesh | None = None, shardings: Shardings = None) -> StateSetup:
  """Builds the abstract train state, its shardings and a jitted, sharded init.

  Args:
    model_fn: key -> nnx.Module (e.g. `lambda key: MLP(..., rngs=nnx.Rngs(key))`); traced, never run eagerly.
    optimizer: the optax transformation (applied to `nnx.Param` variables only).
    seed: the run seed; the model init key and the step RNG key are derived from it.
    mesh: the device mesh for the default (replicated) shardings.
    shardings: see `Shardings`.

  Returns:
    A `StateSetup`; call `.init()` to materialize (or restore a checkpoint into `.abstract` instead).
  """
  if not isinstance(seed, int):
    raise ValueError(f"seed: expected an int, got {seed!r}")
  mesh = auto_axes(mesh)

  def init_fn() -> TrainState:
    init_key, train_key = jax.random.split(jax.random.PRNGKey(seed))
    model = model_fn(init_key)
    _, params, extra = nnx.split(model, nnx.Param, ...)
    return TrainState(step=jnp.zeros((), jnp.int32), params=params, extra=extra,
                      opt_state=optimizer.init(params), rng=train_key)

  graphdef = nnx.graphdef(nnx.eval_shape(lambda: model_fn(jax.random.PRNGKey(seed))))
  abstract = jax.eval_shape(init_fn)
  sharding_tree = resolve_shardings(abstract, shardings, mesh)
  jitted = jax.jit(init_fn, out_shardings=sharding_tree)
  return StateSetup(graphdef=graphdef, abstract=with_shardings(abstract, sharding_tree),
                    shardings=sharding_tree, init=jitted)


# loss_fn(model, batch, rng) -> (loss_total, weight, metrics): the loss SUMMED over the micro-batch's
# examples/tokens, the total weight it was summed over (the gradient is d(sum of totals)/d(params) divided by
# the sum of weights over all micro-batches, so accumulation is exact), and a metrics dict (see metrics.py).
LossFn = Callable[[nnx.Module, Any, jax.Array], tuple[jax.Array, jax.Array, dict[str, Any]]]


def _split_micro(batch: Any, num_micro: int) -> Any:
  """(B, ...) -> (num_micro, B / num_micro, ...) with example i in micro-batch i % num_micro.

  Strided (not contiguous) so every micro-batch stays spread over all devices of a batch-sharded axis.
  """
  def split(x):
    if x.shape[0] % num_micro:
      raise ValueError(f"batch: leading size {x.shape[0]} is not divisible by grad_accum_steps={num_micro}")
    return jnp.swapaxes(x.reshape(x.shape[0] // num_micro, num_micro, *x.shape[1:]), 0, 1)
  return jax.tree.map(split, batch)


StepFn = Callable[[TrainState, Any], tuple[TrainState, dict[str, Any]]]


def make_train_step(graphdef: nnx.GraphDef, loss_fn: LossFn, optimizer: optax.GradientTransformation, *,
                    grad_accum_steps: int = 1, schedule: optax.Schedule | None = None) -> StepFn:
  """A pure `step_fn(state, batch) -> (state, metrics)` for any algorithm given its `LossFn`.

  Gradient accumulation scans over `grad_accum_steps` strided micro-batches, sums loss totals, weights and
  gradients, and divides once; one call is one optimizer update. Metrics: `loss` = Avg(total, weight),
  `grad_norm` (after accumulation, before clipping), `learning_rate` if `schedule` is given, plus the
  loss_fn's own metrics merged over micro-batches.
  """
  if grad_accum_steps < 1:
    raise ValueError(f"grad_accum_steps: expected >= 1, got {grad_accum_steps}")

  def micro_grads(params, extra, batch, rng):
    def total_fn(p):
      # Re-wrapping gives Variables owned by the grad trace: NNX refuses to let the forward pass update
      # (e.g. nnx.Rngs counters) Variables created at the outer jit level.
      model = nnx.merge(graphdef, p, jax.tree.map(lambda v: v, extra))
      total, weight, metrics = loss_fn(model, batch, rng)
      _, _, new_extra = nnx.split(model, nnx.Param, ...)  # E.g. advanced nnx.Rngs counters.
      return total, (weight, metrics, new_extra)
    (total, (weight, metrics, new_extra)), grads = jax.value_and_grad(total_fn, has_aux=True)(params)
    weight = jnp.asarray(weight, jnp.float32)
    metrics = {k: metrics_lib.as_avg(v) for k, v in metrics.items()}
    metrics["loss"] = metrics_lib.Avg(total, weight)
    return grads, weight, metrics, new_extra

  def step_fn(state: TrainState, batch: Any) -> tuple[TrainState, dict[str, Any]]:
    step_rng = jax.random.fold_in(state.rng, state.step)
    if grad_accum_steps == 1:
      grads, weight, metrics, extra = micro_grads(state.params, state.extra, batch, step_rng)
    else:
      micro = _split_micro(batch, grad_accum_steps)

      def body(carry, xs):
        grads_acc, weight_acc, extra = carry
        i, mb = xs
        g, w, m, extra = micro_grads(state.params, extra, mb, jax.random.fold_in(step_rng, i))
        return (jax.tree.map(jnp.add, grads_acc, g), weight_acc + w, extra), m

      zeros = jax.tree.map(jnp.zeros_like, state.params)
      (grads, weight, extra), stacked = jax.lax.scan(
          body, (zeros, jnp.zeros((), jnp.float32), state.extra), (jnp.arange(grad_accum_steps), micro))
      metrics = metrics_lib.stack_reduce(stacked)
    grads = jax.tree.map(lambda g: g / jnp.maximum(weight, 1e-12).astype(g.dtype), grads)
    updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    metrics["grad_norm"] = optax.global_norm(grads)
    if schedule is not None:
      metrics["learning_rate"] = jnp.asarray(schedule(state.step), jnp.float32)
    new_state = state.replace(step=state.step + 1, params=params, extra=extra, opt_state=opt_state)
    return new_state, metrics

  return step_fn


def tree_all_finite(tree: Any) -> jax.Array:
  """True iff every floating leaf of `tree` is finite (a bool scalar; jit it for sharded trees)."""
  leaves = [jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree)
            if jnp.issubdtype(jnp.asarray(x).dtype, jnp.inexact)]
  return jnp.all(jnp.stack(leaves)) if leaves else jnp.asarray(True)
