"""GET /v1/reports/{name} and `detector report` serve the same numbers as the report functions,
with the token scopes, tenant binding and input checks of the rest of the API."""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import aiohttp
import orjson
import pytest
from pydantic import SecretStr
from redis.asyncio import Redis

from detector.api.app import create_app
from detector.config import Settings
from detector.errors import ConfigError
from detector.pipeline import Deps, handle_batch
from detector.reports.catalog import build_report, parse_query
from detector.reports.reads import RollupReader
from detector.windows.counters import WindowStore

from .conftest import serve_api, settings_env
from .report_events import generate, raw
from .test_cli import run

TOKENS = "all-reader=spend:read;acme-only=spend:read@acme;gw-token=decision:read"


@pytest.fixture
async def loaded(redis: Redis, pipeline_deps_factory: Callable[[str], Deps]) -> str:
    """Two weeks of generated events in Redis; returns a date in last week (a finished week)."""
    now_ms = time.time_ns() // 1_000_000
    messages = raw(generate(now_ms, 600, days_back=14, seed=5))
    result = await handle_batch(messages, pipeline_deps_factory("rules: []\n"), now_ms)
    assert result.applied == 600
    today = datetime.fromtimestamp(now_ms / 1000, tz=UTC).date()
    return str(today - timedelta(days=7))


async def direct(redis: Redis, name: str, tenant: str | None, at: str) -> dict[str, object]:
    query = parse_query(name, tenant, "week", at, "5", time.time_ns() // 1_000_000)
    reader = RollupReader(redis, WindowStore(redis, 3600))
    return (await build_report(query, reader, None)).as_json()


async def test_api_serves_the_report_numbers_to_allowed_tokens(
    redis: Redis, settings_factory: Callable[..., Settings], loaded: str
) -> None:
    settings = settings_factory(api_tokens=SecretStr(TOKENS))
    async with serve_api(settings, redis) as base, aiohttp.ClientSession() as http:

        async def get(path: str, token: str | None, **params: str) -> tuple[int, dict[str, object]]:
            headers = {"Authorization": f"Bearer {token}"} if token else {}
            async with http.get(f"{base}{path}", params=params, headers=headers) as r:
                return r.status, await r.json()

        for name in ("cost-by-model", "top-spenders", "cost-per-user", "week-over-week"):
            status, body = await get(f"/v1/reports/{name}", "all-reader", period="week",
                                     at=loaded, top="5")  # fmt: skip
            assert status == 200, body
            want = await direct(redis, name, None, loaded)
            assert body["rows"] == want["rows"] and body["totals"] == want["totals"]
            assert body["rows"], name
        status, body = await get("/v1/reports/cost-by-feature", "acme-only", tenant_id="acme",
                                 period="week", at=loaded, top="5")  # fmt: skip
        assert status == 200
        assert body["rows"] == (await direct(redis, "cost-by-feature", "acme", loaded))["rows"]
        # A token bound to a tenant sees only that tenant; a gateway token sees none.
        assert (await get("/v1/reports/cost-by-model", "acme-only"))[0] == 403
        assert (await get("/v1/reports/cost-by-model", "acme-only", tenant_id="globex"))[0] == 403
        assert (await get("/v1/reports/cost-by-model", "gw-token", tenant_id="acme"))[0] == 403
        assert (await get("/v1/reports/cost-by-model", None))[0] == 401

        bad = {
            "period=year": "period must be day, week or month, got 'year'",
            "at=2026-02-30": "at: expected a date as YYYY-MM-DD, got '2026-02-30'",
            "at=2999-01-01": "at: 2999-01-01 is in the future",
            "top=0": "top must be a whole number from 1 to 100, got '0'",
            "top=1e3": "top must be a whole number from 1 to 100, got '1e3'",
            "tenant_id=a b": "tenant_id must be 1-128 characters",
        }
        for query, message in bad.items():
            key, _, value = query.partition("=")
            status, body = await get("/v1/reports/cost-by-model", "all-reader", **{key: value})
            assert status == 422, query
            assert str(body["error"]).startswith(message), body
        status, body = await get("/v1/reports/margins", "all-reader")
        assert (status, body["error"]) == (
            422, "report margins needs a plans file: set DETECTOR_PLANS_FILE"
        )  # fmt: skip
        status, body = await get("/v1/reports/margins", "all-reader", period="week")
        assert status == 422
        status, body = await get("/v1/reports/costs", "all-reader")
        assert status == 422 and str(body["error"]).startswith("report must be one of")
        status, body = await get("/v1/reports/quality", "all-reader", period="month",
                                 at="2020-01-01")  # fmt: skip
        assert status == 422 and "daily roll-ups are kept 70 days" in str(body["error"])


async def test_cli_prints_the_same_numbers(
    redis: Redis, settings_factory: Callable[..., Settings], loaded: str
) -> None:
    env = settings_env(settings_factory())
    args = ["report", "top-spenders", "--period", "week", "--at", loaded, "--top", "5"]
    done = run([*args, "--format", "json"], env)
    assert done.returncode == 0, done.stderr
    body = orjson.loads(done.stdout)
    assert body["rows"] == (await direct(redis, "top-spenders", None, loaded))["rows"]
    table = run(args, env)
    assert table.returncode == 0
    first_user = next(row for row in body["rows"] if row["dimension"] == "user")
    assert f"{first_user['entity_id']}" in table.stdout and "Top 5 spenders" in table.stdout
    csv = run([*args, "--format", "csv"], env).stdout.splitlines()
    assert csv[0] == "dimension,rank,tenant_id,entity_id,cost_usd,share_pct"
    assert len(csv) == 1 + len(body["rows"])
    done = run(["report", "top-spenders", "--period", "fortnight"], env)
    assert done.returncode == 1
    assert done.stderr.strip() == "error: --period must be day, week or month, got 'fortnight'"


async def test_a_bad_plans_file_stops_the_command_and_the_api(
    settings_factory: Callable[..., Settings], tmp_path: Path
) -> None:
    plans = tmp_path / "plans.yaml"
    plans.write_text("plans:\n  team: {revenue_usd: -5, per: user}\n")
    settings = settings_factory(plans_file=plans)
    done = run(["report", "margins"], settings_env(settings))
    assert done.returncode == 1
    assert done.stderr.strip() == (
        "error: plans.yaml: plans.team.revenue_usd: Input should be greater than or equal to 0, "
        "got -5"
    )
    with pytest.raises(ConfigError, match=r"plans.team.revenue_usd"):
        create_app(settings)
