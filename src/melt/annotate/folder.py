"""A run folder belongs to one process at a time and to one configuration.

`RunLock` is `run.lock` in the folder, held with an exclusive `flock` for as long as a run works there and
naming its holder (PID, host, start). The kernel drops the lock when its process dies, however it dies, so a
lock left by a killed run is taken over by the next one; a second live process gets a `MeltError` naming the
holder.

`folder_identity` is what decides the replies stored in a folder: who answers (the backend's identity: server
URL without credentials, model, the model file's sha256 for a local GGUF), the prompt (template hash, schema,
labels) and the request settings. `claim_folder` records it in the store on first use and refuses a different
one later, naming the settings that differ, unless forced. Live runs and Batch API runs of the same server and
settings have the same identity: they share the folder, the store and its request keys.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import socket
import time
from pathlib import Path
from typing import Any

from melt.errors import MeltError

LOCK_NAME = "run.lock"
IDENTITY_META = "identity"
#: Temporary files a run writes before renaming them into place; any found under the lock are stale.
TEMPORARY_PATTERNS = (
    ".annotations.parquet.*.tmp",
    ".annotations.csv.*.tmp",
    ".votes.parquet.*.tmp",
    ".run.json.*.tmp",
)


class RunLock:
    """`with RunLock(folder):` holds the folder for this process."""

    def __init__(self, folder: str | Path):
        self.folder = Path(folder)
        self.path = self.folder / LOCK_NAME
        self._fd: int | None = None

    def acquire(self) -> RunLock:
        try:
            return self._acquire()
        except OSError as exc:  # a full disk, a read-only folder: one line naming the lock file
            raise MeltError(
                f"cannot take the run folder's lock: {exc.strerror or exc}", file=self.path
            ) from exc

    def _acquire(self) -> RunLock:
        self.folder.mkdir(parents=True, exist_ok=True)
        for _ in range(5):
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = _read_holder(fd)
                os.close(fd)
                raise MeltError(
                    f"the run folder is in use by {holder}; wait for it to finish (or stop it), or use another "
                    "--out",
                    file=self.folder,
                ) from None
            except OSError:
                os.close(fd)
                raise
            # The file may have been removed and recreated between open and flock (another run releasing it):
            # a lock on a removed file would hold nothing.
            try:
                same = os.fstat(fd).st_ino == os.stat(self.path).st_ino
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)
        else:
            raise MeltError("cannot take the run folder's lock: it keeps being replaced", file=self.path)
        holder = {"pid": os.getpid(), "host": socket.gethostname(), "started": time.time()}
        try:
            os.ftruncate(fd, 0)
            os.pwrite(fd, (json.dumps(holder) + "\n").encode(), 0)
        except OSError:
            os.close(fd)
            raise
        self._fd = fd
        return self

    def release(self) -> None:
        if self._fd is None:
            return
        # Emptied, not removed: removing it would let a process that opened it just now lock a file nobody sees.
        with contextlib.suppress(OSError):
            os.ftruncate(self._fd, 0)
        os.close(self._fd)
        self._fd = None

    def __enter__(self) -> RunLock:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()


def _read_holder(fd: int) -> str:
    try:
        holder = json.loads(os.pread(fd, 4096, 0) or b"{}")
        pid, host = holder["pid"], holder.get("host")
        started = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(holder["started"]))
    except (ValueError, KeyError, TypeError, OSError):
        return "another process"
    where = f" on {host}" if host and host != socket.gethostname() else ""
    return f"process {pid}{where} (melt, since {started})"


def remove_stale_temporaries(folder: Path) -> list[Path]:
    """Remove temporary files of outputs that an earlier process never renamed into place (it was killed while
    writing). Only call this while holding the folder's lock."""
    removed = []
    for pattern in TEMPORARY_PATTERNS:
        for path in folder.glob(pattern):
            with contextlib.suppress(OSError):
                path.unlink()
                removed.append(path)
    return removed


def prompt_name(template: str) -> str:
    """A template as runs record it: a built-in by its name, a template file by its file name (the same file
    given another way is the same prompt; its content is in the template hash)."""
    from melt.prompts import BUILTIN_TEMPLATES, PANEL_TEMPLATES

    return template if template in BUILTIN_TEMPLATES + PANEL_TEMPLATES else Path(template).name


def folder_identity(config: Any, prompt: Any, backend_identity: dict[str, Any]) -> dict[str, Any]:
    """Everything that decides the replies of a run (an `AnnotateConfig`, its `PromptConfig`, the backend's
    `identity()`). Settings that only decide how many are asked, how fast, or at what cost are left out
    (samples, limit, concurrency, timeouts, retries, the budget, whether invalid answers are re-asked; a panel's
    size and weights). A panel's personas and temperatures and the audio settings are in it only when the run
    has them, so the identity of a plain run is what it always was."""
    from melt.annotate.audio import audio_settings
    from melt.annotate.panel import panel_of

    identity = {
        "backend": dict(backend_identity),
        "prompt": prompt_name(prompt.template),
        "prompt_hash": prompt.template_hash(),
        "schema": prompt.schema_kind,
        "labels": list(config.labels.labels),
        # Only where the template shows context lines: otherwise the requests are the same whatever the number.
        "context_turns": config.context_turns if "context" in prompt.load().placeholders() else None,
        "temperature": config.temperature,
        "max_tokens": config.max_tokens,
        "seed": config.seed,
        "logprobs": config.logprobs,
        "top_logprobs": config.top_logprobs if config.logprobs else None,
        "response_format": config.response_format,
    }
    panel = panel_of(config)
    if panel is not None:
        identity["panel"] = panel.identity()
    audio = audio_settings(config)
    if audio is not None:
        identity["audio"] = audio
    return identity


def _flatten(identity: dict[str, Any]) -> dict[str, Any]:
    flat = {}
    for name, value in identity.items():
        if isinstance(value, dict):
            flat.update({f"{name}.{k}" if k == "kind" else k: v for k, v in value.items()})
        else:
            flat[name] = value
    return flat


#: How a differing setting is named to the user (the flag that sets it).
_SETTING_NAMES = {"base_url": "base_url (--base-url)", "model": "model (--model)",
                  "model_sha256": "model file (its sha256)", "backend.kind": "backend",
                  "prompt": "prompt (--prompt)", "prompt_hash": "prompt template (its text, labels or synonyms)",
                  "schema": "schema (--schema)", "context_turns": "context_turns (--context-turns)",
                  "temperature": "temperature (--temperature)", "max_tokens": "max_tokens (--max-tokens)",
                  "seed": "seed (--seed)", "logprobs": "logprobs (--no-logprobs)",
                  "panel": "panel (--panel)", "panel_personas": "the panel's personas (--panel)",
                  "panel_temperatures": "the panel's temperatures (--panel)",
                  "audio_max_seconds": "audio length (--max-audio-seconds)", "audio_long": "--long-audio",
                  "audio_sample_rate": "audio sample rate"}  # fmt: skip


def differences(recorded: dict[str, Any], current: dict[str, Any]) -> list[str]:
    """'setting: was X, now Y' for each setting that differs, most telling first."""
    before, now = _flatten(recorded), _flatten(current)
    # A setting recorded by an older melt that no longer decides replies (e.g. repair) is no difference, nor is
    # one that it did not record yet while it has no value now. response_format `auto` is what the server takes:
    # the request keys hold the format actually sent, so a reply of another format is never reused.
    changed = [
        name
        for name in now
        if before.get(name) != now[name] and (name in before or now[name] is not None)
        and not (name == "response_format" and "auto" in (before.get(name), now[name]))
    ]  # fmt: skip
    # The template hash changes with any prompt change; name it only when nothing more precise differs.
    if len(changed) > 1 and "prompt_hash" in changed:
        changed.remove("prompt_hash")
    return [
        f"{_SETTING_NAMES.get(name, name)} was {_shown(before.get(name))}, now {_shown(now.get(name))}"
        for name in changed
    ]


def _shown(value: Any) -> str:
    if isinstance(value, str) and len(value) == 64:
        return value[:12] + "…"
    return json.dumps(value, ensure_ascii=False)


def check_folder(store: Any, identity: dict[str, Any], *, force: bool = False) -> dict[str, Any] | None:
    """The identity recorded in the folder's store when it differs from `identity` (None when it is the same or
    none is recorded); a `MeltError` naming the differing settings unless `force`. Writes nothing."""
    recorded = store.meta_json(IDENTITY_META)
    if not isinstance(recorded, dict) or recorded == identity:
        return None
    if not store.has_replies():
        return None  # nothing to protect (a first attempt that never got a reply, e.g. to a wrong URL)
    changed = differences(recorded, identity)
    if not changed:
        return None  # e.g. response_format auto, where the server's format decides the requests
    if not force:
        raise MeltError(
            "this run folder holds replies of another configuration: "
            + "; ".join(changed)
            + ". Use a new --out for this configuration, or --force-reuse to reuse this folder's replies "
            "(stored replies are reused only where the request is the same)",
            file=store.path.parent,
        )
    return recorded


def claim_folder(store: Any, identity: dict[str, Any], *, force: bool = False) -> dict[str, Any] | None:
    """Record `identity` as the folder's, or check it against the one recorded (`check_folder`). Returns the
    identity it replaced (with `force`), else None. A store from before identities were recorded is adopted."""
    replaced = check_folder(store, identity, force=force)
    if store.meta_json(IDENTITY_META) != identity:
        store.set_meta_json(IDENTITY_META, identity)
    return replaced
