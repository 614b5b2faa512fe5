"""Settings and checks for Batch API tests (tests/batch_server.py is the server)."""

from __future__ import annotations

import json
import sqlite3
import time
from pathlib import Path

from annotate_helpers import fast_config

from batch_server import FakeBatchServer
from melt.annotate.store import STORE_NAME
from timing import scaled

TERMINAL = ("completed", "failed", "expired", "cancelled")


def batch_config(server: FakeBatchServer, **overrides):
    settings = {"batch": True, "batch_poll": 0.1, "batch_poll_max": 0.5, "timeout": 5.0}
    settings.update(overrides)
    return fast_config(server, **settings)


def wait_until_ended(server: FakeBatchServer, timeout: float = 30) -> None:
    """Until every batch on the server has ended (asking its status moves its clock on)."""
    deadline = time.monotonic() + scaled(timeout)
    while not all(server._object(b)["status"] in TERMINAL for b in server.created_batches()):
        assert time.monotonic() < deadline, "the server's batches did not end"
        time.sleep(0.05)


def store_rows(out: Path, sql: str, parameters: tuple = ()) -> list[tuple]:
    with sqlite3.connect(Path(out) / STORE_NAME) as db:
        return db.execute(sql, parameters).fetchall()


def answered_twice(server: FakeBatchServer) -> list[str]:
    """Request bodies the server answered (and billed) more than once, live or in a batch."""
    keys = [e["key"] for e in server.entries() if e.get("status") == 200 and e.get("text")]
    return sorted({k for k in keys if keys.count(k) > 1})


def run_json(out: Path) -> dict:
    return json.loads((Path(out) / "run.json").read_text())
