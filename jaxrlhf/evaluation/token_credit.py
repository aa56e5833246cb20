"""Token-level credit: how well token rewards track the synthetic world's gold per-token credit (the T-REG
question, Zhou et al. 2024, arXiv:2412.02685). The "token_credit" stage (jaxrlhf.stages.token_credit) computes
the token rewards; this module scores them.

For every response token y_t (the end-of-turn token excluded: the gold reward does not score it) a reward kind k
(e.g. DPO's implicit token reward, T-REG's contrastive one) is compared with the gold credit
c_t = World.gold_token_contributions (sums over t to r* minus the length term):
  k/pearson_seq, k/spearman_seq        mean over responses of the within-response correlation with c_t
                                       (responses with >= min_tokens tokens and non-constant values on both sides)
  k/pearson_pooled, k/spearman_pooled  the correlation over all tokens of all responses
  k/sign_agreement                     fraction of tokens with sign(k_t) == sign(c_t) (0 counts as its own sign)
  k/pair_accuracy                      fraction of pairs whose summed reward (end-of-turn token included, i.e.
                                       DPO's sequence reward for k = implicit) orders the two responses like r*
                                       (ties count as wrong; pairs with equal r* are left out)
  k/num_sequences                      responses whose correlation is defined for k (the *_seq means' count)
plus num_responses and num_tokens.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from jaxrlhf.evaluation import stats

REWARD_KINDS = ("implicit", "contrastive", "contrastive_sigmoid")
STATS = ("pearson_seq", "spearman_seq", "pearson_pooled", "spearman_pooled", "sign_agreement", "pair_accuracy")


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
    p, s = stats.pearson(p_row[m_row], g_row[m_row]), stats.spearman(p_row[m_row], g_row[m_row])
    if np.isfinite(p):
      seq_p.append(p)
      seq_s.append(s)
  flat_p, flat_g = pred[mask], gold[mask]
  nan = float("nan")
  return {
      "pearson_seq": float(np.mean(seq_p)) if seq_p else nan,
      "spearman_seq": float(np.mean(seq_s)) if seq_s else nan,
      "pearson_pooled": stats.pearson(flat_p, flat_g),
      "spearman_pooled": stats.spearman(flat_p, flat_g),
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


def evaluate_credit(world: Any, rows: Any, rewards: dict[str, np.ndarray], min_tokens: int = 3
                    ) -> tuple[dict[str, float], dict[str, tuple[np.ndarray, np.ndarray]]]:
  """(metrics, {kind: (pooled predicted, pooled gold) token values}) of each reward kind against gold credit.

  Args:
    world: the synthetic world (its tokenizer's end token and its gold token contributions).
    rows: 2N right-padded rows (chosen of pairs 0..N-1, then their rejected) with `input_ids`,
      `attention_mask`, `loss_mask` (B, T) (1 on response tokens) and `num_pairs` (N).
    rewards: {kind: (2N, T) token rewards aligned with `rows.input_ids`}.
    min_tokens: see `credit_metrics`.
  """
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
    metrics["num_tokens"] = m.pop("num_tokens")  # The same for every kind: the scored response tokens.
    # Per kind: the *_seq means of two kinds may average over different responses (those whose correlation is
    # defined for that kind).
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
