"""Benchmark: the review export/import and the preference server, each against a baseline in the same run.

  - export: `export_review` (join, doubt reasons, ranking, sha256 of every audio file, tasks.json) on a run of
    N utterances, against the baseline of reading the same tables with pandas and hashing the same files;
  - import: `import_review` of a Label Studio export with 3 reviews per task, against `json.loads` of the file
    plus hashing the audio (the import checks every hash);
  - server: answers per second POSTed to `melt preference serve` (each one committed to SQLite before the
    reply), against GETs of a static page from the same server; sequential, one connection per request.
Each part runs `--repeats` times; the best run counts. Prints the 1-minute load average.

    .venv/bin/python bench/review.py [--utterances 5000] [--answers 400] [--repeats 3]
"""

from __future__ import annotations

import argparse
import hashlib
import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import wave
from pathlib import Path

import numpy as np
import pandas as pd

LABELS = ["anger", "disgust", "fear", "joy", "neutral", "sadness", "surprise"]


def write_wav(path: Path, seconds: float, frequency: float) -> None:
    rate = 16000
    t = np.arange(int(rate * seconds)) / rate
    samples = (0.3 * np.sin(2 * np.pi * frequency * t) * 32767).astype("<i2")
    with wave.open(str(path), "wb") as handle:
        handle.setnchannels(1)
        handle.setsampwidth(2)
        handle.setframerate(rate)
        handle.writeframes(samples.tobytes())


def make_run(folder: Path, n: int) -> Path:
    rng = np.random.default_rng(0)
    (folder / "wav").mkdir(parents=True)
    for i in range(n):
        write_wav(folder / "wav" / f"u{i}.wav", 0.25, 150 + i % 300)
    human = rng.choice(LABELS, n)
    llm = np.where(rng.random(n) < 0.45, rng.choice(LABELS, n), human)
    corpus = pd.DataFrame(
        {
            "id": [f"train/dia{i // 10}_utt{i % 10}" for i in range(n)],
            "speaker": rng.choice(["ross", "rachel", "monica"], n),
            "text": [f"utterance number {i}" for i in range(n)],
            "audio": [f"wav/u{i}.wav" for i in range(n)],
            "label": human,
        }
    )
    corpus.to_csv(folder / "corpus.csv", index=False)
    run = folder / "run"
    run.mkdir()
    status = np.where(rng.random(n) < 0.02, "invalid", "ok")
    pd.DataFrame(
        {
            "id": corpus["id"],
            "status": status,
            "emotion": np.where(status == "ok", llm, None),
            "confidence": rng.random(n),
            "agreement": rng.choice([0.4, 0.6, 0.8, 1.0], n),
            "samples": 5,
            "error": None,
        }
    ).to_parquet(run / "annotations.parquet")
    (run / "run.json").write_text(json.dumps({"corpus": str(folder / "corpus.csv"), "model": "bench"}))
    return run


def baseline_read(folder: Path, run: Path) -> None:
    corpus = pd.read_csv(folder / "corpus.csv")
    annotations = pd.read_parquet(run / "annotations.parquet")
    annotations.merge(corpus, on="id")
    for path in corpus["audio"]:
        with open(folder / path, "rb") as handle:
            hashlib.file_digest(handle, "sha256")


def best(function, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        function()
        times.append(time.perf_counter() - start)
    return min(times)


def label_studio_export(tasks: list[dict]) -> list[dict]:
    rng = np.random.default_rng(1)
    exported = []
    for number, task in enumerate(tasks, start=1):
        annotations = []
        for reviewer in range(3):
            label = str(rng.choice(LABELS))
            annotations.append(
                {
                    "id": number * 10 + reviewer,
                    "completed_by": reviewer + 1,
                    "result": [
                        {
                            "from_name": "emotion",
                            "to_name": "audio",
                            "type": "choices",
                            "value": {"choices": [label]},
                        }
                    ],
                    "was_cancelled": False,
                    "lead_time": float(rng.random() * 20),
                    "created_at": "2025-03-01T10:00:00Z",
                    "updated_at": "2025-03-01T10:00:00Z",
                }
            )
        exported.append({"id": number, "annotations": annotations, "data": task["data"], "predictions": []})
    return exported


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def request(port: int, method: str, path: str, body: dict | None = None, cookie: str | None = None):
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    headers = {"Cookie": cookie} if cookie else {}
    data = None
    if body is not None:
        data = json.dumps(body)
        headers["Content-Type"] = "application/json"
    connection.request(method, path, body=data, headers=headers)
    response = connection.getresponse()
    payload = response.read()
    cookie_out = response.getheader("set-cookie")
    connection.close()
    return response.status, payload, cookie_out.split(";", 1)[0] if cookie_out else cookie


def bench_server(folder: Path, answers: int, repeats: int) -> tuple[float, float]:
    from melt.review.pairs import PairsSettings, write_pairs

    items = 100
    table = pd.DataFrame(
        {
            "id": [f"u{i}" for i in range(items)],
            "audio": [str(folder / "wav" / f"u{i}.wav") for i in range(items)],
            "label": [LABELS[i % 7] for i in range(items)],
            "llm_label": [LABELS[(i + 1) % 7] for i in range(items)],
        }
    )
    table.to_csv(folder / "pairs_table.csv", index=False)
    write_pairs(folder / "pairs_table.csv", folder / "pairs.parquet", PairsSettings(a="llm_label", b="label"))
    answer_rates, page_rates = [], []
    for repeat in range(repeats):
        port = free_port()
        db = folder / f"results{repeat}.sqlite"
        command = [sys.executable, "-m", "melt", "preference", "serve", str(folder / "pairs.parquet")]
        server = subprocess.Popen(
            [*command, "--db", str(db), "--port", str(port)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            deadline = time.monotonic() + 120
            while True:
                try:
                    if request(port, "GET", "/")[0] == 200:
                        break
                except OSError:
                    if time.monotonic() > deadline:
                        raise
                    time.sleep(0.2)
            start = time.perf_counter()
            for _ in range(answers):
                request(port, "GET", "/")
            page_rates.append(answers / (time.perf_counter() - start))
            participants = [f"p{i}" for i in range(answers // items + 1)]
            cookies = {p: request(port, "POST", "/api/session", {"code": p})[2] for p in participants}
            start = time.perf_counter()
            done = 0
            for participant in participants:
                for position in range(items):
                    if done == answers:
                        break
                    status, _, _ = request(
                        port,
                        "POST",
                        f"/api/participants/{participant}/answers",
                        {"position": position, "choice": "first"},
                        cookies[participant],
                    )
                    assert status == 201, status
                    done += 1
            answer_rates.append(answers / (time.perf_counter() - start))
        finally:
            server.send_signal(signal.SIGTERM)
            server.wait(timeout=60)
    return max(answer_rates), max(page_rates)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--utterances", type=int, default=5000)
    parser.add_argument("--answers", type=int, default=400)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    from melt.review.decisions import import_review
    from melt.review.export import ExportSettings, export_review

    with tempfile.TemporaryDirectory(prefix="melt-bench-review-") as tmp:
        folder = Path(tmp)
        run = make_run(folder, args.utterances)
        settings = ExportSettings(select="all")
        base = best(lambda: baseline_read(folder, run), args.repeats)
        exported = best(lambda: export_review(run, folder / "export", settings), args.repeats)
        print(
            f"export of {args.utterances} utterances: {exported:.2f} s ({exported / args.utterances * 1e6:.0f} µs "
            f"each); baseline read + hash {base:.2f} s; ratio {exported / base:.2f}"
        )

        tasks = json.loads((folder / "export" / "tasks.json").read_text())
        export_file = folder / "ls-export.json"
        export_file.write_text(json.dumps(label_studio_export(tasks)))

        def plain() -> None:
            payload = json.loads(export_file.read_text())
            for task in payload:
                with open(task["data"]["audio_path"], "rb") as handle:
                    hashlib.file_digest(handle, "sha256")

        base = best(plain, args.repeats)
        imported = best(lambda: import_review(export_file), args.repeats)
        print(
            f"import of {len(tasks)} tasks x 3 reviews: {imported:.2f} s; baseline json.loads + hash {base:.2f} s; "
            f"ratio {imported / base:.2f}"
        )

        answer_rate, page_rate = bench_server(folder, args.answers, args.repeats)
        print(
            f"server: {answer_rate:.0f} answers/s committed (sequential, new connection each); static page "
            f"{page_rate:.0f} requests/s; ratio {answer_rate / page_rate:.2f}"
        )
    print(f"load average (1 min): {os.getloadavg()[0]:.2f} on {os.cpu_count()} CPUs")


if __name__ == "__main__":
    main()
