"""llama.cpp's own tokenizer tests on real vocabularies (tests/assets/llama_cpp_vocabs.py fetches them): Llama 2's
and Phi-3's SentencePiece vocabularies and the byte-level BPE ones of Llama 3, Qwen2, GPT-2, StarCoder and Refact,
each with llama.cpp's 46 test texts and the ids the model's own tokenizer gives (what llama.cpp's
tests/test-tokenizer-0 checks). Our GGUF tokenizer must give those ids and decode them back to the text; an exported
vocabulary must give them again.
"""

import gguf
import pytest
from flax import nnx

from jaxrlhf.models import CausalLM, ModelConfig, load_tokenizer
from jaxrlhf.models import gguf as gguf_io
from jaxrlhf.models.gguf_export import save_gguf

SEPARATOR = "\n__ggml_vocab_test__\n"
NAMES = ("llama-spm", "phi-3", "llama-bpe", "qwen2", "gpt-2", "starcoder", "refact", "deepseek-llm", "deepseek-coder")


def _cases(folder, name):
  """(text, ids) pairs, read as test-tokenizer-0 reads them: texts split on the separator (a trailing one ends the
  list), one line of space-separated ids per text."""
  texts = (folder / f"ggml-vocab-{name}.gguf.inp").read_text(encoding="utf-8").split(SEPARATOR)
  if texts and texts[-1] == "":
    texts.pop()
  lines = (folder / f"ggml-vocab-{name}.gguf.out").read_text(encoding="utf-8").splitlines()
  assert len(texts) == len(lines) == 46
  return [(text, [int(i) for i in line.split()]) for text, line in zip(texts, lines)]


@pytest.mark.parametrize("name", NAMES)
def test_our_gguf_tokenizer_gives_llama_cpps_ids(llama_cpp_vocabs, name):
  tokenizer = load_tokenizer(llama_cpp_vocabs / f"ggml-vocab-{name}.gguf")
  for text, ids in _cases(llama_cpp_vocabs, name):
    assert tokenizer.encode(text) == ids, text
    assert tokenizer.decode(ids) == text, text  # lossless, leading spaces and byte-fallback runs included


@pytest.mark.parametrize("name", ["llama-spm", "llama-bpe", "qwen2", "starcoder", "deepseek-llm", "deepseek-coder"])
def test_exported_vocabulary_gives_the_same_ids(llama_cpp_vocabs, tmp_path, name):
  """The vocabulary written back by the GGUF export (a model of the file's vocabulary size) tokenizes llama.cpp's
  texts as before; for Llama 2's SentencePiece vocabulary the pieces and types are the file's, and the scores we
  derive from the merges keep the merge order of the file's scores."""
  source_path = llama_cpp_vocabs / f"ggml-vocab-{name}.gguf"
  source_meta = gguf_io.read_metadata(source_path)
  tokenizer = load_tokenizer(source_path)
  vocab_size = len(source_meta["tokenizer.ggml.tokens"])
  model = CausalLM(ModelConfig(vocab_size=vocab_size, embed_dim=8, num_layers=1, num_heads=1, num_kv_heads=1,
                               head_dim=8, mlp_dim=8), rngs=nnx.Rngs(0))
  out = save_gguf(model, tmp_path / "m.gguf", tokenizer, tensor_type="f16")
  back = load_tokenizer(out)
  for text, ids in _cases(llama_cpp_vocabs, name):
    assert back.encode(text) == ids, text
  meta = gguf_io.read_metadata(out)
  assert meta["tokenizer.ggml.model"] == source_meta["tokenizer.ggml.model"]
  if name != "starcoder":  # written as "smollm", llama.cpp's other name for the same split
    assert meta["tokenizer.ggml.pre"] == source_meta["tokenizer.ggml.pre"]
  if name == "llama-spm":
    assert meta["tokenizer.ggml.tokens"] == source_meta["tokenizer.ggml.tokens"]
    assert meta["tokenizer.ggml.token_type"] == source_meta["tokenizer.ggml.token_type"]
    # Every piece of two or more characters is made by merges: in the file's score order, ours descend. (The 15
    # whitespace runs "▁▁".."▁▁▁▁▁▁▁▁▁▁▁▁▁▁▁▁" share one score, -1e9, and get distinct ones from their merges.)
    scores = source_meta["tokenizer.ggml.scores"]
    normal = [i for i, kind in enumerate(source_meta["tokenizer.ggml.token_type"])
              if kind == gguf.TokenType.NORMAL and len(source_meta["tokenizer.ggml.tokens"][i]) > 1]
    distinct = [i for i in normal if scores[i] > -1e9]
    order = sorted(distinct, key=lambda i: -scores[i])
    exported = [meta["tokenizer.ggml.scores"][i] for i in order]
    assert (len(normal), len(distinct)) == (29612, 29597) and exported == sorted(exported, reverse=True)
