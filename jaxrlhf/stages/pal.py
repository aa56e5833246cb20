"""The "pal" stage: PAL's ideal-point reward model trained on pairs labelled by user, its few-shot fit to unseen users,
and a single Bradley-Terry model on the same pairs (Chen, Chen, Rege, Vinayak 2024, "PAL: Pluralistic Alignment
Framework for Learning from Heterogeneous Preferences", arXiv:2406.08469; the model is `jaxrlhf.models.pal`).

Both models read FIXED response features (PAL's recipe: frozen foundation-model representations plus small trained
layers), from
  features="attributes": each response's attribute vector (in the synthetic world its 5 gold components, an oracle
    representation: a user's reward is linear in it), or
  features="cache": the frozen-backbone feature cache of a "reward_heads" stage (`features_from`, e.g.
    "stage:rm_linear"; its `features.npz` rows index the train + held-out records of THIS stage's `data`, which must
    therefore be the reward_heads stage's data section: a cache that records its records (`records_sha256`,
    `num_train`) and disagrees is an error; an older cache without them is read with a warning).

Users are the records' `annotator` ids. Users in `unseen_users` are held out of training entirely; the others
("seen") train PAL-A (their mixture logits included) and the baseline. The baseline is one reward for everybody,
r(x) = v . f(x) + b with the same projector f, loss (BT), optimizer, steps and batches.

Reported (metrics):
  seen/*: per-user accuracy on the seen users' held-out pairs (ties wrong), macro-averaged over users: pal, bt and,
    in the world, `ceiling` (the user's true weights over the gold components against the same noisy labels);
    pal_minus_bt is the macro difference.
  unseen/*: few-shot (the paper's protocol): f and the prototypes frozen, each unseen user's K mixture logits fitted
    on their first n training-split pairs (`models.pal.fit_user_logits`), accuracy on their held-out pairs for every
    n in `shots`; n = 0 is the uniform mixture; bt and ceiling on the same pairs.
Per-user values go to `per_user.json`; `results.json` holds the metrics.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
import warnings
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from jaxrlhf.config import ConfigError, field, stage_ref
from jaxrlhf.losses import pal as pal_losses
from jaxrlhf.models import pal as pal_model
from jaxrlhf.parallel import distributed
from jaxrlhf.stages import artifacts
from jaxrlhf.stages import common
from jaxrlhf.stages import inputs as inputs_lib
from jaxrlhf.train import optim


@dataclasses.dataclass(frozen=True)
class PALConfig:
  """The "pal" stage.

  data: pairs with `annotator` ids (world: WorldConfig.annotators; files: an annotator column); data.num_train /
    num_eval / batch_size as usual; transforms, curation and margins are not used (must stay "none"), nor are
    attribute_noise / attribute_levels (must stay 0).
  features: "attributes" or "cache" (with features_from: "stage:<reward_heads stage>" or a features.npz path).
  variant: "a" (PAL-A; PAL-B needs prompt features, which neither source provides: see models.pal).
  distance: PAL-A's "euclidean" (the authors' code) or "squared" distance.
  projector / pref_dim / hidden_dim: the shared map f (and the baseline's), "mlp" (the authors' two layers) or
    "linear"; hidden_dim 0 = pref_dim.
  num_prototypes: K.
  user_balanced: weight pairs by 1 / the user's pair count (the authors' logistic_w), both models.
  proto_bound / proto_bound_weight: the prototype-norm hinge (0 weight: off).
  unseen_users: annotator ids held out for the few-shot test; shots: n comparisons per unseen user.
  fewshot_steps / fewshot_lr: the Adam fit of the new users' logits.
  num_steps: training steps of each model.
  optimizer: the optax optimizer of both models; grad_accum_steps must stay 1 (each step is one batch).
  """
  seed: int = field(0)
  data: inputs_lib.DataSpec = field(default_factory=inputs_lib.DataSpec)
  features: str = field("attributes", choices=("attributes", "cache"))
  features_from: str = stage_ref("features")
  variant: str = field("a", choices=("a",))
  distance: str = field("euclidean", choices=pal_model.DISTANCES)
  projector: str = field("mlp", choices=pal_model.PROJECTORS)
  pref_dim: int = field(16, min=1)
  hidden_dim: int = field(0, min=0)
  num_prototypes: int = field(3, min=1)
  user_balanced: bool = field(False)
  proto_bound: float = field(1.0, min=0.0)
  proto_bound_weight: float = field(0.0, min=0.0)
  unseen_users: tuple[str, ...] = field(())
  shots: tuple[int, ...] = field((1, 5, 10, 20))
  fewshot_steps: int = field(200, min=1)
  fewshot_lr: float = field(0.1, min=0.0)
  num_steps: int = field(500, min=1)
  optimizer: optim.OptimizerConfig = field(default_factory=optim.OptimizerConfig)

  def validate(self, path: str) -> None:
    if self.features == "cache" and not self.features_from:
      raise ConfigError(f"{path}.features_from: required with {path}.features='cache' ('stage:<reward_heads stage>' "
                        "or a features.npz path)")
    for key in ("transform", "curate", "margin_from"):
      if getattr(self.data, key) != "none":
        raise ConfigError(f"{path}.data.{key}: must be 'none' (the stage reads the pairs as labelled), got "
                          f"{getattr(self.data, key)!r}")
    for key in ("attribute_noise", "attribute_levels"):
      # Applied by `inputs.prepared_pairs` only; PAL reads `inputs.preference_records`, the attributes as labelled.
      if getattr(self.data, key):
        raise ConfigError(f"{path}.data.{key}: must be 0 (the stage reads the pairs' attribute vectors as "
                          f"labelled and does not apply it), got {getattr(self.data, key)!r}")
    if self.optimizer.grad_accum_steps != 1:
      raise ConfigError(f"{path}.optimizer.grad_accum_steps: must be 1 (each of the num_steps updates is one "
                        f"data.batch_size batch; PAL does not accumulate), got {self.optimizer.grad_accum_steps}")
    if any(n < 1 for n in self.shots) or list(self.shots) != sorted(set(self.shots)):
      raise ConfigError(f"{path}.shots: {self.shots} must be distinct increasing counts >= 1")
    if len(set(self.unseen_users)) != len(self.unseen_users):
      raise ConfigError(f"{path}.unseen_users: {self.unseen_users} repeats a user")
    if self.data.source == "world":
      names = [n for n, _ in self.data.world.get("annotators", (("gold", ()),))]
      unknown = [u for u in self.unseen_users if u not in names]
      if unknown:
        raise ConfigError(f"{path}.unseen_users: {unknown} are not in {path}.data.world.annotators ({names[:5]}...)")
      if len(names) - len(self.unseen_users) < 1:
        raise ConfigError(f"{path}.unseen_users: every annotator is held out; PAL needs seen users to train on")

# ------------------------------------------------------------------------------------------------ features
def pair_features(cfg: PALConfig, inputs: dict, records: Sequence[Any], num_train: int | None = None
                  ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """(chosen_NxD, rejected_NxD float32, available_N bool) of `records` (train then held-out, in order; the first
  `num_train` the training pairs, default all).

  Raises (features="cache"): ValueError when the cache's rows are not these records: its `records_sha256` differs
  (`artifacts.records_digest`), or, for an older cache without it, an index out of range."""
  n = len(records)
  num_train = n if num_train is None else num_train
  if cfg.features == "attributes":
    missing = [i for i, r in enumerate(records) if r.chosen_attributes is None or r.rejected_attributes is None]
    if missing:
      raise ValueError(f"config.features='attributes': record {missing[0]} has no attribute vectors")
    return (np.asarray([r.chosen_attributes for r in records], np.float32),
            np.asarray([r.rejected_attributes for r in records], np.float32), np.ones(n, bool))
  path = common.resolve_path(cfg.features_from, inputs, "features")
  with np.load(path) as f:
    chosen, rejected, index = f["chosen"], f["rejected"], f["index"]
    cached_train = int(f["num_train"]) if "num_train" in f.files else None
    cached_digest = str(f["records_sha256"]) if "records_sha256" in f.files else None
  if cached_digest is None:
    # A cache written before the records were recorded: only the index range can be checked.
    warnings.warn(f"config.features_from: {path} does not record which records it holds (a cache from before "
                  "records_sha256); cannot check that config.data is the reward_heads stage's data section",
                  stacklevel=2)
  elif cached_digest != artifacts.records_digest(records):
    raise ValueError(f"config.features_from: {path} holds the features of other records than config.data gives "
                     f"(cache: {index.size} scored rows, num_train={cached_train}; config.data: {n} records, "
                     f"num_train={num_train}): its rows would pair these pairs with other pairs' features; use the "
                     "reward_heads stage's data section")
  elif cached_train != num_train:
    # The same records split elsewhere: each row is still its own record's features (PAL trains no head on them).
    print(f"[pal] {path}: the reward_heads stage split the same records at num_train={cached_train}, this stage at "
          f"{num_train}; features are per record, so the rows still match", flush=True)
  if index.size and (index.max() >= n or index.min() < 0):
    raise ValueError(f"config.features_from: {path} indexes record {int(index.max())}, but config.data gives {n} "
                     "records (use the reward_heads stage's data section)")
  out_c = np.zeros((n, chosen.shape[1]), np.float32)
  out_r = np.zeros_like(out_c)
  available = np.zeros(n, bool)
  out_c[index], out_r[index], available[index] = chosen, rejected, True
  return out_c, out_r, available


def world_ceiling(world_cfg: dict, records: Sequence[Any]) -> np.ndarray | None:
  """(N,) 1 where the record's label agrees with its own annotator's true weights over the gold components (the
  best any model of that user can do on the noisy labels), or None when the records carry no attributes."""
  if any(r.chosen_attributes is None for r in records):
    return None
  weights = {name: np.asarray(w, np.float64) for name, w in world_cfg.get("annotators", ())} or {
      "gold": np.ones(5)}
  return np.asarray([float(weights[r.annotator] @ (np.asarray(r.chosen_attributes) - np.asarray(r.rejected_attributes))
                           > 0) for r in records])

# ------------------------------------------------------------------------------------------------ training
class BTBaseline(nnx.Module):
  """One Bradley-Terry reward for all users: r(x) = v . f(x) + b with PAL's projector f."""

  def __init__(self, in_dim: int, pref_dim: int, projector: str, hidden_dim: int, *, rngs: nnx.Rngs):
    self.f = pal_model.Projector(in_dim, pref_dim, projector, hidden_dim, rngs=rngs)
    self.v = nnx.Linear(pref_dim, 1, rngs=rngs)

  def __call__(self, x_NxD: jax.Array, user_N: jax.Array | None = None) -> jax.Array:
    del user_N
    return self.v(self.f(x_NxD))[:, 0]


def train_pairs(model: nnx.Module, cfg: PALConfig, chosen_NxD: np.ndarray, rejected_NxD: np.ndarray, user_N: np.ndarray,
                num_users: int) -> tuple[nnx.Module, dict]:
  """Trains `model(x, user) -> reward` on the pairs with `losses.pal_loss` (+ the prototype bound for PAL-A),
  cfg.num_steps steps of cfg.data.batch_size pairs, epochs in a permutation seeded by cfg.seed; returns the trained
  model and {"loss": final-100-step mean loss, "seconds"}."""
  n, bs = chosen_NxD.shape[0], cfg.data.batch_size
  if n < bs:
    raise ValueError(f"config.data.batch_size: {bs} is more than the {n} training pairs of the seen users")
  counts_U = np.bincount(user_N, minlength=num_users).astype(np.float32) if cfg.user_balanced else None
  graphdef, params = nnx.split(model, nnx.Param)
  opt = optim.make_optimizer(cfg.optimizer)

  def loss_fn(params, c, r, u):
    m = nnx.merge(graphdef, params)
    losses, _ = pal_losses.pal_loss(m(c, u), m(r, u), u, counts_U)
    loss = jnp.mean(losses)
    if isinstance(m, pal_model.PALModel) and cfg.proto_bound_weight:
      loss = loss + cfg.proto_bound_weight * pal_losses.prototype_norm_penalty(m.prototypes[...], cfg.proto_bound)
    return loss

  @jax.jit
  def step(params, opt_state, c, r, u):
    loss, grads = jax.value_and_grad(loss_fn)(params, c, r, u)
    updates, opt_state = opt.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, loss

  opt_state, losses, epoch, pos, start = opt.init(params), [], 0, n, time.time()
  for _ in range(cfg.num_steps):
    if pos + bs > n:
      order, epoch, pos = np.random.default_rng([cfg.seed, epoch]).permutation(n), epoch + 1, 0
    idx = order[pos:pos + bs]
    pos += bs
    params, opt_state, loss = step(params, opt_state, chosen_NxD[idx], rejected_NxD[idx], user_N[idx])
    losses.append(loss)
  final = float(np.mean(np.asarray(jax.device_get(losses[-100:]))))
  return nnx.merge(graphdef, params), {"loss": final, "seconds": round(time.time() - start, 2)}


def per_user_accuracy(correct_N: np.ndarray, user_N: np.ndarray, users: Sequence[int]) -> np.ndarray:
  """(len(users),) mean of correct_N over each user's pairs (NaN for a user with none)."""
  return np.asarray([correct_N[user_N == u].mean() if np.any(user_N == u) else np.nan for u in users])

# ------------------------------------------------------------------------------------------------ the stage
def run(cfg: PALConfig, workdir: str, inputs: dict) -> dict:
  """Trains PAL-A and the BT baseline on the seen users, fits the unseen users few-shot, writes results.json and
  per_user.json; returns {"metrics", "results"}."""
  data = cfg.data
  world = inputs_lib.make_world(data.world) if data.source == "world" else None
  train, held_out, report = inputs_lib.preference_records(data, world)
  records = list(train) + list(held_out)
  is_train = np.arange(len(records)) < len(train)
  names = sorted({r.annotator for r in records if r.annotator is not None})
  if any(r.annotator is None for r in records):
    raise ValueError("config.data: PAL needs every pair labelled by its user (the records' annotator field)")
  unseen = [u for u in cfg.unseen_users if u in names]
  seen = [u for u in names if u not in unseen]
  index = {u: i for i, u in enumerate(seen + unseen)}  # seen users first: PAL's user_logits rows
  user_N = np.asarray([index[r.annotator] for r in records], np.int32)
  chosen, rejected, available = pair_features(cfg, inputs, records, len(train))
  ceiling_N = world_ceiling(data.world, records) if world is not None else None
  num_seen = len(seen)
  is_seen = user_N < num_seen

  fit = is_train & is_seen & available
  models, fits = {}, {}
  for name, make in (("pal", lambda rngs: pal_model.PALModel(
      chosen.shape[1], cfg.pref_dim, cfg.num_prototypes, num_seen, variant=cfg.variant, projector=cfg.projector,
      hidden_dim=cfg.hidden_dim, distance=cfg.distance, rngs=rngs)),
                     ("bt", lambda rngs: BTBaseline(chosen.shape[1], cfg.pref_dim, cfg.projector, cfg.hidden_dim,
                                                    rngs=rngs))):
    model = make(nnx.Rngs(cfg.seed))
    models[name], fits[name] = train_pairs(model, cfg, chosen[fit], rejected[fit], user_N[fit], num_seen)
    print(f"[pal] {name}: final loss {fits[name]['loss']:.4f} ({fits[name]['seconds']} s)", flush=True)

  metrics: dict[str, float] = {}
  per_user: dict[str, Any] = {"seen_users": seen, "unseen_users": unseen}
  bt = models["bt"]
  bt_correct = np.asarray(bt(chosen, user_N) > bt(rejected, user_N), np.float64)

  # Seen users, held-out pairs.
  ev = ~is_train & is_seen & available
  seen_ids = list(range(num_seen))
  pal_correct = np.zeros(len(records))
  pal_correct[ev] = np.asarray(models["pal"](chosen[ev], user_N[ev]) > models["pal"](rejected[ev], user_N[ev]))
  table = {"pal": per_user_accuracy(pal_correct[ev], user_N[ev], seen_ids),
           "bt": per_user_accuracy(bt_correct[ev], user_N[ev], seen_ids)}
  if ceiling_N is not None:
    table["ceiling"] = per_user_accuracy(ceiling_N[ev], user_N[ev], seen_ids)
  for k, v in table.items():
    metrics[f"seen/{k}_accuracy"] = float(np.nanmean(v))
    per_user[f"seen/{k}"] = v.tolist()
  metrics["seen/pal_minus_bt"] = float(np.nanmean(table["pal"] - table["bt"]))
  metrics["seen/pal_pooled_accuracy"] = float(pal_correct[ev].mean())
  metrics["seen/bt_pooled_accuracy"] = float(bt_correct[ev].mean())
  metrics["seen/num_users"] = float(num_seen)
  metrics["seen/num_eval_pairs"] = float(ev.sum())

  # Unseen users: few-shot fits of the mixture logits with f and the prototypes frozen.
  if unseen:
    unseen_ids = list(range(num_seen, num_seen + len(unseen)))
    ev_u = ~is_train & ~is_seen & available
    n_max = max(cfg.shots)
    d = chosen.shape[1]
    shot_c = np.zeros((len(unseen), n_max, d), np.float32)
    shot_r = np.zeros_like(shot_c)
    have = np.zeros((len(unseen), n_max), np.float32)
    for j, u in enumerate(unseen_ids):
      idx = np.flatnonzero(is_train & (user_N == u) & available)[:n_max]
      if idx.size < n_max:
        raise ValueError(f"config.shots: unseen user {unseen[j]!r} has {idx.size} training pairs, fewer than "
                         f"max(shots)={n_max} (raise data.num_train)")
      shot_c[j], shot_r[j], have[j] = chosen[idx], rejected[idx], 1.0
    pal = models["pal"]
    row = user_N[ev_u] - num_seen
    table = {"bt": per_user_accuracy(bt_correct[ev_u], user_N[ev_u], unseen_ids)}
    if ceiling_N is not None:
      table["ceiling"] = per_user_accuracy(ceiling_N[ev_u], user_N[ev_u], unseen_ids)
    start = time.time()
    for n in (0, *cfg.shots):
      mask = np.zeros_like(have)
      mask[:, :n] = 1.0
      logits = (np.zeros((len(unseen), cfg.num_prototypes), np.float32) if n == 0 else
                pal_model.fit_user_logits(pal, shot_c, shot_r, mask, steps=cfg.fewshot_steps,
                                          learning_rate=cfg.fewshot_lr))
      w = pal_model.simplex_weights(logits)[row]
      correct = np.asarray(pal.reward_with_weights(chosen[ev_u], w) > pal.reward_with_weights(rejected[ev_u], w),
                           np.float64)
      table[f"pal_n{n}"] = per_user_accuracy(correct, user_N[ev_u], unseen_ids)
      per_user[f"unseen/weights_n{n}"] = np.asarray(pal_model.simplex_weights(logits)).round(4).tolist()
    metrics["time/fewshot_s"] = round(time.time() - start, 2)
    for k, v in table.items():
      metrics[f"unseen/{k}_accuracy"] = float(np.nanmean(v))
      per_user[f"unseen/{k}"] = v.tolist()
    for n in cfg.shots:
      metrics[f"unseen/pal_n{n}_minus_bt"] = float(np.nanmean(table[f"pal_n{n}"] - table["bt"]))
    metrics["unseen/num_users"] = float(len(unseen))
    metrics["unseen/num_eval_pairs"] = float(ev_u.sum())

  metrics.update({"train/pal_loss": fits["pal"]["loss"], "train/bt_loss": fits["bt"]["loss"],
                  "time/pal_s": fits["pal"]["seconds"], "time/bt_s": fits["bt"]["seconds"],
                  "params/pal": float(pal_model.count_params(models["pal"])),
                  "params/bt": float(pal_model.count_params(bt)), "data/num_train_pairs": float(fit.sum())})
  if distributed.is_primary():  # One writer (as results.json's); every process holds the same values.
    os.makedirs(workdir, exist_ok=True)
    with open(os.path.join(workdir, "per_user.json"), "w") as f:
      json.dump(per_user, f)
  distributed.barrier(f"pal.per_user:{workdir}")
  summary = " ".join(f"{k}={v:.4f}" for k, v in metrics.items() if k.endswith("accuracy"))
  print(f"[pal] {summary}", flush=True)
  results = common.write_results(workdir, metrics, data_report=report)
  return {"metrics": metrics, "results": results, "data_report": report}
