"""Writes a generated section into a Markdown file between two marker comments, keeping the text around them."""

from __future__ import annotations

from pathlib import Path


def write_section(path: Path, section: str, begin: str, end: str) -> None:
    """Replaces the text from `begin` to `end` in `path` with `section` (which holds both markers), or appends it
    when the markers are not there yet; a missing file starts as a `# Benchmarks` page."""
    text = path.read_text() if path.is_file() else "# Benchmarks\n\n"
    if begin in text and end in text:
        before, rest = text.split(begin, 1)
        text = before + section.rstrip("\n") + rest.split(end, 1)[1]
    else:
        text = text.rstrip("\n") + "\n\n" + section
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
