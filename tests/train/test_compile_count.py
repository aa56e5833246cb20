"""No recompilation after warm-up: the shared loop over length-bucketed batches compiles the RM and DPO steps once
per bucket, counted with JAX's own compile events (jax.monitoring, one per XLA compilation, persistent-cache hits
included), and a deliberately reshaped batch is caught as a recompile."""

import contextlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jaxrlhf.data.synthetic import World, WorldConfig
from jaxrlhf.models.config import ModelConfig
from jaxrlhf.parallel import MeshConfig, make_mesh
from jaxrlhf.stages import inputs
from jaxrlhf.train import loop as loop_lib
from jaxrlhf.train import optim
from jaxrlhf.parallel.sharding import batch_sharding
from jaxrlhf.stages import preference
from jaxrlhf.stages import reward
from jaxrlhf.train import state as state_lib

BACKEND_COMPILE = "/jax/core/compile/backend_compile_duration"  # jax._src.dispatch.BACKEND_COMPILE_EVENT
BUCKETS = (20, 40)
MAX_LENGTH = 40
NUM_STEPS = 8


class CompileCounter:
  """Counts XLA compilations (one BACKEND_COMPILE event per compiled program, persistent-cache hits included)
  by function name while registered."""

  def __init__(self):
    self.names: list[str] = []

  def __call__(self, event: str, duration_secs: float, **kwargs) -> None:
    del duration_secs
    if event == BACKEND_COMPILE:
      self.names.append(str(kwargs.get("fun_name", "")))

  def count(self, name: str, since: int = 0) -> int:
    """Compilations of functions whose name contains `name`, from event index `since` on."""
    return sum(name in n for n in self.names[since:])


@contextlib.contextmanager
def counting_compiles():
  counter = CompileCounter()
  jax.monitoring.register_event_duration_secs_listener(counter)
  try:
    yield counter
  finally:
    jax.monitoring.unregister_event_duration_listener(counter)


class Recorder:
  """Wraps the loop's data iterator: before each step, records the batch's shape and the compile count so far.

  At step `odd_step` (0-based) it hands the loop a deliberately reshaped batch: every (.., T) leaf padded by 3
  to a length no bucket has.
  """

  def __init__(self, iterator, counter: CompileCounter, key: str, odd_step: int):
    self.iterator, self.counter, self.key, self.odd_step = iterator, counter, key, odd_step
    self.shapes, self.marks = [], []

  def __iter__(self):
    return self

  def __next__(self):
    batch = next(self.iterator)
    if len(self.shapes) == self.odd_step:
      t = batch[self.key].shape[-1]
      batch = {k: np.pad(v, [(0, 0)] * (v.ndim - 1) + [(0, 3)]) if v.ndim >= 2 and v.shape[-1] == t else v
               for k, v in batch.items()}
    self.shapes.append(batch[self.key].shape)
    self.marks.append(len(self.counter.names))
    return batch

  def compiles_per_step(self, name: str) -> list[int]:
    """Compilations of `name` between each step's batch and the next one's (the last: until now)."""
    marks = self.marks + [len(self.counter.names)]
    return [self.counter.count(name, marks[i]) - self.counter.count(name, marks[i + 1])
            for i in range(len(self.shapes))]

  def get_state(self):
    return self.iterator.get_state()

  def set_state(self, state):
    self.iterator.set_state(state)


class ZeroReference:
  """Attaches precomputed-reference fields (B,) float32 to each batch; their values do not affect compilation."""

  def __init__(self, iterator):
    self.iterator = iterator

  def __iter__(self):
    return self

  def __next__(self):
    batch = next(self.iterator)
    zeros = np.zeros(batch["chosen_input_ids"].shape[:1], np.float32)
    return dict(batch, ref_chosen_logps=zeros, ref_rejected_logps=zeros)

  def get_state(self):
    return self.iterator.get_state()

  def set_state(self, state):
    self.iterator.set_state(state)


@pytest.fixture(scope="module")
def world():
  return World(WorldConfig())


def _data_spec() -> inputs.DataSpec:
  return inputs.DataSpec(batch_size=8, max_length=MAX_LENGTH, buckets=BUCKETS)


def _model_config(world) -> ModelConfig:
  return ModelConfig(vocab_size=world.tokenizer.vocab_size, embed_dim=16, num_layers=1, num_heads=2,
                     num_kv_heads=2, head_dim=8, mlp_dim=32, max_position_embeddings=64)


def _loop_config() -> loop_lib.LoopConfig:
  return loop_lib.LoopConfig(num_steps=NUM_STEPS, log_every=NUM_STEPS, checkpoint_every=NUM_STEPS,
                             progress=False, tensorboard=False, async_checkpoints=False)


def assert_no_compiles_after_warmup(compiles: list[int], warmup: int) -> None:
  """Fails if any step from index `warmup` on compiled the step function."""
  late = {i: n for i, n in enumerate(compiles) if i >= warmup and n}
  assert not late, f"step recompiled after warm-up ({warmup} steps): {{step: new compilations}} = {late}"


def _run_and_check(tmp_path, setup, step_fn, iterator, key, batch_shardings, mesh):
  """The shared loop over bucketed batches: each bucket's first batch compiles the step once (warm-up), then
  nothing compiles, until the deliberately reshaped last batch, which the same check catches."""
  with counting_compiles() as counter:
    recorder = Recorder(iterator, counter, key, odd_step=NUM_STEPS - 1)
    loop_lib.train(config=_loop_config(), workdir=str(tmp_path), setup=setup, step_fn=step_fn,
                   data_iter=recorder, mesh=mesh, batch_shardings=batch_shardings)
  compiles, shapes = recorder.compiles_per_step("step_fn"), recorder.shapes[:-1]
  warmup = max(shapes.index(s) for s in set(shapes)) + 1  # Every bucket shape of the run seen once.
  assert {s[-1] for s in shapes} == set(BUCKETS), shapes
  assert warmup <= NUM_STEPS - 3, shapes  # At least two warm steps are checked.
  assert compiles[:warmup] == [int(shapes.index(s) == i) for i, s in enumerate(shapes[:warmup])], compiles
  assert_no_compiles_after_warmup(compiles[:-1], warmup)
  assert compiles[-1] == 1, compiles  # The reshaped batch: exactly one new program ...
  with pytest.raises(AssertionError, match="recompiled after warm-up"):
    assert_no_compiles_after_warmup(compiles, warmup)  # ... which the check reports.


@pytest.mark.slow
def test_reward_step_compiles_once_per_bucket(tmp_path, world):
  data, model_config = _data_spec(), _model_config(world)
  head = reward.HeadSpec().head_config()
  mesh = make_mesh(MeshConfig())
  opt_config = optim.OptimizerConfig()
  setup = reward.ensemble_setup(model_config, head, 1, optim.make_optimizer(opt_config), 0, mesh)
  member_graphdef = nnx.graphdef(nnx.eval_shape(lambda: reward.member_model(model_config, head, 0, 0)))
  step_fn = reward.make_ensemble_step(member_graphdef, reward.reward_loss_fn(reward.RewardLossConfig(), head),
                                      opt_config, 1)
  records = world.preference_records(96, "train")
  iterator = inputs.StackedIterator([inputs.train_iterator(records, world.tokenizer, data, "preference", 0)],
                                      world.tokenizer.pad_id)
  _run_and_check(tmp_path, setup, step_fn, iterator, "chosen_input_ids", batch_sharding(mesh, axis=1), mesh)


@pytest.mark.slow
@pytest.mark.parametrize("reference", ["precompute", "resident"])
def test_dpo_step_compiles_once_per_bucket(tmp_path, world, reference):
  data, model_config = _data_spec(), _model_config(world)
  cfg = preference.PreferenceConfig(reference=reference, data=data)
  mesh = make_mesh(MeshConfig())
  optimizer = optim.make_optimizer(cfg.optimizer)
  setup = preference.preference_setup(cfg, model_config, None, optimizer, mesh)
  loss_fn = preference.preference_loss_fn(cfg.loss, resident=reference == "resident")
  step_fn = state_lib.make_train_step(setup.graphdef, loss_fn, optimizer)
  iterator = inputs.train_iterator(world.preference_records(96, "train"), world.tokenizer, data, "preference", 0)
  if reference == "precompute":
    iterator = ZeroReference(iterator)
  _run_and_check(tmp_path, setup, step_fn, iterator, "chosen_input_ids", batch_sharding(mesh), mesh)


def test_counter_sees_compiles_by_name():
  with counting_compiles() as counter:
    f = jax.jit(lambda x: x * 2.0)
    f(jnp.ones(3))
    f(jnp.ones(3))
    f(jnp.ones(4))
  assert counter.count("lambda") == 2, counter.names
