from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from detector.anomaly.series import SeriesError, infer_interval_s, read_series


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(  # noqa: S603 (our own interpreter and arguments)
        [sys.executable, "-m", "detector", "anomaly", "score", *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_score_prints_one_scored_row_per_input_row(data_dir: Path) -> None:
    source = data_dir / "anomaly" / "spike.csv"
    result = run_cli(str(source))
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] == "timestamp,value,anomaly_score"
    inputs = source.read_text().splitlines()[1:]
    assert len(lines) - 1 == len(inputs) == 400
    rows = [line.rsplit(",", 1) for line in lines[1:]]
    assert [r[0] for r in rows] == inputs  # timestamp and value echoed as written
    scores = [float(r[1]) for r in rows]
    assert all(0.0 <= s <= 1.0 for s in scores)
    assert scores[:100] == [0.0] * 100  # warm-up
    assert scores[350] == 1.0  # the spike, 2014-04-01 05:50:00,40.000
    # The default (novelty) also scores the slow dip before it (rows 310-340) up to about 0.9,
    # a shape it has not seen in 300 rows; only the spike reaches NAB's threshold (about 0.94).
    assert [i for i, s in enumerate(scores) if s >= 0.95] == [350]


def test_score_with_a_named_detector_and_sensitivity(data_dir: Path) -> None:
    result = run_cli(str(data_dir / "anomaly" / "spike.csv"), "--detector", "robust",
                     "--sensitivity", "0.9")  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert float(result.stdout.splitlines()[351].rsplit(",", 1)[1]) > 0.95


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            ["anomaly/bad_value.csv"],
            "{data}/anomaly/bad_value.csv: line 3: value: bad number 'abc'",
        ),
        (
            ["anomaly/bad_header.csv"],
            "{data}/anomaly/bad_header.csv: line 1: expected header 'timestamp,value', "
            "got ['time', 'val']",
        ),
        (
            ["anomaly/missing.csv"],
            "{data}/anomaly/missing.csv: cannot read: No such file or directory",
        ),
        (
            ["anomaly/spike.csv", "--detector", "prophet"],
            "--detector: unknown detector 'prophet'; allowed: default, combined, robust, seasonal, "
            "level, novelty, record",
        ),
        (
            ["anomaly/spike.csv", "--sensitivity", "1.5"],
            "--sensitivity: must be within [0, 1], got 1.5",
        ),  # fmt: skip
    ],
)
def test_bad_input_gives_one_clear_line(data_dir: Path, args: list[str], message: str) -> None:
    result = run_cli(str(data_dir / args[0]), *args[1:])
    assert result.returncode == 1
    assert result.stdout == ""
    assert result.stderr == "error: " + message.format(data=data_dir) + "\n"


def test_reader_refuses_non_finite_values(tmp_path: Path) -> None:
    path = tmp_path / "nan.csv"
    path.write_text("timestamp,value\n2014-04-01 00:00:00,1\n2014-04-01 00:05:00,nan\n")
    with pytest.raises(SeriesError) as exc:
        read_series(path)
    assert str(exc.value) == f"{path}: line 3: value: not finite 'nan'"


def test_interval_is_the_median_gap(data_dir: Path) -> None:
    series = read_series(data_dir / "anomaly" / "spike.csv")
    assert infer_interval_s(series.ts_s) == 60
