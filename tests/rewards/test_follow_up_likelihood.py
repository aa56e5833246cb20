"""FLR, follow-up likelihood as reward (Zhang et al. 2024, arXiv 2409.13948): the jitted scorer
(`train.scoring.follow_up_logps` / `flr_scores`) against transformers on unpadded dialogues, hand-checkable cases,
the follow-up rendering, the "follow_up_likelihood" reward source's config errors and a best-of-n run with it."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers

from jaxrlhf.models import from_pretrained
from jaxrlhf.rewards import follow_up as follow_up_lib
from jaxrlhf.train import scoring

VOCAB, END = 97, 2


def tiny_llama(folder):
  """A random 2-layer Llama (GQA, untied) saved by transformers, and ours loaded from the same folder."""
  torch.manual_seed(0)
  config = transformers.LlamaConfig(vocab_size=VOCAB, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                                    num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
                                    tie_word_embeddings=False)
  config._attn_implementation = "eager"
  hf = transformers.LlamaForCausalLM(config).eval()
  with torch.no_grad():
    for name, p in hf.named_parameters():
      p.copy_(1.0 + 0.1 * torch.randn_like(p) if "norm" in name else 0.3 * torch.randn_like(p))
  hf.save_pretrained(folder)
  ours, _ = from_pretrained(folder)
  return hf, ours


def batch():
  """4 rows (left-padded prompts, right-padded responses; rows 0 and 2 end with END, row 1 is truncated, row 3
  is empty) and 3 follow-ups (a 2-token turn marker, untargeted, then 1 to 4 utterance tokens)."""
  rng = np.random.default_rng(0)
  p, n, l = 6, 5, 7
  prompt_len, response_len = [6, 3, 1, 4], [5, 3, 2, 0]
  prompt_ids, prompt_mask = np.zeros((4, p), np.int32), np.zeros((4, p), np.int32)
  response_ids, response_mask = np.full((4, n), 96, np.int32), np.zeros((4, n), np.int32)
  for r in range(4):
    prompt_ids[r, p - prompt_len[r]:] = rng.integers(3, VOCAB, prompt_len[r])
    prompt_mask[r, p - prompt_len[r]:] = 1
    response_ids[r, :response_len[r]] = rng.integers(3, VOCAB, response_len[r])
    response_mask[r, :response_len[r]] = 1
  response_ids[0, 4] = response_ids[2, 1] = END
  follow = [[5, 6, 40], [5, 6, 41, 42, 43, 44], [5, 6, 45, 46]]
  follow_ids, follow_mask, follow_target = (np.zeros((3, l), np.int32), np.zeros((3, l), np.int32),
                                            np.zeros((3, l), np.float32))
  for f, row in enumerate(follow):
    follow_ids[f, :len(row)], follow_mask[f, :len(row)], follow_target[f, 2:len(row)] = row, 1, 1.0
  follow_ids[follow_mask == 0] = 95  # Pad ids are never read.
  return prompt_ids, prompt_mask, response_ids, response_mask, follow_ids, follow_mask, follow_target


def reference_logps(hf, prompt_ids, prompt_mask, response_ids, response_mask, follow_ids, follow_mask, follow_target):
  """(R, F) float64: one unpadded transformers forward per (row, follow-up), a trailing END of the response
  dropped, the mean log-prob of the targeted follow-up tokens."""
  out = np.zeros((prompt_ids.shape[0], follow_ids.shape[0]))
  for r in range(prompt_ids.shape[0]):
    response = list(response_ids[r][response_mask[r] > 0])
    if response and response[-1] == END:
      response = response[:-1]
    context = list(prompt_ids[r][prompt_mask[r] > 0]) + response
    for f in range(follow_ids.shape[0]):
      real = follow_mask[f] > 0
      seq = context + list(follow_ids[f][real])
      targets = [len(context) + i for i, t in enumerate(follow_target[f][real]) if t > 0]
      with torch.no_grad():
        logits = hf(input_ids=torch.tensor([seq])).logits[0].double()
      logp = torch.log_softmax(logits, -1).numpy()
      out[r, f] = np.mean([logp[t - 1, seq[t]] for t in targets])
  return out


@pytest.fixture(scope="module")
def models(tmp_path_factory):
  return tiny_llama(tmp_path_factory.mktemp("tiny_llama"))


def test_follow_up_logps_match_transformers_on_unpadded_dialogues(models):
  hf, ours = models
  arrays = batch()
  ref = reference_logps(hf, *arrays)
  got = jax.jit(lambda *a: scoring.follow_up_logps(ours, *a, end_ids=(END,), chunk_size=8))(*map(jnp.asarray, arrays))
  np.testing.assert_allclose(np.asarray(got), ref, atol=1e-5, rtol=0)
  positive = np.array([True, False, True])
  flr = np.asarray(scoring.flr_scores(got, positive))
  np.testing.assert_allclose(flr, (ref[:, 0] + ref[:, 2]) / 2 - ref[:, 1], atol=1e-5, rtol=0)


def test_a_follow_up_the_model_makes_likelier_raises_the_score(models):
  """Hand-checkable: follow-ups repeating the context's own last token vs another one. With the same follow-up as
  positive and negative the score is 0; swapping positive and negative flips its sign."""
  _, ours = models
  prompt_ids, prompt_mask, response_ids, response_mask, *_ = batch()
  logps_R = scoring.follow_up_logps(ours, prompt_ids, prompt_mask, response_ids, response_mask,
                                    np.array([[7, 8]] * 2, np.int32), np.ones((2, 2), np.int32),
                                    np.array([[0, 1]] * 2, np.float32))
  np.testing.assert_allclose(np.asarray(scoring.flr_scores(logps_R, np.array([True, False]))), 0.0, atol=1e-6)
  # Which of two follow-up tokens the model prefers after each row, then FLR with it positive is > 0.
  ids = np.array([[7, 8], [7, 9]], np.int32)
  lp = np.asarray(scoring.follow_up_logps(ours, prompt_ids, prompt_mask, response_ids, response_mask, ids,
                                          np.ones((2, 2), np.int32), np.array([[0, 1]] * 2, np.float32)))
  flr = np.asarray(scoring.flr_scores(lp, np.array([True, False])))
  np.testing.assert_allclose(flr, lp[:, 0] - lp[:, 1], atol=1e-6)
  np.testing.assert_allclose(np.asarray(scoring.flr_scores(lp, np.array([False, True]))), -flr, atol=1e-6)
  assert np.all(np.abs(flr) > 1e-4)


def test_responses_padding_and_end_token_do_not_change_the_score(models):
  """Moving the response's padding (wider N), and an explicit end token vs a truncated response, score alike."""
  _, ours = models
  arrays = batch()
  prompt_ids, prompt_mask, response_ids, response_mask, *follow = arrays
  base = np.asarray(scoring.follow_up_logps(ours, *arrays, end_ids=(END,)))
  wide_ids = np.concatenate([response_ids, np.full((4, 3), 96, np.int32)], axis=1)
  wide_mask = np.concatenate([response_mask, np.zeros((4, 3), np.int32)], axis=1)
  wide = np.asarray(scoring.follow_up_logps(ours, prompt_ids, prompt_mask, wide_ids, wide_mask, *follow,
                                            end_ids=(END,)))
  np.testing.assert_allclose(wide, base, atol=1e-5)
  truncated_mask = response_mask.copy()
  truncated_mask[0, 4] = 0  # Row 0 without its END token.
  truncated = np.asarray(scoring.follow_up_logps(ours, prompt_ids, prompt_mask, response_ids, truncated_mask, *follow,
                                                 end_ids=(END,)))
  np.testing.assert_allclose(truncated[0], base[0], atol=1e-5)
  # Without end_ids, row 0's END stays in the context and its scores change.
  kept = np.asarray(scoring.follow_up_logps(ours, *arrays))
  assert np.abs(kept[0] - base[0]).max() > 1e-3
  np.testing.assert_allclose(kept[1], base[1], atol=1e-5)
