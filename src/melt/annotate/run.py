"""`run_annotation`: a corpus table in, `annotations.parquet`/`.csv` and `run.json` out (and `votes.parquet`
for a panel); `estimate_run` for --dry-run. The Python API behind `melt annotate`."""

from __future__ import annotations

import asyncio
import json
import math
import signal
import sys
import threading
import time
from collections import Counter
from collections.abc import Coroutine
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pandas as pd

from melt import __version__
from melt.annotate.audio import AudioCheck, attach_audio, audio_plan, probe_clip
from melt.annotate.batch import (
    BatchRecord,
    BatchReport,
    BatchSession,
    annotate_in_batches,
    batch_records,
    batch_summary,
    live_request_keys,
    require_openai,
)
from melt.annotate.config import RESPONSE_FORMATS, AnnotateConfig
from melt.annotate.engine import (
    ANSWER_FIELDS,
    CHARS_PER_TOKEN,
    Annotator,
    RunStats,
    SampleOutcome,
    Utterance,
    aggregate,
    backend_identity,
    chat_request,
    request_variants,
    stored_key,
    variant_messages,
)
from melt.annotate.folder import (
    IDENTITY_META,
    RunLock,
    check_folder,
    claim_folder,
    folder_identity,
    remove_stale_temporaries,
)
from melt.annotate.panel import off_set_labels, panel_of, panel_prompt, panel_report, votes_table
from melt.annotate.store import STORE_NAME, RequestStore
from melt.corpus.schema import conform, read_any, require_columns
from melt.errors import MeltError
from melt.llm import choose_backend, make_backend
from melt.llm.base import Backend, audio_seconds, text_chars
from melt.llm.openai import OpenAIBackend
from melt.llm.pricing import AudioRate, Price, audio_rate_of, price_of
from melt.outputs import check_output_file, check_output_folder, write_together
from melt.prompts import PromptConfig, build_messages, response_format

OUTPUT_COLUMNS: tuple[str, ...] = (
    "id",
    "status",
    *ANSWER_FIELDS,
    "flags",
    "confidence",
    "distribution",
    "samples",
    "agreement",
    "error",
    "raw_reply",
    "prompt_tokens",
    "completion_tokens",
    "cost_usd",
)
_DTYPES = {
    "samples": "Int64",
    "prompt_tokens": "Int64",
    "completion_tokens": "Int64",
    "confidence": "Float64",
    "agreement": "Float64",
    "cost_usd": "Float64",
}
#: Corpus columns written next to each answer when the corpus has them, so that annotations.csv stands alone
#: (the human `label` beside the LLM's `emotion`); `model` and `prompt` follow the answer columns.
CORPUS_COLUMNS: tuple[str, ...] = ("text", "speaker", "label")
#: What each column of annotations.csv/.parquet holds (run.json repeats it under "columns").
COLUMN_MEANINGS: dict[str, str] = {
    "id": "the utterance's id in the corpus table",
    "text": "the utterance, from the corpus",
    "speaker": "who says it, from the corpus",
    "label": "the corpus's own (human) label, when it has one",
    "status": "ok, invalid, failed or pending (see docs/annotate.md)",
    "character": "the LLM's answer: the character it names",
    "context": "the LLM's answer: a brief context",
    "emotion": "the LLM's answer: the emotion, normalised to the label set (empty unless status is ok)",
    "loudness": "the LLM's answer: the voice's loudness",
    "pitch": "the LLM's answer: the voice's pitch",
    "rhythm_speed": "the LLM's answer: the voice's rhythm speed",
    "emotional_impact": "the LLM's answer: the overall emotional impact",
    "flags": "what the validation noticed, ';'-separated (see docs/annotate.md)",
    "confidence": "the label's probability from the model's log probabilities (or the samples' agreement)",
    "distribution": "with --samples: each label's share of the valid samples, as JSON",
    "samples": "valid samples behind the answer",
    "agreement": "share of the valid samples that gave the majority label",
    "panel_fleiss_kappa": "with --panel: Fleiss' κ of the whole panel over all utterances (the same on every row)",
    "error": "why no usable answer was obtained (invalid, failed)",
    "raw_reply": "the model's reply as written: the chosen sample's for ok rows, the last one for invalid rows",
    "prompt_tokens": "prompt tokens billed for the row (all samples and re-asks)",
    "completion_tokens": "completion tokens billed for the row",
    "cost_usd": "what the row cost, when the model's price is known",
    "model": "the model that answered",
    "prompt": "the prompt template (its full text is in run.json)",
}
#: What a run writes in its folder besides the request store, all three together (`_write_outputs`).
OUTPUT_FILES = ("annotations.parquet", "annotations.csv", "run.json")
#: Completion tokens assumed per answer for an estimate when the store has no real replies yet: the paper's
#: JSON answer runs to about 100 tokens; free-text (chain-of-thought) replies run longer.
TYPICAL_COMPLETION_TOKENS = {False: 120, True: 450}


@dataclass
class RunResult:
    out_dir: Path
    annotations: pd.DataFrame
    stats: RunStats
    #: every finished request in the store, over all invocations: requests, tokens, cost
    totals: dict[str, Any]
    response_format: str
    backend: str
    model: str
    #: what decides the folder's replies (see `melt.annotate.folder`)
    identity: dict[str, Any] | None = None
    #: the folder's batches and what this invocation did with them (run.json's "batch"); None without any
    batch: dict[str, Any] | None = None
    #: a panel's votes (RUN_DIR/votes.parquet) and what run.json says about the panel (Fleiss' κ, ...)
    votes: pd.DataFrame | None = None
    panel: dict[str, Any] | None = None
    #: with --audio: what was sent and what the server probe found
    audio: dict[str, Any] | None = None

    @property
    def complete(self) -> bool:
        return bool(self.annotations["status"].isin(["ok", "invalid"]).all())


class RunInterrupted(KeyboardInterrupt):
    """SIGINT or SIGTERM stopped a run: the replies in flight were waited for and stored, and the tables and
    run.json written. `result` is the run so far; `signal` the signal's number (the CLI exits 128 + it)."""

    def __init__(self, result: RunResult, signum: int):
        super().__init__(f"interrupted by {signal.Signals(signum).name}")
        self.result = result
        self.signal = signum


@dataclass
class CostEstimate:
    utterances: int
    requests: int
    cached: int
    prompt_tokens: int
    completion_tokens: int
    completion_tokens_max: int
    cost_usd: float | None
    cost_usd_max: float | None
    model: str
    #: requests already inside batches in progress (sent by neither a batch nor live)
    in_batches: int = 0
    #: priced at the Batch API's price
    batch: bool = False
    #: requests per utterance (--samples, or a panel's annotators)
    per_utterance: int = 1
    #: with --audio: seconds of audio in the requests to send, their tokens (None: the model's rate is unknown)
    audio_seconds: float = 0.0
    audio_tokens: int | None = 0
    audio_rate: AudioRate | None = None


def prompt_config(config: AnnotateConfig) -> PromptConfig:
    """The prompt of a run: `--prompt` and `--schema`, or a panel's template asking for one label."""
    panel = panel_of(config)
    if panel is not None:
        return panel_prompt(config, panel)
    return PromptConfig(
        template=config.prompt,
        schema_kind=config.schema_kind,
        labels=config.labels,
        context_turns=config.context_turns,
        audio=config.audio,
    )


def _required_columns(prompt: PromptConfig) -> list[str]:
    return ["id", *prompt.required_columns(), *(["audio"] if prompt.audio else [])]


def load_corpus(path: str | Path, prompt: PromptConfig) -> pd.DataFrame:
    """The corpus table, checked for the columns the prompt reads before any default column is added."""
    raw = read_any(path)
    require_columns(raw, _required_columns(prompt), source=path, purpose=_purpose(prompt))
    return conform(raw, source=path)


def _purpose(prompt: PromptConfig) -> str:
    return f"prompt template {prompt.template!r}" + (" with --audio" if prompt.audio else "")


def prepare(
    table: pd.DataFrame, config: AnnotateConfig, prompt: PromptConfig, *, source: str | Path
) -> list[Utterance]:
    """Every utterance to annotate with its messages (with --audio, the audio after the text); all input errors
    surface here, before any request."""
    require_columns(table, _required_columns(prompt), source=source, purpose=_purpose(prompt))
    if config.panel is None and "focus" in prompt.load().placeholders():
        raise MeltError(
            "{focus} is the focus instruction of a panel's annotator: a template with it needs --panel",
            file=prompt.load().source,
        )
    selected = table.head(config.limit) if config.limit else table
    # The whole table is the context source, so --limit does not cut the dialogue lines before an utterance.
    messages = build_messages(selected, prompt, source=source, context_table=table)
    speakers = (
        selected["speaker"] if "speaker" in selected.columns else pd.Series(pd.NA, index=selected.index)
    )
    utterances = [
        Utterance(
            id=str(uid), speaker=None if pd.isna(speaker) else str(speaker), messages=messages[str(uid)]
        )
        for uid, speaker in zip(selected["id"], speakers, strict=True)
    ]
    if config.audio:
        attach_audio(utterances, selected, config, source=source)
    return utterances


def _price(config: AnnotateConfig, model: str, *, free: bool, batch: bool = False) -> Price | None:
    price = Price(input=0, output=0) if free else price_of(model, config.prices, batch=batch)
    if config.max_cost is not None and price is None:
        if batch:
            raise MeltError(
                f"--max-cost with --batch needs the Batch API price of model {model!r}, which is not in the price "
                f"table; add it to the config file as prices: {{{model}: {{input: USD_PER_M, output: USD_PER_M, "
                "batch_input: USD_PER_M, batch_output: USD_PER_M}}"
            )
        raise MeltError(
            f"--max-cost needs the price of model {model!r}, which is not in the price table; "
            f"add it to the config file as prices: {{{model}: {{input: USD_PER_M, output: USD_PER_M}}}}"
        )
    if (
        config.max_cost is not None
        and config.audio
        and not free
        and audio_rate_of(model, config.audio_token_rates) is None
    ):
        raise MeltError(
            f"--max-cost with --audio needs the audio tokens per second of model {model!r}, which are not in the "
            f"table; add them to the config file as audio_token_rates: {{{model}: TOKENS_PER_SECOND}}"
        )
    return price


def _check_batch_backend(config: AnnotateConfig) -> None:
    if config.batch and choose_backend(config).kind != "openai":
        raise MeltError(
            "--batch needs an OpenAI-compatible server with the Batch API: an API key in "
            f"${config.api_key_env} (OpenAI), or --base-url; a local model has no Batch API"
        )


def _check_audio_backend(config: AnnotateConfig, kind: str) -> None:
    if config.audio and kind == "local":
        raise MeltError(
            "--audio needs a server with an audio-language model (--base-url URL --model NAME): the local "
            "llama.cpp models take text only. Without --audio a panel runs on the transcripts with any chat model"
        )


def run_annotation(
    table: pd.DataFrame | str | Path,
    config: AnnotateConfig,
    out_dir: str | Path,
    *,
    backend: Backend | None = None,
    corpus_path: str | Path | None = None,
    progress: bool = False,
    force_reuse: bool = False,
    send: bool = True,
) -> RunResult:
    """Annotate `table` (a DataFrame or the path of a corpus table) into `out_dir`, resuming whatever an earlier
    run in `out_dir` finished. Without `send`, nothing is sent: the tables and run.json are written from the
    store, the rest pending. `backend` defaults to `melt.llm.make_backend(config)`; a backend passed in is
    closed at the end all the same.

    One process at a time works in a folder, and a folder belongs to one configuration (server, model, prompt,
    request settings): another one is refused with a `MeltError` naming what differs, unless `force_reuse`.
    Run from the main thread, SIGINT and SIGTERM stop the run cleanly: what is in flight is stored, the tables
    and run.json are written, and `RunInterrupted` is raised.

    With `config.batch`, the requests go through OpenAI's Batch API (`melt.annotate.batch`): the run submits
    them and returns with their utterances pending, unless `config.batch_wait`; the next run collects them.
    Any run on a folder with batches in progress collects those that ended and sends none of their requests."""
    prompt = prompt_config(config)
    _check_batch_backend(config)
    out_dir = check_output_folder(out_dir, option="--out")
    for name in OUTPUT_FILES:
        check_output_file(out_dir / name, option="--out", suffixes=(Path(name).suffix,))
    if not isinstance(table, pd.DataFrame):
        corpus_path = Path(table)
        table = load_corpus(corpus_path, prompt)
    source = corpus_path or "<table>"
    if backend is None:
        _check_audio_backend(config, choose_backend(config).kind)
    utterances = prepare(table, config, prompt, source=source)
    corpus_columns = table[["id", *(c for c in CORPUS_COLUMNS if c in table.columns)]]
    with RunLock(out_dir):
        remove_stale_temporaries(out_dir)
        if backend is None:
            backend = make_backend(config)
        _check_audio_backend(config, backend.name)
        result = _run_to_completion(
            _run(
                utterances,
                config,
                prompt,
                backend,
                out_dir,
                corpus_path,
                progress,
                force_reuse,
                corpus_columns=corpus_columns,
                send=send,
            )
        )
    if result.stats.interrupted:
        raise RunInterrupted(result, signal.Signals[result.stats.interrupted])
    return result


class _SendNothing:
    """A dispatcher holding every request the store lacks: its utterance stays pending, nothing is sent."""

    price = None

    def route(self, outgoing: Any) -> str:
        return "hold"

    def take(self, outgoing: Any) -> None:
        raise AssertionError("a held request is never taken")


def _run_to_completion(coroutine: Coroutine[Any, Any, RunResult]) -> RunResult:
    """Run the engine's event loop; from inside a running loop (a Jupyter notebook), on a thread of its own."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(coroutine)
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="melt-annotate") as thread:
        return thread.submit(asyncio.run, coroutine).result()


async def _run(
    utterances: list[Utterance],
    config: AnnotateConfig,
    prompt: PromptConfig,
    backend: Backend,
    out_dir: Path,
    corpus_path: str | Path | None,
    progress: bool,
    force_reuse: bool,
    *,
    corpus_columns: pd.DataFrame | None = None,
    send: bool = True,
) -> RunResult:
    store = RequestStore(out_dir / STORE_NAME)
    started = datetime.now(UTC)
    clock = time.perf_counter()
    try:
        price = _price(config, backend.model, free=backend.name == "local")
        identity = folder_identity(config, prompt, backend_identity(backend))
        records = batch_records(store)
        if force_reuse and any(r.live for r in records) and check_folder(store, identity, force=True):
            raise MeltError(
                "this run folder has batches in progress for its own configuration: collect them with that "
                "configuration, or cancel them (melt annotate RUN_DIR --cancel-batch), before reusing it",
                file=out_dir,
            )
        replaced = claim_folder(store, identity, force=force_reuse)
        audio_check = None
        if config.audio and send:
            clip = probe_clip(utterances)
            audio_check = AudioCheck(clip, allow_ignored=config.allow_ignored_audio) if clip else None
        rate = audio_rate_of(backend.model, config.audio_token_rates)
        annotator = Annotator(
            config, prompt, backend, store, price,
            audio_tokens_per_second=rate.tokens_per_second if rate else None,
            server_checks=[audio_check] if audio_check else [],
            dispatch=None if send else _SendNothing(),
        )  # fmt: skip
        if audio_check is not None:
            audio_check.recall(store, annotator.identity)
        session = None
        if send and (config.batch or any(r.live for r in records)):
            batch_price = (
                _price(config, backend.model, free=False, batch=True)
                if config.batch
                else price_of(backend.model, config.prices, batch=True)
            )
            session = BatchSession(
                store, require_openai(backend), config, out_dir, identity, batch_price, progress=progress
            )
        # The handlers stay until the outputs are written: a signal then changes nothing, rather than stopping
        # the process between the renames of two tables.
        with _signals_stop(annotator) as signals:

            async def annotate() -> dict[str, list[SampleOutcome]]:
                if progress:
                    return await _with_progress(annotator, utterances, config)
                return await annotator.run(utterances)

            if session is None:
                outcomes = await annotate()
            else:
                outcomes = await annotate_in_batches(session, annotator, annotate)
            annotator.stats.elapsed_s = time.perf_counter() - clock
            # The last replies are committed before the tables show them: a commit that fails now (a full disk)
            # stops the run like any other failed write, instead of leaving paid replies out of the store.
            store.commit()
            if isinstance(annotator.fatal, MeltError) and store.failure is annotator.fatal:
                raise annotator.fatal  # a full disk: the tables could not be written either
            weights = [variant.weight for variant in annotator.variants]
            rows = [aggregate(u.id, outcomes[u.id], weights) for u in utterances]
            annotations = pd.DataFrame(rows, columns=list(OUTPUT_COLUMNS)).astype(_DTYPES)
            for column in OUTPUT_COLUMNS:
                if column not in _DTYPES:
                    annotations[column] = annotations[column].astype("string")
            annotations = with_corpus_columns(annotations, corpus_columns, backend.model, prompt)
            votes = panel_summary = None
            panel = panel_of(config)
            if panel is not None:
                votes = votes_table([u.id for u in utterances], outcomes, panel)
                off_set = off_set_labels(outcomes.values())
                panel_summary = panel_report(votes, panel, list(config.labels.labels), off_set)
                # One figure for the whole panel, on every row so that the table carries it (run.json too).
                annotations["panel_fleiss_kappa"] = pd.Series(
                    panel_summary["fleiss_kappa"], index=annotations.index, dtype="Float64"
                )
            audio = None
            if config.audio:
                audio = audio_plan(utterances, config).to_json()
                audio["check"] = audio_check.result if audio_check else {"status": "not done (no audio)"}
            result = RunResult(
                out_dir=out_dir,
                annotations=annotations,
                stats=annotator.stats,
                totals=store.totals(),
                response_format=annotator.format_level,
                backend=backend.name,
                model=backend.model,
                identity=identity,
                batch=batch_summary(store, config, session.report if session else None),
                votes=votes,
                panel=panel_summary,
                audio=audio,
            )
            _write_outputs(result, config, prompt, corpus_path, started, replaced)
            await signals.deliver_pending()
        if annotator.fatal is not None:
            raise annotator.fatal
        return result
    finally:
        store.close()
        await backend.aclose()


class _signals_stop:
    """While a run works, SIGINT and SIGTERM stop it cleanly (`Annotator.stop`); a second signal cancels the
    requests still in flight at once. Only in the main thread: signal handlers cannot be set elsewhere (a
    notebook's run thread is left to the notebook's own interrupt)."""

    def __init__(self, annotator: Annotator):
        self.annotator = annotator
        self.installed: list[int] = []
        self.written = False

    def __enter__(self) -> _signals_stop:
        if threading.current_thread() is not threading.main_thread():
            return self
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGINT, signal.SIGTERM):
            try:
                loop.add_signal_handler(signum, self._received, signum)
            except (NotImplementedError, RuntimeError, ValueError):
                continue
            self.installed.append(signum)
        return self

    async def deliver_pending(self) -> None:
        """Let a signal that came during the final write (which blocks the event loop) reach its handler
        before the handlers go: dropped, it would end the process as if nobody had asked it to stop."""
        self.written = True
        for _ in range(3):  # the loop reads its wake-up pipe, then runs the handler it queued
            await asyncio.sleep(0)

    def _received(self, signum: int) -> None:
        annotator = self.annotator
        name = signal.Signals(signum).name
        if self.written:
            annotator.stats.interrupted = annotator.stats.interrupted or name
            print(f"melt: {name}: the tables and run.json are written; stopping", file=sys.stderr, flush=True)
            return
        if annotator.stats.interrupted is not None:
            print(f"melt: {name} again: cancelling the requests in flight", file=sys.stderr, flush=True)
            annotator.cancel_in_flight()
            return
        annotator.stats.interrupted = name
        grace = min(annotator.config.timeout, 30.0)
        print(
            f"melt: {name}: sending nothing more; waiting up to {grace:g} s for {annotator.in_flight} "
            f"request(s) in flight, then writing the tables ({name} again to stop at once)",
            file=sys.stderr,
            flush=True,
        )
        annotator.stop(f"interrupted by {name}", grace=grace)

    def __exit__(self, *exc: object) -> None:
        loop = asyncio.get_running_loop()
        for signum in self.installed:
            loop.remove_signal_handler(signum)


async def _with_progress(annotator: Annotator, utterances: list[Utterance], config: AnnotateConfig):
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    from melt import terminal

    columns = (
        TextColumn("[bold]annotating"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        TextColumn("{task.fields[status]}"),
    )
    with Progress(*columns, console=terminal.console(stderr=True), transient=False) as bar:
        task = bar.add_task("annotate", total=len(utterances) * len(annotator.variants), status="")

        def done(stats: RunStats) -> None:
            cost = f"${stats.cost_usd:.4f}" if stats.cost_usd is not None else "cost unknown"
            retries = sum(stats.retries.values())
            bar.update(task, advance=1, status=f"{cost}  cached {stats.cached}  retries {retries}")

        annotator.on_job_done = done
        return await annotator.run(utterances)


def with_corpus_columns(
    annotations: pd.DataFrame, corpus: pd.DataFrame | None, model: str, prompt: PromptConfig
) -> pd.DataFrame:
    """`annotations` with the corpus's `CORPUS_COLUMNS` after `id` (matched by id) and the `model` and `prompt`
    (the template's name) of every row at the end: the table reads without the corpus."""
    from melt.annotate.folder import prompt_name

    joined = annotations
    if corpus is not None:
        present = [c for c in CORPUS_COLUMNS if c in corpus.columns and c not in annotations.columns]
        columns = corpus[["id", *present]].drop_duplicates("id").astype({"id": "string"})
        joined = annotations.merge(columns, on="id", how="left")
        joined = joined[["id", *present, *(c for c in annotations.columns if c != "id")]]
        for column in present:
            joined[column] = joined[column].astype("string")
    return joined.assign(
        model=pd.Series(model, index=joined.index, dtype="string"),
        prompt=pd.Series(prompt_name(prompt.template), index=joined.index, dtype="string"),
    )


def _write_outputs(
    result: RunResult,
    config: AnnotateConfig,
    prompt: PromptConfig,
    corpus_path: str | Path | None,
    started: datetime,
    replaced_identity: dict[str, Any] | None,
) -> None:
    """annotations.parquet, annotations.csv and run.json, all three written before any replaces its old
    version, so the folder never holds tables of different invocations side by side."""
    from melt import provenance
    from melt.prompts import template_text

    statuses = Counter(result.annotations["status"].astype(str))
    settings = config.public()
    made = provenance.record(
        inputs={"corpus": corpus_path},
        settings=settings,
        api=provenance.api_call(
            run_annotation,
            Path(corpus_path) if corpus_path is not None else pd.DataFrame(),
            config,
            result.out_dir,
        ),
        backend=result.backend,
        model=result.model,
        who_answers=(result.identity or {}).get("backend"),
        response_format=result.response_format,
        prompt={
            "template": prompt.template,
            "template_hash": prompt.template_hash(),
            "schema_kind": prompt.schema_kind,
            "text": template_text(prompt),
        },
    )
    payload = {
        "melt_version": __version__,
        "started": started.isoformat(timespec="seconds"),
        "finished": datetime.now(UTC).isoformat(timespec="seconds"),
        "corpus": str(Path(corpus_path).resolve()) if corpus_path is not None else None,
        "backend": result.backend,
        "model": result.model,
        "prompt": made["prompt"],
        "response_format": result.response_format,
        "config": settings,
        "identity": result.identity,
        "utterances": len(result.annotations),
        "status": dict(sorted(statuses.items())),
        "complete": result.complete,
        "interrupted": result.stats.interrupted,
        "stop_reason": result.stats.stop_reason,
        "this_invocation": result.stats.to_json(),
        "totals": result.totals,
        "columns": {c: COLUMN_MEANINGS[c] for c in result.annotations.columns if c in COLUMN_MEANINGS},
        "provenance": made,
    }
    if result.batch is not None:
        payload["batch"] = result.batch
    if result.panel is not None:
        payload["panel"] = result.panel
    if result.audio is not None:
        payload["audio"] = result.audio
    if replaced_identity is not None:
        payload["reused_folder_of"] = replaced_identity
    text = json.dumps(payload, indent=2, ensure_ascii=False) + "\n"
    table = result.annotations
    writers = {
        result.out_dir / "annotations.parquet": lambda tmp: table.to_parquet(tmp, index=False),
        result.out_dir / "annotations.csv": lambda tmp: table.to_csv(tmp, index=False),
    }
    votes = result.votes
    if votes is not None:
        writers[result.out_dir / "votes.parquet"] = lambda tmp: votes.to_parquet(tmp, index=False)
    writers[result.out_dir / "run.json"] = lambda tmp: tmp.write_text(text, encoding="utf-8")
    write_together(writers)


def cancel_batches(
    out_dir: str | Path, config: AnnotateConfig, *, wait: bool = False, progress: bool = False
) -> tuple[BatchReport, list[BatchRecord]]:
    """Cancel the batches in progress of the run folder `out_dir` (what `config` names must be the server the
    folder's batches went to). A batch whose creation a killed process never recorded is looked for at the
    server first; one that was never created is given up. With `wait`, wait until they have ended, store the
    replies they completed before the cancellation (billed) and write the tables and run.json (sending nothing,
    when run.json names the corpus); otherwise the next run collects them. Returns this invocation's report and
    the folder's batches."""
    out_dir = Path(out_dir)
    if not (out_dir / STORE_NAME).is_file():
        raise MeltError("not a run folder (it has no request store)", file=out_dir)
    if choose_backend(config).kind != "openai":
        raise MeltError(
            f"cancelling batches needs the server they went to: its API key in ${config.api_key_env} (OpenAI), "
            "or --base-url"
        )

    async def cancel(backend: OpenAIBackend, store: RequestStore) -> tuple[BatchReport, list[BatchRecord]]:
        try:
            recorded = store.meta_json(IDENTITY_META)
            if isinstance(recorded, dict) and recorded.get("backend") != backend.identity():
                raise MeltError(
                    "this run folder's batches went to "
                    f"{json.dumps(recorded.get('backend'))}, not {json.dumps(backend.identity())}: give the "
                    "--base-url and --model of the run",
                    file=out_dir,
                )
            price = price_of(backend.model, config.prices, batch=True)
            session = BatchSession(store, backend, config, out_dir, recorded or {}, price, progress=progress)
            await session.cancel(wait=wait)
            return session.report, session.records()
        finally:
            await backend.aclose()

    with RunLock(out_dir):
        store = RequestStore(out_dir / STORE_NAME)
        try:
            backend = require_openai(make_backend(config))
            report, records = _run_to_completion(cancel(backend, store))
        finally:
            store.close()
    corpus = (run_record(out_dir) or {}).get("corpus")
    if wait and isinstance(corpus, str) and Path(corpus).is_file():
        run_annotation(corpus, config, out_dir, send=False)
        records = _batch_records_of(out_dir)
    return report, records


def run_record(out_dir: str | Path) -> dict[str, Any] | None:
    """What a run folder's run.json records (corpus, settings, totals...); None before a run wrote one."""
    path = Path(out_dir) / "run.json"
    if not path.is_file():
        return None
    try:
        recorded = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, OSError) as exc:
        raise MeltError(f"cannot read it ({exc})", file=path) from exc
    if not isinstance(recorded, dict):
        raise MeltError("expected a JSON object", file=path)
    return recorded


def _batch_records_of(out_dir: Path) -> list[BatchRecord]:
    store = RequestStore(out_dir / STORE_NAME)
    try:
        return batch_records(store)
    finally:
        store.close()


def estimate_run(
    table: pd.DataFrame | str | Path,
    config: AnnotateConfig,
    out_dir: str | Path | None = None,
    *,
    model: str | None = None,
    corpus_path: str | Path | None = None,
    force_reuse: bool = False,
) -> CostEstimate:
    """Tokens and cost of a run, sending nothing. Requests already in `out_dir`'s store are not counted. Prompt
    tokens are estimated from characters; completion tokens from the store's replies if it has any, else a
    typical answer length (`completion_tokens_max` assumes every reply uses max_tokens). Re-asks are not
    included: they depend on the replies. A folder of another configuration is refused as the run would refuse
    it (unless `force_reuse`), so the estimate is never that of a run that cannot happen. Requests inside
    batches in progress are not counted (they are not sent again); with `config.batch` the cost is at the
    Batch API's price.

    With --audio, the audio's prompt tokens are the seconds sent times the model's audio token rate
    (`melt.llm.pricing.AUDIO_TOKEN_RATES`, or `audio_token_rates` in the config); unknown (None, and so the
    cost) for a model without a rate."""
    prompt = prompt_config(config)
    _check_batch_backend(config)
    choice = choose_backend(config)
    _check_audio_backend(config, choice.kind)
    if not isinstance(table, pd.DataFrame):
        corpus_path = Path(table)
        table = load_corpus(corpus_path, prompt)
    utterances = prepare(table, config, prompt, source=corpus_path or "<table>")
    variants = request_variants(config, prompt)
    model = model or choice.recorded_model
    rate = audio_rate_of(model, config.audio_token_rates) if config.audio else None
    store_path = Path(out_dir) / STORE_NAME if out_dir is not None else None
    store = RequestStore(store_path) if store_path is not None and store_path.exists() else None
    try:
        identity = choice.identity() if store is not None else None
        if store is not None and identity is not None:
            check_folder(store, folder_identity(config, prompt, identity), force=force_reuse)
        in_batches = live_request_keys(store) if store is not None else set()
        typical = store.mean_completion_tokens() if store else None
        if typical is None:
            typical = TYPICAL_COMPLETION_TOKENS[prompt.free_text_reply]
        # A request counts as done if the store has it at any answer format: the run may have fallen back.
        schema_format = response_format(prompt)
        requests = cached = held = prompt_tokens = 0
        seconds = 0.0
        for utterance in utterances:
            for sample, variant in enumerate(variants):
                messages = variant_messages(utterance.messages, variant)
                requests += 1
                keys = [
                    stored_key(model, chat_request(config, schema_format, messages, variant, level), sample)[
                        0
                    ]
                    for level in RESPONSE_FORMATS
                ]
                if store is not None and any(store.has(key) for key in keys):
                    cached += 1
                    continue
                if any(key in in_batches for key in keys):
                    held += 1
                    continue
                prompt_tokens += math.ceil(text_chars(messages) / CHARS_PER_TOKEN) + 4 * len(messages)
                seconds += audio_seconds(messages)
    finally:
        if store is not None:
            store.close()
    to_send = requests - cached - held
    completion = round(typical * to_send)
    completion_max = config.max_tokens * to_send
    price = Price(input=0, output=0) if choice.free else price_of(model, config.prices, batch=config.batch)
    audio_tokens: int | None = 0
    if seconds:
        audio_tokens = math.ceil(seconds * rate.tokens_per_second) if rate else None
    known = price is not None and audio_tokens is not None
    return CostEstimate(
        utterances=len(utterances),
        requests=requests,
        cached=cached,
        prompt_tokens=prompt_tokens + (audio_tokens or 0),
        completion_tokens=completion,
        completion_tokens_max=completion_max,
        cost_usd=price.cost(prompt_tokens + audio_tokens, completion, audio_tokens) if known else None,
        cost_usd_max=price.cost(prompt_tokens + audio_tokens, completion_max, audio_tokens)
        if known
        else None,
        model=model,
        in_batches=held,
        batch=config.batch,
        per_utterance=len(variants),
        audio_seconds=seconds,
        audio_tokens=audio_tokens,
        audio_rate=rate,
    )


__all__ = [
    "CORPUS_COLUMNS",
    "OUTPUT_COLUMNS",
    "RESPONSE_FORMATS",
    "CostEstimate",
    "RunInterrupted",
    "RunResult",
    "cancel_batches",
    "estimate_run",
    "load_corpus",
    "run_annotation",
    "run_record",
]
