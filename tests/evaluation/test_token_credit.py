"""Token-level credit (jaxrlhf/evaluation/token_credit.py): per-token log-probs of hand-built models against
hand-computed goldens, the correlations against scipy and hand arithmetic, alignment with the gold credit of the
synthetic world, agreement with the T-REG trainer's token rewards, and the stage on tiny random models."""

import json
import math

import jax.numpy as jnp
import numpy as np
import pytest
import scipy.stats
from flax import nnx

from jaxrlhf.config import ConfigError, from_config
from jaxrlhf.data.synthetic import World, WorldConfig
from jaxrlhf.data.synthetic import gold as gold_lib
from jaxrlhf.evaluation import stats
from jaxrlhf.evaluation import token_credit as tc
from jaxrlhf.stages import token_credit as tc_stage
from jaxrlhf.train import scoring
from jaxrlhf.models import CausalLM, ModelConfig, save_pretrained

TINY = dict(embed_dim=16, num_layers=1, num_heads=2, num_kv_heads=2, head_dim=8, mlp_dim=32,
            max_position_embeddings=64)
WORLD = {"num_prompts": 256, "max_response_len": 12}

# Next-token distributions of a 3-token vocabulary, one row per conditioning token.
PROBS = np.asarray([[0.5, 0.25, 0.25],
                    [0.1, 0.8, 0.1],
                    [0.2, 0.2, 0.6]])


def bigram_model(ids_BxT, attention_BxT):
  """logits[b, t] = log PROBS[ids[b, t]]: p(y_t | y_<t) = PROBS[y_{t-1}, y_t]."""
  del attention_BxT
  return jnp.log(jnp.asarray(PROBS, jnp.float32))[ids_BxT]


def first_token_model(ids_BxT, attention_BxT):
  """Every position predicts from the row's FIRST token only: p(y_t | y_<t) = PROBS[y_0, y_t]."""
  del attention_BxT
  first = ids_BxT[:, :1]
  return jnp.log(jnp.asarray(PROBS, jnp.float32))[jnp.broadcast_to(first, ids_BxT.shape)]


def test_token_logps_bigram_by_hand():
  ids = jnp.asarray([[0, 1, 1, 2], [2, 2, 0, 0]])
  att = jnp.asarray([[1, 1, 1, 1], [1, 1, 1, 0]])
  lm = jnp.asarray([[0, 1, 1, 1], [0, 0, 1, 1]])  # row 1: the last token is padding (attention 0)
  logps, mask = scoring.aligned_token_logps(bigram_model, ids, att, lm)
  want = np.asarray([[0.0, math.log(0.25), math.log(0.8), math.log(0.1)],   # p(1|0), p(1|1), p(2|1)
                     [0.0, 0.0, math.log(0.2), 0.0]])                         # p(0|2); t=3 is padding
  np.testing.assert_allclose(np.asarray(logps), want, atol=1e-6)
  np.testing.assert_array_equal(np.asarray(mask), [[0, 1, 1, 1], [0, 0, 1, 0]])


def test_token_logps_position_zero_is_never_scored():
  logps, mask = scoring.aligned_token_logps(bigram_model, jnp.asarray([[1, 0]]), jnp.ones((1, 2)), jnp.ones((1, 2)))
  np.testing.assert_array_equal(np.asarray(mask), [[0, 1]])
  np.testing.assert_allclose(np.asarray(logps), [[0.0, math.log(0.1)]], atol=1e-6)


def test_token_logps_prefix_conditions_every_row():
  ids = jnp.asarray([[1, 0, 2]])
  att = jnp.ones((1, 3), jnp.int32)
  lm = jnp.asarray([[0, 1, 1]])
  plain, _ = scoring.aligned_token_logps(first_token_model, ids, att, lm)
  with_2, mask = scoring.aligned_token_logps(first_token_model, ids, att, lm, prefix_ids=(2,))
  with_0, _ = scoring.aligned_token_logps(first_token_model, ids, att, lm, prefix_ids=jnp.asarray([0]))
  np.testing.assert_allclose(np.asarray(plain), [[0.0, math.log(0.1), math.log(0.1)]], atol=1e-6)  # from y_0 = 1
  np.testing.assert_allclose(np.asarray(with_2), [[0.0, math.log(0.2), math.log(0.6)]], atol=1e-6)  # from prefix 2
  np.testing.assert_allclose(np.asarray(with_0), [[0.0, math.log(0.5), math.log(0.25)]], atol=1e-6)
  np.testing.assert_array_equal(np.asarray(mask), [[0, 1, 1]])


def test_token_logps_rejects_bad_shapes():
  with pytest.raises(ValueError, match="loss_mask_BxT"):
    scoring.aligned_token_logps(bigram_model, jnp.zeros((2, 3), jnp.int32), jnp.ones((2, 3)), jnp.ones((2, 4)))
  with pytest.raises(ValueError, match="input_ids_BxT"):
    scoring.aligned_token_logps(bigram_model, jnp.zeros((3,), jnp.int32), jnp.ones((3,)), jnp.ones((3,)))


def test_pearson_and_spearman_by_hand():
  # x deviations (-1, 0, 1), y = (2, 4, 7) deviations (-7/3, -1/3, 8/3): r = 5 / sqrt(2 * 114 / 9).
  assert stats.pearson([1, 2, 3], [2, 4, 7]) == pytest.approx(5 / math.sqrt(2 * 114 / 9))
  assert stats.spearman([1, 2, 3], [2, 4, 7]) == pytest.approx(1.0)
  assert stats.spearman([1, 2, 3], [3, 2, 1]) == pytest.approx(-1.0)
  assert math.isnan(stats.pearson([1, 1, 1], [1, 2, 3]))
  assert math.isnan(stats.pearson([1.0], [2.0]))
  np.testing.assert_array_equal(stats.rankdata([10, 20, 10, 5]), [2.5, 4.0, 2.5, 1.0])
  with pytest.raises(ValueError, match="pearson"):
    stats.pearson([1, 2], [1, 2, 3])


def test_correlations_match_scipy_with_ties():
  rng = np.random.default_rng(0)
  for _ in range(5):
    x = rng.integers(0, 5, size=40).astype(float)  # many ties
    y = x + rng.normal(size=40)
    np.testing.assert_allclose(stats.rankdata(x), scipy.stats.rankdata(x))
    assert stats.pearson(x, y) == pytest.approx(scipy.stats.pearsonr(x, y)[0], abs=1e-12)
    assert stats.spearman(x, y) == pytest.approx(scipy.stats.spearmanr(x, y)[0], abs=1e-12)


def test_credit_metrics_by_hand():
  pred = np.asarray([[1.0, 2.0, 3.0, 9.0], [3.0, 2.0, 1.0, 0.0], [1.0, -1.0, 0.0, 0.0]])
  gold = np.asarray([[1.0, 2.0, 3.0, -9.0], [1.0, 2.0, 4.0, 0.0], [2.0, 2.0, 0.0, 0.0]])
  mask = np.asarray([[1, 1, 1, 0], [1, 1, 1, 0], [1, 1, 0, 0]])  # row 2 has < min_tokens = 3 tokens
  m = tc.credit_metrics(pred, gold, mask, min_tokens=3)
  r_row1 = scipy.stats.pearsonr([3, 2, 1], [1, 2, 4])[0]
  assert m["num_sequences"] == 2 and m["num_tokens"] == 8
  assert m["pearson_seq"] == pytest.approx((1.0 + r_row1) / 2)
  assert m["spearman_seq"] == pytest.approx((1.0 - 1.0) / 2)
  flat_p = [1, 2, 3, 3, 2, 1, 1, -1]
  flat_g = [1, 2, 3, 1, 2, 4, 2, 2]
  assert m["pearson_pooled"] == pytest.approx(np.corrcoef(flat_p, flat_g)[0, 1])
  assert m["spearman_pooled"] == pytest.approx(scipy.stats.spearmanr(flat_p, flat_g)[0])
  assert m["sign_agreement"] == pytest.approx(7 / 8)  # only the -1 vs 2 token disagrees
  with pytest.raises(ValueError, match="pred_BxR"):
    tc.credit_metrics(pred, gold[:, :3], mask)


def test_credit_metrics_skips_constant_rows():
  m = tc.credit_metrics(np.asarray([[1.0, 1.0, 1.0]]), np.asarray([[1.0, 2.0, 3.0]]), np.ones((1, 3)))
  assert m["num_sequences"] == 0 and math.isnan(m["pearson_seq"])


def test_pair_accuracy_by_hand():
  # pair 0 right, pair 1 wrong, pair 2 a reward tie (wrong), pair 3 a gold tie (left out).
  acc = tc.pair_accuracy([2.0, 0.0, 1.0, 5.0], [1.0, 1.0, 1.0, 0.0], [3.0, 3.0, 3.0, 2.0], [0.0, 0.0, 0.0, 2.0])
  assert acc == pytest.approx(1 / 3)
  assert math.isnan(tc.pair_accuracy([1.0], [0.0], [1.0], [1.0]))


def test_left_align():
  values = np.asarray([[9, 1, 2, 9], [9, 9, 9, 3]])
  mask = np.asarray([[0, 1, 1, 0], [0, 0, 0, 1]])
  out, out_mask = tc.left_align(values, mask)
  np.testing.assert_array_equal(out, [[1, 2], [3, 0]])
  np.testing.assert_array_equal(out_mask, [[1, 1], [1, 0]])


def test_response_set_tokenizes_like_the_records():
  world = World(WorldConfig(**WORLD))
  tok = world.tokenizer
  rows = tc_stage.response_set(world, 6, max_length=40)
  records = world.preference_records(6, "test")
  assert rows.num_pairs == 6 and rows.input_ids.shape == (12, 40)
  for i, record in enumerate(records):
    for row, text in ((i, record.chosen), (6 + i, record.rejected)):
      prompt = tok.encode(record.prompt)
      response = tok.encode(text) + [tok.eos_id]
      n = len(prompt) + len(response)
      assert rows.input_ids[row, :n].tolist() == prompt + response
      assert rows.loss_mask[row].tolist() == [0] * len(prompt) + [1] * len(response) + [0] * (40 - n)
      assert rows.attention_mask[row].sum() == n


def test_gold_credit_itself_scores_perfectly_and_aligns():
  """Token rewards built row by row from the numpy gold credit of each record's own text (an independent
  path) must correlate 1 with the stage's gold; their negation -1."""
  world = World(WorldConfig(**WORLD))
  tok = world.tokenizer
  rows = tc_stage.response_set(world, 8, max_length=40)
  records = world.preference_records(8, "test")
  reward = np.zeros(rows.input_ids.shape)
  for i, record in enumerate(records):
    for row, text in ((i, record.chosen), (8 + i, record.rejected)):
      prompt, response = tok.encode(record.prompt), tok.encode(text)
      credit = gold_lib.gold_token_contributions(world.spec, np.asarray([prompt]), np.ones((1, len(prompt))),
                                                 np.asarray([response]), np.ones((1, len(response))), xp=np)[0]
      start = len(prompt)
      reward[row, start:start + len(response)] = credit
  metrics, pooled = tc.evaluate_credit(world, rows, {"implicit": reward, "contrastive": -reward,
                                                     "flat": np.zeros_like(reward)}, min_tokens=3)
  # Each kind counts its own responses with a defined correlation: none for a constant reward.
  assert metrics["flat/num_sequences"] == 0 and np.isnan(metrics["flat/pearson_seq"])
  assert metrics["implicit/num_sequences"] == metrics["contrastive/num_sequences"] > 0
  assert metrics["implicit/pearson_seq"] == pytest.approx(1.0)
  assert metrics["implicit/pearson_pooled"] == pytest.approx(1.0)
  assert metrics["implicit/spearman_pooled"] == pytest.approx(1.0)
  assert metrics["implicit/sign_agreement"] == pytest.approx(1.0)
  assert metrics["contrastive/pearson_pooled"] == pytest.approx(-1.0)
  assert metrics["num_tokens"] == sum(len(tok.encode(r.chosen)) + len(tok.encode(r.rejected)) for r in records)
  np.testing.assert_allclose(pooled["implicit"][0], pooled["implicit"][1], atol=1e-6)


def _tiny_world_model(seed):
  world = World(WorldConfig(**WORLD))
  config = ModelConfig(vocab_size=world.tokenizer.vocab_size, **TINY)
  return world, CausalLM(config, rngs=nnx.Rngs(seed))


def test_contrastive_rewards_match_the_treg_trainer():
  """sigmoid(contrastive) - 0.5 equals what the T-REG trainer regularizes towards (its alignment: position t
  holds token t + 1's reward)."""
  from jaxrlhf.stages import preference  # pylint: disable=g-import-not-at-top
  world, model = _tiny_world_model(0)
  tok = world.tokenizer
  rows = tc_stage.response_set(world, 4, max_length=32)
  better, worse = (tok.better_id,), (tok.worse_id,)
  ours = tc_stage.token_rewards(model, None, rows, beta=0.1, better_ids=better, worse_ids=worse, batch_size=8)
  assert set(ours) == {"contrastive", "contrastive_sigmoid"}
  n = rows.num_pairs
  batch = {"chosen_input_ids": rows.input_ids[:n], "chosen_attention_mask": rows.attention_mask[:n],
           "chosen_loss_mask": rows.loss_mask[:n], "rejected_input_ids": rows.input_ids[n:],
           "rejected_attention_mask": rows.attention_mask[n:], "rejected_loss_mask": rows.loss_mask[n:]}
  trainer = np.asarray(preference.token_rewards(model, batch, better, worse))
  np.testing.assert_allclose(ours["contrastive_sigmoid"][:, 1:], trainer[:, :-1], atol=1e-5)


def test_implicit_rewards_are_beta_times_log_ratio(tmp_path):
  world, policy = _tiny_world_model(0)
  _, reference = _tiny_world_model(1)
  rows = tc_stage.response_set(world, 3, max_length=32)
  out = tc_stage.token_rewards(policy, reference, rows, beta=0.5, batch_size=4)
  assert set(out) == {"implicit"}
  lp_pi, mask = scoring.aligned_token_logps(policy, jnp.asarray(rows.input_ids), jnp.asarray(rows.attention_mask),
                               jnp.asarray(rows.loss_mask))
  lp_ref, _ = scoring.aligned_token_logps(reference, jnp.asarray(rows.input_ids), jnp.asarray(rows.attention_mask),
                             jnp.asarray(rows.loss_mask))
  np.testing.assert_allclose(out["implicit"], 0.5 * np.asarray(lp_pi - lp_ref), atol=1e-5)
  assert np.all(out["implicit"][np.asarray(mask) == 0] == 0)


def test_config_errors():
  with pytest.raises(ConfigError, match="policy"):
    from_config({}, tc_stage.TokenCreditConfig)
  with pytest.raises(ConfigError, match="reference"):
    from_config({"policy": "stage:sft", "contrastive": False}, tc_stage.TokenCreditConfig)
  with pytest.raises(ConfigError, match="does not exist"):
    from_config({"policy": "/no/such/folder"}, tc_stage.TokenCreditConfig)


def test_stage_on_tiny_models(tmp_path):
  world, policy = _tiny_world_model(0)
  _, reference = _tiny_world_model(1)
  save_pretrained(policy, str(tmp_path / "policy"))
  save_pretrained(reference, str(tmp_path / "ref"))
  cfg = from_config({"policy": str(tmp_path / "policy"), "reference": str(tmp_path / "ref"), "world": WORLD,
                     "num_pairs": 8, "batch_size": 8, "max_length": 32}, tc_stage.TokenCreditConfig)
  out = tc_stage.run(cfg, str(tmp_path / "credit"), {})
  with open(tmp_path / "credit" / "results.json") as f:
    saved = json.load(f)["metrics"]
  assert saved == pytest.approx(out["metrics"])
  for kind in tc.REWARD_KINDS:
    for stat in tc.STATS:
      value = saved[f"{kind}/{stat}"]
      assert -1.0 <= value <= 1.0, (kind, stat, value)
  assert saved["num_responses"] == 16
  assert (tmp_path / "credit" / "token_credit.png").stat().st_size > 0
