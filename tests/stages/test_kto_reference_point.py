"""KTO's reference point z0 (Ethayarajh et al. 2024): the default is the paper's / TRL's KL estimate on MISMATCHED
(prompt, completion) pairs, each example's prompt with the previous example's completion (TRL's KTOTrainer shifts
the completions of a batch by one). Checked against rows rebuilt by hand in numpy, in both batch layouts, against
log-probs computed independently, and through the stage's config rules."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jaxrlhf.config import ConfigError, from_config
from jaxrlhf.data import pipeline as pipeline_lib
from jaxrlhf.losses import kto as kto_lib
from jaxrlhf.models import CausalLM, ModelConfig
from jaxrlhf.stages import preference
from jaxrlhf.train import scoring

TINY = ModelConfig(vocab_size=32, embed_dim=16, num_layers=1, num_heads=2, num_kv_heads=2, head_dim=8, mlp_dim=32)


def _examples(rng, n):
  """n tokenized pairs with prompts / responses of different lengths (ids >= 4; 0 is padding)."""
  out = []
  for _ in range(n):
    out.append(dict(prompt=rng.integers(4, 32, rng.integers(2, 6)).astype(np.int32),
                    chosen=rng.integers(4, 32, rng.integers(1, 6)).astype(np.int32),
                    rejected=rng.integers(4, 32, rng.integers(1, 6)).astype(np.int32),
                    chosen_score=np.nan, rejected_score=np.nan, margin=np.nan, weight=1.0))
  return out


def _collate(examples, shared, batch_size, length):
  config = pipeline_lib.PipelineConfig(batch_size=batch_size)
  fn = pipeline_lib.collate_shared_prompt if shared else pipeline_lib.collate_preference
  return fn(examples, config, pad_id=0, length=length)


def _expected_rows(examples, length):
  """TRL's construction by hand: the 2B examples (chosen then rejected), completions shifted by one, truncated."""
  prompts = [e["prompt"] for e in examples] * 2
  completions = [e["chosen"] for e in examples] + [e["rejected"] for e in examples]
  shifted = completions[-1:] + completions[:-1]
  ids = np.zeros((len(prompts), length), np.int32)
  loss = np.zeros_like(ids)
  for j, (p, c) in enumerate(zip(prompts, shifted)):
    row = np.concatenate([p, c])[:length]
    ids[j, :len(row)] = row
    loss[j, len(p):len(row)] = 1
  return ids, (np.arange(length)[None] < np.array([min(len(p) + len(c), length) for p, c in zip(prompts, shifted)]
                                                  )[:, None]).astype(np.int32), loss


@pytest.mark.parametrize("shared", [False, True])
def test_mismatched_rows_equal_trl_construction(shared):
  examples = _examples(np.random.default_rng(0), 5)
  # Pair 0: long prompt, short responses; pair 4: short prompt, long rejected response. Row 0 pairs pair 0's
  # prompt with pair 4's rejected response: longer than the batch's width, so it keeps its first `length` tokens.
  examples[0].update(prompt=np.arange(4, 10, dtype=np.int32), chosen=np.array([5], np.int32),
                     rejected=np.array([6], np.int32))
  examples[4].update(prompt=np.array([7, 8], np.int32), rejected=np.arange(10, 16, dtype=np.int32))
  length = max(len(e["prompt"]) + max(len(e["chosen"]), len(e["rejected"])) for e in examples)
  batch = _collate(examples, shared, batch_size=5,
                   length=length if not shared else max(sum(len(e[k]) for k in ("prompt", "chosen", "rejected"))
                                                        for e in examples))
  ids, att, loss = jax.device_get(scoring.mismatched_pair_rows(jax.tree.map(jnp.asarray, batch)))
  want_ids, want_att, want_loss = _expected_rows(examples, ids.shape[1])
  np.testing.assert_array_equal(att, want_att)
  np.testing.assert_array_equal(loss, want_loss)
  np.testing.assert_array_equal(ids * att, want_ids)
  if not shared:  # the case the truncation rule is for occurs in this batch
    completions = [e["chosen"] for e in examples] + [e["rejected"] for e in examples]
    assert len(examples[0]["prompt"]) + len(completions[-1]) > length


def _numpy_sequence_logp(model, prompt, completion):
  """sum_t log p(completion_t | prompt, completion_<t) from the model's logits on one unpadded row."""
  row = np.concatenate([prompt, completion])[None].astype(np.int32)
  logits = np.asarray(model(jnp.asarray(row), jnp.ones_like(jnp.asarray(row))), np.float64)[0]
  logp = logits - logits.max(-1, keepdims=True)
  logp = logp - np.log(np.exp(logp).sum(-1, keepdims=True))
  return sum(logp[len(prompt) + t - 1, completion[t]] for t in range(len(completion)))


@pytest.mark.parametrize("shared", [False, True])
def test_kto_step_uses_the_mismatched_kl_estimate(shared):
  examples = _examples(np.random.default_rng(1), 4)
  examples[3]["weight"] = 0.0  # an empty (padding) pair is left out of the estimate, as a prompt and a completion
  batch = jax.tree.map(jnp.asarray, _collate(examples, shared, batch_size=4, length=24))
  policy, ref = CausalLM(TINY, rngs=nnx.Rngs(0)), CausalLM(TINY, rngs=nnx.Rngs(1))
  cfg = preference.PreferenceLossConfig(algorithm="kto", beta=0.1)
  assert cfg.kto_reference_point == "mismatched"
  total, _, metrics = preference.preference_loss_fn(cfg, resident=True)(
      preference.PolicyWithReference(policy, ref), batch, None)
  prompts = [e["prompt"] for e in examples] * 2
  completions = [e["chosen"] for e in examples] + [e["rejected"] for e in examples]
  real = [e["weight"] > 0 for e in examples] * 2
  diffs = [_numpy_sequence_logp(policy, prompts[j], completions[j - 1])
           - _numpy_sequence_logp(ref, prompts[j], completions[j - 1])
           for j in range(8) if real[j] and real[j - 1]]
  # Rows 3 and 7 (pair 3's prompt) and rows 4 and 0 (whose completions come from rows 3 and 7) drop out.
  assert len(diffs) == 4
  z = float(np.mean(diffs))
  np.testing.assert_allclose(float(metrics["kl"]), z, rtol=1e-4, atol=1e-5)
  # The loss uses max(z, 0) as z0 (the matched log-ratios from the same models).
  logps = [_numpy_sequence_logp(m, p, c) for m in (policy, ref) for p, c in zip(prompts, completions)]
  pol, refs = np.array(logps[:8]), np.array(logps[8:])
  losses, _ = kto_lib.kto_loss(pol, refs, np.arange(8) < 4, kl=max(z, 0.0), beta=0.1)
  w = np.array([e["weight"] for e in examples])
  np.testing.assert_allclose(float(total), float(np.sum(w * (np.asarray(losses)[:4] + np.asarray(losses)[4:]))),
                             rtol=1e-4)
  # The batch mean of the matched log-ratios is a different number: the option is not a renaming.
  assert abs(z - float(np.sum(np.concatenate([w, w]) * (pol - refs)) / (2 * w.sum()))) > 1e-3


def test_kto_mismatched_estimate_has_no_gradient():
  examples = _examples(np.random.default_rng(2), 3)
  batch = jax.tree.map(jnp.asarray, _collate(examples, False, batch_size=3, length=16))
  ref = CausalLM(TINY, rngs=nnx.Rngs(1))
  graphdef, params = nnx.split(CausalLM(TINY, rngs=nnx.Rngs(0)))

  def kl_of(p):
    return preference._mismatched_kl(preference.PolicyWithReference(nnx.merge(graphdef, p), ref), batch,
                                     batch["weight"], 0)

  grads = jax.grad(kl_of)(params)
  assert all(float(jnp.max(jnp.abs(g))) == 0.0 for g in jax.tree.leaves(grads))


def _cfg(**overrides):
  section = dict(loss=dict(algorithm="kto"), data=dict(batch_size=8))
  for key, value in overrides.items():
    section[key] = {**section.get(key, {}), **value} if isinstance(value, dict) else value
  return from_config(section, preference.PreferenceConfig, path="config")


def test_reference_mode_follows_the_reference_point():
  assert preference.resident_reference(_cfg())  # auto -> resident for the mismatched estimate
  assert not preference.resident_reference(_cfg(loss=dict(kto_reference_point="batch_mean")))
  assert not preference.resident_reference(_cfg(loss=dict(algorithm="dpo")))  # DPO keeps precomputing
  assert not preference.resident_reference(_cfg(loss=dict(kto_loss_type="apo_zero_unpaired")))  # no z0 at all
  with pytest.raises(ConfigError, match=r"config.reference: 'precompute' cannot serve KTO"):
    _cfg(reference="precompute")
  with pytest.raises(ConfigError, match=r"config.data.batch_size: KTO's mismatched .* >= 2 pairs"):
    _cfg(data=dict(batch_size=1))
  with pytest.raises(ConfigError, match="kto_reference_point"):
    _cfg(loss=dict(kto_reference_point="matched"))
