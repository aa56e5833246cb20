"""Plumbing shared by the generated prompt files (tasks, arithmetic_tasks, sql_tasks, instruction_tasks,
tool_tasks): a hash that no library version can change, the checks of a split's row request, and the writer of
one JSONL file per split."""

from __future__ import annotations

import hashlib
import os
from typing import Any, Callable, Sequence

from jaxrlhf.data import adapters


def stable_hash(*parts: Any) -> int:
  """A 64-bit integer that depends only on `parts` (their str forms, joined by "|", through SHA-256)."""
  return int.from_bytes(hashlib.sha256("|".join(map(str, parts)).encode()).digest()[:8], "big")


def check_split_request(split: str, splits: Sequence[str], n: int, eval_share: float) -> None:
  """ValueError naming the argument unless `split` is one of `splits`, n >= 0 and 0 < eval_share < 1."""
  if split not in splits:
    raise ValueError(f"split must be one of {tuple(splits)}, got {split!r}")
  if n < 0:
    raise ValueError(f"n must be >= 0, got {n}")
  if not 0.0 < eval_share < 1.0:
    raise ValueError(f"eval_share must be in (0, 1), got {eval_share}")


def write_split_files(folder: str | os.PathLike, name: str, rows: Callable[[str, int], list[dict[str, Any]]],
                      counts: Sequence[tuple[str, int]]) -> list[str]:
  """Writes `folder`/<name.format(split=split)> = rows(split, n) as JSONL for each (split, n) of `counts` (the
  folder is created); returns the paths in that order."""
  os.makedirs(folder, exist_ok=True)
  paths = []
  for split, n in counts:
    path = os.path.join(os.fspath(folder), name.format(split=split))
    adapters.write_jsonl(path, rows(split, n))
    paths.append(path)
  return paths
