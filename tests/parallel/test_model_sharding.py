"""Models on 8 CPU devices: sharded logits / rewards equal the single-device result, and each device holds
its expected share of the parameters."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jaxrlhf.models.config import ModelConfig
from jaxrlhf.models.decoder import CausalLM
from jaxrlhf.models.heads import HeadConfig
from jaxrlhf.models.reward_model import RewardEnsemble, RewardModel
from jaxrlhf.parallel import MeshConfig, batch_sharding, init_sharded, make_mesh

CONFIG = ModelConfig(vocab_size=128, embed_dim=32, num_layers=2, num_heads=8, num_kv_heads=4, head_dim=8,
                     mlp_dim=64, tie_word_embeddings=False)
MESH_SHAPES = [(8, 1, 1), (2, 4, 1), (2, 2, 2), (1, 1, 8)]


def _batch():
  ids = jax.random.randint(jax.random.key(3), (8, 12), 0, CONFIG.vocab_size)
  mask = jnp.ones((8, 12), bool).at[:4, -3:].set(False).at[4:, :2].set(False)  # right and left padding
  return ids, mask


class _Models(nnx.Module):
  """The three model kinds in one module, so each mesh compiles one initializer and one forward."""

  def __init__(self):
    self.lm = CausalLM(CONFIG, rngs=nnx.Rngs(0))
    self.rm = RewardModel(CONFIG, HeadConfig("mlp"), rngs=nnx.Rngs(1))
    self.ensemble = RewardEnsemble(CONFIG, HeadConfig("linear"), 4, rngs=nnx.Rngs(2))


@nnx.jit
def _forward(models, ids, mask):
  return {"lm": models.lm(ids, mask), "rm": models.rm(ids, mask), "ensemble": models.ensemble(ids, mask)}


@pytest.fixture(scope="module")
def references():
  ids, mask = _batch()
  return jax.tree.map(np.asarray, _forward(_Models(), ids, mask))


@pytest.mark.parametrize("shape", MESH_SHAPES)
def test_sharded_outputs_equal_single_device(shape, references):
  mesh = make_mesh(MeshConfig(*shape))
  ids, mask = _batch()
  models = init_sharded(_Models, mesh)
  outputs = _forward(models, jax.device_put(ids, batch_sharding(mesh, 2)),
                     jax.device_put(mask, batch_sharding(mesh, 2)))
  for name, out in outputs.items():
    real = np.asarray(mask) if name == "lm" else slice(None)
    np.testing.assert_allclose(np.asarray(out)[real], references[name][real], atol=1e-5, rtol=1e-5,
                               err_msg=name)

  # Each device holds its share: vocab and heads split over "tensor", the model width over "fsdp".
  _, fsdp, tensor = shape
  lm = models.lm
  expected = {
      "embed": (CONFIG.vocab_size // tensor, CONFIG.embed_dim // fsdp),
      "lm_head": (CONFIG.embed_dim // fsdp, CONFIG.vocab_size // tensor),
  }
  for name, shard_shape in expected.items():
    array = getattr(lm, name)[...]
    assert {s.data.shape for s in array.addressable_shards} == {shard_shape}, name
  state = nnx.state(lm)
  total = sum(x.size for x in jax.tree.leaves(state))
  per_device = {d: 0 for d in jax.devices()}
  for leaf in jax.tree.leaves(state):
    for s in leaf.addressable_shards:
      per_device[s.device] += s.data.size
  # Parameters are never all on one device once the mesh shards them.
  if fsdp * tensor > 1:
    assert max(per_device.values()) < total
