"""`melt review ...` and `melt preference ...`: thin wrappers over `melt.review`.

Everything heavy (pandas, the web framework) is imported inside the commands so `melt --help` stays fast.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Literal

import typer
from rich.table import Table

from melt import terminal

review_app = terminal.command_group(
    "Send doubtful annotations to human reviewers (Label Studio, Argilla) and import their decisions."
)
preference_app = terminal.command_group(
    "The MELT paper's blind A/B preference test: build the items, serve the web page, report."
)
_console = terminal.console()
_errors = terminal.console(stderr=True)


@contextmanager
def _os_errors() -> Iterator[None]:
    """An unwritable folder or a full disk is one line naming the file, like any other user error."""
    from melt.errors import MeltError

    try:
        yield
    except OSError as exc:
        raise MeltError(exc.strerror or str(exc), file=exc.filename) from exc


@review_app.command("export")
def review_export(
    context: typer.Context,
    run_dir: Path = typer.Argument(..., help="Run folder of `melt annotate` (annotations, run.json)."),
    out: Path = typer.Option(
        ..., "--out", "-o", help="Folder for the export (tasks or records, export.json)."
    ),
    corpus: Path | None = typer.Option(
        None, "--corpus", help="Corpus table the run annotated.", show_default="the one named in run.json"
    ),
    select: Literal["doubtful", "changed", "invalid", "all"] = typer.Option(
        "doubtful",
        "--select",
        help="doubtful: any reason; changed: the LLM's label differs from the human one; invalid: no usable "
        "answer; all: every utterance.",
    ),
    limit: int | None = typer.Option(
        None, "--limit", help="Export at most N utterances, most doubtful first.", show_default="all"
    ),
    format: Literal["labelstudio", "argilla"] = typer.Option(
        "labelstudio", "--format", help="The review tool the export is for."
    ),
    check: Path | None = typer.Option(
        None,
        "--check",
        help="Output folder (or rows.csv) of `melt acoustics check`: adds acoustic mismatches.",
        show_default="none",
    ),
    audio_root: Path | None = typer.Option(
        None,
        "--audio-root",
        help="Folder audio URLs are relative to; for Label Studio the LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT.",
        show_default="for Label Studio the folder above the audio files' common folder; for Argilla and "
        "--audio-prefix that common folder",
    ),
    audio_prefix: str | None = typer.Option(
        None,
        "--audio-prefix",
        help="Put before each relative audio path.",
        show_default="/data/local-files/?d= for Label Studio, http://localhost:8081/ for Argilla",
    ),
    min_agreement: float = typer.Option(
        0.7, "--min-agreement", help="Doubtful below this self-consistency agreement."
    ),
    min_confidence: float = typer.Option(
        0.5, "--min-confidence", help="Doubtful below this label confidence."
    ),
    min_ambiguity: float = typer.Option(
        0.5, "--min-ambiguity", help="Doubtful at or above this panel vote entropy."
    ),
    config: Path | None = typer.Option(
        None, "--config", help="YAML file of these settings; flags override it.", show_default="none"
    ),
) -> None:
    """Export the run's doubtful utterances (ranked, each with its reasons) for review in Label Studio or Argilla.

    Reasons: invalid answer, low self-consistency agreement, low confidence, disagreement with the human label,
    acoustic mismatch (with --check), high panel ambiguity (when the run has votes.parquet). See docs/review.md.
    """
    from melt.outputs import check_output_folder
    from melt.review.export import ExportSettings, export_review
    from melt.settings import load_settings

    check_output_folder(out)
    given = terminal.options_given(context)
    values = {
        "select": select,
        "limit": limit,
        "format": format,
        "audio_root": str(audio_root) if audio_root else None,
        "audio_prefix": audio_prefix,
        "min_agreement": min_agreement,
        "min_confidence": min_confidence,
        "min_ambiguity": min_ambiguity,
    }
    settings = load_settings(ExportSettings, config, **{k: v for k, v in values.items() if k in given})
    with _os_errors():
        result = export_review(run_dir, out, settings, corpus=corpus, check=check)
    chosen = result.selected
    _console.print(
        f"exported {len(chosen)} of {result.total} utterances ({settings.select}) for "
        f"{'Label Studio' if settings.format == 'labelstudio' else 'Argilla'} to {out}/"
    )
    counts: dict[str, int] = {}
    for codes in chosen["reason_codes"].fillna(""):
        for code in filter(None, codes.split(";")):
            counts[code] = counts.get(code, 0) + 1
    if counts:
        _console.print("reasons: " + ", ".join(f"{code} {n}" for code, n in counts.items()))
    if result.missing_audio:
        _console.print(f"[yellow]{result.missing_audio} exported utterances have no readable audio file[/]")
    if result.audio_root is not None:
        if settings.format == "labelstudio" and settings.prefix().startswith("/data/local-files"):
            storages = result.label_studio_storages()
            _console.print(
                "Label Studio: start it with LABEL_STUDIO_LOCAL_FILES_SERVING_ENABLED=true "
                f"LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT={result.audio_root}"
                + (
                    " and add a Local files source storage (no sync) with the absolute local path "
                    + " (one storage each), ".join(str(p) for p in storages)
                    if storages
                    else ""
                )
                + "; see docs/review.md"
            )
            if not storages:
                _console.print(
                    f"[yellow]audio lies directly in --audio-root {result.audio_root}: Label Studio refuses a "
                    "Local files storage equal to its document root, so it cannot serve these URLs; pass the "
                    "folder above as --audio-root[/]"
                )
        elif settings.format == "argilla" and settings.audio_prefix is None:
            _console.print(
                f"Argilla: serve the audio with `python3 -m http.server 8081 --directory {result.audio_root}`; "
                "load the folder with rg.Dataset.from_disk (docs/review.md)"
            )


@review_app.command("import")
def review_import(
    export: Path = typer.Argument(
        ..., help="Label Studio JSON export, or Argilla records.json (or the folder of Dataset.to_disk)."
    ),
    out: Path = typer.Option(
        ...,
        "--out",
        "-o",
        help="Decisions table (.parquet or .csv), one row per utterance; the per-reviewer rows go next to it "
        "as NAME.reviews.parquet/.csv.",
    ),
    labels: str | None = typer.Option(
        None,
        "--labels",
        help="Comma-separated label set to normalise labels with.",
        show_default="the seven MELT labels",
    ),
    allow_changed_audio: bool = typer.Option(
        False, "--allow-changed-audio", help="Import even where the audio's sha256 differs from the export's."
    ),
) -> None:
    """Import reviewers' labels: one row per utterance and reviewer, and the merged decision per utterance.

    Merge rule: a Label Studio ground-truth annotation decides; else the label most reviewers chose; a tie is left
    undecided (decision = tie). Skipped (Label Studio) and discarded (Argilla) reviews are counted, not voted. `melt compare DECISIONS` compares the decisions
    (column label) with the LLM's labels (llm_label); --candidate human_label with the human ones.
    """
    from melt.corpus.labels import MELT_LABEL_SET, LabelSet
    from melt.outputs import check_output_file
    from melt.review.decisions import import_review, write_import

    check_output_file(out)

    label_set = LabelSet.from_labels(labels.split(",")) if labels else MELT_LABEL_SET
    with _os_errors():
        result = import_review(export, labels=label_set, allow_changed_audio=allow_changed_audio)
        decisions_file, reviews_file = write_import(result, out, labels=label_set)
    reviews = result.reviews
    name = "Label Studio" if result.source == "labelstudio" else "Argilla"
    _console.print(
        f"{name}: {result.tasks} tasks, {len(reviews)} reviews by {reviews['reviewer'].nunique()} reviewers "
        f"({result.skipped} skipped"
        + (
            f", {result.superseded} replaced by the same reviewer's later annotation"
            if result.superseded
            else ""
        )
        + (f", {result.drafts} drafts not counted" if result.drafts else "")
        + ")"
    )
    if result.without_status:
        _console.print(
            f"[yellow]{result.without_status} Argilla responses carry no status (records.json of to_disk or "
            "records.to_json drops it): drafts and discarded answers cannot be told from submitted ones there and "
            "were counted as submitted; export with dataset.records.to_list(flatten=True) to keep them apart "
            "(docs/review.md)[/]"
        )
    table = Table(title="Decisions")
    table.add_column("decision")
    table.add_column("utterances", justify="right")
    for decision, count in result.decisions["decision"].value_counts().items():
        table.add_row(str(decision), str(count))
    _console.print(table)
    checks = result.decisions["audio_check"].value_counts()
    _console.print("audio check: " + ", ".join(f"{k} {v}" for k, v in checks.items()))
    _console.print(f"decisions: {decisions_file}\nreviews: {reviews_file}")


@preference_app.command("pairs")
def preference_pairs(
    context: typer.Context,
    table: Path = typer.Argument(..., help="Table with id, the two description columns and a media column."),
    a: str | None = typer.Option(
        None, "--a", help="Column of description A (e.g. llm_label).", show_default="the --config file's"
    ),
    b: str | None = typer.Option(
        None,
        "--b",
        help="Column of description B (e.g. label, the human label).",
        show_default="the --config file's",
    ),
    out: Path = typer.Option(..., "--out", "-o", help="Pairs table to write (.parquet or .csv)."),
    only_different: bool = typer.Option(
        False, "--only-different", help="Keep only items whose two descriptions differ."
    ),
    per_label: int | None = typer.Option(
        None, "--per-label", help="At most N items per group, drawn at random.", show_default="all"
    ),
    group: str | None = typer.Option(
        None, "--group", help="Column the report groups by.", show_default="the --b column"
    ),
    media: str = typer.Option("audio", "--media", help="Column of the audio or video file."),
    seed: int = typer.Option(0, "--seed", help="Seed of the draw and of the A/B orders."),
    config: Path | None = typer.Option(
        None, "--config", help="YAML file of these settings; flags override it.", show_default="none"
    ),
) -> None:
    """Build the items of the blind A/B test, with a balanced, seeded A/B order per item and participant."""
    from melt.outputs import check_output_file
    from melt.review.pairs import PairsSettings, identical_items, write_pairs
    from melt.settings import load_settings

    check_output_file(out)
    given = terminal.options_given(context)
    values = {
        "a": a,
        "b": b,
        "group": group,
        "media": media,
        "only_different": only_different,
        "per_label": per_label,
        "seed": seed,
    }
    settings = load_settings(PairsSettings, config, **{k: v for k, v in values.items() if k in given})
    with _os_errors():
        pairs = write_pairs(table, out, settings)
    counts = pairs["group"].value_counts().sort_index()
    _console.print(
        f"{len(pairs)} items (A = {settings.a}, B = {settings.b}) written to {out}; per group: "
        + ", ".join(f"{g} {n}" for g, n in counts.items())
    )
    same = identical_items(pairs)
    if same:
        _console.print(
            f"[yellow]{same} items show the same description twice: a participant can only guess there, which "
            "pulls every share of A towards 50 %; --only-different leaves them out[/]"
        )


@preference_app.command("serve")
def preference_serve(
    context: typer.Context,
    pairs: Path = typer.Argument(..., help="Pairs table from `melt preference pairs`."),
    db: Path = typer.Option(..., "--db", help="SQLite file of the answers (created, or resumed)."),
    host: str = typer.Option(
        "127.0.0.1", "--host", help="Address to listen on (0.0.0.0 opens it to the network)."
    ),
    port: int = typer.Option(8000, "--port", help="Port to listen on."),
    neither: bool = typer.Option(
        True, "--neither/--no-neither", help='Offer "neither" besides the two descriptions.'
    ),
    codes: Path | None = typer.Option(
        None,
        "--codes",
        help="File of allowed participant codes, one per line.",
        show_default="none: any code",
    ),
    title: str = typer.Option(
        "Which description fits the clip better?", "--title", help="Heading of the page."
    ),
    config: Path | None = typer.Option(
        None, "--config", help="YAML file of these settings; flags override it.", show_default="none"
    ),
) -> None:
    """Serve the blind A/B test: participants enter a code, play each clip and pick the better description.

    Resumable per participant; every answer is written to the SQLite file at once. Only the pairs table's media
    files are served. Stop with Ctrl-C.
    """
    from melt.review.server import ServeSettings, serve
    from melt.settings import load_settings

    given = terminal.options_given(context)
    values = {
        "host": host,
        "port": port,
        "allow_neither": neither,
        "codes": str(codes) if codes else None,
        "title": title,
    }
    flag_of = {"allow_neither": "neither"}
    settings = load_settings(
        ServeSettings, config, **{k: v for k, v in values.items() if flag_of.get(k, k) in given}
    )
    try:
        with _os_errors():
            serve(pairs, db, settings, announce=lambda line: _errors.print(line, soft_wrap=True))
    except KeyboardInterrupt:
        _errors.print("stopped; every answer given is in " + str(db))
        raise typer.Exit(130) from None


@preference_app.command("report")
def preference_report(
    results: Path = typer.Argument(..., help="SQLite file of `melt preference serve`."),
    out: Path = typer.Option(..., "--out", "-o", help="Folder for the figures, tables and report."),
) -> None:
    """Preference for A per group and overall (binomial 95 % CIs, exact test against 50 %), agreement, time."""
    from melt.outputs import check_output_folder
    from melt.review.preference import write_preference_report

    check_output_folder(out)
    with _os_errors():
        report = write_preference_report(results, out)
    table = Table(title=f"A = {report.source_a}, B = {report.source_b}")
    for column in ("group", "answers", "A", "B", "neither", "A share", "95 % CI", "p"):
        table.add_column(column, justify="left" if column == "group" else "right")
    for row in report.table.itertuples(index=False):
        share = "–" if row.share_a != row.share_a else f"{row.share_a:.1%}"
        interval = "–" if row.ci_low != row.ci_low else f"{row.ci_low:.1%}–{row.ci_high:.1%}"
        p_value = "–" if row.p_value != row.p_value else f"{row.p_value:.4f}"
        table.add_row(
            row.group, str(row.answers), str(row.a), str(row.b), str(row.neither), share, interval, p_value
        )
    _console.print(table)
    kappa, median = report.agreement["fleiss_kappa"], report.time["median_seconds"]
    _console.print(
        f"Fleiss' κ {'undefined' if kappa != kappa else f'{kappa:.3f}'} over "
        f"{report.agreement['items_with_two_or_more_answers']} items answered twice or more; "
        f"median {'undefined' if median != median else f'{median:.1f}'} s per item"
    )
    _console.print(f"report: {(out / 'report.html').resolve()}")
