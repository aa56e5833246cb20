"""KV-cache generation vs cache-free full forwards: greedy decoding, log-probs, truncation, eos, RNG, sharding."""

import importlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from sampling_models import CONFIGS, VOCAB, full_forward, left_padded_prompts, random_model

from jaxrlhf.parallel import MeshConfig, make_mesh
from jaxrlhf.data.padding import pad_prompts
from jaxrlhf.sampling import generate
from jaxrlhf.train.scoring import jit_response_logps as response_logps

generate_lib = importlib.import_module("jaxrlhf.sampling.generate")  # the package re-exports the function

N_NEW = 7


def _log_softmax(x):
  x = np.asarray(x, np.float64)
  x = x - x.max(-1, keepdims=True)
  return x - np.log(np.exp(x).sum(-1, keepdims=True))


@pytest.fixture(scope="module", params=sorted(CONFIGS))
def model(request):
  return random_model(CONFIGS[request.param], seed=3)


def _reference_greedy(model, ids, mask, steps):
  """Repeated argmax of a cache-free forward over [prompt | tokens so far] (right-padded to a fixed width)."""
  B, P = ids.shape
  buf = np.concatenate([ids, np.zeros((B, steps), np.int32)], axis=1)
  buf_mask = np.concatenate([mask, np.zeros((B, steps), np.int32)], axis=1)
  tokens, logps = np.zeros((B, steps), np.int32), np.zeros((B, steps))
  for t in range(steps):
    logits = np.asarray(full_forward(model, jnp.asarray(buf), jnp.asarray(buf_mask)))[:, P + t - 1]
    tokens[:, t] = logits.argmax(-1)
    logps[:, t] = _log_softmax(logits)[np.arange(B), tokens[:, t]]
    buf[:, P + t], buf_mask[:, P + t] = tokens[:, t], 1
  return tokens, logps


def _teacher_forced_logps(model, ids, mask, tokens, temperature=1.0):
  """(B, N, V) float64 log-softmax(logits / temperature) predicting each generated token, one full forward."""
  P = ids.shape[1]
  full_ids = np.concatenate([ids, tokens], axis=1)
  full_mask = np.concatenate([mask, np.ones_like(tokens)], axis=1)
  logits = np.asarray(full_forward(model, jnp.asarray(full_ids), jnp.asarray(full_mask)))
  return _log_softmax(logits[:, P - 1:-1] / temperature)


def test_greedy_equals_repeated_full_forward_argmax(model):
  ids, mask = left_padded_prompts(seed=1)
  out = generate(model, ids, mask, max_new_tokens=N_NEW, greedy=True)
  ref_tokens, ref_logps = _reference_greedy(model, ids, mask, N_NEW)
  np.testing.assert_array_equal(np.asarray(out.tokens), ref_tokens)
  np.testing.assert_allclose(np.asarray(out.model_logps), ref_logps, atol=1e-5)
  np.testing.assert_array_equal(np.asarray(out.logps), 0.0)  # greedy is a point mass
  np.testing.assert_array_equal(np.asarray(out.mask), 1)
  np.testing.assert_array_equal(np.asarray(out.lengths), N_NEW)


def test_sampled_logps_match_full_forward(model):
  ids, mask = left_padded_prompts(seed=2)
  temperature, top_k = 0.7, 5
  out = generate(model, ids, mask, max_new_tokens=N_NEW, rng=jax.random.key(4), temperature=temperature,
                 top_k=top_k, num_samples=2)
  rep_ids, rep_mask = np.repeat(ids, 2, axis=0), np.repeat(mask, 2, axis=0)
  tokens = np.asarray(out.tokens)
  rows, cols = np.arange(tokens.shape[0])[:, None], np.arange(N_NEW)[None, :]
  model_lp = _teacher_forced_logps(model, rep_ids, rep_mask, tokens)
  np.testing.assert_allclose(np.asarray(out.model_logps), model_lp[rows, cols, tokens], atol=1e-5)
  # The sampling distribution: temperature, then the top-k set renormalized.
  scaled = _teacher_forced_logps(model, rep_ids, rep_mask, tokens, temperature)
  kth = np.sort(scaled, axis=-1)[..., -top_k][..., None]
  truncated = _log_softmax(np.where(scaled >= kth, scaled, -np.inf))
  assert np.isfinite(truncated[rows, cols, tokens]).all(), "a token outside the top-k set was sampled"
  np.testing.assert_allclose(np.asarray(out.logps), truncated[rows, cols, tokens], atol=1e-5)
  # response_logps (the reference-policy scorer) gives the same model log-probs.
  np.testing.assert_allclose(np.asarray(response_logps(model, rep_ids, rep_mask, out.tokens, out.mask)),
                             np.asarray(out.model_logps), atol=1e-5)


def test_top_k_one_and_tiny_top_p_equal_greedy():
  model = random_model(CONFIGS["llama_gqa"], seed=3)
  ids, mask = left_padded_prompts(seed=5)
  greedy = np.asarray(generate(model, ids, mask, max_new_tokens=N_NEW, greedy=True).tokens)
  for kwargs in (dict(top_k=1, temperature=3.0), dict(top_p=1e-6)):
    out = generate(model, ids, mask, max_new_tokens=N_NEW, rng=jax.random.key(7), **kwargs)
    np.testing.assert_array_equal(np.asarray(out.tokens), greedy, err_msg=str(kwargs))
    np.testing.assert_allclose(np.asarray(out.logps), 0.0, atol=1e-6)  # all mass on one token


def test_eos_ends_a_row_and_pads_the_rest():
  model = random_model(CONFIGS["qwen2"], seed=3)
  ids, mask = left_padded_prompts(seed=6)
  free = np.asarray(generate(model, ids, mask, max_new_tokens=N_NEW, greedy=True).tokens)
  eos = int(free[0, 2])  # row 0 emits it at step <= 2
  out = generate(model, ids, mask, max_new_tokens=N_NEW, greedy=True, eos_ids=(eos, VOCAB + 5), pad_id=-1)
  tokens, out_mask = np.asarray(out.tokens), np.asarray(out.mask)
  for b in range(free.shape[0]):
    hits = np.flatnonzero(free[b] == eos)
    length = int(hits[0]) + 1 if hits.size else N_NEW
    np.testing.assert_array_equal(tokens[b, :length], free[b, :length])
    assert (tokens[b, length:] == -1).all() and (out_mask[b, length:] == 0).all() and (out_mask[b, :length] == 1).all()
    assert int(out.lengths[b]) == length
    assert (np.asarray(out.model_logps)[b, length:] == 0).all()
  assert int(out.lengths[0]) <= 3


def test_temperature_sampling_frequencies():
  """One step, 6000 samples of one prompt: counts vs softmax(logits / T) from a full forward (chi-square)."""
  model = random_model(CONFIGS["llama_gqa"], seed=11, scale=0.15)
  ids, mask = left_padded_prompts(seed=3, pads=(1,))
  temperature, draws = 1.5, 6000
  out = generate(model, ids, mask, max_new_tokens=1, rng=jax.random.key(0), temperature=temperature,
                 num_samples=draws)
  counts = np.bincount(np.asarray(out.tokens)[:, 0], minlength=VOCAB)
  logits = np.asarray(full_forward(model, jnp.asarray(ids), jnp.asarray(mask)))[0, -1]
  expected = draws * np.exp(_log_softmax(logits / temperature))
  big = expected >= 5  # pool the rare tokens into one cell
  obs = np.append(counts[big], counts[~big].sum())
  exp = np.append(expected[big], expected[~big].sum())
  chi2 = float(np.sum((obs - exp) ** 2 / np.maximum(exp, 1e-9)))
  dof = len(obs) - 1
  assert chi2 < dof + 5 * np.sqrt(2 * dof), (chi2, dof)  # ~ mean + 5 sd of the chi-square null
  # The same counts are far from the T = 1 distribution: the test can fail.
  exp1 = draws * np.exp(_log_softmax(logits))
  assert float(np.sum((counts - exp1) ** 2 / exp1)) > 3 * chi2 + 50


def test_top_p_sampling_stays_in_the_nucleus():
  model = random_model(CONFIGS["qwen2"], seed=2, scale=0.3)
  ids, mask = left_padded_prompts(seed=4, pads=(0,))
  out = generate(model, ids, mask, max_new_tokens=1, rng=jax.random.key(1), top_p=0.6, num_samples=500)
  probs = np.exp(_log_softmax(np.asarray(full_forward(model, jnp.asarray(ids), jnp.asarray(mask)))[0, -1]))
  order = np.argsort(-probs)
  before = np.cumsum(probs[order]) - probs[order]
  nucleus = set(order[before < 0.6].tolist())
  drawn = set(np.asarray(out.tokens)[:, 0].tolist())
  assert drawn <= nucleus and len(drawn) == len(nucleus) > 1
  renorm = probs[order][before < 0.6].sum()
  np.testing.assert_allclose(np.asarray(out.logps)[:, 0], np.log(probs[np.asarray(out.tokens)[:, 0]] / renorm),
                             atol=1e-5)


def test_determinism_and_per_row_keys():
  model = random_model(CONFIGS["llama_gqa"], seed=4)
  ids, mask = left_padded_prompts(seed=8)
  run = lambda key, **kw: np.asarray(generate(model, ids, mask, max_new_tokens=N_NEW, rng=key, **kw).tokens)
  keys = jax.random.split(jax.random.key(9), 3)
  base = run(keys)
  np.testing.assert_array_equal(run(jax.random.split(jax.random.key(9), 3)), base)
  assert (run(jax.random.split(jax.random.key(8), 3)) != base).any()
  # A row's samples depend on its own key only, not on the other rows: shuffle the batch with its keys.
  perm = np.array([2, 0, 1])
  shuffled = np.asarray(generate(model, ids[perm], mask[perm], max_new_tokens=N_NEW, rng=keys[perm]).tokens)
  np.testing.assert_array_equal(shuffled, base[perm])
  # Sample 0 of num_samples=3 is the num_samples=1 sample; the other samples differ.
  many = run(keys, num_samples=3).reshape(3, 3, N_NEW)
  np.testing.assert_array_equal(many[:, 0], base)
  assert (many[:, 1] != many[:, 0]).any()


def test_one_program_per_shape():
  model = random_model(CONFIGS["llama_gqa"], seed=5)
  ids, mask = left_padded_prompts(seed=9)
  generate(model, ids, mask, max_new_tokens=5, rng=jax.random.key(0))
  before = generate_lib._generate_jit._cache_size()
  other_ids, other_mask = left_padded_prompts(seed=10, pads=(3, 0, 1))
  generate(model, other_ids, other_mask, max_new_tokens=5, rng=jax.random.key(1))
  assert generate_lib._generate_jit._cache_size() == before


def test_sharded_over_the_mesh_matches_unsharded():
  model = random_model(CONFIGS["gpt2"], seed=6)
  rows = [list(np.random.default_rng(i).integers(3, VOCAB, size=1 + i % 5)) for i in range(8)]
  ids, mask = pad_prompts(rows, width=6)
  mesh = make_mesh(MeshConfig(data=4, fsdp=2))
  plain = generate(model, ids, mask, max_new_tokens=N_NEW, rng=jax.random.key(3), num_samples=2)
  sharded = generate(model, ids, mask, max_new_tokens=N_NEW, rng=jax.random.key(3), num_samples=2, mesh=mesh)
  np.testing.assert_array_equal(np.asarray(sharded.tokens), np.asarray(plain.tokens))
  np.testing.assert_allclose(np.asarray(sharded.model_logps), np.asarray(plain.model_logps), atol=1e-5)
  assert len(sharded.tokens.sharding.device_set) == 8
  assert not sharded.tokens.sharding.is_fully_replicated


def test_pad_prompts_left_pads_to_buckets():
  ids, mask = pad_prompts([[5, 6], [7, 8, 9]], pad_id=1, buckets=(4, 8))
  np.testing.assert_array_equal(ids, [[1, 1, 5, 6], [1, 7, 8, 9]])
  np.testing.assert_array_equal(mask, [[0, 0, 1, 1], [0, 1, 1, 1]])
  assert pad_prompts([[1] * 17])[0].shape == (1, 32)
  with pytest.raises(ValueError, match="largest bucket"):
    pad_prompts([[1] * 9], buckets=(4, 8))


def test_bad_inputs_raise():
  model = random_model(CONFIGS["llama_gqa"], seed=0)
  ids, mask = left_padded_prompts()
  with pytest.raises(ValueError, match="left-padded"):
    generate(model, ids, mask[:, ::-1], max_new_tokens=2, greedy=True)
  with pytest.raises(ValueError, match="temperature"):
    generate(model, ids, mask, max_new_tokens=2, rng=jax.random.key(0), temperature=0.0)
  with pytest.raises(ValueError, match="rng"):
    generate(model, ids, mask, max_new_tokens=2)
  with pytest.raises(ValueError, match="max_new_tokens"):
    generate(model, ids, mask, max_new_tokens=0, greedy=True)
  with pytest.raises(ValueError, match="top_p"):
    generate(model, ids, mask, max_new_tokens=2, rng=jax.random.key(0), top_p=0.0)
  with pytest.raises(ValueError, match="row keys"):
    generate(model, ids, mask, max_new_tokens=2, rng=jax.random.split(jax.random.key(0), 2))


@pytest.mark.parametrize("scale", [0.01, 8.0])  # flat: the nucleus spills past the sorted head; peaked: inside it
def test_nucleus_mask_matches_a_full_sort(scale):
  logits = np.random.default_rng(0).normal(size=(3, 1000)).astype(np.float32) * scale
  got = np.asarray(generate_lib._truncate(jnp.asarray(logits), None, 0.9)) > np.finfo(np.float32).min
  probs = np.exp(_log_softmax(logits))
  for b in range(3):
    order = np.argsort(-probs[b])
    before = np.cumsum(probs[b, order]) - probs[b, order]
    want = np.zeros(1000, bool)
    want[order[before < 0.9]] = True
    np.testing.assert_array_equal(got[b], want)
  assert (got.sum(1) > 256).all() if scale < 1 else (got.sum(1) < 256).all()


def test_top_k_then_top_p_on_a_flat_distribution():
  """top-k masks to the float32 minimum first; the nucleus of the renormalized top-k set is then kept."""
  logits = np.random.default_rng(1).normal(size=(2, 1000)).astype(np.float32) * 0.01
  got = np.asarray(generate_lib._truncate(jnp.asarray(logits), 600, 0.5)) > np.finfo(np.float32).min
  for b in range(2):
    order = np.argsort(-logits[b])[:600]
    p = np.exp(_log_softmax(logits[b, order]))
    before = np.cumsum(p) - p
    want = np.zeros(1000, bool)
    want[order[before < 0.5]] = True
    np.testing.assert_array_equal(got[b], want)


@pytest.mark.parity
@pytest.mark.parametrize("probs,top_p", [((0.5, 0.25, 0.25), 0.5), ((0.5, 0.25, 0.125, 0.125), 0.75),
                                         ((0.125, 0.5, 0.125, 0.25), 0.75), ((0.75, 0.125, 0.0625, 0.0625), 0.875)])
def test_nucleus_at_the_exact_mass_boundary_matches_transformers(probs, top_p):
  """Dyadic probabilities make the mass before a token exactly top_p: that token is not needed to reach top_p and is
  dropped, as transformers' TopPLogitsWarper (`cumsum(ascending) <= 1 - top_p` removed) drops it."""
  from conftest import require_module  # pylint: disable=g-import-not-at-top
  torch = require_module("torch")
  warper = require_module("transformers.generation.logits_process").TopPLogitsWarper(top_p)
  logits = np.log(np.asarray([probs], np.float32))
  got = np.asarray(generate_lib._truncate(jnp.asarray(logits), None, top_p)) > np.finfo(np.float32).min
  want = torch.isfinite(warper(None, torch.tensor(logits))).numpy()
  np.testing.assert_array_equal(got, want)
  order = np.argsort(-np.asarray(probs))
  before = np.cumsum(np.asarray(probs)[order]) - np.asarray(probs)[order]
  np.testing.assert_array_equal(got[0, order], before < top_p)  # the smallest set reaching top_p, by hand


def test_out_of_range_pad_ids_are_harmless():
  model = random_model(CONFIGS["llama_gqa"], seed=7)
  ids, mask = left_padded_prompts(seed=12)
  clean = generate(model, ids, mask, max_new_tokens=N_NEW, greedy=True, eos_ids=(int(ids[0, -1]),))
  dirty = generate(model, np.where(mask > 0, ids, -7), mask, max_new_tokens=N_NEW, greedy=True,
                   eos_ids=(int(ids[0, -1]),), pad_id=-1)
  np.testing.assert_array_equal(np.asarray(dirty.mask), np.asarray(clean.mask))
  np.testing.assert_array_equal(np.where(np.asarray(clean.mask) > 0, np.asarray(dirty.tokens), 0),
                                np.where(np.asarray(clean.mask) > 0, np.asarray(clean.tokens), 0))
  assert np.isfinite(np.asarray(dirty.model_logps)).all()
  lp = response_logps(model, np.where(mask > 0, ids, -7), mask, dirty.tokens, dirty.mask)
  np.testing.assert_allclose(np.asarray(lp), np.asarray(clean.model_logps), atol=1e-5)


def test_content_lengths_exclude_the_end_token():
  tokens = jnp.array([[5, 6, 2, 0], [5, 5, 5, 5], [3, 0, 0, 0], [7, 1, 0, 0]])
  mask = jnp.array([[1, 1, 1, 0], [1, 1, 1, 1], [1, 0, 0, 0], [1, 1, 0, 0]])
  # Row 0 ended with <eos> = 2 (2 content tokens), row 1 ran out of budget, row 2 was only an end token 3,
  # row 3 ended with the second end id 1.
  np.testing.assert_array_equal(generate_lib.content_lengths(tokens, mask, (2, 3, 1)), [2, 4, 0, 1])
  np.testing.assert_array_equal(generate_lib.content_lengths(tokens, mask, ()), mask.sum(-1))


def test_content_lengths_of_numpy_int64_ids_warn_nothing():
  """numpy's default int64 ids (what a user's arrays are) are counted like int32 ones, without jax's "int64 is not
  available" warning (it came from asking for the ids' dtype explicitly)."""
  import warnings  # pylint: disable=g-import-not-at-top
  tokens = np.array([[5, 6, 2, 0], [2, 0, 0, 0], [5, 6, 7, 8]], np.int64)
  mask = np.array([[1, 1, 1, 0], [1, 0, 0, 0], [1, 1, 1, 1]], np.int64)
  with warnings.catch_warnings():
    warnings.simplefilter("error")
    lengths = generate_lib.content_lengths(tokens, mask, (2,))
  np.testing.assert_array_equal(lengths, [2, 0, 4])
