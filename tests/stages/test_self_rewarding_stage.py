"""The "self_rewarding" stage (CREAM, Wang et al. 2024, arXiv:2410.12735): the pair labelling and consistency
rates on hand-made rewards, the step's loss against the preference stage's DPO / conservative-DPO loss on the same
batch, config errors, and a tiny two-iteration run whose per-iteration resume gives the uninterrupted result."""

import json
import os

import jax
import numpy as np
import pytest
from flax import nnx

from jaxrlhf.config import ConfigError, from_config
from jaxrlhf.models import CausalLM, ModelConfig, save_pretrained
from jaxrlhf.stages import preference
from jaxrlhf.stages import self_rewarding as sr
from jaxrlhf.stages.inputs import make_world

WORLD = {"num_prompts": 256, "max_response_len": 12}
TINY = dict(embed_dim=16, num_layers=1, num_heads=2, num_kv_heads=2, head_dim=8, mlp_dim=32,
            max_position_embeddings=64)


def test_label_pairs_golden():
  reward = np.array([[1.0, 3.0, 2.0, 0.0], [0.5, 0.5, 0.5, 0.5], [2.0, 1.0, 0.0, -1.0]])
  previous = np.array([[0.0, 2.0, 1.0, -1.0], [1.0, 2.0, 3.0, 4.0], [-1.0, 0.0, 1.0, 2.0]])
  gold = np.array([[0.0, 1.0, 0.0, 0.5], [0.0, 0.0, 0.0, 0.0], [1.0, 1.0, 1.0, 1.0]])
  out = sr.label_pairs(reward, previous, gold)
  np.testing.assert_array_equal(out["best"][[0, 2]], [1, 0])
  np.testing.assert_array_equal(out["worst"][[0, 2]], [3, 3])
  np.testing.assert_array_equal(out["keep"], [True, False, True])  # all-tied rewards: no pair
  np.testing.assert_allclose(out["consistency"][[0, 2]], [1.0, 0.0])  # same order / reversed order
  assert np.isnan(out["consistency"][1])
  np.testing.assert_allclose(out["agreement"][[0, 2]], [1.0, 0.5])  # gold(1) > gold(3); a gold tie counts 1/2
  np.testing.assert_allclose(out["gold_tau"][0], 1 / np.sqrt(6 * 5), rtol=1e-6)  # (3 - 2) / sqrt(6 * 5): one gold tie


def test_evaluation_length_counts_the_tokens_before_the_end_token(monkeypatch, tmp_path):
  # Three responses (end id 2): ended after 3 tokens, never ended (4 tokens), ended at once. The world's L* counts
  # the tokens before the end token, so the reported length is (3 + 4 + 0) / 3, not (4 + 4 + 1) / 3.
  tokens = np.array([[5, 6, 7, 2], [5, 6, 7, 8], [2, 0, 0, 0]])
  rmask = np.array([[1, 1, 1, 1], [1, 1, 1, 1], [1, 0, 0, 0]])
  monkeypatch.setattr(sr, "_sample", lambda *args: (tokens, rmask))
  monkeypatch.setattr(sr, "_sequence_logps", lambda model, *args: np.zeros(3))
  prompts = (np.ones((3, 2), np.int32), np.ones((3, 2), np.int32))
  cfg = _config(str(tmp_path), str(tmp_path), 1)  # existing folders: only the sizes are read
  out = sr._evaluate(None, None, prompts, None, cfg, lambda *a: np.zeros(3), (2,), 0)
  assert out["length"] == pytest.approx(7 / 3)
  assert out["kl"] == 0.0


def _batch(rng, b=4, t=8, vocab=32):
  batch = {}
  for side in ("chosen", "rejected"):
    ids = rng.integers(4, vocab, (b, t)).astype(np.int32)
    att = np.ones((b, t), np.int32)
    att[1, 6:] = 0
    loss = att.copy()
    loss[:, :3] = 0
    batch.update({f"{side}_input_ids": ids, f"{side}_attention_mask": att, f"{side}_loss_mask": loss})
  batch["rejected_input_ids"][:, :3] = batch["chosen_input_ids"][:, :3]
  batch["weight"] = np.array([1.0, 1.0, 1.0, 0.0], np.float32)
  batch["margin"] = np.full((b,), np.nan, np.float32)
  batch["ref_chosen_logps"] = rng.normal(-20, 2, b).astype(np.float32)
  batch["ref_rejected_logps"] = rng.normal(-20, 2, b).astype(np.float32)
  return batch


@pytest.mark.parametrize("c", [1.0, 0.7])
def test_step_loss_is_the_preference_stage_loss(c):
  """C = 1: the preference stage's DPO; C = 0.7: its conservative DPO with label_smoothing 0.3."""
  graphdef, state = nnx.split(CausalLM(ModelConfig(vocab_size=32, **TINY), rngs=nnx.Rngs(0)))
  batch = _batch(np.random.default_rng(0))

  def run(loss_fn, b):
    return jax.jit(lambda st, x: loss_fn(nnx.merge(graphdef, st), x, None))(state, b)

  total, weight, metrics = run(sr.self_rewarding_loss_fn(0.2), dict(batch, consistency=np.full(4, c, np.float32)))
  want_fn = preference.preference_loss_fn(preference.PreferenceLossConfig(beta=0.2, label_smoothing=1.0 - c),
                                          resident=False)
  want_total, want_weight, want_metrics = run(want_fn, batch)
  np.testing.assert_allclose(total, want_total, rtol=1e-5)
  assert float(weight) == float(want_weight) == 3.0
  for k in ("rewards/margin", "rewards/accuracy"):
    np.testing.assert_allclose(metrics[k].total, want_metrics[k].total, rtol=1e-5, atol=1e-6)


def test_config_errors_name_the_key():
  with pytest.raises(ConfigError, match=r"config\.reference"):
    from_config({"model": {"init_from": "stage:seed_dpo"}}, sr.SelfRewardingConfig)
  with pytest.raises(ConfigError, match=r"config\.model\.init_from"):
    from_config({"reference": "stage:sft"}, sr.SelfRewardingConfig)
  with pytest.raises(ConfigError, match=r"config\.consistency"):
    from_config({"model": {"init_from": "stage:seed_dpo"}, "reference": "stage:sft", "consistency": "sometimes"},
                sr.SelfRewardingConfig)


def _models(tmp_path):
  vocab = make_world(WORLD).tokenizer.vocab_size
  paths = []
  for i in range(2):
    path = str(tmp_path / f"m{i}")
    save_pretrained(CausalLM(ModelConfig(vocab_size=vocab, **TINY), rngs=nnx.Rngs(i)), path)
    paths.append(path)
  return paths


def _config(m0, m1, iterations, consistency="average"):
  return from_config({
      "seed": 1, "model": {"init_from": m1}, "reference": m0, "consistency": consistency,
      "num_iterations": iterations, "num_prompts": 8, "num_samples": 3, "max_new_tokens": 6, "sample_batch_size": 8,
      "num_eval_prompts": 8, "num_devices": 1,
      "data": {"world": WORLD, "batch_size": 4, "max_length": 24, "shared_prompt": "off"},
      "optimizer": {"learning_rate": 1e-2},
      "loop": {"num_steps": 2, "log_every": 1, "checkpoint_every": 1, "progress": False, "tensorboard": False,
               "async_checkpoints": False}}, sr.SelfRewardingConfig)


def test_one_iteration_dynamic_consistency(tmp_path):
  m0, m1 = _models(tmp_path)
  metrics = sr.run(_config(m0, m1, 1, "dynamic"), str(tmp_path / "run"), {})["metrics"]
  assert metrics["iter0/kl"] == pytest.approx(0.0, abs=1e-4)  # the start policy against itself
  assert np.isfinite(metrics["iter1/gold"]) and np.isfinite(metrics["iter1/kl"]) and metrics["iter1/pairs"] > 0
  # Per-prompt rates: their mean over the pairs is the reported (mean) rate.
  assert metrics["iter1/consistency_applied"] == pytest.approx(metrics["iter1/consistency"], abs=1e-6)
  with open(os.path.join(tmp_path, "run", "iter1", "iteration.json")) as f:
    assert json.load(f)["iter1/gold"] == metrics["gold"]


@pytest.mark.slow
def test_two_iterations_and_per_iteration_resume(tmp_path):
  m0, m1 = _models(tmp_path)
  full = sr.run(_config(m0, m1, 2), str(tmp_path / "full"), {})
  metrics = full["metrics"]
  for t in (0, 1, 2):
    assert np.isfinite(metrics[f"iter{t}/gold"]) and metrics[f"iter{t}/length"] > 0
  assert metrics["iter0/kl"] == pytest.approx(0.0, abs=1e-4)  # the start policy against itself
  for t in (1, 2):
    assert 0.0 <= metrics[f"iter{t}/consistency"] <= 1.0 and 0.0 <= metrics[f"iter{t}/label_agreement"] <= 1.0
    assert metrics[f"iter{t}/consistency_applied"] == pytest.approx(metrics[f"iter{t}/consistency"])
    assert metrics[f"iter{t}/pairs"] > 0
  assert metrics["gold"] == metrics["iter2/gold"] and os.path.exists(os.path.join(full["model_dir"], "config.json"))
  # Resume: one iteration, then two (iteration 1 is reused); then a kill after iteration 2's training.
  resumed = str(tmp_path / "resumed")
  sr.run(_config(m0, m1, 1), resumed, {})
  mtime = os.path.getmtime(os.path.join(resumed, "iter1", "iteration.json"))
  assert sr.run(_config(m0, m1, 2), resumed, {})["metrics"] == metrics
  assert os.path.getmtime(os.path.join(resumed, "iter1", "iteration.json")) == mtime
  os.remove(os.path.join(resumed, "iter2", "iteration.json"))
  assert sr.run(_config(m0, m1, 2), resumed, {})["metrics"] == metrics
  with open(os.path.join(resumed, "results.json")) as f:
    assert json.load(f)["metrics"] == metrics
  # The control arm: the same samples and pairs in iteration 1 (same consistency measured), C = 1 applied.
  srlm = sr.run(_config(m0, m1, 1, "off"), str(tmp_path / "srlm"), {})["metrics"]
  assert srlm["iter1/consistency"] == metrics["iter1/consistency"] and srlm["iter1/consistency_applied"] == 1.0
  assert srlm["iter0/gold"] == metrics["iter0/gold"]
