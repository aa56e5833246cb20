"""Peak host memory of `stages.common.overwrite` stacking one pretrained leaf K = 5 times (an ensemble's shared
backbone) into a state's (5, 8192, 6144) fp32 leaf (5 x 201 MB), on one CPU device. Run with the repository (or an
older checkout) first on PYTHONPATH:  PYTHONPATH=. python docs/bench/2026-12-06_overwrite/overwrite_rss.py"""
import resource

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jaxrlhf.stages import common


def peak_mib():
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


class Stack(nnx.Module):
  def __init__(self):
    self.members = nnx.Param(jnp.zeros((5, 8192, 6144), jnp.float32))


state = nnx.state(Stack())
leaf = np.ones((8192, 6144), np.float32)
jax.block_until_ready(state["members"][...])
before = peak_mib()
out = common.overwrite(state, {"members": leaf}, broadcast=5)
jax.block_until_ready(out["members"][...])
print(f"{common.__file__}: peak RSS {before:.0f} -> {peak_mib():.0f} MiB (+{peak_mib() - before:.0f}); "
      f"the new (5, 8192, 6144) leaf is {5 * leaf.nbytes / 2**20:.0f} MiB")
