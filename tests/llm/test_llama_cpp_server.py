"""melt against a real OpenAI-compatible server installed from a package: llama-cpp-python's own server
(`llama-cpp-python[server]`), started on 127.0.0.1 by the test with the bundled GGUF model.

That server takes a JSON schema only as `response_format: {"type": "json_object", "schema": ...}`, answers
OpenAI's `json_schema` type with HTTP 500 (a request validation error), and works on one request at a time.
"""

from __future__ import annotations

import asyncio
import json
import socket
import sqlite3
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

pytest.importorskip("llama_cpp")
pytest.importorskip("llama_cpp.server.app", reason="llama-cpp-python[server] is in the dev extra")

import pandas as pd

from melt.annotate import AnnotateConfig, run_annotation
from melt.annotate.store import STORE_NAME
from melt.annotate.validate import validate_reply
from melt.corpus.schema import conform
from melt.llm.base import ChatRequest
from melt.llm.model_assets import bundled_model_path
from melt.llm.openai import OpenAIBackend
from melt.prompts import PromptConfig, response_format

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]

TEXTS = ["We were on a break!", "Could this BE any more awkward?", "Oh. My. God."]


def corpus_table(texts: list[str]) -> pd.DataFrame:
    rows = [
        {"id": f"train/dia0_utt{i}", "speaker": speaker, "text": text, "season": 3, "episode": 15}
        for i, (speaker, text) in enumerate(zip(["Ross", "Chandler", "Janice"], texts, strict=True))
    ]
    return conform(pd.DataFrame(rows))


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def llama_server(tmp_path_factory):
    port = free_port()
    log = tmp_path_factory.mktemp("llama-server") / "server.log"
    command = [
        sys.executable, str(Path(__file__).with_name("llama_server.py")), "--model", str(bundled_model_path()),
        "--host", "127.0.0.1", "--port", str(port), "--n_ctx", "2048", "--model_alias", "gemma",
    ]  # fmt: skip
    with log.open("wb") as output:
        server = subprocess.Popen(command, stdout=output, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    base_url = f"http://127.0.0.1:{port}/v1"
    deadline = time.monotonic() + 300
    try:
        while True:
            if server.poll() is not None:
                pytest.fail(
                    f"llama-cpp-python's server exited with {server.returncode}: {log.read_text()[-2000:]}"
                )
            try:
                with urllib.request.urlopen(f"{base_url}/models", timeout=2) as response:
                    if response.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"llama-cpp-python's server did not come up: {log.read_text()[-2000:]}")
            time.sleep(0.2)
        yield base_url
    finally:
        server.terminate()
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
    assert server.returncode in (0, -15), log.read_text()[-2000:]  # no crash (a segfault is -11)


def test_an_annotation_run_against_llama_cpp_python_server_validates_every_reply(llama_server, tmp_path):
    config = AnnotateConfig(
        base_url=llama_server,
        model="gemma",
        schema_kind="structured",
        temperature=0.0,
        max_tokens=200,
        logprobs=False,
        timeout=300,
        concurrency=8,
    )
    result = run_annotation(corpus_table(TEXTS), config, tmp_path / "run")
    stats = result.stats
    assert (result.annotations["status"] == "ok").all(), result.annotations[["status", "error"]]
    assert set(result.annotations["emotion"]) <= set(PromptConfig().labels.labels)
    # The server was recognised: its schema form from the start (one probe, nothing rejected, nothing retried),
    # and one request at a time, so that no request waits in its queue until it times out.
    assert stats.probes == 1 and stats.retries == {} and stats.format_fallbacks == []
    assert stats.concurrency == 1 and stats.sent == len(TEXTS) + stats.repairs + 1
    run_json = json.loads((tmp_path / "run" / "run.json").read_text())
    assert run_json["response_format"] == "json_schema"
    with sqlite3.connect(tmp_path / "run" / STORE_NAME) as db:
        profiles = [json.loads(v) for (v,) in db.execute("SELECT value FROM meta WHERE name LIKE 'server:%'")]
    assert profiles == [
        {"level": "json_schema", "server": {"family": "llama-cpp-python", "slots": None,
         "schema_form": "json_object_schema", "logprobs": True, "max_tokens_field": "max_tokens"}}
    ]  # fmt: skip


def test_its_http_500_for_openais_schema_form_is_recognised_as_a_format_rejection(llama_server):
    """Without knowing the server, the first request goes in OpenAI's form: the 500 it gets names
    response_format, so the backend sends the schema the server's way instead of retrying an error."""
    prompt = PromptConfig(schema_kind="structured")
    request = ChatRequest(
        messages=({"role": "user", "content": "Reply in JSON: who said 'We were on a break!'?"},),
        temperature=0.0,
        max_tokens=300,
        response_format=response_format(prompt),
    )

    async def ask():
        backend = OpenAIBackend(llama_server, "gemma", timeout=300)
        assert backend.server_profile()["schema_form"] == "openai"
        try:
            return await backend.complete(request), backend.server_profile()
        finally:
            await backend.aclose()

    reply, profile = asyncio.run(ask())
    assert profile["schema_form"] == "json_object_schema"
    validation = validate_reply(reply.content, prompt, None)
    assert validation.answer is not None and validation.answer["emotion"] in prompt.labels.labels
