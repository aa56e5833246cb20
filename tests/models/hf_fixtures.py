"""Tiny random transformers models of each supported family, for parity tests (torch/transformers imported lazily)."""

from __future__ import annotations

from typing import Any

import numpy as np

VOCAB = 97
# Llama-family shapes: GQA (4 query heads over 2 kv heads), head_dim 8.
_LLAMA_SIZES = dict(vocab_size=VOCAB, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                    num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128)

_GEMMA_SIZES = dict(vocab_size=VOCAB, hidden_size=32, intermediate_size=48, num_hidden_layers=3,
                    num_attention_heads=4, num_key_value_heads=2, head_dim=16, sliding_window=4,
                    max_position_embeddings=128)

# name -> (transformers config class name, model class name, config kwargs)
FAMILIES: dict[str, tuple[str, str, dict[str, Any]]] = {
    "llama_gqa_tied": ("LlamaConfig", "LlamaForCausalLM", dict(_LLAMA_SIZES, tie_word_embeddings=True)),
    "llama3_untied_scaled": ("LlamaConfig", "LlamaForCausalLM", dict(
        _LLAMA_SIZES, tie_word_embeddings=False, rope_theta=500000.0,
        rope_scaling=dict(rope_type="llama3", factor=8.0, low_freq_factor=1.0, high_freq_factor=4.0,
                          original_max_position_embeddings=16))),
    "llama_linear_rope": ("LlamaConfig", "LlamaForCausalLM", dict(
        _LLAMA_SIZES, rope_scaling=dict(rope_type="linear", factor=2.0))),
    "mistral_sliding": ("MistralConfig", "MistralForCausalLM", dict(
        _LLAMA_SIZES, head_dim=8, sliding_window=4, rope_theta=1000.0)),
    "qwen2_bias": ("Qwen2Config", "Qwen2ForCausalLM", dict(_LLAMA_SIZES, tie_word_embeddings=True)),
    "gpt2": ("GPT2Config", "GPT2LMHeadModel", dict(
        vocab_size=VOCAB, n_embd=32, n_layer=2, n_head=4, n_positions=64, resid_pdrop=0.0, embd_pdrop=0.0,
        attn_pdrop=0.0, bos_token_id=1, eos_token_id=2)),
    # Phi-3 (mini 4k): fused qkv_proj / gate_up_proj, a 4-token window on every layer, untied.
    "phi3_sliding": ("Phi3Config", "Phi3ForCausalLM", dict(
        _LLAMA_SIZES, sliding_window=4, bos_token_id=1, eos_token_id=2, pad_token_id=0)),
    # Phi-4-mini style: half of each head rotated, LongRoPE past 24 positions (attention factor from max / original
    # positions = 128 / 24), tied.
    "phi3_longrope_partial": ("Phi3Config", "Phi3ForCausalLM", dict(
        _LLAMA_SIZES, tie_word_embeddings=True, original_max_position_embeddings=24, bos_token_id=1,
        eos_token_id=2, pad_token_id=0,
        rope_parameters=dict(rope_type="longrope", rope_theta=10000.0, partial_rotary_factor=0.5,
                             short_factor=[1.0, 1.7], long_factor=[3.0, 11.0]))),
    # Qwen3: head_dim 12 != hidden / heads = 8, q/k norms, untied; and tied with a window on layer 1 only.
    "qwen3_untied": ("Qwen3Config", "Qwen3ForCausalLM", dict(
        _LLAMA_SIZES, head_dim=12, tie_word_embeddings=False, rope_parameters=dict(rope_type="default",
                                                                                   rope_theta=1e6))),
    "qwen3_tied_sliding": ("Qwen3Config", "Qwen3ForCausalLM", dict(
        _LLAMA_SIZES, head_dim=8, tie_word_embeddings=True, use_sliding_window=True, sliding_window=4,
        max_window_layers=1)),
    # Gemma 1: Gemma's scaled embeddings and 1 + w norms with Llama's layer layout; "gelu" as the official files say
    # (GemmaConfig reads it as the tanh approximation).
    "gemma": ("GemmaConfig", "GemmaForCausalLM", dict(
        vocab_size=VOCAB, hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, head_dim=16, max_position_embeddings=128, hidden_act="gelu")),
    # Gemma 2: layers local/global/local with a 4-token window, query_pre_attn_scalar != head_dim, both soft-caps
    # small enough to bite on random weights.
    "gemma2": ("Gemma2Config", "Gemma2ForCausalLM", dict(
        _GEMMA_SIZES, query_pre_attn_scalar=12, final_logit_softcapping=5.0, attn_logit_softcapping=3.0)),
    # Gemma 3: local/local/global (sliding_window_pattern 3), local RoPE base 1e4, global 1e5 with linear scaling.
    "gemma3_untied": ("Gemma3TextConfig", "Gemma3ForCausalLM", dict(
        _GEMMA_SIZES, query_pre_attn_scalar=12, sliding_window_pattern=3, tie_word_embeddings=False,
        rope_parameters=dict(full_attention=dict(rope_type="linear", factor=2.0, rope_theta=1e5),
                             sliding_attention=dict(rope_type="default", rope_theta=1e4)))),
}


def make_hf_model(name: str, seed: int = 0, model_cls: str | None = None, **config_changes: Any):
  """A transformers model of family `name` (its config kwargs updated by `config_changes`) with every weight
  (incl. norms and biases) randomized, eager attention; `model_cls` replaces the family's causal-LM class (e.g.
  with its *ForSequenceClassification class)."""
  import torch
  import transformers

  config_cls, lm_cls, kwargs = FAMILIES[name]
  model_cls = model_cls or lm_cls
  torch.manual_seed(seed)
  config = getattr(transformers, config_cls)(**{**kwargs, **config_changes})
  config._attn_implementation = "eager"
  model = getattr(transformers, model_cls)(config).eval()
  # Gemma's RMSNorm scales by (1 + weight): its weights sit near zero.
  norm_center = 0.0 if config.model_type.startswith("gemma") else 1.0
  with torch.no_grad():
    for pname, p in model.named_parameters():
      if p.ndim == 1 and ("norm" in pname or "ln_" in pname) and pname.endswith("weight"):
        p.copy_(norm_center + 0.1 * torch.randn_like(p))  # norm scales near one, but not exactly one
      else:
        p.copy_(0.2 * torch.randn_like(p))  # biases too: zero-initialized biases would hide mistakes
  return model


def padded_batch(seed: int = 0, length: int = 10) -> tuple[np.ndarray, np.ndarray]:
  """(ids, mask) int64 (3, length): row 0 unpadded, row 1 left-padded by 3, row 2 right-padded by 2."""
  rng = np.random.default_rng(seed)
  ids = rng.integers(1, VOCAB, size=(3, length)).astype(np.int64)
  mask = np.ones((3, length), np.int64)
  mask[1, :3] = 0
  mask[2, -2:] = 0
  ids[mask == 0] = 0
  return ids, mask


def hf_logits(model, ids: np.ndarray, mask: np.ndarray) -> np.ndarray:
  """transformers logits with generate()'s position ids (cumsum(mask) - 1, pads set to 1)."""
  import torch

  ids_t, mask_t = torch.from_numpy(ids), torch.from_numpy(mask)
  positions = mask_t.cumsum(-1) - 1
  positions.masked_fill_(mask_t == 0, 1)
  with torch.no_grad():
    return model(input_ids=ids_t, attention_mask=mask_t, position_ids=positions).logits.float().numpy()
