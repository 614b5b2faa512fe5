"""Review of issue 8 (adversarial): replies and servers the engine does not survive yet.

Each test reproduces one defect found by the review against the real loopback server (tests/openai_server.py,
with replies scripted per test) or a real TCP listener, and once failed on it.
"""

from __future__ import annotations

import base64
import json
import signal
import socket
import subprocess
import threading
import time
from pathlib import Path

import pytest
from annotate_helpers import corpus_table, fast_config
from scripted_server import (
    ScriptedServer,
    answer,
    completion,
    environment,
    melt_command,
    send,
    utterance_text,
)

from melt.annotate import AnnotateConfig, run_annotation
from melt.corpus.schema import write_table
from melt.errors import MeltError
from timing import scaled

pytestmark = pytest.mark.timeout(300)

GOOD = "A perfectly ordinary line."


def _logprobs_around_the_emotion(alternatives) -> dict:
    """choices[0].logprobs whose token at the emotion value carries `alternatives` as its top_logprobs."""
    return {
        "content": [
            {"token": '{"character": "Ross", "context": "a", "elements": {"emotion": "', "logprob": -0.1,
             "top_logprobs": []},
            {"token": "joy", "logprob": -0.1, "top_logprobs": alternatives},
        ]
    }  # fmt: skip


# -- 1. logprobs of the wrong shape crash the run, and the rerun too (the reply is stored first) ---------------------

BAD_LOGPROBS = {
    "items-are-strings": {"content": ["joy", 3]},
    "top-logprobs-a-string": _logprobs_around_the_emotion("joy"),
    "alternatives-are-strings": _logprobs_around_the_emotion(["joy"]),
    "alternative-without-logprob": _logprobs_around_the_emotion([{"token": "joy"}]),
    "logprob-null": _logprobs_around_the_emotion([{"token": "joy", "logprob": None}]),
    "logprob-not-a-number": _logprobs_around_the_emotion([{"token": "joy", "logprob": "high"}]),
    "logprob-overflows-exp": _logprobs_around_the_emotion([{"token": "joy", "logprob": 1000}]),
}


@pytest.mark.parametrize("shape", sorted(BAD_LOGPROBS))
def test_logprobs_of_the_wrong_shape_neither_crash_the_run_nor_poison_the_store(tmp_path, shape):
    bad = f"[[{shape}]] Logprobs from a confused server."

    def script(server, body, handler):
        if utterance_text(body) == bad:
            return send(handler, completion(json.dumps(answer(body)), logprobs=BAD_LOGPROBS[shape]))
        return False

    table = corpus_table([bad, GOOD])
    with ScriptedServer(script=script) as server:
        for attempt in ("first run", "rerun from the store"):
            try:
                result = run_annotation(table, fast_config(server), tmp_path / "run")
            except Exception as exc:
                pytest.fail(
                    f"{attempt}: the run crashed on logprobs shaped {shape!r}: {type(exc).__name__}: {exc}"
                )
            statuses = result.annotations["status"].tolist()
            assert statuses[1] == "ok", (attempt, statuses)
            assert statuses[0] in ("ok", "failed", "invalid"), (attempt, statuses)


# -- 2. a lone UTF-16 surrogate in a reply: the tables cannot be written, ever again --------------------------------


@pytest.mark.parametrize("where", ["in-the-answer", "in-an-invalid-reply"])
def test_a_lone_surrogate_in_a_reply_neither_crashes_the_run_nor_poisons_the_store(tmp_path, where):
    bad = f"[[{where}]] A reply with half an emoji."

    def script(server, body, handler):
        if utterance_text(body) != bad:
            return False
        if where == "in-the-answer":
            reply = answer(body)
            reply["character"] = "Ross \ud83d"  # json.dumps writes it as the escape \ud83d: valid JSON text
            return send(handler, completion(json.dumps(reply)))
        return send(handler, completion("I feel \ud83d today"))  # no JSON: re-asked with this reply quoted

    table = corpus_table([bad, GOOD])
    with ScriptedServer(script=script) as server:
        for attempt in ("first run", "rerun from the store"):
            try:
                result = run_annotation(table, fast_config(server), tmp_path / "run")
            except Exception as exc:
                pytest.fail(f"{attempt}: the run crashed on a lone surrogate: {type(exc).__name__}: {exc}")
            assert result.annotations["status"].tolist()[1] == "ok"
            assert (tmp_path / "run" / "annotations.parquet").exists()


# -- 3. a deeply nested body: RecursionError escapes the backend ----------------------------------------------------


def test_a_deeply_nested_reply_fails_its_row_not_the_run(tmp_path):
    bad = "[[nested]] A reply nested beyond any parser's depth."

    def script(server, body, handler):
        if utterance_text(body) != bad:
            return False
        handler.send_raw(200, b'{"choices": ' + b"[" * 100_000 + b"]" * 100_000 + b"}")
        return True

    with ScriptedServer(script=script) as server:
        try:
            result = run_annotation(corpus_table([bad, GOOD]), fast_config(server), tmp_path / "run")
        except RecursionError as exc:
            pytest.fail(f"the run crashed: RecursionError: {exc}")
    assert result.annotations["status"].tolist() == ["failed", "ok"]


# -- 4. a reply of 100 kB of braces: the JSON scan is quadratic, blocks the event loop, and signals go unheard ------


def test_a_reply_of_braces_neither_hangs_the_run_nor_deafens_it_to_ctrl_c(tmp_path):
    bad = "[[braces]] A degenerate reply."

    def script(server, body, handler):
        if utterance_text(body) == bad:
            return send(handler, completion("{" * 100_000))
        return False

    corpus = write_table(corpus_table([bad, GOOD]), tmp_path / "corpus.csv")
    with ScriptedServer(script=script) as server:
        command = melt_command("annotate", corpus, "--out", tmp_path / "run", "--base-url", server.base_url,
                               "--model", "m", "--quiet", "-j", "1", "--timeout", "10")  # fmt: skip
        process = subprocess.Popen(
            command, env=environment(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        try:
            try:
                process.communicate(timeout=scaled(20))
                return_code = process.returncode
            except subprocess.TimeoutExpired:
                process.send_signal(signal.SIGINT)
                try:
                    process.communicate(timeout=scaled(10))
                    heard = f"it stopped on SIGINT (exit {process.returncode})"
                except subprocess.TimeoutExpired:
                    heard = "SIGINT was not heard either: the event loop is blocked"
                pytest.fail(
                    f"the run did not finish within {scaled(20):.0f} s of a 100 kB reply of braces; {heard}"
                )
        finally:
            if process.poll() is None:
                process.kill()
                process.communicate()
    assert return_code == 0


# -- 5. the API key echoed with JSON escapes is scrubbed from the raw text only, then decoded into every file --------

KEY = "sk-melt-review-9Zq4Wd7Kp2Lm"
#: a proxy password whose Basic credentials contain "/", which PHP-style JSON encoders write as "\/"
PASSWORD = "pw-?dX3a5IDnO"
CREDENTIALS = base64.b64encode(f"melt:{PASSWORD}".encode()).decode()


def _escaped(text: str) -> str:
    return "".join(f"\\u{ord(c):04x}" for c in text)


def _echo_script(server, body, handler):
    text = utterance_text(body)
    auth = handler.headers.get("Authorization", "")
    if "[[echo-escaped-content]]" in text:
        raw = '{"choices": [{"message": {"content": "You sent ' + _escaped(auth) + '"}}]}'
    elif "[[echo-escaped-error]]" in text:
        raw = '{"error": {"message": "Bad credentials ' + _escaped(auth) + '"}}'
    elif "[[echo-slashes]]" in text:
        raw = json.dumps(completion(f"You sent {auth}")).replace("/", "\\/")
    else:
        return False
    handler.send_raw(200, raw.encode())
    return True


@pytest.mark.parametrize(
    ("marker", "credentials"),
    [("echo-escaped-content", "key"), ("echo-escaped-error", "key"), ("echo-slashes", "password")],
)
def test_a_key_echoed_with_json_escapes_never_reaches_any_file(tmp_path, monkeypatch, marker, credentials):
    monkeypatch.setenv("OPENAI_API_KEY", KEY)
    secrets = [KEY] if credentials == "key" else [PASSWORD, CREDENTIALS]
    out = tmp_path / "run"
    with ScriptedServer(script=_echo_script) as server:
        url = server.base_url
        if credentials == "password":
            url = url.replace("http://", "http://melt:pw-%3FdX3a5IDnO@")
        result = run_annotation(
            corpus_table([f"[[{marker}]] Echo what I sent.", GOOD]), fast_config(server, base_url=url), out
        )
    assert result.annotations["status"].tolist()[1] == "ok"
    leaked = {
        path.name: [s for s in secrets if s.encode() in path.read_bytes()]
        for path in out.rglob("*")
        if path.is_file()
    }
    assert {name: found for name, found in leaked.items() if found} == {}


# -- 6. one prompt refused by a content filter (HTTP 400) stops every run: the corpus can never be finished ----------


def test_a_prompt_refused_by_the_content_filter_fails_its_row_and_the_run_goes_on(tmp_path):
    flagged = "[[filtered]] A line the content filter dislikes."

    def script(server, body, handler):
        if utterance_text(body) != flagged:
            return False
        # Azure OpenAI's answer to a prompt its content management policy flags (OpenAI's own is alike).
        error = {"message": "The response was filtered due to the prompt triggering Azure OpenAI's content "
                 "management policy. Please modify your prompt and retry.", "type": None, "param": "prompt",
                 "code": "content_filter", "status": 400}  # fmt: skip
        handler.send_json(400, {"error": error})
        return True

    texts = ["First line.", flagged, *[f"Line {i}." for i in range(12)]]
    with ScriptedServer(script=script, latency=0.02) as server:
        try:
            result = run_annotation(corpus_table(texts), fast_config(server, concurrency=2), tmp_path / "run")
        except MeltError as exc:
            pytest.fail(f"one filtered prompt stopped the whole run (and will stop every rerun): {exc}")
    rows = result.annotations.set_index("id")
    assert rows["status"].tolist().count("ok") == len(texts) - 1
    assert "content" in rows["error"].dropna().iloc[0]


# -- 7. the answer-format probe sends temperature 0, which reasoning models refuse: every run stops ---------------


def test_the_format_probe_sends_no_temperature_the_user_did_not_ask_for(tmp_path):
    def script(server, body, handler):
        # OpenAI's reasoning models (o1, o3, o4-mini, gpt-5) take only the default temperature.
        if body.get("temperature") in (None, 1, 1.0):
            return False
        message = (f"Unsupported value: 'temperature' does not support {body['temperature']} with this model. "
                   "Only the default (1) value is supported.")  # fmt: skip
        error = {"message": message, "type": "invalid_request_error", "param": "temperature",
                 "code": "unsupported_value"}  # fmt: skip
        handler.send_json(400, {"error": error})
        return True

    with ScriptedServer(script=script) as server:
        try:
            result = run_annotation(
                corpus_table([GOOD, "Second."]), fast_config(server, temperature=1.0), tmp_path / "run"
            )
        except MeltError as exc:
            pytest.fail(f"the run asked for temperature 1.0 and was stopped by its own probe: {exc}")
        temperatures = {body.get("temperature") for body in server.bodies}
    assert result.complete
    assert temperatures == {1.0}


# -- 8. a --base-url that answers but is no OpenAI server is retried for minutes, and the URL is never named ---------


def _listener(kind: str) -> tuple[socket.socket, str]:
    """A real TCP service on 127.0.0.1 that is not an OpenAI server: it closes every connection at once, or greets
    like an SSH server."""
    listener = socket.create_server(("127.0.0.1", 0))

    def serve() -> None:
        while True:
            try:
                connection, _ = listener.accept()
            except OSError:
                return
            try:
                if kind == "ssh":
                    connection.sendall(b"SSH-2.0-OpenSSH_9.6\r\n")
                    connection.recv(4096)
            except OSError:
                pass
            finally:
                connection.close()

    threading.Thread(target=serve, daemon=True).start()
    return listener, f"http://127.0.0.1:{listener.getsockname()[1]}/v1"


@pytest.mark.parametrize("kind", ["closes-at-once", "ssh", "web-page"])
def test_a_base_url_that_is_no_openai_server_stops_the_run_at_once_naming_it(tmp_path, kind):
    def page(server, body, handler):
        handler.send_raw(200, b"<!doctype html><title>My web app</title>", {"Content-Type": "text/html"})
        return True

    if kind == "web-page":
        web = ScriptedServer(script=page).start()
        stop, url = web.stop, web.base_url
    else:
        listener, url = _listener(kind)
        stop = listener.close
    config = AnnotateConfig(
        base_url=url, model="m", timeout=5, max_retries=3, backoff_base=0.2, backoff_max=2
    )
    try:
        with pytest.raises(MeltError) as caught:
            run_annotation(corpus_table([GOOD, "Second."]), config, Path(tmp_path) / "run")
    finally:
        stop()
    host = url.split("//")[1].split("/")[0]
    assert host in str(caught.value)


def test_the_cli_names_a_base_url_that_is_no_openai_server(tmp_path):
    listener, url = _listener("ssh")
    corpus = write_table(corpus_table([GOOD]), tmp_path / "corpus.csv")
    started = time.monotonic()
    try:
        result = subprocess.run(
            melt_command("annotate", corpus, "--out", tmp_path / "run", "--base-url", url, "--model", "m",
                         "--quiet", "--max-retries", "2"),
            capture_output=True, text=True, env=environment(), timeout=scaled(120),
        )  # fmt: skip
    finally:
        listener.close()
    assert result.returncode == 2, (time.monotonic() - started, result.stdout[-500:])
    assert url.split("//")[1].split("/")[0] in result.stderr and "Traceback" not in result.stderr
