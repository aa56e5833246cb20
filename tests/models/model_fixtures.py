"""Model helpers for tests/models: random models (shared, tests/random_models.py) and a jitted forward."""

from flax import nnx
from random_models import random_model  # noqa: F401  (re-exported for the tests of this folder)


@nnx.jit(static_argnames=("return_hidden",))
def forward(model, ids, mask=None, positions=None, return_hidden=False):
  """One compiled forward per shape (faster on these CPUs than op-by-op dispatch)."""
  return model(ids, mask, positions, return_hidden=return_hidden)
