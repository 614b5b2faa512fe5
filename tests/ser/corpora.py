"""Emotion corpora with real audio for the SER tests: espeak-ng speech whose emotions differ in prosody.

Anger is loud, fast and high, sadness soft, slow and low, neutral in between (with a little seeded jitter, so no
two clips are alike); several espeak voices are the speakers. `emotion_corpus` returns an utterance table with
the columns of docs/corpus-schema.md (id, text, audio, duration, speaker, gender, label, split, fold, corpus).

The corpora branch adds loaders for the official layouts (TESS, RAVDESS, CREMA-D, ...) and a helper writing
small corpora in them; this helper is the one place to swap for it.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pandas as pd
import soundfile

from acoustics.espeak import SENTENCES, require_tools, synthesise

#: emotion -> espeak-ng pitch (-p), amplitude (-a), speed (-s) words per minute
PROSODY = {
    "anger": {"pitch": 80, "amplitude": 160, "speed": 250},
    "neutral": {"pitch": 50, "amplitude": 100, "speed": 170},
    "sadness": {"pitch": 25, "amplitude": 40, "speed": 110},
}
#: speaker -> (espeak voice, gender)
TRAIN_VOICES = {
    "us_m": ("en-us", "M"),
    "gb_f": ("en-gb+f2", "F"),
    "scot_m": ("en-gb-scotland", "M"),
    "us_f": ("en-us+f4", "F"),
}
TEST_VOICES = {"us_f3": ("en-us+f3", "F"), "car_m": ("en-029", "M")}


def emotion_corpus(
    folder: Path,
    *,
    corpus: str,
    voices: dict[str, tuple[str, str]],
    per_emotion: int,
    seed: int,
    split: str = "train",
    sentences: list[str] | None = None,
) -> pd.DataFrame:
    """Synthesise `per_emotion` clips per emotion and voice into `folder/wav`; return the utterance table
    (also written as `folder/corpus.parquet`). Folds are per speaker."""
    require_tools("espeak-ng", "sox")
    rng = np.random.default_rng(seed)
    sentences = sentences or SENTENCES
    rows = []
    for fold, (speaker, (voice, gender)) in enumerate(voices.items()):
        for emotion, prosody in PROSODY.items():
            for k in range(per_emotion):
                text = sentences[int(rng.integers(len(sentences)))]
                jitter = {
                    "pitch": int(rng.integers(-6, 7)),
                    "amplitude": int(rng.integers(-10, 1)),
                    "speed": int(rng.integers(-15, 16)),
                }
                utterance = f"{corpus}/{speaker}_{emotion}_{k}"
                rows.append(
                    {
                        "id": utterance,
                        "text": text,
                        "audio": str(folder / "wav" / f"{speaker}_{emotion}_{k}.wav"),
                        "speaker": speaker,
                        "gender": gender,
                        "label": emotion,
                        "split": split,
                        "fold": fold + 1,
                        "corpus": corpus,
                        "_voice": voice,
                        **{f"_{key}": prosody[key] + jitter[key] for key in prosody},
                    }
                )

    def make(row: dict) -> None:
        synthesise(
            Path(row["audio"]),
            row["text"],
            voice=row["_voice"],
            pitch=row["_pitch"],
            amplitude=row["_amplitude"],
            speed=row["_speed"],
        )

    with ThreadPoolExecutor(max_workers=2) as pool:
        list(pool.map(make, rows))
    table = pd.DataFrame(rows).drop(columns=["_voice", "_pitch", "_amplitude", "_speed"])
    table["duration"] = [soundfile.info(p).duration for p in table["audio"]]
    table["fold"] = table["fold"].astype("Int64")
    for column in ("id", "text", "audio", "speaker", "gender", "label", "split", "corpus"):
        table[column] = table[column].astype("string")
    folder.mkdir(parents=True, exist_ok=True)
    table.to_parquet(folder / "corpus.parquet", index=False)
    return table
