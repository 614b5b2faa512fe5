"""`melt demo`: the pipeline on the bundled example corpus, end to end, offline."""

from __future__ import annotations

from importlib import resources
from pathlib import Path

import typer
from rich.console import Console


def example_corpus_path() -> Path:
    """The bundled example corpus: a dozen short sitcom-style lines written for melt, with human labels
    (`label`) and a second rater's labels (`second_rater`)."""
    return Path(str(resources.files("melt") / "data" / "example_corpus.csv"))


def demo_command(
    out: Path = typer.Option(Path("out/demo"), "--out", "-o", help="Folder for the demo's outputs."),
) -> None:
    """Run the pipeline on the bundled example corpus and print where the report is."""
    from melt.analysis.cli import print_summary
    from melt.analysis.compare import compare_labels, write_comparison
    from melt.corpus.loaders import load_table
    from melt.corpus.schema import write_table

    console = Console()
    out.mkdir(parents=True, exist_ok=True)
    corpus = load_table(example_corpus_path())
    corpus_path = write_table(corpus, out / "corpus.parquet")
    console.print(f"example corpus: {len(corpus)} utterances -> {corpus_path}")
    comparison = compare_labels(
        corpus["label"].tolist(),
        corpus["second_rater"].tolist(),
        reference_name="label",
        candidate_name="second_rater",
    )
    summary = write_comparison(comparison, out / "compare", title="melt demo: human label vs second rater")
    print_summary(summary)
    console.print(f"report: {(out / 'compare' / 'report.html').resolve()}")
