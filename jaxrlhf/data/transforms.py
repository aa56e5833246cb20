"""Record-level transforms: reward-augmented relabeling, preference-strength curation, contrastive contexts.

* Reward-augmented relabeling (Zhang et al. 2024, "Reward-Augmented Data Enhances Direct Preference
  Alignment of LLMs"): a scored pair (x, y_w, y_l, r_w, r_l) becomes two goal-conditioned pairs,
  (x | goal r_w: y_w > y_l) and (x | goal r_l: y_l > y_w): the response whose score equals the goal is the
  chosen one. The goal renders through a template (default "score: {score}", which the synthetic world's
  tokenizer can spell) into a system message, or, for chat templates without a system role, as a prefix of the
  first user turn. Scores print as integers when whole (7.0 -> "7"). At inference one conditions on the top
  score (`inference_prompt`). `goal_format_records` gives SFT data a share of goal prompts with random scores,
  so that a base policy knows the goal format (the paper starts from instruct models) without knowing what a
  score means.
* Preference-strength curation (Wang et al. 2024, "Secrets of RLHF in LLMs Part II: Reward Modeling"): given a
  strength per pair (e.g. the mean reward difference of an RM ensemble), flip the labels of the lowest-strength
  fraction (likely mislabeled) and drop the next-lowest fraction (ambiguous).
* Every assistant turn of an SFT conversation (`every_assistant_turn`): a conversation with k answerable assistant
  turns becomes k SFT examples, each turn the response to the messages before it (the same loss as masking every
  assistant turn of one sequence, at the cost of re-reading the shared prefixes).
* Contrastive contexts for T-REG (Zhou et al. 2025): better / worse prompt variants (a control prefix such as the
  synthetic world's `<better>` / `<worse>` tokens) under which a policy's log-prob differences give token rewards.
"""

import dataclasses
import math
from typing import Sequence

import numpy as np

from jaxrlhf.data import records as records_lib

DEFAULT_GOAL_TEMPLATE = "score: {score}"
_SEPARATOR = "\n\n"


def format_score(score: float) -> str:
  """A score as short text: integer when whole (7.0 -> "7"), else positional decimal (7.5 -> "7.5")."""
  if not isinstance(score, (int, float, np.integer, np.floating)) or not math.isfinite(score):
    raise ValueError(f"score must be a finite number, got {score!r}")
  if float(score).is_integer():
    return str(int(score))
  return np.format_float_positional(float(score), trim="-")


def render_goal(score: float, template: str = DEFAULT_GOAL_TEMPLATE) -> str:
  """The goal text for `score`: `template` with "{score}" replaced by format_score(score)."""
  if "{score}" not in template:
    raise ValueError(f"template must contain '{{score}}', got {template!r}")
  return template.replace("{score}", format_score(score))


def _prefix_user_turn(messages: list[dict], text: str) -> list[dict]:
  for i, m in enumerate(messages):
    if m["role"] == "user":
      return messages[:i] + [{**m, "content": text + _SEPARATOR + m["content"]}] + messages[i + 1:]
  raise ValueError("prompt has no user message to prefix the goal to")


def goal_conditioned_prompt(prompt: records_lib.Prompt, score: float, template: str = DEFAULT_GOAL_TEMPLATE,
                            supports_system_role: bool = True) -> list[dict]:
  """The prompt as chat messages conditioned on the goal `score`.

  With a system role: the goal becomes the system message (prefixed to an existing one). Without one
  (e.g. Gemma's template): the goal is prefixed to the first user turn, and an existing system message is
  merged into that prefix as well, since such templates cannot render it.
  """
  goal = render_goal(score, template)
  messages = records_lib.as_messages(prompt)
  records_lib.validate_messages(messages, "prompt")
  system = [m for m in messages if m["role"] == "system"]
  rest = [m for m in messages if m["role"] != "system"]
  if system:
    goal = goal + _SEPARATOR + _SEPARATOR.join(m["content"] for m in system)
  if supports_system_role:
    return [{"role": "system", "content": goal}] + rest
  return _prefix_user_turn(rest, goal)


def inference_prompt(prompt: records_lib.Prompt, top_score: float = 10.0, template: str = DEFAULT_GOAL_TEMPLATE,
                     supports_system_role: bool = True) -> list[dict]:
  """The prompt conditioned on the top score: what a reward-augmented policy is sampled with."""
  return goal_conditioned_prompt(prompt, top_score, template, supports_system_role)


TIE_MODES = ("keep", "drop")


def _check_scored(records: Sequence[records_lib.PreferenceRecord], what: str) -> None:
  for i, r in enumerate(records):
    if r.chosen_score is None or r.rejected_score is None:
      raise ValueError(f"records[{i}] ({r.source or 'no source'}): {what} needs chosen_score and rejected_score")


def _record_error(i: int, record, e: ValueError) -> ValueError:
  """`e` (e.g. "prompt has no user message ...") prefixed with the record's index and source."""
  return ValueError(f"records[{i}] ({getattr(record, 'source', None) or 'no source'}): {e}")


def _check_ties(ties: str) -> None:
  if ties not in TIE_MODES:
    raise ValueError(f"ties={ties!r}; valid values: {list(TIE_MODES)}")


def _swapped(record: records_lib.PreferenceRecord) -> records_lib.PreferenceRecord:
  """`record.swapped()` with its margin negated: `margin` is the strength of chosen over rejected (a file's margin
  column under data.margin_from="file"), so it changes sign with the order, like the scores do."""
  return dataclasses.replace(record.swapped(), margin=None if record.margin is None else -record.margin)


def count_score_ties(records: Sequence[records_lib.PreferenceRecord]) -> int:
  """The number of pairs whose chosen and rejected judge scores are equal."""
  return sum(r.chosen_score == r.rejected_score for r in records)


def reward_augmented_pairs(records: Sequence[records_lib.PreferenceRecord],
                           template: str = DEFAULT_GOAL_TEMPLATE,
                           supports_system_role: bool = True, ties: str = "keep"
                           ) -> list[records_lib.PreferenceRecord]:
  """Doubles scored pairs by goal conditioning (Zhang et al. 2024).

  Record i gives, in order:
    goal = chosen_score:   prompt | goal, chosen > rejected (unchanged order);
    goal = rejected_score: prompt | goal, rejected > chosen (swapped: scores and attributes swap too, a margin
      changes sign).
  Equal scores give the same goal twice with opposite orders. Those two rows do NOT cancel: under DPO their summed
  loss -log sigmoid(beta h) - log sigmoid(-beta h), with h the policy's log-ratio margin of the pair minus the
  reference's, is smallest at h = 0, so its gradient pulls the pair's margin back to the reference's (a
  regularizer toward the reference on such pairs, not a no-op). `ties`: "keep" (the paper's relabeling, both
  rows) or "drop" (no row for a tied pair; count them with `count_score_ties`).

  Raises:
    ValueError: a record without chosen_score or rejected_score, or whose prompt cannot take the goal (no user turn
      without a system role), naming its index and source; a bad `ties` or `template`.
  """
  _check_ties(ties)
  _check_scored(records, "reward-augmented relabeling")
  render_goal(0, template)  # A bad template fails here, not as record 0's error.
  out = []
  for i, r in enumerate(records):
    if ties == "drop" and r.chosen_score == r.rejected_score:
      continue
    for goal, rec, tag in ((r.chosen_score, r, "goal=chosen"), (r.rejected_score, _swapped(r), "goal=rejected")):
      try:
        prompt = goal_conditioned_prompt(r.prompt, goal, template, supports_system_role)
      except ValueError as e:
        raise _record_error(i, r, e) from e
      out.append(dataclasses.replace(rec, prompt=prompt, source=f"{r.source or f'record{i}'}#{tag}"))
  return out


def score_ordered_pairs(records: Sequence[records_lib.PreferenceRecord], ties: str = "keep"
                        ) -> list[records_lib.PreferenceRecord]:
  """Pairs re-ordered by their judge scores: chosen is the response with the higher score (a pair whose rejected
  response scored higher is swapped, its margin negated). DPO on these pairs sees the same score information as
  reward-augmented DPO, so the two differ only in the method. Tied pairs keep their label ("keep") or are removed
  ("drop").

  Raises:
    ValueError: a record without chosen_score or rejected_score (naming its index and source), a bad `ties`.
  """
  _check_ties(ties)
  _check_scored(records, "score ordering")
  out = []
  for r in records:
    if r.chosen_score == r.rejected_score:
      if ties == "keep":
        out.append(r)
    else:
      out.append(_swapped(r) if r.rejected_score > r.chosen_score else r)
  return out


@dataclasses.dataclass(frozen=True)
class CurationCounts:
  """What preference-strength curation did: input size, flipped, dropped, output size."""

  total_in: int
  flipped: int
  dropped: int
  total_out: int


def curate_by_strength(records: Sequence[records_lib.PreferenceRecord], strengths: Sequence[float],
                       flip_fraction: float = 0.0, drop_fraction: float = 0.0,
                       ) -> tuple[list[records_lib.PreferenceRecord], CurationCounts]:
  """Flips the lowest-strength `flip_fraction` of pairs and drops the next `drop_fraction`.

  Counts are floor(fraction * N); pairs are ranked by strength ascending with ties broken by position
  (a stable sort). Flipped pairs swap chosen/rejected (and scores/attributes) and negate their margin.
  The output keeps input order.

  Args:
    records: N preference records.
    strengths: N finite preference strengths (higher = more confidently chosen > rejected).
    flip_fraction, drop_fraction: in [0, 1] with sum <= 1.
  """
  strengths = np.asarray(strengths, np.float64)
  if strengths.shape != (len(records),):
    raise ValueError(f"strengths must have shape ({len(records)},), got {strengths.shape}")
  if not np.isfinite(strengths).all():
    raise ValueError("strengths must be finite")
  for name, f in (("flip_fraction", flip_fraction), ("drop_fraction", drop_fraction)):
    if not 0.0 <= f <= 1.0:
      raise ValueError(f"{name} must be in [0, 1], got {f}")
  if flip_fraction + drop_fraction > 1.0 + 1e-12:
    raise ValueError(f"flip_fraction + drop_fraction must be <= 1, got {flip_fraction + drop_fraction}")
  n = len(records)
  n_flip = int(math.floor(flip_fraction * n + 1e-9))
  n_drop = min(n - n_flip, int(math.floor(drop_fraction * n + 1e-9)))
  order = np.argsort(strengths, kind="stable")
  flip, drop = set(order[:n_flip].tolist()), set(order[n_flip:n_flip + n_drop].tolist())
  out = []
  for i, r in enumerate(records):
    if i in drop:
      continue
    if i in flip:
      r = _swapped(r)
    out.append(r)
  return out, CurationCounts(total_in=n, flipped=n_flip, dropped=n_drop, total_out=len(out))


def contrastive_prompt(prompt: records_lib.Prompt, prefix: str) -> records_lib.Prompt:
  """The prompt with a control prefix: `prefix + " " + text`, or prefixed to the first user turn."""
  if not isinstance(prefix, str) or not prefix.strip():
    raise ValueError(f"prefix must be a non-empty string, got {prefix!r}")
  if isinstance(prompt, str):
    return f"{prefix} {prompt}"
  records_lib.validate_messages(prompt, "prompt")
  for i, m in enumerate(prompt):
    if m["role"] == "user":
      return list(prompt[:i]) + [{**m, "content": f"{prefix} {m['content']}"}] + list(prompt[i + 1:])
  raise ValueError("prompt has no user message to prefix")


def contrastive_variants(records: Sequence[records_lib.PreferenceRecord], better_prefix: str = "<better>",
                         worse_prefix: str = "<worse>",
                         ) -> list[tuple[records_lib.PreferenceRecord, records_lib.PreferenceRecord]]:
  """For T-REG: each record as a (better-context, worse-context) pair of records with the same responses.

  The token rewards are then log pi(y_t | better x, y_<t) - log pi(y_t | worse x, y_<t).
  """
  for prefix in (better_prefix, worse_prefix):  # A bad prefix fails here, not as record 0's error.
    contrastive_prompt("x", prefix)
  out = []
  for i, r in enumerate(records):
    try:
      out.append((dataclasses.replace(r, prompt=contrastive_prompt(r.prompt, better_prefix)),
                  dataclasses.replace(r, prompt=contrastive_prompt(r.prompt, worse_prefix))))
    except ValueError as e:
      raise _record_error(i, r, e) from e
  return out


def goal_format_records(records: Sequence, fraction: float, seed: int,
                        scores: Sequence[float] = tuple(range(1, 11)), template: str = DEFAULT_GOAL_TEMPLATE,
                        supports_system_role: bool = True) -> list:
  """SFT records with a `fraction` of prompts goal-conditioned on a score drawn uniformly from `scores`,
  independently of the response.

  The policy learns the goal prompt's format (rendered exactly as `reward_augmented_pairs` renders it) but not
  what a score means: the analog of an instruct model that reads system prompts before reward-augmented DPO.
  Selection and goals are a pure function of `seed`; records keep their order and other fields.

  Args:
    records: records with a `prompt` (e.g. the synthetic world's SFTRecord or PreferenceRecord).
    fraction: in [0, 1], the share of records given a goal (each record independently).
    seed: the random stream.
    scores: the goals to draw from (non-empty, finite).
  """
  if not 0.0 <= fraction <= 1.0:
    raise ValueError(f"fraction must be in [0, 1], got {fraction}")
  if not scores:
    raise ValueError("scores must be a non-empty sequence of goal scores")
  rng = np.random.default_rng(np.random.SeedSequence([int(seed), 7411]))
  chosen_N = rng.random(len(records)) < fraction
  goals_N = rng.choice(np.asarray(scores, np.float64), size=len(records))
  out = []
  render_goal(0, template)  # A bad template fails here, not as a record's error.
  for i, (r, with_goal, goal) in enumerate(zip(records, chosen_N, goals_N)):
    if with_goal:
      try:
        r = dataclasses.replace(r, prompt=goal_conditioned_prompt(r.prompt, float(goal), template,
                                                                   supports_system_role))
      except ValueError as e:
        raise _record_error(i, r, e) from e
    out.append(r)
  return out


def every_assistant_turn(records: Sequence[records_lib.SFTRecord]) -> tuple[list[records_lib.SFTRecord], dict]:
  """One SFT example per answerable assistant turn of each record's conversation (prompt messages + response).

  An assistant turn is answerable when the message before it is a user or tool turn (a prompt must end with the turn
  the model answers); the earlier answerable turns of a record come first, then the record itself. Text prompts and
  prompts without assistant turns pass through unchanged.

  Returns:
    (examples, counts) with counts {"conversations": len(records), "examples": len(examples), "unanswerable_turns":
    earlier assistant turns that follow a system or assistant message, kept as context only}.
  """
  out, unanswerable = [], 0
  for record in records:
    if not isinstance(record.prompt, str):
      for j, message in enumerate(record.prompt):
        if message["role"] != "assistant":
          continue
        if j == 0 or record.prompt[j - 1]["role"] not in records_lib.PROMPT_LAST_ROLES:
          unanswerable += 1
          continue
        source = f"{record.source}#turn{j}" if record.source else None
        out.append(records_lib.SFTRecord(list(record.prompt[:j]), [dict(message)], source, tools=record.tools,
                                         chat_template_kwargs=record.chat_template_kwargs))
    out.append(record)
  return out, {"conversations": len(records), "examples": len(out), "unanswerable_turns": unanswerable}
