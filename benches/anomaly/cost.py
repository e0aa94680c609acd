"""Size and speed of each model: pickled bytes after a day of 1-minute rows, us per row.

    python benches/anomaly/cost.py [--rows 1440]

Each model learns `--rows` rows of a seeded noisy daily wave (univariate) or of five features
(multivariate), one score_one + learn_one per row, as the worker calls them; then it is pickled.
"""

from __future__ import annotations

import argparse
import math
import pickle
import random
import sys
import time

from detector.anomaly.detectors import MULTIVARIATE, UNIVARIATE, make_multivariate, make_univariate


def wave(rows: int, seed: int = 1) -> list[float]:
    rng = random.Random(seed)
    return [100 + 20 * math.sin(2 * math.pi * i / 1440) + rng.gauss(0, 2) for i in range(rows)]


def features(rows: int, seed: int = 2) -> list[dict[str, float]]:
    rng = random.Random(seed)
    out = []
    for _ in range(rows):
        requests = rng.gauss(100.0, 5.0)
        out.append({
            "cost_usd": requests * 0.01 * rng.uniform(0.9, 1.1),
            "requests": requests,
            "output_input_ratio": rng.uniform(0.2, 0.4),
            "distinct_models": float(rng.choice([2, 3])),
            "error_rate": rng.uniform(0.0, 0.02),
        })  # fmt: skip
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1440)
    args = parser.parse_args(argv)
    values = wave(args.rows)
    for name in UNIVARIATE:
        model = make_univariate(name, interval_s=60)
        start = time.perf_counter()
        for i, x in enumerate(values):
            model.score_one(i * 60.0, x)
            model.learn_one(i * 60.0, x)
        us = (time.perf_counter() - start) / len(values) * 1e6
        size = len(pickle.dumps(model))
        print(f"case=univariate name={name} rows={args.rows} us_per_row={us:.1f} bytes={size}")
    rows = features(args.rows)
    for name in MULTIVARIATE:
        multi = make_multivariate(name, interval_s=60)
        start = time.perf_counter()
        for i, row in enumerate(rows):
            multi.score_one(i * 60.0, row)
            multi.learn_one(i * 60.0, row)
        us = (time.perf_counter() - start) / len(rows) * 1e6
        size = len(pickle.dumps(multi))
        print(f"case=multivariate name={name} rows={args.rows} us_per_row={us:.1f} bytes={size}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
