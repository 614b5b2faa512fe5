"""`melt demo`: the pipeline on the bundled example corpus, end to end and offline.

It annotates the example with the bundled Gemma 3 270M model through llama.cpp (always: an API key in the
environment is not used, so the demo never costs money), compares the LLM's emotions with the human labels,
and writes one report.
"""

from __future__ import annotations

import json
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING

import typer

from melt import terminal

if TYPE_CHECKING:
    import pandas as pd

    from melt.annotate.run import RunResult


def example_corpus_path() -> Path:
    """The bundled example corpus: a dozen short sitcom-style lines written for melt, with human labels
    (`label`) and a second rater's labels (`second_rater`)."""
    return Path(str(resources.files("melt") / "data" / "example_corpus.csv"))


SECOND_RATER = (
    "The example corpus carries two human labels per line: 'label', the reference, and 'second_rater', a second "
    "person's label of the same line, written with the corpus. Comparing the two humans shows how far people "
    "agree on these lines at all; the LLM's agreement with the reference is best read against that."
)


def demo_command(
    out: Path = typer.Option(Path("out/demo"), "--out", "-o", help="Folder for the demo's outputs."),
    max_tokens: int = typer.Option(300, "--max-tokens", help="Reply length cap for the LLM."),
    threads: int | None = typer.Option(
        None,
        "--threads",
        help="CPU threads for llama.cpp.",
        show_default="half the cores, fewer on a busy machine",
    ),
) -> None:
    """Annotate the bundled example corpus offline with the bundled model, compare with human labels, report.

    The bundled 270M model proves the pipeline; its labels are not research-grade (melt annotate with
    --base-url or --model PATH.gguf gives real ones). Rerunning reuses the replies already in OUT/run.
    """
    from melt.analysis.cli import print_summary
    from melt.annotate import AnnotateConfig, run_annotation
    from melt.annotate.cli import summary_table
    from melt.corpus.loaders import load_table
    from melt.corpus.schema import write_table
    from melt.outputs import check_output_folder

    console = terminal.console()
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
    summaries = write_demo_report(corpus, result, out)
    for name in ("llm", "second_rater"):
        print_summary(summaries[name])
    console.print(f"report: {(out / 'report.html').resolve()}")


def write_demo_report(corpus: pd.DataFrame, result: RunResult, out: Path) -> dict:
    """summary.json (both comparisons and how they were made) and the demo's report.html in `out`."""
    from melt import provenance
    from melt.analysis.compare import annotation_run_section, compare_labels, comparison_sections
    from melt.analysis.report import Section, write_report
    from melt.corpus.schema import atomic_write

    run = json.loads((result.out_dir / "run.json").read_text(encoding="utf-8"))
    annotations = result.annotations.merge(
        corpus[["id", "second_rater"]].astype({"id": "string"}), on="id", how="left"
    )
    comparisons = {
        "llm": compare_labels(
            annotations["label"],
            annotations["emotion"],
            reference_name="human",
            candidate_name="LLM",
            ids=annotations["id"],
            texts=annotations["text"],
        ),
        "second_rater": compare_labels(
            annotations["label"],
            annotations["second_rater"],
            reference_name="human",
            candidate_name="second rater",
            ids=annotations["id"],
            texts=annotations["text"],
        ),
    }
    made = provenance.record(
        inputs={
            "example corpus": example_corpus_path(),
            "annotations": result.out_dir / "annotations.parquet",
        },
        settings=run["config"],
        api=provenance.api_call(write_demo_report, corpus, result, out),
        backend=result.backend,
        model=result.model,
        who_answers=run["provenance"].get("who_answers"),
        prompt={k: v for k, v in run["prompt"].items() if k != "text"},
    )
    summaries: dict = {}
    comparison_parts = []
    for name, comparison in comparisons.items():
        figures = out / name
        figures.mkdir(exist_ok=True)
        summaries[name] = comparison.summary()
        overview, details, _ = comparison_sections(comparison, summaries[name], figures)
        comparison_parts += [overview, details]
    summaries["provenance"] = made

    shown = annotations.rename(columns={"label": "human", "second_rater": "second rater", "emotion": "LLM"})
    table = shown[["id", "speaker", "text", "human", "second rater", "LLM", "status", "flags"]]
    voices = shown[["id", "loudness", "pitch", "rhythm_speed", "emotional_impact"]].rename(
        columns={"rhythm_speed": "rhythm speed", "emotional_impact": "emotional impact"}
    )
    text = run["prompt"]["text"]
    local = result.backend == "local"
    sections = [
        Section(
            title="What was done",
            paragraphs=[
                f"The {len(corpus)} lines of melt's bundled example corpus were annotated by {result.model} "
                f"({'llama.cpp, offline' if local else result.backend}) with the MELT paper's prompt, then the "
                "LLM's emotions were compared with the human labels."
                + (
                    " The bundled 270M model proves the pipeline; its labels are not research-grade. Point melt at "
                    "a real model with --base-url URL --model NAME, or --model PATH.gguf."
                    if local
                    else ""
                ),
                SECOND_RATER,
            ],
        ),
        Section(
            title="The annotations",
            paragraphs=[
                "One row per line: the two human labels and the LLM's emotion (empty when its answer was not "
                "usable: such rows are left out of the comparison, never guessed). The whole table, with the "
                "model's raw replies, is run/annotations.csv."
            ],
            tables={"Labels per utterance": table, "The LLM's description of each voice": voices},
            legend=annotation_run_section(result.annotations).legend,
        ),
        *comparison_parts,
        Section(
            title="The prompt",
            paragraphs=[
                "As sent for every line: the placeholders in braces are filled from the corpus row; after an "
                "unusable answer the model is asked once more with the repair message."
            ],
            preformatted={
                "system message": text["system"] or "(none)",
                "user message": text["user"],
                "repair message": text["repair"],
            },
        ),
    ]
    summary_text = json.dumps(summaries, indent=2, ensure_ascii=False, allow_nan=False)
    atomic_write(out / "summary.json", lambda tmp: tmp.write_text(summary_text, encoding="utf-8"))
    write_report(out, "melt demo: the example corpus annotated by an LLM", sections, provenance=made)
    return summaries
