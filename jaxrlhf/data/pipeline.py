"""The input pipeline: a random-access record source -> shuffled, tokenized, bucket-padded numpy batches.

    source (len + getitem, e.g. tfds_builders.record_source) -> grain.MapDataset: [shard] -> shuffle(seed)
    (a new permutation every epoch) -> repeat -> map(tokenize + truncate) -> to_iter_dataset (threads, prefetch)
    -> BatchIterator: drops too-long examples (counted; a whole epoch of them is a ValueError, not an endless
    loop), pads to a length bucket or packs, counts truncation.

Batches follow docs/design.md, right padded, int32 ids and masks:
  SFT:        input_ids, attention_mask, loss_mask (B, T); with packing also segment_ids (1, 2, ... per packed
              example, 0 on pad) and positions (restarting at 0 in each segment).
  preference: chosen_/rejected_ input_ids, attention_mask, loss_mask (B, T) (both padded to the same T), float32
              (B,) chosen_score, rejected_score, margin (NaN where absent), weight (1 by default); with
              num_attributes=K also chosen_attributes, rejected_attributes (B, K) and attributes_mask (B, K).
  shared-prompt preference (shared_prompt=True): pair_input_ids (B, T) holding [prompt | chosen | rejected]
              and int32 (B,) prompt_length, chosen_length, rejected_length instead of the chosen_/rejected_ rows
              (models.shared_prompt builds the attention segments and positions from the lengths); T from
              `shared_bucket_lengths`. The other fields are as above.
T is the smallest bucket >= the batch's longest sequence, so at most len(buckets) shapes compile (packing: one).
A final partial batch (finite num_epochs) is filled with empty rows (masks 0, weight 0) to keep the shape.

Exact resume: `BatchIterator.get_state()` is a small JSON-able dict (grain's element index, the counters, and a
packing carry-over); `make_pipeline(...).set_state(state)` continues with the identical next batch.

Multi-process input (shard_count > 1): every process walks the SAME shuffled example stream and reads the global
batch's examples (tokenization is cheap next to a model step), picks the padded length T from the longest
sequence of the GLOBAL batch, and collates only its own rows [shard_index * b, (shard_index + 1) * b) with
b = batch_size // shard_count. So the global batch, and hence the loss, is the same for any number of processes,
and every process has the same T (a requirement for assembling one global array). `global_batch` turns the
process-local numpy rows into global jax.Arrays (jax.make_array_from_process_local_data).
"""

import dataclasses
import functools
from typing import Any, Iterator, Sequence

import grain
import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from jaxrlhf.data import tokenize
from jaxrlhf.parallel.sharding import BATCH_AXES

KINDS = ("preference", "sft")
_STAT_KEYS = ("examples", "truncated_prompts", "truncated_responses", "dropped_too_long")


@dataclasses.dataclass(frozen=True)
class PipelineConfig:
  """Input pipeline settings.

  Attributes:
    kind: "preference" or "sft".
    batch_size: the global batch size (each of `shard_count` processes yields batch_size // shard_count rows:
      its slice of the same global batch).
    max_length: token budget for prompt + response (TruncationConfig); the largest padded length.
    max_prompt_length: optional prompt budget (the prompt's tail is kept).
    min_response_length: examples leaving fewer response tokens are dropped (counted).
    buckets: padded lengths; values above max_length are ignored and max_length is always a bucket.
    pack: SFT only: pack examples greedily into rows of max_length.
    shared_prompt: preference only: one [prompt | chosen | rejected] row per pair (the prompt tokenized and
      run once) instead of two rows; see `shared_prompt_cost_ratio` for when it pays.
    seed: shuffle seed (each epoch uses a different permutation derived from it).
    shuffle: shuffle or keep the source order.
    num_epochs: None repeats forever.
    num_attributes: K for attribute vectors in preference batches (0: none).
    num_threads, prefetch: grain read threads and prefetch buffer (0 threads: read in the caller's thread).
    shard_index, shard_count: this process's rows of each global batch (defaults: jax.process_index/count()).
  """

  kind: str = "preference"
  batch_size: int = 8
  max_length: int = 512
  max_prompt_length: int | None = None
  min_response_length: int = 1
  buckets: Sequence[int] = (64, 128, 256, 512)
  pack: bool = False
  shared_prompt: bool = False
  seed: int = 0
  shuffle: bool = True
  num_epochs: int | None = None
  num_attributes: int = 0
  num_threads: int = 2
  prefetch: int = 64
  shard_index: int | None = None
  shard_count: int | None = None

  def __post_init__(self):
    if self.kind not in KINDS:
      raise ValueError(f"kind must be one of {KINDS}, got {self.kind!r}")
    if self.pack and self.kind != "sft":
      raise ValueError("pack=True is only supported for kind='sft'")
    if self.shared_prompt and self.kind != "preference":
      raise ValueError("shared_prompt=True is only supported for kind='preference'")
    if self.batch_size < 1:
      raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")
    if any(b < 1 for b in self.buckets):
      raise ValueError(f"buckets must be positive lengths, got {tuple(self.buckets)}")
    if self.num_epochs is not None and self.num_epochs < 1:
      raise ValueError(f"num_epochs must be None or >= 1, got {self.num_epochs}")
    self.truncation  # Validates the token budgets.  pylint: disable=pointless-statement

  @property
  def truncation(self) -> tokenize.TruncationConfig:
    return tokenize.TruncationConfig(self.max_length, self.max_prompt_length, self.min_response_length)

  @property
  def bucket_lengths(self) -> tuple[int, ...]:
    return tuple(sorted({b for b in self.buckets if b <= self.max_length} | {self.max_length}))

  @property
  def shared_bucket_lengths(self) -> tuple[int, ...]:
    """Padded lengths of shared-prompt rows (up to P + 2 * (max_length - P) < 2 * max_length tokens): each
    bucket b and 1.5 b, 2 b, rounded up to a multiple of 8."""
    out = set()
    for b in self.bucket_lengths:
      out.update({b, 8 * -(-3 * b // 16), 2 * b})  # 8 * ceil(1.5 b / 8)
    return tuple(sorted(out))


def bucket_length(length: int, buckets: Sequence[int]) -> int:
  """The smallest bucket >= length (buckets sorted ascending); raises ValueError if none fits."""
  for b in buckets:
    if length <= b:
      return b
  raise ValueError(f"length {length} exceeds the largest bucket {buckets[-1]}")


def _pad_rows(rows_ids: Sequence[np.ndarray], rows_loss: Sequence[np.ndarray], length: int, batch_size: int,
              pad_id: int) -> dict[str, np.ndarray]:
  """Right-pads rows into (batch_size, length) input_ids / attention_mask / loss_mask; missing rows are empty."""
  ids = np.full((batch_size, length), pad_id, np.int32)
  attention = np.zeros((batch_size, length), np.int32)
  loss = np.zeros((batch_size, length), np.int32)
  for i, (row, row_loss) in enumerate(zip(rows_ids, rows_loss)):
    ids[i, :len(row)] = row
    attention[i, :len(row)] = 1
    loss[i, :len(row)] = row_loss
  return {"input_ids": ids, "attention_mask": attention, "loss_mask": loss}


def _sequence(prompt: np.ndarray, response: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """prompt + response ids and the loss mask (1 on response tokens)."""
  ids = np.concatenate([prompt, response]).astype(np.int32)
  loss = np.concatenate([np.zeros(len(prompt), np.int32), np.ones(len(response), np.int32)])
  return ids, loss


def _preference_length(example: dict) -> int:
  return len(example["prompt"]) + max(len(example["chosen"]), len(example["rejected"]))


def _shared_length(example: dict) -> int:
  return len(example["prompt"]) + len(example["chosen"]) + len(example["rejected"])


def shared_prompt_cost_ratio(examples: Sequence[dict], config: PipelineConfig,
                             row_cost: Any = lambda t: t) -> float:
  """Cost of the shared-prompt layout over the two-row layout for `examples` in batches of config.batch_size.

  Each batch costs B * row_cost(T) with T its padded length (bucketed as the pipeline pads): two-row batches
  have 2B rows of the bucket of max(P + max(R_c, R_r)), shared-prompt batches B rows of the shared bucket of
  max(P + R_c + R_r). `row_cost(T)` is the work of one padded row (default: T tokens; pass FLOPs including the
  T^2 attention term for a model). A ratio < 1 means shared-prompt scoring does less work.
  """
  examples = [e for e in examples if not e.get("dropped")]
  if not examples:
    return 1.0
  two_rows = shared = 0.0
  for i in range(0, len(examples), config.batch_size):
    chunk = examples[i:i + config.batch_size]
    two_rows += 2 * config.batch_size * row_cost(
        bucket_length(max(map(_preference_length, chunk)), config.bucket_lengths))
    shared += config.batch_size * row_cost(
        bucket_length(max(map(_shared_length, chunk)), config.shared_bucket_lengths))
  return shared / two_rows


def collate_preference(examples: Sequence[dict], config: PipelineConfig, pad_id: int, length: int | None = None
                       ) -> dict[str, np.ndarray]:
  """Tokenized pairs -> this process's rows of a preference batch (rows beyond len(examples) are empty with
  weight 0); `length` (default: the bucket of the longest of `examples`) is the padded T."""
  b = config.batch_size // _shard_count(config)
  chosen = [_sequence(e["prompt"], e["chosen"]) for e in examples]
  rejected = [_sequence(e["prompt"], e["rejected"]) for e in examples]
  if length is None:
    length = bucket_length(max(len(ids) for ids, _ in chosen + rejected), config.bucket_lengths)
  batch = {}
  for name, seqs in (("chosen", chosen), ("rejected", rejected)):
    padded = _pad_rows([s[0] for s in seqs], [s[1] for s in seqs], length, b, pad_id)
    batch.update({f"{name}_{k}": v for k, v in padded.items()})
  batch.update(_pair_fields(examples, config, b))
  return batch


def _pair_fields(examples: Sequence[dict], config: PipelineConfig, b: int) -> dict[str, np.ndarray]:
  """The per-pair columns (scores, margin, weight, attributes) of b rows, empty rows last."""
  batch = {}
  for key, fill in (("chosen_score", np.nan), ("rejected_score", np.nan), ("margin", np.nan), ("weight", 0.0)):
    column = np.full((b,), fill, np.float32)
    column[:len(examples)] = [e[key] for e in examples]
    batch[key] = column
  if config.num_attributes:
    attributes = np.full((b, 2, config.num_attributes), np.nan, np.float32)
    attributes[:len(examples)] = [e["attributes"] for e in examples]
    mask = np.isfinite(attributes).all(axis=1)
    batch["chosen_attributes"] = np.where(mask, attributes[:, 0], 0.0).astype(np.float32)
    batch["rejected_attributes"] = np.where(mask, attributes[:, 1], 0.0).astype(np.float32)
    batch["attributes_mask"] = mask.astype(np.int32)
  return batch


def collate_shared_prompt(examples: Sequence[dict], config: PipelineConfig, pad_id: int, length: int | None = None
                          ) -> dict[str, np.ndarray]:
  """Tokenized pairs -> this process's rows of a shared-prompt preference batch: pair_input_ids (B, T) with
  [prompt | chosen | rejected] right padded, the three lengths (B,), and the per-pair fields of
  `collate_preference` (rows beyond len(examples) are empty with weight 0)."""
  b = config.batch_size // _shard_count(config)
  if length is None:
    length = bucket_length(max(_shared_length(e) for e in examples), config.shared_bucket_lengths)
  rows = [np.concatenate([e["prompt"], e["chosen"], e["rejected"]]) for e in examples]
  batch = {"pair_input_ids": _pad_rows(rows, [np.zeros_like(r) for r in rows], length, b, pad_id)["input_ids"]}
  for key in ("prompt", "chosen", "rejected"):
    column = np.zeros((b,), np.int32)
    column[:len(examples)] = [len(e[key]) for e in examples]
    batch[f"{key}_length"] = column
  batch.update(_pair_fields(examples, config, b))
  return batch


def collate_sft(examples: Sequence[dict], config: PipelineConfig, pad_id: int, length: int | None = None
                ) -> dict[str, np.ndarray]:
  """Tokenized SFT examples -> {input_ids, attention_mask, loss_mask} padded to `length` (default: the bucket
  of the longest of `examples`)."""
  b = config.batch_size // _shard_count(config)
  seqs = [_sequence(e["prompt"], e["response"]) for e in examples]
  if length is None:
    length = bucket_length(max(len(ids) for ids, _ in seqs), config.bucket_lengths)
  return _pad_rows([s[0] for s in seqs], [s[1] for s in seqs], length, b, pad_id)


def collate_packed(rows: Sequence[Sequence[dict]], config: PipelineConfig, pad_id: int) -> dict[str, np.ndarray]:
  """Packed rows (each a list of SFT examples whose total length <= max_length) -> an SFT batch of
  (B, max_length) plus segment_ids and positions."""
  b, t = config.batch_size // _shard_count(config), config.max_length
  flat_ids, flat_loss = [], []
  segment_ids = np.zeros((b, t), np.int32)
  positions = np.zeros((b, t), np.int32)
  for i, row in enumerate(rows):
    seqs = [_sequence(e["prompt"], e["response"]) for e in row]
    flat_ids.append(np.concatenate([s[0] for s in seqs]))
    flat_loss.append(np.concatenate([s[1] for s in seqs]))
    start = 0
    for segment, (ids, _) in enumerate(seqs, start=1):
      segment_ids[i, start:start + len(ids)] = segment
      positions[i, start:start + len(ids)] = np.arange(len(ids))
      start += len(ids)
  batch = _pad_rows(flat_ids, flat_loss, t, b, pad_id)
  batch.update(segment_ids=segment_ids, positions=positions)
  return batch


def _shard_count(config: PipelineConfig) -> int:
  return jax.process_count() if config.shard_count is None else config.shard_count


def _shard_index(config: PipelineConfig) -> int:
  return jax.process_index() if config.shard_index is None else config.shard_index


def _example_length(example: dict) -> int:
  return len(example["prompt"]) + len(example["response"])


def _to_jsonable(example: dict) -> dict:
  return {k: (v.tolist() if isinstance(v, np.ndarray) else v.item() if isinstance(v, np.generic) else v)
          for k, v in example.items()}


def _from_jsonable(example: dict) -> dict:
  return {k: np.asarray(v, np.int32) if isinstance(v, list) else v for k, v in example.items()}


class BatchIterator:
  """Iterates batches from a grain element iterator; owns the drop/truncation counters and packing carry-over.

  Attributes:
    stats: {"examples", "truncated_prompts", "truncated_responses", "dropped_too_long"} counted over the
      examples read so far (restored with the state). `format_stats(self.stats)` renders one log line.

  Raises (from next()):
    ValueError naming max_length / max_prompt_length when a whole epoch of the `num_records` source records was
      read and every example was dropped as too long: nothing would ever be kept (tokenization is deterministic),
      so an endless iterator would otherwise spin forever.
  """

  def __init__(self, elements: grain.DatasetIterator, config: PipelineConfig, pad_id: int,
               num_records: int | None = None):
    self._elements = elements
    self._config = config
    self._num_records = num_records  # Records per epoch; None: no all-dropped check.
    self._drop_run = 0  # Consecutive dropped examples up to the last one read (not saved: a resume restarts it).
    self._pad_id = pad_id
    self._per_process = config.batch_size // _shard_count(config)
    self._first_row = _shard_index(config) * self._per_process
    # True when each batch holds only this process's rows of the global batch (see `global_batch`).
    self.process_local = _shard_count(config) > 1
    self._carry: dict | None = None  # Packing: the example that did not fit the last row.
    self._exhausted = False
    self.stats = dict.fromkeys(_STAT_KEYS, 0)

  def __iter__(self) -> Iterator[dict[str, np.ndarray]]:
    return self

  def _next_example(self) -> dict | None:
    """The next kept example (None at the end of a finite dataset); counts drops and truncation."""
    while True:
      try:
        example = next(self._elements)
      except StopIteration:
        self._exhausted = True
        return None
      self.stats["examples"] += 1
      if example.get("dropped"):
        self.stats["dropped_too_long"] += 1
        self._drop_run += 1
        self._check_all_dropped()
        continue
      self._drop_run = 0
      self.stats["truncated_prompts"] += int(example["truncated_prompt"])
      self.stats["truncated_responses"] += int(example["truncated_responses"])
      return example

  def _check_all_dropped(self) -> None:
    """Raises once the run of dropped examples covers a whole epoch (elements [k N, (k + 1) N) of the stream)."""
    n = self._num_records
    if not n:
      return
    read = self.stats["examples"]  # The stream position (restored with the state, so epochs stay aligned).
    first_epoch_start = -(-(read - self._drop_run) // n) * n  # The first epoch boundary inside the run.
    if first_epoch_start + n <= read:
      config = self._config
      budget = (f"max_length={config.max_length}" if config.max_prompt_length is None else
                f"max_length={config.max_length} with max_prompt_length={config.max_prompt_length}")
      raise ValueError(
          f"max_length (data.max_length): all {n} {config.kind} examples are dropped as too long ({budget} leaves "
          f"fewer than min_response_length={config.min_response_length} response tokens after each prompt; "
          f"{self.stats['dropped_too_long']} drops counted): raise data.max_length, or set data.max_prompt_length "
          f"(< max_length) to keep each prompt's last tokens")

  def _next_packed_rows(self) -> list[list[dict]]:
    rows, row, used = [], [], 0
    while len(rows) < self._config.batch_size:
      example = self._carry if self._carry is not None else self._next_example()
      self._carry = None
      if example is None:
        break
      if used + _example_length(example) > self._config.max_length:
        rows.append(row)
        row, used = [], 0
        self._carry = example  # It starts the next row (or the next batch).
        continue
      row.append(example)
      used += _example_length(example)
    if row and len(rows) < self._config.batch_size:
      rows.append(row)
    return rows

  def __next__(self) -> dict[str, np.ndarray]:
    if self._exhausted and self._carry is None:
      raise StopIteration
    config = self._config
    mine = slice(self._first_row, self._first_row + self._per_process)
    if config.pack:
      rows = self._next_packed_rows()  # The global batch's rows; this process collates its own.
      if not rows:
        raise StopIteration
      return collate_packed(rows[mine], config, self._pad_id)
    examples = []
    while len(examples) < config.batch_size:
      example = self._next_example()
      if example is None:
        break
      examples.append(example)
    if not examples:
      raise StopIteration
    # T from the whole global batch, so every process pads its rows to the same length.
    if config.shared_prompt:
      measure, buckets, collate = _shared_length, config.shared_bucket_lengths, collate_shared_prompt
    elif config.kind == "preference":
      measure, buckets, collate = _preference_length, config.bucket_lengths, collate_preference
    else:
      measure, buckets, collate = _example_length, config.bucket_lengths, collate_sft
    length = bucket_length(max(measure(e) for e in examples), buckets)
    return collate(examples[mine], config, self._pad_id, length)

  def get_state(self) -> dict:
    """A JSON-able snapshot taken between batches: restore it with set_state for the identical next batch."""
    return {"elements": self._elements.get_state(), "stats": dict(self.stats),
            "carry": None if self._carry is None else _to_jsonable(self._carry), "exhausted": self._exhausted}

  def set_state(self, state: dict) -> None:
    """Restores get_state()'s snapshot (on an iterator built with the same source, tokenizer and config)."""
    missing = {"elements", "stats", "carry", "exhausted"} - set(state)
    if missing:
      raise ValueError(f"state is missing keys {sorted(missing)}")
    self._elements.set_state(state["elements"])
    self.stats = {k: int(state["stats"][k]) for k in _STAT_KEYS}
    self._carry = None if state["carry"] is None else _from_jsonable(state["carry"])
    self._exhausted = bool(state["exhausted"])


def make_pipeline(source: Any, tokenizer: Any, config: PipelineConfig) -> BatchIterator:
  """Builds the batch iterator over a random-access `source` of records (len + getitem).

  Args:
    source: records by index (PreferenceRecords; for SFT also {"prompt", "response"} mappings).
    tokenizer: follows the protocol in docs/design.md (encode, apply_chat_template, eos_id, pad_id).
    config: PipelineConfig.
  """
  shard_count, shard_index = _shard_count(config), _shard_index(config)
  if config.batch_size % shard_count:
    raise ValueError(f"batch_size {config.batch_size} must be divisible by shard_count {shard_count}")
  if not 0 <= shard_index < shard_count:
    raise ValueError(f"shard_index must be in [0, {shard_count}), got {shard_index}")
  if len(source) == 0:
    raise ValueError("source is empty")
  ds = grain.MapDataset.source(source)  # Not split by process: all walk one global order (module docstring).
  if config.shuffle:
    ds = ds.shuffle(seed=config.seed)  # Before repeat: each epoch gets its own permutation.
  ds = ds.repeat(config.num_epochs)
  if config.kind == "preference":
    fn = functools.partial(tokenize.tokenize_pair, tokenizer=tokenizer, config=config.truncation,
                           num_attributes=config.num_attributes)
  else:
    fn = functools.partial(tokenize.tokenize_sft, tokenizer=tokenizer, config=config.truncation)
  ds = ds.map(fn)
  read_options = grain.ReadOptions(num_threads=config.num_threads, prefetch_buffer_size=config.prefetch)
  elements = iter(ds.to_iter_dataset(read_options))
  return BatchIterator(elements, config, tokenizer.pad_id, num_records=len(source))


def format_stats(stats: dict, name: str = "pipeline") -> str:
  """One log line of the truncation counters, e.g. `pipeline: 1000 examples, 12 truncated prompts, ...`."""
  return (f"{name}: {stats['examples']} examples, {stats['truncated_prompts']} truncated prompts, "
          f"{stats['truncated_responses']} truncated responses, {stats['dropped_too_long']} dropped (too long)")


def shard_batch(batch: dict[str, np.ndarray], mesh: Mesh, axes: Sequence[str] = BATCH_AXES
                ) -> dict[str, jax.Array]:
  """Places a process-local batch on `mesh`, the leading (batch) axis sharded over `axes`.

  Each process passes its own rows; the global batch is their concatenation (process order). Axes absent from
  the mesh are ignored.

  Raises:
    ValueError: naming the key whose global batch size does not divide over the axes' devices.
  """
  axes = tuple(a for a in axes if a in mesh.axis_names)
  ways = int(np.prod([mesh.shape[a] for a in axes])) if axes else 1
  spec_axis = axes if len(axes) > 1 else (axes[0] if axes else None)
  out = {}
  for key, value in batch.items():
    value = np.asarray(value)
    global_rows = value.shape[0] * jax.process_count()
    if global_rows % ways:
      raise ValueError(f"batch[{key!r}]: global batch size {global_rows} is not divisible by the {ways} devices "
                       f"of mesh axes {axes}")
    sharding = NamedSharding(mesh, PartitionSpec(spec_axis, *([None] * (value.ndim - 1))))
    out[key] = jax.make_array_from_process_local_data(sharding, value)
  return out


def _process_rows(sharding: jax.sharding.Sharding, global_shape: tuple[int, ...], axis: int) -> range:
  """The global rows (along `axis`) that this process's devices hold under `sharding`."""
  rows = set()
  for index in sharding.addressable_devices_indices_map(global_shape).values():
    rows.update(range(*index[axis].indices(global_shape[axis])))
  return range(min(rows), max(rows) + 1) if rows else range(0)


def _batch_axis(sharding: jax.sharding.Sharding, ndim: int) -> int:
  """The first array axis a NamedSharding splits over devices (0 for other shardings or none)."""
  spec = getattr(sharding, "spec", None)
  if spec is None:
    return 0
  for axis, entry in enumerate(tuple(spec)[:ndim]):
    if entry is not None:
      return axis
  return 0


def global_batch(batch: Any, shardings: Any, *, process_local: bool) -> Any:
  """A numpy batch pytree -> global jax.Arrays placed with `shardings` (multi-process or not).

  Args:
    batch: numpy arrays; the batch axis is the first axis `shardings` splits (e.g. 0, or 1 for (K, B, ...)
      ensemble batches).
    shardings: one jax.sharding.Sharding for every leaf, or a pytree prefix of `batch` of them.
    process_local: True if each process holds only its rows of the global batch (a `BatchIterator` with
      shard_count > 1): process p's rows are rows [p * b, (p + 1) * b) of the global batch, so the global
      batch is `process_count` times larger along the batch axis. False if every process holds the same
      whole global batch (each places only the rows of its own devices).

  Raises:
    ValueError: a process-local batch whose rows are not the rows this process's devices hold under
      `shardings` (then read whole global batches, process_local=False), naming the key.
  """
  is_sharding = lambda x: isinstance(x, jax.sharding.Sharding)  # pylint: disable=unnecessary-lambda-assignment
  if is_sharding(shardings):
    shardings = jax.tree.map(lambda _: shardings, batch)
  else:  # Broadcast a prefix tree to one sharding per leaf.
    shardings = jax.tree.map(lambda s, sub: jax.tree.map(lambda _: s, sub), shardings, batch, is_leaf=is_sharding)

  def place(path, sharding, x):
    x = np.asarray(x)
    if not process_local:
      return jax.make_array_from_process_local_data(sharding, x, x.shape)
    axis = _batch_axis(sharding, x.ndim)
    shape = list(x.shape)
    shape[axis] *= jax.process_count()
    rows = _process_rows(sharding, tuple(shape), axis)
    mine = range(jax.process_index() * x.shape[axis], (jax.process_index() + 1) * x.shape[axis])
    if rows != mine:
      raise ValueError(f"batch{jax.tree_util.keystr(path)}: process {jax.process_index()} holds global rows "
                       f"{mine.start}:{mine.stop} but its devices hold rows {rows.start}:{rows.stop} of axis "
                       f"{axis} under {sharding}; read whole global batches (shard_count=1) for this mesh")
    return jax.make_array_from_process_local_data(sharding, x, tuple(shape))

  return jax.tree_util.tree_map_with_path(lambda path, x, s: place(path, s, x), batch, shardings)
