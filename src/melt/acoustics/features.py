"""eGeMAPSv02 functionals per utterance with openSMILE, in worker processes, cached by file content.

In the audinterface spirit: `process_file` gives one file's features, `process_files` a table of many files, and
`extract_features` a whole corpus table, written as the features Parquet file that `melt acoustics check` reads.
"""

from __future__ import annotations

import multiprocessing
import os
import re
import sys
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path

import numpy as np
import pandas as pd

from melt.acoustics.audio import SAMPLE_RATE, AudioError, read_audio
from melt.errors import MeltError
from melt.provenance import file_sha256

PITCH = "F0semitoneFrom27.5Hz_sma3nz_amean"
LOUDNESS = "loudness_sma3_amean"
VOICED_SEGMENTS_PER_SEC = "VoicedSegmentsPerSec"
#: Text syllables per second of audio; added next to the eGeMAPS columns when the corpus has `text`.
SYLLABLES_PER_SEC = "syllables_per_sec"
#: Columns of the features table before the eGeMAPS ones.
META_COLUMNS = (
    "id",
    "split",
    "speaker",
    "audio",
    "audio_sha256",
    "duration",
    "syllables",
    SYLLABLES_PER_SEC,
    "error",
)

_smile = None


def _get_smile():
    global _smile
    if _smile is None:
        import opensmile

        _smile = opensmile.Smile(
            feature_set=opensmile.FeatureSet.eGeMAPSv02, feature_level=opensmile.FeatureLevel.Functionals
        )
    return _smile


def feature_names() -> list[str]:
    """The 88 eGeMAPSv02 functional names, in openSMILE's order."""
    return list(_get_smile().feature_names)


def _extract(path: str) -> tuple[float, np.ndarray] | str:
    """(seconds, feature vector) for one file, or the reason it cannot be used."""
    try:
        signal = read_audio(path)
    except AudioError as exc:
        return exc.reason
    try:
        values = process_signal(signal)
    except Exception as exc:  # openSMILE's errors have no common type; one bad file must not end the batch
        return f"openSMILE failed ({exc})"
    return len(signal) / SAMPLE_RATE, values


def process_signal(signal: np.ndarray) -> np.ndarray:
    """The 88 eGeMAPSv02 functionals of a 16 kHz mono signal, in `feature_names()` order."""
    return _get_smile().process_signal(signal, SAMPLE_RATE).to_numpy(dtype=np.float64)[0]


def _extract_chunk(paths: Sequence[str]) -> list[tuple[float, np.ndarray] | str]:
    return [_extract(path) for path in paths]


def process_file(path: str | Path) -> pd.Series:
    """eGeMAPSv02 functionals of one file (any format `read_audio` reads); raises `AudioError` for a bad file."""
    result = _extract(str(path))
    if isinstance(result, str):
        raise AudioError(result, file=path)
    return pd.Series(result[1], index=feature_names(), name=str(path))


def process_files(
    paths: Sequence[str | Path], *, workers: int | None = None, progress: bool = False
) -> pd.DataFrame:
    """One row per file (index `file`): `duration` (s), `error` (the reason a file was skipped, else missing) and
    the 88 eGeMAPSv02 functionals. Bad files never abort the batch."""
    paths = [str(p) for p in paths]
    results = _run(paths, workers=workers, progress=progress)
    frame = _results_frame(results)
    frame.index = pd.Index(paths, name="file")
    return frame


def _results_frame(results: Sequence[tuple[float, np.ndarray] | str]) -> pd.DataFrame:
    names = feature_names()
    values = np.full((len(results), len(names)), np.nan)
    duration = np.full(len(results), np.nan)
    errors: list[str | None] = [None] * len(results)
    for i, result in enumerate(results):
        if isinstance(result, str):
            errors[i] = result
        else:
            duration[i], values[i] = result
    frame = pd.DataFrame(values, columns=names)
    frame.insert(0, "error", pd.Series(errors, dtype="string"))
    frame.insert(0, "duration", duration)
    return frame


def default_workers() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def _run(paths: list[str], *, workers: int | None, progress: bool) -> list[tuple[float, np.ndarray] | str]:
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    workers = default_workers() if workers is None else workers
    if workers < 1:
        raise MeltError(f"--workers must be at least 1, got {workers}")
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())
    results: list = [None] * len(paths)
    if workers == 1 or len(paths) < 2:
        # In-process: no pickling or process start-up, so one worker costs the same as a plain loop.
        with Progress(*columns, disable=not progress) as bar:
            task = bar.add_task("eGeMAPS", total=len(paths))
            for i, path in enumerate(paths):
                results[i] = _extract(path)
                bar.advance(task)
        return results
    # Chunks amortise inter-process overhead over several files; small enough that both workers stay busy
    # until the end and the progress bar moves.
    size = max(1, min(16, len(paths) // (workers * 8)))
    chunks = [list(range(start, min(start + size, len(paths)))) for start in range(0, len(paths), size)]
    with ProcessPoolExecutor(max_workers=workers, mp_context=_context()) as pool:
        # Every chunk is submitted (and, with fork, every worker started) before the progress bar starts its
        # refresh thread, so no thread is running when the workers are forked.
        futures = {pool.submit(_extract_chunk, [paths[i] for i in chunk]): chunk for chunk in chunks}
        with Progress(*columns, disable=not progress) as bar:
            task = bar.add_task(f"eGeMAPS ({workers} workers)", total=len(paths))
            for future in as_completed(futures):
                for i, result in zip(futures[future], future.result(), strict=True):
                    results[i] = result
                bar.advance(task, len(futures[future]))
    return results


def _context():
    # fork starts workers in milliseconds with openSMILE already imported; spawn re-imports everything per worker.
    return multiprocessing.get_context("fork" if sys.platform == "linux" else "spawn")


_VOWEL_GROUPS = re.compile(r"[aeiouy]+")
_WORD = re.compile(r"[a-z']+")


def count_syllables(text: str) -> int:
    """English syllables by vowel groups, minus a silent final `e`; crude per word, close enough for a rate."""
    total = 0
    for word in _WORD.findall(text.lower()):
        word = word.strip("'")
        if not word:
            continue
        groups = len(_VOWEL_GROUPS.findall(word))
        if groups > 1 and word.endswith("e") and not word.endswith(("le", "ee", "ye")):
            groups -= 1
        total += max(groups, 1)
    return total


def extract_features(
    corpus: str | Path | pd.DataFrame,
    out: str | Path | None = None,
    *,
    workers: int | None = None,
    cache: bool = True,
    progress: bool = True,
    root: str | Path | None = None,
) -> pd.DataFrame:
    """eGeMAPSv02 functionals for every row of a corpus table with an `audio` column; write them to `out`.

    `corpus` is a table file (relative `audio` paths are resolved against its folder) or a DataFrame (resolved
    against `root`, default the working directory). The result has one row per corpus row: `id`, `split`,
    `speaker`, `audio`, `audio_sha256`, `duration` (measured), `syllables` and `syllables_per_sec` (from `text`),
    `error` (why the row has no features) and the 88 features.

    With `cache`, rows of an existing `out` are reused for files whose content hash is unchanged, so a rerun only
    processes new or changed files. `result.attrs["melt"]` tells how many files were processed and reused.
    """
    from melt.corpus.schema import read_any, require_columns, write_table

    if isinstance(corpus, pd.DataFrame):
        table, source, base = corpus, "<table>", Path(root or ".")
    else:
        table, source, base = read_any(corpus), corpus, Path(corpus).parent
    require_columns(table, ["id", "audio"], source=source, purpose="feature extraction")
    table = table.reset_index(drop=True)
    ids = table["id"].astype("string")
    if ids.isna().any() or ids.duplicated().any():
        bad = int((ids.isna() | ids.duplicated()).to_numpy().argmax())
        raise MeltError("empty or duplicate id", file=source, row=bad + 1, column="id")

    names = feature_names()
    previous = _load_cache(Path(out), names) if cache and out is not None and Path(out).exists() else {}
    paths: list[str | None] = []
    hashes: list[str | None] = []
    errors: list[str | None] = []
    for value in table["audio"]:
        if pd.isna(value) or not str(value).strip():
            paths.append(None)
            hashes.append(None)
            errors.append("no audio path")
            continue
        path = Path(str(value))
        path = path if path.is_absolute() else base / path
        paths.append(str(path))
        try:
            hashes.append(file_sha256(path))
            errors.append(None)
        except OSError as exc:
            hashes.append(None)
            errors.append("file not found" if not path.exists() else f"cannot read file ({exc.strerror})")

    # Identical content (e.g. the same clip under two ids) is processed once.
    todo: dict[str, str] = {}
    for path, digest, error in zip(paths, hashes, errors, strict=True):
        if error is None and digest not in previous and digest not in todo:
            todo[digest] = path
    reused = sum(error is None and digest in previous for digest, error in zip(hashes, errors, strict=True))
    computed = dict(zip(todo, _run(list(todo.values()), workers=workers, progress=progress), strict=True))

    values = np.full((len(table), len(names)), np.nan)
    duration = np.full(len(table), np.nan)
    for i, digest in enumerate(hashes):
        if errors[i] is not None:
            continue
        if digest in previous:
            duration[i], values[i] = previous[digest]
            continue
        result = computed[digest]
        if isinstance(result, str):
            errors[i] = result
        else:
            duration[i], values[i] = result

    features = pd.DataFrame(values, columns=names)
    meta = pd.DataFrame(
        {
            "id": ids,
            "split": _column(table, "split"),
            "speaker": _column(table, "speaker"),
            "audio": table["audio"].astype("string"),
            "audio_sha256": pd.Series(hashes, dtype="string"),
            "duration": duration,
        }
    )
    if "text" in table.columns:
        syllables = [count_syllables(t) if isinstance(t, str) else np.nan for t in table["text"]]
        meta["syllables"] = pd.array(syllables, dtype="Int64")
        with np.errstate(divide="ignore", invalid="ignore"):
            meta[SYLLABLES_PER_SEC] = np.asarray(syllables, dtype=float) / duration
    else:
        meta["syllables"] = pd.array([pd.NA] * len(table), dtype="Int64")
        meta[SYLLABLES_PER_SEC] = np.nan
    meta["error"] = pd.Series(errors, dtype="string")
    result = pd.concat([meta, features], axis=1)
    if out is not None:
        write_table(result, out)
    result.attrs["melt"] = {"processed": len(todo), "reused": reused}
    return result


def _column(table: pd.DataFrame, name: str) -> pd.Series:
    if name in table.columns:
        return table[name].astype("string")
    return pd.Series(pd.NA, index=table.index, dtype="string")


def _load_cache(out: Path, names: list[str]) -> dict[str, tuple[float, np.ndarray]]:
    """content hash -> (duration, features) from a previous features file; an unreadable or differently shaped
    file is ignored (it is rewritten at the end), since a cache must never stop a run."""
    try:
        previous = pd.read_parquet(out)
    except Exception:  # pyarrow raises several unrelated types for a bad file
        return {}
    if "audio_sha256" not in previous.columns or any(n not in previous.columns for n in names):
        return {}
    good = previous[previous["error"].isna() & previous["audio_sha256"].notna()]
    return {
        digest: (float(seconds), row)
        for digest, seconds, row in zip(
            good["audio_sha256"], good["duration"], good[names].to_numpy(dtype=np.float64), strict=True
        )
    }
