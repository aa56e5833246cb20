"""A tiny random chat model saved as a self-contained Hugging Face folder (config.json, model.safetensors,
tokenizer.json, tokenizer_config.json with a ChatML template) and arithmetic prompt files, for end-to-end tests of
the online stages on prompt files without the 135M SmolLM2 checkpoint. Built in-process: no torch, no download."""

from __future__ import annotations

import json
import pathlib

from flax import nnx

from jaxrlhf.models import CausalLM, ModelConfig, save_pretrained
from jaxrlhf.models.tokenizer import Tokenizer, _bytes_to_unicode, byte_level_bpe

SPECIALS = ("<|im_start|>", "<|im_end|>")
CHATML = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
          "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
# 2 layers of width 32 over 258 tokens (256 bytes + the two ChatML markers).
SIZES = dict(embed_dim=32, num_layers=2, num_heads=4, num_kv_heads=2, head_dim=8, mlp_dim=64,
             max_position_embeddings=256)


def byte_tokenizer() -> Tokenizer:
  """A byte-level tokenizer without merges: ids 0-255 are bytes (in GPT-2's byte alphabet order), 256 and 257 the
  ChatML markers; <|im_end|> ends a turn (eos), the ChatML template renders chats."""
  byte_chars = _bytes_to_unicode()
  tokens = [byte_chars[b] for b in range(256)] + list(SPECIALS)
  backend = byte_level_bpe(tokens, [], [1] * 256 + [3, 3], "default")
  return Tokenizer(backend, eos_token="<|im_end|>", chat_template=CHATML)


def write_model(folder: str | pathlib.Path, seed: int = 0) -> str:
  """Saves a random tiny Llama-style policy with the byte tokenizer into `folder`; returns its path."""
  tokenizer = byte_tokenizer()
  model = CausalLM(ModelConfig(vocab_size=tokenizer.vocab_size, **SIZES), rngs=nnx.Rngs(seed))
  save_pretrained(model, folder)
  tokenizer.save_pretrained(folder)
  return str(folder)


def arithmetic_rows(start: int, n: int) -> list[dict]:
  """n chat prompts "What is a + b?" with their answer and operand columns (a, b distinct per row)."""
  rows = []
  for i in range(start, start + n):
    a, b = i % 9 + 1, i // 9 + 1
    rows.append({"prompt": [{"role": "user", "content": f"What is {a} + {b}?"}], "answer": str(a + b), "a": a,
                 "b": b, "id": f"row-{i}"})
  return rows


def write_prompt_files(folder: str | pathlib.Path, num_train: int = 24, num_eval: int = 8) -> tuple[str, str]:
  """Writes train.jsonl and eval.jsonl (disjoint rows) under `folder`; returns their paths."""
  folder = pathlib.Path(folder)
  folder.mkdir(parents=True, exist_ok=True)
  paths = []
  for name, rows in (("train", arithmetic_rows(0, num_train)), ("eval", arithmetic_rows(num_train, num_eval))):
    path = folder / f"{name}.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    paths.append(str(path))
  return paths[0], paths[1]


def checked_length(prompts, completions, answer, a, b, **kwargs):
  """A reward for tests: completion length / 10 characters, after checking that every row's columns belong to its
  own prompt (the rollout's prompt_index, repeated per generation, must point at the right table rows)."""
  del kwargs
  for prompt, ans, x, y in zip(prompts, answer, a, b):
    if f"What is {x} + {y}?" not in str(prompt) or int(ans) != x + y:
      raise AssertionError(f"row misaligned: prompt {prompt!r} with columns answer={ans} a={x} b={y}")
  return [len(c) / 10.0 for c in completions]


REWARDS = ({"kind": "exact_match", "name": "correct", "options": {"column": "answer"}},
           {"kind": "python", "function": "tiny_chat_model:checked_length", "name": "length", "weight": 0.5})


def rl_stage(model: str, train: str, held_out: str, algorithm: str = "grpo", steps: int = 3, num_devices: int = 1,
             rewards: tuple = REWARDS) -> dict:
  """The rl stage's config (a dict of RLConfig keys) for the tiny model on the arithmetic prompt files: 2 prompts x
  4 generations x 6 new tokens per step, a checkpoint every step."""
  return {
      "seed": 1, "model": {"init_from": model},
      "prompts": {"source": "files", "paths": (train,), "eval_paths": (held_out,)}, "num_prompts": 0,
      "prompts_per_step": 2, "max_prompt_length": 48, "eval_prompts": 4, "num_devices": num_devices,
      "rewards": rewards, "loss": {"algorithm": algorithm, "num_generations": 4, "beta": 0.05},
      "sampling": {"max_new_tokens": 6}, "optimizer": {"learning_rate": 1e-3},
      "loop": {"num_steps": steps, "log_every": 1, "checkpoint_every": 1, "eval_every": steps, "progress": False,
               "tensorboard": False, "async_checkpoints": False}}


def chat_model_with_template(folder: str | pathlib.Path, template: str) -> str:
  """The tiny model saved in `folder` with `template` as its chat_template.jinja; returns its path."""
  write_model(folder)
  (pathlib.Path(folder) / "chat_template.jinja").write_text(template, encoding="utf-8")
  return str(folder)


def file_stage_config(folder: pathlib.Path, model_dir: str, train: list, held_out: list, stage: type, fmt: str = "chat",
                      max_length: int = 384, **data):
  """A training stage's config (`stage`, e.g. PreferenceConfig) on `train` / `held_out` rows written as JSONL under
  `folder`: learning rate 0 (the evaluated model is the initial one), one step, no shuffling."""
  from jaxrlhf.config import from_config  # pylint: disable=g-import-not-at-top
  from jaxrlhf.data import adapters  # pylint: disable=g-import-not-at-top
  paths = {}
  for name, rows in (("train", train), ("eval", held_out)):
    paths[name] = str(pathlib.Path(folder) / f"{name}.jsonl")
    adapters.write_jsonl(paths[name], rows)
  section = dict(seed=0, num_devices=1, model=dict(init_from=model_dir),
                 data=dict(source="files", format=fmt, paths=(paths["train"],), eval_paths=(paths["eval"],),
                           batch_size=4, max_length=max_length, shuffle=False, **data),
                 optimizer=dict(learning_rate=0.0),
                 loop=dict(num_steps=1, log_every=1, checkpoint_every=1, progress=False, tensorboard=False,
                           async_checkpoints=False))
  return from_config(section, stage, path="config")


def held_out_pair_ids(cfg) -> tuple[list, list[dict]]:
  """(held-out records, [{"chosen" / "rejected": (prompt ids, response ids)}]) as the stage's eval batches hold
  them; asserts that the loss mask covers exactly the response tokens."""
  import numpy as np  # pylint: disable=g-import-not-at-top
  from jaxrlhf.stages import inputs as inputs_lib  # pylint: disable=g-import-not-at-top
  context = inputs_lib.stage_context(cfg, {})
  _, records, _ = inputs_lib.preference_records(cfg.data, context.world)
  got = []
  for batch in inputs_lib.eval_batches(records, context.tokenizer, cfg.data, "preference"):
    for b in np.flatnonzero(batch["weight"] > 0):
      got.append({})
      for side in ("chosen", "rejected"):
        valid = batch[f"{side}_attention_mask"][b] > 0
        ids, scored = batch[f"{side}_input_ids"][b][valid].tolist(), batch[f"{side}_loss_mask"][b][valid]
        cut = int(np.argmax(scored))  # The first response token.
        assert scored[cut:].all() and not scored[:cut].any()
        got[-1][side] = (ids[:cut], ids[cut:])
  return records, got


def run_rl_recording_prompts(cfg, workdir: str, monkeypatch) -> tuple[dict, list]:
  """Runs the rl stage `cfg` and returns (its outputs, the unpadded prompt ids of every PromptIterator it built)."""
  import numpy as np  # pylint: disable=g-import-not-at-top
  from jaxrlhf.stages import inputs as inputs_lib  # pylint: disable=g-import-not-at-top
  from jaxrlhf.stages import rl  # pylint: disable=g-import-not-at-top
  seen = []

  class Recording(inputs_lib.PromptIterator):
    def __init__(self, ids, mask, *args, **kwargs):
      seen.append([i[m > 0].tolist() for i, m in zip(np.asarray(ids), np.asarray(mask))])
      super().__init__(ids, mask, *args, **kwargs)

  monkeypatch.setattr(inputs_lib, "PromptIterator", Recording)
  return rl.run(cfg, workdir, {}), seen
