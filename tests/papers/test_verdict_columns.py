"""Every metric a paper config's VERDICTS rule reads is a column of its sweep's table (config.tables.metrics), so
the per-seed values behind each verdict are kept in the results_runs.csv that experiments.repro copies to
docs/reproductions/<paper>/ (the docs' per-seed tables are read from it)."""

import pathlib

import pytest

from jaxrlhf import config as config_lib

PAPERS = sorted(p for p in (pathlib.Path(__file__).resolve().parents[2] / "configs" / "papers").glob("*.py")
                if not p.name.startswith("_"))


def _variant(paper: str, sweep: str, variants: tuple[str, ...]) -> str:
  """The config variant a rule's sweep directory runs: "<paper>" is the default, "<paper>_<variant>" the others."""
  variant = "default" if sweep == paper else sweep[len(paper) + 1:] if sweep.startswith(paper + "_") else None
  assert variant in variants, f"{paper}: sweep {sweep!r} names no variant of {variants}"
  return variant


@pytest.mark.parametrize("path", PAPERS, ids=lambda p: p.stem)
def test_every_verdict_metric_is_a_table_column(path):
  module = config_lib.load_config_module(str(path))
  rules = getattr(module, "VERDICTS", ())
  variants = tuple(getattr(module, "VARIANTS", ("default",)))
  missing = []
  for rule in rules:
    variant = _variant(path.stem, rule["sweep"], variants)
    config = config_lib.load_config(str(path) if variant == "default" else f"{path}:{variant}")
    columns = set(config.tables.metrics) if "tables" in config else set()
    missing += [(rule["sweep"], rule[key]) for key in ("value", "baseline")
                if isinstance(rule.get(key), str) and rule[key] not in columns]
  assert not missing, f"{path.name}: VERDICTS metrics missing from config.tables.metrics: {missing}"
