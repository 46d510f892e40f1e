"""README tells the truth about the command line: every command its tour names exists and
answers ``--help``, and every command the CLI has is in the tour."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from toolkit.cli import app

README = Path(__file__).resolve().parents[1] / "README.md"


def tour_commands() -> list[str]:
    """The commands of the tour's table: the first word after ``toolkit`` in its first column."""
    text = README.read_text()
    tour = text[text.index("## A tour of the command line"):]
    tour = tour[: tour.index("\n## ", 1)]
    return sorted({m.group(1) for m in re.finditer(r"^\| `toolkit (\w[\w-]*)", tour, re.MULTILINE)})


def cli_commands() -> list[str]:
    """Every command and command group (``toolkit dataset ...``) the CLI registers."""
    commands = [c.name or c.callback.__name__.rstrip("_") for c in app.registered_commands]
    return sorted(commands + [g.name for g in app.registered_groups])


def test_the_tour_lists_every_command_the_cli_has() -> None:
    assert tour_commands() == cli_commands()


@pytest.mark.parametrize("command", tour_commands())
def test_every_command_in_the_tour_answers_help(cli, command: str) -> None:
    result = cli(command, "--help")
    assert result.exit_code == 0, result.output
    assert "Usage" in result.output


def test_every_fenced_toolkit_command_in_the_readme_names_a_real_command() -> None:
    """Commands in README's code blocks start with a command the CLI has."""
    blocks = re.findall(r"```\n(.*?)```", README.read_text(), re.DOTALL)
    used = {m.group(1) for block in blocks for m in re.finditer(r"^toolkit (\w[\w-]*)", block, re.MULTILINE)}
    assert used and used <= set(cli_commands()) | {"--version"}, used - set(cli_commands())
