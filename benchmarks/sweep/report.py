"""The sweep benchmark's table: where each cell's wall time went, before and after, and its tokens/s.

    python benchmarks/sweep/report.py RUN [RUN ...] > results/sweepbench.md
    python benchmarks/sweep/report.py --compare RUN [RUN ...]   # tokens/s of the same cells, run against run
    python benchmarks/sweep/report.py --equal NEW_RUN OLD_RUN   # each cell's repeats in both: do the ranges overlap?
    python benchmarks/sweep/report.py --between RUN_A RUN_B  # do two sweeps differ beyond the repeats' spread?
        # (--equal and --between: a run given as RUN@CODE counts only its records of that cell code, a hash prefix)
    python benchmarks/sweep/report.py --hosts RUN_A RUN_B  # two sweeps of the same cells on other hosts: the GPU's work
                                                           # against the step's wall time, by how host-bound a cell is
    python benchmarks/sweep/report.py --windows RUN [RUN ...]  # earlier blocks of steps against the measured window:
                                                                # would fewer steps have measured the same?
    python benchmarks/sweep/report.py --parts RUN [RUN ...]  # each part's wall time by what its GPU jobs did, from
                                                              # Snakemake's full logs (snakemake-*.full.log.gz)
    python benchmarks/sweep/report.py --progress RUN [SINCE]  # where a run in parts stands, and what its parts from
                                                               # SINCE (UTC, e.g. 2026-12-02T04:00) measured, with
                                                               # the checks their records should pass
    python benchmarks/sweep/report.py --estimates RUN  # the deadline's estimate of each timed job against its
                                                        # wall time (sweep.timed_job_s), and of each warm-up with
                                                        # the timed job after it (sweep.warmup_then_timed_s)
    python benchmarks/sweep/report.py --cost RUN [RUN ...]  # the sweep's GPU time per cell and in total, from
                                                             # its jobs' benchmarks and its parts' wall times

Reads, per run, every cell record (results/RUN/cells/.../cell.json), Snakemake's benchmark of its jobs
(results/RUN/benchmarks/{cells,warmup}/.../*.tsv: the job's wall time), the sweep's wall time (wall*.txt) and the
GPUs' clocks, temperature and power sampled through each part (gpu-*.csv, tools/gpu-host/sweep.sh).
"""

from __future__ import annotations

import argparse
import csv
import datetime
import gzip
import io
import json
import math
import re
import statistics
import sys
from collections.abc import Iterator, Mapping
from pathlib import Path

import pandas as pd

from attnsweep.report.aggregate import (block_tokens_per_sec, gpu_busy, gpu_uuid, kernel_us, pre_window_change,
                                       range_pct, summarize, window_gc_share)
from attnsweep.report.markdown import GC_NOTABLE
from attnsweep import searchlog, sweep
from attnsweep.vocabulary import ATTENTION, AXES, COMPILED_MODES, CUDAGRAPH_MODES, MODELS, MODES


def _job_seconds(tsv: Path) -> float | None:
    if not tsv.is_file():
        return None
    return float(next(csv.DictReader(tsv.open(), delimiter="\t"))["s"])


def _warmup_job_seconds(run: Path, rel: Path, repeat: int) -> float | None:
    """A repeat's warm-up job's wall time: a run of several repeats keeps each repeat's benchmark in rN/, a run of
    one beside the cell."""
    return (_job_seconds(run / "benchmarks/warmup" / rel / f"r{repeat}" / "warmup.tsv")
            or (_job_seconds(run / "benchmarks/warmup" / rel / "warmup.tsv") if repeat == 1 else None))


def _repeat_number(record: Path) -> int:
    """1 for cell.json, N for repeat-N.json (the pipeline's names for a cell's repeats)."""
    return sweep.record_repeat(record.stem)


# The GPU's conditions in each measured window, from the samples tools/gpu-host/sweep.sh takes once a second through
# a part (results/RUN/gpu-YYYYMMDDTHHMMSS.csv: nvidia-smi --query-gpu=...,clocks_event_reasons.active
# --format=csv,nounits -lms 1000). A window of one to a few seconds holds few samples, and a sample stands for the
# second around it: samples from SAMPLE_SLACK_S before the window's start to SAMPLE_SLACK_S after its end count.
SAMPLE_SLACK_S = 0.5
# nvidia-smi's header names a field by its long name with its unit in brackets (`clocks.current.sm [MHz]`), whatever
# name the query used (`clocks.sm`); older drivers call the clock-event reasons throttle reasons (sweep.sh then falls
# back to that name). The header is read for the columns' names, brackets left off, each field under one name here.
SAMPLE_FIELDS = {"clocks.sm": "clocks.current.sm", "clocks.mem": "clocks.current.memory",
                 "clocks_throttle_reasons.active": "clocks_event_reasons.active"}
# nvidia-smi's clock-event reasons (NVML's nvmlClocksEventReasons bits); a bit not named here shows as hex.
CLOCK_EVENTS = {0x1: "GPU idle", 0x2: "applications clocks", 0x4: "SW power cap", 0x8: "HW slowdown",
                0x10: "sync boost", 0x20: "SW thermal slowdown", 0x40: "HW thermal slowdown",
                0x80: "HW power brake", 0x100: "display clocks"}
GPU_COLUMNS = ["SM MHz", "max temp C", "power W", "clock events", "GPU samples"]


def _number(values: pd.Series) -> pd.Series:
    """A column's numbers: the first word of each value (a file written with units says `1980 MHz`); `[N/A]` and
    the like are NaN."""
    return pd.to_numeric(values.str.split().str[0], errors="coerce")


def _reasons(value: object) -> float:
    try:
        return float(int(str(value).strip(), 16))
    except ValueError:
        return math.nan


def gpu_samples(run: Path) -> pd.DataFrame:
    """Every GPU sample of a run's parts (gpu-*.csv): its time (Unix seconds), the GPU's UUID, SM clock (MHz),
    temperature (C), power (W) and clock-event reasons (the bitmask; NaN where the file lacks the field). nvidia-smi
    writes its timestamps in the host's local time without a zone: sweep.sh runs it with TZ=UTC, and they are read as
    UTC. Lines that are no sample (an error nvidia-smi wrote to its output, a line cut off when it was stopped) are
    left out."""
    columns = ["time", "uuid", "sm_mhz", "temp_c", "power_w", "reasons"]
    frames = []
    for path in sorted(run.glob("gpu-*.csv")):
        text = path.read_text(errors="replace")
        if not text.endswith("\n"):
            text = text[:text.rfind("\n") + 1]  # the last line, cut off when the sampler was stopped
        if not text.strip():
            continue
        raw = pd.read_csv(io.StringIO(text), skipinitialspace=True, dtype=str, on_bad_lines="skip")
        raw.columns = [SAMPLE_FIELDS.get(name, name) for name in (c.split("[")[0].strip() for c in raw.columns)]
        if not {"timestamp", "uuid"} <= set(raw.columns):
            continue
        stamp = pd.to_datetime(raw["timestamp"], format="%Y/%m/%d %H:%M:%S.%f", errors="coerce")
        missing = pd.Series(math.nan, index=raw.index)
        frames.append(pd.DataFrame({
            "time": (stamp - pd.Timestamp("1970-01-01")) / pd.Timedelta(seconds=1),
            "uuid": raw["uuid"].str.strip(),
            **{name: _number(raw[field]) if field in raw else missing
               for name, field in (("sm_mhz", "clocks.current.sm"), ("temp_c", "temperature.gpu"),
                                   ("power_w", "power.draw"))},
            "reasons": raw["clocks_event_reasons.active"].map(_reasons) if "clocks_event_reasons.active" in raw
            else missing,
        }).dropna(subset=["time", "uuid"]))
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=columns)


def clock_events(mask: int) -> str:
    """A clock-event reasons bitmask in words: `none`, or the reasons joined (bits without a name in hex)."""
    names = [name for bit, name in CLOCK_EVENTS.items() if mask & bit]
    rest = mask & ~sum(CLOCK_EVENTS)
    return ", ".join(names + ([hex(rest)] if rest else [])) or "none"


def window_gpu(rec: dict, samples: pd.DataFrame) -> dict:
    """The GPU's conditions in a record's measured window, from its GPU's samples (by UUID) within SAMPLE_SLACK_S of
    the window: mean SM clock, highest temperature, mean power, every clock-event reason seen (the samples' bitmasks
    OR-ed) and the number of samples. Blank for a record without its window or GPU (older code) or a run without
    samples; a window that no sample fell near has 0 samples and the rest blank."""
    window, uuid = _window(rec), gpu_uuid(rec)
    blank = dict.fromkeys(GPU_COLUMNS)
    if window is None or not uuid or samples.empty:
        return blank
    near = samples[(samples["uuid"] == uuid) & (samples["time"] >= window[0] - SAMPLE_SLACK_S)
                   & (samples["time"] <= window[1] + SAMPLE_SLACK_S)]
    if near.empty:
        return {**blank, "GPU samples": 0}
    mask = None
    for reasons in near["reasons"].dropna():
        mask = (mask or 0) | int(reasons)
    return {"SM MHz": round(float(near["sm_mhz"].mean()), 0), "max temp C": float(near["temp_c"].max()),
            "power W": round(float(near["power_w"].mean()), 1),
            "clock events": None if mask is None else clock_events(mask), "GPU samples": len(near)}


def rows(run: Path) -> list[dict]:
    out = []
    samples = gpu_samples(run)
    records = sorted(run.glob("cells/**/cell.json")) + sorted(run.glob("cells/**/repeat-*.json"))
    for cell in records:
        rec = json.loads(cell.read_text())
        rel = cell.parent.relative_to(run / "cells")
        repeat = _repeat_number(cell)
        comp, phases = rec.get("compile") or {}, rec.get("phases_s") or {}
        steps = rec.get("step_times_s") or []
        extra = rec.get("harness_extra") or {}
        cond = rec.get("window_conditions") or {}
        job = _job_seconds(run / "benchmarks/cells" / rel / f"{cell.stem}.tsv")
        warm = _warmup_job_seconds(run, rel, repeat)
        first = comp.get("first_step_s")
        out.append({
            "run": run.name, "model": rec["cell"]["model"], "context": rec["cell"]["seq_len"],
            "attn": rec["cell"]["attn"],
            "repeat": repeat, "status": rec["status"],
            "tokens/s": rec["tokens_per_sec"],
            "job s": job, "warm-up job s": warm,
            # job wall time outside the cell's own clock: Snakemake, the shell, the interpreter and its imports
            "start s": None if job is None else round(job - rec["duration_s"], 1),
            "outside s": phases.get("outside"), "setup s": phases.get("setup"),
            "first step s": None if first is None else round(first, 1),
            "cold first step s": comp.get("cold_first_step_s") and round(comp["cold_first_step_s"], 1),
            "steps 2+ s": round(sum(steps[1:]), 1) if steps else None,
            # the train phase less its steps: Dynamo/Inductor imports, the optimizer, the wait for the GPU
            "train other s": None if first is None else round(phases["train"] - first - sum(steps[1:]), 1),
            "profile s": phases.get("profile"),
            # the train phase's host time itself (records from the preloaded-interpreter code on)
            "before steps s": extra.get("before_steps_s") and round(extra["before_steps_s"], 1),
            "hook s": extra.get("hook_s") and round(extra["hook_s"], 1),
            "after steps s": extra.get("after_steps_s") and round(extra["after_steps_s"], 1),
            "launch": (rec.get("env") or {}).get("launch", "own process"),
            # What else happened in the measured window (records from 2026-11-30's second session on): other
            # processes' CPU seconds, this process's preemptions, GC seconds, allocations that freed the cache.
            "others cpu s": (cond.get("host") or {}).get("others_cpu_s"),
            "preempted": cond.get("preempted"),
            "gc s": (cond.get("gc") or {}).get("seconds"),
            "alloc retries": (cond.get("cuda_allocator") or {}).get("num_alloc_retries"),
            **window_gpu(rec, samples),
        })
    return out


def compare(runs: list[str]) -> None:
    """Each cell's tokens/s in every run, the window's spread (std/mean of its per-step tokens/s) and the largest
    difference between runs, relative to their mean."""
    table: dict[tuple, dict] = {}
    for run in runs:
        for cell in sorted(Path(run).glob("cells/**/cell.json")):
            rec = json.loads(cell.read_text())
            c = rec["cell"]
            row = table.setdefault((c["model"], c["seq_len"], c["attn"]), {})
            row[Path(run).name] = rec["tokens_per_sec"] if rec["status"] == "ok" else rec["status"]
            stats = rec.get("tokens_per_sec_stats") or {}
            if stats.get("mean"):
                row.setdefault("window cv %", []).append(100 * stats["std"] / stats["mean"])
    out = []
    for (model, seq_len, attn), row in sorted(table.items()):
        values = [v for k, v in row.items() if k != "window cv %" and isinstance(v, float)]
        cvs = row.pop("window cv %", [])
        spread = 100 * (max(values) - min(values)) / statistics.mean(values) if len(values) > 1 else None
        out.append({"model": model, "context": seq_len, "attn": attn, **row,
                    "max window cv %": max(cvs) if cvs else None, "runs differ by %": spread})
    columns = ["model", "context", "attn", *(Path(r).name for r in runs), "max window cv %", "runs differ by %"]
    print(pd.DataFrame(out, columns=columns).to_markdown(index=False, floatfmt=",.1f"))


def _wall_values(path: Path) -> list[float]:
    """The `wall_s` values of one wall file (one line per sweep, as the sweep scripts write them)."""
    return [float(line.split("wall_s")[1].split()[0]) for line in path.read_text().splitlines() if "wall_s" in line]


def _walls(run: Path) -> list[float]:
    return [w for f in sorted(run.glob("wall*.txt")) for w in _wall_values(f)]


def _parts(run: Path) -> list[tuple[pd.Timestamp, float]]:
    """The parts of a run swept in several calls (tools/gpu-host/sweep.sh: wall-YYYYMMDDTHHMMSS.txt, the part's
    start in UTC and its wall time), in order; empty for a run without them."""
    parts = []
    for f in sorted(run.glob("wall-*T*.txt")):
        if walls := _wall_values(f):
            parts.append((pd.Timestamp(f.stem[len("wall-"):], tz="UTC"), walls[0]))
    return parts


def _timed_records_held(run: Path) -> list[dict]:
    """Every record of a timed job of `run`, those under superseded/cells/ too (a cell measured twice by mistake,
    its later record kept in cells/): each held a GPU."""
    return [json.loads(cell.read_text())
            for cell in sorted(run.glob("cells/**/*.json")) + sorted(run.glob("superseded/cells/**/*.json"))]


def _started_within(records: list[dict], start: pd.Timestamp, wall: float) -> list[dict]:
    """The records whose timed job started within a part (its start and wall time)."""
    end = start + pd.Timedelta(seconds=wall)
    return [r for r in records if r.get("started_at") and start <= pd.Timestamp(r["started_at"]) <= end]


def occupancy(run: Path) -> list[dict]:
    """Per GPU of a run (and per part, for a run swept in parts: the time between parts is no GPU's gap): how much
    of the sweep's wall time its timed jobs held it, and where the rest went.

    busy: the timed jobs' own clocks (duration_s) summed; span: this GPU's first timed job's start to its last one's
    end (records keep whole seconds); gaps: span less busy (the GPU waiting for the next cell's warm-up, and each
    job's start before its own clock); late start / early end: this GPU's first start after the run's first, its last
    end before the run's last; outside: the run's wall time less its first-start-to-last-end (the first warm-up
    before any timed job could start, and the aggregation after the last). Records without their GPU (older code)
    cannot be told apart by GPU: only their count and busy time are given. Records under superseded/cells/ (a cell
    measured twice by mistake, its later record kept in cells/) held a GPU as well and count here."""
    records = _timed_records_held(run)
    parts = _parts(run)
    if parts:
        out = []
        for i, (start, wall) in enumerate(parts, 1):
            inside = _started_within(records, start, wall)
            out += _occupancy(f"{run.name} part {i}", inside, wall) if inside else []
        return out
    walls = _walls(run)
    return _occupancy(run.name, records, walls[0] if len(walls) == 1 else None)  # several sweeps: one wall each


def _occupancy(name: str, records: list[dict], wall: float | None) -> list[dict]:
    by_gpu: dict[str, list[dict]] = {}
    for rec in records:
        gpu = (rec.get("env") or {}).get("gpu") or {}
        by_gpu.setdefault(str(gpu.get("uuid") or "not recorded"), []).append(rec)
    times = {u: ([pd.Timestamp(r["started_at"]) for r in recs], [pd.Timestamp(r["finished_at"]) for r in recs])
             for u, recs in by_gpu.items()}
    first = min(t for starts, _ in times.values() for t in starts)
    last = max(t for _, ends in times.values() for t in ends)
    out = []
    for n, (uuid, recs) in enumerate(sorted(by_gpu.items(), key=lambda kv: min(times[kv[0]][0]))):
        starts, ends = times[uuid]
        busy = sum(r["duration_s"] for r in recs)
        row = {"run": name, "GPU": uuid if uuid == "not recorded" else f"{n} ({uuid[:12]})",
               "timed jobs": len(recs), "busy s": busy}
        if uuid != "not recorded":
            span = (max(ends) - min(starts)).total_seconds()
            row.update({"span s": span, "gaps s": span - busy,
                        "late start s": (min(starts) - first).total_seconds(),
                        "early end s": (last - max(ends)).total_seconds()})
            if wall is not None:
                row.update({"outside s": wall - (last - first).total_seconds(), "busy % of wall": 100 * busy / wall})
            row["windows overlapping another GPU's"] = _overlapping_windows(recs, [r for u, rs in by_gpu.items()
                                                                                  if u != uuid for r in rs])
        out.append(row)
    return out


def _window(rec: dict) -> tuple[float, float] | None:
    cond = rec.get("window_conditions") or {}
    return (cond["start_unix_s"], cond["end_unix_s"]) if "start_unix_s" in cond else None


def _overlapping_windows(mine: list[dict], others: list[dict]) -> int | None:
    """How many of these records' measured windows overlapped a window of another GPU's records (with windows in
    turn: none); None where the records do not say when their windows were (older code)."""
    windows, other = [_window(r) for r in mine], [_window(r) for r in others]
    if not windows or None in windows or None in other:
        return None
    return sum(any(s < oe and os_ < e for os_, oe in other) for s, e in windows)


def _of_code(records: list[Path], code: str | None) -> list[Path]:
    """The records whose code hash (env.code.source_sha256) starts with `code` (all with None)."""
    if code is None:
        return records
    return [r for r in records if str(json.loads(r.read_text())["env"]["code"]["source_sha256"]).startswith(code)]


def _repeats(run: Path, code: str | None = None) -> dict[tuple, list[float]]:
    """Every ok repeat's tokens/s per cell (its axes) of a run, as the summary folds them (aggregate.summarize); with
    `code`, only records of that code (a cell whose first record is of another code is left out with its repeats)."""
    cells = _of_code(sorted(run.glob("cells/**/cell.json")), code)
    kept = {c.parent for c in cells}
    repeats = [r for r in _of_code(sorted(run.glob("cells/**/repeat-*.json")), code) if r.parent in kept]
    df = summarize(cells, repeats=repeats, allow_mixed_env=True)
    return {tuple(r[a] for a in AXES): [v for v in json.loads(r["tokens_per_sec_repeats"]) if v is not None]
            for _, r in df.iterrows()}


def _run_and_code(arg: str, code: str | None = None) -> tuple[Path, str | None]:
    """A run argument, RUN or RUN@CODE: its folder and the code hash (prefix) its records are read of; `code` where
    it names none. A run in parts holds the records of each code it measured with until they are measured again."""
    run, at, own = arg.rpartition("@")
    return (Path(run), own) if at else (Path(arg), code)


def equal(new: str, old: str) -> None:
    """#13's equality check: each cell's repeats in two runs (e.g. two-stage against cold, measured in one call);
    equal when the two ranges overlap, the run-to-run spread measured by the repeats themselves. A run given as
    RUN@CODE counts only its records of that code."""
    (new_run, new_code), (old_run, old_code) = _run_and_code(new), _run_and_code(old)
    a, b = _repeats(new_run, new_code), _repeats(old_run, old_code)
    out = []
    for key in sorted(set(a) & set(b)):
        x, y = a[key], b[key]
        row = dict(zip(AXES, key))
        row.update({new_run.name: ", ".join(f"{v:,.0f}" for v in x) or "no ok repeat",
                    old_run.name: ", ".join(f"{v:,.0f}" for v in y) or "no ok repeat"})
        if x and y:
            mx, my = statistics.median(x), statistics.median(y)
            row["medians differ %"] = f"{100 * (mx / my - 1):+.1f}"
            # A spread needs two measurements on each side; with fewer, equality cannot be told.
            if min(len(x), len(y)) >= 2:
                row["spread %"] = f"{100 * max(max(x) - min(x), max(y) - min(y)) / my:.1f}"
                row["equal"] = "yes" if min(x) <= max(y) and min(y) <= max(x) else "no"
            else:
                row["equal"] = "not known (fewer than 2 repeats)"
        out.append(row)
    print(pd.DataFrame(out).fillna("").to_markdown(index=False))


def spread_between(pairs: list[tuple[list[float], list[float]]]) -> dict[str, float]:
    """Is the difference between two sweeps of the same cells the measurements' own spread? `pairs`: per cell, the
    repeats of sweep A and of sweep B (B with two or more). On a log scale with one spread s for every measurement,
    the difference of the two sweeps' means has variance s² (1/nA + 1/nB), and the repeats of one sweep scatter
    with variance s²: the function gives both estimates of s (in %), their variance ratio (about 1 when the sweeps
    agree), and how many cells' A median lies above, below or within B's range (with one A value and two B
    repeats, 1/3 each when the sweeps agree). A shift of every cell by the same few percent can hide inside the
    spread of each: so B's mean difference from A over the cells (geometric, in %) is given too, with its standard
    error from the cells' own differences (a shift twice its error or more is more than chance)."""
    between, shifts, scatter, dof = [], [], 0.0, 0
    for a, b in pairs:
        la, lb = [math.log(v) for v in a], [math.log(v) for v in b]
        shifts.append(statistics.fmean(lb) - statistics.fmean(la))
        between.append(shifts[-1] ** 2 / (1 / len(la) + 1 / len(lb)))
        for side in (la, lb):
            if len(side) > 1:
                scatter += sum((v - statistics.fmean(side)) ** 2 for v in side)
                dof += len(side) - 1
    sd_between, sd_within = math.sqrt(statistics.fmean(between)), math.sqrt(scatter / dof)
    medians = [(statistics.median(a), b) for a, b in pairs]
    return {"cells": len(pairs), "sd between sweeps %": 100 * sd_between, "sd between repeats %": 100 * sd_within,
            "variance ratio": (sd_between / sd_within) ** 2 if sd_within else math.inf,
            "B vs A mean %": 100 * math.expm1(statistics.fmean(shifts)),
            "its std error %": 100 * statistics.stdev(shifts) / math.sqrt(len(shifts)) if len(shifts) > 1 else math.nan,
            "A above B's range": sum(m > max(b) for m, b in medians),
            "below": sum(m < min(b) for m, b in medians),
            "within": sum(min(b) <= m <= max(b) for m, b in medians)}


def between(one: str, two: str) -> None:
    """Cells of sweep ONE (A) against sweep TWO (B, with repeats): per cell, and spread_between over the cells with
    two or more repeats in B, for one-graph cells and graph-break cells apart (their spreads differ several-fold).
    A run given as RUN@CODE counts only its records of that code."""
    (one_run, one_code), (two_run, two_code) = _run_and_code(one), _run_and_code(two)
    a, b = _repeats(one_run, one_code), _repeats(two_run, two_code)
    out, groups = [], {}
    for key in sorted(set(a) & set(b)):
        x, y = a[key], b[key]
        if not x or not y:
            continue
        row = dict(zip(AXES, key))
        row.update({one_run.name: ", ".join(f"{v:,.0f}" for v in x),
                    two_run.name: ", ".join(f"{v:,.0f}" for v in y),
                    "B median vs A median %": f"{100 * (statistics.median(y) / statistics.median(x) - 1):+.1f}"})
        out.append(row)
        if len(y) >= 2:
            groups.setdefault("graph breaks" if "graphbreak" in row["attn"] else "one graph", []).append((x, y))
    print(pd.DataFrame(out).to_markdown(index=False))
    print()
    print(pd.DataFrame([{**spread_between(pairs), "cells": f"{name} ({len(pairs)})"}
                        for name, pairs in sorted(groups.items())]).to_markdown(index=False, floatfmt=".2f"))


def _ok_records(run: Path) -> dict[tuple, list[dict]]:
    """Every ok record (cell.json and repeat-N.json) of a run, per cell (its axes)."""
    out: dict[tuple, list[dict]] = {}
    for path in sorted(run.glob("cells/**/*.json")):
        rec = json.loads(path.read_text())
        if rec["status"] == "ok":
            out.setdefault(tuple(rec["cell"][a] for a in AXES), []).append(rec)
    return out


# How host-bound a cell is: the GPU's busy share of a measured step (aggregate.gpu_busy), in these bins.
# The last is open: a profiled step can show a little more kernel time than its wall time (up to 1.04 seen).
BUSY_BINS = ((0.0, 0.6), (0.6, 0.8), (0.8, 0.9), (0.9, math.inf))


def hosts(one: str, two: str) -> None:
    """Two sweeps of the same cells, on other hosts (or other days): per cell, how far the tokens/s differ and how
    far the GPU's own work differs (the profiled step's kernel time), with the GPU's busy share of a step; then, by
    that share, the median of both differences. Where the kernels take the same time and the tokens/s differ, the
    hosts' CPUs (Python, kernel launches) made the difference."""
    a, b = _ok_records(Path(one)), _ok_records(Path(two))
    out = []
    for key in sorted(set(a) & set(b)):
        tok = [statistics.median(r["tokens_per_sec"] for r in side) for side in (a[key], b[key])]
        kern = [[k for k in map(kernel_us, side) if k] for side in (a[key], b[key])]
        busy = [[x for x in map(gpu_busy, side) if x is not None] for side in (a[key], b[key])]
        if not all(kern) or not any(busy):
            continue
        row = dict(zip(AXES, key))
        row.update({
            Path(one).name: ", ".join(f"{r['tokens_per_sec']:,.0f}" for r in a[key]),
            Path(two).name: ", ".join(f"{r['tokens_per_sec']:,.0f}" for r in b[key]),
            "tok/s B vs A %": 100 * (tok[1] / tok[0] - 1),
            "kernel time B vs A %": 100 * (statistics.median(kern[1]) / statistics.median(kern[0]) - 1),
            "GPU busy A %": 100 * statistics.median(busy[0]),
            "GPU busy B %": 100 * statistics.median(busy[1]),
            "busy": statistics.median(busy[0] + busy[1]),
        })
        out.append(row)
    df = pd.DataFrame(out)
    print(df.drop(columns="busy").to_markdown(index=False, floatfmt=",.1f"))
    print()
    summary = []
    for lo, hi in BUSY_BINS:
        part = df[(df["busy"] >= lo) & (df["busy"] < hi)]
        if len(part):
            summary.append({"GPU busy (median of both sweeps)": f"{100 * lo:.0f}-{min(100, 100 * hi):.0f}%",
                            "cells": len(part),
                            "median |tok/s diff| %": part["tok/s B vs A %"].abs().median(),
                            "median tok/s B vs A %": part["tok/s B vs A %"].median(),
                            "median |kernel time diff| %": part["kernel time B vs A %"].abs().median(),
                            "largest |kernel time diff| %": part["kernel time B vs A %"].abs().max()})
    print(pd.DataFrame(summary).to_markdown(index=False, floatfmt=".1f"))


def _spread_text(diff: list[float]) -> str:
    diff = sorted(diff)
    return f"{statistics.median(diff):+.2f} [{diff[len(diff) // 10]:+.1f}, {diff[9 * len(diff) // 10]:+.1f}]"


def windows(runs: list[str]) -> None:
    """Would a shorter run have measured the same? Per record, tokens/s over each earlier block of the window's length
    (steps w+1..2w, 2w+1..3w, ...; block 1, steps 1..w, holds the first step's compilation or cache load) against the
    measured window (the last w steps): what a run of 2w, 3w, ... steps would have measured in the same process, since
    a step does not know how many follow it; and the steps just before the window (aggregate.pre_window_change: steps
    1 and 2 left out), which a run too short for a whole earlier block still has. One difference: on a host of several
    GPUs the earlier steps may share the CPUs with other GPUs' warm-ups (a timed job stops its own GPU's warm-ups from
    its second step, every GPU's only during its window), which slows host-bound steps. By run, steps and window, and
    how busy the GPU is in a measured step (host-bound cells scatter more), beside the spread between a cell's
    repeats, the yardstick for a difference. Each cell is `median [10th, 90th percentile]` in percent (with fewer than
    10 records the brackets hold the lowest and the highest)."""
    out = []
    for run in runs:
        by_cell = _ok_records(Path(run))
        records = [r for recs in by_cell.values() for r in recs if r.get("step_times_s")]
        repeat_spread = [abs(a - b) / ((a + b) / 2) for recs in by_cell.values() if len(recs) == 2
                         for a, b in [[r["tokens_per_sec"] for r in recs]]]
        shapes = sorted({(len(r["step_times_s"]), r["tokens_per_sec_stats"]["n"]) for r in records}, reverse=True)
        for n, w in shapes:
            for lo, hi in BUSY_BINS:
                part = [r for r in records if (b := gpu_busy(r)) is not None and lo <= b < hi
                        and (len(r["step_times_s"]), r["tokens_per_sec_stats"]["n"]) == (n, w)]
                if not part:
                    continue
                row = {"run": Path(run).name, "steps, window": f"{n}, {w}",
                       "GPU busy": f"{100 * lo:.0f}-{min(100, 100 * hi):.0f}%", "records": len(part)}
                before = [100 * c for c in map(pre_window_change, part) if c is not None]
                row["steps before the window vs window %"] = _spread_text(before) if before else "–"
                for k in range(1, n // w - 1):
                    row[f"steps {k * w + 1}-{(k + 1) * w} vs window %"] = _spread_text(
                        [100 * (block_tokens_per_sec(r, k * w + 1, w) / r["tokens_per_sec"] - 1) for r in part])
                row["repeats' spread % (run, median)"] = (f"{100 * statistics.median(repeat_spread):.2f}"
                                                          if repeat_spread else "–")
                out.append(row)
    df = pd.DataFrame(out)
    # The repeats' spread last, whatever blocks the rows have; a row without a block shows a dash.
    df = df[[c for c in df.columns if not c.startswith("repeats")] + ["repeats' spread % (run, median)"]].fillna("–")
    print(df.to_markdown(index=False))


# results/sweepbench.md's opening (the page is this script's output, whole): what its columns mean.
TITLE = "# The sweep benchmark, cell by cell"
COLUMNS = (
    "Made by `python benchmarks/sweep/report.py RUN...` from the runs' cell records and Snakemake "
    "benchmarks; read with [sweep-benchmark.md](sweep-benchmark.md). `job s`: the job's wall time; `start"
    " s`: of it, before the cell's own clock; `outside s`: the worker process's start (cold cells); "
    '`train other s`: the train phase less its steps (imports, optimizer, waits); in runs from the '
    'preloaded-interpreter code on it is broken down: `before steps s` (optimizer, compile wrapper, and '
    'the Dynamo/Inductor imports in a process of its own), `hook s` (the timed job taking its GPU), '
    '`after steps s`. `launch`: preloaded or own process. Cells of several contexts: `context`. `repeat`:'
    " which of a cell's repeats (a run of `repeats: N` has N records a cell). From 2026-11-30's second "
    'session on, records say what else happened in the measured window (`window_conditions`): `others cpu'
    " s`, other processes' CPU seconds; `preempted`, the training process's involuntary context switches;"
    " `gc s`, Python's garbage collections; `alloc retries`, CUDA allocations that freed the cache and "
    'retried.'
)
# Appended to COLUMNS, with the columns, where a run has GPU samples (parts swept by tools/gpu-host/sweep.sh since it
# samples the GPU); a page of older runs only goes without them, as before.
GPU_COLUMNS_TEXT = (
    "The GPU in the measured window, from nvidia-smi's samples once a second (`gpu-*.csv`; those from "
    f"{SAMPLE_SLACK_S:g} s before the window to {SAMPLE_SLACK_S:g} s after it): `SM MHz`, the mean SM clock; "
    "`max temp C`, the highest temperature; `power W`, the mean power draw; `clock events`, every clock-event "
    "(throttle) reason a sample showed (`GPU idle`, `SW power cap`, `HW slowdown`, `SW thermal slowdown`, `HW "
    "thermal slowdown`, `HW power brake`, ...; `none`: none); `GPU samples`, how many samples (0: none near the "
    "window; blank: no samples for the run, or a record without its window)."
)


# Snakemake's full log of a part (tools/gpu-host/sweep.sh keeps it as snakemake-STAMP.full.log.gz): a job's start is
# the time line before its header (`localrule warmup:` and its `wildcards:`; `Job N: cell ...` and its `Reason:`,
# whose paths name the repeat), its end `Finished jobid: N (Rule: ...)`; a job held back at the deadline logs
# sweep.NOT_STARTED.
_TIME = re.compile(r"^\[(\w{3} \w{3} +\d+ \d\d:\d\d:\d\d \d{4})\]$")
_GPU_RULES = ("warmup", "cell", "cell_repeat")
# A held-back job's log (workflow/scripts/start-before-deadline.sh): "..., N s left before ATTNSWEEP_DEADLINE".
_LEFT = re.compile(r"(-?\d+) s left before ATTNSWEEP_DEADLINE")
# A warm-up's header ends with its resources, among them what the deadline expected of it (common.smk).
_EXPECTED = re.compile(r"^\s+resources: .*\bexpected_s=(\d+)")


def _part_jobs(text: str) -> tuple[dict[str, dict], int, datetime.datetime | None, datetime.datetime | None]:
    """{jobid: {rule, cell, repeat, start, end}} of a full log's GPU jobs (a warm-up's with expected_s, the seconds
    the deadline expected of it and its timed job, 0 where nothing was known), the jobs held back, the log's last
    time, and the jobs' deadline (ATTNSWEEP_DEADLINE) as the first held-back job's log gives it (the seconds it says
    were left, after the time line before it); None where no job was held back."""
    jobs: dict[str, dict] = {}
    held, now, header, failing, failed, deadline, warmup = 0, None, None, False, None, None, None
    for line in text.splitlines():
        if failing and line.strip().startswith("jobid:"):  # it ended: stopped, crashed, or held back (its log says)
            failed = jobs.get(line.split()[-1])
            if failed is not None:
                failed["failed"] = now
            failing = False
        elif line.startswith("Error in rule "):
            failing = True
        elif m := _TIME.match(line):
            now = datetime.datetime.strptime(m.group(1), "%a %b %d %H:%M:%S %Y")
        elif line in ("localrule warmup:", "rule warmup:"):
            header = {"rule": "warmup", "start": now, "end": None}
        elif header is not None and header["rule"] == "warmup" and line.strip().startswith("jobid:"):
            jobs[line.split()[-1]] = warmup = header
        elif warmup is not None and (m := _EXPECTED.match(line)):
            warmup["expected_s"] = int(m.group(1))
            warmup = None
        elif header is not None and header["rule"] == "warmup" and line.strip().startswith("wildcards:"):
            fields = dict(f.strip().split("=", 1) for f in line.strip()[len("wildcards:"):].split(","))
            header["repeat"] = int(fields.pop("repeat", 1))
            header["cell"] = tuple(sorted(fields.items()))
            header = None
        elif m := re.match(r"Job (\d+): cell (.*)$", line):
            header = jobs[m.group(1)] = {"rule": "cell", "start": now, "end": None,
                                         "cell": tuple(sorted(tuple(f.split("=", 1)) for f in m.group(2).split())),
                                         "repeat": 1}
        elif header is not None and header["rule"] == "cell" and line.startswith("Reason:"):
            if m := re.search(r"/r(\d+)/warmup|/repeat-(\d+)\.(?:json|txt)", line):
                header["repeat"] = int(m.group(1) or m.group(2))
            header = None
        elif m := re.match(r"Finished jobid: (\d+) \(Rule: (\w+)\)", line):
            if m.group(1) in jobs and m.group(2) in _GPU_RULES:
                jobs[m.group(1)]["end"] = now
        elif line.startswith(sweep.NOT_STARTED):
            held += 1
            if failed is not None:
                failed["held"] = True
            if deadline is None and now is not None and (m := _LEFT.search(line)):
                deadline = now + datetime.timedelta(seconds=int(m.group(1)))
    return jobs, held, now, deadline


# A timed job that ran out of memory at the batch size its warm-up had fitted (cell.py's reason, the last line of the
# job's log, which the part's full log repeats): a failed job, measured again later. PyTorch's message names the
# other processes that held memory on the GPU then.
_TIMED_OOM = re.compile(r"(\S+/cells/\S+\.json): error \(the timed run at batch size (\d+), "
                        r"which fitted in the warm-up, ran out of memory: (.*)")
_OTHER_PROCESS = re.compile(r"Process \d+ has ([\d.]+) GiB memory in use")


def timed_ooms(text: str) -> list[dict]:
    """The timed jobs in a part's full log that ran out of memory at their warm-up's batch size, once each: the
    record, its cell (from the path), repeat and batch size, and the GiB that other processes held (None where the
    message names none)."""
    out: dict[str, dict] = {}
    for m in _TIMED_OOM.finditer(text):
        record, held = Path(m.group(1)), [float(g) for g in _OTHER_PROCESS.findall(m.group(3))]
        out.setdefault(m.group(1), {"record": m.group(1), "cell": sweep.cell_axes(record.parent),
                                    "repeat": _repeat_number(record), "batch_size": int(m.group(2)),
                                    "others_gib": sum(held) if held else None})
    return list(out.values())


def timed_oom_text(ooms: list[dict]) -> str:
    """timed_ooms' jobs in a line. A first repeat's OOM is also in its search log (cell.py), so the cell's next
    warm-up searches below the batch it had fitted: where another process held the memory, that entry is not the
    cell's."""
    if not ooms:
        return "Timed jobs out of memory at the batch size their warm-up fitted: none."
    items = [f"{_label(o['cell'])} repeat {o['repeat']} (batch {o['batch_size']}; other processes held "
             + (f"{o['others_gib']:.1f} GiB)" if o["others_gib"] is not None else "none named)") for o in ooms]
    first = sum(o["repeat"] == 1 for o in ooms)
    return (f"Timed jobs out of memory at the batch size their warm-up fitted: {len(ooms)}, {_listed(items)}."
            + (f" {first} of them first repeats, whose OOM the cell code also entered in the search log (the next "
               "warm-up searches below it)." if first else ""))


def _full_log(run: Path, began: pd.Timestamp) -> Path:
    """The part's Snakemake full log (tools/gpu-host/sweep.sh), named by the part's start."""
    return run / f"snakemake-{began:%Y%m%dT%H%M%S}.full.log.gz"


def part_split(run: Path) -> list[dict]:
    """Each part of `run` (_parts): its wall time and, from its full log, in seconds between the log's time lines
    (whole seconds), its timed jobs (from the job's start to its end: with its wait for the GPU's timed lock, which
    on a GPU with run seats 0 each compiled warm-up holds while it runs its steps), the time the timed jobs held
    the GPU (`timed own s`: their records' own clocks, duration_s, as `occupancy`'s busy; blank where the part's
    records were replaced by later ones), the warm-ups whose timed job ran in the part, the warm-ups whose timed job
    did not (held back at the deadline, or not reached: used by the next part only on a host kept warm), the GPU
    jobs the part's stop cut off (and of them the warm-ups that started with nothing to expect of them, expected_s
    0: no record of a cell like theirs, which the deadline never holds back), how many jobs the deadline held back,
    how long before the jobs' deadline the last warm-up started (no new work came after it: a job held back is not
    tried again in that sweep), and the seconds from the part's last GPU job's end to the deadline, when no job was
    expected to fit and the GPU stood idle (both blank where none was held back: no deadline known; the part's wall
    time goes on past the deadline by sweep.sh's margin for the packing). A part without a full log (its Snakemake
    stopped before the first job, e.g. on arguments it refused) has its wall time only, so that the parts' sum is
    all of their wall time."""
    out = []
    records = _timed_records_held(run)
    for began, wall_s in _parts(run):
        log = _full_log(run, began)
        if not log.is_file():
            out.append({"run": run.name, "part (UTC)": f"{began:%Y-%m-%d %H:%M} (no full log)", "wall s": wall_s})
            continue
        jobs, held, last, deadline = _part_jobs(gzip.open(log, "rt").read())
        timed = [j for j in jobs.values() if j["rule"] == "cell" and j["end"]]
        ran = {(j["cell"], j["repeat"]) for j in timed}
        warmups = [j for j in jobs.values() if j["rule"] == "warmup" and j["end"]]
        used = [j for j in warmups if (j["cell"], j["repeat"]) in ran]
        left = [j for j in warmups if (j["cell"], j["repeat"]) not in ran]
        # Stopped at the part's end (or crashed): the time it ran until then.
        cut = [j for j in jobs.values() if not j["end"] and not j.get("held") and j["start"]]
        for j in cut:
            j["end"] = j.get("failed") or last

        def seconds(js: list[dict]) -> float:
            return sum((j["end"] - j["start"]).total_seconds() for j in js)

        ends = [j["end"] for j in jobs.values() if j["end"]]
        # Blank where no record of the part is left (each measured again since, by other code).
        held_gpu = [r.get("duration_s") or 0.0 for r in _started_within(records, began, wall_s)]
        own_s = sum(held_gpu) if held_gpu else None
        idle = None if deadline is None or not ends else max(0.0, (deadline - max(ends)).total_seconds())
        started = [j["start"] for j in jobs.values() if j["rule"] == "warmup" and j["start"] and not j.get("held")]
        last_warmup = None if deadline is None or not started else (deadline - max(started)).total_seconds()

        out.append({"run": run.name, "part (UTC)": f"{began:%Y-%m-%d %H:%M}",
                    "wall s": wall_s, "timed jobs": len(timed), "timed s": seconds(timed),
                    "timed own s": own_s,
                    "warm-ups used": len(used), "warm-ups used s": seconds(used),
                    "warm-ups left": len(left), "warm-ups left s": seconds(left),
                    "cut off": len(cut), "cut off s": seconds(cut),
                    "cut off unestimated": sum(j.get("expected_s") == 0 for j in cut), "held back": held,
                    "last warm-up start, s before deadline": last_warmup, "idle before deadline s": idle})
    return out


def part_split_table(runs: list[str]) -> None:
    rows = [row for run in runs for row in part_split(Path(run))]
    if not any("timed jobs" in row for row in rows):
        sys.exit("no part of these runs has a full log (snakemake-*.full.log.gz, tools/gpu-host/sweep.sh)")
    df = pd.DataFrame(rows)
    # A time before a part's own deadline does not add up over parts.
    total = df.drop(columns=["run", "part (UTC)", "last warm-up start, s before deadline"]).sum()
    df.loc[len(df)] = {"run": "all", "part (UTC)": f"{len(rows)} parts", **total.to_dict()}
    # A part with nothing held back has no known deadline: blank, not nan.
    print(df.astype(object).where(df.notna(), None).to_markdown(index=False, floatfmt=",.0f", missingval=""))


def _label(cell: Mapping) -> str:
    """A cell in the words the notes use: `medium 1024 sdpa_flash`, `eager` added where it is not compiled, and
    `kv_heads=4` where the keys and values have fewer heads than the model's queries (as the sweep's lines say), so
    that cells of one attention and context differing in their key/value heads are not taken for one."""
    mode = "" if cell["mode"] == "compiled" else f" {cell['mode']}"
    grouped = f" kv_heads={cell['kv_heads']}" if sweep.is_grouped(cell["model"], cell.get("kv_heads")) else ""
    return f"{cell['model']} {cell['seq_len']} {cell['attn']}{mode}{grouped}"


def _spread_line(spreads: list[float]) -> str:
    if not spreads:
        return "none"
    return (f"{len(spreads)} cells, {min(spreads):.1f}-{max(spreads):.1f}%, "
            f"median {statistics.median(spreads):.1f}%")


def _repeat_range(records: list[dict]) -> tuple[float, bool] | None:
    """A cell's repeats (progress_text's records): their range in percent of their median (aggregate.range_pct, as
    the tables' spreads), and whether they all ran on one GPU; None where one has no tokens/s."""
    tps = [r["rec"]["tokens_per_sec"] for r in records]
    if None in tps:
        return None
    cell = pd.DataFrame({"tokens_per_sec": [statistics.median(tps)], "tokens_per_sec_min": [min(tps)],
                         "tokens_per_sec_max": [max(tps)]})
    return float(range_pct(cell).iloc[0]), len({gpu_uuid(r["rec"]) for r in records}) == 1


def _listed(labels: list[str], most: int = 8) -> str:
    return ", ".join(labels[:most]) + (f" and {len(labels) - most} more" if len(labels) > most else "")


def checks_text(records: list[dict]) -> str:
    """What a part's measurements (progress_text's records) should all show, counted, with the records that do not:
    each compiled timed job ran its warm-up's compiled code (the compile caches' counters: hits only; a miss or a
    bypass compiled again, in the untimed first step); no CUDA graph fell back or was skipped; no window paused for
    garbage collection (GC_NOTABLE of its wall time: the tables mark those cells) or for the CUDA allocator (a retry
    frees cached blocks and synchronizes; an OOM); and the warm-ups' waits for the GPU's run seat (what
    sweep.warmup_job_s counts in a warm-up's time)."""
    ok = [r for r in records if r["rec"].get("status") == "ok"]

    def label(r: dict) -> str:
        return f"{_label(r['rec']['cell'])} repeat {r['repeat']}"

    compiled = [r for r in ok if r["rec"]["cell"]["mode"] in COMPILED_MODES]
    recompiled = [f"{label(r)} ({caches})" for r in compiled
                  if not (caches := sweep.dig(r["rec"], ("compile", "caches")))
                  or any(set(counts) - {"hit"} for counts in caches.values())]
    graphed = [r for r in ok if r["rec"]["cell"]["mode"] in CUDAGRAPH_MODES]
    fell = [label(r) for r in graphed
            if sweep.dig(r["rec"], ("compile", "cudagraphs", "fell_back")) is not False
            or sweep.dig(r["rec"], ("compile", "cudagraphs", "skipped"))]
    gc = [f"{label(r)} {100 * share:.1f}%" for r in ok
          if (share := window_gc_share(r["rec"])) is not None and share >= GC_NOTABLE]
    allocator = [label(r) for r in ok
                 if any(sweep.dig(r["rec"], ("window_conditions", "cuda_allocator", key))
                        for key in ("num_alloc_retries", "num_ooms"))]
    waits = sorted((w, label(r)) for r in records
                   if (w := sweep.dig(r["rec"], ("warmup", "run_seat_wait_s"))) is not None)
    lines = [f"Checks of these {len(records)} measurements ({len(ok)} ok):",
             f"- compiled timed jobs that ran their warm-up's compiled code (compile caches: hits only): "
             f"{len(compiled) - len(recompiled)} of {len(compiled)}"
             + (f"; not: {_listed(recompiled)}" if recompiled else ""),
             f"- CUDA graphs fallen back or skipped: {_listed(fell) if fell else 'none'} (of {len(graphed)} "
             "measurements with CUDA graphs)",
             f"- windows with garbage collection ({100 * GC_NOTABLE:.0f}% of the window or more): "
             f"{_listed(gc) if gc else 'none'}",
             "- windows with CUDA allocator retries or out-of-memory events: "
             + (_listed(allocator) if allocator else "none"),
             "- warm-ups' wait for the run seat: " + (
                 f"{len(waits)} warm-ups, median {statistics.median(w for w, _ in waits):.1f} s, at most "
                 f"{waits[-1][0]:.0f} s ({waits[-1][1]})" if waits else "none recorded")]
    return "\n".join(lines)


def _time_left_line(run: Path, code: str, repeats: int, todo: list[dict]) -> str:
    """What the measurements left (`todo`: cells, each with the repeats it lacks) should cost: each at the median
    GPU s a measurement (cell_costs) of the run's cells measured with every repeat at `code`, with their timed jobs'
    benchmarks, of the same model, mode and context, else of the same model and mode; then with the share of the
    sweeps' GPU time that went to no kept job so far (cost_text's rest: starts, packing, held-back warm-ups, idle
    ends). An extrapolation from the run's own cells, not a measurement; a cell's later repeat, which needs no batch
    search, costs less than the mean."""
    every = cell_costs(run)
    # A cell without its timed jobs' benchmarks (a device tree that carries only some parts' files, a record mended
    # by hand) costs 0 s there: it says nothing of what a measurement takes.
    costs = every[(every["code"] == code) & (every["measurements"] >= repeats) & (every["timed jobs s"] > 0)]
    per = costs["GPU s"] / costs["measurements"]
    total, unknown = 0.0, 0
    for cell in todo:
        same = (costs["model"] == cell["model"]) & (costs["mode"] == cell["mode"])
        near = per[same & (costs["seq_len"] == int(cell["seq_len"]))]
        pool = near if len(near) else per[same]
        if len(pool):
            total += float(pool.median()) * cell["left"]
        else:
            unknown += cell["left"]
    gpu_s = _sweeps_gpu_s(run)[2]
    rest = min(max(1 - every["GPU s"].sum() / gpu_s, 0.0), 0.9) if gpu_s else 0.0
    with_rest = total / (1 - rest)
    nothing_like = f"; {unknown} with nothing like them measured" if unknown else ""
    return (f"GPU time for the {sum(c['left'] for c in todo)} measurements left, at the median GPU s a measurement "
            f"of this code's complete cells of the same model, mode and context (else model and mode; "
            f"`--cost`): about {total:,.0f} s ({total / 60:,.0f} min) of jobs, {with_rest:,.0f} s "
            f"({with_rest / 60:,.0f} min) with the run's rest so far ({100 * rest:.0f}% of its sweeps' GPU "
            f"time){nothing_like}.")


def _first_wait_s(first: str | Path | None) -> float:
    """The seconds repeat 1's warm-up (its record at `first`) waited for the GPU's run seat; 0 where none is
    recorded."""
    records = sweep.read_records([first]) if first is not None else []
    return float(sweep.dig(records[0], ("warmup", "run_seat_wait_s")) or 0.0) if records else 0.0


def longest_warmups_line(run: Path, todo: list[dict], most: int = 8) -> str:
    """The warm-ups left (`todo`: cells; with `first`, repeat 1's record, and `repeat`, the next one, where only
    later repeats are left) that are expected longest, as a warm-up's check at a part's start with nothing queued
    expects them (sweep.expected_warmup_s: the warm-up and its timed job after it, from repeat 1's record, else from
    the cells like it; a cell's first warm-up, whose repeat 2 is then expected from what it took): a part with less
    time left when such a job comes up holds it back, so a cell expected longer than any part has at its start is
    measured only where the sweep's `first` names it (it then starts near a part's start; start-before-deadline.sh's
    grace); one expected over half the part goes before the shorter ones as the sweep begins (sweep.is_long_warmup).
    A later repeat's estimate stretches repeat 1's warm-up attempt, which counts that attempt's wait for the GPU's
    run seat (warmup.run_seat_wait_s: the queue then, not the cell); where that wait is a tenth of the estimate or
    more, the line says how much of it the wait makes."""
    expected = sorted(((sweep.expected_warmup_s(run, cell, cell.get("first")),
                        _label(cell) + (f" repeat {cell['repeat']}" if cell.get("first") else ""),
                        _first_wait_s(cell.get("first"))) for cell in todo),
                      key=lambda e: (-e[0], e[1]))
    # 0: nothing to go by, and such a warm-up expects only the queue (expected_warmup_start_s).
    shown = [f"{seconds:,} s {label}" + (
        f" ({wait * sweep.COLD_SPREAD:,.0f} s of it repeat 1's {wait:,.0f} s wait for the run seat, times "
        f"{sweep.COLD_SPREAD})" if wait * sweep.COLD_SPREAD >= seconds / 10 else "")
        for seconds, label, wait in expected if seconds > 0]
    unknown = len(expected) - len(shown)
    blind = f"; {unknown} with nothing like them measured (expecting only the queue)" if unknown else ""
    return (f"Warm-ups left expected longest, each to the end of its timed job with nothing queued (a part needs "
            f"that long left when one comes up; one expected over half the part goes first as the sweep begins, and "
            f"one longer than the whole part starts only where `first` names it, near a part's start): "
            f"{_listed(shown, most) or 'none known'}{blind}.")


def progress_text(run: Path, since: pd.Timestamp | None = None) -> str:
    """Where a run measured in parts stands, from its records and its summary.csv (the aggregation's, whose rows
    are the run's grid): the records by cell code; at the newest record's code, the measurements, the cells with
    every repeat, the cells left (the grid's cells with no record of that code: not measured, or measured by other
    code; from the records, so a summary not rebuilt since the last part still gives the grid) and the measurements
    left; the ranges of cells whose repeats ran back to back on one GPU and on several (max - min in
    percent of the median, as the tables' spreads). With `since`: each part from then on, what it measured, the
    timed jobs its full log shows out of memory at their warm-up's batch size (timed_ooms), and the GPU's conditions
    in those windows (window_gpu)."""
    records = []
    for path in sorted(run.glob("cells/**/*.json")):
        rec = json.loads(path.read_text())
        records.append({"cell": path.parent, "repeat": _repeat_number(path), "rec": rec,
                        "code": str(rec["env"]["code"]["source_sha256"])[:8],
                        "finished": pd.Timestamp(rec["finished_at"])})
    if not records:
        return f"{run}: no records"
    code = max(records, key=lambda r: r["finished"])["code"]
    current = [r for r in records if r["code"] == code]
    by_cell: dict[Path, list[dict]] = {}
    for r in current:
        by_cell.setdefault(r["cell"], []).append(r)
    repeats = max(r["repeat"] for r in records)
    complete = {c: rs for c, rs in by_cell.items() if len(rs) >= repeats}
    if not (run / "summary.csv").is_file():
        # The grid is the summary's rows: the records alone do not say which cells are left.
        raise SystemExit(f"{run}/summary.csv does not exist: it gives the grid. Build it from the records with the "
                         "run's sweep command and `aggregate_only=True allow_missing=True` (measures nothing)")
    summary = pd.read_csv(run / "summary.csv")
    measured = {tuple(str(r["rec"]["cell"][axis]) for axis in AXES) for r in current}
    grid = [tuple(str(v) for v in row) for row in summary[list(AXES)].itertuples(index=False)]
    missing = summary[[key not in measured for key in grid]]
    left = len(missing) * repeats + sum(repeats - len(rs) for c, rs in by_cell.items() if c not in complete)
    codes = pd.Series([r["code"] for r in records]).value_counts()
    # A part run with a narrower grid (`grid=` on the command line) aggregates that grid, and a part after it that
    # ends with jobs held back does not aggregate: the summary then lacks cells the run has measured, and so the
    # cells it never measured, which would not be counted as left.
    outside = len(measured - set(grid))
    lines = [f"## {run.name}", "",
             *([f"**summary.csv lacks {outside} cells measured at {code}: it was last aggregated with a narrower grid, "
                "so the cells left below may be too few. Build it again with the run's whole grid "
                "(`aggregate_only=True allow_missing=True`, as tools/rerender.sh does).**", ""] if outside else []),
             f"Records by cell code: {', '.join(f'{c} {n}' for c, n in codes.items())}. At {code} (the newest "
             f"record's): {len(current)} measurements, {len(complete)} cells with all {repeats} repeats; "
             f"{len(summary)} cells in the grid, {len(missing)} left (not measured, or by other code), "
             f"{left} measurements left.", ""]
    if len(missing):
        left_by = missing.groupby(["model", "mode", "attn"], sort=False).size().rename("cells left").reset_index()
        lines += [left_by.to_markdown(index=False), ""]
    if left:
        partial = []
        for c, rs in by_cell.items():
            if c not in complete:
                done = {r["repeat"] for r in rs}
                # The repeat its next warm-up makes, expected from repeat 1's record where that is there.
                partial.append(dict(rs[0]["rec"]["cell"], left=repeats - len(rs),
                                    repeat=min(set(range(1, repeats + 1)) - done),
                                    first=c / sweep.record_name(1) if 1 in done else None))
        todo = [dict(row, left=repeats) for row in missing.to_dict("records")] + partial
        lines += [_time_left_line(run, code, repeats, todo), "", longest_warmups_line(run, todo), ""]
    ranges = {c: _repeat_range(rs) for c, rs in complete.items()}
    one_gpu = [pct for pct, one in filter(None, ranges.values()) if one]
    across = [pct for pct, one in filter(None, ranges.values()) if not one]
    lines += [f"Range of a cell's repeats (max - min, percent of the median), repeats on one GPU: "
              f"{_spread_line(one_gpu)}; on several: {_spread_line(across)}.", ""]
    if since is None:
        return "\n".join(lines)
    samples = gpu_samples(run)
    table, ooms, logged = [], [], False  # the timed jobs out of memory, where some part has a full log to tell
    for began, wall in [p for p in _parts(run) if p[0] >= since]:
        if (log := _full_log(run, began)).is_file():
            ooms, logged = ooms + timed_ooms(gzip.open(log, "rt").read()), True
        end = began + pd.Timedelta(seconds=wall)
        done = [r for r in current if began <= r["finished"] <= end]
        done.sort(key=lambda r: r["finished"])
        cells: dict[str, list[int]] = {}
        for r in done:
            cells.setdefault(_label(r["rec"]["cell"]), []).append(r["repeat"])
        what = ", ".join(f"{name} {'both' if len(reps) == repeats > 1 else 'repeat ' + '+'.join(map(str, reps))}"
                         for name, reps in cells.items())
        table.append({"part (UTC)": f"{began:%Y-%m-%d %H:%M}", "wall s": wall, "measurements": len(done),
                      "cells": what or "-"})
    new = [r for r in current if r["finished"] >= since]
    lines += [f"Since {since:%Y-%m-%d %H:%M} UTC: {len(new)} measurements.", ""]
    if table:
        lines += [pd.DataFrame(table).to_markdown(index=False, floatfmt=",.0f"), ""]
    if logged:
        lines += [timed_oom_text(ooms), ""]
    windows = pd.DataFrame([{**window_gpu(r["rec"], samples),
                             "GPU": gpu_uuid(r["rec"])} for r in new])
    sampled = windows[windows["GPU samples"].fillna(0) > 0] if len(windows) else windows
    if len(sampled):
        gpus = ", ".join(f"{str(g)[:12]} {n}" for g, n in sampled["GPU"].value_counts().items())
        events = "; ".join(f"{e} {n}" for e, n in sampled["clock events"].value_counts(dropna=False).items())
        lines.append(f"Their {len(sampled)} sampled windows (GPUs: {gpus}): clock events {events}; power "
                     f"{sampled['power W'].min():.0f}-{sampled['power W'].max():.0f} W, SM "
                     f"{sampled['SM MHz'].min():,.0f}-{sampled['SM MHz'].max():,.0f} MHz (a window's mean), "
                     f"at most {sampled['max temp C'].min():.0f}-{sampled['max temp C'].max():.0f} C.")
    else:
        lines.append("No GPU samples in their windows.")
    one = [ranges[c][0] for c, rs in complete.items()
           if max(r["finished"] for r in rs) >= since and ranges[c] is not None and ranges[c][1]]
    lines += ["", f"Cells completed since then, repeats on one GPU: {_spread_line(one)}."]
    if new:
        lines += ["", checks_text(new)]
    return "\n".join(lines)


def main(runs: list[str]) -> None:
    df = pd.DataFrame([r for run in runs for r in rows(Path(run))])
    sampled = df["GPU samples"].notna().any()
    df = df if sampled else df.drop(columns=GPU_COLUMNS)
    print(f"{TITLE}\n\n{COLUMNS}{' ' + GPU_COLUMNS_TEXT if sampled else ''}\n")
    print("| run | sweep wall s | measurements (cells × repeats) | median job s | median warm-up job s |")
    print("|:--|--:|--:|--:|--:|")
    for run in runs:
        walls = [f"{w:g}" for w in _walls(Path(run))]
        part = df[df["run"] == Path(run).name]
        warm = part["warm-up job s"].dropna()
        print(f"| {Path(run).name} | {', '.join(walls) or '-'} | {len(part)} | "
              f"{statistics.median(part['job s'].dropna()):.1f} | "
              f"{statistics.median(warm):.1f} |" if len(warm) else
              f"| {Path(run).name} | {', '.join(walls) or '-'} | {len(part)} | "
              f"{statistics.median(part['job s'].dropna()):.1f} | - |")
    print()
    print("Where each GPU's share of the sweep's wall time went (`occupancy` in report.py says how each column is "
          "read):")
    print()
    print(pd.DataFrame([o for run in runs for o in occupancy(Path(run))]).to_markdown(index=False, floatfmt=",.1f"))
    print()
    print(df.to_markdown(index=False, floatfmt=",.1f"))


def _search_attempts(run: Path, rel: Path, code: str | None) -> tuple[int, float]:
    """How many batch-search attempts the cell's search logs (searches/CELL/rN.jsonl) hold of `code`, and their
    seconds (the warm-up jobs' time includes them)."""
    count, seconds = 0, 0.0
    for log in sorted((run / "searches" / rel).glob("r*.jsonl")):
        for attempt in searchlog.entries(log):
            if (attempt.get("key") or {}).get("code") == code:
                count, seconds = count + 1, seconds + float(attempt.get("seconds") or 0.0)
    return count, seconds


def cell_costs(run: Path) -> pd.DataFrame:
    """Per cell of `run` (each folder under cells/ with a record): its measurements, its batch, and the wall time of
    its jobs by Snakemake's benchmarks (benchmarks/{warmup,cells}/CELL/): every repeat's warm-up job, batch-search
    attempts included, and timed job; its GPU time, both where its warm-ups held the GPU alone (no memory cap), the
    timed jobs alone where they ran beside other jobs (a cap). A job run again (a warm-up redone on a fresh host
    after the part that ran it held its timed job back; a cell measured twice) keeps only its last benchmark;
    cost_text counts what ran before in the run's rest."""
    out = []
    for folder in sorted({p.parent for p in run.glob("cells/**/*.json")}):
        records = sorted(p for p in folder.glob("*.json") if p.name == "cell.json" or p.name.startswith("repeat-"))
        if not records:
            continue
        rel = folder.relative_to(run / "cells")
        recs = [json.loads(p.read_text()) for p in records]
        code = ((recs[0].get("env") or {}).get("code") or {}).get("source_sha256")
        warm = [s for p in records if (s := _warmup_job_seconds(run, rel, _repeat_number(p))) is not None]
        timed = [s for p in records if (s := _job_seconds(run / "benchmarks/cells" / rel / f"{p.stem}.tsv"))
                 is not None]
        attempts, attempts_s = _search_attempts(run, rel, code)
        statuses = sorted({r["status"] for r in recs})
        # Under a cap a warm-up compiles beside other jobs (two per GPU, stopped in timed windows): its wall time is
        # not the GPU's. Without one it holds its GPU alone.
        capped = any((r.get("cell") or {}).get("memory_cap_gib") for r in recs)
        own = recs[0].get("cell") or {}
        axes = {**sweep.cell_axes(rel), **{a: own[a] for a in AXES if own.get(a) is not None}}
        out.append({**axes, "measurements": len(recs), "status": ", ".join(statuses),
                    "batch": ", ".join(sorted({str(r.get("batch_size")) for r in recs})),
                    "search attempts": attempts, "search s": attempts_s,
                    "warm-up jobs s": sum(warm), "timed jobs s": sum(timed),
                    "GPU s": sum(timed) + (0.0 if capped else sum(warm)), "capped": capped,
                    "code": (code or "not recorded")[:8]})
    df = pd.DataFrame(out)
    if df.empty:
        return df
    df["seq_len"] = df["seq_len"].astype(int)
    order = {axis: {v: i for i, v in enumerate(values)}
             for axis, values in (("model", MODELS), ("mode", MODES), ("attn", ATTENTION))}
    df = df.sort_values(["model", "mode", "seq_len", "attn"],
                        key=lambda c: c.map(order[c.name]) if c.name in order else c, ignore_index=True)
    # An axis that never varies within a model says nothing here (GPT-2 large's 20 heads, its 8-bit AdamW).
    same = [a for a in AXES
            if a not in ("model", "seq_len", "attn", "mode") and df.groupby("model")[a].nunique().max() == 1]
    return df.drop(columns=same)


def _sweeps_gpu_s(run: Path) -> tuple[int, float, float]:
    """The run's sweeps: how many, their wall time, and their GPU time: each one's wall time times the GPUs its timed
    jobs ran on (occupancy's rows of it; at least one)."""
    gpus: dict[str, int] = {}
    for row in occupancy(run):
        gpus[row["run"]] = gpus.get(row["run"], 0) + 1
    parts = _parts(run)
    walls = ([(w, gpus.get(f"{run.name} part {i}", 1)) for i, (_, w) in enumerate(parts, 1)] if parts else
             [(w, gpus.get(run.name, 1)) for w in _walls(run)])
    return len(walls), sum(w for w, _ in walls), sum(w * g for w, g in walls)


def cost_text(runs: list[str]) -> str:
    """The sweep's GPU time, per cell and in total, for each run: cell_costs' table, its sums by model, and the
    run's sweeps' GPU time against them."""
    out = ["# GPU time, per cell and in total", "",
           "Made by `python benchmarks/sweep/report.py --cost RUN...` from each run's Snakemake benchmarks "
           "(`benchmarks/`: each job's wall time), its batch-search logs (`searches/`) and its sweeps' wall times "
           "(`wall*.txt`). `warm-up jobs s`: every repeat's warm-up job, its search's attempts included "
           "(`search s` of them, at the code of the cell's records); `timed jobs s`: every repeat's timed job, "
           "its process's start, compilation from the warm-up's cache, steps and profiled step. `GPU s`: both, "
           "where a warm-up holds its GPU alone (no memory cap); the timed jobs alone where warm-ups compile beside "
           "them under a cap (two per GPU, stopped during each measured window), their time shared. `rest`: the "
           "sweeps' GPU time (wall time times the GPUs a part's records ran on) less the cells' GPU s: each part's "
           "start and packing, warm-ups under a cap while no timed job ran, jobs run again (a warm-up redone on a "
           "fresh host after its timed job was held back at a part's end; a cell measured twice: only a job's last "
           "benchmark is kept), jobs cut off at a part's end, a GPU idle before a deadline, and records of earlier "
           "code since measured again."]
    for run in map(Path, runs):
        df = cell_costs(run)
        if df.empty:
            out += ["", f"## {run.name}", "", "No cell records."]
            continue
        sweeps, wall, gpu_s = _sweeps_gpu_s(run)
        used = df["GPU s"].sum()
        by_model = df.groupby("model", sort=False).agg(
            cells=("measurements", "size"), measurements=("measurements", "sum"),
            **{c: (c, "sum") for c in ("search attempts", "warm-up jobs s", "timed jobs s", "GPU s")}).reset_index()
        by_model["GPU s a measurement"] = by_model["GPU s"] / by_model["measurements"]
        cap = ("warm-ups beside the timed jobs (a memory cap)" if df["capped"].all() else
               "warm-ups holding the GPU alone (no memory cap)" if not df["capped"].any() else
               "warm-ups beside the timed jobs for the capped cells, alone for the others")
        out += ["", f"## {run.name}", "",
                f"{len(df)} cells, {df['measurements'].sum()} measurements, {cap}; {sweeps} sweeps of "
                f"{wall:,.0f} s of wall time ({wall / 3600:.2f} h), {gpu_s:,.0f} GPU s ({gpu_s / 3600:.2f} GPU h); "
                f"the cells' GPU s {used:,.0f} ({used / df['measurements'].sum():,.1f} s a measurement), rest "
                f"{gpu_s - used:,.0f} s ({100 * (gpu_s - used) / gpu_s:.0f}%).", "",
                by_model.to_markdown(index=False, floatfmt=",.0f"), "",
                df.drop(columns="capped").to_markdown(index=False, floatfmt=",.0f")]
    return "\n".join(out)


def _timed_records(run: Path) -> Iterator[tuple[Path, dict, float]]:
    """Each `ok` record of `run` (cell.json, repeat-K.json) whose timed job has a Snakemake benchmark: its path, the
    record and the job's wall time."""
    for path in sorted(run.glob("cells/**/*.json")):
        if path.name != "cell.json" and not path.name.startswith("repeat-"):
            continue
        record = json.loads(path.read_text())
        took = _job_seconds(run / "benchmarks" / path.relative_to(run).with_suffix(".tsv"))
        if record.get("status") == "ok" and took:
            yield path, record, took


def estimate_ratios(run: Path) -> list[dict]:
    """Each compiled record of `run` with a warm-up, estimated as the workflow would before its timed job
    (sweep.timed_job_s from its warm-up's attempt, as for a cell not yet measured: against the records of the run's
    other cells of its model, `like`, and without them), over the job's wall time in Snakemake's benchmark."""
    rows = []
    for path, record, took in _timed_records(run):
        warmup, cell = record.get("warmup") or {}, record["cell"]
        if cell["mode"] != "compiled" or not warmup.get("first_step_s"):
            continue
        like = sweep.read_records(sweep.like_records(run, cell, ["attn", "seq_len"], own=False))
        # The warm-up's own record as the timed job reads it: its attempt's step times at the record's batch size
        # where the record keeps them (the attempt's seconds also count its wait for the run seat).
        as_written = {"status": "ok", "first_step_s": warmup["first_step_s"], "steps": warmup["steps"],
                      "batch_attempts": record["batch_attempts"], "batch_size": record["batch_size"],
                      "step_times_s": warmup.get("step_times_s")}
        with_like = sweep.timed_job_s(record["batch_size"], as_written, [], cell["steps"], like)
        alone = sweep.timed_job_s(record["batch_size"], as_written, [], cell["steps"])
        if with_like is not None and alone is not None:
            rows.append({"record": f"{_label(cell)} {path.stem}", "like": with_like / took, "alone": alone / took})
    return rows


def warmup_estimate_ratios(run: Path) -> list[dict]:
    """Each record of `run` made after a warm-up, its warm-up job estimated as the workflow would before starting
    it (sweep.warmup_then_timed_s: a later repeat from its cell's first record; a first repeat from the records of
    the cells that differ from it in the attention only, else in the attention and the context, its own left out),
    over the warm-up job's and the timed job's wall times in Snakemake's benchmarks; with the share of the warm-up's
    wall time it waited for the GPU's run seat (warmup.run_seat_wait_s). A first repeat's estimate here reads every
    other cell's records, also those measured after it: more than the workflow had to go on."""
    rows = []
    for path, record, timed_s in _timed_records(run):
        cell, rel, repeat = record["cell"], path.parent.relative_to(run / "cells"), _repeat_number(path)
        warmup_s = _warmup_job_seconds(run, rel, repeat)
        if not record.get("warmup") or not warmup_s:
            continue
        if repeat > 1:
            first = sweep.read_records([path.with_name("cell.json")])
            expected = sweep.warmup_then_timed_s(first[0], []) if first else None
        else:
            like = sweep.like_records(run, cell, *sweep.WARMUP_LIKE, own=False)
            expected = sweep.warmup_then_timed_s(None, sweep.read_records(like))
        if expected is not None:
            wait = record["warmup"].get("run_seat_wait_s")  # recorded where warm-ups compile in compile seats
            rows.append({"record": f"{_label(cell)} {path.stem}", "first": repeat == 1,
                         "ratio": expected / (warmup_s + timed_s), "wait": None if wait is None else wait / warmup_s})
    return rows


def estimates_text(run: Path) -> str:
    """estimate_ratios' ranges: what the deadline's timed-job estimate comes to against the jobs' wall time; then
    warmup_estimate_ratios': the estimate of a warm-up and the timed job after it, against their wall times."""
    rows = pd.DataFrame(estimate_ratios(run))
    lines = [f"{name}: {len(rows)} records, {rows[col].min():.2f}-{rows[col].max():.2f} times the job's wall "
             f"time, median {rows[col].median():.2f}"
             for col, name in (("like", "with the run's other cells of the model"),
                               ("alone", "from the warm-up alone"))] if len(rows) else [
        f"{run}: no compiled record with a warm-up and a benchmark"]
    warm = pd.DataFrame(warmup_estimate_ratios(run))
    for first, name in ((True, "a first repeat, from the run's like cells"), (False, "a later repeat, from its first")):
        part = warm[warm["first"] == first] if len(warm) else warm
        if len(part):
            waits = part["wait"].dropna()
            lines.append(f"warm-up and timed job, {name}: {len(part)} records, {part['ratio'].min():.2f}-"
                         f"{part['ratio'].max():.2f} times their wall time, median {part['ratio'].median():.2f}, "
                         f"{int((part['ratio'] < 1).sum())} under it; " + (
                             f"the warm-ups waited for the run seat a median {100 * waits.median():.0f}% of their "
                             f"wall time, at most {100 * waits.max():.0f}%" if len(waits) else
                             "no wait for a run seat recorded"))
    return "\n".join(lines)


def _cli(argv: list[str]) -> None:
    """The commands of the module's docstring: one option, or run folders for the sweep benchmark's table."""
    parser = argparse.ArgumentParser(
        prog="report.py", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="Each RUN is a run folder (results/RUN).")
    command = parser.add_mutually_exclusive_group()
    for name in ("compare", "windows", "parts", "cost"):
        command.add_argument(f"--{name}", nargs="+", metavar="RUN")
    command.add_argument("--estimates", nargs=1, metavar="RUN")
    command.add_argument("--progress", nargs="+", metavar="ARG", help="RUN [SINCE]: SINCE in UTC, 2026-12-02T04:00")
    command.add_argument("--equal", nargs=2, metavar=("NEW_RUN", "OLD_RUN"))
    command.add_argument("--hosts", nargs=2, metavar=("RUN_A", "RUN_B"))
    command.add_argument("--between", nargs=2, metavar=("RUN_A", "RUN_B"))
    parser.add_argument("runs", nargs="*", metavar="RUN")
    args = parser.parse_args(argv)
    chosen = next(((name, value) for name, value in vars(args).items() if name != "runs" and value), None)
    if chosen and args.runs:
        parser.error(f"--{chosen[0]} takes no further runs: {' '.join(args.runs)}")
    name, value = chosen or ("", args.runs)
    if not value:
        parser.error("give a RUN, or one of the options")
    since = []
    if name == "progress":
        if len(value) > 2:
            parser.error(f"--progress takes RUN and at most SINCE, not {len(value)} arguments")
        try:
            since = [pd.Timestamp(t, tz="UTC") for t in value[1:]]
        except ValueError as error:
            parser.error(f"--progress SINCE {value[1]!r}: not a time ({error})")
    for folder in value[:1] if name == "progress" else value:
        path = _run_and_code(folder)[0] if name in ("equal", "between") else Path(folder)
        if not path.is_dir():
            parser.error(f"{path}: not a run folder")
    match name:
        case "compare":
            compare(value)
        case "windows":
            windows(value)
        case "parts":
            part_split_table(value)
        case "cost":
            print(cost_text(value))
        case "estimates":
            print(estimates_text(Path(value[0])))
        case "progress":
            print(progress_text(Path(value[0]), *since))
        case "equal":
            equal(*value)
        case "hosts":
            hosts(*value)
        case "between":
            between(*value)
        case _:
            main(value)


if __name__ == "__main__":
    _cli(sys.argv[1:])
