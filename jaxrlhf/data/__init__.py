"""Data: records, format adapters, bad-input accounting, TFDS builders, the input pipeline.

Light modules are re-exported here; import the heavier ones directly:
  jaxrlhf.data.tfds_builders  (tensorflow_datasets, never TensorFlow)  PreferenceFiles, SyntheticWorld, record_source
  jaxrlhf.data.pipeline       (grain, jax)  PipelineConfig, make_pipeline, shard_batch
  jaxrlhf.data.tokenize       records -> token ids, truncation policy
  jaxrlhf.data.synthetic      the synthetic gold-reward world
  jaxrlhf.data.prompts        prompt files: splits, rendering into generation ids, decoding completions
  jaxrlhf.data.tasks          the generated arithmetic prompt files (verifiable answers)
"""

from jaxrlhf.data.adapters import AdapterConfig, FORMATS, iter_records, read_prompt_records, read_records
from jaxrlhf.data.errors import RecordError, SkipReport, format_skip_report
from jaxrlhf.data.records import (BenchmarkRecord, KWayRecord, PreferenceRecord, PromptRecord, SFTRecord,
                                  as_messages, record_from_json, record_to_json, response_text)

__all__ = [
    "AdapterConfig", "FORMATS", "iter_records", "read_prompt_records", "read_records", "RecordError", "SkipReport",
    "format_skip_report", "BenchmarkRecord", "KWayRecord", "PreferenceRecord", "PromptRecord", "SFTRecord",
    "as_messages", "record_from_json", "record_to_json", "response_text",
]
