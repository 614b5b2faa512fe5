"""`melt annotate`: the CLI over `melt.annotate.run_annotation` and `estimate_run`."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import typer
from rich.console import Console
from rich.table import Table

from melt import terminal

EXIT_INCOMPLETE = 3
#: The server model asked for when none is given (`melt.annotate.config.DEFAULT_SERVER_MODEL`, not imported
#: here so that `melt --help` does not load pydantic; tests/test_cli_help.py checks they agree).
DEFAULT_SERVER_MODEL = "gpt-4o-2024-08-06"


def annotate_command(
    context: typer.Context,
    corpus: Path = typer.Argument(
        ...,
        help="Corpus table (.parquet or .csv) with one utterance per row; or a run folder, to continue it with "
        "the corpus and settings its run.json records (flags given override them).",
    ),
    out: Path | None = typer.Option(
        None,
        "--out",
        "-o",
        help="Run folder: request store, annotations, run.json.",
        show_default="required, unless CORPUS is a run folder",
    ),
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
    batch: bool = typer.Option(
        False,
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
    batch_repair: Literal["batch", "live"] = typer.Option(
        "batch",
        "--batch-repair",
        help="Re-asks of invalid batch answers: in the next batch, or live at once (live price).",
    ),
    cancel_batch: bool = typer.Option(
        False,
        "--cancel-batch",
        help="Cancel the run folder's batches in progress (with --wait: and collect what they completed) and "
        "exit; a rerun then sends what they did not answer.",
    ),
    panel: str | None = typer.Option(
        None,
        "--panel",
        show_default="none",
        metavar="[scaling-ambiguity|FILE.yaml]",
        help="Ask a panel of simulated annotators for one label each, and write their votes to "
        "OUT/votes.parquet. scaling-ambiguity: 5 focus instructions and 5 temperature bands by annotator "
        "(Scaling Ambiguity), 8 annotators; or a panel file with its own personas, temperatures, weights and N.",
    ),
    annotators: int | None = typer.Option(
        None, "--annotators", help="Panel size N.", show_default="the panel's own: 8 for scaling-ambiguity"
    ),
    audio: bool = typer.Option(
        False,
        "--audio",
        help="Send each utterance's recording (corpus column 'audio') with its transcript, as 16 kHz mono WAV "
        "in an input_audio part; needs a server with an audio-language model.",
    ),
    max_audio_seconds: float = typer.Option(
        30.0, "--max-audio-seconds", help="Longest audio sent in one piece, in seconds."
    ),
    long_audio: Literal["trim", "split"] = typer.Option(
        "trim",
        "--long-audio",
        help="Audio longer than --max-audio-seconds: trim (send its start) or split (consecutive "
        "pieces, all in the one message, at most 10).",
    ),
    allow_ignored_audio: bool = typer.Option(
        False,
        "--allow-ignored-audio",
        help="Go on when the audio probe finds the server ignoring the audio (default: stop, exit 2); the labels "
        "then come from the text alone.",
    ),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar."),
) -> None:
    """Annotate every utterance with an LLM: the MELT description, validated, resumable, at a known cost.

    Rerunning the same command resumes: replies already in OUT are never requested again.

    OUT belongs to one process at a time and to one configuration (server, model, prompt, request settings).

    With --batch the requests go through OpenAI's Batch API at half the price: rerun the command (or `melt annotate OUT`) to collect the results, or add --wait. Requests inside a batch in progress are never sent again.

    With --panel, every utterance is asked of N simulated annotators; OUT/votes.parquet holds their votes (for melt ambiguity) and the tables their distribution, majority label and agreement (Fleiss' κ of the panel in run.json and the summary). With --audio, a probe (a short clip, then the same request without it) first checks that the server hears audio.

    Exit status: 2 on an error; 3 when utterances are left pending (budget, a server asking to wait, batches in progress) or failed (rerun to finish); 130/143 after Ctrl-C/SIGTERM, with the replies in flight stored and the tables written.
    """
    from melt.annotate.config import AnnotateConfig
    from melt.annotate.run import RunInterrupted, cancel_batches, estimate_run, run_annotation
    from melt.errors import MeltError

    given = terminal.options_given(context)
    if panel is not None:
        # What a panel decides itself: these flags would be silently ignored.
        for flag in ("temperature", "samples", "prompt", "schema"):
            if flag in given:
                raise MeltError(
                    f"--{flag} does not apply to a panel: each annotator has its own temperature and answers once, "
                    "with the panel's template and one label (set them in a panel file)"
                )

    table, out, recorded = resolve_run_folder(corpus, out, need_corpus=not cancel_batch)
    # Flags left at their defaults override neither the --config file nor what a run folder recorded.
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
        "batch": batch,
        "batch_wait": wait,
        "batch_repair": batch_repair,
        "panel": panel,
        "annotators": annotators,
        "audio": audio or None,
        "max_audio_seconds": max_audio_seconds,
        "long_audio": long_audio,
        "allow_ignored_audio": allow_ignored_audio or None,
    }
    flag_of = {"schema_kind": "schema", "logprobs": "no_logprobs", "batch_wait": "wait"}
    config = AnnotateConfig.load(
        config_file,
        recorded=recorded,
        **{name: value for name, value in settings.items() if flag_of.get(name, name) in given},
    )
    console = terminal.console()
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
    if result.panel is not None:
        without = result.panel["utterances_without_valid_votes"]
        if without:
            examples = ", ".join(result.panel["utterances_without_valid_votes_examples"])
            console.print(
                f"{without} utterance(s) got no valid vote from any annotator (status invalid; e.g. {examples}): "
                "they have no panel distribution"
            )
        written = f"{out / 'annotations.parquet'}, {out / 'annotations.csv'}, {out / 'votes.parquet'}"
    else:
        written = f"{out / 'annotations.parquet'}, {out / 'annotations.csv'}"
    console.print(f"wrote {written} and {out / 'run.json'}")
    if interrupted is not None:
        raise typer.Exit(128 + interrupted.signal)
    if not result.complete:
        raise typer.Exit(EXIT_INCOMPLETE)


def resolve_run_folder(
    corpus: Path, out: Path | None, *, need_corpus: bool
) -> tuple[Path | None, Path, dict | None]:
    """(corpus table, run folder, settings run.json recorded) of the command's arguments: CORPUS --out OUT, or
    a run folder alone (its run.json names the corpus and the settings)."""
    from melt.annotate.run import run_record
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
    recorded = run_record(corpus)
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


def _money(value: float | None, estimate=None) -> str:
    if value is not None:
        return f"${value:.4f}"
    if estimate is not None and estimate.audio_tokens is None:
        return "unknown (the audio's tokens are unknown)"
    return "unknown (no price for this model)"


def estimate_table(estimate) -> Table:
    how = " through the Batch API" if estimate.batch else ""
    table = Table(title=f"dry run: {estimate.model}{how} (nothing sent)", show_header=False)
    table.add_column(justify="left")
    table.add_column(justify="right")
    table.add_row("utterances", str(estimate.utterances))
    if estimate.per_utterance > 1:
        table.add_row("requests per utterance", str(estimate.per_utterance))
    table.add_row("requests (without re-asks)", str(estimate.requests))
    table.add_row("already in the store", str(estimate.cached))
    if estimate.in_batches:
        table.add_row("inside batches in progress (not sent again)", str(estimate.in_batches))
    table.add_row("prompt tokens (estimate)", f"{estimate.prompt_tokens:,}")
    if estimate.audio_seconds:
        table.add_row("  audio sent (seconds, all requests)", f"{estimate.audio_seconds:,.1f}")
        if estimate.audio_tokens is None:
            table.add_row(
                "  audio tokens",
                f"unknown: no audio token rate for {estimate.model}; set audio_token_rates: "
                f"{{{estimate.model}: TOKENS_PER_SECOND}} in the config",
            )
        else:
            rate = estimate.audio_rate
            table.add_row(
                "  audio tokens (estimate)",
                f"{estimate.audio_tokens:,} at {rate.tokens_per_second:g}/s ({rate.source})" if rate else "0",
            )
    table.add_row("completion tokens (estimate)", f"{estimate.completion_tokens:,}")
    table.add_row(
        "cost (estimate)" + (", Batch API price" if estimate.batch else ""),
        _money(estimate.cost_usd, estimate),
    )
    table.add_row("cost if every reply hits max_tokens", _money(estimate.cost_usd_max, estimate))
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
    if result.panel is not None:
        _panel_rows(table, result.panel)
    if result.audio is not None:
        _audio_rows(table, result.audio)
    return table


def _panel_rows(table: Table, panel: dict) -> None:
    table.add_section()
    temperatures = sorted(m["temperature"] for m in panel["members"])
    table.add_row(
        f"panel {panel['name']}",
        f"{panel['annotators']} annotators, temperatures {temperatures[0]:g} to {temperatures[-1]:g}",
    )
    votes = ", ".join(f"{status} {n}" for status, n in panel["votes"].items())
    table.add_row("  votes", votes)
    table.add_row("  utterances without a valid vote", str(panel["utterances_without_valid_votes"]))
    if panel["off_set_labels_dropped"]:
        dropped = ", ".join(f"{label} {n}" for label, n in panel["off_set_labels_dropped"].items())
        table.add_row("  labels outside the set (dropped)", dropped)
    kappa = panel["fleiss_kappa"]
    shown = (
        "undefined (fewer than two votes per utterance, or one label only)"
        if kappa is None
        else f"{kappa:.3f}"
    )
    table.add_row("  Fleiss' κ of the panel", f"{shown} over {panel['fleiss_kappa_utterances']} utterance(s)")


def _audio_rows(table: Table, audio: dict) -> None:
    table.add_section()
    table.add_row("audio: utterances", str(audio["utterances"]))
    table.add_row("  seconds sent per request set", f"{audio['seconds_sent_per_request']:,.1f}")
    if audio["trimmed"] or audio["split"]:
        table.add_row(
            "  longer than --max-audio-seconds",
            f"trimmed {audio['trimmed']}, split {audio['split']}, {audio['seconds_left_out']:,.1f} s left out",
        )
    table.add_row("  server check", str(audio["check"].get("status")))


__all__ = ["annotate_command", "batches_table", "estimate_table", "summary_table"]
