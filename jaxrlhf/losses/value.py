"""Value-function targets and regression loss of Value Augmented Sampling (VAS; Han, Shenfeld, Srivastava, Kim,
Agrawal 2024, "Value Augmented Sampling for Language Model Alignment and Personalization", arXiv:2405.06639).

VAS fits V(s) = E_{y ~ pi_base}[r(x, y) | s] on samples of the FROZEN base policy (no policy is trained) by TD(lambda)
regression: the only reward is the sequence reward r(x, y) on the last token, gamma = 1 and lambda = 0.95 (the
official code's `VASConfig`: `gamma=1`, `lam=0.95`; its `compute_advantages` is PPO's GAE with the reward placed on the
last response token, and the returns = advantages + values are the regression targets of a 0.5 * squared error).

States. Row b has a response of n_b tokens (the end token included); its S = T + 1 state slots are
s_t = (x, y_{<t}) for t = 0..n_b: s_0 is the prompt alone (the value read at the prompt's last token) and s_{n_b} the
finished response (read at its last token). At decoding time VAS reads Q(s_t, a) = V(s_t . a), the value of the
state after a candidate token, so the finished state s_n (a = end token) needs a value too: its target is the
reward itself, G_n = r. For t < n (zero reward before the end, gamma = 1 in the paper):

    G_t = gamma * ((1 - lambda) * V'_{t+1} + lambda * G_{t+1}),   V'_{t+1} = V_{t+1} (t + 1 < n), r (t + 1 = n)

With gamma = 1 (the paper's and the official code's setting) this equals, for t < n, the official code's returns
(GAE on values V_0..V_{n-1} with reward r on token n - 1: R_{n-1} = r, R_t = (1 - lambda) V_{t+1} + lambda R_{t+1});
lambda = 1 gives Monte-Carlo targets (r everywhere), lambda = 0 one-step TD (the next state's value). With gamma < 1
the two differ: here r is the value of the finished state s_n, one step after token n - 1, so it is discounted once
more (G_{n-1} = gamma * r where the official GAE has R_{n-1} = r, and R_t = gamma ((1 - lambda) V_{t+1} + lambda
R_{t+1}) carries the difference back); the targets then equal the official recipe's returns with gamma * r on token
n - 1. Slots t > n_b are padding (target 0, mask 0).
"""

import jax
import jax.numpy as jnp
import numpy as np

Array = jax.Array


def state_mask(lengths_B: Array, num_slots: int) -> Array:
  """float32 (B, S): 1 on the state slots t = 0..n_b of row b (S = num_slots = T + 1), 0 after."""
  return (jnp.arange(num_slots)[None, :] <= jnp.asarray(lengths_B)[:, None]).astype(jnp.float32)


def td_lambda_returns(values_BxS: Array, reward_B: Array, lengths_B: Array, *, gamma: float = 1.0,
                      lam: float = 0.95) -> Array:
  """TD(lambda) value targets G_t of VAS (module docstring) for the states s_0..s_n of each row; the official code's
  returns for gamma = 1 (with gamma < 1 the reward is discounted one step more than there; module docstring).

  Args:
    values_BxS: (B, S) current value predictions V(s_t), S = T + 1 slots (t = 0..T); used as bootstrap targets
      (the caller stops their gradient).
    reward_B: (B,) sequence rewards r(x, y).
    lengths_B: (B,) int response lengths n_b in tokens, 0 <= n_b <= S - 1 (checked when concrete: at n_b >= S the
      finished state has no slot and the reward would never be placed).
    gamma: discount (the paper: 1).
    lam: lambda (the paper's code: 0.95).

  Returns:
    float32 (B, S) targets; 0 on slots t > n_b.
  """
  values_BxS = jnp.asarray(values_BxS, jnp.float32)
  reward_B = jnp.asarray(reward_B, jnp.float32)
  lengths_B = jnp.asarray(lengths_B, jnp.int32)
  if values_BxS.ndim != 2 or reward_B.shape != values_BxS.shape[:1] or lengths_B.shape != reward_B.shape:
    raise ValueError(f"values_BxS must be (B, S) with reward_B and lengths_B (B,); got {values_BxS.shape}, "
                     f"{reward_B.shape}, {lengths_B.shape}")
  S = values_BxS.shape[1]
  if not isinstance(lengths_B, jax.core.Tracer):  # Under jit the lengths are traced and cannot be checked here.
    bad = np.flatnonzero((np.asarray(lengths_B) < 0) | (np.asarray(lengths_B) >= S))
    if bad.size:
      raise ValueError(f"lengths_B must lie in [0, S - 1] = [0, {S - 1}] (S = values_BxS.shape[1] state slots, the "
                       f"last for the finished response); got {int(lengths_B[bad[0]])} in row {int(bad[0])} "
                       f"({bad.size} such rows): the reward would never be placed")
  # V'_{t+1} for every t: the next slot's value, the reward itself where the next slot is the finished state.
  t_S = jnp.arange(S)
  next_values_BxS = jnp.concatenate([values_BxS[:, 1:], jnp.zeros_like(values_BxS[:, :1])], axis=1)
  next_values_BxS = jnp.where((t_S + 1)[None, :] == lengths_B[:, None], reward_B[:, None], next_values_BxS)

  def back(g_next_B, xs):
    t, v_next_B = xs
    g_B = gamma * ((1.0 - lam) * v_next_B + lam * g_next_B)
    g_B = jnp.where(t == lengths_B, reward_B, jnp.where(t < lengths_B, g_B, 0.0))
    return g_B, g_B

  _, g_SxB = jax.lax.scan(back, jnp.zeros_like(reward_B), (t_S, next_values_BxS.T), reverse=True)
  return g_SxB.T


def value_regression_loss(predictions_BxS: Array, targets_BxS: Array, mask_BxS: Array) -> tuple[Array, dict]:
  """0.5 * mean over the valid state slots of (V(s_t) - G_t)^2: VAS's value loss (the official `loss`:
  0.5 * masked_mean((vpreds - returns) ** 2, mask), one mean over the whole batch's valid slots).

  Args:
    predictions_BxS: (B, S) value predictions V(s_t) (differentiated), any float dtype (the loss is float32).
    targets_BxS: (B, S) targets G_t (`td_lambda_returns`); no gradient flows into them.
    mask_BxS: (B, S) 1 on the valid state slots, 0 on padding (`state_mask`).

  Returns:
    (scalar float32 loss, {"value/loss", "value/mse", "value/mean", "value/target_mean"}: scalars, means over the
    valid slots).
  """
  shape = jnp.shape(predictions_BxS)
  if len(shape) != 2 or jnp.shape(targets_BxS) != shape or jnp.shape(mask_BxS) != shape:
    raise ValueError(f"predictions_BxS, targets_BxS and mask_BxS must be (B, S) arrays of one shape; got "
                     f"{shape}, {jnp.shape(targets_BxS)}, {jnp.shape(mask_BxS)}")
  mask = jnp.asarray(mask_BxS, jnp.float32)
  predictions = jnp.asarray(predictions_BxS, jnp.float32)
  targets = jax.lax.stop_gradient(jnp.asarray(targets_BxS, jnp.float32))
  count = jnp.maximum(mask.sum(), 1.0)
  err = jnp.square(predictions - targets) * mask
  mse = err.sum() / count
  metrics = {"value/loss": 0.5 * mse, "value/mse": mse,
             "value/mean": jax.lax.stop_gradient(jnp.sum(predictions * mask) / count),
             "value/target_mean": jnp.sum(targets * mask) / count}
  return 0.5 * mse, metrics
