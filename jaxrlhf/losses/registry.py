"""Name -> function registry so configs can pick losses by string.

Each loss module registers its public functions under a kind ("reward", "preference", "token_level",
"policy_gradient", "aggregation", "logps", "kl_controller") and a name; `get` fails with the valid choices.
"""

from typing import Callable

_REGISTRY: dict[str, dict[str, Callable]] = {}


def register(kind: str, name: str) -> Callable[[Callable], Callable]:
  """Decorator: registers `fn` as `kind/name`. Registering a name twice is an error."""

  def wrap(fn: Callable) -> Callable:
    table = _REGISTRY.setdefault(kind, {})
    if name in table and table[name] is not fn:
      raise ValueError(f"loss {kind}/{name} is registered twice")
    table[name] = fn
    return fn

  return wrap


def get(kind: str, name: str) -> Callable:
  """Returns the function registered as `kind/name`; ValueError lists the valid names."""
  import jaxrlhf.losses  # noqa: F401  (importing the package registers every loss module)

  if kind not in _REGISTRY:
    raise ValueError(f"unknown loss kind {kind!r}; valid kinds: {sorted(_REGISTRY)}")
  if name not in _REGISTRY[kind]:
    raise ValueError(f"unknown {kind} loss {name!r}; valid names: {sorted(_REGISTRY[kind])}")
  return _REGISTRY[kind][name]


def names(kind: str) -> list[str]:
  """The registered names of one kind, sorted."""
  import jaxrlhf.losses  # noqa: F401

  return sorted(_REGISTRY.get(kind, {}))
