"""`melt demo`, the job behind `make demo`: the example corpus annotated by the real bundled model, offline."""

import json

import pandas as pd

from melt.corpus.labels import MELT_LABELS


def test_demo_annotates_compares_and_reports(melt_cli, tmp_path):
    # As `make demo` runs it: the default, relative output folder.
    # A key in the environment must not send the demo to a paid API.
    result = melt_cli("demo", env={"OPENAI_API_KEY": "sk-demo-must-not-use-this"}, cwd=tmp_path)
    assert result.code == 0, result.stderr
    out = tmp_path / "out" / "demo"
    assert "not research-grade" in result.stdout
    report = out / "report.html"
    assert f"report: {report.resolve()}" in result.stdout.replace("\n", "")

    annotations = pd.read_parquet(out / "run" / "annotations.parquet")
    assert len(annotations) == 12
    assert set(annotations["status"]) <= {"ok", "invalid"}
    ok = annotations[annotations["status"] == "ok"]
    assert len(ok) >= 6 and set(ok["emotion"]) <= set(MELT_LABELS)

    summaries = json.loads((out / "summary.json").read_text())
    assert summaries["llm"]["n"] == len(ok)  # invalid answers are left out, never guessed
    assert summaries["second_rater"]["n"] == 12 and summaries["second_rater"]["changed"] == 4
    page = report.read_text()
    assert "human (reference) vs LLM (candidate)" in page and "human (reference) vs second rater" in page
    assert page.count("data:image/png;base64,") == 4
    run = json.loads((out / "run" / "run.json").read_text())
    assert run["backend"] == "local" and run["this_invocation"]["cost_usd"] == 0

    # The report says how it was made and explains what it shows.
    made = summaries["provenance"]
    assert made["command"] == "melt demo" and made["model"] == run["model"]
    assert made["who_answers"]["model_sha256"] == run["provenance"]["who_answers"]["model_sha256"]
    assert "How this was made" in page and made["inputs"]["example corpus"]["sha256"] in page
    assert "second person" in page and "second_rater" in page  # the second rater explained
    assert "The emotion label must be selected" in page  # the prompt, as sent
    for term in ("character_mismatch", "re_asked", "invalid_samples:N", "status invalid"):
        assert term in page  # the legend
    # The per-utterance table stands alone: text, both human labels and the LLM's answer on one row.
    assert {"text", "speaker", "label", "emotion", "raw_reply", "model", "prompt"} <= set(annotations.columns)
    assert annotations["raw_reply"][annotations["status"] == "ok"].notna().all()
    first = annotations.iloc[0]
    assert first["text"] in page and first["speaker"] == "Monica" and first["label"] == "anger"
