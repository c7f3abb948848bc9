"""`attnsweep status RESULTS_DIR`: what a results folder holds, where each cell came from, and what a rerun would do.

Four questions, answered from the files and from Snakemake itself:

1. Which cells are there, and are they valid? Every JSON under RESULTS_DIR/cells is read with the same check the
   aggregation uses (`cellio.load_cell`); a file that fails it is listed with the error.
2. Which environment produced each? Cells are grouped by GPU model, torch, flash-attn, CUDA, cuDNN, Triton and the code
   that ran (source hash and `git describe`, as recorded in each cell); beside each, the kernel packages its cells'
   implementations ran (flash-attn-4, for fa4, fa4_graphbreak and sdpa_fa4).
3. Can every row of summary.csv be traced to its cell file? Its `cell_path` column is checked against the folder.
4. Which cells are missing, and which are stale against the current code and config? Snakemake decides that, so
   Snakemake is asked (`snakemake --summary`, which plans without running or locking anything) with the config the
   run was made with. It needs the run's device: a GPU run's config (`device: cuda`) cannot be planned on a machine
   without that GPU, and planning it with another device would be wrong, since the device is part of every cell's
   stamp (every cell would look stale). There the plan is reported as not determined, with Snakemake's reason, and
   only the code check below is given.

The code check needs no Snakemake: the folder's stamps (stamps/cells-*.json) record the hash of every code file the
cells ran; files that changed or vanished since, and files no stamp records, are listed.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from .cellio import load_cell
from .codestamp import cell_code_files, source_hash
from .packages import versions
from .sweep import (cell_axes, dig, environment_of, kernel_packages_text, record_stale_reason,
                    unsupported_by_other_packages, waiting_timed_records)

PLAN_TIMEOUT_S = 600
# The environment (sweep.ENV_FIELDS, what makes two cells comparable), and where the code that ran came from.
CODE_FIELDS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("code", ("env", "code", "source_sha256")),
    ("git describe", ("env", "code", "git_describe")),
    ("host CPU", ("env", "cpu_model")),
)
CODE_HASH_CHARS = 12


@dataclass
class Cell:
    path: Path  # relative to the results folder
    record: dict
    env: str = ""  # E1, E2, ... (see Status.environments)
    notes: list[str] = field(default_factory=list)


@dataclass
class Plan:
    """Snakemake's view of the cells of one config (paths relative to the results folder)."""

    missing: list[Path] = field(default_factory=list)
    stale: dict[Path, str] = field(default_factory=dict)  # path -> why it would rerun
    current: list[Path] = field(default_factory=list)
    stamp_change: str | None = None  # said once: it is why every existing cell is stale
    summary_pending: bool | None = None


@dataclass
class Status:
    results: Path
    cells: list[Cell]
    invalid: dict[Path, str]  # path -> why the cell check refuses it
    environments: list[dict]  # one row per environment: label, the ENV_FIELDS, cell count
    code_changes: list[str]  # from the stamps, one line per stamp
    summary_check: list[str]
    plan: Plan | None
    plan_note: str | None  # why there is no plan, or what is odd about it
    outside_grid: list[Path] = field(default_factory=list)  # cells on disk that the config does not ask for


def env_values(record: dict) -> dict[str, str]:
    env = environment_of(record)
    # A CPU cell has no GPU name: say the device type, so the table never shows an empty device.
    values = {"device": env.pop("gpu") or dig(record, ("env", "device_type")), **env,
              **{name: dig(record, keys) for name, keys in CODE_FIELDS}}
    if values["code"]:
        values["code"] = values["code"][:CODE_HASH_CHARS]
    return {k: "none" if v is None else str(v) for k, v in values.items()}


def _provenance_notes(rel: Path, record: dict, run: str) -> list[str]:
    """What the record says that contradicts where it lies: another run's cell, or a cell moved between folders."""
    notes = []
    recorded_run = dig(record, ("cell", "run"))
    if recorded_run != run:
        notes.append(f"recorded by run {recorded_run!r}, not {run!r}")
    # Each key~value folder of the cell's path must match the record.
    for key, value in cell_axes(rel).items():
        if str(dig(record, ("cell", key))) != value:
            notes.append(f"folder says {key}~{value}, the record says {key}={dig(record, ('cell', key))!r}")
    return notes


def _natural_key(path: Path) -> list:
    return [[int(t) if t.isdigit() else t for t in re.split(r"(\d+)", part)] for part in path.parts]


def read_cells(results: Path) -> tuple[list[Cell], dict[Path, str]]:
    cells, invalid = [], {}
    root = results / "cells"
    # Hidden files are write_json_atomic's temporaries (.cell.json.XXXX.tmp): never records.
    # Numbers in folder names sort as numbers (seq_len~64 before seq_len~512), as the grid lists them.
    paths = sorted((p for p in root.rglob("*.json") if not p.name.startswith(".")),
                   key=_natural_key) if root.is_dir() else []
    for path in paths:
        rel = path.relative_to(results)
        try:
            record = load_cell(path)
        except (ValueError, OSError) as e:  # UnicodeDecodeError is a ValueError; an unreadable file an OSError
            invalid[rel] = str(e)
            continue
        cells.append(Cell(rel, record, notes=_provenance_notes(rel.relative_to("cells"), record, results.name)))
    return cells, invalid


# Shown, not a difference: what a checkout said of itself (`git describe`, "-dirty" with results unpacked into it),
# and the host's CPU (one environment's cells may come from several hosts; records before 2026-11-30 say none).
DESCRIBED_ONLY = ("git describe", "host CPU")
# Shown beside them: the kernel packages the environment's cells ran (sweep.kernel_packages_text).
KERNELS = "kernel packages"


def group_environments(cells: list[Cell]) -> list[dict]:
    """Label each cell's environment E1, E2, ... in order of first appearance; one row per environment: the software,
    the device and the code's hash, with every `git describe` its cells' checkouts gave and every host CPU."""
    groups: dict[tuple, dict] = {}
    # Per environment, the values of each shown-only field, in order of appearance.
    described: dict[tuple, dict[str, dict[str, None]]] = {}
    runs: dict[tuple, list[tuple]] = {}  # per environment: each cell's (attn, status, env.versions)
    for cell in cells:
        values = env_values(cell.record)
        key = tuple(v for k, v in values.items() if k not in DESCRIBED_ONLY)
        groups.setdefault(key, {"env": f"E{len(groups) + 1}", **values, "cells": 0})["cells"] += 1
        for name in DESCRIBED_ONLY:
            described.setdefault(key, {}).setdefault(name, {})[values[name]] = None
        runs.setdefault(key, []).append(
            (cell.record["cell"]["attn"], cell.record.get("status"), dig(cell.record, ("env", "versions"))))
        cell.env = groups[key]["env"]
    kernels = {key: kernel_packages_text(cells) for key, cells in runs.items()}
    return [{**row, **{name: ", ".join(described[key][name]) for name in DESCRIBED_ONLY},
             **({KERNELS: kernels[key] or "none"} if any(kernels.values()) else {})}
            for key, row in groups.items()]


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def code_changes(results: Path, root: Path) -> list[str]:
    """Per cells stamp: recorded code files that changed or vanished since, and code files no stamp records.

    Stamp entries are paths relative to the workflow root (`code_dir/...`, `workflow/scripts/...`), with sha256.
    """
    stamps = sorted((results / "stamps").glob("*.json"))
    recorded: dict[str, str] = {}
    cell_stamps = []
    for stamp in stamps:
        try:
            files = json.loads(stamp.read_text())["files"]
        except (ValueError, KeyError, OSError) as e:
            return [f"{stamp.relative_to(results)}: unreadable ({e})"]
        recorded |= files
        if stamp.name.startswith("cells-"):
            cell_stamps.append((stamp, files))
    if not cell_stamps:
        return ["no cell stamp (stamps/cells-*.json) in this folder: the code the cells ran cannot be compared"]
    lines = []
    for stamp, files in cell_stamps:
        changed = [f for f, h in files.items() if not (root / f).is_file() or _sha256(root / f) != h]
        verdict = ", ".join(f + ("" if (root / f).is_file() else " (gone)") for f in changed) or "none"
        lines.append(f"{stamp.relative_to(results)}: recorded code files changed since: {verdict}")
        # The package the cells ran (the common folder of the stamp's files): code files added since.
        package = root / os.path.commonpath(list(files))
        new = sorted(p.relative_to(root).as_posix() for p in cell_code_files(package)
                     if p.relative_to(root).as_posix() not in recorded)
        if new:
            lines.append(f"{stamp.relative_to(results)}: code files no stamp records (new since): {', '.join(new)}")
    return lines


def check_summary(results: Path, root: Path, cells: list[Cell]) -> list[str]:
    """Every row of summary.csv must name a cell file that exists; every valid cell must have a row."""
    import pandas as pd

    path = results / "summary.csv"
    if not path.exists():
        return ["no summary.csv yet"]
    df = pd.read_csv(path)
    if "cell_path" not in df.columns:
        return [f"summary.csv has no cell_path column: its {len(df)} rows cannot be traced to cell files"]
    # The workflow writes cell_path relative to its root (results/{run}/cells/...); absolute paths are kept.
    # Rows of status `missing` (a partial aggregation, allow_missing) stand for cells not measured yet, by design.
    missing = df["status"].astype(str) == "missing" if "status" in df.columns else pd.Series(False, index=df.index)
    listed = {(root / p).resolve() for p in df.loc[~missing, "cell_path"].astype(str)}
    not_yet = sorted((root / p).resolve() for p in df.loc[missing, "cell_path"].astype(str))
    # A repeat (repeat-K.json) is folded into the row of its cell (cell.json in its folder).
    on_disk = {(results / c.path).resolve().with_name("cell.json") for c in cells}
    # A missing row beside a first record: the aggregation left the record out as stale (sweep.stale_to_leave_out),
    # and the run measures the cell again when it resumes.
    codes = {(results / c.path).resolve(): dig(c.record, ("env", "code", "source_sha256")) for c in cells}
    here = results.resolve()

    def show(p: Path) -> str:
        return p.relative_to(here).as_posix() if p.is_relative_to(here) else str(p)

    stale = [p for p in not_yet if p in on_disk]
    lines = [f"summary.csv: {len(df)} rows" + (f", {len(not_yet)} of them cells not measured yet" if not_yet else "")
             + (f" ({len(stale)} beside a record left out as stale)" if stale else "")]
    lines += [f"not measured yet (row of status missing): {show(p)}" for p in not_yet if p not in on_disk]
    lines += [f"left out as stale (row of status missing beside its record, of code {(codes.get(p) or '?')[:8]}: "
              f"other code, settings or packages than the run's; measured again when it resumes): {show(p)}"
              for p in stale]
    lines += [f"row without its cell file: {show(p)}" for p in sorted(p for p in listed if not p.is_file())]
    lines += [f"cell without a row: {show(p)}" for p in sorted(on_disk - listed - set(not_yet))]
    if len(listed) != int((~missing).sum()):
        lines.append(f"{int((~missing).sum()) - len(listed)} rows name a cell file another row names too")
    if len(lines) == 1:
        lines[0] += ", each traced to its cell file"
    return lines


def snakemake_summary(root: Path, configfiles: Sequence[str], config: Sequence[str]) -> tuple[list[list[str]], str]:
    """Rows of `snakemake --summary` (output_file, date, rule, log, status, plan) and Snakemake's stderr.

    --summary plans like a dry run but neither runs nor locks, so it also works while a sweep is running.
    --rerun-incomplete as in the shipped profile: a cell a killed run left incomplete is planned, not an error.
    """
    cmd = [sys.executable, "-m", "snakemake", "--summary", "--rerun-incomplete"]
    if configfiles:
        cmd += ["--configfile", *configfiles]
    if config:
        cmd += ["--config", *config]
    proc = subprocess.run(cmd, cwd=root, capture_output=True, text=True, timeout=PLAN_TIMEOUT_S)
    if proc.returncode != 0:
        raise RuntimeError(proc.stderr.strip() or proc.stdout.strip() or f"exit code {proc.returncode}")
    rows = [line.split("\t") for line in proc.stdout.splitlines()]
    return [r for r in rows if len(r) >= 6 and r[0] != "output_file"], proc.stderr


def plan_cells(results: Path, root: Path, rows: list[list[str]]) -> tuple[Plan, str | None]:
    """Sort the cell outputs of Snakemake's summary into missing, stale and current."""
    plan = Plan()
    here = results.resolve()
    new_stamp = next((r[0] for r in rows if r[2] == "code_stamp" and "/stamps/cells-" in r[0]
                      and r[-1] == "update pending"), None)
    if new_stamp:
        old = ", ".join(p.name for p in sorted((results / "stamps").glob("cells-*.json"))) or "none"
        plan.stamp_change = (f"the cell code stamp would become {Path(new_stamp).name}: code or cell settings "
                             f"changed since this folder's {old}")
    # Records whose rerun marker is planned: those the workflow found of other code or settings than a cell would
    # run with now, and any other whose job runs anyway (the marker is an input of every record's job).
    marked = {(root / r[0].replace("/.rerun/", "/cells/", 1)).with_suffix(".json").resolve()
              for r in rows if r[2] == "rerun" and r[-1] == "update pending"}
    code_now = source_hash() if marked else None  # hashing the package: once, and only if needed
    # The cell settings a cell runs with now: the run's cells stamp's, where no new stamp is pending (read only if
    # a marker is planned).
    stamps = sorted((results / "stamps").glob("cells-*.json")) if marked and not new_stamp else []
    settings = json.loads(stamps[0].read_text()).get("settings") if len(stamps) == 1 else None
    elsewhere = set()
    for out, _date, rule, *_, why, todo in rows:
        path = (root / out).resolve()
        if rule == "summary" and path.parent == here:
            plan.summary_pending = todo == "update pending"
        if rule not in ("cell", "cell_repeat"):  # a repeat (repeat-K.json) is planned like the cell itself
            continue
        if not path.is_relative_to(here):
            elsewhere.add(out.split("/cells/")[0])
            continue
        rel = path.relative_to(here)
        if todo != "update pending":
            plan.current.append(rel)
        elif not path.exists():
            plan.missing.append(rel)
        elif new_stamp:
            plan.stale[rel] = "code stamp changes"
        elif path in marked and (reason := _stale_record(path, code_now, settings)):
            plan.stale[rel] = reason
        elif why != "ok":
            plan.stale[rel] = f"Snakemake: {why}"
        else:
            plan.stale[rel] = "Snakemake would rerun it (e.g. left incomplete by a killed run)"
    note = None
    if elsewhere and not (plan.missing or plan.stale or plan.current):
        note = (f"this config's cells go to {', '.join(sorted(elsewhere))}/, not {results}: pass the --configfile "
                "and --config the run was made with")
    return plan, note


def _stale_record(record: Path, now: str, settings: dict | None) -> str | None:
    """Why a record whose rerun is planned is stale: its code hash against `now` (the code a cell runs now), then its
    cell settings against `settings` (the run's cells stamp's; None: not known), then an `unsupported` record's
    packages against this machine's. None where none differs: its job runs for a reason of Snakemake's own, which the
    caller gives."""
    try:
        data = json.loads(record.read_text())
    except (OSError, ValueError):
        data = None
    code = "unreadable" if data is None else str(dig(data, ("env", "code", "source_sha256")))
    if code != now:
        return f"a record of other code (its code {code[:12]}, now {now[:12]})"
    if settings is None:
        return "a record of other cell settings"
    if reason := record_stale_reason(data, now, settings):
        return f"a record of other cell settings ({reason})"
    if reason := unsupported_by_other_packages(data, versions()):
        return f"a record of other packages ({reason})"
    return None


def collect(results: Path, root: Path, configfiles: Sequence[str] = (), config: Sequence[str] = ()) -> Status:
    cells, invalid = read_cells(results)
    environments = group_environments(cells)
    plan, note = None, None
    try:
        rows, _ = snakemake_summary(root, configfiles, config)
        plan, note = plan_cells(results, root, rows)
        if note:
            plan = None
    except (RuntimeError, OSError, subprocess.TimeoutExpired) as e:
        note = f"Snakemake could not plan this workflow here:\n{_tail(str(e))}"
        if "device: cuda" in str(e):
            note += ("\nA GPU run is planned on a machine with its GPU: its device is part of every cell's stamp, "
                     "so planning it with another device would call every cell stale.")
    outside = []
    if plan is not None:
        planned = set(plan.current) | set(plan.missing) | set(plan.stale)
        outside = [c.path for c in cells if c.path not in planned]
    return Status(results=results, cells=cells, invalid=invalid, environments=environments,
                  code_changes=code_changes(results, root), summary_check=check_summary(results, root, cells),
                  plan=plan, plan_note=note, outside_grid=outside)


def _tail(text: str, lines: int = 12) -> str:
    """The end of Snakemake's stderr, where its error is (the start is its banner)."""
    return "\n".join("    " + line for line in text.strip().splitlines()[-lines:])


def _table(rows: list[dict]) -> str:
    import pandas as pd

    # disable_numparse: versions such as CUDA "13.0" stay as written, not 13
    return pd.DataFrame(rows).to_markdown(index=False, disable_numparse=True)


def render(st: Status) -> str:
    out = [f"# attnsweep status: {st.results}", ""]
    out += [f"## Cells: {len(st.cells)} valid, {len(st.invalid)} invalid", ""]
    if st.cells:
        rows = []
        for c in st.cells:
            tps = c.record.get("tokens_per_sec")
            rows.append({"cell": c.path.as_posix(), "status": c.record["status"],
                         "tokens/s": "" if tps is None else f"{tps:,.0f}", "env": c.env,
                         "code": env_values(c.record)["code"]})
        out += [_table(rows), ""]
    out += ["## Environments (which produced each cell)", ""]
    out += [_table(st.environments) if st.environments else "none", ""]
    if st.invalid:
        out += ["## Invalid cell files (the aggregation refuses these too)", ""]
        # load_cell's messages name the file; the prefix is for any that would not
        out += [f"- {why}" if p.as_posix() in why else f"- {p.as_posix()}: {why}" for p, why in st.invalid.items()]
        out += [""]
    notes = [f"- {c.path.as_posix()}: {n}" for c in st.cells for n in c.notes]
    if notes:
        out += ["## Provenance problems", "", *notes, ""]
    out += ["## summary.csv", "", *(f"- {line}" for line in st.summary_check), ""]
    out += ["## Code against the stamps (no Snakemake needed)", "", *(f"- {line}" for line in st.code_changes), ""]
    out += ["## Missing and stale (snakemake --summary)", ""]
    if st.plan is None:
        out += [f"Not determined: {st.plan_note}", ""]
    else:
        p = st.plan
        out += [f"- up to date: {len(p.current)}", f"- missing: {len(p.missing)}"]
        out += [f"    - {x.as_posix()}" for x in p.missing]
        out += [f"- stale: {len(p.stale)}" + (f" ({p.stamp_change})" if p.stamp_change and p.stale else "")]
        out += [f"    - {x.as_posix()}: {why}" for x, why in p.stale.items()]
        out += [f"- not in this config's grid (ignored by the aggregation): {len(st.outside_grid)}"]
        out += [f"    - {x.as_posix()}" for x in st.outside_grid]
        if p.summary_pending is not None:
            out += [f"- summary.csv: {'would be rewritten' if p.summary_pending else 'up to date'}"]
        out += [""]
    return "\n".join(out)


def add_parser(sub) -> None:
    p = sub.add_parser(
        "status", help="list a results folder's cells, their environments, and which are missing or stale",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description=__doc__ + """
Output (markdown): every cell with its status, tokens/s, environment label and code hash; the environments; invalid
cell files with the error; cells whose record contradicts their folder or run; summary.csv rows without a cell file;
code changed since the stamps; then the cells missing, stale (with the reason) and outside the config's grid, as
Snakemake plans them. Exit 0 whenever the report (with --waiting, the list) is printed, 2 if RESULTS_DIR is not a
results folder.""",
    )
    p.add_argument("results", type=Path, metavar="RESULTS_DIR", help="a run's folder, e.g. results/study")
    # nargs="+" as in snakemake: RESULTS_DIR goes first, or it is taken for one more value.
    p.add_argument("--configfile", nargs="+", default=[], metavar="FILE",
                   help="the config file(s) the run was made with, as given to snakemake (default: the Snakefile's "
                   "config/config.yaml); put RESULTS_DIR before this option")
    p.add_argument("--config", nargs="+", default=[], metavar="KEY=VALUE",
                   help="the --config overrides the run was made with, as given to snakemake; put RESULTS_DIR "
                   "before this option")
    p.add_argument("--workflow-root", type=Path, default=None,
                   help="the folder with the Snakefile (default: RESULTS_DIR/../.., where the workflow puts it)")
    p.add_argument("--waiting", action="store_true",
                   help="only list, one path a line, the records whose warm-up is done and whose timed job has not "
                   "run (sweep.waiting_timed_records): snakemake's targets for a part that only measures "
                   "(tools/gpu-host/sweep.sh's SWEEP_WAITING_ONLY)")


def run(args: argparse.Namespace) -> int:
    results: Path = args.results
    if not results.is_dir():
        print(f"attnsweep status: {results} is not a folder", file=sys.stderr)
        return 2
    if args.waiting:
        print("".join(f"{path}\n" for path in waiting_timed_records(results)), end="")
        return 0
    # The workflow writes to results/{run}/ under its root, so the root is two levels up unless given.
    root = args.workflow_root or results.resolve().parent.parent
    if not (root / "Snakefile").is_file():
        print(f"attnsweep status: no Snakefile in {root}; pass --workflow-root", file=sys.stderr)
        return 2
    # Snakemake runs in the workflow root: config files named relative to here must still be found.
    configfiles = [str(Path(f).resolve()) for f in args.configfile]
    print(render(collect(results, root, configfiles, args.config)))
    return 0
