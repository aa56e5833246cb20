"""A SentencePiece `tokenizer.model` file (Llama 2's, Mistral's, Gemma's): its pieces, scores and types, read from
the protobuf without the sentencepiece package.

Only what tokenization needs is read: `ModelProto.pieces` (piece, score, type), `trainer_spec.model_type` and
`byte_fallback`, and `normalizer_spec` (name, add_dummy_prefix, remove_extra_whitespaces, escape_whitespaces). A BPE
model with the identity normalization (the LLM tokenizers') becomes a `jaxrlhf.models.tokenizer.sentencepiece_bpe`;
anything else (a Unigram model, NFKC normalization, collapsed whitespace) is refused naming the file and field.
"""

from __future__ import annotations

import dataclasses
import os
import pathlib
import struct
from typing import Iterator

from jaxrlhf.models.errors import ModelFileError

# sentencepiece_model.proto: ModelProto fields, SentencePiece.Type and TrainerSpec.ModelType values.
_PIECES, _TRAINER_SPEC, _NORMALIZER_SPEC = 1, 2, 3
_MODEL_TYPES = {1: "UNIGRAM", 2: "BPE", 3: "WORD", 4: "CHAR"}
_VARINT, _FIXED64, _LENGTH, _FIXED32 = 0, 1, 2, 5


@dataclasses.dataclass(frozen=True)
class SentencePieceModel:
  """What a tokenizer.model says about tokenization.

  Attributes:
    pieces, scores, types: one entry per id; types are SentencePiece's (1 normal, 2 unknown, 3 control,
      4 user-defined, 5 unused, 6 byte), which llama.cpp's token types copy.
    model_type: "BPE", "UNIGRAM", ...
    byte_fallback: unknown characters become byte pieces.
    normalizer: the normalization rule's name ("identity" for the LLM tokenizers).
    add_dummy_prefix, remove_extra_whitespaces, escape_whitespaces: the normalizer switches.
  """
  pieces: tuple[str, ...]
  scores: tuple[float, ...]
  types: tuple[int, ...]
  model_type: str
  byte_fallback: bool
  normalizer: str
  add_dummy_prefix: bool
  remove_extra_whitespaces: bool
  escape_whitespaces: bool


def read_sentencepiece_model(path: str | os.PathLike) -> SentencePieceModel:
  """Parses `path` (a serialized ModelProto).

  Raises:
    ModelFileError: the bytes are not a well-formed ModelProto (truncated, a bad wire type, a piece without text);
      the message names the file and where it broke.
  """
  path = pathlib.Path(path)
  data = path.read_bytes()
  pieces, scores, types = [], [], []
  trainer, normalizer = {}, {}
  try:
    for field, value in _fields(data):
      if field == _PIECES:
        piece = dict(_fields(value))
        if 1 not in piece:
          raise ValueError(f"piece {len(pieces)} has no text")
        pieces.append(piece[1].decode("utf-8"))
        scores.append(struct.unpack("<f", struct.pack("<I", piece.get(2, 0)))[0])
        types.append(piece.get(3, 1))
      elif field == _TRAINER_SPEC:
        trainer = dict(_fields(value))
      elif field == _NORMALIZER_SPEC:
        normalizer = dict(_fields(value))
  except (ValueError, UnicodeDecodeError) as e:
    raise ModelFileError(path, f"malformed SentencePiece model ({e})") from e
  if not pieces:
    raise ModelFileError(path, "a SentencePiece model without pieces")
  return SentencePieceModel(
      pieces=tuple(pieces), scores=tuple(scores), types=tuple(types),
      model_type=_MODEL_TYPES.get(trainer.get(3, 1), f"type {trainer.get(3)}"),
      byte_fallback=bool(trainer.get(35, 0)),
      normalizer=normalizer.get(1, b"nmt_nfkc").decode("utf-8", "replace"),
      add_dummy_prefix=bool(normalizer.get(3, 1)), remove_extra_whitespaces=bool(normalizer.get(4, 1)),
      escape_whitespaces=bool(normalizer.get(5, 1)))


def _fields(data: bytes) -> Iterator[tuple[int, int | bytes]]:
  """(field number, value) of each field of one protobuf message: varints and fixed32 / fixed64 as ints,
  length-delimited fields as bytes."""
  pos = 0
  while pos < len(data):
    key, pos = _varint(data, pos)
    field, wire = key >> 3, key & 7
    if wire == _VARINT:
      value, pos = _varint(data, pos)
    elif wire in (_FIXED32, _FIXED64):
      size = 4 if wire == _FIXED32 else 8
      if pos + size > len(data):
        raise ValueError(f"field {field} runs past the end at byte {pos}")
      value, pos = int.from_bytes(data[pos:pos + size], "little"), pos + size
    elif wire == _LENGTH:
      size, pos = _varint(data, pos)
      if pos + size > len(data):
        raise ValueError(f"field {field} of {size} bytes runs past the end at byte {pos}")
      value, pos = data[pos:pos + size], pos + size
    else:
      raise ValueError(f"field {field} has wire type {wire} at byte {pos}")
    yield field, value


def _varint(data: bytes, pos: int) -> tuple[int, int]:
  value, shift = 0, 0
  while True:
    if pos >= len(data) or shift > 63:
      raise ValueError(f"a varint runs past the end at byte {pos}")
    byte = data[pos]
    value |= (byte & 0x7F) << shift
    pos, shift = pos + 1, shift + 7
    if not byte & 0x80:
      return value, pos
