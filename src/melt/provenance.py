"""How an output was made, recorded the same way in every summary.json, run.json and report.

`record(...)` gives the block every output carries under the key "provenance": the melt version, the date (UTC),
the exact command line (or, used from Python, the API call), the inputs as path, size and sha256, and the
settings. `melt.analysis.report.write_report` turns it into the report's "How this was made" section.

The command line is known while a `melt` command runs (`melt.cli` sets it through `running_command`); called
from Python, the function that writes the output names itself with `api_call`. Credentials never reach it: URLs
in the command line lose their user, password and query values (`safe_url`), and API keys come from the
environment, which is not recorded.

Large inputs (a corpus of gigabytes, a GGUF model) are hashed once: `file_sha256` remembers the hashes of big
files in melt's cache directory, by path, size, inode and modification times.
"""

from __future__ import annotations

import contextlib
import contextvars
import hashlib
import json
import os
import platform
import re
import shlex
import sys
from collections.abc import Callable, Iterator, Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from melt import __version__

_COMMAND_LINE: contextvars.ContextVar[str | None] = contextvars.ContextVar("melt_command_line", default=None)
#: Files at least this large have their sha256 remembered in the cache; smaller ones are hashed each time
#: (faster than reading and writing the cache), so the cache holds a few models and corpora, not every table.
CACHED_HASH_BYTES = 16 << 20
HASH_CACHE = "sha256.json"


def cache_dir() -> Path:
    """`$MELT_CACHE`, else `$XDG_CACHE_HOME/melt`, else `~/.cache/melt`."""
    if env := os.environ.get("MELT_CACHE"):
        return Path(env).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg).expanduser() if xdg else Path.home() / ".cache") / "melt"


def safe_url(url: str) -> str:
    """`url` without credentials (user, password) and with its query's values masked: fit for errors, logs and
    metadata."""
    from yarl import URL

    try:
        parsed = URL(url)
    except (ValueError, TypeError):
        return re.sub(r"//[^/@]*@", "//", str(url))
    if parsed.user is not None or parsed.password is not None:
        parsed = parsed.with_user(None).with_password(None)
    if parsed.query_string:
        parsed = parsed.with_query({k: "***" for k in parsed.query})
    return str(parsed)


#: Query parameters whose values are credentials (Azure Functions' `code`, gateways' `key`, signed URLs' `sig`).
_SECRET_PARAMETER = re.compile(r"key|token|secret|pass|auth|sig|code|credential", re.IGNORECASE)


def identity_url(url: str) -> str:
    """`url` as a run folder's identity records it: without credentials, its query kept (`?api-version=` or a
    gateway's routing decide the replies) but for the values of parameters named like credentials."""
    from yarl import URL

    parsed = URL(url)
    if parsed.user is not None or parsed.password is not None:
        parsed = parsed.with_user(None).with_password(None)
    if parsed.query_string:
        parsed = parsed.with_query(
            [(k, "***" if _SECRET_PARAMETER.search(k) else v) for k, v in parsed.query.items()]
        )
    return str(parsed)


def _safe_argument(argument: str) -> str:
    if "://" not in argument:
        return argument
    name, equals, value = argument.partition("=")
    if equals and "://" in value and "://" not in name:
        return f"{name}={safe_url(value)}"
    return safe_url(argument)


@contextlib.contextmanager
def running_command(argv: Sequence[str]) -> Iterator[str]:
    """While the block runs, outputs record `argv` (credentials in URLs masked) as their command."""
    line = shlex.join(_safe_argument(str(a)) for a in argv)
    token = _COMMAND_LINE.set(line)
    try:
        yield line
    finally:
        _COMMAND_LINE.reset(token)


def command_line() -> str | None:
    """The `melt ...` command line being run, or None outside the command line."""
    return _COMMAND_LINE.get()


def api_call(function: Callable[..., Any], /, *arguments: Any, **keywords: Any) -> str:
    """How a Python caller called `function`, for outputs made outside the command line:
    `melt.analysis.compare.write_comparison(<Comparison: 7024 pairs>, 'cmp/')`."""
    shown = [_short(a) for a in arguments] + [f"{k}={_short(v)}" for k, v in keywords.items()]
    return f"{function.__module__}.{function.__qualname__}({', '.join(shown)})"


def _short(value: Any) -> str:
    import pandas as pd

    if isinstance(value, Path):
        return repr(str(value))
    if isinstance(value, pd.DataFrame):
        return f"<DataFrame: {len(value)} rows, columns {', '.join(map(str, value.columns[:8]))}>"
    if isinstance(value, pd.Series):
        return f"<Series {value.name!r}: {len(value)} values>"
    text = repr(value)
    if len(text) <= 120 and "\n" not in text:
        return text
    if isinstance(value, str | int | float | list | tuple | dict):
        return text[:117] + "..."
    return f"<{type(value).__name__}>"  # a settings model or a result: the rest of the record holds it


def file_sha256(path: str | Path) -> str:
    """sha256 of a file's bytes. Files of `CACHED_HASH_BYTES` or more are hashed once: the digest is remembered in
    melt's cache by path, size, inode and modification times, and hashed again when any of these changes."""
    path = Path(path)
    if path.stat().st_size >= CACHED_HASH_BYTES:
        return cached_sha256(path)
    return _digest(path)


def _digest(path: Path) -> str:
    with open(path, "rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()


def cached_sha256(path: str | Path) -> str:
    """sha256 of a (large) file, remembered in melt's cache by path, size, inode and modification times, so a
    multi-GB model is hashed once, not at every run; a file changed in any of these is hashed again."""
    path = Path(path).absolute()
    stat = path.stat()
    fingerprint = [stat.st_size, stat.st_ino, stat.st_mtime_ns, stat.st_ctime_ns]
    cache_file = cache_dir() / HASH_CACHE
    try:
        cache = json.loads(cache_file.read_text(encoding="utf-8"))
        if not isinstance(cache, dict):
            cache = {}
    except (OSError, ValueError):
        cache = {}
    entry = cache.get(str(path))
    if (
        isinstance(entry, dict)
        and entry.get("fingerprint") == fingerprint
        and isinstance(entry.get("sha256"), str)
    ):
        return entry["sha256"]
    digest = _digest(path)
    # Entries of files that are gone are dropped, so the cache does not grow with every deleted file.
    cache = {name: value for name, value in cache.items() if os.path.exists(name)}
    cache[str(path)] = {"fingerprint": fingerprint, "sha256": digest}
    # Written whole under a private name and renamed: concurrent runs lose an entry at worst, never the file.
    tmp = cache_file.with_name(f".{HASH_CACHE}.{os.getpid()}.tmp")
    try:
        cache_file.parent.mkdir(parents=True, exist_ok=True)
        tmp.write_text(json.dumps(cache), encoding="utf-8")
        os.replace(tmp, cache_file)
    except OSError:
        tmp.unlink(missing_ok=True)  # an unwritable cache only costs hashing again next time
    return digest


def describe_input(path: str | Path) -> dict[str, Any]:
    """An input as provenance records it: absolute path, and for a file its size and sha256."""
    path = Path(path).expanduser()
    shown = str(path.resolve())
    if path.is_dir():
        return {"path": shown, "kind": "folder"}
    if not path.is_file():
        return {"path": shown, "kind": "missing"}
    return {"path": shown, "bytes": path.stat().st_size, "sha256": file_sha256(path)}


def record(
    *,
    inputs: Mapping[str, str | Path | Mapping[str, Any] | None] | None = None,
    settings: Any = None,
    api: str | None = None,
    **details: Any,
) -> dict[str, Any]:
    """The provenance block of an output. `inputs`: role -> file, or its `describe_input` when the caller needed
    the hash before (None entries are left out); `settings`: a
    pydantic model or a mapping; `api`: the Python call that made the output (`api_call`), used when no `melt`
    command is running; `details`: anything else worth stating (a start time, a device), kept as given."""
    if settings is not None and hasattr(settings, "model_dump"):
        settings = settings.model_dump(mode="json")
    return {
        "melt_version": __version__,
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "command": command_line() or api or "python " + shlex.join(sys.argv),
        "python": platform.python_version(),
        "inputs": {
            name: dict(path) if isinstance(path, Mapping) else describe_input(path)
            for name, path in (inputs or {}).items()
            if path is not None
        },
        "settings": _jsonable(dict(settings or {})),
        **_jsonable(details),
    }


def _jsonable(value: Any) -> Any:
    """`value` with paths, numpy numbers, sets and tuples turned into what JSON holds."""
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [_jsonable(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, datetime):
        return value.isoformat(timespec="seconds")
    if hasattr(value, "item") and callable(value.item):  # numpy scalars
        return value.item()
    if hasattr(value, "model_dump"):
        return value.model_dump(mode="json")
    return value


__all__ = [
    "api_call",
    "cache_dir",
    "cached_sha256",
    "command_line",
    "describe_input",
    "file_sha256",
    "identity_url",
    "record",
    "running_command",
    "safe_url",
]
