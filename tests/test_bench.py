"""The benchmark runs end to end (--quick) and writes a full table and JSON; no timing asserted."""

import json
import math
import re
import statistics

import jax
import jax.numpy as jnp
import pytest

from optadam import bench


def test_quick_run_reports_every_contender_of_every_case(tmp_path, capsys):
    out = tmp_path / "bench.json"
    argv = ["--quick", "--cases", "big_leaf,many_small", "--optimizers", "adam,adam_lean"]
    assert bench.main([*argv, "--out", str(out)]) == 0
    report = json.loads(out.read_text())
    rows = report["results"]
    assert {r["case"] for r in rows} == {"big_leaf", "many_small"}
    for case in ("big_leaf", "many_small"):
        contenders = {r["contender"] for r in rows if r["case"] == case}
        assert {"optadam", "optax", "a+s*b"} <= contenders
        adam = next(r for r in rows if r["case"] == case and r["contender"] == "optadam")
        assert adam["state_bytes_per_param"] == pytest.approx(8.0, rel=0.01)  # mu + nu in float32
        assert math.isfinite(adam["step_ms"]) and adam["step_ms"] > 0
    lean = {r["contender"]: r for r in rows if r["case"] == "big_leaf" and r["optimizer"] != "adam"}
    assert lean["optadam_8bit"]["state_bytes_per_param"] == pytest.approx(2.03, rel=0.01)
    assert lean["optadam_bf16"]["state_bytes_per_param"] == pytest.approx(4.0, rel=0.01)
    assert lean["optadam_bf16_sr"]["state_bytes_per_param"] == pytest.approx(4.0, rel=0.01)
    assert report["meta"]["quick"] is True
    printed = capsys.readouterr().out
    assert "optadam" in printed
    # the targets, as ratios of the rows above (verdicts mean nothing in a quick run)
    roofline = r"big_leaf adam optadam\.step: \d+% of the roofline \(target >= 85%\)"
    assert re.search(roofline, printed)
    assert re.search(r"many_small adam optadam\.step: compiles in [\d.]+ s", printed)
    sr = r"big_leaf adam bfloat16 \+ stochastic rounding: [\d.]+x optadam_bf16"
    assert re.search(sr, printed)
    assert re.search(r"big_leaf adam 8-bit optadam\.step: [\d.]+x optadam_step", printed)


def test_every_row_is_the_median_of_its_rounds_with_the_spread_and_torch_compiles_nothing(
    tmp_path, capsys
):
    """One statistic for all rows, the roofline's included, so the roofline fraction compares
    medians with medians; torch's eager step has no compile time ("n/a", null in the JSON)."""
    pytest.importorskip("torch")
    out = tmp_path / "bench.json"
    argv = ["--quick", "--rounds", "3", "--cases", "big_leaf", "--optimizers", "sgd_momentum"]
    assert bench.main([*argv, "--out", str(out)]) == 0
    rows = json.loads(out.read_text())["results"]
    roofline = next(r for r in rows if r["contender"] == "a+s*b")
    for r in rows:
        samples = r["step_samples_ms"]
        assert len(samples) == 3, r["contender"]
        assert r["step_ms"] == statistics.median(samples)
        assert (r["step_min_ms"], r["step_max_ms"]) == (min(samples), max(samples))
        assert r["roofline_fraction"] == pytest.approx(r["gb_per_s"] / roofline["gb_per_s"])
    assert roofline["gb_per_s"] == pytest.approx(
        12 * roofline["params"] / roofline["step_ms"] / 1e6
    )
    torch_rows = [r for r in rows if r["contender"].startswith("torch_")]
    assert torch_rows and all(r["compile_s"] is None for r in torch_rows)
    assert all(r["compile_s"] > 0 for r in rows if not r["contender"].startswith("torch_"))
    printed = [line.split() for line in capsys.readouterr().out.splitlines()]
    for line in printed:
        if line and line[2].startswith("torch_"):
            assert line[4] == "n/a", line


def test_shapes_are_the_architectures():
    resnet = bench.resnet50_shapes()
    assert (
        len(resnet) == 161 and 25_000_000 < sum(math.prod(s) for s in resnet.values()) < 26_000_000
    )
    gpt2 = bench.gpt2_shapes()
    assert len(gpt2) == 148 and 124_000_000 < sum(math.prod(s) for s in gpt2.values()) < 125_000_000


def test_unknown_case_is_a_usage_error(capsys):
    with pytest.raises(SystemExit) as exit_:
        bench.main(["--quick", "--cases", "nope"])
    assert exit_.value.code == 2
    assert "unknown case nope; choose from big_leaf" in capsys.readouterr().err


def test_state_sharding_report_shows_zero1_cutting_per_device_state(tmp_path):
    """Runs in a child process with 8 host devices; shapes only, nothing allocated."""
    out = tmp_path / "sharding.json"
    assert bench.main(["--state-sharding", "--out", str(out)]) == 0
    rows = {(r["axes"], r["mesh"], r["optimizer"]): r["MiB_per_device"]
            for r in json.loads(out.read_text())["state_sharding"]}  # fmt: skip
    plain, zero1 = rows["Explicit", "8x1", "adam"], rows["Explicit", "8x1", "zero1(adam)"]
    assert zero1 == pytest.approx(plain / 8, rel=0.01)  # moments split over the 8-way data axis


def test_grouped_contender_runs_where_there_is_something_to_group():
    full = bench.cases(quick=False)
    for case, expected in [("many_small", True), ("resnet50", False), ("gpt2", False)]:
        shapes = {k: jax.ShapeDtypeStruct(s, jnp.float32) for k, s in full[case].items()}
        tx = bench.OPTIMIZERS["adam"]["optadam_grouped"]()
        assert bench.groups_anything(tx, shapes) is expected, case
