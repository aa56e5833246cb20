"""Decoder families (Llama/Mistral/SmolLM2, Qwen2, Qwen3, Gemma 2, Gemma 3 text, GPT-2) and checkpoint interop
(HF safetensors, GGUF; reward models in the HF sequence-classification format: models.hf_reward)."""

from __future__ import annotations

import os
import pathlib
from typing import Any

import jax.numpy as jnp

from jaxrlhf.models.config import ModelConfig, RopeScaling
from jaxrlhf.models.decoder import CausalLM, KVCache, abstract_model, default_positions, init_model
from jaxrlhf.models.heads import HeadConfig
from jaxrlhf.models.hf import model_from_hf_tensors, read_hf_folder, save_hf_folder
from jaxrlhf.models.hf_reward import reward_model_from_pretrained, save_reward_model_pretrained, transformers_rewards
from jaxrlhf.models.reward_model import RewardEnsemble, RewardModel
from jaxrlhf.parallel.sharding import auto_axes, state_shardings

__all__ = [
    "CausalLM", "HeadConfig", "KVCache", "ModelConfig", "RewardEnsemble", "RewardModel", "RopeScaling",
    "abstract_model", "default_positions", "from_pretrained", "init_model", "load_tokenizer", "model_from_hf_tensors",
    "reward_model_from_pretrained", "save_pretrained", "save_reward_model_pretrained", "transformers_rewards",
]


def from_pretrained(path: str | os.PathLike, dtype: Any = jnp.float32, mesh: Any = None,
                    **config_overrides: Any) -> tuple[CausalLM, ModelConfig]:
  """Loads a CausalLM from a Hugging Face folder (config.json + model.safetensors or a sharded
  model.safetensors.index.json) or a .gguf file of architecture llama, qwen2, qwen3, gemma, gemma2 or gemma3.

  Args:
    path: the folder or the .gguf file.
    dtype: parameter and compute dtype.
    mesh: optional jax.sharding.Mesh (any axis types: `jax.make_mesh`'s Explicit default too); parameters are
      then placed directly in the shardings that `jaxrlhf.parallel.sharding.state_shardings` derives from their
      logical axis names.
    **config_overrides: ModelConfig fields such as scan_layers=False or remat="full".

  Returns:
    (model, config).
  """
  path = pathlib.Path(path)
  if path.suffix == ".gguf":
    from jaxrlhf.models.gguf import read_gguf  # lazy: needs the `gguf` package
    hf_config, tensors = read_gguf(path)
  else:
    hf_config, tensors = read_hf_folder(path)
  shardings = None
  if mesh is not None:
    mesh = auto_axes(mesh)
    shardings = lambda abstract_state: state_shardings(abstract_state, mesh)  # noqa: E731
  return model_from_hf_tensors(hf_config, tensors, dtype=dtype, shardings=shardings, **config_overrides)


def save_pretrained(model: CausalLM, out_dir: str | os.PathLike, config: ModelConfig | None = None) -> None:
  """Writes config.json + model.safetensors (transformers naming/layout); `config` defaults to model.config."""
  save_hf_folder(model, out_dir, config)


def load_tokenizer(path: str | os.PathLike):
  """Tokenizer of a HF folder (tokenizer.json) or a .gguf file; see jaxrlhf.models.tokenizer."""
  from jaxrlhf.models.tokenizer import load_tokenizer as _load  # lazy: keeps model imports light
  return _load(path)
