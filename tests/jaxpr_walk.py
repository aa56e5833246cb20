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


def while_carried_shapes(jaxpr: Any, ndim: int) -> list[list[tuple[int, ...]]]:
  """For each while loop of `jaxpr` (nested ones included, outer first), the shapes of its `ndim`-dimensional
  operands: e.g. ndim 5 gives the (L, B, K, S, H) KV caches that a decode loop carries."""
  return [[v.aval.shape for v in eqn.invars if getattr(v.aval, "ndim", 0) == ndim]
          for eqn in all_eqns(jaxpr) if eqn.primitive.name == "while"]


def attention_slots_per_loop(jaxpr: Any) -> list[int]:
  """For each while loop of `jaxpr` (a decode loop), the KV-cache slots its attention reads: the largest S among
  the (B, K, S, H) operands of the matmuls in its body (the cached block; the new tokens' block has S = T)."""
  return [max(v.aval.shape[2] for e in all_eqns(eqn.params["body_jaxpr"].jaxpr) if e.primitive.name == "dot_general"
              for v in e.invars if v.aval.ndim == 4)
          for eqn in all_eqns(jaxpr) if eqn.primitive.name == "while"]
