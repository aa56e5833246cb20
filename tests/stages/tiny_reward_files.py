"""Tiny on-disk assets for the reward_heads / reward_eval stage tests: a word-level tokenizer, random 2-layer models
saved as HF folders (tokenizer included), preference / k-way files, and an independent per-sequence scorer."""

import json
import pathlib

import jax
import numpy as np
from flax import nnx
from tokenizers import Tokenizer, models, pre_tokenizers

from jaxrlhf.data import tokenize
from jaxrlhf.models import ModelConfig, save_pretrained
from random_models import random_model

WORDS = "the cat dog sat ran on a mat log big small red blue fast slow".split()
CONFIG = ModelConfig(vocab_size=32, embed_dim=16, num_layers=2, num_heads=2, num_kv_heads=2, head_dim=8, mlp_dim=32,
                     max_position_embeddings=64, bos_token_id=None, eos_token_id=1, pad_token_id=0)


def model_folder(path: pathlib.Path, seed: int = 0) -> pathlib.Path:
  """A HF folder holding a random CausalLM (N(0, 0.2) weights from `seed`) and the word-level tokenizer."""
  save_pretrained(random_model(CONFIG, seed), str(path))
  vocab = {w: i for i, w in enumerate(["<pad>", "<eos>", "<unk>", *WORDS])}
  tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
  tok.pre_tokenizer = pre_tokenizers.Whitespace()
  tok.save(str(path / "tokenizer.json"))
  (path / "tokenizer_config.json").write_text(json.dumps({"eos_token": "<eos>", "pad_token": "<pad>",
                                                          "unk_token": "<unk>"}))
  return path


def _text(rng, lo, hi, first=None):
  words = list(rng.choice(WORDS, int(rng.integers(lo, hi))))
  return " ".join(([first] if first else []) + words)


def preference_rows(n: int, seed: int = 0, subsets=("alpacaeval-easy", "mt-bench-easy", "anthropic_helpful")):
  """n pairs; chosen starts with "big", rejected with "small" (a learnable signal); subsets cycle."""
  rng = np.random.default_rng(seed)
  return [{"prompt": _text(rng, 2, 6), "chosen": _text(rng, 1, 5, "big"), "rejected": _text(rng, 1, 5, "small"),
           **({"subset": subsets[i % len(subsets)]} if subsets else {})} for i in range(n)]


def write_jsonl(path: pathlib.Path, rows) -> pathlib.Path:
  path.write_text("".join(json.dumps(r) + "\n" for r in rows))
  return path


_SCORERS = {}


def sequence_reward(rm, tokenizer, prompt: str, response: str, max_length: int = 64) -> np.ndarray:
  """The reward(s) of prompt + response scored alone (one row right-padded to max_length), tokenized as the
  pipeline does: (K,) for an ensemble or a multihead, (1,) for a single model."""
  if id(rm) not in _SCORERS:
    graphdef, state = nnx.split(rm)
    score = jax.jit(lambda state, ids, mask: nnx.merge(graphdef, state)(ids, mask))
    _SCORERS[id(rm)] = (rm, lambda ids, mask: score(state, ids, mask))  # rm kept alive: its id stays unique
  ids = (tokenize.encode_prompt(tokenizer, prompt) + tokenize.encode_response(tokenizer, response))[:max_length]
  row = np.zeros((1, max_length), np.int32)
  row[0, :len(ids)] = ids
  mask = (np.arange(max_length) < len(ids)).astype(np.int32)[None]
  return np.asarray(_SCORERS[id(rm)][1](row, mask), np.float64).reshape(-1)
