"""The rl stage refuses keys its algorithm / kl_mode never reads (a ConfigError naming the key, before any compute),
refuses top_p 0, and its eval metrics mean what the training metrics of the same name mean: PPO's reward/total
leaves out the KL penalty (training applies it per token), online DPO's kl is taken at temperature 1 (the
distribution its DPO loss trains), checked against the gold reward and a hand-written temperature-1 forward."""

import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jaxrlhf.config import ConfigError, from_config
from jaxrlhf.data.synthetic import World, WorldConfig
from jaxrlhf.stages import rl
from jaxrlhf.train import scoring
from rl_step_setup import rl_config, setup_step

TINY = dict(embed_dim=16, num_layers=1, num_heads=2, num_kv_heads=2, head_dim=8, mlp_dim=32,
            max_position_embeddings=64)


@pytest.fixture(scope="module")
def world():
  return World(WorldConfig(num_prompts=256, max_response_len=12))


# ------------------------------------------------------------------------------------------------ config
@pytest.mark.parametrize("loss,key,says", [
    ({"algorithm": "grpo", "rloo_normalize": True}, "loss.rloo_normalize", "algorithm 'rloo' only"),
    ({"algorithm": "rloo", "scale_rewards": "batch"}, "loss.scale_rewards", "algorithm 'grpo' only"),
    ({"algorithm": "rloo", "scale_rewards": "none"}, "loss.scale_rewards", "algorithm 'grpo' only"),
    ({"algorithm": "grpo", "kl_mode": "reward", "kl_estimator": "k2"}, "loss.kl_estimator", "sum_t k1"),
    ({"algorithm": "rloo", "kl_mode": "reward", "kl_estimator": "k2"}, "loss.kl_estimator", "sum_t k1"),
    ({"algorithm": "grpo", "kl_mode": "none", "kl_estimator": "k1"}, "loss.kl_estimator", "kl_mode='none'"),
    ({"algorithm": "ppo", "kl_mode": "none", "kl_estimator": "k1"}, "loss.kl_estimator", "kl_mode='none'"),
    ({"algorithm": "ppo", "kl_mode": "reward", "old_logps": "rollout"}, "loss.old_logps", "algorithm 'ppo'"),
    ({"algorithm": "grpo", "kl_mode": "none", "beta": 0.1}, "loss.beta", "kl_mode='none' leaves out"),
    ({"algorithm": "ppo", "kl_mode": "none", "beta": 0.2}, "loss.beta", "kl_mode='none' leaves out"),
    ({"algorithm": "rloo", "kl_mode": "none", "beta": 0.01}, "loss.beta", "kl_mode='none' leaves out"),  # < default
])
def test_ignored_keys_are_refused(loss, key, says):
  with pytest.raises(ConfigError, match=rf"^config\.{key}: .*{says}"):
    from_config({"loss": loss}, rl.RLConfig, path="config")


@pytest.mark.parametrize("loss", [
    {"algorithm": "rloo", "rloo_normalize": True},
    {"algorithm": "grpo", "scale_rewards": "batch"},
    {"algorithm": "rloo", "kl_mode": "reward", "kl_estimator": "k1"},  # configs/rloo.py: k1 is what it uses
    {"algorithm": "grpo", "kl_mode": "reward"},  # the default estimator left alone
    {"algorithm": "grpo", "kl_mode": "loss", "kl_estimator": "k2"},
    {"algorithm": "ppo", "kl_mode": "reward", "kl_estimator": "k3"},  # PPO's per-token penalty reads it
    {"algorithm": "grpo", "old_logps": "rollout"},
    {"algorithm": "grpo", "kl_mode": "none", "beta": 0.0},  # DAPO's "no KL": beta 0 says it too
    {"algorithm": "rloo", "kl_mode": "none"},
    {"algorithm": "online_dpo", "num_generations": 2, "beta": 0.5},  # the DPO loss's beta
])
def test_keys_that_are_read_are_accepted(loss):
  from_config({"loss": loss}, rl.RLConfig)


@pytest.mark.parametrize("top_p,ok", [(0.0, False), (-0.1, False), (1e-3, True), (1.0, True), (1.1, False)])
def test_top_p_lies_in_zero_one(top_p, ok):
  if ok:
    assert from_config({"sampling": {"top_p": top_p}}, rl.RLConfig).sampling.top_p == top_p
  else:
    with pytest.raises(ConfigError, match=r"config\.sampling\.top_p"):
      from_config({"sampling": {"top_p": top_p}}, rl.RLConfig, path="config")

# ------------------------------------------------------------------------------------------------ eval metrics
def _seq_logps_t1(model, ids, mask, tokens, resp_mask):
  """(R,) summed response log-probs from the raw logits (temperature 1), written out here."""
  p = ids.shape[1]
  full_mask = jnp.concatenate([mask > 0, resp_mask > 0], axis=1)
  full = jnp.where(full_mask, jnp.concatenate([ids, tokens], axis=1), 0)
  logits = model(full, full_mask)
  logp = jax.nn.log_softmax(logits[:, p - 1:-1].astype(jnp.float32), axis=-1)
  tok = jnp.take_along_axis(logp, full[:, p:, None], axis=-1)[..., 0]
  return jnp.sum(jnp.where(resp_mask > 0, tok, 0.0), axis=1)


@pytest.mark.parametrize("algorithm", ["ppo", "online_dpo"])
def test_eval_metrics_mean_the_training_metrics(world, algorithm):
  """Eval's rollout (one sample per held-out prompt, key seed + 1) and a training rollout with the run's loss config
  on the same prompts and key draw the same samples; their reward/total and kl agree, and equal the independent
  references: PPO's reward/total is the mean gold reward (no - beta * KL: PPO's penalty is per token in the GAE
  rewards), online DPO's kl the mean of sum_t log pi - log pi_ref at temperature 1 (not the sampling 0.6)."""
  loss = {"ppo": dict(algorithm="ppo", num_generations=2, kl_mode="reward", kl_estimator="k1", beta=2.0),
          "online_dpo": dict(algorithm="online_dpo", num_generations=2, beta=2.0)}[algorithm]
  cfg = rl_config(TINY, loss, sampling={"temperature": 0.6})
  setup, state, prompts, sources = setup_step(world, cfg, TINY)  # the reference differs from the policy
  eos, pad = (world.tokenizer.eos_id,), world.tokenizer.pad_id
  held_out = types.SimpleNamespace(ids=np.asarray(prompts["prompt_ids"]), mask=np.asarray(prompts["prompt_mask"]))
  evaluated = rl._eval_fn(cfg, setup, sources, held_out, world, eos, pad)(state)  # pylint: disable=protected-access

  model = nnx.merge(setup.graphdef, state.params, state.extra)
  batch, train_m = rl.rollout(model, prompts, jax.random.PRNGKey(cfg.seed + 1), loss=cfg.loss, sampling=cfg.sampling,
                              sources=sources, eos_ids=eos, pad_id=pad, world=world, num_samples=1)
  gold = world.gold_reward_np(batch["prompt_ids"], batch["prompt_mask"], batch["tokens"], batch["mask"])
  assert evaluated["gold"] == pytest.approx(float(np.mean(gold)), rel=1e-5, abs=1e-6)  # the same samples
  for key in ("reward/total", "kl"):
    assert evaluated[key] == pytest.approx(float(train_m[key]), rel=1e-5, abs=1e-5), key
  args = (batch["prompt_ids"], batch["prompt_mask"], batch["tokens"], batch["mask"])
  kl_t1 = float(np.mean(_seq_logps_t1(model.policy, *args) - _seq_logps_t1(model.reference_model(), *args)))
  if algorithm == "ppo":
    assert evaluated["reward/total"] == pytest.approx(float(np.mean(gold)), rel=1e-5, abs=1e-5)
    assert abs(cfg.loss.beta * evaluated["kl"]) > 1e-2  # a KL term in reward/total would show
  else:
    assert evaluated["kl"] == pytest.approx(kl_t1, rel=1e-4, abs=1e-4)
    sampled_t = scoring.response_logps(model.policy, *args, 0.6)[0].sum(1) - scoring.response_logps(
        model.reference_model(), *args, 0.6)[0].sum(1)
    assert abs(float(np.mean(sampled_t)) - kl_t1) > 1e-2  # the sampling temperature's KL would show


def test_standardize_needs_the_worlds_reference_responses(tmp_path):
  """Member standardization is taken over the train prompts' reference responses; prompt files have none, so it is
  refused when the config is read (before, the stage crashed after loading the models)."""
  prompts = tmp_path / "prompts.jsonl"
  prompts.write_text('{"prompt": "1 + 1 ="}\n')
  source = {"kind": "reward_model", "reward_model": "stage:rm", "aggregation": "min", "standardize": True}
  with pytest.raises(ConfigError, match=r"^config\.rewards\[1\]\.standardize: needs the training prompts' reference "
                                        r"responses.*'files'"):
    from_config({"model": {"init_from": str(tmp_path)}, "prompts": {"source": "files", "paths": (str(prompts),)},
                 "rewards": ({"kind": "length_penalty", "options": {"target": 4}}, source)}, rl.RLConfig,
                path="config")
  from_config({"rewards": (source,)}, rl.RLConfig)  # the world's prompts come with reference responses
