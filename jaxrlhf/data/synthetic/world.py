"""The synthetic gold-reward world: a seeded token world with a known reward (see docs/synthetic_world.md).

Everything is a pure function of `WorldConfig` (its seed included):

* Vocabulary: `WorldTokenizer` (fixed by the sizes). Prompts are `<instruction> w1 [w2 [w3]]` with the w's
  from one topic; a fixed pool of `num_prompts` distinct prompts is split into disjoint train/validation/test.
* Reference distribution (used to SFT a base policy and to draw pairs): length n ~ 1 + round(Gamma(shape,
  (mean - 1) / shape)) clipped to [1, max_response_len]; tokens from a first-order Markov chain per prompt
  topic k and context c in {none, <better>, <worse>}:
    logits_{k,c}[a -> b] = base[a, b] + on_topic * [b in topic k] + bigram_logit * sign(B[a, b])
                           - self_loop * [a = b] + shift_c * (q[b] + rho rel_k(b))
  with shift = 0, +context_shift, -context_shift. Only function and topic words can be emitted; the first
  token conditions on a = <bos>. A `broad_fraction` of pair responses use logits / broad_temperature.
* Gold reward r*(x, y): jaxrlhf/data/synthetic/gold.py (quality + relevance + coherence + repetition + length).
* Labels: annotator group g (uniform) with weights w_g over the 5 gold components; Bradley-Terry
  P(a > b) = sigmoid((w_g . (comp(a) - comp(b))) / temperature), then the label is flipped w.p. flip_rate.
  Judge scores: clip(round(1 + 9 sigmoid((r* - judge_center) / judge_scale) + judge_noise * N(0, 1)), 1, 10).
* Criteria (optional, `criteria`; none by default): named weight vectors w_c over the same 5 components, e.g.
  "concise" with a negative length weight. Criterion pairs (`criterion_pairs` / `criterion_records`, their own
  random stream) draw prompts and responses as above and a criterion c uniformly, then label by Bradley-Terry
  under the STATED criterion, P(a > b) = sigmoid(w_c . (comp(a) - comp(b)) / temperature), flipped w.p. flip_rate.
  The criterion is shown as a system turn `<system> <name> <user> <prompt>`, or hidden (the plain prompt), so the
  same pairs score with and without context (Pitis, Xiao, Le Roux, Sordoni 2024, "Improving Context-Aware
  Preference Modeling for Language Models", arXiv:2407.14916). Criterion names are appended to the vocabulary
  only when criteria are configured (after every other token, which keeps its id), never emitted by the reference
  distribution, and score like any out-of-place prompt token (no topic), so the gold reward ignores them.

Random streams: each product (tables, prompt pool, pairs per split and chunk of 1024, ...) draws from its
own `np.random.SeedSequence([seed, stream, ...])`, so asking for more pairs extends, never reshuffles, the
earlier ones (record i is the same for every num_pairs > i).
"""

import dataclasses
import functools
import math
import numbers
from typing import Sequence

import jax.numpy as jnp
import numpy as np

from jaxrlhf.data import records as records_lib
from jaxrlhf.data.padding import pad_rows
from jaxrlhf.data.synthetic import gold as gold_lib
from jaxrlhf.data.synthetic import tokenizer as tokenizer_lib

SPLITS = ("train", "validation", "test")
CONTEXTS = (None, "better", "worse")
_CHUNK = 1024
# Stream ids for SeedSequence([seed, stream, ...]).
_TABLES, _PROMPTS, _PAIRS, _SFT, _KWAY, _PROMPT_DRAW, _CRITERIA = range(7)
CRITERION_LABELS = ("sampled", "oracle")


@dataclasses.dataclass(frozen=True)
class WorldConfig:
  """All constants of the world; `World(WorldConfig(seed=s))` is a pure function of this dataclass.

  Sizes: num_topics, words_per_topic (vocabulary = 41 + num_topics * words_per_topic), max_prompt_words
  (topic words per prompt), num_prompts (distinct prompts, split by split_fractions), max_response_len.
  Reference distribution: ref_length_mean / ref_length_shape (Gamma lengths), base_logit_std, on_topic_logit,
  bigram_logit, self_loop_logit, context_shift (<better>/<worse>), broad_fraction, broad_temperature.
  Gold: quality_std (topic-word quality spread), function_quality_mean/std, special_quality, quality_weight,
  relevance_weight, bigram_value and bigrams_per_token (sparse coherence table), repeat_penalty,
  repeat_window, length_weight, length_optimum.
  Labels: temperature (Bradley-Terry, in gold units), flip_rate, judge_center / judge_scale / judge_noise,
  annotators = ((name, 5 weights over quality, relevance, coherence, repetition, length), ...).
  Proxy flaw besides length: labeler_bias = ((word, bonus), ...): the LABELERS (not gold) add bonus * (the share of a
  response's scored tokens that are `word`) to a response's utility before the Bradley-Terry draw, a bias a proxy
  trained on the labels learns and best-of-N / RL can exploit without making responses longer (e.g. ("the", 4.0):
  a taste for one function word, which gold's repetition penalty exempts). Default () : no bias, labels unchanged.
  Context (optional): criteria = ((name, 5 weights), ...) stated with criterion pairs; () = none (the default:
  vocabulary and every output as without the field).
  """

  seed: int = 0
  num_topics: int = 8
  words_per_topic: int = 8
  max_prompt_words: int = 3
  num_prompts: int = 4096
  split_fractions: tuple[float, float, float] = (0.8, 0.1, 0.1)
  max_response_len: int = 32
  ref_length_mean: float = 8.0
  ref_length_shape: float = 3.0
  base_logit_std: float = 1.0
  on_topic_logit: float = 2.0
  bigram_logit: float = 1.5
  self_loop_logit: float = 3.0
  context_shift: float = 1.5
  broad_fraction: float = 0.25
  broad_temperature: float = 2.0
  quality_std: float = 1.5
  function_quality_mean: float = -0.3
  function_quality_std: float = 0.2
  special_quality: float = -3.0
  quality_weight: float = 1.0
  relevance_weight: float = 0.5
  bigram_value: float = 0.3
  bigrams_per_token: int = 2
  repeat_penalty: float = 0.5
  repeat_window: int = 3
  length_weight: float = 2.0
  length_optimum: float = 16.0
  temperature: float = 0.35
  flip_rate: float = 0.05
  judge_center: float = 1.5
  judge_scale: float = 0.8
  judge_noise: float = 0.5
  annotators: tuple[tuple[str, tuple[float, ...]], ...] = (("gold", (1.0, 1.0, 1.0, 1.0, 1.0)),)
  labeler_bias: tuple[tuple[str, float], ...] = ()
  criteria: tuple[tuple[str, tuple[float, ...]], ...] = ()

  def __post_init__(self):
    # Config files and command lines give lists (nested ones too); the dataclass is hashable, so they become tuples.
    for field in ("annotators", "labeler_bias", "criteria"):
      value = getattr(self, field)
      if isinstance(value, (tuple, list)) and all(isinstance(b, (tuple, list)) and len(b) == 2 for b in value):
        object.__setattr__(self, field, tuple(
            (b[0], tuple(b[1]) if isinstance(b[1], (tuple, list, np.ndarray)) else b[1]) for b in value))
    if isinstance(self.split_fractions, list):
      object.__setattr__(self, "split_fractions", tuple(self.split_fractions))

    def need(cond, field, expected):
      if not cond:
        raise ValueError(f"WorldConfig.{field}: expected {expected}, got {getattr(self, field)!r}")

    def real(x):  # a real number (bools and strings are not; a str "0.3" from a command line must not pass)
      return isinstance(x, numbers.Real) and not isinstance(x, bool) and math.isfinite(x)

    def integer(name, lo, hi):  # checked before any arithmetic on the field, so that a bad type names the field
      value = getattr(self, name)
      need(isinstance(value, numbers.Integral) and not isinstance(value, bool) and lo <= value <= hi, name,
           f"an int in [{lo}, {hi}]")

    # Streams are SeedSequence([seed, stream, ...]) of 32-bit words: a larger seed would take two words and its
    # streams would coincide with other (seed, stream) keys.
    integer("seed", 0, 2**32 - 1)
    integer("num_topics", 1, tokenizer_lib.MAX_TOPICS)
    integer("words_per_topic", 2, tokenizer_lib.MAX_WORDS_PER_TOPIC)
    integer("max_prompt_words", 1, self.words_per_topic)
    need(isinstance(self.split_fractions, (tuple, list)) and len(self.split_fractions) == 3
         and all(real(f) and f > 0 for f in self.split_fractions)
         and abs(sum(self.split_fractions) - 1.0) < 1e-6, "split_fractions", "3 positive fractions summing to 1")
    universe = len(tokenizer_lib.INSTRUCTION_WORDS) * self.num_topics * sum(
        math.perm(self.words_per_topic, m) for m in range(1, self.max_prompt_words + 1))
    integer("num_prompts", 30, universe // 2)
    sizes = np.diff(split_bounds(self.split_fractions, self.num_prompts))
    need(all(sizes > 0), "split_fractions", f"fractions that give every split at least one of num_prompts = "
         f"{self.num_prompts} prompts (split sizes {dict(zip(SPLITS, sizes.tolist()))})")
    integer("max_response_len", 2, 512)
    integer("bigrams_per_token", 0, 8)
    integer("repeat_window", 1, self.max_response_len)
    need(real(self.ref_length_mean) and 1.0 <= self.ref_length_mean < self.max_response_len, "ref_length_mean",
         "in [1, max_response_len)")
    for name in ("ref_length_shape", "broad_temperature", "quality_std", "length_optimum", "temperature",
                 "judge_scale"):
      need(real(getattr(self, name)) and getattr(self, name) > 0, name, "a finite value > 0")
    for name in ("base_logit_std", "on_topic_logit", "bigram_logit", "self_loop_logit", "context_shift",
                 "function_quality_std", "quality_weight", "relevance_weight", "bigram_value", "repeat_penalty",
                 "length_weight", "judge_noise"):
      need(real(getattr(self, name)) and getattr(self, name) >= 0, name, "a finite value >= 0")
    for name in ("function_quality_mean", "special_quality", "judge_center"):
      need(real(getattr(self, name)), name, "a finite value")
    need(real(self.broad_fraction) and 0.0 <= self.broad_fraction <= 1.0, "broad_fraction", "in [0, 1]")
    need(real(self.flip_rate) and 0.0 <= self.flip_rate <= 0.5, "flip_rate", "in [0, 0.5]")

    def named_weights(value):  # ((str name, 5 finite weights), ...) with distinct names
      return isinstance(value, tuple) and all(
          isinstance(b, tuple) and len(b) == 2 and isinstance(b[0], str) and isinstance(b[1], tuple)
          and len(b[1]) == len(gold_lib.ATTRIBUTE_NAMES) and all(real(x) for x in b[1]) for b in value
      ) and len({b[0] for b in value}) == len(value)

    need(named_weights(self.annotators) and len(self.annotators) >= 1, "annotators",
         f"distinct (name, {len(gold_lib.ATTRIBUTE_NAMES)} finite weights) pairs")
    emittable = set(tokenizer_lib.FUNCTION_WORDS) | {
        w for ws in tokenizer_lib.topic_words(self.num_topics, self.words_per_topic) for w in ws}
    need(isinstance(self.labeler_bias, tuple) and all(
        isinstance(b, tuple) and len(b) == 2 and isinstance(b[0], str) and b[0] in emittable and real(b[1])
        for b in self.labeler_bias) and len({b[0] for b in self.labeler_bias}) == len(self.labeler_bias),
         "labeler_bias", "distinct (response word: a function or topic word, finite bonus) pairs")
    reserved = set(tokenizer_lib.WorldTokenizer(self.num_topics, self.words_per_topic).vocab)
    need(named_weights(self.criteria) and all(
        len(n.split()) == 1 and n == n.strip() and n not in reserved for n, _ in self.criteria),
         "criteria", f"distinct (name, {len(gold_lib.ATTRIBUTE_NAMES)} finite weights) pairs, each name one word "
         "that is not already a token of the vocabulary")


def split_bounds(split_fractions: Sequence[float], num_prompts: int) -> list[int]:
  """[0, end of train, end of validation, num_prompts]: where the shuffled prompt pool is cut into the splits."""
  return [0] + [int(round(f * num_prompts)) for f in np.cumsum(split_fractions)]


# The world's SFT examples are the canonical records (plain-text prompt and reference response).
SFTRecord = records_lib.SFTRecord


def _rng(*key: int) -> np.random.Generator:
  return np.random.default_rng(np.random.SeedSequence([int(k) for k in key]))


def _split_index(split: str) -> int:
  if split not in SPLITS:
    raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
  return SPLITS.index(split)


def _check_context(context) -> None:
  if context not in CONTEXTS:
    raise ValueError(f"context must be one of {CONTEXTS} (no control token, <better>, <worse>), got {context!r}")


def _check_count(name: str, n: int) -> None:
  if not isinstance(n, (int, np.integer)) or isinstance(n, bool) or n < 0:
    raise ValueError(f"{name} must be an int >= 0, got {n!r}")


class World:
  """The synthetic world of one WorldConfig: tokenizer, prompts, reference sampler, gold reward, records."""

  def __init__(self, config: WorldConfig = WorldConfig()):
    if not isinstance(config, WorldConfig):
      raise ValueError(f"config must be a WorldConfig, got {type(config).__name__}")
    self.config = config
    self.tokenizer = tok = tokenizer_lib.WorldTokenizer(config.num_topics, config.words_per_topic,
                                                        extra_words=[name for name, _ in config.criteria])
    self.spec = self._make_gold_spec()
    self.response_ids = np.concatenate([tok.function_ids, tok.topic_ids.reshape(-1)])  # emittable tokens
    self._logits = self._make_logits()  # (contexts, K, V prev, V next), -inf where not emittable
    self._cdf = {}
    self.prompt_pool = self._make_prompt_pool()  # list of id tuples
    self.prompt_topics = [int(self.spec.topic_V[p[1]]) for p in self.prompt_pool]  # p = (instruction, w1, ...)
    order = _rng(config.seed, _PROMPTS, 1).permutation(len(self.prompt_pool))
    bounds = split_bounds(config.split_fractions, len(order))
    self.split_prompts = {s: np.sort(order[bounds[i]:bounds[i + 1]]) for i, s in enumerate(SPLITS)}

  def freeze(self) -> "World":
    """Makes the world's tables and id arrays read-only (for a world shared between users); returns it. Its sampling
    caches (`_cdf_for`) still fill in lazily, each entry written once."""
    arrays = [self.response_ids, self._logits, *self.split_prompts.values(),
              *(v for v in vars(self.spec).values() if isinstance(v, np.ndarray)),
              *(v for v in vars(self.tokenizer).values() if isinstance(v, np.ndarray))]
    for a in arrays:
      a.setflags(write=False)
    self.prompt_pool, self.prompt_topics = tuple(self.prompt_pool), tuple(self.prompt_topics)
    return self

  # ---- construction ----------------------------------------------------------------------------------------

  def _make_gold_spec(self) -> gold_lib.GoldSpec:
    c, tok = self.config, self.tokenizer
    rng = _rng(c.seed, _TABLES)
    v = tok.vocab_size
    quality = np.full(v, c.special_quality, np.float32)
    quality[tok.function_ids] = rng.normal(c.function_quality_mean, c.function_quality_std,
                                           len(tok.function_ids))
    quality[tok.topic_ids.reshape(-1)] = rng.normal(0.0, c.quality_std, tok.topic_ids.size)
    topic = np.full(v, -1, np.int32)
    for k in range(tok.num_topics):
      topic[tok.topic_ids[k]] = k
    emittable = np.concatenate([tok.function_ids, tok.topic_ids.reshape(-1)])
    bigram = np.zeros((v, v), np.float32)
    for a in emittable:
      nexts = rng.choice(emittable[emittable != a], size=2 * c.bigrams_per_token, replace=False)
      bigram[a, nexts[:c.bigrams_per_token]] = c.bigram_value
      bigram[a, nexts[c.bigrams_per_token:]] = -c.bigram_value
    repeatable = np.zeros(v, bool)
    repeatable[tok.function_ids] = True
    return gold_lib.GoldSpec(
        quality_V=quality, topic_V=topic, bigram_VxV=bigram, repeatable_V=repeatable,
        num_topics=tok.num_topics, eos_id=tok.eos_id, oov_id=tok.unk_id, quality_weight=c.quality_weight,
        relevance_weight=c.relevance_weight, repeat_penalty=c.repeat_penalty, repeat_window=c.repeat_window,
        length_weight=c.length_weight, length_optimum=c.length_optimum)

  def _make_logits(self) -> np.ndarray:
    c, tok, spec = self.config, self.tokenizer, self.spec
    rng = _rng(c.seed, _TABLES, 1)
    v, k_topics = tok.vocab_size, tok.num_topics
    emit = np.zeros(v, bool)
    emit[self.response_ids] = True
    v0 = v - len(tok.extra_ids)  # criterion words (last ids) draw nothing, so the tables match a world without
    base = rng.normal(0.0, c.base_logit_std, (v0, v0))
    if v0 < v:
      base = np.pad(base, ((0, v - v0), (0, v - v0)))
    base = base + c.bigram_logit * np.sign(spec.bigram_VxV)
    base -= c.self_loop_logit * np.eye(v)
    logits = np.empty((len(CONTEXTS), k_topics, v, v))
    for k in range(k_topics):
      on_topic = (spec.topic_V == k).astype(np.float64)
      rel = np.where(spec.topic_V < 0, 0.0, np.where(on_topic > 0, 1.0, -1.0))
      token_gold = c.quality_weight * spec.quality_V + c.relevance_weight * rel
      for ci, shift in enumerate((0.0, c.context_shift, -c.context_shift)):
        logits[ci, k] = base + c.on_topic_logit * on_topic[None, :] + shift * token_gold[None, :]
    logits[..., ~emit] = -np.inf
    return logits

  def _make_prompt_pool(self) -> list[tuple[int, ...]]:
    c, tok = self.config, self.tokenizer
    rng = _rng(c.seed, _PROMPTS)
    pool, seen = [], set()
    while len(pool) < c.num_prompts:
      k = rng.integers(tok.num_topics)
      m = rng.integers(1, c.max_prompt_words + 1)
      words = rng.choice(tok.topic_ids[k], size=m, replace=False)
      prompt = (int(rng.choice(tok.instruction_ids)),) + tuple(int(w) for w in words)
      if prompt not in seen:
        seen.add(prompt)
        pool.append(prompt)
    return pool

  # ---- reference distribution ------------------------------------------------------------------------------

  def _cdf_for(self, context: str | None, temperature: float) -> np.ndarray:
    key = (context, temperature)
    if key not in self._cdf:
      logits = self._logits[CONTEXTS.index(context)] / temperature
      p = np.exp(logits - logits.max(-1, keepdims=True))
      cdf = np.cumsum(p / p.sum(-1, keepdims=True), axis=-1)
      cdf[..., -1] = 1.0
      cdf.setflags(write=False)
      self._cdf[key] = cdf
    return self._cdf[key]

  def sample_lengths(self, rng: np.random.Generator, size: int) -> np.ndarray:
    """int32 (size,) reference lengths: 1 + round(Gamma(shape, (mean - 1) / shape)), clipped."""
    c = self.config
    n = 1 + np.round(rng.gamma(c.ref_length_shape, (c.ref_length_mean - 1) / c.ref_length_shape, size))
    return np.clip(n, 1, c.max_response_len).astype(np.int32)

  def sample_responses(self, rng: np.random.Generator, topics: np.ndarray, lengths: np.ndarray,
                       context: str | None = None, broad: np.ndarray | None = None) -> np.ndarray:
    """Reference responses: int32 (B, max(lengths)) right-padded with pad_id (no eos appended).

    Args:
      rng: numpy Generator (consumed).
      topics: int (B,) prompt topics.
      lengths: int (B,) response lengths (>= 1; may exceed max_response_len for extrapolation studies).
      context: None, "better" or "worse" (the contrastive control token in front of the prompt).
      broad: optional bool (B,): rows drawn at broad_temperature.
    """
    _check_context(context)
    topics = np.asarray(topics, np.int64)
    lengths = np.asarray(lengths, np.int64)
    if topics.shape != lengths.shape or topics.ndim != 1 or (lengths < 1).any():
      raise ValueError(f"topics and lengths must be (B,) arrays with lengths >= 1, got shapes {topics.shape} and "
                       f"{lengths.shape}, min length {lengths.min() if lengths.size else None}")
    if ((topics < 0) | (topics >= self.tokenizer.num_topics)).any():
      raise ValueError(f"topics must be in [0, {self.tokenizer.num_topics}), got {sorted(set(topics.tolist()))}")
    broad = np.zeros(len(topics), bool) if broad is None else np.asarray(broad, bool)
    if broad.shape != topics.shape:
      raise ValueError(f"broad must be a (B,) = {topics.shape} bool array, got shape {broad.shape}")
    cdf_ref = self._cdf_for(context, 1.0)
    cdf_broad = self._cdf_for(context, self.config.broad_temperature)
    width = int(lengths.max()) if len(lengths) else 1
    out = np.full((len(topics), width), self.tokenizer.pad_id, np.int32)
    prev = np.full(len(topics), self.tokenizer.bos_id, np.int64)
    u = rng.random((width, len(topics)))
    for t in range(width):
      rows = np.where(broad[:, None], cdf_broad[topics, prev], cdf_ref[topics, prev])
      nxt = (rows < u[t][:, None]).sum(-1)
      live = t < lengths
      out[live, t] = nxt[live]
      prev = nxt
    return out

  # ---- gold reward ------------------------------------------------------------------------------------------

  def gold_reward(self, prompt_ids_BxP, prompt_mask_BxP, response_ids_BxT, response_mask_BxT):
    """float32 (B,) gold reward r* as a jittable JAX function (equations: gold.py / docs)."""
    return gold_lib.gold_reward(self.spec, prompt_ids_BxP, prompt_mask_BxP, response_ids_BxT,
                                response_mask_BxT, xp=jnp)

  def gold_components(self, prompt_ids_BxP, prompt_mask_BxP, response_ids_BxT, response_mask_BxT):
    """float32 (B, 5) gold components (quality, relevance, coherence, repetition, length), JAX."""
    return gold_lib.gold_components(self.spec, prompt_ids_BxP, prompt_mask_BxP, response_ids_BxT,
                                    response_mask_BxT, xp=jnp)

  def gold_token_contributions(self, prompt_ids_BxP, prompt_mask_BxP, response_ids_BxT, response_mask_BxT):
    """float32 (B, T) per-token credit summing to r* minus the length term, JAX."""
    return gold_lib.gold_token_contributions(self.spec, prompt_ids_BxP, prompt_mask_BxP, response_ids_BxT,
                                             response_mask_BxT, xp=jnp)

  def gold_components_np(self, prompt_ids_BxP, prompt_mask_BxP, response_ids_BxT, response_mask_BxT):
    """numpy mirror of gold_components (same code, xp=numpy)."""
    return gold_lib.gold_components(self.spec, np.asarray(prompt_ids_BxP), np.asarray(prompt_mask_BxP),
                                    np.asarray(response_ids_BxT), np.asarray(response_mask_BxT), xp=np)

  def gold_reward_np(self, prompt_ids_BxP, prompt_mask_BxP, response_ids_BxT, response_mask_BxT):
    """numpy mirror of gold_reward."""
    return self.gold_components_np(prompt_ids_BxP, prompt_mask_BxP, response_ids_BxT,
                                   response_mask_BxT).sum(axis=1)

  def gold_of_ids(self, prompts: Sequence[Sequence[int]], responses: Sequence[Sequence[int]]) -> np.ndarray:
    """float32 (B,) r* of id lists (pairs of prompt and response rows; padding handled here)."""
    if len(prompts) != len(responses):
      raise ValueError(f"{len(prompts)} prompts for {len(responses)} responses")
    p_ids, p_mask = pad_rows(prompts)
    r_ids, r_mask = pad_rows(responses)
    return self.gold_reward_np(p_ids, p_mask, r_ids, r_mask)

  def gold_of_texts(self, prompts: Sequence[str], responses: Sequence[str]) -> np.ndarray:
    """float32 (B,) r* of prompt and response texts (world tokenizer; chat markers in prompts are ignored)."""
    enc = self.tokenizer.encode
    return self.gold_of_ids([enc(p) for p in prompts], [enc(r) for r in responses])

  # ---- prompts -----------------------------------------------------------------------------------------------

  def prompt_text(self, index: int, context: str | None = None) -> str:
    """The text of pool prompt `index`, optionally behind a `<better>` / `<worse>` control token."""
    _check_context(context)
    if not isinstance(index, (int, np.integer)) or isinstance(index, bool) or not 0 <= index < len(self.prompt_pool):
      raise ValueError(f"index must be an int in [0, {len(self.prompt_pool)}) (a prompt_pool index), got {index!r}")
    text = self.tokenizer.decode(self.prompt_pool[index])
    return text if context is None else f"<{context}> {text}"

  def _draw_prompts(self, rng: np.random.Generator, split: str, n: int) -> np.ndarray:
    return rng.choice(self.split_prompts[split], size=n)

  def prompt_indices(self, n: int, split: str) -> np.ndarray:
    """int (n,) pool indices of n prompts of `split` drawn with replacement (seeded, prefix-stable)."""
    _check_count("n", n)
    s = _split_index(split)
    return np.concatenate([np.zeros(0, np.int64)] + [
        self._draw_prompts(_rng(self.config.seed, _PROMPT_DRAW, s, c), split, _CHUNK)
        for c in range(-(-n // _CHUNK))])[:n].astype(np.int64)

  def prompts(self, n: int, split: str, context: str | None = None) -> list[str]:
    """n prompt texts of `split` (for sampling / RL), drawn with replacement."""
    _check_context(context)
    return [self.prompt_text(i, context) for i in self.prompt_indices(n, split)]

  def prompt_arrays(self, n: int, split: str, context: str | None = None):
    """(ids int32 (n, P), mask int32 (n, P)) of `prompts(n, split, context)`, right-padded, no chat markers."""
    return pad_rows([self.tokenizer.encode(p) for p in self.prompts(n, split, context)])

  # ---- pairs and records -------------------------------------------------------------------------------------

  def _pair_responses(self, rng: np.random.Generator, split: str, size: int) -> tuple:
    """(prompt indices, topics, [ids a, ids b], [comps a, comps b]) of `size` reference pairs of `split`."""
    c = self.config
    idx = self._draw_prompts(rng, split, size)
    topics = np.asarray([self.prompt_topics[i] for i in idx])
    ids, comps = [], []
    p_ids, p_mask = pad_rows([self.prompt_pool[i] for i in idx])
    for _ in range(2):
      lengths = self.sample_lengths(rng, size)
      broad = rng.random(size) < c.broad_fraction
      r_ids = self.sample_responses(rng, topics, lengths, broad=broad)
      r_mask = (np.arange(r_ids.shape[1])[None, :] < lengths[:, None]).astype(np.int32)
      ids.append([row[:n].tolist() for row, n in zip(r_ids, lengths)])
      comps.append(self.gold_components_np(p_ids, p_mask, r_ids, r_mask))
    return idx, topics, ids, comps

  def _pair_chunk(self, split: str, chunk: int, size: int) -> dict:
    c = self.config
    rng = _rng(c.seed, _PAIRS, _split_index(split), chunk)
    idx, topics, ids, comps = self._pair_responses(rng, split, size)
    group = rng.integers(len(c.annotators), size=size)
    weights = np.asarray([w for _, w in c.annotators], np.float64)[group]
    utility_diff = ((comps[0] - comps[1]) * weights).sum(1)
    if c.labeler_bias:  # labels only: gold and the records' attributes are unchanged
      utility_diff = utility_diff + self.labeler_bonus(ids[0]) - self.labeler_bonus(ids[1])
    p_a = 0.5 * (1.0 + np.tanh(0.5 * utility_diff / c.temperature))  # sigmoid without overflow
    bt_a_wins = rng.random(size) < p_a
    flipped = rng.random(size) < c.flip_rate
    judge = [self._judge(rng, cm.sum(1)) for cm in comps]
    return dict(prompt_index=idx, topic=topics, response_a=ids[0], response_b=ids[1], comps_a=comps[0],
                comps_b=comps[1], gold_a=comps[0].sum(1), gold_b=comps[1].sum(1), judge_a=judge[0],
                judge_b=judge[1], annotator=group, bt_a_wins=bt_a_wins, flipped=flipped,
                a_wins=bt_a_wins ^ flipped)

  def labeler_bonus(self, responses: Sequence[Sequence[int]]) -> np.ndarray:
    """float64 (N,): the labelers' extra utility of each response (id lists without the end token): sum over
    `labeler_bias` of bonus * (count of the word / number of tokens); 0 for empty responses or no bias."""
    out = np.zeros(len(responses), np.float64)
    for word, bonus in self.config.labeler_bias:
      wid = self.tokenizer.ids[word]
      out += bonus * np.asarray([r.count(wid) / len(r) if len(r) else 0.0 for r in map(list, responses)])
    return out

  def _judge(self, rng: np.random.Generator, gold: np.ndarray) -> np.ndarray:
    c = self.config
    mean = 1.0 + 4.5 * (1.0 + np.tanh(0.5 * (gold - c.judge_center) / c.judge_scale))
    return np.clip(np.round(mean + c.judge_noise * rng.normal(size=gold.shape)), 1, 10)

  def preference_pairs(self, num_pairs: int, split: str) -> dict:
    """The labeled pairs as numpy arrays / id lists (what preference_records is made from).

    Returns a dict: prompt_index (N,), topic (N,), response_a / response_b (lists of id lists, no eos),
    comps_a / comps_b (N, 5) gold components, gold_a / gold_b (N,), judge_a / judge_b (N,) in 1..10,
    annotator (N,) group index, bt_a_wins (N,) the Bradley-Terry draw, flipped (N,) whether the flip
    fired, a_wins (N,) the final label (= bt_a_wins xor flipped).
    """
    _check_count("num_pairs", num_pairs)
    _split_index(split)
    # Whole chunks are always drawn (then cut), so that record i does not depend on num_pairs.
    chunks = [self._pair_chunk(split, c, _CHUNK) for c in range(max(1, -(-num_pairs // _CHUNK)))]
    return {k: (sum((ch[k] for ch in chunks), [])[:num_pairs] if isinstance(chunks[0][k], list)
                else np.concatenate([ch[k] for ch in chunks])[:num_pairs]) for k in chunks[0]}

  def preference_records(self, num_pairs: int, split: str) -> list[records_lib.PreferenceRecord]:
    """num_pairs PreferenceRecords of `split` (prompts disjoint across splits), deterministic in the seed.

    chosen/rejected follow the (noisy) label; chosen_score/rejected_score are the 1-10 judge scores;
    the attribute vectors are the gold components (their sum is r*, see `gold_of_record`); annotator is
    the annotator group name; subset is "topic<k>".
    """
    pairs = self.preference_pairs(num_pairs, split)
    dec = self.tokenizer.decode
    out = []
    for i in range(num_pairs):
      a = (pairs["response_a"][i], pairs["judge_a"][i], pairs["comps_a"][i])
      b = (pairs["response_b"][i], pairs["judge_b"][i], pairs["comps_b"][i])
      ch, rj = (a, b) if pairs["a_wins"][i] else (b, a)
      out.append(records_lib.PreferenceRecord(
          prompt=self.prompt_text(pairs["prompt_index"][i]), chosen=dec(ch[0]), rejected=dec(rj[0]),
          chosen_score=float(ch[1]), rejected_score=float(rj[1]),
          chosen_attributes=tuple(float(x) for x in ch[2]), rejected_attributes=tuple(float(x) for x in rj[2]),
          annotator=self.config.annotators[pairs["annotator"][i]][0], subset=f"topic{pairs['topic'][i]}",
          source=f"synthetic:seed={self.config.seed}:{split}:{i}"))
    return out

  # ---- criterion pairs (context-aware preference modeling) --------------------------------------------------

  def criterion_prompt_text(self, index: int, criterion: str) -> str:
    """Pool prompt `index` with the criterion stated as a system turn: `<system> <criterion> <user> <prompt>` (the
    chat template's rendering of [system: criterion, user: prompt] without the generation prompt)."""
    if criterion not in self.tokenizer.ids or self.tokenizer.ids[criterion] not in self.tokenizer.extra_ids:
      raise ValueError(f"criterion must be one of WorldConfig.criteria {[n for n, _ in self.config.criteria]}, "
                       f"got {criterion!r}")
    return f"<system> {criterion} <user> {self.prompt_text(index)}"

  def _criterion_chunk(self, split: str, chunk: int, size: int) -> dict:
    c = self.config
    rng = _rng(c.seed, _CRITERIA, _split_index(split), chunk)
    idx, topics, ids, comps = self._pair_responses(rng, split, size)
    criterion = rng.integers(len(c.criteria), size=size)
    weights = np.asarray([w for _, w in c.criteria], np.float64)[criterion]
    utility_diff = ((comps[0] - comps[1]) * weights).sum(1)
    p_a = 0.5 * (1.0 + np.tanh(0.5 * utility_diff / c.temperature))  # sigmoid without overflow
    bt_a_wins = rng.random(size) < p_a
    flipped = rng.random(size) < c.flip_rate
    gold_diff = comps[0].sum(1) - comps[1].sum(1)
    return dict(prompt_index=idx, topic=topics, response_a=ids[0], response_b=ids[1], comps_a=comps[0],
                comps_b=comps[1], gold_a=comps[0].sum(1), gold_b=comps[1].sum(1), criterion=criterion,
                utility_diff=utility_diff, oracle_a_wins=utility_diff > 0, reversal=utility_diff * gold_diff < 0,
                bt_a_wins=bt_a_wins, flipped=flipped, a_wins=bt_a_wins ^ flipped)

  def criterion_pairs(self, num_pairs: int, split: str) -> dict:
    """Pairs labelled under a stated criterion (needs WorldConfig.criteria), as numpy arrays / id lists.

    Returns a dict: prompt_index, topic, response_a / response_b, comps_a / comps_b, gold_a / gold_b (as in
    `preference_pairs`); criterion (N,) index into WorldConfig.criteria; utility_diff (N,) w_c . (comp(a) -
    comp(b)); oracle_a_wins (N,) utility_diff > 0 (the gold preference under the criterion); reversal (N,) the
    criterion's gold preference is the opposite of r*'s (utility_diff * (r*(a) - r*(b)) < 0: a "preference
    reversal" pair in Pitis et al.'s sense); bt_a_wins / flipped / a_wins as in `preference_pairs`. Prefix-stable
    like `preference_pairs`, from its own random stream (the general pairs do not change).
    """
    _check_count("num_pairs", num_pairs)
    _split_index(split)
    if not self.config.criteria:
      raise ValueError("criterion_pairs: WorldConfig.criteria is empty (give ((name, 5 weights), ...))")
    chunks = [self._criterion_chunk(split, c, _CHUNK) for c in range(max(1, -(-num_pairs // _CHUNK)))]
    return {k: (sum((ch[k] for ch in chunks), [])[:num_pairs] if isinstance(chunks[0][k], list)
                else np.concatenate([ch[k] for ch in chunks])[:num_pairs]) for k in chunks[0]}

  def criterion_records(self, num_pairs: int, split: str, shown: bool = True, labels: str = "sampled"
                        ) -> list[records_lib.PreferenceRecord]:
    """num_pairs PreferenceRecords of `criterion_pairs`: the same pairs with the criterion shown or hidden.

    Args:
      num_pairs, split: as in `preference_records`.
      shown: True renders the prompt as `criterion_prompt_text` (the context is given), False as the plain prompt.
      labels: "sampled" (chosen/rejected follow the noisy Bradley-Terry label under the criterion) or "oracle"
        (they follow the criterion's gold preference, utility_diff > 0; the label an ideal context-aware model
        agrees with everywhere).
    Records: annotator = the criterion's name (the record carries its criterion), subset = "reversal" or
    "agreement" (whether the criterion reverses r*'s preference), attributes = the gold components, no judge
    scores (the judge rates r*, not the criterion).
    """
    if labels not in CRITERION_LABELS:
      raise ValueError(f"labels must be one of {CRITERION_LABELS}, got {labels!r}")
    if not isinstance(shown, (bool, np.bool_)):
      raise ValueError(f"shown must be a bool, got {shown!r}")
    pairs = self.criterion_pairs(num_pairs, split)
    wins = pairs["a_wins"] if labels == "sampled" else pairs["oracle_a_wins"]
    dec = self.tokenizer.decode
    out = []
    for i in range(num_pairs):
      name = self.config.criteria[pairs["criterion"][i]][0]
      a = (pairs["response_a"][i], pairs["comps_a"][i])
      b = (pairs["response_b"][i], pairs["comps_b"][i])
      ch, rj = (a, b) if wins[i] else (b, a)
      index = int(pairs["prompt_index"][i])
      out.append(records_lib.PreferenceRecord(
          prompt=self.criterion_prompt_text(index, name) if shown else self.prompt_text(index),
          chosen=dec(ch[0]), rejected=dec(rj[0]),
          chosen_attributes=tuple(float(x) for x in ch[1]), rejected_attributes=tuple(float(x) for x in rj[1]),
          annotator=name, subset="reversal" if pairs["reversal"][i] else "agreement",
          source=f"synthetic:seed={self.config.seed}:{split}:criterion:{i}"))
    return out

  def sft_records(self, num: int, split: str, contrastive: bool = False) -> list[SFTRecord]:
    """num reference samples (prompt, response); with contrastive=True, 3 * num: each prompt also with
    `<better>` and `<worse>` in front and a response from the correspondingly shifted distribution."""
    _check_count("num", num)
    if not isinstance(contrastive, (bool, np.bool_)):
      raise ValueError(f"contrastive must be a bool, got {contrastive!r}")
    s = _split_index(split)
    out = []
    for chunk in range(-(-num // _CHUNK)):
      size = min(_CHUNK, num - chunk * _CHUNK)
      rng = _rng(self.config.seed, _SFT, s, chunk)
      idx = self._draw_prompts(rng, split, _CHUNK)
      topics = np.asarray([self.prompt_topics[i] for i in idx])
      for context in CONTEXTS:  # all three are drawn so that the neutral samples do not depend on `contrastive`
        lengths = self.sample_lengths(rng, _CHUNK)
        r_ids = self.sample_responses(rng, topics, lengths, context=context)
        if context is not None and not contrastive:
          continue
        for j, (i, row, n) in enumerate(zip(idx[:size], r_ids, lengths)):
          out.append(SFTRecord(self.prompt_text(i, context), self.tokenizer.decode(row[:n]),
                               f"synthetic:seed={self.config.seed}:{split}:sft:{chunk * _CHUNK + j}"
                               + (f":{context}" if context else "")))
    return out

  def kway_records(self, num: int, split: str, k: int = 4) -> list[records_lib.KWayRecord]:
    """num best-of-k records: k reference responses per prompt, scores = gold r* (higher is better)."""
    _check_count("num", num)
    if not isinstance(k, int) or k < 2:
      raise ValueError(f"k must be an int >= 2, got {k!r}")
    s = _split_index(split)
    out = []
    for chunk in range(-(-num // _CHUNK)):
      size = min(_CHUNK, num - chunk * _CHUNK)
      rng = _rng(self.config.seed, _KWAY, s, chunk, k)
      # The whole chunk is drawn (prompts, lengths, responses), then cut, so that record i does not depend on num.
      idx = self._draw_prompts(rng, split, _CHUNK)
      topics = np.repeat([self.prompt_topics[i] for i in idx], k)
      lengths = self.sample_lengths(rng, _CHUNK * k)
      r_ids = self.sample_responses(rng, topics, lengths, broad=rng.random(_CHUNK * k) < self.config.broad_fraction)
      idx, lengths, r_ids = idx[:size], lengths[:size * k], r_ids[:size * k]
      r_mask = (np.arange(r_ids.shape[1])[None, :] < lengths[:, None]).astype(np.int32)
      p_ids, p_mask = pad_rows([self.prompt_pool[i] for i in np.repeat(idx, k)])
      gold = self.gold_reward_np(p_ids, p_mask, r_ids, r_mask).reshape(size, k)
      for j, i in enumerate(idx):
        out.append(records_lib.KWayRecord(
            prompt=self.prompt_text(i),
            completions=tuple(self.tokenizer.decode(r_ids[j * k + m, :lengths[j * k + m]]) for m in range(k)),
            scores=tuple(float(g) for g in gold[j]), subset=f"topic{self.prompt_topics[i]}",
            source=f"synthetic:seed={self.config.seed}:{split}:kway:{chunk * _CHUNK + j}"))
    return out

  def gold_of_record(self, record: records_lib.PreferenceRecord) -> tuple[float, float]:
    """(r*(chosen), r*(rejected)) of a synthetic record, recomputed from its texts."""
    prompt = record.prompt if isinstance(record.prompt, str) else " ".join(
        m["content"] for m in record.prompt if m["role"] == "user")
    g = self.gold_of_texts([prompt, prompt], [records_lib.response_text(record.chosen),
                                              records_lib.response_text(record.rejected)])
    return float(g[0]), float(g[1])


@functools.lru_cache(maxsize=8)
def default_world(seed: int = 0) -> World:
  """A cached World(WorldConfig(seed=seed))."""
  return World(WorldConfig(seed=seed))
