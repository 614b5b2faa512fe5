"""Replies a client must not trust: malformed bodies, absurd bills, over-long prompts, bodies that never end or
inflate without bound, servers that cannot be reached, and servers that echo the API key back."""

from __future__ import annotations

import sqlite3
import time

import pytest
from annotate_helpers import FakeOpenAIServer, corpus_table, fast_config, probe_cost

from melt.annotate import run_annotation
from melt.annotate.store import STORE_NAME
from melt.errors import MeltError
from openai_server import expected_emotion
from timing import scaled

GOOD = "A perfectly ordinary line."


def asked(server: FakeOpenAIServer, text: str) -> list[dict]:
    return server.entries(text=text)


@pytest.mark.parametrize(
    ("marker", "reason"),
    [
        ("[[content-object]]", "content is not text"),
        ("[[usage-string]]", "usage is not an object"),
        ("[[choices-string]]", "choices is not a list"),
        ("[[huge-usage]]", "implausible usage"),
    ],
)
def test_a_malformed_reply_fails_its_row_with_the_reason_and_is_re_asked_by_a_rerun(
    server, tmp_path, marker, reason
):
    bad_text = f"{marker} A reply the server will mangle."
    table = corpus_table([bad_text, GOOD])
    first = run_annotation(table, fast_config(server), tmp_path / "run")
    bad, good = first.annotations.to_dict("records")
    assert bad["status"] == "failed" and reason in bad["error"], bad["error"]
    assert good["status"] == "ok" and good["emotion"] == expected_emotion(GOOD)
    # The same reply would come again: it is not retried within the run ...
    assert len(asked(server, bad_text)) == 1
    # ... and not a finished request of the folder. A well-formed usage beside the malformed reply was billed by
    # the server and counts; a usage that is malformed or absurd is not billed.
    assert first.totals["requests"] == 1
    assert (bad["cost_usd"] > 0) is (marker in ("[[content-object]]", "[[choices-string]]"))
    spent = first.annotations["cost_usd"].sum() + probe_cost(tmp_path / "run")
    assert first.stats.cost_usd == pytest.approx(spent)

    second = run_annotation(table, fast_config(server), tmp_path / "run")
    assert second.annotations["status"].tolist() == ["failed", "ok"]
    assert len(asked(server, bad_text)) == 2  # asked again, not crashed
    assert second.stats.cached == 1


@pytest.mark.parametrize(
    "damage",
    ["not json at all", '{"choices": "none"}', '{"choices": [{"message": {"content": {"a": 1}}}]}'],
)
def test_a_stored_reply_that_no_longer_parses_is_asked_again(server, tmp_path, damage):
    table = corpus_table([GOOD, "Another line."])
    run_annotation(table, fast_config(server), tmp_path / "run")
    with sqlite3.connect(tmp_path / "run" / STORE_NAME) as db:
        db.execute("UPDATE requests SET reply = ? WHERE utterance_id = ?", (damage, table["id"][0]))
    again = run_annotation(table, fast_config(server), tmp_path / "run")
    assert again.annotations["status"].tolist() == ["ok", "ok"]
    assert again.stats.cached == 1 and again.stats.completed == 1
    assert len(asked(server, GOOD)) == 2


def test_an_over_long_utterance_fails_its_row_and_the_run_goes_on(server, tmp_path):
    long_text = "[[too-long]] " + "very " * 50 + "long."
    table = corpus_table([long_text, GOOD, "Third line."])
    result = run_annotation(table, fast_config(server, concurrency=1), tmp_path / "run")
    rows = result.annotations.to_dict("records")
    assert rows[0]["status"] == "failed" and "context" in rows[0]["error"]
    assert [r["status"] for r in rows[1:]] == ["ok", "ok"]
    assert len(asked(server, long_text)) == 1  # not retried


def test_a_trickling_reply_is_bounded_by_the_timeout(tmp_path):
    # One byte every 0.5 s: the whole body would take minutes.
    with FakeOpenAIServer(trickle_interval=0.5) as server:
        started = time.monotonic()
        result = run_annotation(
            corpus_table(["[[trickle]] Slowly, slowly."]),
            fast_config(server, timeout=1.5, max_retries=1),
            tmp_path / "run",
        )
        elapsed = time.monotonic() - started
    assert result.annotations["status"][0] == "failed"
    assert "timeout" in result.annotations["error"][0]
    assert elapsed < 30


@pytest.mark.parametrize("marker", ["[[gzip-bomb]]", "[[endless]]"])
def test_reply_bodies_are_capped_even_compressed_ones(server, tmp_path, marker):
    # The cap, not the timeout, must stop these replies: a loaded machine inflates a gzip bomb slowly.
    config = fast_config(server, timeout=scaled(2.0))
    result = run_annotation(corpus_table([f"{marker} Boom.", GOOD]), config, tmp_path / "run")
    bad, good = result.annotations.to_dict("records")
    assert bad["status"] == "failed" and "larger than" in bad["error"], bad["error"]
    assert good["status"] == "ok"


@pytest.mark.parametrize(
    ("base_url", "says"),
    [
        ("http://127.0.0.1:1/v1", "cannot connect"),
        ("http://no-such-host.invalid/v1", "cannot resolve"),
        ("notaurl", "not an http(s) URL"),
        ("ftp://127.0.0.1/v1", "not an http(s) URL"),
        ("http://melt:s3cret-pw@127.0.0.1:1/v1", "cannot connect"),
    ],
)
def test_an_unreachable_server_stops_the_run_at_once_naming_the_url(tmp_path, base_url, says):
    from melt.annotate import AnnotateConfig

    config = AnnotateConfig(base_url=base_url, model="m", timeout=5, max_retries=6, backoff_base=1)
    started = time.monotonic()
    with pytest.raises(MeltError) as caught:
        run_annotation(corpus_table([GOOD, "Two."]), config, tmp_path / "run")
    host = base_url.split("//")[-1].split("/")[0].split("@")[-1]
    assert says in str(caught.value) and host in str(caught.value)
    assert "s3cret-pw" not in str(caught.value)  # credentials never in an error
    assert time.monotonic() - started < 30


def test_credentials_in_the_base_url_are_sent_but_never_written(tmp_path, monkeypatch):
    # With an API key in the environment too (before: aiohttp refused the request with a ValueError).
    monkeypatch.setenv("OPENAI_API_KEY", "sk-melt-also-a-key-5Tq8Lz")
    with FakeOpenAIServer() as server:
        url = server.base_url.replace("http://", "http://melt:pa55word-xyz@")
        config = fast_config(server, base_url=url)
        result = run_annotation(corpus_table([GOOD]), config, tmp_path / "run")
        entries = server.entries()
    assert result.complete
    assert {e["auth"] for e in entries} == {"Basic"}
    for path in (tmp_path / "run").rglob("*"):
        assert b"pa55word-xyz" not in path.read_bytes(), path
        assert b"sk-melt-also-a-key" not in path.read_bytes(), path
    with sqlite3.connect(tmp_path / "run" / STORE_NAME) as db:
        meta = db.execute("SELECT name || value FROM meta").fetchall()
    assert meta and not any("pa55word" in m[0] for m in meta)


def test_the_cli_fails_fast_on_an_unreachable_server_naming_it(tmp_path, melt_cli):
    from melt.corpus.schema import write_table

    corpus = write_table(corpus_table([GOOD]), tmp_path / "c.csv")
    started = time.monotonic()
    result = melt_cli(
        "annotate", corpus, "--out", tmp_path / "run", "--base-url", "http://user:pw-secret-1@127.0.0.1:1/v1",
        "--model", "m", "--quiet",
    )  # fmt: skip
    assert result.code == 2 and "Traceback" not in result.stderr
    assert "cannot connect to http://127.0.0.1:1/v1" in result.stderr and "pw-secret-1" not in result.stderr
    assert time.monotonic() - started < 60
    # That attempt got no reply, so it did not claim the folder: the right URL works there.
    with FakeOpenAIServer() as server:
        fixed = melt_cli("annotate", corpus, "--out", tmp_path / "run", "--base-url", server.base_url,
                         "--model", "m", "--quiet")  # fmt: skip
    assert fixed.code == 0, fixed.stderr
