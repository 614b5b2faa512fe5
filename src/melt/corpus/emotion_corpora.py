"""Loaders for emotional speech corpora in their official layouts: IEMOCAP, TESS, RAVDESS, CREMA-D, MSP-Podcast.

Each returns an utterance table (docs/corpus-schema.md): ids `<corpus>/<the corpus's own name>`, `audio` as an
absolute path, `duration` from the audio file's header, `speaker`, `gender` where known, `label` mapped with
`melt.corpus.labels.CORPUS_LABELS` (the corpus's own label kept in `label_original`), `votes` where the corpus has
per-rater labels, and a speaker-independent `fold`. A file whose audio is missing or unreadable keeps its row
with `audio` empty and the reason in `audio_problem`; what a loader skipped or could not find is listed in
`table.attrs["melt"]["notes"]`. A root that holds nothing of the expected layout is a `MeltError` saying what
was expected where.
"""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Iterable
from pathlib import Path

import pandas as pd

from melt.corpus.audio_files import measure
from melt.corpus.folds import assign_folds, default_k
from melt.corpus.labels import CORPUS_LABELS, corpus_label, rater_label
from melt.corpus.schema import conform, rater_votes, read_any, votes_json
from melt.errors import MeltError

IEMOCAP_CLASSES: tuple[str, ...] = ("4", "all")
#: The field's 4-class IEMOCAP: neutral, happy merged with excited, sad, angry (5,531 utterances).
IEMOCAP_FOUR = ("neu", "hap", "exc", "sad", "ang")

RAVDESS_EMOTIONS = {
    "01": "neutral",
    "02": "calm",
    "03": "happy",
    "04": "sad",
    "05": "angry",
    "06": "fearful",
    "07": "disgust",
    "08": "surprised",
}
RAVDESS_STATEMENTS = {"01": "Kids are talking by the door", "02": "Dogs are sitting by the door"}
RAVDESS_INTENSITY = {"01": "normal", "02": "strong"}

CREMAD_SENTENCES = {
    "IEO": "It's eleven o'clock",
    "TIE": "That is exactly what happened",
    "IOM": "I'm on my way to the meeting",
    "IWW": "I wonder what this is about",
    "TAI": "The airplane is almost full",
    "MTI": "Maybe tomorrow it will be cold",
    "IWL": "I would like a new alarm clock",
    "ITH": "I think I have a doctor's appointment",
    "DFA": "Don't forget a jacket",
    "ITS": "I think I've seen this before",
    "TSI": "The surface is slick",
    "WSI": "We'll stop in a couple of minutes",
}
CREMAD_LEVELS = ("LO", "MD", "HI", "XX")
#: `queryType` of finishedResponses.csv: what the rater was shown.
CREMAD_CHANNELS = {"voice": "1", "face": "2", "audiovisual": "3"}

MSP_SPLITS = {"train": "train", "development": "dev", "validation": "dev"}


# --- shared ------------------------------------------------------------------------------------------------------


def _check_root(root: str | Path, corpus: str) -> Path:
    root = Path(root)
    if not root.exists():
        raise MeltError(f"folder not found (expected the {corpus} root folder)", file=root)
    if not root.is_dir():
        raise MeltError(f"not a folder (expected the {corpus} root folder)", file=root)
    return root.resolve()


def _nothing_found(root: Path, expected: str) -> MeltError:
    entries = sorted(p.name for p in root.iterdir() if not p.name.startswith("."))
    shown = ", ".join(entries[:8]) + (", ..." if len(entries) > 8 else "") if entries else "nothing"
    return MeltError(f"{expected}; the folder holds: {shown}", file=root)


def _audio_files(root: Path, suffix: str = ".wav") -> list[Path]:
    """Files with `suffix` (any case) anywhere under `root`, sorted; macOS `._*` resource forks left out."""
    found = []
    for folder, dirs, files in os.walk(root):
        dirs.sort()
        for name in sorted(files):
            if not name.startswith("._") and name.lower().endswith(suffix):
                found.append(Path(folder) / name)
    return found


def _read_text(path: Path) -> str:
    raw = path.read_bytes()
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        raise MeltError(f"line {line}: not UTF-8 text (byte 0x{raw[exc.start]:02x})", file=path) from exc


def _one_file_per_name(files: dict[str, list[Path]], root: Path, notes: list[str]) -> dict[str, Path]:
    """The same clip twice (a corpus unpacked into itself, as some TESS downloads are) counts once when the copies
    are identical; two different files under one name are an error, since either could be the right one."""
    chosen = {}
    copies = 0
    for name, paths in files.items():
        first = paths[0]
        for other in paths[1:]:
            if not _same_content(first, other):
                raise MeltError(
                    f"two different files are both {name!r}: {first.relative_to(root)} and "
                    f"{other.relative_to(root)}; keep one",
                    file=root,
                )
            copies += 1
        chosen[name] = first
    if copies:
        notes.append(f"{copies} identical duplicate file(s) ignored (the same name in two folders)")
    return chosen


def _same_content(a: Path, b: Path) -> bool:
    if a.stat().st_size != b.stat().st_size:
        return False
    return _sha256(a) == _sha256(b)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _unmatched_note(paths: list[Path], root: Path, expected: str, notes: list[str]) -> None:
    if paths:
        shown = ", ".join(str(p.relative_to(root)) for p in paths[:3])
        notes.append(
            f"{len(paths)} file(s) skipped, not named like {expected}: {shown}{', ...' if len(paths) > 3 else ''}"
        )


def _shown(path: Path, root: Path) -> str:
    try:
        return str(path.relative_to(root))
    except ValueError:
        return str(path)


def _finish(
    rows: list[dict],
    corpus: str,
    root: Path,
    notes: list[str],
    *,
    fold_by: str = "speaker",
    progress: bool = False,
) -> pd.DataFrame:
    """Measure the audio, set the default folds and conform: the steps every loader ends with."""
    table = pd.DataFrame(rows).sort_values("id", kind="stable").reset_index(drop=True)
    table["corpus"] = corpus
    measured = measure(list(table["audio"]), progress=progress)
    failed = pd.Series([reason is not None for reason in measured.reasons])
    table["duration"] = pd.Series(measured.durations, dtype="Float64").round(4)
    table["duration_source"] = pd.Series(
        ["audio" if r is None else None for r in measured.reasons], dtype="string"
    )
    # A row without usable audio keeps no path, as `melt audio extract` leaves it; the reason names the file.
    table["audio_problem"] = pd.Series(
        [
            None if reason is None else f"{reason}: {_shown(Path(path), root)}"
            for reason, path in zip(measured.reasons, table["audio"], strict=True)
        ],
        dtype="string",
    )
    table.loc[failed.to_numpy(), "audio"] = None
    if "fold" not in table.columns:
        k = default_k(table, fold_by)
        table["fold"] = assign_folds(table, by=fold_by, k=k, seed=0) if k else pd.NA
    out = conform(table, source=root)
    out.attrs["melt"] = {"corpus": corpus, "root": str(root), "notes": notes}
    return out


# --- IEMOCAP -----------------------------------------------------------------------------------------------------

_EVAL_LINE = re.compile(r"^\[\s*([^\s\]-]+)\s*-\s*([^\s\]]+)\s*\]\s+(\S+)\s+(\S+)\s+\[([^\]]*)\]\s*$")
_RATER_LINE = re.compile(r"^C-([^:\s]+)\s*:(.*)$")
#: Rater ids of the session's actors (`C-F1:`, `C-M1:`): their self-evaluations, not evaluators' perceptions.
_IEMOCAP_ACTOR = re.compile(r"^[FM]\d+$")
_TRANSCRIPT_LINE = re.compile(r"^(\S+)\s+\[[^\]]*\]\s*:\s?(.*)$")
_IEMOCAP_ID = re.compile(r"^Ses(\d+)[FM]_.*_([FM])\d+$")


def load_iemocap(root: str | Path, *, classes: str = "4", progress: bool = False) -> pd.DataFrame:
    """IEMOCAP from its release folder (the one holding Session1..Session5).

    Reads `SessionN/dialog/EmoEvaluation/<dialog>.txt` (the utterance line `[start - end] utt label [V, A, D]`
    and one `C-<rater>:` line per rater listing labels separated by `;`; the dimensional `A-` lines and the
    sub-folders Categorical/Attribute/Self-evaluation are not read), transcripts from
    `SessionN/dialog/transcriptions/<dialog>.txt` and audio `SessionN/sentences/wav/<dialog>/<utt>.wav`.
    `classes="4"` keeps neu, hap+exc (as joy), sad, ang; `"all"` keeps every label, off-set ones included.
    Speaker is session + the speaking actor's gender (`Ses01F_impro01_M003` -> Ses01M); fold = session.
    `votes` holds the evaluators' lines (`C-E1:`...); the actors' self-evaluations (`C-F1:`, `C-M1:`) go to
    `self_votes`, since the release's label and [V, A, D] means are the evaluators' alone.
    """
    if classes not in IEMOCAP_CLASSES:
        raise MeltError(f"--classes takes 4 or all, got {classes!r}")
    root = _check_root(root, "IEMOCAP")
    evaluations = sorted(
        p for p in root.glob("Session*/dialog/EmoEvaluation/*.txt") if not p.name.startswith("._")
    )
    if not evaluations:
        raise _nothing_found(
            root, "no IEMOCAP annotations: expected Session1..5/dialog/EmoEvaluation/<dialog>.txt under it"
        )
    notes: list[str] = []
    rows: list[dict] = []
    seen: dict[str, Path] = {}
    dialogs = sorted({p.stem for p in evaluations})
    untranscribed = 0
    for evaluation in evaluations:
        session_dir = evaluation.parents[2]
        dialog = evaluation.stem
        transcript = session_dir / "dialog" / "transcriptions" / f"{dialog}.txt"
        texts = _iemocap_transcript(transcript) if transcript.is_file() else {}
        for utterance in _iemocap_evaluation(evaluation):
            utt = utterance["utt"]
            if utt in seen:
                raise MeltError(
                    f"utterance {utt} is annotated twice: here and in {seen[utt].relative_to(root)}",
                    file=evaluation,
                )
            seen[utt] = evaluation
            mapped = corpus_label("iemocap", utterance["label"])
            if mapped is None:
                raise MeltError(
                    f"line {utterance['line']}: unknown IEMOCAP label {utterance['label']!r} "
                    f"(known: {', '.join(CORPUS_LABELS['iemocap'])})",
                    file=evaluation,
                )
            original, label = mapped
            if classes == "4" and original not in IEMOCAP_FOUR:
                continue
            text = texts.get(utt)
            untranscribed += text is None
            # The release's own aggregates (the label, the [V, A, D] means) come from the evaluators alone; an
            # actor rating their own turn is a different judgement, kept apart in `self_votes`.
            evaluators = {r: v for r, v in utterance["raters"].items() if not _IEMOCAP_ACTOR.match(r)}
            actors = {r: v for r, v in utterance["raters"].items() if _IEMOCAP_ACTOR.match(r)}
            session, gender = utterance["session"], utterance["gender"]
            rows.append(
                {
                    "id": f"iemocap/{utt}",
                    "speaker": f"Ses{session:02d}{gender}",
                    "gender": gender,
                    "session": session,
                    "dialogue": dialog,
                    "dialogue_id": dialogs.index(dialog),
                    "start": utterance["start"],
                    "end": utterance["end"],
                    "text": text,
                    "label": label,
                    "label_original": original,
                    "votes": votes_json(rater_votes(evaluators)),
                    "self_votes": votes_json(rater_votes(actors)),
                    "valence": utterance["vad"][0],
                    "arousal": utterance["vad"][1],
                    "dominance": utterance["vad"][2],
                    "audio": str(session_dir / "sentences" / "wav" / dialog / f"{utt}.wav"),
                    "fold": session,
                }
            )
    if not rows:
        raise MeltError(
            f"no utterance with a label kept by --classes {classes} in {len(evaluations)} files", file=root
        )
    if untranscribed:
        notes.append(
            f"{untranscribed} utterance(s) have no line in SessionN/dialog/transcriptions/<dialog>.txt: text left empty"
        )
    table = pd.DataFrame(rows)
    # Position in the dialogue by start time, for prompts that show the turns before an utterance.
    table["utterance_id"] = table.groupby("dialogue")["start"].rank(method="first").astype(int) - 1
    return _finish(table.to_dict("records"), "iemocap", root, notes, fold_by="session", progress=progress)


def _iemocap_evaluation(path: Path) -> list[dict]:
    utterances: list[dict] = []
    for number, line in enumerate(_read_text(path).splitlines(), start=1):
        line = line.strip()
        if not line or line.startswith("%") or line.startswith("A-"):
            continue
        if line.startswith("["):
            utterances.append(_iemocap_utterance(line, number, path))
        elif match := _RATER_LINE.match(line):
            if not utterances:
                raise MeltError(f"line {number}: rater line before any utterance line", file=path)
            # Labels never hold "(": the rater's comment starts there and may hold ";" and nested brackets.
            body = match.group(2).split("(", 1)[0]
            labels = [rater_label(part) for part in body.split(";") if part.strip()]
            # A rater listed twice still weighs one, split over everything they said.
            utterances[-1]["raters"].setdefault(match.group(1), []).extend(label for label in labels if label)
    return utterances


def _iemocap_utterance(line: str, number: int, path: Path) -> dict:
    expected = "expected '[start - end]<TAB>utt_id<TAB>label<TAB>[V, A, D]'"
    match = _EVAL_LINE.match(line)
    if not match:
        raise MeltError(f"line {number}: {expected}, found {line!r}", file=path)
    start, end, utt, label, vad = match.groups()
    identity = _IEMOCAP_ID.match(utt)
    if not identity:
        raise MeltError(
            f"line {number}: utterance id {utt!r} is not like Ses01F_impro01_M003 (session, speaker gender)",
            file=path,
        )
    try:
        times = float(start), float(end)
        values = [float(v) for v in vad.split(",")]
    except ValueError:
        raise MeltError(f"line {number}: {expected}, found {line!r}", file=path) from None
    if len(values) != 3:
        raise MeltError(f"line {number}: [V, A, D] needs three numbers, found [{vad}]", file=path)
    return {
        "utt": utt,
        "session": int(identity.group(1)),
        "gender": identity.group(2),
        "start": times[0],
        "end": times[1],
        "label": label,
        "vad": values,
        "raters": {},
        "line": number,
    }


def _iemocap_transcript(path: Path) -> dict[str, str]:
    texts = {}
    for line in _read_text(path).splitlines():
        match = _TRANSCRIPT_LINE.match(line.strip())
        if match:
            texts[match.group(1)] = match.group(2).strip()
    return texts


# --- TESS --------------------------------------------------------------------------------------------------------

_TESS_NAME = re.compile(r"^(OAF?|YAF?)_(.+)_([A-Za-z]+)$", re.IGNORECASE)


def load_tess(root: str | Path, *, progress: bool = False) -> pd.DataFrame:
    """TESS: files named `<OAF|YAF>_<word>_<emotion>.wav` in any sub-folder (`ps` is pleasant surprise).

    Both speakers are women; the text is the carrier phrase "Say the word <word>". Folds: one per speaker.
    Names are read in any case and ids are written in one (`tess/YAF_dog_angry` for `yaf_dog_Angry.wav`), so
    copies that differ only in case count once; the release's one misnamed file, `OAF_neutral/OA_bite_neutral.wav`,
    is read as OAF's (a prefix `OA`/`YA` is taken for `OAF`/`YAF`, and said in a note)."""
    root = _check_root(root, "TESS")
    notes: list[str] = []
    by_name: dict[str, list[Path]] = {}
    unmatched, misnamed = [], []
    found: dict[str, tuple[str, str, str, str]] = {}  # id name -> (speaker, word, original, label)
    for path in _audio_files(root):
        match = _TESS_NAME.match(path.stem)
        mapped = corpus_label("tess", match.group(3)) if match else None
        if mapped is None:
            unmatched.append(path)
            continue
        speaker = match.group(1).upper()
        if len(speaker) == 2:
            speaker += "F"
            misnamed.append(path)
        word = match.group(2).lower()
        name = f"{speaker}_{word}_{mapped[0]}"
        by_name.setdefault(name, []).append(path)
        found[name] = (speaker, word, *mapped)
    expected = "OAF_back_angry.wav (OAF|YAF, a word, angry|disgust|fear|happy|neutral|ps|sad)"
    if not by_name:
        raise _nothing_found(
            root, f"no TESS files: expected .wav files named like {expected} in any sub-folder"
        )
    _unmatched_note(unmatched, root, expected, notes)
    if misnamed:
        shown = ", ".join(_shown(p, root) for p in misnamed[:3]) + (", ..." if len(misnamed) > 3 else "")
        notes.append(f"{len(misnamed)} file(s) named OA_/YA_ read as OAF/YAF's: {shown}")
    rows = []
    for name, path in _one_file_per_name(by_name, root, notes).items():
        speaker, word, original, label = found[name]
        rows.append(
            {
                "id": f"tess/{name}",
                "speaker": speaker,
                "gender": "F",
                "text": f"Say the word {word}",
                "label": label,
                "label_original": original,
                "audio": str(path),
            }
        )
    return _finish(rows, "tess", root, notes, progress=progress)


# --- RAVDESS -----------------------------------------------------------------------------------------------------

_RAVDESS_NAME = re.compile(r"^(\d\d)-(\d\d)-(\d\d)-(\d\d)-(\d\d)-(\d\d)-(\d\d)$")


def load_ravdess(root: str | Path, *, keep_calm: bool = False, progress: bool = False) -> pd.DataFrame:
    """RAVDESS audio-only speech: `03-01-EE-II-SS-RR-AA.wav` (modality 03, vocal channel 01) in any sub-folder.

    Calm (02) is dropped unless `keep_calm`, then kept as its own label `calm`. Speaker = actor (odd male, even
    female); `intensity` normal/strong."""
    root = _check_root(root, "RAVDESS")
    notes: list[str] = []
    by_name: dict[str, list[Path]] = {}
    unmatched, other_kinds = [], 0
    for path in _audio_files(root):
        match = _RAVDESS_NAME.match(path.stem)
        if not match or match.group(3) not in RAVDESS_EMOTIONS or match.group(5) not in RAVDESS_STATEMENTS:
            unmatched.append(path)
        elif match.group(1) != "03" or match.group(2) != "01":
            other_kinds += 1
        else:
            by_name.setdefault(path.stem, []).append(path)
    expected = "03-01-05-01-02-01-12.wav (modality-channel-emotion-intensity-statement-repetition-actor)"
    if not by_name:
        raise _nothing_found(
            root, f"no RAVDESS audio-only speech: expected .wav files named like {expected} in any sub-folder"
        )
    _unmatched_note(unmatched, root, expected, notes)
    if other_kinds:
        notes.append(f"{other_kinds} file(s) skipped: not audio-only speech (modality 03, vocal channel 01)")
    rows, calm = [], 0
    for name, path in _one_file_per_name(by_name, root, notes).items():
        _, _, emotion, intensity, statement, _, actor = _RAVDESS_NAME.match(name).groups()
        original, label = corpus_label("ravdess", RAVDESS_EMOTIONS[emotion])
        if original == "calm" and not keep_calm:
            calm += 1
            continue
        rows.append(
            {
                "id": f"ravdess/{name}",
                "speaker": f"Actor_{actor}",
                "gender": "M" if int(actor) % 2 else "F",
                "text": RAVDESS_STATEMENTS[statement],
                "label": label,
                "label_original": original,
                "intensity": RAVDESS_INTENSITY.get(intensity),
                "audio": str(path),
            }
        )
    if calm:
        notes.append(f"{calm} calm utterance(s) dropped (--keep-calm keeps them as the label 'calm')")
    return _finish(rows, "ravdess", root, notes, progress=progress)


# --- CREMA-D -----------------------------------------------------------------------------------------------------

_CREMAD_NAME = re.compile(r"^(\d{4})_([A-Za-z]{3})_([A-Za-z]{3})_([A-Za-z]{2})$")


def load_cremad(
    root: str | Path,
    *,
    votes: str | Path | None = None,
    vote_channel: str = "voice",
    progress: bool = False,
) -> pd.DataFrame:
    """CREMA-D: `<ActorID>_<Sentence>_<EMO>_<Level>.wav` in any sub-folder (the release's AudioWAV/).

    The level (LO, MD, HI, XX) is kept as `intensity`; gender comes from `VideoDemographics.csv` in the root
    when present. `votes`: the release's `finishedResponses.csv` (one row per response: `clipName`, a rater id
    `localid` (or `sessionNums`), `respEmo` A/D/F/H/N/S, `queryType` 1 voice, 2 face, 3 audio-visual); the
    responses of `vote_channel` (voice, face, audiovisual or all) become each clip's votes."""
    if vote_channel not in (*CREMAD_CHANNELS, "all"):
        raise MeltError(f"--vote-channel takes voice, face, audiovisual or all, got {vote_channel!r}")
    root = _check_root(root, "CREMA-D")
    notes: list[str] = []
    by_name: dict[str, list[Path]] = {}
    unmatched = []
    for path in _audio_files(root):
        match = _CREMAD_NAME.match(path.stem)
        if (
            not match
            or match.group(2).upper() not in CREMAD_SENTENCES
            or corpus_label("cremad", match.group(3).upper()) is None
            or match.group(4).upper() not in CREMAD_LEVELS
        ):
            unmatched.append(path)
            continue
        by_name.setdefault(path.stem.upper(), []).append(path)
    expected = "1001_DFA_ANG_XX.wav (actor, sentence, ANG|DIS|FEA|HAP|NEU|SAD, LO|MD|HI|XX)"
    if not by_name:
        raise _nothing_found(root, f"no CREMA-D clips: expected .wav files named like {expected} (AudioWAV/)")
    _unmatched_note(unmatched, root, expected, notes)
    genders = _cremad_genders(root)
    clip_votes = _cremad_votes(Path(votes), vote_channel) if votes is not None else {}
    rows = []
    for name, path in _one_file_per_name(by_name, root, notes).items():
        actor, sentence, emotion, level = name.split("_")
        original, label = corpus_label("cremad", emotion)
        rows.append(
            {
                "id": f"cremad/{name}",
                "speaker": actor,
                "gender": genders.get(actor),
                "text": CREMAD_SENTENCES[sentence],
                "label": label,
                "label_original": original,
                "intensity": level,
                "votes": votes_json(rater_votes(clip_votes.get(name, {}))),
                "audio": str(path),
            }
        )
    if votes is not None:
        without = sum(name not in clip_votes for name in by_name)
        unknown = sum(name not in by_name for name in clip_votes)
        if without:
            notes.append(f"{without} clip(s) have no {vote_channel} responses in {votes}: votes left empty")
        if unknown:
            notes.append(
                f"{unknown} clip(s) in {votes} have no audio file under the root: their votes are unused"
            )
    if not genders:
        notes.append("no VideoDemographics.csv in the root: gender left empty")
    return _finish(rows, "cremad", root, notes, progress=progress)


def _cremad_genders(root: Path) -> dict[str, str]:
    path = root / "VideoDemographics.csv"
    if not path.is_file():
        return {}
    table = read_any(path)
    missing = [c for c in ("ActorID", "Sex") if c not in table.columns]
    if missing:
        raise MeltError(f"missing column(s) {missing}; found {list(table.columns)}", file=path)
    sexes = {"male": "M", "female": "F"}
    return {
        str(actor).strip(): sexes[str(sex).strip().lower()]
        for actor, sex in zip(table["ActorID"], table["Sex"], strict=True)
        if pd.notna(sex) and str(sex).strip().lower() in sexes
    }


def _cremad_votes(path: Path, channel: str) -> dict[str, dict[str, list[str]]]:
    """{clip: {rater: [label, ...]}} from finishedResponses.csv."""
    table = read_any(path)
    rater_column = next((c for c in ("localid", "sessionNums") if c in table.columns), None)
    missing = [c for c in ("clipName", "respEmo") if c not in table.columns]
    if missing or rater_column is None:
        raise MeltError(
            "expected CREMA-D's finishedResponses.csv: columns clipName, respEmo and a rater id (localid or "
            f"sessionNums), plus queryType to pick the channel; found {list(table.columns)}",
            file=path,
        )
    if channel != "all":
        if "queryType" not in table.columns:
            raise MeltError(
                f"no queryType column to pick the {channel} responses; use --vote-channel all", file=path
            )
        kinds = pd.to_numeric(table["queryType"], errors="coerce")
        table = table[kinds == int(CREMAD_CHANNELS[channel])]
    votes: dict[str, dict[str, list[str]]] = {}
    for position, (clip, rater, answer) in table[["clipName", rater_column, "respEmo"]].iterrows():
        row = int(position) + 1
        for value, column in ((clip, "clipName"), (rater, rater_column), (answer, "respEmo")):
            if pd.isna(value) or not str(value).strip():
                raise MeltError("empty value", file=path, row=row, column=column)
        mapped = corpus_label("cremad", str(answer).strip().upper())
        if mapped is None or len(mapped[0]) != 1:
            raise MeltError(
                f"unknown response {answer!r}: expected one of A, D, F, H, N, S",
                file=path,
                row=row,
                column="respEmo",
            )
        name = Path(str(clip).strip()).stem.upper()
        votes.setdefault(name, {}).setdefault(str(rater).strip(), []).append(mapped[1])
    return votes


# --- MSP-Podcast -------------------------------------------------------------------------------------------------

MSP_CONSENSUS = ("labels_consensus.csv", "labels_concensus.csv")  # releases before 1.10 spelt it "concensus"
MSP_WORKER_COLUMNS = ("WorkerID", "Worker", "Workers")


def load_msppodcast(root: str | Path, *, progress: bool = False) -> pd.DataFrame:
    """MSP-Podcast: `Labels/labels_consensus.csv` (FileName, EmoClass, EmoAct, EmoVal, EmoDom, SpkrID, Gender,
    Split_Set), audio `Audios/<FileName>`, transcripts `Transcripts/<name>.txt` where present.

    EmoClass codes map through the label table; contempt (C), other (O) and no agreement (X) stay labels of their
    own. Per-annotator primary emotions come from `Labels/labels_detailed.csv` where present, in either of its
    published forms: one row per annotation with a worker column (`WorkerID`/`Worker`) and `EmoClass_Major`, or
    `EmoDetail` cells like `WORKER00000014; Neutral; Sad,Frustrated; A:3.0; V:4.0; D:4.0;`. Split_Set becomes
    `split` (Train -> train, Development -> dev, Test1 -> test1...). Unknown speakers get no fold."""
    root = _check_root(root, "MSP-Podcast")
    consensus = next((root / "Labels" / n for n in MSP_CONSENSUS if (root / "Labels" / n).is_file()), None)
    if consensus is None:
        raise _nothing_found(
            root, "no MSP-Podcast labels: expected Labels/labels_consensus.csv (and audio in Audios/)"
        )
    table = read_any(consensus)
    missing = [c for c in ("FileName", "EmoClass") if c not in table.columns]
    if missing:
        raise MeltError(f"missing column(s) {missing}; found {list(table.columns)}", file=consensus)
    notes: list[str] = []
    detailed = root / "Labels" / "labels_detailed.csv"
    rater_labels = _msp_detailed(detailed) if detailed.is_file() else {}
    if not detailed.is_file():
        notes.append("no Labels/labels_detailed.csv: votes left empty")
    transcripts = root / "Transcripts"
    rows = []
    untranscribed = 0
    first_row: dict[str, int] = {}
    for position, record in enumerate(table.to_dict("records")):
        row = position + 1
        file_name = str(record["FileName"]).strip() if pd.notna(record["FileName"]) else ""
        if not file_name:
            raise MeltError("empty value", file=consensus, row=row, column="FileName")
        if not Path(file_name).suffix:
            file_name += ".wav"
        name = Path(file_name).stem
        if name in first_row:
            raise MeltError(
                f"{file_name} is listed twice (first at row {first_row[name]})",
                file=consensus,
                row=row,
                column="FileName",
            )
        first_row[name] = row
        code = str(record["EmoClass"]).strip() if pd.notna(record["EmoClass"]) else ""
        mapped = corpus_label("msppodcast", code)
        if mapped is None:
            raise MeltError(
                f"unknown EmoClass {code!r}: expected one of A S H U F D C N O X",
                file=consensus,
                row=row,
                column="EmoClass",
            )
        text_file = transcripts / f"{name}.txt"
        text = _read_text(text_file).strip() if text_file.is_file() else None
        untranscribed += text is None
        rows.append(
            {
                "id": f"msppodcast/{name}",
                "split": _msp_split(record.get("Split_Set")),
                "speaker": _known(record.get("SpkrID")),
                "gender": {"female": "F", "male": "M"}.get(str(record.get("Gender", "")).strip().lower()),
                "text": text,
                "label": mapped[1],
                "label_original": mapped[0],
                "votes": votes_json(rater_votes(rater_labels.get(name, {}))),
                "valence": _number(record, "EmoVal", consensus, row),
                "arousal": _number(record, "EmoAct", consensus, row),
                "dominance": _number(record, "EmoDom", consensus, row),
                "audio": str(root / "Audios" / file_name),
            }
        )
    if not rows:
        raise MeltError("file has no rows", file=consensus)
    if untranscribed:
        notes.append(f"{untranscribed} utterance(s) without Transcripts/<name>.txt: text left empty")
    if rater_labels:
        without = sum(Path(str(f)).stem not in rater_labels for f in table["FileName"])
        if without:
            notes.append(f"{without} utterance(s) have no annotations in {detailed.name}: votes left empty")
    return _finish(rows, "msppodcast", root, notes, progress=progress)


def _known(value: object) -> str | None:
    if value is None or pd.isna(value):
        return None
    text = str(value).strip()
    return None if not text or text.lower() == "unknown" else text


def _msp_split(value: object) -> str | None:
    text = _known(value)
    return None if text is None else MSP_SPLITS.get(text.lower(), text.lower())


def _number(record: dict, column: str, source: Path, row: int) -> float | None:
    value = record.get(column)
    if value is None or pd.isna(value) or not str(value).strip():
        return None
    try:
        return float(value)
    except ValueError:
        raise MeltError(f"expected a number, found {value!r}", file=source, row=row, column=column) from None


def _msp_detailed(path: Path) -> dict[str, dict[str, list[str]]]:
    """{utterance: {worker: [primary emotion]}} from labels_detailed.csv (either published form)."""
    table = read_any(path, allow_no_rows=True)
    if "FileName" not in table.columns:
        raise MeltError(f"missing column 'FileName'; found {list(table.columns)}", file=path)
    worker_column = next((c for c in MSP_WORKER_COLUMNS if c in table.columns), None)
    if "EmoDetail" in table.columns:
        entries = _emodetail_entries(table, path)
    elif worker_column and "EmoClass_Major" in table.columns:
        entries = (
            (position + 1, name, worker, primary)
            for position, (name, worker, primary) in enumerate(
                zip(table["FileName"], table[worker_column], table["EmoClass_Major"], strict=True)
            )
        )
    else:
        raise MeltError(
            "expected FileName with EmoDetail ('WORKER...; Primary; Secondary; A:..; V:..; D:..;'), or FileName, "
            f"WorkerID and EmoClass_Major; found {list(table.columns)}",
            file=path,
        )
    labels: dict[str, dict[str, list[str]]] = {}
    for row, name, worker, primary in entries:
        if pd.isna(name) or pd.isna(worker) or pd.isna(primary) or not str(primary).strip():
            raise MeltError(
                "incomplete annotation (file name, worker and primary emotion needed)", file=path, row=row
            )
        label = rater_label(str(primary))
        labels.setdefault(Path(str(name).strip()).stem, {}).setdefault(str(worker).strip(), []).append(label)
    return labels


def _emodetail_entries(table: pd.DataFrame, path: Path) -> Iterable[tuple[int, str, str, str]]:
    for position, (name, detail) in enumerate(zip(table["FileName"], table["EmoDetail"], strict=True)):
        parts = [p.strip() for p in str(detail).split(";")] if pd.notna(detail) else []
        if len(parts) < 2 or not parts[0] or not parts[1]:
            raise MeltError(
                f"expected 'WORKER...; Primary; Secondary; A:..; V:..; D:..;', found {detail!r}",
                file=path,
                row=position + 1,
                column="EmoDetail",
            )
        yield position + 1, name, parts[0], parts[1]
