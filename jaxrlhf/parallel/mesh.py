"""A device mesh with axes (data, fsdp, tensor) built from config."""

import dataclasses
import math

import jax
import numpy as np
from jax.sharding import AxisType, Mesh

from jaxrlhf.config import ConfigError
from jaxrlhf.parallel import distributed

MESH_AXES = ("data", "fsdp", "tensor")


@dataclasses.dataclass(frozen=True)
class MeshConfig:
  """Mesh shape. One axis may be -1, meaning "all remaining devices".

  data: pure data parallelism (parameters replicated).
  fsdp: data parallelism with parameters and optimizer state sharded (ZeRO-3 style).
  tensor: tensor parallelism over heads / MLP width / vocabulary.
  The mesh spans the devices of ALL processes of a multi-process run (data * fsdp * tensor = global count).

  Multi-process settings (see `jaxrlhf.parallel.distributed`; all default to "not set here", and the
  environment or a single process applies):
  coordinator_address: "host:port" of process 0's coordinator, or "auto" (JAX's cluster detection: TPU pod
    slices, SLURM, Open MPI, Kubernetes).
  num_processes, process_id: required with an explicit address (0 / -1: unset); an error without an address.
  local_device_ids: the devices this process drives (e.g. (0,) for one process per GPU); (): all visible. Also
    applies to an address from the environment (JAX_COORDINATOR_ADDRESS, SLURM); an error in a single process.
  """

  data: int = -1
  fsdp: int = 1
  tensor: int = 1
  coordinator_address: str = ""
  num_processes: int = 0
  process_id: int = -1
  local_device_ids: tuple[int, ...] = ()

  def validate(self, path: str = "config.mesh") -> None:
    """Checks the axis sizes and the multi-process keys without touching JAX (raises ConfigError)."""
    for name in MESH_AXES:
      size = getattr(self, name)
      if size == 0 or size < -1:
        raise ConfigError(f"{path}.{name}: must be a positive size or -1, got {size}")
    if [getattr(self, n) for n in MESH_AXES].count(-1) > 1:
      raise ConfigError(f"{path}: at most one of data/fsdp/tensor may be -1")
    try:  # The multi-process keys (the environment is read later, by `distributed.resolve`).
      if self.coordinator_address:
        distributed.resolve([self], environ={})
      else:
        distributed.check_without_address(self)
    except ValueError as e:
      raise ConfigError(f"{path}.{str(e).removeprefix('mesh.')}") from e

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
  if not devices or len(set(devices)) != len(devices):
    raise ValueError(f"devices: expected distinct devices, at least one, got {devices}")
  shape = config.shape(len(devices))
  if devices == list(jax.devices()):
    return jax.make_mesh(shape, MESH_AXES, axis_types=(AxisType.Auto,) * len(MESH_AXES))
  return Mesh(np.asarray(devices).reshape(shape), MESH_AXES,
              axis_types=(AxisType.Auto,) * len(MESH_AXES))
