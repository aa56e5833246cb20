"""A stage's inputs: the synthetic world or files, records with their transforms, margins and curation, and the
batch iterators and held-out batches of the input pipeline.

`DataSpec` (a stage's `data` section) names the source: the synthetic gold-reward world (`world` = WorldConfig
kwargs) or preference files (paths + format, strict or lenient; the skip report is logged and returned for
results.json), the pipeline sizes, an optional reward-augmented relabeling, where the per-pair `margin` comes
from, curation by preference strength, and the pair layout (`shared_prompt`). `stage_context` is the shared start
of the training stages: world, mesh, model config and weights, tokenizer.
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import hashlib
import json
import os
from typing import Any, Mapping, NamedTuple, Sequence

import jax
import jinja2
import ml_collections
import numpy as np
from absl import logging
from flax import nnx

from jaxrlhf.config import ConfigError, field, stage_ref
from jaxrlhf.data import AdapterConfig, format_skip_report, read_records
from jaxrlhf.data.adapters import DEFAULT_COLUMNS, FILE_SUFFIXES
from jaxrlhf.data.errors import DataFileError
from jaxrlhf.data.records import has_tool_calls, template_kwargs_problem
from jaxrlhf.data import padding
from jaxrlhf.data import pipeline as pipeline_lib
from jaxrlhf.data import prompts as prompts_lib
from jaxrlhf.data import tokenize
from jaxrlhf.data import transforms
from jaxrlhf.data.synthetic import World, WorldConfig
from jaxrlhf.data.synthetic.world import CRITERION_LABELS
from jaxrlhf.models import load_tokenizer
from jaxrlhf.models.config import ModelConfig
from jaxrlhf.models.decoder import layer_param_specs
from jaxrlhf.stages import artifacts
from jaxrlhf.stages import common
from jaxrlhf.stages.reward_sources import PromptTable
from jaxrlhf.train import scoring

MARGIN_SOURCES = ("none", "file", "score", "reward_model")
CURATE_CHOICES = ("none", "flip", "drop")
CRITERIA_CHOICES = ("none", "shown", "hidden")
SHARED_PROMPT_CHOICES = ("auto", "on", "off")
# "auto" scores pairs in the shared-prompt layout when it costs at most this fraction of the two-row layout's
# estimated FLOPs (the layout adds a gather and a wider attention mask, so a near tie is not worth it).
SHARED_PROMPT_MAX_COST = 0.9


# The preference-file formats (jaxrlhf.data.adapters) a DataSpec reads.
PAIR_FORMATS = ("pairwise", "chat", "hh", "ultrafeedback")
# Those whose prompts are always text (a raw HH dialogue, an UltraFeedback instruction): no chat template renders them.
TEXT_PROMPT_FORMATS = ("hh", "ultrafeedback")


@dataclasses.dataclass(frozen=True)
class DataSpec:
  """Training / evaluation data and the input pipeline.

  source: "world" (the synthetic gold-reward world, `world` = WorldConfig kwargs) or "files" (`paths`,
    `format`, `strict`, `columns`; held-out pairs from `eval_paths` or the last `eval_fraction`).
  num_train / num_eval: world records per split (files: caps, 0 = all; `num_eval` caps the held-out fraction, an
    `eval_paths` file is used whole; what the caps leave out is counted in the data report, `split`).
  contrastive_sft: SFT on the world's neutral, `<better>` and `<worse>` samples (a policy T-REG can query).
  goal_fraction: SFT data: this share of the prompts carries a goal prompt with a RANDOM score
    (`data.transforms.goal_format_records`), so that reward-augmented DPO starts from a policy that knows the goal
    format but not what a score means (the paper starts from instruct models that read system prompts; a policy
    SFT'd on plain prompts has never seen the goal tokens). 0: plain prompts.
  transform: "reward_augmented" doubles scored pairs by goal conditioning (Zhang et al. 2024); "score_ordered"
    re-orders each pair by its judge scores (chosen = the higher score), DPO's control with the same information.
  score_ties: pairs with equal judge scores under a transform: "keep" (reward_augmented: two contradictory rows;
    score_ordered: the label as read) or "drop"; counted in the stage's data report (`transform`).
  margin_from: the per-pair `margin` field: "none" (NaN), "file" (as read), "score" (chosen_score -
    rejected_score) or "reward_model" (mean member margin of the reward model `reward_model`, e.g.
    "stage:reward"); consumed by margin losses, adaptive margins and dynamic beta.
  curate / curate_fraction: preference-strength curation of the TRAINING pairs (Wang et al. 2024, "Secrets of
    RLHF II"): "flip" swaps chosen/rejected of, "drop" removes, the lowest-strength `curate_fraction` of pairs,
    with strength = the mean member margin of the reward model `reward_model` (e.g. "stage:ensemble"). The
    counts go to the stage's data report (`curation`). Held-out pairs are never curated.
  attribute_levels: 0 keeps the training pairs' attribute vectors as read; L >= 2 replaces each attribute by
    its level 0..L-1 among the training responses (per-attribute quantile bins, like a coarse Likert rating,
    e.g. HelpSteer2's 0-4 scale); the bin edges go to the data report (`attribute_levels`).
  attribute_noise: > 0 adds Gaussian noise of this many standard deviations (per attribute, over the training
    responses) to the training pairs' attributes before any quantization (`noisy_attributes`; how often the noisy
    sums still order a pair like the exact ones goes to the data report, `attribute_noise`).
  shared_prompt: reward / preference training and held-out scoring: "on" runs each pair as one
    [prompt | chosen | rejected] row (the prompt once, models.shared_prompt), "off" as two rows, "auto" shares
    when the estimated step FLOPs over the training pairs drop to <= SHARED_PROMPT_MAX_COST of two rows (long
    prompts, short responses); the choice and the ratio go to the data report (`shared_prompt`).
  criteria: the world's criterion-labelled pairs (context-aware preference modeling; Pitis et al. 2024, arXiv
    2407.14916; needs `world.criteria`): "none" (the default) leaves the data as it is; "shown" / "hidden" adds
    `num_criteria_train` criterion pairs to the training pairs and makes the held-out pairs `num_eval` criterion
    pairs, the criterion given as a system turn ("shown") or left out ("hidden": the same pairs, plain prompts).
    `criteria_labels` labels the held-out criterion pairs: "sampled" (Bradley-Terry under the criterion, with
    flips, as the training pairs) or "oracle" (the criterion's gold preference). See `World.criterion_records`.
  """
  source: str = field("world", choices=("world", "files"))
  world: dict = field(default_factory=dict)
  num_train: int = field(2048, min=0)
  num_eval: int = field(256, min=0)
  contrastive_sft: bool = field(False)
  goal_fraction: float = field(0.0, min=0.0, max=1.0)
  paths: tuple[str, ...] = field(())
  eval_paths: tuple[str, ...] = field(())
  eval_fraction: float = field(0.05, min=0.0, max=0.5)
  format: str = field("pairwise", choices=PAIR_FORMATS)  # SFT files too in the sft stage's SFTDataSpec.
  strict: bool = field(False)
  columns: dict = field(default_factory=dict)
  tokenizer: str = field("")  # A HF folder / .gguf; default: the world's, else the model's.
  # A .jinja file whose chat template replaces the tokenizer's (TRL's chat_template_path), e.g. a tool-use template.
  chat_template_path: str = field("", must_exist=True)
  # Template variables every chat rendering gets, a dict or its JSON text, e.g. '{"enable_thinking": false}' (TRL's
  # chat_template_kwargs); a row's own chat_template_kwargs column overrides them. Saved with the policy's tokenizer.
  chat_template_kwargs: dict | str = field(default_factory=dict)
  batch_size: int = field(16, min=1)
  eval_batch_size: int = field(0, min=0)  # 0: batch_size.
  max_length: int = field(64, min=2)
  max_prompt_length: int = field(0, min=0)  # 0: no separate prompt budget.
  buckets: tuple[int, ...] = field(())  # () : max_length only (one compiled shape).
  pack: bool = field(False)
  shuffle: bool = field(True)
  transform: str = field("none", choices=("none", "reward_augmented", "score_ordered"))
  score_ties: str = field("keep", choices=transforms.TIE_MODES)
  margin_from: str = field("none", choices=MARGIN_SOURCES)
  reward_model: str = stage_ref("rm_dir")
  num_threads: int = field(0, min=0)
  curate: str = field("none", choices=CURATE_CHOICES)
  curate_fraction: float = field(0.1, min=0.0, max=1.0)
  attribute_levels: int = field(0, min=0)
  attribute_noise: float = field(0.0, min=0.0)
  shared_prompt: str = field("auto", choices=SHARED_PROMPT_CHOICES)
  criteria: str = field("none", choices=CRITERIA_CHOICES)
  num_criteria_train: int = field(0, min=0)
  criteria_labels: str = field("sampled", choices=CRITERION_LABELS)

  def validate(self, path: str) -> None:
    if self.score_ties != "keep" and self.transform == "none":
      raise ConfigError(f"{path}.score_ties: {self.score_ties!r} applies to a transform; set {path}.transform to "
                        "'reward_augmented' or 'score_ordered'")
    if self.source == "files" and not self.paths:
      raise ConfigError(f"{path}.paths: required when {path}.source='files' (e.g. --config.{path[7:]}.paths="
                        "'(\"a.jsonl\",)')")
    check_data_files(self, path)
    check_columns(self.columns, self.format, path)
    template_kwargs(self, path)
    if self.source == "world" and not self.tokenizer:
      refuse_template_settings(self, path, "the synthetic world's tokenizer has its own chat format; a chat template "
                               f"setting applies to a real tokenizer ({path}.tokenizer, or files and the model's)")
    if self.source == "files" and self.format in TEXT_PROMPT_FORMATS:
      refuse_template_settings(self, path, f"the {self.format!r} format's prompts are text, encoded as they are "
                               "without the chat template, so this setting would apply to nothing")
    if self.source == "world":
      check_world(self.world, path)
    if self.criteria != "none" and (self.source != "world" or not self.world.get("criteria")):
      raise ConfigError(f"{path}.criteria: {self.criteria!r} needs source='world' with {path}.world.criteria "
                        "(((name, 5 weights), ...)), got " + (f"source={self.source!r}" if self.source != "world"
                                                              else "no criteria"))
    for key, default in (("num_criteria_train", 0), ("criteria_labels", "sampled")):
      if self.criteria == "none" and getattr(self, key) != default:
        raise ConfigError(f"{path}.{key}: only used with {path}.criteria='shown' or 'hidden'")
    if self.margin_from == "reward_model" and not self.reward_model:
      raise ConfigError(f"{path}.reward_model: required when {path}.margin_from='reward_model' "
                        f"(e.g. 'stage:reward')")
    if self.curate != "none" and not self.reward_model:
      raise ConfigError(f"{path}.reward_model: required when {path}.curate={self.curate!r} (the ensemble whose "
                        f"mean margin is the preference strength, e.g. 'stage:ensemble')")
    if self.attribute_levels == 1:
      raise ConfigError(f"{path}.attribute_levels: 1 level erases the attributes; use 0 (as read) or >= 2")
    if self.max_prompt_length >= self.max_length:
      raise ConfigError(f"{path}.max_prompt_length: {self.max_prompt_length} must be < "
                        f"{path}.max_length={self.max_length}")
    if any(b > self.max_length or b < 2 for b in self.buckets):
      raise ConfigError(f"{path}.buckets: {self.buckets} must lie in [2, max_length={self.max_length}]")


@dataclasses.dataclass(frozen=True)
class SFTDataSpec(DataSpec):
  """The sft stage's DataSpec: files may also be SFT examples (`format="sft"`: prompt + completion, messages or
  text; see jaxrlhf.data.adapters), besides the preference formats, whose chosen responses it trains on.

  turns: an SFT conversation's assistant turns that carry the loss: "last" (the file's response; earlier turns are
    context) or "all" (`transforms.every_assistant_turn`: one example per answerable assistant turn, each with the
    messages before it; held-out conversations likewise; needs format "sft").
  """
  format: str = field("pairwise", choices=PAIR_FORMATS + ("sft",))
  turns: str = field("last", choices=("last", "all"))

  def validate(self, path: str) -> None:
    super().validate(path)
    if self.turns == "all" and self.format != "sft":
      raise ConfigError(f"{path}.turns: 'all' splits SFT conversations (format 'sft'); {path}.format is "
                        f"{self.format!r}, whose responses are single turns")


def check_data_files(spec: Any, path: str, keys: Sequence[str] = ("paths", "eval_paths")) -> None:
  """ConfigError naming `<path>.<key>[i]` for an entry of `spec.<key>` that is not an existing file of a type the
  adapters read (FILE_SUFFIXES): caught at the config boundary, not after the weights load."""
  expected = f"{', '.join(FILE_SUFFIXES[:-1])} or {FILE_SUFFIXES[-1]}"
  for key in keys:
    for i, p in enumerate(getattr(spec, key)):
      if not isinstance(p, str) or not p:
        raise ConfigError(f"{path}.{key}[{i}]: expected a file path ({expected}), got {p!r}")
      if not os.path.exists(p):
        raise ConfigError(f"{path}.{key}[{i}]: file not found: {p!r}")
      if os.path.isdir(p):
        raise ConfigError(f"{path}.{key}[{i}]: {p!r} is a directory, not a file; expected a {expected} file "
                          f"(list the files themselves)")
      if not os.path.isfile(p):
        raise ConfigError(f"{path}.{key}[{i}]: {p!r} is not a regular file; expected a {expected} file")
      if not p.endswith(FILE_SUFFIXES):
        raise ConfigError(f"{path}.{key}[{i}]: {p!r} has an unsupported file type; expected a {expected} file")


def check_columns(columns: Mapping[str, Any], format_name: str, path: str) -> None:
  """ConfigError naming `<path>.columns.<key>` for a key the format does not read (DEFAULT_COLUMNS) or a value
  that is not a column name (a non-empty string)."""
  valid = sorted(DEFAULT_COLUMNS[format_name])
  for key in sorted(columns, key=str):
    if key not in valid:
      close = difflib.get_close_matches(str(key), valid, n=1)
      hint = f" (did you mean {close[0]!r}?)" if close else ""
      raise ConfigError(f"{path}.columns.{key}: unknown for {path}.format={format_name!r}{hint}; valid keys: "
                        f"{', '.join(valid)}")
    value = columns[key]
    if not isinstance(value, str) or not value.strip():
      raise ConfigError(f"{path}.columns.{key}: expected the file's column name (a non-empty string), got "
                        f"{value!r}")

# ------------------------------------------------------------------------------------------------ world, tokenizer
def check_world(world: Mapping[str, Any], path: str) -> None:
  """ConfigError naming `<path>.world.<key>` for a key that is not a WorldConfig field."""
  fields = {f.name for f in dataclasses.fields(WorldConfig)}
  unknown = sorted(set(world) - fields)
  if unknown:
    raise ConfigError(f"{path}.world.{unknown[0]}: unknown WorldConfig key; valid keys: " + ", ".join(sorted(fields)))


def _tuples(value: Any) -> Any:
  return tuple(_tuples(v) for v in value) if isinstance(value, (list, tuple)) else value


def make_world(world: Mapping[str, Any]) -> World:
  """The synthetic world of WorldConfig kwargs (lists, nested ones too, become tuples, as config files and JSON give
  them, e.g. `criteria` = [[name, [5 weights]], ...]).

  One World per WorldConfig per process: every stage of a chain builds the same world, and building one (its prompt
  pool and tables, ~0.25 s) is a deterministic function of the config. Its arrays are read-only, so a stage cannot
  change the world the next stage sees.
  """
  return _shared_world(WorldConfig(**{k: _tuples(v) for k, v in world.items()}))


@functools.lru_cache(maxsize=4)
def _shared_world(config: WorldConfig) -> World:
  return World(config).freeze()


def make_tokenizer(data: DataSpec, world: Any, model_path: str):
  """The world's tokenizer, `data.tokenizer`, or the pretrained model's; with `data.chat_template_path`'s template
  and `data.chat_template_kwargs` as its defaults."""
  if world is not None and not data.tokenizer:
    refuse_template_settings(data, "data", "the synthetic world's tokenizer has its own chat format; a chat template "
                             "setting applies to a real tokenizer (data.tokenizer or the model's)")
    return world.tokenizer
  path = data.tokenizer or model_path
  if not path:
    raise ValueError("data.tokenizer: needed for file data with a randomly initialized model")
  tokenizer = with_template_file(cached_tokenizer(path), data.chat_template_path, "data.chat_template_path")
  return with_template_defaults(tokenizer, template_kwargs(data, "data"), "data.chat_template_kwargs")


def refuse_template_settings(spec: Any, path: str, why: str) -> None:
  """ConfigError `<path>.<key>: <why>` for the first chat template setting (`chat_template_path`,
  `chat_template_kwargs`) that `spec` sets."""
  for key in ("chat_template_path", "chat_template_kwargs"):
    if getattr(spec, key):
      raise ConfigError(f"{path}.{key}: {why}")


def template_kwargs(spec: Any, path: str) -> dict[str, Any]:
  """`spec.chat_template_kwargs` as a dict (a dict, or its JSON text as a command line gives it); ConfigError
  naming `<path>.chat_template_kwargs` for text that is not a JSON object or names that are not template variables."""
  value, key = _plain(spec.chat_template_kwargs), f"{path}.chat_template_kwargs"
  if isinstance(value, str):
    try:
      value = json.loads(value) if value.strip() else {}
    except json.JSONDecodeError as e:
      raise ConfigError(f"{key}: {value!r} is not JSON ({e.msg} at character {e.pos}); e.g. "
                        "'{\"enable_thinking\": false}'") from e
  problem = template_kwargs_problem(value)
  if problem:
    raise ConfigError(f"{key}: {problem}")
  return value


def _plain(value: Any) -> Any:
  """`value` with the mappings (a config file's nested ConfigDicts) made dicts and tuples lists, as JSON gives them."""
  if isinstance(value, (Mapping, ml_collections.ConfigDict)):
    return {k: _plain(v) for k, v in value.items()}
  if isinstance(value, (list, tuple)):
    return [_plain(v) for v in value]
  return value


def with_template_defaults(tokenizer: Any, defaults: Mapping[str, Any], key: str) -> Any:
  """`tokenizer` rendering as if every chat template call passed `defaults` (none: unchanged); ConfigError naming
  `key` for a tokenizer without a chat template."""
  if not defaults:
    return tokenizer
  try:
    return tokenizer.with_template_defaults(defaults)
  except ValueError as e:
    raise ConfigError(f"{key}: {e}") from e


def with_template_file(tokenizer: Any, path: str, key: str) -> Any:
  """`tokenizer` with the chat template read from the file `path` (none: unchanged); a file that is not a Jinja
  template is a ConfigError naming `key`."""
  if not path:
    return tokenizer
  try:
    with open(path, encoding="utf-8") as f:
      source = f.read()
    return tokenizer.with_chat_template(source)
  except (OSError, UnicodeDecodeError) as e:
    raise ConfigError(f"{key}: cannot read {path!r}: {e}") from e
  except jinja2.TemplateSyntaxError as e:
    raise ConfigError(f"{key}: {path}:{e.lineno}: not a Jinja chat template: {e.message}") from e


def _tokenizer_files(path: str) -> tuple[tuple[str, int, int], ...]:
  """(file, mtime_ns, size) of the files a tokenizer is read from (a .gguf, or a folder's tokenizer files)."""
  files = [path] if not os.path.isdir(path) else [os.path.join(path, name) for name in sorted(os.listdir(path))
                                                  if name.startswith(("tokenizer", "special_tokens", "chat_template"))]
  return tuple((f, os.stat(f).st_mtime_ns, os.stat(f).st_size) for f in files if os.path.isfile(f))


@functools.lru_cache(maxsize=4)
def _load_tokenizer(path: str, stamp: tuple) -> Any:
  del stamp  # Part of the cache key only.
  return load_tokenizer(path)


def cached_tokenizer(path: str) -> Any:
  """`load_tokenizer(path)`, read once per process while its files are unchanged: a chain's stages share it (a
  GGUF's tokenizer takes seconds to parse)."""
  try:
    stamp = _tokenizer_files(path)
  except OSError:
    return load_tokenizer(path)  # Raises the loader's own error for a missing or unreadable path.
  return _load_tokenizer(os.path.abspath(path), stamp)


def control_ids(tokenizer: Any, text: str, path: str) -> tuple[int, ...]:
  """The token ids of a control context (e.g. T-REG's `<better>`); ValueError naming `path` if it is empty."""
  ids = tuple(tokenizer.encode(text))
  if not ids:
    raise ValueError(f"{path}: {text!r} encodes to no tokens")
  return ids


# ------------------------------------------------------------------------------------------------ records
def read_files(data: DataSpec) -> tuple[list, list, dict]:
  """(train records, held-out records, report) from preference files.

  Held out: the records of `data.eval_paths`, all of them (`num_eval` caps only a held-out fraction, so that an
  evaluation file is scored whole), else the last round(N * eval_fraction) of the N records of `data.paths` (at
  most `num_eval` when > 0); `num_train` (> 0) keeps the first train records. The report holds the train files'
  skip report {"kept", "skipped", "counts", "notes", "line"}, "eval" (the same for eval_paths), and "split" {"train",
  "held_out", "unused_train" (train records past num_train), "line"}; each line is printed as `[data] ...`.

  Raises:
    DataFileError naming data.paths / data.eval_paths: no usable record (an empty file, or every row skipped).
  """
  adapter = AdapterConfig(format=data.format, columns=dict(data.columns), strict=data.strict)
  records, report = read_records(list(data.paths), adapter)
  line = format_skip_report(report, f"{data.format} {list(data.paths)}")
  logging.warning("%s", line)
  print(f"[data] {line}", flush=True)
  summary = {"kept": report.kept, "skipped": report.skipped, "counts": dict(report.counts),
             "notes": dict(report.notes), "line": line}
  if data.eval_paths:
    held_out, eval_report = read_records(list(data.eval_paths), adapter)
    eval_line = format_skip_report(eval_report, f"{data.format} eval {list(data.eval_paths)}")
    logging.warning("%s", eval_line)
    print(f"[data] {eval_line}", flush=True)
    summary["eval_skipped"] = eval_report.skipped
    summary["eval"] = {"kept": eval_report.kept, "skipped": eval_report.skipped, "counts": dict(eval_report.counts),
                       "notes": dict(eval_report.notes), "line": eval_line}
    if not held_out:  # Held-out evaluation was asked for: running without it would be a silent change of plan.
      raise DataFileError(f"data.eval_paths: no usable records in {list(data.eval_paths)} ({eval_line})")
    held_out_from = "data.eval_paths"
  else:
    n_eval = int(round(len(records) * data.eval_fraction))
    if data.num_eval:
      n_eval = min(n_eval, data.num_eval) if n_eval else 0
    held_out, records = (records[len(records) - n_eval:], records[:len(records) - n_eval]) if n_eval else (
        [], records)
    held_out_from = f"the last {n_eval} of {report.kept}: data.eval_fraction={data.eval_fraction:g}" + (
        f", data.num_eval={data.num_eval}" if data.num_eval else "")
  candidates = len(records)
  if data.num_train:
    records = records[:data.num_train]
  if not records:
    raise DataFileError(f"data.paths: no usable records in {list(data.paths)} ({line})")
  unused = candidates - len(records)
  # A cap is a choice, not a loss; still, every record read is accounted for: train + held out + unused = kept.
  split_line = (f"split: {len(records)} train, {len(held_out)} held out ({held_out_from})" +
                (f"; {unused} of {candidates} train records unused (data.num_train={data.num_train})" if unused
                 else ""))
  print(f"[data] {split_line}", flush=True)
  summary["split"] = {"train": len(records), "held_out": len(held_out), "unused_train": unused, "line": split_line}
  return records, held_out, summary


def preference_records(data: DataSpec, world: Any) -> tuple[list, list, dict]:
  """(train pairs, held-out pairs, data report) before transforms."""
  if data.source == "world" and data.criteria != "none":
    shown = data.criteria == "shown"
    train = world.preference_records(data.num_train, "train") + world.criterion_records(
        data.num_criteria_train, "train", shown=shown)
    held_out = world.criterion_records(max(data.num_eval, 1), "validation", shown=shown,
                                       labels=data.criteria_labels)[:data.num_eval]
    return train, held_out, {"criteria": {"rendering": data.criteria, "train_pairs": data.num_criteria_train,
                                          "held_out_labels": data.criteria_labels}}
  if data.source == "world":
    return (world.preference_records(data.num_train, "train"),
            world.preference_records(max(data.num_eval, 1), "validation")[:data.num_eval], {})
  return read_files(data)


def sft_records(data: DataSpec, world: Any, tokenizer: Any = None, seed: int = 0) -> tuple[list, list, dict]:
  """(train, held-out, report) SFT records: world reference samples, SFT files (`data.format="sft"`), or the chosen
  side of preference files;
  with `data.goal_fraction` > 0 that share of prompts is goal-formatted (seeded by `seed`; needs `tokenizer`)."""
  if data.source == "world":
    train, held_out, report = (world.sft_records(data.num_train, "train", contrastive=data.contrastive_sft),
                               world.sft_records(max(data.num_eval, 1), "validation")[:data.num_eval], {})
  else:
    train, held_out, report = read_files(data)
  if getattr(data, "turns", "last") == "all":  # SFTDataSpec only: the other stages' DataSpec has no `turns`.
    (train, train_counts), (held_out, eval_counts) = _every_turn(train, "train"), _every_turn(held_out, "eval")
    report = dict(report, turns={"train": train_counts, "eval": eval_counts})
  if data.goal_fraction > 0:
    role = tokenizer.supports_system_role
    train = transforms.goal_format_records(train, data.goal_fraction, seed, supports_system_role=role)
    held_out = transforms.goal_format_records(held_out, data.goal_fraction, seed + 1, supports_system_role=role)
  return train, held_out, report


def _every_turn(records: list, split: str) -> tuple[list, dict]:
  """`transforms.every_assistant_turn` of one split, its counts with a printed `line`."""
  expanded, counts = transforms.every_assistant_turn(records)
  counts["line"] = (f"turns 'all' ({split}): {counts['conversations']} conversations -> {counts['examples']} "
                    f"examples, one per assistant turn ({counts['unanswerable_turns']} assistant turns after a "
                    "system or assistant message kept as context only)")
  print(f"[data] {counts['line']}", flush=True)
  return expanded, counts


def transform_pairs(records: list, data: DataSpec, tokenizer: Any) -> list:
  """Applies `data.transform` (reward-augmented relabeling, score ordering) at data build time."""
  if data.transform == "reward_augmented":
    return transforms.reward_augmented_pairs(records, supports_system_role=tokenizer.supports_system_role,
                                             ties=data.score_ties)
  if data.transform == "score_ordered":
    return transforms.score_ordered_pairs(records, ties=data.score_ties)
  return records


def transform_report(records: list, out: list, data: DataSpec, split: str) -> dict:
  """What `data.transform` did to one split: pairs in, tied pairs (equal judge scores), what ties got, rows out."""
  tied = transforms.count_score_ties(records)
  line = (f"{split}: {data.transform} {len(records)} pairs -> {len(out)} rows; {tied} tied pairs "
          f"({'dropped' if data.score_ties == 'drop' else 'kept'})")
  print(f"[data] {line}", flush=True)
  return {"pairs_in": len(records), "tied": tied, "ties": data.score_ties, "rows_out": len(out), "line": line}


def with_margins(records: list, margins: Sequence[float] | None, data: DataSpec) -> list:
  """Sets each record's `margin` per `data.margin_from` (`margins` given for "reward_model")."""
  if data.margin_from == "file":
    return records
  out = []
  for i, r in enumerate(records):
    if data.margin_from == "none":
      m = None
    elif data.margin_from == "score":
      m = (r.chosen_score - r.rejected_score) if None not in (r.chosen_score, r.rejected_score) else None
    else:
      m = float(margins[i])
    out.append(dataclasses.replace(r, margin=m))
  return out


def curate_pairs(records: list, strengths: Sequence[float], data: DataSpec) -> tuple[list, dict]:
  """(curated records, counts) per `data.curate`: flips or drops the lowest-strength `data.curate_fraction`.

  The counts dict (total_in, flipped, dropped, total_out, mode, fraction, threshold = the highest strength
  that was flipped or dropped, None if none) is logged and goes to the stage's data report as "curation".
  """
  if data.curate == "none":
    return list(records), {}
  fraction = data.curate_fraction
  out, counts = transforms.curate_by_strength(records, strengths,
                                              flip_fraction=fraction if data.curate == "flip" else 0.0,
                                              drop_fraction=fraction if data.curate == "drop" else 0.0)
  changed = counts.flipped + counts.dropped
  ranked = np.sort(np.asarray(strengths, np.float64))
  summary = {**dataclasses.asdict(counts), "mode": data.curate, "fraction": fraction,
             "threshold": float(ranked[changed - 1]) if changed else None}
  line = (f"curation ({data.curate}, lowest {fraction:g} by strength from {data.reward_model}): "
          f"{counts.total_in} pairs in, {counts.flipped} flipped, {counts.dropped} dropped, {counts.total_out} out")
  logging.warning("%s", line)
  print(f"[data] {line}", flush=True)
  return out, summary


def quantize_attributes(records: list, levels: int) -> tuple[list, dict]:
  """(records with attributes replaced by levels 0..levels-1, report) — a coarse rating scale.

  Per attribute k, the edges are the quantiles j/levels (j = 1..levels-1) of attribute k over every chosen and
  rejected vector of `records`; a value's level is the number of edges <= it (ties go up). Records without
  attributes pass through unchanged.
  """
  if levels < 2:
    raise ValueError(f"levels must be >= 2, got {levels}")
  vectors = [v for r in records for v in (r.chosen_attributes, r.rejected_attributes) if v is not None]
  if not vectors:
    raise ValueError("data.attribute_levels: no training pair has attributes to quantize")
  values_NxK = np.asarray(vectors, np.float64)
  edges_KxE = np.quantile(values_NxK, np.arange(1, levels) / levels, axis=0).T

  def level(v):
    if v is None:
      return None
    return tuple(float(np.searchsorted(edges_KxE[k], x, side="right")) for k, x in enumerate(v))

  out = [dataclasses.replace(r, chosen_attributes=level(r.chosen_attributes),
                             rejected_attributes=level(r.rejected_attributes)) for r in records]
  return out, {"levels": levels, "edges": edges_KxE.tolist()}

def noisy_attributes(records: list, noise: float, seed: int = 0) -> tuple[list, dict]:
  """(records with Gaussian noise added to every attribute, report): attribute k of every response gets
  N(0, (noise * std_k)^2), std_k its standard deviation over the chosen and rejected vectors of `records`; the
  draws come from a fixed stream (`seed`, in record order), so every stage on the same data gets the same targets.

  Exact attributes make a regression reward model an oracle's student: noise makes the targets about as
  informative as noisy labels (report["gold_agreement"]: how often the noisy attribute SUMS order a pair like the
  exact sums; for the synthetic world's components, whose sum is gold, noise 0.6 gives about 0.80, the labels'
  agreement with gold). Records without attributes pass through unchanged.
  """
  vectors = [v for r in records for v in (r.chosen_attributes, r.rejected_attributes) if v is not None]
  if not vectors:
    raise ValueError("data.attribute_noise: no training pair has attributes to add noise to")
  std_K = np.asarray(vectors, np.float64).std(axis=0)
  rng = np.random.default_rng(np.random.SeedSequence([seed, 0x4E01]))
  out, agree, scored = [], 0, 0
  for r in records:
    if r.chosen_attributes is None or r.rejected_attributes is None:
      out.append(r)
      continue
    c = np.asarray(r.chosen_attributes, np.float64) + noise * std_K * rng.normal(size=std_K.shape)
    j = np.asarray(r.rejected_attributes, np.float64) + noise * std_K * rng.normal(size=std_K.shape)
    exact = sum(r.chosen_attributes) - sum(r.rejected_attributes)
    if exact != 0:
      scored += 1
      agree += (c.sum() - j.sum() > 0) == (exact > 0)
    out.append(dataclasses.replace(r, chosen_attributes=tuple(float(x) for x in c),
                                   rejected_attributes=tuple(float(x) for x in j)))
  return out, {"noise": noise, "std": std_K.tolist(), "gold_agreement": agree / max(scored, 1)}

# ------------------------------------------------------------------------------------------------ stage context
class StageContext(NamedTuple):
  """What every training stage starts from: the world (None for file data), the mesh, the model's config and
  pretrained weights (None for a random init), and the tokenizer."""
  world: Any
  mesh: Any
  model_config: ModelConfig
  pretrained: Any
  tokenizer: Any


def stage_context(cfg: Any, inputs: Mapping[str, Any]) -> StageContext:
  """The shared start of the sft / reward / preference stages, from a stage config with `data`, `model`,
  `mesh`, `num_devices` and `optimizer` sections; checks the batch divides over the mesh."""
  data = cfg.data
  world = make_world(data.world) if data.source == "world" else None
  mesh = common.make_stage_mesh(cfg.mesh, cfg.num_devices)
  common.check_batch_divisible(data.batch_size // cfg.optimizer.grad_accum_steps, mesh, "config.data.batch_size")
  model_config, pretrained, model_path = common.load_weights(
      cfg.model, inputs, world.tokenizer.vocab_size if world is not None else None)
  return StageContext(world, mesh, model_config, pretrained, make_tokenizer(data, world, model_path))


def prepared_pairs(data: DataSpec, context: StageContext, inputs: Mapping[str, Any], *,
                   prepare_eval: bool = True) -> tuple[list, list, dict]:
  """(train, eval, report) preference records with `data.transform` applied and margins attached
  (`data.margin_from`); `prepare_eval=False` leaves the held-out pairs as read (e.g. to score them on gold)."""
  train, held_out, report = preference_records(data, context.world)
  if data.transform != "none":
    transformed = transform_pairs(train, data, context.tokenizer)
    report = {**report, "transform": {"train": transform_report(train, transformed, data, "train")}}
    train = transformed
    if prepare_eval:
      transformed = transform_pairs(held_out, data, context.tokenizer)
      report["transform"]["eval"] = transform_report(held_out, transformed, data, "eval")
      held_out = transformed
  margins = eval_margins = None
  if data.margin_from == "reward_model":
    rm_dir = common.resolve_path(data.reward_model, inputs, "rm_dir")
    margins = reward_margins(rm_dir, train, context.tokenizer, data)
    if prepare_eval and held_out:
      eval_margins = reward_margins(rm_dir, held_out, context.tokenizer, data)
  train = with_margins(train, margins, data)
  if prepare_eval:
    held_out = with_margins(held_out, eval_margins, data)
  if data.curate != "none":
    # The strengths are the same mean member margins as margin_from="reward_model" (reused when both are set).
    strengths = margins if margins is not None else reward_margins(
        common.resolve_path(data.reward_model, inputs, "rm_dir"), train, context.tokenizer, data)
    train, curation = curate_pairs(train, strengths, data)
    report = {**report, "curation": curation}
  if data.attribute_noise:
    train, noised = noisy_attributes(train, data.attribute_noise)
    report = {**report, "attribute_noise": noised}
    print(f"[data] attribute noise {data.attribute_noise:g} std: noisy attribute sums order "
          f"{noised['gold_agreement']:.3f} of the training pairs like their exact sums", flush=True)
  if data.attribute_levels:
    train, quantized = quantize_attributes(train, data.attribute_levels)
    report = {**report, "attribute_levels": quantized}
  return train, held_out, report

# ------------------------------------------------------------------------------------------------ the pipeline
def pipeline_config(data: DataSpec, kind: str, *, seed: int, batch_size: int | None = None,
                    shuffle: bool | None = None, num_epochs: int | None = None, num_attributes: int = 0,
                    pack: bool | None = None, split_by_process: bool = False, shared_prompt: bool = False
                    ) -> pipeline_lib.PipelineConfig:
  """The pipeline settings of `data` for one stage; packing applies to SFT batches only (`data.pack`);
  `shared_prompt` (preference batches) is the stage's decided layout (`choose_shared_prompt`), not data's mode.

  split_by_process: each of jax.process_count() processes collates only its rows of every global batch (training
    iterators; the loop assembles global arrays from them); False: every process holds whole batches (evaluation,
    which every process runs on the same data).
  """
  if pack is None:
    pack = data.pack and kind == "sft"
  return pipeline_lib.PipelineConfig(
      kind=kind, batch_size=batch_size or data.batch_size, max_length=data.max_length,
      max_prompt_length=data.max_prompt_length or None, buckets=tuple(data.buckets) or (data.max_length,),
      pack=pack, shared_prompt=shared_prompt, seed=seed, shuffle=data.shuffle if shuffle is None else shuffle,
      num_epochs=num_epochs,
      num_attributes=num_attributes, num_threads=data.num_threads, prefetch=8 if data.num_threads else 0,
      shard_index=None if split_by_process else 0, shard_count=None if split_by_process else 1)


def row_flops(model_config: ModelConfig, with_lm_head: bool):
  """A function T -> forward FLOPs of one padded row of T tokens: 2 x (non-embedding parameters) per token, the LM
  head if any, and 4 L N H T^2 for the scores and the weighted values (computed over the full T x T mask). The
  cost model of `shared_prompt="auto"` (also used by experiments.bench, so its default is the library's)."""
  c = model_config
  per_token = 2 * c.num_layers * sum(int(np.prod(spec.shape)) for spec in layer_param_specs(c).values())
  if with_lm_head:
    per_token += 2 * c.embed_dim * c.vocab_size
  return lambda t: per_token * t + 4 * c.num_layers * c.num_heads * c.head_dim * t * t


def choose_shared_prompt(data: DataSpec, records: list, tokenizer: Any, model_config: ModelConfig, *,
                         with_lm_head: bool, sample: int = 1024) -> tuple[bool, dict]:
  """Whether a stage scores pairs in the shared-prompt layout, and the report {"mode", "used", "cost_ratio"}.

  "auto" tokenizes up to `sample` training pairs (the pipeline's truncation) and compares the two layouts'
  estimated forward FLOPs over batches of data.batch_size padded to their buckets (`row_flops`,
  `pipeline.shared_prompt_cost_ratio`).
  """
  if data.shared_prompt != "auto":
    return data.shared_prompt == "on", {"mode": data.shared_prompt, "used": data.shared_prompt == "on"}
  config = pipeline_config(data, "preference", seed=0, shuffle=False)
  examples = [tokenized(tokenize.tokenize_pair, r, tokenizer, config.truncation) for r in records[:sample]]
  ratio = pipeline_lib.shared_prompt_cost_ratio(examples, config, row_flops(model_config, with_lm_head))
  used = ratio <= SHARED_PROMPT_MAX_COST
  print(f"[data] shared_prompt=auto: {'one shared-prompt row' if used else 'two rows'} per pair (estimated cost "
        f"of shared rows / two rows: {ratio:.2f}, threshold {SHARED_PROMPT_MAX_COST})", flush=True)
  return used, {"mode": "auto", "used": used, "cost_ratio": round(float(ratio), 4)}


def train_iterator(records: list, tokenizer: Any, data: DataSpec, kind: str, seed: int, **kwargs):
  """An endless shuffled batch iterator (get_state/set_state for exact resume); with several processes each
  yields only its rows of every global batch (`process_local`)."""
  kwargs.setdefault("split_by_process", True)
  return pipeline_lib.make_pipeline(records, tokenizer, pipeline_config(data, kind, seed=seed, **kwargs))


def eval_batches(records: list, tokenizer: Any, data: DataSpec, kind: str, **kwargs) -> list[dict]:
  """One pass over `records` in order as a list of numpy batches (the last one filled with weight-0 rows)."""
  if not records:
    return []
  config = pipeline_config(data, kind, seed=0, batch_size=data.eval_batch_size or data.batch_size,
                           shuffle=False, num_epochs=1, **kwargs)
  return list(pipeline_lib.make_pipeline(records, tokenizer, config))


def tokenized(fn: Any, record: Any, tokenizer: Any, truncation: Any) -> dict:
  """`fn(record, tokenizer, truncation)` (tokenize_pair / tokenize_sft); a record the tokenizer cannot encode (its
  chat template drops the record's tools, say) is a ConfigError naming the record's file:line, one line on the
  command line."""
  try:
    return fn(record, tokenizer, truncation)
  except ValueError as e:
    where = getattr(record, "source", None) or "record"
    message = str(e)
    raise ConfigError(message if message.startswith(where) else f"{where}: {message}") from e


def budgeted_records(records: Sequence[Any], tokenizer: Any, data: DataSpec, kind: str, split: str
                     ) -> tuple[list, dict]:
  """(the records the pipeline keeps, report): what `data`'s token budgets (max_length, max_prompt_length) do to
  `records`, tokenized and truncated as the pipeline does, so that no pair is lost unreported.

  The report {"records", "kept", "dropped_too_long", "truncated_prompts", "truncated_responses", "line"} goes to
  the stage's data report (`token_budget`); its line is printed as `[data] <split>: ...` (and logged as a warning
  when pairs are dropped). Train iterators read all of `records` (dropping the same ones, counted in their stats);
  held-out batches are built from the kept records, so that per-pair labels (e.g. gold) stay aligned with rows.

  Args:
    records: preference records (kind "preference") or SFT records (kind "sft").
    split: "train" or "eval", for the line and the error.

  Raises:
    ConfigError (a ValueError) naming data.max_length / data.max_prompt_length when `records` is not empty and
    none fits.
  """
  truncation = pipeline_config(data, kind, seed=0, shuffle=False).truncation
  fn = tokenize.tokenize_pair if kind == "preference" else tokenize.tokenize_sft
  kept, counts = [], {"truncated_prompts": 0, "truncated_responses": 0}
  for record in records:
    example = tokenized(fn, record, tokenizer, truncation)
    if example.get("dropped"):
      continue
    kept.append(record)
    counts["truncated_prompts"] += int(example["truncated_prompt"])
    counts["truncated_responses"] += int(example["truncated_responses"])
  unit = "pairs" if kind == "preference" else "examples"
  budget = f"data.max_length={data.max_length}" + (f", data.max_prompt_length={data.max_prompt_length}"
                                                   if data.max_prompt_length else "")
  dropped = len(records) - len(kept)
  line = (f"{split}: {len(records)} {unit}, {len(kept)} kept, {dropped} dropped as too long, "
          f"{counts['truncated_prompts']} truncated prompts, {counts['truncated_responses']} truncated responses "
          f"({budget})")
  report = {"records": len(records), "kept": len(kept), "dropped_too_long": dropped, **counts, "line": line}
  if records:
    if dropped:
      logging.warning("%s", line)
    print(f"[data] {line}", flush=True)
  if records and not kept:
    raise ConfigError(f"data.max_length: all {len(records)} {split} {unit} are too long ({line}): each prompt leaves "
                      f"fewer than one response token; raise data.max_length, or set data.max_prompt_length "
                      f"(< data.max_length) to keep each prompt's last tokens")
  return kept, report


class ScoringBatches(NamedTuple):
  """A one-pass scoring plan of preference records (`scoring_batches`).

  batches: numpy preference batches (filler rows of the last batch are empty: `scoring.nonempty_rows`).
  index: int64 (N_kept,) the record index of each real row, in batch order.
  report: {"pairs", "scored", "dropped_too_long", "truncated_prompts", "truncated_responses", "tokens_sha256"}:
    the counts (a dropped pair cannot be scored; it is counted, never silently lost) and a digest of every
    record's token ids after truncation (dropped ones marked), which changes with the records, the tokenizer
    and the token budgets.
  """
  batches: list
  index: np.ndarray
  report: dict


def scoring_batches(records: Sequence[Any], tokenizer: Any, data: DataSpec, *, shared_prompt: bool
                    ) -> ScoringBatches:
  """Batches that score every pair of `records` once, shortest first (a batch pads to the smallest bucket that
  fits its longest pair, so sorted rows pad little), leaving out the pairs the pipeline drops as too long.

  Pairs are tokenized and truncated as the pipeline does (`data.max_length`, `data.max_prompt_length`); the
  order sorts by the padded width a pair needs (P + max(C, R) in two rows, P + C + R shared), ties by record
  order. Batches of `data.eval_batch_size` (or `batch_size`) rows come from `eval_batches`.
  """
  truncation = pipeline_config(data, "preference", seed=0, shuffle=False).truncation
  digest = hashlib.sha256()
  kept, widths = [], []
  counts = {"truncated_prompts": 0, "truncated_responses": 0}
  for i, record in enumerate(records):
    example = tokenized(tokenize.tokenize_pair, record, tokenizer, truncation)
    if example.get("dropped"):
      digest.update(b"dropped;")
      continue
    sizes = [len(example[k]) for k in ("prompt", "chosen", "rejected")]
    for key in ("prompt", "chosen", "rejected"):
      ids = np.asarray(example[key], np.int32)
      digest.update(np.int64(ids.size).tobytes() + ids.tobytes())
    counts["truncated_prompts"] += int(example["truncated_prompt"])
    counts["truncated_responses"] += int(example["truncated_responses"])
    widths.append(sum(sizes) if shared_prompt else sizes[0] + max(sizes[1:]))
    kept.append(i)
  index = np.asarray(kept, np.int64)[np.argsort(np.asarray(widths), kind="stable")]
  batches = eval_batches([records[i] for i in index], tokenizer, data, "preference", shared_prompt=shared_prompt)
  report = {"pairs": len(records), "scored": int(index.size), "dropped_too_long": len(records) - int(index.size),
            **counts, "tokens_sha256": digest.hexdigest()}
  return ScoringBatches(batches, index, report)


class StackedIterator:
  """K batch iterators -> batches with a leading member axis (K, B, ...), padded to the longest T.

  Each member reads its own pipeline (own shuffle seed), so ensemble members see different data orders.
  """

  def __init__(self, iterators: Sequence[Any], pad_id: int):
    self.iterators = list(iterators)
    self.pad_id = pad_id
    local = {bool(getattr(it, "process_local", False)) for it in self.iterators}
    if len(local) > 1:
      raise ValueError("StackedIterator: members mix process-local and whole-batch iterators")
    self.process_local = local.pop() if local else False  # The loop assembles global arrays from local rows.

  def __iter__(self):
    return self

  def __next__(self) -> dict[str, np.ndarray]:
    batches = [next(it) for it in self.iterators]
    out = {}
    for key in batches[0]:
      arrays = [b[key] for b in batches]
      if arrays[0].ndim == 2 and key.endswith(("input_ids", "attention_mask", "loss_mask")):
        t = max(a.shape[1] for a in arrays)
        fill = self.pad_id if key.endswith("input_ids") else 0
        arrays = [np.pad(a, ((0, 0), (0, t - a.shape[1])), constant_values=fill) for a in arrays]
      out[key] = np.stack(arrays)
    return out

  def get_state(self) -> dict:
    return {"members": [it.get_state() for it in self.iterators]}

  def set_state(self, state: dict) -> None:
    for it, s in zip(self.iterators, state["members"]):
      it.set_state(s)

# ------------------------------------------------------------------------------------------------ margins
def member_margins(rm: Any, records: list, tokenizer: Any, data: DataSpec) -> np.ndarray:
  """(N, K) r_k(chosen) - r_k(rejected) of every record under each member k of a RewardEnsemble (multihead
  members: mean over heads), in record order; one forward per batch, in the shared-prompt layout where
  `data.shared_prompt` ("auto": the FLOPs estimate) says so.

  Raises:
    ValueError: when pairs were dropped as too long (they cannot be scored), naming data.max_length.
  """
  graphdef, state = nnx.split(rm)
  shared, _ = choose_shared_prompt(data, records, tokenizer, rm.members.config, with_lm_head=False)

  @jax.jit
  def margins(state, batch):
    r_c, r_r = scoring.pair_rewards(nnx.merge(graphdef, state), batch)
    diff = r_c - r_r
    return diff.mean(-1) if diff.ndim == 3 else diff

  outs = [np.asarray(margins(state, b))[b["weight"] > 0]
          for b in eval_batches(records, tokenizer, data, "preference", shared_prompt=shared)]
  values = np.concatenate(outs) if outs else np.zeros((0, 1), np.float32)
  if values.shape[0] != len(records):
    raise ValueError(f"data.max_length: scored {values.shape[0]} of {len(records)} pairs (pairs dropped as too "
                     "long cannot be scored; raise data.max_length)")
  return values


def reward_margins(rm_dir: str, records: list, tokenizer: Any, data: DataSpec) -> np.ndarray:
  """(N,) mean over members of r(chosen) - r(rejected) under a saved reward model, in record order."""
  artifacts.check_reward_tokenizer(rm_dir, tokenizer, "data.reward_model")
  try:
    return member_margins(artifacts.load_reward_model(rm_dir), records, tokenizer, data).mean(axis=-1)
  except ValueError as e:
    raise ValueError(f"data.reward_model ({rm_dir}): {e}") from None

# ------------------------------------------------------------------------------------------------ prompts
PROMPT_SOURCES = ("world", "files")


@dataclasses.dataclass(frozen=True)
class PromptSpec:
  """Where an online stage's prompts come from (the `prompts` section of rl, best_of_n and evaluate_policy).

  source "world": the synthetic gold-reward world (`world` = WorldConfig kwargs) with its own tokenizer; a train
    prompt comes with its reference response (the column "references", which BLEU reads and ensemble
    standardization scores). "files": JSONL / JSONL.gz / parquet prompt files (`paths`), a text prompt or chat
    messages per row (`columns` renames the "prompt" / "messages" columns), every other column (or `keep_columns`)
    passed through to reward functions; held-out prompts from `eval_paths`, else the last `eval_fraction` of the
    rows. `strict`: the first bad row fails (file:line); otherwise bad rows are skipped and counted. `format`:
    "prompts" (the above), or a preference format ("hh", "pairwise", "chat", "ultrafeedback"): the distinct
    prompts of a preference file, each with its pair's "chosen" / "rejected" (and "subset") columns; an HH
    dialogue becomes chat messages (Human / Assistant turns; the raw text in the column "hh_prompt") unless
    `chat_template` is "never". Rendered with
    the policy's tokenizer (`tokenizer`: a HF folder or .gguf; default the policy model's) and chat template:
    `chat_template` (`chat_template_path`: a .jinja file replacing the tokenizer's template) "auto" (chat prompts
    rendered with the generation prompt, text prompts as they are), "always"
    (text prompts too, as one user message), "never".
  """
  source: str = field("world", choices=PROMPT_SOURCES)
  world: dict = field(default_factory=dict)
  paths: tuple[str, ...] = field(())
  eval_paths: tuple[str, ...] = field(())
  eval_fraction: float = field(0.1, min=0.0, max=0.9)
  columns: dict = field(default_factory=dict)
  keep_columns: tuple[str, ...] = field(())
  strict: bool = field(False)
  chat_template: str = field("auto", choices=prompts_lib.CHAT_TEMPLATE_MODES)
  tokenizer: str = field("", must_exist=True)
  # A .jinja file whose chat template replaces the tokenizer's (TRL's chat_template_path).
  chat_template_path: str = field("", must_exist=True)
  # Template variables every prompt rendering gets (TRL's chat_template_kwargs, a dict or its JSON text, e.g.
  # '{"enable_thinking": false}'); a row's chat_template_kwargs column overrides them.
  chat_template_kwargs: dict | str = field(default_factory=dict)
  format: str = field("prompts", choices=prompts_lib.PROMPT_FORMATS)

  def validate(self, path: str) -> None:
    template_kwargs(self, path)
    if self.source == "world":
      check_world(self.world, path)
      refuse_template_settings(self, path, "the synthetic world's tokenizer has its own chat format; a chat "
                               f"template setting applies to prompt files ({path}.source='files')")
      return
    if not self.paths:
      raise ConfigError(f"{path}.paths: required when {path}.source='files' (prompt files: .jsonl, .jsonl.gz or "
                        ".parquet)")
    if self.chat_template == "never":
      refuse_template_settings(self, path, f"{path}.chat_template='never' renders no prompt with the chat template, "
                               "so this setting would apply to nothing")
    check_data_files(self, path)
    check_columns(self.columns, self.format, path)
    if self.keep_columns and self.format != "prompts":
      raise ConfigError(f"{path}.keep_columns: only the 'prompts' format passes columns through (a preference "
                        f"file's prompts carry the columns chosen / rejected / subset)")
    if not self.eval_paths and self.eval_fraction == 0:
      raise ConfigError(f"{path}.eval_fraction: 0 leaves no held-out prompts; set it or {path}.eval_paths")


class PromptSet(NamedTuple):
  """N prompts ready to sample from: left-padded ids / mask (N, P) int32; the table reward functions read
  (`table.prompts[i]`: the prompt as given, text or messages; `table.columns`); the rendering report; and, for
  the world's train prompts, the reference responses (else None)."""
  ids: np.ndarray
  mask: np.ndarray
  table: PromptTable
  report: dict
  references: list | None = None


class OnlinePrompts(NamedTuple):
  """A stage's prompt source opened: the world (None for files), the tokenizer, the spec, and for files the records
  read once: (train, held-out, report)."""
  world: Any
  tokenizer: Any
  spec: PromptSpec
  files: tuple[list, list, dict] | None = None

  def split(self, split: str, n: int, width: int, *, world_split: str | None = None) -> PromptSet:
    """`n` prompts (0: all, files only) of `split` ("train" or "eval"), left-padded to `width` tokens. The world
    draws eval prompts from `world_split` ("validation" or "test"); files from the held-out prompts."""
    if self.world is not None:
      if split == "train":
        records = self.world.sft_records(n, "train")
        texts = [r.prompt for r in records]
        ids, mask = padding.encode_prompts(self.tokenizer, texts, width)
        refs = [r.response for r in records]
        return PromptSet(ids, mask, PromptTable(texts, {"references": [[r] for r in refs]}),
                         {"num_prompts": len(texts), "source": "world"}, refs)
      texts = self.world.prompts(n, world_split or "validation")
      ids, mask = padding.encode_prompts(self.tokenizer, texts, width)
      return PromptSet(ids, mask, PromptTable(texts), {"num_prompts": len(texts), "source": "world"})
    train, held_out, report = self.files
    records = train if split == "train" else held_out
    if not records:  # Only held-out prompts can be missing (read_prompt_splits refuses files without train ones).
      if self.spec.eval_paths:
        raise ConfigError(f"prompts.eval_paths: no usable held-out prompts in {list(self.spec.eval_paths)} "
                          f"({report['line']})")
      raise ConfigError(f"prompts.eval_fraction: {self.spec.eval_fraction:g} of the {len(train)} prompts rounds to "
                        f"no held-out prompt; raise it or set prompts.eval_paths ({report['line']})")
    available = len(records)
    records = records[:n] if n else records
    try:
      ids, mask, rendering = prompts_lib.encode_prompt_records(self.tokenizer, records, width,
                                                               chat_template=self.spec.chat_template)
    except ValueError as e:  # A row the settings cannot render (names file:line): one line, not a traceback.
      # A template without tool use is the tokenizer's doing, not the chat_template mode's.
      key = ("prompts.tokenizer" if any(r.tools or r.chat_template_kwargs or has_tool_calls(r.prompt) for r in records)
             else f"prompts.chat_template={self.spec.chat_template!r}")
      raise ConfigError(f"{key}: {e}") from e
    name = "train" if split == "train" else "held-out"
    print(f"[data] {name} prompts: {len(records)} of {available} used" +
          (f" (asked for {n})" if n > available else "") +
          f", {rendering['truncated']} longer than max_prompt_length={width} tokens keep their last {width} "
          f"(longest {rendering['max_length']})", flush=True)
    names = sorted({k for r in records for k in r.columns})
    columns = {k: [r.columns.get(k) for r in records] for k in names}
    return PromptSet(ids, mask, PromptTable([r.prompt for r in records], columns),
                     {**rendering, "source": "files", "files": report})


def open_prompts(spec: PromptSpec, model_path: str) -> OnlinePrompts:
  """The prompt source of an online stage: the world and its tokenizer, or files rendered by `spec.tokenizer` /
  the policy model's tokenizer (`model_path`)."""
  if spec.source == "world":
    world = make_world(spec.world)
    return OnlinePrompts(world, world.tokenizer, spec)
  path = spec.tokenizer or model_path
  if not path:
    raise ValueError("prompts.tokenizer: needed for prompt files with a randomly initialized model (a HF folder or "
                     ".gguf whose tokenizer renders the prompts)")
  config = AdapterConfig(spec.format, columns=dict(spec.columns), strict=spec.strict,
                         keep_columns=(list(spec.keep_columns) or None) if spec.format == "prompts" else None)
  # An HH dialogue is sampled as chat messages unless rendering is off (a base model without a template).
  train, held_out, report = prompts_lib.read_prompt_splits(list(spec.paths), list(spec.eval_paths), config,
                                                           eval_fraction=spec.eval_fraction,
                                                           hh_as_chat=spec.chat_template != "never")
  print(f"[data] {report['line']}", flush=True)
  tokenizer = with_template_file(load_tokenizer(path), spec.chat_template_path, "prompts.chat_template_path")
  tokenizer = with_template_defaults(tokenizer, template_kwargs(spec, "prompts"), "prompts.chat_template_kwargs")
  return OnlinePrompts(None, tokenizer, spec, (train, held_out, report))


def end_ids(tokenizer: Any, model_config: ModelConfig | None = None, world: Any = None) -> tuple[int, ...]:
  """The tokens that end a sampled response: the tokenizer's end-of-turn / eos token, plus the model config's eos
  ids for a real model (an instruct model may end with either); the world's models end with its eos only."""
  ids = [tokenizer.eos_id]
  if world is None and model_config is not None and model_config.eos_token_id is not None:
    extra = model_config.eos_token_id
    ids += list(extra) if isinstance(extra, (tuple, list)) else [extra]
  return tuple(dict.fromkeys(int(i) for i in ids))


class PromptIterator:
  """Endless batches of left-padded prompts {prompt_ids, prompt_mask (B, P) int32, prompt_index (B,) int32},
  a fresh seeded permutation each epoch; get_state/set_state for an exact resume."""

  def __init__(self, ids_NxP: np.ndarray, mask_NxP: np.ndarray, batch_size: int, seed: int):
    if ids_NxP.shape[0] < batch_size:
      # A ConfigError (a known error: one line from experiments.run) naming the keys that set the two numbers.
      raise ConfigError(f"prompts_per_step: {ids_NxP.shape[0]} train prompts are fewer than one batch of "
                        f"{batch_size} (prompts_per_step, times loss.oversample with dynamic sampling); add prompts "
                        f"or lower prompts_per_step")
    self.ids, self.mask, self.batch_size, self.seed = ids_NxP, mask_NxP, batch_size, seed
    self.epoch, self.pos = 0, 0

  def __iter__(self):
    return self

  def _order(self) -> np.ndarray:
    return np.random.default_rng([self.seed, self.epoch]).permutation(self.ids.shape[0])

  def __next__(self) -> dict[str, np.ndarray]:
    if self.pos + self.batch_size > self.ids.shape[0]:
      self.epoch, self.pos = self.epoch + 1, 0
    idx = self._order()[self.pos:self.pos + self.batch_size]
    self.pos += self.batch_size
    return {"prompt_ids": self.ids[idx], "prompt_mask": self.mask[idx], "prompt_index": idx.astype(np.int32)}

  def get_state(self) -> dict:
    return {"epoch": self.epoch, "pos": self.pos}

  def set_state(self, state: dict) -> None:
    self.epoch, self.pos = int(state["epoch"]), int(state["pos"])


class GroupedPromptIterator(PromptIterator):
  """A PromptIterator whose batches hold whole groups of prompts: the rows sharing a value of `group_of` (e.g.
  Co-Reward's question and its rephrasing, one pair id per pair) are always sampled together, each group's rows in
  table order. Each epoch permutes the groups (a fresh seeded permutation, np.random.default_rng([seed, epoch]) over
  the groups in order of first appearance); get_state/set_state as PromptIterator.

  Raises:
    ValueError: groups of unequal size, or a group size that does not divide batch_size.
  """

  def __init__(self, ids_NxP: np.ndarray, mask_NxP: np.ndarray, batch_size: int, seed: int,
               group_of: Sequence[Any]):
    if len(group_of) != ids_NxP.shape[0]:
      raise ValueError(f"prompt groups: {len(group_of)} group values for {ids_NxP.shape[0]} prompts")
    rows: dict[Any, list[int]] = {}
    for i, g in enumerate(group_of):
      rows.setdefault(repr(g), []).append(i)
    sizes = sorted({len(r) for r in rows.values()})
    if len(sizes) != 1:
      raise ValueError(f"prompt groups: every group must have the same number of prompts, got sizes {sizes}")
    if batch_size % sizes[0]:
      raise ValueError(f"prompt groups: groups of {sizes[0]} prompts do not divide a batch of {batch_size}")
    super().__init__(ids_NxP, mask_NxP, batch_size, seed)
    self.groups_GxS = np.asarray(list(rows.values()), np.int64)

  def _order(self) -> np.ndarray:
    groups = np.random.default_rng([self.seed, self.epoch]).permutation(self.groups_GxS.shape[0])
    return self.groups_GxS[groups].reshape(-1)


class AttachedBatches:
  """Wraps a batch iterator, adding per-pair fields from `table` (anything with `attach(batch) -> batch`: the
  preference stage's reference cache, the self-rewarding stage's pair table); get/set_state pass through, so resume
  stays exact."""

  def __init__(self, iterator: Any, table: Any):
    self.iterator, self.table = iterator, table
    self.process_local = bool(getattr(iterator, "process_local", False))  # Rows are looked up one by one.

  def __iter__(self):
    return self

  def __next__(self) -> dict:
    return self.table.attach(next(self.iterator))

  def get_state(self) -> Any:
    return self.iterator.get_state()

  def set_state(self, state: Any) -> None:
    self.iterator.set_state(state)
