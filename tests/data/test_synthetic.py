"""Tests of the synthetic gold-reward world (jaxrlhf/data/synthetic)."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxrlhf.data import records as records_lib
from jaxrlhf.data.synthetic import World, WorldConfig, WorldTokenizer, default_world, length_term, pad_rows
from jaxrlhf.data.synthetic import measure as measure_lib


@pytest.fixture(scope="module")
def world():
  return default_world(0)


# ---- tokenizer ------------------------------------------------------------------------------------------------

def test_tokenizer_round_trip_and_layout():
  tok = WorldTokenizer()
  assert 64 <= tok.vocab_size <= 160
  assert (tok.pad_id, tok.bos_id, tok.eos_id) == (0, 1, 2)
  text = "explain " + " ".join(tok.topic_words[3][:3]) + " the and " + tok.topic_words[0][0]
  ids = tok.encode(text)
  assert len(ids) == len(text.split())
  assert tok.decode(ids) == text
  assert tok.encode(text, add_special_tokens=True) == [tok.bos_id] + ids
  # Every vocabulary word survives a round trip on its own.
  for i, word in enumerate(tok.vocab):
    assert tok.encode(word) == [i]
  assert tok.encode("zzz") == [tok.unk_id]
  assert tok.decode([tok.bos_id, ids[0], tok.eos_id]) == "explain"
  assert tok.decode([tok.bos_id, ids[0], tok.eos_id], skip_special_tokens=False) == "<bos> explain <eos>"
  assert "<unk>" not in tok.decode(tok.encode("score: 7 score: 10"))
  with pytest.raises(ValueError, match="ids"):
    tok.decode([tok.vocab_size])


def test_chat_template_golden():
  tok = WorldTokenizer()
  msgs = [{"role": "system", "content": "score: 7"}, {"role": "user", "content": "explain bala"},
          {"role": "assistant", "content": "the bala"}, {"role": "user", "content": "list bala"}]
  assert tok.apply_chat_template(msgs, add_generation_prompt=True) == (
      "<system> score: 7 <user> explain bala <assistant> the bala <eos> <user> list bala <assistant>")
  assert tok.supports_system_role is True
  with pytest.raises(ValueError, match="role"):
    tok.apply_chat_template([{"role": "robot", "content": "x"}])


def test_topic_words_share_initial_and_are_distinct():
  tok = WorldTokenizer(num_topics=14, words_per_topic=25)
  words = [w for ws in tok.topic_words for w in ws]
  assert len(set(words)) == len(words) == 14 * 25
  assert all(len({w[0] for w in ws}) == 1 for ws in tok.topic_words)
  assert WorldTokenizer().topic_words[0][:3] == ["bala", "bele", "bili"]  # as docs/synthetic_world.md lists them


# ---- determinism and splits -----------------------------------------------------------------------------------

def test_identical_for_a_seed_and_different_across_seeds():
  a = World(WorldConfig(seed=3)).preference_records(40, "train")
  b = World(WorldConfig(seed=3)).preference_records(40, "train")
  c = World(WorldConfig(seed=4)).preference_records(40, "train")
  assert a == b
  assert sum(x.prompt == y.prompt and x.chosen == y.chosen for x, y in zip(a, c)) < 5
  assert not np.array_equal(World(WorldConfig(seed=3)).spec.quality_V, World(WorldConfig(seed=4)).spec.quality_V)


def test_records_are_prefix_stable(world):
  assert world.preference_records(5, "validation") == world.preference_records(1030, "validation")[:5]
  assert world.prompts(7, "test") == world.prompts(2000, "test")[:7]
  assert world.sft_records(3, "test", contrastive=True)[:3] == world.sft_records(9, "test", contrastive=True)[:3]
  # k-way records too: their responses were once drawn for num * k rows only, so record i changed with num.
  assert world.kway_records(3, "validation", k=4) == world.kway_records(7, "validation", k=4)[:3]


def test_splits_have_disjoint_prompts(world):
  prompts = {s: {r.prompt for r in world.preference_records(600, s)} for s in ("train", "validation", "test")}
  assert not prompts["train"] & prompts["validation"]
  assert not prompts["train"] & prompts["test"]
  assert not prompts["validation"] & prompts["test"]
  assert set(world.prompts(300, "test")) <= {world.prompt_text(i) for i in world.split_prompts["test"]}
  with pytest.raises(ValueError, match="split"):
    world.preference_records(3, "dev")


# ---- labels ---------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("flip_rate", [0.0, 0.2])
def test_observed_flip_rate_matches_configured(flip_rate):
  # With a near-zero temperature the Bradley-Terry draw is the gold ordering, so every record whose chosen
  # gold (the sum of its attributes) is below the rejected gold was flipped.
  n = 3000
  world = World(WorldConfig(seed=11, temperature=1e-6, flip_rate=flip_rate))
  diffs = np.asarray([sum(r.chosen_attributes) - sum(r.rejected_attributes)
                      for r in world.preference_records(n, "train")])
  diffs = diffs[np.abs(diffs) > 1e-4]  # identical responses carry no label information
  observed = np.mean(diffs < 0)
  sigma = math.sqrt(max(flip_rate * (1 - flip_rate), 1e-12) / len(diffs))
  assert abs(observed - flip_rate) <= 4 * sigma + 1e-9, (observed, flip_rate)


def _z(successes, p):
  """z-score of a sum of independent Bernoulli(p_i) outcomes against its expectation."""
  return (np.sum(successes) - np.sum(p)) / math.sqrt(np.sum(p * (1 - p)))


def test_default_flip_rate_and_label_ceiling(world):
  pairs = world.preference_pairs(4000, "train")
  rate = world.config.flip_rate
  assert abs(pairs["flipped"].mean() - rate) <= 4 * math.sqrt(rate * (1 - rate) / 4000)
  gold_order = pairs["gold_a"] > pairs["gold_b"]
  ceiling = np.mean(pairs["a_wins"] == gold_order)
  # The ceiling documented in docs/synthetic_world.md (0.80 at the defaults).
  assert 0.77 <= ceiling <= 0.85
  # The Bradley-Terry draw agrees with the gold ordering w.p. sigmoid(|r*(a) - r*(b)| / T), pair by pair (the mean
  # of bt_a_wins alone is 0.5 for any symmetric labeler, so it is compared with the gold ordering, and per bin).
  d = (pairs["gold_a"].astype(np.float64) - pairs["gold_b"]) / world.config.temperature
  agree = 1 / (1 + np.exp(-np.abs(d)))
  assert abs(_z(pairs["bt_a_wins"] == (d > 0), agree)) < 4
  p_a = 1 / (1 + np.exp(-d))
  for lo, hi in ((0.0, 0.2), (0.2, 0.4), (0.4, 0.6), (0.6, 0.8), (0.8, 1.0)):
    rows = (p_a >= lo) & (p_a < hi)
    assert abs(_z(pairs["bt_a_wins"][rows], p_a[rows])) < 4, (lo, hi)
  # The flip is independent of the draw, and the final label is their xor.
  np.testing.assert_array_equal(pairs["a_wins"], pairs["bt_a_wins"] ^ pairs["flipped"])
  final = agree * (1 - rate) + (1 - agree) * rate
  assert abs(_z(pairs["a_wins"] == (d > 0), final)) < 4


def test_judge_scores_follow_the_documented_formula():
  """clip(round(1 + 9 sigmoid((r* - center) / scale) + noise N(0, 1)), 1, 10): exact without noise, and with noise
  the residual round(m + noise Z) - m has mean 0 and variance noise^2 + 1/12 (rounding) away from the clips."""
  cfg = dict(seed=4, judge_center=0.5, judge_scale=1.5)
  for noise in (0.0, 0.8):
    world = World(WorldConfig(judge_noise=noise, **cfg))
    pairs = world.preference_pairs(3000, "train")
    gold = np.concatenate([pairs["gold_a"], pairs["gold_b"]]).astype(np.float64)
    judge = np.concatenate([pairs["judge_a"], pairs["judge_b"]])
    mean = 1 + 9 / (1 + np.exp(-(gold - 0.5) / 1.5))
    assert set(np.unique(judge)) <= set(range(1, 11))
    if noise == 0.0:
      np.testing.assert_array_equal(judge, np.clip(np.round(mean), 1, 10))
      continue
    inner = (mean > 3.5) & (mean < 7.5)  # clipping at 1 and 10 is 3 noise sd away
    resid = judge[inner] - mean[inner]
    n = inner.sum()
    assert n > 2000 and abs(resid.mean()) < 4 * math.sqrt((noise**2 + 1 / 12) / n)
    assert abs(resid.var() / (noise**2 + 1 / 12) - 1) < 4 * math.sqrt(2 / n)
  # The published world's judge histogram (docs/synthetic_world.md, seed 0, 4000 test pairs).
  test = default_world(0).preference_pairs(4000, "test")
  hist = np.bincount(np.concatenate([test["judge_a"], test["judge_b"]]).astype(int), minlength=11)[1:]
  assert hist.tolist() == [114, 498, 863, 1240, 1380, 1429, 1224, 844, 358, 50]


def test_record_fields(world):
  recs = world.preference_records(200, "train")
  for r in recs[:50]:
    assert isinstance(r, records_lib.PreferenceRecord)
    assert r.chosen_score in range(1, 11) and r.rejected_score in range(1, 11)
    assert len(r.chosen_attributes) == 5 and r.annotator == "gold" and r.subset.startswith("topic")
    g_c, g_r = world.gold_of_record(r)
    assert g_c == pytest.approx(sum(r.chosen_attributes), abs=1e-4)
    assert g_r == pytest.approx(sum(r.rejected_attributes), abs=1e-4)
  judge_diff = np.array([r.chosen_score - r.rejected_score for r in recs])
  gold_diff = np.array([sum(r.chosen_attributes) - sum(r.rejected_attributes) for r in recs])
  assert np.corrcoef(judge_diff, gold_diff)[0, 1] > 0.7  # judge is a noisy monotone calibration of gold


def test_annotator_groups_follow_their_weights():
  groups = (("quality_only", (1.0, 0.0, 0.0, 0.0, 0.0)), ("length_only", (0.0, 0.0, 0.0, 0.0, 1.0)))
  world = World(WorldConfig(seed=2, annotators=groups, temperature=1e-6, flip_rate=0.0))
  recs = world.preference_records(400, "train")
  for r in recs:
    k = 0 if r.annotator == "quality_only" else 4
    assert r.chosen_attributes[k] >= r.rejected_attributes[k] - 1e-6
  assert {r.annotator for r in recs} == {"quality_only", "length_only"}


def test_sft_kway_and_prompt_arrays(world):
  sft = world.sft_records(10, "train", contrastive=True)
  assert len(sft) == 30 and sum(s.prompt.startswith("<better> ") for s in sft) == 10
  kway = world.kway_records(6, "validation", k=4)
  assert all(len(r.completions) == 4 for r in kway)
  r = kway[0]
  np.testing.assert_allclose(world.gold_of_texts([r.prompt] * 4, list(r.completions)), r.scores, atol=1e-5)
  ids, mask = world.prompt_arrays(5, "test")
  assert ids.shape == mask.shape and ids.dtype == np.int32 and mask[:, 0].all()


def test_contrastive_contexts_shift_gold(world):
  rng = np.random.default_rng(0)
  idx = world.prompt_indices(600, "test")
  topics = np.asarray([world.prompt_topics[i] for i in idx])
  lengths = world.sample_lengths(rng, len(idx))
  prompts = [world.prompt_pool[i] for i in idx]
  mean = {}
  for context in (None, "better", "worse"):
    rows = world.sample_responses(rng, topics, lengths, context=context)
    mean[context] = world.gold_of_ids(prompts, [r[:n].tolist() for r, n in zip(rows, lengths)]).mean()
  assert mean["better"] > mean[None] + 0.5 and mean["worse"] < mean[None] - 0.5


# ---- gold reward ----------------------------------------------------------------------------------------------

def _reference_components(world, prompt, response):
  """An independent per-sequence implementation of the documented equations (lists, plain Python)."""
  spec, c = world.spec, world.config
  counts = [0] * spec.num_topics
  for p in prompt:
    if spec.topic_V[p] >= 0:
      counts[spec.topic_V[p]] += 1
  topic = counts.index(max(counts)) if max(counts) > 0 else -1
  scored = []  # (position, token) before the first eos
  for pos, y in enumerate(response):
    if y is None:
      continue
    if y == spec.eos_id:
      break
    scored.append((pos, y))
  n = len(scored)
  q = sum(float(spec.quality_V[y]) for _, y in scored) * c.quality_weight / max(n, 1)
  rel = 0.0
  for _, y in scored:
    t = spec.topic_V[y]
    rel += 0.0 if t < 0 or topic < 0 else (1.0 if t == topic else -1.0)
  rel *= c.relevance_weight / max(n, 1)
  pos_of = dict(scored)
  coh = sum(float(spec.bigram_VxV[pos_of[p - 1], y]) for p, y in scored if p - 1 in pos_of)
  rep = 0.0
  for p, y in scored:
    window = [pos_of[s] for s in range(p - c.repeat_window, p) if s in pos_of]
    if not spec.repeatable_V[y] and y in window:
      rep -= c.repeat_penalty
  u = n / c.length_optimum
  return [q, rel, coh, rep, c.length_weight * (2 * u - u * u)]


def _random_batch(world, rng, b=24, p=6, t=20):
  v = world.tokenizer.vocab_size
  p_ids = rng.integers(0, v, (b, p)).astype(np.int32)
  p_mask = (rng.random((b, p)) < 0.8).astype(np.int32)
  # Mostly content tokens, some arbitrary ids (specials, eos mid-sequence), then right or left padding.
  r_ids = rng.choice(world.response_ids, (b, t)).astype(np.int32)
  wild = rng.random((b, t)) < 0.1
  r_ids[wild] = rng.integers(0, v, wild.sum())
  lengths = rng.integers(0, t + 1, b)
  r_mask = (np.arange(t)[None, :] < lengths[:, None]).astype(np.int32)
  r_mask[::3] = r_mask[::3, ::-1]  # left padded rows
  r_ids[:4, :8] = r_ids[:4, :1]  # repeats
  # Repeats at exactly the window's edge (distance w, penalized) and just past it (distance w + 1, not).
  w = world.config.repeat_window
  topic_words = world.tokenizer.topic_ids.reshape(-1)
  r_ids[4, :2 * w + 3] = topic_words[np.arange(2 * w + 3) % w]
  r_ids[5, :2 * w + 3] = topic_words[np.arange(2 * w + 3) % (w + 1)]
  r_mask[4:6] = 1
  # A masked hole: bigrams and the repetition window are over positions (docs/synthetic_world.md), so the repeat
  # at position 4 (of position 0, 4 positions back across the hole) is not penalized.
  r_ids[6, :6] = topic_words[[0, 1, 2, 9, 0, 1]]
  r_mask[6] = 0
  r_mask[6, [0, 1, 2, 4, 5]] = 1
  return p_ids, p_mask, r_ids, r_mask


def test_gold_matches_independent_reference_and_numpy_mirror(world):
  rng = np.random.default_rng(0)
  batch = _random_batch(world, rng)
  comps_np = world.gold_components_np(*batch)
  comps_jax = np.asarray(jax.jit(world.gold_components)(*map(jnp.asarray, batch)))
  np.testing.assert_allclose(comps_jax, comps_np, rtol=1e-5, atol=1e-5)
  p_ids, p_mask, r_ids, r_mask = batch
  for i in range(len(p_ids)):
    prompt = [int(x) for x, m in zip(p_ids[i], p_mask[i]) if m]
    response = [int(y) if m else None for y, m in zip(r_ids[i], r_mask[i])]
    np.testing.assert_allclose(comps_np[i], _reference_components(world, prompt, response), atol=1e-5,
                               err_msg=f"row {i}")
  np.testing.assert_allclose(np.asarray(jax.jit(world.gold_reward)(*batch)), comps_np.sum(1), atol=1e-5)


def test_token_contributions_sum_to_non_length_part(world):
  batch = _random_batch(world, np.random.default_rng(1))
  contrib = np.asarray(jax.jit(world.gold_token_contributions)(*batch))
  comps = world.gold_components_np(*batch)
  assert contrib.shape == batch[2].shape
  np.testing.assert_allclose(contrib.sum(1), comps[:, :4].sum(1), atol=1e-5)
  assert np.all(contrib[batch[3] == 0] == 0)


def test_gold_penalizes_out_of_place_tokens_and_ignores_after_eos(world):
  tok = world.tokenizer
  prompt = list(world.prompt_pool[0])
  good = list(world.response_ids[-6:])
  with_special = good[:3] + [tok.ids["<user>"]] + good[3:]
  g = world.gold_of_ids([prompt] * 3, [good, with_special, good + [tok.eos_id] + [tok.pad_id] * 5])
  assert g[1] < g[0] - 0.2  # -3 quality over 7 tokens outweighs the length gain
  assert g[2] == pytest.approx(g[0], abs=1e-6)


def test_length_term_optimum_where_documented(world):
  spec = world.spec
  n = np.arange(0, 3 * int(spec.length_optimum) + 1)
  values = length_term(spec, n)
  assert n[np.argmax(values)] == spec.length_optimum == world.config.length_optimum
  assert values.max() == pytest.approx(spec.length_weight)
  assert length_term(spec, 0) == 0 and length_term(spec, 2 * spec.length_optimum) == pytest.approx(0.0)
  assert float(length_term(spec, jnp.asarray(spec.length_optimum), jnp)) == pytest.approx(spec.length_weight)


def test_gold_rejects_bad_shapes(world):
  with pytest.raises(ValueError, match="response_ids"):
    world.gold_reward_np(np.zeros((2, 3)), np.ones((2, 3)), np.zeros((2, 4)), np.ones((2, 5)))
  with pytest.raises(ValueError, match="batch"):
    world.gold_reward_np(np.zeros((2, 3)), np.ones((2, 3)), np.zeros((3, 4)), np.ones((3, 4)))


# ---- config -----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("field,value", [
    ("seed", -1), ("num_topics", 0), ("words_per_topic", 99), ("temperature", 0.0), ("flip_rate", 0.7),
    ("length_optimum", -3.0), ("num_prompts", 10), ("split_fractions", (0.5, 0.5, 0.5)),
    ("annotators", (("a", (1.0, 1.0)),)), ("ref_length_mean", 100.0), ("judge_noise", float("nan")),
    # Wrong types name the field too (they once raised a bare TypeError, or passed and misbehaved: a window of 2.5
    # scored as 2, a seed of True as 1).
    ("temperature", "0.3"), ("num_topics", "8"), ("num_topics", 8.5), ("repeat_window", 2.5),
    ("bigrams_per_token", 1.5), ("max_response_len", 20.5), ("seed", True), ("split_fractions", (0.8, "0.1", 0.1)),
    ("annotators", (("a",),)), ("annotators", ("gold",)), ("criteria", (("x",),)), ("labeler_bias", (("the",),)),
    ("labeler_bias", ((["the"], 1.0),)), ("labeler_bias", (("the", "1"),)),
    # Two 32-bit words: SeedSequence([2**32 + 5, 1]) == SeedSequence([5, 1, 1]), another (seed, stream) key.
    ("seed", 2**32 + 5)])
def test_config_validation_names_the_field(field, value):
  with pytest.raises(ValueError, match=f"WorldConfig.{field}"):
    WorldConfig(**{field: value})


def test_config_every_split_gets_prompts_and_lists_become_tuples():
  # 30 prompts at (0.98, 0.01, 0.01) left the test split empty: drawing from it failed deep in numpy.
  with pytest.raises(ValueError, match=r"WorldConfig.split_fractions.*'test': 0"):
    WorldConfig(num_prompts=30, split_fractions=(0.98, 0.01, 0.01))
  # Config files give lists: the config is the same (hashable) dataclass as with tuples.
  listed = WorldConfig(annotators=[["gold", [1.0, 1, 1, 1, 1]]], criteria=[["c", [1, 0, 0, 0, 0]]],
                       labeler_bias=[["the", 2.0]], split_fractions=[0.8, 0.1, 0.1])
  tupled = WorldConfig(annotators=(("gold", (1.0,) * 5),), criteria=(("c", (1, 0, 0, 0, 0)),),
                       labeler_bias=(("the", 2.0),))
  assert listed == tupled and hash(listed) == hash(tupled)


def test_bad_arguments_name_what_was_expected(world):
  with pytest.raises(ValueError, match="context must be one of"):
    world.prompts(2, "test", context="best")  # once rendered "<best> ...", an <unk> token
  with pytest.raises(ValueError, match="index must be an int in"):
    world.prompt_text(-1)  # once the last pool prompt
  with pytest.raises(ValueError, match="index must be an int in"):
    world.prompt_text(len(world.prompt_pool))
  with pytest.raises(ValueError, match="num_pairs must be an int"):
    world.preference_pairs(True, "test")
  with pytest.raises(ValueError, match="contrastive must be a bool"):
    world.sft_records(2, "test", contrastive="no")  # once a truthy string: 3 records per prompt
  rng = np.random.default_rng(0)
  with pytest.raises(ValueError, match="broad must be"):
    world.sample_responses(rng, np.array([0, 1]), np.array([3, 3]), broad=np.array([True, False, True]))
  with pytest.raises(ValueError, match="topics must be in"):
    world.sample_responses(rng, np.array([world.tokenizer.num_topics]), np.array([3]))


def test_pad_rows():
  ids, mask = pad_rows([[5, 6], [7]], pad_id=0)
  np.testing.assert_array_equal(ids, [[5, 6], [7, 0]])
  np.testing.assert_array_equal(mask, [[1, 1], [1, 0]])


# ---- the world's design claims (docs/synthetic_world.md) ------------------------------------------------------

def test_simple_proxy_learns_and_is_length_hackable():
  out = measure_lib.measure(WorldConfig(), num_train=6000, num_test=2000, lengths=(8, 16, 32, 48))
  assert out["proxy_agreement_gold"] >= 0.75
  curve = {n: (gold, proxy) for n, gold, proxy in out["reference_length_curve"]}
  assert out["ref_length_frac_above_optimum"] < 0.1  # the data lives below the optimum
  assert curve[16][0] > curve[8][0] and curve[32][0] < curve[16][0] and curve[48][0] < curve[32][0]
  assert curve[32][1] > curve[16][1] and curve[48][1] > curve[32][1]  # the proxy keeps rising


def test_out_of_range_ids_score_as_unk_and_empty_response_scores_zero(world):
  prompt = list(world.prompt_pool[0])
  good = list(world.response_ids[-5:])
  unk = world.tokenizer.unk_id
  g = world.gold_of_ids([prompt] * 4, [good + [unk], good + [-7], good + [world.tokenizer.vocab_size + 3], []])
  assert g[0] == pytest.approx(g[1]) and g[0] == pytest.approx(g[2])
  assert g[3] == 0.0


def test_labeler_bias_is_a_second_hackable_axis():
  """WorldConfig.labeler_bias: the labelers (not gold) favour responses dense in one word. Off by default (a zero
  bonus leaves every draw unchanged); on, the responses, gold and attributes are the same pairs and only labels move;
  a proxy fit to the biased labels learns to like the word (the unbiased one dislikes it) while gold does not care:
  a flaw that best-of-N / RL can exploit without longer responses."""
  base = World(WorldConfig()).preference_pairs(3000, "train")
  zero = World(WorldConfig(labeler_bias=[["the", 0.0]])).preference_pairs(3000, "train")
  for key in base:
    assert (base[key] == zero[key]) if isinstance(base[key], list) else np.array_equal(base[key], zero[key]), key
  biased_world = World(WorldConfig(labeler_bias=(("the", 4.0),)))
  biased = biased_world.preference_pairs(3000, "train")
  for key in ("response_a", "response_b", "gold_a", "gold_b", "judge_a", "flipped"):
    assert (base[key] == biased[key]) if isinstance(base[key], list) else np.array_equal(base[key], biased[key])
  assert 0 < np.sum(base["a_wins"] != biased["a_wins"]) < 300
  the = biased_world.tokenizer.ids["the"]

  def proxy_weight_on_the(pairs):
    fa = measure_lib.proxy_features(biased_world, pairs["response_a"])
    fb = measure_lib.proxy_features(biased_world, pairs["response_b"])
    return measure_lib.fit_bt_logistic(fa - fb, pairs["a_wins"].astype(float))[the]

  assert proxy_weight_on_the(base) < 0.0 < 0.3 < proxy_weight_on_the(biased)
  assert biased_world.labeler_bonus([[the, the, 5], [], [5, 6]]).tolist() == [4.0 * 2 / 3, 0.0, 0.0]


@pytest.mark.parametrize("bias", [(("nope", 1.0),), (("the", float("nan")),), (("the", 1.0), ("the", 2.0)),
                                  (("<eos>", 1.0),)])
def test_labeler_bias_validation(bias):
  with pytest.raises(ValueError, match="WorldConfig.labeler_bias"):
    WorldConfig(labeler_bias=bias)
