from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from detector.pricing import UNPRICED, Costs
from detector.schemas import UsageEvent
from detector.windows.counters import METRIC_FIELDS, PricedEvent, event_metrics, sum_buckets


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


def test_event_metrics_of_a_full_event() -> None:
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
    assert event_metrics(PricedEvent(event, costs)) == {
        "c": 4500,
        "ci": 2000,  # uncached input + cache reads + cache writes
        "co": 2500,
        "ti": 1000,
        "to": 250,  # reasoning tokens count as output
        "tc": 400,
        "r": 1,
    }


def test_event_metrics_leave_zeros_out() -> None:
    assert event_metrics(PricedEvent(make_event(), make_costs())) == {"r": 1}


def test_event_metrics_count_errors() -> None:
    got = event_metrics(PricedEvent(make_event(status="error", output_tokens=3), make_costs()))
    assert got == {"to": 3, "r": 1, "e": 1}


def test_event_metrics_count_unpriced_requests() -> None:
    got = event_metrics(PricedEvent(make_event(input_tokens=10), UNPRICED))
    assert got == {"ti": 10, "r": 1, "u": 1}


def test_unattributed_cost_counts_in_the_total_only() -> None:
    got = event_metrics(PricedEvent(make_event(), make_costs(unattributed_usd_micros=700)))
    assert got == {"c": 700, "r": 1}


def test_event_metrics_fields_are_all_known() -> None:
    event = make_event(input_tokens=1, output_tokens=1, cached_input_tokens=1, status="error")
    got = event_metrics(PricedEvent(event, make_costs(1, 1)))
    assert set(got) <= set(METRIC_FIELDS.values())


def test_sum_buckets_empty_gives_zero_for_every_metric() -> None:
    assert sum_buckets([]) == dict.fromkeys(METRIC_FIELDS, 0)


def test_sum_buckets_adds_fields_and_converts_money() -> None:
    got = sum_buckets(
        [
            {b"c": b"1500000", b"ci": b"500000", b"co": b"1000000", b"r": b"2", b"ti": b"70"},
            {b"c": b"250000", b"r": b"1", b"e": b"1", b"u": b"1", b"to": b"9", b"tc": b"4"},
        ]
    )
    assert got == {
        "cost_usd": 1.75,
        "input_cost_usd": 0.5,
        "output_cost_usd": 1.0,
        "input_tokens": 70,
        "output_tokens": 9,
        "cached_input_tokens": 4,
        "requests": 3,
        "errors": 1,
        "unpriced_requests": 1,
    }


def test_sum_buckets_ignores_unknown_fields() -> None:
    got = sum_buckets([{b"zz": b"99", b"r": b"1"}])
    assert got["requests"] == 1
    assert "zz" not in got
    assert set(got) == set(METRIC_FIELDS)


def test_sum_buckets_keeps_micro_dollars_exact() -> None:
    assert sum_buckets([{b"c": b"1"}])["cost_usd"] == 0.000001
    assert sum_buckets([{b"c": b"123456789"}])["cost_usd"] == 123.456789


@given(
    st.lists(
        st.fixed_dictionaries(
            {},
            optional={
                field: st.integers(min_value=0, max_value=10**12)
                for field in METRIC_FIELDS.values()
            },
        ),
        max_size=30,
    )
)
def test_sum_buckets_is_the_field_wise_sum(buckets: list[dict[str, int]]) -> None:
    raw = [{k.encode(): str(v).encode() for k, v in b.items()} for b in buckets]
    got = sum_buckets(raw)
    for metric, field in METRIC_FIELDS.items():
        total = sum(b.get(field, 0) for b in buckets)
        if metric in ("cost_usd", "input_cost_usd", "output_cost_usd"):
            assert got[metric] == pytest.approx(total / 1_000_000)
        else:
            assert got[metric] == total


def test_event_metrics_round_trip_through_sum_buckets() -> None:
    event = make_event(input_tokens=10, output_tokens=5, status="error")
    fields = event_metrics(
        PricedEvent(event, make_costs(input_usd_micros=30, output_usd_micros=70))
    )
    bucket = {k.encode(): str(v).encode() for k, v in fields.items()}
    got = sum_buckets([bucket, bucket])
    assert got["cost_usd"] == 0.0002
    assert got["requests"] == 2
    assert got["errors"] == 2
    assert got["input_tokens"] == 20
    assert got["output_tokens"] == 10
