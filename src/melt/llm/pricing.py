"""What a request costs: US dollars per million input and output tokens, per model.

Prices change; the table holds list prices of common models at the time of writing and a run's configuration
can add or override entries (`prices:` in the YAML config). A model without a price has an unknown cost, which
is reported as such rather than as zero.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


class Price(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    input: float = Field(ge=0, description="USD per million prompt tokens")
    output: float = Field(ge=0, description="USD per million completion tokens")

    def cost(self, prompt_tokens: int, completion_tokens: int) -> float:
        return (prompt_tokens * self.input + completion_tokens * self.output) / 1_000_000


#: OpenAI list prices (standard tier, not Batch) in USD per million tokens.
PRICES: dict[str, Price] = {
    "gpt-4o-2024-08-06": Price(input=2.50, output=10.00),
    "gpt-4o-2024-11-20": Price(input=2.50, output=10.00),
    "gpt-4o-2024-05-13": Price(input=5.00, output=15.00),
    "gpt-4o": Price(input=2.50, output=10.00),
    "gpt-4o-mini-2024-07-18": Price(input=0.15, output=0.60),
    "gpt-4o-mini": Price(input=0.15, output=0.60),
    "gpt-4.1": Price(input=2.00, output=8.00),
    "gpt-4.1-mini": Price(input=0.40, output=1.60),
    "gpt-4.1-nano": Price(input=0.10, output=0.40),
}


def price_of(model: str, extra: dict[str, Price] | None = None) -> Price | None:
    """The price of `model`, from `extra` first; None when unknown."""
    table = {**PRICES, **(extra or {})}
    return table.get(model)
