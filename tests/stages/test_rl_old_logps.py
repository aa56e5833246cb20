"""The one-update-per-rollout shortcut (loss.old_logps "auto"): the update's own log-probs, detached, stand in for
the old policy's, and the rollout drops its policy forward. The step must equal the step that recomputes them in
the rollout (old_logps "rollout": same parameters after the update, same loss, same entropy and KL metrics), its
compiled program must do less work by about one policy forward, and the shortcut must stay off wherever the old
log-probs are not the update's (several updates per rollout, the KL in the reward, PPO)."""

import jax
import numpy as np
import pytest
from flax import nnx

from jaxrlhf.config import from_config
from jaxrlhf.data.synthetic import World, WorldConfig
from jaxrlhf.stages import rl
from jaxrlhf.train import optim
from jaxrlhf.train import scoring
from rl_step_setup import metric_value, rl_config, setup_step

TINY = dict(embed_dim=16, num_layers=1, num_heads=2, num_kv_heads=1, head_dim=8, mlp_dim=32,
            max_position_embeddings=64)


@pytest.fixture(scope="module")
def world():
  return World(WorldConfig(num_prompts=256, max_response_len=12))


def _cfg(**loss):
  return rl_config(TINY, {"num_generations": 4, "kl_mode": "loss", **loss}, sampling={"temperature": 0.8},
                   optimizer={"grad_accum_steps": 2})


def _step_and_inputs(world, cfg, compile_step=True):
  """(compiled make_rl_step, graphdef, a state whose reference differs from the policy (the KL is not 0), prompts,
  reward sources)."""
  setup, state, prompts, sources = setup_step(world, cfg, TINY)
  step = None
  if compile_step:
    step_fn = rl.make_rl_step(setup.graphdef, cfg, optim.make_optimizer(cfg.optimizer), sources,
                              eos_ids=(world.tokenizer.eos_id,), pad_id=world.tokenizer.pad_id, world=world)
    step = jax.jit(step_fn).lower(state, prompts).compile()
  return step, setup.graphdef, state, prompts, sources


@pytest.mark.parametrize("variant", ["", "gspo"])
def test_detached_step_equals_the_step_with_rollout_log_probs(world, variant):
  loss = dict(variant=variant) if variant else dict(epsilon_high=0.28)
  detached_cfg, rollout_cfg = _cfg(**loss), _cfg(old_logps="rollout", **loss)
  assert rl.detached_old_logps(detached_cfg.loss) and not rl.detached_old_logps(rollout_cfg.loss)
  results = {}
  for name, cfg in (("detached", detached_cfg), ("rollout", rollout_cfg)):
    step, _, state, prompts, _ = _step_and_inputs(world, cfg)
    new_state, metrics = step(state, prompts)
    flops = step.cost_analysis()["flops"]
    results[name] = (new_state, metrics, flops)
  (a, ma, flops_a), (b, mb, flops_b) = results["detached"], results["rollout"]
  assert metric_value(ma["gold"]) == metric_value(mb["gold"])  # the same rollout
  for key in ("loss", "entropy", "kl", "kl_loss_term"):
    assert metric_value(ma[key]) == pytest.approx(metric_value(mb[key]), rel=1e-5, abs=1e-6), key
  assert abs(metric_value(ma["kl"])) > 1e-3  # the reference differs: the KL metric is not trivially 0
  # Adam's first update is ~ -lr * sign(g): equal gradients give equal parameters (up to near-0 gradients' noise).
  for x, y in zip(jax.tree.leaves(a.params), jax.tree.leaves(b.params)):
    np.testing.assert_allclose(x, y, rtol=1e-4, atol=1e-5)
  # The rollout's policy forward (R = 8 rows x 12 tokens, 2 FLOPs per weight per token at least) is gone.
  n_params = sum(x.size for x in jax.tree.leaves(a.params))
  assert flops_b - flops_a > 2 * n_params * 8 * 12 * 0.5, (flops_a, flops_b)


def test_rollout_without_policy_log_probs(world):
  cfg = _cfg()
  _, graphdef, state, prompts, sources = _step_and_inputs(world, cfg, compile_step=False)
  model = nnx.merge(graphdef, state.params, state.extra)
  kwargs = dict(loss=cfg.loss, sampling=cfg.sampling, sources=sources, eos_ids=(world.tokenizer.eos_id,),
                pad_id=world.tokenizer.pad_id)
  full, _ = jax.jit(lambda p: rl.rollout(model, p, jax.random.PRNGKey(0), **kwargs))(prompts)
  lean, lean_metrics = jax.jit(lambda p: rl.rollout(model, p, jax.random.PRNGKey(0), policy_logps=False,
                                                    **kwargs))(prompts)
  assert "old_logps" not in lean and "entropy" not in lean_metrics and "kl" not in lean_metrics
  for key in ("tokens", "ref_logps", "rewards", "advantages"):
    np.testing.assert_array_equal(lean[key], full[key])
  with pytest.raises(ValueError, match="kl_mode 'reward'"):
    rl.rollout(model, prompts, jax.random.PRNGKey(0), policy_logps=False,
               **dict(kwargs, loss=_cfg(kl_mode="reward").loss))


@pytest.mark.parametrize("loss,detached", [
    (dict(), True), (dict(algorithm="rloo"), True), (dict(variant="dapo"), True), (dict(kl_mode="none"), True),
    (dict(num_iterations=2), False), (dict(kl_mode="reward"), False), (dict(old_logps="rollout"), False),
    (dict(algorithm="ppo", kl_mode="reward"), False),
    (dict(algorithm="online_dpo", num_generations=2), False)])
def test_when_the_shortcut_applies(loss, detached):
  cfg = from_config({"num_generations": 4, **loss}, rl.RLLossConfig)
  assert rl.detached_old_logps(cfg) is detached


# ------------------------------------------------------------------------------------------------ online DPO
def _online_dpo_cfg(temperature=1.0, **loss):
  return rl_config(TINY, {"algorithm": "online_dpo", "num_generations": 2, **loss},
                   sampling={"temperature": temperature}, optimizer={"grad_accum_steps": 2})


def _compiled_online_dpo_step(world, cfg):
  setup, state, prompts, sources = setup_step(world, cfg, TINY)
  step_fn = rl.make_online_dpo_step(setup.graphdef, cfg, optim.make_optimizer(cfg.optimizer), sources,
                                    eos_ids=(world.tokenizer.eos_id,), pad_id=world.tokenizer.pad_id, world=world)
  step = jax.jit(step_fn).lower(state, prompts).compile()
  return setup, state, prompts, sources, step


@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_online_dpo_step_reports_the_rollout_metrics_from_its_update(world, temperature):
  """Online DPO with one update per rollout, at any sampling temperature: no rollout policy forward; its `entropy`
  and `kl` metrics come from the update's forward over the same rows (2 micro-batches) and equal the rollout's; the
  update is the same and the compiled step does at least half a policy forward less work."""
  lean_cfg = _online_dpo_cfg(temperature)
  full_cfg = _online_dpo_cfg(temperature, old_logps="rollout")
  assert rl.online_dpo_metrics_from_update(lean_cfg.loss)
  assert not rl.online_dpo_metrics_from_update(full_cfg.loss)
  results = {}
  for name, cfg in (("lean", lean_cfg), ("full", full_cfg)):
    _, state, prompts, _, step = _compiled_online_dpo_step(world, cfg)
    new_state, metrics = step(state, prompts)
    results[name] = (new_state, metrics, step.cost_analysis()["flops"], state)
  (a, ma, flops_a, state), (b, mb, flops_b, _) = results["lean"], results["full"]
  assert metric_value(ma["gold"]) == metric_value(mb["gold"])  # the same rollout
  for key in ("loss", "entropy", "kl", "rewards/accuracy", "scores/margin"):
    assert metric_value(ma[key]) == pytest.approx(metric_value(mb[key]), rel=1e-5, abs=1e-6), key
  assert abs(metric_value(ma["kl"])) > 1e-3 and metric_value(ma["entropy"]) > 0.1  # not trivially 0
  for x, y in zip(jax.tree.leaves(a.params), jax.tree.leaves(b.params)):
    np.testing.assert_allclose(x, y, rtol=1e-4, atol=1e-5)
  n_params = sum(x.size for x in jax.tree.leaves(state.params))
  assert flops_b - flops_a > 2 * n_params * 4 * 6 * 0.5, (flops_a, flops_b)  # R = 4 rows x 6 tokens


def test_online_dpo_scores_at_temperature_1_whatever_it_samples_at(world):
  """At sampling temperature 0.7 online DPO's reference log-probs (its loss's and the `kl` metric's) and its `kl` /
  `entropy` metrics are at temperature 1 (TRL's OnlineDPOTrainer reads the raw logits): the metrics equal a hand
  computation over the step's rollout rows, and the compiled step does the work of the temperature-1 step (one
  reference forward, no policy forward in the rollout) within 1%."""
  cfg = _online_dpo_cfg(0.7)
  setup, state, prompts, sources, step = _compiled_online_dpo_step(world, cfg)
  _, metrics = step(state, prompts)
  model = nnx.merge(setup.graphdef, state.params, state.extra)
  batch, _ = rl.rollout(model, prompts, rl.rollout_key(state), loss=cfg.loss, sampling=cfg.sampling,
                        sources=sources, eos_ids=(world.tokenizer.eos_id,), pad_id=world.tokenizer.pad_id,
                        world=world, policy_logps=False)
  args = (batch["prompt_ids"], batch["prompt_mask"], batch["tokens"], batch["mask"], 1.0)
  policy_logps, entropy = scoring.response_logps(model.policy, *args)
  ref_logps, _ = scoring.response_logps(model.reference_model(), *args)
  np.testing.assert_allclose(np.asarray(batch["ref_logps"]), np.asarray(ref_logps), rtol=1e-6, atol=1e-6)
  valid = np.asarray(batch["mask"]) > 0
  kl = np.mean(np.sum((np.asarray(policy_logps) - np.asarray(ref_logps)) * valid, axis=1))
  assert metric_value(metrics["kl"]) == pytest.approx(kl, rel=1e-4, abs=1e-6)
  assert metric_value(metrics["entropy"]) == pytest.approx(np.asarray(entropy)[valid].mean(), rel=1e-5)
  hot_entropy = np.asarray(scoring.response_logps(model.policy, *args[:4], 0.7)[1])[valid].mean()
  assert abs(hot_entropy - metric_value(metrics["entropy"])) > 1e-3  # the temperature matters for this check
  flops_1 = _compiled_online_dpo_step(world, _online_dpo_cfg(1.0))[-1].cost_analysis()["flops"]
  assert step.cost_analysis()["flops"] == pytest.approx(flops_1, rel=1e-2)


@pytest.mark.parametrize("temperature,loss,lean", [
    (1.0, dict(), True), (0.8, dict(), True), (1.0, dict(num_iterations=2), False),
    (0.8, dict(old_logps="rollout"), False)])
def test_when_online_dpo_takes_its_metrics_from_the_update(temperature, loss, lean):
  cfg = _online_dpo_cfg(temperature, **loss)
  assert rl.online_dpo_metrics_from_update(cfg.loss) is lean
  assert not rl.online_dpo_metrics_from_update(_cfg().loss)  # GRPO: `detached_old_logps` decides
