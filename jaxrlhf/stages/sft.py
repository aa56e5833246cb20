"""The "sft" stage: supervised fine-tuning: token-weighted next-token NLL on response tokens, through the shared loop.

The loss of a micro-batch is the SUM of -log p(token) over its target tokens (`loss_mask`, aligned with
`shift_for_next_token`) with the token count as weight, so the step's loss is the token mean over the whole
(accumulated) batch. With `data.pack`, several examples share a row; the batch's `segment_ids` and per-example
`positions` keep them from attending to each other.
"""

from __future__ import annotations

import dataclasses
import os

import jax
import jax.numpy as jnp
from flax import nnx

from jaxrlhf.config import field
from jaxrlhf.parallel import MeshConfig
from jaxrlhf.stages import artifacts
from jaxrlhf.stages import common
from jaxrlhf.stages import inputs as inputs_lib
from jaxrlhf.train import loop as loop_lib
from jaxrlhf.train import metrics as metrics_lib
from jaxrlhf.train import optim
from jaxrlhf.train import scoring
from jaxrlhf.train import state as state_lib


@dataclasses.dataclass(frozen=True)
class SFTConfig:
  """The "sft" stage."""
  seed: int = field(0)
  model: common.ModelSpec = field(default_factory=common.ModelSpec)
  data: inputs_lib.SFTDataSpec = field(default_factory=inputs_lib.SFTDataSpec)
  # The LM-head log-probs (`scoring.resolve_logps_path`): "auto" is "fused" on GPUs, elsewhere "chunked" when
  # logps_chunk_size > 0 (never the full (B, T, V) logits) and "full" otherwise.
  logps_path: str = field("auto", choices=scoring.LOGPS_PATHS)
  logps_chunk_size: int = field(0, min=0)
  optimizer: optim.OptimizerConfig = field(default_factory=optim.OptimizerConfig)
  loop: loop_lib.LoopConfig = field(default_factory=loop_lib.LoopConfig)
  mesh: MeshConfig = field(default_factory=MeshConfig)
  num_devices: int = field(0, min=0)  # 0: all devices.

  def validate(self, path: str) -> None:
    common.check_accumulation(self.data.batch_size, self.optimizer.grad_accum_steps, path)
    common.check_logps_path(self.logps_path, self.logps_chunk_size, path)



def sft_loss_fn(chunk_size: int = 0, fused: bool = False) -> state_lib.LossFn:
  """loss_fn(model, batch, rng) -> (sum of response-token NLL, number of response tokens, metrics); chunk_size /
  fused: the LM-head path (`scoring.token_logps`)."""

  def loss_fn(model, batch, rng):
    del rng
    token_logps, mask = scoring.token_logps(model, batch["input_ids"], batch["attention_mask"], batch["loss_mask"],
                                            chunk_size, positions_BxT=batch.get("positions"),
                                            segment_ids_BxT=batch.get("segment_ids"), fused=fused)
    tokens = jnp.sum(mask).astype(jnp.float32)
    total = -jnp.sum(token_logps)
    rows = jnp.sum(jnp.any(mask > 0, axis=-1)).astype(jnp.float32)
    return total, tokens, {"tokens": metrics_lib.Sum(tokens), "examples": metrics_lib.Sum(rows)}

  return loss_fn


def make_sft_step(graphdef: nnx.GraphDef, optimizer_config: optim.OptimizerConfig, chunk_size: int = 0,
                  fused: bool = False) -> state_lib.StepFn:
  """The pure SFT step (state, batch) -> (state, metrics)."""
  return state_lib.make_train_step(graphdef, sft_loss_fn(chunk_size, fused), optim.make_optimizer(optimizer_config),
                                   grad_accum_steps=optimizer_config.grad_accum_steps,
                                   schedule=optim.make_schedule(optimizer_config))


def run(cfg: SFTConfig, workdir: str, inputs: dict) -> dict:
  """Trains on the response tokens, evaluates held-out NLL, saves `workdir/model` (a HF folder; with `model.lora`
  the merged model, and the adapters alone in `workdir/adapters`); returns the stage outputs (checkpoint_dir,
  model_dir, metrics, data_report[, adapter_dir])."""
  context = inputs_lib.stage_context(cfg, inputs)
  _, mesh, model_config, pretrained, tokenizer = context
  train_records, eval_records, report = inputs_lib.sft_records(cfg.data, context.world, tokenizer, cfg.seed)
  # Examples too long for the token budget: counted and reported (train), left out of the held-out batches.
  _, train_budget = inputs_lib.budgeted_records(train_records, tokenizer, cfg.data, "sft", "train")
  eval_records, eval_budget = inputs_lib.budgeted_records(eval_records, tokenizer, cfg.data, "sft", "eval")
  report = {**report, "token_budget": {"train": train_budget, "eval": eval_budget}}
  optimizer = optim.make_optimizer(cfg.optimizer)
  setup = common.policy_setup(model_config, pretrained, optimizer, cfg.seed, mesh, lora=cfg.model.lora)
  chunk_size, fused = common.logps_path(cfg)
  step_fn = make_sft_step(setup.graphdef, cfg.optimizer, chunk_size, fused)
  data_iter = inputs_lib.train_iterator(train_records, tokenizer, cfg.data, "sft", cfg.seed)
  batches = inputs_lib.eval_batches(eval_records, tokenizer, cfg.data, "sft")
  loss_fn = sft_loss_fn(chunk_size, fused)

  @jax.jit
  def eval_step(state, batch):
    total, tokens, _ = loss_fn(nnx.merge(setup.graphdef, state.params, state.extra), batch, None)
    return total, tokens

  def eval_fn(state):
    sums = [eval_step(state, b) for b in batches]
    total, tokens = (sum(float(s[i]) for s in sums) for i in (0, 1))
    return {"loss": total / max(tokens, 1.0)} if batches else {}

  results = loop_lib.train(config=cfg.loop, workdir=workdir, setup=setup, step_fn=step_fn, data_iter=data_iter,
                           mesh=mesh, eval_fn=eval_fn if batches else None, run_config=dataclasses.asdict(cfg))
  adapter_dir = os.path.join(workdir, "adapters") if cfg.model.lora else None
  model_dir = artifacts.save_policy(setup, results["state"], os.path.join(workdir, "model"),
                                    tokenizer=tokenizer, adapter_dir=adapter_dir)
  extra = {} if adapter_dir is None else {"adapter_dir": adapter_dir}
  return common.stage_outputs(results, model_dir=model_dir, data_report=report, **extra)
