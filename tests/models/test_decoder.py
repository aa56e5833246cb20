"""CausalLM behaviour without a torch reference: padding invariance, KV-cache decoding, scan/remat, metadata."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from model_fixtures import forward, random_model

from jaxrlhf.models import ModelConfig, RopeScaling, abstract_model, init_model

_SMALL = dict(vocab_size=37, embed_dim=16, num_layers=3, num_heads=4, num_kv_heads=2, head_dim=4, mlp_dim=24,
              max_position_embeddings=32)
CONFIGS = {
    "llama_tied": ModelConfig(family="llama", tie_word_embeddings=True, **_SMALL),
    "llama3_scaled": ModelConfig(family="llama", rope_theta=5e5, rope_scaling=RopeScaling(
        "llama3", 8.0, 1.0, 4.0, 8), **_SMALL),
    "mistral_window": ModelConfig(family="llama", hf_model_type="mistral", sliding_window=3, **_SMALL),
    "qwen2": ModelConfig(family="qwen2", qkv_bias=True, **_SMALL),
    "gpt2": ModelConfig(family="gpt2", norm="layernorm", norm_eps=1e-5, activation="gelu_tanh", gated_mlp=False,
                        position="learned", qkv_bias=True, out_bias=True, mlp_bias=True, tie_word_embeddings=True,
                        **dict(_SMALL, num_kv_heads=4)),
}
LOGICAL_AXES = {"vocab", "embed", "mlp", "heads", "kv_heads", "head_dim", "layers", "positions"}


def _tokens(seed=0, n=9):
  return np.random.default_rng(seed).integers(1, 37, size=n)


@pytest.fixture(scope="module", params=sorted(CONFIGS))
def model(request):
  return random_model(CONFIGS[request.param], seed=1)


def test_left_and_right_padding_match_unpadded(model):
  """Row 0 unpadded (9 tokens); row 1 its first 6 tokens left-padded by 3; row 2 the same right-padded."""
  tok = _tokens()
  ids = np.zeros((3, 9), np.int32)
  mask = np.zeros((3, 9), np.int32)
  ids[0], mask[0] = tok, 1
  ids[1, 3:], mask[1, 3:] = tok[:6], 1
  ids[2, :6], mask[2, :6] = tok[:6], 1
  logits = np.asarray(forward(model, jnp.asarray(ids), jnp.asarray(mask)))
  assert logits.shape == (3, 9, 37) and logits.dtype == np.float32
  np.testing.assert_allclose(logits[1, 3:], logits[0, :6], atol=1e-5)
  np.testing.assert_allclose(logits[2, :6], logits[0, :6], atol=1e-5)
  # Without the mask the pads would be attended to: the test can tell the difference.
  unmasked = np.asarray(forward(model, jnp.asarray(ids), jnp.ones((3, 9), jnp.int32)))
  assert np.abs(unmasked[1, 3:] - logits[0, :6]).max() > 1e-3


@nnx.jit
def _step(model, ids, mask, cache):
  return model(ids, mask, cache=cache)


def _decode_rows(model):
  """The decode tests' rows: 3 x 9 tokens, row 1 left-padded by 3 and row 2 by 1 (ids 0 there), and the full
  forward's (3, 9, V) logits over them, the reference for every cached call."""
  ids = np.stack([_tokens(s) for s in range(3)]).astype(np.int32)
  mask = np.ones((3, 9), np.int32)
  mask[1, :3] = 0
  mask[2, :1] = 0
  ids[mask == 0] = 0
  return ids, mask, np.asarray(forward(model, jnp.asarray(ids), jnp.asarray(mask)))


@pytest.mark.parametrize("layout", ["scanned", "unrolled"])
def test_prefill_then_decode_matches_full_forward(model, layout):
  """Left-padded prompts (5 slots) prefilled, then a 2-token chunk, then 2 tokens one at a time, cache of 12 slots.

  The chunk attends to the cache and causally to itself (two blocks of one softmax); the full forward is the
  reference for every position, with the layers scanned and unrolled."""
  model = random_model(model.config.replace(scan_layers=layout == "scanned"), seed=1)  # the fixture's weights
  ids, mask, full = _decode_rows(model)

  cache = model.init_cache(3, 12)
  logits, cache = _step(model, jnp.asarray(ids[:, :5]), jnp.asarray(mask[:, :5]), cache)
  real = mask[:, :5] == 1
  np.testing.assert_allclose(np.asarray(logits)[real], full[:, :5][real], atol=1e-5)
  logits, cache = _step(model, jnp.asarray(ids[:, 5:7]), jnp.ones((3, 2), jnp.int32), cache)
  np.testing.assert_allclose(np.asarray(logits), full[:, 5:7], atol=1e-5, err_msg="chunk 5:7")
  for t in range(7, 9):
    logits, cache = _step(model, jnp.asarray(ids[:, t:t + 1]), jnp.ones((3, 1), jnp.int32), cache)
    np.testing.assert_allclose(np.asarray(logits)[:, 0], full[:, t], atol=1e-5, err_msg=f"step {t}")
  assert int(cache.index) == 9
  np.testing.assert_array_equal(np.asarray(cache.mask), np.concatenate([mask, np.zeros((3, 3), np.int32)], 1))
  # Slots past the index stay empty: each call wrote its tokens' entries at its own slots only.
  assert not np.asarray(cache.keys)[:, :, :, 9:].any()


@pytest.mark.parametrize("layout", ["scanned", "unrolled"])
def test_reading_only_the_filled_slots_matches_full_forward(model, layout):
  """The same tokens as above into a cache of 12 slots, each call reading only the slots filled before it
  (`KVCache.read_len` = index: 5, 7, 8; mistral_window's window of 3 included): the full forward's logits, and the
  writes land at the same slots as when every call reads all 12."""
  model = random_model(model.config.replace(scan_layers=layout == "scanned"), seed=1)
  ids, mask, full = _decode_rows(model)

  _, cache = nnx.jit(lambda m, i, k: m.prefill(i, k, 12))(model, jnp.asarray(ids[:, :5]), jnp.asarray(mask[:, :5]))
  _, whole = nnx.jit(lambda m, i, k: m.prefill(i, k, 12))(model, jnp.asarray(ids[:, :5]), jnp.asarray(mask[:, :5]))
  for start, stop in ((5, 7), (7, 8), (8, 9)):
    cache = cache.replace(read_len=start)
    assert cache.readable == start
    chunk, ones = jnp.asarray(ids[:, start:stop]), jnp.ones((3, stop - start), jnp.int32)
    logits, cache = _step(model, chunk, ones, cache)
    np.testing.assert_allclose(np.asarray(logits), full[:, start:stop], atol=1e-5, err_msg=f"tokens {start}:{stop}")
    _, whole = _step(model, chunk, ones, whole)
  assert int(cache.index) == 9 and cache.read_len == 8
  for name in ("keys", "values", "mask"):
    np.testing.assert_allclose(np.asarray(getattr(cache, name)), np.asarray(getattr(whole, name)), atol=1e-6)


def test_prefill_equals_the_first_call_on_an_empty_cache(model):
  """`prefill` attends only to the chunk; the first cached call also over the empty slots: same hidden states,
  same cache (keys, values, mask, index), in the compute dtype and in a bf16 cache."""
  ids = np.stack([_tokens(s, 6) for s in range(2)]).astype(np.int32)
  mask = np.ones((2, 6), np.int32)
  mask[1, :2] = 0
  for dtype in (None, jnp.bfloat16):
    hidden, cache = nnx.jit(lambda m, i, k: m.prefill(i, k, 10, dtype))(model, jnp.asarray(ids), jnp.asarray(mask))
    ref_hidden, ref_cache = nnx.jit(lambda m, i, k: m.backbone(i, k, None, m.init_cache(2, 10, dtype)))(
        model, jnp.asarray(ids), jnp.asarray(mask))
    real = mask == 1
    np.testing.assert_allclose(np.asarray(hidden)[real], np.asarray(ref_hidden)[real], atol=1e-5)
    assert cache.keys.dtype == ref_cache.keys.dtype == (dtype or jnp.float32)
    np.testing.assert_array_equal(np.asarray(cache.mask), np.asarray(ref_cache.mask))
    assert int(cache.index) == int(ref_cache.index) == 6
    # Real slots only: a pad query attends uniformly to no real key, over 6 tokens in one, 10 slots in the other,
    # so the pad slots' keys differ after the first layer (and are never attended to).
    for name in ("keys", "values"):
      ours, ref = (np.asarray(getattr(c, name), np.float32)[:, :, :, :6] for c in (cache, ref_cache))
      np.testing.assert_allclose(ours.transpose(1, 3, 0, 2, 4)[real], ref.transpose(1, 3, 0, 2, 4)[real], atol=1e-5,
                                 err_msg=name)
    assert not np.asarray(cache.keys, np.float32)[:, :, :, 6:].any()
  with pytest.raises(ValueError, match="max_len 5"):
    model.prefill(jnp.asarray(ids), jnp.asarray(mask), 5)


def test_cache_shapes_and_overflow_check():
  model = abstract_model(CONFIGS["qwen2"])
  cache = model.init_cache(2, 7, dtype=jnp.bfloat16)
  assert cache.keys.shape == (3, 2, 2, 7, 4) and cache.keys.dtype == jnp.bfloat16  # (L, B, K, S, H)
  assert cache.mask.shape == (2, 7) and cache.index.shape == ()
  with pytest.raises(ValueError, match="max_len 7"):
    jax.eval_shape(lambda c: model(jnp.zeros((2, 8), jnp.int32), cache=c), cache)


def test_scan_unrolled_and_remat_agree():
  config = CONFIGS["llama3_scaled"]
  ids = jnp.asarray(_tokens()[None])
  variants = [config, config.replace(remat="full"), config.replace(remat="dots", scan_layers=False)]

  def loss(model):
    return jnp.mean(jax.nn.log_softmax(model(ids))[..., 0])

  results = [nnx.jit(nnx.value_and_grad(loss))(random_model(c, seed=2)) for c in variants]
  base_value, base_grads = results[0]
  for value, grads in results[1:]:
    np.testing.assert_allclose(value, base_value, rtol=1e-6)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-6), grads, base_grads)


def test_layers_are_traced_once():
  """With scan_layers the program does not grow with depth (a 30-layer model compiles one layer body)."""

  def num_eqns(num_layers, scan):
    graphdef, state = nnx.split(abstract_model(CONFIGS["qwen2"].replace(num_layers=num_layers,
                                                                        scan_layers=scan)))
    jaxpr = jax.make_jaxpr(lambda s: nnx.merge(graphdef, s)(jnp.zeros((1, 4), jnp.int32)))(state)
    return len(jaxpr.jaxpr.eqns), str(jaxpr).count("dot_general")

  assert num_eqns(2, True) == num_eqns(30, True)
  assert num_eqns(30, False)[1] > num_eqns(2, False)[1]


def test_scan_layers_none_follows_the_backend(monkeypatch):
  """scan_layers=None: unrolled on GPUs, scanned on CPU / TPU (the measured rule of docs/performance.md); the traced
  program shows which (one layer body for a scan, one per layer unrolled), and an explicit value wins."""
  config = CONFIGS["qwen2"].replace(num_layers=6)
  assert config.scan_layers is None
  assert [config.uses_scan(b) for b in ("cpu", "tpu", "gpu")] == [True, True, False]
  assert config.replace(scan_layers=True).uses_scan("gpu") and not config.replace(scan_layers=False).uses_scan("cpu")

  def dots(c):
    graphdef, state = nnx.split(abstract_model(c))
    return str(jax.make_jaxpr(lambda s: nnx.merge(graphdef, s)(jnp.zeros((1, 4), jnp.int32)))(state)).count(
        "dot_general")

  scanned, unrolled = dots(config.replace(scan_layers=True)), dots(config.replace(scan_layers=False))
  assert unrolled > scanned
  assert dots(config) == scanned  # this test runs on the CPU
  monkeypatch.setattr(jax, "default_backend", lambda: "gpu")
  assert dots(config) == unrolled
  with pytest.raises(ValueError, match="scan_layers must be True, False or None"):
    config.replace(scan_layers="auto")


def test_return_hidden_and_hidden_states(model):
  ids = jnp.asarray(_tokens()[None])
  logits, hidden = forward(model, ids, return_hidden=True)
  assert hidden.shape == (1, 9, 16)
  np.testing.assert_allclose(nnx.jit(lambda m, x: m.hidden_states(x))(model, ids), hidden, atol=1e-6)
  expected = np.einsum("btd,dv->btv", np.asarray(hidden), np.asarray(model.output_embedding()))
  np.testing.assert_allclose(logits, expected, atol=1e-5)


def test_out_of_range_pad_ids_do_not_change_the_real_tokens(model):
  """Pad slots holding ids outside [0, V) (a pad id of -1, say) give the same finite logits on the real tokens as pads
  of id 0: a NaN embedding on a masked slot would still reach every token through the attention's value sum."""
  ids = np.asarray(_tokens(4, 8)[None], np.int32).repeat(2, 0)
  mask = np.ones((2, 8), np.int32)
  mask[:, :3] = 0
  zero_pads = np.where(mask > 0, ids, 0)
  odd_pads = zero_pads.copy()
  odd_pads[:, :3] = [[-1, -1, -7], [37, 40, 1000]]  # V = 37
  want = np.asarray(forward(model, jnp.asarray(zero_pads), jnp.asarray(mask)))
  got = np.asarray(forward(model, jnp.asarray(odd_pads), jnp.asarray(mask)))
  assert np.isfinite(got).all()
  np.testing.assert_allclose(got[:, 3:], want[:, 3:], atol=1e-6)


def test_explicit_positions_override_default():
  model = random_model(CONFIGS["gpt2"], seed=3)
  ids = jnp.asarray(_tokens()[None])
  shifted = forward(model, ids, None, jnp.arange(9)[None] + 5)
  assert np.abs(np.asarray(shifted) - np.asarray(forward(model, ids))).max() > 1e-3


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_every_param_has_logical_axes(name):
  config = CONFIGS[name]
  state = nnx.state(abstract_model(config), nnx.Param)
  leaves = jax.tree_util.tree_leaves_with_path(state, is_leaf=lambda x: isinstance(x, nnx.Variable))
  assert leaves
  for path, var in leaves:
    axes = var.get_metadata()["out_sharding"]
    shape = var.get_value().shape
    assert len(axes) == len(shape), (path, axes, shape)
    assert set(axes) <= LOGICAL_AXES, (path, axes)
    is_layer = "layers" in jax.tree_util.keystr(path)
    assert (axes[0] == "layers") == is_layer and (not is_layer or shape[0] == config.num_layers), (path, axes)


def test_abstract_model_allocates_nothing():
  big = ModelConfig(vocab_size=32000, embed_dim=2048, num_layers=30, num_heads=32, num_kv_heads=8, head_dim=64,
                    mlp_dim=8192)
  leaves = jax.tree.leaves(nnx.state(abstract_model(big, 0)))
  assert all(isinstance(x, jax.ShapeDtypeStruct) for x in leaves)
  assert sum(np.prod(x.shape) for x in leaves) > 1e9


def test_bfloat16_compute_keeps_float32_logits():
  config = CONFIGS["llama_tied"]
  ref = random_model(config, seed=4)
  bf16 = random_model(config.replace(dtype="bfloat16", param_dtype="bfloat16"), seed=4)
  assert bf16.layers.q_kernel[...].dtype == jnp.bfloat16
  ids = jnp.asarray(_tokens()[None])
  logits, hidden = forward(bf16, ids, return_hidden=True)
  assert logits.dtype == jnp.float32 and hidden.dtype == jnp.bfloat16
  np.testing.assert_allclose(logits, forward(ref, ids), atol=0.1)


@pytest.mark.slow
def test_init_model_statistics():
  config = CONFIGS["qwen2"].replace(initializer_range=0.05)
  model = init_model(config, seed=0)
  assert np.std(np.asarray(model.layers.up_kernel[...])) == pytest.approx(0.05, rel=0.2)
  np.testing.assert_array_equal(model.layers.attn_norm_scale[...], 1.0)
  np.testing.assert_array_equal(model.layers.q_bias[...], 0.0)


# ---------------------------------------------------------------------------------------------------- config
@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_config_hf_round_trip(name):
  config = CONFIGS[name]
  config = config.replace(hf_model_type=config.hf_model_type or config.family)
  assert ModelConfig.from_hf(config.to_hf()) == config


def test_config_from_gpt2_dict_defaults():
  config = ModelConfig.from_hf({"model_type": "gpt2", "vocab_size": 50, "n_embd": 12, "n_layer": 1, "n_head": 3,
                                "n_positions": 16, "n_inner": None, "activation_function": "gelu_new"})
  assert (config.mlp_dim, config.head_dim, config.activation) == (48, 4, "gelu_tanh")
  assert config.tie_word_embeddings and config.position == "learned" and config.norm == "layernorm"


def test_config_from_legacy_rope_fields():
  config = ModelConfig.from_hf({
      "model_type": "llama", "vocab_size": 10, "hidden_size": 8, "intermediate_size": 16, "num_hidden_layers": 1,
      "num_attention_heads": 2, "rope_theta": 5e5,
      "rope_scaling": {"type": "linear", "factor": 4.0}})
  assert config.rope_theta == 5e5 and config.rope_scaling == RopeScaling("linear", 4.0)
  assert config.num_kv_heads == 2 and config.head_dim == 4


@pytest.mark.parametrize("changes, pattern", [
    (dict(num_heads=3, num_kv_heads=2), "num_heads=3 must be a multiple of num_kv_heads=2"),
    (dict(remat="some"), r"remat='some' is not supported; expected one of \['none', 'full', 'dots'"),
    (dict(family="t5"), "family='t5'"),
    (dict(dtype="int8"), "dtype='int8'"),
    (dict(head_dim=5), "head_dim must be even for rope, got 5"),  # RoPE rotates pairs of dimensions
    (dict(sliding_window=0), "sliding_window must be > 0 or None, got 0"),
    (dict(hf_model_type="qwen2"), r"hf_model_type='qwen2' does not belong to family='llama'; expected one of "
                                  r"\['llama', 'mistral', 'phi3'\]"),
])
def test_config_validation_names_the_field(changes, pattern):
  with pytest.raises(ValueError, match=pattern):
    CONFIGS["llama_tied"].replace(**changes)


@pytest.mark.parametrize("args, pattern", [
    (("linear", 0.0), r"rope_scaling\.factor must be > 0, got 0\.0"),
    # llama3 interpolates between the two wavelength bounds: equal factors would divide by zero.
    (("llama3", 8.0, 4.0, 4.0, 8), "high_freq_factor must exceed low_freq_factor"),
    (("llama3", 8.0, 4.0, 1.0, 8), "high_freq_factor must exceed low_freq_factor"),
])
def test_rope_scaling_validation_names_the_field(args, pattern):
  with pytest.raises(ValueError, match=pattern):
    RopeScaling(*args)
