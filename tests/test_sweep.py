"""The sweep's definition (attnsweep.sweep), tested directly: no Snakemake run, no torch."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import yaml

from attnsweep import sweep
from attnsweep.vocabulary import AXES

ROOT = Path(__file__).resolve().parents[1]
SCHEMA = ROOT / "workflow/schemas/config.schema.yaml"


def config(**changes) -> dict:
    """config/config.yaml, validated (defaults filled in), with `changes` applied first (dotted keys)."""
    cfg = yaml.safe_load((ROOT / "config/config.yaml").read_text())
    for key, value in changes.items():
        *path, last = key.split(".")
        target = cfg
        for part in path:
            target = target.setdefault(part, {})
        target[last] = value
    sweep.validate_config(cfg, SCHEMA)
    return cfg


def test_the_shipped_config_plans_a_cpu_demo_and_a_gpu_study() -> None:
    cfg = config()
    demo = sweep.plan_run(cfg, {}, gpus=[])
    assert (demo.device, demo.cpu_demo, demo.run) == ("cpu", True, "cpu-demo") and len(demo.grid) == 21
    study = sweep.plan_run(cfg, {}, gpus=["0"])
    assert (study.device, study.cpu_demo, study.run) == ("cuda", False, "study")
    assert set(study.grid["model"]) == {"small", "medium", "large"}
    assert study.grid.loc[study.grid["model"] == "large", "seq_len"].max() == 2048  # max_seq_len
    assert set(study.grid.loc[study.grid["model"] == "large", "optimizer"]) == {"adamw8bit"}  # exclude


def test_a_top_level_setting_given_explicitly_applies_on_the_cpu_demo() -> None:
    cfg = config(run="mine")
    plan = sweep.plan_run(cfg, {"run": "mine"}, gpus=[])
    assert plan.cpu_demo and plan.run == "mine"
    # Given nowhere explicitly, the demo's own value is used.
    assert sweep.plan_run(config(), {}, gpus=[]).run == "cpu-demo"


@pytest.mark.parametrize("gpus", [[], ["0"]])
def test_a_typo_in_either_grid_is_found_on_any_machine(gpus: list[str]) -> None:
    bad_gpu_grid = yaml.safe_load((ROOT / "config/config.yaml").read_text())
    bad_gpu_grid["grid"]["attn"] = ["nosuch"]
    with pytest.raises(sweep.SweepError, match="grid.attn.*nosuch"):
        sweep.validate_config(bad_gpu_grid, SCHEMA)
    cfg = config()
    cfg["cpu_demo"]["grid"]["exclude"] = [{"model": "huge"}]
    with pytest.raises(sweep.SweepError, match=r"cpu_demo\.grid: unknown model"):
        sweep.plan_run(cfg, {}, gpus=gpus)
    cfg = config()
    cfg["window"] = 500  # the GPU section's: checked on a CPU machine too
    with pytest.raises(sweep.SweepError, match=r"^window \(500\) must not exceed steps"):
        sweep.plan_run(cfg, {}, gpus=gpus)


def test_numbers_given_as_text_on_the_command_line_are_numbers() -> None:
    raw = yaml.safe_load((ROOT / "config/config.yaml").read_text())
    raw["cpu_demo"]["grid"]["seq_len"] = ["64", "128", "256", "512"]
    raw["steps"] = "40"
    raw["memory_cap_gib"] = "11.5"
    sweep.validate_config(raw, SCHEMA)
    assert raw["cpu_demo"]["grid"]["seq_len"] == [64, 128, 256, 512] and raw["steps"] == 40
    assert raw["memory_cap_gib"] == 11.5
    raw["steps"] = "many"
    with pytest.raises(sweep.SweepError, match="config: steps: 'many' is not of type 'integer'"):
        sweep.validate_config(raw, SCHEMA)


def test_kv_heads_must_divide_every_models_heads() -> None:
    cfg = config(**{"cpu_demo.grid.kv_heads": [3]})
    with pytest.raises(sweep.SweepError, match=r"cpu_demo\.grid\.kv_heads: kv_heads \(3\).*divide the 4 heads"):
        sweep.plan_run(cfg, {}, gpus=[])


def test_grouped_means_fewer_key_value_heads_than_the_models_queries() -> None:
    # small has 12 query heads; a wildcard gives the number as text, a record run by hand gives none, a table NaN.
    assert sweep.is_grouped("small", 4) and sweep.is_grouped("small", "1")
    assert not sweep.is_grouped("small", 12) and not sweep.is_grouped("small", "12")
    assert not sweep.is_grouped("small", None) and not sweep.is_grouped("small", float("nan"))
    assert sweep.is_grouped("medium", 12) and not sweep.is_grouped("medium", 16)
    assert not sweep.is_grouped("no-such-model", 1)


def test_duplicates_and_an_empty_grid_are_refused() -> None:
    with pytest.raises(sweep.SweepError, match="duplicate values"):
        sweep.plan_run(config(**{"cpu_demo.grid.seq_len": [64, 64]}), {}, gpus=[])
    with pytest.raises(sweep.SweepError, match="no cell left"):
        sweep.plan_run(config(**{"cpu_demo.grid.exclude": [{"model": "tiny"}]}), {}, gpus=[])


def test_device_resolution() -> None:
    with pytest.raises(sweep.SweepError, match="device: cuda, but no GPU is visible"):
        sweep.plan_run(config(device="cuda"), {}, gpus=[])
    assert sweep.plan_run(config(device="cpu"), {}, gpus=["0"]).device == "cpu"
    only = sweep.plan_run(config(aggregate_only=True), {}, gpus=[])
    assert only.device == "auto" and not only.cpu_demo
    with pytest.raises(sweep.SweepError, match="allow_missing: only with aggregate_only"):
        sweep.plan_run(config(allow_missing=True), {}, gpus=[])


def test_cell_path_and_its_inverse_follow_paramspace() -> None:
    from snakemake.utils import Paramspace

    grid = sweep.plan_run(config(), {}, gpus=[]).grid
    patterns = Paramspace(grid).instance_patterns
    for (_, row), pattern in zip(grid.iterrows(), patterns):
        assert sweep.cell_path(row) == pattern
        assert sweep.cell_axes(f"results/x/cells/{pattern}/cell.json") == {a: str(row[a]) for a in AXES}


def test_memory_cap_check() -> None:
    sweep.check_memory_cap(12, ("NVIDIA H200", 141 * 2**30))
    sweep.check_memory_cap(None, ("NVIDIA H200", 1))
    with pytest.raises(sweep.SweepError, match="memory_cap_gib: 200 GiB exceeds the 141.0 GiB of NVIDIA H200"):
        sweep.check_memory_cap(200, ("NVIDIA H200", 141 * 2**30))


def test_cell_options_name_every_axis_and_setting() -> None:
    plan = sweep.plan_run(config(), {}, gpus=[])
    opts = plan.cell_options(plan.grid.iloc[0])
    for axis in AXES:
        assert f"--{axis.replace('_', '-')}" in opts
    assert opts[opts.index("--batch-policy") + 1] == "fixed" and "--memory-cap-gib" not in opts
    assert opts[opts.index("--run") + 1] == "cpu-demo"


def test_environment_of_a_record() -> None:
    rec = {"env": {"gpu_name": "NVIDIA H200", "torch": "2.11.0", "cuda": "13.0", "cudnn": 91900,
                   "versions": {"flash-attn": "2.8.3", "triton": "3.6.0"}, "gpu": {"index": 1}}}
    assert sweep.environment_of(rec) == {"gpu": "NVIDIA H200", "torch": "2.11.0", "flash-attn": "2.8.3",
                                         "cuda": "13.0", "cudnn": "91900", "triton": "3.6.0"}
    other_gpu_of_the_host = copy.deepcopy(rec)
    other_gpu_of_the_host["env"]["gpu"] = {"index": 0}
    assert sweep.environment_of(other_gpu_of_the_host) == sweep.environment_of(rec)


def test_jobs_take_their_gpu_through_the_runs_lock_folder_and_few_cores_on_a_gpu() -> None:
    gpu = sweep.plan_run(config(), {}, gpus=["0", "1"])
    assert gpu.job_options(["0", "1"]) == ["--gpu-locks", "results/study/.gpulocks", "--gpus", "0,1",
                                           "--preload", "results/study/.preload"]
    assert gpu.threads(16) == (2, 2) and gpu.threads(1) == (1, 1)
    cpu = sweep.plan_run(config(), {}, gpus=[])
    assert cpu.job_options([]) == ["--gpu-locks", "results/cpu-demo/.gpulocks",
                                   "--preload", "results/cpu-demo/.preload"]
    fresh = sweep.plan_run(config(preload=False), {}, gpus=[])
    assert fresh.job_options([]) == ["--gpu-locks", "results/cpu-demo/.gpulocks"]
    assert cpu.threads(2) == (2, 2)  # a CPU cell trains on every core: nothing runs beside it
    # An uncapped warm-up holds its GPU alone: it counts against --resources gpu=K like a timed job; a capped one
    # shares its GPU, and on the CPU no job holds a GPU.
    assert sweep.plan_run(config(memory_cap_gib=None), {}, gpus=["0"]).warmup_gpus() == 1
    assert sweep.plan_run(config(memory_cap_gib=12), {}, gpus=["0"]).warmup_gpus() == 0
    assert cpu.warmup_gpus() == 0
    overlapping = sweep.plan_run(config(window_turns=False), {}, gpus=["0", "1"])
    assert "--no-window-turns" in overlapping.job_options(["0", "1"])
    # Through a cluster's scheduler, which gives each job its GPU: no slots, the rest as before.
    assert gpu.job_options(["0", "1"], slots=False) == ["--preload", "results/study/.preload"]


H100, H200 = 81559 * 2**20, 143771 * 2**20  # nvidia-smi's MiB


def _seats_of(cfg: dict, gpu_bytes: int) -> list[str]:
    """The warm-up seat options the sweep of `cfg` gives its jobs on one GPU of `gpu_bytes`."""
    options = sweep.plan_run(cfg, {}, gpus=["0"]).job_options(["0"], gpu_bytes)
    return options[options.index("--warmups-per-gpu"):options.index("--preload")]


def _seat_options(gpu_bytes: int, **changes) -> list[str]:
    """The warm-up seat options a sweep under a 45 GiB cap gives its jobs on one GPU of `gpu_bytes`."""
    return _seats_of(config(memory_cap_gib=45, **changes), gpu_bytes)


def test_warm_ups_compile_in_compile_seats_where_the_cap_leaves_one_running(tmp_path: Path) -> None:
    """On an H200 (nvidia-smi's 143,771 MiB) under a 45 GiB cap, 8 warm-ups compile while one runs its steps beside
    the timed job; an eager grid, where no warm-up compiles, and `compile_seats: 0` keep two whole seats."""
    def seats(**changes) -> list[str]:
        return _seat_options(H200, **changes)

    assert seats() == ["--warmups-per-gpu", "1", "--compile-seats", "8"]
    assert seats(**{"warmup.compile_seats": 4}) == ["--warmups-per-gpu", "1", "--compile-seats", "4"]
    assert seats(**{"warmup.compile_seats": 0}) == ["--warmups-per-gpu", "2"]
    assert seats(**{"grid.mode": ["eager"]}) == ["--warmups-per-gpu", "2"]


def test_on_an_h100_warm_ups_compile_beside_one_process_and_run_in_the_timed_jobs_place() -> None:
    """On an H100 (nvidia-smi's 81,559 MiB) under a 45 GiB cap, a timed job and a running warm-up do not both fit:
    5 warm-ups compile, and each runs its steps when no timed job holds the GPU (run seats 0)."""
    assert _seat_options(H100) == ["--warmups-per-gpu", "0", "--compile-seats", "5"]


def _overlay_cells(cfg: dict) -> set[tuple]:
    """The cells a config plans: (model, seq_len, attn, mode, kv_heads)."""
    grid = sweep.plan_run(cfg, {}, gpus=["0"]).grid
    return set(grid[["model", "seq_len", "attn", "mode", "kv_heads"]].itertuples(index=False, name=None))


@pytest.mark.parametrize("name, gpu, cells, default, whole", [
    # On an H100: run seats 0 by default, the one whole seat with compile_seats 0.
    ("h100-seats.yaml", H100, {("medium", 4096, "fa2", "compiled", 16),
                               ("medium", 4096, "sdpa_cudnn", "compiled", 16),
                               ("small", 1024, "sdpa", "compiled", 12),
                               ("small", 1024, "fa2_graphbreak", "compiled", 12)},
     ["--warmups-per-gpu", "0", "--compile-seats", "5"], ["--warmups-per-gpu", "1"]),
    # On an H200: compile seats beside one run seat by default, two whole seats with compile_seats 0.
    ("h200-seats.yaml", H200, {("small", 1024, "sdpa", "compiled", 12),
                               ("small", 1024, "flex", "compiled", 12),
                               ("medium", 1024, "sdpa", "compiled", 16),
                               ("medium", 1024, "sdpa_cudnn", "compiled", 16)},
     ["--warmups-per-gpu", "1", "--compile-seats", "8"], ["--warmups-per-gpu", "2"]),
])
def test_a_seating_overlay_plans_four_cells_of_the_grid_with_either_seating(
        name: str, gpu: int, cells: set, default: list[str], whole: list[str], tmp_path: Path, monkeypatch) -> None:
    """config/h100-seats.yaml and h200-seats.yaml over config/modern.yaml: four compiled cells of its grid, and the
    two warm-up seatings their runs compare on their GPU (the default, and `warmup: {compile_seats: 0}`)."""
    monkeypatch.chdir(tmp_path)
    cfg = overlay("modern.yaml", name)
    assert _overlay_cells(cfg) == cells
    assert cells <= _overlay_cells(overlay("modern.yaml"))
    assert _seats_of(cfg, gpu) == default
    assert _seats_of({**cfg, "warmup": {**cfg["warmup"], "compile_seats": 0}}, gpu) == whole


def test_a_partial_aggregation_lists_the_cells_not_measured_yet(tmp_path: Path) -> None:
    cells = [str(tmp_path / name / "cell.json") for name in ("a", "b", "c")]
    (tmp_path / "b").mkdir()
    Path(cells[1]).write_text("{}")
    assert sweep.split_present(cells, allow_missing=False) == (cells, [])
    assert sweep.split_present(cells, allow_missing=True) == ([cells[1]], [cells[0], cells[2]])


def _record(path: Path, source: str = "a" * 64, status: str = "ok", **cell) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    settings = {"batch_policy": "fixed", "steps": 125, "window": 25, "memory_cap_gib": 12.0, "device": "cuda",
                "seed": 0, **cell}
    path.write_text(json.dumps({"status": status, "batch_size": 16, "cell": {"model": "small", **settings},
                                "env": {"code": {"source_sha256": source}}}))
    return str(path)


SETTINGS = {"batch_policy": "fixed", "batch_size": 16, "steps": 125, "window": 25, "memory_cap_gib": 12,
            "device": "cuda", "seed": 0}


def test_a_record_is_stale_when_other_code_or_settings_measured_it(tmp_path: Path) -> None:
    current = _record(tmp_path / "current.json")
    assert sweep.stale_reason(current, "a" * 64, SETTINGS) is None  # a cap of 12 is recorded as 12.0
    assert sweep.stale_reason(tmp_path / "absent.json", "a" * 64, SETTINGS) is None  # a missing record runs anyway
    why = sweep.stale_reason(current, "b" * 64, SETTINGS)
    assert why == "measured by other code (source aaaaaaaaaaaa, now bbbbbbbbbbbb)"
    assert sweep.stale_reason(_record(tmp_path / "steps.json", steps=100), "a" * 64, SETTINGS) == (
        "measured with steps 100, now 125")
    assert "memory_cap_gib" in sweep.stale_reason(_record(tmp_path / "cap.json", memory_cap_gib=16.0), "a" * 64,
                                                  SETTINGS)
    assert "batch_size 16, now 8" in sweep.stale_reason(current, "a" * 64, {**SETTINGS, "batch_size": 8})
    # A record that could not run at its fixed size keeps it whatever the size (nothing to compare).
    oom = _record(tmp_path / "oom.json", status="oom")
    assert sweep.stale_reason(oom, "a" * 64, {**SETTINGS, "batch_size": 8}) is None
    # Settings no record holds are left to the stamp.
    assert sweep.stale_reason(current, "a" * 64, {**SETTINGS, "batch_start": 4}) is None
    (tmp_path / "torn.json").write_text('{"status": "o')
    assert sweep.stale_reason(tmp_path / "torn.json", "a" * 64, SETTINGS).startswith("unreadable")
    assert sweep.stale_records([current, str(tmp_path / "torn.json"), str(tmp_path / "absent.json")], "a" * 64,
                               SETTINGS).keys() == {str(tmp_path / "torn.json")}


def _with_versions(path: str, **versions: str | None) -> str:
    record = json.loads(Path(path).read_text())
    record["env"]["versions"] = {"torch": "2.11.0", "flash-attn-4": None, **versions}
    Path(path).write_text(json.dumps(record))
    return path


def test_an_unsupported_record_is_asked_again_where_its_packages_changed(tmp_path: Path) -> None:
    """Whether a cell can run at all depends on what is installed where it runs: a cell found unsupported without
    flash-attn-4 is measured again once it is installed; an ok record is a result of its environment and stays."""
    now = {"torch": "2.11.0", "flash-attn-4": "4.0.0b18", "numpy": "2.3.0"}
    without = _with_versions(_record(tmp_path / "u.json", status="unsupported"))
    assert sweep.stale_reason(without, "a" * 64, SETTINGS) is None  # not asked: aggregating, say
    assert sweep.stale_reason(without, "a" * 64, SETTINGS, now) == (
        "unsupported with flash-attn-4 not installed, now 4.0.0b18")
    assert sweep.stale_reason(without, "a" * 64, SETTINGS, {**now, "flash-attn-4": None}) is None
    # Removed since, or another version: asked again too.
    assert sweep.stale_reason(_with_versions(_record(tmp_path / "v.json", status="unsupported"),
                                             **{"flash-attn-4": "4.0.0b36"}), "a" * 64, SETTINGS, now) == (
        "unsupported with flash-attn-4 4.0.0b36, now 4.0.0b18")
    # A package that decides nothing about support (numpy; the record has none) is not compared.
    assert sweep.stale_reason(_with_versions(_record(tmp_path / "w.json", status="unsupported"),
                                             **{"flash-attn-4": "4.0.0b18"}), "a" * 64, SETTINGS, now) is None
    ok = _with_versions(_record(tmp_path / "ok.json"))
    assert sweep.stale_reason(ok, "a" * 64, SETTINGS, now) is None
    # Other code comes first.
    assert sweep.stale_reason(without, "b" * 64, SETTINGS, now).startswith("measured by other code")
    assert sweep.stale_records([without, ok], "a" * 64, SETTINGS, now).keys() == {without}


def test_a_partial_aggregation_leaves_stale_records_out(tmp_path: Path) -> None:
    cells = [_record(tmp_path / "a" / "cell.json"), _record(tmp_path / "b" / "cell.json", source="b" * 64),
             str(tmp_path / "c" / "cell.json")]
    left_out = sweep.stale_to_leave_out(cells, sweep.stale_records(cells, "a" * 64, SETTINGS), SETTINGS)
    assert left_out == {cells[1]}
    assert sweep.split_present(cells, allow_missing=True, stale=left_out) == ([cells[0]], [cells[1], cells[2]])
    assert sweep.split_present(cells, allow_missing=False, stale=left_out) == (cells, [])
    # A later repeat of the current code is stale with its cell's first record, whose batch size it was measured
    # at (it is measured again after it), and leaves with it; a missing one is not a stale record.
    repeat, other = _record(tmp_path / "b" / "repeat-2.json"), _record(tmp_path / "a" / "repeat-2.json")
    paths = [*cells, repeat, other, str(tmp_path / "b" / "repeat-3.json")]
    stale = sweep.stale_records(paths, "a" * 64, SETTINGS)
    assert stale[repeat].startswith("measured at the batch size of its cell's first record") and len(stale) == 2
    assert sweep.stale_to_leave_out(paths, stale, SETTINGS) == {cells[1], repeat}


def test_a_run_kept_as_history_is_tabled_as_it_is(tmp_path: Path) -> None:
    """No record of the current code: a run measured by earlier code (possibly several versions that changed nothing
    its cells ran) keeps all its records."""
    records = [_record(tmp_path / "a" / "cell.json", source="o" * 64),
               _record(tmp_path / "b" / "cell.json", source="n" * 64)]
    assert sweep.stale_to_leave_out(records, sweep.stale_records(records, "c" * 64, SETTINGS), SETTINGS) == set()


def test_a_history_run_leaves_out_the_records_of_other_settings(tmp_path: Path) -> None:
    """Records of other code are tabled in a run kept as history, but where some have the run's settings, not those
    measured with others (other steps: the tables' settings line would be wrong for them), nor their later repeats."""
    kept = _record(tmp_path / "a" / "cell.json", source="o" * 64)
    steps = _record(tmp_path / "b" / "cell.json", source="o" * 64, steps=50)
    repeat = _record(tmp_path / "b" / "repeat-2.json", source="o" * 64, steps=50)
    torn = tmp_path / "c" / "cell.json"
    torn.parent.mkdir()
    torn.write_text('{"status": "o')
    # (A repeat with the run's settings whose first record has others: a case the pipeline does not make.)
    odd = _record(tmp_path / "b" / "repeat-3.json", source="o" * 64)
    records = [kept, steps, repeat, odd, str(torn)]
    stale = sweep.stale_records(records, "c" * 64, SETTINGS)
    assert stale[steps].startswith("measured by other code")  # its code is asked first
    assert sweep.other_settings(json.loads(Path(steps).read_text()), SETTINGS) == "measured with steps 50, now 125"
    assert sweep.stale_to_leave_out(records, stale, SETTINGS) == {steps, repeat, odd, str(torn)}
    # None of them with the run's settings: the config is not theirs, and they are tabled as they are.
    assert sweep.stale_to_leave_out(records[1:3], stale, SETTINGS) == set()


def test_repeats_beyond_the_first_sit_beside_its_record() -> None:
    small, medium = "results/r/cells/model~small/seq_len~1024", "results/r/cells/model~medium/seq_len~1024"
    cells = [f"{small}/cell.json", f"{medium}/cell.json"]
    assert sweep.repeat_paths(cells, 1) == []
    assert sweep.repeat_paths(cells, 3) == [
        f"{small}/repeat-2.json", f"{small}/repeat-3.json", f"{medium}/repeat-2.json", f"{medium}/repeat-3.json",
    ]
    assert config()["repeats"] == 1  # the schema's default
    # And each record's file name gives its repeat back.
    assert [sweep.record_repeat(Path(p).stem) for p in cells[:1] + sweep.repeat_paths(cells[:1], 3)] == [1, 2, 3]


def overlay(*names: str) -> dict:
    """config/config.yaml with overlays on top, merged as Snakemake merges --configfile (nested keys update)."""

    def update(base: dict, new: dict) -> None:
        for key, value in new.items():
            if isinstance(value, dict) and isinstance(base.get(key), dict):
                update(base[key], value)
            else:
                base[key] = value

    cfg = yaml.safe_load((ROOT / "config/config.yaml").read_text())
    for name in names:
        update(cfg, yaml.safe_load((ROOT / "config" / name).read_text()))
    sweep.validate_config(cfg, SCHEMA)
    return cfg


def test_the_study_overlays_plan_the_studys_128_cells() -> None:
    for names in (["study-12gib.yaml"], ["study-12gib.yaml", "whole-gpu.yaml"]):
        grid = sweep.plan_run(overlay(*names), {}, gpus=["0"]).grid
        assert len(grid) == 128, names
        assert set(grid["attn"]) == {"naive", "sdpa", "sdpa_flash", "fa2", "fa2_graphbreak"}
        eager = grid[grid["mode"] == "eager"]
        assert set(eager["model"]) == {"medium"} and set(eager["attn"]) == {"sdpa", "sdpa_flash", "fa2"}


def test_a_prior_run_places_each_searched_cells_first_attempt(tmp_path: Path, monkeypatch) -> None:
    """batch.prior_run: each cell's record there, where there is one; refused before any job where it cannot help."""
    monkeypatch.chdir(tmp_path)
    cfg = overlay("study-12gib.yaml", "whole-gpu.yaml")
    cfg["batch"]["prior_run"] = "capped"
    with pytest.raises(sweep.SweepError, match=r"^batch.prior_run: results/capped/cells does not exist"):
        sweep.plan_run(cfg, {}, gpus=["0"])
    plan_cell = {"model": "small", "seq_len": 1024, "attn": "sdpa", "mode": "compiled", "kv_heads": 12,
                 "precision": "fp16", "optimizer": "adamw", "harness": "native"}
    record = Path("results/capped/cells", sweep.cell_path(plan_cell), "cell.json")
    record.parent.mkdir(parents=True)
    record.write_text("{}")
    plan = sweep.plan_run(cfg, {}, gpus=["0"])
    assert plan.prior_record(plan_cell) == str(record)
    assert plan.prior_record({**plan_cell, "seq_len": 2048}) is None  # not measured there: the search as before
    assert "prior_run" not in str(plan.cell_settings)  # not a cell setting: records measured without it stay current
    with pytest.raises(sweep.SweepError, match="only for batch policy search"):
        sweep.plan_run({**cfg, "batch": {**cfg["batch"], "policy": "study"}}, {}, gpus=["0"])
    with pytest.raises(sweep.SweepError, match="'capped' is this run"):
        sweep.plan_run({**cfg, "run": "capped"}, {}, gpus=["0"])
    with pytest.raises(sweep.SweepError, match="prior_run"):
        sweep.validate_config({**cfg, "batch": {**cfg["batch"], "prior_run": "../elsewhere"}}, SCHEMA)


def test_a_searched_cell_s_peers_are_the_grid_s_other_attention_of_its_memory_kind(tmp_path: Path,
                                                                                  monkeypatch) -> None:
    """peer_records: where this run keeps the cell's records with the grid's other attention whose memory grows as
    its does (linear: the flash implementations; quadratic: naive), measured or not; none but for a search."""
    monkeypatch.chdir(tmp_path)
    cfg = overlay("study-12gib.yaml", "whole-gpu.yaml")
    plan = sweep.plan_run(cfg, {}, gpus=["0"])
    cell = {"model": "large", "seq_len": 2048, "attn": "fa2", "mode": "compiled", "kv_heads": 20,
            "precision": "fp16", "optimizer": "adamw8bit", "harness": "native"}
    peers = plan.peer_records(cell)
    assert [sweep.cell_axes(p)["attn"] for p in peers] == ["sdpa", "sdpa_flash", "fa2_graphbreak"]
    assert all(p == f"results/{plan.run}/cells/{sweep.cell_path({**cell, 'attn': a})}/cell.json"
               for p, a in zip(peers, ["sdpa", "sdpa_flash", "fa2_graphbreak"]))
    assert plan.peer_records({**cell, "attn": "naive"}) == []  # the grid's only attention of its kind
    study = sweep.plan_run({**cfg, "batch": {"policy": "study"}}, {}, gpus=["0"])
    assert study.peer_records(cell) == []


def test_a_run_is_compared_only_with_another_run_that_has_a_summary(tmp_path: Path, monkeypatch) -> None:
    """compare_with: refused before any job where the other run is this one or has no summary.csv here; not a cell
    setting (a comparison added later leaves every record current)."""
    monkeypatch.chdir(tmp_path)
    cfg = overlay("study-12gib.yaml", "whole-gpu.yaml")
    cfg["compare_with"] = ["capped"]
    with pytest.raises(sweep.SweepError, match=r"^compare_with.0: results/capped/summary.csv does not exist"):
        sweep.plan_run(cfg, {}, gpus=["0"])
    Path("results/capped").mkdir(parents=True)
    Path("results/capped/summary.csv").write_text("model\n")
    plan = sweep.plan_run(cfg, {}, gpus=["0"])
    assert plan.settings["compare_with"] == ["capped"] and "compare" not in str(plan.cell_settings)
    with pytest.raises(sweep.SweepError, match="compare_with.0: 'capped' is this run"):
        sweep.plan_run({**cfg, "run": "capped"}, {}, gpus=["0"])
    with pytest.raises(sweep.SweepError, match="compare_with"):
        sweep.validate_config({**cfg, "compare_with": ["../elsewhere"]}, SCHEMA)
    plain = overlay("study-12gib.yaml")
    sweep.validate_config(plain, SCHEMA)
    assert plain["compare_with"] == []


def test_the_modern_overlay_is_a_designed_grid_of_at_most_250_cells() -> None:
    from attnsweep.vocabulary import ATTENTION, MODES

    grid = sweep.plan_run(overlay("modern.yaml"), {}, gpus=["0"]).grid
    assert len(grid) <= 250
    # Every implementation but SDPA's math reference, in every mode, at the shortest and longest context.
    for seq_len in (1024, 16384):
        cells = grid[grid["seq_len"] == seq_len]
        assert set(cells["attn"]) == set(ATTENTION) - {"sdpa_math"}
        assert set(cells["mode"]) == set(MODES)
    # A graph break only exists when compiling.
    assert grid[grid["attn"].str.endswith("_graphbreak")]["mode"].ne("eager").all()
    # Grouped and multi-query heads on a slice, for kernels that run them natively and for repeated heads.
    grouped = grid[grid["kv_heads"].astype(str).isin(["4", "1"])]
    assert {"fa2", "fa4", "flex", "sdpa", "naive"} <= set(grouped["attn"]) and len(grouped) >= 20
    assert set(grid["precision"]) == {"bf16"} and set(grid["optimizer"]) == {"adamw_fused"}


def test_the_tokens_policy_is_a_cell_setting_checked_before_any_job() -> None:
    cfg = config(**{"batch.policy": "tokens", "batch.tokens": 4096})
    plan = sweep.plan_run(cfg, {}, gpus=["0"])
    assert plan.cell_settings["batch_tokens"] == 4096 and "batch_start" not in plan.cell_settings
    opts = plan.cell_options(plan.grid.iloc[0])
    assert opts[opts.index("--batch-policy") + 1] == "tokens" and opts[opts.index("--batch-tokens") + 1] == "4096"
    with pytest.raises(sweep.SweepError, match="batch.*tokens"):  # the schema: the policy needs its tokens
        config(**{"batch.policy": "tokens"})
    with pytest.raises(sweep.SweepError, match=r"batch.tokens: only for batch policy tokens \(this run's is search\)"):
        sweep.plan_run(config(**{"batch.policy": "search", "batch.tokens": 4096}), {}, gpus=["0"])
    longest = max(cfg["grid"]["seq_len"])
    with pytest.raises(sweep.SweepError, match=f"batch.tokens: 16 is less than the grid's longest context .{longest}."):
        sweep.plan_run(config(**{"batch.policy": "tokens", "batch.tokens": 16}), {}, gpus=["0"])


def test_a_part_measures_the_first_cells_then_finishes_started_cells_before_the_rest() -> None:
    first = [{"seq_len": 2048, "attn": ["fa2", "sdpa"], "mode": "compiled"}]
    plan = sweep.plan_run(config(first=first), {}, gpus=["0"])
    named = plan.grid[(plan.grid["seq_len"] == 2048) & plan.grid["attn"].isin(["fa2", "sdpa"])
                      & (plan.grid["mode"] == "compiled")].to_dict("records")
    assert named and set(plan.first) == {sweep.cell_path(c) for c in named}
    other = plan.grid[plan.grid["seq_len"] == 256].to_dict("records")[0]
    warmups = {(c, r): plan.priority(cell, r, timed=False) for c, cell in (("first", named[0]), ("other", other))
               for r in (1, 2)}
    # The first cell's repeats (a later one before repeat 1), then another started cell's later repeat, then the rest.
    assert warmups[("first", 2)] > warmups[("first", 1)] > warmups[("other", 2)] > warmups[("other", 1)]
    # A finished warm-up's timed job goes before every warm-up.
    timed = [plan.priority(cell, r, timed=True) for cell in (named[0], other) for r in (1, 2)]
    assert min(timed) > max(warmups.values())
    assert sweep.plan_run(config(), {}, gpus=["0"]).first == {}
    # Only a cell `first` names may start though expected longer than a whole part (start-before-deadline.sh).
    assert plan.first_grace_s(named[0]) == sweep.FIRST_GRACE_S > 0 and plan.first_grace_s(other) == 0


def test_first_entries_are_measured_in_their_order() -> None:
    """Each entry of `first` goes before the later ones (a cell in two, with its earliest), and a cell it names,
    with its later repeats, before every other; among the others a started cell's later repeat goes before a new
    cell; a finished warm-up's timed job before every warm-up."""
    first = [{"seq_len": 2048, "attn": "fa2", "mode": "compiled"}, {"seq_len": 1024},
             {"seq_len": [1024, 2048], "attn": "sdpa"}]
    plan = sweep.plan_run(config(first=first), {}, gpus=["0"])

    def cell(seq_len: int, attn: str) -> dict:
        rows = plan.grid[(plan.grid["seq_len"] == seq_len) & (plan.grid["attn"] == attn)
                         & (plan.grid["mode"] == "compiled")]
        return rows.to_dict("records")[0]

    fa2_2048, sdpa_1024, sdpa_2048, other = cell(2048, "fa2"), cell(1024, "sdpa"), cell(2048, "sdpa"), cell(256, "sdpa")
    assert [plan.first.get(sweep.cell_path(c), 0) for c in (fa2_2048, sdpa_1024, sdpa_2048, other)] == [3, 2, 1, 0]
    new = [plan.priority(c, 1, timed=False) for c in (fa2_2048, sdpa_1024, sdpa_2048, other)]
    assert new == sorted(new, reverse=True) and len(set(new)) == 4
    later = [plan.priority(c, 2, timed=False) for c in (fa2_2048, sdpa_1024, sdpa_2048, other)]
    # Entry by entry, a later repeat before repeat 1; the cells no entry names last.
    assert later[0] > new[0] > later[1] > new[1] > later[2] > new[2] > later[3] > new[3]
    warmups = [plan.priority(c, r, timed=False) for c in (fa2_2048, other) for r in (1, 2)]
    assert plan.priority(other, 1, timed=True) > max(warmups)


def test_a_warm_up_expected_over_half_the_part_goes_first_among_its_tier() -> None:
    """A warm-up expected to take more than half the part (is_long_warmup) goes before the others of its `first`
    entry, or of the cells no entry names, later repeats included; not before a cell `first` names, and never
    before a timed job."""
    plan = sweep.plan_run(config(first=[{"seq_len": 2048, "attn": "fa2", "mode": "compiled"}]), {}, gpus=["0"])
    named = plan.grid[(plan.grid["seq_len"] == 2048) & (plan.grid["attn"] == "fa2")
                      & (plan.grid["mode"] == "compiled")].to_dict("records")[0]
    other = plan.grid[plan.grid["seq_len"] == 256].to_dict("records")[0]
    long_new, long_later = (plan.priority(other, r, timed=False, long=True) for r in (1, 2))
    short_new, short_later = (plan.priority(other, r, timed=False) for r in (1, 2))
    assert plan.priority(named, 1, timed=False) > long_later > long_new > short_later > short_new
    assert plan.priority(named, 2, timed=False, long=True) > plan.priority(named, 2, timed=False) > long_later
    jobs = [(c, r, lg) for c in (named, other) for r in (1, 2) for lg in (False, True)]
    timed = [plan.priority(c, r, timed=True, long=lg) for c, r, lg in jobs]
    assert min(timed) > max(plan.priority(c, r, timed=False, long=lg) for c, r, lg in jobs)
    # A timed job's rank does not move with `long` (only warm-ups wait on the cores).
    assert plan.priority(other, 1, timed=True, long=True) == plan.priority(other, 1, timed=True)


def test_a_long_warm_up_is_one_expected_over_half_the_part() -> None:
    start = {sweep.PART_START_ENV: "1000"}
    assert sweep.is_long_warmup(301, 1600, start) and not sweep.is_long_warmup(300, 1600, start)
    # Nothing is long without a deadline, a part start that is a time, or an estimate (0: nothing known).
    assert not sweep.is_long_warmup(301, None, start)
    assert not sweep.is_long_warmup(301, 1600, {}) and not sweep.is_long_warmup(301, 1600, {sweep.PART_START_ENV: "x"})
    assert not sweep.is_long_warmup(0, 1001, start)


def test_first_is_checked_like_exclude_and_must_name_a_cell() -> None:
    with pytest.raises(sweep.SweepError, match=r"^first\.0: \{'seq_len': 100\} matches no cell of the grid"):
        sweep.plan_run(config(first=[{"seq_len": 100}]), {}, gpus=["0"])
    with pytest.raises(sweep.SweepError, match=r"^first: unknown attn \['flash3'\]"):
        sweep.plan_run(config(first=[{"attn": "flash3"}]), {}, gpus=["0"])
    with pytest.raises(sweep.SweepError, match=r"first\.0.*'colour' was unexpected"):
        sweep.validate_config({**yaml.safe_load((ROOT / "config/config.yaml").read_text()),
                               "first": [{"colour": "red"}]}, SCHEMA)


def test_the_cpu_demo_does_not_take_the_gpu_grids_first_cells() -> None:
    # The top level's entry names GPU-grid cells; the demo's grid (tiny) has none of them, and is not refused.
    cfg = config(first=[{"model": "small", "seq_len": 1024}])
    assert sweep.plan_run(cfg, {}, gpus=[]).first == {}
    demo = sweep.plan_run(config(**{"cpu_demo.first": [{"seq_len": 64}]}), {}, gpus=[])
    assert demo.first and all("seq_len~64/" in p for p in demo.first)


def test_the_cpu_demo_is_not_compared_with_the_gpu_grids_runs(tmp_path: Path, monkeypatch) -> None:
    """The top level's compare_with names runs of the GPU grid, which has no cell of the demo's (tiny) grid: the demo
    takes it only given explicitly (on the command line or in an overlay)."""
    monkeypatch.chdir(tmp_path)
    Path("results/gpu-run").mkdir(parents=True)
    Path("results/gpu-run/summary.csv").write_text("model\n")
    cfg = config(compare_with=["gpu-run"])
    demo = sweep.plan_run(cfg, {}, gpus=[])
    assert demo.cpu_demo and demo.settings["compare_with"] == []
    assert sweep.plan_run(cfg, {"compare_with": ["gpu-run"]}, gpus=[]).settings["compare_with"] == ["gpu-run"]
