"""User-facing errors.

Anything a user can get wrong (a name, a file, a value) raises :class:`ToolkitError` with one
sentence that says what is wrong and what to do instead. The CLI prints that sentence and exits
non-zero; it never shows a traceback for these.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class ToolkitError(Exception):
    """A mistake in user input, reported as one clear sentence."""

    exit_code: int = 1


def did_you_mean(name: str, choices: Iterable[str], n: int = 3) -> str:
    """Return ' Did you mean 'x'?' for the closest choices, or an empty string."""
    matches = difflib.get_close_matches(name, list(choices), n=n, cutoff=0.6)
    if not matches:
        lowered = {c.lower(): c for c in choices}
        matches = [c for k, c in lowered.items() if name.lower() in k][:n]
    if not matches:
        return ""
    return " Did you mean " + " or ".join(f"'{m}'" for m in matches) + "?"
