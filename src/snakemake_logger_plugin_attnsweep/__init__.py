"""Snakemake logger plugin `attnsweep` (profiles/default selects it: `logger: [attnsweep]`): what a sweep prints.

Snakemake's own terminal output is a block per job (its inputs, outputs and the reason it runs), progress counted in
jobs, and at the end the inputs of the target rule. This handler prints instead: the cells to measure, one line per
finished cell (its status and tokens/s, read from the cell's JSON, with cells done/total and an estimate of the time
left), one line per aggregation output, and at the end where the tables, figures and report are. Errors and
warnings are Snakemake's own, in full. Dry runs, and runs with --logger-attnsweep-snakemake-output, print
Snakemake's output unchanged; Snakemake's full log is written to .snakemake/log/ either way.

Cells are the jobs of rule `cell`, their record the output named cell.json.
"""

# No `from __future__ import annotations`: Snakemake reads the settings' field types to build the CLI options.
import json
import logging
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from attnsweep.report.report_path import snakemake_command
from attnsweep.sweep import DEADLINE_ENV, NOT_STARTED, is_grouped
from snakemake_interface_logger_plugins.base import LogHandlerBase
from snakemake_interface_logger_plugins.common import LogEvent
from snakemake_interface_logger_plugins.settings import LogHandlerSettingsBase

# The jobs that measure: a cell, and its repeats 2, 3, ... (config repeats), whose records are repeat-K.json.
CELL_RULES = ("cell", "cell_repeat")
# The axes always named in a cell's line; the others only where they differ from the first cell's.
MAIN_AXES = ("model", "seq_len", "attn", "mode")


def _full_heads(wildcards: dict, key: str) -> bool:
    """Whether `key` is kv_heads at the model's own head count: multi-head attention, named by no label (the
    number differs between models, so it would single out every cell of a model other than the first one's)."""
    return key == "kv_heads" and not is_grouped(wildcards.get("model"), wildcards[key])


# Snakemake's informational lines that say nothing to someone running the sweep (all of them are in its log file).
NOISE = (
    "Building DAG of jobs",
    "Using shell:",
    "Provided cores:",
    "Rules claiming more threads",
    "Provided resources:",
    "Conda environments: ignored",
    "Singularity containers: ignored",
    "Select jobs to execute",
    "Execute ",
    "Assuming unrestricted shared filesystem",
    "Job stats:",
    # a cell's warm-up output (its compile cache) is temporary, removed once the cell is measured
    "Removing temporary output",
)
# How Snakemake's report of a job ends when the job was stopped by SIGTERM (a part's deadline: `timeout` signals the
# whole process group), not failed: such a job leaves no output, and the same command runs it again.
SIGTERM_DEATH = "died with <Signals.SIGTERM: 15>"
# Snakemake's closing lines when a job failed (with keep-going), not shown where every "failed" job was held back
# for the deadline: none failed.
# The check every cell and warm-up job runs first (workflow/scripts/): in the command a failed job's exception quotes.
START_CHECK = "start-before-deadline.sh"
AFTER_FAILURES = ("Exiting because a job execution failed", "At least one job did not complete successfully")
# Outputs worth a line when they are made: the run's summary, tables, figures and report headline.
SHOWN_RULES = {"summary", "tables", "figures", "headline"}


@dataclass
class LogHandlerSettings(LogHandlerSettingsBase):
    snakemake_output: bool = field(
        default=False,
        metadata={"help": "print Snakemake's own output (a block per job) instead of one line per cell"},
    )


def duration(seconds: float) -> str:
    """12 s, 3 min 05 s, 1 h 02 min."""
    seconds = int(round(seconds))
    if seconds < 60:
        return f"{seconds} s"
    if seconds < 3600:
        return f"{seconds // 60} min {seconds % 60:02d} s"
    return f"{seconds // 3600} h {seconds % 3600 // 60:02d} min"


def _message(record: logging.LogRecord) -> str:
    try:
        return str(record.getMessage())
    except Exception:  # a record whose arguments do not format: not the one looked for
        return ""


def not_started(logs: list[str]) -> Optional[str]:
    """The first line of a job's log where the job was held back for the deadline (ATTNSWEEP_DEADLINE), else None."""
    for log in logs:
        try:
            with open(log.split(" (")[0]) as f:
                line = f.readline().strip()
        except OSError:
            continue
        if line.startswith(NOT_STARTED):
            return line
    return None


def cell_outcome(path: Path) -> str:
    """'ok, 2,090 tokens/s' / 'unsupported (reason)' from a cell's record."""
    try:
        record = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        return f"no readable record ({type(e).__name__})"
    status = record.get("status", "?")
    if status == "ok" and record.get("tokens_per_sec") is not None:
        return f"ok, {record['tokens_per_sec']:,.0f} tokens/s"
    # The reason's start (the whole is in the record and the tables), cut at a word.
    reason = str(record.get("reason") or "")
    reason = reason if len(reason) <= 60 else reason[:60].rsplit(" ", 1)[0] + " ..."
    return f"{status} ({reason})" if reason else status


class LogHandler(LogHandlerBase):
    def __post_init__(self) -> None:
        from snakemake.logging import DefaultFilter, DefaultFormatter

        s = self.common_settings
        self.passthrough = bool(s.dryrun or (self.settings is not None and self.settings.snakemake_output))
        self.snakemake_filter = DefaultFilter(s.quiet, s.debug_dag, s.verbose, s.dryrun, s.printshellcmds)
        self.snakemake_formatter = DefaultFormatter(s.quiet, s.show_failed_logs)
        self.stream = sys.stdout if s.stdout else sys.stderr
        self.jobs: dict[int, dict[str, Any]] = {}
        self.cells_total = 0
        self.cells_done = 0
        self.first_job: Optional[float] = None
        self.counts: dict[str, int] = {}
        self.first_cell: Optional[dict] = None
        self.results: Optional[str] = None
        self.started = time.monotonic()
        self.interrupted = False
        # Snakemake reports a job's exception before the job's error: set by a SIGTERM death, read by the job's error.
        self.stopped_by_sigterm = False
        # Jobs held back as they would end after ATTNSWEEP_DEADLINE: counted, and said once at the end.
        self.held_back: list[str] = []
        self.failed = 0
        self.job_exception: Optional[logging.LogRecord] = None
        self.snakemake = snakemake_command(sys.argv[0])

    # What Snakemake asks of a handler.
    @property
    def writes_to_stream(self) -> bool:
        return True

    @property
    def writes_to_file(self) -> bool:
        return False

    @property
    def has_filter(self) -> bool:
        return True

    @property
    def has_formatter(self) -> bool:
        return True

    @property
    def needs_rulegraph(self) -> bool:
        return False

    def write(self, text: str) -> None:
        self.stream.write(text + "\n")
        self.stream.flush()

    def snakemake_line(self, record: logging.LogRecord) -> None:
        """Snakemake's own rendering of the record, as its default handler would print it."""
        if not self.snakemake_filter.filter(record):
            return
        text = self.snakemake_formatter.format(record)
        if text not in (None, "", "None", True):
            self.write(str(text))

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self.handle_record(record)
        except Exception:
            self.handleError(record)

    def handle_record(self, record: logging.LogRecord) -> None:
        if self.passthrough:
            self.snakemake_line(record)
            return
        event = getattr(record, "event", None)
        if event == LogEvent.RUN_INFO and isinstance(getattr(record, "stats", None), dict):
            self.run_info(record.stats)
        elif event == LogEvent.JOB_INFO:
            self.first_job = self.first_job or time.monotonic()
            self.jobs[record.jobid] = {"rule": record.rule_name, "output": list(record.output or []),
                                       "log": list(getattr(record, "log", None) or []),
                                       "wildcards": dict(record.wildcards or {}), "start": time.monotonic()}
        elif event == LogEvent.JOB_FINISHED:
            self.job_finished(self.jobs.get(record.job_id))
        elif self.interrupted and (event in (LogEvent.JOB_ERROR, LogEvent.ERROR) or record.levelno >= logging.WARNING):
            # Ctrl-C also stops the cell in progress; Snakemake reports that as a failed job and a failed workflow,
            # with the cell's KeyboardInterrupt traceback. It is neither: the one line at the start says what happened.
            return
        elif event == LogEvent.ERROR and START_CHECK in _message(record):
            # A job's exception, reported before the job's error: shown with it, unless the job was held back or
            # stopped by SIGTERM (then the job's line says so, without the report).
            self.job_exception = record
            self.stopped_by_sigterm = SIGTERM_DEATH in _message(record)
        elif event == LogEvent.JOB_ERROR and (held := self.held_back_job(getattr(record, "jobid", None))):
            self.held_back.append(held)
            self.job_exception = None
        elif self.held_back and not self.failed and _message(record).startswith(AFTER_FAILURES):
            return  # every failed job was held back: none failed
        elif event == LogEvent.JOB_ERROR:
            self.failed += 1
            job = self.jobs.get(getattr(record, "jobid", None))
            stopped, self.stopped_by_sigterm = self.stopped_by_sigterm, False
            if self.job_exception is not None and not stopped:
                self.snakemake_line(self.job_exception)
            self.job_exception = None
            if job and job["rule"] in CELL_RULES:
                self.cells_done += 1
                status = "stopped" if stopped else "error"
                self.counts[status] = self.counts.get(status, 0) + 1
                self.write(f"{self.progress()} {self.cell_label(job)}: "
                           + ("stopped by SIGTERM (no record; the same command measures it again)" if stopped
                              else "error (Snakemake's report follows)"))
            if not stopped:
                self.snakemake_line(record)
        elif event == LogEvent.ERROR and SIGTERM_DEATH in _message(record):
            self.stopped_by_sigterm = True  # the job's error follows: its line says so, without the report
        elif event in (LogEvent.WORKFLOW_STARTED, LogEvent.PROGRESS, LogEvent.JOB_STARTED, LogEvent.SHELLCMD,
                       LogEvent.RESOURCES_INFO, LogEvent.RULEGRAPH, LogEvent.RUN_INFO):
            return
        elif event is None and record.levelno <= logging.INFO:
            self.plain_info(str(record.getMessage() if record.msg is not None else ""))
        else:
            self.snakemake_line(record)

    def held_back_job(self, jobid: Any) -> Optional[str]:
        """'warmup small 4096 fa2 compiled: expected to take ...' for a job held back for the deadline, else None."""
        job = self.jobs.get(jobid)
        line = job and not_started(job["log"])
        if not line:
            return None
        return f"{job['rule']} {self.cell_label(job)}: {line[len(NOT_STARTED):].lstrip(': ')}"

    def plain_info(self, message: str) -> None:
        if message.startswith("Complete log(s):"):
            self.finish(message.split(":", 1)[1].strip())
        elif message.startswith("Terminating processes on user request"):
            self.interrupted = True
            self.write("attnsweep: interrupted; stopping the cell in progress (it leaves no record)")
        elif message and not message.startswith(NOISE):
            self.write(message)

    def run_info(self, stats: dict) -> None:
        self.cells_total = sum(int(stats.get(rule, 0)) for rule in CELL_RULES)
        jobs = int(stats.get("total", sum(v for k, v in stats.items() if k != "total")))
        if self.cells_total:
            what = "cells and repeats" if stats.get("cell_repeat") else "cells"
            self.write(f"attnsweep: {self.cells_total} {what} to measure, one at a time, then the summary, tables "
                       f"and figures ({jobs} Snakemake jobs)")
        else:
            self.write(f"attnsweep: no cell to measure; {jobs} Snakemake jobs (summary, tables, figures)")

    def progress(self) -> str:
        width = len(str(self.cells_total))
        return f"[{self.cells_done:>{width}}/{self.cells_total}]"

    def cell_label(self, job: dict) -> str:
        wildcards = job["wildcards"]
        if self.first_cell is None:
            self.first_cell = wildcards
        shown = [str(wildcards[a]) for a in MAIN_AXES if a in wildcards]
        shown += [f"{k}={v}" for k, v in wildcards.items()
                  if k not in (*MAIN_AXES, "repeat") and self.first_cell.get(k) != v and not _full_heads(wildcards, k)]
        if "repeat" in wildcards:  # repeats 2, 3, ... of a cell (rule cell_repeat)
            shown.append(f"(repeat {wildcards['repeat']})")
        return " ".join(shown)

    def job_finished(self, job: Optional[dict]) -> None:
        if job is None:
            return
        outputs = [o.split(" (")[0] for o in job["output"]]  # format_files may append " (report)" and the like
        if job["rule"] in CELL_RULES:
            self.cells_done += 1
            now = time.monotonic()
            seconds = now - job["start"]
            record = next((Path(o) for o in outputs if Path(o).suffix == ".json"), None)
            outcome = cell_outcome(record) if record else "done"
            status = outcome.split(",")[0].split(" ")[0]
            self.counts[status] = self.counts.get(status, 0) + 1
            if record and "/cells/" in record.as_posix():
                self.results = record.as_posix().split("/cells/")[0]
            # The time left at the pace so far, counted from the first job: what a cell costs besides its own
            # job (code stamps, a warm-up job before it) is in the pace too.
            left = self.cells_total - self.cells_done
            pace = (now - (self.first_job or job["start"])) / self.cells_done
            eta = f"; about {duration(left * pace)} left" if left else ""
            self.write(f"{self.progress()} {self.cell_label(job)}: {outcome} ({duration(seconds)}{eta})")
        elif job["rule"] in SHOWN_RULES:
            if job["rule"] == "summary" and outputs:
                self.results = str(Path(outputs[0]).parent)
            shown = ", ".join(outputs) if len(outputs) <= 2 else f"{len(outputs)} files in {Path(outputs[0]).parent}/"
            self.write(f"made {shown}")

    def finish(self, logfile: str) -> None:
        took = duration(time.monotonic() - self.started)
        if self.interrupted:
            self.write(f"attnsweep: stopped after {self.cells_done} of {self.cells_total} cells ({took}). The same "
                       "command resumes: finished cells are kept, the rest run.")
            self.write(f"Snakemake's full log: {logfile}")
            return
        if self.cells_total:
            statuses = ", ".join(f"{n} {s}" for s, n in self.counts.items())
            self.write(f"attnsweep: {self.cells_done} of {self.cells_total} cells in {took} ({statuses})")
        if self.held_back:
            self.write(f"attnsweep: {len(self.held_back)} jobs not started, as each would have ended after "
                       f"{DEADLINE_ENV} (the first: {self.held_back[0]}); the same command runs them")
        if self.results:
            r = self.results
            self.write(f"Results are in {r}/:\n"
                       f"  headline  {r}/headline.rst (the fastest implementation per context)\n"
                       f"  tables    {r}/tables/ (answers.md: the fastest implementation and mode; compiled.md, "
                       "eager.md, any other mode's, study.md, all.md)\n"
                       f"  figures   {r}/figures/\n"
                       f"  summary   {r}/summary.csv (one row per cell)\n"
                       f"  report    {self.snakemake} --report {r}/report.html")
        self.write(f"Snakemake's full log: {logfile} (its own output on the terminal: "
                   f"--logger-attnsweep-snakemake-output)")
