"""Write a benchmark's table into its docs page, between ``<!-- NAME:start -->`` and ``<!-- NAME:end -->``.

The README states one headline number per area and links to the page; the full tables live in
``docs/*.md`` and only the benchmarks write them.
"""

from __future__ import annotations

import re
from pathlib import Path

DOCS = Path(__file__).resolve().parents[1] / "docs"


def markers(name: str) -> tuple[str, str]:
    """The start and end marker lines of section ``name``."""
    return f"<!-- {name}:start -->", f"<!-- {name}:end -->"


def read_section(page: Path, name: str) -> str:
    """The text between the markers of ``name`` in ``page`` ("" when the page has no such section)."""
    start, end = markers(name)
    text = page.read_text() if page.is_file() else ""
    return text.split(start, 1)[1].split(end, 1)[0] if start in text and end in text else ""


def write_section(page: Path, name: str, block: str) -> None:
    """Replace the text between the markers of ``name`` in ``page`` with ``block``.

    Raises:
        SystemExit: when ``page`` lacks the markers (a table is never appended somewhere unexpected).
    """
    start, end = markers(name)
    text = page.read_text()
    if start not in text or end not in text:
        raise SystemExit(f"{page} has no {start} ... {end} markers")
    new = f"{start}\n{block.strip()}\n{end}"
    page.write_text(re.sub(re.escape(start) + ".*?" + re.escape(end), lambda _: new, text, count=1, flags=re.DOTALL))
    print(f"wrote the {name} table into {page}")
