"""Fixtures for annotation runs against the loopback OpenAI-compatible server (tests/openai_server.py)."""

from __future__ import annotations

from pathlib import Path

import pytest
from annotate_helpers import FakeOpenAIServer, corpus_table

from melt.corpus.schema import write_table


@pytest.fixture
def write_corpus(tmp_path):
    def write(texts: list[str], name: str = "corpus.parquet") -> Path:
        return write_table(corpus_table(texts), tmp_path / name)

    return write


@pytest.fixture
def server():
    with FakeOpenAIServer() as running:
        yield running
