"""Density-ratio rewards of a strong-over-weak policy pair (Xu et al. 2024, "CDR: Customizable Density Ratios of
Strong-over-weak LLMs for Preference Annotation", arXiv:2411.02481; v3 titled "Dr. SoW"), and the
"density_ratio" stage that scores held-out synthetic-world pairs with several such pairs.

    r(x, y) = log pi_strong(y | x_strong) - log pi_weak(y | x_weak)

summed over the response tokens (the end token included). x_strong / x_weak are the prompt, optionally behind
a control token (`<better>` / `<worse>`): the paper's "customized" density ratio conditions the strong model
on a preference-revealing system prompt; the world's control tokens play that role for a contrastively SFT'd
policy. The paper's finding: the larger the performance gap between the strong and the weak model, the better
the density ratio ranks responses (221 model pairs, Figure 1).

The stage, for each configured ratio (name, strong, weak, contexts):
  <name>/acc_gold     pairwise accuracy against the gold ordering of held-out test pairs (gold ties dropped)
  <name>/acc_label    pairwise accuracy against the pairs' (noisy) labels
  <name>/length_corr  Spearman correlation of the reward with response length (likelihood ratios can be
                      length-biased)
  <name>/gold_strong, <name>/gold_weak, <name>/gap
                      mean gold reward of one sample per held-out prompt from each side, and their difference
                      (the strong-weak performance gap, the paper's x-axis)
and over the ratios of the run: corr_gap_acc_gold / corr_gap_acc_label (Pearson correlation between gap and
accuracy; NaN with fewer than 3 ratios), label_vs_gold (how often the labels agree with gold: the ceiling of
acc_label's meaning). A PNG of accuracy against gap is written to the stage directory.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from typing import Any, Sequence

import jax
import numpy as np

from jaxrlhf.config import ConfigError, field
from jaxrlhf.data import records as records_lib
from jaxrlhf.data import tokenize as tokenize_lib
from jaxrlhf.data.synthetic.world import pad_rows
from jaxrlhf.evaluation import pairwise
from jaxrlhf.train import builders

CONTEXTS = ("", "better", "worse")


# ------------------------------------------------------------------------------------------------ pure pieces
def density_ratio(strong_logps_B: Any, weak_logps_B: Any) -> np.ndarray:
  """float64 (B,): log pi_strong(y|x) - log pi_weak(y|x) from per-response summed log-probs (nats)."""
  strong = np.asarray(strong_logps_B, np.float64)
  weak = np.asarray(weak_logps_B, np.float64)
  if strong.ndim != 1 or strong.shape != weak.shape:
    raise ValueError(f"strong_logps_B and weak_logps_B must be equal (B,) arrays; got {strong.shape} and "
                     f"{weak.shape}")
  return strong - weak


def gold_oriented(reward_a: Any, reward_b: Any, gold_a: Any, gold_b: Any) -> tuple[np.ndarray, np.ndarray]:
  """(reward of the gold-better response, reward of the gold-worse one) for pairs whose gold differs."""
  reward_a, reward_b = np.asarray(reward_a, np.float64), np.asarray(reward_b, np.float64)
  gold_a, gold_b = np.asarray(gold_a, np.float64), np.asarray(gold_b, np.float64)
  if not reward_a.shape == reward_b.shape == gold_a.shape == gold_b.shape or reward_a.ndim != 1:
    raise ValueError(f"rewards and golds must be equal (B,) arrays; got {reward_a.shape}, {reward_b.shape}, "
                     f"{gold_a.shape}, {gold_b.shape}")
  keep = gold_a != gold_b
  a_better = gold_a > gold_b
  better = np.where(a_better, reward_a, reward_b)[keep]
  worse = np.where(a_better, reward_b, reward_a)[keep]
  return better, worse


def pearson(x: Any, y: Any) -> float:
  """Pearson correlation of two equal-length 1-D arrays; NaN with fewer than 3 points or a constant array."""
  x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
  if x.ndim != 1 or x.shape != y.shape:
    raise ValueError(f"x and y must be equal 1-D arrays; got {x.shape} and {y.shape}")
  if x.size < 3:
    return math.nan
  x, y = x - x.mean(), y - y.mean()
  denom = math.sqrt(float(np.sum(x * x) * np.sum(y * y)))
  return float(np.sum(x * y) / denom) if denom > 0 else math.nan


# ------------------------------------------------------------------------------------------------ the stage
@dataclasses.dataclass(frozen=True)
class RatioSpec:
  """One density ratio: strong / weak are "stage:<name>" or HF folders; contexts "", "better" or "worse"."""
  name: str = field("")
  strong: str = field("")
  weak: str = field("")
  strong_context: str = field("", choices=CONTEXTS)
  weak_context: str = field("", choices=CONTEXTS)

  def validate(self, path: str) -> None:
    if not self.name or "/" in self.name:
      raise ConfigError(f"{path}.name: required, without '/' (a metric prefix), got {self.name!r}")
    for key in ("strong", "weak"):
      value = getattr(self, key)
      if not value:
        raise ConfigError(f"{path}.{key}: required ('stage:<name>' or a HF folder)")
      if not value.startswith(builders.STAGE_PREFIX) and not os.path.exists(value):
        raise ConfigError(f"{path}.{key}: {value!r} does not exist")


@dataclasses.dataclass(frozen=True)
class DensityRatioConfig:
  """The "density_ratio" stage: `ratios` scored on `num_pairs` held-out (test split) world pairs; the gold gap
  from one sample per prompt on `num_prompts` test prompts (`max_new_tokens`, `temperature`)."""
  seed: int = field(0)
  world: dict = field(default_factory=dict)
  ratios: tuple[RatioSpec, ...] = field(())
  num_pairs: int = field(1024, min=1)
  num_prompts: int = field(256, min=1)
  batch_size: int = field(128, min=1)
  max_new_tokens: int = field(32, min=1)
  temperature: float = field(1.0, min=1e-3)

  def validate(self, path: str) -> None:
    if not self.ratios:
      raise ConfigError(f"{path}.ratios: expected at least one ratio")
    names = [r.name for r in self.ratios]
    if len(set(names)) != len(names):
      raise ConfigError(f"{path}.ratios: names must be distinct, got {names}")
    builders.DataSpec(world=self.world).validate(path)


def _prompt(text: str, context: str) -> str:
  return f"<{context}> {text}" if context else text


def sequence_logps(model: Any, tokenizer: Any, prompts: Sequence[str], responses: Sequence[str],
                   batch_size: int) -> np.ndarray:
  """float64 (B,): sum_t log pi(y_t | x, y_<t) of each response text (+ the end token) after its prompt text."""
  from jaxrlhf.sampling.generate import pad_prompts, response_logps  # pylint: disable=g-import-not-at-top
  prompt_rows = [tokenize_lib.encode_prompt(tokenizer, p) for p in prompts]
  response_rows = [tokenize_lib.encode_response(tokenizer, r) for r in responses]
  # One prompt width and one response width for every batch: one compiled program.
  p_width = max(len(r) for r in prompt_rows)
  n_width = max(len(r) for r in response_rows)
  out = []
  for start in range(0, len(prompts), batch_size):
    p_ids, p_mask = pad_prompts(prompt_rows[start:start + batch_size], tokenizer.pad_id, width=p_width)
    r_ids, r_mask = pad_rows(response_rows[start:start + batch_size], n_width, tokenizer.pad_id)
    out.append(np.asarray(jax.device_get(response_logps(model, p_ids, p_mask, r_ids, r_mask)), np.float64).sum(1))
  return np.concatenate(out)


def sample_gold(model: Any, world: Any, prompts: Sequence[str], cfg: DensityRatioConfig) -> float:
  """Mean gold reward of one sample per prompt (the control token, if any, is part of the prompt; gold ignores
  it)."""
  from jaxrlhf.sampling.best_of_n import gold_scorer  # pylint: disable=g-import-not-at-top
  from jaxrlhf.sampling.generate import generate, pad_prompts  # pylint: disable=g-import-not-at-top
  tok = world.tokenizer
  rows = [tokenize_lib.encode_prompt(tok, p) for p in prompts]
  width = max(len(r) for r in rows)
  gold_fn = gold_scorer(world)
  golds = []
  for start in range(0, len(rows), cfg.batch_size):
    ids, mask = pad_prompts(rows[start:start + cfg.batch_size], tok.pad_id, width=width)
    gen = generate(model, ids, mask, max_new_tokens=cfg.max_new_tokens,
                   rng=jax.random.PRNGKey(cfg.seed * 7919 + start), temperature=cfg.temperature,
                   eos_ids=(tok.eos_id,), pad_id=tok.pad_id)
    golds.append(np.asarray(gold_fn(ids, mask, gen.tokens, gen.mask), np.float64))
  return float(np.mean(np.concatenate(golds)))


def ratio_metrics(ratio_a: np.ndarray, ratio_b: np.ndarray, gold_a: np.ndarray, gold_b: np.ndarray,
                  a_is_chosen: np.ndarray, length_a: np.ndarray, length_b: np.ndarray) -> dict[str, float]:
  """acc_gold, acc_label, length_corr of one reward on pairs (a, b) with their golds and labels."""
  better, worse = gold_oriented(ratio_a, ratio_b, gold_a, gold_b)
  chosen = np.where(a_is_chosen, ratio_a, ratio_b)
  rejected = np.where(a_is_chosen, ratio_b, ratio_a)
  corr = pairwise.length_correlation(np.concatenate([ratio_a, ratio_b]), np.concatenate([length_a, length_b]))
  return {"acc_gold": pairwise.pairwise_accuracy(better, worse),
          "acc_label": pairwise.pairwise_accuracy(chosen, rejected),
          "length_corr": corr["spearman"]}


def run_density_ratio(cfg: DensityRatioConfig, workdir: str, inputs: dict) -> dict:
  """Scores every ratio on the held-out pairs (see the module docstring); writes results.json and a PNG."""
  from jaxrlhf.models import from_pretrained  # pylint: disable=g-import-not-at-top
  world = builders.make_world(builders.DataSpec(world=cfg.world))
  tok = world.tokenizer
  records = world.preference_records(cfg.num_pairs, "test")
  prompts = [r.prompt for r in records]
  chosen = [records_lib.response_text(r.chosen) for r in records]
  rejected = [records_lib.response_text(r.rejected) for r in records]
  gold_c = world.gold_of_texts(prompts, chosen)
  gold_r = world.gold_of_texts(prompts, rejected)
  lengths_c = np.asarray([len(tok.encode(t)) + 1 for t in chosen], np.float64)
  lengths_r = np.asarray([len(tok.encode(t)) + 1 for t in rejected], np.float64)
  sample_prompts = world.prompts(cfg.num_prompts, "test")

  models: dict[str, Any] = {}
  logps: dict[tuple[str, str], tuple[np.ndarray, np.ndarray]] = {}
  golds: dict[tuple[str, str], float] = {}

  def side(source: str, context: str) -> tuple[tuple[np.ndarray, np.ndarray], float]:
    path = builders.resolve_path(source, inputs)
    if path not in models:
      models[path] = from_pretrained(path)[0]
    key = (path, context)
    if key not in logps:
      ctx_prompts = [_prompt(p, context) for p in prompts]
      logps[key] = (sequence_logps(models[path], tok, ctx_prompts, chosen, cfg.batch_size),
                    sequence_logps(models[path], tok, ctx_prompts, rejected, cfg.batch_size))
      golds[key] = sample_gold(models[path], world, [_prompt(p, context) for p in sample_prompts], cfg)
    return logps[key], golds[key]

  metrics: dict[str, float] = {"label_vs_gold": pairwise.pairwise_accuracy(gold_c, gold_r)}
  gaps, acc_gold, acc_label = [], [], []
  for spec in cfg.ratios:
    (s_c, s_r), g_strong = side(spec.strong, spec.strong_context)
    (w_c, w_r), g_weak = side(spec.weak, spec.weak_context)
    m = ratio_metrics(density_ratio(s_c, w_c), density_ratio(s_r, w_r), gold_c, gold_r,
                      np.ones(len(records), bool), lengths_c, lengths_r)
    m.update(gold_strong=g_strong, gold_weak=g_weak, gap=g_strong - g_weak)
    metrics.update({f"{spec.name}/{k}": float(v) for k, v in m.items()})
    gaps.append(m["gap"])
    acc_gold.append(m["acc_gold"])
    acc_label.append(m["acc_label"])
  metrics["corr_gap_acc_gold"] = pearson(gaps, acc_gold)
  metrics["corr_gap_acc_label"] = pearson(gaps, acc_label)
  os.makedirs(workdir, exist_ok=True)
  with open(os.path.join(workdir, "results.json"), "w") as f:
    json.dump({"status": "done", "metrics": metrics}, f, indent=2)
  plot_gap_accuracy(os.path.join(workdir, "density_ratio.png"), [r.name for r in cfg.ratios], gaps, acc_gold,
                    acc_label)
  print("[density_ratio] " + ", ".join(f"{k}={v:.4g}" for k, v in metrics.items()), flush=True)
  return {"metrics": metrics}


def plot_gap_accuracy(path: str, names: Sequence[str], gaps: Sequence[float], acc_gold: Sequence[float],
                      acc_label: Sequence[float], gap_err: Sequence[float] | None = None,
                      acc_err: Sequence[float] | None = None) -> None:
  """Accuracy (against gold and labels) against the strong-weak gold gap, one labeled point per ratio."""
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  fig, ax = plt.subplots(figsize=(5.5, 4))
  ax.errorbar(gaps, acc_gold, xerr=gap_err, yerr=acc_err, fmt="o", capsize=3, label="vs gold ordering")
  ax.plot(gaps, acc_label, "s", mfc="none", label="vs labels")
  for name, x, y in zip(names, gaps, acc_gold):
    ax.annotate(name, (x, y), fontsize=7, xytext=(3, 3), textcoords="offset points")
  ax.axhline(0.5, color="gray", lw=0.5)
  ax.set_xlabel("gold(strong samples) - gold(weak samples)")
  ax.set_ylabel("pairwise accuracy of log pi_s - log pi_w")
  ax.legend(fontsize=8)
  fig.tight_layout()
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  fig.savefig(path, dpi=100)
  plt.close(fig)


def plot_from_table(results_csv: str, path: str, names: Sequence[str]) -> None:
  """The sweep-level figure from `experiments.tables`' results.csv (one row; columns "<m> mean" / "<m> std"
  with m = "density_ratio/<name>/<metric>"): accuracy against gap with std error bars over seeds."""
  import csv  # pylint: disable=g-import-not-at-top
  with open(results_csv) as f:
    row = next(csv.DictReader(f))

  def col(name: str, metric: str, stat: str) -> float:
    key = f"density_ratio/{name}/{metric} {stat}"
    if key not in row:
      raise ValueError(f"results_csv: no column {key!r}")
    return float(row[key])

  plot_gap_accuracy(path, names, [col(n, "gap", "mean") for n in names], [col(n, "acc_gold", "mean") for n in names],
                    [col(n, "acc_label", "mean") for n in names], gap_err=[col(n, "gap", "std") for n in names],
                    acc_err=[col(n, "acc_gold", "std") for n in names])

