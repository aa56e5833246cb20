"""Multi-process training through jax.distributed: 2 local processes x 4 CPU devices (gloo collectives) against
one process with 8 devices, end to end through `python -m experiments.run`, plus a resume of the 2-process run.

The fast tests check the pieces one process can check: the distributed settings (config / environment), and that
process slices of the pipeline concatenate to the single-process global batch (same padded length everywhere).
"""

import json
import os
import pathlib
import socket
import subprocess
import sys

import numpy as np
import pytest

from jaxrlhf.config import ConfigError
from jaxrlhf.data import pipeline
from jaxrlhf.data.synthetic import World, WorldConfig
from jaxrlhf.parallel import MeshConfig, distributed, make_mesh

REPO_ROOT = pathlib.Path(__file__).resolve().parents[2]
TOLERANCE = 1e-5
RUN_TIMEOUT_S = 300


# ------------------------------------------------------------------------------------------------ settings
def test_resolve_reads_the_environment_and_slurm():
  env = {"JAX_COORDINATOR_ADDRESS": "10.0.0.1:1234", "JAX_NUM_PROCESSES": "4", "JAX_PROCESS_ID": "3",
         "JAX_LOCAL_DEVICE_IDS": "0,1"}
  assert distributed.resolve([], env) == distributed.DistributedSettings("10.0.0.1:1234", 4, 3, (0, 1), "env")
  assert distributed.resolve([], {}) is None
  step = {"SLURM_JOB_ID": "7", "SLURM_STEP_NODELIST": "node[01-02]", "SLURM_NTASKS": "16", "SLURM_PROCID": "3",
          "SLURM_LOCALID": "3"}
  assert distributed.resolve([], step) is None  # The batch script itself (no srun step of several tasks).
  assert distributed.resolve([], dict(step, SLURM_STEP_NUM_TASKS="1")) is None
  slurm = distributed.resolve([], dict(step, SLURM_STEP_NUM_TASKS="16"))
  assert slurm.auto and slurm.source == "slurm" and slurm.local_device_ids is None
  assert distributed.resolve([], {"JAX_COORDINATOR_ADDRESS": "auto"}).auto


def test_resolve_prefers_the_config_and_names_bad_keys():
  mesh = MeshConfig(coordinator_address="host:99", num_processes=2, process_id=1)
  env = {"JAX_COORDINATOR_ADDRESS": "other:1", "JAX_NUM_PROCESSES": "8", "JAX_PROCESS_ID": "0"}
  assert distributed.resolve([MeshConfig(), mesh, mesh], env) == distributed.DistributedSettings(
      "host:99", 2, 1, None, "config")
  assert distributed.resolve([MeshConfig(coordinator_address="auto")], {}).auto
  with pytest.raises(ValueError, match="JAX_PROCESS_ID"):
    distributed.resolve([], {"JAX_COORDINATOR_ADDRESS": "h:1", "JAX_NUM_PROCESSES": "2"})
  with pytest.raises(ValueError, match="JAX_NUM_PROCESSES: expected an integer"):
    distributed.resolve([], {"JAX_COORDINATOR_ADDRESS": "h:1", "JAX_NUM_PROCESSES": "two"})
  with pytest.raises(ValueError, match="mesh.coordinator_address: expected 'host:port'"):
    distributed.resolve([MeshConfig(coordinator_address="nohost")], {})
  with pytest.raises(ValueError, match="stage 1 sets"):
    distributed.resolve([mesh, MeshConfig(coordinator_address="host:99", num_processes=2, process_id=0)], {})
  with pytest.raises(ConfigError, match=r"config.mesh.process_id: expected an id in \[0, 2\)"):
    MeshConfig(coordinator_address="h:1", num_processes=2, process_id=2).validate("config.mesh")


@pytest.mark.parametrize("mesh, message", [
    # Without an address these keys would silently give way to the environment (or to a single process).
    (MeshConfig(num_processes=2, process_id=1), "config.mesh.num_processes: set without mesh.coordinator_address"),
    (MeshConfig(process_id=0), "config.mesh.process_id: set without mesh.coordinator_address"),
    (MeshConfig(local_device_ids=(-1,)), "config.mesh.local_device_ids: expected device ids >= 0"),
    (MeshConfig(coordinator_address="h:99999", num_processes=2, process_id=0),
     "config.mesh.coordinator_address: expected 'host:port' \\(port 1-65535\\)"),
    (MeshConfig(coordinator_address=":1234", num_processes=2, process_id=0), "config.mesh.coordinator_address"),
    (MeshConfig(coordinator_address="h:1", num_processes=2, process_id=0, local_device_ids=(-1,)),
     "config.mesh.local_device_ids: expected device ids >= 0"),
    (MeshConfig(coordinator_address="auto", num_processes=-3), "config.mesh.num_processes: expected >= 1"),
    (MeshConfig(coordinator_address="auto", num_processes=2, process_id=5),
     "config.mesh.process_id: expected an id in \\[0, 2\\)"),
])
def test_mesh_validate_refuses_ignored_or_impossible_multiprocess_keys(mesh, message):
  with pytest.raises(ConfigError, match=message):
    mesh.validate("config.mesh")
  with pytest.raises(ValueError, match=message.removeprefix("config.")):
    distributed.resolve([mesh], {"JAX_COORDINATOR_ADDRESS": "other:1", "JAX_NUM_PROCESSES": "2",
                                 "JAX_PROCESS_ID": "0"})


def test_config_local_device_ids_go_with_an_address_from_the_environment():
  """docs/multihost.md: an address from the environment plus `--config.mesh.local_device_ids` (one process per
  GPU): the config's ids are used, not dropped; where nothing would use them, an error says so."""
  env = {"JAX_COORDINATOR_ADDRESS": "h:1", "JAX_NUM_PROCESSES": "2", "JAX_PROCESS_ID": "1"}
  ids = MeshConfig(local_device_ids=(1,))
  assert distributed.resolve([MeshConfig(), ids], env) == distributed.DistributedSettings("h:1", 2, 1, (1,), "env")
  slurm = {"SLURM_JOB_ID": "7", "SLURM_STEP_NODELIST": "n1", "SLURM_NTASKS": "2", "SLURM_PROCID": "1",
           "SLURM_LOCALID": "1", "SLURM_STEP_NUM_TASKS": "2"}
  assert distributed.resolve([ids], slurm).local_device_ids == (1,)
  with pytest.raises(ValueError, match="mesh.local_device_ids: set to \\[1\\], but this is a single-process run"):
    distributed.resolve([ids], {})
  with pytest.raises(ValueError, match="disagree"):
    distributed.resolve([ids], dict(env, JAX_LOCAL_DEVICE_IDS="0"))
  with pytest.raises(ValueError, match="stage 1 sets \\[0\\], an earlier stage \\[1\\]"):
    distributed.resolve([ids, MeshConfig(local_device_ids=(0,))], env)
  MeshConfig(local_device_ids=(1,)).validate("config.mesh")  # The environment is only known at run time.


def test_mesh_validate_accepts_complete_or_absent_multiprocess_keys():
  MeshConfig().validate("config.mesh")
  MeshConfig(coordinator_address="auto").validate("config.mesh")
  MeshConfig(coordinator_address="auto", num_processes=2, process_id=1).validate("config.mesh")
  MeshConfig(coordinator_address="[::1]:8476", num_processes=2, process_id=1, local_device_ids=(0, 1)
             ).validate("config.mesh")


# ------------------------------------------------------------------------------------------------ process slices
@pytest.mark.parametrize("kind, pack", [("preference", False), ("sft", False), ("sft", True)])
def test_process_slices_concatenate_to_the_global_batch(kind, pack):
  """Each of 2 "processes" collates its half of the SAME global batch, padded to the global batch's bucket."""
  world = World(WorldConfig())
  records = world.preference_records(40, "train") if kind == "preference" else world.sft_records(40, "train")

  def batches(index, count):
    config = pipeline.PipelineConfig(kind=kind, batch_size=8, max_length=40, buckets=(8, 16, 24, 32), pack=pack,
                                     seed=3, num_epochs=1, num_threads=0, shard_index=index, shard_count=count)
    return list(pipeline.make_pipeline(records, world.tokenizer, config))

  whole, first, second = batches(0, 1), batches(0, 2), batches(1, 2)
  assert len(whole) == len(first) == len(second) >= 2
  lengths = {b[next(iter(b))].shape[1] for b in whole}
  assert len(lengths) > 1 or pack  # The buckets are exercised.
  for w, a, b in zip(whole, first, second):
    for key in w:
      np.testing.assert_array_equal(np.concatenate([a[key], b[key]]), w[key], err_msg=key)
  assert pipeline.make_pipeline(records, world.tokenizer, pipeline.PipelineConfig(
      kind=kind, batch_size=8, max_length=40, shard_index=1, shard_count=2)).process_local


def test_global_batch_places_whole_and_local_batches_on_one_process():
  """One process: a whole batch and a process-local one (the same rows) give the same global arrays, for a
  leading batch axis and for (K, B, ...) ensemble batches sharded on axis 1."""
  import jax  # pylint: disable=g-import-not-at-top
  from jax.sharding import NamedSharding, PartitionSpec as P  # pylint: disable=g-import-not-at-top
  mesh = make_mesh(MeshConfig(data=4, fsdp=2))
  batch = {"ids": np.arange(8 * 5, dtype=np.int32).reshape(8, 5), "weight": np.arange(8, dtype=np.float32)}
  members = {"ids": np.arange(2 * 8 * 3, dtype=np.int32).reshape(2, 8, 3)}
  for tree, sharding in ((batch, NamedSharding(mesh, P(("data", "fsdp")))),
                         (members, {"ids": NamedSharding(mesh, P(None, ("data", "fsdp")))})):
    for local in (False, True):
      out = pipeline.global_batch(tree, sharding, process_local=local)
      for key, value in tree.items():
        assert isinstance(out[key], jax.Array) and len(out[key].sharding.device_set) == 8
        np.testing.assert_array_equal(np.asarray(out[key]), value)


# ------------------------------------------------------------------------------------------------ 2 processes
_SLICES_SCRIPT = """
import json, sys
import jax, jax.numpy as jnp, numpy as np
from jaxrlhf.data import pipeline
from jaxrlhf.data.synthetic import World, WorldConfig
from jaxrlhf.parallel import MeshConfig, distributed, make_mesh
from jaxrlhf.parallel.sharding import batch_sharding
distributed.initialize(distributed.resolve())
world = World(WorldConfig())
config = pipeline.PipelineConfig(kind="preference", batch_size=8, max_length=40, buckets=(16, 24, 32), seed=3,
                                 num_threads=0)
it = pipeline.make_pipeline(world.preference_records(64, "train"), world.tokenizer, config)
assert it.process_local and jax.process_count() == 2
mesh = make_mesh(MeshConfig())
sums = []
for _ in range(4):
  batch = pipeline.global_batch(next(it), batch_sharding(mesh), process_local=True)
  weights = jnp.arange(1, batch["chosen_input_ids"].shape[1] + 1)
  rows = jax.jit(lambda b: (b["chosen_input_ids"] * weights).sum(1) + 7 * (b["rejected_input_ids"] * weights).sum(1),
                 out_shardings=jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec()))(batch)
  sums.append([batch["chosen_input_ids"].shape[1], np.asarray(rows).tolist()])
if jax.process_index() == 0:
  json.dump(sums, open(sys.argv[1], "w"))
"""


@pytest.mark.slow
def test_two_processes_assemble_the_single_process_batches(tmp_path):
  """2 processes x 4 devices, each collating its half: the global arrays equal one process's whole batches."""
  out = tmp_path / "sums.json"
  _run_script_in_two_processes(tmp_path / "slices.py", _SLICES_SCRIPT, str(out))
  world = World(WorldConfig())
  it = pipeline.make_pipeline(world.preference_records(64, "train"), world.tokenizer, pipeline.PipelineConfig(
      kind="preference", batch_size=8, max_length=40, buckets=(16, 24, 32), seed=3, num_threads=0, shard_index=0,
      shard_count=1))
  want = []
  for _ in range(4):
    b = next(it)
    w = np.arange(1, b["chosen_input_ids"].shape[1] + 1)
    want.append([b["chosen_input_ids"].shape[1],
                 ((b["chosen_input_ids"] * w).sum(1) + 7 * (b["rejected_input_ids"] * w).sum(1)).tolist()])
  assert json.loads(out.read_text()) == want
  assert len({t for t, _ in want}) > 1  # Several buckets: the processes agreed on each batch's length.


_SAVE_SCRIPT = """
import json, sys
import jax, jax.numpy as jnp, numpy as np
import optax
from jax.sharding import NamedSharding, PartitionSpec as P
from jaxrlhf.models import ModelConfig
from jaxrlhf.parallel import MeshConfig, distributed, make_mesh
from jaxrlhf.stages import artifacts, common
distributed.initialize(distributed.resolve())
mesh = make_mesh(MeshConfig(data=1, fsdp=8))  # Every sharded parameter spans both processes.
# host_copy of an array split over the 2 processes: the whole value on each.
x = jax.make_array_from_callback((8, 6), NamedSharding(mesh, P("fsdp")),
                                 lambda index: np.arange(48, dtype=np.float32).reshape(8, 6)[index])
assert not x.is_fully_addressable
np.testing.assert_array_equal(distributed.host_copy(x), np.arange(48, dtype=np.float32).reshape(8, 6))
config = ModelConfig(vocab_size=64, embed_dim=32, num_layers=2, num_heads=4, num_kv_heads=2, head_dim=8,
                     mlp_dim=64)
setup = common.policy_setup(config, None, optax.sgd(0.1), 0, mesh)
state = setup.init()
leaves = jax.tree_util.tree_leaves_with_path(state.params)
assert any(not v.is_fully_addressable for _, v in leaves)
# Order-sensitive checksums computed from the sharded arrays themselves (replicated results).
checks = {jax.tree_util.keystr(k): float(jax.jit(lambda a: jnp.sum(a * (jnp.arange(a.size).reshape(a.shape) % 7)),
                                                 out_shardings=NamedSharding(mesh, P()))(v))
          for k, v in leaves}
artifacts.save_policy(setup, state, sys.argv[1] + "/model")
if jax.process_index() == 0:
  json.dump(checks, open(sys.argv[1] + "/checks.json", "w"))
# overwrite's broadcast (an ensemble's shared backbone) into a leaf split over both processes: K = 2 copies of one
# host value, stacked by the devices, checked through a replicated checksum.
from flax import nnx
class Members(nnx.Module):
  def __init__(self):
    self.members = nnx.Param(jnp.zeros((2, 8, 6), jnp.float32))
members = nnx.state(Members())
nnx.replace_by_pure_dict(members, {"members": jax.device_put(np.zeros((2, 8, 6), np.float32),
                                                              NamedSharding(mesh, P(None, "fsdp")))})
leaf = np.arange(48, dtype=np.float32).reshape(8, 6)
stacked = common.overwrite(members, {"members": leaf}, broadcast=2)["members"][...]
assert not stacked.is_fully_addressable and stacked.sharding.spec == P(None, "fsdp"), stacked.sharding
weights = jnp.asarray(np.arange(96).reshape(2, 8, 6) % 5, jnp.float32)
got = float(jax.jit(lambda a: jnp.sum(a * weights), out_shardings=NamedSharding(mesh, P()))(stacked))
assert got == float(np.sum(np.broadcast_to(leaf, (2, 8, 6)) * (np.arange(96).reshape(2, 8, 6) % 5))), got
"""


@pytest.mark.slow
def test_two_processes_save_parameters_sharded_across_them(tmp_path):
  """FSDP over 2 processes x 4 devices: host_copy gathers whole arrays and save_policy writes the whole model;
  common.overwrite stacks an ensemble's backbone copies into a leaf split over both processes."""
  _run_script_in_two_processes(tmp_path / "save.py", _SAVE_SCRIPT, str(tmp_path))
  import jax  # pylint: disable=g-import-not-at-top
  from flax import nnx  # pylint: disable=g-import-not-at-top
  from jaxrlhf.models import from_pretrained  # pylint: disable=g-import-not-at-top
  model, _ = from_pretrained(str(tmp_path / "model"))
  checks = json.loads((tmp_path / "checks.json").read_text())
  saved = {jax.tree_util.keystr(k): np.asarray(v)
           for k, v in jax.tree_util.tree_leaves_with_path(nnx.state(model, nnx.Param))}
  assert len(checks) == len(saved) > 5
  for key, want in checks.items():
    value = saved[key.replace("['value']", "")] if key not in saved else saved[key]
    got = float(np.sum(value * (np.arange(value.size).reshape(value.shape) % 7)))
    assert got == pytest.approx(want, rel=1e-5), key


def _run_script_in_two_processes(path: pathlib.Path, text: str, arg: str) -> None:
  """Writes `text` to `path` and runs it as 2 jax.distributed processes x 4 CPU devices (argv[1] = `arg`);
  fails with both logs' tails if either exits non-zero."""
  path.write_text(text)
  port = _free_port()
  procs = [subprocess.Popen([sys.executable, str(path), arg], cwd=REPO_ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True,
                            env=_env(4, JAX_COORDINATOR_ADDRESS=f"localhost:{port}", JAX_NUM_PROCESSES="2",
                                     JAX_PROCESS_ID=str(i), PYTHONPATH=str(REPO_ROOT)))
           for i in range(2)]
  try:
    logs = [p.communicate(timeout=RUN_TIMEOUT_S)[0] for p in procs]
  finally:
    for p in procs:
      if p.poll() is None:
        p.kill()
  assert all(p.returncode == 0 for p in procs), "\n".join(log[-3000:] for log in logs)


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("localhost", 0))
    return s.getsockname()[1]


def _env(num_devices: int, **extra: str) -> dict:
  env = {k: v for k, v in os.environ.items() if not k.startswith(("JAX_COORDINATOR", "JAX_NUM_PROCESSES",
                                                                    "JAX_PROCESS_ID", "SLURM_"))}
  env.update(XLA_FLAGS=f"--xla_force_host_platform_device_count={num_devices}", JAX_PLATFORMS="cpu",
             JAX_CPU_COLLECTIVES_IMPLEMENTATION="gloo",
             JAX_COMPILATION_CACHE_DIR=os.environ.get("JAXRLHF_TEST_XLA_CACHE",
                                                      str(pathlib.Path.home() / ".cache" / "jaxrlhf-xla")),
             JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0", **extra)
  return env


def _start(workdir: pathlib.Path, args: list[str], num_processes: int) -> list:
  """Starts `python -m experiments.run` in 1 process with 8 CPU devices, or in `num_processes` with 8 / n
  each; returns [(process, log file)] for `_wait`."""
  command = [sys.executable, "-m", "experiments.run", "--workdir", str(workdir), *args]
  port = _free_port()
  started = []
  for i in range(num_processes):
    extra = {} if num_processes == 1 else dict(JAX_COORDINATOR_ADDRESS=f"localhost:{port}",
                                               JAX_NUM_PROCESSES=str(num_processes), JAX_PROCESS_ID=str(i))
    log = open(workdir.parent / f"{workdir.name}.process{i}.log", "w+")  # pylint: disable=consider-using-with
    started.append((subprocess.Popen(command, cwd=REPO_ROOT, env=_env(8 // num_processes, **extra), stdout=log,
                                     stderr=subprocess.STDOUT), log))
  return started


def _wait(started: list, what: str) -> None:
  """Waits for every process of `_start`; fails with the tail of each log if any exits non-zero."""
  try:
    codes = [p.wait(timeout=RUN_TIMEOUT_S) for p, _ in started]
  finally:
    for p, _ in started:
      if p.poll() is None:
        p.kill()
  tails = []
  for i, (_, log) in enumerate(started):
    log.seek(0)
    tails.append(f"--- process {i} (exit {codes[i]}):\n" + "".join(log.readlines()[-30:]))
    log.close()
  if any(codes):
    pytest.fail(f"experiments.run {what} failed:\n" + "\n".join(tails))


def _run(workdir: pathlib.Path, args: list[str], num_processes: int) -> None:
  _wait(_start(workdir, args, num_processes), " ".join(args))


def _metrics(path: pathlib.Path) -> list[dict]:
  with open(path) as f:
    return [json.loads(line) for line in f if line.strip()]


def _compared(key: str) -> bool:
  """Losses and the well-conditioned values next to them. Left out: timings, and reward levels / accuracies,
  which sit on float noise that Adam amplifies (a BT loss is blind to a shared reward offset, so the head
  bias moves by ~lr on a gradient of ~1e-9; DPO rewards are 0 +- noise at step 1, so ties flip accuracy)."""
  return ("loss" in key or key.endswith(("grad_norm", "tokens", "examples")) or "logps/" in key
          or key in ("eval/accuracy", "eval/gold_agreement"))  # The reward model's held-out pairs.


def _assert_same_losses(got: list[dict], want: list[dict]) -> None:
  """Same logged steps and keys, and the same losses (see `_compared`) to TOLERANCE."""
  assert [m["step"] for m in got] == [m["step"] for m in want]
  for g, w in zip(got, want):
    assert sorted(g) == sorted(w)
    keys = [k for k in w if _compared(k)]
    assert keys, w
    for k in keys:
      np.testing.assert_allclose(g[k], w[k], rtol=TOLERANCE, atol=TOLERANCE, err_msg=f"step {w['step']} {k}")


def _run_two_processes_with_resume(tmp_path: pathlib.Path, config: str, stage: str, steps_key: str,
                                   stage_dir: str, earlier_stages: tuple[str, ...] = ()) -> None:
  """Single process, 8 devices, 4 steps == 2 processes x 4 devices: 2 steps, then resumed to 4 steps."""
  one, two = tmp_path / "one", tmp_path / "two"
  baseline = _start(one, ["--config", config], 1)  # Alongside the first 2-process run: mostly 1 core each.
  _run(two, ["--config", config, f"--{steps_key}=2"], 2)
  _wait(baseline, f"{config} (1 process)")
  first = _metrics(two / stage_dir / "metrics.jsonl")
  assert [m["step"] for m in first] == [2, 2]  # Train window and the final eval.
  assert (two / stage_dir / "checkpoints" / "2").is_dir()
  # Written once, by process 0: one done-file, no process-1 error file.
  assert (two / stage_dir / "DONE.json").exists() and not list(two.glob("error*.txt"))
  # The 2-step run's finish marks are removed, as if it had stopped right after its step-2 checkpoint.
  (two / stage_dir / "DONE.json").unlink()
  (two / "results.json").unlink()
  _run(two, ["--config", config, f"--{steps_key}=4"], 2)
  log = (tmp_path / "two.process0.log").read_text()
  assert f"resuming from step 2 ({two / stage_dir / 'checkpoints'})" in log, log[-2000:]
  got, want = _metrics(two / stage_dir / "metrics.jsonl"), _metrics(one / stage_dir / "metrics.jsonl")
  # Train windows: steps 1-2 from the first 2-process run, 3-4 from the resumed one. Evaluations: the 2-step
  # run's final one (step 2) stays in the log; the final one (step 4) must match.
  train = lambda lines: [m for m in lines if "train/loss" in m]  # pylint: disable=unnecessary-lambda-assignment
  _assert_same_losses(train(got), train(want))
  evals = lambda lines: [m for m in lines  # pylint: disable=unnecessary-lambda-assignment
                         if any(k.startswith("eval/") for k in m)]
  assert [m["step"] for m in evals(got)] == [2, 4] and [m["step"] for m in evals(want)] == [4]
  _assert_same_losses(evals(got)[-1:], evals(want))
  for other in earlier_stages:  # Ran once (4 steps) in both; the stage above started from it.
    _assert_same_losses(_metrics(two / other / "metrics.jsonl"), _metrics(one / other / "metrics.jsonl"))
  results = json.loads((two / "results.json").read_text())
  assert results["stages"][stage]["metrics"]["train/loss"] == pytest.approx(
      json.loads((one / "results.json").read_text())["stages"][stage]["metrics"]["train/loss"], abs=TOLERANCE)


@pytest.mark.slow
def test_reward_model_two_processes_equal_one_process_and_resume(tmp_path):
  _run_two_processes_with_resume(tmp_path, "configs/reward.py:smoke", "main", "config.loop.num_steps", ".")


@pytest.mark.slow
def test_dpo_two_processes_equal_one_process_and_resume(tmp_path):
  _run_two_processes_with_resume(tmp_path, "configs/dpo.py:smoke", "preference",
                                 "config.preference.loop.num_steps", "preference", earlier_stages=("sft",))
