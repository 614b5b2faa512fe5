"""What melt shows in a terminal: the console every command prints through, and the settings every group of
commands shares.

`console()` is a rich Console that wraps at the terminal's width in a terminal, but not at rich's default of 80
columns when the output goes to a pipe or a file (`melt compare ... > log.txt`): a path or a table row stays on
one line there. `COLUMNS`, when set, decides the width everywhere.

`command_group()` makes a Typer app with melt's help settings: plain click help (paragraphs re-flowed to the
terminal, never broken where the docstring's lines end; flags without a value placeholder; defaults and choices
shown), `-h` as well as `--help`, no shell-completion options, and no rich tracebacks (a `MeltError` is one line,
see `melt.cli`).
"""

from __future__ import annotations

from typing import Any

import typer
from rich.console import Console, ConsoleDimensions

#: Width of output written to a pipe or file: wide enough that no path or table row is wrapped.
UNWRAPPED_WIDTH = 1000
#: The widest help text in a wide terminal: longer lines are harder to read.
HELP_WIDTH = 110
CONTEXT_SETTINGS: dict[str, Any] = {"help_option_names": ["-h", "--help"], "max_content_width": HELP_WIDTH}


class _Console(Console):
    @property
    def size(self) -> ConsoleDimensions:
        dimensions = Console.size.fget(self)  # type: ignore[attr-defined]
        # rich takes the width of whichever standard stream is a terminal, else 80: neither suits a file.
        if self._width is None and not self.is_terminal:
            return ConsoleDimensions(UNWRAPPED_WIDTH, dimensions.height)
        return dimensions

    @size.setter
    def size(self, new_size: tuple[int, int]) -> None:
        Console.size.fset(self, new_size)  # type: ignore[attr-defined]


def console(*, stderr: bool = False) -> Console:
    """The console a command prints through (standard error for progress and messages about the work)."""
    return _Console(stderr=stderr, highlight=False)


def options_given(context: typer.Context) -> set[str]:
    """The parameters of the running command (`context`, a `typer.Context` parameter of the command) that the
    user set, on the command line or through the environment, as opposed to those left at their defaults: only
    these override a --config file, so that `--help` can show every real default."""
    given = set()
    for param in context.command.params:
        source = context.get_parameter_source(param.name) if param.name else None
        if source is not None and source.name != "DEFAULT":
            given.add(param.name)
    return given


def command_group(help: str, **settings: Any) -> typer.Typer:
    """A Typer app (a group of `melt` commands) with melt's help and error settings."""
    return typer.Typer(
        help=help,
        no_args_is_help=True,
        add_completion=False,
        rich_markup_mode=None,
        pretty_exceptions_enable=False,
        context_settings=CONTEXT_SETTINGS,
        **settings,
    )


__all__ = ["CONTEXT_SETTINGS", "UNWRAPPED_WIDTH", "command_group", "console", "options_given"]
