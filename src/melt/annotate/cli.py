"""`melt annotate`: the CLI over `melt.annotate.run_annotation` and `estimate_run`."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import typer
from rich.console import Console
from rich.table import Table

EXIT_INCOMPLETE = 3


def annotate_command(
    corpus: Path = typer.Argument(
        ...,
        help="Corpus table (.parquet or .csv) with one utterance per row; or a run folder, to continue it with "
        "the corpus and settings its run.json records (flags given override them).",
    ),
    out: Path | None = typer.Option(
        None,
        "--out",
        "-o",
        help="Run folder: request store, annotations, run.json (required unless CORPUS is a run folder).",
    ),
    config_file: Path | None = typer.Option(
        None, "--config", help="YAML file of settings; flags override it."
    ),
    base_url: str | None = typer.Option(
        None,
        "--base-url",
        help="OpenAI-compatible server, e.g. http://localhost:8000/v1. Without it: OpenAI if the API key is "
        "set, else the bundled local model (offline).",
    ),
    model: str | None = typer.Option(
        None,
        "--model",
        help="Server model name (default gpt-4o-2024-08-06), or the path of a .gguf file to run locally.",
    ),
    n_ctx: int | None = typer.Option(
        None, "--n-ctx", help="Local models: fixed context size in tokens (default: grows to fit the prompt)."
    ),
    threads: int | None = typer.Option(
        None, "--threads", help="Local models: CPU threads (default: see docs/local.md)."
    ),
    api_key_env: str | None = typer.Option(
        None, "--api-key-env", help="Environment variable holding the API key (default OPENAI_API_KEY)."
    ),
    prompt: str | None = typer.Option(None, "--prompt", help="melt, dialogue, cot, or a template file."),
    schema: str | None = typer.Option(None, "--schema", help="Answer schema: paper or structured."),
    context_turns: int | None = typer.Option(None, "--context-turns", help="Preceding lines for 'dialogue'."),
    samples: int | None = typer.Option(None, "--samples", help="Answers per utterance (default 1)."),
    temperature: float | None = typer.Option(
        None, "--temperature", help="Sampling temperature (default 1.0)."
    ),
    seed: int | None = typer.Option(None, "--seed", help="Seed sent to the server (sample i gets seed + i)."),
    max_tokens: int | None = typer.Option(None, "--max-tokens", help="Reply length cap (default 800)."),
    concurrency: int | None = typer.Option(
        None,
        "--concurrency",
        "-j",
        help="Most requests in flight (default 8; halved on 429s and timeouts, then regained).",
    ),
    timeout: float | None = typer.Option(None, "--timeout", help="Seconds for one whole reply (default 60)."),
    max_retries: int | None = typer.Option(None, "--max-retries", help="Retries per request (default 6)."),
    backoff_max: float | None = typer.Option(
        None,
        "--backoff-max",
        help="Longest wait before a retry, in seconds (default 60); a server asking to wait longer stops the "
        "run (rerun later).",
    ),
    max_cost: float | None = typer.Option(
        None, "--max-cost", help="Stop before this invocation spends more USD."
    ),
    limit: int | None = typer.Option(None, "--limit", help="Annotate only the first N utterances."),
    no_logprobs: bool = typer.Option(False, "--no-logprobs", help="Do not ask for log probabilities."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Estimate tokens and cost; send nothing."),
    force_reuse: bool = typer.Option(
        False,
        "--force-reuse",
        help="Use OUT although its replies came from another server, model or prompt settings (replies are "
        "reused only where the request is the same).",
    ),
    batch: bool | None = typer.Option(
        None,
        "--batch/--live",
        help="Send the requests through OpenAI's Batch API: half the price, results within 24 h; the command "
        "submits and exits (status 3), rerun it to collect. --live: as live requests (the default).",
    ),
    wait: bool | None = typer.Option(
        None,
        "--wait",
        help="Wait for the batches in progress (checking every 10 s, then less often, up to 5 min) and finish "
        "in this invocation.",
    ),
    batch_repair: Literal["batch", "live"] | None = typer.Option(
        None,
        "--batch-repair",
        help="Re-asks of invalid batch answers: in the next batch (default), or live at once (live price).",
    ),
    cancel_batch: bool = typer.Option(
        False,
        "--cancel-batch",
        help="Cancel the run folder's batches in progress (with --wait: and collect what they completed) and "
        "exit; a rerun then sends what they did not answer.",
    ),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar."),
) -> None:
    """Annotate every utterance with an LLM: the MELT description, validated, resumable, at a known cost.

    Rerunning the same command resumes: replies already in OUT are never requested again.

    OUT belongs to one process at a time and to one configuration (server, model, prompt, request settings).

    With --batch the requests go through OpenAI's Batch API at half the price: rerun the command (or `melt annotate OUT`) to collect the results, or add --wait. Requests inside a batch in progress are never sent again.

    Exit status: 2 on an error; 3 when utterances are left pending (budget, a server asking to wait, batches in progress) or failed (rerun to finish); 130/143 after Ctrl-C/SIGTERM, with the replies in flight stored and the tables written.
    """
    from melt.annotate.config import AnnotateConfig
    from melt.annotate.run import RunInterrupted, cancel_batches, estimate_run, run_annotation

    table, out, recorded = resolve_run_folder(corpus, out, need_corpus=not cancel_batch)
    config = AnnotateConfig.load(
        config_file,
        recorded=recorded,
        base_url=base_url,
        model=model,
        n_ctx=n_ctx,
        threads=threads,
        api_key_env=api_key_env,
        prompt=prompt,
        schema_kind=schema,
        context_turns=context_turns,
        samples=samples,
        temperature=temperature,
        seed=seed,
        max_tokens=max_tokens,
        concurrency=concurrency,
        timeout=timeout,
        max_retries=max_retries,
        backoff_max=backoff_max,
        max_cost=max_cost,
        limit=limit,
        logprobs=False if no_logprobs else None,
        batch=batch,
        batch_wait=wait,
        batch_repair=batch_repair,
    )
    console = Console(highlight=False)
    if cancel_batch:
        report, records = cancel_batches(out, config, wait=config.batch_wait, progress=not quiet)
        console.print(batches_table(records, f"melt annotate --cancel-batch: {out}"))
        live = sum(r.live for r in records)
        console.print(
            f"cancelled {report.cancelled} batch(es)"
            + (f"; {live} still ending: rerun to collect what they completed" if live else "")
            + (f"; stored {report.replies} repl(ies) they completed" if report.replies else "")
        )
        return
    assert table is not None
    if dry_run:
        estimate = estimate_run(table, config, out, force_reuse=force_reuse)
        console.print(estimate_table(estimate))
        return
    interrupted = None
    try:
        result = run_annotation(table, config, out, progress=not quiet, force_reuse=force_reuse)
    except RunInterrupted as exc:
        result, interrupted = exc.result, exc
    console.print(summary_table(result))
    if result.batch is not None:
        print_batch_state(console, result, out)
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


def resolve_run_folder(
    corpus: Path, out: Path | None, *, need_corpus: bool
) -> tuple[Path | None, Path, dict | None]:
    """(corpus table, run folder, settings run.json recorded) of the command's arguments: CORPUS --out OUT, or
    a run folder alone (its run.json names the corpus and the settings)."""
    import json

    from melt.annotate.store import STORE_NAME
    from melt.errors import MeltError

    if not (corpus.is_dir() and ((corpus / STORE_NAME).is_file() or (corpus / "run.json").is_file())):
        if out is None:
            raise MeltError(
                "--out is required: the run folder to write (or give a run folder instead of CORPUS)"
            )
        return corpus, out, None
    if out is not None and out.resolve() != corpus.resolve():
        raise MeltError(
            f"{corpus} is a run folder: give it alone to continue it, or a corpus table with --out {out}"
        )
    recorded: dict | None = None
    run_json = corpus / "run.json"
    if run_json.is_file():
        try:
            recorded = json.loads(run_json.read_text(encoding="utf-8"))
        except (ValueError, OSError) as exc:
            raise MeltError(f"cannot read it ({exc})", file=run_json) from exc
    table = (recorded or {}).get("corpus")
    if table is None and need_corpus:
        raise MeltError(
            "this run folder has no run.json naming its corpus yet: give the corpus, "
            f"melt annotate CORPUS --out {corpus}",
            file=corpus,
        )
    settings = (recorded or {}).get("config")
    return (Path(table) if table else None), corpus, settings if isinstance(settings, dict) else None


def batches_table(records, title: str) -> Table:
    table = Table(title=title)
    for column in ("batch", "status", "requests", "done / failed", "created"):
        table.add_column(column, justify="right" if column in ("requests", "done / failed") else "left")
    for record in records:
        counts = record.counts or {}
        done = f"{counts.get('completed', 0)} / {counts.get('failed', 0)}" if counts else ""
        name = record.batch_id or f"(local {record.local_id[:12]})"
        status = record.status or record.state
        if record.state == "abandoned":
            status = "never created"
        table.add_row(name, status, str(record.requests), done, record.to_json()["created"])
    return table


def print_batch_state(console: Console, result, out: Path) -> None:
    """What became of the batches, and what to do next."""
    batch = result.batch
    this = batch.get("this_invocation") or {}
    if this.get("submitted_requests"):
        console.print(
            f"submitted {this['submitted_requests']} request(s) to the Batch API in {this['created']} batch(es)"
        )
    if this.get("replies"):
        console.print(
            f"collected {this['replies']} repl(ies) from {this['collected_batches']} batch(es), "
            f"{_money(this.get('cost_usd'))} at the Batch API price"
        )
    for note in this.get("notes") or ():
        console.print(f"note: {note}")
    if batch["in_progress"]:
        console.print(
            f"{batch['in_progress']} batch(es) in progress ({batch['requests_in_progress']} requests); results "
            f"come within 24 h: rerun this command, or `melt annotate {out}`, to collect them (add --wait to "
            f"wait), or `melt annotate {out} --cancel-batch` to cancel"
        )


def _money(value: float | None) -> str:
    return "unknown (no price for this model)" if value is None else f"${value:.4f}"


def estimate_table(estimate) -> Table:
    how = " through the Batch API" if estimate.batch else ""
    table = Table(title=f"dry run: {estimate.model}{how} (nothing sent)", show_header=False)
    table.add_column(justify="left")
    table.add_column(justify="right")
    table.add_row("utterances", str(estimate.utterances))
    table.add_row("requests (without re-asks)", str(estimate.requests))
    table.add_row("already in the store", str(estimate.cached))
    if estimate.in_batches:
        table.add_row("inside batches in progress (not sent again)", str(estimate.in_batches))
    table.add_row("prompt tokens (estimate)", f"{estimate.prompt_tokens:,}")
    table.add_row("completion tokens (estimate)", f"{estimate.completion_tokens:,}")
    table.add_row(
        "cost (estimate)" + (", Batch API price" if estimate.batch else ""), _money(estimate.cost_usd)
    )
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
    if stats.deferred:
        table.add_row("  left to batches (pending)", str(stats.deferred))
    table.add_row("cost this run" + (" (live requests)" if result.batch else ""), _money(stats.cost_usd))
    this = (result.batch or {}).get("this_invocation") or {}
    if this.get("replies"):
        table.add_row("cost of the batch replies collected", _money(this.get("cost_usd")))
    table.add_row("cost of the whole run folder", _money(result.totals["cost_usd"]))
    table.add_row("elapsed", f"{stats.elapsed_s:.1f} s")
    return table


__all__ = ["annotate_command", "batches_table", "estimate_table", "summary_table"]
