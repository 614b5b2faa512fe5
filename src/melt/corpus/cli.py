"""`melt corpus ...`."""

from __future__ import annotations

import typer

corpus_app = typer.Typer(help="Build utterance tables from MELD, MELT or any CSV/Parquet file.", no_args_is_help=True)
