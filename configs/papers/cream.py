"""CREAM (Wang, He, Liang, Zhang, Bansal, Wei, Zhang, Yao 2024, "CREAM: Consistency Regularized Self-Rewarding
Language Models", arXiv:2410.12735) vs plain self-rewarding (SRLM) on the synthetic world.

Claim tested: iterative self-rewarding DPO with the policy's own implicit reward stalls or degrades over
iterations, while CREAM, which softens each iteration's labels by the ranking consistency between the current and
the previous iteration's rewards, keeps improving (gold reward of the policy per iteration).

One run (per seed) is the chain
  sft     M0, the base: SFT on the world's reference samples (the paper's M0 is the pretrained LLM)
  seed_dpo  M1: DPO of M0 on a small set of gold-labelled pairs (the paper's M1 is M0 SFT'd on ~3.4K human-written
          OASST answers; the world has no demonstrations better than its reference distribution, so the seed
          supervision is a few labelled pairs; either way log M1 / M0 starts out as an informative reward)
  cream   "self_rewarding" from M1 with reference M0, consistency = "average" (the dataset-level rate,
          the official code's consistency_avg)
  srlm    the same stage with consistency = "off" (C = 1: DPO on the self-labelled pairs), the control
cream and srlm share every hyperparameter, the prompts of each iteration, the sampling keys and the held-out
evaluation prompts and keys; only the loss's C differs. A seed reseeds every stage (init, data order, sampling);
the world (seed 0) is fixed.

    python -m experiments.sweep --config configs/papers/cream.py --workdir runs/papers/cream --workers 1
    python -m experiments.tables --workdir runs/papers/cream
Smoke (seconds): `--config configs/papers/cream.py:smoke` (sweep: one seed).
"""

from configs import _sections as S
from jaxrlhf.stages import preference, self_rewarding, sft

VARIANTS = ("default", "smoke")
ARMS = {"cream": "average", "srlm": "off"}
SEEDS = (0, 1, 2, 3, 4)
# The verdict rule as data (experiments.analysis.verdicts), stated before the first sweep in the section's "Verdict
# rule" paragraph (docs/reproductions.md, CREAM section): (a) gold(CREAM, t=T) - gold(SRLM, t=T) > 0; (b) gold(CREAM,
# t=T) - gold(CREAM, t=0) > 0 while SRLM's t=T - t=0 interval does NOT exclude 0 upwards. "Reproduced" = (a) and (b);
# "partly" = exactly one; "not reproduced" = neither. T = 4 (num_iterations).
VERDICTS = (
    dict(sweep="cream", claim="CREAM beats SRLM at the last iteration", value="cream/iter4/gold",
         baseline="srlm/iter4/gold", direction=+1),
    dict(sweep="cream", claim="CREAM keeps improving (t=4 over t=0)", value="cream/iter4/gold",
         baseline="cream/iter0/gold", direction=+1),
    dict(sweep="cream", claim="SRLM stalls or degrades (t=4 vs t=0)", value="srlm/iter4/gold",
         baseline="srlm/iter0/gold", direction=-1,
         note="(b) needs only that this interval does not exclude 0 upwards: 'reproduced' or 'inconclusive' satisfy "
              "it, 'against' fails it"),
)


def _sizes(smoke: bool) -> dict:
  if smoke:
    return dict(
        model=S.SMOKE_MODEL,
        sft=dict(data=S.SMOKE_DATA, loop=S.SMOKE_LOOP, optimizer=dict(learning_rate=3e-3)),
        seed=dict(data=dict(S.SMOKE_DATA, max_length=48), loop=S.SMOKE_LOOP, optimizer=dict(learning_rate=1e-3)),
        self_rewarding=dict(num_iterations=2, num_prompts=16, num_samples=4, max_new_tokens=12, sample_batch_size=16,
                            num_eval_prompts=16, data=dict(S.SMOKE_DATA, max_length=40, shared_prompt="off"),
                            loop=S.SMOKE_LOOP, optimizer=dict(learning_rate=1e-3)))
  cosine = dict(schedule="cosine", warmup_steps=10, end_lr_factor=0.1, clip_norm=1.0)
  loop = dict(log_every=20, eval_every=0, progress=False, tensorboard=False, async_checkpoints=False)
  return dict(
      model=S.WORLD_MODEL,
      sft=dict(data=dict(num_train=8192, num_eval=256, batch_size=32, max_length=48),
               optimizer=dict(cosine, learning_rate=3e-3, decay_steps=200),
               loop=dict(loop, num_steps=200, checkpoint_every=200)),
      # The seed supervision: 512 gold-labelled pairs (the world's BT labels), 60 steps of 32 (each pair ~4x).
      seed=dict(data=dict(num_train=512, num_eval=64, batch_size=32, max_length=48),
                optimizer=dict(cosine, learning_rate=1e-3, decay_steps=60),
                loop=dict(loop, num_steps=60, checkpoint_every=60)),
      # Per iteration: 256 fresh prompts x 4 samples, 256 self-labelled pairs, 40 DPO steps of 32 (5 epochs).
      self_rewarding=dict(num_iterations=4, num_prompts=256, num_samples=4, max_new_tokens=24, sample_batch_size=128,
                          num_eval_prompts=512, beta=0.1,
                          data=dict(batch_size=32, max_length=48, shared_prompt="off"),
                          optimizer=dict(cosine, learning_rate=1e-3, decay_steps=40),
                          loop=dict(loop, num_steps=40, checkpoint_every=40)))


def get_config(arg=None):
  variant = arg or "default"
  if variant not in VARIANTS:
    raise ValueError(f"configs/papers/cream.py: unknown variant {variant!r}; valid: " + ", ".join(VARIANTS))
  z = _sizes(variant == "smoke")
  stages = {
      "sft": S.stage("sft", sft.SFTConfig, model=dict(config=z["model"]), **z["sft"]),
      "seed_dpo": S.stage("preference", preference.PreferenceConfig, model=dict(init_from="stage:sft"), **z["seed"]),
  }
  for arm, mode in ARMS.items():
    stages[arm] = S.stage("self_rewarding", self_rewarding.SelfRewardingConfig, model=dict(init_from="stage:seed_dpo"),
                          reference="stage:sft", consistency=mode, **z["self_rewarding"])
  config = S.chain(stages, seed=0)
  iterations = range(z["self_rewarding"]["num_iterations"] + 1)
  config.tables = dict(metrics=(
      *[f"{arm}/iter{t}/gold" for arm in ARMS for t in iterations],
      *[f"{arm}/iter{t}/consistency" for arm in ARMS for t in iterations[1:]],
      *[f"{arm}/iter{t}/label_agreement" for arm in ARMS for t in iterations[1:]],
      *[f"{arm}/iter{t}/kl" for arm in ARMS for t in iterations[1:]]))
  return config


def sweep(add, arg=None):
  """5 seeds (each run: sft, seed_dpo, cream, srlm); smoke: one seed."""
  for seed in ((0,) if arg == "smoke" else SEEDS):
    add(seed=seed)
