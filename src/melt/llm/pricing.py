"""What a request costs: US dollars per million input and output tokens, per model; and how many tokens a
second of audio makes, per model.

Prices change; the table holds list prices of common models at the time of writing and a run's configuration
can add or override entries (`prices:` in the YAML config). A model without a price has an unknown cost, which
is reported as such rather than as zero.

OpenAI's Batch API bills half the standard price; the built-in entries carry that price, and an entry of the
configuration gives it as `batch_input`/`batch_output` (without them, a batch's cost is unknown, never guessed).
Audio input tokens may have their own price (`audio_input`, halved in a batch too); without one they cost what
text input tokens cost.

Audio token rates (`AUDIO_TOKEN_RATES`, `audio_token_rates:` in the config to add or override) are what a
dry run needs to count the tokens of the audio it would send; each figure below names its source. A model
without a rate has an unknown audio token count, reported as such.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


class Price(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    input: float = Field(ge=0, description="USD per million prompt tokens")
    output: float = Field(ge=0, description="USD per million completion tokens")
    batch_input: float | None = Field(
        None, ge=0, description="USD per million prompt tokens through the Batch API"
    )
    batch_output: float | None = Field(
        None, ge=0, description="USD per million completion tokens through the Batch API"
    )
    audio_input: float | None = Field(
        None, ge=0, description="USD per million prompt tokens of audio (default: the input price)"
    )

    def cost(self, prompt_tokens: int, completion_tokens: int, audio_tokens: int = 0) -> float:
        """USD for `prompt_tokens` (of which `audio_tokens` are audio) and `completion_tokens`."""
        audio = min(audio_tokens, prompt_tokens)
        audio_price = self.input if self.audio_input is None else self.audio_input
        return (
            (prompt_tokens - audio) * self.input + audio * audio_price + completion_tokens * self.output
        ) / 1e6

    def batch(self) -> Price | None:
        """The price of the same tokens through the Batch API; None when unknown."""
        if self.batch_input is None or self.batch_output is None:
            return None
        audio = self.audio_input
        if audio is not None and self.input > 0:  # the batch discount of text input applies to audio too
            audio *= self.batch_input / self.input
        return Price(input=self.batch_input, output=self.batch_output, audio_input=audio)


def _openai(input: float, output: float, audio_input: float | None = None) -> Price:
    """A list price with OpenAI's Batch API discount: 50 %."""
    return Price(
        input=input, output=output, batch_input=input / 2, batch_output=output / 2, audio_input=audio_input
    )


#: OpenAI list prices (standard tier) in USD per million tokens, with their Batch API prices.
PRICES: dict[str, Price] = {
    "gpt-4o-2024-08-06": _openai(2.50, 10.00),
    "gpt-4o-2024-11-20": _openai(2.50, 10.00),
    "gpt-4o-2024-05-13": _openai(5.00, 15.00),
    "gpt-4o": _openai(2.50, 10.00),
    "gpt-4o-mini-2024-07-18": _openai(0.15, 0.60),
    "gpt-4o-mini": _openai(0.15, 0.60),
    "gpt-4.1": _openai(2.00, 8.00),
    "gpt-4.1-mini": _openai(0.40, 1.60),
    "gpt-4.1-nano": _openai(0.10, 0.40),
    # Audio models (developers.openai.com/api/docs/models/<model>): text tokens as above, audio input tokens dearer.
    "gpt-4o-audio-preview": _openai(2.50, 10.00, audio_input=40.00),
    "gpt-4o-audio-preview-2024-12-17": _openai(2.50, 10.00, audio_input=40.00),
    "gpt-4o-audio-preview-2025-06-03": _openai(2.50, 10.00, audio_input=40.00),
    "gpt-4o-mini-audio-preview": _openai(0.15, 0.60, audio_input=10.00),
    "gpt-4o-mini-audio-preview-2024-12-17": _openai(0.15, 0.60, audio_input=10.00),
    "gpt-audio": _openai(2.50, 10.00, audio_input=32.00),
    "gpt-audio-2025-08-28": _openai(2.50, 10.00, audio_input=32.00),
}


class AudioRate(BaseModel):
    """How many prompt tokens a second of input audio makes for a model, and where the figure comes from."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    tokens_per_second: float = Field(gt=0)
    source: str = "the run's configuration"


_OPENAI_AUDIO = (
    "OpenAI, 'Managing costs' (developers.openai.com/api/docs/guides/realtime-costs): audio in user messages is "
    "1 token per 100 ms"
)
_QWEN2_AUDIO = (
    "Qwen2-Audio-7B-Instruct's preprocessor_config.json (30 s = 3000 mel frames) and config.json (encoder "
    "max_source_positions 1500, pooled by 2): 750 tokens per 30 s"
)
_QWEN25_OMNI = "Qwen2.5-Omni technical report: one audio token per 40 ms of audio"
_GEMINI = "Google, 'Understand and count tokens' (ai.google.dev/gemini-api/docs/tokens): 32 tokens per second of audio"

#: Audio input tokens per second of audio, per model (the names a server is asked for).
AUDIO_TOKEN_RATES: dict[str, AudioRate] = {
    **{name: AudioRate(tokens_per_second=10.0, source=_OPENAI_AUDIO) for name in PRICES if "audio" in name},
    **{
        name: AudioRate(tokens_per_second=25.0, source=_QWEN2_AUDIO)
        for name in ("Qwen/Qwen2-Audio-7B-Instruct", "Qwen/Qwen2-Audio-7B")
    },
    **{
        name: AudioRate(tokens_per_second=25.0, source=_QWEN25_OMNI)
        for name in ("Qwen/Qwen2.5-Omni-7B", "Qwen/Qwen2.5-Omni-3B")
    },
    **{
        name: AudioRate(tokens_per_second=32.0, source=_GEMINI)
        for name in ("gemini-2.5-pro", "gemini-2.5-flash", "gemini-2.5-flash-lite", "gemini-2.0-flash")
    },
}


def price_of(model: str, extra: dict[str, Price] | None = None, *, batch: bool = False) -> Price | None:
    """The price of `model`, from `extra` first; with `batch`, its Batch API price. None when unknown."""
    table = {**PRICES, **(extra or {})}
    price = table.get(model)
    if price is None or not batch:
        return price
    return price.batch()


def audio_rate_of(model: str, extra: dict[str, float] | None = None) -> AudioRate | None:
    """Audio tokens per second of `model`, from `extra` (tokens per second, from the configuration) first; None
    when unknown."""
    if extra and model in extra:
        return AudioRate(tokens_per_second=extra[model])
    return AUDIO_TOKEN_RATES.get(model)
