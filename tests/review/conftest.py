"""A small annotation run with real espeak-ng audio, panel votes and an acoustic check, and a helper that runs
`melt preference serve` in a subprocess on a free port."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import pytest

from acoustics.espeak import require_tools, synthesise
from melt.corpus.labels import MELT_LABEL_SET
from melt.corpus.schema import write_table
from timing import scaled

#: id, speaker, text, human label, run status, LLM emotion, confidence, agreement, samples, espeak pitch
UTTERANCES = [
    (
        "train/dia0_utt0",
        "ross",
        "I can't believe you did that to me again.",
        "joy",
        "ok",
        "joy",
        0.95,
        1.0,
        1,
        50,
    ),
    (
        "train/dia0_utt1",
        "rachel",
        "Could this meeting be any longer?",
        "neutral",
        "invalid",
        None,
        None,
        None,
        0,
        60,
    ),
    (
        "train/dia0_utt2",
        "monica",
        "We were on a break, and everybody knows it.",
        "neutral",
        "ok",
        "anger",
        0.9,
        1.0,
        1,
        40,
    ),
    (
        "train/dia1_utt0",
        "chandler",
        "She is moving to Paris next week.",
        "sadness",
        "ok",
        "sadness",
        0.3,
        1.0,
        1,
        55,
    ),
    (
        "train/dia1_utt1",
        "joey",
        "The coffee shop was closed when we got there.",
        "fear",
        "ok",
        "fear",
        0.4,
        0.4,
        5,
        65,
    ),
    (
        "train/dia1_utt2",
        "phoebe",
        "Nobody told me the party started at seven.",
        "surprise",
        "ok",
        "surprise",
        0.9,
        1.0,
        1,
        80,
    ),
    ("train/dia2_utt0", "ross", "Pivot! Pivot! Pivot!", "joy", "ok", "joy", 0.99, 1.0, 1, 45),
    (
        "train/dia2_utt1",
        "rachel",
        "It's not that common, it doesn't happen to every guy.",
        "frustration",
        "ok",
        "neutral",
        0.8,
        1.0,
        1,
        70,
    ),
]
#: The expected order of `--select doubtful` with the default thresholds, and each one's reasons.
EXPECTED_DOUBT = [
    ("train/dia0_utt1", ["invalid"]),
    ("train/dia1_utt2", ["acoustic_mismatch", "ambiguous_panel"]),
    ("train/dia0_utt2", ["disagrees_with_human"]),
    ("train/dia2_utt1", ["disagrees_with_human"]),
    ("train/dia1_utt0", ["low_confidence"]),
    ("train/dia1_utt1", ["low_agreement"]),
]


@dataclass
class ReviewRun:
    folder: Path
    run_dir: Path
    corpus: Path
    check_dir: Path
    audio: dict[str, Path]


def _audio_folder(root: Path) -> dict[str, Path]:
    require_tools("espeak-ng", "sox")
    audio = {}
    for uid, _speaker, text, *_rest, pitch in UTTERANCES:
        audio[uid] = synthesise(root / "wav" / f"{uid.replace('/', '_')}.wav", text, pitch=pitch)
    return audio


@pytest.fixture(scope="session")
def review_audio(tmp_path_factory) -> tuple[Path, dict[str, Path]]:
    root = tmp_path_factory.mktemp("review_audio")
    return root, _audio_folder(root)


def make_run(folder: Path, audio: dict[str, Path], *, votes: bool = True) -> ReviewRun:
    """A run folder as `melt annotate` writes it, for the corpus table in `folder` (audio paths relative)."""
    folder.mkdir(parents=True, exist_ok=True)
    corpus = pd.DataFrame(
        {
            "id": [u[0] for u in UTTERANCES],
            "speaker": [u[1] for u in UTTERANCES],
            "text": [u[2] for u in UTTERANCES],
            "label": [u[3] for u in UTTERANCES],
            "audio": [os.path.relpath(audio[u[0]], folder) for u in UTTERANCES],
            "votes": [
                json.dumps({"r1": u[3], "r2": {u[3]: 0.5, "anger": 0.5}, "r3": "angry"}) if i == 2 else None
                for i, u in enumerate(UTTERANCES)
            ],
        }
    )
    corpus_path = folder / "corpus.csv"
    corpus.to_csv(corpus_path, index=False)
    run_dir = folder / "run"
    run_dir.mkdir()
    annotations = pd.DataFrame(
        {
            "id": [u[0] for u in UTTERANCES],
            "status": [u[4] for u in UTTERANCES],
            "emotion": [u[5] for u in UTTERANCES],
            "pitch": ["high" if u[0] == "train/dia1_utt2" else "medium" for u in UTTERANCES],
            "flags": "",
            "confidence": pd.array([u[6] for u in UTTERANCES], dtype="Float64"),
            "distribution": None,
            "samples": pd.array([u[8] for u in UTTERANCES], dtype="Int64"),
            "agreement": pd.array([u[7] for u in UTTERANCES], dtype="Float64"),
            "error": ["reply is not JSON" if u[4] == "invalid" else None for u in UTTERANCES],
            "raw_reply": None,
        }
    )
    write_table(annotations, run_dir / "annotations.parquet")
    (run_dir / "run.json").write_text(
        json.dumps(
            {
                "melt_version": "0.1.0",
                "corpus": str(corpus_path.resolve()),
                "model": "gpt-test-2024",
                "config": {"labels": MELT_LABEL_SET.model_dump()},
            }
        ),
        encoding="utf-8",
    )
    if votes:
        rows = []
        for annotator, label in enumerate(["joy", "surprise", "joy", "surprise", "neutral", None]):
            rows.append(
                {
                    "id": "train/dia1_utt2",
                    "annotator": annotator,
                    "persona": "tone",
                    "temperature": 0.5,
                    "label": label,
                    "status": "ok" if label else "invalid",
                    "reason": None,
                }
            )
        for annotator in range(4):
            rows.append(
                {
                    "id": "train/dia0_utt0",
                    "annotator": annotator,
                    "persona": "tone",
                    "temperature": 0.5,
                    "label": "happy",
                    "status": "ok",
                    "reason": None,
                }
            )
        write_table(pd.DataFrame(rows), run_dir / "votes.parquet")
    check_dir = folder / "check"
    check_dir.mkdir()
    check_rows = pd.DataFrame(
        {
            "id": ["train/dia1_utt2", "train/dia0_utt0", "train/dia0_utt2"],
            "split": "train",
            "attribute": "pitch",
            "description": ["high", "medium", "medium"],
            "described": ["high", "mid", "mid"],
            "value": [10.0, 20.0, 30.0],
            "bin": ["low", "mid", "mid"],
            "outcome": ["scored", "scored", "scored"],
        }
    )
    check_rows.to_csv(check_dir / "rows.csv", index=False)
    return ReviewRun(folder, run_dir, corpus_path, check_dir, audio)


@pytest.fixture
def review_run(tmp_path, review_audio) -> ReviewRun:
    _, audio = review_audio
    return make_run(tmp_path / "project", audio)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class PreferenceServer:
    """`melt preference serve` in a real subprocess, on a free loopback port."""

    def __init__(self, pairs: Path, db: Path, *extra: str):
        self.pairs, self.db, self.extra = pairs, db, extra
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.process: subprocess.Popen | None = None

    def __enter__(self) -> PreferenceServer:
        self.log = open(self.db.with_suffix(".log"), "w")
        self.process = subprocess.Popen(
            [
                *(sys.executable, "-m", "melt", "preference", "serve", str(self.pairs)),
                *("--db", str(self.db), "--port", str(self.port), *self.extra),
            ],
            stdout=self.log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + scaled(120)
        while True:
            if self.process.poll() is not None:
                raise RuntimeError(f"the server exited: {self.db.with_suffix('.log').read_text()}")
            try:
                with urllib.request.urlopen(self.url + "/", timeout=5) as reply:
                    if reply.status == 200:
                        return self
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"the server did not answer within {scaled(120):.0f} s")
            time.sleep(0.2)

    def stop(self) -> int:
        assert self.process is not None
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=scaled(60))
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        return self.process.returncode

    def __exit__(self, *exc) -> None:
        self.stop()
        self.log.close()

    def output(self) -> str:
        return self.db.with_suffix(".log").read_text()
