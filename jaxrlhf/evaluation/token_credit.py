"""Token-level credit: how well a policy's token rewards track the synthetic world's gold per-token credit
(the T-REG question, Zhou et al. 2024, arXiv:2412.02685), and the "token_credit" stage that measures it.

Responses: both sides of `num_pairs` preference pairs of the world's TEST split (reference-distribution responses,
the same for every policy, never trained on). For every response token y_t (the end-of-turn token excluded: the
gold reward does not score it) the stage computes

  implicit             beta * (log pi(y_t | x, y_<t) - log pi_ref(y_t | x, y_<t))   DPO's implicit token reward
  contrastive          log pi(y_t | <better> x, y_<t) - log pi(y_t | <worse> x, y_<t)   T-REG's self-generated
  contrastive_sigmoid  sigmoid(contrastive) - 0.5                                      token reward, raw / squashed
  gold                 c_t = World.gold_token_contributions (sums over t to r* minus the length term)

and for each reward kind k (implicit needs `reference`, the contrastive kinds need `contrastive=True`):
  k/pearson_seq, k/spearman_seq        mean over responses of the within-response correlation with c_t
                                       (responses with >= min_tokens tokens and non-constant values on both sides)
  k/pearson_pooled, k/spearman_pooled  the correlation over all tokens of all responses
  k/sign_agreement                     fraction of tokens with sign(k_t) == sign(c_t) (0 counts as its own sign)
  k/pair_accuracy                      fraction of pairs whose summed reward (end-of-turn token included, i.e.
                                       DPO's sequence reward for k = implicit) orders the two responses like r*
                                       (ties count as wrong; pairs with equal r* are left out)
plus num_responses, num_sequences (responses with a defined correlation) and num_tokens.

The per-token log-probs are one pure jitted function (`token_logps`, `jit_token_logps`); the correlations are
numpy (`rankdata`, `pearson`, `spearman`, `credit_metrics`).
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
from typing import Any, Callable, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jaxrlhf.config import ConfigError, field
from jaxrlhf.losses import logps as logps_lib

REWARD_KINDS = ("implicit", "contrastive", "contrastive_sigmoid")
STATS = ("pearson_seq", "spearman_seq", "pearson_pooled", "spearman_pooled", "sign_agreement", "pair_accuracy")


# ------------------------------------------------------------------------------------------------ log-probs (JAX)
def token_logps(model: Callable[..., jax.Array], input_ids_BxT: jax.Array, attention_mask_BxT: jax.Array,
                loss_mask_BxT: jax.Array, prefix_ids: Sequence[int] = ()) -> tuple[jax.Array, jax.Array]:
  """Per-token log-probs aligned with the tokens themselves.

  Args:
    model: `model(input_ids_BxT, attention_mask_BxT) -> logits_BxTxV` (a CausalLM, or any such callable).
    input_ids_BxT: int (B, T) prompt + response ids, right padded.
    attention_mask_BxT: (B, T) 1 on real tokens.
    loss_mask_BxT: (B, T) 1 on the tokens to score (the response), the data contract's `loss_mask`.
    prefix_ids: tokens (a sequence of ints or an int array (N,), which may be traced) put in front of every
      row before the forward (a contrastive control context such as `<better>`); the outputs stay aligned
      with the original positions.

  Returns:
    (logps_BxT, mask_BxT) float32: logps[b, t] = log p(ids[b, t] | prefix, ids[b, :t]) where mask[b, t] = 1
    (loss_mask * attention_mask, position 0 excluded: nothing predicts it), 0 elsewhere.
  """
  if input_ids_BxT.ndim != 2:
    raise ValueError(f"input_ids_BxT: expected shape (B, T), got {input_ids_BxT.shape}")
  for name, x in (("attention_mask_BxT", attention_mask_BxT), ("loss_mask_BxT", loss_mask_BxT)):
    if x.shape != input_ids_BxT.shape:
      raise ValueError(f"{name}: expected shape {input_ids_BxT.shape} like input_ids_BxT, got {x.shape}")
  ids, att = input_ids_BxT, attention_mask_BxT
  target = (loss_mask_BxT > 0) & (attention_mask_BxT > 0)
  n = len(prefix_ids)
  if n:
    prefix = jnp.broadcast_to(jnp.asarray(prefix_ids, ids.dtype), (ids.shape[0], n))
    ids = jnp.concatenate([prefix, ids], axis=1)
    att = jnp.concatenate([jnp.ones_like(prefix, att.dtype), att], axis=1)
    target = jnp.concatenate([jnp.zeros(prefix.shape, bool), target], axis=1)
  targets_BxT, shifted_BxT = logps_lib.shift_for_next_token(ids, target.astype(jnp.int32))
  predicted_BxT, _ = logps_lib.sequence_logps(model(ids, att), targets_BxT, shifted_BxT)
  # predicted[:, t] scores token t + 1; move it onto token t (token 0 has no prediction).
  logps_BxT = jnp.concatenate([jnp.zeros_like(predicted_BxT[:, :1]), predicted_BxT[:, :-1]], axis=1)
  mask_BxT = target.at[:, 0].set(False).astype(jnp.float32)
  return (logps_BxT * mask_BxT)[:, n:], mask_BxT[:, n:]


@functools.partial(jax.jit, static_argnums=(0,))
def _merged_token_logps(graphdef, state, ids, att, lm, prefix_N):
  return token_logps(nnx.merge(graphdef, state), ids, att, lm, prefix_N)


def jit_token_logps(model: nnx.Module, prefix_ids: Sequence[int] = ()
                    ) -> Callable[[Any, Any, Any], tuple[jax.Array, jax.Array]]:
  """`token_logps` of an NNX model as a jitted function of (input_ids, attention_mask, loss_mask).

  One compiled program per (architecture, shapes, prefix length): models of one architecture (a policy and its
  reference) and prefixes of one length (`<better>`, `<worse>`) share it; the prefix ids are traced.
  """
  graphdef, state = nnx.split(model)
  prefix_N = jnp.asarray(tuple(int(i) for i in prefix_ids), jnp.int32)
  return lambda ids, att, lm: _merged_token_logps(graphdef, state, jnp.asarray(ids), jnp.asarray(att),
                                                  jnp.asarray(lm), prefix_N)


# ------------------------------------------------------------------------------------------------ correlations
def rankdata(x) -> np.ndarray:
  """float64 1-based ranks of a 1-D array, ties get the average of their ranks (scipy's "average" method)."""
  x = np.asarray(x, np.float64).reshape(-1)
  order = np.argsort(x, kind="mergesort")
  xs = x[order]
  first = np.concatenate([[True], xs[1:] != xs[:-1]]) if x.size else np.zeros(0, bool)
  starts = np.flatnonzero(first)
  ends = np.concatenate([starts[1:], [x.size]])
  average = (starts + ends - 1) / 2.0 + 1.0
  ranks = np.empty(x.size, np.float64)
  ranks[order] = average[np.cumsum(first) - 1]
  return ranks


def pearson(x, y) -> float:
  """Pearson correlation of two 1-D arrays; NaN when fewer than 2 values or either side is constant."""
  x = np.asarray(x, np.float64).reshape(-1)
  y = np.asarray(y, np.float64).reshape(-1)
  if x.shape != y.shape:
    raise ValueError(f"pearson: x has {x.size} values, y has {y.size}")
  if x.size < 2 or np.ptp(x) == 0 or np.ptp(y) == 0:
    return float("nan")
  dx, dy = x - x.mean(), y - y.mean()
  return float(np.clip(np.sum(dx * dy) / np.sqrt(np.sum(dx * dx) * np.sum(dy * dy)), -1.0, 1.0))


def spearman(x, y) -> float:
  """Spearman rank correlation (Pearson of average ranks); NaN like `pearson`."""
  return pearson(rankdata(x), rankdata(y))


def credit_metrics(pred_BxR, gold_BxR, mask_BxR, min_tokens: int = 3) -> dict[str, float]:
  """Correlation of predicted token rewards with gold token credit.

  Args:
    pred_BxR: predicted token rewards (B, R).
    gold_BxR: gold per-token credit (B, R).
    mask_BxR: 1 on the tokens to compare.
    min_tokens: responses with fewer masked tokens get no within-response correlation.

  Returns:
    {pearson_seq, spearman_seq, pearson_pooled, spearman_pooled, sign_agreement, num_sequences, num_tokens}:
    *_seq average over responses whose correlation is defined (num_sequences of them; NaN if none).
  """
  pred, gold = np.asarray(pred_BxR, np.float64), np.asarray(gold_BxR, np.float64)
  mask = np.asarray(mask_BxR) > 0
  if not pred.shape == gold.shape == mask.shape or pred.ndim != 2:
    raise ValueError(f"credit_metrics: pred_BxR {pred.shape}, gold_BxR {gold.shape} and mask_BxR {mask.shape} "
                     "must be equal 2-D shapes")
  seq_p, seq_s = [], []
  for p_row, g_row, m_row in zip(pred, gold, mask):
    if m_row.sum() < min_tokens:
      continue
    p, s = pearson(p_row[m_row], g_row[m_row]), spearman(p_row[m_row], g_row[m_row])
    if np.isfinite(p):
      seq_p.append(p)
      seq_s.append(s)
  flat_p, flat_g = pred[mask], gold[mask]
  nan = float("nan")
  return {
      "pearson_seq": float(np.mean(seq_p)) if seq_p else nan,
      "spearman_seq": float(np.mean(seq_s)) if seq_s else nan,
      "pearson_pooled": pearson(flat_p, flat_g),
      "spearman_pooled": spearman(flat_p, flat_g),
      "sign_agreement": float(np.mean(np.sign(flat_p) == np.sign(flat_g))) if flat_p.size else nan,
      "num_sequences": float(len(seq_p)),
      "num_tokens": float(flat_p.size),
  }


def pair_accuracy(reward_chosen_N, reward_rejected_N, gold_chosen_N, gold_rejected_N) -> float:
  """Fraction of pairs the rewards order like gold (ties in reward count as wrong; gold ties are left out)."""
  rc, rr, gc, gr = (np.asarray(a, np.float64).reshape(-1) for a in (reward_chosen_N, reward_rejected_N,
                                                                    gold_chosen_N, gold_rejected_N))
  if not rc.size == rr.size == gc.size == gr.size:
    raise ValueError(f"pair_accuracy: {rc.size}, {rr.size}, {gc.size}, {gr.size} values; expected equal sizes")
  decided = gc != gr
  if not decided.any():
    return float("nan")
  correct = np.sign(rc - rr) == np.sign(gc - gr)
  return float(np.mean(correct[decided]))


def left_align(values_BxT, mask_BxT) -> tuple[np.ndarray, np.ndarray]:
  """Moves each row's masked entries to the front in order: (values_BxR, mask_BxR), R = the most per row
  (at least 1); unmasked slots hold 0."""
  values, mask = np.asarray(values_BxT), np.asarray(mask_BxT) > 0
  if values.shape != mask.shape:
    raise ValueError(f"left_align: values {values.shape} and mask {mask.shape} must have the same shape")
  order = np.argsort(~mask, axis=1, kind="stable")
  width = max(int(mask.sum(axis=1).max(initial=0)), 1)
  out_mask = np.take_along_axis(mask, order, axis=1)[:, :width]
  out = np.where(out_mask, np.take_along_axis(values, order, axis=1)[:, :width], 0)
  return out.astype(values.dtype), out_mask.astype(np.int32)


# ------------------------------------------------------------------------------------------------ held-out responses
class ResponseSet(NamedTuple):
  """2N rows (chosen of pairs 0..N-1, then their rejected): prompt + response + end-of-turn, right padded."""
  input_ids: np.ndarray  # int32 (2N, T)
  attention_mask: np.ndarray  # int32 (2N, T)
  loss_mask: np.ndarray  # int32 (2N, T), 1 on response tokens (end-of-turn included)
  num_pairs: int


def response_set(world: Any, num_pairs: int, max_length: int, split: str = "test") -> ResponseSet:
  """Both responses of `num_pairs` world pairs of `split`, tokenized like the preference pipeline (prompt text,
  response + eos, the same truncation), padded to `max_length`; pairs that do not fit are dropped."""
  from jaxrlhf.data import tokenize as tokenize_lib  # pylint: disable=g-import-not-at-top
  tok = world.tokenizer
  trunc = tokenize_lib.TruncationConfig(max_length=max_length)
  chosen, rejected = [], []
  for record in world.preference_records(num_pairs, split):
    out = tokenize_lib.truncate(tokenize_lib.encode_prompt(tok, record.prompt),
                                [tokenize_lib.encode_response(tok, record.chosen),
                                 tokenize_lib.encode_response(tok, record.rejected)], trunc)
    if out is None:
      continue
    prompt, (c, r), _ = out
    chosen.append((prompt, c))
    rejected.append((prompt, r))
  if not chosen:
    raise ValueError(f"max_length: {max_length} leaves no room for any response of the {num_pairs} pairs")
  rows = chosen + rejected
  ids = np.full((len(rows), max_length), tok.pad_id, np.int32)
  att = np.zeros_like(ids)
  lm = np.zeros_like(ids)
  for i, (prompt, response) in enumerate(rows):
    p, n = len(prompt), len(prompt) + len(response)
    ids[i, :n] = list(prompt) + list(response)
    att[i, :n] = 1
    lm[i, p:n] = 1
  return ResponseSet(ids, att, lm, len(chosen))


def batched(fn: Callable[..., tuple[jax.Array, jax.Array]], rows: ResponseSet, batch_size: int) -> np.ndarray:
  """fn(ids, att, lm)[0] over `rows` in fixed-size batches (one compiled shape; the last one filled with
  copies of row 0, dropped after): float64 (2N, T)."""
  n = rows.input_ids.shape[0]
  out = []
  for start in range(0, n, batch_size):
    idx = np.arange(start, start + batch_size)
    idx = np.where(idx < n, idx, 0)
    logps, _ = fn(rows.input_ids[idx], rows.attention_mask[idx], rows.loss_mask[idx])
    out.append(np.asarray(jax.device_get(logps), np.float64)[:min(batch_size, n - start)])
  return np.concatenate(out)


def token_rewards(policy: Any, reference: Any | None, rows: ResponseSet, *, beta: float,
                  better_ids: Sequence[int] = (), worse_ids: Sequence[int] = (), batch_size: int = 64
                  ) -> dict[str, np.ndarray]:
  """{kind: (2N, T) token rewards} aligned with `rows.input_ids`: "implicit" when `reference` is given,
  "contrastive" and "contrastive_sigmoid" when control ids are given."""
  out = {}
  if reference is not None or better_ids:
    policy_logps = batched(jit_token_logps(policy), rows, batch_size)
  if reference is not None:
    out["implicit"] = beta * (policy_logps - batched(jit_token_logps(reference), rows, batch_size))
  if better_ids:
    better = batched(jit_token_logps(policy, better_ids), rows, batch_size)
    worse = batched(jit_token_logps(policy, worse_ids), rows, batch_size)
    mask = rows.loss_mask.astype(bool) & rows.attention_mask.astype(bool)
    mask[:, 0] = False
    out["contrastive"] = np.where(mask, better - worse, 0.0)
    out["contrastive_sigmoid"] = np.where(mask, 1.0 / (1.0 + np.exp(-(better - worse))) - 0.5, 0.0)
  return out


def evaluate_credit(world: Any, rows: ResponseSet, rewards: dict[str, np.ndarray], min_tokens: int = 3
                    ) -> tuple[dict[str, float], dict[str, tuple[np.ndarray, np.ndarray]]]:
  """(metrics, {kind: (pooled predicted, pooled gold) token values}) of each reward kind against gold credit."""
  eos = world.tokenizer.eos_id
  response = (rows.loss_mask > 0) & (rows.attention_mask > 0)
  scored = response & (rows.input_ids != eos)
  prompt = (rows.attention_mask > 0) & ~response
  p_ids, p_mask = left_align(rows.input_ids, prompt)
  r_ids, r_mask = left_align(rows.input_ids, scored)
  gold_BxR = np.asarray(world.gold_token_contributions(p_ids, p_mask, r_ids, r_mask), np.float64)
  gold_B = np.asarray(world.gold_reward_np(p_ids, p_mask, r_ids, r_mask), np.float64)
  n = rows.num_pairs
  metrics: dict[str, float] = {"num_responses": float(2 * n)}
  pooled = {}
  for kind, values in rewards.items():
    pred_BxR, _ = left_align(values, scored)
    m = credit_metrics(pred_BxR, gold_BxR, r_mask, min_tokens)
    sums = np.sum(np.where(response, values, 0.0), axis=1)
    m["pair_accuracy"] = pair_accuracy(sums[:n], sums[n:], gold_B[:n], gold_B[n:])
    metrics["num_sequences"], metrics["num_tokens"] = m.pop("num_sequences"), m.pop("num_tokens")
    metrics.update({f"{kind}/{k}": v for k, v in m.items()})
    pooled[kind] = (pred_BxR[r_mask > 0], gold_BxR[r_mask > 0])
  return metrics, pooled


def plot_token_credit(path: str, pooled: dict[str, tuple[np.ndarray, np.ndarray]], metrics: dict[str, float],
                      title: str = "", max_points: int = 4000) -> str:
  """One scatter panel per reward kind: token reward against gold token credit (a seeded subsample)."""
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg", force=True)
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  kinds = [k for k in pooled if k != "contrastive_sigmoid"] or list(pooled)
  fig, axes = plt.subplots(1, len(kinds), figsize=(4.2 * len(kinds), 3.6), squeeze=False)
  rng = np.random.default_rng(0)
  for ax, kind in zip(axes[0], kinds):
    pred, gold = pooled[kind]
    keep = rng.permutation(pred.size)[:max_points]
    ax.scatter(gold[keep], pred[keep], s=3, alpha=0.3)
    ax.set_xlabel("gold token credit c_t")
    ax.set_ylabel(f"{kind} token reward")
    ax.set_title(f"{kind}: pooled r={metrics[f'{kind}/pearson_pooled']:.2f}, "
                 f"per-seq r={metrics[f'{kind}/pearson_seq']:.2f}", fontsize=9)
  if title:
    fig.suptitle(title, fontsize=10)
  fig.tight_layout()
  fig.savefig(path, dpi=100)
  plt.close(fig)
  return path


# ------------------------------------------------------------------------------------------------ the stage
@dataclasses.dataclass(frozen=True)
class TokenCreditConfig:
  """policy / reference: "stage:<name>" or a HF folder. reference "" skips the implicit rewards; contrastive
  scores the policy under the `better` / `worse` control contexts (T-REG's self-generated token rewards)."""
  policy: str = field("")
  reference: str = field("")
  beta: float = field(0.1, min=0.0)
  contrastive: bool = field(True)
  better: str = field("<better>")
  worse: str = field("<worse>")
  world: dict = field(default_factory=dict)
  num_pairs: int = field(512, min=1)
  batch_size: int = field(64, min=1)
  max_length: int = field(48, min=2)
  min_tokens: int = field(3, min=2)
  plots: bool = field(True)

  def validate(self, path: str) -> None:
    from jaxrlhf.train import builders  # pylint: disable=g-import-not-at-top
    if not self.policy:
      raise ConfigError(f"{path}.policy: required ('stage:<name>' or a HF folder)")
    if not self.reference and not self.contrastive:
      raise ConfigError(f"{path}.reference: required when {path}.contrastive is False (nothing to measure)")
    if self.reference and self.beta <= 0:
      raise ConfigError(f"{path}.beta: must be > 0 for implicit rewards, got {self.beta}")
    for key in ("policy", "reference"):
      value = getattr(self, key)
      if value and not value.startswith(builders.STAGE_PREFIX) and not os.path.exists(value):
        raise ConfigError(f"{path}.{key}: {value!r} does not exist")
    builders.DataSpec(world=self.world).validate(path)


def run_token_credit(cfg: TokenCreditConfig, workdir: str, inputs: dict) -> dict:
  """The "token_credit" stage: writes workdir/results.json (and token_credit.png); returns {"metrics"}."""
  from jaxrlhf.models import from_pretrained  # pylint: disable=g-import-not-at-top
  from jaxrlhf.train import builders  # pylint: disable=g-import-not-at-top
  from jaxrlhf.train.preference import control_ids  # pylint: disable=g-import-not-at-top
  world = builders.make_world(builders.DataSpec(world=cfg.world))
  policy, _ = from_pretrained(builders.resolve_path(cfg.policy, inputs))
  reference = from_pretrained(builders.resolve_path(cfg.reference, inputs))[0] if cfg.reference else None
  better = worse = ()
  if cfg.contrastive:
    better = control_ids(world.tokenizer, cfg.better, "config.better")
    worse = control_ids(world.tokenizer, cfg.worse, "config.worse")
  rows = response_set(world, cfg.num_pairs, cfg.max_length)
  rewards = token_rewards(policy, reference, rows, beta=cfg.beta, better_ids=better, worse_ids=worse,
                          batch_size=cfg.batch_size)
  metrics, pooled = evaluate_credit(world, rows, rewards, cfg.min_tokens)
  os.makedirs(workdir, exist_ok=True)
  with open(os.path.join(workdir, "results.json"), "w") as f:
    json.dump({"status": "done", "metrics": metrics}, f, indent=2)
  if cfg.plots:
    plot_token_credit(os.path.join(workdir, "token_credit.png"), pooled, metrics,
                      title=f"{cfg.policy}: token rewards vs gold credit ({rows.num_pairs} test pairs)")
  print("[token_credit] " + ", ".join(f"{k}={v:.3f}" for k, v in metrics.items()
                                      if k.endswith(("pearson_seq", "pearson_pooled", "pair_accuracy"))), flush=True)
  return {"metrics": metrics}
