"""Any mesh a user passes works, `jax.make_mesh` with its defaults (Explicit axes in this JAX) included:
from_pretrained, generate, train-state init and DPO / reward-model steps give the same results as with the
library's own Auto mesh or one device."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from jaxrlhf.config import from_config
from jaxrlhf.models import CausalLM, ModelConfig, from_pretrained, save_pretrained
from jaxrlhf.models.heads import HeadConfig
from jaxrlhf.parallel import MeshConfig, batch_sharding, make_mesh, replicated
from jaxrlhf.sampling import generate
from jaxrlhf.stages import preference, reward
from jaxrlhf.train import optim
from jaxrlhf.train import state as state_lib
from random_models import random_pair_batch

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


def _pair_batch(rng, b=8, t=8):
  batch = random_pair_batch(rng, b, t, CONFIG.vocab_size)
  batch["margin"] = batch["chosen_score"] = batch["rejected_score"] = np.full((b,), np.nan, np.float32)
  return batch


def _dpo_and_reward_steps(mesh):
  """(DPO loss, reward-ensemble loss, DPO params after the step) of one step each, jitted like `loop.train`:
  state shardings from the setup, the batch over `parallel.batch_sharding(mesh)` (axis 1 for the ensemble)."""
  rng = np.random.default_rng(0)
  cfg = from_config(dict(reference="resident", optimizer=dict(learning_rate=1e-2)), preference.PreferenceConfig)
  optimizer = optim.make_optimizer(cfg.optimizer)
  setup = preference.preference_setup(cfg, CONFIG, None, optimizer, mesh)
  step = jax.jit(state_lib.make_train_step(setup.graphdef, preference.preference_loss_fn(cfg.loss, resident=True),
                                           optimizer),
                 in_shardings=(setup.shardings, batch_sharding(mesh)), out_shardings=(setup.shardings, None))
  state, metrics = step(setup.init(), _pair_batch(rng))
  dpo_loss, dpo_params = metrics["loss"].total / metrics["loss"].count, nnx.to_pure_dict(state.params)

  head, opt_cfg = HeadConfig(), optim.OptimizerConfig(learning_rate=1e-2)
  setup = reward.ensemble_setup(CONFIG, head, 2, optim.make_optimizer(opt_cfg), 0, mesh)
  step_fn = reward.make_ensemble_step(reward.member_graphdef(CONFIG, head, 0),
                                      reward.reward_loss_fn(reward.RewardLossConfig(), head), opt_cfg, 2)
  step = jax.jit(step_fn, in_shardings=(setup.shardings, batch_sharding(mesh, axis=1)),
                 out_shardings=(setup.shardings, None))
  members = [_pair_batch(rng) for _ in range(2)]
  _, metrics = step(setup.init(), {k: np.stack([m[k] for m in members]) for k in members[0]})
  return float(dpo_loss), float(metrics["loss"].total / metrics["loss"].count), dpo_params


def test_dpo_and_reward_steps_on_an_explicit_mesh_equal_one_device():
  """Parameter shardings (Auto mesh, via auto_axes) and batch shardings of the user's Explicit mesh go into one
  jit: `batch_sharding` must hand back the same Auto mesh, or jit refuses the mix of meshes."""
  mesh = _explicit_mesh()
  for sharding in (batch_sharding(mesh), batch_sharding(mesh, axis=1), replicated(mesh)):
    assert sharding.mesh.axis_types == (jax.sharding.AxisType.Auto,) * 3
  want, got = _dpo_and_reward_steps(None), _dpo_and_reward_steps(mesh)
  np.testing.assert_allclose(got[:2], want[:2], rtol=1e-5, atol=1e-6)
  for a, b in zip(jax.tree.leaves(got[2]), jax.tree.leaves(want[2])):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=1e-4)



def test_gold_reward_on_arrays_sharded_over_an_explicit_mesh():
  """The synthetic world's gold reward (table lookups) on batches a user shards by hand over Explicit axes, eager
  and jitted, equals its numpy mirror; it used to raise ShardingTypeError at the first lookup."""
  from jaxrlhf.data.synthetic import World, WorldConfig  # pylint: disable=g-import-not-at-top
  world = World(WorldConfig())
  rng = np.random.default_rng(0)
  vocab = world.tokenizer.vocab_size
  prompt = rng.integers(0, vocab, (8, 6)).astype(np.int32)
  response = rng.integers(0, vocab, (8, 10)).astype(np.int32)
  response_mask = (np.arange(10)[None] < rng.integers(1, 11, (8, 1))).astype(np.int32)
  args_np = (prompt, np.ones_like(prompt), response, response_mask)
  want_B = world.gold_reward_np(*args_np)
  want_BxT = world.gold_components_np(*args_np)
  mesh = _explicit_mesh()
  spec = jax.sharding.PartitionSpec(("data", "fsdp"))
  args = [jax.device_put(jnp.asarray(a), jax.sharding.NamedSharding(mesh, spec)) for a in args_np]
  with jax.set_mesh(mesh):
    np.testing.assert_allclose(world.gold_reward(*args), want_B, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(jax.jit(world.gold_reward)(*args), want_B, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(jax.jit(world.gold_components)(*args), want_BxT, rtol=1e-6, atol=1e-6)
    credit = jax.jit(world.gold_token_contributions)(*args)
  assert credit.sharding.spec[0] == ("data", "fsdp")  # The output keeps the batch's sharding.
  np.testing.assert_allclose(np.asarray(credit).sum(1), want_BxT[:, :4].sum(1), rtol=1e-5, atol=1e-5)
