"""What a request costs: US dollars per million input and output tokens, per model.

Prices change; the table holds list prices of common models at the time of writing and a run's configuration
can add or override entries (`prices:` in the YAML config). A model without a price has an unknown cost, which
is reported as such rather than as zero.

OpenAI's Batch API bills half the standard price; the built-in entries carry that price, and an entry of the
configuration gives it as `batch_input`/`batch_output` (without them, a batch's cost is unknown, never guessed).
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

    def cost(self, prompt_tokens: int, completion_tokens: int) -> float:
        return (prompt_tokens * self.input + completion_tokens * self.output) / 1_000_000

    def batch(self) -> Price | None:
        """The price of the same tokens through the Batch API; None when unknown."""
        if self.batch_input is None or self.batch_output is None:
            return None
        return Price(input=self.batch_input, output=self.batch_output)


def _openai(input: float, output: float) -> Price:
    """A list price with OpenAI's Batch API discount: 50 %."""
    return Price(input=input, output=output, batch_input=input / 2, batch_output=output / 2)


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
}


def price_of(model: str, extra: dict[str, Price] | None = None, *, batch: bool = False) -> Price | None:
    """The price of `model`, from `extra` first; with `batch`, its Batch API price. None when unknown."""
    table = {**PRICES, **(extra or {})}
    price = table.get(model)
    if price is None or not batch:
        return price
    return price.batch()
