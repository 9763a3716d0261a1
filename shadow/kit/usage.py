"""Token usage and cost of one case, as the agent contract's ``usage`` object.

The framework adapters (:mod:`shadow.kit.pydantic_ai`, :mod:`shadow.kit.openai_agents`,
:mod:`shadow.kit.langchain`) add each run's tokens, and its cost when the framework knows
it (pydantic-ai prices a response with ``genai-prices``; the OpenAI Agents SDK and LangChain
report tokens only). A handler that calls a model some other way adds its own with
:meth:`Case.add_usage <shadow.kit.Case.add_usage>`. Tokens without a cost are priced with
the service's :class:`Price` when one is given; otherwise the answer carries the tokens and
no ``cost_usd``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

__all__ = ["Price", "Usage"]


@dataclass(frozen=True, slots=True)
class Price:
    """What the model costs, in US dollars per million tokens, for the runs that report
    tokens but no cost: ``Price(input=0.25, output=2.0)``."""

    input: float
    output: float

    def __post_init__(self) -> None:
        for name in ("input", "output"):
            value = getattr(self, name)
            if not (isinstance(value, int | float) and math.isfinite(value) and value >= 0):
                raise ValueError(f"Price.{name} must be a finite number >= 0, got {value!r}")

    def cost(self, input_tokens: int, output_tokens: int) -> float:
        return (input_tokens * self.input + output_tokens * self.output) / 1_000_000


@dataclass(slots=True)
class Usage:
    """What one case's runs used. ``cost_usd`` sums the costs reported; the tokens of runs
    that reported none are also counted apart (``unpriced_*``), for :class:`Price`."""

    input_tokens: int = 0
    output_tokens: int = 0
    cost_usd: float = 0.0
    unpriced_input_tokens: int = 0
    unpriced_output_tokens: int = 0
    recorded: bool = False

    def add(
        self, input_tokens: int = 0, output_tokens: int = 0, cost_usd: float | None = None
    ) -> None:
        """Count one run (or one model request): its tokens, and its cost when known."""
        for name, value in (("input_tokens", input_tokens), ("output_tokens", output_tokens)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ValueError(f"{name} must be an integer >= 0, got {value!r}")
        if cost_usd is not None and not (math.isfinite(cost_usd) and cost_usd >= 0):
            raise ValueError(f"cost_usd must be a finite number >= 0, got {cost_usd!r}")
        self.recorded = True
        self.input_tokens += input_tokens
        self.output_tokens += output_tokens
        if cost_usd is None:
            self.unpriced_input_tokens += input_tokens
            self.unpriced_output_tokens += output_tokens
        else:
            self.cost_usd += float(cost_usd)

    def to_json(self, price: Price | None = None) -> dict[str, Any] | None:
        """The contract's ``usage`` object, or ``None`` when nothing was recorded. Its
        ``cost_usd`` is left out when some tokens have no cost and there is no price."""
        if not self.recorded:
            return None
        out: dict[str, Any] = {
            "input_tokens": self.input_tokens,
            "output_tokens": self.output_tokens,
        }
        unpriced = self.unpriced_input_tokens or self.unpriced_output_tokens
        if not unpriced:
            out["cost_usd"] = self.cost_usd
        elif price is not None:
            extra = price.cost(self.unpriced_input_tokens, self.unpriced_output_tokens)
            out["cost_usd"] = self.cost_usd + extra
        return out
