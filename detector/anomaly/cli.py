"""`detector anomaly ...`: run the anomaly models over files, outside the worker.

river is imported only when a command runs, so that it does not slow down every `detector` call.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer

from detector.errors import DetectorError

anomaly_app = typer.Typer(no_args_is_help=True, help="Run the anomaly models over a series.")


@anomaly_app.command("score")
def score(
    series: Annotated[Path, typer.Argument(help="CSV with a 'timestamp,value' header (NAB's).")],
    detector: Annotated[
        str,
        typer.Option(
            "--detector",
            help="default (novelty), novelty, record, combined, robust, seasonal or level.",
        ),
    ] = "default",
    sensitivity: Annotated[
        float, typer.Option("--sensitivity", help="0 to 1; higher = narrower band, more alerts.")
    ] = 0.5,
) -> None:
    """Print timestamp,value,anomaly_score per row (NAB's result format), learning as it goes."""
    from detector.anomaly.detectors import SERIES_ONLY, UNIVARIATE
    from detector.anomaly.series import read_series, run_series

    if detector != "default" and detector not in (*UNIVARIATE, *SERIES_ONLY):
        allowed = ", ".join(("default", *UNIVARIATE, *SERIES_ONLY))
        raise DetectorError(f"--detector: unknown detector {detector!r}; allowed: {allowed}")
    if not 0.0 <= sensitivity <= 1.0:
        raise DetectorError(f"--sensitivity: must be within [0, 1], got {sensitivity!r}")
    rows = read_series(series)
    verdicts = run_series(rows, detector, sensitivity=sensitivity)
    lines = ["timestamp,value,anomaly_score"]
    for stamp, text, verdict in zip(rows.stamps, rows.value_texts, verdicts, strict=True):
        lines.append(f"{stamp},{text},{verdict.score:.6f}")
    sys.stdout.write("\n".join(lines) + "\n")
