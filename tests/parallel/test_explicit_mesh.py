"""Any mesh a user passes works, `jax.make_mesh` with its defaults (Explicit axes in this JAX) included:
from_pretrained, generate and train-state init give the same results as with the library's own Auto mesh."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from jaxrlhf.models import CausalLM, ModelConfig, from_pretrained, save_pretrained
from jaxrlhf.parallel import MeshConfig, make_mesh
from jaxrlhf.sampling import generate
from jaxrlhf.train import state as state_lib

CONFIG = ModelConfig(vocab_size=32, embed_dim=16, num_layers=2, num_heads=4, num_kv_heads=2, head_dim=4, mlp_dim=32)


def _explicit_mesh():
  mesh = jax.make_mesh((2, 2, 2), ("data", "fsdp", "tensor"))
  assert all(t == jax.sharding.AxisType.Explicit for t in mesh.axis_types)  # What users get by default.
  return mesh


def test_from_pretrained_and_generate_with_an_explicit_mesh(tmp_path):
  model = CausalLM(CONFIG, rngs=nnx.Rngs(0))
  save_pretrained(model, tmp_path)
  sharded, _ = from_pretrained(tmp_path, mesh=_explicit_mesh())
  up = sharded.layers.up_kernel[...]
  assert up.sharding.spec == jax.sharding.PartitionSpec(None, "fsdp", "tensor")
  ids = jnp.asarray([[1, 2, 3, 4]] * 8)
  np.testing.assert_allclose(sharded(ids), model(ids), atol=1e-5)
  prompt_mask = jnp.ones_like(ids)
  want = generate(model, ids, prompt_mask, max_new_tokens=4, greedy=True)
  got = generate(sharded, ids, prompt_mask, max_new_tokens=4, greedy=True, mesh=_explicit_mesh())
  np.testing.assert_array_equal(got.tokens, want.tokens)


def test_train_state_init_on_an_explicit_mesh_equals_the_auto_mesh():
  def model_fn(key):
    return CausalLM(CONFIG, rngs=nnx.Rngs(key))

  explicit = state_lib.init_train_state(model_fn, optax.adam(1e-3), 0, mesh=_explicit_mesh(),
                                        shardings=state_lib.logical_shardings(_explicit_mesh())).init()
  auto_mesh = make_mesh(MeshConfig(data=2, fsdp=2, tensor=2))
  auto = state_lib.init_train_state(model_fn, optax.adam(1e-3), 0, mesh=auto_mesh,
                                    shardings=state_lib.logical_shardings(auto_mesh)).init()
  for a, b in zip(jax.tree.leaves(explicit.params), jax.tree.leaves(auto.params)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert a.sharding.spec == b.sharding.spec
