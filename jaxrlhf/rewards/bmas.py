"""BMAS, the bidirectional max-average similarity of Mixed-R1 (Xu et al. 2025, "Mixed-R1: Unified Reward Perspective
For Reasoning Capability in Multimodal Large Language Models", arXiv 2505.24164, the "open-ended reward" for
long-form text such as captions): the response and the ground truth are tokenized with the policy's tokenizer and
each token is looked up in the policy's input embedding table (the "tokenizer embedding"); with
c_ij = cos(e(y_i), e(g_j)) for response tokens y_1..y_m and reference tokens g_1..g_n,

    s_response = (1/m) sum_i max_j c_ij      (each response token's best match among the reference tokens)
    s_reference = (1/n) sum_j max_i c_ij     (each reference token's best match among the response tokens)
    BMAS = (s_response + s_reference) / 2

in [-1, 1] (1 for texts of the same token set; no clipping). Source: the paper's abstract ("tokenizer embedding
matching between the generated response and the ground truth") and the reward's name (max over one side, average
over the other, both directions); the combination of the two directions by their arithmetic mean follows issue 16's
statement of it ("and the reverse, averaged"). Unchecked against the authors: their code (github.com/xushilin1/
mixed-r1) could not be fetched (re-tried 2026-12-05: no snapshot of the repository, under either spelling, and no
file of it in the code index) and only the abstract / introduction of the paper's arXiv HTML was reachable, so the
direction averaging, the cosine normalization, special tokens (none added here), clipping (none) and which table
(the input embeddings, not the tied output head) are this module's reading of the abstract; check `bmas` against
the authors' code before citing numbers.
The first direction alone rewards a response that repeats one well-matched token; the second alone rewards padding
a response with every reference token and more; their mean needs both (precision- and recall-like, as BERTScore's
P and R, but on context-free input embeddings and combined by the arithmetic mean, not F1).

Edge cases (our choices): an empty response or reference (no tokens) is not scorable (None); a
zero embedding row (e.g. an unused, zeroed vocabulary entry) has cosine 0 with every token, itself included
(norms are clamped at 1e-12). Token ids are the tokenizer's plain ids (no BOS / special tokens added).
`bmas_reward(empty=...)` optionally scores an empty completion (against a non-empty reference) with a fixed value
instead of None, e.g. -1 (BMAS's minimum), for best-of-n selection where every sample needs a score.

`bmas_reward` is the text reward (fn(prompts, completions, **columns) -> list[float | None]): the reference column
holds one string (or a list of strings: the best reference's BMAS); the embedding table and tokenizer come from
`model`, a Hugging Face folder (only the embedding tensor is read, memory-mapped) or a .gguf file (only
`token_embd.weight` is dequantized), loaded once per path. The online stages do not pass the policy's path to text
rewards, so `model` is required: give the policy's own checkpoint to score as the paper does.
"""

from __future__ import annotations

import functools
import math
import os
import pathlib
from typing import Any, Sequence

import numpy as np

from jaxrlhf.rewards.calling import completion_text

# Names of the input embedding table in a Hugging Face checkpoint, by architecture family.
_HF_EMBEDDING_NAMES = ("model.embed_tokens.weight", "transformer.wte.weight")
_GGUF_EMBEDDING_NAME = "token_embd.weight"
_EPS = 1e-12


def _unit_rows(x_NxD: np.ndarray) -> np.ndarray:
  x_NxD = np.asarray(x_NxD, np.float64)
  return x_NxD / np.maximum(np.linalg.norm(x_NxD, axis=-1, keepdims=True), _EPS)


def bmas(response_ids: Sequence[int], reference_ids: Sequence[int], embeddings_VxD: np.ndarray) -> float | None:
  """BMAS in [-1, 1] of one tokenized response against one tokenized reference (module docstring).

  Args:
    response_ids: the response's M token ids.
    reference_ids: the reference's N token ids.
    embeddings_VxD: the input embedding table (V tokens, D dims), any float dtype.

  Returns:
    (mean_i max_j c_ij + mean_j max_i c_ij) / 2 with c_ij the cosine of response token i and reference token j
    (float64 arithmetic); None when either side has no tokens.

  Raises:
    ValueError: a token id outside [0, V).
  """
  response = np.asarray(response_ids, np.int64).reshape(-1)
  reference = np.asarray(reference_ids, np.int64).reshape(-1)
  if response.size == 0 or reference.size == 0:
    return None
  vocab = embeddings_VxD.shape[0]
  for name, ids in (("response_ids", response), ("reference_ids", reference)):
    if ids.min() < 0 or ids.max() >= vocab:
      raise ValueError(f"{name}: token ids must lie in [0, {vocab}) (the embedding table's rows), got "
                       f"{int(ids.min())}..{int(ids.max())}")
  cos_MxN = _unit_rows(embeddings_VxD[response]) @ _unit_rows(embeddings_VxD[reference]).T
  return float((cos_MxN.max(axis=1).mean() + cos_MxN.max(axis=0).mean()) / 2.0)


# ------------------------------------------------------------------------------------------- model files
@functools.lru_cache(maxsize=4)
def embedding_table(path: str) -> np.ndarray:
  """The input embedding table (V, D) of a model file, read once per path (cached): a HF folder's
  `model.embed_tokens.weight` (or GPT-2's `transformer.wte.weight`) memory-mapped from its safetensors, or a
  .gguf file's `token_embd.weight` dequantized to float32; nothing else of the model is read.

  Raises:
    ValueError / ModelFileError: the path is not a model folder or .gguf file, or has no embedding tensor.
  """
  p = pathlib.Path(path)
  if p.is_file() and p.suffix == ".gguf":
    from jaxrlhf.models import gguf as gguf_lib  # pylint: disable=g-import-not-at-top  lazy: the gguf package
    tensors = gguf_lib.read_header(p).tensors  # Every length validated against the file size.
    if _GGUF_EMBEDDING_NAME not in tensors:
      raise ValueError(f"{p}: GGUF file has no {_GGUF_EMBEDDING_NAME!r} tensor (the input embeddings)")
    return gguf_lib.read_tensor(p, tensors[_GGUF_EMBEDDING_NAME])
  if p.is_dir():
    from jaxrlhf.models.hf import read_hf_folder  # pylint: disable=g-import-not-at-top  lazy: imports JAX
    _, tensors = read_hf_folder(p)
    for name in _HF_EMBEDDING_NAMES:
      if name in tensors:
        table = tensors[name]
        if table.ndim != 2:
          raise ValueError(f"{p}: tensor {name!r} has shape {table.shape}, expected (vocab, dim)")
        return table
    raise ValueError(f"{p}: no input embedding tensor; expected one of {list(_HF_EMBEDDING_NAMES)}")
  raise ValueError(f"{path!r} is neither a Hugging Face model folder nor a .gguf file")


@functools.lru_cache(maxsize=4)
def _tokenizer(path: str) -> Any:
  from jaxrlhf.models import load_tokenizer  # pylint: disable=g-import-not-at-top  lazy: imports JAX
  return load_tokenizer(path)


def _reference_list(value: Any, column: str, row: int) -> list[str] | None:
  """A row's references: a string or a list of strings; None when missing (None, NaN, no non-None entry)."""
  if value is None or (isinstance(value, float) and math.isnan(value)):
    return None
  refs = [value] if isinstance(value, str) else (
      [v for v in value if v is not None] if isinstance(value, (list, tuple)) else None)
  if refs is None or not all(isinstance(v, str) for v in refs):
    raise ValueError(f"bmas: column {column!r} row {row}: expected a reference string or a list of strings, got "
                     f"{value!r}")
  return refs or None


def bmas_reward(column: str = "references", model: str = "", empty: float | None = None):
  """Reward function: BMAS (module docstring) of each completion against its row's `columns[column]`, under the
  embedding table and tokenizer of `model`; None where the row has no reference or either text has no tokens.

  Args:
    column: the reference column: a string, or a list of strings (the best reference's BMAS counts).
    model: the model whose input embeddings and tokenizer score the texts: a Hugging Face folder
      (config.json, model.safetensors, tokenizer.json) or a .gguf file; required (the reward sources do not pass
      the policy's path to text rewards), normally the policy's own checkpoint. Loaded once per path.
    empty: the score of a completion with no tokens where the row has a reference; None (default): not scorable.
  """
  if empty is not None and (isinstance(empty, bool) or not isinstance(empty, (int, float)) or not
                            math.isfinite(empty)):
    raise ValueError(f"bmas.empty: expected None or a finite number (the score of an empty completion), got "
                     f"{empty!r}")
  if not isinstance(model, (str, os.PathLike)) or not os.fspath(model):
    raise ValueError("bmas.model: required: the path of the model whose input embeddings and tokenizer score the "
                     "texts (a Hugging Face folder or a .gguf file, normally the policy's)")
  model = os.fspath(model)
  if not os.path.exists(model):
    raise ValueError(f"bmas.model: {model!r} does not exist (expected a Hugging Face folder or a .gguf file)")
  if not isinstance(column, str) or not column:
    raise ValueError(f"bmas.column: expected a column name, got {column!r}")
  # Loaded (and cached) when the config is planned, so a bad model file fails before any compute.
  embeddings_VxD = embedding_table(model)
  tokenizer = _tokenizer(model)
  if tokenizer.vocab_size > embeddings_VxD.shape[0]:
    raise ValueError(f"bmas.model: {model!r}: the tokenizer has {tokenizer.vocab_size} tokens but the embedding "
                     f"table only {embeddings_VxD.shape[0]} rows")

  def reward(prompts: Sequence[Any], completions: Sequence[Any], **columns) -> list[float | None]:
    del prompts
    if column not in columns:
      raise ValueError(f"bmas: reference column {column!r} not among the columns {sorted(columns)}")
    out = []
    for row, (c, value) in enumerate(zip(completions, columns[column])):
      refs = _reference_list(value, column, row)
      response = tokenizer.encode(completion_text(c))
      scores = [] if refs is None else [bmas(response, tokenizer.encode(ref), embeddings_VxD) for ref in refs]
      scores = [s for s in scores if s is not None]
      if not response and empty is not None and any(tokenizer.encode(ref) for ref in refs or ()):
        scores = [float(empty)]
      out.append(max(scores) if scores else None)
    return out

  reward.__name__ = reward.__qualname__ = "bmas"
  return reward
