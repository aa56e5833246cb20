"""The "rl" stage. Online RL from rewards: GRPO (Shao et al. 2024), RLOO (Ahmadian et al. 2024) and PPO with a value
model (Schulman et al. 2017; Ziegler et al. 2019) in one step, through the loop.

Design: ONE jitted program per loop step does the whole iteration, so sampling and updates never leave XLA:
  1. rollout: G samples per prompt from the current policy with `sampling.generate` (KV cache, while_loop),
     rows prompt-major (contiguous groups of G, the losses library's layout);
  2. scoring: the weighted reward sources (`stages.reward_sources`; reward models run inside the program, BLEU and
     Python functions through `jax.pure_callback`); the old-policy and reference log-probs by one
     teacher-forced forward each (logits / temperature, as TRL), all under stop_gradient;
  3. advantages: `group_advantages` (GRPO, scale_rewards group/batch/none) or `rloo_advantages`; optionally DAPO's
     soft overlong penalty on the rewards first, and DAPO's dynamic sampling (oversampled prompts, the groups
     with reward variance kept, `select_groups`);
     KL to the frozen reference either as a reward penalty (r - beta * sum_t k1, before the advantages) or as
     a loss term (beta * k1/k2/k3 per token);
  4. `num_iterations` (mu) optimizer updates on that rollout, a `lax.scan` over the shared
     `state.make_train_step` (so gradient accumulation and metrics work as for every trainer), each the
     PPO-clipped surrogate with the rollout's old log-probs, or a named GRPO variant's objective (`loss.variant`:
     Dr. GRPO, DAPO, GSPO, GSPO-token, CISPO from `losses.policy_variants`).
One loop step is therefore one rollout batch and mu optimizer updates (`state.step` counts the updates).
With text rewards (Python functions) the stage runs 1-2 in two programs around the host instead: `host_scored_rollouts`
samples the rollout (`sample`, same key), scores it with the text rewards on the host and hands both to the step,
whose `rollout` then reads them; the step computes what it computes with the rewards as callbacks, to the bit, and
holds no host callback, which XLA's persistent cache refuses to keep (several processes keep the callbacks).

PPO (loss.algorithm "ppo", `make_ppo_step`) replaces 3-4: the value model (a head on the policy's backbone, or a
critic initialized from a reward model) predicts V per response token; `losses.ppo.ppo_advantages` turns the
sequence score (on the last token), the per-token KL penalty (the state's coefficient) and optionally the process
reward's step rewards into GAE advantages (whitened) and returns; then ppo_epochs passes of num_mini_batches
updates (permutations from the rollout key) on the clipped surrogate + vf_coef * clipped value loss; then the KL
controller updates the coefficient, a `KLCoef` in the state's extra (exact resume).

The model in the train state is `RLModel`: the trained policy plus a frozen reference and frozen reward models
whose parameters are `FrozenParam`s in the state's `extra` (no gradient, no optimizer state; checkpointed with
the state).

LoRA (`model.lora`; Hu et al. 2021, arXiv:2106.09685): the policy carries adapters and its base weights are frozen
(in `extra`, once); only the adapters train. The reference is the policy with its adapters switched off
(`CausalLM.without_adapters()`; equal to the initial policy because B starts at 0), so RLModel holds no second
copy of the weights. PPO with LoRA: the value head on the policy's backbone (value_model '') trains fully (it is
new) and its value loss reaches the shared adapters, as it reaches the shared backbone without LoRA; a separate
critic (value_model a reward model) is trained fully: `model.lora` is the policy's. The saved policy is merged
(`workdir/model`), the adapters are saved alone in `workdir/adapters`.

The rollout key is fold_in(fold_in(state.rng, state.step), ROLLOUT_STREAM) and the prompt iterator checkpoints its
position, so a resumed run draws exactly the rollouts of an uninterrupted one.

Online DPO (loss.algorithm "online_dpo", `make_online_dpo_step`; Guo et al. 2024, "Direct Language Model Alignment
from Online AI Feedback", arXiv 2402.04792; TRL's OnlineDPOTrainer) replaces 3-4: each prompt's 2 samples are
scored by the reward sources (+ TRL's missing-EOS penalty), the higher-scored one is chosen (`select_pairs`), and
the DPO-family loss (`losses.preference.dpo_loss`) of the pair against the reference is minimized; the reference
then moves on a schedule (`update_reference`: every `ref_update_every` rollouts ref <- alpha * policy + (1 - alpha)
* ref, TR-DPO's soft update, alpha = 1 its hard update; Gorbatovski et al. 2024, "Learn Your Reference Model for
Real Good Alignment", arXiv 2404.09656). The reference is a FrozenParam in the state's extra, so every checkpoint
holds its current value and a resumed run continues exactly.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import os
from typing import Any, Callable, Mapping, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec as P

from jaxrlhf.config import ConfigError, field, stage_ref
from jaxrlhf.data import padding
from jaxrlhf.losses import difficulty_scaling as ds
from jaxrlhf.losses import policy_gradient as pg
from jaxrlhf.losses import policy_variants as pv
from jaxrlhf.losses import ppo as ppo_lib
from jaxrlhf.losses import preference as preference_lib
from jaxrlhf.models import CausalLM
from jaxrlhf.models import lora as lora_lib
from jaxrlhf.models.heads import HeadConfig, RewardHead
from jaxrlhf.models.reward_model import RewardModel
from jaxrlhf.parallel import MeshConfig
from jaxrlhf.sampling.generate import content_lengths, generate
from jaxrlhf.stages import artifacts
from jaxrlhf.stages import common
from jaxrlhf.stages import inputs as inputs_lib
from jaxrlhf.stages import reward_sources as rewards_lib
from jaxrlhf.train import loop as loop_lib
from jaxrlhf.train import metrics as metrics_lib
from jaxrlhf.train import optim
from jaxrlhf.train import scoring
from jaxrlhf.train import state as state_lib

ALGORITHMS = ("grpo", "rloo", "ppo", "online_dpo")
VARIANTS = ("",) + tuple(pv.VARIANTS)  # "": the objective from algorithm / scale_rewards / loss_aggregation / epsilon
KL_MODES = ("none", "reward", "loss")
DIFFICULTY_SCALINGS = ("none", "grpo_s")
ROLLOUT_STREAM = 0x5eed
SHUFFLE_STREAM = 0x5f0f  # PPO's minibatch permutations: fold_in(rollout key, this)
# PPO-only keys (TRL PPOConfig names where they exist); with another algorithm a changed one is a ConfigError.
PPO_KEYS = ("ppo_epochs", "num_mini_batches", "gamma", "lam", "vf_coef", "cliprange_value", "whiten_rewards",
            "kl_controller", "kl_target", "kl_horizon", "token_rewards")
# Online-DPO-only keys; with another algorithm a changed one is a ConfigError.
ONLINE_DPO_KEYS = ("dpo_loss_type", "discopop_tau", "missing_eos_penalty", "ties", "ref_update_every",
                   "ref_update_alpha")
# The DPO-family losses that need nothing but the pair's log-probs, beta and lengths (no label smoothing, no NLL, no
# batch sorting); TRL's OnlineDPOTrainer has sigmoid and ipo.
ONLINE_DPO_LOSS_TYPES = ("sigmoid", "ipo", "hinge", "nca_pair", "bco_pair", "sppo_hard", "apo_zero", "apo_down",
                         "discopop", "sigmoid_norm")
TIES = ("mask", "first")
OLD_LOGPS = ("auto", "rollout")
# Prompt-batch keys of a rollout sampled before the step (`host_scored_rollouts`), and the prefix of the text rewards'
# scores on the GRPO-S demonstrations.
SAMPLED_TOKENS, SAMPLED_MASK, SAMPLED_LENGTHS = "sampled_tokens", "sampled_mask", "sampled_lengths"
DEMO_PREFIX = "demo/"


@dataclasses.dataclass(frozen=True)
class RLLossConfig:
  """Algorithm and loss hyperparameters (TRL names where they exist).

  num_generations: G samples per prompt (>= 2 for the group baselines of GRPO / RLOO and online DPO's pairs; PPO's
  critic needs no group, so 1 is allowed there). scale_rewards: GRPO's advantage scaling ("group", "batch", "none";
  algorithm "grpo" only). rloo_normalize: batch-standardize RLOO advantages (algorithm "rloo" only). kl_mode:
  "reward" subtracts beta * sum_t k1 from each sequence's reward (always k1, the per-token reward penalty of TRL's
  PPO / RLOO trainers, so kl_estimator stays at its default or is "k1"; PPO's per-token penalty reads kl_estimator);
  "loss" adds beta * k(kl_estimator) per token to the loss; "none" ignores the reference (kl_estimator and beta
  unused; beta 0 is accepted as the same statement).
  A key changed from its default where the chosen algorithm / kl_mode does not read it is a ConfigError.
  epsilon / epsilon_high: PPO clip range (epsilon_high < 0: = epsilon). num_iterations: mu updates per rollout.
  old_logps: where the clipped ratio's old-policy log-probs come from. "auto": with one update per rollout
  (num_iterations 1; micro-batches of an accumulated update share its parameters) they are the update's own
  log-probs under stop_gradient (rho = 1 in value, the gradient A * grad log pi; TRL's GRPOTrainer does the same
  when num_iterations is 1), which saves the rollout its policy forward; the rollout's entropy and KL metrics then
  come from the update's forward (over the kept rows with dynamic sampling). Not with kl_mode "reward" (the reward
  needs the policy's log-probs before the update) or PPO, which keep the rollout forward (PPO takes no old_logps
  setting: its epochs of updates always share the rollout's log-probs). Online DPO has no ratio;
  its rollout's policy forward only yields the `entropy` / `kl` metrics, which it reports at temperature 1 like its
  loss, so "auto" with one update per rollout takes them from the update's forward over the same rows instead, at
  any sampling temperature (`online_dpo_metrics_from_update`). "rollout": always the rollout's forward
  (`detached_old_logps`).

  variant: a named GRPO variant of `policy_variants.VARIANTS` (grpo, dr_grpo, dapo, gspo, gspo_token, cispo). It
  fixes the surrogate, the token aggregation, the advantage scaling and the paper's clip ranges, so with a variant
  `algorithm`, `scale_rewards`, `loss_aggregation`, `epsilon` and `epsilon_high` must stay at their defaults (a
  changed one is a ConfigError naming it). "" keeps the objective those keys describe.
  dynamic_sampling: DAPO's filter (works with every variant and algorithm): each step samples `oversample` *
  prompts_per_step prompts' groups and trains on the first prompts_per_step groups whose task rewards (the reward
  sources' weighted sum, before the KL and overlong terms) are not all equal, refilled in order with the others
  when too few qualify (their advantages are set to 0). overlong_cache: DAPO's soft overlong punishment
  (`policy_variants.soft_overlong_penalty` with L_max = sampling.max_new_tokens, L_cache = overlong_cache) added
  to every row's reward; 0 = off.

  algorithm "ppo" (PPO with a value model; Ziegler et al. 2019, Stiennon et al. 2020, TRL's PPOTrainer): per-token
  rewards r_t = -kl_coef * k(pi_old, pi_ref)_t (+ the sequence score on the last response token), GAE(`gamma`,
  `lam`) with the value model's predictions, advantages whitened over the batch's tokens (`losses.ppo`), then
  `ppo_epochs` passes over the rollout, each a fresh permutation (from the seed) cut into `num_mini_batches`
  minibatches, one optimizer update per minibatch on the clipped surrogate (clip `epsilon`) + `vf_coef` * the
  clipped value loss (`cliprange_value`). KL: kl_mode "reward" (in the per-token reward, estimator `kl_estimator`,
  TRL: k1) or "none"; `beta` is the initial coefficient, kept fixed (`kl_controller` "fixed") or adapted between
  rollouts by Ziegler et al.'s controller ("adaptive", `kl_target` nats, `kl_horizon` samples). `whiten_rewards`:
  TRL's option (rescale the per-token rewards). `num_generations` samples per prompt stay independent episodes.
  token_rewards: the process reward sources' refined step rewards go on their own tokens (per-token returns,
  where Gao et al. 2024 test Clip / Delta) instead of their sum on the last token with the other sources.

  difficulty_scaling "grpo_s": DR-IRL's GRPO-S (Cheng et al. 2025, arXiv 2503.18991; `losses.difficulty_scaling`):
  each GRPO advantage times alpha^D(prompt) * alpha^M. Every train prompt needs a demonstration (reference) response,
  the prompt table's column `reference_column` (the world's "references"; files: a text column). alpha^D is computed
  once per prompt before training from delta = 1 - W, W the clause similarity of one sample of the initial policy
  (fixed key) to the demonstration with content tokens as clauses and the initial policy's input embedding rows as the
  encoder (an offline stand-in for the paper's CLIP / text encoder), or read from the column `hardness_column`
  (delta in [0, 2], e.g. computed offline with a real encoder); the mean in alpha^D runs over all train prompts.
  alpha^M comes from each step's reward gaps r(q, o_i) - r(q, o~) (the reward sources' weighted sum, before KL and
  overlong terms; the demonstration scored by the same sources in the step) pooled per prompt's group
  (`responsiveness_pool` "group") or over the batch ("batch"), outliers (gap - mean)^2 > `responsiveness_tau`
  left out. "none" (default): today's advantages, bit for bit.
  algorithm "online_dpo" (Guo et al. 2024, arXiv 2402.04792; TRL's OnlineDPOTrainer): num_generations must be 2; the
  reward sources' weighted sum (+ overlong term), minus `missing_eos_penalty` on rows without an end token (TRL's
  option; 0 = off), labels each prompt's pair; the loss is `dpo_loss(loss_type=dpo_loss_type, beta=beta)` on the
  summed log-probs of chosen and rejected under the policy and the reference at temperature 1 (TRL reads the raw
  logits), mean over pairs. "ipo" is TRL OnlineDPOTrainer's (scores not divided by the lengths, Azar et al. Eq. 17
  on sequence log-probs), "sigmoid_norm" divides by the lengths. ties: pairs with equal scores carry no preference;
  "mask" drops them from the loss (weight 0; `pairs/ties` counts them), "first" keeps them with the first sample
  chosen (TRL: `first_half >= second_half`). Reference schedule (TR-DPO, Gorbatovski et al. 2024, arXiv
  2404.09656, as TRL's SyncRefModelCallback): after every `ref_update_every`-th rollout (0 = never, the frozen
  initial policy), ref <- ref_update_alpha * policy + (1 - ref_update_alpha) * ref; alpha 1 is the hard copy.
  kl_mode / kl_estimator do not apply (the DPO loss holds the KL through beta) and stay at their defaults.
  """
  algorithm: str = field("grpo", choices=ALGORITHMS)
  num_generations: int = field(4, min=1)
  scale_rewards: str = field("group", choices=pg.SCALE_REWARDS)
  rloo_normalize: bool = field(False)
  beta: float = field(0.04, min=0.0)
  kl_mode: str = field("loss", choices=KL_MODES)
  kl_estimator: str = field("k3", choices=pg.KL_ESTIMATORS)
  epsilon: float = field(0.2, min=0.0)
  epsilon_high: float = field(-1.0)
  loss_aggregation: str = field("token_mean", choices=pg.LOSS_AGGREGATIONS)
  num_iterations: int = field(1, min=1)
  old_logps: str = field("auto", choices=OLD_LOGPS)
  variant: str = field("", choices=VARIANTS)
  dynamic_sampling: bool = field(False)
  oversample: int = field(1, min=1)
  overlong_cache: int = field(0, min=0)
  ppo_epochs: int = field(4, min=1)
  num_mini_batches: int = field(1, min=1)
  gamma: float = field(1.0, min=0.0, max=1.0)
  lam: float = field(0.95, min=0.0, max=1.0)
  vf_coef: float = field(0.1, min=0.0)
  cliprange_value: float = field(0.2, min=0.0)
  whiten_rewards: bool = field(False)
  kl_controller: str = field("fixed", choices=ppo_lib.KL_CONTROLLERS)
  kl_target: float = field(6.0, min=1e-6)
  kl_horizon: float = field(10000.0, min=1e-6)
  token_rewards: bool = field(False)
  difficulty_scaling: str = field("none", choices=DIFFICULTY_SCALINGS)
  responsiveness_tau: float = field(1.0, min=0.0)
  responsiveness_pool: str = field("group", choices=ds.RESPONSIVENESS_POOLS)
  reference_column: str = field("references")
  hardness_column: str = field("")
  dpo_loss_type: str = field("sigmoid", choices=ONLINE_DPO_LOSS_TYPES)
  # DiscoPOP's modulation temperature (TRL's discopop_tau); dpo_loss_type 'discopop' only.
  discopop_tau: float = field(0.05)
  missing_eos_penalty: float = field(0.0, min=0.0)
  ties: str = field("mask", choices=TIES)
  ref_update_every: int = field(0, min=0)
  ref_update_alpha: float = field(1.0, min=0.0, max=1.0)
  # How every response log-prob (rollout, old policy, reference, loss) applies the LM head
  # (`train.scoring.resolve_logps_path`): "auto" is "fused" on GPUs (the hand-written LM-head backward; its entropy
  # is a detached metric), elsewhere "chunked" when logps_chunk_size > 0 (chunks of that many tokens, never the
  # (R, N, V) fp32 logits) and "full" (one full log-softmax) otherwise.
  logps_path: str = field("auto", choices=scoring.LOGPS_PATHS)
  logps_chunk_size: int = field(0, min=0)


  def _refuse_changed(self, path: str, defaults: "RLLossConfig", keys: Sequence[str], owner: str,
                      setting: str) -> None:
    """Refuses a key of `keys` changed from its default while the setting that reads them (`owner`, e.g.
    "algorithm 'ppo'") is off (`setting`, e.g. "algorithm is 'grpo'"): it would be silently ignored."""
    for key in keys:
      if getattr(self, key) != getattr(defaults, key):
        raise ConfigError(f"{path}.{key}: {getattr(self, key)!r} applies to {owner} only ({path}.{setting}); "
                          f"leave it at {getattr(defaults, key)!r}")

  def validate(self, path: str) -> None:
    defaults = RLLossConfig()
    common.check_logps_path(self.logps_path, self.logps_chunk_size, path)
    if self.num_generations < 2 and self.algorithm != "ppo":
      raise ConfigError(f"{path}.num_generations: algorithm {self.algorithm!r} compares samples of one prompt "
                        f"(a group baseline or a pair) and needs >= 2, got {self.num_generations}; only 'ppo' "
                        "(a critic baseline) runs with 1")
    self._validate_difficulty(path, defaults)
    if self.algorithm != "online_dpo":
      self._refuse_changed(path, defaults, ONLINE_DPO_KEYS, "algorithm 'online_dpo'",
                           f"algorithm is {self.algorithm!r}")
    else:
      self._validate_online_dpo(path, defaults)
    if self.algorithm != "ppo":
      self._refuse_changed(path, defaults, PPO_KEYS, "algorithm 'ppo'", f"algorithm is {self.algorithm!r}")
    else:
      self._validate_ppo(path, defaults)
    if self.variant:
      # The variant decides these; a changed one would be silently ignored, so it is refused.
      defaults = RLLossConfig()
      for key in ("algorithm", "scale_rewards", "loss_aggregation", "epsilon", "epsilon_high"):
        if getattr(self, key) != getattr(defaults, key):
          spec = pv.VARIANTS[self.variant]
          raise ConfigError(
              f"{path}.{key}: {getattr(self, key)!r} conflicts with {path}.variant={self.variant!r}, which fixes "
              f"the objective (group advantages scaled {spec.scale_rewards!r}, {spec.surrogate!r} surrogate, "
              f"{spec.loss_aggregation!r} aggregation, clip epsilon={spec.epsilon}, epsilon_high={spec.epsilon_high});"
              f" leave {key} at its default {getattr(defaults, key)!r} or set variant ''")
    if self.oversample > 1 and not self.dynamic_sampling:
      raise ConfigError(f"{path}.oversample: {self.oversample} > 1 samples extra groups for dynamic sampling only; "
                        f"set {path}.dynamic_sampling=True or oversample=1")
    self._validate_advantage_keys(path, defaults)
    self._validate_kl_estimator(path, defaults)

  def _validate_advantage_keys(self, path: str, defaults: "RLLossConfig") -> None:
    # `advantages` reads scale_rewards for GRPO (and the variants, which fix it) and rloo_normalize for RLOO only.
    if self.algorithm == "grpo":
      self._refuse_changed(path, defaults, ("rloo_normalize",), "algorithm 'rloo'", "algorithm is 'grpo'")
    if self.algorithm == "rloo":
      self._refuse_changed(path, defaults, ("scale_rewards",), "algorithm 'grpo'", "algorithm is 'rloo'")

  def _validate_kl_estimator(self, path: str, defaults: "RLLossConfig") -> None:
    """kl_estimator is read by kl_mode "loss" (the per-token term) and by PPO's per-token reward penalty. GRPO /
    RLOO's kl_mode "reward" subtracts beta * sum_t k1 (the standard per-token reward penalty of TRL's PPO / RLOO
    trainers), so only "k1" (what it uses) or the untouched default is accepted there; kl_mode "none" reads none.
    (Online DPO refuses a changed one in `_validate_online_dpo`.) Likewise a KL weight `beta` set with kl_mode
    "none", which reads none (0, "no KL" said twice, is accepted)."""
    if self.algorithm == "online_dpo":
      return
    if self.kl_mode == "none" and self.beta not in (0.0, defaults.beta):
      raise ConfigError(f"{path}.beta: {self.beta!r} weighs the KL to the reference, which {path}.kl_mode='none' "
                        f"leaves out; set kl_mode 'loss' or 'reward' to use it, or leave beta at "
                        f"{defaults.beta!r} (or 0)")
    if self.kl_estimator == defaults.kl_estimator:
      return
    if self.kl_mode == "none":
      raise ConfigError(f"{path}.kl_estimator: {self.kl_estimator!r} is not used with {path}.kl_mode='none' (no KL "
                        f"term); leave it at {defaults.kl_estimator!r}")
    if self.kl_mode == "reward" and self.algorithm != "ppo" and self.kl_estimator != "k1":
      raise ConfigError(f"{path}.kl_estimator: {self.kl_estimator!r} is not used with {path}.kl_mode='reward' and "
                        f"algorithm {self.algorithm!r}: the reward penalty is r - beta * sum_t k1 (TRL's per-token "
                        f"k1 penalty); set 'k1', or kl_mode 'loss' to use {self.kl_estimator!r}")

  def _validate_difficulty(self, path: str, defaults: "RLLossConfig") -> None:
    if self.difficulty_scaling == "none":
      self._refuse_changed(path, defaults, ("responsiveness_tau", "responsiveness_pool", "reference_column",
                                            "hardness_column"), "difficulty_scaling 'grpo_s'",
                           "difficulty_scaling is 'none'")
      return
    if self.algorithm != "grpo":
      raise ConfigError(f"{path}.difficulty_scaling: 'grpo_s' scales GRPO's group advantages; {path}.algorithm is "
                        f"{self.algorithm!r} (expected 'grpo')")
    if self.dynamic_sampling:
      raise ConfigError(f"{path}.dynamic_sampling: not combined with difficulty_scaling 'grpo_s' (the kept groups' "
                        "advantages would lose their difficulty coefficients); set one of them off")
    if not self.reference_column:
      raise ConfigError(f"{path}.reference_column: difficulty_scaling 'grpo_s' needs the prompt table's column of "
                        "demonstration responses (the world's 'references')")

  def _validate_online_dpo(self, path: str, defaults: "RLLossConfig") -> None:
    if self.num_generations != 2:
      raise ConfigError(f"{path}.num_generations: algorithm 'online_dpo' samples a pair per prompt; set "
                        f"num_generations=2 (got {self.num_generations})")
    if self.ref_update_alpha <= 0.0:
      raise ConfigError(f"{path}.ref_update_alpha: must lie in (0, 1] (1 = a hard copy of the policy); got "
                        f"{self.ref_update_alpha}")
    if not self.discopop_tau > 0:
      raise ConfigError(f"{path}.discopop_tau: must be > 0, got {self.discopop_tau}")
    if self.discopop_tau != defaults.discopop_tau and self.dpo_loss_type != "discopop":
      raise ConfigError(f"{path}.discopop_tau: read by dpo_loss_type 'discopop' only ({path}.dpo_loss_type is "
                        f"{self.dpo_loss_type!r}); leave it at {defaults.discopop_tau}")
    # Keys whose meaning the DPO loss replaces: a changed one would be silently ignored.
    replaced = {"variant": "a GRPO objective", "dynamic_sampling": "pairs are not filtered by reward variance",
                "oversample": "pairs are not filtered by reward variance", "scale_rewards": "no advantages",
                "rloo_normalize": "no advantages", "epsilon": "no clipped ratio", "epsilon_high": "no clipped ratio",
                "loss_aggregation": "the loss is a mean over pairs",
                "kl_mode": "the DPO loss holds the KL to the reference through beta",
                "kl_estimator": "the DPO loss holds the KL to the reference through beta"}
    for key, why in replaced.items():
      if getattr(self, key) != getattr(defaults, key):
        raise ConfigError(f"{path}.{key}: {getattr(self, key)!r} does not apply to algorithm 'online_dpo' ({why}); "
                          f"leave it at {getattr(defaults, key)!r}")

  def _validate_ppo(self, path: str, defaults: "RLLossConfig") -> None:
    if self.variant:
      raise ConfigError(f"{path}.variant: {self.variant!r} is a GRPO objective; algorithm 'ppo' takes variant ''")
    if self.kl_mode == "loss":
      raise ConfigError(f"{path}.kl_mode: 'loss' is not PPO's; algorithm 'ppo' puts the KL in the per-token "
                        "rewards: kl_mode 'reward' (or 'none')")
    if self.kl_controller == "adaptive" and self.kl_mode != "reward":
      raise ConfigError(f"{path}.kl_controller: 'adaptive' adapts the KL penalty, which needs kl_mode 'reward' "
                        f"(got {self.kl_mode!r})")
    # Keys whose meaning PPO replaces: a changed one would be silently ignored.
    replaced = {"num_iterations": "ppo_epochs / num_mini_batches set the updates per rollout",
                "dynamic_sampling": "PPO has no groups to filter", "oversample": "PPO has no groups to filter",
                "scale_rewards": "PPO whitens GAE advantages", "rloo_normalize": "PPO whitens GAE advantages",
                "loss_aggregation": "PPO's losses are token means",
                "epsilon_high": "PPO's clip is symmetric (epsilon)",
                "old_logps": "PPO's ratio always takes the rollout's log-probs, which its epochs of updates share"}
    for key, why in replaced.items():
      if getattr(self, key) != getattr(defaults, key):
        raise ConfigError(f"{path}.{key}: {getattr(self, key)!r} does not apply to algorithm 'ppo' ({why}); leave "
                          f"it at {getattr(defaults, key)!r}")


@dataclasses.dataclass(frozen=True)
class SamplingConfig:
  """Rollout sampling: top_k 0 and top_p 1 mean no truncation; top_p lies in (0, 1]. cache_bucket: each decode
  phase reads this many more slots of the KV cache (`sampling.generate`; 0: every step reads all prompt +
  max_new_tokens slots; None: the backend's rule, `generate.default_cache_bucket`: 128 on CPUs).
  tokens_per_iteration: decode steps per iteration of the decode loop, which tests for the end of every row once
  per iteration (`generate`; same tokens).

  Truncation and log-probs: with top_k > 0 or top_p < 1 the tokens are drawn from the truncated (renormalized)
  distribution, but every log-prob of the stage (old policy, reference, the update's ratio and KL, entropy) is
  taken from the untruncated softmax of logits / temperature, as TRL's GRPO / RLOO / PPO trainers do. The ratio
  pi / pi_old is then still exact for the untruncated policy, but it is not an importance weight for the sampling
  distribution, and the KL / entropy metrics describe the untruncated policy, not the one that sampled.
  """
  max_new_tokens: int = field(24, min=1)
  temperature: float = field(1.0, min=1e-3)
  top_k: int = field(0, min=0)
  top_p: float = field(1.0, min=0.0, max=1.0)  # (0, 1]: 0 keeps no mass (`validate`)
  cache_bucket: int | None = field(None, min=0)
  tokens_per_iteration: int = field(1, min=1)

  def validate(self, path: str) -> None:
    if not self.top_p > 0.0:
      raise ConfigError(f"{path}.top_p: must lie in (0, 1] (the nucleus' probability mass; 1 = no truncation); got "
                        f"{self.top_p}")


@dataclasses.dataclass(frozen=True)
class RLConfig:
  """The "rl" stage (GRPO / RLOO / PPO / online DPO on the synthetic world's prompts or on prompt files).

  Prompts (`prompts`, `inputs.PromptSpec`): `num_prompts` train prompts (the world's come with reference
  responses, the column "references"; files: 0 = all), `prompts_per_step` per rollout (R = prompts_per_step *
  num_generations rows), left-padded to `max_prompt_length` tokens (a longer prompt keeps its last tokens; the
  count is reported); `eval_prompts` held-out prompts for eval (the world's validation split: gold, proxy, KL,
  length; files: every reward source, KL, length).
  prompt_groups: "" samples prompts independently; a column of the prompt files: the prompts sharing its value are
  always sampled into the same batch (`inputs.GroupedPromptIterator`), e.g. Co-Reward's question and its
  rephrasing (the column "pair_id"), so a batch-level reward (`rewards.voting.co_reward`) sees both groups. Every
  group must have the same number of prompts, dividing prompts_per_step (checked when the files are read).
  """
  seed: int = field(0)
  model: common.ModelSpec = field(default_factory=common.ModelSpec)
  prompts: inputs_lib.PromptSpec = field(default_factory=inputs_lib.PromptSpec)
  num_prompts: int = field(1024, min=0)  # 0: every train prompt of the files.
  prompts_per_step: int = field(8, min=1)
  max_prompt_length: int = field(8, min=1)
  eval_prompts: int = field(64, min=0)
  prompt_groups: str = field("")
  value_model: str = stage_ref("rm_dir", help="algorithm 'ppo': '' = a scalar value head on the policy's backbone "
                               "(shared); 'stage:<reward stage>' or a reward-model folder = a separate critic "
                               "initialized from that reward model (member 0 of an ensemble)")
  rewards: tuple[rewards_lib.RewardSourceSpec, ...] = field((rewards_lib.RewardSourceSpec(),))
  loss: RLLossConfig = field(default_factory=RLLossConfig)
  sampling: SamplingConfig = field(default_factory=SamplingConfig)
  optimizer: optim.OptimizerConfig = field(default_factory=optim.OptimizerConfig)
  loop: loop_lib.LoopConfig = field(default_factory=loop_lib.LoopConfig)
  mesh: MeshConfig = field(default_factory=MeshConfig)
  num_devices: int = field(0, min=0)

  def validate(self, path: str) -> None:
    if not self.rewards:
      raise ConfigError(f"{path}.rewards: expected at least one reward source")
    labels = [r.label for r in self.rewards]
    if len(set(labels)) != len(labels):
      raise ConfigError(f"{path}.rewards: source names must be distinct (set `name`), got {labels}")
    rows = self.prompts_per_step * self.loss.num_generations
    if rows % self.optimizer.grad_accum_steps:
      raise ConfigError(f"{path}.optimizer.grad_accum_steps: {self.optimizer.grad_accum_steps} must divide "
                        f"prompts_per_step * loss.num_generations = {rows}")
    if self.loss.kl_mode != "none" and self.loss.beta == 0:
      raise ConfigError(f"{path}.loss.beta: must be > 0 with kl_mode={self.loss.kl_mode!r} (or set kl_mode "
                        "'none')")
    if self.prompts.source == "world" and self.num_prompts < 1:
      raise ConfigError(f"{path}.num_prompts: the world's prompts need a count >= 1, got {self.num_prompts}")
    if self.prompts.source != "world":
      for i, r in enumerate(self.rewards):
        if r.kind in rewards_lib.WORLD_KINDS:
          raise ConfigError(f"{path}.rewards[{i}].kind: {r.kind!r} is defined on the synthetic world's prompts only "
                            f"({path}.prompts.source is {self.prompts.source!r})")
        if r.standardize:  # The member statistics are taken over the world's reference responses; files have none.
          raise ConfigError(f"{path}.rewards[{i}].standardize: needs the training prompts' reference responses, which "
                            f"only the synthetic world's prompts have ({path}.prompts.source is "
                            f"{self.prompts.source!r}); use the raw members' aggregation")
    if self.prompt_groups and self.prompts.source == "world":
      raise ConfigError(f"{path}.prompt_groups: {self.prompt_groups!r} names a column of prompt files; "
                        f"{path}.prompts.source is 'world' (leave prompt_groups '')")
    if self.loss.token_rewards and not any(r.kind == "process" for r in self.rewards):
      raise ConfigError(f"{path}.loss.token_rewards: places the process reward's step rewards on their tokens; "
                        f"{path}.rewards has no source of kind 'process'")
    if self.value_model and self.loss.algorithm != "ppo":
      raise ConfigError(f"{path}.value_model: {self.value_model!r} is the critic of algorithm 'ppo' "
                        f"({path}.loss.algorithm is {self.loss.algorithm!r}); leave it ''")
    if self.loss.algorithm == "ppo":
      m = self.loss.num_mini_batches
      if rows % m or (rows // m) % self.optimizer.grad_accum_steps:
        raise ConfigError(f"{path}.loss.num_mini_batches: {m} must divide prompts_per_step * loss.num_generations "
                          f"= {rows} into minibatches divisible by optimizer.grad_accum_steps = "
                          f"{self.optimizer.grad_accum_steps}")
    if self.loss.algorithm == "online_dpo" and self.loss.ref_update_every and self.model.lora:
      raise ConfigError(f"{path}.loss.ref_update_every: with {path}.model.lora the reference is the policy with its "
                        "adapters off (no copy to move); keep ref_update_every=0 or train without LoRA")
    if self.loss.algorithm == "online_dpo" and self.prompts_per_step % self.optimizer.grad_accum_steps:
      raise ConfigError(f"{path}.optimizer.grad_accum_steps: {self.optimizer.grad_accum_steps} must divide "
                        f"prompts_per_step = {self.prompts_per_step} (online DPO's micro-batches are whole pairs)")
    if self.loss.overlong_cache > self.sampling.max_new_tokens:
      raise ConfigError(f"{path}.loss.overlong_cache: {self.loss.overlong_cache} must be <= "
                        f"{path}.sampling.max_new_tokens = {self.sampling.max_new_tokens} (the penalty's L_max)")

  @property
  def prompts_per_rollout(self) -> int:
    """Prompts sampled per step: oversample * prompts_per_step with dynamic sampling, else prompts_per_step."""
    return self.prompts_per_step * (self.loss.oversample if self.loss.dynamic_sampling else 1)

# ------------------------------------------------------------------------------------------------ the model
class KLCoef(nnx.Variable):
  """PPO's current KL coefficient (float32 scalar): not a Param, so it lives in the train state's `extra` (no
  gradient, checkpointed with the state, so a resumed run continues the adaptive controller exactly)."""


class RLModel(nnx.Module):
  """The trained policy, a frozen reference copy, and frozen reward models `rm_<i>` (source index i).

  For PPO also the value model, trained with the policy: `value_head` (a scalar head on the policy's final hidden
  states) or `critic` (a separate RewardModel read at every position), and `kl_coef` (a KLCoef). Without them the
  module is exactly the GRPO / RLOO one.
  """

  def __init__(self, policy: nnx.Module, reference: nnx.Module | None, reward_models: dict[str, nnx.Module], *,
               value_head: nnx.Module | None = None, critic: nnx.Module | None = None,
               kl_coef: float | None = None, lora_reference: bool = False):
    if lora_reference and reference is not None:
      raise ValueError("RLModel: lora_reference=True uses the policy with adapters off as the reference; pass "
                       "reference=None")
    self.policy = policy
    self.reference = common.frozen(reference) if reference is not None else None
    self.lora_reference = lora_reference
    self.rm_names = tuple(sorted(reward_models))
    for name, rm in reward_models.items():
      setattr(self, name, common.frozen(rm))
    if value_head is not None and critic is not None:
      raise ValueError("RLModel: pass value_head (shared backbone) or critic (separate), not both")
    if value_head is not None:
      self.value_head = value_head
    if critic is not None:
      self.critic = critic
    if kl_coef is not None:
      self.kl_coef = KLCoef(jnp.asarray(kl_coef, jnp.float32))

  def reward_models(self) -> dict[str, nnx.Module]:
    return {name: getattr(self, name) for name in self.rm_names}

  def reference_model(self) -> Any:
    """The frozen reference: the copy, or with `lora_reference` the policy with its adapters switched off (the
    same base weights, no copy); None without a reference."""
    return self.policy.without_adapters() if self.lora_reference else self.reference

# ------------------------------------------------------------------------------------------------ advantages / loss
def advantages(loss: RLLossConfig, rewards_R: jax.Array) -> jax.Array:
  """(R,) advantages of contiguous groups of `num_generations` rewards, by the losses library."""
  if loss.variant:
    return pg.group_advantages(rewards_R, loss.num_generations, scale_rewards=pv.VARIANTS[loss.variant].scale_rewards)
  if loss.algorithm == "grpo":
    return pg.group_advantages(rewards_R, loss.num_generations, scale_rewards=loss.scale_rewards)
  return pg.rloo_advantages(rewards_R, loss.num_generations, normalize=loss.rloo_normalize)


def _epsilon_high(loss: RLLossConfig) -> float | None:
  return None if loss.epsilon_high < 0 else loss.epsilon_high


def policy_loss_terms(loss: RLLossConfig, logps_RxN: jax.Array, batch: dict[str, jax.Array], max_length: int
                      ) -> tuple[jax.Array, jax.Array, dict[str, Any]]:
  """(loss total, weight, metrics) of the policy objective (+ beta * KL in "loss" mode) on a rollout batch.

  Without a variant: the clipped surrogate with `loss.epsilon` / `epsilon_high`, aggregated by
  `loss.loss_aggregation`, so total / weight equals `pg.clipped_policy_loss(...)`. With `loss.variant`: that
  variant's surrogate (`pv.variant_surrogate`), clip ranges and aggregation, so total / weight equals
  `pv.policy_variant_loss(...)`. Totals and weights add up exactly over micro-batches: token_mean -> (sum of token
  losses, tokens); sequence_mean -> (sum of per-sequence means, rows); dr_grpo -> (sum of token losses /
  max_length, rows).
  """
  mask = batch["mask"]
  valid = (mask > 0).astype(jnp.float32)
  tokens = jnp.sum(valid)
  rows = jnp.asarray(mask.shape[0], jnp.float32)
  if loss.variant:
    spec = pv.VARIANTS[loss.variant]
    per_token, m = pv.variant_surrogate(spec.surrogate, logps_RxN, batch.get("old_logps"), batch["advantages"], mask,
                                        epsilon=spec.epsilon, epsilon_high=spec.epsilon_high)
    aggregation = spec.loss_aggregation
    # GSPO's metrics are means over sequences, the others' over tokens.
    count = rows if spec.surrogate == "gspo" else tokens
  else:
    per_token, m = pg.clipped_surrogate(logps_RxN, batch.get("old_logps"), batch["advantages"], mask,
                                        epsilon=loss.epsilon, epsilon_high=_epsilon_high(loss))
    aggregation, count = loss.loss_aggregation, tokens
  metrics = {k: metrics_lib.Avg(v * count, count) for k, v in m.items()}
  if loss.kl_mode == "loss":
    kl = pg.kl_divergence(logps_RxN, batch["ref_logps"], mask, estimator=loss.kl_estimator)
    per_token = per_token + loss.beta * kl
    metrics["kl_loss_term"] = metrics_lib.Avg(jnp.sum(jax.lax.stop_gradient(kl)), tokens)
  if aggregation == "token_mean":
    total, weight = jnp.sum(per_token * valid), tokens
  elif aggregation == "sequence_mean":
    per_seq = jnp.sum(per_token * valid, axis=1) / jnp.maximum(jnp.sum(valid, axis=1), 1.0)
    total, weight = jnp.sum(per_seq), rows
  else:
    total, weight = jnp.sum(per_token * valid) / max_length, rows
  return total, weight, metrics


def logps_head(loss: RLLossConfig) -> tuple[int, bool]:
  """(chunk_size, fused) of every response log-prob of the rl stage on this backend (`loss.logps_path`,
  `loss.logps_chunk_size`; `scoring.resolve_logps_path`)."""
  return scoring.resolve_logps_path(loss.logps_path, loss.logps_chunk_size)


def detached_old_logps(loss: RLLossConfig) -> bool:
  """Whether the update takes stop_gradient(its own log-probs) as the old policy's and the rollout skips the policy
  forward (loss.old_logps "auto" with one update per rollout, the KL not in the reward, a group algorithm)."""
  return (loss.old_logps == "auto" and loss.num_iterations == 1 and loss.kl_mode != "reward"
          and loss.algorithm in ("grpo", "rloo"))


def online_dpo_metrics_from_update(loss: RLLossConfig) -> bool:
  """Whether online DPO's rollout skips its policy forward and its update reports the `entropy` / `kl` metrics
  (loss.old_logps "auto" and one update per rollout: the update's log-probs before its gradient step are the
  rollout's, both at temperature 1, `rollout_score_temperature`)."""
  return loss.algorithm == "online_dpo" and loss.old_logps == "auto" and loss.num_iterations == 1


def rollout_score_temperature(loss: RLLossConfig, sampling: SamplingConfig) -> float:
  """The temperature of a rollout's teacher-forced policy and reference log-probs: the sampling temperature (the
  distribution the policy-gradient ratio and KL are taken of; TRL's GRPOTrainer divides its logits by it), except
  for online DPO: 1, the distribution its DPO loss trains and holds near the reference (TRL's OnlineDPOTrainer
  scores and logs its KL from the raw logits at any sampling temperature)."""
  return 1.0 if loss.algorithm == "online_dpo" else sampling.temperature


def update_policy_metrics(entropy_RxN: jax.Array, mask_RxN: jax.Array, seq_kl_R: jax.Array | None = None
                          ) -> dict[str, metrics_lib.Avg]:
  """The rollout's `entropy` (token mean) and `kl` (row mean of sum_t log pi - log pi_ref, `seq_kl_R`) taken from
  an update's forward at the parameters the rollout sampled with, detached (Avg, so micro-batches add up)."""
  valid = (mask_RxN > 0).astype(jnp.float32)
  metrics = {"entropy": metrics_lib.Avg(jax.lax.stop_gradient(jnp.sum(entropy_RxN * valid)), jnp.sum(valid))}
  if seq_kl_R is not None:
    metrics["kl"] = metrics_lib.Avg(jax.lax.stop_gradient(jnp.sum(seq_kl_R)),
                                    jnp.asarray(seq_kl_R.shape[0], jnp.float32))
  return metrics


def rl_loss_fn(loss: RLLossConfig, temperature: float, max_length: int) -> state_lib.LossFn:
  """loss_fn(RLModel, rollout batch, rng) for `state.make_train_step`.

  A batch without "old_logps" (`detached_old_logps`) uses the update's own log-probs, detached, as the old policy's,
  and reports the metrics the rollout would have: `entropy` (token mean) and, with "ref_logps", `kl` (the mean over
  rows of sum_t k1(pi, pi_ref)), both at the parameters the rollout sampled with."""

  def loss_fn(model, batch, rng):
    del rng
    logps, entropy = scoring.response_logps(model.policy, batch["prompt_ids"], batch["prompt_mask"], batch["tokens"],
                                            batch["mask"], temperature, *logps_head(loss))
    total, weight, metrics = policy_loss_terms(loss, logps, batch, max_length)
    if "old_logps" not in batch:
      seq_kl = None
      if "ref_logps" in batch:
        k1 = pg.kl_divergence(logps, batch["ref_logps"], batch["mask"], estimator="k1")
        seq_kl = jnp.sum(k1 * (batch["mask"] > 0), axis=1)
      metrics.update(update_policy_metrics(entropy, batch["mask"], seq_kl))
    return total, weight, metrics

  return loss_fn

# ------------------------------------------------------------------------------------------------ PPO
def ppo_forward(model: RLModel, batch: dict[str, jax.Array], temperature: float, chunk_size: int = 0,
                fused: bool = False) -> tuple[jax.Array, jax.Array]:
  """(logps_BxN, values_BxN) float32 of the rollout rows under the policy and the value model, 0 on masked slots.

  values[:, n] = V(s_n), read from the final hidden state before response token n: the policy's own (one forward
  gives both, `value_head`) or the separate critic's backbone (`critic`, its reward head applied per position).
  """
  args = (batch["prompt_ids"], batch["prompt_mask"], batch["tokens"], batch["mask"])
  if hasattr(model, "critic"):
    logps, _ = scoring.response_logps(model.policy, *args, temperature, chunk_size, fused)
    hidden_BxNxD = scoring.response_hidden(model.critic.backbone, *args)
    head = model.critic.head
  else:
    logps, _, hidden_BxNxD = scoring.response_logps_and_hidden(model.policy, *args, temperature, chunk_size, fused)
    head = model.value_head
  b, n, d = hidden_BxNxD.shape
  values = head(hidden_BxNxD.reshape(b * n, d)).reshape(b, n)
  return logps, jnp.where(batch["mask"] > 0, values, 0.0)


def ppo_targets(loss: RLLossConfig, model: RLModel, batch: dict[str, jax.Array], temperature: float
                ) -> tuple[dict[str, jax.Array], dict[str, Any]]:
  """The rollout batch with PPO's targets: old_values, advantages (B, N; whitened) and returns (B, N), by
  `ppo.ppo_advantages` on the sequence scores batch["rewards"] with the state's KL coefficient; and metrics."""
  mask = batch["mask"]
  _, old_values = jax.lax.stop_gradient(ppo_forward(model, batch, temperature, *logps_head(loss)))
  kl_coef = model.kl_coef[...] if loss.kl_mode == "reward" else jnp.zeros((), jnp.float32)
  ref_logps = batch["ref_logps"] if loss.kl_mode == "reward" else batch["old_logps"]  # "none": KL term 0
  adv, returns, m = ppo_lib.ppo_advantages(batch["rewards"], batch["old_logps"], ref_logps, old_values, mask,
                                           kl_coef=kl_coef, gamma=loss.gamma, lam=loss.lam,
                                           kl_estimator=loss.kl_estimator, whiten_rewards=loss.whiten_rewards,
                                           token_rewards_BxT=batch.get("token_rewards"))
  valid = (mask > 0).astype(jnp.float32)
  tokens = jnp.maximum(jnp.sum(valid), 1.0)
  mean = lambda x: jnp.sum(x * valid) / tokens  # noqa: E731
  raw_adv = returns - old_values  # GAE advantages before whitening (the values' residuals)
  residual = raw_adv
  explained = 1.0 - (mean(jnp.square(residual - mean(residual))) /
                     jnp.maximum(mean(jnp.square(returns - mean(returns))), 1e-8))
  metrics = {**m, "kl_coef": kl_coef, "returns/mean": mean(returns), "advantages/mean": mean(raw_adv),
             "value/explained_variance": explained}
  out = {k: batch[k] for k in ("prompt_ids", "prompt_mask", "tokens", "mask", "old_logps")}
  return {**out, "old_values": old_values, "advantages": adv, "returns": returns}, metrics


def ppo_loss_terms(loss: RLLossConfig, logps_BxN: jax.Array, values_BxN: jax.Array, batch: dict[str, jax.Array]
                   ) -> tuple[jax.Array, jax.Array, dict[str, Any]]:
  """(loss total, weight = tokens, metrics) of PPO on a minibatch: total / weight = `ppo.ppo_loss(...)` (policy and
  value masks equal), as sums over tokens so micro-batches accumulate exactly."""
  mask = batch["mask"]
  valid = (mask > 0).astype(jnp.float32)
  tokens = jnp.sum(valid)
  pg_BxN, pg_m = pg.clipped_surrogate(logps_BxN, batch["old_logps"], batch["advantages"], mask, epsilon=loss.epsilon)
  vf_BxN, vf_m = ppo_lib.clipped_value_loss(values_BxN, batch["old_values"], batch["returns"], mask,
                                            clip_range_value=loss.cliprange_value)
  pg_sum, vf_sum = jnp.sum(pg_BxN * valid), jnp.sum(vf_BxN * valid)
  log_ratio = jax.lax.stop_gradient(logps_BxN - batch["old_logps"])
  avg = lambda v: metrics_lib.Avg(v * tokens, tokens)  # noqa: E731  token means -> exact over micro-batches
  metrics = {"loss/policy": metrics_lib.Avg(jax.lax.stop_gradient(pg_sum), tokens),
             "loss/value": metrics_lib.Avg(jax.lax.stop_gradient(vf_sum), tokens),
             "policy/clipfrac": avg(pg_m["clip_ratio/region_mean"]), "ratio/mean": avg(pg_m["ratio/mean"]),
             "policy/approxkl": metrics_lib.Avg(jnp.sum(0.5 * jnp.square(log_ratio) * valid), tokens),
             **{k: avg(v) for k, v in vf_m.items()}}
  return pg_sum + loss.vf_coef * vf_sum, tokens, metrics


def ppo_loss_fn(loss: RLLossConfig, temperature: float) -> state_lib.LossFn:
  """loss_fn(RLModel, PPO minibatch, rng) for `state.make_train_step`."""

  def loss_fn(model, batch, rng):
    del rng
    logps, values = ppo_forward(model, batch, temperature, *logps_head(loss))
    return ppo_loss_terms(loss, logps, values, batch)

  return loss_fn


def ppo_updates(inner: state_lib.StepFn, state: state_lib.TrainState, batch: dict[str, jax.Array],
                loss: RLLossConfig, key: jax.Array) -> tuple[state_lib.TrainState, dict[str, Any]]:
  """`ppo_epochs` passes over the rollout batch; pass e permutes the R rows by jax.random.permutation(split(key,
  epochs)[e], R) and cuts them into `num_mini_batches` contiguous minibatches (TRL's b_inds), one `inner` update
  each. Returns the state and the updates' metrics stacked on one leading axis (epochs * minibatches)."""
  r, m = batch["mask"].shape[0], loss.num_mini_batches

  def epoch(s, epoch_key):
    perm = jax.random.permutation(epoch_key, r)
    minibatches = jax.tree.map(lambda x: x[perm].reshape(m, r // m, *x.shape[1:]), batch)
    return jax.lax.scan(inner, s, minibatches)

  state, stacked = jax.lax.scan(epoch, state, jax.random.split(key, loss.ppo_epochs))
  return state, jax.tree.map(lambda x: x.reshape(-1, *x.shape[2:]), stacked)


def with_kl_coef(graphdef: nnx.GraphDef, state: state_lib.TrainState, kl_coef: jax.Array) -> state_lib.TrainState:
  """The state with its KLCoef set to `kl_coef`."""
  model = nnx.merge(graphdef, state.params, state.extra)
  model.kl_coef[...] = jnp.asarray(kl_coef, jnp.float32)
  _, _, extra = nnx.split(model, nnx.Param, ...)
  return state.replace(extra=extra)


def make_ppo_step(graphdef: nnx.GraphDef, cfg: RLConfig, optimizer: Any, sources: Sequence[rewards_lib.RewardSource],
                  *, eos_ids: tuple[int, ...], pad_id: int, world: Any = None) -> state_lib.StepFn:
  """PPO's pure step (state, prompt batch) -> (state, metrics): one rollout, its targets (`ppo_targets`), the
  epochs of minibatch updates (`ppo_updates`), then the KL controller's update of the coefficient from the
  rollout's KL (mean over rows of the summed estimator; n_steps = the R rows, TRL's batch size)."""
  loss, temperature = cfg.loss, cfg.sampling.temperature
  inner = state_lib.make_train_step(graphdef, ppo_loss_fn(loss, temperature), optimizer,
                                    grad_accum_steps=cfg.optimizer.grad_accum_steps,
                                    schedule=optim.make_schedule(cfg.optimizer))

  def step_fn(state: state_lib.TrainState, prompts: dict[str, jax.Array]):
    rng = rollout_key(state)
    model = nnx.merge(graphdef, state.params, state.extra)
    batch, metrics = rollout(model, prompts, rng, loss=loss, sampling=cfg.sampling, sources=sources,
                             eos_ids=eos_ids, pad_id=pad_id, world=world)
    batch, target_metrics = ppo_targets(loss, model, batch, temperature)
    state, stacked = ppo_updates(inner, state, batch, loss, jax.random.fold_in(rng, SHUFFLE_STREAM))
    new_coef = ppo_lib.update_kl_coef(loss.kl_controller, model.kl_coef[...], target_metrics["objective/kl"],
                                      batch["mask"].shape[0], target=loss.kl_target, horizon=loss.kl_horizon)
    state = with_kl_coef(graphdef, state, new_coef)
    return state, {**metrics_lib.stack_reduce(stacked), **metrics, **target_metrics}

  return step_fn

# ------------------------------------------------------------------------------------------------ online DPO
def select_pairs(scores_R: jax.Array, ties: str = "mask") -> tuple[jax.Array, jax.Array, jax.Array]:
  """Chosen / rejected rows of each prompt's pair from the reward sources' scores (Guo et al. 2024, arXiv
  2402.04792: the annotator prefers the higher-scored of the policy's 2 samples).

  Args:
    scores_R: (R,) float scores, R = 2P rows prompt-major (rows 2p and 2p + 1 are prompt p's samples).
    ties: "first": the first sample is chosen when scores are equal (TRL's `first_half >= second_half`), the pair
      trains; "mask": an equal-score pair gets weight 0 (it carries no preference).

  Returns:
    (chosen_P int32 row indices, rejected_P int32 row indices, weight_P float32: 1, or 0 for a masked tie).
  """
  if scores_R.ndim != 1 or scores_R.shape[0] % 2:
    raise ValueError(f"select_pairs: scores must be (2P,) with pairs on consecutive rows; got {scores_R.shape}")
  if ties not in TIES:
    raise ValueError(f"select_pairs: unknown ties {ties!r}; valid values: {list(TIES)}")
  pair_Px2 = scores_R.reshape(-1, 2)
  first_wins = pair_Px2[:, 0] >= pair_Px2[:, 1]
  base = 2 * jnp.arange(pair_Px2.shape[0], dtype=jnp.int32)
  chosen = base + jnp.where(first_wins, 0, 1).astype(jnp.int32)
  rejected = base + jnp.where(first_wins, 1, 0).astype(jnp.int32)
  weight = jnp.ones(pair_Px2.shape[0], jnp.float32)
  if ties == "mask":
    weight = jnp.where(pair_Px2[:, 0] == pair_Px2[:, 1], 0.0, weight)
  return chosen, rejected, weight


def missing_eos_scores(scores_R: jax.Array, has_eos_R: jax.Array, penalty: float) -> jax.Array:
  """TRL OnlineDPOConfig.missing_eos_penalty: `penalty` subtracted from the score of every completion without an end
  token (`rewards[~contain_eos_token] -= penalty`); penalty 0 leaves the scores unchanged."""
  if not penalty:
    return scores_R
  return scores_R - penalty * (~has_eos_R).astype(scores_R.dtype)


def online_dpo_loss_terms(loss: RLLossConfig, chosen_logps_P: jax.Array, rejected_logps_P: jax.Array,
                          batch: dict[str, jax.Array]) -> tuple[jax.Array, jax.Array, dict[str, Any]]:
  """(loss total, weight = trained pairs, metrics) of online DPO on a pair batch: total / weight = the weighted mean
  over pairs of `preference.dpo_loss(loss_type=loss.dpo_loss_type, beta=loss.beta)`, as sums so micro-batches
  accumulate exactly. "ipo" gets lengths 1 (TRL OnlineDPOTrainer's unnormalized IPO); "sigmoid_norm" the true
  lengths. Metrics: the loss's rewards/* (the implicit reward beta * log(pi / pi_ref); rewards/accuracy = the
  implicit reward agrees with the reward sources' label) and logps/*, means over the trained pairs."""
  weight_P = batch["pair_weight"]
  if loss.dpo_loss_type == "sigmoid_norm":
    lengths = {"chosen_lengths": jnp.sum(batch["chosen_mask"] > 0, axis=1),
               "rejected_lengths": jnp.sum(batch["rejected_mask"] > 0, axis=1)}
  else:
    ones = jnp.ones_like(chosen_logps_P)
    lengths = {"chosen_lengths": ones, "rejected_lengths": ones}
  losses_P, m = preference_lib.dpo_loss(chosen_logps_P, rejected_logps_P, batch["ref_chosen_logps"],
                                        batch["ref_rejected_logps"], loss_type=loss.dpo_loss_type, beta=loss.beta,
                                        discopop_tau=loss.discopop_tau, **lengths)
  pairs = jnp.sum(weight_P)
  metrics = {k: metrics_lib.Avg(jnp.sum(v * weight_P), pairs) for k, v in m.items()}
  return jnp.sum(losses_P * weight_P), pairs, metrics


def online_dpo_loss_fn(loss: RLLossConfig, policy_metrics: bool = False) -> state_lib.LossFn:
  """loss_fn(RLModel, pair batch, rng) for `state.make_train_step`: chosen and rejected in one policy forward (logits
  at temperature 1, as TRL), summed over the response tokens.

  policy_metrics (`online_dpo_metrics_from_update`): also the rollout's `entropy` (token mean) and `kl` (mean over
  rows of sum_t log pi - log pi_ref) from this forward, over every row of the pair batch (tied pairs included, as
  in the rollout), detached."""

  def loss_fn(model, batch, rng):
    del rng
    ids, mask = batch["prompt_ids"], batch["prompt_mask"]
    response_mask = jnp.concatenate([batch["chosen_mask"], batch["rejected_mask"]])
    logps_2PxN, entropy_2PxN = scoring.response_logps(
        model.policy, jnp.concatenate([ids, ids]), jnp.concatenate([mask, mask]),
        jnp.concatenate([batch["chosen_tokens"], batch["rejected_tokens"]]), response_mask, 1.0,
        *logps_head(loss))
    seq_2P = jnp.sum(logps_2PxN, axis=1)
    p = ids.shape[0]
    total, weight, metrics = online_dpo_loss_terms(loss, seq_2P[:p], seq_2P[p:], batch)
    if policy_metrics:
      ref_2P = jnp.concatenate([batch["ref_chosen_logps"], batch["ref_rejected_logps"]])
      metrics.update(update_policy_metrics(entropy_2PxN, response_mask, seq_2P - ref_2P))
    return total, weight, metrics

  return loss_fn


def online_dpo_pairs(loss: RLLossConfig, batch: dict[str, jax.Array], ref_logps_RxN: jax.Array,
                     has_eos_R: jax.Array) -> tuple[dict[str, jax.Array], dict[str, Any]]:
  """The pair batch (P rows) of a rollout of R = 2P rows: prompt, chosen / rejected tokens and masks, their
  reference sequence log-probs, pair_weight; and the metrics of the labels (scores = batch["rewards"] minus the
  missing-EOS penalty): scores/chosen, scores/rejected, scores/margin (means over the trained pairs), pairs/ties
  (the share of pairs with equal scores), pairs/trained, contain_eos (share of rows with an end token)."""
  scores_R = missing_eos_scores(batch["rewards"], has_eos_R, loss.missing_eos_penalty)
  chosen, rejected, weight = select_pairs(scores_R, loss.ties)
  ref_seq_R = jnp.sum(ref_logps_RxN, axis=1)
  pairs = {"prompt_ids": batch["prompt_ids"][chosen], "prompt_mask": batch["prompt_mask"][chosen],
           "chosen_tokens": batch["tokens"][chosen], "chosen_mask": batch["mask"][chosen],
           "rejected_tokens": batch["tokens"][rejected], "rejected_mask": batch["mask"][rejected],
           "ref_chosen_logps": ref_seq_R[chosen], "ref_rejected_logps": ref_seq_R[rejected], "pair_weight": weight}
  pairs = jax.tree.map(jax.lax.stop_gradient, pairs)
  trained = jnp.sum(weight)
  wmean = lambda x: jnp.sum(x * weight) / jnp.maximum(trained, 1.0)  # noqa: E731
  tied = scores_R[0::2] == scores_R[1::2]
  metrics = {"scores/chosen": wmean(scores_R[chosen]), "scores/rejected": wmean(scores_R[rejected]),
             "scores/margin": wmean(scores_R[chosen] - scores_R[rejected]),
             "pairs/ties": jnp.mean(tied.astype(jnp.float32)), "pairs/trained": metrics_lib.Sum(trained),
             "contain_eos": jnp.mean(has_eos_R.astype(jnp.float32))}
  return pairs, metrics


# TR-DPO's reference update, shared with the preference stage (its offline form).
update_reference = common.update_reference


def make_online_dpo_step(graphdef: nnx.GraphDef, cfg: RLConfig, optimizer: Any,
                         sources: Sequence[rewards_lib.RewardSource], *, eos_ids: tuple[int, ...], pad_id: int,
                         world: Any = None) -> state_lib.StepFn:
  """Online DPO's pure step (state, prompt batch) -> (state, metrics): one rollout of 2 samples per prompt, its pairs
  (`online_dpo_pairs`), `num_iterations` DPO updates on them, then the reference schedule: after the k-th rollout
  (k = state.step / num_iterations) with k % ref_update_every == 0, `update_reference`. Metrics add ref/updates
  (reference updates in the log window) and ref/total_updates (after the step)."""
  loss = cfg.loss
  from_update = online_dpo_metrics_from_update(loss)
  inner = state_lib.make_train_step(graphdef, online_dpo_loss_fn(loss, policy_metrics=from_update), optimizer,
                                    grad_accum_steps=cfg.optimizer.grad_accum_steps,
                                    schedule=optim.make_schedule(cfg.optimizer))

  def step_fn(state: state_lib.TrainState, prompts: dict[str, jax.Array]):
    rng = rollout_key(state)
    model = nnx.merge(graphdef, state.params, state.extra)
    batch, metrics = rollout(model, prompts, rng, loss=loss, sampling=cfg.sampling, sources=sources,
                             eos_ids=eos_ids, pad_id=pad_id, world=world, policy_logps=not from_update)
    has_eos = content_lengths(batch["tokens"], batch["mask"], eos_ids) < jnp.sum(batch["mask"] > 0, axis=1)
    pairs, pair_metrics = online_dpo_pairs(loss, batch, batch["ref_logps"], has_eos)  # at temperature 1
    state, stacked = jax.lax.scan(lambda s, _: inner(s, pairs), state, None, length=loss.num_iterations)
    rollouts = state.step // loss.num_iterations
    if loss.ref_update_every:
      due = rollouts % loss.ref_update_every == 0
      state = update_reference(state, loss.ref_update_alpha, due)
      total = rollouts // loss.ref_update_every
    else:
      due, total = jnp.zeros((), bool), jnp.zeros((), state.step.dtype)
    ref_metrics = {"ref/updates": metrics_lib.Sum(due.astype(jnp.float32)),
                   "ref/total_updates": total.astype(jnp.float32)}
    return state, {**metrics_lib.stack_reduce(stacked), **metrics, **pair_metrics, **ref_metrics}

  return step_fn

# ------------------------------------------------------------------------------------------------ rollout and step
def rollout(model: RLModel, prompts: dict[str, jax.Array], rng: jax.Array, *, loss: RLLossConfig,
            sampling: SamplingConfig, sources: Sequence[rewards_lib.RewardSource], eos_ids: tuple[int, ...],
            pad_id: int, world: Any = None, num_samples: int | None = None, policy_logps: bool = True
            ) -> tuple[dict[str, jax.Array], dict[str, Any]]:
  """Samples G completions per prompt and scores them -> (rollout batch of R rows, metrics); no gradients.

  The batch holds prompt_ids / prompt_mask (R, P), tokens / mask / old_logps / ref_logps (R, N), rewards and
  advantages (R,), prompt_index (R,), and with loss.dynamic_sampling task_rewards (R,) (the reward sources' sum).
  policy_logps False (`detached_old_logps`, `online_dpo_metrics_from_update`): no policy forward, so no old_logps
  and no entropy / kl metrics (the update reports them, `update_policy_metrics`); needs kl_mode other than "reward".
  old_logps, ref_logps and those metrics are at `rollout_score_temperature` (online DPO: 1, else the sampling
  temperature).
  With algorithm "ppo": no advantages, rewards without the KL term (PPO applies it per token), and with
  loss.token_rewards the process sources' step rewards as token_rewards (R, N), their sums taken out of rewards.
  """
  g = num_samples or loss.num_generations
  score_temperature = rollout_score_temperature(loss, sampling)
  if SAMPLED_TOKENS in prompts:  # Sampled beforehand by `sample` (`host_scored_rollouts`), with this key.
    gen = SampledRollout(prompts[SAMPLED_TOKENS], prompts[SAMPLED_MASK], prompts[SAMPLED_LENGTHS])
  else:
    gen = sample(model, prompts, rng, loss=loss, sampling=sampling, eos_ids=eos_ids, pad_id=pad_id,
                 num_samples=num_samples)
  rep = lambda x: jnp.repeat(x, g, axis=0)  # noqa: E731  prompt-major rows, like generate's output
  batch = dict(prompt_ids=rep(prompts["prompt_ids"]), prompt_mask=rep(prompts["prompt_mask"]), tokens=gen.tokens,
               mask=gen.mask, prompt_index=rep(prompts["prompt_index"]))
  valid = (gen.mask > 0).astype(jnp.float32)
  tokens = jnp.sum(valid)
  # completion_length counts the end token (TRL's convention); length counts the tokens before it (gold's n).
  metrics: dict[str, Any] = {"tokens": metrics_lib.Sum(tokens), "completion_length": jnp.mean(gen.lengths),
                             "length": jnp.mean(content_lengths(gen.tokens, gen.mask, eos_ids))}
  if policy_logps:
    old_logps, entropy = scoring.response_logps(model.policy, batch["prompt_ids"], batch["prompt_mask"], gen.tokens,
                                                gen.mask, score_temperature, *logps_head(loss))
    batch["old_logps"] = jax.lax.stop_gradient(old_logps)
    metrics["entropy"] = metrics_lib.Avg(jnp.sum(entropy), tokens)
  elif loss.kl_mode == "reward":
    raise ValueError("rollout: kl_mode 'reward' needs the policy's log-probs in the rollout (policy_logps=True)")
  # Text rewards computed on the host (`host_scored_rollouts`) are read by their sources, not kept in the batch.
  host = {k: v for k, v in prompts.items() if k.startswith(rewards_lib.HOST_SCORE_PREFIX)}
  total, per_source = rewards_lib.combined_rewards(sources, model.reward_models(), {**batch, **host})
  task_total = total
  for source in sources:
    r = per_source[source.label]
    if source.unscored_is_nan:  # A text reward: the mean over scorable rows, and the share of the others.
      metrics[f"reward/{source.label}"] = jnp.nanmean(r)
      metrics[f"reward/{source.label}/unscored"] = jnp.mean(jnp.isnan(r).astype(jnp.float32))
    else:
      metrics[f"reward/{source.label}"] = jnp.mean(r)
  if loss.dynamic_sampling:  # DAPO filters groups on the task reward alone.
    batch["task_rewards"] = jax.lax.stop_gradient(total)
  if loss.overlong_cache:
    penalty = pv.soft_overlong_penalty(gen.lengths, max_length=sampling.max_new_tokens,
                                       cache_length=loss.overlong_cache)
    metrics["reward/overlong"] = jnp.mean(penalty)
    total = total + penalty
  reference = model.reference_model()
  if reference is not None:
    ref_logps, _ = scoring.response_logps(reference, batch["prompt_ids"], batch["prompt_mask"], gen.tokens, gen.mask,
                                          score_temperature, *logps_head(loss))
    batch["ref_logps"] = jax.lax.stop_gradient(ref_logps)
    if policy_logps:
      seq_kl = jnp.sum(pg.kl_divergence(batch["old_logps"], ref_logps, gen.mask, estimator="k1"), axis=1)
      metrics["kl"] = jnp.mean(seq_kl)
      if loss.kl_mode == "reward" and loss.algorithm != "ppo":  # PPO: per token, with the state's coefficient
        total = total - loss.beta * seq_kl
  if world is not None:
    metrics["gold"] = jnp.mean(rewards_lib.gold_score(world)({}, batch))
    metrics["repeat_rate"] = rewards_lib.repetition_rate(world, batch)
  metrics["reward/total"] = jnp.mean(total)
  if loss.algorithm == "ppo" and loss.token_rewards:  # The process sources' step rewards go on their tokens.
    models = model.reward_models()
    token_part = sum(s.weight * s.token_score(models, batch).astype(jnp.float32) for s in sources
                     if s.token_score is not None)
    batch["token_rewards"] = jax.lax.stop_gradient(token_part)
    total = total - jnp.sum(token_part, axis=1)
  batch["rewards"] = jax.lax.stop_gradient(total)
  if loss.difficulty_scaling == "grpo_s":
    batch["advantages"], difficulty_metrics = grpo_s_advantages(loss, model, prompts, batch, task_total, sources, g)
    metrics.update(difficulty_metrics)
  elif loss.algorithm not in ("ppo", "online_dpo"):  # PPO: from the value model (`ppo_targets`); online DPO: pairs
    batch["advantages"] = advantages(loss, batch["rewards"])
  return batch, metrics


class SampledRollout(NamedTuple):
  """The completions of a rollout: tokens / mask (R, N) right-padded (the end token included), lengths (R,)."""
  tokens: jax.Array
  mask: jax.Array
  lengths: jax.Array


def sample(model: RLModel, prompts: dict[str, jax.Array], rng: jax.Array, *, loss: RLLossConfig,
           sampling: SamplingConfig, eos_ids: tuple[int, ...], pad_id: int, num_samples: int | None = None
           ) -> SampledRollout:
  """The rollout's completions: num_samples (default loss.num_generations) per prompt, prompt-major rows, from the
  policy with `sampling`'s settings; `rollout` calls it, or takes its result from the prompt batch."""
  gen = generate(model.policy, prompts["prompt_ids"], prompts["prompt_mask"], max_new_tokens=sampling.max_new_tokens,
                 rng=rng, temperature=sampling.temperature, top_k=sampling.top_k or None,
                 top_p=sampling.top_p if sampling.top_p < 1.0 else None, eos_ids=eos_ids, pad_id=pad_id,
                 num_samples=num_samples or loss.num_generations, cache_bucket=sampling.cache_bucket,
                 tokens_per_iteration=sampling.tokens_per_iteration)
  return SampledRollout(gen.tokens, gen.mask, gen.lengths)


def host_scored_rollouts(graphdef: nnx.GraphDef, cfg: RLConfig, functions: Mapping[str, rewards_lib.HostScore],
                         sharding: Any, *, eos_ids: tuple[int, ...], pad_id: int, loss: RLLossConfig | None = None,
                         key_fn: Callable[[state_lib.TrainState], jax.Array] | None = None,
                         num_samples: int | None = None
                         ) -> Callable[[state_lib.TrainState, dict[str, Any]], dict[str, Any]]:
  """The host phase of a step whose reward sources include text rewards: (state, prompt batch) -> the batch plus
  the rollout's completions (`sample` in its own jitted program, under `key_fn(state)`, default `rollout_key`) and
  the text rewards' scores on them, computed here (`reward_sources.host_scores`; with GRPO-S, on the prompts'
  demonstrations too). The step's `rollout` then reads them instead of sampling and calling back to the host, so
  neither program holds a host callback and XLA's persistent cache keeps both (a program with a callback is compiled
  again in every process: SmolLM2's GRPO step, about 10 s a run on a 2-core CPU). The step computes what it
  computed with the callbacks, from the same key and the same state. `sharding`: where the new entries go (the
  step's batch sharding)."""
  loss = loss or cfg.loss
  key_fn = key_fn or rollout_key

  @functools.partial(jax.jit, out_shardings=sharding)
  def sample_program(state, prompts):
    model = nnx.merge(graphdef, state.params, state.extra)
    return sample(model, prompts, key_fn(state), loss=loss, sampling=cfg.sampling, eos_ids=eos_ids, pad_id=pad_id,
                  num_samples=num_samples)

  def prepare(state, prompts):
    prompts_only = {k: prompts[k] for k in ("prompt_ids", "prompt_mask")}
    gen = sample_program(state, prompts_only)
    g = gen.tokens.shape[0] // prompts["prompt_ids"].shape[0]
    index_R = np.repeat(np.asarray(prompts["prompt_index"]), g)
    scores = rewards_lib.host_scores(functions, gen.tokens, gen.mask, index_R)
    if "reference_tokens" in prompts:  # GRPO-S scores the demonstrations with the same sources
      demo = rewards_lib.host_scores(functions, prompts["reference_tokens"], prompts["reference_mask"],
                                     prompts["prompt_index"])
      scores.update({DEMO_PREFIX + k: v for k, v in demo.items()})
    return {**prompts, SAMPLED_TOKENS: gen.tokens, SAMPLED_MASK: gen.mask, SAMPLED_LENGTHS: gen.lengths,
            **jax.device_put(scores, sharding)}

  return prepare


def grpo_s_advantages(loss: RLLossConfig, model: RLModel, prompts: dict[str, jax.Array], batch: dict[str, jax.Array],
                      task_rewards_R: jax.Array, sources: Sequence[rewards_lib.RewardSource], group_size: int
                      ) -> tuple[jax.Array, dict[str, jax.Array]]:
  """DR-IRL's GRPO-S advantages of a rollout (`losses.difficulty_scaling.grpo_s_advantages`) and their metrics.

  The prompt batch carries each prompt's alpha_data (computed once, `DifficultyTable`) and its demonstration
  (reference_tokens / reference_mask); the demonstrations are scored by the same reward sources, and the reward
  gaps are task_rewards_R (the sources' weighted sum) minus the row's demonstration reward."""
  demo = {"prompt_ids": prompts["prompt_ids"], "prompt_mask": prompts["prompt_mask"],
          "tokens": prompts["reference_tokens"], "mask": prompts["reference_mask"],
          "prompt_index": prompts["prompt_index"]}
  demo.update({k[len(DEMO_PREFIX):]: v for k, v in prompts.items() if k.startswith(DEMO_PREFIX)})
  demo_rewards, _ = rewards_lib.combined_rewards(sources, model.reward_models(), demo)
  rep = lambda x: jnp.repeat(x, group_size, axis=0)  # noqa: E731
  gaps = jax.lax.stop_gradient(task_rewards_R - rep(demo_rewards))
  scale = pv.VARIANTS[loss.variant].scale_rewards if loss.variant else loss.scale_rewards
  adv, parts = ds.grpo_s_advantages(batch["rewards"], group_size, rep(prompts["alpha_data"]), gaps,
                                    tau=loss.responsiveness_tau, pool=loss.responsiveness_pool, scale_rewards=scale)
  metrics = {f"difficulty/{k}": jnp.mean(v) for k, v in parts.items()}
  metrics["difficulty/alpha_model_min"] = jnp.min(parts["alpha_model"])
  metrics["difficulty/alpha_model_max"] = jnp.max(parts["alpha_model"])
  return adv, metrics


def select_groups(task_rewards_R: jax.Array, group_size: int, num_groups: int
                  ) -> tuple[jax.Array, jax.Array, dict[str, jax.Array]]:
  """DAPO dynamic sampling with a static batch: which `num_groups` of the R / group_size sampled groups to train on.

  A group qualifies when its rewards are not all equal (`pv.dynamic_sampling_mask`). The kept groups are the
  qualifying ones in sampling order, then, when fewer than num_groups qualify, the others in sampling order.

  Args:
    task_rewards_R: (R,) rewards, contiguous groups of group_size.
    group_size: G.
    num_groups: K <= R / G groups to keep.

  Returns:
    (group_index_K int32, qualifies_K bool, metrics: `groups_with_variance` = the qualifying fraction of all
    sampled groups, `groups_filled` = how many of the K kept groups qualify).
  """
  qualifies_S = pv.dynamic_sampling_mask(task_rewards_R, group_size)[::group_size]
  if not 1 <= num_groups <= qualifies_S.shape[0]:
    raise ValueError(f"num_groups must be in [1, {qualifies_S.shape[0]}]; got {num_groups}")
  # A stable sort on "does not qualify" puts the qualifying groups first, each part in sampling order.
  order_S = jnp.argsort((~qualifies_S).astype(jnp.int32), stable=True)
  group_index_K = order_S[:num_groups].astype(jnp.int32)
  qualifies_K = qualifies_S[group_index_K]
  metrics = {"groups_with_variance": jnp.mean(qualifies_S.astype(jnp.float32)),
             "groups_filled": jnp.sum(qualifies_K.astype(jnp.float32))}
  return group_index_K, qualifies_K, metrics


def dynamic_sample(loss: RLLossConfig, batch: dict[str, jax.Array], num_groups: int
                   ) -> tuple[dict[str, jax.Array], dict[str, jax.Array]]:
  """The rollout batch restricted to `select_groups`' num_groups groups (R' = num_groups * G rows); advantages
  are recomputed on the kept rows' rewards and zeroed on the groups kept only to fill the batch."""
  g = loss.num_generations
  group_index_K, qualifies_K, metrics = select_groups(batch["task_rewards"], g, num_groups)
  rows = (group_index_K[:, None] * g + jnp.arange(g, dtype=jnp.int32)[None, :]).reshape(-1)
  kept = {k: v[rows] for k, v in batch.items()}
  kept["advantages"] = advantages(loss, kept["rewards"]) * jnp.repeat(qualifies_K, g).astype(jnp.float32)
  return kept, metrics


def make_rl_step(graphdef: nnx.GraphDef, cfg: RLConfig, optimizer: Any, sources: Sequence[rewards_lib.RewardSource],
                 *, eos_ids: tuple[int, ...], pad_id: int, world: Any = None) -> state_lib.StepFn:
  """The pure step (state, prompt batch) -> (state, metrics): one rollout, then `num_iterations` updates.

  The prompt batch holds `cfg.prompts_per_rollout` prompts (oversampled with loss.dynamic_sampling)."""
  loss = cfg.loss
  inner = state_lib.make_train_step(graphdef, rl_loss_fn(loss, cfg.sampling.temperature, cfg.sampling.max_new_tokens),
                                    optimizer, grad_accum_steps=cfg.optimizer.grad_accum_steps,
                                    schedule=optim.make_schedule(cfg.optimizer))
  detached = detached_old_logps(loss)
  # Without the rollout's policy forward the update also reports the KL metric, so it keeps the reference log-probs.
  keep = ("prompt_ids", "prompt_mask", "tokens", "mask", "advantages") + (() if detached else ("old_logps",)) + (
      ("ref_logps",) if loss.kl_mode == "loss" or detached else ())

  def step_fn(state: state_lib.TrainState, prompts: dict[str, jax.Array]):
    rng = rollout_key(state)
    model = nnx.merge(graphdef, state.params, state.extra)
    batch, metrics = rollout(model, prompts, rng, loss=loss, sampling=cfg.sampling, sources=sources,
                             eos_ids=eos_ids, pad_id=pad_id, world=world, policy_logps=not detached)
    if loss.dynamic_sampling:  # The prompts are oversample * prompts_per_step; keep prompts_per_step groups.
      batch, sampling_metrics = dynamic_sample(loss, batch, cfg.prompts_per_step)
      metrics = {**metrics, **sampling_metrics}
    batch = {k: batch[k] for k in keep if k in batch}
    state, stacked = jax.lax.scan(lambda s, _: inner(s, batch), state, None, length=loss.num_iterations)
    update_metrics = metrics_lib.stack_reduce(stacked)
    return state, {**update_metrics, **metrics}

  return step_fn


def rollout_key(state: state_lib.TrainState) -> jax.Array:
  """The rollout key of the next step: a function of the state alone (exact resume)."""
  return jax.random.fold_in(jax.random.fold_in(state.rng, state.step), ROLLOUT_STREAM)

# ------------------------------------------------------------------------------------------------ setup and stage
def rl_setup(cfg: RLConfig, model_config: Any, pretrained: dict | None, reward_models: dict, optimizer: Any,
             mesh: Any, critic: tuple[Any, dict] | None = None) -> state_lib.StateSetup:
  """The RLModel train state: policy (+ frozen reference = the initial policy) + frozen reward models.

  With algorithm "ppo" also the value model, trained by the same optimizer over the joint (policy + value) Param
  tree, as TRL's PPOTrainer (one optimizer over its PolicyAndValueWrapper): `critic` = (factory key -> RewardModel,
  its Param values) gives a separate critic, None a fresh linear value head on the policy's backbone; and the KL
  coefficient, starting at loss.beta (0 with kl_mode "none").
  With `cfg.model.lora` the policy is a LoRA CausalLM with a frozen base (only its adapters, and PPO's value head or
  critic, are params) and the reference is that policy with its adapters off (no reference copy)."""
  with_reference = cfg.loss.kl_mode != "none" or cfg.loss.algorithm == "online_dpo"
  is_ppo = cfg.loss.algorithm == "ppo"
  lora = lora_lib.lora_config(cfg.model.lora)
  lora_reference = with_reference and lora is not None

  def policy(key):
    if lora is None:
      return CausalLM(model_config, rngs=nnx.Rngs(key))
    return common.frozen_base(CausalLM(model_config, rngs=nnx.Rngs(key), lora=lora))

  def model_fn(key):
    rms = {name: factory(key) for name, (factory, _) in reward_models.items()}
    ref = CausalLM(model_config, rngs=nnx.Rngs(key)) if with_reference and lora is None else None
    if not is_ppo:
      return RLModel(policy(key), ref, rms, lora_reference=lora_reference)
    value_key = jax.random.fold_in(key, 1)
    value_head = None if critic is not None else RewardHead(
        model_config.embed_dim, HeadConfig("linear"), rngs=nnx.Rngs(value_key),
        param_dtype=jnp.dtype(model_config.param_dtype))
    return RLModel(policy(key), ref, rms, value_head=value_head,
                   critic=critic[0](value_key) if critic is not None else None,
                   kl_coef=cfg.loss.beta if cfg.loss.kl_mode == "reward" else 0.0, lora_reference=lora_reference)

  setup = state_lib.init_train_state(model_fn, optimizer, cfg.seed, mesh=mesh,
                                     shardings=common.logical_or_replicated(mesh))
  fresh = setup.init

  def init():
    state = fresh()
    params, extra = state.params, state.extra
    if pretrained is not None and lora is not None:  # The frozen base; the adapters keep their init (B = 0).
      extra = common.overwrite(extra, pretrained, ("policy",))
    elif pretrained is not None:
      params = common.overwrite(params, pretrained, ("policy",))
      if with_reference:
        extra = common.overwrite(extra, pretrained, ("reference",))
    for name, (_, pure) in reward_models.items():
      extra = common.overwrite(extra, pure, (name,))
    if critic is not None:
      params = common.overwrite(params, critic[1], ("critic",))
    return state.replace(params=params, extra=extra)

  return setup._replace(init=init)


class DifficultyTable:
  """GRPO-S's per-prompt columns, attached to each prompt batch by its prompt_index (`inputs.AttachedBatches`):
  alpha_data (B,) float32 and the demonstration reference_tokens / reference_mask (B, N) int32."""

  def __init__(self, delta_N: np.ndarray, reference_tokens_NxT: np.ndarray, reference_mask_NxT: np.ndarray):
    self.delta_N = np.asarray(delta_N, np.float32)
    self.alpha_data_N = np.asarray(ds.data_hardness(self.delta_N), np.float32)
    self.tokens, self.mask = reference_tokens_NxT.astype(np.int32), reference_mask_NxT.astype(np.int32)

  def attach(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    idx = batch["prompt_index"]
    return {**batch, "alpha_data": self.alpha_data_N[idx], "reference_tokens": self.tokens[idx],
            "reference_mask": self.mask[idx]}


def _first_text(value: Any) -> Any:
  return value[0] if isinstance(value, (list, tuple)) and value else value


def difficulty_table(cfg: RLConfig, setup: state_lib.StateSetup, train: inputs_lib.PromptSet, tokenizer: Any,
                     eos_ids: tuple[int, ...], pad_id: int) -> tuple[DifficultyTable, dict]:
  """GRPO-S's per-prompt data hardness, computed once before training, and a summary for the stage outputs.

  delta = 1 - W (`ds.clause_similarity`) of one sample of the initial policy per prompt (key PRNGKey(seed + 2),
  the rollout sampling settings) to the prompt's demonstration, content tokens (end tokens left out) as clauses
  embedded by the initial policy's input embedding rows (W = 0, delta = 1 for an empty sample); or the column
  `loss.hardness_column` (delta in [0, 2])."""
  loss, columns = cfg.loss, train.table.columns
  if loss.reference_column not in columns:
    raise ValueError(f"loss.reference_column: {loss.reference_column!r} is not a column of the train prompts "
                     f"(columns: {sorted(columns)}); GRPO-S needs a demonstration response per prompt")
  refs = [_first_text(v) for v in columns[loss.reference_column]]
  bad = [i for i, r in enumerate(refs) if not isinstance(r, str) or not r]
  if bad:
    raise ValueError(f"loss.reference_column: row {bad[0]} of column {loss.reference_column!r} is not a non-empty "
                     f"text ({refs[bad[0]]!r}); {len(bad)} such rows")
  ref_tokens, ref_mask = padding.encode_responses(tokenizer, refs, cfg.sampling.max_new_tokens)
  if loss.hardness_column:
    if loss.hardness_column not in columns:
      raise ValueError(f"loss.hardness_column: {loss.hardness_column!r} is not a column of the train prompts "
                       f"(columns: {sorted(columns)})")
    values = columns[loss.hardness_column]
    bad = [i for i, v in enumerate(values)
           if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0.0 <= v <= 2.0 or math.isnan(v)]
    if bad:
      raise ValueError(f"loss.hardness_column: row {bad[0]} has {values[bad[0]]!r}; expected delta = 1 - "
                       f"similarity, a number in [0, 2] ({len(bad)} such rows)")
    delta = np.asarray(values, np.float32)
    how = f"column {loss.hardness_column!r}"
  else:
    delta = initial_dissimilarity(cfg, setup, train.ids, train.mask, ref_tokens, ref_mask, eos_ids, pad_id)
    how = "initial policy sample vs demonstration, input-embedding token cosine"
  table = DifficultyTable(delta, ref_tokens, ref_mask)
  summary = {"source": how, "delta_mean": float(delta.mean()), "delta_min": float(delta.min()),
             "delta_max": float(delta.max()), "alpha_data_min": float(table.alpha_data_N.min()),
             "alpha_data_max": float(table.alpha_data_N.max())}
  print(f"[rl] GRPO-S data hardness ({how}): delta mean {summary['delta_mean']:.4f} in [{summary['delta_min']:.4f}, "
        f"{summary['delta_max']:.4f}]; alpha_D in [{summary['alpha_data_min']:.4f}, {summary['alpha_data_max']:.4f}]",
        flush=True)
  return table, summary


def initial_dissimilarity(cfg: RLConfig, setup: state_lib.StateSetup, ids_NxP: np.ndarray, mask_NxP: np.ndarray,
                          ref_tokens_NxT: np.ndarray, ref_mask_NxT: np.ndarray, eos_ids: tuple[int, ...],
                          pad_id: int, chunk: int = 64) -> np.ndarray:
  """delta_N = 1 - W of one initial-policy sample per prompt against its demonstration (float32 numpy), in chunks
  of `chunk` prompts (the last one padded by repeating rows: one compiled program)."""
  state = setup.init()
  n = ids_NxP.shape[0]
  chunk = min(chunk, n)
  key = jax.random.PRNGKey(cfg.seed + 2)
  sampling = cfg.sampling

  @jax.jit
  def delta(state, ids, mask, refs, ref_mask, key):
    policy = nnx.merge(setup.graphdef, state.params, state.extra).policy
    gen = generate(policy, ids, mask, max_new_tokens=sampling.max_new_tokens, rng=key,
                   temperature=sampling.temperature, top_k=sampling.top_k or None,
                   top_p=sampling.top_p if sampling.top_p < 1.0 else None, eos_ids=eos_ids, pad_id=pad_id,
                   cache_bucket=sampling.cache_bucket, tokens_per_iteration=sampling.tokens_per_iteration)
    embed_VxD = policy.embed[...].astype(jnp.float32)
    # Clauses are content tokens: the end token would match the demonstration's and make an empty response "easy".
    content = lambda t, m: (m > 0) & ~jnp.isin(t, jnp.asarray(eos_ids))  # noqa: E731
    w = ds.clause_similarity(embed_VxD[gen.tokens], content(gen.tokens, gen.mask), embed_VxD[refs],
                             content(refs, ref_mask))
    return 1.0 - w

  out = []
  for start in range(0, n, chunk):
    rows = np.arange(start, start + chunk) % n
    d = delta(state, ids_NxP[rows], mask_NxP[rows], ref_tokens_NxT[rows], ref_mask_NxT[rows],
              jax.random.fold_in(key, start))
    out.append(np.asarray(jax.device_get(d))[:min(chunk, n - start)])
  return np.clip(np.concatenate(out), 0.0, 2.0).astype(np.float32)


def load_critic(value_model: str, inputs: dict, tokenizer: Any) -> tuple[Any, dict] | None:
  """(factory key -> RewardModel, Param values of member 0) of the reward model `value_model` names ("stage:<name>"
  or a folder), the critic PPO trains; None for "" (a value head on the policy's backbone). The critic reads the
  policy's token ids, so the reward model must have been trained on `tokenizer`'s vocabulary
  (`artifacts.check_reward_tokenizer`)."""
  if not value_model:
    return None
  rm_dir = artifacts.check_reward_tokenizer(common.resolve_path(value_model, inputs, "rm_dir"), tokenizer,
                                            "value_model")
  config, head, num_members = artifacts.reward_model_spec(rm_dir)
  if head.kind == "multihead":
    raise ConfigError(f"value_model: the reward model in {rm_dir} has a 'multihead' head ({head.num_outputs} "
                      "outputs); a critic needs one scalar per position (a linear, mlp or attributes head)")
  member = artifacts.load_reward_model(rm_dir).member(0).merged()  # A LoRA reward model's member: merged.
  print(f"[rl] value_model: a critic initialized from member 0 of {num_members} of {rm_dir}", flush=True)
  return (lambda key: RewardModel(config, head, rngs=nnx.Rngs(key)),
          jax.device_get(nnx.to_pure_dict(nnx.state(member, nnx.Param))))


def _eval_fn(cfg: RLConfig, setup: state_lib.StateSetup, sources, held_out: inputs_lib.PromptSet, world: Any,
             eos_ids: tuple[int, ...], pad_id: int):
  """state -> {reward/*, kl, completion_length, length[, gold, repeat_rate]} of one sample per held-out prompt (fixed
  key), each meaning what the training metric of that name means: the rollout runs with the training algorithm, so
  PPO's reward/total leaves out the KL penalty (training applies it per token) while GRPO / RLOO's with kl_mode
  "reward" includes it, and online DPO's kl is taken at temperature 1 (`rollout_score_temperature`). Only what one
  sample per prompt needs changes: num_generations 1 (group advantages of a group of 1 are 0, never read), no
  GRPO-S scaling (the held-out prompts carry no demonstrations), no dynamic sampling, no token rewards (they only
  move the process sources' sum out of the PPO rows' rewards after reward/total is taken)."""
  prompts = {"prompt_ids": held_out.ids, "prompt_mask": held_out.mask,
             "prompt_index": np.arange(held_out.ids.shape[0], dtype=np.int32)}
  eval_loss = dataclasses.replace(cfg.loss, num_generations=1, difficulty_scaling="none", dynamic_sampling=False,
                                  oversample=1, token_rewards=False)

  key = lambda state: jax.random.PRNGKey(cfg.seed + 1)  # noqa: E731  the same samples at every eval

  @jax.jit
  def evaluate(state, sampled):
    model = nnx.merge(setup.graphdef, state.params, state.extra)
    _, m = rollout(model, {**prompts, **sampled}, key(state), loss=eval_loss, sampling=cfg.sampling,
                   sources=sources, eos_ids=eos_ids, pad_id=pad_id, world=world, num_samples=1)
    return {k: v for k, v in m.items()
            if k.startswith(("reward/", "gold", "kl", "completion_length", "repeat_rate")) or k == "length"}

  functions = rewards_lib.host_functions(sources) if jax.process_count() == 1 else {}
  prepare = host_scored_rollouts(setup.graphdef, cfg, functions, None, eos_ids=eos_ids, pad_id=pad_id,
                                 loss=eval_loss, key_fn=key, num_samples=1) if functions else None

  def eval_fn(state):
    sampled = {}
    if prepare is not None:  # text rewards: sampled and scored before the program that evaluates (no callback)
      sampled = {k: v for k, v in prepare(state, prompts).items() if k not in prompts}
    return {k: float(v) for k, v in jax.device_get(evaluate(state, sampled)).items()}

  return eval_fn


def run(cfg: RLConfig, workdir: str, inputs: dict) -> dict:
  """The "rl" stage: GRPO / RLOO / PPO / online DPO training, eval on held-out prompts (online DPO: "kl" is to the
  current reference, which moves with ref_update_every), saves the policy to `workdir/model`."""
  model_path = common.resolve_path(cfg.model.init_from, inputs) if cfg.model.init_from else ""
  source = inputs_lib.open_prompts(cfg.prompts, model_path)
  world, tokenizer = source.world, source.tokenizer
  mesh = common.make_stage_mesh(cfg.mesh, cfg.num_devices)
  model_config, pretrained, _ = common.load_weights(cfg.model, inputs, tokenizer.vocab_size)
  train = source.split("train", cfg.num_prompts, cfg.max_prompt_length)
  reference = None
  if train.references is not None:  # Standardization scores the reference responses as rollouts are scored.
    reference = (train.ids, train.mask, *padding.encode_responses(tokenizer, train.references,
                                                                  cfg.sampling.max_new_tokens))
  reward_models, member_stats = rewards_lib.load_reward_models(cfg.rewards, inputs, reference, model_path, tokenizer)
  errors = rewards_lib.CallbackErrors()
  sources = rewards_lib.build_sources(cfg.rewards, world=world, tokenizer=tokenizer, table=train.table,
                                      member_stats=member_stats, errors=errors)
  eos_ids, pad_id = inputs_lib.end_ids(tokenizer, model_config, world), tokenizer.pad_id
  optimizer = optim.make_optimizer(cfg.optimizer)
  critic = load_critic(cfg.value_model, inputs, tokenizer) if cfg.loss.algorithm == "ppo" else None
  setup = rl_setup(cfg, model_config, pretrained, reward_models, optimizer, mesh, critic)
  make_step = {"ppo": make_ppo_step, "online_dpo": make_online_dpo_step}.get(cfg.loss.algorithm, make_rl_step)
  common.logps_path(cfg.loss)  # says which LM-head path every response log-prob takes
  step_fn = make_step(setup.graphdef, cfg, optimizer, sources, eos_ids=eos_ids, pad_id=pad_id, world=world)
  if cfg.prompt_groups:
    if cfg.prompt_groups not in train.table.columns:
      raise ConfigError(f"prompt_groups: column {cfg.prompt_groups!r} not in the prompt files; their columns: "
                        f"{sorted(train.table.columns)}")
    try:
      data_iter = inputs_lib.GroupedPromptIterator(train.ids, train.mask, cfg.prompts_per_rollout, cfg.seed,
                                                   train.table.columns[cfg.prompt_groups])
    except ValueError as e:
      raise ConfigError(f"prompt_groups: {e}") from e
  else:
    data_iter = inputs_lib.PromptIterator(train.ids, train.mask, cfg.prompts_per_rollout, cfg.seed)
  report = train.report
  if cfg.loss.difficulty_scaling == "grpo_s":
    table, difficulty = difficulty_table(cfg, setup, train, tokenizer, eos_ids, pad_id)
    data_iter = inputs_lib.AttachedBatches(data_iter, table)
    report = {**report, "difficulty": difficulty}
    os.makedirs(workdir, exist_ok=True)
    with open(os.path.join(workdir, "prompt_hardness.json"), "w") as f:
      json.dump({"delta": [float(x) for x in table.delta_N], "alpha_data": [float(x) for x in table.alpha_data_N]}, f)
  eval_fn, eval_sources = None, []
  if cfg.eval_prompts:
    held_out = source.split("eval", cfg.eval_prompts, cfg.max_prompt_length, world_split="validation")
    if world is not None:  # The world's held-out prompts have no reference responses: model and world rewards.
      eval_sources = [x for x, spec in zip(sources, cfg.rewards) if spec.kind in rewards_lib.MODEL_KINDS]
    else:  # The held-out prompts' own texts and columns.
      eval_sources = rewards_lib.build_sources(cfg.rewards, tokenizer=tokenizer, table=held_out.table,
                                               member_stats=member_stats, errors=errors)
    eval_fn = _eval_fn(cfg, setup, eval_sources, held_out, world, eos_ids, pad_id)
  replicated = NamedSharding(mesh, P())  # Prompt batches are tiny; R rows need not divide the mesh.
  # Text rewards: each step's rollout is sampled and scored on the host before the step program (no host callback
  # in it, so XLA's persistent cache keeps it). Several processes keep the callbacks inside the step.
  functions = rewards_lib.host_functions(sources) if jax.process_count() == 1 else {}
  prepare_fn = host_scored_rollouts(setup.graphdef, cfg, functions, replicated, eos_ids=eos_ids,
                                    pad_id=pad_id) if functions else None
  try:
    results = loop_lib.train(config=cfg.loop, workdir=workdir, setup=setup, step_fn=step_fn, data_iter=data_iter,
                             mesh=mesh, batch_shardings=replicated, eval_fn=eval_fn,
                             run_config=dataclasses.asdict(cfg), prepare_fn=prepare_fn)
  except Exception as e:  # pylint: disable=broad-except
    errors.reraise_from(e)  # A reward function's own error, not XLA's report of it.
    raise
  adapter_dir = os.path.join(workdir, "adapters") if cfg.model.lora else None
  model_dir = artifacts.save_policy(setup, results["state"], os.path.join(workdir, "model"),
                                    prefix="policy", tokenizer=tokenizer, adapter_dir=adapter_dir)
  extra = {} if adapter_dir is None else {"adapter_dir": adapter_dir}
  # Text rewards' outcome counts (e.g. SQL queries the time limit stopped), rows scored by this process.
  outcomes = rewards_lib.report_outcomes({"train": sources, "eval": eval_sources})
  if outcomes:
    extra["reward_outcomes"] = outcomes
  if cfg.eval_prompts and world is None:  # the held-out files' own split: what it used and cut
    report = {**report, "held_out": held_out.report}
  return common.stage_outputs(results, model_dir=model_dir, prompts=report, **extra)
