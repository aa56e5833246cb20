"""SentencePiece GGUF vocabularies (`tokenizer.ggml.model` "llama": Llama 2, Mistral, TinyLlama, Gemma): read as
llama.cpp tokenizes them and written back by the GGUF export.

The reference is Google's `sentencepiece` itself: a BPE model trained here (byte fallback, identity normalization,
as Llama's) is written into a GGUF the way llama.cpp's converter does (`_create_vocab_sentencepiece`: pieces, scores
and token types), and our tokenizer from that file must give sentencepiece's ids and text. Where llama.cpp departs
from sentencepiece (a space prefix for every run of text between added tokens) its rule is restated; score order and
byte fallback also have hand-traced goldens. A HF folder with only the trained tokenizer.model is read by our
protobuf reader and must tokenize as sentencepiece too.
"""

import glob
import io
import json
import pathlib

import gguf
import numpy as np
import pytest
import tokenizers
from flax import nnx

from conftest import require_module
from jaxrlhf.models import CausalLM, ModelConfig, from_pretrained, load_tokenizer
from jaxrlhf.models.gguf_export import save_gguf, tokenizer_metadata
from jaxrlhf.models.tokenizer import Tokenizer, sentencepiece_bpe

REPO = pathlib.Path(__file__).resolve().parents[2]
# Texts with none of the added tokens: words, digits (split one by one, as Llama's model does), whitespace runs and
# leading / trailing spaces, tabs and newlines, and characters the training text never had (byte fallback).
TEXTS = ["Hello world", "The year 2024 had 366 days.", "  two leading spaces", "trailing  ", "a  b   c\td",
         "line\nbreak\n\nmore", "naïve café, Việt Nam", "日本語のテキスト 東京タワー", "emoji 🤗 and 👍🏽", "", " ",
         "x=a+b*c; print(f(3))", "don't we'll I'M"]
CHAT = ("{% for m in messages %}<s>[INST] {{ m['content'] }} [/INST]{% endfor %}")


def _corpus() -> list[str]:
  text = "\n".join(pathlib.Path(f).read_text(encoding="utf-8")
                   for f in sorted(glob.glob(str(REPO / "docs" / "*.md"))) + [str(REPO / "README.md")])
  return [line for line in text.splitlines() if line.strip()]


def _train(add_dummy_prefix: bool):
  """A 1,000-piece sentencepiece BPE as Llama's: byte fallback, digits split, no normalization, one user-defined
  symbol."""
  spm = require_module("sentencepiece")
  model = io.BytesIO()
  spm.SentencePieceTrainer.train(
      sentence_iterator=iter(_corpus()), model_writer=model, model_type="bpe", vocab_size=1000, byte_fallback=True,
      normalization_rule_name="identity", remove_extra_whitespaces=False, add_dummy_prefix=add_dummy_prefix,
      user_defined_symbols=["<tool>"], split_digits=True, num_threads=1, minloglevel=2)
  return spm.SentencePieceProcessor(model_proto=model.getvalue())


def _converter_vocabulary(sp):
  """Tokens, scores and types as llama.cpp's converter writes a sentencepiece model (1 normal, 2 unknown,
  3 control, 4 user-defined, 5 unused, 6 byte)."""
  tokens, scores, types = [], [], []
  for i in range(sp.get_piece_size()):
    tokens.append(sp.id_to_piece(i))
    scores.append(sp.get_score(i))
    types.append(2 if sp.is_unknown(i) else 3 if sp.is_control(i) else 5 if sp.is_unused(i) else
                 6 if sp.is_byte(i) else 4 if tokens[-1] == "<tool>" else 1)
  return tokens, scores, types


def _write_gguf(path, sp, add_space_prefix=None, chat_template=CHAT, **overrides):
  tokens, scores, types = _converter_vocabulary(sp)
  writer = gguf.GGUFWriter(str(path), "llama")
  writer.add_tokenizer_model(overrides.pop("model", "llama"))
  writer.add_tokenizer_pre("default")
  writer.add_token_list(overrides.pop("tokens", tokens))
  if not overrides.pop("no_scores", False):
    writer.add_token_scores(overrides.pop("scores", scores))
  writer.add_token_types(types)
  writer.add_bos_token_id(sp.bos_id())
  writer.add_eos_token_id(sp.eos_id())
  writer.add_unk_token_id(sp.unk_id())
  if add_space_prefix is not None:
    writer.add_add_space_prefix(add_space_prefix)
  writer.add_chat_template(chat_template)
  writer.write_header_to_file()
  writer.write_kv_data_to_file()
  writer.close()
  return path


def _spm_gguf(tmp_path_factory, space_prefix: bool):
  sp = _train(add_dummy_prefix=space_prefix)
  path = tmp_path_factory.mktemp("spm") / "tok.gguf"
  return sp, _write_gguf(path, sp, add_space_prefix=None if space_prefix else False)


@pytest.fixture(scope="module")
def llama_style(tmp_path_factory):
  """(sentencepiece processor, its GGUF) in Llama 2's style: a space prefix (the file leaves the default)."""
  return _spm_gguf(tmp_path_factory, True)


@pytest.fixture(scope="module")
def gemma_style(tmp_path_factory):
  """The same in Gemma's style: no space prefix, which the converter writes as add_space_prefix false."""
  return _spm_gguf(tmp_path_factory, False)


@pytest.fixture(params=["llama_style", "gemma_style"])
def spm_gguf(request):
  return request.getfixturevalue(request.param)


def test_ids_and_text_equal_sentencepiece(spm_gguf):
  sp, path = spm_gguf
  ours = load_tokenizer(path)
  # (Lines that spell an added token, e.g. "`<unk>`", are the next test's: sentencepiece does not match those.)
  texts = TEXTS + [t for t in _corpus()[::7] if not any(a in t for a in ("<unk>", "<s>", "</s>", "<tool>"))]
  for text in texts:
    ids = sp.encode(text)
    assert ours.encode(text) == ids, text
    assert ours.encode(text, add_special_tokens=True) == [sp.bos_id()] + ids, text
    assert ours.decode(ids) == sp.decode(ids), text
  assert (ours.bos_id, ours.eos_id, ours.pad_id) == (sp.bos_id(), sp.eos_id(), sp.eos_id())
  assert ours.vocab_size == sp.get_piece_size()
  # Text the pieces never saw comes out as UTF-8 byte tokens, and back.
  assert [sp.id_to_piece(i) for i in ours.encode("🤗")][-4:] == ["<0xF0>", "<0x9F>", "<0xA4>", "<0x97>"]


def test_added_tokens_cut_the_text_into_runs_as_llama_cpp_does(spm_gguf):
  """llama.cpp matches control and user-defined tokens in the raw text, then tokenizes each run between them on its
  own, each with the space prefix (sentencepiece itself puts one prefix before the whole text)."""
  sp, path = spm_gguf
  ours = load_tokenizer(path)
  tool = sp.piece_to_id("<tool>")
  for left, right in (("x", "y"), ("Hello world ", " again"), ("", "tail")):
    expected = sp.encode(left) + [tool] + sp.encode(right)
    assert ours.encode(f"{left}<tool>{right}") == expected
  assert ours.encode("<s>[INST] hi [/INST]</s>") == [sp.bos_id()] + sp.encode("[INST] hi [/INST]") + [sp.eos_id()]
  chat = ours.apply_chat_template([{"role": "user", "content": "hi"}])
  assert chat == "<s>[INST] hi [/INST]"
  assert ours.decode(ours.encode(chat)) == "[INST] hi [/INST]"


def _tiny(scores, byte_tokens=False, add_space_prefix=False):
  tokens = ["<unk>", "<s>", "</s>", "a", "b", "c", "ab", "bc", "▁", "▁a"]
  types = [2, 3, 3] + [1] * 7
  if byte_tokens:
    tokens += [f"<0x{b:02X}>" for b in range(256)]
    types += [6] * 256
  base = dict(zip(tokens, [0.0] * 3 + [-100.0] * 7))
  base.update(scores)
  return Tokenizer(sentencepiece_bpe(tokens, [base.get(t, 0.0) for t in tokens], types, add_space_prefix),
                   bos_token="<s>", eos_token="</s>", unk_token="<unk>")


def test_the_higher_score_merges_first_and_unknown_characters_fall_back():
  """Hand-traced: in "abc" the pairs a+b and b+c compete; the one whose token scores higher wins, whatever the ids."""
  assert _tiny({"ab": -5.0, "bc": -1.0}).encode("abc") == [3, 7]  # a | bc
  assert _tiny({"ab": -1.0, "bc": -5.0}).encode("abc") == [6, 5]  # ab | c
  # A space prefix: "▁" + "a" merges into "▁a" (-2) before a + b (-5).
  assert _tiny({"ab": -5.0, "▁a": -2.0}, add_space_prefix=True).encode("ab") == [9, 4]
  assert _tiny({"ab": -5.0, "▁a": -9.0}, add_space_prefix=True).encode("ab") == [8, 6]
  # "é" is no token: its two UTF-8 bytes where byte tokens exist, else one <unk> for the run.
  assert _tiny({}, byte_tokens=True).encode("aé") == [3, 10 + 0xC3, 10 + 0xA9]
  assert _tiny({}).encode("aéé") == [3, 0]
  assert _tiny({}, byte_tokens=True).decode([3, 10 + 0xC3, 10 + 0xA9]) == "aé"


def test_malformed_sentencepiece_vocabularies_name_the_key(tmp_path):
  sp = _train(add_dummy_prefix=True)
  with pytest.raises(ValueError, match=r"GGUF metadata field 'tokenizer\.ggml\.scores' is missing"):
    load_tokenizer(_write_gguf(tmp_path / "a.gguf", sp, no_scores=True))
  with pytest.raises(ValueError, match=r"tokenizer\.ggml\.scores has 3 entries, expected 1000"):
    load_tokenizer(_write_gguf(tmp_path / "b.gguf", sp, scores=[0.0, 0.0, 0.0]))
  tokens = _converter_vocabulary(sp)[0]
  tokens[500] = tokens[400]
  with pytest.raises(ValueError, match=rf"tokenizer\.ggml\.tokens\[500\] = '{tokens[400]}' repeats token 400"):
    load_tokenizer(_write_gguf(tmp_path / "c.gguf", sp, tokens=tokens))
  with pytest.raises(ValueError, match=r"c\.gguf"):  # the message names the file
    load_tokenizer(tmp_path / "c.gguf")
  with pytest.raises(ValueError, match=r"no unknown token and not all 256 byte tokens"):
    sentencepiece_bpe(["a", "b", "ab"], [0.0, 0.0, -1.0], [1, 1, 1])
  assert sentencepiece_bpe(["<unk>", "a"], [0.0, 0.0], [1, 1], False, unk_id=0).encode("ax").ids == [1, 0]
  with pytest.raises(ValueError, match=r"unknown_token_id 7 is outside the vocabulary \[0, 2\)"):
    sentencepiece_bpe(["<unk>", "a"], [0.0, 0.0], [1, 1], unk_id=7)
  with pytest.raises(ValueError, match=r"unsupported GGUF tokenizer\.ggml\.model 't5'"):
    load_tokenizer(_write_gguf(tmp_path / "d.gguf", sp, model="t5"))


@pytest.mark.parity
def test_transformers_gguf_loader_agrees_on_text_not_starting_with_a_space(llama_style):
  """transformers' own GGUF tokenizer (its LlamaTokenizer from the file's pieces and scores) on the same file. It
  differs on text that starts with a space: its Metaspace pre-tokenizer prepends no "▁" there, while llama.cpp and
  sentencepiece do."""
  transformers = require_module("transformers")
  sp, path = llama_style  # (transformers reads a prefix-less SentencePiece vocabulary only from a gemma file)
  reference = transformers.AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
  ours = load_tokenizer(path)
  texts = [t for t in TEXTS if not t.startswith(" ")] + [t for t in _corpus()[::5] if not t.startswith(" ")
                                                           and "<" not in t]
  for text in texts:
    assert ours.encode(text) == reference.encode(text, add_special_tokens=False), text
  assert ours.encode("  two") == sp.encode("  two") != reference.encode("  two", add_special_tokens=False)


def _model(vocab_size):
  return CausalLM(ModelConfig(vocab_size=vocab_size, embed_dim=32, num_layers=1, num_heads=2, num_kv_heads=2,
                              head_dim=16, mlp_dim=32), rngs=nnx.Rngs(0))


def test_export_writes_a_vocabulary_llama_cpp_tokenizes_as_the_source(spm_gguf, tmp_path):
  """A policy with a SentencePiece tokenizer (read from a GGUF, or saved as tokenizer.json) exports to a 'llama'
  vocabulary: the same pieces and types as the converter's, scores that order the merges as before, and the same
  ids as sentencepiece."""
  sp, path = spm_gguf
  source = load_tokenizer(path)
  folder = tmp_path / "policy_tokenizer"
  source.save_pretrained(folder)
  for tokenizer in (source, load_tokenizer(folder)):
    out = save_gguf(_model(1024), tmp_path / "m.gguf", tokenizer, tensor_type="f32")
    meta = gguf_metadata(out)
    tokens, _, types = _converter_vocabulary(sp)
    assert meta["tokenizer.ggml.model"] == "llama"
    assert meta["tokenizer.ggml.tokens"][:1000] == tokens and meta["tokenizer.ggml.token_type"][:1000] == types
    assert meta["tokenizer.ggml.tokens"][1000:] == [f"[PAD{i}]" for i in range(1000, 1024)]
    assert meta["tokenizer.ggml.add_space_prefix"] == (sp.encode("a")[0] == sp.piece_to_id("▁a"))
    assert (meta["tokenizer.ggml.bos_token_id"], meta["tokenizer.ggml.eos_token_id"],
            meta["tokenizer.ggml.unknown_token_id"]) == (1, 2, 0)
    assert meta["tokenizer.ggml.add_bos_token"] is True and meta["tokenizer.ggml.add_eos_token"] is False
    # The merges' order survives: among normal pieces, a higher sentencepiece score is a higher exported score.
    normal = [i for i in range(1000) if types[i] == 1 and len(tokens[i]) > 1]
    exported = np.asarray(meta["tokenizer.ggml.scores"])[normal]
    assert np.all(np.diff(exported[np.argsort([-sp.get_score(i) for i in normal], kind="stable")]) < 0)
    back = load_tokenizer(out)
    for text in TEXTS + ["x<tool>y"]:
      assert back.encode(text, add_special_tokens=True) == source.encode(text, add_special_tokens=True), text
    assert back.chat_template == CHAT


@pytest.mark.parity
def test_transformers_runs_the_exported_llama_2_style_file(llama_style, tmp_path):
  """A Llama policy with the SentencePiece tokenizer, exported, then loaded by transformers' own GGUF loader: the
  checkpoint's logits, and its tokenizer (built from the file's pieces and scores) gives our ids."""
  torch, transformers = require_module("torch"), require_module("transformers")
  from hf_fixtures import hf_logits, make_hf_model
  sp, path = llama_style
  hf_model = make_hf_model("llama_gqa_tied", vocab_size=1024)
  hf_model.save_pretrained(tmp_path / "hf")
  model, _ = from_pretrained(tmp_path / "hf")
  ours = load_tokenizer(path)
  save_gguf(model, tmp_path / "gguf" / "model.gguf", ours, tensor_type="f32")
  loaded = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "gguf", gguf_file="model.gguf",
                                                             dtype=torch.float32)
  ids = np.asarray([ours.encode("Hello world, the year 2024 had 366 days.", add_special_tokens=True)[:12]])
  mask = np.ones_like(ids)
  np.testing.assert_allclose(hf_logits(loaded.eval(), ids, mask), hf_logits(hf_model, ids, mask), atol=1e-4)
  reference = transformers.AutoTokenizer.from_pretrained(tmp_path / "gguf", gguf_file="model.gguf")
  for text in [t for t in TEXTS if not t.startswith(" ")]:
    assert reference.encode(text) == ours.encode(text, add_special_tokens=True), text


def gguf_metadata(path):
  from jaxrlhf.models import gguf as gguf_io
  return gguf_io.read_metadata(path)


def test_metaspace_prefixes_are_refused_by_name(llama_style, tmp_path):
  """transformers' Llama tokenizers with a Metaspace pre-tokenizer prepend no "▁" to text that starts with a space
  (prepend_scheme "always") nor, for non-legacy ones ("first"), to text after a special token; llama.cpp always
  does, so neither can be written, and the export says why before writing anything. (Only a tokenizer with a space
  prefix has the choice.)"""
  sp, path = llama_style
  spec = json.loads(load_tokenizer(path).backend.to_str())
  spec["normalizer"] = None
  spec["pre_tokenizer"] = {"type": "Metaspace", "replacement": "▁", "prepend_scheme": "always", "split": False}

  def tokenizer():
    return Tokenizer(tokenizers.Tokenizer.from_str(json.dumps(spec)), bos_token="<s>", eos_token="</s>",
                     unk_token="<unk>", chat_template=CHAT)

  assert tokenizer().encode("  x") != load_tokenizer(path).encode("  x")  # the difference the refusal is about
  with pytest.raises(ValueError, match=r"Metaspace with prepend_scheme 'always' prepends no '▁' to text that "
                                       r"starts with a space; llama\.cpp always does"):
    save_gguf(_model(1000), tmp_path / "always.gguf", tokenizer())
  spec["pre_tokenizer"]["prepend_scheme"] = "first"
  with pytest.raises(ValueError, match=r"'first' prepends no '▁' to text that starts with a space or follows a "
                                       r"special token"):
    save_gguf(_model(1000), tmp_path / "first.gguf", tokenizer())
  assert not list(tmp_path.iterdir())
  spec["pre_tokenizer"] = None
  spec["normalizer"] = {"type": "NFKC"}
  with pytest.raises(ValueError, match=r"normalizer steps \['NFKC'\]"):
    tokenizer_metadata(tokenizer(), 1000)


def test_a_sentencepiece_tokenizer_that_reads_back_otherwise_is_refused(spm_gguf, tmp_path):
  """The read-back check covers what the metadata cannot say. Here the merges that make one piece of the probe text
  are dropped: this BPE can no longer form it, but llama.cpp merges any two pieces whose concatenation is a token,
  so the GGUF would tokenize otherwise; nothing is written."""
  sp, path = spm_gguf
  source = load_tokenizer(path)
  pieces = [sp.id_to_piece(i) for i in source.encode("Hello world! The year 2024 had 366 days.")]
  longest = max(pieces, key=len)
  spec = json.loads(source.backend.to_str())
  spec["model"]["merges"] = [m for m in spec["model"]["merges"] if "".join(m) != longest]
  unreachable = Tokenizer(tokenizers.Tokenizer.from_str(json.dumps(spec)), bos_token="<s>", eos_token="</s>",
                          unk_token="<unk>")
  with pytest.raises(ValueError, match=r"m\.gguf: the GGUF's tokenizer encodes 'Hello world!.* otherwise than "
                                       r"this tokenizer"):
    save_gguf(_model(1000), tmp_path / "m.gguf", unreachable)
  assert not (tmp_path / "m.gguf").exists()


def test_added_whitespace_tokens_are_written_with_spaces(gemma_style, tmp_path):
  """Gemma's tokenizer.json adds whitespace runs ("▁▁", ...) matched in the normalized text, where spaces are
  already "▁"; llama.cpp matches added tokens in the raw text, so the converter writes them with plain spaces. An
  added token matched as spelled keeps its "▁". (With a space prefix, tokenizers would match a normalized added token
  as "▁▁▁▁": Gemma's style only.)"""
  from tokenizers import AddedToken
  sp, path = gemma_style
  tokenizer = load_tokenizer(path)
  tokenizer.backend.add_tokens([AddedToken("▁▁▁", normalized=True), AddedToken("▁x▁", normalized=False)])
  ids = tokenizer.backend.get_vocab()
  assert tokenizer.encode("a   b") == [sp.piece_to_id("a"), ids["▁▁▁"], sp.piece_to_id("b")]
  out = save_gguf(_model(1024), tmp_path / "m.gguf", tokenizer, tensor_type="f32")
  meta = gguf_metadata(out)
  assert meta["tokenizer.ggml.tokens"][ids["▁▁▁"]] == "   " and meta["tokenizer.ggml.tokens"][ids["▁x▁"]] == "▁x▁"
  assert meta["tokenizer.ggml.token_type"][ids["▁▁▁"]] == meta["tokenizer.ggml.token_type"][ids["▁x▁"]] == 4
  back = load_tokenizer(out)
  for text in ("a   b", "a    b", "say ▁x▁ now", "   "):
    assert back.encode(text) == tokenizer.encode(text), text


def test_a_folder_with_only_a_tokenizer_model_tokenizes_as_sentencepiece(spm_gguf, tmp_path):
  """A HF folder with a SentencePiece tokenizer.model and no tokenizer.json (Llama 2's original release): our
  protobuf reader gives sentencepiece's pieces, scores and types, and the tokenizer its ids and text; BOS is added as
  LlamaTokenizer adds it, and the special tokens default to the model's <s>, </s>, <unk>."""
  from jaxrlhf.models.sentencepiece_model import read_sentencepiece_model
  sp, _ = spm_gguf
  (tmp_path / "tokenizer.model").write_bytes(sp.serialized_model_proto())
  # No tokenizer_config.json: LlamaTokenizer's defaults (BOS added, <s> / </s> / <unk>).
  model = read_sentencepiece_model(tmp_path / "tokenizer.model")
  tokens, scores, types = _converter_vocabulary(sp)
  assert (model.pieces, model.scores, model.types) == (tuple(tokens), tuple(scores), tuple(types))
  assert model.add_dummy_prefix == (sp.encode("a")[0] == sp.piece_to_id("▁a"))
  ours = load_tokenizer(tmp_path)
  assert (ours.bos_id, ours.eos_id) == (sp.bos_id(), sp.eos_id())
  for text in TEXTS:
    ids = sp.encode(text)
    assert ours.encode(text) == ids and ours.encode(text, add_special_tokens=True) == [sp.bos_id()] + ids, text
    assert ours.decode(ids) == sp.decode(ids), text


def test_tokenizer_models_we_cannot_tokenize_are_refused_naming_the_field(tmp_path):
  spm = require_module("sentencepiece")
  from jaxrlhf.models.errors import ModelFileError

  def folder(name, **options):
    model = io.BytesIO()
    spm.SentencePieceTrainer.train(sentence_iterator=iter(_corpus()), model_writer=model, vocab_size=1000,
                                   num_threads=1, minloglevel=2, **options)
    path = tmp_path / name
    path.mkdir()
    (path / "tokenizer.model").write_bytes(model.getvalue())
    return path

  with pytest.raises(ModelFileError, match=r"tokenizer\.model: trainer_spec\.model_type is UNIGRAM; only BPE"):
    load_tokenizer(folder("unigram", model_type="unigram"))
  with pytest.raises(ModelFileError, match=r"normalizer_spec\.name is 'nmt_nfkc'; only 'identity'"):
    load_tokenizer(folder("nfkc", model_type="bpe"))
  with pytest.raises(ModelFileError, match=r"remove_extra_whitespaces is True; only False"):
    load_tokenizer(folder("collapsed", model_type="bpe", normalization_rule_name="identity"))
  good = folder("good", model_type="bpe", normalization_rule_name="identity", remove_extra_whitespaces=False,
                byte_fallback=True)
  raw = (good / "tokenizer.model").read_bytes()
  (good / "tokenizer.model").write_bytes(raw[:len(raw) // 2])
  with pytest.raises(ModelFileError, match=r"tokenizer\.model: malformed SentencePiece model \(field 1 .*runs past "
                                           r"the end"):
    load_tokenizer(good)
