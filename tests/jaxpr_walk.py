"""Every equation of a jaxpr, nested bodies included: the tests that read a compiled program's structure (which
matmuls run, which arrays exist) walk it with this."""

from __future__ import annotations

from typing import Any, Iterator


def all_eqns(jaxpr: Any) -> Iterator[Any]:
  """The equations of `jaxpr` and, recursively, of the jaxprs in their parameters (scan, remat, custom_vjp, pjit
  bodies), outer first."""
  for eqn in jaxpr.eqns:
    yield eqn
    for param in eqn.params.values():
      for sub in param if isinstance(param, (tuple, list)) else (param,):
        inner = getattr(sub, "jaxpr", sub)
        if hasattr(inner, "eqns"):
          yield from all_eqns(inner)
