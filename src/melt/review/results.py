"""The preference test's results file: SQLite in WAL mode, one row per answer, written the moment it is given.

Tables: `meta` (the pairs table's path and sha256, the sources, the seed, whether "neither" is offered),
`items` (a copy of the pairs table), `participants` (code, number in order of first login), `sessions` (the
sha256 of each browser session token), `assignments` (per participant: position, item, whether A is shown
first, when the item was last shown) and `answers` (participant, item, choice a/b/neither, the side A was on,
when it was shown and answered; unique per participant and item).
"""

from __future__ import annotations

import hashlib
import secrets
import sqlite3
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from melt import __version__
from melt.errors import MeltError
from melt.review.pairs import participant_plan

SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT);
CREATE TABLE IF NOT EXISTS items (
    item INTEGER PRIMARY KEY, id TEXT NOT NULL, grp TEXT, text TEXT,
    description_a TEXT NOT NULL, description_b TEXT NOT NULL, media TEXT NOT NULL, media_sha256 TEXT
);
CREATE TABLE IF NOT EXISTS participants (
    participant TEXT PRIMARY KEY, number INTEGER NOT NULL UNIQUE, created REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS sessions (
    token_sha256 TEXT PRIMARY KEY, participant TEXT NOT NULL REFERENCES participants(participant),
    created REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS assignments (
    participant TEXT NOT NULL REFERENCES participants(participant), position INTEGER NOT NULL,
    item INTEGER NOT NULL REFERENCES items(item), a_first INTEGER NOT NULL, shown_at REAL,
    PRIMARY KEY (participant, position), UNIQUE (participant, item)
);
CREATE TABLE IF NOT EXISTS answers (
    participant TEXT NOT NULL REFERENCES participants(participant), item INTEGER NOT NULL REFERENCES items(item),
    position INTEGER NOT NULL, choice TEXT NOT NULL CHECK (choice IN ('a', 'b', 'neither')),
    a_first INTEGER NOT NULL, shown_at REAL, answered_at REAL NOT NULL, seconds REAL,
    PRIMARY KEY (participant, item)
);
"""
CHOICES = ("a", "b", "neither")


@dataclass
class Assignment:
    participant: str
    position: int
    item: int
    a_first: bool
    answered: bool


class PreferenceStore:
    """The results file, shared by the web server's requests (one connection, one lock)."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self._lock = threading.Lock()
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=FULL")
            self._db.execute("PRAGMA foreign_keys=ON")
            self._db.executescript(SCHEMA)
        except sqlite3.DatabaseError as exc:
            raise MeltError(f"not a usable SQLite results file ({exc})", file=self.path) from exc
        except OSError as exc:
            raise MeltError(f"cannot open the results file ({exc.strerror})", file=self.path) from exc

    def close(self) -> None:
        self._db.close()

    # --- setting up -------------------------------------------------------------------------------------

    def meta(self) -> dict[str, str]:
        return dict(self._db.execute("SELECT key, value FROM meta").fetchall())

    def bind(self, pairs: pd.DataFrame, pairs_path: str | Path, *, allow_neither: bool) -> None:
        """Tie a new results file to the pairs table, or check that an existing one belongs to it."""
        from melt.provenance import file_sha256

        digest = file_sha256(pairs_path)
        meta = self.meta()
        wanted = {
            "pairs_sha256": digest,
            "items": str(len(pairs)),
            "allow_neither": "1" if allow_neither else "0",
        }
        if meta:
            for key, value in wanted.items():
                if meta.get(key) != value:
                    what = {
                        "pairs_sha256": "another pairs table",
                        "items": "a pairs table of another size",
                        "allow_neither": "another --neither setting",
                    }[key]
                    raise MeltError(
                        f"this results file was started with {what} ({key} {meta.get(key)!r}, now {value!r}); "
                        "use a new --db for a new test",
                        file=self.path,
                    )
            return
        with self._lock, self._transaction():
            self._db.executemany(
                "INSERT INTO meta (key, value) VALUES (?, ?)",
                [
                    *wanted.items(),
                    ("pairs_path", str(Path(pairs_path).absolute())),
                    ("source_a", str(pairs["source_a"].iloc[0])),
                    ("source_b", str(pairs["source_b"].iloc[0])),
                    ("seed", str(int(pairs["seed"].iloc[0]))),
                    ("created", time.strftime("%Y-%m-%dT%H:%M:%S%z")),
                    ("melt_version", __version__),
                ],
            )
            self._db.executemany(
                "INSERT INTO items (item, id, grp, text, description_a, description_b, media, media_sha256) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                [
                    (
                        int(r.item),
                        str(r.id),
                        None if pd.isna(r.group) else str(r.group),
                        None if pd.isna(r.text) else str(r.text),
                        str(r.description_a),
                        str(r.description_b),
                        str(r.media),
                        None if pd.isna(r.media_sha256) else str(r.media_sha256),
                    )
                    for r in pairs.itertuples(index=False)
                ],
            )

    def _transaction(self):
        db = self._db

        class _Tx:
            def __enter__(self):
                db.execute("BEGIN IMMEDIATE")

            def __exit__(self, kind, value, traceback):
                db.execute("ROLLBACK" if kind else "COMMIT")
                return False

        return _Tx()

    # --- participants and sessions ----------------------------------------------------------------------

    def total(self) -> int:
        return int(self._db.execute("SELECT COUNT(*) FROM items").fetchone()[0])

    def enrol(self, participant: str, pairs: pd.DataFrame) -> str:
        """Register `participant` on first login (their number, item order and sides); return a new session
        token for their browser (only its sha256 is stored)."""
        token = secrets.token_urlsafe(32)
        with self._lock, self._transaction():
            known = self._db.execute(
                "SELECT number FROM participants WHERE participant = ?", (participant,)
            ).fetchone()
            if known is None:
                number = int(
                    self._db.execute("SELECT COALESCE(MAX(number) + 1, 0) FROM participants").fetchone()[0]
                )
                self._db.execute(
                    "INSERT INTO participants (participant, number, created) VALUES (?, ?, ?)",
                    (participant, number, time.time()),
                )
                self._db.executemany(
                    "INSERT INTO assignments (participant, position, item, a_first) VALUES (?, ?, ?, ?)",
                    [
                        (participant, position, item, int(a_first))
                        for position, (item, a_first) in enumerate(participant_plan(pairs, number))
                    ],
                )
            self._db.execute(
                "INSERT INTO sessions (token_sha256, participant, created) VALUES (?, ?, ?)",
                (_digest(token), participant, time.time()),
            )
        return token

    def participant_of(self, token: str | None) -> str | None:
        if not token:
            return None
        with self._lock:
            row = self._db.execute(
                "SELECT participant FROM sessions WHERE token_sha256 = ?", (_digest(token),)
            ).fetchone()
        return row[0] if row else None

    def answered(self, participant: str) -> int:
        with self._lock:
            return int(
                self._db.execute(
                    "SELECT COUNT(*) FROM answers WHERE participant = ?", (participant,)
                ).fetchone()[0]
            )

    # --- items and answers ------------------------------------------------------------------------------

    def next_assignment(self, participant: str) -> Assignment | None:
        """The participant's first unanswered item, marked as shown now; None when all are answered."""
        with self._lock, self._transaction():
            row = self._db.execute(
                "SELECT s.position, s.item, s.a_first FROM assignments s "
                "LEFT JOIN answers a ON a.participant = s.participant AND a.item = s.item "
                "WHERE s.participant = ? AND a.item IS NULL ORDER BY s.position LIMIT 1",
                (participant,),
            ).fetchone()
            if row is None:
                return None
            self._db.execute(
                "UPDATE assignments SET shown_at = ? WHERE participant = ? AND position = ?",
                (time.time(), participant, row[0]),
            )
        return Assignment(participant, int(row[0]), int(row[1]), bool(row[2]), False)

    def assignment(self, participant: str, position: int) -> Assignment | None:
        with self._lock:
            row = self._db.execute(
                "SELECT s.item, s.a_first, a.item IS NOT NULL FROM assignments s "
                "LEFT JOIN answers a ON a.participant = s.participant AND a.item = s.item "
                "WHERE s.participant = ? AND s.position = ?",
                (participant, position),
            ).fetchone()
        if row is None:
            return None
        return Assignment(participant, position, int(row[0]), bool(row[1]), bool(row[2]))

    def answer(self, participant: str, position: int, choice: str) -> bool:
        """Record an answer at once; False when the participant already answered this item (the first stands)."""
        if choice not in CHOICES:
            raise ValueError(choice)
        now = time.time()
        with self._lock, self._transaction():
            row = self._db.execute(
                "SELECT item, a_first, shown_at FROM assignments WHERE participant = ? AND position = ?",
                (participant, position),
            ).fetchone()
            if row is None:
                raise KeyError(position)
            item, a_first, shown_at = row
            try:
                self._db.execute(
                    "INSERT INTO answers (participant, item, position, choice, a_first, shown_at, answered_at, "
                    "seconds) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                    (
                        participant,
                        item,
                        position,
                        choice,
                        a_first,
                        shown_at,
                        now,
                        None if shown_at is None else max(now - shown_at, 0.0),
                    ),
                )
            except sqlite3.IntegrityError:
                return False
        return True


def _digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def read_results(path: str | Path) -> tuple[dict[str, str], pd.DataFrame, pd.DataFrame]:
    """(meta, items, answers) of a results file, read without changing it."""
    path = Path(path)
    if not path.is_file():
        raise MeltError("results file not found", file=path)
    try:
        db = sqlite3.connect(f"file:{path.absolute()}?mode=ro", uri=True)
        try:
            meta = dict(db.execute("SELECT key, value FROM meta").fetchall())
            items = pd.read_sql_query("SELECT * FROM items ORDER BY item", db)
            answers = pd.read_sql_query(
                "SELECT a.*, p.number FROM answers a JOIN participants p USING (participant) "
                "ORDER BY p.number, a.position",
                db,
            )
        finally:
            db.close()
    except (sqlite3.DatabaseError, pd.errors.DatabaseError) as exc:
        raise MeltError(f"not a results file of `melt preference serve` ({exc})", file=path) from exc
    if not meta:
        raise MeltError("the results file has no test set up (empty meta table)", file=path)
    return meta, items, answers
