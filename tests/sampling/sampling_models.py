"""Tiny random CausalLMs of each family, built from numpy (jitted PRNG init compiles slowly on 2 CPU cores)."""

import numpy as np
import random_models
from flax import nnx

from jaxrlhf.models import ModelConfig

VOCAB = 37
_SMALL = dict(vocab_size=VOCAB, embed_dim=16, num_layers=2, num_heads=4, num_kv_heads=2, head_dim=4, mlp_dim=24,
              max_position_embeddings=64)
CONFIGS = {
    "llama_gqa": ModelConfig(family="llama", tie_word_embeddings=True, **_SMALL),
    "qwen2": ModelConfig(family="qwen2", qkv_bias=True, **_SMALL),
    "gpt2": ModelConfig(family="gpt2", norm="layernorm", norm_eps=1e-5, activation="gelu_tanh", gated_mlp=False,
                        position="learned", qkv_bias=True, out_bias=True, mlp_bias=True, tie_word_embeddings=True,
                        **dict(_SMALL, num_kv_heads=4)),
}


def random_model(config: ModelConfig, seed: int = 0, scale: float = 0.5):
  """A random CausalLM (tests/random_models.py) with peaked next-token distributions by default."""
  return random_models.random_model(config, seed, scale)


@nnx.jit
def full_forward(model, ids, mask):
  """Logits (B, T, V) of one cache-free forward."""
  return model(ids, mask)


def left_padded_prompts(seed: int = 0, width: int = 6, pads=(0, 2, 4)) -> tuple[np.ndarray, np.ndarray]:
  """(ids, mask) int32 (len(pads), width): row i left-padded by pads[i], ids in [3, VOCAB)."""
  rng = np.random.default_rng(seed)
  ids = rng.integers(3, VOCAB, size=(len(pads), width)).astype(np.int32)
  mask = (np.arange(width)[None, :] >= np.asarray(pads)[:, None]).astype(np.int32)
  return np.where(mask > 0, ids, 0).astype(np.int32), mask
