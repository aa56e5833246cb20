"""The "self_rewarding" stage: iterative self-rewarding DPO with the policy's implicit reward, with or without
CREAM's consistency regularization (Wang, He, Liang, Zhang, Bansal, Wei, Zhang, Yao 2024, "CREAM: Consistency
Regularized Self-Rewarding Language Models", arXiv:2410.12735, Algorithm 1; official code github.com/Raibows/CREAM).

Models, in the paper's names: M0 = `reference` (the base, e.g. the "sft" stage), M1 = `model.init_from` (the
iteration-1 policy, trained from M0 on seed supervision). Iteration t = 1..T, policy pi_t (pi_1 = M1):
  1. sample `num_samples` (N) responses per prompt from pi_t on `num_prompts` fresh training prompts of the world
     (iteration t takes the t-th block of the world's seeded prompt draws);
  2. reward them with pi_t's implicit DPO reward r_t(x, y) = log pi_t(y|x) - log M0(y|x) (rewarding.py, reference =
     the initial model) and rank them also with the PREVIOUS iteration's reward: r_{t-1} = log pi_{t-1} - log M0 for
     t >= 2, and for t = 1 M0's length-normalized log-likelihood log M0(y|x) / |y| (the official code's rewarding
     of the model without a reference);
  3. the pair per prompt is (argmax r_t, argmin r_t) (cal_consistency.py); the consistency rate of a prompt is
     C = (tau_b(r_t, r_{t-1}) + 1) / 2 over its N samples (`evaluation.rank_consistency`);
  4. DPO from pi_t with reference pi_t (the iteration's starting policy) on those pairs with
     `losses.consistency_regularized_dpo_loss`: `consistency` "average" uses the mean C over the prompts for every
     pair (consistency_avg), "dynamic" each prompt's own C (consistency_dyn; a prompt without a defined tau takes
     the mean), "off" C = 1: plain self-rewarding (SRLM with the same implicit-reward ranking), the control.
The consistency rate and the pairs' agreement with the gold reward are measured in every arm; only the loss differs.

After each iteration (and for pi_1 before the first) the policy is evaluated on the same `num_eval_prompts` held-out
(test split) prompts with the same sampling keys in every iteration and arm: mean gold reward, sampled
KL(q || pi_1) to the starting policy (nats per response; q = pi at the sampling temperature, so KL(pi || pi_1) at
the default temperature 1), response length (tokens before the end token).
Metrics: `iter<t>/gold`, `iter<t>/gold_lower|upper`, `iter<t>/kl`, `iter<t>/length` for t = 0..T (0 = pi_1), and for
t = 1..T `iter<t>/consistency` (the mean rate; what "average" trains with), `iter<t>/label_agreement` (P(gold(y+) >
gold(y-)), ties 1/2), `iter<t>/reward_gold_tau` (mean tau_b of r_t with the gold reward over a prompt's samples),
`iter<t>/pairs`; `gold`, `kl` (the last iteration) and `gold_gain` (last - iteration 0).

LoRA (`model.lora`): each iteration trains fresh adapters on pi_t with its base weights frozen (the reference pi_t
is the fresh adapter model, whose B = 0 makes it pi_t exactly); pi_{t+1} is saved merged (`iter<t>/model`, what the
next iteration samples from and starts on) and its adapters alone in `iter<t>/adapters`.

Resume: iteration t lives in `workdir/iter<t>/` (the shared loop's checkpoints, `model/`, and `iteration.json`,
written last). A re-run skips iterations with an `iteration.json` and resumes an interrupted one from its loop
checkpoint; sampling keys depend only on (seed, t), so the result is the uninterrupted run's.
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jaxrlhf.config import ConfigError, field, stage_ref
from jaxrlhf.data import padding
from jaxrlhf.data import tokenize as tokenize_lib
from jaxrlhf.data.records import PreferenceRecord
from jaxrlhf.evaluation.policy import confidence_interval, win_credit
from jaxrlhf.evaluation.rank_consistency import consistency_rate, kendall_tau_b
from jaxrlhf.losses.self_rewarding import consistency_regularized_dpo_loss
from jaxrlhf.models import from_pretrained
from jaxrlhf.parallel import MeshConfig
from jaxrlhf.parallel import distributed
from jaxrlhf.sampling.best_of_n import gold_scorer
from jaxrlhf.sampling.generate import content_lengths, generate
from jaxrlhf.stages import artifacts
from jaxrlhf.stages import common
from jaxrlhf.stages import inputs as inputs_lib
from jaxrlhf.train import loop as loop_lib
from jaxrlhf.train import metrics as metrics_lib
from jaxrlhf.train import optim
from jaxrlhf.train import scoring
from jaxrlhf.train import state as state_lib

CONSISTENCY_MODES = ("off", "average", "dynamic")
PAIR_METRICS = ("rewards/chosen", "rewards/rejected", "rewards/margin", "rewards/accuracy", "consistency")


@dataclasses.dataclass(frozen=True)
class SelfRewardingConfig:
  """The "self_rewarding" stage. `model.init_from`: the iteration-1 policy (M1); `reference`: the base M0 the
  implicit rewards are measured against; `model.lora`: {} full finetuning, else every iteration trains LoRA adapters
  (see the module docstring). `loop` / `optimizer`: one DPO run per iteration."""
  seed: int = field(0)
  model: common.ModelSpec = field(default_factory=common.ModelSpec)
  reference: str = stage_ref("model_dir")
  data: inputs_lib.DataSpec = field(default_factory=inputs_lib.DataSpec)
  consistency: str = field("average", choices=CONSISTENCY_MODES)
  num_iterations: int = field(3, min=1)
  num_prompts: int = field(256, min=1)
  num_samples: int = field(4, min=2)
  max_new_tokens: int = field(24, min=1)
  temperature: float = field(1.0, min=1e-3)
  cache_bucket: int | None = field(None, min=0)  # decode phases (`sampling.generate`); None: the backend's rule
  tokens_per_iteration: int = field(1, min=1)  # decode steps per loop iteration (`sampling.generate`)
  sample_batch_size: int = field(64, min=1)  # prompts per generation call
  beta: float = field(0.1)
  num_eval_prompts: int = field(256, min=1)
  logps_path: str = field("auto", choices=scoring.LOGPS_PATHS)  # the LM-head log-probs, as in the sft stage
  logps_chunk_size: int = field(0, min=0)
  optimizer: optim.OptimizerConfig = field(default_factory=optim.OptimizerConfig)
  loop: loop_lib.LoopConfig = field(default_factory=loop_lib.LoopConfig)
  mesh: MeshConfig = field(default_factory=MeshConfig)
  num_devices: int = field(0, min=0)

  def validate(self, path: str) -> None:
    if not self.model.init_from:
      raise ConfigError(f"{path}.model.init_from: required (the iteration-1 policy M1, e.g. 'stage:seed_dpo')")
    if not self.reference:
      raise ConfigError(f"{path}.reference: required (the base M0 of the implicit reward, e.g. 'stage:sft')")
    if self.data.source != "world":
      raise ConfigError(f"{path}.data.source: must be 'world' (the stage samples the world's prompts and reports "
                        f"the gold reward), got {self.data.source!r}")
    if self.beta <= 0:
      raise ConfigError(f"{path}.beta: must be > 0, got {self.beta}")
    if self.data.shared_prompt == "on":
      raise ConfigError(f"{path}.data.shared_prompt: 'on' is not supported here; use 'off' or 'auto'")
    common.check_accumulation(self.data.batch_size, self.optimizer.grad_accum_steps, path)
    common.check_logps_path(self.logps_path, self.logps_chunk_size, path)

# ------------------------------------------------------------------------------------------------ the loss
def self_rewarding_loss_fn(beta: float, chunk_size: int = 0, fused: bool = False) -> state_lib.LossFn:
  """loss_fn(model, batch, rng) -> (sum_i w_i L_i, sum_i w_i, metrics) with L the consistency-regularized DPO
  loss; the batch carries `ref_chosen_logps`, `ref_rejected_logps` and `consistency` (B,) (`PairTable.attach`).
  chunk_size / fused: the LM-head path (`scoring.pair_token_logps`)."""

  def loss_fn(model, batch, rng):
    del rng
    token_logps, mask = scoring.pair_token_logps(model, batch, chunk_size, fused=fused)
    logps_2B = jnp.sum(token_logps, axis=-1)
    b = logps_2B.shape[0] // 2
    losses, m = consistency_regularized_dpo_loss(logps_2B[:b], logps_2B[b:], batch["ref_chosen_logps"],
                                                 batch["ref_rejected_logps"], batch["consistency"], beta=beta)
    w_B = batch["weight"].astype(jnp.float32)
    metrics = {k: metrics_lib.Avg(jnp.sum(w_B * m[k]), jnp.sum(w_B)) for k in PAIR_METRICS}
    lengths_2B = jnp.sum(mask.astype(jnp.float32), axis=-1)
    metrics["tokens"] = metrics_lib.Sum(jnp.sum(lengths_2B * (jnp.concatenate([w_B, w_B]) > 0)))
    return jnp.sum(w_B * losses), jnp.sum(w_B), metrics

  return loss_fn


class PairTable:
  """Per pair (keyed by its tokens, `scoring.row_key`): the reference log-probs and the consistency rate."""

  def __init__(self, table: dict[bytes, tuple[float, float, float]]):
    self.table = table

  def attach(self, batch: dict) -> dict:
    b = batch["weight"].shape[0]
    rc, rr, c = np.zeros((b,), np.float32), np.zeros((b,), np.float32), np.ones((b,), np.float32)
    for i in np.flatnonzero(scoring.nonempty_rows(batch)):
      rc[i], rr[i], c[i] = self.table[scoring.row_key(batch, i)]
    return dict(batch, ref_chosen_logps=rc, ref_rejected_logps=rr, consistency=c)


# ------------------------------------------------------------------------------------------------ sampling, rewards
def _prompt_arrays(tokenizer: Any, texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
  rows = [tokenize_lib.encode_prompt(tokenizer, t) for t in texts]
  return padding.pad_prompts(rows, tokenizer.pad_id)


def _sample(model: Any, ids_BxP, mask_BxP, rng, cfg: SelfRewardingConfig, eos_ids, pad_id: int, num_samples: int):
  """Generation of `num_samples` per prompt in chunks of `sample_batch_size` prompts: numpy tokens / mask (R, N),
  R = B * num_samples prompt-major, and float64 (R,) log q(response | prompt) under the distribution the tokens
  were drawn from (`temperature` applied); chunk c uses fold_in(rng, c)."""
  tokens, masks, logps = [], [], []
  for c, start in enumerate(range(0, ids_BxP.shape[0], cfg.sample_batch_size)):
    gen = generate(model, ids_BxP[start:start + cfg.sample_batch_size], mask_BxP[start:start + cfg.sample_batch_size],
                   max_new_tokens=cfg.max_new_tokens, rng=jax.random.fold_in(rng, c), temperature=cfg.temperature,
                   eos_ids=eos_ids, pad_id=pad_id, num_samples=num_samples, cache_bucket=cfg.cache_bucket,
                   tokens_per_iteration=cfg.tokens_per_iteration)
    tokens.append(np.asarray(gen.tokens))
    masks.append(np.asarray(gen.mask))
    logps.append(np.asarray(jnp.sum(gen.logps * gen.mask, axis=-1), np.float64))
  return np.concatenate(tokens), np.concatenate(masks), np.concatenate(logps)


def _sequence_logps(model: Any, ids_RxP, mask_RxP, tokens_RxN, mask_RxN, chunk: int) -> np.ndarray:
  """float64 (R,) log p(response | prompt) summed over response tokens, in chunks of `chunk` rows."""
  out = [np.asarray(jnp.sum(scoring.jit_response_logps(model, ids_RxP[s:s + chunk], mask_RxP[s:s + chunk],
                                                       tokens_RxN[s:s + chunk], mask_RxN[s:s + chunk]), axis=-1))
         for s in range(0, ids_RxP.shape[0], chunk)]
  return np.concatenate(out).astype(np.float64)


def _evaluate(model: Any, start_policy: Any, prompts: tuple, rng, cfg: SelfRewardingConfig, gold_fn, eos_ids,
              pad_id: int) -> dict[str, float]:
  """Gold reward, sampled KL(q || start policy) and length of one sample per held-out prompt; q is the
  distribution the samples are drawn from (the model at `cfg.temperature`), as in evaluate_policy: log q comes from
  the sampler, so the estimate is unbiased at any temperature (the model's own temperature-1 log-probs would
  estimate neither KL(q || pi_1) nor KL(model || pi_1) once the temperature is not 1)."""
  ids, mask = prompts
  tokens, rmask, sample_logps = _sample(model, ids, mask, rng, cfg, eos_ids, pad_id, 1)
  chunk = cfg.sample_batch_size
  gold = np.concatenate([np.asarray(gold_fn(ids[s:s + chunk], mask[s:s + chunk], tokens[s:s + chunk],
                                            rmask[s:s + chunk])) for s in range(0, ids.shape[0], chunk)])
  kl = sample_logps - _sequence_logps(start_policy, ids, mask, tokens, rmask, chunk)
  out = {}
  length = np.asarray(content_lengths(tokens, rmask, eos_ids))  # before the end token, as the world's L*
  for name, values in (("gold", gold), ("kl", kl), ("length", length)):
    e = confidence_interval(np.asarray(values, np.float64))
    out.update({name: e.mean, f"{name}_lower": e.lower, f"{name}_upper": e.upper})
  return out


def label_pairs(reward_BxN: np.ndarray, previous_BxN: np.ndarray, gold_BxN: np.ndarray) -> dict[str, np.ndarray]:
  """The pair of each prompt (best, worst index under `reward_BxN`, int (B,)), its consistency rate (B,) with the
  previous ranking (NaN where tau is undefined), whether gold agrees with the label (1, 0, 1/2 on gold ties), the
  reward's tau_b with gold (B,), and `keep` (B,) bool: prompts whose best and worst differ in reward."""
  best, worst = np.argmax(reward_BxN, axis=1), np.argmin(reward_BxN, axis=1)
  rows = np.arange(reward_BxN.shape[0])
  keep = reward_BxN[rows, best] > reward_BxN[rows, worst]
  return {"best": best, "worst": worst, "keep": keep,
          "consistency": np.asarray(consistency_rate(reward_BxN, previous_BxN), np.float64),
          "agreement": win_credit(gold_BxN[rows, best], gold_BxN[rows, worst]),
          "gold_tau": np.asarray(kendall_tau_b(reward_BxN, gold_BxN), np.float64)}

# ------------------------------------------------------------------------------------------------ one iteration
def _train_iteration(cfg: SelfRewardingConfig, t: int, policy_path: str, records: list, consistency: np.ndarray,
                     context: inputs_lib.StageContext, workdir: str) -> str:
  """DPO of pi_t (from `policy_path`, also the reference) on `records` with per-record `consistency`; saves and
  returns `workdir/model` (with `model.lora`: merged, and the adapters alone in `workdir/adapters`)."""
  _, mesh, _, _, tokenizer = context
  model_config, pretrained, _ = common.load_weights(common.ModelSpec(init_from=policy_path, config=cfg.model.config),
                                                    {}, None)
  optimizer = optim.make_optimizer(cfg.optimizer)
  setup = common.policy_setup(model_config, pretrained, optimizer, cfg.seed, mesh, lora=cfg.model.lora)
  chunk, fused = common.logps_path(cfg)
  loss_fn = self_rewarding_loss_fn(cfg.beta, chunk, fused)
  step_fn = state_lib.make_train_step(setup.graphdef, loss_fn, optimizer,
                                      grad_accum_steps=cfg.optimizer.grad_accum_steps,
                                      schedule=optim.make_schedule(cfg.optimizer))
  plan = inputs_lib.scoring_batches(records, tokenizer, cfg.data, shared_prompt=False)
  if plan.report["dropped_too_long"]:
    raise ValueError(f"config.data.max_length: {plan.report['dropped_too_long']} self-rewarding pairs do not fit "
                     f"in {cfg.data.max_length} tokens (prompt + max_new_tokens + 1 end token)")
  state = setup.init()

  @jax.jit
  def ref_fn(params, extra, batch):
    token_logps, _ = scoring.pair_token_logps(nnx.merge(setup.graphdef, params, extra), batch, chunk)
    s = jnp.sum(token_logps, axis=-1)
    return s[:s.shape[0] // 2], s[s.shape[0] // 2:]

  table, k = {}, 0
  for batch in plan.batches:  # The reference (pi_t) log-probs of every pair, once.
    rc, rr = jax.device_get(ref_fn(state.params, state.extra, batch))
    for i in np.flatnonzero(scoring.nonempty_rows(batch)):
      table[scoring.row_key(batch, i)] = (float(rc[i]), float(rr[i]), float(consistency[plan.index[k]]))
      k += 1
  del state
  pairs = PairTable(table)
  data_iter = inputs_lib.AttachedBatches(
      inputs_lib.train_iterator(records, tokenizer, cfg.data, "preference", cfg.seed * 1000 + t, shared_prompt=False),
      pairs)
  results = loop_lib.train(config=cfg.loop, workdir=workdir, setup=setup, step_fn=step_fn, data_iter=data_iter,
                           mesh=mesh, run_config=dataclasses.asdict(cfg))
  adapter_dir = os.path.join(workdir, "adapters") if cfg.model.lora else None
  return artifacts.save_policy(setup, results["state"], os.path.join(workdir, "model"),
                               tokenizer=tokenizer, adapter_dir=adapter_dir)


def _write_json(path: str, value: dict) -> None:
  if distributed.is_primary():
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
      json.dump(value, f, indent=2)
    os.replace(tmp, path)


def run(cfg: SelfRewardingConfig, workdir: str, inputs: dict) -> dict:
  """T self-rewarding iterations from `model.init_from` (see the module docstring); returns {"model_dir",
  "metrics"} and writes `workdir/results.json`."""
  context = inputs_lib.stage_context(cfg, inputs)
  world, tokenizer = context.world, context.tokenizer
  start_path = common.resolve_path(cfg.model.init_from, inputs)
  base, base_config = from_pretrained(common.resolve_path(cfg.reference, inputs))
  start_policy, _ = from_pretrained(start_path)
  eos_ids = inputs_lib.end_ids(tokenizer, base_config, world)
  gold_fn = gold_scorer(world)
  rng = jax.random.PRNGKey(cfg.seed)
  eval_prompts = _prompt_arrays(tokenizer, world.prompts(cfg.num_eval_prompts, "test"))
  eval_rng = jax.random.fold_in(rng, 0)  # The same held-out samples' keys in every iteration and arm.
  train_texts = world.prompts(cfg.num_prompts * cfg.num_iterations, "train")
  os.makedirs(workdir, exist_ok=True)
  metrics = {f"iter0/{k}": v for k, v in _evaluate(start_policy, start_policy, eval_prompts, eval_rng, cfg, gold_fn,
                                                   eos_ids, tokenizer.pad_id).items()}
  policy_path, previous, chunk = start_path, None, cfg.sample_batch_size * cfg.num_samples
  for t in range(1, cfg.num_iterations + 1):
    iter_dir = os.path.join(workdir, f"iter{t}")
    done = os.path.join(iter_dir, "iteration.json")
    if os.path.exists(done):
      with open(done) as f:
        record = json.load(f)
      print(f"[self_rewarding] iteration {t}: done, reusing {iter_dir}", flush=True)
    else:
      policy, _ = from_pretrained(policy_path)
      texts = train_texts[(t - 1) * cfg.num_prompts:t * cfg.num_prompts]
      ids, mask = _prompt_arrays(tokenizer, texts)
      tokens, rmask, _ = _sample(policy, ids, mask, jax.random.fold_in(rng, t), cfg, eos_ids, tokenizer.pad_id,
                                 cfg.num_samples)
      n = cfg.num_samples
      ids_R, mask_R = np.repeat(ids, n, axis=0), np.repeat(mask, n, axis=0)
      logp_base = _sequence_logps(base, ids_R, mask_R, tokens, rmask, chunk)
      reward = _sequence_logps(policy, ids_R, mask_R, tokens, rmask, chunk) - logp_base
      if previous is None:  # M0 ranks by its length-normalized likelihood (no reference to divide by).
        prev_reward = logp_base / np.maximum(rmask.sum(-1), 1)
      else:
        prev_reward = _sequence_logps(previous, ids_R, mask_R, tokens, rmask, chunk) - logp_base
      gold = np.concatenate([np.asarray(gold_fn(ids_R[s:s + chunk], mask_R[s:s + chunk], tokens[s:s + chunk],
                                                rmask[s:s + chunk])) for s in range(0, ids_R.shape[0], chunk)])
      labels = label_pairs(reward.reshape(-1, n), prev_reward.reshape(-1, n), gold.reshape(-1, n))
      keep = np.flatnonzero(labels["keep"])
      rates = labels["consistency"][keep]
      mean_rate = float(np.nanmean(rates)) if np.isfinite(rates).any() else 1.0
      if cfg.consistency == "off":
        applied = np.ones(keep.size)
      elif cfg.consistency == "average":
        applied = np.full(keep.size, mean_rate)
      else:
        applied = np.where(np.isfinite(rates), rates, mean_rate)
      tokens_BxNxT = tokens.reshape(-1, n, tokens.shape[-1])
      lengths_BxN = rmask.sum(-1).reshape(-1, n)

      def text(b, j):
        return tokenizer.decode(tokens_BxNxT[b, j, :lengths_BxN[b, j]])

      records = [PreferenceRecord(texts[b], text(b, labels["best"][b]), text(b, labels["worst"][b]),
                                  source=f"self_rewarding:iter{t}:{b}") for b in keep]
      policy_path = _train_iteration(cfg, t, policy_path, records, applied, context, iter_dir)
      model, _ = from_pretrained(policy_path)
      record = {f"iter{t}/{k}": v for k, v in _evaluate(model, start_policy, eval_prompts, eval_rng, cfg, gold_fn,
                                                        eos_ids, tokenizer.pad_id).items()}
      gold_tau = labels["gold_tau"][keep]
      record.update({f"iter{t}/consistency": mean_rate,
                     f"iter{t}/consistency_applied": float(np.mean(applied)) if applied.size else 1.0,
                     f"iter{t}/label_agreement": float(np.mean(labels["agreement"][keep])) if keep.size else 0.5,
                     f"iter{t}/reward_gold_tau": float(np.nanmean(gold_tau)) if np.isfinite(gold_tau).any() else 0.0,
                     f"iter{t}/pairs": float(keep.size)})
      _write_json(done, record)
      print(f"[self_rewarding] iteration {t}: " + ", ".join(f"{k.split('/', 1)[1]}={v:.4g}" for k, v in record.items()
                                                             if "_lower" not in k and "_upper" not in k), flush=True)
    metrics.update(record)
    previous, _ = from_pretrained(start_path if t == 1 else os.path.join(workdir, f"iter{t - 1}", "model"))  # pi_t
    policy_path = os.path.join(iter_dir, "model")  # pi_{t+1}
  last = cfg.num_iterations
  metrics.update({"gold": metrics[f"iter{last}/gold"], "kl": metrics[f"iter{last}/kl"],
                  "gold_gain": metrics[f"iter{last}/gold"] - metrics["iter0/gold"]})
  common.write_results(workdir, metrics)
  return {"model_dir": policy_path, "metrics": metrics}
