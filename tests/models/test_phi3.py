"""Phi-3 / Phi-4-mini checkpoints (transformers' Phi3ForCausalLM) against transformers on tiny random models: the
fused qkv_proj / gate_up_proj layout, partial rotation, and LongRoPE on both sides of its original context (the
factor set chosen per forward from the batch's largest position, cos and sin scaled by the attention factor).

The plain logits, export and reward-model round trips run with every other family in test_hf_parity.py and
test_hf_reward.py (hf_fixtures' "phi3_sliding" and "phi3_longrope_partial").
"""

import json
import math

import jax.numpy as jnp
import numpy as np
import pytest
from hf_fixtures import VOCAB, hf_logits, make_hf_model
from model_fixtures import forward

from jaxrlhf.models import ModelConfig, RopeScaling, from_pretrained
from jaxrlhf.models.decoder import rope_inv_freq
from jaxrlhf.sampling import generate

pytestmark = pytest.mark.parity
TOL = 1e-4
ORIGINAL = 24  # hf_fixtures' phi3_longrope_partial: original_max_position_embeddings


@pytest.fixture(scope="module")
def longrope(tmp_path_factory):
  """(transformers model, our model loaded from the folder it saved)."""
  hf_model = make_hf_model("phi3_longrope_partial")
  folder = tmp_path_factory.mktemp("phi3_longrope")
  hf_model.save_pretrained(folder)
  model, _ = from_pretrained(folder)
  return hf_model, model


def _rows(length, pads=(0, 5, -6, 1), seed=0):
  """(ids, mask) int64 (len(pads), length): pad p > 0 pads the left, p < 0 the right."""
  rng = np.random.default_rng(seed)
  ids = rng.integers(3, VOCAB, size=(len(pads), length)).astype(np.int64)
  mask = np.ones_like(ids)
  for row, pad in enumerate(pads):
    if pad > 0:
      mask[row, :pad] = 0
    elif pad < 0:
      mask[row, pad:] = 0
  return np.where(mask > 0, ids, 0), mask


def _diff(a, b, mask):
  return np.abs(a[mask == 1] - b[mask == 1]).max()


def test_config_reads_longrope_and_partial_rotation_as_transformers():
  hf_model = make_hf_model("phi3_longrope_partial")
  config = ModelConfig.from_hf(hf_model.config.to_dict())
  assert config.family == "llama" and config.hf_model_type == "phi3"
  assert config.rotary_dim == 4 and config.rope_dim == 4  # head_dim 8 * partial_rotary_factor 0.5
  scaling = config.rope_scaling
  assert scaling.rope_type == "longrope" and scaling.original_max_position_embeddings == ORIGINAL
  # The paper's attention factor for a context extended from 24 to 128 positions: sqrt(1 + ln(128/24) / ln 24).
  assert scaling.factor == pytest.approx(128 / 24)
  assert scaling.attention_factor == pytest.approx(math.sqrt(1 + math.log(128 / 24) / math.log(24)))
  # Each set of inverse frequencies as transformers' rotary embedding holds them (short at init, long past 24).
  rotary = hf_model.model.rotary_emb
  np.testing.assert_allclose(rope_inv_freq(config), rotary.inv_freq.numpy(), rtol=1e-6)
  assert rotary.attention_scaling == pytest.approx(scaling.attention_factor)
  theta = 10000.0 ** (np.arange(0, 4, 2) / 4)
  np.testing.assert_allclose(rope_inv_freq(config, long=True), 1 / (np.array([3.0, 11.0]) * theta), rtol=1e-6)


@pytest.mark.parametrize("length", [16, ORIGINAL, ORIGINAL + 1, 30])
def test_logits_match_transformers_on_both_sides_of_the_original_context(longrope, length):
  """Up to 24 positions the short factors, from 25 on the long ones, for every row of the call: a left-padded row
  whose own positions stay below 24 rotates with the long factors when the batch reaches 25, as in transformers."""
  hf_model, model = longrope
  ids, mask = _rows(length)
  ref = hf_logits(hf_model, ids, mask)
  ours = np.asarray(forward(model, jnp.asarray(ids), jnp.asarray(mask)))
  print(f"phi3 longrope, length {length}: max|logit diff| {_diff(ours, ref, mask):.3g}")
  assert _diff(ours, ref, mask) <= TOL
  assert np.abs(ref[mask == 1]).max() > 1.0


def test_the_factor_set_is_chosen_per_call_over_the_batch(longrope):
  """The same 20-token row gives other logits alone (short factors) than beside a 30-token row (long factors);
  transformers agrees in both calls."""
  hf_model, model = longrope
  ids, mask = _rows(30, pads=(0, 10))
  alone_ids, alone_mask = ids[1:, 10:], mask[1:, 10:]
  together = np.asarray(forward(model, jnp.asarray(ids), jnp.asarray(mask)))[1, 10:]
  alone = np.asarray(forward(model, jnp.asarray(alone_ids), jnp.asarray(alone_mask)))[0]
  assert np.abs(together - alone).max() > 1e-2
  np.testing.assert_allclose(together, hf_logits(hf_model, ids, mask)[1, 10:], atol=TOL)
  np.testing.assert_allclose(alone, hf_logits(hf_model, alone_ids, alone_mask)[0], atol=TOL)


@pytest.mark.parametrize("changes", [
    dict(attention_factor=1.0),  # cos and sin unscaled
    dict(long_factor=(1.0, 1.7)),  # the short factors past the original context too
    dict(short_factor=(3.0, 11.0)),  # the long factors everywhere
])
def test_parity_is_sensitive_to_each_longrope_setting(longrope, changes, tmp_path):
  hf_model, model = longrope
  scaling = model.config.rope_scaling
  folder = tmp_path / "ckpt"
  hf_model.save_pretrained(folder)
  changed, _ = from_pretrained(folder, rope_scaling=RopeScaling(**{**scaling.__dict__, **changes}))
  ids, mask = _rows(30 if "long_factor" in changes else 16)
  ref = hf_logits(hf_model, ids, mask)
  ours = np.asarray(forward(changed, jnp.asarray(ids), jnp.asarray(mask)))
  assert _diff(ours, ref, mask) > 1e-2


def test_rotating_the_whole_head_breaks_parity(tmp_path):
  """Partial rotation is exercised: the same checkpoint read as rotating all of head_dim (4 frequencies) differs."""
  hf_model = make_hf_model("phi3_sliding", rope_parameters=dict(rope_type="default", rope_theta=10000.0,
                                                                partial_rotary_factor=0.5))
  hf_model.save_pretrained(tmp_path)
  ids, mask = _rows(12)
  ref = hf_logits(hf_model, ids, mask)
  model, config = from_pretrained(tmp_path)
  assert config.rotary_dim == 4
  assert _diff(np.asarray(forward(model, jnp.asarray(ids), jnp.asarray(mask))), ref, mask) <= TOL
  whole, _ = from_pretrained(tmp_path, rotary_dim=None)
  assert _diff(np.asarray(forward(whole, jnp.asarray(ids), jnp.asarray(mask))), ref, mask) > 1e-2


@pytest.mark.parametrize("width", [7, ORIGINAL + 2])
def test_greedy_generation_equals_transformers(longrope, width):
  """KV-cache greedy decoding within the short regime (7 + 8 < 24 positions) and within the long one (prompts of
  26): the tokens transformers' generate() picks."""
  import torch

  hf_model, model = longrope
  n_new, pads = 8, np.array([0, 3, 5])
  rng = np.random.default_rng(1)
  mask = (np.arange(width)[None, :] >= pads[:, None]).astype(np.int64)
  ids = np.where(mask > 0, rng.integers(3, VOCAB, size=(len(pads), width)), 0)
  out = generate(model, ids, mask, max_new_tokens=n_new, greedy=True, eos_ids=(), pad_id=0)
  with torch.no_grad():
    hf_out = hf_model.generate(input_ids=torch.from_numpy(ids), attention_mask=torch.from_numpy(mask),
                               max_new_tokens=n_new, min_new_tokens=n_new, do_sample=False, pad_token_id=0,
                               eos_token_id=None).numpy()[:, width:]
  np.testing.assert_array_equal(np.asarray(out.tokens), hf_out)


@pytest.mark.parametrize("hf_changes, pattern", [
    (dict(model_type="llama", rope_parameters=dict(rope_type="default", rope_theta=1e4, partial_rotary_factor=0.5)),
     r"partial_rotary_factor=0.5 is supported for model_type 'phi3', not 'llama'"),
    (dict(model_type="llama", rope_parameters=dict(rope_type="longrope", rope_theta=1e4, short_factor=[1.0] * 4,
                                                   long_factor=[2.0] * 4)),
     r"'longrope' is supported for model_type 'phi3', not 'llama'"),
    (dict(rope_parameters=dict(rope_type="longrope", rope_theta=1e4, short_factor=[1.0] * 3, long_factor=[2.0] * 3)),
     r"longrope has 3 factors; expected one per rotated frequency, 4"),
    (dict(rope_parameters=dict(rope_type="longrope", rope_theta=1e4, long_factor=[2.0] * 4)),
     r"rope_scaling.short_factor: rope_type 'longrope' needs a list of numbers, got None"),
    (dict(rope_parameters=dict(rope_type="default", rope_theta=1e4, partial_rotary_factor=0.1)),
     r"partial_rotary_factor=0.1: head_dim 8 \* factor = 0; expected an even number"),
])
def test_config_errors_name_the_key(hf_changes, pattern):
  hf = {**dict(model_type="phi3", vocab_size=VOCAB, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                num_attention_heads=4), **hf_changes}
  with pytest.raises(ValueError, match=pattern):
    ModelConfig.from_hf(hf)


def test_phi3_settings_export_only_as_phi3():
  config = ModelConfig.from_hf(make_hf_model("phi3_longrope_partial").config.to_dict())
  out = config.to_hf()
  assert out["architectures"] == ["Phi3ForCausalLM"] and out["original_max_position_embeddings"] == ORIGINAL
  assert ModelConfig.from_hf(json.loads(json.dumps(out))) == config
  with pytest.raises(ValueError, match=r"rotary_dim=4 cannot be exported as family 'llama'"):
    config.replace(hf_model_type=None).to_hf()
  with pytest.raises(ValueError, match=r"rope_scaling 'longrope' cannot be exported as family 'llama'"):
    config.replace(hf_model_type=None, rotary_dim=None, rope_scaling=RopeScaling(
        **{**config.rope_scaling.__dict__, "short_factor": (1.0,) * 4, "long_factor": (2.0,) * 4})).to_hf()


def test_gguf_export_refuses_phi3_settings_under_other_architectures(tmp_path):
  """Partial rotation and LongRoPE exist in llama.cpp's phi3 architecture only: a Llama-family model carrying them
  without hf_model_type 'phi3' is refused before anything is written."""
  from jaxrlhf.models.gguf_export import save_gguf
  from test_gguf_export import VOCAB as GGUF_VOCAB, bpe_tokenizer

  make_hf_model("phi3_longrope_partial", vocab_size=GGUF_VOCAB).save_pretrained(tmp_path / "hf")
  model, config = from_pretrained(tmp_path / "hf")
  with pytest.raises(ValueError, match=r"rotary_dim=4: llama.cpp's llama rotates whole heads"):
    save_gguf(model, tmp_path / "a.gguf", bpe_tokenizer(), config=config.replace(hf_model_type=None))
  whole = config.replace(hf_model_type=None, rotary_dim=None, rope_scaling=RopeScaling(
      **{**config.rope_scaling.__dict__, "short_factor": (1.0,) * 4, "long_factor": (2.0,) * 4}))
  with pytest.raises(ValueError, match=r"rope_scaling 'longrope': llama.cpp reads LongRoPE factors for phi3 files"):
    save_gguf(model, tmp_path / "b.gguf", bpe_tokenizer(), config=whole)
  assert not list(tmp_path.glob("*.gguf"))


@pytest.mark.parametrize("drop, pattern", [
    ("rope_factors_short.weight", r"tensor 'rope_factors_long.weight' without its pair"),
    ("both", r"'phi3.rope.scaling.attn_factor' is 1.23\d* without LongRoPE factors"),
])
def test_gguf_longrope_factors_come_in_pairs(tmp_path, drop, pattern):
  """A phi3 file whose LongRoPE is half there is refused naming the tensor or key (dropping it would change every
  attention score)."""
  import gguf
  from test_families_parity import write_llama_cpp_gguf

  from jaxrlhf.models import gguf as gguf_io
  hf_model = make_hf_model("phi3_longrope_partial")
  path = write_llama_cpp_gguf(hf_model, tmp_path / "full.gguf", "phi3")
  reader = gguf.GGUFReader(str(path))
  writer = gguf.GGUFWriter(str(tmp_path / "cut.gguf"), "phi3")
  for field in reader.fields.values():
    if field.name.startswith("GGUF.") or field.name == "general.architecture":
      continue
    value = field.contents()
    kind = field.types[0]
    if kind == gguf.GGUFValueType.ARRAY:
      writer.add_array(field.name, value)
    else:
      writer.add_key_value(field.name, value, kind)
  dropped = set(gguf_io.ROPE_FACTORS.values()) if drop == "both" else {drop}
  for tensor in reader.tensors:
    if tensor.name not in dropped:
      writer.add_tensor(tensor.name, np.asarray(tensor.data))
  writer.write_header_to_file()
  writer.write_kv_data_to_file()
  writer.write_tensors_to_file()
  writer.close()
  with pytest.raises(ValueError, match=pattern):
    gguf_io.read_gguf(tmp_path / "cut.gguf")


def test_the_top_level_original_context_wins_as_in_phi3config():
  """Phi3Config keeps a top-level original_max_position_embeddings and prefers it to rope_parameters' own."""
  import transformers

  hf = dict(model_type="phi3", vocab_size=VOCAB, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
            num_attention_heads=4, max_position_embeddings=128, original_max_position_embeddings=24,
            rope_parameters=dict(rope_type="longrope", rope_theta=1e4, short_factor=[1.0] * 4, long_factor=[2.0] * 4,
                                 original_max_position_embeddings=16))
  reference = transformers.Phi3Config(**json.loads(json.dumps(hf)))
  ours = ModelConfig.from_hf(hf).rope_scaling
  assert ours.original_max_position_embeddings == reference.rope_parameters["original_max_position_embeddings"] == 24


def test_an_explicit_attention_factor_is_kept_through_hf_and_gguf(tmp_path):
  """A rope_parameters attention_factor other than the default formula: transformers' logits, and the same model
  after a GGUF round trip (the file's phi3.rope.scaling.attn_factor read back, not re-derived)."""
  from jaxrlhf.models.gguf_export import save_gguf
  from test_gguf_export import VOCAB as GGUF_VOCAB, bpe_tokenizer

  hf_model = make_hf_model("phi3_longrope_partial", vocab_size=GGUF_VOCAB, rope_parameters=dict(
      rope_type="longrope", rope_theta=10000.0, partial_rotary_factor=0.5, short_factor=[1.0, 1.7],
      long_factor=[3.0, 11.0], attention_factor=1.5))
  hf_model.save_pretrained(tmp_path / "hf")
  model, config = from_pretrained(tmp_path / "hf")
  assert config.rope_scaling.attention_factor == 1.5
  ids, mask = _rows(30)
  ref = hf_logits(hf_model, ids, mask)
  assert _diff(np.asarray(forward(model, jnp.asarray(ids), jnp.asarray(mask))), ref, mask) <= TOL
  save_gguf(model, tmp_path / "model.gguf", bpe_tokenizer(), tensor_type="f32")
  back, back_config = from_pretrained(tmp_path / "model.gguf")
  assert back_config.rope_scaling.attention_factor == 1.5
  assert _diff(np.asarray(forward(back, jnp.asarray(ids), jnp.asarray(mask))), ref, mask) <= TOL


@pytest.mark.parametrize("width, n_new, warns", [(7, 8, False), (20, 5, False), (20, 6, True), (24, 3, True),
                                                 (25, 8, False)])
def test_generation_across_the_original_context_is_warned(longrope, caplog, width, n_new, warns):
  """The decode step that feeds position 24 (of a 24-position original context) switches to the long factors while
  the cache keeps the short ones: warned, naming the difference from transformers' generate."""
  _, model = longrope
  ids, mask = np.full((1, width), 5), np.ones((1, width), np.int64)
  with caplog.at_level("WARNING", logger="jaxrlhf.sampling.generate"):
    generate(model, ids, mask, max_new_tokens=n_new, greedy=True, eos_ids=(), pad_id=0)
  warned = [r.getMessage() for r in caplog.records if "LongRoPE" in r.getMessage()]
  assert bool(warned) == warns, warned
  if warns:
    assert f"width {width} plus {n_new} new tokens may cross original_max_position_embeddings=24" in warned[0]
