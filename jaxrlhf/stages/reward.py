"""The "reward" stage. Reward modeling: Bradley-Terry (margins, centering, label smoothing, adaptive margins),
multi-attribute regression, K-head and K-member ensembles, trained through the shared loop.

One member is a `RewardModel`; its pure loss is `reward_loss_fn(config, head)`. A stage always trains K >= 1
INDEPENDENT members in ONE step: the per-member step of `state.make_train_step` runs over the stacked member axis
of the parameters, the optimizer state and the batch, so member k follows exactly the trajectory it would follow
alone (same init seed, same batches, its own gradient normalization and clipping). `member_loop` says how: "vmap"
(one batched program) or "scan" (the members in turn, one member's activations live at a time); "auto" picks scan
on the CPU, where it measured 0.93-1.01x five single steps against vmap's 1.06-1.12x and half the step memory
(docs/performance.md), and vmap on accelerators (0.91x on an H200).

Members and their randomness:
  - init: member k is `RewardModel(config, head, rngs=nnx.Rngs(member_key(seed, k)))`; from a pretrained or
    SFT checkpoint all members share the backbone weights and differ by head init (Eisenstein et al. 2023);
    `shared_backbone=True` does the same for a random init: every member starts from member 0's backbone and
    keeps its own head init (a "finetune-seed" ensemble; the default, one backbone init per member, is the
    "pretrain-seed" ensemble);
  - data order: member k reads its OWN pipeline over the same training pairs, shuffled with seed `seed + k`
    (K pipelines, stacked into (K, B, T) batches by `inputs.StackedIterator`).
A "multihead" head instead puts K scalar heads on one shared backbone, with one BT loss per head.

LoRA (`model.lora`; Hu et al. 2021, arXiv:2106.09685): every member is a LoRA reward model, and the K members share
ONE frozen base backbone (`models.reward_model.LoraRewardEnsemble`: K adapter sets + K heads stacked, the base
weights once, in the train state's `extra`). Only the adapters and the (new) heads train. Member k's adapters and
head are drawn from `member_key(seed, k)` as a standalone LoRA member would (`lora_member_model`); its data order is
its own as above. The saved `rm` holds the base once plus the K adapter sets and heads (spec.json records the
LoRA config); with K = 1 the merged model (adapters folded into the kernels) is saved too, as a plain reward model
(`merged_rm_dir`); the adapters and heads alone go to `adapter_dir` (`artifacts.save_reward_adapters`; a few MB,
loaded back onto the base model by `artifacts.load_reward_adapters`).

Evaluation (held-out pairs): pairwise accuracy per member and of the member mean (ties count as wrong) and, in
the synthetic world, agreement with the GOLD preference (r*(chosen) > r*(rejected)).
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from jaxrlhf.config import ConfigError, field
from jaxrlhf.losses import reward as reward_losses
from jaxrlhf.models.heads import HeadConfig
from jaxrlhf.models import lora as lora_lib
from jaxrlhf.models.reward_model import PER_MEMBER, LoraRewardEnsemble, RewardEnsemble, RewardModel
from jaxrlhf.parallel import MeshConfig
from jaxrlhf.parallel.sharding import batch_sharding
from jaxrlhf.stages import artifacts
from jaxrlhf.stages import common
from jaxrlhf.stages import inputs as inputs_lib
from jaxrlhf.train import loop as loop_lib
from jaxrlhf.train import metrics as metrics_lib
from jaxrlhf.train import optim
from jaxrlhf.train import scoring
from jaxrlhf.train import state as state_lib


@dataclasses.dataclass(frozen=True)
class HeadSpec:
  """The reward head (see jaxrlhf.models.heads); hidden_dim 0 means the model width."""
  kind: str = field("linear", choices=("linear", "mlp", "attributes", "multihead"))
  num_outputs: int = field(1, min=1)
  member_kind: str = field("linear", choices=("linear", "mlp"))
  hidden_dim: int = field(0, min=0)
  attribute_weights: tuple[float, ...] = field(())

  def head_config(self) -> HeadConfig:
    return HeadConfig(kind=self.kind, num_outputs=self.num_outputs, member_kind=self.member_kind,
                      hidden_dim=self.hidden_dim or None, attribute_weights=tuple(self.attribute_weights) or None)

  def validate(self, path: str) -> None:
    try:
      self.head_config()
    except ValueError as e:
      raise ConfigError(f"{path}: {e}") from e


@dataclasses.dataclass(frozen=True)
class RewardLossConfig:
  """margin: "none", "margin" (the batch's `margin`, e.g. from data.margin_from) or "adaptive"
  (`adaptive_margin(margin, margin_scale, clip_min=margin_clip_min)`, with margins from an ensemble:
  data.margin_from="reward_model"). attribute_weight / bt_weight weigh the masked attribute MSE and the BT loss
  on the scalarized reward for an "attributes" head (BT only otherwise)."""
  margin: str = field("none", choices=("none", "margin", "adaptive"))
  margin_scale: float = field(1.0)
  margin_clip_min: float | None = field(None)
  center_coeff: float = field(0.0, min=0.0)
  label_smoothing: float = field(0.0, min=0.0, max=0.49)
  attribute_weight: float = field(1.0, min=0.0)
  bt_weight: float = field(1.0, min=0.0)


MEMBER_LOOPS = ("auto", "vmap", "scan")  # `RewardConfig.member_loop`, `make_ensemble_step(member_loop=...)`


@dataclasses.dataclass(frozen=True)
class RewardConfig:
  """The "reward" stage."""
  seed: int = field(0)
  model: common.ModelSpec = field(default_factory=common.ModelSpec)
  data: inputs_lib.DataSpec = field(default_factory=inputs_lib.DataSpec)
  head: HeadSpec = field(default_factory=HeadSpec)
  num_members: int = field(1, min=1)
  shared_backbone: bool = field(False)  # Random init: all members start from member 0's backbone.
  # How the K member steps run (`make_ensemble_step`): "auto" = "scan" (in turn) on the CPU, "vmap" (batched) else.
  member_loop: str = field("auto", choices=MEMBER_LOOPS)
  loss: RewardLossConfig = field(default_factory=RewardLossConfig)
  optimizer: optim.OptimizerConfig = field(default_factory=optim.OptimizerConfig)
  loop: loop_lib.LoopConfig = field(default_factory=loop_lib.LoopConfig)
  mesh: MeshConfig = field(default_factory=MeshConfig)
  num_devices: int = field(0, min=0)

  def validate(self, path: str) -> None:
    common.check_accumulation(self.data.batch_size, self.optimizer.grad_accum_steps, path)
    if self.model.lora and self.shared_backbone:
      raise ConfigError(f"{path}.shared_backbone: LoRA members ({path}.model.lora) always share one frozen base "
                        "backbone; leave shared_backbone False")

# ------------------------------------------------------------------------------------------------ the loss
def _weighted(x_B: jax.Array, w_B: jax.Array) -> metrics_lib.Avg:
  return metrics_lib.Avg(jnp.sum(w_B * x_B), jnp.sum(w_B))


def reward_loss_fn(loss: RewardLossConfig, head: HeadConfig) -> state_lib.LossFn:
  """loss_fn(model: RewardModel, batch, rng) -> (weighted sum of per-pair losses, sum of weights, metrics).

  Per pair: Bradley-Terry on r_c - r_r (summed over heads for "multihead"); for "attributes" heads
  attribute_weight * (MSE_c + MSE_r) over observed attributes + bt_weight * BT on the scalarized reward.
  The pair weight is the batch's `weight` (0 on padding rows).
  """

  def bt(r_c, r_r, margin):
    losses, _ = reward_losses.bradley_terry_loss(r_c, r_r, margin=margin, label_smoothing=loss.label_smoothing,
                                                 center_coeff=loss.center_coeff)
    return losses

  def loss_fn(model, batch, rng):
    del rng
    w_B = batch["weight"].astype(jnp.float32)
    margin = None
    if loss.margin != "none":
      m = jnp.where(jnp.isnan(batch["margin"]), 0.0, batch["margin"]).astype(jnp.float32)
      margin = m if loss.margin == "margin" else reward_losses.adaptive_margin(
          m, loss.margin_scale, clip_min=loss.margin_clip_min)
    metrics = {}
    if head.kind == "attributes":
      a_c, a_r = scoring.pair_rewards(model, batch, attributes=True)
      valid = batch["attributes_mask"] * (w_B[:, None] > 0)
      mse_c, _ = reward_losses.attribute_regression_loss(a_c, batch["chosen_attributes"], valid)
      mse_r, _ = reward_losses.attribute_regression_loss(a_r, batch["rejected_attributes"], valid)
      weights_K = model.head.attribute_weights[...]
      r_c, r_r = a_c @ weights_K, a_r @ weights_K
      per_pair = loss.attribute_weight * (mse_c + mse_r) + loss.bt_weight * bt(r_c, r_r, margin)
      has_attr = (jnp.sum(valid, axis=-1) > 0).astype(jnp.float32)
      metrics["attributes/mse"] = metrics_lib.Avg(jnp.sum(w_B * has_attr * (mse_c + mse_r) / 2),
                                                  jnp.sum(w_B * has_attr))
    else:
      r_c, r_r = scoring.pair_rewards(model, batch)
      if r_c.ndim == 2:  # multihead: one BT loss per head, summed
        per_pair = jnp.sum(jax.vmap(bt, in_axes=(1, 1, None))(r_c, r_r, margin), axis=0)
        r_c, r_r = jnp.mean(r_c, axis=-1), jnp.mean(r_r, axis=-1)
      else:
        per_pair = bt(r_c, r_r, margin)
    metrics.update({
        "rewards/chosen": _weighted(r_c, w_B),
        "rewards/rejected": _weighted(r_r, w_B),
        "rewards/margin": _weighted(r_c - r_r, w_B),
        "rewards/accuracy": _weighted((r_c > r_r).astype(jnp.float32), w_B),
        "examples": metrics_lib.Sum(jnp.sum((w_B > 0).astype(jnp.float32))),
        # Tokens read by the forward (both responses and the prompt once or twice, by layout), real pairs only.
        "tokens": metrics_lib.Sum(jnp.sum((w_B > 0) * scoring.tokens_read(batch))),
    })
    return jnp.sum(w_B * per_pair), jnp.sum(w_B), metrics

  return loss_fn

# ------------------------------------------------------------------------------------------------ the ensemble
def member_key(seed: int, k: int) -> jax.Array:
  """The init key of member k."""
  return jax.random.fold_in(jax.random.PRNGKey(seed), k)


def member_model(model_config: Any, head: HeadConfig, seed: int, k: int) -> RewardModel:
  """Member k exactly as the stacked ensemble initializes it (for training or checking it alone)."""
  return RewardModel(model_config, head, rngs=nnx.Rngs(member_key(seed, k)))


def lora_member_model(model_config: Any, head: HeadConfig, lora: Any, seed: int, k: int) -> RewardModel:
  """LoRA member k as a standalone model: `member_model`'s init with adapters (its base weights are member 0's in the
  stacked `LoraRewardEnsemble`, which shares one base)."""
  return RewardModel(model_config, head, rngs=nnx.Rngs(member_key(seed, k)), lora=lora)


def lora_ensemble(model_config: Any, head: HeadConfig, lora: Any, num_members: int, seed: int) -> LoraRewardEnsemble:
  """The K LoRA members on one base: member k's adapters and head from `member_key(seed, k)`, the base member 0's."""
  keys_K = jnp.stack([member_key(seed, k) for k in range(num_members)])
  return LoraRewardEnsemble(model_config, head, lora, keys_K)


def _stacked_members(model_config: Any, head: HeadConfig, num_members: int, seed: int,
                     shared_backbone: bool = False) -> RewardEnsemble:
  """The K members stacked; shared_backbone: every member's backbone is member 0's (heads stay per member)."""
  keys = jnp.stack([member_key(seed, k) for k in range(num_members)])
  states = jax.vmap(lambda key: nnx.state(RewardModel(model_config, head, rngs=nnx.Rngs(key))))(keys)
  graphdef, state = nnx.split(nnx.eval_shape(lambda: RewardEnsemble(model_config, head, num_members,
                                                                    rngs=nnx.Rngs(0))))
  pure = nnx.to_pure_dict(state)
  pure["members"] = nnx.to_pure_dict(states)
  if shared_backbone:
    pure["members"]["backbone"] = jax.tree.map(lambda x: jnp.broadcast_to(x[:1], x.shape),
                                               pure["members"]["backbone"])
  nnx.replace_by_pure_dict(state, pure)
  return nnx.merge(graphdef, state)


def _restack(like: Any, members: Any) -> Any:
  """`members` put back under the "members" key with exactly the pytree structure of `like`."""
  return jax.tree.unflatten(jax.tree.structure(like), jax.tree.leaves(members))


def member_optimizer(optimizer: optax.GradientTransformation) -> optax.GradientTransformation:
  """`optimizer` applied to each member of a stacked {"members": ...} parameter state independently."""

  def init(params):
    return jax.vmap(optimizer.init)(params["members"])

  def update(updates, opt_state, params=None):
    member_params = None if params is None else params["members"]
    new_updates, opt_state = jax.vmap(optimizer.update)(updates["members"], opt_state, member_params)
    return _restack(updates, new_updates), opt_state

  return optax.GradientTransformation(init, update)


def ensemble_setup(model_config: Any, head: HeadConfig, num_members: int, optimizer: Any, seed: int, mesh: Any,
                   pretrained: dict | None = None, shared_backbone: bool = False, lora: Any = None
                   ) -> state_lib.StateSetup:
  """A TrainState whose params / extra / opt_state are stacked over members; the graphdef is the ensemble's.

  pretrained (a CausalLM's pure params) is every member's backbone; else shared_backbone=True gives every
  member member 0's random backbone init (heads keep their own seeds).
  lora (a ModelSpec's `lora`; {} / None off): a `LoraRewardEnsemble`; params = the stacked adapters and heads,
  extra = the ONE frozen base backbone (unstacked: `make_ensemble_step(..., shared_extra=True)`).
  """
  if lora:
    return _lora_ensemble_setup(model_config, head, num_members, optimizer, seed, mesh, pretrained, lora)
  setup = state_lib.init_train_state(lambda key: _stacked_members(model_config, head, num_members, seed,
                                                                  shared_backbone),
                                     member_optimizer(optimizer), seed, mesh=mesh,
                                     shardings=common.logical_or_replicated(mesh))
  return _with_pretrained_backbone(setup, pretrained, "params", num_members)


def _with_pretrained_backbone(setup: state_lib.StateSetup, pretrained: dict | None, collection: str,
                              broadcast: int) -> state_lib.StateSetup:
  """`setup` whose init overwrites the members' backbone in the state's `collection` ("params" or "extra") with
  `pretrained`'s weights (a CausalLM's pure params; its lm_head is not part of a reward model); `setup` itself when
  pretrained is None.
  broadcast: K for "params" (one copy per member), 0 for "extra" (a LoRA ensemble's one frozen base)."""
  if pretrained is None:
    return setup
  backbone = {k: v for k, v in pretrained.items() if k != "lm_head"}
  fresh = setup.init

  def init():
    state = fresh()
    return state.replace(**{collection: common.overwrite(getattr(state, collection), backbone,
                                                         ("members", "backbone"), broadcast=broadcast)})

  return setup._replace(init=init)


def _lora_ensemble_setup(model_config: Any, head: HeadConfig, num_members: int, optimizer: Any, seed: int,
                         mesh: Any, pretrained: dict | None, lora: Any) -> state_lib.StateSetup:
  """`ensemble_setup` of a LoRA ensemble: the base weights (random from member 0's key, or `pretrained`) are
  FrozenParams in `extra`, once; the adapters and heads (stacked) are the params."""
  model_fn = lambda key: common.frozen_base(lora_ensemble(model_config, head, lora, num_members, seed),  # noqa: E731
                                            trainable=PER_MEMBER)
  setup = state_lib.init_train_state(model_fn, member_optimizer(optimizer), seed, mesh=mesh,
                                     shardings=common.logical_or_replicated(mesh))
  return _with_pretrained_backbone(setup, pretrained, "extra", 0)


def member_graphdef(model_config: Any, head: HeadConfig, seed: int, lora: Any = None) -> nnx.GraphDef:
  """The graphdef of one member as the ensemble step trains it (a LoRA member: base frozen, adapters + head
  trainable)."""
  if lora:
    return nnx.graphdef(nnx.eval_shape(lambda: common.frozen_base(
        lora_member_model(model_config, head, lora, seed, 0), trainable=PER_MEMBER)))
  return nnx.graphdef(nnx.eval_shape(lambda: member_model(model_config, head, seed, 0)))


def resolved_member_loop(member_loop: str, backend: str | None = None) -> str:
  """The member loop `make_ensemble_step` runs: "vmap" or "scan" as given; "auto" is "scan" on the CPU and
  "vmap" elsewhere (backend: a `jax.default_backend()` name; None reads it)."""
  if member_loop not in MEMBER_LOOPS:
    raise ValueError(f"member_loop: expected one of {MEMBER_LOOPS}, got {member_loop!r}")
  if member_loop != "auto":
    return member_loop
  return "scan" if (backend or jax.default_backend()) == "cpu" else "vmap"


def make_ensemble_step(member_graphdef: nnx.GraphDef, loss_fn: state_lib.LossFn,
                       optimizer_config: optim.OptimizerConfig, num_members: int, shared_extra: bool = False,
                       member_loop: str = "auto") -> state_lib.StepFn:
  """The stacked step: `make_train_step` of one member, run for every member on the member axis of state and batch.

  Batches are (K, B, ...). shared_extra: the state's `extra` has no member axis (a LoRA ensemble's one frozen
  base), every member reads it whole. member_loop: "vmap" runs the K member steps as one batched program (K x the
  activations live at once); "scan" runs them one after another in a `lax.scan` that updates the stacked
  parameters and optimizer state in place (one member's activations live at a time); "auto" picks per backend
  (`resolved_member_loop`). Both give the same member trajectories. Metrics: the member-summed Avg/Sum metrics,
  the member mean of scalar ones, and `members/loss_<k>` per member.
  """
  loop = resolved_member_loop(member_loop)
  member_step = state_lib.make_train_step(member_graphdef, loss_fn, optim.make_optimizer(optimizer_config),
                                          grad_accum_steps=optimizer_config.grad_accum_steps,
                                          schedule=optim.make_schedule(optimizer_config))

  def step_fn(state, batch_K):
    extra = state.extra["members"] if "members" in state.extra else state.extra

    def one(params, extra_k, opt_state, k, batch):
      s = state_lib.TrainState(step=state.step, params=params, extra=extra_k, opt_state=opt_state,
                               rng=jax.random.fold_in(state.rng, k))
      new, metrics = member_step(s, batch)
      return new.params, new.opt_state, metrics

    if loop == "vmap":
      params, opt_state, metrics = jax.vmap(one, in_axes=(0, None if shared_extra else 0, 0, 0, 0))(
          state.params["members"], extra, state.opt_state, jnp.arange(num_members), batch_K)
    else:
      def body(carry, k):
        params_K, opt_K = carry
        take = lambda tree: jax.tree.map(lambda x: x[k], tree)  # noqa: E731
        params_k, opt_k, metrics_k = one(take(params_K), extra if shared_extra else take(extra), take(opt_K), k,
                                         take(batch_K))
        put = lambda tree, new: jax.tree.map(lambda x, y: x.at[k].set(y), tree, new)  # noqa: E731
        return (put(params_K, params_k), put(opt_K, opt_k)), metrics_k

      (params, opt_state), metrics = jax.lax.scan(body, (state.params["members"], state.opt_state),
                                                  jnp.arange(num_members))
    out = {}
    for name, v in metrics.items():
      if isinstance(v, metrics_lib.Avg):
        out[name] = metrics_lib.Avg(jnp.sum(v.total), jnp.sum(v.count))
      elif isinstance(v, metrics_lib.Sum):
        out[name] = metrics_lib.Sum(jnp.sum(v.value) / num_members)  # Every member reads as many examples.
      else:
        out[name] = jnp.mean(v)
    loss = metrics["loss"]
    for k in range(num_members):
      out[f"members/loss_{k}"] = metrics_lib.Avg(loss.total[k], loss.count[k])
    new_state = state.replace(step=state.step + 1, params=_restack(state.params, params), opt_state=opt_state)
    return new_state, out

  return step_fn

# ------------------------------------------------------------------------------------------------ evaluation
def pairwise_scores(rewards_c_BxK: np.ndarray, rewards_r_BxK: np.ndarray, labels_B: np.ndarray | None = None
                    ) -> dict[str, float]:
  """accuracy of each member (`accuracy_<k>`) and of the member mean (`accuracy`); ties count as wrong.

  labels_B (optional): True where the reference label says chosen is better (e.g. gold); then the scores are
  agreement with those labels: the prediction is r_c > r_r, wrong on ties.
  """
  labels = np.ones(rewards_c_BxK.shape[0], bool) if labels_B is None else np.asarray(labels_B, bool)

  def agree(d):
    return float(np.mean(np.where(labels, d > 0, d < 0)))

  diff = rewards_c_BxK - rewards_r_BxK
  out = {"accuracy": agree(diff.mean(axis=1))}
  if diff.shape[1] > 1:
    out.update({f"accuracy_{k}": agree(diff[:, k]) for k in range(diff.shape[1])})
  return out


def make_eval_fn(graphdef: nnx.GraphDef, batches: list[dict], gold_labels: np.ndarray | None):
  """state -> {"accuracy", "accuracy_<k>", ["gold_agreement", "gold_agreement_<k>"]} on held-out pairs."""

  @jax.jit
  def rewards(state, batch):
    model = nnx.merge(graphdef, state.params, state.extra)
    r_c, r_r = scoring.pair_rewards(model, batch)
    if r_c.ndim == 3:  # multihead members: (B, K, H) -> mean over heads
      r_c, r_r = r_c.mean(-1), r_r.mean(-1)
    return r_c, r_r

  def eval_fn(state):
    outs = [(*jax.device_get(rewards(state, b)), b["weight"] > 0) for b in batches]
    r_c = np.concatenate([o[0][o[2]] for o in outs])
    r_r = np.concatenate([o[1][o[2]] for o in outs])
    result = pairwise_scores(r_c, r_r)
    if gold_labels is not None and len(gold_labels) == len(r_c):
      result.update({k.replace("accuracy", "gold_agreement"): v
                     for k, v in pairwise_scores(r_c, r_r, gold_labels).items()})
    return result

  return eval_fn


def gold_labels(world: Any, records: list) -> np.ndarray:
  """True where r*(chosen) > r*(rejected) for synthetic-world records (text prompts)."""
  prompts = [r.prompt for r in records]
  gold_c = world.gold_of_texts(prompts, [r.chosen for r in records])
  gold_r = world.gold_of_texts(prompts, [r.rejected for r in records])
  return np.asarray(gold_c) > np.asarray(gold_r)

# ------------------------------------------------------------------------------------------------ the stage
def run(cfg: RewardConfig, workdir: str, inputs: dict) -> dict:
  """The "reward" stage: K members (stacked), eval on held-out pairs, saves `workdir/rm`."""
  data = cfg.data
  context = inputs_lib.stage_context(cfg, inputs)
  world, mesh, model_config, pretrained, tokenizer = context
  # Held-out pairs stay as read: they are scored against gold labels on their plain prompts.
  train_records, eval_records, report = inputs_lib.prepared_pairs(data, context, inputs, prepare_eval=False)
  # Pairs too long for the token budget: counted and reported (train), left out of the held-out batches.
  _, train_budget = inputs_lib.budgeted_records(train_records, tokenizer, data, "preference", "train")
  eval_records, eval_budget = inputs_lib.budgeted_records(eval_records, tokenizer, data, "preference", "eval")
  report = {**report, "token_budget": {"train": train_budget, "eval": eval_budget}}
  head = cfg.head.head_config()
  num_attributes = head.num_outputs if head.kind == "attributes" else 0
  optimizer = optim.make_optimizer(cfg.optimizer)
  lora = lora_lib.lora_config(cfg.model.lora)
  setup = ensemble_setup(model_config, head, cfg.num_members, optimizer, cfg.seed, mesh, pretrained,
                         cfg.shared_backbone, lora=lora)
  step_fn = make_ensemble_step(member_graphdef(model_config, head, cfg.seed, lora), reward_loss_fn(cfg.loss, head),
                               cfg.optimizer, cfg.num_members, shared_extra=lora is not None,
                               member_loop=cfg.member_loop)
  shared, layout_report = inputs_lib.choose_shared_prompt(data, train_records, tokenizer, model_config,
                                                          with_lm_head=False)
  report = {**report, "shared_prompt": layout_report}
  data_iter = inputs_lib.StackedIterator(
      [inputs_lib.train_iterator(train_records, tokenizer, data, "preference", cfg.seed + k,
                                 num_attributes=num_attributes, shared_prompt=shared)
       for k in range(cfg.num_members)], tokenizer.pad_id)
  batches = inputs_lib.eval_batches(eval_records, tokenizer, data, "preference", shared_prompt=shared)
  gold = gold_labels(world, eval_records) if world is not None and eval_records else None
  eval_fn = make_eval_fn(setup.graphdef, batches, gold) if batches else None
  results = loop_lib.train(config=cfg.loop, workdir=workdir, setup=setup, step_fn=step_fn, data_iter=data_iter,
                           mesh=mesh, batch_shardings=batch_sharding(mesh, axis=1), eval_fn=eval_fn,
                           run_config=dataclasses.asdict(cfg))
  state = results["state"]
  model = nnx.merge(setup.graphdef, state.params, state.extra)
  rm_dir = artifacts.save_reward_model(os.path.join(workdir, "rm"), model_config, head, cfg.num_members,
                                       nnx.state(model), lora=lora, tokenizer=tokenizer)
  extra = {}
  if lora is not None:  # The trained parts alone (adapters + heads), to put back on the base they were trained on.
    extra["adapter_dir"] = artifacts.save_reward_adapters(os.path.join(workdir, "adapters"), model_config, head, model)
  if lora is not None and cfg.num_members == 1:  # The merged model: a plain reward model for any consumer.
    merged = model.merged()
    extra["merged_rm_dir"] = artifacts.save_reward_model(os.path.join(workdir, "rm_merged"), model_config, head, 1,
                                                         nnx.state(merged), tokenizer=tokenizer)
  return common.stage_outputs(results, rm_dir=rm_dir, num_members=cfg.num_members, data_report=report, **extra)
