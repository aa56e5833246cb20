"""T-REG vs DPO: gold reward and token-level credit in the synthetic gold-reward world.

Reproduces (as far as a tiny world allows) Zhou et al. 2024, "T-REG: Preference Optimization with Token-Level
Reward Regularization" (arXiv:2412.02685, ACL 2025): DPO plus a regularizer that pulls DPO's implicit token
rewards beta * log(pi / pi_ref) towards self-generated token rewards from contrastive prompts,
r_t = sigmoid(log pi(y_t | <better> x) - log pi(y_t | <worse> x)) - 0.5, weighted by alpha. Claims tested:
(1) DPO + T-REG reaches a higher (gold) reward than DPO; (2) its implicit token rewards assign credit to the
right tokens better than DPO's (here measured against the world's gold per-token credit c_t).

One run per seed is a chain that shares the SFT stage:

  sft (contrastive SFT: neutral, <better> and <worse> samples, so the policy can be contrastively prompted)
  -> dpo | treg_0p1 | treg_0p25 | treg_0p5    (DPO; T-REG with alpha = 0.1 / 0.25 / 0.5; beta = 0.1 for all;
                                               token rewards from the current policy, detached)
  -> eval_<m>      evaluate_policy: gold reward of samples on test prompts vs the SFT policy, gain, sampled KL
  -> credit_<m>    token_credit: implicit token rewards vs gold credit c_t on held-out test pairs
     credit_sft    token_credit: the SFT policy's contrastive token rewards (what T-REG starts from) vs c_t

The sweep's `seed` reseeds every stage (init of the SFT model, data orders, sampling); the world (seed 0) is
fixed. Columns: each policy's gold gain, KL and sample length; its held-out pair accuracy (noisy labels); its
implicit token rewards' per-sequence / pooled correlation with c_t and its implicit sequence reward's agreement
with the gold ordering of held-out pairs; the same for the SFT policy's contrastive token rewards (the reference
point: what T-REG regularizes towards). No `config.plots`: the sweep varies only the seed (tables plot against a
swept key); each token_credit stage writes its own scatter, token_credit.png.

    python -m experiments.sweep --config configs/papers/treg.py --workdir runs/papers/treg --workers 1
    python -m experiments.tables --workdir runs/papers/treg
One seed: `python -m experiments.run --config configs/papers/treg.py --workdir runs/treg_one`.
Smoke (seconds): `--config configs/papers/treg.py:smoke` (sweep: one seed; dpo and one T-REG alpha).
"""

from configs import _sections as S
from jaxrlhf.stages import token_credit
from jaxrlhf.stages import evaluate_policy, preference, sft

VARIANTS = ("default", "smoke")
BETA = 0.1
ALPHAS = {"treg_0p1": 0.1, "treg_0p25": 0.25, "treg_0p5": 0.5}
QUIET_LOOP = dict(progress=False, tensorboard=False, async_checkpoints=False)

# The two claims of this docstring (since 0315603) as paired seed comparisons, one row per alpha (the section swept
# all three and named none in advance), by issue 15's rule (experiments.analysis.verdicts; ARCHITECTURE.md section
# 7): (1) T-REG's gold gain over the shared SFT policy (same prompts, same base samples) above DPO's; (2) its
# per-response Pearson correlation of implicit token rewards with the gold credit c_t (the section's headline
# credit measure) above DPO's.
VERDICTS = (
    *(dict(sweep="treg", claim=f"T-REG alpha {a:g} reaches higher gold than DPO", value=f"eval_{m}/gold/gain",
           baseline="eval_dpo/gold/gain", direction=1) for m, a in ALPHAS.items()),
    *(dict(sweep="treg", claim=f"T-REG alpha {a:g} assigns token credit better than DPO",
           value=f"credit_{m}/implicit/pearson_seq", baseline="credit_dpo/implicit/pearson_seq", direction=1)
      for m, a in ALPHAS.items()),
)


def _sizes(smoke: bool) -> dict:
  if smoke:
    return dict(
        model=S.SMOKE_MODEL,
        sft=dict(data=dict(S.SMOKE_DATA, contrastive_sft=True), loop=S.SMOKE_LOOP, optimizer=dict(learning_rate=3e-3)),
        po=dict(data=S.SMOKE_DATA, loop=S.SMOKE_LOOP, optimizer=dict(learning_rate=1e-3)),
        eval=dict(num_prompts=16, batch_size=16, max_new_tokens=12),
        credit=dict(num_pairs=16, batch_size=32, max_length=40),
        alphas={"treg_0p5": ALPHAS["treg_0p5"]})
  cosine = dict(schedule="cosine", end_lr_factor=0.1, clip_norm=1.0)
  return dict(
      model=S.WORLD_MODEL,
      sft=dict(data=dict(num_train=4096, num_eval=256, batch_size=32, max_length=48, contrastive_sft=True),
               optimizer=dict(cosine, learning_rate=3e-3, warmup_steps=20, decay_steps=300),
               loop=dict(QUIET_LOOP, num_steps=300, log_every=50, checkpoint_every=300, eval_every=0)),
      po=dict(data=dict(num_train=4096, num_eval=256, batch_size=32, max_length=48),
              optimizer=dict(cosine, learning_rate=3e-4, warmup_steps=10, decay_steps=150),
              loop=dict(QUIET_LOOP, num_steps=150, log_every=25, checkpoint_every=150, eval_every=0)),
      eval=dict(num_prompts=256, batch_size=128, max_new_tokens=32),
      credit=dict(num_pairs=512, batch_size=128, max_length=48),
      alphas=ALPHAS)


def get_config(arg=None):
  variant = arg or "default"
  if variant not in VARIANTS:
    raise ValueError(f"configs/papers/treg.py: unknown variant {variant!r}; valid: {', '.join(VARIANTS)}")
  z = _sizes(variant == "smoke")

  def po(**loss):
    return S.stage("preference", preference.PreferenceConfig, model=dict(init_from="stage:sft"), **z["po"],
                   loss=dict(beta=BETA, **loss))

  policies = {"dpo": po(algorithm="dpo")}
  policies.update({name: po(algorithm="treg", treg_alpha=alpha) for name, alpha in z["alphas"].items()})
  stages = {"sft": S.stage("sft", sft.SFTConfig, model=dict(config=z["model"]), **z["sft"]), **policies}
  for name in policies:
    stages[f"eval_{name}"] = S.stage("evaluate_policy", evaluate_policy.EvaluatePolicyConfig, policy=f"stage:{name}",
                                     base="stage:sft", **z["eval"])
  stages["credit_sft"] = S.stage("token_credit", token_credit.TokenCreditConfig, policy="stage:sft",
                                 **z["credit"])
  for name in policies:
    stages[f"credit_{name}"] = S.stage("token_credit", token_credit.TokenCreditConfig, policy=f"stage:{name}",
                                       reference="stage:sft", beta=BETA, **z["credit"])
  config = S.chain(stages, seed=0)
  config.tables = dict(metrics=(
      *[f"eval_{m}/gold/gain" for m in policies],
      *[f"eval_{m}/kl" for m in policies],
      *[f"eval_{m}/length/policy" for m in policies],
      *[f"{m}/eval/rewards/accuracy" for m in policies],
      *[f"credit_{m}/implicit/pearson_seq" for m in policies],
      *[f"credit_{m}/implicit/pearson_pooled" for m in policies],
      *[f"credit_{m}/implicit/spearman_seq" for m in policies],
      *[f"credit_{m}/implicit/pair_accuracy" for m in policies],
      "credit_sft/contrastive/pearson_seq", "credit_sft/contrastive/pearson_pooled",
      "credit_sft/contrastive/spearman_seq", "credit_sft/contrastive/pair_accuracy"))
  return config


def sweep(add, arg=None):
  """5 seeds, each one chain (sft -> dpo and the three T-REG alphas -> evaluations); smoke: one seed."""
  for seed in ((0,) if arg == "smoke" else (0, 1, 2, 3, 4)):
    add(seed=seed)
