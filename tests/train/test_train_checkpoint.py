"""Orbax checkpoints: sharded restore, data-iterator state, keep-N + best-by-metric, last finite step."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec as P

from jaxrlhf.parallel import MeshConfig, make_mesh
from jaxrlhf.train import checkpoint as checkpoint_lib
from jaxrlhf.train.optim import OptimizerConfig, make_optimizer
from jaxrlhf.train.state import init_train_state, logical_shardings


class _MLP(nnx.Module):

  def __init__(self, rngs):
    init = nnx.initializers.lecun_normal()
    self.l1 = nnx.Linear(8, 16, kernel_init=nnx.with_partitioning(init, ("embed", "mlp")), rngs=rngs)


@pytest.fixture(scope="module")
def setup():
  mesh = make_mesh(MeshConfig(data=2, fsdp=2, tensor=2))
  opt = make_optimizer(OptimizerConfig())
  return init_train_state(lambda key: _MLP(nnx.Rngs(key)), opt, seed=3, mesh=mesh,
                          shardings=logical_shardings(mesh))


def test_state_is_sharded_by_logical_axes(setup):
  state = setup.init()
  kernel = state.params["l1"]["kernel"].value
  assert kernel.sharding.spec == P("fsdp", "tensor")
  assert kernel.addressable_shards[0].data.shape == (4, 8)  # Each device holds a quarter.
  mu = state.opt_state[0].mu["l1"]["kernel"].value  # Adam moments follow their parameters.
  assert mu.sharding.spec == P("fsdp", "tensor")
  assert state.step.dtype == jnp.int32 and state.step.shape == ()


def test_save_restore_roundtrip_into_sharded_target(tmp_path, setup):
  state = setup.init()
  state = state.replace(step=jnp.asarray(7, jnp.int32))
  ckpt = checkpoint_lib.Checkpointer(str(tmp_path), max_to_keep=2)
  ckpt.save(7, state, data_state={"index": 7, "epoch": [1, 2]}, metrics={"train/loss": 1.0})
  restored, data_state = ckpt.restore(setup.abstract)
  ckpt.close()
  assert data_state == {"index": 7, "epoch": [1, 2]}
  ckpt = checkpoint_lib.Checkpointer(str(tmp_path / "bytes"), async_save=False)
  ckpt.save(1, state, data_state=b'{"last_seen_indices": {"0": 5}}')  # A grain DataLoader state.
  assert ckpt.restore(setup.abstract)[1] == b'{"last_seen_indices": {"0": 5}}'
  ckpt.close()
  for a, b, target in zip(jax.tree.leaves(state), jax.tree.leaves(restored), jax.tree.leaves(setup.abstract)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert b.sharding.is_equivalent_to(target.sharding, b.ndim)
  assert isinstance(restored.params["l1"]["kernel"].value.sharding, NamedSharding)


def test_keep_n_and_best_by_metric(tmp_path, setup):
  state = setup.init()
  ckpt = checkpoint_lib.Checkpointer(str(tmp_path), max_to_keep=2, best_metric="eval/acc", best_mode="max")
  accs = {1: 0.5, 2: 0.9, 3: 0.6, 4: None, 5: 0.7}
  for step, acc in accs.items():
    ckpt.save(step, state, metrics={} if acc is None else {"eval/acc": acc})
  ckpt.wait()
  assert ckpt.all_steps() == [2, 4, 5]  # The latest two, plus the best by eval/acc.
  assert ckpt.best_step() == 2
  ckpt.close()
  # After a restart the metrics are read back from disk: the best survives further saves.
  ckpt = checkpoint_lib.Checkpointer(str(tmp_path), max_to_keep=2, best_metric="eval/acc", best_mode="max")
  ckpt.save(6, state, metrics={"eval/acc": 0.1})
  ckpt.wait()
  assert ckpt.all_steps() == [2, 5, 6] and ckpt.best_step() == 2
  ckpt.close()
  ckpt = checkpoint_lib.Checkpointer(str(tmp_path / "min"), max_to_keep=1, best_metric="eval/loss",
                                     best_mode="min")
  for step, loss in {1: 3.0, 2: 1.0, 3: 2.0}.items():
    ckpt.save(step, state, metrics={"eval/loss": loss})
  ckpt.wait()
  assert ckpt.all_steps() == [2, 3] and ckpt.best_step() == 2
  ckpt.close()


def test_last_finite_step_skips_nan_states(tmp_path, setup):
  state = setup.init()
  ckpt = checkpoint_lib.Checkpointer(str(tmp_path), max_to_keep=5, async_save=False)
  ckpt.save(1, state)
  ckpt.save(2, state)
  bad = state.replace(params=jax.tree.map(lambda x: x * jnp.nan, state.params))
  ckpt.save(3, bad)
  assert checkpoint_lib.last_finite_step(ckpt, setup.abstract) == 2
  ckpt.close()


def test_restore_without_checkpoint_raises(tmp_path, setup):
  ckpt = checkpoint_lib.Checkpointer(str(tmp_path))
  with pytest.raises(FileNotFoundError, match="no checkpoint in"):
    ckpt.restore(setup.abstract)
  ckpt.close()


def test_restore_of_a_step_not_held_names_the_steps(tmp_path, setup):
  """Was CheckpointError "checkpoint step 3 ... is damaged: restoring it failed (FileNotFoundError ...)"."""
  ckpt = checkpoint_lib.Checkpointer(str(tmp_path), async_save=False)
  ckpt.save(2, setup.init())
  ckpt.save(4, setup.init())
  with pytest.raises(FileNotFoundError, match=r"no checkpoint step 3 in .*; it holds steps \[2, 4\]"):
    ckpt.restore(setup.abstract, step=3)
  assert sorted(p.name for p in tmp_path.iterdir()) == ["2", "4"]  # Nothing moved or written.
  ckpt.close()


def test_bad_keep_and_mode_settings_are_refused(tmp_path):
  with pytest.raises(ValueError, match=r"max_to_keep: expected >= 1, got 0"):
    checkpoint_lib.Checkpointer(str(tmp_path), max_to_keep=0)
  with pytest.raises(ValueError, match=r"best_mode: expected 'min' or 'max', got 'median'"):
    checkpoint_lib.Checkpointer(str(tmp_path), best_metric="eval/loss", best_mode="median")


@pytest.mark.parametrize("mode", ["min", "max"])
def test_no_best_step_without_the_metric(tmp_path, setup, mode):
  """Saves that never carried the best metric (or only a non-finite value of it) have no best step, in either mode
  ("a missing metric ranks worst")."""
  ckpt = checkpoint_lib.Checkpointer(str(tmp_path), max_to_keep=3, best_metric="eval/loss", best_mode=mode,
                                     async_save=False)
  state = setup.init()
  ckpt.save(1, state, metrics={"train/loss": 1.0})
  ckpt.save(2, state, metrics={"eval/loss": float("nan")})
  assert ckpt.best_step() is None
  ckpt.save(3, state, metrics={"eval/loss": 0.5})
  assert ckpt.best_step() == 3
  ckpt.close()
