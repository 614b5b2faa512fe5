"""Humans in the loop: send doubtful annotations to reviewers (Label Studio, Argilla) and bring their decisions
back as a label source; run the MELT paper's blind A/B preference test as a small web page.

Modules: `doubt` (why an utterance needs a human), `export` and `decisions` (the review tools' file formats),
`pairs`, `server` and `preference` (the preference test), `stats` (binomial intervals and tests, agreement).
Nothing here is imported by `melt --help`; the web framework is imported only by `melt preference serve`.
"""
