"""Every command checks where it writes before it works: an --out that is a file where a folder goes, a folder
where a table goes, a path under a file, a read-only folder; one line, exit 2, no traceback, nothing written."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from melt.outputs import write_together
from timing import scaled

REPO = Path(__file__).resolve().parents[1]
CSV = "id,speaker,text,season,episode,label,llm_label\nx/dia0_utt0,Ross,Hi.,1,1,joy,joy\n"


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("inputs")
    corpus = root / "corpus.csv"
    corpus.write_text(CSV)
    (root / "clips").mkdir()
    (root / "meld").mkdir()
    run = root / "run"
    run.mkdir()
    (run / "annotations.csv").write_text("id,status\nx/dia0_utt0,ok\n")
    return {"corpus": corpus, "clips": root / "clips", "meld": root / "meld", "run": run}


def folder_commands(inputs: dict[str, Path], out: Path) -> dict[str, list[str]]:
    return {
        "compare": ["compare", str(inputs["corpus"]), "--out", str(out)],
        "annotate": ["annotate", str(inputs["corpus"]), "--out", str(out), "--base-url", "http://127.0.0.1:9/v1",
                     "--model", "m"],
        "audio extract": ["audio", "extract", str(inputs["corpus"]), "--clips", str(inputs["clips"]), "--out",
                          str(out), "--table-out", str(out.parent / "t.csv")],
        "acoustics check": ["acoustics", "check", str(inputs["run"]), "--features", str(inputs["corpus"]),
                            "--out", str(out)],
        "demo": ["demo", "--out", str(out)],
    }  # fmt: skip


def file_commands(inputs: dict[str, Path], out: Path) -> dict[str, list[str]]:
    return {
        "corpus import": ["corpus", "import", str(inputs["corpus"]), "--out", str(out)],
        "corpus melt": ["corpus", "melt", str(inputs["corpus"]), "--out", str(out)],
        "corpus meld": ["corpus", "meld", str(inputs["meld"]), "--out", str(out)],
        "acoustics extract": ["acoustics", "extract", str(inputs["corpus"]), "--out", str(out)],
        "audio extract": ["audio", "extract", str(inputs["corpus"]), "--clips", str(inputs["clips"]), "--out",
                          str(out.parent / "wav"), "--table-out", str(out)],
    }  # fmt: skip


def melt(args: list[str], prefix: list[str] | None = None) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "OPENAI_API_KEY"}
    return subprocess.run(
        [*(prefix or []), sys.executable, "-m", "melt", *args],
        capture_output=True,
        text=True,
        env={**env, "COLUMNS": "200"},
        timeout=scaled(120),
        stdin=subprocess.DEVNULL,
    )


def one_line_error(result: subprocess.CompletedProcess, *words: str) -> str:
    assert result.returncode == 2, (result.stdout, result.stderr)
    assert "Traceback" not in result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip() and "notice" not in line]
    lines = [line for line in lines if not line.startswith("melt: no --base-url")]
    assert len(lines) == 1, result.stderr
    for word in words:
        assert word in lines[0], lines[0]
    return lines[0]


@pytest.mark.parametrize("command", ["compare", "annotate", "audio extract", "acoustics check", "demo"])
def test_a_folder_output_that_is_a_file(inputs, tmp_path, command):
    out = tmp_path / "out"
    out.write_text("I am a file")
    one_line_error(melt(folder_commands(inputs, out)[command]), str(out), "must be a folder")
    assert out.read_text() == "I am a file"


@pytest.mark.parametrize("command", ["compare", "annotate", "demo"])
def test_a_folder_output_under_a_file(inputs, tmp_path, command):
    parent = tmp_path / "a_file"
    parent.write_text("x")
    one_line_error(melt(folder_commands(inputs, parent / "out")[command]), "is a file")


@pytest.mark.parametrize(
    "command", ["corpus import", "corpus melt", "corpus meld", "acoustics extract", "audio extract"]
)
def test_a_table_output_that_is_a_folder(inputs, tmp_path, command):
    out = tmp_path / ("table.parquet")
    out.mkdir()
    one_line_error(melt(file_commands(inputs, out)[command]), str(out), "but this is a folder")
    assert not (tmp_path / "wav").exists() or not any((tmp_path / "wav").iterdir())


def _read_only_prefix(folder: Path) -> list[str]:
    """A prefix that runs a command with `folder` a real read-only filesystem (a private mount namespace)."""
    if not shutil.which("unshare") or subprocess.run(["unshare", "-Urm", "true"]).returncode != 0:
        pytest.fail("cannot make a read-only filesystem here: unshare -Urm is not allowed")
    script = f'mount -t tmpfs -o ro,size=1m melt-ro {folder} && exec "$@"'
    return ["unshare", "-Urm", "sh", "-c", script, "sh"]


@pytest.mark.parametrize("command", ["compare", "annotate", "acoustics check", "demo"])
def test_a_read_only_output_folder(inputs, tmp_path, command):
    read_only = tmp_path / "ro"
    read_only.mkdir()
    result = melt(folder_commands(inputs, read_only / "out")[command], _read_only_prefix(read_only))
    one_line_error(result, str(read_only / "out"), "Read-only file system")


@pytest.mark.parametrize("command", ["corpus import", "acoustics extract", "audio extract"])
def test_a_table_output_in_a_read_only_folder(inputs, tmp_path, command):
    read_only = tmp_path / "ro"
    read_only.mkdir()
    result = melt(file_commands(inputs, read_only / "t.parquet")[command], _read_only_prefix(read_only))
    one_line_error(result, "Read-only file system")


def test_written_together_or_not_at_all(tmp_path):
    first, second = tmp_path / "a.txt", tmp_path / "b.txt"
    write_together({first: lambda p: p.write_text("1"), second: lambda p: p.write_text("1")})

    def fail(path: Path) -> None:
        path.write_text("half")
        raise OSError(28, "No space left on device")

    with pytest.raises(Exception, match="No space left on device"):
        write_together({first: lambda p: p.write_text("2"), second: fail})
    # The first file was written to its temporary but not renamed: both keep their old version.
    assert (first.read_text(), second.read_text()) == ("1", "1")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.txt", "b.txt"]
