"""benchmarks/sweep/spread_check.py: which of a run's fa2 verdicts rest on the spread rule."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks/sweep/spread_check.py"


def load():
    spec = importlib.util.spec_from_file_location("spread_check", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def cell(attn: str, seq_len: int, low: float, high: float, busy: float, gpus: int, between: float) -> dict:
    """A summary row as aggregate writes it; spread_low/high by the tables' rule (a one-GPU cell widened)."""
    tps = (low + high) / 2
    half = between / 200 * tps if gpus == 1 else 0.0
    return {"env_id": "H200", "model": "small", "seq_len": seq_len, "mode": "compiled", "kv_heads": 12,
            "precision": "fp16", "optimizer": "adamw", "harness": "native", "attn": attn, "status": "ok",
            "repeats": 2, "gpus": gpus, "gpu_busy": busy, "tokens_per_sec": tps, "tokens_per_sec_min": low,
            "tokens_per_sec_max": high, "spread_low": min(low, tps - half), "spread_high": max(high, tps + half),
            "between_gpu_pct": between}


def summary() -> pd.DataFrame:
    between = 3.0  # the run's median between-GPU range: of the four cells below measured on two GPUs
    return pd.DataFrame([
        # GPU-bound, both on two GPUs, narrow ranges: fa2 +2% is a lead by the tables' rule. The regime's cells
        # on two GPUs range 0.2%, 1%, 4% and 3%: median 2%, so each is floored at ±1% and the two overlap.
        cell("fa2", 1024, 101_900, 102_100, 0.95, 2, between),
        cell("sdpa_flash", 1024, 99_500, 100_500, 0.95, 2, between),
        cell("sdpa", 1024, 98_000, 102_000, 0.95, 2, between),
        cell("fa2", 2048, 98_500, 101_500, 0.95, 2, between),
        # Host-bound, on one GPU: widened by the tables to ±1.5% (a tie at −2.5%); its regime has no cell measured
        # on two GPUs, so the regime rule keeps the bare ranges, and the tie becomes a lead.
        cell("fa2", 512, 99_900, 100_100, 0.60, 1, between),
        cell("sdpa_flash", 512, 102_450, 102_650, 0.60, 1, between),
    ])


def test_the_verdicts_that_rest_on_the_spread_rule_are_named() -> None:
    sc = load()
    df = sc.ranges(summary())
    base = sc.verdicts(df).set_index(["seq_len", "reference"])
    assert not base.loc[(1024, "sdpa_flash"), "tie"] and base.loc[(512, "sdpa_flash"), "tie"]
    assert base.loc[(1024, "sdpa"), "tie"]
    floors = sc.regime_floors(df)["median_pct"]
    assert floors[("H200", "90% or more")] == 2.0 and ("H200", "under 80%") not in floors
    flips = {rule: sorted(zip(f["seq_len"], f["reference"], f["now"], f["under_rule"]))
             for rule, f in sc.changed(df).items()}
    assert flips["regime"] == [(512, "sdpa_flash", "tie", "lead"), (1024, "sdpa_flash", "lead", "tie")]
    assert flips["run-wide"] == [(1024, "sdpa_flash", "lead", "tie")]


def test_the_script_reports_each_run_and_refuses_a_folder_without_a_summary(tmp_path: Path) -> None:
    run = tmp_path / "run"
    run.mkdir()
    summary().to_csv(run / "summary.csv", index=False)
    done = subprocess.run([sys.executable, str(SCRIPT), str(run)], capture_output=True, text=True, check=True)
    assert "## run" in done.stdout and "Floor `regime`: 2 of 3 verdicts change." in done.stdout
    assert "Floor `run-wide`: 1 of 3 verdicts change." in done.stdout
    empty = tmp_path / "empty"
    empty.mkdir()
    bad = subprocess.run([sys.executable, str(SCRIPT), str(empty)], capture_output=True, text=True)
    assert bad.returncode == 2 and "no summary.csv" in bad.stderr
