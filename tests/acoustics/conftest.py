"""A real speech corpus with known prosody, synthesised once per session with espeak-ng and sox.

Two splits, one voice each (train: espeak's default male voice, test: a female variant about an octave higher).
Within a split every utterance gets a pitch (`-p`), amplitude (`-a`) and speed (`-s`) level, each drawn
independently in the proportions 30 % low / 40 % mid / 30 % high, so the acoustic bins of a correct extractor
coincide with the controls.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from .espeak import SENTENCES, require_tools, synthesise

#: level -> espeak-ng option value. Pitch 35..80 keeps espeak's voicing clean; amplitude 160 stays below clipping.
CONTROLS = {
    "pitch": ("-p", {"low": 35, "mid": 55, "high": 80}),
    "loudness": ("-a", {"low": 40, "mid": 100, "high": 160}),
    "rhythm_speed": ("-s", {"low": 110, "mid": 175, "high": 280}),
}
VOICES = {"train": ("en-us", "ross"), "test": ("en-us+f3", "rachel")}
PER_SPLIT = 30  # 9 low, 12 mid, 9 high per attribute


@dataclass
class EspeakCorpus:
    folder: Path
    table_path: Path  # corpus.csv: id, split, speaker, text, audio (relative to folder)
    controls: pd.DataFrame  # id, split, speaker, pitch, loudness, rhythm_speed (levels low/mid/high)


def _levels(rng: np.random.Generator) -> list[str]:
    levels = ["low"] * 9 + ["mid"] * 12 + ["high"] * 9
    return list(rng.permutation(levels))


@pytest.fixture(scope="session")
def espeak_corpus(tmp_path_factory) -> EspeakCorpus:
    require_tools("espeak-ng", "sox")
    folder = tmp_path_factory.mktemp("espeak_corpus")
    rng = np.random.default_rng(7)
    rows = []
    for split, (voice, speaker) in VOICES.items():
        draws = {attribute: _levels(rng) for attribute in CONTROLS}
        for i in range(PER_SPLIT):
            row = {
                "id": f"{split}/dia{i // 5}_utt{i % 5}",
                "split": split,
                "speaker": speaker,
                "text": SENTENCES[i % len(SENTENCES)],
                "voice": voice,
                **{attribute: draws[attribute][i] for attribute in CONTROLS},
            }
            row["audio"] = f"wav/{row['id']}.wav"
            rows.append(row)

    def make(row: dict) -> None:
        values = {attribute: CONTROLS[attribute][1][row[attribute]] for attribute in CONTROLS}
        synthesise(
            folder / row["audio"],
            row["text"],
            voice=row["voice"],
            pitch=values["pitch"],
            amplitude=values["loudness"],
            speed=values["rhythm_speed"],
        )

    with ThreadPoolExecutor(max_workers=2) as pool:
        list(pool.map(make, rows))
    frame = pd.DataFrame(rows)
    table_path = folder / "corpus.csv"
    frame[["id", "split", "speaker", "text", "audio"]].to_csv(table_path, index=False)
    controls = frame[["id", "split", "speaker", "pitch", "loudness", "rhythm_speed"]]
    return EspeakCorpus(folder=folder, table_path=table_path, controls=controls)


@pytest.fixture(scope="session")
def espeak_features(espeak_corpus, tmp_path_factory) -> tuple[pd.DataFrame, Path]:
    """Features of the espeak corpus, extracted once with two worker processes."""
    from melt.acoustics.features import extract_features

    out = tmp_path_factory.mktemp("features") / "features.parquet"
    features = extract_features(espeak_corpus.table_path, out, workers=2, progress=False)
    return features, out
