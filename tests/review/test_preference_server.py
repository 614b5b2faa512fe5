"""`melt preference serve` over plain HTTP, as an adversary would use it: traversal attempts, other
participants' URLs, double submissions, odd codes, malformed requests. The server runs in a real subprocess."""

from __future__ import annotations

import http.client
import json
import os
import sqlite3
import threading
from pathlib import Path

import pandas as pd
import pytest

from melt.review.pairs import read_pairs
from timing import scaled

from .conftest import PreferenceServer, free_port


class Client:
    """One browser: raw paths (nothing normalised), its own cookie."""

    def __init__(self, server: PreferenceServer):
        self.port = server.port
        self.cookie: str | None = None

    def request(self, method: str, path: str, body=None, headers: dict | None = None):
        connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=scaled(60))
        headers = dict(headers or {})
        if self.cookie:
            headers.setdefault("Cookie", self.cookie)
        if isinstance(body, dict | list):
            body = json.dumps(body)
            headers.setdefault("Content-Type", "application/json")
        connection.request(method, path, body=body, headers=headers)
        response = connection.getresponse()
        data = response.read()
        cookie = response.getheader("set-cookie")
        if cookie:
            self.cookie = cookie.split(";", 1)[0]
        connection.close()
        return response.status, response, data

    def login(self, code: str):
        status, _, data = self.request("POST", "/api/session", {"code": code})
        return status, json.loads(data)


@pytest.fixture
def pairs_file(review_audio, tmp_path) -> Path:
    _, audio = review_audio
    rows = []
    for i, (uid, path) in enumerate(audio.items()):
        rows.append(
            {"id": uid, "text": f"line {i}", "audio": str(path), "label": "joy", "llm_label": "neutral"}
        )
    table = tmp_path / "table.csv"
    pd.DataFrame(rows).to_csv(table, index=False)
    from melt.review.pairs import PairsSettings, write_pairs

    write_pairs(table, tmp_path / "pairs.parquet", PairsSettings(a="llm_label", b="label"))
    return tmp_path / "pairs.parquet"


@pytest.fixture
def server(pairs_file, tmp_path):
    with PreferenceServer(pairs_file, tmp_path / "results.sqlite", "--no-neither") as running:
        yield running


def test_bound_to_loopback_and_answers_written_at_once(server):
    assert f"http://127.0.0.1:{server.port}/" in server.output()
    listening = [
        line.split()[1]
        for name in ("/proc/net/tcp", "/proc/net/tcp6")
        if os.path.exists(name)
        for line in Path(name).read_text().splitlines()[1:]
        if line.split()[3] == "0A"
    ]
    assert f"0100007F:{server.port:04X}" in listening
    assert not any(
        address.endswith(f":{server.port:04X}") and not address.startswith("0100007F")
        for address in listening
    )

    alice = Client(server)
    assert alice.login("alice")[0] == 200
    status, _, data = alice.request("GET", "/api/participants/alice/next")
    item = json.loads(data)
    assert status == 200 and set(item) == {
        "done", "position", "total", "answered", "descriptions", "text", "kind", "media", "neither",
    }  # fmt: skip
    assert sorted(item["descriptions"]) == ["joy", "neutral"] and item["neither"] is False
    status, _, _ = alice.request(
        "POST", "/api/participants/alice/answers", {"position": item["position"], "choice": "first"}
    )
    assert status == 201
    # the answer is in the SQLite file while the server runs, with the side A was on
    with sqlite3.connect(server.db) as db:
        rows = db.execute("SELECT participant, position, choice, a_first, seconds FROM answers").fetchall()
    assert len(rows) == 1 and rows[0][:2] == ("alice", item["position"])
    shown_first = "a" if item["descriptions"][0] == "neutral" else "b"  # A is llm_label = neutral
    assert rows[0][2] == shown_first and rows[0][3] == (shown_first == "a") and rows[0][4] >= 0


TRAVERSALS = [
    "/../../../../etc/passwd",
    "//etc/passwd",
    "/etc/passwd",
    "/static/../../../etc/passwd",
    "/static/%2e%2e/%2e%2e/%2e%2e/etc/passwd",
    "/static/..%2f..%2fserver.py",
    "/static/preference.js/../../pairs.parquet",
    "/static/%2fetc%2fpasswd",
    "/api/participants/alice/items/..%2F..%2F..%2Fetc%2Fpasswd/media",
    "/api/participants/alice/items/%2Fetc%2Fpasswd/media",
    "/api/participants/alice/items/-1/media",
    "/api/participants/alice/items/1e3/media",
    "/api/participants/alice/items/0x1/media",
    "/api/participants/alice/items/99/media",
    "/api/participants/alice/items/0/../../../../etc/passwd",
    "/api/participants/alice/items/0/media/..%2f..%2fetc%2fpasswd",
    "/api/participants/%2e%2e/items/0/media",
    "/api/participants/..%2f..%2fetc/items/0/media",
]


def test_path_traversal_refused(server, pairs_file):
    alice = Client(server)
    alice.login("alice")
    secrets = [Path("/etc/passwd").read_bytes(), pairs_file.read_bytes()]
    for path in TRAVERSALS:
        status, _, data = alice.request("GET", path)
        assert status in (400, 403, 404, 405), (path, status)
        assert not any(secret[:64] in data for secret in secrets), path
    # a query string cannot name a file either: item 0's own clip comes back
    pairs = read_pairs(pairs_file)
    status, _, data = alice.request("GET", "/api/participants/alice/next")
    position = json.loads(data)["position"]
    status, response, data = alice.request(
        "GET", f"/api/participants/alice/items/{position}/media?path=/etc/passwd&d=../x"
    )
    assert status == 200 and response.getheader("content-type") == "audio/wav"
    assert data in {Path(p).read_bytes() for p in pairs["media"]}
    assert data[:4] == b"RIFF"


def test_media_swapped_for_a_symlink_is_not_served(review_audio, tmp_path):
    # the pairs table lists a copy of a clip, reached through a symlink; the server serves the real file
    _, audio = review_audio
    clips = tmp_path / "clips"
    clips.mkdir()
    real = clips / "real.wav"
    real.write_bytes(next(iter(audio.values())).read_bytes())
    (clips / "link.wav").symlink_to(real)
    table = tmp_path / "table.csv"
    pd.DataFrame(
        [{"id": "u1", "text": "t", "audio": str(clips / "link.wav"), "label": "joy", "llm_label": "fear"}]
    ).to_csv(table, index=False)
    from melt.review.pairs import PairsSettings, write_pairs

    write_pairs(table, tmp_path / "pairs.parquet", PairsSettings(a="llm_label", b="label"))
    with PreferenceServer(tmp_path / "pairs.parquet", tmp_path / "r.sqlite") as server:
        bob = Client(server)
        bob.login("bob")
        status, _, data = bob.request("GET", "/api/participants/bob/items/0/media")
        assert status == 200 and data == real.read_bytes()
        # the listed file is replaced by a symlink to a secret while the test runs: refused
        secret = tmp_path / "secret.wav"
        secret.write_bytes(b"RIFF secret")
        real.rename(clips / "moved.wav")
        real.symlink_to(secret)
        status, _, data = bob.request("GET", "/api/participants/bob/items/0/media")
        assert status == 410 and b"secret" not in data


def test_other_participants_are_refused(server):
    alice, bob, stranger = Client(server), Client(server), Client(server)
    alice.login("alice")
    bob.login("bob")
    status, _, data = bob.request("GET", "/api/participants/bob/next")
    bob_item = json.loads(data)
    for method, path, body in [
        ("GET", "/api/participants/bob/next", None),
        ("GET", f"/api/participants/bob/items/{bob_item['position']}/media", None),
        ("POST", "/api/participants/bob/answers", {"position": bob_item["position"], "choice": "first"}),
    ]:
        status, _, data = alice.request(method, path, body)
        assert status == 403 and b"another participant" in data
        status, _, _ = stranger.request(method, path, body)
        assert status == 401
        stranger.cookie = "melt_session=forged-token"
        assert stranger.request(method, path, body)[0] == 401
        stranger.cookie = None
    # nothing was recorded for bob by the others
    with sqlite3.connect(server.db) as db:
        assert db.execute("SELECT COUNT(*) FROM answers").fetchone()[0] == 0
    # no endpoint returns choices: after answering, the session and the next item show counts only
    bob.request(
        "POST", "/api/participants/bob/answers", {"position": bob_item["position"], "choice": "second"}
    )
    for path in ("/api/session", "/api/participants/bob/next"):
        _, _, data = bob.request("GET", path)
        assert b"choice" not in data and b'"a_first"' not in data and b"llm_label" not in data


def test_double_submission(server):
    carol = Client(server)
    carol.login("carol")
    _, _, data = carol.request("GET", "/api/participants/carol/next")
    position = json.loads(data)["position"]
    results = []

    def submit(choice):
        results.append(
            carol.request(
                "POST", "/api/participants/carol/answers", {"position": position, "choice": choice}
            )[0]
        )

    threads = [threading.Thread(target=submit, args=(c,)) for c in ("first", "second") * 4]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(results) == [201] + [409] * 7
    with sqlite3.connect(server.db) as db:
        assert db.execute("SELECT COUNT(*) FROM answers WHERE participant = 'carol'").fetchone()[0] == 1


def test_participant_codes(server):
    client = Client(server)
    for code in ["", "   ", "a" * 65, "../etc", "a/b", "p 01", "<script>", "...", "\u202eabc", "semi;colon"]:
        status, body = client.login(code)
        assert status == 400 and "participant code" in body["error"], code
    for value in (123, None, ["p01"], {"x": 1}):
        assert client.login(value)[0] == 400
    status, body = client.login("  P01 ")
    assert status == 200 and body["participant"] == "p01"
    status, body = client.login("Ｐ０１")  # full-width letters: the same participant after NFKC
    assert status == 200 and body["participant"] == "p01"
    status, body = client.login("Zoë-Müller_3.b")
    assert status == 200 and body["participant"] == "zoë-müller_3.b"
    # the URL of a Unicode participant works percent-encoded, as the page sends it
    status, _, _ = client.request("GET", "/api/participants/zo%C3%AB-m%C3%BCller_3.b/next")
    assert status == 200
    with sqlite3.connect(server.db) as db:
        numbers = dict(db.execute("SELECT participant, number FROM participants").fetchall())
    assert numbers == {"p01": 0, "zoë-müller_3.b": 1}


def test_malformed_requests(server):
    client = Client(server)
    status, _, _ = client.request(
        "POST", "/api/session", "code=p1", {"Content-Type": "application/x-www-form-urlencoded"}
    )
    assert status == 415  # a cross-site form cannot log anyone in
    assert client.request("POST", "/api/session", "{nope", {"Content-Type": "application/json"})[0] == 400
    assert client.request("POST", "/api/session", '["p1"]', {"Content-Type": "application/json"})[0] == 400
    big = json.dumps({"code": "p1", "pad": "x" * 10000})
    assert client.request("POST", "/api/session", big, {"Content-Type": "application/json"})[0] == 413
    client.login("dave")
    _, _, data = client.request("GET", "/api/participants/dave/next")
    position = json.loads(data)["position"]
    for body in [
        {"position": position, "choice": "neither"},  # not offered by this server
        {"position": position, "choice": "a"},
        {"position": True, "choice": "first"},
        {"position": "0", "choice": "first"},
        {"position": 10**9, "choice": "first"},
        {"position": -1, "choice": "first"},
        {"choice": "first"},
    ]:
        status, _, _ = client.request("POST", "/api/participants/dave/answers", body)
        assert status == 400, body
    assert (
        client.request("PUT", "/api/participants/dave/answers", {"position": 0, "choice": "first"})[0] == 405
    )
    status, _, _ = client.request("GET", "/", headers={"Host": "attacker.example"})
    assert status == 421  # DNS rebinding to the loopback server
    with sqlite3.connect(server.db) as db:
        assert db.execute("SELECT COUNT(*) FROM answers").fetchone()[0] == 0


def test_allowed_codes_and_start_errors(pairs_file, tmp_path, melt_cli):
    codes = tmp_path / "codes.txt"
    codes.write_text("# participants of session 1\nP01\nP02\n", encoding="utf-8")
    with PreferenceServer(pairs_file, tmp_path / "r.sqlite", "--codes", str(codes)) as server:
        client = Client(server)
        assert client.login("p02")[0] == 200
        status, body = client.login("p03")
        assert status == 403 and body["error"] == "unknown participant code"
    # a results file belongs to one pairs table and one setting of --neither
    other = tmp_path / "other.parquet"
    read_pairs(pairs_file).head(3).to_parquet(other)
    result = melt_cli("preference", "serve", other, "--db", tmp_path / "r.sqlite", "--port", str(free_port()))
    assert result.code == 2 and "another pairs table" in result.stderr
    result = melt_cli(
        "preference",
        "serve",
        pairs_file,
        "--db",
        tmp_path / "r.sqlite",
        "--no-neither",
        "--port",
        str(free_port()),
    )
    assert result.code == 2 and "another --neither setting" in result.stderr
    # a port in use, a changed media file, a bad codes file: one line each, before anything is served
    with PreferenceServer(pairs_file, tmp_path / "busy.sqlite") as busy:
        result = melt_cli(
            "preference", "serve", pairs_file, "--db", tmp_path / "x.sqlite", "--port", str(busy.port)
        )
        assert result.code == 2 and f"cannot listen on 127.0.0.1:{busy.port}" in result.stderr
    bad_codes = tmp_path / "bad.txt"
    bad_codes.write_text("p01\nno spaces allowed\n", encoding="utf-8")
    result = melt_cli("preference", "serve", pairs_file, "--db", tmp_path / "y.sqlite", "--codes", bad_codes)
    assert result.code == 2 and "row 2" in result.stderr
    pairs = read_pairs(pairs_file)
    pairs.loc[0, "media_sha256"] = "0" * 64
    pairs.to_parquet(tmp_path / "stale.parquet")
    result = melt_cli("preference", "serve", tmp_path / "stale.parquet", "--db", tmp_path / "z.sqlite")
    assert result.code == 2 and "changed since the pairs table was made" in result.stderr
    assert "Traceback" not in result.stderr


def test_report_of_a_single_participant_is_strict_json(pairs_file, tmp_path, melt_cli):
    """With one participant no item has two answers: κ is undefined, which summary.json must write as null
    (NaN is not JSON; strict readers such as JavaScript's JSON.parse refuse it)."""
    from melt.review.results import PreferenceStore

    pairs = read_pairs(pairs_file)
    store = PreferenceStore(tmp_path / "one.sqlite")
    store.bind(pairs, pairs_file, allow_neither=True)
    store.enrol("solo", pairs)
    while (item := store.next_assignment("solo")) is not None:
        assert store.answer("solo", item.position, "a" if item.position % 2 else "b")
    store.close()
    out = tmp_path / "report"
    result = melt_cli("preference", "report", tmp_path / "one.sqlite", "--out", out)
    assert result.code == 0, result.stderr
    assert "κ undefined" in result.stdout

    def refuse(constant):
        raise ValueError(f"not JSON: {constant}")

    summary = json.loads((out / "summary.json").read_text(), parse_constant=refuse)
    assert summary["agreement"]["fleiss_kappa"] is None
    assert summary["agreement"]["items_with_two_or_more_answers"] == 0
    assert "nan" not in (out / "report.md").read_text().lower()


def test_killed_server_loses_no_answer_and_the_session_resumes(pairs_file, tmp_path, melt_cli):
    """SIGKILL between answers (no clean shutdown, the WAL not checkpointed): every answered item is in the
    results file, and after a restart the same browser session continues where it stopped."""
    import signal

    db = tmp_path / "results.sqlite"
    answered = []
    with PreferenceServer(pairs_file, db) as first:
        dave = Client(first)
        dave.login("dave")
        for choice in ("first", "second", "neither"):
            _, _, data = dave.request("GET", "/api/participants/dave/next")
            position = json.loads(data)["position"]
            status, _, _ = dave.request(
                "POST", "/api/participants/dave/answers", {"position": position, "choice": choice}
            )
            assert status == 201
            answered.append(position)
        first.process.send_signal(signal.SIGKILL)
        first.process.wait()
    assert Path(f"{db}-wal").exists()  # killed before any checkpoint: the answers live in the WAL
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as connection:
        stored = [r[0] for r in connection.execute("SELECT position FROM answers ORDER BY answered_at")]
    assert stored == answered
    with PreferenceServer(pairs_file, db) as second:
        dave.port = second.port
        status, _, data = dave.request("GET", "/api/session")  # the old cookie, a new server process
        assert status == 200 and json.loads(data)["answered"] == 3
        _, _, data = dave.request("GET", "/api/participants/dave/next")
        assert json.loads(data)["position"] not in answered
    result = melt_cli("preference", "report", db, "--out", tmp_path / "report")
    assert result.code == 0, result.stderr
    overall = pd.read_csv(tmp_path / "report" / "preference.csv").set_index("group").loc["overall"]
    assert overall["answers"] == 3 and overall["neither"] == 1
