"""Every document a user reads points at things that exist: each relative link in README.md
and docs/ resolves to a file of the repository (and its ``#anchor`` to a heading there), and
each ``NAME.md`` they or the examples mention is a file of the repository."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DOCS = sorted([ROOT / "README.md", *(ROOT / "docs").rglob("*.md")])
READ = sorted([*DOCS, *(p for p in (ROOT / "docs" / "examples").iterdir() if p.is_file())])
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")
MENTION = re.compile(r"(?<![\w/.-])([\w][\w./-]*\.md)\b")
FENCE = re.compile(r"^```.*?^```", re.MULTILINE | re.DOTALL)


def rel(path: Path) -> str:
    return str(path.relative_to(ROOT))


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


def anchors(doc: Path) -> set[str]:
    text = FENCE.sub("", doc.read_text(encoding="utf-8"))
    return {slug(m) for m in re.findall(r"^#+ (.+)$", text, re.MULTILINE)}


@pytest.mark.parametrize("doc", DOCS, ids=rel)
def test_relative_links_resolve(doc: Path) -> None:
    broken = []
    for target in LINK.findall(FENCE.sub("", doc.read_text(encoding="utf-8"))):
        if re.match(r"[a-z]+:", target):
            continue  # http(s), mailto: not this test's business
        path, _, anchor = target.partition("#")
        dest = (doc.parent / path).resolve() if path else doc
        if not dest.exists():
            broken.append(f"{target}: no such file")
        elif anchor and dest.suffix == ".md" and anchor not in anchors(dest):
            broken.append(f"{target}: no heading #{anchor} in {rel(dest)}")
    assert not broken, f"{rel(doc)}: {broken}"


@pytest.mark.parametrize("doc", READ, ids=rel)
def test_mentioned_documents_exist(doc: Path) -> None:
    missing = sorted(
        {
            name
            for name in MENTION.findall(doc.read_text(encoding="utf-8"))
            if not (doc.parent / name).exists() and not (ROOT / name).exists()
        }
    )
    assert not missing, f"{rel(doc)} mentions documents that do not exist: {missing}"
