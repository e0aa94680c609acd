"""Process-wide settings for the long-running processes (worker, lookup API)."""

from __future__ import annotations

import asyncio
import gc

GC_YOUNG_THRESHOLD = 100_000  # allocations between collections of the youngest generation


def tune_gc() -> None:
    """Collect cyclic garbage less often.

    The hot paths allocate millions of short-lived, acyclic objects (freed by reference
    counting anyway); with the default thresholds every 700 allocations start a collection of
    the young objects, and every so often of all of them. Measured in the worker: about a third
    of the anomaly stage's time (62 -> 43 us per event) and 9,069 -> 11,154 events/s end to end
    (benches/README.md). What exists when this is called (modules, price table, rules) is
    frozen out of collections altogether.
    """
    gc.freeze()
    gc.set_threshold(GC_YOUNG_THRESHOLD, 50, 100)


def stopping() -> bool:
    """True when the running task is being cancelled: its process is stopping."""
    task = asyncio.current_task()
    return task is not None and task.cancelling() > 0


def raise_if_stopping() -> None:
    """End a consumer loop whose task is being cancelled.

    A cancel can be swallowed by the libraries a loop awaits (on Python 3.11 an
    `asyncio.wait_for` that finishes in the same step as the cancel loses it, CPython
    gh-86296); the loop then ran on, and a SIGTERMed worker in 2 of 12 runs under load never
    exited. The task still counts the cancel, so the loop checks it on every turn.
    """
    if stopping():
        raise asyncio.CancelledError
