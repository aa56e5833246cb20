"""GPU benchmark: bf16 reward-model and DPO train steps on a ~1B Llama-architecture model at sequence 2048.

    python -m experiments.bench_gpu [--steps 10] [--batch 8] [--seq 2048] [--peak_tflops 989] [--out results.json]
    python -m experiments.bench_gpu --only rm,dpo,rm_shared,dpo_shared     # + shared-prompt scoring

The `_shared` steps score the same pairs (prompt = the first half of each sequence, shared by chosen and
rejected) as ONE [prompt | chosen | rejected] row of 1.5 x seq tokens through `train.pairs` (models.shared_prompt)
instead of two rows of seq tokens; their `speedup` is the two-row step time over theirs, and their MFU counts the
FLOPs of the tokens they actually run (attention over the 1.5 x seq row).

Reports step time, tokens/s, peak device memory and model-FLOPs utilization (MFU) against `--peak_tflops`
(989 TFLOP/s: dense bf16 on an H100/H200 SXM). FLOPs follow MaxText's count (per trained token: 6 x matmul
parameters, plus the causal attention term 6 x T x N x H per layer; the unembedding counts only where a step
computes it). Everything runs through the library's own modules: CausalLM / RewardModel, the chunked log-prob
gather, `dpo_loss` with precomputed reference log-probs, `bradley_terry_loss`, optax AdamW, a jitted step with
buffer donation.
"""

import argparse
import json
import os
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from jaxrlhf.losses.logps import chunked_sequence_logps
from jaxrlhf.losses.preference import dpo_loss
from jaxrlhf.losses.reward import bradley_terry_loss
from jaxrlhf.models.config import ModelConfig
from jaxrlhf.models.decoder import CausalLM
from jaxrlhf.models.heads import HeadConfig
from jaxrlhf.models.reward_model import RewardModel
from jaxrlhf.models.shared_prompt import shared_prompt_layout, shared_prompt_token_logps

# Llama-3.2-1B's shape (about 1.24B parameters with its tied 128k embedding).
LLAMA_1B = dict(family="llama", vocab_size=128256, embed_dim=2048, num_layers=16, num_heads=32, num_kv_heads=8,
                head_dim=64, mlp_dim=8192, rope_theta=500000.0, tie_word_embeddings=True,
                max_position_embeddings=8192)


def matmul_params(c: ModelConfig, with_unembed: bool) -> int:
  """Parameters that take part in matmuls per token (embedding lookup excluded)."""
  attn = c.embed_dim * c.head_dim * (2 * c.num_heads + 2 * c.num_kv_heads)
  mlp = c.embed_dim * c.mlp_dim * (3 if c.gated_mlp else 2)
  return c.num_layers * (attn + mlp) + (c.embed_dim * c.vocab_size if with_unembed else 0)


def train_flops_per_token(c: ModelConfig, seq: int, with_unembed: bool) -> float:
  """MaxText-style training FLOPs per token: 6N + causal attention (QK^T and PV, halved for causality)."""
  attention = 6 * seq * c.num_heads * c.head_dim * c.num_layers  # 3 x (2 matmuls x 2 flops x T/2) per token
  return 6 * matmul_params(c, with_unembed) + attention


def _optimizer():
  return optax.chain(optax.clip_by_global_norm(1.0), optax.adamw(1e-5, weight_decay=0.0))


def _make_step(loss_fn):
  """A jitted, donating train step over (params, rest, opt_state, batch) for a graphdef closed over."""

  def step(graphdef, params, rest, opt_state, batch):
    def objective(p):
      return loss_fn(nnx.merge(graphdef, p, rest), batch)

    (loss, aux), grads = jax.value_and_grad(objective, has_aux=True)(params)
    updates, opt_state = _optimizer().update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, loss, aux

  return jax.jit(step, static_argnums=0, donate_argnums=(1, 3))


def rm_loss(model, batch):
  ids = jnp.concatenate([batch["chosen_ids"], batch["rejected_ids"]])
  rewards = model(ids)  # unpadded full-length rows: the fused causal kernel needs no mask
  b = batch["chosen_ids"].shape[0]
  losses, _ = bradley_terry_loss(rewards[:b], rewards[b:])
  return losses.mean(), rewards.mean()


def dpo_step_loss(model, batch):
  ids = jnp.concatenate([batch["chosen_ids"], batch["rejected_ids"]])
  hidden = model.hidden_states(ids)
  targets = jnp.concatenate([ids[:, 1:], ids[:, :1]], axis=1)
  loss_mask = jnp.ones(ids.shape, jnp.float32).at[:, -1].set(0.0)
  _, logps = chunked_sequence_logps(hidden, model.output_embedding(), targets, loss_mask, chunk_size=4096)
  b = batch["chosen_ids"].shape[0]
  losses, _ = dpo_loss(logps[:b], logps[b:], batch["ref_chosen_logps"], batch["ref_rejected_logps"], beta=0.1)
  return losses.mean(), logps.mean()


def _lengths(batch):
  return batch["prompt_length"], batch["chosen_length"], batch["rejected_length"]


def rm_shared_loss(model, batch):
  r_c, r_r = model.score_shared_prompt(batch["pair_input_ids"], *_lengths(batch))
  losses, _ = bradley_terry_loss(r_c, r_r)
  return losses.mean(), r_c.mean()


def dpo_shared_loss(model, batch):
  ids = batch["pair_input_ids"]
  layout = shared_prompt_layout(*_lengths(batch), ids.shape[1])
  token_logps, _ = shared_prompt_token_logps(model, ids, layout, chunk_size=4096)
  logps = jnp.sum(token_logps, axis=-1)
  b = logps.shape[0] // 2
  losses, _ = dpo_loss(logps[:b], logps[b:], batch["ref_chosen_logps"], batch["ref_rejected_logps"], beta=0.1)
  return losses.mean(), logps.mean()


def shared_batch(batch: dict, seq: int) -> dict:
  """The same pairs as [prompt | chosen | rejected] rows: prompt = the first seq // 2 tokens of chosen."""
  p = seq // 2
  ids = jnp.concatenate([batch["chosen_ids"], batch["rejected_ids"][:, p:]], axis=1)
  b = ids.shape[0]
  full = lambda n: jnp.full((b,), n, jnp.int32)  # pylint: disable=unnecessary-lambda-assignment
  return dict(pair_input_ids=ids, prompt_length=full(p), chosen_length=full(seq - p), rejected_length=full(seq - p),
              ref_chosen_logps=batch["ref_chosen_logps"], ref_rejected_logps=batch["ref_rejected_logps"])


def bench_one(name, make_model, loss_fn, batch, c: ModelConfig, seq: int, steps: int, with_unembed: bool,
              peak_tflops: float) -> dict:
  model = make_model()
  graphdef, params, rest = nnx.split(model, nnx.Param, ...)
  del model
  opt_state = jax.jit(_optimizer().init)(params)
  step = _make_step(loss_fn)
  t0 = time.perf_counter()
  params, opt_state, loss, _ = step(graphdef, params, rest, opt_state, batch)
  loss.block_until_ready()
  compile_s = time.perf_counter() - t0
  times = []
  for _ in range(steps):
    t0 = time.perf_counter()
    params, opt_state, loss, _ = step(graphdef, params, rest, opt_state, batch)
    loss.block_until_ready()
    times.append(time.perf_counter() - t0)
  step_s = float(np.median(times))
  if "pair_input_ids" in batch:  # one row of 1.5 x seq tokens per pair
    num_pairs, row = batch["pair_input_ids"].shape
    tokens, flops = num_pairs * row, train_flops_per_token(c, row, with_unembed) * num_pairs * row
  else:
    num_pairs = batch["chosen_ids"].shape[0]
    tokens = 2 * num_pairs * seq
    flops = train_flops_per_token(c, seq, with_unembed) * tokens
  stats = jax.devices()[0].memory_stats() or {}
  n_params = sum(x.size for x in jax.tree.leaves(params))
  return dict(step=name, params=int(n_params), batch_pairs=num_pairs, seq=seq,
              compile_s=round(compile_s, 1), step_s=round(step_s, 4), pairs_per_s=round(num_pairs / step_s, 2),
              tokens_per_s=round(tokens / step_s), tflops_per_s=round(flops / step_s / 1e12, 1),
              mfu=round(flops / step_s / 1e12 / peak_tflops, 4),
              peak_mem_gib=round(stats.get("peak_bytes_in_use", 0) / 2**30, 2), final_loss=float(loss))


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--steps", type=int, default=10)
  parser.add_argument("--batch", type=int, default=8, help="preference pairs per step (2x sequences)")
  parser.add_argument("--seq", type=int, default=2048)
  parser.add_argument("--layers", type=int, default=None, help="override the layer count (smoke runs)")
  parser.add_argument("--attention", default="cudnn", help="ModelConfig.attention implementation")
  parser.add_argument("--remat", default="none")
  parser.add_argument("--peak_tflops", type=float, default=989.0)
  parser.add_argument("--only", default="rm,dpo")
  parser.add_argument("--out", default=None)
  args = parser.parse_args()

  fields = dict(LLAMA_1B, dtype="bfloat16", param_dtype="float32", remat=args.remat)
  fields["attention"] = args.attention
  if args.layers:
    fields["num_layers"] = args.layers
  c = ModelConfig(**fields)
  rng = np.random.default_rng(0)
  ids = lambda: jnp.asarray(rng.integers(0, c.vocab_size, (args.batch, args.seq)), jnp.int32)
  batch = dict(chosen_ids=ids(), rejected_ids=ids(),
               ref_chosen_logps=jnp.asarray(rng.normal(-2.0 * args.seq, 10.0, args.batch), jnp.float32),
               ref_rejected_logps=jnp.asarray(rng.normal(-2.0 * args.seq, 10.0, args.batch), jnp.float32))
  print(f"device: {jax.devices()[0].device_kind}, jax {jax.__version__}, config: {c}", flush=True)
  rows = []
  cases = {
      "rm": ("reward_model (BT)", rm_loss, False, batch),
      "dpo": ("dpo (sigmoid, precomputed ref)", dpo_step_loss, True, batch),
      "rm_shared": ("reward_model (BT), shared prompt", rm_shared_loss, False, shared_batch(batch, args.seq)),
      "dpo_shared": ("dpo (sigmoid, precomputed ref), shared prompt", dpo_shared_loss, True,
                     shared_batch(batch, args.seq)),
  }
  for key in args.only.split(","):
    name, loss_fn, lm, case_batch = cases[key]
    make_model = ((lambda: CausalLM(c, rngs=nnx.Rngs(0))) if lm
                  else (lambda: RewardModel(c, HeadConfig("linear"), rngs=nnx.Rngs(0))))
    try:
      rows.append(bench_one(name, make_model, loss_fn, case_batch, c, args.seq, args.steps, lm, args.peak_tflops))
    except Exception as e:  # pylint: disable=broad-except
      print(f"{key} FAILED: {type(e).__name__}: {str(e)[:2000]}", flush=True)  # the other cases still run
      continue
    base = next((r for r in rows if r["step"] == cases[key.replace("_shared", "")][0]), None)
    if key.endswith("_shared") and base is not None:
      rows[-1]["speedup"] = round(base["step_s"] / rows[-1]["step_s"], 3)
    print(json.dumps(rows[-1]), flush=True)
  print("\n| step | params | pairs/step | seq | step s | pairs/s | tokens/s | TFLOP/s | MFU | peak GiB | speedup |")
  print("|---|---|---|---|---|---|---|---|---|---|---|")
  for r in rows:
    print(f"| {r['step']} | {r['params'] / 1e9:.2f}B | {r['batch_pairs']} | {r['seq']} | {r['step_s']} | "
          f"{r['pairs_per_s']} | {r['tokens_per_s']} | {r['tflops_per_s']} | {r['mfu']:.1%} | {r['peak_mem_gib']} | "
          f"{r.get('speedup', '')} |")
  out = args.out or (os.path.join(os.environ["OUT"], "bench_gpu.json") if os.environ.get("OUT") else None)
  if out:
    with open(out, "w") as f:
      json.dump(dict(device=jax.devices()[0].device_kind, jax=jax.__version__, rows=rows), f, indent=1)


if __name__ == "__main__":
  main()
