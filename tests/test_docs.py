"""The documentation as a reader meets it: README.md stays an entry point of at most 200
lines that links every docs/ page, every relative link of README.md and docs/*.md leads to
a file (and heading) that exists, and docs/cli.md is what tools/make_cli_docs.py renders
from the Typer app today."""

from __future__ import annotations

import re
from pathlib import Path

from docskit import DOCS, FENCE, README, REPO, headings, pages
from scriptkit import script_module

LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)\)")


def slug(heading: str) -> str:
    """The anchor GitHub gives a heading: lower case, punctuation dropped, spaces as `-`."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def anchors(page: Path) -> set[str]:
    return {slug(h.group(0).lstrip("#")) for h in headings(page.read_text())}


def relative_links(page: Path) -> list[str]:
    """The targets of the page's links and images outside code blocks, other than URLs."""
    text = FENCE.sub("", page.read_text())
    return [t for t in LINK.findall(text) if not re.match(r"[a-z][a-z0-9+.-]*:", t)]


def broken_links(page: Path) -> list[str]:
    """The relative links of `page` whose file, or whose heading in a Markdown file, is
    missing."""
    return [target for target in relative_links(page) if not _leads_somewhere(page, target)]


def _leads_somewhere(page: Path, target: str) -> bool:
    path, _, anchor = target.partition("#")
    file = (page.parent / path).resolve() if path else page
    if not file.is_file():
        return False
    return not anchor or file.suffix != ".md" or anchor in anchors(file)


def test_readme_is_an_entry_point_of_at_most_200_lines():
    assert len(README.read_text().splitlines()) <= 200


def test_readme_links_every_docs_page():
    linked = {(REPO / t.partition("#")[0]).resolve() for t in relative_links(README)}
    unlinked = [p.name for p in sorted(DOCS.glob("*.md")) if p.resolve() not in linked]
    assert not unlinked, f"README.md does not link {unlinked}"


def test_every_relative_link_leads_to_a_file_and_heading_that_exist():
    broken = {p.relative_to(REPO).as_posix(): broken_links(p) for p in pages()}
    assert not any(broken.values()), {page: links for page, links in broken.items() if links}


def test_the_link_check_finds_a_missing_file_and_a_missing_heading(tmp_path):
    (tmp_path / "a.md").write_text("# A page\n\n## Some section\n")
    page = tmp_path / "b.md"
    page.write_text(
        "[ok](a.md#some-section) [file](gone.md) [heading](a.md#no-such) [self](#b-page)\n"
        "[url](https://example.org/x.md)\n\n# B page\n\n```text\n[code](skipped.md)\n```\n"
    )
    assert broken_links(page) == ["gone.md", "a.md#no-such"]


def test_the_cli_reference_is_current():
    with script_module(REPO / "tools" / "make_cli_docs.py") as tool:
        rendered = tool.render()
    assert "--lpips-weights" not in rendered  # hidden: an old flag name
    assert (DOCS / "cli.md").read_text() == rendered, (
        "docs/cli.md is stale: run `make docs` (tools/make_cli_docs.py) and commit it."
    )
