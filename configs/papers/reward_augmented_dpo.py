"""Reward-augmented DPO (Zhang et al. 2024, "Reward-Augmented Data Enhances Direct Preference Alignment of LLMs")
vs DPO on the synthetic world: gold reward of each policy and the "unlearning" of high-score rejected responses.

One run (per seed and beta) is the chain
  sft         SFT on the world's reference samples with data.goal_fraction = 0.5: half of the prompts carry a
              goal prompt ("<system> score: s <user> ...") with a RANDOM score s, so the policy knows the goal
              format but not what a score means (the paper starts from instruct models that read system prompts;
              docs/reproductions.md says why a plain-prompt SFT breaks RA-DPO in this world)
  dpo, ra_dpo             DPO on the pairs / on the reward-augmented pairs (data.transform="reward_augmented")
  dpo_ls, ra_dpo_ls       the same with label smoothing 0.1 (conservative DPO)
  ra_dpo_ls3  RA-DPO with the official recipe's label smoothing 0.3 (with the sweep's beta = 0.01 it is the
              recipe's (beta, label smoothing) = (0.01, 0.3))
  ra_dpo_noties  RA-DPO without the tied-score pairs (data.score_ties="drop"): a tied pair otherwise becomes two
              rows with the same goal and opposite orders, which pull its margin back to the reference's
  dpo_scored  DPO on the pairs re-ordered by their judge scores (data.transform="score_ordered"): the same score
              information RA-DPO gets, so DPO and RA-DPO differ only in the method (plain DPO trains on the noisy
              labels, which agree with gold less often than the judge scores do)
  eval_*      gold reward of each policy's samples vs the SFT's (paired per prompt) and sampled KL; RA-DPO
              policies sample with the top-score goal (goal_conditioned=True, "score: 10"); eval_sft_goal is
              the SFT itself sampled with the goal (the format check: ~0 gain expected)
  shift_*     "logp_shift": log pi - log pi_sft of held-out chosen / rejected responses by judge-score bucket
              (rejected_high: rejected with score >= 7); DPO on plain prompts, RA-DPO with the top-score goal
              in both models' prompts (shift_ra_dpo_plain: RA-DPO on plain prompts), plus the goal-margin gap
              (log pi(y | goal 10) - log pi(y | goal 3) on high- minus low-score responses)

Every preference stage has the same optimizer (lr 1e-3, cosine), 150 steps of 32 pairs from 2400 labeled pairs:
DPO sees each pair twice, RA-DPO (4800 relabeled pairs) each relabeled pair once. The sweep: beta in {0.01, 0.1} x
seeds 0-4 (a seed reseeds every stage: init, data order, sampling; the world is fixed); VERDICTS states the rules.

Variants: default (the full per-seed run), smoke (seconds).
    python -m experiments.run --config configs/papers/reward_augmented_dpo.py --workdir runs/ra_dpo
    python -m experiments.sweep --config configs/papers/reward_augmented_dpo.py \
        --workdir runs/papers/reward_augmented_dpo
    python -m experiments.tables --workdir runs/papers/reward_augmented_dpo
"""

import ml_collections

from configs import _sections as S
from jaxrlhf.stages import logp_shift
from jaxrlhf.stages import evaluate_policy, preference, sft

VARIANTS = ("default", "smoke")
METHODS = ("dpo", "ra_dpo", "dpo_ls", "ra_dpo_ls", "ra_dpo_ls3", "ra_dpo_noties", "dpo_scored")
BETAS = (0.01, 0.1)
SEEDS = (0, 1, 2, 3, 4)
LABEL_SMOOTHING = {"_ls": 0.1, "_ls3": 0.3}  # by method suffix; 0.3 is the official recipe's value
GOAL_FRACTION = 0.5  # Share of SFT prompts with a goal prompt (random score): the policy learns the format.


def _rule(beta: float, claim: str, value: str, baseline, note: str = "") -> dict:
  """One rule of VERDICTS: value above baseline (a metric of the same run or a number) over seeds at this beta."""
  return dict(sweep="reward_augmented_dpo", claim=claim, value=value, baseline=baseline, direction=+1,
              where={"dpo.loss.beta": beta}, note=note)


# The verdict rules, stated before the runs in docs/reproductions.md's RA-DPO section ("The claims we test are the two
# directions: RA-DPO@top goal >= DPO in gold reward, and a smaller drop of high-score rejected responses under RA-DPO";
# the paper's RA-DPO beats both its start and DPO, "What the paper reports"), each a paired difference over seeds per
# beta, judged by the project's rule (ARCHITECTURE.md section 7: the 95% t interval excludes 0, >= 5 seeds). The
# score-ordered DPO control and the recipe arm (beta 0.01, label smoothing 0.3) were added for these same claims by
# issue 15, before the 9a557b3 run. The unlearning ratio to the chosen-response shift stays a descriptive reading.
RECIPE = "the official recipe's (beta, label smoothing) = (0.01, 0.3)"
VERDICTS = tuple(rule for beta in BETAS for rule in (
    _rule(beta, "RA-DPO@top goal beats DPO in gold", "eval_ra_dpo/gold/gain", "eval_dpo/gold/gain"),
    _rule(beta, "RA-DPO@top goal beats score-ordered DPO in gold", "eval_ra_dpo/gold/gain",
          "eval_dpo_scored/gold/gain", "like for like: both use the judge scores (issue 15)"),
    _rule(beta, "RA-DPO@top goal beats its SFT in gold", "eval_ra_dpo/gold/gain", 0.0),
    *((_rule(beta, "recipe RA-DPO (ls 0.3) beats DPO in gold", "eval_ra_dpo_ls3/gold/gain", "eval_dpo/gold/gain",
             RECIPE),
       _rule(beta, "recipe RA-DPO (ls 0.3) beats its SFT in gold", "eval_ra_dpo_ls3/gold/gain", 0.0, RECIPE))
      if beta == 0.01 else ()),
    _rule(beta, "RA-DPO drops high-score rejected responses less than DPO", "shift_ra_dpo/rejected_high",
          "shift_dpo/rejected_high", "log-prob shift vs the SFT (nats) of rejected responses with score >= 7"),
))


def _sizes(smoke: bool) -> dict:
  if smoke:
    return dict(
        model=S.SMOKE_MODEL,
        sft=dict(data=S.SMOKE_DATA, loop=S.SMOKE_LOOP, optimizer=dict(learning_rate=3e-3)),
        pref=dict(data=dict(S.SMOKE_DATA, max_length=48), loop=S.SMOKE_LOOP, optimizer=dict(learning_rate=1e-3)),
        eval=dict(num_prompts=16, batch_size=16, max_new_tokens=12),
        shift=dict(num_pairs=32, batch_size=32))
  cosine = dict(schedule="cosine", warmup_steps=10, end_lr_factor=0.1, clip_norm=1.0)
  return dict(
      model=S.WORLD_MODEL,
      sft=dict(data=dict(num_train=8192, num_eval=256, batch_size=32, max_length=48),
               optimizer=dict(cosine, learning_rate=3e-3, decay_steps=150),
               loop=dict(num_steps=150, log_every=25, checkpoint_every=150, eval_every=0)),
      # 2400 pairs: DPO sees each pair twice in 150 steps of 32, RA-DPO (4800 relabeled pairs) once.
      pref=dict(data=dict(num_train=2400, num_eval=128, batch_size=32, max_length=48),
                optimizer=dict(cosine, learning_rate=1e-3, decay_steps=150),
                loop=dict(num_steps=150, log_every=25, checkpoint_every=150, eval_every=0)),
      eval=dict(num_prompts=256, batch_size=128, max_new_tokens=32),
      shift=dict(num_pairs=512, batch_size=128))


def _methods(variant: str) -> tuple[str, ...]:
  """The preference stages of a variant (smoke: one DPO and one RA-DPO stage, for seconds)."""
  return ("dpo", "ra_dpo_ls") if variant == "smoke" else METHODS


def get_config(arg=None):
  variant = arg or "default"
  if variant not in VARIANTS:
    raise ValueError(f"configs/papers/reward_augmented_dpo.py: unknown variant {variant!r}; valid: "
                     + ", ".join(VARIANTS))
  sizes = _sizes(variant == "smoke")
  methods = _methods(variant)
  sft_sizes = dict(sizes["sft"], data=dict(sizes["sft"]["data"], goal_fraction=GOAL_FRACTION))
  stages = {"sft": S.stage("sft", sft.SFTConfig, model=dict(config=sizes["model"]), **sft_sizes)}
  for method in methods:
    transform = "reward_augmented" if method.startswith("ra_") else "score_ordered" if method == "dpo_scored" \
        else "none"
    data = dict(sizes["pref"]["data"], transform=transform)
    if method == "ra_dpo_noties":
      data["score_ties"] = "drop"
    smoothing = next((v for suffix, v in LABEL_SMOOTHING.items() if method.endswith(suffix)), 0.0)
    loss = dict(algorithm="dpo", beta=0.1, label_smoothing=smoothing)
    stages[method] = S.stage("preference", preference.PreferenceConfig, model=dict(init_from="stage:sft"),
                             data=data, loss=loss, optimizer=sizes["pref"]["optimizer"], loop=sizes["pref"]["loop"])
  extra_metrics = ()
  if variant != "smoke":
    stages["eval_sft_goal"] = S.stage("evaluate_policy", evaluate_policy.EvaluatePolicyConfig, policy="stage:sft",
                                      base="stage:sft", goal_conditioned=True, **sizes["eval"])
    stages["shift_ra_dpo_plain"] = S.stage("logp_shift", logp_shift.LogpShiftConfig, policy="stage:ra_dpo",
                                           base="stage:sft", goal="none", **sizes["shift"])
    extra_metrics = ("shift_ra_dpo_plain/rejected_high", "eval_sft_goal/gold/gain")
  for method in methods:
    goal = method.startswith("ra_")
    stages[f"eval_{method}"] = S.stage("evaluate_policy", evaluate_policy.EvaluatePolicyConfig,
                                       policy=f"stage:{method}",
                                       base="stage:sft", goal_conditioned=goal, **sizes["eval"])
    stages[f"shift_{method}"] = S.stage("logp_shift", logp_shift.LogpShiftConfig, policy=f"stage:{method}",
                                        base="stage:sft", goal="top" if goal else "none", **sizes["shift"])
  config = S.chain(stages, seed=0)
  ra = [m for m in methods if m.startswith("ra_")]
  config.tables = dict(metrics=(
      *[f"eval_{m}/gold/gain" for m in methods],
      *[f"eval_{m}/kl" for m in methods],
      *[f"shift_{m}/rejected_high" for m in methods],
      *[f"shift_{m}/chosen" for m in methods],
      *[f"shift_{m}/goal_margin/gap" for m in ra],
      *extra_metrics))
  config.plots = [
      ml_collections.ConfigDict(dict(name=f"{kind}_{m}", x="dpo.loss.beta", y=f"{prefix}_{m}/{metric}", group_by=""))
      for kind, prefix, metric in (("gold_gain", "eval", "gold/gain"), ("rejected_high_shift", "shift",
                                                                        "rejected_high"))
      for m in methods]
  return config


def sweep(add, arg=None):
  variant = arg or "default"
  smoke = variant == "smoke"
  for seed in SEEDS[:1] if smoke else SEEDS:
    for beta in BETAS[1:] if smoke else BETAS:
      add(seed=seed, **{f"{m}.loss.beta": beta for m in _methods(variant)})
