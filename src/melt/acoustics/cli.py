"""`melt audio ...` and `melt acoustics ...` commands."""

from __future__ import annotations

import typer

audio_app = typer.Typer(help="Prepare utterance audio: extract 16 kHz mono WAV from corpus clips.", no_args_is_help=True)
acoustics_app = typer.Typer(
    help="eGeMAPS features with openSMILE, and the check of the LLM's voice descriptions against them.",
    no_args_is_help=True,
)
