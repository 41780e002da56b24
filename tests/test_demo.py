"""Tests for ``python -m optadam demo``: its table, its JSON, its command line and its errors.

Compiling the training loops is the slow part, so one in-process run (module fixture) feeds most
tests; 300 steps cost little more than 30 and are enough for Adam to show real progress.
"""

from __future__ import annotations

import contextlib
import io
import json
import math
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from optadam import demo
from optadam.__main__ import main as cli_main

RACERS = ["sgd", "adam"]
STEPS = 300
# f(-1.2, 1) = (1 - (-1.2))² + 100 · (1 - (-1.2)²)² = 2.2² + 100 · 0.44², computed by hand here so
# the test does not trust the demo's own Rosenbrock.
ROSENBROCK_START_LOSS = 2.2**2 + 100 * 0.44**2
CHANCE = 1 / demo.SPIRAL_ARMS


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[int, str, Path]:
    """Run the demo once, in-process: its exit status, its stdout and the JSON path it wrote."""
    out = tmp_path_factory.mktemp("demo") / "not" / "yet" / "there" / "results.json"
    stdout = io.StringIO()
    with contextlib.redirect_stdout(stdout):
        status = demo.main(
            ["--steps", str(STEPS), "--optimizers", ",".join(RACERS), "--out", str(out)]
        )
    return status, stdout.getvalue(), out


@pytest.fixture(scope="module")
def results(demo_run: tuple[int, str, Path]) -> dict[str, Any]:
    """The demo's JSON output, parsed."""
    return json.loads(demo_run[2].read_text())


def test_prints_a_table_per_problem_naming_each_optimizer(demo_run: tuple[int, str, Path]) -> None:
    status, stdout, _ = demo_run
    assert status == 0
    for header in ("optimizer", "final loss", "dist to (1,1)", "accuracy", "steps/s"):
        assert header in stdout
    for name in RACERS:
        assert sum(line.startswith(f"{name} ") for line in stdout.splitlines()) == 2


def test_json_has_expected_keys_and_finite_numbers(results: dict[str, Any]) -> None:
    assert set(results) == {"steps", "backend", "rosenbrock", "spirals"}
    assert results["steps"] == STEPS
    extra = {"rosenbrock": "distance_to_optimum", "spirals": "accuracy"}
    for problem, metric in extra.items():
        assert math.isfinite(results[problem]["start_loss"])
        rows = results[problem]["results"]
        assert [row["optimizer"] for row in rows] == RACERS
        for row in rows:
            expected = {"optimizer", "learning_rate", "final_loss", metric, "steps_per_second"}
            assert set(row) == expected
            numbers = [value for key, value in row.items() if key != "optimizer"]
            assert all(isinstance(x, float) and math.isfinite(x) for x in numbers), row
            assert row["steps_per_second"] > 0


def test_adam_goes_down_rosenbrock(results: dict[str, Any]) -> None:
    rosenbrock = results["rosenbrock"]
    assert rosenbrock["start_loss"] == pytest.approx(ROSENBROCK_START_LOSS, rel=1e-6)
    (adam,) = [row for row in rosenbrock["results"] if row["optimizer"] == "adam"]
    assert adam["final_loss"] < ROSENBROCK_START_LOSS
    assert adam["distance_to_optimum"] < 2.2  # the start is 2.2 away from (1, 1)


def test_adam_classifier_beats_chance(results: dict[str, Any]) -> None:
    (adam,) = [row for row in results["spirals"]["results"] if row["optimizer"] == "adam"]
    assert adam["accuracy"] > CHANCE + 0.2
    assert adam["final_loss"] < math.log(demo.SPIRAL_ARMS)  # a uniform guess's cross-entropy


def test_unknown_optimizer_exits_2_and_lists_the_valid_names(
    capsys: pytest.CaptureFixture[str],
) -> None:
    with pytest.raises(SystemExit) as exit_info:
        demo.main(["--optimizers", "adam,nope"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "unknown optimizer" in err and "'nope'" in err
    for name in demo.OPTIMIZERS:
        assert name in err
    assert "Traceback" not in err


@pytest.mark.parametrize("steps", ["0", "-5", "ten"])
def test_bad_steps_exit_2(steps: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        demo.main(["--steps", steps])
    assert exit_info.value.code == 2
    assert "--steps" in capsys.readouterr().err


def test_out_pointing_at_a_directory_exits_2_before_racing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exit_info:
        demo.main(["--out", str(tmp_path)])
    assert exit_info.value.code == 2
    captured = capsys.readouterr()
    assert "--out" in captured.err and captured.out == ""  # nothing raced


@pytest.mark.parametrize("argv", [[], ["nope"], ["--steps", "5"]])
def test_missing_or_unknown_command_prints_usage_and_exits_2(
    argv: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exit_info:
        cli_main(argv)
    assert exit_info.value.code == 2
    assert "usage: python -m optadam COMMAND" in capsys.readouterr().err


def test_format_table_aligns_columns() -> None:
    rows = [
        {"optimizer": "sgd", "final_loss": 1.5, "accuracy": 0.5, "steps_per_second": 12.0},
        {"optimizer": "momentum", "final_loss": 1e-9, "accuracy": 1.0, "steps_per_second": 1e6},
    ]
    lines = demo.format_table(rows).splitlines()
    assert len(lines) == 4 and set(lines[1]) == {"-", " "}
    assert len({len(line) for line in lines}) == 1  # right-padded, so one width
    assert lines[3].startswith("momentum ") and lines[3].endswith(" 1,000,000")


def test_python_dash_m_optadam_demo_runs() -> None:
    argv = [sys.executable, "-m", "optadam", "demo", "--steps", "20", "--optimizers", "sgd,adam"]
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 0, proc.stderr
    assert "adam" in proc.stdout and "sgd" in proc.stdout
