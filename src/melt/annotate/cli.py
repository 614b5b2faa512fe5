"""`melt annotate`: the CLI over `melt.annotate.run_annotation` and `estimate_run`."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import typer
from rich.table import Table

from melt import terminal

EXIT_INCOMPLETE = 3
#: The server model asked for when none is given (`melt.annotate.config.DEFAULT_SERVER_MODEL`, not imported
#: here so that `melt --help` does not load pydantic; tests/test_cli_help.py checks they agree).
DEFAULT_SERVER_MODEL = "gpt-4o-2024-08-06"


def annotate_command(
    context: typer.Context,
    corpus: Path = typer.Argument(..., help="Corpus table (.parquet or .csv) with one utterance per row."),
    out: Path = typer.Option(..., "--out", "-o", help="Run folder: request store, annotations, run.json."),
    config_file: Path | None = typer.Option(
        None, "--config", help="YAML file of settings; flags override it.", show_default="none"
    ),
    base_url: str | None = typer.Option(
        None,
        "--base-url",
        help="OpenAI-compatible server, e.g. http://localhost:8000/v1. Without it: OpenAI (or $OPENAI_BASE_URL) "
        "if the API key is set, else the bundled local model (offline).",
        show_default="none",
    ),
    model: str | None = typer.Option(
        None,
        "--model",
        help="Server model name, or the path of a .gguf file to run locally.",
        show_default=f"{DEFAULT_SERVER_MODEL} on a server, the bundled model offline",
    ),
    n_ctx: int | None = typer.Option(
        None,
        "--n-ctx",
        help="Local models: fixed context size in tokens.",
        show_default="grows to fit the prompt",
    ),
    threads: int | None = typer.Option(
        None, "--threads", help="Local models: CPU threads.", show_default="see docs/local.md"
    ),
    api_key_env: str = typer.Option(
        "OPENAI_API_KEY", "--api-key-env", help="Environment variable holding the API key."
    ),
    prompt: str = typer.Option(
        "melt",
        "--prompt",
        metavar="[melt|dialogue|cot|FILE]",
        help="Built-in prompt template, or a template file (docs/prompts.md).",
    ),
    schema: Literal["paper", "structured"] = typer.Option(
        "paper", "--schema", help="Answer schema: the paper's nested JSON, or a flat structured one."
    ),
    context_turns: int = typer.Option(
        5, "--context-turns", help="Preceding lines shown by the 'dialogue' template."
    ),
    samples: int = typer.Option(1, "--samples", help="Answers per utterance."),
    temperature: float = typer.Option(1.0, "--temperature", help="Sampling temperature."),
    seed: int | None = typer.Option(
        None,
        "--seed",
        help="Seed sent to the server (sample i gets seed + i).",
        show_default="none: the server's own",
    ),
    max_tokens: int = typer.Option(800, "--max-tokens", help="Reply length cap."),
    concurrency: int = typer.Option(
        8, "--concurrency", "-j", help="Most requests in flight (halved on 429s and timeouts, then regained)."
    ),
    timeout: float = typer.Option(60.0, "--timeout", help="Seconds for one whole reply."),
    max_retries: int = typer.Option(6, "--max-retries", help="Retries per request."),
    backoff_max: float = typer.Option(
        60.0,
        "--backoff-max",
        help="Longest wait before a retry, in seconds; a server asking to wait longer stops the run (rerun "
        "later).",
    ),
    max_cost: float | None = typer.Option(
        None, "--max-cost", help="Stop before this invocation spends more USD.", show_default="no limit"
    ),
    limit: int | None = typer.Option(
        None, "--limit", help="Annotate only the first N utterances.", show_default="all"
    ),
    no_logprobs: bool = typer.Option(False, "--no-logprobs", help="Do not ask for log probabilities."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Estimate tokens and cost; send nothing."),
    force_reuse: bool = typer.Option(
        False,
        "--force-reuse",
        help="Use OUT although its replies came from another server, model or prompt settings (replies are "
        "reused only where the request is the same).",
    ),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar."),
) -> None:
    """Annotate every utterance with an LLM: the MELT description, validated, resumable, at a known cost.

    Rerunning the same command resumes: replies already in OUT are never requested again.

    OUT belongs to one process at a time and to one configuration (server, model, prompt, request settings).

    Exit status: 2 on an error; 3 when utterances are left pending (budget, a server asking to wait) or failed (rerun to finish); 130/143 after Ctrl-C/SIGTERM, with the replies in flight stored and the tables written.
    """
    from melt.annotate.config import AnnotateConfig
    from melt.annotate.run import RunInterrupted, estimate_run, run_annotation

    # Flags left at their defaults do not override the --config file.
    given = terminal.options_given(context)
    settings = {
        "base_url": base_url,
        "model": model,
        "n_ctx": n_ctx,
        "threads": threads,
        "api_key_env": api_key_env,
        "prompt": prompt,
        "schema_kind": schema,
        "context_turns": context_turns,
        "samples": samples,
        "temperature": temperature,
        "seed": seed,
        "max_tokens": max_tokens,
        "concurrency": concurrency,
        "timeout": timeout,
        "max_retries": max_retries,
        "backoff_max": backoff_max,
        "max_cost": max_cost,
        "limit": limit,
        "logprobs": False if no_logprobs else None,
    }
    flag_of = {"schema_kind": "schema", "logprobs": "no_logprobs"}
    config = AnnotateConfig.load(
        config_file, **{name: value for name, value in settings.items() if flag_of.get(name, name) in given}
    )
    console = terminal.console()
    if dry_run:
        estimate = estimate_run(corpus, config, out, force_reuse=force_reuse)
        console.print(estimate_table(estimate))
        return
    interrupted = None
    try:
        result = run_annotation(corpus, config, out, progress=not quiet, force_reuse=force_reuse)
    except RunInterrupted as exc:
        result, interrupted = exc.result, exc
    console.print(summary_table(result))
    counts = result.annotations["status"].value_counts()
    if result.stats.stop_reason:
        console.print(
            f"stopped: {result.stats.stop_reason}; {counts.get('pending', 0)} utterance(s) pending; rerun to "
            "continue"
        )
    if result.stats.stopped_by_budget:
        console.print(
            f"stopped by --max-cost ${config.max_cost:g}: {counts.get('pending', 0)} utterance(s) pending; "
            "rerun to continue"
        )
    if counts.get("failed", 0):
        console.print(
            f"{counts['failed']} utterance(s) failed after retries (see 'error'); rerun to retry them"
        )
    console.print(f"wrote {out / 'annotations.parquet'}, {out / 'annotations.csv'} and {out / 'run.json'}")
    if interrupted is not None:
        raise typer.Exit(128 + interrupted.signal)
    if not result.complete:
        raise typer.Exit(EXIT_INCOMPLETE)


def _money(value: float | None) -> str:
    return "unknown (no price for this model)" if value is None else f"${value:.4f}"


def estimate_table(estimate) -> Table:
    table = Table(title=f"dry run: {estimate.model} (nothing sent)", show_header=False)
    table.add_column(justify="left")
    table.add_column(justify="right")
    table.add_row("utterances", str(estimate.utterances))
    table.add_row("requests (without re-asks)", str(estimate.requests))
    table.add_row("already in the store", str(estimate.cached))
    table.add_row("prompt tokens (estimate)", f"{estimate.prompt_tokens:,}")
    table.add_row("completion tokens (estimate)", f"{estimate.completion_tokens:,}")
    table.add_row("cost (estimate)", _money(estimate.cost_usd))
    table.add_row("cost if every reply hits max_tokens", _money(estimate.cost_usd_max))
    return table


def summary_table(result) -> Table:
    stats = result.stats
    counts = result.annotations["status"].value_counts()
    table = Table(title=f"melt annotate: {result.backend} {result.model}", show_header=False)
    table.add_column(justify="left")
    table.add_column(justify="right")
    table.add_row("utterances", str(len(result.annotations)))
    for status in ("ok", "invalid", "failed", "pending"):
        if counts.get(status, 0):
            table.add_row(f"  {status}", str(counts[status]))
    flags = result.annotations["flags"].dropna()
    flagged = sorted({f.split(":")[0] for value in flags for f in str(value).split(";") if f})
    for flag in flagged:
        n = int(
            flags.map(
                lambda value, flag=flag: flag in str(value).split(";") or f"{flag}:" in str(value)
            ).sum()
        )
        table.add_row(f"  flagged {flag}", str(n))
    table.add_row("requests (answers + re-asks)", str(stats.requests))
    table.add_row("  from the store (not sent)", str(stats.cached))
    table.add_row("  completed by the server", str(stats.completed))
    table.add_row("  re-asks after an invalid answer", str(stats.repairs))
    table.add_row("  given up after retries", str(stats.failed))
    table.add_row("HTTP attempts", str(stats.sent))
    retries = ", ".join(f"{kind} {n}" for kind, n in sorted(stats.retries.items())) or "none"
    table.add_row("retries", f"{sum(stats.retries.values())} ({retries})")
    if stats.lowest_concurrency < stats.concurrency:
        table.add_row("requests in flight, lowest limit", str(stats.lowest_concurrency))
    if stats.format_fallbacks:
        table.add_row("answer format fallbacks", "; ".join(stats.format_fallbacks))
    table.add_row("answer format", result.response_format)
    table.add_row(
        "tokens this run (prompt / completion)", f"{stats.prompt_tokens:,} / {stats.completion_tokens:,}"
    )
    table.add_row("cost this run", _money(stats.cost_usd))
    table.add_row("cost of the whole run folder", _money(result.totals["cost_usd"]))
    table.add_row("elapsed", f"{stats.elapsed_s:.1f} s")
    return table


__all__ = ["annotate_command", "estimate_table", "summary_table"]
