"""Tests for ``python -m optadam demo``: its tables, figure, JSON, progress bar, options and errors.

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
PROBLEMS = ["rosenbrock", "beale", "digits"]
# Start losses computed by hand here, so the test does not trust the demo's own functions:
# Rosenbrock at (-1.2, 1): (1 + 1.2)² + 100 (1 - 1.44)²;
# Beale at (1, 1.5): (1.5 - 1 + 1.5)² + (2.25 - 1 + 2.25)² + (2.625 - 1 + 3.375)² = 4 + 12.25 + 25.
START_LOSS = {"rosenbrock": 2.2**2 + 100 * 0.44**2, "beale": 41.25}
# Distances from the starts to the optima (1, 1) and (3, 0.5).
START_DISTANCE = {"rosenbrock": 2.2, "beale": math.hypot(2.0, 1.0)}
DIGIT_CLASSES = 10
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """Run the demo once, in-process: exit status, stdout, stderr and the paths it wrote."""
    root = tmp_path_factory.mktemp("demo") / "not" / "yet" / "there"
    figure, results = root / "race.png", root / "results.json"
    argv = ["--steps", str(STEPS), "--optimizers", ",".join(RACERS)]
    stdout, stderr = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
        status = demo.main([*argv, "--out", str(figure), "--json", str(results)])
    return {
        "status": status,
        "stdout": stdout.getvalue(),
        "stderr": stderr.getvalue(),
        "figure": figure,
        "json": results,
    }


@pytest.fixture(scope="module")
def results(demo_run: dict[str, Any]) -> dict[str, Any]:
    """The demo's JSON output, parsed."""
    return json.loads(demo_run["json"].read_text())


def row(results: dict[str, Any], problem: str, optimizer: str) -> dict[str, Any]:
    (found,) = [r for r in results[problem]["results"] if r["optimizer"] == optimizer]
    return found


def test_prints_a_table_per_problem_naming_each_optimizer(demo_run: dict[str, Any]) -> None:
    assert demo_run["status"] == 0
    stdout = demo_run["stdout"]
    for header in ("optimizer", "final loss", "dist to optimum", "test accuracy", "steps/s"):
        assert header in stdout
    for name in RACERS:
        assert sum(line.startswith(f"{name} ") for line in stdout.splitlines()) == len(PROBLEMS)


def test_writes_a_png_figure_and_prints_its_path(demo_run: dict[str, Any]) -> None:
    figure = demo_run["figure"]
    assert figure.read_bytes()[:8] == PNG_SIGNATURE
    assert figure.stat().st_size > 20_000  # six panels of curves, not an empty canvas
    assert demo_run["stdout"].rstrip().endswith(f"wrote the figure to {figure}")


def test_shows_a_progress_bar_over_every_run(demo_run: dict[str, Any]) -> None:
    runs = len(PROBLEMS) * len(RACERS)
    assert f"{runs}/{runs}" in demo_run["stderr"]
    assert "racing" in demo_run["stderr"]


def test_json_has_expected_keys_and_finite_numbers(results: dict[str, Any]) -> None:
    assert set(results) == {"steps", "backend", *PROBLEMS}
    assert results["steps"] == STEPS
    extra = {"rosenbrock": "distance_to_optimum", "beale": "distance_to_optimum"}
    for problem in PROBLEMS:
        assert math.isfinite(results[problem]["start_loss"])
        rows = results[problem]["results"]
        assert [r["optimizer"] for r in rows] == RACERS
        for r in rows:
            metric = extra.get(problem, "test_accuracy")
            expected = {"optimizer", "learning_rate", "final_loss", metric, "steps_per_second"}
            assert set(r) == expected
            numbers = [value for key, value in r.items() if key != "optimizer"]
            assert all(isinstance(x, float) and math.isfinite(x) for x in numbers), r
            assert r["steps_per_second"] > 0


@pytest.mark.parametrize("problem", ["rosenbrock", "beale"])
def test_adam_goes_downhill_towards_the_optimum(results: dict[str, Any], problem: str) -> None:
    start = results[problem]["start_loss"]
    assert start == pytest.approx(START_LOSS[problem], rel=1e-6)
    adam = row(results, problem, "adam")
    assert adam["final_loss"] < start / 5
    assert adam["distance_to_optimum"] < START_DISTANCE[problem]


def test_adam_classifies_held_out_digits(results: dict[str, Any]) -> None:
    adam = row(results, "digits", "adam")
    assert adam["test_accuracy"] > 0.9  # chance is 10%
    assert results["digits"]["start_loss"] > 1.0
    assert adam["final_loss"] < math.log(DIGIT_CLASSES) / 5  # a uniform guess's cross-entropy


def test_missing_demo_extra_exits_1_naming_what_to_install(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setitem(sys.modules, "flax", None)  # makes `import flax` raise ImportError
    monkeypatch.setitem(sys.modules, "tqdm", None)
    assert demo.main(["--steps", "5"]) == 1
    captured = capsys.readouterr()
    assert "missing: flax, tqdm" in captured.err
    assert "pip install -e '.[demo]'" in captured.err
    assert "Traceback" not in captured.err and captured.out == ""


def test_help_explains_every_option_even_without_the_extra(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    with pytest.raises(SystemExit) as exit_info:
        demo.main(["--help"])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    for option in ("--steps", "--optimizers", "--out", "--json", "demo.png", "[demo]"):
        assert option in text


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


@pytest.mark.parametrize("option", ["--out", "--json"])
def test_output_path_pointing_at_a_directory_exits_2_before_racing(
    option: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exit_info:
        demo.main([option, str(tmp_path)])
    assert exit_info.value.code == 2
    captured = capsys.readouterr()
    assert option in captured.err and "directory" in captured.err
    assert captured.out == ""  # nothing raced


def test_figure_suffix_without_a_known_format_exits_2_before_racing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exit_info:
        demo.main(["--out", str(tmp_path / "race.nope")])
    assert exit_info.value.code == 2
    captured = capsys.readouterr()
    assert "--out" in captured.err and ".png" in captured.err and captured.out == ""


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
        {"optimizer": "sgd", "final_loss": 1.5, "test_accuracy": 0.5, "steps_per_second": 12.0},
        {
            "optimizer": "momentum",
            "final_loss": 1e-9,
            "test_accuracy": 1.0,
            "steps_per_second": 1e6,
        },
    ]
    lines = demo.format_table(rows).splitlines()
    assert len(lines) == 4 and set(lines[1]) == {"-", " "}
    assert len({len(line) for line in lines}) == 1  # right-padded, so one width
    assert lines[3].startswith("momentum ") and lines[3].endswith(" 1,000,000")


def test_python_dash_m_optadam_demo_runs_and_writes_its_figure(tmp_path: Path) -> None:
    out = tmp_path / "figure.png"
    argv = [sys.executable, "-m", "optadam", "demo", "--steps", "20", "--optimizers", "sgd,adam"]
    proc = subprocess.run(
        [*argv, "--out", str(out)], capture_output=True, text=True, timeout=120, check=False
    )
    assert proc.returncode == 0, proc.stderr
    assert "adam" in proc.stdout and "sgd" in proc.stdout and str(out) in proc.stdout
    assert out.read_bytes()[:8] == PNG_SIGNATURE
