"""The README runs as written: every line of its command-line tour (the ```bash block under "A tour of the
command line", read from the README itself, so lines added later are run too) and its Python API snippet, in
the layout of a fresh clone: the project folder with its examples/, the shared data at ../shared/data, the
speech corpora under corpora/, and every output under out/.

What a test machine lacks is prepared, and each line that needs it is listed in `PREPARED`, matched by a piece
of its text:
  - corpora/: small corpora in the official layouts of IEMOCAP, TESS, RAVDESS, CREMA-D, MSP-Podcast, and MELD.Raw
    video clips for some MELT training utterances, all real espeak-ng speech (tests/corpora.py's builders);
  - a paid API: the loopback OpenAI-protocol server with its Batch API (tests/batch_server.py) through
    OPENAI_BASE_URL, as for OpenAI's client; the address of a local server (http://localhost:8000/v1) is replaced by its address;
  - ~/models/qwen2.5-7b-instruct-q4_k_m.gguf: HOME is a folder whose models/ holds the bundled GGUF model under
    that name;
  - microsoft/wavlm-base-plus: a tiny random-weight WavLM in an offline Hugging Face cache under that name;
  - a panel run's votes.parquet (when no earlier line made one) and Label Studio's export of the review;
  - `melt preference serve` runs in the background on a free port, three participants answer through its HTTP
    API, and Ctrl-C stops it (exit 130).
Every other line runs as it is, and must exit 0. To add a command to the tour, add its line to the README: it
runs here as it is; if it needs something a test machine lacks, add a `Prepared` entry to `PREPARED`, keyed by a
piece of the line's text (an entry whose line has left the README fails the test). Afterwards every JSON summary and report under out/ must say how
it was made, and nothing may have been written outside out/.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
import zlib
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from batch_server import FakeBatchServer
from corpora import (
    CremadClip,
    MspClip,
    Prosody,
    RavdessClip,
    Speech,
    TessClip,
    make_cremad,
    make_msppodcast,
    make_ravdess,
    make_tess,
)
from melt.corpus.labels import MELT_LABELS
from timing import scaled

REPO = Path(__file__).resolve().parents[1]
README = REPO / "README.md"
GGUF_NAME = "qwen2.5-7b-instruct-q4_k_m.gguf"
HUB_MODEL = "microsoft/wavlm-base-plus"
LOCAL_SERVER = "http://localhost:8000/v1"


@dataclass
class Prepared:
    """What a README line needs that a test machine lacks."""

    why: str
    env: Callable[[Tour], dict[str, str]] = lambda tour: {}
    #: run before the line, in the project folder
    before: Callable[[Tour], None] = lambda tour: None
    #: (text in the line, what the test runs instead)
    replace: Callable[[Tour], tuple[str, str]] | None = None
    #: a server: started in the background, used, then stopped with Ctrl-C
    serve: Callable[[Tour, subprocess.Popen, int], None] | None = None
    codes: set[int] = field(default_factory=lambda: {0})


def tour_lines(text: str) -> list[str]:
    """The commands of the README's tour: its first ```bash block after the heading, continuation lines
    joined, comment-only lines left out."""
    section = text.split("## A tour of the command line", 1)[1]
    block = section.split("```bash\n", 1)[1].split("```", 1)[0]
    lines, current = [], ""
    for raw in block.splitlines():
        current += raw.rstrip()
        if current.endswith("\\"):
            current = current[:-1] + " "
            continue
        if current.strip() and not current.lstrip().startswith("#"):
            lines.append(current.strip())
        current = ""
    return lines


def api_snippet(text: str) -> str:
    section = text.split("## The Python API", 1)[1]
    return section.split("```python\n", 1)[1].split("```", 1)[0]


class Tour:
    def __init__(self, root: Path, shared_data: Path, server: FakeBatchServer):
        self.root = root
        self.project = root / "melt"
        self.server = server
        self.home = root / "home"
        (root / "shared").mkdir()
        (root / "shared" / "data").symlink_to(shared_data.resolve(), target_is_directory=True)
        self.project.mkdir()
        shutil.copytree(REPO / "examples", self.project / "examples")
        self.speech = Speech(root / "speech")
        from melt.provenance import cache_dir

        self.env = {
            **{k: v for k, v in os.environ.items() if not k.startswith(("OPENAI_", "HF_", "COLUMNS"))},
            "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
            "HOME": str(self.home),
            "MELT_CACHE": str(cache_dir()),  # the bundled model, assembled once, where it already is
            "HF_HOME": str(root / "hf"),
            "HF_HUB_OFFLINE": "1",
            "TRANSFORMERS_OFFLINE": "1",
        }

    def run(self, line: str, prepared: Prepared | None) -> subprocess.CompletedProcess:
        env = dict(self.env)
        if prepared is not None:
            prepared.before(self)
            env.update(prepared.env(self))
            if prepared.replace is not None:
                old, new = prepared.replace(self)
                assert old in line, (old, line)
                line = line.replace(old, new)
        return subprocess.run(
            ["bash", "-c", line],
            cwd=self.project,
            env=env,
            capture_output=True,
            text=True,
            stdin=subprocess.DEVNULL,
            timeout=scaled(900),
        )


# --- the prepared environment --------------------------------------------------------------------------------

PROSODY = {
    "anger": Prosody(pitch=80, amplitude=160, speed=250),
    "joy": Prosody(pitch=75, amplitude=130, speed=210),
    "neutral": Prosody(pitch=50, amplitude=100, speed=170),
    "sadness": Prosody(pitch=25, amplitude=40, speed=110),
    "surprise": Prosody(pitch=95, amplitude=140, speed=200),
    "fear": Prosody(pitch=70, amplitude=70, speed=230),
    "disgust": Prosody(pitch=35, amplitude=90, speed=140),
}
VOICES = ("en-us", "en-gb+f2", "en-us+m3", "en-gb-scotland", "en-us+f4", "en-029")


def build_corpora(tour: Tour, shared_data: Path) -> None:
    """Small corpora in their official layouts under corpora/, as their publishers ship them."""
    corpora = tour.project / "corpora"
    speech = tour.speech
    rng = np.random.default_rng(0)

    from ser.corpora import graded_iemocap

    graded = graded_iemocap(tour.root / "graded", speech, per_speaker=6, annotators=6)
    shutil.move(tour.root / "graded" / "iemocap", corpora / "IEMOCAP_full_release")
    tour.panel_votes = graded.votes_path

    make_tess(
        corpora / "TESS",
        [
            TessClip(emotion, word=word, speaker=speaker, prosody=PROSODY[label])
            for speaker in ("OAF", "YAF")
            for emotion, label in (("angry", "anger"), ("sad", "sadness"), ("ps", "surprise"))
            for word in ("back", "date")
        ],
        speech,
    )
    make_ravdess(
        corpora / "Audio_Speech_Actors_01-24",
        [
            RavdessClip(
                emotion, actor=actor, statement=statement, prosody=replace_voice(PROSODY[label], actor)
            )
            for actor in range(1, 7)
            for emotion, label in (("angry", "anger"), ("sad", "sadness"), ("neutral", "neutral"))
            for statement in (1, 2)
        ],
        speech,
    )
    responses = {"ANG": "A", "SAD": "S", "NEU": "N"}
    make_cremad(
        corpora / "CREMA-D",
        [
            CremadClip(
                emotion=code, actor=actor, sentence=sentence, level="XX",
                responses=tuple((f"r{actor}{k}", responses[code] if k else "N", 1) for k in range(3)),
                prosody=replace_voice(PROSODY[label], actor),
            )
            for actor in (1001, 1002, 1003, 1004)
            for code, label in (("ANG", "anger"), ("SAD", "sadness"), ("NEU", "neutral"))
            for sentence in ("IEO", "TIE")
        ],
        speech,
        demographics={1001: "Male", 1002: "Female", 1003: "Male", 1004: "Female"},
    )  # fmt: skip
    make_msppodcast(
        corpora / "MSP-PODCAST-Publish-1.12",
        [
            MspClip(
                emotion=code, speaker=str(100 + k % 3), split=("Train", "Development", "Test1")[k % 3],
                annotations=(("w1", name), ("w2", name), ("w3", "Neutral")), prosody=PROSODY[label],
            )
            for k, (code, name, label) in enumerate(
                [("A", "Angry", "anger"), ("S", "Sad", "sadness"), ("H", "Happy", "joy"), ("N", "Neutral", "neutral")]
                * 2
            )
        ],
        speech,
    )  # fmt: skip
    make_meld_raw(corpora / "MELD.Raw", shared_data, speech, rng)


def replace_voice(prosody: Prosody, speaker: int) -> Prosody:
    return Prosody(prosody.pitch, prosody.amplitude, prosody.speed, VOICES[speaker % len(VOICES)])


def make_meld_raw(folder: Path, shared_data: Path, speech: Speech, rng: np.random.Generator) -> None:
    """MELD.Raw's layout (train/train_splits/dia{D}_utt{U}.mp4, a video track and AAC audio) for about 85 MELT
    training utterances: the first dialogue (the first lines annotated in the tour), 10 per label where MELD's
    and MELT's labels agree, and 12 where they differ; spoken with the MELT label's prosody."""
    published = pd.read_csv(shared_data / "melt" / "meld_train.csv")
    chosen = [published[published["Dialogue_ID"] == 0]]
    agree = published[published["Emotion"] == published["llm_label"]]
    for label in MELT_LABELS:  # enough of every class for `melt ser train`
        rows = agree[agree["llm_label"] == label]
        chosen.append(rows.iloc[rng.permutation(len(rows))[:10]])
    differ = published[published["Emotion"] != published["llm_label"]]
    chosen.append(differ.iloc[rng.permutation(len(differ))[:12]])
    rows = pd.concat(chosen).drop_duplicates("filename")

    def clip(row) -> None:
        speaker = zlib.crc32(str(row.Speaker).encode())
        wav = speech.source(str(row.Utterance)[:120], replace_voice(PROSODY[row.llm_label], speaker))
        target = folder / "train" / "train_splits" / f"dia{row.Dialogue_ID}_utt{row.Utterance_ID}.mp4"
        target.parent.mkdir(parents=True, exist_ok=True)
        command = [
            "ffmpeg",
            "-nostdin",
            "-v",
            "error",
            "-y",
            "-f",
            "lavfi",
            "-i",
            "color=c=black:s=64x64:r=10",
        ]
        command += [
            "-i",
            str(wav),
            "-shortest",
            "-c:v",
            "libx264",
            "-c:a",
            "aac",
            "-ar",
            "44100",
            str(target),
        ]
        subprocess.run(command, check=True, capture_output=True, timeout=scaled(120))

    with ThreadPoolExecutor(max_workers=2) as pool:
        list(pool.map(clip, rows.itertuples()))


def make_hub_model(root: Path) -> None:
    """A tiny random-weight WavLM in a Hugging Face cache, under the hub name the README uses."""
    from ser.conftest import _tiny

    saved = _tiny("wavlm", root / "tiny")
    commit = "0" * 40
    repo = root / "hf" / "hub" / f"models--{HUB_MODEL.replace('/', '--')}"
    snapshot = repo / "snapshots" / commit
    snapshot.mkdir(parents=True)
    for file in saved.iterdir():
        shutil.copy(file, snapshot / file.name)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)


def make_gguf_home(home: Path) -> None:
    from melt.llm.model_assets import bundled_model_path

    (home / "models").mkdir(parents=True)
    (home / "models" / GGUF_NAME).symlink_to(bundled_model_path())


def panel_votes(tour: Tour) -> None:
    """A panel run's votes.parquet (RUN_DIR/votes.parquet), unless a line before made the run."""
    target = tour.project / "out" / "panel" / "votes.parquet"
    if not target.exists():
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(tour.panel_votes, target)


def label_studio_export(tour: Tour) -> None:
    """project-export.json as Label Studio exports a project: the exported tasks, each reviewed by two people."""
    tasks = json.loads((tour.project / "out" / "review" / "tasks.json").read_text(encoding="utf-8"))
    assert tasks, "the review export has no task"
    exported = []
    for number, task in enumerate(tasks, start=1):
        annotations = [
            {
                "id": 10 * number + k, "completed_by": k + 1, "was_cancelled": False, "ground_truth": False,
                "created_at": "2025-03-01T10:00:00Z", "updated_at": "2025-03-01T10:00:00Z", "lead_time": 7.5,
                "task": number, "project": 1,
                "result": [{"value": {"choices": [label]}, "id": f"r{number}{k}", "from_name": "emotion",
                            "to_name": "audio", "type": "choices", "origin": "manual"}],
            }
            for k, label in enumerate(("neutral", "joy" if number % 2 else "neutral"))
        ]  # fmt: skip
        exported.append({"id": number, "annotations": annotations, "drafts": [], "data": task["data"]})
    (tour.project / "project-export.json").write_text(json.dumps(exported, indent=1), encoding="utf-8")


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def participants(tour: Tour, process: subprocess.Popen, port: int) -> None:
    """Three participants take the blind test through its HTTP API, as their browsers would."""
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + scaled(120)
    while True:
        assert process.poll() is None, "the preference server exited"
        try:
            with urllib.request.urlopen(base + "/", timeout=5) as reply:
                if reply.status == 200:
                    break
        except OSError:
            time.sleep(0.2)
        assert time.monotonic() < deadline, "the preference server did not answer"
    for code in ("p1", "p2", "p3"):
        opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor())

        def call(method: str, path: str, body: dict | None = None, opener=opener):
            data = json.dumps(body).encode() if body is not None else None
            request = urllib.request.Request(base + path, data=data, method=method)
            request.add_header("Content-Type", "application/json")
            with opener.open(request, timeout=30) as reply:
                return json.loads(reply.read() or b"null")

        call("POST", "/api/session", {"code": code})
        for answer in range(4):
            item = call("GET", f"/api/participants/{code}/next")
            if item["done"]:
                break
            choice = ("first", "second", "first", "neither")[answer]
            call(
                "POST", f"/api/participants/{code}/answers", {"position": item["position"], "choice": choice}
            )


PREPARED: dict[str, Prepared] = {
    "OPENAI_API_KEY=...": Prepared(
        "a paid API: the loopback OpenAI-protocol server through OPENAI_BASE_URL",
        env=lambda tour: {"OPENAI_BASE_URL": tour.server.base_url},
    ),
    LOCAL_SERVER: Prepared(
        "a local OpenAI-compatible server (vLLM, Ollama, llama.cpp): the loopback server in its place",
        replace=lambda tour: (LOCAL_SERVER, tour.server.base_url),
    ),
    "--out out/gpt4o-b/ --limit 100 --batch": Prepared(
        "a paid API with the Batch API: the loopback batch server; the batch is submitted, not yet done",
        env=lambda tour: {"OPENAI_BASE_URL": tour.server.base_url},
        codes={3},
    ),
    "--votes out/panel/": Prepared("a panel run's votes.parquet", before=panel_votes),
    "project-export.json": Prepared(
        "Label Studio's export of the reviewed tasks", before=label_studio_export
    ),
    "melt preference serve": Prepared(
        "participants of the blind test; the server stops on Ctrl-C", serve=participants, codes={130}
    ),
}


def prepared_for(line: str) -> Prepared | None:
    """The entry of the longest key in `line`: the most specific (a batch line's own entry, not the one of
    every `OPENAI_API_KEY=...` line)."""
    found = sorted((key for key in PREPARED if key in line), key=len)
    return PREPARED[found[-1]] if found else None


def serve(tour: Tour, line: str, prepared: Prepared) -> int:
    port = free_port()
    command = re.split(r"\s+#", line)[0]  # without its comment, so that the port can follow
    log = open(tour.root / "serve.log", "w")  # noqa: SIM115
    process = subprocess.Popen(
        ["bash", "-c", f"exec {command} --port {port}"],
        cwd=tour.project,
        env=tour.env,
        stdout=log,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
    )
    try:
        assert prepared.serve is not None
        prepared.serve(tour, process, port)
    finally:
        process.send_signal(signal.SIGINT)
        try:
            code = process.wait(timeout=scaled(60))
        except subprocess.TimeoutExpired:
            process.kill()
            code = process.wait()
        log.close()
    return code


def files_of(folder: Path) -> set[Path]:
    return {p.relative_to(folder) for p in folder.rglob("*") if p.is_file() or p.is_symlink()}


@pytest.mark.timeout(3600)
def test_the_readme_tour_and_api_run_as_written(shared_data, tmp_path):
    pytest.importorskip("transformers", reason="the tour's SER lines need the `ser` extra (make install)")
    pytest.importorskip("llama_cpp", reason="the tour's offline annotation needs the `local` extra")
    text = README.read_text(encoding="utf-8")
    lines = tour_lines(text)
    assert len(lines) >= 30 and all(line.split()[0] == "melt" or "melt " in line for line in lines)
    for key in PREPARED:  # an entry whose line is gone from the README is stale
        assert any(key in line for line in lines), f"no README line needs the prepared {key!r}"

    with FakeBatchServer() as server:
        tour = Tour(tmp_path, shared_data, server)
        build_corpora(tour, shared_data)
        make_hub_model(tmp_path)
        make_gguf_home(tour.home)
        prepared_inputs = files_of(tour.project)

        for line in lines:
            prepared = prepared_for(line)
            started = time.monotonic()
            if prepared is not None and prepared.serve is not None:
                prepared.before(tour)
                code, output = serve(tour, line, prepared), (tmp_path / "serve.log").read_text()
            else:
                done = tour.run(line, prepared)
                code, output = done.returncode, done.stdout + done.stderr
            expected = prepared.codes if prepared is not None else {0}
            assert code in expected, f"`{line}` exited {code}:\n{output[-3000:]}"
            assert "Traceback" not in output, f"`{line}`:\n{output[-3000:]}"
            print(f"{time.monotonic() - started:6.1f} s  {line}")

        # The Python API snippet, as written, in the same folder (its annotation reuses the tour's replies).
        snippet = api_snippet(text)
        done = subprocess.run(
            [sys.executable, "-c", snippet], cwd=tour.project, env=tour.env, capture_output=True, text=True,
            stdin=subprocess.DEVNULL, timeout=scaled(900),
        )  # fmt: skip
        assert done.returncode == 0, done.stderr[-3000:]
        assert "42" in done.stdout and "0.4643" in done.stdout and "emotion" in done.stdout

    written = files_of(tour.project) - prepared_inputs
    outside = sorted(str(p) for p in written if p.parts[0] != "out" and p.name != "project-export.json")
    assert outside == [], f"the tour wrote outside out/: {outside[:10]}"
    check_provenance(tour.project / "out")


def check_provenance(out: Path) -> None:
    """Every summary, run record and report under out/ says how it was made."""
    names = ("summary.json", "run.json", "describe.json", "export.json", "model.json", "metrics.json",
             "provenance.json", "decisions.json", "pairs.json")  # fmt: skip
    found = [p for name in names for p in out.rglob(name) if "runs" not in p.relative_to(out).parts]
    assert len(found) >= 15, found
    for path in found:
        data = json.loads(path.read_text(encoding="utf-8"))
        made = (
            data if path.name == "provenance.json" else data.get("provenance")
        )  # an experiment's: the block
        assert made, f"{path} says nothing of how it was made"
        assert made["melt_version"] and made["created"] and made["command"].startswith("melt"), path
        for role, entry in made["inputs"].items():
            assert "sha256" in entry or entry.get("kind") == "folder", (path, role)
    reports = list(out.rglob("report.html"))
    assert len(reports) >= 8, reports
    for report in reports:
        page = report.read_text(encoding="utf-8")
        assert "<h2>How this was made</h2>" in page, report
        assert re.search(r"<td>command</td><td[^>]*>melt[^<]*</td>", page), report
