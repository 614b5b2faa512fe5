"""A comparison report in a real browser (Debian's Chromium through the system chromedriver): its tables fit a
laptop-wide window (long texts and unbroken paths wrap instead of pushing the page sideways), text columns are
left-aligned, number columns right-aligned, and every figure is shown."""

from __future__ import annotations

import os

import pandas as pd
import pytest

from melt.analysis.compare import compare_labels, write_comparison
from timing import scaled

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"

LAYOUT = """
const page = document.documentElement;
const tables = [...document.querySelectorAll('table')].map(t => {
  const box = t.getBoundingClientRect();
  const header = [...t.querySelectorAll('tr:first-child th')].map(th => th.textContent);
  const first = [...t.querySelectorAll('tr:nth-child(2) td')].map(td => getComputedStyle(td).textAlign);
  return {right: box.right, header: header, align: first};
});
const images = [...document.images].map(i => i.complete && i.naturalWidth > 0);
return {scrollWidth: page.scrollWidth, width: window.innerWidth, tables: tables, images: images};
"""


def test_report_tables_fit_a_laptop_window(shared_data, tmp_path):
    missing = [path for path in (CHROMIUM, CHROMEDRIVER) if not os.path.exists(path)]
    if missing:
        pytest.skip(f"needs {', '.join(missing)} (Debian: apt-get install chromium chromium-driver)")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    table = pd.read_csv(shared_data / "melt" / "meld_train.csv").head(400)
    texts = table["Utterance"].tolist()
    changed = int(
        (table["Emotion"] != table["llm_label"]).to_numpy().argmax()
    )  # listed among the disagreements
    texts[changed] = (
        "/very/long/unbroken/" + "path_segment" * 40 + ".wav " + texts[changed]
    )  # no space to wrap at
    comparison = compare_labels(
        table["Emotion"], table["llm_label"], reference_name="Emotion", candidate_name="llm_label",
        ids=table["filename"], texts=texts,
    )  # fmt: skip
    write_comparison(comparison, tmp_path / "cmp", resamples=50)

    os.environ["SE_OFFLINE"] = "true"  # selenium-manager must never download anything
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", f"--user-data-dir={tmp_path / 'p'}",
                 "--window-size=1280,900"):  # fmt: skip
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=options)
    try:
        driver.set_page_load_timeout(scaled(120))
        driver.get((tmp_path / "cmp" / "report.html").as_uri())
        layout = driver.execute_script(LAYOUT)
    finally:
        driver.quit()

    assert layout["scrollWidth"] <= layout["width"], layout["scrollWidth"]  # nothing pushes the page sideways
    assert all(t["right"] <= layout["width"] for t in layout["tables"])
    assert layout["images"] and all(layout["images"])
    by_header = {tuple(t["header"]): t["align"] for t in layout["tables"]}
    listed = by_header[("id", "text", "Emotion (reference)", "llm_label (candidate)")]
    assert listed == ["left"] * 4
    statistics = next(align for header, align in by_header.items() if header[:2] == ("statistic", "value"))
    assert statistics[0] == "left" and statistics[1] == "right"
