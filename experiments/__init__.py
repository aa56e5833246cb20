"""Experiment drivers (run, sweep, tables) and the stage-kind registry that run.py dispatches on.

A stage kind maps a config section to work: `register_stage(kind, config_type, run)` where `config_type`
is a frozen dataclass the section (minus its `kind` key) is converted into at the config boundary, and
`run(stage_config, workdir, inputs) -> outputs` gets the earlier stages' outputs by stage name and returns
a JSON-able dict (paths, `metrics`) for later stages and for results.json.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

from jaxrlhf.config import ConfigError

StageFn = Callable[[Any, str, dict[str, dict[str, Any]]], dict[str, Any]]


@dataclasses.dataclass(frozen=True)
class StageKind:
  name: str
  config_type: type
  run: StageFn


_STAGE_KINDS: dict[str, StageKind] = {}


def register_stage(kind: str, config_type: type, run: StageFn) -> None:
  """Registers (or re-registers: config files may be imported more than once) a stage kind."""
  if not dataclasses.is_dataclass(config_type):
    raise ValueError(f"config_type: expected a dataclass type for stage kind {kind!r}, got {config_type!r}")
  _STAGE_KINDS[kind] = StageKind(kind, config_type, run)


def get_stage(kind: Any, path: str) -> StageKind:
  """The registered stage kind; ConfigError naming `path` and the registered kinds otherwise."""
  if kind not in _STAGE_KINDS:
    raise ConfigError(f"{path}: {kind!r} is not a registered stage kind; valid choices: "
                      + ", ".join(repr(k) for k in sorted(_STAGE_KINDS)))
  return _STAGE_KINDS[kind]


def registered_kinds() -> list[str]:
  return sorted(_STAGE_KINDS)
