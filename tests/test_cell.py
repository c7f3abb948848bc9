"""The grid cell: CLI, JSON record, bad input, batch policies, timing and training facts (CPU)."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from attnsweep import batching, cellio, flops
from attnsweep.attempt import AttemptResult
from attnsweep.cell import run_cell
from attnsweep.spec import CellInputError, CellSpec
from attnsweep.cli import main as cli_main
from attnsweep.data import synthetic_batches
from attnsweep.model import GPT, model_config

TINY = dict(model="tiny", seq_len=32, precision="fp32", steps=12, window=4, device="cpu", batch_size=2)


def test_cli_writes_a_valid_record(tmp_path):
    out = tmp_path / "cell.json"
    (tmp_path / ".cell.json.k1ll3d.tmp").write_text('{"status": ')  # what a job killed mid-write leaves
    # A typical cell invocation, in long form; short run so the suite stays fast.
    rc = cli_main(["cell", "--model", "tiny", "--attn", "sdpa", "--mode", "eager", "--seq-len", "64",
                   "--batch-size", "4", "--device", "cpu", "--steps", "10", "--window", "4", "--out", str(out)])
    assert rc == 0
    rec = cellio.load_cell(out)
    for key in ("status", "tokens_per_sec", "batch_size", "params", "env"):
        assert key in rec
    assert rec["status"] == "ok" and rec["batch_size"] == 4
    assert rec["tokens_per_sec"] > 0 and len(rec["step_times_s"]) == 10
    st = rec["tokens_per_sec_stats"]
    assert st["n"] == 4 and st["min"] <= st["median"] <= st["max"]
    assert rec["env"]["torch"] == torch.__version__ and rec["env"]["code"]["source_sha256"]
    # The host's CPU: a partly host-bound step runs at its speed (this machine's /proc/cpuinfo names it).
    assert rec["env"]["cpu_model"] and rec["env"]["cpu_count"] >= rec["env"]["cpu_affinity"] >= 1
    assert rec["kernels"]["attention"], "the profiled step must list the attention operators that ran"
    assert not list(tmp_path.glob(".*.tmp")), "no temporary file may be left behind"


def test_cli_help_documents_every_option(capsys):
    with pytest.raises(SystemExit):
        cli_main(["cell", "--help"])
    text = capsys.readouterr().out
    for opt in ("--model", "--attn", "--mode", "--seq-len", "--kv-heads", "--precision", "--optimizer", "--harness",
                "--batch-policy", "--batch-size", "--batch-start", "--steps", "--window", "--memory-cap-gib",
                "--device", "--seed", "--run", "--no-profile", "--isolate", "--out"):
        assert opt in text


@pytest.mark.parametrize(
    "args, words",
    [
        (["--model", "huge"], ["--model", "tiny", "small"]),
        (["--attn", "magic"], ["--attn", "naive", "fa2"]),
        (["--seq-len", "-5"], ["--seq-len", "positive"]),
        (["--window", "50", "--steps", "10"], ["--window", "--steps"]),
        (["--mode", "jit"], ["--mode", "eager", "compiled"]),
        (["--memory-cap-gib", "0"], ["--memory-cap-gib", "positive"]),
    ],
)
def test_bad_input_is_refused_with_the_option_named(tmp_path, capsys, args, words):
    base = {"--model": "tiny", "--attn": "sdpa", "--seq-len": "32", "--batch-size": "2", "--device": "cpu"}
    for k, v in zip(args[::2], args[1::2]):
        base[k] = v
    argv = ["cell", "--out", str(tmp_path / "c.json")] + [x for kv in base.items() for x in kv]
    with pytest.raises(SystemExit) as exc:
        cli_main(argv)
    assert exc.value.code == 2
    err = capsys.readouterr().err
    for w in words:
        assert w in err
    assert not (tmp_path / "c.json").exists()


def test_kv_heads_must_divide_heads():
    with pytest.raises(CellInputError, match="kv"):
        CellSpec(attn="sdpa", mode="eager", kv_heads=3, **TINY).validate()


def test_cuda_requested_without_gpu_fails_clearly():
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    spec = CellSpec(attn="sdpa", mode="eager", **{**TINY, "device": "cuda"})
    with pytest.raises(CellInputError, match="no CUDA GPU"):
        run_cell(spec)


def test_unsupported_combination_is_a_result_not_a_crash(tmp_path):
    rec = run_cell(CellSpec(attn="fa2", mode="eager", **TINY))
    assert rec["status"] == "unsupported" and "cpu" in rec["reason"].lower()
    cellio.validate_cell(rec)
    rec = run_cell(CellSpec(attn="sdpa", mode="eager", optimizer="adamw8bit", **TINY))
    assert rec["status"] == "unsupported" and "CUDA" in rec["reason"]


def test_the_record_says_how_grouped_key_value_heads_ran():
    from attnsweep import attention

    assert attention.kv_heads_handling("sdpa", n_head=4, n_kv_head=4) == "multi-head"
    assert attention.kv_heads_handling("sdpa", n_head=4, n_kv_head=1) == "native"  # SDPA's enable_gqa
    assert attention.kv_heads_handling("naive", n_head=4, n_kv_head=1) == "repeated"
    assert attention.kv_heads_handling("fa2", n_head=4, n_kv_head=2) == "native"
    for attn, handling in (("sdpa", "native"), ("naive", "repeated")):
        rec = run_cell(CellSpec(attn=attn, mode="eager", kv_heads=2, **TINY))
        cellio.validate_cell(rec)
        assert rec["status"] == "ok" and rec["attention"] == {"kv_heads": handling}
    assert list(rec).index("attention") == list(rec).index("model_config") + 1  # the schema's order


def test_fused_adamw_trains_like_the_foreach_one():
    """The same AdamW with PyTorch's fused kernel: the same settings, so the same losses up to rounding."""
    fused = run_cell(CellSpec(attn="sdpa", mode="eager", optimizer="adamw_fused", **TINY))
    foreach = run_cell(CellSpec(attn="sdpa", mode="eager", **TINY))
    cellio.validate_cell(fused)
    assert fused["status"] == "ok" and fused["cell"]["optimizer"] == "adamw_fused"
    assert fused["loss"]["values"] == pytest.approx(foreach["loss"]["values"], rel=1e-4)


def test_compiled_cell_counts_graphs_and_falling_loss():
    rec = run_cell(CellSpec(attn="sdpa", mode="compiled", **{**TINY, "steps": 20, "window": 5}))
    assert rec["status"] == "ok", rec["reason"]
    assert rec["compile"]["graphs"] == 1 and rec["compile"]["graph_breaks"] == 0
    # A cold cell's private cache: its one graph compiled (a miss in each cache), nothing bypassed.
    caches = rec["compile"]["caches"]
    assert caches["fx_graph"].get("miss", 0) >= 1 and caches["aot_autograd"].get("miss", 0) >= 1, caches
    assert not any(c.get("bypass") for c in caches.values()), caches
    # The first step includes tracing and compilation: far slower than a steady-state step.
    assert rec["compile"]["first_step_s"] > 3 * sorted(rec["step_times_s"])[len(rec["step_times_s"]) // 2]
    assert math.isfinite(rec["loss"]["start"]) and rec["loss"]["end"] < rec["loss"]["start"]


def test_diverged_loss_is_reported_with_its_step(monkeypatch):
    real_forward = GPT.forward
    calls = {"n": 0}

    def poisoned(self, idx, targets=None):
        logits, loss = real_forward(self, idx, targets)
        calls["n"] += 1
        return logits, loss * float("nan") if calls["n"] >= 4 else loss

    monkeypatch.setattr(GPT, "forward", poisoned)
    rec = run_cell(CellSpec(attn="sdpa", mode="eager", profile=False, **TINY))
    assert rec["status"] == "diverged" and "step 4" in rec["reason"]
    assert rec["tokens_per_sec"] is None and rec["loss"]["nonfinite_step"] == 4
    cellio.validate_cell(rec)


def test_search_policy_uses_binary_search_and_records_attempts(monkeypatch):
    import attnsweep.cell as cell_mod

    tried = []

    real_attempt = cell_mod.run_attempt

    def fake_attempt(spec, b, device, **kw):
        tried.append(b)
        if b > 13:
            return AttemptResult("oom", "CUDA out of memory (simulated)")
        return real_attempt(spec, b, device, **kw)

    monkeypatch.setattr(cell_mod, "run_attempt", fake_attempt)
    spec = CellSpec(attn="sdpa", mode="eager", **{**TINY, "batch_size": None, "batch_policy": "search",
                                                   "batch_start": 64, "profile": False, "steps": 4, "window": 2})
    rec = run_cell(spec)
    assert rec["status"] == "ok" and rec["batch_size"] == 8  # the study's ladder: 64, 56, ..., 16, 8, 7, ...
    assert len(tried) < len(batching.step_down(64)) / 2, "binary search must need far fewer attempts than the ladder"
    assert [a["batch_size"] for a in rec["batch_attempts"]] == tried
    assert {a["outcome"] for a in rec["batch_attempts"]} == {"ok", "oom"}


def test_nothing_fits_is_status_oom(monkeypatch):
    import attnsweep.cell as cell_mod

    monkeypatch.setattr(cell_mod, "run_attempt", lambda s, b, d, **kw: AttemptResult("oom", "simulated"))
    rec = run_cell(CellSpec(attn="sdpa", mode="eager", **{**TINY, "batch_size": None, "batch_policy": "search",
                                                           "batch_start": 16}))
    assert rec["status"] == "oom" and rec["batch_size"] is None and len(rec["batch_attempts"]) >= 1
    cellio.validate_cell(rec)


def _search_spec(**kw) -> CellSpec:
    return CellSpec(attn="sdpa", mode="eager", **{**TINY, "batch_size": None, "batch_policy": "search",
                                                  "batch_start": 64, "profile": False, "steps": 4, "window": 2, **kw})


def _counting_attempts(monkeypatch, oom_above: int = 13) -> list[int]:
    import attnsweep.cell as cell_mod

    tried: list[int] = []
    real_attempt = cell_mod.run_attempt

    def fake_attempt(spec, b, device, **kw):
        tried.append(b)
        if b > oom_above:
            return AttemptResult("oom", "CUDA out of memory (simulated)")
        return real_attempt(spec, b, device, **kw)

    monkeypatch.setattr(cell_mod, "run_attempt", fake_attempt)
    return tried


def test_a_later_repeat_warms_up_at_repeat_1s_batch_size_in_one_attempt(monkeypatch, tmp_path):
    from attnsweep.cell import warm_up

    tried = _counting_attempts(monkeypatch)
    spec = _search_spec()
    first = warm_up(spec, tmp_path / "r1")
    searched = list(tried)
    assert first.status == "ok" and first.batch_size == 8 and len(searched) > 1
    record_1 = {"cell": spec.record(), "status": "ok", "reason": None, "batch_size": first.batch_size}
    tried.clear()
    second = warm_up(spec, tmp_path / "r2", record_1)
    assert second.status == "ok" and second.batch_size == 8 and tried == [8]  # no search: one attempt at 8
    assert [a["batch_size"] for a in second.batch_attempts] == [8]
    assert second.batch_note.startswith("repeat 1's batch size, 8")


def test_a_later_repeat_of_a_cell_that_did_not_fit_is_not_tried_again(monkeypatch, tmp_path):
    from attnsweep.cell import warm_up

    tried = _counting_attempts(monkeypatch, oom_above=0)
    spec = _search_spec()
    record_1 = {"cell": spec.record(), "status": "oom", "reason": "no batch size fits", "batch_size": None}
    result = warm_up(spec, tmp_path / "r2", record_1)
    assert result.status == "oom" and tried == [] and "repeat 1" in result.reason
    # Repeat 1 failed with an error (possibly passing): a later repeat searches on its own.
    record_1 = {"cell": spec.record(), "status": "error", "reason": "a crash", "batch_size": None}
    assert warm_up(spec, tmp_path / "r3", record_1).status == "oom" and tried  # its own search, every size out


def test_a_later_repeat_whose_batch_no_longer_fits_is_an_error_that_says_so(monkeypatch, tmp_path):
    from attnsweep.cell import warm_up

    _counting_attempts(monkeypatch, oom_above=4)
    spec = _search_spec()
    record_1 = {"cell": spec.record(), "status": "ok", "reason": None, "batch_size": 8}
    result = warm_up(spec, tmp_path / "r2", record_1)
    assert result.status == "error"
    assert "batch size 8, which fitted in repeat 1, ran out of memory in this repeat" in result.reason


def test_a_repeat_1_record_of_another_cell_is_refused_before_anything_runs(monkeypatch, tmp_path):
    from attnsweep.cell import warm_up

    tried = _counting_attempts(monkeypatch)
    record_1 = {"cell": _search_spec(seq_len=64).record(), "status": "ok", "reason": None, "batch_size": 8}
    with pytest.raises(CellInputError, match="another cell: seq_len 64 \\(not 32\\)"):
        warm_up(_search_spec(), tmp_path / "r2", record_1)
    assert tried == []


def test_a_cold_later_repeat_runs_at_repeat_1s_batch_size(monkeypatch, tmp_path):
    tried = _counting_attempts(monkeypatch)
    spec = _search_spec()
    record_1 = {"cell": spec.record(), "status": "ok", "reason": None, "batch_size": 8}
    rec = run_cell(spec, record_1)
    assert rec["status"] == "ok" and rec["batch_size"] == 8 and tried == [8]
    assert rec["batch_note"].startswith("repeat 1's batch size, 8")
    out = tmp_path / "r2.json"
    (tmp_path / "cell.json").write_text(json.dumps(rec))  # a valid record, standing in for repeat 1's
    assert cli_main(["cell", "--model", "tiny", "--attn", "sdpa", "--mode", "eager", "--seq-len", "32",
                     "--batch-policy", "search", "--batch-start", "64", "--device", "cpu", "--steps", "4",
                     "--window", "2", "--no-profile", "--batch-from", str(tmp_path / "cell.json"),
                     "--out", str(out)]) == 0
    assert cellio.load_cell(out)["batch_size"] == 8 and tried[-1] == 8 and len(tried) == 2


def test_batch_from_is_refused_beside_a_warm_up(tmp_path, capsys):
    with pytest.raises(SystemExit):
        cli_main(["cell", "--model", "tiny", "--attn", "sdpa", "--seq-len", "32", "--device", "cpu",
                  "--warmup", "w.json", "--cache", "c", "--batch-from", "cell.json", "--out", str(tmp_path / "o.json")])
    assert "--batch-from is for a cold repeat" in capsys.readouterr().err


def test_a_prior_record_places_the_first_attempt_and_the_answer_stays_the_search_s(monkeypatch, tmp_path):
    """Another run's record of the cell (peak 3 GiB at batch 4) puts the first attempt where a line through it meets
    the budget (8 on the ladder from 64), not at a small batch; the answer is the same as without it."""
    import attnsweep.cell as cell_mod
    from attnsweep.cell import warm_up

    monkeypatch.setattr(cell_mod, "_budget", lambda spec, device: 12 * 2**30)  # a GPU's budget: the search predicts
    tried = _counting_attempts(monkeypatch)
    spec = _search_spec()
    plain = warm_up(spec, tmp_path / "plain")
    assert tried[0] == 2  # without a prior: a small batch first, for a line
    tried.clear()
    prior = {"cell": {**spec.record(), "run": "capped"}, "status": "ok", "reason": None, "batch_size": 4,
             "peak_memory_bytes": 3 * 2**30}
    placed = warm_up(spec, tmp_path / "prior", prior=prior)
    assert tried[0] == 8 and placed.batch_size == plain.batch_size == 8
    assert "first attempt placed by run capped's peak at batch size 4 (3.00 GiB)" in placed.batch_note
    with pytest.raises(CellInputError, match="the prior record given is of another cell: seq_len 64"):
        warm_up(spec, tmp_path / "other", prior={**prior, "cell": {**prior["cell"], "seq_len": 64}})


def test_a_peer_within_the_same_memory_places_the_first_attempt_before_another_run_s(monkeypatch, tmp_path):
    """A record of the cell with another attention of the same memory kind, measured within the same memory, places
    the first attempt ahead of another run's record (a line from near the budget has less to extrapolate); one
    measured within other memory is passed over; one of another cell, or of attention whose memory grows otherwise
    (naive's with the square of the context), is refused before anything runs."""
    import attnsweep.cell as cell_mod
    from attnsweep.cell import warm_up

    budget = 12 * 2**30
    monkeypatch.setattr(cell_mod, "_budget", lambda spec, device: budget)
    tried = _counting_attempts(monkeypatch)
    spec = _search_spec()
    prior = {"cell": {**spec.record(), "run": "capped"}, "status": "ok", "reason": None, "batch_size": 2,
             "peak_memory_bytes": 2**30}
    by_prior = warm_up(spec, tmp_path / "prior", prior=prior)
    assert tried[0] == 16  # the capped run's line, from batch 2, reaches the budget far above the answer
    peer = {"cell": {**spec.record(), "attn": "sdpa_flash", "run": "here"}, "status": "ok", "reason": None,
            "batch_size": 8, "peak_memory_bytes": 10 * 2**30, "env": {"gpu_memory_bytes": budget}}
    tried.clear()
    placed = warm_up(spec, tmp_path / "peer", prior=prior, peers=[peer])
    assert tried[0] == 8 and placed.batch_size == by_prior.batch_size == 8 and len(tried) < 4
    assert "first attempt placed by run here's sdpa_flash peak at batch size 8 (10.00 GiB)" in placed.batch_note
    tried.clear()
    elsewhere = {**peer, "env": {"gpu_memory_bytes": 80 * 2**30}}
    assert "capped's peak" in warm_up(spec, tmp_path / "elsewhere", prior=prior, peers=[elsewhere]).batch_note
    assert tried[0] == 16
    with pytest.raises(CellInputError, match="the peer record of 'sdpa_flash' given is of another cell: seq_len 64"):
        warm_up(spec, tmp_path / "other", peers=[{**peer, "cell": {**peer["cell"], "seq_len": 64}}])
    with pytest.raises(CellInputError, match="'naive' given is of attention whose memory grows with the square of "
                       "the context, where sdpa's grows linearly"):
        run_cell(spec, peers=[{**peer, "cell": {**peer["cell"], "attn": "naive"}}])
    # Of several peers, the one whose peak came nearest the budget; without a budget (the CPU), the prior as given.
    lower = {**peer, "batch_size": 4, "peak_memory_bytes": 6 * 2**30}
    assert cell_mod.placing_record(prior, [lower, peer], budget) is peer
    assert cell_mod.placing_record(prior, [lower, peer], None) is prior


def test_batch_peers_not_measured_yet_are_passed_over_and_refused_beside_a_warm_up(monkeypatch, tmp_path, capsys):
    tried = _counting_attempts(monkeypatch)
    out = tmp_path / "w.json"
    args = ["warmup", "--model", "tiny", "--attn", "sdpa", "--mode", "eager", "--seq-len", "32", "--device", "cpu",
            "--batch-policy", "search", "--batch-start", "16", "--steps", "4", "--window", "2", "--no-profile",
            "--cache", str(tmp_path / "c"), "--out", str(out)]
    assert cli_main([*args, "--batch-peers", str(tmp_path / "not-yet.json")]) == 0
    assert json.loads(out.read_text())["status"] == "ok" and tried
    (tmp_path / "bad.json").write_text("{}")
    with pytest.raises(SystemExit):
        cli_main([*args, "--batch-peers", str(tmp_path / "not-yet.json"), str(tmp_path / "bad.json")])
    assert f"--batch-peers {tmp_path / 'bad.json'}:" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        cli_main(["cell", "--model", "tiny", "--attn", "sdpa", "--seq-len", "32", "--device", "cpu",
                  "--warmup", "w.json", "--cache", "c", "--batch-peers", "cell.json",
                  "--out", str(tmp_path / "o.json")])
    assert "--batch-peers is for a search" in capsys.readouterr().err


def test_batch_prior_is_refused_beside_a_warm_up_and_must_be_a_record(tmp_path, capsys):
    with pytest.raises(SystemExit):
        cli_main(["cell", "--model", "tiny", "--attn", "sdpa", "--seq-len", "32", "--device", "cpu",
                  "--warmup", "w.json", "--cache", "c", "--batch-prior", "cell.json",
                  "--out", str(tmp_path / "o.json")])
    assert "--batch-prior is for a search" in capsys.readouterr().err
    (tmp_path / "bad.json").write_text("{}")
    with pytest.raises(SystemExit):
        cli_main(["warmup", "--model", "tiny", "--attn", "sdpa", "--seq-len", "32", "--device", "cpu", "--cache",
                  str(tmp_path / "c"), "--batch-prior", str(tmp_path / "bad.json"), "--out", str(tmp_path / "w.json")])
    assert f"--batch-prior {tmp_path / 'bad.json'}:" in capsys.readouterr().err


def test_mfu_formula():
    cfg = model_config("small", block_size=1024)
    n = 85_000_000
    assert flops.flops_per_token(n_params_non_embedding=n, n_layer=12, n_head=12, head_dim=64, seq_len=1024) == (
        6 * n + 12 * 12 * 12 * 64 * 1024)
    peak, src = flops.peak_flops("NVIDIA H100 80GB HBM3", "fp16")
    assert peak == 989e12 and "SXM" in src
    assert flops.peak_flops("NVIDIA H100 PCIe", "bf16")[0] == 756e12
    assert flops.peak_flops(None, "fp16")[0] is None
    assert flops.mfu(1e5, 10**9, 1e15) == pytest.approx(0.1)
    assert cfg.head_dim == 64


def test_synthetic_data_is_learnable_structure():
    (x, y), = synthetic_batches(vocab_size=512, batch_size=8, seq_len=64, n_batches=1, device=torch.device("cpu"))
    assert x.shape == y.shape == (8, 64) and torch.equal(x[:, 1:], y[:, :-1])
    # Most transitions follow one fixed successor map: the most common successor of a token dominates.
    pairs = {}
    for a, b in zip(x.flatten().tolist(), y.flatten().tolist()):
        pairs.setdefault(a, []).append(b)
    agree = sum(max(v.count(t) for t in set(v)) for v in pairs.values()) / sum(len(v) for v in pairs.values())
    assert agree > 0.8


def test_atomic_write_leaves_old_file_intact_on_failure(tmp_path):
    path = tmp_path / "x.json"
    cellio.write_json_atomic(path, {"a": 1})
    with pytest.raises(ValueError):
        cellio.write_json_atomic(path, {"a": float("nan")})  # refused mid-write
    assert json.loads(path.read_text()) == {"a": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["x.json"]


def test_a_jobs_output_loses_the_temporaries_killed_writers_left(tmp_path):
    path = tmp_path / "cell.json"
    stale = [tmp_path / ".cell.json.abc123.tmp", tmp_path / ".cell.json.x_y.tmp"]
    for tmp in stale:
        tmp.write_text('{"half": ')
    other = tmp_path / ".repeat-2.json.abc.tmp"  # another output's: not this job's to remove
    other.write_text("{")
    assert cellio.remove_stale_temporaries(path) == sorted(stale)
    assert not any(t.exists() for t in stale) and other.exists()
    assert cellio.remove_stale_temporaries(tmp_path / "missing" / "cell.json") == []


def test_a_temporary_its_writer_never_finished_is_what_the_next_job_removes(tmp_path):
    """The record's writer (no suffix) and the report's (the output's suffix) make their temporaries with one helper:
    the cleanup's pattern finds each, and only the one of its own output and suffix."""
    import os

    for out, suffix in ((tmp_path / "cell.json", ""), (tmp_path / "speedup.png", ".png")):
        # A writer killed mid-block never leaves it; kept referenced, as a dropped block removes its temporary.
        block = cellio.atomic_temporary(out, suffix)
        fd, tmp = block.__enter__()
        os.close(fd)
        assert tmp.name.startswith(f".{out.name}.") and tmp.name.endswith(f".tmp{suffix}")
        assert cellio.remove_stale_temporaries(out, ".other") == []
        assert cellio.remove_stale_temporaries(out, suffix) == [tmp] and not tmp.exists()
    assert list(tmp_path.iterdir()) == []


def test_atomic_write_gives_the_file_the_usual_permissions(tmp_path):
    """Not mkstemp's private 0600: a result is readable wherever a file written with open() would be."""
    import os
    import stat

    old = os.umask(0o022)
    try:
        cellio.write_json_atomic(tmp_path / "x.json", {"a": 1})
        os.umask(0o077)
        cellio.write_json_atomic(tmp_path / "y.json", {"a": 1})
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "x.json").stat().st_mode) == 0o644
    assert stat.S_IMODE((tmp_path / "y.json").stat().st_mode) == 0o600


def test_load_cell_names_the_bad_file(tmp_path):
    bad = tmp_path / "cell.json"
    bad.write_text('{"status": "ok", "tokens')
    with pytest.raises(ValueError, match="cell.json.*not JSON"):
        cellio.load_cell(bad)
    bad.write_text(json.dumps({"schema_version": 99}))
    with pytest.raises(ValueError, match="schema_version"):
        cellio.load_cell(bad)
    bad.write_text(json.dumps({"schema_version": 1, "status": "ok"}))
    with pytest.raises(ValueError, match="not a valid cell record"):
        cellio.load_cell(bad)


def test_worker_process_isolation_round_trip(tmp_path):
    """The GPU path runs each attempt in a fresh process; exercise that path on the CPU."""
    out = tmp_path / "c.json"
    proc = subprocess.run([sys.executable, "-m", "attnsweep", "cell", "--model", "tiny", "--attn", "naive",
                           "--mode", "eager", "--seq-len", "32", "--batch-size", "2", "--device", "cpu",
                           "--precision", "fp32", "--steps", "6", "--window", "2", "--isolate", "process",
                           "--no-profile", "--out", str(out)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    rec = cellio.load_cell(out)
    assert rec["status"] == "ok" and rec["kernels"] is None
    # Where the attempt's time went: the phases add up to it, and a worker process has a start of its own
    # (interpreter and imports, well over the few milliseconds of an inline attempt).
    phases = rec["phases_s"]
    assert set(phases) == {"outside", "setup", "train", "profile"} and min(phases.values()) >= 0
    assert sum(phases.values()) == pytest.approx(rec["batch_attempts"][0]["seconds"], abs=0.01)
    assert phases["outside"] > 0.3 and phases["profile"] < 0.1  # --no-profile: nothing profiled
    assert phases["train"] >= rec["compile"]["first_step_s"] + sum(rec["step_times_s"][1:])
    # The window's conditions come back from the worker process with its measurement.
    assert rec["window_conditions"]["wall_s"] > 0 and rec["window_conditions"]["own_cpu_s"] > 0


def test_source_hash_covers_exactly_the_files_a_cell_runs(tmp_path, monkeypatch):
    """env.code.source_sha256 changes with the code a cell runs, and not with report or status code (no cell runs
    those), as the pipeline's cells stamp does."""
    import shutil

    from attnsweep import codestamp

    package = tmp_path / "attnsweep"
    shutil.copytree(codestamp.PACKAGE_DIR, package, ignore=shutil.ignore_patterns("__pycache__"))
    before = codestamp.source_hash(package)
    assert before == codestamp.source_hash(package)  # no file times, no randomness
    for not_run in ("report/tables.py", "status.py", "sweep.py"):
        (package / not_run).write_text((package / not_run).read_text() + "\n# an edit\n")
        assert codestamp.source_hash(package) == before, not_run
    for run in ("model.py", "schemas/cell.schema.json", "vocabulary.py"):
        (package / run).write_text((package / run).read_text() + "\n")
        assert codestamp.source_hash(package) != before, run
        before = codestamp.source_hash(package)


def test_the_readme_example_runs_with_the_cpu_defaults_and_says_what_it_does(tmp_path):
    """The README's by-hand cell, as written there, on the CPU: the device's defaults (fp32, fixed batch 4, 20 steps)
    make it a matter of seconds, and it prints its progress and result."""
    import re
    import shlex

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    command = re.search(r"`\.venv/bin/attnsweep (cell [^`]*)`", readme).group(1)
    args = shlex.split(command.replace("cell.json", str(tmp_path / "cell.json")))
    proc = subprocess.run([sys.executable, "-m", "attnsweep", *args, "--device", "cpu"], capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    rec = cellio.load_cell(tmp_path / "cell.json")
    assert rec["status"] == "ok" and rec["cell"]["precision"] == "fp32" and rec["cell"]["steps"] == 20
    assert "attempt 1 at batch size 4" in proc.stderr and "tokens/s" in proc.stderr


def test_fp16_on_the_cpu_is_refused_with_a_reason(capsys):
    with pytest.raises(SystemExit):
        cli_main(["cell", "--model", "tiny", "--attn", "sdpa", "--seq-len", "32", "--device", "cpu",
                  "--precision", "fp16", "--out", "x.json"])
    assert "--precision fp16 on the CPU" in capsys.readouterr().err


def test_a_stopped_warm_ups_search_goes_on_from_its_log_with_the_same_answer(monkeypatch, tmp_path):
    """A warm-up stopped after two attempts (a sweep's deadline) leaves them in its search log; the next warm-up of
    the cell takes them from there, runs only the rest of the same search, and finds the same answer."""
    import attnsweep.cell as cell_mod
    from attnsweep.cell import warm_up
    from attnsweep.searchlog import FROM_LOG

    tried = _counting_attempts(monkeypatch)
    spec = _search_spec()
    plain = warm_up(spec, tmp_path / "plain")
    search = list(tried)
    assert len(search) >= 3 and plain.batch_size == 8

    counting = cell_mod.run_attempt

    def stopped_after_two(spec, b, device, **kw):
        if len(tried) == 2:
            raise KeyboardInterrupt  # the sweep stops the warm-up here
        return counting(spec, b, device, **kw)

    log = tmp_path / "searches" / "r1.jsonl"
    monkeypatch.setattr(cell_mod, "run_attempt", stopped_after_two)
    tried.clear()
    with pytest.raises(KeyboardInterrupt):
        warm_up(spec, tmp_path / "stopped", search_log=log)
    assert tried == search[:2] and len(log.read_text().splitlines()) == 2

    monkeypatch.setattr(cell_mod, "run_attempt", counting)
    tried.clear()
    resumed = warm_up(spec, tmp_path / "resumed", search_log=log)
    assert resumed.status == "ok" and resumed.batch_size == plain.batch_size
    answer_again = [8] if 8 in search[:2] else []  # the compile cache went with the stopped warm-up
    assert tried == search[2:] + answer_again
    attempts = resumed.batch_attempts
    assert [a["batch_size"] for a in attempts] == search + answer_again
    assert [a["detail"] == FROM_LOG for a in attempts[:2]] == [True, True]
    assert all(a["detail"] != FROM_LOG for a in attempts[2:])
    assert len(log.read_text().splitlines()) == len(search)

    # The whole search in the log: only the answer runs, for its cache.
    tried.clear()
    again = warm_up(spec, tmp_path / "again", search_log=log)
    assert again.batch_size == 8 and tried == [8] and again.first_step_s is not None

    # Other code (or GPU, or memory): nothing is taken from the log.
    monkeypatch.setattr(cell_mod, "_budget", lambda spec, device: 12 * 2**30)
    tried.clear()
    other = warm_up(spec, tmp_path / "other", search_log=log)
    assert other.batch_size == 8 and len(tried) > 1 and all(a["detail"] != FROM_LOG for a in other.batch_attempts)


def test_a_searched_size_the_timed_run_cannot_fit_sends_the_next_warm_up_below_it(monkeypatch, tmp_path):
    """Near the GPU's edge a size can fit a warm-up's few steps and not the timed run's (fragmentation): the timed
    job ends `error`, enters the size in the search log as out of memory and forgets its warm-up, and the cell's
    next warm-up, reading the log, answers with a smaller size, proved by attempts on both sides."""
    import attnsweep.cell as cell_mod
    from attnsweep.cell import timed_cell, warm_up
    from attnsweep.searchlog import FROM_LOG

    tried = _counting_attempts(monkeypatch)
    spec = _search_spec()
    log = tmp_path / "searches" / "r1.jsonl"
    warm = warm_up(spec, tmp_path / "w1", search_log=log)
    assert warm.status == "ok" and warm.batch_size == 8
    lines = len(log.read_text().splitlines())

    real_measure = cell_mod.measure
    monkeypatch.setattr(cell_mod, "measure", lambda spec, b, device, **kw: (
        AttemptResult("oom", "CUDA out of memory (simulated, timed run)", seconds=1.5) if b == 8
        else real_measure(spec, b, device, **kw)))
    forgotten = []
    rec = timed_cell(spec, warm, tmp_path / "w1", search_log=log, forget_warmup=lambda: forgotten.append(True))
    assert rec["status"] == "error" and forgotten == [True]
    assert "batch size 8, which fitted in the warm-up, ran out of memory" in rec["reason"]
    assert "next warm-up searches below it" in rec["reason"]
    entries = [json.loads(line) for line in log.read_text().splitlines()]
    assert len(entries) == lines + 1 and entries[-1]["batch_size"] == 8 and entries[-1]["outcome"] == "oom"
    assert entries[-1]["key"] == entries[0]["key"]  # the warm-up's own key: the next warm-up takes it

    tried.clear()
    again = warm_up(spec, tmp_path / "w2", search_log=log)
    assert again.status == "ok" and again.batch_size < 8 and 8 not in tried
    by_size = {a["batch_size"]: a for a in again.batch_attempts}
    assert by_size[8]["outcome"] == "oom" and by_size[8]["detail"] == FROM_LOG
    measured = timed_cell(spec, again, tmp_path / "w2", search_log=log)
    assert measured["status"] == "ok" and measured["batch_size"] == again.batch_size


def test_a_later_repeats_timed_run_out_of_memory_feeds_nothing_back(monkeypatch, tmp_path):
    """A later repeat measures at repeat 1's size: its timed run that does not fit is an error, and nothing is entered
    in its search log (a smaller size would not measure the same thing)."""
    import attnsweep.cell as cell_mod
    from attnsweep.cell import timed_cell, warm_up

    _counting_attempts(monkeypatch)
    spec = _search_spec()
    record_1 = {"cell": spec.record(), "status": "ok", "reason": None, "batch_size": 8}
    warm = warm_up(spec, tmp_path / "r2", record_1)
    monkeypatch.setattr(cell_mod, "measure", lambda spec, b, device, **kw: AttemptResult("oom", "simulated"))
    log = tmp_path / "r2.jsonl"
    forgotten = []
    rec = timed_cell(spec, warm, tmp_path / "r2", search_log=log, forget_warmup=lambda: forgotten.append(True))
    assert rec["status"] == "error" and "search log" not in rec["reason"]
    assert not log.exists() and forgotten == []


def test_a_timed_run_feeds_back_by_the_warm_ups_searched_flag_not_its_note(monkeypatch, tmp_path):
    """Whether a timed run that does not fit is entered in the search log follows the warm-up's `searched`, kept in
    its file, not the wording of its batch_note; a warm-up file without the flag feeds nothing back."""
    import dataclasses

    import attnsweep.cell as cell_mod
    from attnsweep.cell import Warmup, shared_batch_note, timed_cell, warm_up

    _counting_attempts(monkeypatch)
    spec = _search_spec()
    searched = warm_up(spec, tmp_path / "r1")
    record_1 = {"cell": spec.record(), "status": "ok", "reason": None, "batch_size": searched.batch_size}
    repeat = warm_up(spec, tmp_path / "r2", record_1)
    monkeypatch.setattr(cell_mod, "measure", lambda spec, b, device, **kw: AttemptResult("oom", "simulated"))
    reworded = dataclasses.replace(searched, batch_note=shared_batch_note(searched.batch_size))
    rec = timed_cell(spec, reworded, tmp_path / "r1", search_log=tmp_path / "r1.jsonl")
    assert "entered in the search log" in rec["reason"] and (tmp_path / "r1.jsonl").exists()
    reworded = dataclasses.replace(repeat, batch_note=searched.batch_note)
    rec = timed_cell(spec, reworded, tmp_path / "r2", search_log=tmp_path / "r2.jsonl")
    assert "search log" not in rec["reason"] and not (tmp_path / "r2.jsonl").exists()

    assert searched.searched and not repeat.searched
    searched.write(tmp_path / "w.json")
    assert Warmup.read(tmp_path / "w.json") == searched
    unflagged = {k: v for k, v in json.loads((tmp_path / "w.json").read_text()).items() if k != "searched"}
    (tmp_path / "w.json").write_text(json.dumps(unflagged))
    assert not Warmup.read(tmp_path / "w.json").searched


@pytest.mark.parametrize("policy", ["fixed", "study"])
def test_a_fixed_or_study_batch_the_timed_run_cannot_fit_is_an_error_not_a_searched_size(monkeypatch, tmp_path,
                                                                                         policy):
    """A batch size the plan gives (`fixed`, or the study's for a cell it ran) was not searched: a timed run that does
    not fit it ends `error` saying so, and nothing goes to the search log (a next warm-up has nothing below it to
    search, and would take the timed run's out-of-memory for a stopped warm-up's attempt)."""
    import attnsweep.cell as cell_mod
    from attnsweep.cell import timed_cell, warm_up

    tried: list[int] = []
    monkeypatch.setattr(cell_mod, "run_attempt", lambda spec, b, device, **kw: tried.append(b) or AttemptResult("ok"))
    monkeypatch.setattr(cell_mod, "measure", lambda spec, b, device, **kw: AttemptResult("oom", "simulated"))
    spec = (CellSpec(attn="sdpa", mode="eager", **TINY) if policy == "fixed" else
            CellSpec(model="medium", attn="sdpa", mode="eager", seq_len=256, precision="fp32", device="cpu",
                     batch_policy="study"))
    log, forgotten = tmp_path / "r1.jsonl", []
    warm = warm_up(spec, tmp_path / "w", search_log=log)
    assert warm.status == "ok" and tried == [warm.batch_size] == [{"fixed": 2, "study": 24}[policy]]
    rec = timed_cell(spec, warm, tmp_path / "w", search_log=log, forget_warmup=lambda: forgotten.append(True))
    assert rec["status"] == "error" and rec["reason"] == (f"the timed run at batch size {warm.batch_size}, which "
                                                          "fitted in the warm-up, ran out of memory: simulated")
    assert forgotten == [] and len(log.read_text().splitlines()) == 1  # the warm-up's attempt only
    assert not warm.searched


def test_the_cell_command_removes_the_warm_up_a_timed_run_could_not_fit(monkeypatch, tmp_path, capsys):
    """Through the commands the sweep runs: the timed job exits with an error, its record says why, the warm-up's
    JSON is gone (so Snakemake runs that warm-up again) and the search log holds the size as out of memory."""
    import attnsweep.cell as cell_mod

    _counting_attempts(monkeypatch)
    cell = ["--model", "tiny", "--attn", "sdpa", "--mode", "eager", "--seq-len", "32", "--precision", "fp32",
            "--device", "cpu", "--steps", "4", "--window", "2", "--no-profile", "--batch-policy", "search",
            "--batch-start", "64"]
    warmup, cache, log, out = (tmp_path / n for n in ("w.json", "cache", "r1.jsonl", "cell.json"))
    assert cli_main(["warmup", *cell, "--cache", str(cache), "--search-log", str(log), "--out", str(warmup)]) == 0
    assert json.loads(warmup.read_text())["batch_size"] == 8
    monkeypatch.setattr(cell_mod, "measure", lambda spec, b, device, **kw: AttemptResult("oom", "simulated"))
    rc = cli_main(["cell", *cell, "--warmup", str(warmup), "--cache", str(cache), "--search-log", str(log),
                   "--out", str(out)])
    assert rc == 1 and not warmup.exists()
    assert json.loads(out.read_text())["status"] == "error"
    last = json.loads(log.read_text().splitlines()[-1])
    assert (last["batch_size"], last["outcome"]) == (8, "oom")


def test_a_warm_up_made_without_a_package_the_timed_job_has_is_not_the_cells_verdict(monkeypatch, tmp_path,
                                                                                     capsys):
    """A warm-up that found the cell unsupported (a module that did not import where it ran) is asked again by the
    timed job: where the cell runs there, nothing is recorded and the warm-up is removed, so that the sweep warms
    the cell up again; where it still does not run, the record says why in the timed job's own words."""
    import attnsweep.cell as cell_mod

    cell = ["--model", "tiny", "--attn", "sdpa", "--mode", "eager", "--seq-len", "32", "--precision", "fp32",
            "--device", "cpu", "--steps", "4", "--window", "2", "--no-profile"]
    warmup, cache, out = tmp_path / "w.json", tmp_path / "cache", tmp_path / "cell.json"
    timed = ["cell", *cell, "--warmup", str(warmup), "--cache", str(cache), "--out", str(out)]
    supported = cell_mod.unsupported_reason
    monkeypatch.setattr(cell_mod, "unsupported_reason", lambda spec, device: "needs the module 'x' (then)")
    assert cli_main(["warmup", *cell, "--cache", str(cache), "--out", str(warmup)]) == 0
    assert json.loads(warmup.read_text())["status"] == "unsupported"
    monkeypatch.setattr(cell_mod, "unsupported_reason", supported)
    assert cli_main(timed) == 4
    assert not out.exists() and not warmup.exists()
    said = capsys.readouterr().err
    assert "not measured: the warm-up found the cell unsupported (needs the module 'x' (then))" in said
    # Still unsupported where the timed job runs: recorded, with the reason found there.
    monkeypatch.setattr(cell_mod, "unsupported_reason", lambda spec, device: "needs the module 'x' (then)")
    assert cli_main(["warmup", *cell, "--cache", str(cache), "--out", str(warmup)]) == 0
    monkeypatch.setattr(cell_mod, "unsupported_reason", lambda spec, device: "needs the module 'x' (now)")
    assert cli_main(timed) == 0
    rec = cellio.load_cell(out)
    assert (rec["status"], rec["reason"]) == ("unsupported", "needs the module 'x' (now)")


def test_a_search_log_for_a_timed_cell_needs_its_warm_up(capsys):
    with pytest.raises(SystemExit):
        cli_main(["cell", "--model", "tiny", "--attn", "sdpa", "--seq-len", "32", "--device", "cpu",
                  "--search-log", "r1.jsonl", "--out", "x.json"])
    assert "--search-log goes with --warmup" in capsys.readouterr().err


def test_a_search_log_skips_a_cut_line_and_other_keys_and_keeps_the_latest(tmp_path):
    from attnsweep.searchlog import Known, SearchLog, entries

    log = SearchLog(tmp_path / "s.jsonl", {"code": "a", "budget_bytes": 1})
    log.add(8, "ok", 100, 3.0)
    log.add(16, "oom", None, 2.0)
    log.add(4, "error", None, 1.0)  # run again, never taken
    SearchLog(log.path, {"code": "b", "budget_bytes": 1}).add(32, "ok", 200, 4.0)
    log.add(8, "oom", None, 5.0)
    with open(log.path, "a") as f:
        f.write('7\n{"key": {"code": "a", "budget_by')  # not an entry; a write cut short by a kill
    assert log.known() == {8: Known("oom", None, 5.0), 16: Known("oom", None, 2.0)}
    assert SearchLog(tmp_path / "none.jsonl", {}).known() == {}
    assert [e["batch_size"] for e in entries(log.path)] == [8, 16, 4, 32, 8]  # every whole entry, any key
    assert entries(tmp_path / "none.jsonl") == []


def test_the_tokens_policy_measures_tokens_over_context_sequences_in_one_attempt(tmp_path):
    out = tmp_path / "cell.json"
    rc = cli_main(["cell", "--model", "tiny", "--attn", "sdpa", "--mode", "eager", "--seq-len", "64",
                   "--batch-policy", "tokens", "--batch-tokens", "300", "--device", "cpu", "--steps", "4",
                   "--window", "2", "--out", str(out)])
    rec = cellio.load_cell(out)
    assert rc == 0 and rec["status"] == "ok" and rec["batch_size"] == 4  # 300 // 64
    assert [a["batch_size"] for a in rec["batch_attempts"]] == [4] and "300 tokens a step" in rec["batch_note"]
    assert rec["cell"]["batch_policy"] == "tokens" and rec["cell"]["batch_tokens"] == 300
    # Other policies' records keep their cell block as it was (no batch_tokens key).
    assert "batch_tokens" not in CellSpec(model="tiny", attn="sdpa", mode="eager", seq_len=64).record()


def test_a_warm_up_keeps_its_step_times_through_its_file_into_the_timed_record(tmp_path):
    """A warm-up keeps each step's seconds at its batch size, the cold first one included (a sweep's deadline takes
    the timed job's pace from them); its file gives them back, and the timed record's `warmup` carries them."""
    from attnsweep.cell import STEP_DIGITS, WARMUP_STEPS, Warmup, timed_cell, warm_up

    spec = CellSpec(attn="sdpa", mode="eager", **{**TINY, "profile": False})
    warm = warm_up(spec, tmp_path / "cache")
    times = warm.step_times_s
    assert warm.status == "ok" and len(times) == WARMUP_STEPS  # 10 of the cell's 12 steps
    assert all(t > 0 and t == round(t, STEP_DIGITS) for t in times)
    warm.write(tmp_path / "warmup.json")
    assert Warmup.read(tmp_path / "warmup.json").step_times_s == times
    rec = timed_cell(spec, warm, tmp_path / "cache")
    assert rec["status"] == "ok" and rec["warmup"]["step_times_s"] == times
    cellio.validate_cell(rec)


def test_a_warm_up_of_a_cell_with_fewer_steps_says_how_many_it_ran(tmp_path):
    """A cell of 8 steps warms up with 8, not WARMUP_STEPS: its file, a file read back and the timed record say 8,
    and the timed job's expected seconds take the warm-up's pace over those 8."""
    from attnsweep import sweep
    from attnsweep.cell import WARMUP_STEPS, Warmup

    assert WARMUP_STEPS > 8
    cell = ["--model", "tiny", "--attn", "sdpa", "--mode", "eager", "--seq-len", "32", "--precision", "fp32",
            "--batch-size", "2", "--device", "cpu", "--steps", "8", "--window", "4", "--no-profile"]
    warmup, cache, out = (tmp_path / n for n in ("w.json", "cache", "cell.json"))
    assert cli_main(["warmup", *cell, "--cache", str(cache), "--out", str(warmup)]) == 0
    written = json.loads(warmup.read_text())
    assert written["status"] == "ok" and written["steps"] == len(written["step_times_s"]) == 8
    assert cli_main(["cell", *cell, "--warmup", str(warmup), "--cache", str(cache), "--out", str(out)]) == 0
    assert cellio.load_cell(out)["warmup"]["steps"] == 8

    (tmp_path / "miscounted.json").write_text(json.dumps({**written, "steps": WARMUP_STEPS}))
    assert Warmup.read(tmp_path / "miscounted.json").steps == 8
    # Without step times, the pace is the attempt's seconds after the cold first step over the 7 steps after it.
    untimed = {**written, "step_times_s": None}
    attempt_s = written["batch_attempts"][-1]["seconds"]
    cold = written["first_step_s"]
    first = min(cold, sweep.WARM_FIRST_STEP_S + sweep.WARM_FIRST_STEP_SHARE * cold)
    assert sweep.timed_job_s(2, untimed, [], 8) == pytest.approx(
        first + 7 * max(0.0, attempt_s - cold) / 7 + sweep.JOB_START_S)


def test_a_warm_ups_step_times_are_optional_seconds(tmp_path):
    """Records and warm-up files without the warm-up's step times (older ones) stay valid; where present, the schema
    takes them as a list of seconds."""
    from attnsweep.cell import Warmup

    rec = json.loads((Path(__file__).parent / "data" / "cell_ok.json").read_text())
    older = {"seconds": 28.0, "steps": 10, "first_step_s": 25.0, "gpu": None}
    for warmup in (older, {**older, "step_times_s": None}, {**older, "step_times_s": [25.0, 0.31, 0.3]}):
        cellio.validate_cell({**rec, "warmup": warmup})
    for bad in (["fast"], [0.3, -0.1], 0.3):
        with pytest.raises(ValueError, match="not a valid cell record at warmup/step_times_s"):
            cellio.validate_cell({**rec, "warmup": {**older, "step_times_s": bad}})
    (tmp_path / "warmup.json").write_text(json.dumps({
        "status": "ok", "reason": None, "batch_size": 8, "batch_note": None, "batch_attempts": [],
        "first_step_s": 25.0, "steps": 10, "seconds": 28.0, "gpu": None}))
    assert Warmup.read(tmp_path / "warmup.json").step_times_s is None
