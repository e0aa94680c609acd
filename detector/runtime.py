"""Process-wide settings for the long-running processes (worker, lookup API)."""

from __future__ import annotations

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
