"""The "token_credit" stage: how well a policy's token rewards track the synthetic world's gold per-token credit
(the T-REG question, Zhou et al. 2024, arXiv:2412.02685; the statistics are `jaxrlhf.evaluation.token_credit`).

Responses: both sides of `num_pairs` preference pairs of the world's TEST split (reference-distribution responses,
the same for every policy, never trained on). For every response token y_t the stage computes

  implicit             beta * (log pi(y_t | x, y_<t) - log pi_ref(y_t | x, y_<t))   DPO's implicit token reward
  contrastive          log pi(y_t | <better> x, y_<t) - log pi(y_t | <worse> x, y_<t)   T-REG's self-generated
  contrastive_sigmoid  sigmoid(contrastive) - 0.5                                      token reward, raw / squashed

(implicit needs `reference`, the contrastive kinds need `contrastive=True`) and scores each against the gold
credit c_t (`evaluation.token_credit.evaluate_credit`): within-response and pooled Pearson / Spearman, sign
agreement and pair accuracy. Per-token log-probs come from `train.scoring.aligned_token_logps`, one jitted
program per architecture, shape and prefix length.
"""

from __future__ import annotations

import dataclasses
import functools
import os
from typing import Any, Callable, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jaxrlhf.config import ConfigError, field, stage_ref
from jaxrlhf.data import tokenize as tokenize_lib
from jaxrlhf.evaluation import token_credit as credit_lib
from jaxrlhf.models import from_pretrained
from jaxrlhf.stages import common
from jaxrlhf.stages import inputs as inputs_lib
from jaxrlhf.train import scoring


@dataclasses.dataclass(frozen=True)
class TokenCreditConfig:
  """policy / reference: "stage:<name>" or a HF folder. reference "" skips the implicit rewards; contrastive
  scores the policy under the `better` / `worse` control contexts (T-REG's self-generated token rewards)."""
  policy: str = stage_ref("model_dir")
  reference: str = stage_ref("model_dir")
  beta: float = field(0.1, min=0.0)
  contrastive: bool = field(True)
  better: str = field("<better>")
  worse: str = field("<worse>")
  world: dict = field(default_factory=dict)
  num_pairs: int = field(512, min=1)
  batch_size: int = field(64, min=1)
  max_length: int = field(48, min=2)
  min_tokens: int = field(3, min=2)
  plots: bool = field(True)

  def validate(self, path: str) -> None:
    if not self.policy:
      raise ConfigError(f"{path}.policy: required ('stage:<name>' or a HF folder)")
    if not self.reference and not self.contrastive:
      raise ConfigError(f"{path}.reference: required when {path}.contrastive is False (nothing to measure)")
    if self.reference and self.beta <= 0:
      raise ConfigError(f"{path}.beta: must be > 0 for implicit rewards, got {self.beta}")
    inputs_lib.check_world(self.world, path)

# ------------------------------------------------------------------------------------------------ log-probs
@functools.partial(jax.jit, static_argnums=(0,))
def _merged_token_logps(graphdef, state, ids, att, lm, prefix_N):
  return scoring.aligned_token_logps(nnx.merge(graphdef, state), ids, att, lm, prefix_N)


def jit_token_logps(model: nnx.Module, prefix_ids: Sequence[int] = ()
                    ) -> Callable[[Any, Any, Any], tuple[jax.Array, jax.Array]]:
  """`scoring.aligned_token_logps` of an NNX model as a jitted function of (input_ids, attention_mask, loss_mask).

  One compiled program per (architecture, shapes, prefix length): models of one architecture (a policy and its
  reference) and prefixes of one length (`<better>`, `<worse>`) share it; the prefix ids are traced.
  """
  graphdef, state = nnx.split(model)
  prefix_N = jnp.asarray(tuple(int(i) for i in prefix_ids), jnp.int32)
  return lambda ids, att, lm: _merged_token_logps(graphdef, state, jnp.asarray(ids), jnp.asarray(att),
                                                  jnp.asarray(lm), prefix_N)


# ------------------------------------------------------------------------------------------------ held-out responses
class ResponseSet(NamedTuple):
  """2N rows (chosen of pairs 0..N-1, then their rejected): prompt + response + end-of-turn, right padded."""
  input_ids: np.ndarray  # int32 (2N, T)
  attention_mask: np.ndarray  # int32 (2N, T)
  loss_mask: np.ndarray  # int32 (2N, T), 1 on response tokens (end-of-turn included)
  num_pairs: int


def response_set(world: Any, num_pairs: int, max_length: int, split: str = "test") -> ResponseSet:
  """Both responses of `num_pairs` world pairs of `split`, tokenized like the preference pipeline (prompt text,
  response + eos, the same truncation), padded to `max_length`; pairs that do not fit are dropped."""
  tok = world.tokenizer
  trunc = tokenize_lib.TruncationConfig(max_length=max_length)
  chosen, rejected = [], []
  for record in world.preference_records(num_pairs, split):
    out = tokenize_lib.truncate(tokenize_lib.encode_prompt(tok, record.prompt),
                                [tokenize_lib.encode_response(tok, record.chosen),
                                 tokenize_lib.encode_response(tok, record.rejected)], trunc)
    if out is None:
      continue
    prompt, (c, r), _ = out
    chosen.append((prompt, c))
    rejected.append((prompt, r))
  if not chosen:
    raise ValueError(f"max_length: {max_length} leaves no room for any response of the {num_pairs} pairs")
  rows = chosen + rejected
  ids = np.full((len(rows), max_length), tok.pad_id, np.int32)
  att = np.zeros_like(ids)
  lm = np.zeros_like(ids)
  for i, (prompt, response) in enumerate(rows):
    p, n = len(prompt), len(prompt) + len(response)
    ids[i, :n] = list(prompt) + list(response)
    att[i, :n] = 1
    lm[i, p:n] = 1
  return ResponseSet(ids, att, lm, len(chosen))


def batched(fn: Callable[..., tuple[jax.Array, jax.Array]], rows: ResponseSet, batch_size: int) -> np.ndarray:
  """fn(ids, att, lm)[0] over `rows` in fixed-size batches (one compiled shape; the last one filled with
  copies of row 0, dropped after): float64 (2N, T)."""
  n = rows.input_ids.shape[0]
  out = []
  for start in range(0, n, batch_size):
    idx = np.arange(start, start + batch_size)
    idx = np.where(idx < n, idx, 0)
    logps, _ = fn(rows.input_ids[idx], rows.attention_mask[idx], rows.loss_mask[idx])
    out.append(np.asarray(jax.device_get(logps), np.float64)[:min(batch_size, n - start)])
  return np.concatenate(out)


def token_rewards(policy: Any, reference: Any | None, rows: ResponseSet, *, beta: float,
                  better_ids: Sequence[int] = (), worse_ids: Sequence[int] = (), batch_size: int = 64
                  ) -> dict[str, np.ndarray]:
  """{kind: (2N, T) token rewards} aligned with `rows.input_ids`: "implicit" when `reference` is given,
  "contrastive" and "contrastive_sigmoid" when control ids are given."""
  out = {}
  if reference is not None or better_ids:
    policy_logps = batched(jit_token_logps(policy), rows, batch_size)
  if reference is not None:
    out["implicit"] = beta * (policy_logps - batched(jit_token_logps(reference), rows, batch_size))
  if better_ids:
    better = batched(jit_token_logps(policy, better_ids), rows, batch_size)
    worse = batched(jit_token_logps(policy, worse_ids), rows, batch_size)
    mask = rows.loss_mask.astype(bool) & rows.attention_mask.astype(bool)
    mask[:, 0] = False
    out["contrastive"] = np.where(mask, better - worse, 0.0)
    out["contrastive_sigmoid"] = np.where(mask, 1.0 / (1.0 + np.exp(-(better - worse))) - 0.5, 0.0)
  return out


def run(cfg: TokenCreditConfig, workdir: str, inputs: dict) -> dict:
  """Writes workdir/results.json (and token_credit.png); returns {"metrics"}."""
  world = inputs_lib.make_world(cfg.world)
  policy, _ = from_pretrained(common.resolve_path(cfg.policy, inputs))
  reference = from_pretrained(common.resolve_path(cfg.reference, inputs))[0] if cfg.reference else None
  better = worse = ()
  if cfg.contrastive:
    better = inputs_lib.control_ids(world.tokenizer, cfg.better, "config.better")
    worse = inputs_lib.control_ids(world.tokenizer, cfg.worse, "config.worse")
  rows = response_set(world, cfg.num_pairs, cfg.max_length)
  rewards = token_rewards(policy, reference, rows, beta=cfg.beta, better_ids=better, worse_ids=worse,
                          batch_size=cfg.batch_size)
  metrics, pooled = credit_lib.evaluate_credit(world, rows, rewards, cfg.min_tokens)
  os.makedirs(workdir, exist_ok=True)
  common.write_results(workdir, metrics)
  if cfg.plots:
    credit_lib.plot_token_credit(os.path.join(workdir, "token_credit.png"), pooled, metrics,
                      title=f"{cfg.policy}: token rewards vs gold credit ({rows.num_pairs} test pairs)")
  print("[token_credit] " + ", ".join(f"{k}={v:.3f}" for k, v in metrics.items()
                                      if k.endswith(("pearson_seq", "pearson_pooled", "pair_accuracy"))), flush=True)
  return {"metrics": metrics}
