"""`melt compare`."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.table import Table

from melt import terminal
from melt.errors import MeltError

#: Where `melt compare` finds the rows' ids and texts, in order of preference: the utterance table's columns,
#: then a published MELD/MELT file's.
ID_COLUMNS = ("id", "filename")
TEXT_COLUMNS = ("text", "Utterance")


def compare_command(
    input: Path = typer.Argument(
        ...,
        help="A corpus table (Parquet/CSV), any CSV with two label columns (e.g. a published MELT file), "
        "a run directory of `melt annotate` (joined to its corpus table), or the decisions of "
        "`melt review import` (label = the reviewers' decision, llm_label, human_label).",
    ),
    out: Path = typer.Option(
        ..., "--out", "-o", help="Folder for summary.json, disagreements.csv, the figures and the report."
    ),
    reference: str | None = typer.Option(
        None,
        "--reference",
        "-r",
        help="Reference label column, taken as the truth for precision, recall and F1.",
        show_default="label, the human label",
    ),
    candidate: str | None = typer.Option(
        None,
        "--candidate",
        "-c",
        help="Candidate label column.",
        show_default="emotion for a run directory, else llm_label",
    ),
    labels: str | None = typer.Option(
        None, "--labels", help="Comma-separated label set.", show_default="the seven MELT labels"
    ),
    bootstrap: int = typer.Option(
        1000, "--bootstrap", min=0, help="Bootstrap resamples of the 95 % confidence intervals (0: none)."
    ),
    seed: int = typer.Option(0, "--seed", help="Seed of the bootstrap resamples."),
) -> None:
    """Compare two label sources: counts, change rate, transitions, Cohen's κ and Krippendorff's α, accuracy,
    UAR, macro-F1 and per-class precision, recall and F1, with bootstrap confidence intervals, the list of
    disagreements and a report.

    Ids and texts of the disagreements come from the columns id (else filename) and text (else Utterance), when
    the input has them.

    Example: melt compare ../shared/data/melt/meld_train.csv --reference Emotion --candidate llm_label --out cmp/
    """
    from melt.analysis.compare import annotation_run_section, compare_labels, read_labelled, write_comparison
    from melt.corpus.labels import MELT_LABEL_SET
    from melt.outputs import check_output_folder

    check_output_folder(out)
    label_set = parse_labels(labels) if labels else MELT_LABEL_SET
    table, inputs = read_labelled(input)
    is_run = input.is_dir()
    reference = reference or "label"
    candidate = candidate or ("emotion" if is_run else "llm_label")
    for column in (reference, candidate):
        if column not in table.columns:
            raise MeltError(
                f"no label column {column!r}; found {list(table.columns)}", file=input, column=column
            )
    id_column = next((c for c in ID_COLUMNS if c in table.columns), None)
    text_column = next((c for c in TEXT_COLUMNS if c in table.columns), None)
    comparison = compare_labels(
        table[reference].tolist(),
        table[candidate].tolist(),
        reference_name=reference,
        candidate_name=candidate,
        labels=label_set,
        ids=table[id_column].tolist() if id_column else None,
        texts=table[text_column].tolist() if text_column else None,
    )
    if comparison.n == 0:
        raise MeltError(
            f"no utterance has both a {reference!r} and a {candidate!r} label ({_left_out(comparison)}): "
            "nothing to compare",
            file=input,
        )
    extra = [annotation_run_section(table)] if is_run and "status" in table.columns else []
    summary = write_comparison(
        comparison,
        out,
        title=f"Label comparison: {input.name}",
        resamples=bootstrap,
        seed=seed,
        inputs=inputs,
        extra_sections=extra,
    )
    print_summary(summary)
    terminal.console().print(f"report: {(out / 'report.html').resolve()}")


def _left_out(comparison) -> str:
    missing = comparison.missing_by_source
    return (
        f"{comparison.missing} left out: {missing['reference']} without {comparison.reference_name!r}, "
        f"{missing['candidate']} without {comparison.candidate_name!r}, {missing['both']} without either"
    )


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
    console = terminal.console()
    reference, candidate = f"{summary['reference']} (reference)", f"{summary['candidate']} (candidate)"
    table = Table(title=f"{reference} vs {candidate}")
    table.add_column("class")
    table.add_column(reference, justify="right")
    table.add_column(candidate, justify="right")
    for label, count in summary["counts"]["reference"].items():
        table.add_row(label, str(count), str(summary["counts"]["candidate"].get(label, 0)))
    console.print(table)
    intervals = summary.get("intervals") or {}
    statistics = Table(title="Agreement (95 % bootstrap CI)" if intervals.get("resamples") else "Agreement")
    for column, justify in (("statistic", "left"), ("value", "right"), ("95 % CI", "right")):
        statistics.add_column(column, justify=justify)
    statistics.add_row("utterances compared", f"{summary['n']:,}", "")
    statistics.add_row("changed", f"{summary['changed']:,} ({_share(summary['change_rate'])})", "")
    for name, shown in (
        ("change_rate", "change rate"),
        ("cohen_kappa", "Cohen's κ"),
        ("krippendorff_alpha", "Krippendorff's α"),
        ("uar", "UAR"),
        ("macro_f1", "macro-F1"),
    ):
        statistics.add_row(shown, _number(summary[name]), _interval(intervals.get(name)))
    statistics.add_row("accuracy", _number(summary["accuracy"]), "")
    console.print(statistics)
    missing = summary["missing_by_source"]
    if summary["missing"]:
        console.print(
            f"left out: {missing['reference']} without a {summary['reference']} label (reference), "
            f"{missing['candidate']} without a {summary['candidate']} label (candidate), {missing['both']} "
            "without either"
        )
    if summary["off_label"]:
        console.print(
            "labels outside the set: " + ", ".join(f"{k} {v}" for k, v in summary["off_label"].items())
        )


def _number(value: float | None) -> str:
    return "undefined" if value is None else f"{value:.4f}"


def _interval(interval: dict | None) -> str:
    return "" if not interval else f"{interval['low']:.4f} – {interval['high']:.4f}"


def _share(value: float | None) -> str:
    return "undefined" if value is None else f"{value:.2%}"
