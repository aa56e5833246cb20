"""GPU numerics check: cuDNN fused attention against the XLA einsum path, and shared-prompt scoring against two rows.

    python -m experiments.gpu_attention_check        # on a GPU machine (the device tool), seconds

Prints relative errors (bf16, a 2-layer Llama-shaped model with random weights):
  * logits of cuDNN vs XLA attention, unpadded and padded;
  * under cuDNN, chosen/rejected sequence log-probs and last-token rewards of [prompt | chosen | rejected] rows
    (models.shared_prompt) vs the same pairs as two rows.
"""

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jaxrlhf.losses.logps import sequence_logps
from jaxrlhf.models.config import ModelConfig
from jaxrlhf.models.decoder import CausalLM
from jaxrlhf.models.heads import HeadConfig
from jaxrlhf.models.reward_model import RewardModel
from jaxrlhf.models.shared_prompt import shared_prompt_layout, shared_prompt_token_logps

BASE = dict(vocab_size=512, embed_dim=256, num_layers=2, num_heads=8, num_kv_heads=2, head_dim=32, mlp_dim=512,
            dtype="bfloat16")


def rel_err(a, b) -> float:
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  return float(np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-30))


def attention_paths(attention: str = "cudnn") -> None:
  m_x = CausalLM(ModelConfig(**BASE, attention="xla"), rngs=nnx.Rngs(0))
  m_c = CausalLM(ModelConfig(**BASE, attention=attention), rngs=nnx.Rngs(0))
  ids = jax.random.randint(jax.random.key(1), (4, 256), 0, 512)
  mask = jnp.ones((4, 256), bool).at[:2, -40:].set(False).at[2:, :30].set(False)
  f = nnx.jit(lambda m, i, a: m(i, a))
  for name, a in (("unpadded", None), ("padded", mask)):
    lx, lc = np.asarray(f(m_x, ids, a), np.float32), np.asarray(f(m_c, ids, a), np.float32)
    real = np.ones((4, 256), bool) if a is None else np.asarray(a)
    print(f"{attention} vs xla logits ({name}): rel err {rel_err(lc[real], lx[real]):.2e}", flush=True)


def shared_prompt_vs_two_rows(attention: str = "cudnn") -> None:
  lm = CausalLM(ModelConfig(**BASE, attention=attention), rngs=nnx.Rngs(2))
  rng = np.random.default_rng(3)
  b, p, r = 4, 96, 64
  prompt, chosen, rejected = (rng.integers(0, 512, (b, n)).astype(np.int32) for n in (p, r, r))
  shared_ids = jnp.asarray(np.concatenate([prompt, chosen, rejected], 1))
  lengths = [jnp.full((b,), n, jnp.int32) for n in (p, r, r)]
  layout = shared_prompt_layout(*lengths, shared_ids.shape[1])
  shared_logps, _ = nnx.jit(lambda m, i: shared_prompt_token_logps(m, i, layout))(lm, shared_ids)
  shared_logps = np.asarray(jnp.sum(shared_logps, -1))

  def two_rows(m, ids):
    mask = jnp.zeros(ids.shape, jnp.float32).at[:, p:].set(1.0)
    return sequence_logps(m(ids)[:, :-1], ids[:, 1:], mask[:, 1:])[1]

  rows = jnp.asarray(np.concatenate([np.concatenate([prompt, chosen], 1), np.concatenate([prompt, rejected], 1)]))
  two_logps = np.asarray(nnx.jit(two_rows)(lm, rows))
  print(f"shared-prompt vs two-row sequence log-probs ({attention}, {BASE['dtype']}): rel err "
        f"{rel_err(shared_logps, two_logps):.2e}", flush=True)
  rm = RewardModel.from_causal_lm(lm, HeadConfig(), seed=4)
  shared_r = nnx.jit(lambda m, i: jnp.concatenate(m.score_shared_prompt(i, *lengths)))(rm, shared_ids)
  two_r = nnx.jit(lambda m, i: m(i))(rm, rows)
  print(f"shared-prompt vs two-row rewards ({attention}, {BASE['dtype']}): rel err {rel_err(shared_r, two_r):.2e}",
        flush=True)


if __name__ == "__main__":
  print("jax", jax.__version__, jax.devices(), flush=True)
  attention_paths()
  shared_prompt_vs_two_rows()
