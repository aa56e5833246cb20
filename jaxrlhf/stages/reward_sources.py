"""Reward sources of the online stages: a reward model, an ensemble with an aggregation, the synthetic gold reward,
a (deliberately hackable) process reward over response steps with Clip / Delta refinement, FLR (the likelihood of
positive vs negative follow-up user turns under a language model), and every text reward of
`jaxrlhf.rewards` (exact match, regex format, length penalty, BLEU, BLEUBERI, weighted sums, a user's Python
function in TRL's reward_funcs convention); several sources are summed with weights.

Every source is a function called INSIDE the jitted RL step:

    score(models, rollout) -> float32 (R,)

where `models` maps reward-model names to their (frozen) RewardEnsemble modules (merged from the train state; an
FLR source's CausalLM under "flr_<i>")
and `rollout` holds `prompt_ids` / `prompt_mask` (R, P) left-padded, `tokens` / `mask` (R, N) right-padded
(the end token included) and `prompt_index` (R,) int32, the row's index in the host-side prompt table.
Jittable sources (reward model, gold) run as XLA; text rewards run on the host through `jax.pure_callback` on the
prompt texts, the decoded completions and the prompt table's columns (`PromptTable`), so the step stays one jitted
program; or, where the rollout already holds their scores (`host_scores` under `host_score_key(label)`, computed on
the host before the program runs: the rl stage's `host_scored_rollouts`), they read those, and the program holds no
host callback (XLA's persistent compilation cache keeps no program with one). A text reward returns NaN for "not
scorable" (None in the function): a NaN term counts 0 in the weighted sum, as TRL sums its reward functions, and
the fraction of such rows is logged (`reward/<name>/unscored`). A text reward with outcome counts
(`rewards.outcomes`: e.g. SQL queries the time limit stopped) keeps them on the host; the stages report them at the
end (`report_outcomes`).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Callable, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jaxrlhf.config import ConfigError, field, stage_ref
from jaxrlhf.data import prompts as prompts_lib
from jaxrlhf.data.synthetic import gold as gold_lib
from jaxrlhf.losses import aggregation as aggregation_lib
from jaxrlhf.losses import policy_gradient as pg
from jaxrlhf import rewards as text_rewards
from jaxrlhf.models import CausalLM, from_pretrained, load_tokenizer
from jaxrlhf.rewards import follow_up as follow_up_lib
from jaxrlhf.rewards import hybrid as hybrid_lib
from jaxrlhf.train import scoring
from jaxrlhf.stages import artifacts
from jaxrlhf.stages import common

# Scored inside the jitted step.
MODEL_KINDS = ("reward_model", "gold", "process", "word_share", "follow_up_likelihood")
# A reward model mixed with text rules by confidence (Beyond Monolithic Rewards): needs the prompt table, like a text
# reward, and a reward model, like "reward_model".
HYBRID = "hybrid"
RM_KINDS = ("reward_model", HYBRID)  # The kinds that load `reward_model` as models["rm_<i>"].
KINDS = MODEL_KINDS + (HYBRID,) + tuple(text_rewards.REWARDS)  # ... and every text reward of jaxrlhf.rewards.
WORLD_KINDS = ("gold", "process", "word_share")  # Defined only on the synthetic world's prompts.
REFINEMENTS = ("none", "clip", "delta")
SMOOTHING = ("exp", "add1", "none")
FOLLOW_UP_OPTIONS = ("model", "positive", "negative", "chunk_size")


@dataclasses.dataclass(frozen=True)
class RewardSourceSpec:
  """One weighted reward source.

  kind: "reward_model" (`reward_model`: "stage:<name>" or a saved reward-model folder; K > 1 members are reduced
    by `aggregation` with `lam`), "gold" (the synthetic world's r*), "process" (the return of the world's
    per-step process reward `prm_step_scores`, refined by `refinement` "none" / "clip" (threshold `eta`) /
    "delta", Gao et al. 2024; `options` {"step_bias": {word: logit bonus}} switches on a PRM that over-rewards
    those words), "word_share" (a diagnostic of the world: the share of `options.word` among the response's scored
    tokens, in [0, 1]; with weight 0 it logs a word-level hack such as the PRM's step_bias or the labelers' bias),
    "follow_up_likelihood" (FLR, Zhang et al. 2024: the mean per-token log-likelihood of positive follow-up user
    turns minus that of negative ones under a causal LM; `options`: "model" (a HF folder, a .gguf or
    "stage:<name>"; default: the policy's starting model; it must share the policy's vocabulary),
    "positive" / "negative" (lists of utterances; default: the paper's 20 + 20, `rewards.follow_up`),
    "chunk_size" (the vocabulary-chunked gather, default 1024)),
    "hybrid" (Gulhane & Indurthi 2025, arXiv:2510.05283, `rewards.hybrid`: the reward model of `reward_model`,
    reduced by `aggregation`, mixed with text rules by confidence,
    (1 - sum_{k applies} c_k) r_model + sum_{k applies} c_k r_k;
    `options`: {"rules": [{"kind": <text reward kind>, "options": {...}, "confidence": c_k in [0, 1]}, ...]}, a rule
    applying where its value is not None / NaN),
    or a text reward of `jaxrlhf.rewards.REWARDS` with its keyword `options`:
    "exact_match" (options column, extract, rel_tol), "regex_format" (pattern, match, flags, partial_credit),
    "length_penalty" (target, alpha, unit), "bleu" (sentence BLEU-4 in [0, 1] against a reference column; on the
    world's prompts the column "references" holds the reference responses, whitespace tokens and `smoothing` by
    default), "bleuberi", "weighted_sum" (terms), and "python" (`function`: "module:function", called as TRL calls
    its reward_funcs: fn(prompts=..., completions=..., **columns) -> one float or None per completion; the older
    positional fn(prompts, completions) works too).
  name: the metric name (`reward/<name>`); default: the kind.
  options: keyword options of a text reward (see above); checked when the config is planned.
  standardize (reward models): each member's score is shifted and scaled to mean 0, std 1 over the reference
    responses to the stage's training prompts (the base distribution the policy starts from) BEFORE the
    aggregation, so that min / mean - lam * std compare members on one scale (the conservative ensembles of
    Coste et al. 2023 assume comparable members); the statistics are computed once and logged.
  """
  kind: str = field("gold", choices=KINDS)
  name: str = field("")
  weight: float = field(1.0)
  reward_model: str = stage_ref("rm_dir")
  aggregation: str = field("mean", choices=aggregation_lib.AGGREGATION_METHODS)
  lam: float = field(1.0, min=0.0)
  function: str = field("")
  smoothing: str = field("exp", choices=SMOOTHING)
  refinement: str = field("none", choices=REFINEMENTS)
  eta: float = field(0.5)
  standardize: bool = field(False)
  options: dict = field(default_factory=dict)

  @property
  def label(self) -> str:
    return self.name or self.kind

  def text_options(self) -> dict[str, Any]:
    """The keyword options of a text reward: `options`, plus `function` for "python" and, for "bleu", the world's
    reference column with whitespace tokens and `smoothing` unless `options` says otherwise."""
    options = dict(self.options)
    if self.kind == "python":
      options.setdefault("function", self.function)
    elif self.kind == "bleu":
      options = {"column": "references", "tokenize": "whitespace", "smoothing": self.smoothing, **options}
    return options

  def text_reward(self, path: str = "reward") -> Callable[..., Any]:
    """The text reward function of this source (`jaxrlhf.rewards.make_reward`)."""
    return text_rewards.make_reward(self.kind, self.text_options(), path)

  def follow_up_options(self, path: str = "reward") -> dict[str, Any]:
    """The options of a "follow_up_likelihood" source with their defaults (`follow_up_options`)."""
    return follow_up_options(self.options, f"{path}.options")

  def hybrid_rules(self, path: str = "reward") -> list[tuple[Callable[..., Any], float]]:
    """[(text reward function, confidence)] of a "hybrid" source's `options.rules` (`rewards.hybrid.check_rules`)."""
    unknown = sorted(set(self.options) - {"rules"})
    if unknown or "rules" not in self.options:
      raise ConfigError(f"{path}.options: kind 'hybrid' takes exactly the option 'rules', got {sorted(self.options)}")
    try:
      rules = hybrid_lib.check_rules(self.options["rules"], f"{path}.options.rules")
    except ValueError as e:
      raise ConfigError(str(e)) from e
    return [(text_rewards.make_reward(r["kind"], r["options"], f"{path}.options.rules[{j}]"), r["confidence"])
            for j, r in enumerate(rules)]

  def validate(self, path: str) -> None:
    self.check_kind_fields(path)
    if self.kind in RM_KINDS and not self.reward_model:
      raise ConfigError(f"{path}.reward_model: required for kind {self.kind!r} (e.g. 'stage:reward')")
    if self.kind == HYBRID:
      self.hybrid_rules(path)
      if self.standardize:
        raise ConfigError(f"{path}.standardize: not supported for kind 'hybrid'")
      return
    if self.kind == "follow_up_likelihood":
      self.follow_up_options(path)
    if self.kind in ("gold", "reward_model") and self.options:
      raise ConfigError(f"{path}.options: kind {self.kind!r} takes no options, got {sorted(self.options)}")
    if self.kind == "process":
      process_step_bias(self.options, None, f"{path}.options")
    if self.kind == "word_share":
      word_share_token(self.options, None, f"{path}.options")
    if self.kind not in MODEL_KINDS:
      self.text_reward(path)  # Builds it once: unknown or missing options fail here, naming the key.
    if self.standardize and self.kind != "reward_model":
      raise ConfigError(f"{path}.standardize: only reward-model sources have members to standardize "
                        f"(kind is {self.kind!r})")


  def check_kind_fields(self, path: str) -> None:
    """ConfigError for a field set away from its default on a kind that never reads it (a setting that would
    silently change nothing): aggregation / lam outside the reward-model kinds, refinement / eta outside "process",
    smoothing outside "bleu", function outside "python", and lam with an aggregation that ignores it."""
    defaults = {f.name: f.default for f in dataclasses.fields(RewardSourceSpec)}
    for names, kinds in ((("aggregation", "lam"), RM_KINDS), (("refinement", "eta"), ("process",)),
                         (("smoothing",), ("bleu",)), (("function",), ("python",))):
      if self.kind in kinds:
        continue
      for name in names:
        if getattr(self, name) != defaults[name]:
          raise ConfigError(f"{path}.{name}: {getattr(self, name)!r} is not used by kind {self.kind!r} (only by "
                            f"{' / '.join(repr(k) for k in kinds)}); leave it at its default {defaults[name]!r}")
    if (self.kind in RM_KINDS and self.lam != defaults["lam"]
        and self.aggregation not in aggregation_lib.LAM_METHODS):
      raise ConfigError(f"{path}.lam: {self.lam!r} is not used by aggregation {self.aggregation!r} (only by "
                        f"{' / '.join(aggregation_lib.LAM_METHODS)}); leave it at its default {defaults['lam']!r}")


def process_step_bias(options: Mapping[str, Any], tokenizer: Any, path: str) -> tuple[tuple[int, float], ...]:
  """The "process" source's flaw, options {"step_bias": {word: logit bonus}} -> ((token id, bonus), ...).

  With `tokenizer` None only the shape is checked (config time); with the world's tokenizer each word must be one
  of its tokens. A bad or unknown key is a ConfigError naming `path`.<key>.
  """
  unknown = sorted(set(options) - {"step_bias"})
  if unknown:
    raise ConfigError(f"{path}.{unknown[0]}: unknown option of kind 'process'; valid: ('step_bias',)")
  bias = options.get("step_bias", {})
  if not isinstance(bias, Mapping) or not all(
      isinstance(w, str) and isinstance(b, (int, float)) and not isinstance(b, bool) and math.isfinite(b)
      for w, b in bias.items()):
    raise ConfigError(f"{path}.step_bias: expected {{word: finite logit bonus}}, got {bias!r}")
  if tokenizer is None:
    return ()
  out = []
  for word, bonus in bias.items():
    if word not in tokenizer.ids:
      raise ConfigError(f"{path}.step_bias: {word!r} is not a token of the synthetic world's vocabulary")
    out.append((int(tokenizer.ids[word]), float(bonus)))
  return tuple(out)


def word_share_token(options: Mapping[str, Any], tokenizer: Any, path: str) -> int:
  """The token id of a "word_share" source's options {"word": <one token of the world's vocabulary>} (-1 when
  `tokenizer` is None: config time, shape only); a bad option is a ConfigError naming `path`.<key>."""
  if set(options) != {"word"} or not isinstance(options["word"], str) or not options["word"]:
    raise ConfigError(f"{path}: kind 'word_share' takes exactly the option 'word' (a word of the synthetic world), "
                      f"got {dict(options)!r}")
  if tokenizer is None:
    return -1
  if options["word"] not in tokenizer.ids:
    raise ConfigError(f"{path}.word: {options['word']!r} is not a token of the synthetic world's vocabulary")
  return int(tokenizer.ids[options["word"]])


def follow_up_options(options: Mapping[str, Any], path: str) -> dict[str, Any]:
  """FLR's options {"model", "positive", "negative", "chunk_size"} with their defaults (model "" = the policy's
  starting model, the paper's follow-ups, chunk 1024); a bad or unknown one is a ConfigError naming `path`.<key>."""
  unknown = sorted(set(options) - set(FOLLOW_UP_OPTIONS))
  if unknown:
    raise ConfigError(f"{path}.{unknown[0]}: unknown option of kind 'follow_up_likelihood'; valid: "
                      f"{FOLLOW_UP_OPTIONS}")
  out = {"model": options.get("model", ""), "chunk_size": options.get("chunk_size", 1024)}
  if not isinstance(out["model"], str):
    raise ConfigError(f"{path}.model: expected a path string, got {out['model']!r}")
  if not isinstance(out["chunk_size"], int) or out["chunk_size"] < 1:
    raise ConfigError(f"{path}.chunk_size: expected a positive int, got {out['chunk_size']!r}")
  defaults = {"positive": follow_up_lib.POSITIVE_FOLLOW_UPS, "negative": follow_up_lib.NEGATIVE_FOLLOW_UPS}
  for key, default in defaults.items():
    texts = options.get(key, default)
    if isinstance(texts, str) or not isinstance(texts, (list, tuple)) or not texts or not all(
        isinstance(t, str) and t.strip() for t in texts):
      raise ConfigError(f"{path}.{key}: expected a non-empty list of non-empty utterances, got {texts!r}")
    out[key] = tuple(texts)
  return out


# ------------------------------------------------------------------------------------------------ sources
Rollout = Mapping[str, jax.Array]
Score = Callable[[Mapping[str, Any], Rollout], jax.Array]
# A text reward's host side: (tokens (R, N), mask (R, N), prompt_index (R,)) numpy -> float32 (R,), NaN = not scorable.
HostScore = Callable[[np.ndarray, np.ndarray, np.ndarray], np.ndarray]
HOST_SCORE_PREFIX = "host_score:"


def host_score_key(label: str) -> str:
  """The rollout key under which a text reward's host-computed scores (R,) replace its `jax.pure_callback`."""
  return HOST_SCORE_PREFIX + label


@dataclasses.dataclass(frozen=True)
class RewardSource:
  """A built source: its metric label, weight and jittable `score(models, rollout) -> (R,)`; a text reward's NaN
  means "not scorable" (`unscored_is_nan`), any other source's NaN is an error the NaN guard must see.
  `token_score(models, rollout) -> (R, N)`, where set (the process reward), places the score on the response tokens
  (its row sums are `score`), for PPO's per-token returns. `outcomes`: {name: the host-side outcome counter of a
  text reward function the source calls} (`rewards.outcomes`; empty for sources without one).
  `host`: {rollout key: HostScore} of the text rewards `score` calls (a text reward: one; a hybrid: one per rule):
  when the rollout holds those keys (`host_scores`), `score` reads them instead of calling back to the host, so the
  program that scores holds no host callback (XLA's persistent cache keeps no program with one)."""
  label: str
  weight: float
  score: Score
  unscored_is_nan: bool = False
  token_score: Score | None = None
  outcomes: Mapping[str, Any] = dataclasses.field(default_factory=dict)
  host: Mapping[str, HostScore] = dataclasses.field(default_factory=dict)


def host_functions(sources: Sequence[RewardSource]) -> dict[str, HostScore]:
  """{rollout key: HostScore} of every text reward the sources call (empty: every source runs in XLA)."""
  return {key: fn for s in sources for key, fn in s.host.items()}


def host_scores(functions: Mapping[str, HostScore], tokens_RxN: Any, mask_RxN: Any, prompt_index_R: Any
                ) -> dict[str, np.ndarray]:
  """{rollout key: float32 (R,)}: each text reward of `host_functions` on the completions (tokens / mask (R, N),
  right-padded, the end token included) of the prompt-table rows prompt_index_R, computed here on the host; put
  into the rollout, they stand in for the sources' callbacks."""
  tokens, mask, index = np.asarray(tokens_RxN), np.asarray(mask_RxN), np.asarray(prompt_index_R)
  return {key: np.asarray(fn(tokens, mask, index), np.float32) for key, fn in functions.items()}


def _concat(rollout: Rollout) -> tuple[jax.Array, jax.Array]:
  ids = jnp.concatenate([rollout["prompt_ids"], rollout["tokens"]], axis=1).astype(jnp.int32)
  mask = jnp.concatenate([rollout["prompt_mask"], rollout["mask"]], axis=1).astype(jnp.int32)
  return jnp.where(mask > 0, ids, 0), mask


def reward_model_score(key: str, aggregation: str, lam: float,
                       member_stats: tuple[np.ndarray, np.ndarray] | None = None) -> Score:
  """Scores with `models[key]` (a RewardEnsemble -> (R, K), or a RewardModel -> (R,)) reduced by `aggregation`;
  with `member_stats` = (mean_K, std_K) each member is first standardized, (r_k - mean_k) / std_k."""
  mean_K = std_K = None
  if member_stats is not None:
    mean_K, std_K = (jnp.asarray(np.asarray(x, np.float32)) for x in member_stats)

  def score(models, rollout):
    ids, mask = _concat(rollout)
    r = models[key](ids, mask).astype(jnp.float32)
    if mean_K is not None:
      r = (r - mean_K) / std_K
    return r if r.ndim == 1 else aggregation_lib.aggregate(r, aggregation, lam)

  return score


def member_statistics(rm: Any, prompt_ids_NxP: np.ndarray, prompt_mask_NxP: np.ndarray, response_ids_NxT: np.ndarray,
                      response_mask_NxT: np.ndarray, batch_size: int = 64) -> tuple[np.ndarray, np.ndarray]:
  """(mean_K, std_K) float64 of each member's reward over N (prompt, response) rows, scored exactly as rollouts
  are (left-padded prompt, right-padded response, `_concat`). A member with std 0 gets std 1.

  Args:
    rm: a RewardEnsemble ((R, K) rewards) or RewardModel ((R,), treated as K = 1).
    prompt_ids_NxP, prompt_mask_NxP: left-padded prompts (data.padding.encode_prompts).
    response_ids_NxT, response_mask_NxT: right-padded responses.
  """
  graphdef, state = nnx.split(rm)
  score = jax.jit(lambda state, rollout: nnx.merge(graphdef, state)(*_concat(rollout)))
  rows = []
  for i in range(0, len(prompt_ids_NxP), batch_size):
    part = slice(i, i + batch_size)
    rollout = {"prompt_ids": prompt_ids_NxP[part], "prompt_mask": prompt_mask_NxP[part],
               "tokens": response_ids_NxT[part], "mask": response_mask_NxT[part]}
    r = np.asarray(score(state, rollout), np.float64)
    rows.append(r.reshape(r.shape[0], -1))
  scores_NxK = np.concatenate(rows)
  std = scores_NxK.std(axis=0)
  return scores_NxK.mean(axis=0), np.where(std > 0, std, 1.0)


def follow_up_score(key: str, follow_ups: follow_up_lib.FollowUps, end_ids: tuple[int, ...], chunk_size: int = 1024
                    ) -> Score:
  """FLR with `models[key]` (a CausalLM): `scoring.flr_scores` of `scoring.follow_up_logps` of the rollout's
  [prompt | response] rows followed by each of `follow_ups` (the response's trailing end token, one of `end_ids`,
  is replaced by the follow-up's turn marker)."""
  arrays = tuple(jnp.asarray(x) for x in (follow_ups.ids_FxL, follow_ups.mask_FxL, follow_ups.target_FxL))
  positive_F = jnp.asarray(follow_ups.positive_F)

  def score(models, rollout):
    logps_RxF = scoring.follow_up_logps(models[key], rollout["prompt_ids"], rollout["prompt_mask"], rollout["tokens"],
                                        rollout["mask"], *arrays, end_ids=end_ids, chunk_size=chunk_size)
    return scoring.flr_scores(logps_RxF, positive_F)

  return score


def follow_up_model(options: Mapping[str, Any], inputs: dict, default_model: str, tokenizer: Any, path: str
                    ) -> CausalLM:
  """The CausalLM of FLR options (`follow_up_options`, at `path`): `model` ("stage:<name>", a HF folder or a .gguf),
  or `default_model` (the policy's starting model). It scores the policy's token ids, so its vocabulary must be the
  policy tokenizer's (checked against the model's own tokenizer where it has one)."""
  model_path = follow_up_options(options, path)["model"] or default_model
  if not model_path:
    raise ConfigError(f"{path}.model: required when the policy has no starting model to default to")
  model_path = common.resolve_path(model_path, inputs)
  model, config = from_pretrained(model_path)
  if tokenizer is not None:
    if config.vocab_size < tokenizer.vocab_size:
      raise ConfigError(f"{path}.model: {model_path} has {config.vocab_size} token ids, fewer than the policy "
                        f"tokenizer's {tokenizer.vocab_size}; FLR scores the policy's token ids")
    try:
      own = load_tokenizer(model_path)
    except (OSError, ValueError):  # No tokenizer in the folder: only the vocabulary size can be checked.
      own = None
    if own is not None and own.backend.get_vocab() != tokenizer.backend.get_vocab():
      raise ConfigError(f"{path}.model: {model_path}'s tokenizer differs from the policy's; FLR scores the "
                        "policy's token ids, so the model must share its vocabulary")
  return model


def follow_up_models(specs: Sequence[RewardSourceSpec], inputs: dict, default_model: str, tokenizer: Any
                     ) -> dict[str, CausalLM]:
  """{"flr_<i>": CausalLM} of the "follow_up_likelihood" sources (`follow_up_model`), for `jit_scores`."""
  return {f"flr_{i}": follow_up_model(spec.options, inputs, default_model, tokenizer, f"rewards[{i}].options")
          for i, spec in enumerate(specs) if spec.kind == "follow_up_likelihood"}


def gold_score(world: Any) -> Score:
  """The world's jittable r*(prompt, response) (the response's end token and padding are not scored)."""

  def score(models, rollout):
    del models
    return world.gold_reward(rollout["prompt_ids"], rollout["prompt_mask"], rollout["tokens"], rollout["mask"])

  return score


def prm_step_scores(spec: Any, prompt_ids_RxP: jax.Array, prompt_mask_RxP: jax.Array, tokens_RxN: jax.Array,
                    mask_RxN: jax.Array, step_bias: tuple[tuple[int, float], ...] = ()
                    ) -> tuple[jax.Array, jax.Array]:
  """A step-local process reward model of the synthetic world: (scores_RxN in (0, 1), steps_RxN bool).

  Each scored response token is one step (the gold reward's scored positions: masked tokens before the first
  `<eos>`, so steps are a right-padded prefix). The PRM judges a step by its local gold evidence only:

      s_t = sigmoid(alpha q[y_t] + rho rel(y_t, x) + B[y_{t-1}, y_t])      (B only when y_{t-1} is a step)

  the "probability that step t is a good step", plus a flaw that is off by default: `step_bias` ((token id,
  bonus), ...) adds bonus to the logit of every step that is that token (a PRM that over-rewards one word gold is
  indifferent to, the process-reward analogue of the world's `labeler_bias`). It is a sensible step scorer (it
  ranks tokens as the gold quality / relevance / coherence terms do) and hackable in the two ways Gao et al. (2024)
  describe: every step scores > 0, so a summed return grows with the number of steps (gold's length term peaks at L* and
  then falls), and it is blind to repetition (gold penalizes repeats), so repeating the best step keeps scoring high.

  Args:
    spec: the world's `GoldSpec` (`world.spec`).
    prompt_ids_RxP, prompt_mask_RxP: prompts (any padding; chat/control tokens have no topic).
    tokens_RxN, mask_RxN: responses, right padded, the end token included.
    step_bias: ((token id, logit bonus), ...), distinct ids; () for the unbiased PRM.

  Returns:
    (scores float32 (R, N), 0 off steps; steps bool (R, N)).
  """
  ids, steps = gold_lib.scored_tokens(spec, tokens_RxN, mask_RxN, xp=jnp)
  topic_R = gold_lib.prompt_topic(spec, jnp.asarray(prompt_ids_RxP).astype(jnp.int32),
                                  jnp.asarray(prompt_mask_RxP), xp=jnp)
  rel = gold_lib.token_relevance(spec, topic_R, ids, xp=jnp)
  prev_ids = jnp.concatenate([ids[:, :1], ids[:, :-1]], axis=1)
  prev_steps = jnp.concatenate([jnp.zeros_like(steps[:, :1]), steps[:, :-1]], axis=1)
  logit = (spec.quality_weight * jnp.asarray(spec.quality_V)[ids] + spec.relevance_weight * rel
           + jnp.where(prev_steps, jnp.asarray(spec.bigram_VxV)[prev_ids, ids], 0.0))
  for token_id, bonus in step_bias:
    logit = logit + jnp.where(ids == token_id, bonus, 0.0)
  return jnp.where(steps, jax.nn.sigmoid(logit), 0.0).astype(jnp.float32), steps


def refined_process_return(scores_RxS: jax.Array, steps_RxS: jax.Array, refinement: str, eta: float = 0.5
                           ) -> jax.Array:
  """(R,) return sum_t r'_t of refined step rewards (Gao et al. 2024, §4), steps a right-padded prefix.

  "none": r'_t = r_t (grows with the number of steps); "clip": r'_t = min(r_t - eta, 0) (only penalties, so
  no step can add reward); "delta": r'_t = r_t - r_{t+1}, the last step keeps r_T (the sum telescopes to the
  first step's reward, bounded whatever the length).
  """
  return jnp.sum(refined_process_rewards(scores_RxS, steps_RxS, refinement, eta), axis=1)


def refined_process_rewards(scores_RxS: jax.Array, steps_RxS: jax.Array, refinement: str, eta: float = 0.5
                            ) -> jax.Array:
  """(R, S) refined step rewards r'_t of `refined_process_return` (0 off steps), before the sum."""
  if refinement == "none":
    refined = jnp.where(steps_RxS, scores_RxS, 0.0)
  elif refinement == "clip":
    refined = pg.clip_process_rewards(scores_RxS, steps_RxS, eta)
  elif refinement == "delta":
    refined = pg.delta_process_rewards(scores_RxS, steps_RxS)
  else:
    raise ValueError(f"refinement: expected one of {REFINEMENTS}, got {refinement!r}")
  return refined


def process_score(world: Any, refinement: str, eta: float, step_bias: tuple[tuple[int, float], ...] = ()) -> Score:
  """The return of the world's process reward (`prm_step_scores`, with its `step_bias` flaw) under `refinement`
  (see `refined_process_return`); the paper's sequence-level return from the first step, as GRPO / RLOO use it."""

  def score(models, rollout):
    del models
    scores, steps = prm_step_scores(world.spec, rollout["prompt_ids"], rollout["prompt_mask"], rollout["tokens"],
                                    rollout["mask"], step_bias)
    return refined_process_return(scores, steps, refinement, eta)

  return score


def process_token_score(world: Any, refinement: str, eta: float, step_bias: tuple[tuple[int, float], ...] = ()
                        ) -> Score:
  """(R, N) refined step rewards of `process_score` on their response tokens (a step is a response token), whose
  row sums are process_score's return: PPO's per-token process rewards, where the return-to-go from step t is
  sum_{k>=t} r'_k (Delta: r_t itself; Gao et al. 2024, §4)."""

  def score(models, rollout):
    del models
    scores, steps = prm_step_scores(world.spec, rollout["prompt_ids"], rollout["prompt_mask"], rollout["tokens"],
                                    rollout["mask"], step_bias)
    return refined_process_rewards(scores, steps, refinement, eta)

  return score


def word_share_score(world: Any, token_id: int) -> Score:
  """(R,) share of `token_id` among each response's scored tokens (the steps of `prm_step_scores`: the tokens before
  the first end token); 0 for an empty response."""

  def score(models, rollout):
    del models
    ids, steps = gold_lib.scored_tokens(world.spec, rollout["tokens"], rollout["mask"], xp=jnp)
    hits = jnp.sum(jnp.where(steps, ids == token_id, False), axis=1)
    return (hits / jnp.maximum(jnp.sum(steps, axis=1), 1)).astype(jnp.float32)

  return score


def repetition_rate(world: Any, rollout: Rollout) -> jax.Array:
  """Scalar: repeated non-function tokens (the gold repetition count) / scored tokens, over the whole batch."""
  if world.spec.repeat_penalty <= 0:  # The count is only recoverable from a nonzero penalty.
    return jnp.asarray(jnp.nan, jnp.float32)
  comps = world.gold_components(rollout["prompt_ids"], rollout["prompt_mask"], rollout["tokens"], rollout["mask"])
  repeats = -jnp.sum(comps[:, 3]) / world.spec.repeat_penalty
  _, steps = prm_step_scores(world.spec, rollout["prompt_ids"], rollout["prompt_mask"], rollout["tokens"],
                             rollout["mask"])
  return repeats / jnp.maximum(jnp.sum(steps), 1)


@dataclasses.dataclass(frozen=True)
class PromptTable:
  """The host-side table a rollout's `prompt_index` points into: the prompt texts (chat prompts as rendered for
  reward functions: their messages' text) and the prompt file's extra columns, one value per prompt."""
  prompts: Sequence[Any]
  columns: Mapping[str, Sequence[Any]] = dataclasses.field(default_factory=dict)

  def rows(self, index: Sequence[int]) -> tuple[list[Any], dict[str, list[Any]]]:
    """(prompts, columns) of the rows `index` (one entry per rollout row)."""
    return [self.prompts[i] for i in index], {k: [v[i] for i in index] for k, v in self.columns.items()}


class CallbackErrors:
  """Remembers the first exception a host reward raised inside the jitted step, so the stage can re-raise it as is
  (XLA reports a callback's exception only as a runtime error string)."""

  def __init__(self):
    self.error: BaseException | None = None

  def reraise_from(self, error: BaseException) -> None:
    """Raises the remembered exception (chained to `error`, XLA's report of it) if there is one."""
    if self.error is not None and self.error is not error:  # A host-side call raised it directly: no wrapper.
      raise self.error from error


def text_score(fn: Callable[..., Any], tokenizer: Any, table: PromptTable, label: str,
               errors: CallbackErrors | None = None) -> tuple[Score, HostScore]:
  """A text reward as a jittable score and its host side: (score, host).

  host(tokens, mask, index) decodes the completions and calls `fn(prompts, completions, **columns)` on the rows'
  prompt texts and columns (`rewards.call_reward_function`: float32 (R,), NaN where not scorable); an exception is
  remembered in `errors` before it propagates. score(models, rollout) returns the rollout's `host_score_key(label)`
  entry where it holds one (computed beforehand by `host_scores`), else calls host through a `jax.pure_callback`."""

  function = text_rewards.describe(fn)
  # Messages name the source and, when the label does not already say it, the function behind it.
  name = label if function.endswith(f":{label}") else f"{label} ({function})"

  def host(tokens, mask, index):
    try:
      prompts, columns = table.rows(np.asarray(index))
      return text_rewards.call_reward_function(fn, prompts, prompts_lib.decode_completions(tokenizer, tokens, mask),
                                                columns, name=name)
    except BaseException as e:
      if errors is not None and errors.error is None:
        errors.error = e
      raise

  key = host_score_key(label)

  def score(models, rollout):
    del models
    if key in rollout:
      return jnp.asarray(rollout[key], jnp.float32)
    out = jax.ShapeDtypeStruct(rollout["prompt_index"].shape, jnp.float32)
    return jax.pure_callback(lambda t, m, i: np.asarray(host(np.asarray(t), np.asarray(m), np.asarray(i)),
                                                        np.float32),
                             out, rollout["tokens"], rollout["mask"], rollout["prompt_index"])

  return score, host


def hybrid_score(model_score: Score, rule_scores: Sequence[Score], confidence_K: Sequence[float]) -> Score:
  """`rewards.hybrid.confidence_mix` of a reward-model score and K text-rule scores (NaN where a rule does not
  apply), inside the jitted step."""
  confidence = jnp.asarray(confidence_K, jnp.float32)

  def score(models, rollout):
    rules_KxR = jnp.stack([s(models, rollout) for s in rule_scores]).astype(jnp.float32)
    return hybrid_lib.confidence_mix(model_score(models, rollout).astype(jnp.float32), rules_KxR, confidence, xp=jnp)

  return score


def build_sources(specs: Sequence[RewardSourceSpec], *, world: Any = None, tokenizer: Any = None,
                  table: PromptTable | None = None,
                  member_stats: Mapping[int, tuple[np.ndarray, np.ndarray]] | None = None,
                  errors: CallbackErrors | None = None) -> list[RewardSource]:
  """RewardSources from specs; a "reward_model" source reads `models["rm_<i>"]` (i = the spec's index), a
  "follow_up_likelihood" source `models["flr_<i>"]` (a CausalLM; `follow_up_models`) with the follow-ups rendered by
  `tokenizer`'s chat template and its eos id as the response's end token.
  `member_stats[i]` = (mean_K, std_K) is required for a source with `standardize` (`member_statistics`); text
  rewards read the rollout rows' prompts and columns from `table`."""
  if not specs:
    raise ValueError("rewards: expected at least one reward source")
  labels = [s.label for s in specs]
  if len(set(labels)) != len(labels):
    raise ValueError(f"rewards: source names must be distinct (set `name`), got {labels}")
  out = []
  for i, spec in enumerate(specs):
    token_score, counters, host = None, {}, {}
    if spec.kind == "reward_model":
      stats = None
      if spec.standardize:
        if not member_stats or i not in member_stats:
          raise ValueError(f"rewards[{i}]: standardize=True needs the members' statistics (member_stats[{i}])")
        stats = member_stats[i]
      score = reward_model_score(f"rm_{i}", spec.aggregation, spec.lam, stats)
    elif spec.kind == HYBRID:
      if table is None:
        raise ValueError(f"rewards[{i}]: kind 'hybrid' needs the prompt table (texts and columns) for its rules")
      rules = spec.hybrid_rules(f"rewards[{i}]")
      rule_labels = [f"{spec.label}.rules[{j}]" for j in range(len(rules))]
      rule_parts = [text_score(fn, tokenizer, table, rule_label, errors)
                    for rule_label, (fn, _) in zip(rule_labels, rules)]
      rule_scores = [score for score, _ in rule_parts]
      host = {host_score_key(rule_label): host_fn for rule_label, (_, host_fn) in zip(rule_labels, rule_parts)}
      counters = {f"{spec.label}.rules[{j}]": text_rewards.outcomes_of(fn) for j, (fn, _) in enumerate(rules)}
      score = hybrid_score(reward_model_score(f"rm_{i}", spec.aggregation, spec.lam), rule_scores,
                           [c for _, c in rules])
    elif spec.kind == "follow_up_likelihood":
      if tokenizer is None:
        raise ValueError(f"rewards[{i}]: kind 'follow_up_likelihood' needs the policy tokenizer")
      options = spec.follow_up_options(f"rewards[{i}]")
      follow_ups = follow_up_lib.encode_follow_ups(tokenizer, options["positive"], options["negative"])
      score = follow_up_score(f"flr_{i}", follow_ups, (tokenizer.eos_id,), options["chunk_size"])
    elif spec.kind in WORLD_KINDS:
      if world is None:
        raise ValueError(f"rewards[{i}]: kind {spec.kind!r} needs the synthetic world's prompts")
      if spec.kind == "gold":
        score = gold_score(world)
      elif spec.kind == "word_share":
        score = word_share_score(world, word_share_token(spec.options, world.tokenizer, f"rewards[{i}].options"))
      else:
        bias = process_step_bias(spec.options, world.tokenizer, f"rewards[{i}].options")
        score = process_score(world, spec.refinement, spec.eta, bias)
        token_score = process_token_score(world, spec.refinement, spec.eta, bias)
    else:
      if table is None:
        raise ValueError(f"rewards[{i}]: kind {spec.kind!r} needs the prompt table (texts and columns)")
      fn = spec.text_reward(f"rewards[{i}]")
      score, host_fn = text_score(fn, tokenizer, table, spec.label, errors)
      host = {host_score_key(spec.label): host_fn}
      counters = {spec.label: text_rewards.outcomes_of(fn)}
    out.append(RewardSource(spec.label, float(spec.weight), score, spec.kind not in MODEL_KINDS + (HYBRID,),
                            token_score, {k: v for k, v in counters.items() if v is not None}, host))
  return out


def report_outcomes(groups: Mapping[str, Sequence[RewardSource]]) -> dict[str, dict[str, dict[str, int]]]:
  """Prints and returns the outcome counts (`rewards.outcomes`) of the sources' text reward functions, per group
  of sources (e.g. {"train": training sources, "eval": held-out sources}): {group: {name: {"rows": n, case: n}}}.
  A group whose sources count nothing is left out; a source shared by two groups is reported in the first."""
  out, seen = {}, set()
  for group, sources in groups.items():
    counters = {}
    for s in sources:
      for name, counter in s.outcomes.items():
        if id(counter) not in seen:
          seen.add(id(counter))
          counters[name] = counter
    if counters:
      out[group] = text_rewards.outcomes.report(counters, where=group)
  return out


def combined_rewards(sources: Sequence[RewardSource], models: Mapping[str, Any], rollout: Rollout
                     ) -> tuple[jax.Array, dict[str, jax.Array]]:
  """(sum_i weight_i * score_i (R,), {label: score_i (R,)}); a text reward's NaN ("not scorable") adds 0 to the sum,
  as TRL sums its reward functions."""
  per_source = {s.label: s.score(models, rollout).astype(jnp.float32) for s in sources}

  def term(s):
    value = s.weight * per_source[s.label]
    return jnp.where(jnp.isnan(per_source[s.label]), 0.0, value) if s.unscored_is_nan else value

  return sum(term(s) for s in sources), per_source


def jit_scores(sources: Sequence[RewardSource], models: Mapping[str, Any]
               ) -> Callable[[Rollout], dict[str, jax.Array]]:
  """rollout -> {label: float32 (R,)} of every source, as one jitted program with the reward models' weights as
  arguments (not baked-in constants); for scoring samples outside a train step (evaluation, best-of-N pools)."""
  names = sorted(models)
  split = {n: nnx.split(models[n]) for n in names}
  graphdefs = {n: g for n, (g, _) in split.items()}

  @jax.jit
  def score(states, rollout):
    merged = {n: nnx.merge(graphdefs[n], states[n]) for n in names}
    return {s.label: s.score(merged, rollout).astype(jnp.float32) for s in sources}

  states = {n: st for n, (_, st) in split.items()}
  return lambda rollout: score(states, {k: jnp.asarray(v) for k, v in rollout.items()})


def load_reward_models(specs: Sequence[RewardSourceSpec], inputs: dict,
                       reference: tuple[np.ndarray, ...] | None = None, default_model: str = "",
                       tokenizer: Any = None
                       ) -> tuple[dict[str, tuple[Any, dict]], dict[int, tuple[np.ndarray, np.ndarray]]]:
  """({"rm_<i>": (factory key -> fresh RewardEnsemble of the saved shape, its saved Param values)} for the
  reward-model sources; the factory keeps the jitted init free of the saved weights (they are written after)),
  {i: (mean_K, std_K)} for the sources with `standardize`, over `reference` = (prompt ids, prompt mask,
  response ids, response mask) of the reference responses. A "follow_up_likelihood" source's CausalLM comes as
  "flr_<i>" the same way (`follow_up_model`, defaulting to `default_model`)."""
  out, stats = {}, {}
  for name, lm in follow_up_models(specs, inputs, default_model, tokenizer).items():
    config = lm.config
    out[name] = (lambda key, config=config: CausalLM(config, rngs=nnx.Rngs(key)),
                 jax.device_get(nnx.to_pure_dict(nnx.state(lm, nnx.Param))))
  for i, spec in enumerate(specs):
    if spec.kind not in RM_KINDS:
      continue
    rm_dir = common.resolve_path(spec.reward_model, inputs, "rm_dir")
    artifacts.check_reward_tokenizer(rm_dir, tokenizer, f"rewards[{i}].reward_model")
    rm = artifacts.load_reward_model(rm_dir)
    if spec.standardize:
      stats[i] = member_statistics(rm, *reference)
      print(f"[rl] rewards[{i}] ({spec.label}): members standardized over {len(reference[0])} reference "
            f"responses: mean {np.round(stats[i][0], 4).tolist()}, std {np.round(stats[i][1], 4).tolist()}",
            flush=True)
    out[f"rm_{i}"] = (artifacts.reward_model_factory(rm_dir),
                      jax.device_get(nnx.to_pure_dict(nnx.state(rm, nnx.Param))))
  return out, stats
