from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from detector import pricing
from detector.errors import ConfigError
from detector.pricing import UNPRICED, Costs, ModelPrice, PriceTable, price_event
from detector.schemas import UsageEvent

PRICES_DIR = Path(__file__).resolve().parent.parent / "data" / "prices"
MILLION = 1_000_000

EventFactory = Callable[..., UsageEvent]


@pytest.fixture(scope="module")
def table() -> PriceTable:
    return PriceTable.load()


def make_event(**fields: object) -> UsageEvent:
    data: dict[str, object] = {"event_id": "e1", "ts_ms": 0, "tenant_id": "t1", "model": "gpt-4o"}
    data.update(fields)
    return UsageEvent.model_validate(data)


@pytest.fixture
def event_factory() -> EventFactory:
    return make_event


def parts_sum(costs: Costs) -> int:
    return (
        costs.input_usd_micros
        + costs.output_usd_micros
        + costs.cached_read_usd_micros
        + costs.cache_creation_usd_micros
        + costs.unattributed_usd_micros
    )


def test_packaged_table_size_and_gpt_4o_price(table: PriceTable) -> None:
    assert 80 <= len(table) <= 250
    assert table.lookup("gpt-4o") == ModelPrice(2.5e-06, 1e-05, 1.25e-06, 2.5e-06)


def test_gpt_4o_one_million_tokens_each_way(table: PriceTable, event_factory: EventFactory) -> None:
    costs = price_event(event_factory(input_tokens=MILLION, output_tokens=MILLION), table)
    assert costs == Costs(
        input_usd_micros=2_500_000,
        output_usd_micros=10_000_000,
        cached_read_usd_micros=0,
        cache_creation_usd_micros=0,
        unattributed_usd_micros=0,
        total_usd_micros=12_500_000,
        computed_usd_micros=12_500_000,
        priced=True,
    )


def test_cached_tokens_are_part_of_input_and_billed_at_cache_read_price(
    table: PriceTable, event_factory: EventFactory
) -> None:
    event = event_factory(input_tokens=1_000, cached_input_tokens=400)
    costs = price_event(event, table)
    assert (costs.input_usd_micros, costs.cached_read_usd_micros) == (1_500, 500)
    assert costs.total_usd_micros == 2_000


def test_cache_creation_billed_apart_from_uncached_input(
    table: PriceTable, event_factory: EventFactory
) -> None:
    event = event_factory(
        model="claude-sonnet-4-5",
        input_tokens=10_000,
        cached_input_tokens=2_000,
        cache_creation_input_tokens=3_000,
        output_tokens=100,
    )
    costs = price_event(event, table)
    assert costs.input_usd_micros == 5_000 * 3  # $3 per 1M uncached input
    assert costs.cached_read_usd_micros == 2_000 * 3 // 10  # $0.30 per 1M
    assert costs.cache_creation_usd_micros == 3_000 * 375 // 100  # $3.75 per 1M
    assert costs.output_usd_micros == 100 * 15
    assert costs.total_usd_micros == 15_000 + 600 + 11_250 + 1_500


def test_uncached_input_never_negative(table: PriceTable, event_factory: EventFactory) -> None:
    event = event_factory(input_tokens=100, cached_input_tokens=1_000)
    costs = price_event(event, table)
    assert (costs.input_usd_micros, costs.cached_read_usd_micros) == (0, 1_250)


def test_missing_cache_prices_default_to_input_price(table: PriceTable) -> None:
    price = table.lookup("gemini-2.5-pro")
    assert price is not None
    assert price.cache_read_usd_per_token == 1.25e-07
    assert price.cache_creation_usd_per_token == price.input_usd_per_token == 1.25e-06


def test_reasoning_tokens_billed_as_output(table: PriceTable, event_factory: EventFactory) -> None:
    event = event_factory(model="o3", output_tokens=100, reasoning_tokens=900)
    costs = price_event(event, table)
    assert costs.output_usd_micros == 1_000 * 8  # o3: $8 per 1M output tokens
    assert costs.total_usd_micros == 8_000


@pytest.mark.parametrize(
    ("input_tokens", "input_usd_micros"),
    [(1, 0), (3, 0), (5, 1), (10, 2), (30, 4), (70, 10)],  # 0.15 micro-dollars a token
)
def test_each_part_rounds_half_to_even(
    table: PriceTable, event_factory: EventFactory, input_tokens: int, input_usd_micros: int
) -> None:
    costs = price_event(event_factory(model="gpt-4o-mini", input_tokens=input_tokens), table)
    assert costs.input_usd_micros == input_usd_micros


def test_large_counts_have_no_float_drift(table: PriceTable, event_factory: EventFactory) -> None:
    event = event_factory(input_tokens=999_999_999, output_tokens=999_999_999)
    costs = price_event(event, table)
    assert costs.input_usd_micros == 2_499_999_998  # exactly 2_499_999_997.5, half to even
    assert costs.output_usd_micros == 9_999_999_990


def test_cost_usd_matching_the_table_keeps_the_table_parts(
    table: PriceTable, event_factory: EventFactory
) -> None:
    event = event_factory(input_tokens=1_000, cached_input_tokens=400, cost_usd=0.002)
    costs = price_event(event, table)
    assert (costs.input_usd_micros, costs.cached_read_usd_micros) == (1_500, 500)
    assert costs.total_usd_micros == costs.computed_usd_micros == 2_000


def test_cost_usd_is_the_truth_and_computed_is_kept(
    table: PriceTable, event_factory: EventFactory
) -> None:
    event = event_factory(input_tokens=MILLION, output_tokens=MILLION, cost_usd=25.0)
    costs = price_event(event, table)
    assert costs == Costs(
        input_usd_micros=5_000_000,
        output_usd_micros=20_000_000,
        cached_read_usd_micros=0,
        cache_creation_usd_micros=0,
        unattributed_usd_micros=0,
        total_usd_micros=25_000_000,
        computed_usd_micros=12_500_000,
        priced=True,
    )


def test_cost_usd_split_by_largest_remainder(
    table: PriceTable, event_factory: EventFactory
) -> None:
    # Table: input 2.5, output 10, cache read 1.25 micro-dollars; the gateway says 20.
    event = event_factory(input_tokens=2, cached_input_tokens=1, output_tokens=1, cost_usd=2e-05)
    costs = price_event(event, table)
    assert costs.computed_usd_micros == 2 + 10 + 1  # each part rounded half to even
    # Quotas 3.64, 14.55 and 1.82: floors take 18, the two largest remainders get the rest.
    assert (costs.input_usd_micros, costs.output_usd_micros, costs.cached_read_usd_micros) == (
        4,
        14,
        2,
    )
    assert costs.total_usd_micros == parts_sum(costs) == 20


def test_cost_usd_with_no_priced_tokens_is_unattributed(
    table: PriceTable, event_factory: EventFactory
) -> None:
    costs = price_event(event_factory(cost_usd=0.01), table)
    assert costs == Costs(0, 0, 0, 0, 10_000, 10_000, 0, True)


def test_unpriced_model_without_cost_usd(table: PriceTable, event_factory: EventFactory) -> None:
    costs = price_event(event_factory(model="acme-llm-1", input_tokens=1_000), table)
    assert costs == UNPRICED
    assert costs == Costs(0, 0, 0, 0, 0, 0, None, False)


def test_unpriced_model_with_cost_usd_is_unattributed(
    table: PriceTable, event_factory: EventFactory
) -> None:
    event = event_factory(model="acme-llm-1", input_tokens=1_000, cost_usd=0.0123456)
    costs = price_event(event, table)
    assert costs == Costs(0, 0, 0, 0, 12_346, 12_346, None, True)


@pytest.mark.parametrize(
    ("model", "provider", "expected"),
    [
        ("openai/gpt-4o", None, "gpt-4o"),
        ("GPT-4o", None, "gpt-4o"),
        ("azure/gpt-4o-2024-08-06", None, "gpt-4o-2024-08-06"),
        ("gpt-4.1-2099-01-01", None, "gpt-4.1"),
        ("claude-sonnet-4-5-20250929", None, "claude-sonnet-4-5-20250929"),
        ("claude-haiku-4-5-20991231", "anthropic", "claude-haiku-4-5"),
        ("anthropic/Claude-Opus-4-5", None, "claude-opus-4-5"),
        ("gemini-2.5-flash", "gemini", "gemini/gemini-2.5-flash"),
        ("vertex_ai/gemini-2.5-pro", None, "gemini-2.5-pro"),
        ("mistral-large-latest", "mistral", "mistral/mistral-large-latest"),
        ("mistral-large-latest", None, "mistral/mistral-large-latest"),
        (
            "meta-llama/Llama-3.3-70B-Instruct-Turbo",
            "together_ai",
            "together_ai/meta-llama/Llama-3.3-70B-Instruct-Turbo",
        ),
        ("deepseek-chat", None, "deepseek-chat"),
    ],
)
def test_lookup_normalises_names(
    table: PriceTable, model: str, provider: str | None, expected: str
) -> None:
    found = table.lookup(model, provider)
    assert found is not None
    assert found == table.lookup(expected)


def test_lookup_dated_entry_wins_over_undated(table: PriceTable) -> None:
    dated = table.lookup("gpt-4o-2024-05-13")
    assert dated is not None
    assert dated != table.lookup("gpt-4o")
    assert dated.input_usd_per_token == 5e-06


@pytest.mark.parametrize("model", ["acme-llm-1", "groq/llama-3.3-70b", "20250929", ""])
def test_lookup_unknown_model(table: PriceTable, model: str) -> None:
    assert table.lookup(model) is None


def test_lookup_cache_is_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(pricing, "_LOOKUP_CACHE_MAX_ENTRIES", 4)
    fresh = PriceTable.load()
    for i in range(10):
        assert fresh.lookup(f"unknown-{i}") is None
    assert fresh.lookup("GPT-4o") is fresh.lookup("GPT-4o") is fresh.lookup("gpt-4o")
    assert len(fresh._cache) <= 4


def test_override_replaces_and_extends(event_factory: EventFactory) -> None:
    packaged = PriceTable.load()
    table = PriceTable.load(PRICES_DIR / "override.json")
    assert len(table) == len(packaged) + 2  # azure/gpt-4o and acme-llm-1; no image, no spec
    assert table.lookup("gpt-4o") == ModelPrice(2e-06, 8e-06, 2e-06, 2e-06)
    assert table.lookup("acme-llm-1") == ModelPrice(1e-06, 3e-06, 1e-07, 1.25e-06)
    assert table.lookup("acme-image-1") is None
    assert table.lookup("sample_spec") is None
    costs = price_event(event_factory(input_tokens=MILLION, output_tokens=MILLION), table)
    assert costs.total_usd_micros == 10_000_000


def test_provider_qualified_entry_wins_for_that_provider() -> None:
    table = PriceTable.load(PRICES_DIR / "override.json")
    azure = table.lookup("gpt-4o", "azure")
    assert azure == ModelPrice(2.75e-06, 1.1e-05, 1.375e-06, 2.75e-06)
    assert table.lookup("gpt-4o", "openai") == table.lookup("gpt-4o") != azure


@pytest.mark.parametrize(
    ("file_name", "message"),
    [
        (
            "negative_price.json",
            "negative_price.json: 'gpt-4o'.input_cost_per_token: "
            "must be a number of USD per token from 0 to 0.01, got -2.5e-06",
        ),
        (
            "string_price.json",
            "string_price.json: 'claude-sonnet-4-5'.output_cost_per_token: "
            "must be a number of USD per token from 0 to 0.01, got '1.5e-05'",
        ),
        (
            "per_million_price.json",
            "per_million_price.json: 'acme-llm-1'.input_cost_per_token: "
            "must be a number of USD per token from 0 to 0.01, got 2.5",
        ),
        (
            "bool_price.json",
            "bool_price.json: 'gpt-4.1'.cache_read_input_token_cost: "
            "must be a number of USD per token from 0 to 0.01, got True",
        ),
        (
            "entry_not_object.json",
            "entry_not_object.json: 'gpt-4o': must be an object, got 2.5e-06",
        ),
        (
            "top_level_list.json",
            "top_level_list.json: expected an object of model name -> prices at the top",
        ),
        (
            "not_json.json",
            "not_json.json: not valid JSON: "
            "Expecting property name enclosed in double quotes: line 2 column 78 (char 79)",
        ),
        ("missing.json", "missing.json: cannot read: No such file or directory"),
    ],
)
def test_bad_override_file(file_name: str, message: str) -> None:
    with pytest.raises(ConfigError) as exc:
        PriceTable.load(PRICES_DIR / file_name)
    assert str(exc.value) == message


MODELS = ("gpt-4o", "gpt-4o-mini", "o3", "claude-sonnet-4-5", "gemini-2.5-flash", "nope-1")
TOKENS = st.one_of(st.integers(0, 5), st.integers(0, 10**9))


@settings(max_examples=1_000, deadline=None, database=None)
@given(
    model=st.sampled_from(MODELS),
    input_tokens=TOKENS,
    output_tokens=TOKENS,
    cached_input_tokens=TOKENS,
    reasoning_tokens=TOKENS,
    cache_creation_input_tokens=TOKENS,
    cost_usd=st.none() | st.floats(0, 1e6, allow_nan=False, allow_infinity=False),
)
def test_parts_always_sum_to_total(table: PriceTable, **fields: object) -> None:
    event = make_event(**fields)
    costs = price_event(event, table)
    parts = (
        costs.input_usd_micros,
        costs.output_usd_micros,
        costs.cached_read_usd_micros,
        costs.cache_creation_usd_micros,
        costs.unattributed_usd_micros,
    )
    assert sum(parts) == costs.total_usd_micros
    assert min(parts) >= 0
    assert costs.priced == (event.cost_usd is not None or event.model != "nope-1")
    if costs.computed_usd_micros is None:
        assert parts[:4] == (0, 0, 0, 0)
    elif event.cost_usd is None:
        assert costs.total_usd_micros == costs.computed_usd_micros
        assert costs.unattributed_usd_micros == 0
    else:
        uncached = (
            event.input_tokens - event.cached_input_tokens - event.cache_creation_input_tokens
        )
        # A part with no tokens never receives any of the given total.
        assert uncached > 0 or costs.input_usd_micros == 0
        assert event.cached_input_tokens > 0 or costs.cached_read_usd_micros == 0
        assert event.cache_creation_input_tokens > 0 or costs.cache_creation_usd_micros == 0


def _decimal_parts(event: UsageEvent, price: ModelPrice) -> list[int]:
    """The parts as the accounting defines them, computed independently in Decimal."""
    from decimal import ROUND_HALF_EVEN, Decimal, localcontext

    uncached = event.input_tokens - event.cached_input_tokens - event.cache_creation_input_tokens
    tokens = (
        max(uncached, 0),
        event.output_tokens + event.reasoning_tokens,
        event.cached_input_tokens,
        event.cache_creation_input_tokens,
    )
    rates = (
        price.input_usd_per_token,
        price.output_usd_per_token,
        price.cache_read_usd_per_token,
        price.cache_creation_usd_per_token,
    )
    with localcontext() as ctx:
        ctx.prec = 80
        return [
            int((Decimal(n) * Decimal(repr(r)) * MILLION).to_integral_value(ROUND_HALF_EVEN))
            for n, r in zip(tokens, rates, strict=True)
        ]


@settings(max_examples=1_000, deadline=None, database=None)
@given(
    model=st.sampled_from([m for m in MODELS if m != "nope-1"]),
    input_tokens=TOKENS,
    output_tokens=TOKENS,
    cached_input_tokens=TOKENS,
    reasoning_tokens=TOKENS,
    cache_creation_input_tokens=TOKENS,
)
def test_integer_parts_equal_an_independent_decimal_computation(
    table: PriceTable, **fields: object
) -> None:
    event = make_event(**fields)
    price = table.lookup(event.model, event.provider)
    assert price is not None
    costs = price_event(event, table)
    expected = _decimal_parts(event, price)
    assert [
        costs.input_usd_micros,
        costs.output_usd_micros,
        costs.cached_read_usd_micros,
        costs.cache_creation_usd_micros,
    ] == expected
    assert costs.total_usd_micros == sum(expected)
