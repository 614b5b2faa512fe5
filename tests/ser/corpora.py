"""Emotion corpora for the SER tests: written in official layouts by tests/corpora.py's builders (real espeak-ng
speech with controlled prosody) and read back by melt's own loaders.

- `acted_corpora`: a CREMA-D layout for training (actors 1001-1004), a RAVDESS layout (actors 3 and 6) and a TESS
  layout (OAF, YAF; anger and sadness, and one pleasant surprise, a class the training labels lack) for testing:
  anger loud, fast and high, sadness soft, slow and low, neutral in between, with a little seeded jitter so no two
  clips are alike; each speaker has their own espeak voice. Speakers differ between training and test.
- `graded_iemocap`: an IEMOCAP layout whose utterances lie on a continuum from sad to angry prosody, with four
  rater lines per utterance whose votes follow the grade (mixed where the grade is between two emotions), and a
  panel of simulated annotators (votes.parquet) that follows it less faithfully.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from corpora import (
    CremadClip,
    IemocapUtterance,
    Prosody,
    RavdessClip,
    Speech,
    TessClip,
    make_cremad,
    make_iemocap,
    make_ravdess,
    make_tess,
)
from melt.corpus.emotion_corpora import load_cremad, load_iemocap, load_ravdess, load_tess

#: emotion -> espeak-ng pitch (-p), amplitude (-a), speed (-s, words per minute)
PROSODY = {
    "anger": {"pitch": 80, "amplitude": 160, "speed": 250},
    "neutral": {"pitch": 50, "amplitude": 100, "speed": 170},
    "sadness": {"pitch": 25, "amplitude": 40, "speed": 110},
}
CREMAD_CODES = {"anger": "ANG", "neutral": "NEU", "sadness": "SAD"}
RAVDESS_NAMES = {"anger": "angry", "neutral": "neutral", "sadness": "sad"}
#: actor -> (espeak voice, sex as VideoDemographics.csv writes it)
CREMAD_ACTORS = {
    1001: ("en-us", "Male"),
    1002: ("en-gb+f2", "Female"),
    1003: ("en-gb-scotland", "Male"),
    1004: ("en-us+f4", "Female"),
}
#: RAVDESS actors: odd male, even female
RAVDESS_ACTORS = {3: "en-029", 6: "en-us+f3"}
#: TESS's two speakers (both women)
TESS_SPEAKERS = {"OAF": "en-029+f2", "YAF": "en-gb-x-rp+f4"}
TESS_EMOTIONS = {"anger": "angry", "sadness": "sad"}
TESS_WORDS = ("back", "date", "mill")
#: four CREMA-D clip names per actor and emotion, three RAVDESS ones
CREMAD_TAKES = [("TIE", "LO"), ("DFA", "MD"), ("TIE", "HI"), ("IEO", "XX")]
RAVDESS_TAKES = [(1, 1), (1, 2), (2, 1)]


def _jittered(emotion: str, voice: str, rng: np.random.Generator) -> Prosody:
    base = PROSODY[emotion]
    return Prosody(
        pitch=base["pitch"] + int(rng.integers(-6, 7)),
        amplitude=base["amplitude"] + int(rng.integers(-10, 1)),
        speed=base["speed"] + int(rng.integers(-15, 16)),
        voice=voice,
    )


def acted_corpora(
    folder: Path, speech: Speech, *, per_emotion: int = 4
) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """(CREMA-D training table, RAVDESS test table, TESS test table), each loaded by its loader from the layout
    written under `folder` and also saved as `folder/<corpus>.parquet`. 4 actors × 3 emotions × `per_emotion` (≤ 4)
    training clips; RAVDESS 2 actors × 3 emotions × 3 clips; TESS 2 speakers × 2 emotions × 3 words + 1
    pleasant surprise."""
    rng = np.random.default_rng(1)
    clips = [
        CremadClip(
            emotion=CREMAD_CODES[emotion], actor=actor, sentence=sentence, level=level,
            prosody=_jittered(emotion, voice, rng),
        )
        for actor, (voice, _) in CREMAD_ACTORS.items()
        for emotion in PROSODY
        for sentence, level in CREMAD_TAKES[:per_emotion]
    ]  # fmt: skip
    demographics = {actor: sex for actor, (_, sex) in CREMAD_ACTORS.items()}
    make_cremad(folder / "cremad", clips, speech, demographics=demographics)
    rng = np.random.default_rng(2)
    test_clips = [
        RavdessClip(
            emotion=RAVDESS_NAMES[emotion], actor=actor, statement=statement, repetition=repetition,
            prosody=_jittered(emotion, voice, rng),
        )
        for actor, voice in RAVDESS_ACTORS.items()
        for emotion in PROSODY
        for statement, repetition in RAVDESS_TAKES
    ]  # fmt: skip
    make_ravdess(folder / "ravdess", test_clips, speech)
    rng = np.random.default_rng(3)
    tess_clips = [
        TessClip(TESS_EMOTIONS[emotion], word=word, speaker=speaker, prosody=_jittered(emotion, voice, rng))
        for speaker, voice in TESS_SPEAKERS.items()
        for emotion in TESS_EMOTIONS
        for word in TESS_WORDS
    ]
    surprise = Prosody(pitch=95, amplitude=130, speed=200, voice=TESS_SPEAKERS["YAF"])
    tess_clips.append(TessClip("ps", word="back", speaker="YAF", prosody=surprise))
    make_tess(folder / "tess", tess_clips, speech)
    tables = {"cremad": load_cremad(folder / "cremad"), "ravdess": load_ravdess(folder / "ravdess")}
    tables["tess"] = load_tess(folder / "tess")
    for name, table in tables.items():
        table.to_parquet(folder / f"{name}.parquet", index=False)
    return tables["cremad"], tables["ravdess"], tables["tess"]


# --- a graded IEMOCAP with human and panel votes ------------------------------------------------------------------

GRADED_LABELS = ("anger", "neutral", "sadness")
IEMOCAP_NAMES = {"anger": "Anger", "neutral": "Neutral state", "sadness": "Sadness"}
IEMOCAP_CODES = {"anger": "ang", "neutral": "neu", "sadness": "sad"}
#: (session, speaker gender) -> espeak voice
GRADED_VOICES = {
    (1, "F"): "en-us+f2",
    (1, "M"): "en-us+m3",
    (2, "F"): "en-us+f4",
    (2, "M"): "en-us+m1",
    (3, "F"): "en-us+f3",
    (3, "M"): "en-us+m2",
}
GRADED_LINES = ("That is exactly what happened.", "I told you about it yesterday.")


def grade_distribution(grade: float) -> np.ndarray:
    """The emotion a grade from 0 (sad) to 1 (angry) conveys: p(anger), p(neutral), p(sadness)."""
    sad = max(0.0, 1 - 2 * grade)
    angry = max(0.0, 2 * grade - 1)
    return np.array([angry, 1 - sad - angry, sad])


def grade_prosody(grade: float, voice: str) -> Prosody:
    return Prosody(
        pitch=round(25 + 55 * grade),
        amplitude=round(40 + 120 * grade),
        speed=round(110 + 140 * grade),
        voice=voice,
    )


def rater_lines(p: np.ndarray, raters: int = 4) -> dict[str, str]:
    """Rater k takes the label at quantile (k + ½)/raters of p; near a boundary (within 0.08) both labels."""
    cumulative = np.cumsum(p)
    lines = {}
    for k in range(raters):
        u = (k + 0.5) / raters
        chosen = [int(np.searchsorted(cumulative, u, side="right"))]
        for edge, boundary in enumerate(cumulative[:-1]):
            if abs(u - boundary) < 0.08 and p[edge] > 0 and p[edge + 1] > 0:
                chosen = [edge, edge + 1]
        names = [IEMOCAP_NAMES[GRADED_LABELS[min(c, 2)]] for c in chosen]
        lines[f"E{k + 1}"] = "".join(f"{n}; " for n in names).strip()
    return lines


@dataclass
class GradedCorpus:
    table: pd.DataFrame
    table_path: Path
    votes_path: Path
    grades: dict[str, float]


def graded_iemocap(
    folder: Path, speech: Speech, *, per_speaker: int = 12, annotators: int = 8
) -> GradedCorpus:
    """Three sessions × two speakers × `per_speaker` utterances with grades spread over [0, 1]; the loaded table
    (`load_iemocap`, votes from the rater lines) and a panel's votes.parquet whose annotators draw from a blurred
    version of the grade's distribution."""
    rng = np.random.default_rng(7)
    utterances, grades = [], []
    for (session, gender), voice in GRADED_VOICES.items():
        offsets = rng.permutation(per_speaker)
        for k in range(per_speaker):
            grade = float((offsets[k] + rng.uniform(0.1, 0.9)) / per_speaker)
            p = grade_distribution(grade)
            raters = rater_lines(p)
            counts = {label: 0.0 for label in GRADED_LABELS}
            for line in raters.values():
                names = [n.strip() for n in line.split(";") if n.strip()]
                for name in names:
                    counts[next(k for k, v in IEMOCAP_NAMES.items() if v == name)] += 1 / len(names)
            label = max(GRADED_LABELS, key=lambda c: counts[c])
            utterances.append(
                IemocapUtterance(
                    IEMOCAP_CODES[label], raters=raters, dialog=f"Ses{session:02d}{gender}_impro01", speaker=gender,
                    text=GRADED_LINES[k % len(GRADED_LINES)], prosody=grade_prosody(grade, voice),
                )
            )  # fmt: skip
            grades.append(grade)
    built = make_iemocap(folder / "iemocap", utterances, speech)
    table = load_iemocap(folder / "iemocap", classes="4")
    by_id = {f"iemocap/{u}": g for u, g in zip(built["utt_id"], grades, strict=True)}
    panel = []
    for identifier in table["id"]:
        p = 0.75 * grade_distribution(by_id[identifier]) + 0.25 / 3
        for a in range(annotators):
            valid = rng.random() > 0.05
            panel.append(
                {
                    "id": identifier,
                    "annotator": a,
                    "persona": ["tone+content", "tone", "words", "cues", "what vs how"][a % 5],
                    "temperature": 0.2 + 0.1 * (a % 5),
                    "label": str(rng.choice(GRADED_LABELS, p=p)) if valid else None,
                    "status": "ok" if valid else "invalid",
                    "reason": None if valid else "unparseable",
                }
            )
    table_path = folder / "iemocap.parquet"
    table.to_parquet(table_path, index=False)
    votes_path = folder / "panel" / "votes.parquet"
    votes_path.parent.mkdir(parents=True, exist_ok=True)
    pd.DataFrame(panel).to_parquet(votes_path, index=False)
    return GradedCorpus(table, table_path, votes_path, by_id)


def write_distributions(corpus: GradedCorpus, folder: Path) -> Path:
    """`melt ambiguity`'s distributions.parquet of the graded corpus (labels anger, neutral, sadness)."""
    from melt.ambiguity import AmbiguityConfig, analyse_ambiguity

    config = AmbiguityConfig.load(labels=list(GRADED_LABELS), seeds=[0])
    result = analyse_ambiguity(corpus.table, corpus.votes_path, config)
    path = folder / "distributions.parquet"
    result.distributions().to_parquet(path, index=False)
    return path


def argmax_distributions(path: Path, out: Path, source: str = "human") -> Path:
    """The same file with every `source` distribution replaced by the one-hot of its argmax."""
    frame = pd.read_parquet(path)
    columns = [f"{source}_{label}" for label in GRADED_LABELS]
    values = frame[columns].to_numpy(dtype=float)
    defined = ~np.isnan(values).any(axis=1)
    onehot = np.full_like(values, np.nan)
    onehot[defined] = np.eye(len(columns))[values[defined].argmax(axis=1)]
    frame[columns] = onehot
    frame.to_parquet(out, index=False)
    return out
