"""The consoles every command prints to, and the one way a command fails on a user error.

Shared by :mod:`toolkit.cli` and its sub-apps (e.g. :mod:`toolkit.dataset_cli`), which must
not import each other. Cheap to import: no torch.
"""

from __future__ import annotations

from typing import NoReturn

import typer
from rich.console import Console
from rich.markup import escape

from toolkit.errors import ToolkitError

console = Console()
err_console = Console(stderr=True)


def fail(exc: ToolkitError) -> NoReturn:
    """Print the error's one sentence (never a traceback) and exit with its code."""
    err_console.print(f"[bold red]error:[/] {escape(str(exc))}", highlight=False, soft_wrap=True)
    raise typer.Exit(exc.exit_code)
