"""Clip and Delta refinement of a hackable process reward (Gao et al. 2024, "On Designing Effective RL Reward at
Training Time for LLM Reasoning", arXiv:2410.15115): summed per-step PRM rewards are hacked by RL (more steps,
repeated high-scoring steps); Clip (r_t <- min(r_t - eta, 0)) and Delta (r_t <- r_t - r_{t+1}) bound the return
and keep the outcome (gold) reward up.

One run = one seed of the chain
  sft -> rl_outcome (GRPO on the outcome reward alone: the paper's success-reward baseline)
      -> rl_none / rl_clip / rl_delta (GRPO on outcome + the world's process reward, refined none / clip / delta)
all four RL stages starting from the same SFT policy (the settings share the SFT run; the seed reseeds all).
The outcome reward is the gold r*(x, y) (the paper's verified success reward); the process reward is
`jaxrlhf.stages.reward_sources.prm_step_scores`: one step per response token, s_t = sigmoid(alpha q + rho rel + B)
in (0, 1), a sensible step scorer that is blind to length and repetition. `prm_raw` (weight 0) logs the unrefined PRM
return of every policy (the proxy the hack inflates); `repeat_rate` the fraction of repeated content tokens.

    python -m experiments.sweep --config configs/papers/clip_delta.py --workdir runs/papers/clip_delta --workers 1
    python -m experiments.tables --workdir runs/papers/clip_delta
    python -m experiments.run --config configs/papers/clip_delta.py:smoke --workdir runs/clip_delta_smoke

Variant "ppo" (and "ppo_smoke"): the same four arms with PPO (a value head on the policy, GAE gamma 1 / lam 0.95,
k1 KL in the per-token reward, 2 epochs x 2 minibatches) and the process reward's refined step rewards on their own
tokens (`loss.token_rewards`): PPO's per-token returns, where Gao et al. tested Clip / Delta (GRPO's sequence-level
advantage sees only the summed return, which Delta telescopes to the first step's score).
    python -m experiments.sweep --config configs/papers/clip_delta.py:ppo --workdir runs/papers/clip_delta_ppo

Variants "bias" and "ppo_bias" (and their _smoke): a second, non-length flaw in the process reward (issue 15): the
PRM over-rewards the function word "the" (`options.step_bias`: +2.0 on the step's logit, so a "the" step scores
>= ~0.88 wherever it stands; fixed before the first run, not tuned), and `reward/the_share` (a weight-0
"word_share" source) logs the share of "the" among the response's scored tokens. The rule, stated before the run
(5 paired seeds, paired 95% t interval of the per-seed difference):
  the hack exists   if share(none) - share(outcome) excludes 0, positive;
  <arm> fixes it    if share(<arm>) - share(outcome) does not exclude 0 on the positive side (no more "the" than the
                    outcome reward alone asks for) and gold(<arm>) - gold(none) excludes 0, positive.
Prediction written with the rule: Clip fixes it under both GRPO and PPO (a "the" step above eta earns 0, not a
bonus); Delta fixes it under GRPO only if the hack needs more than the first step, and under PPO it does not (each
token's return-to-go is its own biased score, so every position is pushed towards "the").
    python -m experiments.sweep --config configs/papers/clip_delta.py:bias --workdir runs/papers/clip_delta_bias
"""

from configs import _sections as S
from jaxrlhf.stages import rl, sft

VARIANTS = ("default", "smoke", "ppo", "ppo_smoke", "bias", "bias_smoke", "ppo_bias", "ppo_bias_smoke")
SEEDS = (0, 1, 2, 3, 4)  # >= 5 paired seeds (issue 15's rule); smoke variants run seed 0
STEP_BIAS = {"the": 2.0}  # The PRM flaw of the bias variants (a logit bonus on "the" steps).
SETTINGS = ("outcome", "none", "clip", "delta")  # rl_<setting> stages; "outcome": no process reward
METRICS = ("eval/gold", "eval/reward/prm_raw", "eval/completion_length", "eval/repeat_rate", "eval/kl")
ETA = 0.5  # Clip threshold: a step the PRM judges more likely good than bad (s_t > 0.5) costs nothing.

# The section's rules as paired seed comparisons (experiments.analysis.verdicts; ARCHITECTURE.md section 7: the
# paired 95% t interval over the 5 seeds excludes 0 on the claimed side).
# - Default (GRPO) and ppo sweeps, rules from docs/reproductions.md's Clip/Delta section (0315603, PPO 4d24451): the
#   hack reproduces if the unrefined PRM's gold is below outcome-only ("in every seed" then; the paired interval
#   now); a refinement fixes it if its gold is "within one outcome-only std or above" (a non-inferiority margin, not
#   a paired difference: read from the per-seed table, and from the "beats outcome" rows, where the fix fails only
#   on "against"); the paper's "PRM with refinement beats the success reward alone" is the "beats outcome" rows.
#   The "recovers gold" rows are the fix criterion the docstring states for the bias variants (446adcf), applied
#   to the length hack.
# - Bias variants (bias, ppo_bias), rule and prediction in this module's docstring at 446adcf, before the run: the
#   hack exists if share(none) - share(outcome) > 0; <arm> fixes it if share(<arm>) - share(outcome) does not
#   exclude 0 on the positive side (its row below must NOT come out "reproduced") and gold(<arm>) - gold(none) > 0.
_GOLD = "eval/gold"
_SHARE = "eval/reward/the_share"


def _length_rules(sweep: str) -> tuple[dict, ...]:
  rules = [dict(sweep=sweep, claim="unrefined PRM is hacked (gold below outcome-only)", value=f"rl_none/{_GOLD}",
                baseline=f"rl_outcome/{_GOLD}", direction=-1)]
  for arm in ("clip", "delta"):
    rules.append(dict(sweep=sweep, claim=f"{arm} recovers gold from the hack", value=f"rl_{arm}/{_GOLD}",
                      baseline=f"rl_none/{_GOLD}", direction=1, note="the bias variants' fix criterion (446adcf)"))
    rules.append(dict(sweep=sweep, claim=f"PRM + {arm} beats outcome alone", value=f"rl_{arm}/{_GOLD}",
                      baseline=f"rl_outcome/{_GOLD}", direction=1,
                      note="the paper's gain over the success reward; the section's fix (non-inferior) fails only "
                           "on 'against'"))
  return tuple(rules)


def _bias_rules(sweep: str) -> tuple[dict, ...]:
  rules = [dict(sweep=sweep, claim="the PRM's word bias is hacked (more 'the' than outcome-only)",
                value=f"rl_none/{_SHARE}", baseline=f"rl_outcome/{_SHARE}", direction=1)]
  for arm in ("clip", "delta"):
    rules.append(dict(sweep=sweep, claim=f"{arm} still raises 'the' over outcome-only (fix needs: not reproduced)",
                      value=f"rl_{arm}/{_SHARE}", baseline=f"rl_outcome/{_SHARE}", direction=1,
                      note="the fix's first part: the interval must not exclude 0 on the positive side"))
    rules.append(dict(sweep=sweep, claim=f"{arm} recovers gold from the hack", value=f"rl_{arm}/{_GOLD}",
                      baseline=f"rl_none/{_GOLD}", direction=1, note="the fix's second part"))
  return tuple(rules)


VERDICTS = (*_length_rules("clip_delta"), *_length_rules("clip_delta_ppo"), *_bias_rules("clip_delta_bias"),
            *_bias_rules("clip_delta_ppo_bias"))


def rewards(setting: str, bias: bool = False) -> tuple[dict, ...]:
  """Reward sources of stage rl_<setting>: gold outcome (+ refined process reward) + the raw PRM return as a
  weight-0 metric (+ with `bias`, the PRM over-rewards "the" and the share of "the" is logged)."""
  options = dict(step_bias=STEP_BIAS) if bias else {}
  out = [dict(kind="gold", name="outcome")]
  if setting != "outcome":
    out.append(dict(kind="process", name="prm", refinement=setting, eta=ETA, options=options))
  out.append(dict(kind="process", name="prm_raw", refinement="none", weight=0.0, options=options))
  if bias:
    out.append(dict(kind="word_share", name="the_share", options=dict(word="the"), weight=0.0))
  return tuple(out)


def get_config(arg=None):
  variant = arg or "default"
  if variant not in VARIANTS:
    raise ValueError(f"configs/papers/clip_delta.py: unknown variant {variant!r}; valid: {', '.join(VARIANTS)}")
  ppo = variant.startswith("ppo")
  bias = "bias" in variant
  if variant.endswith("smoke"):
    sft_kwargs = dict(data=S.SMOKE_DATA, loop=S.SMOKE_LOOP, optimizer=dict(learning_rate=3e-3))
    rl_kwargs = dict(num_prompts=64, prompts_per_step=4, eval_prompts=8, sampling=dict(max_new_tokens=12),
                     loop=S.SMOKE_LOOP, optimizer=dict(learning_rate=1e-3))
    settings = ("outcome", "delta") if ppo else ("delta",)
  else:
    sft_kwargs = dict(data=dict(num_train=2048, num_eval=64, batch_size=32, max_length=40),
                      optimizer=dict(learning_rate=3e-3, clip_norm=1.0),
                      loop=dict(S.SMOKE_LOOP, num_steps=120, log_every=20, checkpoint_every=120))
    rl_kwargs = dict(num_prompts=512, prompts_per_step=8, eval_prompts=128, sampling=dict(max_new_tokens=40),
                     optimizer=dict(learning_rate=1e-3, clip_norm=1.0),
                     loop=dict(S.SMOKE_LOOP, num_steps=60, log_every=10, checkpoint_every=60))
    settings = SETTINGS
  stages = {"sft": S.stage("sft", sft.SFTConfig, model=dict(config=S.SMOKE_MODEL), **sft_kwargs)}
  for setting in settings:
    if ppo:
      loss = dict(algorithm="ppo", num_generations=4, beta=0.04, kl_mode="reward", kl_estimator="k1", ppo_epochs=2,
                  num_mini_batches=2, gamma=1.0, lam=0.95, token_rewards=setting != "outcome")
    else:
      loss = dict(algorithm="grpo", num_generations=4, scale_rewards="group", beta=0.04, kl_mode="loss",
                  kl_estimator="k3")
    stages[f"rl_{setting}"] = S.stage("rl", rl.RLConfig, model=dict(init_from="stage:sft"),
                                      rewards=rewards(setting, bias), num_devices=1, loss=loss, **rl_kwargs)
  config = S.chain(stages, seed=0)
  metrics = METRICS + (("eval/reward/the_share",) if bias else ())
  config.tables = dict(metrics=tuple(f"rl_{s}/{m}" for s in settings for m in metrics))
  return config


def sweep(add, arg=None):
  seeds = SEEDS[:1] if (arg or "default").endswith("smoke") else SEEDS
  for seed in seeds:
    add(seed=seed)
