"""README and docs cite only what the repository has: every relative link names a file in the checkout, and
every ``#anchor`` a heading (GitHub's slug) or an ``<a id>`` of the file it points to."""

import re
from functools import cache
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
LINK = re.compile(r"\]\(([^)\s]+)\)")


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


@cache
def anchors(path: Path) -> frozenset[str]:
    found, seen, in_code = set(), {}, False
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.startswith("```"):
            in_code = not in_code
        if in_code:
            continue
        found.update(re.findall(r'<a id="([^"]+)"', line))
        heading = re.match(r"^#{1,6}\s+(.*)", line)
        if heading:
            s = slug(heading.group(1))
            n = seen.get(s, 0)
            seen[s] = n + 1
            found.add(s if n == 0 else f"{s}-{n}")  # GitHub numbers repeated headings
    return frozenset(found)


def links(path: Path) -> list[tuple[str, str]]:
    text = re.sub(r"```.*?```", "", path.read_text(encoding="utf-8"), flags=re.S)  # code blocks are not links
    out = []
    for target in LINK.findall(text):
        if re.match(r"^[a-z][a-z0-9+.-]*:", target):  # https:, mailto:, ...
            continue
        file, _, anchor = target.partition("#")
        out.append((file, anchor))
    return out


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: str(p.relative_to(ROOT)))
def test_links_name_files_and_headings_that_exist(doc):
    problems = []
    for file, anchor in links(doc):
        target = (doc.parent / file).resolve() if file else doc
        if not target.exists():
            problems.append(f"{file}: no such file")
        elif anchor and target.suffix == ".md" and anchor not in anchors(target):
            problems.append(f"{file}#{anchor}: no such heading in {target.relative_to(ROOT)}")
    assert not problems, f"{doc.relative_to(ROOT)}: " + "; ".join(problems)


def test_slug_matches_github():
    assert slug("Weighing the braking labels (`--brake-weight`), sixteen seeds (the Xeon)") == \
        "weighing-the-braking-labels---brake-weight-sixteen-seeds-the-xeon"
    assert slug("A risk-averse motor loss (`--throttle-excess-weight`)") == \
        "a-risk-averse-motor-loss---throttle-excess-weight"
