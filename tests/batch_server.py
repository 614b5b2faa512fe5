"""OpenAI's Batch API on 127.0.0.1, for tests: `/v1/files` and `/v1/batches` on top of the chat server of
tests/openai_server.py (which keeps answering `/v1/chat/completions` and `/v1/models`).

Files: `POST /v1/files` (multipart, purpose `batch`), `GET /v1/files` (newest first, `after`, `limit`),
`GET /v1/files/{id}`, `GET /v1/files/{id}/content`. Batches: `POST /v1/batches`, `GET /v1/batches/{id}`,
`POST /v1/batches/{id}/cancel`, `GET /v1/batches` (newest first, `after`, `limit`, `has_more`).

A batch lives by the clock: `validating` for `validating` seconds, then `in_progress` for `in_progress` seconds
(its request counts growing), `finalizing` for `finalizing` seconds, then `completed`; a cancelled one is
`cancelling` for `cancelling` seconds, then `cancelled` with the lines it had done by then. Validation checks
what OpenAI checks: every line JSON with a unique `custom_id`, method POST, the batch's endpoint as url, one
model, and at most `max_requests` lines and `max_bytes` bytes; a file that breaks them makes a `failed` batch
whose `errors` name the line. The replies are those the chat server gives (the same markers, the same answer,
usage and logprobs); the output file lists them in shuffled order. Markers in an utterance's text script a
request's fate in a batch:

    [[batch-error]]        the first time in a batch: a 500 line in the error file (sent again, it is answered)
    [[batch-error-always]] every time: a 400 line in the error file
    [[expire]]             the first time: its batch expires, this request unfinished (`batch_expired` in the
                           error file), the others done
    [[invalid-line]]       the first time: its batch fails validation naming this line

Server-wide `faults` (a set) break the files: "duplicate-lines" (every output line twice), "unknown-line" (an
output line with a custom_id nobody sent), "malformed-body" (one output line whose body is not a chat
completion), "broken-line" (one output line that is not JSON), "stuck-finalizing" (batches never leave
`finalizing`), "refuse-create" (creating a batch: HTTP 400), "drop-create-reply" (the first batch created is
not answered: the connection closes); `list_lag` hides batches younger than that many seconds from the list; `download_failures` makes the first N content downloads fail with HTTP 500.

Tests stop a client at a named point with `hold(point)`: the server blocks there until `release(point)`, and
`reached(point)` tells when it got there. Points: "uploading" (a file arrived, not stored yet), "upload" (the
file is stored, the reply withheld), "create"
(the request arrived, nothing created yet), "created" (the batch exists, the reply withheld), "retrieve"
(a status request arrived), "download" (half a result file sent). `calls` logs every Batch API request.
"""

from __future__ import annotations

import contextlib
import json
import random
import re
import threading
import time
import uuid
from dataclasses import dataclass, field
from email import policy
from email.parser import BytesParser
from typing import Any
from urllib.parse import parse_qs, urlsplit

from openai_server import _MARKER, FakeOpenAIServer, _Handler, _target_line, request_key

ENDPOINT = "/v1/chat/completions"
_BATCH_PATH = re.compile(r"^/v1/batches/(?P<id>[^/]+)(?P<cancel>/cancel)?$")
_FILE_PATH = re.compile(r"^/v1/files/(?P<id>[^/]+)(?P<content>/content)?$")
POINTS = ("uploading", "upload", "create", "created", "retrieve", "download")


@dataclass
class StoredFile:
    id: str
    filename: str
    purpose: str
    content: bytes
    created_at: int
    order: int

    def to_json(self) -> dict[str, Any]:
        return {"id": self.id, "object": "file", "bytes": len(self.content), "created_at": self.created_at,
                "filename": self.filename, "purpose": self.purpose, "status": "processed"}  # fmt: skip


@dataclass
class Batch:
    id: str
    input_file_id: str
    metadata: dict[str, Any]
    created: float
    order: int
    lines: list[dict[str, Any]]
    #: validation errors found in the input file (the batch fails when validation ends)
    errors: list[dict[str, Any]]
    expires: bool
    cancel_at: float | None = None
    #: set once the batch has ended: status, output and error file ids, counts
    ended: dict[str, Any] | None = None
    ids: list[str] = field(default_factory=list)


class FakeBatchServer(FakeOpenAIServer):
    def __init__(
        self,
        *,
        validating: float = 0.2,
        in_progress: float = 0.6,
        finalizing: float = 0.2,
        cancelling: float = 0.2,
        max_requests: int = 50_000,
        max_bytes: int = 200_000_000,
        faults: set[str] | frozenset[str] = frozenset(),
        download_failures: int = 0,
        list_lag: float = 0.0,
        shuffle_seed: int = 0,
        **options: Any,
    ):
        super().__init__(**options)
        self.validating, self.in_progress, self.finalizing, self.cancelling = (
            validating, in_progress, finalizing, cancelling
        )  # fmt: skip
        self.max_requests = max_requests
        self.max_bytes = max_bytes
        self.faults = set(faults)
        self.download_failures = download_failures
        self.list_lag = list_lag
        self._shuffle = random.Random(shuffle_seed)
        self.files: dict[str, StoredFile] = {}
        self.batches: dict[str, Batch] = {}
        self.calls: list[dict[str, Any]] = []
        self._order = 0
        self._first_file: dict[str, str] = {}
        self._marks = threading.Lock()
        self._holds: dict[str, threading.Event] = {}
        self._dropped: set[str] = set()
        self._reached: dict[str, threading.Event] = {point: threading.Event() for point in POINTS}

    # -- holding a client at a point -------------------------------------------------------------------------

    def hold(self, point: str) -> None:
        assert point in POINTS, point
        self._holds[point] = threading.Event()
        self._reached[point].clear()

    def release(self, point: str | None = None, *, proceed: bool = True) -> None:
        """Let the requests held at `point` (every point: None) go on; with `proceed` False, they end there
        without a reply and without effect (a request the client's death made moot)."""
        for name in [point] if point else list(self._holds):
            event = self._holds.pop(name, None)
            if event is not None:
                if not proceed:
                    self._dropped.add(name)
                event.set()

    def reached(self, point: str) -> bool:
        return self._reached[point].is_set()

    def _pause(self, point: str) -> None:
        """Wait here while `point` is held; raises `_Dropped` when released without `proceed`."""
        self._reached[point].set()
        event = self._holds.get(point)
        if event is not None:
            event.wait(timeout=600)
        if point in self._dropped:
            self._dropped.discard(point)
            raise _Dropped

    def stop(self) -> None:
        self.release()
        super().stop()

    # -- routing -----------------------------------------------------------------------------------------------

    def handle_and_log(self, handler: _Handler) -> None:
        path = urlsplit(handler.path).path.rstrip("/")
        if path.startswith("/v1/files") or path.startswith("/v1/batches"):
            return self._batch_api(handler, "POST", path)
        return super().handle_and_log(handler)

    def handle_get(self, handler: _Handler) -> None:
        path = urlsplit(handler.path).path.rstrip("/")
        if path.startswith("/v1/files") or path.startswith("/v1/batches"):
            return self._batch_api(handler, "GET", path)
        return super().handle_get(handler)

    def _batch_api(self, handler: _Handler, method: str, path: str) -> None:
        query = {k: v[-1] for k, v in parse_qs(urlsplit(handler.path).query).items()}
        body = _read_body(handler) if method == "POST" else b""
        call = {
            "method": method,
            "path": path,
            "time": time.time(),
            "auth": handler.headers.get("Authorization"),
        }
        with self._lock:
            self.calls.append(call)
        if self.api_key is not None and handler.headers.get("Authorization") != f"Bearer {self.api_key}":
            return handler.send_json(401, {"error": {"message": "Incorrect API key provided: sk-wr***ng."}})
        try:
            if method == "POST" and path == "/v1/files":
                return self._upload(handler, body, call)
            if method == "GET" and path == "/v1/files":
                return self._list(handler, list(self.files.values()), query)
            if method == "POST" and path == "/v1/batches":
                return self._create(handler, body, call)
            if method == "GET" and path == "/v1/batches":
                return self._list(handler, list(self.batches.values()), query)
            match = _FILE_PATH.match(path)
            if match and method == "GET":
                return self._file(handler, match["id"], bool(match["content"]), call)
            match = _BATCH_PATH.match(path)
            if match:
                return self._batch(handler, match["id"], method, bool(match["cancel"]), call)
        except _Refused as refused:
            return handler.send_json(refused.status, {"error": {"message": refused.message}})
        except _Dropped:
            handler.close_connection = True
            return None
        return handler.send_json(404, {"error": {"message": f"no route {method} {path}"}})

    # -- files -----------------------------------------------------------------------------------------------

    def _upload(self, handler: _Handler, body: bytes, call: dict[str, Any]) -> None:
        content_type = handler.headers.get("Content-Type", "")
        if not content_type.startswith("multipart/form-data"):
            raise _Refused(400, "expected multipart/form-data")
        message = BytesParser(policy=policy.HTTP).parsebytes(
            b"Content-Type: " + content_type.encode() + b"\r\n\r\n" + body
        )
        fields: dict[str, Any] = {}
        for part in message.iter_parts():
            name = part.get_param("name", header="content-disposition")
            fields[name] = (part.get_filename(), part.get_payload(decode=True))
        if "file" not in fields or fields.get("purpose", (None, b""))[1] != b"batch":
            raise _Refused(400, "a file and purpose=batch are required")
        self._pause("uploading")
        with self._lock:
            self._order += 1
            stored = StoredFile(f"file-{uuid.uuid4().hex[:24]}", fields["file"][0] or "upload.jsonl", "batch",
                                fields["file"][1], int(time.time()), self._order)  # fmt: skip
            self.files[stored.id] = stored
        call["file_id"] = stored.id
        self._pause("upload")
        handler.send_json(200, stored.to_json())

    def _file(self, handler: _Handler, file_id: str, content: bool, call: dict[str, Any]) -> None:
        stored = self.files.get(file_id)
        if stored is None:
            raise _Refused(404, f"No such File object: {file_id}")
        if not content:
            return handler.send_json(200, stored.to_json())
        call["file_id"] = file_id
        with self._lock:
            failing = self.download_failures > 0
            self.download_failures -= failing
        if failing:
            raise _Refused(500, "The server had an error while processing your request.")
        if "download" in self._holds:
            half = len(stored.content) // 2
            handler.send_response(200)
            handler.send_header("Content-Type", "application/octet-stream")
            handler.send_header("Content-Length", str(len(stored.content)))
            handler.end_headers()
            handler.wfile.write(stored.content[:half])
            handler.wfile.flush()
            self._pause("download")
            with contextlib.suppress(OSError):
                handler.wfile.write(stored.content[half:])
            return None
        self._reached["download"].set()
        handler.send_raw(200, stored.content, {"Content-Type": "application/octet-stream"})
        return None

    # -- batches ---------------------------------------------------------------------------------------------

    def _create(self, handler: _Handler, body: bytes, call: dict[str, Any]) -> None:
        self._pause("create")
        if "refuse-create" in self.faults:
            raise _Refused(400, "Batch creation is not available for this organization.")
        request = json.loads(body or b"{}")
        stored = self.files.get(request.get("input_file_id"))
        if stored is None:
            raise _Refused(400, f"No such File object: {request.get('input_file_id')}")
        if request.get("endpoint") != ENDPOINT or request.get("completion_window") != "24h":
            raise _Refused(400, "endpoint must be /v1/chat/completions and completion_window 24h")
        metadata = request.get("metadata") or {}
        if len(metadata) > 16 or any(len(str(k)) > 64 or len(str(v)) > 512 for k, v in metadata.items()):
            raise _Refused(400, "metadata: at most 16 keys of 64 characters, values of 512")
        lines, errors, expires = self._validate(stored)
        with self._lock:
            self._order += 1
            batch = Batch(f"batch_{uuid.uuid4().hex[:24]}", stored.id, metadata, time.time(), self._order, lines,
                          errors, expires)  # fmt: skip
            self.batches[batch.id] = batch
        call["batch_id"] = batch.id
        self._pause("created")
        if "drop-create-reply" in self.faults:
            self.faults.discard("drop-create-reply")
            raise _Dropped
        handler.send_json(200, self._object(batch))

    def _validate(self, stored: StoredFile) -> tuple[list[dict[str, Any]], list[dict[str, Any]], bool]:
        """The file's lines, its validation errors, and whether the batch is to expire part-way."""
        lines, errors, seen, models = [], [], set(), set()
        expires = False
        raw_lines = [line for line in stored.content.split(b"\n") if line.strip()]
        if len(raw_lines) > self.max_requests:
            errors.append({"code": "too_many_requests", "line": None,
                           "message": f"The batch input file has {len(raw_lines)} requests; at most "
                                      f"{self.max_requests} are allowed."})  # fmt: skip
        if len(stored.content) > self.max_bytes:
            errors.append({"code": "file_too_large", "line": None,
                           "message": f"The batch input file is larger than {self.max_bytes} bytes."})  # fmt: skip
        for number, raw in enumerate(raw_lines, 1):
            try:
                line = json.loads(raw)
            except ValueError:
                errors.append(
                    {"code": "invalid_json_line", "line": number, "message": "This line is not JSON."}
                )
                continue
            custom_id = line.get("custom_id")
            problem = None
            if not isinstance(custom_id, str) or custom_id in seen:
                problem = ("duplicate_custom_id", "The custom_id of this line is missing or repeated.")
            elif line.get("method") != "POST" or line.get("url") != ENDPOINT:
                problem = ("invalid_url", "The url of this line must be /v1/chat/completions with POST.")
            elif not isinstance(line.get("body"), dict):
                problem = ("invalid_body", "The body of this line is missing.")
            if problem:
                errors.append({"code": problem[0], "line": number, "message": problem[1]})
                continue
            seen.add(custom_id)
            models.add(line["body"].get("model"))
            markers = _markers(line["body"])
            first = self._first_time(custom_id, stored.id)
            if "invalid-line" in markers and first:
                errors.append({"code": "invalid_request", "line": number,
                               "message": "The body of this line failed validation."})  # fmt: skip
            if "expire" in markers and first:
                expires = True
            lines.append(line)
        if len(models) > 1:
            errors.append({"code": "mismatched_model", "line": None,
                           "message": "All lines of a batch must use the same model."})  # fmt: skip
        return lines, errors, expires

    def _first_time(self, custom_id: str, file_id: str) -> bool:
        """Whether `file_id` is the first file that carried `custom_id` (markers act the first time only)."""
        with self._marks:
            return self._first_file.setdefault(custom_id, file_id) == file_id

    def _batch(
        self, handler: _Handler, batch_id: str, method: str, cancel: bool, call: dict[str, Any]
    ) -> None:
        batch = self.batches.get(batch_id)
        if batch is None:
            raise _Refused(404, f"No batch found with id '{batch_id}'.")
        call["batch_id"] = batch_id
        if cancel and method == "POST":
            with self._lock:
                status = self._status(batch)
                if status in ("completed", "failed", "expired", "cancelled"):
                    raise _Refused(409, f"Cannot cancel a batch with status '{status}'.")
                if batch.cancel_at is None:
                    batch.cancel_at = time.time()
            return handler.send_json(200, self._object(batch))
        if method != "GET":
            raise _Refused(405, "method not allowed")
        self._pause("retrieve")
        handler.send_json(200, self._object(batch))
        return None

    def _list(self, handler: _Handler, items: list[Any], query: dict[str, str]) -> None:
        limit = int(query.get("limit") or 20)
        if self.list_lag:  # an account's list that shows new batches only after a while
            items = [i for i in items if not isinstance(i, Batch) or time.time() - i.created >= self.list_lag]
        ordered = sorted(items, key=lambda item: item.order, reverse=True)
        if "after" in query:
            ids = [item.id for item in ordered]
            ordered = ordered[ids.index(query["after"]) + 1 :] if query["after"] in ids else []
        if isinstance(items[0] if items else None, StoredFile) and query.get("purpose"):
            ordered = [f for f in ordered if f.purpose == query["purpose"]]
        page = ordered[:limit]
        data = [self._object(item) if isinstance(item, Batch) else item.to_json() for item in page]
        handler.send_json(200, {
            "object": "list", "data": data, "first_id": data[0]["id"] if data else None,
            "last_id": data[-1]["id"] if data else None, "has_more": len(ordered) > limit,
        })  # fmt: skip

    # -- the clock ---------------------------------------------------------------------------------------------

    def _status(self, batch: Batch) -> str:
        """The batch's status now, ending it (writing its files) when its time has come. Under the lock."""
        if batch.ended is not None:
            return batch.ended["status"]
        now = time.time()
        age = now - batch.created
        if batch.cancel_at is not None:
            if now - batch.cancel_at < self.cancelling:
                return "cancelling"
            done = self._fraction(batch.cancel_at - batch.created)
            self._end(batch, "cancelled", int(done * len(batch.lines)))
            return "cancelled"
        if age < self.validating:
            return "validating"
        if batch.errors:
            batch.ended = {"status": "failed", "output_file_id": None, "error_file_id": None,
                           "counts": {"total": 0, "completed": 0, "failed": 0}}  # fmt: skip
            return "failed"
        if batch.expires and age >= self.validating + self.in_progress / 2:
            self._end(batch, "expired", len(batch.lines))
            return "expired"
        if age < self.validating + self.in_progress:
            return "in_progress"
        if age < self.validating + self.in_progress + self.finalizing or "stuck-finalizing" in self.faults:
            return "finalizing"
        self._end(batch, "completed", len(batch.lines))
        return "completed"

    def _fraction(self, age: float) -> float:
        return min(max((age - self.validating) / max(self.in_progress, 1e-9), 0.0), 1.0)

    def _end(self, batch: Batch, status: str, done: int) -> None:
        """Answer the first `done` lines (an expiring batch: all but its [[expire]] lines) and write the files."""
        output, failures = [], []
        for index, line in enumerate(batch.lines):
            custom_id, body = line["custom_id"], line["body"]
            markers = _markers(body)
            first = self._first_time(custom_id, batch.input_file_id)
            if status == "expired" and "expire" in markers and first:
                failures.append({"id": f"batch_req_{uuid.uuid4().hex[:16]}", "custom_id": custom_id,
                                 "response": None, "error": {"code": "batch_expired", "message":
                                 "This request could not be executed before the completion window expired."}})  # fmt: skip
                continue
            if index >= done:
                continue  # a cancelled batch never got to it
            if ("batch-error" in markers and first) or "batch-error-always" in markers:
                code = 500 if "batch-error" in markers else 400
                failures.append({"id": f"batch_req_{uuid.uuid4().hex[:16]}", "custom_id": custom_id,
                                 "response": {"status_code": code, "request_id": uuid.uuid4().hex, "body": {
                                     "error": {"message": f"HTTP {code} while processing this request.",
                                               "type": "server_error" if code == 500 else "invalid_request_error"}}},
                                 "error": None})  # fmt: skip
                continue
            output.append(self._answer_line(custom_id, body))
        self._shuffle.shuffle(output)
        if output and "duplicate-lines" in self.faults:
            output = output + output
        if output and "unknown-line" in self.faults:
            output.append(dict(output[0], custom_id="not-a-request-of-this-batch"))
        if output and "malformed-body" in self.faults:
            output[0] = dict(output[0], response={"status_code": 200, "body": {"choices": "none today"}})
        encoded = [json.dumps(item) for item in output]
        if encoded and "broken-line" in self.faults:
            encoded[-1] = encoded[-1][: len(encoded[-1]) // 2]
        output_id = self._store_result(batch, encoded, "output") if encoded else None
        error_id = self._store_result(batch, [json.dumps(f) for f in failures], "error") if failures else None
        answered = len(output) - (1 if "unknown-line" in self.faults and output else 0)
        batch.ended = {"status": status, "output_file_id": output_id, "error_file_id": error_id,
                       "counts": {"total": len(batch.lines), "completed": answered, "failed": len(failures)}}  # fmt: skip

    def _answer_line(self, custom_id: str, body: dict[str, Any]) -> dict[str, Any]:
        messages = body.get("messages") or []
        repair = any(m.get("role") == "assistant" for m in messages)
        line = _target_line(messages)
        text = line["text"] if line else ""
        markers = {m.group(1): m.group(2) for m in _MARKER.finditer(text)}
        count = self._count_unlocked(text, repair)
        key = request_key(body)
        reply, emotion = self.completion(body, line, markers, count, repair, key, time.time())
        self.log.append({"n": len(self.log) + 1, "time": time.time(), "path": ENDPOINT, "via": "batch",
                         "custom_id": custom_id, "key": key, "text": text, "repair": repair, "status": 200,
                         "emotion": emotion, "logprobs": bool(body.get("logprobs"))})  # fmt: skip
        return {"id": f"batch_req_{uuid.uuid4().hex[:16]}", "custom_id": custom_id,
                "response": {"status_code": 200, "request_id": uuid.uuid4().hex, "body": json.loads(reply)},
                "error": None}  # fmt: skip

    def _count_unlocked(self, text: str, repair: bool) -> int:
        if not repair:
            self._seen[text] = self._seen.get(text, 0) + 1
        return self._seen.get(text, 0)

    def _store_result(self, batch: Batch, lines: list[str], kind: str) -> str:
        self._order += 1
        content = ("\n".join(lines) + "\n").encode()
        stored = StoredFile(f"file-{uuid.uuid4().hex[:24]}", f"{batch.id}_{kind}.jsonl", f"batch_{kind}", content,
                            int(time.time()), self._order)  # fmt: skip
        self.files[stored.id] = stored
        return stored.id

    def _object(self, batch: Batch) -> dict[str, Any]:
        with self._lock:
            status = self._status(batch)
            ended = batch.ended or {}
            if ended:
                counts = ended["counts"]
            else:
                total = len(batch.lines) if status != "validating" else 0
                done = int(self._fraction(time.time() - batch.created) * total)
                counts = {"total": total, "completed": done if status != "validating" else 0, "failed": 0}
        errors = {"object": "list", "data": batch.errors} if status == "failed" else None
        return {
            "id": batch.id, "object": "batch", "endpoint": ENDPOINT, "errors": errors,
            "input_file_id": batch.input_file_id, "completion_window": "24h", "status": status,
            "output_file_id": ended.get("output_file_id"), "error_file_id": ended.get("error_file_id"),
            "created_at": int(batch.created), "expires_at": int(batch.created) + 86_400,
            "request_counts": counts, "metadata": batch.metadata,
        }  # fmt: skip

    # -- for tests -------------------------------------------------------------------------------------------

    def created_batches(self) -> list[Batch]:
        return sorted(self.batches.values(), key=lambda b: b.order)

    def batch_answers(self) -> list[dict[str, Any]]:
        """Requests answered inside batches (each is billed)."""
        return [e for e in list(self.log) if e.get("via") == "batch"]


class _Dropped(Exception):
    """A held request released without effect."""


class _Refused(Exception):
    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status, self.message = status, message


def _markers(body: dict[str, Any]) -> set[str]:
    line = _target_line(body.get("messages") or [])
    return {m.group(1) for m in _MARKER.finditer(line["text"])} if line else set()


def _read_body(handler: _Handler) -> bytes:
    """The request body, with a Content-Length or chunked."""
    if handler.headers.get("Transfer-Encoding", "").lower() == "chunked":
        chunks = []
        while True:
            size = int(handler.rfile.readline().split(b";")[0].strip() or b"0", 16)
            if size == 0:
                handler.rfile.readline()
                return b"".join(chunks)
            chunks.append(handler.rfile.read(size))
            handler.rfile.readline()
    return handler.rfile.read(int(handler.headers.get("Content-Length") or 0))


def main(argv: list[str] | None = None) -> None:
    import argparse
    import sys
    from pathlib import Path

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port-file", type=Path, required=True, help="write the port here once listening")
    parser.add_argument("--in-progress", type=float, default=0.6, help="seconds a batch is in_progress")
    parser.add_argument("--latency", type=float, default=0.0, help="seconds per live chat reply")
    args = parser.parse_args(argv)
    server = FakeBatchServer(in_progress=args.in_progress, latency=args.latency)
    tmp = args.port_file.with_suffix(".tmp")
    tmp.write_text(str(server.port))
    tmp.replace(args.port_file)
    print(f"listening on {server.base_url}", file=sys.stderr, flush=True)
    with contextlib.suppress(KeyboardInterrupt):
        server._httpd.serve_forever(poll_interval=0.05)


if __name__ == "__main__":
    main()
