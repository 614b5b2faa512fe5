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


def timeout_factor() -> float:
    """How much longer than on an idle machine the tests' time limits are: `MELT_TEST_TIMEOUT_FACTOR`, else
    twice the machine's load per core when the tests start (at least 2). Limits guard against hangs, they never
    measure speed: on a machine shared with other work, a slow test must not fail for it."""
    if value := os.environ.get("MELT_TEST_TIMEOUT_FACTOR"):
        return max(float(value), 0.1)
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return max(2.0, 2 * os.getloadavg()[0] / cores)


TIMEOUT_FACTOR = timeout_factor()
# Tests scale their own waits (subprocess timeouts) with it: `scaled()` in tests/timing.py reads it from here.
os.environ["MELT_TEST_TIMEOUT_FACTOR"] = str(TIMEOUT_FACTOR)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Every test's pytest-timeout limit (its `timeout` mark, else --timeout or the ini value) times the factor."""
    default = float(config.getoption("timeout", None) or config.getini("timeout") or 0)
    for item in items:
        marker = item.get_closest_marker("timeout")
        seconds = float(marker.args[0]) if marker and marker.args else default
        if seconds:
            item.add_marker(pytest.mark.timeout(seconds * TIMEOUT_FACTOR), append=False)


def pytest_report_header(config: pytest.Config) -> str:
    return f"melt: test time limits x{TIMEOUT_FACTOR:.1f} (MELT_TEST_TIMEOUT_FACTOR to set)"


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
        timeout=timeout * TIMEOUT_FACTOR,
        env={**os.environ, "COLUMNS": "200", **(env or {})},
        stdin=subprocess.DEVNULL,
        cwd=cwd,
    )
    return CliResult(proc.returncode, proc.stdout, proc.stderr)


@pytest.fixture
def melt_cli():
    return run_melt
