"""Logit parity with transformers on tiny random checkpoints of each family, export round trip, load errors."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import require_asset
from flax import nnx
from hf_fixtures import FAMILIES, hf_logits, make_hf_model, padded_batch
from model_fixtures import forward

from jaxrlhf.models import ModelConfig, from_pretrained, model_from_hf_tensors, save_pretrained
from jaxrlhf.models import hf as hf_io

TOL = 1e-4


def _require_parity():
  try:
    import torch  # noqa: F401
    import transformers  # noqa: F401
  except ImportError:
    require_asset(False, "torch/transformers missing: pip install -e '.[parity]'")


def _real(x, mask):
  return x[mask == 1]


@pytest.mark.parity
@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_logits_match_transformers_with_padding(family, tmp_path):
  _require_parity()
  import transformers

  hf_model = make_hf_model(family)
  hf_model.save_pretrained(tmp_path / "hf")
  ids, mask = padded_batch()
  ref = hf_logits(hf_model, ids, mask)

  model, config = from_pretrained(tmp_path / "hf")
  ours = np.asarray(forward(model, jnp.asarray(ids), jnp.asarray(mask)))
  diff = np.abs(_real(ours, mask) - _real(ref, mask)).max()
  print(f"parity {family}: max|logit diff| = {diff:.3g}")
  assert diff <= TOL, f"{family}: max |logit diff| {diff}"
  assert np.abs(_real(ref, mask)).max() > 0.5  # logits are not trivially small

  # Our export, loaded back by transformers, reproduces the original logits.
  save_pretrained(model, tmp_path / "ours")
  reloaded = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "ours", attn_implementation="eager")
  assert type(reloaded).__name__ == FAMILIES[family][1]
  ref_roundtrip = hf_logits(reloaded.eval(), ids, mask)
  assert np.abs(_real(ref_roundtrip, mask) - _real(ref, mask)).max() <= TOL
  assert np.abs(_real(ref_roundtrip, mask) - _real(ours, mask)).max() <= TOL
  assert ModelConfig.from_hf(json.loads((tmp_path / "ours" / "config.json").read_text())) == config


@pytest.mark.parity
@pytest.mark.parametrize("family, override", [
    ("mistral_sliding", dict(sliding_window=None)),
    ("llama3_untied_scaled", dict(rope_scaling=None)),
    ("llama_linear_rope", dict(rope_scaling=None)),
    ("phi3_sliding", dict(sliding_window=None)),
])
def test_parity_is_sensitive_to_the_switch_under_test(family, override, tmp_path):
  """The tiny cases really exercise sliding windows and rope scaling: turning them off breaks parity."""
  _require_parity()
  hf_model = make_hf_model(family)
  hf_model.save_pretrained(tmp_path)
  ids, mask = padded_batch()
  ref = hf_logits(hf_model, ids, mask)
  model, _ = from_pretrained(tmp_path, **override)
  ours = np.asarray(forward(model, jnp.asarray(ids), jnp.asarray(mask)))
  assert np.abs(_real(ours, mask) - _real(ref, mask)).max() > 1e-2


# transformers config.json keys whose defaults differ by class (tying, head_dim, kv heads, window), and the class
# defaults the omitted-key parity case gives its model (so the tensors fit what transformers assumes).
_CLASS_DEFAULT_KEYS = ("tie_word_embeddings", "head_dim", "num_key_value_heads", "sliding_window")
_OMITTED_KEY_CASES = {
    "gemma2": dict(tie_word_embeddings=True, head_dim=256, num_key_value_heads=4),
    "gemma3_untied": dict(tie_word_embeddings=True, head_dim=256, num_key_value_heads=4),
    "qwen3_untied": dict(num_attention_heads=32, num_key_value_heads=32, head_dim=128),
    "mistral_sliding": dict(num_attention_heads=16, num_key_value_heads=8, head_dim=None, sliding_window=4096),
    "llama_gqa_tied": dict(tie_word_embeddings=False, num_key_value_heads=4),
    "phi3_sliding": dict(num_key_value_heads=4, sliding_window=None),
}


@pytest.mark.parametrize("model_type", ["llama", "mistral", "phi3", "qwen2", "qwen3", "gemma2", "gemma3_text"])
def test_omitted_config_keys_read_as_transformers_reads_them(model_type):
  """A config.json with only the sizes: tying, head_dim, kv heads, window and context length are what that
  model_type's transformers config class assumes (Gemma ties and fixes head_dim 256; Qwen3 fixes head_dim 128)."""
  _require_parity()
  import transformers

  sizes = dict(model_type=model_type, vocab_size=97, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
               num_attention_heads=32)
  reference = transformers.AutoConfig.for_model(**sizes)
  ours = ModelConfig.from_hf(sizes)
  head_dim = getattr(reference, "head_dim", None) or reference.hidden_size // reference.num_attention_heads
  window = None if model_type in ("llama", "qwen2", "qwen3") else reference.sliding_window  # qwen: no use_sliding
  assert (ours.tie_word_embeddings, ours.head_dim, ours.num_kv_heads, ours.sliding_window,
          ours.max_position_embeddings) == (reference.tie_word_embeddings, head_dim, reference.num_key_value_heads,
                                            window, reference.max_position_embeddings)


@pytest.mark.parity
@pytest.mark.parametrize("family", sorted(_OMITTED_KEY_CASES))
def test_folder_without_class_default_keys_matches_transformers(family, tmp_path):
  """A transformers checkpoint whose config.json omits the keys its class defaults (as official Gemma folders omit
  tie_word_embeddings) loads and gives the logits transformers computes from that same folder."""
  _require_parity()
  import transformers

  make_hf_model(family, **_OMITTED_KEY_CASES[family]).save_pretrained(tmp_path)
  hf_config = json.loads((tmp_path / "config.json").read_text())
  for key in _CLASS_DEFAULT_KEYS:
    hf_config.pop(key, None)
  (tmp_path / "config.json").write_text(json.dumps(hf_config))
  reference = transformers.AutoModelForCausalLM.from_pretrained(tmp_path, attn_implementation="eager").eval()
  ids, mask = padded_batch()
  ref = hf_logits(reference, ids, mask)

  model, config = from_pretrained(tmp_path)
  assert config.tie_word_embeddings == reference.config.tie_word_embeddings
  ours = np.asarray(forward(model, jnp.asarray(ids), jnp.asarray(mask)))
  diff = np.abs(_real(ours, mask) - _real(ref, mask)).max()
  assert diff <= TOL, f"{family}: max |logit diff| {diff}"
  assert np.abs(_real(ref, mask)).max() > 0.5


@pytest.mark.parametrize("changes, pattern", [
    # LlamaAttention has no window; Qwen2 is exported with use_sliding_window=False (Mistral is the windowed Llama).
    (dict(family="llama", sliding_window=4),
     r"sliding_window=4 cannot be exported as family 'llama' \(transformers' LlamaForCausalLM fixes None\)"),
    (dict(family="qwen2", qkv_bias=True, sliding_window=4), r"sliding_window=4 cannot be exported as family 'qwen2'"),
    # Llama's attention_bias puts a bias on q, k, v and o alike.
    (dict(family="llama", qkv_bias=True), r"qkv_bias=True and out_bias=False must be equal for family 'llama'"),
    (dict(family="llama", out_bias=True), r"qkv_bias=False and out_bias=True must be equal for family 'llama'"),
    # Mistral hard-codes bias=False on every projection.
    (dict(family="llama", hf_model_type="mistral", qkv_bias=True, out_bias=True),
     r"qkv_bias=True cannot be exported as hf_model_type 'mistral' \(transformers' MistralForCausalLM fixes False\)"),
    (dict(family="llama", hf_model_type="mistral", mlp_bias=True), r"mlp_bias=True cannot be exported as hf_model_type "
                                                                   r"'mistral'"),
    # Qwen2 always has q/k/v biases, never an o or MLP bias.
    (dict(family="qwen2"), r"qkv_bias=False cannot be exported as family 'qwen2' \(transformers' Qwen2ForCausalLM "
                           r"fixes True\)"),
    (dict(family="qwen2", qkv_bias=True, out_bias=True), r"out_bias=True cannot be exported as family 'qwen2'"),
    (dict(family="qwen2", qkv_bias=True, mlp_bias=True), r"mlp_bias=True cannot be exported as family 'qwen2'"),
    # Llama-family architectures use RMSNorm, RoPE and a gated MLP; GPT-2 the opposite, with every bias.
    (dict(family="llama", norm="layernorm"), r"norm='layernorm' cannot be exported as family 'llama'"),
    (dict(family="llama", position="learned"), r"position='learned' cannot be exported as family 'llama'"),
    (dict(family="qwen2", qkv_bias=True, gated_mlp=False), r"gated_mlp=False cannot be exported as family 'qwen2'"),
    (dict(family="gpt2", num_kv_heads=4), r"norm='rmsnorm' cannot be exported as family 'gpt2' \(transformers' "
                                          r"GPT2LMHeadModel fixes 'layernorm'\)"),
])
def test_export_refuses_settings_transformers_hard_codes(changes, pattern):
  """Settings the exported config.json cannot carry (transformers' class computes its own fixed value instead) are
  refused, naming the setting, rather than exported as a model that computes something else."""
  with pytest.raises(ValueError, match=pattern):
    ModelConfig(**changes).to_hf()


def test_export_keeps_the_settings_transformers_reads():
  """The counterparts that config.json does carry still export: Mistral's window, Llama's attention and MLP
  biases, Qwen2's q/k/v biases."""
  mistral = ModelConfig(family="llama", hf_model_type="mistral", sliding_window=4).to_hf()
  llama = ModelConfig(family="llama", qkv_bias=True, out_bias=True, mlp_bias=True).to_hf()
  assert mistral["sliding_window"] == 4 and (llama["attention_bias"], llama["mlp_bias"]) == (True, True)
  assert ModelConfig(family="qwen2", qkv_bias=True).to_hf()["model_type"] == "qwen2"


# ----------------------------------------------------------------------------- load errors (no torch needed)
def _tiny_checkpoint():
  """(hf config dict, {hf name: float32 array}) of a 2-layer Qwen2 with GQA and biases, from numpy."""
  config = ModelConfig(family="qwen2", hf_model_type="qwen2", vocab_size=11, embed_dim=8, num_layers=2,
                       num_heads=2, num_kv_heads=1, head_dim=4, mlp_dim=12, qkv_bias=True)
  rng = np.random.default_rng(0)
  tensors = {name: rng.standard_normal(shape).astype(np.float32)
             for name, shape in hf_io.expected_hf_shapes(config).items()}
  return config.to_hf(), tensors


def nnx_pure(model):
  return nnx.to_pure_dict(nnx.state(model, nnx.Param))


def test_tensor_round_trip_is_lossless():
  hf_config, tensors = _tiny_checkpoint()
  model, config = model_from_hf_tensors(hf_config, tensors)
  again = hf_io.params_to_hf(config, jax.tree.map(np.asarray, nnx_pure(model)))
  assert again.keys() == tensors.keys()
  for name in tensors:
    np.testing.assert_array_equal(again[name], tensors[name], err_msg=name)


def test_missing_tensor_is_named():
  hf_config, tensors = _tiny_checkpoint()
  del tensors["model.layers.1.self_attn.k_proj.bias"]
  with pytest.raises(ValueError, match=r"missing tensor 'model\.layers\.1\.self_attn\.k_proj\.bias'.*\(4,\)"):
    model_from_hf_tensors(hf_config, tensors)


def test_misshapen_tensor_names_expected_and_actual_shape():
  hf_config, tensors = _tiny_checkpoint()
  tensors["model.layers.0.mlp.up_proj.weight"] = np.zeros((12, 9), np.float32)
  with pytest.raises(ValueError, match=r"'model\.layers\.0\.mlp\.up_proj\.weight' has shape \(12, 9\), "
                                       r"expected \(12, 8\)"):
    model_from_hf_tensors(hf_config, tensors)


def test_unexpected_tensor_is_named():
  hf_config, tensors = _tiny_checkpoint()
  tensors["score.weight"] = np.zeros((1, 8), np.float32)
  with pytest.raises(ValueError, match=r"unexpected tensors .*score\.weight"):
    model_from_hf_tensors(hf_config, tensors)


@pytest.mark.parametrize("field, value, pattern", [
    ("model_type", "mamba", r"model_type='mamba' is not supported; expected one of \['llama', 'mistral'"),
    ("architectures", ["Qwen2ForSequenceClassification"], r"architectures='Qwen2ForSequenceClassification'"),
    ("hidden_act", "tanh", r"hidden_act='tanh' is not supported"),
    ("rope_parameters", {"rope_type": "yarn", "factor": 4.0, "rope_theta": 1e4},
     r"rope_scaling\.rope_type='yarn' is not supported; expected one of \['default', 'linear', 'llama3', 'longrope'\]"),
    ("use_sliding_window", True, r"use_sliding_window"),
    # Among our classes only transformers' Phi3 rotates part of each head (the others would fail in transformers).
    ("partial_rotary_factor", 0.5, r"partial_rotary_factor=0\.5 is supported for model_type 'phi3', not 'qwen2'"),
])
def test_unsupported_config_fields_are_named(field, value, pattern):
  hf_config, tensors = _tiny_checkpoint()
  hf_config[field] = value
  with pytest.raises(ValueError, match=pattern):
    model_from_hf_tensors(hf_config, tensors)


def test_folder_round_trip_bfloat16_and_sharded_index(tmp_path):
  """bf16 safetensors written by us are read back bit-exactly, also when split over an index.json."""
  hf_config, tensors = _tiny_checkpoint()
  model, _ = model_from_hf_tensors(hf_config, tensors, dtype=jnp.bfloat16)
  save_pretrained(model, tmp_path / "one")
  written = hf_io.SafetensorsFile(tmp_path / "one" / "model.safetensors")
  assert json.loads((tmp_path / "one" / "config.json").read_text())["dtype"] == "bfloat16"
  assert all(written[n].dtype == jnp.bfloat16 for n in written)

  names = sorted(written)
  shard = tmp_path / "sharded"
  shard.mkdir()
  (shard / "config.json").write_text((tmp_path / "one" / "config.json").read_text())
  weight_map = {}
  for k, part in enumerate((names[::2], names[1::2])):
    fname = f"model-0000{k + 1}-of-00002.safetensors"
    hf_io.write_safetensors(shard / fname, {n: np.asarray(written[n]) for n in part})
    weight_map.update({n: fname for n in part})
  (shard / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
  loaded, config = from_pretrained(shard, dtype=jnp.bfloat16)
  assert config.param_dtype == "bfloat16"
  for a, b in zip(jax.tree.leaves(nnx_pure(loaded)), jax.tree.leaves(nnx_pure(model))):
    assert a.dtype == jnp.bfloat16
    np.testing.assert_array_equal(np.asarray(a, np.float32), np.asarray(b, np.float32))
  assert forward(loaded, jnp.array([[1, 2, 3]])).dtype == jnp.float32


def test_frozen_model_exports_its_weights(tmp_path):
  """A model whose weights are FrozenParams (a reference policy as the stages hold it) exports them all."""
  from jaxrlhf.stages.common import frozen

  hf_config, tensors = _tiny_checkpoint()
  model, _ = model_from_hf_tensors(hf_config, tensors)
  save_pretrained(frozen(model), tmp_path)
  written = hf_io.SafetensorsFile(tmp_path / "model.safetensors")
  assert sorted(written) == sorted(tensors)
  for name in tensors:
    np.testing.assert_array_equal(written[name], tensors[name], err_msg=name)


def test_folder_without_weights_is_rejected(tmp_path):
  (tmp_path / "config.json").write_text("{}")
  with pytest.raises(ValueError, match="model.safetensors"):
    from_pretrained(tmp_path)


def test_safetensors_readable_by_the_reference_library(tmp_path):
  """Our writer produces files the `safetensors` package itself reads (what transformers uses)."""
  from safetensors.numpy import load_file
  arrays = {"a": np.arange(6, dtype=np.float32).reshape(2, 3), "b": np.ones((5,), np.float16)}
  hf_io.write_safetensors(tmp_path / "x.safetensors", arrays)
  loaded = load_file(tmp_path / "x.safetensors")
  for name, value in arrays.items():
    np.testing.assert_array_equal(loaded[name], value)


def test_from_pretrained_with_mesh_places_sharded_params(tmp_path):
  hf_config, tensors = _tiny_checkpoint()
  model, _ = model_from_hf_tensors(hf_config, tensors)
  save_pretrained(model, tmp_path)
  auto = jax.sharding.AxisType.Auto
  mesh = jax.make_mesh((2, 2, 2), ("data", "fsdp", "tensor"), axis_types=(auto,) * 3)
  sharded, _ = from_pretrained(tmp_path, mesh=mesh)
  up = sharded.layers.up_kernel[...]  # (L, D, F) = (2, 8, 12): embed over fsdp, mlp over tensor
  assert up.sharding.spec == jax.sharding.PartitionSpec(None, "fsdp", "tensor")
  assert up.addressable_shards[0].data.shape == (2, 4, 6)
  ids = jnp.array([[1, 2, 3, 4]])
  np.testing.assert_allclose(np.asarray(forward(sharded, ids)), np.asarray(forward(model, ids)), atol=1e-5)


def test_original_gpt2_naming_and_buffers_are_accepted():
  """OpenAI-era GPT-2 files lack the `transformer.` prefix and carry attention-mask buffers."""
  config = ModelConfig.from_hf({"model_type": "gpt2", "architectures": ["GPT2LMHeadModel"], "vocab_size": 13,
                                "n_embd": 8, "n_layer": 2, "n_head": 2, "n_positions": 6, "eos_token_id": [5, 6]})
  rng = np.random.default_rng(0)
  tensors = {name.removeprefix("transformer."): rng.standard_normal(shape).astype(np.float32)
             for name, shape in hf_io.expected_hf_shapes(config).items()}
  tensors["h.0.attn.bias"] = np.tril(np.ones((1, 1, 6, 6), np.float32))
  tensors["h.1.attn.masked_bias"] = np.array(-1e4, np.float32)
  model, loaded_config = model_from_hf_tensors(config.to_hf(), tensors)
  assert loaded_config == config and config.eos_token_id == (5, 6)
  np.testing.assert_array_equal(model.layers.q_kernel[...][1],
                                tensors["h.1.attn.c_attn.weight"][:, :8].reshape(8, 2, 4))
  np.testing.assert_array_equal(model.pos_embed[...], tensors["wpe.weight"])


@pytest.mark.parity
@pytest.mark.parametrize("family, changes", [("llama_gqa_tied", dict(rms_norm_eps=0.5)),
                                             ("gpt2", dict(layer_norm_epsilon=0.5))])
def test_norm_eps_is_read_applied_and_exported(family, changes, tmp_path):
  """A norm epsilon far from the default (0.5, larger than the activations' mean square) is read from config.json,
  used inside the norm as transformers uses it (mean(x^2) + eps, or var + eps), and written back by the export."""
  _require_parity()
  import transformers

  hf_model = make_hf_model(family, **changes)
  hf_model.save_pretrained(tmp_path / "hf")
  ids, mask = padded_batch()
  ref = hf_logits(hf_model, ids, mask)
  model, config = from_pretrained(tmp_path / "hf")
  assert config.norm_eps == 0.5
  ours = np.asarray(forward(model, jnp.asarray(ids), jnp.asarray(mask)))
  assert np.abs(_real(ours, mask) - _real(ref, mask)).max() <= TOL
  # The epsilon matters here: the default one would not match.
  default, _ = from_pretrained(tmp_path / "hf", norm_eps=1e-6)
  other = np.asarray(forward(default, jnp.asarray(ids), jnp.asarray(mask)))
  assert np.abs(_real(other, mask) - _real(ref, mask)).max() > 1e-2
  save_pretrained(model, tmp_path / "ours")
  reloaded = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "ours", attn_implementation="eager")
  assert np.abs(_real(hf_logits(reloaded.eval(), ids, mask), mask) - _real(ref, mask)).max() <= TOL


def test_tied_checkpoint_with_a_stored_lm_head_and_rope_buffers_loads():
  """Checkpoints some tools write: a tied model that stores the shared matrix a second time as lm_head.weight, and
  (older Llama files) each layer's `rotary_emb.inv_freq` buffer, which is recomputed from the config. Both load."""
  config = ModelConfig(family="llama", vocab_size=11, embed_dim=8, num_layers=2, num_heads=2, num_kv_heads=1,
                       head_dim=4, mlp_dim=12, tie_word_embeddings=True)
  rng = np.random.default_rng(0)
  tensors = {name: rng.standard_normal(shape).astype(np.float32)
             for name, shape in hf_io.expected_hf_shapes(config).items()}
  assert "lm_head.weight" not in tensors
  tensors["lm_head.weight"] = tensors["model.embed_tokens.weight"].copy()
  for i in range(2):
    tensors[f"model.layers.{i}.self_attn.rotary_emb.inv_freq"] = np.ones((2,), np.float32)
  model, loaded = model_from_hf_tensors(config.to_hf(), tensors)
  assert loaded.tie_word_embeddings
  np.testing.assert_array_equal(model.embed[...], tensors["model.embed_tokens.weight"])


def test_written_safetensors_data_section_is_8_byte_aligned(tmp_path):
  """The header is space-padded so the data starts at a multiple of 8 bytes (as the safetensors library writes it),
  whatever the header's own length."""
  for name in ("a", "ab", "abc", "abcd"):
    hf_io.write_safetensors(tmp_path / "x.safetensors", {name: np.arange(3, dtype=np.float64)})
    raw = (tmp_path / "x.safetensors").read_bytes()
    header_len = int.from_bytes(raw[:8], "little")
    assert header_len % 8 == 0, name
    assert raw[8:8 + header_len].decode().rstrip(" ").endswith("}")
    np.testing.assert_array_equal(hf_io.SafetensorsFile(tmp_path / "x.safetensors")[name], np.arange(3.0))


def test_sharded_index_may_not_name_files_outside_its_folder(tmp_path):
  """A weight_map entry such as '../elsewhere/model.safetensors' is refused even where that file exists: shards are
  read only from the index's own folder."""
  from jaxrlhf.models.errors import ModelFileError

  (tmp_path / "elsewhere").mkdir()
  hf_io.write_safetensors(tmp_path / "elsewhere" / "model.safetensors", {"w": np.zeros((2,), np.float32)})
  folder = tmp_path / "ckpt"
  folder.mkdir()
  index = folder / "model.safetensors.index.json"
  index.write_text(json.dumps({"weight_map": {"w": "../elsewhere/model.safetensors"}}))
  with pytest.raises(ModelFileError, match=r"weight_map names shard '\.\./elsewhere/model\.safetensors'"):
    hf_io.ShardedSafetensors(index)
