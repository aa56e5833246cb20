"""The "reward_heads" stage: reward models on a FROZEN pretrained backbone, in minutes on a CPU.

Full reward-model finetuning (the "reward" stage) runs the backbone forward AND backward on every pair at every
step: hours for a 135M model on a 2-core CPU. With the backbone frozen, the reward of a sequence is a head applied
to one vector, the final-norm hidden state at its last token (where RewardModel reads rewards:
`models.heads.gather_last`), so this stage

  1. scores the preference data ONCE with the backbone and caches those vectors for prompt + chosen and
     prompt + rejected (`features.npz` in the stage directory; one forward per pair, in the layout
     `data.shared_prompt` chooses, through `train.scoring.pair_rewards`), then
  2. trains linear or two-layer ("mlp") Bradley-Terry heads on the cache through the shared loop (checkpoints,
     exact resume, metrics, held-out accuracy at every evaluation): thousands of steps take seconds.

The feature pass is the only cost that grows with the model, and it is paid once: the cache is reused on a re-run
and by later stages (`features_from`, e.g. "stage:rm_linear"), and rebuilt when its key changes: the backbone's
parameters, its ModelConfig, or the pairs' token ids after truncation (so the data, the tokenizer, max_length and
max_prompt_length). Full finetuning stays available through the "reward" stage (and pays off on accelerators).

Members (`num_members` = K): K heads with their own init (member k: `RewardHead(..., rngs=nnx.Rngs(member_key(seed,
k)))`) and their own data order (member k's permutation of the training pairs is seeded by seed + k, as in the
reward stage); their steps are vmapped (each member's own gradient normalization, clipping and optimizer state).
The loss is `losses.reward.bradley_terry_loss` with the reward stage's margin / label-smoothing / centering options.

The cache also records which records its rows are: `num_train` (rows with index < num_train are training pairs)
and `records_sha256` (`artifacts.records_digest` of the train + held-out records, in order), so a stage that reads the rows by
index (pal, features="cache") can check that its own data section gives the same records.

Saved result (`rm_dir`): a normal jaxrlhf reward model, a RewardEnsemble of K members that all hold the frozen
backbone and member k's trained head (`artifacts.save_reward_model`), so reward_eval, best-of-N and RL load it like
any other (`artifacts.shared_backbone_model` runs such an ensemble as one backbone with K heads). The rewards it
gives equal the heads applied to the cached features.

Timing: `time/features_s` (this run's feature step: the pass itself, or only tokenizing and hashing on a cache
hit), `time/features_cached_s` (what the cached pass took when it ran) and `time/heads_s` (head training through
the loop, evaluations included).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import time
from typing import Any, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from jaxrlhf.config import ConfigError, field, stage_ref
from jaxrlhf.evaluation import pairwise
from jaxrlhf.losses import reward as reward_losses
from jaxrlhf.models.heads import HeadConfig, RewardHead
from jaxrlhf.models.reward_model import RewardEnsemble
from jaxrlhf.parallel import MeshConfig
from jaxrlhf.parallel import distributed
from jaxrlhf.parallel.sharding import batch_sharding
from jaxrlhf.stages import artifacts
from jaxrlhf.stages import common
from jaxrlhf.stages import inputs as inputs_lib
from jaxrlhf.train import loop as loop_lib
from jaxrlhf.train import metrics as metrics_lib
from jaxrlhf.train import optim
from jaxrlhf.train import scoring
from jaxrlhf.train import state as state_lib

FEATURES_FILE = "features.npz"
_FEATURES_VERSION = 1  # Bump when the features' definition changes, so old caches are rebuilt.


@dataclasses.dataclass(frozen=True)
class HeadLossConfig:
  """Bradley-Terry options, as the reward stage's: margin "none", "margin" (the pairs' `margin`, see
  data.margin_from) or "adaptive" (`adaptive_margin(margin, margin_scale, clip_min=margin_clip_min)`);
  label smoothing; reward centering (center_coeff * (r_c + r_r)^2)."""
  margin: str = field("none", choices=("none", "margin", "adaptive"))
  margin_scale: float = field(1.0)
  margin_clip_min: float | None = field(None)
  center_coeff: float = field(0.0, min=0.0)
  label_smoothing: float = field(0.0, min=0.0, max=0.49)


@dataclasses.dataclass(frozen=True)
class RewardHeadsConfig:
  """The "reward_heads" stage.

  model: the frozen backbone (`init_from` required: a HF folder, a .gguf or "stage:<name>").
  data: the pairs (held-out ones for evaluation: data.eval_paths / eval_fraction / num_eval); data.batch_size is
    the head-training batch (per member), data.eval_batch_size (or batch_size) the feature pass's.
  head: "linear" or "mlp" (SiLU, hidden_dim, 0 = the model width).
  num_members: K heads trained side by side (different init and data order).
  features_from: "stage:<name>" (an earlier reward_heads stage) or a features file to reuse when its key matches
    this stage's (otherwise the features are computed here).
  mesh / num_devices: the devices the heads train on (tiny: one device is plenty).
  """
  seed: int = field(0)
  model: common.ModelSpec = field(default_factory=common.ModelSpec)
  data: inputs_lib.DataSpec = field(default_factory=inputs_lib.DataSpec)
  head: str = field("linear", choices=("linear", "mlp"))
  hidden_dim: int = field(0, min=0)
  num_members: int = field(1, min=1)
  loss: HeadLossConfig = field(default_factory=HeadLossConfig)
  optimizer: optim.OptimizerConfig = field(default_factory=optim.OptimizerConfig)
  loop: loop_lib.LoopConfig = field(default_factory=loop_lib.LoopConfig)
  features_from: str = stage_ref("features")
  mesh: MeshConfig = field(default_factory=MeshConfig)
  num_devices: int = field(1, min=0)

  def validate(self, path: str) -> None:
    if not self.model.init_from:
      raise ConfigError(f"{path}.model.init_from: required (the frozen backbone: a HF folder, a .gguf file or "
                        "'stage:<name>')")
    if self.model.lora:
      # The backbone is frozen and only the heads train: adapters would have nothing to learn and are never built.
      raise ConfigError(f"{path}.model.lora: not used by reward_heads (the backbone is frozen; only the heads "
                        f"train), got {dict(self.model.lora)!r}; leave it {{}} or use the 'reward' stage for LoRA")
    common.check_accumulation(self.data.batch_size, self.optimizer.grad_accum_steps, path)

  def head_config(self) -> HeadConfig:
    return HeadConfig(kind=self.head, hidden_dim=self.hidden_dim or None)

# ------------------------------------------------------------------------------------------------ features
feature_model = common.feature_model  # The frozen backbone with an identity "attributes" head.


def params_digest(pure: Mapping[str, Any]) -> str:
  """A hex digest of a parameter tree: every leaf's path, dtype, shape and bytes."""
  h = hashlib.blake2b(digest_size=16)
  for path, leaf in sorted(jax.tree_util.tree_flatten_with_path(dict(pure))[0], key=lambda kv: str(kv[0])):
    x = np.ascontiguousarray(np.asarray(leaf))
    h.update(f"{jax.tree_util.keystr(path)}|{x.dtype}|{x.shape}|".encode())
    h.update(memoryview(x).cast("B"))
  return h.hexdigest()


def features_key(model_config: Any, backbone_digest: str, tokens_sha256: str) -> str:
  """The cache key of a feature pass: the backbone's config and parameters and the pairs' token ids."""
  spec = {"version": _FEATURES_VERSION, "model": dataclasses.asdict(model_config), "params": backbone_digest,
          "tokens": tokens_sha256}
  return hashlib.sha256(json.dumps(spec, sort_keys=True, default=str).encode()).hexdigest()


def compute_features(model_config: Any, backbone: Mapping[str, Any], plan: inputs_lib.ScoringBatches
                     ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """(chosen_NxD, rejected_NxD float32 features, index_N record indices ascending) of the pairs of `plan`."""
  graphdef, state = nnx.split(feature_model(model_config, backbone))

  @jax.jit
  def features(state, batch):
    return scoring.pair_rewards(nnx.merge(graphdef, state), batch, attributes=True)

  start, chosen, rejected = time.time(), [], []
  for i, batch in enumerate(plan.batches):
    rows = scoring.nonempty_rows(batch)
    f_c, f_r = jax.device_get(features(state, batch))
    chosen.append(np.asarray(f_c, np.float32)[rows])
    rejected.append(np.asarray(f_r, np.float32)[rows])
    if len(plan.batches) >= 20 and (i + 1) % max(1, len(plan.batches) // 20) == 0:
      print(f"[reward_heads] features: {i + 1}/{len(plan.batches)} batches ({time.time() - start:.0f} s)",
            flush=True)
  d = model_config.embed_dim
  chosen_NxD = np.concatenate(chosen) if chosen else np.zeros((0, d), np.float32)
  rejected_NxD = np.concatenate(rejected) if rejected else np.zeros((0, d), np.float32)
  order = np.argsort(plan.index)
  return chosen_NxD[order], rejected_NxD[order], plan.index[order]


def load_features(path: str, key: str) -> dict | None:
  """The cached features at `path` if its key is `key`, else None."""
  if not path or not os.path.exists(path):
    return None
  with np.load(path) as f:
    if str(f["key"]) != key:
      return None
    return {k: f[k] for k in f.files}


def save_features(path: str, key: str, chosen_NxD: np.ndarray, rejected_NxD: np.ndarray, index_N: np.ndarray,
                  seconds: float, num_train: int, records_sha256: str) -> None:
  """Writes the cache atomically (a partial file is never read as a cache), with the records its rows index
  (`num_train`, `records_sha256`). Process 0 writes (every process computed the same features; concurrent writers
  of one tmp name would race on a shared file system); the others wait until the file exists."""
  if distributed.is_primary():
    tmp = path + ".tmp.npz"
    np.savez(tmp, key=np.asarray(key), chosen=chosen_NxD, rejected=rejected_NxD, index=index_N,
             seconds=np.asarray(seconds), num_train=np.asarray(num_train, np.int64),
             records_sha256=np.asarray(records_sha256))
    os.replace(tmp, path)
  distributed.barrier(f"reward_heads.save_features:{path}")


def cached_features(cfg: RewardHeadsConfig, workdir: str, inputs: Mapping[str, Any], model_config: Any,
                    backbone: Mapping[str, Any], records: Sequence[Any], tokenizer: Any, num_train: int
                    ) -> tuple[dict, dict]:
  """({"chosen", "rejected" (N, D), "index" (N,), "seconds"}, report) for `records` (the first `num_train` of them
  the training pairs), from the first cache whose key matches (features_from, then the stage's own file) or from a
  new feature pass saved in `workdir`."""
  data = cfg.data
  shared, layout = inputs_lib.choose_shared_prompt(data, list(records), tokenizer, model_config,
                                                   with_lm_head=False)
  plan = inputs_lib.scoring_batches(records, tokenizer, data, shared_prompt=shared)
  key = features_key(model_config, params_digest(backbone), plan.report["tokens_sha256"])
  report = {**plan.report, "shared_prompt": layout, "key": key}
  own = os.path.join(workdir, FEATURES_FILE)
  digest = artifacts.records_digest(records)
  candidates = ([common.resolve_path(cfg.features_from, inputs, "features")] if cfg.features_from else []) + [own]
  for path in candidates:
    cached = load_features(path, key)
    if cached is not None:
      print(f"[reward_heads] reusing the features cached in {path}", flush=True)
      stale = (cached.get("num_train") is None or int(cached["num_train"]) != num_train
               or str(cached.get("records_sha256")) != digest)
      if path == own and stale:  # An older cache (or another split of the same pairs): describe this run's records.
        save_features(own, key, cached["chosen"], cached["rejected"], cached["index"], float(cached["seconds"]),
                      num_train, digest)
      return cached, {**report, "path": path, "reused": True, "seconds": 0.0}
    if os.path.exists(path):
      print(f"[reward_heads] {path} holds features of another backbone / data / max_length: recomputing",
            flush=True)
  start = time.time()
  chosen, rejected, index = compute_features(model_config, backbone, plan)
  seconds = time.time() - start
  os.makedirs(workdir, exist_ok=True)
  save_features(own, key, chosen, rejected, index, seconds, num_train, digest)
  print(f"[reward_heads] feature pass: {index.size} pairs in {seconds:.1f} s -> {own}", flush=True)
  return ({"chosen": chosen, "rejected": rejected, "index": index, "seconds": np.asarray(seconds)},
          {**report, "path": own, "reused": False, "seconds": round(seconds, 2)})

# ------------------------------------------------------------------------------------------------ heads
def member_key(seed: int, k: int) -> jax.Array:
  """The init key of member k's head."""
  return jax.random.fold_in(jax.random.PRNGKey(seed), k)


def stacked_heads(embed_dim: int, head: HeadConfig, num_members: int, seed: int, param_dtype: Any = jnp.float32
                  ) -> RewardHead:
  """K RewardHeads stacked on a leading member axis (the layout of RewardEnsemble.members.head); member k is
  `RewardHead(embed_dim, head, rngs=nnx.Rngs(member_key(seed, k)))`."""
  keys = jnp.stack([member_key(seed, k) for k in range(num_members)])

  @nnx.vmap(in_axes=0, out_axes=0, transform_metadata={nnx.PARTITION_NAME: "ensemble"})
  def make(key):
    return RewardHead(embed_dim, head, rngs=nnx.Rngs(key), param_dtype=param_dtype)

  return make(keys)


def head_loss_fn(loss: HeadLossConfig) -> state_lib.LossFn:
  """loss_fn(head: RewardHead, batch, rng) -> (weighted sum of per-pair BT losses, sum of weights, metrics) on a
  batch of cached features {"chosen_features", "rejected_features" (B, D), "margin", "weight" (B,)}."""

  def loss_fn(head, batch, rng):
    del rng
    w_B = batch["weight"].astype(jnp.float32)
    r_c, r_r = head(batch["chosen_features"]), head(batch["rejected_features"])
    margin = None
    if loss.margin != "none":
      m = jnp.where(jnp.isnan(batch["margin"]), 0.0, batch["margin"]).astype(jnp.float32)
      margin = m if loss.margin == "margin" else reward_losses.adaptive_margin(
          m, loss.margin_scale, clip_min=loss.margin_clip_min)
    per_pair, _ = reward_losses.bradley_terry_loss(r_c, r_r, margin=margin, label_smoothing=loss.label_smoothing,
                                                   center_coeff=loss.center_coeff)
    total = jnp.sum(w_B)
    metrics = {
        "rewards/chosen": metrics_lib.Avg(jnp.sum(w_B * r_c), total),
        "rewards/rejected": metrics_lib.Avg(jnp.sum(w_B * r_r), total),
        "rewards/margin": metrics_lib.Avg(jnp.sum(w_B * (r_c - r_r)), total),
        "rewards/accuracy": metrics_lib.Avg(jnp.sum(w_B * (r_c > r_r)), total),
        "examples": metrics_lib.Sum(jnp.sum((w_B > 0).astype(jnp.float32))),
    }
    return jnp.sum(w_B * per_pair), total, metrics

  return loss_fn


def heads_setup(embed_dim: int, head: HeadConfig, num_members: int, optimizer: optax.GradientTransformation,
                seed: int, mesh: Any, param_dtype: Any = jnp.float32) -> state_lib.StateSetup:
  """A TrainState of K stacked heads whose optimizer state is member k's own (the optimizer vmapped)."""
  stacked = optax.GradientTransformation(jax.vmap(optimizer.init), lambda *_: (_ for _ in ()).throw(
      NotImplementedError("the stacked heads' updates run per member in make_heads_step")))
  return state_lib.init_train_state(lambda key: stacked_heads(embed_dim, head, num_members, seed, param_dtype),
                                    stacked, seed, mesh=mesh)


def make_heads_step(member_graphdef: nnx.GraphDef, loss_fn: state_lib.LossFn,
                    optimizer_config: optim.OptimizerConfig, num_members: int) -> state_lib.StepFn:
  """The stacked step: `make_train_step` of one head, vmapped over the member axis of state and batch (batches
  (K, B, ...)). Metrics: member-summed Avg / Sum (Sum over members divided by K), member means of scalars, and
  `members/loss_<k>`."""
  member_step = state_lib.make_train_step(member_graphdef, loss_fn, optim.make_optimizer(optimizer_config),
                                          grad_accum_steps=optimizer_config.grad_accum_steps,
                                          schedule=optim.make_schedule(optimizer_config))

  def step_fn(state, batch_K):
    def one(params, extra, opt_state, k, batch):
      s = state_lib.TrainState(step=state.step, params=params, extra=extra, opt_state=opt_state,
                               rng=jax.random.fold_in(state.rng, k))
      new, metrics = member_step(s, batch)
      return new.params, new.opt_state, metrics

    params, opt_state, metrics = jax.vmap(one)(state.params, state.extra, state.opt_state,
                                               jnp.arange(num_members), batch_K)
    out = {}
    for name, v in metrics.items():
      if isinstance(v, metrics_lib.Avg):
        out[name] = metrics_lib.Avg(jnp.sum(v.total), jnp.sum(v.count))
      elif isinstance(v, metrics_lib.Sum):
        out[name] = metrics_lib.Sum(jnp.sum(v.value) / num_members)
      else:
        out[name] = jnp.mean(v)
    if num_members > 1:
      for k in range(num_members):
        out[f"members/loss_{k}"] = metrics_lib.Avg(metrics["loss"].total[k], metrics["loss"].count[k])
    return state.replace(step=state.step + 1, params=params, opt_state=opt_state), out

  return step_fn


class FeatureIterator:
  """Endless (K, B, ...) batches of cached pair features: member k reads the N training pairs in its own order, a
  fresh permutation seeded by (seed + k, epoch) each epoch; get_state/set_state for an exact resume.

  Batches: chosen_features, rejected_features (K, B, D) float32, margin (K, B) (NaN where absent), weight (K, B).
  """

  def __init__(self, chosen_NxD: np.ndarray, rejected_NxD: np.ndarray, margin_N: np.ndarray, batch_size: int,
               seed: int, num_members: int):
    if chosen_NxD.shape[0] < batch_size:
      raise ValueError(f"data.batch_size: {batch_size} is more than the {chosen_NxD.shape[0]} training pairs")
    self.chosen, self.rejected, self.margin = chosen_NxD, rejected_NxD, np.asarray(margin_N, np.float32)
    self.batch_size, self.seed, self.num_members = batch_size, seed, num_members
    self.epoch, self.pos = 0, 0

  def __iter__(self):
    return self

  def __next__(self) -> dict[str, np.ndarray]:
    n = self.chosen.shape[0]
    if self.pos + self.batch_size > n:
      self.epoch, self.pos = self.epoch + 1, 0
    idx_KxB = np.stack([np.random.default_rng([self.seed + k, self.epoch]).permutation(n)
                        [self.pos:self.pos + self.batch_size] for k in range(self.num_members)])
    self.pos += self.batch_size
    return {"chosen_features": self.chosen[idx_KxB], "rejected_features": self.rejected[idx_KxB],
            "margin": self.margin[idx_KxB], "weight": np.ones(idx_KxB.shape, np.float32)}

  def get_state(self) -> dict:
    return {"epoch": self.epoch, "pos": self.pos}

  def set_state(self, state: dict) -> None:
    self.epoch, self.pos = int(state["epoch"]), int(state["pos"])


def member_rewards(member_graphdef: nnx.GraphDef, params: Any, extra: Any, features_NxD: Any) -> jax.Array:
  """(K, N) rewards of each stacked head on (N, D) features."""
  return jax.vmap(lambda p, e: nnx.merge(member_graphdef, p, e)(features_NxD))(params, extra)


def make_eval_fn(member_graphdef: nnx.GraphDef, chosen_NxD: np.ndarray, rejected_NxD: np.ndarray):
  """state -> {"accuracy" (of the member mean), "accuracy_<k>" (K > 1)} on held-out features; ties are wrong."""
  rewards = jax.jit(lambda params, extra, c, r: (member_rewards(member_graphdef, params, extra, c),
                                                 member_rewards(member_graphdef, params, extra, r)))

  def eval_fn(state):
    r_c, r_r = (np.asarray(x, np.float64) for x in jax.device_get(rewards(state.params, state.extra, chosen_NxD,
                                                                          rejected_NxD)))
    out = {"accuracy": pairwise.pairwise_accuracy(r_c.mean(0), r_r.mean(0))}
    if r_c.shape[0] > 1:
      out.update({f"accuracy_{k}": pairwise.pairwise_accuracy(r_c[k], r_r[k]) for k in range(r_c.shape[0])})
    return out

  return eval_fn


def save_heads(out_dir: str, model_config: Any, head: HeadConfig, backbone: Mapping[str, Any],
               heads: Mapping[str, Any], tokenizer: Any = None) -> str:
  """Saves a RewardEnsemble whose K members hold the frozen `backbone` and the K stacked `heads` (pure dicts)."""
  num_members = jax.tree.leaves(heads)[0].shape[0]
  graphdef, state = nnx.split(nnx.eval_shape(lambda: RewardEnsemble(model_config, head, num_members,
                                                                    rngs=nnx.Rngs(0))))
  # Broadcast views: the K copies of the backbone are materialized only while serializing.
  members = {"backbone": jax.tree.map(lambda x: np.broadcast_to(np.asarray(x), (num_members, *np.shape(x))),
                                      dict(backbone)),
             "head": jax.tree.map(np.asarray, dict(heads))}
  nnx.replace_by_pure_dict(state, {"members": members})
  return artifacts.save_reward_model(out_dir, model_config, head, num_members, state, tokenizer=tokenizer)

# ------------------------------------------------------------------------------------------------ the stage
def _split(features: dict, num_train: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
  train = features["index"] < num_train
  return features["index"][train], features["index"][~train], train, ~train


def run(cfg: RewardHeadsConfig, workdir: str, inputs: dict) -> dict:
  """Features (cached), K heads trained through the loop with held-out accuracy, the reward model saved to
  `workdir/rm`; returns the outputs (rm_dir, features, data_report, timing in metrics)."""
  data = cfg.data
  context = inputs_lib.stage_context(cfg, inputs)
  _, mesh, model_config, pretrained, tokenizer = context
  train_records, eval_records, report = inputs_lib.prepared_pairs(data, context, inputs)
  backbone = {k: v for k, v in pretrained.items() if k != "lm_head"}
  records = list(train_records) + list(eval_records)
  start = time.time()
  features, feature_report = cached_features(cfg, workdir, inputs, model_config, backbone, records, tokenizer,
                                             len(train_records))
  features_s = time.time() - start
  report = {**report, "features": feature_report}
  train_idx, eval_idx, train_sel, eval_sel = _split(features, len(train_records))
  if not train_idx.size:
    raise ValueError(f"config.data: no training pair is short enough to score (data.max_length={data.max_length})")
  print(f"[reward_heads] {train_idx.size} training and {eval_idx.size} held-out pairs "
        f"({feature_report['dropped_too_long']} dropped as too long)", flush=True)
  margins = np.asarray([np.nan if records[i].margin is None else records[i].margin for i in train_idx], np.float32)

  head = cfg.head_config()
  d, param_dtype = model_config.embed_dim, jnp.dtype(model_config.param_dtype)
  setup = heads_setup(d, head, cfg.num_members, optim.make_optimizer(cfg.optimizer), cfg.seed, mesh, param_dtype)
  member_graphdef = nnx.graphdef(nnx.eval_shape(lambda: RewardHead(d, head, rngs=nnx.Rngs(0),
                                                                   param_dtype=param_dtype)))
  step_fn = make_heads_step(member_graphdef, head_loss_fn(cfg.loss), cfg.optimizer, cfg.num_members)
  data_iter = FeatureIterator(features["chosen"][train_sel], features["rejected"][train_sel], margins,
                              data.batch_size, cfg.seed, cfg.num_members)
  eval_fn = (make_eval_fn(member_graphdef, features["chosen"][eval_sel], features["rejected"][eval_sel])
             if eval_idx.size else None)
  start = time.time()
  results = loop_lib.train(config=cfg.loop, workdir=workdir, setup=setup, step_fn=step_fn, data_iter=data_iter,
                           mesh=mesh, batch_shardings=batch_sharding(mesh, axis=1), eval_fn=eval_fn,
                           run_config=dataclasses.asdict(cfg))
  heads_s = time.time() - start
  state = results["state"]
  rm_dir = save_heads(os.path.join(workdir, "rm"), model_config, head, backbone, nnx.to_pure_dict(state.params),
                      tokenizer)
  metrics = {**results["metrics"], "time/features_s": round(features_s, 2),
             "time/features_cached_s": round(float(features["seconds"]), 2), "time/heads_s": round(heads_s, 2),
             "data/dropped_too_long": float(feature_report["dropped_too_long"])}
  print(f"[reward_heads] feature pass {features_s:.1f} s ({'reused' if feature_report['reused'] else 'computed'}), "
        f"heads {heads_s:.1f} s; eval accuracy {metrics.get('eval/accuracy', float('nan')):.4f}", flush=True)
  return common.stage_outputs({**results, "metrics": metrics}, rm_dir=rm_dir, num_members=cfg.num_members,
                              features=feature_report["path"], data_report=report)
