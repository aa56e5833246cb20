"""Random CausalLMs (and preference batches) built from numpy, shared by the test folders (a jitted PRNG init compiles slowly on 2 CPU
cores). Importable from any test module: pytest puts tests/ on sys.path for tests/conftest.py."""

import jax
import numpy as np
from flax import nnx

from jaxrlhf.models import CausalLM, ModelConfig, abstract_model, save_pretrained
from jaxrlhf.models.decoder import layer_param_specs, model_param_specs


def random_model(config: ModelConfig, seed: int = 0, scale: float = 0.2) -> CausalLM:
  """CausalLM with N(0, scale) weights and biases and norm scales near one (a larger scale gives peaked
  next-token distributions)."""
  rng = np.random.default_rng(seed)

  def draw(spec, lead=()):
    shape = (*lead, *spec.shape)
    base = 1.0 if spec.init == "ones" else 0.0
    span = 0.1 if spec.init == "ones" else scale
    return (base + span * rng.standard_normal(shape)).astype(config.params_dtype)

  params = {name: draw(spec) for name, spec in model_param_specs(config).items()}
  params["layers"] = {name: draw(spec, (config.num_layers,)) for name, spec in layer_param_specs(config).items()}
  graphdef, state = nnx.split(abstract_model(config))
  nnx.replace_by_pure_dict(state, jax.tree.map(jax.numpy.asarray, params))
  return nnx.merge(graphdef, state)


def random_pair_batch(rng: np.random.Generator, b: int = 4, t: int = 8, vocab: int = 32, weight=None) -> dict:
  """A two-row preference batch of the preference stage's layout: B pairs of T tokens (ids in [4, vocab)), a shared
  3-token prompt (loss mask 0 there), row 1 padded after 6 tokens; `weight` (B,) defaults to linspace(0.5, 1)."""
  batch = {}
  for side in ("chosen", "rejected"):
    ids = rng.integers(4, vocab, (b, t)).astype(np.int32)
    att = np.ones((b, t), np.int32)
    att[1, 6:] = 0
    loss = att.copy()
    loss[:, :3] = 0  # 3 prompt tokens
    batch.update({f"{side}_input_ids": ids, f"{side}_attention_mask": att, f"{side}_loss_mask": loss})
  batch["rejected_input_ids"][:, :3] = batch["chosen_input_ids"][:, :3]
  batch["weight"] = (np.linspace(0.5, 1.0, b) if weight is None else np.asarray(weight)).astype(np.float32)
  return batch


def unpadded_response_logps(model, prompt_rows, response_rows, temperature: float = 1.0) -> np.ndarray:
  """float64 (B,) sum_t log p(response_t | prompt, response_<t) of each row, p the model at `temperature`, from ONE
  forward of the [prompt | response] rows right-padded with no attention mask (a causal model's logits at a position
  do not depend on what follows it): an independent reference for the library's padded, masked scoring paths.

  Args:
    prompt_rows, response_rows: B lists of token ids each (no padding).
  """
  rows = [list(p) + list(r) for p, r in zip(prompt_rows, response_rows)]
  ids = np.zeros((len(rows), max(len(r) for r in rows)), np.int32)
  for i, r in enumerate(rows):
    ids[i, :len(r)] = r
  logp = jax.nn.log_softmax(np.asarray(model(ids), np.float64) / temperature, axis=-1)
  return np.asarray([sum(float(logp[i, len(p) + n - 1, t]) for n, t in enumerate(r))
                     for i, (p, r) in enumerate(zip(prompt_rows, response_rows))])


def save_strong_and_weak(root, vocab_size: int) -> dict:
  """{"strong" / "weak": (saved folder, model)}: two random 1-layer CausalLMs (seeds 1 / 2, peaked next-token
  distributions) saved under `root`, for the stages that contrast two models."""
  config = ModelConfig(vocab_size=vocab_size, embed_dim=16, num_layers=1, num_heads=2, num_kv_heads=2, head_dim=8,
                       mlp_dim=32, max_position_embeddings=96)
  out = {}
  for name, seed in (("strong", 1), ("weak", 2)):
    model = random_model(config, seed=seed, scale=0.5)
    save_pretrained(model, str(root / name))
    out[name] = (str(root / name), model)
  return out
