"""train.scoring: the one module that applies a model to a batch. Every path equals the plain full-logits
computation (the chunked and soft-capped paths, token alignment, control prefixes, rollout rows)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jaxrlhf.models import CausalLM
from jaxrlhf.train import scoring
from tiny_causal_lms import GEMMA2, LLAMA, scoring_rows as _rows


def _reference(model, ids, att, lm):
  """log p(ids[t + 1] | ids[<= t]) from the full logits, written out by hand."""
  logp = jax.nn.log_softmax(model(ids, att).astype(jnp.float32), axis=-1)
  nxt = jnp.take_along_axis(logp[:, :-1], ids[:, 1:, None], axis=-1)[..., 0]
  mask = lm[:, 1:].astype(jnp.float32)
  return jnp.pad(nxt * mask, ((0, 0), (0, 1))), jnp.pad(mask, ((0, 0), (0, 1)))


@pytest.mark.parametrize("config", [GEMMA2, LLAMA], ids=["gemma2_softcap", "llama"])
@pytest.mark.parametrize("chunk_size", [0, 5])
def test_token_logps_equal_the_full_logits_computation(config, chunk_size):
  model = CausalLM(config, rngs=nnx.Rngs(0))
  ids, att, lm = _rows()
  want, want_mask = _reference(model, ids, att, lm)
  got, mask = scoring.token_logps(model, ids, att, lm, chunk_size)
  np.testing.assert_allclose(got, want, atol=2e-5)
  np.testing.assert_array_equal(mask, want_mask)


def test_soft_capped_chunked_logps_differ_from_uncapped_ones():
  """The cap matters at these logit scales, so equality above is not vacuous."""
  model = CausalLM(GEMMA2, rngs=nnx.Rngs(0))
  ids, att, lm = _rows()
  capped, _ = scoring.token_logps(model, ids, att, lm, chunk_size=5)
  uncapped = CausalLM(GEMMA2.replace(final_logit_softcap=None), rngs=nnx.Rngs(0))
  plain, _ = scoring.token_logps(uncapped, ids, att, lm, chunk_size=5)
  assert float(jnp.max(jnp.abs(capped - plain))) > 1e-2
  with pytest.raises(ValueError, match="output_projection"):
    model.output_embedding()


def test_aligned_token_logps_move_each_value_onto_its_token_and_read_the_prefix():
  model = CausalLM(LLAMA, rngs=nnx.Rngs(1))
  ids, att, lm = _rows(1)
  nxt, nxt_mask = scoring.token_logps(model, ids, att, lm)
  aligned, mask = scoring.aligned_token_logps(model, ids, att, lm)
  np.testing.assert_allclose(aligned[:, 1:], nxt[:, :-1], atol=1e-6)
  np.testing.assert_array_equal(mask[:, 1:], nxt_mask[:, :-1])
  # With a prefix, position 0 is predicted from the prefix: the prefixed full sequence, written out.
  prefix = (5, 6)
  full = jnp.concatenate([jnp.broadcast_to(jnp.asarray(prefix, ids.dtype), (3, 2)), ids], axis=1)
  full_att = jnp.concatenate([jnp.ones((3, 2), att.dtype), att], axis=1)
  logp = jax.nn.log_softmax(model(full, full_att), axis=-1)
  want = jnp.take_along_axis(logp[:, 1:-1], full[:, 2:, None], axis=-1)[..., 0]
  got, mask = scoring.aligned_token_logps(model, ids, att, jnp.ones_like(lm) * att, prefix_ids=prefix)
  np.testing.assert_allclose(got, want * mask, atol=2e-5)
  assert bool(jnp.all(mask[:, 0] == att[:, 0]))


@pytest.mark.parametrize("config", [GEMMA2, LLAMA], ids=["gemma2_softcap", "llama"])
@pytest.mark.parametrize("chunk_size", [0, 4])
def test_response_logps_are_the_rollout_rows_log_probs_at_a_temperature(config, chunk_size):
  """Against the full logits written out here (soft-cap, then temperature), the unchunked and the chunked LM-head
  path alike, and with the final hidden states of the same forward."""
  model = CausalLM(config, rngs=nnx.Rngs(2))
  prompt = jnp.asarray([[0, 3, 4], [5, 6, 7]])
  prompt_mask = jnp.asarray([[0, 1, 1], [1, 1, 1]])
  response = jnp.asarray([[8, 9, -1], [10, 11, 12]])  # -1: an out-of-range pad id on a masked slot
  response_mask = jnp.asarray([[1, 1, 0], [1, 1, 1]])
  logps, entropy = scoring.response_logps(model, prompt, prompt_mask, response, response_mask, temperature=0.7,
                                          chunk_size=chunk_size)
  ids = jnp.where(jnp.concatenate([prompt_mask, response_mask], 1) > 0, jnp.concatenate([prompt, response], 1), 0)
  logits, hidden = model(ids, jnp.concatenate([prompt_mask, response_mask], 1) > 0, return_hidden=True)
  logp = jax.nn.log_softmax(logits[:, 2:-1] / 0.7, -1)
  want = jnp.take_along_axis(logp, ids[:, 3:, None], axis=-1)[..., 0] * response_mask
  np.testing.assert_allclose(logps, want, atol=2e-5)
  np.testing.assert_allclose(entropy, -jnp.sum(jnp.exp(logp) * logp, -1) * response_mask, atol=2e-5)
  logps_h, entropy_h, hidden_h = scoring.response_logps_and_hidden(model, prompt, prompt_mask, response, response_mask,
                                                                   temperature=0.7, chunk_size=chunk_size)
  np.testing.assert_allclose(logps_h, logps, atol=1e-6)
  np.testing.assert_allclose(entropy_h, entropy, atol=1e-6)
  np.testing.assert_allclose(hidden_h, hidden[:, 2:-1], atol=1e-6)
  np.testing.assert_allclose(scoring.jit_response_logps(model, prompt, prompt_mask, response, response_mask),
                             scoring.response_logps(model, prompt, prompt_mask, response, response_mask)[0],
                             atol=1e-6)


def test_sequence_logps_sum_the_responses_in_fixed_shape_batches():
  model = CausalLM(LLAMA, rngs=nnx.Rngs(3))
  prompts = [[1, 2, 3], [4], [5, 6], [7, 8, 9, 10], [11]]
  responses = [[12, 13], [14], [15, 16, 17], [18], [19, 20]]
  got = scoring.sequence_logps(model, prompts, responses, pad_id=0, batch_size=2)  # the last batch is filled
  for p, r, value in zip(prompts, responses, got):
    logp = jax.nn.log_softmax(model(jnp.asarray([p + r])), axis=-1)[0]
    want = sum(float(logp[len(p) - 1 + i, tok]) for i, tok in enumerate(r))
    assert value == pytest.approx(want, abs=2e-5)
  with pytest.raises(ValueError, match="4 responses"):
    scoring.sequence_logps(model, prompts, responses[:4], pad_id=0)


def test_rollout_rows_need_a_prompt_token_and_bad_inputs_name_themselves():
  """P = 0 used to fail deep inside (a broadcasting error; state_values would return a (B, 1) slice silently)."""
  model = CausalLM(LLAMA, rngs=nnx.Rngs(3))
  empty_P = jnp.zeros((1, 0), jnp.int32)
  response, response_mask = jnp.asarray([[5, 6]]), jnp.asarray([[1, 1]])
  for chunk_size in (0, 4):
    with pytest.raises(ValueError, match=r"prompt_ids_BxP: expected shape \(B, P\) with P >= 1"):
      scoring.response_logps(model, empty_P, empty_P, response, response_mask, chunk_size=chunk_size)
  with pytest.raises(ValueError, match=r"prompt_ids_BxP: expected shape \(B, P\) with P >= 1"):
    scoring.response_hidden(model, empty_P, empty_P, response, response_mask)
  with pytest.raises(ValueError, match=r"prompt_rows\[1\]: every prompt needs at least one token"):
    scoring.sequence_logps(model, [[1, 2], []], [[5], [6]], pad_id=0)
  got = scoring.sequence_logps(model, [], [], pad_id=0)  # Was "max() arg is an empty sequence".
  assert got.shape == (0,) and got.dtype == np.float64


def test_flr_scores_need_positive_and_negative_follow_ups():
  logps = jnp.asarray([[-1.0, -2.0, -4.0]])
  np.testing.assert_allclose(scoring.flr_scores(logps, np.array([True, True, False])), [-1.5 + 4.0])
  for flags in ([True, True, True], [False, False, False], [True, False]):  # All-positive used to give NaN.
    with pytest.raises(ValueError, match="positive_F: expected"):
      scoring.flr_scores(logps, np.array(flags))


def test_a_prefix_on_packed_rows_is_refused_by_name():
  """Was "mul got incompatible shapes for broadcasting: (1, 7), (1, 6)" from deep inside."""
  model = CausalLM(LLAMA, rngs=nnx.Rngs(3))
  ids = jnp.asarray([[1, 2, 3, 4, 5, 6]])
  seg, pos = jnp.asarray([[1, 1, 1, 2, 2, 2]]), jnp.asarray([[0, 1, 2, 0, 1, 2]])
  with pytest.raises(ValueError, match="prefix_ids cannot be combined with packed rows"):
    scoring.token_logps(model, ids, jnp.ones_like(ids), jnp.ones_like(ids), positions_BxT=pos, segment_ids_BxT=seg,
                        prefix_ids=(7,))


def test_packed_rows_score_each_example_as_its_own_row():
  """Two examples packed into one row (segment ids, positions restarting) get the log-probs of each example scored
  alone, and no target crosses into the next segment, even where the loss mask covers its first token."""
  model = CausalLM(LLAMA, rngs=nnx.Rngs(4))
  a, b = jnp.asarray([[3, 4, 5, 6, 7]]), jnp.asarray([[8, 9, 10, 11]])
  packed = jnp.concatenate([a, b], axis=1)
  seg = jnp.asarray([[1] * 5 + [2] * 4])
  pos = jnp.asarray([list(range(5)) + list(range(4))])
  lm = jnp.asarray([[0, 0, 1, 1, 1, 1, 0, 1, 1]])  # Marks b's first token too.
  for chunk_size in (0, 3):
    got, mask = scoring.token_logps(model, packed, jnp.ones_like(packed), lm, chunk_size, positions_BxT=pos,
                                    segment_ids_BxT=seg)
    want_a, mask_a = _reference(model, a, jnp.ones_like(a), lm[:, :5])
    want_b, mask_b = _reference(model, b, jnp.ones_like(b), lm[:, 5:])
    np.testing.assert_allclose(got[:, :4], want_a[:, :4], atol=2e-5)
    np.testing.assert_allclose(got[:, 5:], want_b, atol=2e-5)
    np.testing.assert_array_equal(mask, jnp.concatenate([mask_a[:, :4], jnp.zeros((1, 1)), mask_b], axis=1))


def test_token_logps_with_a_prefix_equal_the_prefixed_rows():
  """prefix_ids = the rows with those tokens in front (attention 1, loss mask 0), realigned to the rows: column t
  still scores token t + 1."""
  model = CausalLM(LLAMA, rngs=nnx.Rngs(5))
  ids, att, lm = _rows(2)
  prefix = (5, 6, 7)
  full = jnp.concatenate([jnp.broadcast_to(jnp.asarray(prefix, ids.dtype), (3, 3)), ids], axis=1)
  full_att = jnp.concatenate([jnp.ones((3, 3), att.dtype), att], axis=1)
  full_lm = jnp.concatenate([jnp.zeros((3, 3), lm.dtype), lm], axis=1)
  want, want_mask = _reference(model, full, full_att, full_lm)
  got, mask = scoring.token_logps(model, ids, att, lm, prefix_ids=prefix)
  np.testing.assert_allclose(got, want[:, 3:], atol=2e-5)
  np.testing.assert_array_equal(mask, want_mask[:, 3:])


def test_aligned_token_logps_never_score_token_zero_without_a_prefix():
  """Nothing predicts a row's first token: it is masked out (value 0) even when the loss mask covers it."""
  model = CausalLM(LLAMA, rngs=nnx.Rngs(1))
  ids, att, _ = _rows(1)
  logps, mask = scoring.aligned_token_logps(model, ids, att, jnp.ones_like(att))
  np.testing.assert_array_equal(mask[:, 0], 0.0)
  np.testing.assert_array_equal(logps[:, 0], 0.0)
  np.testing.assert_array_equal(mask[:, 1:], (att[:, 1:] > 0).astype(jnp.float32))


def test_response_hidden_and_state_values_read_the_states_before_each_token():
  """response_hidden is the hidden state of response_logps_and_hidden; state_values[:, t] is the reward model's
  score of the row cut after response token t - 1 (V(s_t) read at s_t's last token; t = 0: the prompt alone)."""
  from jaxrlhf.models import RewardModel  # pylint: disable=g-import-not-at-top
  prompt = jnp.asarray([[0, 3, 4], [5, 6, 7]])
  prompt_mask = jnp.asarray([[0, 1, 1], [1, 1, 1]])
  response = jnp.asarray([[8, 9, 0], [10, 11, 12]])
  response_mask = jnp.asarray([[1, 1, 0], [1, 1, 1]])
  lm = CausalLM(LLAMA, rngs=nnx.Rngs(6))
  hidden = scoring.response_hidden(lm, prompt, prompt_mask, response, response_mask)
  _, _, want = scoring.response_logps_and_hidden(lm, prompt, prompt_mask, response, response_mask)
  np.testing.assert_allclose(hidden, want, atol=1e-6)
  rm = RewardModel(LLAMA, rngs=nnx.Rngs(7))
  values = scoring.state_values(rm, prompt, prompt_mask, response, response_mask)
  assert values.shape == (2, 4)
  ids = jnp.concatenate([prompt, response], axis=1)
  mask = jnp.concatenate([prompt_mask, response_mask], axis=1)
  for t in range(4):
    cut = 3 + t
    want_t = rm(ids[:, :cut], mask[:, :cut])
    rows = [r for r in range(2) if t <= int(response_mask[r].sum())]  # s_t exists
    np.testing.assert_allclose(values[rows, t], want_t[jnp.asarray(rows)], atol=2e-5)


def test_row_helpers_and_empty_responses():
  two = {"chosen_input_ids": np.zeros((4, 9), np.int32), "chosen_attention_mask": np.zeros((4, 9), np.int32)}
  shared = {"pair_input_ids": np.zeros((4, 11), np.int32)}
  assert scoring.row_length(two) == 9 and scoring.row_length(shared) == 11
  # Tokens a pair's forward reads: the prompt once in a shared row (P + R_c + R_r), twice in two rows.
  lengths = {"prompt_length": np.asarray([3, 2]), "chosen_length": np.asarray([2, 4]),
             "rejected_length": np.asarray([1, 3])}
  np.testing.assert_array_equal(scoring.tokens_read({**shared, **lengths}), [6, 9])
  att_c = np.asarray([[1, 1, 1, 1, 1, 0], [1, 1, 1, 1, 1, 1]])  # P + R_c
  att_r = np.asarray([[1, 1, 1, 1, 0, 0], [1, 1, 1, 1, 1, 0]])  # P + R_r
  np.testing.assert_array_equal(scoring.tokens_read({"chosen_attention_mask": att_c,
                                                     "rejected_attention_mask": att_r}), [9, 11])
  with pytest.raises(ValueError, match="every response needs at least one token"):
    scoring.sequence_logps(CausalLM(LLAMA, rngs=nnx.Rngs(3)), [[1, 2], [3]], [[4], []], pad_id=0)
