"""melt: annotate speech-emotion corpora with language models and check the labels.

The command line (`melt`) is a thin layer over this API; see the README for a tour.
"""

from melt.errors import MeltError

__version__ = "0.1.0"
__all__ = ["MeltError", "__version__"]
