"""GGUF export (`jaxrlhf.models.gguf_export`): every family we read back (Llama with tied / untied embeddings and
llama3 RoPE scaling, Qwen2, Qwen3, Gemma 1 / 2 / 3, Phi-3 with a window or with partial rotation and LongRoPE)
against llama.cpp's converter layout and through our reader against the transformers checkpoint; the plain Llama,
Qwen2 and Phi-3 exports loaded by transformers' own GGUF loader; each storage type against its rounding; SmolLM2 from
the real GGUF, with transformers' GGUF tokenizer; LoRA merged; what a GGUF cannot say refused and no file left; the
command line."""

import json
import pathlib

import gguf
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from hf_fixtures import hf_logits, make_hf_model
from model_fixtures import forward

from jaxrlhf.models import CausalLM, ModelConfig, from_pretrained, load_tokenizer, save_pretrained
from jaxrlhf.models import gguf as gguf_io
from jaxrlhf.models import lora as lora_lib
from jaxrlhf.models.gguf_export import save_gguf, tokenizer_metadata
from jaxrlhf.models.hf import params_to_hf
from jaxrlhf.models.tokenizer import Tokenizer, _bytes_to_unicode, byte_level_bpe

TOL = 1e-4
VOCAB = 300  # the fixtures' 97 widened to hold the tokenizer's 260 tokens
CHATML = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
          "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
# The cases GGUF can say: llama.cpp assumes Gemma's attention scale is the head size (test_families_parity.py).
# Gemma 3's local layers get a RoPE base other than llama.cpp's default 10000, so the file must say it.
CASES = {"llama_gqa_tied": {}, "llama3_untied_scaled": {}, "qwen2_bias": {}, "qwen3_untied": {}, "gemma": {},
         "phi3_sliding": {}, "phi3_longrope_partial": {},
         "gemma2": dict(query_pre_attn_scalar=16),
         "gemma3_untied": dict(query_pre_attn_scalar=16, rope_parameters=dict(
             full_attention=dict(rope_type="linear", factor=2.0, rope_theta=1e5),
             sliding_attention=dict(rope_type="default", rope_theta=2e4)))}


def bpe_tokenizer(pre="smollm") -> Tokenizer:
  """A byte-level BPE of 260 tokens: the 256 bytes, two merges ("he", " t") and the two ChatML markers (control)."""
  byte_chars = _bytes_to_unicode()
  tokens = [byte_chars[b] for b in range(256)] + ["he", "Ġt", "<|im_start|>", "<|im_end|>"]
  backend = byte_level_bpe(tokens, ["h e", "Ġ t"], [1] * 258 + [3, 3], pre)
  return Tokenizer(backend, eos_token="<|im_end|>", chat_template=CHATML)


def _rows(seed=0, length=12):
  ids = np.random.default_rng(seed).integers(3, 260, size=(3, length)).astype(np.int64)
  mask = np.ones_like(ids)
  mask[1, :4] = 0  # left padding
  return np.where(mask > 0, ids, 0), mask


def _max_diff(a, b, mask):
  return float(np.abs(a - b)[mask > 0].max())


@pytest.fixture(scope="module", params=sorted(CASES))
def exported(request, tmp_path_factory):
  """(case, transformers model, our model from its folder, the f32 GGUF's folder)."""
  folder = tmp_path_factory.mktemp(request.param)
  hf_model = make_hf_model(request.param, vocab_size=VOCAB, **CASES[request.param])
  hf_model.save_pretrained(folder / "hf")
  model, _ = from_pretrained(folder / "hf")
  save_gguf(model, folder / "gguf" / "model.gguf", bpe_tokenizer(), tensor_type="f32")
  return request.param, hf_model, model, folder / "gguf"


@pytest.mark.parity
@pytest.mark.parametrize("case, changes", [("llama_gqa_tied", {}), ("qwen2_bias", {}),
                                          ("phi3_sliding", dict(sliding_window=None))])
def test_transformers_gguf_loader_runs_the_llama_qwen2_and_phi3_exports(tmp_path, case, changes):
  """Independent of our reader: transformers dequantizes, un-permutes, splits Phi-3's fused tensors and configures
  the file itself. Its GGUF config mapping reads no RoPE scaling, soft-caps, attention scale, windows, partial
  rotation or Qwen3 head size (llama.cpp does), so it is the reference for plain Llama, Qwen2 and Phi-3 files (and
  SmolLM2 below); the other cases are checked against the converter's layout and, through our reader, against the
  transformers checkpoint."""
  import torch
  import transformers
  hf_model = make_hf_model(case, vocab_size=VOCAB, **changes)
  hf_model.save_pretrained(tmp_path / "hf")
  model, _ = from_pretrained(tmp_path / "hf")
  save_gguf(model, tmp_path / "gguf" / "model.gguf", bpe_tokenizer(), tensor_type="f32")
  # The file has no padding id; Phi3Config's default (32000) lies outside this vocabulary.
  extra = dict(pad_token_id=0) if case.startswith("phi3") else {}
  loaded = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "gguf", gguf_file="model.gguf",
                                                             dtype=torch.float32, **extra)
  assert type(loaded).__name__ == type(hf_model).__name__
  ids, mask = _rows()
  assert _max_diff(hf_logits(loaded.eval(), ids, mask), hf_logits(hf_model, ids, mask), mask) <= TOL


@pytest.mark.parity
def test_export_has_the_converters_metadata_and_tensors(exported, tmp_path):
  """The file holds what convert_hf_to_gguf.py writes for the checkpoint (test_families_parity's restatement of it:
  its metadata values, tensor names, types and bytes; llama3 scaling as transformers' default / scaled
  frequencies)."""
  import torch
  from test_families_parity import write_llama_cpp_gguf
  case, hf_model, _, folder = exported
  arch = case.split("_")[0].replace("llama3", "llama")
  rope_freqs = None
  if case == "llama3_untied_scaled":
    hf = hf_model.config
    dim = hf.head_dim
    default = 1.0 / (hf.rope_parameters["rope_theta"] ** (torch.arange(0, dim, 2, dtype=torch.int64).float() / dim))
    rope_freqs = (default / hf_model.model.rotary_emb.inv_freq).numpy()
  reference = gguf_io.read_header(write_llama_cpp_gguf(hf_model, tmp_path / "ref.gguf", arch, rope_freqs=rope_freqs))
  ours = gguf_io.read_header(folder / "model.gguf")
  for key, value in reference.metadata.items():
    if key.startswith(("GGUF.", "general.", "tokenizer.")):
      continue
    if case == "phi3_sliding" and key == "phi3.rope.scaling.original_context_length":
      continue  # Phi3Config's 4096 default: no effect without LongRoPE factors, and our config does not keep it
    assert ours.metadata[key] == pytest.approx(value, rel=1e-7) if isinstance(value, float) \
        else ours.metadata[key] == value, key
  assert set(ours.tensors) == set(reference.tensors)
  for name, info in reference.tensors.items():
    mine = ours.tensors[name]
    assert (mine.qtype, mine.shape) == (info.qtype, info.shape), name
    np.testing.assert_allclose(gguf_io.read_tensor(folder / "model.gguf", mine),
                               gguf_io.read_tensor(tmp_path / "ref.gguf", info),
                               rtol=2e-6 if name == gguf_io.ROPE_FREQS else 0, atol=0, err_msg=name)


@pytest.mark.parity
def test_our_reader_gets_the_same_tensors_config_and_logits(exported):
  case, hf_model, model, folder = exported
  hf_config, tensors = gguf_io.read_gguf(folder / "model.gguf")
  expected = params_to_hf(model.config, nnx.to_pure_dict(nnx.state(model)))
  if model.config.tie_word_embeddings:
    expected.pop("lm_head.weight", None)
  assert set(tensors) == set(expected)
  for name, value in expected.items():
    atol = 1e-7 if case.startswith("gemma") and name.endswith("norm.weight") else 0.0  # f32 rounding of 1 + w
    np.testing.assert_allclose(tensors[name], value, rtol=0, atol=atol, err_msg=name)
  back, _ = from_pretrained(folder / "model.gguf")
  ids, mask = _rows()
  ours = np.asarray(forward(back, jnp.asarray(ids), jnp.asarray(mask)))
  assert _max_diff(ours, np.asarray(forward(model, jnp.asarray(ids), jnp.asarray(mask))), mask) <= 1e-5
  assert _max_diff(ours, hf_logits(hf_model, ids, mask), mask) <= TOL
  assert load_tokenizer(folder / "model.gguf").chat_template == CHATML


@pytest.mark.parametrize("tensor_type", ["f16", "bf16", "q8_0"])
def test_storage_types_round_each_matrix_and_keep_vectors(tmp_path, tensor_type):
  """Matrices come back as their rounding to the type (f16 / bf16 round to nearest even; Q8_0: per 32-value block
  d = max|x| / 127, int8s roundf(x / d), d stored as f16: ggml's quantize_row_q8_0_ref, restated here); norms stay
  f32; a matrix whose rows are not whole Q8_0 blocks falls back to f16."""
  config = ModelConfig(vocab_size=VOCAB, embed_dim=64, num_layers=2, num_heads=4, num_kv_heads=2, head_dim=16,
                       mlp_dim=48)  # mlp rows of 48: not whole 32-value blocks for down_proj
  model = CausalLM(config, rngs=nnx.Rngs(0))
  path = save_gguf(model, tmp_path / "m.gguf", bpe_tokenizer(), tensor_type=tensor_type)
  header = gguf_io.read_header(path)
  _, tensors = gguf_io.read_gguf(path)
  expected = params_to_hf(config, nnx.to_pure_dict(nnx.state(model)))
  for hf_name, gguf_name in {v: k for k, v in gguf_io._hf_names(2).items()}.items():
    if hf_name not in expected:
      continue
    x, qtype = expected[hf_name], header.tensors[gguf_name].qtype
    if x.ndim == 1:
      assert qtype == gguf.GGMLQuantizationType.F32
      np.testing.assert_array_equal(tensors[hf_name], x)
      continue
    if tensor_type == "f16" or (tensor_type == "q8_0" and x.shape[-1] % 32):
      assert qtype == gguf.GGMLQuantizationType.F16, gguf_name
      golden = x.astype(np.float16).astype(np.float32)
    elif tensor_type == "bf16":
      golden = (x.view(np.uint32) + 0x7FFF + ((x.view(np.uint32) >> 16) & 1) >> 16 << 16).astype(np.uint32)
      golden = golden.view(np.float32)  # round to nearest even
    else:
      assert qtype == gguf.GGMLQuantizationType.Q8_0, gguf_name
      # Blocks run along rows, so llama.cpp's q/k row permutation commutes with the rounding.
      blocks = x.reshape(-1, 32).astype(np.float32)
      d = np.abs(blocks).max(axis=1, keepdims=True) / np.float32(127)
      scaled = blocks * np.divide(np.float32(1), d, out=np.zeros_like(d), where=d != 0)
      q = np.sign(scaled) * np.floor(np.abs(scaled) + np.float32(0.5))  # C's roundf: halves away from zero
      golden = (q * d.astype(np.float16).astype(np.float32)).reshape(x.shape)
    np.testing.assert_allclose(tensors[hf_name], golden, rtol=0, atol=1e-6 * max(1.0, np.abs(x).max()),
                               err_msg=gguf_name)


@pytest.mark.parity
def test_smollm2_export_equals_in_transformers(smollm2_gguf, tmp_path):
  """SmolLM2-135M-Instruct from its Q4_1 GGUF, exported f16: transformers' GGUF loader and tokenizer read the file
  as we do (logits of a chat, token ids with and without special tokens, the rendered chat)."""
  import torch
  import transformers
  model, _ = from_pretrained(smollm2_gguf)
  tokenizer = load_tokenizer(smollm2_gguf)
  save_gguf(model, tmp_path / "smollm2.gguf", tokenizer, tensor_type="f16")
  hf_model = transformers.AutoModelForCausalLM.from_pretrained(tmp_path, gguf_file="smollm2.gguf",
                                                               dtype=torch.float32).eval()
  hf_tokenizer = transformers.AutoTokenizer.from_pretrained(tmp_path, gguf_file="smollm2.gguf")
  messages = [{"role": "user", "content": "What is the capital of France? Answer in 12 words."}]
  chat = tokenizer.apply_chat_template(messages, add_generation_prompt=True)
  assert hf_tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True) == chat
  for text in (chat, "naïve café 2024 🙂 don't", "  spaced\n\nout"):
    assert hf_tokenizer.encode(text, add_special_tokens=False) == tokenizer.encode(text)
    assert hf_tokenizer.encode(text) == tokenizer.encode(text, add_special_tokens=True)
  ids = np.asarray([tokenizer.encode(chat)])
  back, _ = from_pretrained(tmp_path / "smollm2.gguf")
  ours = np.asarray(back(jnp.asarray(ids)))
  with torch.no_grad():
    theirs = hf_model(torch.tensor(ids)).logits.numpy()
  assert np.abs(ours - theirs).max() <= 5e-4
  assert ours[0, -1].argmax() == np.asarray(model(jnp.asarray(ids)))[0, -1].argmax()


def test_lora_model_is_exported_merged(tmp_path):
  config = ModelConfig(vocab_size=VOCAB, embed_dim=64, num_layers=2, num_heads=4, num_kv_heads=2, head_dim=16,
                       mlp_dim=64)
  model = CausalLM(config, rngs=nnx.Rngs(0), lora=lora_lib.LoraConfig(rank=4, alpha=8.0))
  pure = nnx.to_pure_dict(nnx.state(model))
  rng = np.random.default_rng(1)
  for name, value in pure["lora"].items():
    if name.endswith("_b"):
      pure["lora"][name] = jnp.asarray(0.5 * rng.standard_normal(value.shape), value.dtype)
  graphdef, state = nnx.split(model)
  nnx.replace_by_pure_dict(state, pure)
  model = nnx.merge(graphdef, state)
  back, _ = from_pretrained(save_gguf(model, tmp_path / "lora.gguf", bpe_tokenizer(), tensor_type="f32"))
  ids, mask = _rows()
  ours = np.asarray(forward(back, jnp.asarray(ids), jnp.asarray(mask)))
  assert _max_diff(ours, np.asarray(forward(model, jnp.asarray(ids), jnp.asarray(mask))), mask) <= 1e-5
  base = np.asarray(model.without_adapters()(jnp.asarray(ids), jnp.asarray(mask)))
  assert _max_diff(ours, base, mask) > 1e-2  # the adapters are in the file


@pytest.mark.parity
@pytest.mark.parametrize("case, changes, message", [
    ("qwen3_tied_sliding", {}, r"sliding_window: 4 -> None"),
    ("gemma3_untied", {}, r"query_pre_attn_scalar: 12(\.0)? -> 16"),
])
def test_what_gguf_cannot_say_is_refused_and_no_file_left(tmp_path, case, changes, message):
  hf_model = make_hf_model(case, vocab_size=VOCAB, **changes)
  hf_model.save_pretrained(tmp_path / "hf")
  model, _ = from_pretrained(tmp_path / "hf")
  with pytest.raises(ValueError, match=rf"model\.gguf: the GGUF would describe another model .*{message}"):
    save_gguf(model, tmp_path / "model.gguf", bpe_tokenizer())
  assert not (tmp_path / "model.gguf").exists()


def test_a_tokenizer_that_reads_back_otherwise_is_refused(tmp_path):
  """An added token that swallows the space before it (lstrip, as some tokenizer.json files set) has no GGUF
  spelling: the file's tokenizer would split " <tool>" in two, so the read-back check refuses it."""
  from tokenizers import AddedToken
  tokenizer = bpe_tokenizer()
  tokenizer.backend.add_tokens([AddedToken("<tool>", lstrip=True, normalized=False)])
  model = CausalLM(ModelConfig(vocab_size=VOCAB, embed_dim=32, num_layers=1, num_heads=2, num_kv_heads=2,
                               head_dim=16, mlp_dim=32), rngs=nnx.Rngs(0))
  with pytest.raises(ValueError, match=r"m\.gguf: the GGUF's tokenizer encodes .*<tool>.* otherwise than this"):
    save_gguf(model, tmp_path / "m.gguf", tokenizer)
  assert not (tmp_path / "m.gguf").exists()


def test_other_families_tokenizers_and_types_are_refused(tmp_path):
  model = CausalLM(ModelConfig(vocab_size=VOCAB, embed_dim=32, num_layers=1, num_heads=2, num_kv_heads=2,
                               head_dim=16, mlp_dim=32), rngs=nnx.Rngs(0))
  with pytest.raises(ValueError, match=r"tensor_type 'q4_k': expected one of \['bf16', 'f16', 'f32', 'q8_0'\]"):
    save_gguf(model, tmp_path / "m.gguf", bpe_tokenizer(), tensor_type="q4_k")
  gpt2 = CausalLM(ModelConfig(family="gpt2", norm="layernorm", activation="gelu_tanh", gated_mlp=False,
                              position="learned", vocab_size=VOCAB, embed_dim=32, num_layers=1, num_heads=2,
                              num_kv_heads=2, head_dim=16, mlp_dim=32), rngs=nnx.Rngs(0))
  with pytest.raises(ValueError, match=r"family 'gpt2': GGUF export writes \['gemma', 'gemma2', 'gemma3', 'llama', "
                                       r"'qwen2', 'qwen3'\]"):
    save_gguf(gpt2, tmp_path / "m.gguf", bpe_tokenizer())
  with pytest.raises(ValueError,
                     match=r"tokenizer: 260 tokens \(largest id 259\) do not fit the model's vocab_size 200"):
    tokenizer_metadata(bpe_tokenizer(), 200)
  byte_chars = _bytes_to_unicode()
  no_merges = Tokenizer(byte_level_bpe([byte_chars[b] for b in range(256)] + ["<|im_end|>"], [], [1] * 256 + [3]),
                        eos_token="<|im_end|>")
  with pytest.raises(ValueError, match=r"tokenizer: a BPE vocabulary without merges"):
    tokenizer_metadata(no_merges, VOCAB)
  odd = bpe_tokenizer()
  spec = json.loads(odd.backend.to_str())
  spec["pre_tokenizer"] = {"type": "Metaspace", "replacement": "▁", "prepend_scheme": "always", "split": True}
  import tokenizers
  odd = Tokenizer(tokenizers.Tokenizer.from_str(json.dumps(spec)), eos_token="<|im_end|>")
  with pytest.raises(ValueError, match=r"tokenizer: pre-tokenizer .*Metaspace.* has no llama\.cpp name here"):
    tokenizer_metadata(odd, VOCAB)
  assert not list(tmp_path.iterdir())


@pytest.mark.parametrize("pre, expected", [("smollm", "smollm"), ("default", "gpt2"), ("llama3", "llama-bpe"),
                                           ("smaug-bpe", "smaug-bpe"), ("qwen2", "qwen2")])
def test_pre_tokenizer_names_round_trip(pre, expected):
  """Each pre-tokenizer our reader builds from a llama.cpp name is written back under llama.cpp's name for it."""
  meta = tokenizer_metadata(bpe_tokenizer(pre), VOCAB)
  assert meta["tokenizer.ggml.pre"] == expected
  assert len(meta["tokenizer.ggml.tokens"]) == VOCAB
  assert meta["tokenizer.ggml.tokens"][255:262] == ["ÿ", "he", "Ġt", "<|im_start|>", "<|im_end|>", "[PAD260]",
                                                    "[PAD261]"]
  assert meta["tokenizer.ggml.token_type"][255:262] == [1, 1, 1, 3, 3, 5, 5]
  assert meta["tokenizer.ggml.merges"] == ["h e", "Ġ t"] and meta["tokenizer.ggml.eos_token_id"] == 259
  assert meta["tokenizer.ggml.add_bos_token"] is False and meta["tokenizer.ggml.add_eos_token"] is False


def test_command_line_exports_a_saved_policy(tmp_path):
  from experiments import export_gguf
  config = ModelConfig(vocab_size=VOCAB, embed_dim=64, num_layers=2, num_heads=4, num_kv_heads=2, head_dim=16,
                       mlp_dim=64)
  model = CausalLM(config, rngs=nnx.Rngs(0))
  save_pretrained(model, tmp_path / "policy")
  bpe_tokenizer().save_pretrained(tmp_path / "policy")
  out = export_gguf.main(["--model", str(tmp_path / "policy"), "--out", str(tmp_path / "policy.gguf"),
                          "--type", "f32"])
  back, _ = from_pretrained(out)
  ids, mask = _rows()
  assert _max_diff(np.asarray(forward(back, jnp.asarray(ids), jnp.asarray(mask))),
                   np.asarray(forward(model, jnp.asarray(ids), jnp.asarray(mask))), mask) <= 1e-5
  save_pretrained(model, tmp_path / "world_policy")  # no tokenizer.json, as a world-trained policy
  with pytest.raises(SystemExit, match=r"--tokenizer: .*no tokenizer\.json.*synthetic world"):
    export_gguf.main(["--model", str(tmp_path / "world_policy"), "--out", str(tmp_path / "w.gguf")])
  assert pathlib.Path(out).name == "policy.gguf"


def test_a_bfloat16_model_exports_to_bf16_without_loss(tmp_path):
  """Training on accelerators keeps bf16 parameters: a bf16 file holds them exactly (its tensors are the model's,
  so the logits read back are the same bits)."""
  config = ModelConfig(vocab_size=VOCAB, embed_dim=64, num_layers=2, num_heads=4, num_kv_heads=2, head_dim=16,
                       mlp_dim=64)
  save_pretrained(CausalLM(config, rngs=nnx.Rngs(0)), tmp_path / "f32")
  model, _ = from_pretrained(tmp_path / "f32", dtype=jnp.bfloat16)
  back, _ = from_pretrained(save_gguf(model, tmp_path / "m.gguf", bpe_tokenizer(), tensor_type="bf16"),
                            dtype=jnp.bfloat16)
  ids, mask = _rows()
  np.testing.assert_array_equal(np.asarray(forward(back, jnp.asarray(ids), jnp.asarray(mask)), np.float32),
                                np.asarray(forward(model, jnp.asarray(ids), jnp.asarray(mask)), np.float32))
