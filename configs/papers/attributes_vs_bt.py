"""Multi-attribute regression reward model vs Bradley-Terry (HelpSteer2).

Reproduces (in the synthetic gold-reward world) the comparison behind Wang et al. 2024, "HelpSteer2:
Open-source dataset for training top-performing reward models": a reward model that REGRESSES per-response
attribute ratings (SteerLM RM; scalar reward = a fixed weighted sum of the predicted attributes) is
competitive with / better than a Bradley-Terry reward model trained on pairwise preferences.

The world's pairs carry, per response, its 5 gold attribute components (quality, relevance, coherence,
repetition, length; their plain sum is the gold reward r*) and a noisy pairwise label (Bradley-Terry on r*,
temperature 0.35, 5 % flips: the world's defaults). Seven reward models per seed, one stage each, on the same
pairs and the same backbone size:

  bt          linear head, Bradley-Terry on the labels;
  attr_rstar  "attributes" head, attribute MSE only, scalarized with weights (1, 1, 1, 1, 1) (sum = r*);
  attr_paper  the same regression scalarized with a FIXED weighting like the paper's: the
              Nemotron-4-340B-Reward weights (0.3, 0.74, 0.46, 0.47, -0.33) for (helpfulness, correctness,
              coherence, complexity, verbosity), applied in order to our 5 components (a misspecified
              weighting, as a fixed heuristic weighting is for any real annotator pool);
  attr_bt     attribute MSE + BT on the r*-weighted scalar (the regression + BT combination);
  attr_likert as attr_rstar, but the regression targets are each attribute's level 0-4 among the training
              responses (`data.attribute_levels=5`, quantile bins): HelpSteer2's ratings are coarse 0-4
              Likert scores, while the world's raw components are exact, noise-free parts of r*.
  attr_noisy  as attr_rstar, but the targets carry Gaussian noise (ATTRIBUTE_NOISE std per attribute) that makes them
              about as informative as the BT labels (their sums order ~80% of pairs like gold, as the labels do):
              the like-for-like comparison with BT (`data.attribute_noise`);
  attr_noisy_likert  the noisy targets, then coarsened to 0-4 levels (closest to HelpSteer2's human ratings).
(attr_rstar and attr_paper train identically — the weights only scalarize, the BT term is off — and differ only
in how the same predicted attributes are summed.)

Columns: held-out gold agreement (r*(chosen) > r*(rejected)) and accuracy against the noisy held-out labels.
The sweep's `seed` reseeds every stage (init, data order); the world (seed 0) is fixed.

    python -m experiments.sweep --config configs/papers/attributes_vs_bt.py \
        --workdir runs/papers/attributes_vs_bt --workers 1
    python -m experiments.tables --workdir runs/papers/attributes_vs_bt
Smoke (seconds): `--config configs/papers/attributes_vs_bt.py:smoke` (sweep: one seed).
"""

from configs import _sections as S
from jaxrlhf.stages import reward

VARIANTS = ("default", "smoke")
NUM_ATTRIBUTES = 5
RSTAR_WEIGHTS = (1.0,) * NUM_ATTRIBUTES
# Nemotron-4-340B-Reward's recommended scalarization over the five HelpSteer2 attributes (model card).
PAPER_WEIGHTS = (0.3, 0.74, 0.46, 0.47, -0.33)
LIKERT_LEVELS = 5  # HelpSteer2 rates each attribute 0-4
# Attribute targets as informative as the labels: Gaussian noise of 0.6 std per attribute makes the noisy sums order
# the training pairs like gold about 80% of the time, the labels' agreement (calibrated on world pairs before the
# run; the stage reports the realized agreement as data_report.attribute_noise.gold_agreement).
ATTRIBUTE_NOISE = 0.6
# The verdict rule, stated in docs/reproductions.md (HelpSteer2 section, re-run at 1b0c592: "Rule: regression is
# 'competitive' with BT if the paired 95% interval of (regression - BT) gold agreement has its lower end above -1
# point, 'better' if it is above 0"). Each rule below is the "better" test (interval above 0); "competitive" reads the
# same interval's lower end against -0.01. The like-for-like arms (targets as noisy as the labels) decide the verdict;
# the exact-target arms and the misspecified fixed weighting are reported beside them.
REGRESSION_ARMS = ("attr_noisy", "attr_noisy_likert", "attr_rstar", "attr_bt", "attr_likert", "attr_paper")
VERDICTS = tuple(
    dict(sweep="attributes_vs_bt", claim=f"{arm} better than BT (competitive: lower end > -0.01)",
         value=f"{arm}/eval/gold_agreement", baseline="bt/eval/gold_agreement", direction=+1,
         note="like for like: decides the verdict" if "noisy" in arm else "exact targets or fixed weighting: reported")
    for arm in REGRESSION_ARMS)
STAGES = ("bt", "attr_rstar", "attr_paper", "attr_bt", "attr_likert", "attr_noisy", "attr_noisy_likert")


def _sizes(smoke: bool) -> dict:
  if smoke:
    return dict(model=S.SMOKE_MODEL, data=S.SMOKE_DATA, loop=S.SMOKE_LOOP, optimizer=dict(learning_rate=3e-3))
  return dict(
      model=S.WORLD_MODEL,
      data=dict(num_train=4096, num_eval=1024, batch_size=32, max_length=48),
      optimizer=dict(learning_rate=2e-3, schedule="cosine", warmup_steps=20, decay_steps=250, end_lr_factor=0.1,
                     clip_norm=1.0, weight_decay=0.01),
      loop=dict(num_steps=250, log_every=50, checkpoint_every=250, eval_every=0, progress=False,
                tensorboard=False, async_checkpoints=False))


def get_config(arg=None):
  variant = arg or "default"
  if variant not in VARIANTS:
    raise ValueError(f"configs/papers/attributes_vs_bt.py: unknown variant {variant!r}; valid: "
                     + ", ".join(VARIANTS))
  z = _sizes(variant == "smoke")

  def rm(head, loss=None, data=None):
    return S.stage("reward", reward.RewardConfig, model=dict(config=z["model"]),
                   data=dict(z["data"], **(data or {})),
                   optimizer=z["optimizer"], loop=z["loop"], head=head, loss=loss or {})

  def attributes(weights):
    return dict(kind="attributes", num_outputs=NUM_ATTRIBUTES, attribute_weights=weights)

  regression_only = dict(attribute_weight=1.0, bt_weight=0.0)
  stages = {
      "bt": rm(dict(kind="linear")),
      "attr_rstar": rm(attributes(RSTAR_WEIGHTS), regression_only),
      "attr_paper": rm(attributes(PAPER_WEIGHTS), regression_only),
      "attr_bt": rm(attributes(RSTAR_WEIGHTS), dict(attribute_weight=1.0, bt_weight=1.0)),
      "attr_likert": rm(attributes(RSTAR_WEIGHTS), regression_only, data=dict(attribute_levels=LIKERT_LEVELS)),
      "attr_noisy": rm(attributes(RSTAR_WEIGHTS), regression_only, data=dict(attribute_noise=ATTRIBUTE_NOISE)),
      "attr_noisy_likert": rm(attributes(RSTAR_WEIGHTS), regression_only,
                              data=dict(attribute_noise=ATTRIBUTE_NOISE, attribute_levels=LIKERT_LEVELS)),
  }
  if variant == "smoke":  # the smallest chain that exercises both head kinds
    stages = {k: stages[k] for k in ("bt", "attr_likert")}
  config = S.chain(stages, seed=0)
  config.tables = dict(metrics=(*[f"{s}/eval/gold_agreement" for s in stages],
                                *[f"{s}/eval/accuracy" for s in stages]))
  return config


def sweep(add, arg=None):
  """5 seeds, each run trains the seven reward models; smoke: one seed."""
  for seed in ((0,) if arg == "smoke" else (0, 1, 2, 3, 4)):
    add(seed=seed)
