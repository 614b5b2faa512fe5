"""The loopback OpenAI-compatible server is tests/openai_server.py, shared with tests/annotate and bench/."""

import sys
from pathlib import Path

TESTS = str(Path(__file__).resolve().parents[1])
if TESTS not in sys.path:
    sys.path.insert(0, TESTS)
