"""The settings of an annotation run, loadable from YAML; the CLI's flags override the file's values."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from melt.corpus.labels import MELT_LABEL_SET, LabelSet
from melt.llm.pricing import Price
from melt.settings import load_settings

#: The paper's model, asked of OpenAI-compatible servers when no --model is given.
DEFAULT_SERVER_MODEL = "gpt-4o-2024-08-06"

#: The answer formats to try, strongest first; a server that rejects one gets the next for the rest of the run.
RESPONSE_FORMATS: tuple[str, ...] = ("json_schema", "json_object", "text")


class AnnotateConfig(BaseModel):
    """Everything that decides what is asked, of whom, and how hard to try. Holds no secret: the API key is
    read from the environment variable `api_key_env` when the backend is made."""

    model_config = ConfigDict(extra="forbid")

    # Who answers.
    base_url: str | None = Field(None, description="OpenAI-compatible server, e.g. http://localhost:8000/v1")
    model: str | None = Field(
        None,
        description=f"server model name (default {DEFAULT_SERVER_MODEL}); offline: a .gguf path, else the bundled model",
    )
    api_key_env: str = "OPENAI_API_KEY"
    n_ctx: int | None = Field(
        None, ge=16, description="local models: fixed context size (default: fit the prompt)"
    )
    threads: int | None = Field(
        None, ge=1, description="local models: CPU threads (default: see docs/local.md, 'Threads')"
    )

    # What is asked.
    prompt: str = Field("melt", description="melt, dialogue, cot, or a template file")
    schema_kind: Literal["paper", "structured"] = "paper"
    context_turns: int = Field(5, ge=0)
    labels: LabelSet = Field(default_factory=lambda: MELT_LABEL_SET.model_copy())
    samples: int = Field(1, ge=1, description="answers per utterance")
    temperature: float | None = Field(1.0, ge=0, le=2, description="the paper's setting is 1.0")
    seed: int | None = Field(None, description="sample i is sent with seed + i")
    max_tokens: int = Field(800, ge=1)
    logprobs: bool = Field(True, description="ask for log probabilities (ignored by servers without them)")
    top_logprobs: int = Field(5, ge=0, le=20)
    response_format: Literal["auto", "json_schema", "json_object", "text"] = Field(
        "auto", description="auto: json_schema, falling back to json_object then text when the server refuses"
    )
    repair: bool = Field(True, description="re-ask once with the validation error when an answer is invalid")

    # A panel of simulated annotators (melt.annotate.panel): each utterance is asked of N annotators, each with
    # its own focus instruction and temperature, for one label each.
    panel: str | None = Field(
        None, description="scaling-ambiguity, or a panel YAML file (personas, temperatures, weights, N)"
    )
    annotators: int | None = Field(None, ge=1, le=1000, description="panel size N (default: the panel's own)")

    # The utterance's recording with the request (an input_audio content part; melt.annotate.audio).
    audio: bool = Field(False, description="send each utterance's audio (corpus column 'audio')")
    max_audio_seconds: float = Field(
        30.0, gt=0, le=3600, description="longest audio sent in one piece (Qwen2-Audio truncates beyond 30 s)"
    )
    long_audio: Literal["trim", "split"] = Field(
        "trim",
        description="audio longer than max_audio_seconds: trim (send its start) or split (consecutive pieces, "
        "all in the one message, at most 10)",
    )
    allow_ignored_audio: bool = Field(
        False,
        description="go on when the probe finds that the server ignores the audio (labels from text only)",
    )

    # How hard to try.
    concurrency: int = Field(
        8, ge=1, le=1024, description="most requests in flight (lowered on 429s and timeouts, then regained)"
    )
    timeout: float = Field(60.0, gt=0, description="seconds for one whole reply")
    max_retries: int = Field(6, ge=0, description="retries of one request after rate limits, 5xx, timeouts")
    backoff_base: float = Field(1.0, ge=0, description="first backoff in seconds, doubled on each retry")
    backoff_max: float = Field(
        60.0, ge=0, description="longest wait before a retry; a server asking for longer stops the run"
    )

    # What it may cost.
    max_cost: float | None = Field(None, ge=0, description="USD this invocation may spend")
    prices: dict[str, Price] = Field(
        default_factory=dict, description="model -> price, added to the built-in table"
    )
    audio_token_rates: dict[str, float] = Field(
        default_factory=dict,
        description="model -> audio input tokens per second of audio, added to the built-in table",
    )
    limit: int | None = Field(None, ge=1, description="annotate only the first N utterances")

    # Through OpenAI's Batch API (docs/annotate.md, "Batch API"): how the requests travel, not what they are,
    # so none of these is part of a run folder's identity.
    batch: bool = Field(
        False, description="send requests through OpenAI's Batch API: half price, within 24 h"
    )
    batch_wait: bool = Field(False, description="wait for the batches and finish in this invocation")
    batch_repair: Literal["batch", "live"] = Field(
        "batch", description="re-asks of invalid batch answers: in the next batch, or live at once"
    )
    batch_max_requests: int = Field(50_000, ge=1, description="requests per batch file (OpenAI's limit)")
    batch_max_bytes: int = Field(
        200_000_000, ge=1, description="bytes per batch file (OpenAI's limit: 200 MB)"
    )
    batch_poll: float = Field(
        10.0, gt=0, description="seconds before the first check of batches in progress with --wait"
    )
    batch_poll_max: float = Field(300.0, gt=0, description="longest wait between two checks, in seconds")

    @model_validator(mode="after")
    def _panel_settings(self) -> AnnotateConfig:
        if self.panel is not None and self.samples != 1:
            raise ValueError(
                "samples: a panel asks each annotator once; set the panel's size with annotators"
            )
        if self.panel is not None:
            # What a panel decides itself, from a settings file as from a flag: never silently ignored.
            for name in ("temperature", "prompt", "schema_kind"):
                if getattr(self, name) != type(self).model_fields[name].default:
                    raise ValueError(
                        f"{name}: does not apply to a panel (each annotator has its own temperature and answers "
                        "with the panel's template and one label; set them in a panel file)"
                    )
        if self.panel is None and self.annotators is not None:
            raise ValueError("annotators: sets the size of a panel; give the panel too (--panel)")
        if any(not (rate > 0) for rate in self.audio_token_rates.values()):
            raise ValueError("audio_token_rates: tokens per second must be positive")
        return self

    @field_validator("labels", mode="before")
    @classmethod
    def _labels_as_a_list(cls, value: Any) -> Any:
        return LabelSet.from_setting(value)

    @classmethod
    def load(
        cls, path: str | Path | None = None, *, recorded: dict[str, Any] | None = None, **overrides: Any
    ) -> AnnotateConfig:
        """The YAML file's settings (or the defaults), with `overrides` that are not None on top; `recorded`
        (the settings a run folder's run.json recorded) under both."""
        return load_settings(cls, path, under=recorded, what="annotation settings", **overrides)

    def public(self) -> dict[str, Any]:
        """The settings as recorded in run.json, so that `melt annotate RUN_DIR` continues the run from anywhere:
        a base URL without credentials (its query kept, as the folder's identity has it, credential-named values
        masked), and a panel file, template file or GGUF model given by a relative path made absolute."""
        from melt.annotate.panel import BUILTIN_PANELS
        from melt.prompts import BUILTIN_TEMPLATES, PANEL_TEMPLATES
        from melt.provenance import identity_url

        data = self.model_dump(mode="json")
        if self.base_url:
            data["base_url"] = identity_url(self.base_url)
        builtin = {"panel": BUILTIN_PANELS, "prompt": BUILTIN_TEMPLATES + PANEL_TEMPLATES}
        if str(self.model).endswith(".gguf"):  # a local model file; otherwise a server's model name
            builtin["model"] = ()
        for name, names in builtin.items():
            value = data.get(name)
            if isinstance(value, str) and value not in names and Path(value).expanduser().is_file():
                data[name] = str(Path(value).expanduser().resolve())
        return data
