"""Fetches llama.cpp's tokenizer test vocabularies into tests/assets/llama.cpp/ (ignored by git).

llama.cpp checks its tokenizers against vocabulary-only GGUF files of real models with a set of test texts and the
token ids the models' own tokenizers give (`models/ggml-vocab-<name>.gguf`, `.gguf.inp`, `.gguf.out`; its
tests/test-tokenizer-0). The llama-cpp-python source distribution on PyPI carries that folder; this script downloads
it (about 76 MB, pinned) and keeps the vocabularies our GGUF reader supports (about 20 MB) and llama.cpp's license.
tests/models/test_llama_cpp_vocabs.py uses them. Idempotent: files already present are not fetched again.

    python tests/assets/llama_cpp_vocabs.py
"""

from __future__ import annotations

import pathlib
import subprocess
import sys
import tarfile
import tempfile

VERSION = "0.3.36"  # llama-cpp-python, which vendors llama.cpp with its models/ folder
# Two SentencePiece vocabularies (Llama 2's, Phi-3's) and seven byte-level BPE ones, one per pre-tokenizer we read.
NAMES = ("llama-spm", "phi-3", "llama-bpe", "qwen2", "gpt-2", "starcoder", "refact", "deepseek-llm", "deepseek-coder")
DEST = pathlib.Path(__file__).resolve().parent / "llama.cpp"
SUFFIXES = (".gguf", ".gguf.inp", ".gguf.out")


def wanted() -> list[str]:
  """The file names kept: each vocabulary with its inputs and outputs, and llama.cpp's LICENSE."""
  return [f"ggml-vocab-{name}{suffix}" for name in NAMES for suffix in SUFFIXES] + ["LICENSE"]


def main() -> None:
  missing = [name for name in wanted() if not (DEST / name).exists()]
  if not missing:
    print(f"llama.cpp test vocabularies: all {len(wanted())} files present in {DEST}")
    return
  with tempfile.TemporaryDirectory() as tmp:
    subprocess.run([sys.executable, "-m", "pip", "download", f"llama-cpp-python=={VERSION}", "--no-deps",
                    "--no-binary", ":all:", "--quiet", "--dest", tmp], check=True)
    sdist = next(pathlib.Path(tmp).glob("llama_cpp_python-*.tar.gz"))
    prefix = f"llama_cpp_python-{VERSION}/vendor/llama.cpp/"
    members = {f"{prefix}models/{name}" if name != "LICENSE" else f"{prefix}LICENSE": name for name in missing}
    DEST.mkdir(parents=True, exist_ok=True)
    with tarfile.open(sdist) as tar:
      for member in tar:
        name = members.pop(member.name, None)
        if name is not None and member.isfile():
          source = tar.extractfile(member)
          (DEST / (name + ".part")).write_bytes(source.read())
          (DEST / (name + ".part")).rename(DEST / name)
    if members:
      raise SystemExit(f"{sdist.name} lacks {sorted(members)}")
  print(f"llama.cpp test vocabularies: {len(missing)} files written to {DEST}")


if __name__ == "__main__":
  main()
