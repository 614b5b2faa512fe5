"""Every command explains itself: `--help` works and each command and option carries a description."""

import typer
from typer.testing import CliRunner

from melt.cli import app


def _commands(command, path=()):
    yield path, command
    for name, sub in getattr(command, "commands", {}).items():
        yield from _commands(sub, (*path, name))


def test_every_command_has_help_text():
    root = typer.main.get_command(app)
    runner = CliRunner()
    seen = []
    for path, command in _commands(root):
        result = runner.invoke(app, [*path, "--help"], env={"COLUMNS": "200"})
        assert result.exit_code == 0, (path, result.output)
        assert (command.help or "").strip(), f"`melt {' '.join(path)}` has no description"
        for param in command.params:
            if param.name not in ("help",) and getattr(param, "param_type_name", "") == "option":
                assert (param.help or "").strip(), (
                    f"option {param.name} of `melt {' '.join(path)}` has no help"
                )
        seen.append(" ".join(path))
    assert {"corpus meld", "corpus melt", "compare", "annotate", "demo"} <= set(seen)
