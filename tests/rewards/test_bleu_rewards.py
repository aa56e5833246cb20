"""jaxrlhf.rewards.bleu against its two reference implementations: sacrebleu's sentence_bleu (installed, the `test`
extra) for the "sacrebleu" variant, and tensorflow/nmt's compute_bleu, which Hugging Face evaluate's "bleu" metric
runs and BLEUBERI calls with smooth=True, transcribed below, for the "bleuberi" variant; plus hand-computed values,
the 13a tokenizer against sacrebleu's, and the reward functions' column and None handling."""

import collections
import math

import numpy as np
import pytest
import sacrebleu
from sacrebleu.tokenizers.tokenizer_13a import Tokenizer13a

from jaxrlhf.rewards import bleu as bleu_lib
from jaxrlhf.rewards.calling import call_reward_function


# tensorflow/nmt nmt/scripts/bleu.py `compute_bleu` (Apache-2.0), as vendored in huggingface/evaluate
# metrics/bleu/nmt_bleu.py, which evaluate.load("bleu").compute(..., smooth=True) runs on Tokenizer13a tokens.
def _nmt_get_ngrams(segment, max_order):
  ngram_counts = collections.Counter()
  for order in range(1, max_order + 1):
    for i in range(0, len(segment) - order + 1):
      ngram_counts[tuple(segment[i:i + order])] += 1
  return ngram_counts


def nmt_compute_bleu(reference_corpus, translation_corpus, max_order=4, smooth=False):
  matches_by_order = [0] * max_order
  possible_matches_by_order = [0] * max_order
  reference_length = 0
  translation_length = 0
  for (references, translation) in zip(reference_corpus, translation_corpus):
    reference_length += min(len(r) for r in references)
    translation_length += len(translation)
    merged_ref_ngram_counts = collections.Counter()
    for reference in references:
      merged_ref_ngram_counts |= _nmt_get_ngrams(reference, max_order)
    translation_ngram_counts = _nmt_get_ngrams(translation, max_order)
    overlap = translation_ngram_counts & merged_ref_ngram_counts
    for ngram in overlap:
      matches_by_order[len(ngram) - 1] += overlap[ngram]
    for order in range(1, max_order + 1):
      possible_matches = len(translation) - order + 1
      if possible_matches > 0:
        possible_matches_by_order[order - 1] += possible_matches
  precisions = [0] * max_order
  for i in range(0, max_order):
    if smooth:
      precisions[i] = ((matches_by_order[i] + 1.) / (possible_matches_by_order[i] + 1.))
    elif possible_matches_by_order[i] > 0:
      precisions[i] = (float(matches_by_order[i]) / possible_matches_by_order[i])
    else:
      precisions[i] = 0.0
  if min(precisions) > 0:
    p_log_sum = sum((1. / max_order) * math.log(p) for p in precisions)
    geo_mean = math.exp(p_log_sum)
  else:
    geo_mean = 0
  if reference_length == 0 or translation_length == 0:
    bp = 0.0
  else:
    ratio = float(translation_length) / reference_length
    bp = 1. if ratio > 1.0 else math.exp(1 - 1. / ratio)
  return geo_mean * bp


def evaluate_bleu_smooth(prediction, references, max_order=4):
  """evaluate's "bleu" with smooth=True on one prediction, as BLEUBERI's reward calls it."""
  tok = Tokenizer13a()
  return nmt_compute_bleu([[tok(r).split() for r in references]], [tok(prediction).split()], max_order, smooth=True)


# (hypothesis, references): short hypotheses, zero matches, several references, clipping, ties, punctuation.
CASES = [
    ("the cat sat on the mat", ["the cat is on the mat"]),
    ("the cat sat on the mat", ["the cat is on the mat", "a cat sat on a mat there"]),
    ("the cat", ["the cat sat on the mat"]),
    ("cat", ["the cat sat on the mat"]),
    ("the the the the the the the", ["the cat is on the mat"]),
    ("x y", ["a b"]),  # no match of any order
    ("x y z w v", ["a b c d e"]),
    ("a b x d", ["a b c d"]),  # unigrams only partly, one bigram
    ("one two three four five six", ["one two", "one two three four five six seven"]),  # shortest != closest
    ("a b c", ["a b c d", "a b"]),  # tie in closest length: the shorter
    ("Hello, world! It's 3.5 km (approx.).", ["Hello world, it's 3.5km approx."]),
    ("The answer is: 1,000 apples.", ["The answer: 1,000 apples", "it is 1000 apples."]),
    ("a b c d e f g h i j k l", ["a b c d e f g h i j k l"]),
    ("a b c d e f g h i j k l m n", ["a b c d", "x y"]),
    ("same length here", ["same length there"]),
]
SACREBLEU_SMOOTHING = {"exp": dict(smooth_method="exp"), "add1": dict(smooth_method="add-k", smooth_value=1),
                       "none": dict(smooth_method="none")}


def _random_cases(n, seed=0):
  rng = np.random.default_rng(seed)
  vocab = ["a", "b", "c", "d", "e", ",", "."]
  cases = []
  for _ in range(n):
    hyp = " ".join(rng.choice(vocab, size=rng.integers(1, 12)))
    refs = [" ".join(rng.choice(vocab, size=rng.integers(1, 12))) for _ in range(rng.integers(1, 4))]
    cases.append((hyp, refs))
  return cases


@pytest.mark.parametrize("text", ["Hello, world! It costs $1,000.50 (approx).", "e-mail 3-2 a.b 5.5 x,y 1.5.",
                                  "a &amp; b &lt;c&gt; &quot;q&quot; line-\nbreak\nnext <skipped> end",
                                  "{braces} [brackets] ~tilde~ `tick` @at #hash ^caret |pipe| \\back/slash",
                                  "naïve café — dashes – and ’quotes’", "   ", ""])
def test_tokenize_13a_equals_sacrebleu(text):
  assert bleu_lib.tokenize_13a(text) == Tokenizer13a()(text).split()


def test_tokenize_13a_equals_sacrebleu_random():
  rng = np.random.default_rng(1)
  alphabet = list("ab09 .,-\n&;:!?()[]{}$%/'\"") + ["&amp;", "&lt;", "-\n", "<skipped>"]
  for _ in range(300):
    text = "".join(rng.choice(alphabet, size=rng.integers(0, 30)))
    assert bleu_lib.tokenize_13a(text) == Tokenizer13a()(text).split(), repr(text)


@pytest.mark.parametrize("smoothing", ["exp", "add1", "none"])
def test_sacrebleu_variant_equals_sacrebleu(smoothing):
  fn = bleu_lib.bleu_reward(smoothing=smoothing)
  cases = CASES + _random_cases(200)
  ours = fn(prompts=["p"] * len(cases), completions=[h for h, _ in cases], references=[r for _, r in cases])
  for (hyp, refs), value in zip(cases, ours):
    expected = sacrebleu.sentence_bleu(hyp, refs, **SACREBLEU_SMOOTHING[smoothing]).score / 100
    assert value == pytest.approx(expected, rel=1e-12, abs=1e-15), (hyp, refs)


def test_sacrebleu_variant_options_equal_sacrebleu():
  hyp, refs = "The Cat sat ON the mat.", ["the cat is on THE mat."]
  for lowercase in (False, True):
    value = bleu_lib.bleu_reward(lowercase=lowercase)(prompts=["p"], completions=[hyp], references=[refs])[0]
    assert value == pytest.approx(sacrebleu.sentence_bleu(hyp, refs, lowercase=lowercase).score / 100, rel=1e-12)
  value = bleu_lib.bleu_reward(tokenize="whitespace")(prompts=["p"], completions=[hyp], references=[refs])[0]
  assert value == pytest.approx(sacrebleu.sentence_bleu(hyp, refs, tokenize="none").score / 100, rel=1e-12)
  value = bleu_lib.bleu_reward(max_order=2)(prompts=["p"], completions=[hyp], references=[refs])[0]
  expected = sacrebleu.metrics.BLEU(max_ngram_order=2, effective_order=True).sentence_score(hyp, refs).score / 100
  assert value == pytest.approx(expected, rel=1e-12)


def test_bleuberi_variant_equals_nmt_compute_bleu():
  fn = bleu_lib.bleuberi_reward()
  cases = CASES + _random_cases(200, seed=2)
  ours = fn(prompts=["p"] * len(cases), completions=[h for h, _ in cases], references=[r for _, r in cases])
  for (hyp, refs), value in zip(cases, ours):
    assert value == pytest.approx(evaluate_bleu_smooth(hyp, refs), rel=1e-12, abs=1e-15), (hyp, refs)
  fn3 = bleu_lib.bleuberi_reward(max_order=3)
  assert fn3(prompts=["p"], completions=[CASES[1][0]], references=[CASES[1][1]])[0] == pytest.approx(
      evaluate_bleu_smooth(*CASES[1], max_order=3), rel=1e-12)


def test_sentence_bleu_hand_computed():
  # The goldens of reward_sources' sentence_bleu (tests/stages/test_rl_stage.py), unchanged.
  hyp, ref = "the cat sat on the mat".split(), "the cat is on the mat".split()
  # p1 = 5/6, p2 = 3/5, p3 = 1/4, p4 = 0/3 -> exp smoothing 1 / (2 * 3); BP = 1 (equal lengths).
  assert bleu_lib.sentence_bleu(hyp, [ref]) == pytest.approx((5 / 6 * 3 / 5 * 1 / 4 * 1 / 6) ** 0.25, rel=1e-12)
  assert bleu_lib.sentence_bleu(hyp, [ref], smoothing="add1") == pytest.approx(
      (5 / 6 * 4 / 6 * 2 / 5 * 1 / 4) ** 0.25, rel=1e-12)
  assert bleu_lib.sentence_bleu(hyp, [ref], smoothing="none") == 0.0
  assert bleu_lib.sentence_bleu(ref, [ref]) == pytest.approx(1.0)
  # c = 2 < r = 6: BP = exp(1 - 6/2); orders 3, 4 have no hypothesis n-gram (effective order 2).
  assert bleu_lib.sentence_bleu(["the", "cat"], ["the cat sat on the mat".split()]) == pytest.approx(math.exp(-2.0))
  assert bleu_lib.sentence_bleu(["a", "b"], [["x"] * 9, ["a", "b"]]) == pytest.approx(1.0)
  assert bleu_lib.sentence_bleu(["a", "a", "a"], [["a", "b", "c"]], max_order=1) == pytest.approx(1 / 3)
  assert bleu_lib.sentence_bleu([], [["a"]]) == 0.0
  # sacrebleu's rules where the earlier copy differed: no match of any order gives 0 whatever the smoothing, and
  # add-one keeps orders beyond the hypothesis length as (0 + 1) / (0 + 1) = 1.
  assert bleu_lib.sentence_bleu(["x", "y"], [["a", "b"]]) == 0.0
  assert bleu_lib.sentence_bleu(["the", "dog"], ["the cat sat on the mat".split()], smoothing="add1") == pytest.approx(
      math.exp(-2.0) * (1 / 2 * 1 / 2 * 1 * 1) ** 0.25)
  with pytest.raises(ValueError, match="references"):
    bleu_lib.sentence_bleu(["a"], [])


def test_bleuberi_hand_computed():
  tokens = str.split
  # m = 5, 3, 1, 0 of t = 6, 5, 4, 3: p_n = (m + 1) / (t + 1); c = r = 6, BP = 1.
  assert bleu_lib.bleuberi_bleu(tokens("the cat sat on the mat"), [tokens("the cat is on the mat")]) == pytest.approx(
      (6 / 7 * 4 / 6 * 2 / 5 * 1 / 4) ** 0.25, rel=1e-12)
  # Short hypothesis: orders 3, 4 have t = 0 -> p = 1 (kept, weight 1/4); BP = exp(1 - 6/2).
  assert bleu_lib.bleuberi_bleu(tokens("the cat"), [tokens("the cat sat on the mat")]) == pytest.approx(
      math.exp(-2.0), rel=1e-12)
  # No match of any order still scores: p = 1/3, 1/2, 1, 1 (sacrebleu gives 0).
  assert bleu_lib.bleuberi_bleu(tokens("x y"), [tokens("a b")]) == pytest.approx((1 / 3 * 1 / 2) ** 0.25, rel=1e-12)
  # Brevity from the SHORTEST reference (2), not the closest (7): c = 6 > 2, BP = 1.
  hyp, refs = tokens("one two three four five six"), [tokens("one two"), tokens("one two three four five six seven")]
  assert bleu_lib.bleuberi_bleu(hyp, refs) == pytest.approx(1.0)
  assert bleu_lib.sentence_bleu(hyp, refs) == pytest.approx(math.exp(1 - 7 / 6))
  assert bleu_lib.bleuberi_bleu([], [["a"]]) == 0.0
  assert bleu_lib.bleuberi_bleu(["a"], [[]]) == 0.0


def test_bleu_reward_columns_none_and_answer_tags():
  fn = bleu_lib.bleuberi_reward(column="refs")
  completions = ["the cat", "<think>hmm</think><answer>the cat</answer>", "   ", "the cat", "<answer> the cat",
                 [{"role": "assistant", "content": "the cat"}]]
  refs = [["the cat sat on the mat"], "the cat sat on the mat", ["x"], None, ["the cat sat on the mat", None],
          ["the cat sat on the mat"]]
  out = fn(prompts=["p"] * 6, completions=completions, refs=refs)
  assert out[0] == pytest.approx(math.exp(-2.0)) and out[1] == out[0] and out[4] == out[0] and out[5] == out[0]
  assert out[2] == 0.0 and out[3] is None  # blank completion -> 0 (BLEUBERI); no reference -> not scorable
  no_tags = bleu_lib.bleuberi_reward(column="refs", answer_tags=False)
  assert no_tags(prompts=["p"], completions=[completions[1]], refs=[refs[1]])[0] < out[1]
  values = call_reward_function(bleu_lib.bleu_reward(column="refs"), ["p"] * 2, ["a b", "a b"], {"refs": [[], "a b"]})
  assert np.isnan(values[0]) and values[1] == pytest.approx(1.0)


def test_bleu_reward_errors():
  with pytest.raises(ValueError, match=r"bleu.variant: expected one of \('sacrebleu', 'bleuberi'\)"):
    bleu_lib.bleu_reward(variant="nltk")
  with pytest.raises(ValueError, match="bleu.tokenize"):
    bleu_lib.bleu_reward(tokenize="intl")
  with pytest.raises(ValueError, match="bleu.smoothing"):
    bleu_lib.bleu_reward(smoothing="floor")
  with pytest.raises(ValueError, match="variant 'bleuberi' has fixed add-one smoothing"):
    bleu_lib.bleu_reward(variant="bleuberi", smoothing="none")
  fn = bleu_lib.bleu_reward()
  with pytest.raises(ValueError, match=r"reference column 'references' not among the columns \['answer'\]"):
    fn(prompts=["p"], completions=["a"], answer=["a"])
  with pytest.raises(ValueError, match="expected a string or a list of strings"):
    fn(prompts=["p"], completions=["a"], references=[[1, 2]])
