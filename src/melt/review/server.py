"""`melt preference serve`: the blind A/B preference test as a small web app (Starlette on uvicorn).

What the server guarantees (docs/review.md, "Security"):

* Only the media files listed in the pairs table are served, each by the participant's item position; no path
  from a request ever reaches the file system. The files are resolved, checked and hashed at start.
* A participant logs in with a code and gets a random session token in an HttpOnly, SameSite=Strict cookie.
  Every participant URL names the participant; a session of another participant gets 403. No endpoint returns
  an answer, so nobody can read anyone's choices, their own included.
* Answers are written to SQLite at once, one row per participant and item; a second answer to the same item is
  refused (409) and the first stands.
* Requests that change state must be JSON (a cross-site form cannot send it); with a loopback host, requests
  naming another Host are refused (DNS rebinding).
"""

from __future__ import annotations

import ipaddress
import json
import os
import re
import socket
import stat
import unicodedata
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import pandas as pd
from pydantic import BaseModel, ConfigDict, Field

from melt.errors import MeltError
from melt.review.pairs import MEDIA_TYPES, read_pairs
from melt.review.results import PreferenceStore

COOKIE = "melt_session"
#: Letters and digits of any script, `_`, `-` and `.`; codes are compared case-insensitively.
_CODE = re.compile(r"[\w.-]{1,64}")
MAX_BODY = 4096
_STATIC = {
    "/": ("preference.html", "text/html; charset=utf-8"),
    "/static/preference.js": ("preference.js", "text/javascript; charset=utf-8"),
    "/static/preference.css": ("preference.css", "text/css; charset=utf-8"),
}
_SECURITY_HEADERS = [
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"no-referrer"),
    (b"x-frame-options", b"DENY"),
    (
        b"content-security-policy",
        b"default-src 'self'; media-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'; "
        b"connect-src 'self'; frame-ancestors 'none'; form-action 'self'; base-uri 'none'",
    ),
    (b"cache-control", b"no-store"),
]


class ServeSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    host: str = Field("127.0.0.1", description="address to listen on; 0.0.0.0 opens the test to the network")
    port: int = Field(8000, ge=0, le=65535)
    allow_neither: bool = Field(True, description='offer "neither" besides the two descriptions')
    codes: str | None = Field(None, description="file of allowed participant codes, one per line")
    title: str = Field("Which description fits the clip better?", description="heading of the page")


def participant_code(raw: object) -> str | None:
    """The canonical form of a participant code (NFKC, trimmed, case-folded), or None if it is not one."""
    if not isinstance(raw, str):
        return None
    code = unicodedata.normalize("NFKC", raw).strip().casefold()
    if not _CODE.fullmatch(code) or set(code) <= {"."}:
        return None
    return code


def read_codes(path: str | Path) -> set[str]:
    path = Path(path)
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError as exc:
        raise MeltError(f"cannot read the codes file ({exc.strerror})", file=path) from exc
    except UnicodeDecodeError as exc:
        raise MeltError("the codes file is not UTF-8 text", file=path) from exc
    codes = set()
    for number, line in enumerate(lines, start=1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        code = participant_code(line)
        if code is None:
            raise MeltError(
                f"{line.strip()!r} is not a usable code (letters, digits, _ - . ; at most 64)",
                file=path,
                row=number,
            )
        codes.add(code)
    if not codes:
        raise MeltError("the codes file lists no code", file=path)
    return codes


@dataclass
class Media:
    path: Path
    media_type: str
    #: (device, inode, size, mtime) when the test started: a file swapped or changed since is not served
    identity: tuple[int, int, int, int]

    @property
    def kind(self) -> str:
        return self.media_type.split("/", 1)[0]

    def unchanged(self) -> bool:
        try:
            return _identity(self.path) == self.identity
        except OSError:
            return False


def _identity(path: Path) -> tuple[int, int, int, int]:
    info = os.lstat(path)
    if not stat.S_ISREG(info.st_mode):
        raise OSError(f"not a regular file: {path}")
    return info.st_dev, info.st_ino, info.st_size, info.st_mtime_ns


def resolve_media(pairs: pd.DataFrame, source: str | Path) -> dict[int, Media]:
    """item -> the real file to serve, checked now: it exists, is a regular file, has the hash of the pairs table."""
    from melt.provenance import file_sha256

    media = {}
    for row in pairs.itertuples(index=False):
        try:
            path = Path(str(row.media)).resolve(strict=True)
        except OSError as exc:
            raise MeltError(
                f"media file not found: {row.media}", file=source, row=int(row.item) + 1, column="media"
            ) from exc
        if not path.is_file():
            raise MeltError(f"not a regular file: {path}", file=source, row=int(row.item) + 1, column="media")
        media_type = MEDIA_TYPES.get(path.suffix.lower()) or MEDIA_TYPES.get(
            Path(str(row.media)).suffix.lower()
        )
        if media_type is None:
            raise MeltError(
                f"not a playable media type: {path.name}", file=source, row=int(row.item) + 1, column="media"
            )
        if pd.notna(row.media_sha256) and file_sha256(path) != row.media_sha256:
            raise MeltError(
                f"{path} changed since the pairs table was made (sha256 differs); rebuild the pairs",
                file=source,
                row=int(row.item) + 1,
                column="media_sha256",
            )
        media[int(row.item)] = Media(path, media_type, _identity(path))
    return media


def _static(name: str) -> bytes:
    return resources.files("melt.review").joinpath("static", name).read_bytes()


def _loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _host_name(header: str) -> str:
    if header.startswith("["):
        return header[1 : header.find("]")]
    return header.rsplit(":", 1)[0] if header.count(":") == 1 else header


def create_app(
    store: PreferenceStore,
    pairs: pd.DataFrame,
    media: dict[int, Media],
    settings: ServeSettings,
    *,
    codes: set[str] | None = None,
):
    """The Starlette application of the test."""
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import FileResponse, JSONResponse, Response
    from starlette.routing import Route

    total = len(pairs)
    descriptions = {
        int(r.item): (str(r.description_a), str(r.description_b), None if pd.isna(r.text) else str(r.text))
        for r in pairs.itertuples(index=False)
    }
    pages = {path: (_static(name), media_type) for path, (name, media_type) in _STATIC.items()}

    def error(status: int, message: str) -> JSONResponse:
        return JSONResponse({"error": message}, status_code=status)

    def state(participant: str) -> dict[str, Any]:
        return {
            "participant": participant,
            "total": total,
            "answered": store.answered(participant),
            "neither": settings.allow_neither,
            "title": settings.title,
        }

    async def page(request: Request) -> Response:
        body, media_type = pages[request.url.path]
        return Response(body, media_type=media_type)

    async def json_body(request: Request) -> dict[str, Any] | JSONResponse:
        if request.headers.get("content-type", "").split(";")[0].strip().lower() != "application/json":
            return error(415, "send JSON (Content-Type: application/json)")
        body = await request.body()
        if len(body) > MAX_BODY:
            return error(413, "request body too large")
        try:
            data = json.loads(body)
        except ValueError:
            return error(400, "the body is not valid JSON")
        if not isinstance(data, dict):
            return error(400, "the body must be a JSON object")
        return data

    async def session(request: Request) -> Response:
        if request.method == "GET":
            participant = store.participant_of(request.cookies.get(COOKIE))
            if participant is None:
                return error(401, "no session: enter your participant code")
            return JSONResponse(state(participant))
        data = await json_body(request)
        if isinstance(data, JSONResponse):
            return data
        code = participant_code(data.get("code"))
        if code is None:
            return error(400, "a participant code is 1 to 64 letters, digits, '_', '-' or '.'")
        if codes is not None and code not in codes:
            return error(403, "unknown participant code")
        token = store.enrol(code, pairs)
        response = JSONResponse(state(code))
        response.set_cookie(
            COOKIE, token, httponly=True, samesite="strict", path="/", max_age=60 * 60 * 24 * 60
        )
        return response

    def owner(request: Request) -> str | JSONResponse:
        """The participant of the URL, if the request's session is theirs."""
        current = store.participant_of(request.cookies.get(COOKIE))
        if current is None:
            return error(401, "no session: enter your participant code")
        if participant_code(request.path_params["participant"]) != current:
            return error(403, "this session belongs to another participant")
        return current

    async def next_item(request: Request) -> Response:
        participant = owner(request)
        if isinstance(participant, JSONResponse):
            return participant
        assignment = store.next_assignment(participant)
        answered = store.answered(participant)
        if assignment is None:
            return JSONResponse({"done": True, "total": total, "answered": answered})
        a, b, text = descriptions[assignment.item]
        return JSONResponse(
            {
                "done": False,
                "position": assignment.position,
                "total": total,
                "answered": answered,
                "descriptions": [a, b] if assignment.a_first else [b, a],
                "text": text,
                "kind": media[assignment.item].kind,
                "media": f"/api/participants/{request.path_params['participant']}/items/{assignment.position}/media",
                "neither": settings.allow_neither,
            }
        )

    async def item_media(request: Request) -> Response:
        participant = owner(request)
        if isinstance(participant, JSONResponse):
            return participant
        position = request.path_params["position"]
        assignment = store.assignment(participant, position) if 0 <= position < total else None
        if assignment is None:
            return error(404, "no such item")
        file = media[assignment.item]
        if not file.unchanged():
            return error(410, "the media file changed since the test started")
        return FileResponse(file.path, media_type=file.media_type, content_disposition_type="inline")

    async def answer(request: Request) -> Response:
        participant = owner(request)
        if isinstance(participant, JSONResponse):
            return participant
        data = await json_body(request)
        if isinstance(data, JSONResponse):
            return data
        position, slot = data.get("position"), data.get("choice")
        if not isinstance(position, int) or isinstance(position, bool) or not 0 <= position < total:
            return error(400, "position must be the number of an item")
        allowed = ("first", "second", "neither") if settings.allow_neither else ("first", "second")
        if slot not in allowed:
            return error(400, f"choice must be one of {', '.join(allowed)}")
        assignment = store.assignment(participant, position)
        if assignment is None:
            return error(404, "no such item")
        choice = "neither" if slot == "neither" else "a" if (slot == "first") == assignment.a_first else "b"
        if not store.answer(participant, position, choice):
            return error(409, "this item is already answered; the first answer stands")
        return JSONResponse({"answered": store.answered(participant), "total": total}, status_code=201)

    routes = [Route(path, page, methods=["GET"]) for path in _STATIC]
    routes += [
        Route("/api/session", session, methods=["GET", "POST"]),
        Route("/api/participants/{participant}/next", next_item, methods=["GET"]),
        Route("/api/participants/{participant}/items/{position:int}/media", item_media, methods=["GET"]),
        Route("/api/participants/{participant}/answers", answer, methods=["POST"]),
    ]
    app = Starlette(routes=routes)
    return _guard(app, loopback_only=_loopback(settings.host))


def _guard(app, *, loopback_only: bool):
    """Security headers on every response; with a loopback host, refuse requests naming another host."""

    async def guarded(scope, receive, send):
        if scope["type"] != "http":
            return await app(scope, receive, send)
        if loopback_only:
            host = dict(scope["headers"]).get(b"host", b"").decode("latin-1")
            if not _loopback(_host_name(host).lower()):
                body = b'{"error": "unexpected Host header"}'
                await send(
                    {
                        "type": "http.response.start",
                        "status": 421,
                        "headers": [(b"content-type", b"application/json"), *_SECURITY_HEADERS],
                    }
                )
                await send({"type": "http.response.body", "body": body})
                return None

        async def send_with_headers(message):
            if message["type"] == "http.response.start":
                message = {**message, "headers": [*message.get("headers", []), *_SECURITY_HEADERS]}
            await send(message)

        return await app(scope, receive, send_with_headers)

    return guarded


def listen(host: str, port: int) -> socket.socket:
    """A listening socket, or one clear error (address in use, no such address, not permitted)."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        raise MeltError(f"cannot listen on {host}:{port}: {exc.strerror}") from exc
    family, kind, proto, _, address = infos[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
        sock.listen(128)
    except OSError as exc:
        sock.close()
        raise MeltError(f"cannot listen on {host}:{port}: {exc.strerror}") from exc
    sock.set_inheritable(True)
    return sock


def serve(pairs_path: str | Path, db_path: str | Path, settings: ServeSettings, *, announce=print) -> None:
    """Run the test until interrupted. Raises MeltError before listening if anything is wrong."""
    try:
        import uvicorn
    except ImportError as exc:
        raise MeltError(
            "the preference test needs the `review` extra: pip install 'melt-toolkit[review]'"
        ) from exc

    pairs = read_pairs(pairs_path)
    media = resolve_media(pairs, pairs_path)
    codes = read_codes(settings.codes) if settings.codes else None
    store = PreferenceStore(db_path)
    try:
        store.bind(pairs, pairs_path, allow_neither=settings.allow_neither)
        sock = listen(settings.host, settings.port)
        host, port = sock.getsockname()[:2]
        shown = f"[{host}]" if ":" in host else host
        announce(
            f"serving {len(pairs)} items at http://{shown}:{port}/ ; answers go to {db_path}; Ctrl-C stops"
        )
        if not _loopback(settings.host):
            announce(f"listening on {settings.host}: anyone who can reach this machine can open the test")
        app = create_app(store, pairs, media, settings, codes=codes)
        config = uvicorn.Config(app, log_level="warning", access_log=False, lifespan="off")
        uvicorn.Server(config).run(sockets=[sock])
    finally:
        store.close()
