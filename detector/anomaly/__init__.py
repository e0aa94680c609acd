"""Online anomaly models (river) and their offline evaluation helpers."""

from __future__ import annotations
