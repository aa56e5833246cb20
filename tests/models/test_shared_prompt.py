"""Shared-prompt scoring ([prompt | chosen | rejected] in one row) against each sequence run ALONE through the
model: per-response log-probs, last-token rewards and gradients, for RoPE and learned-position families, a
sliding window, chunked log-probs, a T-REG control prefix, an empty prompt, and against the two-row layout."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jaxrlhf.data import pipeline
from jaxrlhf.models import ModelConfig
from jaxrlhf.models.heads import HeadConfig
from jaxrlhf.models.reward_model import RewardEnsemble, RewardModel
from jaxrlhf.models.shared_prompt import CHOSEN, PROMPT, REJECTED, shared_prompt_layout
from jaxrlhf.train import scoring
from random_models import random_model

V = 40
CONFIGS = {
    "llama": ModelConfig(vocab_size=V, embed_dim=16, num_layers=2, num_heads=4, num_kv_heads=2, head_dim=8,
                         mlp_dim=32),
    "gpt2": ModelConfig(family="gpt2", vocab_size=V, embed_dim=16, num_layers=2, num_heads=2, num_kv_heads=2,
                        head_dim=8, mlp_dim=32, norm="layernorm", position="learned", gated_mlp=False,
                        activation="gelu_tanh", qkv_bias=True, out_bias=True, mlp_bias=True,
                        max_position_embeddings=64),
    "window": ModelConfig(vocab_size=V, embed_dim=16, num_layers=2, num_heads=2, num_kv_heads=1, head_dim=8,
                          mlp_dim=32, sliding_window=4),
}
# (prompt, chosen, rejected) lengths; one empty prompt, responses of different lengths both ways.
LENGTHS = [(5, 3, 6), (2, 7, 1), (0, 4, 4), (9, 2, 3), (1, 1, 1)]


def _examples(seed=0):
  rng = np.random.default_rng(seed)
  out = []
  for p, c, r in LENGTHS:
    draw = lambda n: rng.integers(3, V, n).astype(np.int32)  # pylint: disable=cell-var-from-loop
    out.append({"prompt": draw(p), "chosen": draw(c), "rejected": draw(r), "chosen_score": np.float32(1),
                "rejected_score": np.float32(0), "margin": np.float32(np.nan), "weight": np.float32(1)})
  return out


def _batches(examples, batch_size=6):
  config = pipeline.PipelineConfig(batch_size=batch_size, max_length=16, buckets=(8, 16), shared_prompt=True)
  two_rows = pipeline.collate_preference(examples, config, pad_id=0)
  shared = pipeline.collate_shared_prompt(examples, config, pad_id=0)
  return two_rows, shared


def _alone_logps(model, prompt, response):
  """sum_t log p(response_t | prompt, response_<t), the sequence run alone (no padding, no batch)."""
  ids = np.concatenate([prompt, response])[None]
  logits = np.asarray(model(jnp.asarray(ids)), np.float64)[0]
  logp = logits - np.logaddexp.reduce(logits, axis=-1, keepdims=True)
  return sum(logp[t - 1, ids[0, t]] for t in range(max(len(prompt), 1), ids.shape[1]))


def test_layout_segments_positions_and_predictors():
  layout = shared_prompt_layout(jnp.array([2, 0]), jnp.array([2, 1]), jnp.array([3, 2]), 8)
  np.testing.assert_array_equal(layout.segment_ids, [[PROMPT, PROMPT, CHOSEN, CHOSEN, REJECTED, REJECTED,
                                                      REJECTED, 0], [CHOSEN, REJECTED, REJECTED, 0, 0, 0, 0, 0]])
  np.testing.assert_array_equal(layout.positions, [[0, 1, 2, 3, 2, 3, 4, 0], [0, 0, 1, 0, 0, 0, 0, 0]])
  # The first rejected token is predicted by the last prompt token, every other by its left neighbour.
  np.testing.assert_array_equal(layout.source_index[0, :7], [0, 0, 1, 2, 1, 4, 5])
  np.testing.assert_array_equal(layout.chosen_targets[0], [0, 0, 1, 1, 0, 0, 0, 0])
  np.testing.assert_array_equal(layout.rejected_targets[0], [0, 0, 0, 0, 1, 1, 1, 0])
  # Empty prompt: neither response's first token has a predictor (as in the two-row layout).
  np.testing.assert_array_equal(layout.chosen_targets[1], [0] * 8)
  np.testing.assert_array_equal(layout.rejected_targets[1], [0, 0, 1, 0, 0, 0, 0, 0])
  np.testing.assert_array_equal(layout.chosen_last, [3, 0])
  np.testing.assert_array_equal(layout.rejected_last, [6, 2])
  # An empty response is read where its own row would end: at the prompt's last token (not the other response's).
  empty = shared_prompt_layout(jnp.array([5, 5]), jnp.array([3, 0]), jnp.array([0, 2]), 8)
  np.testing.assert_array_equal(empty.rejected_last, [4, 6])
  np.testing.assert_array_equal(empty.chosen_last, [7, 4])
  filler = {"pair_input_ids": np.zeros((3, 8)), "prompt_length": np.array([3, 0, 0]),
            "chosen_length": np.array([0, 0, 2]), "rejected_length": np.array([2, 0, 2])}
  np.testing.assert_array_equal(scoring.nonempty_rows(filler), [True, False, True])


@pytest.mark.parametrize("family", sorted(CONFIGS))
@pytest.mark.parametrize("chunk_size,fused", [(0, False), (7, False), (7, True)])
def test_token_logps_equal_each_sequence_run_alone(family, chunk_size, fused):
  model = random_model(CONFIGS[family], seed=1, scale=0.3)
  examples = _examples()
  two_rows, shared = _batches(examples)
  b = shared["weight"].shape[0]
  want_c = [_alone_logps(model, e["prompt"], e["chosen"]) for e in examples]
  want_r = [_alone_logps(model, e["prompt"], e["rejected"]) for e in examples]
  for batch in (shared, two_rows):
    token_logps, mask = scoring.pair_token_logps(model, jax.tree.map(jnp.asarray, batch), chunk_size, fused=fused)
    sums = np.asarray(jnp.sum(token_logps, -1))
    np.testing.assert_allclose(sums[:len(examples)], want_c, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(sums[b:b + len(examples)], want_r, rtol=1e-5, atol=1e-5)
    counts = np.asarray(jnp.sum(mask, -1))
    np.testing.assert_array_equal(counts[:len(examples)], [c - (p == 0) for p, c, _ in LENGTHS])
    np.testing.assert_array_equal(counts[b:b + len(examples)], [r - (p == 0) for p, _, r in LENGTHS])
    assert not counts[len(examples):b].any()  # the filler row reads nothing


@pytest.mark.parametrize("fused", [False, True])
def test_gradients_equal_the_two_row_layout(fused):
  """The shared-prompt row's gradients (on the full path, or the fused LM-head path) equal the two-row full path's."""
  model = random_model(CONFIGS["llama"], seed=2)
  two_rows, shared = _batches(_examples(3))
  graphdef, params = nnx.split(model)

  def objective(params, batch, fused=False):
    token_logps, _ = scoring.pair_token_logps(nnx.merge(graphdef, params), batch, 5 if fused else 0, fused=fused)
    b = token_logps.shape[0] // 2
    # A DPO-like contrast, so both halves and their signs matter.
    return jnp.sum(jax.nn.log_sigmoid(jnp.sum(token_logps[:b], -1) - jnp.sum(token_logps[b:], -1)))

  g_shared = jax.grad(objective)(params, jax.tree.map(jnp.asarray, shared), fused)
  g_two = jax.grad(objective)(params, jax.tree.map(jnp.asarray, two_rows))
  for a, b in zip(jax.tree.leaves(g_shared), jax.tree.leaves(g_two)):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)


def test_control_prefix_shifts_the_prompt_only():
  model = random_model(CONFIGS["llama"], seed=4, scale=0.3)
  examples = _examples(5)
  _, shared = _batches(examples)
  prefix = (7, 8, 9)
  token_logps, _ = scoring.pair_token_logps(model, jax.tree.map(jnp.asarray, shared), 0, prefix)
  b = shared["weight"].shape[0]
  p = np.asarray(prefix, np.int32)
  want = [_alone_logps(model, np.concatenate([p, e["prompt"]]), e["rejected"]) for e in examples]
  np.testing.assert_allclose(np.asarray(jnp.sum(token_logps, -1))[b:b + len(examples)], want, rtol=1e-5,
                             atol=1e-5)
  assert token_logps.shape[1] == shared["pair_input_ids"].shape[1]


@pytest.mark.parametrize("head", [HeadConfig(), HeadConfig(kind="attributes", num_outputs=3)])
def test_rewards_equal_each_sequence_scored_alone(head):
  config = CONFIGS["llama"]
  rm = RewardModel.from_causal_lm(random_model(config, seed=6), head, seed=1)
  examples = _examples(7)
  _, shared = _batches(examples)
  n = len(examples)
  r_c, r_r = scoring.pair_rewards(rm, jax.tree.map(jnp.asarray, shared))
  a_c, _ = scoring.pair_rewards(rm, jax.tree.map(jnp.asarray, shared), attributes=True)
  for i, e in enumerate(examples):
    for got, response in ((r_c, e["chosen"]), (r_r, e["rejected"])):
      ids = jnp.asarray(np.concatenate([e["prompt"], response])[None])
      np.testing.assert_allclose(got[i], rm(ids)[0], rtol=1e-5, atol=1e-6)
    ids = jnp.asarray(np.concatenate([e["prompt"], e["chosen"]])[None])
    np.testing.assert_allclose(a_c[i], rm.attributes(ids)[0], rtol=1e-5, atol=1e-6)
  assert r_c.shape == (shared["weight"].shape[0],) and n < r_c.shape[0]


def test_ensemble_rewards_equal_the_two_row_layout():
  ensemble = RewardEnsemble(CONFIGS["gpt2"], HeadConfig(kind="mlp"), 3, rngs=nnx.Rngs(0))
  two_rows, shared = _batches(_examples(8))
  got = scoring.pair_rewards(ensemble, jax.tree.map(jnp.asarray, shared))
  want = scoring.pair_rewards(ensemble, jax.tree.map(jnp.asarray, two_rows))
  n = len(LENGTHS)
  for g, w in zip(got, want):
    assert g.shape == w.shape == (6, 3)
    np.testing.assert_allclose(g[:n], w[:n], rtol=1e-5, atol=1e-6)


def test_shared_mask_needs_segment_ids():
  model = random_model(CONFIGS["llama"])
  with pytest.raises(ValueError, match="shared_mask needs segment_ids"):
    model(jnp.ones((1, 4), jnp.int32), shared_mask=jnp.ones((1, 4), bool))
