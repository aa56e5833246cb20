"""The real Anthropic HH-RLHF harmless-base test split parses completely."""

import gzip
import json

from jaxrlhf.data import adapters, errors


def test_hh_rlhf_parses_to_2312_pairs_and_nothing_is_lost(hh_rlhf_file):
  records, report = adapters.read_records(hh_rlhf_file, "hh")  # Strict: any bad row would raise.
  lenient, lenient_report = adapters.read_records(hh_rlhf_file, adapters.AdapterConfig("hh", strict=False))
  assert len(records) == 2312 == len(lenient)
  assert lenient_report.skipped == 0 and lenient_report.kept == 2312
  assert report.notes == {"hh_diverging_dialogue": 5, "hh_empty_response": 4}
  with gzip.open(hh_rlhf_file, "rt") as f:
    rows = [json.loads(line) for line in f]
  for row, record in zip(rows, records, strict=True):
    assert record.prompt.endswith("\n\nAssistant:")
    assert record.chosen != record.rejected
    # Nothing lost: prompt + " " + response rebuilds each dialogue exactly.
    for full, response in ((row["chosen"], record.chosen), (row["rejected"], record.rejected)):
      assert full in (record.prompt + " " + response, record.prompt + response)
  # Outside the 5 diverging pairs the prompt ends at the LAST assistant marker of both dialogues.
  last_marker = sum(r["chosen"].rfind(adapters.ASSISTANT) + len(adapters.ASSISTANT) == len(rec.prompt)
                    and r["rejected"].rfind(adapters.ASSISTANT) + len(adapters.ASSISTANT) == len(rec.prompt)
                    for r, rec in zip(rows, records))
  assert last_marker == 2312 - 5
  assert errors.format_skip_report(report, "hh").startswith("hh: kept 2312, skipped 0")
