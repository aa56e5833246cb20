"""GGUF reader: hand-written quantized blocks, llama.cpp's q/k permutation, error messages, and SmolLM2 vs
transformers' own GGUF loader."""

import importlib.util
import math
import os

import gguf
import numpy as np
import pytest

from conftest import require_asset
from jaxrlhf.models import gguf as gguf_io

# A tiny llama: D=32 (one 32-wide quant block per row), N=4 heads of H=8, 2 kv heads, F=64, V=48, 2 layers.
D, N, NKV, H, F, V, L = 32, 4, 2, 8, 64, 48, 2


def _f16_bytes(x):
  return np.asarray(x, np.float16).reshape(-1, 1).view(np.uint8)


def _q8_0(rng, rows, cols):
  """Random Q8_0 rows (GGML block: f16 scale d, 32 int8 q; x = d * q) -> (raw uint8, dequantized golden)."""
  blocks = rows * cols // 32
  d = rng.uniform(0.01, 0.1, blocks).astype(np.float16)
  q = rng.integers(-128, 128, (blocks, 32)).astype(np.int8)
  raw = np.concatenate([_f16_bytes(d), q.view(np.uint8)], axis=1).reshape(rows, -1)
  golden = d.astype(np.float32)[:, None] * q.astype(np.float32)
  return raw, golden.reshape(rows, cols)


def _q4(rng, rows, cols, with_min):
  """Random Q4_0 / Q4_1 rows: f16 d (+ f16 m), 16 bytes of nibbles; low nibbles are elements 0-15, high
  nibbles 16-31. Q4_0: x = d * (q - 8); Q4_1: x = d * q + m."""
  blocks = rows * cols // 32
  d = rng.uniform(0.01, 0.1, blocks).astype(np.float16)
  m = rng.uniform(-0.5, 0.5, blocks).astype(np.float16)
  q = rng.integers(0, 16, (blocks, 32)).astype(np.uint8)
  packed = q[:, :16] | (q[:, 16:] << 4)
  header = [_f16_bytes(d), _f16_bytes(m)] if with_min else [_f16_bytes(d)]
  raw = np.concatenate(header + [packed], axis=1).reshape(rows, -1)
  qf, df, mf = q.astype(np.float32), d.astype(np.float32)[:, None], m.astype(np.float32)[:, None]
  golden = qf * df + mf if with_min else (qf - 8) * df
  return raw, golden.reshape(rows, cols)


def llama_cpp_permute(w, n_head):
  """llama.cpp convert_hf_to_gguf.py `LlamaModel.permute` (HF rotate-half rows -> GGML interleaved rows)."""
  return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def _tiny_llama_tensors(rng, tied=True):
  """GGUF name -> (array to write, raw_dtype or None, golden in HF layout)."""
  out = {}

  def f32(name, shape, golden_fn=lambda w: w):
    w = rng.normal(size=shape).astype(np.float32)
    out[name] = (w, None, golden_fn(w))

  f32("token_embd.weight", (V, D))
  f32("output_norm.weight", (D,))
  if not tied:
    f32("output.weight", (V, D))
  for i in range(L):
    f32(f"blk.{i}.attn_norm.weight", (D,))
    f16 = rng.normal(size=D).astype(np.float16)
    out[f"blk.{i}.ffn_norm.weight"] = (f16, None, f16.astype(np.float32))
    # q/k are stored permuted; the golden is the HF-layout weight before llama.cpp's permute.
    hf_q = rng.normal(size=(N * H, D)).astype(np.float32)
    out[f"blk.{i}.attn_q.weight"] = (llama_cpp_permute(hf_q, N), None, hf_q)
    raw, hf_k = _q8_0(rng, NKV * H, D)
    # Permuting whole rows commutes with per-row quantization, so permute the raw rows.
    out[f"blk.{i}.attn_k.weight"] = (llama_cpp_permute(raw, NKV), gguf.GGMLQuantizationType.Q8_0, hf_k)
    raw, golden = _q8_0(rng, NKV * H, D)
    out[f"blk.{i}.attn_v.weight"] = (raw, gguf.GGMLQuantizationType.Q8_0, golden)
    raw, golden = _q4(rng, D, N * H, with_min=False)
    out[f"blk.{i}.attn_output.weight"] = (raw, gguf.GGMLQuantizationType.Q4_0, golden)
    raw, golden = _q4(rng, F, D, with_min=True)
    out[f"blk.{i}.ffn_gate.weight"] = (raw, gguf.GGMLQuantizationType.Q4_1, golden)
    bf16 = rng.normal(size=(F, D)).astype(np.float32)
    bf16_bits = (bf16.view(np.uint32) >> 16).astype(np.uint16)  # Truncation to bf16.
    out[f"blk.{i}.ffn_up.weight"] = (bf16_bits.view(np.uint8), gguf.GGMLQuantizationType.BF16,
                                     (bf16_bits.astype(np.uint32) << 16).view(np.float32))
    f32(f"blk.{i}.ffn_down.weight", (D, F))
  return out


def write_tiny_gguf(path, tensors, arch="llama", skip_keys=(), extra=None, endianess=gguf.GGUFEndian.LITTLE):
  """Writes a tiny llama GGUF with the given tensors ({name: (array, raw_dtype, golden)})."""
  writer = gguf.GGUFWriter(str(path), arch, endianess=endianess)
  keys = {
      "block_count": lambda: writer.add_block_count(L),
      "context_length": lambda: writer.add_context_length(128),
      "embedding_length": lambda: writer.add_embedding_length(D),
      "feed_forward_length": lambda: writer.add_feed_forward_length(F),
      "head_count": lambda: writer.add_head_count(N),
      "head_count_kv": lambda: writer.add_head_count_kv(NKV),
      "rope_freq_base": lambda: writer.add_rope_freq_base(5000.0),
      "rms_eps": lambda: writer.add_layer_norm_rms_eps(1e-6),
      "rope_dim": lambda: writer.add_rope_dimension_count(H),
      "vocab_size": lambda: writer.add_vocab_size(V),
  }
  for key, add in keys.items():
    if key not in skip_keys:
      add()
  writer.add_bos_token_id(1)
  writer.add_eos_token_id(2)
  if extra is not None:
    extra(writer)
  for name, (array, raw_dtype, _) in tensors.items():
    writer.add_tensor(name, array, raw_dtype=raw_dtype)
  writer.write_header_to_file()
  writer.write_kv_data_to_file()
  writer.write_tensors_to_file()
  writer.close()
  return path


def _hf_name(gguf_name):
  return gguf_io._hf_names(L)[gguf_name]


def test_tensors_are_dequantized_one_lookup_at_a_time(tmp_path, monkeypatch):
  """read_gguf validates names, shapes and types without dequantizing anything; each lookup reads its tensor then
  (and keeps nothing), so building a model never holds every dequantized tensor at once."""
  path = write_tiny_gguf(tmp_path / "tiny.gguf", _tiny_llama_tensors(np.random.default_rng(0), tied=False))
  reads = []
  real = gguf_io.read_tensor
  monkeypatch.setattr(gguf_io, "read_tensor", lambda p, info: reads.append(info.name) or real(p, info))
  _, out = gguf_io.read_gguf(path)
  assert reads == [] and len(out) == len(set(out)) > 0
  first, second = out["model.layers.0.self_attn.q_proj.weight"], out["model.layers.0.self_attn.q_proj.weight"]
  assert reads == ["blk.0.attn_q.weight"] * 2 and first is not second
  np.testing.assert_array_equal(first, second)


@pytest.mark.parametrize("tied", [True, False])
def test_tiny_llama_matches_hand_dequantized_goldens(tmp_path, tied):
  tensors = _tiny_llama_tensors(np.random.default_rng(0), tied=tied)
  config, out = gguf_io.read_gguf(write_tiny_gguf(tmp_path / "tiny.gguf", tensors))

  assert set(out) == {_hf_name(n) for n in tensors}
  assert ("lm_head.weight" in out) == (not tied)
  for name, (_, _, golden) in tensors.items():
    got = out[_hf_name(name)]
    assert got.dtype == np.float32 and got.shape == golden.shape, name
    np.testing.assert_array_equal(got, golden, err_msg=name)
  assert config == {
      "architectures": ["LlamaForCausalLM"], "model_type": "llama", "vocab_size": V, "hidden_size": D,
      "intermediate_size": F, "num_hidden_layers": L, "num_attention_heads": N, "num_key_value_heads": NKV,
      "head_dim": H, "hidden_act": "silu", "max_position_embeddings": 128,
      "rms_norm_eps": pytest.approx(1e-6), "rope_theta": 5000.0, "attention_bias": False, "mlp_bias": False,
      "tie_word_embeddings": tied, "torch_dtype": "float32", "bos_token_id": 1, "eos_token_id": 2}


def _rope(x_TxH, positions_T, theta, interleaved):
  """RoPE on one head: GGML's "normal" mode rotates adjacent pairs (2i, 2i+1); HF rotates (i, i + H/2)."""
  half = x_TxH.shape[-1] // 2
  angle_TxK = positions_T[:, None] * theta ** (-np.arange(half) / half)[None, :]
  cos, sin = np.cos(angle_TxK), np.sin(angle_TxK)
  if interleaved:
    a, b = x_TxH[:, 0::2], x_TxH[:, 1::2]
  else:
    a, b = x_TxH[:, :half], x_TxH[:, half:]
  return np.concatenate([a * cos - b * sin, a * sin + b * cos], axis=-1)


def test_reverse_permute_makes_hf_rope_equal_ggml_rope():
  """Attention scores from GGUF-layout weights + GGML RoPE equal those from un-permuted weights + HF RoPE."""
  rng = np.random.default_rng(1)
  heads, head_dim, d, t = 3, 8, 16, 5
  wq_gguf, wk_gguf = rng.normal(size=(2, heads * head_dim, d))
  x_TxD = rng.normal(size=(t, d))
  positions = np.arange(t, dtype=np.float64) * 3.0
  wq_hf = gguf_io.reverse_permute_qk(wq_gguf, heads)
  wk_hf = gguf_io.reverse_permute_qk(wk_gguf, heads)
  for h in range(heads):
    rows = slice(h * head_dim, (h + 1) * head_dim)
    q_g = _rope(x_TxD @ wq_gguf[rows].T, positions, 100.0, interleaved=True)
    k_g = _rope(x_TxD @ wk_gguf[rows].T, positions, 100.0, interleaved=True)
    q_h = _rope(x_TxD @ wq_hf[rows].T, positions, 100.0, interleaved=False)
    k_h = _rope(x_TxD @ wk_hf[rows].T, positions, 100.0, interleaved=False)
    np.testing.assert_allclose(q_h @ k_h.T, q_g @ k_g.T, rtol=1e-10, atol=1e-10)
  np.testing.assert_array_equal(gguf_io.reverse_permute_qk(llama_cpp_permute(wq_hf, heads), heads), wq_hf)


def test_rope_scaling_metadata(tmp_path):
  def extra(writer):
    writer.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
    writer.add_rope_scaling_factor(4.0)
    writer.add_rope_scaling_orig_ctx_len(32)

  tensors = _tiny_llama_tensors(np.random.default_rng(2))
  config, _ = gguf_io.read_gguf(write_tiny_gguf(tmp_path / "t.gguf", tensors, extra=extra))
  assert config["rope_scaling"] == {"rope_type": "linear", "factor": 4.0, "original_max_position_embeddings": 32}


def _converter_rope_factors(head_dim, theta, factor, low, high, old_len):
  """llama.cpp convert_hf_to_gguf.py's llama3 `rope_freqs` loop, restated: float32 frequencies, Python arithmetic."""
  freqs = 1.0 / (np.float32(theta) ** (np.arange(0, head_dim, 2, dtype=np.float32) / np.float32(head_dim)))
  out = []
  for freq in freqs:
    wavelen = 2 * math.pi / float(freq)
    if wavelen < old_len / high:
      out.append(1.0)
    elif wavelen > old_len / low:
      out.append(factor)
    else:
      smooth = (old_len / wavelen - low) / (high - low)
      out.append(1 / ((1 - smooth) / factor + smooth))
  return np.asarray(out, np.float32)


@pytest.mark.parametrize("head_dim, factor", [(128, 8.0), (64, 32.0), (128, 32.0)])  # 3.1 8B, 3.2 1B, 3.2 3B
def test_llama_3_rope_freqs_give_their_scaling(tmp_path, head_dim, factor):
  factors = _converter_rope_factors(head_dim, 500000.0, factor, 1.0, 4.0, 8192)
  assert gguf_io.llama3_scaling_of(factors, head_dim, 500000.0) == {
      "rope_type": "llama3", "factor": factor, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
      "original_max_position_embeddings": 8192}


@pytest.mark.parametrize("params", [(4.0, 1.0, 2.5, 2048), (8.0, 2.0, 8.0, 8192), (16.0, 1.0, 3.0, 100)])
def test_other_llama3_parameters_load_as_equivalent_ones(params):
  """Only the two wavelength bounds and the factor shape the factors, so the recovered parameters need not be the
  converter's, but their factors are."""
  factors = _converter_rope_factors(128, 10000.0, *params)
  scaling = gguf_io.llama3_scaling_of(factors, 128, 10000.0)
  assert isinstance(scaling["original_max_position_embeddings"], int) and scaling["factor"] == params[0]
  again = _converter_rope_factors(128, 10000.0, scaling["factor"], scaling["low_freq_factor"],
                                  scaling["high_freq_factor"], scaling["original_max_position_embeddings"])
  np.testing.assert_allclose(again, factors, rtol=1e-5)
  assert gguf_io.llama3_scaling_of(np.ones(64, np.float32), 128, 10000.0) == {}


def test_rope_freqs_tensor_sets_llama3_scaling(tmp_path):
  tensors = _tiny_llama_tensors(np.random.default_rng(0))
  factors = _converter_rope_factors(H, 500000.0, 8.0, 1.0, 4.0, 8)
  tensors["rope_freqs.weight"] = (factors, None, None)
  config, out = gguf_io.read_gguf(write_tiny_gguf(tmp_path / "l3.gguf", tensors))
  assert "rope_freqs.weight" not in out and config["rope_scaling"]["rope_type"] == "llama3"
  scaling = config["rope_scaling"]
  again = _converter_rope_factors(H, 500000.0, scaling["factor"], scaling["low_freq_factor"],
                                  scaling["high_freq_factor"], scaling["original_max_position_embeddings"])
  np.testing.assert_allclose(again, factors, rtol=1e-5)


@pytest.mark.parametrize("change, message", [
    (dict(factors=np.asarray([1.0, 3.0, 2.0, 8.0], np.float32)), r"holds RoPE factors that follow no llama3 scaling"),
    (dict(factors=np.asarray([1.0, 2.0, 8.0], np.float32)), r"has shape \(3,\), expected \(4,\)"),
    (dict(extra=lambda w: (w.add_rope_scaling_type(gguf.RopeScalingType.LINEAR), w.add_rope_scaling_factor(2.0))),
     r"and llama\.rope\.scaling\.type 'linear' both scale RoPE"),
    (dict(arch="qwen3"), r"in a qwen3 file: llama\.cpp writes it for llama files only"),
])
def test_rope_freqs_that_cannot_be_loaded_are_refused(tmp_path, change, message):
  tensors = _tiny_llama_tensors(np.random.default_rng(0))
  tensors["rope_freqs.weight"] = (change.get("factors", _converter_rope_factors(H, 5000.0, 8.0, 1.0, 4.0, 8)),
                                  None, None)
  arch = change.get("arch", "llama")
  path = write_tiny_gguf(tmp_path / "bad.gguf", tensors, arch=arch, extra=change.get("extra"))
  with pytest.raises(ValueError, match=rf"bad\.gguf: tensor 'rope_freqs\.weight' {message}"):
    gguf_io.read_gguf(path)


def test_missing_tensor_names_it(tmp_path):
  tensors = _tiny_llama_tensors(np.random.default_rng(3))
  del tensors["blk.1.ffn_down.weight"]
  with pytest.raises(ValueError, match=r"missing tensor 'blk\.1\.ffn_down\.weight'"):
    gguf_io.read_gguf(write_tiny_gguf(tmp_path / "t.gguf", tensors))


def test_misshapen_tensor_names_it_and_expected_shape(tmp_path):
  tensors = _tiny_llama_tensors(np.random.default_rng(4))
  tensors["blk.0.attn_k.weight"] = (np.zeros((N * H, D), np.float32), None, None)  # Should be (NKV*H, D).
  with pytest.raises(ValueError, match=r"'blk\.0\.attn_k\.weight'.*\(32, 32\), expected \(16, 32\)"):
    gguf_io.read_gguf(write_tiny_gguf(tmp_path / "t.gguf", tensors))


def test_unexpected_tensor_is_rejected(tmp_path):
  tensors = _tiny_llama_tensors(np.random.default_rng(5))
  tensors["blk.0.attn_q.bias"] = (np.zeros(N * H, np.float32), None, None)
  with pytest.raises(ValueError, match=r"unexpected GGUF tensors.*blk\.0\.attn_q\.bias"):
    gguf_io.read_gguf(write_tiny_gguf(tmp_path / "t.gguf", tensors))


def test_unsupported_quantization_names_tensor_and_type(tmp_path):
  tensors = _tiny_llama_tensors(np.random.default_rng(6))
  # Q8_1 (llama.cpp's intermediate type, never stored in model files; 40 bytes per 32 values in gguf-py's table).
  raw = np.random.default_rng(7).integers(0, 256, (F, 40)).astype(np.uint8)
  raw[:, :2] = _f16_bytes(np.full(F, 0.01))
  tensors["blk.1.ffn_gate.weight"] = (raw, gguf.GGMLQuantizationType.Q8_1, None)
  with pytest.raises(ValueError, match=r"'blk\.1\.ffn_gate\.weight'.*unsupported quantization type Q8_1"):
    gguf_io.read_gguf(write_tiny_gguf(tmp_path / "t.gguf", tensors))


def test_unsupported_architecture_names_field(tmp_path):
  tensors = _tiny_llama_tensors(np.random.default_rng(8))
  with pytest.raises(ValueError, match=r"general\.architecture 'gpt2'"):
    gguf_io.read_gguf(write_tiny_gguf(tmp_path / "t.gguf", tensors, arch="gpt2"))


def test_missing_metadata_field_names_it(tmp_path):
  tensors = _tiny_llama_tensors(np.random.default_rng(9))
  with pytest.raises(ValueError, match=r"'llama\.embedding_length' is missing"):
    gguf_io.read_gguf(write_tiny_gguf(tmp_path / "t.gguf", tensors, skip_keys=("embedding_length",)))


@pytest.fixture(scope="module")
def smollm2_both(smollm2_gguf):
  """(our config, our tensors, transformers' model) for the SmolLM2 GGUF."""
  require_asset(importlib.util.find_spec("transformers") is not None, "transformers is not installed")
  os.environ["HF_HUB_OFFLINE"] = "1"
  import torch
  import transformers

  config, tensors = gguf_io.read_gguf(smollm2_gguf)
  model = transformers.AutoModelForCausalLM.from_pretrained(
      str(smollm2_gguf.parent), gguf_file=smollm2_gguf.name, dtype=torch.float32)
  return config, tensors, model


@pytest.mark.slow
@pytest.mark.parity
def test_smollm2_tensors_match_transformers_gguf_loader(smollm2_both):
  _, tensors, model = smollm2_both
  state = {k: v.numpy() for k, v in model.state_dict().items()}
  if model.config.tie_word_embeddings:
    state.pop("lm_head.weight")  # transformers lists the tied matrix twice; we store it once.
  assert set(tensors) == set(state)
  max_diff = max(float(np.max(np.abs(tensors[k] - state[k]))) for k in state)
  for name, value in state.items():
    assert tensors[name].shape == value.shape, name
    np.testing.assert_allclose(tensors[name], value, rtol=0, atol=1e-7, err_msg=name)
  print(f"SmolLM2 max |dequantized diff| vs transformers: {max_diff:.3g}")


@pytest.mark.slow
@pytest.mark.parity
def test_smollm2_config_matches_transformers(smollm2_both):
  config, _, model = smollm2_both
  hf = model.config
  for key in ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
              "num_key_value_heads", "head_dim", "max_position_embeddings", "tie_word_embeddings",
              "bos_token_id", "eos_token_id", "pad_token_id", "hidden_act", "attention_bias", "mlp_bias"):
    assert config[key] == getattr(hf, key), key
  assert config["rms_norm_eps"] == pytest.approx(hf.rms_norm_eps, rel=1e-7)
  assert config["rope_theta"] == hf.rope_parameters["rope_theta"]
  assert hf.rope_parameters.get("rope_type", "default") == "default" and "rope_scaling" not in config
  # transformers builds a LlamaConfig from our dict that equals its own on every model-defining field.
  import transformers
  ours = transformers.LlamaConfig(**config)
  assert ours.rope_parameters == hf.rope_parameters


def _reader_view(path):
  """The gguf package's GGUFReader's view of a file: metadata as Python values, tensor (type, dims, offset, bytes)."""
  reader = gguf.GGUFReader(str(path))
  metadata = {name: field.contents() for name, field in reader.fields.items()}
  tensors = {t.name: (t.tensor_type, tuple(int(d) for d in t.shape), int(t.data_offset), int(t.n_bytes))
             for t in reader.tensors}
  return metadata, tensors, reader


def _assert_header_is_the_readers(path, dequantized=None):
  header = gguf_io.read_header(path)
  metadata, tensors, reader = _reader_view(path)
  assert list(header.metadata) == list(metadata)  # the same keys, in file order (with GGUF.* pseudo-keys)
  for key, value in metadata.items():
    assert header.metadata[key] == value and type(header.metadata[key]) is type(value), key
    if isinstance(value, list) and value:
      assert type(header.metadata[key][0]) is type(value[0]), key
  assert {n: (i.qtype, i.dims, i.offset, i.nbytes) for n, i in header.tensors.items()} == tensors
  for t in reader.tensors[:dequantized]:
    # The reader's float tensors are views in the file's byte order; its quantized ones are byte arrays.
    plain = t.tensor_type in (gguf.GGMLQuantizationType.F32, gguf.GGMLQuantizationType.F16)
    want = np.asarray(t.data, np.float32) if plain else gguf.dequantize(t.data, t.tensor_type)
    np.testing.assert_array_equal(gguf_io.read_tensor(path, header.tensors[t.name]),
                                  want.reshape(header.tensors[t.name].shape))
  return header


@pytest.mark.parametrize("endianess", [gguf.GGUFEndian.LITTLE, gguf.GGUFEndian.BIG])
def test_header_equals_the_gguf_packages_reader_on_every_value_type(tmp_path, endianess):
  rng = np.random.default_rng(0)

  def extra(writer):  # one key per GGUF value type, arrays included, non-ASCII strings
    writer.add_uint8("t.u8", 250)
    writer.add_int8("t.i8", -5)
    writer.add_uint16("t.u16", 65000)
    writer.add_int16("t.i16", -30000)
    writer.add_uint32("t.u32", 2**32 - 1)
    writer.add_int32("t.i32", -2**31)
    writer.add_float32("t.f32", 1e-5)
    writer.add_uint64("t.u64", 2**64 - 1)
    writer.add_int64("t.i64", -2**63)
    writer.add_float64("t.f64", 0.1)
    writer.add_bool("t.bool", True)
    writer.add_string("t.str", "héllo ▁wörld")
    writer.add_array("t.ints", [1, -2, 3])
    writer.add_array("t.floats", [0.5, -1.25])
    writer.add_array("t.bools", [True, False, True])
    writer.add_array("t.strs", ["a", "", "Ġthe", "日本"])

  tensors = _tiny_llama_tensors(rng)
  path = write_tiny_gguf(tmp_path / "typed.gguf", tensors, extra=extra, endianess=endianess)
  header = _assert_header_is_the_readers(path)
  assert header.metadata["t.strs"] == ["a", "", "Ġthe", "日本"] and header.metadata["t.u64"] == 2**64 - 1
  # The whole model reads back in either byte order: every tensor equals its hand-dequantized golden.
  _, read = gguf_io.read_gguf(path)
  for name, (_, _, golden) in tensors.items():
    np.testing.assert_array_equal(read[_hf_name(name)], golden, err_msg=name)


def test_smollm2_header_equals_the_gguf_packages_reader(smollm2_gguf):
  header = _assert_header_is_the_readers(smollm2_gguf, dequantized=3)
  assert len(header.metadata["tokenizer.ggml.tokens"]) == 49152 and header.metadata["general.architecture"] == "llama"


@pytest.mark.parametrize("old,new,message", [
    (b"blk.0.attn_k.weight", b"blk.0.attn_v.weight", "tensor 'blk.0.attn_v.weight' is described twice"),
    (b"t.second", b"t.first_", "metadata key 't.first_' appears twice")])
def test_duplicate_names_are_refused(tmp_path, old, new, message):
  """A same-length rename in the header: a well-formed file that names a tensor or a key twice."""
  extra = lambda w: (w.add_uint32("t.first_", 1), w.add_uint32("t.second", 2))  # noqa: E731
  path = write_tiny_gguf(tmp_path / "dup.gguf", _tiny_llama_tensors(np.random.default_rng(0)), extra=extra)
  data = path.read_bytes()
  assert data.count(old) == 1
  path.write_bytes(data.replace(old, new))
  with pytest.raises(gguf_io.ModelFileError, match=message):
    gguf_io.read_metadata(path)
  with pytest.raises(gguf_io.ModelFileError, match=message):
    gguf_io.read_gguf(path)


def test_partial_rotary_is_refused(tmp_path):
  # rope.dimension_count < key_length: RoPE on part of each head (llama.cpp refuses it for llama files). Read as
  # full rotary, every attention score would change.
  tensors = _tiny_llama_tensors(np.random.default_rng(10))
  rope_half = lambda w: (w.add_key_length(H), w.add_rope_dimension_count(H // 2))  # noqa: E731
  with pytest.raises(ValueError, match=r"llama\.rope\.dimension_count 4 differs from the head size 8"):
    gguf_io.read_gguf(write_tiny_gguf(tmp_path / "t.gguf", tensors, skip_keys=("rope_dim",), extra=rope_half))
  both = lambda w: (w.add_key_length(H), w.add_rope_dimension_count(H))  # noqa: E731
  config, _ = gguf_io.read_gguf(write_tiny_gguf(tmp_path / "ok.gguf", tensors, skip_keys=("rope_dim",), extra=both))
  assert config["head_dim"] == H


@pytest.mark.parametrize("skip,add,message", [
    ("head_count_kv", lambda w: w.add_array("llama.attention.head_count_kv", [NKV] * L),
     r"'llama\.attention\.head_count_kv' is \[2, 2\], expected an integer"),
    ("block_count", lambda w: w.add_string("llama.block_count", "2"),
     r"'llama\.block_count' is '2', expected an integer"),
    ("rms_eps", lambda w: w.add_string("llama.attention.layer_norm_rms_epsilon", "abc"),
     r"'llama\.attention\.layer_norm_rms_epsilon' is 'abc', expected a number"),
    ("head_count", lambda w: w.add_head_count(0), r"'llama\.attention\.head_count' is 0, expected a positive count")])
def test_mistyped_metadata_field_names_it(tmp_path, skip, add, message):
  # A per-layer array, a string or a zero where a count belongs: the error names the key (it was a bare TypeError /
  # float() / ZeroDivisionError message, or a string count silently accepted).
  tensors = _tiny_llama_tensors(np.random.default_rng(11))
  with pytest.raises(ValueError, match=message):
    gguf_io.read_gguf(write_tiny_gguf(tmp_path / "t.gguf", tensors, skip_keys=(skip,), extra=add))


def test_attention_scale_other_than_the_familys_is_refused(tmp_path):
  # llama.cpp multiplies q.k by {arch}.attention.scale when set (else 1 / sqrt(head_dim)) and the rotated q, k by
  # rope.scaling.attn_factor; transformers' llama config has neither, so loading such a file as a plain llama would
  # silently change every attention score. The family's own scale (or 0, llama.cpp's "unset") is accepted.
  tensors = _tiny_llama_tensors(np.random.default_rng(12))
  other = lambda w: w.add_float32("llama.attention.scale", 0.125 * 2)  # noqa: E731
  with pytest.raises(ValueError, match=r"'llama\.attention\.scale' is 0\.25.*1 / sqrt\(8\)"):
    gguf_io.read_gguf(write_tiny_gguf(tmp_path / "s.gguf", tensors, extra=other))
  factor = lambda w: w.add_float32("llama.rope.scaling.attn_factor", 1.5)  # noqa: E731
  with pytest.raises(ValueError, match=r"'llama\.rope\.scaling\.attn_factor' is 1\.5; only 1\.0"):
    gguf_io.read_gguf(write_tiny_gguf(tmp_path / "f.gguf", tensors, extra=factor))
  for name, value in (("own", H ** -0.5), ("unset", 0.0)):
    same = lambda w, v=value: (w.add_float32("llama.attention.scale", v),  # noqa: E731
                               w.add_float32("llama.rope.scaling.attn_factor", 1.0))
    config, _ = gguf_io.read_gguf(write_tiny_gguf(tmp_path / f"{name}.gguf", tensors, extra=same))
    assert config["head_dim"] == H and "query_pre_attn_scalar" not in config


# ------------------------------------------------------------------ K-quants and Q5_0 / Q5_1, decoded by hand
# Each golden restates ggml-quants.c's dequantize_row_* for one block; the reader's values come from the gguf
# package. Scales (d, dmin) are finite f16; every other byte is random. Python ints throughout (numpy's uint8 would
# wrap the subtractions).
def _scale_min_k4(j, scales):
  """ggml's get_scale_min_k4: the j-th 6-bit (scale, min) pair of a K-quant's 12 packed scale bytes."""
  if j < 4:
    return scales[j] & 63, scales[j + 4] & 63
  return ((scales[j + 4] & 0xF) | ((scales[j - 4] >> 6) << 4),
          (scales[j + 4] >> 4) | ((scales[j] >> 6) << 4))


def _half(b):
  return float(np.frombuffer(bytes(b), np.float16)[0])


def _q4_k_block(b):
  d, dmin, scales, qs = _half(b[0:2]), _half(b[2:4]), b[4:16], b[16:144]
  y = []
  for j in range(4):
    (s1, m1), (s2, m2) = _scale_min_k4(2 * j, scales), _scale_min_k4(2 * j + 1, scales)
    q = qs[32 * j:32 * j + 32]
    y += [d * s1 * (x & 0xF) - dmin * m1 for x in q] + [d * s2 * (x >> 4) - dmin * m2 for x in q]
  return y


def _q5_k_block(b):
  d, dmin, scales, qh, qs = _half(b[0:2]), _half(b[2:4]), b[4:16], b[16:48], b[48:176]
  y = []
  for j in range(4):
    (s1, m1), (s2, m2) = _scale_min_k4(2 * j, scales), _scale_min_k4(2 * j + 1, scales)
    q = qs[32 * j:32 * j + 32]
    lo = [(x & 0xF) + (16 if h & (1 << (2 * j)) else 0) for x, h in zip(q, qh)]
    hi = [(x >> 4) + (16 if h & (2 << (2 * j)) else 0) for x, h in zip(q, qh)]
    y += [d * s1 * v - dmin * m1 for v in lo] + [d * s2 * v - dmin * m2 for v in hi]
  return y


def _q6_k_block(b):
  ql, qh, d = [int(x) for x in b[0:128]], [int(x) for x in b[128:192]], _half(b[208:210])
  scales = [int(x) for x in b[192:208].view(np.int8)]
  y = [0.0] * 256
  for n in range(2):
    for l in range(32):
      base_l, base_h, sc = 64 * n, 32 * n, scales[8 * n:8 * n + 8]
      q1 = ((ql[base_l + l] & 0xF) | (((qh[base_h + l] >> 0) & 3) << 4)) - 32
      q2 = ((ql[base_l + l + 32] & 0xF) | (((qh[base_h + l] >> 2) & 3) << 4)) - 32
      q3 = ((ql[base_l + l] >> 4) | (((qh[base_h + l] >> 4) & 3) << 4)) - 32
      q4 = ((ql[base_l + l + 32] >> 4) | (((qh[base_h + l] >> 6) & 3) << 4)) - 32
      i = l // 16
      for k, q in enumerate((q1, q2, q3, q4)):
        y[128 * n + 32 * k + l] = d * float(sc[i + 2 * k]) * q
  return y


def _q5_block(b, with_min):
  d = _half(b[0:2])
  m = _half(b[2:4]) if with_min else 0.0
  rest = b[4:] if with_min else b[2:]
  qh, qs = int.from_bytes(bytes(rest[0:4]), "little"), [int(x) for x in rest[4:20]]
  y = [0.0] * 32
  for j in range(16):
    x0 = (qs[j] & 0xF) | (((qh >> j) << 4) & 0x10)
    x1 = (qs[j] >> 4) | ((qh >> (j + 12)) & 0x10)
    y[j], y[j + 16] = (x0 * d + m, x1 * d + m) if with_min else ((x0 - 16) * d, (x1 - 16) * d)
  return y


def _q2_k_block(b):
  scales, qs = [int(x) for x in b[0:16]], [int(x) for x in b[16:80]]
  d, dmin = _half(b[80:82]), _half(b[82:84])
  y, i = [], 0
  for n in range(2):
    q = qs[32 * n:32 * n + 32]
    for j in range(4):
      for half in (q[:16], q[16:]):
        sc = scales[i]
        i += 1
        y += [d * (sc & 0xF) * ((x >> (2 * j)) & 3) - dmin * (sc >> 4) for x in half]
  return y


def _q3_k_block(b):
  hmask, qs, packed, d = [int(x) for x in b[0:32]], [int(x) for x in b[32:96]], bytes(b[96:108]), _half(b[108:110])
  # ggml unpacks 16 6-bit scales from 12 bytes through four little-endian uint32 words (kmask1 = 0x03030303,
  # kmask2 = 0x0f0f0f0f), then reads them as int8 minus 32.
  aux = [int.from_bytes(packed[4 * k:4 * k + 4], "little") for k in range(3)]
  tmp, k1, k2 = aux[2], 0x03030303, 0x0F0F0F0F
  words = [(aux[0] & k2) | (((tmp >> 0) & k1) << 4), (aux[1] & k2) | (((tmp >> 2) & k1) << 4),
           ((aux[0] >> 4) & k2) | (((tmp >> 4) & k1) << 4), ((aux[1] >> 4) & k2) | (((tmp >> 6) & k1) << 4)]
  scales = [int(v) for v in np.frombuffer(b"".join(w.to_bytes(4, "little") for w in words), np.int8)]
  y, i, m = [], 0, 1
  for n in range(2):
    q = qs[32 * n:32 * n + 32]
    for j in range(4):
      for offset in (0, 16):
        dl = d * (scales[i] - 32)
        i += 1
        y += [dl * (((q[offset + l] >> (2 * j)) & 3) - (0 if hmask[offset + l] & m else 4)) for l in range(16)]
      m <<= 1
  return y


# ggml's kvalues_iq4nl: the 16 non-uniform levels IQ4_NL / IQ4_XS nibbles index.
_IQ4_LEVELS = (-127, -104, -83, -65, -49, -35, -22, -10, 1, 13, 25, 38, 53, 69, 89, 113)


def _iq4_nl_block(b):
  d, qs = _half(b[0:2]), [int(x) for x in b[2:18]]
  return [d * _IQ4_LEVELS[x & 0xF] for x in qs] + [d * _IQ4_LEVELS[x >> 4] for x in qs]


def _iq4_xs_block(b):
  d, scales_h = _half(b[0:2]), int.from_bytes(bytes(b[2:4]), "little")
  scales_l, qs = [int(x) for x in b[4:8]], [int(x) for x in b[8:136]]
  y = []
  for ib in range(8):  # eight 32-value sub-blocks, each with a 6-bit scale (4 low bits + 2 high bits) minus 32
    scale = ((scales_l[ib // 2] >> (4 * (ib % 2))) & 0xF) | (((scales_h >> (2 * ib)) & 3) << 4)
    sub = qs[16 * ib:16 * ib + 16]
    y += [d * (scale - 32) * _IQ4_LEVELS[x & 0xF] for x in sub] + [d * (scale - 32) * _IQ4_LEVELS[x >> 4] for x in sub]
  return y


# qtype -> (block bytes, values per block, byte ranges of f16 scales, hand decoder)
_HAND_DECODED = {
    gguf.GGMLQuantizationType.Q2_K: (84, 256, ((80, 82), (82, 84)), _q2_k_block),
    gguf.GGMLQuantizationType.Q3_K: (110, 256, ((108, 110),), _q3_k_block),
    gguf.GGMLQuantizationType.Q4_K: (144, 256, ((0, 2), (2, 4)), _q4_k_block),
    gguf.GGMLQuantizationType.Q5_K: (176, 256, ((0, 2), (2, 4)), _q5_k_block),
    gguf.GGMLQuantizationType.Q6_K: (210, 256, ((208, 210),), _q6_k_block),
    gguf.GGMLQuantizationType.IQ4_NL: (18, 32, ((0, 2),), _iq4_nl_block),
    gguf.GGMLQuantizationType.IQ4_XS: (136, 256, ((0, 2),), _iq4_xs_block),
    gguf.GGMLQuantizationType.Q5_0: (22, 32, ((0, 2),), lambda b: _q5_block(b, False)),
    gguf.GGMLQuantizationType.Q5_1: (24, 32, ((0, 2), (2, 4)), lambda b: _q5_block(b, True)),
}


@pytest.mark.parametrize("qtype", sorted(_HAND_DECODED, key=lambda t: t.name), ids=lambda t: t.name)
def test_k_quants_and_q5_match_hand_decoded_blocks(tmp_path, qtype):
  block_bytes, per_block, half_ranges, decode = _HAND_DECODED[qtype]
  rows, cols = 3, 2 * 256
  rng = np.random.default_rng(int(qtype))
  raw = rng.integers(0, 256, (rows * cols // per_block, block_bytes)).astype(np.uint8)
  for lo, hi in half_ranges:
    raw[:, lo:hi] = _f16_bytes(rng.uniform(-0.05, 0.05, len(raw)))
  golden = np.asarray([v for block in raw for v in decode(block)], np.float32).reshape(rows, cols)
  writer = gguf.GGUFWriter(str(tmp_path / "q.gguf"), "llama")
  writer.add_tensor("w", raw.reshape(rows, -1), raw_dtype=qtype)
  writer.write_header_to_file()
  writer.write_kv_data_to_file()
  writer.write_tensors_to_file()
  writer.close()
  info = gguf_io.read_header(tmp_path / "q.gguf").tensors["w"]
  assert info.shape == (rows, cols)
  np.testing.assert_allclose(gguf_io.read_tensor(tmp_path / "q.gguf", info), golden, rtol=1e-6, atol=1e-7)
