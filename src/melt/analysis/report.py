"""Reports as Markdown plus one self-contained HTML file (figures embedded), written atomically.

Every stage that reports builds a list of `Section`s and calls `write_report` with the output's provenance
(`melt.provenance.record`); the same sections give both files, and every report ends with the same "How this
was made" section: melt version, date, the command, the inputs with their sha256, the settings.

Tables fit the page: text columns are left-aligned and wrap (long words and paths break anywhere), number
columns are right-aligned and never break.
"""

from __future__ import annotations

import base64
import html
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from melt.corpus.schema import atomic_write

#: Longest text shown in a report's table cell; the tables written next to the report hold the whole text.
CELL_CHARACTERS = 400
#: Words longer than this (paths, hashes) may break anywhere in a table cell.
LONG_WORD = 30


@dataclass
class Section:
    title: str
    paragraphs: list[str] = field(default_factory=list)
    #: caption -> table
    tables: dict[str, pd.DataFrame] = field(default_factory=dict)
    #: caption -> PNG file (a path as any other: relative to the working directory, not to the report)
    figures: dict[str, Path] = field(default_factory=dict)
    #: term -> what it means (flags, statuses, abbreviations used in the section's tables)
    legend: dict[str, str] = field(default_factory=dict)
    #: caption -> text shown as it is, line breaks kept (a prompt, a command)
    preformatted: dict[str, str] = field(default_factory=dict)


_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222;
line-height:1.45}
h1{border-bottom:2px solid #444}h2{margin-top:2em;border-bottom:1px solid #ccc}
table{border-collapse:collapse;margin:.4em 0 1.2em;font-size:.9em;max-width:100%}
th,td{border:1px solid #ccc;padding:.25em .6em;text-align:left;vertical-align:top;overflow-wrap:break-word}
td.long{overflow-wrap:anywhere}
th{background:#f3f3f3}td.num,th.num{text-align:right;white-space:nowrap;overflow-wrap:normal}
figure{margin:1em 0}img{max-width:100%}
figcaption,.caption{color:#555;font-size:.9em;margin-bottom:0}
dl.legend{display:grid;grid-template-columns:max-content auto;gap:.2em 1em;font-size:.9em}
dl.legend dt{font-family:ui-monospace,monospace;font-weight:600}dl.legend dd{margin:0}
code{font-family:ui-monospace,monospace;font-size:.92em;overflow-wrap:anywhere}
pre{background:#f6f6f6;border:1px solid #ddd;padding:.6em;white-space:pre-wrap;overflow-wrap:anywhere;font-size:.85em}
"""
_NUMBER = re.compile(
    r"^[-+−]?(\d[\d,]*(\.\d+)?|\.\d+)(e[-+]?\d+)?\s*%?$|^[-+−]?\d[\d.,]*\s*[–-]\s*[-+−]?\d[\d.,]*$"
)
_EMPTY = {"", "–", "undefined", "nan", "<NA>", "None"}


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


def _cell(value: object) -> str:
    if value is None or value is pd.NA:
        return ""
    if isinstance(value, float):
        return "" if value != value else f"{value:.4f}"
    text = str(value)
    return text if len(text) <= CELL_CHARACTERS else text[: CELL_CHARACTERS - 1] + "…"


def _numeric_columns(frame: pd.DataFrame) -> list[bool]:
    """Per column: right-align it, because every filled cell is a number (or a range of two)."""
    flags = []
    for column in frame.columns:
        cells = [_cell(v) for v in frame[column]]
        filled = [c for c in cells if c not in _EMPTY]
        flags.append(bool(filled) and all(_NUMBER.match(c) for c in filled))
    return flags


def _table_markdown(table: pd.DataFrame) -> str:
    frame = _with_index(table)
    numeric = _numeric_columns(frame)
    header = "| " + " | ".join(_markdown_cell(str(c)) for c in frame.columns) + " |"
    rule = "|" + "|".join("---:" if right else "---" for right in numeric) + "|"
    rows = [
        "| " + " | ".join(_markdown_cell(_cell(v)) for v in row) + " |"
        for row in frame.itertuples(index=False)
    ]
    return "\n".join([header, rule, *rows])


def _markdown_cell(text: str) -> str:
    # A cell is one line; a | would end it.
    return text.replace("\r", " ").replace("\n", " ").replace("|", "\\|")


def _table_html(table: pd.DataFrame) -> str:
    frame = _with_index(table)
    numeric = _numeric_columns(frame)
    classes = [' class="num"' if right else "" for right in numeric]
    head = "".join(
        f"<th{css}>{html.escape(str(c))}</th>" for c, css in zip(frame.columns, classes, strict=True)
    )
    body = "".join(
        "<tr>" + "".join(_td(_cell(v), css) for v, css in zip(row, classes, strict=True)) + "</tr>"
        for row in frame.itertuples(index=False)
    )
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _td(text: str, css: str) -> str:
    # A path, a hash or a long word may break anywhere; other text only between words, so that a column of
    # short words never gets narrower than its longest word.
    if not css and any(len(word) > LONG_WORD for word in text.split()):
        css = ' class="long"'
    return f"<td{css}>{html.escape(text)}</td>"


def _flat(settings: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    """Nested settings as `a.b` -> its value as text."""
    flat: dict[str, str] = {}
    for name, value in settings.items():
        key = f"{prefix}{name}"
        if isinstance(value, Mapping) and value and len(json.dumps(value, default=str)) > 80:
            flat.update(_flat(value, f"{key}."))
        elif isinstance(value, str):
            flat[key] = value
        else:
            flat[key] = json.dumps(value, ensure_ascii=False, default=str)
    return flat


def provenance_section(provenance: Mapping[str, Any]) -> Section:
    """ "How this was made": the provenance block of an output (`melt.provenance.record`), for people."""
    made = {
        "melt version": provenance.get("melt_version"),
        "created (UTC)": provenance.get("created"),
        "command": provenance.get("command"),
        "Python": provenance.get("python"),
    }
    standard = {"melt_version", "created", "command", "python", "inputs", "settings"}
    for name, value in provenance.items():
        if name not in standard:
            text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False, default=str)
            made[name.replace("_", " ")] = text if len(text) <= CELL_CHARACTERS else "(in the JSON)"
    tables = {
        "How it was run": pd.DataFrame(
            {"value": [str(v) for v in made.values()]}, index=pd.Index(list(made), name="")
        )
    }
    inputs = provenance.get("inputs") or {}
    if inputs:
        tables["Inputs (sha256 of each file's bytes)"] = pd.DataFrame(
            [
                {
                    "input": name,
                    "path": entry.get("path"),
                    "bytes": f"{entry['bytes']:,}" if "bytes" in entry else entry.get("kind", ""),
                    "sha256": entry.get("sha256", ""),
                }
                for name, entry in inputs.items()
            ]
        ).set_index("input")
    settings = _flat(provenance.get("settings") or {})
    if settings:
        tables["Settings"] = pd.DataFrame(
            {"value": list(settings.values())}, index=pd.Index(list(settings), name="setting")
        )
    return Section(
        "How this was made",
        paragraphs=[
            "Everything needed to make this report again; the same facts, machine-readable, are under "
            '"provenance" in the JSON written next to it.'
        ],
        tables=tables,
    )


def write_report(
    out_dir: str | Path, title: str, sections: list[Section], *, provenance: Mapping[str, Any]
) -> tuple[Path, Path]:
    """Write `report.md` and a self-contained `report.html` into `out_dir`, ending with how they were made
    (`provenance`, from `melt.provenance.record`); return both paths."""
    out_dir = Path(out_dir)
    md = [f"# {title}", ""]
    body = [f"<h1>{html.escape(title)}</h1>"]
    for section in [*sections, provenance_section(provenance)]:
        md += [f"## {section.title}", ""]
        body.append(f"<h2>{html.escape(section.title)}</h2>")
        for paragraph in section.paragraphs:
            md += [paragraph, ""]
            body.append(f"<p>{html.escape(paragraph)}</p>")
        for caption, text in section.preformatted.items():
            md += [f"*{caption}*", "", "```text", text, "```", ""]
            body.append(f'<p class="caption">{html.escape(caption)}</p><pre>{html.escape(text)}</pre>')
        for caption, table in section.tables.items():
            md += [f"*{caption}*", "", _table_markdown(table), ""]
            body.append(f'<p class="caption">{html.escape(caption)}</p>{_table_html(table)}')
        if section.legend:
            md += (
                ["Legend:", ""]
                + [f"- `{term}`: {meaning}" for term, meaning in section.legend.items()]
                + [""]
            )
            items = "".join(
                f"<dt>{html.escape(term)}</dt><dd>{html.escape(meaning)}</dd>"
                for term, meaning in section.legend.items()
            )
            body.append(f'<p class="caption">Legend</p><dl class="legend">{items}</dl>')
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
