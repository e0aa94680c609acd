"""What every alert output offers."""

from __future__ import annotations

from typing import Protocol

from detector.schemas import Alert


class Sink(Protocol):
    """Delivers one alert; raises SinkError when it could not, so the caller retries."""

    async def send_alert(self, alert: Alert) -> None: ...

    async def close(self) -> None: ...
