"""Reward sources of the online stages: a reward model, an ensemble with an aggregation, the synthetic gold reward,
a (deliberately hackable) process reward over response steps with Clip / Delta refinement, sentence BLEU against
reference responses, and a user Python function; several sources are summed with weights.

Every source is a function called INSIDE the jitted RL step:

    score(models, rollout) -> float32 (R,)

where `models` maps reward-model names to their (frozen) RewardEnsemble modules (merged from the train state)
and `rollout` holds `prompt_ids` / `prompt_mask` (R, P) left-padded, `tokens` / `mask` (R, N) right-padded
(the end token included) and `prompt_index` (R,) int32, the row's index in the host-side prompt table.
Jittable sources (reward model, gold) run as XLA; BLEU and Python functions run on the host through
`jax.pure_callback` on the decoded texts, so the step stays one jitted program.
"""

from __future__ import annotations

import collections
import dataclasses
import importlib
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
from jaxrlhf.stages import artifacts
from jaxrlhf.stages import common

KINDS = ("reward_model", "gold", "process", "bleu", "python")
REFINEMENTS = ("none", "clip", "delta")
SMOOTHING = ("exp", "add1", "none")


@dataclasses.dataclass(frozen=True)
class RewardSourceSpec:
  """One weighted reward source.

  kind: "reward_model" (`reward_model`: "stage:<name>" or a saved reward-model folder; K > 1 members are reduced
    by `aggregation` with `lam`), "gold" (the synthetic world's r*), "process" (the return of the world's
    per-step process reward `prm_step_scores`, refined by `refinement` "none" / "clip" (threshold `eta`) /
    "delta", Gao et al. 2024), "bleu" (sentence BLEU-4 in [0, 1] of the
    response against the prompt's reference responses, whitespace tokens, `smoothing`), "python"
    (`function`: "module:function" called as fn(prompts: list[str], completions: list[str]) -> R floats).
  name: the metric name (`reward/<name>`); default: the kind.
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

  @property
  def label(self) -> str:
    return self.name or self.kind

  def validate(self, path: str) -> None:
    if self.kind == "reward_model" and not self.reward_model:
      raise ConfigError(f"{path}.reward_model: required for kind 'reward_model' (e.g. 'stage:reward')")
    if self.kind == "python":
      if ":" not in self.function:
        raise ConfigError(f"{path}.function: expected 'module:function' for kind 'python', got "
                          f"{self.function!r}")
      load_function(self.function, f"{path}.function")
    if self.standardize and self.kind != "reward_model":
      raise ConfigError(f"{path}.standardize: only reward-model sources have members to standardize "
                        f"(kind is {self.kind!r})")


def load_function(spec: str, path: str = "function") -> Callable[..., Any]:
  """The callable named by "package.module:function"; ValueError naming `path` if it cannot be imported."""
  module_name, _, attr = spec.partition(":")
  try:
    fn = getattr(importlib.import_module(module_name), attr)
  except (ImportError, AttributeError) as e:
    raise ConfigError(f"{path}: cannot load {spec!r}: {e}") from e
  if not callable(fn):
    raise ConfigError(f"{path}: {spec!r} is not callable")
  return fn


# ------------------------------------------------------------------------------------------------ BLEU
def _ngrams(tokens: Sequence[Any], n: int) -> collections.Counter:
  return collections.Counter(tuple(tokens[i:i + n]) for i in range(len(tokens) - n + 1))


def sentence_bleu(hypothesis: Sequence[Any], references: Sequence[Sequence[Any]], *, max_order: int = 4,
                  smoothing: str = "exp") -> float:
  """Sentence BLEU (Papineni et al. 2002) in [0, 1] of one tokenized hypothesis against tokenized references.

  p_n = clipped n-gram matches / hypothesis n-grams for n = 1..max_order, BLEU = BP * exp(mean_n log p_n),
  BP = exp(1 - r / c) when the hypothesis length c is below the reference length r closest to c (ties: the
  shorter), else 1. Orders with no hypothesis n-gram (c < n) are left out of the mean (sacrebleu's effective
  order). Smoothing of orders with zero matches (Chen & Cherry 2014):
    "exp":  p_n = 1 / (2^k * total_n), k counting the zero-match orders so far (sacrebleu's default, method 3);
    "add1": p_n = (m_n + 1) / (total_n + 1) for n >= 2 (Lin & Och 2004);
    "none": any zero precision gives 0.
  An empty hypothesis scores 0.
  """
  if not references:
    raise ValueError("references: expected at least one reference")
  if smoothing not in SMOOTHING:
    raise ValueError(f"smoothing: expected one of {SMOOTHING}, got {smoothing!r}")
  c = len(hypothesis)
  if c == 0:
    return 0.0
  ref_lengths = [len(r) for r in references]
  r = min(ref_lengths, key=lambda x: (abs(x - c), x))
  log_p = []
  zeros = 0
  for n in range(1, max_order + 1):
    total = max(c - n + 1, 0)
    if total == 0:
      continue
    hyp = _ngrams(hypothesis, n)
    max_ref = collections.Counter()
    for ref in references:
      for g, k in _ngrams(ref, n).items():
        max_ref[g] = max(max_ref[g], k)
    matches = sum(min(k, max_ref[g]) for g, k in hyp.items())
    if smoothing == "add1" and n >= 2:
      p = (matches + 1) / (total + 1)
    elif matches == 0:
      if smoothing == "none":
        return 0.0
      zeros += 1
      p = 1.0 / (2 ** zeros * total)
    else:
      p = matches / total
    log_p.append(math.log(p))
  bp = 1.0 if c >= r else math.exp(1.0 - r / c)
  return bp * math.exp(sum(log_p) / len(log_p))


# ------------------------------------------------------------------------------------------------ sources
Rollout = Mapping[str, jax.Array]
Score = Callable[[Mapping[str, Any], Rollout], jax.Array]


@dataclasses.dataclass(frozen=True)
class RewardSource:
  """A built source: its metric label, weight and jittable `score(models, rollout) -> (R,)`."""
  label: str
  weight: float
  score: Score


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


def gold_score(world: Any) -> Score:
  """The world's jittable r*(prompt, response) (the response's end token and padding are not scored)."""

  def score(models, rollout):
    del models
    return world.gold_reward(rollout["prompt_ids"], rollout["prompt_mask"], rollout["tokens"], rollout["mask"])

  return score


def prm_step_scores(spec: Any, prompt_ids_RxP: jax.Array, prompt_mask_RxP: jax.Array, tokens_RxN: jax.Array,
                    mask_RxN: jax.Array) -> tuple[jax.Array, jax.Array]:
  """A step-local process reward model of the synthetic world: (scores_RxN in (0, 1), steps_RxN bool).

  Each scored response token is one step (the gold reward's scored positions: masked tokens before the first
  `<eos>`, so steps are a right-padded prefix). The PRM judges a step by its local gold evidence only:

      s_t = sigmoid(alpha q[y_t] + rho rel(y_t, x) + B[y_{t-1}, y_t])      (B only when y_{t-1} is a step)

  the "probability that step t is a good step". It is a sensible step scorer (it ranks tokens as the gold
  quality / relevance / coherence terms do) and hackable in the two ways Gao et al. (2024) describe: every step
  scores > 0, so a summed return grows with the number of steps (gold's length term peaks at L* and then falls),
  and it is blind to repetition (gold penalizes repeats), so repeating the best step keeps scoring high.

  Args:
    spec: the world's `GoldSpec` (`world.spec`).
    prompt_ids_RxP, prompt_mask_RxP: prompts (any padding; chat/control tokens have no topic).
    tokens_RxN, mask_RxN: responses, right padded, the end token included.

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
  return jnp.where(steps, jax.nn.sigmoid(logit), 0.0).astype(jnp.float32), steps


def refined_process_return(scores_RxS: jax.Array, steps_RxS: jax.Array, refinement: str, eta: float = 0.5
                           ) -> jax.Array:
  """(R,) return sum_t r'_t of refined step rewards (Gao et al. 2024, §4), steps a right-padded prefix.

  "none": r'_t = r_t (grows with the number of steps); "clip": r'_t = min(r_t - eta, 0) (only penalties, so
  no step can add reward); "delta": r'_t = r_t - r_{t+1}, the last step keeps r_T (the sum telescopes to the
  first step's reward, bounded whatever the length).
  """
  if refinement == "none":
    refined = jnp.where(steps_RxS, scores_RxS, 0.0)
  elif refinement == "clip":
    refined = pg.clip_process_rewards(scores_RxS, steps_RxS, eta)
  elif refinement == "delta":
    refined = pg.delta_process_rewards(scores_RxS, steps_RxS)
  else:
    raise ValueError(f"refinement: expected one of {REFINEMENTS}, got {refinement!r}")
  return jnp.sum(refined, axis=1)


def process_score(world: Any, refinement: str, eta: float) -> Score:
  """The return of the world's process reward (`prm_step_scores`) under `refinement` (see
  `refined_process_return`); the paper's sequence-level return from the first step, as GRPO / RLOO use it."""

  def score(models, rollout):
    del models
    scores, steps = prm_step_scores(world.spec, rollout["prompt_ids"], rollout["prompt_mask"], rollout["tokens"],
                                    rollout["mask"])
    return refined_process_return(scores, steps, refinement, eta)

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


def _host_score(host_fn: Callable[[np.ndarray, np.ndarray, np.ndarray], np.ndarray]) -> Score:
  """A host function of (tokens (R, N), mask (R, N), prompt_index (R,)) -> (R,) as a jittable pure_callback."""

  def score(models, rollout):
    del models
    out = jax.ShapeDtypeStruct(rollout["prompt_index"].shape, jnp.float32)
    return jax.pure_callback(lambda t, m, i: np.asarray(host_fn(np.asarray(t), np.asarray(m), np.asarray(i)),
                                                        np.float32),
                             out, rollout["tokens"], rollout["mask"], rollout["prompt_index"])

  return score


def bleu_score(tokenizer: Any, references: Sequence[Sequence[str]], smoothing: str = "exp") -> Score:
  """Sentence BLEU of the decoded response against `references[prompt_index]` (whitespace tokens)."""
  refs = [[r.split() for r in rs] for rs in references]

  def host(tokens, mask, index):
    hyps = prompts_lib.decode_completions(tokenizer, tokens, mask)
    return [sentence_bleu(h.split(), refs[i], smoothing=smoothing) for h, i in zip(hyps, index)]

  return _host_score(host)


def python_score(fn: Callable[..., Any], tokenizer: Any, prompts: Sequence[str], label: str) -> Score:
  """fn(prompts: list[str], completions: list[str]) -> R floats, on the decoded texts."""

  def host(tokens, mask, index):
    completions = prompts_lib.decode_completions(tokenizer, tokens, mask)
    out = np.asarray(fn([prompts[i] for i in index], completions), np.float32).reshape(-1)
    if out.shape[0] != tokens.shape[0]:
      raise ValueError(f"reward function {label!r}: returned {out.shape[0]} rewards for {tokens.shape[0]} "
                       "completions")
    return out

  return _host_score(host)


def build_sources(specs: Sequence[RewardSourceSpec], *, world: Any = None, tokenizer: Any = None,
                  prompts: Sequence[str] = (), references: Sequence[Sequence[str]] = (),
                  member_stats: Mapping[int, tuple[np.ndarray, np.ndarray]] | None = None) -> list[RewardSource]:
  """RewardSources from specs; a "reward_model" source reads `models["rm_<i>"]` (i = the spec's index).
  `member_stats[i]` = (mean_K, std_K) is required for a source with `standardize` (`member_statistics`)."""
  if not specs:
    raise ValueError("rewards: expected at least one reward source")
  labels = [s.label for s in specs]
  if len(set(labels)) != len(labels):
    raise ValueError(f"rewards: source names must be distinct (set `name`), got {labels}")
  out = []
  for i, spec in enumerate(specs):
    if spec.kind == "reward_model":
      stats = None
      if spec.standardize:
        if not member_stats or i not in member_stats:
          raise ValueError(f"rewards[{i}]: standardize=True needs the members' statistics (member_stats[{i}])")
        stats = member_stats[i]
      score = reward_model_score(f"rm_{i}", spec.aggregation, spec.lam, stats)
    elif spec.kind == "gold":
      if world is None:
        raise ValueError(f"rewards[{i}]: kind 'gold' needs the synthetic world")
      score = gold_score(world)
    elif spec.kind == "process":
      if world is None:
        raise ValueError(f"rewards[{i}]: kind 'process' needs the synthetic world")
      score = process_score(world, spec.refinement, spec.eta)
    elif spec.kind == "bleu":
      if not references:
        raise ValueError(f"rewards[{i}]: kind 'bleu' needs reference responses")
      score = bleu_score(tokenizer, references, spec.smoothing)
    else:
      score = python_score(load_function(spec.function, f"rewards[{i}].function"), tokenizer, prompts,
                           spec.label)
    out.append(RewardSource(spec.label, float(spec.weight), score))
  return out


def combined_rewards(sources: Sequence[RewardSource], models: Mapping[str, Any], rollout: Rollout
                     ) -> tuple[jax.Array, dict[str, jax.Array]]:
  """(sum_i weight_i * score_i (R,), {label: score_i (R,)})."""
  per_source = {s.label: s.score(models, rollout).astype(jnp.float32) for s in sources}
  total = sum(s.weight * per_source[s.label] for s in sources)
  return total, per_source


def load_reward_models(specs: Sequence[RewardSourceSpec], inputs: dict,
                       reference: tuple[np.ndarray, ...] | None = None
                       ) -> tuple[dict[str, tuple[Any, dict]], dict[int, tuple[np.ndarray, np.ndarray]]]:
  """({"rm_<i>": (factory key -> fresh RewardEnsemble of the saved shape, its saved Param values)} for the
  reward-model sources; the factory keeps the jitted init free of the saved weights (they are written after)),
  {i: (mean_K, std_K)} for the sources with `standardize`, over `reference` = (prompt ids, prompt mask,
  response ids, response mask) of the reference responses."""
  out, stats = {}, {}
  for i, spec in enumerate(specs):
    if spec.kind != "reward_model":
      continue
    rm_dir = common.resolve_path(spec.reward_model, inputs, "rm_dir")
    rm = artifacts.load_reward_model(rm_dir)
    if spec.standardize:
      stats[i] = member_statistics(rm, *reference)
      print(f"[rl] rewards[{i}] ({spec.label}): members standardized over {len(reference[0])} reference "
            f"responses: mean {np.round(stats[i][0], 4).tolist()}, std {np.round(stats[i][1], 4).tolist()}",
            flush=True)
    out[f"rm_{i}"] = (artifacts.reward_model_factory(rm_dir),
                      jax.device_get(nnx.to_pure_dict(nnx.state(rm, nnx.Param))))
  return out, stats
