"""Runs: outputs, resume from the store, samples, budget, dry run, bad input, and the API key kept out."""

from __future__ import annotations

import asyncio
import hashlib
import json
import sqlite3

import pandas as pd
import pytest
from annotate_helpers import asked, corpus_table, fast_config, probe_cost

from melt.annotate import AnnotateConfig, estimate_run, run_annotation
from melt.annotate.run import CORPUS_COLUMNS, OUTPUT_COLUMNS
from melt.annotate.store import STORE_NAME
from melt.corpus.schema import read_table, write_table
from melt.errors import MeltError
from melt.llm.pricing import price_of
from openai_server import expected_emotion

TEXTS = [f"Line {i}: I can't believe it's not butter." for i in range(10)]


def test_outputs_have_one_row_per_utterance_and_the_documented_columns(server, tmp_path, write_corpus):
    corpus = write_corpus(TEXTS)
    result = run_annotation(corpus, fast_config(server), tmp_path / "run")
    parquet = pd.read_parquet(tmp_path / "run" / "annotations.parquet")
    csv = pd.read_csv(tmp_path / "run" / "annotations.csv")
    # The answer columns, with the corpus's text, speaker and human label after the id, and the model and
    # prompt of every row at the end: the table reads without the corpus.
    expected = ["id", *CORPUS_COLUMNS, *OUTPUT_COLUMNS[1:], "model", "prompt"]
    assert list(parquet.columns) == list(csv.columns) == expected
    table = read_table(corpus)
    assert list(parquet["id"]) == list(table["id"])
    for column in CORPUS_COLUMNS:
        assert parquet[column].tolist() == table[column].astype("string").tolist()
    assert (parquet["model"] == "gpt-4o-2024-08-06").all() and (parquet["prompt"] == "melt").all()
    # The raw reply is kept for usable answers too, and says what the parsed columns say.
    for reply, emotion in zip(parquet["raw_reply"], parquet["emotion"], strict=True):
        assert emotion in reply.lower()
    assert list(parquet["emotion"]) == [expected_emotion(t) for t in TEXTS]
    assert (parquet["status"] == "ok").all()
    expected_cost = price_of("gpt-4o-2024-08-06").cost(
        int(parquet["prompt_tokens"].sum()), int(parquet["completion_tokens"].sum())
    )
    assert parquet["cost_usd"].sum() == pytest.approx(expected_cost)
    # This invocation also paid for the tiny request that found the server's answer format.
    probe = probe_cost(tmp_path / "run")
    assert 0 < probe < expected_cost / 10
    assert result.stats.cost_usd == pytest.approx(expected_cost + probe)

    run = json.loads((tmp_path / "run" / "run.json").read_text())
    assert run["corpus"] == str(corpus.resolve())
    assert run["model"] == "gpt-4o-2024-08-06" and run["backend"] == "openai"
    assert len(run["prompt"]["template_hash"]) == 64
    assert run["totals"]["requests"] == 10 and run["totals"]["probes"] == 1
    assert run["totals"]["cost_usd"] == pytest.approx(expected_cost + probe)
    assert run["this_invocation"]["retries_total"] == 0
    assert run["status"] == {"ok": 10} and run["complete"] is True
    # run.json says how the run was made: version, date, the corpus's hash, every setting, the prompt's text.
    made = run["provenance"]
    assert made["melt_version"] and made["created"] and made["model"] == "gpt-4o-2024-08-06"
    assert made["inputs"]["corpus"]["sha256"] == hashlib.sha256(corpus.read_bytes()).hexdigest()
    assert made["command"].startswith("melt.annotate.run.run_annotation(")  # called from Python here
    assert made["settings"]["temperature"] == 1.0 and made["settings"]["base_url"] == server.base_url
    assert made["who_answers"] == {
        "kind": "openai",
        "base_url": server.base_url,
        "model": "gpt-4o-2024-08-06",
    }
    text = made["prompt"]["text"]
    assert "Anger, Disgust, Sadness, Joy, Neutral, Surprise, Fear" in text["system"]
    assert text["user"] == "{speaker} at s{season}e{episode} said: {utterance}"
    assert "{error}" in text["repair"] and made["prompt"]["template_hash"] == run["prompt"]["template_hash"]
    assert set(run["columns"]) == set(expected)


def test_a_rerun_sends_nothing_and_reproduces_the_table(server, tmp_path, write_corpus):
    corpus = write_corpus(TEXTS)
    first = run_annotation(corpus, fast_config(server), tmp_path / "run")
    sent = len(server.entries())
    second = run_annotation(corpus, fast_config(server), tmp_path / "run")
    assert len(server.entries()) == sent == 11  # ten utterances and the answer-format probe
    assert second.stats.cached == 10 and second.stats.sent == 0 and second.stats.cost_usd == 0
    pd.testing.assert_frame_equal(first.annotations, second.annotations)


def test_runs_from_inside_a_running_event_loop_as_in_a_notebook(server, tmp_path, write_corpus):
    async def notebook_cell():
        return run_annotation(write_corpus(TEXTS[:3]), fast_config(server), tmp_path / "run")

    assert asyncio.run(notebook_cell()).complete


def test_a_changed_parameter_is_refused_and_forced_it_is_a_new_request(server, tmp_path, write_corpus):
    corpus = write_corpus(TEXTS[:3])
    run_annotation(corpus, fast_config(server), tmp_path / "run")
    with pytest.raises(MeltError, match=r"temperature \(--temperature\) was 1.0, now 0.2.*--force-reuse"):
        run_annotation(corpus, fast_config(server, temperature=0.2), tmp_path / "run")
    assert len(asked(server)) == 3
    again = run_annotation(corpus, fast_config(server, temperature=0.2), tmp_path / "run", force_reuse=True)
    assert again.stats.cached == 0 and again.stats.completed == 3
    assert len(asked(server)) == 6


def test_store_is_wal_sqlite_with_request_and_reply_but_no_headers(server, tmp_path, write_corpus):
    run_annotation(write_corpus(TEXTS[:2]), fast_config(server), tmp_path / "run")
    db = sqlite3.connect(tmp_path / "run" / STORE_NAME)
    assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    rows = db.execute(
        "SELECT request, reply, status, attempts, prompt_tokens FROM requests WHERE turn >= 0"
    ).fetchall()
    assert len(rows) == 2
    request, reply, status, attempts, prompt_tokens = rows[0]
    assert json.loads(request)["messages"][1]["role"] == "user"
    assert "Authorization" not in request
    # The reply is kept as the server sent it.
    assert json.loads(reply)["choices"][0]["message"]["content"].startswith("{")
    assert (status, attempts) == ("done", 1) and prompt_tokens > 0


def test_samples_give_a_distribution_majority_and_agreement(server, tmp_path):
    table = corpus_table(["[[mixed:joy,anger,joy]] Oh, that's great.", "Plain line."])
    result = run_annotation(table, fast_config(server, samples=3, seed=7, logprobs=False), tmp_path / "run")
    mixed, plain = result.annotations.to_dict("records")
    assert mixed["emotion"] == "joy"
    assert json.loads(mixed["distribution"]) == pytest.approx({"anger": 1 / 3, "joy": 2 / 3})
    assert mixed["samples"] == 3 and mixed["agreement"] == pytest.approx(2 / 3)
    assert mixed["confidence"] == pytest.approx(2 / 3)  # no logprobs: the agreement
    assert plain["agreement"] == 1.0
    # Each sample is its own request, with its own seed, so a seeded server does not repeat one answer.
    seeds = sorted(e["seed"] for e in asked(server, text="Plain line."))
    assert seeds == [7, 8, 9]


def test_max_cost_stops_before_the_budget_and_a_rerun_continues(server, tmp_path, write_corpus):
    corpus = write_corpus([f"Budget line {i}." for i in range(30)])
    price = price_of("gpt-4o-2024-08-06")
    # Room for roughly ten requests at their worst case (a full max_tokens reply).
    budget = 10 * price.cost(200, 100)
    config = fast_config(server, max_cost=budget, max_tokens=100, concurrency=2)
    first = run_annotation(corpus, config, tmp_path / "run")
    statuses = first.annotations["status"].value_counts()
    assert first.stats.stopped_by_budget and not first.complete
    assert 0 < statuses["ok"] < 30 and statuses["ok"] + statuses["pending"] == 30
    assert first.stats.cost_usd <= budget
    assert pd.isna(first.annotations.loc[first.annotations["status"] == "pending", "emotion"]).all()

    second = run_annotation(corpus, fast_config(server, max_tokens=100), tmp_path / "run")
    assert second.complete and (second.annotations["status"] == "ok").all()
    keys = [e["key"] for e in asked(server, status=200)]
    assert len(keys) == len(set(keys)) == 30  # nothing paid for twice
    assert second.totals["cost_usd"] == pytest.approx(first.stats.cost_usd + second.stats.cost_usd)


def test_max_cost_needs_a_known_price(server, tmp_path, write_corpus):
    with pytest.raises(MeltError, match="price table"):
        run_annotation(
            write_corpus(TEXTS), fast_config(server, model="my-model", max_cost=1), tmp_path / "run"
        )
    assert server.entries() == []
    prices = {"my-model": {"input": 0.0, "output": 0.0}}
    result = run_annotation(
        write_corpus(TEXTS),
        fast_config(server, model="my-model", max_cost=1, prices=prices),
        tmp_path / "run",
    )
    assert result.complete and result.stats.cost_usd == 0


def test_dry_run_estimates_without_sending_and_counts_stored_requests(server, tmp_path, write_corpus):
    corpus = write_corpus(TEXTS)
    estimate = estimate_run(corpus, fast_config(server, samples=2), tmp_path / "run")
    assert server.entries() == []
    assert not (tmp_path / "run").exists()
    assert (estimate.utterances, estimate.requests, estimate.cached) == (10, 20, 0)
    price = price_of("gpt-4o-2024-08-06")
    assert estimate.cost_usd == pytest.approx(price.cost(estimate.prompt_tokens, estimate.completion_tokens))
    assert estimate.cost_usd_max == pytest.approx(price.cost(estimate.prompt_tokens, 20 * 800))

    run_annotation(corpus, fast_config(server, samples=2, limit=4), tmp_path / "run")
    after = estimate_run(corpus, fast_config(server, samples=2), tmp_path / "run")
    assert after.cached == 8 and after.prompt_tokens < estimate.prompt_tokens
    # A real run's replies calibrate the completion estimate.
    real = pd.read_parquet(tmp_path / "run" / "annotations.parquet")["completion_tokens"].sum() / 8
    assert after.completion_tokens == round(real * 12)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda t: t.drop(columns=["speaker"]), r"missing column\(s\) \['speaker'\]"),
        (lambda t: t.assign(text=["ok"] * 4 + [""] + ["ok"] * 5), "row 5.*empty utterance text"),
        (lambda t: t.assign(id=[*t["id"][:9], t["id"][0]]), "duplicate id"),
    ],
)
def test_bad_corpus_fails_before_any_request(server, tmp_path, change, message):
    path = tmp_path / "bad.csv"
    write_table(change(corpus_table(TEXTS)), path)
    with pytest.raises(MeltError, match=message):
        run_annotation(path, fast_config(server), tmp_path / "run")
    assert server.entries() == []


def test_limit_annotates_the_first_rows_with_their_full_dialogue_context(server, tmp_path, write_corpus):
    corpus = write_corpus(TEXTS)
    result = run_annotation(corpus, fast_config(server, prompt="dialogue", limit=2), tmp_path / "run")
    assert list(result.annotations["id"]) == ["train/dia0_utt0", "train/dia0_utt1"]
    assert (result.annotations["emotion"] == [expected_emotion(t) for t in TEXTS[:2]]).all()


def test_config_file_is_read_and_flags_override_it(tmp_path):
    path = tmp_path / "annotate.yaml"
    path.write_text(
        "model: gpt-4o-mini\nsamples: 3\nlabels: [happy, sad, neutral]\nprices:\n  x: {input: 1, output: 2}\n"
    )
    config = AnnotateConfig.load(path, samples=5, model=None)
    assert (config.model, config.samples) == ("gpt-4o-mini", 5)
    assert config.labels.labels == ("happy", "sad", "neutral")
    assert config.prices["x"].output == 2
    with pytest.raises(MeltError, match="samples"):
        AnnotateConfig.load(path, samples=0)
    path.write_text("sampels: 3\n")
    with pytest.raises(MeltError, match="sampels"):
        AnnotateConfig.load(path)


def test_config_dump_masks_credentials_in_the_base_url():
    config = AnnotateConfig(base_url="https://user:s3cret@proxy.example/v1")
    assert "s3cret" not in json.dumps(config.public())
    assert config.public()["base_url"] == "https://proxy.example/v1"


def test_budget_waits_for_requests_in_flight_instead_of_stopping_early(server, tmp_path, write_corpus):
    corpus = write_corpus([f"Concurrent budget line {i}." for i in range(24)])
    measured = run_annotation(corpus, fast_config(server, max_tokens=100), tmp_path / "measure")
    total = measured.stats.cost_usd
    worst_single = price_of("gpt-4o-2024-08-06").cost(1000, 100)
    # Enough for every request, with room for one worst case; far less than 16 worst cases held at once.
    budget = total + worst_single
    assert 16 * worst_single > budget
    run = run_annotation(
        corpus, fast_config(server, max_tokens=100, max_cost=budget, concurrency=16), tmp_path / "run"
    )
    assert run.complete and not run.stats.stopped_by_budget
    assert run.stats.cost_usd == pytest.approx(total) and run.stats.cost_usd <= budget
