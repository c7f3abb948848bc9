"""The compile mode with CUDA graphs (`compiled_cudagraphs`: torch.compile(mode="reduce-overhead")).

CPU tests: every reader of the vocabulary takes the mode; the training step marks each iteration and keeps a copy of
the loss; the record's CUDA-graph fields and their schema; a cell on the CPU is `unsupported` with its reason, while
the harness itself, run there anyway, records the fallback. GPU tests (`pytest -m gpu` on the GPU host): graphs are
captured with no skip, one pair per compiled region (more with graph breaks), and the losses are those of plain
compiled.
"""

from __future__ import annotations

import copy
import json
import logging
import math
from pathlib import Path

import pytest
import torch
import yaml

from attnsweep import attention, batching, cellio, cli, training
from attnsweep.cell import run_cell
from attnsweep.data import synthetic_batches
from attnsweep.model import GPT, GPTConfig, model_config
from attnsweep.native_harness import train_native
from attnsweep.spec import CellSpec
from attnsweep.sweep import validate_config
from attnsweep.training import CudagraphWatch, TrainSpec, TrainStep, compile_options, mode_unsupported_reason
from attnsweep.vocabulary import COMPILED_MODES, CUDAGRAPH_MODES, MODES

ROOT = Path(__file__).resolve().parents[1]
MODE = "compiled_cudagraphs"
CPU = torch.device("cpu")
TINY = dict(model="tiny", seq_len=32, precision="fp32", steps=6, window=2, device="cpu", batch_size=2)


# ---------------------------------------------------------------------------------------------------------------
# The vocabulary's readers


def test_every_reader_of_the_vocabulary_takes_the_mode(tmp_path: Path) -> None:
    assert MODE in MODES and MODE in COMPILED_MODES and CUDAGRAPH_MODES == (MODE,)
    args = cli.build_parser().parse_args(["cell", "--model", "tiny", "--attn", "sdpa", "--mode", MODE,
                                          "--seq-len", "32", "--out", str(tmp_path / "c.json")])
    assert args.mode == MODE
    CellSpec(attn="sdpa", mode=MODE, **TINY).validate()
    config = yaml.safe_load((ROOT / "config" / "config.yaml").read_text())
    config["grid"]["mode"] = ["compiled", MODE, "eager"]
    config["grid"]["exclude"].append({"mode": MODE, "model": "large"})
    validate_config(config, ROOT / "workflow/schemas/config.schema.yaml")
    # The compiled kernels run either way: the study's compiled batch sizes, so both compiled modes pair up.
    for model, seq_len in (("small", 1024), ("medium", 4096), ("large", 512)):
        assert batching.study_size(model, "fa2", MODE, seq_len) == batching.study_size(model, "fa2", "compiled",
                                                                                         seq_len)
    assert batching.plan("study", model="small", attn="sdpa", mode=MODE, seq_len=1024).candidates == (16,)


def test_a_bad_mode_fails_before_any_gpu_time(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="--mode"):
        CellSpec(attn="sdpa", mode="cudagraphs", **TINY).validate()
    config = yaml.safe_load((ROOT / "config" / "config.yaml").read_text())
    config["grid"]["mode"] = ["reduce-overhead"]
    with pytest.raises(ValueError, match="'reduce-overhead' is not one of"):
        validate_config(config, ROOT / "workflow/schemas/config.schema.yaml")


def test_compile_options_per_mode() -> None:
    assert compile_options("eager", True) is None
    assert compile_options("compiled", False) == {"fullgraph": False}  # exactly as before the mode existed
    assert compile_options(MODE, True) == {"fullgraph": True, "mode": "reduce-overhead"}
    model = torch.nn.Linear(2, 2)
    assert training.compile_model(model, "eager", True) is model


# ---------------------------------------------------------------------------------------------------------------
# The training step


def _count_marks(monkeypatch) -> list[int]:
    marks: list[int] = []
    real = torch.compiler.cudagraph_mark_step_begin
    monkeypatch.setattr(torch.compiler, "cudagraph_mark_step_begin", lambda: (marks.append(1), real())[1])
    return marks


def test_the_step_marks_each_iteration_and_keeps_a_copy_of_the_loss(monkeypatch) -> None:
    marks = _count_marks(monkeypatch)
    model = torch.nn.Linear(4, 1)
    losses: list[torch.Tensor] = []

    def forward(x, y):
        loss = torch.nn.functional.mse_loss(model(x), y)
        losses.append(loss)
        return None, loss

    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    x, y = torch.randn(8, 4), torch.randn(8, 1)
    plain = TrainStep(forward, opt, "fp32", "cpu")
    kept = plain(x, y)
    assert marks == [] and kept.data_ptr() == losses[-1].data_ptr()  # no copy where nothing overwrites it
    graphed = TrainStep(forward, opt, "fp32", "cpu", cudagraphs=True)
    kept = [graphed(x, y) for _ in range(3)]
    assert len(marks) == 3
    # The loss handed back is a copy: a replay overwriting the graph's output leaves it as it was.
    assert kept[-1].data_ptr() != losses[-1].data_ptr() and torch.equal(kept[-1], losses[-1].detach())
    losses[-1].detach().fill_(float("nan"))
    assert math.isfinite(kept[-1].item())


def _tiny(device: torch.device, attn: str = "sdpa", seq_len: int = 32, batch: int = 2, cfg: GPTConfig | None = None):
    cfg = cfg or model_config("tiny", block_size=seq_len)
    torch.manual_seed(0)
    with torch.device(device):
        model = GPT(cfg, attn=attn)
    batches = synthetic_batches(vocab_size=cfg.vocab_size, batch_size=batch, seq_len=seq_len, n_batches=2,
                                device=device, seed=0)
    return model, batches, batch * seq_len


def test_the_native_loop_on_a_cpu_marks_every_step_and_records_the_fallback(monkeypatch, fresh_dynamo) -> None:
    """Run there anyway (a cell would not), Inductor compiles without CUDA graphs: the record says so."""
    marks = _count_marks(monkeypatch)
    model, batches, tokens = _tiny(CPU)
    spec = TrainSpec(steps=4, window=2, precision="fp32", optimizer="adamw", mode=MODE, fullgraph=True, device=CPU)
    result = train_native(model, batches, spec, tokens)
    assert len(marks) == spec.steps
    assert result.graphs == 1 and result.graph_breaks == 0  # compiled, as the compiled mode
    graphs = result.cudagraphs
    assert graphs["captured"] == 0 and graphs["skipped"] >= 1 and graphs["fell_back"] is True
    assert any("CPU" in r for r in graphs["skip_reasons"]), graphs
    assert all(math.isfinite(v) for v in result.losses)
    result.profile_step()
    assert len(marks) == spec.steps + 1  # the profiled step is the same step


def test_other_modes_record_no_cuda_graphs(fresh_dynamo) -> None:
    model, batches, tokens = _tiny(CPU)
    spec = TrainSpec(steps=2, window=1, precision="fp32", optimizer="adamw", mode="eager", fullgraph=True,
                     device=CPU)
    assert train_native(model, batches, spec, tokens).cudagraphs is None


def test_the_watch_collects_inductors_skip_reasons(fresh_dynamo) -> None:
    """Through the function Inductor itself calls for every skip (torch._inductor.cudagraph_utils)."""
    from torch._dynamo.utils import counters
    from torch._inductor import cudagraph_utils
    from torch._inductor.cudagraph_utils import log_cudagraph_skip_and_bump_counter

    training.reset_graph_counters()
    with CudagraphWatch() as watch:
        log_cudagraph_skip_and_bump_counter("skipping cudagraphs due to mutated inputs (2 instances). Found from : \n"
                                            "  File model.py, line 1")
        log_cudagraph_skip_and_bump_counter("skipping cudagraphs due to mutated inputs (2 instances). Found from : \n"
                                            "  File model.py, line 9")
        # Another warning of the same loggers (older torch's perf hint on dynamic shapes) is not a skip.
        for logger in (v for v in vars(cudagraph_utils).values() if isinstance(v, logging.Logger)):
            logger.warning("CUDAGraph supports dynamic shapes by recording a new graph for each distinct input size")
    stats = watch.stats(CPU)
    assert stats == {"captured": 0, "skipped": 2, "fell_back": True,
                     "skip_reasons": ["skipping cudagraphs due to mutated inputs (2 instances). Found from :"]}
    log_cudagraph_skip_and_bump_counter("skipping cudagraphs due to cpu device")  # after the run: not its own
    assert len(watch.messages) == 2 and counters["inductor"]["cudagraph_skips"] == 3


def test_a_torch_whose_graph_trees_differ_loses_the_count_not_the_cell(fresh_dynamo, monkeypatch) -> None:
    def differs(device):
        raise AttributeError("'CUDAGraphTreeManager' object has no attribute 'get_roots'")

    monkeypatch.setattr(training, "captured_cudagraphs", differs)
    training.reset_graph_counters()
    with CudagraphWatch() as watch:
        pass
    stats = watch.stats(CPU)
    assert stats["captured"] is None and stats["skipped"] == 0 and stats["fell_back"] is False
    assert stats["skip_reasons"][0].startswith("graphs captured unknown: this torch's CUDA graph trees differ")


# ---------------------------------------------------------------------------------------------------------------
# The cell and its record


def test_a_cell_on_the_cpu_is_unsupported_with_its_reason() -> None:
    assert mode_unsupported_reason(MODE, "cuda") is None and mode_unsupported_reason("compiled", "cpu") is None
    for harness in ("native", "composer"):
        rec = run_cell(CellSpec(attn="sdpa", mode=MODE, harness=harness, **TINY))
        cellio.validate_cell(rec)
        assert rec["status"] == "unsupported" and rec["cell"]["mode"] == MODE
        assert "CUDA" in rec["reason"] and "reduce-overhead" in rec["reason"], rec["reason"]


def test_the_record_fields_are_in_the_schema() -> None:
    rec = json.loads((ROOT / "tests" / "data" / "cell_ok.json").read_text())
    rec["cell"]["mode"] = MODE
    rec["compile"]["cudagraphs"] = {"captured": 2, "skipped": 0, "skip_reasons": [], "fell_back": False}
    cellio.validate_cell(rec)
    for bad in ({"captured": -1}, {"fell_back": "no"}, {"skip_reasons": "none"}):
        broken = copy.deepcopy(rec)
        broken["compile"]["cudagraphs"].update(bad)
        with pytest.raises(ValueError, match="cudagraphs"):
            cellio.validate_cell(broken)
    del rec["compile"]["cudagraphs"]["fell_back"]
    with pytest.raises(ValueError, match="fell_back"):
        cellio.validate_cell(rec)
    rec["compile"]["cudagraphs"] = None  # the other modes
    cellio.validate_cell(rec)


# ---------------------------------------------------------------------------------------------------------------
# GPU (skipped without CUDA; run with `pytest -m gpu` on the GPU host)

GPU_SEQ = 128
# Two layers of head dim 64: every GPT-2 size's, and the only one the GPU host's offline flash-attn wheel has.
GPU_CFG = GPTConfig(n_layer=2, n_embd=256, n_head=4, vocab_size=512, block_size=GPU_SEQ)


def _gpu_run(attn: str, mode: str, steps: int = 12) -> training.TrainResult:
    device = torch.device("cuda", torch.cuda.current_device())
    reason = attention.unsupported_reason(attn, device_type="cuda", dtype=torch.float16, head_dim=GPU_CFG.head_dim,
                                          n_head=GPU_CFG.n_head, n_kv_head=GPU_CFG.n_head)
    if reason:
        pytest.skip(reason)
    model, batches, tokens = _tiny(device, attn, seq_len=GPU_SEQ, batch=8, cfg=GPU_CFG)
    spec = TrainSpec(steps=steps, window=4, precision="fp16", optimizer="adamw", mode=mode,
                     fullgraph=attention.get(attn).fullgraph, device=device)
    with training.private_compile_cache():
        return train_native(model, batches, spec, tokens)


@pytest.mark.gpu
def test_gpu_graphs_are_captured_per_compiled_region(fresh_dynamo) -> None:
    """sdpa compiles as one graph: one forward and one backward CUDA graph, nothing skipped. fa2_graphbreak breaks
    the graph at every attention layer: each compiled region gets graphs of its own, so more of them."""
    sdpa = _gpu_run("sdpa", MODE)
    assert sdpa.cudagraphs["captured"] >= 2, sdpa.cudagraphs
    assert sdpa.cudagraphs["skipped"] == 0 and not sdpa.cudagraphs["fell_back"], sdpa.cudagraphs
    assert sdpa.nonfinite_step is None and sdpa.losses[-1] < sdpa.losses[0]
    broken = _gpu_run("fa2_graphbreak", MODE)
    assert broken.graph_breaks >= 1 and broken.graphs > sdpa.graphs
    assert broken.cudagraphs["skipped"] == 0 and not broken.cudagraphs["fell_back"], broken.cudagraphs
    assert broken.cudagraphs["captured"] > sdpa.cudagraphs["captured"], (broken.cudagraphs, sdpa.cudagraphs)


@pytest.mark.gpu
def test_gpu_replays_train_as_plain_compiled_does(fresh_dynamo) -> None:
    """The same compiled kernels, replayed: the same losses (a stale input or an overwritten output would not be)."""
    plain = _gpu_run("sdpa", "compiled")
    graphed = _gpu_run("sdpa", MODE)
    assert plain.cudagraphs is None
    assert graphed.losses == pytest.approx(plain.losses, rel=2e-2)


@pytest.mark.gpu
def test_gpu_cell_records_its_graphs_and_the_kernels_inside_them(tmp_path: Path) -> None:
    """A whole cell: ok, a valid record with its graphs, and the profiled step still sees the attention kernels
    (they run inside graph replays)."""
    rec = run_cell(CellSpec(model="tiny", attn="sdpa", mode=MODE, seq_len=GPU_SEQ, precision="fp16", steps=12,
                            window=4, device="cuda", batch_size=8))
    cellio.validate_cell(rec)
    assert rec["status"] == "ok", rec["reason"]
    graphs = rec["compile"]["cudagraphs"]
    assert graphs["captured"] >= 2 and graphs["skipped"] == 0 and not graphs["fell_back"], graphs
    assert rec["compile"]["compiled"] is True and rec["loss"]["fell"]
    assert rec["kernels"]["attention"], "the profiled step must list the attention kernels run by the graphs"
    assert not rec["kernels"]["backend"].startswith("unfused"), rec["kernels"]
