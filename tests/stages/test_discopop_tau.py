"""DiscoPOP's tau in the preference stage (`loss.discopop_tau`, TRL's `discopop_tau`): after a few updates the
held-out loss is DiscoPOP's formula (Lu et al. 2024, Eq. 5) in float64 numpy on the policy's and the frozen
reference's sequence log-probs at that tau, not at the default; keys that nothing reads are refused."""

import jax.numpy as jnp
import numpy as np
import pytest

from jaxrlhf.config import ConfigError, from_config
from jaxrlhf.models import from_pretrained
from jaxrlhf.stages import inputs as inputs_lib
from jaxrlhf.stages import preference, rl
from jaxrlhf.train import scoring

BETA = 0.5


def _cfg(lr, steps, init_from="", **loss):
  model = dict(init_from=init_from) if init_from else dict(config=dict(
      embed_dim=32, num_layers=1, num_heads=2, num_kv_heads=2, head_dim=16, mlp_dim=64))
  section = dict(seed=0, num_devices=1, model=model,
                 data=dict(num_train=64, num_eval=16, batch_size=8, max_length=40, shared_prompt="off"),
                 loss=dict(dict(beta=BETA), **loss), optimizer=dict(learning_rate=lr),
                 loop=dict(num_steps=steps, log_every=1, checkpoint_every=steps, progress=False, tensorboard=False,
                           async_checkpoints=False))
  return from_config(section, preference.PreferenceConfig, path="config")


def _sequence_logps(model, cfg):
  context = inputs_lib.stage_context(cfg, {})
  _, held_out, _ = inputs_lib.preference_records(cfg.data, context.world)
  held_out, _ = inputs_lib.budgeted_records(held_out, context.tokenizer, cfg.data, "preference", "eval")
  chosen, rejected = [], []
  for batch in inputs_lib.eval_batches(held_out, context.tokenizer, cfg.data, "preference"):
    token_logps, mask = scoring.pair_token_logps(model, {k: jnp.asarray(v) for k, v in batch.items()})
    sums = np.sum(np.asarray(token_logps, np.float64) * np.asarray(mask), axis=1)
    b = len(batch["weight"])
    keep = np.flatnonzero(batch["weight"] > 0)
    chosen.append(sums[:b][keep])
    rejected.append(sums[b:][keep])
  return np.concatenate(chosen), np.concatenate(rejected)


def _discopop(d, tau):
  """(1 - m) (-log sig(beta d)) + m exp(-beta d), m = sig(beta d / tau), per pair."""
  z = BETA * d
  m = 1 / (1 + np.exp(-z / tau))
  return (1 - m) * np.log1p(np.exp(-z)) + m * np.exp(-z)


def test_held_out_loss_is_discopops_formula_at_the_configured_tau(tmp_path):
  start = preference.run(_cfg(0.0, 1), str(tmp_path / "start"), {})["model_dir"]  # the reference
  cfg = _cfg(3e-2, 4, init_from=start, loss_type=("discopop",), discopop_tau=0.3)
  out = preference.run(cfg, str(tmp_path / "tau"), {})
  pc, pr = _sequence_logps(from_pretrained(out["model_dir"])[0], cfg)
  rc, rr = _sequence_logps(from_pretrained(start)[0], cfg)
  d = (pc - rc) - (pr - rr)
  assert len(d) == 16 and np.abs(BETA * d).max() > 0.05  # The policy has moved: tau matters.
  assert out["metrics"]["eval/loss"] == pytest.approx(np.mean(_discopop(d, 0.3)), rel=1e-4)
  assert abs(np.mean(_discopop(d, 0.3)) - np.mean(_discopop(d, 0.05))) > 1e-3


def test_a_tau_nothing_reads_is_refused():
  with pytest.raises(ConfigError, match=r"config\.loss\.discopop_tau: 0\.3 is read by loss_type 'discopop' only"):
    _cfg(0.0, 1, discopop_tau=0.3)
  with pytest.raises(ConfigError, match=r"config\.loss\.discopop_tau: must be > 0, got 0\.0"):
    _cfg(0.0, 1, loss_type=("discopop",), discopop_tau=0.0)
  section = dict(loss=dict(algorithm="online_dpo", num_generations=2, dpo_loss_type="sigmoid", discopop_tau=0.3))
  with pytest.raises(ConfigError, match=r"discopop_tau: read by dpo_loss_type 'discopop' only"):
    from_config(section, rl.RLConfig, path="config")
  section["loss"].update(algorithm="grpo", num_generations=4, dpo_loss_type="sigmoid")
  with pytest.raises(ConfigError, match=r"discopop_tau"):
    from_config(section, rl.RLConfig, path="config")


def test_online_dpo_takes_the_configured_tau():
  loss = rl.RLLossConfig(algorithm="online_dpo", num_generations=2, beta=BETA, dpo_loss_type="discopop",
                         discopop_tau=0.3)
  rng = np.random.default_rng(0)
  pc, pr, rc, rr = (rng.normal(-3, 1, 4).astype(np.float32) for _ in range(4))
  batch = {"ref_chosen_logps": jnp.asarray(rc), "ref_rejected_logps": jnp.asarray(rr), "pair_weight": jnp.ones(4)}
  total, weight, _ = rl.online_dpo_loss_terms(loss, jnp.asarray(pc), jnp.asarray(pr), batch)
  d = (pc.astype(np.float64) - rc) - (pr - rr)
  assert float(total / weight) == pytest.approx(np.mean(_discopop(d, 0.3)), rel=1e-5)
  assert abs(np.mean(_discopop(d, 0.3)) - np.mean(_discopop(d, 0.05))) > 1e-3
