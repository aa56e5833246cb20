"""The cases of `experiments/bench_gpu.py`: one function per case, each returning one JSON-able row.

A case is named by an `--only` entry `kind[:lever[:lever...]]`, a lever being `key=value` or a bare flag, e.g.
`dpo:logps=chunked`, `rm:unroll`, `rm:b=16:remat=dots`, `gen:b=64`. Every case runs the library's own modules
(CausalLM, RewardModel, the log-prob gathers, dpo_loss / bradley_terry_loss / the policy-gradient losses,
`sampling.generate`); nothing here imports `jaxrlhf.train` (its package pulls in ml_collections and grain, absent
on the GPU image, and is being restructured), so the small train step and its loops over ensemble members are
written out below (the same arithmetic as `train.state.make_train_step` and `stages.reward.make_ensemble_step`).

FLOPs follow MaxText's count: per trained token 6 x matmul parameters (the unembedding only at the positions where
the step needs it: every position of a DPO row, the N response positions of GRPO's log-prob passes) + the causal
attention term 6 x T x N x H per layer; a forward pass is a third of that; a rollout counts each prompt's prefill
once and every decoded token's attention over the filled cache slots (`rollout_flops`). MFU is against
`Settings.peak_tflops`, HBM utilization against `Settings.hbm_bytes_per_s`: by default the GPU's datasheet figures
(`GPU_PEAKS`: dense bf16 989 TFLOP/s for an H100 SXM or H200; HBM 3.35 TB/s H100 SXM, 4.8 TB/s H200).
Rematerialization is not counted.
"""

from __future__ import annotations

import dataclasses
import gc
import math
import os
import re
import shutil
import tempfile
import time
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from jaxrlhf.losses import policy_gradient as pg
from jaxrlhf.losses.logps import DEFAULT_CHUNK_SIZE, chunked_sequence_logps, fused_sequence_logps, sequence_logps
from jaxrlhf.losses.preference import dpo_loss
from jaxrlhf.losses.reward import bradley_terry_loss
from jaxrlhf.models.config import ATTENTION_IMPLS, REMAT_POLICIES, ModelConfig, RopeScaling
from jaxrlhf.models.decoder import CausalLM
from jaxrlhf.models.heads import HeadConfig
from jaxrlhf.models.reward_model import RewardModel
from jaxrlhf.models.shared_prompt import shared_prompt_layout, shared_prompt_token_logps
from jaxrlhf.sampling.generate import cache_windows, default_cache_bucket, generate

if __package__:
  from experiments import trace_summary
else:  # run from bench_gpu.py as a script: its directory is on sys.path
  import trace_summary  # pylint: disable=g-import-not-at-top

# Llama-3.2-1B's shape (about 1.24B parameters with its tied 128k embedding).
LLAMA_1B = dict(family="llama", vocab_size=128256, embed_dim=2048, num_layers=16, num_heads=32, num_kv_heads=8,
                head_dim=64, mlp_dim=8192, rope_theta=500000.0, tie_word_embeddings=True,
                max_position_embeddings=8192)
# Llama-3.1-8B's shape (8.03B parameters, untied LM head, llama3 RoPE scaling).
LLAMA_8B = dict(family="llama", vocab_size=128256, embed_dim=4096, num_layers=32, num_heads=32, num_kv_heads=8,
                head_dim=128, mlp_dim=14336, rope_theta=500000.0, tie_word_embeddings=False,
                rope_scaling=RopeScaling("llama3", factor=8.0, low_freq_factor=1.0, high_freq_factor=4.0,
                                         original_max_position_embeddings=8192),
                max_position_embeddings=131072)
# The ensemble case's member: a ~285M Llama-shaped reward model (5 members with AdamW fit one GPU; 5 x 1.24B do not).
MID_285M = dict(family="llama", vocab_size=32768, embed_dim=1024, num_layers=16, num_heads=16, num_kv_heads=8,
                head_dim=64, mlp_dim=4096, rope_theta=500000.0, tie_word_embeddings=True,
                max_position_embeddings=8192)
# --smoke: every case end to end on a CPU in seconds (tied and untied LM heads).
SMOKE_TIED = dict(family="llama", vocab_size=512, embed_dim=64, num_layers=2, num_heads=4, num_kv_heads=2,
                  head_dim=16, mlp_dim=128, tie_word_embeddings=True, max_position_embeddings=4096)
SMOKE_UNTIED = dict(SMOKE_TIED, num_layers=3, tie_word_embeddings=False)

DTYPES = {"fp32": "float32", "bf16": "bfloat16"}
LOGPS_MODES = ("chunked", "fused", "fused_recompute", "full")
ENSEMBLE_LOOPS = ("both", "vmap", "scan")  # the ens case's member loops (`stages.reward.make_ensemble_step`)
_TRAIN = ("b", "seq", "remat", "unroll", "scan", "attn", "pdtype", "mu", "layers")
LEVERS: dict[str, tuple[str, ...]] = {
    "rm": _TRAIN,
    "dpo": _TRAIN + ("logps", "chunk"),
    "rm_shared": _TRAIN,
    "dpo_shared": _TRAIN + ("logps", "chunk"),  # logps: fused or chunked
    "dpo_check": ("b", "seq", "chunk", "attn", "pdtype", "layers"),
    "gen": ("b", "prompt", "new", "pdtype", "unroll", "scan", "sample", "layers", "bucket", "tpi", "profile"),
    "ens": ("k", "b", "seq", "attn", "remat", "unroll", "scan", "loop"),
    "grpo": ("prompts", "gens", "prompt", "new", "micro", "logps", "chunk", "rollout", "old", "attn", "remat",
             "steps", "bucket", "tpi"),
    "rm8b": _TRAIN,
    "dpo8b": _TRAIN + ("logps", "chunk"),
}
# `xf=<preset>` (any case): XLA_FLAGS for that case, which then runs in a fresh process of its own.
XLA_PRESETS = {
    # CUDA-graph command buffers that also capture while loops and conditionals (the decode loop, the layer scan):
    # fewer kernel launches per decoded token.
    "cmdbuf": "--xla_gpu_enable_command_buffer=FUSION,CUBLAS,CUBLASLT,CUSTOM_CALL,CUDNN,CONDITIONAL,WHILE",
    # The same, and a loop of known trip count (generate's block of `tpi` steps) unrolled into one CUDA graph.
    "cmdbuf_unroll": "--xla_gpu_enable_command_buffer=FUSION,CUBLAS,CUBLASLT,CUSTOM_CALL,CUDNN,CONDITIONAL,WHILE "
                     "--xla_gpu_command_buffer_unroll_loops=true",
    "nocmdbuf": "--xla_gpu_enable_command_buffer=",
    "notriton": "--xla_gpu_enable_triton_gemm=false",  # GEMMs from cuBLAS only
}
LEVERS = {kind: levers + ("xf",) for kind, levers in LEVERS.items()}
# A `profile` case runs in a process of its own with this flag: XLA turns CUDA-graph command buffers off while a
# profiler is active unless told otherwise, and the traced decode must run the program that was timed.
PROFILE_XLA_FLAGS = "--xla_enable_command_buffers_during_profiling=true"
_CHOICES = {"remat": REMAT_POLICIES, "attn": ATTENTION_IMPLS, "pdtype": tuple(DTYPES), "mu": tuple(DTYPES),
            "rollout": tuple(DTYPES), "old": ("detached", "rollout"), "logps": LOGPS_MODES, "xf": tuple(XLA_PRESETS),
            "loop": ENSEMBLE_LOOPS}
# unroll / scan force ModelConfig.scan_layers (neither: the library default); profile traces the case (gen).
_FLAGS = ("unroll", "scan", "sample", "profile")
_ZERO_OK = ("bucket",)  # integer levers where 0 means "off" (bucket=0: every decode step reads the whole cache)
ISOLATED_KINDS = ("rm8b", "dpo8b")  # each in a fresh process: its peak memory is its own

# Estimated H200 wall seconds per case (compile + init + warm-up + timed steps), from the first sessions' step
# times and compile times typical of XLA:GPU for these programs; the budget guard skips a case when less than
# 0.6 x its estimate is left. Unrolled layers (the GPU default since scan_layers=None) roughly double compile time.
_ESTIMATE_S = {"rm": 45, "dpo": 50, "rm_shared": 45, "dpo_shared": 55, "dpo_check": 35, "gen": 30, "ens": 60,
               "grpo": 150, "rm8b": 80, "dpo8b": 90}
CHILD_START_S = 10  # a fresh process: imports, CUDA context, memory pool


@dataclasses.dataclass(frozen=True)
class Entry:
  """One `--only` entry: the text as given, its kind and its levers."""
  text: str
  kind: str
  levers: dict


def parse_entry(text: str) -> Entry:
  """`kind[:key=value|:flag...]` -> Entry; ValueError names `--only`, the entry and the valid choices."""
  kind, *parts = text.strip().split(":")
  if kind not in LEVERS:
    raise ValueError(f"--only: unknown case {kind!r} in {text!r}; expected one of {sorted(LEVERS)}")
  levers: dict[str, Any] = {}
  for part in parts:
    key, eq, value = part.partition("=")
    if key not in LEVERS[kind]:
      raise ValueError(f"--only {text!r}: unknown lever {key!r} for {kind}; expected one of {list(LEVERS[kind])}")
    if key in _FLAGS:
      if eq:
        raise ValueError(f"--only {text!r}: lever {key!r} is a flag (write it without '=')")
      levers[key] = True
    elif not eq:
      raise ValueError(f"--only {text!r}: lever {key!r} needs a value ({key}=...)")
    elif key in _CHOICES:
      if value not in _CHOICES[key]:
        raise ValueError(f"--only {text!r}: {key}={value!r}; expected one of {list(_CHOICES[key])}")
      levers[key] = value
    else:
      lowest = 0 if key in _ZERO_OK else 1
      if not value.isdigit() or int(value) < lowest:
        raise ValueError(f"--only {text!r}: {key}={value!r}; expected "
                         f"{'an integer >= 0' if lowest == 0 else 'a positive integer'}")
      levers[key] = int(value)
  if levers.get("unroll") and levers.get("scan"):
    raise ValueError(f"--only {text!r}: levers 'unroll' and 'scan' contradict each other; give one (or neither, "
                     "for the library default)")
  return Entry(text.strip(), kind, levers)


@dataclasses.dataclass(frozen=True)
class Settings:
  """Run-wide settings (the CLI's flags); levers of an entry override the per-case defaults derived here."""
  smoke: bool = False
  steps: int = 5  # timed steps per train case
  warmup: int = 1  # untimed steps after the compile step
  batch: int = 8  # preference pairs per step of the 1.24B train cases
  seq: int = 2048
  attention: str = "cudnn"
  peak_tflops: float | None = None  # None: the device's datasheet figure (`resolve_peaks`)
  hbm_bytes_per_s: float | None = None
  deadline: float = math.inf  # time.time() after which timing loops stop early and cases are skipped
  trace_dir: str = ""  # where `profile` cases keep their jax.profiler traces ("": a temporary directory)


def estimate_s(entry: Entry, s: Settings) -> float:
  """The case's estimated H200 wall time in seconds (0 in smoke runs)."""
  if s.smoke:
    return 0.0
  lv = entry.levers
  est = float(_ESTIMATE_S[entry.kind])
  if not lv.get("scan"):
    est *= 1.8
  if entry.kind in ("gen", "grpo"):  # every decode phase past the first compiles one more decode step
    prompt = lv.get("prompt", 512 if entry.kind == "gen" else 256)
    extra_phases = len(cache_windows(prompt, lv.get("new", 512), lv.get("bucket", 0))) - 1  # GPU default: 0
  if entry.kind in ("gen", "grpo") and lv.get("tpi", 1) > 1:  # a block loop and a tail loop per phase
    extra_phases = 2 * extra_phases + 1
  if entry.kind == "gen":
    est += 0.05 * lv.get("b", 1) + 8 * extra_phases + (15 if lv.get("profile") else 0)
  if entry.kind == "ens" and lv.get("loop", "both") == "both":  # the single step + two ensemble programs
    est *= 1.5
  if entry.kind == "grpo":  # ~90 s of compilation, the rest scales with rows x tokens
    rows = lv.get("prompts", 64) * lv.get("gens", 8)
    est = (90 + 60 * rows * (lv.get("prompt", 256) + lv.get("new", 512)) / (512 * 768) * lv.get("steps", 1)
           + 8 * extra_phases)
  if entry.kind in ("rm", "dpo") and lv.get("b", s.batch) > s.batch:
    est *= 1.0 + 0.1 * lv["b"] / s.batch
  return est


# ------------------------------------------------------------------------------------------------ FLOPs, bytes
def matmul_params(c: ModelConfig, with_unembed: bool) -> int:
  """Parameters that take part in matmuls per token (embedding lookup excluded)."""
  attn = c.embed_dim * c.head_dim * (2 * c.num_heads + 2 * c.num_kv_heads)
  mlp = c.embed_dim * c.mlp_dim * (3 if c.gated_mlp else 2)
  return c.num_layers * (attn + mlp) + (c.embed_dim * c.vocab_size if with_unembed else 0)


def attention_flops_per_token(c: ModelConfig, keys: float) -> float:
  """Forward FLOPs of one token's attention over `keys` keys: QK^T and PV, 2 matmuls x 2 flops x keys x query heads
  x head_dim per layer (a causal row of T tokens: keys = T / 2 on average, MaxText's halving)."""
  return 4 * keys * c.num_heads * c.head_dim * c.num_layers


def train_flops_per_token(c: ModelConfig, seq: int, with_unembed: bool) -> float:
  """MaxText-style training FLOPs per token: 6N + causal attention (QK^T and PV, halved for causality)."""
  return 6 * matmul_params(c, with_unembed) + 3 * attention_flops_per_token(c, seq / 2)


def forward_flops_per_token(c: ModelConfig, seq: int, with_unembed: bool) -> float:
  """A forward pass: a third of `train_flops_per_token`."""
  return train_flops_per_token(c, seq, with_unembed) / 3


def row_flops(c: ModelConfig, seq: int, head_positions: int, train: bool = False) -> float:
  """Model FLOPs of one row of `seq` tokens through the backbone (2 x matmul parameters per token, causal
  attention) with the LM head (2 x D x V) at `head_positions` of them; x3 when trained (forward + backward).
  A response scored after a prompt (GRPO's reference, old-policy and update log-probs) needs the LM head only at
  the N positions that predict response tokens, not at all P + N."""
  forward = seq * (2 * matmul_params(c, False) + attention_flops_per_token(c, seq / 2))
  forward += head_positions * 2 * c.embed_dim * c.vocab_size
  return 3 * forward if train else forward


def rollout_flops(c: ModelConfig, prompts: int, samples: int, prompt: int, new: int) -> float:
  """Model FLOPs of `sampling.generate` with num_samples: each prompt's prefill once (P tokens, causal attention,
  the LM head at its last position; the cache is then copied for the samples), then R = prompts x samples rows
  decode N - 1 fed-back tokens (the last sampled token is never fed back), each through every weight and the LM
  head, attending to the P + t slots filled at step t (P + N / 2 on average; reading unfilled slots of a static
  cache is not model work)."""
  decode = (new - 1) * (2 * matmul_params(c, True) + attention_flops_per_token(c, prompt + new / 2))
  return prompts * row_flops(c, prompt, 1) + prompts * samples * decode


def shared_row_flops(c: ModelConfig, prompt: int, response: int, with_unembed: bool, train: bool = False) -> float:
  """Model FLOPs of one shared-prompt row [prompt | chosen | rejected] (`models.shared_prompt`): P + 2R tokens
  through the matmuls (and the LM head at every position with_unembed), each token attending to the keys its mask
  allows: the prompt causally (P^2 / 2), each response the prompt and itself (R P + R^2 / 2), not the other
  response (which a causal count over the whole row, (P + 2R)^2 / 2, would include); x3 when trained."""
  keys = prompt * prompt / 2 + 2 * (response * prompt + response * response / 2)
  forward = (prompt + 2 * response) * 2 * matmul_params(c, with_unembed) + attention_flops_per_token(c, 1) * keys
  return 3 * forward if train else forward


def lora_params(c: ModelConfig, rank: int, targets: tuple[str, ...]) -> int:
  """Adapter parameters of LoRA rank `rank` on `targets` (models.lora.TARGETS) of every layer: r x (in + out)."""
  q, kv = c.num_heads * c.head_dim, c.num_kv_heads * c.head_dim
  sizes = dict(q=(c.embed_dim, q), k=(c.embed_dim, kv), v=(c.embed_dim, kv), o=(q, c.embed_dim),
               gate=(c.embed_dim, c.mlp_dim), up=(c.embed_dim, c.mlp_dim), down=(c.mlp_dim, c.embed_dim))
  return c.num_layers * sum(rank * sum(sizes[t]) for t in targets)


def tree_bytes(tree: Any) -> int:
  return sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(tree))


def tree_size(tree: Any) -> int:
  return sum(x.size for x in jax.tree.leaves(tree))


# ------------------------------------------------------------------------------------------------ plumbing
def base_fields(kind: str, s: Settings) -> dict:
  if kind in ("rm8b", "dpo8b"):
    return dict(SMOKE_UNTIED if s.smoke else LLAMA_8B)
  if kind == "ens":
    return dict(SMOKE_TIED if s.smoke else MID_285M)
  return dict(SMOKE_TIED if s.smoke else LLAMA_1B)


def model_config(entry: Entry, s: Settings, *, pdtype: str = "fp32", remat: str = "none") -> ModelConfig:
  """The case's ModelConfig: bf16 compute, the given defaults, the entry's levers on top."""
  lv = entry.levers
  fields = base_fields(entry.kind, s)
  attention = lv.get("attn", s.attention)
  if jax.default_backend() != "gpu":
    attention = "xla"  # cuDNN attention exists only on NVIDIA GPUs
  fields.update(dtype="bfloat16", param_dtype=DTYPES[lv.get("pdtype", pdtype)], remat=lv.get("remat", remat),
                attention=attention,
                scan_layers=False if lv.get("unroll") else True if lv.get("scan") else None)
  if "layers" in lv:
    fields["num_layers"] = lv["layers"]
  return ModelConfig(**fields)


def config_summary(c: ModelConfig) -> dict:
  return dict(dtype=c.dtype, param_dtype=c.param_dtype, remat=c.remat, attention=c.attention,
              scan_layers=c.uses_scan(), layers=c.num_layers, embed_dim=c.embed_dim, vocab=c.vocab_size)


def init_split(make: Callable[[], nnx.Module]) -> tuple[Any, Any, Any]:
  """(graphdef, params, rest) of `make()`, initialized under jit (never op by op, never twice in memory)."""
  graphdef, _, _ = nnx.split(nnx.eval_shape(make), nnx.Param, ...)
  params, rest = jax.jit(lambda: tuple(nnx.split(make(), nnx.Param, ...)[1:]))()
  return graphdef, params, rest


def make_optimizer(mu: str | None = None) -> optax.GradientTransformation:
  """Clip at global norm 1 + AdamW (lr 1e-5, no weight decay); `mu` "bf16" keeps the first moment in bf16."""
  mu_dtype = None if mu is None else jnp.dtype(DTYPES[mu])
  return optax.chain(optax.clip_by_global_norm(1.0), optax.adamw(1e-5, weight_decay=0.0, mu_dtype=mu_dtype))


def step_body(graphdef: Any, loss_fn: Callable, optimizer: optax.GradientTransformation) -> Callable:
  """step(params, rest, opt_state, batch) -> (params, opt_state, loss, aux, grad_norm): one AdamW update."""

  def step(params, rest, opt_state, batch):
    def objective(p):
      return loss_fn(nnx.merge(graphdef, p, rest), batch)

    (loss, aux), grads = jax.value_and_grad(objective, has_aux=True)(params)
    updates, opt_state = optimizer.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, loss, aux, optax.global_norm(grads)

  return step


def aot(fn: Callable, *args, donate: tuple[int, ...] = ()) -> tuple[Any, float, float | None]:
  """(compiled, compile seconds, program GiB = arguments + outputs + temporaries - donated aliases)."""
  t0 = time.perf_counter()
  compiled = jax.jit(fn, donate_argnums=donate).lower(*args).compile()
  compile_s = time.perf_counter() - t0
  try:
    m = compiled.memory_analysis()
    program = (m.argument_size_in_bytes + m.output_size_in_bytes + m.temp_size_in_bytes
               - m.alias_size_in_bytes) / 2**30
  except Exception:  # pylint: disable=broad-except  (not every backend reports it)
    program = None
  return compiled, compile_s, program


def timed(call: Callable[[], Any], steps: int, warmup: int, deadline: float) -> list[float]:
  """Runs `call` (which blocks until its outputs are ready) warmup + steps times; the timed durations in seconds.
  Stops early past the deadline once one step is timed."""
  for _ in range(warmup):
    call()
  times = []
  for _ in range(steps):
    if times and time.time() > deadline:
      break
    t0 = time.perf_counter()
    call()
    times.append(time.perf_counter() - t0)
  return times


def peak_gib() -> float | None:
  """The process's peak device memory so far (jax memory_stats peak_bytes_in_use); None where not reported."""
  stats = jax.devices()[0].memory_stats()
  return None if not stats else round(stats.get("peak_bytes_in_use", 0) / 2**30, 2)


# Dense (not 2:4-sparse) bf16 tensor-core peak in TFLOP/s and HBM bandwidth in TB/s from NVIDIA's datasheets, by a
# word of jax's `device_kind` ("NVIDIA H100 80GB HBM3" is the SXM part; "GH200" is not an H200), most specific first.
GPU_PEAKS = ((r"\bH100 PCIe\b", 756.0, 2.0), (r"\bH100 NVL\b", 835.0, 3.9), (r"\bH100\b", 989.0, 3.35),
             (r"\bH200 NVL\b", 835.0, 4.8), (r"\bH200\b", 989.0, 4.8))
NOT_A_GPU_PEAKS = (989.0, 4.8)  # smoke runs on a CPU: placeholders (an H200's) so every formula runs


def datasheet_peaks(device_kind: str) -> tuple[float, float] | None:
  """(dense bf16 TFLOP/s, HBM TB/s) of a known NVIDIA GPU `device_kind`, else None."""
  for pattern, tflops, tbps in GPU_PEAKS:
    if re.search(pattern, device_kind):
      return tflops, tbps
  return None


def resolve_peaks(s: Settings) -> Settings:
  """`s` with peak_tflops / hbm_bytes_per_s filled in from the device's datasheet where the CLI left them None. A
  GPU without datasheet figures needs both flags (ValueError); off GPUs the H200's figures stand in (smoke runs)."""
  if s.peak_tflops is not None and s.hbm_bytes_per_s is not None:
    return s
  kind = jax.devices()[0].device_kind
  peaks = datasheet_peaks(kind)
  if peaks is None:
    if jax.default_backend() == "gpu":
      raise ValueError(f"--peak_tflops / --hbm_tbps: no datasheet figures for device {kind!r} "
                       f"(known: {[p for p, _, _ in GPU_PEAKS]}); pass both flags")
    peaks = NOT_A_GPU_PEAKS
  return dataclasses.replace(s, peak_tflops=s.peak_tflops if s.peak_tflops is not None else peaks[0],
                             hbm_bytes_per_s=s.hbm_bytes_per_s if s.hbm_bytes_per_s is not None else peaks[1] * 1e12)


def device_info(s: Settings | None = None) -> dict:
  """The device, and with `s` the MFU and HBM-utilization denominators its cases use (`resolve_peaks`)."""
  d = jax.devices()[0]
  stats = d.memory_stats() or {}
  out = dict(backend=jax.default_backend(), device_kind=d.device_kind, num_devices=jax.device_count(),
             memory_limit_gib=round(stats.get("bytes_limit", 0) / 2**30, 1), jax=jax.__version__)
  if s is not None:
    r = resolve_peaks(s)
    out.update(peak_tflops=r.peak_tflops, hbm_tbps=r.hbm_bytes_per_s / 1e12,
               peaks_from="flags" if (s.peak_tflops, s.hbm_bytes_per_s) == (r.peak_tflops, r.hbm_bytes_per_s)
               else "datasheet" if datasheet_peaks(d.device_kind) else "placeholder: not a known GPU")
  return out


def _r(x: float | None, n: int = 4) -> float | None:
  return None if x is None else round(float(x), n)


def _floats(x: Any, n: int = 6) -> list[float]:
  return [round(float(v), n) for v in np.asarray(x, np.float64).reshape(-1)]


def pairs_batch(vocab: int, pairs: int, seq: int, seed: int = 0) -> dict:
  """Random unpadded chosen/rejected rows (pairs, seq) and reference log-probs for DPO."""
  rng = np.random.default_rng(seed)
  ids = lambda: jnp.asarray(rng.integers(0, vocab, (pairs, seq)), jnp.int32)  # noqa: E731
  return dict(chosen_ids=ids(), rejected_ids=ids(),
              ref_chosen_logps=jnp.asarray(rng.normal(-2.0 * seq, 10.0, pairs), jnp.float32),
              ref_rejected_logps=jnp.asarray(rng.normal(-2.0 * seq, 10.0, pairs), jnp.float32))


def _next_token(ids):
  """Targets and mask of unpadded rows: every token predicts the next; the last position predicts nothing."""
  targets = jnp.concatenate([ids[:, 1:], ids[:, :1]], axis=1)
  return targets, jnp.ones(ids.shape, jnp.float32).at[:, -1].set(0.0)


def default_chunk(mode: str) -> int:
  """Tokens per LM-head chunk when the entry sets no `chunk`: the stages' for the fused gathers
  (`losses.logps.lm_head_logps` with logps_chunk_size 0 stores the softmax gradient in chunks of DEFAULT_CHUNK_SIZE,
  as `fused` does here), 4096 for the chunked one (this script's setting since its first GPU run)."""
  return DEFAULT_CHUNK_SIZE if mode.startswith("fused") else 4096


def sequence_logps_of(mode: str, hidden, head, targets, mask, chunk: int, temperature: float = 1.0):
  """(token_logps, logps) by one of LOGPS_MODES (all in jaxrlhf.losses.logps)."""
  if mode == "full":
    logits = jnp.einsum("btd,dv->btv", hidden, head, preferred_element_type=jnp.float32)
    return sequence_logps(logits, targets, mask, temperature=temperature)
  if mode == "chunked":
    return chunked_sequence_logps(hidden, head, targets, mask, chunk_size=chunk, temperature=temperature)
  return fused_sequence_logps(hidden, head, targets, mask, chunk_size=chunk, temperature=temperature,
                              save_softmax_grad=mode == "fused")


# ------------------------------------------------------------------------------------------------ losses
def rm_loss(model, batch):
  ids = jnp.concatenate([batch["chosen_ids"], batch["rejected_ids"]])
  rewards = model(ids)  # unpadded full-length rows: the fused causal kernel needs no mask
  b = batch["chosen_ids"].shape[0]
  losses, _ = bradley_terry_loss(rewards[:b], rewards[b:])
  return losses.mean(), rewards


def dpo_step_loss(mode: str, chunk: int) -> Callable:
  def loss(model, batch):
    ids = jnp.concatenate([batch["chosen_ids"], batch["rejected_ids"]])
    hidden = model.hidden_states(ids)
    targets, mask = _next_token(ids)
    _, logps = sequence_logps_of(mode, hidden, model.output_embedding(), targets, mask, chunk)
    b = batch["chosen_ids"].shape[0]
    losses, _ = dpo_loss(logps[:b], logps[b:], batch["ref_chosen_logps"], batch["ref_rejected_logps"], beta=0.1)
    return losses.mean(), logps

  return loss


def _lengths(batch):
  return batch["prompt_length"], batch["chosen_length"], batch["rejected_length"]


def rm_shared_loss(model, batch):
  r_c, r_r = model.score_shared_prompt(batch["pair_input_ids"], *_lengths(batch))
  losses, _ = bradley_terry_loss(r_c, r_r)
  return losses.mean(), jnp.concatenate([r_c, r_r])


def dpo_shared_loss(chunk: int, mode: str = "fused") -> Callable:
  if mode not in ("chunked", "fused"):
    raise ValueError(f"dpo_shared: logps={mode!r}; shared-prompt rows take 'fused' or 'chunked'")

  def loss(model, batch):
    ids = batch["pair_input_ids"]
    layout = shared_prompt_layout(*_lengths(batch), ids.shape[1])
    token_logps, _ = shared_prompt_token_logps(model, ids, layout, chunk_size=chunk, fused=mode == "fused")
    logps = jnp.sum(token_logps, axis=-1)
    b = logps.shape[0] // 2
    losses, _ = dpo_loss(logps[:b], logps[b:], batch["ref_chosen_logps"], batch["ref_rejected_logps"], beta=0.1)
    return losses.mean(), logps

  return loss


def shared_batch(batch: dict, seq: int) -> dict:
  """The same pairs as [prompt | chosen | rejected] rows: prompt = the first seq // 2 tokens of chosen."""
  p = seq // 2
  ids = jnp.concatenate([batch["chosen_ids"], batch["rejected_ids"][:, p:]], axis=1)
  b = ids.shape[0]
  full = lambda n: jnp.full((b,), n, jnp.int32)  # noqa: E731
  return dict(pair_input_ids=ids, prompt_length=full(p), chosen_length=full(seq - p), rejected_length=full(seq - p),
              ref_chosen_logps=batch["ref_chosen_logps"], ref_rejected_logps=batch["ref_rejected_logps"])


# ------------------------------------------------------------------------------------------------ 1 and 2: train steps
def run_train(entry: Entry, s: Settings) -> dict:
  """RM / DPO train step (1.24B, or the 8B shape for rm8b / dpo8b): step time, MFU, memory, loss at init."""
  s = resolve_peaks(s)
  kind, lv = entry.kind, entry.levers
  big = kind in ISOLATED_KINDS
  c = model_config(entry, s, pdtype="bf16" if big else "fp32", remat="full" if big else "none")
  pairs = lv.get("b", (1 if s.smoke else 4) if big else s.batch)
  seq = lv.get("seq", s.seq)
  mu = lv.get("mu", "bf16" if big else None)
  batch = pairs_batch(c.vocab_size, pairs, seq)
  is_rm = kind.startswith("rm")
  # The stages' LM-head log-probs on a GPU (`scoring.resolve_logps_path`, not imported: see the module docstring).
  mode = lv.get("logps", "fused")
  chunk = lv.get("chunk", default_chunk(mode))
  if kind in ("rm_shared", "dpo_shared"):
    batch = shared_batch(batch, seq)
  if is_rm:
    make = lambda: RewardModel(c, HeadConfig("linear"), rngs=nnx.Rngs(0))  # noqa: E731
    loss_fn = rm_shared_loss if kind == "rm_shared" else rm_loss
  else:
    make = lambda: CausalLM(c, rngs=nnx.Rngs(0))  # noqa: E731
    loss_fn = dpo_shared_loss(chunk, mode) if kind == "dpo_shared" else dpo_step_loss(mode, chunk)
  graphdef, params, rest = init_split(make)
  optimizer = make_optimizer(mu)
  opt_state = jax.jit(optimizer.init)(params)
  n_params = tree_size(params)
  compiled, compile_s, program = aot(step_body(graphdef, loss_fn, optimizer), params, rest, opt_state, batch,
                                     donate=(0, 2))
  state = [params, opt_state]
  del params, opt_state

  def call():
    out = compiled(state[0], rest, state[1], batch)
    jax.block_until_ready(out)
    state[0], state[1] = out[0], out[1]
    return out

  first = call()  # the loss and aux at the initial parameters
  loss0, aux0, grad_norm0 = float(first[2]), first[3], float(first[4])
  del first
  times = timed(call, s.steps, s.warmup, s.deadline)
  final = call()
  step_s = float(np.median(times))
  if "pair_input_ids" in batch:  # one row of 1.5 x seq tokens per pair
    row_len = batch["pair_input_ids"].shape[1]
    tokens = pairs * row_len
    flops = pairs * shared_row_flops(c, seq // 2, seq - seq // 2, with_unembed=not is_rm, train=True)
  else:
    row_len, tokens = seq, 2 * pairs * seq
    flops = train_flops_per_token(c, row_len, with_unembed=not is_rm) * tokens
  return dict(case="train", kind=kind, model=f"{n_params / 1e9:.2f}B", params=int(n_params), pairs=pairs, seq=seq,
              tokens=tokens, config=config_summary(c), mu_dtype=mu or "param dtype",
              logps=None if is_rm else mode, chunk=None if is_rm else chunk,
              compile_s=_r(compile_s, 1), step_s=_r(step_s), step_times=[_r(t) for t in times],
              tokens_per_s=round(tokens / step_s), pairs_per_s=_r(pairs / step_s, 2),
              tflops=_r(flops / step_s / 1e12, 1), mfu=_r(flops / step_s / 1e12 / s.peak_tflops),
              peak_gib=peak_gib(), program_gib=_r(program, 2), loss0=loss0, aux0=_floats(aux0), grad_norm0=grad_norm0,
              final_loss=float(final[2]))


def run_dpo_check(entry: Entry, s: Settings) -> dict:
  """DPO loss, sequence log-probs and gradients (w.r.t. hidden states and LM head) at the initial parameters by
  the unfused path (the (B, T, V) fp32 logits + log-softmax), the chunked gather and the fused one; and the time
  of each LM-head forward + backward alone."""
  lv = entry.levers
  c = model_config(entry, s)
  pairs, seq, chunk = lv.get("b", s.batch), lv.get("seq", s.seq), lv.get("chunk", 4096)
  batch = pairs_batch(c.vocab_size, pairs, seq)
  graphdef, params, rest = init_split(lambda: CausalLM(c, rngs=nnx.Rngs(0)))
  ids = jnp.concatenate([batch["chosen_ids"], batch["rejected_ids"]])
  targets, mask = _next_token(ids)

  @jax.jit
  def backbone(params, rest, ids):
    model = nnx.merge(graphdef, params, rest)
    return model.hidden_states(ids), model.output_embedding()

  hidden, head = backbone(params, rest, ids)
  del params
  out: dict[str, Any] = dict(case="dpo_check", kind="dpo_check", pairs=pairs, seq=seq, chunk=chunk,
                             config=config_summary(c))
  results, lmhead_ms = {}, {}
  for mode in LOGPS_MODES:  # "full" first: the reference for the others
    def loss_and_grads(h, w, mode=mode):
      def f(h, w):
        _, logps = sequence_logps_of(mode, h, w, targets, mask, chunk)
        losses, _ = dpo_loss(logps[:pairs], logps[pairs:], batch["ref_chosen_logps"], batch["ref_rejected_logps"],
                             beta=0.1)
        return losses.mean(), logps
      return jax.value_and_grad(f, (0, 1), has_aux=True)(h, w)

    try:
      fn = jax.jit(loss_and_grads)
      results[mode] = jax.block_until_ready(fn(hidden, head))
      lmhead_ms[mode] = _r(1e3 * float(np.median(timed(lambda fn=fn: jax.block_until_ready(fn(hidden, head)),
                                                        3, 0, s.deadline))), 2)
    except Exception as e:  # pylint: disable=broad-except  (e.g. the full logits do not fit)
      out[f"{mode}_error"] = f"{type(e).__name__}: {str(e)[:300]}"
  out["lmhead_fwd_bwd_ms"] = lmhead_ms

  @jax.jit
  def rel(a, b):
    a, b = a.astype(jnp.float32), b.astype(jnp.float32)
    return jnp.linalg.norm((a - b).reshape(-1)) / jnp.maximum(jnp.linalg.norm(b.reshape(-1)), 1e-30)

  ref_mode = "full" if "full" in results else "chunked"
  out["reference"] = ref_mode
  for mode, ((loss, logps), (gh, gw)) in results.items():
    out[f"loss_{mode}"] = float(loss)
    if mode == ref_mode or ref_mode not in results:
      continue
    (ref_loss, ref_logps), (ref_gh, ref_gw) = results[ref_mode]
    out[f"{mode}_vs_{ref_mode}"] = dict(
        loss_rel=_r(abs(float(loss) - float(ref_loss)) / max(abs(float(ref_loss)), 1e-30), 9),
        logps_max_abs=_r(float(jnp.max(jnp.abs(logps - ref_logps))), 6),
        logps_rel=_r(float(rel(logps, ref_logps)), 9),
        grad_hidden_rel=_r(float(rel(gh, ref_gh)), 6), grad_head_rel=_r(float(rel(gw, ref_gw)), 6))
  return out


# ------------------------------------------------------------------------------------------------ 3: rollouts
def mean_cache_slots(prompt: int, new: int, bucket: int) -> float:
  """Slots of the KV cache one decode step attends over, averaged over the N - 1 fed-back steps: step t (1-based)
  reads the whole cache of its phase, the first of `generate`'s `cache_windows` with P + t <= window."""
  windows = cache_windows(prompt, new, bucket)
  if new <= 1:
    return float(windows[-1])
  return float(np.mean([next(w for w in windows if prompt + t <= w) for t in range(1, new)]))


def decode_bytes(c: ModelConfig, params: Any, batch: int, prompt: int, new: int, bucket: int) -> dict:
  """Bytes one decode step must read: every weight once (the tied embedding is the LM head; an untied one is only
  looked up, B rows) and the KV cache: the slots the attention reads in each decode phase (with bucket 0 all
  P + N - 1 of the static cache), averaged over the decode, and the filled slots on average (P + N / 2)."""
  weights = tree_bytes(params)
  if not c.tie_word_embeddings:
    weights -= tree_bytes(params["embed"])
  kv_per_slot = 2 * c.num_layers * batch * c.num_kv_heads * c.head_dim * jnp.dtype(c.dtype).itemsize
  return dict(weight_bytes=int(weights), kv_bytes_static=int(kv_per_slot * mean_cache_slots(prompt, new, bucket)),
              kv_bytes_filled=int(kv_per_slot * (prompt + new / 2)))


def run_gen(entry: Entry, s: Settings) -> dict:
  """`sampling.generate` throughput: prefill (max_new_tokens=1) and decode ((total - prefill) / (N - 1) per
  token) timed apart; greedy (or `sample`: temperature 1), eos_ids=() so no row stops early."""
  s = resolve_peaks(s)
  lv = entry.levers
  c = model_config(entry, s, pdtype="bf16")
  b = lv.get("b", 1)
  prompt, new = lv.get("prompt", 16 if s.smoke else 512), lv.get("new", 8 if s.smoke else 512)
  if new < 2:  # with one new token there is no decode step to time (the prefill emits it)
    raise ValueError(f"gen: new={new}; expected >= 2 (decode is timed as (total - prefill) / (new - 1))")
  graphdef, params, rest = init_split(lambda: CausalLM(c, rngs=nnx.Rngs(0)))
  model = nnx.merge(graphdef, params, rest)
  ids = np.random.default_rng(1).integers(2, c.vocab_size, (b, prompt)).astype(np.int32)
  mask = np.ones_like(ids)
  sample = bool(lv.get("sample"))
  bucket = lv.get("bucket", default_cache_bucket())  # `generate`'s backend rule unless the lever sets it
  tpi = lv.get("tpi", 1)  # decode steps per loop iteration (`generate(tokens_per_iteration=)`)

  def run(n):
    return jax.block_until_ready(generate(model, ids, mask, max_new_tokens=n, rng=jax.random.key(0), greedy=not sample,
                                          temperature=1.0, eos_ids=(), pad_id=0, cache_bucket=bucket,
                                          tokens_per_iteration=tpi))

  t0 = time.perf_counter()
  run(1)
  prefill_first_s = time.perf_counter() - t0
  prefill_s = float(np.median(timed(lambda: run(1), 3, 0, s.deadline)))
  t0 = time.perf_counter()
  first = run(new)
  total_first_s = time.perf_counter() - t0
  full_length = bool(np.all(np.asarray(first.lengths) == new))
  del first
  total_s = float(np.median(timed(lambda: run(new), 2, 0, s.deadline)))
  step_s = (total_s - prefill_s) / max(new - 1, 1)
  nbytes = decode_bytes(c, nnx.to_pure_dict(params), b, prompt, new, bucket)
  static_bps = (nbytes["weight_bytes"] + nbytes["kv_bytes_static"]) / step_s
  filled_bps = (nbytes["weight_bytes"] + nbytes["kv_bytes_filled"]) / step_s
  prefill_flops = b * prompt * forward_flops_per_token(c, prompt, False) + 2 * b * c.embed_dim * c.vocab_size
  return dict(case="gen", kind="gen", batch=b, prompt=prompt, new=new, sampling="temperature 1" if sample else "greedy",
              cache_bucket=bucket, cache_windows=list(cache_windows(prompt, new, bucket)), tokens_per_iteration=tpi,
              config=config_summary(c), params=int(tree_size(params)), all_rows_full_length=full_length,
              compile_prefill_s=_r(prefill_first_s - prefill_s, 1), compile_total_s=_r(total_first_s - total_s, 1),
              prefill_s=_r(prefill_s, 5), total_s=_r(total_s, 4), decode_step_ms=_r(1e3 * step_s, 4),
              prefill_tokens_per_s=round(b * prompt / prefill_s),
              prefill_tflops=_r(prefill_flops / prefill_s / 1e12, 1),
              prefill_mfu=_r(prefill_flops / prefill_s / 1e12 / s.peak_tflops),
              decode_tokens_per_s=round(b / step_s), total_tokens_per_s=round(b * new / total_s), **nbytes,
              hbm_gb_per_s=_r(static_bps / 1e9, 1), hbm_util=_r(static_bps / s.hbm_bytes_per_s),
              hbm_gb_per_s_filled=_r(filled_bps / 1e9, 1), hbm_util_filled=_r(filled_bps / s.hbm_bytes_per_s),
              peak_gib=peak_gib(), **(dict(profile=profile_decode(entry, s, run, new)) if lv.get("profile") else {}))


def profile_decode(entry: Entry, s: Settings, run: Callable[[int], Any], new: int) -> dict:
  """The `profile` lever: a prefill-only and a full generation (both compiled already) traced with jax.profiler;
  their difference per decode step (`trace_summary.per_step`): ops (kernels on a GPU) per step, the device's busy
  and idle microseconds, the gaps between ops, and the costliest ops of the full generation. A failed trace (no
  CUPTI, say) is reported in the row instead of failing the case's timings."""
  keep = bool(s.trace_dir)
  root = os.path.join(s.trace_dir, entry.text.replace(":", "_").replace("=", "-")) if keep else tempfile.mkdtemp()
  try:
    short = trace_summary.summarize(trace_summary.trace_call(lambda: run(1), os.path.join(root, "prefill")))
    full = trace_summary.summarize(trace_summary.trace_call(lambda: run(new), os.path.join(root, "full")))
    row = trace_summary.per_step(short, full, max(new - 1, 1))
    row.update(prefill_ops=short["ops"], full_ops=full["ops"], full_idle_fraction=_r(full["idle_fraction"]),
               full_span_s=_r(full["span_ns"] / 1e9, 4), trace_dir=root if keep else None,
               xla_flags=os.environ.get("XLA_FLAGS", ""))
    return row
  except Exception as e:  # pylint: disable=broad-except
    return dict(error=f"{type(e).__name__}: {str(e)[:300]}")
  finally:
    if not keep:
      shutil.rmtree(root, ignore_errors=True)


# ------------------------------------------------------------------------------------------------ 5: ensemble
def run_ens(entry: Entry, s: Settings) -> dict:
  """K reward models trained as one step (every parameter, optimizer state and batch with a leading member axis, as
  `stages.reward.make_ensemble_step`) vs one member's step: ratio = ensemble / (K x single), for each member loop
  the `loop` lever names ("both", the default: "vmap", one batched program, and "scan", the members one after
  another updating the stacked state in place). Should the cuDNN attention kernel refuse the member axis, every
  step is re-measured with XLA attention."""
  c = model_config(entry, s)
  try:
    return _run_ens(entry, s, c)
  except NotImplementedError as e:
    if c.attention != "cudnn":
      raise
    row = _run_ens(entry, s, c.replace(attention="xla"))
    row["attention_fallback"] = f"cudnn under vmap: {type(e).__name__}: {str(e)[:200]}"
    return row


def scan_members(body: Callable, k: int) -> Callable:
  """`body` (one member's step) run for members 0..k-1 in a `lax.scan` that writes each member's new parameters
  and optimizer state back into the stacked ones (the "scan" member loop of `stages.reward.make_ensemble_step`)."""

  def step(params, rest, opt_state, batch):
    def one(carry, m):
      p, o = carry
      take = lambda tree: jax.tree.map(lambda x: x[m], tree)  # noqa: E731
      new_p, new_o, *outs = body(take(p), take(rest), take(o), take(batch))
      put = lambda tree, new: jax.tree.map(lambda x, y: x.at[m].set(y), tree, new)  # noqa: E731
      return (put(p, new_p), put(o, new_o)), tuple(outs)

    (params, opt_state), outs = jax.lax.scan(one, (params, opt_state), jnp.arange(k))
    return (params, opt_state, *outs)

  return step


def _run_ens(entry: Entry, s: Settings, c: ModelConfig) -> dict:
  s = resolve_peaks(s)
  lv = entry.levers
  k, pairs = lv.get("k", 5), lv.get("b", 2 if s.smoke else 4)
  seq = lv.get("seq", 32 if s.smoke else 1024)
  loops = ("vmap", "scan") if lv.get("loop", "both") == "both" else (lv["loop"],)
  optimizer = make_optimizer()
  make = lambda key: RewardModel(c, HeadConfig("linear"), rngs=nnx.Rngs(key))  # noqa: E731
  graphdef, _, _ = nnx.split(nnx.eval_shape(lambda: make(0)), nnx.Param, ...)

  def init_member(key):
    _, params, rest = nnx.split(make(key), nnx.Param, ...)
    return params, rest, optimizer.init(params)

  keys = jax.random.split(jax.random.key(0), k)
  init_stacked = jax.jit(jax.vmap(init_member))
  batches = [pairs_batch(c.vocab_size, pairs, seq, seed=m) for m in range(k)]
  batch_k = jax.tree.map(lambda *xs: jnp.stack(xs), *batches)
  body = step_body(graphdef, rm_loss, optimizer)

  def measure(step, state, batch):
    compiled, compile_s, program = aot(step, state[0], state[1], state[2], batch, donate=(0, 2))
    box = list(state)

    def call():
      out = compiled(box[0], box[1], box[2], batch)
      jax.block_until_ready(out)
      box[0], box[2] = out[0], out[1]
      return out

    loss0 = np.asarray(call()[2])
    times = timed(call, s.steps, s.warmup, s.deadline)
    return dict(s=float(np.median(times)), times=times, compile_s=compile_s, program=program, loss0=loss0)

  stacked = init_stacked(keys)  # (params, rest, opt_state), each with a leading K axis
  n_params = tree_size(stacked[0]) // k
  single = measure(body, jax.tree.map(lambda x: x[0], stacked), batches[0])  # member 0 alone (a copy)
  gc.collect()
  tokens = 2 * pairs * seq
  flops = train_flops_per_token(c, seq, with_unembed=False) * tokens
  results = {}
  for loop in loops:
    stacked = stacked if stacked is not None else init_stacked(keys)  # the donated state is gone after a loop
    ens = measure(jax.vmap(body) if loop == "vmap" else scan_members(body, k), stacked, batch_k)
    stacked = None
    gc.collect()
    results[loop] = dict(ensemble_s=_r(ens["s"]), ensemble_times=[_r(t) for t in ens["times"]],
                         ratio=_r(ens["s"] / (k * single["s"])),
                         ensemble_mfu=_r(k * flops / ens["s"] / 1e12 / s.peak_tflops),
                         compile_s=_r(ens["compile_s"], 1), program_gib=_r(ens["program"], 2),
                         member0_loss0=float(ens["loss0"][0]))
  best = min(results, key=lambda loop: results[loop]["ensemble_s"])
  return dict(case="ens", kind="ens", members=k, params_per_member=int(n_params), pairs=pairs, seq=seq,
              config=config_summary(c), single_s=_r(single["s"]), single_times=[_r(t) for t in single["times"]],
              single_mfu=_r(flops / single["s"] / 1e12 / s.peak_tflops), single_compile_s=_r(single["compile_s"], 1),
              single_program_gib=_r(single["program"], 2), single_loss0=float(single["loss0"]), loops=results,
              fastest_loop=best, ratio=results[best]["ratio"], peak_gib=peak_gib())


# ------------------------------------------------------------------------------------------------ 4: GRPO
def run_grpo(entry: Entry, s: Settings) -> dict:
  """One GRPO iteration on the 1.24B shape as four separately jitted parts, each timed: rollout (`generate`, G
  samples per prompt, temperature 1, eos_ids=()), reference log-probs (a teacher-forced forward, chunked gather;
  lever old=rollout adds the old policy's, which by default are the update's own, detached, as the "rl" stage does
  with one update per rollout: `rl.detached_old_logps`), reward model scores (+ group advantages), and one update
  (clipped surrogate + 0.04 x k3 KL, token mean, gradients accumulated over micro-batches of `micro` rows). The
  reference and the reward model are frozen copies in the policy's parameter dtype, as the "rl" stage holds them.
  The rollout decodes in phases of `bucket` cache slots (`generate(cache_bucket=)`; default the library's rule),
  `tpi` tokens per decode-loop iteration (`generate(tokens_per_iteration=)`, default 1)."""
  s = resolve_peaks(s)
  lv = entry.levers
  c = model_config(entry, s)
  n_prompts, g = lv.get("prompts", 2 if s.smoke else 64), lv.get("gens", 2 if s.smoke else 8)
  p_len, n_new = lv.get("prompt", 8 if s.smoke else 256), lv.get("new", 8 if s.smoke else 512)
  micro = lv.get("micro", 2 if s.smoke else 32)
  # The rl stage's update log-probs on a GPU: fused (`loss.logps_path="auto"`, `scoring.resolve_logps_path`).
  mode = lv.get("logps", "fused")
  chunk = lv.get("chunk", default_chunk(mode))
  old_from_rollout = lv.get("old", "detached") == "rollout"
  bucket = lv.get("bucket", default_cache_bucket())  # the rl stage's `sampling.cache_bucket` (backend rule)
  rows, t_len = n_prompts * g, p_len + n_new
  if rows % micro or rows % (2 * micro):
    raise ValueError(f"grpo: prompts x gens = {rows} rows must divide by 2 x micro = {2 * micro}")
  temperature, beta = 1.0, 0.04
  graphdef, params, rest = init_split(lambda: CausalLM(c, rngs=nnx.Rngs(0)))
  ref_params = jax.tree.map(jnp.copy, params)
  rm_graphdef, rm_params, rm_rest = init_split(lambda: RewardModel(c, HeadConfig("linear"), rngs=nnx.Rngs(1)))
  optimizer = make_optimizer()
  opt_state = jax.jit(optimizer.init)(params)
  prompt_ids = np.random.default_rng(2).integers(2, c.vocab_size, (n_prompts, p_len)).astype(np.int32)
  prompt_mask = np.ones_like(prompt_ids)
  rollout_c = c.replace(param_dtype=DTYPES[lv["rollout"]]) if "rollout" in lv else c
  rollout_graphdef = nnx.split(nnx.eval_shape(lambda: CausalLM(rollout_c, rngs=nnx.Rngs(0))), nnx.Param, ...)[0]
  to_rollout = jax.jit(lambda p: jax.tree.map(lambda x: x.astype(rollout_c.params_dtype), p))

  def rollout(params, key):
    if rollout_c is not c:  # a cast copy of the weights for sampling (the cast is timed with the rollout)
      params = to_rollout(params)
    gen = generate(nnx.merge(rollout_graphdef, params, rest), prompt_ids, prompt_mask, max_new_tokens=n_new, rng=key,
                   temperature=temperature, eos_ids=(), num_samples=g, cache_bucket=bucket,
                   tokens_per_iteration=lv.get("tpi", 1))
    return jax.block_until_ready(gen)

  prompts_r = jnp.asarray(np.repeat(prompt_ids, g, axis=0))
  prompt_mask_r = jnp.asarray(np.repeat(prompt_mask, g, axis=0))

  def in_micro(x, size):  # (R, ...) -> (R / size, size, ...)
    return x.reshape(x.shape[0] // size, size, *x.shape[1:])

  def token_logps(model, pids, pmask, tokens, tmask, how):
    ids = jnp.concatenate([pids, tokens], axis=1)
    attn = jnp.concatenate([pmask, tmask], axis=1) > 0
    hidden = model.hidden_states(jnp.where(attn, ids, 0), attn)[:, p_len - 1:-1]  # response token n at P + n - 1
    return sequence_logps_of(how, hidden, model.output_embedding(), tokens, tmask, chunk, temperature)[0]

  @jax.jit
  def score(params, ref_params, tokens, tmask):
    """(old-policy or None, reference) token log-probs (R, N), forward only, 2 x micro rows at a time."""
    def one(xs):
      pids, pmask, tok, msk = xs
      ref = token_logps(nnx.merge(graphdef, ref_params, rest), pids, pmask, tok, msk, "chunked")
      if not old_from_rollout:
        return None, ref
      return token_logps(nnx.merge(graphdef, params, rest), pids, pmask, tok, msk, "chunked"), ref
    xs = tuple(in_micro(x, 2 * micro) for x in (prompts_r, prompt_mask_r, tokens, tmask))
    old, ref = jax.lax.map(one, xs)
    return (None if old is None else old.reshape(rows, n_new)), ref.reshape(rows, n_new)

  @jax.jit
  def reward(rm_params, tokens, tmask):
    def one(xs):
      pids, pmask, tok, msk = xs
      attn = jnp.concatenate([pmask, msk], axis=1) > 0
      return nnx.merge(rm_graphdef, rm_params, rm_rest)(jnp.concatenate([pids, tok], axis=1), attn)
    xs = tuple(in_micro(x, 2 * micro) for x in (prompts_r, prompt_mask_r, tokens, tmask))
    rewards = jax.lax.map(one, xs).reshape(rows)
    return rewards, pg.group_advantages(rewards, g)

  def update(params, opt_state, batch):
    def micro_grads(carry, mb):
      def total(p):
        logps = token_logps(nnx.merge(graphdef, p, rest), mb["pids"], mb["pmask"], mb["tokens"], mb["mask"], mode)
        per_token, _ = pg.clipped_surrogate(logps, mb.get("old"), mb["adv"], mb["mask"], epsilon=0.2)
        per_token = per_token + beta * pg.kl_divergence(logps, mb["ref"], mb["mask"], estimator="k3")
        return jnp.sum(per_token * mb["mask"])
      loss, grads = jax.value_and_grad(total)(params)
      return jax.tree.map(jnp.add, carry, (grads, loss)), None

    mbs = jax.tree.map(lambda x: in_micro(x, micro), batch)
    zeros = (jax.tree.map(jnp.zeros_like, params), jnp.zeros((), jnp.float32))
    (grads, loss), _ = jax.lax.scan(micro_grads, zeros, mbs)
    num_tokens = jnp.maximum(jnp.sum(batch["mask"]), 1.0)
    grads = jax.tree.map(lambda x: x / num_tokens, grads)
    updates, opt_state = optimizer.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, loss / num_tokens

  update_jit = jax.jit(update, donate_argnums=(0, 1))
  parts = ("rollout", "score", "reward", "update")
  timings: dict[str, list[float]] = {p: [] for p in parts}
  state = [params, opt_state]
  del params, opt_state
  losses = []
  for it in range(1 + lv.get("steps", 1)):  # iteration 0 compiles every part
    if it and time.time() > s.deadline:
      break
    t = {}
    t0 = time.perf_counter()
    gen = rollout(state[0], jax.random.key(it))
    t["rollout"] = time.perf_counter() - t0
    tmask = gen.mask.astype(jnp.float32)
    t0 = time.perf_counter()
    old, ref = jax.block_until_ready(score(state[0], ref_params, gen.tokens, tmask))
    t["score"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    rewards, adv = jax.block_until_ready(reward(rm_params, gen.tokens, tmask))
    t["reward"] = time.perf_counter() - t0
    batch = dict(pids=prompts_r, pmask=prompt_mask_r, tokens=gen.tokens, mask=tmask, ref=ref, adv=adv)
    if old is not None:
      batch["old"] = old
    t0 = time.perf_counter()
    state[0], state[1], loss = jax.block_until_ready(update_jit(state[0], state[1], batch))
    t["update"] = time.perf_counter() - t0
    losses.append(float(loss))
    for p in parts:
      timings[p].append(t[p])
    full_length = bool(np.all(np.asarray(gen.lengths) == n_new))
    del gen, old, ref, rewards, adv, batch
  steady = {p: (timings[p][1:] or timings[p][:1]) for p in parts}  # iteration 0 includes compilation
  sec = {p: float(np.median(steady[p])) for p in parts}
  step_s = sum(sec.values())
  # The log-prob passes apply the LM head at the N response positions only (`token_logps` slices the hidden states).
  flops = dict(rollout=rollout_flops(c, n_prompts, g, p_len, n_new),
               score=(1 + old_from_rollout) * rows * row_flops(c, t_len, n_new),
               reward=rows * row_flops(c, t_len, 0),
               update=rows * row_flops(c, t_len, n_new, train=True))
  return dict(case="grpo", kind="grpo", prompts=n_prompts, generations=g, rows=rows, prompt=p_len, new=n_new,
              cache_bucket=bucket, tokens_per_iteration=lv.get("tpi", 1),
              micro=micro, logps=mode, old_logps="rollout" if old_from_rollout else "detached",
              rollout_param_dtype=rollout_c.param_dtype, config=config_summary(c),
              timed_iterations=len(timings["update"]) - 1, first_iteration_s={p: _r(timings[p][0], 2) for p in parts},
              seconds={p: _r(v, 6) for p, v in sec.items()}, step_s=_r(step_s, 6),  # µs: smoke phases are sub-ms
              share={p: _r(v / step_s, 3) for p, v in sec.items()},
              rollout_tokens_per_s=round(rows * n_new / sec["rollout"]),
              mfu={p: _r(f / sec[p] / 1e12 / s.peak_tflops) for p, f in flops.items()},
              all_rows_full_length=full_length, losses=[_r(x, 6) for x in losses], peak_gib=peak_gib())


CASES: dict[str, Callable[[Entry, Settings], dict]] = {
    "rm": run_train, "dpo": run_train, "rm_shared": run_train, "dpo_shared": run_train, "rm8b": run_train,
    "dpo8b": run_train, "dpo_check": run_dpo_check, "gen": run_gen, "ens": run_ens, "grpo": run_grpo,
}


def run_entry(entry: Entry, s: Settings) -> dict:
  """Runs one case; failures become a row with the error (so the other cases still run)."""
  t0 = time.time()
  try:
    row = CASES[entry.kind](entry, resolve_peaks(s))
    row["status"] = "ok"
  except Exception as e:  # pylint: disable=broad-except
    row = dict(kind=entry.kind, status="failed", error=f"{type(e).__name__}: {str(e)[:1500]}")
  row = dict(entry=entry.text, **row, wall_s=_r(time.time() - t0, 1))
  gc.collect()
  jax.clear_caches()
  return row
