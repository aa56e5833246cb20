"""LD-DPO (Liu et al. 2024, "Length Desensitization in Direct Preference Optimization") and WPO (Zhou et al. 2024,
"WPO: Enhancing RLHF with Weighted Preference Optimization") vs plain DPO on the synthetic world.

LD-DPO weights the tokens past a pair's shared response length by ld_alpha in the log-probs of the policy and the
reference, so DPO's implicit reward stops growing with length; the paper reports shorter, better responses. WPO
multiplies each pair's loss by the policy's own (detached, length-normalized, sum p^2-calibrated) probability of
both responses, to make off-policy pairs count like on-policy ones; the paper reports higher win rates than DPO.
One run (per seed) is the chain
  sft -> dpo           configs/dpo.py's settings (beta 0.1, lr 3e-4 cosine, 200 steps of 32 over 4096 pairs)
      -> dpo_ld        the same with loss.ld_alpha = 0.5 (TRL's range [0, 1]; the paper tunes it per model, we do not)
      -> dpo_wpo       the same with loss.use_weighting = True
  eval_* gold reward, length and KL of each policy's samples vs the SFT's on the same held-out prompts.
The world's gold reward has a length term whose optimum (16 tokens) lies beyond most reference responses
(docs/synthetic_world.md), so shorter is not better here by construction: the length rule tests the mechanism,
the gold rules the quality claims. The sweep: seeds {0, ..., 4} (a seed reseeds every stage; the world is fixed).

Variants: default (the full per-seed run), smoke (seconds), alphas (post hoc, after the verdict: DPO and LD-DPO at
ld_alpha 0, 0.25 and 0.75, the same seeds; descriptive, no rule), end (post hoc, with its own rule stated before it
ran: DPO, LD-DPO and LD-DPO with each response's end token at full weight, `loss.ld_keep_end`, at ld_alpha 0.5, the
same seeds; a test of the end-token reading of LD-DPO's lengthening in docs/reproductions.md).
    python -m experiments.sweep --config configs/papers/ld_wpo.py --workdir runs/papers/ld_wpo
    python -m experiments.sweep --config configs/papers/ld_wpo.py:alphas --workdir runs/papers/ld_wpo_alphas
    python -m experiments.sweep --config configs/papers/ld_wpo.py:end --workdir runs/papers/ld_wpo_end
    python -m experiments.tables --workdir runs/papers/ld_wpo
    python -m experiments.analysis.verdicts --runs runs/papers --config configs/papers/ld_wpo.py
"""

from configs import _sections as S
from jaxrlhf.stages import evaluate_policy, preference, sft

VARIANTS = ("default", "smoke", "alphas", "end")
SEEDS = (0, 1, 2, 3, 4)  # >= 5 paired seeds: the verdict rule in docs/reproductions.md
BETA, LD_ALPHA = 0.1, 0.5
# stage name -> the loss settings that differ from plain DPO
METHODS = {"dpo": {}, "dpo_ld": dict(ld_alpha=LD_ALPHA), "dpo_wpo": dict(use_weighting=True)}
# The post-hoc dose-response (variant "alphas"): does the lengthening grow as ld_alpha falls?
ALPHA_METHODS = {"dpo": {}, "dpo_ld0": dict(ld_alpha=0.0), "dpo_ld25": dict(ld_alpha=0.25),
                 "dpo_ld75": dict(ld_alpha=0.75)}
# The post-hoc end-token test (variant "end"): LD-DPO whose end tokens keep full weight.
END_METHODS = {"dpo": {}, "dpo_ld": dict(ld_alpha=LD_ALPHA), "dpo_ld_end": dict(ld_alpha=LD_ALPHA, ld_keep_end=True)}

# The verdict rules, stated in docs/reproductions.md (LD-DPO and WPO section) and committed before the 5-seed sweep:
# reproduced = over 5 paired seeds the 95% t-interval of the difference lies on the claimed side of 0, not reproduced
# = on the other side, inconclusive = it includes 0.
VERDICTS = (
    dict(sweep="ld_wpo", claim="LD-DPO samples are shorter than DPO's", value="eval_dpo_ld/length/policy",
         baseline="eval_dpo/length/policy", direction=-1),
    dict(sweep="ld_wpo", claim="LD-DPO beats DPO on gold", value="eval_dpo_ld/gold/gain",
         baseline="eval_dpo/gold/gain", direction=+1),
    dict(sweep="ld_wpo", claim="WPO beats DPO on gold", value="eval_dpo_wpo/gold/gain",
         baseline="eval_dpo/gold/gain", direction=+1),
    # Post hoc (variant "end"), stated in docs/reproductions.md and committed before its sweep: if LD-DPO lengthens
    # because the longer response's end token lies in its down-weighted tail, keeping end tokens at full weight
    # shortens its samples.
    dict(sweep="ld_wpo_end", claim="LD-DPO with end tokens at full weight samples shorter than LD-DPO",
         value="eval_dpo_ld_end/length/policy", baseline="eval_dpo_ld/length/policy", direction=-1),
)


def _sizes(smoke: bool) -> dict:
  if smoke:
    return dict(model=S.SMOKE_MODEL,
                sft=dict(data=S.SMOKE_DATA, loop=S.SMOKE_LOOP, optimizer=dict(learning_rate=3e-3)),
                pref=dict(data=S.SMOKE_DATA, loop=S.SMOKE_LOOP, optimizer=dict(learning_rate=1e-3)),
                eval=dict(num_prompts=16, batch_size=16, max_new_tokens=12))
  reference = S.sft_then_preference(False)  # configs/dpo.py's sizes, so the arms are that config's DPO
  return dict(model=S.WORLD_MODEL,
              sft={k: reference.sft[k].to_dict() for k in ("data", "optimizer", "loop")},
              pref={k: reference.preference[k].to_dict() for k in ("data", "optimizer", "loop")},
              eval=dict(num_prompts=256, batch_size=128, max_new_tokens=32))


def get_config(arg=None):
  variant = arg or "default"
  if variant not in VARIANTS:
    raise ValueError(f"configs/papers/ld_wpo.py: unknown variant {variant!r}; valid: " + ", ".join(VARIANTS))
  sizes = _sizes(variant == "smoke")
  methods = {"alphas": ALPHA_METHODS, "end": END_METHODS}.get(variant, METHODS)
  stages = {"sft": S.stage("sft", sft.SFTConfig, model=dict(config=sizes["model"]), **sizes["sft"])}
  for name, loss in methods.items():
    stages[name] = S.stage("preference", preference.PreferenceConfig, model=dict(init_from="stage:sft"),
                           loss=dict(algorithm="dpo", beta=BETA, **loss), **sizes["pref"])
  for name in methods:
    stages[f"eval_{name}"] = S.stage("evaluate_policy", evaluate_policy.EvaluatePolicyConfig, policy=f"stage:{name}",
                                     base="stage:sft", **sizes["eval"])
  config = S.chain(stages, seed=0)
  config.tables = dict(metrics=(
      *[f"eval_{m}/gold/gain" for m in methods], *[f"eval_{m}/length/policy" for m in methods],
      "eval_dpo/length/base", *[f"eval_{m}/kl" for m in methods], *[f"eval_{m}/gold/win_rate" for m in methods],
      *[f"{m}/eval/rewards/accuracy" for m in methods],
      *(("dpo_wpo/eval/wpo/weight",) if "dpo_wpo" in methods else ())))
  return config


def sweep(add, arg=None):
  for seed in SEEDS[:1] if (arg or "default") == "smoke" else SEEDS:
    add(seed=seed)
