"""Annotation through the Batch API against the loopback batch server (tests/batch_server.py): the same
requests, replies and validation as a live run, every end of a batch, and nothing paid twice."""

from __future__ import annotations

import json

import pandas as pd
import pytest
from annotate_helpers import asked, corpus_table, fast_config
from batch_helpers import answered_twice, batch_config, run_json, store_rows, wait_until_ended

from batch_server import FakeBatchServer
from melt.annotate import cancel_batches, estimate_run, run_annotation
from melt.errors import MeltError
from melt.llm.pricing import PRICES
from openai_server import expected_emotion

pytestmark = pytest.mark.timeout(120)
PLAIN = [f"A plain line for the batch, number {i}." for i in range(8)]


def annotate(table, config, out):
    return run_annotation(table, config, out)


def test_a_batch_run_submits_then_reruns_collect_validate_and_re_ask_in_the_next_batch(tmp_path):
    texts = [*PLAIN, "[[offlabel]] Seven! Seven! Seven!", "[[synonym]] Oh. My. God."]
    table = corpus_table(texts)
    out = tmp_path / "run"
    with FakeBatchServer() as server:
        config = batch_config(server)
        first = annotate(table, config, out)
        assert set(first.annotations["status"]) == {"pending"}
        assert first.stats.deferred == len(texts)
        assert asked(server) == []  # nothing about an utterance went live
        [batch] = server.created_batches()
        # custom_id is the store's request key, recorded before the upload
        recorded = {k for (k,) in store_rows(out, "SELECT key FROM batch_requests")}
        assert {line["custom_id"] for line in batch.lines} == recorded and len(recorded) == len(texts)
        assert batch.metadata["melt_batch"] and len(batch.metadata["melt_run"]) == 16
        assert run_json(out)["batch"]["in_progress"] == 1

        wait_until_ended(server)
        # The output file lists its lines in another order than the input: they are matched by custom_id.
        [output] = [f for f in server.files.values() if f.filename == f"{batch.id}_output.jsonl"]
        output_order = [json.loads(line)["custom_id"] for line in output.content.splitlines()]
        assert sorted(output_order) == sorted(recorded) and output_order != [
            x["custom_id"] for x in batch.lines
        ]
        second = annotate(table, config, out)
        rows = second.annotations.set_index(table["id"])
        offlabel = table["id"][8]
        assert (rows.drop(offlabel)["status"] == "ok").all()
        assert rows.loc[offlabel, "status"] == "pending"  # its re-ask is in the next batch
        _, repair_batch = server.created_batches()
        [repair_line] = repair_batch.lines
        assert any(m["role"] == "assistant" for m in repair_line["body"]["messages"])

        wait_until_ended(server)
        third = annotate(table, config, out)
        assert third.complete and set(third.annotations["status"]) == {"ok"}
        assert list(third.annotations["emotion"]) == [expected_emotion(t) for t in texts]
        assert "re_asked" in third.annotations["flags"][8]
        assert "label_synonym" in third.annotations["flags"][9]
        assert third.annotations["confidence"][0] == pytest.approx(0.8)  # logprobs came through the batch
        assert answered_twice(server) == []
        assert len(server.created_batches()) == 2


def test_batch_lines_are_the_live_requests_and_their_replies_serve_a_live_run(tmp_path):
    table = corpus_table(PLAIN)
    with FakeBatchServer() as server:
        annotate(table, batch_config(server, batch_wait=True), tmp_path / "batch")
        batch_keys = {e["key"] for e in server.batch_answers()}
        live = annotate(table, fast_config(server), tmp_path / "live")
        live_keys = {e["key"] for e in asked(server) if e.get("via") != "batch"}
        # The same request bodies, field for field (the server fingerprints each body it answers).
        assert live.complete and batch_keys == live_keys and len(batch_keys) == len(PLAIN)
        sent_before = len(server.entries())
        again = annotate(table, fast_config(server), tmp_path / "batch")  # a live run on the batch folder
        assert again.complete and again.stats.cached == len(PLAIN) and again.stats.sent == 0
        assert len(server.entries()) == sent_before
    batch_rows = store_rows(tmp_path / "batch", "SELECT key, reply FROM requests WHERE turn = 0 ORDER BY key")
    live_rows = store_rows(tmp_path / "live", "SELECT key, reply FROM requests WHERE turn = 0 ORDER BY key")
    assert [k for k, _ in batch_rows] == [k for k, _ in live_rows]
    for (_, batch_reply), (_, live_reply) in zip(batch_rows, live_rows, strict=True):
        assert json.loads(batch_reply)["choices"] == json.loads(live_reply)["choices"]


def test_wait_finishes_in_one_invocation_and_re_asks_can_go_live(tmp_path):
    texts = [*PLAIN[:4], "[[offlabel]] Seven! Seven! Seven!", "[[malformed]] Welcome to the real world."]
    table = corpus_table(texts)
    with FakeBatchServer() as server:
        result = annotate(table, batch_config(server, batch_wait=True, batch_repair="live"), tmp_path / "run")
        assert result.complete and set(result.annotations["status"]) == {"ok"}
        assert len(server.created_batches()) == 1
        live = [e for e in asked(server) if e.get("via") != "batch"]
        assert len(live) == 2 and all(e["repair"] for e in live)  # the two re-asks, live
        assert {e["text"] for e in live} == set(texts[4:])
        assert answered_twice(server) == []
    with FakeBatchServer() as server:
        result = annotate(table, batch_config(server, batch_wait=True), tmp_path / "run2")
        assert result.complete and len(server.created_batches()) == 2  # the re-asks, as the next batch
        assert [e for e in asked(server) if e.get("via") != "batch"] == []
    summary = run_json(tmp_path / "run2")["batch"]
    assert summary["this_invocation"]["submitted_requests"] == len(texts) + 2
    assert summary["answered_by_batch"]["requests"] == len(texts) + 2
    assert summary["in_progress"] == 0


def test_requests_are_split_by_count_and_by_bytes(tmp_path):
    texts = [f"Split line {i:02d}, padded to a similar length." for i in range(10)]
    with FakeBatchServer() as server:
        result = annotate(corpus_table(texts), batch_config(server, batch_max_requests=3), tmp_path / "count")
        assert [len(b.lines) for b in server.created_batches()] == [3, 3, 3, 1]
        assert result.batch["this_invocation"]["created"] == 4
        line_bytes = max(len(f.content) for f in server.files.values() if f.purpose == "batch") // 3
        files_before = len(server.created_batches())
        limit = int(line_bytes * 2.5)
        annotate(corpus_table(texts), batch_config(server, batch_max_bytes=limit), tmp_path / "bytes")
        new = server.created_batches()[files_before:]
        inputs = [server.files[b.input_file_id].content for b in new]
        assert all(len(content) <= limit for content in inputs)
        assert [len(b.lines) for b in new] == [2, 2, 2, 2, 2]
        assert sorted(line["custom_id"] for b in new for line in b.lines) == sorted(
            k for (k,) in store_rows(tmp_path / "bytes", "SELECT key FROM batch_requests")
        )
        wait_until_ended(server)
        done = annotate(corpus_table(texts), batch_config(server, batch_max_bytes=limit), tmp_path / "bytes")
        assert done.complete
        # A request whose line alone is over the limit cannot go in any file: failed, with the reason.
        small = annotate(
            corpus_table(texts[:2]), batch_config(server, batch_max_bytes=200), tmp_path / "tiny"
        )
        assert set(small.annotations["status"]) == {"failed"}
        assert "more than a batch file may hold" in small.annotations["error"][0]


def test_completed_with_errors_and_with_no_output_file_at_all(tmp_path):
    texts = [*PLAIN[:3], "[[batch-error]] A server hiccup.", "[[batch-error-always]] Never works."]
    with FakeBatchServer() as server:
        config = batch_config(server, batch_wait=True)
        first = annotate(corpus_table(texts), config, tmp_path / "run")
        statuses = list(first.annotations["status"])
        assert statuses == ["ok", "ok", "ok", "failed", "failed"]
        assert "HTTP 500" in first.annotations["error"][3] and "HTTP 400" in first.annotations["error"][4]
        assert not first.complete
        again = annotate(corpus_table(texts), config, tmp_path / "run")  # a rerun sends the failed again
        assert list(again.annotations["status"]) == ["ok", "ok", "ok", "ok", "failed"]
        assert len(server.created_batches()) == 2 and len(server.created_batches()[1].lines) == 2
        # A batch whose every line failed has an error file and no output file.
        only_errors = annotate(corpus_table(texts[4:] * 1), config, tmp_path / "errors")
        last = server._object(server.created_batches()[-1])
        assert last["status"] == "completed" and last["output_file_id"] is None and last["error_file_id"]
        assert list(only_errors.annotations["status"]) == ["failed"]
        assert answered_twice(server) == []


def test_a_batch_that_fails_validation_reports_why_and_a_rerun_sends_it_again(tmp_path):
    table = corpus_table(PLAIN[:4])
    with FakeBatchServer(max_requests=3) as server:
        first = annotate(table, batch_config(server, batch_wait=True), tmp_path / "run")
        assert set(first.annotations["status"]) == {"failed"}
        assert "the batch failed: too_many_requests" in first.annotations["error"][0]
        record = run_json(tmp_path / "run")["batch"]["batches"][0]
        assert record["status"] == "failed" and "at most 3 are allowed" in record["errors"]
        # The batch size is no part of the folder's identity: smaller batches finish the same folder.
        second = annotate(
            table, batch_config(server, batch_wait=True, batch_max_requests=3), tmp_path / "run"
        )
        assert second.complete and [len(b.lines) for b in server.created_batches()] == [4, 3, 1]
    texts = [*PLAIN[:2], "[[invalid-line]] A line the server will not take."]
    with FakeBatchServer() as server:
        first = annotate(corpus_table(texts), batch_config(server, batch_wait=True), tmp_path / "invalid")
        assert set(first.annotations["status"]) == {"failed"}
        assert (
            "invalid_request" in first.annotations["error"][0] and "(line 3)" in first.annotations["error"][0]
        )
        second = annotate(corpus_table(texts), batch_config(server, batch_wait=True), tmp_path / "invalid")
        assert second.complete


def test_an_expired_batch_keeps_what_completed_and_sends_the_rest_again(tmp_path):
    texts = [*PLAIN[:5], "[[expire]] Too slow for the window."]
    with FakeBatchServer() as server:
        first = annotate(corpus_table(texts), batch_config(server), tmp_path / "run")
        wait_until_ended(server)
        assert server._object(server.created_batches()[0])["status"] == "expired"
        second = annotate(corpus_table(texts), batch_config(server), tmp_path / "run")
        assert list(second.annotations["status"]) == ["ok"] * 5 + ["pending"]
        this = second.batch["this_invocation"]
        assert this["replies"] == 5 and this["expired_requests"] == 1 and this["submitted_requests"] == 1
        # The five that completed are billed (at the batch price), the expired one is not.
        price = PRICES["gpt-4o-2024-08-06"].batch()
        usage = store_rows(tmp_path / "run", "SELECT prompt_tokens, completion_tokens, cost_usd FROM requests "
                           "WHERE turn = 0")  # fmt: skip
        assert len(usage) == 5
        for prompt_tokens, completion_tokens, cost in usage:
            assert cost == pytest.approx(price.cost(prompt_tokens, completion_tokens))
        wait_until_ended(server)
        third = annotate(corpus_table(texts), batch_config(server), tmp_path / "run")
        assert third.complete and answered_twice(server) == []
        assert first.annotations["status"].eq("pending").all()
    # With --wait, the expired request is sent again in the same invocation.
    with FakeBatchServer() as server:
        waited = annotate(corpus_table(texts), batch_config(server, batch_wait=True), tmp_path / "waited")
        assert waited.complete and len(server.created_batches()) == 2


def test_cancel_keeps_what_completed_and_a_rerun_sends_only_the_rest(tmp_path):
    texts = [f"Cancel test line {i}." for i in range(20)]
    table = corpus_table(texts)
    out = tmp_path / "run"
    with FakeBatchServer(in_progress=4.0) as server:
        annotate(table, batch_config(server), out)
        [batch] = server.created_batches()
        while server._object(batch)["request_counts"]["completed"] < 5:
            pass
        report, records = cancel_batches(out, batch_config(server), wait=True)
        assert report.cancelled == 1 and records[0].status == "cancelled"
        kept = report.replies
        assert 5 <= kept < len(texts)
        assert len(server.batch_answers()) == kept
        rerun = annotate(table, batch_config(server, batch_wait=True), out)
        assert rerun.complete
        assert len(server.created_batches()[1].lines) == len(texts) - kept
        assert answered_twice(server) == []
        # Nothing left to cancel.
        report, _ = cancel_batches(out, batch_config(server))
        assert report.cancelled == 0


def test_a_mixed_folder_costs_live_requests_at_the_live_price_and_batch_ones_at_half(tmp_path):
    texts = [f"Mixed folder line {i}." for i in range(12)]
    table = corpus_table(texts)
    out = tmp_path / "run"
    price = PRICES["gpt-4o-2024-08-06"]
    with FakeBatchServer() as server:
        live = annotate(table, fast_config(server, limit=5), out)
        assert live.complete
        batch = annotate(table, batch_config(server, batch_wait=True), out)
        assert batch.complete
        assert len(server.created_batches()[0].lines) == 7  # only what the live run had not done
    rows = store_rows(out, "SELECT q.prompt_tokens, q.completion_tokens, q.cost_usd, b.key IS NOT NULL FROM "
                      "requests q LEFT JOIN batch_requests b ON b.key = q.key AND b.state = 'done' "
                      "WHERE q.turn = 0")  # fmt: skip
    by_batch = [r for r in rows if r[3]]
    by_live = [r for r in rows if not r[3]]
    assert len(by_batch) == 7 and len(by_live) == 5
    for prompt_tokens, completion_tokens, cost, _ in by_live:
        assert cost == pytest.approx(price.cost(prompt_tokens, completion_tokens))
    for prompt_tokens, completion_tokens, cost, _ in by_batch:
        assert cost == pytest.approx(price.cost(prompt_tokens, completion_tokens) / 2)
    summary = run_json(out)
    assert summary["batch"]["answered_by_batch"]["requests"] == 7
    assert summary["batch"]["answered_by_batch"]["cost_usd"] == pytest.approx(sum(r[2] for r in by_batch))
    probe = store_rows(out, "SELECT COALESCE(SUM(cost_usd), 0) FROM requests WHERE turn < 0")[0][0]
    assert summary["totals"]["cost_usd"] == pytest.approx(sum(r[2] for r in rows) + probe)
    annotations = pd.read_parquet(out / "annotations.parquet")
    assert annotations["cost_usd"].sum() == pytest.approx(sum(r[2] for r in rows))


def test_a_live_run_never_sends_what_a_batch_in_progress_holds(tmp_path):
    texts = [f"Held line {i}." for i in range(6)]
    table = corpus_table(texts)
    out = tmp_path / "run"
    with FakeBatchServer(in_progress=30.0) as server:
        annotate(corpus_table(texts[:4]), batch_config(server), out)
        live = annotate(table, fast_config(server), out)
        statuses = list(live.annotations["status"])
        assert statuses == ["pending"] * 4 + ["ok"] * 2
        assert {e["text"] for e in asked(server)} == set(texts[4:])
        assert live.stats.deferred == 4
        # The dry run counts them as neither done nor to send.
        estimate = estimate_run(table, fast_config(server), out)
        assert (estimate.cached, estimate.in_batches, estimate.requests) == (2, 4, 6)
        assert estimate.prompt_tokens == 0


def test_the_dry_run_gives_the_batch_price(tmp_path):
    table = corpus_table(PLAIN)
    with FakeBatchServer() as server:
        live = estimate_run(table, fast_config(server))
        batch = estimate_run(table, batch_config(server))
    assert batch.batch and not live.batch
    assert batch.prompt_tokens == live.prompt_tokens
    assert batch.cost_usd == pytest.approx(live.cost_usd / 2)
    assert batch.cost_usd_max == pytest.approx(live.cost_usd_max / 2)


def test_max_cost_counts_what_a_batch_may_cost_at_the_batch_price(tmp_path):
    texts = [f"Budget line {i}." for i in range(10)]
    with FakeBatchServer() as server:
        # gpt-4o batch: 5 USD per M completion tokens; 800 max tokens -> 0.004 USD worst case per request.
        result = annotate(corpus_table(texts), batch_config(server, max_cost=0.0165), tmp_path / "run")
        submitted = sum(len(b.lines) for b in server.created_batches())
    assert result.stats.stopped_by_budget and 1 <= submitted < len(texts)
    assert result.batch["this_invocation"]["submitted_requests"] == submitted
    with pytest.raises(MeltError, match="Batch API price"):
        config = batch_config(
            server, model="my-model", max_cost=1.0, prices={"my-model": {"input": 1, "output": 2}}
        )
        annotate(corpus_table(texts), config, tmp_path / "x")


@pytest.mark.parametrize(
    ("faults", "extra", "note"),
    [
        ({"duplicate-lines"}, {}, "repeated custom_ids"),
        ({"unknown-line"}, {}, "custom_id not in the batch"),
        ({"malformed-body"}, {}, None),
        ({"broken-line"}, {}, "not JSON"),
        (set(), {"download_failures": 2}, None),
    ],
)
def test_damaged_result_files_never_store_a_reply_twice_or_lose_a_request(tmp_path, faults, extra, note):
    texts = [f"Damaged file line {i}." for i in range(6)]
    table = corpus_table(texts)
    with FakeBatchServer(faults=faults, **extra) as server:
        config = batch_config(server, batch_wait=True)
        first = annotate(table, config, tmp_path / "run")
        statuses = first.annotations["status"]
        assert set(statuses) <= {"ok", "failed"}
        failed = first.annotations[statuses == "failed"]
        if "malformed-body" in faults:
            assert len(failed) == 1 and "choices is not a list" in failed["error"].iloc[0]
        elif "broken-line" in faults:
            assert len(failed) == 1 and "without a result" in failed["error"].iloc[0]
        else:
            assert failed.empty
        if note:
            assert any(note in n for n in first.batch["this_invocation"]["notes"])
        stored = store_rows(tmp_path / "run", "SELECT key, COUNT(*) FROM requests GROUP BY key")
        assert all(n == 1 for _, n in stored)
        server.faults.clear()
        second = annotate(table, config, tmp_path / "run")
        assert second.complete and set(second.annotations["status"]) == {"ok"}
        assert list(second.annotations["emotion"]) == [expected_emotion(t) for t in texts]


def test_a_folder_with_only_batches_belongs_to_its_configuration(tmp_path):
    table = corpus_table(PLAIN[:3])
    with FakeBatchServer(in_progress=30.0) as server:
        annotate(table, batch_config(server), tmp_path / "run")
        with pytest.raises(MeltError, match="temperature"):
            annotate(table, batch_config(server, temperature=0.2), tmp_path / "run")
        with pytest.raises(MeltError, match="batches in progress"):
            run_annotation(table, batch_config(server, temperature=0.2), tmp_path / "run", force_reuse=True)
        assert len(server.created_batches()) == 1


def test_batch_needs_a_server(tmp_path, monkeypatch):
    from melt.annotate import AnnotateConfig

    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    with pytest.raises(MeltError, match="--batch needs an OpenAI-compatible server"):
        annotate(corpus_table(PLAIN[:1]), AnnotateConfig(batch=True), tmp_path / "run")
    assert not (tmp_path / "run").exists()


def test_a_refused_batch_creation_stops_the_run_and_frees_its_requests(tmp_path):
    table = corpus_table(PLAIN[:3])
    with FakeBatchServer(faults={"refuse-create"}) as server:
        with pytest.raises(MeltError, match=r"creating a batch: the server refused it \(HTTP 400"):
            annotate(table, batch_config(server), tmp_path / "run")
        assert set(pd.read_parquet(tmp_path / "run" / "annotations.parquet")["status"]) == {"pending"}
        [record] = run_json(tmp_path / "run")["batch"]["batches"]
        assert record["state"] == "abandoned" and "HTTP 400" in record["errors"]
        server.faults.clear()
        result = annotate(table, batch_config(server, batch_wait=True), tmp_path / "run")
        assert result.complete and len(server.created_batches()) == 1
        assert answered_twice(server) == []


def test_a_batch_created_twice_after_a_lost_reply_is_found_and_the_second_cancelled(tmp_path):
    """The first creation's reply is lost and the account's list does not show the batch yet when the creation
    is tried again: the server holds two batches of the same requests. The later check cancels the second."""
    table = corpus_table(PLAIN[:4])
    with FakeBatchServer(faults={"drop-create-reply"}, list_lag=0.5, in_progress=2.0) as server:
        result = annotate(table, batch_config(server, batch_wait=True, backoff_base=0.01), tmp_path / "run")
        first, second = server.created_batches()
        assert first.metadata == second.metadata
        statuses = {server._object(first)["status"], server._object(second)["status"]}
        assert statuses == {"completed", "cancelled"}
        assert result.complete
        # The second was cancelled before it was done: at most some of its lines were answered (and billed).
        assert len(server.batch_answers()) < 8
        assert any("repeated batch" in note for note in result.batch["this_invocation"]["notes"])
        stored = store_rows(tmp_path / "run", "SELECT COUNT(*) FROM requests WHERE turn = 0")[0][0]
        assert stored == 4
