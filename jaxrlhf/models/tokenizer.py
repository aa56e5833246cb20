"""Tokenizers for real checkpoints: a HF tokenizer folder or the vocabulary embedded in a GGUF file.

`Tokenizer` implements the tokenizer protocol of docs/design.md on top of the `tokenizers` library, plus the
model's chat template (rendered by `jaxrlhf.models.chat`). `load_tokenizer(path)` builds one from
  * a HF folder: `tokenizer.json` + `tokenizer_config.json` (special tokens, `chat_template`; a
    `chat_template.jinja` file, as transformers now saves it, takes precedence); a folder with only a SentencePiece
    `tokenizer.model` (Llama 2's original release) is read as the SentencePiece vocabulary below, or
  * a `.gguf` file with a byte-level BPE vocabulary (`tokenizer.ggml.model` "gpt2"), rebuilt the way
    transformers' GGUF converter does: vocabulary + merges, byte-level pre-tokenizer with the split regex named
    by `tokenizer.ggml.pre`, control tokens as special tokens, user-defined tokens as added tokens (both by the raw
    text llama.cpp's converter writes for them, keeping their ids). Where that converter departs from llama.cpp
    and the model's own tokenizer.json, llama.cpp is followed: "smollm" / "starcoder" / "refact" split digits
    first, and the llama3 group ("llama-bpe", ...) takes a pre-token that is in the vocabulary whole before
    merging and adds BOS when the file does not say.
  * a `.gguf` file with a SentencePiece vocabulary (`tokenizer.ggml.model` "llama": Llama 2, Mistral up to v0.3,
    TinyLlama, Gemma), tokenized as llama.cpp does: spaces become "▁" (one is prepended to each text run unless
    `tokenizer.ggml.add_space_prefix` is false), then adjacent pieces merge while their concatenation is in the
    vocabulary, highest `tokenizer.ggml.scores` first; a character outside the vocabulary falls back to its UTF-8
    byte tokens ("<0x41>"). That is a BPE over merges ranked by score, which is how it is built here.
"""

from __future__ import annotations

import functools
import json
import os
import pathlib
from typing import Any, Mapping, Sequence

import tokenizers
from tokenizers import AddedToken, Regex, decoders, models, normalizers, pre_tokenizers, processors

from jaxrlhf.models import chat
from jaxrlhf.models import errors
from jaxrlhf.models import gguf as gguf_io
from jaxrlhf.models.errors import ModelFileError

# llama.cpp token types (tokenizer.ggml.token_type).
_NORMAL = 1
_UNKNOWN = 2
_CONTROL = 3
_USER_DEFINED = 4
_BYTE = 6
SPIECE_SPACE = "\u2581"  # "▁", SentencePiece's spelling of a space.

_LLAMA3_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
_QWEN2_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
# tokenizer.ggml.pre -> split regex applied before the byte-level mapping (as in transformers' GGUF converter).
PRE_TOKENIZER_SPLITS = {
    "llama3": _LLAMA3_SPLIT, "llama-v3": _LLAMA3_SPLIT, "llama-bpe": _LLAMA3_SPLIT,
    "smaug-bpe": _LLAMA3_SPLIT, "dbrx": _LLAMA3_SPLIT, "falcon3": _LLAMA3_SPLIT,
    "qwen2": _QWEN2_SPLIT, "deepseek-r1-qwen": _QWEN2_SPLIT,
}
# Pre-tokenizers that split with several regexes in turn (each splits the previous one's pieces, keeping the text
# between matches as pieces too), as llama.cpp's llm_tokenizer_bpe lists them; then the byte-level mapping.
# (Characters that Unicode normalization would change are escaped, so no editor turns them into others.)
_DEEPSEEK_LETTERS = (
    "A-Za-zµÀ-ÖØ-öø-ƺƼ-ƿǄ-ʓʕ-ʯͰ-ͳͶͷͻ-ͽͿΆΈ-ΊΌΎ-ΡΣ-ϵϷ-ҁҊ-ԯԱ-ՖႠ-ჅᎠ-Ᏽᏸ-ᏽᲐ-ᲺᲽ-Ჿᴀ-ᴫᵫ-ᵷᵹ-ᶚḀ-ἕἘ-Ἕἠ-ὅὈ-Ὅὐ-ὗὙὛ"
    "ὝὟ-\u1f7dᾀ-ᾴᾶ-ᾼ\u1fbeῂ-ῄῆ-ῌῐ-\u1fd3ῖ-\u1fdbῠ-Ῥῲ-ῴῶ-ῼℂℇℊ-ℓℕℙ-ℝℤ\u2126ℨ\u212a-ℭℯ-ℴℹℼ-ℿⅅ-ⅉⅎↃↄⰀ-ⱻⱾ-ⳤ"
    "Ⳬ-ⳮⳲⳳꙀ-ꙭꚀ-ꚛꜢ-ꝯꝱ-ꞇꞋ-ꞎꭰ-ꮿﬀ-ﬆﬓ-ﬗＡ-Ｚａ-ｚ𐐀-𐑏𐒰-𐓓𐓘-𐓻𐲀-𐲲𐳀-𐳲𑢠-𑣟𞤀-𞥃")
MULTI_SPLITS = {
    "deepseek-llm": ("[\r\n]", rf"\s?[{_DEEPSEEK_LETTERS}]+", r"\s?[!-/:-~！-／：-～‘-‟　-。]+", r"\s+$",
                     "[一-龥ࠀ-一가-퟿]+", r"\p{N}+"),
    "deepseek-coder": ("[\r\n]", r"\s?\p{L}+", r"\s?\p{P}+", "[一-龥ࠀ-一가-퟿]+", r"\p{N}"),
}
# llama.cpp's LLAMA3 pre-tokenizer group: a pre-token that is itself in the vocabulary is taken whole before any merge
# (Llama 3's tokenizer.json sets the BPE model's `ignore_merges`; e.g. " Việt" is one token there, three by merges),
# and BOS is added when the file has no tokenizer.ggml.add_bos_token.
_LLAMA3_PRE = frozenset({"llama3", "llama-v3", "llama-bpe", "falcon3"})
# Pre-tokenizers that put every digit on its own (StarCoder-style vocabularies such as SmolLM2), as in the
# models' own tokenizer.json and llama.cpp; then GPT-2's byte-level regex.
_DIGIT_SPLIT_PRE = frozenset({"smollm", "starcoder", "refact"})
# Pre-tokenizers that are GPT-2's byte-level regex as is ("default" is what llama.cpp assumes when unset).
_GPT2_PRE = frozenset({"default", "gpt2", "gpt-2"})


class Tokenizer:
  """A text tokenizer with special-token ids and a chat template (the protocol in docs/design.md).

  Attributes:
    vocab_size: number of token ids, added tokens included.
    bos_id: beginning-of-sequence id, or None if the vocabulary has none.
    eos_id: end-of-sequence id (for chat models, the end-of-turn token).
    pad_id: padding id (falls back to eos_id when the checkpoint defines none).
    chat_template: the Jinja chat template source, or None.
  """

  def __init__(self, backend: tokenizers.Tokenizer, *, eos_token: str, bos_token: str | None = None,
               pad_token: str | None = None, unk_token: str | None = None, chat_template: str | None = None):
    """Wraps a `tokenizers.Tokenizer`.

    Args:
      backend: the tokenizer; its post-processor decides what `add_special_tokens=True` adds. Truncation and
        padding settings it carries (a tokenizer.json may) are switched off: `encode` returns every token, as
        transformers' `encode` does unless asked; the data pipeline's truncation policy owns lengths.
      eos_token, bos_token, pad_token, unk_token: special token strings (must be in the vocabulary).
      chat_template: Jinja chat template source.
    """
    # A saved tokenizer.json may carry truncation / padding, which would silently cut or pad every encode.
    backend.no_truncation()
    backend.no_padding()
    self.backend = backend
    self.chat_template = chat_template
    self._special_tokens = {"bos_token": bos_token, "eos_token": eos_token, "unk_token": unk_token,
                            "pad_token": pad_token}
    self.eos_id = self._token_id("eos_token", eos_token)
    self.bos_id = None if bos_token is None else self._token_id("bos_token", bos_token)
    self.pad_id = self.eos_id if pad_token is None else self._token_id("pad_token", pad_token)
    self.vocab_size = backend.get_vocab_size(with_added_tokens=True)

  def _token_id(self, name: str, token: str) -> int:
    token_id = self.backend.token_to_id(token)
    if token_id is None:
      raise ValueError(f"{name} {token!r} is not in the vocabulary")
    return token_id

  def encode(self, text: str, add_special_tokens: bool = False) -> list[int]:
    """Token ids of `text`; special-token strings in it map to their ids.

    `add_special_tokens=True` adds what the checkpoint asks for (e.g. BOS when `add_bos_token` is set).
    """
    return self.backend.encode(text, add_special_tokens=add_special_tokens).ids

  def decode(self, ids: Sequence[int], skip_special_tokens: bool = True) -> str:
    """Text of token ids (`ids` may be any int sequence, e.g. a numpy row)."""
    return self.backend.decode([int(i) for i in ids], skip_special_tokens=skip_special_tokens)

  def apply_chat_template(self, messages: Sequence[Mapping[str, Any]], add_generation_prompt: bool = False,
                          tools: Sequence[Mapping[str, Any]] | None = None, **template_kwargs: Any) -> str:
    """Renders chat messages ({"role", "content"} dicts, with `tool_calls` etc. where the template reads them) and
    optional tool schemas with the model's template; `template_kwargs` are more template variables (e.g.
    enable_thinking=False), as in transformers. Returns text."""
    if self.chat_template is None:
      raise ValueError("this tokenizer has no chat_template")
    return chat.render_chat(self.chat_template, messages, add_generation_prompt=add_generation_prompt,
                            special_tokens=self._special_tokens, tools=tools, template_kwargs=template_kwargs)

  def with_chat_template(self, chat_template: str) -> "Tokenizer":
    """The same tokenizer with another chat template (Jinja source; compiled here, so a syntax error raises
    jinja2.TemplateSyntaxError now rather than at the first chat)."""
    chat.compile_chat_template(chat_template)
    return Tokenizer(self.backend, chat_template=chat_template, **self._special_tokens)

  def with_template_defaults(self, defaults: Mapping[str, Any]) -> "Tokenizer":
    """The same tokenizer whose chat template renders as if every call passed `defaults` (chat template arguments,
    e.g. {"enable_thinking": False}) unless the call passes its own (`chat.template_with_defaults`); the saved
    tokenizer carries them. No defaults: this tokenizer.

    Raises:
      ValueError: no chat template, or arguments that are not variable names with JSON values.
    """
    if not defaults:
      return self
    if self.chat_template is None:
      raise ValueError("this tokenizer has no chat_template for the chat template arguments to apply to")
    return self.with_chat_template(chat.template_with_defaults(self.chat_template, defaults))

  def save_pretrained(self, folder: str | os.PathLike) -> None:
    """Writes tokenizer.json + tokenizer_config.json (special tokens, chat template) into `folder`, the layout
    `load_tokenizer` and transformers' `AutoTokenizer` read back, so a saved policy folder is self-contained."""
    folder = pathlib.Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    self.backend.save(str(folder / "tokenizer.json"))
    config = {name: token for name, token in self._special_tokens.items() if token is not None}
    config["tokenizer_class"] = "PreTrainedTokenizerFast"
    if self.chat_template is not None:
      config["chat_template"] = self.chat_template
    with (folder / "tokenizer_config.json").open("w", encoding="utf-8") as f:
      json.dump(config, f, indent=2, ensure_ascii=False)

  @property
  def special_tokens(self) -> dict[str, str | None]:
    """{"bos_token", "eos_token", "unk_token", "pad_token": the token string or None} (a copy)."""
    return dict(self._special_tokens)

  @functools.cached_property
  def supports_system_role(self) -> bool:
    """False when the template rejects or drops a system message (or there is no template)."""
    if self.chat_template is None:
      return False
    return chat.template_supports_system_role(self.chat_template, self._special_tokens)


def load_tokenizer(path: str | os.PathLike) -> Tokenizer:
  """Loads the tokenizer of a checkpoint.

  Args:
    path: a HF tokenizer/model folder (tokenizer.json + tokenizer_config.json) or a `.gguf` file.

  Returns:
    A `Tokenizer`.

  Raises:
    ModelFileError (a ValueError): a tokenizer file is malformed (truncated, bad JSON, wrongly typed fields,
      a bogus GGUF header) or lacks required fields; the message names the file.
    ValueError: the path is neither a .gguf file nor a folder, or the folder has no tokenizer.json.
  """
  path = pathlib.Path(path)
  if path.is_file() and path.suffix == ".gguf":
    return tokenizer_from_gguf(path)
  if path.is_dir():
    return tokenizer_from_hf_folder(path)
  raise ValueError(f"path {str(path)!r} is neither a .gguf file nor a tokenizer folder")


@errors.reads_file("tokenizer folder")
def tokenizer_from_hf_folder(folder: str | os.PathLike) -> Tokenizer:
  """A `Tokenizer` from a transformers-saved folder (tokenizer.json, tokenizer_config.json, ...)."""
  folder = pathlib.Path(folder)
  tokenizer_file, model_file = folder / "tokenizer.json", folder / "tokenizer.model"
  config = _read_json(folder / "tokenizer_config.json")
  # Older checkpoints keep the special tokens in special_tokens_map.json; tokenizer_config.json wins.
  special = {**_read_json(folder / "special_tokens_map.json"), **config}
  tokens = {name: _token_content(special.get(name)) for name in ("bos_token", "eos_token", "pad_token",
                                                                  "unk_token")}
  if tokenizer_file.exists():
    try:
      backend = tokenizers.Tokenizer.from_file(str(tokenizer_file))
    except Exception as e:  # pylint: disable=broad-exception-caught
      # The tokenizers library raises a bare Exception for any malformed file.
      raise ModelFileError(tokenizer_file, f"malformed tokenizer.json ({str(e).strip()[:500]})") from e
  elif model_file.exists():
    backend = _sentencepiece_file_backend(model_file, config, tokens)
  else:
    raise ValueError(f"tokenizer folder {str(folder)!r} has no tokenizer.json (nor a SentencePiece tokenizer.model)")
  if tokens["eos_token"] is None:
    raise ValueError(f"{str(folder)!r}: tokenizer_config.json has no eos_token")
  return Tokenizer(backend, chat_template=_hf_chat_template(folder, config), **tokens)


def _sentencepiece_file_backend(path: pathlib.Path, config: Mapping[str, Any],
                                tokens: dict[str, str | None]) -> tokenizers.Tokenizer:
  """The backend of a folder that has only a SentencePiece tokenizer.model (as Llama 2's original release): its BPE
  pieces and scores tokenized as sentencepiece does (`sentencepiece_bpe`), BOS / EOS added as tokenizer_config.json's
  add_bos_token / add_eos_token say (LlamaTokenizer's defaults: BOS only). Special tokens the config leaves unset
  default to the model's <s>, </s> and <unk> pieces (in `tokens`, updated in place).

  Raises:
    ModelFileError naming the file and field: not a BPE model, or a normalization other than sentencepiece's
      identity rule with escaped, uncollapsed whitespace (what the LLM tokenizers use).
  """
  from jaxrlhf.models.sentencepiece_model import read_sentencepiece_model  # pylint: disable=g-import-not-at-top
  model = read_sentencepiece_model(path)
  if model.model_type != "BPE":
    raise ModelFileError(path, f"trainer_spec.model_type is {model.model_type}; only BPE SentencePiece models "
                         "(Llama 2, Mistral, Gemma) are read")
  for field, value, expected in (("normalizer_spec.name", model.normalizer, "identity"),
                                 ("normalizer_spec.remove_extra_whitespaces", model.remove_extra_whitespaces, False),
                                 ("normalizer_spec.escape_whitespaces", model.escape_whitespaces, True)):
    if value != expected:
      raise ModelFileError(path, f"{field} is {value!r}; only {expected!r} is supported (the text normalization "
                           "LLM tokenizers use)")
  backend = sentencepiece_bpe(model.pieces, model.scores, model.types, add_space_prefix=model.add_dummy_prefix)
  for name, piece in (("bos_token", "<s>"), ("eos_token", "</s>"), ("unk_token", "<unk>")):
    if tokens[name] is None and piece in model.pieces:
      tokens[name] = piece
  add_bos, add_eos = bool(config.get("add_bos_token", True)), bool(config.get("add_eos_token", False))
  backend.post_processor = _special_tokens_processor(tokens["bos_token"] if add_bos else None,
                                                     tokens["eos_token"] if add_eos else None, backend)
  return backend


@errors.reads_file("GGUF tokenizer")
def tokenizer_from_gguf(path: str | os.PathLike) -> Tokenizer:
  """A `Tokenizer` from the vocabulary (byte-level BPE or SentencePiece), special ids and chat template stored in a
  GGUF file."""
  metadata = gguf_io.read_metadata(path)
  model_type = metadata.get("tokenizer.ggml.model")
  if model_type not in ("gpt2", "llama"):
    raise ValueError(f"unsupported GGUF tokenizer.ggml.model {model_type!r}; supported: 'gpt2' (byte-level BPE), "
                     "'llama' (SentencePiece)")
  sentencepiece = model_type == "llama"
  required = ("tokenizer.ggml.tokens", "tokenizer.ggml.scores") if sentencepiece else (
      "tokenizer.ggml.tokens", "tokenizer.ggml.merges", "tokenizer.ggml.eos_token_id")
  for key in required:
    if key not in metadata:
      raise ValueError(f"GGUF metadata field {key!r} is missing")
  tokens = list(metadata["tokenizer.ggml.tokens"])
  token_types = list(metadata.get("tokenizer.ggml.token_type", [_NORMAL] * len(tokens)))
  if sentencepiece:
    backend = sentencepiece_bpe(tokens, metadata["tokenizer.ggml.scores"], token_types,
                                add_space_prefix=metadata.get("tokenizer.ggml.add_space_prefix", True),
                                unk_id=metadata.get("tokenizer.ggml.unknown_token_id", 0))
  else:
    backend = byte_level_bpe(tokens, metadata["tokenizer.ggml.merges"], token_types,
                             metadata.get("tokenizer.ggml.pre", "default"))
  # llama.cpp's defaults where a SentencePiece file says nothing: <unk> 0, <s> 1, </s> 2, BOS added.
  defaults = {"unknown_token_id": 0, "bos_token_id": 1, "eos_token_id": 2} if sentencepiece else {}

  def special(key: str) -> str | None:
    token_id = metadata.get(f"tokenizer.ggml.{key}", defaults.get(key))
    if token_id is None:
      return None
    if not 0 <= token_id < len(tokens):
      raise ValueError(f"GGUF tokenizer.ggml.{key} {token_id} is outside the vocabulary [0, {len(tokens)})")
    return tokens[token_id]

  bos_token, eos_token = special("bos_token_id"), special("eos_token_id")
  add_bos = metadata.get("tokenizer.ggml.add_bos_token",
                         sentencepiece or metadata.get("tokenizer.ggml.pre") in _LLAMA3_PRE)
  backend.post_processor = _special_tokens_processor(
      bos_token if add_bos else None,
      eos_token if metadata.get("tokenizer.ggml.add_eos_token", False) else None, backend)
  chat_template = metadata.get("tokenizer.chat_template")
  if chat_template is not None and not isinstance(chat_template, str):
    raise ValueError(f"GGUF tokenizer.chat_template is {type(chat_template).__name__}, expected a string")
  return Tokenizer(backend, bos_token=bos_token, eos_token=eos_token, pad_token=special("padding_token_id"),
                   unk_token=special("unknown_token_id"), chat_template=chat_template)


def sentencepiece_bpe(tokens: Sequence[str], scores: Sequence[float], token_types: Sequence[int],
                      add_space_prefix: bool = True, unk_id: int | None = None) -> tokenizers.Tokenizer:
  """A `tokenizers.Tokenizer` that tokenizes as llama.cpp does a SentencePiece (`tokenizer.ggml.model` "llama")
  vocabulary.

  llama.cpp (like SentencePiece's BPE) writes spaces as "▁", starts from single characters and repeatedly merges
  the adjacent pair whose concatenation is a token of the highest score (the leftmost on ties); a character that is
  no token becomes its UTF-8 byte tokens "<0xXX>". The same result comes from a BPE whose merges are every split of
  every token into two tokens, ranked by the whole token's score, with byte fallback. (One departure: where two
  different tokens tie in score, as Llama 2's whitespace runs do, llama.cpp merges the leftmost pair and this BPE the
  pair of lower piece ids; on llama.cpp's own tokenizer tests, whitespace runs included, the ids are the same.)

  Args:
    tokens: token strings in id order ("▁" for spaces; user-defined tokens, which llama.cpp's converter writes
      with plain spaces, and control tokens as raw text).
    scores: one float per token: a higher score merges first.
    token_types: llama.cpp token types (2 unknown, 3 control -> special tokens; 4 user-defined -> added tokens;
      6 byte; 1 normal, 5 unused -> plain vocabulary).
    add_space_prefix: prepend "▁" to each run of text (the file's `tokenizer.ggml.add_space_prefix`; llama.cpp,
      like SentencePiece's dummy prefix, starts each run between special tokens with one).
    unk_id: the unknown token's id (the file's `tokenizer.ggml.unknown_token_id`, llama.cpp's default 0), taken
      for a character neither in the vocabulary nor spelled by byte tokens; None: the token of type unknown.

  Raises:
    ValueError: inconsistent lengths, a repeated token, an unknown id outside the vocabulary, or neither an unknown
      token nor all 256 byte tokens (text outside the vocabulary would be dropped).
  """
  for name, values in (("scores", scores), ("token_type", token_types)):
    if len(values) != len(tokens):
      raise ValueError(f"tokenizer.ggml.{name} has {len(values)} entries, expected {len(tokens)}")
  vocab: dict[str, int] = {}
  for index, token in enumerate(tokens):
    if token in vocab:
      raise ValueError(f"tokenizer.ggml.tokens[{index}] = {token!r} repeats token {vocab[token]}")
    vocab[token] = index
  if unk_id is not None and not 0 <= unk_id < len(tokens):
    raise ValueError(f"tokenizer.ggml.unknown_token_id {unk_id} is outside the vocabulary [0, {len(tokens)})")
  unknown = tokens[unk_id] if unk_id is not None else next(
      (token for token, kind in zip(tokens, token_types) if kind == _UNKNOWN), None)
  if unknown is None and not all(f"<0x{b:02X}>" in vocab for b in range(256)):
    raise ValueError("tokenizer.ggml: no unknown token and not all 256 byte tokens, so text outside the vocabulary "
                     "would be dropped")
  whole = (_CONTROL, _USER_DEFINED, _UNKNOWN, _BYTE)  # Never the result of a merge: matched whole or bytes.
  candidates = []
  for index, (token, kind) in enumerate(zip(tokens, token_types)):
    if kind in whole:
      continue
    for cut in range(1, len(token)):
      left, right = token[:cut], token[cut:]
      if left in vocab and right in vocab:
        candidates.append((-float(scores[index]), vocab[left], vocab[right], left, right))
  # Highest score first; among splits of one token (equal scores), by the pieces' ids, as transformers orders them.
  candidates.sort(key=lambda c: c[:3])
  merges = [(left, right) for *_, left, right in candidates]
  backend = tokenizers.Tokenizer(models.BPE(vocab=vocab, merges=merges, unk_token=unknown,
                                            fuse_unk=True, byte_fallback=True))
  space = [normalizers.Replace(" ", SPIECE_SPACE)]
  backend.normalizer = normalizers.Sequence(([normalizers.Prepend(SPIECE_SPACE)] if add_space_prefix else []) + space)
  backend.decoder = decoders.Sequence(
      [decoders.Replace(SPIECE_SPACE, " "), decoders.ByteFallback(), decoders.Fuse()]
      + ([decoders.Strip(" ", 1, 0)] if add_space_prefix else []))
  _add_whole_tokens(backend, tokens, token_types, special_kinds=(_CONTROL, _UNKNOWN))
  return backend


def byte_level_bpe(tokens: Sequence[str], merges: Sequence[str], token_types: Sequence[int],
                   pre_type: str = "default") -> tokenizers.Tokenizer:
  """A byte-level BPE `tokenizers.Tokenizer` from llama.cpp's vocabulary description.

  Args:
    tokens: token strings in id order, spelled in GPT-2's byte alphabet (added tokens, i.e. control and
      user-defined ones, as raw text, as llama.cpp's converter writes them).
    merges: "left right" merge rules in priority order.
    token_types: llama.cpp token types per token (3 = control -> special, 4 = user-defined -> added).
    pre_type: `tokenizer.ggml.pre`, which picks the split regex (and, for the llama3 group, whole-word lookup
      before merging, as llama.cpp and Llama 3's tokenizer.json do).

  Raises:
    ValueError: inconsistent lengths, a malformed merge, or an unknown `pre_type`.
  """
  if len(token_types) != len(tokens):
    raise ValueError(f"tokenizer.ggml.token_type has {len(token_types)} entries, expected {len(tokens)}")
  byte_chars = _bytes_to_unicode()
  alphabet = set(byte_chars.values())
  # llama.cpp's converter writes added tokens (control and user-defined) as raw text, e.g. DeepSeek's '<｜User｜>'
  # or '<｜begin▁of▁sentence｜>', outside the byte alphabet: they keep that spelling and are matched whole in the
  # text (added tokens below), as llama.cpp and the model's own tokenizer.json do. Other tokens outside the alphabet
  # are respelled byte by byte, as transformers does, to stay consistent with the byte-level pre-tokenizer.
  added = (_CONTROL, _USER_DEFINED)
  vocab = {}
  for index, (token, kind) in enumerate(zip(tokens, token_types)):
    raw = kind in added or set(token) <= alphabet
    vocab[token if raw else "".join(byte_chars[b] for b in token.encode("utf-8"))] = index
  pairs = []
  for i, merge in enumerate(merges):
    parts = merge.split(" ")
    if len(parts) != 2:
      raise ValueError(f"tokenizer.ggml.merges[{i}] = {merge!r} is not 'left right'")
    pairs.append(tuple(parts))
  try:
    backend = tokenizers.Tokenizer(models.BPE(vocab=vocab, merges=pairs, ignore_merges=pre_type in _LLAMA3_PRE))
  except Exception as e:  # pylint: disable=broad-exception-caught
    # The tokenizers library raises a bare Exception, e.g. for a merge of tokens outside the vocabulary.
    raise ValueError(f"tokenizer.ggml.tokens / merges do not form a BPE vocabulary: {e}") from e
  backend.pre_tokenizer = _pre_tokenizer(pre_type)
  backend.decoder = decoders.ByteLevel()
  _add_whole_tokens(backend, tokens, token_types, special_kinds=(_CONTROL,))
  return backend


def _add_whole_tokens(backend: tokenizers.Tokenizer, tokens: Sequence[str], token_types: Sequence[int],
                      special_kinds: tuple[int, ...]) -> None:
  """Marks the tokens llama.cpp matches whole in the raw text: those of `special_kinds` (control; SentencePiece's
  unknown too) as special tokens (skipped on decode), user-defined ones as plain added tokens (kept on decode). Both
  keep their ids, as their spelling is already in the vocabulary."""
  special = [AddedToken(t, normalized=False, special=True)
             for t, kind in zip(tokens, token_types) if kind in special_kinds]
  user_defined = [AddedToken(t, normalized=False, special=False)
                  for t, kind in zip(tokens, token_types) if kind == _USER_DEFINED]
  if special:
    backend.add_special_tokens(special)
  if user_defined:
    backend.add_tokens(user_defined)


def _pre_tokenizer(pre_type: str) -> pre_tokenizers.PreTokenizer:
  """The pre-tokenizer llama.cpp's `tokenizer.ggml.pre` names."""
  if pre_type in MULTI_SPLITS:
    return pre_tokenizers.Sequence(
        [pre_tokenizers.Split(Regex(split), behavior="isolated") for split in MULTI_SPLITS[pre_type]]
        + [pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
  split = PRE_TOKENIZER_SPLITS.get(pre_type)
  if split is not None:
    return pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(split), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
  byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
  if pre_type in _DIGIT_SPLIT_PRE:
    return pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True), byte_level])
  if pre_type in _GPT2_PRE:
    return byte_level
  # llama.cpp knows many more splits; guessing GPT-2's for them would tokenize subtly wrong.
  supported = sorted({*PRE_TOKENIZER_SPLITS, *MULTI_SPLITS, *_DIGIT_SPLIT_PRE, *_GPT2_PRE})
  raise ValueError(f"unsupported GGUF tokenizer.ggml.pre {pre_type!r}; supported: {supported}")


def _special_tokens_processor(bos_token: str | None, eos_token: str | None,
                              backend: tokenizers.Tokenizer) -> processors.PostProcessor:
  """A post-processor adding BOS and/or EOS around a sequence (identity when both are None)."""
  single, pair, specials = ["$A:0"], ["$A:0", "$B:1"], []
  if bos_token is not None:
    single, pair = [f"{bos_token}:0"] + single, [f"{bos_token}:0"] + pair
    specials.append((bos_token, backend.token_to_id(bos_token)))
  if eos_token is not None:
    single, pair = single + [f"{eos_token}:0"], pair + [f"{eos_token}:1"]
    if eos_token != bos_token:
      specials.append((eos_token, backend.token_to_id(eos_token)))
  return processors.TemplateProcessing(single=single, pair=pair, special_tokens=specials)


def _hf_chat_template(folder: pathlib.Path, config: Mapping[str, Any]) -> str | None:
  """The default chat template of a HF folder: chat_template.jinja, else tokenizer_config.json's (a string, or the
  one named "default" of a list of named templates; a list without one is a ModelFileError, as transformers refuses
  to pick)."""
  jinja_file = folder / "chat_template.jinja"
  if jinja_file.exists():
    return jinja_file.read_text(encoding="utf-8")
  template = config.get("chat_template")
  config_file = folder / "tokenizer_config.json"
  if isinstance(template, list):  # Named templates: [{"name": ..., "template": ...}, ...].
    if not all(isinstance(t, Mapping) and isinstance(t.get("name"), str) and isinstance(t.get("template"), str)
               for t in template):
      raise ModelFileError(config_file, "chat_template is a list, but not of {'name': str, 'template': str} entries")
    named = {t["name"]: t["template"] for t in template}
    if "default" not in named:
      # transformers refuses to render such a tokenizer's chats; loading it as template-less would silently turn
      # `supports_system_role` False and reformat every chat prompt.
      raise ModelFileError(config_file, f"chat_template has named templates {sorted(named)} but no 'default'")
    template = named["default"]
  if template is not None and not isinstance(template, str):
    raise ModelFileError(config_file, f"chat_template is a JSON {type(template).__name__}, expected a string or a "
                         "list of named templates")
  return template


def _token_content(token: Any) -> str | None:
  """A special token entry as a string (tokenizer configs store either a string or an AddedToken dict)."""
  if isinstance(token, Mapping):
    return token.get("content")
  return token


def _read_json(path: pathlib.Path) -> dict[str, Any]:
  """A JSON object file ({} if absent); ModelFileError naming it if it is not one."""
  if not path.exists():
    return {}
  with errors.reading(path, "JSON"), path.open(encoding="utf-8") as f:
    value = json.load(f)
  if not isinstance(value, dict):
    raise ModelFileError(path, f"expected a JSON object, got a JSON {type(value).__name__}")
  return value


@functools.lru_cache(maxsize=1)
def _bytes_to_unicode() -> dict[int, str]:
  """GPT-2's reversible byte -> printable character map (the byte-level BPE alphabet)."""
  printable = (list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
               + list(range(ord("®"), ord("ÿ") + 1)))
  chars = printable[:]
  n = 0
  for b in range(256):
    if b not in printable:
      printable.append(b)
      chars.append(256 + n)
      n += 1
  return {b: chr(c) for b, c in zip(printable, chars)}
