"""The request store on its own: keys, replies in both stored shapes, failures that do not count as done."""

from __future__ import annotations

import asyncio
import json

import pytest

from melt.annotate.store import RequestStore, StoreWriteError, request_key

LOGPROBS = [
    {"token": "joy", "logprob": -0.2, "bytes": [106, 111, 121], "top_logprobs": [
        {"token": "joy", "logprob": -0.2, "bytes": [106, 111, 121]},
        {"token": "anger", "logprob": -1.8, "bytes": [97, 110, 103, 101, 114]},
    ]},
]  # fmt: skip


def put(store: RequestStore, key: str, **overrides) -> None:
    values = dict(utterance_id="train/dia0_utt0", sample=0, turn=0, request_json="{}", content='{"a": 1}',
                  finish_reason="stop", logprobs=LOGPROBS, raw_response=None, prompt_tokens=10,
                  completion_tokens=5, cost_usd=0.001, attempts=1, started=0.0)  # fmt: skip
    values.update(overrides)
    store.put_done(key, **values)


def test_key_covers_model_parameters_and_sample():
    request = {"messages": [{"role": "user", "content": "hi"}], "temperature": 1.0}
    key = request_key("m", request, 0)[0]
    assert key == request_key("m", dict(reversed(list(request.items()))), 0)[0]  # order does not matter
    assert key != request_key("m", request, 1)[0]
    assert key != request_key("other", request, 0)[0]
    assert key != request_key("m", {**request, "temperature": 0.5}, 0)[0]


def test_a_reply_without_the_servers_body_is_kept_without_byte_arrays(tmp_path):
    store = RequestStore(tmp_path / "s.sqlite")
    put(store, "k")
    store.close()
    reopened = RequestStore(tmp_path / "s.sqlite")
    reply = reopened.get("k")
    assert reply.content == '{"a": 1}' and reply.finish_reason == "stop"
    assert reply.logprobs[0]["top_logprobs"][1] == {"token": "anger", "logprob": -1.8}
    assert "bytes" not in json.dumps(reply.logprobs)


def test_a_servers_body_is_kept_as_sent_and_read_back(tmp_path):
    body = {
        "choices": [
            {"message": {"content": "hello"}, "finish_reason": "length", "logprobs": {"content": LOGPROBS}}
        ]
    }
    store = RequestStore(tmp_path / "s.sqlite")
    put(store, "k", raw_response=json.dumps(body))
    reply = store.get("k")
    assert (reply.content, reply.finish_reason, reply.logprobs) == ("hello", "length", LOGPROBS)


def test_failed_requests_are_not_replies_and_totals_count_done_ones(tmp_path):
    store = RequestStore(tmp_path / "s.sqlite")
    put(store, "done")
    store.put_failed("failed", utterance_id="u", sample=0, turn=0, request_json="{}", error="HTTP 500", attempts=7,
                     started=0.0)  # fmt: skip
    assert store.get("failed") is None
    assert store.totals() == {
        "requests": 1,
        "probes": 0,
        "prompt_tokens": 10,
        "completion_tokens": 5,
        "cost_usd": 0.001,
    }


def test_a_commit_that_fails_in_the_timer_is_kept_reported_and_stops_later_writes(tmp_path):
    """Commits run in a timer callback, where an exception would vanish: the failure must come out."""
    store = RequestStore(tmp_path / "s.sqlite")
    pages = store._db.execute("PRAGMA page_count").fetchone()[0]
    # SQLite's own "database or disk is full", reached by capping the file at its current size.
    store._db.execute(f"PRAGMA max_page_count = {pages}")
    failures = []
    store.on_failure = failures.append

    async def write_in_an_event_loop():
        for i in range(50):
            try:
                put(store, f"k{i}", content="x" * 5000)
            except StoreWriteError:
                break
            await asyncio.sleep(0.01)  # the commit timer fires between writes

    asyncio.run(write_in_an_event_loop())
    assert len(failures) == 1 and store.failure is failures[0]
    assert "full" in str(store.failure) and str(tmp_path / "s.sqlite") in str(store.failure)
    with pytest.raises(StoreWriteError):
        put(store, "after")
    store.close()
