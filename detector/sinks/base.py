"""What the outputs offer: alert delivery (Slack, log) and the pipeline's publishing side."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from detector.errors import BadEvent
from detector.schemas import Alert, Decision


class Sink(Protocol):
    """Delivers one alert; raises SinkError when it could not, so the caller retries."""

    async def send_alert(self, alert: Alert) -> None: ...

    async def close(self) -> None: ...


class Outputs(Protocol):
    """Where a processed batch's results go: Kafka topics in the worker, memory in a backtest."""

    async def send_dead_letters(
        self, items: Sequence[tuple[bytes | None, bytes, BadEvent]]
    ) -> None: ...

    async def send_decisions(self, decisions: Sequence[Decision]) -> None: ...

    async def send_alerts(self, alerts: Sequence[Alert]) -> None: ...
