"""Reports as Markdown plus one self-contained HTML file (figures embedded), written atomically.

Every stage that reports builds a list of `Section`s and calls `write_report`; the same sections give both files.
"""

from __future__ import annotations

import base64
import html
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from melt.corpus.schema import atomic_write


@dataclass
class Section:
    title: str
    paragraphs: list[str] = field(default_factory=list)
    #: caption -> table
    tables: dict[str, pd.DataFrame] = field(default_factory=dict)
    #: caption -> PNG file (a path as any other: relative to the working directory, not to the report)
    figures: dict[str, Path] = field(default_factory=dict)


_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222}
h1{border-bottom:2px solid #444}h2{margin-top:2em;border-bottom:1px solid #ccc}
table{border-collapse:collapse;margin:1em 0;font-size:.92em}
th,td{border:1px solid #ccc;padding:.25em .6em;text-align:right}th{background:#f3f3f3}
td:first-child,th:first-child{text-align:left}figure{margin:1em 0}img{max-width:100%}
figcaption,.caption{color:#555;font-size:.9em}
"""


def _with_index(table: pd.DataFrame) -> pd.DataFrame:
    """The table with its index as the first column, unless the index is a plain row number."""
    if isinstance(table.index, pd.RangeIndex) and not table.index.name:
        return table
    header = str(table.index.name or "")
    while header in table.columns:
        header += " "
    frame = table.copy()
    frame.insert(0, header, table.index)
    return frame.reset_index(drop=True)


def _table_markdown(table: pd.DataFrame) -> str:
    frame = _with_index(table)
    header = "| " + " | ".join(str(c) for c in frame.columns) + " |"
    rule = "|" + "|".join("---" for _ in frame.columns) + "|"
    rows = ["| " + " | ".join(_cell(v) for v in row) + " |" for row in frame.itertuples(index=False)]
    return "\n".join([header, rule, *rows])


def _cell(value: object) -> str:
    if isinstance(value, float):
        return f"{value:.4f}"
    return str(value)


def _table_html(table: pd.DataFrame) -> str:
    frame = _with_index(table)
    head = "".join(f"<th>{html.escape(str(c))}</th>" for c in frame.columns)
    body = "".join(
        "<tr>" + "".join(f"<td>{html.escape(_cell(v))}</td>" for v in row) + "</tr>"
        for row in frame.itertuples(index=False)
    )
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def write_report(out_dir: str | Path, title: str, sections: list[Section]) -> tuple[Path, Path]:
    """Write `report.md` and a self-contained `report.html` into `out_dir`; return both paths."""
    out_dir = Path(out_dir)
    md = [f"# {title}", ""]
    body = [f"<h1>{html.escape(title)}</h1>"]
    for section in sections:
        md += [f"## {section.title}", ""]
        body.append(f"<h2>{html.escape(section.title)}</h2>")
        for paragraph in section.paragraphs:
            md += [paragraph, ""]
            body.append(f"<p>{html.escape(paragraph)}</p>")
        for caption, table in section.tables.items():
            md += [f"*{caption}*", "", _table_markdown(table), ""]
            body.append(f'<p class="caption">{html.escape(caption)}</p>{_table_html(table)}')
        for caption, figure in section.figures.items():
            path = Path(figure)
            relative = Path(path).resolve().relative_to(out_dir.resolve()) if _inside(path, out_dir) else path
            md += [f"![{caption}]({relative})", ""]
            encoded = base64.b64encode(Path(path).read_bytes()).decode("ascii")
            body.append(
                f'<figure><img alt="{html.escape(caption)}" src="data:image/png;base64,{encoded}">'
                f"<figcaption>{html.escape(caption)}</figcaption></figure>"
            )
    page = (
        f'<!doctype html><html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>'
        f"<style>{_CSS}</style></head><body>{''.join(body)}</body></html>"
    )
    md_path = atomic_write(out_dir / "report.md", lambda tmp: tmp.write_text("\n".join(md), encoding="utf-8"))
    html_path = atomic_write(out_dir / "report.html", lambda tmp: tmp.write_text(page, encoding="utf-8"))
    return md_path, html_path


def _inside(path: str | Path, folder: Path) -> bool:
    try:
        Path(path).resolve().relative_to(folder.resolve())
    except ValueError:
        return False
    return True
