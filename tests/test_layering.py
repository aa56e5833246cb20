"""The package's import layering (docs/design.md): imports flow downward only, stage files never import each other,
and the package's own modules form no import cycle. Every import counts, those inside functions too."""

import ast
import pathlib

import pytest

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
PACKAGE = REPO_ROOT / "jaxrlhf"

# Sub-package -> the packages it may never import (besides experiments and configs, which no library module may).
FORBIDDEN = {
    "losses": ("train", "stages", "evaluation", "sampling"),
    "models": ("train", "stages", "evaluation", "sampling"),
    "data": ("train", "stages", "evaluation", "sampling"),
    "rewards": ("train", "stages", "evaluation", "sampling"),
    "sampling": ("train", "stages", "evaluation"),
    "parallel": ("train", "stages", "evaluation", "sampling", "losses", "models", "data"),
    "train": ("stages", "evaluation"),
    "evaluation": ("train", "stages"),
}
# The stage modules that hold no stage kind: every stage file may import these; they import no stage file.
PLUMBING = ("__init__", "common", "inputs", "artifacts", "reward_sources", "kinds")


def module_name(path: pathlib.Path) -> str:
  parts = path.relative_to(REPO_ROOT).with_suffix("").parts
  return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported_modules(source: str, name: str) -> set[str]:
  """Every absolute module a source file imports (module-level or inside functions); `from a import b` counts as
  both `a` and `a.b` (b may be a submodule)."""
  out = set()
  package = name.rsplit(".", 1)[0] if "." in name else name
  for node in ast.walk(ast.parse(source)):
    if isinstance(node, ast.Import):
      out.update(alias.name for alias in node.names)
    elif isinstance(node, ast.ImportFrom):
      base = node.module or ""
      if node.level:  # Relative import: resolve against the importing module's package.
        base = ".".join(package.split(".")[:len(package.split(".")) - node.level + 1] + ([base] if base else []))
      out.add(base)
      out.update(f"{base}.{alias.name}" for alias in node.names)
  return out


def violations(name: str, imports: set[str]) -> list[str]:
  """The layering rules broken by module `name` importing `imports`."""
  parts = name.split(".")
  bad = []
  for target in sorted(imports):
    t = target.split(".")
    if t[0] in ("experiments", "configs") and parts[0] == "jaxrlhf":
      bad.append(f"{name} imports {target} (the library never imports the CLIs or configs)")
    if t[0] != "jaxrlhf" or len(t) < 2 or len(parts) < 2:
      continue
    if t[1] in FORBIDDEN.get(parts[1], ()):
      bad.append(f"{name} imports {target} ({parts[1]} sits below {t[1]})")
    if parts[1] == "stages" and t[1] == "stages" and len(t) > 2 and len(parts) > 2:
      importer_is_stage = parts[2] not in PLUMBING
      target_is_stage = t[2] not in PLUMBING
      if target_is_stage and t[2] != parts[2] and (importer_is_stage or parts[2] != "kinds"):
        bad.append(f"{name} imports {target} (stage files never import each other; share code through "
                   f"{', '.join(PLUMBING[1:5])})")
  return bad


def package_graph() -> dict[str, set[str]]:
  """{module: the package modules it imports at module level} over jaxrlhf."""
  names = {module_name(p): p for p in PACKAGE.rglob("*.py")}
  graph = {}
  for name, path in names.items():
    tree = ast.parse(path.read_text())
    top = [n for n in tree.body if isinstance(n, (ast.Import, ast.ImportFrom))]
    source = "\n".join(ast.unparse(n) for n in top)
    graph[name] = {m for m in imported_modules(source, name) if m in names and m != name}
  return graph


def test_no_upward_or_sideways_import():
  bad = []
  for path in sorted(PACKAGE.rglob("*.py")):
    name = module_name(path)
    bad += violations(name, imported_modules(path.read_text(), name))
  assert not bad, "\n".join(bad)


def test_no_import_cycle_between_package_modules():
  graph = package_graph()
  state: dict[str, int] = {}
  stack: list[str] = []

  def visit(node: str) -> list[str] | None:
    state[node] = 1
    stack.append(node)
    for nxt in sorted(graph[node]):
      # A package's __init__ importing its own submodules is how packages export; not a cycle of concern.
      if node == nxt.rsplit(".", 1)[0]:
        continue
      if state.get(nxt) == 1:
        return stack[stack.index(nxt):] + [nxt]
      if nxt not in state:
        cycle = visit(nxt)
        if cycle:
          return cycle
    stack.pop()
    state[node] = 2
    return None

  for node in sorted(graph):
    if node not in state:
      cycle = visit(node)
      assert cycle is None, "import cycle: " + " -> ".join(cycle)


@pytest.mark.parametrize("name, source, expected", [
    ("jaxrlhf.losses.preference", "from jaxrlhf.train import scoring", "losses sits below train"),
    ("jaxrlhf.train.scoring", "def f():\n  from jaxrlhf.stages import common", "train sits below stages"),
    ("jaxrlhf.evaluation.stats", "import jaxrlhf.train.loop", "evaluation sits below train"),
    ("jaxrlhf.stages.rl", "from jaxrlhf.stages import preference", "stage files never import each other"),
    ("jaxrlhf.stages.inputs", "from jaxrlhf.stages.sft import SFTConfig", "stage files never import each other"),
    ("jaxrlhf.sampling.generate", "from experiments import run", "never imports the CLIs"),
    ("jaxrlhf.rewards.bleu", "from jaxrlhf.stages import reward_sources", "rewards sits below stages"),
])
def test_the_checker_catches_a_forbidden_import(name, source, expected):
  found = violations(name, imported_modules(source, name))
  assert found and expected in found[0], found


def test_the_checker_allows_the_layering():
  assert not violations("jaxrlhf.stages.rl", imported_modules(
      "from jaxrlhf.stages import common, inputs\nfrom jaxrlhf.train import scoring\nfrom jaxrlhf.sampling import x",
      "jaxrlhf.stages.rl"))
  assert not violations("jaxrlhf.stages.kinds", imported_modules("from jaxrlhf.stages import rl, sft",
                                                                "jaxrlhf.stages.kinds"))
