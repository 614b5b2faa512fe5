import base64

import pandas as pd

from melt import provenance
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
    made = provenance.record(inputs={"figure": figure}, settings={"alpha": 0.5}, api="test()")
    md, html = write_report(
        tmp_path,
        "Title <&>",
        [Section("S", ["p <b>"], {"counts": table}, {"a dot": figure})],
        provenance=made,
    )
    # The index becomes the first column even when its name collides with a column's; numbers align right.
    assert "| label  | label |\n|---|---:|\n| a | 1 |\n| b | 2 |" in md.read_text()
    text = html.read_text()
    assert "Title &lt;&amp;&gt;" in text and "p &lt;b&gt;" in text  # escaped, not injected
    assert base64.b64encode(png).decode() in text
    # Every report ends with how it was made.
    assert "<h2>How this was made</h2>" in text and made["inputs"]["figure"]["sha256"] in text
    assert "test()" in text and "alpha" in text


def test_tables_fit_the_page(tmp_path):
    long_text = "word " * 2000
    table = pd.DataFrame(
        {"id": ["x", "y"], "text": [long_text, "short | piped"], "count": [1234, 5], "share": ["1.5%", "–"]}
    )
    section = Section(
        "S", tables={"t": table}, legend={"flag_a": "what a means"}, preformatted={"p": "a\n  b"}
    )
    md, html = write_report(tmp_path, "T", [section], provenance=provenance.record(api="test()"))
    text = html.read_text()
    # Numbers right-aligned, text left-aligned; a long text is cut in the report (its table has it whole).
    assert '<th class="num">count</th>' in text and '<td class="num">1234</td>' in text
    assert '<td class="num">1.5%</td>' in text and "<th>text</th>" in text
    assert long_text not in text and "…" in text
    assert "<dt>flag_a</dt><dd>what a means</dd>" in text and "<pre>a\n  b</pre>" in text
    markdown = md.read_text()
    assert "short \\| piped" in markdown  # a | inside a cell does not split it
    assert "```text\na\n  b\n```" in markdown
