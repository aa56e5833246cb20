"""Qwen3, Gemma (1), Gemma 2 and Gemma 3 (text) against transformers on tiny random checkpoints: logits per padding
side,
KV-cache generation, each family switch (turned off, parity breaks), scanned mixed local/global layers, packing,
the reward-model backbone, sharding, config conversion, and GGUF import in llama.cpp's layout for each.

Export (save_pretrained -> transformers) and the config round trip of these families run in test_hf_parity.py,
which covers every entry of hf_fixtures.FAMILIES.
"""

import json
import math

import gguf
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from hf_fixtures import VOCAB, hf_logits, make_hf_model
from model_fixtures import forward

from jaxrlhf.models import ModelConfig, RewardModel, RopeScaling, abstract_model, from_pretrained
from jaxrlhf.models import gguf as gguf_io
from jaxrlhf.models.decoder import rope_inv_freq
from jaxrlhf.sampling import generate

TOL = 1e-4
NEW_FAMILIES = ("qwen3_untied", "qwen3_tied_sliding", "gemma", "gemma2", "gemma3_untied")
LOGICAL_AXES = {"vocab", "embed", "mlp", "heads", "kv_heads", "head_dim", "layers", "positions"}


@pytest.fixture(scope="module", params=NEW_FAMILIES)
def pair(request, tmp_path_factory):
  """(family name, transformers model, our model loaded from the folder transformers saved)."""
  hf_model = make_hf_model(request.param)
  folder = tmp_path_factory.mktemp(request.param)
  hf_model.save_pretrained(folder)
  model, _ = from_pretrained(folder)
  return request.param, hf_model, model


def _padded_rows(seed=0, length=16):
  """(ids, mask) int64 (4, length): unpadded, left-padded by 5, right-padded by 6, left-padded by 1."""
  rng = np.random.default_rng(seed)
  ids = rng.integers(3, VOCAB, size=(4, length)).astype(np.int64)
  mask = np.ones((4, length), np.int64)
  mask[1, :5] = 0
  mask[2, -6:] = 0
  mask[3, :1] = 0
  return np.where(mask > 0, ids, 0), mask


def _max_diff(a, b, mask, rows):
  return max(np.abs(a[r][mask[r] == 1] - b[r][mask[r] == 1]).max() for r in rows)


# --------------------------------------------------------------------------------------------------- parity
@pytest.mark.parity
def test_logits_match_transformers_left_and_right_padding(pair):
  name, hf_model, model = pair
  ids, mask = _padded_rows()
  ref = hf_logits(hf_model, ids, mask)
  ours = np.asarray(forward(model, jnp.asarray(ids), jnp.asarray(mask)))
  left, right = _max_diff(ours, ref, mask, (1, 3)), _max_diff(ours, ref, mask, (2,))
  print(f"parity {name}: max|logit diff| left-padded {left:.3g}, right-padded {right:.3g}, "
        f"unpadded {_max_diff(ours, ref, mask, (0,)):.3g}")
  assert max(left, right, _max_diff(ours, ref, mask, (0,))) <= TOL
  assert np.abs(ref[mask == 1]).max() > 1.0  # logits are not trivially small


@pytest.mark.parity
@pytest.mark.parametrize("family, override", [
    ("qwen3_tied_sliding", dict(layer_types=None)),  # the window on every layer instead of layer 1 only
    ("gemma2", dict(attn_logit_softcap=None)),
    ("gemma2", dict(final_logit_softcap=None)),
    ("gemma2", dict(query_pre_attn_scalar=None)),
    ("gemma2", dict(layer_types=None)),
    ("gemma3_untied", dict(local_rope_theta=None)),
    ("gemma3_untied", dict(rope_scaling=None)),
    ("gemma3_untied", dict(scale_embeddings=False)),
    ("gemma", dict(norm_plus_one=False)),
])
def test_parity_is_sensitive_to_the_switch_under_test(family, override, tmp_path):
  """The tiny cases exercise every switch that keeps the parameter set: turning one off breaks parity."""
  hf_model = make_hf_model(family)
  hf_model.save_pretrained(tmp_path)
  ids, mask = _padded_rows()
  ref = hf_logits(hf_model, ids, mask)
  model, _ = from_pretrained(tmp_path, **override)
  ours = np.asarray(forward(model, jnp.asarray(ids), jnp.asarray(mask)))
  assert _max_diff(ours, ref, mask, range(4)) > 1e-2


@pytest.mark.parity
def test_greedy_generation_equals_transformers_and_teacher_forced_argmax(pair):
  """KV-cache greedy decoding of left-padded prompts: the tokens transformers' generate() picks (ending at the
  checkpoint's eos), each the argmax of one teacher-forced forward over [prompt | generated], same log-probs."""
  import torch

  name, hf_model, model = pair
  n_new, width, pads = 8, 7, np.array([0, 3, 5, 1])
  rng = np.random.default_rng(1)
  mask = (np.arange(width)[None, :] >= pads[:, None]).astype(np.int64)
  ids = np.where(mask > 0, rng.integers(3, VOCAB, size=(len(pads), width)), 0)
  eos = hf_model.generation_config.eos_token_id
  out = generate(model, ids, mask, max_new_tokens=n_new, greedy=True, eos_ids=() if eos is None else eos, pad_id=0)
  tokens, live = np.asarray(out.tokens), np.asarray(out.mask)

  with torch.no_grad():
    hf_out = hf_model.generate(input_ids=torch.from_numpy(ids), attention_mask=torch.from_numpy(mask),
                               max_new_tokens=n_new, do_sample=False, pad_token_id=0).numpy()[:, width:]
  hf_tokens = np.pad(hf_out, ((0, 0), (0, n_new - hf_out.shape[1])))  # generate() stops once every row ended
  np.testing.assert_array_equal(tokens, hf_tokens, err_msg=name)

  full_ids = np.concatenate([ids, tokens], axis=1)
  full_mask = np.concatenate([mask, live], axis=1)
  logits = np.asarray(forward(model, jnp.asarray(full_ids), jnp.asarray(full_mask)), np.float64)
  predicting = logits[:, width - 1:-1]
  np.testing.assert_array_equal(np.where(live > 0, predicting.argmax(-1), 0), tokens)
  logp = predicting - np.logaddexp.reduce(predicting, axis=-1, keepdims=True)
  expected = np.where(live > 0, np.take_along_axis(logp, tokens[..., None], -1)[..., 0], 0.0)
  np.testing.assert_allclose(np.asarray(out.model_logps), expected, atol=1e-5)


@pytest.mark.parity
@pytest.mark.parametrize("family", ["gemma2", "gemma3_untied", "qwen3_tied_sliding"])
def test_multi_token_chunks_through_the_cache_match_transformers(family, tmp_path):
  """Chunks longer than the window fed through the KV cache (6 tokens into an empty cache, then 10 more): every
  layer attends as in transformers' cache-free forward, the global layers to all earlier tokens (not only the last
  `sliding_window`), the local ones within the window, on left- and right-padded rows."""
  hf_model = make_hf_model(family)
  hf_model.save_pretrained(tmp_path)
  model, _ = from_pretrained(tmp_path)
  ids, mask = _padded_rows()
  ref = hf_logits(hf_model, ids, mask)
  step = nnx.jit(lambda m, x, a, c: m(x, a, cache=c))
  cache = model.init_cache(ids.shape[0], ids.shape[1])
  first, cache = step(model, jnp.asarray(ids[:, :6]), jnp.asarray(mask[:, :6]), cache)
  second, _ = step(model, jnp.asarray(ids[:, 6:]), jnp.asarray(mask[:, 6:]), cache)
  ours = np.concatenate([np.asarray(first), np.asarray(second)], axis=1)
  assert _max_diff(ours, ref, mask, range(4)) <= TOL


# ------------------------------------------------------------------------------------- the layer stack
@pytest.mark.slow
@pytest.mark.parametrize("family", ["gemma2", "gemma3_untied"])
def test_scan_unrolled_and_remat_agree_on_mixed_layers(family, tmp_path):
  """Local/global layers through the scan, an unrolled loop and remat: same loss and gradients."""
  make_hf_model(family).save_pretrained(tmp_path)
  ids, mask = (jnp.asarray(x) for x in _padded_rows(seed=2))

  def loss(model):
    return jnp.mean(jax.nn.log_softmax(model(ids, mask))[..., 3] * mask)

  results = []
  for override in (dict(), dict(remat="full"), dict(scan_layers=False, remat="dots")):
    model, _ = from_pretrained(tmp_path, **override)
    results.append(nnx.jit(nnx.value_and_grad(loss))(model))
  (base_value, base_grads), *others = results
  for value, grads in others:
    np.testing.assert_allclose(value, base_value, rtol=1e-6)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-6), grads, base_grads)


def test_mixed_layers_are_traced_once():
  """Per-layer windows and RoPE bases are scanned data: the program does not grow with depth."""

  def num_eqns(num_layers):
    config = _gemma3_config(num_layers=num_layers)
    graphdef, state = nnx.split(abstract_model(config))
    jaxpr = jax.make_jaxpr(lambda s: nnx.merge(graphdef, s)(jnp.zeros((1, 4), jnp.int32)))(state)
    return len(jaxpr.jaxpr.eqns)

  assert num_eqns(2) == num_eqns(12)


def _gemma3_config(num_layers=3, **changes):
  """A Gemma 3 ModelConfig built from a transformers-style dict (one global layer in three)."""
  hf = {"model_type": "gemma3_text", "architectures": ["Gemma3ForCausalLM"], "vocab_size": VOCAB, "hidden_size": 16,
        "intermediate_size": 24, "num_hidden_layers": num_layers, "num_attention_heads": 2, "num_key_value_heads": 1,
        "head_dim": 8, "sliding_window": 3, "sliding_window_pattern": 3, "query_pre_attn_scalar": 8}
  return ModelConfig.from_hf(hf, **changes)


@pytest.mark.parametrize("family", ["gemma2", "gemma3_untied", "qwen3_tied_sliding"])
def test_packed_segments_equal_separate_rows(family, tmp_path):
  """Two sequences packed in one row (segment ids, own positions) give the logits each gets alone: the local
  layers' window is measured in each segment's positions, the global layers' mask only cuts segments."""
  make_hf_model(family).save_pretrained(tmp_path)
  model, _ = from_pretrained(tmp_path)
  rng = np.random.default_rng(3)
  a, b = rng.integers(3, VOCAB, 9), rng.integers(3, VOCAB, 6)
  packed = jnp.asarray(np.concatenate([a, b, [0]])[None])
  segments = jnp.asarray(np.array([[1] * 9 + [2] * 6 + [0]]))
  positions = jnp.asarray(np.concatenate([np.arange(9), np.arange(6), [0]])[None])
  logits = np.asarray(nnx.jit(lambda m, x, s, p: m(x, s > 0, p, segment_ids=s))(model, packed, segments, positions))
  np.testing.assert_allclose(logits[0, :9], np.asarray(forward(model, jnp.asarray(a[None])))[0], atol=1e-5)
  np.testing.assert_allclose(logits[0, 9:15], np.asarray(forward(model, jnp.asarray(b[None])))[0], atol=1e-5)


def test_reward_model_backbone_padding_and_shared_prompt(tmp_path):
  """A Gemma 2 reward model: padded rows score as unpadded ones; a shared [prompt | chosen | rejected] row
  scores each response as its own sequence."""
  make_hf_model("gemma2").save_pretrained(tmp_path)
  lm, _ = from_pretrained(tmp_path)
  rm = RewardModel.from_causal_lm(lm)
  rng = np.random.default_rng(4)
  prompt, chosen, rejected = (rng.integers(3, VOCAB, n) for n in (5, 4, 6))

  def alone(*parts):
    return float(nnx.jit(lambda m, x: m(x))(rm, jnp.asarray(np.concatenate(parts)[None]))[0])

  seq = np.concatenate([prompt, chosen])
  ids = np.zeros((2, 12), np.int64)
  mask = np.zeros((2, 12), np.int64)
  ids[0, 3:], mask[0, 3:] = seq, 1  # left-padded
  ids[1, :9], mask[1, :9] = seq, 1  # right-padded
  rewards = np.asarray(nnx.jit(lambda m, x, k: m(x, k))(rm, jnp.asarray(ids), jnp.asarray(mask)))
  np.testing.assert_allclose(rewards, alone(prompt, chosen), atol=1e-5)

  row = jnp.asarray(np.concatenate([prompt, chosen, rejected, [0, 0]])[None])
  chosen_r, rejected_r = nnx.jit(lambda m, x: m.score_shared_prompt(x, jnp.array([5]), jnp.array([4]),
                                                                    jnp.array([6])))(rm, row)
  np.testing.assert_allclose(float(chosen_r[0]), alone(prompt, chosen), atol=1e-5)
  np.testing.assert_allclose(float(rejected_r[0]), alone(prompt, rejected), atol=1e-5)


# ----------------------------------------------------------------------------------- sharding and dtypes
@pytest.mark.parametrize("family", NEW_FAMILIES)
def test_every_param_has_logical_axes(family):
  config = ModelConfig.from_hf(make_hf_model(family).config.to_dict())
  state = nnx.state(abstract_model(config), nnx.Param)
  leaves = jax.tree_util.tree_leaves_with_path(state, is_leaf=lambda x: isinstance(x, nnx.Variable))
  for path, var in leaves:
    axes, shape = var.get_metadata()["out_sharding"], var.get_value().shape
    assert len(axes) == len(shape) and set(axes) <= LOGICAL_AXES, (path, axes, shape)
    assert (axes[0] == "layers") == ("layers" in jax.tree_util.keystr(path)), (path, axes)


def test_from_pretrained_with_mesh_places_sharded_params(tmp_path):
  make_hf_model("gemma3_untied").save_pretrained(tmp_path)
  model, _ = from_pretrained(tmp_path)
  auto = jax.sharding.AxisType.Auto
  mesh = jax.make_mesh((2, 2, 2), ("data", "fsdp", "tensor"), axis_types=(auto,) * 3)
  sharded, _ = from_pretrained(tmp_path, mesh=mesh)
  post = sharded.layers.post_mlp_norm_scale[...]  # (L, D): embed over fsdp
  assert post.sharding.spec == jax.sharding.PartitionSpec(None, "fsdp")
  ids = jnp.asarray(_padded_rows()[0][:2])
  np.testing.assert_allclose(np.asarray(forward(sharded, ids)), np.asarray(forward(model, ids)), atol=1e-5)


def test_bfloat16_compute_keeps_float32_logits(tmp_path):
  make_hf_model("gemma2").save_pretrained(tmp_path)
  ids, mask = (jnp.asarray(x) for x in _padded_rows())
  ref = np.asarray(forward(from_pretrained(tmp_path)[0], ids, mask))
  bf16, config = from_pretrained(tmp_path, dtype=jnp.bfloat16)
  assert config.param_dtype == "bfloat16" and bf16.layers.post_attn_norm_scale[...].dtype == jnp.bfloat16
  logits, hidden = forward(bf16, ids, mask, return_hidden=True)
  assert logits.dtype == jnp.float32 and hidden.dtype == jnp.bfloat16
  real = np.asarray(mask) == 1
  np.testing.assert_allclose(np.asarray(logits)[real], ref[real], atol=0.15)


def test_output_embedding_refuses_a_softcapped_model(pair):
  _, _, model = pair
  if model.config.final_logit_softcap is None:
    assert model.output_embedding().shape == (model.config.embed_dim, VOCAB)
    return
  with pytest.raises(ValueError, match="final_logit_softcap=5.0"):
    model.output_embedding()


# --------------------------------------------------------------------------------------------------- config
def test_gemma3_legacy_config_keys_equal_transformers_5_keys():
  """Pre-5 config.json (rope_theta / rope_scaling / rope_local_base_freq / sliding_window_pattern) reads as the
  per-layer-type rope_parameters and layer_types transformers 5 writes."""
  modern = ModelConfig.from_hf(make_hf_model("gemma3_untied").config.to_dict())
  legacy = json.loads(json.dumps(make_hf_model("gemma3_untied").config.to_dict()))
  del legacy["rope_parameters"], legacy["layer_types"]
  legacy.update(rope_theta=1e5, rope_scaling={"type": "linear", "factor": 2.0}, rope_local_base_freq=1e4,
                sliding_window_pattern=3)
  assert ModelConfig.from_hf(legacy) == modern
  assert modern.layer_types == ("sliding_attention", "sliding_attention", "full_attention")
  assert (modern.rope_theta, modern.local_rope_theta, modern.rope_scaling.factor) == (1e5, 1e4, 2.0)


@pytest.mark.parametrize("changes", [dict(), dict(local_rope_theta=None, rope_scaling=RopeScaling("linear", 2.0)),
                                     dict(final_logit_softcap=7.5, query_pre_attn_scalar=6)])
def test_gemma3_config_round_trips_through_transformers(changes):
  """to_hf -> transformers' Gemma3TextConfig -> to_dict -> from_hf is the identity (also with one RoPE for all
  layers, written as equal per-layer-type rope_parameters)."""
  import transformers

  config = _gemma3_config(**changes)
  assert ModelConfig.from_hf(transformers.Gemma3TextConfig(**config.to_hf()).to_dict()) == config


@pytest.mark.parametrize("model_type", ["gemma2", "gemma3_text"])
def test_omitted_query_pre_attn_scalar_is_the_transformers_default_not_head_dim(model_type):
  """A Gemma config.json with head_dim 16 and no query_pre_attn_scalar: transformers' config class scales the scores
  by its default 256 ** -0.5, not by head_dim ** -0.5."""
  import transformers

  sizes = dict(model_type=model_type, vocab_size=11, hidden_size=32, intermediate_size=16, num_hidden_layers=2,
               num_attention_heads=2, num_key_value_heads=1, head_dim=16)
  reference = transformers.AutoConfig.for_model(**sizes)
  assert ModelConfig.from_hf(sizes).query_pre_attn_scalar == reference.query_pre_attn_scalar == 256


def test_qwen3_window_layers_from_max_window_layers_as_transformers():
  """A Qwen3 config.json without layer_types (written before transformers listed them): with use_sliding_window, the
  layers from max_window_layers on slide, as Qwen3Config derives them."""
  import transformers

  sizes = dict(model_type="qwen3", vocab_size=11, hidden_size=16, intermediate_size=16, num_hidden_layers=3,
               num_attention_heads=2, num_key_value_heads=1, head_dim=8, use_sliding_window=True, sliding_window=4,
               max_window_layers=1)
  reference = transformers.AutoConfig.for_model(**sizes)
  ours = ModelConfig.from_hf(sizes)
  assert ours.layer_types == tuple(reference.layer_types) == ("full_attention",) + ("sliding_attention",) * 2
  assert ours.sliding_window == 4


@pytest.mark.parity
def test_gemma_reads_the_official_files_gelu_as_transformers_does():
  """Gemma 1's official config.json files say hidden_act "gelu"; GemmaConfig reads that as the tanh approximation
  (and saves the corrected name, so the tiny checkpoints above never carry it). Omitted keys take GemmaConfig's
  defaults: tied, head_dim 256, 16 kv heads, no window."""
  import transformers
  raw = {"model_type": "gemma", "vocab_size": 11, "hidden_size": 32, "intermediate_size": 16, "num_hidden_layers": 2,
         "num_attention_heads": 16, "hidden_act": "gelu"}
  reference = transformers.GemmaConfig(**{k: v for k, v in raw.items() if k != "model_type"})
  config = ModelConfig.from_hf(raw)
  assert reference.hidden_act == "gelu_pytorch_tanh" and config.activation == "gelu_tanh"
  assert ModelConfig.from_hf(dict(raw, hidden_act="gelu_pytorch_tanh")) == config
  assert (config.head_dim, config.num_kv_heads, config.tie_word_embeddings) == (256, 16, True)
  assert (config.sliding_window, config.layer_types, config.post_norms, config.norm_plus_one) == (None, None, False,
                                                                                                 True)
  assert config.to_hf()["hidden_act"] == "gelu_pytorch_tanh"


def test_gemma2_defaults_alternate_local_and_global_layers():
  """Gemma2Config's defaults for omitted keys: tied embeddings (official config.json files omit the key), head_dim
  256 and 4 kv heads (not derived from hidden_size / num_attention_heads)."""
  config = ModelConfig.from_hf({"model_type": "gemma2", "vocab_size": 11, "hidden_size": 8, "intermediate_size": 16,
                                "num_hidden_layers": 4, "num_attention_heads": 8})
  assert config.layer_types == ("sliding_attention", "full_attention") * 2 and config.sliding_window == 4096
  assert (config.attn_logit_softcap, config.final_logit_softcap, config.query_pre_attn_scalar) == (50.0, 30.0, 256)
  assert config.activation == "gelu_tanh" and config.tie_word_embeddings is True
  assert (config.head_dim, config.num_kv_heads) == (256, 4)


@pytest.mark.parametrize("changes, pattern", [
    (dict(layer_types=("full_attention",) * 2), r"layer_types has 2 entries; expected num_layers=3"),
    (dict(layer_types=("sliding_attention", "global", "full_attention")), r"layer_types\[\]='global'"),
    (dict(sliding_window=None), r"'sliding_attention' layers but sliding_window is None"),
    (dict(attn_logit_softcap=20.0, attention="cudnn"), r"attn_logit_softcap is not supported with attention='cudnn'"),
    (dict(final_logit_softcap=0.0), r"final_logit_softcap must be > 0"),
    (dict(layer_types=None), r"local_rope_theta needs position='rope' and layer_types"),
])
def test_config_validation_names_the_field(changes, pattern):
  with pytest.raises(ValueError, match=pattern):
    _gemma3_config(**changes)


@pytest.mark.parametrize("config, pattern", [
    (ModelConfig(family="llama", post_norms=True), r"post_norms=True cannot be exported as family 'llama'"),
    (ModelConfig(family="qwen3", qk_norm=False), r"qk_norm=False cannot be exported as family 'qwen3'"),
    (ModelConfig(family="gemma3", qk_norm=True, norm_plus_one=True, post_norms=True, scale_embeddings=True,
                 activation="gelu_tanh", attn_logit_softcap=50.0),
     r"attn_logit_softcap=50.0 cannot be exported as family 'gemma3' \(transformers' Gemma3ForCausalLM"),
    (ModelConfig(family="qwen3", qk_norm=True, qkv_bias=True), r"qkv_bias=True and out_bias=False must be equal"),
    (_gemma3_config(query_pre_attn_scalar=6.5), r"query_pre_attn_scalar=6.5 cannot be exported"),
])
def test_export_refuses_what_transformers_would_compute_differently(config, pattern):
  with pytest.raises(ValueError, match=pattern):
    config.to_hf()


def test_bidirectional_gemma3_is_rejected():
  hf = make_hf_model("gemma3_untied").config.to_dict()
  hf["use_bidirectional_attention"] = True
  with pytest.raises(ValueError, match="use_bidirectional_attention=True is not supported for gemma3"):
    ModelConfig.from_hf(hf)


# ----------------------------------------------------------------------------------------------------- GGUF
# llama.cpp's GGUF cannot say query_pre_attn_scalar (it assumes head_dim below 27B), so the GGUF cases use it.
GGUF_CASES = {"qwen2": ("qwen2_bias", {}), "qwen3": ("qwen3_untied", {}), "gemma": ("gemma", {}),
              "gemma2": ("gemma2", dict(query_pre_attn_scalar=16)),
              "gemma3": ("gemma3_untied", dict(query_pre_attn_scalar=16)),
              "phi3": ("phi3_longrope_partial", {})}


def write_llama_cpp_gguf(hf_model, path, arch, rope_freqs=None):
  """A GGUF as llama.cpp's convert_hf_to_gguf.py writes `hf_model`: gguf-py's own tensor-name map, Gemma norm
  weights stored as 1 + w, q/k rows permuted for llama (Qwen2 / 3, Phi-3 and Gemma use GGML's rotate-half RoPE; Phi-3
  keeps its fused qkv and gate-up tensors), F32 tensors, and `rope_freqs` (llama3 RoPE scaling's per-frequency
  divisors) as `rope_freqs.weight` where given; Phi-3's LongRoPE factors and attention factor as Phi3MiniModel writes
  them."""
  hf = hf_model.config
  writer = gguf.GGUFWriter(str(path), arch)
  writer.add_block_count(hf.num_hidden_layers)
  writer.add_context_length(hf.max_position_embeddings)
  writer.add_embedding_length(hf.hidden_size)
  writer.add_feed_forward_length(hf.intermediate_size)
  writer.add_head_count(hf.num_attention_heads)
  writer.add_head_count_kv(hf.num_key_value_heads)
  if getattr(hf, "head_dim", None) is not None:  # the converter writes key / value lengths only from a head_dim
    writer.add_key_length(hf.head_dim)
    writer.add_value_length(hf.head_dim)
  writer.add_layer_norm_rms_eps(hf.rms_norm_eps)
  writer.add_vocab_size(hf.vocab_size)
  rope = hf.rope_parameters.get("full_attention", hf.rope_parameters)
  if arch not in ("gemma", "gemma2"):  # GemmaModel / Gemma2Model write no RoPE base (llama.cpp's default 10000)
    writer.add_rope_freq_base(rope["rope_theta"])
  if rope["rope_type"] == "linear":
    writer.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
    writer.add_rope_scaling_factor(rope["factor"])
  if arch == "gemma2":
    writer.add_attn_logit_softcapping(hf.attn_logit_softcapping)
    writer.add_final_logit_softcapping(hf.final_logit_softcapping)
  if arch in ("gemma2", "gemma3"):
    writer.add_sliding_window(hf.sliding_window)
  phi3_factors = {}
  if arch == "phi3":  # Phi3MiniModel: the rotated dimensions, original context, window (0: none), LongRoPE
    partial = rope.get("partial_rotary_factor", 1.0)
    writer.add_rope_dimension_count(int(partial * hf.hidden_size) // hf.num_attention_heads)
    original = rope.get("original_max_position_embeddings", hf.original_max_position_embeddings)
    writer.add_rope_scaling_orig_ctx_len(original)
    writer.add_sliding_window(hf.sliding_window or 0)
    if rope.get("long_factor"):
      scale = hf.max_position_embeddings / original
      writer.add_rope_scaling_attn_factors(math.sqrt(1 + math.log(scale) / math.log(original)) if scale > 1 else 1.0)
      phi3_factors = {"rope_factors_long.weight": rope["long_factor"],
                      "rope_factors_short.weight": rope["short_factor"]}
  if arch == "gemma3":  # the fixture's 1-in-3 global layers, as gguf-py's per-layer flags (llama.cpp assumes 1 in 6)
    writer.add_sliding_window_pattern([t == "sliding_attention" for t in hf.layer_types])
  for key in ("bos", "eos", "pad"):
    if getattr(hf, f"{key}_token_id") is not None:
      getattr(writer, f"add_{key}_token_id")(getattr(hf, f"{key}_token_id"))
  names = gguf.get_tensor_name_map(gguf.MODEL_ARCH[arch.upper()], hf.num_hidden_layers)
  for name, value in hf_model.state_dict().items():
    if name == "lm_head.weight" and hf.tie_word_embeddings:
      continue
    array = value.numpy().astype(np.float32)
    if arch in ("gemma", "gemma2", "gemma3") and name.endswith("norm.weight"):
      array = array + np.float32(1.0)
    if arch == "llama" and name.endswith(("q_proj.weight", "k_proj.weight")):  # GGML's interleaved RoPE rows
      heads = hf.num_attention_heads if name.endswith("q_proj.weight") else hf.num_key_value_heads
      array = array.reshape(heads, 2, array.shape[0] // heads // 2, -1).swapaxes(1, 2).reshape(array.shape)
    writer.add_tensor(names.get_name(name, try_suffixes=(".weight", ".bias")), array)
  if rope_freqs is not None:
    writer.add_tensor("rope_freqs.weight", np.asarray(rope_freqs, np.float32))
  for name, factors in phi3_factors.items():
    writer.add_tensor(name, np.asarray(factors, np.float32))
  writer.write_header_to_file()
  writer.write_kv_data_to_file()
  writer.write_tensors_to_file()
  writer.close()
  return path


@pytest.mark.parity
@pytest.mark.parametrize("arch", sorted(GGUF_CASES))
def test_gguf_import_equals_the_transformers_checkpoint(arch, tmp_path):
  """Tensors (Gemma norms back from 1 + w), config and logits of a llama.cpp-layout GGUF equal the checkpoint's."""
  fixture, changes = GGUF_CASES[arch]
  hf_model = make_hf_model(fixture, **changes)
  hf_model.save_pretrained(tmp_path / "hf")
  path = write_llama_cpp_gguf(hf_model, tmp_path / "tiny.gguf", arch)

  hf_config, tensors = gguf_io.read_gguf(path)
  state = {k: v.numpy() for k, v in hf_model.state_dict().items()}
  if hf_model.config.tie_word_embeddings:
    del state["lm_head.weight"]
  assert set(tensors) == set(state)
  for name, value in state.items():
    atol = 1e-7 if name.endswith("norm.weight") and arch != "qwen3" else 0.0  # fp32 rounding of 1 + w
    np.testing.assert_allclose(tensors[name], value, rtol=0, atol=atol, err_msg=name)
  hf_json = json.loads((tmp_path / "hf" / "config.json").read_text())
  ours, reference = ModelConfig.from_hf(hf_config), ModelConfig.from_hf(hf_json)
  assert ours.norm_eps == pytest.approx(reference.norm_eps, rel=1e-7)  # GGUF stores float32
  if arch == "phi3":  # LongRoPE's attention factor, stored as float32 too
    assert ours.rope_scaling.attention_factor == pytest.approx(reference.rope_scaling.attention_factor, rel=1e-7)
    ours = ours.replace(rope_scaling=reference.rope_scaling)
  assert ours.replace(norm_eps=reference.norm_eps) == reference

  ids, mask = _padded_rows()
  model, _ = from_pretrained(path)
  ours = np.asarray(forward(model, jnp.asarray(ids), jnp.asarray(mask)))
  assert _max_diff(ours, hf_logits(hf_model, ids, mask), mask, range(4)) <= TOL


@pytest.mark.parity
@pytest.mark.parametrize("head_dim", [8, 32])
def test_gguf_llama3_rope_freqs_equal_the_transformers_checkpoint(head_dim, tmp_path):
  """A Llama 3.1-style checkpoint (llama3 RoPE scaling) as llama.cpp writes it: no scaling metadata, the scaling as
  `rope_freqs.weight`, here transformers' own default over scaled frequencies. Loaded, its RoPE frequencies and
  logits equal transformers'. head_dim 8 leaves one frequency in the interpolated band, 32 two (no frequency
  unscaled)."""
  import torch
  hf_model = make_hf_model("llama3_untied_scaled", head_dim=head_dim)
  hf = hf_model.config
  theta = hf.rope_parameters["rope_theta"]
  default = 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.int64).float() / head_dim))
  scaled = hf_model.model.rotary_emb.inv_freq
  rope_freqs = (default / scaled).numpy()
  assert ((rope_freqs > 1.001) & (rope_freqs < 0.999 * rope_freqs.max())).any()  # a frequency in the band
  path = write_llama_cpp_gguf(hf_model, tmp_path / "llama3.gguf", "llama", rope_freqs=rope_freqs)

  hf_config, tensors = gguf_io.read_gguf(path)
  assert hf_config["rope_scaling"]["rope_type"] == "llama3" and "rope_freqs.weight" not in tensors
  ours = ModelConfig.from_hf(hf_config)
  np.testing.assert_allclose(rope_inv_freq(ours), scaled.numpy(), rtol=2e-6)
  ids, mask = _padded_rows()
  model, _ = from_pretrained(path)
  logits = np.asarray(forward(model, jnp.asarray(ids), jnp.asarray(mask)))
  assert _max_diff(logits, hf_logits(hf_model, ids, mask), mask, range(4)) <= TOL
  # The factors matter: the same file without them (the old refusal's alternative) is another model.
  plain, _ = from_pretrained(write_llama_cpp_gguf(hf_model, tmp_path / "plain.gguf", "llama"))
  unscaled = np.asarray(forward(plain, jnp.asarray(ids), jnp.asarray(mask)))
  assert _max_diff(unscaled, hf_logits(hf_model, ids, mask), mask, range(4)) > 100 * TOL


@pytest.mark.parametrize("arch, layers, expected", [("gemma2", 46, 18), ("gemma2", 26, 16), ("gemma3", 62, 18),
                                                    ("gemma3", 46, 16)])
def test_gguf_gemma_attention_scale_follows_llama_cpp(arch, layers, expected):
  """GGUF has no query_pre_attn_scalar: head_dim, except the 27B models' hidden / heads (gemma_pytorch)."""
  meta = {"general.architecture": arch, f"{arch}.embedding_length": 72, f"{arch}.attention.head_count": 4,
          f"{arch}.attention.key_length": 16, f"{arch}.feed_forward_length": 8, f"{arch}.block_count": layers,
          f"{arch}.context_length": 32, f"{arch}.attention.layer_norm_rms_epsilon": 1e-6, f"{arch}.vocab_size": 5,
          f"{arch}.attention.sliding_window": 4}
  config = gguf_io.gguf_hf_config(meta, tensor_names=set())
  assert config["query_pre_attn_scalar"] == expected
  pattern = 2 if arch == "gemma2" else 6
  assert [t == "full_attention" for t in config["layer_types"]] == [(i + 1) % pattern == 0 for i in range(layers)]


def test_gguf_gemma3_per_layer_window_flags_and_missing_window(tmp_path):
  meta = {"general.architecture": "gemma3", "gemma3.embedding_length": 8, "gemma3.attention.head_count": 2,
          "gemma3.feed_forward_length": 8, "gemma3.block_count": 3, "gemma3.context_length": 32,
          "gemma3.attention.layer_norm_rms_epsilon": 1e-6, "gemma3.vocab_size": 5,
          "gemma3.attention.sliding_window_pattern": [True, False, True]}
  with pytest.raises(ValueError, match=r"'gemma3\.attention\.sliding_window' is missing"):
    gguf_io.gguf_hf_config(meta, tensor_names=set())
  config = gguf_io.gguf_hf_config({**meta, "gemma3.attention.sliding_window": 4}, tensor_names=set())
  assert config["layer_types"] == ["sliding_attention", "full_attention", "sliding_attention"]
  assert config["rope_parameters"]["sliding_attention"] == {"rope_type": "default", "rope_theta": 10000.0}
