"""The one error type for model files that cannot be read (safetensors, GGUF, tokenizer files).

Readers validate sizes and counts against the file's size before they read or allocate, so a truncated file or
a bogus header (a header length of 2**60, a tensor count of 2**40) fails at once with a `ModelFileError` naming
the file and the problem, never with a foreign exception, a hang or a huge allocation. `reading(path, what)`
turns whatever a third-party parser (json, numpy, the `gguf` package, `tokenizers`) raises on malformed bytes
into that error.
"""

from __future__ import annotations

import contextlib
import functools
import os
import struct
from typing import Any, Callable, Iterator, TypeVar

# What parsers raise on malformed bytes: json (ValueError), numpy reshapes and memmaps (ValueError), the gguf
# package (ValueError, KeyError, IndexError), wrongly typed or zero metadata (TypeError, AttributeError,
# ZeroDivisionError), struct.
_MALFORMED = (ValueError, TypeError, KeyError, IndexError, AttributeError, ArithmeticError, struct.error,
              EOFError, RecursionError)

_F = TypeVar("_F", bound=Callable[..., Any])


class ModelFileError(ValueError):
  """A model file is malformed or unsupported. `path` is the file, `problem` what is wrong with it."""

  def __init__(self, path: str | os.PathLike, problem: str):
    super().__init__(f"{os.fspath(path)}: {problem}")
    self.path = os.fspath(path)
    self.problem = problem


@contextlib.contextmanager
def reading(path: str | os.PathLike, what: str) -> Iterator[None]:
  """Re-raises a parser's exception inside the block as `ModelFileError(path, ...)` naming `what` and the
  exception type (a plain ValueError's message is kept as is)."""
  try:
    yield
  except ModelFileError:
    raise
  except _MALFORMED as e:
    detail = str(e).strip().splitlines()[0][:500] if str(e).strip() else "no detail"
    # A plain ValueError already says what is wrong (ours, or the gguf package's); others get named.
    problem = detail if type(e) is ValueError else f"malformed {what} ({type(e).__name__}: {detail})"
    raise ModelFileError(path, problem) from e


def reads_file(what: str) -> Callable[[_F], _F]:
  """Decorates `fn(path, ...)` so that any malformed-input exception becomes a ModelFileError naming `path`."""

  def decorate(fn: _F) -> _F:

    @functools.wraps(fn)
    def wrapper(path, *args, **kwargs):
      with reading(path, what):
        return fn(path, *args, **kwargs)

    return wrapper  # type: ignore[return-value]

  return decorate
