"""Precision and recall of the univariate detectors on Microsoft's cloud-monitoring series.

    python benches/anomaly/ms_cloud.py [--data /work/shared/data/ms-cloud-monitoring/data]
        [--detectors combined,robust,seasonal] [--sensitivities 0.25,0.5,0.75] [--tolerance 3]

A row is flagged when the model is warm and the row lies outside its band (score >= 0.5); every
row is learned, flagged or not. The experts label points, and an incident usually spans several
consecutive labelled rows, so three views are printed, all with a tolerance of `--tolerance` rows
either side:

- point: precision = flagged rows with a labelled row within the tolerance / flagged rows;
  recall = labelled rows with a flagged row within the tolerance / labelled rows;
- incident: labelled rows closer than 2 x tolerance apart form one incident, consecutive flagged
  rows (gaps up to the tolerance) form one alert; recall = incidents touched by an alert /
  incidents, precision = alerts touching an incident / alerts. This is what on-call people see.
"""

from __future__ import annotations

import argparse
import csv
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from detector.anomaly.series import Series, parse_stamp, run_series

DEFAULT_DATA = Path("/work/shared/data/ms-cloud-monitoring/data")


@dataclass(frozen=True, slots=True)
class Labelled:
    series: Series
    labels: list[bool]


def read_labelled(path: Path) -> Labelled:
    stamps: list[str] = []
    ts_s: list[float] = []
    values: list[float] = []
    labels: list[bool] = []
    with path.open(newline="", encoding="utf-8") as handle:
        for row in csv.DictReader(handle):
            if not row["Value"].strip():
                continue  # a few rows have no value; they are left out, label and all
            stamps.append(row["TimeStamp"])
            ts_s.append(parse_stamp(row["TimeStamp"]))
            values.append(float(row["Value"]))
            labels.append(row["Label"].strip() == "1")
    return Labelled(Series(stamps, [str(v) for v in values], ts_s, values), labels)


def runs(flags: Sequence[bool], gap: int) -> list[tuple[int, int]]:
    """Inclusive (start, end) of groups of set flags, joining groups at most `gap` rows apart.

    >>> runs([True, False, True, False, False, True], 1)
    [(0, 2), (5, 5)]
    """
    out: list[tuple[int, int]] = []
    for i, flag in enumerate(flags):
        if not flag:
            continue
        if out and i - out[-1][1] <= gap + 1:
            out[-1] = (out[-1][0], i)
        else:
            out.append((i, i))
    return out


@dataclass
class Counts:
    flagged: int = 0
    flagged_near_label: int = 0
    labelled: int = 0
    labelled_near_flag: int = 0
    alerts: int = 0
    alerts_on_incident: int = 0
    incidents: int = 0
    incidents_found: int = 0

    def add(self, flags: Sequence[bool], labels: Sequence[bool], tol: int) -> None:
        n = len(flags)

        def near(marks: Sequence[bool], i: int) -> bool:
            return any(marks[max(0, i - tol) : min(n, i + tol + 1)])

        self.flagged += sum(flags)
        self.flagged_near_label += sum(1 for i in range(n) if flags[i] and near(labels, i))
        self.labelled += sum(labels)
        self.labelled_near_flag += sum(1 for i in range(n) if labels[i] and near(flags, i))
        alerts, incidents = runs(flags, tol), runs(labels, 2 * tol)

        def touch(a: tuple[int, int], b: tuple[int, int]) -> bool:
            return a[0] - tol <= b[1] and b[0] <= a[1] + tol

        self.alerts += len(alerts)
        self.alerts_on_incident += sum(1 for a in alerts if any(touch(a, b) for b in incidents))
        self.incidents += len(incidents)
        self.incidents_found += sum(1 for b in incidents if any(touch(a, b) for a in alerts))


def ratio(a: int, b: int) -> float:
    return a / b if b else float("nan")


def f1(p: float, r: float) -> float:
    return 2 * p * r / (p + r) if p + r > 0 else 0.0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--detectors", default="combined,robust,seasonal,level")
    parser.add_argument("--sensitivities", default="0.25,0.5,0.75")
    parser.add_argument("--tolerance", type=int, default=3)
    args = parser.parse_args(argv)
    if not args.data.is_dir():
        print(f"skip: ms-cloud-monitoring data not found at {args.data} (pass --data DIR)")
        return 0
    corpus = {
        p.relative_to(args.data).as_posix(): read_labelled(p)
        for p in sorted(args.data.rglob("*.csv"))
    }
    n_rows = sum(len(c.labels) for c in corpus.values())
    print(f"ms-cloud-monitoring: {len(corpus)} series, {n_rows} rows, "
          f"{sum(sum(c.labels) for c in corpus.values())} labelled rows, "
          f"tolerance +-{args.tolerance} rows")  # fmt: skip
    print("\n| detector | sensitivity | point precision | point recall | point F1 "
          "| alerts | incident precision | incident recall | incident F1 |")  # fmt: skip
    print("|---|---|---|---|---|---|---|---|---|")
    for name in args.detectors.split(","):
        for sensitivity in (float(s) for s in args.sensitivities.split(",")):
            counts = Counts()
            for item in corpus.values():
                verdicts = run_series(item.series, name, sensitivity=sensitivity)
                flags = [v.warm and v.score >= 0.5 for v in verdicts]
                counts.add(flags, item.labels, args.tolerance)
            pp = ratio(counts.flagged_near_label, counts.flagged)
            pr = ratio(counts.labelled_near_flag, counts.labelled)
            ip = ratio(counts.alerts_on_incident, counts.alerts)
            ir = ratio(counts.incidents_found, counts.incidents)
            print(f"| {name} | {sensitivity:g} | {pp:.3f} | {pr:.3f} | {f1(pp, pr):.3f} "
                  f"| {counts.alerts} | {ip:.3f} | {ir:.3f} ({counts.incidents_found}/"
                  f"{counts.incidents}) | {f1(ip, ir):.3f} |", flush=True)  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
