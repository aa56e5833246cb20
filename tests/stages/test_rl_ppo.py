"""PPO with a value model in the rl stage (loss.algorithm "ppo"): one stage update equals the same update recomputed
from a hand-written forward and `losses.ppo`'s pure functions (TRL-tested), a separate critic gets gradients only
from the value loss (and a shared head's backbone does get them), the adaptive KL coefficient follows TRL's
AdaptiveKLController across steps and survives a checkpoint resume, config mistakes name their key, and the
configs/ppo.py smoke chain runs end to end."""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jaxrlhf import config as config_lib
from jaxrlhf.config import ConfigError, from_config
from jaxrlhf.data.synthetic import World, WorldConfig
from jaxrlhf.losses import ppo
from jaxrlhf.models import ModelConfig
from jaxrlhf.models.heads import HeadConfig
from jaxrlhf.models.reward_model import RewardModel
from jaxrlhf.stages import reward_sources as rewards_lib
from jaxrlhf.stages import rl
from jaxrlhf.train import optim
from jaxrlhf.train import scoring
from rl_step_setup import metric_value, rl_config, setup_step

TINY = dict(embed_dim=16, num_layers=1, num_heads=2, num_kv_heads=2, head_dim=8, mlp_dim=32,
            max_position_embeddings=64)
REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.fixture(scope="module")
def world():
  return World(WorldConfig(num_prompts=256, max_response_len=12))


def _cfg(**loss):
  return rl_config(TINY, {"algorithm": "ppo", "num_generations": 4, "kl_mode": "reward", "kl_estimator": "k1",
                          **loss})


def _setup(world, cfg, critic=None):
  """(setup, state whose frozen reference differs from the policy, so the KL term is not 0, prompts, sources)."""
  return setup_step(world, cfg, TINY, critic)


def _hand_forward(model, batch, temperature):
  """Log-probs and values written out here: one policy forward, logits / T at positions P-1 .. P+N-2, the value
  head on the same hidden states."""
  p = batch["prompt_ids"].shape[1]
  valid = batch["mask"] > 0
  mask = jnp.concatenate([batch["prompt_mask"] > 0, valid], axis=1)
  ids = jnp.where(mask, jnp.concatenate([batch["prompt_ids"], batch["tokens"]], axis=1), 0)
  logits, hidden = model.policy(ids, mask, return_hidden=True)
  logp = jax.nn.log_softmax(logits[:, p - 1:-1] / temperature, axis=-1)
  logps = jnp.take_along_axis(logp, ids[:, p:, None], axis=-1)[..., 0]
  h = hidden[:, p - 1:-1]
  values = (jnp.einsum("bnd,d->bn", h, model.value_head.kernel[...][0]) + model.value_head.bias[...][0])
  return jnp.where(valid, logps, 0.0), jnp.where(valid, values, 0.0)


# ------------------------------------------------------------------------------------------------ one update
def test_ppo_step_equals_the_pure_functions(world):
  cfg = _cfg(ppo_epochs=1, num_mini_batches=1, kl_controller="adaptive", kl_target=0.5, kl_horizon=50.0,
             vf_coef=0.3, cliprange_value=0.05, gamma=0.99, lam=0.9, whiten_rewards=True)
  setup, state, prompts, sources = _setup(world, cfg)
  optimizer = optim.make_optimizer(cfg.optimizer)
  eos_ids, pad_id = (world.tokenizer.eos_id,), world.tokenizer.pad_id
  step = jax.jit(rl.make_ppo_step(setup.graphdef, cfg, optimizer, sources, eos_ids=eos_ids, pad_id=pad_id,
                                  world=world))
  new_state, metrics = step(state, prompts)

  # The same rollout (the stage's sampling), then everything else recomputed here.
  model = nnx.merge(setup.graphdef, state.params, state.extra)
  batch = jax.jit(lambda s: rl.rollout(nnx.merge(setup.graphdef, s.params, s.extra), prompts, rl.rollout_key(s),
                                       loss=cfg.loss, sampling=cfg.sampling, sources=sources, eos_ids=eos_ids,
                                       pad_id=pad_id, world=world)[0])(state)
  t = cfg.sampling.temperature
  gold = world.gold_reward_np(batch["prompt_ids"], batch["prompt_mask"], batch["tokens"], batch["mask"])
  np.testing.assert_allclose(batch["rewards"], gold, rtol=1e-5, atol=1e-6)  # the score, no sequence KL in it
  _, old_values = _hand_forward(model, batch, t)
  ref = nnx.merge(setup.graphdef, state.params, state.extra).reference
  p = batch["prompt_ids"].shape[1]
  ref_batch_mask = jnp.concatenate([batch["prompt_mask"] > 0, batch["mask"] > 0], axis=1)
  ref_ids = jnp.where(ref_batch_mask, jnp.concatenate([batch["prompt_ids"], batch["tokens"]], axis=1), 0)
  ref_logp = jax.nn.log_softmax(ref(ref_ids, ref_batch_mask)[:, p - 1:-1] / t, axis=-1)
  ref_logps = jnp.where(batch["mask"] > 0, jnp.take_along_axis(ref_logp, ref_ids[:, p:, None], axis=-1)[..., 0], 0.0)
  adv, ret, _ = ppo.ppo_advantages(jnp.asarray(gold), batch["old_logps"], ref_logps, old_values, batch["mask"],
                                   kl_coef=0.1, gamma=0.99, lam=0.9, kl_estimator="k1", whiten_rewards=True)

  def loss_of(params):
    m = nnx.merge(setup.graphdef, params, state.extra)
    logps, values = _hand_forward(m, batch, t)
    return ppo.ppo_loss(logps, batch["old_logps"], adv, values, old_values, ret, batch["mask"], clip_range=0.2,
                        clip_range_value=0.05, vf_coef=0.3)

  (loss, pure_metrics), grads = jax.jit(jax.value_and_grad(loss_of, has_aux=True))(state.params)
  updates, _ = optimizer.update(grads, state.opt_state, state.params)
  import optax  # pylint: disable=g-import-not-at-top
  expected = optax.apply_updates(state.params, updates)
  assert metric_value(metrics["loss"]) == pytest.approx(float(loss), rel=1e-4, abs=1e-6)
  for key in ("loss/value", "value/clipfrac", "policy/approxkl"):
    assert metric_value(metrics[key]) == pytest.approx(float(pure_metrics[key]), rel=1e-4, abs=1e-6), key
  # Adam's first update is ~ -lr * sign(g) (lr 1e-2): 1e-5 absorbs float noise on near-0 gradients only.
  for a, b in zip(jax.tree.leaves(new_state.params), jax.tree.leaves(expected)):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)
  assert jax.tree.leaves(nnx.state(nnx.merge(setup.graphdef, new_state.params, new_state.extra).value_head))

  # TRL's AdaptiveKLController.update(current, n_steps = batch size), by hand in float64.
  seq_kl = float(np.mean(np.sum(np.asarray(batch["old_logps"]) - np.asarray(ref_logps), axis=1)))
  assert abs(seq_kl) > 1e-3
  assert float(metrics["objective/kl"]) == pytest.approx(seq_kl, rel=1e-4, abs=1e-6)
  expected_coef = 0.1 * (1 + np.clip(seq_kl / 0.5 - 1, -0.2, 0.2) * 8 / 50.0)
  new_model = nnx.merge(setup.graphdef, new_state.params, new_state.extra)
  assert float(new_model.kl_coef[...]) == pytest.approx(expected_coef, rel=1e-5)
  assert float(metrics["kl_coef"]) == pytest.approx(0.1)


def test_minibatch_epochs_make_one_update_each(world):
  cfg = _cfg(ppo_epochs=2, num_mini_batches=2)  # 8 rows -> 2 minibatches of 4, twice
  setup, state, prompts, sources = _setup(world, cfg)
  step = jax.jit(rl.make_ppo_step(setup.graphdef, cfg, optim.make_optimizer(cfg.optimizer), sources,
                                  eos_ids=(world.tokenizer.eos_id,), pad_id=world.tokenizer.pad_id, world=world))
  new_state, metrics = step(state, prompts)
  assert int(new_state.step) == 4
  again, _ = step(state, prompts)  # the permutations are a function of the state: deterministic
  for a, b in zip(jax.tree.leaves(new_state.params), jax.tree.leaves(again.params)):
    np.testing.assert_array_equal(a, b)
  model = nnx.merge(setup.graphdef, new_state.params, new_state.extra)
  assert float(model.kl_coef[...]) == pytest.approx(0.1)  # the fixed controller
  assert np.isfinite(float(metrics["value/explained_variance"]))


def test_one_sample_per_prompt_is_enough_for_ppo(world):
  """PPO's baseline is the critic, not a group: num_generations=1 trains (2 prompts -> 2 rows; ppo_epochs x
  num_mini_batches updates that move the weights); the group algorithms refuse it (test_config_errors_name_the_key)."""
  cfg = _cfg(num_generations=1)
  setup, state, prompts, sources = _setup(world, cfg)
  step = jax.jit(rl.make_ppo_step(setup.graphdef, cfg, optim.make_optimizer(cfg.optimizer), sources,
                                  eos_ids=(world.tokenizer.eos_id,), pad_id=world.tokenizer.pad_id, world=world))
  new_state, metrics = step(state, prompts)
  assert int(new_state.step) == cfg.loss.ppo_epochs * cfg.loss.num_mini_batches
  assert np.isfinite(metric_value(metrics["loss"]))
  moved = [not np.array_equal(a, b) for a, b in zip(jax.tree.leaves(state.params), jax.tree.leaves(new_state.params))]
  assert any(moved)


@pytest.mark.parametrize("path,chunk", [("chunked", 5), ("fused", 5), ("fused", 0)])
@pytest.mark.parametrize("algorithm", ["ppo", "grpo", "online_dpo"])
def test_chunked_and_fused_log_probs_give_the_same_step(world, algorithm, path, chunk, monkeypatch):
  """loss.logps_path "chunked" (the LM head applied chunk by chunk, never the (R, N, V) logits) or "fused" (the same
  forward, the hand-written LM-head backward, the entropy a detached metric) changes no value: the same rollout,
  old / reference log-probs, loss, entropy and KL metrics and update as the full log-softmax, to float rounding.
  The fused function is traced for the fused step only (the update's log-probs and the rollout's)."""
  from jaxrlhf.losses import logps as logps_lib  # pylint: disable=g-import-not-at-top
  traced = []
  original = logps_lib.fused_sequence_logps
  monkeypatch.setattr(logps_lib, "fused_sequence_logps", lambda *a, **k: traced.append(1) or original(*a, **k))
  extra = {"ppo": {}, "grpo": {"algorithm": "grpo", "kl_mode": "loss", "kl_estimator": "k3"},
           "online_dpo": {"algorithm": "online_dpo", "num_generations": 2, "kl_mode": "loss", "kl_estimator": "k3"}
           }[algorithm]
  outs = []
  for logps_path, chunk_size in (("full", 0), (path, chunk)):
    cfg = _cfg(logps_path=logps_path, logps_chunk_size=chunk_size, **extra)
    assert rl.logps_head(cfg.loss) == scoring.resolve_logps_path(logps_path, chunk_size)
    setup, state, prompts, sources = _setup(world, cfg)
    make = {"ppo": rl.make_ppo_step, "online_dpo": rl.make_online_dpo_step}.get(algorithm, rl.make_rl_step)
    step = jax.jit(make(setup.graphdef, cfg, optim.make_optimizer(cfg.optimizer), sources,
                        eos_ids=(world.tokenizer.eos_id,), pad_id=world.tokenizer.pad_id, world=world))
    traced.clear()
    outs.append(step(state, prompts))
    assert (len(traced) >= 2) == (logps_path == "fused"), (logps_path, len(traced))
  (a, ma), (b, mb) = outs
  for key in ("loss", "kl", "entropy"):
    assert metric_value(ma[key]) == pytest.approx(metric_value(mb[key]), rel=1e-4, abs=1e-6), key
  for x, y in zip(jax.tree.leaves(a.params), jax.tree.leaves(b.params)):
    np.testing.assert_allclose(x, y, atol=2e-5)


# ------------------------------------------------------------------------------------------------ token rewards
def test_delta_token_rewards_give_the_step_score_as_return(world):
  """loss.token_rewards: the Delta-refined process reward on its tokens. With gamma = lam = 1 the GAE return from
  token t is the reward-to-go, which Delta telescopes to the PRM's own step score s_t (Gao et al. 2024, §4), plus
  the gold outcome on the last token: returns = gold + s_t on steps, gold on the end token, whatever the values."""
  cfg = from_config({
      "model": {"config": TINY}, "prompts_per_step": 2, "rewards": ({"kind": "gold"},
                                                                    {"kind": "process", "refinement": "delta"}),
      "sampling": {"max_new_tokens": 6},
      "loss": {"algorithm": "ppo", "num_generations": 4, "kl_mode": "none", "gamma": 1.0, "lam": 1.0,
               "token_rewards": True}}, rl.RLConfig)
  setup, state, prompts, _ = _setup(world, cfg)
  sources = rewards_lib.build_sources(cfg.rewards, world=world)
  eos_ids = (world.tokenizer.eos_id,) + tuple(range(3, world.tokenizer.vocab_size, 3))  # ragged lengths

  @jax.jit
  def targets(st):
    model = nnx.merge(setup.graphdef, st.params, st.extra)
    batch, _ = rl.rollout(model, prompts, jax.random.PRNGKey(1), loss=cfg.loss, sampling=cfg.sampling,
                          sources=sources, eos_ids=eos_ids, pad_id=world.tokenizer.pad_id, world=world)
    return batch, rl.ppo_targets(cfg.loss, model, batch, cfg.sampling.temperature)[0]

  rollout, batch = targets(state)
  gold = world.gold_reward_np(rollout["prompt_ids"], rollout["prompt_mask"], rollout["tokens"], rollout["mask"])
  scores, steps = rewards_lib.prm_step_scores(world.spec, rollout["prompt_ids"], rollout["prompt_mask"],
                                              rollout["tokens"], rollout["mask"])
  mask = np.asarray(rollout["mask"]) > 0
  assert np.asarray(steps).sum() > 0 and len(set(mask.sum(1))) > 1  # steps, and ragged lengths
  np.testing.assert_allclose(rollout["rewards"], gold, rtol=1e-5, atol=1e-6)  # the process part moved to tokens
  expected = np.where(mask, gold[:, None] + np.asarray(scores), 0.0)
  np.testing.assert_allclose(batch["returns"], expected, rtol=1e-5, atol=1e-5)


# ------------------------------------------------------------------------------------------------ the critic
def _grads(setup, state, batch, policy_cfg, value_cfg):
  """Gradients (pure dicts) of the stage's PPO loss with vf_coef = 0 (policy term only) and of the value term only
  (advantages 0, so the clipped surrogate is 0 with 0 gradient)."""
  def total(params, cfg, b):
    model = nnx.merge(setup.graphdef, params, state.extra)
    loss_total, weight, _ = rl.ppo_loss_fn(cfg.loss, cfg.sampling.temperature)(model, b, None)
    return loss_total / weight

  @jax.jit
  def both(params):
    return (jax.grad(total)(params, policy_cfg, batch),
            jax.grad(total)(params, value_cfg, dict(batch, advantages=jnp.zeros_like(batch["advantages"]))))

  return tuple(map(nnx.to_pure_dict, both(state.params)))


def _norm(tree):
  return float(sum(jnp.sum(jnp.square(x)) for x in jax.tree.leaves(tree)))


@pytest.mark.parametrize("value_model", ["critic", "policy_head"])
def test_value_model_gradients(world, value_model):
  """Separate critic: the policy loss leaves the critic's gradient exactly 0 and the value loss the policy's.
  Shared head: the value loss reaches the policy's backbone (and the policy loss never reaches the head)."""
  config = ModelConfig(vocab_size=world.tokenizer.vocab_size, **TINY)
  critic = None
  if value_model == "critic":
    rm = RewardModel(config, HeadConfig("mlp"), rngs=nnx.Rngs(11))
    critic = (lambda key: RewardModel(config, HeadConfig("mlp"), rngs=nnx.Rngs(key)),
              nnx.to_pure_dict(nnx.state(rm, nnx.Param)))
  setup, state, prompts, sources = _setup(world, _cfg(), critic)
  model = nnx.merge(setup.graphdef, state.params, state.extra)
  if critic is not None:  # the critic starts from the reward model's weights
    np.testing.assert_array_equal(model.critic.head.kernel[...], rm.head.kernel[...])
  cfg = _cfg()
  # A fixed rollout batch (no sampling: the gradients' structure is the point).
  rng = np.random.default_rng(0)
  r, n = 8, 6
  lengths = rng.integers(1, n + 1, r)
  batch = {"prompt_ids": jnp.repeat(prompts["prompt_ids"], 4, axis=0),
           "prompt_mask": jnp.repeat(prompts["prompt_mask"], 4, axis=0),
           "tokens": jnp.asarray(rng.integers(3, world.tokenizer.vocab_size, (r, n)), jnp.int32),
           "mask": jnp.asarray(np.arange(n)[None] < lengths[:, None], jnp.int32),
           "rewards": jnp.asarray(rng.normal(size=r), jnp.float32)}
  batch["old_logps"] = batch["ref_logps"] = jnp.asarray(rng.normal(-3, 0.3, (r, n)), jnp.float32) * batch["mask"]
  batch, _ = rl.ppo_targets(cfg.loss, model, batch, cfg.sampling.temperature)
  batch["old_logps"] = batch["old_logps"] + 0.1  # ratios != 1, so the policy loss has a gradient everywhere
  value_part = "critic" if critic is not None else "value_head"
  policy_only, value_only = _grads(setup, state, batch, _cfg(vf_coef=0.0), cfg)
  assert _norm(policy_only[value_part]) == 0.0 and _norm(policy_only["policy"]) > 0
  assert _norm(value_only[value_part]) > 0
  if critic is not None:
    assert _norm(value_only["policy"]) == 0.0
  else:
    assert _norm(value_only["policy"]["layers"]) > 0  # the shared backbone learns from the value loss


# ------------------------------------------------------------------------------------------------ resume
def _stage_config(steps):
  return from_config({
      "seed": 3, "model": {"config": TINY}, "prompts": {"world": {"num_prompts": 256, "max_response_len": 12}},
      "num_prompts": 16, "prompts_per_step": 2, "max_prompt_length": 6, "eval_prompts": 0, "num_devices": 1,
      "rewards": ({"kind": "gold"},),
      "loss": {"algorithm": "ppo", "num_generations": 4, "beta": 0.2, "kl_mode": "reward", "kl_estimator": "k1",
               "ppo_epochs": 2, "num_mini_batches": 2, "kl_controller": "adaptive", "kl_target": 0.01,
               "kl_horizon": 20.0},
      "sampling": {"max_new_tokens": 6}, "optimizer": {"learning_rate": 3e-2},
      "loop": {"num_steps": steps, "log_every": 1, "checkpoint_every": 1, "progress": False, "tensorboard": False,
               "async_checkpoints": False}}, rl.RLConfig)


def _lines(workdir):
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    return {d["step"]: d for d in map(json.loads, f) if "train/kl_coef" in d}


@pytest.mark.slow
def test_adaptive_kl_coef_across_steps_and_resume(tmp_path):
  full, resumed = str(tmp_path / "full"), str(tmp_path / "resumed")
  rl.run(_stage_config(3), full, {})
  a = _lines(full)
  assert sorted(a) == [1, 2, 3]
  coef = 0.2
  for s in (1, 2, 3):  # the logged coefficient is the one the step's rewards used; TRL's update follows
    assert a[s]["train/kl_coef"] == pytest.approx(coef, rel=1e-5)
    coef *= 1 + np.clip(a[s]["train/objective/kl"] / 0.01 - 1, -0.2, 0.2) * 8 / 20.0
    assert np.isfinite(a[s]["train/loss/value"])
  assert a[3]["train/kl_coef"] != pytest.approx(0.2, rel=1e-3)
  rl.run(_stage_config(2), resumed, {})
  rl.run(_stage_config(3), resumed, {})  # resumes at step 2: the coefficient comes back from the checkpoint
  b = _lines(resumed)
  for key in ("train/kl_coef", "train/objective/kl", "train/gold", "train/loss", "train/loss/value"):
    assert a[3][key] == pytest.approx(b[3][key], rel=1e-5, abs=1e-6), key


# ------------------------------------------------------------------------------------------------ config
@pytest.mark.parametrize("overrides,key", [
    ({"loss": {"ppo_epochs": 2}}, "loss.ppo_epochs"),
    ({"loss": {"algorithm": "grpo", "kl_controller": "adaptive"}}, "loss.kl_controller"),
    ({"loss": {"algorithm": "ppo", "kl_mode": "loss"}}, "loss.kl_mode"),
    ({"loss": {"algorithm": "ppo", "kl_mode": "none", "kl_controller": "adaptive"}}, "loss.kl_controller"),
    ({"loss": {"algorithm": "ppo", "kl_mode": "reward", "num_iterations": 2}}, "loss.num_iterations"),
    ({"loss": {"algorithm": "ppo", "kl_mode": "reward", "epsilon_high": 0.3}}, "loss.epsilon_high"),
    ({"loss": {"algorithm": "ppo", "kl_mode": "reward", "dynamic_sampling": True}}, "loss.dynamic_sampling"),
    ({"loss": {"algorithm": "ppo", "kl_mode": "reward", "num_mini_batches": 3}}, "loss.num_mini_batches"),
    ({"loss": {"algorithm": "ppo", "kl_mode": "reward", "num_mini_batches": 2}, "optimizer": {"grad_accum_steps": 8}},
     "loss.num_mini_batches"),
    ({"loss": {"algorithm": "ppo", "kl_mode": "reward", "lam": 1.5}}, "loss.lam"),
    ({"value_model": "stage:reward"}, "value_model"),
    ({"loss": {"algorithm": "ppo", "kl_mode": "reward", "token_rewards": True}}, "loss.token_rewards"),
    ({"loss": {"token_rewards": True}}, "loss.token_rewards"),
    ({"loss": {"num_generations": 1}}, "loss.num_generations"),
    ({"loss": {"algorithm": "rloo", "num_generations": 1}}, "loss.num_generations"),
])
def test_config_errors_name_the_key(overrides, key):
  with pytest.raises(ConfigError, match=rf"config\.{key}\b"):
    from_config({"prompts_per_step": 2, **overrides}, rl.RLConfig)


# ------------------------------------------------------------------------------------------------ end to end
@pytest.mark.slow  # sft -> reward -> ppo (critic from the reward stage) -> evaluate: ~40 s on 2 cores
def test_ppo_smoke_config_runs_end_to_end(tmp_path):
  from experiments import run as run_lib  # pylint: disable=g-import-not-at-top
  config = config_lib.load_config(os.path.join(REPO_ROOT, "configs", "ppo.py") + ":smoke_critic")
  assert config.ppo.loss.algorithm == "ppo" and config.ppo.value_model == "stage:reward"
  outputs = run_lib.run(config, str(tmp_path))
  m = outputs["ppo"]["metrics"]
  for key in ("train/loss", "train/loss/value", "train/value/error", "train/policy/clipfrac", "train/kl_coef"):
    assert np.isfinite(m[key]), key
  assert m["train/kl_coef"] != 0.05  # the adaptive controller moved it
  assert np.isfinite(outputs["evaluate"]["metrics"]["gold/gain"])


@pytest.mark.slow
@pytest.mark.parametrize("mesh", [{"data": 8}, {"data": 1, "fsdp": 8}])
def test_one_and_eight_devices_give_equal_losses(tmp_path, mesh):
  """The conftest's 8 CPU devices: the same PPO run on one device and on a mesh of 8 (replicated or FSDP-sharded
  policy, value head and optimizer state) logs equal losses, values and KL coefficients. Step 1 (a rollout and
  4 minibatch updates) to 2e-4; step 2 samples from the updated policy: FSDP's different reduction order, amplified
  by 4 Adam updates at lr 3e-2, moves its value mean by ~3e-3 relative, so step 2 is held to 1e-2 there."""
  import dataclasses  # pylint: disable=g-import-not-at-top
  from jaxrlhf.parallel import MeshConfig  # pylint: disable=g-import-not-at-top
  one, eight = str(tmp_path / "one"), str(tmp_path / "eight")
  rl.run(_stage_config(2), one, {})
  rl.run(dataclasses.replace(_stage_config(2), num_devices=8, mesh=MeshConfig(**mesh)), eight, {})
  a, b = _lines(one), _lines(eight)
  for s in (1, 2):
    rel = 2e-4 if s == 1 or "fsdp" not in mesh else 1e-2
    for key in ("train/loss", "train/loss/policy", "train/loss/value", "train/value/mean", "train/kl_coef",
                "train/gold"):
      assert a[s][key] == pytest.approx(b[s][key], rel=rel, abs=2e-5), (s, key)


@pytest.mark.parametrize("spec", ["ppo.py:default", "ppo.py:smoke", "ppo.py:critic", "ppo.py:smoke_critic",
                                  "papers/clip_delta.py:ppo", "papers/clip_delta.py:ppo_smoke"])
def test_ppo_configs_plan(spec):
  """Every PPO config variant converts, validates and has its stage references checked by the planner."""
  from experiments import run as run_lib  # pylint: disable=g-import-not-at-top
  config = config_lib.load_config(os.path.join(REPO_ROOT, "configs", spec))
  stages = {s.name: s for s in run_lib.plan(config)}
  ppo_stages = [s for s in stages.values() if getattr(s.config, "loss", None) is not None
                and getattr(s.config.loss, "algorithm", "") == "ppo"]
  assert ppo_stages, spec
  if "clip_delta" in spec:
    assert {s.name: s.config.loss.token_rewards for s in ppo_stages}["rl_delta"]
