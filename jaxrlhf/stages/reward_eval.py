"""The "reward_eval" stage: a RewardBench-style evaluation of a reward model (or ensemble) on preference pairs and
k-way files, with bootstrap confidence intervals.

Pairs come from `data` (the world's or a file's held-out pairs, `split="held_out"`, or every pair, `split="all"`);
k-way records (a prompt, k completions, one correct: RewardBench 2's best-of-4 layout) from `kway_paths`
(jaxrlhf.data.adapters format "kway"). Every pair is scored through `train.scoring.pair_rewards` in the layout
`data.shared_prompt` chooses; a k-way record is scored as its k - 1 pairs (correct, other).

Rules (jaxrlhf.evaluation.pairwise):
  pairwise accuracy: a pair is right when r(chosen) > r(rejected) strictly; a tie is wrong (RewardBench);
  per subset: the same accuracy over the pairs of each `subset` value (the file's "subset" column);
  sections: RewardBench 1's section scores and overall score over the subsets whose names are RewardBench's
    (`rewardbench_scores`), only when some are present;
  best-of-k: credit 1 when the correct completion scores strictly above every other one, 1 / m when it ties with
    m - 1 others at the top, else 0 (RewardBench 2's `reroll_and_score_dataset`; `best_of_k_credit`).
An ensemble's K members are each scored on their own (`member_<k>/...`) and through `aggregation` (the headline
numbers). Each estimate carries a percentile-bootstrap interval over pairs (records), `<name>_lower` /
`<name>_upper` (`evaluation.policy.confidence_interval`, `num_resamples` resamples seeded by `seed`). Section
scores are point estimates (no interval). Pairs the pipeline drops as too long cannot be scored: they are counted
(`pairs/dropped_too_long`, `kway/dropped_too_long`) and left out of every estimate.

Reward benchmarks with a grouping label (`benchmark` + `benchmark_paths`, read by the adapter format of the same name;
jaxrlhf.evaluation.benchmarks has the papers' rules): "m_rewardbench" (M-RewardBench, Gureja et al. 2024, arXiv
2410.15522: the released per-language parquet files) reports accuracy per language and, per language, its
RewardBench subsets, the four category scores (Chat, Chat Hard, Safety, Reasoning; M-RewardBench's example counts)
and their mean; "rag_rewardbench" (RAG-RewardBench, Jin et al. 2024, arXiv 2412.13746: the released JSONL files, one
per scenario) reports accuracy per scenario (multi-hop reasoning, fine-grained citation, appropriate abstain,
conflict robustness, helpfulness, harmlessness) and per source subset. Each pair is scored as any other: its `prompt`
(RAG-RewardBench's holds the retrieved documents and the question) is the user turn, the response the reply.
Accuracies carry bootstrap intervals; ensembles report members and aggregate (`benchmark_metrics`).

`scorer="follow_up_likelihood"` scores every response by FLR instead of a reward model (Zhang et al. 2024, arXiv
2409.13948; `train.scoring.follow_up_logps`): the causal LM `follow_up.model` (default: `data.tokenizer`'s model)
reads each [prompt | response] row followed by positive and negative follow-up user turns (`follow_up.positive`,
`negative`; default the paper's, `rewards.follow_up`), pairs in two rows; the rules and intervals are the same.

Files (workdir): results.json (metrics), scores.jsonl (one line per pair / k-way record / benchmark pair: member and
aggregate scores, credit; dropped ones marked) for notebooks.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import time
from typing import Any, Sequence

import jax
import numpy as np
from flax import nnx

from jaxrlhf.config import ConfigError, field, stage_ref
from jaxrlhf.data import AdapterConfig, PreferenceRecord, format_skip_report, read_records
from jaxrlhf.evaluation import benchmarks
from jaxrlhf.evaluation import pairwise
from jaxrlhf.evaluation.policy import confidence_interval
from jaxrlhf.losses.aggregation import AGGREGATION_METHODS, aggregate
from jaxrlhf.rewards import follow_up as follow_up_lib
from jaxrlhf.stages import artifacts
from jaxrlhf.stages import common
from jaxrlhf.stages import inputs as inputs_lib
from jaxrlhf.stages import reward_sources
from jaxrlhf.train import scoring

SPLITS = ("held_out", "all", "none")
SCORERS = ("reward_model", "follow_up_likelihood")
BENCHMARKS = ("none", "m_rewardbench", "rag_rewardbench")
# What a benchmark's pairs are grouped by (BenchmarkRecord.group).
GROUP_KINDS = {"m_rewardbench": "language", "rag_rewardbench": "scenario"}
NO_SUBSET = "(none)"


@dataclasses.dataclass(frozen=True)
class RewardEvalConfig:
  """The "reward_eval" stage.

  reward_model: "stage:<name>" or a saved reward-model folder (a model or an ensemble).
  data: the pairs (world or files) and the pipeline settings (max_length, eval_batch_size, shared_prompt);
    `data.tokenizer` for files and benchmarks defaults to the reward model's own (the tokenizer and chat template a
    reward stage trained with, saved beside it; a Hugging Face folder's), and is required for a folder without one
    and for FLR.
  split: "held_out" (the split `data` holds out: eval_paths / eval_fraction / num_eval, as a training stage with
    the same `data` would), "all" (every pair read) or "none" (k-way and benchmark files only).
  kway_paths / kway_columns: k-way files (format "kway", strictness `data.strict`) for best-of-k accuracy.
  benchmark / benchmark_paths / benchmark_columns: a reward benchmark's released files ("m_rewardbench": the
    per-language parquet files; "rag_rewardbench": the per-scenario JSONL files), read with the adapter format of
    that name (strictness `data.strict`, column renames `benchmark_columns`), scored per language / scenario.
  aggregation / lam: how an ensemble's K rewards become one (losses.aggregation).
  level / num_resamples / seed: the bootstrap intervals.
  scorer: "reward_model" (the default) or "follow_up_likelihood" (FLR with the options `follow_up`: model (a HF
    folder, .gguf or "stage:<name>"; default `data.tokenizer`), positive, negative, chunk_size; see
    `reward_sources.follow_up_options`); FLR needs no reward_model.
  """
  seed: int = field(0)
  reward_model: str = stage_ref("rm_dir")
  data: inputs_lib.DataSpec = field(default_factory=inputs_lib.DataSpec)
  split: str = field("held_out", choices=SPLITS)
  kway_paths: tuple[str, ...] = field(())
  kway_columns: dict = field(default_factory=dict)
  benchmark: str = field("none", choices=BENCHMARKS)
  benchmark_paths: tuple[str, ...] = field(())
  benchmark_columns: dict = field(default_factory=dict)
  aggregation: str = field("mean", choices=AGGREGATION_METHODS)
  lam: float = field(1.0)
  level: float = field(0.95, min=0.5, max=0.999)
  num_resamples: int = field(2000, min=1)
  scorer: str = field("reward_model", choices=SCORERS)
  follow_up: dict = field(default_factory=dict)

  def validate(self, path: str) -> None:
    if self.scorer == "follow_up_likelihood":
      options = reward_sources.follow_up_options(self.follow_up, f"{path}.follow_up")
      if not options["model"] and not self.data.tokenizer:
        raise ConfigError(f"{path}.follow_up.model: required (or data.tokenizer, its default)")
    elif self.follow_up:
      raise ConfigError(f"{path}.follow_up: only used with {path}.scorer='follow_up_likelihood'")
    elif not self.reward_model:
      raise ConfigError(f"{path}.reward_model: required ('stage:<reward stage>' or a saved reward-model folder)")
    if self.split == "none" and not self.kway_paths and not self.benchmark_paths:
      raise ConfigError(f"{path}.kway_paths: required when {path}.split='none' and there are no "
                        f"{path}.benchmark_paths (nothing else to evaluate)")
    if (self.benchmark == "none") != (not self.benchmark_paths):
      raise ConfigError(f"{path}.benchmark: {self.benchmark!r} with {len(self.benchmark_paths)} "
                        f"{path}.benchmark_paths; give one of {BENCHMARKS[1:]} together with its files")
    for i, p in enumerate(self.benchmark_paths):
      if not os.path.exists(p):
        raise ConfigError(f"{path}.benchmark_paths[{i}]: file not found: {p!r}")
    if self.benchmark != "none":
      try:
        AdapterConfig(format=self.benchmark, columns=dict(self.benchmark_columns))
      except ValueError as e:
        raise ConfigError(f"{path}.benchmark_columns: {e}") from e
      if not self.data.tokenizer and (self.scorer != "reward_model" or self.data.source == "world"):
        raise ConfigError(f"{path}.data.tokenizer: required for {path}.benchmark={self.benchmark!r} (a HF folder or "
                          ".gguf; the benchmark's text needs a real tokenizer)")
    elif self.benchmark_columns:
      raise ConfigError(f"{path}.benchmark_columns: only used with {path}.benchmark set")
    for i, p in enumerate(self.kway_paths):
      if not os.path.exists(p):
        raise ConfigError(f"{path}.kway_paths[{i}]: file not found: {p!r}")
    try:
      AdapterConfig(format="kway", columns=dict(self.kway_columns))
    except ValueError as e:
      raise ConfigError(f"{path}.kway_columns: {e}") from e
    if self.data.source == "files" and not self.data.tokenizer and self.scorer != "reward_model":
      raise ConfigError(f"{path}.data.tokenizer: required for file data (a HF folder or .gguf)")
    for key, allowed in (("transform", ("none",)), ("curate", ("none",)), ("margin_from", ("none", "file"))):
      if getattr(self.data, key) not in allowed:
        raise ConfigError(f"{path}.data.{key}: {getattr(self.data, key)!r} does not apply to an evaluation "
                          f"(pairs are scored as read); use {allowed[0]!r}")


def load_reward_model(path: str) -> Any:
  """The model this stage scores with, from a saved folder: a jaxrlhf reward model or ensemble, or a Hugging Face
  sequence-classification folder (`artifacts.load_reward_model_any`), run as one backbone with K heads where its
  members share the backbone (`artifacts.shared_backbone_model`). Its call gives rewards (B,), (B, K) or (B, K, H)."""
  return artifacts.shared_backbone_model(artifacts.load_reward_model_any(path))


def _backbone_config(rm: Any) -> Any:
  return rm.config if hasattr(rm, "backbone") else rm.members.config

# ------------------------------------------------------------------------------------------------ scoring
@dataclasses.dataclass(frozen=True)
class FollowUpScorer:
  """FLR as a pair scorer: a CausalLM, the rendered follow-ups, the response end ids and the gather chunk."""
  model: Any
  follow_ups: follow_up_lib.FollowUps
  end_ids: tuple[int, ...]
  chunk_size: int = 1024


def flr_pair_scores(scorer: FollowUpScorer, records: Sequence[Any], tokenizer: Any, data: inputs_lib.DataSpec,
                    name: str = "pairs") -> tuple[np.ndarray, np.ndarray, np.ndarray, dict]:
  """`score_pairs` by FLR: (chosen_Nx1, rejected_Nx1, index_N, report). Pairs are tokenized and batched as for a
  reward model, in two rows ([prompt | response + eos] right padded; the eos gives way to the follow-up's marker)."""
  plan = inputs_lib.scoring_batches(records, tokenizer, data, shared_prompt=False)
  graphdef, state = nnx.split(scorer.model)
  follow = tuple(jax.numpy.asarray(x) for x in (scorer.follow_ups.ids_FxL, scorer.follow_ups.mask_FxL,
                                                 scorer.follow_ups.target_FxL))

  @jax.jit
  def rewards(state, ids_BxT, mask_BxT):
    empty = jax.numpy.zeros((ids_BxT.shape[0], 0), jax.numpy.int32)  # The rows hold prompt and response.
    logps = scoring.follow_up_logps(nnx.merge(graphdef, state), empty, empty, ids_BxT, mask_BxT, *follow,
                                    end_ids=scorer.end_ids, chunk_size=scorer.chunk_size)
    return scoring.flr_scores(logps, scorer.follow_ups.positive_F)

  start, chosen, rejected = time.time(), [], []
  for i, batch in enumerate(plan.batches):
    rows = scoring.nonempty_rows(batch)
    ids = np.concatenate([batch["chosen_input_ids"], batch["rejected_input_ids"]])
    mask = np.concatenate([batch["chosen_attention_mask"], batch["rejected_attention_mask"]])
    r = np.asarray(jax.device_get(rewards(state, ids, mask)), np.float64)
    chosen.append(r[:len(rows)][rows])
    rejected.append(r[len(rows):][rows])
    if len(plan.batches) >= 20 and (i + 1) % max(1, len(plan.batches) // 10) == 0:
      print(f"[reward_eval] {name} (FLR): {i + 1}/{len(plan.batches)} batches ({time.time() - start:.0f} s)",
            flush=True)
  n = plan.index.size
  order = np.argsort(plan.index)
  chosen_Nx1 = np.concatenate(chosen).reshape(n, 1) if n else np.zeros((0, 1))
  rejected_Nx1 = np.concatenate(rejected).reshape(n, 1) if n else np.zeros((0, 1))
  report = {**plan.report, "shared_prompt": {"mode": "off", "used": False}, "seconds": round(time.time() - start, 2)}
  return chosen_Nx1[order], rejected_Nx1[order], plan.index[order], report


def score_pairs(rm: Any, records: Sequence[Any], tokenizer: Any, data: inputs_lib.DataSpec, name: str = "pairs"
                ) -> tuple[np.ndarray, np.ndarray, np.ndarray, dict]:
  """(chosen_NxK, rejected_NxK float64 rewards of the scored pairs, index_N = their record indices ascending,
  report) with K = every scalar the model outputs per sequence (members, x heads). Pairs dropped as too long
  are absent from index_N and counted in report["dropped_too_long"]. A `FollowUpScorer` scores by FLR
  (`flr_pair_scores`, K = 1)."""
  if isinstance(rm, FollowUpScorer):
    return flr_pair_scores(rm, records, tokenizer, data, name)
  shared, layout = inputs_lib.choose_shared_prompt(data, list(records), tokenizer, _backbone_config(rm),
                                                   with_lm_head=False)
  plan = inputs_lib.scoring_batches(records, tokenizer, data, shared_prompt=shared)
  graphdef, state = nnx.split(rm)

  @jax.jit
  def rewards(state, batch):
    return scoring.pair_rewards(nnx.merge(graphdef, state), batch)

  start, chosen, rejected = time.time(), [], []
  for i, batch in enumerate(plan.batches):
    rows = scoring.nonempty_rows(batch)
    r_c, r_r = jax.device_get(rewards(state, batch))
    chosen.append(np.asarray(r_c, np.float64)[rows])
    rejected.append(np.asarray(r_r, np.float64)[rows])
    if len(plan.batches) >= 20 and (i + 1) % max(1, len(plan.batches) // 10) == 0:
      print(f"[reward_eval] {name}: {i + 1}/{len(plan.batches)} batches ({time.time() - start:.0f} s)", flush=True)
  n = plan.index.size
  chosen_NxK = np.concatenate(chosen).reshape(n, -1) if n else np.zeros((0, 1))
  rejected_NxK = np.concatenate(rejected).reshape(n, -1) if n else np.zeros((0, 1))
  order = np.argsort(plan.index)  # Back to record order.
  report = {**plan.report, "shared_prompt": layout, "seconds": round(time.time() - start, 2)}
  return chosen_NxK[order], rejected_NxK[order], plan.index[order], report


def kway_pairs(records: Sequence[Any]) -> tuple[list[PreferenceRecord], np.ndarray]:
  """The k - 1 pairs (correct completion, completion j) of each KWayRecord, j ascending, and the correct index of
  each record (`pairwise.kway_correct_index`)."""
  best = pairwise.kway_correct_index(records)
  pairs = []
  for r, b in zip(records, best):
    for j, completion in enumerate(r.completions):
      if j != b:
        pairs.append(PreferenceRecord(prompt=r.prompt, chosen=r.completions[b], rejected=completion,
                                      subset=r.subset, source=r.source, tools=r.tools,
                                      chat_template_kwargs=r.chat_template_kwargs))
  return pairs, best


def kway_scores(records: Sequence[Any], best: np.ndarray, chosen_NxK: np.ndarray, rejected_NxK: np.ndarray,
                pair_index: np.ndarray) -> tuple[list[np.ndarray | None], int]:
  """Per k-way record, its completions' scores (k, K) (None when a pair of it was dropped), and the count of
  dropped records. The correct completion's score is read from its first pair."""
  scored = {int(i): (c, r) for i, c, r in zip(pair_index, chosen_NxK, rejected_NxK)}
  out, start, dropped = [], 0, 0
  for record, b in zip(records, best):
    k = len(record.completions)
    ids = list(range(start, start + k - 1))
    start += k - 1
    if not all(i in scored for i in ids):
      out.append(None)
      dropped += 1
      continue
    others = iter(ids)
    scores = [scored[ids[0]][0] if j == b else scored[next(others)][1] for j in range(k)]
    out.append(np.stack(scores))
  return out, dropped

# ------------------------------------------------------------------------------------------------ metrics
def _estimate(metrics: dict, name: str, credit: np.ndarray, level: float, num_resamples: int, seed: int) -> None:
  est = confidence_interval(credit, method="bootstrap", level=level, num_resamples=num_resamples, seed=seed)
  metrics[name], metrics[f"{name}_lower"], metrics[f"{name}_upper"] = est.mean, est.lower, est.upper


def aggregated(rewards_NxK: np.ndarray, method: str, lam: float) -> np.ndarray:
  """(N,) float64 ensemble reward (losses.aggregation.aggregate over the last axis); K = 1 passes through."""
  if rewards_NxK.shape[-1] == 1:
    return np.asarray(rewards_NxK[..., 0], np.float64)
  return np.asarray(aggregate(rewards_NxK, method, lam), np.float64)


def pair_metrics(chosen_NxK: np.ndarray, rejected_NxK: np.ndarray, subsets: Sequence[str | None], *,
                 aggregation: str = "mean", lam: float = 1.0, level: float = 0.95, num_resamples: int = 2000,
                 seed: int = 0) -> tuple[dict[str, float], np.ndarray]:
  """Pairwise metrics of N scored pairs and the per-pair credit of the aggregate (bool as float, ties wrong).

  Keys: accuracy (+ _lower / _upper), n; member_<k>/accuracy (+ CI) when K > 1; with subsets (some entry not
  None): subset/<name>/accuracy (+ CI) and subset/<name>/n (pairs without one under "(none)"), and
  section/<name> for the RewardBench sections (and "Score") computable from the subsets present.
  """
  metrics: dict[str, float] = {"n": float(len(chosen_NxK))}
  agg_c, agg_r = aggregated(chosen_NxK, aggregation, lam), aggregated(rejected_NxK, aggregation, lam)
  credit = pairwise.pairwise_correct(agg_c, agg_r).astype(np.float64)
  _estimate(metrics, "accuracy", credit, level, num_resamples, seed)
  if chosen_NxK.shape[1] > 1:
    for k in range(chosen_NxK.shape[1]):
      member = pairwise.pairwise_correct(chosen_NxK[:, k], rejected_NxK[:, k]).astype(np.float64)
      _estimate(metrics, f"member_{k}/accuracy", member, level, num_resamples, seed)
  if any(s is not None for s in subsets):
    names = np.asarray([NO_SUBSET if s is None else s for s in subsets], dtype=object)
    by_subset = pairwise.accuracy_by_subset(credit, names)
    for name, row in by_subset.items():
      if name == "all":
        continue
      _estimate(metrics, f"subset/{name}/accuracy", credit[names == name], level, num_resamples, seed)
      metrics[f"subset/{name}/n"] = float(row["count"])
    known = {s: row["accuracy"] for s, row in by_subset.items()
             if s in pairwise.EXAMPLE_COUNTS or s in pairwise.PRIOR_SETS}
    if known:
      for section, score in pairwise.rewardbench_scores(known).items():
        if np.isfinite(score):
          metrics[f"section/{section}"] = float(score)
  return metrics, credit


def kway_metrics(scores: Sequence[np.ndarray], best: np.ndarray, subsets: Sequence[str | None], *,
                 aggregation: str = "mean", lam: float = 1.0, level: float = 0.95, num_resamples: int = 2000,
                 seed: int = 0) -> tuple[dict[str, float], np.ndarray]:
  """Best-of-k metrics of scored k-way records (scores[r]: (k_r, K) per completion and member) and the credit of
  the aggregate per record (`pairwise.best_of_k_credit`, ties at the top split).

  Keys per distinct k: best_of_<k> (+ CI), best_of_<k>/n; member_<m>/best_of_<k> (+ CI) when K > 1;
  subset/<name>/best_of_<k> (+ CI) and subset/<name>/best_of_<k>/n with subsets.
  """
  metrics: dict[str, float] = {}
  credit = np.zeros(len(scores))
  ks = np.asarray([s.shape[0] for s in scores])
  names = np.asarray([NO_SUBSET if s is None else s for s in subsets], dtype=object)
  for k in sorted(set(ks.tolist())):
    sel = np.flatnonzero(ks == k)
    scores_RxkxK = np.stack([scores[i] for i in sel])
    agg_Rxk = aggregated(scores_RxkxK, aggregation, lam)
    credit[sel] = pairwise.best_of_k_credit(agg_Rxk, best[sel])
    _estimate(metrics, f"best_of_{k}", credit[sel], level, num_resamples, seed)
    metrics[f"best_of_{k}/n"] = float(sel.size)
    if scores_RxkxK.shape[2] > 1:
      for m in range(scores_RxkxK.shape[2]):
        member = pairwise.best_of_k_credit(scores_RxkxK[:, :, m], best[sel])
        _estimate(metrics, f"member_{m}/best_of_{k}", member, level, num_resamples, seed)
    if any(s is not None for s in subsets):
      for name in sorted(set(names[sel].tolist())):
        mine = sel[names[sel] == name]
        _estimate(metrics, f"subset/{name}/best_of_{k}", credit[mine], level, num_resamples, seed)
        metrics[f"subset/{name}/best_of_{k}/n"] = float(mine.size)
  return metrics, credit

def benchmark_metrics(chosen_NxK: np.ndarray, rejected_NxK: np.ndarray, groups: Sequence[str],
                      subsets: Sequence[str | None], benchmark: str, *, aggregation: str = "mean", lam: float = 1.0,
                      level: float = 0.95, num_resamples: int = 2000, seed: int = 0
                      ) -> tuple[dict[str, float], np.ndarray]:
  """Metrics of N scored pairs of a reward benchmark (`benchmark`: "m_rewardbench" or "rag_rewardbench") and the
  per-pair credit of the aggregate (ties wrong). `groups` (N,): each pair's language / scenario; `subsets` (N,):
  its RewardBench subset / source dataset (None: "(none)").

  With b = benchmark and kind = GROUP_KINDS[b] ("language" or "scenario"), the keys are:
    b/accuracy (+ _lower / _upper: the bootstrap interval over pairs), b/n: every pair;
    b/<kind>/<g>/accuracy (+ interval), b/<kind>/<g>/n: each group g;
    b/<kind>/<g>/subset/<s>/accuracy and .../n: each subset within a group (point estimates);
    with K > 1 members: b/member_<k>/accuracy and b/member_<k>/<kind>/<g>/accuracy (+ intervals);
    m_rewardbench: b/language/<g>/section/<category> for the categories present (Chat, Chat Hard, Safety,
      Reasoning) and b/language/<g>/score, their mean (`benchmarks.m_rewardbench_scores`); b/score, the mean of
      the languages' scores (point estimates of the aggregate);
    rag_rewardbench: b/macro_accuracy, the unweighted mean of the scenarios' accuracies.
  """
  kind = GROUP_KINDS[benchmark]
  groups = np.asarray(list(groups), dtype=object)
  names = np.asarray([NO_SUBSET if s is None else s for s in subsets], dtype=object)
  if not len(groups) == len(names) == len(chosen_NxK):
    raise ValueError(f"{len(chosen_NxK)} pairs with {len(groups)} groups and {len(names)} subsets")
  metrics: dict[str, float] = {f"{benchmark}/n": float(len(chosen_NxK))}
  agg_c, agg_r = aggregated(chosen_NxK, aggregation, lam), aggregated(rejected_NxK, aggregation, lam)
  credit = pairwise.pairwise_correct(agg_c, agg_r).astype(np.float64)
  members = [pairwise.pairwise_correct(chosen_NxK[:, k], rejected_NxK[:, k]).astype(np.float64)
             for k in range(chosen_NxK.shape[1])] if chosen_NxK.shape[1] > 1 else []
  _estimate(metrics, f"{benchmark}/accuracy", credit, level, num_resamples, seed)
  for k, member in enumerate(members):
    _estimate(metrics, f"{benchmark}/member_{k}/accuracy", member, level, num_resamples, seed)
  group_accuracy, scores = [], []
  for g in sorted(set(groups.tolist())):
    mine = groups == g
    prefix = f"{benchmark}/{kind}/{g}"
    _estimate(metrics, f"{prefix}/accuracy", credit[mine], level, num_resamples, seed)
    metrics[f"{prefix}/n"] = float(mine.sum())
    group_accuracy.append(metrics[f"{prefix}/accuracy"])
    for k, member in enumerate(members):
      _estimate(metrics, f"{benchmark}/member_{k}/{kind}/{g}/accuracy", member[mine], level, num_resamples, seed)
    by_subset = {s: float(credit[mine & (names == s)].mean()) for s in sorted(set(names[mine].tolist()))}
    for s, accuracy in by_subset.items():
      metrics[f"{prefix}/subset/{s}/accuracy"] = accuracy
      metrics[f"{prefix}/subset/{s}/n"] = float((mine & (names == s)).sum())
    known = {s: a for s, a in by_subset.items() if s in benchmarks.M_REWARDBENCH_EXAMPLE_COUNTS}
    if benchmark == "m_rewardbench" and known:
      for section, score in benchmarks.m_rewardbench_scores(known).items():
        if np.isfinite(score):
          metrics[f"{prefix}/score" if section == benchmarks.SCORE else f"{prefix}/section/{section}"] = score
      scores.append(metrics[f"{prefix}/score"])
  if scores:
    metrics[f"{benchmark}/score"] = float(np.mean(scores))
  if benchmark == "rag_rewardbench":
    metrics[f"{benchmark}/macro_accuracy"] = float(np.mean(group_accuracy))
  return metrics, credit

# ------------------------------------------------------------------------------------------------ the stage
def evaluate_pairs(rm: Any, records: Sequence[Any], tokenizer: Any, cfg: RewardEvalConfig
                   ) -> tuple[dict[str, float], dict, list[dict]]:
  """(metrics, scoring report, scores.jsonl lines) of preference records."""
  chosen, rejected, index, report = score_pairs(rm, records, tokenizer, cfg.data)
  metrics, credit = {}, np.zeros(0)
  if index.size:
    metrics, credit = pair_metrics(chosen, rejected, [records[i].subset for i in index], aggregation=cfg.aggregation,
                                   lam=cfg.lam, level=cfg.level, num_resamples=cfg.num_resamples, seed=cfg.seed)
  metrics["pairs/dropped_too_long"] = float(report["dropped_too_long"])
  heads = [{"kind": "pair", "index": i, "source": r.source, "subset": r.subset} for i, r in enumerate(records)]
  return metrics, report, score_lines(heads, chosen, rejected, index, credit, cfg)


def score_lines(heads: list[dict], chosen: np.ndarray, rejected: np.ndarray, index: np.ndarray, credit: np.ndarray,
                cfg: RewardEvalConfig) -> list[dict]:
  """scores.jsonl lines: each record's `heads[i]` with its member scores, aggregates and credit, or `dropped`.

  chosen, rejected: (S, ...) scores of the S scored records; index: (S,) their record indices; credit: (S,)."""
  scored = {int(i): j for j, i in enumerate(index)}
  agg_c, agg_r = aggregated(chosen, cfg.aggregation, cfg.lam), aggregated(rejected, cfg.aggregation, cfg.lam)
  lines = []
  for i, line in enumerate(heads):
    j = scored.get(i)
    if j is None:
      line["dropped"] = True
    else:
      line.update(chosen=chosen[j].tolist(), rejected=rejected[j].tolist(), chosen_aggregate=float(agg_c[j]),
                  rejected_aggregate=float(agg_r[j]), correct=bool(credit[j]))
    lines.append(line)
  return lines


def evaluate_kway(rm: Any, paths: Sequence[str], tokenizer: Any, cfg: RewardEvalConfig
                  ) -> tuple[dict[str, float], dict, list[dict]]:
  """(metrics, report, scores.jsonl lines) of the k-way records in `paths`."""
  adapter = AdapterConfig(format="kway", columns=dict(cfg.kway_columns), strict=cfg.data.strict)
  records, skips = read_records(list(paths), adapter)
  summary = format_skip_report(skips, f"kway {list(paths)}")
  print(f"[data] {summary}", flush=True)
  if not records:
    raise ValueError(f"config.kway_paths: no usable k-way records in {list(paths)} ({summary})")
  pairs, best = kway_pairs(records)
  chosen, rejected, index, scoring = score_pairs(rm, pairs, tokenizer, cfg.data, name="k-way pairs")
  scores, dropped = kway_scores(records, best, chosen, rejected, index)
  # A record is dropped as too long when its pairs are (they share its prompt, so they drop together).
  report = {"kept": skips.kept, "skipped": skips.skipped, "line": summary, "records": len(records), **scoring,
            "pairs_dropped_too_long": scoring["dropped_too_long"], "dropped_too_long": dropped}
  kept = [i for i, s in enumerate(scores) if s is not None]
  metrics, credit = {}, np.zeros(0)
  if kept:
    metrics, credit = kway_metrics([scores[i] for i in kept], best[kept], [records[i].subset for i in kept],
                                   aggregation=cfg.aggregation, lam=cfg.lam, level=cfg.level,
                                   num_resamples=cfg.num_resamples, seed=cfg.seed)
  metrics["kway/dropped_too_long"] = float(dropped)
  credit_of = dict(zip(kept, credit))
  lines = []
  for i, r in enumerate(records):
    line = {"kind": "kway", "index": i, "source": r.source, "subset": r.subset, "correct_index": int(best[i])}
    if scores[i] is None:
      line["dropped"] = True
    else:
      aggregate = aggregated(scores[i][None], cfg.aggregation, cfg.lam)[0]
      line.update(scores=scores[i].tolist(), aggregate=aggregate.tolist(), credit=float(credit_of[i]))
    lines.append(line)
  return metrics, report, lines


def evaluate_benchmark(rm: Any, tokenizer: Any, cfg: RewardEvalConfig) -> tuple[dict[str, float], dict, list[dict]]:
  """(metrics, report, scores.jsonl lines) of the pairs of `cfg.benchmark_paths` (format `cfg.benchmark`): bad rows
  fail with file:line (`data.strict`) or are skipped and counted; pairs too long for `data.max_length` are counted
  (`<benchmark>/dropped_too_long`) and left out of every estimate."""
  name, paths = cfg.benchmark, list(cfg.benchmark_paths)
  adapter = AdapterConfig(format=name, columns=dict(cfg.benchmark_columns), strict=cfg.data.strict)
  records, files, kept, skipped = [], {}, 0, 0
  for path in paths:  # One report per file: M-RewardBench's files share one name, so "file:line" alone is ambiguous.
    mine, skips = read_records(path, adapter)
    records += mine
    kept, skipped = kept + skips.kept, skipped + skips.skipped
    files[path] = {"kept": skips.kept, "skipped": skips.skipped, "counts": dict(skips.counts),
                   "notes": dict(skips.notes), "line": format_skip_report(skips, f"{name} {path}")}
    print(f"[data] {files[path]['line']}", flush=True)
  summary = f"{name}: kept {kept}, skipped {skipped} in {len(paths)} files"
  if not records:
    raise ValueError(f"config.benchmark_paths: no usable {name} records in {paths} ({summary})")
  chosen, rejected, index, scored_report = score_pairs(rm, [r.pair for r in records], tokenizer, cfg.data, name=name)
  metrics, credit = {}, np.zeros(0)
  if index.size:
    metrics, credit = benchmark_metrics(
        chosen, rejected, [records[i].group for i in index], [records[i].pair.subset for i in index], name,
        aggregation=cfg.aggregation, lam=cfg.lam, level=cfg.level, num_resamples=cfg.num_resamples, seed=cfg.seed)
  metrics[f"{name}/dropped_too_long"] = float(scored_report["dropped_too_long"])
  report = {"kept": kept, "skipped": skipped, "line": summary, "files": files, **scored_report}
  heads = [{"kind": name, "index": i, "source": r.pair.source, "group": r.group, "subset": r.pair.subset, "id": r.id}
           for i, r in enumerate(records)]
  return metrics, report, score_lines(heads, chosen, rejected, index, credit, cfg)


def run(cfg: RewardEvalConfig, workdir: str, inputs: dict) -> dict:
  """Scores the pairs, k-way records and benchmark pairs; writes results.json and scores.jsonl; returns {"metrics",
  "results", "scores", "data_report"}."""
  data = cfg.data
  rm_dir = common.resolve_path(cfg.reward_model, inputs, "rm_dir") if cfg.scorer == "reward_model" else ""
  world = None
  if data.source == "world" and (cfg.split != "none" or not data.tokenizer):
    world = inputs_lib.make_world(data.world)
  saved = artifacts.saved_tokenizer(rm_dir)
  if data.source == "files" and not data.tokenizer and not saved:
    raise ConfigError(f"config.data.tokenizer: required: the reward model {rm_dir!r} holds no tokenizer.json (one "
                      "saved before reward stages kept their tokenizer, or trained on the synthetic world); give the "
                      "tokenizer it was trained with (a HF folder or .gguf)")
  tokenizer = inputs_lib.make_tokenizer(data, world, saved)
  if cfg.scorer == "follow_up_likelihood":
    options = reward_sources.follow_up_options(cfg.follow_up, "config.follow_up")
    model = reward_sources.follow_up_model(cfg.follow_up, inputs, data.tokenizer, tokenizer, "config.follow_up")
    rm = FollowUpScorer(model, follow_up_lib.encode_follow_ups(tokenizer, options["positive"], options["negative"]),
                        (tokenizer.eos_id,), options["chunk_size"])
  else:
    rm = load_reward_model(artifacts.check_reward_tokenizer(rm_dir, tokenizer, "reward_model"))
  metrics: dict[str, float] = {}
  report: dict[str, Any] = {}
  lines: list[dict] = []
  if cfg.split != "none":
    train, held_out, read_report = inputs_lib.preference_records(data, world)
    records = held_out if cfg.split == "held_out" else train + held_out
    if not records:
      raise ValueError(f"config.data: no {cfg.split} pairs to evaluate (hold pairs out with data.eval_paths / "
                       "eval_fraction / num_eval, or set split='all')")
    pair_m, pair_report, pair_lines = evaluate_pairs(rm, records, tokenizer, cfg)
    metrics.update(pair_m)
    report["pairs"] = {**read_report, **pair_report}
    lines += pair_lines
  if cfg.kway_paths:
    kway_m, report["kway"], kway_lines = evaluate_kway(rm, cfg.kway_paths, tokenizer, cfg)
    metrics.update(kway_m)
    lines += kway_lines
  if cfg.benchmark_paths:
    bench_m, report[cfg.benchmark], bench_lines = evaluate_benchmark(rm, tokenizer, cfg)
    metrics.update(bench_m)
    lines += bench_lines
  os.makedirs(workdir, exist_ok=True)
  scores_path = os.path.join(workdir, "scores.jsonl")
  with open(scores_path, "w") as f:
    f.writelines(json.dumps(line) + "\n" for line in lines)
  results = common.write_results(workdir, metrics, data_report=report)
  shown = [k for k in metrics if re.fullmatch(r"accuracy|best_of_\d+|(m|rag)_rewardbench/accuracy", k)]
  print("[reward_eval] " + ", ".join(f"{k}={metrics[k]:.4f} [{metrics[k + '_lower']:.4f}, "
                                     f"{metrics[k + '_upper']:.4f}]" for k in shown), flush=True)
  return {"metrics": metrics, "results": results, "scores": scores_path, "data_report": report}
