"""Every command explains itself, written for a terminal: `--help` works for each command; descriptions are
re-flowed (never broken where the docstring's lines end); every option has a description, shows its default (a
description of it where the default comes from elsewhere) and takes no value placeholder when it is a flag;
closed sets of values are listed as choices; the defaults shown are the ones the settings models use; and output
written to a pipe is not wrapped at 80 columns."""

from __future__ import annotations

import itertools
import os
import subprocess
import sys

import pytest
import typer
from typer.testing import CliRunner

from melt.cli import app

#: Every command of `melt` (other branches add theirs: the walk below covers them all the same).
EXPECTED_COMMANDS = {
    "compare", "annotate", "demo", "ambiguity",
    "corpus meld", "corpus melt", "corpus import", "corpus iemocap", "corpus tess", "corpus ravdess",
    "corpus cremad", "corpus msppodcast", "corpus folds", "corpus overlap", "corpus describe",
    "audio extract", "acoustics extract", "acoustics check",
    "ser features", "ser train", "ser evaluate", "ser experiment",
    "review export", "review import",
    "preference pairs", "preference serve", "preference report",
}  # fmt: skip
#: Options whose values are a closed set: they must be choices, listed in the help.
CLOSED_SETS = {
    ("annotate", "--schema"): {"paper", "structured"},
    ("ambiguity", "--entropy-norm"): {"present", "classes"},
    ("corpus iemocap", "--classes"): {"4", "all"},
    ("corpus cremad", "--vote-channel"): {"voice", "face", "audiovisual", "all"},
    ("corpus folds", "--by"): {"speaker", "session"},
    ("acoustics check", "--per"): {"split", "speaker"},
    ("ser features", "--device"): {"auto", "cpu", "cuda"},
    ("ser train", "--target"): {"label", "distribution"},
    ("ser train", "--source"): {"human", "synthetic", "combined"},
    ("ser train", "--loss"): {"jsd-entropy", "soft-ce", "kl"},
    ("ser train", "--pooling"): {"attention", "mean"},
    ("ser evaluate", "--reference"): {"human", "synthetic", "combined"},
    ("review export", "--select"): {"doubtful", "changed", "invalid", "all"},
    ("review export", "--format"): {"labelstudio", "argilla"},
}
#: Options taking a name from a closed set or a file: the placeholder lists both.
METAVARS = {
    ("annotate", "--prompt"): "[melt|dialogue|cot|FILE]",
    ("corpus meld", "--select"): "[melt|FILE]",
    ("ser features", "--backbone"): "[NAME|FOLDER|egemaps]",
}


def _commands(command, path=()):
    yield path, command
    for name, sub in getattr(command, "commands", {}).items():
        yield from _commands(sub, (*path, name))


ROOT = typer.main.get_command(app)
COMMANDS = {" ".join(path): command for path, command in _commands(ROOT)}
LEAVES = {name: command for name, command in COMMANDS.items() if name and not hasattr(command, "commands")}


def _help(path: str) -> str:
    """The help as a terminal of 80 columns shows it (click's test runner fixes the width at 80)."""
    result = CliRunner().invoke(app, [*path.split(), "--help"])
    assert result.exit_code == 0, (path, result.output)
    return result.output


def _options(command):
    return [p for p in command.params if getattr(p, "param_type_name", "") == "option"]


def test_every_command_is_there_and_has_help():
    assert set(LEAVES) >= EXPECTED_COMMANDS
    for name, command in COMMANDS.items():
        _help(name)
        assert (command.help or "").strip(), f"`melt {name}` has no description"
        for param in _options(command):
            assert (param.help or "").strip(), f"option {param.opts} of `melt {name}` has no help"


@pytest.mark.parametrize("name", sorted(n for n in COMMANDS if n))
def test_help_is_written_for_a_terminal(name):
    text = _help(name)
    assert "<bool>" not in text
    assert max(len(line) for line in text.splitlines()) <= 80, text
    # A description line that ends while the next line's first word would still have fitted: the help kept a
    # line break of the docstring (rich help does; plain click help re-flows paragraphs).
    description = text.split("\n\n", 1)[1].split("\nArguments:")[0].split("\nOptions:")[0]
    lines = description.splitlines()
    for line, following in itertools.pairwise(lines):
        if line.strip() and following.strip():
            assert len(line.rstrip()) + 1 + len(following.split()[0]) > 78, (name, line, following)


def test_help_uses_a_wide_terminal():
    env = {**os.environ, "COLUMNS": "200"}
    done = subprocess.run(
        [sys.executable, "-m", "melt", "annotate", "--help"],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    widths = [len(line) for line in done.stdout.splitlines()]
    assert done.returncode == 0 and 90 < max(widths) <= 110, done.stdout


@pytest.mark.parametrize("name", sorted(LEAVES))
def test_options_show_their_default_and_flags_take_no_value(name):
    command = LEAVES[name]
    context = command.make_context(f"melt {name}", [], resilient_parsing=True)
    for param in _options(command):
        if "--help" in param.opts:
            continue
        names, help_text = param.get_help_record(context)
        if param.is_flag:
            assert "<" not in names, (name, names)
            if param.secondary_opts:  # --x/--no-x: which one is the default
                assert "[default:" in help_text, (name, names)
            continue
        assert "[default:" in help_text or "[required]" in help_text, (name, names, help_text)


def _choices(param) -> tuple:
    """The click Choice of an option (click), or what Typer's own parameter type reports (Typer 0.29+)."""
    kind = getattr(param, "type", None)
    if kind is not None:
        return tuple(getattr(kind, "choices", ()))
    return tuple(param.type_descriptor.choices or ())


def test_closed_sets_are_choices_listed_in_the_help():
    for (name, option), values in CLOSED_SETS.items():
        param = next(p for p in LEAVES[name].params if option in getattr(p, "opts", ()))
        choices = [str(c) for c in _choices(param)]
        assert set(choices) == values, (name, option)
        assert f"<{'|'.join(choices)}>" in _help(name).replace("\n", "")
    for (name, option), metavar in METAVARS.items():
        assert f"{option} {metavar}" in _help(name)


def _defaults(command_name: str) -> dict[str, object]:
    return {p.name: p.default for p in LEAVES[command_name].params}


def test_defaults_shown_are_the_settings_defaults():
    from melt.ambiguity.config import AmbiguityConfig
    from melt.annotate import cli as annotate_cli
    from melt.annotate.config import DEFAULT_SERVER_MODEL, AnnotateConfig
    from melt.review.export import ExportSettings
    from melt.review.pairs import PairsSettings
    from melt.review.server import ServeSettings

    assert annotate_cli.DEFAULT_SERVER_MODEL == DEFAULT_SERVER_MODEL
    checks = {
        "annotate": (AnnotateConfig, {"schema": "schema_kind"}),
        "ambiguity": (AmbiguityConfig, {}),
        "review export": (ExportSettings, {}),
        "preference pairs": (PairsSettings, {}),
        "preference serve": (ServeSettings, {"neither": "allow_neither"}),
    }
    for command_name, (model, renamed) in checks.items():
        fields = model.model_fields
        compared = 0
        for param, default in _defaults(command_name).items():
            field = renamed.get(param, param)
            if field not in fields or default is None or (isinstance(default, bool) and not default):
                continue
            expected = fields[field].get_default(call_default_factory=True)
            if field == "seeds":
                default = [int(s) for s in str(default).split(",")]
            assert default == expected, (command_name, param, default, expected)
            compared += 1
        assert compared >= 2, command_name


def test_output_to_a_pipe_is_not_wrapped_at_80_columns(tmp_path):
    # A path longer than 80 columns stays on one line, and so does a table row, when stdout is a pipe.
    deep = tmp_path / ("a-rather-long-folder-name-" * 4) / "comparison-output-folder"
    table = tmp_path / "labels.csv"
    table.write_text("id,text,label,llm_label\nu1,Fine.,joy,joy\nu2,No.,anger,joy\nu3,Hm.,neutral,neutral\n")
    env = {k: v for k, v in os.environ.items() if k not in ("COLUMNS", "LINES")}
    done = subprocess.run(
        [sys.executable, "-m", "melt", "compare", str(table), "--out", str(deep), "--bootstrap", "10"],
        capture_output=True,
        text=True,
        env=env,
        stdin=subprocess.DEVNULL,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    report = str((deep / "report.html").resolve())
    assert len(report) > 80
    assert f"report: {report}\n" in done.stdout
    assert any("Krippendorff's α" in line and "–" in line for line in done.stdout.splitlines())
