"""The docs hold together: every in-page and cross-file anchor link resolves to a heading, every repository path
they name exists, and every paper config has its section in docs/reproductions.md (a docs commit once cut eleven
paper sections out of that file while its summary table kept linking to them)."""

import glob
import os
import pathlib
import re

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
DOCS = ["README.md", *sorted(str(p.relative_to(ROOT)) for p in (ROOT / "docs").rglob("*.md"))]
# A repository path as the docs write it: a top-level folder, then path characters (a placeholder such as <k>, {name}
# or * ends the match, leaving a prefix).
_PATH = re.compile(r"(?<![\w/.~-])((?:docs|configs|experiments|tests|jaxrlhf|notebooks)/[\w./=\-]+)")


def _slug(heading: str) -> str:
  """GitHub's anchor of a markdown heading: lower case, punctuation other than '-' and '_' dropped, spaces -> '-'."""
  return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def _anchors(text: str) -> set[str]:
  return {_slug(m.group(1)) for m in re.finditer(r"^#+ (.*)$", text, re.M)}


def test_slug_matches_githubs_rule():
  assert _slug("R^3, the regularized relevance reward (Kim & Seo 2024)") == \
      "r3-the-regularized-relevance-reward-kim--seo-2024"
  assert _slug("Mixed-R1's BMAS, on SmolLM2") == "mixed-r1s-bmas-on-smollm2"


@pytest.mark.parametrize("doc", DOCS)
def test_anchor_links_resolve(doc):
  text = (ROOT / doc).read_text()
  missing = [a for a in re.findall(r"\]\(#([^)\s]+)\)", text) if a not in _anchors(text)]
  for target, anchor in re.findall(r"\]\(([\w./-]+\.md)(?:#([^)\s]+))?\)", text):
    path = (ROOT / doc).parent / target
    if not path.exists():
      missing.append(target)
    elif anchor and anchor not in _anchors(path.read_text()):
      missing.append(f"{target}#{anchor}")
  assert not missing, f"{doc}: links without a target: {missing}"


@pytest.mark.parametrize("doc", DOCS)
def test_named_repository_paths_exist(doc):
  missing = []
  for match in _PATH.findall((ROOT / doc).read_text()):
    path = match.rstrip(".,;:")
    if path.endswith(("_", "=", "-")):  # a prefix cut by a placeholder: some path must start with it
      found = glob.glob(str(ROOT / path) + "*")
    else:
      found = os.path.exists(ROOT / path)
    if not found:
      missing.append(path)
  assert not missing, f"{doc} names paths that do not exist: {sorted(set(missing))}"


def test_every_paper_config_has_its_section():
  text = (ROOT / "docs" / "reproductions.md").read_text()
  configs = sorted(p.name for p in (ROOT / "configs" / "papers").glob("*.py") if p.name != "__init__.py")
  assert configs, "no paper configs found"
  assert not [c for c in configs if f"configs/papers/{c}" not in text]
  # Each row of the summary table links a section of this file (the anchor test checks they resolve).
  summary = text[text.index("## Summary"):]
  summary = summary[:summary.index("\n## ", 1)]
  rows = [line for line in summary.splitlines() if line.startswith("| [")]
  assert len(rows) >= 20 and all("](#" in row for row in rows)
