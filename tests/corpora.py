"""Small emotional speech corpora in their official layouts, with real espeak-ng speech, for tests and benches.

Each builder writes a corpus the way its release lays it out (folders, file names, annotation and transcript
files in the real formats) with one WAV per utterance spoken by espeak-ng with the caller's prosody, and returns
a DataFrame of what it wrote (one row per utterance: its name, `wav` path and the fields it was built from).

    from corpora import Prosody, Speech, IemocapUtterance, make_iemocap   # tests/ is on sys.path under pytest

    speech = Speech(tmp_path_factory.mktemp("speech"))    # share one per session: see below
    built = make_iemocap(root, [
        IemocapUtterance("ang", raters={"E1": "Anger; Frustration;", "E2": "Anger;"}, speaker="M",
                         prosody=Prosody(pitch=80, amplitude=160, speed=260)),
        IemocapUtterance("sad", dialog="Ses02M_script01_1", prosody=Prosody(pitch=35, speed=110)),
    ], speech)

API
- `Prosody(pitch=55, amplitude=100, speed=175, voice="en-us")`: espeak-ng's -p (0-99), -a (0-200), -s (words
  per minute) and -v.
- `Speech(cache, rate=16000)`: synthesises each distinct (text, prosody) once into `cache` (espeak-ng, then sox
  to `rate` Hz mono 16-bit) and hard-links it (or copies, across file systems) to every path that needs it, so a
  corpus of many files costs only as many syntheses as it has distinct lines. `speech.synthesised` counts them.
  Synthesis costs CPU on a shared machine: keep distinct (text, prosody) pairs few.
- `make_iemocap(root, utterances: list[IemocapUtterance], speech)` -> DataFrame(utt_id, wav, dialog, session,
  label, start, end, ...). Writes `SessionN/dialog/EmoEvaluation/<dialog>.txt` (header, `[start - end]\tutt\t
  label\t[V, A, D]` lines, one `C-<rater>:\t<labels>\t()` line per rater, `A-<rater>:` dimensional lines that a
  loader must ignore), decoys that must not be read (`EmoEvaluation/Categorical/<dialog>_e1_cat.txt`, a macOS
  `._<dialog>.txt`), transcripts `SessionN/dialog/transcriptions/<dialog>.txt` and audio
  `SessionN/sentences/wav/<dialog>/<utt>.wav`. Utterance ids count per dialog and speaker: `<dialog>_F000`.
  `IemocapUtterance(label, raters={rater: "Label; Label;"}, dialog="Ses01F_impro01", speaker="F",
  vad=(2.5, 2.5, 2.5), text="Excuse me.", prosody=Prosody(), transcribed=True, audio=True)`; `transcribed`/
  `audio` False leave the transcript line / the WAV out.
- `make_tess(root, clips: list[TessClip], speech)` -> DataFrame(name, wav, ...). `TessClip(emotion, word="back",
  speaker="OAF", folder=None, prosody=Prosody())` writes `<folder>/<speaker>_<word>_<emotion>.wav` (folder
  default `<speaker>_<emotion>`), speaking "Say the word <word>". emotion: angry disgust fear happy neutral ps sad.
- `make_ravdess(root, clips: list[RavdessClip], speech)` -> DataFrame(name, wav, ...). `RavdessClip(emotion,
  actor=1, intensity=1, statement=1, repetition=1, modality=3, channel=1, prosody=Prosody())` writes
  `Actor_NN/MM-VV-EE-II-SS-RR-AA.wav`; emotion is RAVDESS's name (neutral calm happy sad angry fearful disgust
  surprised), encoded to its code; the statement's sentence is spoken.
- `make_cremad(root, clips: list[CremadClip], speech, demographics={actor: "Male"|"Female"} | None)` ->
  DataFrame(name, wav, ...). `CremadClip(emotion="ANG", actor=1001, sentence="IEO", level="XX",
  responses=((rater, "A", query_type), ...), prosody=Prosody())` writes `AudioWAV/<actor>_<sentence>_<EMO>_<level>
  .wav`, `VideoDemographics.csv` when `demographics` is given and, when any clip has responses,
  `finishedResponses.csv` in the release's columns (query_type 1 voice, 2 face, 3 audio-visual).
- `make_msppodcast(root, clips: list[MspClip], speech, detailed="rows"|"emodetail"|None)` -> DataFrame(name, wav,
  ...). `MspClip(emotion="N", name=None, speaker="127", gender="Female", split="Train", arousal=4.0, valence=4.0,
  dominance=4.0, text="...", annotations=((worker, "Angry"), ...), transcribed=True, prosody=Prosody())` writes
  `Labels/labels_consensus.csv`, `Labels/labels_detailed.csv` (one row per annotation, or the `EmoDetail` form),
  `Audios/<name>.wav` and `Transcripts/<name>.txt`; names default to MSP-PODCAST_0001_0001, _0002...
"""

from __future__ import annotations

import csv
import os
import shutil
import threading
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import pandas as pd
import soundfile

from acoustics.espeak import require_tools, synthesise


@dataclass(frozen=True)
class Prosody:
    pitch: int = 55
    amplitude: int = 100
    speed: int = 175
    voice: str = "en-us"


class Speech:
    """espeak-ng speech made once per distinct (text, prosody) and linked to every file name that needs it."""

    def __init__(self, cache: Path, rate: int = 16000):
        require_tools("espeak-ng", "sox")
        self.cache = Path(cache)
        self.rate = rate
        self.synthesised = 0
        self._made: dict[tuple[str, Prosody], Path] = {}
        self._lock = threading.Lock()

    def source(self, text: str, prosody: Prosody = Prosody()) -> Path:
        """The cached synthesis of `text` with `prosody` (made now if new)."""
        with self._lock:
            key = (text, prosody)
            if key not in self._made:
                path = self.cache / f"line{len(self._made)}.wav"
                options = {"pitch": prosody.pitch, "amplitude": prosody.amplitude, "speed": prosody.speed}
                synthesise(path, text, voice=prosody.voice, rate=self.rate, **options)
                self._made[key] = path
                self.synthesised += 1
            return self._made[key]

    def wav(self, target: Path, text: str, prosody: Prosody = Prosody()) -> Path:
        """`target` holding `text` spoken with `prosody`."""
        source = self.source(text, prosody)
        target = Path(target)
        target.parent.mkdir(parents=True, exist_ok=True)
        target.unlink(missing_ok=True)
        try:
            os.link(source, target)
        except OSError:
            shutil.copyfile(source, target)
        return target


def _seconds(path: Path) -> float:
    return soundfile.info(str(path)).duration


# --- IEMOCAP -----------------------------------------------------------------------------------------------------

IEMOCAP_HEADER = "% [START_TIME - END_TIME] TURN_NAME EMOTION [V, A, D]"


@dataclass
class IemocapUtterance:
    label: str
    raters: dict[str, str] = field(default_factory=dict)
    dialog: str = "Ses01F_impro01"
    speaker: str = "F"
    vad: tuple[float, float, float] = (2.5, 2.5, 2.5)
    text: str = "Excuse me."
    prosody: Prosody = Prosody()
    transcribed: bool = True
    audio: bool = True


def make_iemocap(root: Path, utterances: Sequence[IemocapUtterance], speech: Speech) -> pd.DataFrame:
    root = Path(root)
    counters: dict[tuple[str, str], int] = {}
    clock: dict[str, float] = {}
    built = []
    for utterance in utterances:
        session = int(utterance.dialog[3:5])
        number = counters.get((utterance.dialog, utterance.speaker), 0)
        counters[(utterance.dialog, utterance.speaker)] = number + 1
        utt_id = f"{utterance.dialog}_{utterance.speaker}{number:03d}"
        session_dir = root / f"Session{session}"
        wav = session_dir / "sentences" / "wav" / utterance.dialog / f"{utt_id}.wav"
        length = _seconds(speech.source(utterance.text, utterance.prosody))
        if utterance.audio:
            speech.wav(wav, utterance.text, utterance.prosody)
        start = clock.get(utterance.dialog, 1.0)
        end = start + length
        clock[utterance.dialog] = end + 0.75
        built.append(
            {
                "utt_id": utt_id,
                "wav": wav,
                "session": session,
                "start": round(start, 4),
                "end": round(end, 4),
                "seconds": length,
                **asdict(utterance),
            }
        )
    frame = pd.DataFrame(built)
    for dialog, rows in frame.groupby("dialog", sort=False):
        session_dir = root / f"Session{int(dialog[3:5])}" / "dialog"
        evaluation = session_dir / "EmoEvaluation" / f"{dialog}.txt"
        evaluation.parent.mkdir(parents=True, exist_ok=True)
        lines = [IEMOCAP_HEADER, ""]
        transcript = []
        for row in rows.itertuples():
            v, a, d = row.vad
            lines.append(
                f"[{row.start:.4f} - {row.end:.4f}]\t{row.utt_id}\t{row.label}\t[{v:.4f}, {a:.4f}, {d:.4f}]"
            )
            lines += [f"C-{rater}:\t{labels}\t()" for rater, labels in row.raters.items()]
            lines += [f"A-{rater}:\tval 3; act 2; dom  2;\t()" for rater in row.raters]
            lines.append("")
            if row.transcribed:
                transcript.append(f"{row.utt_id} [{row.start:08.4f}-{row.end:08.4f}]: {row.text}")
        evaluation.write_text("\n".join(lines) + "\n", encoding="utf-8")
        # Files a loader must not read as utterance annotations.
        categorical = evaluation.parent / "Categorical" / f"{dialog}_e1_cat.txt"
        categorical.parent.mkdir(exist_ok=True)
        categorical.write_text("".join(f"{u} :Neutral state; ()\n" for u in rows["utt_id"]), encoding="utf-8")
        (evaluation.parent / f"._{dialog}.txt").write_bytes(b"\x00\x05\x16\x07Mac OS X resource fork")
        transcript.append(f"{dialog}_MXX0 [000.0000-000.5000]: [LAUGHTER]")
        (session_dir / "transcriptions").mkdir(parents=True, exist_ok=True)
        (session_dir / "transcriptions" / f"{dialog}.txt").write_text(
            "\n".join(transcript) + "\n", encoding="utf-8"
        )
    return frame


# --- TESS --------------------------------------------------------------------------------------------------------

TESS_FOLDERS = {"ps": "Pleasant_surprise", "fear": "Fear", "sad": "Sad"}


@dataclass
class TessClip:
    emotion: str
    word: str = "back"
    speaker: str = "OAF"
    folder: str | None = None
    prosody: Prosody = Prosody()


def make_tess(root: Path, clips: Sequence[TessClip], speech: Speech) -> pd.DataFrame:
    built = []
    for clip in clips:
        folder = clip.folder or f"{clip.speaker}_{TESS_FOLDERS.get(clip.emotion, clip.emotion)}"
        name = f"{clip.speaker}_{clip.word}_{clip.emotion}"
        wav = speech.wav(Path(root) / folder / f"{name}.wav", f"Say the word {clip.word}", clip.prosody)
        built.append({**asdict(clip), "name": name, "wav": wav})
    return pd.DataFrame(built)


# --- RAVDESS -----------------------------------------------------------------------------------------------------

#: RAVDESS's documented emotion codes (encoded here independently of the loader's table).
RAVDESS_CODES = {
    "neutral": 1,
    "calm": 2,
    "happy": 3,
    "sad": 4,
    "angry": 5,
    "fearful": 6,
    "disgust": 7,
    "surprised": 8,
}
RAVDESS_SENTENCES = {1: "Kids are talking by the door", 2: "Dogs are sitting by the door"}


@dataclass
class RavdessClip:
    emotion: str
    actor: int = 1
    intensity: int = 1
    statement: int = 1
    repetition: int = 1
    modality: int = 3
    channel: int = 1
    prosody: Prosody = Prosody()


def make_ravdess(root: Path, clips: Sequence[RavdessClip], speech: Speech) -> pd.DataFrame:
    built = []
    for clip in clips:
        parts = (
            clip.modality,
            clip.channel,
            RAVDESS_CODES[clip.emotion],
            clip.intensity,
            clip.statement,
            clip.repetition,
            clip.actor,
        )
        name = "-".join(f"{p:02d}" for p in parts)
        wav = Path(root) / f"Actor_{clip.actor:02d}" / f"{name}.wav"
        speech.wav(wav, RAVDESS_SENTENCES[clip.statement], clip.prosody)
        built.append({**asdict(clip), "name": name, "wav": wav})
    return pd.DataFrame(built)


# --- CREMA-D -----------------------------------------------------------------------------------------------------

CREMAD_SENTENCES = {
    "IEO": "It's eleven o'clock",
    "TIE": "That is exactly what happened",
    "DFA": "Don't forget a jacket",
}
#: finishedResponses.csv's columns as the release writes them (R's row names first, with an empty header).
CREMAD_RESPONSE_COLUMNS = [
    "",
    "localid",
    "pos",
    "ans",
    "ttr",
    "queryType",
    "numTries",
    "clipNum",
    "questNum",
    "subType",
    "clipName",
    "sessionNums",
    "respEmo",
    "respLevel",
    "dispEmo",
    "dispVal",
    "dispLevel",
]


@dataclass
class CremadClip:
    emotion: str = "ANG"
    actor: int = 1001
    sentence: str = "IEO"
    level: str = "XX"
    responses: tuple[tuple[str, str, int], ...] = ()
    prosody: Prosody = Prosody()


def make_cremad(
    root: Path, clips: Sequence[CremadClip], speech: Speech, demographics: dict[int, str] | None = None
) -> pd.DataFrame:
    root = Path(root)
    built, responses = [], []
    for number, clip in enumerate(clips, start=1):
        name = f"{clip.actor}_{clip.sentence}_{clip.emotion}_{clip.level}"
        wav = speech.wav(
            root / "AudioWAV" / f"{name}.wav", CREMAD_SENTENCES.get(clip.sentence, "Hello."), clip.prosody
        )
        built.append({**asdict(clip), "name": name, "wav": wav})
        for rater, answer, query_type in clip.responses:
            position = len(responses) + 1
            # R's row name, localid, pos, ans, ttr, queryType, numTries, clipNum, questNum, subType, clipName,
            # sessionNums, respEmo, respLevel, dispEmo, dispVal, dispLevel
            response = [position, rater, position, f"{answer}_50", 2000, query_type, 0, number, 1, 4, name]
            responses.append([*response, f"s{rater}", answer, 50, clip.emotion[0], "X", 50])
    if responses:
        with (root / "finishedResponses.csv").open("w", newline="", encoding="utf-8") as handle:
            writer = csv.writer(handle, quoting=csv.QUOTE_NONNUMERIC)
            writer.writerow(CREMAD_RESPONSE_COLUMNS)
            writer.writerows(responses)
    if demographics:
        rows = [[actor, 30, sex, "Caucasian", "Not Hispanic"] for actor, sex in demographics.items()]
        with (root / "VideoDemographics.csv").open("w", newline="", encoding="utf-8") as handle:
            writer = csv.writer(handle, quoting=csv.QUOTE_NONNUMERIC)
            writer.writerow(["ActorID", "Age", "Sex", "Race", "Ethnicity"])
            writer.writerows(rows)
    return pd.DataFrame(built)


# --- MSP-Podcast -------------------------------------------------------------------------------------------------


@dataclass
class MspClip:
    emotion: str = "N"
    name: str | None = None
    speaker: str = "127"
    gender: str = "Female"
    split: str = "Train"
    arousal: float = 4.0
    valence: float = 4.0
    dominance: float = 4.0
    text: str = "I really did not expect that to happen today."
    annotations: tuple[tuple[str, str], ...] = ()
    transcribed: bool = True
    prosody: Prosody = Prosody()


def make_msppodcast(
    root: Path, clips: Sequence[MspClip], speech: Speech, detailed: str | None = "rows"
) -> pd.DataFrame:
    root = Path(root)
    built, consensus, annotations = [], [], []
    for number, clip in enumerate(clips, start=1):
        name = clip.name or f"MSP-PODCAST_0001_{number:04d}"
        wav = speech.wav(root / "Audios" / f"{name}.wav", clip.text, clip.prosody)
        if clip.transcribed:
            (root / "Transcripts").mkdir(parents=True, exist_ok=True)
            (root / "Transcripts" / f"{name}.txt").write_text(clip.text, encoding="utf-8")
        values = (
            clip.emotion,
            clip.arousal,
            clip.valence,
            clip.dominance,
            clip.speaker,
            clip.gender,
            clip.split,
        )
        consensus.append([f"{name}.wav", *values])
        annotations += [(f"{name}.wav", worker, primary) for worker, primary in clip.annotations]
        built.append({**asdict(clip), "name": name, "wav": wav})
    labels = root / "Labels"
    labels.mkdir(parents=True, exist_ok=True)
    columns = ["FileName", "EmoClass", "EmoAct", "EmoVal", "EmoDom", "SpkrID", "Gender", "Split_Set"]
    pd.DataFrame(consensus, columns=columns).to_csv(labels / "labels_consensus.csv", index=False)
    if detailed == "rows":
        frame = pd.DataFrame(annotations, columns=["FileName", "WorkerID", "EmoClass_Major"])
        frame["EmoClass_Second"] = "Concerned,Frustrated"
        frame["EmoAct"], frame["EmoVal"], frame["EmoDom"] = 3, 4, 4
        frame.to_csv(labels / "labels_detailed.csv", index=False)
    elif detailed == "emodetail":
        rows = [(f, f"{w}; {p}; Concerned,Frustrated; A:3.0; V:4.0; D:4.0;") for f, w, p in annotations]
        pd.DataFrame(rows, columns=["FileName", "EmoDetail"]).to_csv(
            labels / "labels_detailed.csv", index=False
        )
    return pd.DataFrame(built)
