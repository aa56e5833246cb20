"""TFDS builders writing array_record files, read back by random access without TensorFlow.

tensorflow-datasets 4.9.x prepares `GeneratorBasedBuilder`s with `file_format=ARRAY_RECORD` and serves them with
`builder.as_data_source(split)` (an `ArrayRecordDataSource`) without importing TensorFlow (tests assert that).
Each example is one `Text` feature holding a record as JSON (records.record_to_json), so chat messages,
attribute vectors and every optional field survive; `RecordSource` turns a data source back into records.

Builders:
  - `preference_files`: the format adapters over local files, any format (pairs, k-way, prompts, SFT examples)
    (PreferenceFilesConfig: split -> paths, format, columns, strict, seed). In lenient mode the per-split
    SkipReport is stored in the dataset's metadata (`skip_report(builder)`), so the counts travel with the prepared
    data.
  - `synthetic_world`: pairs from `jaxrlhf.data.synthetic` (SyntheticWorldConfig: seed, pairs per split, extra
    WorldConfig fields): `World(WorldConfig(seed=..., **world_kwargs)).preference_records(num_pairs, split)`.

Examples keep their generation order (`disable_shuffling=True`): the input pipeline shuffles with its own seed.
"""

import hashlib
import json
import os
from typing import Any, Mapping, Sequence

from etils import epath
import tensorflow_datasets as tfds

from jaxrlhf.data import adapters, errors
from jaxrlhf.data.records import KWayRecord, PreferenceRecord, record_from_json, record_to_json

_VERSION = tfds.core.Version("1.0.0")
_FEATURES = {"record": tfds.features.Text()}


def _info(builder: tfds.core.GeneratorBasedBuilder, description: str) -> tfds.core.DatasetInfo:
  return tfds.core.DatasetInfo(
      builder=builder, description=description, features=tfds.features.FeaturesDict(dict(_FEATURES)),
      disable_shuffling=True, metadata=tfds.core.MetadataDict())


class _Builder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
  """Base of the builders here: array_record only, no downloads."""

  VERSION = _VERSION

  # TFDS derives the checksums path from the code path; its default lookup for an editable install touches the
  # optional `importlib_resources` package, so name this file directly (no checksums file exists: no downloads).
  @tfds.core.utils.classproperty
  @classmethod
  def code_path(cls) -> epath.Path:
    return epath.Path(__file__)


class PreferenceFilesConfig(tfds.core.BuilderConfig):
  """Which files make which split, and how to read them (see adapters.AdapterConfig).

  The default `name` hashes the settings and the files' sizes and modification times, so a changed file or
  setting prepares a new dataset instead of silently reusing a stale one.
  """

  def __init__(self, *, splits: Mapping[str, Sequence[str | os.PathLike]],
               format: str,  # pylint: disable=redefined-builtin  (matches AdapterConfig.format)
               columns: Mapping[str, str] | None = None, strict: bool = True, seed: int = 0,
               rejected: str = "random", name: str | None = None, **kwargs):
    if not splits:
      raise ValueError("splits must map at least one split name to a list of paths")
    self.splits = {s: [os.fspath(p) for p in ([ps] if isinstance(ps, (str, os.PathLike)) else ps)]
                   for s, ps in splits.items()}
    self.adapter = adapters.AdapterConfig(format=format, columns=dict(columns or {}), strict=strict, seed=seed,
                                          rejected=rejected)
    for split, paths in self.splits.items():
      for p in paths:
        if not os.path.exists(p):
          raise ValueError(f"splits[{split!r}]: file not found: {p}")
    if name is None:
      stamp = [(s, p, os.path.getsize(p), os.path.getmtime(p)) for s, ps in sorted(self.splits.items()) for p in ps]
      key = json.dumps([stamp, format, sorted((columns or {}).items()), strict, seed, rejected])
      name = f"{format}-{hashlib.sha1(key.encode()).hexdigest()[:12]}"
    super().__init__(name=name, version=_VERSION, **kwargs)


class PreferenceFiles(_Builder):
  """Local preference files -> array_record splits of JSON records. Build with `config=PreferenceFilesConfig`."""

  def _info(self) -> tfds.core.DatasetInfo:
    return _info(self, "Preference pairs read from local files by jaxrlhf.data.adapters.")

  def _split_generators(self, dl_manager):
    del dl_manager
    return {split: self._generate_examples(split, paths) for split, paths in self.builder_config.splits.items()}

  def _generate_examples(self, split: str, paths: Sequence[str]):
    config = self.builder_config.adapter
    report = errors.SkipReport()
    i = 0
    for path in paths:  # One file at a time: a record that cannot be stored is named by its full path.
      for record in adapters.iter_records(path, config, report):
        try:
          data = record_to_json(record)
        except UnicodeEncodeError as e:  # A lone surrogate (a "\ud83d" escape in the JSON) has no UTF-8 form.
          error = errors.RecordError(errors.BAD_FIELD, f"text is not valid Unicode ({e.reason}: "
                                                       f"{e.object[e.start:e.end]!r})")
          if config.strict:
            raise errors.DataFileError(f"{path}:{record.source.rsplit(':', 1)[-1]}: {error}") from e
          report.kept -= 1  # iter_records counted it as kept.
          report.skip(error, record.source)
          continue
        yield i, {"record": data}
        i += 1
    if not i:  # TFDS would stop with a bare "No examples were yielded".
      raise ValueError(f"splits[{split!r}]: no record to store ("
                       f"{errors.format_skip_report(report, f'{config.format} {list(paths)}')})")
    # Runs once the split is exhausted, before TFDS writes the metadata.
    self.info.metadata[f"skip_report/{split}"] = report.as_dict()


class SyntheticWorldConfig(tfds.core.BuilderConfig):
  """Synthetic gold-reward world pairs: `seed`, `num_pairs` per split, extra `WorldConfig` fields."""

  def __init__(self, *, seed: int = 0, num_pairs: Mapping[str, int] | None = None,
               world_kwargs: Mapping[str, Any] | None = None, name: str | None = None, **kwargs):
    self.seed = int(seed)
    self.num_pairs = dict(num_pairs or {"train": 10_000, "test": 1_000})
    self.world_kwargs = dict(world_kwargs or {})
    for split, n in self.num_pairs.items():
      if not isinstance(n, int) or n <= 0:
        raise ValueError(f"num_pairs[{split!r}] must be a positive integer, got {n!r}")
    if name is None:
      key = json.dumps([self.seed, sorted(self.num_pairs.items()), sorted(self.world_kwargs.items())], default=str)
      name = f"seed{self.seed}-{hashlib.sha1(key.encode()).hexdigest()[:12]}"
    super().__init__(name=name, version=_VERSION, **kwargs)


class SyntheticWorld(_Builder):
  """The synthetic gold-reward world's preference pairs as array_record splits."""

  def _info(self) -> tfds.core.DatasetInfo:
    return _info(self, "Preference pairs from the jaxrlhf synthetic gold-reward world.")

  def _split_generators(self, dl_manager):
    del dl_manager
    from jaxrlhf.data import synthetic  # pylint: disable=g-import-not-at-top  (heavy; only when building)
    config = self.builder_config
    world = synthetic.World(synthetic.WorldConfig(seed=config.seed, **config.world_kwargs))
    return {split: self._generate_examples(world, split, n) for split, n in config.num_pairs.items()}

  def _generate_examples(self, world, split: str, num_pairs: int):
    records = world.preference_records(num_pairs, split)
    if len(records) != num_pairs:
      raise ValueError(f"synthetic world returned {len(records)} records for split {split!r}, "
                       f"expected num_pairs={num_pairs}")
    for i, record in enumerate(records):
      yield i, {"record": record_to_json(record)}


def prepare(builder_cls: type[tfds.core.GeneratorBasedBuilder], config: tfds.core.BuilderConfig,
            data_dir: str | os.PathLike) -> tfds.core.GeneratorBasedBuilder:
  """Builds (once; later calls reuse the files) and returns the builder, array_record format."""
  builder = builder_cls(config=config, data_dir=os.fspath(data_dir), file_format=tfds.core.FileFormat.ARRAY_RECORD)
  builder.download_and_prepare(download_config=tfds.download.DownloadConfig(verify_ssl=False))
  return builder


def skip_report(builder: tfds.core.DatasetBuilder, split: str) -> dict:
  """The stored SkipReport summary of a prepared preference_files split ({} when none was stored)."""
  return dict(builder.info.metadata.get(f"skip_report/{split}", {})) if builder.info.metadata else {}


class RecordSource:
  """Random access to records: wraps a TFDS data source (len + getitem of {"record": bytes}).

  Works as a grain source: `grain.MapDataset.source(RecordSource(builder.as_data_source("train")))`.
  """

  def __init__(self, data_source):
    self._source = data_source

  def __len__(self) -> int:
    return len(self._source)

  def __getitem__(self, index: int) -> PreferenceRecord | KWayRecord:
    return record_from_json(self._source[index]["record"])

  def __repr__(self) -> str:
    return f"RecordSource({self._source!r})"


def record_source(builder: tfds.core.DatasetBuilder, split: str) -> RecordSource:
  """The records of one prepared split, by random access (no TensorFlow)."""
  return RecordSource(builder.as_data_source(split))
