"""Measures the synthetic world (the numbers in docs/synthetic_world.md): `python -m jaxrlhf.data.synthetic.measure`.

* label ceiling: how often the Bradley-Terry labels (before / after the flip) agree with the gold ordering;
* observed flip rate vs configured;
* gold of reference samples vs responses at the gold length optimum;
* a simple proxy: L2-regularized logistic regression (Bradley-Terry on feature differences) on bag-of-token
  counts + length, fit by Newton's method on <= 20k training pairs; its held-out agreement with the gold
  ordering and with the noisy labels;
* exploitation: mean proxy and gold of reference samples forced to length n (beyond the data's lengths), and of
  the proxy's own best response of length n.
"""

import time

import numpy as np

from jaxrlhf.data.synthetic import world as world_lib


def proxy_features(world: world_lib.World, responses: list) -> np.ndarray:
  """float64 (B, V + 1): token counts of each response (id list) and its length."""
  v = world.tokenizer.vocab_size
  feats = np.zeros((len(responses), v + 1))
  for i, r in enumerate(responses):
    np.add.at(feats[i], np.asarray(r, np.int64), 1.0)
    feats[i, v] = len(r)
  return feats


def fit_bt_logistic(diff_NxF: np.ndarray, y_N: np.ndarray, l2: float = 1.0, iters: int = 30) -> np.ndarray:
  """Weights w minimizing sum_i softplus(-(2 y_i - 1) w . d_i) + l2 / 2 |w|^2 (Newton's method)."""
  s = 2.0 * y_N - 1.0
  x = diff_NxF * s[:, None]
  w = np.zeros(x.shape[1])
  for _ in range(iters):
    z = x @ w
    p = 1.0 / (1.0 + np.exp(-z))
    grad = -x.T @ (1.0 - p) + l2 * w
    hess = (x * (p * (1.0 - p))[:, None]).T @ x + l2 * np.eye(len(w))
    step = np.linalg.solve(hess, grad)
    w -= step
    if np.abs(step).max() < 1e-8:
      break
  return w


def measure(config: world_lib.WorldConfig = world_lib.WorldConfig(), num_train: int = 20000,
            num_test: int = 4000, lengths=(4, 8, 12, 16, 20, 24, 32, 40, 48)) -> dict:
  """Returns a dict of the world's measured numbers (see the module docstring)."""
  world = world_lib.World(config)
  out = {}
  test = world.preference_pairs(num_test, "test")
  gold_order = test["gold_a"] > test["gold_b"]
  out["label_ceiling_bt"] = float(np.mean(test["bt_a_wins"] == gold_order))
  out["label_ceiling"] = float(np.mean(test["a_wins"] == gold_order))
  out["flip_rate_observed"] = float(np.mean(test["flipped"]))
  lens = np.asarray([len(r) for r in test["response_a"] + test["response_b"]])
  out["ref_length_mean"] = float(lens.mean())
  out["ref_length_frac_above_optimum"] = float(np.mean(lens > config.length_optimum))
  out["gold_pairs_mean"] = float(np.mean(np.concatenate([test["gold_a"], test["gold_b"]])))
  judge = np.concatenate([test["judge_a"], test["judge_b"]]).astype(int)
  out["judge_histogram_1_to_10"] = np.bincount(judge, minlength=11)[1:].tolist()

  t0 = time.time()
  train = world.preference_pairs(num_train, "train")
  d_train = proxy_features(world, train["response_a"]) - proxy_features(world, train["response_b"])
  w = fit_bt_logistic(d_train, train["a_wins"].astype(np.float64))
  out["proxy_fit_seconds"] = time.time() - t0
  d_test = proxy_features(world, test["response_a"]) - proxy_features(world, test["response_b"])
  pred = d_test @ w > 0
  out["proxy_agreement_gold"] = float(np.mean(pred == gold_order))
  out["proxy_agreement_labels"] = float(np.mean(pred == test["a_wins"]))
  out["proxy_length_weight"] = float(w[-1])

  # Length extrapolation: reference samples forced to length n on test prompts.
  rng = np.random.default_rng(123)
  idx = world.prompt_indices(512, "test")
  topics = np.asarray([world.prompt_topics[i] for i in idx])
  prompts = [world.prompt_pool[i] for i in idx]
  curve = []
  for n in lengths:
    r_ids = world.sample_responses(rng, topics, np.full(len(idx), n))
    rows = [row.tolist() for row in r_ids]
    gold = world.gold_of_ids(prompts, rows)
    proxy = proxy_features(world, rows) @ w
    curve.append((n, float(gold.mean()), float(proxy.mean())))
  out["reference_length_curve"] = curve  # (n, mean gold, mean proxy)

  # Contrastive contexts: mean gold of reference samples (data lengths) under each control token.
  data_lengths = world.sample_lengths(rng, len(idx))
  for context in world_lib.CONTEXTS:
    r_ids = world.sample_responses(rng, topics, data_lengths, context=context)
    rows = [row[:n].tolist() for row, n in zip(r_ids, data_lengths)]
    out[f"gold_mean_context_{context}"] = float(world.gold_of_ids(prompts, rows).mean())

  # A proxy-optimal response of length n: cycling the proxy's top w + 1 tokens (the best under the linear
  # proxy among responses without repeats inside the gold repetition window; repeating the single top token
  # would score even higher on the proxy and lower on gold).
  top = np.argsort(-w[:-1])
  emittable = set(world.response_ids.tolist())
  top = [t for t in top if t in emittable][:config.repeat_window + 1]
  best = []
  for n in lengths:
    rows = [[top[j % len(top)] for j in range(n)]] * len(prompts)
    gold = world.gold_of_ids(prompts, rows)
    best.append((n, float(gold.mean()), float((proxy_features(world, rows[:1]) @ w)[0])))
  out["proxy_best_curve"] = best
  return out


if __name__ == "__main__":
  for key, value in measure().items():
    print(f"{key}: {value}")
