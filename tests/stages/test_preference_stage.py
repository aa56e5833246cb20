"""Preference optimization: the step's DPO / SimPO / KTO / T-REG losses against the loss functions applied to
independently computed log-probs, every loss type runs, the frozen reference gets no update, the reference
cache round-trips, training lowers the loss, and 1 vs 8 devices agree."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from jaxrlhf.config import from_config
from jaxrlhf.losses import kto as kto_lib
from jaxrlhf.losses import preference as pref_lib
from jaxrlhf.losses import reference_free, token_level
from jaxrlhf.models import CausalLM, ModelConfig
from jaxrlhf.stages import preference
from jaxrlhf.train import scoring
from jaxrlhf.train import state as state_lib

TINY = ModelConfig(vocab_size=32, embed_dim=16, num_layers=1, num_heads=2, num_kv_heads=2, head_dim=8, mlp_dim=32)


def _batch(rng, b=4, t=8, vocab=32):
  batch = {}
  for side in ("chosen", "rejected"):
    ids = rng.integers(4, vocab, (b, t)).astype(np.int32)
    att = np.ones((b, t), np.int32)
    att[1, rng.integers(5, t):] = 0
    loss = att.copy()
    loss[:, :3] = 0  # 3 prompt tokens
    batch.update({f"{side}_input_ids": ids, f"{side}_attention_mask": att, f"{side}_loss_mask": loss})
  batch["rejected_input_ids"][:, :3] = batch["chosen_input_ids"][:, :3]  # same prompt
  batch["weight"] = np.array([1.0, 0.5, 1.0, 0.0][:b], np.float32)
  batch["margin"] = np.array([1.0, 0.2, np.nan, 3.0][:b], np.float32)
  return batch


def _numpy_token_logps(model, ids, att, loss, prefix=()):
  """(B, T) log p(ids[t] | ids[<t]) at t where loss[t] = 1 (placed at t - 1), from the model's logits."""
  if prefix:
    n = len(prefix)
    ids = np.concatenate([np.tile(np.asarray(prefix, np.int32), (ids.shape[0], 1)), ids], 1)
    att = np.concatenate([np.ones((ids.shape[0], n), np.int32), att], 1)
    loss = np.concatenate([np.zeros((ids.shape[0], n), np.int32), loss], 1)
  logits = np.asarray(model(jnp.asarray(ids), jnp.asarray(att)), np.float64)
  logp = logits - np.log(np.exp(logits - logits.max(-1, keepdims=True)).sum(-1, keepdims=True)) \
      - logits.max(-1, keepdims=True)
  out = np.zeros(ids.shape, np.float64)
  for b in range(ids.shape[0]):
    for t in range(1, ids.shape[1]):
      if loss[b, t]:
        out[b, t - 1] = logp[b, t - 1, ids[b, t]]
  return out[:, len(prefix):] if prefix else out


def _side(model, batch, side, prefix=()):
  return _numpy_token_logps(model, batch[f"{side}_input_ids"], batch[f"{side}_attention_mask"],
                            batch[f"{side}_loss_mask"], prefix)


def _lengths(batch, side):
  return batch[f"{side}_loss_mask"][:, 1:].sum(-1).astype(np.float32)


def _with_ref(batch, ref_model):
  return dict(batch, ref_chosen_logps=_side(ref_model, batch, "chosen").sum(-1).astype(np.float32),
              ref_rejected_logps=_side(ref_model, batch, "rejected").sum(-1).astype(np.float32))


def _models():
  return CausalLM(TINY, rngs=nnx.Rngs(0)), CausalLM(TINY, rngs=nnx.Rngs(1))


@pytest.mark.parametrize("loss_type", [("sigmoid",), ("ipo",), ("hinge", "sft"), ("robust",)])
def test_dpo_step_loss_equals_dpo_loss_on_independent_logps(loss_type):
  policy, ref = _models()
  batch = _with_ref(_batch(np.random.default_rng(0)), ref)
  cfg = preference.PreferenceLossConfig(loss_type=loss_type, beta=0.3,
                                        label_smoothing=0.1 if "robust" in loss_type else 0.0)
  total, weight, metrics = preference.preference_loss_fn(cfg, resident=False)(
      policy, jax.tree.map(jnp.asarray, batch), None)
  pc, pr = _side(policy, batch, "chosen").sum(-1), _side(policy, batch, "rejected").sum(-1)
  lc, lr = _lengths(batch, "chosen"), _lengths(batch, "rejected")
  expected, m = pref_lib.dpo_loss(pc, pr, batch["ref_chosen_logps"], batch["ref_rejected_logps"],
                                  loss_type=loss_type, beta=0.3, label_smoothing=cfg.label_smoothing,
                                  chosen_lengths=lc, rejected_lengths=lr, chosen_nll=-pc / lc)
  w = batch["weight"]
  np.testing.assert_allclose(float(total), float(np.sum(w * expected)), rtol=1e-5)
  assert float(weight) == pytest.approx(w.sum())
  for name in preference.PAIR_METRICS:
    np.testing.assert_allclose(float(metrics[name].total / metrics[name].count),
                               float(np.sum(w * m[name]) / w.sum()), rtol=1e-5, atol=1e-6)
  # Throughput counts the response tokens of the real pairs: the weight-0 row (batch padding) is left out.
  assert w[3] == 0.0 and float(metrics["tokens"].value) == float(np.sum((lc + lr) * (w > 0)))


def test_resident_reference_equals_precomputed_and_gets_no_update():
  policy, ref = _models()
  batch = _batch(np.random.default_rng(1))
  cfg = preference.PreferenceLossConfig(beta=0.2)
  precomputed, _, _ = preference.preference_loss_fn(cfg, resident=False)(
      policy, jax.tree.map(jnp.asarray, _with_ref(batch, ref)), None)
  both = preference.PolicyWithReference(policy, ref)
  resident, _, _ = preference.preference_loss_fn(cfg, resident=True)(both, jax.tree.map(jnp.asarray, batch), None)
  np.testing.assert_allclose(float(resident), float(precomputed), rtol=1e-6)
  # The reference lives in `extra`: no gradient, no optimizer state, unchanged by a step.
  setup = state_lib.init_train_state(
      lambda key: preference.PolicyWithReference(CausalLM(TINY, rngs=nnx.Rngs(key)),
                                                 CausalLM(TINY, rngs=nnx.Rngs(key))),
      optax.sgd(1.0), 0)
  state = setup.init()
  assert list(state.params.keys()) == ["policy"] and list(state.extra.keys()) == ["reference"]
  step = jax.jit(state_lib.make_train_step(setup.graphdef, preference.preference_loss_fn(cfg, resident=True),
                                           optax.sgd(1.0)))
  new, _ = step(state, jax.tree.map(jnp.asarray, batch))
  for a, b in zip(jax.tree.leaves(state.extra), jax.tree.leaves(new.extra)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  assert not np.allclose(np.asarray(jax.tree.leaves(state.params)[0]), np.asarray(jax.tree.leaves(new.params)[0]))


def test_simpo_orpo_kto_match_loss_functions():
  policy, ref = _models()
  batch = _with_ref(_batch(np.random.default_rng(2)), ref)
  jb = jax.tree.map(jnp.asarray, batch)
  pc, pr = _side(policy, batch, "chosen").sum(-1), _side(policy, batch, "rejected").sum(-1)
  lc, lr = _lengths(batch, "chosen"), _lengths(batch, "rejected")
  w = batch["weight"]

  cfg = preference.PreferenceLossConfig(algorithm="simpo", beta=2.0, simpo_gamma=0.3)
  total, _, _ = preference.preference_loss_fn(cfg, resident=False)(policy, jb, None)
  expected, _ = reference_free.simpo_loss(pc, pr, lc, lr, beta=2.0, gamma=0.3)
  np.testing.assert_allclose(float(total), float(np.sum(w * expected)), rtol=1e-5)

  cfg = preference.PreferenceLossConfig(algorithm="orpo", beta=0.1)
  total, _, _ = preference.preference_loss_fn(cfg, resident=False)(policy, jb, None)
  expected, _ = reference_free.orpo_loss(pc, pr, lc, lr, chosen_nll=-pc / lc, beta=0.1)
  np.testing.assert_allclose(float(total), float(np.sum(w * expected)), rtol=1e-5)

  cfg = preference.PreferenceLossConfig(algorithm="kto", beta=0.1, desirable_weight=1.0, undesirable_weight=1.5,
                                        kto_reference_point="batch_mean")
  total, _, metrics = preference.preference_loss_fn(cfg, resident=False)(policy, jb, None)
  logps = np.concatenate([pc, pr])
  refs = np.concatenate([batch["ref_chosen_logps"], batch["ref_rejected_logps"]])
  w2 = np.concatenate([w, w])
  z0 = max(np.sum(w2 * (logps - refs)) / w2.sum(), 0.0)
  expected, _ = kto_lib.kto_loss(logps, refs, np.arange(8) < 4, kl=z0, beta=0.1, desirable_weight=1.0,
                                 undesirable_weight=1.5)
  expected = np.asarray(expected)
  np.testing.assert_allclose(float(total), float(np.sum(w * (expected[:4] + expected[4:]))), rtol=1e-5)
  np.testing.assert_allclose(float(metrics["kl"]), z0, rtol=1e-5, atol=1e-7)


def test_treg_policy_token_rewards_match_hand_computation():
  policy, ref = _models()
  batch = _with_ref(_batch(np.random.default_rng(3)), ref)
  better, worse = (2,), (3,)
  cfg = preference.PreferenceLossConfig(algorithm="treg", beta=0.1, treg_alpha=0.7)
  total, _, _ = preference.preference_loss_fn(cfg, resident=False, better_ids=better, worse_ids=worse)(
      policy, jax.tree.map(jnp.asarray, batch), None)
  tok = {s: _side(policy, batch, s) for s in ("chosen", "rejected")}
  masks = {s: np.concatenate([batch[f"{s}_loss_mask"][:, 1:], np.zeros((4, 1))], 1) for s in tok}
  rewards = {s: token_level.contrastive_token_rewards(_side(policy, batch, s, better), _side(policy, batch, s, worse),
                                                      masks[s]) for s in tok}
  expected, _ = token_level.treg_loss(tok["chosen"], tok["rejected"], batch["ref_chosen_logps"],
                                      batch["ref_rejected_logps"], rewards["chosen"], rewards["rejected"],
                                      masks["chosen"], masks["rejected"], beta=0.1, alpha=0.7,
                                      loss_type=("sigmoid",))
  np.testing.assert_allclose(float(total), float(np.sum(batch["weight"] * np.asarray(expected))), rtol=1e-5)


@pytest.mark.parametrize("loss_type", pref_lib.LOSS_TYPES)
def test_every_dpo_loss_type_gives_finite_loss_and_grads(loss_type):
  policy, ref = _models()
  batch = _with_ref(_batch(np.random.default_rng(4)), ref)
  if loss_type in pref_lib.SORTING_LOSS_TYPES:
    batch["weight"] = np.ones(4, np.float32)
  cfg = preference.PreferenceLossConfig(loss_type=(loss_type,),
                                        label_smoothing=0.01 if loss_type == "exo_pair" else 0.0)
  graphdef, params = nnx.split(policy)
  loss_fn = preference.preference_loss_fn(cfg, resident=False)
  (total, _), grads = jax.value_and_grad(
      lambda p: loss_fn(nnx.merge(graphdef, p), jax.tree.map(jnp.asarray, batch), None)[:2], has_aux=True)(params)
  assert np.isfinite(float(total))
  assert all(np.isfinite(np.asarray(g)).all() for g in jax.tree.leaves(grads))


def test_dynamic_beta_from_margins():
  policy, ref = _models()
  batch = _with_ref(_batch(np.random.default_rng(5)), ref)
  cfg = preference.PreferenceLossConfig(beta=0.1, dynamic_beta_w=0.5, dynamic_beta_k=1.0)
  total, _, _ = preference.preference_loss_fn(cfg, resident=False)(policy, jax.tree.map(jnp.asarray, batch), None)
  pc, pr = _side(policy, batch, "chosen").sum(-1), _side(policy, batch, "rejected").sum(-1)
  m = np.nan_to_num(batch["margin"], nan=0.0)
  beta = 0.1 * (1 + 0.5 * (1 - np.exp(-m)))
  expected, _ = pref_lib.dpo_loss(pc, pr, batch["ref_chosen_logps"], batch["ref_rejected_logps"], beta=beta)
  np.testing.assert_allclose(float(total), float(np.sum(batch["weight"] * expected)), rtol=1e-5)


def test_reference_cache_round_trip(tmp_path):
  policy, ref = _models()
  batch = _batch(np.random.default_rng(6))
  expected = _with_ref(batch, ref)
  ref_fn = jax.jit(lambda b: (*preference._halves(jnp.sum(scoring.pair_token_logps(ref, b)[0], -1)), None))
  cache = preference.ReferenceCache.compute(ref_fn, [batch])
  cache.save(str(tmp_path / "c.npz"))
  loaded = preference.ReferenceCache.load(str(tmp_path / "c.npz"))
  attached = loaded.attach(batch)
  valid = batch["weight"] > 0
  np.testing.assert_allclose(attached["ref_chosen_logps"][valid], expected["ref_chosen_logps"][valid], rtol=1e-5)
  np.testing.assert_allclose(attached["ref_rejected_logps"][valid], expected["ref_rejected_logps"][valid], rtol=1e-5)
  other = dict(batch, chosen_input_ids=batch["chosen_input_ids"] + 1)
  with pytest.raises(KeyError, match="reference cache"):
    loaded.attach(other)
  del policy


def _stage_cfg(**overrides):
  section = dict(seed=0, model=dict(config=dict(embed_dim=32, num_layers=1, num_heads=2, num_kv_heads=2, head_dim=16,
                                                 mlp_dim=64)),
                 data=dict(num_train=128, num_eval=32, batch_size=16, max_length=40),
                 optimizer=dict(learning_rate=1e-2),
                 loop=dict(num_steps=3, log_every=1, checkpoint_every=3, progress=False, tensorboard=False,
                           async_checkpoints=False))
  section.update(overrides)
  return from_config(section, preference.PreferenceConfig, path="config")


def _losses(workdir):
  with open(workdir / "metrics.jsonl") as f:
    return [json.loads(l)["train/loss"] for l in f if "train/loss" in l]


def test_dpo_stage_lowers_loss_and_reuses_cache_on_resume(tmp_path, capsys):
  cfg = _stage_cfg(loop=dict(num_steps=24, log_every=4, checkpoint_every=12, progress=False, tensorboard=False,
                             async_checkpoints=False))
  out = preference.run(cfg, str(tmp_path), {})
  losses = _losses(tmp_path)
  assert losses[-1] < losses[0] - 0.05 and losses[0] == pytest.approx(np.log(2), abs=0.05), losses
  assert (tmp_path / "reference_cache.npz").exists() and out["metrics"]["eval/rewards/accuracy"] >= 0
  # A rerun of the finished workdir loads the cache instead of recomputing it.
  preference.run(cfg, str(tmp_path), {})
  out = capsys.readouterr().out
  assert "reusing reference log-probs" in out and "[checkpoint] WARNING" not in out
  # Resumed for more steps at another learning rate: it goes on, and says which settings changed since step 24.
  more = _stage_cfg(optimizer=dict(learning_rate=5e-3), loop=dict(num_steps=26, log_every=2, checkpoint_every=12,
                                                                  progress=False, tensorboard=False,
                                                                  async_checkpoints=False))
  preference.run(more, str(tmp_path), {})
  warning = [l for l in capsys.readouterr().out.splitlines() if l.startswith("[checkpoint] WARNING")]
  assert len(warning) == 1 and "step 24" in warning[0], warning
  assert "loop.num_steps: 24 -> 26" in warning[0] and "optimizer.learning_rate: 0.01 -> 0.005" in warning[0], warning
  assert len(_losses(tmp_path)) == 24 // 4 + 1  # The first run's 6 logged steps, then step 26's.


@pytest.mark.slow  # ~25 s: two stage runs.
def test_dpo_stage_same_losses_on_1_and_8_devices(tmp_path):
  runs = {n: (preference.run(_stage_cfg(num_devices=n, reference="resident"),
                                        str(tmp_path / f"d{n}"), {}), _losses(tmp_path / f"d{n}"))[1]
          for n in (1, 8)}
  np.testing.assert_allclose(runs[1], runs[8], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("reference", ["precompute", "resident"])
def test_dpo_stage_same_losses_with_shared_prompt_scoring(tmp_path, reference):
  """One [prompt | chosen | rejected] row per pair (and its reference cache) trains exactly as two rows."""
  runs = {}
  for mode in ("off", "on"):
    cfg = _stage_cfg(reference=reference, data=dict(num_train=128, num_eval=32, batch_size=16, max_length=40,
                                                    shared_prompt=mode))
    out = preference.run(cfg, str(tmp_path / mode), {})
    assert out["data_report"]["shared_prompt"] == {"mode": mode, "used": mode == "on"}
    runs[mode] = (_losses(tmp_path / mode), out["metrics"])
  np.testing.assert_allclose(runs["on"][0], runs["off"][0], rtol=1e-5, atol=1e-5)
  for key in ("eval/loss", "eval/rewards/margin", "eval/logps/chosen", "eval/logps/rejected"):
    np.testing.assert_allclose(runs["on"][1][key], runs["off"][1][key], rtol=1e-4, atol=1e-4)


def test_mean_dynamic_beta_golden():
  from jaxrlhf.data.records import PreferenceRecord
  records = [PreferenceRecord(prompt="p", chosen="a", rejected="b", margin=m) for m in (0.0, 2.0, -1.0, None)]
  loss = preference.PreferenceLossConfig(beta=0.2, dynamic_beta_w=0.5, dynamic_beta_k=0.5)
  # beta_i = 0.2 (1 + 0.5 (1 - exp(-0.5 max(m, 0)))); None / negative margins give 0.2.
  want = np.mean([0.2, 0.2 * (1 + 0.5 * (1 - np.exp(-1.0))), 0.2, 0.2])
  assert preference.mean_dynamic_beta(loss, records) == pytest.approx(want, rel=1e-6)


def test_dataset_mean_beta_trains_plain_dpo_at_the_mean_beta(tmp_path):
  """dynamic_beta_mode="dataset_mean" is exactly DPO at MM-DPO's mean beta over the training pairs (same losses),
  and the mean is reported as beta/mean; it needs dynamic_beta_w > 0."""
  data = dict(num_train=64, num_eval=16, batch_size=16, max_length=40, margin_from="score")
  loop = dict(num_steps=3, log_every=1, checkpoint_every=3, progress=False, tensorboard=False,
              async_checkpoints=False)
  matched = preference.run(_stage_cfg(data=data, loop=loop, loss=dict(dynamic_beta_w=0.5, dynamic_beta_k=0.5,
                                                                      dynamic_beta_mode="dataset_mean")),
                           str(tmp_path / "matched"), {})
  mean_beta = matched["metrics"]["beta/mean"]
  assert 0.1 < mean_beta < 0.15
  plain = preference.run(_stage_cfg(data=data, loop=loop, loss=dict(beta=mean_beta)), str(tmp_path / "plain"), {})
  np.testing.assert_allclose(_losses(tmp_path / "matched"), _losses(tmp_path / "plain"), rtol=1e-6)
  assert "beta/mean" not in plain["metrics"]
  with pytest.raises(Exception, match="dynamic_beta_mode.*dynamic_beta_w > 0"):
    _stage_cfg(loss=dict(dynamic_beta_mode="dataset_mean"))
