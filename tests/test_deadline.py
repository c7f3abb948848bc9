"""A sweep's deadline (ATTNSWEEP_DEADLINE): what a job is expected to take, and the check run before it (CPU)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from attnsweep import sweep

ROOT = Path(__file__).resolve().parents[1]
CHECK = ROOT / "workflow/scripts/start-before-deadline.sh"
CELL = {"model": "small", "seq_len": 2048, "attn": "fa2", "mode": "compiled", "kv_heads": 12, "precision": "fp16",
        "optimizer": "adamw", "harness": "native"}


def attempt(batch: int, seconds: float, outcome: str = "ok", stage: str = "warmup") -> dict:
    return {"batch_size": batch, "outcome": outcome, "seconds": seconds, "detail": None, "stage": stage}


# A warm-up as `attnsweep warmup` writes it: a search at 64 out of memory, then 48 fitted (10 steps, 25 s cold).
WARMUP = {"status": "ok", "batch_size": 48, "first_step_s": 25.0, "steps": 10,
          "batch_attempts": [attempt(64, 12.0, "oom"), attempt(48, 29.5)]}


@pytest.mark.parametrize("value", ["", "  "])
def test_no_deadline_where_unset_or_empty(value) -> None:
    assert sweep.read_deadline({}) is None
    assert sweep.read_deadline({"ATTNSWEEP_DEADLINE": value}) is None


def test_a_deadline_is_seconds_since_the_epoch_and_anything_else_is_refused() -> None:
    assert sweep.read_deadline({"ATTNSWEEP_DEADLINE": "1796160000.5"}) == 1796160000.5
    for bad in ("in ten minutes", "nan", "inf", "-5", "0", "1.796e9", "1_796_160_000", "0x6b0f6a00"):
        with pytest.raises(sweep.SweepError, match=r"ATTNSWEEP_DEADLINE=.* is not a time in seconds since the epoch"):
            sweep.read_deadline({"ATTNSWEEP_DEADLINE": bad})


def test_a_timed_job_expects_its_other_repeats_time_at_the_same_size() -> None:
    others = [{"status": "ok", "batch_size": 48, "duration_s": 80.0},
              {"status": "ok", "batch_size": 48, "duration_s": 84.0},
              {"status": "ok", "batch_size": 32, "duration_s": 300.0},  # another size: not this job's time
              {"status": "oom", "batch_size": 48, "duration_s": 3.0}]
    assert sweep.timed_job_s(48, WARMUP, others, 125) == pytest.approx(84.0 * sweep.REPEAT_SPREAD + sweep.JOB_START_S)


def test_a_first_timed_job_expects_its_warmups_pace_at_its_size() -> None:
    # A warm-up without step times: 4.5 s for the 9 steps after the cold first one: 0.5 s a step; the warm first
    # step at most 10 + 0.2 x 25 s.
    expected = 15.0 + 124 * 0.5 + sweep.JOB_START_S
    assert sweep.timed_job_s(48, WARMUP, [], 125) == pytest.approx(expected)
    # A run of 6 steps warms up with 6: 4.5 s over 5 steps.
    assert sweep.timed_job_s(48, {**WARMUP, "batch_attempts": [attempt(48, 29.5)]}, [], 6) == pytest.approx(
        15.0 + 5 * 0.9 + sweep.JOB_START_S)
    # An eager cell's first step is short: it bounds the warm one.
    eager = {**WARMUP, "first_step_s": 1.0, "batch_attempts": [attempt(48, 5.5)]}
    assert sweep.timed_job_s(48, eager, [], 125) == pytest.approx(1.0 + 124 * 0.5 + sweep.JOB_START_S)


def test_a_first_timed_job_expects_its_warmups_steady_pace_where_it_kept_its_step_times() -> None:
    # The second step's extra work and the third's are left out: the median of steps 3-10 is 0.25 s, stretched.
    times = [25.0, 1.5, 0.6, 0.25, 0.25, 0.26, 0.25, 0.24, 0.25, 0.25]
    steady = {**WARMUP, "step_times_s": times}
    assert sweep.timed_job_s(48, steady, [], 125) == pytest.approx(
        15.0 + 124 * 0.25 * sweep.STEADY_SPREAD + sweep.JOB_START_S)
    # A run of 6 steps warms up with 6: the median of steps 3-6.
    assert sweep.timed_job_s(48, {**WARMUP, "step_times_s": times[:6]}, [], 6) == pytest.approx(
        15.0 + 5 * 0.255 * sweep.STEADY_SPREAD + sweep.JOB_START_S)
    # Without step times from the third on, or at another size than the warm-up's, the attempt's mean pace.
    mean_pace = 15.0 + 124 * 0.5 + sweep.JOB_START_S
    for warmup in ({**WARMUP, "step_times_s": None}, {**WARMUP, "step_times_s": times[:2]},
                   {**steady, "batch_size": 64}):
        assert sweep.timed_job_s(48, warmup, [], 125) == pytest.approx(mean_pace)
    assert sweep.timed_job_s(48, steady, [], 125) < mean_pace


def measured(steps_s: list[float], tail_s: float, loaded_s: float, batch: int = 64) -> dict:
    """A measured record of a cell like the one estimated: its warm-up (10 steps, 30 s cold) spent `tail_s` after
    its first step, and its timed job loaded the first step in `loaded_s`."""
    return {"status": "ok", "batch_size": batch, "step_times_s": steps_s,
            "warmup": {"steps": 10, "first_step_s": 30.0}, "compile": {"first_step_s": loaded_s},
            "batch_attempts": [attempt(batch, 30.0 + tail_s), attempt(batch, 99.0, stage="timed")]}


def test_the_records_of_cells_like_it_take_the_warmups_other_work_off_its_pace() -> None:
    # Steps of 0.2 s: 9 of them are 1.8 s, so the first record's warm-up spent 2.0 s on other work, the second 3.2 s.
    like = [measured([4.0] + [0.2] * 124, 3.8, 4.0), measured([3.0] + [0.2] * 124, 5.0, 6.0, batch=32),
            {"status": "oom", "batch_size": 64, "warmup": {"steps": 10, "first_step_s": 1.0},
             "batch_attempts": [attempt(64, 1.5)], "compile": {"first_step_s": 90.0}}]  # tells nothing
    # WARMUP's 4.5 s after its first step less the least other work (2.0 s): 2.5 s over 9 steps; the first step
    # at most the longest loaded (6.0 s) stretched as cold compiling is.
    expected = 6.0 * sweep.COLD_SPREAD + 124 * 2.5 / 9 + sweep.JOB_START_S
    assert sweep.timed_job_s(48, WARMUP, [], 125, like) == pytest.approx(expected)
    assert sweep.timed_job_s(48, WARMUP, [], 125, like) < sweep.timed_job_s(48, WARMUP, [], 125)
    # Other work longer than this warm-up's whole tail leaves no pace to take off, and a cold first step shorter
    # than the bound stays the bound.
    busy = [measured([1.0] + [0.2] * 124, 9.0, 0.5)]
    assert sweep.timed_job_s(48, {**WARMUP, "first_step_s": 0.5, "batch_attempts": [attempt(48, 5.0)]}, [], 125,
                             busy) == pytest.approx(0.5 + sweep.JOB_START_S)
    # A warm-up that kept its step times goes by its steady pace, whatever the run's records say.
    steady = {**WARMUP, "step_times_s": [25.0, 1.5] + [0.25] * 8}
    assert sweep.timed_job_s(48, steady, [], 125, like) == sweep.timed_job_s(48, steady, [], 125)
    # A cell's own other repeats at the size still come first.
    again = [{"status": "ok", "batch_size": 48, "duration_s": 80.0}]
    assert sweep.timed_job_s(48, WARMUP, again, 125, like) == pytest.approx(80.0 * sweep.REPEAT_SPREAD
                                                                            + sweep.JOB_START_S)


@pytest.mark.parametrize("warmup", [None, {**WARMUP, "status": "oom"}, {**WARMUP, "first_step_s": None},
                                    {**WARMUP, "batch_attempts": [attempt(64, 12.0, "oom")]}])
def test_a_timed_job_with_nothing_to_go_by_expects_nothing(warmup) -> None:
    assert sweep.timed_job_s(48, warmup, [], 125) is None


def test_a_later_repeats_warmup_expects_repeat_1s_attempt_at_its_size_stretched() -> None:
    first = {"status": "ok", "batch_size": 48,
             "batch_attempts": [attempt(64, 90.0, "oom"), attempt(48, 40.0), attempt(48, 120.0, stage="timed")]}
    assert sweep.warmup_job_s(first, []) == pytest.approx(40.0 * sweep.COLD_SPREAD + sweep.JOB_START_S)


def test_a_search_expects_the_longest_attempt_of_the_cells_that_differ_in_the_attention() -> None:
    like = [{"batch_attempts": [attempt(64, 30.0), attempt(64, 95.0, stage="timed")]},
            {"batch_attempts": [attempt(64, 50.0, "oom"), attempt(40, 45.0)]},
            {"batch_attempts": [attempt(64, 2.0, "unsupported")]}]
    assert sweep.warmup_job_s(None, like) == pytest.approx(50.0 * sweep.COLD_SPREAD + sweep.JOB_START_S)
    assert sweep.warmup_job_s(None, []) is None


def test_a_warmup_expects_its_timed_job_too() -> None:
    """Repeat 1's record gives a later repeat's timed job; a search's, the longest of the cells like it; the
    warm-up's own estimate alone where no timed job is known, and nothing where the warm-up's is not."""
    first = {"status": "ok", "batch_size": 48, "duration_s": 100.0, "batch_attempts": [attempt(48, 40.0)]}
    warmup, timed = 40.0 * sweep.COLD_SPREAD + sweep.JOB_START_S, 100.0 * sweep.REPEAT_SPREAD + sweep.JOB_START_S
    assert sweep.warmup_then_timed_s(first, []) == pytest.approx(warmup + timed)
    like = [{"status": "ok", "duration_s": 60.0, "batch_attempts": [attempt(64, 30.0)]},
            {"status": "ok", "duration_s": 90.0, "batch_attempts": [attempt(40, 20.0)]},
            {"status": "oom", "duration_s": 500.0, "batch_attempts": [attempt(64, 5.0, "oom")]}]
    assert sweep.warmup_then_timed_s(None, like) == pytest.approx(
        30.0 * sweep.COLD_SPREAD + 90.0 * sweep.REPEAT_SPREAD + 2 * sweep.JOB_START_S)
    no_timed = [{"status": "oom", "batch_attempts": [attempt(64, 30.0, "oom")]}]
    assert sweep.warmup_then_timed_s(None, no_timed) == pytest.approx(sweep.warmup_job_s(None, no_timed))
    assert sweep.warmup_then_timed_s(None, []) is None


def test_a_cells_records_and_those_of_its_other_attentions(tmp_path: Path) -> None:
    for attn in ("fa2", "sdpa", "naive"):
        folder = tmp_path / "cells" / sweep.cell_path({**CELL, "attn": attn})
        folder.mkdir(parents=True)
        for name in ("cell.json", "repeat-2.json", "notes.json"):
            (folder / name).write_text(json.dumps({"attn": attn}))
    other_mode = tmp_path / "cells" / sweep.cell_path({**CELL, "mode": "eager"})
    other_seq = tmp_path / "cells" / sweep.cell_path({**CELL, "seq_len": 512})
    for folder in (other_mode, other_seq):
        folder.mkdir(parents=True)
        (folder / "cell.json").write_text("{}")
    own = sweep.cell_records(tmp_path, CELL)
    assert [p.name for p in own] == ["cell.json", "repeat-2.json"]
    like = sweep.cell_records(tmp_path, CELL, any_of=["attn"])
    assert len(like) == 6 and other_mode / "cell.json" not in like and other_seq / "cell.json" not in like
    wider = sweep.cell_records(tmp_path, CELL, any_of=["attn", "seq_len"])
    assert len(wider) == 7 and other_seq / "cell.json" in wider and other_mode / "cell.json" not in wider
    assert sweep.like_records(tmp_path, CELL, ["attn"], ["attn", "seq_len"]) == like
    assert set(sweep.like_records(tmp_path, CELL, ["attn"], own=False)) == set(like) - set(own)
    lone = {**CELL, "attn": "flex", "seq_len": 1024}  # no cell differs in the attention only: the wider try answers
    assert sweep.like_records(tmp_path, lone, ["attn"], ["attn", "seq_len"]) == wider
    assert sweep.like_records(tmp_path, {**lone, "mode": "eager"}, ["attn"]) == []
    # A warm-up of a mode nothing of which is measured: the records of every mode and context of its model.
    assert sweep.like_records(tmp_path, {**lone, "mode": "cudagraphs"}, *sweep.WARMUP_LIKE) == sorted(
        like + [other_mode / "cell.json", other_seq / "cell.json"])
    (own[1]).write_text('{"half a rec')  # a record being written, or broken: passed over
    assert sweep.read_records(own) == [{"attn": "fa2"}]
    (own[1]).write_text('{"attn": "fa2", "repeat": 2}')  # written again: read again
    assert sweep.read_records(own) == [{"attn": "fa2"}, {"attn": "fa2", "repeat": 2}]


def check(expected_s: int, deadline: str | None, *again: str, grace: int | None = None,
          part_start: float | None = None) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("ATTNSWEEP_DEADLINE", sweep.PART_START_ENV)}
    if deadline is not None:
        env["ATTNSWEEP_DEADLINE"] = deadline
    if part_start is not None:
        env[sweep.PART_START_ENV] = str(int(part_start))
    option = [] if grace is None else [f"--grace={grace}"]
    return subprocess.run(["bash", str(CHECK), *option, str(expected_s), *again], env=env, capture_output=True,
                          text=True, timeout=60)


def test_the_check_lets_a_job_start_without_a_deadline_or_before_it() -> None:
    for deadline in (None, ""):
        done = check(10**6, deadline)
        assert done.returncode == 0 and done.stdout == ""
    done = check(60, f"{time.time() + 120:.3f}")
    assert done.returncode == 0 and done.stdout == ""


def test_the_check_holds_back_a_job_that_would_end_after_the_deadline() -> None:
    done = check(60, f"{time.time() + 30:.3f}")
    assert done.returncode == 3
    assert done.stdout.startswith(sweep.NOT_STARTED + ": expected to take about 60 s, ")
    left = int(done.stdout.split(", ")[1].split()[0])
    assert 25 <= left <= 30
    past = check(0, str(int(time.time()) - 5))  # nothing known, and the deadline has passed
    assert past.returncode == 3 and "expected to take about 0 s, -" in past.stdout


def test_a_job_first_names_that_no_part_could_hold_starts_at_the_parts_start_only() -> None:
    """With a grace (a warm-up of a cell `first` names), a job expected longer than the whole part, from its start
    to the deadline, starts if it comes up within the grace of the part's start; one that a part could hold (here
    expected 105 s of a 110 s part, 100 s left) is held back, as is every job without a grace or a part's start, or
    past the grace."""
    now = time.time()
    deadline = f"{now + 100:.3f}"
    done = check(300, deadline, grace=120, part_start=now - 10)
    assert done.returncode == 0, done.stdout
    assert done.stdout.startswith("attnsweep: expected 300 s, longer than the whole part (1")
    assert done.stdout.endswith(" s into it: started, as `first` names it\n")
    again = check(60, deadline, "echo", "300", grace=120, part_start=now - 10)  # estimated again at its start
    assert again.returncode == 0 and again.stdout.endswith(
        "started, as `first` names it (estimated again from the records at its start; 60 s when the sweep began)\n")
    for held in (check(105, deadline, grace=120, part_start=now - 10),  # a part could hold it
                 check(300, deadline, grace=0, part_start=now - 10), check(300, deadline, part_start=now - 10),
                 check(300, deadline, grace=120),  # no part's start known
                 check(300, deadline, grace=120, part_start=now - 130)):  # past the grace
        assert held.returncode == 3 and held.stdout.startswith(sweep.NOT_STARTED + ": "), held.stdout


def test_the_first_process_to_read_the_workflow_marks_the_parts_start() -> None:
    environ: dict[str, str] = {}
    before = int(time.time())
    sweep.mark_part_start(environ)
    assert before <= int(environ[sweep.PART_START_ENV]) <= time.time()
    environ[sweep.PART_START_ENV] = "1796160000"
    sweep.mark_part_start(environ)  # a job's process reading the workflow again keeps its sweep's mark
    assert environ[sweep.PART_START_ENV] == "1796160000"


def test_the_checks_command_replaces_the_estimate_either_way(tmp_path: Path) -> None:
    """Where the job gives a command (a warm-up), its answer decides, asked at every start where a deadline is set:
    a shorter one lets start a job the first estimate would hold back, a longer one (the GPU's queue) holds back a
    job the first estimate would let start; no answer leaves the first estimate in force."""
    asked = tmp_path / "asked"
    again = ["bash", "-c", f"echo asked >> {asked}; echo 20"]
    done = check(60, None, *again)  # no deadline: not asked
    assert done.returncode == 0 and done.stdout == "" and not asked.exists()
    done = check(60, f"{time.time() + 120:.3f}", *again)  # fits either way: asked all the same
    assert done.returncode == 0 and asked.read_text() == "asked\n"
    assert done.stdout.startswith("attnsweep: expected 60 s when the sweep began, 20 s from the records now, ")
    done = check(600, f"{time.time() + 120:.3f}", *again)  # held back by the old estimate, not by the new one
    assert done.returncode == 0 and asked.read_text() == "asked\nasked\n"
    assert done.stdout.startswith("attnsweep: expected 600 s when the sweep began, 20 s from the records now, ")
    longer = check(60, f"{time.time() + 120:.3f}", "echo", "300")  # let start by the old estimate, not by the new
    assert longer.returncode == 3
    assert longer.stdout.startswith(sweep.NOT_STARTED + ": expected to take about 300 s, ")
    assert longer.stdout.endswith(" left before ATTNSWEEP_DEADLINE (estimated again from the records at its start; "
                                  "60 s when the sweep began)\n")
    for broken in (["false"], ["echo", "soon"], ["echo"]):  # no answer: the old estimate stands
        done = check(600, f"{time.time() + 120:.3f}", *broken)
        assert done.returncode == 3 and "expected to take about 600 s, " in done.stdout
        assert done.stdout.endswith(" left before ATTNSWEEP_DEADLINE\n")
        assert check(60, f"{time.time() + 120:.3f}", *broken).returncode == 0


def write_record(path: Path, record: dict) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(record))
    return path


def test_a_warmups_estimate_made_again_reads_the_records_there_are_now(tmp_path: Path) -> None:
    """What the check's command prints (workflow/scripts/deadline/expected-warmup.py) is
    sweep.expected_warmup_start_s on the records on disk when it runs: a record written since the sweep began changes
    it, as a warm-up done since does (the GPU's queue)."""
    script = ROOT / "workflow/scripts/deadline/expected-warmup.py"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")])}

    def run_script(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, str(script), *args], env=env, capture_output=True, text=True,
                              timeout=120)

    def printed(*first: Path) -> int:
        done = run_script(str(tmp_path), sweep.cell_path(CELL), "125", *map(str, first))
        assert done.returncode == 0, done.stderr
        return int(done.stdout)

    def expected(first: Path | None = None) -> int:
        return sweep.expected_warmup_start_s(tmp_path, CELL, first, 125)

    assert sweep.expected_warmup_s(tmp_path, CELL, None) == expected() == printed() == 0  # nothing measured
    slow = {"status": "ok", "batch_size": 8, "duration_s": 300.0, "batch_attempts": [attempt(8, 200.0)]}
    write_record(tmp_path / "cells" / sweep.cell_path({**CELL, "mode": "eager", "seq_len": 512}) / "cell.json", slow)
    from_slow = round(sweep.warmup_then_timed_s(None, [slow]))
    assert sweep.expected_warmup_s(tmp_path, CELL, None) == expected() == printed() == from_slow
    # A record of a cell closer to it (another attention only) is made: it is read, the other mode's is not.
    quick = {"status": "ok", "batch_size": 8, "duration_s": 30.0, "batch_attempts": [attempt(8, 10.0)]}
    write_record(tmp_path / "cells" / sweep.cell_path({**CELL, "attn": "sdpa"}) / "cell.json", quick)
    from_quick = round(sweep.warmup_then_timed_s(None, [quick]))
    assert from_quick < from_slow
    assert sweep.expected_warmup_s(tmp_path, CELL, None) == expected() == printed() == from_quick
    # A later repeat's is its repeat 1's record's, given as FIRST; one that cannot be read counts as none.
    first = write_record(tmp_path / "cells" / sweep.cell_path(CELL) / "cell.json", slow)
    assert sweep.expected_warmup_s(tmp_path, CELL, first) == expected(first) == printed(first) == round(
        sweep.warmup_then_timed_s(slow, []))
    gone = tmp_path / "gone.json"
    assert sweep.expected_warmup_s(tmp_path, CELL, gone) == expected(gone) == printed(gone) == printed()
    for bad in ([str(tmp_path), sweep.cell_path(CELL)], [str(tmp_path), sweep.cell_path(CELL), "many"],
                [str(tmp_path), sweep.cell_path(CELL), "125", str(first), "more"]):
        done = run_script(*bad)
        assert done.returncode != 0 and "RESULTS CELL STEPS [FIRST]" in done.stderr


def done_warmup(run: Path, cell: dict, repeat: int, warmup: dict) -> Path:
    """A warm-up done (its warmup.json and cache, as the warm-up job leaves them); returns the record it waits for."""
    folder = run / "warmup" / sweep.cell_path(cell) / f"r{repeat}"
    write_record(folder / "warmup.json", warmup)
    (folder / "cache").mkdir()
    return run / "cells" / sweep.cell_path(cell) / sweep.record_name(repeat)


def test_a_warmup_at_its_start_expects_the_timed_jobs_waiting_for_the_gpu(tmp_path: Path) -> None:
    """The GPU's queue is the timed jobs whose warm-ups are done (each as expected_timed_job_s expects it); a
    warm-up's timed job follows the longer of its warm-up and that queue."""
    run = tmp_path / "results/r"
    assert sweep.timed_queue_s(run, 125) == 0
    quick = {"status": "ok", "batch_size": 8, "duration_s": 30.0, "batch_attempts": [attempt(8, 10.0)]}
    write_record(run / "cells" / sweep.cell_path({**CELL, "attn": "sdpa"}) / "cell.json", quick)
    warmup_s = sweep.warmup_job_s(None, [quick])
    alone = sweep.expected_warmup_start_s(run, CELL, None, 125)
    assert alone == sweep.expected_warmup_s(run, CELL, None) == round(sweep.warmup_then_timed_s(None, [quick]))
    # Two warm-ups done: a later repeat of the sdpa cell (its repeat 1's time again) and a first repeat of flex.
    waiting = [done_warmup(run, {**CELL, "attn": "sdpa"}, 2, {**WARMUP, "batch_size": 8}),
               done_warmup(run, {**CELL, "attn": "flex"}, 1, WARMUP)]
    # and one whose timed job has run since: not in the queue
    write_record(done_warmup(run, {**CELL, "attn": "naive"}, 1, WARMUP), quick)
    each = [sweep.expected_timed_job_s(run, {**CELL, "attn": "sdpa"}, run / "warmup" / sweep.cell_path(
        {**CELL, "attn": "sdpa"}) / "r2/warmup.json", 125),
            sweep.expected_timed_job_s(run, {**CELL, "attn": "flex"}, run / "warmup" / sweep.cell_path(
        {**CELL, "attn": "flex"}) / "r1/warmup.json", 125)]
    assert each[0] == pytest.approx(30.0 * sweep.REPEAT_SPREAD + sweep.JOB_START_S)  # the sdpa cell's repeat 1
    assert each[1] == pytest.approx(sweep.timed_job_s(48, WARMUP, [], 125, [quick]))  # its warm-up's pace
    assert sorted(sweep.waiting_timed_records(run)) == sorted(waiting)
    queue = sweep.timed_queue_s(run, 125)
    assert queue == pytest.approx(sum(each)) and queue > warmup_s
    timed = sweep.warmup_then_timed_s(None, [quick]) - warmup_s
    assert sweep.expected_warmup_start_s(run, CELL, None, 125) == round(queue + timed) > alone
    assert sweep.expected_warmup_s(run, CELL, None) == alone  # the DAG's estimate does not see the queue
    # A warm-up longer than the queue expects itself; one with nothing to go by, the queue.
    slow = {"status": "ok", "batch_size": 8, "duration_s": 30.0, "batch_attempts": [attempt(8, 2000.0)]}
    first = write_record(run / "cells" / sweep.cell_path(CELL) / "cell.json", slow)
    assert sweep.expected_warmup_start_s(run, CELL, first, 125) == round(sweep.warmup_then_timed_s(slow, []))
    other_model = {**CELL, "model": "medium"}
    assert sweep.expected_warmup_start_s(run, other_model, None, 125) == round(queue)
    # Warm-ups running now (their cache made, no warmup.json yet) queue their timed jobs too, each expected as a
    # warm-up expects its own: a later repeat's from its repeat 1's record, a first repeat's from the cells like it.
    for attn, repeat in (("sdpa_flash", 2), ("sdpa_cudnn", 1), ("sdpa", 3)):
        (run / "warmup" / sweep.cell_path({**CELL, "attn": attn}) / f"r{repeat}/cache").mkdir(parents=True)
    write_record(run / "cells" / sweep.cell_path({**CELL, "attn": "sdpa_flash"}) / "cell.json", slow)
    running = [slow["duration_s"] * sweep.REPEAT_SPREAD + sweep.JOB_START_S, timed, timed]
    assert running[1] == pytest.approx(30.0 * sweep.REPEAT_SPREAD + sweep.JOB_START_S)  # quick's, the like cell
    assert sweep.timed_queue_s(run, 125) == pytest.approx(queue + sum(running))
    assert sweep.waiting_timed_records(run) == sorted(waiting)  # the running ones are not waiting


def test_the_records_waiting_for_their_timed_job_are_those_of_the_warm_ups_done_since(tmp_path: Path) -> None:
    """A warm-up done (warmup.json and its cache) waits for its timed job until a record of its repeat is written
    after it; one without its cache, or the record already written after it, does not. A warm-up with its cache and
    no warmup.json yet is running."""
    run = tmp_path / "results/r"

    def cell(attn: str) -> str:
        return sweep.cell_path({**CELL, "attn": attn})

    def warmup(attn: str, repeat: int, cache: bool = True, done: bool = True) -> None:
        folder = run / "warmup" / cell(attn) / f"r{repeat}"
        folder.mkdir(parents=True)
        if done:
            (folder / "warmup.json").write_text("{}")
            os.utime(folder / "warmup.json", (1000, 1000))
        if cache:
            (folder / "cache").mkdir()

    def record(attn: str, name: str, mtime: float) -> None:
        path = run / "cells" / cell(attn) / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("{}")
        os.utime(path, (mtime, mtime))

    warmup("sdpa", 1)  # nothing measured yet
    warmup("sdpa", 2)
    record("sdpa", "repeat-2.json", 2000)  # measured after its warm-up
    warmup("fa2", 1)
    record("fa2", "cell.json", 500)  # a record older than the warm-up: to be measured again
    warmup("flex", 1, cache=False)  # not done: its cache is gone
    warmup("flex", 2, done=False)  # running
    warmup("naive", 3, cache=False, done=False)  # held back at its start: nothing made yet
    (run / "warmup" / cell("naive") / "rx").mkdir(parents=True)  # not a repeat's folder
    (run / "warmup" / cell("naive") / "rx/warmup.json").write_text("{}")
    (run / "warmup" / cell("naive") / "rx/cache").mkdir()
    # Folders inside a cache are not warm-ups.
    nested = run / "warmup" / cell("fa2") / "r1/cache" / cell("sdpa")
    (nested / "r4/cache").mkdir(parents=True)
    (nested / "r4/warmup.json").write_text("{}")
    (nested / "r5/cache").mkdir(parents=True)
    assert sweep.waiting_timed_records(run) == [run / "cells" / cell("fa2") / "cell.json",
                                               run / "cells" / cell("sdpa") / "cell.json"]
    assert sweep.running_warmups(run) == [(Path(cell("flex")), 2)]
    assert sweep.waiting_timed_records(tmp_path / "results/none") == []
    assert sweep.running_warmups(tmp_path / "results/none") == []
