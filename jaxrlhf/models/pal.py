"""PAL: the ideal-point reward model of pluralistic alignment, users as mixtures of K shared prototypes.

Chen, Chen, Rege, Vinayak 2024, "PAL: Pluralistic Alignment Framework for Learning from Heterogeneous Preferences"
(arXiv:2406.08469; ICLR 2025). A shared map f sends a response representation x (here: a frozen backbone's
feature vector, or any fixed vector of the response) to a preference space R^d. User u is a point of the simplex
w_u in Delta^K (w_u = softmax(W_u), W_u in R^K free logits), and the population shares K prototypes:

  PAL-A (ideal points): prototypes p_1..p_K in R^d (P = K x d); user u's ideal point a_u = sum_k w_uk p_k = w_u P;
    the reward is the negative distance r_u(x) = -||f(x) - a_u||_2 (the paper's ideal-point model after Coombs
    1950: a user prefers the item closer to their ideal point). `distance="squared"` gives -||f(x) - a_u||^2.
  PAL-B (prompt-conditioned prototypes): K maps g_k of the prompt representation c give the user's
    prompt-dependent ideal point a_u(c) = sum_k w_uk g_k(c), and the reward is the scaled cosine similarity
    r_u(c, x) = s * cos(f(x), a_u(c)) with s = exp(log_scale) clipped at 100 (log_scale starts at log(1/0.07),
    CLIP's temperature, as in the authors' code).

Preferences follow Bradley-Terry per user: P(x_c > x_r | u) = sigmoid(r_u(x_c) - r_u(x_r)) (the authors' "logistic"
loss on the distance difference; `jaxrlhf.losses.pal_loss`). Few-shot generalization to a new user (the paper's
unseen-user protocol): f and the prototypes (PAL-A) / g_k (PAL-B) stay frozen, and only the new user's K mixture
logits are fitted on a handful of their comparisons (`fit_user_logits`).

Shapes: N pairs or responses, D input features, d preference dims, K prototypes, U users.
"""

from __future__ import annotations

import math
from typing import Any

import jax
import jax.numpy as jnp
import optax
from flax import nnx

DISTANCES = ("euclidean", "squared")
PROJECTORS = ("linear", "mlp")
VARIANTS = ("a", "b")
MAX_SCALE = 100.0  # The authors clip exp(logit_scale) at 100, as CLIP does.


def simplex_weights(logits_UxK: jax.Array) -> jax.Array:
  """(U, K) mixture weights on the simplex: softmax of free logits (PAL's w_u = softmax(W_u))."""
  return jax.nn.softmax(jnp.asarray(logits_UxK, jnp.float32), axis=-1)


def ideal_points(weights_UxK: jax.Array, prototypes_Kxd: jax.Array) -> jax.Array:
  """(U, d) ideal points a_u = sum_k w_uk p_k: each user's point in the convex hull of the K prototypes."""
  return jnp.asarray(weights_UxK, jnp.float32) @ jnp.asarray(prototypes_Kxd, jnp.float32)


def distance_reward(z_Nxd: jax.Array, ideal_Nxd: jax.Array, distance: str = "euclidean") -> jax.Array:
  """(N,) PAL-A rewards r = -||z - a||_2 (or -||z - a||^2 with distance="squared") of preference-space points z
  against ideal points a (rows matched)."""
  if distance not in DISTANCES:
    raise ValueError(f"distance: expected one of {DISTANCES}, got {distance!r}")
  sq = jnp.sum(jnp.square(jnp.asarray(z_Nxd, jnp.float32) - jnp.asarray(ideal_Nxd, jnp.float32)), axis=-1)
  # The gradient of sqrt at 0 is infinite; the tiny floor keeps it finite when z sits exactly on a.
  return -sq if distance == "squared" else -jnp.sqrt(sq + 1e-12)


def cosine_reward(z_Nxd: jax.Array, ideal_Nxd: jax.Array, log_scale: jax.Array) -> jax.Array:
  """(N,) PAL-B rewards r = min(exp(log_scale), 100) * cos(z, a) (rows matched)."""
  z = jnp.asarray(z_Nxd, jnp.float32)
  a = jnp.asarray(ideal_Nxd, jnp.float32)
  cos = jnp.sum(z * a, -1) / (jnp.linalg.norm(z, axis=-1) * jnp.linalg.norm(a, axis=-1) + 1e-12)
  return jnp.minimum(jnp.exp(jnp.asarray(log_scale, jnp.float32)), MAX_SCALE) * cos


class Projector(nnx.Module):
  """R^D -> R^d: a linear map, or the authors' two-layer MLP (Linear, GELU, Linear; hidden width `hidden_dim`)."""

  def __init__(self, in_dim: int, out_dim: int, kind: str = "mlp", hidden_dim: int = 0, *, rngs: nnx.Rngs):
    if kind not in PROJECTORS:
      raise ValueError(f"projector: expected one of {PROJECTORS}, got {kind!r}")
    self.kind = kind
    hidden = hidden_dim or out_dim
    if kind == "linear":
      self.out = nnx.Linear(in_dim, out_dim, rngs=rngs)
    else:
      self.hidden = nnx.Linear(in_dim, hidden, rngs=rngs)
      self.out = nnx.Linear(hidden, out_dim, rngs=rngs)

  def __call__(self, x_NxD: jax.Array) -> jax.Array:
    x = jnp.asarray(x_NxD, jnp.float32)
    if self.kind == "mlp":
      x = jax.nn.gelu(self.hidden(x))
    return self.out(x)


class UserLogits(nnx.Param):
  """The users' free mixture logits W (U, K): their own Variable type, so a few-shot fit can select them."""


class PALModel(nnx.Module):
  """PAL-A or PAL-B over fixed response features (see the module docstring).

  Parameters: `f` (Projector D -> d); PAL-A: `prototypes` (K, d); PAL-B: `g` (Projector D_prompt -> K * d) and
  `log_scale` (); `user_logits` (U, K) (UserLogits). Prototypes start N(0, 1/d) per entry, user logits N(0, 1)
  (the authors' `torch.randn` init).
  """

  def __init__(self, in_dim: int, pref_dim: int, num_prototypes: int, num_users: int, *, variant: str = "a",
               projector: str = "mlp", hidden_dim: int = 0, distance: str = "euclidean", prompt_dim: int = 0,
               rngs: nnx.Rngs):
    if variant not in VARIANTS:
      raise ValueError(f"variant: expected one of {VARIANTS}, got {variant!r}")
    if distance not in DISTANCES:
      raise ValueError(f"distance: expected one of {DISTANCES}, got {distance!r}")
    if min(in_dim, pref_dim, num_prototypes, num_users) < 1:
      raise ValueError(f"in_dim, pref_dim, num_prototypes, num_users must be >= 1; got {in_dim}, {pref_dim}, "
                       f"{num_prototypes}, {num_users}")
    self.variant, self.distance, self.num_prototypes, self.pref_dim = variant, distance, num_prototypes, pref_dim
    self.f = Projector(in_dim, pref_dim, projector, hidden_dim, rngs=rngs)
    if variant == "a":
      self.prototypes = nnx.Param(jax.random.normal(rngs.params(), (num_prototypes, pref_dim)) / math.sqrt(pref_dim))
    else:
      self.g = Projector(prompt_dim or in_dim, num_prototypes * pref_dim, projector, hidden_dim, rngs=rngs)
      self.log_scale = nnx.Param(jnp.asarray(math.log(1 / 0.07), jnp.float32))
    self.user_logits = UserLogits(jax.random.normal(rngs.params(), (num_users, num_prototypes)))

  def user_ideal_points(self, weights_NxK: jax.Array, prompt_NxD: jax.Array | None = None) -> jax.Array:
    """(N, d) ideal points of mixture weights (rows of the simplex); PAL-B needs the prompts' features."""
    if self.variant == "a":
      return ideal_points(weights_NxK, self.prototypes[...])
    if prompt_NxD is None:
      raise ValueError("PAL-B needs prompt features (prompt_NxD)")
    g_NxKxd = self.g(prompt_NxD).reshape(prompt_NxD.shape[0], self.num_prototypes, self.pref_dim)
    return jnp.einsum("nk,nkd->nd", jnp.asarray(weights_NxK, jnp.float32), g_NxKxd)

  def reward_with_weights(self, x_NxD: jax.Array, weights_NxK: jax.Array, prompt_NxD: jax.Array | None = None
                          ) -> jax.Array:
    """(N,) rewards of responses x for users given by their mixture weights (N, K) on the simplex."""
    z, a = self.f(x_NxD), self.user_ideal_points(weights_NxK, prompt_NxD)
    if self.variant == "a":
      return distance_reward(z, a, self.distance)
    return cosine_reward(z, a, self.log_scale[...])

  def __call__(self, x_NxD: jax.Array, user_N: jax.Array, prompt_NxD: jax.Array | None = None) -> jax.Array:
    """(N,) rewards r_u(x) of responses x (N, D) for users user_N (int indices into user_logits)."""
    return self.reward_with_weights(x_NxD, simplex_weights(self.user_logits[...][user_N]), prompt_NxD)


def fit_user_logits(model: PALModel, chosen_UxNxD: jax.Array, rejected_UxNxD: jax.Array, mask_UxN: jax.Array, *,
                    steps: int, learning_rate: float, prompt_UxNxD: jax.Array | None = None) -> jax.Array:
  """(U, K) mixture logits of U NEW users, each fitted on their own n comparisons with the model frozen.

  The paper's unseen-user protocol: f and the prototypes are fixed, only user u's K logits W_u are learned, by
  `steps` full-batch Adam steps on the mean Bradley-Terry loss of the user's pairs (mask 0 = padding). Logits start
  at 0 (the uniform mixture, i.e. the population's barycentre), so a user with no pair keeps the uniform mixture.

  Args:
    model: a trained PALModel (its parameters are not changed).
    chosen_UxNxD, rejected_UxNxD: the preferred / dispreferred responses' features, n per user (padded to N).
    mask_UxN: 1 for a real pair.
    steps, learning_rate: the Adam fit.
    prompt_UxNxD: the prompts' features (PAL-B only).
  """
  graphdef, params = nnx.split(model)
  u, n = mask_UxN.shape
  mask = jnp.asarray(mask_UxN, jnp.float32)

  def loss(logits_UxK):
    m = nnx.merge(graphdef, params)
    w_UxNxK = jnp.broadcast_to(simplex_weights(logits_UxK)[:, None, :], (u, n, logits_UxK.shape[-1]))
    flat = lambda x: None if x is None else x.reshape(u * n, -1)
    r_c = m.reward_with_weights(flat(chosen_UxNxD), flat(w_UxNxK), flat(prompt_UxNxD)).reshape(u, n)
    r_r = m.reward_with_weights(flat(rejected_UxNxD), flat(w_UxNxK), flat(prompt_UxNxD)).reshape(u, n)
    per_user = jnp.sum(mask * -jax.nn.log_sigmoid(r_c - r_r), -1) / jnp.maximum(jnp.sum(mask, -1), 1.0)
    return jnp.sum(per_user)  # users are independent: the sum's gradient is each user's own

  opt = optax.adam(learning_rate)

  @jax.jit
  def fit(logits):
    def step(carry, _):
      logits, opt_state = carry
      grads = jax.grad(loss)(logits)
      updates, opt_state = opt.update(grads, opt_state)
      return (optax.apply_updates(logits, updates), opt_state), None

    (logits, _), _ = jax.lax.scan(step, (logits, opt.init(logits)), None, length=steps)
    return logits

  return fit(jnp.zeros((u, model.num_prototypes), jnp.float32))


def count_params(model: Any) -> int:
  """Number of parameter entries of an nnx module."""
  return sum(int(x.size) for x in jax.tree.leaves(nnx.state(model, nnx.Param)))
