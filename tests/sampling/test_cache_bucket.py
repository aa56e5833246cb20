"""Decoding in phases that each read `cache_bucket` more slots of the KV cache: the same tokens and log-probs as
reading the whole cache every step; each phase's attention really reads only its slots, and the cache is allocated
once (never grown or copied)."""

import importlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jaxpr_walk import attention_slots_per_loop, while_carried_shapes
from sampling_models import CONFIGS, left_padded_prompts, random_model

from jaxrlhf.parallel import MeshConfig, make_mesh
from jaxrlhf.sampling import generate
from jaxrlhf.sampling.generate import cache_windows

generate_lib = importlib.import_module("jaxrlhf.sampling.generate")  # the package re-exports the function


@pytest.mark.parametrize("prompt, new, bucket, windows", [
    (64, 448, 128, (192, 320, 448, 511)),  # P + k * b, then the full P + N - 1 slots
    (4, 9, 4, (8, 12)),  # 12 = 4 + 8: the last bucket ends exactly at the full length
    (4, 10, 4, (8, 12, 13)),
    (6, 7, 6, (12,)),  # N - 1 <= b: one phase, the program of cache_bucket 0
    (6, 7, 0, (12,)),
    (6, 1, 4, (6,)),  # one new token: nothing is fed back, the prefilled prompt is the whole cache
    (3, 5, 1, (4, 5, 6, 7)),
])
def test_cache_windows(prompt, new, bucket, windows):
  assert cache_windows(prompt, new, bucket) == windows


def _program(model, ids, mask, **kw):
  return jax.make_jaxpr(lambda i, m: generate(model, i, m, **kw))(ids, mask).jaxpr


def _cache_slots_carried(jaxpr):
  """For each decode while-loop, the slot counts of the (L, B, K, S, H) caches it carries."""
  return [sorted({shape[3] for shape in shapes}) for shapes in while_carried_shapes(jaxpr, 5)]


@pytest.mark.parametrize("name", ["llama_gqa", "gpt2"])
def test_phased_cache_gives_the_tokens_of_one_cache(name):
  """Left-padded prompts, 2 samples each, temperature + top-k; buckets of 1, 3 and 4 slots (phases of 1 to 4
  steps) against one cache of P + N - 1 slots: same tokens, same log-probs."""
  model = random_model(CONFIGS[name], seed=4)
  ids, mask = left_padded_prompts(seed=2)
  kw = dict(max_new_tokens=11, rng=jax.random.key(7), temperature=0.8, top_k=5, num_samples=2)
  one = generate(model, ids, mask, cache_bucket=0, **kw)
  for bucket in (1, 3, 4):
    phased = generate(model, ids, mask, cache_bucket=bucket, **kw)
    np.testing.assert_array_equal(np.asarray(phased.tokens), np.asarray(one.tokens))
    np.testing.assert_array_equal(np.asarray(phased.mask), np.asarray(one.mask))
    np.testing.assert_allclose(np.asarray(phased.logps), np.asarray(one.logps), atol=1e-5)
    np.testing.assert_allclose(np.asarray(phased.model_logps), np.asarray(one.model_logps), atol=1e-5)


def test_each_phase_reads_its_own_slots_of_one_cache():
  model = random_model(CONFIGS["llama_gqa"], seed=4)
  ids, mask = left_padded_prompts(seed=2)  # P = 6
  kw = dict(max_new_tokens=11, greedy=True)  # 16 slots in all
  one = _program(model, ids, mask, cache_bucket=0, **kw)
  phased = _program(model, ids, mask, cache_bucket=4, **kw)
  assert attention_slots_per_loop(one) == [16]
  assert attention_slots_per_loop(phased) == [10, 14, 16]
  assert attention_slots_per_loop(_program(model, ids, mask, cache_bucket=32, **kw)) == [16]
  # One cache of 16 slots, allocated by the prefill and carried by every phase: nothing grows or is copied.
  assert _cache_slots_carried(one) == [[16]] and _cache_slots_carried(phased) == [[16], [16], [16]]


def test_the_backend_rule():
  assert generate_lib.default_cache_bucket("cpu") == generate_lib.DEFAULT_CACHE_BUCKET == 128
  assert generate_lib.default_cache_bucket("gpu") == generate_lib.default_cache_bucket("tpu") == 0
  model = random_model(CONFIGS["llama_gqa"], seed=4)
  ids, mask = left_padded_prompts(seed=2)
  kw = dict(max_new_tokens=140, greedy=True)  # past one bucket: 6 + 139 slots, phases of 134 and 145 on the CPU
  assert attention_slots_per_loop(_program(model, ids, mask, **kw)) == [134, 145]


def test_rows_ending_in_different_phases():
  """An end token stops rows in the first and later phases; once all rows ended the remaining phases run no step."""
  model = random_model(CONFIGS["qwen2"], seed=3)
  ids, mask = left_padded_prompts(seed=6)
  free = np.asarray(generate(model, ids, mask, max_new_tokens=12, greedy=True).tokens)
  eos = int(free[0, 1])  # row 0 ends in the first phase (steps 1-2 with a bucket of 2)
  kw = dict(max_new_tokens=12, greedy=True, eos_ids=(eos,), pad_id=-1)
  one = generate(model, ids, mask, cache_bucket=0, **kw)
  phased = generate(model, ids, mask, cache_bucket=2, **kw)
  for field in ("tokens", "mask", "lengths"):
    np.testing.assert_array_equal(np.asarray(getattr(phased, field)), np.asarray(getattr(one, field)))
  np.testing.assert_allclose(np.asarray(phased.model_logps), np.asarray(one.model_logps), atol=1e-5)
  assert int(one.lengths[0]) <= 2 and int(one.lengths.max()) > 2  # the rows do end in different phases


def test_phased_cache_sharded_over_the_mesh():
  model = random_model(CONFIGS["gpt2"], seed=6)
  ids, mask = left_padded_prompts(seed=3, pads=(0, 1, 2, 3, 4, 5, 0, 1))
  mesh = make_mesh(MeshConfig(data=4, fsdp=2))
  kw = dict(max_new_tokens=9, rng=jax.random.key(3), num_samples=2)
  plain = generate(model, ids, mask, cache_bucket=0, **kw)
  sharded = generate(model, ids, mask, cache_bucket=3, mesh=mesh, **kw)
  np.testing.assert_array_equal(np.asarray(sharded.tokens), np.asarray(plain.tokens))
  np.testing.assert_allclose(np.asarray(sharded.model_logps), np.asarray(plain.model_logps), atol=1e-5)
  assert not sharded.tokens.sharding.is_fully_replicated


def test_bad_cache_bucket_raises():
  model = random_model(CONFIGS["llama_gqa"], seed=0)
  ids, mask = left_padded_prompts()
  for bad in (-1, 2.5, "64"):
    with pytest.raises(ValueError, match="cache_bucket"):
      generate(model, jnp.asarray(ids), mask, max_new_tokens=3, greedy=True, cache_bucket=bad)
