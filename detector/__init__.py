"""Real-time LLM spend-anomaly and abuse detector."""

from __future__ import annotations

__version__ = "0.1.0"
