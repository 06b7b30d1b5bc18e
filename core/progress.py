"""Progress bars for long steps: redrawn on a terminal, a line every 30 s in a pod's log."""

from __future__ import annotations

import sys
from typing import Any


def progress_bar(total: int | None, desc: str, unit: str, enabled: bool = True) -> Any:
    """A tqdm bar on stderr; ``enabled=False`` gives a silent one with the same methods."""
    from tqdm.auto import tqdm

    # Not a TTY (a pipeline pod's log): a line every 30 s instead of a redrawn bar.
    interval = 0.1 if sys.stderr.isatty() else 30.0
    return tqdm(total=total, desc=desc, unit=unit, mininterval=interval, disable=not enabled)
