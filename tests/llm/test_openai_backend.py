"""OpenAIBackend against a real HTTP server on loopback: replies, and each failure classified for the engine."""

from __future__ import annotations

import asyncio

import pytest
from yarl import URL

from melt.annotate import AnnotateConfig
from melt.llm import make_backend
from melt.llm.base import BackendError, ChatRequest, ResponseFormatRejected, RetryableError
from melt.llm.openai import OPENAI_BASE_URL, OpenAIBackend, _loads, _proxy_for
from melt.llm.pricing import Price, price_of
from openai_server import FakeOpenAIServer, expected_emotion

KEY = "sk-test-Zq81LmVb3"


def ask(text: str, **request) -> ChatRequest:
    messages = ({"role": "system", "content": "Answer in JSON."}, {"role": "user", "content": text})
    return ChatRequest(messages=messages, **request)


def complete(server: FakeOpenAIServer, request: ChatRequest, *, key: str | None = KEY, timeout: float = 2.0):
    async def go():
        backend = OpenAIBackend(server.base_url, "gpt-4o-mini", api_key=key, timeout=timeout)
        try:
            return await backend.complete(request)
        finally:
            await backend.aclose()

    return asyncio.run(go())


@pytest.fixture
def server():
    with FakeOpenAIServer(api_key=KEY, slow_seconds=1.0) as running:
        yield running


def test_reply_carries_content_usage_and_logprobs(server):
    reply = complete(server, ask('Ross at s1e2 said: "We were on a break!"', logprobs=True, top_logprobs=5))
    assert f'"emotion": "{expected_emotion("We were on a break!")}"' in reply.content
    assert reply.prompt_tokens > 0 and reply.completion_tokens > 0
    assert reply.finish_reason == "stop"
    assert any(item.get("top_logprobs") for item in reply.logprobs)
    assert server.entries()[0]["logprobs"] is True


def test_wrong_key_is_a_backend_error_that_does_not_quote_any_key(server):
    with pytest.raises(BackendError) as caught:
        complete(server, ask('Ross at s1e2 said: "hi"'), key="sk-wrong-key-123456")
    message = str(caught.value)
    assert "401" in message and "OPENAI_API_KEY" in message
    assert "sk-wrong-key-123456" not in message
    assert "sk-wr" not in message  # the server's masked echo of the key is scrubbed too


@pytest.mark.parametrize(
    ("marker", "reason_start", "rate_limited", "retry_after"),
    [
        ("[[429]]", "HTTP 429", True, 1.0),
        ("[[500]]", "HTTP 500", False, None),
        ("[[slow]]", "timeout", False, None),
        ("[[drop]]", "connection", False, None),
        ("[[badbody]]", "malformed reply", False, None),
    ],
)
def test_transient_failures_are_retryable(server, marker, reason_start, rate_limited, retry_after):
    with pytest.raises(RetryableError) as caught:
        complete(server, ask(f'Ross at s1e2 said: "hello {marker}"'), timeout=0.3)
    assert caught.value.reason.startswith(reason_start)
    assert caught.value.rate_limited is rate_limited
    assert caught.value.retry_after == retry_after
    # The fault hits only the first request: the same request then succeeds.
    reply = complete(server, ask(f'Ross at s1e2 said: "hello {marker}"'), timeout=0.3)
    assert f'"emotion": "{expected_emotion(f"hello {marker}")}"' in reply.content


def test_a_schema_the_server_rejects_in_openais_form_is_sent_in_llama_cpps():
    schema = {
        "type": "json_schema",
        "json_schema": {"name": "a", "schema": {"type": "object"}, "strict": True},
    }
    with FakeOpenAIServer(reject_formats=("json_schema",), reject_status=500) as server:
        reply = complete(server, ask('Ross at s1e2 said: "hi"', response_format=schema))
        sent = server.entries()
    assert "Ross" in reply.content
    assert [(e["status"], e["response_format"], e["format_schema"]) for e in sent] == [
        (500, "json_schema", False),
        (200, "json_object", True),
    ]


def test_rejected_response_format_is_reported_for_fallback():
    schema = {
        "type": "json_schema",
        "json_schema": {"name": "a", "schema": {"type": "object"}, "strict": True},
    }
    with FakeOpenAIServer(reject_formats=("json_schema", "json_object")) as server:
        with pytest.raises(ResponseFormatRejected):
            complete(server, ask('Ross at s1e2 said: "hi"', response_format=schema))
        reply = complete(server, ask('Ross at s1e2 said: "hi"', response_format=None))
    assert "Ross" in reply.content


def test_logprobs_are_dropped_when_the_server_refuses_them():
    with FakeOpenAIServer(reject_logprobs=True) as server:
        reply = complete(server, ask('Ross at s1e2 said: "hi"', logprobs=True, top_logprobs=5))
        sent = server.entries()
    assert "Ross" in reply.content and reply.logprobs is None
    assert [e["status"] for e in sent] == [400, 200]
    assert sent[1]["logprobs"] is False


def test_make_backend_picks_the_server_or_openai(monkeypatch):
    monkeypatch.setenv("MELT_TEST_KEY", KEY)
    backend = make_backend(AnnotateConfig(api_key_env="MELT_TEST_KEY"))
    assert isinstance(backend, OpenAIBackend) and backend.base_url == OPENAI_BASE_URL
    asyncio.run(backend.aclose())
    monkeypatch.delenv("MELT_TEST_KEY")
    backend = make_backend(AnnotateConfig(base_url="http://127.0.0.1:9/v1/", api_key_env="MELT_TEST_KEY"))
    assert isinstance(backend, OpenAIBackend) and backend.base_url == "http://127.0.0.1:9/v1"
    asyncio.run(backend.aclose())


def test_prices_of_the_paper_model_and_user_additions():
    assert price_of("gpt-4o-2024-08-06").cost(1_000_000, 1_000_000) == pytest.approx(12.50)
    assert price_of("gpt-4o-mini") is not None
    assert price_of("my-vllm-model") is None
    assert price_of("my-vllm-model", {"my-vllm-model": Price(input=0, output=0)}).cost(10, 10) == 0


def test_replies_with_non_standard_json_numbers_are_still_read():
    # orjson refuses NaN and -Infinity, which some servers write for the logprob of an impossible token.
    body = b'{"choices": [{"message": {"content": "hi"}, "logprobs": {"content": [{"token": "hi", "logprob": -Infinity}]}}]}'
    assert _loads(body, body.decode())["choices"][0]["logprobs"]["content"][0]["logprob"] == float("-inf")
    with pytest.raises(ValueError):
        _loads(b'{"choices": [', '{"choices": [')


def test_proxy_comes_from_the_environment_with_its_credentials_as_a_header(monkeypatch):
    for name in ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HTTPS_PROXY", "http://me:s%40cret@proxy.example:3128")
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    proxy, headers = _proxy_for(URL("https://api.openai.com/v1/chat/completions"))
    assert str(proxy) == "http://proxy.example:3128"
    assert headers == {"Proxy-Authorization": "Basic bWU6c0BjcmV0"}  # me:s@cret
    assert _proxy_for(URL("http://127.0.0.1:8000/v1/chat/completions")) == (None, None)
