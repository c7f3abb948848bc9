"""Aggregation, tables and figures from hand-made cell records (tests/data), without running a cell."""

from __future__ import annotations

import copy
import json
import math
import os
from pathlib import Path

import pandas as pd
import pytest

from attnsweep import sweep
from attnsweep.report import atomic_output
from attnsweep.report.compare import comparison_figure, comparison_markdown
from attnsweep.report.aggregate import (
    MODE_ORDER, gpu_busy, kernel_ns_per_token, read_summary, summarize, table_names, write_summary,
)
from attnsweep.report.figures import FIGURES, figure_names, write_figures
from attnsweep.report.headline import fastest, render_headline
from attnsweep.report.report_path import report_path_problem, snakemake_command
from attnsweep.report.tables import all_markdown, render_tables, write_tables
from attnsweep.vocabulary import MODES

DATA = Path(__file__).parent / "data"
TEMPLATES = {s: json.loads((DATA / f"cell_{s}.json").read_text()) for s in ("ok", "oom", "unsupported")}

# tokens/s of the fixture grid (model small, compiled unless said otherwise); None = OOM.
TPS = {
    ("compiled", 1024): {"naive": 50_000.0, "sdpa": 100_000.0, "sdpa_flash": 98_000.0, "fa2": 101_000.0},
    ("compiled", 2048): {"naive": None, "sdpa": 80_000.0, "sdpa_flash": 80_000.0, "fa2": 92_000.0},
    ("eager", 1024): {"naive": 40_000.0, "sdpa": 80_000.0, "sdpa_flash": 79_000.0, "fa2": 84_000.0},
}


def make_cell(tmp: Path, status: str = "ok", **cell) -> Path:
    """One record from the templates with the given cell fields, written under tmp like the workflow does."""
    rec = copy.deepcopy(TEMPLATES[status])
    tps = cell.pop("tokens_per_sec", None)
    rec["cell"].update(cell)
    if status == "ok" and tps is not None:
        rec["tokens_per_sec"] = tps
        rec["batch_size"] = 8 if rec["cell"]["attn"] == "naive" else 16
    c = rec["cell"]
    path = tmp / "cells" / "/".join(f"{k}~{c[k]}" for k in ("model", "seq_len", "attn", "mode")) / "cell.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(rec))
    return path


def make_grid(tmp: Path) -> list[Path]:
    paths = []
    for (mode, seq_len), impls in TPS.items():
        for attn, tps in impls.items():
            status = "ok" if tps is not None else "oom"
            paths.append(make_cell(tmp, status, attn=attn, mode=mode, seq_len=seq_len, tokens_per_sec=tps))
        paths.append(make_cell(tmp, "unsupported", attn="fa4", mode=mode, seq_len=seq_len))
    return paths


@pytest.fixture
def grid(tmp_path: Path) -> list[Path]:
    return make_grid(tmp_path)


def row(df: pd.DataFrame, attn: str, seq_len: int = 1024, mode: str = "compiled") -> pd.Series:
    sel = df[(df["attn"] == attn) & (df["seq_len"] == seq_len) & (df["mode"] == mode)]
    assert len(sel) == 1
    return sel.iloc[0]


def test_summary_one_row_per_cell_with_flattened_fields(grid: list[Path], tmp_path: Path) -> None:
    out = tmp_path / "summary.csv"
    write_summary(grid, out)
    df = read_summary(out)
    assert len(df) == len(grid)
    assert set(df["cell_path"]) == {p.as_posix() for p in grid}
    # json_normalize flattening: nested fields become dotted columns; lists are JSON text.
    for col in ("tokens_per_sec_stats.median", "env.gpu_name", "env.versions.flash-attn", "compile.graph_breaks",
                "mfu.value", "loss.end", "cell.steps", "batch_attempts"):
        assert col in df.columns, col
    assert json.loads(row(df, "fa2")["batch_attempts"])[0]["outcome"] == "ok"
    # rows: compiled before eager, context ascending, naive first
    assert list(df["mode"].unique()) == ["compiled", "eager"]
    first = df[(df["mode"] == "compiled") & (df["seq_len"] == 1024)]
    assert first["attn"].iloc[0] == "naive"


def test_speedups_and_headline(grid: list[Path]) -> None:
    df = summarize(grid)
    fa2 = row(df, "fa2")
    assert fa2["speedup_vs_naive"] == pytest.approx(101_000 / 50_000)
    assert fa2["diff_vs_sdpa_tok_s"] == pytest.approx(1_000)
    assert fa2["diff_vs_sdpa_pct"] == pytest.approx(1.0)
    assert fa2["diff_vs_sdpa_flash_tok_s"] == pytest.approx(3_000)
    assert fa2["diff_vs_sdpa_flash_pct"] == pytest.approx(100 * (101 / 98 - 1))
    # The study's convention: the same difference over FA2's own tokens/s.
    assert fa2["diff_vs_sdpa_flash_pct_of_self"] == pytest.approx(100 * 3_000 / 101_000)
    assert fa2["compiled_over_eager"] == pytest.approx(101 / 84)
    assert math.isnan(row(df, "fa2", mode="eager")["compiled_over_eager"])
    # baseline OOM at 2048: no speedup there, but the headline difference still exists
    assert math.isnan(row(df, "fa2", 2048)["speedup_vs_naive"])
    assert row(df, "fa2", 2048)["diff_vs_sdpa_pct"] == pytest.approx(15.0)
    assert math.isnan(row(df, "fa4")["speedup_vs_naive"])


def test_mixed_environments_refused_naming_files(grid: list[Path], tmp_path: Path) -> None:
    odd = json.loads(grid[0].read_text())
    odd["env"]["gpu_name"] = "NVIDIA A100-SXM4-80GB"
    odd["env"]["torch"] = "2.8.0+cu128"
    grid[0].write_text(json.dumps(odd))
    with pytest.raises(ValueError) as e:
        summarize(grid)
    msg = str(e.value)
    assert "gpu, torch" in msg and "allow_mixed_env" in msg
    assert grid[0].as_posix() in msg and grid[1].as_posix() in msg


def test_mixed_environments_allowed_are_grouped(grid: list[Path], tmp_path: Path) -> None:
    extra = [make_cell(tmp_path / "a100", attn=a, seq_len=1024, mode="compiled", tokens_per_sec=t)
             for a, t in (("naive", 30_000.0), ("fa2", 60_000.0))]
    for p in extra:
        rec = json.loads(p.read_text())
        rec["env"]["gpu_name"] = "NVIDIA A100-SXM4-80GB"
        p.write_text(json.dumps(rec))
    df = summarize(grid + extra, allow_mixed_env=True)
    assert df["env_id"].nunique() == 2
    # comparisons stay within one environment
    a100 = df[df["env_id"].str.startswith("NVIDIA A100")]
    assert row(a100, "fa2")["speedup_vs_naive"] == pytest.approx(2.0)
    out = tmp_path / "summary.csv"
    df.to_csv(out, index=False)
    tables = {n: tmp_path / f"{n}.md" for n in ("compiled", "eager", "all")}
    write_tables(out, tables)
    text = tables["compiled"].read_text()
    assert text.count("## Environment: ") == 2 and "NVIDIA A100-SXM4-80GB" in text


def with_fa4(path: Path, version: str | None) -> Path:
    """The record at `path`, as measured with flash-attn-4 `version` installed."""
    rec = json.loads(path.read_text())
    rec["env"]["versions"]["flash-attn-4"] = version
    path.write_text(json.dumps(rec))
    return path


def test_a_kernel_packages_versions_set_apart_only_the_cells_that_run_it(grid: list[Path], tmp_path: Path) -> None:
    """flash-attn-4's version is in the environment of the fa4 family's cells alone (vocabulary.KERNEL_PACKAGES):
    two of them that ran two versions are refused like two environments, by name, and allowed with allow_mixed_env;
    other implementations' records, which note it where it is installed, and cells that did not run it are not."""
    from attnsweep.report.aggregate import environment_conflict

    fa4 = [with_fa4(make_cell(tmp_path / v, attn=a, seq_len=4096, mode="compiled", tokens_per_sec=t), v)
           for a, v, t in (("fa4", "4.0.0b18", 110_000.0), ("sdpa_fa4", "4.0.0b36", 105_000.0))]
    with_fa4(grid[1], "4.0.0b36")  # sdpa, measured where it was installed
    assert len(summarize(grid + fa4[:1])) == len(grid) + 1
    with pytest.raises(ValueError) as e:
        summarize(grid + fa4)
    msg = str(e.value)
    assert "cells ran 2 versions of flash-attn-4" in msg and "allow_mixed_env" in msg
    assert f"flash-attn-4 4.0.0b18 (1 cells):\n    {fa4[0].as_posix()}" in msg and fa4[1].as_posix() in msg
    assert grid[1].as_posix() not in msg
    assert len(summarize(grid + fa4, allow_mixed_env=True)) == len(grid) + 2

    # A repeat that ran another version than its first record; an unsupported one ran none.
    again = with_fa4(add_repeat(fa4[0], 2, 111_000.0), "4.0.0b36")
    with pytest.raises(ValueError, match=r"repeat-2.json: flash-attn-4 4.0.0b36; its cell.json: 4.0.0b18"):
        summarize(grid + fa4[:1], repeats=[again])
    rec = json.loads(again.read_text())
    rec.update(status="unsupported", reason="flash_attn.cute did not import", tokens_per_sec=None)
    again.write_text(json.dumps(rec))
    assert row(summarize(grid + fa4[:1], repeats=[again]), "fa4", 4096)["repeats"] == 1

    # Resuming: a kept cell of the family against the version installed here, where both have one.
    here = {**sweep.environment_of(json.loads(fa4[0].read_text())), "flash-attn-4": "4.0.0b36"}
    assert environment_conflict([fa4[0]], here) == (
        "flash-attn-4 4.0.0b18 (1 of 1 cells) there, 4.0.0b36 here")
    assert environment_conflict([fa4[0]], {**here, "flash-attn-4": None}) is None  # not measured here anyway
    assert environment_conflict([grid[1], fa4[1]], here) is None


def test_truncated_cell_is_refused_by_name(grid: list[Path]) -> None:
    grid[3].write_text(grid[3].read_text()[:100])
    with pytest.raises(ValueError, match=str(grid[3])):
        summarize(grid)


def markdown_rows(text: str) -> list[list[str]]:
    """The body rows of the first markdown table in text, split into cells."""
    lines = [ln for ln in text.splitlines() if ln.startswith("|")]
    return [[c.strip() for c in ln.strip("|").split("|")] for ln in lines[2:]]


def markdown_header(text: str) -> list[str]:
    line = next(ln for ln in text.splitlines() if ln.startswith("|"))
    return [c.strip() for c in line.strip("|").split("|")]


def test_tables_in_the_study_layout(grid: list[Path], tmp_path: Path) -> None:
    out = tmp_path / "summary.csv"
    write_summary(grid, out)
    tables = {n: tmp_path / f"{n}.md" for n in ("compiled", "eager", "all")}
    write_tables(out, tables)
    compiled = tables["compiled"].read_text()
    header = markdown_header(compiled)
    assert header[:4] == ["model", "context", "naive batch", "naive tok/s"]
    assert header[4:7] == ["sdpa batch", "sdpa tok/s", "sdpa speedup"]
    assert header[-6:] == ["fa2 − sdpa tok/s", "fa2 − sdpa %", "fa2 − sdpa % of fa2",
                           "fa2 − sdpa_flash tok/s", "fa2 − sdpa_flash %", "fa2 − sdpa_flash % of fa2"]
    rows = {int(r[1]): dict(zip(header, r)) for r in markdown_rows(compiled)}
    assert rows[1024]["naive tok/s"] == "50,000" and rows[1024]["fa2 speedup"] == "2.02×"
    assert rows[1024]["fa2 − sdpa %"] == "+1.0%" and rows[1024]["fa2 − sdpa tok/s"] == "+1,000"
    assert rows[1024]["fa2 − sdpa_flash % of fa2"] == "+3.0%"  # 3,000 of fa2's 101,000 (the study's convention)
    assert "the 2023 study's Percent convention" in compiled
    # the baseline ran out of memory: OOM, a dash for its batch and for every speedup over it
    assert rows[2048]["naive tok/s"] == "OOM" and rows[2048]["naive batch"] == "–"
    assert rows[2048]["fa2 speedup"] == "–" and rows[2048]["fa2 − sdpa %"] == "+15.0%"
    assert "Environment: NVIDIA H100 80GB HBM3" in compiled
    eager = tables["eager"].read_text()
    assert [r[1] for r in markdown_rows(eager)] == ["1024"]
    wide = tables["all"].read_text()
    assert "fa4" in markdown_header(wide) and "unsupported" in wide
    assert "101,000 (b16, 2.02×)" in wide
    assert "## compiled over eager" in wide
    # the median of the per-step tokens/s with its spread (the fixture's stats: median 100,050, std 250 of 100,100)
    steady = wide.split("## compiled: median of the per-step tokens/s")[1].split("## eager")[0]
    assert "100,050 (±0.2%)" in steady and "unsupported" in steady and "OOM" in steady


def test_setup_that_varies_by_model_becomes_a_column(tmp_path: Path) -> None:
    paths = [make_cell(tmp_path, attn=a, model="small", tokens_per_sec=1.0) for a in ("naive", "fa2")]
    paths += [make_cell(tmp_path, attn=a, model="large", optimizer="adamw8bit", kv_heads=20, tokens_per_sec=1.0)
              for a in ("naive", "fa2")]
    # same optimizer within each model: named in the setup line, not as a column
    out = tmp_path / "summary.csv"
    write_summary(paths, out)
    tables = {n: tmp_path / f"{n}.md" for n in ("compiled", "eager", "all")}
    write_tables(out, tables)
    text = tables["compiled"].read_text()
    assert "optimizer adamw (small), adamw8bit (large)" in text
    assert "optimizer" not in markdown_header(text)
    paths.append(make_cell(tmp_path / "b", attn="fa2", model="small", optimizer="adamw8bit", tokens_per_sec=1.0))
    write_summary(paths, out)
    write_tables(out, tables)
    assert markdown_header(tables["compiled"].read_text())[:3] == ["model", "optimizer", "context"]


def test_figures_are_written(grid: list[Path], tmp_path: Path) -> None:
    out = tmp_path / "summary.csv"
    write_summary(grid, out)
    names = ("fa2_vs_sdpa_compiled", "fa2_vs_sdpa_eager", "speedup", "throughput", "memory")
    figures = {n: tmp_path / f"{n}.png" for n in names}
    write_figures(out, figures)
    for path in figures.values():
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size > 5_000


def test_figures_without_gpu_data(tmp_path: Path) -> None:
    """CPU demo: no fa2 and no peak memory; the figures say so instead of failing."""
    paths = [make_cell(tmp_path, attn=a, tokens_per_sec=1000.0) for a in ("naive", "sdpa")]
    for p in paths:
        rec = json.loads(p.read_text())
        rec["peak_memory_bytes"] = None
        p.write_text(json.dumps(rec))
    out = tmp_path / "summary.csv"
    write_summary(paths, out)
    names = ("fa2_vs_sdpa_compiled", "fa2_vs_sdpa_eager", "speedup", "throughput", "memory")
    figures = {n: tmp_path / f"{n}.png" for n in names}
    write_figures(out, figures)
    assert all(p.stat().st_size > 1_000 for p in figures.values())


CPU_DEMO_GRID = {"attn": ["naive", "sdpa", "sdpa_math", "flex"], "mode": ["eager", "compiled"]}


def test_only_figures_with_data_are_made() -> None:
    assert figure_names(CPU_DEMO_GRID, "cpu") == ["speedup", "throughput"]
    study = {"attn": ["naive", "sdpa", "sdpa_flash", "fa2", "flex"], "mode": list(MODES)}
    assert figure_names(study, "cuda") == list(FIGURES)
    assert figure_names({**study, "mode": ["compiled", "eager"]}, "cuda")[:2] == [
        "fa2_vs_sdpa_compiled", "fa2_vs_sdpa_eager"]
    assert figure_names({"attn": ["fa2", "sdpa_flash"], "mode": ["compiled"]}, "cuda") == [
        "fa2_vs_sdpa_compiled", "throughput", "memory"]
    assert figure_names({"attn": ["sdpa"], "mode": ["eager"]}, "cpu") == ["throughput"]


def cell_with_spread(tmp_path: Path, attn: str, seq_len: int, tps: float, low: float, high: float) -> Path:
    """An eager cell of `tps` tokens/s whose window spread is low*tps .. high*tps."""
    path = make_cell(tmp_path, attn=attn, seq_len=seq_len, mode="eager", tokens_per_sec=tps)
    rec = json.loads(path.read_text())
    rec["tokens_per_sec_stats"].update(min=low * tps, max=high * tps)
    path.write_text(json.dumps(rec))
    return path


def test_figures_show_scale_spread_and_what_did_not_run(tmp_path: Path) -> None:
    """Throughput from zero with the window's spread as error bars; speedup with its line at 1; an implementation
    unsupported everywhere is named in the legend, not left out."""
    paths = []
    for seq_len in (64, 128):
        for attn, tps in (("naive", 1000.0), ("sdpa", 1250.0)):
            paths.append(cell_with_spread(tmp_path, attn, seq_len, tps, 0.9, 1.05))
        paths.append(make_cell(tmp_path, "unsupported", attn="flex", seq_len=seq_len, mode="eager"))
    out = tmp_path / "summary.csv"
    write_summary(paths, out)
    figures = write_figures(out, {n: tmp_path / f"{n}.png" for n in ("throughput", "speedup")})
    assert sorted(p.name for p in tmp_path.glob("*.png")) == ["speedup.png", "throughput.png"]

    (throughput,) = figures["throughput"].axes
    assert throughput.get_ylim()[0] == 0
    legend = [t.get_text() for t in throughput.get_legend().get_texts()]
    assert "flex: unsupported" in legend and "sdpa" in legend
    bars = [c for c in throughput.containers if c.has_yerr]
    assert len(bars) == 2  # naive and sdpa, each with its spread
    caps = bars[1].lines[1]  # (lower caps, upper caps) of the sdpa line
    low, high = caps[0].get_ydata(), caps[1].get_ydata()
    assert list(low) == pytest.approx([0.9 * 1250] * 2) and list(high) == pytest.approx([1.05 * 1250] * 2)

    (speedup,) = figures["speedup"].axes
    assert any(list(line.get_ydata()) == [1.0, 1.0] for line in speedup.get_lines())
    assert "flex: unsupported" in [t.get_text() for t in speedup.get_legend().get_texts()]


def test_a_panel_without_any_value_is_kept_and_says_why(tmp_path: Path) -> None:
    """GPT-2 medium without its naive baseline has no speedup: its panel stays, naming what it holds, instead of
    the figure leaving the model out without a word."""
    paths = [make_cell(tmp_path, attn=attn, seq_len=64, tokens_per_sec=tps) for attn, tps in (("naive", 1e3),
                                                                                             ("sdpa", 2e3))]
    paths.append(make_cell(tmp_path, attn="sdpa", seq_len=64, tokens_per_sec=500.0, model="medium"))
    paths.append(make_cell(tmp_path, attn="sdpa", seq_len=64, tokens_per_sec=400.0, model="medium", mode="eager"))
    out = tmp_path / "summary.csv"
    write_summary(paths, out)
    figures = write_figures(out, {n: tmp_path / f"{n}.png" for n in ("throughput", "speedup")})
    throughput = figures["throughput"].axes
    assert len(throughput) == 4
    assert [t.get_text() for t in throughput[2].texts] == ["small, eager: not in this run's grid"]
    # No speedup in eager mode at all (no eager baseline): one line below the panels, not a row of empty ones.
    small, medium = figures["speedup"].axes
    assert small.get_lines() and not medium.get_lines()
    assert [t.get_text() for t in medium.texts] == ["no data for medium, compiled\nsdpa: ok, none computable"]
    title, note = figures["speedup"].texts
    assert title.get_text().startswith("Speedup")
    assert note.get_text() == "eager: no value for any model (sdpa: ok, none computable)"


def test_report_outputs_are_replaced_whole_or_not_at_all(tmp_path: Path) -> None:
    """An aggregation stopped mid-write keeps the old file; a killed writer's temporary file is removed by the next;
    the new file is as readable as one written with open()."""
    out = tmp_path / "summary.csv"
    out.write_text("old\n")
    left = tmp_path / ".summary.csv.k1ll3d.tmp.csv"
    left.write_text("half")
    with pytest.raises(KeyboardInterrupt):
        with atomic_output(out) as tmp:
            tmp.write_text("ne")
            raise KeyboardInterrupt
    assert out.read_text() == "old\n" and sorted(p.name for p in tmp_path.iterdir()) == ["summary.csv"]
    with atomic_output(out) as tmp:
        assert tmp.parent == tmp_path and tmp.suffix == ".csv"  # matplotlib reads the format from the suffix
        tmp.write_text("new\n")
    mask = os.umask(0)
    os.umask(mask)
    assert out.read_text() == "new\n" and out.stat().st_mode & 0o777 == 0o666 & ~mask
    assert sorted(p.name for p in tmp_path.iterdir()) == ["summary.csv"]


def test_report_path_must_be_a_folder_of_this_run(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "results" / "cpu-demo").mkdir(parents=True)
    (tmp_path / "results" / "study").mkdir()
    assert report_path_problem(["--cores", "1"], "results/cpu-demo") is None
    assert report_path_problem(["--report"], "results/cpu-demo") is None  # report.html here
    assert report_path_problem(["--report", "results/cpu-demo/report.html"], "results/cpu-demo") is None
    assert report_path_problem(["--report=results/cpu-demo/r.zip"], "results/cpu-demo") is None
    problem = report_path_problem(["--report", "results/mine/report.html"], "results/cpu-demo")
    assert problem == ("--report results/mine/report.html: the folder results/mine/ does not exist. This config's "
                       "results are in results/cpu-demo/; its report: snakemake --report "
                       "results/cpu-demo/report.html")
    assert "holds another run" in report_path_problem(["--report", "results/study/report.html"], "results/cpu-demo")
    assert report_path_problem(["--report", "x/r.html"], "results/r", ".venv/bin/snakemake").endswith(
        "its report: .venv/bin/snakemake --report results/r/report.html")
    assert snakemake_command(".venv/bin/snakemake") == ".venv/bin/snakemake"
    assert snakemake_command("/lib/python3.11/site-packages/snakemake/__main__.py") == "snakemake"


def test_headline_names_the_fastest_and_its_ties(tmp_path: Path) -> None:
    """Fastest per model, context and mode; another implementation within the fastest's window spread is a tie."""
    paths = []
    for seq_len, speeds in ((64, {"naive": 1000.0, "sdpa": 1300.0, "sdpa_math": 1250.0}),
                            (128, {"naive": 800.0, "sdpa": 1200.0, "sdpa_math": 900.0})):
        for attn, tps in speeds.items():
            paths.append(cell_with_spread(tmp_path, attn, seq_len, tps, 0.95, 1.02))
        paths.append(make_cell(tmp_path, "unsupported", attn="flex", seq_len=seq_len, mode="eager"))
    out = tmp_path / "summary.csv"
    write_summary(paths, out)
    best = fastest(read_summary(out))
    assert best[["seq_len", "fastest", "ties"]].values.tolist() == [[64, "sdpa", "sdpa_math (1,250)"],
                                                                   [128, "sdpa", ""]]
    text = render_headline(read_summary(out), "results/x")
    assert "implementations naive, sdpa, sdpa_math, flex" in text and "8 cells: 6 ok, 2 unsupported" in text
    assert "Never measured in this run: flex: unsupported" in text
    assert "``results/x/tables/compiled.md``" in text and "``results/x/figures/``" in text
    from docutils.core import publish_parts  # the report renders it as reStructuredText: it must be valid

    html = publish_parts(text, writer="html", settings_overrides={"report_level": 2, "halt_level": 2})["body"]
    assert "<table" in html and "sdpa_math (1,250)" in html


def test_a_run_in_parts_names_what_each_fastest_was_not_compared_with(tmp_path: Path) -> None:
    """allow_missing: a row whose other implementations are not run yet is only the fastest so far, and says so;
    the steps and window come from a measured cell even where the summary's first row is a missing one."""
    fa2 = make_cell(tmp_path, attn="fa2", mode="compiled", seq_len=1024, tokens_per_sec=100_000.0)
    both = [make_cell(tmp_path, attn=a, mode="compiled", seq_len=2048, tokens_per_sec=t)
            for a, t in (("fa2", 90_000.0), ("sdpa", 95_000.0))]
    layout = "kv_heads~12/precision~fp16/optimizer~adamw/harness~native/cell.json"
    missing = [f"cells/model~small/seq_len~{n}/attn~{a}/mode~compiled/{layout}"
               for n, a in ((256, "sdpa"), (1024, "sdpa"), (1024, "sdpa_flash"))]
    out = tmp_path / "summary.csv"
    write_summary([fa2, *both], out, missing=missing)
    df = read_summary(out)
    assert df.iloc[0]["status"] == "missing"  # sorted first (context 256): it has no steps to read
    best = fastest(df)
    assert best[["seq_len", "fastest", "not_run_yet"]].values.tolist() == [[1024, "fa2", "sdpa, sdpa_flash"],
                                                                         [2048, "sdpa", ""]]
    text = render_headline(df, "results/x")
    assert "tokens/s over the last 25 of 125 steps" in text and "nan" not in text
    assert "only the fastest of those measured so far" in text
    assert "Not run yet in this run (it is tabled in parts): sdpa_flash." in text and "Never measured" not in text
    header, rows = text.split("not run yet")[1], [ln.split() for ln in text.splitlines() if ln.startswith("small")]
    assert header and rows == [["small", "1024", "compiled", "fa2", "100,000", "-", "sdpa,", "sdpa_flash"],
                               ["small", "2048", "compiled", "sdpa", "95,000", "-", "-"]]
    # A complete run's page has no such column or sentence.
    write_summary([fa2, *both], out)
    text = render_headline(read_summary(out), "results/x")
    assert "not run yet" not in text and "so far" not in text


def add_repeat(cell: Path, number: int, tokens_per_sec: float | None) -> Path:
    """Repeat `number` of the cell whose first record is `cell` (None: it ran out of memory)."""
    rec = json.loads(cell.read_text())
    if tokens_per_sec is None:
        rec.update(status="oom", reason="out of memory", tokens_per_sec=None)
    else:
        rec["tokens_per_sec"] = tokens_per_sec
    path = cell.with_name(f"repeat-{number}.json")
    path.write_text(json.dumps(rec))
    return path


def test_repeats_give_the_median_their_range_and_ties(tmp_path: Path) -> None:
    fa2 = make_cell(tmp_path, attn="fa2", mode="compiled", seq_len=1024, tokens_per_sec=100.0)
    sdpa = make_cell(tmp_path, attn="sdpa", mode="compiled", seq_len=1024, tokens_per_sec=125.0)
    flash = make_cell(tmp_path, attn="sdpa_flash", mode="compiled", seq_len=1024, tokens_per_sec=200.0)
    repeats = [add_repeat(fa2, 2, 120.0), add_repeat(fa2, 3, 110.0), add_repeat(fa2, 4, None),
               add_repeat(sdpa, 2, 115.0), add_repeat(flash, 2, 210.0)]
    df = summarize([fa2, sdpa, flash], repeats=repeats)
    r = row(df, "fa2")
    assert r["tokens_per_sec"] == 110.0 and r["repeats"] == 3  # the median of the three that ran
    assert (r["tokens_per_sec_min"], r["tokens_per_sec_max"]) == (100.0, 120.0)
    assert json.loads(r["tokens_per_sec_repeats"]) == [100.0, 120.0, 110.0, None]
    assert row(df, "sdpa")["tokens_per_sec"] == 120.0
    assert r["diff_vs_sdpa_pct"] == pytest.approx(100 * (110 / 120 - 1))
    assert r["tie_vs_sdpa"] == True  # noqa: E712 -- 100-120 and 115-125 overlap
    assert r["tie_vs_sdpa_flash"] == False  # noqa: E712 -- 100-120 and 200-210 do not
    out = {n: tmp_path / f"{n}.md" for n in ("compiled", "eager", "all")}
    summary = tmp_path / "summary.csv"
    write_summary([fa2, sdpa, flash], summary, repeats=repeats)
    write_tables(summary, out)
    text = out["compiled"].read_text()
    assert "-8.3% tie" in text and "-46.3%" in text and "-46.3% tie" not in text
    assert "110 ±9.1%" in text and "median of a cell's repeats" in text
    # What each cell cost: every repeat's timed job (the template's duration_s is 130 s), the failed one included.
    assert (r["timed_s_total"], row(df, "sdpa")["timed_s_total"]) == (4 * 130.0, 2 * 130.0)
    assert ("3 cells, 8 timed jobs: 1,040 s in all (130.0 s a job; on a GPU, the time each held its GPU)"
            in out["all"].read_text())


def test_a_cell_measured_once_in_a_run_with_repeats_is_not_judged(tmp_path: Path) -> None:
    """A run in parts: `fa2` has its repeat 1 only, 0.2% from `sdpa_flash`. Its difference is neither a tie nor a
    lead, and the legend says so, since the bare number beside tie-marked ones reads as a lead."""
    fa2 = make_cell(tmp_path, attn="fa2", mode="compiled", seq_len=1024, tokens_per_sec=99_800.0)
    flash = make_cell(tmp_path, attn="sdpa_flash", mode="compiled", seq_len=1024, tokens_per_sec=100_000.0)
    repeats = [add_repeat(flash, 2, 100_100.0)]
    df = summarize([fa2, flash], repeats=repeats)
    assert pd.isna(row(df, "fa2")["tie_vs_sdpa_flash"])
    out = {n: tmp_path / f"{n}.md" for n in ("compiled", "eager", "all")}
    write_summary([fa2, flash], tmp_path / "summary.csv", repeats=repeats)
    write_tables(tmp_path / "summary.csv", out)
    text = out["compiled"].read_text()
    assert "-0.2%" in text and "-0.2% tie" not in text
    assert "one with a cell measured once (tok/s without ±) is not judged, tie or lead" in text


def test_with_repeats_the_figures_draw_their_range_and_ties_open(tmp_path: Path) -> None:
    """Error bars from the repeats' range (not the window's steps); a tie an open marker, a lead a filled one."""
    fa2 = cell_with_spread(tmp_path, "fa2", 1024, 100.0, 0.5, 1.5)  # a window spread the bars must not show
    sdpa = make_cell(tmp_path, attn="sdpa", mode="eager", seq_len=1024, tokens_per_sec=125.0)
    flash = make_cell(tmp_path, attn="sdpa_flash", mode="eager", seq_len=1024, tokens_per_sec=200.0)
    repeats = [add_repeat(fa2, 2, 120.0), add_repeat(sdpa, 2, 115.0), add_repeat(flash, 2, 210.0)]
    summary = tmp_path / "summary.csv"
    write_summary([fa2, sdpa, flash], summary, repeats=repeats)
    figures = write_figures(summary, {n: tmp_path / f"{n}.png" for n in ("throughput", "fa2_vs_sdpa_eager")})

    assert "a cell's spread over its repeats" in figures["throughput"]._suptitle.get_text()
    (throughput,) = figures["throughput"].axes
    fa2_bars = next(c for c in throughput.containers if c.get_label() == "fa2")
    low, high = (caps.get_ydata() for caps in fa2_bars.lines[1])
    assert (list(low), list(high)) == ([pytest.approx(100.0)], [pytest.approx(120.0)])  # repeats 100, 120; median 110

    (head,) = figures["fa2_vs_sdpa_eager"].axes
    open_markers = [line for line in head.get_lines() if line.get_markerfacecolor() == "white"]
    assert [list(line.get_ydata()) for line in open_markers] == [[pytest.approx(100 * (110 / 120 - 1))]]  # vs sdpa
    assert "open: a tie (inside both cells' spreads)" in [t.get_text() for t in head.get_legend().get_texts()]


def on_gpu(record: Path, uuid: str) -> Path:
    """The record, as measured on the GPU `uuid`."""
    rec = json.loads(record.read_text())
    rec["env"].setdefault("gpu", {})["uuid"] = uuid
    record.write_text(json.dumps(rec))
    return record


def cell_on_gpus(tmp: Path, attn: str, seq_len: int, runs: list[tuple[float, str]]) -> list[Path]:
    """A compiled cell whose repeats gave these tokens/s on these GPUs: its first record, then its repeats."""
    first = on_gpu(make_cell(tmp, attn=attn, mode="compiled", seq_len=seq_len, tokens_per_sec=runs[0][0]), runs[0][1])
    return [first, *(on_gpu(add_repeat(first, n, tps), uuid) for n, (tps, uuid) in enumerate(runs[1:], start=2))]


def test_a_cell_measured_on_one_gpu_is_given_the_runs_between_gpu_spread(tmp_path: Path) -> None:
    """Repeats on one GPU agree more closely than two GPUs do: a cell whose repeats all ran on one GPU has its range
    widened to the spread of the run's cells measured on two, so a lead of less than that is a tie."""
    # The run's cells measured on two GPUs: ranges 3/101.5 and 1/100.5 of their medians; the median of the two.
    across = [*cell_on_gpus(tmp_path, "fa2", 2048, [(100.0, "GPU-a"), (103.0, "GPU-b")]),
              *cell_on_gpus(tmp_path, "sdpa", 2048, [(100.0, "GPU-a"), (101.0, "GPU-b")])]
    fa2 = cell_on_gpus(tmp_path, "fa2", 1024, [(100.0, "GPU-a"), (100.2, "GPU-a")])
    sdpa = cell_on_gpus(tmp_path, "sdpa", 1024, [(101.5, "GPU-b"), (101.7, "GPU-b")])
    flash = cell_on_gpus(tmp_path, "sdpa_flash", 1024, [(110.0, "GPU-b"), (110.2, "GPU-b")])
    cells = [across[0], across[2], fa2[0], sdpa[0], flash[0]]
    repeats = [across[1], across[3], fa2[1], sdpa[1], flash[1]]
    df = summarize(cells, repeats=repeats)

    between = (100 * 3 / 101.5 + 100 * 1 / 100.5) / 2
    assert df["between_gpu_pct"].tolist() == [pytest.approx(between)] * 5
    assert (row(df, "fa2")["gpus"], row(df, "fa2", 2048)["gpus"]) == (1, 2)
    # One GPU: widened to ±half the run's between-GPU spread; two: its own range.
    assert row(df, "fa2")["spread_low"] == pytest.approx(100.1 * (1 - between / 200))
    assert row(df, "fa2")["spread_high"] == pytest.approx(100.1 * (1 + between / 200))
    assert (row(df, "fa2", 2048)["spread_low"], row(df, "fa2", 2048)["spread_high"]) == (100.0, 103.0)
    # fa2 100.0-100.2 and sdpa 101.5-101.7 do not overlap as measured; 1.5% apart, inside the GPUs' 2%.
    assert row(df, "fa2")["tie_vs_sdpa"] == True  # noqa: E712
    assert row(df, "fa2")["tie_vs_sdpa_flash"] == False  # noqa: E712 -- 10% apart
    text = all_markdown(df)
    assert f"100 ±{between / 2:.1f}%" in text and "between_gpu_pct" in text


def test_without_a_cell_measured_on_two_gpus_the_ranges_are_compared_as_they_are(tmp_path: Path) -> None:
    fa2 = cell_on_gpus(tmp_path, "fa2", 1024, [(100.0, "GPU-a"), (100.2, "GPU-a")])
    sdpa = cell_on_gpus(tmp_path, "sdpa", 1024, [(102.0, "GPU-b"), (102.2, "GPU-b")])
    df = summarize([fa2[0], sdpa[0]], repeats=[fa2[1], sdpa[1]])
    assert df["between_gpu_pct"].isna().all()
    assert (row(df, "fa2")["spread_low"], row(df, "fa2")["spread_high"]) == (100.0, 100.2)
    assert row(df, "fa2")["tie_vs_sdpa"] == False  # noqa: E712


def test_gpu_time_adds_the_warm_up_jobs_of_every_repeat(tmp_path: Path) -> None:
    fa2 = make_cell(tmp_path, attn="fa2", mode="compiled", seq_len=1024, tokens_per_sec=100.0)
    rec = json.loads(fa2.read_text())
    rec.update(duration_s=12.0, warmup={"seconds": 40.0, "steps": 10, "first_step_s": 30.0})
    fa2.write_text(json.dumps(rec))
    second = add_repeat(fa2, 2, 101.0)
    rec = json.loads(second.read_text())
    rec.update(duration_s=10.0, warmup={"seconds": 35.0, "steps": 10, "first_step_s": 28.0})
    second.write_text(json.dumps(rec))
    df = summarize([fa2], repeats=[second])
    assert (row(df, "fa2")["timed_s_total"], row(df, "fa2")["warmup_s_total"]) == (22.0, 75.0)
    text = all_markdown(df)
    assert ("1 cell, 2 timed jobs: 22 s in all (11.0 s a job; on a GPU, the time each held its GPU); "
            "warm-up jobs 75 s") in text
    assert "| 22 + 75 |" in text.split("## Job time")[1].replace("  ", " ")


def test_without_repeats_nothing_is_called_a_tie(grid: list[Path], tmp_path: Path) -> None:
    df = summarize(grid)
    assert (df.loc[df["status"] == "ok", "repeats"] == 1).all()
    assert df["tie_vs_sdpa"].isna().all()
    out = {n: tmp_path / f"{n}.md" for n in ("compiled", "eager", "all")}
    write_summary(grid, tmp_path / "summary.csv")
    write_tables(tmp_path / "summary.csv", out)
    assert " tie" not in out["compiled"].read_text() and "repeats" not in out["compiled"].read_text()


def test_a_repeat_without_its_cell_or_of_another_run_is_refused(tmp_path: Path) -> None:
    fa2 = make_cell(tmp_path, attn="fa2", mode="compiled", seq_len=1024, tokens_per_sec=100.0, run="r")
    stray = add_repeat(fa2, 2, 90.0)
    stray.rename(tmp_path / "repeat-2.json")
    with pytest.raises(ValueError, match="no first record"):
        summarize([fa2], run="r", repeats=[tmp_path / "repeat-2.json"])
    other = add_repeat(fa2, 2, 90.0)
    rec = json.loads(other.read_text())
    rec["cell"]["run"] = "another"
    other.write_text(json.dumps(rec))
    with pytest.raises(ValueError, match="another run"):
        summarize([fa2], run="r", repeats=[other])
    # Repeat 2 on another torch (another GPU of the same kind is the same environment): refused, even where the
    # run allows cells of several environments, since one cell's median cannot be of two.
    for allow_mixed_env in (False, True):
        elsewhere = add_repeat(fa2, 2, 140.0)
        rec = json.loads(elsewhere.read_text())
        rec["env"]["torch"] = "9.9.9"
        elsewhere.write_text(json.dumps(rec))
        with pytest.raises(ValueError, match=r"another environment than their cell's first record:\n.*repeat-2\.json: "
                                             r".*torch 9\.9\.9.*; its cell\.json: "):
            summarize([fa2], run="r", repeats=[elsewhere], allow_mixed_env=allow_mixed_env)
    same = add_repeat(fa2, 2, 140.0)
    rec = json.loads(same.read_text())
    rec["env"]["gpu"] = {"uuid": "GPU-other"}
    same.write_text(json.dumps(rec))
    assert summarize([fa2], run="r", repeats=[same])["tokens_per_sec"].iloc[0] == 120.0


def test_with_repeats_the_headline_ties_are_overlapping_ranges(tmp_path: Path) -> None:
    """The window spread would tie these (both within 0.95-1.02 of the fastest); their repeats' ranges decide."""
    sdpa = cell_with_spread(tmp_path, "sdpa", 64, 1300.0, 0.95, 1.02)
    math_ = cell_with_spread(tmp_path, "sdpa_math", 64, 1250.0, 0.95, 1.02)
    naive = cell_with_spread(tmp_path, "naive", 64, 1000.0, 0.95, 1.02)
    repeats = [add_repeat(sdpa, 2, 1320.0), add_repeat(math_, 2, 1260.0), add_repeat(naive, 2, 1290.0)]
    out = tmp_path / "summary.csv"
    write_summary([sdpa, math_, naive], out, repeats=repeats)
    best = fastest(read_summary(out))
    # sdpa 1300-1320; naive 1000-1290 and sdpa_math 1250-1260 end below it: no tie, whatever the window spread says
    assert best[["fastest", "ties"]].values.tolist() == [["sdpa", ""]]
    add_repeat(math_, 3, 1305.0)  # now sdpa_math reaches into sdpa's range
    write_summary([sdpa, math_, naive], out, repeats=[*repeats, math_.with_name("repeat-3.json")])
    assert fastest(read_summary(out))[["fastest", "ties"]].values.tolist() == [["sdpa", "sdpa_math (1,260)"]]
    # The page says what a tie is with repeats, not what it is for one run.
    text = render_headline(read_summary(out), "results/x")
    assert "the repeats do not separate them" in text and "one run does not separate them" not in text


def test_with_repeats_a_fastest_measured_once_is_not_judged(tmp_path: Path) -> None:
    """A run in parts with repeats: the fastest cell so far has one repeat, whose window's slowest step (0.85 of its
    tokens/s) would tie a cell 10% below; as in the tables, a cell measured once is not judged, tie or lead."""
    fa4 = cell_with_spread(tmp_path, "fa4", 64, 1300.0, 0.85, 1.04)
    sdpa = cell_with_spread(tmp_path, "sdpa", 64, 1180.0, 0.95, 1.02)
    out = tmp_path / "summary.csv"
    write_summary([fa4, sdpa], out, repeats=[add_repeat(sdpa, 2, 1170.0)])
    best = fastest(read_summary(out))
    assert best[["fastest", "ties", "runner_up"]].values.tolist() == [["fa4", "not judged (measured once)", None]]
    write_summary([fa4, sdpa], out)  # one run each: the window's spread decides, and ties them
    assert fastest(read_summary(out))["ties"].tolist() == ["sdpa (1,180)"]


def test_three_modes_compare_cuda_graphs_with_plain_compiled(tmp_path: Path) -> None:
    """compiled_cudagraphs beside compiled and eager: its own rows, table and figure, its gain over eager and over
    plain compiled; a summary without it keeps the columns and tables it always had."""
    assert set(MODE_ORDER) == set(MODES) and MODE_ORDER[-1] == "eager"
    speeds = {"compiled": {"naive": 50_000.0, "sdpa": 100_000.0, "fa2": 101_000.0},
              "compiled_cudagraphs": {"naive": 55_000.0, "sdpa": 120_000.0, "fa2": 111_100.0},
              "eager": {"naive": 40_000.0, "sdpa": 80_000.0, "fa2": 84_000.0}}
    paths = [make_cell(tmp_path, attn=a, mode=m, seq_len=1024, tokens_per_sec=t)
             for m, impls in speeds.items() for a, t in impls.items()]
    for p in paths:  # what the cells recorded of their CUDA graphs: fa2's fell back
        rec = json.loads(p.read_text())
        fell = rec["cell"]["attn"] == "fa2"
        rec["compile"]["cudagraphs"] = None if rec["cell"]["mode"] != "compiled_cudagraphs" else {
            "captured": 2, "skipped": int(fell), "fell_back": fell,
            "skip_reasons": ["skipping cudagraphs due to mutated inputs (1 instances)"] if fell else []}
        p.write_text(json.dumps(rec))
    df = summarize(paths)
    assert list(pd.unique(df["mode"])) == ["compiled", "compiled_cudagraphs", "eager"]
    graphs = row(df, "sdpa", mode="compiled_cudagraphs")
    assert graphs["cudagraphs_over_compiled"] == pytest.approx(1.2)
    assert graphs["compiled_over_eager"] == pytest.approx(1.5)  # every compiled mode over eager
    assert row(df, "sdpa")["compiled_over_eager"] == pytest.approx(1.25)
    assert math.isnan(row(df, "sdpa")["cudagraphs_over_compiled"])
    assert math.isnan(row(df, "sdpa", mode="eager")["compiled_over_eager"])
    assert list(df.columns).index("cudagraphs_over_compiled") == list(df.columns).index("compiled_over_eager") + 1
    # Without the mode, no new column: committed summaries stay what the code makes of their cells.
    assert "cudagraphs_over_compiled" not in summarize([p for p in paths if "cudagraphs" not in str(p)])

    out = tmp_path / "summary.csv"
    df.to_csv(out, index=False)
    names = table_names(df["mode"])
    assert names == ["compiled", "compiled_cudagraphs", "eager", "study", "answers", "all"]
    assert table_names(["eager"]) == ["compiled", "eager", "study", "answers", "all"]  # the study's two, always
    tables = {n: tmp_path / f"{n}.md" for n in names}
    write_tables(out, tables)
    text = tables["compiled_cudagraphs"].read_text()
    assert text.startswith("# Training throughput, compiled_cudagraphs (tokens/s)")
    rows = {int(r[1]): dict(zip(markdown_header(text), r)) for r in markdown_rows(text)}
    assert rows[1024]["sdpa tok/s"] == "120,000" and rows[1024]["fa2 − sdpa %"] == "-7.4%"
    assert "Ran partly without CUDA graphs" in text and ": fa2 (small, 1024)." in text
    assert "without CUDA graphs" not in tables["compiled"].read_text()
    wide = tables["all"].read_text()
    for heading in ("## compiled over eager", "## compiled_cudagraphs over eager",
                    "## compiled_cudagraphs over compiled", "## compiled_cudagraphs: median of the per-step"):
        assert heading in wide, heading
    gain = wide.split("## compiled_cudagraphs over compiled (tokens/s ratio; tie: their spreads overlap")[1]
    assert markdown_rows(gain)[0][2:] == ["1.10×", "1.20×", "1.10×"]  # naive, sdpa, fa2
    # A table asked for by the grid but without cells says so (its cells excluded, say).
    assert "No compiled_cudagraphs cells" in render_tables(df[df["mode"] != "compiled_cudagraphs"],
                                                           ["compiled_cudagraphs"])["compiled_cudagraphs"]

    grid = {"attn": ["naive", "sdpa", "fa2"], "mode": ["compiled", "compiled_cudagraphs", "eager"]}
    assert figure_names(grid, "cuda")[:3] == ["fa2_vs_sdpa_compiled", "fa2_vs_sdpa_compiled_cudagraphs",
                                              "fa2_vs_sdpa_eager"]
    figures = write_figures(out, {n: tmp_path / f"{n}.png" for n in ("fa2_vs_sdpa_compiled_cudagraphs",
                                                                      "throughput")})
    assert len(figures["throughput"].axes) == 3  # one row of panels per mode
    assert [ax.get_title() for ax in figures["throughput"].axes] == [
        "small, compiled", "small, compiled_cudagraphs", "small, eager"]
    text = render_headline(df, "results/x")
    assert ("``results/x/tables/compiled.md``, ``compiled_cudagraphs.md``, ``eager.md``, ``study.md``, "
            "``answers.md``, ``all.md``") in text


def test_attentions_share_of_the_step_is_tabled_per_implementation(tmp_path: Path) -> None:
    cells = []
    for attn, share in (("sdpa", 0.125), ("fa2", 0.25)):
        path = make_cell(tmp_path, attn=attn, mode="compiled", seq_len=1024, tokens_per_sec=100.0)
        rec = json.loads(path.read_text())
        rec["kernels"]["attention_share"] = share
        path.write_text(json.dumps(rec))
        cells.append(path)
    text = all_markdown(summarize(cells))
    section = text.split("## compiled: attention's share of the profiled step")[1].split("\n## ")[0]
    row = next(line for line in section.splitlines() if line.startswith("| small"))
    assert [c.strip() for c in row.strip("|").split("|")][-2:] == ["12%", "25%"]


def test_the_gpus_busy_share_of_a_step_is_computed_folded_over_repeats_and_tabled(tmp_path: Path) -> None:
    """aggregate.gpu_busy: the profiled step's kernel time over the window's mean step time (tokens per step over
    tokens/s); from `busy_us`, or for older records from attention's time over its share; none off a GPU."""
    path = make_cell(tmp_path, attn="sdpa", mode="compiled", seq_len=1024, tokens_per_sec=100.0)
    rec = json.loads(path.read_text())
    step_s = rec["batch_size"] * 1024 / 100.0
    rec["kernels"] = {"source": "CUDA kernels", "attention": [{"name": "flash_fwd", "calls": 1, "time_us": 25.0}],
                      "attention_share": 0.25, "top": []}
    assert gpu_busy(rec) == pytest.approx(round(100e-6 / step_s, 3))  # 25 us is a quarter of 100 us
    rec["kernels"]["busy_us"] = step_s * 1e6 / 2
    assert gpu_busy(rec) == 0.5
    assert gpu_busy({**rec, "status": "oom"}) is None
    assert gpu_busy({**rec, "kernels": {**rec["kernels"], "source": "CPU operators"}}) is None
    path.write_text(json.dumps(rec))
    # A second repeat at 0.7 busy: the cell's share is the median of its repeats.
    second = json.loads(path.read_text())
    second["kernels"]["busy_us"] = step_s * 1e6 * 0.7
    (path.parent / "repeat-2.json").write_text(json.dumps(second))
    df = summarize([path], repeats=[path.parent / "repeat-2.json"])
    assert df["gpu_busy"].iloc[0] == pytest.approx(0.6)
    section = all_markdown(df).split("## compiled: the GPU's busy share of a measured step")[1].split("\n## ")[0]
    assert next(line for line in section.splitlines() if line.startswith("| small")).rstrip().endswith("60% |")
    # The GPU's work per token, the same two repeats: half and 0.7 of a step's time over its 16 x 1024 tokens.
    assert kernel_ns_per_token(rec) == pytest.approx(step_s * 1e9 / 2 / (16 * 1024))
    assert df["kernel_ns_per_token"].iloc[0] == pytest.approx(step_s * 1e9 * 0.6 / (16 * 1024))
    section = all_markdown(df).split("## compiled: the GPU's work per token")[1].split("\n## ")[0]
    row = next(line for line in section.splitlines() if line.startswith("| small"))
    assert row.rstrip().endswith(f"{step_s * 1e9 * 0.6 / (16 * 1024):,.0f} |")


def test_the_steps_before_the_window_are_compared_with_it_and_tabled(tmp_path: Path) -> None:
    """aggregate.pre_window_change: the `window` steps before the window (steps 1 and 2 left out) against the
    window's tokens/s; a 50-step run with window 25 compares steps 3-25, a 125-step run steps 76-100."""
    from attnsweep.report.aggregate import pre_window_change

    path = make_cell(tmp_path, attn="sdpa", mode="compiled", seq_len=1024, tokens_per_sec=100.0)
    rec = json.loads(path.read_text())
    step_s = rec["batch_size"] * 1024 / 100.0
    # Step 1 compiles (30 s), step 2 records CUDA graphs (15 steps' time): both left out; steps 3-25 take 10% longer
    # than the window's.
    rec["step_times_s"] = [30.0, 15 * step_s] + [1.1 * step_s] * 23 + [step_s] * 25
    rec["tokens_per_sec_stats"] = {**(rec.get("tokens_per_sec_stats") or {}), "n": 25}
    assert pre_window_change(rec) == pytest.approx(1 / 1.1 - 1, abs=1e-4)
    long = {**rec, "step_times_s": [30.0] + [2 * step_s] * 74 + [0.9 * step_s] * 25 + [step_s] * 25}
    assert pre_window_change(long) == pytest.approx(1 / 0.9 - 1, abs=1e-4)  # steps 76-100 only
    assert pre_window_change({**rec, "step_times_s": [30.0] + [step_s] * 5 + [step_s] * 25}) is None  # 4 before
    assert pre_window_change({**rec, "step_times_s": [30.0] + [step_s] * 6 + [step_s] * 25}) == 0.0  # 5 before
    assert pre_window_change({**rec, "status": "oom"}) is None
    path.write_text(json.dumps(rec))
    section = all_markdown(summarize([path])).split("## compiled: the steps before the window against it")[1]
    row = next(line for line in section.split("\n## ")[0].splitlines() if line.startswith("| small"))
    assert row.rstrip().endswith("-9.1% |")


def test_mfu_is_tabled_by_nanogpts_formula_and_by_causal_attentions_work(tmp_path: Path) -> None:
    """aggregate.mfu_causal: the record's MFU with the attention term halved (flops.CAUSAL_FORMULA), from its
    parameters and shape; all.md shows both, median over the repeats."""
    from attnsweep import flops
    from attnsweep.report.aggregate import mfu_causal, mfu_nanogpt

    path = make_cell(tmp_path, attn="sdpa", mode="compiled", seq_len=1024, tokens_per_sec=100.0)
    rec = json.loads(path.read_text())
    shape = {"n_params_non_embedding": 1_000_000, "n_layer": 2, "n_head": 4, "head_dim": 16, "seq_len": 1024}
    full = flops.flops_per_token(**shape)  # 6e6 + 12 * 2 * 64 * 1024 = 7,572,864
    rec.update(params={"total": 1_100_000, "non_embedding": 1_000_000},
               model_config={**rec["model_config"], "n_layer": 2, "n_head": 4, "n_embd": 64},
               mfu={"value": 0.5, "flops_per_token": full, "formula": flops.FORMULA, "peak_flops": 1e15})
    assert mfu_nanogpt(rec) == 0.5
    assert mfu_causal(rec) == pytest.approx(round(0.5 * (6e6 + 6 * 2 * 64 * 1024) / full, 4))
    assert mfu_causal({**rec, "status": "oom"}) is None and mfu_causal({**rec, "mfu": None}) is None
    path.write_text(json.dumps(rec))
    section = all_markdown(summarize([path])).split("## compiled: MFU")[1].split("\n## ")[0]
    row = next(line for line in section.splitlines() if line.startswith("| small"))
    assert row.rstrip().endswith(f"| 50.0% ({100 * mfu_causal(rec):.1f}%) |")


def test_a_graph_breaks_cost_and_grouped_heads_are_compared_with_their_twins(tmp_path: Path) -> None:
    """graphbreak_over_one_graph: `fa2_graphbreak` over `fa2` of the same mode and setup, with a tie where both
    cells' repeats overlap; kv_heads_over_full: a grouped cell over the same implementation with every kv head.
    all.md tables both; a run without such rows keeps its columns."""
    cells = []
    for attn, mode, kv, tps in (("fa2", "compiled", 12, 100.0), ("fa2_graphbreak", "compiled", 12, 80.0),
                                ("fa2", "compiled_cudagraphs", 12, 110.0),
                                ("fa2_graphbreak", "compiled_cudagraphs", 12, 108.0), ("fa2", "compiled", 4, 120.0)):
        path = make_cell(tmp_path / ("grouped" if kv != 12 else "."), attn=attn, mode=mode, seq_len=1024,
                         tokens_per_sec=tps)
        if kv != 12:  # beside the multi-head cells, in a folder of its own
            rec = json.loads(path.read_text())
            rec["cell"]["kv_heads"] = kv
            rec["model_config"]["n_kv_head"] = kv
            path = tmp_path / "cells" / f"kv{kv}" / "cell.json"
            path.parent.mkdir(parents=True)
            path.write_text(json.dumps(rec))
        cells.append(path)
    # Second repeats: the CUDA-graph pair's ranges overlap (110-112 against 108-111), the compiled pair's do not.
    repeats = []
    for path, other in zip(cells, (102.0, 82.0, 112.0, 111.0, 118.0)):
        rec = json.loads(path.read_text())
        rec["tokens_per_sec"] = other
        (path.parent / "repeat-2.json").write_text(json.dumps(rec))
        repeats.append(path.parent / "repeat-2.json")
    df = summarize(cells, repeats=repeats)

    def row(attn: str, mode: str, kv: int = 12) -> pd.Series:
        return df[(df["attn"] == attn) & (df["mode"] == mode) & (df["kv_heads"] == kv)].iloc[0]

    assert row("fa2_graphbreak", "compiled")["graphbreak_over_one_graph"] == pytest.approx(81 / 101)
    assert row("fa2_graphbreak", "compiled")["tie_graphbreak"] == False  # noqa: E712
    assert row("fa2_graphbreak", "compiled_cudagraphs")["graphbreak_over_one_graph"] == pytest.approx(109.5 / 111)
    assert row("fa2_graphbreak", "compiled_cudagraphs")["tie_graphbreak"] == True  # noqa: E712
    assert pd.isna(row("fa2", "compiled")["graphbreak_over_one_graph"])
    assert row("fa2", "compiled", 4)["kv_heads_over_full"] == pytest.approx(119 / 101)
    assert pd.isna(row("fa2", "compiled")["kv_heads_over_full"])
    text = all_markdown(df)
    breaks = text.split("## A graph break's cost")[1].split("\n## ")[0]
    line = next(x for x in breaks.splitlines() if x.startswith("| small"))
    assert [c.strip() for c in line.strip("|").split("|")][-2:] == ["0.80×", "0.99× tie"]
    grouped = text.split("## compiled: grouped and multi-query attention")[1].split("\n## ")[0]
    assert next(x for x in grouped.splitlines() if x.startswith("| small")).rstrip().endswith("| 1.18× |")
    plain = summarize(cells[:1])
    assert "graphbreak_over_one_graph" not in plain and "kv_heads_over_full" not in plain


def test_a_cell_without_a_kv_heads_value_counts_as_multi_head(tmp_path: Path) -> None:
    """A record run by hand without --kv-heads (kv_heads null) is multi-head: no grouped comparison, no section, and
    the tables' settings line says multi-head attention."""
    path = make_cell(tmp_path, attn="sdpa", mode="compiled", seq_len=1024, tokens_per_sec=100.0)
    rec = json.loads(path.read_text())
    rec["cell"]["kv_heads"] = None
    path.write_text(json.dumps(rec))
    df = summarize([path])
    assert "kv_heads_over_full" not in df
    text = all_markdown(df)
    assert "grouped and multi-query" not in text
    assert "kv_heads = heads (multi-head attention)" in text and "kv_heads nan" not in text


def test_a_run_beside_another_cell_by_cell(tmp_path: Path) -> None:
    """compare_with: each run's batch, tokens/s and tie-marked differences side by side, their ratio, the cells of
    this run that the other's grid lacks counted, and the conditions the records differ in named."""
    def run(name: str, tps: dict[str, float], cap: float | None, with_long: bool) -> pd.DataFrame:
        folder = tmp_path / name
        paths = [make_cell(folder, attn=a, mode="compiled", seq_len=1024, tokens_per_sec=t, memory_cap_gib=cap)
                 for a, t in tps.items()]
        if with_long:
            paths.append(make_cell(folder, "oom", attn="fa2", mode="compiled", seq_len=4096, memory_cap_gib=cap))
        write_summary(paths, folder / "summary.csv")
        return read_summary(folder / "summary.csv")

    capped = run("capped", {"sdpa": 100.0, "sdpa_flash": 90.0, "fa2": 95.0}, 12.0, False)
    whole = run("whole", {"sdpa": 150.0, "sdpa_flash": 120.0, "fa2": 150.0}, None, True)
    text = comparison_markdown(whole, capped, "whole", "capped")
    assert "Differ: memory cap (GiB) none here, 12 in capped." in text
    assert "Same in both: GPU " in text and "; steps 125; " in text
    assert "3 of the 3 cells of both grids are measured in both: tokens/s here over capped's, median 1.50×, " \
           "1.33-1.58×." in text
    assert "Cells of this run not in capped's grid (not shown): 1." in text
    header, rows = markdown_header(text), {r[2]: r for r in markdown_rows(text)}
    assert header[:4] == ["model", "context", "attn", "batch capped → here"]
    assert set(rows) == {"sdpa", "sdpa_flash", "fa2"}
    fa2 = dict(zip(header, rows["fa2"]))
    assert fa2["tok/s capped"] == "95" and fa2["tok/s here"] == "150" and fa2["here / capped"] == "1.58×"
    assert fa2["batch capped → here"] == "16 → 16"
    assert fa2["− sdpa % (capped → here)"] == "-5.0% → +0.0%"
    assert fa2["− sdpa_flash % (capped → here)"] == "+5.6% → +25.0%"
    assert dict(zip(header, rows["sdpa"]))["− sdpa % (capped → here)"] == ""
    # The figure: the same ratios against context, one line per implementation.
    figure = comparison_figure(whole, capped, "whole", "capped", tmp_path / "vs.png")
    (panel,) = figure.axes
    lines = {c.get_label(): list(c.lines[0].get_ydata()) for c in panel.containers}
    assert lines["sdpa"] == [1.5] and lines["sdpa_flash"] == [pytest.approx(120 / 90)] and len(lines) == 3
    assert lines["fa2"] == pytest.approx([150 / 95, float("nan")], nan_ok=True)  # 4096: OOM, not in capped: a gap
    assert (tmp_path / "vs.png").stat().st_size > 0
    # Nothing in common: said so, no table.
    other = summarize([make_cell(tmp_path / "other", attn="fa2", mode="eager", seq_len=64, tokens_per_sec=1.0)])
    assert comparison_markdown(whole, other, "whole", "other").endswith("No cell of whole's grid is in other's.\n")


def test_two_runs_ranking_the_implementations_differently_are_told_apart_group_by_group(tmp_path: Path) -> None:
    """Above the cell-by-cell table: in how many groups of cells that differ in the implementation only both runs
    have the same fastest (the others named), and each pair of implementations the runs rank the other way round,
    with each run's lead judged as the tables judge it (tie: spreads overlap; not judged: measured once)."""
    def run(name: str, tps: dict[tuple[str, int], tuple[float, ...]]) -> pd.DataFrame:
        folder, paths, repeats = tmp_path / name, [], []
        for (attn, seq_len), (first, *more) in tps.items():
            paths.append(path := make_cell(folder, attn=attn, mode="compiled", seq_len=seq_len, tokens_per_sec=first))
            repeats += [add_repeat(path, n, t) for n, t in enumerate(more, start=2)]
        write_summary(paths, folder / "summary.csv", repeats=repeats)
        return read_summary(folder / "summary.csv")

    here = run("here", {("sdpa", 1024): (100.0, 102.0), ("fa2", 1024): (110.0, 111.0), ("flex", 1024): (90.0, 91.0),
                        ("sdpa", 2048): (80.0, 81.0), ("fa2", 2048): (80.5, 81.5), ("flex", 2048): (95.0, 96.0)})
    other = run("other", {("sdpa", 1024): (120.0, 121.0), ("fa2", 1024): (105.0, 106.0), ("flex", 1024): (95.0,),
                          ("sdpa", 2048): (90.0, 91.0), ("fa2", 2048): (85.0, 86.0), ("flex", 2048): (100.0, 101.0)})
    text = comparison_markdown(here, other, "here", "other")
    assert ("Groups of cells that differ in the implementation only, with two or more measured in both runs: 2; with "
            "the same fastest in both: 1 (not: context 1024: fa2 here, sdpa in other). Groups where the runs rank a "
            "pair of implementations the other way round: 2, 2 pairs (") in text
    ranking = text.split("other way round")[1].split("## ")[0]
    assert markdown_header(ranking) == ["context", "faster here", "than", "lead here", "the same in other"]
    # fa2 over sdpa: at 1024 beyond both spreads here (110.5 against 101) and the other way round in other; at 2048
    # a tie here (80.5-81.5 against 80-81), behind it beyond the spread in other. flex is fastest at 2048 in both.
    assert markdown_rows(ranking) == [["1024", "fa2", "sdpa", "+9.4%", "-12.4%"],
                                      ["2048", "fa2", "sdpa", "+0.6% tie", "-5.5%"]]
    # A cell measured once: the leads of its pairs are not judged.
    one = comparison_markdown(run("one", {("sdpa", 1024): (100.0,), ("fa2", 1024): (110.0, 111.0)}), other, "one",
                              "other")
    assert "measured in both runs: 1; with the same fastest in both: 0 (not: fa2 here, sdpa in other)." in one
    swapped = one.split("other way round")[1].split("## ")[0]
    assert markdown_rows(swapped) == [["fa2", "sdpa", "+10.5% not judged", "-12.4%"]]
    # The same order in both runs: no pair to show.
    same = comparison_markdown(here, here, "here", "again")
    assert "with the same fastest in both: 2. No pair of implementations is ranked the other way round." in same


def test_the_environment_line_names_the_kernel_package_its_flashattention_4_cells_ran(tmp_path: Path) -> None:
    """flash-attn-4 is not in env_id (every cell of a run shares that, and only fa4, fa4_graphbreak and sdpa_fa4 run
    it): each table's environment line names its version where those cells are in the table, and only there."""
    paths = []
    for attn, version in (("sdpa", "4.0.0b18"), ("fa4", "4.0.0b18"), ("sdpa_fa4", "4.0.0b18")):
        path = make_cell(tmp_path, attn=attn, mode="compiled", seq_len=1024, tokens_per_sec=100_000.0)
        rec = json.loads(path.read_text())
        rec["env"]["versions"]["flash-attn-4"] = version
        path.write_text(json.dumps(rec))
        paths.append(path)
    df = summarize(paths)
    line = next(l for l in all_markdown(df).splitlines() if l.startswith("Environment: "))
    assert line.endswith("; flash-attn-4 4.0.0b18 (fa4, sdpa_fa4).")
    plain = next(l for l in all_markdown(summarize(paths[:1])).splitlines() if l.startswith("Environment: "))
    assert "flash-attn-4" not in plain  # sdpa ran none of its kernels, though the package was installed
    rec = json.loads(paths[1].read_text())
    del rec["env"]["versions"]["flash-attn-4"]
    paths[1].write_text(json.dumps(rec))
    with pytest.raises(ValueError, match="flash-attn-4"):  # two versions among the family's cells: refused
        summarize(paths)
    mixed = next(l for l in all_markdown(summarize(paths, allow_mixed_env=True)).splitlines()
                 if l.startswith("Environment: "))
    assert mixed.endswith("; flash-attn-4 none recorded (fa4); flash-attn-4 4.0.0b18 (sdpa_fa4).")
