"""The utterance's recording with the request (`--audio`): an `input_audio` content part, 16 kHz mono WAV in
base64, next to the transcript and the speaker, for any OpenAI-compatible server with an audio-language model.

Before anything is sent, every row's file is checked (it exists, its header gives a length) and hashed: the
request and its key carry the audio's sha256 and segment, never the audio (`melt.llm.base.AudioPart`). The
audio is read, cut and encoded when a request is sent, and only the few most recent clips are kept encoded
(`_clip`), so memory does not grow with the corpus.

Audio longer than `--max-audio-seconds` (default 30: Qwen2-Audio hears 30 s and silently drops the rest) is
trimmed to its first 30 s (`--long-audio trim`, the default), or split into consecutive pieces of at most that
length, all sent in order in the one message (`--long-audio split`, for models that take several clips of a
limited length each; at most `MAX_PIECES` pieces, the rest left out and counted).

`AudioCheck` probes the server once before the first request: a request with a short clip and the same request
without it. An HTTP error naming the audio means the server does not take audio (a clear error, exit 2); the
same prompt-token count with and without the clip means the server dropped the audio without a word (refused
unless `--allow-ignored-audio`). What it found is remembered in the run folder's store and reported in run.json.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import io
import json
import math
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd

from melt.errors import MeltError
from melt.llm.base import AudioPart, BackendError, RequestFailed, RetryableError, audio_parts

if TYPE_CHECKING:
    from melt.annotate.config import AnnotateConfig
    from melt.annotate.engine import Annotator, Utterance

SAMPLE_RATE = 16_000
#: Most pieces one utterance's audio is split into (`--long-audio split`); what is beyond is left out.
MAX_PIECES = 10
#: Longest clip the audio probe sends (seconds): enough for any audio model to count tokens for it.
PROBE_SECONDS = 3.0
#: What the audio probe asks (the same with and without the clip, so only the clip differs).
PROBE_TEXT = "Reply with a JSON object and nothing else."
#: Encoded clips kept for reuse: the annotators of a panel ask about the same utterance one after another.
CLIP_CACHE = 16
_HASH_CHUNK = 1 << 20


@dataclass
class AudioPlan:
    """The audio a run sends (`audio_plan`): seconds per request, and what was cut."""

    utterances: int = 0
    seconds_in_files: float = 0.0
    #: seconds sent per request (all of an utterance's pieces), summed over the utterances
    seconds_sent: float = 0.0
    trimmed: int = 0
    split: int = 0
    seconds_left_out: float = 0.0
    longest_seconds: float = 0.0
    settings: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {
            "settings": self.settings,
            "utterances": self.utterances,
            "seconds_in_files": round(self.seconds_in_files, 3),
            "seconds_sent_per_request": round(self.seconds_sent, 3),
            "trimmed": self.trimmed,
            "split": self.split,
            "seconds_left_out": round(self.seconds_left_out, 3),
            "longest_seconds": round(self.longest_seconds, 3),
        }


def audio_plan(utterances: list[Utterance], config: AnnotateConfig) -> AudioPlan:
    """What `attach_audio` put into the utterances' messages."""
    plan = AudioPlan(settings=audio_settings(config) or {})
    for utterance in utterances:
        parts = audio_parts(utterance.messages)
        if not parts:
            continue
        whole, sent = parts[0].source_seconds, sum(p.seconds for p in parts)
        plan.utterances += 1
        plan.seconds_in_files += whole
        plan.seconds_sent += sent
        plan.longest_seconds = max(plan.longest_seconds, whole)
        if sent < whole - 1e-6:
            plan.seconds_left_out += whole - sent
            plan.trimmed += len(parts) == 1
        plan.split += len(parts) > 1
    return plan


def probe_clip(utterances: list[Utterance]) -> AudioPart | None:
    """At most `PROBE_SECONDS` from the start of the first utterance with a second of audio or more (else the
    longest), for `AudioCheck`: a clip too short to make a token could look ignored."""
    chosen: AudioPart | None = None
    for utterance in utterances:
        parts = audio_parts(utterance.messages)
        if parts and (chosen is None or parts[0].seconds > chosen.seconds):
            chosen = parts[0]
            if chosen.seconds >= 1.0:
                break
    if chosen is None:
        return None
    seconds = min(chosen.seconds, PROBE_SECONDS)
    load = functools.partial(_clip, chosen.source, chosen.sha256, chosen.start, seconds)
    return dataclasses.replace(chosen, seconds=seconds, load=load)


def audio_settings(config: AnnotateConfig) -> dict[str, Any] | None:
    """The audio settings that decide what is sent (part of the run folder's identity); None without --audio."""
    if not config.audio:
        return None
    return {
        "audio_max_seconds": config.max_audio_seconds,
        "audio_long": config.long_audio,
        "audio_sample_rate": SAMPLE_RATE,
    }


def pieces(duration: float, max_seconds: float, long_audio: str) -> list[tuple[float, float]]:
    """(start, seconds) of what is sent of audio lasting `duration` seconds."""
    if duration <= max_seconds:
        return [(0.0, round(duration, 6))]
    if long_audio == "trim":
        return [(0.0, max_seconds)]
    count = min(math.ceil(duration / max_seconds - 1e-9), MAX_PIECES)
    return [
        (round(i * max_seconds, 6), round(min(max_seconds, duration - i * max_seconds), 6))
        for i in range(count)
    ]


def attach_audio(
    utterances: list[Utterance], table: pd.DataFrame, config: AnnotateConfig, *, source: str | Path
) -> None:
    """Put each utterance's audio (the `audio` column of its row in `table`) into its user message, after the
    text. Every input error stops here, before any request: a row without audio, a file that is missing or
    whose header gives no length (`MeltError` naming the file, row and column)."""
    try:
        import soundfile  # noqa: F401  (the clips are read and written with it)
    except ImportError as exc:
        raise MeltError("--audio needs soundfile and scipy: pip install 'melt-toolkit[acoustics]'") from exc
    from melt.corpus.audio_files import AudioFileError, header_duration

    if "audio" not in table.columns:
        raise MeltError(
            f"--audio needs an 'audio' column (the path of each utterance's recording); found {list(table.columns)}",
            file=source,
        )
    row_of = {str(uid): position for position, uid in enumerate(table["id"])}
    missing = [u for u in utterances if _empty(table["audio"].iloc[row_of[u.id]])]
    if missing:
        row = row_of[missing[0].id] + 1
        more = f" ({len(missing) - 1} more row(s) have none)" if len(missing) > 1 else ""
        raise MeltError(
            f"no audio for utterance {missing[0].id!r}{more}: --audio sends every utterance's recording; "
            "annotate the rows that have one (select them first), or leave out --audio",
            file=source,
            row=row,
            column="audio",
        )
    files: dict[str, tuple[str, float]] = {}
    for utterance in utterances:
        row = row_of[utterance.id]
        path = Path(str(table["audio"].iloc[row])).expanduser()
        key = str(path.resolve())
        if key not in files:
            try:
                duration = header_duration(path)
            except AudioFileError as exc:
                raise MeltError(
                    f"the audio of utterance {utterance.id!r}: {exc.reason} ({path}); convert it to WAV with "
                    "melt audio extract if it is a video or an unusual format",
                    file=source,
                    row=row + 1,
                    column="audio",
                ) from None
            files[key] = (_sha256(path, source, row, utterance.id), duration)
        digest, duration = files[key]
        parts = [
            AudioPart(
                sha256=digest,
                start=start,
                seconds=seconds,
                sample_rate=SAMPLE_RATE,
                load=functools.partial(_clip, key, digest, start, seconds),
                source=key,
                source_seconds=duration,
            )
            for start, seconds in pieces(duration, config.max_audio_seconds, config.long_audio)
        ]
        _append_audio(utterance, parts)


def _empty(value: object) -> bool:
    return (
        value is None
        or value is pd.NA
        or (isinstance(value, float) and math.isnan(value))
        or not str(value).strip()
    )


def _sha256(path: Path, source: str | Path, row: int, utterance_id: str) -> str:
    digest = hashlib.sha256()
    try:
        with open(path, "rb") as file:
            while chunk := file.read(_HASH_CHUNK):
                digest.update(chunk)
    except OSError as exc:
        raise MeltError(
            f"cannot read the audio of utterance {utterance_id!r} ({path}): {exc.strerror or exc}",
            file=source,
            row=row + 1,
            column="audio",
        ) from None
    return digest.hexdigest()


def _append_audio(utterance: Utterance, parts: list[AudioPart]) -> None:
    """The last user message becomes its text followed by the audio pieces."""
    for message in reversed(utterance.messages):
        if message.get("role") == "user":
            text = message["content"]
            message["content"] = [{"type": "text", "text": text}, *parts]
            return
    utterance.messages.append({"role": "user", "content": list(parts)})


@functools.lru_cache(maxsize=CLIP_CACHE)
def _clip(path: str, sha256: str, start: float, seconds: float) -> bytes:
    """`seconds` of the file from `start` as 16-bit 16 kHz mono WAV bytes (`sha256` keys the cache: a file
    changed since the run started is a different clip). A file that can no longer be read fails this one
    request (`RequestFailed`), not the run."""
    import soundfile

    from melt.acoustics.audio import AudioError, read_audio

    try:
        signal = read_audio(path, SAMPLE_RATE, offset=start, duration=seconds)
    except AudioError as exc:
        raise RequestFailed(f"cannot read the audio ({path}): {exc.reason}") from None
    buffer = io.BytesIO()
    soundfile.write(buffer, signal, SAMPLE_RATE, subtype="PCM_16", format="WAV")
    return buffer.getvalue()


# -- does the server hear the audio? -------------------------------------------------------------------------

_AUDIO_WORDS = ("audio", "input_audio", "modalit", "content type", "content part", "multimodal")


class AudioCheck:
    """The engine's server check for --audio (see the module's docstring); `result` is what run.json reports."""

    META = "audio_check:"
    #: what a probe can find out (anything else, e.g. a transient failure, is probed again next time)
    FINDINGS = ("hears audio", "ignores audio", "unknown")

    def __init__(self, example: AudioPart, *, allow_ignored: bool):
        self.example = example
        self.allow_ignored = allow_ignored
        self.result: dict[str, Any] = {"status": "not needed (every request was in the store)"}

    def recall(self, store: Any, server: dict[str, Any]) -> None:
        """Take what an earlier run found about this server (`server`: the backend's identity), if anything."""
        remembered = store.meta_json(self.META + json.dumps(server, sort_keys=True))
        if isinstance(remembered, dict) and remembered.get("status") in self.FINDINGS:
            self.result = {**remembered, "remembered": True}

    async def __call__(self, annotator: Annotator) -> None:
        store, backend = annotator.store, annotator.backend
        if not self.result.get("remembered"):
            self.result = await self._probe(annotator)
            if self.result["status"] in self.FINDINGS:
                store.set_meta_json(self.META + json.dumps(annotator.identity, sort_keys=True), self.result)
        measured = self.result.get("audio_tokens_per_second_measured")
        if measured:
            annotator.learn_audio_rate(measured)
        where = f"{getattr(backend, 'base_url', backend.name)} (model {backend.model})"
        if self.result["status"] == "ignores audio":
            tokens = self.result["prompt_tokens_with_audio"]
            if not self.allow_ignored:
                raise BackendError(
                    f"{where} ignores audio: a request with {self.example.seconds:g} s of audio counted "
                    f"{tokens} prompt tokens, the same request without it {self.result['prompt_tokens_without_audio']}:"
                    " the server dropped the audio without saying so, and every label would come from the text "
                    "alone. Use a model that hears audio, or pass --allow-ignored-audio to annotate anyway"
                )
            print(
                f"melt: warning: {where} ignores the audio (same prompt tokens with and without it); going on "
                "as --allow-ignored-audio asks: the labels come from the text alone",
                file=sys.stderr,
                flush=True,
            )
        elif self.result["status"] == "unknown":
            print(
                f"melt: warning: {where} reports no token usage, so melt cannot tell whether it hears the audio",
                file=sys.stderr,
                flush=True,
            )

    async def _probe(self, annotator: Annotator) -> dict[str, Any]:
        backend = annotator.backend
        with_audio = annotator.probe_request(
            [{"role": "user", "content": [{"type": "text", "text": PROBE_TEXT}, self.example]}]
        )
        without_audio = annotator.probe_request(
            [{"role": "user", "content": [{"type": "text", "text": PROBE_TEXT}]}]
        )
        where = f"{getattr(backend, 'base_url', backend.name)} (model {backend.model})"
        try:
            heard = await annotator.probe(with_audio)
        except (BackendError, RetryableError, RequestFailed) as exc:
            reason = getattr(exc, "reason", None) or str(exc)
            if any(word in reason.lower() for word in _AUDIO_WORDS):
                raise BackendError(
                    f"{where} does not take audio (an input_audio content part): the server said: {reason}. "
                    "Use a model that hears audio (e.g. an OpenAI audio model, Qwen2-Audio or Qwen2.5-Omni on "
                    "vLLM), or leave out --audio"
                ) from None
            if isinstance(exc, BackendError):
                raise
            return {"status": f"not done ({reason}); the run went on"}
        try:
            deaf = await annotator.probe(without_audio)
        except (RetryableError, RequestFailed) as exc:
            return {"status": f"not done ({getattr(exc, 'reason', exc)}); the run went on"}
        result = {
            "probe_seconds": self.example.seconds,
            "prompt_tokens_with_audio": heard.prompt_tokens,
            "prompt_tokens_without_audio": deaf.prompt_tokens,
        }
        if heard.prompt_tokens == 0 and deaf.prompt_tokens == 0:
            return {"status": "unknown", **result}
        if heard.prompt_tokens <= deaf.prompt_tokens:
            return {"status": "ignores audio", **result}
        per_second = (heard.prompt_tokens - deaf.prompt_tokens) / self.example.seconds
        return {"status": "hears audio", **result, "audio_tokens_per_second_measured": round(per_second, 2)}
