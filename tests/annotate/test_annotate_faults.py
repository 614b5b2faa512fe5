"""A run against a misbehaving server ends with every utterance annotated correctly or marked invalid with
its reason; the retries, re-asks and fallbacks it took are visible in the stats."""

from __future__ import annotations

import json

import pandas as pd
import pytest
from annotate_helpers import SPEAKERS, FakeOpenAIServer, fast_config

from melt.annotate import run_annotation
from openai_server import expected_emotion

FAULTS = [
    "[[429]] Could I BE wearing any more clothes?",
    "[[500x2]] We were on a break!",
    "[[slow]] Pivot! Pivot!",
    "[[drop]] How you doin'?",
    "[[badbody]] Smelly cat, smelly cat.",
    "[[malformed]] Welcome to the real world.",
    "[[malformed-always]] It's a moo point.",
    "[[fenced]] Unagi is a state of total awareness.",
    "[[offlabel]] I'm fine, totally fine.",
    "[[offlabel-always]] Seven! Seven! Seven!",
    "[[synonym]] Oh. My. God.",
    "[[wrongchar]] They don't know that we know they know.",
]
PLAIN = [f"Just an ordinary line number {i}." for i in range(12)]


@pytest.fixture(scope="module")
def faulty_run(tmp_path_factory):
    folder = tmp_path_factory.mktemp("faults")
    from annotate_helpers import corpus_table

    table = corpus_table(FAULTS + PLAIN)
    with FakeOpenAIServer(retry_after="1", slow_seconds=1.5) as server:
        result = run_annotation(table, fast_config(server), folder / "run")
        log = server.entries()
    rows = result.annotations.set_index("id")
    by_text = {text: rows.loc[uid] for uid, text in zip(table["id"], table["text"], strict=True)}
    speakers = dict(zip(table["text"], table["speaker"], strict=True))
    return result, by_text, speakers, log


def row(faulty_run, marker):
    return next(r for text, r in faulty_run[1].items() if text.startswith(marker))


def test_every_utterance_ends_annotated_or_invalid(faulty_run):
    result, by_text, _, _ = faulty_run
    assert result.complete
    invalid = {text for text, r in by_text.items() if r["status"] == "invalid"}
    assert invalid == {t for t in FAULTS if "-always" in t}


@pytest.mark.parametrize(
    "marker", ["[[429]]", "[[500x2]]", "[[slow]]", "[[drop]]", "[[badbody]]", "[[fenced]]", "[[wrongchar]]"]
)
def test_transient_faults_and_wrapped_json_give_the_servers_answer(faulty_run, marker):
    text = next(t for t in FAULTS if t.startswith(marker))
    r = row(faulty_run, marker)
    assert r["status"] == "ok"
    assert r["emotion"] == expected_emotion(text)
    assert "re_asked" not in r["flags"]


def test_plain_rows_are_the_servers_answer_with_logprob_confidence(faulty_run):
    _, by_text, speakers, _ = faulty_run
    for text in PLAIN:
        r = by_text[text]
        assert (r["status"], r["emotion"], r["character"]) == ("ok", expected_emotion(text), speakers[text])
        assert r["flags"] == ""
        # The server puts 80 % of the label mass on its answer.
        assert r["confidence"] == pytest.approx(0.8)
        assert json.loads(r["distribution"]) == {expected_emotion(text): 1.0}
        assert r["loudness"] == "moderate" and r["rhythm_speed"] == "steady"


def test_retries_are_counted_by_kind(faulty_run):
    stats = faulty_run[0].stats
    assert stats.retries["HTTP 429"] == 1
    assert stats.retries["HTTP 500"] == 2
    assert stats.retries["timeout"] == 1
    assert stats.retries["connection"] == 1
    assert stats.retries["malformed reply"] == 1
    assert stats.failed == 0


def test_retry_after_is_honoured(faulty_run):
    log = faulty_run[3]
    limited = next(e for e in log if e["status"] == 429)
    retry = next(e for e in log if e["text"] == limited["text"] and e["n"] > limited["n"])
    assert retry["time"] - limited["time"] >= 1.0


def test_a_rate_limit_delays_only_the_request_that_got_it(tmp_path):
    from annotate_helpers import corpus_table

    texts = ["[[retry-after:2]] Wait for me.", *PLAIN]
    with FakeOpenAIServer(latency=0.05) as server:
        result = run_annotation(corpus_table(texts), fast_config(server, concurrency=2), tmp_path / "run")
        log = [e for e in server.entries() if e.get("text")]
    assert result.complete
    limited = next(e for e in log if e["status"] == 429)
    retry = next(e for e in log if e["text"] == limited["text"] and e["n"] > limited["n"])
    assert retry["time"] - limited["time"] >= 2.0
    # The other requests went on while that one waited.
    meanwhile = [e for e in log if limited["time"] < e["time"] < retry["time"] and e["status"] == 200]
    assert len(meanwhile) >= len(PLAIN) - 2


def test_invalid_answers_are_re_asked_once_with_the_error(faulty_run):
    log = faulty_run[3]
    for marker in ("[[malformed]]", "[[offlabel]]"):
        r = row(faulty_run, marker)
        text = next(t for t in FAULTS if t.startswith(marker))
        assert r["status"] == "ok" and r["emotion"] == expected_emotion(text)
        assert "re_asked" in r["flags"]
        asked = [e for e in log if e["text"] == text]
        assert [e["repair"] for e in asked] == [False, True]
    assert faulty_run[0].stats.repairs == 4  # two that recover, two that stay invalid


def test_an_answer_that_stays_invalid_keeps_the_raw_reply_and_no_label(faulty_run):
    off = row(faulty_run, "[[offlabel-always]]")
    assert off["status"] == "invalid"
    assert pd.isna(off["emotion"])
    assert "frustration" in off["error"] and "frustration" in off["raw_reply"]
    assert "off_label:frustration" in off["flags"]
    broken = row(faulty_run, "[[malformed-always]]")
    assert broken["status"] == "invalid" and pd.isna(broken["emotion"])
    assert broken["raw_reply"].startswith('{"character"') and broken["error"]


def test_synonyms_are_normalised_and_flagged(faulty_run):
    r = row(faulty_run, "[[synonym]]")
    text = next(t for t in FAULTS if t.startswith("[[synonym]]"))
    assert r["emotion"] == expected_emotion(text)
    assert "label_synonym" in r["flags"]


def test_a_reply_naming_another_character_is_flagged(faulty_run):
    r = row(faulty_run, "[[wrongchar]]")
    assert r["character"] == "Gunther"
    assert "character_mismatch" in r["flags"]
    others = [t for t, x in faulty_run[1].items() if "character_mismatch" in x["flags"]]
    assert others == [next(t for t in FAULTS if t.startswith("[[wrongchar]]"))]
    assert set(faulty_run[2].values()) <= set(SPEAKERS)


@pytest.mark.parametrize("status", [400, 500])
def test_a_rejected_json_schema_is_found_by_one_probe_whatever_the_status_and_remembered(tmp_path, status):
    """OpenAI rejects an unknown response format with 400; llama-cpp-python's server with HTTP 500 and a
    validation error naming it. Either way it is a format rejection, found by one tiny probe, not a server error
    retried, and the schema goes the way that server takes it (response_format json_object with a schema)."""
    from annotate_helpers import corpus_table

    with FakeOpenAIServer(reject_formats=("json_schema",), reject_status=status) as server:
        config = fast_config(server, concurrency=8, max_retries=6)
        first = run_annotation(corpus_table(PLAIN[:8]), config, tmp_path / "run")
        rejected_first = len(server.entries(status=status))
        second = run_annotation(corpus_table(PLAIN), config, tmp_path / "run")
        rejected_total = len(server.entries(status=status))
        asked = [e for e in server.entries(status=200) if e.get("text")]
    assert first.complete and second.complete
    assert rejected_first == rejected_total == 1  # the probe; the rerun remembers
    assert first.stats.retries == {}
    assert first.response_format == second.response_format == "json_schema"
    assert {(e["response_format"], e["format_schema"]) for e in asked} == {("json_object", True)}
    assert (second.annotations["emotion"] == [expected_emotion(t) for t in PLAIN]).all()


def test_a_server_refusing_every_json_format_gets_plain_text(tmp_path):
    from annotate_helpers import corpus_table

    with FakeOpenAIServer(reject_formats=("json_schema", "json_object")) as server:
        result = run_annotation(corpus_table(PLAIN[:3]), fast_config(server, concurrency=1), tmp_path / "run")
        formats = [e["response_format"] for e in server.entries()]
    assert result.response_format == "text"
    # Probes: the schema in OpenAI's form and in llama.cpp's, then JSON mode, then text; then the three lines.
    assert formats == ["json_schema", "json_object", "json_object", None, None, None, None]
    assert result.stats.format_fallbacks == ["json_schema -> json_object", "json_object -> text"]
    assert (result.annotations["status"] == "ok").all()


def test_a_server_that_says_it_is_llama_cpp_python_gets_its_schema_form_at_once(tmp_path):
    from annotate_helpers import corpus_table

    with FakeOpenAIServer(
        reject_formats=("json_schema",), reject_status=500, family="llama-cpp-python"
    ) as server:
        result = run_annotation(corpus_table(PLAIN[:4]), fast_config(server, concurrency=8), tmp_path / "run")
        log = server.entries()
    assert result.complete and server.gets == 1
    assert [e["status"] for e in log] == [200] * 5  # nothing rejected
    # One slot on that server: one request at a time.
    assert result.stats.concurrency == 1


def test_a_request_that_keeps_failing_is_failed_not_guessed_and_a_rerun_retries_it(tmp_path):
    from annotate_helpers import corpus_table

    table = corpus_table(["[[500x3]] Fails three times.", "Works at once."])
    with FakeOpenAIServer() as server:
        first = run_annotation(table, fast_config(server, max_retries=1), tmp_path / "run")
        second = run_annotation(table, fast_config(server, max_retries=1), tmp_path / "run")
    assert list(first.annotations["status"]) == ["failed", "ok"]
    assert "gave up after 2 attempts: HTTP 500" in first.annotations["error"][0]
    assert not first.complete
    assert list(second.annotations["status"]) == ["ok", "ok"]
    assert second.stats.cached == 1  # the row that worked was not asked again
