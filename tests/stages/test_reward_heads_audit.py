"""Audit of the reward_heads stage's rules that the main tests leave open: the feature iterator's epochs are the
documented per-member permutations (every pair once per epoch, a fresh order each epoch), ties are wrong in the
training accuracy, and the stacked step's member metrics (per-member losses, example counts per member)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jaxrlhf.models.heads import HeadConfig
from jaxrlhf.stages import reward_heads
from jaxrlhf.train import optim


def test_feature_iterator_epochs_are_the_documented_permutations():
  # Member k reads epoch e in the order np.random.default_rng([seed + k, e]).permutation(N), batch after batch;
  # N = 8 with batches of 4 is exactly two batches per epoch (no pair left out, none read twice).
  n, seed = 8, 3
  chosen = np.arange(n, dtype=np.float32)[:, None]
  it = reward_heads.FeatureIterator(chosen, -chosen, np.zeros(n), batch_size=4, seed=seed, num_members=2)
  rows = np.concatenate([next(it)["chosen_features"][:, :, 0] for _ in range(4)], axis=1).astype(int)  # (K, 16)
  for k in range(2):
    want = np.concatenate([np.random.default_rng([seed + k, e]).permutation(n) for e in (0, 1)])
    np.testing.assert_array_equal(rows[k], want)
  assert not np.array_equal(rows[0, :8], rows[0, 8:])  # a fresh order in the second epoch
  assert it.get_state() == {"epoch": 1, "pos": 8}


def test_training_accuracy_counts_tied_rewards_as_wrong():
  head = reward_heads.RewardHead(6, HeadConfig(), rngs=nnx.Rngs(0))
  f = np.random.default_rng(0).normal(size=(4, 6)).astype(np.float32)
  batch = {"chosen_features": f, "rejected_features": f.copy(), "margin": np.full(4, np.nan, np.float32),
           "weight": np.ones(4, np.float32)}
  total, weight, metrics = reward_heads.head_loss_fn(reward_heads.HeadLossConfig())(
      head, jax.tree.map(jnp.asarray, batch), None)
  assert float(total / weight) == pytest.approx(np.log(2.0), rel=1e-6)  # -log sigmoid(0)
  assert float(metrics["rewards/accuracy"].total) == 0.0


def test_stacked_step_reports_each_members_loss_and_examples_per_member():
  k_members, b, d = 2, 4, 6
  head = HeadConfig()
  opt_cfg = optim.OptimizerConfig(learning_rate=1e-2)
  setup = reward_heads.heads_setup(d, head, k_members, optim.make_optimizer(opt_cfg), 0, None)
  graphdef = nnx.graphdef(reward_heads.RewardHead(d, head, rngs=nnx.Rngs(0)))
  loss_fn = reward_heads.head_loss_fn(reward_heads.HeadLossConfig())
  step = jax.jit(reward_heads.make_heads_step(graphdef, loss_fn, opt_cfg, k_members))
  rng = np.random.default_rng(1)
  batch = {"chosen_features": rng.normal(size=(k_members, b, d)).astype(np.float32),
           "rejected_features": rng.normal(size=(k_members, b, d)).astype(np.float32),
           "margin": np.full((k_members, b), np.nan, np.float32), "weight": np.ones((k_members, b), np.float32)}
  state = setup.init()
  stacked = reward_heads.stacked_heads(d, head, k_members, 0)
  new_state, metrics = step(state, batch)
  assert int(new_state.step) == 1
  losses = []
  for k in range(k_members):  # member k's loss on its own batch, before the update
    member = nnx.merge(graphdef, jax.tree.map(lambda x: x[k], nnx.state(stacked)))
    total, weight, _ = loss_fn(member, jax.tree.map(lambda x: jnp.asarray(x[k]), batch), None)
    losses.append(float(total / weight))
    got = metrics[f"members/loss_{k}"]
    assert float(got.total / got.count) == pytest.approx(losses[-1], rel=1e-5)
  assert float(metrics["loss"].total / metrics["loss"].count) == pytest.approx(np.mean(losses), rel=1e-5)
  # Every member reads B pairs per step: the example count is per member, not K * B.
  assert float(metrics["examples"].value) == b


def test_member_heads_have_their_own_documented_init():
  # Member k: RewardHead(..., rngs=nnx.Rngs(fold_in(PRNGKey(seed), k))) (the module docstring's rule), so the K
  # heads start apart.
  head = HeadConfig(kind="mlp", hidden_dim=4)
  stacked = nnx.to_pure_dict(nnx.state(reward_heads.stacked_heads(6, head, 3, seed=5)))
  for k in range(3):
    alone = reward_heads.RewardHead(6, head, rngs=nnx.Rngs(jax.random.fold_in(jax.random.PRNGKey(5), k)))
    for got, want in zip(jax.tree.leaves(stacked), jax.tree.leaves(nnx.to_pure_dict(nnx.state(alone)))):
      np.testing.assert_array_equal(np.asarray(got)[k], np.asarray(want))
  kernel = np.asarray(stacked["hidden_kernel"])
  assert not np.allclose(kernel[0], kernel[1]) and not np.allclose(kernel[1], kernel[2])
