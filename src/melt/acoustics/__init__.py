"""Audio handling, eGeMAPS extraction and the acoustic check of voice descriptions (MELT paper §5.2).

Submodules: `audio` (read any clip as 16 kHz mono, extract corpus WAVs), `features` (openSMILE eGeMAPSv02,
parallel and cached), `lexicon` (description -> low/mid/high), `check` (bins, scores, report). They are not
imported here so that `import melt.acoustics` stays cheap; see docs/acoustics.md.
"""
