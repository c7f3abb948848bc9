"""`attnsweep status`: a results folder's cells, their environments, and what Snakemake would rerun.

One tiny sweep on the CPU (module fixture, in a temporary copy of the workflow with its own package source, run
with an overlay config as a user would run --configfile); each test edits a copy of it.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest
import torch

from attnsweep import status
from attnsweep.codestamp import source_hash
from attnsweep.cli import main as cli_main
from test_faults import HAS_CUDA, TINY, TINY_CELLS, snakemake
from workflow_copy import copy_workflow

OVERLAY = "config/tiny.yaml"
# On top of the shipped config/config.yaml, whose study grid also lists adamw8bit.
TINY_OVERLAY = {**TINY, "grid": {**TINY["grid"], "optimizer": ["adamw"]}}
CELLS = [Path(p).relative_to("results/tiny") for p in TINY_CELLS]  # as status names them: under the results folder


@pytest.fixture(scope="module")
def swept(tmp_path_factory: pytest.TempPathFactory) -> Path:
    repo = copy_workflow(tmp_path_factory.mktemp("status") / "repo", TINY_OVERLAY, with_source=True,
                         name="tiny.yaml")
    snakemake(repo, "--configfile", OVERLAY)
    return repo


@pytest.fixture
def repo(swept: Path, tmp_path: Path) -> Path:
    """A copy of the swept workflow for one test to edit (copytree keeps mtimes, Snakemake's metadata too)."""
    return Path(shutil.copytree(swept, tmp_path / "repo", symlinks=True))


def status_cli(repo: Path, capsys, *args: str) -> str:
    rc = cli_main(["status", str(repo / "results" / "tiny"), *args])
    out = capsys.readouterr().out
    assert rc == 0, out
    return out


@pytest.mark.slow
def test_complete_run(swept: Path, capsys) -> None:
    out = status_cli(swept, capsys, "--configfile", str(swept / OVERLAY))
    assert "## Cells: 3 valid, 0 invalid" in out
    for cell in CELLS:
        assert re.search(rf"^\| {re.escape(cell.as_posix())}\s+\| ok\s+\|", out, re.M), out
    # one environment, this machine's, with the code that ran
    env_rows = [line for line in out.splitlines() if line.startswith("| E")]
    assert len(env_rows) == 1 and "| cpu " in env_rows[0] and torch.__version__ in env_rows[0]
    assert "- summary.csv: 3 rows, each traced to its cell file" in out
    assert "recorded code files changed since: none" in out
    for line in ("- up to date: 3", "- missing: 0", "- stale: 0", "- summary.csv: up to date"):
        assert line in out, out


@pytest.mark.slow
def test_missing_stale_invalid_and_misplaced_cells(repo: Path) -> None:
    results = repo / "results" / "tiny"
    deleted, *kept = CELLS
    (results / deleted).unlink()
    with open(repo / "src" / "attnsweep" / "model.py", "a") as f:
        f.write("# an edit: every cell is stale\n")
    # A cell copied into a folder of a context the grid does not have, and a file that is not a record.
    misplaced = Path(str(kept[0]).replace("seq_len~32", "seq_len~128"))
    (results / misplaced).parent.mkdir(parents=True)
    shutil.copy2(results / kept[0], results / misplaced)
    broken = Path("cells/broken/cell.json")
    (results / broken).parent.mkdir()
    (results / broken).write_text('{"schema_version": 1, "status": "o')

    st = status.collect(results, repo, [str(repo / OVERLAY)])

    assert st.plan is not None, st.plan_note
    assert st.plan.missing == [deleted]
    assert st.plan.stale == {c: "code stamp changes" for c in kept}
    assert "the cell code stamp would become cells-" in st.plan.stamp_change
    assert st.plan.current == [] and st.plan.summary_pending
    assert st.outside_grid == [misplaced]
    assert list(st.invalid) == [broken] and "not JSON" in st.invalid[broken]
    moved = next(c for c in st.cells if c.path == misplaced)
    assert moved.notes == ["folder says seq_len~128, the record says seq_len=32"]
    assert any("recorded code files changed since: src/attnsweep/model.py" in line for line in st.code_changes)
    assert f"row without its cell file: {deleted.as_posix()}" in st.summary_check
    text = status.render(st)
    for line in ("## Cells: 3 valid, 1 invalid", "- missing: 1", f"    - {deleted.as_posix()}", "- stale: 2",
                 "- not in this config's grid (ignored by the aggregation): 1", "## Provenance problems"):
        assert line in text, text


@pytest.mark.slow
def test_a_record_of_other_code_is_stale_with_its_code_named(repo: Path) -> None:
    """A record left by a part that ran other code (the stamp of this code is there already): measured again, and
    status says why."""
    results = repo / "results" / "tiny"
    record = json.loads((results / CELLS[0]).read_text())
    record["env"]["code"]["source_sha256"] = "0" * 64
    (results / CELLS[0]).write_text(json.dumps(record))
    st = status.collect(results, repo, [str(repo / OVERLAY)])
    assert st.plan is not None, st.plan_note
    assert st.plan.stale == {CELLS[0]: f"a record of other code (its code 000000000000, now {source_hash()[:12]})"}
    assert sorted(st.plan.current) == sorted(CELLS[1:]) and st.plan.missing == []


@pytest.mark.slow
def test_a_record_of_other_settings_is_stale_with_the_setting_named(repo: Path) -> None:
    results = repo / "results" / "tiny"
    record = json.loads((results / CELLS[0]).read_text())
    steps = record["cell"]["steps"]
    record["cell"]["steps"] = steps + 1
    (results / CELLS[0]).write_text(json.dumps(record))
    st = status.collect(results, repo, [str(repo / OVERLAY)])
    assert st.plan is not None, st.plan_note
    why = f"a record of other cell settings (measured with steps {steps + 1}, now {steps})"
    assert st.plan.stale == {CELLS[0]: why}


@pytest.mark.slow
def test_a_current_record_whose_job_runs_anyway_says_snakemakes_reason(repo: Path) -> None:
    """Every record's job has a rerun marker as input, so a marker is planned whenever the job runs, also for a record
    of this code and settings (e.g. one Snakemake saw left incomplete): then its reason is Snakemake's, not "other
    settings". Rows as `snakemake --summary` gives them."""
    results = repo / "results" / "tiny"
    record = f"results/tiny/{CELLS[0].as_posix()}"
    marker = record.replace("/cells/", "/.rerun/", 1).removesuffix(".json") + ".txt"
    rows = [[marker, "-", "rerun", "-", "missing", "update pending"],
            [record, "-", "cell", "-", "incomplete", "update pending"]]
    plan, _ = status.plan_cells(results, repo, rows)
    assert plan.stale == {CELLS[0]: "Snakemake: incomplete"}


@pytest.mark.slow
def test_repeats_are_planned_and_traced_to_their_cells_row(repo: Path) -> None:
    results = repo / "results" / "tiny"
    first, *others = CELLS
    shutil.copy2(results / first, (results / first).with_name("repeat-2.json"))  # one repeat measured, two not
    st = status.collect(results, repo, [str(repo / OVERLAY)], ["repeats=2"])
    assert st.plan is not None, st.plan_note
    repeat = first.with_name("repeat-2.json")
    assert repeat in st.plan.current and st.outside_grid == []
    assert sorted(st.plan.missing) == sorted(c.with_name("repeat-2.json") for c in others)
    assert not any("without a row" in line for line in st.summary_check), st.summary_check


@pytest.mark.slow
@pytest.mark.skipif(HAS_CUDA, reason="needs a machine without a CUDA GPU")
def test_gpu_run_on_a_machine_without_its_gpu(swept: Path, capsys) -> None:
    """The cells are still listed; missing/stale is reported as not determined, with Snakemake's reason."""
    out = status_cli(swept, capsys, "--configfile", str(swept / OVERLAY), "--config", "device=cuda")
    assert "## Cells: 3 valid, 0 invalid" in out
    assert "Not determined: Snakemake could not plan this workflow here" in out
    assert "device: cuda, but no GPU is visible" in out
    assert "A GPU run is planned on a machine with its GPU" in out
    assert "recorded code files changed since: none" in out  # the stamp check needs no Snakemake


@pytest.mark.slow
def test_config_of_another_run_is_not_taken_for_this_one(swept: Path, capsys) -> None:
    """Without the overlay, the shipped config plans another folder: said, not reported as 3 cells outside it."""
    out = status_cli(swept, capsys)
    assert "Not determined: this config's cells go to results/" in out
    assert "pass the --configfile and --config the run was made with" in out


def test_not_a_results_folder(tmp_path: Path, capsys) -> None:
    assert cli_main(["status", str(tmp_path / "nowhere")]) == 2
    assert "is not a folder" in capsys.readouterr().err
    (tmp_path / "results" / "x").mkdir(parents=True)
    assert cli_main(["status", str(tmp_path / "results" / "x")]) == 2
    assert "no Snakefile" in capsys.readouterr().err


def test_cell_listing_needs_no_snakemake(tmp_path: Path) -> None:
    """Reading and grouping cells works on any folder (e.g. one copied from another machine)."""
    template = json.loads((Path(__file__).parent / "data" / "cell_ok.json").read_text())
    results = tmp_path / "results" / "fixture"
    for i, (gpu, described, cpu) in enumerate([("NVIDIA H100 80GB HBM3", "abc1234", "CPU A"),
                                               ("NVIDIA H100 80GB HBM3", "def5678-dirty", "CPU B"),
                                               ("NVIDIA A100-SXM4-80GB", "abc1234", None)]):
        code = {**template["env"]["code"], "git_describe": described}
        record = {**template, "env": {**template["env"], "gpu_name": gpu, "code": code, "cpu_model": cpu}}
        (results / "cells" / f"c{i}").mkdir(parents=True)
        (results / "cells" / f"c{i}" / "cell.json").write_text(json.dumps(record))
    cells, invalid = status.read_cells(results)
    envs = status.group_environments(cells)
    assert not invalid and [c.env for c in cells] == ["E1", "E1", "E2"]
    assert [(e["device"], e["cells"]) for e in envs] == [("NVIDIA H100 80GB HBM3", 2), ("NVIDIA A100-SXM4-80GB", 1)]
    # Two checkouts of one code hash (one with results unpacked into it) are one environment, both named.
    assert envs[0]["git describe"] == "abc1234, def5678-dirty"
    # Two hosts' CPUs under one environment, both named; a record from before the CPU was recorded says none.
    assert envs[0]["host CPU"] == "CPU A, CPU B" and envs[1]["host CPU"] == "none"
    assert all(c.notes == [] for c in cells)  # run 'fixture' in results/fixture


def test_cells_are_listed_with_contexts_in_numeric_order(tmp_path: Path) -> None:
    template = (Path(__file__).parent / "data" / "cell_ok.json").read_text()
    results = tmp_path / "results" / "fixture"
    for seq_len in (512, 64, 1024):
        folder = results / "cells" / "model~tiny" / f"seq_len~{seq_len}"
        folder.mkdir(parents=True)
        (folder / "cell.json").write_text(template)
    cells, _ = status.read_cells(results)
    assert [c.path.parts[2] for c in cells] == ["seq_len~64", "seq_len~512", "seq_len~1024"]


def test_the_environments_name_the_kernel_packages_their_cells_ran(tmp_path: Path) -> None:
    """flash-attn-4's version is no part of an environment's key (only fa4, fa4_graphbreak and sdpa_fa4 run it):
    the environments table names it, with the implementations that ran it, beside the environment of their cells."""
    template = json.loads((Path(__file__).parent / "data" / "cell_ok.json").read_text())
    results = tmp_path / "results" / "fixture"
    for i, attn in enumerate(("sdpa", "sdpa_fa4", "fa4", "fa4")):
        versions = {**template["env"]["versions"], "flash-attn-4": "4.0.0b18"}
        env = {**template["env"], "versions": versions}
        record = {**template, "cell": {**template["cell"], "attn": attn}, "env": env}
        if i == 3:
            record["status"] = "unsupported"  # ran nothing: no kernel package
        (results / "cells" / f"c{i}").mkdir(parents=True)
        (results / "cells" / f"c{i}" / "cell.json").write_text(json.dumps(record))
    cells, _ = status.read_cells(results)
    (env,) = status.group_environments(cells)
    assert env["cells"] == 4 and env["kernel packages"] == "flash-attn-4 4.0.0b18 (fa4, sdpa_fa4)"
    # A folder none of whose cells ran one has no such column.
    (plain,) = status.group_environments(cells[:1])
    assert "kernel packages" not in plain
