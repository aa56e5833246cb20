"""The self_rewarding stage's rewards and metrics against an independent recomputation (unpadded forwards of the
saved models), over two iterations: iteration t samples the t-th block of training prompts and ranks with
r_t = log pi_t(y|x) - log M0(y|x); it compares with the previous ranking, for t = 1 M0's length-normalized
log-likelihood log M0(y|x) / |y| (CREAM's official rewarding of the reference-free model), for t = 2
r_1 = log pi_1 - log M0; the evaluation's KL is KL(q || pi_1) = E[log q - log pi_1] on samples of q (pi at the sampling
temperature), and gold_gain is the last iteration's gold minus iteration 0's."""

import numpy as np
import pytest

from jaxrlhf.data import tokenize as tokenize_lib
from jaxrlhf.models import from_pretrained
from jaxrlhf.stages import self_rewarding as sr
from jaxrlhf.stages.inputs import make_world
from random_models import unpadded_response_logps
from test_self_rewarding_stage import WORLD, _config, _models


def _logps(model, prompt_rows, tokens, mask, temperature=1.0):
  """random_models.unpadded_response_logps of sampled rows: the response is each row's masked tokens."""
  responses = [list(t[m > 0]) for t, m in zip(np.asarray(tokens), np.asarray(mask))]
  return unpadded_response_logps(model, prompt_rows, responses, temperature)


def test_iteration_rewards_kl_and_gain_against_recomputation(monkeypatch, tmp_path):
  m0, m1 = _models(tmp_path)
  sample, label_pairs = sr._sample, sr.label_pairs
  samples, labels = [], []

  def spy_sample(*args, **kwargs):
    out = sample(*args, **kwargs)
    samples.append(out)
    return out

  def spy_label_pairs(reward, previous, gold):
    labels.append((reward, previous))
    return label_pairs(reward, previous, gold)

  monkeypatch.setattr(sr, "_sample", spy_sample)
  monkeypatch.setattr(sr, "label_pairs", spy_label_pairs)
  cfg = _config(m0, m1, 2)
  metrics = sr.run(cfg, str(tmp_path / "run"), {})["metrics"]
  assert len(samples) == 5 and len(labels) == 2  # eval pi_1, pool 1, eval pi_2, pool 2, eval pi_3
  world = make_world(WORLD)
  tok = world.tokenizer
  base, start = from_pretrained(m0)[0], from_pretrained(m1)[0]
  pi_2 = from_pretrained(str(tmp_path / "run" / "iter1" / "model"))[0]
  n, p = cfg.num_samples, cfg.num_prompts
  train_rows = [tokenize_lib.encode_prompt(tok, t) for t in world.prompts(2 * p, "train")]
  for t, (policy, previous_policy) in enumerate(((start, None), (pi_2, start)), start=1):
    rows = [r for r in train_rows[(t - 1) * p:t * p] for _ in range(n)]
    tokens, mask, _ = samples[2 * t - 1]
    logp_base = _logps(base, rows, tokens, mask)
    reward, previous = labels[t - 1]
    np.testing.assert_allclose(reward, (_logps(policy, rows, tokens, mask) - logp_base).reshape(-1, n), atol=2e-3)
    want = (logp_base / mask.sum(-1) if previous_policy is None
            else _logps(previous_policy, rows, tokens, mask) - logp_base)
    np.testing.assert_allclose(previous, want.reshape(-1, n), atol=2e-3)
  # KL of the iteration-1 policy to the starting one, on its own held-out samples.
  eval_rows = [tokenize_lib.encode_prompt(tok, t) for t in world.prompts(cfg.num_eval_prompts, "test")]
  e_tokens, e_mask, _ = samples[2]
  kl = _logps(pi_2, eval_rows, e_tokens, e_mask) - _logps(start, eval_rows, e_tokens, e_mask)
  assert abs(kl.mean()) > 1e-3  # training moved the policy
  assert metrics["iter1/kl"] == pytest.approx(kl.mean(), abs=2e-3)
  assert metrics["kl"] == metrics["iter2/kl"]
  assert metrics["gold_gain"] == pytest.approx(metrics["iter2/gold"] - metrics["iter0/gold"], abs=1e-12)


def test_eval_kl_at_a_temperature_is_against_the_sampling_distribution(monkeypatch, tmp_path):
  """At temperature 0.5 the samples come from q = softmax(logits / 0.5), and the KL estimate is E_q[log q - log pi_1]
  (evaluate_policy's definition). Iteration 0 evaluates pi_1 itself: the estimate of KL(q || pi_1) is not 0 there
  (8 samples: its sign is noise), where the model's own temperature-1 log-probs would give exactly 0."""
  import dataclasses  # pylint: disable=g-import-not-at-top
  m0, m1 = _models(tmp_path)
  sample, samples = sr._sample, []
  monkeypatch.setattr(sr, "_sample", lambda *a, **k: samples.append(sample(*a, **k)) or samples[-1])
  cfg = dataclasses.replace(_config(m0, m1, 1), temperature=0.5)
  metrics = sr.run(cfg, str(tmp_path / "run"), {})["metrics"]
  tok = make_world(WORLD).tokenizer
  eval_rows = [tokenize_lib.encode_prompt(tok, t) for t in make_world(WORLD).prompts(cfg.num_eval_prompts, "test")]
  start = from_pretrained(m1)[0]
  pi_2 = from_pretrained(str(tmp_path / "run" / "iter1" / "model"))[0]
  for t, policy, (tokens, mask, sampler_logps) in ((0, start, samples[0]), (1, pi_2, samples[2])):
    log_q = _logps(policy, eval_rows, tokens, mask, temperature=0.5)
    np.testing.assert_allclose(sampler_logps, log_q, atol=2e-3)  # The sampler's log q is the tempered model's.
    kl = log_q - _logps(start, eval_rows, tokens, mask)
    assert metrics[f"iter{t}/kl"] == pytest.approx(kl.mean(), abs=2e-3)
  assert abs(metrics["iter0/kl"]) > 0.05
