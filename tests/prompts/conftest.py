from __future__ import annotations

import pandas as pd
import pytest


@pytest.fixture
def meld_rows() -> pd.DataFrame:
    """The first lines of MELD train dialogue 0 (real text), plus a test-split dialogue 0 that must never be
    mistaken for its context."""
    rows = [
        (
            "train",
            0,
            0,
            "Chandler",
            "also I was the point person on my company’s transition from the KL-5 to GR-6 system.",
        ),
        ("train", 0, 1, "The Interviewer", "You must’ve had your hands full."),
        ("train", 0, 2, "Chandler", "That I did. That I did."),
        ("train", 0, 3, "The Interviewer", "So let’s talk a little bit about your duties."),
        ("train", 0, 4, "Chandler", "My duties?  All right."),
        ("test", 0, 0, "Ross", "Why do all your coffee mugs have numbers on the bottom?"),
        ("test", 0, 1, "Monica", "Oh. That’s so Monica can keep track."),
    ]
    return pd.DataFrame(
        {
            "id": [f"{s}/dia{d}_utt{u}" for s, d, u, _, _ in rows],
            "split": [r[0] for r in rows],
            "dialogue_id": pd.array([r[1] for r in rows], dtype="Int64"),
            "utterance_id": pd.array([r[2] for r in rows], dtype="Int64"),
            "speaker": [r[3] for r in rows],
            "text": [r[4] for r in rows],
            "season": pd.array([8, 8, 8, 8, 8, 3, 3], dtype="Int64"),
            "episode": pd.array([21, 21, 21, 21, 21, 5, 5], dtype="Int64"),
        }
    )
