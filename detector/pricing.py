"""Price one usage event: table lookup, then integer micro-dollars per part of the bill.

Token accounting follows OpenAI: `input_tokens` is the whole prompt, cached and cache-writing
tokens included, so uncached input = max(input_tokens - cached_input_tokens -
cache_creation_input_tokens, 0). `reasoning_tokens` are billed at the output price on top of
`output_tokens`, which must therefore exclude them.

Money is exact: each table price (a float in USD per token) is read as the decimal its JSON text
spells (`Decimal(repr(price))`), multiplied by the token count in `Decimal`, and each of the four
parts is rounded half-to-even to a whole micro-dollar only at the end. A gateway's `cost_usd` is
the truth when given: its parts are the table's mix of that total by largest remainder, so they
still add up to it exactly; a total nothing can be attributed to is `unattributed_usd_micros`.

The table is LiteLLM's format (model name -> fields in USD per token). An entry without both
`input_cost_per_token` and `output_cost_per_token` is skipped, as LiteLLM also lists aliases and
models priced per image or second; any price field that is present must be a number from 0 to
MAX_USD_PER_TOKEN, which catches a price per million tokens written where one per token belongs.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from decimal import ROUND_HALF_EVEN, Context, Decimal
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Any

from detector.errors import ConfigError
from detector.schemas import UsageEvent

INPUT_FIELD = "input_cost_per_token"
OUTPUT_FIELD = "output_cost_per_token"
CACHE_READ_FIELD = "cache_read_input_token_cost"
CACHE_CREATION_FIELD = "cache_creation_input_token_cost"
PRICE_FIELDS = (INPUT_FIELD, OUTPUT_FIELD, CACHE_READ_FIELD, CACHE_CREATION_FIELD)

# Prefixes gateways put before a model name (LiteLLM style), stripped when the full name misses:
# the vendor's own, and clouds that resell its models at its list price. Hosts with prices of
# their own (groq, fireworks, openrouter) are left alone, so their traffic shows up unpriced.
PROVIDER_PREFIXES = (
    "openai/", "azure/", "azure_ai/", "anthropic/", "bedrock/", "vertex_ai/", "gemini/",
    "mistral/", "deepseek/", "together_ai/",
)  # fmt: skip
# A per-token price this high is almost surely a price per million tokens typed in its place.
MAX_USD_PER_TOKEN = 0.01
_DATE_SUFFIX = re.compile(r"[-@](?:\d{8}|\d{4}-\d{2}-\d{2})$")
# Model names come from tenants' traffic, so the lookup cache is bounded, not a memory leak.
_LOOKUP_CACHE_MAX_ENTRIES = 65_536
# 28 digits (the default) would do for 17-digit prices times 10-digit counts; keep a margin.
_EXACT = Context(prec=60, rounding=ROUND_HALF_EVEN)
_MICROS_PER_USD_EXP = 6


@dataclass(frozen=True, slots=True)
class ModelPrice:
    """One model's prices in USD per token."""

    input_usd_per_token: float
    output_usd_per_token: float
    cache_read_usd_per_token: float  # the input price when the table lacks it
    cache_creation_usd_per_token: float  # the input price when the table lacks it


@dataclass(frozen=True, slots=True)
class Costs:
    """Integer micro-dollars, each part attributed separately; the parts sum to the total."""

    input_usd_micros: int  # uncached input tokens
    output_usd_micros: int  # output + reasoning tokens (reasoning billed as output)
    cached_read_usd_micros: int
    cache_creation_usd_micros: int
    unattributed_usd_micros: int  # a given cost_usd that no priced token explains
    total_usd_micros: int  # the event's cost_usd when given, else the computed sum
    computed_usd_micros: int | None  # what the table says (None when unpriced), for drift
    priced: bool  # False when neither cost_usd nor a table price exists


UNPRICED = Costs(0, 0, 0, 0, 0, 0, None, False)


class PriceTable:
    """Model name -> ModelPrice, with forgiving, cached lookups."""

    def __init__(self, prices: Mapping[str, ModelPrice]) -> None:
        self._prices = dict(prices)
        self._index: dict[str, ModelPrice] = {}
        for name, price in self._prices.items():
            key = name.lower()
            if key == name or key not in self._index:
                self._index[key] = price
        # A bare name also finds a prefixed entry ("mistral-large-latest"), unless it has its own.
        for name, price in self._prices.items():
            self._index.setdefault(_strip_provider_prefix(name.lower()), price)
        self._cache: dict[tuple[str, str | None], ModelPrice | None] = {}

    @classmethod
    def load(cls, override: Path | None = None) -> PriceTable:
        """The packaged table, with the entries of a LiteLLM-format override file on top."""
        packaged = resources.files("detector") / "data" / "prices.json"
        prices = parse_price_table(packaged.read_text(encoding="utf-8"), "prices.json")
        if override is not None:
            try:
                text = override.read_text(encoding="utf-8")
            except OSError as exc:
                raise ConfigError(f"{override.name}: cannot read: {exc.strerror}") from exc
            except UnicodeDecodeError as exc:
                raise ConfigError(f"{override.name}: not UTF-8 at byte {exc.start}") from exc
            prices.update(parse_price_table(text, override.name))
        return cls(prices)

    def __len__(self) -> int:
        return len(self._prices)

    def lookup(self, model: str, provider: str | None = None) -> ModelPrice | None:
        """The price of `model`, trying `provider/model` first, then looser spellings."""
        key = (model, provider)
        try:
            return self._cache[key]
        except KeyError:
            pass
        price = self._find(model, provider)
        if len(self._cache) >= _LOOKUP_CACHE_MAX_ENTRIES:
            self._cache.clear()
        self._cache[key] = price
        return price

    def _find(self, model: str, provider: str | None) -> ModelPrice | None:
        # A provider-qualified entry (say an override's "azure/gpt-4o") beats the bare model.
        if provider and (price := self._prices.get(f"{provider}/{model}")) is not None:
            return price
        if (price := self._prices.get(model)) is not None:
            return price
        for name in candidate_names(model, provider):
            if (price := self._index.get(name)) is not None:
                return price
        return None


def candidate_names(model: str, provider: str | None = None) -> list[str]:
    """Lower-case spellings to try in order: as given, without provider prefix, without date.

    >>> candidate_names("OpenAI/GPT-4o-2024-08-06")
    ['openai/gpt-4o-2024-08-06', 'gpt-4o-2024-08-06', 'gpt-4o']
    >>> candidate_names("claude-sonnet-4-5-20250929", "anthropic")[:2]
    ['anthropic/claude-sonnet-4-5-20250929', 'claude-sonnet-4-5-20250929']
    """
    lowered = model.lower()
    bare = _strip_provider_prefix(lowered)
    stems = dict.fromkeys((lowered, bare, _DATE_SUFFIX.sub("", bare)))
    qualifier = f"{provider.lower()}/" if provider else ""
    names: list[str] = []
    for stem in stems:
        if qualifier:
            names.append(qualifier + stem)
        names.append(stem)
    return names


def _strip_provider_prefix(name: str) -> str:
    while name.startswith(PROVIDER_PREFIXES):
        name = name.split("/", 1)[1]
    return name


def parse_price_table(text: str, source: str) -> dict[str, ModelPrice]:
    """Parse LiteLLM-format JSON; raise ConfigError naming `source`, the model and the field."""
    try:
        data: Any = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{source}: not valid JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: expected an object of model name -> prices at the top")
    prices: dict[str, ModelPrice] = {}
    for model, entry in data.items():
        if model == "sample_spec":  # LiteLLM's field documentation, not a model
            continue
        if not isinstance(entry, dict):
            raise ConfigError(f"{source}: {model!r}: must be an object, got {entry!r}")
        found: dict[str, float] = {}
        for field in PRICE_FIELDS:
            if field in entry:
                found[field] = _price_value(entry[field], f"{source}: {model!r}.{field}")
        if INPUT_FIELD not in found or OUTPUT_FIELD not in found:
            continue
        input_price = found[INPUT_FIELD]
        prices[model] = ModelPrice(
            input_usd_per_token=input_price,
            output_usd_per_token=found[OUTPUT_FIELD],
            cache_read_usd_per_token=found.get(CACHE_READ_FIELD, input_price),
            cache_creation_usd_per_token=found.get(CACHE_CREATION_FIELD, input_price),
        )
    return prices


def _price_value(value: object, where: str) -> float:
    if isinstance(value, int | float) and not isinstance(value, bool):
        if 0 <= value <= MAX_USD_PER_TOKEN:
            return float(value)
    raise ConfigError(
        f"{where}: must be a number of USD per token from 0 to {MAX_USD_PER_TOKEN}, got {value!r}"
    )


def usd_to_micros(usd: float) -> int:
    """Whole micro-dollars, half to even, from the decimal the float spells (not its binary).

    >>> usd_to_micros(0.0002535), round(0.0002535 * 1e6)
    (254, 253)
    """
    return int(Decimal(repr(usd)).scaleb(_MICROS_PER_USD_EXP).to_integral_value(ROUND_HALF_EVEN))


def allocate(total: int, weights: Sequence[int]) -> list[int]:
    """Split `total` in proportion to `weights` (sum > 0) by largest remainder; ties go left.

    >>> allocate(10, [1, 1, 1])
    [4, 3, 3]
    >>> allocate(7, [0, 5, 0, 1])
    [0, 6, 0, 1]
    """
    weight_sum = sum(weights)
    shares = [divmod(total * w, weight_sum) for w in weights]
    parts = [quotient for quotient, _ in shares]
    # Remainders are each < weight_sum and add up to short * weight_sum, so more than `short`
    # of them are positive and a zero-weight part never receives a micro-dollar.
    short = total - sum(parts)
    by_remainder = sorted(range(len(weights)), key=lambda i: (-shares[i][1], i))
    for i in by_remainder[:short]:
        parts[i] += 1
    return parts


@lru_cache(maxsize=4096)
def _micros_per_token(price: ModelPrice) -> tuple[tuple[int, int, int, int], int]:
    """The four rates in micro-dollars per token as integers over one power of ten:
    rate_i = numerators[i] / scale, exactly (from the decimals the floats spell)."""
    rates = (
        price.input_usd_per_token,
        price.output_usd_per_token,
        price.cache_read_usd_per_token,
        price.cache_creation_usd_per_token,
    )
    exact = [Decimal(repr(r)).scaleb(_MICROS_PER_USD_EXP, _EXACT) for r in rates]
    exponent = min(min(int(d.as_tuple().exponent) for d in exact), 0)
    a, b, c, d = (int(x.scaleb(-exponent, _EXACT)) for x in exact)
    return (a, b, c, d), 10**-exponent


def exact_parts_micros(event: UsageEvent, price: ModelPrice) -> tuple[list[int], int]:
    """Unrounded micro-dollars for input, output, cache read and cache creation, in that order,
    as integers over a common scale (part_i = numerators[i] / scale, exactly)."""
    uncached = event.input_tokens - event.cached_input_tokens - event.cache_creation_input_tokens
    (a, b, c, d), scale = _micros_per_token(price)
    return [
        max(uncached, 0) * a,
        (event.output_tokens + event.reasoning_tokens) * b,
        event.cached_input_tokens * c,
        event.cache_creation_input_tokens * d,
    ], scale


def _round_half_even(numerator: int, scale: int) -> int:
    """numerator / scale rounded to an integer, half to even.

    >>> [_round_half_even(n, 10) for n in (14, 15, 25, 26)]
    [1, 2, 2, 3]
    """
    quotient, remainder = divmod(numerator, scale)
    twice = 2 * remainder
    if twice > scale or (twice == scale and quotient % 2 == 1):
        quotient += 1
    return quotient


def price_event(event: UsageEvent, table: PriceTable) -> Costs:
    """What one event cost, split into parts; see the module docstring for the accounting."""
    price = table.lookup(event.model, event.provider)
    given = None if event.cost_usd is None else usd_to_micros(event.cost_usd)
    if price is None:
        return UNPRICED if given is None else _unattributed(given, None)
    weights, scale = exact_parts_micros(event, price)
    rounded = [_round_half_even(w, scale) for w in weights]
    computed = rounded[0] + rounded[1] + rounded[2] + rounded[3]
    if given is None or given == computed:
        parts = rounded
    else:
        if not any(weights):
            return _unattributed(given, computed)
        parts = allocate(given, weights)
    return Costs(
        input_usd_micros=parts[0],
        output_usd_micros=parts[1],
        cached_read_usd_micros=parts[2],
        cache_creation_usd_micros=parts[3],
        unattributed_usd_micros=0,
        total_usd_micros=computed if given is None else given,
        computed_usd_micros=computed,
        priced=True,
    )


def _unattributed(total_usd_micros: int, computed_usd_micros: int | None) -> Costs:
    return Costs(0, 0, 0, 0, total_usd_micros, total_usd_micros, computed_usd_micros, True)
