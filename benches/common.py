"""Helpers the bench scripts share: run settings, service checks, ports, percentiles, clean-up."""

from __future__ import annotations

import socket
import sys
from collections.abc import Sequence
from pathlib import Path

import yaml
from aiokafka.admin import AIOKafkaAdminClient

from detector.config import Settings
from detector.errors import ConfigError
from detector.rules.holder import RulesHolder
from detector.startup import check_kafka, check_redis

REPO = Path(__file__).resolve().parents[1]


def run_settings(kafka: str, redis_url: str, prefix: str, data_dir: Path) -> Settings:
    """Settings for one bench run: its own topics and consumer group, the repository's rules."""
    return Settings(
        kafka_bootstrap=kafka,
        redis_url=redis_url,
        rules=REPO / "rules.yaml",
        topic_prefix=f"{prefix}.",
        consumer_group=prefix,
        data_dir=data_dir,
        log_level="WARNING",
    )


def rules_without_models(rules: Path, data_dir: Path) -> RulesHolder:
    """The same rules less their `anomaly:` section, written to data_dir, to measure what the
    anomaly models cost."""
    full = yaml.safe_load(rules.read_text())
    path = data_dir / "rules-off.yaml"
    path.write_text(yaml.safe_dump({k: v for k, v in full.items() if k != "anomaly"}))
    holder = RulesHolder(path)
    assert holder().anomaly is None
    return holder


async def services_reachable(settings: Settings, bench: str) -> bool:
    """True when Redis and Kafka answer; otherwise say which does not, on stderr."""
    try:
        await check_redis(settings)
        await check_kafka(settings)
    except ConfigError as exc:
        print(f"{bench}: {exc}", file=sys.stderr)
        return False
    return True


async def delete_run_topics(bootstrap: str, prefix: str) -> None:
    """Delete this run's topics, faust's own included (their names start with the prefix).

    aiokafka's admin client cannot delete consumer groups; their offsets expire with the
    broker's offsets.retention.
    """
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        topics = [t for t in await admin.list_topics() if t.startswith(prefix)]
        if topics:
            await admin.delete_topics(topics)
    finally:
        await admin.close()


def percentile(sorted_values: Sequence[float], pct: float) -> float:
    """Nearest-rank percentile of an ascending list.

    >>> percentile([1.0, 2.0, 3.0, 4.0], 50), percentile([1.0, 2.0, 3.0, 4.0], 99)
    (2.0, 4.0)
    """
    if not sorted_values:
        return float("nan")
    rank = max(1, -(-len(sorted_values) * pct // 100))
    return sorted_values[int(rank) - 1]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])
