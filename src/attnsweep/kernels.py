"""Which attention kernel really ran: profile one training step and name the kernels.

SDPA's default dispatch picks a backend at run time (on Hopper with a recent cuDNN it prefers cuDNN attention), and
a stale compile cache has silently swapped backends before, so the implementation's name is not evidence. The
profiler's kernel names are: this module lists the attention-related ones and classifies them.
"""

from __future__ import annotations

import os
import re
from typing import TYPE_CHECKING, Callable

import torch
from torch.profiler import ProfilerActivity, profile

if TYPE_CHECKING:  # for the annotation only: no import of the profiler's internals when a cell starts
    from torch.autograd.profiler_util import FunctionEvent

# First match wins; order matters (PyTorch's vendored flash kernels also contain "flash_fwd").
BACKENDS: list[tuple[str, re.Pattern]] = [
    ("pytorch-flash", re.compile(r"pytorch_flash::|_scaled_dot_product_flash_attention", re.I)),
    ("cudnn", re.compile(r"cudnn.*(sdpa|fmha|flash|attn)|_scaled_dot_product_cudnn_attention", re.I)),
    ("mem-efficient", re.compile(r"fmha_cutlass|AttentionKernel|_efficient_attention", re.I)),
    # flash-attn-4's CuTe DSL kernels are named kernel_cutlass_<method>_<its Python object, dots dropped>_..., e.g.
    # kernel_cutlass_kernel_flash_attncuteflash_fwd_sm90FlashAttentionForwardSm90_object_at__tensor...
    # (FlashAttentionBackwardSm90, FlashAttentionBackwardPreprocess/Postprocess; Sm100 on Blackwell).
    ("flash-attn-4", re.compile(r"flash_attn.*cute|FlashAttention(Forward|Backward)Sm", re.I)),
    ("flash-attn", re.compile(r"flash::|flash_fwd|flash_bwd|flash_attn", re.I)),
    ("flex", re.compile(r"flex_attention|triton_tem_fused", re.I)),
    ("sdpa-math", re.compile(r"_scaled_dot_product_attention_math", re.I)),
]
RELEVANT = re.compile(r"flash|fmha|sdpa|attention|attn|cudnn|flex|softmax|scaled_dot|triton_tem", re.I)
# The loss (cross-entropy) runs log_softmax over the vocabulary: a softmax, but not attention's. Its op and kernel
# names say "log_softmax" (aten::_log_softmax, LogSoftMaxForwardEpilogue, triton_..._log_softmax_...).
LOSS = re.compile(r"log_?softmax|nll_loss|cross_entropy", re.I)
# PyTorch's FA4 route (torch.nn.attention.activate_flash_attention_impl("FA4")) runs flash-attn-4's own kernels, so
# kernel names cannot tell it from flash-attn-4 called directly; the operator that launched them can: SDPA's flash
# operator (eager and compiled alike: Inductor calls the aten op) rather than this package's custom op
# (attnsweep::flash_attn_4_fwd) or flash-attn-4's autograd.Function.
FA4_VIA_SDPA = "flash-attn-4 via sdpa"
SDPA_FLASH_OP = re.compile(r"_scaled_dot_product_flash_attention|aten::_flash_attention_(forward|backward)", re.I)


def is_attention(name: str) -> bool:
    """Whether an op or kernel name belongs to attention (the naive path's softmax does; the loss's does not)."""
    return bool(RELEVANT.search(name)) and not LOSS.search(name)
MAX_NAME = 240


def _device_time(evt: FunctionEvent) -> float:
    # The attribute was renamed from cuda_time_total to device_time_total; read whichever this torch has.
    for attr in ("self_device_time_total", "device_time_total", "self_cuda_time_total", "cuda_time_total"):
        if hasattr(evt, attr):
            return float(getattr(evt, attr))
    return 0.0


def classify(names: list[str], operators: list[str] = ()) -> str:
    """The attention backend the kernel (or op) names show; `unfused` when none is a fused attention kernel.
    `operators`: the CPU operators of the same step, which tell flash-attn-4's two routes apart."""
    for backend, pattern in BACKENDS:
        if any(pattern.search(n) for n in names):
            if backend == "flash-attn-4" and any(SDPA_FLASH_OP.search(o) for o in operators):
                return FA4_VIA_SDPA
            return backend
    return "unfused (matmul + softmax)"


def profile_step(step: Callable[[], None], device: torch.device) -> dict:
    """Run `step` once under the profiler; return the attention kernels (or CPU ops) and the busiest kernels."""
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    if device.type == "cpu":
        # The profiler's library (Kineto) of a CUDA build of torch asks the CUDA driver for its devices even when
        # only CPU activity is recorded, and on a machine without one logs "gpuGetDeviceCount failed" as an ERROR
        # (and profiler_start/stop lines) under a cell that is fine. It reads its log level when first used:
        # 6 is above its highest level (USDT = 5), so it prints nothing. A level the user set is kept.
        os.environ.setdefault("KINETO_LOG_LEVEL", "6")
    with profile(activities=activities) as prof:
        step()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
    rows, annotations, operators = [], set(), []
    for evt in prof.key_averages():
        on_device = device.type == "cuda" and _device_time(evt) > 0 and evt.device_type != torch.autograd.DeviceType.CPU
        if device.type == "cuda" and not on_device:
            if is_attention(evt.key):
                operators.append(evt.key)
            continue
        t = _device_time(evt) if device.type == "cuda" else float(evt.self_cpu_time_total)
        rows.append({"name": evt.key[:MAX_NAME], "calls": int(evt.count), "time_us": round(t, 1)})
        if getattr(evt, "is_user_annotation", False):
            annotations.add(rows[-1]["name"])
    rows.sort(key=lambda r: -r["time_us"])
    attention = [r for r in rows if is_attention(r["name"])]
    return {
        "source": "CUDA kernels" if device.type == "cuda" else "CPU operators",
        "backend": classify([r["name"] for r in attention], operators),
        "attention": attention[:20],
        "attention_share": attention_share(rows, annotations),
        # Against the step's wall time it says how busy the GPU was, i.e. whether the host's speed bounds the step.
        "busy_us": round(work_us(rows, annotations), 1),
        "top": rows[:10],
    }


def work_us(rows: list[dict], annotations: set[str] = frozenset()) -> float:
    """A profiled step's kernel time (GPU) or operators' self time (CPU). A user annotation (record_function, e.g.
    Optimizer.step#AdamW.step) spans the kernels inside it on a GPU's timeline: it is not counted again."""
    return sum(r["time_us"] for r in rows if r["name"] not in annotations)


def attention_share(rows: list[dict], annotations: set[str] = frozenset()) -> float | None:
    """Attention's part of a profiled step (kernel time on a GPU, operators' self time on a CPU): why a faster
    attention kernel barely moves tokens/s where attention is a small part of the step (of `work_us`, annotations
    not counted). The naive path's matmuls are not told apart from the model's other GEMMs: its share counts its
    softmax and mask only."""
    total = work_us(rows, annotations)
    attention = [r for r in rows if r["name"] not in annotations and is_attention(r["name"])]
    return round(work_us(attention) / total, 4) if total else None
