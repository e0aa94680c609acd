from __future__ import annotations

import struct

from hypothesis import given
from hypothesis import strategies as st

from detector.pricing import UNPRICED, Costs
from detector.schemas import Scope, UsageEvent
from detector.windows.counters import (
    METRICS,
    SINGLE_SCOPES,
    WIDTH,
    PricedEvent,
    _lanes,
    _values,
    entity_slots,
    event_vector,
    named_metrics,
    unpack_bucket,
    window_slot,
)


def make_event(**fields: object) -> UsageEvent:
    data: dict[str, object] = {"event_id": "e1", "ts_ms": 0, "tenant_id": "t1", "model": "gpt-4o"}
    data.update(fields)
    return UsageEvent.model_validate(data)


def make_costs(
    input_usd_micros: int = 0,
    output_usd_micros: int = 0,
    cached_read_usd_micros: int = 0,
    cache_creation_usd_micros: int = 0,
    unattributed_usd_micros: int = 0,
) -> Costs:
    total = (
        input_usd_micros
        + output_usd_micros
        + cached_read_usd_micros
        + cache_creation_usd_micros
        + unattributed_usd_micros
    )
    return Costs(
        input_usd_micros=input_usd_micros,
        output_usd_micros=output_usd_micros,
        cached_read_usd_micros=cached_read_usd_micros,
        cache_creation_usd_micros=cache_creation_usd_micros,
        unattributed_usd_micros=unattributed_usd_micros,
        total_usd_micros=total,
        computed_usd_micros=total,
        priced=True,
    )


def vector(**named: int) -> list[int]:
    return [named.get(metric, 0) for metric in METRICS]


def test_event_vector_of_a_full_event() -> None:
    event = make_event(
        input_tokens=1000,
        output_tokens=200,
        reasoning_tokens=50,
        cached_input_tokens=400,
        cache_creation_input_tokens=100,
    )
    costs = make_costs(
        input_usd_micros=1500,
        output_usd_micros=2500,
        cached_read_usd_micros=200,
        cache_creation_usd_micros=300,
    )
    assert event_vector(PricedEvent(event, costs)) == vector(
        cost_usd=4500,
        input_cost_usd=2000,  # uncached input + cache reads + cache writes
        output_cost_usd=2500,
        input_tokens=1000,
        output_tokens=250,  # reasoning tokens count as output
        cached_input_tokens=400,
        requests=1,
    )


def test_event_vector_of_an_empty_call_is_one_request() -> None:
    assert event_vector(PricedEvent(make_event(), make_costs())) == vector(requests=1)


def test_event_vector_counts_errors() -> None:
    got = event_vector(PricedEvent(make_event(status="error", output_tokens=3), make_costs()))
    assert got == vector(output_tokens=3, requests=1, errors=1)


def test_event_vector_counts_unpriced_requests() -> None:
    got = event_vector(PricedEvent(make_event(input_tokens=10), UNPRICED))
    assert got == vector(input_tokens=10, requests=1, unpriced_requests=1)


def test_unattributed_cost_counts_in_the_total_only() -> None:
    got = event_vector(PricedEvent(make_event(), make_costs(unattributed_usd_micros=700)))
    assert got == vector(cost_usd=700, requests=1)


def test_billed_and_table_cost_only_when_the_event_carries_cost() -> None:
    costs = Costs(
        input_usd_micros=600,
        output_usd_micros=400,
        cached_read_usd_micros=0,
        cache_creation_usd_micros=0,
        unattributed_usd_micros=0,
        total_usd_micros=1000,
        computed_usd_micros=900,
        priced=True,
    )
    with_cost = event_vector(PricedEvent(make_event(cost_usd=0.001), costs))
    assert with_cost[METRICS.index("billed_cost_usd")] == 1000
    assert with_cost[METRICS.index("table_cost_usd")] == 900
    without = event_vector(PricedEvent(make_event(), make_costs(600, 400)))
    assert without[METRICS.index("billed_cost_usd")] == 0


def test_named_metrics_converts_money_only() -> None:
    got = named_metrics(vector(cost_usd=1_750_000, requests=3, billed_cost_usd=1))
    assert got["cost_usd"] == 1.75 and got["requests"] == 3 and got["billed_cost_usd"] == 1e-6
    assert set(got) == set(METRICS)


@given(st.lists(st.integers(min_value=0, max_value=2**53), min_size=WIDTH, max_size=WIDTH))
def test_unpack_reads_what_bitfield_writes(values: list[int]) -> None:
    # BITFIELD i64 counters are big-endian signed 64-bit integers laid end to end.
    packed = struct.pack(f">{WIDTH}q", *values)
    assert unpack_bucket(packed) == values


def test_unpack_pads_a_short_value() -> None:
    packed = struct.pack(">2q", 7, 9)
    assert unpack_bucket(packed) == [7, 9] + [0] * (WIDTH - 2)


def test_window_slot_puts_global_under_its_own_tag() -> None:
    assert window_slot("acme", Scope.global_, "all") == ("det:win:{t:_global}:global:", None)
    assert window_slot("acme", Scope.session, "s1") == ("det:win:{t:acme}:", "session|s1")
    assert window_slot("acme", Scope.tenant, "acme") == ("det:win:{t:acme}:", "tenant")


def test_an_entity_id_with_the_separator_keeps_its_own_field() -> None:
    # Fields are `<scope>|<entity>`: an id holding "|" cannot be mistaken for another scope's.
    fields = {window_slot("t", scope, "a|b")[1] for scope in Scope if scope not in SINGLE_SCOPES}
    assert len(fields) == len(Scope) - len(SINGLE_SCOPES)


def test_entity_slots_match_window_slot_for_every_scope() -> None:
    event = make_event(user_id="u", feature="f", api_key_id="k", session_id="s:1")
    expected = [
        window_slot("t1", scope, entity)
        for scope in Scope
        if (entity := event.entity(scope)) is not None
    ]
    assert sorted(entity_slots(event), key=str) == sorted(expected, key=str)
    assert len(entity_slots(make_event())) == 3  # global, tenant, model


@given(
    st.lists(
        st.lists(st.integers(min_value=0, max_value=2**53), min_size=WIDTH, max_size=WIDTH),
        min_size=1,
        max_size=50,
    )
)
def test_lanes_add_every_counter_on_its_own(vectors: list[list[int]]) -> None:
    # The batch sums add vectors as lanes of one integer; the packed bytes must be exactly
    # the counter-wise sums in the bucket layout.
    total = sum(_lanes(v) for v in vectors)
    expected = [sum(column) for column in zip(*vectors, strict=True)]
    assert total.to_bytes(WIDTH * 8, "big") == struct.pack(f">{WIDTH}q", *expected)
    assert _values(total) == expected
