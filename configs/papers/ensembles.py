"""Reward-model ensembles against overoptimization (Coste et al. 2023, "Reward Model Ensembles Help Mitigate
Overoptimization"; Eisenstein et al. 2023, "Helping or Herding? Reward Model Ensembles Mitigate but do not
Eliminate Reward Hacking") in the synthetic gold-reward world.

Per seed, one chain (variant "default", best-of-N):

  sft           the base policy (SFT on the world's reference distribution)
  rm_pretrain   K = 5 Bradley-Terry reward models on the world's noisy labels (BT draws of gold, temperature
                0.35, then FLIP_RATE = 25% flips, Coste et al.'s label noise), each with its OWN backbone init and data
                order: the "pretrain-seed" ensemble
  rm_finetune   K = 5 members that all start from ONE backbone init (member 0's) and differ only in head init and
                data order (`shared_backbone=True`): the "finetune-seed" ensemble
  bon_pretrain  best-of-n, n = 1..256, from ONE pool of N = 256 SFT samples per test prompt (unbiased estimator):
                gold and proxy reward and the selected response's length against KL = log n - (n-1)/n, selected
                by a single RM ("rm_single": the average of the 5 single-member curves), by the mean, median,
                min (worst case), mean - lam * var (UWO) and mean - lam * std aggregations, and by gold (oracle)
  bon_finetune  the same pools (pool_from) scored by the finetune-seed ensemble

Mapping of the papers' terms: the world has no separate pretraining, so a reward model's "pretraining" is its
backbone initialization; both ensembles are trained from scratch on the same pairs with the same budget, and differ
only in whether the backbone init is shared. (Fine-tuning all members from the SFT policy's weights
(`model.init_from="stage:sft"`) is the other finetune-seed construction `reward` supports; it also changes the
backbone's quality, so it is not the controlled comparison.)

Variant "bias" (and "bias_smoke"): the best-of-N chain with the labelers' taste for one word switched on
(LABELER_BIAS), tracking that word's share among the selected responses' tokens.

Variant "grpo": sft -> rm_single (K = 1; identical to member 0 of rm_pretrain: same init key and data order) ->
rm_pretrain -> GRPO against the single RM, the pretrain ensemble under each aggregation of raw member scores, and
the min and mean - LAM * std of members standardized over the reference responses (GRPO_REWARDS), for beta in
BETAS (KL as a k3 loss term); eval gold / proxy / KL / length of each policy. Variants "smoke" and "grpo_smoke":
seconds.

    python -m experiments.sweep --config configs/papers/ensembles.py --workdir runs/papers/ensembles --workers 1
    python -m experiments.tables --workdir runs/papers/ensembles
    python -m experiments.analysis.ensembles runs/papers/ensembles docs/reproductions/ensembles --standardized
        # headline plot (plots/headline_bon.png), per-selector table (curves.md), post-hoc standardized.md
    python -m experiments.sweep --config configs/papers/ensembles.py:grpo --workdir runs/papers/ensembles_grpo \
        --workers 1
    python -m experiments.tables --workdir runs/papers/ensembles_grpo
    python -m experiments.analysis.ensembles runs/papers/ensembles_grpo docs/reproductions/ensembles --grpo
    python -m experiments.analysis.verdicts --runs runs/papers --config configs/papers/ensembles.py  # VERDICTS below
"""

from __future__ import annotations

from configs import _sections as S
from jaxrlhf.stages import best_of_n as best_of_n_stage
from jaxrlhf.stages import reward, rl, sft

VARIANTS = ("default", "smoke", "grpo", "grpo_smoke", "bias", "bias_smoke", "grpo_bias", "grpo_bias_smoke")
# Variant "bias": the best-of-N chain with a second, non-length proxy flaw switched on in the reward models' labels
# (WorldConfig.labeler_bias: labelers favour responses dense in "the", a function word gold is indifferent to
# beyond its quality), and every selector's share of "the" in the selected response reported: does a hack shared
# by all members survive ensembling on an axis other than length? Fixed before its first run: bonus 4.0.
LABELER_BIAS = (("the", 4.0),)
SEEDS = (0, 1, 2, 3, 4)  # >= 5 paired seeds (issue 15's rule); the smoke variants run seed 0
NUM_MEMBERS = 5
LAM = 1.0  # The uncertainty penalty of mean - lam * var / std (not tuned).
AGGREGATIONS = ("mean", "median", "min", "mean_minus_var", "mean_minus_std")
ENSEMBLES = ("pretrain", "finetune")
SELECTORS = ("gold", "rm_single", *(f"rm_{a}" for a in AGGREGATIONS))
BETAS = (0.01, 0.05, 0.2)
# Variant "grpo_bias": GRPO against reward models trained on the biased labels (LABELER_BIAS), with the share of
# the biased word in the policy's responses logged (a weight-0 "word_share" source). Rewards and beta fixed before
# its first run: the single RM, the raw mean / min / mean - std and the standardized min / mean - std, at the middle
# beta. The rule, stated before the run (5 paired seeds, paired 95% t interval of the per-seed difference): the
# hack survives ensembling under <reward> if share(<reward>) - share(SFT) excludes 0, positive (the SFT policy
# evaluated on the same prompts with the same key: stage sft_eval).
GRPO_BIAS_REWARDS = ("single", "mean", "min", "meanstd", "zmin", "zmeanstd")
GRPO_BIAS_BETAS = (0.05,)
# GRPO rewards: a single RM, the pretrain ensemble under every aggregation of raw member scores, and min and
# mean - LAM * std over standardized members.
GRPO_REWARDS = ("single", "mean", "median", "min", "meanvar", "meanvar_coste", "meanstd", "zmin", "zmeanstd")
GRPO_LABELS = {"single": "single RM", "mean": "ensemble mean", "median": "ensemble median",
               "min": "ensemble min (raw members)", "meanvar": "ensemble mean - var (raw)",
               "meanvar_coste": "ensemble mean - 0.1 var (raw, unbiased: Coste et al.'s PPO setting)",
               "meanstd": "ensemble mean - std (raw)", "zmin": "ensemble min (standardized)",
               "zmeanstd": "ensemble mean - std (standardized)"}
_GRPO_AGGREGATIONS = {"mean": "mean", "median": "median", "min": "min", "meanvar": "mean_minus_var",
                      "meanvar_coste": "mean_minus_var_unbiased", "meanstd": "mean_minus_std", "zmin": "min",
                      "zmeanstd": "mean_minus_std"}
# Coste et al.'s own UWO weights (tlc4418/llm_optimization): lambda 0.5 with the population variance for best-of-n
# (np.var), lambda 0.1 with the unbiased variance for PPO (torch.var); LAM = 1 elsewhere.
COSTE_BON_UWO = "mean_minus_var:0.5"
COSTE_PPO_LAM = {"meanvar_coste": 0.1}
GOLD_OPTIMUM_LENGTH = 16
# Label noise of the reward models' training pairs: Coste et al. (2023) train their proxy RMs with 25% label
# noise (the world's default is 5% flips on top of the Bradley-Terry draw).
FLIP_RATE = 0.25  # L* of the world's gold length term.



def _sizes(smoke: bool) -> dict:
  """Stage sizes: smoke (seconds) or the full per-seed run (budget: 3 seeds in <= 10 quiet CPU minutes)."""
  if smoke:
    return dict(model=S.SMOKE_MODEL,
                sft=dict(data=S.SMOKE_DATA, loop=S.SMOKE_LOOP, optimizer=dict(learning_rate=3e-3)),
                rm=dict(data=S.SMOKE_DATA, loop=S.SMOKE_LOOP, optimizer=dict(learning_rate=3e-3)),
                bon=dict(num_prompts=4, pool_size=16, batch_size=4, max_new_tokens=12),
                rl=dict(num_prompts=64, prompts_per_step=4, eval_prompts=8, num_devices=1,
                        sampling=dict(max_new_tokens=12), loop=S.SMOKE_LOOP, optimizer=dict(learning_rate=1e-3)))
  return dict(
      model=S.SMOKE_MODEL,
      sft=dict(data=dict(num_train=2048, num_eval=64, batch_size=32, max_length=40),
               optimizer=dict(learning_rate=3e-3, clip_norm=1.0),
               loop=dict(S.SMOKE_LOOP, num_steps=120, log_every=20, checkpoint_every=120)),
      rm=dict(data=dict(num_train=2048, num_eval=256, batch_size=32, max_length=40, world=dict(flip_rate=FLIP_RATE)),
              optimizer=dict(learning_rate=3e-3, clip_norm=1.0),
              loop=dict(S.SMOKE_LOOP, num_steps=120, log_every=20, checkpoint_every=120)),
      bon=dict(num_prompts=64, pool_size=256, batch_size=16, max_new_tokens=32),
      rl=dict(num_prompts=512, prompts_per_step=8, eval_prompts=128, num_devices=1,
              sampling=dict(max_new_tokens=32), optimizer=dict(learning_rate=1e-3, clip_norm=1.0),
              loop=dict(S.SMOKE_LOOP, num_steps=60, log_every=10, checkpoint_every=60, eval_every=60)))


def _bon_chain(sizes: dict, bias: bool = False) -> dict:
  model = dict(config=sizes["model"])
  bon = dict(sizes["bon"], aggregations=AGGREGATIONS, lam=LAM, extra_aggregations=(COSTE_BON_UWO,),
             member_curves=True, plots=False)
  rm = sizes["rm"]
  if bias:
    rm = dict(rm, data=dict(rm["data"], world=dict(rm["data"].get("world", {}), labeler_bias=LABELER_BIAS)))
    bon["track_words"] = tuple(word for word, _ in LABELER_BIAS)
  return {
      "sft": S.stage("sft", sft.SFTConfig, model=model, **sizes["sft"]),
      "rm_pretrain": S.stage("reward", reward.RewardConfig, model=model, num_members=NUM_MEMBERS, **rm),
      "rm_finetune": S.stage("reward", reward.RewardConfig, model=model, num_members=NUM_MEMBERS,
                             shared_backbone=True, **rm),
      "bon_pretrain": S.stage("best_of_n", best_of_n_stage.BestOfNConfig, policy="stage:sft",
                              reward_model="stage:rm_pretrain", **bon),
      "bon_finetune": S.stage("best_of_n", best_of_n_stage.BestOfNConfig, policy="stage:sft",
                              reward_model="stage:rm_finetune", pool_from="stage:bon_pretrain", **bon),
  }


def rl_stage_name(rm: str, beta: float) -> str:
  return f"grpo_{rm}_b{beta:g}".replace(".", "p")


# The section's rules as paired seed comparisons (experiments.analysis.verdicts; ARCHITECTURE.md section 7 and issue
# 15: "reproduced" = the paired 95% t interval of value - baseline excludes 0 on the claimed side, >= 5 seeds). Each
# is a claim the section of docs/reproductions.md tested before this re-run; none was added after seeing its numbers.
# Best-of-N (section "Verdict", items 1-3): ensembles beat a single RM at n = N (Eisenstein et al.); the papers'
# conservative objectives (WCO = min, UWO = mean - lam var, at LAM = 1 and at Coste et al.'s best-of-n weight 0.5)
# beat it too (Coste et al.); with a single RM gold peaks and then falls, and with 25% label noise so does the mean
# ensemble (Coste et al.); pretrain-seed beats finetune-seed ensembles (Eisenstein et al.); the length hack shared by
# every member survives (selected length past the gold optimum L* = GOLD_OPTIMUM_LENGTH). The post-hoc standardized
# selectors are not sweep metrics; experiments.analysis.ensembles --standardized computes them (labelled post hoc).
_BON_ENSEMBLE_SELECTORS = (("rm_mean", "mean"), ("rm_min", "min (WCO)"),
                           ("rm_mean_minus_var", "mean - var, lam 1 (UWO)"),
                           ("rm_mean_minus_var_lam0.5", "mean - 0.5 var (Coste's UWO)"))
_BON_VERDICTS = tuple(
    dict(sweep="ensembles", claim=f"{label} beats a single RM ({e})", value=f"bon_{e}/{s}/gold@N",
         baseline=f"bon_{e}/rm_single/gold@N", direction=+1)
    for e in ENSEMBLES for s, label in _BON_ENSEMBLE_SELECTORS) + (
    dict(sweep="ensembles", claim="a single RM overoptimizes (gold falls from its peak)",
         value="bon_pretrain/rm_single/gold_drop", baseline=0.0, direction=+1,
         note="gold_drop = peak - gold@N >= 0 by construction: the test is whether it is clearly above 0"),
    dict(sweep="ensembles", claim="the mean ensemble still overoptimizes under 25% noise",
         value="bon_pretrain/rm_mean/gold_drop", baseline=0.0, direction=+1,
         note="gold_drop = peak - gold@N >= 0 by construction: the test is whether it is clearly above 0"),
    dict(sweep="ensembles", claim="pretrain-seed beats finetune-seed (mean ensembles)",
         value="bon_pretrain/rm_mean/gold@N", baseline="bon_finetune/rm_mean/gold@N", direction=+1),
    *(dict(sweep="ensembles", claim=f"the length hack survives the {label} ensemble (pretrain)",
           value=f"bon_pretrain/{s}/length@N", baseline=float(GOLD_OPTIMUM_LENGTH), direction=+1)
      for s, label in (("rm_mean", "mean"), ("rm_min", "min"))),
)
# Variant "bias" (rule stated before its first run, commit 1d7377f: "every ensemble selector's best-of-256 choice has
# a higher share of 'the' than the pool mean in every seed, while gold's own choice does not"): share@N - share@1
# (share@1 is the pool mean) per selector; "in every seed" is the per-seed column of the report. Gold's choice
# satisfies the rule unless its outcome is "against" (the rule asks only that it is not above the pool mean).
_BIAS_SELECTORS = ("rm_mean", "rm_median", "rm_min", "rm_mean_minus_std", "rm_mean_minus_var",
                   "rm_mean_minus_var_lam0.5")
_BIAS_VERDICTS = tuple(
    dict(sweep="ensembles_bias", claim=f"the 'the' hack survives {s} ({e})", value=f"bon_{e}/{s}/share_the@N",
         baseline=f"bon_{e}/{s}/share_the@1", direction=+1) for e in ENSEMBLES for s in _BIAS_SELECTORS) + (
    dict(sweep="ensembles_bias", claim="gold's own choice is not 'the'-dense", value="bon_pretrain/gold/share_the@N",
         baseline="bon_pretrain/gold/share_the@1", direction=-1,
         note="the rule holds unless the outcome is 'against' (it asks only: not above the pool mean)"),)
# GRPO (section "Verdict", item 4, and issue 15's first bullet): with a single RM, lowering beta lowers gold, to
# below the SFT policy (stage sft_eval: the same validation prompts and sampling key); at Coste et al.'s PPO KL
# coefficient 0.01 every ensemble reward beats the single RM (z* rewards: post hoc, chosen after session 2); the
# mean ensemble keeps more gold than the single RM at every beta; at beta 0.2, does each reward end above the SFT
# policy (the claim of the old text that issue 15 asked to test like for like).
_SHORT = {"single": "single RM", "mean": "mean", "median": "median", "min": "raw min (WCO)",
          "meanvar": "raw mean - var (UWO, lam 1)", "meanvar_coste": "raw mean - 0.1 var (Coste's PPO UWO)",
          "meanstd": "raw mean - std", "zmin": "standardized min", "zmeanstd": "standardized mean - std"}
_GRPO_VERDICTS = (
    dict(sweep="ensembles_grpo", claim="single RM: beta 0.01 ends below the SFT policy",
         value=f"{rl_stage_name('single', 0.01)}/eval/gold", baseline="sft_eval/eval/gold", direction=-1),
    dict(sweep="ensembles_grpo", claim="single RM: lower beta, lower gold (0.01 vs 0.2)",
         value=f"{rl_stage_name('single', 0.01)}/eval/gold", baseline=f"{rl_stage_name('single', 0.2)}/eval/gold",
         direction=-1),
    *(dict(sweep="ensembles_grpo", claim=f"{_SHORT[rm]} beats the single RM at beta 0.01",
           value=f"{rl_stage_name(rm, 0.01)}/eval/gold", baseline=f"{rl_stage_name('single', 0.01)}/eval/gold",
           direction=+1, **(dict(note="post hoc (chosen after session 2)") if rm.startswith("z") else {}))
      for rm in GRPO_REWARDS[1:]),
    *(dict(sweep="ensembles_grpo", claim=f"mean beats the single RM at beta {b:g}",
           value=f"{rl_stage_name('mean', b)}/eval/gold", baseline=f"{rl_stage_name('single', b)}/eval/gold",
           direction=+1) for b in BETAS[1:]),
    *(dict(sweep="ensembles_grpo", claim=f"{_SHORT[rm]} at beta 0.2 ends above the SFT policy",
           value=f"{rl_stage_name(rm, 0.2)}/eval/gold", baseline="sft_eval/eval/gold", direction=+1,
           **(dict(note="post hoc (chosen after session 2)") if rm.startswith("z") else {}))
      for rm in GRPO_REWARDS),
)
# Variant "grpo_bias": the rule stated above GRPO_BIAS_REWARDS before its first run.
_GRPO_BIAS_VERDICTS = tuple(
    dict(sweep="ensembles_grpo_bias", claim=f"the 'the' hack survives GRPO on {_SHORT[rm]}",
         value=f"{rl_stage_name(rm, b)}/eval/reward/share_the", baseline="sft_eval/eval/reward/share_the",
         direction=+1, **(dict(note="post hoc reward (chosen after session 2)") if rm.startswith("z") else {}))
    for rm in GRPO_BIAS_REWARDS for b in GRPO_BIAS_BETAS)
VERDICTS = _BON_VERDICTS + _BIAS_VERDICTS + _GRPO_VERDICTS + _GRPO_BIAS_VERDICTS


def _grpo_chain(sizes: dict, bias: bool = False) -> dict:
  model = dict(config=sizes["model"])
  rm = sizes["rm"]
  extra: tuple[dict, ...] = ()
  if bias:
    rm = dict(rm, data=dict(rm["data"], world=dict(rm["data"].get("world", {}), labeler_bias=LABELER_BIAS)))
    extra = tuple(dict(kind="word_share", name=f"share_{word}", options=dict(word=word), weight=0.0)
                  for word, _ in LABELER_BIAS)
  stages = {
      "sft": S.stage("sft", sft.SFTConfig, model=model, **sizes["sft"]),
      "rm_single": S.stage("reward", reward.RewardConfig, model=model, num_members=1, **rm),
      "rm_pretrain": S.stage("reward", reward.RewardConfig, model=model, num_members=NUM_MEMBERS, **rm),
      # The SFT policy evaluated exactly as every GRPO policy is (same held-out prompts, same sampling key): one
      # update at learning rate 0 leaves the weights unchanged (AdamW's step is lr * (...) = 0).
      "sft_eval": S.stage("rl", rl.RLConfig, model=dict(init_from="stage:sft"),
                          rewards=(dict(kind="reward_model", reward_model="stage:rm_single", name="rm"), *extra),
                          loss=dict(algorithm="grpo", num_generations=4, beta=BETAS[0], kl_mode="loss",
                                    kl_estimator="k3"),
                          **dict(sizes["rl"], optimizer=dict(sizes["rl"]["optimizer"], learning_rate=0.0),
                                 loop=dict(sizes["rl"]["loop"], num_steps=1, log_every=1, checkpoint_every=1,
                                           eval_every=0))),
  }
  sources = {"single": dict(kind="reward_model", reward_model="stage:rm_single", name="rm")}
  for name, aggregation in _GRPO_AGGREGATIONS.items():
    # The standardized rewards (z*) were added in session 3, after the raw min had failed, as the best-of-N
    # diagnostic suggested: members standardized over the reference responses (RewardSourceSpec.standardize).
    sources[name] = dict(kind="reward_model", reward_model="stage:rm_pretrain", aggregation=aggregation,
                         lam=COSTE_PPO_LAM.get(name, LAM),
                         standardize=name.startswith("z"), name="rm")
  names, betas = (GRPO_BIAS_REWARDS, GRPO_BIAS_BETAS) if bias else (GRPO_REWARDS, BETAS)
  for rm_name in names:
    for beta in betas:
      stages[rl_stage_name(rm_name, beta)] = S.stage(
          "rl", rl.RLConfig, model=dict(init_from="stage:sft"), rewards=(sources[rm_name], *extra),
          loss=dict(algorithm="grpo", num_generations=4, beta=beta, kl_mode="loss", kl_estimator="k3"),
          **sizes["rl"])
  return stages


def get_config(arg=None):
  variant = arg or "default"
  if variant not in VARIANTS:
    raise ValueError(f"configs/papers/ensembles.py: unknown variant {variant!r}; valid: {', '.join(VARIANTS)}")
  sizes = _sizes(variant.endswith("smoke"))
  if variant.startswith("grpo"):
    bias = "bias" in variant
    config = S.chain(_grpo_chain(sizes, bias=bias), seed=0)
    names, betas = (GRPO_BIAS_REWARDS, GRPO_BIAS_BETAS) if bias else (GRPO_REWARDS, BETAS)
    metrics = ("gold", "reward/rm", "kl", "length", "completion_length") + tuple(
        f"reward/share_{w}" for w, _ in LABELER_BIAS if bias)
    config.tables = dict(metrics=tuple(f"sft_eval/eval/{m}" for m in metrics if m != "kl") + tuple(
        f"{rl_stage_name(rm, b)}/eval/{m}" for rm in names for b in betas for m in metrics))
    return config
  config = S.chain(_bon_chain(sizes, bias=variant.startswith("bias")), seed=0)
  if variant.startswith("bias"):
    word = LABELER_BIAS[0][0]
    config.tables = dict(metrics=tuple(
        f"bon_{e}/{s}/{m}" for e in ENSEMBLES for s in ("gold", "rm_single") + _BIAS_SELECTORS
        for m in ("gold@N", f"share_{word}@1", f"share_{word}@N", "length@N") if s != "rm_single" or "share" not in m)
        + ("rm_pretrain/eval/gold_agreement", "rm_pretrain/eval/accuracy"))
    return config
  config.tables = dict(metrics=(
      "bon_pretrain/gold/gold_peak",
      *(f"bon_{e}/{s}/gold@N" for e in ENSEMBLES for s in ("rm_single", "rm_mean", "rm_min", "rm_mean_minus_std",
                                                            "rm_mean_minus_var", "rm_mean_minus_var_lam0.5")),
      *(f"bon_{e}/{s}/gold_drop" for e in ENSEMBLES for s in ("rm_single", "rm_mean", "rm_min")),
      # Every metric a VERDICTS rule reads is a column, so results_runs.csv keeps its per-seed values.
      "bon_pretrain/rm_single/length@N", "bon_pretrain/rm_mean/length@N", "bon_pretrain/rm_min/length@N",
      "bon_finetune/rm_mean/length@N",
      "rm_pretrain/eval/gold_agreement", "rm_finetune/eval/gold_agreement"))
  return config


def sweep(add, arg=None):
  """5 seeds of the chosen variant; the smoke variants run one seed."""
  seeds = SEEDS[:1] if (arg or "default").endswith("smoke") else SEEDS
  for seed in seeds:
    add(seed=seed)
