"""SmolLM2-135M-Instruct (GGUF): our jitted KV-cache greedy generation vs transformers' generate()."""

import importlib.util
import os

import jax.numpy as jnp
import numpy as np
import pytest

from conftest import require_asset
from jaxrlhf.models import from_pretrained, load_tokenizer
from jaxrlhf.data.padding import pad_prompts
from jaxrlhf.sampling import generate

pytestmark = [pytest.mark.slow, pytest.mark.parity]

QUESTION = [{"role": "user", "content": "What is the capital of France?"}]
NEW_TOKENS = 16


def test_greedy_chat_answer_matches_transformers(smollm2_gguf):
  require_asset(importlib.util.find_spec("transformers") is not None, "transformers is not installed")
  os.environ["HF_HUB_OFFLINE"] = "1"
  import torch
  import transformers

  model, _ = from_pretrained(smollm2_gguf, dtype=jnp.float32)
  tok = load_tokenizer(smollm2_gguf)
  prompt = tok.encode(tok.apply_chat_template(QUESTION, add_generation_prompt=True))
  # Row 1 is a shorter prompt, so row 0's answer is generated next to left padding of another row.
  ids, mask = pad_prompts([prompt, prompt[-5:]], pad_id=tok.pad_id, multiple=32)
  out = generate(model, ids, mask, max_new_tokens=NEW_TOKENS, greedy=True, eos_ids=(tok.eos_id,), pad_id=tok.pad_id)
  length = int(out.lengths[0])
  ours = np.asarray(out.tokens)[0, :length].tolist()
  answer = tok.decode(ours)
  print(f"SmolLM2 greedy answer: {answer!r}")
  assert "Paris" in answer

  reference = transformers.AutoModelForCausalLM.from_pretrained(
      str(smollm2_gguf.parent), gguf_file=smollm2_gguf.name, dtype=torch.float32).eval()
  with torch.no_grad():
    expected = reference.generate(torch.tensor([prompt]), attention_mask=torch.ones(1, len(prompt), dtype=torch.long),
                                  max_new_tokens=NEW_TOKENS, do_sample=False, eos_token_id=tok.eos_id,
                                  pad_token_id=tok.pad_id)[0, len(prompt):].tolist()
  assert ours == expected
