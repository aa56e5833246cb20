"""The "self_rewarding" stage (CREAM, Wang et al. 2024, arXiv:2410.12735): the pair labelling and consistency
rates on hand-made rewards, the step's loss against the preference stage's DPO / conservative-DPO loss on the same
batch, config errors, the consistency each pair carries into the training batches, LoRA iterations, and a tiny
two-iteration run whose per-iteration resume gives the uninterrupted result."""

import json
import os

import jax
import numpy as np
import pytest
from flax import nnx

from jaxrlhf.config import ConfigError, from_config
from jaxrlhf.data import tokenize as tokenize_lib
from jaxrlhf.models import CausalLM, ModelConfig, from_pretrained, save_pretrained
from jaxrlhf.models import lora as lora_lib
from jaxrlhf.stages import preference
from jaxrlhf.stages import self_rewarding as sr
from jaxrlhf.stages.inputs import make_world
from random_models import random_pair_batch

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
  monkeypatch.setattr(sr, "_sample", lambda *args: (tokens, rmask, np.zeros(3)))
  monkeypatch.setattr(sr, "_sequence_logps", lambda model, *args: np.zeros(3))
  prompts = (np.ones((3, 2), np.int32), np.ones((3, 2), np.int32))
  cfg = _config(str(tmp_path), str(tmp_path), 1)  # existing folders: only the sizes are read
  out = sr._evaluate(None, None, prompts, None, cfg, lambda *a: np.zeros(3), (2,), 0)
  assert out["length"] == pytest.approx(7 / 3)
  assert out["kl"] == 0.0


def _batch(rng, b=4, t=8, vocab=32):
  batch = random_pair_batch(rng, b, t, vocab, weight=[1.0, 1.0, 1.0, 0.0])
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


def _config(m0, m1, iterations, consistency="average", lora=None):
  return from_config({
      "seed": 1, "model": {"init_from": m1, "lora": lora or {}}, "reference": m0, "consistency": consistency,
      "num_iterations": iterations, "num_prompts": 8, "num_samples": 3, "max_new_tokens": 6, "sample_batch_size": 8,
      "num_eval_prompts": 8, "num_devices": 1,
      "data": {"world": WORLD, "batch_size": 4, "max_length": 24, "shared_prompt": "off"},
      "optimizer": {"learning_rate": 1e-2},
      "loop": {"num_steps": 2, "log_every": 1, "checkpoint_every": 1, "progress": False, "tensorboard": False,
               "async_checkpoints": False}}, sr.SelfRewardingConfig)


def _pair_key(tokenizer, record):
  """`scoring.row_key` of a record's row, from its texts (prompt + response + end token on each side)."""
  prompt = tokenize_lib.encode_prompt(tokenizer, record.prompt)
  chosen, rejected = (prompt + tokenize_lib.encode_response(tokenizer, r) for r in (record.chosen, record.rejected))
  return np.asarray(chosen, np.int32).tobytes() + b"|" + np.asarray(rejected, np.int32).tobytes()


@pytest.mark.parametrize("mode", ["dynamic", "average"])
def test_one_iteration_trains_each_pair_with_its_consistency(monkeypatch, tmp_path, mode):
  """The C in the training batches: "dynamic" each prompt's own rate (the mean where tau is undefined), "average"
  the mean rate on every pair. The prompts get known, distinct rates so that a pair carrying another pair's C, or
  the mean in dynamic mode, fails."""
  m0, m1 = _models(tmp_path)
  label_pairs, train_iteration, train = sr.label_pairs, sr._train_iteration, sr.loop_lib.train
  known, seen = {}, []

  def with_known_rates(reward_BxN, previous_BxN, gold_BxN):
    out = label_pairs(reward_BxN, previous_BxN, gold_BxN)
    rates = 0.05 + 0.9 * (np.arange(reward_BxN.shape[0]) / reward_BxN.shape[0]) ** 2  # none equals their mean
    rates[np.flatnonzero(out["keep"])[0]] = np.nan  # tau undefined for this prompt
    known["rates"], known["keep"] = rates, out["keep"]
    return dict(out, consistency=rates)

  def spy_iteration(cfg, t, policy_path, records, consistency, context, workdir):
    known["records"] = records
    return train_iteration(cfg, t, policy_path, records, consistency, context, workdir)

  def spy_train(*, data_iter, **kwargs):
    seen.extend(next(data_iter) for _ in range(6))  # > 1 epoch of the <= 8 pairs in batches of 4
    return train(data_iter=data_iter, **kwargs)

  monkeypatch.setattr(sr, "label_pairs", with_known_rates)
  monkeypatch.setattr(sr, "_train_iteration", spy_iteration)
  monkeypatch.setattr(sr.loop_lib, "train", spy_train)
  metrics = sr.run(_config(m0, m1, 1, mode), str(tmp_path / "run"), {})["metrics"]
  assert metrics["iter0/kl"] == pytest.approx(0.0, abs=1e-4)  # the start policy against itself
  assert np.isfinite(metrics["iter1/gold"]) and np.isfinite(metrics["iter1/kl"]) and metrics["iter1/pairs"] > 1
  with open(os.path.join(tmp_path, "run", "iter1", "iteration.json")) as f:
    assert json.load(f)["iter1/gold"] == metrics["gold"]

  rates, keep = known["rates"], known["keep"]
  mean = float(np.nanmean(rates[keep]))
  assert metrics["iter1/consistency"] == pytest.approx(mean)
  tokenizer = make_world(WORLD).tokenizer
  want = {}
  for r in known["records"]:
    b = int(r.source.rsplit(":", 1)[1])  # "self_rewarding:iter1:<prompt>"
    want[_pair_key(tokenizer, r)] = rates[b] if mode == "dynamic" and np.isfinite(rates[b]) else mean
  got = {}
  for batch in seen:
    for i in np.flatnonzero(batch["weight"] > 0):
      got[sr.scoring.row_key(batch, i)] = float(batch["consistency"][i])
  assert set(got) == set(want)  # every pair was seen, and nothing else
  for key, c in got.items():
    assert c == pytest.approx(want[key], abs=1e-6)
  assert len({round(c, 6) for c in want.values()}) == (len(want) if mode == "dynamic" else 1)


def test_lora_iteration_trains_adapters_on_a_frozen_base(tmp_path):
  """model.lora: the iteration's merged policy differs from pi_1 only in the targeted kernels, by a rank-r update,
  and its adapters are saved apart."""
  m0, m1 = _models(tmp_path)
  lora = {"rank": 1, "alpha": 2.0, "targets": ("q", "v")}
  out = sr.run(_config(m0, m1, 1, lora=lora), str(tmp_path / "run"), {})
  assert sorted(os.listdir(tmp_path / "run" / "iter1" / "adapters")) == [lora_lib.ADAPTER_CONFIG,
                                                                         lora_lib.ADAPTER_WEIGHTS]
  before = nnx.to_pure_dict(nnx.state(from_pretrained(m1)[0], nnx.Param))
  after = nnx.to_pure_dict(nnx.state(from_pretrained(out["model_dir"])[0], nnx.Param))
  for name in before["layers"]:
    delta = np.asarray(after["layers"][name], np.float64) - np.asarray(before["layers"][name], np.float64)
    if name in ("q_kernel", "v_kernel"):
      s = np.linalg.svd(delta[0].reshape(delta.shape[1], -1), compute_uv=False)
      assert s[0] > 1e-6 and s[1] < 1e-4 * s[0], (name, s[:2])  # trained, rank 1
    else:
      np.testing.assert_array_equal(delta, 0.0, err_msg=name)
  for name in ("embed", "final_norm_scale", "lm_head"):
    np.testing.assert_array_equal(after[name], before[name])


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
