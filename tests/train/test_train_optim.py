"""Schedules, optimizers and the generic train step (gradient accumulation) against hand-computed values."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

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


class _Lin(nnx.Module):

  def __init__(self, rngs):
    self.l = nnx.Linear(3, 1, rngs=rngs)

  def __call__(self, x):
    return self.l(x)[:, 0]


def _loss_fn(model, batch, rng):
  del rng
  err = model(batch["x"]) - batch["y"]
  n = jnp.asarray(err.shape[0], jnp.float32)
  return jnp.sum(err**2), n, {"abs": metrics_lib.Avg(jnp.sum(jnp.abs(err)), n), "n": metrics_lib.Sum(n)}


@pytest.mark.parametrize("accum", [2, 4])
def test_gradient_accumulation_equals_full_batch(accum):
  opt = make_optimizer(OptimizerConfig(name="sgd", learning_rate=0.1))
  setup = init_train_state(lambda key: _Lin(nnx.Rngs(key)), opt, seed=0)
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
  setup = init_train_state(lambda key: _Lin(nnx.Rngs(key)), opt, seed=0)
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
