"""Corpora and settings for annotation tests (imported by tests/annotate/*; fixtures are in conftest.py)."""

from __future__ import annotations

import sqlite3
import sys
from pathlib import Path

import pandas as pd

TESTS = str(Path(__file__).resolve().parents[1])
if TESTS not in sys.path:
    sys.path.insert(0, TESTS)

from melt.annotate import AnnotateConfig  # noqa: E402
from melt.corpus.schema import conform  # noqa: E402
from openai_server import FakeOpenAIServer  # noqa: E402

SPEAKERS = ("Ross", "Monica", "Chandler", "Rachel", "Joey", "Phoebe")


def corpus_table(texts: list[str]) -> pd.DataFrame:
    """An utterance table with one row per text: dialogues of five lines, speakers in turn."""
    rows = [
        {
            "id": f"train/dia{i // 5}_utt{i % 5}",
            "split": "train",
            "speaker": SPEAKERS[i % len(SPEAKERS)],
            "text": text,
            "dialogue_id": i // 5,
            "utterance_id": i % 5,
            "season": 1 + i % 3,
            "episode": 1 + i % 20,
            "label": "neutral",
        }
        for i, text in enumerate(texts)
    ]
    return conform(pd.DataFrame(rows))


def fast_config(server: FakeOpenAIServer, **overrides) -> AnnotateConfig:
    """Short timeouts and backoffs so fault tests take seconds, not minutes."""
    settings = {
        "base_url": server.base_url,
        "model": "gpt-4o-2024-08-06",
        "timeout": 0.5,
        "backoff_base": 0.01,
        "backoff_max": 2.0,
        "max_retries": 4,
        "concurrency": 8,
    }
    settings.update(overrides)
    return AnnotateConfig(**settings)


def asked(server: FakeOpenAIServer, **where) -> list[dict]:
    """The server's log of requests about utterances (the answer-format probe left out)."""
    return [e for e in server.entries(**where) if e.get("text")]


def probe_cost(run_dir: Path) -> float:
    """What the tiny answer-format probes of a run folder cost (they are kept in its store, turn -1)."""
    from melt.annotate.store import STORE_NAME

    with sqlite3.connect(Path(run_dir) / STORE_NAME) as db:
        return db.execute("SELECT COALESCE(SUM(cost_usd), 0) FROM requests WHERE turn < 0").fetchone()[0]
