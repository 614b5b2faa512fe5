"""Shared speech for the corpus tests: each distinct line is synthesised once per session."""

from __future__ import annotations

import pytest

from corpora import Speech


@pytest.fixture(scope="session")
def speech(tmp_path_factory) -> Speech:
    return Speech(tmp_path_factory.mktemp("speech"))
