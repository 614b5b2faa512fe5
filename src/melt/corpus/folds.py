"""Speaker-independent folds, and the check that no speaker sits in two parts of a table.

Random splits put one speaker's utterances on both sides and report what a model learnt about the voice, not
the emotion; the field's convention is to hold speakers (IEMOCAP: whole sessions) out together.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from melt.errors import MeltError

FOLD_GROUPS: tuple[str, ...] = ("speaker", "session")


def assign_folds(
    table: pd.DataFrame, *, by: str = "speaker", k: int = 5, seed: int = 0, source: str | Path = "<table>"
) -> pd.Series:
    """A fold number 1..k per row such that every value of `by` (a speaker, a session) lies in one fold, with
    the folds as even in utterances as whole groups allow.

    Groups are dealt largest first, each to the fold holding the fewest utterances so far; `seed` orders groups
    of equal size. Folds are numbered by their smallest group, so `by="session"` with one fold per session gives
    fold n to the n-th session. Rows whose group is missing get no fold (NA): nothing could keep them apart.
    """
    if by not in table.columns:
        raise MeltError(f"no {by!r} column to make folds by; found {list(table.columns)}", file=source)
    if k < 2:
        raise MeltError(f"--k must be at least 2, got {k}", file=source)
    groups = table[by].astype("string")
    sizes = groups.dropna().value_counts()
    if len(sizes) < k:
        raise MeltError(
            f"{len(sizes)} distinct {by} value(s) cannot fill {k} folds without splitting one; use --k {len(sizes)} "
            "or fewer"
            if len(sizes) >= 2
            else f"{len(sizes)} distinct {by} value(s): speaker-independent folds need at least 2",
            file=source,
            column=by,
        )
    rng = np.random.default_rng(seed)
    names = sorted(sizes.index, key=_natural)
    shuffled = [names[i] for i in rng.permutation(len(names))]
    # Stable sort keeps the seeded order among equal sizes.
    order = sorted(shuffled, key=lambda name: -int(sizes[name]))
    load = [0] * k
    members: list[list[str]] = [[] for _ in range(k)]
    for name in order:
        target = min(range(k), key=lambda fold: (load[fold], fold))
        load[target] += int(sizes[name])
        members[target].append(name)
    numbering = sorted(range(k), key=lambda fold: min(_natural(name) for name in members[fold]))
    fold_of = {name: numbering.index(fold) + 1 for fold in range(k) for name in members[fold]}
    return pd.Series(
        [fold_of.get(g) if pd.notna(g) else pd.NA for g in groups], index=table.index, dtype="Int64"
    )


def default_k(table: pd.DataFrame, by: str = "speaker", k: int = 5) -> int | None:
    """`k`, or fewer when the table has fewer groups (TESS has two speakers); None when folds are impossible."""
    groups = table[by].dropna().nunique() if by in table.columns else 0
    return min(k, groups) if groups >= 2 else None


def speaker_overlap(
    table: pd.DataFrame, *, parts: str = "fold", speaker: str = "speaker", source: str | Path = "<table>"
) -> pd.DataFrame:
    """Every pair of parts (values of `parts`, e.g. folds or splits) that share a speaker: columns part_a,
    part_b, shared (number of speakers), speakers (a few of them), utterances (rows of the shared speakers in
    the two parts). Empty when the parts are speaker-independent."""
    for column in (parts, speaker):
        if column not in table.columns:
            raise MeltError(f"no {column!r} column; found {list(table.columns)}", file=source)
    known = table[[parts, speaker]].dropna().astype("string")
    members = {str(part): set(rows[speaker]) for part, rows in known.groupby(parts)}
    labels = sorted(members, key=_natural)
    rows = []
    for i, part_a in enumerate(labels):
        for part_b in labels[i + 1 :]:
            shared = members[part_a] & members[part_b]
            if shared:
                in_pair = known[parts].astype(str).isin([part_a, part_b]) & known[speaker].isin(shared)
                rows.append(
                    {
                        "part_a": part_a,
                        "part_b": part_b,
                        "shared": len(shared),
                        "speakers": ", ".join(sorted(shared)[:5]) + (", ..." if len(shared) > 5 else ""),
                        "utterances": int(in_pair.sum()),
                    }
                )
    return pd.DataFrame(rows, columns=["part_a", "part_b", "shared", "speakers", "utterances"])


def _natural(value: str) -> tuple:
    """Fold 10 after fold 9."""
    text = str(value)
    return (0, int(text), "") if text.isdigit() else (1, 0, text)
