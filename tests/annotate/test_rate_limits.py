"""Rate limits: Retry-After in every form, the adaptive in-flight limit, pacing from x-ratelimit headers, and a
server asking to wait longer than --backoff-max. Speed itself is measured in bench/rate_limits.py."""

from __future__ import annotations

import email.utils
import math
import time

import pytest
from annotate_helpers import FakeOpenAIServer, asked, corpus_table, fast_config

from melt.annotate import run_annotation
from melt.annotate.engine import InFlightLimit, Pacer
from melt.llm.base import RateLimitState
from melt.llm.openai import _duration, _rate_limits, _retry_after
from timing import scaled

# -- what a server says about waiting --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("headers", "seconds"),
    [
        ({"retry-after-ms": "250"}, 0.25),
        ({"retry-after-ms": "nan", "retry-after": "3"}, 3.0),
        ({"retry-after": "1.5"}, 1.5),
        ({"retry-after": "-4"}, 0.0),
        ({"retry-after": "nan"}, None),
        ({"retry-after": "soon"}, None),
        ({"retry-after": "1e12"}, 1e12),
        ({"retry-after": "inf"}, math.inf),
        ({"retry-after": "Wed, 21 Oct 2015 07:28:00 GMT"}, 0.0),
        ({}, None),
    ],
)
def test_retry_after_in_every_form(headers, seconds):
    assert _retry_after(headers) == seconds


def test_retry_after_as_a_future_http_date():
    when = email.utils.formatdate(time.time() + 30, usegmt=True)
    assert 25 < _retry_after({"retry-after": when}) <= 30
    assert _retry_after({"retry-after": "Fri, 31 Dec 9999 23:59:59 GMT"}) > 1e9


@pytest.mark.parametrize(
    ("value", "seconds"),
    [("1s", 1.0), ("6m0s", 360.0), ("20ms", 0.02), ("1h2m3.5s", 3723.5), ("0.5", 0.5), ("soon", None)],
)
def test_rate_limit_reset_durations(value, seconds):
    assert _duration(value) == pytest.approx(seconds) if seconds is not None else _duration(value) is None


def test_rate_limit_headers_are_read_per_kind():
    state = _rate_limits(
        {
            "x-ratelimit-limit-requests": "500",
            "x-ratelimit-remaining-requests": "12",
            "x-ratelimit-reset-requests": "1.2s",
            "x-ratelimit-remaining-tokens": "garbage",
            "x-ratelimit-reset-tokens": "6m0s",
        }
    )
    assert state.kinds == {"requests": (500.0, 12.0, pytest.approx(1.2))}
    assert _rate_limits({"content-type": "application/json"}) is None


# -- the adaptive limit and the pacer, on their own ----------------------------------------------------------------


def frequent_429s(limit: InFlightLimit, sent_in: int, n: int = 10) -> None:
    for _ in range(n):
        limit.congested(sent_in, rate_limited=True)


def test_the_limit_halves_once_per_round_when_429s_are_frequent():
    limit = InFlightLimit(64)
    frequent_429s(limit, sent_in=0)
    assert limit.limit == 32  # ten 429s of requests sent before the decrease: one decrease
    frequent_429s(limit, sent_in=1)
    assert limit.limit == 16
    assert limit.lowest == 16


def test_an_isolated_429_among_successes_leaves_the_limit_alone():
    limit = InFlightLimit(64)
    for _ in range(200):
        limit.succeeded(0)
    limit.congested(0, rate_limited=True)
    assert limit.limit == 64


def test_a_timeout_always_halves_and_successes_grow_the_limit_back_but_never_above_the_maximum():
    limit = InFlightLimit(16)
    limit.congested(0, rate_limited=False)
    assert limit.limit == 8
    limit.succeeded(0)  # sent before the decrease: says nothing about the new limit
    assert limit.limit == 8
    for _ in range(8):
        limit.succeeded(1)
    assert limit.limit == 16  # one per success back to where the decrease happened
    for _ in range(100):
        limit.succeeded(1)
    assert limit.limit == 16


def test_past_the_last_decrease_the_limit_grows_by_one_per_round():
    limit = InFlightLimit(64)
    frequent_429s(limit, sent_in=0)  # 64 -> 32, and 429s are frequent now
    for _ in range(32):
        limit.succeeded(1)
    assert 32 < limit.limit < 34


def test_a_backend_that_serves_one_request_at_a_time_caps_the_limit():
    limit = InFlightLimit(8)
    limit.cap(1)
    assert (limit.limit, limit.maximum) == (1, 1)
    limit.congested(0, rate_limited=False)
    assert limit.limit == 1


def test_the_pacer_spaces_requests_at_the_refill_rate_only_when_the_limit_is_nearly_used():
    pacer = Pacer()
    pacer.observe(RateLimitState({"requests": (100.0, 80.0, 0.2)}), in_flight=4)
    assert pacer.interval == 0  # plenty left
    pacer.observe(RateLimitState({"requests": (100.0, 2.0, 0.98)}), in_flight=4)
    assert pacer.interval == pytest.approx(0.01)  # 98 requests refilled in 0.98 s
    first, second = pacer.delay(), pacer.delay()
    assert first == pytest.approx(0, abs=0.005) and second == pytest.approx(0.01, abs=0.005)
    pacer.observe(RateLimitState({"requests": (None, 2.0, 1.5)}), in_flight=1)
    assert pacer.interval == pytest.approx(0.75)  # no limit given: what is left, spread over the reset time


# -- against the loopback server -------------------------------------------------------------------------------------


def test_a_token_bucket_without_headers_draws_few_429s(tmp_path):
    # Before: one 429 paused every worker, which then all came back at once: more 429s than requests.
    # 60 requests/s at 50 ms each: three in flight is what the bucket takes.
    texts = [f"Bucket line {i}." for i in range(120)]
    with FakeOpenAIServer(latency=0.05, token_bucket_rate=60, token_bucket_burst=5) as server:
        result = run_annotation(corpus_table(texts), fast_config(server, concurrency=16, max_retries=30),
                                tmp_path / "run")  # fmt: skip
        limited = len(asked(server, status=429))
    assert result.complete
    assert limited <= 0.3 * len(texts), limited
    assert result.stats.lowest_concurrency < 16


def test_x_ratelimit_headers_pace_the_requests(tmp_path):
    texts = [f"Paced line {i}." for i in range(120)]
    with FakeOpenAIServer(
        latency=0.05, token_bucket_rate=60, token_bucket_burst=5, ratelimit_headers=True
    ) as server:
        result = run_annotation(corpus_table(texts), fast_config(server, concurrency=16, max_retries=30),
                                tmp_path / "run")  # fmt: skip
        limited = len(asked(server, status=429))
    assert result.complete
    assert limited <= 0.25 * len(texts), limited  # the first wave, sent before any header came back


@pytest.mark.parametrize(
    ("marker", "wait"),
    [
        ("[[retry-after:nan]]", 0.0),  # unusable: the backoff's own delay (10 ms here)
        ("[[retry-after-ms:300]]", 0.3),
    ],
)
def test_a_429_waits_what_the_server_asked(server, tmp_path, marker, wait):
    text = f"{marker} Wait."
    result = run_annotation(corpus_table([text]), fast_config(server), tmp_path / "run")
    assert result.complete
    first, second = asked(server, text=text)
    assert first["status"] == 429 and second["status"] == 200
    assert second["time"] - first["time"] >= wait


def test_a_http_date_retry_after_is_honoured(server, tmp_path):
    when = email.utils.formatdate(time.time() + 2, usegmt=True)
    text = f"[[retry-after:{when}]] Wait until then."
    result = run_annotation(corpus_table([text]), fast_config(server, backoff_max=5), tmp_path / "run")
    first, second = asked(server, text=text)
    assert result.complete and second["time"] - first["time"] >= 1.0


@pytest.mark.parametrize("value", ["1e12", "inf", "3600"])
def test_a_server_asking_to_wait_beyond_backoff_max_stops_the_run(server, tmp_path, value):
    texts = [f"[[retry-after:{value}]] Come back tomorrow.", "Second.", "Third."]
    started = time.monotonic()
    result = run_annotation(corpus_table(texts), fast_config(server, concurrency=1), tmp_path / "run")
    assert time.monotonic() - started < 30
    assert "the server asks to wait" in result.stats.stop_reason
    assert "rerun later" in result.stats.stop_reason and "--backoff-max" in result.stats.stop_reason
    assert list(result.annotations["status"]) == ["pending"] * 3
    assert len(asked(server)) == 1  # nothing sent after it


def test_the_cli_says_rerun_later_and_exits_3(tmp_path, melt_cli):
    from melt.corpus.schema import write_table

    corpus = write_table(corpus_table(["[[retry-after:7200]] Tomorrow.", "Next."]), tmp_path / "c.csv")
    with FakeOpenAIServer() as server:
        result = melt_cli(
            "annotate", corpus, "--out", tmp_path / "run", "--base-url", server.base_url, "--model", "m",
            "-j", "1", "--backoff-max", "30", "--quiet", timeout=scaled(120),
        )  # fmt: skip
    assert result.code == 3, result.stderr
    assert "the server asks to wait 7200 s" in result.stdout and "rerun later" in result.stdout


# -- a server that works on fewer requests than it is sent ---------------------------------------------------------


def test_a_single_slot_server_gets_one_wave_of_timeouts_then_one_request_at_a_time(tmp_path):
    # Before: 24 timeouts for 6 utterances, 4 of them failed: the retries queued again behind the abandoned work.
    texts = [f"Slot line {i}." for i in range(6)]
    with FakeOpenAIServer(latency=0.5, slots=1) as server:
        config = fast_config(server, concurrency=8, timeout=1.2, max_retries=6)
        result = run_annotation(corpus_table(texts), config, tmp_path / "run")
    assert (result.annotations["status"] == "ok").all()
    assert result.stats.retries["timeout"] <= 7  # the first wave only
    assert result.stats.lowest_concurrency == 1


def test_llama_server_slots_are_read_so_nothing_waits_in_its_queue(tmp_path):
    texts = [f"Slot line {i}." for i in range(6)]
    with FakeOpenAIServer(latency=0.5, slots=1, family="llama.cpp") as server:
        config = fast_config(server, concurrency=8, timeout=1.2, max_retries=6)
        result = run_annotation(corpus_table(texts), config, tmp_path / "run")
    assert (result.annotations["status"] == "ok").all()
    assert result.stats.retries == {} and result.stats.concurrency == 1
