"""The "preference" stage. Preference optimization: the DPO family (every `dpo_loss` type, weighted combinations),
SimPO, ORPO, KTO (the unpaired view of the pairs) and T-REG, with per-example weights and dynamic beta, through the
shared loop.

One step runs chosen and rejected through the policy in ONE forward: 2B rows, or B shared-prompt rows
[prompt | chosen | rejected] (`data.shared_prompt`; train.pairs dispatches on the batch layout). The reference
policy (the initial policy) is either
  "resident":   a frozen copy inside the model (`PolicyWithReference.reference`); its parameters live in the
                state's `extra`, so they get no gradient and no optimizer state;
  "precompute": a pass over the training (and held-out) pairs before training computes the reference
                log-probs (and, for T-REG with reference token rewards, the token rewards), saved to
                `workdir/reference_cache.npz` and reused on resume; `inputs.AttachedBatches` attaches them to each
                batch by the pair's token content.
Reference-free losses (SimPO, ORPO) use neither.

Dynamic beta (MM-DPO): beta_i = dynamic_beta(beta, margin_i, w, k) from the batch's `margin` (set at data build
time by data.margin_from: the pair's score difference or a reward model's margin). `loss.dynamic_beta_mode=
"dataset_mean"` trains plain DPO at the mean of those beta_i over the training pairs instead; either way the mean
is reported as the metric `beta/mean`.
LD-DPO (`loss.ld_alpha` < 1, algorithm "dpo"): the sequence log-probs of the policy and of the reference (resident
or precomputed; the cache records ld_alpha and is recomputed when it differs) weight the tokens past a pair's
shared response length by ld_alpha (`losses.preference.ld_sequence_logps`, TRL's `ld_alpha`); `loss.ld_keep_end`
(an ablation) leaves each response's end token at full weight.
TR-DPO (`loss.ref_update_every` > 0): the resident reference moves toward the policy every ref_update_every updates
(ref <- ref_update_alpha * policy + (1 - ref_update_alpha) * ref; TRL's sync_ref_model); "auto" keeps the reference
resident for it, "precompute" and LoRA refuse it.
WPO (`loss.use_weighting`, algorithm "dpo"): each pair's loss is multiplied by the policy's detached weight
w(y_c) w(y_r) (`losses.preference.wpo_weights`, from the log-probs and each token's log sum_v p_v^2 of the same
forward); its batch mean is the metric `wpo/weight`.
KTO: each pair gives a desirable (chosen) and an undesirable (rejected) example. The reference point z0
(`loss.kto_reference_point`) is, by default, the paper's KL estimate from MISMATCHED pairs ("mismatched": each of
the 2B examples' prompts with the previous example's completion, as TRL's KTOTrainer shifts completions by one;
`scoring.mismatched_pair_rows`), max(0, mean log pi/pi_ref), detached. It needs the reference model in the step
(the mismatched rows change with the batch), so `reference="auto"` keeps a resident reference for it. "batch_mean"
is the earlier matched-pair estimate: the detached weighted batch mean of log pi/pi_ref over the 2B responses.
T-REG: token rewards r_t = sigmoid(log p(y_t | <better> x) - log p(y_t | <worse> x)) - 0.5 from the current
policy (detached) or from the reference, the control prefix inserted in front of the (text) prompt.
Reward-augmented DPO's base policy: an "sft" stage with `data.goal_fraction` > 0 (a share of prompts carry the goal
prompt with a random score), so the policy knows the goal format beforehand.
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jaxrlhf.config import ConfigError, field
from jaxrlhf.losses import kto as kto_lib
from jaxrlhf.losses import preference as pref_lib
from jaxrlhf.losses import reference_free
from jaxrlhf.losses import token_level
from jaxrlhf.models import CausalLM
from jaxrlhf.parallel import MeshConfig
from jaxrlhf.parallel import distributed
from jaxrlhf.stages import artifacts
from jaxrlhf.stages import common
from jaxrlhf.stages import inputs as inputs_lib
from jaxrlhf.train import loop as loop_lib
from jaxrlhf.train import metrics as metrics_lib
from jaxrlhf.train import optim
from jaxrlhf.train import scoring
from jaxrlhf.train import state as state_lib

ALGORITHMS = ("dpo", "simpo", "orpo", "kto", "treg")
# KTO's z0: the paper's (and TRL's) KL estimate on mismatched prompt/completion pairs, or the matched batch mean.
KTO_REFERENCE_POINTS = ("mismatched", "batch_mean")
REFERENCE_FREE = ("simpo", "orpo")
PAIR_METRICS = ("rewards/chosen", "rewards/rejected", "rewards/margin", "rewards/accuracy", "logps/chosen",
                "logps/rejected")


@dataclasses.dataclass(frozen=True)
class PreferenceLossConfig:
  """Loss hyperparameters (TRL names where they exist)."""
  algorithm: str = field("dpo", choices=ALGORITHMS)
  loss_type: tuple[str, ...] = field(("sigmoid",))  # dpo / treg: names from jaxrlhf.losses.preference.LOSS_TYPES.
  loss_weights: tuple[float, ...] = field(())  # () : all 1.
  beta: float = field(0.1, min=0.0)
  label_smoothing: float = field(0.0, min=0.0, max=0.49)
  f_divergence: str = field("reverse_kl", choices=pref_lib.F_DIVERGENCES)
  f_alpha: float = field(0.5)
  # DiscoPOP's tau (TRL's discopop_tau): the temperature of its modulation sigmoid(beta d / tau); loss_type
  # "discopop" only.
  discopop_tau: float = field(0.05)
  rpo_alpha: float = field(0.0, min=0.0)
  # LD-DPO (TRL's ld_alpha): tokens past a pair's shared response length weigh ld_alpha in the sequence log-probs of
  # the policy and the reference; 1 is plain DPO. algorithm "dpo" only.
  ld_alpha: float = field(1.0, min=0.0, max=1.0)
  # An ablation of LD-DPO (not in the paper or TRL): each response's last token (its end token) keeps full weight.
  ld_keep_end: bool = field(False)
  # WPO (TRL's use_weighting): each pair's loss is weighted by the policy's detached, length-normalized probability
  # of both responses (`losses.preference.wpo_weights`). algorithm "dpo" only.
  use_weighting: bool = field(False)
  # TR-DPO (TRL's sync_ref_model / ref_model_sync_steps / ref_model_mixup_alpha): after every ref_update_every-th
  # update, ref <- ref_update_alpha * policy + (1 - ref_update_alpha) * ref (`common.update_reference`); 0 = never,
  # the frozen reference of DPO. Needs the resident reference (a precomputed one cannot move).
  ref_update_every: int = field(0, min=0)
  ref_update_alpha: float = field(0.6, min=0.0, max=1.0)
  simpo_gamma: float = field(0.5)
  kto_loss_type: str = field("kto", choices=kto_lib.KTO_LOSS_TYPES)
  kto_reference_point: str = field("mismatched", choices=KTO_REFERENCE_POINTS)
  desirable_weight: float = field(1.0, min=0.0)
  undesirable_weight: float = field(1.0, min=0.0)
  treg_alpha: float = field(1.0, min=0.0)
  treg_token_rewards: str = field("policy", choices=("policy", "reference"))
  treg_better: str = field("<better>")
  treg_worse: str = field("<worse>")
  dynamic_beta_w: float = field(0.0, min=0.0)  # 0: constant beta.
  dynamic_beta_k: float = field(1.0, min=0.0)
  # "per_pair": MM-DPO's beta_i; "dataset_mean": ONE constant beta, the mean of the beta_i over the training pairs
  # (DPO at MM-DPO's average beta: the control that separates per-pair scaling from a larger beta).
  dynamic_beta_mode: str = field("per_pair", choices=("per_pair", "dataset_mean"))

  def validate(self, path: str) -> None:
    bad = [t for t in self.loss_type if t not in pref_lib.LOSS_TYPES]
    if bad or not self.loss_type:
      raise ConfigError(f"{path}.loss_type: {bad or '()'} is not valid; valid choices: "
                        + ", ".join(pref_lib.LOSS_TYPES))
    if self.loss_weights and len(self.loss_weights) != len(self.loss_type):
      raise ConfigError(f"{path}.loss_weights: {len(self.loss_weights)} weights for {len(self.loss_type)} "
                        f"loss types {self.loss_type}")
    if "exo_pair" in self.loss_type and self.label_smoothing == 0:
      raise ConfigError(f"{path}.label_smoothing: must be > 0 for loss_type 'exo_pair' (e.g. 1e-3)")
    if self.beta <= 0:
      raise ConfigError(f"{path}.beta: must be > 0, got {self.beta}")
    if not self.discopop_tau > 0:
      raise ConfigError(f"{path}.discopop_tau: must be > 0, got {self.discopop_tau}")
    if self.discopop_tau != 0.05 and "discopop" not in self.loss_type:
      raise ConfigError(f"{path}.discopop_tau: {self.discopop_tau} is read by loss_type 'discopop' only; "
                        f"{path}.loss_type is {self.loss_type} (leave discopop_tau at 0.05)")
    if self.use_weighting and self.algorithm != "dpo":
      raise ConfigError(f"{path}.use_weighting: WPO weights DPO's pair losses; it needs {path}.algorithm 'dpo', got "
                        f"{self.algorithm!r}")
    sorting = [t for t in self.loss_type if t in pref_lib.SORTING_LOSS_TYPES]
    if self.use_weighting and sorting:
      raise ConfigError(f"{path}.use_weighting: {sorting} sorts the batch, so its losses belong to no pair to "
                        "weight (as in TRL)")
    if self.ref_update_every and not needs_reference(self):
      raise ConfigError(f"{path}.ref_update_every: {self.algorithm!r} has no reference model to update")
    if self.ld_alpha != 1.0 and self.algorithm != "dpo":
      raise ConfigError(f"{path}.ld_alpha: LD-DPO weights DPO's sequence log-probs; {self.ld_alpha} needs "
                        f"{path}.algorithm 'dpo', got {self.algorithm!r} (leave ld_alpha at 1)")
    if self.ld_keep_end and self.ld_alpha == 1.0:
      raise ConfigError(f"{path}.ld_keep_end: modifies LD-DPO's weighting, which {path}.ld_alpha = 1 turns off; set "
                        f"{path}.ld_alpha < 1")


@dataclasses.dataclass(frozen=True)
class PreferenceConfig:
  """The "preference" stage."""
  seed: int = field(0)
  model: common.ModelSpec = field(default_factory=common.ModelSpec)
  data: inputs_lib.DataSpec = field(default_factory=inputs_lib.DataSpec)
  loss: PreferenceLossConfig = field(default_factory=PreferenceLossConfig)
  # "auto": "resident" for KTO with the mismatched reference point (its reference log-probs change with the batch),
  # "precompute" otherwise.
  reference: str = field("auto", choices=("auto", "precompute", "resident"))
  # The LM-head log-probs (`scoring.resolve_logps_path`): "auto" is "fused" on GPUs, elsewhere "chunked" when
  # logps_chunk_size > 0 (never the full (B, T, V) logits) and "full" otherwise.
  logps_path: str = field("auto", choices=scoring.LOGPS_PATHS)
  logps_chunk_size: int = field(0, min=0)
  optimizer: optim.OptimizerConfig = field(default_factory=optim.OptimizerConfig)
  loop: loop_lib.LoopConfig = field(default_factory=loop_lib.LoopConfig)
  mesh: MeshConfig = field(default_factory=MeshConfig)
  num_devices: int = field(0, min=0)

  def validate(self, path: str) -> None:
    if self.loss.dynamic_beta_w > 0 and self.data.margin_from == "none":
      raise ConfigError(f"{path}.data.margin_from: dynamic beta (loss.dynamic_beta_w > 0) needs margins; valid "
                        f"choices: {', '.join(m for m in inputs_lib.MARGIN_SOURCES if m != 'none')}")
    if self.loss.dynamic_beta_mode != "per_pair" and self.loss.dynamic_beta_w <= 0:
      raise ConfigError(f"{path}.loss.dynamic_beta_mode: {self.loss.dynamic_beta_mode!r} averages MM-DPO's betas and "
                        f"needs {path}.loss.dynamic_beta_w > 0")
    sorting = [t for t in self.loss.loss_type if t in pref_lib.SORTING_LOSS_TYPES]
    if sorting and self.loss.dynamic_beta_w > 0:
      raise ConfigError(f"{path}.loss.loss_type: {sorting} sorts the batch and cannot use dynamic beta")
    if mismatched_kto(self.loss) and self.reference == "precompute":
      raise ConfigError(f"{path}.reference: 'precompute' cannot serve KTO's mismatched reference point (its "
                        "pairs change with every batch); use 'auto' / 'resident', or set "
                        f"{path}.loss.kto_reference_point='batch_mean'")
    if mismatched_kto(self.loss) and self.data.batch_size < 2:
      raise ConfigError(f"{path}.data.batch_size: KTO's mismatched reference point pairs each prompt with another "
                        f"pair's completion, so it needs >= 2 pairs per batch (got {self.data.batch_size})")
    if self.loss.ref_update_every and self.reference == "precompute":
      raise ConfigError(f"{path}.reference: 'precompute' fixes the reference log-probs before training, so "
                        f"{path}.loss.ref_update_every={self.loss.ref_update_every} cannot move it; use 'auto' or "
                        "'resident'")
    if self.loss.ref_update_every and self.model.lora:
      raise ConfigError(f"{path}.loss.ref_update_every: a LoRA policy's reference is its own base with the adapters "
                        "off, which cannot move apart from the policy; train without model.lora, or set "
                        "ref_update_every=0")
    common.check_accumulation(self.data.batch_size, self.optimizer.grad_accum_steps, path)
    common.check_logps_path(self.logps_path, self.logps_chunk_size, path)


def mismatched_kto(loss: PreferenceLossConfig) -> bool:
  """Whether the loss is KTO with z0 estimated on mismatched pairs (which needs the reference in the step)."""
  return loss.algorithm == "kto" and loss.kto_loss_type == "kto" and loss.kto_reference_point == "mismatched"


def mean_dynamic_beta(loss: PreferenceLossConfig, records: list) -> float:
  """The mean over `records` of MM-DPO's beta_i = dynamic_beta(beta, margin_i, w, k) (NaN margins give beta)."""
  margins = np.asarray([np.nan if r.margin is None else r.margin for r in records], np.float32)
  betas = pref_lib.dynamic_beta(loss.beta, jnp.asarray(margins), loss.dynamic_beta_w, loss.dynamic_beta_k)
  return float(np.mean(np.asarray(betas, np.float64)))


def resident_reference(cfg: "PreferenceConfig") -> bool:
  """Whether the stage keeps a frozen reference copy in the model (vs precomputed log-probs or none)."""
  if not needs_reference(cfg.loss):
    return False
  if cfg.reference == "auto":
    return mismatched_kto(cfg.loss) or bool(cfg.loss.ref_update_every)
  return cfg.reference == "resident"


class PolicyWithReference(nnx.Module):
  """The trained policy and a frozen reference copy whose parameters are FrozenParams: they live in the train
  state's `extra`, get no gradient and no optimizer state."""

  def __init__(self, policy: nnx.Module, reference: nnx.Module):
    self.policy = policy
    self.reference = common.frozen(reference)


def needs_reference(loss: PreferenceLossConfig) -> bool:
  return loss.algorithm not in REFERENCE_FREE

# ------------------------------------------------------------------------------------------------ log-probs
def _halves(x):
  b = x.shape[0] // 2
  return x[:b], x[b:]


def sequence_logps(loss: PreferenceLossConfig, token_logps_2BxT: jax.Array, mask_2BxT: jax.Array) -> jax.Array:
  """(2B,) sequence log-probs of chosen then rejected rows: the plain sums, or LD-DPO's weighting
  (`losses.preference.ld_sequence_logps`) when loss.ld_alpha < 1."""
  if loss.ld_alpha == 1.0:
    return jnp.sum(token_logps_2BxT, axis=-1)
  return pref_lib.ld_sequence_logps(token_logps_2BxT, mask_2BxT, loss.ld_alpha, keep_end=loss.ld_keep_end)


def token_rewards(model: Any, batch: dict, better_ids: tuple[int, ...], worse_ids: tuple[int, ...],
                  chunk_size: int = 0, fused: bool = False) -> jax.Array:
  """T-REG token rewards (2B, T) of chosen then rejected rows under `model` (detached)."""
  better, mask = scoring.pair_token_logps(model, batch, chunk_size, better_ids, fused=fused)
  worse, _ = scoring.pair_token_logps(model, batch, chunk_size, worse_ids, fused=fused)
  return token_level.contrastive_token_rewards(better, worse, mask)

# ------------------------------------------------------------------------------------------------ the loss
def preference_loss_fn(loss: PreferenceLossConfig, *, resident: bool, chunk_size: int = 0, fused: bool = False,
                       better_ids: tuple[int, ...] = (), worse_ids: tuple[int, ...] = (), lora: bool = False
                       ) -> state_lib.LossFn:
  """loss_fn(model, batch, rng) -> (sum_i weight_i * loss_i, sum_i weight_i, metrics).

  model: a CausalLM (reference-free, or reference "precompute": the batch carries `ref_chosen_logps`,
  `ref_rejected_logps` (B,) and for T-REG with reference token rewards `ref_token_rewards` (2B, T)), or a
  `PolicyWithReference` (resident). With `lora` and resident, the model is the LoRA policy and the reference is the
  same model with its adapters off (`CausalLM.without_adapters`: the frozen base, no second copy).
  chunk_size / fused: the LM-head path of every log-prob (`scoring.token_logps`).
  Metrics: the pair metrics of `PAIR_METRICS` as weighted sums / weights.
  """
  types = tuple(loss.loss_type)
  type_weights = tuple(loss.loss_weights) or None

  def loss_fn(model, batch, rng):
    del rng
    policy = model.policy if resident and not lora else model
    reference = None
    if resident:
      reference = model.without_adapters() if lora else model.reference
    if loss.use_weighting:
      token_logps, mask, log_sum_sq = scoring.pair_token_logps(policy, batch, chunk_size, fused=fused,
                                                               return_log_sum_sq_probs=True)
    else:
      token_logps, mask = scoring.pair_token_logps(policy, batch, chunk_size, fused=fused)
    mask = mask.astype(jnp.float32)
    logps_2B = jnp.sum(token_logps, axis=-1)
    lengths_2B = jnp.sum(mask, axis=-1)
    len_c, len_r = _halves(lengths_2B)
    nll_c = -_halves(logps_2B)[0] / jnp.maximum(len_c, 1.0)  # The NLL term stays the plain per-token mean.
    pc, pr = _halves(sequence_logps(loss, token_logps, mask))
    w_B = batch["weight"].astype(jnp.float32)
    beta = loss.beta
    if loss.dynamic_beta_w > 0:
      # A negative margin (a pair the RM ranks the other way) or a NaN one keeps beta0 (`dynamic_beta` clamps).
      beta = pref_lib.dynamic_beta(loss.beta, batch["margin"], loss.dynamic_beta_w, loss.dynamic_beta_k)
    rc = rr = None
    if needs_reference(loss):
      if resident:
        ref_token_logps, ref_mask = scoring.pair_token_logps(reference, batch, chunk_size, fused=fused)
        rc, rr = _halves(jax.lax.stop_gradient(sequence_logps(loss, ref_token_logps, ref_mask)))
      else:
        rc, rr = batch["ref_chosen_logps"], batch["ref_rejected_logps"]
    dpo_kwargs = dict(loss_type=types, loss_weights=type_weights, label_smoothing=loss.label_smoothing,
                      f_divergence=loss.f_divergence, f_alpha=loss.f_alpha, discopop_tau=loss.discopop_tau,
                      rpo_alpha=loss.rpo_alpha, chosen_nll=nll_c)
    extra = {}
    if loss.algorithm == "dpo":
      pair_weights = None
      if loss.use_weighting:
        pair_weights = pref_lib.wpo_weights(token_logps, log_sum_sq, mask)
        extra["wpo/weight"] = metrics_lib.Avg(jnp.sum(w_B * pair_weights), jnp.sum(w_B))
      losses, m = pref_lib.dpo_loss(pc, pr, rc, rr, beta=beta, chosen_lengths=len_c, rejected_lengths=len_r,
                                    weights=pair_weights, **dpo_kwargs)
    elif loss.algorithm == "simpo":
      losses, m = reference_free.simpo_loss(pc, pr, len_c, len_r, beta=beta, gamma=loss.simpo_gamma,
                                            label_smoothing=loss.label_smoothing)
    elif loss.algorithm == "orpo":
      losses, m = reference_free.orpo_loss(pc, pr, len_c, len_r, chosen_nll=nll_c, beta=beta)
    elif loss.algorithm == "kto":
      kl = None
      if mismatched_kto(loss):
        if not resident:
          raise ValueError("KTO's mismatched reference point needs the reference model in the step (resident)")
        kl = _mismatched_kl(model, batch, w_B, chunk_size, lora=lora, fused=fused)
      losses, m = _kto(loss, logps_2B, jnp.concatenate([rc, rr]), w_B, beta, kl)
    else:  # treg
      if loss.treg_token_rewards == "policy":
        r_2BxT = jax.lax.stop_gradient(token_rewards(policy, batch, better_ids, worse_ids, chunk_size, fused))
      elif resident:
        r_2BxT = jax.lax.stop_gradient(token_rewards(reference, batch, better_ids, worse_ids, chunk_size, fused))
      else:
        r_2BxT = batch["ref_token_rewards"]
      tc, tr = _halves(token_logps)
      mc, mr = _halves(mask)
      r_c, r_r = _halves(r_2BxT)
      losses, m = token_level.treg_loss(tc, tr, rc, rr, r_c, r_r, mc, mr, beta=beta, alpha=loss.treg_alpha,
                                        **dpo_kwargs)
      extra = {k: metrics_lib.Avg(jnp.sum(w_B * m[k]), jnp.sum(w_B)) for k in ("treg/weight",)}
    if loss.algorithm == "kto":
      metrics = dict(m)  # Already weighted sums (see _kto).
    else:
      metrics = {k: metrics_lib.Avg(jnp.sum(w_B * m[k]), jnp.sum(w_B)) for k in PAIR_METRICS}
    metrics.update(extra)
    metrics["tokens"] = metrics_lib.Sum(jnp.sum(lengths_2B * (jnp.concatenate([w_B, w_B]) > 0)))
    return jnp.sum(w_B * losses), jnp.sum(w_B), metrics

  return loss_fn


def _mismatched_kl(model: Any, batch: dict, w_B: jax.Array, chunk_size: int, *, lora: bool = False,
                   fused: bool = False) -> jax.Array:
  """KTO's z0 before clamping: mean over the batch's mismatched rows of log pi(y'|x) - log pi_ref(y'|x), detached.
  `model`: a PolicyWithReference, or with `lora` the LoRA policy (reference: its adapters off).

  Rows whose prompt or completion comes from an empty (weight 0) batch row are left out; the mean is plain (TRL's).
  """
  ids, att, lm = scoring.mismatched_pair_rows(batch)
  policy, reference = (model, model.without_adapters()) if lora else (model.policy, model.reference)
  policy_logps, _ = scoring.token_logps(policy, ids, att, lm, chunk_size, fused=fused)
  ref_logps, _ = scoring.token_logps(reference, ids, att, lm, chunk_size, fused=fused)
  real_2B = (jnp.concatenate([w_B, w_B]) > 0).astype(jnp.float32)
  valid_2B = real_2B * jnp.roll(real_2B, 1)
  logratio_2B = jnp.sum(policy_logps, axis=-1) - jnp.sum(ref_logps, axis=-1)
  return jax.lax.stop_gradient(jnp.sum(valid_2B * logratio_2B) / jnp.maximum(jnp.sum(valid_2B), 1.0))


def _kto(loss: PreferenceLossConfig, logps_2B, ref_2B, w_B, beta, kl=None):
  """KTO on the unpaired view: per-pair loss = loss(chosen as desirable) + loss(rejected as undesirable).
  kl: z0 before clamping (the mismatched estimate); None: the weighted batch mean of the 2B log-ratios."""
  w_2B = jnp.concatenate([w_B, w_B])
  b = w_B.shape[0]
  desirable = jnp.concatenate([jnp.ones((b,), bool), jnp.zeros((b,), bool)])
  if kl is None:
    kl = jnp.sum(w_2B * (logps_2B - ref_2B)) / jnp.maximum(jnp.sum(w_2B), 1.0)
  beta_2B = beta if jnp.ndim(beta) == 0 else jnp.concatenate([beta, beta])
  losses_2B, m = kto_lib.kto_loss(logps_2B, ref_2B, desirable, kl=jax.lax.stop_gradient(kl), beta=beta_2B,
                                  desirable_weight=loss.desirable_weight,
                                  undesirable_weight=loss.undesirable_weight, loss_type=loss.kto_loss_type)
  lc, lr = _halves(losses_2B)
  reward_c, _ = _halves(m["rewards/chosen"])
  _, reward_r = _halves(m["rewards/rejected"])
  logp_c, logp_r = _halves(logps_2B)
  metrics = {
      "rewards/chosen": metrics_lib.Avg(jnp.sum(w_B * reward_c), jnp.sum(w_B)),
      "rewards/rejected": metrics_lib.Avg(jnp.sum(w_B * reward_r), jnp.sum(w_B)),
      "rewards/margin": metrics_lib.Avg(jnp.sum(w_B * (reward_c - reward_r)), jnp.sum(w_B)),
      "rewards/accuracy": metrics_lib.Avg(jnp.sum(w_B * (reward_c > reward_r)), jnp.sum(w_B)),
      "logps/chosen": metrics_lib.Avg(jnp.sum(w_B * jax.lax.stop_gradient(logp_c)), jnp.sum(w_B)),
      "logps/rejected": metrics_lib.Avg(jnp.sum(w_B * jax.lax.stop_gradient(logp_r)), jnp.sum(w_B)),
      "kl": jax.lax.stop_gradient(kl),
  }
  return lc + lr, metrics

# ------------------------------------------------------------------------------------------------ reference cache
class ReferenceCache:
  """Reference log-probs (and optional T-REG token rewards) of pairs, keyed by the pair's tokens."""

  def __init__(self, table: dict[bytes, tuple[float, float, np.ndarray | None]], meta: dict | None = None):
    """`meta`: the settings the sums depend on beyond the tokens (e.g. {"ld_alpha": 0.5}), saved with them."""
    self.table = table
    self.meta = dict(meta or {})

  @classmethod
  def compute(cls, ref_fn, batches: list[dict], meta: dict | None = None) -> "ReferenceCache":
    """ref_fn(batch) -> (ref_c (B,), ref_r (B,), token rewards (2B, T) or None) over `batches`."""
    table = {}
    for batch in batches:
      rc, rr, tok = jax.device_get(ref_fn(batch))
      b = rc.shape[0]
      for i in np.flatnonzero(scoring.nonempty_rows(batch)):  # Skip only empty filler rows.
        key = scoring.row_key(batch, i)
        rows = None if tok is None else np.stack([tok[i], tok[b + i]])
        table[key] = (float(rc[i]), float(rr[i]), rows)
    return cls(table, meta)

  def save(self, path: str) -> None:
    keys = list(self.table)
    values = np.asarray([self.table[k][:2] for k in keys], np.float64)
    arrays = {"keys": np.asarray(keys, dtype=object), "values": values, "meta": np.asarray(json.dumps(self.meta))}
    if keys and self.table[keys[0]][2] is not None:
      arrays["token_rewards"] = np.asarray([self.table[k][2] for k in keys], dtype=object)
    tmp = path + ".tmp.npz"
    np.savez(tmp, **arrays)
    os.replace(tmp, path)

  @classmethod
  def load(cls, path: str) -> "ReferenceCache":
    with np.load(path, allow_pickle=True) as f:
      keys, values = f["keys"], f["values"]
      tok = f["token_rewards"] if "token_rewards" in f else [None] * len(keys)
      meta = json.loads(str(f["meta"])) if "meta" in f else {}
      return cls({bytes(k): (float(v[0]), float(v[1]), t) for k, v, t in zip(keys, values, tok)}, meta)

  def attach(self, batch: dict) -> dict:
    """The batch plus `ref_chosen_logps`, `ref_rejected_logps` (B,) [and `ref_token_rewards` (2B, T)]."""
    b, t = batch["weight"].shape[0], scoring.row_length(batch)
    rc, rr = np.zeros((b,), np.float32), np.zeros((b,), np.float32)
    tok = None
    for i in np.flatnonzero(scoring.nonempty_rows(batch)):  # Not the empty filler rows (end of a finite pass).
      key = scoring.row_key(batch, i)
      if key not in self.table:
        raise KeyError("reference cache: a batch pair has no precomputed reference log-probs (was the cache "
                       "built from other data or another tokenizer? delete reference_cache.npz to rebuild)")
      rc[i], rr[i], rows = self.table[key]
      if rows is not None:
        if tok is None:
          tok = np.zeros((2 * b, t), np.float32)
        n = min(t, rows.shape[1])
        tok[i, :n], tok[b + i, :n] = rows[0, :n], rows[1, :n]
    out = dict(batch, ref_chosen_logps=rc, ref_rejected_logps=rr)
    if tok is not None:
      out["ref_token_rewards"] = tok
    return out


def with_reference_updates(step_fn: state_lib.StepFn, every: int, alpha: float) -> state_lib.StepFn:
  """TR-DPO's schedule around a resident-reference step: after the update that makes state.step a multiple of
  `every`, ref <- alpha * policy + (1 - alpha) * ref (`common.update_reference`; TRL's SyncRefModelCallback at
  on_step_end). The metric ref/updates counts the updates in the log window."""

  def step(state, batch):
    state, metrics = step_fn(state, batch)
    due = state.step % every == 0
    state = common.update_reference(state, alpha, due)
    return state, {**metrics, "ref/updates": metrics_lib.Sum(due.astype(jnp.float32))}

  return step


# ------------------------------------------------------------------------------------------------ setup and stage
def preference_setup(cfg: PreferenceConfig, model_config: Any, pretrained: dict | None, optimizer: Any, mesh: Any
                     ) -> state_lib.StateSetup:
  """The policy (precompute / reference-free) or PolicyWithReference (resident) train state. With `model.lora`,
  always the LoRA policy alone (frozen base in `extra`): its resident reference is the base, adapters off."""
  if cfg.model.lora:
    return common.policy_setup(model_config, pretrained, optimizer, cfg.seed, mesh, lora=cfg.model.lora)
  if resident_reference(cfg):
    def model_fn(key):
      return PolicyWithReference(CausalLM(model_config, rngs=nnx.Rngs(key)),
                                 CausalLM(model_config, rngs=nnx.Rngs(key)))
    setup = state_lib.init_train_state(model_fn, optimizer, cfg.seed, mesh=mesh,
                                       shardings=common.logical_or_replicated(mesh))
    if pretrained is None:
      return setup
    fresh = setup.init

    def init():
      state = fresh()
      params = common.overwrite(state.params, pretrained, ("policy",))
      extra = common.overwrite(state.extra, {k: v for k, v in pretrained.items()}, ("reference",))
      return state.replace(params=params, extra=extra)

    return setup._replace(init=init)
  return common.policy_setup(model_config, pretrained, optimizer, cfg.seed, mesh)


def _reference_cache(cfg: PreferenceConfig, setup: state_lib.StateSetup, records: list, tokenizer: Any,
                     better: tuple[int, ...], worse: tuple[int, ...], workdir: str, shared_prompt: bool
                     ) -> ReferenceCache:
  """Loads `workdir/reference_cache.npz`, or computes it with the initial policy (= the reference) and saves it."""
  path = os.path.join(workdir, "reference_cache.npz")
  # What the cached sums depend on besides the tokens (a cache from before `meta` existed had the plain sums).
  meta = {"ld_alpha": cfg.loss.ld_alpha, **({"ld_keep_end": True} if cfg.loss.ld_keep_end else {})}
  if os.path.exists(path):
    cache = ReferenceCache.load(path)
    cached = {"ld_alpha": 1.0, **cache.meta}
    if cached == meta:
      print(f"[preference] reusing reference log-probs from {path}", flush=True)
      return cache
    print(f"[preference] {path} holds reference log-probs for {cached}, this run needs {meta}: recomputing",
          flush=True)
  with_tokens = cfg.loss.algorithm == "treg" and cfg.loss.treg_token_rewards == "reference"
  state = setup.init()
  chunk, _ = scoring.resolve_logps_path(cfg.logps_path, cfg.logps_chunk_size)  # no gradient: the forward is all

  @jax.jit
  def ref_fn(params, extra, batch):
    # The reference is the initial policy; a LoRA policy's is its base (adapters off; B = 0 makes them equal).
    model = nnx.merge(setup.graphdef, params, extra).without_adapters()
    token_logps, mask = scoring.pair_token_logps(model, batch, chunk)
    rc, rr = _halves(sequence_logps(cfg.loss, token_logps, mask))
    tok = token_rewards(model, batch, better, worse, chunk) if with_tokens else None
    return rc, rr, tok

  batches = inputs_lib.eval_batches(records, tokenizer, cfg.data, "preference", shared_prompt=shared_prompt)
  cache = ReferenceCache.compute(lambda b: ref_fn(state.params, state.extra, b), batches, meta)
  del state
  if distributed.is_primary():  # Every process computed the same table; one writes it.
    os.makedirs(workdir, exist_ok=True)
    cache.save(path)
  distributed.barrier(f"reference_cache:{path}")
  print(f"[preference] reference log-probs of {len(cache.table)} pairs saved to {path}", flush=True)
  return cache


def run(cfg: PreferenceConfig, workdir: str, inputs: dict) -> dict:
  """The "preference" stage: (reference pass), training, held-out pair metrics, saves `workdir/model`."""
  data, loss = cfg.data, cfg.loss
  context = inputs_lib.stage_context(cfg, inputs)
  world, mesh, model_config, pretrained, tokenizer = context
  train_records, eval_records, report = inputs_lib.prepared_pairs(data, context, inputs)
  # Pairs too long for the token budget: counted and reported (train), left out of the held-out batches.
  _, train_budget = inputs_lib.budgeted_records(train_records, tokenizer, data, "preference", "train")
  eval_records, eval_budget = inputs_lib.budgeted_records(eval_records, tokenizer, data, "preference", "eval")
  report = {**report, "token_budget": {"train": train_budget, "eval": eval_budget}}
  extra_metrics = {}
  if loss.dynamic_beta_w > 0:
    mean_beta = mean_dynamic_beta(loss, train_records)
    extra_metrics["beta/mean"] = mean_beta
    if loss.dynamic_beta_mode == "dataset_mean":
      loss = dataclasses.replace(loss, beta=mean_beta, dynamic_beta_w=0.0)
    print(f"[preference] dynamic beta ({cfg.loss.dynamic_beta_mode}): mean over {len(train_records)} training pairs "
          f"{mean_beta:.6g}", flush=True)
  better = worse = ()
  if loss.algorithm == "treg":
    better = inputs_lib.control_ids(tokenizer, loss.treg_better, "config.loss.treg_better")
    worse = inputs_lib.control_ids(tokenizer, loss.treg_worse, "config.loss.treg_worse")
  optimizer = optim.make_optimizer(cfg.optimizer)
  setup = preference_setup(cfg, model_config, pretrained, optimizer, mesh)
  resident = resident_reference(cfg)
  lora = bool(cfg.model.lora)
  chunk_size, fused = common.logps_path(cfg)
  loss_fn = preference_loss_fn(loss, resident=resident, chunk_size=chunk_size, fused=fused, better_ids=better,
                               worse_ids=worse, lora=lora)
  step_fn = state_lib.make_train_step(setup.graphdef, loss_fn, optimizer,
                                      grad_accum_steps=cfg.optimizer.grad_accum_steps,
                                      schedule=optim.make_schedule(cfg.optimizer))
  if loss.ref_update_every:
    step_fn = with_reference_updates(step_fn, loss.ref_update_every, loss.ref_update_alpha)
  shared, layout_report = inputs_lib.choose_shared_prompt(data, train_records, tokenizer, model_config,
                                                          with_lm_head=True)
  report = {**report, "shared_prompt": layout_report}
  data_iter = inputs_lib.train_iterator(train_records, tokenizer, data, "preference", cfg.seed, shared_prompt=shared)
  batches = inputs_lib.eval_batches(eval_records, tokenizer, data, "preference", shared_prompt=shared)
  if needs_reference(loss) and not resident:
    cache = _reference_cache(cfg, setup, train_records + eval_records, tokenizer, better, worse, workdir, shared)
    data_iter = inputs_lib.AttachedBatches(data_iter, cache)
    batches = [cache.attach(b) for b in batches]

  @jax.jit
  def eval_step(state, batch):
    total, weight, metrics = loss_fn(nnx.merge(setup.graphdef, state.params, state.extra), batch, None)
    return {**{k: metrics_lib.as_avg(v) for k, v in metrics.items()}, "loss": metrics_lib.Avg(total, weight)}

  def eval_fn(state):
    acc = None
    for b in batches:
      m = jax.device_get(eval_step(state, b))
      acc = m if acc is None else metrics_lib.merge(acc, m)
    values = metrics_lib.compute(acc)
    return {k: v for k, v in values.items() if k in ("loss", "wpo/weight") + PAIR_METRICS}

  results = loop_lib.train(config=cfg.loop, workdir=workdir, setup=setup, step_fn=step_fn, data_iter=data_iter,
                           mesh=mesh, eval_fn=eval_fn if batches else None, run_config=dataclasses.asdict(cfg))
  adapter_dir = os.path.join(workdir, "adapters") if lora else None
  model_dir = artifacts.save_policy(setup, results["state"], os.path.join(workdir, "model"),
                                    prefix="policy" if resident and not lora else "", tokenizer=tokenizer,
                                    adapter_dir=adapter_dir)
  if extra_metrics:
    results = {**results, "metrics": {**results["metrics"], **extra_metrics}}
  extra = {} if adapter_dir is None else {"adapter_dir": adapter_dir}
  return common.stage_outputs(results, model_dir=model_dir, data_report=report, **extra)
