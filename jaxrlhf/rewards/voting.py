"""Label-free rewards from majority votes over a batch of rollouts: plain self-consistency (TTRL-style majority
voting) and Co-Reward's cross-referenced agreement between a question and its rephrasing.

Co-Reward: Zhang, Z. et al. 2025, "Co-Reward: Self-supervised Reinforcement Learning for Large Language Model
Reasoning via Contrastive Agreement", arXiv:2508.00410 (later versions retitled "Co-rewarding: Stable
Self-supervised RL for Eliciting Reasoning in Large Language Models"); official code github.com/resistzzz/Co-Reward,
`coreward/verl/workers/reward_manager/co_reward.py`. Each training question x has an analogical rephrasing x'
(same answer, different surface). G rollouts are sampled for each; the majority answer of x's rollouts is the
surrogate label of x' and vice versa:

    r(y_i | x)  = 1[ans(y_i)  == maj({ans(y'_j)}_j)]      r(y'_j | x') = 1[ans(y'_j) == maj({ans(y_i)}_i)]

and GRPO advantages are computed within each question's own group (x's G rollouts, x''s G rollouts). Plain
majority voting (the self-consistency baseline; Zuo et al. 2025, "TTRL: Test-Time Reinforcement Learning",
arXiv:2504.16084) rewards y_i against maj of its OWN group: r(y_i | x) = 1[ans(y_i) == maj({ans(y_k)}_k)].

Facts taken from the official Co-Reward code (checked):
  * the vote ignores rollouts with no answer (None or blank), and a group with no answer at all gives the empty
    label, which no answer matches (reward 0 for every rollout of the partner question);
  * ties are broken by `collections.Counter.most_common(1)`, i.e. the tied answer that appears FIRST in rollout order
    wins (we do the same and test it);
  * answers are the content of the last \\boxed{} compared as raw strings, the reward 1.0 / 0.0.
Our differences, by design: the answer is extracted by `answers.extract_answer` (`extract`, default "auto": boxed,
else an answer marker, else the last number) and with `normalize` (default) compared by value: numbers as exact
rationals ("1,000" == "1000.0", the exact_match rules), other text case- and space-normalized; `normalize=False`
compares the stripped raw spans as the official code does. Not checked: TTRL's own tie rule (its paper does not
say; we use the same first-occurrence rule for both rewards).

Batch layout: these functions see the whole batch (TRL's reward_funcs convention; the rl stage calls a text reward
once on all R rows of a rollout). Rows are grouped by their prompt (`group_column` = "" : the prompt itself; any
column works), so a group is the G rollouts of one question. Co-Reward finds a question's rephrasing through
`pair_column`: the rows whose pair id is equal and whose prompt differs. The rl stage keeps both in one batch with
`RLConfig.prompt_groups` = that column. A row whose rephrasing is not in the batch is not scorable (None).
"""

from __future__ import annotations

import collections
from typing import Any, Hashable, Sequence

from jaxrlhf.rewards.answers import EXTRACT_MODES, NUMBER, clean_latex, extract_answer, normalize_text, parse_number
from jaxrlhf.rewards.calling import completion_text


def answer_key(completion: str, extract: str = "auto", normalize: bool = True) -> Hashable | None:
  """The vote of one completion: None when it has no answer (nothing extracted, or a blank span).

  normalize=True: ("number", Fraction) when the span is a number or, else, holds one (its first, as exact_match
  reads "5 apples"), otherwise ("text", normalize_text(span)); normalize=False: the stripped span (official code).
  """
  span = extract_answer(completion, extract)
  if span is None or not span.strip():
    return None
  if not normalize:
    return span.strip()
  value = parse_number(span)
  if value is None:
    for candidate in NUMBER.findall(clean_latex(span)):
      value = parse_number(candidate)
      if value is not None:
        break
  if value is not None:
    return ("number", value)
  text = normalize_text(span)
  return ("text", text) if text else None


def majority_vote(keys: Sequence[Hashable | None]) -> Hashable | None:
  """The most common non-None answer; a tie goes to the answer that appears first (Counter.most_common, as the
  official Co-Reward code); None when no key is given."""
  votes = [k for k in keys if k is not None]
  if not votes:
    return None
  return collections.Counter(votes).most_common(1)[0][0]


def _group_of(prompts: Sequence[Any], columns: dict[str, Sequence[Any]], group_column: str, name: str) -> list:
  if not group_column:
    return [p if isinstance(p, str) else repr(p) for p in prompts]  # Chat prompts (lists of messages) by their repr.
  if group_column not in columns:
    raise ValueError(f"{name}: group column {group_column!r} not among the columns {sorted(columns)}")
  return [repr(v) for v in columns[group_column]]


def _check(extract: str, name: str) -> None:
  if extract not in EXTRACT_MODES:
    raise ValueError(f"{name}.extract: expected one of {EXTRACT_MODES}, got {extract!r}")


def self_consistency_rewards(keys: Sequence[Hashable | None], groups: Sequence[Hashable]) -> list[float]:
  """(R,) 1.0 where a row's answer equals its own group's majority answer (`majority_vote`), else 0.0 (also for a
  row with no answer, and for every row of a group without answers)."""
  labels = {g: majority_vote([k for k, h in zip(keys, groups) if h == g]) for g in dict.fromkeys(groups)}
  return [float(k is not None and k == labels[g]) for k, g in zip(keys, groups)]


def co_reward_rewards(keys: Sequence[Hashable | None], groups: Sequence[Hashable], pairs: Sequence[Hashable]
                      ) -> list[float | None]:
  """(R,) Co-Reward: 1.0 where a row's answer equals the majority answer of its PARTNER group (same pair id, other
  group), else 0.0; None where the partner group is not in the batch.

  Raises:
    ValueError: a pair id shared by more than two groups (prompts).
  """
  groups = list(zip(pairs, groups))  # A group is a prompt within its pair (the same text in two pairs: two groups).
  members: dict[Hashable, list[Hashable]] = collections.defaultdict(list)  # pair id -> its groups, in order
  for g, p in zip(groups, pairs):
    if g not in members[p]:
      members[p].append(g)
  for p, gs in members.items():
    if len(gs) > 2:
      raise ValueError(f"co_reward: pair id {p!r} is shared by {len(gs)} different prompts in one batch; expected a "
                       "question and its one rephrasing")
  labels = {g: majority_vote([k for k, h in zip(keys, groups) if h == g]) for g in dict.fromkeys(groups)}
  out: list[float | None] = []
  for k, g, p in zip(keys, groups, pairs):
    partner = [h for h in members[p] if h != g]
    if not partner:
      out.append(None)
    else:
      label = labels[partner[0]]
      out.append(float(k is not None and label is not None and k == label))
  return out


def self_consistency(extract: str = "auto", normalize: bool = True, group_column: str = ""):
  """Reward function: plain majority voting on each question's own rollouts (TTRL-style self-consistency).

  Args:
    extract: the answer extraction mode of `answers.extract_answer`.
    normalize: compare answers by value (numbers as rationals) or as raw spans (module docstring).
    group_column: "" groups rows by their prompt; else by this column's value.
  """
  _check(extract, "self_consistency")

  def reward(prompts: Sequence[Any], completions: Sequence[Any], **columns) -> list[float]:
    groups = _group_of(prompts, columns, group_column, "self_consistency")
    keys = [answer_key(completion_text(c), extract, normalize) for c in completions]
    return self_consistency_rewards(keys, groups)

  reward.__name__ = reward.__qualname__ = "self_consistency"
  return reward


def co_reward(pair_column: str = "pair_id", extract: str = "auto", normalize: bool = True):
  """Reward function: Co-Reward's cross-referenced agreement (module docstring).

  Args:
    pair_column: the column that a question and its rephrasing share (one id per pair).
    extract: the answer extraction mode of `answers.extract_answer`.
    normalize: compare answers by value (numbers as rationals) or as raw spans.
  """
  _check(extract, "co_reward")
  if not isinstance(pair_column, str) or not pair_column:
    raise ValueError(f"co_reward.pair_column: expected a column name, got {pair_column!r}")

  def reward(prompts: Sequence[Any], completions: Sequence[Any], **columns) -> list[float | None]:
    if pair_column not in columns:
      raise ValueError(f"co_reward: pair column {pair_column!r} not among the columns {sorted(columns)}")
    groups = _group_of(prompts, columns, "", "co_reward")
    keys = [answer_key(completion_text(c), extract, normalize) for c in completions]
    return co_reward_rewards(keys, groups, [repr(v) for v in columns[pair_column]])

  reward.__name__ = reward.__qualname__ = "co_reward"
  return reward


def vote_unanimity(extract: str = "auto", normalize: bool = True, group_column: str = ""):
  """Monitor (use with weight 0): 1.0 for every row of a group whose rollouts ALL give the same answer (none
  missing), else 0.0; its batch mean is the fraction of unanimous groups (groups have equal size), the collapse
  signal of majority-vote training."""
  _check(extract, "vote_unanimity")

  def reward(prompts: Sequence[Any], completions: Sequence[Any], **columns) -> list[float]:
    groups = _group_of(prompts, columns, group_column, "vote_unanimity")
    keys = [answer_key(completion_text(c), extract, normalize) for c in completions]
    by_group = collections.defaultdict(list)
    for k, g in zip(keys, groups):
      by_group[g].append(k)
    unanimous = {g: None not in ks and len(set(ks)) == 1 for g, ks in by_group.items()}
    return [float(unanimous[g]) for g in groups]

  reward.__name__ = reward.__qualname__ = "vote_unanimity"
  return reward
