"""Writing a file so that a reader never sees half of it.

Layer: emu (file I/O). Summaries and counters are rewritten while a run goes on and may be
read (or the run killed) at any moment: each is written beside itself, then renamed over.
"""

from __future__ import annotations

from pathlib import Path

__all__ = ["write_atomic"]


def write_atomic(path: Path, text: str) -> None:
    """Replace ``path`` with ``text`` in one rename (on the same filesystem)."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    tmp.replace(path)
