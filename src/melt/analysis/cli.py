"""`melt compare`."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

from melt.errors import MeltError


def compare_command(
    input: Path = typer.Argument(
        ...,
        help="A corpus table (Parquet/CSV), any CSV with two label columns (e.g. a published MELT file), "
        "a run directory of `melt annotate` (joined to its corpus table), or the decisions of "
        "`melt review import` (label = the reviewers' decision, llm_label, human_label).",
    ),
    out: Path = typer.Option(..., "--out", "-o", help="Folder for summary.json, the figures and the report."),
    reference: str | None = typer.Option(
        None, "--reference", "-r", help="Reference label column. Default: 'label' (the human label)."
    ),
    candidate: str | None = typer.Option(
        None,
        "--candidate",
        "-c",
        help="Candidate label column. Default: 'emotion' for a run directory, else 'llm_label'.",
    ),
    labels: str | None = typer.Option(
        None, "--labels", help="Comma-separated label set. Default: the seven MELT labels."
    ),
) -> None:
    """Compare two label sources: counts, change rate, transitions, Cohen's κ and Krippendorff's α, with a report.

    Example: melt compare ../shared/data/melt/meld_train.csv --reference Emotion --candidate llm_label --out cmp/
    """
    from melt.analysis.compare import compare_labels, load_labelled, write_comparison
    from melt.corpus.labels import MELT_LABEL_SET
    from melt.outputs import check_output_folder

    check_output_folder(out)
    label_set = parse_labels(labels) if labels else MELT_LABEL_SET
    table, default_reference, default_candidate = load_labelled(input)
    reference = reference or default_reference
    candidate = candidate or default_candidate
    for column in (reference, candidate):
        if column not in table.columns:
            raise MeltError(
                f"no label column {column!r}; found {list(table.columns)}", file=input, column=column
            )
    comparison = compare_labels(
        table[reference].tolist(),
        table[candidate].tolist(),
        reference_name=reference,
        candidate_name=candidate,
        labels=label_set,
    )
    if comparison.n == 0:
        raise MeltError(
            f"no utterance has both a {reference!r} and a {candidate!r} label ({comparison.missing} left out "
            "for a missing label): nothing to compare",
            file=input,
        )
    summary = write_comparison(comparison, out, title=f"Label comparison: {input.name}")
    print_summary(summary)
    Console().print(f"report: {(out / 'report.html').resolve()}")


def parse_labels(text: str):
    """The label set of `--labels a,b,c`; a `MeltError` for fewer than two labels or a repeated one."""
    from pydantic import ValidationError

    from melt.corpus.labels import LabelSet

    try:
        return LabelSet.from_labels([label for label in text.split(",")])
    except ValidationError as exc:
        message = exc.errors()[0]["msg"].removeprefix("Value error, ")
        raise MeltError(f"--labels {text!r}: {message}") from exc


def print_summary(summary: dict) -> None:
    console = Console()
    table = Table(title=f"{summary['reference']} vs {summary['candidate']}")
    table.add_column("label")
    table.add_column(summary["reference"], justify="right")
    table.add_column(summary["candidate"], justify="right")
    for label, count in summary["counts"]["reference"].items():
        table.add_row(label, str(count), str(summary["counts"]["candidate"].get(label, 0)))
    console.print(table)
    console.print(
        f"n = {summary['n']}, changed = {summary['changed']} ({_share(summary['change_rate'])}), "
        f"κ = {_number(summary['cohen_kappa'])}, α = {_number(summary['krippendorff_alpha'])}"
        + (f", left out (missing label) = {summary['missing']}" if summary["missing"] else "")
    )
    if summary["off_label"]:
        console.print(
            "labels outside the set: " + ", ".join(f"{k} {v}" for k, v in summary["off_label"].items())
        )


def _number(value: float | None) -> str:
    return "undefined" if value is None else f"{value:.4f}"


def _share(value: float | None) -> str:
    return "undefined" if value is None else f"{value:.2%}"
