"""LoRA in the training stages: only the adapters are trainable parameters (with optimizer state), the base weights
are held once, frozen, in the state's `extra`; a DPO step with the resident reference uses the base model (adapters
off) as the reference (checked against dpo_loss on numpy log-probs of the base and the adapter model); the
configs/dpo.py:lora_smoke pipeline (sft -> DPO, both LoRA) runs end to end and its merged export equals the base
plus its saved adapters; bad `model.lora` keys fail at planning."""

import json
import pathlib
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jaxrlhf import config as config_lib
from jaxrlhf.config import ConfigError, from_config
from jaxrlhf.losses import preference as pref_lib
from jaxrlhf.models import CausalLM, ModelConfig, from_pretrained
from jaxrlhf.models import lora as lora_lib
from jaxrlhf.stages import preference
from jaxrlhf.train import optim
from jaxrlhf.train import state as state_lib
from random_models import random_pair_batch

REPO_ROOT = pathlib.Path(__file__).resolve().parents[2]
if str(REPO_ROOT) not in sys.path:
  sys.path.insert(0, str(REPO_ROOT))

from experiments import run as run_lib  # noqa: E402

TINY = ModelConfig(vocab_size=32, embed_dim=16, num_layers=2, num_heads=2, num_kv_heads=2, head_dim=8, mlp_dim=32)
LORA = dict(rank=4, alpha=8.0, targets=("q", "v", "o", "up", "down"))


def _batch(rng):
  return random_pair_batch(rng, weight=[1.0, 0.5, 1.0, 1.0])


def _sum_logps(model, batch, side):
  """(B,) float64 sum of log p(response tokens) from the model's logits, in numpy."""
  ids, att, loss = (batch[f"{side}_{k}"] for k in ("input_ids", "attention_mask", "loss_mask"))
  logits = np.asarray(model(jnp.asarray(ids), jnp.asarray(att)), np.float64)
  m = logits.max(-1, keepdims=True)
  logp = logits - m - np.log(np.exp(logits - m).sum(-1, keepdims=True))
  out = np.zeros(ids.shape[0])
  for i in range(ids.shape[0]):
    for t in range(1, ids.shape[1]):
      if loss[i, t]:
        out[i] += logp[i, t - 1, ids[i, t]]
  return out


def _size(tree):
  return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(tree))


def _setup(reference="resident"):
  cfg = from_config(dict(model=dict(lora=LORA), reference=reference, optimizer=dict(learning_rate=1e-2)),
                    preference.PreferenceConfig)
  pretrained = jax.device_get(nnx.to_pure_dict(nnx.state(CausalLM(TINY, rngs=nnx.Rngs(3)), nnx.Param)))
  optimizer = optim.make_optimizer(cfg.optimizer)
  setup = preference.preference_setup(cfg, TINY, pretrained, optimizer, None)
  return cfg, pretrained, optimizer, setup


def _base_model(pretrained):
  graphdef, state = nnx.split(nnx.eval_shape(lambda: CausalLM(TINY, rngs=nnx.Rngs(0))))
  nnx.replace_by_pure_dict(state, jax.tree.map(jnp.asarray, pretrained))
  return nnx.merge(graphdef, state)


def test_only_adapters_train_and_the_base_is_held_once():
  cfg, pretrained, optimizer, setup = _setup()
  state = setup.init()
  params, extra = nnx.to_pure_dict(state.params), nnx.to_pure_dict(state.extra)
  assert list(params) == ["lora"]  # the trainable parameters are the adapters alone
  adapter_size, base_size = _size(params), _size(pretrained)
  shapes = lora_lib.adapter_shapes(TINY, lora_lib.LoraConfig(**LORA))
  assert adapter_size == TINY.num_layers * sum(int(np.prod(s)) for s, _ in shapes.values())
  assert _size(extra) == base_size  # ONE copy of the base weights (no PolicyWithReference, no second model)
  assert _size(state.opt_state) <= 2 * adapter_size + 8  # Adam's two moments of the adapters (+ counts)
  jax.tree.map(np.testing.assert_array_equal, extra, pretrained)

  loss_fn = preference.preference_loss_fn(cfg.loss, resident=True, lora=True)
  step = jax.jit(state_lib.make_train_step(setup.graphdef, loss_fn, optimizer))
  batch = _batch(np.random.default_rng(0))
  for _ in range(2):
    state, metrics = step(state, batch)
  assert float(metrics["grad_norm"]) > 0
  jax.tree.map(np.testing.assert_array_equal, nnx.to_pure_dict(state.extra), pretrained)  # the base never moves
  trained = nnx.to_pure_dict(state.params)["lora"]
  assert all(float(np.max(np.abs(trained[k]))) > 0 for k in trained if k.endswith("_b"))  # B left zero


def test_adapters_shard_like_their_kernels_and_8_devices_equal_1():
  """On a (data 2, fsdp 2, tensor 2) mesh each adapter dimension is split like the kernel dimension it wraps, and
  two LoRA DPO steps give the single-device losses."""
  from jax.sharding import NamedSharding, PartitionSpec as P
  from jaxrlhf.parallel import MeshConfig, make_mesh
  losses = {}
  for n, mesh_config in ((1, MeshConfig()), (8, MeshConfig(data=2, fsdp=2, tensor=2))):
    cfg, pretrained, optimizer, _ = _setup()
    mesh = make_mesh(mesh_config, jax.devices()[:n])
    setup = preference.preference_setup(cfg, TINY, pretrained, optimizer, mesh)
    if n == 8:
      specs = nnx.to_pure_dict(jax.tree.map(lambda s: s.spec, setup.shardings.params))["lora"]
      kernels = nnx.to_pure_dict(jax.tree.map(lambda s: s.spec, setup.shardings.extra))["layers"]
      for t in LORA["targets"]:
        n_in = lora_lib.num_in_dims(TINY, t)
        kernel = tuple(kernels[f"{t}_kernel"]) + (None,) * 4
        a, b = tuple(specs[f"{t}_a"]) + (None,) * 4, tuple(specs[f"{t}_b"]) + (None,) * 4
        assert a[:1 + n_in] == kernel[:1 + n_in] and a[1 + n_in] is None, (t, a, kernel)
        assert b[2:] == kernel[1 + n_in:][:len(b) - 2] and b[1] is None, (t, b, kernel)
      assert any(x is not None for t in LORA["targets"] for x in specs[f"{t}_b"])  # something IS split
    loss_fn = preference.preference_loss_fn(cfg.loss, resident=True, lora=True)
    batch_sharding = NamedSharding(mesh, P(("data", "fsdp")))
    step = jax.jit(state_lib.make_train_step(setup.graphdef, loss_fn, optimizer),
                   in_shardings=(setup.shardings, batch_sharding), out_shardings=(setup.shardings, None))
    state, batch = setup.init(), _batch(np.random.default_rng(4))
    losses[n] = []
    for _ in range(2):
      state, metrics = step(state, jax.device_put(batch, batch_sharding))
      losses[n].append(float(metrics["loss"].total / metrics["loss"].count))
  np.testing.assert_allclose(losses[8], losses[1], rtol=1e-5, atol=1e-6)


def test_lora_dpo_reference_is_the_base_model_with_adapters_off():
  cfg, pretrained, optimizer, setup = _setup()
  loss_fn = preference.preference_loss_fn(cfg.loss, resident=True, lora=True)
  step = jax.jit(state_lib.make_train_step(setup.graphdef, loss_fn, optimizer))
  batch = _batch(np.random.default_rng(1))
  state, _ = step(setup.init(), batch)  # B != 0 now: the policy differs from its base
  model = nnx.merge(setup.graphdef, state.params, state.extra)
  base = _base_model(pretrained)
  ref_c, ref_r = _sum_logps(base, batch, "chosen"), _sum_logps(base, batch, "rejected")
  np.testing.assert_allclose(_sum_logps(model.without_adapters(), batch, "chosen"), ref_c, atol=1e-5)
  pol_c, pol_r = _sum_logps(model, batch, "chosen"), _sum_logps(model, batch, "rejected")
  assert np.max(np.abs(pol_c - ref_c)) > 1e-4
  total, weight, _ = jax.jit(loss_fn)(model, batch, None)
  losses, _ = pref_lib.dpo_loss(*(jnp.asarray(x, jnp.float32) for x in (pol_c, pol_r, ref_c, ref_r)), beta=0.1)
  w = batch["weight"]
  np.testing.assert_allclose(float(total) / float(weight), float(np.sum(w * np.asarray(losses)) / np.sum(w)),
                             rtol=1e-5)


@pytest.mark.parametrize("algorithm", ["kto", pytest.param("treg", marks=pytest.mark.slow)])
def test_lora_kto_and_treg_equal_a_resident_copy_of_the_base(algorithm):
  """KTO's mismatched z0 and T-REG's reference token rewards read the reference too: with LoRA (adapters off) the
  loss equals that of PolicyWithReference(merged adapter model, base model)."""
  cfg, pretrained, optimizer, setup = _setup()
  loss_cfg = preference.PreferenceLossConfig(algorithm=algorithm, treg_token_rewards="reference")
  dpo_fn = preference.preference_loss_fn(cfg.loss, resident=True, lora=True)
  state, _ = jax.jit(state_lib.make_train_step(setup.graphdef, dpo_fn, optimizer))(
      setup.init(), _batch(np.random.default_rng(2)))
  model = nnx.merge(setup.graphdef, state.params, state.extra)
  batch = _batch(np.random.default_rng(3))
  ids = (5, 6)
  lora_fn = preference.preference_loss_fn(loss_cfg, resident=True, lora=True, better_ids=ids, worse_ids=ids[::-1])
  copy_fn = preference.preference_loss_fn(loss_cfg, resident=True, better_ids=ids, worse_ids=ids[::-1])
  got, w, _ = jax.jit(lora_fn)(model, batch, None)
  want, w2, _ = jax.jit(copy_fn)(preference.PolicyWithReference(model.merged(), _base_model(pretrained)), batch, None)
  assert float(w) == float(w2)
  np.testing.assert_allclose(float(got), float(want), rtol=1e-4, atol=1e-5)
  # Not vacuous: against the policy itself as its reference, the loss differs.
  same, _, _ = jax.jit(copy_fn)(preference.PolicyWithReference(model.merged(), model.merged()), batch, None)
  assert abs(float(same) - float(want)) > 1e-4


@pytest.mark.slow  # ~12 s idle: two stage runs.
def test_lora_precompute_and_resident_references_train_identically(tmp_path):
  """The precomputed reference log-probs of a LoRA policy are its base's (adapters off), as the resident reference."""
  section = dict(model=dict(config=dict(embed_dim=32, num_layers=1, num_heads=2, num_kv_heads=2, head_dim=16,
                                        mlp_dim=64), lora=LORA),
                 data=dict(num_train=32, num_eval=8, batch_size=8, max_length=32), optimizer=dict(learning_rate=1e-2),
                 loop=dict(num_steps=3, log_every=1, checkpoint_every=3, eval_every=0, progress=False,
                           tensorboard=False, async_checkpoints=False))
  losses = {}
  for reference in ("precompute", "resident"):
    cfg = from_config(dict(section, reference=reference), preference.PreferenceConfig)
    out = preference.run(cfg, str(tmp_path / reference), {})
    assert pathlib.Path(out["adapter_dir"]).is_dir()
    with open(tmp_path / reference / "metrics.jsonl") as f:
      losses[reference] = [json.loads(line)["train/loss"] for line in f if "train/loss" in line]
  assert (tmp_path / "precompute" / "reference_cache.npz").exists()
  assert len(losses["precompute"]) == 3 and losses["precompute"][-1] != losses["precompute"][0]
  np.testing.assert_allclose(losses["precompute"], losses["resident"], rtol=1e-5, atol=1e-6)


def test_lora_smoke_config_runs_sft_then_dpo_and_exports_merged(tmp_path):
  config = config_lib.load_config(f"{REPO_ROOT / 'configs' / 'dpo.py'}:lora_smoke")
  outputs = run_lib.run(config, str(tmp_path))
  sft_out, dpo_out = outputs["sft"], outputs["preference"]
  for out in (sft_out, dpo_out):
    assert abs(out["metrics"]["train/loss"]) < 1e4
    files = sorted(p.name for p in pathlib.Path(out["adapter_dir"]).iterdir())
    assert files == [lora_lib.ADAPTER_CONFIG, lora_lib.ADAPTER_WEIGHTS]
  # The DPO export (merged) equals the SFT export (its frozen base) with the saved DPO adapters on top.
  base, base_config = from_pretrained(sft_out["model_dir"])
  merged, _ = from_pretrained(dpo_out["model_dir"])
  adapter_model = CausalLM(base_config, rngs=nnx.Rngs(0), lora=lora_lib.read_adapter_config(dpo_out["adapter_dir"]))
  nnx.update(adapter_model, nnx.state(base))
  lora_lib.load_adapters(adapter_model, dpo_out["adapter_dir"])
  ids = jnp.asarray(np.random.default_rng(0).integers(1, base_config.vocab_size, (2, 12)), jnp.int32)
  with_adapters = np.asarray(adapter_model(ids))
  assert np.max(np.abs(with_adapters - np.asarray(base(ids)))) > 1e-6  # DPO moved the adapters
  np.testing.assert_allclose(np.asarray(merged(ids)), with_adapters, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("lora,match", [(dict(rank=0), "config.preference.model.lora: rank"),
                                        (dict(rnk=4), "config.preference.model.lora: .*rnk"),
                                        (dict(targets=("qkv",)), "config.preference.model.lora: targets")])
def test_bad_lora_keys_fail_at_planning(lora, match):
  config = config_lib.load_config(f"{REPO_ROOT / 'configs' / 'dpo.py'}:lora_smoke")
  config.preference.model.lora = lora
  with pytest.raises(ConfigError, match=match):
    run_lib.plan(config)


def test_gate_target_on_a_plain_mlp_fails_at_planning():
  config = config_lib.load_config(f"{REPO_ROOT / 'configs' / 'dpo.py'}:lora_smoke")
  config.sft.model.config = dict(config.sft.model.config.to_dict(), gated_mlp=False)
  with pytest.raises(ConfigError, match="config.sft.model.lora.targets: 'gate'"):
    run_lib.plan(config)
