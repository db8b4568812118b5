"""Reading the documentation's examples: README.md and the pages of docs/, by section.

A section is a heading line and the text up to the next heading of the same or a higher
level (`## Encoding` ends at the next `## ` or `# ` heading; a page's `# ` title runs to
the end of the page). Headings inside code blocks do not count.
"""

from __future__ import annotations

import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
README = REPO / "README.md"
DOCS = REPO / "docs"
HEADING = re.compile(r"^(#{1,6}) \S.*$", re.M)
FENCE = re.compile(r"^```.*?^```", re.M | re.S)


def pages() -> list[Path]:
    """README.md and every docs/*.md page, in a fixed order."""
    return [README, *sorted(DOCS.glob("*.md"))]


def headings(text: str) -> list[re.Match]:
    """The headings of a Markdown text, leaving out `#` lines inside code blocks."""
    fenced = [m.span() for m in FENCE.finditer(text)]
    return [m for m in HEADING.finditer(text) if not any(a <= m.start() < b for a, b in fenced)]


def section(page: Path, title: str) -> str:
    """The section of `page` headed by the line `title` (e.g. "## Encoding")."""
    text = page.read_text()
    found = headings(text)
    (start,) = [h for h in found if h.group(0) == title]
    level = len(start.group(1))
    later = [h.start() for h in found if h.start() > start.start() and len(h.group(1)) <= level]
    return text[start.start() : later[0] if later else None]


def bash_blocks(text: str) -> list[str]:
    return re.findall(r"```bash\n(.*?)```", text, re.S)


def python_blocks(text: str) -> list[str]:
    return re.findall(r"```python\n(.*?)```", text, re.S)


def example_lines(block: str) -> list[str]:
    """The commands of a bash block, without comments, blank lines and `...` templates."""
    lines = [line.split(" #")[0].strip() for line in block.splitlines()]
    return [line for line in lines if line and not line.startswith("#") and "..." not in line]
