"""From cost events to Slack and back: a rule blocks a user, the alert lands in the critical
channel with top spenders and the command that lifts it; running that very command gets a
"resolved" reply in the alert's thread."""

from __future__ import annotations

import asyncio
import shlex
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from detector.config import Settings
from detector.slack_stub import SlackStub

from .conftest import WorkerStarter, event_bytes, produce, settings_env, wait_for

RULES = """
rules:
  - id: user-burn
    scope: user
    metric: cost_usd
    window: 1h
    threshold: 1.0
    action: block
    for: 10m
    severity: critical
  - id: tenant-watch
    scope: tenant
    metric: cost_usd
    window: 1h
    threshold: 1.5
    severity: warning
"""


@pytest.mark.timeout(180)
async def test_alert_to_slack_lift_from_its_command_then_resolved_in_thread(
    settings_factory: Callable[..., Settings],
    kafka_topics: Settings,
    slack_stub: SlackStub,
    worker_factory: WorkerStarter,
    tmp_path: Path,
    python: str,
) -> None:
    (tmp_path / "rules.yaml").write_text(RULES)
    await alert_lift_resolve(settings_factory(), slack_stub, worker_factory, python)


async def alert_lift_resolve(
    settings: Settings, slack_stub: SlackStub, worker_factory: WorkerStarter, python: str
) -> None:
    """A worker alerts on Slack, the command in the message lifts the block, and the notifier
    replies "resolved" in the alert's thread (test_cluster_product runs it on a cluster)."""
    worker, log_path = await worker_factory(
        settings,
        DETECTOR_SLACK_BOT_TOKEN="xoxb-test",
        DETECTOR_SLACK_CHANNEL="#llm-spend",
        DETECTOR_SLACK_CHANNELS="critical=#spend-oncall",
        DETECTOR_SLACK_BASE_URL=slack_stub.api_url,
        DETECTOR_SLACK_SCAN_INTERVAL_S="0.5",
    )
    now_ms = time.time_ns() // 1_000_000
    events = [
        event_bytes(
            event_id=f"e{i}",
            ts=now_ms - 2000 + i,
            tenant_id="acme",
            user_id="u-1",
            model="gpt-4o",
            cost_usd=0.6,
        )  # fmt: skip
        for i in range(3)
    ]
    await produce(settings, events, [b"acme"] * 3)

    oncall = await wait_for(lambda: slack_stub.in_channel("#spend-oncall"), 60, "the block alert")
    [block_alert] = oncall
    assert block_alert["text"].startswith("CRITICAL rule user-burn: cost_usd over 1h is 1.8")
    lift_section = block_alert["blocks"][2]["text"]["text"]
    assert lift_section.startswith("*To lift it*\n```detector override lift")
    command = lift_section.removeprefix("*To lift it*\n```").splitlines()[0]
    assert command == "detector override lift --tenant acme --scope user --id u-1"

    [tenant_alert] = await wait_for(
        lambda: slack_stub.in_channel("#llm-spend"), 30, "the tenant alert"
    )
    top = tenant_alert["blocks"][2]["text"]["text"]
    assert top.startswith("*Top contributors by dollars* (UTC day ")
    assert "• user `u-1`: $1.8" in top and "• model `gpt-4o`: $1.8" in top

    # Run the command the message gives, as an operator would.
    lift = await asyncio.create_subprocess_exec(
        python, "-m", "detector", *shlex.split(command)[1:],
        env=settings_env(settings), stdout=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, _ = await lift.communicate()
    assert lift.returncode == 0, out
    resolved = await wait_for(
        lambda: slack_stub.replies(block_alert["ts"]), 30, "the resolved reply"
    )
    [reply] = resolved
    assert reply["channel_id"] == block_alert["channel_id"]
    assert reply["text"].startswith("resolved: block of user u-1 lifted by cli")
    assert reply["text"].endswith("(lifted from the command line)")
    assert worker.returncode is None, log_path.read_text()[-2000:]
