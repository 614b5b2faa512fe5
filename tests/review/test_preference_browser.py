"""The preference test in a real browser: Debian's Chromium driven by Selenium through the system chromedriver.

One participant completes a session; a second answers half, reloads (the cookie resumes), closes the browser,
comes back in a fresh browser with the same code and finishes. The report's numbers must equal the clicks.
"""

from __future__ import annotations

import json
import os
import subprocess
import wave
from collections import Counter
from pathlib import Path

import pandas as pd
import pytest

from acoustics.espeak import require_tools
from timing import scaled

from .conftest import PreferenceServer

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
TIMEOUT = scaled(120)  # seconds for any one thing the page does; the machine may be loaded


def _require_browser() -> None:
    missing = [path for path in (CHROMIUM, CHROMEDRIVER) if not os.path.exists(path)]
    if missing:
        pytest.skip(f"needs {', '.join(missing)} (Debian: apt-get install chromium chromium-driver)")


class Browser:
    def __init__(self, profile: Path):
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service

        os.environ["SE_OFFLINE"] = "true"  # selenium-manager must never download anything
        options = webdriver.ChromeOptions()
        options.binary_location = CHROMIUM
        for flag in (
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--disable-dev-shm-usage",
            f"--user-data-dir={profile}",
        ):
            options.add_argument(flag)
        self.driver = webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=options)
        self.driver.set_page_load_timeout(TIMEOUT)
        self.driver.set_script_timeout(TIMEOUT)

    def wait(self, condition, message: str):
        from selenium.webdriver.support.ui import WebDriverWait

        return WebDriverWait(self.driver, TIMEOUT, poll_frequency=0.1).until(condition, message)

    def element(self, element_id: str):
        from selenium.webdriver.common.by import By

        return self.driver.find_element(By.ID, element_id)

    def visible(self, element_id: str) -> bool:
        return self.element(element_id).is_displayed()

    def quit(self) -> None:
        self.driver.quit()


def _wav_seconds(path: str) -> float:
    with wave.open(path) as handle:
        return handle.getnframes() / handle.getframerate()


@pytest.fixture
def experiment(review_audio, tmp_path, melt_cli):
    _require_browser()
    _, audio = review_audio
    labels = ["anger", "joy"]
    rows = []
    for i, (uid, path) in enumerate(audio.items()):
        human = labels[i % 2]
        rows.append(
            {
                "id": uid,
                "text": f"Line {i}: {uid}",
                "audio": str(path),
                "wav": str(path),
                "label": human,
                "llm_label": "neutral" if i % 3 else "sadness",
            }
        )
    # one clip as an H.264/AAC video, as MELD's clips are
    require_tools("ffmpeg")
    video = tmp_path / "clip.mp4"
    seconds = _wav_seconds(rows[0]["wav"])
    source = ["-f", "lavfi", "-i", f"color=c=gray:s=160x120:r=10:d={seconds}", "-i", rows[0]["wav"]]
    codecs = ["-c:v", "libx264", "-pix_fmt", "yuv420p", "-c:a", "aac", "-shortest"]
    subprocess.run(
        ["ffmpeg", "-v", "error", "-y", *source, *codecs, str(video)],
        check=True,
    )
    rows[0]["audio"] = str(video)
    # a description that is markup must show as text and never run
    rows[-1]["llm_label"] = '<img src=x onerror="window.injected=1">sadness'
    table = tmp_path / "table.csv"
    pd.DataFrame(rows).to_csv(table, index=False)
    pairs = tmp_path / "pairs.parquet"
    result = melt_cli(
        "preference", "pairs", table, "--a", "llm_label", "--b", "label", "--out", pairs, "--only-different"
    )
    assert result.code == 0, result.stderr
    return pairs, {row["text"]: row for row in rows}


def _answer(browser: Browser, items: dict, rule, clicks: list, limit: int | None = None) -> None:
    """Answer items as `rule(row)` says ("a", "b" or "neither"), recording what was clicked."""
    from selenium.common.exceptions import StaleElementReferenceException

    done = 0
    while limit is None or done < limit:
        browser.wait(lambda d: browser.visible("trial") or browser.visible("done"), "an item or the end")
        if browser.visible("done"):
            return
        transcript = browser.element("transcript").text.strip("“”")
        row = items[transcript]
        # the clip plays: the browser read the served WAV's header and knows its duration
        state = browser.wait(
            lambda d: d.execute_script(
                "const p = document.getElementById('player'); return p && p.readyState >= 1 ? [p.duration, p.tagName] : null"
            ),
            f"the clip of {row['id']} to load",
        )
        video = row["audio"].endswith(".mp4")
        assert state[1] == ("VIDEO" if video else "AUDIO")
        assert abs(state[0] - _wav_seconds(row["wav"])) < (0.15 if video else 0.05)
        assert browser.driver.execute_script("return window.injected") is None
        first, second = browser.element("choice-first").text, browser.element("choice-second").text
        assert {first, second} == {row["llm_label"], row["label"]}
        choice = rule(row)
        wanted = {"a": row["llm_label"], "b": row["label"]}.get(choice)
        button = (
            "choice-neither"
            if choice == "neither"
            else ("choice-first" if first == wanted else "choice-second")
        )
        progress = browser.element("progress-text").text
        browser.element(button).click()
        clicks.append(
            {"id": row["id"], "group": row["label"], "choice": choice, "a_first": first == row["llm_label"]}
        )
        done += 1

        def moved_on(driver, before=progress):
            try:
                return browser.visible("done") or browser.element("progress-text").text != before
            except StaleElementReferenceException:
                return False

        browser.wait(moved_on, "the next item")


def test_two_participants_and_the_report(experiment, tmp_path, melt_cli):
    pairs, items = experiment
    db = tmp_path / "results.sqlite"
    total = len(items)
    clicks = {"p1": [], "p2": []}
    with PreferenceServer(pairs, db) as server:
        # participant 1 completes the session
        first = Browser(tmp_path / "profile-1")
        try:
            first.driver.get(server.url + "/")
            first.wait(lambda d: first.visible("login"), "the code form")
            assert "llm_label" not in first.driver.page_source
            first.element("code").send_keys("P1")
            first.element("start").click()
            first.wait(lambda d: first.visible("trial"), "the first item")
            assert first.element("progress-text").text == f"Item 1 of {total} · 0 answered"
            _answer(
                first,
                items,
                lambda row: ("a", "b", "neither")[int(row["text"].split()[1][:-1]) % 3],
                clicks["p1"],
            )
            assert first.visible("done") and f"all {total} items" in first.element("done-text").text
        finally:
            first.quit()

        # participant 2 answers half, reloads (the cookie resumes), then leaves
        half = total // 2
        second = Browser(tmp_path / "profile-2")
        try:
            second.driver.get(server.url + "/")
            second.wait(lambda d: second.visible("login"), "the code form")
            second.element("code").send_keys("P2")
            second.element("start").click()
            rule = lambda row: "b" if row["label"] == "anger" else "a"  # noqa: E731
            _answer(second, items, rule, clicks["p2"], limit=half - 1)
            second.driver.refresh()
            second.wait(lambda d: second.visible("trial"), "the item after a reload")
            assert second.element("progress-text").text == f"Item {half} of {total} · {half - 1} answered"
            _answer(second, items, rule, clicks["p2"], limit=1)
        finally:
            second.quit()
        # ... and comes back in a fresh browser, without the cookie, typing the code differently
        third = Browser(tmp_path / "profile-3")
        try:
            third.driver.get(server.url + "/")
            third.wait(lambda d: third.visible("login"), "the code form")
            third.element("code").send_keys(" p2 ")
            third.element("start").click()
            third.wait(lambda d: third.visible("trial"), "the resumed item")
            assert third.element("progress-text").text == f"Item {half + 1} of {total} · {half} answered"
            _answer(third, items, rule, clicks["p2"])
            assert third.visible("done")
        finally:
            third.quit()
        assert server.stop() is not None

    assert len(clicks["p1"]) == len(clicks["p2"]) == total
    assert len({c["id"] for c in clicks["p2"]}) == total  # resumed where it stopped: no item twice
    # the two participants saw every item with the sides swapped
    p1_sides = {c["id"]: c["a_first"] for c in clicks["p1"]}
    assert all(p1_sides[c["id"]] != c["a_first"] for c in clicks["p2"])
    assert abs(sum(p1_sides.values()) * 2 - total) <= 2

    out = tmp_path / "report"
    result = melt_cli("preference", "report", db, "--out", out)
    assert result.code == 0, result.stderr
    table = pd.read_csv(out / "preference.csv").set_index("group")
    everything = clicks["p1"] + clicks["p2"]
    for group in ("anger", "joy"):
        counted = Counter(c["choice"] for c in everything if c["group"] == group)
        assert table.loc[group, ["a", "b", "neither"]].tolist() == [
            counted["a"],
            counted["b"],
            counted["neither"],
        ]
    counted = Counter(c["choice"] for c in everything)
    overall = table.loc["overall"]
    assert overall[["answers", "a", "b", "neither"]].tolist() == [
        2 * total,
        counted["a"],
        counted["b"],
        counted["neither"],
    ]
    assert overall["share_a"] == pytest.approx(counted["a"] / (counted["a"] + counted["b"]))
    summary = json.loads((out / "summary.json").read_text())
    assert [p["answered"] for p in summary["participants"]] == [total, total]
    assert summary["agreement"]["items_with_two_or_more_answers"] == total
    answers = pd.read_csv(out / "answers.csv")
    assert Counter(zip(answers["participant"], answers["choice"], strict=True)) == Counter(
        (who, c["choice"]) for who, cs in clicks.items() for c in cs
    )
    assert (answers["seconds"] >= 0).all()
    assert (out / "preference.png").stat().st_size > 0 and (out / "time.png").stat().st_size > 0
    html = (out / "report.html").read_text()
    assert "Wilson" in html and "sha256" in html and "data:image/png;base64" in html
