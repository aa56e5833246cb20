"""The "density_ratio" stage: density-ratio rewards of strong-over-weak policy pairs (Xu et al. 2024, "CDR:
Customizable Density Ratios of Strong-over-weak LLMs for Preference Annotation", arXiv:2411.02481; v3 titled
"Dr. SoW") scoring held-out synthetic-world pairs.

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
import os
from typing import Any, Sequence

import jax
import numpy as np

from jaxrlhf.config import ConfigError, field, stage_ref
from jaxrlhf.data import padding
from jaxrlhf.data import records as records_lib
from jaxrlhf.data import tokenize as tokenize_lib
from jaxrlhf.evaluation import density_ratio as ratio_lib
from jaxrlhf.evaluation import pairwise
from jaxrlhf.evaluation import stats
from jaxrlhf.models import from_pretrained
from jaxrlhf.sampling.best_of_n import gold_scorer
from jaxrlhf.sampling.generate import generate
from jaxrlhf.stages import common
from jaxrlhf.stages import inputs as inputs_lib
from jaxrlhf.train import scoring

CONTEXTS = ("", "better", "worse")


@dataclasses.dataclass(frozen=True)
class RatioSpec:
  """One density ratio: strong / weak are "stage:<name>" or HF folders; contexts "", "better" or "worse"."""
  name: str = field("")
  strong: str = stage_ref("model_dir")
  weak: str = stage_ref("model_dir")
  strong_context: str = field("", choices=CONTEXTS)
  weak_context: str = field("", choices=CONTEXTS)

  def validate(self, path: str) -> None:
    if not self.name or "/" in self.name:
      raise ConfigError(f"{path}.name: required, without '/' (a metric prefix), got {self.name!r}")
    for key in ("strong", "weak"):
      value = getattr(self, key)
      if not value:
        raise ConfigError(f"{path}.{key}: required ('stage:<name>' or a HF folder)")


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
  cache_bucket: int | None = field(None, min=0)  # decode phases (`sampling.generate`); None: the backend's rule
  tokens_per_iteration: int = field(1, min=1)  # decode steps per loop iteration (`sampling.generate`)

  def validate(self, path: str) -> None:
    if not self.ratios:
      raise ConfigError(f"{path}.ratios: expected at least one ratio")
    names = [r.name for r in self.ratios]
    if len(set(names)) != len(names):
      raise ConfigError(f"{path}.ratios: names must be distinct, got {names}")
    inputs_lib.check_world(self.world, path)


def _prompt(text: str, context: str) -> str:
  return f"<{context}> {text}" if context else text


def text_logps(model: Any, tokenizer: Any, prompts: Sequence[str], responses: Sequence[str],
               batch_size: int) -> np.ndarray:
  """float64 (B,): sum_t log pi(y_t | x, y_<t) of each response text (+ the end token) after its prompt text."""
  return scoring.sequence_logps(model, [tokenize_lib.encode_prompt(tokenizer, p) for p in prompts],
                                [tokenize_lib.encode_response(tokenizer, r) for r in responses], tokenizer.pad_id,
                                batch_size)


def sample_gold(model: Any, world: Any, prompts: Sequence[str], cfg: DensityRatioConfig) -> float:
  """Mean gold reward of one sample per prompt (the control token, if any, is part of the prompt; gold ignores
  it)."""
  tok = world.tokenizer
  rows = [tokenize_lib.encode_prompt(tok, p) for p in prompts]
  width = max(len(r) for r in rows)
  gold_fn = gold_scorer(world)
  golds = []
  for start in range(0, len(rows), cfg.batch_size):
    ids, mask = padding.pad_prompts(rows[start:start + cfg.batch_size], tok.pad_id, width=width)
    gen = generate(model, ids, mask, max_new_tokens=cfg.max_new_tokens,
                   rng=jax.random.PRNGKey(cfg.seed * 7919 + start), temperature=cfg.temperature,
                   eos_ids=(tok.eos_id,), pad_id=tok.pad_id, cache_bucket=cfg.cache_bucket,
                   tokens_per_iteration=cfg.tokens_per_iteration)
    golds.append(np.asarray(gold_fn(ids, mask, gen.tokens, gen.mask), np.float64))
  return float(np.mean(np.concatenate(golds)))


def run(cfg: DensityRatioConfig, workdir: str, inputs: dict) -> dict:
  """Scores every ratio on the held-out pairs (see the module docstring); writes results.json and a PNG."""
  world = inputs_lib.make_world(cfg.world)
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
    path = common.resolve_path(source, inputs)
    if path not in models:
      models[path] = from_pretrained(path)[0]
    key = (path, context)
    if key not in logps:
      ctx_prompts = [_prompt(p, context) for p in prompts]
      logps[key] = (text_logps(models[path], tok, ctx_prompts, chosen, cfg.batch_size),
                    text_logps(models[path], tok, ctx_prompts, rejected, cfg.batch_size))
      golds[key] = sample_gold(models[path], world, [_prompt(p, context) for p in sample_prompts], cfg)
    return logps[key], golds[key]

  metrics: dict[str, float] = {"label_vs_gold": pairwise.pairwise_accuracy(gold_c, gold_r)}
  gaps, acc_gold, acc_label = [], [], []
  for spec in cfg.ratios:
    (s_c, s_r), g_strong = side(spec.strong, spec.strong_context)
    (w_c, w_r), g_weak = side(spec.weak, spec.weak_context)
    m = ratio_lib.ratio_metrics(ratio_lib.density_ratio(s_c, w_c), ratio_lib.density_ratio(s_r, w_r), gold_c, gold_r,
                      np.ones(len(records), bool), lengths_c, lengths_r)
    m.update(gold_strong=g_strong, gold_weak=g_weak, gap=g_strong - g_weak)
    metrics.update({f"{spec.name}/{k}": float(v) for k, v in m.items()})
    gaps.append(m["gap"])
    acc_gold.append(m["acc_gold"])
    acc_label.append(m["acc_label"])
  # Two points always correlate perfectly: the correlation needs at least three ratios.
  metrics["corr_gap_acc_gold"] = stats.pearson(gaps, acc_gold, min_size=3)
  metrics["corr_gap_acc_label"] = stats.pearson(gaps, acc_label, min_size=3)
  os.makedirs(workdir, exist_ok=True)
  common.write_results(workdir, metrics)
  ratio_lib.plot_gap_accuracy(os.path.join(workdir, "density_ratio.png"), [r.name for r in cfg.ratios], gaps, acc_gold,
                    acc_label)
  print("[density_ratio] " + ", ".join(f"{k}={v:.4g}" for k, v in metrics.items()), flush=True)
  return {"metrics": metrics}
