"""Tiny CausalLM configs (a soft-capped Gemma 2 and a Llama, vocabulary 37) and right-padded scoring rows, shared by
the tests of `train.scoring` (test_scoring.py, test_logps_path.py)."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np

from jaxrlhf.models import ModelConfig

GEMMA2 = ModelConfig.from_hf({"model_type": "gemma2", "vocab_size": 37, "hidden_size": 16, "intermediate_size": 32,
                              "num_hidden_layers": 2, "num_attention_heads": 2, "num_key_value_heads": 1,
                              "head_dim": 8, "sliding_window": 4, "final_logit_softcapping": 0.3,
                              "attn_logit_softcapping": 5.0, "query_pre_attn_scalar": 8,
                              "tie_word_embeddings": False})
LLAMA = ModelConfig(vocab_size=37, embed_dim=16, num_layers=2, num_heads=2, num_kv_heads=1, head_dim=8, mlp_dim=32)


def scoring_rows(seed: int = 0, b: int = 3, t: int = 9, pad_from: int = 7, with_weights: bool = False):
  """(ids, attention, loss mask) int32 (b, t) jax arrays: random ids of the 37-token vocabulary, row 0 right-padded
  from `pad_from`, the loss mask on tokens 4.. of the unpadded part; with_weights also a (b, t) float32 normal draw
  (a different cotangent per token)."""
  rng = np.random.default_rng(seed)
  ids = rng.integers(0, 37, size=(b, t)).astype(np.int32)
  att = np.ones((b, t), np.int32)
  att[0, pad_from:] = 0
  lm = np.zeros((b, t), np.int32)
  lm[:, 4:] = 1
  rows = (jnp.asarray(ids), jnp.asarray(att), jnp.asarray(lm * att))
  if with_weights:
    return rows + (jnp.asarray(rng.normal(size=(b, t)).astype(np.float32)),)
  return rows
