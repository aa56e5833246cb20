"""jaxrlhf: reward modeling and preference alignment of language models in JAX."""

from flax import nnx as _nnx

# Parameters carry logical axis names, and shardings are applied by `jax.jit(out_shardings=...)` from
# jaxrlhf.parallel (abstract init first). Flax's eager sharding would instead demand a mesh context at every
# Variable creation, so it is turned off for the whole library.
_nnx.use_eager_sharding(False)

__version__ = "0.1.0"
