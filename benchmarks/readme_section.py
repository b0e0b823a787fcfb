"""Write a generated Markdown block into README.md between its <!-- NAME:start --> and <!-- NAME:end --> markers."""

from __future__ import annotations

import re
from pathlib import Path

README = Path(__file__).resolve().parent.parent / "README.md"


def update_readme_section(name: str, block: str) -> None:
    """Replace the text between the markers of `name`; raise if README.md lacks them."""
    start, end = f"<!-- {name}:start -->", f"<!-- {name}:end -->"
    text = README.read_text(encoding="utf-8")
    if start not in text or end not in text:
        raise SystemExit(f"README.md lacks the markers {start} ... {end}")
    README.write_text(
        re.sub(
            f"{re.escape(start)}.*?{re.escape(end)}", lambda _: f"{start}\n{block}\n{end}", text, flags=re.S
        ),
        encoding="utf-8",
    )
