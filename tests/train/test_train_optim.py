"""Schedules, optimizers and the generic train step (gradient accumulation) against hand-computed values."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx
from regression_data import ScalarLinear

from jaxrlhf.config import ConfigError
from jaxrlhf.train import metrics as metrics_lib
from jaxrlhf.train.optim import OptimizerConfig, make_optimizer, make_schedule
from jaxrlhf.train.state import init_train_state, make_train_step, tree_all_finite


def test_schedules_match_hand_computed_values():
  lin = make_schedule(OptimizerConfig(learning_rate=1.0, schedule="linear", warmup_steps=2, decay_steps=6,
                                      end_lr_factor=0.2))
  # Warmup 0 -> 1 over 2 steps, then linear 1 -> 0.2 over the remaining 4 steps, then flat.
  np.testing.assert_allclose([float(lin(s)) for s in range(8)], [0, 0.5, 1, 0.8, 0.6, 0.4, 0.2, 0.2], atol=1e-6)
  cos = make_schedule(OptimizerConfig(learning_rate=2.0, schedule="cosine", warmup_steps=1, decay_steps=5,
                                      end_lr_factor=0.0))
  expected = [0.0] + [2.0 * 0.5 * (1 + math.cos(math.pi * k / 4)) for k in range(5)]
  np.testing.assert_allclose([float(cos(s)) for s in range(6)], expected, atol=1e-6)
  const = make_schedule(OptimizerConfig(learning_rate=0.3, warmup_steps=3))
  np.testing.assert_allclose([float(const(s)) for s in range(5)], [0, 0.1, 0.2, 0.3, 0.3], atol=1e-6)


def test_adamw_with_clipping_matches_formula():
  cfg = OptimizerConfig(name="adamw", learning_rate=0.1, b1=0.9, b2=0.99, eps=1e-8, weight_decay=0.01,
                        clip_norm=1.0)
  opt = make_optimizer(cfg)
  p = {"w": jnp.array([1.0, -2.0])}
  g = {"w": jnp.array([3.0, 4.0])}  # Global norm 5 -> clipped to (0.6, 0.8).
  updates, _ = opt.update(g, opt.init(p), p)
  gc = np.array([0.6, 0.8])
  m, v = 0.1 * gc / 0.1, 0.01 * gc**2 / 0.01  # Bias-corrected first step.
  expected = -0.1 * (m / (np.sqrt(v) + 1e-8) + 0.01 * np.array([1.0, -2.0]))
  np.testing.assert_allclose(updates["w"], expected, rtol=1e-5)


def test_sgd_and_adafactor_build_and_step():
  for name in ("sgd", "adafactor"):
    opt = make_optimizer(OptimizerConfig(name=name, learning_rate=0.1, momentum=0.5))
    p = {"w": jnp.ones((4, 4))}
    updates, _ = opt.update({"w": jnp.ones((4, 4))}, opt.init(p), p)
    assert updates["w"].shape == (4, 4) and bool(jnp.all(updates["w"] < 0))


def _loss_fn(model, batch, rng):
  del rng
  err = model(batch["x"]) - batch["y"]
  n = jnp.asarray(err.shape[0], jnp.float32)
  return jnp.sum(err**2), n, {"abs": metrics_lib.Avg(jnp.sum(jnp.abs(err)), n), "n": metrics_lib.Sum(n)}


@pytest.mark.parametrize("accum", [2, 4])
def test_gradient_accumulation_equals_full_batch(accum):
  opt = make_optimizer(OptimizerConfig(name="sgd", learning_rate=0.1))
  setup = init_train_state(lambda key: ScalarLinear(3, nnx.Rngs(key)), opt, seed=0)
  rng = np.random.default_rng(0)
  batch = {"x": rng.normal(size=(8, 3)).astype(np.float32), "y": rng.normal(size=(8,)).astype(np.float32)}
  full = jax.jit(make_train_step(setup.graphdef, _loss_fn, opt))
  acc = jax.jit(make_train_step(setup.graphdef, _loss_fn, opt, grad_accum_steps=accum))
  s1, m1 = full(setup.init(), batch)
  s2, m2 = acc(setup.init(), batch)
  for a, b in zip(jax.tree.leaves(s1.params), jax.tree.leaves(s2.params)):
    np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)
  v1, v2 = metrics_lib.compute(m1), metrics_lib.compute(m2)
  # Hand-computed full-batch loss (mean squared error at the initial parameters).
  st = setup.init()
  w, bias = np.asarray(st.params["l"]["kernel"].value), np.asarray(st.params["l"]["bias"].value)
  err = batch["x"] @ w[:, 0] + bias[0] - batch["y"]
  for v in (v1, v2):
    np.testing.assert_allclose(v["loss"], np.mean(err**2), rtol=1e-5)
    np.testing.assert_allclose(v["abs"], np.mean(np.abs(err)), rtol=1e-5)
    assert v["n"] == 8.0
  assert int(s2.step) == 1


def test_accumulation_rejects_indivisible_batch():
  opt = make_optimizer(OptimizerConfig(name="sgd"))
  setup = init_train_state(lambda key: ScalarLinear(3, nnx.Rngs(key)), opt, seed=0)
  step = make_train_step(setup.graphdef, _loss_fn, opt, grad_accum_steps=3)
  with pytest.raises(ValueError, match="not divisible by grad_accum_steps=3"):
    step(setup.init(), {"x": np.zeros((8, 3), np.float32), "y": np.zeros((8,), np.float32)})


class _Drop(nnx.Module):

  def __init__(self, rngs):
    self.l = nnx.Linear(3, 1, rngs=rngs)
    self.d = nnx.Dropout(0.5, rngs=rngs)

  def __call__(self, x):
    return self.l(self.d(x))[:, 0]


@pytest.mark.parametrize("accum", [1, 2])
def test_forward_updated_rng_state_is_carried(accum):
  opt = make_optimizer(OptimizerConfig(name="sgd", learning_rate=0.0))
  setup = init_train_state(lambda key: _Drop(nnx.Rngs(key)), opt, seed=0)
  step = jax.jit(make_train_step(setup.graphdef, _loss_fn, opt, grad_accum_steps=accum))
  batch = {"x": np.ones((4, 3), np.float32), "y": np.zeros((4,), np.float32)}
  state = setup.init()
  counts = lambda s: [int(x) for x in jax.tree.leaves(s.extra) if x.dtype == jnp.uint32]
  assert counts(state) == [0]
  state, m1 = step(state, batch)
  state, m2 = step(state, batch)
  assert counts(state) == [2 * accum]  # One dropout draw per forward pass.
  # lr = 0: same weights and batch, so only a fresh dropout mask can change the loss.
  assert metrics_lib.compute(m1)["loss"] != metrics_lib.compute(m2)["loss"]
  assert bool(jax.jit(tree_all_finite)(state))


@pytest.mark.parametrize("schedule", ["linear", "cosine"])
def test_decaying_schedule_needs_updates_after_the_warmup(schedule):
  """warmup_steps == decay_steps leaves no decay: optax's linear schedule then stayed at the peak forever (never
  reaching end_lr_factor) and its cosine one refused to build with an optax error."""
  cfg = OptimizerConfig(learning_rate=1.0, schedule=schedule, warmup_steps=4, decay_steps=4, end_lr_factor=0.1)
  with pytest.raises(ConfigError, match=r"config.optimizer.warmup_steps: 4 must be less than "
                                        r"config.optimizer.decay_steps=4"):
    cfg.validate()
  with pytest.raises(ConfigError, match="must be less than"):
    make_schedule(cfg)
  # One update of decay: warmup 0 -> 1 over 4 steps, then the final value.
  lin = make_schedule(OptimizerConfig(learning_rate=1.0, schedule="linear", warmup_steps=4, decay_steps=5,
                                      end_lr_factor=0.1))
  np.testing.assert_allclose([float(lin(s)) for s in range(7)], [0, 0.25, 0.5, 0.75, 1.0, 0.1, 0.1], atol=1e-6)


class _Normed(nnx.Module):
  """A kernel, a bias, an embedding, an nnx LayerNorm (scale, bias) and a decoder-style norm scale."""

  def __init__(self, rngs):
    self.dense = nnx.Linear(3, 2, rngs=rngs)
    self.ln = nnx.LayerNorm(2, rngs=rngs)
    self.embed = nnx.Embed(5, 2, rngs=rngs)
    self.attn_norm_scale = nnx.Param(jnp.full((2,), 1.5))


@pytest.mark.parametrize("decay_mask", ["all", "transformers"])
@pytest.mark.parametrize("name", ["adamw", "sgd", "adafactor"])
def test_weight_decay_is_lr_times_rate_on_the_masked_parameters(name, decay_mask):
  """With zero gradients the whole update is the weight decay: -lr * weight_decay * param (AdamW's decoupled rule;
  transformers' Adafactor multiplies by the lr too, optax's did not: a 1 / lr times larger decay) on kernels and
  embeddings, and on biases and norm scales only with decay_mask "all" (transformers' Trainer excludes "bias" and
  "norm" parameters)."""
  lr, wd = 1e-2, 0.5
  opt = make_optimizer(OptimizerConfig(name=name, learning_rate=lr, weight_decay=wd, decay_mask=decay_mask))
  _, params, _ = nnx.split(_Normed(nnx.Rngs(0)), nnx.Param, ...)
  updates, _ = opt.update(jax.tree.map(jnp.zeros_like, params), opt.init(params), params)
  got = nnx.to_pure_dict(updates)
  p = nnx.to_pure_dict(params)
  for path in (("dense", "kernel"), ("embed", "embedding")):
    np.testing.assert_allclose(got[path[0]][path[1]], -lr * wd * np.asarray(p[path[0]][path[1]]), rtol=1e-5)
  for path in (("dense", "bias"), ("ln", "scale"), ("ln", "bias"), ("attn_norm_scale",)):
    want = -lr * wd * np.asarray(p[path[0]][path[1]] if len(path) == 2 else p[path[0]])
    value = got[path[0]][path[1]] if len(path) == 2 else got[path[0]]
    np.testing.assert_allclose(value, want if decay_mask == "all" else 0.0, rtol=1e-5, atol=0)


def test_the_default_decay_is_optax_adamw_on_every_parameter():
  """decay_mask "all" (the default, which the published runs used) gives optax.adamw's update exactly."""
  cfg = OptimizerConfig(learning_rate=0.1, weight_decay=0.01)
  _, params, _ = nnx.split(_Normed(nnx.Rngs(0)), nnx.Param, ...)
  grads = jax.tree.map(lambda x: jnp.cos(x) + 0.5, params)
  plain = optax.adamw(make_schedule(cfg), weight_decay=0.01)
  ours = make_optimizer(cfg)
  for a, b in zip(jax.tree.leaves(ours.update(grads, ours.init(params), params)[0]),
                  jax.tree.leaves(plain.update(grads, plain.init(params), params)[0])):
    np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("name", ["adamw", "sgd"])
def test_masked_decay_keeps_the_optimizer_state_of_optax_chain(name):
  """The mask lives inside the decay transformation, so the optimizer state has the structure of the plain optax
  chain (which checkpoints written before the mask hold) and those checkpoints still restore."""
  cfg = OptimizerConfig(name=name, learning_rate=0.1, weight_decay=0.01, clip_norm=1.0, decay_mask="transformers")
  plain = optax.adamw(make_schedule(cfg), b1=cfg.b1, b2=cfg.b2, eps=cfg.eps, weight_decay=0.01) if name == "adamw" \
      else optax.chain(optax.add_decayed_weights(0.01), optax.sgd(make_schedule(cfg)))
  plain = optax.chain(optax.clip_by_global_norm(1.0), plain)
  _, params, _ = nnx.split(_Normed(nnx.Rngs(0)), nnx.Param, ...)
  assert jax.tree.structure(make_optimizer(cfg).init(params)) == jax.tree.structure(plain.init(params))
  # Where the mask selects everything (no bias or norm), the update is the plain chain's.
  p = {"w": jnp.array([[1.0, -2.0]])}
  g = {"w": jnp.array([[3.0, 4.0]])}
  opt = make_optimizer(cfg)
  np.testing.assert_allclose(opt.update(g, opt.init(p), p)[0]["w"], plain.update(g, plain.init(p), p)[0]["w"],
                             rtol=1e-6)
