"""Looking at built corpora: inspect, show, render, stats, and a manifest from a folder of media.

The CLI (microturn/cli.py) is a thin layer over these modules. Each module imports its heavy
dependencies (matplotlib, torch through the tokenizers, PyAV) inside the functions that need them, so
``import microturn.report`` stays light.
"""

from __future__ import annotations


def safe(value: object) -> str:
    """``value`` as text that rich prints literally: shards and paths are data, and a word such as
    ``[bold]`` or ``[/]`` must neither restyle the output nor raise rich's MarkupError."""
    from rich.markup import escape

    return escape(str(value))


class UserError(Exception):
    """A mistake the user can fix (missing path, unknown key, bad argument): the CLI prints the message
    on one line and exits 2, without a traceback."""
