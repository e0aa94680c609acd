"""schemathesis against the lookup API's own OpenAPI document, on a running `detector api`
with real Redis: no server errors, documented status codes and content, invalid input
refused, authentication enforced, undeclared methods answered properly."""

from __future__ import annotations

import asyncio
import shutil
import sys
import time
from collections.abc import Callable
from pathlib import Path

import aiohttp
import pytest
from pydantic import SecretStr
from redis.asyncio import Redis

from detector.config import Settings

from .conftest import free_port, settings_env

CHECKS = (
    "not_a_server_error,status_code_conformance,content_type_conformance,"
    "response_schema_conformance,negative_data_rejection,missing_required_header,"
    "ignored_auth,unsupported_method"
)


@pytest.mark.timeout(300)
async def test_schemathesis_finds_nothing(
    settings_factory: Callable[..., Settings],
    redis: Redis,
    subprocesses: list[asyncio.subprocess.Process],
    tmp_path: Path,
) -> None:
    cli = shutil.which("schemathesis", path=str(Path(sys.executable).parent))
    assert cli is not None, "schemathesis is a dev dependency: pip install -e '.[dev]'"
    (tmp_path / "rules.yaml").write_text(
        "budgets: [{id: daily, scope: tenant, period: day, amount_usd: 10}]\n"
    )
    port = free_port()
    settings = settings_factory(api_port=port, api_tokens=SecretStr("fuzz-admin=admin"))
    with (tmp_path / "api.log").open("wb") as log:
        api = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "detector", "api",
            env=settings_env(settings), stdout=log, stderr=log,
        )  # fmt: skip
    subprocesses.append(api)
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    async with aiohttp.ClientSession() as http:
        while True:
            try:
                async with http.get(f"{base}/healthz") as r:
                    if r.status == 200:
                        break
            except aiohttp.ClientError:
                pass
            assert time.monotonic() < deadline, "the API did not start"
            await asyncio.sleep(0.2)
    run = await asyncio.create_subprocess_exec(
        cli, "run", f"{base}/openapi.json", "--checks", CHECKS, "--max-examples", "40",
        "--seed", "1", "-H", "Authorization: Bearer fuzz-admin", "--output-sanitize", "false",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
    )  # fmt: skip
    output, _ = await run.communicate()
    text = output.decode(errors="replace")
    assert run.returncode == 0, text[-4000:]
    assert " passed" in text
