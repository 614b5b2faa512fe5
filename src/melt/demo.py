"""`melt demo`: the pipeline on the bundled example corpus, end to end and offline.

It annotates the example with the bundled Gemma 3 270M model through llama.cpp (always: an API key in the
environment is not used, so the demo never costs money), compares the LLM's emotions with the human labels,
and writes one report.
"""

from __future__ import annotations

import json
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
    max_tokens: int = typer.Option(300, "--max-tokens", help="Reply length cap for the LLM."),
    threads: int | None = typer.Option(
        None,
        "--threads",
        help="CPU threads for llama.cpp (default: half the cores, fewer on a busy machine).",
    ),
) -> None:
    """Annotate the bundled example corpus offline with the bundled model, compare with human labels, report.

    The bundled 270M model proves the pipeline; its labels are not research-grade (melt annotate with
    --base-url or --model PATH.gguf gives real ones). Rerunning reuses the replies already in OUT/run.
    """
    from melt.analysis.cli import print_summary
    from melt.analysis.compare import compare_labels, comparison_section
    from melt.analysis.report import Section, write_report
    from melt.annotate import AnnotateConfig, run_annotation
    from melt.annotate.cli import summary_table
    from melt.corpus.loaders import load_table
    from melt.corpus.schema import atomic_write, write_table
    from melt.outputs import check_output_folder

    console = Console(highlight=False)
    check_output_folder(out)
    corpus = load_table(example_corpus_path())
    corpus_path = write_table(corpus, out / "corpus.parquet")
    console.print(f"example corpus: {len(corpus)} utterances -> {corpus_path}")

    from melt.llm.local import LocalBackend

    config = AnnotateConfig(max_tokens=max_tokens, threads=threads)
    console.print(
        "annotating with the bundled Gemma 3 270M model (llama.cpp, offline): it proves the pipeline, "
        "but its labels are not research-grade"
    )
    backend = LocalBackend(n_threads=threads)
    result = run_annotation(corpus_path, config, out / "run", backend=backend, progress=True)
    console.print(summary_table(result))

    annotations = corpus.merge(result.annotations, on="id", how="left")
    comparisons = [
        compare_labels(
            annotations["label"], annotations["emotion"], reference_name="human", candidate_name="LLM"
        ),
        compare_labels(
            annotations["label"],
            annotations["second_rater"],
            reference_name="human",
            candidate_name="second rater",
        ),
    ]
    sections = []
    summaries = {}
    for comparison, folder in zip(comparisons, ("llm", "second_rater"), strict=True):
        figures_dir = out / folder
        figures_dir.mkdir(exist_ok=True)
        summary = comparison.summary()
        summaries[folder] = summary
        sections.append(comparison_section(comparison, summary, figures_dir))
        print_summary(summary)
    shown = [
        "id",
        "speaker",
        "text",
        "label",
        "status",
        "emotion",
        "loudness",
        "pitch",
        "rhythm_speed",
        "flags",
    ]
    sections.append(
        Section(
            title="The annotations",
            paragraphs=[
                f"Backend {result.backend}, model {result.model}. "
                + (
                    "The bundled 270M model proves the pipeline; its labels are not research-grade. Point melt at a "
                    "real model with --base-url URL --model NAME, or --model PATH.gguf."
                    if result.backend == "local"
                    else ""
                )
            ],
            tables={"Human label and the LLM's answer per utterance": annotations[shown]},
        )
    )
    atomic_write(
        out / "summary.json", lambda tmp: tmp.write_text(json.dumps(summaries, indent=2), encoding="utf-8")
    )
    _, html = write_report(out, "melt demo: the example corpus annotated by an LLM", sections)
    console.print(f"report: {html.resolve()}")
