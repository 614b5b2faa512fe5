"""Shared fixtures: the reference data in ../shared/data and a runner for the real `melt` command."""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("MELT_SHARED_DATA", REPO.parent / "shared" / "data"))


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The public MELD/MELT files; tests that need them skip when the folder is absent."""
    if not (SHARED_DATA / "meld" / "train_sent_emo.csv").exists():
        pytest.skip(f"reference data not found at {SHARED_DATA} (set MELT_SHARED_DATA to its folder)")
    return SHARED_DATA


@dataclass
class CliResult:
    code: int
    stdout: str
    stderr: str


def run_melt(
    *args: str | Path, env: dict[str, str] | None = None, timeout: float = 300, cwd: Path | None = None
) -> CliResult:
    """Run the installed `melt` command in a subprocess, as a user would."""
    proc = subprocess.run(
        [sys.executable, "-m", "melt", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, "COLUMNS": "200", **(env or {})},
        stdin=subprocess.DEVNULL,
        cwd=cwd,
    )
    return CliResult(proc.returncode, proc.stdout, proc.stderr)


@pytest.fixture
def melt_cli():
    return run_melt
