"""The `melt` command: a thin layer over the Python API.

Each stage's sub-package defines its own commands; this module assembles them and turns a `MeltError` into
one line on standard error and exit status 2, so users never see a traceback for their own mistakes.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import Any

import typer
from typer.core import TyperGroup

from melt import __version__
from melt.acoustics.cli import acoustics_app, audio_app
from melt.ambiguity.cli import ambiguity_command
from melt.analysis.cli import compare_command
from melt.annotate.cli import annotate_command
from melt.corpus.cli import corpus_app
from melt.demo import demo_command
from melt.errors import MeltError
from melt.provenance import running_command
from melt.review.cli import preference_app, review_app
from melt.ser.cli import ser_app
from melt.terminal import command_group, console


class _MeltCommand(TyperGroup):
    """The `melt` group: while a command runs, its outputs record the command line as their provenance; a usage
    error (an unknown option, a value outside an option's choices) is one line and exit 2, like any user error."""

    def main(
        self,
        args: Sequence[str] | None = None,
        prog_name: str | None = None,
        complete_var: str | None = None,
        standalone_mode: bool = True,
        **extra: Any,
    ) -> Any:
        argv = list(sys.argv[1:] if args is None else args)
        prog_name = prog_name or "melt"  # also when run as `python -m melt`
        with running_command(["melt", *argv]):
            if not standalone_mode:
                return super().main(args, prog_name, complete_var, False, **extra)
            try:
                result = super().main(args, prog_name, complete_var, False, **extra)
            except typer.TyperException as exc:
                context = getattr(exc, "ctx", None)
                if context is None or type(exc).__name__ == "NoArgsIsHelpError":
                    exc.show()  # type: ignore[attr-defined]
                    sys.exit(exc.exit_code)
                # Typer checks a Literal option's value with pydantic, whose message starts "Value error, ".
                message = exc.format_message().replace("Value error, ", "")
                _error(
                    f"{message} (`{context.command_path} --help` lists the options)",
                    exc.exit_code,
                )
            except typer.Abort:
                print("Aborted!", file=sys.stderr)
                sys.exit(1)
        # A command's `typer.Exit(code)` comes back as its code; a command that finished returns None.
        sys.exit(result if isinstance(result, int) else 0)


app = command_group(
    "Annotate speech-emotion corpora with language models, and check the labels against human labels and "
    "against the audio.",
    name="melt",
    cls=_MeltCommand,
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"melt {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(
        False, "--version", callback=_version, is_eager=True, help="Print the version."
    ),
) -> None:
    """melt: LLM annotation of speech-emotion corpora, with the checks that tell whether the labels are any good."""


app.add_typer(corpus_app, name="corpus")
app.command("compare")(compare_command)
app.command("annotate")(annotate_command)
app.add_typer(audio_app, name="audio")
app.add_typer(acoustics_app, name="acoustics")
app.add_typer(ser_app, name="ser")
app.command("demo")(demo_command)
app.command("ambiguity")(ambiguity_command)
app.add_typer(review_app, name="review")
app.add_typer(preference_app, name="preference")


def main() -> None:
    try:
        app()
    except MeltError as exc:
        _error(str(exc))
    except OSError as exc:
        # The machine's condition, not a bug: a folder that cannot be written, a full disk. One line too.
        where = f"{exc.filename}: " if exc.filename else ""
        _error(f"{where}{exc.strerror or exc}")
    except KeyboardInterrupt:
        # Ctrl-C outside a run (a run handles it itself and exits 130 after saving its work).
        print("melt: interrupted", file=sys.stderr)
        sys.exit(130)


def _error(message: str, code: int = 2) -> None:
    from rich.text import Text

    # As text, not markup: a message quoting "[...]" from a file must come out as it is.
    console(stderr=True).print(Text.assemble(("error:", "bold red"), " ", message), soft_wrap=True)
    sys.exit(code)


if __name__ == "__main__":
    main()
