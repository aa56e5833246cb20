"""stages.common.make_stage_mesh: a stage's mesh over its first num_devices devices, and the settings it refuses
(conftest.py gives 8 CPU devices)."""

import jax
import pytest

from jaxrlhf.config import ConfigError
from jaxrlhf.parallel.mesh import MeshConfig
from jaxrlhf.stages import common


def test_a_stage_mesh_takes_the_first_devices_or_all():
  assert common.make_stage_mesh(MeshConfig(), 0).devices.size == jax.device_count() == 8
  mesh = common.make_stage_mesh(MeshConfig(), 2)
  assert mesh.devices.size == 2 and set(mesh.devices.flat) == set(jax.devices()[:2])


def test_more_devices_than_exist_is_a_config_error():
  # A slice of the device list would silently give an 8-device mesh for num_devices = 16.
  with pytest.raises(ConfigError, match=r"num_devices: 16 devices asked for, but there are 8"):
    common.make_stage_mesh(MeshConfig(), 16)
