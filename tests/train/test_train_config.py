"""The config boundary: ConfigDict sections -> validated frozen dataclasses, errors naming dotted keys."""

import dataclasses
import pathlib

import ml_collections
import pytest

from jaxrlhf import config as config_lib
from jaxrlhf.config import ConfigError, field, from_config
from jaxrlhf.train.loop import LoopConfig
from jaxrlhf.train.optim import OptimizerConfig

REPO_ROOT = pathlib.Path(__file__).resolve().parents[2]


@dataclasses.dataclass(frozen=True)
class Inner:
  name: str = field("a", choices=("a", "b"))
  rate: float = field(0.5, min=0.0, max=1.0)


@dataclasses.dataclass(frozen=True)
class Outer:
  steps: int = field()  # Required.
  inner: Inner = field(default_factory=Inner)
  sizes: tuple[int, ...] = field((1, 2))
  path: str = field("", must_exist=True)
  tag: str | None = field(None)


def _section(**kw):
  return ml_collections.ConfigDict(kw)


def test_converts_nested_sections_to_frozen_dataclasses():
  out = from_config(_section(steps=3, inner=_section(name="b", rate=1), sizes=[4, 5], tag="x"), Outer)
  assert out == Outer(steps=3, inner=Inner(name="b", rate=1.0), sizes=(4, 5), tag="x")
  assert isinstance(out.inner.rate, float) and isinstance(out.sizes, tuple)
  with pytest.raises(dataclasses.FrozenInstanceError):
    out.steps = 4  # type: ignore[misc]


def test_unknown_key_names_dotted_path_and_valid_keys():
  with pytest.raises(ConfigError) as e:
    from_config(_section(steps=1, inner=_section(nmae="a")), Outer, path="config.toy")
  msg = str(e.value)
  assert "config.toy.inner.nmae" in msg and "did you mean 'name'" in msg and "valid keys: name, rate" in msg


def test_bad_choice_names_key_and_choices():
  with pytest.raises(ConfigError,
                     match=r"config\.inner\.name: 'c' is not a valid choice; valid choices: 'a', 'b'"):
    from_config(_section(steps=1, inner=_section(name="c")), Outer)


@pytest.mark.parametrize("section, pattern", [
    (dict(inner=dict(rate=0.1)), r"config\.steps: required key is missing"),
    (dict(steps="3"), r"config\.steps: expected an int, got '3'"),
    (dict(steps=True), r"config\.steps: expected an int"),
    (dict(steps=1, inner=dict(rate=1.5)), r"config\.inner\.rate: 1\.5 is above the maximum 1\.0"),
    (dict(steps=1, inner=dict(rate=-1)), r"config\.inner\.rate: -1\.0 is below the minimum 0\.0"),
    (dict(steps=1, sizes=[1, "x"]), r"config\.sizes\[1\]: expected an int"),
    (dict(steps=1, path="/nonexistent/file.jsonl"), r"config\.path: file not found: '/nonexistent/file.jsonl'"),
])
def test_bad_values_fail_with_dotted_key(section, pattern):
  with pytest.raises(ConfigError, match=pattern):
    from_config(section, Outer)


def test_cross_field_validate_hooks():
  with pytest.raises(ConfigError, match=r"config\.loop\.checkpoint_every: 5 must be a multiple of "
                     r"config\.loop\.log_every=2"):
    from_config(dict(log_every=2, checkpoint_every=5), LoopConfig, path="config.loop")
  with pytest.raises(ConfigError, match=r"config\.optimizer\.warmup_steps"):
    from_config(dict(schedule="cosine", warmup_steps=20, decay_steps=10), OptimizerConfig,
                path="config.optimizer")


def test_check_override_and_argv_parsing():
  config = ml_collections.ConfigDict(dict(optimizer=dict(learning_rate=0.1, name="adamw"), seed=0))
  config_lib.check_override(config, "optimizer.learning_rate")
  with pytest.raises(ConfigError) as e:
    config_lib.check_override(config, "optimizer.lerning_rate")
  assert "config.optimizer.lerning_rate: unknown key (did you mean 'learning_rate'?)" in str(e.value)
  assert "valid keys in config.optimizer: learning_rate, name" in str(e.value)
  with pytest.raises(ConfigError, match=r"config\.seed\.x: config\.seed is a int"):
    config_lib.check_override(config, "seed.x")
  spec, keys = config_lib.overrides_from_argv(["--config", "c.py:smoke", "--config.a.b=1", "--workdir=x"])
  assert spec == "c.py:smoke" and keys == ["a.b"]
  assert config_lib.split_config_arg("configs/x.py:smoke") == ("configs/x.py", "smoke")
  assert config_lib.split_config_arg("configs/x.py") == ("configs/x.py", None)


def test_load_config_missing_file_and_variant():
  with pytest.raises(ConfigError, match=r"--config: config file not found: 'configs/nope\.py'"):
    config_lib.load_config("configs/nope.py")
  config = config_lib.load_config(str(REPO_ROOT / "tests" / "toy_config.py") + ":nan")
  assert config.nan_at_step == 5
  with pytest.raises(AttributeError):  # Locked: a new key cannot be added.
    config.new_key = 1
