"""benchmarks/sweep/report.py: a run swept in parts gets its GPUs' occupancy part by part (CPU, made-up records)."""

from __future__ import annotations

import gzip
import importlib.util
import json
import math
import os
import re
import shutil
import statistics
import subprocess
import sys
import tarfile
import time
from datetime import UTC, datetime
from pathlib import Path

import pandas as pd
import pytest

from attnsweep import sweep
from attnsweep.sweep import cell_path
from test_report import add_repeat, make_cell

ROOT = Path(__file__).resolve().parents[1]


def load_report():
    spec = importlib.util.spec_from_file_location("sweepbench_report", ROOT / "benchmarks/sweep/report.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def cell(run: Path, name: str, start: str, end: str, seconds: float, uuid: str,
         window: tuple[float, float] | None = None) -> None:
    path = run / "cells" / name / "cell.json"
    path.parent.mkdir(parents=True)
    conditions = {"start_unix_s": window[0], "end_unix_s": window[1]} if window else None
    path.write_text(json.dumps({"started_at": start, "finished_at": end, "duration_s": seconds,
                                "env": {"gpu": {"index": 0, "uuid": uuid}}, "window_conditions": conditions}))


def test_a_run_in_parts_is_read_part_by_part_and_the_time_between_parts_is_no_gap(tmp_path: Path) -> None:
    report = load_report()
    run = tmp_path / "replay"
    # Part 1 from 10:00:00 for 100 s, part 2 from 10:30:00 (half an hour later) for 60 s; one GPU.
    (run / "cells").mkdir(parents=True)
    (run / "wall-20261130T100000.txt").write_text("exit 0 wall_s 100\n")
    (run / "wall-20261130T103000.txt").write_text("exit 124 wall_s 60\n")
    cell(run, "a", "2026-11-30T10:00:20+00:00", "2026-11-30T10:00:40+00:00", 20, "GPU-x")
    cell(run, "b", "2026-11-30T10:00:50+00:00", "2026-11-30T10:01:10+00:00", 20, "GPU-x")
    cell(run, "c", "2026-11-30T10:30:30+00:00", "2026-11-30T10:30:50+00:00", 20, "GPU-x")
    rows = report.occupancy(run)
    assert [r["run"] for r in rows] == ["replay part 1", "replay part 2"]
    first, second = rows
    assert first["timed jobs"] == 2 and first["span s"] == 50 and first["gaps s"] == 10
    assert first["outside s"] == 50 and first["busy % of wall"] == 40
    assert second["timed jobs"] == 1 and second["gaps s"] == 0 and second["busy % of wall"] == 100 * 20 / 60


def test_a_run_in_one_sweep_is_read_whole(tmp_path: Path) -> None:
    report = load_report()
    run = tmp_path / "one"
    (run / "cells").mkdir(parents=True)
    (run / "wall.txt").write_text("gpus 0 cores 0-15 exit 0 wall_s 80\n")
    cell(run, "a", "2026-11-30T10:00:20+00:00", "2026-11-30T10:00:40+00:00", 20, "GPU-x")
    cell(run, "b", "2026-11-30T10:00:50+00:00", "2026-11-30T10:01:10+00:00", 20, "GPU-x")
    (row,) = report.occupancy(run)
    assert row["run"] == "one" and row["span s"] == 50 and row["outside s"] == 30


def test_windows_of_two_gpus_that_overlapped_are_counted(tmp_path: Path) -> None:
    report = load_report()
    run = tmp_path / "two"
    (run / "cells").mkdir(parents=True)
    (run / "wall.txt").write_text("exit 0 wall_s 80\n")
    cell(run, "a", "2026-11-30T10:00:20+00:00", "2026-11-30T10:00:40+00:00", 20, "GPU-x", (100.0, 101.0))
    cell(run, "b", "2026-11-30T10:00:20+00:00", "2026-11-30T10:00:40+00:00", 20, "GPU-y", (101.0, 102.0))  # in turn
    cell(run, "c", "2026-11-30T10:00:50+00:00", "2026-11-30T10:01:10+00:00", 20, "GPU-x", (110.0, 112.0))
    cell(run, "d", "2026-11-30T10:00:50+00:00", "2026-11-30T10:01:10+00:00", 20, "GPU-y", (111.5, 113.0))  # overlaps
    rows = {r["GPU"][:1]: r for r in report.occupancy(run)}
    assert rows["0"]["windows overlapping another GPU's"] == 1 and rows["1"]["windows overlapping another GPU's"] == 1
    old = tmp_path / "old"
    (old / "cells").mkdir(parents=True)
    cell(old, "a", "2026-11-30T10:00:20+00:00", "2026-11-30T10:00:40+00:00", 20, "GPU-x")
    assert report.occupancy(old)[0]["windows overlapping another GPU's"] is None  # records without their windows


def test_the_spread_between_two_sweeps_is_read_against_the_repeats_own() -> None:
    report = load_report()
    # Repeats 2% apart (100, 102); the single value at their geometric mean: no difference between the sweeps.
    agree = report.spread_between([([100 * 1.02 ** 0.5], [100.0, 102.0])] * 4)
    assert agree["sd between sweeps %"] < 1e-9 and agree["within"] == 4
    assert abs(agree["sd between repeats %"] - 100 * math.log(1.02) / 2 ** 0.5) < 1e-9
    # The single value 10% below repeats that agree with each other: far outside their spread.
    off = report.spread_between([([90.0], [100.0, 101.0]), ([91.0], [101.0, 100.0])])
    assert off["below"] == 2 and off["A above B's range"] == 0 and off["variance ratio"] > 50
    assert 10 < off["B vs A mean %"] < 11.5 and off["its std error %"] < 1
    # Every cell's repeats 4% apart and centred 1% above its single value: each cell inside its spread, and the
    # same 1% over all cells, which the mean shift shows with no error (every cell's shift is the same).
    shift = report.spread_between([([100.0 * k], [100.0 * k * 1.01 / 1.02, 100.0 * k * 1.01 * 1.02])
                                   for k in (1, 2, 3)])
    assert shift["variance ratio"] < 1 and shift["within"] == 3
    assert abs(shift["B vs A mean %"] - 1) < 1e-9 and shift["its std error %"] < 1e-9
    # Repeats on both sides pool into the spread; equal means, no difference.
    both = report.spread_between([([99.0, 101.0], [101.0, 99.0])])
    assert both["sd between sweeps %"] < 1e-9 and both["sd between repeats %"] > 0


def test_the_committed_page_is_the_scripts_output_for_the_runs_it_lists(capsys) -> None:
    """results/sweepbench.md is report.py's output, whole: no hand edit that a regeneration would lose, and no page
    left behind the records or the script."""
    page = (ROOT / "results/sweepbench.md").read_text()
    header = "| run | sweep wall s | measurements (cells × repeats) | median job s | median warm-up job s |"
    table = page.split(header + "\n")[1].split("\n\n")[0].splitlines()[1:]
    runs = [str(ROOT / "results" / row.split("|")[1].strip()) for row in table]
    assert len(runs) >= 10
    load_report().main(runs)
    assert capsys.readouterr().out == page


def test_two_hosts_are_told_apart_by_the_gpus_work_and_the_steps_wall_time(tmp_path: Path, capsys) -> None:
    """--hosts: the same kernel time and other tokens/s on a host-bound cell (the host's CPU made the difference),
    and the cell binned by the GPU's busy share of its step."""
    report = load_report()
    axes = {"model": "small", "seq_len": 1024, "attn": "sdpa", "mode": "compiled", "kv_heads": 12,
            "precision": "fp16", "optimizer": "adamw", "harness": "native"}

    def record(run: Path, name: str, tokens_per_sec: float) -> None:
        path = run / "cells" / "c" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        # 16 x 1024 tokens a step: 0.1 s at 163,840 tokens/s; 0.04 s of kernels.
        path.write_text(json.dumps({"status": "ok", "cell": axes, "batch_size": 16, "tokens_per_sec": tokens_per_sec,
                                    "kernels": {"source": "CUDA kernels", "busy_us": 40_000.0}}))

    record(tmp_path / "a", "cell.json", 163_840.0)
    record(tmp_path / "b", "cell.json", 2 * 163_840.0)
    record(tmp_path / "b", "repeat-2.json", 2 * 163_840.0)
    report.hosts(str(tmp_path / "a"), str(tmp_path / "b"))
    out = capsys.readouterr().out
    row = next(line for line in out.splitlines() if line.startswith("| small"))
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert cells[-4:] == ["100.0", "0.0", "40.0", "80.0"]  # tok/s +100%, kernels the same, busy 40% and 80%
    summary = next(line for line in out.splitlines() if line.startswith("| 80-90%"))  # median busy of 40, 80, 80
    assert [c.strip() for c in summary.strip("|").split("|")][1:3] == ["1", "100.0"]


def test_the_committed_host_comparison_is_the_scripts_output(capsys) -> None:
    """results/h200-study-12gib-1gpu/hosts.md is `report.py --hosts` of that run against the replay, whole."""
    load_report().hosts(str(ROOT / "results/h200-study-12gib-1gpu"), str(ROOT / "results/h200-study-12gib"))
    assert capsys.readouterr().out == (ROOT / "results/h200-study-12gib-1gpu/hosts.md").read_text()


def _table_rows(out: str) -> list[dict[str, str]]:
    lines = [line for line in out.splitlines() if line.startswith("|")]
    header = [c.strip() for c in lines[0].strip("|").split("|")]
    return [dict(zip(header, (c.strip() for c in line.strip("|").split("|")))) for line in lines[2:]]


def _windows_record(path: Path, tokens_per_sec: float, times: list[float], busy_us: float = 95_000.0) -> None:
    axes = {"model": "small", "seq_len": 1024, "attn": "sdpa", "mode": "compiled", "kv_heads": 12,
            "precision": "fp16", "optimizer": "adamw", "harness": "native"}
    path.parent.mkdir(parents=True, exist_ok=True)
    # 16 x 1024 tokens a step; `busy_us` of kernels in a 0.1 s step: 95% busy at 163,840 tokens/s.
    path.write_text(json.dumps({"status": "ok", "cell": axes, "batch_size": 16, "tokens_per_sec": tokens_per_sec,
                                "tokens_per_sec_stats": {"n": 25}, "step_times_s": times,
                                "kernels": {"source": "CUDA kernels", "busy_us": busy_us}}))


def test_windows_compares_each_earlier_block_of_steps_with_the_measured_window(tmp_path: Path, capsys) -> None:
    """--windows: a record of 100 steps, window 25, whose steps 26-50 took 10% longer than the window's: that block
    reads -9.09% (tokens/s), the steps just before the window (51-75, as fast) 0; its two repeats, 10% apart in
    tokens/s, give the spread column."""
    report = load_report()
    times = [5.0] + [0.11] * 49 + [0.1] * 50
    _windows_record(tmp_path / "run" / "cells" / "c" / "cell.json", 163_840.0, times)
    _windows_record(tmp_path / "run" / "cells" / "c" / "repeat-2.json", 0.9 * 163_840.0, times)
    report.windows([str(tmp_path / "run")])
    rows = _table_rows(capsys.readouterr().out)
    assert [r["GPU busy"] for r in rows] == ["80-90%", "90-100%"]  # 95% busy at 0.9 x the tokens/s: 85.5%
    fast = rows[1]
    assert fast["records"] == "1" and fast["steps, window"] == "100, 25"
    assert fast["steps 26-50 vs window %"].startswith("-9.09 ")
    assert float(fast["steps before the window vs window %"].split()[0]) == 0
    assert fast["repeats' spread % (run, median)"] == "10.53"  # |1 - 0.9| / 0.95


def test_windows_reports_records_of_other_step_counts_apart(tmp_path: Path, capsys) -> None:
    """Records of 125 and of 50 steps in one run: a row each; the 50-step one has no whole earlier block, only the
    steps before its window (2-25), and a dash where the 125-step row has blocks."""
    report = load_report()
    _windows_record(tmp_path / "run" / "cells" / "a" / "cell.json", 163_840.0, [5.0] + [0.1] * 124)
    _windows_record(tmp_path / "run" / "cells" / "b" / "cell.json", 163_840.0, [5.0] + [0.125] * 24 + [0.1] * 25)
    report.windows([str(tmp_path / "run")])
    rows = {r["steps, window"]: r for r in _table_rows(capsys.readouterr().out)}
    assert set(rows) == {"125, 25", "50, 25"}
    assert rows["50, 25"]["steps before the window vs window %"].startswith("-20.00 ")
    assert rows["50, 25"]["steps 26-50 vs window %"] == "–"
    assert float(rows["125, 25"]["steps 76-100 vs window %"].split()[0]) == 0


def test_the_committed_window_comparison_is_the_scripts_output(capsys) -> None:
    """results/windows.md is `report.py --windows` of the study's two H200 replays, whole."""
    load_report().windows([str(ROOT / "results/h200-study-12gib"), str(ROOT / "results/h200-study-12gib-1gpu")])
    assert capsys.readouterr().out == (ROOT / "results/windows.md").read_text()


# Samples as nvidia-smi writes them (tools/gpu-host/sweep.sh: --format=csv,nounits, the header kept), in each header
# style the reader takes: the long names with units, and the query's short names with the older reasons field.
LONG = ("timestamp, index, uuid, clocks.current.sm [MHz], clocks.current.memory [MHz], temperature.gpu, "
        "power.draw [W], clocks_event_reasons.active")
SHORT = "timestamp, index, uuid, clocks.sm, clocks.mem, temperature.gpu, power.draw, clocks_throttle_reasons.active"
WINDOW = (1_796_114_100.0, 1_796_114_102.7)  # 2026-12-01 08:35:00 UTC, a 2.7 s window


def _stamp(unix_s: float) -> str:
    return datetime.fromtimestamp(unix_s, UTC).strftime("%Y/%m/%d %H:%M:%S.%f")[:-3]


def gpu_csv(run: Path, header: str = LONG, units: bool = False) -> None:
    """GPU-x sampled about once a second from 1 s before the window to 0.6 s after it, GPU-y beside it; the samples
    within 0.5 s of the window have other values than the two outside it."""
    start = WINDOW[0]
    x = [(-1.0, 500, 90, 100.0, 0x8),  # 1 s before the start: left out
         (-0.4, 1980, 60, 600.0, 0x0), (0.6, 1960, 62, 620.0, 0x4), (1.6, 1950, 63, 640.0, 0x0),
         (2.6, 1930, 61, 660.0, 0x20),
         (3.3, 500, 90, 100.0, 0x8)]  # 0.6 s after the end: left out
    lines = [header]
    for offset, mhz, temp, watts, reasons in x:
        for uuid, values in (("GPU-x", (mhz, temp, watts, reasons)), ("GPU-y", (1000, 80, 300.0, 0x40))):
            sm, c, w, r = values
            sm_text, w_text = (f"{sm} MHz", f"{w:.2f} W") if units else (str(sm), f"{w:.2f}")
            lines.append(f"{_stamp(start + offset)}, {0 if uuid == 'GPU-x' else 1}, {uuid}, {sm_text}, 3201, {c}, "
                         f"{w_text}, 0x{r:016x}")
    lines.insert(5, "Unable to determine the device handle for GPU0000:19:00.0: Unknown Error")  # on its output
    # The last line cut off when the sampler was stopped.
    (run / "gpu-20261201T083400.csv").write_text("\n".join(lines) + f"\n{_stamp(start + 2.0)}, 0, GPU-x, 19")


def full_record(run: Path, name: str, uuid: str, window: tuple[float, float] | None) -> None:
    """A record with what the per-cell table reads, and its job's Snakemake benchmark."""
    path = run / "cells" / name / "cell.json"
    path.parent.mkdir(parents=True)
    conditions = {"start_unix_s": window[0], "end_unix_s": window[1]} if window else None
    path.write_text(json.dumps({
        "cell": {"model": "small", "seq_len": 1024, "attn": name}, "status": "ok", "tokens_per_sec": 100_000.0,
        "duration_s": 10.0, "started_at": "2026-12-01T08:34:55+00:00", "finished_at": "2026-12-01T08:35:05+00:00",
        "env": {"gpu": {"index": 0, "uuid": uuid}}, "window_conditions": conditions}))
    tsv = run / "benchmarks" / "cells" / name / "cell.tsv"
    tsv.parent.mkdir(parents=True)
    tsv.write_text("s\th:m:s\n12.5\t0:00:12\n")


@pytest.mark.parametrize("header, units", [(LONG, False), (SHORT, False), (LONG, True)],
                         ids=["long names", "short names, older reasons field", "with units"])
def test_the_gpu_samples_in_each_measured_window_are_joined_to_its_record(tmp_path: Path, header, units) -> None:
    """The samples of the record's GPU (by UUID) from 0.5 s before its window to 0.5 s after it: mean SM clock,
    highest temperature, mean power, the reasons OR-ed; another GPU's samples and those further out do not count."""
    report = load_report()
    run = tmp_path / "run"
    full_record(run, "x", "GPU-x", WINDOW)
    full_record(run, "y", "GPU-y", WINDOW)
    full_record(run, "later", "GPU-x", (WINDOW[0] + 60, WINDOW[1] + 60))  # the sampler had stopped by then
    full_record(run, "old", "GPU-x", None)  # a record without its window (older code)
    gpu_csv(run, header, units)
    rows = {r["attn"]: r for r in report.rows(run)}
    assert {k: rows["x"][k] for k in report.GPU_COLUMNS} == {
        "SM MHz": 1955, "max temp C": 63, "power W": 630.0, "clock events": "SW power cap, SW thermal slowdown",
        "GPU samples": 4}
    assert rows["y"]["GPU samples"] == 4 and rows["y"]["SM MHz"] == 1000
    assert rows["y"]["clock events"] == "HW thermal slowdown"
    assert rows["later"]["GPU samples"] == 0 and rows["later"]["SM MHz"] is None
    assert all(rows["old"][k] is None for k in report.GPU_COLUMNS)


def test_clock_event_reasons_in_words() -> None:
    report = load_report()
    assert report.clock_events(0) == "none"
    assert report.clock_events(0x1 | 0x80) == "GPU idle, HW power brake"
    assert report.clock_events(0x8 | 0x1000) == "HW slowdown, 0x1000"  # a bit without a name


def test_the_page_shows_the_gpu_columns_only_for_runs_with_samples(tmp_path: Path, capsys) -> None:
    """A run without gpu-*.csv (parts swept before sweep.sh sampled the GPU) leaves its rows blank beside a run with
    samples; a page of such runs only has no GPU columns, as before."""
    report = load_report()
    new, old = tmp_path / "new", tmp_path / "old"
    full_record(new, "x", "GPU-x", WINDOW)
    gpu_csv(new)
    full_record(old, "x", "GPU-x", WINDOW)
    (old_row,) = report.rows(old)
    assert all(old_row[k] is None for k in report.GPU_COLUMNS)
    report.main([str(new), str(old)])
    out = capsys.readouterr().out
    assert report.GPU_COLUMNS_TEXT in out
    table = {r["run"]: r for r in _table_rows(out.rstrip().split("\n\n")[-1])}  # the per-cell table, last
    assert table["new"]["SM MHz"] == "1,955.0" and table["new"]["clock events"].startswith("SW power cap")
    assert table["old"]["SM MHz"] == "nan" and table["old"]["GPU samples"] == "nan"
    report.main([str(old)])
    out = capsys.readouterr().out
    assert "SM MHz" not in out and report.GPU_COLUMNS_TEXT not in out


# A stand-in nvidia-smi for tools/gpu-host/sweep.sh: it knows the clock-event reasons under the name FAKE_REASONS
# gives (none: neither name), refuses a query with a field it does not know as nvidia-smi does (the message on its
# output, exit status 2), and with -lms writes a sample every 0.2 s in local time, as nvidia-smi does.
FAKE_NVIDIA_SMI = """#!{python}
import datetime, os, sys, time
args = sys.argv[1:]
if "-L" in args:
    print("GPU 0: NVIDIA H200 (UUID: GPU-fake0)")
    sys.exit(0)
fields = next(a.split("=", 1)[1] for a in args if a.startswith("--query-gpu=")).split(",")
known = {{"timestamp", "index", "uuid", "clocks.sm", "clocks.mem", "temperature.gpu", "power.draw", "name",
          "driver_version", "clocks.max.sm", "power.limit", "memory.total", os.environ["FAKE_REASONS"]}}
for field in fields:
    if field not in known:
        print(f'Field "{{field}}" is not a valid field to query.')
        sys.exit(2)
if "timestamp" not in fields:
    print("NVIDIA H200, 580.95.05, 1980 MHz, 700.00 W, 143771 MiB")
    sys.exit(0)
names = {{"clocks.sm": "clocks.current.sm [MHz]", "clocks.mem": "clocks.current.memory [MHz]",
          "power.draw": "power.draw [W]"}}
values = {{"index": "0", "uuid": "GPU-fake0", "clocks.sm": "1980", "clocks.mem": "3201", "temperature.gpu": "45",
           "power.draw": "650.25", os.environ["FAKE_REASONS"]: "0x0000000000000004"}}
if "-lms" in args:
    with open(os.environ["FAKE_PIDS"], "a") as pids:
        pids.write(f"{{os.getpid()}}\\n")
print(", ".join(names.get(f, f) for f in fields), flush=True)
while True:
    values["timestamp"] = datetime.datetime.now().strftime("%Y/%m/%d %H:%M:%S.%f")[:-3]
    print(", ".join(values[f] for f in fields), flush=True)
    if "-lms" not in args:
        break
    time.sleep(0.2)
"""


def fake_gpu_host(tmp_path: Path, reasons: str = "clocks_event_reasons.active") -> tuple[Path, Path, dict[str, str]]:
    """A checkout with tools/gpu-host/sweep.sh and stand-ins for setup.sh, snakemake and nvidia-smi: (repo, $OUT,
    environment). The stand-in snakemake writes its full log under .snakemake/log/ (an older one, from before the
    part, stays out of it) and notes each call's arguments in snakemake.calls."""
    repo, out, fake = tmp_path / "repo", tmp_path / "out", tmp_path / "bin"
    for folder in (repo / "tools/gpu-host", out, fake):
        folder.mkdir(parents=True)
    shutil.copy(ROOT / "tools/gpu-host/sweep.sh", repo / "tools/gpu-host/sweep.sh")
    (repo / "tools/gpu-host/setup.sh").write_text("true\n")
    (fake / "nvidia-smi").write_text(FAKE_NVIDIA_SMI.format(python=sys.executable))
    (fake / "snakemake").write_text('#!/bin/sh\necho "$*" >> snakemake.calls\ncase "$*" in *--unlock*) exit 0 ;; esac\n'
                                    'mkdir -p .snakemake/log\n'
                                    'echo "rule cell: this part" > .snakemake/log/2026-12-01T1200.snakemake.log\n'
                                    'sleep 2\n')
    (repo / ".snakemake/log").mkdir(parents=True)
    older = repo / ".snakemake/log/2026-11-30T1200.snakemake.log"
    older.write_text("rule cell: an earlier part\n")
    os.utime(older, (time.time() - 3600, time.time() - 3600))
    for exe in ("nvidia-smi", "snakemake"):
        (fake / exe).chmod(0o755)
    env = {"PATH": f"{fake}{os.pathsep}/usr/bin{os.pathsep}/bin", "OUT": str(out), "TZ": "JST-9",
           "FAKE_REASONS": reasons, "FAKE_PIDS": str(tmp_path / "sampler.pids")}
    return repo, out, env


@pytest.mark.skipif(not shutil.which("timeout") or not shutil.which("tar"), reason="needs timeout, tar")
@pytest.mark.parametrize("reasons", ["clocks_event_reasons.active", "clocks_throttle_reasons.active", "none"])
def test_sweep_sh_samples_the_gpus_through_snakemake_and_stops_before_packing(tmp_path: Path, reasons) -> None:
    """tools/gpu-host/sweep.sh with stand-ins for setup.sh, snakemake and nvidia-smi, in a zone other than UTC: the
    part's tarball holds gpu-STAMP.csv with samples of the GPU in UTC taken while snakemake ran, the reasons under the
    name the driver knows (or none), no empty .err file, and no sampler left running."""
    repo, out, env = fake_gpu_host(tmp_path, reasons)
    pids = tmp_path / "sampler.pids"
    began = time.time()
    done = subprocess.run(["bash", "tools/gpu-host/sweep.sh", "60", "part"], cwd=repo, env=env, check=False,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert "snakemake exit: 0" in done.stdout
    for pid in map(int, pids.read_text().split()):  # the sampler, stopped
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)
    with tarfile.open(out / "part.tgz") as tgz:
        names = tgz.getnames()
        (csv_name,) = [n for n in names if n.startswith("results/part/gpu-") and n.endswith(".csv")]
        assert not [n for n in names if n.endswith(".err")]
        (full,) = [n for n in names if n.startswith("results/part/snakemake-") and n.endswith(".full.log.gz")]
        assert gzip.decompress(tgz.extractfile(full).read()) == b"rule cell: this part\n"
        tgz.extractall(tmp_path / "unpacked", filter="data")
    header = (tmp_path / "unpacked" / csv_name).read_text().splitlines()[0]
    assert header.endswith("power.draw [W]" + ("" if reasons == "none" else f", {reasons}"))
    samples = load_report().gpu_samples(tmp_path / "unpacked/results/part")
    assert len(samples) >= 5 and set(samples["uuid"]) == {"GPU-fake0"}
    assert began - 1 < samples["time"].min() and samples["time"].max() < time.time() + 1  # UTC, not JST
    assert set(samples["sm_mhz"]) == {1980} and set(samples["power_w"]) == {650.25}
    assert samples["reasons"].isna().all() if reasons == "none" else set(samples["reasons"]) == {4}


@pytest.mark.skipif(not shutil.which("timeout") or not shutil.which("tar"), reason="needs timeout, tar")
def test_sweep_sh_removes_the_lock_a_stopped_call_left_without_snakemake_unlock(tmp_path: Path) -> None:
    """A call killed at its limit leaves Snakemake's lock on a warm host. sweep.sh removes .snakemake/locks/ as
    `snakemake --unlock` does, without calling it (it reads the whole workflow first, seconds of a part): the sweep
    itself is the only snakemake call, and finds no lock."""
    repo, _, env = fake_gpu_host(tmp_path)
    locks = repo / ".snakemake/locks"
    locks.mkdir()
    (locks / "0.input.lock").write_text("")
    (locks / "0.output.lock").write_text("")
    # The stand-in notes whether the lock was still there when the sweep's snakemake began.
    fake = Path(env["PATH"].split(os.pathsep)[0]) / "snakemake"
    fake.write_text(fake.read_text().replace('echo "$*" >> snakemake.calls\n',
                                             'echo "$*" >> snakemake.calls\n'
                                             '[ -e .snakemake/locks ] && echo locked >> snakemake.calls\n'))
    done = subprocess.run(["bash", "tools/gpu-host/sweep.sh", "60", "part", "--config", "run=part"], cwd=repo,
                          env=env, check=False, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and "snakemake exit: 0" in done.stdout, done.stderr
    calls = (repo / "snakemake.calls").read_text().splitlines()
    assert len(calls) == 1 and "--unlock" not in calls[0] and "run=part" in calls[0], calls
    assert not locks.exists()


@pytest.mark.skipif(not shutil.which("timeout") or not shutil.which("tar"), reason="needs timeout, tar")
@pytest.mark.parametrize(("sweep_gpus", "count"), [(None, 1), ("2,3", 2), ("5", 1)])
def test_sweep_sh_gives_snakemake_the_sweeps_own_gpus(tmp_path: Path, sweep_gpus, count) -> None:
    """The `gpu` resource is the host's GPUs (one, from the stand-in `nvidia-smi -L`), or the GPUs SWEEP_GPUS
    lists where two sweeps share the host (two-sweeps.sh): more than its own would let a sweep hold GPUs it has not."""
    repo, _, env = fake_gpu_host(tmp_path)
    if sweep_gpus:
        env["SWEEP_GPUS"] = sweep_gpus
    done = subprocess.run(["bash", "tools/gpu-host/sweep.sh", "60", "part"], cwd=repo, env=env, check=False,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    (call,) = (repo / "snakemake.calls").read_text().splitlines()
    assert call.endswith(f"--resources gpu={count}"), call


@pytest.mark.skipif(not shutil.which("timeout") or not shutil.which("tar"), reason="needs timeout, tar")
def test_sweep_sh_gives_the_sweep_its_stop_as_the_jobs_deadline(tmp_path: Path) -> None:
    """The jobs see ATTNSWEEP_DEADLINE at the time snakemake is stopped (SECONDS less 30 s for the packing, from
    the part's start), so none starts that would be cut off."""
    repo, _, env = fake_gpu_host(tmp_path)
    fake = Path(env["PATH"].split(os.pathsep)[0]) / "snakemake"
    fake.write_text(fake.read_text().replace('echo "$*" >> snakemake.calls\n',
                                             'echo "$*" >> snakemake.calls\necho "$ATTNSWEEP_DEADLINE" > deadline\n'))
    began = time.time()
    done = subprocess.run(["bash", "tools/gpu-host/sweep.sh", "60", "part"], cwd=repo, env=env, check=False,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert began + 30 - 2 <= int((repo / "deadline").read_text()) <= time.time() + 30


@pytest.mark.skipif(not shutil.which("timeout") or not shutil.which("tar"), reason="needs timeout, tar")
def test_sweep_sh_packs_no_log_of_a_job_the_deadline_held_back(tmp_path: Path) -> None:
    """A held-back job's log is its one "not started" line: not packed. A job that ran keeps its log, one whose
    later lines say more (a log that merely mentions the words) too."""
    repo, out, env = fake_gpu_host(tmp_path)
    logs = repo / "results/part/logs/cells"
    for name, text in (("held", "attnsweep: not started: expected to take about 86 s, 83 s left before "
                                "ATTNSWEEP_DEADLINE\n"),
                       ("ran", "attnsweep: small 256 sdpa compiled: ok\n"),
                       ("more", "attnsweep: not started: expected to take about 9 s, 8 s left\nthen it ran\n")):
        (logs / name).mkdir(parents=True)
        (logs / name / "cell.log").write_text(text)
    done = subprocess.run(["bash", "tools/gpu-host/sweep.sh", "60", "part"], cwd=repo, env=env, check=False,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    with tarfile.open(out / "part.tgz") as tgz:
        packed = {n for n in tgz.getnames() if n.endswith("cell.log")}
    assert packed == {"results/part/logs/cells/ran/cell.log", "results/part/logs/cells/more/cell.log"}


@pytest.mark.skipif(not shutil.which("timeout") or not shutil.which("tar"), reason="needs timeout, tar")
def test_sweep_sh_refuses_a_checkout_without_the_hosts_last_part(tmp_path: Path) -> None:
    """A part leaves its stamp on the host, not in its tarball. A call on that host whose checkout lacks the part's
    wall file (sent before the part's tarball was unpacked) stops before snakemake; one that has it sweeps."""
    repo, out, env = fake_gpu_host(tmp_path)

    def sweep() -> subprocess.CompletedProcess:
        return subprocess.run(["bash", "tools/gpu-host/sweep.sh", "60", "part"], cwd=repo, env=env, check=False,
                              capture_output=True, text=True, timeout=60)

    assert sweep().returncode == 0
    stamp = (repo / "results/part/.last-part").read_text().strip()
    wall = repo / f"results/part/wall-{stamp}.txt"
    assert wall.is_file()
    with tarfile.open(out / "part.tgz") as tgz:
        assert f"results/part/wall-{stamp}.txt" in tgz.getnames()
        assert not [n for n in tgz.getnames() if n.endswith(".last-part")]
    wall.unlink()  # the checkout of a call sent before that part came back
    refused = sweep()
    assert refused.returncode == 3 and f"results/part/wall-{stamp}.txt) is not in the checkout" in refused.stderr
    assert len((repo / "snakemake.calls").read_text().splitlines()) == 1
    wall.write_text("exit 0 wall_s 40\n")  # unpacked
    assert sweep().returncode == 0
    assert len((repo / "snakemake.calls").read_text().splitlines()) == 2


def full_log(*events: tuple[str, str]) -> str:
    """A Snakemake full log as sweep.sh keeps it: (time, the lines logged at it) in order."""
    return "".join(f"[Wed Dec  2 01:{t} 2026]\n{lines}" for t, lines in events)


def warmup_job(jobid: int, attn: str, repeat: int, expected_s: int = 30) -> str:
    return (f"localrule warmup:\n    jobid: {jobid}\n    wildcards: model=small, seq_len=256, attn={attn}, "
            f"mode=compiled, repeat={repeat}\n    threads: 2\n"
            f"    resources: tmpdir=/tmp, gpu=0, expected_s={expected_s}\n")


def timed_job(jobid: int, attn: str, repeat: int) -> str:
    record = "cell.json" if repeat == 1 else f"repeat-{repeat}.json"
    return (f"Job {jobid}: cell model=small seq_len=256 attn={attn} mode=compiled\n"
            f"Reason: Missing output files: results/r/cells/model~small/.../{record}; Input files updated by another "
            f"job: results/r/warmup/model~small/.../r{repeat}/warmup.json\n")


def failed(jobid: int, rule: str, log: str) -> str:
    bar = "=" * 80
    return f"Error in rule {rule}:\n    message: None\n    jobid: {jobid}\nLogfile x.log:\n{bar}\n{log}\n{bar}\n"


def held_back_line(tmp_path: Path, expected_s: int, left_s: int) -> str:
    """The line a held-back job's log holds, as the sweep's check before each job writes it (with a clock that
    reads 1,000,000 s since the epoch), so that report.py is tested on the line the pipeline writes."""
    clock = tmp_path / "clock"
    clock.mkdir(exist_ok=True)
    (clock / "date").write_text("#!/bin/sh\necho 1000000\n")
    (clock / "date").chmod(0o755)
    env = {**os.environ, "PATH": f"{clock}:{os.environ['PATH']}", "ATTNSWEEP_DEADLINE": str(1_000_000 + left_s)}
    check = subprocess.run(["bash", str(ROOT / "workflow/scripts/start-before-deadline.sh"), str(expected_s)],
                           env=env, capture_output=True, text=True)
    assert check.returncode == 3, check
    return check.stdout.strip()


def test_parts_tells_what_each_parts_gpu_jobs_did(tmp_path: Path, capsys) -> None:
    """From a part's full log: a timed job and the warm-up it followed, and the time the timed jobs held the GPU
    (their records started within the part, superseded ones too); repeat 2's warm-up, whose timed job the deadline
    held back; a warm-up held back a second later (its log: 39 s left); the last warm-up started (repeat 2's, at
    01:40) 60 s before the deadline the first held-back job's log gives (02:00 + 40 s), and the GPU idle from the
    last GPU job's end to that deadline; and, in a part stopped at its end (nothing held back, no idle known),
    a timed job cut off and a warm-up cut off that started with nothing to expect of it (expected_s 0), which the
    deadline could not hold back."""
    report = load_report()
    run = tmp_path / "r"
    run.mkdir()
    held = held_back_line(tmp_path, expected_s=90, left_s=40)
    first = full_log(("00:00", warmup_job(1, "sdpa", 1)), ("00:30", "Finished jobid: 1 (Rule: warmup)\n"),
                     ("00:30", timed_job(2, "sdpa", 1)), ("01:40", "Finished jobid: 2 (Rule: cell)\n"),
                     ("01:40", warmup_job(3, "sdpa", 2)), ("02:00", "Finished jobid: 3 (Rule: warmup)\n"),
                     ("02:00", timed_job(4, "sdpa", 2)), ("02:00", failed(4, "cell_repeat", held)),
                     ("02:00", warmup_job(5, "fa2", 1)),
                     ("02:01", failed(5, "warmup", held_back_line(tmp_path, expected_s=90, left_s=39))))
    second = full_log(("10:00", warmup_job(1, "fa2", 1)), ("10:45", "Finished jobid: 1 (Rule: warmup)\n"),
                      ("10:45", timed_job(2, "fa2", 1)), ("10:50", warmup_job(3, "flex", 1, expected_s=0)),
                      ("11:05", failed(2, "cell", "attnsweep: timed run")))
    for stamp, text, wall in (("20261202T010000", first, 130.5), ("20261202T011000", second, 70.0)):
        with gzip.open(run / f"snakemake-{stamp}.full.log.gz", "wt") as f:
            f.write(text)
        (run / f"wall-{stamp}.txt").write_text(f"exit 1 wall_s {wall}\n")
    # The timed job's own clock is shorter than its job's 70 s (it waited for the GPU's timed lock); a superseded
    # record held the GPU too; a record started after the part's end is another part's.
    for folder, started, seconds in (("cells/sdpa/cell.json", "01:00:40", 55.0),
                                     ("superseded/cells/sdpa/cell.json", "01:00:31", 4.0),
                                     ("cells/fa2/cell.json", "01:02:11", 30.0)):
        (run / folder).parent.mkdir(parents=True, exist_ok=True)
        (run / folder).write_text(json.dumps({"status": "ok", "started_at": f"2026-12-02T{started}+00:00",
                                              "duration_s": seconds}))
    # A part whose Snakemake stopped before its first job wrote no full log: its wall time only.
    (run / "wall-20261202T012000.txt").write_text("exit 1 wall_s 3.1\n")
    one, two, three = report.part_split(run)
    assert three == {"run": "r", "part (UTC)": "2026-12-02 01:20 (no full log)", "wall s": 3.1}
    assert one == {"run": "r", "part (UTC)": "2026-12-02 01:00", "wall s": 130.5, "timed jobs": 1, "timed s": 70.0,
                   "timed own s": 59.0,
                   "warm-ups used": 1, "warm-ups used s": 30.0, "warm-ups left": 1, "warm-ups left s": 20.0,
                   "cut off": 0, "cut off s": 0.0, "cut off unestimated": 0, "held back": 2,
                   "last warm-up start, s before deadline": 60.0, "idle before deadline s": 40.0}
    keys = ("timed jobs", "timed own s", "warm-ups left", "warm-ups left s", "cut off", "cut off s",
            "cut off unestimated", "held back", "last warm-up start, s before deadline", "idle before deadline s")
    assert [two[k] for k in keys] == [0, None, 1, 45.0, 2, 35.0, 1, 0, None, None]
    report.part_split_table([str(run)])
    out = capsys.readouterr().out
    assert "| all   | 3 parts" in out and "snakemake" not in out
    assert re.search(r"\| all +\| 3 parts +\| +204 \|", out), out  # 130.5 + 70.0 + 3.1
    # Not summed over the parts: blank in the total row (the idle time is summed: 40 s).
    assert re.search(r"\| all .*\| +2 \| +\| +40 \|$", out, re.M), out


PROGRESS_CELL = {"model": "small", "seq_len": 1024, "kv_heads": 12, "precision": "fp16", "optimizer": "adamw",
                 "harness": "native"}


def progress_record(run: Path, attn: str, repeat: int, tokens: float, finished: str, uuid: str = "GPU-x",
                    code: str = "c0de" * 16, window: tuple[float, float] | None = None,
                    kv_heads: int = PROGRESS_CELL["kv_heads"]) -> None:
    folder = attn if kv_heads == PROGRESS_CELL["kv_heads"] else f"{attn}-kv{kv_heads}"
    path = run / "cells" / folder / ("cell.json" if repeat == 1 else f"repeat-{repeat}.json")
    path.parent.mkdir(parents=True, exist_ok=True)
    conditions = {"start_unix_s": window[0], "end_unix_s": window[1]} if window else None
    path.write_text(json.dumps({
        "cell": {**PROGRESS_CELL, "attn": attn, "mode": "compiled" if attn != "e" else "eager", "kv_heads": kv_heads},
        "status": "ok", "tokens_per_sec": tokens, "finished_at": finished, "window_conditions": conditions,
        "env": {"code": {"source_sha256": code}, "gpu": {"uuid": uuid}}}))


# Two timed jobs' failures as a part's full log shows them (the first as on the H100, 2026-12-06, shortened), the first
# twice (its log, and Snakemake's report of it).
_CELL = "model~{}/seq_len~{}/attn~{}/mode~eager/kv_heads~{}/precision~bf16/optimizer~adamw_fused/harness~native"
TIMED_OOM_LOG = "\n".join([
    "Error in rule cell:",
    *2 * [f"results/r/cells/{_CELL.format('medium', 1024, 'flex', 16)}/cell.json: error (the timed run at batch size "
          "32, which fitted in the warm-up, ran out of memory: CUDA out of memory. Tried to allocate 2.00 GiB. GPU 0 "
          "has a total capacity of 79.18 GiB of which 1.22 GiB is free. Process 4230 has 39.98 GiB memory in use. "
          "Including non-PyTorch memory, this process has 37.98 GiB memory in use. 45.00 GiB allowed; Of the al)"],
    "Error in rule cell_repeat:",
    f"results/r/cells/{_CELL.format('small', 4096, 'sdpa', 4)}/repeat-2.json: error (the timed run at batch size 8, "
    "which fitted in the warm-up, ran out of memory: CUDA out of memory. Tried to allocate 2.00 GiB.)",
    f"results/r/cells/{_CELL.format('small', 4096, 'fa2', 12)}/repeat-2.json: error (the timed run at batch size 8, "
    "which fitted in the warm-up, failed: RuntimeError)",
])


def test_timed_jobs_out_of_memory_at_their_warm_ups_batch_are_read_from_a_parts_log() -> None:
    """Each timed job that ran out of memory at the batch its warm-up fitted, once, with the memory other processes
    held where PyTorch's message names them; a timed run that failed otherwise is not one."""
    report = load_report()
    ooms = report.timed_ooms(TIMED_OOM_LOG)
    assert [(o["cell"]["attn"], o["repeat"], o["batch_size"], o["others_gib"]) for o in ooms] == [
        ("flex", 1, 32, 39.98), ("sdpa", 2, 8, None)]
    assert ooms[0]["cell"]["kv_heads"] == "16" and ooms[0]["record"].endswith("/cell.json")
    assert report.timed_oom_text([]) == "Timed jobs out of memory at the batch size their warm-up fitted: none."


def test_progress_says_what_is_left_and_what_the_parts_since_measured(tmp_path: Path) -> None:
    """Counts at the newest record's code (a record of other code is not counted, and its cell is left), the
    measurements left (the grid's cells without a record times the repeats, and a cell's missing repeat), the parts
    from `since` on with their cells, the sampled windows' clocks, and the repeats' ranges on one GPU and on two.
    The grid is summary.csv's rows; what is left comes from the records, so a summary not rebuilt since the last
    part (here it still has `e` and `a` missing) counts the same."""
    report = load_report()
    run = tmp_path / "r"
    progress_record(run, "a", 1, 100.0, "2026-12-01T10:01:00+00:00")
    progress_record(run, "a", 2, 102.0, "2026-12-01T10:02:00+00:00")  # before `since`: counted, not listed
    progress_record(run, "b", 1, 200.0, "2026-12-02T04:01:00+00:00", window=WINDOW)
    progress_record(run, "b", 2, 190.0, "2026-12-02T04:02:00+00:00", uuid="GPU-y")  # repeats on two GPUs
    progress_record(run, "e", 1, 50.0, "2026-12-02T04:11:00+00:00")  # its repeat 2 is left
    progress_record(run, "old", 1, 70.0, "2026-11-30T10:00:00+00:00", code="0ld" * 20)
    (run / "wall-20261201T100000.txt").write_text("exit 1 wall_s 500\n")
    (run / "wall-20261202T040000.txt").write_text("exit 1 wall_s 300\n")
    (run / "wall-20261202T041000.txt").write_text("exit 1 wall_s 200\n")
    gpu_csv(run)
    for attn, timed in (("a", 100.0), ("b", 200.0)):  # the complete cells' jobs: each warm-up half its timed job
        for repeat, name in ((1, "cell"), (2, "repeat-2")):
            _bench(run / "benchmarks/cells" / attn / f"{name}.tsv", timed)
            _bench(run / "benchmarks/warmup" / attn / f"r{repeat}" / "warmup.tsv", timed / 2)
    pd.DataFrame({**PROGRESS_CELL, "mode": ["compiled", "compiled", "eager", "compiled", "compiled"],
                  "attn": ["a", "b", "e", "old", "naive"],
                  "status": ["missing", "ok", "missing", "missing", "missing"]}).to_csv(run / "summary.csv",
                                                                                   index=False)
    with gzip.open(run / "snakemake-20261202T040000.full.log.gz", "wt") as log:  # the first part's since `since`
        log.write(TIMED_OOM_LOG)
    text = report.progress_text(run, pd.Timestamp("2026-12-02T04:00", tz="UTC"))
    assert ("Timed jobs out of memory at the batch size their warm-up fitted: 2, medium 1024 flex eager repeat 1 "
            "(batch 32; other processes held 40.0 GiB), small 4096 sdpa eager kv_heads=4 repeat 2 (batch 8; other "
            "processes held none named). 1 of them first repeats") in text
    assert "Records by cell code: c0dec0de 5, 0ld0ld0l 1." in text
    assert "5 measurements, 2 cells with all 2 repeats; 5 cells in the grid, 2 left" in text
    assert "5 measurements left" in text  # `old` and `naive` x 2, and e's repeat 2
    # The four compiled ones at the median of a's 150 s and b's 300 s a measurement; the rest of the sweeps' 1,000 s
    # is 10%; nothing eager is complete.
    assert ("about 900 s (15 min) of jobs, 1,000 s (17 min) with the run's rest so far (10% of its sweeps' GPU "
            "time); 1 with nothing like them measured.") in text
    assert "| small   | compiled | old    |            1 |" in text and "| eager" not in text
    assert "repeats on one GPU: 1 cells, 2.0-2.0%, median 2.0%; on several: 1 cells, 5.1-5.1%" in text
    assert "| 2026-12-02 04:00 |      300 |              2 | small 1024 b both" in text
    assert "| 2026-12-02 04:10 |      200 |              1 | small 1024 e eager repeat 1" in text
    assert "2026-12-01 10:00" not in text and "Since 2026-12-02 04:00 UTC: 3 measurements." in text
    assert "Their 1 sampled windows (GPUs: GPU-x 1): clock events SW power cap, SW thermal slowdown 1" in text
    assert "Cells completed since then, repeats on one GPU: none." in text


def test_progress_costs_the_measurements_left_only_from_cells_with_their_jobs_benchmarks(tmp_path: Path) -> None:
    """A complete cell whose jobs left no benchmark (a device tree with only the latest parts' files) does not count
    as a cell that cost nothing: the cost left is the benchmarked cell's, and with none, nothing like them."""
    report = load_report()
    run = tmp_path / "r"
    for attn in ("a", "b"):
        progress_record(run, attn, 1, 100.0, "2026-12-01T10:01:00+00:00")
        progress_record(run, attn, 2, 100.0, "2026-12-01T10:02:00+00:00")
    (run / "wall-20261201T100000.txt").write_text("exit 1 wall_s 300\n")
    pd.DataFrame({**PROGRESS_CELL, "mode": "compiled", "attn": ["a", "b", "c"],
                  "status": ["ok", "ok", "missing"]}).to_csv(run / "summary.csv", index=False)
    text = report.progress_text(run)
    assert "about 0 s (0 min) of jobs" in text and "GPU time); 2 with nothing like them measured." in text
    for name in ("cell", "repeat-2"):
        _bench(run / "benchmarks/cells/a" / f"{name}.tsv", 100.0)
    for repeat in (1, 2):
        _bench(run / "benchmarks/warmup/a" / f"r{repeat}" / "warmup.tsv", 50.0)
    assert "about 300 s (5 min) of jobs" in report.progress_text(run)


def test_progress_warns_where_the_summary_lacks_cells_the_run_has_measured(tmp_path: Path) -> None:
    """A summary aggregated with a narrower grid (a part run with `grid=` on the command line, the parts after it
    held back and did not aggregate) is not the run's grid: the cells it lacks include measured ones, and the
    cells never measured are not counted as left. Said above everything else; not said where the summary holds them."""
    report = load_report()
    run = tmp_path / "r"
    for attn in ("a", "b"):
        progress_record(run, attn, 1, 100.0, "2026-12-01T10:01:00+00:00")
    narrow = pd.DataFrame({**PROGRESS_CELL, "mode": "compiled", "attn": ["a"], "status": ["ok"]})
    narrow.to_csv(run / "summary.csv", index=False)
    text = report.progress_text(run)
    assert text.startswith("## r\n\n**summary.csv lacks 1 cells measured at c0dec0de: it was last aggregated with a "
                           "narrower grid")
    pd.DataFrame({**PROGRESS_CELL, "mode": "compiled", "attn": ["a", "b"], "status": "ok"}).to_csv(
        run / "summary.csv", index=False)
    assert "lacks" not in report.progress_text(run)


def test_progress_names_the_warm_ups_left_expected_longest(tmp_path: Path) -> None:
    """Each warm-up left, expected as its check at a part's start expects it with nothing queued: a cell's first
    from the cells like it (the longest warm-up attempt, stretched by 1.5, and the longest timed job, by 1.05, each
    with 5 s to start), a later repeat from repeat 1's record; longest first; a cell with nothing like it measured
    is not given 0 s but counted apart (its check expects only the GPU's queue)."""
    report = load_report()
    run = tmp_path / "r"
    base = {"model": "small", "seq_len": 1024, "mode": "compiled", "kv_heads": 12, "precision": "bf16",
            "optimizer": "adamw_fused", "harness": "native"}

    def record(attn: str, repeat: int, warmup_s: float, duration_s: float, wait_s: float | None = None) -> None:
        cell = {**base, "attn": attn}
        path = run / "cells" / cell_path(cell) / sweep.record_name(repeat)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps({
            "cell": cell, "status": "ok", "tokens_per_sec": 100.0, "started_at": "2026-12-01T09:59:00+00:00",
            "finished_at": "2026-12-01T10:00:00+00:00",
            "batch_size": 32, "duration_s": duration_s, "env": {"code": {"source_sha256": "c0de" * 16}},
            "batch_attempts": [{"stage": "warmup", "outcome": "ok", "batch_size": 32, "seconds": warmup_s}],
            **({} if wait_s is None else {"warmup": {"run_seat_wait_s": wait_s}})}))

    record("sdpa", 1, 100.0, 40.0, wait_s=30.0)  # its repeats are done: its wait is in no estimate left
    record("sdpa", 2, 90.0, 38.0)
    record("flex", 1, 20.0, 12.0, wait_s=10.0)  # its repeat 2 is left; half its attempt was the wait
    pd.DataFrame([{**base, "attn": "sdpa", "status": "ok"}, {**base, "attn": "flex", "status": "ok"},
                  {**base, "attn": "fa2", "status": "missing"},
                  {**base, "model": "medium", "kv_heads": 16, "attn": "fa2", "status": "missing"}]).to_csv(
        run / "summary.csv", index=False)
    text = report.progress_text(run)
    # fa2: 100 * 1.5 + 5 + 40 * 1.05 + 5 = 202; flex's repeat 2: 20 * 1.5 + 5 + 12 * 1.05 + 5 = 52.6, of which
    # repeat 1's wait for the run seat makes 10 * 1.5 (said where it is a tenth of the estimate or more).
    assert ("a part's start): 202 s small 1024 fa2, 53 s small 1024 flex repeat 2 (15 s of it repeat 1's 10 s wait "
            "for the run seat, times 1.5); 1 with nothing like them measured (expecting only the queue).") in text


def test_progress_without_a_summary_says_how_to_build_it(tmp_path: Path) -> None:
    """A run whose parts all ended at their deadline has records and no summary.csv, which gives the grid."""
    run = tmp_path / "r"
    progress_record(run, "a", 1, 100.0, "2026-12-01T10:01:00+00:00")
    with pytest.raises(SystemExit, match=r"r/summary.csv does not exist: it gives the grid.*aggregate_only=True"):
        load_report().progress_text(run)


def test_on_the_whole_gpu_runs_records_no_timed_job_is_expected_shorter_than_it_took() -> None:
    """The deadline's estimate of each committed timed job of results/h200, made as for a cell not yet measured
    (sweep.timed_job_s), against the job's wall time: a job expected short is started where it cannot end, and is
    cut off. The run's other cells of the model bring the estimate closer to the wall time than the warm-up alone."""
    rows = load_report().estimate_ratios(ROOT / "results/h200")
    assert len(rows) >= 150, f"only {len(rows)} records to check: has results/h200 moved?"
    shortest = min(rows, key=lambda r: r["like"])
    assert shortest["like"] > 1.0, f"expected shorter than it took: {shortest}"
    assert statistics.median(r["like"] for r in rows) < statistics.median(r["alone"] for r in rows)


def test_on_the_runs_records_with_warm_up_step_times_no_timed_job_is_expected_shorter_than_it_took() -> None:
    """results/h200-modern's records keep their warm-up's step times, from which the timed job's pace is estimated
    (not from the attempt's seconds, which also count its wait for the GPU's run seat: up to 259 s there)."""
    rows = load_report().estimate_ratios(ROOT / "results/h200-modern")
    assert len(rows) >= 100, f"only {len(rows)} records to check: has results/h200-modern moved?"
    shortest = min(rows, key=lambda r: r["like"])
    assert shortest["like"] > 1.0, f"expected shorter than it took: {shortest}"
    # From the attempt's seconds: up to 123 times. From the step times the longest, relatively, are jobs of 7-12 s,
    # in which an estimate's fixed seconds weigh most: 3.5-5.4 times (40 s for small 1,024 `sdpa_flash`'s 7.4 s).
    assert max(r["like"] for r in rows) < 10.0


def _bench(path: Path, seconds: float) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f"s\th:m:s\n{seconds}\t0:00:00\n")


def cost_cell(run: Path, axes: dict, repeats: list[tuple[str, str, float]], cap: float | None,
              code: str = "c0de" * 16) -> Path:
    """A cell's records (one per repeat: the GPU, the start, its timed job's seconds; its warm-up took half) and
    their Snakemake benchmarks; returns the cell's folder below cells/."""
    rel = Path(cell_path(axes))
    for n, (uuid, started, seconds) in enumerate(repeats, 1):
        name = "cell" if n == 1 else f"repeat-{n}"
        path = run / "cells" / rel / f"{name}.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        ended = datetime.fromtimestamp(datetime.fromisoformat(started).timestamp() + seconds, UTC).isoformat()
        path.write_text(json.dumps({"cell": {**axes, "memory_cap_gib": cap}, "status": "ok", "batch_size": 8,
                                    "started_at": started, "finished_at": ended, "duration_s": seconds,
                                    "env": {"code": {"source_sha256": code}, "gpu": {"uuid": uuid}}}))
        _bench(run / "benchmarks/cells" / rel / f"{name}.tsv", seconds)
        _bench(run / "benchmarks/warmup" / rel / f"r{n}" / "warmup.tsv", seconds / 2)
    return rel


def test_cost_gives_each_cells_gpu_time_and_the_sweeps_rest(tmp_path: Path) -> None:
    """Without a cap a cell's GPU time is its warm-ups' and timed jobs'; under one only the timed jobs' (the
    warm-ups ran beside them). The search attempts counted are those of the records' code. The sweeps' GPU time is
    each part's wall time times the GPUs its records ran on; the rest is what no kept job accounts for."""
    report = load_report()
    run = tmp_path / "r"
    base = {"model": "small", "seq_len": 1024, "mode": "compiled", "kv_heads": 12, "precision": "fp16",
            "optimizer": "adamw", "harness": "native"}
    rel = cost_cell(run, {**base, "attn": "sdpa"}, [("GPU-a", "2026-12-01T10:01:00+00:00", 40.0),
                                                     ("GPU-a", "2026-12-01T10:03:00+00:00", 30.0)], cap=None)
    cost_cell(run, {**base, "seq_len": 512, "attn": "fa2"}, [("GPU-a", "2026-12-02T04:01:00+00:00", 10.0),
                                                             ("GPU-b", "2026-12-02T04:02:00+00:00", 20.0)], cap=12.0)
    search = run / "searches" / rel / "r1.jsonl"
    search.parent.mkdir(parents=True)
    search.write_text("".join(json.dumps({"batch_size": b, "key": {"code": c}, "outcome": o, "seconds": s}) + "\n"
                              for b, c, o, s in [(16, "0ld" * 20, "oom", 9.0), (16, "c0de" * 16, "oom", 7.0),
                                                 (8, "c0de" * 16, "ok", 11.0)]))
    (run / "wall-20261201T100000.txt").write_text("exit 1 wall_s 500\n")
    (run / "wall-20261202T040000.txt").write_text("exit 1 wall_s 300\n")
    df = report.cell_costs(run)
    assert list(df["seq_len"]) == [512, 1024] and "kv_heads" not in df  # by context; an axis that never varies: out
    capped, alone = df.iloc[0], df.iloc[1]
    assert capped["GPU s"] == 30.0 and capped["warm-up jobs s"] == 15.0
    assert alone["GPU s"] == 105.0 and alone["timed jobs s"] == 70.0
    assert alone["search attempts"] == 2 and alone["search s"] == 18.0
    text = report.cost_text([str(run)])
    # 500 s on one GPU, 300 s on two: 1,100 GPU s, less 135 s of the cells'.
    assert "2 sweeps of 800 s of wall time (0.22 h), 1,100 GPU s (0.31 GPU h)" in text
    assert "the cells' GPU s 135 (33.8 s a measurement), rest 965 s (88%)" in text
    assert "warm-ups beside the timed jobs for the capped cells, alone for the others" in text


def test_the_committed_gpu_time_page_is_the_scripts_output_for_the_runs_it_lists() -> None:
    """results/gpu-time.md is `report.py --cost`'s output for the runs it has a section of (tools/rerender.sh
    rewrites it after each session's parts): no page left behind the records."""
    page = (ROOT / "results/gpu-time.md").read_text()
    runs = [str(ROOT / "results" / line[3:]) for line in page.splitlines() if line.startswith("## ")]
    assert [Path(r).name for r in runs] == ["h200-study-12gib", "h200"]
    assert load_report().cost_text(runs) + "\n" == page


def checked(attn: str, mode: str, repeat: int = 1, status: str = "ok", **fields: object) -> dict:
    """One of progress_text's records for checks_text: a record of `attn` in `mode` with `fields`."""
    clean = {"compile": {"caches": {"fx_graph": {"hit": 2}, "aot_autograd": {"hit": 1}},
                         "cudagraphs": {"captured": 2, "skipped": 0, "fell_back": False}},
             "window_conditions": {"wall_s": 2.0, "gc": {"seconds": 0.0},
                                   "cuda_allocator": {"num_alloc_retries": 0, "num_ooms": 0}},
             "warmup": {"run_seat_wait_s": 4.0}}
    return {"repeat": repeat, "rec": {"cell": {**PROGRESS_CELL, "attn": attn, "mode": mode}, "status": status,
                                      **clean, **fields}}


def test_the_checks_of_a_part_count_what_each_measurement_should_show_and_name_those_that_do_not() -> None:
    report = load_report()
    clean = [checked("a", "compiled"), checked("a", "compiled_cudagraphs"), checked("e", "eager", compile=None),
             checked("o", "eager", status="oom", compile=None, window_conditions=None, warmup=None)]
    text = report.checks_text(clean)
    assert text.splitlines() == [
        "Checks of these 4 measurements (3 ok):",
        "- compiled timed jobs that ran their warm-up's compiled code (compile caches: hits only): 2 of 2",
        "- CUDA graphs fallen back or skipped: none (of 1 measurements with CUDA graphs)",
        "- windows with garbage collection (1% of the window or more): none",
        "- windows with CUDA allocator retries or out-of-memory events: none",
        "- warm-ups' wait for the run seat: 3 warm-ups, median 4.0 s, at most 4 s (small 1024 e eager repeat 1)"]

    graphs = {"captured": 1, "skipped": 1, "fell_back": True}
    faulty = [checked("m", "compiled", 2, compile={"caches": {"fx_graph": {"hit": 1, "miss": 1}}}),
              checked("n", "compiled", compile={"caches": None}),
              checked("f", "compiled_cudagraphs", compile={"caches": {"fx_graph": {"hit": 1}}, "cudagraphs": graphs}),
              checked("g", "eager", compile=None, warmup={"run_seat_wait_s": 120.0},
                      window_conditions={"wall_s": 2.0, "gc": {"seconds": 0.1},
                                         "cuda_allocator": {"num_alloc_retries": 3, "num_ooms": 0}})]
    lines = report.checks_text(faulty).splitlines()
    assert lines[1] == ("- compiled timed jobs that ran their warm-up's compiled code (compile caches: hits only): "
                        "1 of 3; not: small 1024 m repeat 2 ({'fx_graph': {'hit': 1, 'miss': 1}}), "
                        "small 1024 n repeat 1 (None)")
    assert lines[2] == "- CUDA graphs fallen back or skipped: small 1024 f compiled_cudagraphs repeat 1 (of 1 " \
                       "measurements with CUDA graphs)"
    assert lines[3] == "- windows with garbage collection (1% of the window or more): small 1024 g eager repeat 1 5.0%"
    assert lines[4] == "- windows with CUDA allocator retries or out-of-memory events: small 1024 g eager repeat 1"
    assert lines[5] == ("- warm-ups' wait for the run seat: 4 warm-ups, median 4.0 s, at most 120 s "
                        "(small 1024 g eager repeat 1)")


def estimated_record(run: Path, attn: str, repeat: int, attempt_s: float, duration_s: float, wait_s: float | None,
                     warmup_wall_s: float, timed_wall_s: float) -> None:
    """A compiled record made after a warm-up (its attempt at batch 8 took `attempt_s`, `wait_s` of it for the run
    seat), with its warm-up's and timed job's Snakemake benchmarks."""
    cell = {**PROGRESS_CELL, "attn": attn, "mode": "compiled", "steps": 50}
    folder = Path(cell_path(cell))
    name = "cell" if repeat == 1 else f"repeat-{repeat}"
    path = run / "cells" / folder / f"{name}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    warmup = {"first_step_s": attempt_s / 2, "steps": 10, **({} if wait_s is None else {"run_seat_wait_s": wait_s})}
    path.write_text(json.dumps({
        "cell": cell, "status": "ok", "batch_size": 8, "duration_s": duration_s, "warmup": warmup,
        "batch_attempts": [{"batch_size": 8, "outcome": "ok", "seconds": attempt_s, "stage": "warmup"},
                           {"batch_size": 8, "outcome": "ok", "seconds": duration_s, "stage": "timed"}]}))
    _bench(run / "benchmarks/warmup" / folder / f"r{repeat}" / "warmup.tsv", warmup_wall_s)
    _bench(run / "benchmarks/cells" / folder / f"{name}.tsv", timed_wall_s)


def test_the_warm_up_estimates_are_read_against_both_jobs_wall_time(tmp_path: Path) -> None:
    """A later repeat is estimated from its first record (its attempt stretched by COLD_SPREAD, its timed job by
    REPEAT_SPREAD, each with JOB_START_S), a first repeat from the records of the cells that differ in the attention
    only (its own left out); each over the two jobs' wall times, with the share of the warm-up's wall time it waited
    for the run seat."""
    report = load_report()
    run = tmp_path / "r"
    estimated_record(run, "a", 1, 60.0, 10.0, 6.0, warmup_wall_s=70.0, timed_wall_s=15.0)
    estimated_record(run, "a", 2, 50.0, 11.0, 40.0, warmup_wall_s=80.0, timed_wall_s=16.0)
    estimated_record(run, "b", 1, 100.0, 20.0, None, warmup_wall_s=110.0, timed_wall_s=25.0)
    rows = {r["record"]: r for r in report.warmup_estimate_ratios(run)}
    a2 = (60.0 * sweep.COLD_SPREAD + sweep.JOB_START_S) + (10.0 * sweep.REPEAT_SPREAD + sweep.JOB_START_S)
    assert rows["small 1024 a repeat-2"] == {"record": "small 1024 a repeat-2", "first": False,
                                              "ratio": pytest.approx(a2 / 96.0), "wait": pytest.approx(0.5)}
    # b from a's two records: the longer attempt and the longer timed job.
    b1 = (60.0 * sweep.COLD_SPREAD + sweep.JOB_START_S) + (11.0 * sweep.REPEAT_SPREAD + sweep.JOB_START_S)
    assert rows["small 1024 b cell"]["ratio"] == pytest.approx(b1 / 135.0) and rows["small 1024 b cell"]["wait"] is None
    a1 = (100.0 * sweep.COLD_SPREAD + sweep.JOB_START_S) + (20.0 * sweep.REPEAT_SPREAD + sweep.JOB_START_S)
    assert rows["small 1024 a cell"]["ratio"] == pytest.approx(a1 / 85.0)
    lines = report.estimates_text(run).splitlines()
    assert lines[-2] == (f"warm-up and timed job, a first repeat, from the run's like cells: 2 records, "
                         f"{b1 / 135.0:.2f}-{a1 / 85.0:.2f} times their wall time, "
                         f"median {(b1 / 135 + a1 / 85) / 2:.2f}, "
                         f"1 under it; the warm-ups waited for the run seat a median 9% of their wall time, at most 9%")
    assert lines[-1].startswith("warm-up and timed job, a later repeat, from its first: 1 records, ")
    assert lines[-1].endswith("0 under it; the warm-ups waited for the run seat a median 50% of their wall time, "
                              "at most 50%")


def _coded(record: Path, code: str) -> Path:
    rec = json.loads(record.read_text())
    rec["env"]["code"]["source_sha256"] = code
    record.write_text(json.dumps(rec))
    return record


def test_equal_and_between_read_a_run_at_one_code_given_as_run_at_code(tmp_path: Path, capsys) -> None:
    """A run in parts keeps a cell's records of the code it measured with until they are measured again: RUN@CODE
    compares only the records of that code, so a cell's stale repeat is not counted beside its new one."""
    report = load_report()
    assert report._run_and_code("results/r@ab12") == (Path("results/r"), "ab12")
    assert report._run_and_code("results/r", "cd34") == (Path("results/r"), "cd34")
    new, old = "ab" * 32, "cd" * 32
    run, before = tmp_path / "r", tmp_path / "before"
    first = _coded(make_cell(run, attn="sdpa", mode="compiled", seq_len=1024, tokens_per_sec=110.0), new)
    _coded(add_repeat(first, 2, 100.0), old)  # a repeat of the code before, not measured again yet
    _coded(add_repeat(_coded(make_cell(before, attn="sdpa", mode="compiled", seq_len=1024, tokens_per_sec=100.0),
                             old), 2, 101.0), old)
    report.equal(str(run), str(before))
    assert "| 110, 100 | 100, 101 |" in capsys.readouterr().out  # the folder as it is: two codes mixed
    report.equal(f"{run}@abab", str(before))
    row = capsys.readouterr().out.splitlines()[2]
    assert "| 110 " in row and "| 100, 101 " in row and "not known (fewer than 2 repeats)" in row
    report.between(f"{run}@abab", f"{before}@cdcd")
    assert "| 110 " in capsys.readouterr().out.splitlines()[2]
    result = subprocess.run([sys.executable, str(ROOT / "benchmarks/sweep/report.py"), "--equal",
                             f"{tmp_path}/missing@abab", str(before)], capture_output=True, text=True)
    assert result.returncode == 2 and f"{tmp_path}/missing: not a run folder" in result.stderr
    for args in (["--between", str(before)], ["--between", str(before), str(before), "cdcd"],
                 ["--progress", str(before), "x", "y"], ["--progress", str(before), "yesterday"],
                 ["--equal", str(before)], ["--parts", str(before), "--hosts", str(before), str(before)], []):
        result = subprocess.run([sys.executable, str(ROOT / "benchmarks/sweep/report.py"), *args],
                                capture_output=True, text=True)
        assert result.returncode == 2 and "usage: report.py" in result.stderr, args


def test_progress_names_cells_that_differ_in_their_key_value_heads_apart(tmp_path: Path) -> None:
    """Two cells of one attention and context, with 12 key/value heads and with 4, each measured once in a part:
    two cells' repeat 1, not one cell's two repeats."""
    report = load_report()
    run = tmp_path / "r"
    progress_record(run, "b", 1, 100.0, "2026-12-02T04:01:00+00:00")
    progress_record(run, "b", 1, 100.0, "2026-12-02T04:02:00+00:00", kv_heads=4)
    (run / "wall-20261202T040000.txt").write_text("exit 1 wall_s 300\n")
    pd.DataFrame({**PROGRESS_CELL, "mode": ["compiled", "compiled"], "attn": ["b", "b"], "kv_heads": [12, 4],
                  "status": ["ok", "ok"]}).to_csv(run / "summary.csv", index=False)
    text = report.progress_text(run, pd.Timestamp("2026-12-02T04:00", tz="UTC"))
    assert "| small 1024 b repeat 1, small 1024 b kv_heads=4 repeat 1" in text, text
