"""Exports a trained policy (or any checkpoint `from_pretrained` reads) as one .gguf file for llama.cpp, ollama or
LM Studio.

    python -m experiments.export_gguf --model runs/smollm2_hh/dpo/policy --out smollm2_dpo.gguf --type q8_0

--model is a Hugging Face folder (a stage's saved policy holds its tokenizer) or a .gguf file; --tokenizer defaults
to it. --type is the storage of the matrices: f16 (llama.cpp's default), bf16, q8_0 or f32. The file is read back
before the command returns: its model config and its tokenization of probe texts equal the source's, or the file is
removed and the difference named (`jaxrlhf.models.gguf_export`).
"""

from __future__ import annotations

import argparse
import sys

from jaxrlhf.models import from_pretrained, load_tokenizer
from jaxrlhf.models.gguf_export import TENSOR_TYPES, save_gguf


def parse_args(argv: list[str] | None) -> argparse.Namespace:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--model", required=True, help="a Hugging Face folder (a stage's policy) or a .gguf file")
  parser.add_argument("--out", required=True, help="the .gguf file to write")
  parser.add_argument("--tokenizer", default="", help="a tokenizer folder or .gguf (default: --model's)")
  parser.add_argument("--type", default="f16", choices=sorted(TENSOR_TYPES), help="storage of the matrices")
  parser.add_argument("--name", default=None, help="general.name (default: the file's stem)")
  return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> str:
  """Runs the export; returns the written path. A source without a tokenizer exits with a message naming
  --tokenizer."""
  args = parse_args(argv)
  if not args.out.endswith(".gguf"):
    sys.exit(f"--out: {args.out!r} should end in .gguf")
  try:
    tokenizer = load_tokenizer(args.tokenizer or args.model)
  except ValueError as e:
    sys.exit(f"--tokenizer: {e} (a policy trained on the synthetic world has no real vocabulary to export; give "
             "--tokenizer for a folder saved without one)")
  model, config = from_pretrained(args.model)
  return save_gguf(model, args.out, tokenizer, config=config, tensor_type=args.type, name=args.name)


if __name__ == "__main__":
  main()
