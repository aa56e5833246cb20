"""LoRA adapters on the stacked, scanned decoder (Hu et al. 2021: y = W x + (alpha / r) B A x, B zero-initialized):
a fresh adapter model equals its base exactly, a trained one equals the base with W + (alpha / r) A B folded in
(computed here with numpy, independently of `merged_layers`), adapters off equals the base, the adapters carry the
logical axes of the kernels they wrap, and they save and load on their own."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers
from flax import nnx
from model_fixtures import forward, random_model

from jaxrlhf.models import CausalLM, ModelConfig, abstract_model, from_pretrained, save_pretrained
from jaxrlhf.models import lora as lora_lib
from jaxrlhf.models.decoder import layer_param_specs

_SMALL = dict(vocab_size=37, embed_dim=16, num_layers=2, num_heads=4, num_kv_heads=2, head_dim=4, mlp_dim=24,
              max_position_embeddings=32)
LLAMA = ModelConfig(family="llama", **_SMALL)
GPT2 = ModelConfig(family="gpt2", norm="layernorm", norm_eps=1e-5, activation="gelu_tanh", gated_mlp=False,
                   position="learned", qkv_bias=True, out_bias=True, mlp_bias=True, tie_word_embeddings=True,
                   **dict(_SMALL, num_kv_heads=4))
ALL = lora_lib.LoraConfig(rank=3, alpha=6.0, targets=lora_lib.TARGETS)


def _with_adapters(base: CausalLM, lora, seed=0, b_scale=0.0) -> CausalLM:
  """A LoRA CausalLM on `base`'s weights: A from the model's own init, B zero (or N(0, b_scale) when > 0)."""
  model = CausalLM(base.config, rngs=nnx.Rngs(seed), lora=lora)
  pure = nnx.to_pure_dict(nnx.state(model))
  pure.update(nnx.to_pure_dict(nnx.state(base)))
  if b_scale:
    rng = np.random.default_rng(seed + 1)
    for name, value in pure["lora"].items():
      if name.endswith("_b"):
        pure["lora"][name] = jnp.asarray(b_scale * rng.standard_normal(value.shape), value.dtype)
  graphdef, state = nnx.split(model)
  nnx.replace_by_pure_dict(state, pure)
  return nnx.merge(graphdef, state)


def _batch(seed=0):
  ids = np.random.default_rng(seed).integers(1, 37, size=(2, 9)).astype(np.int32)
  mask = np.ones((2, 9), np.int32)
  mask[1, :3] = 0  # left padding in row 1
  return jnp.asarray(ids), jnp.asarray(mask)


def _numpy_merged(base: CausalLM, adapter_model: CausalLM, lora) -> CausalLM:
  """The base with W + (alpha / r) A B folded into each target kernel, per layer, in numpy float64."""
  pure = jax.tree.map(np.asarray, nnx.to_pure_dict(nnx.state(base)))
  adapters = jax.tree.map(np.asarray, nnx.to_pure_dict(nnx.state(adapter_model.lora)))
  for t in lora.targets:
    a, b = adapters[f"{t}_a"].astype(np.float64), adapters[f"{t}_b"].astype(np.float64)
    w = pure["layers"][f"{t}_kernel"]
    delta = np.stack([np.tensordot(a[i], b[i], axes=1) for i in range(a.shape[0])])
    assert delta.shape == w.shape
    pure["layers"][f"{t}_kernel"] = (w + lora.alpha / lora.rank * delta).astype(w.dtype)
  graphdef, state = nnx.split(abstract_model(base.config))
  nnx.replace_by_pure_dict(state, jax.tree.map(jnp.asarray, pure))
  return nnx.merge(graphdef, state)


@pytest.mark.parametrize("config,targets", [(LLAMA, lora_lib.TARGETS), (GPT2, ("q", "v", "o", "up", "down"))],
                         ids=["llama_all", "gpt2"])
def test_zero_b_equals_base_and_trained_adapters_equal_the_merged_weights(config, targets):
  lora = lora_lib.LoraConfig(rank=3, alpha=6.0, targets=targets)
  base = random_model(config, seed=1)
  ids, mask = _batch()
  base_logits = np.asarray(forward(base, ids, mask))
  fresh = _with_adapters(base, lora)
  np.testing.assert_array_equal(np.asarray(forward(fresh, ids, mask)), base_logits)  # B = 0: exactly the base

  trained = _with_adapters(base, lora, b_scale=0.3)
  logits = np.asarray(forward(trained, ids, mask))
  assert np.max(np.abs(logits - base_logits)) > 1e-2  # the adapters do change the model
  reference = np.asarray(forward(_numpy_merged(base, trained, lora), ids, mask))
  np.testing.assert_allclose(logits, reference, atol=1e-5, rtol=1e-5)
  np.testing.assert_allclose(np.asarray(forward(trained.merged(), ids, mask)), logits, atol=1e-5, rtol=1e-5)
  # Adapters off: the base model, bit for bit, from the same variables.
  off = trained.without_adapters()
  np.testing.assert_array_equal(np.asarray(off(ids, mask)), np.asarray(base(ids, mask)))  # both op by op
  assert off.embed is trained.embed


def test_unscanned_layers_and_kv_cache_use_the_adapters():
  base = random_model(LLAMA, seed=2)
  trained = _with_adapters(base, ALL, b_scale=0.3)
  ids, mask = _batch(1)
  scanned = np.asarray(forward(trained, ids, mask))
  graphdef, state = nnx.split(trained)
  unrolled = CausalLM(LLAMA.replace(scan_layers=False), rngs=nnx.Rngs(0), lora=ALL)
  nnx.update(unrolled, state)
  np.testing.assert_allclose(np.asarray(forward(unrolled, ids, mask)), scanned, atol=1e-5, rtol=1e-5)
  # Incremental decoding with a cache: the last position's logits equal the full forward's.
  cache = trained.init_cache(2, 9)
  _, cache = trained(ids[:, :5], mask[:, :5], cache=cache)
  step_logits, _ = trained(ids[:, 5:], mask[:, 5:], cache=cache)
  np.testing.assert_allclose(np.asarray(step_logits), scanned[:, 5:], atol=1e-4, rtol=1e-4)


def test_adapters_are_stacked_with_the_logical_axes_of_the_kernels_they_wrap():
  model = nnx.eval_shape(lambda: CausalLM(LLAMA, rngs=nnx.Rngs(0), lora=ALL))
  kernels = layer_param_specs(LLAMA)
  for t in lora_lib.TARGETS:
    kernel_axes = kernels[f"{t}_kernel"].axes
    n_in = lora_lib.num_in_dims(LLAMA, t)
    a, b = getattr(model.lora, f"{t}_a"), getattr(model.lora, f"{t}_b")
    assert a.get_metadata()["out_sharding"] == ("layers", *kernel_axes[:n_in], None), t
    assert b.get_metadata()["out_sharding"] == ("layers", None, *kernel_axes[n_in:]), t
    assert a.shape == (LLAMA.num_layers, *kernels[f"{t}_kernel"].shape[:n_in], 3)
    assert b.shape == (LLAMA.num_layers, 3, *kernels[f"{t}_kernel"].shape[n_in:])
  fresh = CausalLM(LLAMA, rngs=nnx.Rngs(0), lora=ALL)
  assert all(float(jnp.max(jnp.abs(getattr(fresh.lora, f"{t}_b")[...]))) == 0 for t in lora_lib.TARGETS)
  assert all(float(jnp.std(getattr(fresh.lora, f"{t}_a")[...])) > 0 for t in lora_lib.TARGETS)
  # The base parameters draw the same keys as without adapters.
  plain = CausalLM(LLAMA, rngs=nnx.Rngs(0))
  np.testing.assert_array_equal(np.asarray(plain.layers.q_kernel[...]), np.asarray(fresh.layers.q_kernel[...]))


def test_adapters_save_load_alone_and_merged_export_loads_as_a_plain_model(tmp_path):
  base = random_model(LLAMA, seed=3)
  trained = _with_adapters(base, ALL, b_scale=0.3)
  ids, mask = _batch(2)
  logits = np.asarray(forward(trained, ids, mask))

  adapter_dir = lora_lib.save_adapters(trained, str(tmp_path / "adapters"))
  files = sorted(p.name for p in (tmp_path / "adapters").iterdir())
  assert files == [lora_lib.ADAPTER_CONFIG, lora_lib.ADAPTER_WEIGHTS]
  assert lora_lib.read_adapter_config(adapter_dir) == ALL
  loaded = lora_lib.load_adapters(_with_adapters(base, ALL, seed=7), adapter_dir)
  np.testing.assert_array_equal(np.asarray(forward(loaded, ids, mask)), logits)
  with pytest.raises(ValueError, match="adapter_config.json"):
    lora_lib.load_adapters(_with_adapters(base, lora_lib.LoraConfig(rank=2, targets=("q",))), adapter_dir)

  save_pretrained(trained, tmp_path / "merged")
  plain, config = from_pretrained(tmp_path / "merged")
  assert plain.lora is None and config.num_layers == LLAMA.num_layers
  np.testing.assert_allclose(np.asarray(forward(plain, ids, mask)), logits, atol=1e-5, rtol=1e-5)
  # transformers reads the merged export as a plain Llama with the adapter model's logits.
  hf = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "merged", torch_dtype=torch.float32).eval()
  with torch.no_grad():
    hf_logits = hf(torch.as_tensor(np.array(ids[:1]), dtype=torch.long)).logits.numpy()
  np.testing.assert_allclose(hf_logits, logits[:1], atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("kwargs,match", [(dict(rank=0), "rank"), (dict(alpha=0.0), "alpha"),
                                          (dict(targets=("q", "qq")), "targets"), (dict(targets=()), "targets"),
                                          (dict(targets=("q", "v", "q")), "targets"), (dict(rank=2.0), "rank"),
                                          (dict(alpha=-1.0), "alpha")])
def test_bad_lora_config_names_the_field(kwargs, match):
  with pytest.raises(ValueError, match=match):
    lora_lib.LoraConfig(**kwargs)


def test_gate_target_needs_a_gated_mlp():
  with pytest.raises(ValueError, match="gate"):
    CausalLM(GPT2, rngs=nnx.Rngs(0), lora=lora_lib.LoraConfig(targets=("gate",)))


def test_scale_is_alpha_over_rank_and_a_starts_at_unit_variance_per_input():
  """Hu et al.: the update is scaled by alpha / r; A ~ N(0, 1 / fan_in) over the kernel's input axes (D, or N * H for
  o, or F for down), so A x has O(1) entries; B starts at zero."""
  assert lora_lib.LoraConfig(rank=4, alpha=2.0).scale == 0.5
  assert lora_lib.LoraConfig(rank=8, alpha=16).scale == 2.0
  config = LLAMA.replace(num_heads=8, head_dim=8)  # o's fan_in N * H = 64, D = 16, F = 24
  lora = lora_lib.LoraConfig(rank=16, alpha=1.0, targets=("q", "o", "down"))
  model = CausalLM(config, rngs=nnx.Rngs(0), lora=lora)
  for target, fan_in in (("q", 16), ("o", 64), ("down", 24)):
    a = np.asarray(getattr(model.lora, f"{target}_a")[...])
    assert abs(a.std() * np.sqrt(fan_in) - 1.0) < 0.15, (target, a.std())
    assert abs(a.mean()) < 0.1 / np.sqrt(fan_in) * 3


def test_loading_adapters_into_a_model_with_another_alpha_is_refused(tmp_path):
  """Adapters saved at alpha 6 scaled by 1 would compute another model: same shapes, but the config differs."""
  base = random_model(LLAMA, seed=3)
  adapter_dir = lora_lib.save_adapters(_with_adapters(base, ALL, b_scale=0.3), str(tmp_path / "adapters"))
  other_alpha = lora_lib.LoraConfig(rank=ALL.rank, alpha=ALL.rank, targets=ALL.targets)
  with pytest.raises(ValueError, match="adapter_config.json"):
    lora_lib.load_adapters(_with_adapters(base, other_alpha), adapter_dir)


def test_lora_config_from_a_config_dict():
  """`model.lora` config sections: {} or None is LoRA off; a dict of fields is a LoraConfig."""
  assert lora_lib.lora_config(None) is None and lora_lib.lora_config({}) is None
  assert lora_lib.lora_config({"rank": 2, "targets": ["q", "v"]}) == lora_lib.LoraConfig(rank=2, targets=("q", "v"))
  assert CausalLM(LLAMA, rngs=nnx.Rngs(0), lora={}).lora is None
