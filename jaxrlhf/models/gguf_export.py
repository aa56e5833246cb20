"""GGUF export: a model and its tokenizer as the `.gguf` file llama.cpp's converter (convert_hf_to_gguf.py) would
write, for llama.cpp, ollama, LM Studio or transformers' GGUF loader to run, and for `from_pretrained` to read back.

`save_gguf` writes what `jaxrlhf.models.gguf.read_gguf` reads, inverted: the families llama (Llama 2 / 3.x, SmolLM2),
qwen2 (Qwen2 / 2.5), qwen3, gemma (Gemma 1), gemma2 and gemma3 (text); tensors in llama.cpp's names, q/k rows
permuted for llama files (GGML's interleaved RoPE), Gemma norm weights stored as 1 + w, llama3 RoPE scaling as `rope_freqs.weight`, norms and
RoPE factors in F32 and the matrices in the chosen type (F32, F16, BF16 or Q8_0; Q8_0 falls back to F16 for rows that
are not whole 32-value blocks, as the converter does). The tokenizer goes in as llama.cpp's vocabulary: tokens in id
order padded to the model's vocabulary with unused `[PAD<id>]` entries, token types (control for special added
tokens, user-defined for the other added ones), special ids, whether BOS / EOS are added, and the chat template; for a
byte-level BPE ('gpt2': Llama 3, Qwen, SmolLM2) its merges and the pre-tokenizer's llama.cpp name, for a
SentencePiece-style BPE with byte fallback ('llama': Llama 2, Mistral, Gemma) scores that rank the merges as the
tokenizer does, byte and unknown token types and whether a space is prepended.

What a GGUF cannot say is refused rather than written wrong: after writing, the file is read back and its model
config (every field that shapes the computation) and tokenization of a probe text set must equal the source's;
otherwise the file is removed and the differences are named (e.g. a Gemma 3 whose query_pre_attn_scalar is not the
head size, which llama.cpp would assume).
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import pathlib
import re
import time
import unicodedata
from typing import Any, Callable

import gguf
import numpy as np
from flax import nnx

from jaxrlhf.models import gguf as gguf_io
from jaxrlhf.models import tokenizer as tokenizer_lib
from jaxrlhf.models.config import ModelConfig
from jaxrlhf.models.decoder import rope_inv_freq
from jaxrlhf.models.hf import lazy_params_to_hf

# `tensor_type` name -> (GGML type of the matrices, llama.cpp's general.file_type).
TENSOR_TYPES = {
    "f32": (gguf.GGMLQuantizationType.F32, gguf.LlamaFileType.ALL_F32),
    "f16": (gguf.GGMLQuantizationType.F16, gguf.LlamaFileType.MOSTLY_F16),
    "bf16": (gguf.GGMLQuantizationType.BF16, gguf.LlamaFileType.MOSTLY_BF16),
    "q8_0": (gguf.GGMLQuantizationType.Q8_0, gguf.LlamaFileType.MOSTLY_Q8_0),
}
# ModelConfig.family -> GGUF general.architecture.
_ARCHITECTURES = {"llama": "llama", "qwen2": "qwen2", "qwen3": "qwen3", "gemma": "gemma", "gemma2": "gemma2",
                  "gemma3": "gemma3"}
# Fields that do not shape the computation a file describes (numerics, layout and bookkeeping chosen at load time),
# and the token ids, which the tokenizer's metadata carries (a GGUF has one end-of-sequence id).
_UNCOMPARED = frozenset({"dtype", "param_dtype", "scan_layers", "remat", "attention", "initializer_range",
                         "hf_model_type", "bos_token_id", "eos_token_id", "pad_token_id"})
# Texts whose tokenization must survive the round trip: words, digits, whitespace runs, punctuation, accents, CJK,
# emoji and a contraction (the pre-tokenizer's splits), plus every added token (added below).
_PROBES = ("Hello world! The year 2024 had 366 days.", "  leading spaces,\ttabs\nand\n\nnewlines   ",
           "naïve café, Việt Nam, 東京タワー, Ελληνικά 🙂",
           "don't we'll I'M they've 12345678 3.14159 x=a+b*c;")


def save_gguf(model: Any, path: str | os.PathLike, tokenizer: Any, config: ModelConfig | None = None,
              tensor_type: str = "f16", name: str | None = None) -> str:
  """Writes `model` (a CausalLM; a LoRA one merged) and `tokenizer` as one `.gguf` file and checks it reads back
  as the same model and tokenizer.

  Args:
    model: the CausalLM (its parameters are gathered to the host).
    path: the file to write (its folder is created).
    tokenizer: a `jaxrlhf.models.tokenizer.Tokenizer` over a byte-level BPE vocabulary of at most the model's
      vocab_size tokens.
    config: the model's config (default `model.config`).
    tensor_type: "f32", "f16" (llama.cpp's default), "bf16" or "q8_0": the storage of the matrices (norm weights
      and RoPE factors stay F32).
    name: general.name (default: the file's stem).

  Returns:
    `path` as a string.

  Raises:
    ValueError: naming what a GGUF cannot hold: another family (gpt2), an unknown tensor_type, a tokenizer
      llama.cpp's vocabulary cannot describe, or a config / tokenization that reads back differently (the file is
      then removed).
  """
  if tensor_type not in TENSOR_TYPES:
    raise ValueError(f"tensor_type {tensor_type!r}: expected one of {sorted(TENSOR_TYPES)}")
  config = config or model.config
  arch = "phi3" if config.hf_model_type == "phi3" else _ARCHITECTURES.get(config.family)
  if arch is None:
    raise ValueError(f"family {config.family!r}: GGUF export writes {sorted(_ARCHITECTURES)} models (the "
                     "architectures from_pretrained reads back as llama.cpp runs them)")
  if arch != "phi3" and config.rope_dim != config.head_dim:
    raise ValueError(f"rotary_dim={config.rotary_dim}: llama.cpp's {arch} rotates whole heads; a model rotating part "
                     "of each head exports as hf_model_type 'phi3'")
  if arch != "phi3" and config.longrope:
    raise ValueError(f"rope_scaling 'longrope': llama.cpp reads LongRoPE factors for phi3 files, not {arch}; export "
                     "with hf_model_type 'phi3'")
  if getattr(model, "lora", None) is not None:
    model = model.merged()
  # Every variable, not only nnx.Param (a frozen model's weights are FrozenParams); tensors are fetched one by one.
  tensors = lazy_params_to_hf(config, nnx.to_pure_dict(nnx.state(model)), np.float32)
  path = pathlib.Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  vocabulary = tokenizer_metadata(tokenizer, config.vocab_size)
  start = time.time()
  write_gguf(path, arch, config, tensors, vocabulary, tensor_type, name or path.stem)
  try:
    _check_read_back(path, config, tokenizer, sentencepiece=vocabulary["tokenizer.ggml.model"] == "llama")
  except BaseException:  # a refusal, or anything else that stops the check: no unchecked file is left behind
    path.unlink(missing_ok=True)
    raise
  print(f"[gguf] wrote {path} ({arch}, {tensor_type}, {path.stat().st_size / 2**20:.1f} MiB, "
        f"{time.time() - start:.1f}s); it reads back as the same model and tokenizer", flush=True)
  return str(path)


def write_gguf(path: str | os.PathLike, arch: str, config: ModelConfig,
               tensors: list[tuple[str, tuple[int, ...], Callable[[], np.ndarray]]], vocabulary: dict[str, Any],
               tensor_type: str, name: str) -> None:
  """Writes the file: metadata of `config` in llama.cpp's keys for `arch`, the `vocabulary` keys
  (`tokenizer_metadata`), and `tensors` (`hf.lazy_params_to_hf`: transformers names, shapes and float32 fetches) in
  llama.cpp's names and layout, streamed: the tensor table first, then each tensor fetched, converted and written
  before the next."""
  qtype, file_type = TENSOR_TYPES[tensor_type]
  writer = gguf.GGUFWriter(os.fspath(path), arch)
  for add, value in ((writer.add_name, name), (writer.add_file_type, file_type),
                     (writer.add_block_count, config.num_layers),
                     (writer.add_context_length, config.max_position_embeddings),
                     (writer.add_embedding_length, config.embed_dim), (writer.add_feed_forward_length, config.mlp_dim),
                     (writer.add_head_count, config.num_heads), (writer.add_head_count_kv, config.num_kv_heads),
                     (writer.add_key_length, config.head_dim), (writer.add_value_length, config.head_dim),
                     (writer.add_rope_dimension_count, config.rope_dim),
                     (writer.add_layer_norm_rms_eps, config.norm_eps), (writer.add_vocab_size, config.vocab_size),
                     (writer.add_rope_freq_base, config.rope_theta)):
    add(value)
  scaling = config.rope_scaling
  rope_freqs = None
  if scaling is not None and scaling.rope_type == "linear":
    writer.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
    writer.add_rope_scaling_factor(scaling.factor)
  elif scaling is not None and scaling.rope_type == "llama3":
    # llama.cpp keeps llama3 scaling as one divisor per frequency (what read_gguf turns back into the scaling).
    rope_freqs = gguf_io.llama3_rope_factors(config.head_dim, config.rope_theta, dataclasses.asdict(scaling))
  extra_tensors = []
  if arch == "phi3":
    extra_tensors = _phi3_metadata(writer, config)
  if arch in ("gemma2", "gemma3"):
    if config.sliding_window is not None:
      writer.add_sliding_window(config.sliding_window)
    if config.sliding_layers is not None:
      writer.add_sliding_window_pattern(list(config.sliding_layers))
    if config.attn_logit_softcap is not None:
      writer.add_attn_logit_softcapping(config.attn_logit_softcap)
    if config.final_logit_softcap is not None:
      writer.add_final_logit_softcapping(config.final_logit_softcap)
    if config.local_rope_theta is not None:
      writer.add_rope_freq_base_swa(config.local_rope_theta)
  for key, value in vocabulary.items():
    _add_value(writer, key, value)

  names = {hf: gg for gg, hf in gguf_io._hf_names(config.num_layers, arch).items()}
  plan = [(names[hf_name], shape, _llama_cpp_layout(fetch, hf_name, arch, config))
          for hf_name, shape, fetch in tensors if not (hf_name == "lm_head.weight" and config.tie_word_embeddings)]
  if rope_freqs is not None:
    plan.append((gguf_io.ROPE_FREQS, rope_freqs.shape, lambda: np.asarray(rope_freqs, np.float32)))
  plan += extra_tensors
  for gguf_name, shape, _ in plan:
    stored = _storage_type(shape, qtype)
    writer.add_tensor_info(gguf_name, shape, np.dtype(np.float32),
                           int(np.prod(gguf.quant_shape_to_byte_shape(shape, stored))), raw_dtype=stored)
  writer.write_header_to_file()
  writer.write_kv_data_to_file()
  writer.write_ti_data_to_file()
  for _, shape, fetch in plan:
    writer.write_tensor_data(_stored_bytes(fetch(), _storage_type(shape, qtype)))
  writer.close()


def _phi3_metadata(writer: gguf.GGUFWriter, config: ModelConfig
                   ) -> list[tuple[str, tuple[int, ...], Callable[[], np.ndarray]]]:
  """llama.cpp's phi3 keys (window, 0 for none; the original context) and, for LongRoPE, its attention factor; returns
  the factor tensors to write (float32 vectors, one value per rotated frequency)."""
  scaling = config.rope_scaling
  longrope = config.longrope
  writer.add_sliding_window(config.sliding_window or 0)
  writer.add_rope_scaling_orig_ctx_len(scaling.original_max_position_embeddings if longrope
                                       else config.max_position_embeddings)
  if not longrope:
    return []
  writer.add_rope_scaling_attn_factors(scaling.attention_factor)
  tensors = []
  for key, gguf_name in gguf_io.ROPE_FACTORS.items():
    factors = np.asarray(getattr(scaling, key), np.float32)
    tensors.append((gguf_name, factors.shape, lambda factors=factors: factors))
  return tensors


def _llama_cpp_layout(fetch: Callable[[], np.ndarray], hf_name: str, arch: str,
                      config: ModelConfig) -> Callable[[], np.ndarray]:
  """`fetch` with the converter's changes: Gemma norms stored as 1 + w, llama q/k rows permuted."""
  def fetched() -> np.ndarray:
    array = fetch()
    if arch in gguf_io.NORM_PLUS_ONE and hf_name.endswith("norm.weight"):
      array = array + np.float32(1.0)  # GGML scales by the weight, Gemma by 1 + w
    if arch == "llama" and hf_name.endswith(("q_proj.weight", "k_proj.weight")):
      array = permute_qk(array, config.num_heads if hf_name.endswith("q_proj.weight") else config.num_kv_heads)
    return array
  return fetched


def permute_qk(weight_OxI: np.ndarray, num_heads: int) -> np.ndarray:
  """llama.cpp's converter's q/k row permutation (each head's rotate-half rows -> GGML's interleaved pairs); the
  inverse of `gguf.reverse_permute_qk`."""
  out_dim = weight_OxI.shape[0]
  return (weight_OxI.reshape(num_heads, 2, out_dim // num_heads // 2, *weight_OxI.shape[1:])
          .swapaxes(1, 2).reshape(weight_OxI.shape))


def _storage_type(shape: tuple[int, ...], qtype: gguf.GGMLQuantizationType) -> gguf.GGMLQuantizationType:
  """A tensor's stored type: vectors in F32 (as the converter keeps them); matrices in `qtype`, Q8_0 only for rows
  of whole 32-value blocks (else F16)."""
  if len(shape) < 2:
    return gguf.GGMLQuantizationType.F32
  if qtype == gguf.GGMLQuantizationType.Q8_0 and shape[-1] % 32:
    return gguf.GGMLQuantizationType.F16
  return qtype


def _stored_bytes(array: np.ndarray, stored: gguf.GGMLQuantizationType) -> np.ndarray:
  """`array` (float32) as the bytes of type `stored`, in the file's little-endian order."""
  if stored == gguf.GGMLQuantizationType.F32:
    return np.ascontiguousarray(array, "<f4")
  if stored == gguf.GGMLQuantizationType.F16:
    return np.ascontiguousarray(array, "<f2")
  return gguf.quantize(np.ascontiguousarray(array, np.float32), stored)


def _add_value(writer: gguf.GGUFWriter, key: str, value: Any) -> None:
  if isinstance(value, bool):
    writer.add_bool(key, value)
  elif isinstance(value, int):
    writer.add_uint32(key, value)
  elif isinstance(value, str):
    writer.add_string(key, value)
  else:
    writer.add_array(key, list(value))


# ------------------------------------------------------------------------------------------------ the tokenizer
def tokenizer_metadata(tokenizer: Any, vocab_size: int) -> dict[str, Any]:
  """llama.cpp's `tokenizer.*` keys for `tokenizer` (a byte-level BPE or a SentencePiece-style BPE `Tokenizer`) in a
  model of `vocab_size` token ids.

  Raises:
    ValueError: a tokenizer that is neither (or has BPE options llama.cpp lacks), a pre-tokenizer llama.cpp has no
      name for here, more tokens than the model embeds, or a special token of no id.
  """
  backend = getattr(tokenizer, "backend", None)
  if backend is None:
    raise ValueError("tokenizer: a GGUF holds a real vocabulary (tokenizer.json or a GGUF's); this one has none "
                     "(the synthetic world's?)")
  spec = json.loads(backend.to_str())
  model = spec.get("model") or {}
  tokens, types = _token_table(spec, vocab_size)
  if _is_sentencepiece(spec):
    meta = _sentencepiece_vocabulary(spec, tokens, types, tokenizer)
  else:
    meta = _byte_level_vocabulary(spec, tokens, types)
  specials = tokenizer.special_tokens
  for key, token in (("bos_token_id", specials["bos_token"]), ("eos_token_id", specials["eos_token"]),
                     ("padding_token_id", specials["pad_token"]), ("unknown_token_id", specials["unk_token"])):
    if token is not None:
      meta[f"tokenizer.ggml.{key}"] = backend.token_to_id(token)
  if meta["tokenizer.ggml.model"] == "llama" and "tokenizer.ggml.unknown_token_id" not in meta \
      and model.get("unk_token") is not None:
    meta["tokenizer.ggml.unknown_token_id"] = backend.token_to_id(model["unk_token"])
  # Whether encoding adds BOS / EOS, from what the post-processor does (a template, Llama 3's, or none).
  plain, wrapped = tokenizer.encode("a"), tokenizer.encode("a", add_special_tokens=True)
  meta["tokenizer.ggml.add_bos_token"] = tokenizer.bos_id is not None and wrapped[:1] == [tokenizer.bos_id] \
      and wrapped[:1] != plain[:1]
  meta["tokenizer.ggml.add_eos_token"] = wrapped[-1:] == [tokenizer.eos_id] and wrapped[-1:] != plain[-1:]
  if len(wrapped) - len(plain) != meta["tokenizer.ggml.add_bos_token"] + meta["tokenizer.ggml.add_eos_token"]:
    raise ValueError(f"tokenizer: encoding adds {wrapped} around {plain} for 'a'; a GGUF can only say 'add BOS' "
                     "and 'add EOS'")
  if tokenizer.chat_template is not None:
    meta["tokenizer.chat_template"] = tokenizer.chat_template
  return meta


def _token_table(spec: dict[str, Any], vocab_size: int) -> tuple[list[str], list[int]]:
  """Tokens in id order padded with unused `[PAD<id>]` entries to `vocab_size`, and their llama.cpp types: control
  for special added tokens, user-defined for the other added ones, unused for the padding, else normal."""
  ids = dict((spec.get("model") or {}).get("vocab") or {})
  special = {}
  for added in spec.get("added_tokens") or []:
    ids[added["content"]] = added["id"]
    special[added["id"]] = bool(added.get("special"))
  if len(ids) > vocab_size or max(ids.values(), default=-1) >= vocab_size:
    raise ValueError(f"tokenizer: {len(ids)} tokens (largest id {max(ids.values())}) do not fit the model's "
                     f"vocab_size {vocab_size}")
  tokens, types = [f"[PAD{i}]" for i in range(vocab_size)], [int(gguf.TokenType.UNUSED)] * vocab_size
  for token, i in ids.items():
    tokens[i] = token
    types[i] = int(gguf.TokenType.NORMAL if i not in special else
                   gguf.TokenType.CONTROL if special[i] else gguf.TokenType.USER_DEFINED)
  return tokens, types


def _byte_level_vocabulary(spec: dict[str, Any], tokens: list[str], types: list[int]) -> dict[str, Any]:
  """The 'gpt2' (byte-level BPE) keys: tokens, types, merges and the pre-tokenizer's name."""
  model = spec.get("model") or {}
  if model.get("type") != "BPE" or (spec.get("decoder") or {}).get("type") != "ByteLevel":
    raise ValueError(f"tokenizer: model {model.get('type')!r} with decoder "
                     f"{(spec.get('decoder') or {}).get('type')!r}; GGUF export writes byte-level BPE vocabularies "
                     "(llama.cpp's 'gpt2' tokenizer model) and SentencePiece-style BPE ones with byte fallback "
                     "('llama')")
  _check_bpe_options(model, byte_fallback=False)
  normalizer = spec.get("normalizer")
  if normalizer is not None and normalizer.get("type") != "NFC":
    raise ValueError(f"tokenizer: normalizer {normalizer.get('type')!r}; llama.cpp's byte-level BPE normalizes "
                     "nothing")
  if normalizer is not None:
    print("[gguf] note: the tokenizer's NFC normalization is not written (llama.cpp's BPE has none, as its own "
          "converter leaves it out): text not in NFC form may tokenize differently from the source", flush=True)
  pre = pre_tokenizer_name(spec.get("pre_tokenizer"), bool(model.get("ignore_merges")))
  merges = [m if isinstance(m, str) else " ".join(m) for m in model.get("merges") or []]
  if not merges:  # llama.cpp needs the key, and GGUF has no empty arrays
    raise ValueError("tokenizer: a BPE vocabulary without merges; a GGUF's 'gpt2' tokenizer needs at least one")
  return {"tokenizer.ggml.model": "gpt2", "tokenizer.ggml.pre": pre, "tokenizer.ggml.tokens": tokens,
          "tokenizer.ggml.token_type": types, "tokenizer.ggml.merges": merges}


def _check_bpe_options(model: dict[str, Any], byte_fallback: bool) -> None:
  for option, default in (("byte_fallback", byte_fallback), ("dropout", None), ("continuing_subword_prefix", None),
                          ("end_of_word_suffix", None)):
    if model.get(option) not in (default, "") and not (default is False and model.get(option) is None):
      raise ValueError(f"tokenizer: BPE option {option}={model.get(option)!r}, which llama.cpp's "
                       f"{'SentencePiece' if byte_fallback else 'byte-level BPE'} vocabulary has no setting for "
                       f"(expected {default!r})")


def _is_sentencepiece(spec: dict[str, Any]) -> bool:
  """A BPE tokenizer.json in SentencePiece's style (Llama 2, Mistral, Gemma): byte fallback, "▁" for spaces."""
  model, decoder = spec.get("model") or {}, spec.get("decoder") or {}
  steps = decoder.get("decoders") or [] if decoder.get("type") == "Sequence" else [decoder]
  return model.get("type") == "BPE" and bool(model.get("byte_fallback")) \
      and any((d or {}).get("type") == "ByteFallback" for d in steps)


def _sentencepiece_vocabulary(spec: dict[str, Any], tokens: list[str], types: list[int],
                              tokenizer: Any) -> dict[str, Any]:
  """The 'llama' (SentencePiece) keys: tokens, scores, types and whether a space is prepended.

  llama.cpp merges the adjacent pair whose concatenation is the highest-scoring token, so a token's score is minus
  the rank of the first merge that makes it (tokens no merge makes, e.g. single characters, score below all of
  those; control, unknown and byte tokens 0, as SentencePiece gives them; added and unused ones -1000, as llama.cpp's
  converter writes). User-defined tokens that the tokenizer matches in its normalized text are written with plain
  spaces for "▁", as the converter does (llama.cpp matches them in the raw text). `tokens` and `types` are completed
  in place.
  """
  model = spec.get("model") or {}
  _check_bpe_options(model, byte_fallback=True)
  normalizer, pre = spec.get("normalizer") or {}, spec.get("pre_tokenizer") or {}
  steps = normalizer.get("normalizers") or [] if normalizer.get("type") == "Sequence" else [normalizer]
  foreign = [s.get("type") for s in steps if s and s.get("type") not in ("Prepend", "Replace")]
  if foreign or pre.get("type") not in (None, "Metaspace"):
    raise ValueError(f"tokenizer: normalizer steps {foreign} / pre-tokenizer {pre.get('type')!r}; llama.cpp's "
                     "SentencePiece vocabulary only writes spaces as '▁' (and may prepend one)")
  if pre.get("type") == "Metaspace" and pre.get("prepend_scheme", "always") != "never":
    # tokenizers' Metaspace prepends no "▁" to text that already starts with one ("first": nor after a special
    # token); llama.cpp, like sentencepiece, prepends one to every run of text.
    raise ValueError(f"tokenizer: pre-tokenizer Metaspace with prepend_scheme {pre.get('prepend_scheme')!r} "
                     "prepends no '▁' to text that starts with a space" + (
                         " or follows a special token" if pre.get("prepend_scheme") == "first" else "")
                     + "; llama.cpp always does, so the GGUF would tokenize such text otherwise. Llama 2's own "
                     "form (normalizer Prepend('▁') then Replace(' ', '▁'), no pre-tokenizer) is what a GGUF says")
  merges = [m.split(" ") if isinstance(m, str) else m for m in model.get("merges") or []]
  first_rank: dict[str, int] = {}
  for rank, (left, right) in enumerate(merges):
    first_rank.setdefault(left + right, rank)
  byte_token = re.compile(r"^<0x[0-9A-F]{2}>$")
  # Added tokens matched in the normalized text (spaces already "▁", as Gemma's whitespace runs are) are matched on
  # raw spaces in llama.cpp; the others are matched as spelled.
  matched_normalized = {a["id"] for a in spec.get("added_tokens") or [] if a.get("normalized")}
  scores = []
  for i, token in enumerate(tokens):
    if token == model.get("unk_token"):
      types[i] = int(gguf.TokenType.UNKNOWN)
    elif types[i] == gguf.TokenType.NORMAL and byte_token.match(token):
      types[i] = int(gguf.TokenType.BYTE)
    elif types[i] == gguf.TokenType.USER_DEFINED and i in matched_normalized:
      tokens[i] = token.replace(tokenizer_lib.SPIECE_SPACE, " ")
    if types[i] in (gguf.TokenType.USER_DEFINED, gguf.TokenType.UNUSED):
      scores.append(-1000.0)
    elif types[i] != gguf.TokenType.NORMAL:
      scores.append(0.0)
    else:
      scores.append(-float(first_rank.get(token, len(merges) + i)))
  # Whether "▁" is prepended to a text run: what this tokenizer does to "a".
  first = tokenizer.backend.encode("a", add_special_tokens=False).tokens
  add_space_prefix = bool(first) and first[0].startswith(tokenizer_lib.SPIECE_SPACE)
  return {"tokenizer.ggml.model": "llama", "tokenizer.ggml.pre": "default", "tokenizer.ggml.tokens": tokens,
          "tokenizer.ggml.scores": scores, "tokenizer.ggml.token_type": types,
          "tokenizer.ggml.add_space_prefix": add_space_prefix}


def pre_tokenizer_name(pre_tokenizer: dict[str, Any] | None, ignore_merges: bool) -> str:
  """llama.cpp's `tokenizer.ggml.pre` for a tokenizer.json pre-tokenizer (and BPE `ignore_merges`): "llama-bpe"
  (Llama 3's split, whole-word lookup), "smaug-bpe" (the same split, merges only), "qwen2", "smollm" (digits apart,
  then GPT-2's split), "deepseek-llm" / "deepseek-coder" (their regex sequences) or "gpt2". ValueError for any
  other (llama.cpp knows more, by hashes of their outputs; guessing one would tokenize subtly differently)."""
  def byte_level(p: Any, use_regex: bool) -> bool:
    return (isinstance(p, dict) and p.get("type") == "ByteLevel" and not p.get("add_prefix_space")
            and bool(p.get("use_regex", True)) == use_regex)

  parts = (pre_tokenizer or {}).get("pretokenizers") if (pre_tokenizer or {}).get("type") == "Sequence" else None
  name = None
  if byte_level(pre_tokenizer, True):
    name = "gpt2"
  elif parts and len(parts) == 2 and byte_level(parts[1], False) and parts[0].get("type") == "Split" \
      and str(parts[0].get("behavior", "")).lower() == "isolated" and not parts[0].get("invert"):
    regex = (parts[0].get("pattern") or {}).get("Regex")
    if regex == tokenizer_lib.PRE_TOKENIZER_SPLITS["llama3"]:
      name = "llama-bpe" if ignore_merges else "smaug-bpe"
    elif regex == tokenizer_lib.PRE_TOKENIZER_SPLITS["qwen2"]:
      name = "qwen2"
  elif parts and len(parts) == 2 and byte_level(parts[1], True) and parts[0].get("type") == "Digits" \
      and parts[0].get("individual_digits"):
    name = "smollm"
  elif parts and len(parts) > 2 and byte_level(parts[-1], False) and all(
      p.get("type") == "Split" and str(p.get("behavior", "")).lower() == "isolated" and not p.get("invert")
      for p in parts[:-1]):
    regexes = tuple((p.get("pattern") or {}).get("Regex") for p in parts[:-1])
    name = next((n for n, splits in tokenizer_lib.MULTI_SPLITS.items() if splits == regexes), None)
  if name is None:
    raise ValueError(f"tokenizer: pre-tokenizer {json.dumps(pre_tokenizer)[:300]} has no llama.cpp name here "
                     "(supported: GPT-2's byte-level split, Llama 3's and Qwen2's split regexes, SmolLM's digits, "
                     "DeepSeek's LLM and Coder regex sequences)")
  if ignore_merges and name != "llama-bpe":
    raise ValueError(f"tokenizer: BPE ignore_merges with the {name!r} pre-tokenizer, which llama.cpp applies to "
                     "Llama 3's split only")
  return name


# ---------------------------------------------------------------------------------------------- the read-back
def _same_rope(a: ModelConfig, b: ModelConfig) -> bool:
  """Whether two configs' RoPE computes the same: the inverse frequencies (float32, to 1e-6 relative; LongRoPE's long
  ones too) and, for LongRoPE, the switching length and the attention factor."""
  if not np.allclose(rope_inv_freq(a), rope_inv_freq(b), rtol=1e-6, atol=0):
    return False
  longrope = [a.longrope, b.longrope]
  if not any(longrope):
    return True
  return all(longrope) and np.allclose(rope_inv_freq(a, long=True), rope_inv_freq(b, long=True), rtol=1e-6, atol=0) \
      and a.rope_scaling.original_max_position_embeddings == b.rope_scaling.original_max_position_embeddings \
      and math.isclose(a.rope_scaling.attention_factor, b.rope_scaling.attention_factor, rel_tol=1e-6)


def _check_read_back(path: pathlib.Path, config: ModelConfig, tokenizer: Any, *, sentencepiece: bool) -> None:
  """ValueError naming what reads back otherwise from `path` than `config` and `tokenizer` give (`sentencepiece`:
  the file holds a 'llama' vocabulary)."""
  back = ModelConfig.from_hf(gguf_io.read_gguf_config(path))
  differences = [f"{f.name}: {getattr(config, f.name)!r} -> {getattr(back, f.name)!r}"
                 for f in dataclasses.fields(ModelConfig)
                 if f.name not in _UNCOMPARED and f.name != "rope_scaling"
                 and not _same(getattr(config, f.name), getattr(back, f.name))]
  # RoPE scaling by its effect: llama3 parameters come back as equivalent ones (gguf.llama3_scaling_of); LongRoPE
  # by both factor sets, the length that switches them and the attention factor.
  if config.position == "rope" and back.position == "rope" and not _same_rope(config, back):
    differences.append(f"rope_scaling: {config.rope_scaling!r} -> {back.rope_scaling!r} (other frequencies)")
  if differences:
    raise ValueError(f"{path}: the GGUF would describe another model than this one ({'; '.join(differences)}); "
                     "llama.cpp's metadata cannot say it, so nothing was written")
  read = tokenizer_lib.tokenizer_from_gguf(path)
  # Every added token (special or not) between spaces: their matching rules (lstrip, rstrip, ...) must survive too.
  # A SentencePiece tokenizer's added token matched in the normalized text is typed with spaces for its "▁" (that
  # text spelled with a literal "▁" is the one thing llama.cpp, matching raw text, tokenizes otherwise).
  added = [t.content.replace(tokenizer_lib.SPIECE_SPACE, " ") if sentencepiece and t.normalized else t.content
           for t in tokenizer.backend.get_added_tokens_decoder().values()]
  probes = [unicodedata.normalize("NFC", p) for p in _PROBES] + [" " + " ".join(added) + " x"]
  if tokenizer.chat_template is not None:
    probes.append(tokenizer.apply_chat_template([{"role": "user", "content": _PROBES[0]}],
                                                add_generation_prompt=True))
  for text in probes:
    for add in (False, True):
      if read.encode(text, add_special_tokens=add) != tokenizer.encode(text, add_special_tokens=add):
        raise ValueError(f"{path}: the GGUF's tokenizer encodes {text[:60]!r} (add_special_tokens={add}) "
                         "otherwise than this tokenizer; llama.cpp's vocabulary cannot describe it, so nothing was "
                         "written")
  if read.chat_template != tokenizer.chat_template:
    raise ValueError(f"{path}: the chat template did not survive the round trip")


def _same(a: Any, b: Any) -> bool:
  """Equal, floats to float32 precision (GGUF stores them so), dataclasses field by field."""
  if dataclasses.is_dataclass(a) and dataclasses.is_dataclass(b):
    return type(a) is type(b) and all(_same(getattr(a, f.name), getattr(b, f.name)) for f in dataclasses.fields(a))
  if isinstance(a, float) or isinstance(b, float):
    return a is not None and b is not None and math.isclose(a, b, rel_tol=1e-6)
  return a == b
