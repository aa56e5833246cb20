"""A device mesh with axes (data, fsdp, tensor) built from config."""

import dataclasses
import math

import jax
import numpy as np
from jax.sharding import AxisType, Mesh

MESH_AXES = ("data", "fsdp", "tensor")


@dataclasses.dataclass(frozen=True)
class MeshConfig:
  """Mesh shape. One axis may be -1, meaning "all remaining devices".

  data: pure data parallelism (parameters replicated).
  fsdp: data parallelism with parameters and optimizer state sharded (ZeRO-3 style).
  tensor: tensor parallelism over heads / MLP width / vocabulary.
  """

  data: int = -1
  fsdp: int = 1
  tensor: int = 1

  def shape(self, num_devices: int) -> tuple[int, int, int]:
    """The concrete (data, fsdp, tensor) sizes for `num_devices` devices."""
    sizes = {name: getattr(self, name) for name in MESH_AXES}
    for name, size in sizes.items():
      if size == 0 or size < -1:
        raise ValueError(f"mesh.{name} must be a positive size or -1, got {size}")
    free = [name for name, size in sizes.items() if size == -1]
    if len(free) > 1:
      raise ValueError(f"at most one mesh axis may be -1, got {free}")
    fixed = math.prod(size for size in sizes.values() if size != -1)
    if free:
      if num_devices % fixed:
        raise ValueError(f"mesh axes {sizes} do not divide {num_devices} devices")
      sizes[free[0]] = num_devices // fixed
    elif fixed != num_devices:
      raise ValueError(f"mesh {sizes} needs {fixed} devices, but {num_devices} are in use")
    return tuple(sizes[name] for name in MESH_AXES)


def make_mesh(config: MeshConfig = MeshConfig(), devices=None) -> Mesh:
  """Builds the (data, fsdp, tensor) mesh over `devices` (default: all devices of all processes).

  The axes are `Auto`, so XLA propagates shardings inside jitted functions from the explicit
  in/out shardings we give at the jit boundary.
  """
  devices = list(jax.devices() if devices is None else devices)
  shape = config.shape(len(devices))
  if devices == list(jax.devices()):
    return jax.make_mesh(shape, MESH_AXES, axis_types=(AxisType.Auto,) * len(MESH_AXES))
  return Mesh(np.asarray(devices).reshape(shape), MESH_AXES,
              axis_types=(AxisType.Auto,) * len(MESH_AXES))
