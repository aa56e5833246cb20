"""The config boundary: ml_collections ConfigDict sections -> frozen, validated dataclasses.

Config files return a locked `ConfigDict` from `get_config(arg)`. Each consumer declares a frozen dataclass
whose fields carry their constraints as metadata (see `field`); `from_config` converts a section once,
checking unknown and missing keys, types, choices, ranges and required files, and raises `ConfigError`
naming the full dotted key (`config.optimizer.name`) and the valid choices. Nothing here touches JAX, so
every check runs before any compute.

    @dataclasses.dataclass(frozen=True)
    class OptimizerConfig:
      name: str = field("adamw", choices=("adamw", "sgd"))
      learning_rate: float = field(1e-3, min=0.0)

    opt = from_config(config.optimizer, OptimizerConfig, path="config.optimizer")
"""

from __future__ import annotations

import ast
import dataclasses
import difflib
import importlib.util
import os
import pathlib
import sys
import types
import typing
from typing import Any, Callable, Mapping, Sequence, TypeVar

import ml_collections

T = TypeVar("T")

_MISSING = dataclasses.MISSING


class ConfigError(ValueError):
  """A config key is unknown, missing, or has a bad value; the message names the dotted key."""


# A config value "stage:<name>" names an output of an earlier stage of the same chain (its saved model, reward
# model, pool, ...); anything else is a path on disk. Fields that take such references are declared with
# `stage_ref`, so the chain planner can check every reference before any stage runs (`stage_refs`).
STAGE_PREFIX = "stage:"


# pylint: disable=redefined-builtin
def field(default: Any = _MISSING, *, choices: tuple[Any, ...] | None = None, min: float | None = None,
          max: float | None = None, must_exist: bool = False, help: str = "",
          default_factory: Callable[[], Any] | None = None, ref: str | None = None) -> Any:
  """A dataclass field whose metadata the boundary checks.

  Args:
    default: default value; omit for a required key.
    choices: the allowed values (checked with ==).
    min: inclusive lower bound for numbers.
    max: inclusive upper bound for numbers.
    must_exist: the value is a filesystem path that must exist (empty string / None means unset).
    help: one line shown nowhere but kept next to the field for readers.
    default_factory: as in dataclasses.field.
    ref: the value is a stage reference or a path (see `stage_ref`); names the output key it needs.
  """
  metadata = {"choices": tuple(choices) if choices is not None else None, "min": min, "max": max,
              "must_exist": must_exist, "help": help, "ref": ref}
  if default_factory is not None:
    return dataclasses.field(default_factory=default_factory, metadata=metadata)
  return dataclasses.field(default=default, metadata=metadata)
# pylint: enable=redefined-builtin


def stage_ref(output: str, default: str = "", *, help: str = "") -> Any:  # pylint: disable=redefined-builtin
  """A string field holding "" (unset), "stage:<name>" (the `output` of an earlier stage of the chain, e.g.
  "model_dir", "rm_dir", "pool") or a path that must exist. The boundary checks paths and the form of a
  reference; `stage_refs` lists the references so that the chain planner checks them against earlier stages."""
  return field(default, help=help, ref=output)


def stage_refs(obj: Any, path: str = "config") -> list[tuple[str, str, str]]:
  """[(dotted key, "stage:<name>" value, output key)] of every stage reference set in a converted config
  dataclass, nested sections and tuples of sections included, in field order."""
  out = []
  if not dataclasses.is_dataclass(obj):
    return out
  for f in dataclasses.fields(obj):
    value = getattr(obj, f.name)
    key = f"{path}.{f.name}"
    if f.metadata.get("ref") and isinstance(value, str) and value.startswith(STAGE_PREFIX):
      out.append((key, value, f.metadata["ref"]))
    elif dataclasses.is_dataclass(value):
      out.extend(stage_refs(value, key))
    elif isinstance(value, (tuple, list)):
      for i, item in enumerate(value):
        out.extend(stage_refs(item, f"{key}[{i}]"))
  return out


def _type_name(tp: Any) -> str:
  return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _convert(value: Any, tp: Any, path: str) -> Any:
  """Checks/converts `value` to the annotated type `tp`; raises ConfigError naming `path`."""
  if tp is Any:
    return value
  origin = typing.get_origin(tp)
  args = typing.get_args(tp)
  if origin in (typing.Union, types.UnionType):
    if value is None and type(None) in args:
      return None
    for arg in args:
      if arg is type(None):
        continue
      try:
        return _convert(value, arg, path)
      except ConfigError:
        continue
    raise ConfigError(f"{path}: {value!r} does not match any of {_type_name(tp)}")
  if dataclasses.is_dataclass(tp):
    return from_config(value, tp, path=path)
  if origin in (tuple, list):
    if isinstance(value, (str, bytes)) or not isinstance(value, (tuple, list)):
      raise ConfigError(f"{path}: expected a sequence ({_type_name(tp)}), got {value!r}")
    if origin is tuple and args and args[-1] is not Ellipsis:
      if len(args) != len(value):
        raise ConfigError(f"{path}: expected {len(args)} items ({_type_name(tp)}), got {len(value)}")
      items = [_convert(v, a, f"{path}[{i}]") for i, (v, a) in enumerate(zip(value, args))]
    else:
      item_tp = args[0] if args else Any
      items = [_convert(v, item_tp, f"{path}[{i}]") for i, v in enumerate(value)]
    return tuple(items) if origin is tuple else list(items)
  if origin in (dict, Mapping) or tp is dict:
    if not isinstance(value, (dict, ml_collections.ConfigDict)):
      raise ConfigError(f"{path}: expected a mapping, got {value!r}")
    return dict(value.items()) if isinstance(value, ml_collections.ConfigDict) else dict(value)
  if tp is bool:
    if not isinstance(value, bool):
      raise ConfigError(f"{path}: expected a bool, got {value!r}")
    return value
  if tp is int:
    if isinstance(value, bool) or not isinstance(value, int):
      raise ConfigError(f"{path}: expected an int, got {value!r}")
    return value
  if tp is float:
    # Ints are fine for floats (`learning_rate=1`); bools are not.
    if isinstance(value, bool) or not isinstance(value, (int, float)):
      raise ConfigError(f"{path}: expected a float, got {value!r}")
    return float(value)
  if tp is str:
    if not isinstance(value, str):
      raise ConfigError(f"{path}: expected a string, got {value!r}")
    return value
  if isinstance(tp, type) and not isinstance(value, tp):
    raise ConfigError(f"{path}: expected {_type_name(tp)}, got {value!r}")
  return value


def _check_metadata(value: Any, meta: Mapping[str, Any], path: str) -> None:
  choices = meta.get("choices")
  if choices is not None and value not in choices:
    close = difflib.get_close_matches(str(value), [str(c) for c in choices], n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    raise ConfigError(f"{path}: {value!r} is not a valid choice{hint}; valid choices: "
                      + ", ".join(repr(c) for c in choices))
  lo, hi = meta.get("min"), meta.get("max")
  if value is not None and isinstance(value, (int, float)) and not isinstance(value, bool):
    if lo is not None and value < lo:
      raise ConfigError(f"{path}: {value!r} is below the minimum {lo!r}")
    if hi is not None and value > hi:
      raise ConfigError(f"{path}: {value!r} is above the maximum {hi!r}")
  if meta.get("must_exist") and value and not os.path.exists(value):
    raise ConfigError(f"{path}: file not found: {value!r}")
  if meta.get("ref") and value:
    if value.startswith(STAGE_PREFIX):
      if not value[len(STAGE_PREFIX):]:
        raise ConfigError(f"{path}: {value!r} names no stage (expected '{STAGE_PREFIX}<stage name>')")
    elif not os.path.exists(value):
      raise ConfigError(f"{path}: {value!r} does not exist (expected '', '{STAGE_PREFIX}<stage name>' or an "
                        "existing path)")


def from_config(section: Any, cls: type[T], *, path: str = "config") -> T:
  """Converts a ConfigDict (or dict) section into the frozen dataclass `cls`, validating every key.

  Args:
    section: a `ConfigDict` or mapping; keys must be `cls`'s field names.
    cls: a dataclass type whose fields use `field(...)` metadata for choices / ranges / files.
      A `validate(self, path)` method, if present, runs last for cross-field checks.
    path: the dotted name of the section, used in error messages.

  Returns:
    An instance of `cls`.

  Raises:
    ConfigError: naming the full dotted key of an unknown key (with the valid keys), a missing required
      key, a value of the wrong type, a value outside its choices (listing them) or range, or a missing file.
  """
  if isinstance(section, cls):
    return section
  if isinstance(section, ml_collections.ConfigDict):
    items = {k: section[k] for k in section.keys()}
  elif isinstance(section, Mapping):
    items = dict(section)
  else:
    raise ConfigError(f"{path}: expected a config section for {cls.__name__}, got {section!r}")
  fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
  hints = typing.get_type_hints(cls)
  for key in items:
    if key not in fields:
      close = difflib.get_close_matches(key, list(fields), n=1)
      hint = f" (did you mean {close[0]!r}?)" if close else ""
      raise ConfigError(f"{path}.{key}: unknown key{hint}; valid keys: {', '.join(sorted(fields))}")
  kwargs = {}
  for name, f in fields.items():
    key_path = f"{path}.{name}"
    if name not in items:
      if f.default is _MISSING and f.default_factory is _MISSING:
        raise ConfigError(f"{key_path}: required key is missing")
      continue
    value = _convert(items[name], hints.get(name, Any), key_path)
    _check_metadata(value, f.metadata, key_path)
    kwargs[name] = value
  obj = cls(**kwargs)
  validate = getattr(obj, "validate", None)
  if callable(validate):
    validate(path)
  return obj


def flatten(obj: Any, path: str = "") -> list[tuple[str, Any]]:
  """[(dotted key, value)] of every leaf of a converted config dataclass, in field order; tuples of sections
  expand as `key[i].field`."""
  out = []
  for f in dataclasses.fields(obj):
    value = getattr(obj, f.name)
    key = f"{path}.{f.name}" if path else f.name
    if dataclasses.is_dataclass(value):
      out.extend(flatten(value, key))
    elif isinstance(value, (tuple, list)) and value and all(dataclasses.is_dataclass(v) for v in value):
      for i, item in enumerate(value):
        out.extend(flatten(item, f"{key}[{i}]"))
    else:
      out.append((key, value))
  return out


def split_config_arg(spec: str) -> tuple[str, str | None]:
  """'configs/x.py:smoke' -> ('configs/x.py', 'smoke'); 'configs/x.py' -> ('configs/x.py', None)."""
  path, sep, arg = spec.partition(":")
  return path, (arg if sep else None)


def load_module_file(path: str, prefix: str = "_jaxrlhf_file_") -> types.ModuleType:
  """Imports a Python file by path (once per resolved path); ImportError if it is missing."""
  file = pathlib.Path(path)
  if not file.is_file():
    raise ImportError(f"no such file: {path!r}")
  name = prefix + "".join(c if c.isalnum() else "_" for c in str(file.resolve()))
  if name in sys.modules:
    return sys.modules[name]
  spec = importlib.util.spec_from_file_location(name, file)
  module = importlib.util.module_from_spec(spec)
  sys.modules[name] = module
  spec.loader.exec_module(module)
  return module


def load_config_module(path: str) -> types.ModuleType:
  """Imports a config file by path (as absl's config_flags does); raises ConfigError if it is missing."""
  file = pathlib.Path(path)
  if not file.is_file():
    raise ConfigError(f"--config: config file not found: {path!r}")
  name = "_jaxrlhf_config_" + "".join(c if c.isalnum() else "_" for c in str(file.resolve()))
  spec = importlib.util.spec_from_file_location(name, file)
  module = importlib.util.module_from_spec(spec)
  sys.modules[name] = module
  spec.loader.exec_module(module)
  if not callable(getattr(module, "get_config", None)):
    raise ConfigError(f"--config: {path!r} defines no get_config(arg)")
  return module


def load_config(spec: str) -> ml_collections.ConfigDict:
  """Loads `path[:arg]` and returns its locked ConfigDict (get_config(arg), or get_config() without arg).

  Raises:
    ConfigError: the file is missing or defines no get_config, or get_config refused the variant `arg` (a ValueError
      naming it, or an `arg` outside the module's VARIANTS); the message names the file, the variant and, where the
      module lists them in `VARIANTS`, the valid variants.
  """
  path, arg = split_config_arg(spec)
  module = load_config_module(path)
  if arg is None:
    config = _call_get_config(module)
  else:
    try:
      config = module.get_config(arg)
    except ConfigError:
      raise
    except ValueError as e:
      variants = getattr(module, "VARIANTS", None)
      known = isinstance(variants, (tuple, list)) and all(isinstance(v, str) for v in variants)
      # Only a refusal of the variant becomes a config error; any other ValueError is a bug in the config file and
      # keeps its traceback.
      if not ((known and arg not in variants) or repr(arg) in str(e)):
        raise
      valid = f"; valid variants: {', '.join(variants)}" if known else ""
      raise ConfigError(f"--config: {path!r} has no variant {arg!r}{valid} (get_config said: {e})") from e
  if not isinstance(config, ml_collections.ConfigDict):
    raise ConfigError(f"--config: {path}.get_config must return a ConfigDict, got {type(config).__name__}")
  config.lock()
  return config


def _call_get_config(module: types.ModuleType) -> ml_collections.ConfigDict:
  try:
    return module.get_config()
  except TypeError:
    return module.get_config(None)


def check_override(config: ml_collections.ConfigDict, dotted_key: str, *, value: str | None = None,
                   dict_keys: Mapping[str, Sequence[str]] | None = None) -> None:
  """Raises ConfigError if `dotted_key` (e.g. 'optimizer.lerning_rate') is not a key of `config`.

  The message names the full dotted path and the valid keys of the section it fell out of. A key inside a
  dict-valued field (e.g. 'data.world.seed' where `world` is a dict of WorldConfig kwargs) that the config does
  not already hold cannot be set on its own (the locked ConfigDict has no such key): the message says to set the
  whole dict instead, e.g. --config.data.world="{'seed': 3}".

  Args:
    config: the loaded (locked) config.
    dotted_key: the override's key, without the leading "config.".
    value: the override's value as typed (for the example in the message), if known.
    dict_keys: the name of a dict-valued field (e.g. "world") -> the keys its dict takes (e.g. WorldConfig's
      fields), listed in the message; a mapping node that is empty is treated as a dict-valued field too (a section
      always has keys).
  """
  dict_keys = dict_keys or {}
  node: Any = config
  walked = "config"
  parts = dotted_key.split(".")
  for depth, part in enumerate(parts):
    if isinstance(node, (ml_collections.ConfigDict, Mapping)):
      keys = list(node.keys())
      if part not in keys:
        name = walked.rsplit(".", 1)[-1]
        if not keys or name in dict_keys:
          raise ConfigError(_dict_field_message(node, walked, part, parts[depth + 1:], value, dict_keys.get(name)))
        close = difflib.get_close_matches(part, [str(k) for k in keys], n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise ConfigError(f"{walked}.{part}: unknown key{hint}; valid keys in {walked}: "
                          + ", ".join(sorted(str(k) for k in keys)))
      node = node[part]
    elif isinstance(node, (list, tuple)) and part.isdigit() and int(part) < len(node):
      node = node[int(part)]
    else:
      raise ConfigError(f"{walked}.{part}: {walked} is a {type(node).__name__}, not a section")
    walked = f"{walked}.{part}"


def _dict_field_message(node: Any, walked: str, part: str, rest: Sequence[str], value: str | None,
                        valid: Sequence[str] | None) -> str:
  """The ConfigError text for `--<walked>.<part>=...` where `walked` is a dict-valued field without key `part`."""
  if valid is not None and part not in valid:
    close = difflib.get_close_matches(part, list(valid), n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    return f"{walked}.{part}: unknown key{hint}; valid keys of the dict {walked}: " + ", ".join(sorted(valid))
  example = {str(k): _plain(v) for k, v in node.items()}  # The dict's current keys, kept by the example.
  if value is not None and not rest:
    try:
      example[part] = ast.literal_eval(value)
    except (ValueError, SyntaxError):
      example[part] = value  # A bare word, as absl reads a string flag.
    shown = repr(example)
  else:
    shown = repr(example)[:-1] + (", " if example else "") + f"{part!r}: <value>}}"
  held = f"only {', '.join(sorted(str(k) for k in node.keys()))}" if len(node) else "no keys"
  listing = f"; valid keys: {', '.join(sorted(valid))}" if valid is not None else ""
  return (f"{walked}.{part}: {walked} is a dict-valued field whose keys cannot be set one at a time (the config "
          f"holds {held}); set the whole dict instead, e.g. --{walked}=\"{shown}\"{listing}")


def _plain(value: Any) -> Any:
  """A ConfigDict (nested) as a plain dict, for showing a value the user can paste back."""
  if isinstance(value, (ml_collections.ConfigDict, Mapping)):
    return {str(k): _plain(v) for k, v in value.items()}
  return value


def overrides_from_argv(argv: list[str], flag: str = "config") -> tuple[str | None, list[str]]:
  """Finds `--config[=]spec` and the dotted keys of `--config.a.b=value` overrides in an argv list."""
  spec = None
  keys = []
  for i, arg in enumerate(argv):
    if arg == f"--{flag}" and i + 1 < len(argv):
      spec = argv[i + 1]
    elif arg.startswith(f"--{flag}="):
      spec = arg.split("=", 1)[1]
    elif arg.startswith(f"--{flag}."):
      keys.append(arg[len(flag) + 3:].split("=", 1)[0])
  return spec, keys
