"""Supervised fine-tuning: token-weighted next-token NLL on response tokens, through the shared loop.

The loss of a micro-batch is the SUM of -log p(token) over its target tokens (`loss_mask`, aligned with
`shift_for_next_token`) with the token count as weight, so the step's loss is the token mean over the whole
(accumulated) batch. With `data.pack`, several examples share a row; the batch's `segment_ids` and per-example
`positions` keep them from attending to each other.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from jaxrlhf.config import field
from jaxrlhf.losses import logps as logps_lib
from jaxrlhf.parallel import MeshConfig
from jaxrlhf.train import builders
from jaxrlhf.train import loop as loop_lib
from jaxrlhf.train import metrics as metrics_lib
from jaxrlhf.train import optim
from jaxrlhf.train import state as state_lib


@dataclasses.dataclass(frozen=True)
class SFTConfig:
  """The "sft" stage."""
  seed: int = field(0)
  model: builders.ModelSpec = field(default_factory=builders.ModelSpec)
  data: builders.DataSpec = field(default_factory=builders.DataSpec)
  logps_chunk_size: int = field(0, min=0)  # >0: chunked LM-head log-probs (never the full (B, T, V) logits).
  optimizer: optim.OptimizerConfig = field(default_factory=optim.OptimizerConfig)
  loop: loop_lib.LoopConfig = field(default_factory=loop_lib.LoopConfig)
  mesh: MeshConfig = field(default_factory=MeshConfig)
  num_devices: int = field(0, min=0)  # 0: all devices.


def response_token_logps(model: Any, input_ids_BxT: jax.Array, attention_mask_BxT: jax.Array,
                         loss_mask_BxT: jax.Array, chunk_size: int = 0, *, positions_BxT: jax.Array | None = None,
                         segment_ids_BxT: jax.Array | None = None) -> tuple[jax.Array, jax.Array]:
  """(token_logps_BxT, target_mask_BxT): log p of each target token at the position that predicts it.

  Position t holds log p(input_ids[t + 1] | ids[<= t]) where loss_mask[t + 1] = 1, else 0. `chunk_size` > 0
  gathers from the hidden states chunk by chunk instead of materializing (B, T, V) logits. Packed rows pass
  `segment_ids_BxT` and `positions_BxT` (a segment's first token is a prompt token, so no target crosses a
  segment boundary).
  """
  targets_BxT, mask_BxT = logps_lib.shift_for_next_token(input_ids_BxT, loss_mask_BxT)
  if segment_ids_BxT is not None:
    next_segment = jnp.concatenate([segment_ids_BxT[:, 1:], jnp.zeros_like(segment_ids_BxT[:, :1])], axis=1)
    mask_BxT = mask_BxT * (next_segment == segment_ids_BxT)
  if chunk_size or segment_ids_BxT is not None:
    hidden_BxTxD = model.hidden_states(input_ids_BxT, attention_mask_BxT, positions_BxT,
                                       segment_ids=segment_ids_BxT)
    token_logps, _ = logps_lib.chunked_sequence_logps(hidden_BxTxD, model.output_embedding(), targets_BxT,
                                                      mask_BxT, chunk_size=chunk_size or 1024)
  else:
    token_logps, _ = logps_lib.sequence_logps(model(input_ids_BxT, attention_mask_BxT), targets_BxT, mask_BxT)
  return token_logps, mask_BxT


def sft_loss_fn(chunk_size: int = 0) -> state_lib.LossFn:
  """loss_fn(model, batch, rng) -> (sum of response-token NLL, number of response tokens, metrics)."""

  def loss_fn(model, batch, rng):
    del rng
    token_logps, mask = response_token_logps(model, batch["input_ids"], batch["attention_mask"],
                                             batch["loss_mask"], chunk_size, positions_BxT=batch.get("positions"),
                                             segment_ids_BxT=batch.get("segment_ids"))
    tokens = jnp.sum(mask).astype(jnp.float32)
    total = -jnp.sum(token_logps)
    rows = jnp.sum(jnp.any(mask > 0, axis=-1)).astype(jnp.float32)
    return total, tokens, {"tokens": metrics_lib.Sum(tokens), "examples": metrics_lib.Sum(rows)}

  return loss_fn


def make_sft_step(graphdef: nnx.GraphDef, optimizer_config: optim.OptimizerConfig, chunk_size: int = 0
                  ) -> state_lib.StepFn:
  """The pure SFT step (state, batch) -> (state, metrics)."""
  return state_lib.make_train_step(graphdef, sft_loss_fn(chunk_size), optim.make_optimizer(optimizer_config),
                                   grad_accum_steps=optimizer_config.grad_accum_steps,
                                   schedule=optim.make_schedule(optimizer_config))


def _shardings(mesh: Any) -> Any:
  """Parameter shardings from logical axes on `mesh` (None: replicated on one device)."""
  return state_lib.logical_shardings(mesh) if mesh is not None else None


logical_or_replicated = _shardings


def policy_setup(model_config: Any, pretrained: dict | None, optimizer: Any, seed: int, mesh: Any
                 ) -> state_lib.StateSetup:
  """A CausalLM train state (sharded by logical axes), starting from `pretrained` weights if given."""
  from jaxrlhf.models import CausalLM  # pylint: disable=g-import-not-at-top
  setup = state_lib.init_train_state(lambda key: CausalLM(model_config, rngs=nnx.Rngs(key)), optimizer, seed,
                                     mesh=mesh, shardings=_shardings(mesh))
  if pretrained is None:
    return setup
  fresh = setup.init

  def init():
    state = fresh()
    return state.replace(params=builders.overwrite(state.params, pretrained))

  return setup._replace(init=init)


def save_policy(setup: state_lib.StateSetup, state: state_lib.TrainState, out_dir: str, prefix: str = "") -> str:
  """Saves the (policy part of the) trained model as a HF folder that `init_from` can load (process 0 writes;
  every process returns after the folder exists). Parameters sharded across processes are gathered first (every
  process takes part)."""
  from jaxrlhf.models import save_pretrained  # pylint: disable=g-import-not-at-top
  from jaxrlhf.parallel import distributed  # pylint: disable=g-import-not-at-top
  params, extra = state.params, state.extra
  if jax.process_count() > 1:
    params, extra = distributed.host_copy((params, extra))
  if distributed.is_primary():
    model = nnx.merge(setup.graphdef, params, extra)
    if prefix:
      model = getattr(model, prefix)
    save_pretrained(model, out_dir)
  distributed.barrier(f"save_policy:{out_dir}")
  return out_dir


def final_state(setup: state_lib.StateSetup, results: dict) -> state_lib.TrainState:
  """Restores the last checkpoint the loop wrote (the trained state)."""
  from jaxrlhf.train import checkpoint as checkpoint_lib  # pylint: disable=g-import-not-at-top
  ckpt = checkpoint_lib.Checkpointer(results["checkpoint_dir"], async_save=False)
  try:
    state, _ = ckpt.restore(setup.abstract)
  finally:
    ckpt.close()
  return state


def run_sft(cfg: SFTConfig, workdir: str, inputs: dict) -> dict:
  """The "sft" stage: trains, evaluates held-out NLL, saves `workdir/model` (HF folder)."""
  context = builders.stage_context(cfg, inputs)
  return train_sft(cfg, workdir, context, builders.sft_records(cfg.data, context.world, context.tokenizer, cfg.seed))


def train_sft(cfg: SFTConfig, workdir: str, context: tuple, records: tuple[list, list, dict]) -> dict:
  """The SFT recipe on given records: `context` = builders.stage_context(...), `records` = (train, held-out,
  data report); trains, evaluates held-out NLL, saves `workdir/model`; returns the stage outputs."""
  _, mesh, model_config, pretrained, tokenizer = context
  train_records, eval_records, report = records
  optimizer = optim.make_optimizer(cfg.optimizer)
  setup = policy_setup(model_config, pretrained, optimizer, cfg.seed, mesh)
  step_fn = make_sft_step(setup.graphdef, cfg.optimizer, cfg.logps_chunk_size)
  data_iter = builders.train_iterator(train_records, tokenizer, cfg.data, "sft", cfg.seed)
  batches = builders.eval_batches(eval_records, tokenizer, cfg.data, "sft")
  loss_fn = sft_loss_fn(cfg.logps_chunk_size)

  @jax.jit
  def eval_step(state, batch):
    total, tokens, _ = loss_fn(nnx.merge(setup.graphdef, state.params, state.extra), batch, None)
    return total, tokens

  def eval_fn(state):
    sums = [eval_step(state, b) for b in batches]
    total, tokens = (sum(float(s[i]) for s in sums) for i in (0, 1))
    return {"loss": total / max(tokens, 1.0)} if batches else {}

  results = loop_lib.train(config=cfg.loop, workdir=workdir, setup=setup, step_fn=step_fn, data_iter=data_iter,
                           mesh=mesh, eval_fn=eval_fn if batches else None)
  model_dir = save_policy(setup, final_state(setup, results), os.path.join(workdir, "model"))
  return builders.stage_outputs(results, model_dir=model_dir, data_report=report)
