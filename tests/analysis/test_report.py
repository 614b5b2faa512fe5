import base64

import pandas as pd

from melt.analysis.compare import compare_labels, write_comparison
from melt.analysis.report import Section, write_report


def test_report_in_a_relative_folder_embeds_its_figures(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    comparison = compare_labels(["joy", "anger", "joy"], ["joy", "joy", "frustration"])
    write_comparison(comparison, "out/compare")
    page = (tmp_path / "out" / "compare" / "report.html").read_text()
    assert page.count("data:image/png;base64,") == 2
    markdown = (tmp_path / "out" / "compare" / "report.md").read_text()
    assert "](transition.png)" in markdown  # links relative to the report, so the folder can move


def test_tables_and_figures_in_both_formats(tmp_path):
    figure = tmp_path / "dot.png"
    png = base64.b64decode(
        "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8BQDwAEhQGAhKmMIQAAAABJRU5ErkJggg=="
    )
    figure.write_bytes(png)
    table = pd.DataFrame({"label": [1, 2]}, index=pd.Index(["a", "b"], name="label"))  # index name = column
    md, html = write_report(
        tmp_path, "Title <&>", [Section("S", ["p <b>"], {"counts": table}, {"a dot": figure})]
    )
    # The index becomes the first column even when its name collides with a column's.
    assert "| label  | label |\n|---|---|\n| a | 1 |\n| b | 2 |" in md.read_text()
    text = html.read_text()
    assert "Title &lt;&amp;&gt;" in text and "p &lt;b&gt;" in text  # escaped, not injected
    assert base64.b64encode(png).decode() in text
