"""Review of issue 8 (adversarial): money and work that can still be lost, and errors that come too late.

Real small filesystems (tmpfs in a private mount namespace, `unshare -Urm`), real subprocesses, and the loopback
server of tests/openai_server.py with replies scripted per test. Each test once failed on a defect the review found.
"""

from __future__ import annotations

import json
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
from annotate_helpers import corpus_table, fast_config
from scripted_server import ScriptedServer, answer, completion, environment, send, utterance_text

from melt.annotate import run_annotation
from melt.annotate.store import STORE_NAME
from melt.corpus.schema import write_table
from melt.errors import MeltError
from timing import scaled

pytestmark = pytest.mark.timeout(600)

#: $10 per million tokens either way: round figures for the budget tests.
PRICES = {"gpt-4o-2024-08-06": {"input": 10.0, "output": 10.0}}


def _cost(prompt_tokens: int, completion_tokens: int) -> float:
    return (prompt_tokens + completion_tokens) * 10.0 / 1e6


def _namespace_ok() -> None:
    if not shutil.which("unshare") or subprocess.run(["unshare", "-Urm", "true"]).returncode != 0:
        pytest.fail("no way to mount a small filesystem here: unshare -Urm is not allowed")


def _stored(out: Path) -> str:
    """A shell command printing how many utterance replies the run folder's store holds."""
    code = (
        f"import sqlite3; print('stored', sqlite3.connect('{out / STORE_NAME}').execute("
        "\"SELECT COUNT(*) FROM requests WHERE status = 'done' AND turn >= 0\").fetchone()[0])"
    )
    return shlex.join([sys.executable, "-c", code])


# -- 1. the last replies are committed only after the tables are written, and a failure then is silent -------------


def test_the_last_replies_are_stored_before_the_run_says_it_is_done(tmp_path):
    """The disk fills up while the last reply is on its way: the tables still fit, the store's final commit does
    not. The run must not exit 0 with a paid reply missing from the store (a rerun would pay for it again, and the
    tables already show an answer the store no longer has)."""
    _namespace_ok()
    count = 6
    texts = [f"Full at the end {i}." for i in range(count)]
    corpus = write_table(corpus_table(texts), tmp_path / "corpus.csv")
    outcomes = []
    # Free space left when the last reply comes back, in 4 kB pages: the tables need about 5.
    for free_pages in (6, 8, 10, 12):
        small, flag, filled = (
            tmp_path / f"small{free_pages}",
            tmp_path / f"flag{free_pages}",
            tmp_path / f"ok{free_pages}",
        )
        small.mkdir()
        out = small / "run"

        def script(server, body, handler, flag=flag, filled=filled):
            if utterance_text(body) == texts[-1]:
                flag.touch()  # the filler inside the namespace fills the disk now
                deadline = time.monotonic() + scaled(30)
                while not filled.exists() and time.monotonic() < deadline:
                    time.sleep(0.01)
            return False

        with ScriptedServer(script=script) as server:
            annotate = shlex.join([sys.executable, "-m", "melt", "annotate", str(corpus), "--out", str(out),
                                   "--base-url", server.base_url, "--model", "m", "--quiet", "-j", "1"])  # fmt: skip
            shell = (
                f"mount -t tmpfs -o size=1m melt-test {small} && "
                f"( while [ ! -e {flag} ]; do sleep 0.01; done; "
                f"dd if=/dev/zero of={small}/filler bs=4096 2>/dev/null; "
                f"truncate -s -{free_pages * 4096} {small}/filler; touch {filled} ) & "
                f"{annotate}; rc=$?; {_stored(out)}; exit $rc"
            )
            result = subprocess.run(
                ["unshare", "-Urm", "sh", "-c", shell], capture_output=True, text=True, timeout=scaled(120)
            )
        stored = int(result.stdout.split("stored")[-1].split()[0]) if "stored" in result.stdout else -1
        outcomes.append((free_pages, result.returncode, stored))
    silent = [(pages, stored) for pages, code, stored in outcomes if code == 0 and stored < count]
    assert silent == [], (
        f"exit 0 with fewer than {count} replies stored (free pages, stored): {silent}; all: {outcomes}"
    )


# -- 2. --max-cost: what malformed replies were billed is not counted ------------------------------------------------


def test_max_cost_counts_what_malformed_replies_were_billed(tmp_path):
    """A server answering HTTP 200 with a well-formed `usage` but `content` that is not text has billed the
    request; melt drops the usage with the reply, so --max-cost never sees the money go."""
    usage = {"prompt_tokens": 1000, "completion_tokens": 100}

    def script(server, body, handler):
        if utterance_text(body):
            return send(handler, completion({"emotion": "joy"}, usage=usage))
        return False

    with ScriptedServer(script=script) as server:
        config = fast_config(server, concurrency=4, prices=PRICES, max_cost=0.05)
        result = run_annotation(
            corpus_table([f"Billed line {i}." for i in range(20)]), config, tmp_path / "run"
        )
        billed = sum(
            _cost(usage["prompt_tokens"], usage["completion_tokens"])
            for b in server.bodies
            if utterance_text(b)
        )
    assert (result.annotations["status"] == "failed").any()
    assert billed <= 0.05 + _cost(1000, 100), f"the server billed ${billed:.3f} against --max-cost 0.05"
    assert (result.stats.cost_usd or 0) >= billed - 1e-9, (result.stats.cost_usd, billed)


# -- 3. --max-cost: the first wave reserves a third of a token per character, whatever the text ---------------------


def test_max_cost_holds_when_the_text_is_dense_in_tokens(tmp_path):
    """A server billing one token per character of the prompt (Chinese or Japanese text comes close; four per
    character is what melt itself accepts as plausible): the first wave is reserved at a third of that, and the
    invocation spends several times its --max-cost."""
    billed = []

    def script(server, body, handler):
        if not utterance_text(body):
            return False
        prompt = sum(len(m["content"]) for m in body["messages"])
        usage = {"prompt_tokens": prompt, "completion_tokens": body.get("max_tokens") or 20}
        with server._lock:
            billed.append(_cost(usage["prompt_tokens"], usage["completion_tokens"]))
        return send(handler, completion(json.dumps(answer(body)), usage=usage))

    texts = ["今天我们去海边玩吧你觉得怎么样" * 20 + f"{i}" for i in range(40)]
    with ScriptedServer(script=script) as server:
        config = fast_config(server, concurrency=8, max_tokens=20, prices=PRICES, max_cost=0.05)
        result = run_annotation(corpus_table(texts), config, tmp_path / "run")
    assert sum(billed) <= 0.05, (
        f"--max-cost 0.05, the server billed ${sum(billed):.4f} for {len(billed)} requests"
    )
    assert (result.stats.cost_usd or 0) <= 0.05


# -- 4. a disk already full: an OSError from the run lock, no file named (CLI) and not a MeltError (Python) ---------


def test_a_full_disk_before_the_run_is_one_line_naming_the_file_and_a_melt_error(tmp_path):
    _namespace_ok()
    small = tmp_path / "small"
    small.mkdir()
    corpus = write_table(corpus_table(["One.", "Two."]), tmp_path / "corpus.csv")
    with ScriptedServer() as server:
        annotate = shlex.join([sys.executable, "-m", "melt", "annotate", str(corpus), "--out", str(small / "run"),
                               "--base-url", server.base_url, "--model", "m", "--quiet"])  # fmt: skip
        python = (
            "from melt.annotate import AnnotateConfig, run_annotation\n"
            "from melt.errors import MeltError\n"
            "try:\n"
            f"    run_annotation({str(corpus)!r}, AnnotateConfig(base_url={server.base_url!r}, model='m'), "
            f"{str(small / 'api')!r})\n"
            "except MeltError as exc:\n"
            "    print('API: MeltError:', exc)\n"
            "except BaseException as exc:\n"
            "    print('API: not a MeltError:', type(exc).__name__, exc)\n"
        )
        shell = (
            f"mount -t tmpfs -o size=1m melt-test {small} && mkdir {small}/run {small}/api && "
            f"{{ dd if=/dev/zero of={small}/filler bs=4096 2>/dev/null; true; }} && "
            f"{annotate}; echo rc=$?; {shlex.join([sys.executable, '-c', python])}"
        )
        result = subprocess.run(
            ["unshare", "-Urm", "sh", "-c", shell], capture_output=True, text=True, timeout=scaled(120),
            env=environment(),
        )  # fmt: skip
    assert "rc=2" in result.stdout, result.stdout
    errors = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(errors) == 1 and "Traceback" not in result.stderr, result.stderr
    assert str(small / "run") in errors[0], f"the error names no file: {errors[0]!r}"
    assert "API: MeltError" in result.stdout, result.stdout


# -- 5. a folder where a table goes: found only after every request was sent ---------------------------------------


@pytest.mark.parametrize("name", ["annotations.parquet", "annotations.csv", "run.json"])
def test_a_folder_where_an_output_goes_is_refused_before_any_request(tmp_path, name):
    out = tmp_path / "run"
    (out / name).mkdir(parents=True)
    with ScriptedServer() as server:
        with pytest.raises(MeltError) as caught:
            run_annotation(corpus_table([f"Line {i}." for i in range(5)]), fast_config(server), out)
        sent = [b for b in server.bodies if utterance_text(b)]
    assert name in str(caught.value)
    assert sent == [], f"{len(sent)} requests were sent (and paid) before the output path was checked"
