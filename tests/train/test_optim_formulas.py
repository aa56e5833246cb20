"""Optimizer updates and the generic train step against formulas written out by hand: schedules with a peak other
than 1 and a nonzero floor (optax's warmup_cosine_decay_schedule / linear_schedule definitions), SGD momentum
(optax.trace), AdamW's moments over two updates (Loshchilov & Hutter's Algorithm 2, the bias-corrected Adam of
Kingma & Ba), global-norm clipping, transformers' Adafactor decay on a schedule, and the train step's gradient
normalization, grad_norm, learning-rate metric and step keys."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from regression_data import ScalarLinear, squared_error_loss

from jaxrlhf.train import metrics as metrics_lib
from jaxrlhf.train.optim import OptimizerConfig, make_optimizer, make_schedule, weight_decay_mask
from jaxrlhf.train.state import init_train_state, make_train_step


def test_decay_floor_is_a_fraction_of_the_peak():
  """end_lr_factor is relative: the floor is learning_rate * end_lr_factor (the other schedule tests use a peak of
  1.0, where a floor of end_lr_factor itself would look the same)."""
  lin = make_schedule(OptimizerConfig(learning_rate=0.5, schedule="linear", decay_steps=4, end_lr_factor=0.2))
  np.testing.assert_allclose([float(lin(s)) for s in range(6)], [0.5, 0.4, 0.3, 0.2, 0.1, 0.1], atol=1e-6)
  cos = make_schedule(OptimizerConfig(learning_rate=2.0, schedule="cosine", warmup_steps=2, decay_steps=6,
                                      end_lr_factor=0.25))
  peak, end = 2.0, 0.5
  expected = [0.0, 1.0] + [end + (peak - end) * 0.5 * (1 + math.cos(math.pi * k / 4)) for k in range(5)] + [end]
  np.testing.assert_allclose([float(cos(s)) for s in range(8)], expected, atol=1e-6)


def test_sgd_momentum_accumulates_a_trace():
  """optax.trace (heavy ball, not Nesterov): t_k = g_k + momentum * t_{k-1}; update = -lr * t_k."""
  opt = make_optimizer(OptimizerConfig(name="sgd", learning_rate=0.1, momentum=0.5))
  p = {"w": jnp.array([1.0, 1.0])}
  g1, g2 = np.array([1.0, 2.0]), np.array([3.0, -1.0])
  state = opt.init(p)
  u1, state = opt.update({"w": jnp.asarray(g1)}, state, p)
  u2, _ = opt.update({"w": jnp.asarray(g2)}, state, p)
  np.testing.assert_allclose(u1["w"], -0.1 * g1, rtol=1e-6)
  np.testing.assert_allclose(u2["w"], -0.1 * (g2 + 0.5 * g1), rtol=1e-6)


def test_adamw_two_updates_match_the_bias_corrected_moments():
  """On the second update b1, b2 and eps all matter (on the first, m_hat / sqrt(v_hat) = sign(g) whatever they are)."""
  lr, b1, b2, eps, wd = 0.1, 0.8, 0.9, 0.1, 0.01
  opt = make_optimizer(OptimizerConfig(name="adamw", learning_rate=lr, b1=b1, b2=b2, eps=eps, weight_decay=wd))
  p = np.array([1.0, -2.0])
  g1, g2 = np.array([3.0, 4.0]), np.array([-1.0, 0.5])
  state = opt.init({"w": jnp.asarray(p)})
  u1, state = opt.update({"w": jnp.asarray(g1)}, state, {"w": jnp.asarray(p)})
  u2, _ = opt.update({"w": jnp.asarray(g2)}, state, {"w": jnp.asarray(p)})
  m, v = np.zeros(2), np.zeros(2)
  for k, (g, u) in enumerate(((g1, u1), (g2, u2)), 1):
    m = b1 * m + (1 - b1) * g
    v = b2 * v + (1 - b2) * g**2
    m_hat, v_hat = m / (1 - b1**k), v / (1 - b2**k)
    np.testing.assert_allclose(u["w"], -lr * (m_hat / (np.sqrt(v_hat) + eps) + wd * p), rtol=1e-5)


def test_global_norm_clipping_scales_large_gradients_only():
  """clip_by_global_norm: g * min(1, clip_norm / ||g||), before the optimizer (plain SGD shows it directly)."""
  opt = make_optimizer(OptimizerConfig(name="sgd", learning_rate=0.1, clip_norm=0.5))
  p = {"a": jnp.zeros(1), "b": jnp.zeros(1)}
  big = {"a": jnp.array([3.0]), "b": jnp.array([4.0])}  # Global norm 5 (over both leaves) -> scaled by 0.1.
  u, _ = opt.update(big, opt.init(p), p)
  np.testing.assert_allclose([u["a"][0], u["b"][0]], [-0.1 * 0.3, -0.1 * 0.4], rtol=1e-6)
  small = {"a": jnp.array([0.03]), "b": jnp.array([0.04])}  # Norm 0.05 < 0.5: unchanged.
  u, _ = opt.update(small, opt.init(p), p)
  np.testing.assert_allclose([u["a"][0], u["b"][0]], [-0.1 * 0.03, -0.1 * 0.04], rtol=1e-6)


def test_adafactor_decay_follows_the_schedule_over_updates():
  """transformers' Adafactor decays by lr_t * weight_decay * param, lr_t the schedule's value at update t: with zero
  gradients the updates are the decay alone, 0 during the first warmup update, then growing with the lr."""
  cfg = OptimizerConfig(name="adafactor", learning_rate=0.1, schedule="linear", warmup_steps=2, decay_steps=10,
                        weight_decay=0.5)
  lr = make_schedule(cfg)
  opt = make_optimizer(cfg)
  p = {"w": jnp.array([[1.0, -2.0], [0.5, 4.0]])}
  zeros = jax.tree.map(jnp.zeros_like, p)
  state = opt.init(p)
  for t in range(4):
    u, state = opt.update(zeros, state, p)
    np.testing.assert_allclose(u["w"], -float(lr(t)) * 0.5 * np.asarray(p["w"]), rtol=1e-5, atol=1e-9)
  assert [float(lr(t)) for t in range(3)] == pytest.approx([0.0, 0.05, 0.1])


def test_transformers_mask_reads_lower_cased_full_names():
  """transformers' Trainer matches "bias" and the norm names in the lower-cased full parameter name
  (`get_decay_parameter_names`): a "LayerNorm.weight" or a "Bias" is not decayed, nor is a kernel inside a module
  whose name says bias."""
  x = jnp.ones((2,))
  params = {"LayerNorm": {"weight": x}, "dense": {"Bias": x, "kernel": x}, "bias_proj": {"kernel": x},
            "embed": {"embedding": x}}
  mask = weight_decay_mask(params, "transformers")
  assert mask == {"LayerNorm": {"weight": False}, "dense": {"Bias": False, "kernel": True},
                  "bias_proj": {"kernel": False}, "embed": {"embedding": True}}


def test_step_applies_the_mean_gradient_at_the_scheduled_lr():
  """One step is params - lr_t * (gradient of the summed loss / summed weight), lr_t = schedule(update count);
  grad_norm is the norm of that mean gradient and `learning_rate` the lr applied in that update."""
  cfg = OptimizerConfig(name="sgd", learning_rate=0.1, warmup_steps=2)  # lr 0, 0.05, 0.1, ...
  opt = make_optimizer(cfg)
  setup = init_train_state(lambda key: ScalarLinear(3, nnx.Rngs(key)), opt, seed=0)
  step = jax.jit(make_train_step(setup.graphdef, squared_error_loss, opt, schedule=make_schedule(cfg)))
  rng = np.random.default_rng(0)
  batch = {"x": rng.normal(size=(8, 3)).astype(np.float32), "y": rng.normal(size=(8,)).astype(np.float32)}
  state = setup.init()
  for lr in (0.0, 0.05, 0.1):
    w = np.asarray(state.params["l"]["kernel"].value, np.float64)[:, 0]
    b = float(state.params["l"]["bias"].value[0])
    err = batch["x"] @ w + b - batch["y"]
    grad_w, grad_b = 2 * batch["x"].T @ err / 8, 2 * err.sum() / 8  # d mean(err^2)
    state, metrics = step(state, batch)
    values = metrics_lib.compute(metrics)
    assert values["learning_rate"] == pytest.approx(lr)
    np.testing.assert_allclose(values["grad_norm"], np.sqrt(np.sum(grad_w**2) + grad_b**2), rtol=1e-5)
    np.testing.assert_allclose(state.params["l"]["kernel"].value[:, 0], w - lr * grad_w, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(state.params["l"]["bias"].value[0], b - lr * grad_b, rtol=1e-5, atol=1e-6)


def _probe_loss(model, batch, rng):
  """A loss whose metrics show the key and the examples each (micro-)batch got."""
  total, weight, _ = squared_error_loss(model, batch, rng)
  u = jax.random.uniform(rng)
  return total, weight, {"u": u, "probe": metrics_lib.Sum(jnp.sum(batch["id"]) * (1.0 + u))}


@pytest.mark.parametrize("accum", [1, 2])
def test_step_keys_are_folded_from_the_update_count_and_micro_batches_are_strided(accum):
  """The documented keys: update k's loss gets fold_in(state.rng, k), micro-batch i of it fold_in(that key, i);
  micro-batch i holds examples i, i + A, i + 2A, ... (A = grad_accum_steps)."""
  opt = make_optimizer(OptimizerConfig(name="sgd", learning_rate=0.01))
  setup = init_train_state(lambda key: ScalarLinear(3, nnx.Rngs(key)), opt, seed=0)
  step = jax.jit(make_train_step(setup.graphdef, _probe_loss, opt, grad_accum_steps=accum))
  rng = np.random.default_rng(1)
  batch = {"x": rng.normal(size=(8, 3)).astype(np.float32), "y": rng.normal(size=(8,)).astype(np.float32),
           "id": np.arange(8, dtype=np.float32)}
  state = setup.init()
  base = state.rng
  for k in range(2):
    state, metrics = step(state, batch)
    key = jax.random.fold_in(base, k)
    keys = [key] if accum == 1 else [jax.random.fold_in(key, i) for i in range(accum)]
    us = [float(jax.random.uniform(kk)) for kk in keys]
    values = metrics_lib.compute(metrics)
    np.testing.assert_allclose(values["u"], np.mean(us), rtol=1e-6)
    ids = np.arange(8)
    want = sum(ids[i::accum].sum() * (1.0 + u) for i, u in enumerate(us))
    np.testing.assert_allclose(values["probe"], want, rtol=1e-6)
