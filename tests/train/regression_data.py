"""A tiny regression task for loop and checkpoint tests: resumable batches and a squared-error loss."""

import jax.numpy as jnp
import numpy as np
from flax import nnx


class ScalarLinear(nnx.Module):
  """x (B, in_dim) -> (B,): one nnx.Linear to a single output, the model of the train-step and loop tests."""

  def __init__(self, in_dim: int, rngs: nnx.Rngs):
    self.l = nnx.Linear(in_dim, 1, rngs=rngs)

  def __call__(self, x):
    return self.l(x)[:, 0]


class RegressionBatches:
  """Endless batches of 16 of 64 fixed (x (8,), y = sin(sum x)) rows, a seeded permutation per batch; the state is
  the number served, so a resumed iterator continues exactly."""

  def __init__(self):
    rng = np.random.default_rng(0)
    self.x = rng.normal(size=(64, 8)).astype(np.float32)
    self.y = np.sin(self.x.sum(-1)).astype(np.float32)
    self.index = 0

  def __next__(self):
    idx = np.random.default_rng([1, self.index]).permutation(64)[:16]
    self.index += 1
    return {"x": self.x[idx], "y": self.y[idx]}

  def get_state(self):
    return {"index": self.index}

  def set_state(self, state):
    self.index = int(state["index"])


def squared_error_loss(model, batch, rng):
  """(sum of squared errors, number of rows, no metrics): a `state_lib.LossFn`."""
  del rng
  err_B = model(batch["x"]) - batch["y"]
  return jnp.sum(err_B**2), jnp.asarray(err_B.shape[0], jnp.float32), {}
