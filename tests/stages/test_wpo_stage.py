"""WPO in the preference stage (`loss.use_weighting`): at learning rate 0 (policy = reference, every pair's DPO loss
log 2) the held-out loss is log 2 times the mean pair weight computed in float64 numpy from the model's logits, the
same on the full, chunked and shared-prompt paths; the other algorithms and the sorting losses refuse it."""

import math

import numpy as np
import pytest

from jaxrlhf.config import ConfigError, from_config
from jaxrlhf.models import from_pretrained
from jaxrlhf.stages import inputs as inputs_lib
from jaxrlhf.stages import preference


def _cfg(shared_prompt="off", logps_path="auto", chunk=0, **loss):
  section = dict(seed=0, num_devices=1,
                 model=dict(config=dict(embed_dim=32, num_layers=1, num_heads=2, num_kv_heads=2, head_dim=16,
                                        mlp_dim=64)),
                 data=dict(num_train=32, num_eval=16, batch_size=8, max_length=40, shared_prompt=shared_prompt),
                 loss=dict(dict(use_weighting=True), **loss), logps_path=logps_path, logps_chunk_size=chunk,
                 optimizer=dict(learning_rate=0.0),
                 loop=dict(num_steps=1, log_every=1, checkpoint_every=1, progress=False, tensorboard=False,
                           async_checkpoints=False))
  return from_config(section, preference.PreferenceConfig, path="config")


def _numpy_weight(model, ids, attention, loss_mask):
  """exp(mean over response tokens of log p(y_t) - log sum_v p_v^2), float64, from the full logits of one row."""
  n = int(attention.sum())
  ids, loss_mask = ids[:n], loss_mask[:n]
  logits = np.asarray(model(ids[None], np.ones((1, n), np.int32)), np.float64)[0]
  logp = logits - logits.max(-1, keepdims=True)
  logp -= np.log(np.exp(logp).sum(-1, keepdims=True))
  log_sum_sq = np.log(np.exp(2 * logp).sum(-1))
  terms = [logp[t - 1, ids[t]] - log_sum_sq[t - 1] for t in range(1, n) if loss_mask[t]]
  return math.exp(np.mean(terms)) if terms else 1.0


def test_held_out_loss_is_log2_times_the_numpy_pair_weights(tmp_path):
  cfg = _cfg()
  out = preference.run(cfg, str(tmp_path / "full"), {})
  model, _ = from_pretrained(out["model_dir"])
  context = inputs_lib.stage_context(cfg, {})
  _, held_out, _ = inputs_lib.preference_records(cfg.data, context.world)
  held_out, _ = inputs_lib.budgeted_records(held_out, context.tokenizer, cfg.data, "preference", "eval")
  weights = []
  for batch in inputs_lib.eval_batches(held_out, context.tokenizer, cfg.data, "preference"):
    for i in np.flatnonzero(batch["weight"] > 0):
      weights.append(np.prod([_numpy_weight(model, batch[f"{side}_input_ids"][i], batch[f"{side}_attention_mask"][i],
                                            batch[f"{side}_loss_mask"][i]) for side in ("chosen", "rejected")]))
  assert len(weights) == 16 and np.std(weights) > 0
  assert out["metrics"]["eval/wpo/weight"] == pytest.approx(np.mean(weights), rel=1e-4)
  assert out["metrics"]["eval/loss"] == pytest.approx(math.log(2) * np.mean(weights), rel=1e-4)
  for name, kw in (("chunked", dict(logps_path="chunked", chunk=8)), ("shared", dict(shared_prompt="on"))):
    other = preference.run(_cfg(**kw), str(tmp_path / name), {})
    assert other["metrics"]["eval/loss"] == pytest.approx(out["metrics"]["eval/loss"], rel=1e-5), name


def test_other_algorithms_and_sorting_losses_refuse_it():
  with pytest.raises(ConfigError, match=r"config\.loss\.use_weighting: WPO weights DPO's pair losses; it needs "
                     r"config\.loss\.algorithm 'dpo', got 'kto'"):
    _cfg(algorithm="kto")
  with pytest.raises(ConfigError, match=r"config\.loss\.use_weighting: \['aot'\] sorts the batch"):
    _cfg(loss_type=("aot",))
