"""Mesh construction, logical-axis rules and sharded init on 8 CPU devices."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from jax.sharding import PartitionSpec as P

from jaxrlhf.parallel import MeshConfig, batch_sharding, init_sharded, logical_to_spec, make_mesh

MESH_SHAPES = [(8, 1, 1), (2, 4, 1), (2, 2, 2), (1, 1, 8)]


class _Toy(nnx.Module):

  def __init__(self, rngs: nnx.Rngs):
    self.w_DxF = nnx.Param(jax.random.normal(rngs.params(), (16, 32)), out_sharding=("embed", "mlp"))
    self.kv_3xH = nnx.Param(jnp.ones((3, 8)), out_sharding=("kv_heads", "head_dim"))
    self.bias = nnx.Param(jnp.zeros((32,)))


@pytest.mark.parametrize("config, expected", [
    (MeshConfig(), (8, 1, 1)),
    (MeshConfig(data=2, fsdp=-1), (2, 4, 1)),
    (MeshConfig(data=1, fsdp=1, tensor=-1), (1, 1, 8)),
    (MeshConfig(data=2, fsdp=2, tensor=2), (2, 2, 2)),
])
def test_mesh_shape_resolves_minus_one(config, expected):
  assert config.shape(8) == expected
  assert tuple(make_mesh(config).shape.values()) == expected


@pytest.mark.parametrize("config, message", [
    (MeshConfig(data=-1, fsdp=-1), "at most one"),
    (MeshConfig(data=3), "needs 3 devices"),
    (MeshConfig(data=-1, fsdp=3), "do not divide"),
    (MeshConfig(data=0), "mesh.data"),
])
def test_bad_mesh_config_names_the_axis(config, message):
  with pytest.raises(ValueError, match=message):
    config.shape(8)


@pytest.mark.parametrize("devices", [[], jax.devices()[:4] * 2])
def test_make_mesh_rejects_empty_or_repeated_devices(devices):
  with pytest.raises(ValueError, match="devices: expected distinct devices, at least one"):
    make_mesh(MeshConfig(), devices)


def test_logical_rules_drop_non_dividing_and_reused_axes():
  mesh = make_mesh(MeshConfig(data=2, fsdp=2, tensor=2))
  assert logical_to_spec(("embed", "mlp"), shape=(16, 32), mesh=mesh) == P("fsdp", "tensor")
  # 3 KV heads cannot be split 2 ways: replicated rather than failing.
  assert logical_to_spec(("kv_heads", "head_dim"), shape=(3, 8), mesh=mesh) == P(None, None)
  # "heads" and "mlp" both map to tensor; it is used once.
  assert logical_to_spec(("heads", "mlp"), shape=(4, 4), mesh=mesh) == P("tensor", None)
  with pytest.raises(ValueError, match="no sharding rule"):
    logical_to_spec(("nonsense",))


def test_logical_rules_fit_user_meshes_without_some_library_axes():
  """A user's mesh may leave out data / fsdp / tensor: those shard nothing (no KeyError), the others still do."""
  data_only = jax.make_mesh((8,), ("data",))
  assert logical_to_spec(("embed", "mlp"), shape=(16, 32), mesh=data_only) == P(None, None)
  assert logical_to_spec(("batch", None), shape=(8, 3), mesh=data_only) == P("data", None)
  fsdp_tensor = jax.make_mesh((4, 2), ("fsdp", "tensor"))
  assert logical_to_spec(("embed", "mlp"), shape=(16, 32), mesh=fsdp_tensor) == P("fsdp", "tensor")
  assert logical_to_spec(("batch", "embed"), shape=(8, 16), mesh=fsdp_tensor) == P("fsdp", None)
  # A custom rule naming an axis that is neither the mesh's nor the library's (a typo) fails loudly.
  with pytest.raises(ValueError, match=r"logical axis 'embed'.*\['fdsp'\]"):
    logical_to_spec(("embed",), rules=(("embed", "fdsp"),), shape=(16,), mesh=fsdp_tensor)
  plain = _Toy(nnx.Rngs(0))
  for mesh, shard_shape in ((data_only, (16, 32)), (fsdp_tensor, (4, 16))):
    sharded = init_sharded(lambda: _Toy(nnx.Rngs(0)), mesh)
    np.testing.assert_array_equal(np.asarray(sharded.w_DxF[...]), np.asarray(plain.w_DxF[...]))
    assert {s.data.shape for s in sharded.w_DxF[...].addressable_shards} == {shard_shape}


def test_logical_rules_without_a_mesh_never_repeat_a_mesh_axis():
  """A PartitionSpec may name a mesh axis once: the second dimension mapped to it is replicated."""
  assert logical_to_spec(("heads", "mlp")) == P("tensor", None)
  assert logical_to_spec(("batch", "embed")) == P(("data", "fsdp"), None)
  assert logical_to_spec(("embed", "mlp")) == P("fsdp", "tensor")


@pytest.mark.parametrize("shape", MESH_SHAPES)
def test_init_sharded_places_each_share_and_matches_plain_init(shape):
  mesh = make_mesh(MeshConfig(*shape))
  sharded = init_sharded(lambda: _Toy(nnx.Rngs(0)), mesh)
  plain = _Toy(nnx.Rngs(0))
  np.testing.assert_array_equal(np.asarray(sharded.w_DxF[...]), np.asarray(plain.w_DxF[...]))
  _, fsdp, tensor = shape
  for shard in sharded.w_DxF[...].addressable_shards:
    assert shard.data.shape == (16 // fsdp, 32 // tensor)
  assert sharded.kv_3xH[...].sharding.spec == P(None, None)


def test_batch_sharding_splits_leading_axis():
  mesh = make_mesh(MeshConfig(data=2, fsdp=4))
  x = jax.device_put(jnp.arange(16 * 3).reshape(16, 3), batch_sharding(mesh, 2))
  assert {s.data.shape for s in x.addressable_shards} == {(2, 3)}
  assert batch_sharding(mesh, 3, axis=1).spec == P(None, ("data", "fsdp"), None)
  with pytest.raises(ValueError, match="axis must be >= 0"):
    batch_sharding(mesh, axis=-1)  # Was P(("data", "fsdp")): axis 0 of every array, not the last.
