"""Progress bars for the report commands: a rich bar on stderr when it is a terminal, silence otherwise
(so ``--json`` output and pipes stay clean)."""

from __future__ import annotations

import contextlib
import sys
from typing import Callable, Iterator, Optional

Advance = Callable[[float], None]


@contextlib.contextmanager
def progress(description: str, total: Optional[float], *, unit: str = "", enabled: bool = True) -> Iterator[Advance]:
    """Yields ``advance(n)``; the bar is transient (it disappears when the work is done)."""
    if not enabled or not sys.stderr.isatty():
        yield lambda n=1.0: None
        return
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        DownloadColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeRemainingColumn,
    )

    count = DownloadColumn() if unit == "bytes" else MofNCompleteColumn()
    bar = Progress(
        TextColumn("[bold]{task.description}"), BarColumn(), count, TimeRemainingColumn(),
        console=Console(stderr=True), transient=True,
    )
    with bar:
        task = bar.add_task(description, total=total)
        yield lambda n=1.0: bar.update(task, advance=n)
