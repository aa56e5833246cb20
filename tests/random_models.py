"""Random CausalLMs built from numpy, shared by the test folders (a jitted PRNG init compiles slowly on 2 CPU
cores). Importable from any test module: pytest puts tests/ on sys.path for tests/conftest.py."""

import jax
import numpy as np
from flax import nnx

from jaxrlhf.models import CausalLM, ModelConfig, abstract_model
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
