"""`generate(tokens_per_iteration=k)`: k decode steps per iteration of the decode loop, the exit tested once per k
tokens. Same tokens and log-probs as one step per iteration (rows ending inside a block, phases of the cache, several
samples); the block is a loop XLA knows the trip count of (what spares a GPU the predicate's trip to the host); the
loop still stops soon after every row has ended."""

import pathlib
import re
import sys

import jax
import numpy as np
import pytest
from sampling_models import CONFIGS, left_padded_prompts, random_model

from jaxrlhf.sampling import generate

REPO_ROOT = pathlib.Path(__file__).resolve().parents[2]
if str(REPO_ROOT) not in sys.path:
  sys.path.insert(0, str(REPO_ROOT))

from experiments import trace_summary  # noqa: E402


def _same(a, b):
  np.testing.assert_array_equal(np.asarray(a.tokens), np.asarray(b.tokens))
  np.testing.assert_array_equal(np.asarray(a.mask), np.asarray(b.mask))
  np.testing.assert_array_equal(np.asarray(a.lengths), np.asarray(b.lengths))
  np.testing.assert_allclose(np.asarray(a.logps), np.asarray(b.logps), atol=1e-6)
  np.testing.assert_allclose(np.asarray(a.model_logps), np.asarray(b.model_logps), atol=1e-6)


@pytest.mark.parametrize("bucket", [0, 3])
def test_blocks_of_k_steps_give_the_tokens_of_one_step_per_iteration(bucket):
  """11 new tokens (no k below divides the 10 fed-back steps evenly but 2 and 5), left-padded prompts, 2 samples
  each, temperature + top-k, an end token that rows emit at different steps (inside blocks), and the cache read in
  phases of 3 slots (phases of 1 to 3 steps, shorter than some blocks) or whole."""
  model = random_model(CONFIGS["llama_gqa"], seed=4)
  ids, mask = left_padded_prompts(seed=2)
  kw = dict(max_new_tokens=11, rng=jax.random.key(7), temperature=0.8, top_k=5, num_samples=2, cache_bucket=bucket)
  free = generate(model, ids, mask, **kw)
  # An end token that some rows emit early and others late or never: rows stop in the middle of blocks.
  eos = int(np.asarray(free.tokens)[1, 4])
  one = generate(model, ids, mask, eos_ids=(eos,), **kw)
  lengths = np.asarray(one.lengths)
  assert lengths.min() < 11 and len(set(lengths.tolist())) > 1, lengths
  for k in (2, 3, 4, 5, 11, 16):
    _same(generate(model, ids, mask, eos_ids=(eos,), tokens_per_iteration=k, **kw), one)
  _same(generate(model, ids, mask, tokens_per_iteration=4, **kw), free)


def test_greedy_gpt2_and_one_new_token():
  model = random_model(CONFIGS["gpt2"], seed=3)
  ids, mask = left_padded_prompts(seed=5)
  for n in (1, 2, 9):
    one = generate(model, ids, mask, max_new_tokens=n, greedy=True)
    _same(generate(model, ids, mask, max_new_tokens=n, greedy=True, tokens_per_iteration=3), one)


def _known_trip_counts(model, ids, mask, **kw) -> list[int]:
  """The trip counts XLA's while-loop analysis found in the compiled generation program."""
  lowered = jax.jit(lambda i, m: generate(model, i, m, **kw).tokens).lower(ids, mask)
  return [int(n) for n in re.findall(r'"known_trip_count":\{"n":"(\d+)"\}', lowered.compile().as_text())]


def test_the_block_is_a_loop_of_known_trip_count():
  model = random_model(CONFIGS["llama_gqa"], seed=4)
  ids, mask = left_padded_prompts(seed=2)
  kw = dict(max_new_tokens=11, greedy=True, cache_bucket=0)
  assert 4 not in _known_trip_counts(model, ids, mask, **kw)
  assert 4 in _known_trip_counts(model, ids, mask, tokens_per_iteration=4, **kw)


def test_the_loop_still_stops_once_every_row_has_ended(tmp_path):
  """Every row ends at its second token (step 1, the first of the first block of 4): a 64-token generation runs
  that one block and stops: it executes the ops of a 5-token generation (one block) to within half a decode step's
(the programs' loop tests and buffers differ a little), not the 64-token one's."""
  model = random_model(CONFIGS["llama_gqa"], seed=4)
  ids, mask = left_padded_prompts(seed=2)
  second = np.asarray(generate(model, ids, mask, max_new_tokens=2, greedy=True).tokens)[:, 1]
  kw = dict(greedy=True, cache_bucket=0, tokens_per_iteration=4)

  def ops(name, **more):
    call = lambda: jax.block_until_ready(generate(model, ids, mask, **kw, **more))  # noqa: E731
    call()  # compiled outside the trace
    return trace_summary.summarize(trace_summary.trace_call(call, str(tmp_path / name)))["ops"]

  stopped = ops("stopped", max_new_tokens=64, eos_ids=tuple(int(t) for t in set(second.tolist())))
  short, full = ops("short", max_new_tokens=5), ops("full", max_new_tokens=64)
  per_step = (full - short) / (64 - 5)  # ops of one decode step (~120 here)
  assert abs(stopped - short) < per_step / 2 and per_step > 20, (stopped, short, full)


@pytest.mark.parametrize("bad", [0, -2, True, 1.5, "4"])
def test_bad_values_name_the_argument(bad):
  model = random_model(CONFIGS["llama_gqa"], seed=4)
  ids, mask = left_padded_prompts(seed=2)
  with pytest.raises(ValueError, match="tokens_per_iteration must be an int >= 1"):
    generate(model, ids, mask, max_new_tokens=3, greedy=True, tokens_per_iteration=bad)
