"""Best-of-N on the synthetic world: SFT a base policy, train a reward model (one RM, or an ensemble), then
best-of-n curves over ONE pool of N samples per held-out prompt, selected by gold and by the proxy
(the unbiased estimator; KL log n - (n-1)/n next to the pool estimate; results.json + PNG plots).

  sft -> reward -> best_of_n

Variants: default (one RM, N = 128), ensemble (K = 3 members; one curve per aggregation), smoke (seconds),
acceptance (the smallest sizes that show the claims of issue 6 reliably; used by the acceptance test).
    python -m experiments.run --config configs/best_of_n.py --workdir runs/bon
"""

from configs import _sections as S
from jaxrlhf.losses.aggregation import AGGREGATION_METHODS
from jaxrlhf.stages import best_of_n as best_of_n_stage
from jaxrlhf.stages import reward, sft

VARIANTS = ("default", "ensemble", "smoke", "acceptance")

# The acceptance sizes (shared with configs/grpo.py:acceptance, so both chains can run in ONE workdir and the
# second reuses the finished sft and reward stages): the smallest that show the issue-6 claims reliably.
ACCEPTANCE_SFT = dict(data=dict(num_train=2048, num_eval=64, batch_size=32, max_length=40),
                      optimizer=dict(learning_rate=3e-3, clip_norm=1.0),
                      loop=dict(S.SMOKE_LOOP, num_steps=120, log_every=20, checkpoint_every=120))
ACCEPTANCE_RM = dict(data=dict(num_train=2048, num_eval=256, batch_size=32, max_length=40),
                     optimizer=dict(learning_rate=3e-3, clip_norm=1.0),
                     loop=dict(S.SMOKE_LOOP, num_steps=120, log_every=20, checkpoint_every=120))


def get_config(arg=None):
  variant = arg or "default"
  if variant not in VARIANTS:
    raise ValueError(f"configs/best_of_n.py: unknown variant {variant!r}; valid: {', '.join(VARIANTS)}")
  if variant == "smoke":
    model = S.SMOKE_MODEL
    sft_kwargs = dict(data=S.SMOKE_DATA, loop=S.SMOKE_LOOP, optimizer=dict(learning_rate=3e-3))
    rm_kwargs = dict(num_members=2, data=S.SMOKE_DATA, loop=S.SMOKE_LOOP, optimizer=dict(learning_rate=3e-3))
    bon_kwargs = dict(num_prompts=8, pool_size=16, batch_size=8, max_new_tokens=12,
                      aggregations=("mean", "min"))
  elif variant == "acceptance":
    model = S.SMOKE_MODEL
    sft_kwargs, rm_kwargs = ACCEPTANCE_SFT, ACCEPTANCE_RM
    bon_kwargs = dict(num_prompts=32, pool_size=64, batch_size=16, max_new_tokens=32)
  else:
    model = S.WORLD_MODEL
    sft_kwargs = dict(data=dict(num_train=8192, num_eval=256, batch_size=32, max_length=48),
                      optimizer=dict(learning_rate=3e-3, schedule="cosine", warmup_steps=20, decay_steps=300,
                                     end_lr_factor=0.1, clip_norm=1.0),
                      loop=dict(num_steps=300, log_every=25, checkpoint_every=150, eval_every=150))
    rm_kwargs = dict(num_members=3 if variant == "ensemble" else 1,
                     data=dict(num_train=8192, num_eval=512, batch_size=32, max_length=48),
                     optimizer=dict(learning_rate=2e-3, schedule="cosine", warmup_steps=20, decay_steps=300,
                                    end_lr_factor=0.1, clip_norm=1.0, weight_decay=0.01),
                     loop=dict(num_steps=300, log_every=25, checkpoint_every=150, eval_every=150))
    bon_kwargs = dict(num_prompts=256, pool_size=128, batch_size=16, max_new_tokens=32)
    if variant == "ensemble":
      bon_kwargs["aggregations"] = AGGREGATION_METHODS
  config = S.chain({
      "sft": S.stage("sft", sft.SFTConfig, model=dict(config=model), **sft_kwargs),
      "reward": S.stage("reward", reward.RewardConfig, model=dict(config=model), **rm_kwargs),
      "best_of_n": S.stage("best_of_n", best_of_n_stage.BestOfNConfig, policy="stage:sft",
                           reward_model="stage:reward", **bon_kwargs),
  })
  config.tables = dict(metrics=("best_of_n/gold/gold@N", "best_of_n/rm_mean/gold@N", "best_of_n/rm_mean/gap_std"))
  return config
