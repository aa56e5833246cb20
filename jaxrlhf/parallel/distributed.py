"""Multi-process (multi-host) setup through JAX's own distributed runtime, and process-0 helpers.

One process runs per host (TPU pod worker, GPU node) or per GPU; together they see one global device list and
one global mesh. `initialize` calls `jax.distributed.initialize` once, before any JAX computation, with settings
from the config (the `mesh` section, see `MeshConfig`) or else from the environment:

  config   mesh.coordinator_address = "host:port" (+ mesh.num_processes, mesh.process_id,
           optional mesh.local_device_ids), or "auto": JAX's cluster detection (Cloud TPU pod slices, SLURM,
           Open MPI, Kubernetes); mesh.local_device_ids alone also applies to an address from the environment;
  env      JAX_COORDINATOR_ADDRESS + JAX_NUM_PROCESSES + JAX_PROCESS_ID (+ JAX_LOCAL_DEVICE_IDS="0,1"),
           JAX_COORDINATOR_ADDRESS=auto, or an srun job step with more than one task (SLURM_STEP_NUM_TASKS > 1;
           JAX then gives each task the GPU SLURM_LOCALID unless local device ids are set);
  neither  a single process: nothing is initialized.

`is_primary()` (process 0) gates every file that must be written once (metrics.jsonl, results.json, DONE
files, summaries); `barrier(name)` lets the other processes wait until process 0's files are complete;
`host_copy(tree)` gives every process whole numpy copies of arrays sharded across processes (saving a model that
FSDP or tensor parallelism splits over hosts).
"""

from __future__ import annotations

import dataclasses
import os
from typing import Mapping, Sequence

import jax

AUTO = "auto"
ENV_ADDRESS = "JAX_COORDINATOR_ADDRESS"
ENV_NUM_PROCESSES = "JAX_NUM_PROCESSES"
ENV_PROCESS_ID = "JAX_PROCESS_ID"
ENV_LOCAL_DEVICE_IDS = "JAX_LOCAL_DEVICE_IDS"
# What jax's SLURM cluster detection reads (jax/_src/clusters/slurm_cluster.py).
_SLURM_KEYS = ("SLURM_JOB_ID", "SLURM_STEP_NODELIST", "SLURM_NTASKS", "SLURM_PROCID", "SLURM_LOCALID")


@dataclasses.dataclass(frozen=True)
class DistributedSettings:
  """Resolved arguments of `jax.distributed.initialize` (None: JAX detects it from the cluster).

  source: where they came from ("config", "env", "slurm"), for the log line and error messages.
  """
  coordinator_address: str | None
  num_processes: int | None
  process_id: int | None
  local_device_ids: tuple[int, ...] | None
  source: str

  @property
  def auto(self) -> bool:
    return self.coordinator_address is None


def _from_fields(address: str, num_processes: int, process_id: int, local_device_ids: Sequence[int],
                 source: str, names: Mapping[str, str]) -> DistributedSettings:
  """Validates explicit settings; `names` maps each argument to the key that set it (for messages)."""
  ids = tuple(int(i) for i in local_device_ids) or None
  if ids is not None and min(ids) < 0:
    raise ValueError(f"{names['local_device_ids']}: expected device ids >= 0, got {list(ids)}")
  if address == AUTO:
    # JAX's cluster detection fills in what is left unset (0 / -1); what is set must still be consistent.
    if num_processes < 0:
      raise ValueError(f"{names['num_processes']}: expected >= 1 (or 0: unset) with {names['address']}='auto', "
                       f"got {num_processes}")
    if process_id < -1 or (num_processes and process_id >= num_processes):
      raise ValueError(f"{names['process_id']}: expected an id in [0, {num_processes or 'num_processes'}) (or -1: "
                       f"unset) with {names['address']}='auto', got {process_id}")
    return DistributedSettings(None, num_processes or None, process_id if process_id >= 0 else None, ids, source)
  host, _, port = address.rpartition(":")
  if not host or not port.isdigit() or not 0 < int(port) < 65536:
    raise ValueError(f"{names['address']}: expected 'host:port' (port 1-65535) or 'auto', got {address!r}")
  if num_processes < 1:
    raise ValueError(f"{names['num_processes']}: required (>= 1) with {names['address']}={address!r}, "
                     f"got {num_processes}")
  if not 0 <= process_id < num_processes:
    raise ValueError(f"{names['process_id']}: expected an id in [0, {num_processes}) with "
                     f"{names['address']}={address!r}, got {process_id}")
  return DistributedSettings(address, num_processes, process_id, ids, source)


def _int_env(environ: Mapping[str, str], key: str, default: int) -> int:
  value = environ.get(key, "")
  if not value:
    return default
  try:
    return int(value)
  except ValueError as e:
    raise ValueError(f"environment variable {key}: expected an integer, got {value!r}") from e


def resolve(mesh_configs: Sequence[object] = (), environ: Mapping[str, str] | None = None
            ) -> DistributedSettings | None:
  """The distributed settings of this process, or None for a single-process run.

  Args:
    mesh_configs: the `MeshConfig`s of the run's stages; the ones that set `coordinator_address` must agree
      (they describe one set of processes).
    environ: the environment (default `os.environ`).

  Raises:
    ValueError: naming the config key or environment variable that is malformed or inconsistent.
  """
  environ = os.environ if environ is None else environ
  chosen, config_ids = None, None
  for i, mesh in enumerate(mesh_configs):
    address = getattr(mesh, "coordinator_address", "")
    if not address:
      check_without_address(mesh)
      # Local device ids alone go with the environment's (or SLURM's) address (docs/multihost.md).
      ids = tuple(int(x) for x in getattr(mesh, "local_device_ids", ()))
      if ids and config_ids is not None and ids != config_ids:
        raise ValueError(f"mesh.local_device_ids: stage {i} sets {list(ids)}, an earlier stage "
                         f"{list(config_ids)}; all stages run in the same processes")
      config_ids = ids or config_ids
      continue
    names = {k: f"mesh.{k}" for k in ("num_processes", "process_id", "local_device_ids")}
    names["address"] = "mesh.coordinator_address"
    settings = _from_fields(address, mesh.num_processes, mesh.process_id, mesh.local_device_ids, "config", names)
    if chosen is not None and settings != chosen:
      raise ValueError(f"mesh.coordinator_address/num_processes/process_id/local_device_ids: stage {i} sets "
                       f"{settings}, an earlier stage {chosen}; all stages run in the same processes")
    chosen = settings
  if chosen is not None:
    if config_ids is not None and config_ids != (chosen.local_device_ids or ()):
      raise ValueError(f"mesh.local_device_ids: a stage without mesh.coordinator_address sets {list(config_ids)}, "
                       f"the stage with it {list(chosen.local_device_ids or ())}; all stages run in the same "
                       f"processes")
    return chosen
  address = environ.get(ENV_ADDRESS, "")
  raw_ids = environ.get(ENV_LOCAL_DEVICE_IDS, "")
  try:
    ids = tuple(int(x) for x in raw_ids.split(",") if x.strip())
  except ValueError as e:
    raise ValueError(f"environment variable {ENV_LOCAL_DEVICE_IDS}: expected comma-separated device ids like "
                     f"'0,1', got {raw_ids!r}") from e
  ids_key = ENV_LOCAL_DEVICE_IDS
  if config_ids is not None:
    if ids and ids != config_ids:
      raise ValueError(f"mesh.local_device_ids={list(config_ids)} and environment variable {ENV_LOCAL_DEVICE_IDS}="
                       f"{raw_ids!r} disagree; set one of them")
    ids, ids_key = config_ids, "mesh.local_device_ids"
  if address:
    return _from_fields(address, _int_env(environ, ENV_NUM_PROCESSES, 0), _int_env(environ, ENV_PROCESS_ID, -1),
                        ids, "env", {"address": ENV_ADDRESS, "num_processes": ENV_NUM_PROCESSES,
                                     "process_id": ENV_PROCESS_ID, "local_device_ids": ids_key})
  # An srun job step of several tasks (not the batch script itself, which runs once): JAX's SLURM detection.
  if _int_env(environ, "SLURM_STEP_NUM_TASKS", 1) > 1 and all(k in environ for k in _SLURM_KEYS):
    return DistributedSettings(None, None, None, ids or None, "slurm")
  if config_ids is not None:
    raise ValueError(f"mesh.local_device_ids: set to {list(config_ids)}, but this is a single-process run (no "
                     f"mesh.coordinator_address, {ENV_ADDRESS} or srun step of several tasks), where it would be "
                     f"ignored")
  return None


def check_without_address(mesh: object) -> None:
  """ValueError if a `MeshConfig` without `coordinator_address` sets keys that only go with one.

  num_processes / process_id would silently give way to the environment's (or to a single process); local device
  ids must be >= 0 (they are used with an address from the environment, see `resolve`).
  """
  stray = [k for k, unset in (("num_processes", 0), ("process_id", -1)) if getattr(mesh, k, unset) != unset]
  if stray:
    raise ValueError(f"mesh.{stray[0]}: set without mesh.coordinator_address, so it would be ignored; set "
                     f"mesh.coordinator_address ('host:port' or 'auto') too, or leave the process count and id to "
                     f"the environment ({ENV_ADDRESS}, {ENV_NUM_PROCESSES}, {ENV_PROCESS_ID})")
  ids = [int(x) for x in getattr(mesh, "local_device_ids", ())]
  if ids and min(ids) < 0:
    raise ValueError(f"mesh.local_device_ids: expected device ids >= 0, got {ids}")


def initialize(settings: DistributedSettings | None) -> bool:
  """Calls `jax.distributed.initialize` with `settings` (no-op for None or when already initialized).

  Must run before any JAX computation (JAX raises RuntimeError otherwise). Returns True if this call (or an
  earlier one) set up a multi-process runtime.
  """
  if settings is None:
    return False
  if is_initialized():
    return True
  if settings.auto and os.environ.get(ENV_ADDRESS) == AUTO:
    del os.environ[ENV_ADDRESS]  # JAX would read "auto" as the address; None asks for its cluster detection.
  jax.distributed.initialize(
      coordinator_address=settings.coordinator_address, num_processes=settings.num_processes,
      process_id=settings.process_id,
      local_device_ids=list(settings.local_device_ids) if settings.local_device_ids else None)
  print(f"[distributed] process {jax.process_index()} of {jax.process_count()} ({settings.source}): "
        f"{jax.local_device_count()} local of {jax.device_count()} devices", flush=True)
  warm_up_collectives()
  return True


def is_initialized() -> bool:
  """True once `jax.distributed.initialize` has run in this process."""
  return jax.distributed.is_initialized()


def is_primary() -> bool:
  """True on process 0, the one that writes run files (always True for a single process)."""
  return jax.process_index() == 0


BARRIER_TIMEOUT_S = 3600
_barrier_count = [0]


def barrier(name: str, timeout_s: float = BARRIER_TIMEOUT_S) -> None:
  """Blocks until every process reaches the barrier `name` (a no-op for a single process).

  Waits on the distributed runtime's coordination service, not on a device collective: a process may arrive
  long after another (e.g. while it still compiles) without tripping the collectives' connect timeout. Every
  process must call the same barriers in the same order (a counter makes each id unique).
  """
  if jax.process_count() == 1:
    return
  from jax._src import distributed as jax_distributed  # pylint: disable=g-import-not-at-top
  _barrier_count[0] += 1
  client = jax_distributed.global_state.client
  if client is None:  # A runtime not started through jax.distributed (e.g. a TPU runtime): a collective.
    from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
    multihost_utils.sync_global_devices(name)
    return
  client.wait_at_barrier(f"jaxrlhf:{_barrier_count[0]}:{name}", int(timeout_s * 1000))


def host_copy(tree):
  """`tree` with every jax.Array replaced by its whole value as a numpy array, on every process.

  Arrays this process can read entirely (replicated, or sharded over its own devices only) are copied with
  `jax.device_get`; arrays sharded across processes are all-gathered (`multihost_utils.process_allgather`), a
  collective: every process must call `host_copy` on the same tree. Other leaves pass through.
  """
  import numpy as np  # pylint: disable=g-import-not-at-top

  def one(x):
    if not isinstance(x, jax.Array):
      return x
    if x.is_fully_addressable:
      return np.asarray(jax.device_get(x))
    from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
    return np.asarray(multihost_utils.process_allgather(x, tiled=True))

  return jax.tree.map(one, tree)


def warm_up_collectives() -> None:
  """Runs one all-device reduction right after all processes meet at a barrier.

  CPU collectives (gloo) connect their peers on the first collective of a device group, with a fixed connect
  timeout; processes that reach it far apart (one still compiling under load) fail with "Gloo context
  initialization failed: Connect timeout". Doing the first all-device collective together avoids that.
  """
  if jax.process_count() == 1:
    return
  import numpy as np  # pylint: disable=g-import-not-at-top
  from jax.sharding import Mesh, NamedSharding, PartitionSpec  # pylint: disable=g-import-not-at-top
  mesh = Mesh(np.asarray(jax.devices()), ("all",))
  sharding = NamedSharding(mesh, PartitionSpec("all"))
  ones = jax.make_array_from_process_local_data(sharding, np.ones((jax.local_device_count(),), np.float32))
  total = jax.jit(lambda x: x.sum(), out_shardings=NamedSharding(mesh, PartitionSpec()))
  compiled = total.lower(ones).compile()
  barrier("warm_up_collectives")
  value = float(compiled(ones))
  if value != jax.device_count():
    raise RuntimeError(f"distributed: an all-device sum of ones gave {value}, expected {jax.device_count()}")
