"""Parity of the preference losses with TRL 1.16's own code (not a re-typing of its formulas).

- DPO: `trl.trainer.dpo_trainer.DPOTrainer._compute_loss`, run on a trainer built with `object.__new__` and a fake
  model whose outputs carry the per-token log-probs we choose (`precompute_ref_log_probs` supplies the reference).
  Per-example losses come from batch-of-one calls, batch losses (and the sorting AOT types) from the full batch;
  the per-example rewards are captured from the tensors `_compute_loss` hands to `accelerator.gather`.
- KTO: `trl.trainer.kto_trainer.KTOTrainer._compute_loss` the same way (including its KL reference point).
- SimPO: `trl.experimental.cpo.CPOTrainer.cpo_loss` with loss_type="simpo"; ORPO: `ORPOTrainer.odds_ratio_loss`.
"""

import collections
import types
import zlib

import jax.numpy as jnp
import numpy as np
import pytest
from conftest import require_module

torch = require_module("torch")
dpo_trainer = require_module("trl.trainer.dpo_trainer")
kto_trainer = require_module("trl.trainer.kto_trainer")
cpo_trainer = require_module("trl.experimental.cpo.cpo_trainer")
orpo_trainer = require_module("trl.experimental.orpo.orpo_trainer")

from jaxrlhf.losses import kto as kto_lib  # noqa: E402
from jaxrlhf.losses import preference  # noqa: E402
from jaxrlhf.losses import reference_free  # noqa: E402

pytestmark = pytest.mark.parity

B, T = 8, 9  # T - 1 = 8 label positions
RTOL = ATOL = 1e-5


class _Accelerator:
  """Stands in for accelerate: single process; records what `gather` receives (the per-example metrics)."""

  device = torch.device("cpu")

  def __init__(self):
    self.gathered = []

  def gather(self, x):
    self.gathered.append(x.detach().clone())
    return x

  def gather_for_metrics(self, x):
    return x


class _FakeLM(torch.nn.Module):
  """Returns the chosen per-token log-probs for an input width (TRL sums them over positions)."""

  def __init__(self, log_probs_by_width, log_sum_sq_probs=None):
    super().__init__()
    self.log_probs_by_width = log_probs_by_width
    self.log_sum_sq_probs = log_sum_sq_probs

  def forward(self, input_ids, labels=None, fused_lm_head=True, **unused):
    log_probs = self.log_probs_by_width[input_ids.shape[1]]
    n, t = log_probs.shape
    return types.SimpleNamespace(
        log_probs=log_probs,
        entropy=torch.zeros(n, t),
        mean_logits=torch.zeros(n, t),
        is_top1=torch.zeros(n, t, dtype=torch.bool),
        log_sum_sq_probs=torch.zeros(n, t) if self.log_sum_sq_probs is None else self.log_sum_sq_probs,
        aux_loss=torch.zeros(()),
    )


def _base_trainer(cls, model):
  trainer = object.__new__(cls)
  trainer.model = model
  trainer.accelerator = _Accelerator()
  trainer.precompute_ref_logps = True
  trainer.aux_loss_enabled = False
  trainer._metrics = {"train": collections.defaultdict(list), "eval": collections.defaultdict(list)}
  trainer._total_train_tokens = 0
  trainer._tp_size = 1
  return trainer


def _make_pairs(rng, n, max_logratio=50.0, equal_lengths=False):
  """Dyadic per-token log-probs (exact in fp32, so sums agree bit for bit) and log-ratios up to max_logratio."""
  lengths = np.full(2 * n, T - 1) if equal_lengths else rng.integers(1, T, size=2 * n)
  per_token = np.zeros((2 * n, T - 1))
  for i, length in enumerate(lengths):
    per_token[i, :length] = -np.round(rng.uniform(0.0, 8.0, size=length) * 64) / 64
  logps = per_token.sum(1)
  logratios = np.round(rng.uniform(-max_logratio, max_logratio, size=2 * n) * 64) / 64
  ref = logps - logratios
  return per_token, lengths, logps, ref


def _trl_dpo(per_token, lengths, ref, *, loss_types, loss_weights, beta, label_smoothing, f_divergence, f_alpha, tau,
             gathered=None, ld_alpha=None, log_sum_sq=None):
  n2 = per_token.shape[0]
  completion_mask = torch.zeros(n2, T, dtype=torch.long)
  for i, length in enumerate(lengths):
    completion_mask[i, 1 : 1 + length] = 1
  model = _FakeLM({T: torch.tensor(per_token, dtype=torch.float32)},
                  None if log_sum_sq is None else torch.tensor(log_sum_sq, dtype=torch.float32))
  trainer = _base_trainer(dpo_trainer.DPOTrainer, model)
  trainer.ld_alpha = ld_alpha
  trainer.beta = beta
  trainer.loss_types = list(loss_types)
  trainer.loss_weights = list(loss_weights)
  trainer.label_smoothing = label_smoothing
  trainer.use_weighting = log_sum_sq is not None
  trainer.f_divergence_type = f_divergence
  trainer.f_alpha_divergence_coef = f_alpha
  trainer.args = types.SimpleNamespace(discopop_tau=tau)
  ref_t = torch.tensor(ref, dtype=torch.float32)
  inputs = {
      "input_ids": torch.zeros(n2, T, dtype=torch.long),
      "attention_mask": torch.ones(n2, T, dtype=torch.long),
      "completion_mask": completion_mask,
      "ref_chosen_logps": ref_t[: n2 // 2],
      "ref_rejected_logps": ref_t[n2 // 2 :],
  }
  with torch.no_grad():
    loss = trainer._compute_loss(model, inputs, return_outputs=False)
  chosen_rewards, rejected_rewards = trainer.accelerator.gathered[:2]
  if gathered is not None:  # every per-example tensor TRL gathers: rewards, accuracies, margins, ...
    gathered.extend(t.numpy() for t in trainer.accelerator.gathered)
  return float(loss), chosen_rewards.numpy(), rejected_rewards.numpy()


def _ours_dpo(per_token, lengths, logps, ref, *, loss_types, loss_weights, beta, label_smoothing, f_divergence,
              f_alpha, tau):
  n = logps.shape[0] // 2
  f32 = lambda x: jnp.asarray(x, jnp.float32)  # noqa: E731
  chosen_nll = -per_token[:n].sum(1) / np.maximum(lengths[:n], 1)
  return preference.dpo_loss(
      f32(logps[:n]), f32(logps[n:]), f32(ref[:n]), f32(ref[n:]),
      loss_type=loss_types, loss_weights=loss_weights, beta=beta, label_smoothing=label_smoothing,
      chosen_lengths=f32(lengths[:n]), rejected_lengths=f32(lengths[n:]), f_divergence=f_divergence,
      f_alpha=f_alpha, discopop_tau=tau, chosen_nll=f32(chosen_nll),
  )


def _rows(per_token, lengths, logps, ref, idx):
  """The batch-of-one slice for pair idx (rows idx and n + idx)."""
  n = logps.shape[0] // 2
  sel = [idx, n + idx]
  return per_token[sel], lengths[sel], logps[sel], ref[sel]


def _cases():
  cases = []
  for loss_type in preference.LOSS_TYPES:
    if loss_type == "sft":
      continue
    divergences = preference.F_DIVERGENCES if loss_type in preference.F_DIVERGENCE_LOSS_TYPES else ("reverse_kl",)
    for f_div in divergences:
      alphas = (0.5, 1.0, 1.5) if f_div == "alpha_divergence" else (0.5,)
      for f_alpha in alphas:
        cases.append(((loss_type,), (1.0,), f_div, f_alpha))
  # Weighted combinations (MPO-style) and RPO (sigmoid + sft).
  cases.append((("sigmoid", "bco_pair", "sft"), (0.8, 0.2, 1.0), "reverse_kl", 0.5))
  cases.append((("sigmoid", "sft"), (1.0, 0.5), "js_divergence", 0.5))
  cases.append((("ipo", "hinge", "robust"), (0.3, 0.5, 2.0), "forward_kl", 0.5))
  return cases


def _case_id(case):
  loss_types, _, f_div, f_alpha = case
  return f"{'+'.join(loss_types)}-{f_div}" + (f"-{f_alpha}" if f_div == "alpha_divergence" else "")


@pytest.mark.parametrize("case", _cases(), ids=_case_id)
@pytest.mark.parametrize("beta", [0.1, 0.7])
def test_dpo_matches_trl(case, beta):
  loss_types, loss_weights, f_div, f_alpha = case
  rng = np.random.default_rng(zlib.crc32(f"{_case_id(case)}-{beta}".encode()))
  # TRL's "sft" is one token-mean over the batch; it equals the mean of per-example means at equal lengths.
  per_token, lengths, logps, ref = _make_pairs(rng, B, equal_lengths="sft" in loss_types)
  # TRL 1.16 ignores label_smoothing for sigmoid; we apply conservative DPO, so sigmoid compares at 0.
  smoothing = 0.0 if "sigmoid" in loss_types else 0.1
  kw = dict(loss_types=loss_types, loss_weights=loss_weights, beta=beta, label_smoothing=smoothing,
            f_divergence=f_div, f_alpha=f_alpha, tau=0.05)

  trl_loss, trl_chosen, trl_rejected = _trl_dpo(per_token, lengths, ref, **kw)
  losses, metrics = _ours_dpo(per_token, lengths, logps, ref, **kw)
  if np.isnan(trl_loss):
    # TRL's discopop forms exp(-z) * sigmoid(z / tau) as inf * 0 = NaN for very negative z; ours is one exp.
    assert "discopop" in loss_types
    assert np.all(np.isfinite(np.asarray(losses)))
  else:
    np.testing.assert_allclose(float(jnp.mean(losses)), trl_loss, rtol=RTOL, atol=ATOL)
  np.testing.assert_allclose(np.asarray(metrics["rewards/chosen"]), trl_chosen, rtol=RTOL, atol=ATOL)
  np.testing.assert_allclose(np.asarray(metrics["rewards/rejected"]), trl_rejected, rtol=RTOL, atol=ATOL)

  if any(t in preference.SORTING_LOSS_TYPES for t in loss_types) or "sft" in loss_types:
    return  # Per-position losses of sorting types belong to no single example; sft is a batch-level mean in TRL.
  rows = [_rows(per_token, lengths, logps, ref, i) for i in range(B)]
  trl_per_example = np.asarray([_trl_dpo(pt, ln, rf, **kw)[0] for pt, ln, _, rf in rows])
  finite = ~np.isnan(trl_per_example)
  assert finite.all() or "discopop" in loss_types
  np.testing.assert_allclose(np.asarray(losses)[finite], trl_per_example[finite], rtol=RTOL, atol=ATOL)


@pytest.mark.parametrize("loss_type", ["sigmoid_norm", "ipo"])
def test_dpo_tied_rewards_and_empty_responses_match_trl(loss_type):
  """TRL counts a tied pair as inaccurate (`chosen_rewards > rejected_rewards`) and divides the scores of the
  length-normalized types by clamp(length, min=1), so an empty response (0 tokens) gives a finite loss."""
  rng = np.random.default_rng(11)
  per_token, lengths, logps, ref = _make_pairs(rng, B)
  for i in (0, 1):  # tied rewards: equal log-ratios on both sides (dyadic, so exact)
    ref[B + i] = logps[B + i] - (logps[i] - ref[i])
  for row in (B + 2, 3):  # an empty rejected response (pair 2) and an empty chosen one (pair 3)
    per_token[row], lengths[row] = 0.0, 0
    logps[row], ref[row] = 0.0, -2.5
  kw = dict(loss_types=(loss_type,), loss_weights=(1.0,), beta=0.5, label_smoothing=0.0, f_divergence="reverse_kl",
            f_alpha=0.5, tau=0.05)
  gathered = []
  trl_loss, _, _ = _trl_dpo(per_token, lengths, ref, gathered=gathered, **kw)
  trl_chosen, trl_rejected, trl_accuracy, trl_margin = gathered[:4]
  losses, metrics = _ours_dpo(per_token, lengths, logps, ref, **kw)
  np.testing.assert_array_equal(trl_chosen[:2], trl_rejected[:2])  # the ties are real ties
  np.testing.assert_array_equal(trl_accuracy[:2], 0.0)
  np.testing.assert_array_equal(np.asarray(metrics["rewards/accuracy"]), trl_accuracy)
  np.testing.assert_allclose(np.asarray(metrics["rewards/margin"]), trl_margin, rtol=RTOL, atol=ATOL)
  assert np.isfinite(trl_loss)
  np.testing.assert_allclose(float(jnp.mean(losses)), trl_loss, rtol=RTOL, atol=ATOL)
  for i in (2, 3):  # per example, the empty-response pairs
    pt, ln, _, rf = _rows(per_token, lengths, logps, ref, i)
    np.testing.assert_allclose(float(losses[i]), _trl_dpo(pt, ln, rf, **kw)[0], rtol=RTOL, atol=ATOL)


@pytest.mark.parametrize("ld_alpha", [0.0, 0.35, 1.0])
@pytest.mark.parametrize("loss_type", ["sigmoid", "ipo"])
def test_ld_dpo_matches_trl(ld_alpha, loss_type):
  """LD-DPO: TRL weights the policy's tokens past the pair's shared completion length by ld_alpha (its reference
  log-probs here are the precomputed numbers both sides get; the stage weights the reference the same way, which
  tests/stages/test_ld_dpo_stage.py checks). IPO keeps dividing by the full lengths."""
  rng = np.random.default_rng(int(ld_alpha * 100) + len(loss_type))
  per_token, lengths, _, ref = _make_pairs(rng, B)
  lengths[0], lengths[B] = 5, 5  # one pair of equal lengths: nothing past the shared length
  per_token[[0, B], 5:] = 0.0
  kw = dict(loss_types=(loss_type,), loss_weights=(1.0,), beta=0.3, label_smoothing=0.0, f_divergence="reverse_kl",
            f_alpha=0.5, tau=0.05)
  gathered = []
  trl_loss, trl_chosen, trl_rejected = _trl_dpo(per_token, lengths, ref, gathered=gathered, ld_alpha=ld_alpha, **kw)
  mask = (np.arange(T - 1)[None, :] < lengths[:, None]).astype(np.float32)
  logps = np.asarray(preference.ld_sequence_logps(jnp.asarray(per_token, jnp.float32), jnp.asarray(mask), ld_alpha))
  losses, metrics = _ours_dpo(per_token, lengths, logps, ref, **kw)
  np.testing.assert_allclose(float(jnp.mean(losses)), trl_loss, rtol=RTOL, atol=ATOL)
  np.testing.assert_allclose(np.asarray(metrics["rewards/chosen"]), trl_chosen, rtol=RTOL, atol=ATOL)
  np.testing.assert_allclose(np.asarray(metrics["rewards/rejected"]), trl_rejected, rtol=RTOL, atol=ATOL)
  rows = [_rows(per_token, lengths, logps, ref, i) for i in range(B)]
  trl_per_example = [_trl_dpo(pt, ln, rf, ld_alpha=ld_alpha, **kw)[0] for pt, ln, _, rf in rows]
  np.testing.assert_allclose(np.asarray(losses), trl_per_example, rtol=RTOL, atol=ATOL)
  if ld_alpha == 1.0:
    np.testing.assert_array_equal(logps, per_token.sum(1).astype(np.float32))


@pytest.mark.parametrize("loss_types, loss_weights", [(("sigmoid",), (1.0,)), (("ipo",), (1.0,)),
                                                     (("sigmoid", "bco_pair"), (0.8, 0.2))])
def test_wpo_weighting_matches_trl(loss_types, loss_weights):
  """WPO: TRL multiplies each pair's loss of every type by exp(mean(logp - log_sum_sq_probs)) of its chosen times its
  rejected response; log_sum_sq_probs here are arbitrary values <= log p (as log sum p^2 is for a peaked softmax).
  (TRL 1.16 cannot weight its "sft" type: it multiplies an expanded scalar in place, a torch RuntimeError.)"""
  rng = np.random.default_rng(len(loss_types) + 40)
  per_token, lengths, logps, ref = _make_pairs(rng, B, max_logratio=5.0, equal_lengths="sft" in loss_types)
  mask = (np.arange(T - 1)[None, :] < lengths[:, None]).astype(np.float32)
  log_sum_sq = np.where(mask > 0, per_token * rng.uniform(0.3, 1.2, size=per_token.shape), 0.0) / 4
  kw = dict(loss_types=loss_types, loss_weights=loss_weights, beta=0.2, label_smoothing=0.0,
            f_divergence="reverse_kl", f_alpha=0.5, tau=0.05)
  trl_loss, trl_chosen, _ = _trl_dpo(per_token, lengths, ref, log_sum_sq=log_sum_sq, **kw)
  unweighted, _, _ = _trl_dpo(per_token, lengths, ref, **kw)
  weights = preference.wpo_weights(*(jnp.asarray(x, jnp.float32) for x in (per_token, log_sum_sq, mask)))
  assert not np.allclose(np.asarray(weights), 1.0, rtol=1e-2)
  n = B
  f32 = lambda x: jnp.asarray(x, jnp.float32)  # noqa: E731
  losses, metrics = preference.dpo_loss(
      f32(logps[:n]), f32(logps[n:]), f32(ref[:n]), f32(ref[n:]), loss_type=loss_types, loss_weights=loss_weights,
      beta=0.2, chosen_lengths=f32(lengths[:n]), rejected_lengths=f32(lengths[n:]),
      chosen_nll=f32(-per_token[:n].sum(1) / np.maximum(lengths[:n], 1)), weights=weights)
  np.testing.assert_allclose(float(jnp.mean(losses)), trl_loss, rtol=RTOL, atol=ATOL)
  assert abs(trl_loss - unweighted) > 1e-3  # the weighting changed TRL's loss too
  np.testing.assert_allclose(np.asarray(metrics["rewards/chosen"]), trl_chosen, rtol=RTOL, atol=ATOL)


def test_ld_sequence_logps_hand_computed():
  # Pair 0: chosen 3 tokens, rejected 1 -> public length 1; pair 1: chosen 2, rejected 4 (tokens not at the row's
  # start, as in a shared-prompt row) -> public length 2.
  token_logps = jnp.asarray([[-1.0, -2.0, -4.0, 0.0, 0.0], [0.0, -1.0, -3.0, 0.0, 0.0],
                             [-8.0, 0.0, 0.0, 0.0, 0.0], [0.0, -1.0, -2.0, -4.0, -8.0]])
  mask = (token_logps != 0).astype(jnp.float32)
  out = preference.ld_sequence_logps(token_logps, mask, 0.5)
  np.testing.assert_allclose(np.asarray(out), [-1.0 - 0.5 * 6.0, -4.0, -8.0, -3.0 - 0.5 * 12.0])
  # The end-token ablation: each row's last token counts fully (-4 of pair 0's chosen, -8 of pair 1's rejected).
  out = preference.ld_sequence_logps(token_logps, mask, 0.5, keep_end=True)
  np.testing.assert_allclose(np.asarray(out), [-1.0 - 0.5 * 2.0 - 4.0, -4.0, -8.0, -3.0 - 0.5 * 4.0 - 8.0])
  with pytest.raises(ValueError, match=r"ld_alpha must be in \[0, 1\], got 1.5"):
    preference.ld_sequence_logps(token_logps, mask, 1.5)


def test_rpo_alpha_equals_trl_sigmoid_plus_sft():
  rng = np.random.default_rng(0)
  per_token, lengths, logps, ref = _make_pairs(rng, B, equal_lengths=True)
  kw = dict(beta=0.1, label_smoothing=0.0, f_divergence="reverse_kl", f_alpha=0.5, tau=0.05)
  trl_loss, _, _ = _trl_dpo(per_token, lengths, ref, loss_types=("sigmoid", "sft"), loss_weights=(1.0, 0.3), **kw)
  n = B
  f32 = lambda x: jnp.asarray(x, jnp.float32)  # noqa: E731
  losses, _ = preference.dpo_loss(
      f32(logps[:n]), f32(logps[n:]), f32(ref[:n]), f32(ref[n:]), beta=0.1, rpo_alpha=0.3,
      chosen_nll=f32(-per_token[:n].sum(1) / lengths[:n]),
  )
  np.testing.assert_allclose(float(jnp.mean(losses)), trl_loss, rtol=RTOL, atol=ATOL)


def _trl_kto(logps, ref, labels, kl_logps, ref_kl_logps, *, loss_type, beta, dw, uw):
  n = logps.shape[0]
  # Main sequences have width T, the KL sequences width T + 1: the fake model tells them apart by width.
  main = np.zeros((n, T - 1))
  main[:, 0] = logps
  n_kl = kl_logps.shape[0]  # may exceed n: a batch of one still sees the whole batch's KL sequences
  kl = np.zeros((n_kl, T))
  kl[:, 0] = kl_logps
  model = _FakeLM({T: torch.tensor(main, dtype=torch.float32), T + 1: torch.tensor(kl, dtype=torch.float32)})
  trainer = _base_trainer(kto_trainer.KTOTrainer, model)
  trainer.calculate_KL = loss_type == "kto"
  trainer.loss_type = loss_type
  trainer.beta = beta
  trainer.desirable_weight = dw
  trainer.undesirable_weight = uw
  completion_mask = torch.zeros(n, T, dtype=torch.long)
  completion_mask[:, 1:] = 1
  kl_completion_mask = torch.zeros(n_kl, T + 1, dtype=torch.long)
  kl_completion_mask[:, 1:] = 1
  inputs = {
      "input_ids": torch.zeros(n, T, dtype=torch.long),
      "attention_mask": torch.ones(n, T, dtype=torch.long),
      "completion_mask": completion_mask,
      "KL_input_ids": torch.zeros(n_kl, T + 1, dtype=torch.long),
      "KL_attention_mask": torch.ones(n_kl, T + 1, dtype=torch.long),
      "KL_completion_mask": kl_completion_mask,
      "label": torch.tensor(labels, dtype=torch.bool),
      "ref_logps": torch.tensor(ref, dtype=torch.float32),
      "ref_KL_logps": torch.tensor(ref_kl_logps, dtype=torch.float32),
  }
  with torch.no_grad():
    loss = trainer._compute_loss(model, inputs, return_outputs=False)
  metrics = trainer._metrics["train"]
  return float(loss), metrics


@pytest.mark.parametrize("loss_type", kto_lib.KTO_LOSS_TYPES)
@pytest.mark.parametrize("kl_sign", [1.0, -1.0])  # -1: the batch KL estimate is negative and clamps to 0
def test_kto_matches_trl(loss_type, kl_sign):
  rng = np.random.default_rng(7)
  n = 10
  logps = -np.round(rng.uniform(5, 60, n) * 64) / 64
  ref = logps - np.round(rng.uniform(-50, 50, n) * 64) / 64
  labels = np.array([1, 0, 1, 1, 0, 0, 1, 0, 1, 1], dtype=bool)
  kl_logps = -np.round(rng.uniform(5, 60, n) * 64) / 64
  ref_kl_logps = kl_logps - kl_sign * np.round(rng.uniform(0, 4, n) * 64) / 64
  kw = dict(loss_type=loss_type, beta=0.2, dw=1.3, uw=0.7)
  trl_loss, trl_metrics = _trl_kto(logps, ref, labels, kl_logps, ref_kl_logps, **kw)

  f32 = lambda x: jnp.asarray(x, jnp.float32)  # noqa: E731
  z0 = kto_lib.kto_kl_estimate(f32(kl_logps), f32(ref_kl_logps)) if loss_type == "kto" else 0.0
  losses, metrics = kto_lib.kto_loss(
      f32(logps), f32(ref), jnp.asarray(labels), kl=z0, beta=0.2, desirable_weight=1.3, undesirable_weight=0.7,
      loss_type=loss_type,
  )
  np.testing.assert_allclose(float(jnp.mean(losses)), trl_loss, rtol=RTOL, atol=ATOL)
  np.testing.assert_allclose(float(z0), trl_metrics["kl"][-1], rtol=RTOL, atol=ATOL)
  for side in ("chosen", "rejected"):
    for key in ("rewards", "logps"):
      ours = float(jnp.sum(metrics[f"{key}/{side}"]) / jnp.sum(metrics[f"count/{side}"]))
      np.testing.assert_allclose(ours, trl_metrics[f"{key}/{side}"][-1], rtol=RTOL, atol=ATOL, err_msg=key)
  if loss_type == "kto":
    # kto_loss clamps the reference point itself (the preference stage hands it the unclamped estimate).
    raw_kl = float(np.mean(kl_logps - ref_kl_logps))
    assert (raw_kl < 0) == (kl_sign < 0)
    unclamped, _ = kto_lib.kto_loss(
        f32(logps), f32(ref), jnp.asarray(labels), kl=raw_kl, beta=0.2, desirable_weight=1.3, undesirable_weight=0.7,
    )
    np.testing.assert_allclose(float(jnp.mean(unclamped)), trl_loss, rtol=RTOL, atol=ATOL)
  # Per example: a batch of one with the same KL sequences, so TRL sees the same reference point.
  for i in range(n):
    trl_i, _ = _trl_kto(logps[i : i + 1], ref[i : i + 1], labels[i : i + 1], kl_logps, ref_kl_logps, **kw)
    np.testing.assert_allclose(float(losses[i]), trl_i, rtol=RTOL, atol=ATOL)


def _avg_inputs(rng):
  lengths = rng.integers(1, 40, size=2 * B).astype(np.float64)
  logps = -rng.uniform(0.0, 4.0, size=2 * B) * lengths
  logps[0] = -1e-4  # near log P = 0, where log(1 - P) needs the expm1 branch
  return logps, lengths


@pytest.mark.parametrize("label_smoothing", [0.0, 0.2])
@pytest.mark.parametrize("beta,gamma", [(2.0, 0.5), (10.0, 1.6)])
def test_simpo_matches_trl_cpo_simpo(label_smoothing, beta, gamma):
  logps, lengths = _avg_inputs(np.random.default_rng(3))
  avg = torch.tensor(logps / lengths, dtype=torch.float32)
  self = types.SimpleNamespace(alpha=0.0, beta=beta, simpo_gamma=gamma, label_smoothing=label_smoothing,
                               loss_type="simpo", accelerator=_Accelerator())
  trl_losses, trl_chosen, trl_rejected = cpo_trainer.CPOTrainer.cpo_loss(self, avg[:B], avg[B:])
  f32 = lambda x: jnp.asarray(x, jnp.float32)  # noqa: E731
  losses, metrics = reference_free.simpo_loss(
      f32(logps[:B]), f32(logps[B:]), f32(lengths[:B]), f32(lengths[B:]), beta=beta, gamma=gamma,
      label_smoothing=label_smoothing,
  )
  np.testing.assert_allclose(np.asarray(losses), trl_losses.numpy(), rtol=RTOL, atol=ATOL)
  np.testing.assert_allclose(np.asarray(metrics["rewards/chosen"]), trl_chosen.numpy(), rtol=RTOL, atol=ATOL)
  np.testing.assert_allclose(np.asarray(metrics["rewards/rejected"]), trl_rejected.numpy(), rtol=RTOL, atol=ATOL)


def test_orpo_matches_trl_odds_ratio_loss():
  logps, lengths = _avg_inputs(np.random.default_rng(4))
  avg = torch.tensor(logps / lengths, dtype=torch.float32)
  self = types.SimpleNamespace(beta=0.25, accelerator=_Accelerator())
  trl_terms, trl_chosen, _, _, trl_log_odds = orpo_trainer.ORPOTrainer.odds_ratio_loss(self, avg[:B], avg[B:])
  f32 = lambda x: jnp.asarray(x, jnp.float32)  # noqa: E731
  nll = np.linspace(0.5, 2.0, B)
  losses, metrics = reference_free.orpo_loss(
      f32(logps[:B]), f32(logps[B:]), f32(lengths[:B]), f32(lengths[B:]), chosen_nll=f32(nll), beta=0.25
  )
  # TRL's loss is nll - mean(beta * log sigmoid(log odds)): its per-example term enters with a minus sign.
  np.testing.assert_allclose(np.asarray(losses), nll - trl_terms.numpy(), rtol=RTOL, atol=ATOL)
  np.testing.assert_allclose(float(jnp.mean(metrics["orpo/log_odds_ratio"])), float(trl_log_odds), rtol=RTOL,
                             atol=ATOL)
  np.testing.assert_allclose(np.asarray(metrics["rewards/chosen"]), trl_chosen.numpy(), rtol=RTOL, atol=ATOL)
