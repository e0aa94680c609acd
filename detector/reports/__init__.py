"""Cost-attribution reports: periods, reads from the daily roll-ups, reports, digests."""

from __future__ import annotations
